//! The anti-entropy sums: what lets two nodes compare their states in round trips and bytes that
//! grow with the number of differences, not with the size of the state (see `docs/design.md`,
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
//! - The sums per bucket are kept in memory (2.6 MB), computed from `state` at open and changed
//!   only after the transaction that changed the state commits, by the entry hashes the digest
//!   needs anyway. So what they say is what the state holds, also after damage behind the
//!   store's back (found at open: the stored digest then differs, and is corrected).
//! - No index is written per key: a random-order B-tree insert per write cost more than half of
//!   replication's throughput when measured. Listing a bucket's entries reads the state (one
//!   pass for all the buckets a message needs), which happens only where fingerprints differ.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use edgerep_wire::event::EventLimits;
use redb::{ReadableDatabase, ReadableTable};

pub use edgerep_wire::aae::{LEAF_LEVEL, Node, bucket_of};

use crate::keys::split_state_key;
use crate::tables::META_VERSIONS_ONLY;
use crate::{Digest, META, META_DIGEST, STATE, StoreError, corrupt};

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

/// The entry changes of a write transaction, applied to the sums once it commits.
pub(crate) struct Writes {
    pub(crate) deltas: Vec<Delta>,
    /// Off only to measure what keeping the sums costs (see `Store::without_fingerprints`).
    enabled: bool,
}

impl Writes {
    pub(crate) fn new(enabled: bool) -> Writes {
        Writes {
            deltas: Vec::new(),
            enabled,
        }
    }

    /// Entry `state_key` now hashes to `new` (it hashed to `old`, or did not exist).
    pub(crate) fn set(&mut self, state_key: &[u8], old: Option<Digest>, new: Digest) {
        if self.enabled {
            self.set_in(bucket_of(state_key), old, new);
        }
    }

    /// [`Writes::set`] of an entry whose bucket is known.
    pub(crate) fn set_in(&mut self, bucket: u16, old: Option<Digest>, new: Digest) {
        if !self.enabled {
            return;
        }
        self.deltas.push(Delta { bucket, old, new });
    }
}

/// The in-memory sums of the buckets, and what the check at open found.
///
/// At open the sums start at zero and a thread ([`OpenScan`]) hashes the state as of a snapshot
/// taken before the store's first write; the writes committed meanwhile apply their deltas as
/// always, and the thread adds each entry it reads. Sums are additive and a delta is the exact
/// change of one entry, so once the thread is done the sums are those of the whole state: a
/// start does not wait for a pass over the state (`bench replicate`: B answered its API 523 ms
/// after its start with the pass first, 11 ms with it beside). Fingerprints wait for the thread.
pub(crate) struct Sums {
    inner: Mutex<Inner>,
    checked: Condvar,
}

struct Inner {
    buckets: Vec<Fingerprint>,
    /// What the check at open found; `None` while it runs, `Err` if it could not run.
    check: Option<Result<OpenCheck, String>>,
}

impl Sums {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies a committed transaction's deltas.
    pub(crate) fn apply(&self, deltas: &[Delta]) {
        let mut inner = self.lock();
        for d in deltas {
            let bucket = &mut inner.buckets[usize::from(d.bucket)];
            match d.old {
                Some(old) => bucket.sum.sub(old),
                None => bucket.count += 1,
            }
            bucket.sum.add(d.new);
        }
    }

    /// The sums once the check at open has run (waits for it); Err if it could not run.
    fn when_checked(&self) -> Result<std::sync::MutexGuard<'_, Inner>, StoreError> {
        let mut inner = self.lock();
        loop {
            match &inner.check {
                Some(Ok(_)) => return Ok(inner),
                Some(Err(e)) => return Err(corrupt("state", format!("check at open: {e}"))),
                None => inner = self.checked.wait(inner).unwrap_or_else(|e| e.into_inner()),
            }
        }
    }

    /// The check at open, once it has run (waits for it).
    pub(crate) fn wait_check(&self) -> Result<OpenCheck, StoreError> {
        let inner = self.when_checked()?;
        Ok(match &inner.check {
            Some(Ok(check)) => check.clone(),
            // `when_checked` returns only once the check succeeded.
            _ => OpenCheck::default(),
        })
    }

    /// The check at open if it has run.
    pub(crate) fn check_now(&self) -> Option<Result<OpenCheck, String>> {
        self.lock().check.clone()
    }

    /// The fingerprint of a node: the sum over its buckets (waits for the check at open).
    pub(crate) fn fingerprint(&self, node: Node) -> Result<Fingerprint, StoreError> {
        let inner = self.when_checked()?;
        let (lo, hi) = node.buckets();
        let mut out = Fingerprint::default();
        for f in &inner.buckets[usize::from(lo)..=usize::from(hi)] {
            out.add(f);
        }
        Ok(out)
    }

    /// Adds the hashes of entries the check at open read (any order, any time before it
    /// finishes: sums are additive).
    fn add_scanned(&self, scanned: &[(u16, Digest)]) {
        let mut inner = self.lock();
        for (bucket, hash) in scanned {
            let b = &mut inner.buckets[usize::from(*bucket)];
            b.sum.add(*hash);
            b.count += 1;
        }
    }

    /// Publishes what the check at open found: the sums hold the whole state from now on.
    fn finish(&self, found: Result<OpenCheck, String>) {
        self.lock().check = Some(found);
        self.checked.notify_all();
    }
}

