//! Anti-entropy in the replicator: sessions of range-based reconciliation with each peer
//! (`edgerep_replica::reconcile`) over the store's index (`edgerep_store::aae`), and repair of
//! the keys that differ (versions proven their origins', merged by the committer).
//!
//! Invariants:
//! - Of a pair of peers, the one with the lower id starts the periodic sessions; either starts
//!   one on demand. One session of ours per peer at a time; answering a peer's session keeps
//!   no state.
//! - What repair merges is checked like a snapshot page (every version proven by its origin's
//!   seal); a peer that sends an unproven version is cut off like a forger.
//! - A repaired version this node's have already covered is drift (it should have been here);
//!   one beyond it was still in flight, and only counted as repaired.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use edgerep_replica::Message;
use edgerep_replica::reconcile::{self, Tree};
use edgerep_store::Installed;
use edgerep_wire::NodeId;
use edgerep_wire::aae::Node;
use serde::Serialize;
use tokio::sync::oneshot;

use super::trust::hex;
use super::{CommitHookSender, Input, Replicator, SEND_QUEUE_MAX_BYTES, wall_ms};
use crate::committer::CommitError;

/// A session of ours that gets no answer for this long ends, reported as timed out; plus a
/// second per [`SLOW_LINK_BYTES_PER_S`] it sent and was queued to the peer ahead of it when it
/// started (a 4 MiB repair, or its first message behind a backlog of events, takes minutes to
/// leave on a slow link). Only what this node sends extends it: traffic from the peer, which a
/// peer dropping our messages could keep up, does not.
pub(super) const SESSION_TIMEOUT: Duration = Duration::from_secs(30);
/// The slowest link a session's answers are waited for at (see [`SESSION_TIMEOUT`]).
const SLOW_LINK_BYTES_PER_S: u64 = 32 << 10;
/// A session ends, timed out, this long after it started whatever it sent.
const SESSION_MAX: Duration = Duration::from_secs(300);
/// A periodic session waits until the peer sent no events for this long (and acknowledged
/// everything this node holds): differences while events are in flight are replication's.
const QUIET: Duration = Duration::from_secs(1);
/// Most keys one repair message carries versions of (the rest are found by later sessions).
const REPAIR_KEYS: usize = 4096;
/// Most round trips one session of ours makes: an honest comparison descends one level of the
/// tree (five levels) a round trip.
pub(super) const MAX_ROUND_TRIPS: u64 = 32;
/// Most bytes of state rows, proofs and resolutions one repair answer carries (a frame holds
/// at most 8 MiB; the keys it wants, seals and certificates go with them).
const REPAIR_BYTES: usize = 4 << 20;
/// Most bytes of the keys one repair message names as wanted.
const REPAIR_WANT_BYTES: usize = 1 << 20;
/// Most versions one repair answer carries: what a peer decodes in one message
/// (`MessageLimits::max_events_per_batch`, the same on every node).
const REPAIR_VERSIONS: usize = 4096;
/// About the most time reading one repair answer takes on the replicator thread (proving a
/// version reads its whole block: a peer wanting keys in 4,096 blocks asks for that many
/// block reads); the keys beyond wait for a later session.
const REPAIR_READ_TIME: Duration = Duration::from_millis(200);
/// Most repairs of one peer's queued at the committer at once; more are not merged (an honest
/// session sends one a round; the keys are found again by a later session).
const REPAIRS_IN_FLIGHT: usize = 4;

/// The most time transforms on apply may take over one repair's versions (they run on the
/// replicator thread, which every peer's replication waits for): past it, the rest of the
/// repair's versions of such collections are left out, for a later session to repair.
const REPAIR_SHAPE_BUDGET: Duration = Duration::from_secs(1);
/// A periodic session runs even while replication is busy once none ran for this many
/// intervals.
const BUSY_LIMIT: u32 = 5;

/// Per peer, what `status` shows of anti-entropy.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct AntiEntropyStatus {
    /// When the last session with this peer ended, or (one of the peer's) began (ms since the
    /// Unix epoch).
    pub last_at_ms: Option<u64>,
    /// Whether that session found the two states equal (one of the peer's: at its start).
    pub agreed: Option<bool>,
    /// When a session last ended, or one of the peer's began, in agreement.
    pub last_agreed_at_ms: Option<u64>,
    /// Sessions of ours with this peer since the node started.
    pub sessions_total: u64,
    /// Reconcile and repair messages exchanged (both ways, either side's sessions).
    pub messages_total: u64,
    /// Bytes of those messages this node sent.
    pub bytes_sent_total: u64,
    /// Bytes of those messages this node received.
    pub bytes_received_total: u64,
    /// Entries compared key by key here.
    pub keys_compared_total: u64,
    /// Keys found different here (either side lacked them or held other versions).
    pub differing_total: u64,
    /// Versions merged from this peer that changed a key.
    pub repaired_in_total: u64,
    /// Versions sent to this peer for keys that differed.
    pub repaired_out_total: u64,
    /// Of `repaired_in_total`, versions this node's have already covered: drift (it held
    /// them by its bookkeeping, but its state did not).
    pub drift_total: u64,
    /// Versions (or keys) held here damaged and replaced by the peer's.
    pub replaced_total: u64,
    /// Versions of this node's that it could not prove (damaged here), left out of repair.
    pub unproven_total: u64,
    /// Keys this node resolved differently from this peer over the same versions (now the
    /// last-writer-wins default; recorded in `GET /v1/disagreements`).
    pub disagreements_total: u64,
    /// Keys whose resolver plugin had failed here (last-writer-wins stood in) and, run again
    /// when this peer's resolution differed, decided.
    pub resolved_again_total: u64,
    /// Anti-entropy messages not sent because the peer's queue of unsent frames was full, and
    /// the peer's repairs not merged because too many of its were merging already, and its
    /// Reconcile messages not answered (its queue full, or past its budget of listings).
    pub dropped_total: u64,
    /// The same counts per collection (collections where anything differed).
    pub collections: BTreeMap<String, CollectionDrift>,
}

/// Per collection, what anti-entropy with one peer found and repaired.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct CollectionDrift {
    /// Keys found different here.
    pub differing_total: u64,
    /// Versions merged from the peer that changed a key.
    pub repaired_in_total: u64,
    /// Versions sent to the peer.
    pub repaired_out_total: u64,
    /// Of `repaired_in_total`, versions this node's have already covered.
    pub drift_total: u64,
    /// Keys settled on the default after a disagreement.
    pub disagreements_total: u64,
    /// Keys whose failed resolver plugin decided when run again.
    pub resolved_again_total: u64,
}

/// The collection of a state key (`collection 0x00 key`).
fn collection_of(state_key: &[u8]) -> String {
    let end = state_key
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(state_key.len());
    String::from_utf8_lossy(&state_key[..end]).into_owned()
}

impl AntiEntropyStatus {
    /// The counts of `collection`: under its own name for the first
    /// [`crate::metrics::MAX_COLLECTION_LABELS`] met, the rest together (the names come from
    /// peers: keys a peer lists name collections nobody declared).
    fn collection(&mut self, collection: String) -> &mut CollectionDrift {
        let name = if self.collections.contains_key(&collection)
            || self.collections.len() < crate::metrics::MAX_COLLECTION_LABELS
        {
            collection
        } else {
            crate::metrics::OTHER_COLLECTIONS.to_owned()
        };
        self.collections.entry(name).or_default()
    }
}

