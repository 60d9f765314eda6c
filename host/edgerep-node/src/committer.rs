//! Group commit: one thread owns all local writes to the store. It takes every request waiting
//! in its queue (up to `max_events` events), commits them in one durable transaction, and only
//! then answers each request.
//!
//! Invariants: a request is answered `Ok` only after the transaction holding all its events
//! committed; a request's events are never split across transactions; a failed transaction fails
//! every request in it and writes nothing.

use std::sync::Arc;
use std::thread;
use std::time::{SystemTime, UNIX_EPOCH};

use edgerep_store::{Committed, LocalWrite, Store};
use edgerep_wire::HlcClock;
use tokio::sync::{mpsc, oneshot, watch};

/// Requests waiting for the committer, at most. Writers wait (backpressure) when it is full.
const QUEUE_REQUESTS: usize = 4096;

struct Pending {
    writes: Vec<LocalWrite>,
    /// Dead letters this commit replays (removed in the same transaction). A replay is
    /// committed in a group of its own: if its dead letter is gone, only the replay fails.
    dead_letters: Vec<u64>,
    reply: oneshot::Sender<Result<Vec<Committed>, CommitError>>,
}

/// Why a group of writes was not committed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommitError {
    /// The store failed; nothing of the group was written.
    #[error("store failed, nothing written: {0}")]
    Store(String),
    /// The node is shutting down.
    #[error("node is shutting down")]
    Closed,
    /// A replay named a dead letter that another replay already committed.
    #[error("dead letter {0} was already replayed")]
    DeadLetterGone(u64),
}

/// Handle to the committer thread.
#[derive(Debug, Clone)]
pub struct Committer {
    queue: mpsc::Sender<Pending>,
}

/// Milliseconds since the Unix epoch by the wall clock (0 if the clock is before 1970).
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Committer {
    /// Starts the committer thread. `feed` is told the last feed position after each commit.
    /// The thread ends when every handle is dropped.
    pub fn spawn(
        store: Arc<Store>,
        mut clock: HlcClock,
        max_events: usize,
        feed: watch::Sender<u64>,
    ) -> (Committer, thread::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<Pending>(QUEUE_REQUESTS);
        let thread = thread::Builder::new()
            .name("edgerep-committer".into())
            .spawn(move || {
                let mut group: Vec<Pending> = Vec::new();
                let mut writes: Vec<LocalWrite> = Vec::new();
                let mut counts: Vec<usize> = Vec::new();
                let mut held: Option<Pending> = None;
                while let Some(first) = held.take().or_else(|| rx.blocking_recv()) {
                    let replay = first.dead_letters.clone();
                    let alone = !replay.is_empty();
                    group.push(first);
                    let mut events: usize = group[0].writes.len();
                    while !alone && events < max_events {
                        match rx.try_recv() {
                            Ok(p) if !p.dead_letters.is_empty() => {
                                held = Some(p);
                                break;
                            }
                            Ok(p) => {
                                events += p.writes.len();
                                group.push(p);
                            }
                            Err(_) => break,
                        }
                    }
                    writes.clear();
                    counts.clear();
                    for p in &mut group {
                        counts.push(p.writes.len());
                        writes.append(&mut p.writes);
                    }
                    let total = writes.len();
                    match store.commit_local_replacing(
                        std::mem::take(&mut writes),
                        &replay,
                        &mut clock,
                        wall_ms(),
                    ) {
                        Ok(committed) => {
                            if let Some(last) = committed.last() {
                                feed.send_replace(last.position);
                            }
                            let mut rest = committed.as_slice();
                            for (p, &n) in group.drain(..).zip(&counts) {
                                let (mine, tail) = rest.split_at(n);
                                rest = tail;
                                // A writer that gave up waiting is no reason to stop.
                                let _ = p.reply.send(Ok(mine.to_vec()));
                            }
                        }
                        Err(e) => {
                            tracing::error!(error = %e, events = total, "group commit failed");
                            for p in group.drain(..) {
                                let err = match &e {
                                    edgerep_store::StoreError::NoSuchDeadLetter(id) => {
                                        CommitError::DeadLetterGone(*id)
                                    }
                                    other => CommitError::Store(other.to_string()),
                                };
                                let _ = p.reply.send(Err(err));
                            }
                        }
                    }
                }
            })
            .expect("spawning the committer thread");
        (Committer { queue: tx }, thread)
    }

    /// Commits `writes` as one unit and returns where each landed, once durable.
    pub async fn commit(&self, writes: Vec<LocalWrite>) -> Result<Vec<Committed>, CommitError> {
        self.commit_replacing(writes, Vec::new()).await
    }

    /// Commits `writes` and removes the dead letters they replay, in one transaction.
    pub async fn commit_replacing(
        &self,
        writes: Vec<LocalWrite>,
        dead_letters: Vec<u64>,
    ) -> Result<Vec<Committed>, CommitError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Pending {
                writes,
                dead_letters,
                reply,
            })
            .await
            .map_err(|_| CommitError::Closed)?;
        answer.await.map_err(|_| CommitError::Closed)?
    }
}
