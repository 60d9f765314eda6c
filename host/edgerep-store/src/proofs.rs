//! Proofs of single versions (see `edgerep_wire::seal`): what lets a snapshot page carry a
//! version whose neighbours in its origin's chain are long gone, and its receiver check that the
//! version is the origin's, unchanged.
//!
//! Invariants:
//! - Every version in the state whose event is no longer in the changelog (its origin's
//!   compacted floor is at or above it) is proven by a row in `blocks` or in `proofs`.
//!   Compaction (which removes whole blocks only) keeps each removed block that holds a live
//!   version in `blocks`: its seal, all its leaves (32 bytes per event), and which events were
//!   live, with the origin's event where the version held here differs (a transform on apply).
//!   A snapshot page or a repair brings single versions with their paths: each merged version
//!   gets a row in `proofs` (its block's seal, its path).
//! - Rows whose versions were all superseded since are garbage, swept a few at a time by
//!   compaction.

use std::time::{Duration, Instant};

use edgerep_wire::event::EventLimits;
use edgerep_wire::seal::{ChainHash, MAX_PATH_HASHES, MerkleTree, Proof, event_leaf};
use edgerep_wire::{EncodedEvent, Event, NodeId, Seal};
use redb::{ReadableTable, ReadableTableMetadata, TableDefinition};

use crate::keys::{log_key, log_seq, state_key};
use crate::seals;
use crate::{META, STATE, StoreError, Versions, corrupt};

/// `origin 0x00 sequence` → a [`Kept`] proof of a live version merged from a snapshot page or a
/// repair (its block's other leaves are not known here).
pub(crate) const PROOFS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("proofs");
/// `origin 0x00 seal sequence` → a [`KeptBlock`]: a compacted block with live versions.
pub(crate) const BLOCKS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("blocks");
/// The `proofs` key the last sweep ended at.
const META_PROOF_SWEEP: &str = "proof_sweep";
/// The `blocks` key the last sweep ended at.
const META_BLOCK_SWEEP: &str = "block_sweep";

/// A kept proof: which key the version belongs to, its block's seal, its path, and the origin's
/// event when the version in the state differs from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Kept {
    pub(crate) state_key: Vec<u8>,
    pub(crate) seal: Seal,
    pub(crate) path: Vec<ChainHash>,
    pub(crate) original: Option<Vec<u8>>,
}

impl Kept {
    /// `u32 len, state key, u64 seal seq, u32 len, seal, u8 count, path, original event…`.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let seal = seals::encode(&self.seal);
        let mut out = Vec::with_capacity(
            17 + self.state_key.len()
                + seal.len()
                + 32 * self.path.len()
                + self.original.as_ref().map_or(0, Vec::len),
        );
        out.extend_from_slice(&(self.state_key.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.state_key);
        out.extend_from_slice(&self.seal.seq.to_be_bytes());
        out.extend_from_slice(&(seal.len() as u32).to_be_bytes());
        out.extend_from_slice(&seal);
        out.push(self.path.len() as u8);
        for h in &self.path {
            out.extend_from_slice(h);
        }
        if let Some(original) = &self.original {
            out.extend_from_slice(original);
        }
        out
    }

    pub(crate) fn decode(origin: &NodeId, bytes: &[u8]) -> Result<Kept, StoreError> {
        let bad = || corrupt("proofs", "a row shorter than its fields");
        let mut at = 0usize;
        let mut take = |n: usize| -> Result<&[u8], StoreError> {
            let out = bytes
                .get(at..at.checked_add(n).ok_or_else(bad)?)
                .ok_or_else(bad)?;
            at += n;
            Ok(out)
        };
        let len = |b: &[u8]| u32::from_be_bytes(b.try_into().unwrap_or_default()) as usize;
        let n = len(take(4)?);
        let state_key = take(n)?.to_vec();
        let seq = u64::from_be_bytes(take(8)?.try_into().unwrap_or_default());
        let n = len(take(4)?);
        let seal = seals::decode(origin, seq, take(n)?)?;
        let count = take(1)?[0] as usize;
        let mut path = Vec::with_capacity(count);
        for _ in 0..count {
            let mut h = [0u8; 32];
            h.copy_from_slice(take(32)?);
            path.push(h);
        }
        let rest = &bytes[at..];
        Ok(Kept {
            state_key,
            seal,
            path,
            original: (!rest.is_empty()).then(|| rest.to_vec()),
        })
    }