/// What a caller of `edgerep reconcile` gets: the sessions' reports, or why none ran.
pub type Reconciled = Result<Vec<SessionReport>, NotReconciled>;

/// Why anti-entropy asked for on demand compared nothing.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NotReconciled {
    /// The peer (or every peer) is not connected, or its handshake has not ended.
    #[error("{0}")]
    NotConnected(String),
    /// Something under way holds it back (the store's check at open); try again.
    #[error("{0}")]
    Busy(String),
    /// This node could not start a session (names what failed).
    #[error("{0}")]
    Failed(String),
}

/// One finished session of ours, as `edgerep reconcile` prints it.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct SessionReport {
    /// The peer.
    pub peer: String,
    /// Whether the two states were equal (nothing differed).
    pub agreed: bool,
    /// Whether the session ended for want of an answer.
    pub timed_out: bool,
    /// Whether it was still running when the answer to `edgerep reconcile` was due (see
    /// `Replication::reconcile`): the report so far; the session goes on, and status shows its
    /// end.
    pub running: bool,
    /// Whether it was given up: after [`MAX_ROUND_TRIPS`] round trips (the peer kept naming
    /// differing ranges), or when the peer named ranges after the comparison had ended.
    pub gave_up: bool,
    /// Messages sent and received.
    pub messages: u64,
    /// Round trips: Reconcile messages this node sent.
    pub round_trips: u64,
    /// Bytes sent.
    pub bytes_sent: u64,
    /// Bytes received.
    pub bytes_received: u64,
    /// Entries compared key by key here.
    pub keys_compared: u64,
    /// Keys found different here.
    pub differing: u64,
    /// Versions merged from the peer that changed a key.
    pub repaired_in: u64,
    /// Versions sent to the peer.
    pub repaired_out: u64,
    /// Of `repaired_in`, drift.
    pub drift: u64,
    /// Damaged versions or keys replaced.
    pub replaced: u64,
    /// Keys resolved differently here and on the peer over the same versions.
    pub disagreements: u64,
    /// Keys whose resolver plugin had failed here and decided when run again.
    pub resolved_again: u64,
    /// How long the session took.
    pub millis: u64,
}

struct Session {
    id: u64,
    started: Instant,
    /// Bytes queued to the peer when the session started (see [`SESSION_TIMEOUT`]).
    queued_ahead: u64,
    last_heard: Instant,
    report: SessionReport,
    /// The ping-pong of ranges is over.
    compared: bool,
    /// Repairs not done yet: versions asked of the peer, and merges in the committer.
    pending: u32,
    /// Repairs carrying versions the peer may still send in this session: one per Reconcile
    /// with ranges and per Repair naming keys that this node sent (each may be answered with
    /// versions). One more is a peer making this node shape and merge at will: the session is
    /// given up.
    repairs_allowed: u64,
}

/// A caller of `edgerep reconcile` waiting for sessions to end.
struct Waiter {
    /// When it gets its answer whatever is still running: then the reports of the sessions
    /// that ended and, of the others, their reports so far (a slow peer, or one keeping its
    /// session alive, must not hide what the other sessions found).
    due: Instant,
    peers: BTreeSet<NodeId>,
    reports: Vec<SessionReport>,
    reply: oneshot::Sender<Reconciled>,
}

/// The replicator's anti-entropy state.
pub(super) struct AntiEntropy {
    interval: Option<Duration>,
    next_at: BTreeMap<NodeId, Instant>,
    sessions: BTreeMap<NodeId, Session>,
    next_id: u64,
    pub(super) status: BTreeMap<NodeId, AntiEntropyStatus>,
    waiters: Vec<Waiter>,
    /// Per peer, a small deterministic jitter source.
    jitter: u64,
    /// Per peer, when it last sent events.
    events_at: BTreeMap<NodeId, Instant>,
    /// When this node's have last moved (a write here or an apply).
    changed_at: Option<Instant>,
    /// Per peer, when a session of ours last started.
    started_at: BTreeMap<NodeId, Instant>,
    /// When the replicator started: what a peer never compared with counts from.
    since: Instant,
    /// Per peer, the id of its last session this node answered: a message under a new id
    /// opens one (the whole state compared, whatever ranges it names).
    answered: BTreeMap<NodeId, u64>,
    /// On-demand requests that came while the store's check at open ran (its sums are not
    /// whole until it ends): started at the first tick after it.
    deferred: Vec<(Option<NodeId>, Instant, oneshot::Sender<Reconciled>)>,
    /// Peers to compare with after a snapshot raised this node's floors, and when: once this
    /// node's Acks told them its new have (a peer repairs only what this node acknowledged).
    after_snapshot: BTreeMap<NodeId, Instant>,
    /// Per peer, its repairs queued at the committer and not yet merged (at most
    /// [`REPAIRS_IN_FLIGHT`]: each is a durable transaction every other write waits behind).
    merging: BTreeMap<NodeId, usize>,
    /// Per peer, its budget of Reconcile answers that list entries (each reads the whole
    /// state table): tokens left and when last refilled.
    listing_budget: BTreeMap<NodeId, (f64, Instant)>,
    /// Per peer, the seconds of this thread its messages may still take (see [`WORK_SHARE`])
    /// and when last refilled.
    work_budget: BTreeMap<NodeId, (f64, Instant)>,
}

/// Reconcile answers that list entries a peer may ask for at once, and per second after: an
/// honest session lists at its leaves, a few times (a whole session's round trips fit in the
/// burst); a peer asking in a loop would keep the replicator reading the state.
const LISTINGS_BURST: f64 = MAX_ROUND_TRIPS as f64;
const LISTINGS_PER_SECOND: f64 = 8.0;

/// The share of the replicator thread one peer's anti-entropy messages may take: what answering
/// them took (reading the state, hashing rows, reading blocks for proofs) is charged to a
/// budget refilled at this many seconds per second, up to [`WORK_BURST`] seconds; a message
/// that makes work while the budget is spent is dropped (its session times out and a later one
/// compares again). Counting listings alone would let a peer keep the thread reading a large
/// state all the time: one listing of millions of rows takes longer than its token.
const WORK_SHARE: f64 = 0.25;
const WORK_BURST: f64 = 10.0;

/// `peer`'s budget in `budgets` (what is left, and when), refilled at `rate` per second up
/// to `burst` (a new peer starts full); returns what is left now.
pub(super) fn refilled<'b>(
    budgets: &'b mut BTreeMap<NodeId, (f64, Instant)>,
    peer: &NodeId,
    rate: f64,
    burst: f64,
) -> &'b mut f64 {
    let now = Instant::now();
    let (left, at) = budgets.entry(peer.clone()).or_insert((burst, now));
    *left = (*left + now.duration_since(*at).as_secs_f64() * rate).min(burst);
    *at = now;
    left
}

