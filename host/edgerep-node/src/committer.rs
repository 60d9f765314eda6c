//! Group commit: one thread owns all local writes to the store. It takes every request waiting
//! in its queue (up to `max_events` events), commits them in one durable transaction, and only
//! then answers each request.
//!
//! Events from peers come through here too ([`Committer::apply`]): one durable transaction per
//! received batch, never mixed with local writes, so the store has a single writer.
//!
//! Collections with `durability = "periodic"` ([`SyncPolicy`]): a transaction of local writes
//! that touches only such collections commits without waiting for the disk, and the committer
//! syncs the store within the policy's interval (and before it stops). A peer's batch is always
//! synced: its Ack tells the peer this node holds it.
//!
//! Invariants: a request is answered `Ok` only after the transaction holding all its events
//! committed (synced, unless every event is in a periodic collection); a request's events are
//! never split across transactions; a failed transaction fails every request in it and writes
//! nothing; after every commit the hook is told the per-origin highest sequence numbers the
//! store holds, where this node's own origin counts only synced events: replication never
//! ships an event its origin could still lose in a crash, so a sequence number reused after a
//! crash was never seen by anyone.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use edgerep_config::{Config, Durability};
use edgerep_store::idempotency::Receipt;
use edgerep_store::{
    Committed, Compaction, EventDeadLetter, Installed, LocalWrite, Received, RemoteApply,
    StoreWriter, Sync,
};
use edgerep_wire::seal::Proof;
use edgerep_wire::{EncodedEvent, HlcClock, NodeId, Seal};
use tokio::sync::{mpsc, oneshot, watch};

use crate::dead_letter_budget::{DeadLetterBudget, DeadLetterPromise};

/// Requests waiting for the committer, at most. Writers wait (backpressure) when it is full.
const QUEUE_REQUESTS: usize = 4096;

pub use edgerep_wire::Have;

/// Called on the committer thread after every durable commit with the store's new [`Have`].
pub type CommitHook = Box<dyn Fn(&Have) + Send>;

/// What the committer reports to and waits on.
pub struct Links {
    /// Told the last synced feed position: after each durable commit, and after the sync of
    /// deferred ones (watchers never see a position a crash could take back).
    pub feed: watch::Sender<u64>,
    /// Told each new durable have.
    pub hook: CommitHook,
    /// Local writes wait while it holds a reason (see the origin check in `replication`).
    pub origin_gate: watch::Receiver<Option<String>>,
    /// Commit durations and per-collection counts.
    pub metrics: Arc<crate::metrics::CommitMetrics>,
    /// Told why, when the disk failed under the store (every later write would fail too
    /// until the store is opened again) or the committer thread ended on a panic (nothing
    /// would write again): the node stops (see `edgerep_node::start`).
    pub disk_failed: watch::Sender<Option<String>>,
}

/// Held by the committer thread: a panic there (a bug) would leave the node up with nothing
/// to write its writes, answering `shutting_down` for ever and leaving peers' applies
/// unanswered; it stops the node instead, as a failed disk does, so its supervisor restarts it.
struct StopOnPanic(watch::Sender<Option<String>>);

impl Drop for StopOnPanic {
    fn drop(&mut self) {
        if thread::panicking() {
            self.0.send_if_modified(|f| {
                let new = f.is_none();
                f.get_or_insert_with(|| {
                    "the committer thread panicked (a bug: its message is in the log above), not a disk failure".into()
                });
                new
            });
        }
    }
}

/// Called on the committer thread with the outcome of [`Committer::apply`].
pub type ApplyReply = Box<dyn FnOnce(Result<RemoteApply, CommitError>) + Send>;

/// A peer's batches queued one behind the other, each admitted counting on the ones before it
/// (see `replication/applying.rs`): once one fails, those queued behind it are refused
/// unapplied, naming the first failure (an event admitted because an earlier batch held what it
/// depends on must not be applied without it).
#[derive(Debug, Clone, Default)]
pub struct ApplyChain(Arc<std::sync::OnceLock<String>>);

impl ApplyChain {
    /// Why a batch of the chain failed, once one did.
    pub fn broken(&self) -> Option<&str> {
        self.0.get().map(String::as_str)
    }

    fn break_with(&self, reason: &str) {
        let _ = self.0.set(reason.to_owned());
    }
}

/// Called on the committer thread with the outcome of [`Committer::install`].
pub type InstallReply = Box<dyn FnOnce(Result<Installed, CommitError>) + Send>;

/// Called with the outcome of a repair's merge and how long the committer spent on it (the
/// peer who sent it is charged that time).
pub type RepairReply = Box<dyn FnOnce(Result<Installed, CommitError>, std::time::Duration) + Send>;

/// Called on the committer thread with the outcome of [`Committer::compact`].
pub type CompactReply = Box<dyn FnOnce(Result<Compaction, CommitError>) + Send>;

/// One re-resolving transaction's outcome: rows changed, and the state key to go on after.
type ReResolved = (u64, Option<Vec<u8>>);

/// State rows one re-resolving transaction reads (so writes wait behind it briefly).
pub const RE_RESOLVE_ROWS: usize = 2048;

/// Longest a group commit waits for the write requests it expects (see `expected` below): half
/// the last local commit's time, within these bounds. A writer that comes within it shares
/// this commit instead of waiting for the whole next one; waiting longer than half a commit
/// would cost the writers already here more than it saves the late ones.
const LINGER_MIN: Duration = Duration::from_micros(200);
const LINGER_MAX: Duration = Duration::from_millis(2);
/// Most requests a group commit lingers for.
const MAX_EXPECTED: usize = 256;

/// Wakes the committer from its linger when a write request is sent, so a group commit starts
/// as soon as the last request it expects is here (a timer's step would be 50 to 100 µs late on
/// Linux, against a commit of about 600 µs). A lost wake-up only costs the rest of the linger.
#[derive(Debug, Default)]
struct LingerWake {
    /// Set by the committer while it lingers; a sender that clears it unparks the thread.
    lingering: AtomicBool,
    thread: std::sync::OnceLock<thread::Thread>,
}

impl LingerWake {
    /// After a request is sent: wakes the committer if it is lingering.
    fn wake(&self) {
        // SeqCst against the committer's store-then-look (the request is in the queue first).
        if self.lingering.swap(false, Ordering::SeqCst)
            && let Some(t) = self.thread.get()
        {
            t.unpark();
        }
    }
}

/// Most changelog entries one compaction transaction removes (the rest go in the next ones),
/// so local writes never wait long behind one (a few milliseconds: each removed event is
/// decoded and its key looked up, to keep the blocks that still hold live versions; a sweep of
/// superseded proofs may add up to 20 ms more to one of them).
pub const COMPACT_MAX_REMOVE: u64 = 1_024;

