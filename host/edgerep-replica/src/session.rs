//! One peer session's volatile state: what we sent and what the peer acknowledged (the sending
//! cursors and the go-back-N window), the control messages due, and the peer's events waiting
//! behind an apply.
//!
//! Invariants: `acked <= sent` for every origin (so `in_flight` is their distance), and nothing
//! here survives a disconnect.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use edgerep_wire::seal::Proof;
use edgerep_wire::{EncodedEvent, NodeId, Seal};

use crate::have::{self, Have};
use crate::log::StateCursor;
use crate::message::Hello;

/// How long a snapshot page may take to cross the link while it holds the changelog for its
/// snapshot (see [`Session::link_busy`]): a page of 1 MiB at about 14 kbit/s.
pub(crate) const PAGE_CROSSES_WITHIN_MS: u64 = 600_000;

/// How long after acked last moved the peer's data arriving still holds the go-back-N timer
/// back (see [`Session::link_receiving`]).
pub(crate) const ARRIVING_HOLD_MS: u64 = 60_000;

/// A snapshot being sent to the peer, one page at a time.
pub(crate) struct SnapshotOut {
    pub(crate) id: u64,
    /// The local have when the snapshot began: every page reflects at least this.
    pub(crate) have: Have,
    /// The compacted floors when the snapshot began (the receiver checks it is below one).
    pub(crate) floors: Have,
    /// The page being sent (or to send next).
    pub(crate) page: u64,
    /// Where that page starts.
    pub(crate) start: Option<StateCursor>,
    /// Where the page after it starts, once it was read.
    pub(crate) next: Option<StateCursor>,
    /// The page's versions, once it was read. A resend repeats them exactly: the receiver
    /// confirms a page it merged already without merging it again, so a page read again (its
    /// keys may have gained versions, moving where it ends) would leave keys unmerged.
    pub(crate) versions: Option<crate::log::StatePage>,
    /// The page was sent at this time and awaits its SnapshotAck.
    pub(crate) sent_at: Option<u64>,
    /// The page sent is the last.
    pub(crate) last: bool,
    /// When the snapshot began, the peer last acknowledged one of its pages, or the page sent
    /// was last seen leaving over the link (for [`PAGE_CROSSES_WITHIN_MS`] after it was read).
    pub(crate) moved_ms: u64,
    /// When the page sent was read (its first send).
    pub(crate) page_read_ms: u64,
    /// When the snapshot began (kept when it resumes on a new connection).
    pub(crate) began_ms: u64,
    /// Resumed after a lost connection, and no page acknowledged since: if the page sent times
    /// out, the peer did not take it up (it is not the process that merged the earlier pages)
    /// and a new snapshot starts from page 0.
    pub(crate) resumed: bool,
}

/// A snapshot page received while an apply of the peer's events was outstanding.
#[derive(Clone)]
pub(crate) struct PendingPage {
    pub(crate) id: u64,
    pub(crate) page: u64,
    pub(crate) versions: Vec<EncodedEvent>,
    pub(crate) proofs: Vec<Proof>,
    pub(crate) have: Option<Have>,
    pub(crate) seals: Vec<Seal>,
    pub(crate) certs: Vec<(NodeId, Vec<u8>)>,
}

/// One Events message of the peer's, as received (unsealed tails already dropped).
pub(crate) struct Batch {
    pub(crate) events: Vec<EncodedEvent>,
    pub(crate) seals: Vec<Seal>,
    pub(crate) certs: Vec<(NodeId, Vec<u8>)>,
}

impl Batch {
    /// What the batch takes in memory, roughly: its events, seals and certificates (a peer
    /// sending one event with megabytes of certificates must not pass for one event).
    pub(crate) fn approx_bytes(&self) -> usize {
        crate::replica::approx_bytes(&self.events)
            + self.seals.len() * std::mem::size_of::<Seal>()
            + self
                .certs
                .iter()
                .map(|(_, der)| der.len() + 64)
                .sum::<usize>()
    }
}

/// Since when an origin waits for the peer's acknowledgement: when (ms) and at which send
/// its acknowledgement last moved or its sending started afresh, and its latest send.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Waiting {
    since_ms: u64,
    since_send: u64,
    /// The send that carried its newest events first (a resend does not count: an
    /// acknowledgement may be of the first copy, still arriving).
    last_send: u64,
}