impl AntiEntropy {
    /// Takes one listing from `peer`'s budget; false when none is left.
    fn take_listing(&mut self, peer: &NodeId) -> bool {
        let tokens = refilled(
            &mut self.listing_budget,
            peer,
            LISTINGS_PER_SECOND,
            LISTINGS_BURST,
        );
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether `peer` has time of this thread left (see [`WORK_SHARE`]).
    fn work_left(&mut self, peer: &NodeId) -> bool {
        *refilled(&mut self.work_budget, peer, WORK_SHARE, WORK_BURST) > 0.0
    }

    /// Charges `spent` to `peer`'s budget.
    fn charge_work(&mut self, peer: &NodeId, spent: Duration) {
        if let Some((seconds, _)) = self.work_budget.get_mut(peer) {
            *seconds -= spent.as_secs_f64();
        }
    }

    pub(super) fn new(interval_ms: u64, seed: u64) -> AntiEntropy {
        AntiEntropy {
            interval: (interval_ms > 0).then(|| Duration::from_millis(interval_ms)),
            next_at: BTreeMap::new(),
            sessions: BTreeMap::new(),
            next_id: seed.max(1),
            status: BTreeMap::new(),
            waiters: Vec::new(),
            jitter: seed | 1,
            events_at: BTreeMap::new(),
            changed_at: None,
            listing_budget: BTreeMap::new(),
            work_budget: BTreeMap::new(),
            started_at: BTreeMap::new(),
            since: Instant::now(),
            answered: BTreeMap::new(),
            deferred: Vec::new(),
            after_snapshot: BTreeMap::new(),
            merging: BTreeMap::new(),
        }
    }

    /// This node's have just moved.
    pub(super) fn changed_here(&mut self) {
        self.changed_at = Some(Instant::now());
    }

    /// `peer` sent events just now.
    pub(super) fn heard_events(&mut self, peer: &NodeId) {
        self.events_at.insert(peer.clone(), Instant::now());
    }

    /// The interval plus up to a quarter of it, varied per call.
    fn jittered(&mut self, interval: Duration) -> Duration {
        // xorshift: no randomness source needed, and varied enough to spread sessions.
        self.jitter ^= self.jitter << 13;
        self.jitter ^= self.jitter >> 7;
        self.jitter ^= self.jitter << 17;
        let quarter = interval.as_millis() as u64 / 4;
        interval + Duration::from_millis(self.jitter % quarter.max(1))
    }
}

/// The empty Repair that tells the owner of session `id` its versions are merged.
fn merged_word(id: u64) -> Message {
    Message::Repair {
        id,
        versions: Vec::new(),
        proofs: Vec::new(),
        seals: Vec::new(),
        certs: Vec::new(),
        want: Vec::new(),
        resolutions: Vec::new(),
    }
}

/// The store's anti-entropy index as reconciliation reads it.
pub(super) struct StoreTree<'a>(pub(super) &'a edgerep_store::Store);

impl Tree for StoreTree<'_> {
    fn fingerprint(&self, node: Node) -> Result<([u8; 16], u64), edgerep_replica::LogError> {
        // Not waited for: the replicator must not stall while the store's check at open runs
        // (the peer's session times out and a later one compares).
        if !self.0.aae_ready() {
            return Err(edgerep_replica::LogError::Storage {
                reason: "the store's check at open is still running".into(),
            });
        }
        let f = self
            .0
            .aae_fingerprint(node)
            .map_err(|e| edgerep_replica::LogError::Storage {
                reason: e.to_string(),
            })?;
        Ok((f.short(), f.count))
    }

    fn items_of(
        &self,
        nodes: &[Node],
    ) -> Result<Vec<Vec<reconcile::Entry>>, edgerep_replica::LogError> {
        let lists = self
            .0
            .aae_items_of(nodes)
            .map_err(|e| edgerep_replica::LogError::Storage {
                reason: e.to_string(),
            })?;
        Ok(lists
            .into_iter()
            .map(|items| {
                items
                    .into_iter()
                    .map(|i| {
                        let mut h = [0u8; 16];
                        h.copy_from_slice(&i.hash[..16]);
                        (i.state_key, h)
                    })
                    .collect()
            })
            .collect())
    }
}

impl CommitHookSender {
    /// Reports the outcome of merging versions a peer sent in repair.
    pub(super) fn repaired(
        &self,
        peer: NodeId,
        id: u64,
        result: Result<Installed, CommitError>,
        took: Duration,
    ) {
        let _ = self.0.send(Input::Repaired {
            peer,
            id,
            result,
            took,
        });
    }
}

impl Replicator {
    /// Sends `message` to `peer`; returns its size (0 when the peer is not connected).
    /// Whether `peer`'s frames pile up unsent (it reads slowly, or not at all while it keeps
    /// asking): it gets no more anti-entropy messages until they drain (counted as dropped), and
    /// its session times out and a later one compares again. Events stop at the same bound.
    fn aae_backed_up(&mut self, peer: &NodeId) -> bool {
        let backed_up = self.conns.get(peer).is_some_and(|live| {
            live.queued.load(std::sync::atomic::Ordering::Acquire) > SEND_QUEUE_MAX_BYTES
        });
        if backed_up {
            self.anti_entropy
                .status
                .entry(peer.clone())
                .or_default()
                .dropped_total += 1;
        }
        backed_up
    }

    fn aae_send(&mut self, peer: &NodeId, message: Message) -> u64 {
        // On a connection this node's Hello has not gone out on yet (the word that a repair of
        // the last connection's merged, say), the peer would refuse the message and close the
        // connection: it is not sent (the peer's session times out, as for a lost message).
        if self.aae_backed_up(peer) || !self.core.hello_sent(peer) {
            return 0;
        }
        let Some(live) = self.conns.get(peer) else {
            return 0;
        };
        let frame = message.encode();
        let n = frame.len();
        live.queued
            .fetch_add(n, std::sync::atomic::Ordering::AcqRel);
        if live.frames.send(frame).is_err() {
            return 0;
        }
        let s = self.anti_entropy.status.entry(peer.clone()).or_default();
        s.messages_total += 1;
        s.bytes_sent_total += n as u64;
        if let Some(session) = self.anti_entropy.sessions.get_mut(peer) {
            session.report.messages += 1;
            session.report.bytes_sent += n as u64;
        }
        n as u64
    }

    /// A snapshot of `from` raised this node's floors: each version it carried was proven its
    /// origin's, but that none was left out is the sender's word (the floors it named are
    /// too). Every other peer is compared with soon (see [`Replicator::aae_soon`]), so
    /// versions a lying sender left out are found and repaired from the others within seconds
    /// of any of them being there.
    pub(super) fn aae_after_snapshot(&mut self, from: &NodeId) {
        self.aae_soon(
            Some(from),
            &format!("a snapshot from {from} raised this node's floors"),
        );
    }

    /// Compares with every peer (but `except`) soon, not at the next interval (and even with
    /// periodic comparisons off): a ready one after [`QUIET`], one not connected now as soon as
    /// it is ready. `why` is logged.
    pub(super) fn aae_soon(&mut self, except: Option<&NodeId>, why: &str) {
        let at = Instant::now() + QUIET;
        let others: Vec<NodeId> = self
            .peers
            .iter()
            .map(|(p, _)| p)
            .filter(|p| Some(*p) != except)
            .cloned()
            .collect();
        for peer in others {
            // The first due time stands: a sender raising floors again and again must not
            // postpone the comparison.
            if let std::collections::btree_map::Entry::Vacant(e) =
                self.anti_entropy.after_snapshot.entry(peer)
            {
                tracing::info!(peer = %e.key(), "comparing with it in {} ms, or once it is connected: {why}", QUIET.as_millis());
                e.insert(at);
            }
        }
    }

