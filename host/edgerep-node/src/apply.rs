//! Events from peers on their way to the store: each runs through its collection's transforms
//! on apply, and a transform that fails is handled by its plugin's failure policy.
//!
//! Invariants: every event goes to the store as received (its changelog entry, which peers
//! relay, never changes); only its effect on this node's state is decided here. `skip` and
//! `dead-letter` keep a failed event out of the state (`dead-letter` also records why, in the
//! batch's own transaction); `halt` applies nothing of the batch and stops replication until the
//! node restarts, so nothing is lost and the state never differs from what the configured
//! plugins decide.

use std::collections::{BTreeMap, BTreeSet};

use edgerep_config::{Config, FailurePolicy};
use edgerep_store::{EventDeadLetter, LocalWrite, OnApply, Received};
use edgerep_wire::value::DecodeLimits;
use edgerep_wire::{EncodedEvent, Event, NodeId, Value};

use crate::committer::wall_ms;
use crate::dead_letter::{DeadLetter, STAGE_APPLY};
use crate::dead_letter_budget::{
    DeadLetterBudget, DeadLetterLimits, DeadLetterPromise, DeadLettersFull,
};
use crate::log_limit::{self, Throttle};
use crate::pipeline::Pipeline;

/// A batch from a peer, ready for the committer.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub(crate) events: Vec<Received>,
    /// Records of the transforms that failed under the `dead-letter` policy, and of events
    /// whose origin may not write their collection.
    pub(crate) dead_letters: Vec<EventDeadLetter>,
    /// Events refused outright (not stored, not relayed), with their origin's later events in
    /// the batch: the store holds each origin gapless, so those wait behind the refused one.
    pub(crate) refused: Vec<Refusal>,
    /// The plugin calls on traced events (those with a `traceparent`), by origin and seq.
    pub(crate) traced_calls: BTreeMap<(NodeId, u64), Vec<crate::pipeline::PluginCall>>,
}

/// An event this node does not admit (see [`Admission`]).
#[derive(Debug, Clone)]
pub(crate) struct Refusal {
    pub(crate) origin: NodeId,
    pub(crate) seq: u64,
    pub(crate) reason: String,
    /// The event may be admitted later (it waits for events it depends on): not an attack.
    pub(crate) deferred: bool,
}

/// What this node admits from peers beyond what the wire format checks.
///
/// Not admitted (not stored, not relayed; the peer resends them later):
/// - events of an origin beyond the bound on origins, and of a revoked node past its revocation
///   (refused);
/// - events of a paused collection from the time of an upgrade a peer runs and this node's
///   config lacks (deferred until a reload brings the upgrade; the origin's later events wait
///   behind them, since the store holds each origin gapless);
/// - causal delivery: an event whose causal context names an event this node does not hold yet
///   (deferred until it does). An honest context only names events its writer held, which reach
///   every node in time; a forged one (naming events nobody wrote, such as this node's own
///   sequence numbers far ahead) is never admitted anywhere, so it cannot spread;
/// - without authentication (`replication.authenticate = false`, unsigned seals), while an
///   origin has a session with this node, events of that origin relayed by other peers beyond
///   what the origin itself says it holds (deferred): a peer cannot slip in events under the
///   name of an origin that is connected here. With authentication the origin's signature
///   decides, whoever relays.
///
/// Kept in the changelog (relayed, decided alike on every node with the same policy) but out of
/// the state, as a dead letter naming the rule: an event whose origin may not write its
/// collection, or to an undeclared collection where `accept_undeclared` is false.
pub(crate) struct Admission<'a> {
    pub(crate) config: &'a Config,
    pub(crate) local: &'a NodeId,
    /// Per origin, what this node holds durably (this node's own origin: what it issued and
    /// synced), joined with what the sender's earlier batches still at the committer admitted
    /// (they are applied first, and this batch is refused unapplied if one of them fails).
    pub(crate) have: &'a BTreeMap<NodeId, u64>,
    /// Origins whose events the sender's earlier batches still at the committer were handed
    /// but left out (refused, deferred or cut at a seal): this batch's events of them would not
    /// continue what is applied, so they wait too (deferred).
    pub(crate) cut: &'a BTreeSet<NodeId>,
    /// Origins not in `have` that other peers' batches at the committer admitted: they count
    /// against the bound on origins (two peers flooding new origins at once must not each fill
    /// it).
    pub(crate) elsewhere: &'a BTreeSet<NodeId>,
    /// Per origin with a session here, how far it says it holds its own events.
    pub(crate) own_claims: &'a BTreeMap<NodeId, u64>,
    /// The peer the batch came from.
    pub(crate) from: &'a NodeId,
    /// Its paused collections (see [`Pipeline::pause`]).
    pub(crate) pipeline: &'a Pipeline,
    /// How many more dead letters the node may take (`limits.max_dead_letters` and
    /// `max_dead_letter_bytes` less those it holds and has promised to batches and requests
    /// not yet committed). Past it, a transform on apply whose policy sets a failing peer's event aside
    /// halts its collection instead (the events wait, nothing is lost): a plugin failing on
    /// every event must not fill the disk, which would stop the whole node. An event the write
    /// policy refuses gets no dead letter past it (it stays in the changelog).
    pub(crate) dead_letter_room: DeadLetterRoom,
}