pub(crate) struct Session {
    /// Our Hello has not been transmitted yet.
    pub(crate) hello_due: bool,
    /// An Ack is due, with this `rewind` flag (several requests collapse into one Ack).
    pub(crate) ack_due: Option<bool>,
    /// We dropped duplicates the local have did not cover yet: ack on the next have change.
    pub(crate) ack_owed: bool,
    /// The peer's Hello; the session is ready once it is here.
    pub(crate) hello: Option<Hello>,
    /// The peer's have: from its Hello, raised by its Acks.
    pub(crate) their_have: Have,
    /// Per origin, the highest sequence number sent (or known held by the peer).
    pub(crate) sent: Have,
    /// Per origin, the highest sequence number the peer acknowledged as durable.
    pub(crate) acked: Have,
    /// Per origin, the highest sequence number ever sent on this session (`sent` goes back on
    /// a go-back; this does not): what is sent below it is a resend.
    pub(crate) sent_max: Have,
    /// Distance from `acked` to `sent` (kept up to date by every change of either).
    in_flight: u64,
    /// Per origin, since when it waits for its acknowledgement (see [`Waiting`]).
    waiting: BTreeMap<NodeId, Waiting>,
    /// Sends (one origin's events in a batch) numbered in order, on this session.
    sends: u64,
    /// The latest send the peer is known to have acknowledged (in part).
    acked_send: u64,
    /// Origins the peer does not acknowledge although it acknowledged what was sent after
    /// them, for a resend interval (it holds them back: a halted collection, a missing
    /// dependency): sent again from `acked`, one batch at a time (a read may pass it to reach a
    /// seal), not counted against the window, so that they cannot stop the other origins. An
    /// origin leaves when its `acked` moves.
    pub(crate) stalled: BTreeSet<NodeId>,
    /// The local have version at which a batch was last found empty: until the local have or
    /// the cursors change, there is still nothing to send (saves scanning every origin).
    pub(crate) idle_at: Option<u64>,
    /// When the go-back-N timer last restarted: acked moved, or sending began with nothing in flight.
    pub(crate) progress_ms: u64,
    /// When acked last moved, sending began with nothing in flight, or what was sent was last
    /// seen leaving: the peer's data arriving holds the timer back for [`ARRIVING_HOLD_MS`]
    /// after it at most.
    pub(crate) outbound_ms: u64,
    /// The origin the last batch started with (round-robin cursor).
    pub(crate) last_origin: Option<NodeId>,
    /// Events messages received while an apply for this peer was pending, in order.
    pub(crate) queued: VecDeque<Batch>,
    /// Number of events in `queued`.
    pub(crate) queued_events: usize,
    /// About how many bytes they take.
    pub(crate) queued_bytes: usize,
    /// Per origin, at least the highest sequence number in `queued` (raised as batches are
    /// queued, cleared once it is empty): a batch entirely above it holds no copy of a queued
    /// event, and is not compared with the queue event by event.
    pub(crate) queued_high: Have,
    /// The caller's frame queue for this peer is full: no Events or snapshot pages.
    pub(crate) send_blocked: bool,
    /// Origins whose certificate went to the peer on this session.
    pub(crate) certs_sent: BTreeSet<NodeId>,
    /// Per origin with a gap, when we last asked this peer to rewind for it, how long to wait
    /// before asking again (doubling up to `HELD_BACK_WAIT_MAX_MS`: on a slow link the resend
    /// sits behind everything queued, and each ask queues the window again), and how far the
    /// origin was accepted then.
    pub(crate) rewinds: BTreeMap<NodeId, (u64, u64, u64)>,
    /// Per origin whose events the caller held back, when this peer was asked to send them
    /// again (see `Replica::applied`).
    pub(crate) held_back_asked: BTreeMap<NodeId, HeldBackAsk>,
    /// When this node last went back (a rewind, or its resend timer), and whether `acked`
    /// moved since: a rewind asked while that resend is still on its way, with nothing of it
    /// acknowledged, waits until the gap passes (at once, it would resend the same window; a
    /// peer repeating Acks that ask for it would make this node read and send its window again
    /// and again). One asked after progress goes at once.
    pub(crate) rewound: Option<(u64, bool)>,
    /// A rewind the peer asked for is waiting (see `rewound`).
    pub(crate) rewind_waiting: bool,
    /// Rewinds put off (see `rewound`).
    pub(crate) rewinds_deferred: u64,
    /// When the last message from the peer arrived.
    pub(crate) last_message_ms: Option<u64>,
    /// Fingerprint differences found at the handshake.
    pub(crate) mismatches: Vec<String>,
    /// The reason of the peer's Bye, if it sent one.
    pub(crate) bye: Option<String>,
    /// Our have grew since the last Ack we sent this peer: tell it (so that it stops relaying
    /// us what we got elsewhere, and learns what it may miss), at most every
    /// `announce_every_ms`.
    pub(crate) gossip_due: bool,
    /// When we last sent this peer an Ack.
    pub(crate) last_ack_ms: u64,
    /// How far the peer's own events go back to it: what we held of them when its Hello came
    /// (a restored peer gets back what it lost; what it writes later it has).
    pub(crate) own_until: u64,
    /// Origins the peer pruned: their events are not pushed to it.
    pub(crate) lazy: BTreeSet<NodeId>,
    /// Origins we pruned on the peer (it sent us only events of them we had).
    pub(crate) pruned: BTreeSet<NodeId>,
    /// Prune and Graft messages due, by origin.
    pub(crate) prune_due: BTreeSet<NodeId>,
    pub(crate) graft_due: BTreeSet<NodeId>,
    /// The snapshot we are sending the peer (it lacks events we compacted away).
    pub(crate) snapshot_out: Option<SnapshotOut>,
    /// Numbers our snapshots to this peer (carried over from session to session, so a page of
    /// an earlier snapshot is never taken for a later one's).
    pub(crate) next_snapshot_id: u64,
    /// A snapshot to this peer that a lost connection interrupted, to resume rather than start
    /// again (the peer's process is the same: it merged the pages it acknowledged).
    pub(crate) resumable: Option<SnapshotOut>,
    /// The snapshot the peer is sending us: its id and the next page we expect.
    pub(crate) snapshot_in: Option<(u64, u64)>,
    /// A SnapshotAck (id, page) is due.
    pub(crate) snapshot_ack_due: Option<(u64, u64)>,
    /// A page that waits for the peer's outstanding Applies.
    pub(crate) pending_page: Option<PendingPage>,
    /// A page whose merge failed (nothing of it durable), handed out again at the time given
    /// (after the tries given): the peer resends a page only when its timer fires, which
    /// traffic leaving it (its Acks, say) keeps putting off, so it is not waited for.
    pub(crate) retry_page: Option<(PendingPage, u64, u32)>,
    /// The link's round trip as the caller last measured it (0 until then): the timers that
    /// wait for the peer's answer allow for it (see [`Session::retransmit_after`]).
    pub(crate) rtt_ms: u64,
}