/// A compaction that left more waits this many times as long as its transaction took before
/// the next: while it catches up it takes at most a quarter of the committer's time, so writes
/// rarely wait behind it (at half, `bench replicate`'s p99 at 10,000 events/s went past 10 ms).
pub const COMPACT_PAUSE_FACTOR: u32 = 3;

/// Which collections are acknowledged before the disk sync, and how often they are synced.
#[derive(Debug, Clone)]
pub struct SyncPolicy {
    /// Collections declared with `durability = "periodic"`.
    pub periodic: BTreeSet<String>,
    /// How often deferred commits are synced.
    pub interval: Duration,
}

impl SyncPolicy {
    /// The policy the configuration declares.
    pub fn from_config(config: &Config) -> SyncPolicy {
        SyncPolicy {
            periodic: config
                .collections
                .declared
                .iter()
                .filter(|c| c.durability == Durability::Periodic)
                .map(|c| c.name.clone())
                .collect(),
            interval: Duration::from_millis(config.node.sync_interval_ms),
        }
    }

    /// Deferred when every collection named is periodic, immediate otherwise.
    fn sync_for<'a>(&self, mut collections: impl Iterator<Item = &'a str>) -> Sync {
        if !self.periodic.is_empty() && collections.all(|c| self.periodic.contains(c)) {
            Sync::Deferred
        } else {
            Sync::Immediate
        }
    }
}

/// The committer's view of what is on disk: deferred commits not yet synced, and this node's
/// own highest sequence number committed and synced.
struct Durable {
    unsynced: bool,
    /// Tells the flusher there is something to sync.
    flush_wanted: Arc<AtomicBool>,
    /// Set by the flusher when a sync is due: the next local group commit syncs, so that
    /// deferred commits are synced within about the interval even when the flusher's sync
    /// request waits behind a full queue of writes.
    sync_due: Arc<AtomicBool>,
    local_committed: u64,
    /// The last feed position committed (synced or not).
    feed_committed: u64,
}

enum Request {
    Write(Pending),
    /// Sync deferred commits (sent by the flusher thread).
    Sync,
    Apply {
        events: Vec<Received>,
        seals: Vec<Seal>,
        certs: Vec<(NodeId, Vec<u8>)>,
        dead_letters: Vec<EventDeadLetter>,
        /// The dead letters' places under the dead-letter limits: settled once committed.
        promise: DeadLetterPromise,
        chain: ApplyChain,
        /// Per origin, the batch's last event (worked out by the caller, off this thread).
        last: Have,
        reply: ApplyReply,
    },
    /// Merge a page of a peer's state (a snapshot); the last page carries its have.
    Install {
        versions: Vec<EncodedEvent>,
        proofs: Vec<Proof>,
        have: Option<Have>,
        seals: Vec<Seal>,
        certs: Vec<(NodeId, Vec<u8>)>,
        reply: InstallReply,
    },
    /// Merge versions a peer sent in anti-entropy repair.
    Repair {
        repair: Repair,
        reply: RepairReply,
    },
    /// Remove changelog entries up to these floors (and with `sweep`, superseded proofs).
    Compact {
        floors: Have,
        sweep: bool,
        reply: CompactReply,
    },
    /// Sync everything committed so far (replication, before it reads a state page for a
    /// snapshot, and at shutdown), then answer.
    SyncNow {
        reply: oneshot::Sender<Result<(), CommitError>>,
    },
    /// Save what a peer acknowledged holding (advice for status and lag; not synced).
    SavePeerCursor {
        peer: NodeId,
        have: Have,
    },
    /// Save when peers were last heard from, and when their acknowledgements last moved
    /// (advice for retention; not synced).
    SavePeersHeard {
        heard: BTreeMap<NodeId, edgerep_store::Heard>,
        progress: BTreeMap<NodeId, u64>,
    },
    /// Record that another history of this node's own events was proven at `seq` (durable).
    RecordOwnFork {
        seq: u64,
    },
    /// Remove a dead letter without replaying it.
    RemoveDeadLetter {
        id: u64,
        reply: oneshot::Sender<Result<bool, CommitError>>,
    },
    /// Save the record of what decides each collection (see `crate::deciders`), durably.
    RecordDeciders {
        record: String,
        reply: oneshot::Sender<Result<(), CommitError>>,
    },
    /// Clear the re-resolve marks of these collections in the record of what decides each
    /// collection, as it is now (read and written here, so that no other record comes between).
    ClearMarks {
        done: Vec<(String, usize)>,
        reply: oneshot::Sender<Result<(), CommitError>>,
    },
    /// Record limits the store is about to be written under (see
    /// `edgerep_store::StoreWriter::record_limits`).
    RecordLimits {
        limits: edgerep_wire::event::EventLimits,
        reply: oneshot::Sender<Result<(), CommitError>>,
    },
    /// Decide the kept resolutions of a collection again (its resolver changed by a reload).
    ReResolve {
        collection: String,
        after: Option<Vec<u8>>,
        reply: oneshot::Sender<Result<ReResolved, CommitError>>,
    },
}

struct Pending {
    writes: Vec<LocalWrite>,
    /// Idempotency keys to record with the request's writes (`first` counts from the
    /// request's own first write).
    receipts: Vec<Receipt>,
    /// Dead letters this commit replays (removed in the same transaction). A replay is
    /// committed in a group of its own: if its dead letter is gone, only the replay fails.
    dead_letters: Vec<u64>,
    /// Dead letters of the request's writes a plugin failed on (ids reserved), kept in the
    /// transaction that commits its writes and key: all of them or nothing.
    set_aside: edgerep_store::SetAside,
    /// `set_aside`'s places under the dead-letter limits: settled once committed.
    promise: DeadLetterPromise,
    reply: oneshot::Sender<Result<Vec<Committed>, CommitError>>,
}

impl Pending {
    /// Answers the writer. The dead letters' ids are settled first (committed or given up), so
    /// a listing made once the writer has its answer shows them.
    fn answer(self, result: Result<Vec<Committed>, CommitError>) {
        let Pending {
            reply,
            set_aside,
            promise,
            ..
        } = self;
        // Places not kept by now are given back before the writer hears: its retry finds them.
        drop(promise);
        drop(set_aside);
        // A writer that gave up waiting is no reason to stop.
        let _ = reply.send(result);
    }
}

