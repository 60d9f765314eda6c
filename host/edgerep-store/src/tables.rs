//! The tables (see the crate's documentation) and the small records every transaction keeps.

use edgerep_wire::Hlc;
use edgerep_wire::event::EventLimits;
use redb::{ReadableTable, TableDefinition};

use crate::{Digest, StoreError, corrupt};

/// `collection 0x00 key` → encoded [`Versions`] (see [`keys`]).
pub(crate) const STATE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("state");

/// `origin 0x00 sequence` → encoded event (see [`keys`]).
pub(crate) const CHANGELOG: TableDefinition<&[u8], &[u8]> = TableDefinition::new("changelog");

pub(crate) const FEED: TableDefinition<u64, (&str, u64, u64)> = TableDefinition::new("feed");

pub(crate) const ORIGINS: TableDefinition<&str, u64> = TableDefinition::new("origins");

pub(crate) const DEAD_LETTERS: TableDefinition<u64, &[u8]> = TableDefinition::new("dead_letters");

pub(crate) const DISAGREEMENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("disagreements");

pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// Per peer, what it acknowledged holding: a CBOR map origin -> highest seq.
pub(crate) const PEERS: TableDefinition<&str, &[u8]> = TableDefinition::new("peers");

/// Per peer, when it was last heard from, and under this node's own id when it last saved itself
/// alive (wall clock, ms since the Unix epoch): a restart does not give a peer gone for good a
/// new `peer_absent_ms` to hold compaction back for, nor count this node's downtime as silence.
/// A value with [`AWAITED`] set is a configured peer never heard from: since when this node has
/// waited for it (see [`crate::Heard`]).
pub(crate) const PEERS_HEARD: TableDefinition<&str, u64> = TableDefinition::new("peers_heard");

/// Per peer, when its acknowledgements last moved (wall clock, ms since the Unix epoch; advice,
/// saved without fsync): a peer that stays connected and acknowledges nothing new holds
/// compaction back only `peer_absent_ms` from then, across this node's restarts.
pub(crate) const PEERS_PROGRESS: TableDefinition<&str, u64> =
    TableDefinition::new("peers_progress");

/// The bit of a `peers_heard` value that marks a peer never heard from (no time in ms reaches it).
pub(crate) const AWAITED: u64 = 1 << 63;

pub(crate) const META_NODE_ID: &str = "node_id";

pub(crate) const META_HLC: &str = "hlc_last";

pub(crate) const META_FEED_LAST: &str = "feed_last";

pub(crate) const META_DIGEST: &str = "digest";

pub(crate) const META_ENTRIES: &str = "state_entries";

pub(crate) const META_STORE_FORMAT: &str = "store_format";

pub(crate) const META_VERSIONS_ONLY: &str = "versions_only";

/// Present while a start's check at open has not yet recomputed the digest under a changed
/// hash rule: the next start recomputes it too, under whichever rule it runs (the writes of
/// the interrupted run were hashed under its rule, which may not be the one recorded).
pub(crate) const META_RULE_CHECK_PENDING: &str = "rule_check_pending";

/// What decided each collection when the node last started (the node's record, opaque here).
pub(crate) const META_DECIDERS: &str = "deciders";

/// The highest dead-letter id given, kept when dead letters are removed (so the top one is not
/// given again after a restart).
pub(crate) const META_DEAD_LETTER_HIGH: &str = "dead_letter_high";

/// How many records `dead_letters` holds and their bytes together (16 bytes: the count, then
/// the bytes, each big-endian): changed by each transaction that adds or removes one. Computed
/// at open when missing, or when its count is not the table's (an older build, which does not
/// keep it, changed the dead letters since).
pub(crate) const META_DEAD_LETTER_USAGE: &str = "dead_letter_usage";