/// This peer was asked to send an origin's events again, after the caller held them back (what
/// they depend on had not arrived): asked again, with a wait doubling up to
/// [`HELD_BACK_WAIT_MAX_MS`], while the origin's have stays where it was and something else
/// arrived since the last ask (what they wait for may have come by another peer; nothing else
/// would ask for them again: the sender's resend timer does not fire on a link busy with other
/// traffic). Nothing new since, nothing to ask (on a node taking no writes, a collection stopped
/// for good is not asked for).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HeldBackAsk {
    /// The origin's have when asked.
    pub(crate) held: u64,
    /// When asked last.
    pub(crate) at: u64,
    /// How long after `at` to ask again.
    pub(crate) wait: u64,
    /// The node's have version (`Replica::have_version`) when asked last.
    pub(crate) have_version: u64,
    /// Asked while another Apply of the peer was outstanding: the resend may have been dropped
    /// as a copy of what that Apply handed out, so its end asks again.
    pub(crate) while_applying: bool,
}

/// The longest wait between two asks for the same held-back events.
pub(crate) const HELD_BACK_WAIT_MAX_MS: u64 = 60_000;

impl HeldBackAsk {
    pub(crate) fn due(&self) -> u64 {
        self.at.saturating_add(self.wait)
    }
}

impl Session {
    pub(crate) fn new(now: u64) -> Session {
        Session {
            hello_due: true,
            ack_due: None,
            ack_owed: false,
            hello: None,
            their_have: Have::new(),
            sent: Have::new(),
            acked: Have::new(),
            sent_max: Have::new(),
            in_flight: 0,
            waiting: BTreeMap::new(),
            sends: 0,
            acked_send: 0,
            stalled: BTreeSet::new(),
            idle_at: None,
            progress_ms: now,
            outbound_ms: now,
            last_origin: None,
            queued: VecDeque::new(),
            queued_events: 0,
            queued_bytes: 0,
            queued_high: Have::new(),
            send_blocked: false,
            certs_sent: BTreeSet::new(),
            rewinds: BTreeMap::new(),
            held_back_asked: BTreeMap::new(),
            rewound: None,
            rewind_waiting: false,
            rewinds_deferred: 0,
            last_message_ms: None,
            mismatches: Vec::new(),
            bye: None,
            gossip_due: false,
            last_ack_ms: now,
            own_until: 0,
            lazy: BTreeSet::new(),
            pruned: BTreeSet::new(),
            prune_due: BTreeSet::new(),
            graft_due: BTreeSet::new(),
            snapshot_out: None,
            next_snapshot_id: 0,
            resumable: None,
            snapshot_in: None,
            snapshot_ack_due: None,
            pending_page: None,
            retry_page: None,
            rtt_ms: 0,
        }
    }

