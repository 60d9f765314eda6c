//! The deployment CA and node certificates: generation (rcgen, ECDSA P-256), PEM in and out, and
//! the files a node reads.
//!
//! A node certificate names its node in exactly one URI subject alternative name,
//! `edgerep://node/<id>` (see [`node_id_uri`]), and also carries the id as its common name for
//! people reading it with other tools. The URI, not a DNS name, is the identity: node ids are
//! case-sensitive and may be 64 bytes long with no dots, which DNS names (case-insensitive, labels
//! of at most 63 bytes) cannot represent faithfully. Node certificates are usable both as TLS
//! server and client certificates, since every node listens and dials.
//!
//! Files: a node directory holds [`CA_CERT_FILE`] (the CA certificate only), [`NODE_CERT_FILE`]
//! and [`NODE_KEY_FILE`] (mode 0600); see [`write_node_files`] and [`Identity::load`]. The CA's
//! own key, needed only to issue more certificates, goes to [`CA_KEY_FILE`] through
//! [`Ca::write_files`] and is read back with [`Ca::load`].

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use edgerep_wire::event::NodeId;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType,
};
use rustls::RootCertStore;
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::CryptoProvider;
use rustls::server::ParsedCertificate;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use time::{Duration, OffsetDateTime};

/// File name of the CA certificate in a node directory (and next to the CA key).
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key written by [`Ca::write_files`] (mode 0600).
pub const CA_KEY_FILE: &str = "ca.key";
/// File name of a node's certificate.
pub const NODE_CERT_FILE: &str = "node.pem";
/// File name of a node's private key (mode 0600).
pub const NODE_KEY_FILE: &str = "node.key";

/// The URI scheme and path prefix of the subject alternative name that carries a node id.
pub const NODE_ID_URI_PREFIX: &str = "edgerep://node/";

/// How long a CA certificate is valid from its creation: 100 years.
pub const CA_VALIDITY_DAYS: i64 = 36_525;
/// How long a node certificate is valid from its issue: 20 years.
pub const NODE_VALIDITY_DAYS: i64 = 7_305;

/// When a CA certificate starts being valid: the Unix epoch, so that a node whose clock is
/// behind (an edge box without a battery-backed clock boots in the past) still starts and still
/// accepts its peers. Expiry still counts from the certificate's making. A node certificate
/// starts when its CA does (a seal's certificate is checked as of its own start, which must be
/// within the CA's validity).
const VALID_FROM: OffsetDateTime = OffsetDateTime::UNIX_EPOCH;

/// The subject alternative name URI that names node `id`: `edgerep://node/<id>`.
pub fn node_id_uri(id: &NodeId) -> String {
    format!("{NODE_ID_URI_PREFIX}{id}")
}

