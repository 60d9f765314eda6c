//! edgerep's store: one redb file per node holding
//! - `state`: per (collection, key) the key's current [`Versions`], and for a key with
//!   concurrent versions in a collection resolved by a plugin, its [`Resolution`]
//!   (see `resolution.rs`);
//! - `changelog`: every event this node holds, keyed by (origin, origin sequence), so "all events
//!   from origin X after sequence N" is one range scan;
//! - `feed`: this node's local order of arrival, which `watch` follows, stored as runs: a row
//!   `first position → (origin, first sequence, count)` stands for `count` consecutive events of
//!   one origin, so a group commit of local writes adds one feed row, not one per event;
//! - `origins`: per origin, the highest sequence number held;
//! - `dead_letters`: events a plugin refused, with the reason;
//! - `disagreements`: keys whose resolution differed from a peer's over the same versions;
//! - `idempotency`, `idempotency_order`: clients' idempotency keys with the answers of the writes
//!   they committed (see `idempotency.rs`);
//! - `compacted`: per origin, the highest sequence number removed from the changelog (see
//!   `retention.rs`: compaction, and state snapshots for peers that need removed events);
//! - `meta`: node id, last hybrid clock timestamp, last feed position, feed floor, state digest.
//!
//! Invariant: one write transaction changes state, changelog, feed, origins and meta together, so
//! a write either fully happens or not at all, and the digest always matches the state.
//! Transactions commit with redb's immediate durability (once `commit_local` returns, the events
//! survive a crash) unless the caller asks for [`Sync::Deferred`]: then they survive a crash only
//! after the next immediate commit or [`Store::sync`] (commits reach the disk in order).

pub mod aae;
mod digest;
pub mod idempotency;
mod keys;
mod proofs;
mod resolution;
mod retention;
mod seals;
mod versions;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use edgerep_wire::event::{EventLimits, FORMAT_VERSION};
use edgerep_wire::seal::{
    Block, ChainHash, SEAL_EVERY_BYTES, SEAL_EVERY_EVENTS, chain_link, event_leaf,
};
use edgerep_wire::{EncodedEvent, Event, Hlc, HlcClock, NodeId, Op, Seal, Value};
use redb::{
    Database, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition,
};

use keys::{log_key, log_seq, split_state_key, state_key};

pub use digest::{Digest, HashRule};
pub use resolution::{BY_DEFAULT_AFTER_DISAGREEMENT, Disagreement, Resolution, Resolver};
use retention::{COMPACTED, feed_floor};
pub use retention::{CollectionCounts, Compaction, Installed, StatePage};
pub use seals::Keys;
use seals::{CERTS, CHAINS, SEALS};
pub use versions::{Applied, Versions};

/// `collection 0x00 key` → encoded [`Versions`] (see [`keys`]).
const STATE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("state");
/// `origin 0x00 sequence` → encoded event (see [`keys`]).
const CHANGELOG: TableDefinition<&[u8], &[u8]> = TableDefinition::new("changelog");
const FEED: TableDefinition<u64, (&str, u64, u64)> = TableDefinition::new("feed");
const ORIGINS: TableDefinition<&str, u64> = TableDefinition::new("origins");
const DEAD_LETTERS: TableDefinition<u64, &[u8]> = TableDefinition::new("dead_letters");
const DISAGREEMENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("disagreements");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Per peer, what it acknowledged holding: a CBOR map origin -> highest seq.
const PEERS: TableDefinition<&str, &[u8]> = TableDefinition::new("peers");

const META_NODE_ID: &str = "node_id";
const META_HLC: &str = "hlc_last";
const META_FEED_LAST: &str = "feed_last";
const META_DIGEST: &str = "digest";
const META_ENTRIES: &str = "state_entries";
const META_STORE_FORMAT: &str = "store_format";
const META_VERSIONS_ONLY: &str = "versions_only";
/// redb's page cache, at most.
pub const CACHE_BYTES: usize = 32 << 20;
/// Layout version of the tables above (2: origin chains and seals; 3: seals name their block
/// and its Merkle root, proofs of compacted live versions).
const STORE_FORMAT: u64 = 3;

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// redb failed (IO error, full disk, corruption detected by redb).
    #[error("storage: {0}")]
    Storage(#[from] redb::Error),
    /// The data directory belongs to another node.
    #[error(
        "the data in {path} belongs to node {stored:?}, but the config says node {configured:?}"
    )]
    WrongNode {
        /// The database file.
        path: String,
        /// Node id recorded in the database.
        stored: String,
        /// Node id from the config.
        configured: String,
    },
    /// A stored record does not decode: the file was changed behind redb's back or by a bug.
    #[error("corrupt record in table {table}: {reason}")]
    Corrupt {
        /// The table.
        table: &'static str,
        /// What failed.
        reason: String,
    },
    /// A replay named a dead letter that is not (or no longer) in the table.
    #[error("dead letter {0} does not exist (already replayed?)")]
    NoSuchDeadLetter(u64),
    /// An event from a peer skips sequence numbers of its origin: the store holds each origin's
    /// events without gaps, so the earlier ones must be applied first.
    #[error("event {origin}:{seq} arrived before {origin}:{expected}")]
    Gap {
        /// The event's origin.
        origin: String,
        /// The event's sequence number.
        seq: u64,
        /// The next sequence number the store expects from that origin.
        expected: u64,
    },
    /// Events of an origin below the asked position were compacted out of the changelog.
    #[error(
        "events of {origin} up to {floor} were compacted (every peer held them); read after {floor}"
    )]
    ChangelogCompacted {
        /// The origin.
        origin: String,
        /// The highest sequence number removed.
        floor: u64,
    },
    /// Feed positions up to `floor` can no longer be read (their events were compacted, or a
    /// snapshot from a peer changed the state without feed positions).
    #[error(
        "feed positions up to {floor} were compacted or replaced by a snapshot: read the state, then watch after {floor}"
    )]
    FeedCompacted {
        /// The highest position that can no longer be read.
        floor: u64,
    },
    /// A snapshot page from a peer cannot be merged.
    #[error("snapshot refused: {0}")]
    SnapshotRefused(String),
    /// A request's idempotency key is recorded already (a request under the same key
    /// committed first): nothing of the group was written; the others may be committed
    /// without that request.
    #[error("idempotency key {key:?} is recorded already (a request with it committed meanwhile)")]
    KeyInUse {
        /// The position in the group of the request's first write.
        index: usize,
        /// The key.
        key: String,
    },
    /// One local write of a group cannot be committed as it stands (nothing of the group was
    /// written; the others may be committed without it).
    #[error("write {index} of the group refused: {reason}")]
    WriteRefused {
        /// Its position in the group.
        index: usize,
        /// Why.
        reason: String,
    },
    /// Events from a peer whose seal is missing, does not match them, or does not verify: they
    /// are not what their origin wrote (nothing of the batch was applied).
    #[error("events of {origin} up to {seq} refused: {reason}")]
    Forged {
        /// The origin they claim.
        origin: String,
        /// The sequence number where the check failed.
        seq: u64,
        /// What was wrong.
        reason: String,
    },
    /// A request the store cannot answer as asked (names what was wrong).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The database was written by an older edgerep whose tables this one cannot continue.
    #[error(
        "store format {found} predates this edgerep's origin seals (format {STORE_FORMAT}): move the data directory away and start the node on an empty one; it catches up from its peers"
    )]
    OldFormat {
        /// Format found in the file.
        found: u64,
    },
    /// The database was written by a newer edgerep with a table layout this one does not know.
    #[error("store format {found} is newer than this edgerep supports ({supported})")]
    UnsupportedFormat {
        /// Format found in the file.
        found: u64,
        /// Highest format this code reads.
        supported: u64,
    },
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> StoreError {
                StoreError::Storage(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

fn corrupt(table: &'static str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        table,
        reason: e.to_string(),
    }
}

/// One local write, validated by the caller (collection allowed, key and value within limits).
#[derive(Debug, Clone, PartialEq)]
pub struct LocalWrite {
    /// Collection.
    pub collection: String,
    /// Key (non-empty).
    pub key: Vec<u8>,
    /// The value for a put, `None` for a delete.
    pub value: Option<Value>,
    /// Schema version of the value.
    pub schema: u32,
    /// Metadata.
    pub meta: BTreeMap<String, String>,
}

/// The hash that names one event's bytes in reports (forks): BLAKE3 of its deterministic
/// encoding.
pub fn event_hash(event_bytes: &[u8]) -> [u8; 32] {
    *blake3::hash(event_bytes).as_bytes()
}

/// A group of local writes was not committed: why, and (for [`StoreError::WriteRefused`]) the
/// writes, given back in order so that the others can be committed without the refused one.
#[derive(Debug)]
pub struct LocalCommitError {
    /// Why.
    pub error: StoreError,
    /// The group's writes (empty unless the error is [`StoreError::WriteRefused`]).
    pub writes: Vec<LocalWrite>,
}

impl From<Event> for LocalWrite {
    /// The write an event makes (its collection, key, value, schema and metadata).
    fn from(e: Event) -> LocalWrite {
        LocalWrite {
            collection: e.collection,
            key: e.key,
            value: e.value,
            schema: e.schema,
            meta: e.meta,
        }
    }
}

/// Where a committed local write landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    /// The event's sequence number at this (its origin) node.
    pub seq: u64,
    /// The event's hybrid clock timestamp.
    pub hlc: Hlc,
    /// The event's position in this node's feed.
    pub position: u64,
}

/// What the store remembers across restarts that the node needs to resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    /// Highest hybrid clock timestamp issued or observed (the clock resumes after it).
    pub hlc_last: Hlc,
    /// Last feed position.
    pub feed_last: u64,
}

/// Summary of the store for `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreStatus {
    /// The state digest.
    pub digest: Digest,
    /// Number of (collection, key) entries in the state, tombstones included.
    pub state_entries: u64,
    /// Last feed position.
    pub feed_last: u64,
    /// Per origin, the highest sequence number held.
    pub origins: BTreeMap<String, u64>,
    /// Highest hybrid clock timestamp issued or observed.
    pub hlc_last: Hlc,
    /// Number of dead letters.
    pub dead_letters: u64,
    /// Per origin, the highest sequence number compacted out of the changelog.
    pub compacted: BTreeMap<String, u64>,
    /// Feed positions up to this one can no longer be read.
    pub feed_floor: u64,
}

