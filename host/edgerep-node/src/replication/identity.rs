//! This node's TLS identity for replication, from the files `[replication]` names.

use edgerep_config::Config;
use edgerep_transport::certs::Identity;

/// Why this node's TLS identity could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// Peers are configured but no identity files are.
    #[error("replication: peers are configured but ca/cert/key are not")]
    NotConfigured,
    /// A file could not be read.
    #[error("replication.{setting}: cannot read {}: {source}", path.display())]
    Read {
        /// The setting naming the file (`ca`, `cert` or `key`).
        setting: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// The files do not make an identity (not PEM, wrong key, not signed by the CA).
    #[error("replication TLS identity: {0}")]
    Invalid(#[from] edgerep_transport::certs::CertError),
    /// The certificate is another node's.
    #[error("replication.cert names node {cert:?} but this node is {node:?}")]
    OtherNode {
        /// The node the certificate names.
        cert: String,
        /// This node.
        node: String,
    },
}

/// This node's TLS identity from the files `[replication]` names; it must name this node.
pub fn load_identity(config: &Config) -> Result<Identity, IdentityError> {
    let tls = config
        .replication
        .tls
        .as_ref()
        .ok_or(IdentityError::NotConfigured)?;
    let read = |path: &std::path::Path, setting: &'static str| {
        std::fs::read_to_string(path).map_err(|source| IdentityError::Read {
            setting,
            path: path.to_owned(),
            source,
        })
    };
    let names = [("ca", &tls.ca), ("cert", &tls.cert), ("key", &tls.key)]
        .map(|(key, path)| format!("replication.{key} ({})", path.display()));
    let identity = Identity::from_pem_named(
        &read(&tls.ca, "ca")?,
        &read(&tls.cert, "cert")?,
        &read(&tls.key, "key")?,
        names.each_ref().map(String::as_str),
    )?;
    if identity.node_id() != &config.node.id {
        return Err(IdentityError::OtherNode {
            cert: identity.node_id().as_str().to_owned(),
            node: config.node.id.as_str().to_owned(),
        });
    }
    Ok(identity)
}