    /// Starts periodic sessions that are due, ends sessions that timed out.
    pub(super) fn aae_tick(&mut self) {
        if !self.store.aae_ready() {
            // Callers whose answer is due while the check at open runs are told so.
            let now = Instant::now();
            let (due, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.anti_entropy.deferred)
                .into_iter()
                .partition(|(_, at, _)| *at <= now);
            self.anti_entropy.deferred = waiting;
            for (_, _, reply) in due {
                let _ = reply.send(Err(NotReconciled::Busy(
                    "the store's check at open is still running; nothing was compared (try again once it ends)".into(),
                )));
            }
            return;
        }
        for (peer, due, reply) in std::mem::take(&mut self.anti_entropy.deferred) {
            self.aae_on_demand(peer, due, reply);
        }
        let now = Instant::now();
        self.aae_answer_due(now);
        // (A peer a reload removed is compared with no more.)
        let peers = &self.peers;
        self.anti_entropy
            .after_snapshot
            .retain(|p, _| peers.iter().any(|(id, _)| id == p));
        let due: Vec<NodeId> = self
            .anti_entropy
            .after_snapshot
            .iter()
            .filter(|&(_, &at)| at <= now)
            .map(|(p, _)| p.clone())
            .collect();
        for peer in due {
            // A session with the peer under way: the comparison waits for its end (and one
            // that cannot start yet, for the next tick).
            if !self.anti_entropy.sessions.contains_key(&peer) && self.aae_start(&peer) {
                self.anti_entropy.after_snapshot.remove(&peer);
            }
        }
        if let Some(interval) = self.anti_entropy.interval {
            let local = self.core.local().clone();
            let due: Vec<NodeId> = self
                .conns
                .keys()
                .filter(|p| local < **p && self.core.is_ready(p) && self.core.hello_sent(p))
                .filter(|p| !self.anti_entropy.sessions.contains_key(*p))
                .filter(|p| self.aae_quiet(p))
                .cloned()
                .collect();
            for peer in due {
                match self.anti_entropy.next_at.get(&peer) {
                    Some(&at) if at > now => {}
                    Some(_) => {
                        let next = self.anti_entropy.jittered(interval);
                        self.anti_entropy.next_at.insert(peer.clone(), now + next);
                        self.aae_start(&peer);
                    }
                    None => {
                        // The first session a while after connecting: ordinary replication
                        // catches up first.
                        let next = self.anti_entropy.jittered(interval);
                        self.anti_entropy.next_at.insert(peer, now + next);
                    }
                }
            }
        }
        let stale: Vec<NodeId> = self
            .anti_entropy
            .sessions
            .iter()
            .filter(|(_, s)| {
                let sending = Duration::from_secs(
                    (s.report.bytes_sent + s.queued_ahead) / SLOW_LINK_BYTES_PER_S,
                );
                s.last_heard.elapsed() > SESSION_TIMEOUT + sending
                    || s.started.elapsed() > SESSION_MAX
            })
            .map(|(p, _)| p.clone())
            .collect();
        for peer in stale {
            if let Some(s) = self.anti_entropy.sessions.get_mut(&peer) {
                s.report.timed_out = true;
            }
            self.aae_finish(&peer);
        }
    }

    /// Whether replication with `peer` is idle: it acknowledged everything this node holds,
    /// and neither it nor this node wrote anything for a while. Periodic sessions wait for
    /// that (on-demand ones do not), unless none ran for [`BUSY_LIMIT`] intervals (counted from
    /// the replicator's start for a peer never compared with: a node busy from its start was
    /// never compared at all): a node that is never idle is still compared (what is in flight
    /// is kept out of repair).
    fn aae_quiet(&self, peer: &NodeId) -> bool {
        let overdue = self.anti_entropy.interval.is_some_and(|i| {
            let last = self.anti_entropy.started_at.get(peer);
            last.unwrap_or(&self.anti_entropy.since).elapsed() >= i * BUSY_LIMIT
        });
        let acked = self.acked.get(peer);
        let caught_up =
            self.core.local_have().iter().all(|(o, &s)| {
                o == peer || acked.and_then(|a| a.get(o)).copied().unwrap_or(0) >= s
            });
        let still = |at: Option<&Instant>| at.is_none_or(|at| at.elapsed() >= QUIET);
        overdue
            || (caught_up
                && still(self.anti_entropy.events_at.get(peer))
                && still(self.anti_entropy.changed_at.as_ref()))
    }

    /// Starts a session of ours with `peer` now (if it is connected and none is under way).
    pub(super) fn aae_start(&mut self, peer: &NodeId) -> bool {
        self.aae_start_or_why(peer).is_ok()
    }

    /// [`Replicator::aae_start`], saying why no session started.
    fn aae_start_or_why(&mut self, peer: &NodeId) -> Result<(), NotReconciled> {
        if self.anti_entropy.sessions.contains_key(peer) {
            return Err(NotReconciled::Busy(format!(
                "a session with {peer} is under way"
            )));
        }
        if !self.conns.contains_key(peer) {
            let why = self
                .refusals
                .get(peer)
                .map(|r| {
                    format!(
                        " (its last session was refused: {})",
                        edgerep_wire::text::one_line(r)
                    )
                })
                .unwrap_or_default();
            return Err(NotReconciled::NotConnected(format!(
                "{peer} is not connected{why}; nothing was compared"
            )));
        }
        // Ready (the peer's Hello came) and this node's Hello gone out on the connection: the
        // peer's Hello can come in the same batch of inputs as the connection, before this
        // node transmits its own, and a first message dropped then (see `aae_send`) would
        // hold the session until it timed out.
        if !self.core.is_ready(peer) || !self.core.hello_sent(peer) {
            return Err(NotReconciled::NotConnected(format!(
                "{peer} is connected but its handshake has not ended; nothing was compared (try again)"
            )));
        }
        let step = match reconcile::open(&StoreTree(&self.store)) {
            Ok(step) => step,
            Err(e) => {
                tracing::warn!(peer = %peer, "anti-entropy cannot read the index: {e}");
                return Err(NotReconciled::Failed(format!(
                    "this node's anti-entropy index cannot be read: {e}"
                )));
            }
        };
        self.anti_entropy.next_id += 1;
        let id = self.anti_entropy.next_id;
        self.anti_entropy
            .started_at
            .insert(peer.clone(), Instant::now());
        let queued_ahead = self.conns.get(peer).map_or(0, |l| {
            l.queued.load(std::sync::atomic::Ordering::Acquire) as u64
        });
        self.anti_entropy.sessions.insert(
            peer.clone(),
            Session {
                id,
                started: Instant::now(),
                queued_ahead,
                last_heard: Instant::now(),
                report: SessionReport {
                    peer: peer.to_string(),
                    agreed: true,
                    ..SessionReport::default()
                },
                compared: false,
                pending: 0,
                repairs_allowed: 1,
            },
        );
        if let Some(s) = self.anti_entropy.sessions.get_mut(peer) {
            s.report.round_trips += 1;
        }
        self.aae_send(
            peer,
            Message::Reconcile {
                id,
                fingerprints: step.fingerprints,
                items: step.items,
            },
        );
        Ok(())
    }

