//! What the replicator does not take on a peer's word: its own origin's history (the origin
//! gate after a restore), one machine per node id, certificates, events it already holds
//! (forks against changes by the peer), and how a peer that broke the protocol or lied is cut
//! off.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use edgerep_transport::CloseCode;
use edgerep_wire::{EncodedEvent, NodeId, Seal};

use super::{DUPLICATE_WINDOW, RefusalReport, Replicator};

/// Certificates refused in one message after which [`Replicator::learn_certs`] stops.
const CERTS_REFUSED_PER_MESSAGE: usize = 4;
use crate::committer::wall_ms;

/// Lowercase hex of a hash.
pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// How long a connection refused for its config stays open (see `refuse_config`).
const CONFIG_REFUSAL_GRACE: Duration = Duration::from_millis(500);

/// How long the origin gate waits for the other peers' claims after the first (see
/// `check_origin`).
pub(super) const ORIGIN_GRACE: Duration = Duration::from_secs(2);

/// What a peer's Hello says of this node's own events: how far it holds them, and the seal it
/// sends for that (see [`Replicator::own_claim`]).
pub(super) struct OwnClaim {
    seq: u64,
    seal: Option<Seal>,
}

impl OwnClaim {
    pub(super) fn of(local: &NodeId, hello: &edgerep_replica::Hello) -> OwnClaim {
        OwnClaim {
            seq: hello
                .have
                .iter()
                .find(|(o, _)| o == local)
                .map_or(0, |&(_, seq)| seq),
            seal: hello.your_seal.clone(),
        }
    }
}

/// How far a peer holds this node's own events, as far as this node takes its word.
#[derive(Debug, Clone)]
pub(super) struct Claimed {
    /// The sequence number (0: none).
    pub(super) seq: u64,
    /// This node's own seal there verified (a claim without one opens or holds the gate at
    /// start, as authentication allows, but never closes it once open).
    pub(super) proven: bool,
    /// The claim's seal is this node's own, signed, and this node's key does not verify it:
    /// why (its key changed since it wrote those events, or the peer lies).
    pub(super) key_differs: Option<String>,
}

/// Why local writes wait while no peer has said how far it holds this node's own events.
pub(crate) const ORIGIN_WAITING: &str = "waiting for the peers to say how far they hold this \
    node's own events (so that no sequence number is used twice after a restore); if no peer can \
    be reached, `edgerep run --alone` takes writes at once, but only if no peer ever held newer \
    events of this node than its store does: after a restore from a backup, writing alone signs \
    a second history of this node (a fork its peers will refuse)";

/// Closes the origin gate saying `waiting` (watchers are woken only when the reason changed).
fn set_waiting(gate: &tokio::sync::watch::Sender<Option<String>>, waiting: String) {
    gate.send_if_modified(|g| {
        let changed = g.as_deref() != Some(waiting.as_str());
        *g = Some(waiting.clone());
        changed
    });
}