    /// The proof as a page carries it.
    pub(crate) fn proof(&self) -> Proof {
        Proof {
            seal: self.seal.seq,
            path: self.path.clone(),
        }
    }
}

/// Whether `versions` hold the event (`origin`, `seq`).
fn holds(versions: &Versions, origin: &str, seq: u64) -> bool {
    versions
        .events()
        .iter()
        .any(|v| v.seq == seq && v.origin.as_str() == origin)
}

/// A compacted block that still holds live versions: its seal and every leaf (so any of its
/// events can be proven), and which of its events were live versions when it was compacted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeptBlock {
    pub(crate) seal: Seal,
    pub(crate) leaves: Vec<ChainHash>,
    pub(crate) live: Vec<LiveEvent>,
}

/// An event of a kept block that was a live version: its index in the block, its state key,
/// and the origin's event when the version held here differs from it (a transform on apply).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LiveEvent {
    pub(crate) index: u32,
    pub(crate) state_key: Vec<u8>,
    pub(crate) original: Option<Vec<u8>>,
}

/// Reads a row's fields in order.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| corrupt("blocks", "a row shorter than its fields"))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u32(&mut self) -> Result<usize, StoreError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }
}

fn put_u32(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&(n as u32).to_be_bytes());
}

impl KeptBlock {
    /// The origin's event at `index` when the version held here differs from it.
    fn original(&self, index: u64) -> Option<&Vec<u8>> {
        self.live
            .iter()
            .find(|e| u64::from(e.index) == index)
            .and_then(|e| e.original.as_ref())
    }

    /// `u32 len, seal, u32 n, n leaves, u32 m, m × (u32 index, u32 len, state key, u32 len,
    /// original event or nothing)`.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let seal = seals::encode(&self.seal);
        let mut out = Vec::with_capacity(12 + seal.len() + 32 * self.leaves.len());
        put_u32(&mut out, seal.len());
        out.extend_from_slice(&seal);
        put_u32(&mut out, self.leaves.len());
        for l in &self.leaves {
            out.extend_from_slice(l);
        }
        put_u32(&mut out, self.live.len());
        for e in &self.live {
            out.extend_from_slice(&e.index.to_be_bytes());
            put_u32(&mut out, e.state_key.len());
            out.extend_from_slice(&e.state_key);
            let original = e.original.as_deref().unwrap_or_default();
            put_u32(&mut out, original.len());
            out.extend_from_slice(original);
        }
        out
    }

    pub(crate) fn decode(origin: &NodeId, seq: u64, bytes: &[u8]) -> Result<KeptBlock, StoreError> {
        let mut c = Cursor { bytes, at: 0 };
        let n = c.u32()?;
        let seal = seals::decode(origin, seq, c.take(n)?)?;
        let n = c.u32()?;
        let mut leaves = Vec::with_capacity(n.min(1 << 16));
        for _ in 0..n {
            let mut h = [0u8; 32];
            h.copy_from_slice(c.take(32)?);
            leaves.push(h);
        }
        let m = c.u32()?;
        let mut live = Vec::with_capacity(m.min(1 << 16));
        for _ in 0..m {
            let index = c.u32()? as u32;
            let k = c.u32()?;
            let state_key = c.take(k)?.to_vec();
            let o = c.u32()?;
            let original = c.take(o)?.to_vec();
            live.push(LiveEvent {
                index,
                state_key,
                original: (!original.is_empty()).then_some(original),
            });
        }
        Ok(KeptBlock { seal, leaves, live })
    }
}

/// The tables that keeping proofs reads and writes, open in one write transaction.
pub(crate) struct Tables<'a, 't> {
    pub(crate) state: &'a redb::Table<'t, &'static [u8], &'static [u8]>,
    pub(crate) changelog: &'a redb::Table<'t, &'static [u8], &'static [u8]>,
    pub(crate) seals: &'a redb::Table<'t, &'static [u8], &'static [u8]>,
    pub(crate) blocks: &'a mut redb::Table<'t, &'static [u8], &'static [u8]>,
}