/// Why a group of writes was not committed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommitError {
    /// The store failed; nothing of the group was written.
    #[error("store failed, nothing written: {0}")]
    Store(String),
    /// The disk failed under the store (full, say; the first failure), and the node is
    /// stopping. Whether the group is durable is not known: a failure while its pages were
    /// written leaves nothing, but one at the final sync may leave it all (redb writes its
    /// header before that sync).
    #[error(
        "the disk failed under the store: {0}; the node is stopping (restart it once the disk is fixed). These writes may be durable (a failed sync does not undo them): read them back after the restart, or retry with the same idempotency key"
    )]
    DiskFailed(String),
    /// The disk failed under the store before this was tried (the first failure): redb
    /// refuses every later transaction, so nothing of it was written; the node is stopping.
    #[error(
        "the disk failed under the store earlier: {0}; nothing of this was written, and the node is stopping (restart it once the disk is fixed)"
    )]
    DiskFailedEarlier(String),
    /// The node is shutting down.
    #[error("node is shutting down")]
    Closed,
    /// A replay named a dead letter that another replay already committed.
    #[error("dead letter {0} was replayed or deleted meanwhile")]
    DeadLetterGone(u64),
    /// Events from a peer whose origin's seal is missing, mismatched or invalid: nothing of the
    /// batch was applied.
    #[error("{0}")]
    Forged(String),
    /// The store refused this write (the other writes committed with it were not affected).
    #[error("write refused: {0}")]
    Refused(String),
    /// The request's idempotency key was recorded by another request meanwhile (nothing of
    /// this one was written; a retry gets that request's answer).
    #[error("idempotency key {0:?} was recorded by a concurrent request; retry to get its answer")]
    KeyInUse(String),
    /// The node does not take writes yet: no peer has told it how far they hold its own
    /// events (it could reuse sequence numbers after a restore from a backup).
    #[error("{0}")]
    Unconfirmed(String),
}

/// Handle to the committer thread.
#[derive(Debug, Clone)]
pub struct Committer {
    queue: mpsc::Sender<Request>,
    /// Write requests in `queue` (the group commit's linger looks at it). Counted once sent
    /// (a send given up sends nothing), so the committer may count one out first: briefly
    /// negative.
    writes_queued: Arc<AtomicIsize>,
    /// Dead letters held and promised (see [`Committer::dead_letter_budget`]).
    dead_letters: DeadLetterBudget,
    linger_wake: Arc<LingerWake>,
    /// This node's own highest event known durable (see [`Committer::own_synced`]).
    own_synced: Arc<AtomicU64>,
    /// The hybrid clock's last physical time (ms), as of the committer's last group commit or
    /// the request before its current one (see [`Committer::clock_last_ms`]).
    clock_last_ms: Arc<AtomicU64>,
    /// Local writes wait while this is `Some(reason)`: the node has not yet learnt from a peer
    /// how far its own origin goes (see [`crate::replication`]).
    origin_gate: watch::Receiver<Option<String>>,
}

/// How long a local write waits for the origin check before it is refused.
pub const ORIGIN_WAIT: Duration = Duration::from_secs(10);

