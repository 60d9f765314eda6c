//! [`Transport`]: one QUIC endpoint (one UDP socket) that listens for peers and dials them.
//!
//! Every connection it hands out is a [`PeerConnection`] whose `peer` is authenticated: the
//! other side presented a certificate from our CA naming that node id, and (when it dialed us)
//! the id is one of the configured peers, or (when we dialed) it is the id we asked for.
//! Everything refused is logged at `warn` with the remote address and the reason.

use std::collections::BTreeSet;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use edgerep_wire::event::NodeId;
use quinn::{ConnectionError, TransportErrorCode, VarInt};
use rustls::AlertDescription;
use rustls_pki_types::CertificateDer;

use crate::certs::{Identity, node_id_of};
use crate::tls::{self, Refusal, TlsError, TransportConfig};

/// Dial failures, by peer: a peer that refuses this node does so at every dial, every few
/// seconds; one that answers is forgotten.
static DIAL_FAILURES: crate::repeats::Repeats = crate::repeats::Repeats::new();

/// Application close codes this crate and its users close connections with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseCode {
    /// Orderly shutdown.
    Normal,
    /// The peer's certificate names a node that is not among our configured peers.
    UnknownPeer,
    /// The peer sent bytes that are not a valid frame (too large, truncated).
    BadFrame,
    /// The peer broke the replication protocol.
    Protocol,
    /// Two machines were seen using the peer's node id (the peer's identity was copied).
    DuplicateId,
}

impl CloseCode {
    /// The QUIC application error code.
    pub fn code(self) -> VarInt {
        VarInt::from_u32(match self {
            CloseCode::Normal => 0,
            CloseCode::UnknownPeer => 1,
            CloseCode::BadFrame => 2,
            CloseCode::Protocol => 3,
            CloseCode::DuplicateId => 4,
        })
    }

    /// The close code a QUIC application error code stands for, if it is one of ours.
    pub fn from_code(code: VarInt) -> Option<CloseCode> {
        [
            CloseCode::Normal,
            CloseCode::UnknownPeer,
            CloseCode::BadFrame,
            CloseCode::Protocol,
            CloseCode::DuplicateId,
        ]
        .into_iter()
        .find(|c| c.code() == code)
    }
}

/// An authenticated connection to a peer node.
#[derive(Debug, Clone)]
pub struct PeerConnection {
    /// The peer's node id, from its certificate.
    pub peer: NodeId,
    /// The peer's UDP address.
    pub remote: SocketAddr,
    /// When the peer's certificate stops being valid (Unix seconds), as it presented it at the
    /// handshake (`None`: unreadable, which the handshake would have refused). TLS checks the
    /// dates at the handshake only: a session outliving them is for its holder to end.
    pub certificate_expires_unix_s: Option<i64>,
    /// The QUIC connection (replication runs on its link: see `link.rs`).
    pub(crate) conn: quinn::Connection,
}

impl PeerConnection {
    /// The QUIC connection itself, for the transport's own tests of what lies under the link.
    #[cfg(feature = "raw-quic")]
    #[doc(hidden)]
    pub fn quic(&self) -> &quinn::Connection {
        &self.conn
    }

    /// The code the peer closed the connection with, if it did so with one of ours.
    pub fn closed_by_peer_with(&self) -> Option<CloseCode> {
        match self.conn.close_reason()? {
            ConnectionError::ApplicationClosed(close) => CloseCode::from_code(close.error_code),
            _ => None,
        }
    }

    /// Whether `other` is this same connection (a clone of it).
    pub fn is(&self, other: &PeerConnection) -> bool {
        self.conn.stable_id() == other.conn.stable_id()
    }

    /// Closes the connection at once with `code` and `reason` (sent to the peer, at most a few
    /// hundred bytes of it), abandoning unsent data.
    pub fn close(&self, code: CloseCode, reason: &str) {
        self.conn.close(code.code(), reason.as_bytes());
    }
}