/// Whether a write transaction waits for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sync {
    /// The commit is durable when it returns.
    Immediate,
    /// The commit is visible when it returns and durable after the next immediate commit or
    /// [`Store::sync`].
    Deferred,
}

impl Sync {
    fn redb(self) -> redb::Durability {
        match self {
            Sync::Immediate => redb::Durability::Immediate,
            Sync::Deferred => redb::Durability::None,
        }
    }
}

/// What an event received from a peer does to this node's state. Its changelog entry is always
/// the event as received (peers relay it unchanged, so every origin's sequence stays gapless
/// everywhere); transforms on apply change only the state of the node that runs them.
#[derive(Debug, Clone, PartialEq)]
pub enum OnApply {
    /// Applied to the state as received.
    AsReceived,
    /// Applied with this value instead (`None`: as a delete); origin, sequence number, timestamp
    /// and causal context stay the event's own.
    Value(Option<Value>),
    /// Kept out of the state (a transform dropped it, or failed on it).
    Dropped,
}

/// An event received from a peer, with what it does to the state.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    /// The event as its origin wrote it, with its canonical bytes (what the changelog stores).
    pub event: EncodedEvent,
    /// What it does to this node's state.
    pub on_apply: OnApply,
}

impl Received {
    /// An event applied as received.
    pub fn as_received(event: impl Into<EncodedEvent>) -> Received {
        Received {
            event: event.into(),
            on_apply: OnApply::AsReceived,
        }
    }
}

/// What [`Store::apply_remote`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteApply {
    /// Per event, what it did to its key's versions ([`Applied::Obsolete`] also for an event
    /// kept out of the state by [`OnApply::Dropped`]).
    pub applied: Vec<Applied>,
    /// Ids of the dead letters written with the batch.
    pub dead_letters: Vec<u64>,
    /// Per origin of the batch, the highest sequence number the store now holds.
    pub held: BTreeMap<String, u64>,
    /// The feed's last position after the batch.
    pub feed_last: u64,
    /// Events whose timestamp was too far ahead of the wall clock to move the clock.
    pub skewed: usize,
    /// Origins whose events in the batch do not chain, from this node's history, to a seal of
    /// theirs that verifies: another history the origin signed, or events changed under a
    /// genuine seal. Left out, reported.
    pub forks: Vec<Fork>,
}

/// One origin's chain walked over the new events of a batch (see `Store::apply_in`).
struct ChainWalk<'a> {
    /// What the store held of the origin before the batch.
    held: u64,
    /// The last event walked, and the chain hash after it.
    seq: u64,
    chain: ChainHash,
    /// The batch's seals met on the way, each matching the chain and its block.
    sealed: Vec<&'a Seal>,
    /// The leaves since the last seal met.
    block: Block,
}

impl ChainWalk<'_> {
    fn new(held: u64, chain: ChainHash) -> Self {
        ChainWalk {
            held,
            seq: held,
            chain,
            sealed: Vec::new(),
            block: Block::default(),
        }
    }
}

/// Where a batch's seal of an origin verified but its events did not chain to it from this
/// node's history: two histories the origin signed, or events changed under a genuine seal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fork {
    /// The origin.
    pub origin: String,
    /// The sequence number of the seal.
    pub seq: u64,
    /// The chain hash there over this node's history.
    pub held_chain: ChainHash,
    /// The chain hash the seal names.
    pub received_chain: ChainHash,
}

/// Which keys of a collection a scan returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanRange {
    /// Only keys starting with these bytes.
    pub prefix: Vec<u8>,
    /// Only keys at or after this one.
    pub start: Option<Vec<u8>>,
    /// Only keys before this one.
    pub end: Option<Vec<u8>>,
    /// Only keys strictly after this one (the cursor of the previous page).
    pub after: Option<Vec<u8>>,
}

/// One page of a scan.
#[derive(Debug, Clone, PartialEq)]
pub struct ScanPage {
    /// (key, versions) in key order. A key whose last-writer-wins version is a delete is left
    /// out, unless it holds concurrent versions (a conflict is always listed).
    pub entries: Vec<(Vec<u8>, Versions)>,
    /// The kept resolutions of the entries that have one (see [`Store::get_resolved`]).
    pub resolutions: BTreeMap<Vec<u8>, Resolution>,
    /// The cursor for the next page (`ScanRange::after`), `None` when the scan is complete.
    pub next: Option<Vec<u8>>,
}

/// The meta counters every write transaction keeps up to date: last feed position, state
/// digest, number of state entries.
struct Counters {
    position: u64,
    digest: Digest,
    entries: u64,
}

impl Counters {
    fn load(
        meta: &impl ReadableTable<&'static str, &'static [u8]>,
    ) -> Result<Counters, StoreError> {
        let read_u64 = |key: &str| -> Result<u64, StoreError> {
            match meta.get(key)? {
                Some(g) => u64_from(g.value(), "meta"),
                None => Ok(0),
            }
        };
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

    fn save(
        &self,
        meta: &mut redb::Table<'_, &'static str, &'static [u8]>,
    ) -> Result<(), StoreError> {
        meta.insert(META_FEED_LAST, &self.position.to_be_bytes()[..])?;
        meta.insert(META_DIGEST, &self.digest.to_bytes()[..])?;
        meta.insert(META_ENTRIES, &self.entries.to_be_bytes()[..])?;
        Ok(())
    }
}

/// Applies one event to its key's versions in `state` by the merge rule ([`Versions::apply`]),
/// keeping the digest, the entry count and the anti-entropy sums up to date. Shared by received
/// events, snapshot pages and repairs, so all merge exactly alike. With `repair` (anti-entropy
/// on a damaged store, the event proven its origin's) a key that does not decode is replaced,
/// and a version with the event's origin and sequence number but other bytes is dropped
/// first. Returns what applying did and whether something damaged was replaced.
#[allow(clippy::too_many_arguments)]
fn apply_to_state(
    state: &mut redb::Table<'_, &'static [u8], &'static [u8]>,
    index: &mut aae::Writes,
    digest: &mut Digest,
    entries: &mut u64,
    limits: &EventLimits,
    event: EncodedEvent,
    repair: bool,
    unresolved: &mut Unresolved<'_>,
) -> Result<(Applied, bool), StoreError> {
    let skey = state_key(&event.collection, &event.key);
    let old = state.get(skey.as_slice())?;
    let old_hash = old.as_ref().map(|g| {
        unresolved
            .rule
            .entry(&event.collection, &event.key, g.value(), limits)
    });
    let (mut versions, mut damaged) = match &old {
        Some(g) => match Versions::decode(g.value(), limits) {
            Ok(v) => (v, false),
            Err(_) if repair => (Versions::new(), true),
            Err(e) => return Err(corrupt("state", e)),
        },
        None => (Versions::new(), false),
    };
    drop(old);
    if repair {
        damaged |= versions.drop_other_bytes(&event);
    }
    let (collection, key) = (event.collection.clone(), event.key.clone());
    let applied = versions.apply(event);
    if applied == Applied::Added || damaged {
        match old_hash {
            Some(h) => digest.sub(h),
            None => *entries += 1,
        }
        let new_bytes = versions.encode();
        let new_hash = unresolved.rule.entry(&collection, &key, &new_bytes, limits);
        digest.add(new_hash);
        index.set(&skey, old_hash, new_hash);
        state.insert(skey.as_slice(), new_bytes.as_slice())?;
        if versions.events().len() > 1 && applied == Applied::Added {
            *unresolved
                .tally
                .conflicts
                .entry(collection.clone())
                .or_default() += 1;
            if unresolved.resolver.is_some_and(|r| r.resolves(&collection)) {
                unresolved.keys.insert(skey);
            } else {
                *unresolved
                    .tally
                    .resolutions
                    .entry((collection, "lww".to_owned()))
                    .or_default() += 1;
            }
        }
    }
    Ok((applied, damaged))
}

/// The keys of one transaction whose versions changed to concurrent ones, to resolve once
/// before it commits (after every event of the batch, not after each).
struct Unresolved<'a> {
    resolver: Option<&'a dyn Resolver>,
    /// How rows hash (carried here: every state write of the transaction needs it).
    rule: &'a HashRule,
    keys: BTreeSet<Vec<u8>>,
    /// What the transaction's conflicts came to (added to the store's once it commits).
    tally: ConflictTally,
}

/// Conflicts met and how they were resolved, per collection, since the store opened (in
/// memory: a figure for metrics, not state).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConflictTally {
    /// Versions applied that left their key holding concurrent versions.
    pub conflicts: BTreeMap<String, u64>,
    /// Per (collection, who decided: `lww`, `plugin:NAME`, `lww-fallback:NAME`), keys with
    /// concurrent versions resolved.
    pub resolutions: BTreeMap<(String, String), u64>,
}

impl ConflictTally {
    /// Adds `other` to this tally.
    fn add(&mut self, other: ConflictTally) {
        for (c, n) in other.conflicts {
            *self.conflicts.entry(c).or_default() += n;
        }
        for (k, n) in other.resolutions {
            *self.resolutions.entry(k).or_default() += n;
        }
    }
}