/// Milliseconds since the Unix epoch by the wall clock (0 if the clock is before 1970).
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Committer {
    /// Starts the committer thread (see [`Links`] for what it reports to). The thread ends
    /// when every handle is dropped, after syncing deferred commits.
    pub fn spawn(
        store: StoreWriter,
        mut clock: HlcClock,
        max_events: usize,
        policy: SyncPolicy,
        links: Links,
    ) -> Result<(Committer, thread::JoinHandle<()>), edgerep_store::StoreError> {
        let Links {
            feed,
            hook,
            origin_gate,
            metrics,
            disk_failed,
        } = links;
        let on_panic = StopOnPanic(disk_failed.clone());
        let writes_queued = Arc::new(AtomicIsize::new(0));
        let queued = writes_queued.clone();
        // Counts a request out of the queue.
        let took = move |r: &Request| {
            if let Request::Write(_) = r {
                queued.fetch_sub(1, Ordering::AcqRel);
            }
        };
        let queued = writes_queued.clone();
        let linger_wake = Arc::new(LingerWake::default());
        let wake = linger_wake.clone();
        // A store error as the caller's. A disk failure is reported (the node stops) and named
        // by the first one: redb answers every later call "previous I/O error" only.
        let failed = move |e: &edgerep_store::StoreError| -> CommitError {
            if !e.is_disk_failure() {
                return CommitError::Store(e.to_string());
            }
            let mut first = String::new();
            let mut new = false;
            disk_failed.send_if_modified(|f| {
                new = f.is_none();
                first = f.get_or_insert_with(|| e.to_string()).clone();
                new
            });
            if new {
                CommitError::DiskFailed(first)
            } else {
                CommitError::DiskFailedEarlier(first)
            }
        };
        let mut have: Have = store.status()?.origins;
        let dead_letters = DeadLetterBudget::new(store.dead_letters_usage()?);
        let budget = dead_letters.clone();
        // After a commit that added (the dead letters of `kept`) or removed dead letters: the
        // count of what the store holds, from the store itself (this thread is its one writer).
        let settle = move |store: &StoreWriter, kept: Vec<DeadLetterPromise>| {
            let held = store.dead_letters_usage().inspect_err(|e| {
                tracing::warn!(error = %e, "reading the dead letters' count failed: counted as committed");
            });
            budget.settle(held.ok(), kept);
        };
        let local = store.node().clone();
        let (tx, mut rx) = mpsc::channel::<Request>(QUEUE_REQUESTS);
        let mut durable = Durable {
            unsynced: false,
            flush_wanted: Arc::new(AtomicBool::new(false)),
            sync_due: Arc::new(AtomicBool::new(false)),
            local_committed: have.get(&local).copied().unwrap_or(0),
            feed_committed: *feed.borrow(),
        };
        let own_synced = Arc::new(AtomicU64::new(durable.local_committed));
        let synced_seq = own_synced.clone();
        let clock_last_ms = Arc::new(AtomicU64::new(clock.last().physical_ms));
        let clock_seen = clock_last_ms.clone();
        if !policy.periodic.is_empty() {
            spawn_flusher(
                tx.downgrade(),
                linger_wake.clone(),
                durable.flush_wanted.clone(),
                durable.sync_due.clone(),
                policy.interval,
            );
        }
        let thread = thread::Builder::new()
            .name("edgerep-committer".into())
            .spawn(move || {
                let _on_panic = on_panic;
                let _ = wake.thread.set(thread::current());
                let mut group: Vec<Pending> = Vec::new();
                let mut writes: Vec<LocalWrite> = Vec::new();
                let mut counts: Vec<usize> = Vec::new();
                let mut held: Option<Request> = None;
                // Write requests the next group commit expects (see the linger below): the
                // last group's writers, likely to write again at once, and those that queued
                // while it committed (other writers).
                let mut expected: usize = 1;
                // How long the last group commit of local writes took (the linger's measure).
                let mut last_commit = LINGER_MIN;
                // After a commit: what is synced now, for the hook, and the feed's end for
                // watchers (only synced positions: a crash loses unsynced commits and numbers
                // new events from the last synced one again, so a watcher that saw them would
                // skip what comes there next).
                let synced = |durable: &mut Durable, have: &mut Have, sync: Sync| {
                    if sync == Sync::Immediate {
                        durable.unsynced = false;
                        durable.sync_due.store(false, Ordering::Release);
                        if durable.local_committed > 0 {
                            have.insert(local.clone(), durable.local_committed);
                        }
                        synced_seq.store(durable.local_committed, Ordering::Release);
                        feed.send_replace(durable.feed_committed);
                    } else {
                        durable.unsynced = true;
                        durable.flush_wanted.store(true, Ordering::Release);
                    }
                };
                while let Some(first) = held
                    .take()
                    .or_else(|| rx.blocking_recv().inspect(|r| took(r)))
                {
                    clock_seen.store(clock.last().physical_ms, Ordering::Relaxed);
                    let first = match first {
                        Request::Write(p) => p,
                        Request::Sync => {
                            // Due no more, whoever synced (an apply syncs everything).
                            durable.sync_due.store(false, Ordering::Release);
                            if durable.unsynced {
                                let started = std::time::Instant::now();
                                match store.sync() {
                                    Ok(()) => {
                                        metrics.sync(started.elapsed().as_secs_f64());
                                        synced(&mut durable, &mut have, Sync::Immediate);
                                        hook(&have);
                                    }
                                    Err(e) => {
                                        tracing::error!(error = %e, "syncing deferred commits failed");
                                        failed(&e);
                                        durable.flush_wanted.store(true, Ordering::Release);
                                    }
                                }
                            }
                            continue;
                        }
                        Request::Apply {
                            events,
                            seals,
                            certs,
                            dead_letters,
                            promise,
                            chain,
                            last,
                            reply,
                        } => {
                            if let Some(first) = chain.broken() {
                                drop(promise);
                                reply(Err(CommitError::Store(format!(
                                    "not applied, since the batch of the same peer before it failed: {first}"
                                ))));
                                continue;
                            }
                            let n = events.len();
                            // A peer's events are synced before they are acknowledged, whatever
                            // their collection's durability: the Ack tells the peer this node
                            // holds them (it may compact them), so a crash must not take them
                            // back. (`periodic` is about this node's own writes' latency.)
                            let sync = Sync::Immediate;
                            // Events kept out of the state (policy, a transform's drop)
                            // are not counted as applied.
                            let per_collection: Vec<(String, u64)> = count_by(
                                events
                                    .iter()
                                    .filter(|r| {
                                        !matches!(r.on_apply, edgerep_store::OnApply::Dropped)
                                    })
                                    .map(|r| r.event.collection.as_str()),
                            )
                            .into_iter()
                                    .map(|(c, k)| (c.to_owned(), k))
                                    .collect();
                            let started = std::time::Instant::now();
                            let applied = store.apply_sealed(
                                events,
                                &seals,
                                &certs,
                                &dead_letters,
                                sync,
                                &mut clock,
                                wall_ms(),
                            );
                            // Whatever failed, the batches queued behind this one are refused.
                            // The dead letters' places are settled before the peer's driver
                            // hears: a batch it prepares next finds them.
                            match &applied {
                                Ok(_) if promise.taken().count > 0 => settle(&store, vec![promise]),
                                Ok(_) => {}
                                Err(e) => {
                                    chain.break_with(&e.to_string());
                                    drop(promise);
                                }
                            }
                            match applied {
                                Ok(out) => {
                                    metrics.commit("apply", started.elapsed().as_secs_f64());
                                    metrics.skewed(
                                        out.skewed as u64,
                                        clock.max_skew_ms(),
                                        &out.skewed_by_origin,
                                    );
                                    for (c, k) in &per_collection {
                                        metrics.events(c, *k, false);
                                    }
                                    for (origin, &seq) in &out.held {
                                        // This node's own events, sent back by a peer after
                                        // a crash lost them here, are synced like local ones.
                                        if *origin == local {
                                            durable.local_committed =
                                                durable.local_committed.max(seq);
                                        } else {
                                            let held = have.entry(origin.clone()).or_insert(0);
                                            *held = (*held).max(seq);
                                        }
                                    }
                                    // An origin the store did not come to hold up to the
                                    // batch's last event (a fork left out) breaks the chain
                                    // like a failure.
                                    if let Some((origin, seq)) = last.iter().find(|(o, s)| {
                                        out.held.get(*o).is_none_or(|h| h < *s)
                                    }) {
                                        chain.break_with(&format!(
                                            "events of {origin} up to {seq} were left out (a fork)"
                                        ));
                                    }
                                    durable.feed_committed = out.feed_last;
                                    synced(&mut durable, &mut have, sync);
                                    hook(&have);
                                    reply(Ok(out));
                                }
                                Err(e @ edgerep_store::StoreError::Forged { .. }) => {
                                    reply(Err(CommitError::Forged(e.to_string())));
                                }
                                Err(e @ edgerep_store::StoreError::Revoked { .. }) => {
                                    tracing::warn!(error = %e, events = n, "a peer's batch admitted before a revocation was not applied (it is sent again and admitted under the new policy)");
                                    reply(Err(CommitError::Store(e.to_string())));
                                }
                                Err(e @ edgerep_store::StoreError::Gap { .. }) => {
                                    // Continues events not applied here: another peer's batch of
                                    // the origin, queued before it, failed or left them out. The
                                    // peer sends it again.
                                    tracing::info!(error = %e, events = n, "a peer's batch continues events not applied here (a batch before it failed or left them out); it is sent again");
                                    reply(Err(CommitError::Store(e.to_string())));
                                }
                                Err(e) => {
                                    tracing::error!(error = %e, events = n, "applying a batch from a peer failed");
                                    reply(Err(failed(&e)));
                                }
                            }
                            continue;
                        }
                        Request::Install {
                            versions,
                            proofs,
                            have: theirs,
                            seals,
                            certs,
                            reply,
                        } => {
                            // Like applied events: a timestamp too far ahead does not move the
                            // clock, and a page refused moves it not at all.
                            let mut observed = clock.clone();
                            for v in &versions {
                                let _ = observed.observe(v.hlc, wall_ms());
                            }
                            let result = store.install_sealed(
                                versions,
                                &proofs,
                                theirs.as_ref(),
                                &seals,
                                &certs,
                                Some(observed.last()),
                                Sync::Immediate,
                            );
                            if result.is_ok() {
                                clock = observed;
                            }
                            match result {
                                // A page that changed nothing was not committed: it synced
                                // nothing, and what it read may hold unsynced commits.
                                Ok(out) if !out.wrote => {
                                    hook(&have);
                                    reply(Ok(out));
                                }
                                Ok(out) => {
                                    for (origin, &seq) in &out.held {
                                        if *origin == local {
                                            // Its own events a restore lost, back in a
                                            // snapshot proven by its own seal.
                                            durable.local_committed =
                                                durable.local_committed.max(seq);
                                        } else {
                                            let held = have.entry(origin.clone()).or_insert(0);
                                            *held = (*held).max(seq);
                                        }
                                    }
                                    durable.feed_committed =
                                        durable.feed_committed.max(out.feed_last);
                                    synced(&mut durable, &mut have, Sync::Immediate);
                                    hook(&have);
                                    reply(Ok(out));
                                }
                                Err(e @ edgerep_store::StoreError::SnapshotRefused(_)) => {
                                    reply(Err(CommitError::Forged(e.to_string())));
                                }
                                Err(e) => {
                                    tracing::error!(error = %e, "merging a snapshot page from a peer failed");
                                    reply(Err(failed(&e)));
                                }
                            }
                            continue;
                        }
                        Request::Repair { repair, reply } => {
                            let started = std::time::Instant::now();
                            let reply = move |result| reply(result, started.elapsed());
                            let mut observed = clock.clone();
                            for v in &repair.versions {
                                let _ = observed.observe(v.hlc, wall_ms());
                            }
                            let result = store.repair_sealed(
                                repair.versions,
                                &repair.proofs,
                                &repair.seals,
                                &repair.certs,
                                &repair.resolutions,
                                &repair.peer,
                                &repair.transformed,
                                Some(observed.last()),
                                Sync::Immediate,
                            );
                            if result.is_ok() {
                                clock = observed;
                            }
                            match result {
                                Ok(out) => {
                                    durable.feed_committed =
                                        durable.feed_committed.max(out.feed_last);
                                    // A page or repair that changed nothing was not committed:
                                    // it synced nothing.
                                    if out.wrote {
                                        synced(&mut durable, &mut have, Sync::Immediate);
                                    }
                                    hook(&have);
                                    reply(Ok(out));
                                }
                                Err(e @ edgerep_store::StoreError::SnapshotRefused(_)) => {
                                    reply(Err(CommitError::Forged(e.to_string())));
                                }
                                Err(e) => {
                                    tracing::error!(error = %e, "merging a repair from a peer failed");
                                    reply(Err(failed(&e)));
                                }
                            }
                            continue;
                        }
                        Request::Compact {
                            floors,
                            sweep,
                            reply,
                        } => {
                            // Without a sync of its own: a compaction lost in a crash is redone
                            // (its floors are in the same transaction), so it rides on the next
                            // synced commit instead of adding one.
                            let result = store.compact_sweeping(
                                &floors,
                                COMPACT_MAX_REMOVE,
                                sweep,
                                Sync::Deferred,
                            );
                            if result.is_ok() {
                                synced(&mut durable, &mut have, Sync::Deferred);
                            }
                            reply(result.map_err(|e| failed(&e)));
                            continue;
                        }
                        Request::SyncNow { reply } => {
                            // Nothing deferred since the last sync: nothing to sync (a peer
                            // asking for snapshot pages must not buy an fsync each).
                            if !durable.unsynced {
                                let _ = reply.send(Ok(()));
                                continue;
                            }
                            let started = std::time::Instant::now();
                            let result = store.sync().map_err(|e| failed(&e));
                            if result.is_ok() {
                                metrics.sync(started.elapsed().as_secs_f64());
                                synced(&mut durable, &mut have, Sync::Immediate);
                                hook(&have);
                            }
                            let _ = reply.send(result);
                            continue;
                        }
                        Request::RecordOwnFork { seq } => {
                            if let Err(e) = store.record_own_fork(seq) {
                                tracing::error!("cannot record the fork of this node's own history: {e} (local writes stay refused until a restart)");
                                failed(&e);
                            }
                            continue;
                        }
                        Request::SavePeersHeard { heard, progress } => {
                            match store.save_peers_heard(&heard, &progress) {
                                Ok(()) => durable.unsynced = true,
                                Err(e) => {
                                    tracing::warn!("cannot save when peers were last heard from: {e}");
                                    failed(&e);
                                }
                            }
                            continue;
                        }
                        Request::SavePeerCursor { peer, have: theirs } => {
                            match store.save_peer_cursor(peer.as_str(), &theirs) {
                                // Not synced (a cursor is advice): the next sync takes it.
                                Ok(()) => durable.unsynced = true,
                                Err(e) => {
                                    tracing::warn!(peer = %peer, "cannot save the peer's cursor: {e}");
                                    failed(&e);
                                }
                            }
                            continue;
                        }
                        Request::RecordDeciders { record, reply } => {
                            let result = store.record_deciders(&record).map_err(|e| failed(&e));
                            let _ = reply.send(result);
                            continue;
                        }
                        Request::ClearMarks { done, reply } => {
                            let result = match store.recorded_deciders() {
                                Ok(Some(current)) => {
                                    match crate::deciders::clear_marks(&current, &done) {
                                        Some(record) => {
                                            store.record_deciders(&record).map_err(|e| failed(&e))
                                        }
                                        None => Err(CommitError::Store(
                                            "the record of what decides each collection cannot be read".into(),
                                        )),
                                    }
                                }
                                Ok(None) => Err(CommitError::Store(
                                    "the store holds no record of what decides each collection".into(),
                                )),
                                Err(e) => Err(failed(&e)),
                            };
                            let _ = reply.send(result);
                            continue;
                        }
                        Request::RecordLimits { limits, reply } => {
                            let result = store.record_limits(&limits).map_err(|e| failed(&e));
                            let _ = reply.send(result);
                            continue;
                        }
                        Request::RemoveDeadLetter { id, reply } => {
                            let result = store.remove_dead_letter(id).map_err(|e| failed(&e));
                            if result == Ok(true) {
                                settle(&store, Vec::new());
                            }
                            let _ = reply.send(result);
                            continue;
                        }
                        Request::ReResolve {
                            collection,
                            after,
                            reply,
                        } => {
                            let result = store
                                .re_resolve(&collection, after.as_deref(), RE_RESOLVE_ROWS)
                                .map_err(|e| failed(&e));
                            let _ = reply.send(result);
                            continue;
                        }
                    };
                    let replay = first.dead_letters.clone();
                    let alone = !replay.is_empty();
                    group.push(first);
                    let mut events: usize = group[0].writes.len();
                    // Linger: wait a little (at most half the last commit) until the expected
                    // requests are here, so many small writers share one commit. Expecting only
                    // the last group's would settle into two halves alternating, each client
                    // waiting a whole commit of the other half before its own.
                    let linger_until = std::time::Instant::now()
                        + (last_commit / 2).clamp(LINGER_MIN, LINGER_MAX);
                    while !alone && events < max_events {
                        match rx.try_recv().inspect(|r| took(r)) {
                            Ok(Request::Write(p)) if p.dead_letters.is_empty() => {
                                events += p.writes.len();
                                group.push(p);
                            }
                            Ok(other) => {
                                held = Some(other);
                                break;
                            }
                            Err(_) => {
                                let now = std::time::Instant::now();
                                if group.len() >= expected || now >= linger_until {
                                    break;
                                }
                                // Lingering is announced before the queue is looked at again:
                                // a request sent after that look finds the flag and unparks
                                // (an unpark before the park makes it return at once).
                                wake.lingering.store(true, Ordering::SeqCst);
                                std::sync::atomic::fence(Ordering::SeqCst);
                                if rx.is_empty() {
                                    thread::park_timeout(linger_until - now);
                                }
                                wake.lingering.store(false, Ordering::SeqCst);
                            }
                        }
                    }
                    writes.clear();
                    counts.clear();
                    for p in &mut group {
                        counts.push(p.writes.len());
                        writes.append(&mut p.writes);
                    }
                    // The group's receipts, their writes counted from the group's first.
                    let receipts_of = |group: &[Pending], counts: &[usize]| -> Vec<Receipt> {
                        let mut out = Vec::new();
                        let mut offset = 0;
                        for (p, &n) in group.iter().zip(counts) {
                            for r in &p.receipts {
                                let mut r = r.clone();
                                r.first += offset;
                                out.push(r);
                            }
                            offset += n;
                        }
                        out
                    };
                    // A write the store refuses (see `StoreWriter::commit_local_checked`) fails its own
                    // request; the rest of the group is committed without it.
                    loop {
                        let total = writes.len();
                        let set_aside: Vec<(u64, Vec<u8>)> =
                            group.iter().flat_map(|p| p.set_aside.records.iter().cloned()).collect();
                        // A dead letter is durable before its client hears of it, whatever
                        // the collection's sync policy; so is a key recorded with no writes
                        // (no collection to ask).
                        let keys_alone = group
                            .iter()
                            .zip(&counts)
                            .any(|(p, &n)| n == 0 && !p.receipts.is_empty());
                        let sync = if set_aside.is_empty()
                            && !writes.is_empty()
                            && !keys_alone
                            && !durable.sync_due.load(Ordering::Acquire)
                        {
                            policy.sync_for(writes.iter().map(|w| w.collection.as_str()))
                        } else {
                            edgerep_store::Sync::Immediate
                        };
                        let receipts = receipts_of(&group, &counts);
                        let per_collection: Vec<(String, u64)> =
                            count_by(writes.iter().map(|w| w.collection.as_str()))
                                .into_iter()
                                .map(|(c, k)| (c.to_owned(), k))
                                .collect();
                        let started = std::time::Instant::now();
                        let result = store.commit_local_setting_aside(
                            std::mem::take(&mut writes),
                            &replay,
                            &set_aside,
                            &receipts,
                            sync,
                            &mut clock,
                            wall_ms(),
                        );
                        // The clock as these writes left it, for the next request's checks.
                        clock_seen.store(clock.last().physical_ms, Ordering::Relaxed);
                        match result {
                            Ok(committed) => {
                                last_commit = started.elapsed();
                                metrics.commit("local", last_commit.as_secs_f64());
                                // Nothing of this group can be queued yet: it is not answered.
                                let waiting = queued.load(Ordering::Acquire).max(0) as usize;
                                expected = (group.len() + waiting).clamp(1, MAX_EXPECTED);
                                for (c, k) in &per_collection {
                                    metrics.events(c, *k, true);
                                }
                                if let Some(last) = committed.last() {
                                    durable.feed_committed = last.position;
                                    durable.local_committed = last.seq;
                                    synced(&mut durable, &mut have, sync);
                                    hook(&have);
                                }
                                // Every dead-letter id of the group is settled before anyone
                                // is answered: a writer listing at once sees all of them.
                                let kept: Vec<DeadLetterPromise> = group
                                    .iter_mut()
                                    .map(|p| std::mem::take(&mut p.promise))
                                    .filter(|p| p.taken().count > 0)
                                    .collect();
                                if !kept.is_empty() || !replay.is_empty() {
                                    settle(&store, kept);
                                }
                                for p in &mut group {
                                    drop(std::mem::take(&mut p.set_aside));
                                }
                                let mut rest = committed.as_slice();
                                for (p, &n) in group.drain(..).zip(&counts) {
                                    let (mine, tail) = rest.split_at(n.min(rest.len()));
                                    rest = tail;
                                    // A writer that gave up waiting is no reason to stop.
                                    p.answer(Ok(mine.to_vec()));
                                }
                                break;
                            }
                            Err(edgerep_store::LocalCommitError { error, writes: back })
                                if back.len() == total
                                    && matches!(
                                        error,
                                        edgerep_store::StoreError::WriteRefused { .. }
                                            | edgerep_store::StoreError::KeyInUse { .. }
                                    ) =>
                            {
                                // The request that fails: the one holding the refused write,
                                // or the one whose receipt names the key in use (a receipt may
                                // cover no write, so it is found by its own position).
                                let (culprit, failure) = match error {
                                    edgerep_store::StoreError::WriteRefused { index, reason } => {
                                        // A client can send such a write again and again.
                                        static LOG: crate::log_limit::Throttle =
                                            crate::log_limit::Throttle::new(crate::log_limit::EVERY);
                                        if let Some(left_out) = LOG.allow() {
                                            tracing::warn!(events = total, left_out, "a local write was refused: {reason} (lines like this one are written once per 10 s, `left_out` says how many were not; the client's answer says why)");
                                        }
                                        let mut start = 0;
                                        let at = counts.iter().position(|&n| {
                                            let holds = (start..start + n).contains(&index);
                                            start += n;
                                            holds
                                        });
                                        (at, CommitError::Refused(reason))
                                    }
                                    edgerep_store::StoreError::KeyInUse { receipt, key } => {
                                        let at = group
                                            .iter()
                                            .enumerate()
                                            .flat_map(|(i, p)| p.receipts.iter().map(move |_| i))
                                            .nth(receipt);
                                        (at, CommitError::KeyInUse(key))
                                    }
                                    _ => unreachable!("matched above"),
                                };
                                // No request to blame would retry the same group for ever:
                                // all of it fails instead.
                                let culprit = culprit.map_or(usize::MAX, |c| c);
                                let mut kept = Vec::with_capacity(back.len());
                                let mut kept_counts = Vec::with_capacity(counts.len());
                                let mut kept_group = Vec::with_capacity(group.len());
                                let mut back = back.into_iter();
                                for (i, (p, &n)) in group.drain(..).zip(&counts).enumerate() {
                                    let mine: Vec<LocalWrite> = back.by_ref().take(n).collect();
                                    if i == culprit || culprit == usize::MAX {
                                        p.answer(Err(failure.clone()));
                                    } else {
                                        kept.extend(mine);
                                        kept_counts.push(n);
                                        kept_group.push(p);
                                    }
                                }
                                group = kept_group;
                                counts = kept_counts;
                                writes = kept;
                                if group.is_empty() {
                                    break;
                                }
                            }
                            Err(e) => {
                                let e = e.error;
                                tracing::error!(error = %e, events = total, "group commit failed");
                                let err = match &e {
                                    edgerep_store::StoreError::NoSuchDeadLetter(id) => {
                                        CommitError::DeadLetterGone(*id)
                                    }
                                    // As the origin gate says it (a retry passes once the rest
                                    // of this node's history is back).
                                    e @ edgerep_store::StoreError::OwnNumbersTaken { .. } => {
                                        CommitError::Unconfirmed(e.to_string())
                                    }
                                    other => failed(other),
                                };
                                for p in group.drain(..) {
                                    let err = err.clone();
                                    p.answer(Err(err));
                                }
                                break;
                            }
                        }
                    }
                }
                if durable.unsynced {
                    match store.sync() {
                        Ok(()) => tracing::debug!("deferred commits synced at shutdown"),
                        Err(e) => {
                            // Acknowledged writes are lost: the node must not stop as if clean.
                            tracing::error!(error = %e, "syncing deferred commits at shutdown failed");
                            failed(&e);
                        }
                    }
                }
            })
            .expect("spawning the committer thread");
        Ok((
            Committer {
                queue: tx,
                writes_queued,
                dead_letters,
                linger_wake,
                own_synced,
                clock_last_ms,
                origin_gate,
            },
            thread,
        ))
    }

    /// The hybrid clock's last physical time (ms), as of the last group commit (or the request
    /// before the committer's current one): local writes are stamped at least this, however
    /// far the wall clock stepped back since.
    pub(crate) fn clock_last_ms(&self) -> u64 {
        self.clock_last_ms.load(Ordering::Relaxed)
    }

    /// This node's own highest event known durable. With `durability = "periodic"` a read may
    /// see later ones; a crash loses those and issues their sequence numbers again to other
    /// writes, so a context handed to a client names no more than this (see `get_key`).
    pub fn own_synced(&self) -> u64 {
        self.own_synced.load(Ordering::Acquire)
    }

    /// Commits `writes` as one unit and returns where each landed, once durable.
    pub async fn commit(&self, writes: Vec<LocalWrite>) -> Result<Vec<Committed>, CommitError> {
        self.commit_keyed(writes, Vec::new(), Vec::new()).await
    }

    /// Waits (at most [`ORIGIN_WAIT`]) until local writes may commit: with peers, once one
    /// said how far it holds this node's own events. Err([`CommitError::Unconfirmed`]) if not
    /// by then.
    pub async fn origin_confirmed(&self) -> Result<(), CommitError> {
        if self.origin_gate.borrow().is_some() {
            let mut gate = self.origin_gate.clone();
            let opened = tokio::time::timeout(ORIGIN_WAIT, gate.wait_for(Option::is_none)).await;
            if !matches!(opened, Ok(Ok(_))) {
                let reason = self.origin_gate.borrow().clone().unwrap_or_default();
                return Err(CommitError::Unconfirmed(reason));
            }
        }
        Ok(())
    }

    /// Commits `writes`, removes the `dead_letters` they replay (all there, or nothing is
    /// committed: [`CommitError::DeadLetterGone`]) and records `receipts` (idempotency keys,
    /// their writes counted from the first of `writes`) with them, in one transaction.
    pub async fn commit_keyed(
        &self,
        writes: Vec<LocalWrite>,
        dead_letters: Vec<u64>,
        receipts: Vec<Receipt>,
    ) -> Result<Vec<Committed>, CommitError> {
        self.commit_setting_aside(
            writes,
            dead_letters,
            Default::default(),
            Default::default(),
            receipts,
        )
        .await
    }

    /// [`Committer::commit_keyed`] that also keeps `set_aside` (the request's dead letters,
    /// ids reserved, places under the limit taken in `promise`) in the same transaction.
    pub async fn commit_setting_aside(
        &self,
        writes: Vec<LocalWrite>,
        dead_letters: Vec<u64>,
        set_aside: edgerep_store::SetAside,
        promise: DeadLetterPromise,
        receipts: Vec<Receipt>,
    ) -> Result<Vec<Committed>, CommitError> {
        debug_assert_eq!(
            promise.taken().count,
            set_aside.records.len() as u64,
            "a place per dead letter"
        );
        self.origin_confirmed().await?;
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Request::Write(Pending {
                writes,
                receipts,
                dead_letters,
                set_aside,
                promise,
                reply,
            }))
            .await
            .map_err(|_| CommitError::Closed)?;
        self.writes_queued.fetch_add(1, Ordering::AcqRel);
        self.linger_wake.wake();
        answer.await.map_err(|_| CommitError::Closed)?
    }

    /// Sends `request` and wakes the committer if it lingers: a request of any kind ends the
    /// linger at once (a replica's apply must not wait out a group of local writes).
    async fn send(&self, request: Request) -> Result<(), CommitError> {
        self.queue
            .send(request)
            .await
            .map_err(|_| CommitError::Closed)?;
        self.linger_wake.wake();
        Ok(())
    }

    /// [`Committer::send`] from a plain thread: blocks while the queue is full.
    fn send_blocking(&self, request: Request) -> Result<(), CommitError> {
        self.queue
            .blocking_send(request)
            .map_err(|_| CommitError::Closed)?;
        self.linger_wake.wake();
        Ok(())
    }

    /// Decides again every kept resolution of `collection` with the resolver as it is now
    /// (see `StoreWriter::re_resolve`), [`RE_RESOLVE_ROWS`] rows per transaction between the other
    /// requests; returns how many keys changed.
    pub async fn re_resolve(&self, collection: String) -> Result<u64, CommitError> {
        let mut after = None;
        let mut changed = 0;
        loop {
            let (reply, answer) = oneshot::channel();
            self.send(Request::ReResolve {
                collection: collection.clone(),
                after,
                reply,
            })
            .await?;
            let (n, next) = answer.await.map_err(|_| CommitError::Closed)??;
            changed += n;
            match next {
                Some(next) => after = Some(next),
                None => return Ok(changed),
            }
        }
    }

    /// Queues events received from a peer to be applied in one durable transaction (in the
    /// order queued), with the dead letters of transforms that failed on them (their places under
    /// the limit taken in `promise`); `reply` is called
    /// on the committer thread once it committed or failed (refused unapplied if `chain` broke
    /// before: see [`ApplyChain`]; `last` is, per origin, the last event of `events`). Blocks
    /// while the queue is full (call it from a plain thread, not an async task).
    #[allow(clippy::too_many_arguments)]
    pub fn apply(
        &self,
        events: Vec<Received>,
        seals: Vec<Seal>,
        certs: Vec<(NodeId, Vec<u8>)>,
        dead_letters: Vec<EventDeadLetter>,
        promise: DeadLetterPromise,
        chain: ApplyChain,
        last: Have,
        reply: ApplyReply,
    ) -> Result<(), CommitError> {
        debug_assert_eq!(
            promise.taken(),
            edgerep_store::DeadLetterUsage {
                count: dead_letters.len() as u64,
                bytes: dead_letters.iter().map(|d| d.record.len() as u64).sum(),
            },
            "a place per dead letter, of its bytes"
        );
        self.send_blocking(Request::Apply {
            events,
            seals,
            certs,
            dead_letters,
            promise,
            chain,
            last,
            reply,
        })
    }

    /// The node's dead letters, held and promised: take places under
    /// `limits.max_dead_letters` from it before handing dead letters to the committer.
    pub fn dead_letter_budget(&self) -> &DeadLetterBudget {
        &self.dead_letters
    }
}