impl Replicator {
    /// Opens the origin gate once the peers said how far they hold this node's own events and
    /// this node holds at least as much (after a restore from a backup, its later events come
    /// back from them first): then no sequence number can be used twice. Every configured peer
    /// (revoked ones aside) is waited for, but at most [`ORIGIN_GRACE`] after the first claim:
    /// a peer that lags (or lies low) must not open the gate before one that holds more spoke.
    /// A claim above what this node holds keeps it closed until those events are back.
    pub(super) fn check_origin(&mut self) {
        if let Some(why) = &self.own_forked {
            set_waiting(&self.origin_gate, why.clone());
            return;
        }
        if self.origin_open {
            return;
        }
        let gate = &self.origin_gate;
        let held = self.own_held();
        // Its own events that part of a snapshot brought back before a restart (the store
        // kept their numbers; the claim behind them lived in memory): a claim of its own, which
        // no removal of peers answers (the store refuses those numbers in any case).
        if self.own_seen > held {
            set_waiting(
                gate,
                format!(
                    "this node's store holds its own events up to {} from part of a peer's snapshot (it was restored from a backup), its history only up to {held}: waiting for the rest to come back from the peers before taking writes (if no peer holds them any more, move the store aside and start empty)",
                    self.own_seen
                ),
            );
            return;
        }
        // No peer left to say it (a reload removed or revoked them all): as at a start with
        // this config, nobody is waited for.
        if self.peers.iter().all(|(p, _)| self.config.is_revoked(p)) {
            tracing::info!(
                "no peer left to say how far it holds this node's own events (all removed or revoked): taking writes"
            );
            gate.send_replace(None);
            self.origin_open = true;
            return;
        }
        let Some(first) = self.origin_first_claim else {
            // No peer said it yet: their last errors say why (unreachable, or refused for its
            // protocol version or config), with the wait's own reason.
            let errors: Vec<String> = self
                .peers
                .iter()
                .filter_map(|(p, _)| {
                    let e = self.refusals.get(p).or_else(|| self.last_error.get(p));
                    e.map(|e| format!("{p}: {e}"))
                })
                .collect();
            let waiting = if errors.is_empty() {
                ORIGIN_WAITING.to_owned()
            } else {
                format!(
                    "{ORIGIN_WAITING}. The peers' last errors: {}",
                    errors.join("; ")
                )
            };
            set_waiting(gate, waiting);
            return;
        };
        // Peers removed or revoked since they claimed no longer count.
        let (peers, config) = (&self.peers, &self.config);
        self.origin_claims
            .retain(|p, _| peers.iter().any(|(id, _)| id == p) && !config.is_revoked(p));
        let Some((top_peer, &top)) = self.origin_claims.iter().max_by_key(|&(_, c)| *c) else {
            return;
        };
        let all_heard = self
            .peers
            .iter()
            .all(|(p, _)| self.origin_claims.contains_key(p) || self.config.is_revoked(p));
        let claims = || {
            self.origin_claims
                .iter()
                .map(|(p, c)| (p.to_string(), *c))
                .collect::<BTreeMap<_, _>>()
        };
        // Only claims that hold the gate shut: one at or below what this node holds is no reason
        // to wait, whatever its seal.
        let differs: Vec<String> = self
            .own_key_differs
            .iter()
            .filter(|(p, _)| self.origin_claims.get(*p).is_some_and(|&c| c > held))
            .map(|(p, why)| format!("{p}: {why}"))
            .collect();
        let waiting = if top > held && !differs.is_empty() {
            // What an operator must act on, not wait out: say it where writes are refused.
            format!(
                "peers hold this node's own events up to {:?} under seals this node's key does not verify ({}): this node's key changed since it wrote them (a certificate issued again for the same node id; a node id keeps its key), or those peers lie. Put the former key and certificate back, or give this site a new node id and an empty data_dir (or revoke a lying peer); until then this node takes no writes",
                claims(),
                differs.join("; ")
            )
        } else if top > held {
            format!(
                "this node holds its own events up to {held}, peers hold them up to {:?}: waiting for the missing ones to come back before taking writes",
                claims()
            )
        } else if all_heard || first.elapsed() >= ORIGIN_GRACE {
            tracing::info!(peer = %top_peer, "peers hold this node's own events up to {top} at most ({:?}), this node up to {held}: taking writes", claims());
            gate.send_replace(None);
            self.origin_open = true;
            return;
        } else {
            format!(
                "peers hold this node's own events up to {:?}, this node up to {held}: waiting up to {} ms for the other peers to say how far they hold them",
                claims(),
                ORIGIN_GRACE.as_millis()
            )
        };
        set_waiting(gate, waiting);
    }

    /// How far a peer holds this node's own events, as far as this node takes its word (0: not
    /// at all). With authentication, a claim counts only with this node's own seal at that
    /// sequence number behind it (`Hello::your_seal`): a number without it would hold the origin
    /// gate shut for as long as the sender likes, so it is taken as no claim (and logged). A
    /// signed seal there that this node's key does not verify keeps the claim (see below).
    pub(super) fn own_claim(&self, peer: &NodeId, claim: OwnClaim) -> Claimed {
        use edgerep_store::Keys as _;
        let local = self.core.local();
        let OwnClaim { seq: claim, seal } = claim;
        let Some(keys) = self.log.keys.as_ref().filter(|_| claim > 0) else {
            return Claimed {
                seq: claim,
                proven: false,
                key_differs: None,
            };
        };
        let unproven = match &seal {
            None => "without this node's seal there".to_owned(),
            Some(seal) if seal.origin != *local || seal.seq != claim => format!(
                "with a seal of {} at {} instead of this node's at {claim}",
                seal.origin, seal.seq
            ),
            Some(seal) if seal.signature.is_empty() => {
                "with an unsigned seal (from before this node had keys)".to_owned()
            }
            Some(seal) => match keys.verify(local, claim, &seal.message(), &seal.signature) {
                Ok(()) => {
                    return Claimed {
                        seq: claim,
                        proven: true,
                        key_differs: None,
                    };
                }
                Err(e) => {
                    // A signed seal of this node's own at that number that this node's key
                    // does not verify: its key changed since it wrote those events (a machine
                    // rebuilt with a new certificate), or the peer lies. Taking writes could
                    // reuse sequence numbers the peers hold, so the claim stands (the gate
                    // stays shut) until an operator puts the former key back or revokes the
                    // peer.
                    let until = if self.origin_open {
                        "the writes this node takes may reuse numbers the peer holds"
                    } else {
                        "until then this node takes no writes"
                    };
                    tracing::error!(peer = %peer, "the peer holds this node's own events up to {claim} under a seal this node's key does not verify ({e}): either this node's key changed since it wrote them (put the former key and certificate back, or give this site a new node id) or the peer lies (revoke it); {until}");
                    return Claimed {
                        seq: claim,
                        proven: false,
                        key_differs: Some(e.to_string()),
                    };
                }
            },
        };
        tracing::warn!(peer = %peer, "the peer says it holds this node's own events up to {claim}, {unproven}: taken as holding none of them");
        Claimed {
            seq: 0,
            proven: false,
            key_differs: None,
        }
    }

