//! Events from peers on their way to the store: each runs through its collection's transforms
//! on apply, and a transform that fails is handled by its plugin's failure policy.
//!
//! Invariants: every event goes to the store as received (its changelog entry, which peers
//! relay, never changes); only its effect on this node's state is decided here. `skip` and
//! `dead-letter` keep a failed event out of the state (`dead-letter` also records why, in the
//! batch's own transaction); `halt` applies nothing of the batch and stops replication until the
//! node restarts, so nothing is lost and the state never differs from what the configured
//! plugins decide.

use edgerep_config::FailurePolicy;
use edgerep_store::{LocalWrite, OnApply, Received};
use edgerep_wire::value::DecodeLimits;
use edgerep_wire::{Event, Value};

use crate::committer::wall_ms;
use crate::dead_letter::{DeadLetter, STAGE_APPLY};
use crate::pipeline::Pipeline;

/// A batch from a peer, ready for the committer.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub(crate) events: Vec<Received>,
    /// Records of the transforms that failed under the `dead-letter` policy.
    pub(crate) dead_letters: Vec<Vec<u8>>,
}

/// A plugin with the `halt` policy failed: nothing of the batch may be applied.
#[derive(Debug)]
pub(crate) struct Halt {
    pub(crate) collection: String,
    pub(crate) reason: String,
}

/// Decides what each event of a batch does to the state.
pub(crate) fn prepare(
    pipeline: &Pipeline,
    limits: &DecodeLimits,
    events: Vec<Event>,
) -> Result<Prepared, Halt> {
    let check_value = |v: &Value| crate::check_plugin_value(v, limits);
    let mut out = Prepared {
        events: Vec::with_capacity(events.len()),
        dead_letters: Vec::new(),
    };
    for event in events {
        if !pipeline.has_on_apply(&event.collection) {
            out.events.push(Received::as_received(event));
            continue;
        }
        let on_apply = match pipeline.run_apply(&event, &check_value) {
            Ok(on_apply) => on_apply,
            Err(rejection) => {
                let r = *rejection;
                tracing::warn!(
                    plugin = %r.plugin, collection = %event.collection, origin = %event.origin,
                    seq = event.seq, failure = r.failure.kind.as_str(),
                    message = %r.failure.message, policy = r.policy.as_str(),
                    "plugin failed on an event from a peer"
                );
                match r.policy {
                    FailurePolicy::Halt => {
                        return Err(Halt {
                            collection: event.collection.clone(),
                            reason: format!(
                                "plugin {:?} failed on event {}/{} from a peer ({}: {}) and its policy is halt",
                                r.plugin,
                                event.origin,
                                event.seq,
                                r.failure.kind.as_str(),
                                r.failure.message
                            ),
                        });
                    }
                    FailurePolicy::DeadLetter => {
                        let record = DeadLetter {
                            stage: STAGE_APPLY.into(),
                            write: LocalWrite {
                                collection: event.collection.clone(),
                                key: event.key.clone(),
                                value: event.value.clone(),
                                schema: event.schema,
                                meta: event.meta.clone(),
                            },
                            plugin: r.plugin,
                            plugin_sha256: r.plugin_sha256,
                            failure: r.failure.kind.as_str().into(),
                            message: r.failure.message,
                            fuel_used: r.failure.fuel_used,
                            at_ms: wall_ms(),
                            event: r.event,
                        };
                        out.dead_letters.push(record.encode());
                    }
                    FailurePolicy::Skip => {}
                }
                OnApply::Dropped
            }
        };
        out.events.push(Received { event, on_apply });
    }
    Ok(out)
}
