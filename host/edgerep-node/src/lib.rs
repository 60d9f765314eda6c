//! A running edgerep node: the [`committer`] (group commit into the store) and the local HTTP
//! [`api`] for the applications at the site.
//!
//! Invariant: only the committer thread writes local events to the store; the API validates
//! every request fully before handing it over, so a refused request writes nothing.

pub mod api;
mod apply;
pub mod committer;
pub mod dead_letter;
pub mod dead_letter_budget;
pub mod deciders;
pub mod idempotency;
mod ingest;
pub mod keys;
mod listener;
mod log_limit;
pub mod metrics;
pub mod pipeline;
pub mod reload;
pub mod replication;
mod request;
mod solo_retention;
pub mod trace;

use std::net::SocketAddr;
use std::sync::Arc;

use edgerep_config::Config;
use edgerep_store::{Store, StoreError};
use edgerep_wire::event::EventLimits;
use edgerep_wire::value::DecodeLimits;
use edgerep_wire::{HlcClock, NodeId};
use tokio::sync::watch;

pub use committer::{CommitError, Committer};

/// Why a node did not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The data directory could not be created.
    #[error("node.data_dir: cannot create the data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: String,
        /// The IO error.
        source: std::io::Error,
    },
    /// The disk failed under the store while the node ran, or the committer thread panicked:
    /// it stopped (restart it once the cause is fixed: what was acknowledged is on disk).
    #[error(
        "the store stopped taking writes, so the node stopped (restart it once the cause is fixed, e.g. disk space freed): {0}"
    )]
    DiskFailed(String),
    /// The store could not be opened.
    #[error("cannot open store {path} (in node.data_dir): {source}")]
    Store {
        /// The redb file.
        path: String,
        /// What failed.
        source: StoreError,
    },
    /// Another process holds the store open: a node already runs on this data directory
    /// (found when its ports were taken).
    #[error(
        "a node already runs on this data directory: another process holds the store {path} open (and api.listen or replication.listen is taken); stop it first, or give this config another node.data_dir"
    )]
    AlreadyRunning {
        /// The redb file.
        path: String,
    },
    /// The store file is no store this node can open.
    #[error(
        "{path} (in node.data_dir) is not a store this node can open ({source}): if another edgerep build wrote it (a rollback to a build whose storage engine reads an older file version), run that build on it; else restore another backup, or move the file aside and start on an empty store, which its peers fill again"
    )]
    NotAStore {
        /// The redb file.
        path: String,
        /// What failed.
        source: StoreError,
    },
    /// The API address could not be bound.
    #[error("cannot listen on {addr} (api.listen): {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The IO error.
        source: std::io::Error,
    },
    /// The replication address could not be bound (checked before the store opens).
    #[error("replication.listen: cannot listen for peers on {addr} (UDP): {source}")]
    ReplicationListen {
        /// The address.
        addr: SocketAddr,
        /// The IO error.
        source: std::io::Error,
    },
    /// A plugin could not be loaded or does not fit how the config uses it.
    #[error("plugin: {0}")]
    Plugin(String),
    /// Replication could not start (listener, peers).
    #[error("{0}")]
    Replication(String),
    /// Tracing could not start.
    #[error(transparent)]
    Trace(#[from] trace::TraceError),
    /// This node's TLS identity could not be loaded.
    #[error(transparent)]
    Identity(#[from] replication::IdentityError),
    /// This node's seal keys could not be made from its identity (`path`: `replication.key`).
    #[error("replication.key {path}: {source}")]
    Keys {
        /// The key file.
        path: String,
        /// Why.
        source: keys::KeysError,
    },
    /// The HTTP server failed.
    #[error("api server failed: {0}")]
    Serve(std::io::Error),
    /// A file the config names cannot be used (the API token).
    #[error("{0}")]
    Config(String),
    /// What decides a collection changed in place since the store last ran (see [`deciders`]).
    #[error("{0}")]
    DecidersChanged(String),
    /// The store's own events were sealed with another key than the configured one.
    #[error(
        "this node's own events (sealed up to {seq}) were signed with another key than the one replication.key holds ({why}): peers check every event of node {node} against its one certificate, so the events it wrote before could no longer be verified anywhere; put the former key and certificate back, or give this site a new node id and an empty data_dir"
    )]
    KeyChanged {
        /// This node.
        node: NodeId,
        /// The sequence number of its newest seal.
        seq: u64,
        /// What the check said.
        why: String,
    },
}