    /// Starts sessions now with `peer` (or every connected peer) and replies with their
    /// reports once they end.
    pub(super) fn aae_on_demand(
        &mut self,
        peer: Option<NodeId>,
        due: Instant,
        reply: oneshot::Sender<Reconciled>,
    ) {
        if !self.store.aae_ready() {
            self.anti_entropy.deferred.push((peer, due, reply));
            return;
        }
        let peers: Vec<NodeId> = match peer {
            Some(p) => vec![p],
            None => self.conns.keys().cloned().collect(),
        };
        let mut waiting = BTreeSet::new();
        let mut refused = None;
        for p in peers {
            if self.anti_entropy.sessions.contains_key(&p) {
                waiting.insert(p);
                continue;
            }
            match self.aae_start_or_why(&p) {
                Ok(()) => {
                    waiting.insert(p);
                }
                Err(why) => refused = Some(why),
            }
        }
        // Asked of every peer, those not ready are left out when others compare; with
        // nothing compared at all, the caller learns why.
        if waiting.is_empty() {
            let _ = reply.send(Err(refused.unwrap_or_else(|| {
                NotReconciled::NotConnected("no peer is connected; nothing was compared".into())
            })));
            return;
        }
        self.anti_entropy.waiters.push(Waiter {
            due,
            peers: waiting,
            reports: Vec::new(),
            reply,
        });
    }

    /// A Reconcile or Repair message from `peer` (the core checked it follows the handshake),
    /// within the peer's share of this thread ([`WORK_SHARE`]) when it belongs to the peer's
    /// session, asks for keys, or names ranges (whoever's session it is: answering ranges may
    /// read the whole state). This node's own sessions are also bounded by their round trips
    /// (every Reconcile of the peer's counts) and by the repairs it asked for
    /// (`Session::repairs_allowed`). A peer spending its budget on its own sessions slows only
    /// the comparisons with itself. The committer's time merging a repair of the peer's
    /// session is charged too, once it is done (`aae_repaired`).
    pub(super) fn aae_message(&mut self, peer: &NodeId, message: Message, bytes: usize) {
        let session = |id: &u64| {
            self.anti_entropy
                .sessions
                .get(peer)
                .is_some_and(|s| s.id == *id)
        };
        let makes_work = match &message {
            // An answer with ranges may list some (each listing reads the whole state table),
            // in this node's own sessions too: a peer answering every round with a leaf whose
            // sum differs would otherwise buy a pass over the state per round, for free.
            Message::Reconcile {
                fingerprints,
                items,
                ..
            } => !fingerprints.is_empty() || !items.is_empty(),
            Message::Repair {
                id,
                versions,
                want,
                resolutions,
                ..
            } => {
                // Keys wanted are answered from whatever session they name (each costs reads of
                // its versions' blocks for their proofs): charged always.
                !want.is_empty()
                    || (!session(id) && (!versions.is_empty() || !resolutions.is_empty()))
            }
            _ => false,
        };
        if makes_work && !self.anti_entropy.work_left(peer) {
            let s = self.anti_entropy.status.entry(peer.clone()).or_default();
            s.messages_total += 1;
            s.bytes_received_total += bytes as u64;
            s.dropped_total += 1;
            return;
        }
        let started = Instant::now();
        self.aae_message_within(peer, message, bytes);
        if makes_work {
            self.anti_entropy.charge_work(peer, started.elapsed());
        }
    }