    /// A fork of this node's own origin was found (`origin`: the fork's), both events proven by
    /// this node's seals (a repair's: see `edgerep_store`'s `holds_other`; not a batch's fork,
    /// which events a peer changed can imitate): a peer holds another event this node's key
    /// sealed under one of its sequence numbers. Another machine runs under this node's id and
    /// key, or this store was restored and wrote again: either way every local write from here
    /// extends a history some peers refuse (acknowledged, then lost). The gate closes until a
    /// restart, saying what the operator must do.
    pub(super) fn own_fork(&mut self, origin: &str, seq: u64) {
        if origin != self.core.local().as_str() || self.own_forked.is_some() {
            return;
        }
        let why = own_fork_refusal(seq);
        tracing::error!("{why}");
        self.own_forked = Some(why);
        self.origin_open = false;
        self.check_origin();
        // Kept by the store: a restart (a crash, a supervisor's) must not open the gate again
        // on a store that holds the other history.
        if let Err(e) = self.committer.record_own_fork(seq) {
            tracing::error!("cannot record the fork of this node's own history: {e}");
        }
    }

    /// How far this node holds its own events.
    fn own_held(&self) -> u64 {
        let local = self.core.local();
        self.core.local_have().get(local).copied().unwrap_or(0)
    }

    /// Records `peer`'s claim of how far it holds this node's own events, and checks the gate.
    /// Every peer's last claim is kept, also while the gate is open. A proven claim (this
    /// node's own seal behind it) above what this node holds after the gate opened (a peer
    /// that lagged, or none, answered in time after a restore from a backup, or `--alone`)
    /// closes it again: every write from here would sign a second history under numbers the
    /// peer holds. It opens again once those events are back, or that peer is removed or
    /// revoked. Without authentication a claim proves nothing later on: logged only.
    pub(super) fn origin_claimed(&mut self, peer: NodeId, claimed: Claimed) {
        let claim = claimed.seq;
        self.origin_claims.insert(peer.clone(), claim);
        match claimed.key_differs {
            Some(why) => self.own_key_differs.insert(peer.clone(), why),
            None => self.own_key_differs.remove(&peer),
        };
        if self.origin_open {
            let held = self.own_held();
            if claim <= held {
                return;
            }
            if !claimed.proven {
                tracing::warn!(peer = %peer, "the peer says it holds this node's own events up to {claim}, this node only up to {held} (its store was restored from a backup, or lost data, or the peer is wrong): without this node's verified seal behind it its word is not proof, so writes go on");
                return;
            }
            tracing::error!(peer = %peer, "the peer holds this node's own events up to {claim} under this node's seal, this node only up to {held} (its store was restored from a backup or lost data, or another machine uses this node's id and key: see duplicate_id in status): local writes are refused until the missing events are back from the peers; if this node wrote since (status lists forks), those writes are a second history its peers refuse: move its store aside and start it empty to take its history back from the peers");
            self.origin_open = false;
            self.origin_first_claim = Some(Instant::now());
        }
        self.origin_first_claim.get_or_insert_with(Instant::now);
        self.check_origin();
    }