impl Committer {
    /// Queues a page of a peer's state to be merged in one durable transaction (in order with
    /// the applies); `have` on the last page. Blocks while the queue is full.
    pub fn install(
        &self,
        versions: Vec<EncodedEvent>,
        proofs: Vec<Proof>,
        have: Option<Have>,
        seals: Vec<Seal>,
        certs: Vec<(NodeId, Vec<u8>)>,
        reply: InstallReply,
    ) -> Result<(), CommitError> {
        self.send_blocking(Request::Install {
            versions,
            proofs,
            have,
            seals,
            certs,
            reply,
        })
    }

    /// Queues a merge of versions a peer sent in anti-entropy repair.
    pub fn repair(&self, repair: Repair, reply: RepairReply) -> Result<(), CommitError> {
        self.send_blocking(Request::Repair { repair, reply })
    }

    /// Syncs everything committed so far; returns once it is on disk. Blocks (call it from a
    /// plain thread, not an async task).
    pub fn sync_blocking(&self) -> Result<(), CommitError> {
        let (reply, answer) = oneshot::channel();
        self.send_blocking(Request::SyncNow { reply })?;
        answer.blocking_recv().map_err(|_| CommitError::Closed)?
    }

    /// Queues saving what `peer` acknowledged holding (not synced: a cursor is advice, never
    /// what a session resumes from). Blocks while the queue is full.
    pub fn save_peer_cursor(&self, peer: NodeId, have: Have) -> Result<(), CommitError> {
        self.send_blocking(Request::SavePeerCursor { peer, have })
    }

