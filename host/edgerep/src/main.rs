//! `edgerep`: the edge replicator daemon and its command-line tool.
//!
//! Exit codes: 0 success; 1 the key (or thing asked for) is absent; 2 usage or config error;
//! 3 the node refused the request with a 4xx (bad input, with its message); 4 the node could not
//! be reached, failed, did not answer in time or refused with a 5xx (a retry may pass); 5 a
//! plugin failed (`plugin run`, `plugin test`).

mod demo;
mod plugin_cmd;

use edgerep_wire::text::one_line;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use edgerep_config::Config;

use edgerep_bench as bench;
use edgerep_client::client::{Client, Outcome};
use edgerep_client::cluster;
use edgerep_client::starter::write_starter;

/// jemalloc, not glibc's malloc. Events are decoded on the tokio runtime's workers (connection tasks) and freed by the
/// committer: glibc's arenas (capped at two to bound resident memory) then serialize those frees
/// on the arena locks. `bench replicate` on one machine, glibc then jemalloc, alternating:
/// catch-up 0.381 and 0.343 of raw redb against 0.597 and 0.655, peak resident memory within a
/// few MB of each other. (mimalloc was measured at 207 MB peak by an earlier build.)
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options (its `malloc_conf`), read before `main`: two arenas, as glibc had, with
/// freed pages given back to the system a second after (checked as the node allocates: there
/// is no background thread).
#[repr(transparent)]
struct MallocConf(*const std::ffi::c_char);

// SAFETY: the pointer is to a static string, never written.
#[allow(unsafe_code)]
unsafe impl Sync for MallocConf {}

#[allow(unsafe_code)]
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: MallocConf =
    MallocConf(c"narenas:2,dirty_decay_ms:1000,muzzy_decay_ms:0".as_ptr());

const EXIT_ABSENT: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_REFUSED: u8 = 3;
const EXIT_FAILED: u8 = 4;

