//! The write path between a validated request and the committer: collection halts, the ingest
//! transform chain, and the failure policy of a plugin that fails (dead letter, skip, halt).
//!
//! Invariant: a refused or failed write is never half-written: either every change its
//! transforms produced goes to the committer, or none does and the failure is recorded as its
//! policy says. A dead letter goes to the committer with the request's writes and key
//! ([`Outcome::set_aside`], its id reserved here so the answer can name it): the three are
//! durable together, before the client hears about any of them, or not at all.

use edgerep_config::{Config, FailurePolicy};
use edgerep_store::LocalWrite;
use serde_json::{Value as Json, json};

use crate::committer::wall_ms;
use crate::dead_letter::{DeadLetter, STAGE_INGEST};
use crate::pipeline::{Pipeline, Rejection, Stopped};
use crate::request;

/// What the ingest step works with.
pub(crate) struct Ingest<'a> {
    pub(crate) pipeline: &'a Pipeline,
    /// Reserves dead letters' ids.
    pub(crate) store: &'a edgerep_store::Store,
    /// Takes dead letters' places under the dead-letter limits.
    pub(crate) dead_letters: &'a crate::dead_letter_budget::DeadLetterBudget,
    /// The config in force.
    pub(crate) config: std::sync::Arc<Config>,
    /// The hybrid clock's last physical time (ms; see `Committer::clock_last_ms`).
    pub(crate) clock_last_ms: u64,
}

/// Why a request's writes were not taken (nothing of it was written).
#[derive(Debug, thiserror::Error)]
pub(crate) enum IngestError {
    /// Writes to the collection are stopped: a halt, or a pause for a missing upgrade.
    #[error("writes to collection {collection:?} are stopped")]
    Stopped { collection: String, why: Stopped },
    /// A plugin whose policy is halt failed on one of the writes: the collection is halted.
    #[error("writes to collection {collection:?} are halted: {reason}")]
    Halted { collection: String, reason: String },
    /// The request's writes, as the transforms made them, are more than one request may hold.
    #[error(
        "the transforms on ingest made {made} writes of this request, over limits.max_batch_events ({limit}); nothing was written"
    )]
    TooMany { made: usize, limit: usize },
    /// A write to a collection `[authorization]` does not let this node's origin write.
    #[error("write {write} of the request: {reason}; nothing was written")]
    NotAuthorized { write: usize, reason: String },
    /// The transforms on ingest made more bytes of writes than the request may hold.
    #[error(
        "the transforms on ingest made {made} bytes of writes of this request, over {limit} ({OUTPUT_TIMES} x limits.max_request_bytes); nothing was written"
    )]
    TooLarge { made: usize, limit: usize },
    /// Writes a plugin failed on would be set aside, but the node holds as many dead letters
    /// or bytes of them as `limits.max_dead_letters` or `max_dead_letter_bytes` lets it (or is
    /// about to).
    #[error(
        "a plugin failed on {failed} write(s) of this request, which its policy sets aside, but {full}: list and remove them (GET and DELETE /v1/dead-letters) or raise the limit; nothing was written"
    )]
    DeadLettersFull {
        failed: usize,
        full: crate::dead_letter_budget::DeadLettersFull,
    },
}

/// How many times `limits.max_request_bytes` the writes transforms on ingest make of one
/// request may hold (keys, values and metadata): a transform may enrich, but a request of small
/// writes padded by a plugin to the value limit each must not become gigabytes.
pub(crate) const OUTPUT_TIMES: usize = 4;

/// What a write weighs toward [`OUTPUT_TIMES`].
pub(crate) fn write_bytes(w: &LocalWrite) -> usize {
    w.key.len()
        + w.value.as_ref().map_or(0, |v| v.as_bytes().len())
        + w.meta.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
}

/// A write that a plugin failed on, and what became of it.
#[derive(Debug)]
pub(crate) struct Failed {
    /// Index of the write in the request.
    pub(crate) write: usize,
    pub(crate) rejection: Rejection,
    /// The dead letter that keeps it, if the policy keeps one.
    pub(crate) dead_letter: Option<u64>,
}