/// What went wrong making, reading or writing certificates and keys.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// A node id is not a valid node id.
    #[error("{0}")]
    InvalidNodeId(#[from] edgerep_wire::event::EventError),
    /// rcgen could not build or sign a certificate.
    #[error("cannot create {what}: {source}")]
    Generate {
        /// What was being made, such as `certificate for node "site-a"`.
        what: String,
        /// rcgen's error.
        source: rcgen::Error,
    },
    /// Text that should hold a PEM certificate or key does not hold a usable one.
    #[error("{what}: {reason}")]
    Pem {
        /// What was being read: a file path, or a description such as `CA certificate`.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A certificate does not carry a usable node id.
    #[error("certificate has no usable node id: {reason}")]
    NodeId {
        /// What is wrong: no `edgerep://node/` URI, more than one, or an invalid id.
        reason: String,
    },
    /// A certificate and key do not belong together, or a node certificate does not chain to the CA.
    #[error("{what}: {reason}")]
    Mismatch {
        /// The files or objects compared.
        what: String,
        /// What does not match.
        reason: String,
    },
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A file to write exists already with other contents (nothing is overwritten).
    #[error("{} exists already with other contents; remove it first to replace it", path.display())]
    Exists {
        /// The file.
        path: PathBuf,
    },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> CertError + '_ {
    move |source| CertError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A deployment's certificate authority: a self-signed ECDSA P-256 CA certificate and its key.
///
/// Its [`Debug`] output never shows the key.
pub struct Ca {
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// Generates a new CA whose subject common name is `name` (such as the deployment's name),
    /// valid for [`CA_VALIDITY_DAYS`], allowed to issue end-entity certificates only (path length 0).
    pub fn generate(name: &str) -> Result<Ca, CertError> {
        let what = || format!("CA {name:?}");
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| {
            CertError::Generate {
                what: what(),
                source,
            }
        })?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        dn.push(DnType::OrganizationName, "edgerep");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = VALID_FROM;
        params.not_after = now + Duration::days(CA_VALIDITY_DAYS);
        let cert = params
            .self_signed(&key)
            .map_err(|source| CertError::Generate {
                what: what(),
                source,
            })?;
        Ok(Ca {
            cert_der: cert.der().clone(),
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Reads a CA from its certificate and private key in PEM, as [`Ca::to_pem`] wrote them.
    /// Checks that the certificate is a CA certificate and that the key is its key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, CertError> {
        Ca::from_pem_named(cert_pem, key_pem, "CA certificate", "CA key")
    }

    fn from_pem_named(
        cert_pem: &str,
        key_pem: &str,
        cert_what: &str,
        key_what: &str,
    ) -> Result<Ca, CertError> {
        let cert_der = parse_one_cert(cert_pem, cert_what)?;
        let key = KeyPair::from_pem(key_pem).map_err(|e| CertError::Pem {
            what: key_what.to_owned(),
            reason: format!("not a PKCS#8 private key in PEM: {e}"),
        })?;
        let (_, x509) =
            x509_parser::parse_x509_certificate(&cert_der).map_err(|e| CertError::Pem {
                what: cert_what.to_owned(),
                reason: format!("not an X.509 certificate: {e}"),
            })?;
        if !x509.is_ca() {
            return Err(CertError::Pem {
                what: cert_what.to_owned(),
                reason: "not a CA certificate (basic constraints do not say CA)".to_owned(),
            });
        }
        if x509.public_key().subject_public_key.data.as_ref() != key.der_bytes() {
            return Err(CertError::Mismatch {
                what: format!("{cert_what} and {key_what}"),
                reason: "the key is not the certificate's key".to_owned(),
            });
        }
        let issuer =
            Issuer::from_ca_cert_der(&cert_der, key).map_err(|source| CertError::Generate {
                what: format!("issuer from {cert_what}"),
                source,
            })?;
        Ok(Ca {
            cert_pem: cert_pem.to_owned(),
            cert_der,
            issuer,
        })
    }

    /// Reads a CA from the files `cert_path` (its certificate) and `key_path` (its key), such as
    /// [`CA_CERT_FILE`] and [`CA_KEY_FILE`] in the directory [`Ca::write_files`] wrote.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Ca, CertError> {
        let cert_pem = fs::read_to_string(cert_path).map_err(io_error(cert_path))?;
        let key_pem = fs::read_to_string(key_path).map_err(io_error(key_path))?;
        Ca::from_pem_named(
            &cert_pem,
            &key_pem,
            &cert_path.display().to_string(),
            &key_path.display().to_string(),
        )
    }

    /// The CA certificate and private key in PEM: `(certificate, key)`.
    pub fn to_pem(&self) -> (String, String) {
        (self.cert_pem.clone(), self.issuer.key().serialize_pem())
    }

    /// The CA certificate in PEM (what nodes trust; no secret).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate in DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// Writes [`CA_CERT_FILE`] and [`CA_KEY_FILE`] (mode 0600) into `dir`, creating `dir` if
    /// needed. An existing file with the same contents is left as it is; one with other contents
    /// is an error ([`CertError::Exists`]) and nothing is overwritten.
    pub fn write_files(&self, dir: &Path) -> Result<(), CertError> {
        let (cert_pem, key_pem) = self.to_pem();
        write_new_files(
            dir,
            &[
                (CA_CERT_FILE, cert_pem.as_bytes(), 0o644),
                (CA_KEY_FILE, key_pem.as_bytes(), 0o600),
            ],
        )
    }

    /// Issues a certificate for node `node_id` (a valid node id: 1 to 64 bytes of
    /// `[A-Za-z0-9._-]`, starting with a letter or digit) with a fresh ECDSA P-256 key, valid for
    /// [`NODE_VALIDITY_DAYS`] for both TLS server and client authentication.
    pub fn issue_node(&self, node_id: &str) -> Result<NodeCert, CertError> {
        let (from, to) = self.node_validity();
        self.issue_node_valid(node_id, from, to)
    }

    /// When a node certificate issued now is valid: from the CA's own start (a CA made by an
    /// earlier build starts a day before it was made, not at the epoch) for
    /// [`NODE_VALIDITY_DAYS`].
    fn node_validity(&self) -> (OffsetDateTime, OffsetDateTime) {
        let now = OffsetDateTime::now_utc();
        let ca_from = x509_parser::parse_x509_certificate(&self.cert_der)
            .ok()
            .and_then(|(_, c)| {
                OffsetDateTime::from_unix_timestamp(c.validity().not_before.timestamp()).ok()
            })
            .unwrap_or(VALID_FROM);
        (
            ca_from.max(VALID_FROM),
            now + Duration::days(NODE_VALIDITY_DAYS),
        )
    }

    /// [`Ca::issue_node`] valid from `not_before` to `not_after`.
    pub(crate) fn issue_node_valid(
        &self,
        node_id: &str,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<NodeCert, CertError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| {
            CertError::Generate {
                what: format!("a key for node {node_id:?}"),
                source,
            }
        })?;
        self.issue_node_for(node_id, key, not_before, not_after)
    }

    /// [`Ca::issue_node`] for a certificate that stops being valid at `not_after_unix_s` (a
    /// short-lived one).
    pub fn issue_node_until(
        &self,
        node_id: &str,
        not_after_unix_s: i64,
    ) -> Result<NodeCert, CertError> {
        let (from, _) = self.node_validity();
        let to = OffsetDateTime::from_unix_timestamp(not_after_unix_s).map_err(|e| {
            CertError::Generate {
                what: format!(
                    "a certificate for node {node_id:?} ending at {not_after_unix_s} ({e})"
                ),
                source: rcgen::Error::Time,
            }
        })?;
        self.issue_node_valid(node_id, from, to)
    }

    /// [`Ca::issue_node`] for the key `key_pem` (PEM): a renewal. A node keeps its key, since
    /// its peers check the seals of its earlier events against it.
    pub fn renew_node(&self, node_id: &str, key_pem: &str) -> Result<NodeCert, CertError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| CertError::Pem {
            what: format!("the key of node {node_id:?}"),
            reason: e.to_string(),
        })?;
        let (from, to) = self.node_validity();
        self.issue_node_for(node_id, key, from, to)
    }

    fn issue_node_for(
        &self,
        node_id: &str,
        key: KeyPair,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<NodeCert, CertError> {
        let id = NodeId::parse(node_id)?;
        let what = || format!("certificate for node {id:?}");
        let uri = rcgen::string::Ia5String::try_from(node_id_uri(&id)).map_err(|e| {
            CertError::Generate {
                what: what(),
                source: e,
            }
        })?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, id.as_str());
        dn.push(DnType::OrganizationName, "edgerep");
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|source| CertError::Generate {
                what: what(),
                source,
            })?;
        Ok(NodeCert {
            id,
            cert_der: cert.der().clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// A node's certificate (issued by a [`Ca`]) and private key.
///
/// Its [`Debug`] output never shows the key.
#[derive(Clone)]
pub struct NodeCert {
    id: NodeId,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    key_pem: String,
}

impl fmt::Debug for NodeCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeCert")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl NodeCert {
    /// Reads a node certificate and its private key in PEM, as [`NodeCert::to_pem`] wrote them.
    /// Checks that the certificate names a node and that the key is its key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<NodeCert, CertError> {
        NodeCert::from_pem_named(cert_pem, key_pem, "node certificate", "node key")
    }

    fn from_pem_named(
        cert_pem: &str,
        key_pem: &str,
        cert_what: &str,
        key_what: &str,
    ) -> Result<NodeCert, CertError> {
        let cert_der = parse_one_cert(cert_pem, cert_what)?;
        let id = node_id_of(&cert_der).map_err(|e| CertError::Pem {
            what: cert_what.to_owned(),
            reason: e.to_string(),
        })?;
        let key = parse_key(key_pem, key_what)?;
        check_key_matches(&cert_der, &key, &format!("{cert_what} and {key_what}"))?;
        Ok(NodeCert {
            id,
            cert_der,
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
        })
    }

    /// The node id the certificate names.
    pub fn node_id(&self) -> &NodeId {
        &self.id
    }

    /// The certificate and private key in PEM: `(certificate, key)`.
    pub fn to_pem(&self) -> (String, String) {
        (self.cert_pem.clone(), self.key_pem.clone())
    }

    /// The certificate in PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The certificate in DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }
}