impl NodeError {
    /// The node did not start because of how it is configured (its files, its identity, its
    /// plugins): starting it again unchanged fails again (`edgerep run` exits 2, not 4).
    pub fn is_config(&self) -> bool {
        // Another node on this data directory: as long as it runs, this one cannot start. Nor
        // can one whose user may not write there.
        if let NodeError::Store { source, .. } = self
            && (source.is_already_open() || source.is_not_permitted())
        {
            return true;
        }
        // A data directory that is a file, or where the node's user may not create it.
        if let NodeError::DataDir { source, .. } = self {
            use std::io::ErrorKind::*;
            return matches!(
                source.kind(),
                PermissionDenied | AlreadyExists | NotADirectory | InvalidInput
            );
        }
        matches!(
            self,
            NodeError::Plugin(_)
                | NodeError::AlreadyRunning { .. }
                | NodeError::NotAStore { .. }
                | NodeError::Identity(_)
                | NodeError::Keys { .. }
                | NodeError::Config(_)
                | NodeError::Trace(trace::TraceError::Exporter { .. })
                | NodeError::KeyChanged { .. }
                | NodeError::DecidersChanged(_)
                | NodeError::Store {
                    source: StoreError::WrongNode { .. }
                        | StoreError::LimitsLowered { .. }
                        | StoreError::OldFormat { .. }
                        | StoreError::UnsupportedFormat { .. },
                    ..
                }
        )
    }
}

/// The limits for decoding events, derived from the config.
pub fn event_limits(config: &Config) -> EventLimits {
    let l = &config.limits;
    EventLimits {
        max_event_bytes: edgerep_config::max_event_bytes(
            l.max_key_bytes,
            l.max_value_bytes,
            l.max_meta_bytes,
        ),
        max_key_bytes: l.max_key_bytes,
        max_meta_entries: l.max_meta_entries,
        max_meta_bytes: l.max_meta_bytes,
        max_context_entries: edgerep_config::MAX_CONTEXT_ENTRIES,
        value: value_limits(config),
    }
}

/// Checks a value a plugin returned: deterministic CBOR within `limits`.
pub(crate) fn check_plugin_value(
    value: &edgerep_wire::Value,
    limits: &DecodeLimits,
) -> Result<(), String> {
    edgerep_wire::Value::from_canonical(value.as_bytes().to_vec(), limits)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// The limits for decoding one application value, derived from the config.
pub fn value_limits(config: &Config) -> DecodeLimits {
    DecodeLimits {
        max_bytes: config.limits.max_value_bytes,
        max_depth: config.limits.max_value_depth,
        ..DecodeLimits::default()
    }
}

/// A node that is serving. Dropping it does not stop it: call [`RunningNode::shutdown`].
#[derive(Debug)]
pub struct RunningNode {
    /// The address the local API listens on (useful when the config asked for port 0).
    pub api_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    server: tokio::task::JoinHandle<Result<(), NodeError>>,
    replication: Option<Arc<replication::Replication>>,
    committer: std::thread::JoinHandle<()>,
    reloader: Arc<reload::Reloader>,
    /// Changelog retention when there are no peers (the replicator's otherwise).
    solo_retention: Option<solo_retention::SoloRetention>,
    traces: Arc<trace::Traces>,
    disk_failed: watch::Receiver<Option<String>>,
    /// The store, to wait until every holder let it go (its file is then free to open again).
    store: std::sync::Weak<Store>,
}

/// How long a stopping node waits for the last holders of its store (a blocking read an API
/// request began, say) to let it go.
const STORE_RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl RunningNode {
    /// Takes in a changed config without a restart (see [`reload`]); on an error nothing
    /// changed.
    pub async fn reload(&self, config: Config) -> Result<reload::Reloaded, reload::ReloadError> {
        self.reloader.reload(config).await
    }

    /// Reads the node's config file again and takes it in (SIGHUP).
    pub async fn reload_file(&self) -> Result<reload::Reloaded, reload::ReloadError> {
        self.reloader.reload_file(None).await
    }

    /// Returns when the node begins to stop on its own (its disk failed): the caller should
    /// then call [`RunningNode::shutdown`], which reports why.
    pub async fn stopping(&self) {
        let _ = self.shutdown.subscribe().wait_for(|&s| s).await;
    }

    /// Stops accepting requests, lets requests in flight finish, ends watch streams, waits for
    /// the last group commit, and closes the store.
    pub async fn shutdown(self) -> Result<(), NodeError> {
        let _ = self.shutdown.send(true);
        self.wait().await
    }

    /// Waits until the node stops (after [`RunningNode::shutdown`] or a server error).
    pub async fn wait(self) -> Result<(), NodeError> {
        let result = match self.server.await {
            Ok(r) => r,
            Err(e) => Err(NodeError::Serve(std::io::Error::other(e))),
        };
        // The replicator, the server task and the reloader held the last committer handles:
        // the thread drains and ends.
        drop(self.reloader);
        // (Its drop waits for a compaction in flight: not on the runtime's threads.)
        if let Some(solo) = self.solo_retention {
            let _ = tokio::task::spawn_blocking(move || drop(solo)).await;
        }
        if let Some(r) = self.replication {
            let _ = tokio::task::spawn_blocking(move || r.stop()).await;
        }
        let committer = self.committer;
        let _ = tokio::task::spawn_blocking(move || committer.join()).await;
        let traces = self.traces;
        let _ = tokio::task::spawn_blocking(move || traces.shutdown()).await;
        // Returned once the store's file is closed, so that it can be opened again at once (a
        // restart in the same process, a tool): a read an API request began on a blocking
        // thread may still hold it for a moment after the server stopped.
        let deadline = std::time::Instant::now() + STORE_RELEASE_WAIT;
        while self.store.strong_count() > 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        if self.store.strong_count() > 0 {
            tracing::warn!(
                "the store is still held {} s after the node stopped",
                STORE_RELEASE_WAIT.as_secs()
            );
        }
        if let Some(reason) = self.disk_failed.borrow().clone() {
            return Err(NodeError::DiskFailed(reason));
        }
        result
    }
}

/// Checks that the API's TCP address and the replication UDP address can be bound (binding
/// and releasing them; the TCP one with `SO_REUSEADDR`, as the listener itself is, so
/// connections of a previous run in TIME_WAIT do not count).
fn ports_free(config: &Config) -> Result<(), NodeError> {
    let addr = config.api.listen;
    let listen_error = |source| NodeError::Listen { addr, source };
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(listen_error)?;
    socket.set_reuseaddr(true).map_err(listen_error)?;
    socket.bind(addr).map_err(listen_error)?;
    // Bound is not enough to tell: a listener already there is found by listening.
    drop(socket.listen(1).map_err(listen_error)?);
    if !config.peers.is_empty() {
        let addr = config.replication.listen;
        std::net::UdpSocket::bind(addr)
            .map_err(|source| NodeError::ReplicationListen { addr, source })?;
    }
    Ok(())
}

/// The files holding this node's secrets (the TLS private key, the API token) that others
/// than their owner may read, one sentence each: whoever can read the key can sign events as
/// this node, and whoever can read the token can write through its API. Warned about at start
/// and by `edgerep config check`, not refused (a node's files may be readable by a group on
/// purpose).
pub fn secrets_open_to_others(config: &Config) -> Vec<String> {
    let files = [
        (
            "replication.key",
            config.replication.tls.as_ref().map(|t| t.key.clone()),
        ),
        ("api.token_file", config.api.token_file.clone()),
    ];
    files
        .into_iter()
        .filter_map(|(setting, path)| {
            let path = path?;
            let mode = edgerep_transport::certs::open_to_others(&path)?;
            Some(format!(
                "{setting}: {} can be read by others than its owner (mode {mode:o}): `chmod 600` it",
                path.display()
            ))
        })
        .collect()
}

/// The store's file in `node.data_dir`.
pub const STORE_FILE: &str = "edgerep.redb";

/// The commit this binary was built from (`build.rs`), or `unknown` outside a git checkout.
pub const BUILD_COMMIT: &str = env!("EDGEREP_BUILD_COMMIT");

/// The version with the commit, as `edgerep --version` prints it.
pub const VERSION_WITH_COMMIT: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("EDGEREP_BUILD_COMMIT"),
    ")"
);

