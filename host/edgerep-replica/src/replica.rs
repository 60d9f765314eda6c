//! The replication state machine of one node, for all its peers.
//!
//! Calling order, per the quinn-proto convention: feed inputs (`connected`, `handle`, `applied`,
//! `handle_timeout`, `set_local_have`), then drain `poll_output` and `poll_transmit` until they
//! return `None`, then sleep until `poll_timeout` or the next input.
//!
//! Invariants:
//! - `accepted[o]` = max(local have, highest sequence in an Apply handed out and not yet
//!   applied or failed), so an event is handed out to apply at most once while it is not durable,
//!   and each origin's handed-out events continue it without a gap (when the caller applies them
//!   in the order yielded).
//! - An Ack carries only the durable local have, so an acknowledged event survives a restart.
//! - Per peer, at most [`APPLIES_IN_FLIGHT`] Applies, or one InstallSnapshot and nothing else,
//!   are outstanding; the peer's later messages wait behind them. Applies are answered in the
//!   order they were handed out (the caller applies them in that order), so the next batch is
//!   on its way to the store while the store commits the one before.
//! - The durable local have is the only state that must survive a restart.
//! - A peer that needs events below the compacted floor of some origin gets a snapshot of the
//!   state instead (pages merged idempotently; the last one moves its have), then events again.
//!
//! Relaying follows the epidemic broadcast tree (Plumtree): every node pushes every event it
//! holds to every peer at once, except the origins a peer pruned. A node prunes, on every other
//! link, the origins it has a link with (their events come on it), and prunes a peer for an
//! origin when that peer sent it only events of the origin another peer had delivered (another
//! path was faster); never the origin itself on its own link. Its Acks still announce what it
//! holds (the lazy links). When an origin's events stop arriving while a pruned peer announces
//! more of them, the node grafts that peer back after `graft_after_ms` (or, for an origin with no
//! link here, after five times that when they arrive but never catch up with the announcement),
//! and at once, on every link, for an origin whose own link went down. In a mesh each event then crosses each link
//! about once.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Bound;

/// Most Applies of one peer's events outstanding at once: the second is admitted and queued at
/// the store while the first commits, so that a peer catching up is not held to the round trip
/// between the store's answer and its next batch. Each continues, per origin, what the ones
/// before hand out; the caller must not apply one whose predecessor failed (the node's
/// committer refuses it unapplied), and the peer is asked again from what is durable.
pub const APPLIES_IN_FLIGHT: usize = 2;

use edgerep_wire::seal::Proof;
use edgerep_wire::{EncodedEvent, NodeId, Seal};

use crate::fingerprint;
use crate::have::{self, Have};
use crate::log::{Log, LogError, StatePage};
use crate::message::{
    CollectionFingerprint, Hello, MAX_ORIGINS, MIN_PROTOCOL_VERSION, Message, MessageLimits,
    PROTOCOL_VERSION,
};
use crate::session::{Batch, HELD_BACK_WAIT_MAX_MS, HeldBackAsk, PendingPage, Session};

/// The "next page" of a snapshot whose last page was merged.
const SNAPSHOT_DONE: u64 = u64::MAX;

/// Tuning of a [`Replica`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaConfig {
    /// What this node runs, per collection (sent in the Hello; sorted by [`Replica::new`]).
    pub fingerprint: Vec<CollectionFingerprint>,
    /// Most events sent to one peer and not yet acknowledged.
    pub window_events: u64,
    /// Most events in one Events message.
    pub batch_events: usize,
    /// Most encoded event bytes in one Events message (one event larger than this still goes alone).
    pub batch_bytes: usize,
    /// How often at most this node tells each peer its have when it grows (an Ack): the lazy
    /// announcements of the relay tree, and what stops peers sending what it got elsewhere.
    pub announce_every_ms: u64,
    /// How long an origin's events may make no progress here while a peer this node pruned
    /// for that origin announces more of them, before the peer is grafted back.
    pub graft_after_ms: u64,
    /// Most events handed to the store in one Apply once a peer's received batches queue up
    /// (whole batches; the rest wait for the next Apply). Below the window, so that the peer
    /// keeps sending while this node applies, instead of the two taking turns.
    pub apply_events: usize,
    /// Resend everything unacknowledged when acks make no progress for this long.
    pub retransmit_after_ms: u64,
    /// Limits the peers' messages are decoded with (batches are built within them too).
    pub limits: MessageLimits,
    /// This process's instance number, sent in the Hello (random per start, chosen by the caller).
    pub instance: u64,
    /// This node's policy (limits, write authorization, revocations) as (name, value) pairs:
    /// sent in the Hello; a peer whose policy differs is refused.
    pub policy: Vec<(String, String)>,
}

impl Default for ReplicaConfig {
    /// A window of 16384 events, batches of 1024 events or 1 MiB, applies of up to 4096
    /// events, announcements every 100 ms, grafts after 400 ms, retransmit after 3 s.
    fn default() -> ReplicaConfig {
        ReplicaConfig {
            fingerprint: Vec::new(),
            window_events: 16384,
            batch_events: 1024,
            batch_bytes: 1 << 20,
            apply_events: 4096,
            announce_every_ms: 100,
            graft_after_ms: 400,
            retransmit_after_ms: 3000,
            limits: MessageLimits::default(),
            instance: 0,
            policy: Vec::new(),
        }
    }
}

/// Something the caller must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Apply these events durably, in one transaction, after every earlier Apply (one at a time,
    /// in the order yielded, even if the peer has disconnected meanwhile); then call
    /// [`Replica::set_local_have`] and [`Replica::applied`], or [`Replica::apply_failed`].
    Apply {
        /// The peer the events came from.
        peer: NodeId,
        /// The events: per origin, consecutive, continuing the local have, and ending at one of
        /// `seals`.
        events: Vec<EncodedEvent>,
        /// The origins' seals over them.
        seals: Vec<Seal>,
        /// Certificates the peer sent with them.
        certs: Vec<(NodeId, Vec<u8>)>,
    },
    /// The peer's Hello was accepted: the session is ready.
    PeerReady {
        /// The peer.
        peer: NodeId,
        /// Its Hello (its `have` is durable on the peer, like an acknowledgement).
        hello: Hello,
    },
    /// The peer decides a collection's events from `from_ms` on with an upgrade this node's
    /// config lacks: hold that collection's events from then on (they would be decided
    /// differently here) until the config has it. Comes before the `Mismatch` naming it.
    UpgradeMissing {
        /// The peer.
        peer: NodeId,
        /// The collection.
        collection: String,
        /// The upgrade's hybrid-clock time.
        from_ms: u64,
    },
    /// The peer runs something different for some collections (reported, not fatal).
    Mismatch {
        /// The peer.
        peer: NodeId,
        /// One sentence per difference.
        differences: Vec<String>,
    },
    /// Merge these versions (a page of a peer's state) into the state durably, in one
    /// transaction, in order with the Applies; if `have` is given (the last page), also raise the
    /// local have to it, giving up changelog entries below it (they are compacted at the
    /// peer). Then call [`Replica::set_local_have`], [`Replica::set_compacted`] and
    /// [`Replica::installed`], or [`Replica::install_failed`].
    InstallSnapshot {
        /// The peer the page came from.
        peer: NodeId,
        /// The versions of keys (whole, or a part of a key over a page by itself).
        versions: Vec<EncodedEvent>,
        /// Per version, what proves it is its origin's (unchecked: the store checks).
        proofs: Vec<Proof>,
        /// On the last page: per origin, what the snapshot reflects.
        have: Option<Have>,
        /// The seals the proofs name and, on the last page, each origin's seal at its
        /// sequence number in `have`.
        seals: Vec<Seal>,
        /// Certificates the peer sent with them.
        certs: Vec<(NodeId, Vec<u8>)>,
    },
    /// A snapshot the peer began was not merged: this node is not behind its compacted floors
    /// (the peer's view was stale, or nobody asked for it). Reported, not fatal.
    SnapshotDeclined {
        /// The peer.
        peer: NodeId,
        /// The snapshot's id.
        id: u64,
        /// Why, for the log and status.
        reason: String,
    },
    /// The peer acknowledged more: persist its cursor (e.g. for changelog retention).
    Acked {
        /// The peer.
        peer: NodeId,
        /// Everything the peer has acknowledged on this session, per origin.
        have: Have,
    },
}

/// A peer broke the protocol: the caller must disconnect it, logging this as the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A message for a peer with no session ([`Replica::connected`] not called, or disconnected).
    #[error("message from a peer with no session")]
    NotConnected,
    /// A message other than Hello or Bye came before the peer's Hello.
    #[error("{message} before hello")]
    BeforeHello {
        /// The message's kind.
        message: &'static str,
    },
    /// A second Hello on one session.
    #[error("second hello on one session")]
    DuplicateHello,
    /// The peer speaks another protocol version.
    #[error(
        "the peer speaks protocol version {theirs}, this node speaks versions {MIN_PROTOCOL_VERSION} to {ours}: upgrade the older of the two nodes"
    )]
    Version {
        /// Ours.
        ours: u32,
        /// The peer's.
        theirs: u32,
    },
    /// The Hello names a node other than the one the transport authenticated.
    #[error("hello from node {got}, but the connection is with {expected}")]
    WrongNode {
        /// The authenticated peer.
        expected: NodeId,
        /// The id in the Hello.
        got: NodeId,
    },
    /// An origin's events within one Events message are not consecutive ascending.
    #[error("events of {origin} not contiguous within one message: seq {got} after {after}")]
    NotContiguous {
        /// The origin.
        origin: NodeId,
        /// The previous sequence number of that origin in the message.
        after: u64,
        /// The one that followed it.
        got: u64,
    },
    /// The peer's policy (limits, write authorization, revocations) differs from ours: the two
    /// would decide the same events differently.
    #[error("policy differs from this node's: {}", differences.join("; "))]
    PolicyDiffers {
        /// One sentence per difference.
        differences: Vec<String>,
    },
    /// The peer resolves some collection's concurrent versions otherwise (another resolver,
    /// build or settings): the two would hold the same versions with different values.
    /// Replication with that peer pauses until the configs agree.
    #[error("resolvers differ from this node's (replication with this peer pauses until the configs agree): {}", differences.join("; "))]
    ResolversDiffer {
        /// One sentence per difference.
        differences: Vec<String>,
    },
    /// An origin's events appear in two separate runs of one Events message.
    #[error("events of {origin} in two separate runs of one message")]
    OriginRepeated {
        /// The origin.
        origin: NodeId,
    },
}

/// How long a snapshot being sent holds the changelog back without the peer acknowledging a
/// page (see [`PeerView::snapshot_sending_have`]): a 1 MiB page needs about 20 s at 400 kbit/s.
pub const SNAPSHOT_HOLD_MS: u64 = 60_000;

