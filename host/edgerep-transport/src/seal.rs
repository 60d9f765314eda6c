//! Signing and verifying origin seals (see `edgerep_wire::seal`) with the node keys and
//! certificates of the deployment CA: a node signs with the key of its TLS identity, and a
//! seal verifies against the certificate of its origin, which must chain to the same CA and
//! name the origin. Certificates travel with what they sign, so a node can verify origins it
//! never connected to.

use std::sync::Arc;

use edgerep_wire::event::NodeId;
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::server::ParsedCertificate;
use rustls::sign::SigningKey;
use rustls::{RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, SignatureVerificationAlgorithm, UnixTime};

use crate::certs::{Identity, crypto_provider, node_id_of};

/// The scheme node keys sign with (`edgerep certs` makes ECDSA P-256 keys).
const SCHEME: SignatureScheme = SignatureScheme::ECDSA_NISTP256_SHA256;

/// Why a key, a certificate or a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The node's private key cannot be loaded for signing.
    #[error("the node key cannot sign: {0}")]
    KeyUnusable(String),
    /// The node's key is of another kind than the deployment signs with.
    #[error(
        "the node key is not an ECDSA P-256 key, which seals are signed with: issue this node a P-256 key (as `edgerep init` does), or set replication.authenticate = false"
    )]
    NotP256,
    /// Signing failed.
    #[error("signing failed: {0}")]
    SignFailed(String),
    /// The deployment CA's certificate is unusable.
    #[error("the CA certificate: {0}")]
    BadCa(String),
    /// The bytes are not a certificate.
    #[error("not a certificate: {0}")]
    NotACertificate(String),
    /// The certificate does not chain to the deployment CA, or is not valid now.
    #[error("not a certificate of this deployment: {0}")]
    NotOfDeployment(String),
    /// The certificate names no node (or not one node).
    #[error("{0}")]
    NoNode(String),
    /// No verifier for the deployment's signature scheme.
    #[error("no ECDSA P-256 verifier")]
    NoVerifier,
    /// The signature is not the named node's over the message.
    #[error("signature by {0} does not verify")]
    BadSignature(NodeId),
}

/// Signs seals as this node.
pub struct Signer {
    key: Arc<dyn SigningKey>,
    cert: Vec<u8>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").finish_non_exhaustive()
    }
}

impl Signer {
    /// A signer with `identity`'s key.
    pub fn new(identity: &Identity) -> Result<Signer, SealError> {
        let key = crypto_provider()
            .key_provider
            .load_private_key(identity.key().clone_key())
            .map_err(|e| SealError::KeyUnusable(e.to_string()))?;
        if key.choose_scheme(&[SCHEME]).is_none() {
            return Err(SealError::NotP256);
        }
        Ok(Signer {
            key,
            cert: identity.cert().to_vec(),
        })
    }

    /// The signature of `message`.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SealError> {
        let signer = self
            .key
            .choose_scheme(&[SCHEME])
            .ok_or(SealError::NotP256)?;
        signer
            .sign(message)
            .map_err(|e| SealError::SignFailed(e.to_string()))
    }

    /// This node's certificate (DER), which verifies its signatures.
    pub fn cert(&self) -> &[u8] {
        &self.cert
    }
}

/// Checks certificates against the deployment CA and signatures against certificates.
pub struct Verifier {
    roots: Arc<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").finish_non_exhaustive()
    }
}

/// A certificate that chains to the CA, with what verifying a signature needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeKey {
    /// The node the certificate names.
    pub node: NodeId,
    /// The subject public key (the contents of the certificate's public key bit string).
    pub public_key: Vec<u8>,
}

impl Verifier {
    /// A verifier trusting `identity`'s CA.
    pub fn new(identity: &Identity) -> Result<Verifier, SealError> {
        let mut roots = RootCertStore::empty();
        roots
            .add(identity.ca_cert().clone())
            .map_err(|e| SealError::BadCa(e.to_string()))?;
        Ok(Verifier {
            roots: Arc::new(roots),
            algorithms: crypto_provider().signature_verification_algorithms,
        })
    }