    fn aae_message_within(&mut self, peer: &NodeId, message: Message, bytes: usize) {
        let s = self.anti_entropy.status.entry(peer.clone()).or_default();
        s.messages_total += 1;
        s.bytes_received_total += bytes as u64;
        let ours = |aae: &mut AntiEntropy, id: u64| {
            aae.sessions
                .get_mut(peer)
                .filter(|s| s.id == id)
                .map(|s| {
                    s.last_heard = Instant::now();
                    s.report.messages += 1;
                    s.report.bytes_received += bytes as u64;
                })
                .is_some()
        };
        match message {
            Message::Reconcile {
                id,
                fingerprints,
                items,
            } => {
                let mine = ours(&mut self.anti_entropy, id);
                let had_ranges = !fingerprints.is_empty() || !items.is_empty();
                // Every answer of the peer's to a session of ours is a round trip, bounded by
                // MAX_ROUND_TRIPS; and once this node's answer named no range the comparison is
                // over: an honest peer sends no more ranges under the id.
                if mine
                    && had_ranges
                    && let Some(session) = self.anti_entropy.sessions.get_mut(peer)
                {
                    let over = session.compared;
                    if !over {
                        session.report.round_trips += 1;
                    }
                    if over {
                        self.aae_give_up(peer, "the peer named ranges after the comparison ended");
                        return;
                    }
                    if session.report.round_trips > MAX_ROUND_TRIPS {
                        self.aae_give_up(
                            peer,
                            &format!("after {MAX_ROUND_TRIPS} round trips: the peer keeps naming differing ranges"),
                        );
                        return;
                    }
                }
                // Nothing is read for a peer whose frames pile up unsent (the answer could
                // not go), nor past its budget of listings: dropped, its session times out.
                // A range the answer lists costs a listing whether the peer listed it or only
                // named a leaf whose sum differs (each listing reads the whole state table), so
                // every message with ranges is charged, in either side's sessions.
                let queued = self
                    .conns
                    .get(peer)
                    .map_or(0, |l| l.queued.load(std::sync::atomic::Ordering::Acquire));
                let charged = had_ranges;
                if queued > SEND_QUEUE_MAX_BYTES
                    || (charged && !self.anti_entropy.take_listing(peer))
                {
                    self.anti_entropy
                        .status
                        .entry(peer.clone())
                        .or_default()
                        .dropped_total += 1;
                    return;
                }
                let step =
                    match reconcile::answer(&StoreTree(&self.store), &fingerprints, &items, id) {
                        Ok(step) => step,
                        Err(e) => {
                            tracing::warn!(peer = %peer, "anti-entropy cannot read the index: {e}");
                            return;
                        }
                    };
                let mut keys: BTreeSet<&Vec<u8>> = step.send.iter().collect();
                keys.extend(step.want.iter());
                let differing = keys.len() as u64;
                let s = self.anti_entropy.status.entry(peer.clone()).or_default();
                for k in keys {
                    s.collection(collection_of(k)).differing_total += 1;
                }
                s.keys_compared_total += step.compared;
                s.differing_total += differing;
                // A session of the peer's opens with the whole state (the root's entries, or
                // its children's fingerprints): this node sees then whether the two states are
                // equal, as the peer does, and says so too (only the lower id of a pair opens
                // scheduled sessions, so the other end otherwise never said when the two last
                // agreed).
                // (The shape too: a late answer to a session of this node's that ended, under
                // an id not its current one, covers part of the state only.)
                let whole_state =
                    (fingerprints.is_empty() && items.len() == 1 && items[0].node == Node::ROOT)
                        || (items.is_empty()
                            && fingerprints.len() == Node::ROOT.children().len()
                            && fingerprints.iter().all(|f| f.node.level == 1));
                let opening =
                    !mine && whole_state && self.anti_entropy.answered.get(peer) != Some(&id);
                if opening {
                    self.anti_entropy.answered.insert(peer.clone(), id);
                }
                let s = self.anti_entropy.status.entry(peer.clone()).or_default();
                if opening {
                    let agreed = differing == 0 && !step.has_ranges();
                    let at = wall_ms();
                    s.last_at_ms = Some(at);
                    s.agreed = Some(agreed);
                    if agreed {
                        s.last_agreed_at_ms = Some(at);
                    }
                }
                if mine && let Some(session) = self.anti_entropy.sessions.get_mut(peer) {
                    session.report.keys_compared += step.compared;
                    session.report.differing += differing;
                    // The peer names ranges only where its fingerprint differed from ours.
                    if differing > 0 || had_ranges {
                        session.report.agreed = false;
                    }
                }
                if !step.send.is_empty() || !step.want.is_empty() {
                    if mine
                        && !step.want.is_empty()
                        && let Some(session) = self.anti_entropy.sessions.get_mut(peer)
                    {
                        session.repairs_allowed += 1;
                    }
                    self.aae_repair_send(peer, id, &step.send, step.want.clone());
                }
                if had_ranges {
                    let more = step.has_ranges();
                    if mine && let Some(session) = self.anti_entropy.sessions.get_mut(peer) {
                        if more {
                            session.repairs_allowed += 1;
                        } else {
                            session.compared = true;
                        }
                    }
                    self.aae_send(
                        peer,
                        Message::Reconcile {
                            id,
                            fingerprints: step.fingerprints,
                            items: step.items,
                        },
                    );
                } else if mine && let Some(session) = self.anti_entropy.sessions.get_mut(peer) {
                    session.compared = true;
                }
            }
            Message::Repair {
                id,
                versions,
                proofs,
                seals,
                certs,
                want,
                resolutions,
            } => {
                let mine = ours(&mut self.anti_entropy, id);
                let carries = !versions.is_empty() || !resolutions.is_empty();
                if mine
                    && carries
                    && let Some(session) = self.anti_entropy.sessions.get_mut(peer)
                {
                    if session.repairs_allowed == 0 {
                        self.aae_give_up(
                            peer,
                            "the peer sent more repairs than this node's messages asked for",
                        );
                        return;
                    }
                    session.repairs_allowed -= 1;
                }
                if mine && let Some(session) = self.anti_entropy.sessions.get_mut(peer) {
                    session.report.agreed = false;
                    if want.is_empty() {
                        // The answer to the keys we asked for.
                        session.pending = session.pending.saturating_sub(1);
                    }
                }
                if !want.is_empty() {
                    self.aae_repair_send(peer, id, &want, Vec::new());
                }
                let had_payload = !versions.is_empty() || !resolutions.is_empty();
                // Versions beyond this node's have are in flight: replication brings them.
                let (versions, proofs): (Vec<_>, Vec<_>) = versions
                    .into_iter()
                    .zip(proofs)
                    .filter(|(v, _)| {
                        self.core.local_have().get(&v.origin).copied().unwrap_or(0) >= v.seq
                    })
                    .unzip();
                // Resolutions of collections with transforms on apply are not compared either.
                let resolutions: Vec<_> = resolutions
                    .into_iter()
                    .filter(|r| !self.aae_transformed(&r.state_key))
                    .collect();
                let merging = self.anti_entropy.merging.get(peer).copied().unwrap_or(0);
                let payload = !versions.is_empty() || !resolutions.is_empty();
                // The wiring in force until the repair is merged (see `Pipeline::hold_wiring`;
                // none while a reload puts another in force).
                let wiring = payload.then(|| self.pipeline.hold_wiring()).flatten();
                if payload && (merging >= REPAIRS_IN_FLIGHT || wiring.is_none()) {
                    // A peer can send these as fast as it likes: a line per 10 s at most.
                    static LOG: crate::log_limit::Throttle =
                        crate::log_limit::Throttle::new(crate::log_limit::EVERY);
                    if let Some(left_out) = LOG.allow() {
                        let why = if wiring.is_none() {
                            "while a reload put new plugins in force".to_owned()
                        } else {
                            format!("while {merging} of the peer's were still merging")
                        };
                        tracing::warn!(peer = %peer, left_out, "a repair came {why}: not merged (a later session finds its keys again; lines like this one are written once per 10 s, `left_out` says how many were not)");
                    }
                    self.anti_entropy
                        .status
                        .entry(peer.clone())
                        .or_default()
                        .dropped_total += 1;
                } else if let Some(wiring) = wiring {
                    // In collections with transforms on apply, the state holds what this node's
                    // transforms make of each version, as when the event first came (run only
                    // for a repair that will be merged: plugins cost fuel and time).
                    let transformed = self.aae_shape(peer, &versions);
                    self.learn_certs(peer, &certs);
                    if mine && let Some(session) = self.anti_entropy.sessions.get_mut(peer) {
                        session.pending += 1;
                    }
                    let hook = CommitHookSender(self.inbox.clone());
                    let to = peer.clone();
                    let sent = self.committer.repair(
                        crate::committer::Repair {
                            peer: peer.clone(),
                            versions,
                            proofs,
                            seals,
                            certs,
                            resolutions,
                            transformed,
                        },
                        Box::new(move |result, took| {
                            drop(wiring);
                            hook.repaired(to, id, result, took)
                        }),
                    );
                    match sent {
                        Ok(()) => *self.anti_entropy.merging.entry(peer.clone()).or_default() += 1,
                        Err(e) => tracing::warn!(peer = %peer, "cannot queue a repair: {e}"),
                    }
                } else if had_payload && !mine {
                    // Nothing to merge here: the peer's session still waits for our word.
                    self.aae_send(peer, merged_word(id));
                }
            }
            _ => {}
        }
        self.aae_maybe_finish(peer);
    }

    /// Whether the state key belongs to a collection with transforms on apply (its values may
    /// differ between nodes by design: left out of repair).
    fn aae_transformed(&self, state_key: &[u8]) -> bool {
        let collection = state_key.split(|&b| b == 0).next().unwrap_or_default();
        std::str::from_utf8(collection).is_ok_and(|c| self.transformed_on_apply.contains(c))
    }