impl Failed {
    pub(crate) fn to_json(&self) -> Json {
        json!({
            "write": self.write,
            "plugin": self.rejection.plugin,
            "failure": self.rejection.failure.kind.as_str(),
            "message": self.rejection.failure.message,
            "fuel_used": self.rejection.failure.fuel_used,
            "policy": self.rejection.policy.as_str(),
            "dead_letter": self.dead_letter,
        })
    }
}

/// What the ingest step decided for a request.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// (index of the request's write, a write to commit) in request order.
    pub(crate) accepted: Vec<(usize, LocalWrite)>,
    pub(crate) failed: Vec<Failed>,
    /// Dead letters to keep, under reserved ids: commit them with the accepted writes.
    pub(crate) set_aside: edgerep_store::SetAside,
    /// `set_aside`'s places under the dead-letter limits.
    pub(crate) promise: crate::dead_letter_budget::DeadLetterPromise,
}

/// Checks a change a transform returned against the node's own rules.
fn check_change(config: &Config, w: &LocalWrite) -> Result<(), String> {
    request::check_collection(config, &w.collection).map_err(|e| e.message)?;
    config
        .write_allowed(&config.node.id, &w.collection)
        .map_err(|e| e.to_string())?;
    request::check_key(config, &w.key).map_err(|e| e.message)?;
    request::meta_problem(config, &w.meta)?;
    if let Some(v) = &w.value {
        crate::check_plugin_value(v, &crate::value_limits(config))?;
    }
    Ok(())
}