/// How long a snapshot being sent holds the changelog back at most, however its pages are
/// acknowledged: a peer acknowledging a page a minute would otherwise hold every origin's
/// changelog (past `max_held_events`) as long as it likes. A receiver slower than this may need
/// another snapshot after it.
pub const SNAPSHOT_HOLD_MAX_MS: u64 = 3_600_000;

/// A peer's replication status, for `edgerep status`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerView {
    /// A session exists.
    pub connected: bool,
    /// The peer's Hello was accepted.
    pub ready: bool,
    /// What the peer holds durably, per origin, as far as we know (Hello, then Acks).
    pub their_have: Have,
    /// Per origin, how far we have sent.
    pub sent: Have,
    /// Per origin, how far the peer acknowledged.
    pub acked: Have,
    /// Events sent and not yet acknowledged.
    pub in_flight_events: u64,
    /// Origins the peer does not acknowledge (see `Session::stalled`): at most one batch of
    /// each in flight, outside the window.
    pub stalled_origins: Vec<NodeId>,
    /// Events received from the peer waiting behind its pending Apply.
    pub pending_apply_events: usize,
    /// An Apply of the peer's events is outstanding.
    pub applying: bool,
    /// When the last message from the peer arrived (caller's milliseconds).
    pub last_message_ms: Option<u64>,
    /// Fingerprint differences found at the handshake.
    pub mismatches: Vec<String>,
    /// The reason the last Apply of the peer's events failed, until one succeeds.
    pub last_apply_error: Option<String>,
    /// Why the last snapshot page for the peer could not be read, until one is.
    pub last_send_error: Option<String>,
    /// The reason in the peer's Bye, if it sent one.
    pub bye_reason: Option<String>,
    /// We are sending the peer a snapshot: the page being sent.
    pub snapshot_sending_page: Option<u64>,
    /// The have of the snapshot being sent, while the peer acknowledges its pages (one within
    /// [`SNAPSHOT_HOLD_MS`] of the last, or of its start), for at most [`SNAPSHOT_HOLD_MAX_MS`]:
    /// the peer needs the changelog after it. A peer that stops acknowledging pages stops
    /// holding the changelog back.
    pub snapshot_sending_have: Option<Have>,
    /// The peer is sending us a snapshot: the next page expected.
    pub snapshot_receiving_page: Option<u64>,
    /// Origins the peer pruned: we do not push their events to it (it gets them elsewhere).
    pub lazy_origins: Vec<NodeId>,
    /// The peer refuses snapshots (it runs transforms on apply): it is sent no snapshot, and
    /// origins compacted here past what it holds are left out.
    pub refuses_snapshots: bool,
    /// Origins we pruned on the peer: it does not push their events to us.
    pub pruned_origins: Vec<NodeId>,
}

/// A deliberate bug, for checking that the simulation catches it. Never use in a node.
#[cfg(feature = "fault-injection")]
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Acknowledge events as soon as they are handed out to apply, before they are durable.
    AckBeforeApply,
    /// Hand out events the node already holds or is already applying.
    ApplyDuplicates,
}

/// What we know about one peer. The session is volatile; an outstanding Apply outlives it
/// (the caller applies it anyway), so the peer's entry stays until both are gone.
#[derive(Default)]
struct Peer {
    session: Option<Session>,
    /// Per outstanding Apply of this peer's events, oldest first: per origin, the highest
    /// sequence number in it.
    applying: VecDeque<Have>,
    /// The outstanding InstallSnapshot of this peer's page.
    installing: Option<Installing>,
    /// The page `installing` names, to merge again if this merge fails, and the tries before.
    installing_copy: Option<(PendingPage, u32)>,
    last_apply_error: Option<String>,
    /// Why the last snapshot page for the peer could not be read, until one is.
    last_send_error: Option<String>,
}

/// A watch on an origin's tree: a pruned peer announced `target` of it at `began`, beyond
/// what this node held, and `since` is the last progress since. It ends when this node holds
/// `target`, however the events came. The pruned peer is grafted back after `graft_after_ms`
/// without progress, or, while the origin's events come through relays (no link with the
/// origin here), [`LAG_GRAFTS`] times that without reaching `target`: a relay trickling a block
/// now and then makes progress, but must not hold the origin to its pace. (On the origin's own
/// link, the fastest path there is, a long catch-up is no stall.)
#[derive(Debug, Clone)]
struct Stall {
    began: u64,
    since: u64,
    target: u64,
    /// Peers grafted for this watch: the next graft goes to another (a peer announcing more
    /// than it sends would otherwise take every graft, and the origin never come back through
    /// the peers that hold it; one trickling an event per graft too). Once every candidate
    /// was, they take turns again.
    tried: BTreeSet<NodeId>,
}

/// How many `graft_after_ms` the tree may take to deliver what a pruned peer announced.
const LAG_GRAFTS: u64 = 5;

impl Stall {
    fn new(now: u64, target: u64) -> Stall {
        Stall {
            began: now,
            since: now,
            target,
            tried: BTreeSet::new(),
        }
    }

    /// When the pruned peer is grafted back (`relayed`: no link with the origin here).
    fn due(&self, graft_after: u64, relayed: bool) -> u64 {
        let stalled = self.since.saturating_add(graft_after);
        if relayed {
            stalled.min(
                self.began
                    .saturating_add(graft_after.saturating_mul(LAG_GRAFTS)),
            )
        } else {
            stalled
        }
    }
}

/// Whether `origin`'s events come to this node only through relays (no ready link with it).
fn relayed(peers: &BTreeMap<NodeId, Peer>, origin: &NodeId) -> bool {
    !peers
        .get(origin)
        .and_then(|p| p.session.as_ref())
        .is_some_and(Session::ready)
}

/// An outstanding InstallSnapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Installing {
    /// The snapshot.
    id: u64,
    /// The page.
    page: u64,
    /// The snapshot's last page.
    last: bool,
    /// Handed out on a session that was replaced since: its id and page say nothing about the
    /// current session's snapshot (unless that resumed the same one: see [`Interrupted`]).
    old_session: bool,
    /// The sending process (its Hello's instance): snapshot ids start over when it restarts, so
    /// an id and page name a page only together with it.
    instance: Option<u64>,
}

/// A snapshot page whose merge failed is merged again after this long, doubling per failure
/// up to [`INSTALL_RETRY_MAX_MS`], for as long as the session expects it: the sender's own
/// resend may never come (traffic leaving it keeps its page timer off), and what failed the
/// merge (a collection's config here, say) may be fixed by a reload at any time.
const INSTALL_RETRY_MS: u64 = 1_000;
const INSTALL_RETRY_MAX_MS: u64 = 30_000;

/// Snapshots a lost connection interrupted, kept to resume on the peer's next session if its
/// process is the same (its Hello's `instance`): a large snapshot over a link that drops more
/// often than the snapshot takes would otherwise start again from page 0 each time, for ever.
struct Interrupted {
    /// The peer's instance when the connection was lost.
    instance: u64,
    /// The snapshot we were sending it.
    out: Option<crate::session::SnapshotOut>,
    /// The snapshot it was sending us: its id and the next page we expect.
    inbound: Option<(u64, u64)>,
}

impl Peer {
    /// The peer's next events must queue: [`APPLIES_IN_FLIGHT`] Applies or an InstallSnapshot of
    /// its are outstanding, or a snapshot page of its waits for the outstanding Apply.
    fn busy(&self) -> bool {
        self.installing.is_some()
            || self.applying.len() >= APPLIES_IN_FLIGHT
            || (!self.applying.is_empty()
                && self
                    .session
                    .as_ref()
                    .is_some_and(|s| s.pending_page.is_some()))
    }

    /// Nothing of this peer's is outstanding (a snapshot page is merged only then).
    fn idle(&self) -> bool {
        self.applying.is_empty() && self.installing.is_none()
    }
}

/// What this node exchanged with one peer since it started (all sessions).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerCounters {
    /// Events sent in Events messages.
    pub events_sent: u64,
    /// Events received in Events messages (after dropping unsealed tails).
    pub events_received: u64,
    /// Of those, events this node already held or was applying (dropped).
    pub duplicates_received: u64,
    /// Origins this node pruned on the peer (asked it to stop pushing them).
    pub prunes_sent: u64,
    /// Origins this node grafted back on the peer.
    pub grafts_sent: u64,
    /// Events sent again on a session (after a go-back: a rewind asked for, or no
    /// acknowledgement in time).
    pub events_resent: u64,
    /// Snapshot pages sent (first sends and resends).
    pub snapshot_pages_sent: u64,
    /// Rewinds the peer asked for while the last one's resend was still on its way, put off
    /// until that resend is acknowledged in part or a quarter of the resend timer passed (a
    /// count growing with nothing lost is a faulty or hostile peer).
    pub rewinds_deferred: u64,
}

/// The replication core of one node: sans-IO, deterministic, one instance for all peers.
pub struct Replica {
    local: NodeId,
    config: ReplicaConfig,
    /// The durable per-origin have, as pushed by the caller.
    local_have: Have,
    /// Counts the changes of `local_have` (see `Session::idle_at`).
    have_version: u64,
    /// See the module invariants.
    accepted: Have,
    /// Per origin, the highest sequence number compacted out of the changelog, as pushed.
    compacted: Have,
    /// The latest time given to any call.
    now: u64,
    /// Per origin, the peer whose events of it were last handed out to apply: duplicates from
    /// another peer mean that peer's path is slower (a prune), from this one a resend.
    delivered_by: BTreeMap<NodeId, NodeId>,
    /// Per origin whose events a pruned peer announces beyond what this node holds: the watch
    /// for the tree delivering them (graft after `graft_after_ms` without progress, or, for an
    /// origin with no link here, [`LAG_GRAFTS`] times that without catching up).
    stalled: BTreeMap<NodeId, Stall>,
    peers: BTreeMap<NodeId, Peer>,
    /// Per peer ever connected (configured peers only, so bounded), what was exchanged.
    counters: BTreeMap<NodeId, PeerCounters>,
    outputs: VecDeque<Output>,
    /// Round-robin cursors over peers: the last served with a control message, with events.
    last_control: Option<NodeId>,
    last_events: Option<NodeId>,
    /// Origins whose changelog read failed, with the reason (see [`Replica::unreadable`]).
    unreadable: BTreeMap<NodeId, String>,
    /// Peers whose seal for this node's Hello on the current session could not be read, with
    /// the reason (see [`Replica::unreadable_seals`]).
    unreadable_seals: BTreeMap<NodeId, String>,
    /// Per peer, snapshots a lost connection interrupted (configured peers only, so bounded).
    interrupted: BTreeMap<NodeId, Interrupted>,
    /// Per peer, the id of our next snapshot to it (ids grow across sessions).
    snapshot_ids: BTreeMap<NodeId, u64>,
    /// Deliberate bugs: always false unless the `fault-injection` feature turns them on.
    ack_before_apply: bool,
    apply_duplicates: bool,
}

