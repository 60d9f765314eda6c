//! Starter configs for a node on loopback, and free loopback ports.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use edgerep_config::{Config, starter_toml};
use edgerep_wire::NodeId;

/// A free loopback port (the OS picks one; it is released for the node to take).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Writes a starter config into `dir` and returns its path.
pub fn write_starter(
    dir: &Path,
    node_id: &str,
    api_port: Option<u16>,
    replication_port: Option<u16>,
    force: bool,
) -> anyhow::Result<PathBuf> {
    let id = NodeId::parse(node_id).context("--node-id")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("edgerep.toml");
    if path.exists() && !force {
        bail!(
            "{} already exists (use --force to overwrite)",
            path.display()
        );
    }
    let api = SocketAddr::from(([127, 0, 0, 1], api_port.map_or_else(free_port, Ok)?));
    let mut repl_port = replication_port.map_or_else(free_port, Ok)?;
    while repl_port == api.port() {
        repl_port = free_port()?;
    }
    let repl = SocketAddr::from(([127, 0, 0, 1], repl_port));
    std::fs::write(&path, starter_toml(&id, api, repl))
        .with_context(|| format!("writing {}", path.display()))?;
    // The starter must pass its own check.
    Config::load(&path)?;
    Ok(path)
}
