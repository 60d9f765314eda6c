//! The anti-entropy index: what lets two nodes compare their states in time and bytes that grow
//! with the number of differences, not with the size of the state (see `docs/design.md`,
//! "Anti-entropy").
//!
//! Each state entry hashes to its [`Digest::of_entry`] (the key, every version it holds with its
//! causal context, in their encodings). Entries fall into 65,536 buckets by a hash of their
//! state key, and the buckets form a 16-ary tree: a node at level `l` (0..=4) covers the buckets
//! whose id starts with its `4·l`-bit prefix. A node's fingerprint is the sum of its entries'
//! hashes (mod 2^256) and their count, so it changes in O(1) per write and does not depend on
//! write order.
//!
//! Invariants:
//! - `aae` holds one row per `state` row: `bucket ‖ state key → entry hash`, written in the same
//!   transaction as the state row.
//! - The sums per level-3 node (4,096) are kept in memory, changed only after the transaction
//!   that changed the rows commits, and rebuilt from `state` at open, which also repairs `aae`
//!   and the state digest where the state was changed behind the store's back (damage): what
//!   the index says is always what the state holds.

use std::collections::BTreeMap;
use std::sync::Mutex;

use redb::{ReadableDatabase, ReadableTable, TableDefinition};

pub use edgerep_wire::aae::{LEAF_LEVEL, Node, bucket_of};

use crate::keys::split_state_key;
use crate::{Digest, META, META_DIGEST, META_ENTRIES, STATE, StoreError, corrupt};

/// `bucket (2 bytes, big endian) ‖ state key` → the entry's hash (32 bytes).
pub(crate) const AAE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("aae");

/// The level whose sums are kept in memory.
const MEMORY_LEVEL: u8 = 3;

/// A node's fingerprint: the sum of its entries' hashes and how many there are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Fingerprint {
    /// Sum of the entry hashes (mod 2^256).
    pub sum: Digest,
    /// Number of entries.
    pub count: u64,
}

impl Fingerprint {
    /// What goes on the wire: the first 16 bytes of BLAKE3(sum ‖ count as u64 little endian).
    pub fn short(&self) -> [u8; 16] {
        let mut h = blake3::Hasher::new();
        h.update(&self.sum.to_bytes());
        h.update(&self.count.to_le_bytes());
        let mut out = [0u8; 16];
        out.copy_from_slice(&h.finalize().as_bytes()[..16]);
        out
    }

    fn add(&mut self, other: &Fingerprint) {
        self.sum.add(other.sum);
        self.count += other.count;
    }
}

/// One entry as the index holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// `collection 0x00 key`.
    pub state_key: Vec<u8>,
    /// The entry's hash.
    pub hash: [u8; 32],
}

/// A change to one entry within a write transaction, applied to the sums after it commits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Delta {
    bucket: u16,
    old: Option<Digest>,
    new: Digest,
}

/// The index rows a write transaction changes, and the sums' changes once it commits.
pub(crate) struct Writes<'t> {
    table: redb::Table<'t, &'static [u8], &'static [u8]>,
    pub(crate) deltas: Vec<Delta>,
}

impl<'t> Writes<'t> {
    pub(crate) fn open(txn: &'t redb::WriteTransaction) -> Result<Writes<'t>, StoreError> {
        Ok(Writes {
            table: txn.open_table(AAE)?,
            deltas: Vec::new(),
        })
    }

    /// Entry `state_key` now hashes to `new` (it hashed to `old`, or did not exist).
    pub(crate) fn set(
        &mut self,
        state_key: &[u8],
        old: Option<Digest>,
        new: Digest,
    ) -> Result<(), StoreError> {
        let bucket = bucket_of(state_key);
        self.table
            .insert(row_key(bucket, state_key).as_slice(), &new.to_bytes()[..])?;
        self.deltas.push(Delta { bucket, old, new });
        Ok(())
    }
}

fn row_key(bucket: u16, state_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + state_key.len());
    k.extend_from_slice(&bucket.to_be_bytes());
    k.extend_from_slice(state_key);
    k
}

/// The in-memory sums of the level-3 nodes.
pub(crate) struct Sums(Mutex<Vec<Fingerprint>>);

impl Sums {
    fn memory_index(bucket: u16) -> usize {
        usize::from(bucket >> (4 * (LEAF_LEVEL - MEMORY_LEVEL)))
    }

    /// Applies a committed transaction's deltas.
    pub(crate) fn apply(&self, deltas: &[Delta]) {
        let mut sums = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for d in deltas {
            let node = &mut sums[Sums::memory_index(d.bucket)];
            match d.old {
                Some(old) => node.sum.sub(old),
                None => node.count += 1,
            }
            node.sum.add(d.new);
        }
    }

    /// The fingerprint of a node at level 0..=3.
    pub(crate) fn fingerprint(&self, node: Node) -> Fingerprint {
        let sums = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let (lo, hi) = node.buckets();
        let (lo, hi) = (Sums::memory_index(lo), Sums::memory_index(hi));
        let mut out = Fingerprint::default();
        for f in &sums[lo..=hi] {
            out.add(f);
        }
        out
    }
}