/// Places under the dead-letter limits for a batch's dead letters, taken one at a time as the
/// batch needs them (see [`crate::dead_letter_budget`]).
pub(crate) struct DeadLetterRoom {
    limits: DeadLetterLimits,
    promise: std::cell::RefCell<DeadLetterPromise>,
}

impl DeadLetterRoom {
    /// Room under `limits` in `budget`.
    pub(crate) fn of(budget: &DeadLetterBudget, limits: DeadLetterLimits) -> DeadLetterRoom {
        DeadLetterRoom {
            limits,
            promise: std::cell::RefCell::new(budget.promise()),
        }
    }

    /// Takes a place for one more dead letter, `record`.
    pub(crate) fn take(&self, record: &[u8]) -> Result<(), DeadLettersFull> {
        self.promise
            .borrow_mut()
            .take(self.limits, 1, record.len() as u64)
    }

    /// The places taken, to hand to the committer with the dead letters.
    pub(crate) fn into_promise(self) -> DeadLetterPromise {
        self.promise.into_inner()
    }
}

/// Stage of a dead letter for an event refused by the write policy.
pub(crate) const STAGE_POLICY: &str = "policy";

impl Admission<'_> {
    /// Splits `events` into those admitted and those refused (see [`Prepared::refused`]).
    fn admit(&self, events: Vec<EncodedEvent>) -> (Vec<EncodedEvent>, Vec<Refusal>) {
        let mut refused = Vec::new();
        let mut blocked: BTreeSet<NodeId> = BTreeSet::new();
        // What this node will hold once the events admitted so far are applied.
        let mut held: BTreeMap<NodeId, u64> = BTreeMap::new();
        let held_of = |held: &BTreeMap<NodeId, u64>, o: &NodeId| {
            held.get(o)
                .or_else(|| self.have.get(o))
                .copied()
                .unwrap_or(0)
        };
        let max_origins = self.config.max_origins();
        // Origins admitted in this batch that this node held nothing of.
        let mut new_origins = 0;
        let mut out = Vec::with_capacity(events.len());
        for event in events {
            if blocked.contains(&event.origin) {
                continue;
            }
            let known = self.have.contains_key(&event.origin)
                || held.contains_key(&event.origin)
                || self.elsewhere.contains(&event.origin)
                || event.origin == *self.local;
            let origins = self.have.len() + self.elsewhere.len() + new_origins;
            let refusal = |reason: String, deferred: bool| Refusal {
                origin: event.origin.clone(),
                seq: event.seq,
                reason,
                deferred,
            };
            let verdict = if !known && origins >= max_origins {
                Some(refusal(
                    format!(
                        "origin {:?} would be origin number {} this node holds (or is applying) events of, over its bound of {max_origins} (itself, {} peers and replication.extra_origins = {})",
                        event.origin.as_str(),
                        origins + 1,
                        self.config.peers.len(),
                        self.config.replication.extra_origins
                    ),
                    false,
                ))
            } else if let Some(r) = self.config.revocation(&event.origin, event.seq) {
                Some(refusal(r, false))
            } else if self.cut.contains(&event.origin) {
                Some(refusal(
                    format!(
                        "event {}:{} continues events of its origin that the sender's batch before it left out",
                        event.origin, event.seq
                    ),
                    true,
                ))
            } else if let Some(reason) = self.pipeline.apply_halted(&event.collection) {
                // Its collection halted on an earlier event (a transform on apply failed in a
                // way that may not decide): this origin's events wait from here, others go on.
                Some(refusal(
                    format!(
                        "event {}:{}: collection {:?} is halted: {reason}",
                        event.origin, event.seq, event.collection
                    ),
                    true,
                ))
            } else if let Some(reason) = self
                .pipeline
                .paused_at(&event.collection, event.hlc.physical_ms)
            {
                Some(refusal(
                    format!("event {}:{}: {reason}", event.origin, event.seq),
                    true,
                ))
            } else if let Some((o, seq)) = event
                .context
                .iter()
                .find(|&(o, seq)| seq > held_of(&held, o))
            {
                let reason = if o == self.local {
                    format!(
                        "event {}:{} has a causal context naming this node at sequence {seq}, but this node issued only up to {}",
                        event.origin,
                        event.seq,
                        held_of(&held, o)
                    )
                } else {
                    format!(
                        "event {}:{} depends on {o}:{seq}, and this node holds {o} only up to {}",
                        event.origin,
                        event.seq,
                        held_of(&held, o)
                    )
                };
                Some(refusal(reason, true))
            } else if let Some(&claim) = self
                .own_claims
                .get(&event.origin)
                .filter(|&&claim| event.origin != *self.from && event.seq > claim)
            {
                Some(refusal(
                    format!(
                        "event {}:{} relayed by {}, but {} itself says it holds its events only up to {claim}",
                        event.origin, event.seq, self.from, event.origin
                    ),
                    true,
                ))
            } else {
                None
            };
            match verdict {
                Some(r) => {
                    blocked.insert(event.origin.clone());
                    refused.push(r);
                }
                None => {
                    new_origins += usize::from(!known);
                    let h = held.entry(event.origin.clone()).or_insert(0);
                    *h = (*h).max(event.seq);
                    out.push(event);
                }
            }
        }
        (out, refused)
    }
}