/// Binding the endpoint failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
    /// The TLS or QUIC configuration could not be built.
    #[error("peer listener {listen}: {source}")]
    Tls {
        /// The address to listen on.
        listen: SocketAddr,
        /// The configuration error.
        source: TlsError,
    },
    /// The UDP socket could not be bound.
    #[error("cannot listen for peers on {listen} (UDP): {source}")]
    Io {
        /// The address to listen on.
        listen: SocketAddr,
        /// The socket error.
        source: io::Error,
    },
}

/// A peer that dialed us was refused, or its handshake failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum AcceptError {
    /// The client certificate chains to our CA but names a node that is not a configured peer.
    #[error("refused connection from {remote}: unknown peer {id:?} (not in our peer list)")]
    UnknownPeer {
        /// The remote address.
        remote: SocketAddr,
        /// The node id its certificate presents.
        id: NodeId,
    },
    /// The client certificate is not from our CA (or is expired, or not for client use).
    #[error("refused connection from {remote}: its certificate is not accepted ({detail})")]
    Untrusted {
        /// The remote address.
        remote: SocketAddr,
        /// rustls's reason.
        detail: String,
    },
    /// The client certificate chains to our CA but names no node.
    #[error("refused connection from {remote}: its certificate names no node ({detail})")]
    NoNodeId {
        /// The remote address.
        remote: SocketAddr,
        /// What is wrong with the certificate.
        detail: String,
    },
    /// The client refused our certificate (so it trusts another CA, or expected another node).
    #[error("connection from {remote}: the peer refused our certificate ({detail})")]
    RefusedByPeer {
        /// The remote address.
        remote: SocketAddr,
        /// The alert or reason the peer sent.
        detail: String,
    },
    /// The handshake failed otherwise (TLS error, wrong ALPN, timeout, ...).
    #[error("handshake with {remote} failed: {detail}")]
    Handshake {
        /// The remote address.
        remote: SocketAddr,
        /// What failed.
        detail: String,
    },
}

/// Dialing a peer failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The address is not `host:port`, or its host name does not resolve.
    #[error("peer {peer}: cannot resolve address {address:?}: {reason}")]
    Resolve {
        /// The node we meant to reach.
        peer: NodeId,
        /// The address as given.
        address: String,
        /// The resolver's answer.
        reason: String,
    },
    /// The client configuration could not be built.
    #[error("peer {peer} at {address}: {source}")]
    Tls {
        /// The node we meant to reach.
        peer: NodeId,
        /// The address as given.
        address: String,
        /// The configuration error.
        source: TlsError,
    },
    /// quinn would not start the connection (such as an address of the other IP family than
    /// our socket).
    #[error("peer {peer} at {address} ({remote}): cannot connect: {reason}")]
    Start {
        /// The node we meant to reach.
        peer: NodeId,
        /// The address as given.
        address: String,
        /// The resolved address.
        remote: SocketAddr,
        /// quinn's reason.
        reason: String,
    },
    /// The server's certificate chains to our CA but names another node.
    #[error(
        "peer {expected} at {address} ({remote}): node id mismatch: the server is {presented:?}, not {expected:?}"
    )]
    IdMismatch {
        /// The node we meant to reach.
        expected: NodeId,
        /// The node id the server's certificate presents.
        presented: NodeId,
        /// The address as given.
        address: String,
        /// The resolved address.
        remote: SocketAddr,
    },
    /// The server's certificate is not from our CA (or is expired, or names no node).
    #[error("peer {peer} at {address} ({remote}): its certificate is not accepted ({detail})")]
    Untrusted {
        /// The node we meant to reach.
        peer: NodeId,
        /// The address as given.
        address: String,
        /// The resolved address.
        remote: SocketAddr,
        /// What is wrong with it.
        detail: String,
    },
    /// The server refused us during the handshake (it does not trust our certificate).
    #[error("peer {peer} at {address} ({remote}): refused by the server: {detail}")]
    Refused {
        /// The node we meant to reach.
        peer: NodeId,
        /// The address as given.
        address: String,
        /// The resolved address.
        remote: SocketAddr,
        /// The alert or reason the server sent.
        detail: String,
    },
    /// The handshake failed otherwise (timeout: nothing answers there; TLS error; ...).
    #[error("peer {peer} at {address} ({remote}): {detail}")]
    Handshake {
        /// The node we meant to reach.
        peer: NodeId,
        /// The address as given.
        address: String,
        /// The resolved address.
        remote: SocketAddr,
        /// What failed.
        detail: String,
    },
}