    /// Queues saving when each peer of `heard` was last heard from, or since when it is awaited,
    /// and when each peer of `progress` last acknowledged more (wall clock, ms; not synced).
    /// Blocks while the queue is full.
    pub fn save_peers_heard(
        &self,
        heard: BTreeMap<NodeId, edgerep_store::Heard>,
        progress: BTreeMap<NodeId, u64>,
    ) -> Result<(), CommitError> {
        self.send_blocking(Request::SavePeersHeard { heard, progress })
    }

    /// Queues recording, durably, that another history of this node's own events was proven
    /// at `seq`: a restart keeps refusing local writes (see `StoreWriter::record_own_fork`).
    /// Blocks while the queue is full.
    pub fn record_own_fork(&self, seq: u64) -> Result<(), CommitError> {
        self.send_blocking(Request::RecordOwnFork { seq })
    }

    /// Saves the record of what decides each collection (see [`crate::deciders`]).
    pub async fn record_deciders(&self, record: String) -> Result<(), CommitError> {
        let (reply, answer) = oneshot::channel();
        self.send(Request::RecordDeciders { record, reply }).await?;
        answer.await.map_err(|_| CommitError::Closed)?
    }

    /// Clears the re-resolve marks of `done` in the record of what decides each collection.
    pub async fn clear_marks(&self, done: Vec<(String, usize)>) -> Result<(), CommitError> {
        let (reply, answer) = oneshot::channel();
        self.send(Request::ClearMarks { done, reply }).await?;
        answer.await.map_err(|_| CommitError::Closed)?
    }

