//! What peers acknowledged, kept across restarts, and the changelog compaction it allows:
//! every `retention.interval_ms`, per origin, the highest sequence number every configured peer
//! acknowledged (peers unheard of for `peer_absent_ms` excepted), less `keep_events`, and at
//! least the have less `max_held_events` (but never past a snapshot being sent).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use edgerep_store::{Compaction, Heard};

use super::{CommitHookSender, Replicator};
use edgerep_wire::NodeId;

use crate::committer::{CommitError, Have, wall_ms};

/// How far a peer's last contact moves before it is saved again (see `save_cursors`).
const HEARD_SAVED_EVERY_MS: u64 = 60_000;

/// Saved times before this (2020-01-01) are taken for a clock that was not set (a device
/// without a battery-backed clock boots in 1970): they count no silence.
const PLAUSIBLE_MS: u64 = 1_577_836_800_000;

impl Replicator {
    pub(super) fn load_cursors(&mut self) {
        match self.store.peer_cursors() {
            Ok(all) => {
                for (peer, have) in all {
                    self.acked.insert(peer, have);
                }
            }
            Err(e) => tracing::warn!("cannot read saved peer cursors: {e}"),
        }
        // How long each peer had been silent at this start, counted while this node ran: from
        // its saved contact (or, for a configured peer never heard from, since this node began
        // to wait for it) to the last time this node saved itself alive (its own downtime is no
        // peer's silence: a lagging peer must not be left out for it). By the wall clock: one
        // stepped back between runs counts less (the safe side).
        match self.store.peers_heard() {
            Ok(mut all) => {
                self.heard_loaded = true;
                let alive_ms = match all.remove(self.core.local()) {
                    Some(Heard::At(ms)) => ms,
                    _ => u64::MAX,
                };
                let upto = wall_ms().min(alive_ms);
                // When peers' acknowledgements last moved, counted the same way: a peer that
                // stays connected and acknowledges nothing new does not get a new
                // `peer_absent_ms` at each restart of this node.
                match self.store.peers_progress() {
                    Ok(progress) => {
                        for (peer, at_ms) in progress {
                            self.progress_saved.insert(peer.clone(), at_ms);
                            if at_ms >= PLAUSIBLE_MS {
                                self.moved_before_start.insert(
                                    peer,
                                    Duration::from_millis(upto.saturating_sub(at_ms)),
                                );
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!("cannot read when peers' acknowledgements last moved: {e}")
                    }
                }
                for (peer, heard) in all {
                    let since = match heard {
                        Heard::At(at_ms) => {
                            self.last_contact.insert(peer.clone(), at_ms);
                            self.heard_saved.insert(peer.clone(), at_ms);
                            at_ms
                        }
                        Heard::AwaitedSince(since_ms) => {
                            self.awaited_since.insert(peer.clone(), since_ms);
                            since_ms
                        }
                    };
                    if since >= PLAUSIBLE_MS {
                        self.silent_at_start
                            .insert(peer, Duration::from_millis(upto.saturating_sub(since)));
                    }
                }
            }
            Err(e) => tracing::warn!("cannot read when peers were last heard from: {e}"),
        }
    }

    /// How long ago `peer` was last heard from: on the monotonic clock since this start, or
    /// since it was configured (the start, or the reload that added it) plus how long it had
    /// been silent then (as saved before the start).
    pub(super) fn silent_for(&self, peer: &NodeId) -> Duration {
        match self.heard_at.get(peer) {
            Some(at) => at.elapsed(),
            None => {
                self.configured_for(peer)
                    + self.silent_at_start.get(peer).copied().unwrap_or_default()
            }
        }
    }

    /// How long `peer` has been configured in this run (since the start, or the reload that
    /// added it).
    fn configured_for(&self, peer: &NodeId) -> Duration {
        self.configured_at
            .get(peer)
            .map_or_else(|| self.started.elapsed(), Instant::elapsed)
    }

    /// How far a saved contact may lag behind: a minute against `peer_absent_ms` of days, a
    /// tenth of it when it is shorter.
    fn heard_saved_every_ms(&self) -> u64 {
        self.retention
            .peer_absent_ms
            .map_or(HEARD_SAVED_EVERY_MS, |ms| {
                (ms / 10).clamp(1, HEARD_SAVED_EVERY_MS)
            })
    }

    /// Saves the peers' cursors that moved, and their last contacts with this node's own
    /// "alive at" (see `load_cursors`) when they moved by [`Replicator::heard_saved_every_ms`],
    /// or at all when `last` (the replicator stops).
    pub(super) fn save_cursors(&mut self, last: bool) {
        self.saved_at = Instant::now();
        for (peer, have) in std::mem::take(&mut self.dirty) {
            if let Err(e) = self.committer.save_peer_cursor(peer.clone(), have) {
                tracing::warn!(peer = %peer, "cannot save the peer's cursor: {e}");
            }
        }
        let every = if last { 1 } else { self.heard_saved_every_ms() };
        let local = self.core.local().clone();
        let now = wall_ms();
        let mut heard: BTreeMap<NodeId, Heard> = self
            .heard_at
            .keys()
            .filter_map(|p| Some((p.clone(), *self.last_contact.get(p)?)))
            .chain(std::iter::once((local, now)))
            .filter(|(p, at)| {
                self.heard_saved
                    .get(p)
                    .is_none_or(|s| at.abs_diff(*s) >= every)
            })
            .map(|(p, at)| (p, Heard::At(at)))
            .collect();
        // Configured peers never heard from, once: awaited since they were configured (a
        // restart must not give one that never comes a new `peer_absent_ms` to hold compaction
        // back for). Not over contacts that could not be read at the start.
        for (p, _) in self.peers.iter().filter(|_| self.heard_loaded) {
            if !self.last_contact.contains_key(p) && !self.awaited_since.contains_key(p) {
                let waited = self.configured_for(p);
                let since =
                    now.saturating_sub(u64::try_from(waited.as_millis()).unwrap_or(u64::MAX));
                self.awaited_since.insert(p.clone(), since);
                heard.insert(p.clone(), Heard::AwaitedSince(since));
            }
        }
        // When each connected peer's acknowledgements last moved (one whose did not move this
        // run: this start, or before it as saved), where that moved by `every`.
        let progress: BTreeMap<NodeId, u64> = self
            .conns
            .keys()
            .chain(self.acks_moved_at.keys())
            .map(|p| {
                let ago = u64::try_from(self.acks_moved_ago(p).as_millis()).unwrap_or(u64::MAX);
                (p.clone(), now.saturating_sub(ago))
            })
            .filter(|(p, at)| {
                self.progress_saved
                    .get(p)
                    .is_none_or(|s| at.abs_diff(*s) >= every)
            })
            .collect();
        if !heard.is_empty() || !progress.is_empty() {
            self.progress_saved
                .extend(progress.iter().map(|(p, at)| (p.clone(), *at)));
            self.heard_saved
                .extend(heard.iter().filter_map(|(p, h)| match h {
                    Heard::At(at) => Some((p.clone(), *at)),
                    Heard::AwaitedSince(_) => None,
                }));
            if let Err(e) = self.committer.save_peers_heard(heard, progress) {
                tracing::warn!("cannot save when peers were last heard from: {e}");
            }
        }
    }

    pub(super) fn set_compacted(&mut self, compacted: &Have) {
        self.core.set_compacted(compacted);
    }

    /// How long ago `peer`'s acknowledgements last moved: since this start, or before it as
    /// saved (a peer whose acknowledgements did not move this run counts from this start plus
    /// that).
    fn acks_moved_ago(&self, peer: &NodeId) -> Duration {
        match self.acks_moved_at.get(peer) {
            Some(at) => at.elapsed(),
            None => {
                self.started.elapsed()
                    + self
                        .moved_before_start
                        .get(peer)
                        .copied()
                        .unwrap_or_default()
            }
        }
    }

    /// Records a peer's acknowledgement `have`: whether it moved (see [`acks_moved`]) decides
    /// how long the peer holds compaction back.
    pub(super) fn ack_progress(&mut self, peer: &NodeId, have: &BTreeMap<NodeId, u64>) {
        if acks_moved(peer, self.acked.get(peer), have, self.core.local_have()) {
            self.acks_moved_at.insert(peer.clone(), Instant::now());
        }
    }

    /// Per origin, how far the changelog may be compacted now: what every configured peer
    /// acknowledged, less `keep_events`. Peers unheard of for `peer_absent_ms` do not count,
    /// nor connected peers whose acknowledgements have not moved for that long while they
    /// lack events (a peer that stays connected and never acknowledges would otherwise keep
    /// every node's changelog growing): either gets a snapshot when it needs removed events.
    /// Nor do revoked peers. Nor is more than `max_held_events` per origin kept for peers that count (one that
    /// acknowledges a little now and then would hold the changelog for ever).
    /// Only origins whose floor moved are listed.
    pub(super) fn compaction_floors(&self) -> Have {
        let recent = |ago: Duration| {
            self.retention
                .peer_absent_ms
                .is_none_or(|ms| ago < Duration::from_millis(ms))
        };
        // A revoked peer (still listed in `[[peers]]`, as the README's revocation keeps it)
        // is refused every session: it can never acknowledge again, so it holds nothing back.
        let counted: Vec<&NodeId> = self
            .peers
            .iter()
            .map(|(p, _)| p)
            .filter(|p| !self.config.is_revoked(p))
            .filter(|p| {
                if self.conns.contains_key(*p) {
                    recent(self.acks_moved_ago(p))
                } else {
                    recent(self.silent_for(p))
                }
            })
            .collect();
        // Every configured peer's snapshot hold (revoked ones aside), counted or not: a peer back from a long
        // absence is not counted (its page acknowledgements are not progress) exactly while
        // it takes the snapshot that brings it back. A hold ends on its own (see
        // `Replica::snapshot_hold`).
        let snapshots: Vec<Have> = self
            .peers
            .iter()
            .filter(|(p, _)| !self.config.is_revoked(p))
            .filter_map(|(p, _)| self.core.snapshot_hold(p))
            .collect();
        let acked: Vec<Option<&Have>> = counted.iter().map(|p| self.acked.get(*p)).collect();
        floors_of(
            self.core.local_have(),
            self.core.compacted(),
            &acked,
            &snapshots,
            self.retention.keep_events,
            self.retention.max_held_events,
        )
    }

    /// Queues a compaction when one is due and would remove something.
    pub(super) fn maybe_compact(&mut self) {
        let interval = Duration::from_millis(self.retention.interval_ms);
        let by_interval = self.compacted_at.elapsed() >= interval;
        let due = by_interval || (self.compact_more && Instant::now() >= self.compact_resume_at);
        if !self.retention.compact || self.compacting || !due {
            return;
        }
        // The sweep of superseded proofs goes once per interval, not in every transaction of
        // a compaction catching up (each of which resets `compacted_at`).
        let sweep = self.swept_at.elapsed() >= interval;
        self.compact_more = false;
        self.compacted_at = Instant::now();
        let floors = self.compaction_floors();
        if floors.is_empty() {
            return;
        }
        let hook = CommitHookSender(self.inbox.clone());
        match self.committer.compact(
            floors,
            sweep,
            Box::new(move |result| hook.compacted(result)),
        ) {
            Ok(()) => {
                self.compacting = true;
                if sweep {
                    self.swept_at = Instant::now();
                }
            }
            Err(e) => tracing::warn!("cannot queue a compaction: {e}"),
        }
    }

    /// The committer's answer to a compaction.
    pub(super) fn compacted(&mut self, result: Result<Compaction, CommitError>) {
        self.compacting = false;
        match result {
            Ok(c) => {
                self.reports.compactions_total += 1;
                self.reports.compacted_events_total += c.removed;
                if c.removed > 0 {
                    tracing::debug!(
                        removed = c.removed,
                        "changelog compacted up to {:?}",
                        c.compacted
                    );
                }
                // More to remove: the next small transaction goes soon, between writes, not a
                // whole interval later (see `COMPACT_PAUSE_FACTOR`).
                self.compact_more = c.more;
                self.compact_resume_at = Instant::now()
                    + self.compacted_at.elapsed() * crate::committer::COMPACT_PAUSE_FACTOR;
                self.set_compacted(&c.compacted);
            }
            Err(e) => tracing::error!("changelog compaction failed: {e}"),
        }
    }
}

/// Whether `peer`'s acknowledgement `have` moved since `before`: it holds more of events this
/// node holds (`held`) and may compact, or all of them. Its own events, and origins this node
/// does not hold (made up, or not here yet), do not count: a peer stuck on the others, or one
/// acknowledging ever more of an origin nobody has, would keep counting as moving and hold
/// the changelog back for good.
fn acks_moved(
    peer: &NodeId,
    before: Option<&BTreeMap<NodeId, u64>>,
    have: &BTreeMap<NodeId, u64>,
    held: &BTreeMap<NodeId, u64>,
) -> bool {
    // (An acknowledgement past what this node holds moved as far as what it holds.)
    let more = have.iter().any(|(o, &seq)| {
        o != peer
            && held.get(o).is_some_and(|&h| {
                let acked = seq.min(h);
                acked > 0 && before.and_then(|b| b.get(o)).is_none_or(|&b| acked > b)
            })
    });
    let all = held
        .iter()
        .all(|(o, &h)| have.get(o).is_some_and(|&seq| seq >= h));
    more || all
}

/// Per origin held here, how far its changelog may be compacted: what every counted peer
/// acknowledged (`acked`, one entry per peer; `None`: nothing yet), less `keep_events`; at least
/// the have less `max_held`; never past a snapshot being sent (`snapshots`, their haves). Only
/// origins whose floor is above what is compacted already are listed.
fn floors_of(
    held: &Have,
    compacted: &Have,
    acked: &[Option<&Have>],
    snapshots: &[Have],
    keep_events: u64,
    max_held: Option<u64>,
) -> Have {
    let mut floors = Have::new();
    for (origin, &held) in held {
        let mut floor = held.saturating_sub(keep_events);
        for peer in acked {
            floor = floor.min(peer.and_then(|h| h.get(origin)).copied().unwrap_or(0));
        }
        // However slowly a peer acknowledges, at most max_held events are kept for it.
        if let Some(max) = max_held {
            floor = floor.max(held.saturating_sub(max));
        }
        // Never past the have of a snapshot being sent, while the peer acknowledges pages
        // (`SNAPSHOT_HOLD_MS`) or while a lost connection interrupted it
        // (`Replica::snapshot_hold`): it needs the entries after it (on a slow link, a large
        // state could otherwise take snapshot after snapshot, each overtaken by the writes
        // made while it was sent, or start over after each outage).
        for have in snapshots {
            floor = floor.min(have.get(origin).copied().unwrap_or(0));
        }
        if floor > compacted.get(origin).copied().unwrap_or(0) {
            floors.insert(origin.clone(), floor);
        }
    }
    floors
}

#[cfg(test)]
mod tests {
    use super::*;

    fn have(pairs: &[(&str, u64)]) -> BTreeMap<NodeId, u64> {
        pairs
            .iter()
            .map(|(o, s)| (NodeId::parse(o).unwrap(), *s))
            .collect()
    }

    /// The rule alone: acknowledgements, keep_events, max_held and snapshot holds. A snapshot's
    /// hold binds whoever it is sent to (the caller passes every configured peer's, counted or
    /// not: a peer back after `peer_absent_ms` was not held for, and its snapshot could be
    /// overtaken by compaction, snapshot after snapshot).
    #[test]
    fn compaction_stops_at_acknowledgements_and_snapshot_holds() {
        let held = have(&[("a", 1_000), ("b", 50)]);
        let compacted = have(&[("b", 40)]);
        let p1 = have(&[("a", 900), ("b", 50)]);
        let p2 = have(&[("a", 700)]);
        // Both peers counted: the lowest acknowledgement; b not past 40 (p2 has none of it).
        assert_eq!(
            floors_of(&held, &compacted, &[Some(&p1), Some(&p2)], &[], 0, None),
            have(&[("a", 700)])
        );
        // keep_events keeps the newest.
        assert_eq!(
            floors_of(&held, &compacted, &[Some(&p1)], &[], 200, None),
            have(&[("a", 800)])
        );
        // max_held overrides a slow peer, a snapshot hold overrides max_held.
        assert_eq!(
            floors_of(&held, &compacted, &[Some(&p2), None], &[], 0, Some(100)),
            have(&[("a", 900)])
        );
        let hold = have(&[("a", 600), ("b", 45)]);
        assert_eq!(
            floors_of(&held, &compacted, &[Some(&p1)], &[hold], 0, Some(100)),
            have(&[("a", 600), ("b", 45)])
        );
        // No peer counted: only keep_events and the hold.
        let hold = have(&[("a", 10)]);
        assert_eq!(
            floors_of(&held, &compacted, &[], &[hold], 0, None),
            have(&[("a", 10)])
        );
    }

    #[test]
    fn only_progress_on_events_held_here_counts_as_moving() {
        let p = NodeId::parse("p").unwrap();
        let held = have(&[("a", 10), ("p", 50)]);
        let before = have(&[("a", 4), ("p", 40)]);
        // More of a's events, held here: moved.
        assert!(acks_moved(
            &p,
            Some(&before),
            &have(&[("a", 5), ("p", 40)]),
            &held
        ));
        // Only its own events moved: not counted (it is stuck on a's).
        assert!(!acks_moved(
            &p,
            Some(&before),
            &have(&[("a", 4), ("p", 45)]),
            &held
        ));
        // A made-up origin, or more of a than this node holds: not counted.
        assert!(!acks_moved(
            &p,
            Some(&before),
            &have(&[("a", 4), ("p", 40), ("zz", 7)]),
            &held
        ));
        assert!(!acks_moved(
            &p,
            Some(&have(&[("a", 10)])),
            &have(&[("a", 11)]),
            &held
        ));
        // Past what this node holds, from below it: moved as far as that.
        assert!(acks_moved(&p, Some(&before), &have(&[("a", 12)]), &held));
        // Everything this node holds: moved.
        assert!(acks_moved(
            &p,
            Some(&before),
            &have(&[("a", 10), ("p", 50)]),
            &held
        ));
        // A first acknowledgement of held events counts.
        assert!(acks_moved(&p, None, &have(&[("a", 1)]), &held));
    }
}