/// What the index check at open found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenCheck {
    /// State entries whose index row was missing or wrong (the state changed behind the store's
    /// back): the index now follows the state.
    pub entries_fixed: u64,
    /// Index rows without a state entry, removed.
    pub rows_removed: u64,
    /// Whether the stored state digest did not match the state (it was set to what it holds).
    pub digest_fixed: bool,
}

/// Rebuilds the sums from `state` and repairs the index (and the digest) where they disagree.
pub(crate) fn open(db: &redb::Database) -> Result<(Sums, OpenCheck), StoreError> {
    let mut sums = vec![Fingerprint::default(); 1 << (4 * MEMORY_LEVEL)];
    let mut check = OpenCheck::default();
    // Per bucket, the sum of the state and of the index: compared, then only buckets that
    // differ are read row by row.
    let mut from_state: BTreeMap<u16, Fingerprint> = BTreeMap::new();
    let mut from_index: BTreeMap<u16, Fingerprint> = BTreeMap::new();
    let mut total = Fingerprint::default();
    {
        let txn = db.begin_read()?;
        let state = txn.open_table(STATE)?;
        for row in state.iter()? {
            let (k, v) = row?;
            let (collection, key) = split_state_key(k.value())
                .ok_or_else(|| corrupt("state", "key without separator"))?;
            let hash = Digest::of_entry(collection, key, v.value());
            let b = from_state.entry(bucket_of(k.value())).or_default();
            b.sum.add(hash);
            b.count += 1;
        }
        let index = txn.open_table(AAE)?;
        for row in index.iter()? {
            let (k, v) = row?;
            let (bucket, hash) = decode_row(k.value(), v.value())?;
            let b = from_index.entry(bucket).or_default();
            b.sum.add(hash);
            b.count += 1;
        }
        let meta = txn.open_table(META)?;
        for f in from_state.values() {
            total.add(f);
        }
        let stored = match meta.get(META_DIGEST)? {
            Some(g) => {
                let b: [u8; 32] = g
                    .value()
                    .try_into()
                    .map_err(|_| corrupt("meta", "digest is not 32 bytes"))?;
                Digest::from_bytes(&b)
            }
            None => Digest::default(),
        };
        check.digest_fixed = stored != total.sum;
    }
    let differing: Vec<u16> = from_state
        .keys()
        .chain(from_index.keys())
        .copied()
        .collect::<std::collections::BTreeSet<u16>>()
        .into_iter()
        .filter(|b| from_state.get(b) != from_index.get(b))
        .collect();
    if !differing.is_empty() || check.digest_fixed {
        let txn = db.begin_write()?;
        {
            let state = txn.open_table(STATE)?;
            let mut index = txn.open_table(AAE)?;
            let wanted: std::collections::BTreeSet<u16> = differing.iter().copied().collect();
            // What the state says each differing bucket holds.
            let mut expected: std::collections::BTreeMap<Vec<u8>, [u8; 32]> =
                std::collections::BTreeMap::new();
            if !wanted.is_empty() {
                for row in state.iter()? {
                    let (k, v) = row?;
                    let bucket = bucket_of(k.value());
                    if wanted.contains(&bucket) {
                        let (collection, key) = split_state_key(k.value())
                            .ok_or_else(|| corrupt("state", "key without separator"))?;
                        expected.insert(
                            row_key(bucket, k.value()),
                            Digest::of_entry(collection, key, v.value()).to_bytes(),
                        );
                    }
                }
            }
            for &bucket in &wanted {
                let (lo, hi) = (bucket.to_be_bytes(), (u32::from(bucket) + 1).to_be_bytes());
                let mut stale = Vec::new();
                let rows = if bucket == u16::MAX {
                    index.range::<&[u8]>(&lo[..]..)?
                } else {
                    index.range::<&[u8]>(&lo[..]..&hi[2..])?
                };
                for row in rows {
                    let (k, v) = row?;
                    match expected.get(k.value()) {
                        Some(h) if h.as_slice() == v.value() => {}
                        Some(_) => {}
                        None => stale.push(k.value().to_vec()),
                    }
                }
                for k in stale {
                    index.remove(k.as_slice())?;
                    check.rows_removed += 1;
                }
            }
            for (k, h) in &expected {
                let same = index.get(k.as_slice())?.is_some_and(|g| g.value() == h);
                if !same {
                    index.insert(k.as_slice(), &h[..])?;
                    check.entries_fixed += 1;
                }
            }
            let mut meta = txn.open_table(META)?;
            meta.insert(META_DIGEST, &total.sum.to_bytes()[..])?;
            meta.insert(META_ENTRIES, &total.count.to_be_bytes()[..])?;
        }
        txn.commit()?;
    }
    for (&b, f) in &from_state {
        sums[usize::from(b) >> (4 * (LEAF_LEVEL - MEMORY_LEVEL))].add(f);
    }
    Ok((Sums(Mutex::new(sums)), check))
}