/// Opens the store, starts the committer and serves the local API.
pub async fn start(config: Config) -> Result<RunningNode, NodeError> {
    for warning in secrets_open_to_others(&config) {
        tracing::warn!("{warning}");
    }
    let tls_files = reload::tls_files(&config);
    let data_dir = config.node.data_dir.clone();
    std::fs::create_dir_all(&data_dir).map_err(|source| NodeError::DataDir {
        path: data_dir.display().to_string(),
        source,
    })?;
    let guard = Arc::new(api::Guard::from_config(&config).map_err(NodeError::Config)?);
    let traces = Arc::new(trace::Traces::new(&config)?);
    // The addresses first: a start that fails on a port in use must not have opened the store,
    // whose check at open would fix (and so no longer report) damage it found. Taken by a
    // node running on this data directory (the same config started twice), that is said.
    if let Err(e) = ports_free(&config) {
        let store = data_dir.join(STORE_FILE);
        let in_use = matches!(
            &e,
            NodeError::Listen { source, .. } | NodeError::ReplicationListen { source, .. }
                if source.kind() == std::io::ErrorKind::AddrInUse
        );
        if in_use && edgerep_store::Store::open_elsewhere(&store) {
            return Err(NodeError::AlreadyRunning {
                path: store.display().to_string(),
            });
        }
        return Err(e);
    }
    // With a TLS identity, this node signs its events' seals and checks its peers' (loaded
    // before the store too, for the same reason).
    let node_keys = match (&config.replication.tls, config.replication.authenticate) {
        (Some(_), true) => {
            let identity = replication::load_identity(&config)?;
            Some(keys::NodeKeys::new(&identity, &config).map_err(|source| {
                NodeError::Keys {
                    path: config
                        .replication
                        .tls
                        .as_ref()
                        .map(|t| t.key.display().to_string())
                        .unwrap_or_default(),
                    source,
                }
            })?)
        }
        _ => None,
    };
    // Plugins first: a bad plugin refuses to start before anything else is opened.
    let pipeline = Arc::new(pipeline::Pipeline::load(&config)?);
    for name in config.unused_plugins() {
        tracing::warn!(
            plugin = name,
            "plugin {name:?} is loaded but no declared collection names it: it never runs"
        );
    }
    let db_path = data_dir.join(STORE_FILE);
    // Collections with transforms on apply hold values that differ between nodes by design:
    // their rows hash on their versions only (see `edgerep_store::HashRule`).
    let rule = edgerep_store::HashRule::versions_only(
        config
            .collections
            .declared
            .iter()
            .filter(|c| c.compare_on_versions)
            .map(|c| c.name.clone())
            .collect(),
    );
    // A store made now: said, since a node that ran before would start empty here (its disk
    // not mounted, a typo in node.data_dir, a restore that left an empty file).
    let new_store = std::fs::metadata(&db_path).map_or(true, |m| m.len() == 0);
    let (store, resume) =
        Store::open_with_rule(&db_path, &config.node.id, event_limits(&config), rule).map_err(
            |source| {
                let path = db_path.display().to_string();
                if source.is_not_a_store() {
                    NodeError::NotAStore { path, source }
                } else {
                    NodeError::Store { path, source }
                }
            },
        )?;
    if new_store {
        // The file's name made durable too (redb syncs the file's data only): a power loss
        // must not take away a store whose commits were synced.
        if let Err(source) = std::fs::File::open(&data_dir).and_then(|d| d.sync_all()) {
            return Err(NodeError::DataDir {
                path: data_dir.display().to_string(),
                source,
            });
        }
        tracing::warn!(
            path = %db_path.display(),
            "created a new, empty store: if this node ran before, node.data_dir is not where its data is (a disk not mounted, a typo, a restore that left an empty file); stop it and fix that before it takes writes"
        );
    }
    // What decides each collection may not change in place under the keys it decided.
    let store_error = |source| NodeError::Store {
        path: db_path.display().to_string(),
        source,
    };
    let before = store.recorded_deciders().map_err(store_error)?;
    if let Some(before) = &before {
        let pending = |c: &str, from_ms: u64| {
            reload::pending_upgrade(&store, &config, c, from_ms).unwrap_or(false)
        };
        let mut problems =
            deciders::changes(before, &config, |c| store.holds_collection(c), pending)
                .map_err(store_error)?;
        // Upgrades appended to the file since the record (by no reload) are checked as a
        // reload checks them: one from a time this node already applied events of would leave
        // those under the transforms before it.
        problems.extend(
            reload::late_upgrades(&store, &config, |name| {
                deciders::upgrades_recorded(before, name, pending)
            })
            .map_err(store_error)?,
        );
        if !problems.is_empty() {
            return Err(NodeError::DecidersChanged(problems.join("; ")));
        }
        for name in deciders::left_behind(before, &config, |c| store.holds_collection(c))
            .map_err(store_error)?
        {
            tracing::warn!(
                collection = %name,
                "collection {name:?} is no longer declared (and accept_undeclared is false), but this store holds its keys: they stay as they are here, peers' events for it are kept out of the state (dead letters up to limits.max_dead_letters), and anti-entropy leaves it out, so this node's copy drifts from its peers'; declare it again (a renamed collection is a new one), or accept undeclared collections"
            );
        }
    }
    // Collections taken undeclared before (`accept_undeclared` was true) are not in the
    // record: said too, and status lists them under `collections_not_declared`.
    for name in collections_not_declared(&store, &config).map_err(store_error)? {
        let in_record = before
            .as_deref()
            .is_some_and(|b| deciders::recorded(b, &name));
        if !in_record {
            tracing::warn!(
                collection = %name,
                "this store holds keys of collection {name:?}, taken while undeclared collections were accepted; accept_undeclared is now false and {name:?} is not declared: its keys here are refused to clients (403), peers' events for it are kept out of the state (dead letters), and this node's copy drifts from its peers'; declare it, or accept undeclared collections again"
            );
        }
    }
    let mut re_resolve = before
        .as_deref()
        .map(|b| deciders::upgraded_since(b, &config))
        .unwrap_or_default();
    // Per origin, how far the store holds its events.
    let opened_status = store.status().map_err(store_error)?;
    let own_fork = opened_status.own_fork;
    let origins = opened_status.origins;
    // Ids the policy names that are nobody known here (a typo leaves a revoked node able to
    // write, or an origin without its intended limits): said, not refused, since a node may be
    // named before it first writes.
    for what in unknown_nodes(&config, Some(&origins)) {
        tracing::warn!("{what}");
    }
    // The certificates this node learnt before.
    let keys = match node_keys {
        Some(keys) => {
            let held = origins.get(&config.node.id).copied().unwrap_or(0);
            check_own_key(&store, &keys, &config.node.id, held, store_error)?;
            let learnt = store.certs().map_err(store_error)?;
            for (origin, der) in learnt {
                if let Err(e) = edgerep_store::Keys::learn(&keys, &origin, &der) {
                    tracing::warn!(origin = %origin, "a stored certificate is no longer valid: {e}");
                }
            }
            Some(Arc::new(keys))
        }
        _ => None,
    };
    let store = store
        .with_resolver(pipeline.clone())
        .with_idempotency_window(edgerep_store::idempotency::Window {
            keep_ms: config.api.idempotency_window_ms,
            keep_keys: config.api.idempotency_max_keys,
        });
    // The store's one writer goes to the committer; everything else reads.
    let writer = edgerep_store::StoreWriter::new(match &keys {
        Some(k) => store.with_keys(k.clone()),
        None => store,
    });
    // Keys a restore brought back from the peers, kept past their window (once, after one),
    // judged by the earlier of the wall clock and the hybrid clock's last time: a clock that
    // booted ahead must not remove keys a retry still needs.
    writer
        .prune_restored_keys(committer::wall_ms().min(resume.hlc_last.physical_ms))
        .map_err(store_error)?;
    // Format 3 kept no resolutions in state rows, and a resolution is made only when a version
    // is added: keys with concurrent versions get theirs now, or anti-entropy finds them
    // differing from every peer that made one. Marked in the record (below) before the format
    // is raised, so a crash between the two re-resolves at the next start.
    let opened_format = writer.opened_format();
    if opened_format < 4 {
        for c in &config.collections.declared {
            if c.resolved_by_plugin() && !re_resolve.contains(&c.name) {
                re_resolve.push(c.name.clone());
            }
        }
    }
    writer
        .record_deciders(&deciders::record_pending(
            &config,
            before.as_deref(),
            &re_resolve,
        ))
        .map_err(store_error)?;
    // Every check passed: the store records this build's format and limits (a refused start
    // changed neither).
    if let Some(from) = writer
        .record_open(&event_limits(&config))
        .map_err(store_error)?
    {
        tracing::warn!(
            "the store's format was raised from {from} to {}: builds of format {from} no longer open this data directory",
            edgerep_store::STORE_FORMAT
        );
    }
    let feed_run = api::FeedRun::start(&writer, resume.feed_last).map_err(store_error)?;
    // Anti-entropy leaves these collections' resolutions alone until they are re-resolved
    // (below, beside replication).
    writer.mark_re_resolving(re_resolve.iter().cloned());
    let store = writer.reader();
    let store_held = Arc::downgrade(&store);
    // The store checks its state beside the first writes; its finding is logged when it has one.
    {
        let store = Arc::downgrade(&store);
        std::thread::spawn(move || {
            let Some(store) = store.upgrade() else { return };
            match store.open_check() {
                Ok(check) if check.found_damage() => tracing::warn!(
                    digest_fixed = check.digest_fixed,
                    entries_recorded = ?check.entries_recorded,
                    entries = check.entries,
                    unreadable = check.unreadable,
                    "the store's state changed behind its back (damage): its digest now follows what it holds, and anti-entropy repairs it from peers"
                ),
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "the store's check at open failed"),
            }
        });
    }
    // Events this node wrote before it had a TLS identity carry unsigned seals: sign them now.
    let signed = writer
        .sign_unsigned_seals()
        .map_err(|source| NodeError::Store {
            path: db_path.display().to_string(),
            source,
        })?;
    if signed > 0 {
        tracing::info!(
            seals = signed,
            "signed the seals of events written before this node had keys"
        );
    }
    let clock = HlcClock::new(resume.hlc_last, config.node.max_clock_skew_ms);
    // A clock that was once far ahead (a machine booted with a wrong time, fixed since): this
    // node's timestamps go on from the saved one, ahead of the others', until the wall clock
    // passes it.
    let wall = committer::wall_ms();
    let ahead_ms = resume.hlc_last.physical_ms.saturating_sub(wall);
    if ahead_ms > config.node.max_clock_skew_ms {
        tracing::warn!(
            ahead_ms,
            "this node's last timestamp is {ahead_ms} ms ahead of its wall clock (more than node.max_clock_skew_ms = {}): its clock was set ahead before; its new timestamps go on from the last one, so last-writer-wins favours its writes until the wall clock catches up",
            config.node.max_clock_skew_ms
        );
    }
    let (feed_tx, feed_rx) = watch::channel(resume.feed_last);
    let (inbox, hook) = replication::inbox();
    // With peers, local writes wait until one of them said how far it holds this node's own
    // events (replication opens the gate), unless the operator says this node is alone.
    // Revoked peers are never heard (their sessions are refused), so they do not count.
    let heard_from = config.peers.iter().any(|p| !config.is_revoked(&p.id));
    // A fork of its own history proven before (kept by the store) keeps them refused, with
    // peers or without, `--alone` or not: every write would extend a history peers refuse.
    let (origin_gate, origin_gate_rx) = watch::channel(if own_fork > 0 {
        Some(replication::own_fork_refusal(own_fork))
    } else {
        (heard_from && !config.node.alone).then(|| replication::ORIGIN_WAITING.to_owned())
    });
    if own_fork > 0 {
        tracing::error!("{}", replication::own_fork_refusal(own_fork));
    }
    let commit_metrics = Arc::new(metrics::CommitMetrics::new(
        config.collections.declared.iter().map(|c| c.name.clone()),
    ));
    let (disk_failed_tx, disk_failed) = watch::channel(None);
    let (committer, committer_thread) = Committer::spawn(
        writer,
        clock,
        config.commit.max_events,
        committer::SyncPolicy::from_config(&config),
        committer::Links {
            feed: feed_tx,
            hook: Box::new(move |have| hook.have(have)),
            origin_gate: origin_gate_rx,
            metrics: commit_metrics.clone(),
            disk_failed: disk_failed_tx,
        },
    )
    .map_err(|source| NodeError::Store {
        path: db_path.display().to_string(),
        source,
    })?;
    // Upgrades added since the last start (a reload's re-resolution may have been cut short by
    // a crash): the keys decided before get what the new wiring decides, as at a reload.
    if !re_resolve.is_empty() {
        let committer = committer.clone();
        // Each with the upgrades it is re-resolved for (a reload meanwhile may append one).
        let re_resolved = deciders::with_upgrades(&config, re_resolve.iter());
        tokio::spawn(async move {
            for collection in &re_resolve {
                match committer.re_resolve(collection.clone()).await {
                    Ok(n) => {
                        tracing::info!(%collection, keys = n, "keys re-resolved at start for upgrades added since the last start")
                    }
                    Err(e) => {
                        tracing::error!(%collection, "re-resolving at start failed (the next start tries again): {e}");
                        return;
                    }
                }
            }
            // Only these marks are cleared, in the record as it is then (a reload meanwhile
            // may have recorded upgrades of its own).
            match committer.clear_marks(re_resolved).await {
                Ok(()) => tracing::info!("re-resolution at start done and recorded"),
                Err(e) => tracing::error!(
                    "saving what decides each collection failed (the next start re-resolves again): {e}"
                ),
            }
        });
    }
    let replication = replication::start(
        &config,
        store.clone(),
        committer.clone(),
        pipeline.clone(),
        replication::Wiring {
            inbox,
            origin_gate,
            keys: keys.clone(),
            traces: traces.clone(),
        },
        tokio::runtime::Handle::current(),
    )
    .map_err(NodeError::Replication)?
    .map(Arc::new);
    let solo_retention = match replication {
        Some(_) => None,
        None => solo_retention::start(&config.retention, store.clone(), committer.clone())
            .map_err(NodeError::Serve)?,
    };
    let listener = tokio::net::TcpListener::bind(config.api.listen)
        .await
        .map_err(|source| NodeError::Listen {
            addr: config.api.listen,
            source,
        })?;
    let api_addr = listener.local_addr().map_err(NodeError::Serve)?;
    let listener = listener::Limited::new(listener, config.api.max_connections);
    let header_timeout = listener::HEADER_READ_TIMEOUT.min(std::time::Duration::from_millis(
        config.api.request_timeout_ms,
    ));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    tracing::info!(node = %config.node.id, api = %api_addr, data = %db_path.display(), version = VERSION_WITH_COMMIT, "node started");
    let reloader = Arc::new(
        reload::Reloader::new(
            config,
            pipeline.clone(),
            store.clone(),
            keys,
            replication.clone(),
            committer.clone(),
            guard.clone(),
        )
        .with_tls_files(tls_files)
        .with_metrics(commit_metrics.clone()),
    );
    let app = api::router(api::AppState {
        reloader: reloader.clone(),
        store,
        committer,
        pipeline,
        feed: feed_rx,
        shutdown: shutdown_rx.clone(),
        api_addr,
        started: std::time::Instant::now(),
        replication: replication.clone(),
        guard,
        idempotency: Arc::new(idempotency::Counters::default()),
        claims: Arc::new(idempotency::Claims::default()),
        traces: traces.clone(),
        commit_metrics,
        plugin_runs: Arc::new(api::plugin_runs()),
        feed_run,
    });
    // A disk that failed under the store fails every later write until the store is opened
    // again: the node stops, so that its supervisor restarts it, instead of answering 500 for
    // ever while it looks alive.
    {
        let mut failed = disk_failed.clone();
        let stop = shutdown_tx.clone();
        tokio::spawn(async move {
            if let Ok(reason) = failed.wait_for(Option::is_some).await {
                // (Said whichever request met the failure first: a local write's answer
                // says it too, a peer's batch only here.)
                tracing::error!(
                    "the store stopped taking writes: stopping (restart the node once the disk is fixed, e.g. space freed; the reason says if it was no disk failure): {}",
                    reason.as_deref().unwrap_or_default()
                );
                let _ = stop.send(true);
            }
        });
    }
    let server = tokio::spawn(async move {
        listener::serve(listener, app, shutdown_rx, header_timeout).await;
        Ok(())
    });
    Ok(RunningNode {
        api_addr,
        shutdown: shutdown_tx,
        server,
        replication,
        committer: committer_thread,
        reloader,
        solo_retention,
        traces,
        disk_failed,
        store: store_held,
    })
}