/// Whether the event `bytes` (`event` decoded) is a live version in `state`, and if so the
/// origin's event when the version differs from it.
fn live_in(
    state: &redb::Table<'_, &'static [u8], &'static [u8]>,
    limits: &EventLimits,
    state_key: &[u8],
    (origin, seq): (&NodeId, u64),
    bytes: &[u8],
) -> Result<Option<Option<Vec<u8>>>, StoreError> {
    let Some(g) = state.get(state_key)? else {
        return Ok(None);
    };
    // The common case without decoding: the key holds exactly this event.
    if g.value() == Versions::encode_single(bytes).as_slice() {
        return Ok(Some(None));
    }
    let Ok(versions) = Versions::decode(g.value(), limits) else {
        return Ok(None);
    };
    Ok(versions
        .events()
        .iter()
        .find(|v| v.seq == seq && v.origin == *origin)
        .map(|v| (v.bytes() != bytes).then(|| bytes.to_vec())))
}

/// Before `origin`'s events `from..=to` leave the changelog: keeps each of their blocks that
/// holds a live version (its seal, its leaves, its live events). `from..=to` must be whole
/// blocks (`from` a block's first event, `to` a seal).
pub(crate) fn keep(
    t: &mut Tables<'_, '_>,
    limits: &EventLimits,
    origin: &NodeId,
    from: u64,
    to: u64,
) -> Result<(), StoreError> {
    if from > to {
        return Ok(());
    }
    let (lo, hi) = (log_key(origin.as_str(), from), log_key(origin.as_str(), to));
    let mut blocks = Vec::new();
    for row in t.seals.range(lo.as_slice()..=hi.as_slice())? {
        let (k, v) = row?;
        let seq = log_seq(origin.as_str(), k.value())
            .ok_or_else(|| corrupt("seals", "a key of another origin in range"))?;
        blocks.push(seals::decode(origin, seq, v.value())?);
    }
    let mut next = from;
    for seal in blocks {
        if seal.first != next {
            return Err(corrupt(
                "seals",
                format!(
                    "{origin}'s block ending at {} starts at {}, expected {next}",
                    seal.seq, seal.first
                ),
            ));
        }
        next = seal.seq + 1;
        let (lo, hi) = (
            log_key(origin.as_str(), seal.first),
            log_key(origin.as_str(), seal.seq),
        );
        let mut leaves = Vec::new();
        let mut live = Vec::new();
        for (i, row) in t
            .changelog
            .range(lo.as_slice()..=hi.as_slice())?
            .enumerate()
        {
            let (k, v) = row?;
            let seq = log_seq(origin.as_str(), k.value())
                .ok_or_else(|| corrupt("changelog", "a key of another origin in range"))?;
            let bytes = v.value();
            leaves.push(event_leaf(bytes));
            // The store's own rows, checked when written: only their key is read here.
            let (collection, key) =
                Event::collection_and_key(bytes).map_err(|e| corrupt("changelog", e))?;
            let skey = state_key(collection, key);
            if let Some(original) = live_in(t.state, limits, &skey, (origin, seq), bytes)? {
                live.push(LiveEvent {
                    index: i as u32,
                    state_key: skey,
                    original,
                });
            }
        }
        if leaves.len() as u64 != seal.seq - seal.first + 1 {
            return Err(corrupt(
                "changelog",
                format!(
                    "{origin}'s block {}..={} is not whole",
                    seal.first, seal.seq
                ),
            ));
        }
        if !live.is_empty() {
            let key = log_key(origin.as_str(), seal.seq);
            let block = KeptBlock { seal, leaves, live };
            t.blocks.insert(key.as_slice(), block.encode().as_slice())?;
        }
    }
    if next != to + 1 {
        return Err(corrupt(
            "seals",
            format!("{origin}'s events {next}..={to} are past its last seal"),
        ));
    }
    Ok(())
}

/// The origin and sequence number of a `proofs` or `blocks` key.
fn split_key(key: &[u8], table: &'static str) -> Result<(NodeId, u64), StoreError> {
    let split = key
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| corrupt(table, "a key without separator"))?;
    let origin = std::str::from_utf8(&key[..split])
        .map_err(|_| corrupt(table, "an origin that is not UTF-8"))?;
    let seq = log_seq(origin, key).ok_or_else(|| corrupt(table, "a malformed key"))?;
    Ok((NodeId::parse(origin).map_err(|e| corrupt(table, e))?, seq))
}

/// Whether `state` holds the event (`origin`, `seq`) as a version of `state_key`.
fn is_live(
    state: &redb::Table<'_, &'static [u8], &'static [u8]>,
    limits: &EventLimits,
    state_key: &[u8],
    origin: &NodeId,
    seq: u64,
) -> Result<bool, StoreError> {
    Ok(match state.get(state_key)? {
        Some(g) => {
            Versions::decode(g.value(), limits).is_ok_and(|v| holds(&v, origin.as_str(), seq))
        }
        None => false,
    })
}