    /// Begins sending a snapshot of the state as of (at least) `have`, unless one is under way.
    pub(crate) fn start_snapshot(&mut self, have: &Have, floors: &Have, now: u64) {
        if self.snapshot_out.is_some() {
            return;
        }
        // An interrupted snapshot goes on from the page it was at, if the events after its have
        // are still in the changelog (else the peer would need another one after it).
        if let Some(mut out) = self.resumable.take()
            && floors.iter().all(|(o, &f)| have::get(&out.have, o) >= f)
        {
            out.sent_at = None;
            out.moved_ms = now;
            out.resumed = true;
            self.snapshot_out = Some(out);
            return;
        }
        self.snapshot_out = Some(SnapshotOut {
            id: self.next_snapshot_id,
            have: have.clone(),
            floors: floors.clone(),
            page: 0,
            start: None,
            next: None,
            versions: None,
            sent_at: None,
            last: false,
            moved_ms: now,
            page_read_ms: now,
            began_ms: now,
            resumed: false,
        });
        self.next_snapshot_id += 1;
    }

    /// How long this link's answers may take before what they answer is sent (or asked for)
    /// again: the configured wait plus two round trips (the answer comes one round trip after
    /// the last byte left at best, and QUIC's own resend of a lost packet takes about another).
    /// On a link of seconds per round trip (a cellular one) a fixed wait would resend, or ask
    /// again for, what is still on its way.
    pub(crate) fn retransmit_after(&self, configured_ms: u64) -> u64 {
        configured_ms.saturating_add(self.rtt_ms.saturating_mul(2))
    }

    /// The least time between two go-backs the peer asks for (see `rewound`): a quarter of the
    /// configured wait plus a round trip (an ask may be about what a go-back sent already).
    pub(crate) fn rewind_gap(&self, configured_ms: u64) -> u64 {
        (configured_ms / 4).saturating_add(self.rtt_ms)
    }

    /// When the snapshot page in flight should be sent again.
    pub(crate) fn snapshot_deadline(&self, configured_ms: u64) -> Option<u64> {
        let sent_at = self.snapshot_out.as_ref()?.sent_at?;
        Some(sent_at.saturating_add(self.retransmit_after(configured_ms)))
    }

    pub(crate) fn ready(&self) -> bool {
        self.hello.is_some()
    }

    /// The handshake: the peer durably holds its `have`, so sending starts there.
    pub(crate) fn start(&mut self, hello: Hello, now: u64) {
        let have: Have = hello.have.iter().cloned().collect();
        self.their_have = have.clone();
        self.sent = have.clone();
        self.acked = have;
        self.in_flight = 0;
        self.waiting.clear();
        (self.sends, self.acked_send) = (0, 0);
        self.stalled.clear();
        self.idle_at = None;
        (self.progress_ms, self.outbound_ms) = (now, now);
        self.hello = Some(hello);
    }