/// The addresses a peer's `host:port` names now (a name is looked up each time: it may move).
pub async fn addresses_of(address: &str) -> io::Result<Vec<SocketAddr>> {
    Ok(tokio::net::lookup_host(address).await?.collect())
}

/// A human description of why a connection closed, naming our close codes and the TLS alerts a
/// peer sends when it refuses a certificate. Use it for a connection a peer closed right after
/// [`Transport::connect`] returned: a server checks the client's certificate and its peer list
/// only after the client considers the handshake done, so such a refusal shows as the
/// connection closing, with this reason, on its first use.
pub fn describe_close(error: &ConnectionError) -> String {
    match error {
        ConnectionError::ApplicationClosed(close) => {
            let reason = String::from_utf8_lossy(&close.reason);
            match CloseCode::from_code(close.error_code) {
                Some(CloseCode::UnknownPeer) => format!("refused by the peer: {reason}"),
                Some(CloseCode::BadFrame) => format!("closed by the peer: bad frame: {reason}"),
                Some(CloseCode::Protocol) => {
                    format!("closed by the peer: protocol violation: {reason}")
                }
                Some(CloseCode::Normal) => format!("closed by the peer: {reason}"),
                Some(CloseCode::DuplicateId) => format!(
                    "closed by the peer: it saw another machine using this node's id: {reason}"
                ),
                None => error.to_string(),
            }
        }
        ConnectionError::ConnectionClosed(close) => match tls_alert(close.error_code) {
            Some(AlertDescription::CertificateExpired) => "refused by the peer: our certificate expired or is not yet valid by the peer's clock (if our certificate's dates are right, the peer's clock is wrong)".to_owned(),
            Some(alert) => format!(
                "refused by the peer: {}",
                describe_alert(alert, "our certificate is not from its CA")
            ),
            None => error.to_string(),
        },
        ConnectionError::TransportError(e) => match tls_alert(e.code) {
            Some(alert) => format!(
                "{}: {}{}",
                describe_alert(alert, "the peer's certificate is not from our CA"),
                e.reason,
                crate::certs::clock_note(&e.reason)
            ),
            None => error.to_string(),
        },
        _ => error.to_string(),
    }
}

/// The TLS alert a QUIC crypto error code carries.
fn tls_alert(code: TransportErrorCode) -> Option<AlertDescription> {
    let code = u64::from(code);
    (0x100..0x200)
        .contains(&code)
        .then(|| AlertDescription::from((code & 0xff) as u8))
}

fn describe_alert(alert: AlertDescription, unknown_ca: &str) -> String {
    match alert {
        AlertDescription::UnknownCA => unknown_ca.to_owned(),
        AlertDescription::CertificateRequired => "no client certificate".to_owned(),
        AlertDescription::BadCertificate => "bad certificate (wrong node id?)".to_owned(),
        AlertDescription::CertificateExpired => "certificate expired or not yet valid".to_owned(),
        AlertDescription::NoApplicationProtocol => "not an edgerep peer (ALPN)".to_owned(),
        other => format!("TLS alert {other:?}"),
    }
}

/// One QUIC endpoint: listens on its address for configured peers and dials peers from the
/// same UDP socket. Cheap to clone (clones share the endpoint).
#[derive(Debug, Clone)]
pub struct Transport {
    endpoint: quinn::Endpoint,
    identity: Arc<Identity>,
    peers: Peers,
    config: Arc<TransportConfig>,
}