/// The [`META_DEAD_LETTER_USAGE`] record, if there is one.
pub(crate) fn dead_letter_usage(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Option<crate::DeadLetterUsage>, StoreError> {
    let Some(g) = meta.get(META_DEAD_LETTER_USAGE)? else {
        return Ok(None);
    };
    let v = g.value();
    if v.len() != 16 {
        return Err(corrupt("meta", "dead_letter_usage is not 16 bytes"));
    }
    Ok(Some(crate::DeadLetterUsage {
        count: u64_from(&v[..8], "meta")?,
        bytes: u64_from(&v[8..], "meta")?,
    }))
}

/// Saves `usage` as the [`META_DEAD_LETTER_USAGE`] record.
pub(crate) fn save_dead_letter_usage(
    meta: &mut redb::Table<'_, &'static str, &'static [u8]>,
    usage: crate::DeadLetterUsage,
) -> Result<(), StoreError> {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&usage.count.to_be_bytes());
    v[8..].copy_from_slice(&usage.bytes.to_be_bytes());
    meta.insert(META_DEAD_LETTER_USAGE, &v[..])?;
    Ok(())
}

/// The highest sequence number of this node's own events that came back in a snapshot page
/// (after a restore from a backup), kept when it is above what the node holds of its own
/// history: an interrupted snapshot raises the node's own have only on its last page, and until
/// the rest is back those numbers are taken (a write under one would sign a second history).
/// Never lowered; it stops mattering once the own have reaches it.
pub(crate) const META_OWN_SEEN: &str = "own_seen";

/// The sequence number at which another history of this node's own events was proven (both
/// sealed with its key: a second machine under its id, or a restore that wrote again). Kept
/// for good: the node refuses local writes on this store, also after a restart (only an empty
/// store, taking its history back from the peers, starts over). Absent: none found.
pub(crate) const META_OWN_FORK: &str = "own_fork";