/// edgerep: store change events at an edge site and replicate them to the other sites.
///
/// Exit codes: 0 ok, 1 absent, 2 usage or config error, 3 refused by the node, 4 node unreachable or failed, 5 plugin failed.
#[derive(Debug, Parser)]
#[command(name = "edgerep", version = edgerep_node::VERSION_WITH_COMMIT, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a starter config DIR/edgerep.toml (loopback ports, any collection accepted), or with
    /// --cluster N a local cluster: DIR/ca/ and DIR/node-1/edgerep.toml … DIR/node-N/edgerep.toml
    /// with a fresh CA, certificates, loopback ports and every node peered with the others.
    Init {
        /// Directory for the config and the node's data.
        dir: PathBuf,
        /// Write a cluster of N nodes (2 to 64) instead of one node.
        #[arg(long, value_name = "N")]
        cluster: Option<usize>,
        /// Node id (letters, digits, '.', '_', '-').
        #[arg(long, default_value = "node-1", conflicts_with = "cluster")]
        node_id: String,
        /// Local API port (default: a free loopback port).
        #[arg(long, conflicts_with = "cluster", value_parser = clap::value_parser!(u16).range(1..))]
        api_port: Option<u16>,
        /// Peer (replication) port (default: a free loopback port).
        #[arg(long, conflicts_with = "cluster", value_parser = clap::value_parser!(u16).range(1..))]
        replication_port: Option<u16>,
        /// Overwrite an existing config (with --cluster: the CA, configs and certificates;
        /// never a node's data, refused while a node directory holds some).
        #[arg(long)]
        force: bool,
    },
    /// Mutual-TLS certificates for replication: a deployment CA and node certificates.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Run a node in the foreground; logs go to stderr; stops on SIGINT or SIGTERM.
    Run {
        /// The node's config file.
        #[arg(long)]
        config: PathBuf,
        /// Take writes at once, without first learning from a peer how far it holds this
        /// node's own events (for a node that is alone; after a restore from a backup, only
        /// when no peer ever held events this node lost).
        #[arg(long)]
        alone: bool,
    },
    /// Write a JSON value to a key.
    Put {
        /// The node's config file (for the API address).
        #[arg(long)]
        config: PathBuf,
        /// Collection.
        collection: String,
        /// Key.
        key: String,
        /// The value, as JSON text.
        json_value: String,
        /// Send this idempotency key: a retry with the same key (after a timeout, a crash of
        /// the node) gets the first answer and writes nothing again.
        #[arg(long, value_name = "KEY")]
        idempotency_key: Option<String>,
        /// The causal context of the read this write is based on (`get --versions` prints it):
        /// the write then supersedes only what that read saw.
        #[arg(long, value_name = "CONTEXT")]
        context: Option<String>,
    },
    /// Print a key's value as JSON (exit 1 when absent).
    Get {
        /// The node's config file.
        #[arg(long)]
        config: PathBuf,
        /// Collection.
        collection: String,
        /// Key.
        key: String,
        /// Print every concurrent version with its metadata instead of the resolved value.
        #[arg(long)]
        versions: bool,
    },
    /// Delete a key.
    Del {
        /// The node's config file.
        #[arg(long)]
        config: PathBuf,
        /// Collection.
        collection: String,
        /// Key.
        key: String,
        /// Send this idempotency key (see `put`).
        #[arg(long, value_name = "KEY")]
        idempotency_key: Option<String>,
        /// The causal context of the read this delete is based on (see `put`).
        #[arg(long, value_name = "CONTEXT")]
        context: Option<String>,
    },
    /// Print the live keys of a collection, one JSON object a line, in key order.
    Scan {
        /// The node's config file.
        #[arg(long)]
        config: PathBuf,
        /// Collection.
        collection: String,
        /// Only keys with this prefix.
        #[arg(long)]
        prefix: Option<String>,
        /// Only keys at or after this one.
        #[arg(long)]
        start: Option<String>,
        /// Only keys before this one.
        #[arg(long)]
        end: Option<String>,
        /// Stop after this many keys.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Print changes as they are committed, one JSON object a line, each with its feed position.
    Watch {
        /// The node's config file.
        #[arg(long)]
        config: PathBuf,
        /// Start after this feed position (0: from the beginning); resume with the last position printed.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// The `generation` printed with that position: the node refuses (exit 3) a position
        /// an earlier run gave that it numbers again (after a restore or a crash).
        #[arg(long)]
        generation: Option<u64>,
        /// Only changes to this collection.
        #[arg(long)]
        collection: Option<String>,
        /// Stop after this many changes.
        #[arg(long)]
        limit: Option<u64>,
        /// Stop at the end of the feed instead of waiting for new changes.
        #[arg(long)]
        no_follow: bool,
    },
    /// Print the node's status as JSON, including the state "digest".
    Status {
        /// The node's config file.
        #[arg(long)]
        config: PathBuf,
        /// Also recheck the store (changelog without gaps, digest recomputed).
        #[arg(long)]
        verify: bool,
        /// Exit 4, naming each on stderr, when the node needs an operator: a halted or paused
        /// collection, replication halted, forks, unreadable origins, local writes waiting, a
        /// peer not connected or configured otherwise, dead letters, damage found at open.
        #[arg(long)]
        check: bool,
    },
    /// Have a running node take in its changed config file without a restart: plugins, transforms
    /// on ingest, new collections, upgrades (`effective_from`), authorization and revocations.
    /// The file is checked here first (as `config check` does); the node then reads it again and
    /// refuses, naming what, any change that needs a restart. SIGHUP does the same.
    Reload {
        /// The node's config file (the one it was started with, edited).
        #[arg(long)]
        config: PathBuf,
    },
    /// Compare this node's state with a peer's (or every connected peer's) now, repair what
    /// differs, and print what was found: anti-entropy on demand.
    Reconcile {
        /// The node's config file.
        #[arg(long)]
        config: PathBuf,
        /// Only this peer.
        #[arg(long)]
        peer: Option<String>,
    },
    /// Give the store file's free space back to the filesystem (after changelog compaction
    /// removed a backlog, say). The node must be stopped; a crash midway loses nothing.
    Shrink {
        /// The node's config file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Tools for drills and diagnosis; they act on a stopped node's store.
    Debug {
        #[command(subcommand)]
        command: DebugCommand,
    },
    /// Config file tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Run a 3-node cluster on loopback: sites cut off then connected, a conflict settled by a
    /// resolver plugin, a site offline and back, a dead letter replayed after a reload, a
    /// damaged store repaired by anti-entropy.
    Demo {
        /// Directory for the demo nodes (default: a new temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Exit after the walkthrough instead of serving until Ctrl-C.
        #[arg(long)]
        once: bool,
    },
    /// Plugin author tools: start a plugin (new), build it into a component (build), run its
    /// vectors (test), check a component (check), run it once on an input (run).
    Plugin {
        #[command(subcommand)]
        command: plugin_cmd::PluginCommand,
    },
    /// Events plugins failed on: list, show, replay, delete.
    DeadLetters {
        #[command(subcommand)]
        command: plugin_cmd::DeadLetterCommand,
    },
    /// Benchmarks that print figures next to the raw limits measured in the same run.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
}

#[derive(Debug, Subcommand)]
enum DebugCommand {
    /// Damage one key's stored state behind the store's bookkeeping (a drill: the restarted
    /// node finds the damage, and anti-entropy repairs it from a peer). Refuses while the node
    /// runs.
    Damage {
        /// The node's config file.
        #[arg(long)]
        config: PathBuf,
        /// The key's collection.
        #[arg(long)]
        collection: String,
        /// The key.
        #[arg(long)]
        key: String,
        /// Flip the last byte of the stored versions instead of removing them.
        #[arg(long)]
        flip_byte: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Check a config file; print the problem (file, key, what is wrong) and exit 2 if there is one.
    Check {
        /// The config file.
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Events per second through the local API into the store, against raw redb.
    Ingest(bench::ingest::IngestArgs),
    /// Per-event cost of plugins, and ingest with a transform against ingest without plugins.
    Plugin(bench::plugin::PluginArgs),
    /// Anti-entropy between two nodes with many keys, some removed from one: sessions, round
    /// trips, bytes and time to agreement, against sending the whole state as a snapshot.
    Reconcile(bench::reconcile::ReconcileArgs),
    /// Two nodes on loopback: end-to-end replication throughput and latency, against raw redb and raw quinn.
    Replicate(bench::replicate::ReplicateArgs),
    /// Nodes on loopback peered as a chain, a star and meshes: latency per relay hop, and
    /// deliveries per write (ideal N−1), duplicates and CPU per event under a burst.
    Topology(bench::topology::TopologyArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli.command) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("edgerep: {e:#}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

fn init_logging() {
    init_logging_with("info");
}

/// Logs to stderr at `default` (or `RUST_LOG`), with colours only on a terminal (a log file
/// gets plain text).
pub(crate) fn init_logging_with(default: &str) {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

fn load(config: &Path) -> anyhow::Result<Config> {
    Ok(Config::load(config)?)
}

/// `edgerep shrink`: gives the stopped node's free pages back to the filesystem.
fn shrink(config: &Path) -> anyhow::Result<u8> {
    let config = load(config)?;
    let path = config.node.data_dir.join(edgerep_node::STORE_FILE);
    if !path.exists() {
        eprintln!("{}: no store here (has the node run?)", path.display());
        return Ok(EXIT_USAGE);
    }
    match edgerep_store::shrink::shrink_file(&path, &config.node.id) {
        Ok(s) => {
            println!(
                "{}: {} bytes before, {} after ({} given back)",
                path.display(),
                s.before,
                s.after,
                s.before.saturating_sub(s.after)
            );
            Ok(0)
        }
        Err(e) if e.is_already_open() => {
            eprintln!(
                "{}: the store is open: stop the node first (the file is shrunk while nothing uses it)",
                path.display()
            );
            Ok(EXIT_USAGE)
        }
        Err(e) => anyhow::bail!("{}: {e}", path.display()),
    }
}

/// `edgerep debug damage`: opens the stopped node's store and damages one key.
fn debug_damage(config: &Path, collection: &str, key: &str, flip: bool) -> anyhow::Result<u8> {
    let config = load(config)?;
    let path = config.node.data_dir.join(edgerep_node::STORE_FILE);
    if !path.exists() {
        eprintln!("{}: no store here (has the node run?)", path.display());
        return Ok(EXIT_USAGE);
    }
    let how = if flip {
        edgerep_store::aae::Damage::FlipByte
    } else {
        edgerep_store::aae::Damage::Remove
    };
    let damaged = match edgerep_store::StoreWriter::damage_file(
        &path,
        &config.node.id,
        collection,
        &[key.as_bytes().to_vec()],
        how,
    ) {
        Ok(d) => d,
        Err(e) if e.is_already_open() => {
            eprintln!(
                "{}: the store is open: stop the node first (the damage must happen behind its back, not under it)",
                path.display()
            );
            return Ok(EXIT_USAGE);
        }
        Err(e) => anyhow::bail!("{}: {e}", path.display()),
    };
    if damaged > 0 {
        println!(
            "{collection}/{key}: {} (the digest and the index still say otherwise; the node finds it at its next start)",
            if flip { "last byte flipped" } else { "removed" }
        );
        Ok(0)
    } else {
        eprintln!("{collection}/{key}: no such key in the store");
        Ok(EXIT_USAGE)
    }
}

fn client(config: &Path) -> anyhow::Result<Client> {
    let config = load(config)?;
    let token = match &config.api.token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("api.token_file: cannot read {}", path.display()))?
                .trim()
                .to_owned(),
        ),
        None => None,
    };
    // Longer than the node's own timeout, which answers 408 first.
    let answer_within = std::time::Duration::from_millis(config.api.request_timeout_ms)
        + std::time::Duration::from_secs(30);
    Ok(Client::with_timeout(
        config.api.listen,
        token,
        answer_within,
    ))
}

/// Checks what the config names beyond its own text: the TLS identity must load and name this
/// node, the API token file must be readable.
fn check_files(config: &Config) -> Result<(), String> {
    // Port 0 takes any free port: nothing could find the node there (the CLI reads the API
    // address from this file; peers dial the replication address they were given).
    if config.api.listen.port() == 0 {
        return Err(format!(
            "{}: api.listen: port 0 listens on a port chosen at random, where no `edgerep` command can find the node: give a port",
            config.source.display()
        ));
    }
    // A node that only dials out (behind a NAT) needs no known port; one its peers dial does.
    if !config.peers.is_empty() && config.replication.listen.port() == 0 {
        eprintln!(
            "warning: {}: replication.listen: port 0 listens on a port chosen at random: peers cannot dial this node (it can still dial them)",
            config.source.display()
        );
    }
    // A socket bound to a loopback address sends only to this machine's own addresses (Linux
    // refuses a send elsewhere, and QUIC sees only a handshake that never ends): a peer at
    // another machine's address is out of reach both ways. An address is this machine's when a
    // socket can bind it; a name is not looked up (a warning).
    if config.replication.listen.ip().is_loopback() {
        for peer in &config.peers {
            let host = peer.address.rsplit_once(':').map_or("", |(h, _)| h);
            if host.eq_ignore_ascii_case("localhost") {
                continue;
            }
            match host.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
                Ok(ip) if ip.to_canonical().is_loopback() => {}
                Ok(ip) if std::net::UdpSocket::bind((ip, 0)).is_ok() => {}
                Ok(ip) => {
                    return Err(format!(
                        "{}: replication.listen: {} is a loopback address, but peer {:?} is at {ip}, not an address of this machine: this node could neither reach it nor be reached by it; listen on this machine's address, or on 0.0.0.0 or [::] (every interface)",
                        config.source.display(),
                        config.replication.listen,
                        peer.id.as_str(),
                    ));
                }
                Err(_) => eprintln!(
                    "warning: {}: replication.listen {} is a loopback address: peer {:?} at {:?} is reachable only if that name is an address of this machine",
                    config.source.display(),
                    config.replication.listen,
                    peer.id.as_str(),
                    peer.address
                ),
            }
        }
    }
    if let Some(tls) = &config.replication.tls {
        let read = |p: &Path, key: &str| {
            std::fs::read_to_string(p).map_err(|e| {
                format!(
                    "{}: replication.{key}: cannot read {}: {e}",
                    config.source.display(),
                    p.display()
                )
            })
        };
        let names = [("ca", &tls.ca), ("cert", &tls.cert), ("key", &tls.key)]
            .map(|(key, path)| format!("replication.{key} ({})", path.display()));
        let identity = edgerep_transport::certs::Identity::from_pem_named(
            &read(&tls.ca, "ca")?,
            &read(&tls.cert, "cert")?,
            &read(&tls.key, "key")?,
            names.each_ref().map(String::as_str),
        )
        .map_err(|e| format!("{}: {e}", config.source.display()))?;
        if identity.node_id() != &config.node.id {
            return Err(format!(
                "{}: replication.cert: {} names node {:?}, but node.id is {:?}",
                config.source.display(),
                tls.cert.display(),
                identity.node_id().as_str(),
                config.node.id.as_str()
            ));
        }
        // The seal keys, made as `run` makes them (a key TLS takes may not sign seals).
        if config.replication.authenticate {
            edgerep_node::keys::NodeKeys::new(&identity, config).map_err(|e| {
                format!(
                    "{}: replication.key {}: {e}",
                    config.source.display(),
                    tls.key.display()
                )
            })?;
        }
    }
    // The data directory: a directory (or none yet), where this user may write.
    check_data_dir(config)?;
    // The token file, checked as `run` checks it (readable, at least 16 characters).
    edgerep_node::api::Guard::from_config(config)
        .map_err(|e| format!("{}: {e}", config.source.display()))?;
    for warning in edgerep_node::secrets_open_to_others(config) {
        eprintln!("warning: {}: {warning}", config.source.display());
    }
    if !config.peers.is_empty() && !config.replication.authenticate {
        eprintln!(
            "warning: {}: replication.authenticate = false: peers' events are not checked against their origins' seals, so any peer holding a certificate of this cluster's CA can write as any other node; keep it on outside benchmarks",
            config.source.display()
        );
    }
    Ok(())
}

/// Checks `node.data_dir` without changing anything: an existing one must be a directory this
/// user may write in (and the store file in it, if any, writable); a missing one must have a
/// nearest existing ancestor that is such a directory.
fn check_data_dir(config: &Config) -> Result<(), String> {
    let dir = &config.node.data_dir;
    let refuse = |what: String| {
        Err(format!(
            "{}: node.data_dir: {what}",
            config.source.display()
        ))
    };
    let writable = |p: &Path| may(p, libc::W_OK | libc::X_OK);
    let mut existing = dir.as_path();
    while !existing.exists() {
        existing = match existing.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            // A relative path: created in the working directory.
            Some(_) => Path::new("."),
            None => return Ok(()),
        };
    }
    if !existing.is_dir() {
        return refuse(format!("{} is not a directory", existing.display()));
    }
    if !writable(existing) {
        return refuse(format!("this user may not write in {}", existing.display()));
    }
    let store = dir.join(edgerep_node::STORE_FILE);
    if store.exists() && !may(&store, libc::W_OK) {
        return refuse(format!(
            "this user may not write the store file {}",
            store.display()
        ));
    }
    Ok(())
}

/// The nice value of the async runtime's workers (the committer thread keeps 0).
const WORKER_NICE: libc::c_int = 5;

/// Gives the calling thread the nice value `nice` (Linux keeps one per thread; raising it needs
/// no privilege). A failure leaves the thread as it was.
#[allow(unsafe_code)]
fn lower_this_threads_priority(nice: libc::c_int) {
    // SAFETY: setpriority(2) with `who` = 0 acts on the calling thread only and takes no
    // pointers.
    let _ = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
}

/// Whether this process's user may do `mode` (`libc::W_OK`...) at `path`: access(2), which
/// answers for the real user (root may write anywhere but on a read-only file system). A
/// read-only file system is not the user's rights: one remounted so after disk errors is the
/// disk's failure, which the store's open reports (exit 4).
#[allow(unsafe_code)]
fn may(path: &Path, mode: libc::c_int) -> bool {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes()).is_ok_and(|c| {
        // SAFETY: `c` is a NUL-terminated path that lives across the call; access only reads it.
        let refused = unsafe { libc::access(c.as_ptr(), mode) } != 0;
        !refused || std::io::Error::last_os_error().raw_os_error() == Some(libc::EROFS)
    })
}