/// What the check at open found: whether the state changed behind the store's back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenCheck {
    /// The stored digest did not match the state (it was set to what the state holds).
    pub digest_fixed: bool,
    /// How many entries the bookkeeping said the state held, when that was wrong.
    pub entries_recorded: Option<u64>,
    /// How many entries the state holds.
    pub entries: u64,
    /// Entries that cannot be read (damaged): anti-entropy replaces them from a peer.
    pub unreadable: u64,
    /// The collections hashed on their versions only changed since the last open (the
    /// digest was recomputed under the new rule).
    pub rule_changed: bool,
}

impl OpenCheck {
    /// Whether the state had changed behind the store's back.
    pub fn found_damage(&self) -> bool {
        self.digest_fixed || self.entries_recorded.is_some() || self.unreadable > 0
    }
}

/// The thread of the check at open; dropping it stops the thread and waits for it, so the
/// database file is closed when the store is.
pub(crate) struct OpenScan {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for OpenScan {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts the check at open: must be called before the store's first write, since it reads
/// the state as of now and the sums it returns count only the writes after it. `new_rule` is
/// the hash rule's record when it changed since the last open (or a check under a changed one
/// never ended): it is written with the digest recomputed under it, and the open's pending
/// mark removed, so a start that dies before then recomputes again at the next open, under
/// either rule (recorded first, the old digest would look like damage; a mark-less revert to
/// the recorded rule would take the interrupted run's writes for damage).
pub(crate) fn open(
    db: &Arc<redb::Database>,
    limits: &EventLimits,
    rule: &crate::HashRule,
    new_rule: Option<Vec<u8>>,
) -> Result<(Arc<Sums>, OpenScan), StoreError> {
    let sums = Arc::new(Sums {
        inner: Mutex::new(Inner {
            buckets: vec![Fingerprint::default(); 1 << 16],
            check: None,
        }),
        checked: Condvar::new(),
    });
    let snapshot = db.begin_read()?;
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let (db, sums, stop) = (db.clone(), sums.clone(), stop.clone());
        let (limits, rule) = (*limits, rule.clone());
        std::thread::Builder::new()
            .name("store-open-check".into())
            .spawn(move || {
                let found = check(&db, snapshot, &sums, &limits, &rule, new_rule, &stop)
                    .map_err(|e| e.to_string());
                sums.finish(found);
            })
            .map_err(|e| corrupt("state", format!("cannot start the check at open: {e}")))?
    };
    Ok((
        sums,
        OpenScan {
            stop,
            thread: Some(thread),
        },
    ))
}

/// Adds the entries of the state `snapshot` holds to `sums`, and corrects the stored digest and
/// entry count where they disagree with it. The correction is written as a difference (what
/// the state held minus what the bookkeeping said, both as of `snapshot`), so it holds whatever
/// the writer committed since.
fn check(
    db: &redb::Database,
    snapshot: redb::ReadTransaction,
    sums: &Sums,
    limits: &EventLimits,
    rule: &crate::HashRule,
    new_rule: Option<Vec<u8>>,
    stop: &AtomicBool,
) -> Result<OpenCheck, StoreError> {
    let rule_changed = new_rule.is_some();
    /// Entries hashed between two takes of the sums' lock.
    const CHUNK: usize = 1024;
    let mut check = OpenCheck::default();
    let mut total = Fingerprint::default();
    let mut chunk = Vec::with_capacity(CHUNK);
    let (stored_digest, stored_entries) = {
        let state = snapshot.open_table(STATE)?;
        for (i, row) in state.iter()?.enumerate() {
            if i % CHUNK == 0 {
                if stop.load(Ordering::Relaxed) {
                    return Err(corrupt("state", "the store was closed during the check"));
                }
                sums.add_scanned(&chunk);
                chunk.clear();
            }
            let (k, v) = row?;
            let (collection, key) = split_state_key(k.value())
                .ok_or_else(|| corrupt("state", "key without separator"))?;
            let hash = rule.entry(collection, key, v.value(), limits);
            chunk.push((bucket_of(k.value()), hash));
            total.sum.add(hash);
            total.count += 1;
        }
        sums.add_scanned(&chunk);
        if stored_digest_differs(&snapshot, &total)? {
            // Damage: only then is each entry decoded, to count those that cannot be read.
            for row in state.iter()? {
                let (_, v) = row?;
                if crate::Versions::decode(v.value(), limits).is_err() {
                    check.unreadable += 1;
                }
            }
        }
        let meta = snapshot.open_table(META)?;
        let counters = crate::tables::Counters::load(&meta)?;
        (counters.digest, counters.entries)
    };
    drop(snapshot);
    check.entries = total.count;
    // A new hash rule (collections given or relieved of transforms on apply) changes the
    // digest of an intact state: recomputed, not damage.
    check.digest_fixed = stored_digest != total.sum && !rule_changed;
    check.rule_changed = rule_changed;
    if stored_entries != total.count {
        check.entries_recorded = Some(stored_entries);
    }
    if stored_digest != total.sum || check.entries_recorded.is_some() || rule_changed {
        // The one write outside the writer: a difference, so it commutes with the writer's
        // transactions (redb runs write transactions one at a time).
        let txn = db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            if let Some(rule) = &new_rule {
                meta.insert(META_VERSIONS_ONLY, rule.as_slice())?;
                meta.remove(crate::tables::META_RULE_CHECK_PENDING)?;
            }
            let mut counters = crate::tables::Counters::load(&meta)?;
            counters.digest.add(total.sum);
            counters.digest.sub(stored_digest);
            counters.entries = counters
                .entries
                .wrapping_add(total.count.wrapping_sub(stored_entries));
            counters.save(&mut meta)?;
        }
        txn.commit()?;
    }
    Ok(check)
}