/// What sweeping one row decided.
enum Swept {
    Keep,
    Remove,
}

/// Visits up to `limit` rows of `table` after the key saved under `cursor` (wrapping to the
/// start), applying `decide`, and stops early once past `floor` rows and `until`; saves where it
/// stopped. Returns the rows removed.
fn sweep_table(
    table: &mut redb::Table<'_, &'static [u8], &'static [u8]>,
    meta: &mut redb::Table<'_, &'static str, &'static [u8]>,
    cursor: &str,
    (floor, limit): (u64, u64),
    until: Instant,
    mut decide: impl FnMut(&[u8], &[u8]) -> Result<Swept, StoreError>,
) -> Result<u64, StoreError> {
    let start = meta.get(cursor)?.map(|g| g.value().to_vec());
    let mut changes = Vec::new();
    let (mut last, mut seen, mut stopped) = (None, 0, false);
    {
        let rows = match &start {
            Some(s) => table.range::<&[u8]>((
                std::ops::Bound::Excluded(s.as_slice()),
                std::ops::Bound::Unbounded,
            ))?,
            None => table.range::<&[u8]>(..)?,
        };
        for row in rows {
            let (k, v) = row?;
            seen += 1;
            match decide(k.value(), v.value())? {
                Swept::Keep => {}
                other => changes.push((k.value().to_vec(), other)),
            }
            last = Some(k.value().to_vec());
            if seen >= limit || (seen >= floor && Instant::now() >= until) {
                stopped = true;
                break;
            }
        }
    }
    let mut removed = 0;
    for (k, change) in changes {
        if let Swept::Remove = change {
            table.remove(k.as_slice())?;
            removed += 1;
        }
    }
    match last {
        Some(k) if stopped => {
            meta.insert(cursor, k.as_slice())?;
        }
        _ => {
            meta.remove(cursor)?;
        }
    }
    Ok(removed)
}

/// Sweeps it takes at most to visit every row of a table once, while they fit [`SWEEP_TIME`].
const SWEEP_PASSES: u64 = 64;

/// How long one sweep may go on past its `floor` rows per table: it runs in a compaction's
/// transaction, which every write waits behind.
const SWEEP_TIME: Duration = Duration::from_millis(20);

/// Rows of a table of `rows` one sweep checks: at least `floor`, and enough that every row is
/// checked once in [`SWEEP_PASSES`] sweeps (as far as [`SWEEP_TIME`] allows). A fixed number per
/// sweep fell behind a node whose writes supersede kept rows faster than it checks them, and
/// the tables grew for good.
fn sweep_limit(rows: u64, floor: u64) -> u64 {
    floor.max(rows.div_ceil(SWEEP_PASSES))
}

/// Removes rows of `proofs` and of `blocks` whose versions were all superseded, going on from
/// where the last sweep ended: at least `floor` rows of each are checked, and up to
/// [`sweep_limit`] while under [`SWEEP_TIME`]. Returns the rows removed.
pub(crate) fn sweep(
    txn: &redb::WriteTransaction,
    limits: &EventLimits,
    floor: u64,
) -> Result<u64, StoreError> {
    let until = Instant::now() + SWEEP_TIME;
    let mut proofs = txn.open_table(PROOFS)?;
    let mut blocks = txn.open_table(BLOCKS)?;
    let mut meta = txn.open_table(META)?;
    let state = txn.open_table(STATE)?;
    let proofs_limit = (floor, sweep_limit(proofs.len()?, floor));
    let blocks_limit = (floor, sweep_limit(blocks.len()?, floor));
    let mut removed = sweep_table(
        &mut proofs,
        &mut meta,
        META_PROOF_SWEEP,
        proofs_limit,
        until,
        |k, v| {
            let (origin, seq) = split_key(k, "proofs")?;
            let kept = Kept::decode(&origin, v)?;
            Ok(if is_live(&state, limits, &kept.state_key, &origin, seq)? {
                Swept::Keep
            } else {
                Swept::Remove
            })
        },
    )?;
    // A block stays while one of its events is live: the check stops at the first live one
    // (the list is not rewritten; an entry gone stale only names a key to look at).
    removed += sweep_table(
        &mut blocks,
        &mut meta,
        META_BLOCK_SWEEP,
        blocks_limit,
        until,
        |k, v| {
            let (origin, seq) = split_key(k, "blocks")?;
            let block = KeptBlock::decode(&origin, seq, v)?;
            let first = block.seal.first;
            for e in &block.live {
                if is_live(
                    &state,
                    limits,
                    &e.state_key,
                    &origin,
                    first + u64::from(e.index),
                )? {
                    return Ok(Swept::Keep);
                }
            }
            Ok(Swept::Remove)
        },
    )?;
    Ok(removed)
}