/// Prints an outcome's body (or its problem) and maps it to an exit code. A node answers in
/// JSON: a body that is not (something else listens where the config says the node's API is)
/// is a failure, not printed as the node's answer.
fn report(outcome: Outcome, print: impl FnOnce(&[u8])) -> u8 {
    match outcome {
        Outcome::Ok(body)
            if !body.is_empty() && serde_json::from_slice::<serde_json::Value>(&body).is_err() =>
        {
            eprintln!(
                "edgerep: the answer is not the JSON a node gives (does api.listen in the config name this node's API?): {}",
                one_line(&String::from_utf8_lossy(&body[..body.len().min(200)]))
            );
            EXIT_FAILED
        }
        Outcome::Ok(body) => {
            print(&body);
            0
        }
        // A node's answer may carry text a client or a plugin chose: its control characters
        // are escaped, so none reaches the terminal.
        Outcome::NotFound(m) => {
            eprintln!("edgerep: {}", one_line(&m));
            EXIT_ABSENT
        }
        Outcome::Refused(status, m) => {
            eprintln!("edgerep: refused ({status}): {}", one_line(&m));
            EXIT_REFUSED
        }
        Outcome::NotSent(m) => {
            eprintln!("edgerep: {}", one_line(&m));
            EXIT_REFUSED
        }
        Outcome::Failed(m) => {
            eprintln!("edgerep: {}", one_line(&m));
            EXIT_FAILED
        }
    }
}