impl<'a> Unresolved<'a> {
    fn new(resolver: Option<&'a dyn Resolver>, rule: &'a HashRule) -> Unresolved<'a> {
        Unresolved {
            resolver,
            rule,
            keys: BTreeSet::new(),
            tally: ConflictTally::default(),
        }
    }

    /// Resolves every key collected and writes its row with the resolution; returns the
    /// transaction's tally of conflicts.
    fn resolve(
        mut self,
        state: &mut redb::Table<'_, &'static [u8], &'static [u8]>,
        index: &mut aae::Writes,
        digest: &mut Digest,
        limits: &EventLimits,
    ) -> Result<ConflictTally, StoreError> {
        let Some(resolver) = self.resolver else {
            return Ok(self.tally);
        };
        for skey in self.keys {
            let Some((collection, key)) = split_state_key(&skey) else {
                return Err(corrupt("state", "key without separator"));
            };
            let Some(row) = state.get(skey.as_slice())?.map(|g| g.value().to_vec()) else {
                continue;
            };
            let split = resolution::split_row(&row).map_err(|e| corrupt("state", e))?;
            let versions =
                Versions::decode(split.versions, limits).map_err(|e| corrupt("state", e))?;
            if versions.events().len() < 2 {
                continue;
            }
            let r = resolver.resolve(collection, key, &versions);
            *self
                .tally
                .resolutions
                .entry((collection.to_owned(), r.by.clone()))
                .or_default() += 1;
            let new_row = resolution::join_row(split.versions, Some(&r));
            let hash = |row: &[u8]| self.rule.entry(collection, key, row, limits);
            write_row(
                state,
                index,
                digest,
                &skey,
                (hash(&row), hash(&new_row)),
                &new_row,
            )?;
        }
        Ok(self.tally)
    }
}

/// Replaces a state row that exists with `new`, keeping the digest and the anti-entropy sums
/// in step (`hashes`: the old row's and the new row's).
fn write_row(
    state: &mut redb::Table<'_, &'static [u8], &'static [u8]>,
    index: &mut aae::Writes,
    digest: &mut Digest,
    skey: &[u8],
    hashes: (Digest, Digest),
    new: &[u8],
) -> Result<(), StoreError> {
    let (old_hash, new_hash) = hashes;
    if old_hash == new_hash {
        state.insert(skey, new)?;
        return Ok(());
    }
    digest.sub(old_hash);
    digest.add(new_hash);
    index.set(skey, Some(old_hash), new_hash);
    state.insert(skey, new)?;
    Ok(())
}

/// A node's store.
pub struct Store {
    db: Database,
    node: NodeId,
    /// What events and state rows are decoded against (raised, never lowered, by a reload).
    limits: std::sync::RwLock<EventLimits>,
    /// Signs this node's seals and checks its peers'; `None`: seals are unsigned and not
    /// checked (a node without peers, tests, and the benchmark's unauthenticated runs).
    keys: Option<Arc<dyn Keys>>,
    /// The anti-entropy sums (see `aae`).
    aae: aae::Sums,
    /// Conflicts met since the store opened (see [`ConflictTally`]).
    conflicts: std::sync::Mutex<ConflictTally>,
    /// What the anti-entropy index check found at open.
    open_check: aae::OpenCheck,
    /// Whether the anti-entropy sums are kept (always, but for one benchmark).
    fingerprints: bool,
    /// Resolves keys with concurrent versions when they change (`None`: nothing is kept, reads
    /// resolve; tools and tests).
    resolver: Option<Arc<dyn Resolver>>,
    /// How long and how many idempotency records are kept.
    idempotency_window: idempotency::Window,
    /// Idempotency keys held, in memory (see `idempotency.rs`).
    idempotency_index: idempotency::Index,
    /// How state rows hash.
    rule: HashRule,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("node", &self.node)
            .field("signs", &self.keys.is_some())
            .finish_non_exhaustive()
    }
}

fn u64_from(bytes: &[u8], table: &'static str) -> Result<u64, StoreError> {
    let b: [u8; 8] = bytes
        .try_into()
        .map_err(|_| corrupt(table, "expected 8 bytes"))?;
    Ok(u64::from_be_bytes(b))
}

fn hlc_bytes(h: Hlc) -> [u8; 12] {
    let mut out = [0u8; 12];
    out[..8].copy_from_slice(&h.physical_ms.to_be_bytes());
    out[8..].copy_from_slice(&h.logical.to_be_bytes());
    out
}

fn hlc_from(bytes: &[u8]) -> Result<Hlc, StoreError> {
    if bytes.len() != 12 {
        return Err(corrupt("meta", "hlc_last is not 12 bytes"));
    }
    let p = u64_from(&bytes[..8], "meta")?;
    let l = u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    Ok(Hlc::new(p, l))
}

impl Store {
    /// Opens (or creates) the store at `path` for node `node`. Refuses a file that belongs to
    /// another node.
    pub fn open(
        path: &Path,
        node: &NodeId,
        limits: EventLimits,
    ) -> Result<(Store, Resume), StoreError> {
        // redb's default page cache is 1 GiB; a node at an edge site gets a bounded one, so its
        // memory does not grow with the size of the store.
        Store::open_with_rule(path, node, limits, HashRule::default())
    }

    /// [`Store::open`], with rows of some collections hashed on their versions only (see
    /// [`HashRule`]: collections with transforms on apply).
    pub fn open_with_rule(
        path: &Path,
        node: &NodeId,
        limits: EventLimits,
        rule: HashRule,
    ) -> Result<(Store, Resume), StoreError> {
        // redb's default page cache is 1 GiB; a node at an edge site gets a bounded one, so its
        // memory does not grow with the size of the store.
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(path)?;
        Store::init(db, &path.display().to_string(), node, limits, rule)
    }

    /// Opens (or creates) the store kept in `backend`, a redb storage backend, for node `node`:
    /// the same as [`Store::open`] but on storage other than a plain file, for tests (an
    /// in-memory image, a disk that fails on demand) and tools. `name` stands for the storage in
    /// messages (the `path` of [`StoreError::WrongNode`]). Refuses storage that belongs to
    /// another node.
    pub fn open_with_backend(
        backend: impl redb::StorageBackend,
        name: &str,
        node: &NodeId,
        limits: EventLimits,
    ) -> Result<(Store, Resume), StoreError> {
        let db = redb::Builder::new().create_with_backend(backend)?;
        Store::init(db, name, node, limits, HashRule::default())
    }

    /// Shared by the constructors: checks (or records) the node id and the store format, creates
    /// every table, and reads what the node needs to resume.
    fn init(
        db: Database,
        name: &str,
        node: &NodeId,
        limits: EventLimits,
        rule: HashRule,
    ) -> Result<(Store, Resume), StoreError> {
        let txn = db.begin_write()?;
        let rule_changed;
        {
            let mut meta = txn.open_table(META)?;
            // The collections hashed on their versions only, as one line each.
            let wanted: Vec<u8> = rule
                .collections()
                .iter()
                .flat_map(|c| c.bytes().chain(std::iter::once(b'\n')))
                .collect();
            let held = meta.get(META_VERSIONS_ONLY)?.map(|g| g.value().to_vec());
            rule_changed = held.unwrap_or_default() != wanted;
            if rule_changed {
                meta.insert(META_VERSIONS_ONLY, wanted.as_slice())?;
            }
            let stored = meta.get(META_NODE_ID)?.map(|g| g.value().to_vec());
            match stored {
                None => {
                    meta.insert(META_NODE_ID, node.as_str().as_bytes())?;
                    meta.insert(META_STORE_FORMAT, &STORE_FORMAT.to_be_bytes()[..])?;
                }
                Some(stored) if stored != node.as_str().as_bytes() => {
                    return Err(StoreError::WrongNode {
                        path: name.to_owned(),
                        stored: String::from_utf8_lossy(&stored).into_owned(),
                        configured: node.to_string(),
                    });
                }
                Some(_) => {
                    let found = match meta.get(META_STORE_FORMAT)? {
                        Some(g) => u64_from(g.value(), "meta")?,
                        None => return Err(corrupt("meta", "store_format missing")),
                    };
                    if found > STORE_FORMAT {
                        return Err(StoreError::UnsupportedFormat {
                            found,
                            supported: STORE_FORMAT,
                        });
                    }
                    if found < STORE_FORMAT {
                        return Err(StoreError::OldFormat { found });
                    }
                }
            }
            // Create every table so readers never meet a missing one.
            txn.open_table(STATE)?;
            txn.open_table(CHANGELOG)?;
            txn.open_table(FEED)?;
            txn.open_table(ORIGINS)?;
            txn.open_table(DEAD_LETTERS)?;
            txn.open_table(DISAGREEMENTS)?;
            txn.open_table(idempotency::IDEMPOTENCY)?;
            txn.open_table(PEERS)?;
            txn.open_table(COMPACTED)?;
            txn.open_table(CHAINS)?;
            txn.open_table(SEALS)?;
            txn.open_table(CERTS)?;
            txn.open_table(proofs::PROOFS)?;
            txn.open_table(proofs::BLOCKS)?;
        }
        txn.commit()?;
        let (sums, open_check) = aae::open(&db, &limits, &rule, rule_changed)?;
        let idempotency_index =
            idempotency::Index::load(&db.begin_read()?.open_table(idempotency::IDEMPOTENCY)?)?;
        let store = Store {
            db,
            node: node.clone(),
            limits: std::sync::RwLock::new(limits),
            keys: None,
            aae: sums,
            conflicts: std::sync::Mutex::default(),
            open_check,
            fingerprints: true,
            resolver: None,
            idempotency_window: idempotency::Window::default(),
            idempotency_index,
            rule,
        };
        let resume = store.resume()?;
        Ok((store, resume))
    }

