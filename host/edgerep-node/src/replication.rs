//! Replication with the configured peers: drives the sans-IO [`edgerep_replica::Replica`] with
//! real QUIC connections ([`edgerep_transport`]), the store's changelog, and the committer.
//!
//! Shape: one plain thread (the replicator) owns the `Replica` and is the only one to touch it;
//! tokio tasks own the connections (one reader and one writer per peer) and talk to it through
//! a channel. Received batches run through the transforms on apply ([`crate::apply`]) and go to the
//! committer, which applies them durably and calls back. A transform on apply failing under the
//! `halt` policy (or past its deadline) halts its collection: its events from peers are deferred,
//! and with them their origins' later ones, until the node reloads its config or restarts.
//!
//! Invariants: an `Ack` leaves only after the batch it covers is committed and synced (the core
//! guarantees it, given that the committer's hook reports the new have before the apply's
//! reply; a peer's events are synced whatever their collection's durability); this node's own events are
//! shipped only once synced (see [`crate::committer`]); memory per
//! peer is bounded by the core's window (sending) and by pausing a peer's reader while its
//! queued applies exceed [`PAUSE_ABOVE_EVENTS`] (receiving); the changelog on disk is the buffer
//! for a slow or absent peer.
//!
//! Retention: every `retention.interval_ms` the replicator computes, per origin, the highest
//! sequence number every configured peer acknowledged (peers unheard of for `peer_absent_ms`
//! excepted), less `keep_events`, and has the committer compact the changelog up to it. A peer
//! that needs compacted events gets a snapshot of the state from the core; a snapshot page from
//! a peer is merged through the committer, refused for collections with transforms on apply
//! (their state here is not the events', so it must come from events).
//!
//! This file holds the replicator's loop: its inputs (connections, the committer's callbacks,
//! commands) and the core's outputs. The rest, by job: `connection` (a peer link's tasks),
//! `handshake` (what a Hello carries), `store_log` (the core's `Log` over the store),
//! `applying` (peers' batches and snapshot pages to the committer and back), `trust`
//! (the origin gate, duplicate ids, forks, cutting a peer off), `retention` (acknowledged
//! cursors and compaction), `anti_entropy` (reconciliation and repair), `status` (what it
//! reports), `identity` (this node's TLS identity).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use edgerep_config::{Config, Durability, RetentionConfig};
use edgerep_replica::{
    CollectionFingerprint, Log, LogError, Message, MessageLimits, Output, PluginFingerprint,
    ProtocolError, Read, Replica, ReplicaConfig, StateCursor, StatePage, UpgradeFingerprint,
};
use edgerep_store::{Compaction, Installed, RemoteApply, Store, StoreError};
use edgerep_transport::tls::TransportConfig;
use edgerep_transport::{CloseCode, PeerConnection, Transport};
use edgerep_wire::{NodeId, Seal};
use serde::Serialize;
use tokio::sync::{mpsc, watch};

use crate::committer::wall_ms;
use crate::committer::{CommitError, Committer, Have};

mod anti_entropy;
mod applying;
mod connection;
mod handshake;
mod identity;
mod retention;
mod status;
mod store_log;
mod trust;

use connection::{Live, serve_connection, spawn_dialer};
pub(crate) use handshake::deciding_fingerprint;
use handshake::transformed_on_apply;
pub use handshake::{fingerprint, policy};
pub use identity::{IdentityError, load_identity};
use status::Reports;
pub use status::{ForkReport, PeerStatus, PeerTraffic, RefusalReport, ReplicationStatus};
pub use store_log::StoreLog;
pub(crate) use trust::{ORIGIN_WAITING, own_fork_refusal};

use crate::pipeline::Pipeline;
use anti_entropy::AntiEntropy;
pub use anti_entropy::{AntiEntropyStatus, NotReconciled, Reconciled, SessionReport};
use edgerep_wire::value::DecodeLimits;

/// A peer's reader stops reading while more events than this wait to be applied.
pub const PAUSE_ABOVE_EVENTS: usize = 32_768;
/// ... or while they take more bytes than this (about: key, value and metadata).
pub const PAUSE_ABOVE_BYTES: usize = 64 << 20;
/// No more Events are made for a peer while the frames queued for it take more bytes than this
/// (a peer that reads slowly or not at all costs at most this, plus one batch).
pub const SEND_QUEUE_MAX_BYTES: usize = 16 << 20;

/// Bytes queued for a peer past which its link is closed: Events stop at
/// [`SEND_QUEUE_MAX_BYTES`], but control messages do not, so only a peer that sends and does
/// not read gets here (an honest slow reader stays below: at most one frame, 16 MiB at most,
/// goes past the soft bound).
pub const SEND_QUEUE_HARD_BYTES: usize = 4 * SEND_QUEUE_MAX_BYTES;

/// Two instances of one node id that displace each other within this time are two machines
/// using the same identity.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(60);
/// Two connections with one peer taken this close together, one dialed each way, crossed: both
/// nodes keep the one the lower node id dialed (see `Replicator::connected`).
const CROSSED_DIALS_WITHIN: Duration = Duration::from_secs(2);
/// Most fork and refusal reports kept for `status` (the counters count them all).
const MAX_REPORTS: usize = 64;
/// How often acknowledged cursors are saved to the store, at most.
const SAVE_CURSORS_EVERY: Duration = Duration::from_secs(1);

/// Sessions a peer may start at once, and per second after. Each start costs this thread reads
/// (a window of the changelog, or a snapshot page from the start for a new instance) that a
/// peer closing and dialing again in a loop would buy for one Hello each; an honest peer's
/// redials back off from 100 ms to 3 s, and a restart or crossed dials start two or three.
const SESSIONS_BURST: f64 = 10.0;
const SESSIONS_PER_SECOND: f64 = 0.5;

/// How often the links are looked at for data still leaving (`note_busy_links`).
const LINK_LOOK_EVERY: Duration = Duration::from_millis(250);
/// How long frames queued for a peer may stay without any leaving before its link is closed.
const STUCK_LIMIT: Duration = Duration::from_secs(60);
/// A link whose peer sent no Hello this long (or the idle timeout, if longer) after it came up
/// is closed: else a peer that opens its stream and says nothing holds a session (a task,
/// buffers) for as long as its keep-alives hold the connection. (A slow link's Hello takes a
/// few round trips at most.)
const HELLO_WITHIN: Duration = Duration::from_secs(30);