/// Why event `seq` of `origin` in `collection` must stay out of this node's state by the write
/// policy (`[authorization]`, the collections the node accepts), if it must: the one rule for
/// peers' events, snapshot pages and anti-entropy repairs alike.
pub(crate) fn policy_refusal(
    config: &Config,
    origin: &NodeId,
    seq: u64,
    collection: &str,
) -> Option<String> {
    if let Err(reason) = config.write_allowed(origin, collection) {
        return Some(reason.to_string());
    }
    config
        .check_collection(collection)
        .err()
        .map(|reason| format!("event {origin}:{seq} from a peer: {reason}"))
}

/// The dead-letter record of an event kept out of the state by the write policy.
fn policy_dead_letter(event: &Event, reason: String) -> Vec<u8> {
    DeadLetter {
        stage: STAGE_POLICY.into(),
        write: LocalWrite::from(event.clone()),
        plugin: String::new(),
        plugin_sha256: String::new(),
        failure: "unauthorized".into(),
        message: reason,
        fuel_used: 0,
        at_ms: wall_ms(),
        event: event.encode(),
    }
    .encode()
}

/// A plugin with the `halt` policy failed, or failed in a way that depends on the machine:
/// nothing of the batch may be applied, and the collection halts (its events wait, and the
/// later events of their origins behind them; other origins and collections go on).
#[derive(Debug)]
pub(crate) struct Halt {
    pub(crate) collection: String,
    pub(crate) reason: String,
    /// The batch's events admission kept (when asked for: see [`prepare`]), to check against
    /// their origins' seals before anything halts on them.
    pub(crate) admitted: Vec<EncodedEvent>,
}