    /// Records limits the store is about to be written under, durably (a reload raising them).
    pub async fn record_limits(
        &self,
        limits: edgerep_wire::event::EventLimits,
    ) -> Result<(), CommitError> {
        let (reply, answer) = oneshot::channel();
        self.send(Request::RecordLimits { limits, reply }).await?;
        answer.await.map_err(|_| CommitError::Closed)?
    }

    /// Removes dead letter `id` without replaying it; whether it was there.
    pub async fn remove_dead_letter(&self, id: u64) -> Result<bool, CommitError> {
        let (reply, answer) = oneshot::channel();
        self.send(Request::RemoveDeadLetter { id, reply }).await?;
        answer.await.map_err(|_| CommitError::Closed)?
    }

    /// Queues a compaction of the changelog up to `floors` (at most [`COMPACT_MAX_REMOVE`]
    /// entries per call), with `sweep` also of superseded kept proofs (see
    /// `StoreWriter::compact_sweeping`: once per retention interval). Blocks while the queue is
    /// full.
    pub fn compact(
        &self,
        floors: Have,
        sweep: bool,
        reply: CompactReply,
    ) -> Result<(), CommitError> {
        self.send_blocking(Request::Compact {
            floors,
            sweep,
            reply,
        })
    }
}

/// What a peer sent in anti-entropy repair (see `edgerep_store::StoreWriter::repair_sealed`).
pub struct Repair {
    /// The peer.
    pub peer: NodeId,
    /// Its versions of keys that differed.
    pub versions: Vec<EncodedEvent>,
    /// Per version, what proves it.
    pub proofs: Vec<Proof>,
    /// The seals the proofs name.
    pub seals: Vec<Seal>,
    /// Certificates of the origins the seals name.
    pub certs: Vec<(NodeId, Vec<u8>)>,
    /// How the peer resolved the keys with concurrent versions.
    pub resolutions: Vec<edgerep_wire::aae::KeyResolution>,
    /// What this node's transforms on apply made of versions of collections that have them.
    pub transformed: BTreeMap<(String, u64), edgerep_store::OnApply>,
}