/// What connection tasks and the committer tell the replicator.
enum Input {
    Connected {
        conn: PeerConnection,
        id: u64,
        frames: mpsc::UnboundedSender<Vec<u8>>,
        /// Bytes in `frames` not yet written.
        queued: Arc<AtomicUsize>,
        paused: Arc<AtomicBool>,
        /// Bytes of this connection's messages sent to the replicator and not yet taken.
        inbox_bytes: Arc<AtomicUsize>,
        /// Wakes the connection's reader when paused.
        resume: Arc<tokio::sync::Notify>,
        /// This node dialed it (else the peer did).
        dialer: bool,
    },
    Disconnected {
        peer: NodeId,
        id: u64,
        reason: String,
    },
    /// The peer's Hello was refused by its reader (a protocol version this build does not
    /// speak); its Disconnected follows.
    Refused {
        peer: NodeId,
        reason: String,
    },
    /// The peer closed the link saying two machines use this node's id; its Disconnected
    /// follows.
    Twin {
        peer: NodeId,
        reason: String,
    },
    Message {
        peer: NodeId,
        id: u64,
        message: Message,
        /// The frame's size.
        bytes: usize,
        /// What it was charged to the link's inbox (see `connection::inbox_cost`).
        cost: usize,
    },
    Applied {
        peer: NodeId,
        sent: applying::SentApply,
        result: Result<RemoteApply, CommitError>,
    },
    Installed {
        peer: NodeId,
        result: Result<Installed, CommitError>,
    },
    Compacted(Result<Compaction, CommitError>),
    /// The committer merged (or refused) versions a peer sent in anti-entropy repair.
    Repaired {
        peer: NodeId,
        id: u64,
        result: Result<Installed, CommitError>,
        /// How long the committer spent on it.
        took: Duration,
    },
    /// Run anti-entropy now with one peer (or all) and reply with the sessions' reports.
    Reconcile {
        peer: Option<NodeId>,
        due: Instant,
        reply: tokio::sync::oneshot::Sender<Reconciled>,
    },
    Have(Have),
    /// A reloaded config; with `restart`, every session handshakes again.
    Reload {
        config: Box<Config>,
        restart: bool,
    },
    Stop,
}

/// The running replication: its status, and how to stop it.
#[derive(Debug)]
pub struct Replication {
    status: Arc<Mutex<ReplicationStatus>>,
    inbox: std_mpsc::Sender<Input>,
    thread: Mutex<Option<thread::JoinHandle<()>>>,
    transport: Transport,
    /// The accepting task (aborted at `stop`).
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Per configured peer, its address and the task dialing it (replaced by a reload that
    /// changes the peers; aborted at `stop`).
    dialers: Mutex<BTreeMap<NodeId, (String, tokio::task::JoinHandle<()>)>>,
    runtime: tokio::runtime::Handle,
    limits: SharedLimits,
    local: NodeId,
    accepted: Accepted,
    precheck: connection::Precheck,
}

/// The message limits new connections decode against.
type SharedLimits = Arc<Mutex<MessageLimits>>;

/// Per peer, the last connection it made to this node: the dialer does not dial a peer whose
/// connection is open (its new connection would replace that one, ending every exchange on
/// it midway).
type Accepted = Arc<Mutex<BTreeMap<NodeId, PeerConnection>>>;

fn current(limits: &SharedLimits) -> MessageLimits {
    *limits.lock().unwrap_or_else(|e| e.into_inner())
}

impl Replication {
    /// A snapshot of the status.
    pub fn status(&self) -> ReplicationStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The address the QUIC endpoint is bound to.
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.transport.local_addr().ok()
    }