/// Per origin, the highest of its events that the causal contexts of `versions` name.
pub(crate) fn named_in_contexts<'a>(
    versions: impl Iterator<Item = &'a EncodedEvent>,
) -> std::collections::BTreeMap<&'a NodeId, u64> {
    let mut named = std::collections::BTreeMap::new();
    for v in versions {
        for (o, seq) in v.context.iter() {
            let n = named.entry(o).or_default();
            *n = seq.max(*n);
        }
    }
    named
}

/// Seals a page carries at most once context seals are added (see
/// [`PageProofs::add_context_seals`]): the fewest any receiver takes in one message.
const CONTEXT_SEALS_UP_TO: usize = 1024;

/// Proofs for the versions of one snapshot page, and the seals they name (once each).
#[derive(Default)]
pub(crate) struct PageProofs {
    /// Per version: the event as its origin sent it, and its proof.
    pub(crate) versions: Vec<(EncodedEvent, Proof)>,
    pub(crate) seals: Vec<Seal>,
    /// Blocks read from the changelog for this page: (origin, seal seq) → their Merkle tree.
    blocks: std::collections::BTreeMap<(String, u64), MerkleTree>,
    /// Kept blocks read for this page: (origin, seal seq) → the block, its Merkle tree, and
    /// whether its leaves give its seal's root (checked once).
    kept: std::collections::BTreeMap<(String, u64), (KeptBlock, MerkleTree, bool)>,
    /// Seals already in `seals`.
    named: std::collections::BTreeSet<(String, u64)>,
    /// Versions left out: nothing here proves them (a damaged store).
    pub(crate) unproven: u64,
}

impl PageProofs {
    /// Adds `version` with its proof: a kept row when its event left the changelog, else its
    /// block read from the changelog. A version nothing here proves (a damaged store) is left
    /// out and counted: sent on, it would get this node cut off as a forger.
    pub(crate) fn add(
        &mut self,
        changelog: &impl ReadableTable<&'static [u8], &'static [u8]>,
        seals_t: &impl ReadableTable<&'static [u8], &'static [u8]>,
        proofs: &impl ReadableTable<&'static [u8], &'static [u8]>,
        blocks: &impl ReadableTable<&'static [u8], &'static [u8]>,
        limits: &EventLimits,
        version: EncodedEvent,
    ) -> Result<(), StoreError> {
        match self.prove(changelog, seals_t, proofs, blocks, limits, version)? {
            Some((original, seal, proof))
                if seal.proves(original.seq, original.bytes(), &proof.path) =>
            {
                if self.named.insert((seal.origin.to_string(), seal.seq)) {
                    self.seals.push(seal);
                }
                self.versions.push((original, proof));
            }
            _ => self.unproven += 1,
        }
        Ok(())
    }

    /// Adds, for each origin that the causal contexts of the page's versions name past every
    /// seal of it the page carries, this store's first signed seal of that origin at or past
    /// the highest number named. A receiver bounds the contexts of a snapshot page before
    /// its last one by the seals it can verify (`install_in`); this store holds such a seal
    /// for every event a version it holds names (causal delivery).
    pub(crate) fn add_context_seals(
        &mut self,
        seals_t: &impl ReadableTable<&'static [u8], &'static [u8]>,
    ) -> Result<(), StoreError> {
        let named = named_in_contexts(self.versions.iter().map(|(v, _)| v));
        // Per origin, the highest seal the page carries already.
        let mut carried: std::collections::BTreeMap<NodeId, u64> = Default::default();
        for s in &self.seals {
            let c = carried.entry(s.origin.clone()).or_default();
            *c = (*c).max(s.seq);
        }
        for (origin, upto) in named {
            // A message carries at most max(events per batch, 1,024 origins) seals: past 1,024
            // the versions' own seals take the room (their contexts' origins are then bounded
            // by the receiver's have only).
            if self.seals.len() >= CONTEXT_SEALS_UP_TO {
                break;
            }
            if carried.get(origin).is_some_and(|&c| c >= upto) {
                continue;
            }
            let (lo, hi) = (
                log_key(origin.as_str(), upto),
                log_key(origin.as_str(), u64::MAX),
            );
            for row in seals_t.range(lo.as_slice()..=hi.as_slice())? {
                let (k, v) = row?;
                let seq = log_seq(origin.as_str(), k.value())
                    .ok_or_else(|| corrupt("seals", "a key of another origin"))?;
                let seal = seals::decode(origin, seq, v.value())?;
                if !seal.signature.is_empty() {
                    if self.named.insert((origin.to_string(), seq)) {
                        self.seals.push(seal);
                    }
                    break;
                }
            }
        }
        Ok(())
    }

