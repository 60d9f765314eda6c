//! `edgerep certs` (a deployment CA and node certificates, no openssl needed) and
//! `edgerep init --cluster N DIR` (N node configs on loopback, every node peered with the others).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use edgerep_config::{Config, starter_toml};
use edgerep_transport::certs::{Ca, write_node_files};
use edgerep_wire::NodeId;

/// Creates a CA in `dir` (`ca.pem`, `ca.key`).
pub fn new_ca(dir: &Path, name: &str) -> anyhow::Result<()> {
    let ca = Ca::generate(name).context("generating the CA")?;
    ca.write_files(dir)
        .with_context(|| format!("writing the CA into {}", dir.display()))?;
    println!(
        "wrote {}/ca.pem and {}/ca.key (keep ca.key private)",
        dir.display(),
        dir.display()
    );
    Ok(())
}

/// Issues a certificate for `node_id` from the CA in `ca_dir` into `out` (`ca.pem`, `node.pem`,
/// `node.key`).
pub fn issue(ca_dir: &Path, node_id: &str, out: &Path) -> anyhow::Result<()> {
    NodeId::parse(node_id).context("--node-id")?;
    let ca = Ca::load(&ca_dir.join("ca.pem"), &ca_dir.join("ca.key"))
        .with_context(|| format!("loading the CA from {}", ca_dir.display()))?;
    let node = ca
        .issue_node(node_id)
        .context("issuing the node certificate")?;
    write_node_files(out, &ca, &node)
        .with_context(|| format!("writing the node's files into {}", out.display()))?;
    println!(
        "wrote {0}/ca.pem, {0}/node.pem and {0}/node.key for node {node_id}",
        out.display()
    );
    Ok(())
}

/// `edgerep certs node --renew`: a new certificate for the node's key in `out` (see
/// [`edgerep_transport::certs::renew_node_files`]).
pub fn renew(ca_dir: &Path, node_id: &str, out: &Path) -> anyhow::Result<()> {
    NodeId::parse(node_id).context("--node-id")?;
    let ca = Ca::load(&ca_dir.join("ca.pem"), &ca_dir.join("ca.key"))
        .with_context(|| format!("loading the CA from {}", ca_dir.display()))?;
    edgerep_transport::certs::renew_node_files(out, &ca, node_id)
        .with_context(|| format!("renewing the certificate in {}", out.display()))?;
    println!(
        "wrote {0}/ca.pem and {0}/node.pem for node {node_id}, for its key {0}/node.key (kept); restart the node to present them",
        out.display()
    );
    Ok(())
}

/// The `node-*` directories in `dir`.
fn node_dirs(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(Vec::new());
    };
    let mut dirs = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        if entry.file_name().to_string_lossy().starts_with("node-") && entry.path().is_dir() {
            dirs.push(entry.path());
        }
    }
    dirs.sort();
    Ok(dirs)
}

/// Where a node directory written by `init --cluster` holds data: its `data/`, or the
/// `data_dir` its config names, if that holds a store. A config that cannot be read counts as
/// holding data (where its store is cannot be told).
pub fn holds_a_store(node_dir: &Path) -> anyhow::Result<Option<PathBuf>> {
    // (An empty one is no node's data: a first start that failed, on a port taken, leaves it.)
    let data = node_dir.join("data");
    if data.read_dir().is_ok_and(|mut d| d.next().is_some()) {
        return Ok(Some(data));
    }
    let config = node_dir.join("edgerep.toml");
    if !config.exists() {
        return Ok(None);
    }
    match Config::load(&config) {
        Ok(c) => {
            let store = c.node.data_dir.join("edgerep.redb");
            Ok(store.exists().then_some(c.node.data_dir))
        }
        Err(e) => bail!(
            "{} cannot be read to tell where its node keeps its data, so --force does not replace it: {e} (fix it, or remove it if no node ever ran on it)",
            config.display()
        ),
    }
}

/// One node of a cluster being written.
struct Member {
    id: NodeId,
    api: SocketAddr,
    replication: SocketAddr,
}