/// A `u64` kept in `meta` under `key` (0 when absent).
pub(crate) fn meta_u64(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<u64, StoreError> {
    match meta.get(key)? {
        Some(g) => u64_from(g.value(), "meta"),
        None => Ok(0),
    }
}

/// The node's last runs' feed generations, each with the feed position it opened at (16 bytes
/// a run, oldest first, at most [`FEED_RUNS_KEPT`]): see `StoreWriter::record_feed_run`.
pub(crate) const META_FEED_RUNS: &str = "feed_runs";

/// Runs kept in [`META_FEED_RUNS`].
pub(crate) const FEED_RUNS_KEPT: usize = 256;

/// The highest limits the store was opened under ([`limits_record`]): events stored under them
/// must stay readable, so a start with lower ones is refused.
pub(crate) const META_LIMITS: &str = "limits";

/// The limits a store keeps, by name, in the order [`META_LIMITS`] holds them.
pub(crate) fn limits_record(l: &EventLimits) -> [(&'static str, u64); 8] {
    [
        ("max_event_bytes", l.max_event_bytes as u64),
        ("max_key_bytes", l.max_key_bytes as u64),
        ("max_meta_entries", l.max_meta_entries as u64),
        ("max_meta_bytes", l.max_meta_bytes as u64),
        ("max_context_entries", l.max_context_entries as u64),
        ("max_value_bytes", l.value.max_bytes as u64),
        ("max_value_depth", l.value.max_depth as u64),
        ("max_value_items", l.value.max_items as u64),
    ]
}

/// The [`META_LIMITS`] record's values (empty when there is none).
pub(crate) fn held_limits(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Vec<u64>, StoreError> {
    match meta.get(META_LIMITS)? {
        Some(g) => g.value().chunks(8).map(|c| u64_from(c, "meta")).collect(),
        None => Ok(Vec::new()),
    }
}

/// Saves the highest of `held` and `limits`, each, as the [`META_LIMITS`] record.
pub(crate) fn record_limits(
    meta: &mut redb::Table<'_, &'static str, &'static [u8]>,
    held: &[u64],
    limits: &EventLimits,
) -> Result<(), StoreError> {
    let record: Vec<u8> = limits_record(limits)
        .iter()
        .enumerate()
        .flat_map(|(i, (_, n))| (*n).max(held.get(i).copied().unwrap_or(0)).to_be_bytes())
        .collect();
    meta.insert(META_LIMITS, record.as_slice())?;
    Ok(())
}

/// The limits of `new` lower than those of `held` (`held` as [`limits_record`] values), each
/// named with both values.
pub(crate) fn lowered(held: &[u64], new: &EventLimits) -> Vec<String> {
    limits_record(new)
        .iter()
        .zip(held)
        .filter(|((_, n), h)| n < h)
        .map(|((name, n), h)| format!("{name} {n} (stored events may need {h})"))
        .collect()
}

/// redb's page cache (reads and the write buffer), at most. At 32 MiB the two nodes of
/// `bench replicate` peaked at 95–101 MB resident; at 16 MiB 62 and 74 MB, with throughput
/// within that run's noise (writes append at the right edge of each table, and catch-up reads
/// the changelog in order: the working set is small).
pub const CACHE_BYTES: usize = 16 << 20;

/// Layout version of the tables above (2: origin chains and seals; 3: seals name their block
/// and its Merkle root, proofs of compacted live versions; 4: kept blocks, idempotency
/// records, resolutions in state rows and the limits record, so that a build of format 3
/// refuses a store this one wrote; 5: the own-numbers-seen record, restored idempotency keys,
/// feed runs and the feed by origin, which a build of format 4 would ignore: after a rollback
/// it could reuse its own sequence numbers or apply a retried keyed write twice). Raise it
/// with every change an older build would misread.
pub const STORE_FORMAT: u64 = 5;

/// The oldest format this build continues in place (raising it to [`STORE_FORMAT`] at open):
/// format 3 and 4 stores of the builds before lack only tables and records made at open (or
/// read as empty when missing).
pub(crate) const STORE_FORMAT_CONTINUED: u64 = 3;

/// The meta counters every write transaction keeps up to date: last feed position, state
/// digest, number of state entries.
pub(crate) struct Counters {
    pub(crate) position: u64,
    pub(crate) digest: Digest,
    pub(crate) entries: u64,
}

impl Counters {
    pub(crate) fn load(
        meta: &impl ReadableTable<&'static str, &'static [u8]>,
    ) -> Result<Counters, StoreError> {
        let read_u64 = |key: &str| meta_u64(meta, key);
        let digest = match meta.get(META_DIGEST)? {
            Some(g) => Digest::from_bytes(
                g.value()
                    .try_into()
                    .map_err(|_| corrupt("meta", "digest is not 32 bytes"))?,
            ),
            None => Digest::default(),
        };
        Ok(Counters {
            position: read_u64(META_FEED_LAST)?,
            digest,
            entries: read_u64(META_ENTRIES)?,
        })
    }

    pub(crate) fn save(
        &self,
        meta: &mut redb::Table<'_, &'static str, &'static [u8]>,
    ) -> Result<(), StoreError> {
        meta.insert(META_FEED_LAST, &self.position.to_be_bytes()[..])?;
        meta.insert(META_DIGEST, &self.digest.to_bytes()[..])?;
        meta.insert(META_ENTRIES, &self.entries.to_be_bytes()[..])?;
        Ok(())
    }
}

pub(crate) fn u64_from(bytes: &[u8], table: &'static str) -> Result<u64, StoreError> {
    let b: [u8; 8] = bytes
        .try_into()
        .map_err(|_| corrupt(table, "expected 8 bytes"))?;
    Ok(u64::from_be_bytes(b))
}

pub(crate) fn hlc_bytes(h: Hlc) -> [u8; 12] {
    let mut out = [0u8; 12];
    out[..8].copy_from_slice(&h.physical_ms.to_be_bytes());
    out[8..].copy_from_slice(&h.logical.to_be_bytes());
    out
}

pub(crate) fn hlc_from(bytes: &[u8]) -> Result<Hlc, StoreError> {
    if bytes.len() != 12 {
        return Err(corrupt("meta", "hlc_last is not 12 bytes"));
    }
    let p = u64_from(&bytes[..8], "meta")?;
    let l = u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    Ok(Hlc::new(p, l))
}