/// The events of one origin's read that may go on the stream now, ending at a seal: those before
/// the first whose causal context names an event `unsent(origin, seq)` says this session is
/// still to send (else the peer holds it back until that event arrives, and asks for it again:
/// on a busy link, a window resent per event held back). `None` when nothing may go: the first
/// event waits, or no seal comes before the first that waits.
/// The stream then delivers every event after what it depends on, whatever the interleaving
/// of origins.
fn causal_prefix(
    mut events: Vec<EncodedEvent>,
    mut seals: Vec<Seal>,
    unsent: impl Fn(&NodeId, u64) -> bool,
) -> Option<(Vec<EncodedEvent>, Vec<Seal>)> {
    let Some(waits) = events
        .iter()
        .position(|e| e.context.iter().any(|(o, seq)| unsent(o, seq)))
    else {
        return Some((events, seals));
    };
    let before = events[waits].seq;
    let end = seals.iter().map(|s| s.seq).filter(|&q| q < before).max()?;
    events.retain(|e| e.seq <= end);
    seals.retain(|s| s.seq <= end);
    Some((events, seals))
}

/// `keys` in ascending order, starting after `cursor` and wrapping around.
fn round_robin<'a, V>(map: &'a BTreeMap<NodeId, V>, cursor: Option<&NodeId>) -> Vec<&'a NodeId> {
    match cursor {
        None => map.keys().collect(),
        Some(c) => map
            .range::<NodeId, _>((Bound::Excluded(c), Bound::Unbounded))
            .chain(map.range::<NodeId, _>(..=c))
            .map(|(k, _)| k)
            .collect(),
    }
}

/// Drops from `events` (one Events message: each origin's events one consecutive run) every
/// origin's events after its last seal among `seals`: only what an origin sealed may be applied
/// (the rest comes again, in a batch that ends at a seal). Returns how many were dropped.
pub fn trim_to_seals(events: &mut Vec<EncodedEvent>, seals: &[Seal]) -> usize {
    // Per origin, the last of its events present, then the last seal at or before it.
    let mut last_event: BTreeMap<NodeId, u64> = BTreeMap::new();
    for e in events.iter() {
        let l = last_event.entry(e.origin.clone()).or_insert(0);
        *l = (*l).max(e.seq);
    }
    let mut keep: BTreeMap<NodeId, u64> = BTreeMap::new();
    for s in seals {
        if last_event.get(&s.origin).is_some_and(|&l| s.seq <= l) {
            let k = keep.entry(s.origin.clone()).or_insert(0);
            *k = (*k).max(s.seq);
        }
    }
    let before = events.len();
    events.retain(|e| keep.get(&e.origin).is_some_and(|&s| e.seq <= s));
    before - events.len()
}

/// About how much memory `events` hold: the canonical bytes, the parsed copy of about as many
/// (key, value, metadata), up to about 80 bytes per causal context entry, and 128 for the rest.
pub(crate) fn approx_bytes(events: &[EncodedEvent]) -> usize {
    events
        .iter()
        .map(|e| 2 * e.encoded_len() + e.context.len() * 80 + 128)
        .sum()
}

/// Checks that each origin's events form one run of consecutive ascending sequence numbers.
fn check_contiguous(events: &[EncodedEvent]) -> Result<(), ProtocolError> {
    let mut done: std::collections::BTreeSet<&NodeId> = std::collections::BTreeSet::new();
    for pair in events.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        if a.origin == b.origin {
            if b.seq != a.seq.wrapping_add(1) {
                return Err(ProtocolError::NotContiguous {
                    origin: a.origin.clone(),
                    after: a.seq,
                    got: b.seq,
                });
            }
        } else {
            done.insert(&a.origin);
            if done.contains(&b.origin) {
                return Err(ProtocolError::OriginRepeated {
                    origin: b.origin.clone(),
                });
            }
        }
    }
    Ok(())
}

impl Replica {
    /// A replica for node `local`, with no peers and an empty local have (push the durable have
    /// with [`Replica::set_local_have`] before connecting peers).
    ///
    /// # Panics
    /// If `window_events`, `batch_events`, `apply_events` or `batch_bytes` is 0, or the fingerprint names a
    /// collection twice or a plugin twice within a collection.
    pub fn new(local: NodeId, mut config: ReplicaConfig) -> Replica {
        assert!(config.window_events > 0, "window_events must be positive");
        assert!(config.batch_events > 0, "batch_events must be positive");
        assert!(config.apply_events > 0, "apply_events must be positive");
        assert!(config.batch_bytes > 0, "batch_bytes must be positive");
        fingerprint::normalize(&mut config.fingerprint);
        Replica {
            local,
            config,
            local_have: Have::new(),
            have_version: 0,
            accepted: Have::new(),
            compacted: Have::new(),
            now: 0,
            delivered_by: BTreeMap::new(),
            stalled: BTreeMap::new(),
            peers: BTreeMap::new(),
            counters: BTreeMap::new(),
            outputs: VecDeque::new(),
            last_control: None,
            last_events: None,
            unreadable: BTreeMap::new(),
            unreadable_seals: BTreeMap::new(),
            interrupted: BTreeMap::new(),
            snapshot_ids: BTreeMap::new(),
            ack_before_apply: false,
            apply_duplicates: false,
        }
    }

    /// Turns on a deliberate bug (for the simulation's self-test).
    #[cfg(feature = "fault-injection")]
    #[doc(hidden)]
    pub fn inject_fault(&mut self, fault: Fault) {
        match fault {
            Fault::AckBeforeApply => self.ack_before_apply = true,
            Fault::ApplyDuplicates => self.apply_duplicates = true,
        }
    }

    /// This node's id.
    pub fn local(&self) -> &NodeId {
        &self.local
    }

    /// The durable local have, as last pushed.
    pub fn local_have(&self) -> &Have {
        &self.local_have
    }

    /// Takes in the node's durable per-origin have: call at start and after every durable
    /// commit (local writes) or apply. Cursors only move forward; lower values are ignored.
    pub fn set_local_have(&mut self, have: &Have) {
        let now = self.now;
        let mut grew = false;
        for (origin, &seq) in have {
            if seq <= have::get(&self.local_have, origin) {
                continue;
            }
            grew = true;
            // Progress: the tree still delivers this origin. All that the pruned peer
            // announced when the watch began: not stalled (a later announcement starts a new
            // watch).
            if let Some(stall) = self.stalled.get_mut(origin) {
                stall.since = now;
                if seq >= stall.target {
                    self.stalled.remove(origin);
                }
            }
        }
        if have::join(&mut self.local_have, have.iter().map(|(o, &s)| (o, s))) {
            self.have_version += 1;
        }
        if grew {
            for s in self.peers.values_mut().filter_map(|p| p.session.as_mut()) {
                s.gossip_due = true;
            }
        }
        have::join(&mut self.accepted, have.iter().map(|(o, &s)| (o, s)));
        for peer in self.peers.values_mut() {
            if let Some(s) = peer.session.as_mut().filter(|s| s.ack_owed) {
                s.ack_owed = false;
                s.request_ack(false);
            }
        }
    }

    /// Takes in the changelog's compacted floors (per origin, the highest sequence number
    /// removed): call at start and after every compaction or snapshot install. A peer that
    /// lacks events at or below a floor gets a snapshot.
    pub fn set_compacted(&mut self, compacted: &Have) {
        if have::join(&mut self.compacted, compacted.iter().map(|(o, &s)| (o, s))) {
            self.have_version += 1;
        }
    }

    /// Replaces the policy sent in Hellos and required of peers from now on (a reloaded
    /// config); sessions already up keep going.
    pub fn set_policy(&mut self, policy: Vec<(String, String)>) {
        self.config.policy = policy;
    }

    /// Replaces the limits messages are decoded against (a reloaded config that raised them).
    pub fn set_limits(&mut self, limits: crate::MessageLimits) {
        self.config.limits = limits;
    }

    /// Replaces the fingerprint sent in Hellos and compared with peers' from now on (a
    /// reloaded config); sessions already up keep going.
    ///
    /// # Panics
    /// If the fingerprint names a collection twice, or a collection lists a plugin twice.
    pub fn set_fingerprint(&mut self, mut fingerprint: Vec<CollectionFingerprint>) {
        fingerprint::normalize(&mut fingerprint);
        self.config.fingerprint = fingerprint;
    }

    /// The compacted floors, as last pushed.
    pub fn compacted(&self) -> &Have {
        &self.compacted
    }

    /// A session with `peer` opened (the transport authenticated it): our Hello is queued.
    /// Replaces any previous session with the same peer.
    ///
    /// # Panics
    /// If `peer` is this node.
    pub fn connected(&mut self, peer: &NodeId, now: u64) {
        assert!(*peer != self.local, "a node cannot peer with itself");
        self.counters.entry(peer.clone()).or_default();
        self.keep_interrupted(peer);
        let mut session = Session::new(now);
        session.next_snapshot_id = self.snapshot_ids.get(peer).copied().unwrap_or(0);
        let p = self.peers.entry(peer.clone()).or_default();
        if let Some(i) = p.installing.as_mut() {
            i.old_session = true;
        }
        p.session = Some(session);
    }

    /// Keeps what the session with `peer` was in the middle of (see [`Interrupted`]) before it
    /// ends, and where its snapshot ids got to.
    fn keep_interrupted(&mut self, peer: &NodeId) {
        let Some(s) = self.peers.get_mut(peer).and_then(|p| p.session.as_mut()) else {
            return;
        };
        self.snapshot_ids.insert(peer.clone(), s.next_snapshot_id);
        let Some(instance) = s.hello.as_ref().map(|h| h.instance) else {
            return;
        };
        let out = s.snapshot_out.take().or_else(|| s.resumable.take());
        let inbound = s.snapshot_in.filter(|&(_, next)| next != SNAPSHOT_DONE);
        if out.is_some() || inbound.is_some() {
            self.interrupted.insert(
                peer.clone(),
                Interrupted {
                    instance,
                    out,
                    inbound,
                },
            );
        } else {
            self.interrupted.remove(peer);
        }
    }

    /// The session with `peer` closed: its volatile state is dropped. An outstanding Apply of
    /// its events stays valid (apply it and report as usual).
    pub fn disconnected(&mut self, peer: &NodeId, _now: u64) {
        self.keep_interrupted(peer);
        self.unreadable_seals.remove(peer);
        if let Some(p) = self.peers.get_mut(peer) {
            p.session = None;
            if p.idle() {
                self.peers.remove(peer);
            }
        }
        // The peer's own events now come only by relays: graft every peer pruned for them.
        for (other, s) in self
            .peers
            .iter_mut()
            .filter_map(|(id, p)| Some((id, p.session.as_mut()?)))
        {
            if s.pruned.remove(peer) {
                s.graft_due.insert(peer.clone());
                self.counters.entry(other.clone()).or_default().grafts_sent += 1;
            }
        }
    }