    /// Whether the peer refuses snapshot pages: it runs transforms on apply (its Hello says
    /// so), so its state of those collections must be built from events. Such a peer gets
    /// every origin this node can still send as events, and none it compacted past what the
    /// peer holds (a snapshot would be refused, and while one is under way nothing else goes
    /// out: one compacted origin would stop every other).
    pub(crate) fn refuses_snapshots(&self) -> bool {
        self.hello.as_ref().is_some_and(|h| {
            h.fingerprint.iter().any(|c| {
                !c.transforms_on_apply.is_empty()
                    || c.upgrades.iter().any(|u| !u.transforms_on_apply.is_empty())
            })
        })
    }

    /// Events sent but not acknowledged.
    pub(crate) fn in_flight(&self) -> u64 {
        self.in_flight
    }

    /// Events of `origin` sent but not acknowledged.
    pub(crate) fn origin_in_flight(&self, origin: &NodeId) -> u64 {
        have::get(&self.sent, origin).saturating_sub(have::get(&self.acked, origin))
    }

    /// Events in flight that count against the window: not those of stalled origins.
    pub(crate) fn window_in_flight(&self) -> u64 {
        let stalled: u64 = self.stalled.iter().map(|o| self.origin_in_flight(o)).sum();
        self.in_flight.saturating_sub(stalled)
    }

    /// Marks stalled the origins in flight whose acknowledgement has not moved for `after` ms
    /// although the peer acknowledged something sent after them (a slow link delivers in
    /// order: what was sent later is acknowledged later; the peer's acknowledgements of its
    /// own events or of others' it got elsewhere do not count), and goes back for each (as the
    /// resend timer does for all): what the peer did not take is sent again, one batch at a
    /// time, while it stays stalled.
    pub(crate) fn note_stalled(&mut self, now: u64, after: u64) {
        if self.in_flight == 0 {
            return;
        }
        let newly: Vec<NodeId> = self
            .waiting
            .iter()
            .filter(|(o, w)| {
                self.acked_send > w.since_send
                    && now >= w.since_ms.saturating_add(after)
                    && !self.stalled.contains(*o)
                    && self.origin_in_flight(o) > 0
            })
            .map(|(o, _)| o.clone())
            .collect();
        if newly.is_empty() {
            return;
        }
        for origin in newly {
            match self.acked.get(&origin) {
                Some(&acked) => self.sent.insert(origin.clone(), acked),
                None => self.sent.remove(&origin),
            };
            // Sent again with its certificate, as after a go-back (see `go_back`).
            self.certs_sent.remove(&origin);
            self.stalled.insert(origin);
        }
        self.idle_at = None;
        self.in_flight = have::distance(&self.sent, &self.acked);
    }

    /// Records that events of `origin` up to `seq` were sent (before `sent_max` is raised).
    pub(crate) fn mark_sent(&mut self, origin: &NodeId, seq: u64, now: u64) {
        if self.in_flight == 0 {
            (self.progress_ms, self.outbound_ms) = (now, now);
        }
        self.sends += 1;
        // A fresh start (everything sent of it before was acknowledged), not a resend after a
        // go-back: an origin that has waited for its acknowledgement goes on waiting.
        let sent_max = have::get(&self.sent_max, origin);
        let fresh = sent_max <= have::get(&self.acked, origin);
        let sends = self.sends;
        let w = self.waiting.entry(origin.clone()).or_insert(Waiting {
            since_ms: now,
            since_send: sends,
            last_send: sends,
        });
        if fresh {
            (w.since_ms, w.since_send) = (now, sends);
        }
        if seq > sent_max {
            w.last_send = sends;
        }
        let before = have::get(&self.sent, origin);
        if have::raise(&mut self.sent, origin, seq) {
            self.in_flight += seq - before;
        }
    }

