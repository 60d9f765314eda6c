//! Idempotency keys of local writes: a client's key for a request, recorded with the request's
//! answer in the transaction that commits its events, so a retry after a timeout or a crash
//! gets the original answer instead of committing the writes again.
//!
//! One table, `idempotency`: insertion number -> (key, at_ms, record), appended in order.
//! The newest records wait in the `meta` table under [`META_PENDING`] (meta's page is written
//! by every commit anyway) and move to the table together once they weigh [`PENDING_BYTES`],
//! or when a commit looks at the front for expired records (at most every
//! [`EXPIRE_EVERY_MS`], so at a low rate of keys they move about once a second):
//! most commits that record keys dirty no page of their own (the table's last page on every
//! commit cost 5–9% of small-request throughput; a table keyed by the client's key, a random
//! page per commit, 11%). Lookups by key go through an index in memory (key -> insertion
//! number), built from both at open and changed after each commit by the committer, the
//! table's only writer.
//!
//! Records go from the front, oldest first. By count: once more than the window's count are
//! held, as many as it takes to come back to the count less 1/32 of it (so the front's pages
//! are written once per 1/32 of the window, not on every commit), never the commit's own. By
//! time: at most every [`EXPIRE_EVERY_MS`], at most [`EXPIRE_PER_COMMIT`] per transaction. A
//! record past the window's time is not served even before it is removed, and its key may be
//! recorded anew.
//!
//! Invariant: a key is recorded only with the events it committed, in one transaction; a key
//! already recorded refuses a second commit under it ([`crate::StoreError::KeyInUse`]); the
//! index holds exactly the keys of the table and of the records waiting in `meta` once the
//! committing call returns.

use std::collections::HashMap;
use std::sync::Mutex;

use edgerep_wire::cbor::{CborError, Reader};
use minicbor::Encoder;
use redb::{ReadableTable, ReadableTableMetadata, Table, TableDefinition};

use crate::{Committed, StoreError, corrupt};
use edgerep_wire::Hlc;

pub(crate) const IDEMPOTENCY: TableDefinition<u64, (&str, u64, &[u8])> =
    TableDefinition::new("idempotency");

/// Keys whose writes came back from the peers after a restore from a backup lost their records:
/// key digest ([`digest`]) -> (the write's sequence number, its time in ms). Written only for
/// this node's own events back from a peer (`apply_in`, and `install_in` for a snapshot's
/// versions) carrying their keys ([`edgerep_wire::event::FIELD_IDEMPOTENCY_KEYS`]), so it
/// holds rows only after a restore; read within the window like a record; rows past the window
/// go at the next start ([`prune_restored`]).
pub(crate) const RESTORED: TableDefinition<&[u8], (u64, u64)> =
    TableDefinition::new("idempotency_restored");

/// A key's digest, as events carry it: 16 bytes of BLAKE3 under a context of its own.
pub fn digest(key: &str) -> [u8; 16] {
    let mut h = blake3::Hasher::new_derive_key("edgerep 2026 idempotency key");
    h.update(key.as_bytes());
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.finalize().as_bytes()[..16]);
    out
}

/// The event field naming `digests` (a CBOR byte string of them, one after another). `None`
/// only if that byte string did not read back as one canonical item (it always does): the
/// event then goes without the field rather than stopping the writer.
pub(crate) fn keys_field(digests: &[[u8; 16]]) -> Option<edgerep_wire::Value> {
    let mut bytes = Vec::with_capacity(3 + 16 * digests.len());
    let mut e = Encoder::new(&mut bytes);
    let _ = e.bytes(&digests.concat());
    edgerep_wire::Value::from_canonical(bytes, &edgerep_wire::value::DecodeLimits::default()).ok()
}

/// Keeps the key digests `event` (this node's own, back from a peer) carries in [`RESTORED`],
/// with its sequence number and time: its hybrid-clock time, when this node wrote it. Not
/// this node's wall clock now: a box restored from a backup may boot with its clock behind
/// (no real-time clock, NTP not yet synced), and a key kept at that time would expire early
/// once the clock is set, so a retry within the window would write again. (A clock that ran
/// ahead when the write was made keeps the key longer: a retry is answered, not written
/// twice.) A row there already keeps the later time. Returns whether it kept any.
pub(crate) fn keep_restored(
    txn: &redb::WriteTransaction,
    event: &edgerep_wire::Event,
) -> Result<bool, StoreError> {
    let digests = keys_of(event);
    if digests.is_empty() {
        return Ok(false);
    }
    let at_ms = event.hlc.physical_ms;
    let mut table = txn.open_table(RESTORED)?;
    for d in digests {
        let kept = table.get(d.as_slice())?.map(|g| g.value());
        if kept.is_none_or(|(_, at)| at < at_ms) {
            table.insert(d.as_slice(), (event.seq, at_ms))?;
        }
    }
    Ok(true)
}