/// Writes a node directory: [`CA_CERT_FILE`] (the CA certificate, not its key),
/// [`NODE_CERT_FILE`] and [`NODE_KEY_FILE`] (mode 0600), creating `dir` if needed. An existing
/// file with the same contents is left as it is; one with other contents is an error
/// ([`CertError::Exists`]) and nothing is overwritten.
pub fn write_node_files(dir: &Path, ca: &Ca, node: &NodeCert) -> Result<(), CertError> {
    write_new_files(
        dir,
        &[
            (CA_CERT_FILE, ca.cert_pem().as_bytes(), 0o644),
            (NODE_CERT_FILE, node.cert_pem.as_bytes(), 0o644),
            (NODE_KEY_FILE, node.key_pem.as_bytes(), 0o600),
        ],
    )
}

/// Renews the certificate of node `node_id` in `dir` (its `ca.pem`, `node.pem` and `node.key`):
/// a new `node.pem` from `ca` for the key in `node.key`, which stays as it is, and `ca.pem` as
/// `ca` holds it (a renewed CA). Each replaced file is replaced whole (a temporary file, synced,
/// then renamed over it). The node takes them in at its next start.
pub fn renew_node_files(dir: &Path, ca: &Ca, node_id: &str) -> Result<NodeCert, CertError> {
    let key_path = dir.join(NODE_KEY_FILE);
    let key_pem = fs::read_to_string(&key_path).map_err(io_error(&key_path))?;
    // The certificate it replaces must be this node's, for this key: a wrong --node-id or
    // directory would give the key another node's name.
    let cert_path = dir.join(NODE_CERT_FILE);
    let cert_pem = fs::read_to_string(&cert_path).map_err(io_error(&cert_path))?;
    let before = NodeCert::from_pem(&cert_pem, &key_pem)?;
    if before.node_id().as_str() != node_id {
        return Err(CertError::Mismatch {
            what: cert_path.display().to_string(),
            reason: format!(
                "it is node {:?}'s certificate, not node {node_id:?}'s",
                before.node_id().as_str()
            ),
        });
    }
    // And the CA must be the one the node trusts (the same key: a renewed CA is fine): else
    // the node would trust another deployment's CA after its restart, and its peers refuse it.
    let ca_path = dir.join(CA_CERT_FILE);
    let trusted = parse_one_cert(
        &fs::read_to_string(&ca_path).map_err(io_error(&ca_path))?,
        &ca_path.display().to_string(),
    )?;
    if public_key_of(&trusted) != public_key_of(ca.cert_der()) {
        return Err(CertError::Mismatch {
            what: ca_path.display().to_string(),
            reason: "the node trusts another CA than the one given (--ca): renew with the CA that issued its certificate".to_owned(),
        });
    }
    let node = ca.renew_node(node_id, &key_pem)?;
    replace_file(&ca_path, ca.cert_pem().as_bytes(), 0o644)?;
    replace_file(&dir.join(NODE_CERT_FILE), node.cert_pem.as_bytes(), 0o644)?;
    Ok(node)
}