    /// Takes in one message from `peer`. An error means the peer broke the protocol: disconnect
    /// it with the error as the reason (and then call [`Replica::disconnected`]).
    pub fn handle(
        &mut self,
        peer: &NodeId,
        message: Message,
        now: u64,
    ) -> Result<(), ProtocolError> {
        self.tick(now);
        let p = self
            .peers
            .get_mut(peer)
            .ok_or(ProtocolError::NotConnected)?;
        let (busy, idle) = (p.busy(), p.idle());
        // The page of this session being merged, if any.
        let installing = p
            .installing
            .filter(|i| !i.old_session)
            .map(|i| (i.id, i.page));
        let s = p.session.as_mut().ok_or(ProtocolError::NotConnected)?;
        s.last_message_ms = Some(now);
        // Everything but Hello and Bye needs the handshake done.
        let before_hello = match &message {
            Message::Hello(_) | Message::Bye { .. } => None,
            Message::Events { .. } => Some("events"),
            Message::Ack { .. } => Some("ack"),
            Message::Snapshot { .. } => Some("snapshot"),
            Message::SnapshotAck { .. } => Some("snapshot ack"),
            Message::Reconcile { .. } => Some("reconcile"),
            Message::Prune { .. } => Some("prune"),
            Message::Graft { .. } => Some("graft"),
            Message::Repair { .. } => Some("repair"),
        };
        if let Some(message) = before_hello.filter(|_| !s.ready()) {
            return Err(ProtocolError::BeforeHello { message });
        }
        match message {
            Message::Hello(hello) => {
                if s.ready() {
                    return Err(ProtocolError::DuplicateHello);
                }
                // A later version's peer speaks this one (see `MIN_PROTOCOL_VERSION`); an
                // earlier one below the minimum is refused (its Hello is, when decoded).
                if hello.protocol < MIN_PROTOCOL_VERSION {
                    return Err(ProtocolError::Version {
                        ours: PROTOCOL_VERSION,
                        theirs: hello.protocol,
                    });
                }
                if hello.node != *peer {
                    return Err(ProtocolError::WrongNode {
                        expected: peer.clone(),
                        got: hello.node,
                    });
                }
                let policy = fingerprint::policy_differences(&self.config.policy, &hello.policy);
                if !policy.is_empty() {
                    return Err(ProtocolError::PolicyDiffers {
                        differences: policy,
                    });
                }
                let found = fingerprint::differences(&self.config.fingerprint, &hello.fingerprint);
                let pausing: Vec<String> = found
                    .iter()
                    .filter(|d| d.pauses)
                    .map(|d| d.text.clone())
                    .collect();
                if !pausing.is_empty() {
                    return Err(ProtocolError::ResolversDiffer {
                        differences: fingerprint::at_most_reported(pausing),
                    });
                }
                for d in &found {
                    if let Some((collection, from_ms)) = &d.lacks_upgrade {
                        self.outputs.push_back(Output::UpgradeMissing {
                            peer: peer.clone(),
                            collection: collection.clone(),
                            from_ms: *from_ms,
                        });
                    }
                }
                let differences =
                    fingerprint::at_most_reported(found.into_iter().map(|d| d.text).collect());
                s.mismatches = differences.clone();
                s.start(hello.clone(), now);
                s.own_until = have::get(&self.local_have, peer);
                // The same process of the peer: the snapshots a lost connection interrupted
                // go on where they were (an install of its page handed out meanwhile is theirs).
                if let Some(i) = self.interrupted.remove(peer)
                    && i.instance == hello.instance
                {
                    // Only what is still needed: the peer below one of our floors, this node
                    // below one of the peer's.
                    if !s.refuses_snapshots()
                        && self
                            .compacted
                            .iter()
                            .any(|(o, &f)| have::get(&s.their_have, o) < f)
                    {
                        s.resumable = i.out;
                    }
                    let inbound = i.inbound.filter(|_| {
                        hello
                            .compacted
                            .iter()
                            .any(|(o, f)| have::get(&self.local_have, o) < *f)
                    });
                    s.snapshot_in = inbound;
                    if let (Some(install), Some((id, page))) = (p.installing.as_mut(), inbound)
                        && install.id == id
                        && install.page == page
                        && install.instance == Some(i.instance)
                    {
                        install.old_session = false;
                    }
                }
                if !differences.is_empty() {
                    self.outputs.push_back(Output::Mismatch {
                        peer: peer.clone(),
                        differences,
                    });
                }
                self.outputs.push_back(Output::PeerReady {
                    peer: peer.clone(),
                    hello,
                });
                self.prune_direct(peer);
            }
            Message::Events {
                mut events,
                seals,
                certs,
            } => {
                check_contiguous(&events)?;
                trim_to_seals(&mut events, &seals);
                self.counters
                    .entry(peer.clone())
                    .or_default()
                    .events_received += events.len() as u64;
                let mut batch = Batch {
                    events,
                    seals,
                    certs,
                };
                if busy {
                    // Copies of what waits here already (the peer went back while the apply
                    // ran, a slow disk): dropped now, not queued twice.
                    let copies = s.drop_queued_copies(&mut batch, &self.accepted);
                    self.counters
                        .entry(peer.clone())
                        .or_default()
                        .duplicates_received += copies;
                }
                if batch.events.is_empty() {
                } else if busy {
                    s.queued_events += batch.events.len();
                    s.queued_bytes += batch.approx_bytes();
                    for e in &batch.events {
                        have::raise(&mut s.queued_high, &e.origin, e.seq);
                    }
                    s.queued.push_back(batch);
                } else {
                    self.receive(peer, vec![batch], now);
                }
            }
            Message::Prune { origins } => {
                // A prune of our own events is ignored (we are the root of their tree). The set
                // holds at most as many origins as a have may.
                for o in origins.into_iter().filter(|o| *o != self.local) {
                    if s.lazy.len() >= MAX_ORIGINS {
                        break;
                    }
                    s.lazy.insert(o);
                }
            }
            Message::Graft { origins } => {
                for o in origins {
                    s.lazy.remove(&o);
                }
                s.idle_at = None;
            }
            Message::Ack { have, rewind } => {
                // A pruned peer announcing more of an origin than we hold: watch for a stall.
                for (o, seq) in &have {
                    if s.pruned.contains(o) && *seq > have::get(&self.accepted, o) {
                        self.stalled
                            .entry(o.clone())
                            .or_insert(Stall::new(now, *seq));
                    }
                }
                let deferred = s.rewinds_deferred;
                let rewind_gap = s.rewind_gap(self.config.retransmit_after_ms);
                if s.on_ack(&have, rewind, rewind_gap, now) {
                    self.outputs.push_back(Output::Acked {
                        peer: peer.clone(),
                        have: s.acked.clone(),
                    });
                }
                if s.rewinds_deferred > deferred {
                    self.counters
                        .entry(peer.clone())
                        .or_default()
                        .rewinds_deferred += 1;
                }
                // A snapshot the peer no longer needs (it got the events elsewhere meanwhile,
                // and declined the snapshot): cancelled.
                let caught_up = s.snapshot_out.as_ref().is_some_and(|out| {
                    out.floors
                        .iter()
                        .all(|(o, &floor)| have::get(&s.acked, o) >= floor)
                });
                if caught_up {
                    s.snapshot_out = None;
                    s.idle_at = None;
                }
            }
            Message::Bye { reason } => s.bye = Some(reason),
            Message::Snapshot {
                id,
                page,
                floors,
                versions,
                proofs,
                done,
                have,
                seals,
                certs,
            } => {
                let accept = match s.snapshot_in {
                    // A late copy of a page of an earlier snapshot (ids grow per session): the
                    // peer moved on; taken for a new snapshot it would stall the current one.
                    Some((cur, _)) if id < cur => false,
                    Some((cur, next)) if cur == id && page < next => {
                        // A page we merged already (our SnapshotAck was lost): confirm again.
                        s.snapshot_ack_due = Some((id, page));
                        false
                    }
                    // The next page, unless it is the one being merged (its confirmation
                    // follows the merge).
                    Some((cur, next)) if cur == id => {
                        next != SNAPSHOT_DONE && page == next && installing != Some((id, page))
                    }
                    _ => page == 0,
                };
                // A new snapshot only when this node is below one of the peer's compacted
                // floors: nobody may replace what this node holds unasked.
                let new_snapshot = accept && s.snapshot_in.is_none_or(|(cur, _)| cur != id);
                if new_snapshot {
                    let local_have = &self.local_have;
                    let behind = floors
                        .iter()
                        .any(|(o, floor)| have::get(local_have, o) < *floor);
                    if !behind {
                        // Unasked (or no longer needed): not merged. Our Ack tells the peer
                        // what we hold, which cancels an honest peer's snapshot.
                        s.request_ack(false);
                        self.outputs.push_back(Output::SnapshotDeclined {
                            peer: peer.clone(),
                            id,
                            reason: format!(
                                "snapshot {id} declined: this node holds every origin up to the sender's compacted floors {floors:?}, so it needs no snapshot"
                            ),
                        });
                        return Ok(());
                    }
                }
                if accept && s.pending_page.is_none() {
                    s.snapshot_in = Some((id, page));
                    // The peer's copy comes first (or a later page: ours is not needed).
                    s.retry_page = None;
                    let page = PendingPage {
                        id,
                        page,
                        versions,
                        proofs,
                        have: done.then(|| have.into_iter().collect()),
                        seals,
                        certs,
                    };
                    if !idle {
                        s.pending_page = Some(page);
                    } else {
                        self.install(peer, page);
                    }
                }
            }
            // Anti-entropy is the caller's (see `reconcile`): the core only checks that it comes
            // after the handshake.
            Message::Reconcile { .. } | Message::Repair { .. } => {}
            Message::SnapshotAck { id, page } => {
                let Some(out) = s.snapshot_out.as_mut() else {
                    return Ok(());
                };
                if out.id != id || out.page != page || out.sent_at.is_none() {
                    return Ok(());
                }
                out.resumed = false;
                if out.last {
                    // The peer durably holds everything the snapshot reflects.
                    let have = have::to_wire(&out.have);
                    s.snapshot_out = None;
                    if s.on_ack(&have, false, 0, now) {
                        self.outputs.push_back(Output::Acked {
                            peer: peer.clone(),
                            have: s.acked.clone(),
                        });
                    }
                } else {
                    out.page += 1;
                    out.start = out.next.take();
                    out.versions = None;
                    out.sent_at = None;
                    out.moved_ms = now;
                }
            }
        }
        Ok(())
    }

    /// A session with `peer` is ready: its events come on its own link, so no other peer needs
    /// to push them to us, and the new link needs to push no origin we have a link with.
    fn prune_direct(&mut self, peer: &NodeId) {
        let direct: Vec<NodeId> = self
            .peers
            .iter()
            .filter(|(id, p)| *id != peer && p.session.as_ref().is_some_and(Session::ready))
            .map(|(id, _)| id.clone())
            .collect();
        for (id, p) in &mut self.peers {
            let Some(s) = p.session.as_mut().filter(|s| s.ready()) else {
                continue;
            };
            let origins: Vec<&NodeId> = if id == peer {
                direct.iter().collect()
            } else {
                vec![peer]
            };
            for origin in origins {
                if s.pruned.insert(origin.clone()) {
                    s.graft_due.remove(origin);
                    s.prune_due.insert(origin.clone());
                    self.counters.entry(id.clone()).or_default().prunes_sent += 1;
                }
            }
        }
    }