    /// Takes in an Ack. Returns whether `acked` moved. A rewind is honoured unless the last one
    /// was less than `rewind_gap` ms ago and nothing was acknowledged since.
    pub(crate) fn on_ack(
        &mut self,
        ack: &[(NodeId, u64)],
        rewind: bool,
        rewind_gap: u64,
        now: u64,
    ) -> bool {
        // A have names at most MAX_ORIGINS origins in one message, and so in a session: a peer
        // naming new ones Ack after Ack would grow these maps (and what each Ack copies)
        // without end. Origins past the bound are ignored.
        let mut room =
            crate::message::MAX_ORIGINS.saturating_sub(self.their_have.len().max(self.sent.len()));
        let kept: Vec<&(NodeId, u64)> = ack
            .iter()
            .filter(|(o, _)| {
                let known = self.their_have.contains_key(o) && self.sent.contains_key(o);
                let admitted = known || room > 0;
                if !known && admitted {
                    room -= 1;
                }
                admitted
            })
            .collect();
        // Progress of what this node sent: an origin acknowledged further, where it had sent
        // more than was acknowledged. (Not the peer's own events, nor ones it got elsewhere: a
        // peer raising those Ack after Ack would pass every rewind through at once.)
        let progressed = kept.iter().any(|(o, seq)| {
            let acked = have::get(&self.acked, o);
            *seq > acked && acked < have::get(&self.sent, o)
        });
        for (o, seq) in &kept {
            let (acked, sent) = (have::get(&self.acked, o), have::get(&self.sent, o));
            if *seq <= acked {
                continue;
            }
            if let Some(w) = self.waiting.get_mut(o) {
                // All this session sent of it acknowledged, and no more than it ever sent
                // (more came another way, which proves nothing of this link): the send that
                // first carried its newest events went through. (A part proves too little
                // to count: which send carried it is not known.)
                if acked < sent && *seq >= sent && *seq <= have::get(&self.sent_max, o) {
                    self.acked_send = self.acked_send.max(w.last_send);
                }
                // What is left of it in flight went at the latest with its newest events.
                (w.since_ms, w.since_send) = (now, w.last_send);
            }
            self.stalled.remove(o);
        }
        let pairs = kept.iter().map(|(o, s)| (o, *s));
        have::join(&mut self.their_have, pairs.clone());
        // The peer may hold events it got through another path: no need to send them.
        have::join(&mut self.sent, pairs.clone());
        let moved = have::join(&mut self.acked, pairs);
        self.in_flight = have::distance(&self.sent, &self.acked);
        self.idle_at = None;
        if moved {
            (self.progress_ms, self.outbound_ms) = (now, now);
        }
        if progressed && let Some((_, acked_since)) = &mut self.rewound {
            *acked_since = true;
        }
        if rewind {
            let due = self.rewound.is_none_or(|(at, acked_since)| {
                acked_since || now >= at.saturating_add(rewind_gap)
            });
            if due {
                self.go_back(now);
            } else {
                self.rewind_waiting = true;
                self.rewinds_deferred += 1;
            }
        }
        moved
    }

    /// When a rewind put off is due (see `rewound`).
    pub(crate) fn rewind_deadline(&self, rewind_gap: u64) -> Option<u64> {
        match self.rewound {
            Some((at, _)) if self.rewind_waiting => Some(at.saturating_add(rewind_gap)),
            _ => None,
        }
    }

    /// Removes from `batch` the events queued already behind the outstanding Applies where the
    /// queue continues `accepted` without a gap (the same peer sent them twice), and returns
    /// how many it removed. A copy of a queued run past a gap stays: with what fills the gap
    /// before it in the batch, it goes on at once. (Duplicates of what is accepted already
    /// still go through `receive`: they decide which links to prune.)
    pub(crate) fn drop_queued_copies(&self, batch: &mut Batch, accepted: &Have) -> u64 {
        // The usual case while catching up: the batch continues past everything queued.
        if batch
            .events
            .iter()
            .all(|e| e.seq > have::get(&self.queued_high, &e.origin))
        {
            return 0;
        }
        // Per origin, how far the queue continues `accepted` (None: a gap came first).
        let mut chain: BTreeMap<&NodeId, Option<u64>> = BTreeMap::new();
        for b in &self.queued {
            let mut runs: Vec<(&NodeId, u64, u64)> = Vec::new();
            for e in &b.events {
                match runs.last_mut() {
                    Some((o, _, last)) if **o == e.origin && *last + 1 == e.seq => *last = e.seq,
                    _ => runs.push((&e.origin, e.seq, e.seq)),
                }
            }
            for (o, first, last) in runs {
                let reach = chain.entry(o).or_insert(Some(have::get(accepted, o)));
                if let Some(r) = reach {
                    if first <= r.saturating_add(1) {
                        *r = (*r).max(last);
                    } else {
                        *reach = None;
                    }
                }
            }
        }
        let before = batch.events.len();
        batch.events.retain(|e| {
            let copy = chain
                .get(&e.origin)
                .copied()
                .flatten()
                .is_some_and(|reach| e.seq > have::get(accepted, &e.origin) && e.seq <= reach);
            !copy
        });
        (before - batch.events.len()) as u64
    }

