//! The raw redb limit the benchmarks compare the store (and replication) with: the same bytes
//! written straight into redb, with nothing of edgerep in between.

use std::path::Path;
use std::time::Instant;

use redb::TableDefinition;

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
