//! Group commit: one thread owns all local writes to the store. It takes every request waiting
//! in its queue (up to `max_events` events), commits them in one durable transaction, and only
//! then answers each request.
//!
//! Events from peers come through here too ([`Committer::apply`]): one durable transaction per
//! received batch, never mixed with local writes, so the store has a single writer.
//!
//! Invariants: a request is answered `Ok` only after the transaction holding all its events
//! committed; a request's events are never split across transactions; a failed transaction fails
//! every request in it and writes nothing; after every commit the hook is told the per-origin
//! highest sequence numbers the store now holds durably.

use std::sync::Arc;
use std::thread;
use std::time::{SystemTime, UNIX_EPOCH};

use std::collections::BTreeMap;

use edgerep_store::{Committed, LocalWrite, Received, RemoteApply, Store};
use edgerep_wire::HlcClock;
use tokio::sync::{mpsc, oneshot, watch};

/// Requests waiting for the committer, at most. Writers wait (backpressure) when it is full.
const QUEUE_REQUESTS: usize = 4096;

/// Per origin, the highest sequence number the store holds (its events are gapless).
pub type Have = BTreeMap<String, u64>;

/// Called on the committer thread after every durable commit with the store's new [`Have`].
pub type CommitHook = Box<dyn Fn(&Have) + Send>;

/// Called on the committer thread with the outcome of [`Committer::apply`].
pub type ApplyReply = Box<dyn FnOnce(Result<RemoteApply, CommitError>) + Send>;

enum Request {
    Write(Pending),
    Apply {
        events: Vec<Received>,
        dead_letters: Vec<Vec<u8>>,
        reply: ApplyReply,
    },
}

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
    queue: mpsc::Sender<Request>,
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
        hook: CommitHook,
    ) -> Result<(Committer, thread::JoinHandle<()>), edgerep_store::StoreError> {
        let mut have: Have = store.status()?.origins;
        let (tx, mut rx) = mpsc::channel::<Request>(QUEUE_REQUESTS);
        let thread = thread::Builder::new()
            .name("edgerep-committer".into())
            .spawn(move || {
                let mut group: Vec<Pending> = Vec::new();
                let mut writes: Vec<LocalWrite> = Vec::new();
                let mut counts: Vec<usize> = Vec::new();
                let mut held: Option<Request> = None;
                let local = store.node().to_string();
                while let Some(first) = held.take().or_else(|| rx.blocking_recv()) {
                    let first = match first {
                        Request::Write(p) => p,
                        Request::Apply {
                            events,
                            dead_letters,
                            reply,
                        } => {
                            let last: Vec<(String, u64)> = events
                                .iter()
                                .map(|r| (r.event.origin.to_string(), r.event.seq))
                                .collect();
                            let n = events.len();
                            match store.apply_remote(
                                events,
                                &dead_letters,
                                &mut clock,
                                wall_ms(),
                            ) {
                                Ok(out) => {
                                    for (origin, seq) in last {
                                        let held = have.entry(origin).or_insert(0);
                                        *held = (*held).max(seq);
                                    }
                                    if let Ok(status) = store.status() {
                                        feed.send_replace(status.feed_last);
                                    }
                                    hook(&have);
                                    reply(Ok(out));
                                }
                                Err(e) => {
                                    tracing::error!(error = %e, events = n, "applying a batch from a peer failed");
                                    reply(Err(CommitError::Store(e.to_string())));
                                }
                            }
                            continue;
                        }
                    };
                    let replay = first.dead_letters.clone();
                    let alone = !replay.is_empty();
                    group.push(first);
                    let mut events: usize = group[0].writes.len();
                    while !alone && events < max_events {
                        match rx.try_recv() {
                            Ok(Request::Write(p)) if p.dead_letters.is_empty() => {
                                events += p.writes.len();
                                group.push(p);
                            }
                            Ok(other) => {
                                held = Some(other);
                                break;
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
                                have.insert(local.clone(), last.seq);
                                hook(&have);
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
        Ok((Committer { queue: tx }, thread))
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
            .send(Request::Write(Pending {
                writes,
                dead_letters,
                reply,
            }))
            .await
            .map_err(|_| CommitError::Closed)?;
        answer.await.map_err(|_| CommitError::Closed)?
    }

    /// Queues events received from a peer to be applied in one durable transaction (in the
    /// order queued), with the dead letters of transforms that failed on them; `reply` is called
    /// on the committer thread once it committed or failed. Blocks while the queue is full
    /// (call it from a plain thread, not an async task).
    pub fn apply(
        &self,
        events: Vec<Received>,
        dead_letters: Vec<Vec<u8>>,
        reply: ApplyReply,
    ) -> Result<(), CommitError> {
        self.queue
            .blocking_send(Request::Apply {
                events,
                dead_letters,
                reply,
            })
            .map_err(|_| CommitError::Closed)
    }
}
