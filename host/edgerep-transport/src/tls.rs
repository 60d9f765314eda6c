//! quinn server and client configurations for mutual TLS between the nodes of one deployment.
//!
//! Both sides speak TLS 1.3 only (QUIC requires it), on rustls's *ring* provider, with ALPN
//! [`ALPN`]. The server requires a client certificate that chains to the deployment CA (rustls's
//! `WebPkiClientVerifier`); which node ids may connect is checked after the handshake, by
//! [`crate::Incoming::handshake`]. The client checks that the server's certificate chains to the
//! CA and names the node it meant to reach ([`client_config`]). Session resumption and 0-RTT are
//! off, so every connection presents and checks certificates in full.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use edgerep_wire::event::NodeId;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, VarInt};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{Resumption, verify_server_cert_signed_by_trust_anchor};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::certs::{Identity, crypto_provider, node_id_of};

/// The ALPN protocol id of edgerep's peer protocol.
pub const ALPN: &[u8] = b"edgerep/1";

/// The TLS server name a client sends. It is not used for checking: the server's identity is
/// the node id in its certificate (see [`client_config`]).
pub const SERVER_NAME: &str = "edgerep";

/// QUIC settings shared by the listening and the dialing side.
///
/// The defaults aim at one busy replication stream per peer over links from loopback to
/// continental distances: an 8 MiB stream window sustains about 650 Mbit/s at 100 ms round trip,
/// and the connection window bounds what one peer can make this node buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportConfig {
    /// How often an idle connection sends a keep-alive (default 1 s); less than `idle_timeout`.
    pub keep_alive: Duration,
    /// A connection that hears nothing for this long is dead (default 10 s). Also bounds how
    /// long a handshake may take.
    pub idle_timeout: Duration,
    /// How many bytes one stream may have in flight unread (default 8 MiB).
    pub stream_receive_window_bytes: u32,
    /// How many bytes all streams of a connection together may have in flight unread (default
    /// 16 MiB): the most one peer makes this node buffer.
    pub receive_window_bytes: u32,
    /// How many bytes this side keeps buffered for sending on a connection (default 16 MiB).
    pub send_window_bytes: u32,
    /// How many bidirectional streams a peer may have open at once (default 1: the peer
    /// link is one stream; a stream nobody accepts would hold buffered bytes for nothing).
    pub max_concurrent_bidi_streams: u32,
    /// How many unidirectional streams a peer may have open at once (default 0: none is used).
    pub max_concurrent_uni_streams: u32,
}

impl Default for TransportConfig {
    fn default() -> TransportConfig {
        TransportConfig {
            keep_alive: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(10),
            stream_receive_window_bytes: 8 << 20,
            receive_window_bytes: 16 << 20,
            send_window_bytes: 16 << 20,
            max_concurrent_bidi_streams: 1,
            max_concurrent_uni_streams: 0,
        }
    }
}

impl TransportConfig {
    /// The quinn transport settings, after checking that the values make sense together.
    pub fn to_quinn(&self) -> Result<quinn::TransportConfig, TlsError> {
        let bad = |reason: &str| TlsError::Config {
            reason: reason.to_owned(),
        };
        if self.keep_alive.is_zero() || self.keep_alive >= self.idle_timeout {
            return Err(bad("keep_alive must be above zero and below idle_timeout"));
        }
        if self.stream_receive_window_bytes == 0
            || self.receive_window_bytes < self.stream_receive_window_bytes
        {
            return Err(bad(
                "stream_receive_window_bytes must be above zero and at most receive_window_bytes",
            ));
        }
        if self.send_window_bytes == 0 {
            return Err(bad("send_window_bytes must be above zero"));
        }
        let idle = IdleTimeout::try_from(self.idle_timeout)
            .map_err(|_| bad("idle_timeout is too long"))?;
        let mut t = quinn::TransportConfig::default();
        t.keep_alive_interval(Some(self.keep_alive))
            .max_idle_timeout(Some(idle))
            .stream_receive_window(VarInt::from_u32(self.stream_receive_window_bytes))
            .receive_window(VarInt::from_u32(self.receive_window_bytes))
            .send_window(u64::from(self.send_window_bytes))
            .max_concurrent_bidi_streams(VarInt::from_u32(self.max_concurrent_bidi_streams))
            .max_concurrent_uni_streams(VarInt::from_u32(self.max_concurrent_uni_streams))
            // The peer protocol uses streams only.
            .datagram_receive_buffer_size(None);
        Ok(t)
    }
}

/// Building a TLS or QUIC configuration failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// rustls refused the certificates or settings.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client certificate verifier could not be built from the CA certificate.
    #[error("TLS configuration: client certificate verifier: {reason}")]
    Verifier {
        /// rustls's reason.
        reason: String,
    },
    /// The transport settings are inconsistent.
    #[error("transport configuration: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },
}

fn roots(identity: &Identity) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.add(identity.ca_cert().clone())?;
    Ok(Arc::new(roots))
}