    /// Hands a snapshot page of `peer` out to merge. The peer has nothing outstanding.
    fn install(&mut self, peer: &NodeId, page: PendingPage) {
        self.install_try(peer, page, 0);
    }

    fn install_try(&mut self, peer: &NodeId, page: PendingPage, tries: u32) {
        let Some(p) = self.peers.get_mut(peer) else {
            return;
        };
        debug_assert!(p.idle());
        let instance = p
            .session
            .as_ref()
            .and_then(|s| s.hello.as_ref())
            .map(|h| h.instance);
        p.installing = Some(Installing {
            id: page.id,
            page: page.page,
            last: page.have.is_some(),
            old_session: false,
            instance,
        });
        p.installing_copy = Some((page.clone(), tries));
        self.outputs.push_back(Output::InstallSnapshot {
            peer: peer.clone(),
            versions: page.versions,
            proofs: page.proofs,
            have: page.have,
            seals: page.seals,
            certs: page.certs,
        });
    }

    /// The caller durably merged the last snapshot page of `peer` (and pushed the new local
    /// have and compacted floors first). Confirms it and releases what waited behind it.
    pub fn installed(&mut self, peer: &NodeId, now: u64) {
        let Some(p) = self.peers.get_mut(peer) else {
            return;
        };
        let Some(done) = p.installing.take() else {
            return;
        };
        p.installing_copy = None;
        p.last_apply_error = None;
        // A page of a snapshot whose connection was lost: the next session resumes after it.
        if let Some(i) = self.interrupted.get_mut(peer)
            && i.inbound == Some((done.id, done.page))
            && done.instance == Some(i.instance)
        {
            i.inbound = (!done.last).then(|| (done.id, done.page.saturating_add(1)));
        }
        let Some(s) = p.session.as_mut() else {
            self.peers.remove(peer);
            return;
        };
        let Installing { id, page, last, .. } = done;
        if done.old_session {
            // Nothing to confirm on this session; the peer learns the new have from our Acks.
            if last {
                s.request_ack(false);
            }
            self.release_queued(peer, now);
            return;
        }
        if s.snapshot_in == Some((id, page)) {
            // After the last page, every page of this snapshot is one we merged (a resent
            // page is confirmed again); a new snapshot has a new id.
            // (`page` is below SNAPSHOT_DONE: a page numbered so is never accepted.)
            s.snapshot_in = Some((
                id,
                if last {
                    SNAPSHOT_DONE
                } else {
                    page.saturating_add(1)
                },
            ));
        }
        s.snapshot_ack_due = Some((id, page));
        if last {
            s.request_ack(false);
        }
        self.release_queued(peer, now);
    }

    /// Merging the last snapshot page of `peer` failed (nothing of it is durable): it is merged
    /// again after a wait (or when the peer resends it first, as it does when its SnapshotAck
    /// does not come).
    pub fn install_failed(&mut self, peer: &NodeId, reason: &str, now: u64) {
        let Some(p) = self.peers.get_mut(peer) else {
            return;
        };
        let Some(failed) = p.installing.take() else {
            return;
        };
        let copy = p.installing_copy.take();
        p.last_apply_error = Some(reason.to_owned());
        let Some(s) = p.session.as_mut() else {
            self.peers.remove(peer);
            return;
        };
        // Only a page of the snapshot this session still expects: one handed out on a session
        // since replaced names nothing here.
        if let Some((page, tries)) = copy
            && !failed.old_session
            && s.snapshot_in == Some((failed.id, failed.page))
        {
            let wait = INSTALL_RETRY_MS
                .saturating_mul(1 << tries.min(5))
                .min(INSTALL_RETRY_MAX_MS);
            s.retry_page = Some((page, now.saturating_add(wait), tries.saturating_add(1)));
        }
        self.release_queued(peer, now);
    }

    /// Runs received events through the duplicate and gap filters; hands what continues the
    /// accepted cursors out as one Apply. The peer is not busy (fewer than
    /// [`APPLIES_IN_FLIGHT`] Applies outstanding, no InstallSnapshot).
    fn receive(&mut self, peer: &NodeId, batches: Vec<Batch>, now: u64) {
        let (apply_duplicates, ack_before_apply) = (self.apply_duplicates, self.ack_before_apply);
        let Some(p) = self.peers.get_mut(peer) else {
            return;
        };
        debug_assert!(!p.busy());
        let Some(s) = p.session.as_mut() else { return };
        debug_assert!(s.pending_page.is_none());
        let retransmit_after = s
            .retransmit_after(self.config.retransmit_after_ms)
            .min(HELD_BACK_WAIT_MAX_MS);
        let counters = self.counters.entry(peer.clone()).or_default();
        let mut out = Vec::new();
        let mut handed = Have::new();
        // Per origin, the highest duplicate dropped; and the origins with a gap.
        let mut duplicates = Have::new();
        let mut gaps: Vec<NodeId> = Vec::new();
        let mut seals: Vec<Seal> = Vec::new();
        let mut certs: Vec<(NodeId, Vec<u8>)> = Vec::new();
        let mut events = Vec::new();
        for b in batches {
            events.extend(b.events);
            seals.extend(b.seals);
            certs.extend(b.certs);
        }
        // Per origin, the first sequence number handed out (with `handed`, the seals' range).
        let mut first: Have = Have::new();
        for event in events {
            let accepted = have::get(&self.accepted, &event.origin);
            if event.seq <= accepted && !apply_duplicates {
                have::raise(&mut duplicates, &event.origin, event.seq);
                counters.duplicates_received += 1;
            } else if event.seq > accepted.saturating_add(1) {
                // Later events of this origin in the batch are beyond the gap too.
                if gaps.last() != Some(&event.origin) {
                    gaps.push(event.origin.clone());
                }
            } else {
                have::raise(&mut self.accepted, &event.origin, event.seq);
                have::raise(&mut handed, &event.origin, event.seq);
                first.entry(event.origin.clone()).or_insert(event.seq);
                s.rewinds.remove(&event.origin);
                out.push(event);
            }
        }
        for origin in gaps {
            // Ask once per gap; ask again only if the rewind seems lost, each time waiting
            // twice as long. A gap after the origin moved on (another peer filled the last
            // one) is a new gap.
            let accepted = have::get(&self.accepted, &origin);
            let wait = match s.rewinds.get(&origin).copied() {
                Some((_, _, at_accepted)) if at_accepted < accepted => Some(retransmit_after),
                None => Some(retransmit_after),
                Some((at, wait, _)) => (now >= at.saturating_add(wait))
                    .then(|| wait.saturating_mul(2).min(HELD_BACK_WAIT_MAX_MS)),
            };
            // At most MAX_ORIGINS gaps are remembered (a peer sending made-up origins must not
            // grow this map): past that, a gap on this peer's session waits for the resend
            // timer (the flooding peer slows only its own session).
            if let Some(wait) = wait
                && (s.rewinds.len() < MAX_ORIGINS || s.rewinds.contains_key(&origin))
            {
                s.rewinds.insert(origin, (now, wait, accepted));
                s.request_ack(true);
            }
        }
        // An origin of which the peer sent only what another peer delivered: that path is
        // faster, so this peer stops pushing it (never the peer's own events on its own link).
        for origin in handed.keys() {
            self.delivered_by.insert(origin.clone(), peer.clone());
        }
        for origin in duplicates.keys() {
            let elsewhere = self.delivered_by.get(origin).is_some_and(|by| by != peer);
            if origin != peer
                && elsewhere
                && !handed.contains_key(origin)
                && s.pruned.insert(origin.clone())
            {
                s.graft_due.remove(origin);
                s.prune_due.insert(origin.clone());
                counters.prunes_sent += 1;
            }
        }
        if !duplicates.is_empty() {
            let covered = duplicates
                .iter()
                .all(|(o, &seq)| have::get(&self.local_have, o) >= seq);
            // Duplicates need an ack too, or the sender would resend them until it times out.
            if !covered {
                s.ack_owed = true;
            } else if out.is_empty() {
                s.request_ack(false);
            }
        }
        if !out.is_empty() {
            if ack_before_apply {
                s.request_ack(false);
            }
            seals.retain(|seal| {
                first
                    .get(&seal.origin)
                    .is_some_and(|&f| seal.seq >= f && seal.seq <= have::get(&handed, &seal.origin))
            });
            certs.sort_by(|a, b| a.0.cmp(&b.0));
            certs.dedup_by(|a, b| a.0 == b.0);
            p.applying.push_back(handed);
            self.outputs.push_back(Output::Apply {
                peer: peer.clone(),
                events: out,
                seals,
                certs,
            });
        }
    }

    /// The caller durably applied the oldest outstanding Apply of `peer`'s events (and pushed
    /// the new local have first). Acknowledges it and releases the peer's queued events.
    pub fn applied(&mut self, peer: &NodeId, now: u64) {
        let Some(p) = self.peers.get_mut(peer) else {
            return;
        };
        let Some(handed) = p.applying.pop_front() else {
            return;
        };
        p.last_apply_error = None;
        let idle = p.idle();
        let applying = !p.applying.is_empty();
        match p.session.as_mut() {
            Some(s) => {
                // Origins the caller applied less of than it was handed (it held events back
                // until what they depend on arrives, maybe later in this very batch): the peer
                // is asked to send them again. Else, with nothing more of the origin to show a
                // gap, they came back only when the link fell silent (the resend timer), which
                // a busy link never does. Once per have here; while the have stays, asked again
                // by `handle_timeout` with a doubling wait (a collection held back for long
                // must not have its events sent again and again).
                let mut short = false;
                for (origin, &seq) in &handed {
                    let held = have::get(&self.local_have, origin);
                    // At most MAX_ORIGINS are remembered (a peer sending made-up origins,
                    // all refused, must not grow this map); past that, held-back events of
                    // this peer's session wait for the resend timer or a reload's retry.
                    let room = s.held_back_asked.len() < MAX_ORIGINS
                        || s.held_back_asked.contains_key(origin);
                    let asked = s
                        .held_back_asked
                        .get(origin)
                        .is_some_and(|a| a.held == held && !a.while_applying);
                    if held < seq && room && !asked {
                        let wait = s
                            .retransmit_after(self.config.retransmit_after_ms)
                            .min(HELD_BACK_WAIT_MAX_MS);
                        s.held_back_asked.insert(
                            origin.clone(),
                            HeldBackAsk {
                                held,
                                at: now,
                                wait,
                                have_version: self.have_version,
                                while_applying: applying,
                            },
                        );
                        short = true;
                    }
                }
                s.request_ack(short);
            }
            None if idle => {
                self.peers.remove(peer);
            }
            None => {}
        }
        // The caller may have applied less than it was handed (it refuses events it cannot
        // admit, and their origin's later ones): what was not applied must be accepted again
        // when a peer resends it.
        self.recompute_accepted();
        self.release_queued(peer, now);
    }