/// What a `status?verify=true` answer says is wrong with the store, if its check failed (or
/// the answer does not say it passed).
fn verify_problem(body: &[u8]) -> Option<String> {
    let j: serde_json::Value = match serde_json::from_slice(body) {
        Ok(j) => j,
        Err(e) => return Some(format!("the node's status answer is not JSON: {e}")),
    };
    match j["verified"].as_bool() {
        Some(true) => None,
        Some(false) => Some(
            j["verify_error"]
                .as_str()
                .unwrap_or("the node gave no reason")
                .to_owned(),
        ),
        None => Some("the node's status answer has no \"verified\" field".to_owned()),
    }
}

/// What in a node's status answer needs an operator (see `status --check`), one line each.
/// `status --check` warns this many days before this node's certificate expires.
const CERT_WARN_DAYS: i64 = 30;

fn operator_needed(body: &[u8], expected_id: &str) -> Vec<String> {
    let j: serde_json::Value = match serde_json::from_slice(body) {
        Ok(j) => j,
        Err(e) => return vec![format!("the node's status answer is not JSON: {e}")],
    };
    let mut out = Vec::new();
    // The config's api.listen reached another node (a copied config, a port reused): what
    // follows is that node's status, and writes through this config land there.
    if let Some(id) = j["node_id"].as_str().filter(|id| *id != expected_id) {
        out.push(format!(
            "the node answering at this config's api.listen is {id:?}, not this config's node.id {expected_id:?} (check api.listen in both nodes' configs)"
        ));
    }
    let entries = |v: &serde_json::Value| -> Vec<(String, String)> {
        v.as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            v.as_str().map_or_else(|| v.to_string(), str::to_owned),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    for (c, why) in entries(&j["halted_collections"]) {
        out.push(format!("collection {c:?} is halted: {why}"));
    }
    if let Some(paused) = j["paused_collections"].as_object() {
        for (c, p) in paused {
            let reason = p["reason"].as_str().unwrap_or("no reason given");
            out.push(format!("collection {c:?} is paused: {reason}"));
        }
    }
    if let Some(n) = j["dead_letters"].as_u64().filter(|&n| n > 0) {
        out.push(format!("{n} dead letters wait (edgerep dead-letters list)"));
    }
    if let Some(e) = j["collections_not_declared"].as_str() {
        out.push(format!(
            "the collections this store holds could not be listed: {e}"
        ));
    }
    for c in j["collections_not_declared"]
        .as_array()
        .into_iter()
        .flatten()
    {
        out.push(format!(
            "this store holds keys of collection {c}, which the config does not declare (and accept_undeclared is false): they are not served and peers' events for it are kept out; declare it"
        ));
    }
    if let Some(e) = j["last_reload_error"].as_str() {
        out.push(e.to_owned());
    }
    for (origin, s) in j["clock_skewed_origins"].as_object().into_iter().flatten() {
        out.push(format!(
            "events of {origin} came with timestamps {} s ahead of this node's clock (within the last hour): one of the two machines' clocks is wrong, and last-writer-wins favours the one ahead; check both",
            s["ahead_ms"].as_u64().unwrap_or(0) / 1000
        ));
    }
    if let Some(e) = j["store_check_at_open"]["failed"].as_str() {
        out.push(format!("the store's check at open failed: {e}"));
    }
    if j["store_check_at_open"]["damage_found"] == true {
        out.push("the store's check at open found damage (anti-entropy repairs it from peers; see the log)".into());
    }
    let r = &j["replication"];
    if let Some(h) = r["halted"].as_str() {
        out.push(format!("replication is halted: {h}"));
    }
    if let Some(o) = r["origin_check"].as_str() {
        out.push(format!("local writes wait: {o}"));
    }
    if let Some(t) = r["another_machine_uses_this_id"].as_str() {
        out.push(format!(
            "another machine uses this node's id and identity ({t}): stop the copy and give it an identity of its own, or writes acknowledged by one of the two are lost (this report is cleared by a restart)"
        ));
    }
    if let Some(expires) = r["certificate_expires_unix_s"].as_i64() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let days = (expires - now) / 86_400;
        if expires <= now {
            out.push("this node's certificate (or its CA's) has expired: peers refuse new connections from it; renew it for the same key (`edgerep certs node --renew`, or your PKI) and restart".into());
        } else if days < CERT_WARN_DAYS {
            out.push(format!(
                "this node's certificate (or its CA's) expires in {days} days: renew it for the same key (`edgerep certs node --renew`, or your PKI) and restart before then"
            ));
        }
    }
    if let Some(n) = r["forks_total"].as_u64().filter(|&n| n > 0) {
        out.push(format!("{n} forks detected (see replication.forks)"));
    }
    for (origin, why) in entries(&r["unreadable"]) {
        out.push(format!(
            "the changelog of origin {origin} cannot be read: {why}"
        ));
    }
    for (peer, why) in entries(&r["unreadable_seals"]) {
        out.push(format!(
            "a seal of peer {peer}'s own events cannot be read here ({why}): this node's Hello to it went without proof of how far it holds them (damage in the store: `edgerep status --verify`)"
        ));
    }
    for p in r["peers"].as_array().into_iter().flatten() {
        let id = p["id"].as_str().unwrap_or("?");
        if p["revoked"] == true {
            continue;
        }
        if p["connected"] == false {
            let error = p["last_error"]
                .as_str()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default();
            out.push(format!("peer {id} is not connected{error}"));
        }
        if p["mismatches"].as_array().is_some_and(|m| !m.is_empty()) {
            out.push(format!(
                "peer {id} is configured otherwise: {}",
                p["mismatches"]
            ));
        }
        if !p["duplicate_id"].is_null() {
            out.push(format!(
                "another machine runs under peer id {id}: {}",
                p["duplicate_id"]
            ));
        }
    }
    out
}