    /// Tracks `peer`'s instances; when two alternate within [`DUPLICATE_WINDOW`], two machines
    /// use its node id: the session is closed and the peer refused for a while. Returns whether
    /// that happened.
    pub(super) fn duplicate_id(&mut self, peer: &NodeId, instance: u64) -> bool {
        let seen = self.instances.entry(peer.clone()).or_default();
        if seen.back().is_some_and(|&(i, _)| i == instance) {
            return false;
        }
        seen.push_back((instance, Instant::now()));
        while seen.len() > 3 {
            seen.pop_front();
        }
        let alternating = seen.len() == 3
            && seen[0].0 == seen[2].0
            && seen[0].0 != seen[1].0
            && seen[0].1.elapsed() < DUPLICATE_WINDOW;
        if !alternating {
            return false;
        }
        let remote = self
            .conns
            .get(peer)
            .map(|l| l.conn.remote.to_string())
            .unwrap_or_default();
        let why = format!(
            "two machines use node id {peer:?} (instances {:016x} and {:016x} displaced each other within {} s; the last from {remote}): sessions refused for {} s; give one of them a new identity",
            seen[0].0,
            seen[1].0,
            DUPLICATE_WINDOW.as_secs(),
            DUPLICATE_WINDOW.as_secs()
        );
        tracing::error!(peer = %peer, "{why}");
        seen.clear();
        self.duplicates
            .insert(peer.clone(), (Instant::now(), why.clone()));
        if let Some(live) = self.conns.remove(peer) {
            live.conn.close(CloseCode::DuplicateId, &why);
        }
        self.core.disconnected(peer, self.now());
        self.last_error.insert(peer.clone(), why);
        true
    }

    /// A peer closed a link saying it saw another machine using this node's id (a copied
    /// identity: the two would each acknowledge writes under the same sequence numbers, and
    /// those of one are lost). Reported until a restart; writes are not stopped on the peer's
    /// word alone (a peer is not trusted): a fork of this node's own history, proven by its
    /// seals, stops them (see `own_fork`).
    pub(super) fn twin_reported(&mut self, peer: NodeId, reason: String) {
        tracing::error!(
            peer = %peer,
            "another machine uses this node's id and identity, as peer {peer} saw ({reason}): stop the copy and give it an identity of its own (edgerep certs node), or writes acknowledged by one of the two are lost"
        );
        self.twin = Some((peer, reason, Instant::now()));
    }

    /// Takes in the certificates a peer sent as they arrive (checked against the CA and the
    /// origin's name), so that they serve even when the events they came with are not applied
    /// now. Returns why the peer must be cut off: a certificate that does not chain to the CA or
    /// names another node than the origin it is sent for (an honest peer relays only
    /// certificates it checked against the same CA; each new one would otherwise buy a
    /// signature check on this thread, message after message).
    /// At most [`edgerep_wire::seal::MAX_CERTS_PER_ORIGIN`] certificates per origin are checked per message (the
    /// decoder keeps no more), and none after [`CERTS_REFUSED_PER_MESSAGE`] were refused (a
    /// peer sending many bad ones must not buy a signature check each).
    pub(super) fn learn_certs(&self, peer: &NodeId, certs: &[(NodeId, Vec<u8>)]) -> Option<String> {
        let keys = self.log.keys.as_ref()?;
        let mut seen: BTreeMap<&NodeId, usize> = BTreeMap::new();
        let mut refused = 0;
        for (origin, der) in certs {
            let n = seen.entry(origin).or_default();
            *n += 1;
            if *n > edgerep_wire::seal::MAX_CERTS_PER_ORIGIN {
                continue;
            }
            if let Err(e) = edgerep_store::Keys::learn(keys.as_ref(), origin, der) {
                if matches!(
                    e,
                    edgerep_store::KeyError::BadCertificate(_)
                        | edgerep_store::KeyError::OtherNode { .. }
                ) {
                    return Some(format!(
                        "a certificate it sent as {origin}'s was refused: {e}"
                    ));
                }
                refused += 1;
                tracing::debug!(peer = %peer, origin = %origin, "a certificate a peer sent was refused: {e}");
                if refused == CERTS_REFUSED_PER_MESSAGE {
                    tracing::warn!(peer = %peer, "a peer sent {refused} certificates that were refused in one message: the rest are not checked (last: {e})");
                    return None;
                }
            }
        }
        None
    }