    fn resume(&self) -> Result<Resume, StoreError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        let hlc_last = match meta.get(META_HLC)? {
            Some(g) => hlc_from(g.value())?,
            None => Hlc::default(),
        };
        let feed_last = match meta.get(META_FEED_LAST)? {
            Some(g) => u64_from(g.value(), "meta")?,
            None => 0,
        };
        Ok(Resume {
            hlc_last,
            feed_last,
        })
    }

    /// The node this store belongs to.
    pub fn node(&self) -> &NodeId {
        &self.node
    }

    /// This store with `keys` signing this node's seals and checking its peers'.
    pub fn with_keys(mut self, keys: Arc<dyn Keys>) -> Store {
        self.keys = Some(keys);
        self
    }

    /// Keeps idempotency records within `window`.
    pub fn with_idempotency_window(mut self, window: idempotency::Window) -> Store {
        self.idempotency_window = window;
        self
    }

    /// What the idempotency key `key` was recorded with, if it is held.
    pub fn idempotency(&self, key: &str) -> Result<Option<idempotency::Recorded>, StoreError> {
        // A new key (the common case) is answered by the index alone, without a read
        // transaction.
        if !self.idempotency_index.contains(key) {
            return Ok(None);
        }
        let txn = self.db.begin_read()?;
        self.idempotency_index
            .get(&txn.open_table(idempotency::IDEMPOTENCY)?, key)
    }

    /// How many idempotency keys are held.
    pub fn idempotency_count(&self) -> Result<u64, StoreError> {
        Ok(self.idempotency_index.len())
    }

    /// Has `resolver` decide, as each change is applied, what keys with concurrent versions
    /// resolve to; the resolution is kept in the state (see `resolution.rs`).
    pub fn with_resolver(mut self, resolver: Arc<dyn Resolver>) -> Store {
        self.resolver = Some(resolver);
        self
    }

    /// The limits events and state rows are decoded against.
    pub fn limits(&self) -> EventLimits {
        *self.limits.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Raises the limits (a reloaded config). Lower limits are refused: events stored under
    /// the old ones must stay readable.
    pub fn raise_limits(&self, limits: EventLimits) -> Result<(), String> {
        let mut current = self.limits.write().unwrap_or_else(|e| e.into_inner());
        let (c, n) = (&*current, &limits);
        let lower = [
            ("max_event_bytes", n.max_event_bytes < c.max_event_bytes),
            ("max_key_bytes", n.max_key_bytes < c.max_key_bytes),
            ("max_meta_entries", n.max_meta_entries < c.max_meta_entries),
            ("max_meta_bytes", n.max_meta_bytes < c.max_meta_bytes),
            (
                "max_context_entries",
                n.max_context_entries < c.max_context_entries,
            ),
            ("max_value_bytes", n.value.max_bytes < c.value.max_bytes),
            ("max_value_depth", n.value.max_depth < c.value.max_depth),
        ];
        let lowered: Vec<&str> = lower.iter().filter(|(_, l)| *l).map(|(k, _)| *k).collect();
        if !lowered.is_empty() {
            return Err(format!(
                "limits {lowered:?} would be lowered: events stored under the old limits must stay readable (a restart with lower limits checks the store)"
            ));
        }
        *current = limits;
        Ok(())
    }

    fn add_conflicts(&self, tally: ConflictTally) {
        self.conflicts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add(tally);
    }

    /// Conflicts met and how they were resolved since the store opened.
    pub fn conflict_tally(&self) -> ConflictTally {
        self.conflicts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Decides again the kept resolution of every key of `collection` that holds concurrent
    /// versions, with the resolver as it is now (after a config reload changed what resolves
    /// the collection: keys resolved before by the old wiring get what every node with the new
    /// one computes). One transaction over at most `max_rows` rows after `after` (a state key;
    /// `None`: from the collection's first); returns how many rows changed and where to go on
    /// (`None`: the collection is done).
    pub fn re_resolve(
        &self,
        collection: &str,
        after: Option<&[u8]>,
        max_rows: usize,
    ) -> Result<(u64, Option<Vec<u8>>), StoreError> {
        let Some(resolver) = self.resolver.as_deref() else {
            return Ok((0, None));
        };
        let resolves = resolver.resolves(collection);
        let prefix = state_key(collection, b"");
        let start = after.map_or_else(|| prefix.clone(), <[u8]>::to_vec);
        let mut next = None;
        let txn = self.db.begin_write()?;
        let (changed, deltas) = {
            let mut state = txn.open_table(STATE)?;
            let mut meta = txn.open_table(META)?;
            let mut index = aae::Writes::new(self.fingerprints);
            let mut counters = Counters::load(&meta)?;
            let mut rows = Vec::new();
            for row in state.range(start.as_slice()..)? {
                let (k, v) = row?;
                if !k.value().starts_with(&prefix) {
                    break;
                }
                if after == Some(k.value()) {
                    continue;
                }
                if rows.len() == max_rows {
                    next = rows.last().map(|(k, _): &(Vec<u8>, Vec<u8>)| k.clone());
                    break;
                }
                rows.push((k.value().to_vec(), v.value().to_vec()));
            }
            let mut changed = 0;
            for (skey, row) in rows {
                let split = resolution::split_row(&row).map_err(|e| corrupt("state", e))?;
                let versions = Versions::decode(split.versions, &self.limits())
                    .map_err(|e| corrupt("state", e))?;
                if versions.events().len() < 2 {
                    continue;
                }
                let key = &skey[prefix.len()..];
                let r = resolves.then(|| resolver.resolve(collection, key, &versions));
                let new_row = resolution::join_row(split.versions, r.as_ref());
                if new_row == row {
                    continue;
                }
                let hash = |row: &[u8]| self.rule.entry(collection, key, row, &self.limits());
                write_row(
                    &mut state,
                    &mut index,
                    &mut counters.digest,
                    &skey,
                    (hash(&row), hash(&new_row)),
                    &new_row,
                )?;
                changed += 1;
            }
            if changed > 0 {
                counters.save(&mut meta)?;
            }
            let deltas = std::mem::take(&mut index.deltas);
            (changed, deltas)
        };
        txn.commit()?;
        self.aae.apply(&deltas);
        Ok((changed, next))
    }

    /// Has the keys check and take in the certificates that came with `sealed`; Err names the
    /// origin whose certificate was refused, and why.
    fn learn_certs(&self, sealed: Option<seals::Sealed<'_>>) -> Result<(), (NodeId, String)> {
        if let (Some(keys), Some((_, certs))) = (&self.keys, sealed) {
            for (origin, der) in certs {
                keys.learn(origin, der)
                    .map_err(|reason| (origin.clone(), reason))?;
            }
        }
        Ok(())
    }

    /// A seal over this node's chain at `seq`, ending `block`.
    fn seal_own(&self, seq: u64, chain: ChainHash, block: &Block) -> Result<Seal, String> {
        let mut seal = Seal {
            origin: self.node.clone(),
            seq,
            first: block.first,
            chain,
            root: block.root(),
            signature: Vec::new(),
        };
        if let Some(keys) = &self.keys {
            seal.signature = keys.sign(&seal.message())?;
        }
        Ok(seal)
    }

    /// Commits a group of local writes in one durable transaction, in order. Each becomes an
    /// event from this node with the next sequence number, a fresh timestamp from `clock`, and a
    /// causal context that supersedes every version the key holds. All or nothing.
    pub fn commit_local(
        &self,
        writes: Vec<LocalWrite>,
        clock: &mut HlcClock,
        wall_ms: u64,
    ) -> Result<Vec<Committed>, StoreError> {
        self.commit_local_replacing(writes, &[], Sync::Immediate, clock, wall_ms)
    }

    /// [`Store::commit_local`], and in the same transaction removes the dead letters
    /// `dead_letters` (a replay: the events that failed before are committed now, exactly once).
    pub fn commit_local_replacing(
        &self,
        writes: Vec<LocalWrite>,
        dead_letters: &[u64],
        sync: Sync,
        clock: &mut HlcClock,
        wall_ms: u64,
    ) -> Result<Vec<Committed>, StoreError> {
        self.commit_local_checked(writes, dead_letters, sync, clock, wall_ms)
            .map_err(|e| e.error)
    }

    /// [`Store::commit_local_replacing`], giving the writes back when one of them is refused
    /// ([`StoreError::WriteRefused`]: the event it would make could not be read back within the
    /// store's limits, or a version the key holds already claims to supersede it), so that the
    /// caller can commit the others without it. Nothing is written when it fails.
    pub fn commit_local_checked(
        &self,
        writes: Vec<LocalWrite>,
        dead_letters: &[u64],
        sync: Sync,
        clock: &mut HlcClock,
        wall_ms: u64,
    ) -> Result<Vec<Committed>, LocalCommitError> {
        self.commit_local_keyed(writes, dead_letters, &[], sync, clock, wall_ms)
    }

    /// [`Store::commit_local_checked`] that also records each receipt's idempotency key with
    /// its writes' commits, in the same transaction ([`StoreError::KeyInUse`] when one is
    /// recorded already), and removes expired records.
    pub fn commit_local_keyed(
        &self,
        writes: Vec<LocalWrite>,
        dead_letters: &[u64],
        receipts: &[idempotency::Receipt],
        sync: Sync,
        clock: &mut HlcClock,
        wall_ms: u64,
    ) -> Result<Vec<Committed>, LocalCommitError> {
        if writes.is_empty() && dead_letters.is_empty() {
            return Ok(Vec::new());
        }
        let mut made: Vec<Event> = Vec::with_capacity(writes.len());
        let mut rest = writes.into_iter();
        let result = self.commit_local_in(
            &mut rest,
            &mut made,
            dead_letters,
            receipts,
            sync,
            clock,
            wall_ms,
        );
        result.map_err(|error| {
            // Hand every write back, in order: those made into events, then the others.
            let writes = match &error {
                StoreError::WriteRefused { .. } | StoreError::KeyInUse { .. } => {
                    made.into_iter().map(LocalWrite::from).chain(rest).collect()
                }
                _ => Vec::new(),
            };
            LocalCommitError { error, writes }
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn commit_local_in(
        &self,
        writes: &mut std::vec::IntoIter<LocalWrite>,
        made: &mut Vec<Event>,
        dead_letters: &[u64],
        receipts: &[idempotency::Receipt],
        sync: Sync,
        clock: &mut HlcClock,
        wall_ms: u64,
    ) -> Result<Vec<Committed>, StoreError> {
        let limits = self.limits();
        let mut txn = self.db.begin_write()?;
        txn.set_durability(sync.redb())?;
        let mut out = Vec::with_capacity(writes.len());
        let deltas = {
            let mut dead = txn.open_table(DEAD_LETTERS)?;
            for &id in dead_letters {
                if dead.remove(id)?.is_none() {
                    // Replayed already (or never existed): abort, so a replay happens once.
                    return Err(StoreError::NoSuchDeadLetter(id));
                }
            }
            drop(dead);
            let mut state = txn.open_table(STATE)?;
            let mut changelog = txn.open_table(CHANGELOG)?;
            let mut feed = txn.open_table(FEED)?;
            let mut origins = txn.open_table(ORIGINS)?;
            let mut meta = txn.open_table(META)?;
            let mut chains = txn.open_table(CHAINS)?;
            let mut seals_t = txn.open_table(SEALS)?;
            let mut aae_rows = aae::Writes::new(self.fingerprints);
            let mut seq = origins.get(self.node.as_str())?.map_or(0, |g| g.value());
            let (head_seq, mut chain) = seals::head(&chains, &self.node)?;
            if head_seq != seq {
                return Err(corrupt(
                    "chains",
                    format!("this node's chain ends at {head_seq}, its events at {seq}"),
                ));
            }
            // Events and bytes since the last seal: a seal at least every SEAL_EVERY_* of them.
            let (mut unsealed, mut unsealed_bytes) = (0u64, 0usize);
            let mut block = Block::default();
            let Counters {
                mut position,
                mut digest,
                mut entries,
            } = Counters::load(&meta)?;
            let mut event_bytes = Vec::with_capacity(256);
            for w in writes.by_ref() {
                let index = made.len();
                let skey = state_key(&w.collection, &w.key);
                let old = state.get(skey.as_slice())?;
                let (versions, old_hash) = match &old {
                    Some(g) => {
                        let bytes = g.value();
                        let versions =
                            Versions::decode(bytes, &limits).map_err(|e| corrupt("state", e))?;
                        (
                            versions,
                            Some(self.rule.entry(&w.collection, &w.key, bytes, &limits)),
                        )
                    }
                    None => (Versions::new(), None),
                };
                drop(old);
                seq = seq.checked_add(1).ok_or_else(|| StoreError::WriteRefused {
                    index,
                    reason: "this node's sequence numbers are exhausted".into(),
                })?;
                let hlc = clock.now(wall_ms);
                let event = Event {
                    format: FORMAT_VERSION,
                    collection: w.collection,
                    key: w.key,
                    op: if w.value.is_some() {
                        Op::Put
                    } else {
                        Op::Delete
                    },
                    value: w.value,
                    hlc,
                    origin: self.node.clone(),
                    seq,
                    schema: w.schema,
                    meta: w.meta,
                    context: versions.context(),
                    extra: BTreeMap::new(),
                };
                event_bytes.clear();
                event.encode_into(&mut event_bytes);
                // A local write supersedes every version: the key then holds exactly this event.
                // A version whose context already covers this event's dot (a peer's claim that
                // this node wrote more than it did) would make it obsolete: refuse the write
                // rather than lose it.
                let problem = if let Some(v) = versions
                    .events()
                    .iter()
                    .find(|v| v.context.covers(&event.dot()))
                {
                    Some(format!(
                        "key {:?} of collection {:?} holds version {}:{} whose causal context claims this node's sequence number {} already; this node never issued it (a peer sent a forged or corrupt context)",
                        String::from_utf8_lossy(&event.key),
                        event.collection,
                        v.origin,
                        v.seq,
                        event.seq
                    ))
                } else {
                    // An event that could not be read back would stop every reader of the key
                    // and of the changelog: never write one.
                    Event::decode(&event_bytes, &limits).err().map(|e| {
                        format!("the event could not be read back within the store's limits: {e}")
                    })
                };
                if let Some(reason) = problem {
                    made.push(event);
                    return Err(StoreError::WriteRefused { index, reason });
                }
                position += 1;
                match old_hash {
                    Some(h) => digest.sub(h),
                    None => entries += 1,
                }
                changelog.insert(
                    log_key(self.node.as_str(), seq).as_slice(),
                    event_bytes.as_slice(),
                )?;
                // A run between seals stays within SEAL_EVERY_BYTES, or is one event alone: seal
                // what came before an event that would push it past.
                if unsealed > 0 && unsealed_bytes + event_bytes.len() > SEAL_EVERY_BYTES {
                    let seal = self
                        .seal_own(seq - 1, chain, &block)
                        .map_err(|reason| StoreError::WriteRefused { index, reason })?;
                    seals::put(&mut seals_t, &seal)?;
                    (unsealed, unsealed_bytes) = (0, 0);
                    block.clear();
                }
                let leaf = event_leaf(&event_bytes);
                chain = chain_link(&chain, &leaf);
                block.push(seq, leaf);
                unsealed += 1;
                unsealed_bytes += event_bytes.len();
                if unsealed >= SEAL_EVERY_EVENTS || unsealed_bytes >= SEAL_EVERY_BYTES {
                    let seal = self
                        .seal_own(seq, chain, &block)
                        .map_err(|reason| StoreError::WriteRefused { index, reason })?;
                    seals::put(&mut seals_t, &seal)?;
                    (unsealed, unsealed_bytes) = (0, 0);
                    block.clear();
                }
                let new_bytes = Versions::encode_single(&event_bytes);
                let new_hash = self
                    .rule
                    .entry(&event.collection, &event.key, &new_bytes, &limits);
                digest.add(new_hash);
                aae_rows.set(&skey, old_hash, new_hash);
                state.insert(skey.as_slice(), new_bytes.as_slice())?;
                out.push(Committed { seq, hlc, position });
                made.push(event);
            }
            if let Some(first) = out.first() {
                if unsealed > 0 {
                    let seal = self.seal_own(seq, chain, &block).map_err(|reason| {
                        StoreError::WriteRefused {
                            index: out.len() - 1,
                            reason,
                        }
                    })?;
                    seals::put(&mut seals_t, &seal)?;
                }
                chains.insert(
                    self.node.as_str(),
                    seals::encode_head(seq, &chain).as_slice(),
                )?;
                feed.insert(
                    first.position,
                    (self.node.as_str(), first.seq, out.len() as u64),
                )?;
                origins.insert(self.node.as_str(), seq)?;
                Counters {
                    position,
                    digest,
                    entries,
                }
                .save(&mut meta)?;
                meta.insert(META_HLC, &hlc_bytes(clock.last())[..])?;
            }
            let keys = if receipts.is_empty() {
                None
            } else {
                Some(self.idempotency_index.record(
                    &mut txn.open_table(idempotency::IDEMPOTENCY)?,
                    receipts,
                    &out,
                    self.idempotency_window,
                    wall_ms,
                )?)
            };
            (std::mem::take(&mut aae_rows.deltas), keys)
        };
        txn.commit()?;
        self.aae.apply(&deltas.0);
        if let Some(keys) = deltas.1 {
            self.idempotency_index.apply(keys);
        }
        Ok(out)
    }

    /// Applies events written at other nodes (received by replication) in one durable
    /// transaction. Idempotent: an event already held changes nothing. Each origin's events must
    /// come without gaps (sequence `n + 1` after `n`), else nothing is applied and the error says
    /// which event is missing. Returns, per event, what it did to its key's versions
    /// ([`Applied::Duplicate`] also for an event already in the changelog).
    pub fn apply_events<E: Into<EncodedEvent>>(
        &self,
        events: Vec<E>,
    ) -> Result<Vec<Applied>, StoreError> {
        let events = events.into_iter().map(Received::as_received).collect();
        Ok(self
            .apply_in(events, None, &[], Sync::Immediate, None)?
            .applied)
    }

    /// [`Store::apply_events`] for events received from peers: `clock` observes each event's
    /// hybrid clock timestamp and its last value is saved in the same transaction, so the clock
    /// never goes back across a restart. A timestamp too far ahead of `wall_ms` is still applied
    /// (refusing it would stall its origin forever and break convergence) but does not move the
    /// clock; it is counted in the returned [`RemoteApply::skewed`]. Each event's changelog
    /// entry is the event as received; its effect on the state is its [`OnApply`]. The dead
    /// letters `dead_letters` (records of transforms that failed on these events) are written in
    /// the same transaction.
    pub fn apply_remote(
        &self,
        events: Vec<Received>,
        dead_letters: &[Vec<u8>],
        sync: Sync,
        clock: &mut HlcClock,
        wall_ms: u64,
    ) -> Result<RemoteApply, StoreError> {
        self.apply_observed(events, None, dead_letters, sync, clock, wall_ms)
    }

    /// Has `clock` observe the events' timestamps, then applies them (see
    /// [`Store::apply_remote`]).
    fn apply_observed(
        &self,
        events: Vec<Received>,
        sealed: Option<seals::Sealed<'_>>,
        dead_letters: &[Vec<u8>],
        sync: Sync,
        clock: &mut HlcClock,
        wall_ms: u64,
    ) -> Result<RemoteApply, StoreError> {
        let mut skewed = 0;
        for r in &events {
            if clock.observe(r.event.hlc, wall_ms).is_err() {
                skewed += 1;
            }
        }
        let mut out = self.apply_in(events, sealed, dead_letters, sync, Some(clock.last()))?;
        out.skewed = skewed;
        Ok(out)
    }

    /// [`Store::apply_remote`] for events whose origins vouch for them: each origin's events in
    /// the batch must end at one of `seals`, every seal must match the origin's chain over the
    /// events (from the chain head this store holds) and verify with the origin's certificate
    /// (`certs` brings certificates the store may lack). Otherwise nothing is applied:
    /// [`StoreError::Forged`].
    #[allow(clippy::too_many_arguments)]
    pub fn apply_sealed(
        &self,
        events: Vec<Received>,
        seals: &[Seal],
        certs: &[(NodeId, Vec<u8>)],
        dead_letters: &[Vec<u8>],
        sync: Sync,
        clock: &mut HlcClock,
        wall_ms: u64,
    ) -> Result<RemoteApply, StoreError> {
        self.apply_observed(
            events,
            Some((seals, certs)),
            dead_letters,
            sync,
            clock,
            wall_ms,
        )
    }

    /// The seals of `origin` after `after` up to `upto`, in order.
    pub fn seals(&self, origin: &NodeId, after: u64, upto: u64) -> Result<Vec<Seal>, StoreError> {
        if after >= upto {
            return Ok(Vec::new());
        }
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SEALS)?;
        let (lo, hi) = (
            log_key(origin.as_str(), after + 1),
            log_key(origin.as_str(), upto),
        );
        let mut out = Vec::new();
        for row in table.range(lo.as_slice()..=hi.as_slice())? {
            let (k, v) = row?;
            let seq = log_seq(origin.as_str(), k.value())
                .ok_or_else(|| corrupt("seals", "a key of another origin in range"))?;
            out.push(seals::decode(origin, seq, v.value())?);
        }
        Ok(out)
    }

    /// Signs this node's own seals made while it had no keys (before it had a TLS identity), so
    /// that peers can check its earlier events too. Returns how many it signed.
    pub fn sign_unsigned_seals(&self) -> Result<u64, StoreError> {
        let Some(keys) = &self.keys else {
            return Ok(0);
        };
        let mut signed = 0;
        loop {
            let txn = self.db.begin_write()?;
            let mut n = 0;
            {
                let mut table = txn.open_table(SEALS)?;
                let (lo, hi) = (
                    log_key(self.node.as_str(), 0),
                    log_key(self.node.as_str(), u64::MAX),
                );
                let mut unsigned = Vec::new();
                for row in table.range(lo.as_slice()..=hi.as_slice())? {
                    let (k, v) = row?;
                    if v.value().len() == 72 {
                        let seq = log_seq(self.node.as_str(), k.value())
                            .ok_or_else(|| corrupt("seals", "a key of another origin in range"))?;
                        unsigned.push(seals::decode(&self.node, seq, v.value())?);
                        if unsigned.len() == 10_000 {
                            break;
                        }
                    }
                }
                for mut seal in unsigned {
                    seal.signature = keys
                        .sign(&seal.message())
                        .map_err(|e| corrupt("seals", format!("cannot sign: {e}")))?;
                    seals::put(&mut table, &seal)?;
                    n += 1;
                }
            }
            txn.commit()?;
            signed += n;
            if n < 10_000 {
                return Ok(signed);
            }
        }
    }

    /// The first seal of `origin` after `after`, if any.
    pub fn next_seal(&self, origin: &NodeId, after: u64) -> Result<Option<Seal>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SEALS)?;
        let (lo, hi) = (
            log_key(origin.as_str(), after.saturating_add(1)),
            log_key(origin.as_str(), u64::MAX),
        );
        let mut rows = table.range(lo.as_slice()..=hi.as_slice())?;
        match rows.next() {
            Some(row) => {
                let (k, v) = row?;
                let seq = log_seq(origin.as_str(), k.value())
                    .ok_or_else(|| corrupt("seals", "a key of another origin in range"))?;
                Ok(Some(seals::decode(origin, seq, v.value())?))
            }
            None => Ok(None),
        }
    }

    /// The certificate (DER) of `origin` this store learnt from peers, if any.
    pub fn cert(&self, origin: &NodeId) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(CERTS)?;
        Ok(table.get(origin.as_str())?.map(|g| g.value().to_vec()))
    }

    /// Every certificate this store learnt from peers, by origin.
    pub fn certs(&self) -> Result<Vec<(NodeId, Vec<u8>)>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(CERTS)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (k, v) = row?;
            let origin = NodeId::parse(k.value()).map_err(|e| corrupt("certs", e))?;
            out.push((origin, v.value().to_vec()));
        }
        Ok(out)
    }

    /// Makes every earlier [`Sync::Deferred`] commit durable (an empty immediate commit).
    pub fn sync(&self) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(redb::Durability::Immediate)?;
        txn.commit()?;
        Ok(())
    }

    /// Saves what a peer acknowledged holding (per origin, the highest sequence number), without
    /// waiting for the disk: a cursor is advice (status, lag), never what a session resumes from
    /// (the peer's `Hello` is), so losing the latest one in a crash costs nothing.
    pub fn save_peer_cursor(
        &self,
        peer: &str,
        have: &BTreeMap<String, u64>,
    ) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(redb::Durability::None)?;
        {
            let mut peers = txn.open_table(PEERS)?;
            let mut bytes = Vec::new();
            let mut e = minicbor::Encoder::new(&mut bytes);
            e.map(have.len() as u64).map_err(|e| corrupt("peers", e))?;
            for (origin, seq) in have {
                e.str(origin).map_err(|e| corrupt("peers", e))?;
                e.u64(*seq).map_err(|e| corrupt("peers", e))?;
            }
            peers.insert(peer, bytes.as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Every peer's saved cursor (see [`Store::save_peer_cursor`]).
    pub fn peer_cursors(&self) -> Result<BTreeMap<String, BTreeMap<String, u64>>, StoreError> {
        let txn = self.db.begin_read()?;
        let peers = txn.open_table(PEERS)?;
        let mut out = BTreeMap::new();
        for row in peers.iter()? {
            let (k, v) = row?;
            let mut d = minicbor::Decoder::new(v.value());
            let n = d
                .map()
                .map_err(|e| corrupt("peers", e))?
                .ok_or_else(|| corrupt("peers", "indefinite map"))?;
            let mut have = BTreeMap::new();
            for _ in 0..n {
                let origin = d.str().map_err(|e| corrupt("peers", e))?.to_owned();
                let seq = d.u64().map_err(|e| corrupt("peers", e))?;
                have.insert(origin, seq);
            }
            out.insert(k.value().to_owned(), have);
        }
        Ok(out)
    }

    /// Applies `events` (see [`Store::apply_sealed`]); with `sealed` `None` the events are
    /// trusted (tests, tools): their chains are computed and an unsigned seal ends each run.
    fn apply_in(
        &self,
        events: Vec<Received>,
        sealed: Option<seals::Sealed<'_>>,
        dead_letters: &[Vec<u8>],
        sync: Sync,
        hlc_last: Option<Hlc>,
    ) -> Result<RemoteApply, StoreError> {
        let limits = self.limits();
        let forged = |origin: &NodeId, seq: u64, reason: String| StoreError::Forged {
            origin: origin.to_string(),
            seq,
            reason,
        };
        // Certificates first: the seals below may need them.
        self.learn_certs(sealed)
            .map_err(|(origin, reason)| forged(&origin, 0, format!("its certificate: {reason}")))?;
        let seal_at: BTreeMap<(&str, u64), &Seal> = sealed
            .map(|(seals, _)| seals)
            .unwrap_or_default()
            .iter()
            .map(|s| ((s.origin.as_str(), s.seq), s))
            .collect();
        let mut txn = self.db.begin_write()?;
        txn.set_durability(sync.redb())?;
        let mut out = Vec::with_capacity(events.len());
        let mut dead_ids = Vec::with_capacity(dead_letters.len());
        let tally;
        let (held, feed_last, forks, deltas) = {
            let mut dead = txn.open_table(DEAD_LETTERS)?;
            let first = dead.last()?.map_or(1, |(k, _)| k.value() + 1);
            for (id, record) in (first..).zip(dead_letters) {
                dead.insert(id, record.as_slice())?;
                dead_ids.push(id);
            }
            drop(dead);
            let mut state = txn.open_table(STATE)?;
            let mut changelog = txn.open_table(CHANGELOG)?;
            let mut feed = txn.open_table(FEED)?;
            let mut origins = txn.open_table(ORIGINS)?;
            let mut meta = txn.open_table(META)?;
            let mut chains = txn.open_table(CHAINS)?;
            let mut seals_t = txn.open_table(SEALS)?;
            let mut index = aae::Writes::new(self.fingerprints);
            let mut unresolved = Unresolved::new(self.resolver.as_deref(), &self.rule);
            seals::put_certs(&txn, sealed)?;
            // Before anything is written, one pass walks each origin's chain over its new
            // events (their canonical bytes, as received), checking the batch's seals on the way: a seal that
            // does not verify is a forgery (nothing is applied); one that verifies but that
            // the events do not chain to from this node's history is a fork (two histories the
            // origin signed) or events changed under a genuine seal; the two look alike here.
            // That origin's events are left out, the rest applied.
            let mut forks: BTreeMap<NodeId, Fork> = BTreeMap::new();
            let mut walks: BTreeMap<NodeId, ChainWalk<'_>> = BTreeMap::new();
            for r in &events {
                let e = &r.event;
                if !forks.contains_key(&e.origin) {
                    if !walks.contains_key(&e.origin) {
                        let held = origins.get(e.origin.as_str())?.map_or(0, |g| g.value());
                        let (head, chain) = seals::head(&chains, &e.origin)?;
                        if head != held {
                            return Err(corrupt(
                                "chains",
                                format!(
                                    "{}'s chain ends at {head}, its events at {held}",
                                    e.origin
                                ),
                            ));
                        }
                        walks.insert(e.origin.clone(), ChainWalk::new(held, chain));
                    }
                    if let Some(w) = walks.get_mut(&e.origin)
                        && Some(e.seq) == w.seq.checked_add(1)
                    {
                        w.seq = e.seq;
                        let leaf = event_leaf(e.bytes());
                        w.chain = chain_link(&w.chain, &leaf);
                        w.block.push(e.seq, leaf);
                        if let Some(&seal) = seal_at.get(&(e.origin.as_str(), e.seq)) {
                            let signed = match &self.keys {
                                Some(keys) => {
                                    keys.verify(&e.origin, e.seq, &seal.message(), &seal.signature)
                                }
                                None if seal.chain == w.chain => Ok(()),
                                None => {
                                    Err("its seal's chain hash does not match the events"
                                        .to_owned())
                                }
                            };
                            if let Err(reason) = signed {
                                return Err(forged(&e.origin, e.seq, reason));
                            }
                            if seal.chain == w.chain {
                                // The chain is the origin's; a block it describes wrongly
                                // would make every proof of these events fail later.
                                if seal.first != w.block.first || seal.root != w.block.root() {
                                    return Err(forged(
                                        &e.origin,
                                        e.seq,
                                        "its seal names another block than its events".into(),
                                    ));
                                }
                                w.block.clear();
                                w.sealed.push(seal);
                            } else {
                                forks.insert(
                                    e.origin.clone(),
                                    Fork {
                                        origin: e.origin.to_string(),
                                        seq: e.seq,
                                        held_chain: w.chain,
                                        received_chain: seal.chain,
                                    },
                                );
                            }
                        }
                    }
                }
            }
            let Counters {
                mut position,
                mut digest,
                mut entries,
            } = Counters::load(&meta)?;
            // The feed run being built: (first position, origin, first seq, count).
            let mut run: Option<(u64, String, u64, u64)> = None;
            // Per origin seen in the batch, the highest sequence number held (saved at the end).
            let mut held_by_origin: BTreeMap<String, u64> = BTreeMap::new();
            for Received { event, on_apply } in events {
                if forks.contains_key(&event.origin) {
                    // The other history of a forked origin: not this node's to take.
                    out.push(Applied::Obsolete);
                    continue;
                }
                // Each origin's events up to `held` are held (in the changelog from its
                // compacted floor on, in the state through a snapshot below it), so an event is
                // already held exactly when its sequence number is at most `held`.
                let held = match held_by_origin.get(event.origin.as_str()) {
                    Some(&h) => h,
                    None => {
                        let h = origins.get(event.origin.as_str())?.map_or(0, |g| g.value());
                        held_by_origin.insert(event.origin.to_string(), h);
                        h
                    }
                };
                if event.seq <= held {
                    out.push(Applied::Duplicate);
                    continue;
                }
                if Some(event.seq) != held.checked_add(1) {
                    return Err(StoreError::Gap {
                        origin: event.origin.to_string(),
                        seq: event.seq,
                        expected: held.saturating_add(1),
                    });
                }
                let lkey = log_key(event.origin.as_str(), event.seq);
                changelog.insert(lkey.as_slice(), event.bytes())?;
                if let Some(h) = held_by_origin.get_mut(event.origin.as_str()) {
                    *h = event.seq;
                }
                position += 1;
                run = match run {
                    Some((start, origin, first, count))
                        if origin == event.origin.as_str() && first + count == event.seq =>
                    {
                        Some((start, origin, first, count + 1))
                    }
                    other => {
                        if let Some((start, origin, first, count)) = other {
                            feed.insert(start, (origin.as_str(), first, count))?;
                        }
                        Some((position, event.origin.to_string(), event.seq, 1))
                    }
                };
                let event = match on_apply {
                    OnApply::AsReceived => event,
                    OnApply::Value(value) => {
                        // This node's version of the event (a transform on apply decided it):
                        // the one event encoded again on this path.
                        let mut event = event.into_event();
                        event.op = if value.is_some() { Op::Put } else { Op::Delete };
                        event.value = value;
                        EncodedEvent::new(event)
                    }
                    OnApply::Dropped => {
                        out.push(Applied::Obsolete);
                        continue;
                    }
                };
                out.push(
                    apply_to_state(
                        &mut state,
                        &mut index,
                        &mut digest,
                        &mut entries,
                        &limits,
                        event,
                        false,
                        &mut unresolved,
                    )?
                    .0,
                );
            }
            tally = unresolved.resolve(&mut state, &mut index, &mut digest, &limits)?;
            // Each origin given new events ends at one of the batch's seals (trusted events: an
            // unsigned seal ends the run); its chain head moves to the end.
            for (origin, w) in &walks {
                if w.seq == w.held || forks.contains_key(origin) {
                    continue;
                }
                for seal in &w.sealed {
                    seals::put(&mut seals_t, seal)?;
                }
                let sealed_upto = w.sealed.last().map_or(w.held, |s| s.seq);
                if sealed_upto != w.seq {
                    if sealed.is_some() {
                        return Err(forged(
                            origin,
                            w.seq,
                            format!(
                                "the batch ends at {}, after its last seal (at {sealed_upto})",
                                w.seq
                            ),
                        ));
                    }
                    seals::put(
                        &mut seals_t,
                        &Seal {
                            origin: origin.clone(),
                            seq: w.seq,
                            first: w.block.first,
                            chain: w.chain,
                            root: w.block.root(),
                            signature: Vec::new(),
                        },
                    )?;
                }
                chains.insert(
                    origin.as_str(),
                    seals::encode_head(w.seq, &w.chain).as_slice(),
                )?;
            }
            for (origin, seq) in &held_by_origin {
                origins.insert(origin.as_str(), *seq)?;
            }
            if let Some((start, origin, first, count)) = run {
                feed.insert(start, (origin.as_str(), first, count))?;
                Counters {
                    position,
                    digest,
                    entries,
                }
                .save(&mut meta)?;
            }
            if let Some(hlc) = hlc_last {
                meta.insert(META_HLC, &hlc_bytes(hlc)[..])?;
            }
            (
                held_by_origin,
                position,
                forks,
                std::mem::take(&mut index.deltas),
            )
        };
        txn.commit()?;
        self.aae.apply(&deltas);
        self.add_conflicts(tally);
        Ok(RemoteApply {
            applied: out,
            dead_letters: dead_ids,
            held,
            feed_last,
            skewed: 0,
            forks: forks.into_values().collect(),
        })
    }

    /// The versions of one key and its kept resolution, if any (see `resolution.rs`).
    pub fn get_resolved(
        &self,
        collection: &str,
        key: &[u8],
    ) -> Result<(Versions, Option<Resolution>), StoreError> {
        let txn = self.db.begin_read()?;
        let state = txn.open_table(STATE)?;
        match state.get(state_key(collection, key).as_slice())? {
            Some(g) => self.decode_row(g.value()),
            None => Ok((Versions::new(), None)),
        }
    }

    /// A state row's versions and resolution.
    fn decode_row(&self, row: &[u8]) -> Result<(Versions, Option<Resolution>), StoreError> {
        let split = resolution::split_row(row).map_err(|e| corrupt("state", e))?;
        let versions =
            Versions::decode(split.versions, &self.limits()).map_err(|e| corrupt("state", e))?;
        let resolution = split
            .resolution
            .map(|r| Resolution::decode(r, versions.events().len(), &self.limits().value))
            .transpose()
            .map_err(|e| corrupt("state", e))?;
        Ok((versions, resolution))
    }

    /// The versions of one key (empty if the key was never written).
    pub fn get(&self, collection: &str, key: &[u8]) -> Result<Versions, StoreError> {
        let txn = self.db.begin_read()?;
        let state = txn.open_table(STATE)?;
        match state.get(state_key(collection, key).as_slice())? {
            Some(g) => Versions::decode(g.value(), &self.limits()).map_err(|e| corrupt("state", e)),
            None => Ok(Versions::new()),
        }
    }

    /// One page of the live keys of a collection, in key order.
    pub fn scan(
        &self,
        collection: &str,
        range: &ScanRange,
        limit: usize,
    ) -> Result<ScanPage, StoreError> {
        assert!(limit > 0, "a scan page holds at least one key");
        let txn = self.db.begin_read()?;
        let state = txn.open_table(STATE)?;
        let mut lower: Vec<u8> = range.prefix.clone();
        if let Some(start) = &range.start {
            lower = lower.max(start.clone());
        }
        let (lower_key, skip_equal) = match &range.after {
            Some(after) if *after >= lower => (state_key(collection, after), true),
            _ => (state_key(collection, &lower), false),
        };
        let mut entries = Vec::new();
        let mut resolutions = BTreeMap::new();
        let mut last_seen = None;
        for row in state.range(lower_key.as_slice()..)? {
            let (k, v) = row?;
            if skip_equal && k.value() == lower_key.as_slice() {
                continue;
            }
            let Some((coll, key)) = split_state_key(k.value()) else {
                return Err(corrupt("state", "key without separator"));
            };
            if coll != collection || !key.starts_with(&range.prefix) {
                return Ok(ScanPage {
                    entries,
                    resolutions,
                    next: None,
                });
            }
            if range.end.as_deref().is_some_and(|end| key >= end) {
                return Ok(ScanPage {
                    entries,
                    resolutions,
                    next: None,
                });
            }
            if entries.len() == limit {
                return Ok(ScanPage {
                    entries,
                    resolutions,
                    next: last_seen,
                });
            }
            last_seen = Some(key.to_vec());
            let (versions, resolution) = self.decode_row(v.value())?;
            if versions.lww_value().is_some() || versions.events().len() > 1 {
                if let Some(r) = resolution {
                    resolutions.insert(key.to_vec(), r);
                }
                entries.push((key.to_vec(), versions));
            }
        }
        Ok(ScanPage {
            entries,
            resolutions,
            next: None,
        })
    }

    /// Events of this node's feed after position `after`, at most `limit`, with their positions.
    pub fn feed(&self, after: u64, limit: usize) -> Result<Vec<(u64, EncodedEvent)>, StoreError> {
        let txn = self.db.begin_read()?;
        let feed = txn.open_table(FEED)?;
        let changelog = txn.open_table(CHANGELOG)?;
        let floor = feed_floor(&txn.open_table(META)?)?;
        if after < floor {
            return Err(StoreError::FeedCompacted { floor });
        }
        let first = after.saturating_add(1);
        // The run holding `first` starts at or before it.
        let start = match feed.range(..=first)?.next_back() {
            Some(row) => row?.0.value(),
            None => first,
        };
        let mut out = Vec::new();
        for row in feed.range(start..)? {
            let (run_start, run) = row?;
            let run_start = run_start.value();
            let (origin, first_seq, count) = run.value();
            for i in first.saturating_sub(run_start)..count {
                if out.len() == limit {
                    return Ok(out);
                }
                let (pos, seq) = (run_start + i, first_seq + i);
                let bytes = changelog
                    .get(log_key(origin, seq).as_slice())?
                    .ok_or_else(|| {
                        corrupt(
                            "feed",
                            format!("position {pos} names missing event {origin}:{seq}"),
                        )
                    })?;
                let event = EncodedEvent::decode_slice(bytes.value(), &self.limits())
                    .map_err(|e| corrupt("changelog", e))?;
                out.push((pos, event));
            }
        }
        Ok(out)
    }

    /// Events from `origin` with sequence numbers after `after`, at most `limit`, in order.
    pub fn changelog(
        &self,
        origin: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<EncodedEvent>, StoreError> {
        let txn = self.db.begin_read()?;
        let changelog = txn.open_table(CHANGELOG)?;
        let floor = txn
            .open_table(COMPACTED)?
            .get(origin)?
            .map_or(0, |g| g.value());
        if after < floor {
            return Err(StoreError::ChangelogCompacted {
                origin: origin.to_owned(),
                floor,
            });
        }
        let mut out = Vec::new();
        let from = log_key(origin, after.saturating_add(1));
        let to = log_key(origin, u64::MAX);
        for row in changelog
            .range(from.as_slice()..=to.as_slice())?
            .take(limit)
        {
            let (_, v) = row?;
            out.push(
                EncodedEvent::decode_slice(v.value(), &self.limits())
                    .map_err(|e| corrupt("changelog", e))?,
            );
        }
        Ok(out)
    }

    /// The hash ([`event_hash`]) of the stored bytes of each `(origin, seq)` asked for, `None`
    /// where the changelog does not hold it (never written, or compacted). One read transaction.
    pub fn event_hashes(
        &self,
        wanted: &[(&str, u64)],
    ) -> Result<Vec<Option<[u8; 32]>>, StoreError> {
        let txn = self.db.begin_read()?;
        let changelog = txn.open_table(CHANGELOG)?;
        let mut out = Vec::with_capacity(wanted.len());
        for (origin, seq) in wanted {
            let row = changelog.get(log_key(origin, *seq).as_slice())?;
            out.push(row.map(|g| event_hash(g.value())));
        }
        Ok(out)
    }

    /// Summary counters and the digest.
    pub fn status(&self) -> Result<StoreStatus, StoreError> {
        Store::status_in(&self.db.begin_read()?)
    }

    /// [`Store::status`] as of the snapshot `txn` reads.
    fn status_in(txn: &ReadTransaction) -> Result<StoreStatus, StoreError> {
        let meta = txn.open_table(META)?;
        let origins_t = txn.open_table(ORIGINS)?;
        let dead = txn.open_table(DEAD_LETTERS)?;
        let counters = Counters::load(&meta)?;
        let mut origins = BTreeMap::new();
        for row in origins_t.iter()? {
            let (k, v) = row?;
            origins.insert(k.value().to_owned(), v.value());
        }
        let mut compacted = BTreeMap::new();
        for row in txn.open_table(COMPACTED)?.iter()? {
            let (k, v) = row?;
            compacted.insert(k.value().to_owned(), v.value());
        }
        Ok(StoreStatus {
            digest: counters.digest,
            state_entries: counters.entries,
            feed_last: counters.position,
            origins,
            hlc_last: match meta.get(META_HLC)? {
                Some(g) => hlc_from(g.value())?,
                None => Hlc::default(),
            },
            dead_letters: dead.len()?,
            compacted,
            feed_floor: feed_floor(&meta)?,
        })
    }

    /// Recomputes the digest from the whole state table (to check the incremental one).
    pub fn recompute_digest(&self) -> Result<Digest, StoreError> {
        self.recompute_digest_in(&self.db.begin_read()?)
    }

    /// [`Store::recompute_digest`] as of the snapshot `txn` reads.
    fn recompute_digest_in(&self, txn: &ReadTransaction) -> Result<Digest, StoreError> {
        let state = txn.open_table(STATE)?;
        let mut digest = Digest::default();
        for row in state.iter()? {
            let (k, v) = row?;
            let (coll, key) = split_state_key(k.value())
                .ok_or_else(|| corrupt("state", "key without separator"))?;
            digest.add(self.rule.entry(coll, key, v.value(), &self.limits()));
        }
        Ok(digest)
    }

    /// Appends a dead-letter record (opaque bytes; the plugin runtime defines their content) and
    /// returns its id.
    pub fn add_dead_letter(&self, record: &[u8]) -> Result<u64, StoreError> {
        let txn = self.db.begin_write()?;
        let id;
        {
            let mut dead = txn.open_table(DEAD_LETTERS)?;
            id = dead.last()?.map_or(1, |(k, _)| k.value() + 1);
            dead.insert(id, record)?;
        }
        txn.commit()?;
        Ok(id)
    }

    /// Removes dead letter `id`; whether it was there.
    pub fn remove_dead_letter(&self, id: u64) -> Result<bool, StoreError> {
        let txn = self.db.begin_write()?;
        let removed = txn.open_table(DEAD_LETTERS)?.remove(id)?.is_some();
        txn.commit()?;
        Ok(removed)
    }

    /// Dead-letter records with ids after `after`, at most `limit`.
    pub fn dead_letters(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let txn = self.db.begin_read()?;
        let dead = txn.open_table(DEAD_LETTERS)?;
        let mut out = Vec::new();
        for row in dead.range((after.saturating_add(1))..)?.take(limit) {
            let (k, v) = row?;
            out.push((k.value(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// The disagreements recorded after `after`, at most `limit`, with their ids.
    pub fn disagreements(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, resolution::Disagreement)>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(DISAGREEMENTS)?;
        let mut out = Vec::new();
        for row in table.range((after.saturating_add(1))..)?.take(limit) {
            let (k, v) = row?;
            let d = resolution::Disagreement::decode(v.value())
                .map_err(|e| corrupt("disagreements", e))?;
            out.push((k.value(), d));
        }
        Ok(out)
    }

    /// How many disagreements are recorded.
    pub fn disagreements_count(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(DISAGREEMENTS)?.len()?)
    }

    /// Checks invariants across tables: the feed's runs are consecutive up to its last position
    /// (runs at or below the feed floor may be missing: compaction removed them),
    /// every feed entry above its origin's compacted floor names an event in the changelog,
    /// every origin's changelog holds exactly the events after its compacted floor up to its
    /// recorded highest sequence, and the incremental digest equals a full recomputation.
    /// Returns a description of the first violation found. Every check reads one snapshot, so
    /// commits running meanwhile cannot make a consistent store look inconsistent.
    pub fn verify(&self) -> Result<Result<(), String>, StoreError> {
        let txn = self.db.begin_read()?;
        let status = Store::status_in(&txn)?;
        let feed = txn.open_table(FEED)?;
        let changelog = txn.open_table(CHANGELOG)?;
        let chains = txn.open_table(CHAINS)?;
        let seals_t = txn.open_table(SEALS)?;
        let compacted_of = |o: &str| status.compacted.get(o).copied().unwrap_or(0);
        // Positions up to the floor may be missing (compacted runs); above it none may be.
        let floor = status.feed_floor;
        let mut expected = 1;
        for row in feed.iter()? {
            let (start, run) = row?;
            let start = start.value();
            if start != expected && !(start > expected && start - 1 <= floor) {
                return Ok(Err(format!(
                    "feed gap: expected position {expected}, found {start} (floor {floor})"
                )));
            }
            let (origin, first_seq, count) = run.value();
            for seq in (compacted_of(origin) + 1).max(first_seq)..first_seq + count {
                if changelog.get(log_key(origin, seq).as_slice())?.is_none() {
                    return Ok(Err(format!(
                        "feed run at {start} names missing event {origin}:{seq}"
                    )));
                }
            }
            expected = start + count;
        }
        if expected - 1 != status.feed_last
            && !(expected - 1 < status.feed_last && status.feed_last <= floor)
        {
            return Ok(Err(format!(
                "feed ends at {} but meta says {}",
                expected - 1,
                status.feed_last
            )));
        }
        for (origin, &last) in &status.origins {
            let floor = compacted_of(origin);
            if floor > last {
                return Ok(Err(format!(
                    "{origin} compacted up to {floor} but held only up to {last}"
                )));
            }
            let mut want = floor + 1;
            let (from, to) = (log_key(origin, 0), log_key(origin, u64::MAX));
            for row in changelog.range(from.as_slice()..=to.as_slice())? {
                let (k, _) = row?;
                let seq = log_seq(origin, k.value())
                    .ok_or_else(|| corrupt("changelog", "key of another origin in range"))?;
                if seq != want {
                    return Ok(Err(format!(
                        "changelog gap for origin {origin}: expected {want}, found {seq}"
                    )));
                }
                want += 1;
            }
            if want - 1 != last {
                return Ok(Err(format!(
                    "changelog of {origin} ends at {} but origins says {last}",
                    want - 1
                )));
            }
            // The chain head is at the have, and a seal proves it (see `seals`).
            let id = NodeId::parse(origin).map_err(|e| corrupt("origins", e))?;
            let (head, chain) = seals::head(&chains, &id)?;
            if last > 0 && head != last {
                return Ok(Err(format!(
                    "{origin}'s chain ends at {head} but its events at {last}"
                )));
            }
            if last > 0 {
                let seal = match seals_t.get(log_key(origin, last).as_slice())? {
                    Some(g) => seals::decode(&id, last, g.value())?,
                    None => {
                        return Ok(Err(format!("no seal of {origin} at its have {last}")));
                    }
                };
                if seal.chain != chain {
                    return Ok(Err(format!(
                        "{origin}'s seal at {last} does not match its chain head"
                    )));
                }
            }
        }
        // Every version whose event left the changelog is proven by a kept proof or block.
        let state = txn.open_table(STATE)?;
        let proofs_t = txn.open_table(proofs::PROOFS)?;
        let blocks_t = txn.open_table(proofs::BLOCKS)?;
        let mut proven = proofs::PageProofs::default();
        for row in state.iter()? {
            let (k, v) = row?;
            let versions = match Versions::decode(v.value(), &self.limits()) {
                Ok(v) => v,
                Err(e) => {
                    return Ok(Err(format!(
                        "state entry {:?} cannot be read: {e}",
                        String::from_utf8_lossy(k.value())
                    )));
                }
            };
            for version in versions.events() {
                if version.seq > compacted_of(version.origin.as_str()) {
                    continue;
                }
                if !proven.proves(&proofs_t, &blocks_t, &self.limits(), version)? {
                    return Ok(Err(format!(
                        "version {}:{} is compacted and nothing here proves it",
                        version.origin, version.seq
                    )));
                }
            }
        }
        let full = self.recompute_digest_in(&txn)?;
        if full != status.digest {
            return Ok(Err(format!(
                "incremental digest {} differs from recomputed {}",
                status.digest.to_hex(),
                full.to_hex()
            )));
        }
        Ok(Ok(()))
    }
}