/// Whether the stored digest differs from `total`'s sum.
fn stored_digest_differs(
    txn: &redb::ReadTransaction,
    total: &Fingerprint,
) -> Result<bool, StoreError> {
    let meta = txn.open_table(META)?;
    Ok(match meta.get(META_DIGEST)? {
        Some(g) => g.value() != total.sum.to_bytes().as_slice(),
        None => total.count > 0,
    })
}

impl crate::Store {
    /// What the check at open found (waits for it: it runs beside the store's first writes).
    pub fn open_check(&self) -> Result<OpenCheck, StoreError> {
        self.aae.wait_check()
    }

    /// What the check at open found, if it has finished: `Err` names why it could not run.
    pub fn open_check_now(&self) -> Option<Result<OpenCheck, String>> {
        self.aae.check_now()
    }

    /// This store without keeping the anti-entropy sums up to date: only for `bench ingest` to
    /// print what keeping them costs. Its fingerprints are wrong until it is opened again.
    pub fn without_fingerprints(mut self) -> crate::Store {
        self.fingerprints = false;
        self
    }

    /// Whether the anti-entropy sums hold the whole state (the check at open has finished).
    pub fn aae_ready(&self) -> bool {
        self.aae.lock().check.is_some()
    }

    /// The fingerprint of `node` (waits for the check at open).
    pub fn aae_fingerprint(&self, node: Node) -> Result<Fingerprint, StoreError> {
        if !node.is_valid() {
            return Err(StoreError::Invalid(format!("no tree node {node:?}")));
        }
        self.aae.fingerprint(node)
    }

    /// The entries under `node`, in (bucket, state key) order.
    pub fn aae_items(&self, node: Node) -> Result<Vec<Item>, StoreError> {
        Ok(self.aae_items_of(&[node])?.pop().unwrap_or_default())
    }