    /// Compares the events of a batch this node already holds with what it holds. A different
    /// event its origin sealed (the batch carries the seal and its whole block, the block's
    /// root matches and the signature verifies) is a fork: reported, never applied. A different
    /// event without that proof was changed by the peer: returns why, and the peer is cut off.
    ///
    /// The work is bounded per batch: the batch is indexed once, each seal's block is proven
    /// once, and at most [`FORK_PROOFS_PER_BATCH`] seals are proven; differing events past
    /// them must still be covered by a seal of their origin in the batch, but are dropped
    /// unproven and unreported (the ones held stay in any case), so a peer replaying another
    /// history of a long log buys a few signature checks a message.
    pub(super) fn check_forks(
        &mut self,
        peer: &NodeId,
        events: &[EncodedEvent],
        seals: &[Seal],
    ) -> Option<String> {
        let compacted = self.core.compacted();
        let held: Vec<&EncodedEvent> = events
            .iter()
            .filter(|e| {
                e.seq <= self.core.local_have().get(&e.origin).copied().unwrap_or(0)
                    && e.seq > compacted.get(&e.origin).copied().unwrap_or(0)
            })
            .collect();
        if held.is_empty() {
            return None;
        }
        let wanted: Vec<(&str, u64)> = held.iter().map(|e| (e.origin.as_str(), e.seq)).collect();
        let hashes = match self.store.event_hashes(&wanted) {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!("cannot compare received events with the changelog: {e}");
                return None;
            }
        };
        // Each seal's block is proven once per batch, however many of its events differ (a
        // peer replaying a whole other history must not cost a Merkle root per event).
        let mut proven: BTreeMap<usize, bool> = BTreeMap::new();
        // Built at the first differing event only: duplicates that match cost no index.
        let mut index: Option<BatchIndex> = None;
        for (event, stored) in held.iter().zip(hashes) {
            let Some(stored) = stored else { continue };
            let received = edgerep_store::event_hash(event.bytes());
            if received == stored {
                continue;
            }
            let index = index.get_or_insert_with(|| BatchIndex::new(events, seals));
            let Some(seal) = index.seal_covering(seals, event) else {
                return Some(format!(
                    "event {}:{} differs from the one this node holds and no seal of its origin in the batch covers it: the peer changed it",
                    event.origin, event.seq
                ));
            };
            if !proven.contains_key(&seal) && proven.len() == FORK_PROOFS_PER_BATCH {
                // Past the bound a covering seal is still required (above), not proven: the
                // event is dropped unreported, as the duplicate it claims to be.
                continue;
            }
            let sealed = *proven
                .entry(seal)
                .or_insert_with(|| self.sealed_in_batch(&seals[seal], index));
            if !sealed {
                return Some(format!(
                    "event {}:{} differs from the one this node holds and its origin's seal does not prove it: the peer changed it",
                    event.origin, event.seq
                ));
            }
            self.reports.found_fork(
                peer,
                (event.origin.as_str(), event.seq),
                hex(&stored),
                hex(&received),
                "a peer sent a different event its origin sealed under an origin and sequence number this node holds",
            );
        }
        None
    }

    /// Whether `seal`'s events are proven their origin's by the batch alone: the batch holds
    /// the seal's whole block, the block's Merkle root matches and the
    /// signature verifies (with keys; without, the root must still match).
    pub(super) fn sealed_in_batch(&self, seal: &Seal, batch: &BatchIndex) -> bool {
        let block = batch.block(seal);
        if block.len() as u64 != seal.seq - seal.first + 1 {
            return false;
        }
        let leaves: Vec<_> = block.iter().map(|e| e.leaf()).collect();
        if edgerep_wire::seal::merkle_root(&leaves) != seal.root {
            return false;
        }
        match &self.log.keys {
            Some(keys) => edgerep_store::Keys::verify(
                keys.as_ref(),
                &seal.origin,
                seal.seq,
                &seal.message(),
                &seal.signature,
            )
            .is_ok(),
            None => true,
        }
    }

    /// `peer` broke the protocol: its connection is closed with the reason.
    pub(super) fn protocol_error(&mut self, peer: NodeId, reason: String, now: u64) {
        self.end_refused(peer, reason, None, now);
    }

    /// Ends the session of a peer whose config differs (another policy or resolver): a
    /// mistake of an operator, not a lie. The connection closes after
    /// [`CONFIG_REFUSAL_GRACE`], so the peer still reads this node's Hello (how far this node
    /// holds the peer's own events: that opens the peer's origin gate after a restart) and
    /// learns why; its reader pauses at once, so nothing more of what it sends is read.
    pub(super) fn refuse_config(&mut self, peer: NodeId, reason: String, now: u64) {
        // This node's Hello may still be queued in the core (the peer's came in the same
        // batch as the connection): it goes out first.
        self.transmit();
        self.end_refused(peer, reason, Some(CONFIG_REFUSAL_GRACE), now);
    }

    /// Counts and logs a session refused for `reason`, and keeps the reason for the origin
    /// gate's wait (see `refusals`).
    pub(super) fn note_refusal(&mut self, peer: NodeId, reason: String) {
        self.reports.protocol_errors_total += 1;
        tracing::warn!(peer = %peer, "protocol error, disconnecting: {}", edgerep_wire::text::one_line(&reason));
        self.refusals.insert(peer, reason);
    }

    fn end_refused(&mut self, peer: NodeId, reason: String, grace: Option<Duration>, now: u64) {
        self.note_refusal(peer.clone(), reason.clone());
        if let Some(live) = self.conns.remove(&peer) {
            match grace {
                None => live.conn.close(CloseCode::Protocol, &reason),
                Some(grace) => {
                    live.paused
                        .store(true, std::sync::atomic::Ordering::Release);
                    let why = reason.clone();
                    // The link is kept whole until the close (dropped, its writer would end
                    // the stream first, and the peer would see that instead of the reason).
                    self.runtime.spawn(async move {
                        let live = live;
                        tokio::time::sleep(grace).await;
                        live.conn.close(CloseCode::Protocol, &why);
                    });
                }
            }
        }
        self.core.disconnected(&peer, now);
        self.aae_disconnected(&peer);
        self.last_error.insert(peer, reason);
    }

    /// Refuses what `peer` sent as not its origins' (reported), and closes its connection.
    pub(super) fn cut_off(&mut self, peer: NodeId, reason: String, now: u64) {
        self.reports.refused(
            RefusalReport {
                from_peer: peer.to_string(),
                origin: String::new(),
                seq: 0,
                reason: reason.clone(),
                at_ms: wall_ms(),
            },
            1,
        );
        // Anti-entropy's session with it ends too (it used to run on to its timeout).
        self.end_session(&peer, CloseCode::Protocol, &reason, now);
        self.last_error.insert(peer, reason);
    }
}