/// The ids that may connect (replaced when the node's config is reloaded).
type Peers = Arc<std::sync::RwLock<BTreeSet<NodeId>>>;

impl Transport {
    /// Binds the UDP socket `listen` (port 0 picks a free port; see [`Transport::local_addr`])
    /// and starts accepting handshakes. `peers` are the configured peers, `(id, "host:port")`:
    /// only their ids may connect. Must be called within a tokio runtime.
    pub fn bind(
        listen: SocketAddr,
        identity: Identity,
        peers: Vec<(NodeId, String)>,
        config: TransportConfig,
    ) -> Result<Transport, BindError> {
        let server = tls::server_config(&identity, &config)
            .map_err(|source| BindError::Tls { listen, source })?;
        let endpoint = quinn::Endpoint::server(server, listen)
            .map_err(|source| BindError::Io { listen, source })?;
        Ok(Transport {
            endpoint,
            identity: Arc::new(identity),
            peers: Arc::new(std::sync::RwLock::new(
                peers.into_iter().map(|(id, _)| id).collect(),
            )),
            config: Arc::new(config),
        })
    }

    /// Replaces the ids that may connect from now on (connections already up stay; the
    /// caller closes those it no longer wants).
    pub fn set_peers(&self, peers: impl IntoIterator<Item = NodeId>) {
        *self.peers.write().unwrap_or_else(|e| e.into_inner()) = peers.into_iter().collect();
    }

    /// The address the socket is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// This node's id.
    pub fn node_id(&self) -> &NodeId {
        self.identity.node_id()
    }

    /// The next connection attempt from a remote, or `None` once the endpoint is closed.
    ///
    /// Returns as soon as a first packet arrives; the handshake runs in
    /// [`Incoming::handshake`], which the caller should run in a task of its own so that a slow
    /// or silent remote does not hold up the others.
    pub async fn accept(&self) -> Option<Incoming> {
        let incoming = self.endpoint.accept().await?;
        Some(Incoming {
            incoming,
            peers: self.peers.clone(),
        })
    }

    /// Dials node `peer` at `address` (`host:port`; a host name is resolved, and an address of
    /// our socket's IP family is preferred) and completes the handshake. Succeeds only if the
    /// server's certificate chains to our CA and names `peer`.
    ///
    /// The server checks our certificate and its peer list after our side of the handshake is
    /// done, so its refusal shows as the connection closing soon after: see [`describe_close`].
    pub async fn connect(
        &self,
        peer: &NodeId,
        address: &str,
    ) -> Result<PeerConnection, ConnectError> {
        let remote = self.resolve(peer, address).await?;
        let (client, verifier) = tls::client_config_checked(&self.identity, peer, &self.config)
            .map_err(|source| ConnectError::Tls {
                peer: peer.clone(),
                address: address.to_owned(),
                source,
            })?;
        let connecting = self
            .endpoint
            .connect_with(client, remote, tls::SERVER_NAME)
            .map_err(|e| ConnectError::Start {
                peer: peer.clone(),
                address: address.to_owned(),
                remote,
                reason: e.to_string(),
            })?;
        let conn = match connecting.await {
            Ok(conn) => conn,
            Err(error) => {
                let err = connect_failure(peer, address, remote, verifier.refusal(), &error);
                let text = edgerep_wire::text::one_line(&err.to_string()).into_owned();
                match DIAL_FAILURES.warn(&format!("{peer} {text}")) {
                    Some(0) => tracing::warn!(peer = %peer, %remote, "{text}"),
                    Some(repeated) => {
                        tracing::warn!(peer = %peer, %remote, repeated, "{text} (the same failure {repeated} times more since it was last logged as a warning; repeats within 10 min are logged at debug level)")
                    }
                    None => tracing::debug!(peer = %peer, %remote, "{text}"),
                }
                return Err(err);
            }
        };
        // It answered: its next failure is news, a warning again.
        DIAL_FAILURES.forget(&format!("{peer} "));
        // The verifier accepted the certificate, so it names `peer`; check again all the same.
        let cert = peer_cert(&conn);
        let presented = cert.as_ref().and_then(|cert| node_id_of(cert).ok());
        if presented.as_ref() != Some(peer) {
            conn.close(CloseCode::Protocol.code(), b"node id mismatch");
            return Err(ConnectError::Handshake {
                peer: peer.clone(),
                address: address.to_owned(),
                remote,
                detail: "the server's certificate does not name the node dialed".to_owned(),
            });
        }
        Ok(PeerConnection {
            peer: peer.clone(),
            remote,
            certificate_expires_unix_s: cert.as_deref().and_then(crate::certs::not_after_unix_s),
            conn,
        })
    }

