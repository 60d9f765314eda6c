//! Starter configs for a node on loopback, and free loopback ports.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use edgerep_config::{Config, starter_toml};
use edgerep_wire::NodeId;

/// A free loopback TCP port for a node to take (see [`free_port_for`]).
pub fn free_port() -> anyhow::Result<u16> {
    free_port_for(|p| TcpListener::bind(("127.0.0.1", p)).is_ok())
}

/// A free loopback UDP port (a QUIC endpoint's; see [`free_port_for`]).
pub fn free_udp_port() -> anyhow::Result<u16> {
    free_port_for(|p| UdpSocket::bind(("127.0.0.1", p)).is_ok())
}

/// A loopback port that `free` says is free now, chosen below the kernel's range of ephemeral
/// ports (`/proc/sys/net/ipv4/ip_local_port_range`). A port the OS handed out from that range
/// and that was released for the node to take could be handed again, before the node starts,
/// to any socket bound to port 0 (a QUIC client's, say): the node then could not listen.
pub fn free_port_for(free: impl Fn(u16) -> bool) -> anyhow::Result<u16> {
    const LOWEST: u16 = 10_000;
    let ephemeral_from = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    if ephemeral_from > LOWEST + 1_000 {
        let span = u32::from(ephemeral_from - LOWEST);
        // Where to start looking: differs between processes and calls, so that nodes set up at
        // once do not all try the same ports.
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
            ^ std::process::id().wrapping_mul(2_654_435_761);
        for i in 0..span.min(2_000) {
            let port = LOWEST + ((seed.wrapping_add(i.wrapping_mul(7_919))) % span) as u16;
            if free(port) {
                return Ok(port);
            }
        }
    }
    // No room below the ephemeral range: let the OS pick.
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
    // --force replaces a starter, not the config of a node that ran: its peers, certificates
    // and ports would go, and the node would take writes that replicate to nobody.
    if path.exists()
        && let Some(data) = crate::cluster::holds_a_store(dir)?
    {
        bail!(
            "{} holds a node's data, so --force does not replace {} (its peers, certificates and ports would go, and the node would take writes that replicate to nobody): edit it instead, or stop the node and move its data away to start over",
            data.display(),
            path.display()
        );
    }
    if let (Some(api), Some(repl)) = (api_port, replication_port)
        && api == repl
    {
        bail!(
            "--api-port and --replication-port are both {api}: the API (TCP) and replication \
             (QUIC, UDP) each need a port of their own"
        );
    }
    let mut api_port = api_port.map_or_else(free_port, Ok)?;
    // A port picked here is never the one given for replication.
    while replication_port == Some(api_port) {
        api_port = free_port()?;
    }
    let api = SocketAddr::from(([127, 0, 0, 1], api_port));
    // Replication is QUIC: the port must be free for UDP.
    let mut repl_port = replication_port.map_or_else(free_udp_port, Ok)?;
    while repl_port == api.port() {
        repl_port = free_udp_port()?;
    }
    let repl = SocketAddr::from(([127, 0, 0, 1], repl_port));
    crate::files::write_durably(&path, starter_toml(&id, api, repl).as_bytes())?;
    // The starter must pass its own check.
    Config::load(&path)?;
    Ok(path)
}