/// Seals [`Replication::check_forks`] proves in one batch at most (each a Merkle root and a
/// signature check on the replicator thread).
const FORK_PROOFS_PER_BATCH: usize = 16;

/// A batch's events by origin and sequence number (the first of duplicates), and its seals by
/// origin and last sequence number: built once per batch, so that proving a fork costs a
/// lookup, not a scan of the batch per seal.
pub(super) struct BatchIndex<'a> {
    events: BTreeMap<(&'a str, u64), &'a EncodedEvent>,
    seals: BTreeMap<(&'a str, u64), usize>,
}

impl<'a> BatchIndex<'a> {
    pub(super) fn new(events: &'a [EncodedEvent], seals: &'a [Seal]) -> BatchIndex<'a> {
        let mut by_seq = BTreeMap::new();
        for e in events {
            by_seq.entry((e.origin.as_str(), e.seq)).or_insert(e);
        }
        BatchIndex {
            events: by_seq,
            seals: seals
                .iter()
                .enumerate()
                .map(|(i, s)| ((s.origin.as_str(), s.seq), i))
                .collect(),
        }
    }

    /// The index in `seals` of the first seal at or after `event` of its origin, if it covers it.
    fn seal_covering(&self, seals: &[Seal], event: &EncodedEvent) -> Option<usize> {
        let origin = event.origin.as_str();
        self.seals
            .range((origin, event.seq)..=(origin, u64::MAX))
            .map(|(_, &i)| i)
            .next()
            .filter(|&i| seals[i].covers(event.seq))
    }

    /// The batch's events in `seal`'s block, in order, each sequence number once.
    fn block(&self, seal: &Seal) -> Vec<&'a EncodedEvent> {
        let origin = seal.origin.as_str();
        self.events
            .range((origin, seal.first)..=(origin, seal.seq))
            .map(|(_, &e)| e)
            .collect()
    }
}

/// Why local writes are refused once another history of this node's own events was proven at
/// `seq` (by a repair this run, or recorded in the store by an earlier one).
pub(crate) fn own_fork_refusal(seq: u64) -> String {
    format!(
        "another history of this node's own events was found at its sequence number {seq}, sealed with this node's key (another machine runs under this node's id and key, or this store was restored from a backup and wrote again; the store keeps this finding across restarts): local writes are refused, since peers refuse one of the two histories. Stop the other machine (or give it a new node id), then move this node's store aside and start it empty to take its history back from the peers; if the fork is found again after that (peers hold both histories), give this site a new node id"
    )
}