/// Writes `contents` at `path` with permissions `mode`, replacing what is there whole.
fn replace_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), CertError> {
    let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
    let result = write_synced(&tmp, contents, mode)
        .and_then(|()| fs::rename(&tmp, path).map_err(io_error(path)));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    sync_parent(path);
    Ok(())
}

/// Writes `contents` to a new file `tmp` with permissions `mode`, and syncs it.
fn write_synced(tmp: &Path, contents: &[u8], mode: u32) -> Result<(), CertError> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(tmp)
        .map_err(io_error(tmp))?;
    // The mode given at creation is reduced by the umask; set it exactly.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io_error(tmp))?;
    file.write_all(contents).map_err(io_error(tmp))?;
    file.sync_all().map_err(io_error(tmp))
}

/// Syncs the directory holding `path`, so that its new name lasts (best effort).
fn sync_parent(path: &Path) {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && let Ok(dir) = fs::File::open(dir)
    {
        let _ = dir.sync_all();
    }
}

/// What to add to a certificate refusal for its dates (`detail`: rustls's or webpki's words):
/// certificates are checked against this machine's clock, which is often what is wrong at an
/// edge site (a dead real-time-clock battery, NTP not yet synced). Empty for other refusals.
pub fn clock_note(detail: &str) -> String {
    let lower = detail.to_ascii_lowercase();
    if !(lower.contains("not valid yet")
        || lower.contains("expired")
        || lower.contains("not yet valid"))
    {
        return String::new();
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    // Seconds (left out of the key of repeated lines, see `repeats.rs`) and the year, which
    // is what a dead clock battery gets wrong.
    let reads = match time::OffsetDateTime::from_unix_timestamp(now) {
        Ok(t) => format!("{now} (Unix seconds, in the year {})", t.year()),
        Err(_) => format!("{now} (Unix seconds)"),
    };
    format!(
        "; certificates are checked against this machine's clock, which reads {reads}: if that is wrong (a dead clock battery, NTP not yet synced), set the clock"
    )
}

/// When the certificate `cert_der` stops being valid (its `notAfter`, Unix seconds); `None` if
/// it is no X.509 certificate.
pub fn not_after_unix_s(cert_der: &[u8]) -> Option<i64> {
    let (_, x509) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    Some(x509.validity().not_after.timestamp())
}

/// The node id a certificate (DER) names: the one `edgerep://node/<id>` URI subject alternative
/// name. A certificate with none, with more than one, or with an invalid id names no node.
pub fn node_id_of(cert_der: &[u8]) -> Result<NodeId, CertError> {
    let no_id = |reason: String| CertError::NodeId { reason };
    let (rest, x509) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| no_id(format!("not an X.509 certificate: {e}")))?;
    if !rest.is_empty() {
        return Err(no_id("trailing bytes after the certificate".to_owned()));
    }
    let san = x509
        .subject_alternative_name()
        .map_err(|e| no_id(format!("malformed subject alternative names: {e}")))?
        .ok_or_else(|| no_id("no subject alternative names".to_owned()))?;
    let mut ids = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) => uri.strip_prefix(NODE_ID_URI_PREFIX),
            _ => None,
        });
    let id = ids
        .next()
        .ok_or_else(|| no_id(format!("no {NODE_ID_URI_PREFIX}<id> URI name")))?;
    if ids.next().is_some() {
        return Err(no_id(format!(
            "more than one {NODE_ID_URI_PREFIX}<id> URI name"
        )));
    }
    NodeId::parse(id).map_err(|e| no_id(e.to_string()))
}