    /// Runs anti-entropy now with `peer` (or every connected peer); the reports arrive once the
    /// sessions end, or after `answer_within` with the reports so far of those still running
    /// (`running`: they go on); [`NotReconciled`] when nothing could be compared (the peer,
    /// or every peer, not connected), saying why.
    pub fn reconcile(
        &self,
        peer: Option<NodeId>,
        answer_within: std::time::Duration,
    ) -> tokio::sync::oneshot::Receiver<Reconciled> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let due = Instant::now() + answer_within;
        let _ = self.inbox.send(Input::Reconcile { peer, due, reply });
        rx
    }

    /// Takes in a reloaded config (see `reload.rs`): sessions with newly revoked peers are
    /// closed, their connections refused from now on, and their events past the revocation
    /// point refused (wherever they come from); with `restart` (what the handshake compares
    /// changed), every other session is closed too, and its peer and this node handshake again.
    /// Peers added are dialed (and may connect); peers removed are no longer dialed nor
    /// accepted, and their sessions are closed.
    pub fn reload(&self, config: Config, restart: bool) {
        {
            let mut limits = self.limits.lock().unwrap_or_else(|e| e.into_inner());
            limits.event = crate::event_limits(&config);
        }
        // A revoked peer may still connect: the replicator closes its session saying why.
        self.transport
            .set_peers(config.peers.iter().map(|p| p.id.clone()));
        let trusted: BTreeMap<NodeId, String> = config
            .peers
            .iter()
            .filter(|p| !config.is_revoked(&p.id))
            .map(|p| (p.id.clone(), p.address.clone()))
            .collect();
        // A panic elsewhere while holding the lock leaves the map itself sound: go on with it,
        // or a reload's added and removed peers would be skipped without a word.
        {
            let mut dialers = self.dialers.lock().unwrap_or_else(|e| e.into_inner());
            dialers.retain(|peer, (address, task)| {
                let keep = trusted.get(peer) == Some(address);
                if !keep {
                    task.abort();
                }
                keep
            });
            for (peer, address) in trusted {
                if dialers.contains_key(&peer) {
                    continue;
                }
                tracing::info!(peer = %peer, %address, "config reloaded: a new peer");
                let task = spawn_dialer(
                    &self.runtime,
                    connection::Links {
                        transport: self.transport.clone(),
                        inbox: self.inbox.clone(),
                        limits: self.limits.clone(),
                        accepted: self.accepted.clone(),
                        precheck: self.precheck.clone(),
                    },
                    &self.local,
                    peer.clone(),
                    address.clone(),
                );
                dialers.insert(peer, (address, task));
            }
        }
        let _ = self.inbox.send(Input::Reload {
            config: Box::new(config),
            restart,
        });
    }

    /// Closes every connection (peers see an orderly close) and stops the replicator.
    /// Idempotent; blocks until the replicator thread ended.
    pub fn stop(&self) {
        self.transport
            .close(CloseCode::Normal, "node shutting down");
        for t in self
            .tasks
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default()
        {
            t.abort();
        }
        for (_, task) in self
            .dialers
            .lock()
            .map(|mut d| std::mem::take(&mut *d))
            .unwrap_or_default()
            .into_values()
        {
            task.abort();
        }
        let _ = self.inbox.send(Input::Stop);
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

/// A number that differs between two starts of a node, for the Hello's `instance`.
fn instance_number() -> u64 {
    std::collections::hash_map::RandomState::new().hash_one((
        std::process::id(),
        wall_ms(),
        Instant::now(),
    ))
}

/// The replicator's inbox, made before the committer starts so that its hook can report every
/// commit from the first one on.
#[derive(Debug)]
pub struct Inbox {
    tx: std_mpsc::Sender<Input>,
    rx: std_mpsc::Receiver<Input>,
}

/// A new inbox and the committer's hook into it.
pub fn inbox() -> (Inbox, CommitHookSender) {
    let (tx, rx) = std_mpsc::channel();
    (Inbox { tx: tx.clone(), rx }, CommitHookSender(tx))
}

/// Starts replication: binds the QUIC endpoint, dials the peers this node dials (those with a
/// greater id: exactly one side of each pair dials, so a pair never holds two sessions), and
/// accepts the others. Returns `None` when no peers are configured.
pub fn start(
    config: &Config,
    store: Arc<Store>,
    committer: Committer,
    pipeline: Arc<Pipeline>,
    wiring: Wiring,
    runtime: tokio::runtime::Handle,
) -> Result<Option<Replication>, String> {
    let Wiring {
        inbox,
        origin_gate,
        keys,
        traces,
    } = wiring;
    if config.peers.is_empty() {
        return Ok(None);
    }
    let identity = load_identity(config).map_err(|e| e.to_string())?;
    let certificate_expires = identity.expires_at();
    let peers: Vec<(NodeId, String)> = config
        .peers
        .iter()
        .map(|p| (p.id.clone(), p.address.clone()))
        .collect();
    // A revoked node is not dialed; when it connects, the replicator closes its session saying
    // why (as after a reload that revokes it).
    let trusted: Vec<(NodeId, String)> = peers
        .iter()
        .filter(|(p, _)| !config.is_revoked(p))
        .cloned()
        .collect();
    let transport = {
        let _guard = runtime.enter();
        Transport::bind(
            config.replication.listen,
            identity,
            peers.clone(),
            TransportConfig {
                idle_timeout: Duration::from_millis(config.replication.idle_timeout_ms),
                ..TransportConfig::default()
            },
        )
        .map_err(|e| format!("replication.listen: {e}"))?
    };
    let listen = transport.local_addr().ok().map(|a| a.to_string());
    let Inbox { tx: inbox, rx } = inbox;
    let store_status = store
        .status()
        .map_err(|e| format!("reading the store: {e}"))?;
    let have = store_status.origins;
    let status = Arc::new(Mutex::new(ReplicationStatus {
        listen: listen.clone(),
        certificate_expires_unix_s: certificate_expires,
        ..ReplicationStatus::default()
    }));
    let limits = MessageLimits {
        event: crate::event_limits(config),
        ..MessageLimits::default()
    };
    let instance = instance_number();
    let core_config = ReplicaConfig {
        fingerprint: fingerprint(config),
        limits,
        instance,
        policy: policy(config),
        ..ReplicaConfig::default()
    };
    let local = config.node.id.clone();
    let declared = &config.collections.declared;
    let origin_open = origin_gate.borrow().is_none();
    let mut replicator = Replicator {
        core: Replica::new(local.clone(), core_config),
        log: {
            let log = StoreLog::new(store.clone()).with_keys(keys.clone());
            if declared
                .iter()
                .any(|c| c.durability == Durability::Periodic)
            {
                log.syncing_before_state(committer.clone())
            } else {
                log
            }
        },
        store: store.clone(),
        retention: config.retention.clone(),
        transformed_on_apply: transformed_on_apply(config),
        compacting: false,
        compacted_at: Instant::now(),
        compact_more: false,
        compact_resume_at: Instant::now(),
        swept_at: Instant::now(),
        committer,
        pipeline,
        value_limits: crate::value_limits(config),
        halted: None,
        inbox: inbox.clone(),
        conns: BTreeMap::new(),
        peers: peers.clone(),
        status: status.clone(),
        started: Instant::now(),
        links_seen_at: Instant::now(),
        acked: BTreeMap::new(),
        dirty: BTreeMap::new(),
        last_contact: BTreeMap::new(),
        heard_at: BTreeMap::new(),
        silent_at_start: BTreeMap::new(),
        heard_saved: BTreeMap::new(),
        awaited_since: BTreeMap::new(),
        configured_at: BTreeMap::new(),
        heard_loaded: false,
        traces,
        outstanding: BTreeMap::new(),
        chains: BTreeMap::new(),
        frames: BTreeMap::new(),
        last_error: BTreeMap::new(),
        refusals: BTreeMap::new(),
        mismatches: BTreeMap::new(),
        replaced: BTreeSet::new(),
        peer_have: BTreeMap::new(),
        saved_at: Instant::now(),
        config: config.clone(),
        origin_open,
        own_forked: (store_status.own_fork > 0)
            .then(|| trust::own_fork_refusal(store_status.own_fork)),
        origin_gate,
        reports: Reports::default(),
        instances: BTreeMap::new(),
        duplicates: BTreeMap::new(),
        twin: None,
        session_starts: BTreeMap::new(),
        origin_claims: BTreeMap::new(),
        own_key_differs: BTreeMap::new(),
        origin_first_claim: None,
        own_seen: store_status.own_seen,
        acks_moved_at: BTreeMap::new(),
        moved_before_start: BTreeMap::new(),
        have_loaded: false,
        progress_saved: BTreeMap::new(),
        anti_entropy: AntiEntropy::new(config.replication.anti_entropy_interval_ms, instance),
        runtime: runtime.clone(),
    };
    replicator.load_cursors();
    replicator.set_have(&have);
    replicator.set_compacted(&store_status.compacted);
    // The status from the start (each configured peer, not connected; the origin gate), not
    // an empty one until the thread's first turn: a look right after the start must not read
    // as "no peers, nothing waits".
    replicator.publish();
    let thread = thread::Builder::new()
        .name("edgerep-replicator".into())
        .spawn(move || replicator.run(rx))
        .map_err(|e| format!("cannot start the replicator thread: {e}"))?;

    // Accept peers.
    let accept_transport = transport.clone();
    let accept_inbox = inbox.clone();
    // Read at each new connection: a reload that raises the limits reaches new sessions.
    let shared_limits: SharedLimits = Arc::new(Mutex::new(limits));
    let accept_limits = shared_limits.clone();
    let accepted_conns: Accepted = Arc::default();
    let accepted = accepted_conns.clone();
    let precheck = connection::Precheck {
        store: store.clone(),
        keys: keys.clone(),
    };
    let accept_precheck = precheck.clone();
    // The endpoint's tasks hold clones of the transport: they are aborted at `stop`, so the
    // UDP port is free again (a node restarted in the same process binds it anew).
    let mut tasks = Vec::new();
    tasks.push(runtime.spawn(async move {
        let mut next_id = 1u64 << 32;
        while let Some(incoming) = accept_transport.accept().await {
            next_id += 1;
            let id = next_id;
            let inbox = accept_inbox.clone();
            let limits = current(&accept_limits);
            let accepted = accepted.clone();
            let precheck = accept_precheck.clone();
            tokio::spawn(async move {
                match incoming.handshake().await {
                    Ok(conn) => {
                        // One accepted connection per peer: the one it made before is closed
                        // (it replaces it as the link anyway), so a peer dialing again and
                        // again holds one connection and its buffers, not one per dial.
                        let older = accepted
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(conn.peer.clone(), conn.clone());
                        if let Some(older) = older.filter(|o| !o.is(&conn)) {
                            older.close(CloseCode::Normal, "the peer connected again");
                        }
                        serve_connection(conn, id, false, inbox, limits, precheck).await
                    }
                    Err(e) => tracing::debug!("refused a connection: {e}"),
                }
            });
        }
    }));
    let dialers = trusted
        .into_iter()
        .map(|(peer, address)| {
            let task = spawn_dialer(
                &runtime,
                connection::Links {
                    transport: transport.clone(),
                    inbox: inbox.clone(),
                    limits: shared_limits.clone(),
                    accepted: accepted_conns.clone(),
                    precheck: precheck.clone(),
                },
                &local,
                peer.clone(),
                address.clone(),
            );
            (peer, (address, task))
        })
        .collect();
    Ok(Some(Replication {
        status,
        inbox,
        thread: Mutex::new(Some(thread)),
        transport,
        tasks: Mutex::new(tasks),
        dialers: Mutex::new(dialers),
        runtime,
        limits: shared_limits,
        local,
        accepted: accepted_conns,
        precheck,
    }))
}

/// What replication is wired to besides the store, the committer and the plugins.
#[derive(Debug)]
pub struct Wiring {
    /// Its inbox (the committer's hook reports into it).
    pub inbox: Inbox,
    /// Opened once a peer said how far it holds this node's own events.
    pub origin_gate: watch::Sender<Option<String>>,
    /// This node's keys; `None` when it signs none.
    pub keys: Option<Arc<crate::keys::NodeKeys>>,
    /// Where the apply spans of traced events go.
    pub traces: Arc<crate::trace::Traces>,
}

/// The committer's hook into replication: tells the replicator each new durable have.
#[derive(Debug, Clone)]
pub struct CommitHookSender(std_mpsc::Sender<Input>);

impl CommitHookSender {
    /// Reports a new durable have (called on the committer thread after every commit).
    pub fn have(&self, have: &Have) {
        let _ = self.0.send(Input::Have(have.clone()));
    }

    /// Reports the outcome of applying a peer's batch.
    fn applied(
        &self,
        peer: NodeId,
        sent: applying::SentApply,
        result: Result<RemoteApply, CommitError>,
    ) {
        let _ = self.0.send(Input::Applied { peer, sent, result });
    }

    /// Reports the outcome of merging a peer's snapshot page.
    fn installed(&self, peer: NodeId, result: Result<Installed, CommitError>) {
        let _ = self.0.send(Input::Installed { peer, result });
    }

    /// Reports the outcome of a compaction.
    fn compacted(&self, result: Result<Compaction, CommitError>) {
        let _ = self.0.send(Input::Compacted(result));
    }
}

struct Replicator {
    /// Runs what waits (a connection refused for its config closes after a grace).
    runtime: tokio::runtime::Handle,
    core: Replica,
    log: StoreLog,
    store: Arc<Store>,
    retention: RetentionConfig,
    /// Collections with transforms on apply: snapshot pages for them are refused.
    transformed_on_apply: BTreeSet<String>,
    /// A compaction is queued at the committer.
    compacting: bool,
    compacted_at: Instant,
    /// The last compaction stopped at its size cap: the next one is due at `compact_resume_at`
    /// (see `committer::COMPACT_PAUSE_FACTOR`).
    compact_more: bool,
    compact_resume_at: Instant,
    /// When the last compaction that swept superseded proofs was queued (once per interval,
    /// whatever the transactions of a compaction catching up do meanwhile).
    swept_at: Instant,
    committer: Committer,
    pipeline: Arc<Pipeline>,
    value_limits: DecodeLimits,
    /// Set when a transform on apply failed under `halt`: nothing more is applied.
    halted: Option<String>,
    inbox: std_mpsc::Sender<Input>,
    conns: BTreeMap<NodeId, Live>,
    peers: Vec<(NodeId, String)>,
    status: Arc<Mutex<ReplicationStatus>>,
    started: Instant,
    /// When the links were last looked at for data still leaving.
    links_seen_at: Instant,
    acked: BTreeMap<NodeId, BTreeMap<NodeId, u64>>,
    dirty: BTreeMap<NodeId, BTreeMap<NodeId, u64>>,
    /// Per peer, when it was last heard from: the wall clock (for status) and the monotonic
    /// clock (for `peer_absent_ms`, which a step of the wall clock must not shorten; a peer never
    /// heard from counts from `started`).
    last_contact: BTreeMap<NodeId, u64>,
    heard_at: BTreeMap<NodeId, Instant>,
    /// Per peer not heard from since the start, how long it had been silent then (from the
    /// last contact saved before the start): a restart does not give a peer gone for good a
    /// new `peer_absent_ms` to hold compaction back for.
    silent_at_start: BTreeMap<NodeId, Duration>,
    /// The last contacts saved to the store (wall clock, ms; see `save_cursors`), and this
    /// node's own "alive at" under its own id.
    heard_saved: BTreeMap<NodeId, u64>,
    /// Configured peers never heard from: since when this node waits for them (wall clock,
    /// ms; saved once, kept across restarts until the peer is heard from).
    awaited_since: BTreeMap<NodeId, u64>,
    /// Peers a reload added, and when (the others are waited for since `started`).
    configured_at: BTreeMap<NodeId, Instant>,
    /// The saved contacts could be read at the start (else none are saved over them).
    heard_loaded: bool,
    /// Where apply spans go.
    traces: Arc<crate::trace::Traces>,
    /// Per peer with Applies outstanding (see [`applying::Outstanding`]), oldest first.
    outstanding: BTreeMap<NodeId, std::collections::VecDeque<applying::Outstanding>>,
    /// Per peer, the chain its batches are queued on at the committer (a new one after one
    /// failed: see [`crate::committer::ApplyChain`]).
    chains: BTreeMap<NodeId, crate::committer::ApplyChain>,
    /// Per peer: (messages sent, bytes sent, messages received, bytes received).
    frames: BTreeMap<NodeId, [u64; 4]>,
    last_error: BTreeMap<NodeId, String>,
    /// Per peer, why its last session was refused (its protocol version or config), until one
    /// starts: what the origin gate's wait names, which a dial failing since does not hide.
    refusals: BTreeMap<NodeId, String>,
    mismatches: BTreeMap<NodeId, Vec<String>>,
    /// Links a newer connection replaced, until their end comes (not the peer's error).
    replaced: BTreeSet<(NodeId, u64)>,
    peer_have: BTreeMap<NodeId, BTreeMap<NodeId, u64>>,
    saved_at: Instant,
    config: Config,
    /// Open (`None`) once a peer said how far it holds this node's own events and this node
    /// holds at least that much; until then local writes wait (see `crate::committer`).
    /// Closed again when a peer shows later that it holds more of them than this node does.
    origin_gate: watch::Sender<Option<String>>,
    /// The gate was opened (by the peers' claims, or from the start: `--alone`, no peers).
    origin_open: bool,
    /// Why the gate is closed for good (until a restart): another history of this node's own
    /// events was found (see `Replicator::own_fork`).
    own_forked: Option<String>,
    reports: Reports,
    /// Per peer, the instances of its last sessions, newest last (at most 3).
    instances: BTreeMap<NodeId, VecDeque<(u64, Instant)>>,
    /// Peers whose id two machines were seen using: when, and the report.
    duplicates: BTreeMap<NodeId, (Instant, String)>,
    /// The last peer that said two machines use this node's id: what it said, and when.
    twin: Option<(NodeId, String, Instant)>,
    /// Per peer, the sessions it may still start (see [`SESSIONS_BURST`]) and when last refilled.
    session_starts: BTreeMap<NodeId, (f64, Instant)>,
    /// Per peer, how far its Hello said it holds this node's own events (for the origin gate).
    origin_claims: BTreeMap<NodeId, u64>,
    /// Peers whose claim of this node's own events rests on a seal this node's key does not
    /// verify, and why (see `Claimed::key_differs`).
    own_key_differs: BTreeMap<NodeId, String>,
    /// When the first of those claims came.
    origin_first_claim: Option<Instant>,
    /// The highest of this node's own sequence numbers the store held above its own have at
    /// start (part of a snapshot, see `StoreStatus::own_seen`): a standing claim for the gate.
    own_seen: u64,
    /// Per peer, when it last acknowledged more than before, or everything this node holds
    /// (see `compaction_floors`).
    acks_moved_at: BTreeMap<NodeId, Instant>,
    /// Whether the local have was set once (the store's at the start).
    have_loaded: bool,
    /// Per peer whose acknowledgements did not move since this start, how long before it they
    /// last moved (as saved: a restart does not give a stuck peer a new `peer_absent_ms`).
    moved_before_start: BTreeMap<NodeId, Duration>,
    /// Per peer, the time of its last acknowledgement progress saved (wall clock, ms).
    progress_saved: BTreeMap<NodeId, u64>,
    /// Anti-entropy sessions and what they found.
    anti_entropy: AntiEntropy,
}

impl Replicator {
    fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Haves only grow; a report older than one already taken changes nothing. The core holds
    /// the local have; this driver reads it there.
    fn set_have(&mut self, have: &Have) {
        let held = self.core.local_have();
        // (The first report is what the store held at the start, not new events.)
        let loaded = std::mem::replace(&mut self.have_loaded, true);
        if loaded
            && have
                .iter()
                .any(|(origin, &seq)| seq > held.get(origin).copied().unwrap_or(0))
        {
            self.anti_entropy.changed_here();
            // Peers that held everything until now start lacking events only now: their
            // acknowledgements' quiet spell before does not count against them.
            let now = Instant::now();
            for (peer, acked) in &self.acked {
                if held
                    .iter()
                    .all(|(o, &seq)| acked.get(o).is_some_and(|&a| a >= seq))
                {
                    self.acks_moved_at.insert(peer.clone(), now);
                }
            }
        }
        self.core.set_local_have(have);
        self.check_origin();
    }

    fn run(mut self, rx: std_mpsc::Receiver<Input>) {
        let mut published = Instant::now() - Duration::from_secs(1);
        loop {
            let now = self.now();
            let mut wait = self
                .core
                .poll_timeout()
                .map_or(100, |t| t.saturating_sub(now))
                .clamp(1, 100);
            // A compaction catching up goes on when due, not at the next message.
            if self.compact_more && !self.compacting {
                let due = self
                    .compact_resume_at
                    .saturating_duration_since(Instant::now());
                wait = wait.min(due.as_millis() as u64).max(1);
            }
            match rx.recv_timeout(Duration::from_millis(wait)) {
                Ok(Input::Stop) => break,
                Ok(input) => {
                    let mut applied = matches!(input, Input::Applied { .. });
                    self.handle(input);
                    // Take everything else waiting before doing IO; but once an apply is done,
                    // hand the committer the next one and send the ack first (the committer
                    // waits for it).
                    let mut stop = false;
                    for _ in 0..1024 {
                        if applied {
                            break;
                        }
                        match rx.try_recv() {
                            Ok(Input::Stop) => {
                                stop = true;
                                break;
                            }
                            Ok(input) => {
                                applied = matches!(input, Input::Applied { .. });
                                self.handle(input);
                            }
                            Err(_) => break,
                        }
                    }
                    if stop {
                        break;
                    }
                }
                Err(std_mpsc::RecvTimeoutError::Timeout) => {}
                Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
            }
            let now = self.now();
            self.note_busy_links(now);
            self.core.handle_timeout(now);
            // The origin gate's grace runs out without a message.
            self.check_origin();
            self.aae_tick();
            self.maybe_compact();
            self.drain_outputs();
            self.transmit();
            if self.saved_at.elapsed() >= SAVE_CURSORS_EVERY {
                self.save_cursors(false);
            }
            if published.elapsed() >= Duration::from_millis(100) {
                self.publish();
                published = Instant::now();
            }
        }
        self.save_cursors(true);
        if let Err(e) = self.committer.sync_blocking() {
            tracing::warn!("cannot sync the saved peer cursors: {e}");
        }
        for live in self.conns.values() {
            live.conn.close(CloseCode::Normal, "node shutting down");
        }
    }

    fn handle(&mut self, input: Input) {
        let now = self.now();
        match input {
            Input::Connected {
                conn,
                id,
                frames,
                queued,
                paused,
                inbox_bytes,
                resume,
                dialer,
            } => self.connected(
                Live {
                    id,
                    conn,
                    frames,
                    queued,
                    paused,
                    inbox_bytes,
                    resume,
                    frames_seen: 0,
                    frames_received_seen: 0,
                    stuck_since: None,
                    dialer,
                    since: Instant::now(),
                },
                now,
            ),
            Input::Disconnected { peer, id, reason } => {
                if self.conns.get(&peer).is_some_and(|l| l.id == id) {
                    self.conns.remove(&peer);
                    self.core.disconnected(&peer, now);
                    self.aae_disconnected(&peer);
                }
                // A link a newer one replaced ending is not the peer's error.
                if !self.replaced.remove(&(peer.clone(), id)) {
                    self.last_error.insert(peer, reason);
                }
            }
            // The connection is closed already, and its Disconnected follows.
            Input::Refused { peer, reason } => self.note_refusal(peer, reason),
            Input::Twin { peer, reason } => self.twin_reported(peer, reason),
            Input::Message {
                peer,
                id,
                message,
                bytes,
                cost,
            } => self.received(peer, id, message, bytes, cost, now),
            Input::Applied { peer, sent, result } => self.applied(peer, sent, result, now),
            Input::Installed { peer, result } => self.installed(peer, result, now),
            Input::Repaired {
                peer,
                id,
                result,
                took,
            } => self.aae_repaired(peer, id, result, took, now),
            Input::Reconcile { peer, due, reply } => self.aae_on_demand(peer, due, reply),
            Input::Compacted(result) => self.compacted(result),
            Input::Have(have) => self.set_have(&have),
            Input::Reload { config, restart } => self.reload(*config, restart, now),
            Input::Stop => {}
        }
    }

    /// A peer link is up: it replaces the peer's session, unless the peer is refused (its id used by two machines, revoked, or no longer configured).
    fn connected(&mut self, live: Live, now: u64) {
        let peer = live.conn.peer.clone();
        if let Some((at, why)) = self.duplicates.get(&peer)
            && at.elapsed() < DUPLICATE_WINDOW
        {
            live.conn.close(CloseCode::DuplicateId, why);
            return;
        }
        if self.config.is_revoked(&peer) {
            live.conn
                .close(CloseCode::Protocol, "this node is revoked ([[revoked]])");
            return;
        }
        // A connection that was up before a reload removed the peer.
        if !self.peers.iter().any(|(id, _)| *id == peer) {
            live.conn
                .close(CloseCode::UnknownPeer, "no longer a peer of this node");
            return;
        }
        let starts = anti_entropy::refilled(
            &mut self.session_starts,
            &peer,
            SESSIONS_PER_SECOND,
            SESSIONS_BURST,
        );
        if *starts < 1.0 {
            let reason = format!(
                "reconnecting too often: a peer starts at most {SESSIONS_BURST} sessions at once and one per {} s after; dial again later",
                1.0 / SESSIONS_PER_SECOND
            );
            static LOG: crate::log_limit::Throttle =
                crate::log_limit::Throttle::new(crate::log_limit::EVERY);
            if let Some(left_out) = LOG.allow() {
                tracing::warn!(peer = %peer, left_out, "connection refused: {reason}");
            }
            live.conn.close(CloseCode::Normal, &reason);
            return;
        }
        *starts -= 1.0;
        if let Some(old) = self.conns.get(&peer) {
            // Both nodes dialed at once (both starting, say): each would keep the connection it
            // saw last, and close the other, so each may close the one the other kept. Of two
            // connections made moments apart in opposite directions, both keep the one the
            // lower id dialed.
            let lower_dials = self.config.node.id < peer;
            if old.since.elapsed() < CROSSED_DIALS_WITHIN
                && old.dialer != live.dialer
                && old.dialer == lower_dials
            {
                // Its end is no error of the peer's (see `replaced`).
                self.replaced.insert((peer.clone(), live.id));
                live.conn.close(
                    CloseCode::Normal,
                    "crossed dials: the connection the lower node id dialed is kept",
                );
                return;
            }
            self.replaced.insert((peer.clone(), old.id));
        }
        self.end_session(
            &peer,
            CloseCode::Normal,
            "replaced by a newer connection",
            now,
        );
        tracing::info!(peer = %peer, remote = %live.conn.remote, "peer connected");
        self.last_error.remove(&peer);
        // The handshake on this link says again whether the configs differ.
        self.mismatches.remove(&peer);
        let rtt_ms = live.conn.rtt_ms();
        self.conns.insert(peer.clone(), live);
        self.core.connected(&peer, now);
        self.core.set_link_rtt(&peer, rtt_ms);
    }

    /// A message from `peer` on link `id` (stale links' messages are dropped).
    fn received(
        &mut self,
        peer: NodeId,
        id: u64,
        message: Message,
        bytes: usize,
        cost: usize,
        now: u64,
    ) {
        let Some(live) = self.conns.get(&peer).filter(|l| l.id == id) else {
            return;
        };
        let before = live.inbox_bytes.fetch_sub(cost, Ordering::AcqRel);
        if before > connection::INBOX_MAX_BYTES && before - cost <= connection::INBOX_MAX_BYTES {
            live.resume.notify_one();
        }
        let f = self.frames.entry(peer.clone()).or_default();
        f[2] += 1;
        f[3] += bytes as u64;
        // Before the handshake the core takes only a Hello or a Bye: nothing here acts on any
        // other message first (certificates learnt, fork checks read the store, the peer counted
        // as heard from for compaction); the core refuses it.
        if !matches!(message, Message::Hello(_) | Message::Bye { .. }) && !self.core.is_ready(&peer)
        {
            if let Err(e) = self.core.handle(&peer, message, now) {
                self.protocol_error(peer, e.to_string(), now);
            }
            return;
        }
        self.last_contact.insert(peer.clone(), wall_ms());
        self.heard_at.insert(peer.clone(), Instant::now());
        match &message {
            Message::Hello(hello) => {
                self.peer_have
                    .insert(peer.clone(), hello.have.iter().cloned().collect());
            }
            Message::Events {
                events,
                seals,
                certs,
            } => {
                if !events.is_empty() {
                    self.anti_entropy.heard_events(&peer);
                }
                if let Some(reason) = self.learn_certs(&peer, certs) {
                    tracing::error!(peer = %peer, "certificate refused, disconnecting: {reason}");
                    self.cut_off(peer, reason, now);
                    return;
                }
                if let Some(reason) = self.check_forks(&peer, events, seals) {
                    tracing::error!(peer = %peer, "events refused, disconnecting: {reason}");
                    self.cut_off(peer, reason, now);
                    return;
                }
            }
            Message::Snapshot { certs, .. } => {
                if let Some(reason) = self.learn_certs(&peer, certs) {
                    tracing::error!(peer = %peer, "certificate refused, disconnecting: {reason}");
                    self.cut_off(peer, reason, now);
                    return;
                }
            }
            Message::Reconcile { .. } | Message::Repair { .. } => {
                // The core checks only that it follows the handshake; anti-entropy
                // takes the message itself.
                let probe = Message::Reconcile {
                    id: 0,
                    fingerprints: Vec::new(),
                    items: Vec::new(),
                };
                match self.core.handle(&peer, probe, now) {
                    Ok(()) => self.aae_message(&peer, message, bytes),
                    Err(e) => self.protocol_error(peer, e.to_string(), now),
                }
                return;
            }
            _ => {}
        }
        // What the peer's Hello says of this node's own events (judged only if the session is
        // refused for its config; a session that starts judges it at PeerReady).
        let own_claim = match &message {
            Message::Hello(hello) => Some(trust::OwnClaim::of(self.core.local(), hello)),
            _ => None,
        };
        if let Err(e) = self.core.handle(&peer, message, now) {
            // A peer refused for its config (another policy or resolver: an operator changed
            // one node and restarted it) still said, under its own certificate and node id,
            // how far it holds this node's events: that opens the origin gate as a session
            // would, so the node takes local writes while its operator aligns the configs.
            if let (
                Some(claim),
                ProtocolError::PolicyDiffers { .. } | ProtocolError::ResolversDiffer { .. },
            ) = (own_claim, &e)
            {
                let claim = self.own_claim(&peer, claim);
                self.origin_claimed(peer.clone(), claim);
                self.refuse_config(peer, e.to_string(), now);
                return;
            }
            self.protocol_error(peer, e.to_string(), now);
        }
    }

    /// The config was reloaded: the core's policy, fingerprint and limits follow it; removed
    /// and revoked peers' sessions end; with `restart`, every other session handshakes again.
    fn reload(&mut self, config: Config, restart: bool, now: u64) {
        self.config = config;
        self.core.set_policy(policy(&self.config));
        self.core.set_fingerprint(fingerprint(&self.config));
        // Pauses a handshake set by the old config after the pipeline's install lifted them.
        self.pipeline.unpause_satisfied(&self.config);
        self.core.set_limits(MessageLimits {
            event: crate::event_limits(&self.config),
            ..MessageLimits::default()
        });
        self.value_limits = crate::value_limits(&self.config);
        self.transformed_on_apply = transformed_on_apply(&self.config);
        if let Some(reason) = self.halted.take() {
            tracing::info!(%reason, "replication resumes after a config reload");
        }
        self.core.retry_held_back(now);
        let peers: Vec<(NodeId, String)> = self
            .config
            .peers
            .iter()
            .map(|p| (p.id.clone(), p.address.clone()))
            .collect();
        // Peers the reload adds are waited for from now, not from the start (nor from when an
        // earlier config had them: their saved wait is replaced).
        for (id, _) in &peers {
            if !self.peers.iter().any(|(p, _)| p == id) {
                self.configured_at.insert(id.clone(), Instant::now());
                if !self.heard_at.contains_key(id) {
                    self.silent_at_start.remove(id);
                    self.awaited_since.remove(id);
                }
                self.moved_before_start.remove(id);
            }
        }
        self.peers = peers;
        let removed: Vec<NodeId> = self
            .conns
            .keys()
            .filter(|p| !self.peers.iter().any(|(id, _)| id == *p))
            .cloned()
            .collect();
        for peer in removed {
            tracing::info!(peer = %peer, "config reloaded: no longer a peer; closing its session");
            self.end_session(
                &peer,
                CloseCode::Normal,
                "no longer a peer of this node",
                now,
            );
        }
        let gone: Vec<NodeId> = self
            .conns
            .keys()
            .filter(|p| self.config.is_revoked(p))
            .cloned()
            .collect();
        if restart {
            for (peer, live) in &self.conns {
                if gone.contains(peer) {
                    continue;
                }
                tracing::info!(peer = %peer, "config reloaded: handshaking again");
                live.conn
                    .close(CloseCode::Normal, "config reloaded: handshaking again");
            }
        }
        for peer in gone {
            tracing::warn!(peer = %peer, "revoked: closing its session");
            self.end_session(
                &peer,
                CloseCode::Protocol,
                "this node is revoked ([[revoked]])",
                now,
            );
            self.last_error
                .insert(peer, "revoked ([[revoked]] in the config)".into());
        }
    }

    /// Ends the session with `peer` for what the link itself showed (`reason`: not reading, no
    /// Hello, an expired certificate): logged, kept as its last error, and said to the peer.
    fn end_for(&mut self, peer: NodeId, reason: &str, now: u64) {
        tracing::warn!(peer = %peer, "session ended: {reason}");
        self.last_error.insert(peer.clone(), reason.to_owned());
        self.end_session(&peer, CloseCode::Protocol, reason, now);
    }

    /// Closes the session with `peer` (if one is up) saying why, and tells the core and
    /// anti-entropy it ended.
    fn end_session(&mut self, peer: &NodeId, code: CloseCode, reason: &str, now: u64) {
        let Some(live) = self.conns.remove(peer) else {
            return;
        };
        live.conn.close(code, reason);
        self.core.disconnected(peer, now);
        self.aae_disconnected(peer);
    }

    fn drain_outputs(&mut self) {
        while let Some(output) = self.core.poll_output() {
            match output {
                Output::Apply {
                    peer,
                    events,
                    seals,
                    certs,
                } => self.apply_batch(peer, events, seals, certs),
                Output::PeerReady { peer, hello } => {
                    tracing::info!(peer = %peer, instance = hello.instance, "replication session ready");
                    self.refusals.remove(&peer);
                    if self.duplicate_id(&peer, hello.instance) {
                        continue;
                    }
                    let claim =
                        self.own_claim(&peer, trust::OwnClaim::of(self.core.local(), &hello));
                    self.origin_claimed(peer.clone(), claim);
                    // What the peer says it holds durably is what it acknowledges (lower than
                    // the saved cursor if it lost data): compaction must go by it.
                    let have: BTreeMap<NodeId, u64> = hello.have.into_iter().collect();
                    self.ack_progress(&peer, &have);
                    self.acked.insert(peer.clone(), have.clone());
                    self.dirty.insert(peer, have);
                }
                Output::InstallSnapshot {
                    peer,
                    versions,
                    proofs,
                    have,
                    seals,
                    certs,
                } => self.install_snapshot(peer, versions, proofs, have, seals, certs),
                Output::SnapshotDeclined {
                    peer,
                    id: _,
                    reason,
                } => {
                    // A peer can send unasked snapshots as fast as it likes: a line per 10 s
                    // at most (the refusal report below keeps each).
                    static LOG: crate::log_limit::Throttle =
                        crate::log_limit::Throttle::new(crate::log_limit::EVERY);
                    if let Some(left_out) = LOG.allow() {
                        tracing::warn!(peer = %peer, left_out, "{reason} (lines like this one are written once per 10 s, `left_out` says how many were not)");
                    }
                    self.reports.refused(
                        RefusalReport {
                            from_peer: peer.to_string(),
                            origin: String::new(),
                            seq: 0,
                            reason,
                            at_ms: wall_ms(),
                        },
                        0,
                    );
                    self.reports.snapshots_declined_total += 1;
                }
                Output::UpgradeMissing {
                    peer,
                    collection,
                    from_ms,
                } => {
                    // (Judged by the core's fingerprint; this config may have the upgrade by now.)
                    if crate::pipeline::has_upgrade(&self.config, &collection, from_ms) {
                        continue;
                    }
                    self.pipeline.pause(
                        &collection,
                        crate::pipeline::Pause {
                            peer: peer.clone(),
                            from_ms,
                            reason: format!(
                                "peer {peer} decides collection {collection:?} from {} on with an upgrade (collections.declared.upgrades) this node's config does not have; its events from then on wait here until this node's config has the same upgrade (edit the config, then `edgerep reload`)",
                                edgerep_config::format_ms(from_ms)
                            ),
                        },
                    );
                }
                Output::Mismatch { peer, differences } => {
                    for d in &differences {
                        tracing::warn!(peer = %peer, "configuration differs: {}", edgerep_wire::text::one_line(&d.to_string()));
                    }
                    self.mismatches.insert(peer, differences);
                }
                Output::Acked { peer, have } => {
                    let have: BTreeMap<NodeId, u64> = have.into_iter().collect();
                    self.ack_progress(&peer, &have);
                    self.acked.insert(peer.clone(), have.clone());
                    self.dirty.insert(peer, have);
                }
            }
        }
        // Backpressure on receiving: pause readers whose applies pile up.
        for (peer, live) in &self.conns {
            let pending = self.core.pending_apply_events(peer) > PAUSE_ABOVE_EVENTS
                || self.core.pending_apply_bytes(peer) > PAUSE_ABOVE_BYTES;
            if live.paused.swap(pending, Ordering::AcqRel) && !pending {
                live.resume.notify_one();
            }
        }
    }

    /// Stops replication: a transform on apply failed under the `halt` policy. The collection's
    /// local writes stop too; nothing is lost (peers keep the events in their changelogs).
    /// Halts the collection of `halt` (see [`crate::apply::Halt`]): its events are deferred at
    /// admission from now on, before any transform runs, so the origins behind them wait while
    /// every other origin and collection goes on. (It stopped all replication once: one event
    /// any writer of one collection could send halted every link, again after each restart.)
    fn halt(&mut self, halt: crate::apply::Halt) {
        tracing::error!(collection = %halt.collection, "replication of the collection halted: {}", edgerep_wire::text::one_line(&halt.reason));
        self.pipeline
            .halt_apply(&halt.collection, halt.reason.clone());
        self.halted = Some(format!("collection {:?}: {}", halt.collection, halt.reason));
    }

    /// Tells the core each link's round trip, and which links still carry what was sent to
    /// them: frames queued here, or stream data leaving over QUIC since the last look. Their
    /// resend timers wait (a batch takes longer than the timer on a slow link; resending would
    /// queue copies behind it). Data arriving holds the events' timer back too, for a while
    /// (the peer's acknowledgements wait behind what it sends); not the snapshot page's: a
    /// busy peer sends all the time, and a page it failed to merge would never go again.
    fn note_busy_links(&mut self, now: u64) {
        if self.links_seen_at.elapsed() < LINK_LOOK_EVERY {
            return;
        }
        self.links_seen_at = Instant::now();
        let stuck_limit = STUCK_LIMIT.max(Duration::from_millis(
            self.config.replication.idle_timeout_ms,
        ));
        let mut stuck = Vec::new();
        for (peer, live) in &mut self.conns {
            self.core.set_link_rtt(peer, live.conn.rtt_ms());
            let sent = live.conn.stream_frames_sent();
            let moving = sent > live.frames_seen;
            live.frames_seen = sent;
            let queued = live.queued.load(Ordering::Acquire) > 0;
            if moving || queued {
                self.core.link_busy(peer, now);
            }
            let received = live.conn.stream_frames_received();
            if received > live.frames_received_seen {
                self.core.link_receiving(peer, now);
            }
            live.frames_received_seen = received;
            // Frames waiting and none leaving: the peer's flow control holds them (it does
            // not read), or the link dropped out. Its link is closed after STUCK_LIMIT, or the
            // idle timeout if longer (a dropout the operator allows for must not end it
            // sooner); the peer may dial again and resume. Else it would count as busy, and
            // hold retention, for as long as it keeps the connection open.
            if queued && !moving {
                if live.stuck_since.get_or_insert_with(Instant::now).elapsed() > stuck_limit {
                    stuck.push(peer.clone());
                }
            } else {
                live.stuck_since = None;
            }
        }
        for peer in stuck {
            let reason = format!(
                "the peer is not reading: nothing queued for it left for {} s",
                stuck_limit.as_secs()
            );
            self.end_for(peer, &reason, now);
        }
        // (A dropout the operator allows for, right after connecting, must not end it sooner.)
        let hello_within = HELLO_WITHIN.max(Duration::from_millis(
            self.config.replication.idle_timeout_ms,
        ));
        let silent: Vec<NodeId> = self
            .conns
            .iter()
            .filter(|(peer, live)| live.since.elapsed() > hello_within && !self.core.is_ready(peer))
            .map(|(peer, _)| peer.clone())
            .collect();
        for peer in silent {
            let reason = format!(
                "the peer sent no Hello within {} s of connecting",
                hello_within.as_secs()
            );
            self.end_for(peer, &reason, now);
        }
        // TLS checked the peer's certificate at the handshake only: a session outliving it
        // ends (a new handshake is refused until the peer has a valid one).
        let now_s = (wall_ms() / 1000) as i64;
        let expired: Vec<(NodeId, i64)> = self
            .conns
            .iter()
            .filter_map(|(peer, live)| {
                let at = live.conn.certificate_expires_unix_s?;
                (at <= now_s).then(|| (peer.clone(), at))
            })
            .collect();
        for (peer, at) in expired {
            let reason = format!(
                "the peer's certificate expired (at {at} Unix seconds): renew it for the same key (`edgerep certs node --renew`, or your PKI) and restart it"
            );
            self.end_for(peer, &reason, now);
        }
    }

    pub(super) fn transmit(&mut self) {
        let now = self.now();
        // Backpressure on sending: no Events for a peer whose frames pile up unsent.
        let mut not_reading = Vec::new();
        for (peer, live) in &self.conns {
            let queued = live.queued.load(Ordering::Acquire);
            self.core
                .set_send_blocked(peer, queued > SEND_QUEUE_MAX_BYTES);
            if queued > SEND_QUEUE_HARD_BYTES {
                not_reading.push((peer.clone(), queued));
            }
        }
        // Control messages (Acks, answers) are not held back: a peer that sends requests and
        // never reads the answers would grow the queue without end. Past the hard bound the
        // link goes (the peer may dial again and resume).
        for (peer, queued) in not_reading {
            let reason = format!(
                "the peer is not reading: {queued} bytes queued unsent (at most {SEND_QUEUE_HARD_BYTES})"
            );
            self.end_for(peer, &reason, now);
        }
        loop {
            match self.core.poll_transmit(now, &self.log) {
                Ok(Some((peer, message))) => {
                    if let Some(live) = self.conns.get(&peer) {
                        let frame = message.encode();
                        let f = self.frames.entry(peer.clone()).or_default();
                        f[0] += 1;
                        f[1] += frame.len() as u64;
                        let queued = live.queued.fetch_add(frame.len(), Ordering::AcqRel);
                        if live.frames.send(frame).is_err() {
                            continue;
                        }
                        if queued > SEND_QUEUE_MAX_BYTES {
                            self.core.set_send_blocked(&peer, true);
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::error!("reading the changelog for replication failed: {e}");
                    break;
                }
            }
        }
    }
}
