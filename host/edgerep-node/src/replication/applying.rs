//! Batches from peers on their way to the store: through the transforms on apply
//! ([`crate::apply`]) to the committer, and the committer's answers back to the core (forks
//! reported, traced events' apply spans, forged batches cutting their sender off). Snapshot
//! pages take the same road without transforms: refused for collections that have them.
//!
//! Invariants:
//! - The core hears how each Apply ended in the order it handed them out (up to
//!   [`edgerep_replica::APPLIES_IN_FLIGHT`] per peer). The committer answers in that order; an
//!   Apply that ends here, without the committer (everything refused, a forgery found before
//!   the transforms, a halt), is answered after the peer's Applies still at the committer.
//! - A batch is admitted against what is durable plus what the same peer's batches still at
//!   the committer admitted, and queued on the peer's [`ApplyChain`]: if one of those fails or
//!   leaves events out, the batches behind it are refused unapplied, so nothing is applied
//!   counting on events that never were. Batches on a broken chain, and other peers' batches
//!   at the committer, count for nothing here.

use std::collections::{BTreeMap, BTreeSet};

use edgerep_replica::have;
use edgerep_store::{Installed, RemoteApply};
use edgerep_wire::{EncodedEvent, NodeId, Seal};

use super::trust::hex;
use super::{CommitHookSender, RefusalReport, Replicator};
use crate::committer::{ApplyChain, CommitError, wall_ms};

/// What went to the committer with a batch, for its answer.
pub(crate) struct SentApply {
    /// When it went, and its events that carry a trace context.
    traced: Option<(std::time::SystemTime, Vec<TracedEvent>)>,
}

impl std::fmt::Debug for SentApply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentApply")
            .field("traced", &self.traced.as_ref().map_or(0, |(_, t)| t.len()))
            .finish()
    }
}

/// An outstanding Apply of a peer's events.
pub(super) enum Outstanding {
    /// At the committer, on `chain`: per origin, the highest sequence number admission let
    /// through, and the origins the core handed events of that admission left out (their later
    /// events in the peer's next batch would not continue what is applied).
    AtCommitter {
        admitted: BTreeMap<NodeId, u64>,
        cut: BTreeSet<NodeId>,
        chain: ApplyChain,
    },
    /// Ended here, to be told to the core after those before it.
    Ended(Ended),
}

/// How an Apply that did not reach the committer ended.
pub(super) enum Ended {
    /// Nothing of it was left to apply.
    Applied,
    /// It failed, for this reason.
    Failed(String),
}

/// An event of an outstanding apply that carries a trace context.
pub(super) struct TracedEvent {
    traceparent: String,
    origin: String,
    seq: u64,
    collection: String,
    /// Its transforms on apply.
    plugins: Vec<crate::pipeline::PluginCall>,
}

impl Replicator {
    /// Ends `peer`'s batch and cuts the peer off for event `seq` of `origin`, found forged
    /// before the committer saw it (`when`: at which check, for the log).
    fn forgery_found(&mut self, peer: NodeId, when: &str, origin: &str, seq: u64, reason: &str) {
        let reason = format!("event {origin}/{seq} is forged ({reason})");
        tracing::error!(peer = %peer, "{when}, disconnecting: {reason}");
        let now = self.now();
        self.ended(&peer, Ended::Failed(reason.clone()));
        self.cut_off(peer, reason, now);
    }