/// The permission bits (`0o777` part) of a secret file that others than its owner may read or
/// write, if they may (`None` also when it cannot be read).
pub fn open_to_others(path: &Path) -> Option<u32> {
    let mode = fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then_some(mode)
}

/// What a node needs for mutual TLS: the CA certificate it trusts, its own certificate and key,
/// and its node id (read from its certificate). Building one checks that the key belongs to the
/// certificate and that the certificate chains to the CA and is valid now.
///
/// Its [`Debug`] output never shows the key.
pub struct Identity {
    node_id: NodeId,
    ca_cert: CertificateDer<'static>,
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

impl Clone for Identity {
    fn clone(&self) -> Identity {
        Identity {
            node_id: self.node_id.clone(),
            ca_cert: self.ca_cert.clone(),
            cert: self.cert.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl Identity {
    /// The identity of `node`, trusting `ca` (in memory, as when a cluster is set up in one go).
    pub fn new(ca: &Ca, node: &NodeCert) -> Result<Identity, CertError> {
        Identity::from_pem(ca.cert_pem(), node.cert_pem(), &node.key_pem)
    }

    /// The identity from PEM text: the CA certificate, the node certificate and the node key.
    pub fn from_pem(
        ca_cert_pem: &str,
        node_cert_pem: &str,
        node_key_pem: &str,
    ) -> Result<Identity, CertError> {
        Identity::from_pem_named(
            ca_cert_pem,
            node_cert_pem,
            node_key_pem,
            ["CA certificate", "node certificate", "node key"],
        )
    }

    /// Reads a node directory as [`write_node_files`] wrote it: [`CA_CERT_FILE`],
    /// [`NODE_CERT_FILE`] and [`NODE_KEY_FILE`]. A key file that others than its owner may read
    /// is logged as a warning.
    pub fn load(dir: &Path) -> Result<Identity, CertError> {
        let paths = [CA_CERT_FILE, NODE_CERT_FILE, NODE_KEY_FILE].map(|name| dir.join(name));
        let [ca, cert, key] = &paths;
        let read = |path: &Path| fs::read_to_string(path).map_err(io_error(path));
        let texts = [read(ca)?, read(cert)?, read(key)?];
        if let Some(mode) = open_to_others(key) {
            tracing::warn!(
                file = %key.display(),
                mode = format_args!("{mode:o}"),
                "private key file is readable by others than its owner; chmod 600 it"
            );
        }
        let names = paths.each_ref().map(|p| p.display().to_string());
        Identity::from_pem_named(
            &texts[0],
            &texts[1],
            &texts[2],
            names.each_ref().map(String::as_str),
        )
    }

    /// [`Identity::from_pem`], each text named in errors by `names` (its setting and file,
    /// say): CA certificate, node certificate, node key.
    pub fn from_pem_named(
        ca_cert_pem: &str,
        node_cert_pem: &str,
        node_key_pem: &str,
        [ca_what, cert_what, key_what]: [&str; 3],
    ) -> Result<Identity, CertError> {
        let ca_cert = parse_one_cert(ca_cert_pem, ca_what)?;
        let cert = parse_one_cert(node_cert_pem, cert_what)?;
        let node_id = node_id_of(&cert).map_err(|e| CertError::Pem {
            what: cert_what.to_owned(),
            reason: e.to_string(),
        })?;
        let key = parse_key(node_key_pem, key_what)?;
        check_key_matches(&cert, &key, &format!("{cert_what} and {key_what}"))?;
        check_chain(&ca_cert, &cert).map_err(|reason| CertError::Mismatch {
            what: format!("{cert_what} and {ca_what}"),
            reason,
        })?;
        Ok(Identity {
            node_id,
            ca_cert,
            cert,
            key,
        })
    }

    /// This node's id, from its certificate.
    pub fn node_id(&self) -> &NodeId {
        &self.node_id
    }

    /// The CA certificate (DER) this node trusts.
    pub fn ca_cert(&self) -> &CertificateDer<'static> {
        &self.ca_cert
    }

    /// This node's certificate (DER).
    pub fn cert(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// When this node's certificate and the CA's expire, whichever is first (Unix seconds):
    /// past it, peers refuse new connections from this node. `None` if neither parses.
    pub fn expires_at(&self) -> Option<i64> {
        [self.cert.as_ref(), self.ca_cert.as_ref()]
            .into_iter()
            .filter_map(|der| x509_parser::parse_x509_certificate(der).ok())
            .map(|(_, c)| c.validity().not_after.timestamp())
            .min()
    }

    /// This node's private key (DER).
    pub fn key(&self) -> &PrivateKeyDer<'static> {
        &self.key
    }
}

/// The public key (its DER) a certificate holds; `None` if it does not parse.
fn public_key_of(cert: &[u8]) -> Option<Vec<u8>> {
    x509_parser::parse_x509_certificate(cert)
        .ok()
        .map(|(_, c)| c.tbs_certificate.subject_pki.raw.to_vec())
}

/// The one certificate in `pem`.
fn parse_one_cert(pem: &str, what: &str) -> Result<CertificateDer<'static>, CertError> {
    let bad = |reason: String| CertError::Pem {
        what: what.to_owned(),
        reason,
    };
    let mut certs = CertificateDer::pem_slice_iter(pem.as_bytes());
    let cert = match certs.next() {
        Some(Ok(cert)) => cert,
        Some(Err(e)) => return Err(bad(format!("malformed PEM: {e}"))),
        None => return Err(bad("no PEM CERTIFICATE block".to_owned())),
    };
    if certs.next().is_some() {
        return Err(bad(
            "more than one certificate; expected exactly one".to_owned()
        ));
    }
    Ok(cert)
}

fn parse_key(pem: &str, what: &str) -> Result<PrivateKeyDer<'static>, CertError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| CertError::Pem {
        what: what.to_owned(),
        reason: format!("no usable PEM private key: {e}"),
    })
}