    async fn resolve(&self, peer: &NodeId, address: &str) -> Result<SocketAddr, ConnectError> {
        let failed = |reason: String| ConnectError::Resolve {
            peer: peer.clone(),
            address: address.to_owned(),
            reason,
        };
        let addrs = addresses_of(address)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let ipv4 = self
            .endpoint
            .local_addr()
            .map(|a| a.is_ipv4())
            .unwrap_or(true);
        addrs
            .iter()
            .find(|a| a.is_ipv4() == ipv4)
            .or(addrs.first())
            .copied()
            .ok_or_else(|| failed("no addresses".to_owned()))
    }

    /// Closes every connection with `code` and `reason` and stops accepting.
    pub fn close(&self, code: CloseCode, reason: &str) {
        self.endpoint.close(code.code(), reason.as_bytes());
    }

    /// Waits until every connection has been closed and its close sent (after
    /// [`Transport::close`], so that peers learn why).
    pub async fn wait_idle(&self) {
        self.endpoint.wait_idle().await;
    }
}

/// The certificate the other side of `conn` presented.
fn peer_cert(conn: &quinn::Connection) -> Option<CertificateDer<'static>> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    certs.first().cloned()
}

fn connect_failure(
    peer: &NodeId,
    address: &str,
    remote: SocketAddr,
    refusal: Option<Refusal>,
    error: &ConnectionError,
) -> ConnectError {
    let peer = peer.clone();
    let address = address.to_owned();
    match refusal {
        Some(Refusal::OtherNode(presented)) => ConnectError::IdMismatch {
            expected: peer,
            presented,
            address,
            remote,
        },
        Some(Refusal::Untrusted(detail)) => ConnectError::Untrusted {
            peer,
            address,
            remote,
            detail: format!("{detail}{}", crate::certs::clock_note(&detail)),
        },
        Some(Refusal::NoNodeId(detail)) => ConnectError::Untrusted {
            peer,
            address,
            remote,
            detail: format!("it names no node: {detail}"),
        },
        None => match error {
            ConnectionError::ConnectionClosed(_) | ConnectionError::ApplicationClosed(_) => {
                ConnectError::Refused {
                    peer,
                    address,
                    remote,
                    detail: describe_close(error),
                }
            }
            ConnectionError::TimedOut => ConnectError::Handshake {
                peer,
                address,
                remote,
                detail: "timed out: no answer (is the node running and the address right?)"
                    .to_owned(),
            },
            _ => ConnectError::Handshake {
                peer,
                address,
                remote,
                detail: describe_close(error),
            },
        },
    }
}

/// A connection attempt from a remote, not yet authenticated.
#[derive(Debug)]
pub struct Incoming {
    incoming: quinn::Incoming,
    peers: Peers,
}

impl Incoming {
    /// The remote's UDP address (not yet validated).
    pub fn remote_address(&self) -> SocketAddr {
        self.incoming.remote_address()
    }

    /// Refuses the attempt without a handshake (such as when shutting down).
    pub fn refuse(self) {
        self.incoming.refuse();
    }