fn decode_row(k: &[u8], v: &[u8]) -> Result<(u16, Digest), StoreError> {
    if k.len() < 2 {
        return Err(corrupt("aae", "a key shorter than its bucket"));
    }
    let hash: [u8; 32] = v
        .try_into()
        .map_err(|_| corrupt("aae", "a hash that is not 32 bytes"))?;
    Ok((u16::from_be_bytes([k[0], k[1]]), Digest::from_bytes(&hash)))
}

/// The entries of the buckets `node` covers, in (bucket, state key) order.
pub(crate) fn items(
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
    node: Node,
) -> Result<Vec<(u16, Item)>, StoreError> {
    let (lo, hi) = node.buckets();
    let lo = lo.to_be_bytes();
    let next = u32::from(hi) + 1;
    let rows = if next > u32::from(u16::MAX) {
        table.range::<&[u8]>(&lo[..]..)?
    } else {
        let hi = (next as u16).to_be_bytes();
        table.range::<&[u8]>(&lo[..]..&hi[..])?
    };
    let mut out = Vec::new();
    for row in rows {
        let (k, v) = row?;
        let (bucket, hash) = decode_row(k.value(), v.value())?;
        out.push((
            bucket,
            Item {
                state_key: k.value()[2..].to_vec(),
                hash: hash.to_bytes(),
            },
        ));
    }
    Ok(out)
}

impl crate::Store {
    /// What the anti-entropy index check found when this store was opened.
    pub fn open_check(&self) -> &OpenCheck {
        &self.open_check
    }

    /// The fingerprint of `node`: from memory down to level 3, by reading its bucket's index
    /// rows at level 4.
    pub fn aae_fingerprint(&self, node: Node) -> Result<Fingerprint, StoreError> {
        if !node.is_valid() {
            return Err(StoreError::Invalid(format!("no tree node {node:?}")));
        }
        if node.level <= MEMORY_LEVEL {
            return Ok(self.aae.fingerprint(node));
        }
        let txn = self.db.begin_read()?;
        let table = txn.open_table(AAE)?;
        let mut out = Fingerprint::default();
        for (_, item) in items(&table, node)? {
            out.sum.add(Digest::from_bytes(&item.hash));
            out.count += 1;
        }
        Ok(out)
    }

    /// The entries under `node`, in (bucket, state key) order.
    pub fn aae_items(&self, node: Node) -> Result<Vec<Item>, StoreError> {
        if !node.is_valid() {
            return Err(StoreError::Invalid(format!("no tree node {node:?}")));
        }
        let txn = self.db.begin_read()?;
        let table = txn.open_table(AAE)?;
        Ok(items(&table, node)?.into_iter().map(|(_, i)| i).collect())
    }
}

/// How [`crate::Store::damage`] damages a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Damage {
    /// Remove the key's state row.
    Remove,
    /// Flip the bits of the last byte of the key's state row.
    FlipByte,
}

impl crate::Store {
    /// Damages one key's state row behind the store's bookkeeping (the digest, the index, the
    /// changelog stay as they were), for drills and tests: what a failing disk or a bug could do.
    /// Returns whether the key existed. The next open finds the damage (see [`OpenCheck`]) and
    /// anti-entropy repairs it from peers.
    pub fn damage(&self, collection: &str, key: &[u8], how: Damage) -> Result<bool, StoreError> {
        damage_in(&self.db, collection, key, how)
    }

    /// [`crate::Store::damage`] on the store file at `path` of node `node`, opened without the
    /// check at open (which would find and absorb earlier damage). Fails while a node has the
    /// file open.
    pub fn damage_file(
        path: &std::path::Path,
        node: &edgerep_wire::NodeId,
        collection: &str,
        key: &[u8],
        how: Damage,
    ) -> Result<bool, StoreError> {
        let db = redb::Database::open(path)?;
        {
            let txn = db.begin_read()?;
            let meta = txn.open_table(META)?;
            let stored = meta
                .get(crate::META_NODE_ID)?
                .map(|g| g.value().to_vec())
                .unwrap_or_default();
            if stored != node.as_str().as_bytes() {
                return Err(StoreError::WrongNode {
                    path: path.display().to_string(),
                    stored: String::from_utf8_lossy(&stored).into_owned(),
                    configured: node.to_string(),
                });
            }
        }
        damage_in(&db, collection, key, how)
    }
}

fn damage_in(
    db: &redb::Database,
    collection: &str,
    key: &[u8],
    how: Damage,
) -> Result<bool, StoreError> {
    {
        let skey = crate::keys::state_key(collection, key);
        let txn = db.begin_write()?;
        let existed = {
            let mut state = txn.open_table(STATE)?;
            let old = state.get(skey.as_slice())?.map(|g| g.value().to_vec());
            match (old, how) {
                (None, _) => false,
                (Some(_), Damage::Remove) => {
                    state.remove(skey.as_slice())?;
                    true
                }
                (Some(mut bytes), Damage::FlipByte) => {
                    if let Some(b) = bytes.last_mut() {
                        *b = !*b;
                    }
                    state.insert(skey.as_slice(), bytes.as_slice())?;
                    true
                }
            }
        };
        txn.commit()?;
        Ok(existed)
    }
}
