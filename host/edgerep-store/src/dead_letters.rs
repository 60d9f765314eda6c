//! Dead-letter ids: reserved before the transaction that keeps the dead letter (a request's
//! answer names its dead letters, and the answer is recorded with its idempotency key in that
//! same transaction), never given twice.
//!
//! Invariant: a listing never shows an id while a lower one may still be committed: ids
//! reserved and not yet committed or given up are held in `open`, and a listing stops below
//! the lowest of them (a client paging with `after` would otherwise skip the late one). Ids
//! taken inside the committing transaction (replication's dead letters) need no hold: the
//! committer commits one transaction at a time.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// How many dead letters, and the bytes of their records together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeadLetterUsage {
    /// Dead letters.
    pub count: u64,
    /// Their records' bytes together.
    pub bytes: u64,
}

impl DeadLetterUsage {
    /// Counts one more record of `bytes`.
    pub(crate) fn add(&mut self, bytes: usize) {
        self.count += 1;
        self.bytes += bytes as u64;
    }
}

/// The next id, and the ids reserved and not yet settled.
#[derive(Debug)]
pub(crate) struct Ids {
    next: AtomicU64,
    open: Arc<Mutex<BTreeSet<u64>>>,
    /// The highest id ever given (kept in `meta`, so that one removed from the top of the
    /// table is not given again after a restart).
    high: AtomicU64,
}

impl Ids {
    /// From the table's last id and the kept high-water mark.
    pub(crate) fn new(next: u64) -> Ids {
        Ids {
            next: AtomicU64::new(next.max(1)),
            open: Arc::default(),
            high: AtomicU64::new(next.max(1) - 1),
        }
    }

    /// `n` ids for the committing transaction (no hold).
    pub(crate) fn take(&self, n: u64) -> u64 {
        let first = self.next.fetch_add(n, Ordering::Relaxed);
        if n > 0 {
            self.high.fetch_max(first + n - 1, Ordering::Relaxed);
        }
        first
    }

    /// `records` under ids held until the returned [`SetAside`] drops.
    pub(crate) fn reserve(&self, records: Vec<Vec<u8>>) -> SetAside {
        if records.is_empty() {
            return SetAside::default();
        }
        let n = records.len() as u64;
        // Under the lock: a listing reads the lowest held id before it reads the table.
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let first = self.take(n);
        open.extend(first..first + n);
        drop(open);
        SetAside {
            records: (first..).zip(records).collect(),
            _reserved: Some(Reserved {
                ids: first..first + n,
                open: self.open.clone(),
            }),
        }
    }

    /// The lowest id reserved and not yet settled: listings stop below it.
    pub(crate) fn lowest_open(&self) -> Option<u64> {
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .first()
            .copied()
    }

    /// The highest id given so far.
    pub(crate) fn high(&self) -> u64 {
        self.high.load(Ordering::Relaxed)
    }
}

/// A request's dead letters under their reserved ids: committed with its writes (see
/// [`crate::StoreWriter::commit_local_setting_aside`]); the ids are held back from listings
/// until this is dropped, after that transaction committed or failed.
#[derive(Debug, Default)]
pub struct SetAside {
    /// (id, record), ids one after another.
    pub records: Vec<(u64, Vec<u8>)>,
    _reserved: Option<Reserved>,
}

impl SetAside {
    /// Whether there is nothing to keep.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

#[derive(Debug)]
struct Reserved {
    ids: std::ops::Range<u64>,
    open: Arc<Mutex<BTreeSet<u64>>>,
}

impl Drop for Reserved {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        for id in self.ids.clone() {
            open.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_ids_stop_listings_until_dropped_and_are_never_given_twice() {
        let ids = Ids::new(5);
        let a = ids.reserve(vec![b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(a.records.iter().map(|r| r.0).collect::<Vec<_>>(), [5, 6]);
        let first = ids.take(1);
        assert_eq!(first, 7);
        let c = ids.reserve(vec![b"c".to_vec()]);
        assert_eq!(ids.lowest_open(), Some(5));
        drop(a);
        assert_eq!(ids.lowest_open(), Some(8));
        drop(c);
        assert_eq!(ids.lowest_open(), None);
        assert_eq!(ids.high(), 8);
        assert!(ids.reserve(Vec::new()).is_empty());
        assert_eq!(ids.take(1), 9);
    }
}