/// [`unknown_nodes`] as `edgerep config check` sees them, without the store.
pub fn unknown_nodes_in_config(config: &Config) -> Vec<String> {
    unknown_nodes(config, None)
}

/// The ids `[[revoked]]` and `[authorization]` name that are no configured peer and no origin
/// `origins` (the store's; `None`: not read) holds events of, each as a sentence: a typo
/// leaves a revoked node able to write, or an origin without its intended limits. Said, not
/// refused, since a node may be named before it first writes.
pub(crate) fn unknown_nodes(config: &Config, origins: Option<&edgerep_wire::Have>) -> Vec<String> {
    let known = |id: &NodeId| {
        *id == config.node.id
            || config.peers.iter().any(|p| p.id == *id)
            || origins.is_some_and(|o| o.contains_key(id))
    };
    let nobody = match origins {
        Some(_) => "no configured peer and no origin this store holds events of",
        None => {
            "no configured peer (the store is not read here: an origin it holds events of is named rightly)"
        }
    };
    let revoked = config
        .revoked
        .iter()
        .map(|r| &r.node)
        .filter(|id| !known(id))
        .map(|id| format!("[[revoked]] names {id}, {nobody}: check the id for a typo"));
    let authorized = config
        .authorization
        .keys()
        .filter(|id| !known(id))
        .map(|id| format!("[authorization] names {id}, {nobody}: check the id for a typo"));
    // A collection name no origin can write to: undeclared while undeclared collections are
    // refused (a typo: `ordres` for `orders` stops that origin's writes to `orders`).
    let collections = config
        .authorization
        .iter()
        .flat_map(|(id, names)| names.iter().map(move |c| (id, c)))
        .filter(|(_, c)| {
            !config.collections.accept_undeclared && config.collection(c.as_str()).is_none()
        })
        .map(|(id, c)| format!("[authorization] {id} names collection {c:?}, which is not declared (and accept_undeclared is false), so no origin can write it: check the name for a typo"));
    // Origins already held keep counting against the bound after their peer leaves the
    // config: a peer replaced by another can push the node past it, and every event of the
    // last origin to arrive is then refused. (This node's own events are never refused, but
    // count once held; only with the store read.)
    let over = origins.and_then(|origins| {
        let held = origins.len();
        let own_coming = usize::from(!origins.contains_key(&config.node.id));
        let coming: Vec<String> = config
            .peers
            .iter()
            .map(|p| &p.id)
            .filter(|id| !origins.contains_key(*id))
            .map(|id| id.to_string())
            .collect();
        let bound = config.max_origins();
        (!coming.is_empty() && held + own_coming + coming.len() > bound).then(|| {
            format!(
                "the store holds events of {held} origins, and {} configured node(s) it holds none of yet ({}) make {}, over the bound of {bound} origins (itself, {} peers and replication.extra_origins = {}): the events of those arriving last will be refused; raise replication.extra_origins (it takes a restart: a reload cannot change it)",
                coming.len(),
                coming.join(", "),
                held + own_coming + coming.len(),
                config.peers.len(),
                config.replication.extra_origins
            )
        })
    });
    revoked
        .chain(authorized)
        .chain(collections)
        .chain(over)
        .collect()
}