/// Asks the committer to sync deferred commits every `interval` while there are some; ends
/// when the committer's last handle is dropped.
/// How many of `names` are each name (in first-seen order; few distinct names per commit).
fn count_by<'a>(names: impl Iterator<Item = &'a str>) -> Vec<(&'a str, u64)> {
    let mut out: Vec<(&str, u64)> = Vec::new();
    for n in names {
        match out.iter_mut().find(|(m, _)| *m == n) {
            Some((_, k)) => *k += 1,
            None => out.push((n, 1)),
        }
    }
    out
}

fn spawn_flusher(
    queue: mpsc::WeakSender<Request>,
    linger_wake: Arc<LingerWake>,
    wanted: Arc<AtomicBool>,
    due: Arc<AtomicBool>,
    interval: Duration,
) {
    thread::Builder::new()
        .name("edgerep-flusher".into())
        .spawn(move || {
            loop {
                thread::sleep(interval);
                let Some(queue) = queue.upgrade() else {
                    return;
                };
                if wanted.swap(false, Ordering::AcqRel) {
                    // The next group commit syncs; the request syncs if none comes first.
                    due.store(true, Ordering::Release);
                    if queue.blocking_send(Request::Sync).is_err() {
                        return;
                    }
                    linger_wake.wake();
                }
            }
        })
        .expect("spawning the flusher thread");
}