/// Removes from [`RESTORED`] the rows older than `window` at `wall_ms`; returns whether any
/// are left.
pub(crate) fn prune_restored(
    txn: &redb::WriteTransaction,
    window: Window,
    wall_ms: u64,
) -> Result<bool, StoreError> {
    let mut table = txn.open_table(RESTORED)?;
    table.retain(|_, (_, at_ms)| window.covers(at_ms, wall_ms))?;
    Ok(!table.is_empty()?)
}

/// The key digests an event's field names (none if it is not a byte string of at most four;
/// the writer puts one).
pub(crate) fn keys_of(event: &edgerep_wire::Event) -> Vec<[u8; 16]> {
    let Some(v) = event
        .extra
        .get(&edgerep_wire::event::FIELD_IDEMPOTENCY_KEYS)
    else {
        return Vec::new();
    };
    let mut r = Reader::new(v.as_bytes());
    match r.bytes("idempotency keys") {
        Ok(b) if b.len() % 16 == 0 && b.len() <= 4 * 16 => b
            .chunks_exact(16)
            .map(|c| {
                let mut d = [0u8; 16];
                d.copy_from_slice(c);
                d
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The key in the `meta` table of the records waiting to move to the table: their rows
/// `[n, key, at_ms, record]` one after another, oldest first, all newer than the table's.
pub(crate) const META_PENDING: &str = "idempotency_pending";

/// Records wait in `meta` until they weigh this many bytes, then move to the table.
pub const PENDING_BYTES: usize = 2048;

/// Most expired records one transaction removes.
pub const EXPIRE_PER_COMMIT: usize = 256;

/// Records older than the window's time are looked for at most this often (ms of the wall
/// clock the commits pass), unless the last look left some.
pub const EXPIRE_EVERY_MS: u64 = 1000;

/// Most writes one key's record holds: a request of more cannot carry a key
/// ([`crate::StoreError::Invalid`]), and a record claiming more is damage.
pub const MAX_RECORD_WRITES: u64 = 1 << 20;

/// Longest idempotency key, in bytes.
pub const MAX_KEY_BYTES: usize = 255;

/// How long, and how many, idempotency records are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Records older than this (ms) are removed.
    pub keep_ms: u64,
    /// At most this many records are kept (the oldest go first).
    pub keep_keys: u64,
}

impl Window {
    /// Whether something made at `at_ms` on the wall clock is still within the window's time
    /// at `wall_ms`.
    pub fn covers(&self, at_ms: u64, wall_ms: u64) -> bool {
        at_ms >= wall_ms.saturating_sub(self.keep_ms)
    }
}

impl Default for Window {
    fn default() -> Window {
        Window {
            keep_ms: 24 * 3600 * 1000,
            keep_keys: 100_000,
        }
    }
}

/// A request's key, to record with the events it commits: writes `first .. first + count` of
/// the transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The client's key.
    pub key: String,
    /// A hash of the request as the client sent it: a retry must send the same.
    pub body: [u8; 32],
    /// The first of its writes in the transaction.
    pub first: usize,
    /// How many writes.
    pub count: usize,
    /// Whatever else the caller needs to rebuild its answer (opaque here).
    pub extra: Vec<u8>,
}

/// What a key was recorded with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// The request's hash.
    pub body: [u8; 32],
    /// When it was recorded (ms since the Unix epoch, this node's clock).
    pub at_ms: u64,
    /// Where its writes landed.
    pub committed: Vec<Committed>,
    /// The caller's extra.
    pub extra: Vec<u8>,
}

impl Recorded {
    /// `[body, at_ms, runs, extra]`, the commits as runs `[seq, physical, logical, position,
    /// count]` of commits one after another (seq, position and the HLC's logical part each one
    /// more than the last, same physical time): a request's writes committed in one
    /// transaction are usually one run, so a record of a 100-write batch stays small.
    fn encode(&self) -> Vec<u8> {
        let runs = runs(&self.committed);
        let mut buf = Vec::new();
        let mut e = Encoder::new(&mut buf);
        // Writing into a Vec cannot fail.
        let _ = e
            .array(4)
            .and_then(|e| e.bytes(&self.body))
            .and_then(|e| e.u64(self.at_ms))
            .and_then(|e| e.array(runs.len() as u64));
        for (c, count) in runs {
            let _ = e
                .array(5)
                .and_then(|e| e.u64(c.seq))
                .and_then(|e| e.u64(c.hlc.physical_ms))
                .and_then(|e| e.u32(c.hlc.logical))
                .and_then(|e| e.u64(c.position))
                .and_then(|e| e.u64(count));
        }
        let _ = e.bytes(&self.extra);
        buf
    }

    fn decode(bytes: &[u8]) -> Result<Recorded, CborError> {
        let bad = |reason: String| CborError::Invalid {
            what: "idempotency record".into(),
            reason,
        };
        let mut r = Reader::new(bytes);
        r.array_of(4, "idempotency record")?;
        let body: [u8; 32] = r
            .bytes("idempotency body hash")?
            .try_into()
            .map_err(|_| bad("body hash is not 32 bytes".into()))?;
        let at_ms = r.u64("idempotency time")?;
        let n = r.array("idempotency commits")?;
        let mut committed = Vec::new();
        for _ in 0..n {
            // A run of 5 fields; records written before runs hold single commits of 4.
            let fields = r.array("idempotency run")?;
            if fields != 4 && fields != 5 {
                return Err(bad(format!("a run of {fields} fields")));
            }
            let seq = r.u64("run seq")?;
            let physical = r.u64("run hlc time")?;
            let logical = r.u32("run hlc counter")?;
            let position = r.u64("run position")?;
            let count = if fields == 5 { r.u64("run length")? } else { 1 };
            // Bounded before anything is allocated: a damaged row must not claim millions.
            if count == 0 || count > MAX_RECORD_WRITES - committed.len() as u64 {
                return Err(bad(format!(
                    "a run of {count} commits after {} (at most {MAX_RECORD_WRITES} in a record)",
                    committed.len()
                )));
            }
            for i in 0..count {
                let (Some(seq), Some(position), Some(logical)) = (
                    seq.checked_add(i),
                    position.checked_add(i),
                    u32::try_from(i).ok().and_then(|i| logical.checked_add(i)),
                ) else {
                    return Err(bad("a run overflows".into()));
                };
                committed.push(Committed {
                    seq,
                    hlc: Hlc::new(physical, logical),
                    position,
                });
            }
        }
        let extra = r.bytes("idempotency answer")?.to_vec();
        r.finish()?;
        Ok(Recorded {
            body,
            at_ms,
            committed,
            extra,
        })
    }
}

/// `commits` as runs: each run's first commit and how many follow it one after another.
fn runs(commits: &[Committed]) -> Vec<(Committed, u64)> {
    let mut out: Vec<(Committed, u64)> = Vec::new();
    for c in commits {
        if let Some((first, count)) = out.last_mut() {
            let next = *count;
            let follows = first.seq.checked_add(next) == Some(c.seq)
                && first.position.checked_add(next) == Some(c.position)
                && c.hlc.physical_ms == first.hlc.physical_ms
                && u32::try_from(next)
                    .ok()
                    .and_then(|n| first.hlc.logical.checked_add(n))
                    == Some(c.hlc.logical);
            if follows && next < MAX_RECORD_WRITES {
                *count += 1;
                continue;
            }
        }
        out.push((*c, 1));
    }
    out
}

/// A record as held: its insertion number, key, time and encoded [`Recorded`].
#[derive(Debug, Clone)]
struct Row {
    n: u64,
    key: String,
    at_ms: u64,
    record: Vec<u8>,
}

fn encode_rows(rows: &[Row], buf: &mut Vec<u8>) {
    let mut e = Encoder::new(buf);
    for r in rows {
        // Writing into a Vec cannot fail.
        let _ = e
            .array(4)
            .and_then(|e| e.u64(r.n))
            .and_then(|e| e.str(&r.key))
            .and_then(|e| e.u64(r.at_ms))
            .and_then(|e| e.bytes(&r.record));
    }
}

fn decode_rows(bytes: &[u8]) -> Result<Vec<Row>, CborError> {
    let mut r = Reader::new(bytes);
    let mut rows = Vec::new();
    while r.remaining() > 0 {
        r.array_of(4, "pending idempotency record")?;
        rows.push(Row {
            n: r.u64("pending record number")?,
            key: r.str("pending record key")?.to_owned(),
            at_ms: r.u64("pending record time")?,
            record: r.bytes("pending record")?.to_vec(),
        });
    }
    Ok(rows)
}

type Records<'t> = Table<'t, u64, (&'static str, u64, &'static [u8])>;

/// The records waiting in `meta`.
fn pending(meta: &impl ReadableTable<&'static str, &'static [u8]>) -> Result<Vec<Row>, StoreError> {
    match meta.get(META_PENDING)? {
        Some(g) => decode_rows(g.value()).map_err(|e| corrupt("meta", e)),
        None => Ok(Vec::new()),
    }
}

/// One transaction's view of the records: the table, and those waiting in `meta` (newest).
struct Held<'a, 't> {
    table: &'a mut Records<'t>,
    pending: Vec<Row>,
    pending_changed: bool,
}

impl Held<'_, '_> {
    /// Record `n`'s time and key.
    fn get(&self, n: u64) -> Result<Option<(String, u64)>, StoreError> {
        if let Some(r) = self.pending.iter().find(|r| r.n == n) {
            return Ok(Some((r.key.clone(), r.at_ms)));
        }
        Ok(self
            .table
            .get(n)?
            .map(|g| (g.value().0.to_owned(), g.value().1)))
    }

    fn remove(&mut self, n: u64) -> Result<(), StoreError> {
        if let Some(i) = self.pending.iter().position(|r| r.n == n) {
            self.pending.remove(i);
            self.pending_changed = true;
        } else {
            self.table.remove(n)?;
        }
        Ok(())
    }

    fn push(&mut self, row: Row) {
        self.pending.push(row);
        self.pending_changed = true;
    }

    /// Moves every waiting record to the table.
    fn flush(&mut self) -> Result<(), StoreError> {
        for r in self.pending.drain(..) {
            self.table
                .insert(r.n, (r.key.as_str(), r.at_ms, r.record.as_slice()))?;
            self.pending_changed = true;
        }
        Ok(())
    }

    /// Writes what waits back to `meta`, or moves it to the table once it weighs
    /// [`PENDING_BYTES`].
    fn save(mut self, meta: &mut Table<'_, &'static str, &'static [u8]>) -> Result<(), StoreError> {
        if !self.pending_changed {
            return Ok(());
        }
        let mut buf = Vec::new();
        encode_rows(&self.pending, &mut buf);
        if buf.len() >= PENDING_BYTES {
            self.flush()?;
            buf.clear();
        }
        if buf.is_empty() {
            meta.remove(META_PENDING)?;
        } else {
            meta.insert(META_PENDING, buf.as_slice())?;
        }
        Ok(())
    }
}

/// The index in memory: key -> insertion number.
#[derive(Debug, Default)]
pub(crate) struct Index {
    by_key: Mutex<HashMap<String, u64>>,
    /// The insertion number of the next record (one more than the last ever recorded, in the
    /// table or waiting in `meta`).
    next: std::sync::atomic::AtomicU64,
    /// The wall time (ms) from which the next commit looks for records past the window's time.
    next_expiry_ms: std::sync::atomic::AtomicU64,
    /// The records held (insertion number, when on the monotonic clock: made by this process,
    /// or at open for those made before), oldest first: one is expired by time only when it
    /// is past the window on both clocks, so a forward step of the wall clock (NTP on a box
    /// that booted without a real-time clock, before or after a restart) does not expire at
    /// once the keys a client may be retrying now.
    recorded_here: Mutex<std::collections::VecDeque<(u64, std::time::Instant)>>,
    /// The records waiting in `meta` at open were stale (see [`Index::load`]): the first
    /// keyed commit drops them.
    stale_pending: std::sync::atomic::AtomicBool,
    /// Records dropped for the count (`idempotency_max_keys`) while still inside the window's
    /// time, since open: each is a key whose retry would now commit again.
    dropped_early: std::sync::atomic::AtomicU64,
}

/// What a commit did to the index (applied once it is durable).
#[derive(Debug, Default)]
pub(crate) struct Changes {
    added: Vec<(String, u64)>,
    removed: Vec<String>,
    /// The stale records waiting in `meta` are gone.
    stale_dropped: bool,
    /// Records removed for the count while inside the window's time.
    dropped_early: u64,
}

impl Index {
    /// Reads every key of the table and of the records waiting in `meta`.
    pub(crate) fn load(
        table: &impl ReadableTable<u64, (&'static str, u64, &'static [u8])>,
        meta: &impl ReadableTable<&'static str, &'static [u8]>,
    ) -> Result<Index, StoreError> {
        let mut by_key = HashMap::new();
        let mut next = 1;
        for row in table.iter()? {
            let (n, v) = row?;
            by_key.insert(v.value().0.to_owned(), n.value());
            next = n.value() + 1;
        }
        let waiting = pending(meta)?;
        // Records numbered below the table's next: an older edgerep, which does not know they
        // wait here, ran on this store and numbered its own past them. They are dropped (that
        // edgerep did not know their keys either), here and at the next keyed commit.
        let stale = waiting.first().is_some_and(|r| r.n < next);
        if !stale {
            for r in waiting {
                next = r.n + 1;
                by_key.insert(r.key, r.n);
            }
        }
        // Records made before this start count as made now on the monotonic clock: a box that
        // restarts with its wall clock days off (no real-time clock, NTP not there yet, or a
        // step since) would otherwise expire at once the keys of the requests a client is
        // retrying after the crash. They are kept a window longer than the wall clock says.
        let opened = std::time::Instant::now();
        let mut loaded: Vec<u64> = by_key.values().copied().collect();
        loaded.sort_unstable();
        Ok(Index {
            by_key: Mutex::new(by_key),
            next: std::sync::atomic::AtomicU64::new(next),
            next_expiry_ms: std::sync::atomic::AtomicU64::new(0),
            recorded_here: Mutex::new(loaded.into_iter().map(|n| (n, opened)).collect()),
            stale_pending: std::sync::atomic::AtomicBool::new(stale),
            dropped_early: std::sync::atomic::AtomicU64::new(0),
        })
    }

    fn number(&self, key: &str) -> Option<u64> {
        self.by_key
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .copied()
    }

    /// Whether `key` is held (its record may have expired since: see [`Index::get`]).
    pub(crate) fn contains(&self, key: &str) -> bool {
        self.number(key).is_some()
    }

    /// How many keys are held.
    pub(crate) fn len(&self) -> u64 {
        self.by_key.lock().unwrap_or_else(|e| e.into_inner()).len() as u64
    }

    /// Records dropped for the count while inside the window's time, since open.
    pub(crate) fn dropped_early(&self) -> u64 {
        self.dropped_early
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Takes in what a committed transaction did.
    pub(crate) fn apply(&self, changes: Changes) {
        self.dropped_early
            .fetch_add(changes.dropped_early, std::sync::atomic::Ordering::Relaxed);
        if changes.stale_dropped {
            self.stale_pending
                .store(false, std::sync::atomic::Ordering::Relaxed);
        }
        let mut by_key = self.by_key.lock().unwrap_or_else(|e| e.into_inner());
        for k in changes.removed {
            by_key.remove(&k);
        }
        if let Some(last) = changes.added.iter().map(|(_, n)| *n).max() {
            self.next
                .fetch_max(last + 1, std::sync::atomic::Ordering::Relaxed);
        }
        let now = std::time::Instant::now();
        let mut here = self.recorded_here.lock().unwrap_or_else(|e| e.into_inner());
        here.extend(changes.added.iter().map(|(_, n)| (*n, now)));
        by_key.extend(changes.added);
    }

    /// Whether record `n`, made at `at_ms` on the wall clock, is past the window's time at
    /// `wall_ms`: on the wall clock, and on the monotonic clock too when this process made it.
    fn past_time(&self, n: u64, at_ms: u64, wall_ms: u64, window: Window) -> bool {
        if window.covers(at_ms, wall_ms) {
            return false;
        }
        let here = self.recorded_here.lock().unwrap_or_else(|e| e.into_inner());
        let keep = std::time::Duration::from_millis(window.keep_ms);
        match here.binary_search_by_key(&n, |&(h, _)| h) {
            Ok(i) => here[i].1.elapsed() >= keep,
            Err(_) => true,
        }
    }

    /// The record of `key`, if one is held within the window at `wall_ms` (one past it is
    /// gone for the client even before a commit removes it).
    pub(crate) fn get(
        &self,
        table: &impl ReadableTable<u64, (&'static str, u64, &'static [u8])>,
        meta: &impl ReadableTable<&'static str, &'static [u8]>,
        key: &str,
        window: Window,
        wall_ms: u64,
    ) -> Result<Option<Recorded>, StoreError> {
        let Some(n) = self.number(key) else {
            return Ok(None);
        };
        let found = match table.get(n)? {
            Some(g) => Some((g.value().0.to_owned(), g.value().1, g.value().2.to_vec())),
            None => pending(meta)?
                .into_iter()
                .find(|r| r.n == n)
                .map(|r| (r.key, r.at_ms, r.record)),
        };
        match found {
            Some((k, at_ms, record)) if k == key => {
                if self.past_time(n, at_ms, wall_ms, window) {
                    return Ok(None);
                }
                Recorded::decode(&record)
                    .map(Some)
                    .map_err(|e| corrupt("idempotency", e))
            }
            // Expired meanwhile (the index changes after the commit).
            _ => Ok(None),
        }
    }

    /// Appends each receipt with its writes' commits (`out`, the transaction's commits in
    /// write order), then removes what the window no longer keeps. Err([`StoreError::KeyInUse`])
    /// when a key is recorded already and within the window's time (a concurrent request
    /// under the same key committed first); a key held past it is removed and recorded anew.
    /// The returned changes go to [`Index::apply`] once the transaction commits.
    ///
    /// Bound: after the commit at most `keep_keys` records are held (table and `meta`), or this
    /// commit's own if they are more (a commit never removes what it records: its clients would not
    /// find them on retry).
    pub(crate) fn record(
        &self,
        table: &mut Records<'_>,
        meta: &mut Table<'_, &'static str, &'static [u8]>,
        receipts: &[Receipt],
        out: &[Committed],
        window: Window,
        wall_ms: u64,
    ) -> Result<Changes, StoreError> {
        let stale = self
            .stale_pending
            .load(std::sync::atomic::Ordering::Relaxed);
        let mut held_rows = Held {
            pending: if stale { Vec::new() } else { pending(meta)? },
            table,
            pending_changed: stale,
        };
        let mut changes = self.record_in(&mut held_rows, receipts, out, window, wall_ms)?;
        held_rows.save(meta)?;
        changes.stale_dropped = stale;
        Ok(changes)
    }

    fn record_in(
        &self,
        table: &mut Held<'_, '_>,
        receipts: &[Receipt],
        out: &[Committed],
        window: Window,
        wall_ms: u64,
    ) -> Result<Changes, StoreError> {
        let mut changes = Changes::default();
        {
            let held_numbers: Vec<Option<u64>> = {
                let by_key = self.by_key.lock().unwrap_or_else(|e| e.into_inner());
                receipts
                    .iter()
                    .map(|r| by_key.get(&r.key).copied())
                    .collect()
            };
            let mut in_this = std::collections::HashSet::with_capacity(receipts.len());
            for (i, (r, held)) in receipts.iter().zip(held_numbers).enumerate() {
                if !in_this.insert(r.key.as_str()) {
                    return Err(StoreError::KeyInUse {
                        receipt: i,
                        key: r.key.clone(),
                    });
                }
                if let Some(n) = held {
                    let past = match table.get(n)? {
                        Some((_, at_ms)) => self.past_time(n, at_ms, wall_ms, window),
                        None => true,
                    };
                    if !past {
                        return Err(StoreError::KeyInUse {
                            receipt: i,
                            key: r.key.clone(),
                        });
                    }
                    table.remove(n)?;
                    changes.removed.push(r.key.clone());
                }
                if r.count as u64 > MAX_RECORD_WRITES {
                    return Err(StoreError::Invalid(format!(
                        "a request of {} writes cannot carry an idempotency key (at most {MAX_RECORD_WRITES})",
                        r.count
                    )));
                }
            }
        }
        // Numbers are taken from memory, not the table's last row: the index changes only
        // after a commit, so a transaction that failed leaves them to the next.
        let first = self.next.load(std::sync::atomic::Ordering::Relaxed);
        for (n, r) in (first..).zip(receipts) {
            let committed = out
                .get(r.first..r.first + r.count)
                .ok_or_else(|| {
                    corrupt(
                        "idempotency",
                        "a receipt names writes the transaction lacks",
                    )
                })?
                .to_vec();
            let record = Recorded {
                body: r.body,
                at_ms: wall_ms,
                committed,
                extra: r.extra.clone(),
            };
            table.push(Row {
                n,
                key: r.key.clone(),
                at_ms: wall_ms,
                record: record.encode(),
            });
            changes.added.push((r.key.clone(), n));
        }
        // Records held after this commit: the earlier ones (less the re-recorded keys' old
        // rows) and this one's.
        let mut held = (self.len() as usize).saturating_sub(changes.removed.len()) as u64
            + changes.added.len() as u64;
        use std::sync::atomic::Ordering::Relaxed;
        // (A next look further off than EXPIRE_EVERY_MS was set before the wall clock stepped
        // back: looked at now, or expiry by time would stall for as long as the step.)
        let next = self.next_expiry_ms.load(Relaxed);
        if held <= window.keep_keys
            && wall_ms < next
            && next <= wall_ms.saturating_add(EXPIRE_EVERY_MS)
        {
            return Ok(changes);
        }
        // The front is looked at: what waits in meta moves to the table first, so that every
        // record is in one place, in order.
        table.flush()?;
        // Over the count: as many earlier records as it takes to come back to the count less
        // 1/32 of it, however many (the table stays bounded even when each commit records more
        // keys than EXPIRE_PER_COMMIT). Past the time: at most EXPIRE_PER_COMMIT per commit,
        // the rest at the next.
        let count_goal = if held > window.keep_keys {
            window.keep_keys - window.keep_keys / 32
        } else {
            window.keep_keys
        };
        let mut expired: Vec<u64> = Vec::new();
        let mut by_time = 0;
        for row in table.table.range(..first)? {
            let (n, v) = row?;
            let (key, at, _) = v.value();
            let past_time = self.past_time(n.value(), at, wall_ms, window);
            if held <= count_goal {
                // Within the count: only what is past the time goes.
                if by_time == EXPIRE_PER_COMMIT || !past_time {
                    break;
                }
                by_time += 1;
            } else if !past_time && window.covers(at, wall_ms) {
                // Inside the window on both clocks (one older on the wall clock is kept a
                // window from the start only to be safe: not counted).
                changes.dropped_early += 1;
            }
            expired.push(n.value());
            changes.removed.push(key.to_owned());
            held = held.saturating_sub(1);
        }
        // Look again at the next commit if this one left expired records.
        let next = if by_time == EXPIRE_PER_COMMIT {
            wall_ms
        } else {
            wall_ms.saturating_add(EXPIRE_EVERY_MS)
        };
        self.next_expiry_ms.store(next, Relaxed);
        for n in expired {
            table.remove(n)?;
        }
        // The monotonic times of records gone from the front are no longer needed.
        let front = table.table.first()?.map(|(n, _)| n.value());
        let mut here = self.recorded_here.lock().unwrap_or_else(|e| e.into_inner());
        while here
            .front()
            .is_some_and(|&(h, _)| front.is_none_or(|f| h < f) && h < first)
        {
            here.pop_front();
        }
        Ok(changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The digests an event carries read back as written, through the event's encoding (an
    /// older reader keeps the field as it keeps any field it does not know); anything else in
    /// the field reads as none.
    #[test]
    fn key_digests_round_trip_through_an_event() {
        let keys = [digest("a"), digest("b")];
        assert_ne!(keys[0], keys[1]);
        let mut event = edgerep_wire::Event {
            format: edgerep_wire::event::FORMAT_VERSION,
            collection: "c".into(),
            key: b"k".to_vec(),
            op: edgerep_wire::Op::Delete,
            value: None,
            hlc: Hlc::new(1, 0),
            origin: edgerep_wire::NodeId::parse("n1").unwrap(),
            seq: 1,
            schema: 0,
            meta: Default::default(),
            context: Default::default(),
            extra: Default::default(),
        };
        assert!(keys_of(&event).is_empty());
        event.extra.insert(
            edgerep_wire::event::FIELD_IDEMPOTENCY_KEYS,
            keys_field(&keys).unwrap(),
        );
        let back = edgerep_wire::Event::decode(
            &event.encode(),
            &edgerep_wire::event::EventLimits::default(),
        )
        .unwrap();
        assert_eq!(keys_of(&back), keys.to_vec());
        event.extra.insert(
            edgerep_wire::event::FIELD_IDEMPOTENCY_KEYS,
            edgerep_wire::Value::from_json_str("\"not bytes\"", &Default::default()).unwrap(),
        );
        assert!(keys_of(&event).is_empty());
        // A peer's field past what the writer puts (more than four digests, or a length that
        // is not whole digests) names no key at all.
        let five: Vec<[u8; 16]> = (0..5).map(|i| digest(&i.to_string())).collect();
        event.extra.insert(
            edgerep_wire::event::FIELD_IDEMPOTENCY_KEYS,
            keys_field(&five).unwrap(),
        );
        assert!(keys_of(&event).is_empty());
        let mut cut = Vec::new();
        let _ = Encoder::new(&mut cut).bytes(&[7u8; 17]);
        event.extra.insert(
            edgerep_wire::event::FIELD_IDEMPOTENCY_KEYS,
            edgerep_wire::Value::from_canonical(cut, &Default::default()).unwrap(),
        );
        assert!(keys_of(&event).is_empty());
    }

    /// An older edgerep ran on the store after a newer one left records waiting in `meta`: it
    /// numbered its own records over theirs. They are dropped, at open and at the next keyed
    /// commit, instead of refusing to open or writing over the table's rows.
    #[test]
    fn records_left_waiting_before_an_older_edgerep_ran_are_dropped() {
        use redb::ReadableDatabase;
        let db = redb::Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .unwrap();
        let row = |n: u64, key: &str| Row {
            n,
            key: key.into(),
            at_ms: 5,
            record: Recorded {
                body: [1; 32],
                at_ms: 5,
                committed: vec![],
                extra: vec![],
            }
            .encode(),
        };
        let txn = db.begin_write().unwrap();
        {
            let mut meta = txn.open_table(crate::tables::META).unwrap();
            let mut buf = Vec::new();
            encode_rows(&[row(1, "new-1"), row(2, "new-2")], &mut buf);
            meta.insert(META_PENDING, buf.as_slice()).unwrap();
            let mut table = txn.open_table(IDEMPOTENCY).unwrap();
            for (n, key) in [(1u64, "old-1"), (2, "old-2"), (3, "old-3")] {
                table
                    .insert(n, (key, 5u64, row(n, key).record.as_slice()))
                    .unwrap();
            }
        }
        txn.commit().unwrap();
        // The index as an open reads it.
        let load = || {
            let txn = db.begin_read().unwrap();
            Index::load(
                &txn.open_table(IDEMPOTENCY).unwrap(),
                &txn.open_table(crate::tables::META).unwrap(),
            )
        };
        let index = load().unwrap();
        assert_eq!(index.len(), 3);
        assert!(index.contains("old-1") && !index.contains("new-1"));
        let txn = db.begin_write().unwrap();
        let changes = {
            let mut meta = txn.open_table(crate::tables::META).unwrap();
            let mut table = txn.open_table(IDEMPOTENCY).unwrap();
            let receipt = Receipt {
                key: "next".into(),
                body: [2; 32],
                first: 0,
                count: 0,
                extra: vec![],
            };
            let changes = index
                .record(&mut table, &mut meta, &[receipt], &[], Window::default(), 6)
                .unwrap();
            // (The first keyed commit after an open looks at the front: what waits moves.)
            assert!(pending(&meta).unwrap().is_empty());
            let keys: Vec<(u64, String)> = table
                .iter()
                .unwrap()
                .map(|r| {
                    let (n, v) = r.unwrap();
                    (n.value(), v.value().0.to_owned())
                })
                .collect();
            assert_eq!(
                keys,
                [(1, "old-1"), (2, "old-2"), (3, "old-3"), (4, "next")]
                    .map(|(n, k)| (n, k.to_owned()))
            );
            changes
        };
        txn.commit().unwrap();
        index.apply(changes);
        assert!(index.contains("next") && index.contains("old-3"));
        // Damaged bytes waiting in meta: a clear error naming the table, at open.
        let txn = db.begin_write().unwrap();
        txn.open_table(crate::tables::META)
            .unwrap()
            .insert(META_PENDING, &[0x84, 0x01, 0x61][..])
            .unwrap();
        txn.commit().unwrap();
        let damaged = load();
        assert!(
            matches!(damaged, Err(StoreError::Corrupt { table: "meta", .. })),
            "{damaged:?}"
        );
    }

    #[test]
    fn records_round_trip() {
        let r = Recorded {
            body: [7; 32],
            at_ms: 12,
            committed: vec![Committed {
                seq: 3,
                hlc: Hlc::new(99, 2),
                position: 40,
            }],
            extra: vec![1, 2],
        };
        assert_eq!(Recorded::decode(&r.encode()).unwrap(), r);
        assert!(Recorded::decode(&r.encode()[..10]).is_err());
    }

    fn batch(n: u64, at: impl Fn(u64) -> Hlc) -> Recorded {
        Recorded {
            body: [1; 32],
            at_ms: 5,
            committed: (0..n)
                .map(|i| Committed {
                    seq: 10 + i,
                    hlc: at(i),
                    position: 700 + i,
                })
                .collect(),
            extra: vec![],
        }
    }

    #[test]
    fn a_batch_committed_in_a_row_is_one_run_and_round_trips() {
        let r = batch(100, |i| Hlc::new(1_790_000_000_000, i as u32));
        let bytes = r.encode();
        assert!(
            bytes.len() < 80,
            "a run of 100 commits took {} bytes",
            bytes.len()
        );
        assert_eq!(Recorded::decode(&bytes).unwrap(), r);
        // The clock's millisecond turning mid-batch starts a second run.
        let r = batch(100, |i| {
            if i < 60 {
                Hlc::new(1_790_000_000_000, 7 + i as u32)
            } else {
                Hlc::new(1_790_000_000_001, (i - 60) as u32)
            }
        });
        assert_eq!(runs(&r.committed).len(), 2);
        assert_eq!(Recorded::decode(&r.encode()).unwrap(), r);
        // Commits not one after another stay apart.
        let mut r = batch(3, |i| Hlc::new(9, i as u32));
        r.committed[1].position += 5;
        assert_eq!(runs(&r.committed).len(), 3);
        assert_eq!(Recorded::decode(&r.encode()).unwrap(), r);
    }

    #[test]
    fn records_of_single_commits_still_decode_and_bad_runs_are_refused() {
        // The earlier form: each commit alone, 4 fields.
        let mut buf = Vec::new();
        let mut e = Encoder::new(&mut buf);
        e.array(4)
            .unwrap()
            .bytes(&[2; 32])
            .unwrap()
            .u64(8)
            .unwrap()
            .array(2)
            .unwrap();
        for (seq, position) in [(3u64, 40u64), (9, 41)] {
            e.array(4)
                .unwrap()
                .u64(seq)
                .unwrap()
                .u64(99)
                .unwrap()
                .u32(0)
                .unwrap()
                .u64(position)
                .unwrap();
        }
        e.bytes(&[]).unwrap();
        let r = Recorded::decode(&buf).unwrap();
        assert_eq!(
            r.committed
                .iter()
                .map(|c| (c.seq, c.position))
                .collect::<Vec<_>>(),
            vec![(3, 40), (9, 41)]
        );
        // A run that would overflow, an empty run, and a damaged one claiming more commits than
        // a record may hold (refused before anything is allocated).
        for (seq, count) in [
            (u64::MAX, 2u64),
            (1, 0),
            (1, MAX_RECORD_WRITES + 1),
            (1, u64::MAX),
        ] {
            let mut buf = Vec::new();
            let mut e = Encoder::new(&mut buf);
            e.array(4)
                .unwrap()
                .bytes(&[2; 32])
                .unwrap()
                .u64(8)
                .unwrap()
                .array(1)
                .unwrap();
            e.array(5)
                .unwrap()
                .u64(seq)
                .unwrap()
                .u64(1)
                .unwrap()
                .u32(0)
                .unwrap()
                .u64(1)
                .unwrap()
                .u64(count)
                .unwrap();
            e.bytes(&[]).unwrap();
            assert!(Recorded::decode(&buf).is_err(), "seq {seq} count {count}");
        }
    }
}
