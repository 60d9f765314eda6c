//! The feed (`FEED`: position → a run of one origin's events) and its index by origin
//! (`FEED_BY_ORIGIN`: (origin, first sequence) → position), so that compaction finds the runs
//! it covers without reading the whole feed (it did, once per transaction: a feed of a million
//! runs behind a lagging peer cost the committer about a second per 1,024 events removed).
//!
//! Invariants:
//! - Every feed row has its index entry; an index entry whose row is gone is stale and dropped
//!   when met.
//! - Rows are only appended at the feed's end, so a store whose last row has no index entry was
//!   written by a build without the index: its index is rebuilt at open.

use edgerep_wire::Have;
use redb::{ReadableTable, Table, TableDefinition, WriteTransaction};

use crate::retention::{META_FEED_FLOOR, feed_floor};
use crate::{FEED, META, StoreError};

/// (origin, first sequence of a run) → the run's feed position.
pub(crate) const FEED_BY_ORIGIN: TableDefinition<(&str, u64), u64> =
    TableDefinition::new("feed_by_origin");

/// The feed and its index, open in a write transaction.
pub(crate) struct FeedWriter<'t> {
    feed: Table<'t, u64, (&'static str, u64, u64)>,
    index: Table<'t, (&'static str, u64), u64>,
}

impl<'t> FeedWriter<'t> {
    pub(crate) fn open(txn: &'t WriteTransaction) -> Result<FeedWriter<'t>, StoreError> {
        Ok(FeedWriter {
            feed: txn.open_table(FEED)?,
            index: txn.open_table(FEED_BY_ORIGIN)?,
        })
    }

    /// Adds the run of `count` events of `origin` from `first`, at feed position `start`.
    pub(crate) fn insert(
        &mut self,
        start: u64,
        origin: &str,
        first: u64,
        count: u64,
    ) -> Result<(), StoreError> {
        self.feed.insert(start, (origin, first, count))?;
        self.index.insert((origin, first), start)?;
        Ok(())
    }
}

/// Rebuilds the index when the feed's last row has no entry in it (see the module invariants).
/// Called at open.
pub(crate) fn check_index(txn: &WriteTransaction) -> Result<(), StoreError> {
    let feed = txn.open_table(FEED)?;
    let mut index = txn.open_table(FEED_BY_ORIGIN)?;
    let last = feed.last()?.map(|(k, v)| {
        let (origin, first, _) = v.value();
        (k.value(), origin.to_owned(), first)
    });
    if let Some((start, origin, first)) = &last
        && index.get((origin.as_str(), *first))?.map(|g| g.value()) == Some(*start)
    {
        return Ok(());
    }
    index.retain(|_, _| false)?;
    for row in feed.iter()? {
        let (start, run) = row?;
        let (origin, first, _) = run.value();
        index.insert((origin, first), start.value())?;
    }
    Ok(())
}

/// Removes the feed rows whose events are all compacted and raises the feed floor past every
/// compacted event a row names: per origin, only the runs the index lists up to its floor.
pub(crate) fn trim(txn: &mut WriteTransaction, compacted: &Have) -> Result<(), StoreError> {
    let mut feed = txn.open_table(FEED)?;
    let mut index = txn.open_table(FEED_BY_ORIGIN)?;
    let mut meta = txn.open_table(META)?;
    let mut floor = feed_floor(&meta)?;
    for (origin, &c) in compacted {
        let runs: Vec<(u64, u64)> = index
            .range((origin.as_str(), 0)..=(origin.as_str(), c))?
            .map(|row| {
                let (k, v) = row?;
                Ok((k.value().1, v.value()))
            })
            .collect::<Result<_, StoreError>>()?;
        for (first, start) in runs {
            let count = match feed.get(start)? {
                Some(run) if run.value().0 == origin.as_str() && run.value().1 == first => {
                    run.value().2
                }
                // Stale (its row went with a build that kept no index): dropped.
                _ => {
                    index.remove((origin.as_str(), first))?;
                    continue;
                }
            };
            let covered = (c - first + 1).min(count);
            floor = floor.max(start + covered - 1);
            if covered == count {
                feed.remove(start)?;
                index.remove((origin.as_str(), first))?;
            }
        }
    }
    meta.insert(META_FEED_FLOOR, &floor.to_be_bytes()[..])?;
    Ok(())
}