impl Halt {
    /// `collection` halts, for `reason` (`admitted` is filled in by [`prepare`]).
    fn new(collection: &str, reason: String) -> Halt {
        Halt {
            collection: collection.to_owned(),
            reason,
            admitted: Vec::new(),
        }
    }
}

/// Decides what each event of a batch does to the state. A halt carries the events admission
/// kept when `keep_admitted` (a copy: asked for only when a transform on apply may halt).
pub(crate) fn prepare(
    pipeline: &Pipeline,
    limits: &DecodeLimits,
    admission: &Admission<'_>,
    admitted: Admitted,
    keep_admitted: bool,
) -> Result<Prepared, Halt> {
    let Admitted { events, refused } = admitted;
    let admitted = keep_admitted.then(|| events.clone());
    shape(pipeline, limits, admission, events, refused).map_err(|mut halt| {
        halt.admitted = admitted.unwrap_or_default();
        halt
    })
}

/// A batch's events [`admit`] let through, and those it refused.
pub(crate) struct Admitted {
    pub(crate) events: Vec<EncodedEvent>,
    refused: Vec<Refusal>,
}

impl Admitted {
    /// Of `sent` (the batch's events as they came), those held back but not refused outright:
    /// deferred, with their origin's later ones, and those trimmed back to a seal before them.
    /// Each origin's are a consecutive run that ends where the batch's events of it end.
    pub(crate) fn held_back(&self, sent: Vec<EncodedEvent>) -> Vec<EncodedEvent> {
        let refused: BTreeSet<&NodeId> = self
            .refused
            .iter()
            .filter(|r| !r.deferred)
            .map(|r| &r.origin)
            .collect();
        let mut admitted: BTreeMap<&NodeId, u64> = BTreeMap::new();
        for e in &self.events {
            let top = admitted.entry(&e.origin).or_insert(0);
            *top = (*top).max(e.seq);
        }
        sent.into_iter()
            .filter(|e| {
                !refused.contains(&e.origin)
                    && e.seq > admitted.get(&e.origin).copied().unwrap_or(0)
            })
            .collect()
    }
}

/// The events of a batch `admission` lets through (the first step of [`prepare`]).
pub(crate) fn admit(
    admission: &Admission<'_>,
    events: Vec<EncodedEvent>,
    seals: &[edgerep_wire::Seal],
) -> Admitted {
    // An origin's admitted events end where a refusal cut them: back to its last seal before
    // that. What was admitted counting on the events trimmed away is judged again.
    let (mut events, mut refused) = admission.admit(events);
    while edgerep_replica::trim_to_seals(&mut events, seals) > 0 {
        let (again, more) = admission.admit(events);
        events = again;
        refused.extend(more);
    }
    Admitted { events, refused }
}