/// Prints one line of a listing to stdout; false once stdout is closed (`edgerep scan | head`),
/// so the listing stops quietly instead of panicking on a broken pipe.
pub(crate) fn print_line(line: &str) -> bool {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").and_then(|()| out.flush()).is_ok()
}

fn print_pretty(body: &[u8]) {
    match serde_json::from_slice::<serde_json::Value>(body) {
        // (A closed stdout, `edgerep status | head`, ends the output quietly.)
        Ok(j) => {
            print_line(&serde_json::to_string_pretty(&j).unwrap_or_default());
        }
        Err(_) => print_body(body),
    }
}

/// Prints a stored value (`get`) as the node sent it: data, not an answer to read notes from.
fn print_plain(body: &[u8]) {
    // (A closed stdout, `edgerep get ... | head -c 100`, ends the output quietly.)
    print_line(String::from_utf8_lossy(body).trim_end());
}

/// Prints the node's answer to a request, with its note on stderr if a transform dropped the
/// write.
fn print_body(body: &[u8]) {
    print_plain(body);
    // A write a transform dropped succeeds with nothing written: say so where people look.
    if let Ok(answer) = serde_json::from_slice::<serde_json::Value>(body)
        && let Some(why) = answer.get("dropped").and_then(|d| d.as_str())
    {
        eprintln!("note: {why}");
    }
}