/// Checks this node's newest own seal (at `held`, how far the store holds its own events)
/// against its configured key: a node whose key was replaced (a lost key, a certificate issued
/// again) would send events its peers cannot verify.
pub(crate) fn check_own_key(
    store: &Store,
    keys: &keys::NodeKeys,
    node: &NodeId,
    held: u64,
    store_error: impl Fn(StoreError) -> NodeError,
) -> Result<(), NodeError> {
    // The newest signed seal, not only the one at the top: a run without keys seals with
    // none, and signing those later with another key must not pass over older events
    // signed with the first.
    let Some(seal) = store
        .last_signed_seal(node)
        .map_err(store_error)?
        .filter(|s| s.seq <= held)
    else {
        return Ok(());
    };
    edgerep_store::Keys::verify(keys, node, seal.seq, &seal.message(), &seal.signature).map_err(
        |e| NodeError::KeyChanged {
            node: node.clone(),
            seq: seal.seq,
            why: e.to_string(),
        },
    )
}

/// How many collections [`collections_not_declared`] looks at, at most.
const COLLECTIONS_LISTED: usize = 10_000;

/// The collections `store` holds keys of that `config` neither declares nor accepts
/// undeclared: their keys are not served and peers' events for them are kept out.
pub(crate) fn collections_not_declared(
    store: &edgerep_store::Store,
    config: &Config,
) -> Result<Vec<String>, edgerep_store::StoreError> {
    if config.collections.accept_undeclared {
        return Ok(Vec::new());
    }
    Ok(store
        .collections_held(COLLECTIONS_LISTED)?
        .into_iter()
        .filter(|c| config.collection(c).is_none())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A data directory the node cannot have is the config's (exit 2); a disk that fails (or
    /// a file system gone read-only) is not.
    #[test]
    fn a_data_dir_the_node_cannot_have_is_a_config_error() {
        use std::io::{Error, ErrorKind};
        let data_dir = |kind: ErrorKind| NodeError::DataDir {
            path: "/x".into(),
            source: Error::from(kind),
        };
        for kind in [
            ErrorKind::PermissionDenied,
            ErrorKind::AlreadyExists,
            ErrorKind::NotADirectory,
        ] {
            assert!(data_dir(kind).is_config(), "{kind:?}");
        }
        for kind in [ErrorKind::StorageFull, ErrorKind::ReadOnlyFilesystem] {
            assert!(!data_dir(kind).is_config(), "{kind:?}");
        }
        let store = |kind: ErrorKind| NodeError::Store {
            path: "/x/edgerep.redb".into(),
            source: StoreError::Storage(redb::Error::Io(Error::from(kind))),
        };
        assert!(store(ErrorKind::PermissionDenied).is_config());
        assert!(!store(ErrorKind::ReadOnlyFilesystem).is_config());
        assert!(
            data_dir(ErrorKind::NotADirectory)
                .to_string()
                .starts_with("node.data_dir: ")
        );
    }

    /// `[authorization]` naming a collection nobody can write (undeclared, and undeclared ones
    /// refused) is said, like an unknown id: a typo there stops an origin's writes to the
    /// collection meant.
    #[test]
    fn authorization_naming_an_undeclared_collection_is_said() {
        let config = |accept: bool| {
            let text = format!(
                "[node]\nid = \"n\"\ndata_dir = \"/tmp/unused\"\n[api]\nlisten = \"127.0.0.1:0\"\n\
                 [replication]\nlisten = \"127.0.0.1:1\"\n[collections]\naccept_undeclared = {accept}\n\
                 [[collections.declared]]\nname = \"orders\"\n\
                 [authorization]\nn = [\"orders\", \"ordres\"]\n"
            );
            Config::parse(&text, std::path::Path::new("/tmp/edgerep.toml")).unwrap()
        };
        let said = unknown_nodes(&config(false), Some(&Default::default()));
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(
            said[0].contains("\"ordres\"") && said[0].contains("not declared"),
            "{said:?}"
        );
        assert!(unknown_nodes(&config(true), Some(&Default::default())).is_empty());
    }

    /// A peer replaced by another: the old one's events still count against the origin bound,
    /// so the new peer's would all be refused. That is said; with room to spare, nothing is.
    #[test]
    fn a_replaced_peer_past_the_origin_bound_is_said() {
        let config = |extra: usize| {
            let text = format!(
                "[node]\nid = \"n\"\ndata_dir = \"/tmp/unused\"\n[api]\nlisten = \"127.0.0.1:0\"\n\
                 [replication]\nlisten = \"127.0.0.1:1\"\nca = \"ca.pem\"\ncert = \"n.pem\"\nkey = \"n.key\"\n\
                 extra_origins = {extra}\n\
                 [[peers]]\nid = \"site-d\"\naddress = \"127.0.0.1:2\"\n"
            );
            Config::parse(&text, std::path::Path::new("/tmp/edgerep.toml")).unwrap()
        };
        let held: edgerep_wire::Have = [
            (NodeId::parse("n").unwrap(), 10),
            (NodeId::parse("site-b").unwrap(), 10),
        ]
        .into_iter()
        .collect();
        let said = unknown_nodes(&config(0), Some(&held));
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(
            said[0].contains("(site-d)") && said[0].contains("extra_origins"),
            "{said:?}"
        );
        assert!(unknown_nodes(&config(1), Some(&held)).is_empty());
        // This node's own events are never refused: its own id alone is no warning.
        let peers_held: edgerep_wire::Have = [
            (NodeId::parse("site-d").unwrap(), 10),
            (NodeId::parse("old").unwrap(), 10),
        ]
        .into_iter()
        .collect();
        assert!(unknown_nodes(&config(0), Some(&peers_held)).is_empty());
    }
}