/// [`prepare`] of the admitted events.
fn shape(
    pipeline: &Pipeline,
    limits: &DecodeLimits,
    admission: &Admission<'_>,
    events: Vec<EncodedEvent>,
    refused: Vec<Refusal>,
) -> Result<Prepared, Halt> {
    let check_value = |v: &Value| crate::check_plugin_value(v, limits);
    let mut out = Prepared {
        events: Vec::with_capacity(events.len()),
        dead_letters: Vec::new(),
        refused,
        traced_calls: BTreeMap::new(),
    };
    for event in events {
        if let Some(reason) = policy_refusal(
            admission.config,
            &event.origin,
            event.seq,
            &event.collection,
        ) {
            // A dead letter while there is room for one (a peer sending refused events must
            // not fill the disk); past it the event is only in the changelog, as its origin
            // wrote it.
            let record = policy_dead_letter(&event, reason.clone());
            let room = admission.dead_letter_room.take(&record);
            static LOG: Throttle = Throttle::new(log_limit::EVERY);
            if let Some(left_out) = LOG.allow() {
                let kept = match &room {
                    Ok(()) => "a dead letter".to_owned(),
                    Err(full) => format!("no dead letter: {full}"),
                };
                tracing::warn!(origin = %event.origin, seq = event.seq, left_out, "event kept out of the state: {reason} ({kept}; lines like this one are written once per 10 s, `left_out` says how many were not)");
            }
            if room.is_ok() {
                out.dead_letters.push(EventDeadLetter {
                    origin: event.origin.clone(),
                    seq: event.seq,
                    record,
                });
            }
            out.events.push(Received::new(event, OnApply::Dropped));
            continue;
        }
        // AsReceived at once when no transform is in force for the event's collection and time.
        let mut calls = Vec::new();
        let outcome = pipeline.run_apply_timed(&event, &check_value, &mut calls);
        if !calls.is_empty() && event.meta.contains_key(crate::trace::TRACEPARENT) {
            out.traced_calls
                .insert((event.origin.clone(), event.seq), calls);
        }
        let on_apply = match outcome {
            Ok(on_apply) => on_apply,
            Err(rejection) => {
                let r = *rejection;
                static LOG: Throttle = Throttle::new(log_limit::EVERY);
                if let Some(left_out) = LOG.allow() {
                    tracing::warn!(
                        plugin = %r.plugin, collection = %event.collection, origin = %event.origin,
                        seq = event.seq, failure = r.failure.kind.as_str(),
                        message = %edgerep_wire::text::one_line(&r.failure.message), policy = r.policy.as_str(),
                        left_out,
                        "plugin failed on an event from a peer (lines like this one are written once per 10 s, `left_out` says how many were not)"
                    );
                }
                // A deadline is wall time, and the memory the OS grants depends on the
                // machine's load: another try may pass, here or elsewhere, so the event waits
                // (the collection halted) for the operator rather than being decided here
                // otherwise than on another node.
                if r.failure.kind == edgerep_plugin::FailureKind::Deadline {
                    return Err(Halt::new(
                        &event.collection,
                        format!(
                            "plugin {:?} ran past its deadline on event {}/{} from a peer, each of {} tries; a deadline depends on this machine's speed, so the event is neither applied nor set aside here (raise the plugin's time limit; the collection's replication resumes when the node reloads its config or restarts)",
                            r.plugin,
                            event.origin,
                            event.seq,
                            1 + crate::pipeline::DEADLINE_RETRIES,
                        ),
                    ));
                }
                // A stack overflow depends on the machine too (its CPU's code), but no other
                // try on this machine passes: halted, the collection (and the later events of
                // the event's origin) would wait for good, since a reload tries it again and a
                // new build of the plugin is refused for the events before its upgrade. It
                // follows the failure policy, as a trap does: in a collection with transforms
                // on apply the nodes' versions may differ by design (a version a transform
                // fails on stays out of the state, anti-entropy's repair included).
                if r.failure.kind.depends_on_machine()
                    && r.failure.kind != edgerep_plugin::FailureKind::StackOverflow
                {
                    return Err(Halt::new(
                        &event.collection,
                        format!(
                            "plugin {:?} failed on event {}/{} from a peer in a way that depends on this machine ({}: {}), so the event is neither applied nor set aside here (the collection's replication resumes when the node reloads its config or restarts)",
                            r.plugin,
                            event.origin,
                            event.seq,
                            r.failure.kind.as_str(),
                            r.failure.message
                        ),
                    ));
                }
                match r.policy {
                    FailurePolicy::Halt => {
                        return Err(Halt::new(
                            &event.collection,
                            format!(
                                "plugin {:?} failed on event {}/{} from a peer ({}: {}) and its policy is halt",
                                r.plugin,
                                event.origin,
                                event.seq,
                                r.failure.kind.as_str(),
                                r.failure.message
                            ),
                        ));
                    }
                    FailurePolicy::DeadLetter => {
                        let failed = format!(
                            "plugin {:?} failed on event {}/{} from a peer ({}: {})",
                            r.plugin,
                            event.origin,
                            event.seq,
                            r.failure.kind.as_str(),
                            r.failure.message,
                        );
                        let record = DeadLetter {
                            stage: STAGE_APPLY.into(),
                            write: LocalWrite::from(event.event().clone()),
                            plugin: r.plugin,
                            plugin_sha256: r.plugin_sha256,
                            failure: r.failure.kind.as_str().into(),
                            message: r.failure.message,
                            fuel_used: r.failure.fuel_used,
                            at_ms: wall_ms(),
                            event: r.event,
                        }
                        .encode();
                        if let Err(full) = admission.dead_letter_room.take(&record) {
                            return Err(Halt::new(
                                &event.collection,
                                format!(
                                    "{failed} and its policy sets such events aside, but {full}: list and remove them (GET and DELETE /v1/dead-letters) or raise the limit, then reload the config to resume the collection's replication"
                                ),
                            ));
                        }
                        out.dead_letters.push(EventDeadLetter {
                            origin: event.origin.clone(),
                            seq: event.seq,
                            record,
                        });
                    }
                    FailurePolicy::Skip => {}
                }
                OnApply::Dropped
            }
        };
        out.events.push(Received::new(event, on_apply));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node with no peers and `extra_origins` 2: a bound of 3 origins, itself included.
    fn config() -> Config {
        let text = r#"
[node]
id = "site-a"
data_dir = "data"

[api]
listen = "127.0.0.1:7070"

[replication]
listen = "127.0.0.1:7071"
extra_origins = 2

[collections]
accept_undeclared = true
"#;
        Config::parse(text, std::path::Path::new("/etc/edgerep/edgerep.toml")).unwrap()
    }

    fn event(origin: &str) -> EncodedEvent {
        EncodedEvent::new(Event {
            format: edgerep_wire::event::FORMAT_VERSION,
            collection: "c".into(),
            key: b"k".to_vec(),
            op: edgerep_wire::Op::Put,
            value: None,
            hlc: edgerep_wire::Hlc::new(1_790_000_000_000, 0),
            origin: NodeId::parse(origin).unwrap(),
            seq: 1,
            schema: 0,
            meta: Default::default(),
            context: Default::default(),
            extra: Default::default(),
        })
    }

    /// Origins other peers' batches at the committer bring count against the bound: two peers
    /// flooding new origins at once must not each fill it. An origin already counted there is
    /// known (not counted again), and this node's own id is never new.
    #[test]
    fn the_origin_bound_counts_new_origins_of_other_peers_batches() {
        let config = config();
        assert_eq!(config.max_origins(), 3);
        let pipeline = Pipeline::load(&config).unwrap();
        let budget = DeadLetterBudget::default();
        let local = NodeId::parse("site-a").unwrap();
        let from = NodeId::parse("site-b").unwrap();
        let (have, cut, claims) = (BTreeMap::new(), BTreeSet::new(), BTreeMap::new());
        let admitted = |elsewhere: &BTreeSet<NodeId>, origins: &[&str]| {
            let admission = Admission {
                config: &config,
                local: &local,
                have: &have,
                cut: &cut,
                elsewhere,
                own_claims: &claims,
                from: &from,
                pipeline: &pipeline,
                dead_letter_room: DeadLetterRoom::of(&budget, DeadLetterLimits::of(&config.limits)),
            };
            let (events, refused) = admission.admit(origins.iter().map(|o| event(o)).collect());
            assert!(
                refused
                    .iter()
                    .all(|r| r.reason.contains("over its bound of 3"))
            );
            events
                .iter()
                .map(|e| e.origin.to_string())
                .collect::<Vec<_>>()
        };
        // Alone, three new origins fit (this node's own id is not one of them).
        assert_eq!(
            admitted(&BTreeSet::new(), &["o1", "o2", "o3", "o4"]),
            ["o1", "o2", "o3"]
        );
        // With two new origins at the committer for another peer, one more fits; one of those
        // two is known.
        let elsewhere: BTreeSet<NodeId> = ["x1", "x2"].map(|o| NodeId::parse(o).unwrap()).into();
        assert_eq!(
            admitted(&elsewhere, &["o1", "x1", "o2", "site-a"]),
            ["o1", "x1", "site-a"]
        );
    }
}