    /// Whether this store's own history proves that it holds another event than `received` at
    /// its origin and sequence number: `Some(held)` then, with the event held when this store
    /// keeps it whole (`None` for a compacted one kept only as its leaf or path). Where the
    /// event is kept whole (the changelog, or the original beside a kept proof), its own seal
    /// and path must prove it and not `received`: a damaged changelog row proves neither, and
    /// is no fork. Where only a path or leaves are kept, they must not prove `received`.
    pub(crate) fn holds_other(
        &mut self,
        changelog: &impl ReadableTable<&'static [u8], &'static [u8]>,
        seals_t: &impl ReadableTable<&'static [u8], &'static [u8]>,
        proofs: &impl ReadableTable<&'static [u8], &'static [u8]>,
        blocks: &impl ReadableTable<&'static [u8], &'static [u8]>,
        limits: &EventLimits,
        received: &EncodedEvent,
    ) -> Result<Option<Option<EncodedEvent>>, StoreError> {
        let Some((held, seal, proof)) =
            self.prove(changelog, seals_t, proofs, blocks, limits, received.clone())?
        else {
            return Ok(None);
        };
        let proves_received = seal.proves(received.seq, received.bytes(), &proof.path);
        // `prove` hands back the version it was given where it keeps no copy of the event.
        Ok(if held.bytes() == received.bytes() {
            (!proves_received).then_some(None)
        } else {
            (seal.proves(held.seq, held.bytes(), &proof.path) && !proves_received)
                .then_some(Some(held))
        })
    }

    /// The origin's event behind `version`, the seal of its block and its path, if this store
    /// holds them.
    fn prove(
        &mut self,
        changelog: &impl ReadableTable<&'static [u8], &'static [u8]>,
        seals_t: &impl ReadableTable<&'static [u8], &'static [u8]>,
        proofs: &impl ReadableTable<&'static [u8], &'static [u8]>,
        blocks: &impl ReadableTable<&'static [u8], &'static [u8]>,
        limits: &EventLimits,
        version: EncodedEvent,
    ) -> Result<Option<(EncodedEvent, Seal, Proof)>, StoreError> {
        let origin = version.origin.clone();
        let lkey = log_key(origin.as_str(), version.seq);
        if let Some(g) = proofs.get(lkey.as_slice())? {
            let kept = Kept::decode(&origin, g.value())?;
            let original = match &kept.original {
                Some(bytes) => match EncodedEvent::decode_slice(bytes, limits) {
                    Ok(e) => e,
                    Err(_) => return Ok(None),
                },
                None => version,
            };
            let proof = kept.proof();
            return Ok(Some((original, kept.seal, proof)));
        }
        let Some(bytes) = changelog.get(lkey.as_slice())? else {
            return self.prove_from_block(blocks, limits, version);
        };
        let Ok(original) = EncodedEvent::decode_slice(bytes.value(), limits) else {
            return Ok(None);
        };
        drop(bytes);
        let hi = log_key(origin.as_str(), u64::MAX);
        let seal = match seals_t.range(lkey.as_slice()..=hi.as_slice())?.next() {
            Some(row) => {
                let (k, v) = row?;
                let seq = log_seq(origin.as_str(), k.value())
                    .ok_or_else(|| corrupt("seals", "a key of another origin"))?;
                seals::decode(&origin, seq, v.value())?
            }
            None => return Ok(None),
        };
        if !seal.covers(version.seq) {
            return Ok(None);
        }
        let block = (origin.to_string(), seal.seq);
        if !self.blocks.contains_key(&block) {
            // A page's versions come from few blocks, or from many once each: keep a few.
            if self.blocks.len() >= 64 {
                self.blocks.clear();
            }
            let (lo, hi) = (
                log_key(origin.as_str(), seal.first),
                log_key(origin.as_str(), seal.seq),
            );
            let mut leaves = Vec::new();
            for row in changelog.range(lo.as_slice()..=hi.as_slice())? {
                leaves.push(event_leaf(row?.1.value()));
            }
            self.blocks.insert(block.clone(), MerkleTree::new(&leaves));
        }
        let index = (version.seq - seal.first) as usize;
        let proof = Proof {
            seal: seal.seq,
            path: self.blocks[&block].path(index),
        };
        Ok(Some((original, seal, proof)))
    }