    /// A batch the core hands out for applying.
    pub(super) fn apply_batch(
        &mut self,
        peer: NodeId,
        events: Vec<EncodedEvent>,
        seals: Vec<Seal>,
        certs: Vec<(NodeId, Vec<u8>)>,
    ) {
        // Per origin with a session here: how far it says it holds its own events.
        // Only without authentication: with it, the origin's signed seal proves its
        // events whoever relays them, and holding relays back would stall an
        // origin whose link went silent until the connection times out.
        let own_claims: BTreeMap<NodeId, u64> = self
            .conns
            .keys()
            .filter(|_| !self.config.replication.authenticate)
            .filter(|o| self.core.is_ready(o))
            .filter_map(|o| {
                let claim = self.acked.get(o)?.get(o).copied().unwrap_or(0);
                Some((o.clone(), claim))
            })
            .collect();
        // What the peer's earlier batches at the committer admitted (applied before this one,
        // or this one is refused: see `ApplyChain`), and the origins they left out.
        let mut have = self.core.local_have().clone();
        let mut cut = BTreeSet::new();
        for o in self.outstanding.get(&peer).into_iter().flatten() {
            if let Outstanding::AtCommitter {
                admitted,
                cut: c,
                chain,
            } = o
                && chain.broken().is_none()
            {
                have::join(&mut have, admitted.iter().map(|(o, &s)| (o, s)));
                cut.extend(c.iter().cloned());
            }
        }
        // New origins other peers' batches at the committer bring (see `Admission::elsewhere`).
        let elsewhere: BTreeSet<NodeId> = self
            .outstanding
            .iter()
            .filter(|(p, _)| **p != peer)
            .flat_map(|(_, q)| q)
            .filter_map(|o| match o {
                Outstanding::AtCommitter {
                    admitted, chain, ..
                } if chain.broken().is_none() => Some(admitted.keys()),
                _ => None,
            })
            .flatten()
            .filter(|o| !have.contains_key(*o) && *o != self.core.local())
            .cloned()
            .collect();
        // Per origin, the highest sequence number the core handed out in this batch.
        let mut handed = have::Have::new();
        for e in &events {
            have::raise(&mut handed, &e.origin, e.seq);
        }
        let admission = crate::apply::Admission {
            config: &self.config,
            local: self.core.local(),
            have: &have,
            cut: &cut,
            elsewhere: &elsewhere,
            own_claims: &own_claims,
            from: &peer,
            pipeline: &self.pipeline,
            // How many more of the batch's events may be set aside (transforms on apply) or
            // kept as dead letters for the write policy.
            dead_letter_room: crate::apply::DeadLetterRoom::of(
                self.committer.dead_letter_budget(),
                crate::dead_letter_budget::DeadLetterLimits::of(&self.config.limits),
            ),
        };
        // Transforms on apply run before the committer checks the seals: a halt keeps the
        // events admission kept, to check them with before a transform's failure may halt
        // replication (not the batch as sent: events admission refused, such as a revoked
        // node's, would fail the check and keep an honest halt from happening).
        let keep_admitted = !self.transformed_on_apply.is_empty()
            && events
                .iter()
                .any(|e| self.transformed_on_apply.contains(e.collection.as_str()));
        // Other origins' events as sent, while admission may hold some back (see below).
        let sent: Vec<EncodedEvent> = if self.config.replication.authenticate {
            events
                .iter()
                .filter(|e| e.origin != peer)
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        let admitted = crate::apply::admit(&admission, events, &seals);
        // Events admission holds back (deferred) never reach the committer's seal check, yet
        // until this batch is answered the core counts them delivered, and drops other peers'
        // copies of them as duplicates: a peer sending forged events that defer (a context
        // naming what nobody holds) would hold an origin back for as long as it keeps sending
        // them. With authentication they are checked against their origins' seals here, and a
        // forgery cuts the peer off, as the committer's check does. (Events past what the
        // store holds that the batch alone cannot prove are deferred as before.)
        let held_back = admitted.held_back(sent);
        if !held_back.is_empty()
            && let Err(edgerep_store::StoreError::Forged {
                origin,
                seq,
                reason,
            }) = self
                .store
                .check_sealed_but_forks(&held_back, &seals, &certs)
        {
            self.forgery_found(peer, "events held back are refused", &origin, seq, &reason);
            return;
        }
        // With authentication, events that transforms would run on are first shown to be
        // their origins' (the committer checks them anyway, after the transforms): a peer
        // sending made-up events must not buy plugin runs with them, again after each
        // reconnect, since they are never stored. (A fork, another history its origin
        // signed, is no forgery of the sender's: the committer leaves it out and reports it.)
        // Events past what the store holds (an earlier batch still at the committer) must be
        // shown by the batch alone; when they cannot be, the batch is taken again once the
        // store holds what comes before it, and the transforms run then.
        if keep_admitted && self.config.replication.authenticate && !admitted.events.is_empty() {
            match self
                .store
                .check_sealed_but_forks(&admitted.events, &seals, &certs)
            {
                Err(edgerep_store::StoreError::Forged {
                    origin,
                    seq,
                    reason,
                }) => {
                    let when = "events refused before their transforms on apply";
                    self.forgery_found(peer, when, &origin, seq, &reason);
                    return;
                }
                Err(e @ edgerep_store::StoreError::Unproven { .. }) => {
                    tracing::debug!(peer = %peer, "batch taken again once the store holds what comes before it: {e}");
                    self.ended(&peer, Ended::Failed(e.to_string()));
                    return;
                }
                // Anything else (a revoked origin, a read that failed) the committer meets
                // and answers again after the transforms.
                _ => {}
            }
        }
        // The wiring in force stays so until the batch is committed (a reload waits for it).
        let Some(wiring) = self.pipeline.hold_wiring() else {
            self.ended(
                &peer,
                Ended::Failed("a reload is putting a new wiring of plugins in force: the batch is taken again".into()),
            );
            return;
        };
        let prepared = crate::apply::prepare(
            &self.pipeline,
            &self.value_limits,
            &admission,
            admitted,
            keep_admitted,
        );
        // The places the batch's dead letters took under the limit: given back if it ends
        // here, kept by the committer once they are committed.
        let promise = admission.dead_letter_room.into_promise();
        let prepared = match prepared {
            Ok(p) => p,
            Err(halt) => {
                // A halt on a peer's word would let one forged event stop replication with
                // every peer: only events their origins vouch for may halt it.
                let checked = if halt.admitted.is_empty() {
                    Ok(())
                } else {
                    self.store.check_sealed(&halt.admitted, &seals, &certs)
                };
                match checked {
                    Err(edgerep_store::StoreError::Forged {
                        origin,
                        seq,
                        reason,
                    }) => {
                        let reason = format!(
                            "event {origin}/{seq} is forged ({reason}); a transform on apply failed on the batch, which halts nothing since the batch is not its origins'"
                        );
                        tracing::error!(peer = %peer, "events refused, disconnecting: {reason}");
                        let now = self.now();
                        self.ended(&peer, Ended::Failed(reason.clone()));
                        self.cut_off(peer, reason, now);
                    }
                    Ok(()) => {
                        self.ended(&peer, Ended::Failed(halt.reason.clone()));
                        self.halt(halt);
                    }
                    // Not shown to be the origins' (a revoked origin's seal, a read that
                    // failed): nothing halts; the batch is sent again.
                    Err(e) => {
                        let reason = format!(
                            "a transform on apply failed on the batch ({}), but its events could not be checked against their origins' seals ({e}): not halted",
                            halt.reason
                        );
                        tracing::warn!(peer = %peer, "{reason}");
                        self.ended(&peer, Ended::Failed(reason));
                    }
                }
                return;
            }
        };
        for r in &prepared.refused {
            if r.deferred {
                // Normal when events overtake what they depend on: sent again later.
                tracing::debug!(peer = %peer, origin = %r.origin, seq = r.seq, "event deferred: {}", r.reason);
                self.reports.deferred(&r.reason);
                continue;
            }
            static LOG: crate::log_limit::Throttle =
                crate::log_limit::Throttle::new(crate::log_limit::EVERY);
            if let Some(left_out) = LOG.allow() {
                tracing::warn!(peer = %peer, origin = %r.origin, seq = r.seq, left_out, "refused an event (and its origin's later ones in the batch): {} (lines like this one are written once per 10 s, `left_out` says how many were not; status `refused` lists the last ones)", r.reason);
            }
            self.reports.refused(
                RefusalReport {
                    from_peer: peer.to_string(),
                    origin: r.origin.to_string(),
                    seq: r.seq,
                    reason: r.reason.clone(),
                    at_ms: wall_ms(),
                },
                1,
            );
        }
        if prepared.events.is_empty() && prepared.dead_letters.is_empty() {
            // Everything was refused: nothing to commit.
            self.ended(&peer, Ended::Applied);
            return;
        }
        let traced: Vec<TracedEvent> = prepared
            .events
            .iter()
            .filter_map(|r| {
                let e = &r.event;
                Some(TracedEvent {
                    traceparent: e.meta.get(crate::trace::TRACEPARENT)?.clone(),
                    origin: e.origin.to_string(),
                    seq: e.seq,
                    collection: e.collection.clone(),
                    plugins: prepared
                        .traced_calls
                        .get(&(e.origin.clone(), e.seq))
                        .cloned()
                        .unwrap_or_default(),
                })
            })
            .collect();
        let sent_apply = SentApply {
            traced: (!traced.is_empty()).then(|| (std::time::SystemTime::now(), traced)),
        };
        let mut admitted = have::Have::new();
        for r in &prepared.events {
            have::raise(&mut admitted, &r.event.origin, r.event.seq);
        }
        let cut: BTreeSet<NodeId> = handed
            .into_iter()
            .filter(|(o, seq)| admitted.get(o).is_none_or(|a| a < seq))
            .map(|(o, _)| o)
            .collect();
        // The peer's chain, or a new one once it broke (the committer breaks it, before the
        // failure's answer reaches this thread).
        let chain = match self.chains.get(&peer) {
            Some(c) if c.broken().is_none() => c.clone(),
            _ => {
                let c = ApplyChain::default();
                self.chains.insert(peer.clone(), c.clone());
                c
            }
        };
        let hook = CommitHookSender(self.inbox.clone());
        let to = peer.clone();
        let sent = self.committer.apply(
            prepared.events,
            seals,
            certs,
            prepared.dead_letters,
            promise,
            chain.clone(),
            admitted.clone(),
            Box::new(move |result| {
                drop(wiring);
                hook.applied(to, sent_apply, result)
            }),
        );
        match sent {
            Ok(()) => {
                self.outstanding
                    .entry(peer)
                    .or_default()
                    .push_back(Outstanding::AtCommitter {
                        admitted,
                        cut,
                        chain,
                    });
            }
            Err(e) => self.ended(&peer, Ended::Failed(e.to_string())),
        }
    }

    /// Tells the core how an Apply of `peer`'s that did not reach the committer ended: at once,
    /// or once the peer's Applies handed out before it are answered.
    fn ended(&mut self, peer: &NodeId, ended: Ended) {
        match self.outstanding.get_mut(peer) {
            Some(q) if !q.is_empty() => q.push_back(Outstanding::Ended(ended)),
            _ => self.tell_core(peer, ended),
        }
    }

    fn tell_core(&mut self, peer: &NodeId, ended: Ended) {
        let now = self.now();
        match ended {
            Ended::Applied => self.core.applied(peer, now),
            Ended::Failed(reason) => self.core.apply_failed(peer, &reason, now),
        }
    }

    /// After the committer answered `peer`'s oldest Apply: the Applies that ended here behind
    /// it go to the core, up to the next one still at the committer.
    fn tell_ended(&mut self, peer: &NodeId) {
        loop {
            let Some(q) = self.outstanding.get_mut(peer) else {
                return;
            };
            match q.front() {
                Some(Outstanding::Ended(_)) => {
                    if let Some(Outstanding::Ended(e)) = q.pop_front() {
                        self.tell_core(peer, e);
                    }
                }
                Some(Outstanding::AtCommitter { .. }) => return,
                None => {
                    self.outstanding.remove(peer);
                    return;
                }
            }
        }
    }

    /// Events kept out of the state because their keys' rows cannot be read here: said, and
    /// every peer compared with soon, whose repair replaces the rows.
    /// (At most once per `log_limit::EVERY`: a hot key whose row no peer can repair would
    /// otherwise log, and schedule comparisons, at every batch.)
    fn left_out_of_damaged_rows(&mut self, events: u64) {
        static THROTTLE: crate::log_limit::Throttle =
            crate::log_limit::Throttle::new(crate::log_limit::EVERY);
        let Some(left_out) = THROTTLE.allow() else {
            return;
        };
        tracing::error!(
            events,
            batches_not_logged = left_out,
            "events kept in the changelog but out of the state: their keys' rows cannot be read on this node's disk (damage: status `store_check_at_open.unreadable` counts such rows); a repair from a peer replaces the rows"
        );
        self.aae_soon(
            None,
            "keys whose rows cannot be read here wait for a repair",
        );
    }

    /// The committer's answer to a batch of `peer`'s.
    pub(super) fn applied(
        &mut self,
        peer: NodeId,
        sent: SentApply,
        result: Result<RemoteApply, CommitError>,
        now: u64,
    ) {
        // The committer answers in order: this is the peer's oldest outstanding Apply.
        if let Some(q) = self.outstanding.get_mut(&peer) {
            debug_assert!(matches!(q.front(), Some(Outstanding::AtCommitter { .. })));
            q.pop_front();
        }
        self.answered(peer.clone(), sent, result, now);
        self.tell_ended(&peer);
    }

    /// The committer's answer `result` to `peer`'s oldest outstanding Apply, told to the core.
    fn answered(
        &mut self,
        peer: NodeId,
        sent: SentApply,
        result: Result<RemoteApply, CommitError>,
        now: u64,
    ) {
        match result {
            Ok(out) => {
                for fork in out.forks {
                    // Another history the origin signed, or events the peer changed
                    // under the origin's genuine seal: this node keeps what it holds; the
                    // session goes on for every other origin.
                    self.reports.found_fork(
                        &peer,
                        (&fork.origin, fork.seq),
                        hex(&fork.held_chain),
                        hex(&fork.received_chain),
                        "a peer sent events of the origin that do not chain to its seal from the history this node holds (another history the origin signed, or events changed in a block this node holds part of); left out",
                    );
                    // (Not taken as a fork of this node's own history: a seal that verifies
                    // but that the events do not chain to may be events the peer changed.)
                }
                if out.left_out_of_damaged_rows > 0 {
                    self.left_out_of_damaged_rows(out.left_out_of_damaged_rows);
                }
                if let Some((started, events)) = sent.traced {
                    // Every event of a traced client carries a trace context: at info level
                    // once per 10 s, the others at debug (the exported spans, when a collector
                    // is configured, have all).
                    static LOG: crate::log_limit::Throttle =
                        crate::log_limit::Throttle::new(crate::log_limit::EVERY);
                    for t in events {
                        let trace_id =
                            edgerep_wire::text::one_line(t.traceparent.get(3..35).unwrap_or(""));
                        match LOG.allow() {
                            Some(left_out) => tracing::info!(
                                trace_id = %trace_id, peer = %peer, origin = %t.origin, seq = t.seq,
                                left_out, "applied a traced event"
                            ),
                            None => tracing::debug!(
                                trace_id = %trace_id, peer = %peer, origin = %t.origin, seq = t.seq,
                                "applied a traced event"
                            ),
                        }
                        self.traces.apply_span(
                            &t.traceparent,
                            started,
                            crate::trace::Applied {
                                peer: peer.as_str(),
                                origin: &t.origin,
                                seq: t.seq,
                                collection: &t.collection,
                                plugins: &t.plugins,
                            },
                        );
                    }
                }
                self.core.applied(&peer, now)
            }
            Err(CommitError::Forged(reason)) => {
                // What the peer sent is not what its origin wrote: nothing of the batch was
                // applied, and the peer is cut off (it is lying, or relays a liar's events).
                tracing::error!(peer = %peer, "events refused, disconnecting: {reason}");
                self.core.apply_failed(&peer, &reason, now);
                self.cut_off(peer, reason, now);
            }
            Err(e) => self.core.apply_failed(&peer, &e.to_string(), now),
        }
    }

    /// A snapshot page the core hands out for merging.
    pub(super) fn install_snapshot(
        &mut self,
        peer: NodeId,
        versions: Vec<EncodedEvent>,
        proofs: Vec<edgerep_wire::seal::Proof>,
        have: Option<edgerep_replica::Have>,
        seals: Vec<Seal>,
        certs: Vec<(NodeId, Vec<u8>)>,
    ) {
        let now = self.now();
        if let Some(c) = versions
            .iter()
            .find(|v| self.transformed_on_apply.contains(v.collection.as_str()))
        {
            let reason = format!(
                "snapshot refused: collection {:?} runs transforms on apply here, so its state must be built from events; the peer compacted events this node lacks (set [retention] compact = false on peers of nodes with transforms on apply)",
                c.collection
            );
            tracing::error!(peer = %peer, "{reason}");
            self.core.install_failed(&peer, &reason, now);
            return;
        }
        // Versions the write policy keeps out stay out here too (an honest sender's state holds
        // none).
        let (versions, proofs): (Vec<_>, Vec<_>) = versions
            .into_iter()
            .zip(proofs)
            .filter(|(v, _)| !self.kept_out_by_policy(&peer, v, "a snapshot"))
            .unzip();
        let hook = CommitHookSender(self.inbox.clone());
        let to = peer.clone();
        let sent = self.committer.install(
            versions,
            proofs,
            have,
            seals,
            certs,
            Box::new(move |result| hook.installed(to, result)),
        );
        if let Err(e) = sent {
            self.core.install_failed(&peer, &e.to_string(), now);
        }
    }

    /// Whether the write policy keeps version `v` that `peer` sent in `what` out of this
    /// node's state, as it keeps events out in apply (logged when it does).
    pub(super) fn kept_out_by_policy(&self, peer: &NodeId, v: &EncodedEvent, what: &str) -> bool {
        let Some(reason) =
            crate::apply::policy_refusal(&self.config, &v.origin, v.seq, &v.collection)
        else {
            return false;
        };
        static LOG: crate::log_limit::Throttle =
            crate::log_limit::Throttle::new(crate::log_limit::EVERY);
        if let Some(left_out) = LOG.allow() {
            tracing::warn!(peer = %peer, origin = %v.origin, seq = v.seq, left_out, "a version of {what} left out of the state: {reason} (lines like this one are written once per 10 s, `left_out` says how many were not)");
        }
        true
    }

    /// The committer's answer to a snapshot page of `peer`'s.
    pub(super) fn installed(
        &mut self,
        peer: NodeId,
        result: Result<Installed, CommitError>,
        now: u64,
    ) {
        match result {
            Ok(out) => {
                self.reports.snapshot_pages_merged_total += 1;
                if out.left_out_of_damaged_rows > 0 {
                    self.left_out_of_damaged_rows(out.left_out_of_damaged_rows);
                }
                if out.future_contexts > 0 {
                    tracing::warn!(peer = %peer, versions = out.future_contexts, "left out snapshot versions whose causal context names events this node does not hold (forged by their origin, or this node's own after a restore that lost them: anti-entropy merges them once they are back)");
                }
                // Only the floors this page raised (the map names up to every origin).
                let before = self.core.compacted();
                let moved: Vec<(&NodeId, &u64)> = out
                    .compacted
                    .iter()
                    .filter(|(o, seq)| before.get(*o) != Some(*seq))
                    .collect();
                if moved.is_empty() {
                    tracing::debug!(peer = %peer, changed = out.changed, "merged a snapshot page");
                } else {
                    tracing::info!(peer = %peer, changed = out.changed, origins = moved.len(), "merged a snapshot page; the changelog now starts after {:?}", &moved[..moved.len().min(16)]);
                }
                let raised = !moved.is_empty() || out.compacted.len() != before.len();
                self.set_compacted(&out.compacted);
                self.core.installed(&peer, now);
                if raised {
                    self.aae_after_snapshot(&peer);
                }
            }
            Err(CommitError::Forged(reason)) => {
                // A version (or a have) its origin did not seal: nothing of the page was
                // merged, and the peer is cut off like for forged events.
                tracing::error!(peer = %peer, "snapshot page refused, disconnecting: {reason}");
                self.core.install_failed(&peer, &reason, now);
                self.cut_off(peer, reason, now);
            }
            Err(e) => {
                self.core.install_failed(&peer, &e.to_string(), now);
            }
        }
    }
}