/// Runs the ingest chains of `writes` (blocking: call from a blocking thread). With
/// `record_failures`, failed writes are handled by their plugin's policy (dead letter, halt);
/// without it (a replay) they are only reported.
pub(crate) fn run(
    step: &Ingest<'_>,
    writes: Vec<LocalWrite>,
    record_failures: bool,
) -> Result<Outcome, IngestError> {
    // The writes will be stamped by the hybrid clock: at most the wall clock plus the skew it
    // follows peers by, or its last time when that is later (it stays there when the wall clock
    // steps back). A pause from time T (a missing upgrade) holds them from then.
    let wall = wall_ms();
    let stamped_by = wall
        .saturating_add(step.config.node.max_clock_skew_ms)
        .max(step.clock_last_ms);
    // Each collection's stop is looked at once: the request's own here, routed ones below.
    let mut checked: std::collections::HashSet<String> = std::collections::HashSet::new();
    let stopped = |collection: &str| {
        step.pipeline
            .stopped(collection, stamped_by)
            .map(|why| IngestError::Stopped {
                collection: collection.to_owned(),
                why,
            })
    };
    for w in &writes {
        if !checked.contains(&w.collection) {
            if let Some(e) = stopped(&w.collection) {
                return Err(e);
            }
            checked.insert(w.collection.clone());
        }
    }
    let mut out = Outcome::default();
    let check = |w: &LocalWrite| check_change(&step.config, w);
    let mut halt: Option<(String, String)> = None;
    // Dead letters to keep (index into `out.failed`, record), written once no halt refuses the
    // request.
    let mut to_keep: Vec<(usize, Vec<u8>)> = Vec::new();
    // Bytes of the writes transforms made (see OUTPUT_TIMES).
    let mut made_bytes = 0usize;
    for (i, w) in writes.into_iter().enumerate() {
        if !step.pipeline.has_ingest(&w.collection) {
            // `[authorization]` holds for this node's own writes too: every peer would keep
            // the write out of its state, so taken here it would differ from theirs for good.
            // (A write a transform routes elsewhere is judged by where it lands: check_change.)
            let config = &step.config;
            if let Err(e) = config.write_allowed(&config.node.id, &w.collection) {
                return Err(IngestError::NotAuthorized {
                    write: i,
                    reason: e.to_string(),
                });
            }
            out.accepted.push((i, w));
            continue;
        }
        let original = w.clone();
        let limit = step.config.limits.max_batch_events;
        let byte_limit = step
            .config
            .limits
            .max_request_bytes
            .saturating_mul(OUTPUT_TIMES);
        match step
            .pipeline
            .run_ingest(w, wall, (limit, byte_limit), &check)
        {
            Ok(changes) => {
                let made = out.accepted.len() + changes.len();
                if made > limit {
                    return Err(IngestError::TooMany { made, limit });
                }
                made_bytes += changes.iter().map(write_bytes).sum::<usize>();
                let byte_limit = step
                    .config
                    .limits
                    .max_request_bytes
                    .saturating_mul(OUTPUT_TIMES);
                if made_bytes > byte_limit {
                    return Err(IngestError::TooLarge {
                        made: made_bytes,
                        limit: byte_limit,
                    });
                }
                out.accepted.extend(changes.into_iter().map(|c| (i, c)));
            }
            Err(rejection) => {
                let rejection = *rejection;
                static LOG: crate::log_limit::Throttle =
                    crate::log_limit::Throttle::new(crate::log_limit::EVERY);
                if let Some(left_out) = LOG.allow() {
                    tracing::warn!(
                        plugin = %rejection.plugin, collection = %original.collection,
                        failure = rejection.failure.kind.as_str(), message = %edgerep_wire::text::one_line(&rejection.failure.message),
                        policy = rejection.policy.as_str(), left_out,
                        "plugin failed on a write (lines like this one are written once per 10 s, `left_out` says how many were not; the plugin's status counts every failure)"
                    );
                }
                // Kept once the whole request is known not to halt: a halted request is refused
                // as a whole (503, to be retried once the plugin is fixed), so keeping its writes
                // as well would commit them twice, by the retry and by a replay.
                let keep = record_failures && rejection.policy == FailurePolicy::DeadLetter;
                if keep {
                    let record = DeadLetter {
                        stage: STAGE_INGEST.into(),
                        write: original.clone(),
                        plugin: rejection.plugin.clone(),
                        plugin_sha256: rejection.plugin_sha256.clone(),
                        failure: rejection.failure.kind.as_str().into(),
                        message: rejection.failure.message.clone(),
                        fuel_used: rejection.failure.fuel_used,
                        at_ms: wall,
                        event: rejection.event.clone(),
                    };
                    to_keep.push((out.failed.len(), record.encode()));
                }
                if record_failures && rejection.policy == FailurePolicy::Halt && halt.is_none() {
                    halt = Some((
                        original.collection.clone(),
                        format!(
                            "plugin {:?} failed ({}: {}) and its policy is halt",
                            rejection.plugin,
                            rejection.failure.kind.as_str(),
                            rejection.failure.message
                        ),
                    ));
                }
                out.failed.push(Failed {
                    write: i,
                    rejection,
                    dead_letter: None,
                });
            }
        }
    }
    if let Some((collection, reason)) = halt {
        step.pipeline.halt(&collection, reason.clone());
        return Err(IngestError::Halted { collection, reason });
    }
    let limit = step.config.limits.max_batch_events;
    if out.accepted.len() > limit {
        return Err(IngestError::TooMany {
            made: out.accepted.len(),
            limit,
        });
    }
    // A change routed to another collection is held to that collection's stop (a halt, or a
    // pause for an upgrade this node lacks) like a write to it: a route must not get around it.
    for (_, w) in &out.accepted {
        if !checked.contains(&w.collection) {
            if let Some(e) = stopped(&w.collection) {
                return Err(e);
            }
            checked.insert(w.collection.clone());
        }
    }
    // The request stands: what plugins failed on is to be kept, under ids reserved now.
    let (failed, records): (Vec<usize>, Vec<Vec<u8>>) = to_keep.into_iter().unzip();
    if !records.is_empty() {
        // A plugin failing on every write must not fill the disk (a full disk stops the node).
        // Places are taken all at once, exactly: requests prepared at the same time never
        // both take the last one.
        let limits = crate::dead_letter_budget::DeadLetterLimits::of(&step.config.limits);
        let bytes = records.iter().map(|r| r.len() as u64).sum();
        let mut promise = step.dead_letters.promise();
        if let Err(full) = promise.take(limits, records.len() as u64, bytes) {
            return Err(IngestError::DeadLettersFull {
                failed: records.len(),
                full,
            });
        }
        out.promise = promise;
    }
    out.set_aside = step.store.set_aside(records);
    for (failed, (id, _)) in failed.into_iter().zip(&out.set_aside.records) {
        out.failed[failed].dead_letter = Some(*id);
    }
    Ok(out)
}

/// Whether running the ingest step on `writes` may block (a plugin runs, or a dead letter is
/// recorded): then it belongs on a blocking thread.
pub(crate) fn may_block(pipeline: &Pipeline, writes: &[LocalWrite]) -> bool {
    writes.iter().any(|w| pipeline.has_ingest(&w.collection))
}
