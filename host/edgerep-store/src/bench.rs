//! The raw redb limit the benchmarks compare the store (and replication) with: the same bytes
//! written straight into redb, with nothing of edgerep in between.

use std::path::Path;
use std::time::Instant;

use redb::{ReadableTable, TableDefinition};

use crate::StoreError;

/// Events per second written durably into a fresh redb file in `dir` for `seconds`:
/// `per_commit` per transaction, each one `value` under a new key in one table and `event` under
/// the next number in another (what a store keeps at the least: the state and the log). The
/// file is removed afterwards.
pub fn raw_redb_throughput(
    dir: &Path,
    event: &[u8],
    value: &[u8],
    per_commit: usize,
    seconds: f64,
) -> Result<f64, StoreError> {
    raw_redb_throughput_spread(dir, event, value, per_commit, 1, seconds)
}

/// [`raw_redb_throughput`] with the keys of each transaction spread over `ranges` key ranges
/// (round robin), as the writes of that many clients each writing its own keys in order: each
/// range's leaf is a page the commit writes.
pub fn raw_redb_throughput_spread(
    dir: &Path,
    event: &[u8],
    value: &[u8],
    per_commit: usize,
    ranges: usize,
    seconds: f64,
) -> Result<f64, StoreError> {
    const DATA: TableDefinition<&[u8], &[u8]> = TableDefinition::new("data");
    const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
    let path = dir.join(format!("raw-{per_commit}.redb"));
    let db = redb::Database::create(&path)?;
    let start = Instant::now();
    let mut n: u64 = 0;
    while start.elapsed().as_secs_f64() < seconds {
        let txn = db.begin_write()?;
        {
            let mut data = txn.open_table(DATA)?;
            let mut log = txn.open_table(LOG)?;
            for _ in 0..per_commit {
                n += 1;
                let key = if ranges > 1 {
                    format!("k-raw-{}-{n:09}", n % ranges as u64)
                } else {
                    format!("k-raw-{n:09}")
                };
                data.insert(key.as_bytes(), value)?;
                log.insert(n, event)?;
            }
        }
        txn.commit()?;
    }
    let eps = n as f64 / start.elapsed().as_secs_f64();
    drop(db);
    let _ = std::fs::remove_file(&path);
    Ok(eps)
}

/// [`raw_redb_throughput`] with the rows shaped as the store's own (not a limit to meet, a
/// bound to read the store's figure against): per event, a read of its state row first (a
/// write must see the versions it supersedes), the state row holding the whole `event` (its
/// versions, as `Versions::encode_single` writes them) under `collection 0x00 key`, and the
/// changelog row under `origin 0x00 sequence`. What keeping the event twice costs redb
/// itself, without anything else the store does.
pub fn raw_redb_throughput_store_shaped(
    dir: &Path,
    event: &[u8],
    per_commit: usize,
    seconds: f64,
) -> Result<f64, StoreError> {
    const STATE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("state");
    const CHANGELOG: TableDefinition<&[u8], &[u8]> = TableDefinition::new("changelog");
    let path = dir.join(format!("raw-shaped-{per_commit}.redb"));
    let db = redb::Database::create(&path)?;
    let versions = crate::Versions::encode_single(event);
    let start = Instant::now();
    let mut n: u64 = 0;
    while start.elapsed().as_secs_f64() < seconds {
        let txn = db.begin_write()?;
        {
            let mut state = txn.open_table(STATE)?;
            let mut changelog = txn.open_table(CHANGELOG)?;
            for _ in 0..per_commit {
                n += 1;
                let key = crate::keys::state_key("bench", format!("k-raw-{n:09}").as_bytes());
                let held = state.get(key.as_slice())?.is_some();
                if held {
                    return Err(crate::corrupt("state", "a fresh key was held"));
                }
                state.insert(key.as_slice(), versions.as_slice())?;
                changelog.insert(crate::keys::log_key("bench-raw", n).as_slice(), event)?;
            }
        }
        txn.commit()?;
    }
    let eps = n as f64 / start.elapsed().as_secs_f64();
    drop(db);
    let _ = std::fs::remove_file(&path);
    Ok(eps)
}

/// What one durable redb commit of a single event takes on this disk, paced at `rate` commits
/// per second for `seconds` (back to back when a commit takes longer than its turn): the p50
/// and p99 in milliseconds. The floor under any "durable on the receiver" latency: each event
/// that reaches a peer waits for at least one such commit there.
pub fn raw_redb_commit_latency(
    dir: &Path,
    event: &[u8],
    value: &[u8],
    rate: u64,
    seconds: f64,
) -> Result<(f64, f64), StoreError> {
    const DATA: TableDefinition<&[u8], &[u8]> = TableDefinition::new("data");
    const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
    let path = dir.join("raw-latency.redb");
    let db = redb::Database::create(&path)?;
    let interval = std::time::Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let start = Instant::now();
    let mut took = Vec::new();
    let mut n: u64 = 0;
    while n == 0 || start.elapsed().as_secs_f64() < seconds {
        let due = start + interval * u32::try_from(n).unwrap_or(u32::MAX);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        n += 1;
        let began = Instant::now();
        let txn = db.begin_write()?;
        {
            let mut data = txn.open_table(DATA)?;
            let mut log = txn.open_table(LOG)?;
            data.insert(format!("k-raw-{n:09}").as_bytes(), value)?;
            log.insert(n, event)?;
        }
        txn.commit()?;
        took.push(began.elapsed().as_secs_f64() * 1e3);
    }
    drop(db);
    let _ = std::fs::remove_file(&path);
    took.sort_by(f64::total_cmp);
    let at = |p: f64| took[((took.len() - 1) as f64 * p).round() as usize];
    Ok((at(0.5), at(0.99)))
}
