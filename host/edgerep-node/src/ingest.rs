//! The write path between a validated request and the committer: collection halts, the ingest
//! transform chain, and the failure policy of a plugin that fails (dead letter, skip, halt).
//!
//! Invariant: a refused or failed write is never half-written: either every change its
//! transforms produced goes to the committer, or none does and the failure is recorded as its
//! policy says (a dead letter is durable before the client hears about it).

use std::sync::Arc;

use edgerep_config::FailurePolicy;
use edgerep_store::LocalWrite;
use serde_json::{Value as Json, json};

use crate::api::{ApiError, AppState};
use crate::committer::wall_ms;
use crate::dead_letter::{DeadLetter, STAGE_INGEST};
use crate::pipeline::Rejection;
use crate::request;

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

    /// The answer to a single write (PUT, DELETE) that failed.
    pub(crate) fn to_error(&self) -> ApiError {
        let kept = match self.dead_letter {
            Some(id) => format!("; kept as dead letter {id}"),
            None => "; dropped (policy skip)".to_owned(),
        };
        self.error_with(&kept)
    }

    /// The answer to a replay of dead letter `id` that failed again (the entry stays).
    pub(crate) fn to_replay_error(&self, id: u64) -> ApiError {
        self.error_with(&format!("; dead letter {id} stays (nothing written)"))
    }

    fn error_with(&self, kept: &str) -> ApiError {
        let r = &self.rejection;
        ApiError::plugin_failed(
            format!(
                "plugin {:?} failed on the write ({}): {}{kept}",
                r.plugin,
                r.failure.kind.as_str(),
                r.failure.message
            ),
            self.to_json(),
        )
    }
}

/// What the ingest step decided for a request.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// (index of the request's write, a write to commit) in request order.
    pub(crate) accepted: Vec<(usize, LocalWrite)>,
    pub(crate) failed: Vec<Failed>,
}

/// Checks a change a transform returned against the node's own rules.
fn check_change(app: &AppState, w: &LocalWrite) -> Result<(), String> {
    request::check_collection(&app.config(), &w.collection).map_err(|e| e.message().to_owned())?;
    request::check_key(&app.config(), &w.key).map_err(|e| e.message().to_owned())?;
    request::meta_problem(&app.config(), &w.meta)?;
    if let Some(v) = &w.value {
        crate::check_plugin_value(v, &crate::value_limits(&app.config()))?;
    }
    Ok(())
}

/// Runs the ingest chains of `writes` (blocking: call from a blocking thread). With
/// `record_failures`, failed writes are handled by their plugin's policy (dead letter, halt);
/// without it (a replay) they are only reported.
pub(crate) fn run(
    app: &AppState,
    writes: Vec<LocalWrite>,
    record_failures: bool,
) -> Result<Outcome, ApiError> {
    let wall = wall_ms();
    for w in &writes {
        if let Some(why) = app.pipeline.stopped(&w.collection, wall) {
            return Err(ApiError::stopped(&w.collection, &why));
        }
    }
    let mut out = Outcome::default();
    let check = |w: &LocalWrite| check_change(app, w);
    let mut halt: Option<(String, String)> = None;
    for (i, w) in writes.into_iter().enumerate() {
        if !app.pipeline.has_ingest(&w.collection) {
            out.accepted.push((i, w));
            continue;
        }
        let original = w.clone();
        match app.pipeline.run_ingest(w, wall, &check) {
            Ok(changes) => out.accepted.extend(changes.into_iter().map(|c| (i, c))),
            Err(rejection) => {
                let rejection = *rejection;
                tracing::warn!(
                    plugin = %rejection.plugin, collection = %original.collection,
                    failure = rejection.failure.kind.as_str(), message = %rejection.failure.message,
                    policy = rejection.policy.as_str(), "plugin failed on a write"
                );
                let keep = record_failures && rejection.policy != FailurePolicy::Skip;
                let dead_letter = if keep {
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
                    Some(
                        app.committer
                            .add_dead_letter_blocking(record.encode())
                            .map_err(|e| ApiError::internal(format!("store: {e}")))?,
                    )
                } else {
                    None
                };
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
                    dead_letter,
                });
            }
        }
    }
    if let Some((collection, reason)) = halt {
        app.pipeline.halt(&collection, reason.clone());
        return Err(ApiError::halted(&collection, &reason));
    }
    Ok(out)
}

/// Runs the ingest step off the async threads.
pub(crate) async fn run_blocking(
    app: &Arc<AppState>,
    writes: Vec<LocalWrite>,
    record_failures: bool,
) -> Result<Outcome, ApiError> {
    // Without transforms nothing blocks (no plugin call, no dead letter): stay on this thread.
    if !writes
        .iter()
        .any(|w| app.pipeline.has_ingest(&w.collection))
    {
        return run(app, writes, record_failures);
    }
    let app2 = app.clone();
    tokio::task::spawn_blocking(move || run(&app2, writes, record_failures))
        .await
        .map_err(|e| ApiError::internal(format!("ingest task failed: {e}")))?
}