pub(crate) fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Checks that `key` is the private key of `cert`.
fn check_key_matches(
    cert: &CertificateDer<'static>,
    key: &PrivateKeyDer<'static>,
    what: &str,
) -> Result<(), CertError> {
    let mismatch = |reason: String| CertError::Mismatch {
        what: what.to_owned(),
        reason,
    };
    let signing_key = crypto_provider()
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| mismatch(format!("unusable private key: {e}")))?;
    rustls::sign::CertifiedKey::new(vec![cert.clone()], signing_key)
        .keys_match()
        .map_err(|_| mismatch("the key is not the certificate's key".to_owned()))
}

/// Checks that `cert` chains to `ca` and is valid now, for TLS server authentication (client
/// authentication is checked by the peer; both usages are issued together).
fn check_chain(ca: &CertificateDer<'static>, cert: &CertificateDer<'static>) -> Result<(), String> {
    let mut roots = RootCertStore::empty();
    roots
        .add(ca.clone())
        .map_err(|e| format!("unusable CA certificate: {e}"))?;
    let parsed = ParsedCertificate::try_from(cert).map_err(|e| e.to_string())?;
    verify_server_cert_signed_by_trust_anchor(
        &parsed,
        &roots,
        &[],
        UnixTime::now(),
        crypto_provider().signature_verification_algorithms.all,
    )
    .map_err(|e| {
        let e = e.to_string();
        format!(
            "not issued by this CA or not valid now ({e}){}",
            clock_note(&e)
        )
    })
}

