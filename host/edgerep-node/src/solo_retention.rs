//! Changelog retention on a node without peers. A node with peers compacts in its replicator,
//! which knows what each peer acknowledged; one without keeps each origin's newest
//! `retention.keep_events` entries and removes the rest every `retention.interval_ms`,
//! transaction after transaction while more is left (so its changelog does not grow without
//! end while it waits for peers).

use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::thread;
use std::time::Duration;

use edgerep_config::RetentionConfig;
use edgerep_store::Store;
use edgerep_wire::Have;

use crate::committer::Committer;

/// The retention thread; dropping it stops the thread and waits for it (it holds a committer
/// handle, so the committer ends only after it).
#[derive(Debug)]
pub(crate) struct SoloRetention {
    stop: Option<std_mpsc::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Drop for SoloRetention {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Per origin, how far to compact: all but the newest `keep` entries, where that removes any.
fn floors(store: &Store, keep: u64) -> Result<Have, edgerep_store::StoreError> {
    let status = store.status()?;
    Ok(status
        .origins
        .iter()
        .filter_map(|(origin, &held)| {
            let floor = held.saturating_sub(keep);
            (floor > status.compacted.get(origin).copied().unwrap_or(0))
                .then(|| (origin.clone(), floor))
        })
        .collect())
}

/// Starts retention for a node without peers (none when `compact` is off).
pub(crate) fn start(
    config: &RetentionConfig,
    store: Arc<Store>,
    committer: Committer,
) -> Result<Option<SoloRetention>, std::io::Error> {
    if !config.compact {
        return Ok(None);
    }
    let (keep, interval) = (
        config.keep_events,
        Duration::from_millis(config.interval_ms),
    );
    let (stop, stopped) = std_mpsc::channel::<()>();
    let thread = thread::Builder::new()
        .name("edgerep-retention".into())
        .spawn(move || {
            while let Err(std_mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                // The sweep of superseded proofs goes once per interval (see
                // `StoreWriter::compact_sweeping`).
                let mut sweep = true;
                loop {
                    let floors = match floors(&store, keep) {
                        Ok(f) if f.is_empty() => break,
                        Ok(f) => f,
                        Err(e) => {
                            tracing::error!("reading what to compact failed: {e}");
                            break;
                        }
                    };
                    let (tx, rx) = std_mpsc::channel();
                    let reply = Box::new(move |r| {
                        let _ = tx.send(r);
                    });
                    let started = std::time::Instant::now();
                    if committer.compact(floors, sweep, reply).is_err() {
                        return;
                    }
                    sweep = false;
                    match rx.recv() {
                        // More: soon (see `COMPACT_PAUSE_FACTOR`).
                        Ok(Ok(c)) if c.more => match stopped.recv_timeout(
                            started.elapsed() * crate::committer::COMPACT_PAUSE_FACTOR,
                        ) {
                            Err(std_mpsc::RecvTimeoutError::Timeout) => {}
                            _ => return,
                        },
                        Ok(Ok(_)) => break,
                        Ok(Err(e)) => {
                            tracing::error!("changelog compaction failed: {e}");
                            break;
                        }
                        Err(_) => return,
                    }
                }
            }
        })?;
    Ok(Some(SoloRetention {
        stop: Some(stop),
        thread: Some(thread),
    }))
}