/// Writes `dir/ca/` and `dir/node-1/edgerep.toml` … `dir/node-N/edgerep.toml`, each with its
/// certificates in `certs/`, loopback ports, and every other node as a peer. Returns the config
/// paths.
pub fn write_cluster(dir: &Path, n: usize, force: bool) -> anyhow::Result<Vec<PathBuf>> {
    if !(2..=64).contains(&n) {
        bail!("--cluster {n}: a cluster has 2 to 64 nodes");
    }
    let first = dir.join("node-1").join("edgerep.toml");
    if first.exists() && !force {
        bail!(
            "{} already exists (use --force to overwrite)",
            first.display()
        );
    }
    if force {
        // --force replaces configs and certificates, never a node's store nor the keys a store
        // was sealed with: a careless rerun over a cluster that ran would leave nodes that can
        // never start on their data again. Every node directory counts, also those past `n`.
        for node_dir in node_dirs(dir)? {
            if let Some(data) = holds_a_store(&node_dir)? {
                bail!(
                    "{} holds a node's data; --force replaces configs and certificates, not stores nor the keys they were sealed with (stop the nodes and remove their data directories yourself to start over)",
                    data.display()
                );
            }
        }
        // Only what this writes goes: the CA, each node's config and certificates. Anything
        // else an operator keeps in a node's directory (plugins, a token, a store under a
        // data_dir of its own) stays.
        let ca = dir.join("ca");
        if ca.exists() {
            std::fs::remove_dir_all(&ca).with_context(|| format!("removing {}", ca.display()))?;
        }
        for i in 1..=n {
            let node_dir = dir.join(format!("node-{i}"));
            let certs = node_dir.join("certs");
            if certs.exists() {
                std::fs::remove_dir_all(&certs)
                    .with_context(|| format!("removing {}", certs.display()))?;
            }
            let config = node_dir.join("edgerep.toml");
            if config.exists() {
                std::fs::remove_file(&config)
                    .with_context(|| format!("removing {}", config.display()))?;
            }
        }
    }
    let ca = Ca::generate("edgerep local cluster CA").context("generating the CA")?;
    ca.write_files(&dir.join("ca"))
        .with_context(|| format!("writing {}", dir.join("ca").display()))?;
    let mut members = Vec::with_capacity(n);
    let mut used = std::collections::BTreeSet::new();
    for i in 1..=n {
        let mut pick = |udp: bool| -> anyhow::Result<u16> {
            loop {
                let p = if udp {
                    crate::starter::free_udp_port()?
                } else {
                    crate::starter::free_port()?
                };
                if used.insert(p) {
                    return Ok(p);
                }
            }
        };
        members.push(Member {
            id: NodeId::parse(&format!("node-{i}"))?,
            api: SocketAddr::from(([127, 0, 0, 1], pick(false)?)),
            replication: SocketAddr::from(([127, 0, 0, 1], pick(true)?)),
        });
    }
    let mut paths = Vec::with_capacity(n);
    for me in &members {
        let node_dir = dir.join(me.id.as_str());
        let cert = ca.issue_node(me.id.as_str())?;
        write_node_files(&node_dir.join("certs"), &ca, &cert)
            .with_context(|| format!("writing {}", node_dir.join("certs").display()))?;
        let mut text = starter_toml(&me.id, me.api, me.replication)
            .replace("# ca = \"certs/ca.pem\"", "ca = \"certs/ca.pem\"")
            .replace("# cert = \"certs/node.pem\"", "cert = \"certs/node.pem\"")
            .replace("# key = \"certs/node.key\"", "key = \"certs/node.key\"");
        text.push_str("\n# The other nodes of this cluster.\n");
        for peer in members.iter().filter(|m| m.id != me.id) {
            text.push_str(&format!(
                "[[peers]]\nid = \"{}\"\naddress = \"{}\"\n\n",
                peer.id, peer.replication
            ));
        }
        let path = node_dir.join("edgerep.toml");
        crate::files::write_durably(&path, text.as_bytes())?;
        let config = Config::load(&path)?;
        if config.peers.len() != n - 1 || config.replication.tls.is_none() {
            bail!(
                "internal: the cluster config {} lacks peers or TLS",
                path.display()
            );
        }
        paths.push(path);
    }
    Ok(paths)
}