/// `edgerep certs` subcommands.
#[derive(Debug, Subcommand)]
enum CertsCommand {
    /// Create a deployment CA: DIR/ca.pem (give it to every node) and DIR/ca.key (keep private).
    Ca {
        /// Directory for the CA files.
        dir: PathBuf,
        /// The CA's name (its certificate's common name).
        #[arg(long, default_value = "edgerep deployment CA")]
        name: String,
    },
    /// Issue a node certificate: OUT/ca.pem, OUT/node.pem, OUT/node.key. Point the node's
    /// [replication] ca/cert/key at them.
    Node {
        /// Directory holding the CA (ca.pem and ca.key).
        #[arg(long)]
        ca: PathBuf,
        /// The node's id (node.id in its config).
        #[arg(long)]
        node_id: String,
        /// Renew: a new OUT/node.pem (and OUT/ca.pem) for the key already in OUT/node.key,
        /// which stays. A node keeps its key: peers check its earlier events against it.
        #[arg(long)]
        renew: bool,
        /// Directory for the node's files.
        out: PathBuf,
    },
}

fn dispatch(command: Command) -> anyhow::Result<u8> {
    match command {
        Command::Init {
            dir,
            cluster: Some(n),
            force,
            ..
        } => {
            let paths = cluster::write_cluster(&dir, n, force)?;
            for p in &paths {
                println!("wrote {}", p.display());
            }
            println!("start each node with: edgerep run --config DIR/node-I/edgerep.toml");
            Ok(0)
        }
        Command::Certs {
            command: CertsCommand::Ca { dir, name },
        } => {
            cluster::new_ca(&dir, &name)?;
            Ok(0)
        }
        Command::Certs {
            command:
                CertsCommand::Node {
                    ca,
                    node_id,
                    renew,
                    out,
                },
        } => {
            if renew {
                cluster::renew(&ca, &node_id, &out)?;
            } else {
                cluster::issue(&ca, &node_id, &out)?;
            }
            Ok(0)
        }
        Command::Init {
            dir,
            cluster: None,
            node_id,
            api_port,
            replication_port,
            force,
        } => {
            let path = write_starter(&dir, &node_id, api_port, replication_port, force)?;
            println!("wrote {}", path.display());
            println!(
                "start the node with: edgerep run --config {}",
                path.display()
            );
            Ok(0)
        }
        Command::Run { config, alone } => {
            init_logging();
            let mut config = load(&config)?;
            if let Err(e) = check_files(&config) {
                eprintln!("{e}");
                return Ok(EXIT_USAGE);
            }
            config.node.alone = alone;
            // The runtime's workers (connections, decoding, the API) yield to the committer
            // thread, which every write of the node waits for: on a small machine they would
            // otherwise take turns with it (a nice of 5 weighs a third of the default's).
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .on_thread_start(|| lower_this_threads_priority(WORKER_NICE))
                .build()
                .context("starting the async runtime")?;
            // A stop signal during the start (a long store open, plugins compiling) stops the
            // node at once: the start runs on a thread of its own (its slow steps do not yield,
            // and must not hold the worker that watches for signals, the only one on a one-CPU
            // machine), and is left unfinished (as a crash leaves it: the store and the plugin
            // cache are crash-safe) by not waiting for it. A start that finished wins over a
            // signal that came meanwhile: the node then stops as a running node does.
            let mut stopped_during_start = false;
            let code = rt.block_on(async {
                let mut signals = Signals::install()?;
                let handle = tokio::runtime::Handle::current();
                let start =
                    tokio::task::spawn_blocking(move || handle.block_on(edgerep_node::start(config)));
                let started = tokio::select! {
                    biased;
                    r = start => match r {
                        Ok(started) => started,
                        // A panic in the start stays a panic (not a config error's exit code).
                        Err(e) => std::panic::resume_unwind(e.into_panic()),
                    },
                    () = signals.stop() => {
                        tracing::warn!("stopped before the start finished: nothing was served");
                        stopped_during_start = true;
                        return Ok(0);
                    }
                };
                let node = match started {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::error!("{e}");
                        return Ok(if e.is_config() { EXIT_USAGE } else { EXIT_FAILED });
                    }
                };
                // SIGHUP reloads the config file (what takes effect without a restart); a stop
                // signal during a reload is not lost (the reload runs on to its end in its own
                // task).
                loop {
                    let signal = tokio::select! {
                        s = signals.next() => s,
                        // The node stops on its own (its disk failed): shutdown says why.
                        () = node.stopping() => Signal::Stop,
                    };
                    if signal != Signal::Reload {
                        break;
                    }
                    tokio::select! {
                        r = node.reload_file() => {
                            match r {
                                Err(e) if e.took_effect() => {
                                    tracing::error!("config reloaded, with an error: {e}");
                                }
                                Err(e) => tracing::error!("config not reloaded: {e}"),
                                Ok(_) => {}
                            }
                        }
                        () = signals.stop() => break,
                    }
                }
                tracing::info!("stopping (a second SIGINT or SIGTERM exits at once)");
                tokio::select! {
                    r = node.shutdown() => {
                        if let Err(e) = r {
                            tracing::error!("{e}");
                            return Ok(EXIT_FAILED);
                        }
                    }
                    () = signals.stop() => {
                        tracing::warn!("stopped by a second signal before the shutdown finished (the store is crash-safe: what was acknowledged is kept, except writes to periodic collections not yet synced)");
                        return Ok(EXIT_FAILED);
                    }
                }
                tracing::info!("stopped");
                Ok(0)
            });
            if stopped_during_start {
                // Dropping the runtime would wait for the start's current step to end.
                rt.shutdown_background();
            }
            code
        }
        Command::Put {
            config,
            collection,
            key,
            json_value,
            idempotency_key,
            context,
        } => Ok(report(
            client(&config)?.put_json_keyed(
                &collection,
                key.as_bytes(),
                &json_value,
                idempotency_key.as_deref(),
                context.as_deref(),
            ),
            print_body,
        )),
        Command::Get {
            config,
            collection,
            key,
            versions,
        } => Ok(report(
            client(&config)?.get(&collection, key.as_bytes(), versions),
            print_plain,
        )),
        Command::Del {
            config,
            collection,
            key,
            idempotency_key,
            context,
        } => Ok(report(
            client(&config)?.delete(
                &collection,
                key.as_bytes(),
                idempotency_key.as_deref(),
                context.as_deref(),
            ),
            print_body,
        )),
        Command::Scan {
            config,
            collection,
            prefix,
            start,
            end,
            limit,
        } => scan(&client(&config)?, &collection, prefix, start, end, limit),
        Command::Watch {
            config,
            after,
            generation,
            collection,
            limit,
            no_follow,
        } => {
            let mut params = vec![("after", after.to_string())];
            if let Some(g) = generation {
                params.push(("generation", g.to_string()));
            }
            if let Some(c) = collection {
                params.push(("collection", c));
            }
            if let Some(l) = limit {
                params.push(("limit", l.to_string()));
            }
            if no_follow {
                params.push(("follow", "false".into()));
            }
            let c = client(&config)?;
            Ok(report(c.watch(&params, print_line), |_| {}))
        }
        Command::Reload { config } => {
            // The bytes checked here are the ones the node must find in its own file (it
            // refuses, 409, when its file differs: another file, or one changed since).
            let read = Config::read_settled(&config, std::time::Duration::ZERO).and_then(|text| {
                let digest = edgerep_config::file_digest(text.as_bytes());
                Config::parse(&text, &config).map(|c| (c, digest))
            });
            let (c, digest) = match read {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return Ok(EXIT_USAGE);
                }
            };
            if let Err(e) = check_files(&c).map_err(|e| e.to_string()).and_then(|()| {
                edgerep_node::pipeline::Pipeline::check(&c).map_err(|e| e.to_string())
            }) {
                eprintln!("{e}");
                return Ok(EXIT_USAGE);
            }
            let outcome = client(&config)?.reload(Some(&digest));
            if let Outcome::Refused(409, message) = &outcome {
                eprintln!(
                    "edgerep: {} (checked: {})",
                    one_line(message),
                    config.display()
                );
                return Ok(EXIT_USAGE);
            }
            if matches!(&outcome, Outcome::Failed(m) if m.contains("cannot reach")) {
                // The address (and token) come from the edited file: a changed [api] section
                // points this command at a node that is not there yet.
                eprintln!(
                    "edgerep: this command reaches the node through the [api] of {}: if that section changed, the node still listens at its old address (an [api] change takes a restart)",
                    config.display()
                );
            }
            if let (Outcome::Refused(401, _), Some(token)) = (&outcome, &c.api.token_file) {
                // After a rotation the file holds a token the node does not know yet.
                eprintln!(
                    "edgerep: the node does not take the token in {}: if it was rotated, reload the node with SIGHUP (kill -HUP <pid>) so that it reads the file",
                    token.display()
                );
            }
            Ok(report(outcome, print_pretty))
        }
        Command::Reconcile { config, peer } => Ok(report(
            client(&config)?.reconcile(peer.as_deref()),
            print_pretty,
        )),
        Command::Shrink { config } => shrink(&config),
        Command::Debug {
            command:
                DebugCommand::Damage {
                    config,
                    collection,
                    key,
                    flip_byte,
                },
        } => debug_damage(&config, &collection, &key, flip_byte),
        Command::Status {
            config,
            verify,
            check,
        } => {
            // A failed check is answered 200 with the status (it shows what the node holds),
            // but the command fails: a script reading only the exit code must not see "ok".
            let mut problem = None;
            let mut needs = Vec::new();
            let expected_id = load(&config)?.node.id.to_string();
            let code = report(client(&config)?.status(verify), |body| {
                print_pretty(body);
                if verify {
                    problem = verify_problem(body);
                }
                if check {
                    needs = operator_needed(body, &expected_id);
                }
            });
            if code != 0 {
                return Ok(code);
            }
            if let Some(p) = &problem {
                eprintln!("edgerep: the store's check failed: {}", one_line(p));
            }
            for n in &needs {
                eprintln!("edgerep: check: {}", one_line(n));
            }
            Ok(if problem.is_some() || !needs.is_empty() {
                EXIT_FAILED
            } else {
                0
            })
        }
        Command::Config {
            command: ConfigCommand::Check { file },
        } => match Config::load(&file) {
            Ok(c) => {
                if let Err(e) = check_files(&c) {
                    eprintln!("{e}");
                    return Ok(EXIT_USAGE);
                }
                // Every plugin: its file, its sha256, its world against how it is used.
                if let Err(e) = edgerep_node::pipeline::Pipeline::check(&c) {
                    eprintln!("{e}");
                    return Ok(EXIT_USAGE);
                }
                println!(
                    "{}: ok (node {}, api {}, {} peers, {} declared collections{})",
                    file.display(),
                    c.node.id,
                    c.api.listen,
                    c.peers.len(),
                    c.collections.declared.len(),
                    if c.collections.accept_undeclared {
                        ", undeclared collections accepted"
                    } else {
                        ""
                    }
                );
                for name in c.unused_plugins() {
                    eprintln!(
                        "edgerep: warning: plugin {name:?} is loaded but no declared collection names it (transforms_on_ingest, transforms_on_apply, resolver, or an upgrade's): it never runs"
                    );
                }
                // Here only: a start and a reload say it with the store read (a former peer
                // whose events it holds, still revoked as the README's removal keeps it, is
                // no typo).
                for warning in edgerep_node::unknown_nodes_in_config(&c) {
                    eprintln!("edgerep: warning: {}: {warning}", file.display());
                }
                Ok(0)
            }
            Err(e) => {
                eprintln!("{e}");
                Ok(EXIT_USAGE)
            }
        },
        Command::Demo { dir, once } => demo::run(dir, once),
        Command::Plugin { command } => plugin_cmd::run(command),
        Command::DeadLetters { command } => plugin_cmd::dead_letters(command),
        Command::Bench {
            command: BenchCommand::Ingest(args),
        } => bench::ingest::ingest(args),
        Command::Bench {
            command: BenchCommand::Plugin(args),
        } => bench::plugin::plugin(args),
        Command::Bench {
            command: BenchCommand::Replicate(args),
        } => bench::replicate::replicate(args),
        Command::Bench {
            command: BenchCommand::Reconcile(args),
        } => bench::reconcile::reconcile(args),
        Command::Bench {
            command: BenchCommand::Topology(args),
        } => bench::topology::topology(args),
    }
}