    /// `accepted` from what is durable plus what outstanding Applies still hand out.
    fn recompute_accepted(&mut self) {
        self.accepted = self.local_have.clone();
        for h in self.peers.values().flat_map(|p| &p.applying) {
            have::join(&mut self.accepted, h.iter().map(|(o, &s)| (o, s)));
        }
        // Who delivered an origin matters only for origins this node holds or is applying:
        // those of events refused whole (made-up origins a peer sent) are forgotten.
        let accepted = &self.accepted;
        self.delivered_by.retain(|o, _| accepted.contains_key(o));
    }

    /// Hands a waiting snapshot page of `peer` (once nothing of its is outstanding), else its
    /// next queued batches (up to `apply_events` events, at least one batch per Apply), to the
    /// store, until the peer is busy or nothing waits (batches that hold only duplicates
    /// produce no Apply).
    fn release_queued(&mut self, peer: &NodeId, now: u64) {
        let cap = self.config.apply_events;
        loop {
            let Some(p) = self.peers.get_mut(peer) else {
                return;
            };
            if p.busy() {
                return;
            }
            let Some(s) = p.session.as_mut() else { return };
            // Not busy with a page waiting: nothing of the peer's is outstanding (see `busy`).
            if let Some(page) = s.pending_page.take() {
                self.install(peer, page);
                return;
            }
            if s.queued.is_empty() {
                return;
            }
            let mut batches = Vec::new();
            let mut n = 0;
            let mut bytes = 0;
            while let Some(front) = s.queued.front() {
                if !batches.is_empty() && n + front.events.len() > cap {
                    break;
                }
                n += front.events.len();
                bytes += front.approx_bytes();
                batches.extend(s.queued.pop_front());
            }
            s.queued_events -= n;
            s.queued_bytes = s.queued_bytes.saturating_sub(bytes);
            if s.queued.is_empty() {
                s.queued_high.clear();
            }
            self.receive(peer, batches, now);
        }
    }

    /// Applying the oldest outstanding Apply of `peer`'s events failed (nothing of it is
    /// durable). Its events are forgotten and the peer is asked to resend from the local have
    /// (a later outstanding Apply of the peer fails too: the caller refuses it unapplied).
    pub fn apply_failed(&mut self, peer: &NodeId, reason: &str, _now: u64) {
        let Some(p) = self.peers.get_mut(peer) else {
            return;
        };
        if p.applying.pop_front().is_none() {
            return;
        }
        p.last_apply_error = Some(reason.to_owned());
        let idle = p.idle();
        match p.session.as_mut() {
            Some(s) => {
                // Queued events were sent after the failed ones: the rewind resends them too.
                s.queued.clear();
                s.queued_events = 0;
                s.queued_bytes = 0;
                s.queued_high.clear();
                s.rewinds.clear();
                s.request_ack(true);
            }
            None if idle => {
                self.peers.remove(peer);
            }
            None => {}
        }
        self.release_queued(peer, _now);
        self.recompute_accepted();
    }