fn no_initial_suite(e: quinn::crypto::rustls::NoInitialCipherSuite) -> TlsError {
    TlsError::Config {
        reason: format!("QUIC needs TLS_AES_128_GCM_SHA256: {e}"),
    }
}

/// The listening side's configuration: presents `identity`'s certificate and requires a client
/// certificate that chains to `identity`'s CA.
pub fn server_config(
    identity: &Identity,
    config: &TransportConfig,
) -> Result<quinn::ServerConfig, TlsError> {
    let provider = crypto_provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(identity)?, provider.clone())
        .build()
        .map_err(|e| TlsError::Verifier {
            reason: e.to_string(),
        })?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![identity.cert().clone()], identity.key().clone_key())?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    // No session tickets: a resumed session would skip the client certificate.
    tls.send_tls13_tickets = 0;
    tls.max_early_data_size = 0;
    let quic = QuicServerConfig::try_from(tls).map_err(no_initial_suite)?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
    server.transport_config(Arc::new(config.to_quinn()?));
    Ok(server)
}

/// The dialing side's configuration for reaching node `expected`: presents `identity`'s
/// certificate, and accepts only a server certificate that chains to `identity`'s CA and names
/// `expected` (see [`crate::certs::node_id_of`]).
pub fn client_config(
    identity: &Identity,
    expected: &NodeId,
    config: &TransportConfig,
) -> Result<quinn::ClientConfig, TlsError> {
    client_config_checked(identity, expected, config).map(|(config, _)| config)
}

/// [`client_config`], plus the verifier, which remembers why it refused a server.
pub(crate) fn client_config_checked(
    identity: &Identity,
    expected: &NodeId,
    config: &TransportConfig,
) -> Result<(quinn::ClientConfig, Arc<NodeVerifier>), TlsError> {
    let provider = crypto_provider();
    let verifier = Arc::new(NodeVerifier {
        roots: roots(identity)?,
        algorithms: provider.signature_verification_algorithms,
        expected: expected.clone(),
        refusal: Mutex::new(None),
    });
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_client_auth_cert(vec![identity.cert().clone()], identity.key().clone_key())?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    // No resumption: a resumed session would skip the server certificate and its node id.
    tls.resumption = Resumption::disabled();
    tls.enable_early_data = false;
    let quic = QuicClientConfig::try_from(tls).map_err(no_initial_suite)?;
    let mut client = quinn::ClientConfig::new(Arc::new(quic));
    client.transport_config(Arc::new(config.to_quinn()?));
    Ok((client, verifier))
}

/// Why [`NodeVerifier`] refused a server certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The certificate does not chain to our CA, or is not valid now.
    Untrusted(String),
    /// The certificate chains to our CA but names no node.
    NoNodeId(String),
    /// The certificate names another node.
    OtherNode(NodeId),
}

/// Checks a server certificate the way webpki does (chain to our CA, validity, server usage),
/// then that it names the node we dialed, in place of webpki's DNS name check.
#[derive(Debug)]
pub(crate) struct NodeVerifier {
    roots: Arc<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
    expected: NodeId,
    refusal: Mutex<Option<Refusal>>,
}

impl NodeVerifier {
    /// Why the server was refused, if it was.
    pub(crate) fn refusal(&self) -> Option<Refusal> {
        self.refusal
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn refuse(&self, refusal: Refusal, error: rustls::Error) -> rustls::Error {
        *self.refusal.lock().unwrap_or_else(PoisonError::into_inner) = Some(refusal);
        error
    }
}

impl ServerCertVerifier for NodeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)
            .map_err(|e| self.refuse(Refusal::Untrusted(e.to_string()), e))?;
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )
        .map_err(|e| self.refuse(Refusal::Untrusted(e.to_string()), e))?;
        let presented = node_id_of(end_entity).map_err(|e| {
            self.refuse(
                Refusal::NoNodeId(e.to_string()),
                rustls::Error::InvalidCertificate(CertificateError::NotValidForName),
            )
        })?;
        if presented != self.expected {
            return Err(self.refuse(
                Refusal::OtherNode(presented),
                rustls::Error::InvalidCertificate(CertificateError::NotValidForName),
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_transport_config_is_consistent() {
        TransportConfig::default().to_quinn().unwrap();
    }

    #[test]
    fn inconsistent_transport_configs_are_refused() {
        let base = TransportConfig::default();
        let cases = [
            TransportConfig {
                keep_alive: Duration::from_secs(10),
                ..base.clone()
            },
            TransportConfig {
                keep_alive: Duration::ZERO,
                ..base.clone()
            },
            TransportConfig {
                receive_window_bytes: 1,
                ..base.clone()
            },
            TransportConfig {
                send_window_bytes: 0,
                ..base.clone()
            },
        ];
        for case in cases {
            assert!(
                matches!(case.to_quinn(), Err(TlsError::Config { .. })),
                "{case:?}"
            );
        }
    }
}