    /// The kept block holding `version`'s event (cached for the page), whether its leaves give
    /// its seal's root, and the event's index in it; `None` when no kept block holds it.
    fn kept_block(
        &mut self,
        blocks: &impl ReadableTable<&'static [u8], &'static [u8]>,
        version: &EncodedEvent,
    ) -> Result<Option<(&KeptBlock, &MerkleTree, bool, u64)>, StoreError> {
        let origin = &version.origin;
        let (lo, hi) = (
            log_key(origin.as_str(), version.seq),
            log_key(origin.as_str(), u64::MAX),
        );
        let Some(row) = blocks.range(lo.as_slice()..=hi.as_slice())?.next() else {
            return Ok(None);
        };
        let (k, v) = row?;
        let (_, seq) = split_key(k.value(), "blocks")?;
        let key = (origin.to_string(), seq);
        if !self.kept.contains_key(&key) {
            if self.kept.len() >= 64 {
                self.kept.clear();
            }
            let block = KeptBlock::decode(origin, seq, v.value())?;
            let tree = MerkleTree::new(&block.leaves);
            let root_ok = tree.root() == block.seal.root;
            self.kept.insert(key.clone(), (block, tree, root_ok));
        }
        let (block, tree, root_ok) = &self.kept[&key];
        if !block.seal.covers(version.seq) {
            return Ok(None);
        }
        Ok(Some((
            block,
            tree,
            *root_ok,
            version.seq - block.seal.first,
        )))
    }

    /// `version` proven from the compacted block that holds its event, if one was kept.
    fn prove_from_block(
        &mut self,
        blocks: &impl ReadableTable<&'static [u8], &'static [u8]>,
        limits: &EventLimits,
        version: EncodedEvent,
    ) -> Result<Option<(EncodedEvent, Seal, Proof)>, StoreError> {
        let Some((block, tree, _, index)) = self.kept_block(blocks, &version)? else {
            return Ok(None);
        };
        let original = match block.original(index) {
            Some(bytes) => match EncodedEvent::decode_slice(bytes, limits) {
                Ok(e) => e,
                Err(_) => return Ok(None),
            },
            None => version,
        };
        let proof = Proof {
            seal: block.seal.seq,
            path: tree.path(index as usize),
        };
        Ok(Some((original, block.seal.clone(), proof)))
    }

    /// Whether this store proves the compacted `version` (`Store::verify`): like
    /// [`PageProofs::add`], without computing paths for kept blocks (the leaf is compared, and
    /// the block's root checked once) and without keeping anything.
    pub(crate) fn proves(
        &mut self,
        proofs: &impl ReadableTable<&'static [u8], &'static [u8]>,
        blocks: &impl ReadableTable<&'static [u8], &'static [u8]>,
        limits: &EventLimits,
        version: &EncodedEvent,
    ) -> Result<bool, StoreError> {
        let lkey = log_key(version.origin.as_str(), version.seq);
        if let Some(g) = proofs.get(lkey.as_slice())? {
            let kept = Kept::decode(&version.origin, g.value())?;
            let bytes = kept
                .original
                .clone()
                .unwrap_or_else(|| version.bytes().to_vec());
            return Ok(kept.seal.proves(version.seq, &bytes, &kept.path));
        }
        let Some((block, _, root_ok, index)) = self.kept_block(blocks, version)? else {
            return Ok(false);
        };
        let bytes = match block.original(index) {
            Some(original) if EncodedEvent::decode_slice(original, limits).is_err() => {
                return Ok(false);
            }
            Some(original) => original.clone(),
            None => version.bytes().to_vec(),
        };
        Ok(root_ok && block.leaves.get(index as usize) == Some(&event_leaf(&bytes)))
    }
}