    /// What this node's transforms on apply make of the repaired `versions` of collections
    /// that have them. A version a transform fails on is left as the origin wrote it out of
    /// the state here: dropped, logged (replication's failure policies do not apply to a
    /// repair; the next session finds the key again).
    fn aae_shape(
        &self,
        peer: &NodeId,
        versions: &[edgerep_wire::EncodedEvent],
    ) -> BTreeMap<(String, u64), edgerep_store::OnApply> {
        let check = |v: &edgerep_wire::Value| crate::check_plugin_value(v, &self.value_limits);
        let mut out = BTreeMap::new();
        let started = Instant::now();
        let mut left_out = 0u64;
        for v in versions {
            // A version the write policy keeps out stays out, as in apply (a peer's state can
            // hold one: taken before its node checked local writes, or put there by a node
            // that lies).
            let shaped = if self.kept_out_by_policy(peer, v, "a repair") {
                edgerep_store::OnApply::Dropped
            } else if !self.transformed_on_apply.contains(v.collection.as_str()) {
                continue;
            } else if started.elapsed() >= REPAIR_SHAPE_BUDGET {
                left_out += 1;
                edgerep_store::OnApply::Dropped
            } else {
                match self.pipeline.run_apply(v, &check) {
                    Ok(on_apply) => on_apply,
                    Err(rejection) => {
                        tracing::warn!(
                            peer = %peer, plugin = %rejection.plugin, origin = %v.origin, seq = v.seq,
                            failure = rejection.failure.kind.as_str(),
                            "a transform on apply failed on a version anti-entropy repairs: left out of the state"
                        );
                        edgerep_store::OnApply::Dropped
                    }
                }
            };
            out.insert((v.origin.to_string(), v.seq), shaped);
        }
        if left_out > 0 {
            tracing::warn!(
                peer = %peer,
                "transforms on apply took {} ms over a repair's versions: {left_out} of them left out, for a later session",
                started.elapsed().as_millis()
            );
        }
        out
    }

    /// Sends `peer` this node's versions of `keys`, and names the keys it wants (as many as
    /// come to [`REPAIR_WANT_BYTES`]: the rest are found by a later session).
    fn aae_repair_send(
        &mut self,
        peer: &NodeId,
        id: u64,
        keys: &[Vec<u8>],
        mut want: Vec<Vec<u8>>,
    ) {
        let mut want_bytes = 0usize;
        let fits = want
            .iter()
            .take_while(|k| {
                want_bytes += k.len() + 5;
                want_bytes <= REPAIR_WANT_BYTES
            })
            .count();
        want.truncate(fits);
        // An answer that could not be queued is not read (a peer asking in a loop and reading
        // nothing would otherwise cost a read of up to REPAIR_BYTES per request).
        if self.aae_backed_up(peer) {
            return;
        }
        // Each key once (a peer naming one key 16,384 times asked for as many copies of its
        // versions), and an answer of at most REPAIR_KEYS and REPAIR_BYTES: the rest waits for
        // a later session, which starts at another place (keys that differ at every session
        // must not keep the same others out every time).
        let mut seen = BTreeSet::new();
        let mut keys: Vec<&Vec<u8>> = keys.iter().filter(|k| seen.insert(k.as_slice())).collect();
        let start = reconcile::rotation(id, keys.len());
        keys.rotate_left(start);
        let mut keys: Vec<Vec<u8>> = keys.into_iter().take(REPAIR_KEYS).cloned().collect();
        let page = if keys.is_empty() {
            Ok((
                edgerep_store::StatePage {
                    versions: Vec::new(),
                    proofs: Vec::new(),
                    seals: Vec::new(),
                    unproven: 0,
                    next: None,
                },
                0,
            ))
        } else {
            self.store.versions_within(
                &keys,
                REPAIR_BYTES,
                REPAIR_VERSIONS,
                REPAIR_READ_TIME,
                reconcile::rotation(id, usize::MAX),
            )
        };
        let mut page = match page {
            Ok((p, covered)) => {
                keys.truncate(covered);
                p
            }
            Err(e) => {
                tracing::warn!(peer = %peer, "anti-entropy cannot read versions to repair: {e}");
                return;
            }
        };
        // Versions the peer has not acknowledged are in flight: replication brings them.
        // This node's own events go out only once synced, as replication ships them, however
        // much of them the peer claims to hold: a crash here loses unsynced ones and numbers
        // the next writes from the last synced one, so a peer holding one (or its seal, which
        // proves it this node's) would hold a second history of this node. (Read after the
        // page: what it says synced was synced when the page was read. A seal ends the commit
        // that made it, so the seals of unsynced events seal nothing synced.)
        let acked = self.acked.get(peer);
        let local = self.core.local().clone();
        let own_synced = self.committer.own_synced();
        let unsynced_own = |origin: &NodeId, seq: u64| *origin == local && seq > own_synced;
        let (versions, proofs): (Vec<_>, Vec<_>) = std::mem::take(&mut page.versions)
            .into_iter()
            .zip(std::mem::take(&mut page.proofs))
            .filter(|(v, _)| acked.and_then(|a| a.get(&v.origin)).copied().unwrap_or(0) >= v.seq)
            .filter(|(v, _)| !unsynced_own(&v.origin, v.seq))
            .unzip();
        page.versions = versions;
        page.proofs = proofs;
        page.seals.retain(|s| !unsynced_own(&s.origin, s.seq));
        if page.unproven > 0 {
            tracing::warn!(peer = %peer, unproven = page.unproven, "versions held here that nothing here proves (damage) left out of a repair");
        }
        let certs = edgerep_replica::certs_for_seals(&self.log, &page.seals);
        // How this node resolved the keys it sends: the peer compares them with its own.
        let resolutions = if keys.is_empty() {
            Vec::new()
        } else {
            self.store.resolutions_of(&keys).unwrap_or_else(|e| {
                tracing::warn!(peer = %peer, "anti-entropy cannot read resolutions: {e}");
                Vec::new()
            })
        };
        let sent = page.versions.len() as u64;
        let s = self.anti_entropy.status.entry(peer.clone()).or_default();
        s.repaired_out_total += sent;
        for v in &page.versions {
            s.collection(v.collection.clone()).repaired_out_total += 1;
        }
        s.unproven_total += page.unproven;
        if let Some(session) = self
            .anti_entropy
            .sessions
            .get_mut(peer)
            .filter(|s| s.id == id)
        {
            session.report.repaired_out += sent;
            // Expected back: the peer's answer to `want`, and its word that it merged ours
            // (so the next session does not find the same keys again).
            session.pending +=
                u32::from(!want.is_empty()) + u32::from(sent > 0 || !resolutions.is_empty());
        }
        self.aae_send(
            peer,
            Message::Repair {
                id,
                versions: page.versions,
                proofs: page.proofs,
                seals: page.seals,
                certs,
                want,
                resolutions,
            },
        );
    }