fn scan(
    c: &Client,
    collection: &str,
    prefix: Option<String>,
    start: Option<String>,
    end: Option<String>,
    limit: Option<usize>,
) -> anyhow::Result<u8> {
    // The cursor: (parameter name, value), text or base64 as the node gave it.
    let mut after: Option<(&str, String)> = None;
    let mut printed = 0usize;
    loop {
        let mut params: Vec<(&str, &str)> = Vec::new();
        if let Some(p) = &prefix {
            params.push(("prefix", p));
        }
        if let Some(s) = &start {
            params.push(("start", s));
        }
        if let Some(e) = &end {
            params.push(("end", e));
        }
        if let Some((name, a)) = &after {
            params.push((name, a));
        }
        let body = match c.scan_page(collection, &params) {
            Outcome::Ok(b) => b,
            other => return Ok(report(other, |_| {})),
        };
        let page: serde_json::Value = match serde_json::from_slice(&body) {
            Ok(page) => page,
            // The node's fault (or not a node answering): not a usage error.
            Err(e) => {
                return Ok(report(
                    Outcome::Failed(format!("the node's scan answer is not JSON: {e}")),
                    |_| {},
                ));
            }
        };
        for item in page["items"].as_array().into_iter().flatten() {
            if limit.is_some_and(|l| printed >= l) {
                return Ok(0);
            }
            if !print_line(&item.to_string()) {
                return Ok(0);
            }
            printed += 1;
        }
        after = match (page["next"].as_str(), page["next_base64"].as_str()) {
            (Some(n), _) => Some(("after", n.to_owned())),
            (None, Some(b)) => Some(("after_base64", b.to_owned())),
            (None, None) => return Ok(0),
        };
    }
}