    /// Checks a certificate (DER): it chains to the CA and names one node.
    ///
    /// Checked as of the certificate's own start of validity, not of this node's clock: a seal
    /// stays verifiable after its signer's certificate expired (what an origin signed stays
    /// its history), and every node decides alike whatever its clock says. Connections are
    /// another matter: TLS checks certificates against the clock. A node taken out of the
    /// deployment is revoked in the config (a `[[revoked]]` entry), not by expiry.
    pub fn check_cert(&self, der: &[u8]) -> Result<NodeKey, SealError> {
        let cert = CertificateDer::from(der.to_vec());
        let parsed = ParsedCertificate::try_from(&cert)
            .map_err(|e| SealError::NotACertificate(e.to_string()))?;
        let (_, x509) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| SealError::NotACertificate(e.to_string()))?;
        let issued = u64::try_from(x509.validity().not_before.timestamp()).unwrap_or(0);
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            &[],
            UnixTime::since_unix_epoch(std::time::Duration::from_secs(issued)),
            self.algorithms.all,
        )
        .map_err(|e| SealError::NotOfDeployment(e.to_string()))?;
        let node = node_id_of(der).map_err(|e| SealError::NoNode(e.to_string()))?;
        let public_key = x509.public_key().subject_public_key.data.to_vec();
        Ok(NodeKey { node, public_key })
    }

    /// Verifies `signature` over `message` by `key`.
    pub fn verify(&self, key: &NodeKey, message: &[u8], signature: &[u8]) -> Result<(), SealError> {
        let algs: &[&dyn SignatureVerificationAlgorithm] = self
            .algorithms
            .mapping
            .iter()
            .find(|(scheme, _)| *scheme == SCHEME)
            .map(|(_, algs)| *algs)
            .ok_or(SealError::NoVerifier)?;
        if algs.iter().any(|alg| {
            alg.verify_signature(&key.public_key, message, signature)
                .is_ok()
        }) {
            Ok(())
        } else {
            Err(SealError::BadSignature(key.node.clone()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::Ca;

    #[test]
    fn a_signature_verifies_only_with_its_signers_certificate() {
        let ca = Ca::generate("test").unwrap();
        let a = Identity::new(&ca, &ca.issue_node("a").unwrap()).unwrap();
        let b = Identity::new(&ca, &ca.issue_node("b").unwrap()).unwrap();
        let verifier = Verifier::new(&a).unwrap();
        let signer = Signer::new(&a).unwrap();
        let sig = signer.sign(b"seal").unwrap();
        let key_a = verifier.check_cert(signer.cert()).unwrap();
        assert_eq!(key_a.node.as_str(), "a");
        verifier.verify(&key_a, b"seal", &sig).unwrap();
        assert_eq!(
            verifier.verify(&key_a, b"seat", &sig),
            Err(SealError::BadSignature(key_a.node.clone()))
        );
        let key_b = verifier.check_cert(b.cert()).unwrap();
        assert!(matches!(
            verifier.verify(&key_b, b"seal", &sig),
            Err(SealError::BadSignature(_))
        ));
        // A certificate from another CA is refused.
        let other = Ca::generate("other").unwrap();
        let stranger = Identity::new(&other, &other.issue_node("a").unwrap()).unwrap();
        let e = verifier.check_cert(stranger.cert()).unwrap_err();
        assert!(matches!(e, SealError::NotOfDeployment(_)), "{e}");
        assert!(
            e.to_string()
                .contains("not a certificate of this deployment"),
            "{e}"
        );
        assert!(matches!(
            verifier.check_cert(b"garbage"),
            Err(SealError::NotACertificate(_))
        ));
    }

    #[test]
    fn a_seal_verifies_after_its_signers_certificate_expired() {
        let ca = Ca::generate("test").unwrap();
        let a = Identity::new(&ca, &ca.issue_node("a").unwrap()).unwrap();
        let verifier = Verifier::new(&a).unwrap();
        // Issued 12 hours ago, expired an hour ago (the CA's own validity starts a day back).
        let now = time::OffsetDateTime::now_utc();
        let expired = |ca: &Ca| {
            ca.issue_node_valid(
                "b",
                now - time::Duration::hours(12),
                now - time::Duration::hours(1),
            )
            .unwrap()
        };
        let old = expired(&ca);
        // Its key signs as it did while it was valid (an Identity, for TLS, refuses it now).
        let (cert_pem, key_pem) = old.to_pem();
        assert!(Identity::from_pem(ca.cert_pem(), &cert_pem, &key_pem).is_err());
        use rustls_pki_types::pem::PemObject as _;
        let signer = Signer {
            key: crypto_provider()
                .key_provider
                .load_private_key(
                    rustls_pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap(),
                )
                .unwrap(),
            cert: old.cert_der().to_vec(),
        };
        let sig = signer.sign(b"seal").unwrap();
        let key = verifier.check_cert(old.cert_der()).unwrap();
        assert_eq!(key.node.as_str(), "b");
        verifier.verify(&key, b"seal", &sig).unwrap();
        // Another CA's certificate is still refused, however old.
        let stranger = expired(&Ca::generate("other").unwrap());
        assert!(matches!(
            verifier.check_cert(stranger.cert_der()),
            Err(SealError::NotOfDeployment(_))
        ));
    }
}