/// Writes each `(name, contents, mode)` into `dir` with [`write_new_file`], creating `dir` if
/// needed; when one exists with other contents, none is written (a key is never left without
/// its certificate, or a certificate without its key, by a refusal).
fn write_new_files(dir: &Path, files: &[(&str, &[u8], u32)]) -> Result<(), CertError> {
    for (name, contents, _) in files {
        let path = dir.join(name);
        match fs::read(&path) {
            Ok(existing) if existing != *contents => return Err(CertError::Exists { path }),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(&path)(e)),
        }
    }
    fs::create_dir_all(dir).map_err(io_error(dir))?;
    for (name, contents, mode) in files {
        write_new_file(&dir.join(name), contents, *mode)?;
    }
    Ok(())
}

/// Writes `contents` to a new file at `path` with permissions `mode`, atomically (a temporary
/// file, synced, then linked into place, which never replaces an existing file). An existing
/// file with the same contents counts as written.
fn write_new_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), CertError> {
    if let Ok(existing) = fs::read(path) {
        if existing == contents {
            return Ok(());
        }
        return Err(CertError::Exists {
            path: path.to_owned(),
        });
    }
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp = path.with_file_name(format!(
        ".{}.{}.tmp",
        file_name.unwrap_or_default(),
        std::process::id()
    ));
    let result =
        write_synced(&tmp, contents, mode).and_then(|()| match fs::hard_link(&tmp, path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(CertError::Exists {
                path: path.to_owned(),
            }),
            Err(e) => Err(CertError::Io {
                path: path.to_owned(),
                source: e,
            }),
        });
    let _ = fs::remove_file(&tmp);
    result?;
    sync_parent(path);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A certificate about to expire, renewed: the key stays, the new certificate is valid
    /// for years and makes an identity with the same key; a renewal under another node's id
    /// is refused and changes nothing.
    #[test]
    fn a_renewed_certificate_keeps_the_key() {
        let ca = Ca::generate("test").unwrap();
        let now = OffsetDateTime::now_utc();
        let old = ca
            .issue_node_valid("node-1", now - Duration::days(1), now + Duration::days(3))
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        write_node_files(dir.path(), &ca, &old).unwrap();
        let identity = |dir: &Path| {
            let read = |f: &str| fs::read_to_string(dir.join(f)).unwrap();
            Identity::from_pem(
                &read(CA_CERT_FILE),
                &read(NODE_CERT_FILE),
                &read(NODE_KEY_FILE),
            )
            .unwrap()
        };
        let before = identity(dir.path());
        let soon = before.expires_at().unwrap();
        assert!(soon - now.unix_timestamp() <= 3 * 86_400, "{soon}");
        let key = fs::read(dir.path().join(NODE_KEY_FILE)).unwrap();
        let cert = fs::read(dir.path().join(NODE_CERT_FILE)).unwrap();
        let refused = renew_node_files(dir.path(), &ca, "node-2").unwrap_err();
        assert!(
            refused
                .to_string()
                .contains(r#"node "node-1"'s certificate, not node "node-2"'s"#),
            "{refused}"
        );
        assert_eq!(fs::read(dir.path().join(NODE_CERT_FILE)).unwrap(), cert);
        let other = Ca::generate("other").unwrap();
        let refused = renew_node_files(dir.path(), &other, "node-1").unwrap_err();
        assert!(
            refused.to_string().contains("the node trusts another CA"),
            "{refused}"
        );
        assert_eq!(fs::read(dir.path().join(NODE_CERT_FILE)).unwrap(), cert);
        renew_node_files(dir.path(), &ca, "node-1").unwrap();
        assert_eq!(fs::read(dir.path().join(NODE_KEY_FILE)).unwrap(), key);
        assert_ne!(fs::read(dir.path().join(NODE_CERT_FILE)).unwrap(), cert);
        let after = identity(dir.path());
        assert_eq!(after.node_id().as_str(), "node-1");
        assert_eq!(after.key(), before.key());
        assert!(after.expires_at().unwrap() > soon + 365 * 86_400);
        // Files that are no certificate or key: refused by name, nothing replaced.
        let renewed = fs::read(dir.path().join(NODE_CERT_FILE)).unwrap();
        for (file, what) in [(NODE_KEY_FILE, "key"), (CA_CERT_FILE, "ca.pem")] {
            let good = fs::read(dir.path().join(file)).unwrap();
            fs::write(dir.path().join(file), "not PEM at all").unwrap();
            let refused = renew_node_files(dir.path(), &ca, "node-1").unwrap_err();
            assert!(refused.to_string().contains(what), "{refused}");
            assert_eq!(fs::read(dir.path().join(NODE_CERT_FILE)).unwrap(), renewed);
            fs::write(dir.path().join(file), good).unwrap();
        }
    }

    #[test]
    fn issued_certificate_names_its_node() {
        let ca = Ca::generate("test").unwrap();
        let node = ca.issue_node("Site_a.1-x").unwrap();
        assert_eq!(node.node_id().as_str(), "Site_a.1-x");
        assert_eq!(node_id_of(node.cert_der()).unwrap().as_str(), "Site_a.1-x");
    }

    #[test]
    fn longest_node_id_fits() {
        let ca = Ca::generate("test").unwrap();
        let id = "a".repeat(64);
        let node = ca.issue_node(&id).unwrap();
        assert_eq!(node_id_of(node.cert_der()).unwrap().as_str(), id);
    }

    #[test]
    fn invalid_node_ids_are_refused() {
        let ca = Ca::generate("test").unwrap();
        for id in ["", "-a", "a/b", "a b", &"a".repeat(65)] {
            let err = ca.issue_node(id).unwrap_err();
            assert!(matches!(err, CertError::InvalidNodeId(_)), "{id:?}: {err}");
        }
    }

    #[test]
    fn ca_certificate_names_no_node() {
        let ca = Ca::generate("test").unwrap();
        let err = node_id_of(ca.cert_der()).unwrap_err();
        assert!(
            err.to_string().contains("no subject alternative names"),
            "{err}"
        );
        assert!(node_id_of(b"garbage").is_err());
    }
}