    /// Goes back for the waiting rewind once `rewind_gap` passed since the last go-back (not
    /// on the first acknowledgement of that resend: it covers most of what was asked).
    pub(crate) fn rewind_if_due(&mut self, rewind_gap: u64, now: u64) {
        if self
            .rewind_deadline(rewind_gap)
            .is_some_and(|deadline| now >= deadline)
        {
            self.go_back(now);
        }
    }

    /// Go-back-N: resend everything not acknowledged.
    pub(crate) fn go_back(&mut self, now: u64) {
        // What is sent again carries its origins' certificates again: the batch that carried
        // one may be the batch the peer failed to apply, and a peer that commits the resent
        // events without it keeps their seals but not the certificate, which it then lacks
        // after a restart (and cannot pass on to a node that never had it).
        self.certs_sent.clear();
        self.rewind_waiting = false;
        self.rewound = Some((now, false));
        self.sent = self.acked.clone();
        self.in_flight = 0;
        self.idle_at = None;
        (self.progress_ms, self.outbound_ms) = (now, now);
    }

    /// The link is still carrying what was sent: the go-back-N and snapshot-page timers start
    /// again from `now`.
    pub(crate) fn link_busy(&mut self, now: u64) {
        if self.in_flight > 0 {
            (self.progress_ms, self.outbound_ms) = (now, now);
        }
        // (Not a page that could not be read: it is read again when its timer fires.) The
        // hold on the changelog is renewed too: on a slow link one page takes longer than
        // SNAPSHOT_HOLD_MS to cross, and compaction could then pass the snapshot's have. But
        // only for PAGE_CROSSES_WITHIN_MS from the page's reading: what leaves may be this
        // node's other messages, and a peer that reads pages and never acknowledges them
        // must not hold compaction for long.
        if let Some(out) = self.snapshot_out.as_mut()
            && out.sent_at.is_some()
            && out.versions.is_some()
        {
            out.sent_at = Some(now);
            if now.saturating_sub(out.page_read_ms) < PAGE_CROSSES_WITHIN_MS {
                out.moved_ms = now;
            }
        }
    }

    /// The peer's data is arriving: its acknowledgements travel behind what it sends on the
    /// same stream, so on a slow link busy both ways they come late, not lost. The go-back-N
    /// timer starts again from `now`, for [`ARRIVING_HOLD_MS`] after acked last moved or this
    /// node's data last left at most (a peer that sends all the time but dropped what it got
    /// is still resent to). Not the
    /// snapshot-page timer: a page the peer failed to merge would then never go again.
    pub(crate) fn link_receiving(&mut self, now: u64) {
        if self.in_flight > 0 && now.saturating_sub(self.outbound_ms) < ARRIVING_HOLD_MS {
            self.progress_ms = now;
        }
    }

    /// When the go-back-N timer fires, if anything is in flight.
    pub(crate) fn deadline(&self, configured_ms: u64) -> Option<u64> {
        (self.ready() && self.in_flight > 0).then(|| {
            self.progress_ms
                .saturating_add(self.retransmit_after(configured_ms))
        })
    }

    /// Asks for an Ack; a rewind request is never downgraded by a later plain one.
    pub(crate) fn request_ack(&mut self, rewind: bool) {
        self.ack_due = Some(self.ack_due.unwrap_or(false) || rewind);
    }
}