    /// Fires the go-back-N timers that are due.
    pub fn handle_timeout(&mut self, now: u64) {
        self.tick(now);
        // Snapshot pages whose merge failed, due again (once nothing of the peer's is merging).
        let due: Vec<NodeId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.idle())
            .filter(|(_, p)| {
                p.session
                    .as_ref()
                    .and_then(|s| s.retry_page.as_ref())
                    .is_some_and(|(_, at, _)| now >= *at)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for peer in due {
            let retry = self
                .peers
                .get_mut(&peer)
                .and_then(|p| p.session.as_mut())
                .and_then(|s| s.retry_page.take());
            if let Some((page, _, tries)) = retry {
                self.install_try(&peer, page, tries);
            }
        }
        let after = self.config.retransmit_after_ms;
        let (local_have, have_version) = (&self.local_have, self.have_version);
        for s in self.peers.values_mut().filter_map(|p| p.session.as_mut()) {
            let rewind_gap = s.rewind_gap(after);
            if s.deadline(after).is_some_and(|d| now >= d) {
                s.go_back(now);
            }
            // Held-back events still not applied: ask again (those of an origin whose have
            // moved since are forgotten; `applied` asks anew if they are held back again).
            s.held_back_asked
                .retain(|origin, a| have::get(local_have, origin) == a.held);
            let mut ask = false;
            for a in s.held_back_asked.values_mut().filter(|a| now >= a.due()) {
                a.at = now;
                if a.have_version != have_version {
                    a.have_version = have_version;
                    a.wait = a.wait.saturating_mul(2).min(HELD_BACK_WAIT_MAX_MS);
                    ask = true;
                }
            }
            if ask {
                s.request_ack(true);
            }
            s.rewind_if_due(rewind_gap, now);
            if s.snapshot_deadline(after).is_some_and(|d| now >= d) {
                // Send the unconfirmed page again; a resumed snapshot the peer did not take up
                // starts again as a new one.
                if s.snapshot_out.as_ref().is_some_and(|o| o.resumed) {
                    s.snapshot_out = None;
                } else if let Some(out) = s.snapshot_out.as_mut() {
                    out.sent_at = None;
                }
            }
        }
    }

    /// A reload may have lifted what held events back (a halt, a pause for a missing upgrade),
    /// which moves no have: each peer that sent held-back events is asked for them again now.
    pub fn retry_held_back(&mut self, now: u64) {
        let have_version = self.have_version;
        for s in self.peers.values_mut().filter_map(|p| p.session.as_mut()) {
            if s.held_back_asked.is_empty() {
                continue;
            }
            for a in s.held_back_asked.values_mut() {
                a.at = now;
                a.have_version = have_version;
            }
            s.request_ack(true);
        }
    }

    /// When [`Replica::handle_timeout`] next has something to do.
    pub fn poll_timeout(&self) -> Option<u64> {
        let every = self.config.announce_every_ms;
        let sessions = self.peers.values().filter_map(|p| p.session.as_ref());
        let after = self.config.retransmit_after_ms;
        let retransmit = sessions
            .clone()
            .flat_map(|s| {
                [
                    s.deadline(after),
                    s.snapshot_deadline(after),
                    s.rewind_deadline(s.rewind_gap(after)),
                    s.held_back_asked.values().map(HeldBackAsk::due).min(),
                ]
            })
            .flatten();
        // A page to merge again, once nothing of its peer's is merging (the merge's end wakes
        // the caller anyway).
        let retry = self.peers.values().filter(|p| p.idle()).filter_map(|p| {
            p.session
                .as_ref()?
                .retry_page
                .as_ref()
                .map(|(_, at, _)| *at)
        });
        let gossip = sessions
            .filter(|s| s.ready() && s.gossip_due)
            .map(|s| s.last_ack_ms.saturating_add(every));
        let graft_after = self.config.graft_after_ms;
        let graft = self
            .stalled
            .iter()
            .map(|(origin, stall)| stall.due(graft_after, relayed(&self.peers, origin)));
        retransmit.chain(retry).chain(gossip).chain(graft).min()
    }

    /// Takes in the time: grafts back, for each origin stalled `graft_after_ms`, the pruned
    /// peer that announces most of it (one per origin and period, so a dead one is passed by).
    fn tick(&mut self, now: u64) {
        self.now = self.now.max(now);
        let now = self.now;
        let graft_after = self.config.graft_after_ms;
        let Replica {
            stalled,
            peers,
            accepted,
            counters,
            ..
        } = self;
        // A pruned peer known to hold more of an origin than this node accepted starts the
        // watch too, whenever that became so (a prune after the peer's last Ack, or accepted
        // falling back when the caller held events back), not only on an Ack arriving then.
        for s in peers.values().filter_map(|p| p.session.as_ref()) {
            for origin in &s.pruned {
                let announced = have::get(&s.their_have, origin);
                if !stalled.contains_key(origin) && announced > have::get(accepted, origin) {
                    stalled.insert(origin.clone(), Stall::new(now, announced));
                }
            }
        }
        stalled.retain(|origin, stall| {
            let held = have::get(accepted, origin);
            // The pruned peer announcing the most, among those not tried yet for this watch
            // (once all were, they take turns again).
            let best = |skip: &BTreeSet<NodeId>| {
                peers
                    .iter()
                    .filter_map(|(id, p)| Some((id, p.session.as_ref()?)))
                    .filter(|(id, s)| s.pruned.contains(origin) && !skip.contains(*id))
                    .map(|(id, s)| (have::get(&s.their_have, origin), id))
                    .filter(|&(seq, _)| seq > held)
                    .max()
            };
            let Some((announced, id)) = best(&stall.tried).or_else(|| best(&BTreeSet::new()))
            else {
                return false;
            };
            if now >= stall.due(graft_after, relayed(peers, origin)) {
                let id = id.clone();
                let mut tried = std::mem::take(&mut stall.tried);
                tried.insert(id.clone());
                // Every candidate tried: they take turns again.
                if best(&tried).is_none() {
                    tried.clear();
                }
                if let Some(s) = peers.get_mut(&id).and_then(|p| p.session.as_mut()) {
                    s.pruned.remove(origin);
                    s.prune_due.remove(origin);
                    s.graft_due.insert(origin.clone());
                }
                counters.entry(id).or_default().grafts_sent += 1;
                *stall = Stall {
                    tried,
                    ..Stall::new(now, announced)
                };
            }
            true
        });
    }

    /// The next output for the caller, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// The next message to send, if any: control messages (Hello, Ack) first, then Events
    /// batches, round-robin over peers and, within a peer, over origins.
    pub fn poll_transmit(
        &mut self,
        now: u64,
        log: &impl Log,
    ) -> Result<Option<(NodeId, Message)>, LogError> {
        self.tick(now);
        let gossip_every = self.config.announce_every_ms;
        for s in self.peers.values_mut().filter_map(|p| p.session.as_mut()) {
            if s.ready() && s.gossip_due && now >= s.last_ack_ms.saturating_add(gossip_every) {
                s.gossip_due = false;
                s.request_ack(false);
            }
        }
        if let Some(m) = self.next_control(now, log)? {
            return Ok(Some(m));
        }
        if let Some(m) = self.next_snapshot_page(now, log)? {
            return Ok(Some(m));
        }
        let (window, version) = (self.config.window_events, self.have_version);
        let after = self.config.retransmit_after_ms;
        for s in self.peers.values_mut().filter_map(|p| p.session.as_mut()) {
            let stalled_after = s.retransmit_after(after);
            s.note_stalled(now, stalled_after);
        }
        let order: Vec<NodeId> = round_robin(&self.peers, self.last_events.as_ref())
            .into_iter()
            .filter(|p| {
                self.peers[*p].session.as_ref().is_some_and(|s| {
                    s.ready()
                        && !s.send_blocked
                        && s.window_in_flight() < window
                        && s.idle_at != Some(version)
                })
            })
            .cloned()
            .collect();
        for peer in order {
            if let Some(message) = self.next_batch(&peer, now, log)? {
                self.last_events = Some(peer.clone());
                return Ok(Some((peer, message)));
            }
        }
        // A peer just found behind a compacted floor: its first page goes now (nothing else
        // would wake the caller for it).
        self.next_snapshot_page(now, log)
    }

    fn next_control(
        &mut self,
        now: u64,
        log: &impl Log,
    ) -> Result<Option<(NodeId, Message)>, LogError> {
        let due = |p: &Peer| {
            p.session.as_ref().is_some_and(|s| {
                s.hello_due
                    || s.ack_due.is_some()
                    || s.snapshot_ack_due.is_some()
                    || !s.prune_due.is_empty()
                    || !s.graft_due.is_empty()
            })
        };
        if !self.peers.values().any(due) {
            return Ok(None);
        }
        let Some(peer) = round_robin(&self.peers, self.last_control.as_ref())
            .into_iter()
            .find(|p| due(&self.peers[*p]))
            .cloned()
        else {
            return Ok(None);
        };
        // A Hello proves what it says of the peer's own events with the peer's seal there.
        let hello_due = self.peers[&peer]
            .session
            .as_ref()
            .is_some_and(|s| s.hello_due);
        self.last_control = Some(peer.clone());
        // A seal that cannot be read leaves the claim unproven (the peer takes it as none),
        // and the Hello still goes: left due, it would come first at every call, and no
        // batch would go to any peer, nor this Hello (the peer closes a silent link).
        let your_seal = match have::get(&self.local_have, &peer) {
            held if hello_due && held > 0 => match log.seal_at(&peer, held) {
                Ok(seal) => {
                    self.unreadable_seals.remove(&peer);
                    seal
                }
                Err(e) => {
                    self.unreadable_seals.insert(
                        peer.clone(),
                        format!("its seal at {held}, for the Hello: {e}"),
                    );
                    None
                }
            },
            _ => None,
        };
        let Some(s) = self.peers.get_mut(&peer).and_then(|p| p.session.as_mut()) else {
            return Ok(None);
        };
        let message = if s.hello_due {
            s.hello_due = false;
            Message::Hello(Hello {
                protocol: PROTOCOL_VERSION,
                node: self.local.clone(),
                instance: self.config.instance,
                fingerprint: self.config.fingerprint.clone(),
                have: have::to_wire(&self.local_have),
                compacted: have::to_wire(&self.compacted),
                policy: self.config.policy.clone(),
                your_seal,
            })
        } else if let Some((id, page)) = s.snapshot_ack_due.take() {
            Message::SnapshotAck { id, page }
        } else if !s.prune_due.is_empty() {
            Message::Prune {
                origins: std::mem::take(&mut s.prune_due).into_iter().collect(),
            }
        } else if !s.graft_due.is_empty() {
            Message::Graft {
                origins: std::mem::take(&mut s.graft_due).into_iter().collect(),
            }
        } else {
            let rewind = s.ack_due.take().unwrap_or(false);
            s.last_ack_ms = now;
            // This Ack carries our whole have: no separate news needed.
            s.gossip_due = false;
            // The deliberate bug acknowledges what is merely handed out.
            let have = if self.ack_before_apply {
                &self.accepted
            } else {
                &self.local_have
            };
            Message::Ack {
                have: have::to_wire(have),
                rewind,
            }
        };
        Ok(Some((peer, message)))
    }

    /// The next snapshot page for some peer: one whose snapshot page is not in flight.
    fn next_snapshot_page(
        &mut self,
        now: u64,
        log: &impl Log,
    ) -> Result<Option<(NodeId, Message)>, LogError> {
        let limits = &self.config.limits;
        let max_events = self.config.batch_events.min(limits.max_events_per_batch);
        for (peer, p) in &mut self.peers {
            let Some(out) = p
                .session
                .as_mut()
                .filter(|s| s.ready() && !s.send_blocked)
                .and_then(|s| s.snapshot_out.as_mut())
                .filter(|o| o.sent_at.is_none())
            else {
                continue;
            };
            let page = match &out.versions {
                // A resend: the page as first read (see `SnapshotOut::versions`).
                Some(page) => page.clone(),
                None => {
                    let read =
                        log.state_page(out.start.as_ref(), max_events, self.config.batch_bytes);
                    let mut page = match read {
                        Ok(page) => page,
                        Err(e) => {
                            // One peer's page that cannot be read must not stop every other
                            // peer's events: it counts as sent, so it is read again after the
                            // resend interval, and the peer's status says why.
                            out.sent_at = Some(now);
                            p.last_send_error = Some(format!("reading a snapshot page: {e}"));
                            continue;
                        }
                    };
                    // The state may hold this node's own writes not yet synced (periodic
                    // durability): a peer must never hold them before they are durable here
                    // (a crash would issue their sequence numbers again). They come later as
                    // events.
                    let durable = have::get(&self.local_have, &self.local);
                    let unsynced = |o: &NodeId, seq: u64| *o == self.local && seq > durable;
                    if page.versions.iter().any(|v| unsynced(&v.origin, v.seq)) {
                        let (versions, proofs) = std::mem::take(&mut page.versions)
                            .into_iter()
                            .zip(std::mem::take(&mut page.proofs))
                            .filter(|(v, _)| !unsynced(&v.origin, v.seq))
                            .unzip();
                        page.versions = versions;
                        page.proofs = proofs;
                    }
                    page.seals.retain(|seal| !unsynced(&seal.origin, seal.seq));
                    out.last = page.next.is_none();
                    out.next = page.next.clone();
                    out.versions = Some(page.clone());
                    out.page_read_ms = now;
                    page
                }
            };
            out.sent_at = Some(now);
            let StatePage {
                versions,
                proofs,
                mut seals,
                ..
            } = page;
            // The last page proves its have with each origin's seal there; an origin without
            // one (there is always one at the head, barring a store bug) is left out, and the
            // peer gets its events as events instead.
            if out.last {
                let mut proven = Have::new();
                for (origin, &seq) in &out.have {
                    // (A seal that cannot be read is as one missing.)
                    if let Ok(Some(seal)) = log.seal_at(origin, seq) {
                        if !seals
                            .iter()
                            .any(|s| s.origin == seal.origin && s.seq == seq)
                        {
                            seals.push(seal);
                        }
                        proven.insert(origin.clone(), seq);
                    }
                }
                out.have = proven;
            }
            let certs = crate::log::certs_for_seals(log, &seals);
            p.last_send_error = None;
            self.counters
                .entry(peer.clone())
                .or_default()
                .snapshot_pages_sent += 1;
            let message = Message::Snapshot {
                id: out.id,
                page: out.page,
                floors: have::to_wire(&out.floors),
                versions,
                proofs,
                done: out.last,
                have: if out.last {
                    have::to_wire(&out.have)
                } else {
                    Vec::new()
                },
                seals,
                certs,
            };
            return Ok(Some((peer.clone(), message)));
        }
        Ok(None)
    }

    /// The next Events batch for `peer`, if it is ready, its window has room and we hold events
    /// it lacks.
    fn next_batch(
        &mut self,
        peer: &NodeId,
        now: u64,
        log: &impl Log,
    ) -> Result<Option<Message>, LogError> {
        let Replica {
            local,
            config,
            local_have,
            compacted,
            have_version,
            peers,
            unreadable,
            counters,
            ..
        } = self;
        let Some(s) = peers.get_mut(peer).and_then(|p| p.session.as_mut()) else {
            return Ok(None);
        };
        // Everything held, but not the origins the peer pruned (this node's own never are),
        // and of the peer's own events only what it may have lost.
        let sendable = |s: &Session, o: &NodeId| {
            if o == peer {
                local_have[o].min(s.own_until)
            } else if o != local && s.lazy.contains(o) {
                0
            } else {
                local_have[o]
            }
        };
        let in_flight = s.window_in_flight();
        if !s.ready() || in_flight >= config.window_events || s.snapshot_out.is_some() {
            return Ok(None);
        }
        // Events at or below a compacted floor are gone: the peer needs a snapshot, unless it
        // refuses snapshots; then those origins are left out (see `refuses_snapshots`).
        let refuses_snapshots = s.refuses_snapshots();
        let gone =
            |s: &Session, o: &NodeId| compacted.get(o).is_some_and(|&c| have::get(&s.sent, o) < c);
        if !refuses_snapshots && compacted.keys().any(|o| gone(s, o)) {
            s.start_snapshot(local_have, compacted, now);
            return Ok(None);
        }
        let mut budget = (config.batch_events.min(config.limits.max_events_per_batch) as u64)
            .min(config.window_events - in_flight);
        let mut bytes_left = config.batch_bytes;
        let origins: Vec<NodeId> = round_robin(local_have, s.last_origin.as_ref())
            .into_iter()
            .filter(|o| sendable(s, o) > have::get(&s.sent, o) && !gone(s, o))
            .cloned()
            .collect();
        let mut batch = Vec::new();
        let mut seals = Vec::new();
        let mut certs = Vec::new();
        for origin in origins {
            if budget == 0 || bytes_left == 0 {
                break;
            }
            let after = have::get(&s.sent, &origin);
            let upto = sendable(s, &origin);
            let mut want = budget.min(upto - after);
            let one_batch = config.batch_events as u64;
            let of_origin = s.origin_in_flight(&origin);
            let stalled = s.stalled.contains(&origin);
            if stalled {
                // An origin the peer does not acknowledge: one batch of it in flight at most.
                want = want.min(one_batch.saturating_sub(of_origin));
            } else if config.window_events >= 2 * one_batch {
                // One origin leaves room in the window for a batch of others: what goes after
                // it, once acknowledged, shows whether the peer holds it back.
                want = want.min((config.window_events - one_batch).saturating_sub(of_origin));
            }
            if want == 0 {
                continue;
            }
            let read = match log.read(&origin, after, want as usize, bytes_left) {
                Err(LogError::Compacted { .. }) if refuses_snapshots => continue,
                Err(LogError::Compacted { .. }) => {
                    // Compacted after the floors we were told: same remedy.
                    s.start_snapshot(local_have, compacted, now);
                    break;
                }
                Err(e) => {
                    // One origin that cannot be read must not stop the others.
                    unreadable.insert(origin.clone(), e.to_string());
                    continue;
                }
                Ok(read) => read,
            };
            let events = read.events;
            // A stalled origin with events in flight takes no read past `want` (to reach a
            // seal): its batch in flight would grow past one.
            if stalled && of_origin > 0 && events.len() as u64 > want {
                continue;
            }
            // The read may pass `want` to reach a seal, never what may be sent (a seal point).
            let last = events.last().map(|e| e.seq);
            let wrong = if events.is_empty() || events.len() as u64 > upto - after {
                Some(format!(
                    "asked for up to {want} events of {origin} after {after} (held up to {}), got {}",
                    have::get(local_have, &origin),
                    events.len()
                ))
            } else if !read.seals.iter().any(|seal| Some(seal.seq) == last) {
                Some(format!(
                    "events of {origin} after {after} read up to {last:?} end at no seal"
                ))
            } else {
                events
                    .iter()
                    .enumerate()
                    .find(|(i, e)| e.origin != origin || e.seq != after + 1 + *i as u64)
                    .map(|(i, e)| {
                        format!(
                            "asked for events of {origin} after {after}, got {} {} at position {i}",
                            e.origin, e.seq
                        )
                    })
            };
            if let Some(reason) = wrong {
                unreadable.insert(
                    origin.clone(),
                    LogError::Inconsistent { reason }.to_string(),
                );
                continue;
            }
            unreadable.remove(&origin);
            let Some((events, read_seals)) = causal_prefix(events, read.seals, |o, seq| {
                // What this session is still to send: not the peer's own events, nor origins
                // it gets from another peer (pruned here), nor what this node does not hold.
                o != peer
                    && o != &origin
                    && local_have.contains_key(o)
                    && !unreadable.contains_key(o)
                    && seq <= sendable(s, o)
                    && seq > have::get(&s.sent, o)
            }) else {
                continue;
            };
            // A read may pass the budget to reach a seal (a block runs to SEAL_EVERY_BYTES, or
            // one event to its limit): past what is left of it, it waits for the next batch,
            // which it starts, so that a batch stays within a frame.
            let read_bytes: usize = events.iter().map(EncodedEvent::encoded_len).sum();
            if !batch.is_empty() && read_bytes > bytes_left {
                break;
            }
            bytes_left = bytes_left.saturating_sub(read_bytes);
            if batch.is_empty() {
                s.last_origin = Some(origin.clone());
            }
            budget = budget.saturating_sub(events.len() as u64);
            let upto = after + events.len() as u64;
            // Below the session's highest send: these went before (a go-back).
            let before = have::get(&s.sent_max, &origin);
            counters.entry(peer.clone()).or_default().events_resent +=
                upto.min(before).saturating_sub(after);
            s.mark_sent(&origin, upto, now);
            have::raise(&mut s.sent_max, &origin, upto);
            if !s.certs_sent.contains(&origin) {
                let held = log.certs(&origin);
                if !held.is_empty() {
                    s.certs_sent.insert(origin.clone());
                }
                for cert in held {
                    certs.push((origin.clone(), cert));
                }
            }
            batch.extend(events);
            seals.extend(read_seals);
        }
        if batch.is_empty() {
            s.idle_at = Some(*have_version);
            return Ok(None);
        }
        counters.entry(peer.clone()).or_default().events_sent += batch.len() as u64;
        Ok(Some(Message::Events {
            events: batch,
            seals,
            certs,
        }))
    }

    /// Events received from `peer` waiting behind its pending Apply. The caller stops reading
    /// the peer's stream while this is above its limit: that is the backpressure.
    pub fn pending_apply_events(&self, peer: &NodeId) -> usize {
        self.peers
            .get(peer)
            .and_then(|p| p.session.as_ref())
            .map_or(0, |s| s.queued_events)
    }

    /// About how many bytes the events of [`Replica::pending_apply_events`] take.
    pub fn pending_apply_bytes(&self, peer: &NodeId) -> usize {
        self.peers
            .get(peer)
            .and_then(|p| p.session.as_ref())
            .map_or(0, |s| s.queued_bytes)
    }

    /// The link to `peer` is still carrying what was sent to it (frames queued by the caller,
    /// or data leaving): the resend timers wait. They are for a receiver that dropped what
    /// reached it; on a link slower than `retransmit_after_ms` per batch they would queue copy
    /// after copy behind the batch still on its way, and little new would get through.
    pub fn link_busy(&mut self, peer: &NodeId, now: u64) {
        if let Some(s) = self.peers.get_mut(peer).and_then(|p| p.session.as_mut()) {
            s.link_busy(now);
        }
    }

    /// Data from `peer` is arriving over the link: its acknowledgements may be queued behind
    /// it, so the resend timer for events waits, for a minute at most after acked last moved
    /// or this node's data last left (see `Session::link_receiving`).
    pub fn link_receiving(&mut self, peer: &NodeId, now: u64) {
        if let Some(s) = self.peers.get_mut(peer).and_then(|p| p.session.as_mut()) {
            s.link_receiving(now);
        }
    }

    /// The link to `peer` takes `rtt_ms` per round trip (the transport's estimate): the timers
    /// waiting for its answers allow for that. Bounded at a minute (a peer slowing its answers
    /// on purpose only slows its own session).
    pub fn set_link_rtt(&mut self, peer: &NodeId, rtt_ms: u64) {
        if let Some(s) = self.peers.get_mut(peer).and_then(|p| p.session.as_mut()) {
            s.rtt_ms = rtt_ms.min(60_000);
        }
    }

    /// Stops (or resumes) sending `peer` Events and snapshot pages: the caller's queue of
    /// frames for it is full (the peer reads slowly or not at all). Control messages still go.
    pub fn set_send_blocked(&mut self, peer: &NodeId, blocked: bool) {
        if let Some(s) = self.peers.get_mut(peer).and_then(|p| p.session.as_mut()) {
            if s.send_blocked && !blocked {
                s.idle_at = None;
            }
            s.send_blocked = blocked;
        }
    }

    /// Origins whose changelog could not be read, with the reason: they are not sent (every
    /// other origin still is) until a read succeeds.
    pub fn unreadable(&self) -> &BTreeMap<NodeId, String> {
        &self.unreadable
    }

    /// Peers whose seal (at what this node holds of their own events) could not be read for
    /// this node's Hello on the current session, with the reason: the Hello went without it,
    /// so the peer takes that claim as none (its events still flow both ways).
    pub fn unreadable_seals(&self) -> &BTreeMap<NodeId, String> {
        &self.unreadable_seals
    }

    /// Whether this node's Hello to `peer` went out on the current session ([`poll_transmit`]
    /// handed it out): what the caller sends the peer besides the core's messages must come
    /// after it, or the peer refuses it (and the connection) as before the Hello.
    ///
    /// [`poll_transmit`]: Replica::poll_transmit
    pub fn hello_sent(&self, peer: &NodeId) -> bool {
        self.peers
            .get(peer)
            .and_then(|p| p.session.as_ref())
            .is_some_and(|s| !s.hello_due)
    }

    /// Whether `peer` has a session whose handshake is done.
    pub fn is_ready(&self, peer: &NodeId) -> bool {
        self.peers
            .get(peer)
            .and_then(|p| p.session.as_ref())
            .is_some_and(Session::ready)
    }

    /// The peers with a session or an outstanding Apply.
    pub fn peers(&self) -> impl Iterator<Item = &NodeId> {
        self.peers.keys()
    }

    /// The replication status of `peer`, if it has a session or an outstanding Apply.
    pub fn peer_view(&self, peer: &NodeId) -> Option<PeerView> {
        let p = self.peers.get(peer)?;
        let s = p.session.as_ref();
        Some(PeerView {
            connected: s.is_some(),
            ready: s.is_some_and(Session::ready),
            their_have: s.map(|s| s.their_have.clone()).unwrap_or_default(),
            sent: s.map(|s| s.sent.clone()).unwrap_or_default(),
            acked: s.map(|s| s.acked.clone()).unwrap_or_default(),
            in_flight_events: s.map_or(0, Session::in_flight),
            stalled_origins: s.map_or_else(Vec::new, |s| s.stalled.iter().cloned().collect()),
            pending_apply_events: s.map_or(0, |s| s.queued_events),
            applying: !p.idle(),
            last_message_ms: s.and_then(|s| s.last_message_ms),
            mismatches: s.map(|s| s.mismatches.clone()).unwrap_or_default(),
            last_apply_error: p.last_apply_error.clone(),
            last_send_error: p.last_send_error.clone(),
            bye_reason: s.and_then(|s| s.bye.clone()),
            snapshot_sending_page: s.and_then(|s| s.snapshot_out.as_ref()).map(|o| o.page),
            snapshot_sending_have: s
                .and_then(|s| s.snapshot_out.as_ref())
                .filter(|o| {
                    self.now.saturating_sub(o.moved_ms) < SNAPSHOT_HOLD_MS
                        && self.now.saturating_sub(o.began_ms) < SNAPSHOT_HOLD_MAX_MS
                })
                .map(|o| o.have.clone()),
            snapshot_receiving_page: s
                .and_then(|s| s.snapshot_in)
                .map(|(_, next)| next)
                .filter(|&next| next != SNAPSHOT_DONE),
            lazy_origins: s
                .map(|s| s.lazy.iter().cloned().collect())
                .unwrap_or_default(),
            refuses_snapshots: s.is_some_and(Session::refuses_snapshots),
            pruned_origins: s
                .map(|s| s.pruned.iter().cloned().collect())
                .unwrap_or_default(),
        })
    }

    /// The have of a snapshot being sent to `peer` that the changelog must be kept after (the
    /// peer needs the entries past it once the snapshot is in): the live session's while the
    /// peer acknowledges its pages ([`PeerView::snapshot_sending_have`]), or one a lost
    /// connection interrupted (it resumes on the peer's next session, which it could not if
    /// compaction passed it meanwhile); either for at most [`SNAPSHOT_HOLD_MAX_MS`] from its
    /// start.
    pub fn snapshot_hold(&self, peer: &NodeId) -> Option<Have> {
        // (A new session whose Hello has not come yet has none out: the interrupted one, which
        // that Hello may resume, still holds.)
        if let Some(have) = self.peer_view(peer).and_then(|v| v.snapshot_sending_have) {
            return Some(have);
        }
        self.interrupted
            .get(peer)?
            .out
            .as_ref()
            .filter(|o| self.now.saturating_sub(o.began_ms) < SNAPSHOT_HOLD_MAX_MS)
            .map(|o| o.have.clone())
    }

    /// What this node exchanged with `peer` since it started (zero for a peer never connected).
    pub fn counters(&self, peer: &NodeId) -> PeerCounters {
        self.counters.get(peer).copied().unwrap_or_default()
    }

    /// Events `local_have` holds that `peer` has not acknowledged on the current session
    /// (Σ over origins of local have − acked); 0 without a ready session.
    pub fn lag_events(&self, peer: &NodeId, local_have: &Have) -> u64 {
        self.peers
            .get(peer)
            .and_then(|p| p.session.as_ref())
            .filter(|s| s.ready())
            .map_or(0, |s| have::distance(local_have, &s.acked))
    }
}

#[cfg(test)]
#[path = "replica_tests.rs"]
mod tests;