/// What a signal asks of a running node.
#[derive(Debug, PartialEq, Eq)]
enum Signal {
    /// SIGINT or SIGTERM.
    Stop,
    /// SIGHUP: reload the config.
    Reload,
}

/// The node's signal handlers, installed once for the whole run (before the node starts, so
/// that a SIGHUP while plugins compile does not kill the process with the default action):
/// a signal that comes while nobody waits is kept for the next wait, not lost.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("installing the SIGHUP handler")?,
        })
    }

    /// The next signal.
    async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.int.recv() => Signal::Stop,
            _ = self.term.recv() => Signal::Stop,
            _ = self.hup.recv() => Signal::Reload,
        }
    }

    /// The next SIGINT or SIGTERM.
    async fn stop(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn needed_with_expiry(in_seconds: i64) -> Vec<String> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap();
        let status = serde_json::json!({
            "node_id": "site-a",
            "replication": {"certificate_expires_unix_s": now + in_seconds},
        });
        operator_needed(status.to_string().as_bytes(), "site-a")
    }

    #[test]
    fn status_check_warns_before_the_certificate_expires_and_after() {
        const DAY: i64 = 86_400;
        assert!(needed_with_expiry(60 * DAY).is_empty());
        assert!(needed_with_expiry(CERT_WARN_DAYS * DAY + DAY).is_empty());
        let soon = needed_with_expiry(10 * DAY + 60);
        assert_eq!(soon.len(), 1, "{soon:?}");
        assert!(soon[0].contains("expires in 10 days"), "{soon:?}");
        assert!(soon[0].contains("edgerep certs node --renew"), "{soon:?}");
        let expired = needed_with_expiry(-60);
        assert_eq!(expired.len(), 1, "{expired:?}");
        assert!(expired[0].contains("has expired"), "{expired:?}");
    }

    #[test]
    fn status_check_names_an_origin_whose_clock_is_ahead() {
        let status = serde_json::json!({
            "node_id": "site-a",
            "clock_skewed_origins": {"site-b": {"ahead_ms": 86_400_000u64, "seen_s_ago": 3}},
        });
        let needed = operator_needed(status.to_string().as_bytes(), "site-a");
        assert_eq!(needed.len(), 1, "{needed:?}");
        assert!(
            needed[0].contains("events of site-b came with timestamps 86400 s ahead"),
            "{needed:?}"
        );
    }

    #[test]
    fn status_check_names_another_node_answering() {
        let status = serde_json::json!({"node_id": "site-b"});
        let needed = operator_needed(status.to_string().as_bytes(), "site-a");
        assert_eq!(needed.len(), 1, "{needed:?}");
        assert!(needed[0].contains("\"site-b\""), "{needed:?}");
        assert!(needed[0].contains("\"site-a\""), "{needed:?}");
    }
}