    /// The entries under each of `nodes`, in (bucket, state key) order: one pass over the
    /// state for all of them.
    pub fn aae_items_of(&self, nodes: &[Node]) -> Result<Vec<Vec<Item>>, StoreError> {
        let limits = self.limits();
        if let Some(n) = nodes.iter().find(|n| !n.is_valid()) {
            return Err(StoreError::Invalid(format!("no tree node {n:?}")));
        }
        if nodes.is_empty() {
            return Ok(Vec::new());
        }
        // Distinct nodes only: tree nodes nest or are disjoint, so a bucket is then covered by
        // at most one node per level (a peer naming the root 4,096 times costs no more).
        let mut distinct: Vec<Node> = nodes.to_vec();
        distinct.sort();
        distinct.dedup();
        let mut out: Vec<Vec<(u16, Item)>> = vec![Vec::new(); distinct.len()];
        // Per bucket, the nodes that cover it: one lookup per state row.
        let mut covering: std::collections::HashMap<u16, Vec<usize>> =
            std::collections::HashMap::new();
        for (i, n) in distinct.iter().enumerate() {
            let (lo, hi) = n.buckets();
            for b in lo..=hi {
                covering.entry(b).or_default().push(i);
            }
        }
        let txn = self.db.begin_read()?;
        let state = txn.open_table(STATE)?;
        for row in state.iter()? {
            let (k, v) = row?;
            let bucket = bucket_of(k.value());
            let Some(wanted) = covering.get(&bucket) else {
                continue;
            };
            let mut hash = None;
            for &i in wanted {
                {
                    let h = *hash.get_or_insert_with(|| {
                        let (collection, key) =
                            split_state_key(k.value()).unwrap_or(("", k.value()));
                        self.rule
                            .entry(collection, key, v.value(), &limits)
                            .to_bytes()
                    });
                    out[i].push((
                        bucket,
                        Item {
                            state_key: k.value().to_vec(),
                            hash: h,
                        },
                    ));
                }
            }
        }
        let mut lists: Vec<Option<Vec<Item>>> = out
            .into_iter()
            .map(|mut items| {
                items.sort_by(|a, b| (a.0, &a.1.state_key).cmp(&(b.0, &b.1.state_key)));
                Some(items.into_iter().map(|(_, i)| i).collect())
            })
            .collect();
        // Each list once: a node named again gets an empty list, not a copy (the replica
        // refuses messages whose ranges overlap; this keeps a caller that does not from
        // holding one copy of the state per name).
        Ok(nodes
            .iter()
            .map(|n| {
                distinct
                    .binary_search(n)
                    .ok()
                    .and_then(|i| lists[i].take())
                    .unwrap_or_default()
            })
            .collect())
    }
}

/// How [`crate::StoreWriter::damage`] damages a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Damage {
    /// Remove the key's state row.
    Remove,
    /// Flip the bits of the last byte of the key's state row.
    FlipByte,
}

impl crate::StoreWriter {
    /// Damages the state rows of `keys` of `collection` behind the store's bookkeeping (the
    /// digest, the sums, the changelog stay as they were), in one transaction, for drills, tests
    /// and benchmarks: what a failing disk or a bug could do. Returns how many existed. The next
    /// open finds the damage (see [`OpenCheck`]) and anti-entropy repairs it from peers.
    pub fn damage(
        &self,
        collection: &str,
        keys: &[Vec<u8>],
        how: Damage,
    ) -> Result<u64, StoreError> {
        damage_in(&self.db, collection, keys, how)
    }

    /// [`crate::StoreWriter::damage`] on the store file at `path` of node `node`, opened without the
    /// check at open (which would find and absorb earlier damage). Fails while a node has the
    /// file open.
    pub fn damage_file(
        path: &std::path::Path,
        node: &edgerep_wire::NodeId,
        collection: &str,
        keys: &[Vec<u8>],
        how: Damage,
    ) -> Result<u64, StoreError> {
        let db = crate::open_stopped(path, node)?;
        damage_in(&db, collection, keys, how)
    }
}

fn damage_in(
    db: &redb::Database,
    collection: &str,
    keys: &[Vec<u8>],
    how: Damage,
) -> Result<u64, StoreError> {
    let txn = db.begin_write()?;
    let mut existed = 0;
    {
        let mut state = txn.open_table(STATE)?;
        for key in keys {
            let skey = crate::keys::state_key(collection, key);
            let Some(mut bytes) = state.get(skey.as_slice())?.map(|g| g.value().to_vec()) else {
                continue;
            };
            existed += 1;
            match how {
                Damage::Remove => {
                    state.remove(skey.as_slice())?;
                }
                Damage::FlipByte => {
                    if let Some(b) = bytes.last_mut() {
                        *b = !*b;
                    }
                    state.insert(skey.as_slice(), bytes.as_slice())?;
                }
            }
        }
    }
    txn.commit()?;
    Ok(existed)
}