/// The most bytes a version's proof adds to a page (its path, and its seal when it is the first
/// of its block there).
pub(crate) const PROOF_BYTES: usize = 32 * MAX_PATH_HASHES / 2 + 8 + 8 + 64 + 128 + 64;

/// Whether `seals` (by origin and sequence number) prove each of `versions` by `proofs`; the
/// first that is not, with why.
pub(crate) fn check_page<'s>(
    versions: &[EncodedEvent],
    proofs: &[Proof],
    seals: &'s [Seal],
) -> Result<Vec<&'s Seal>, String> {
    if proofs.len() != versions.len() {
        return Err(format!(
            "{} versions with {} proofs",
            versions.len(),
            proofs.len()
        ));
    }
    let by_key: std::collections::BTreeMap<(&str, u64), &Seal> = seals
        .iter()
        .map(|s| ((s.origin.as_str(), s.seq), s))
        .collect();
    let mut out = Vec::with_capacity(versions.len());
    for (v, p) in versions.iter().zip(proofs) {
        let Some(&seal) = by_key.get(&(v.origin.as_str(), p.seal)) else {
            return Err(format!(
                "version {}:{} names {}'s seal at {}, which the page lacks",
                v.origin, v.seq, v.origin, p.seal
            ));
        };
        if !seal.proves(v.seq, v.bytes(), &p.path) {
            return Err(format!(
                "version {}:{} of key {:?} in collection {:?} is not what {} sealed at {}",
                v.origin,
                v.seq,
                String::from_utf8_lossy(&v.key),
                v.collection,
                v.origin,
                p.seal
            ));
        }
        out.push(seal);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use edgerep_wire::{HlcClock, NodeId, Value};
    use redb::ReadableTable as _;
    use redb::backends::InMemoryBackend;

    use super::BLOCKS;
    use crate::{LocalWrite, StoreWriter, Sync};

    /// A sweep checks at least its floor of rows, and enough of a large table that every row
    /// is checked within `SWEEP_PASSES` sweeps.
    #[test]
    fn a_sweep_keeps_up_with_a_table_of_any_size() {
        assert_eq!(super::sweep_limit(0, 256), 256);
        assert_eq!(super::sweep_limit(16_384, 256), 256);
        assert_eq!(super::sweep_limit(16_385, 256), 257);
        let rows = 10_000_000;
        assert!(super::sweep_limit(rows, 256) * super::SWEEP_PASSES >= rows);
    }

    /// `verify` proves every compacted version; a kept block gone (or changed) is found.
    #[test]
    fn verify_finds_a_compacted_version_nothing_proves() {
        let (store, _) = StoreWriter::open_with_backend(
            InMemoryBackend::new(),
            "memory",
            &NodeId::parse("a").unwrap(),
            Default::default(),
        )
        .unwrap();
        let mut clock = HlcClock::new(Default::default(), 60_000);
        let writes = (0..10)
            .map(|i| LocalWrite {
                collection: "c".into(),
                key: format!("k{i}").into_bytes(),
                value: Some(Value::from_json(&serde_json::json!(i), &Default::default()).unwrap()),
                schema: 0,
                meta: BTreeMap::new(),
                context: None,
            })
            .collect();
        store.commit_local(writes, &mut clock, 1).unwrap();
        store
            .compact(
                &[(NodeId::parse("a").unwrap(), 10)].into(),
                100,
                Sync::Immediate,
            )
            .unwrap();
        assert_eq!(store.verify().unwrap(), Ok(()));
        // One leaf of the kept block changed: the version at that index is no longer proven.
        let txn = store.db.begin_write().unwrap();
        {
            let mut blocks = txn.open_table(BLOCKS).unwrap();
            let (k, v) = {
                let (k, v) = blocks.first().unwrap().unwrap();
                (k.value().to_vec(), v.value().to_vec())
            };
            let mut block = super::KeptBlock::decode(&NodeId::parse("a").unwrap(), 10, &v).unwrap();
            block.leaves[3] = [7; 32];
            blocks
                .insert(k.as_slice(), block.encode().as_slice())
                .unwrap();
        }
        txn.commit().unwrap();
        let problem = store.verify().unwrap().unwrap_err();
        assert!(problem.contains("nothing here proves it"), "{problem}");
        // The block gone altogether: the same.
        let txn = store.db.begin_write().unwrap();
        txn.open_table(BLOCKS)
            .unwrap()
            .retain(|_, _| false)
            .unwrap();
        txn.commit().unwrap();
        assert!(store.verify().unwrap().is_err());
    }
}