    /// Completes the handshake and returns the connection if the remote's certificate is from
    /// our CA and names a configured peer. Otherwise the connection is closed (an unknown peer
    /// with [`CloseCode::UnknownPeer`] and a reason naming its id), the refusal is logged at
    /// `warn` with the remote address, and the error says why.
    pub async fn handshake(self) -> Result<PeerConnection, AcceptError> {
        let remote = self.incoming.remote_address();
        let result = self.complete(remote).await;
        if let Err(err) = &result {
            // The reason may be the remote's own words (its close frame), sent before any
            // certificate: one line.
            let err = edgerep_wire::text::one_line(&err.to_string()).into_owned();
            // A refused or decommissioned site may try again every few seconds (an edgerep
            // node dials from the port it listens on; other clients from a new port each
            // time): a failure repeats whatever the remote's port.
            static REPEATS: crate::repeats::Repeats = crate::repeats::Repeats::new();
            let same = err.replace(&remote.to_string(), &remote.ip().to_string());
            match REPEATS.warn(&same) {
                Some(0) => tracing::warn!(%remote, "{err}"),
                Some(repeated) => {
                    tracing::warn!(%remote, repeated, "{err} (the same failure {repeated} times more since it was last logged as a warning; repeats within 10 min are logged at debug level)")
                }
                None => tracing::debug!(%remote, "{err}"),
            }
        }
        result
    }

    async fn complete(self, remote: SocketAddr) -> Result<PeerConnection, AcceptError> {
        let conn = match self.incoming.accept() {
            Ok(connecting) => connecting.await,
            Err(e) => Err(e),
        }
        .map_err(|error| accept_failure(remote, &error))?;
        let Some(cert) = peer_cert(&conn) else {
            conn.close(CloseCode::Protocol.code(), b"no client certificate");
            return Err(AcceptError::NoNodeId {
                remote,
                detail: "no client certificate".to_owned(),
            });
        };
        let id = match node_id_of(&cert) {
            Ok(id) => id,
            Err(e) => {
                conn.close(CloseCode::Protocol.code(), b"certificate names no node");
                return Err(AcceptError::NoNodeId {
                    remote,
                    detail: e.to_string(),
                });
            }
        };
        let known = self
            .peers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&id);
        if !known {
            let reason = format!("unknown peer {id:?}");
            conn.close(CloseCode::UnknownPeer.code(), reason.as_bytes());
            return Err(AcceptError::UnknownPeer { remote, id });
        }
        Ok(PeerConnection {
            peer: id,
            remote,
            certificate_expires_unix_s: crate::certs::not_after_unix_s(&cert),
            conn,
        })
    }
}

fn accept_failure(remote: SocketAddr, error: &ConnectionError) -> AcceptError {
    match error {
        ConnectionError::TransportError(e)
            if tls_alert(e.code) == Some(AlertDescription::UnknownCA) =>
        {
            AcceptError::Untrusted {
                remote,
                detail: e.reason.clone(),
            }
        }
        ConnectionError::ConnectionClosed(close) if tls_alert(close.error_code).is_some() => {
            AcceptError::RefusedByPeer {
                remote,
                detail: describe_close(error),
            }
        }
        _ => AcceptError::Handshake {
            remote,
            detail: describe_close(error),
        },
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn close_codes_round_trip() {
        for code in [
            CloseCode::Normal,
            CloseCode::UnknownPeer,
            CloseCode::BadFrame,
            CloseCode::Protocol,
            CloseCode::DuplicateId,
        ] {
            assert_eq!(CloseCode::from_code(code.code()), Some(code));
        }
        assert_eq!(CloseCode::from_code(VarInt::from_u32(99)), None);
    }

    #[test]
    fn crypto_codes_carry_alerts() {
        assert_eq!(
            tls_alert(TransportErrorCode::crypto(48)),
            Some(AlertDescription::UnknownCA)
        );
        assert_eq!(tls_alert(TransportErrorCode::PROTOCOL_VIOLATION), None);
    }
}