    /// The committer merged (or refused) versions `peer` sent in repair.
    pub(super) fn aae_repaired(
        &mut self,
        peer: NodeId,
        id: u64,
        result: Result<Installed, CommitError>,
        took: Duration,
        now: u64,
    ) {
        if let Some(n) = self.anti_entropy.merging.get_mut(&peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.anti_entropy.merging.remove(&peer);
            }
        }
        let mine = self
            .anti_entropy
            .sessions
            .get(&peer)
            .is_some_and(|s| s.id == id);
        // The committer's time on a repair this node did not ask for (each version's seal
        // checked, its block read) is the peer's, as the replicator's time on its messages is:
        // a peer sending repairs of what this node holds runs out of budget, and its next
        // ones are dropped.
        if !mine {
            self.anti_entropy.charge_work(&peer, took);
        }
        if !mine && !matches!(result, Err(CommitError::Forged(_))) {
            // The peer's session waits for our word that its versions are merged.
            self.aae_send(&peer, merged_word(id));
        }
        match result {
            Ok(out) => {
                if out.disagreements > 0 {
                    tracing::warn!(
                        peer = %peer, keys = out.disagreements,
                        "this node and a peer resolved the same versions differently (a resolver that is not deterministic, or different builds): those keys now hold the last-writer-wins default on both; see GET /v1/disagreements"
                    );
                }
                if out.resolved_again > 0 {
                    tracing::info!(
                        peer = %peer, keys = out.resolved_again,
                        "keys whose resolver plugin had failed here (last-writer-wins stood in) were resolved again by the plugin when a peer's resolution differed"
                    );
                }
                if out.future_contexts > 0 {
                    tracing::warn!(
                        peer = %peer, versions = out.future_contexts,
                        "left out repair versions whose causal context names events this node does not hold (forged by their origin)"
                    );
                }
                for fork in &out.forks {
                    self.reports.found_fork(
                        &peer,
                        (fork.origin.as_str(), fork.seq),
                        fork.held
                            .map_or_else(|| "compacted (not kept whole)".to_owned(), |h| hex(&h)),
                        hex(&fork.received),
                        "a peer's repair offered another event its origin sealed in place of one this node holds; left out",
                    );
                    self.own_fork(fork.origin.as_str(), fork.seq);
                }
                if out.covered > 0 || out.replaced > 0 {
                    tracing::warn!(
                        peer = %peer, drift = out.covered, replaced = out.replaced,
                        "anti-entropy repaired drift: this node's state lacked versions its bookkeeping says it held, or held damaged ones"
                    );
                }
                let s = self.anti_entropy.status.entry(peer.clone()).or_default();
                s.repaired_in_total += out.changed;
                s.drift_total += out.covered;
                s.replaced_total += out.replaced;
                s.disagreements_total += out.disagreements;
                s.resolved_again_total += out.resolved_again;
                for (c, n) in &out.by_collection {
                    let d = s.collection(c.clone());
                    d.repaired_in_total += n.changed;
                    d.drift_total += n.covered;
                    d.disagreements_total += n.disagreements;
                    d.resolved_again_total += n.resolved_again;
                }
                if mine && let Some(session) = self.anti_entropy.sessions.get_mut(&peer) {
                    session.report.disagreements += out.disagreements;
                    session.report.resolved_again += out.resolved_again;
                    session.report.repaired_in += out.changed;
                    session.report.drift += out.covered;
                    session.report.replaced += out.replaced;
                    session.pending = session.pending.saturating_sub(1);
                }
            }
            Err(CommitError::Forged(reason)) => {
                tracing::error!(peer = %peer, "repair refused, disconnecting: {reason}");
                if let Some(session) = self.anti_entropy.sessions.get_mut(&peer) {
                    session.pending = 0;
                    session.compared = true;
                }
                self.cut_off(peer.clone(), reason, now);
            }
            Err(e) => {
                tracing::warn!(peer = %peer, "merging a repair failed: {e}");
                if mine && let Some(session) = self.anti_entropy.sessions.get_mut(&peer) {
                    session.pending = session.pending.saturating_sub(1);
                }
            }
        }
        self.aae_maybe_finish(&peer);
    }

    /// Ends our session with `peer` as given up (a peer not comparing honestly), saying `why`.
    fn aae_give_up(&mut self, peer: &NodeId, why: &str) {
        tracing::warn!(peer = %peer, "anti-entropy session given up: {why}");
        if let Some(session) = self.anti_entropy.sessions.get_mut(peer) {
            session.report.gave_up = true;
        }
        self.aae_finish(peer);
    }

    fn aae_maybe_finish(&mut self, peer: &NodeId) {
        if self
            .anti_entropy
            .sessions
            .get(peer)
            .is_some_and(|s| s.compared && s.pending == 0)
        {
            self.aae_finish(peer);
        }
    }

    /// Ends our session with `peer`: its report goes to status and to whoever waits for it.
    pub(super) fn aae_finish(&mut self, peer: &NodeId) {
        let Some(session) = self.anti_entropy.sessions.remove(peer) else {
            return;
        };
        let mut report = session.report;
        report.millis = session.started.elapsed().as_millis() as u64;
        if report.timed_out || report.gave_up {
            report.agreed = false;
        }
        let at = wall_ms();
        let s = self.anti_entropy.status.entry(peer.clone()).or_default();
        s.sessions_total += 1;
        s.last_at_ms = Some(at);
        s.agreed = Some(report.agreed);
        if report.agreed {
            s.last_agreed_at_ms = Some(at);
        }
        tracing::debug!(peer = %peer, ?report, "anti-entropy session ended");
        let mut done = Vec::new();
        for (i, w) in self.anti_entropy.waiters.iter_mut().enumerate() {
            if w.peers.remove(peer) {
                w.reports.push(report.clone());
                if w.peers.is_empty() {
                    done.push(i);
                }
            }
        }
        for i in done.into_iter().rev() {
            let w = self.anti_entropy.waiters.remove(i);
            let _ = w.reply.send(Ok(w.reports));
        }
    }

    /// Answers the callers whose answer is due: the reports of the sessions that ended, and
    /// those so far of the sessions still running (marked `running`).
    fn aae_answer_due(&mut self, now: Instant) {
        let (due, waiting): (Vec<Waiter>, Vec<Waiter>) =
            std::mem::take(&mut self.anti_entropy.waiters)
                .into_iter()
                .partition(|w| w.due <= now);
        self.anti_entropy.waiters = waiting;
        for mut w in due {
            for peer in &w.peers {
                if let Some(session) = self.anti_entropy.sessions.get(peer) {
                    let mut report = session.report.clone();
                    report.running = true;
                    report.agreed = false;
                    report.millis = session.started.elapsed().as_millis() as u64;
                    w.reports.push(report);
                }
            }
            let _ = w.reply.send(Ok(w.reports));
        }
    }

    /// `peer` is gone: a session of ours with it ends.
    pub(super) fn aae_disconnected(&mut self, peer: &NodeId) {
        if let Some(s) = self.anti_entropy.sessions.get_mut(peer) {
            s.report.timed_out = true;
        }
        self.aae_finish(peer);
    }
}

#[cfg(test)]
mod listing_budget_tests {
    use super::*;

    /// A peer asking for listings in a loop gets the burst, then none until time refills it
    /// (each listing reads the whole state table on the replicator thread).
    #[test]
    fn a_peer_s_listings_stop_at_its_budget() {
        let mut aae = AntiEntropy::new(0, 1);
        let peer = NodeId::parse("node-2").expect("a valid id");
        let granted = (0..1000).filter(|_| aae.take_listing(&peer)).count();
        // The burst, and at most a few refilled while the loop ran.
        assert!(
            (LISTINGS_BURST as usize..LISTINGS_BURST as usize + 3).contains(&granted),
            "{granted}"
        );
        // Another peer has its own budget.
        let other = NodeId::parse("node-3").expect("a valid id");
        assert!(aae.take_listing(&other));
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            aae.take_listing(&peer),
            "refilled at {LISTINGS_PER_SECOND} a second"
        );
    }
}
