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
//! - `idempotency`, `idempotency_restored`: clients' idempotency keys with the answers of the writes
//!   they committed (see `idempotency.rs`);
//! - `compacted`: per origin, the highest sequence number removed from the changelog (see
//!   `retention.rs`: compaction, and state snapshots for peers that need removed events);
//! - `meta`: node id, last hybrid clock timestamp, last feed position, feed floor, state digest.
//!
//! Invariant: one write transaction changes state, changelog, feed, origins and meta together, so
//! a write either fully happens or not at all, and the digest always matches the state.
//! Transactions commit with redb's immediate durability (once `commit_local` returns, the events
//! survive a crash) unless the caller asks for [`Sync::Deferred`]: then they survive a crash only
//! after the next immediate commit or [`StoreWriter::sync`] (commits reach the disk in order).
//!
//! One writer, by type: [`Store`] reads (share it as `Arc<Store>`); every method that writes is
//! on [`StoreWriter`], of which an open store has one (a node's committer thread owns it).
//!
//! Where things are:
//! - `lib.rs` (this file): the public types, opening a store, its configuration;
//! - `tables.rs`: table definitions and the counters every transaction keeps; `keys.rs`: how
//!   keys of the state and the changelog are laid out; `error.rs`: [`StoreError`];
//! - `write.rs`: local commits, peers' batches, resolutions decided again, dead letters, cursors;
//! - `read.rs`: keys, scans, the feed, the changelog, seals, status;
//! - `verify.rs`: the self-check ([`Store::verify`]);
//! - `versions.rs` (the merge rule), `resolution.rs` (kept resolutions), `seals.rs` (origin
//!   chains and seals), `proofs.rs` (proofs of compacted versions), `retention.rs` (compaction,
//!   snapshots, repair), `aae.rs` (anti-entropy sums), `idempotency.rs`, `dead_letters.rs`
//!   (dead letters' ids), `digest.rs`.

pub mod aae;
pub mod bench;
mod dead_letters;
mod digest;
mod error;
mod feed;
pub mod idempotency;
mod keys;
mod proofs;
mod read;
mod resolution;
mod retention;
mod seals;
pub mod shrink;
mod tables;
mod verify;
mod versions;
mod write;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use edgerep_wire::event::{EventLimits, FORMAT_VERSION};
use edgerep_wire::seal::{
    Block, ChainHash, SEAL_EVERY_BYTES, SEAL_EVERY_EVENTS, chain_link, event_leaf,
};
use edgerep_wire::{
    EncodedEvent, Event, Have, Hlc, HlcClock, NodeId, Op, Seal, Value, VersionVector,
};
use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata};

use keys::{log_key, log_seq, split_state_key, state_key};
use tables::*;
use write::{RowDamage, Unresolved, apply_to_state, write_row};

pub use dead_letters::{DeadLetterUsage, SetAside};
pub use error::StoreError;
use error::{corrupt, parse_origin};
pub use read::{FoundVersion, PAGE_BYTES, SCAN_ROWS_PER_ENTRY};
pub use tables::{CACHE_BYTES, STORE_FORMAT};
pub use write::ConflictTally;

pub use digest::{Digest, HashRule};
pub use resolution::{
    BY_DEFAULT_AFTER_DISAGREEMENT, BY_FALLBACK, BY_LWW, BY_PLUGIN, Disagreement, Resolution,
    Resolver,
};
use retention::{COMPACTED, feed_floor, read_map};
pub use retention::{CollectionCounts, Compaction, Installed, RepairFork, StatePage};
use seals::{CERTS, CHAINS, SEALS};
pub use seals::{KeyError, Keys};
pub use versions::{Applied, Versions};

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
    /// What the writer read of the key (the context a read gave): the write supersedes the
    /// versions it covers and this node's own earlier writes to the key; the others stay
    /// concurrent with it, for the collection's resolver to decide. `None`: it supersedes every
    /// version the key holds when it commits.
    pub context: Option<VersionVector>,
}

/// This machine's wall clock now, in ms since the Unix epoch (0 before it).
pub(crate) fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
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
            context: None,
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
    pub origins: Have,
    /// Highest hybrid clock timestamp issued or observed.
    pub hlc_last: Hlc,
    /// Number of dead letters.
    pub dead_letters: u64,
    /// Their records' bytes together (what `limits.max_dead_letter_bytes` bounds).
    pub dead_letter_bytes: u64,
    /// Per origin, the highest sequence number compacted out of the changelog.
    pub compacted: Have,
    /// Feed positions up to this one can no longer be read.
    pub feed_floor: u64,
    /// The highest of this node's own sequence numbers that came back in a snapshot page,
    /// when above its own have: numbers up to it are taken (no write may use one) until the
    /// rest of its history is back. 0: none.
    pub own_seen: u64,
    /// Where another history of this node's own events was proven (see
    /// [`StoreWriter::record_own_fork`]); 0: none.
    pub own_fork: u64,
}

/// Whether a write transaction waits for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sync {
    /// The commit is durable when it returns.
    Immediate,
    /// The commit is visible when it returns and durable after the next immediate commit or
    /// [`StoreWriter::sync`].
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
        Received::new(event.into(), OnApply::AsReceived)
    }

    /// `event`, which does `on_apply` to the state.
    pub fn new(event: EncodedEvent, on_apply: OnApply) -> Received {
        Received { event, on_apply }
    }
}

/// A dead letter one received event earned here (its origin may not write its collection, or a
/// transform on apply failed on it under the `dead-letter` policy). It is committed only by the
/// transaction that writes its event into the changelog: an event held already, or one of a
/// forked origin left out, sets nothing aside, so a batch sent again (a peer resends a fork
/// every time it is asked) adds no dead letter twice.
#[derive(Debug, Clone, PartialEq)]
pub struct EventDeadLetter {
    /// The event's origin.
    pub origin: NodeId,
    /// The event's sequence number.
    pub seq: u64,
    /// The record (opaque bytes; the node defines their content).
    pub record: Vec<u8>,
}

/// What `peers_heard` keeps of a peer (wall clock, ms since the Unix epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    /// Last heard from then.
    At(u64),
    /// Configured but never heard from: this node has waited for it since then.
    AwaitedSince(u64),
}

impl Heard {
    fn encode(self) -> u64 {
        match self {
            Heard::At(ms) => ms & !tables::AWAITED,
            Heard::AwaitedSince(ms) => (ms & !tables::AWAITED) | tables::AWAITED,
        }
    }

    fn decode(value: u64) -> Heard {
        if value & tables::AWAITED == 0 {
            Heard::At(value)
        } else {
            Heard::AwaitedSince(value & !tables::AWAITED)
        }
    }
}

/// What [`StoreWriter::apply_remote`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteApply {
    /// Per event, what it did to its key's versions ([`Applied::Obsolete`] also for an event
    /// kept out of the state by [`OnApply::Dropped`]).
    pub applied: Vec<Applied>,
    /// Ids of the dead letters written with the batch.
    pub dead_letters: Vec<u64>,
    /// Per origin of the batch, the highest sequence number the store now holds.
    pub held: Have,
    /// The feed's last position after the batch.
    pub feed_last: u64,
    /// Events whose timestamp was too far ahead of the wall clock to move the clock.
    pub skewed: usize,
    /// Of those, per origin, the farthest ahead of the wall clock (ms).
    pub skewed_by_origin: std::collections::BTreeMap<NodeId, u64>,
    /// Origins whose events in the batch do not chain, from this node's history, to a seal of
    /// theirs that verifies: another history the origin signed, or events changed under a
    /// genuine seal. Left out, reported.
    pub forks: Vec<Fork>,
    /// Events kept in the changelog but out of the state: their key's row cannot be read
    /// (damage here), and stays as it is until a repair from a peer replaces it.
    pub left_out_of_damaged_rows: u64,
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

/// Collections whose keys are being resolved again (see [`Store::mark_re_resolving`]).
#[derive(Debug, Default)]
pub(crate) struct ReResolving {
    /// Per collection marked, the mark's number: it waits until a pass that began after the
    /// mark reaches its end (a failed pass marks its collection again: its keys are half done).
    pending: BTreeMap<String, u64>,
    /// Per collection, the number of the last mark when each pass under way began, oldest
    /// first (a reload's and a start's may overlap).
    running: BTreeMap<String, std::collections::VecDeque<u64>>,
    /// Marks made so far.
    marks: u64,
}

impl ReResolving {
    fn holds(&self, collection: &str) -> bool {
        self.pending.contains_key(collection) || self.running.contains_key(collection)
    }

    fn mark(&mut self, collections: impl IntoIterator<Item = String>) {
        self.marks += 1;
        for c in collections {
            self.pending.insert(c, self.marks);
        }
    }

    /// A pass over `collection` began.
    pub(crate) fn began(&mut self, collection: &str) {
        self.running
            .entry(collection.to_owned())
            .or_default()
            .push_back(self.marks);
    }

    /// A pass over `collection` ended, at its end (`done`) or by an error. (Passes of one
    /// collection are taken to end in the order they began; one ending out of order only
    /// keeps the mark longer.)
    pub(crate) fn ended(&mut self, collection: &str, done: bool) {
        let began_after = self.running.get_mut(collection).and_then(|q| q.pop_front());
        if self.running.get(collection).is_some_and(|q| q.is_empty()) {
            self.running.remove(collection);
        }
        if !done {
            self.mark([collection.to_owned()]);
        } else if let (Some(&mark), Some(began)) = (self.pending.get(collection), began_after)
            && mark <= began
        {
            self.pending.remove(collection);
        }
    }
}

/// A node's store.
pub struct Store {
    db: Arc<Database>,
    node: NodeId,
    /// What events and state rows are decoded against (raised, never lowered, by a reload).
    limits: std::sync::RwLock<EventLimits>,
    /// Signs this node's seals and checks its peers'; `None`: seals are unsigned and not
    /// checked (a node without peers, tests, and the benchmark's unauthenticated runs).
    keys: Option<Arc<dyn Keys>>,
    /// The anti-entropy sums (see `aae`).
    aae: Arc<aae::Sums>,
    /// The check at open, running beside the first writes (stopped and joined on drop).
    _open_scan: aae::OpenScan,
    /// Conflicts met since the store opened (see [`ConflictTally`]).
    conflicts: std::sync::Mutex<ConflictTally>,
    /// Whether the anti-entropy sums are kept (always, but for one benchmark).
    fingerprints: bool,
    /// Resolves keys with concurrent versions when they change (`None`: nothing is kept, reads
    /// resolve; tools and tests).
    resolver: Option<Arc<dyn Resolver>>,
    /// Collections whose keys are being resolved again (an upgraded resolver): anti-entropy
    /// neither settles their resolutions with a peer's nor has a peer settle with this node's
    /// (one side's are still the old resolver's, and the default would win over both).
    re_resolving: std::sync::Mutex<ReResolving>,
    /// How long and how many idempotency records are kept.
    idempotency_window: idempotency::Window,
    /// Idempotency keys held, in memory (see `idempotency.rs`).
    idempotency_index: idempotency::Index,
    /// Dead letters' ids (see `dead_letters.rs`).
    dead_letter_ids: dead_letters::Ids,
    /// Whether the table of keys whose writes came back after a restore holds any (so a new
    /// key, the common case, is looked up there only after a restore).
    keys_restored: std::sync::atomic::AtomicBool,
    /// When this store was opened (monotonic): a key restored from the peers is honoured for a
    /// whole window of this process's run, whatever the wall clock says (see `restored_key`).
    opened: std::time::Instant,
    /// How state rows hash.
    rule: HashRule,
    /// The store format found at open (this build's for a new store).
    opened_format: u64,
    /// Whether the limits given at open lower the store's record (everything stored fits
    /// them, checked at open): `StoreWriter::record_open` then records them as they are.
    lowering_limits: bool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("node", &self.node)
            .field("signs", &self.keys.is_some())
            .finish_non_exhaustive()
    }
}

/// The one writer of a store: every method that writes is on it, and there is one per open
/// store (it is not `Clone`). A node's committer thread owns it; everything else reads through
/// [`StoreWriter::reader`] (an `Arc<Store>`, cloned freely). Its owner reads through `Deref`.
pub struct StoreWriter {
    store: Arc<Store>,
}

impl StoreWriter {
    /// Makes `store` (opened and configured) the writer's.
    pub fn new(store: Store) -> StoreWriter {
        StoreWriter {
            store: Arc::new(store),
        }
    }

    /// [`Store::open`], as its writer (for tools and tests that configure nothing more).
    pub fn open(
        path: &Path,
        node: &NodeId,
        limits: EventLimits,
    ) -> Result<(StoreWriter, Resume), StoreError> {
        Store::open(path, node, limits).map(|(s, r)| (StoreWriter::new(s), r))
    }

    /// [`Store::open_with_rule`], as its writer.
    pub fn open_with_rule(
        path: &Path,
        node: &NodeId,
        limits: EventLimits,
        rule: HashRule,
    ) -> Result<(StoreWriter, Resume), StoreError> {
        Store::open_with_rule(path, node, limits, rule).map(|(s, r)| (StoreWriter::new(s), r))
    }

    /// [`Store::open_with_backend`], as its writer.
    pub fn open_with_backend(
        backend: impl redb::StorageBackend,
        name: &str,
        node: &NodeId,
        limits: EventLimits,
    ) -> Result<(StoreWriter, Resume), StoreError> {
        Store::open_with_backend(backend, name, node, limits).map(|(s, r)| (StoreWriter::new(s), r))
    }

    /// A reading handle on the same store.
    pub fn reader(&self) -> Arc<Store> {
        self.store.clone()
    }
}

impl std::ops::Deref for StoreWriter {
    type Target = Store;

    fn deref(&self) -> &Store {
        &self.store
    }
}

impl std::fmt::Debug for StoreWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("StoreWriter").field(&*self.store).finish()
    }
}

impl Store {
    /// Whether another process holds the store file at `path` open (a node running on it).
    /// Opens the file read-only only to ask (redb takes its locks before reading anything, and
    /// changes nothing: a file that needs recovery is refused, not repaired), and closes it at
    /// once; false when there is no file.
    pub fn open_elsewhere(path: &Path) -> bool {
        path.is_file()
            && matches!(
                redb::Builder::new()
                    .set_cache_size(1 << 20)
                    .open_read_only(path),
                Err(redb::DatabaseError::DatabaseAlreadyOpen)
            )
    }

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

    /// A store held in memory only (redb's in-memory backend), for simulations and tests: the
    /// same tables, rules and checks as a file's, gone with the store.
    pub fn open_in_memory(
        node: &NodeId,
        limits: EventLimits,
    ) -> Result<(Store, Resume), StoreError> {
        Store::open_with_backend(
            redb::backends::InMemoryBackend::new(),
            &format!("memory of {node}"),
            node,
            limits,
        )
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
        // The hash rule to record once the state's digest follows it (see `aae::open`).
        let new_rule;
        // The format found (this build's for a new store), and whether `limits` lower the
        // record (every stored event fits them: `record_open` records them as they are).
        let mut opened_format = STORE_FORMAT;
        let lowering;
        {
            let mut meta = txn.open_table(META)?;
            // The collections hashed on their versions only, as one line each.
            let wanted: Vec<u8> = rule
                .collections()
                .iter()
                .flat_map(|c| c.bytes().chain(std::iter::once(b'\n')))
                .collect();
            let held = meta.get(META_VERSIONS_ONLY)?.map(|g| g.value().to_vec());
            let pending = meta.get(META_RULE_CHECK_PENDING)?.is_some();
            new_rule = (pending || held.unwrap_or_default() != wanted).then_some(wanted);
            if new_rule.is_some() && !pending {
                meta.insert(META_RULE_CHECK_PENDING, &[][..])?;
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
                    if found < STORE_FORMAT_CONTINUED {
                        return Err(StoreError::OldFormat { found });
                    }
                    opened_format = found;
                }
            }
            // Events stored under higher limits must stay readable: a start with lower ones is
            // refused. (Only checked here: the format and limits this build runs under are
            // recorded by `StoreWriter::record_open`, once the caller's own checks passed, so
            // that a start refused for another reason changes neither.)
            // A lower limit is taken when everything the store holds fits it (a limit raised
            // by mistake is undone by a start with the old one): the record is lowered to it.
            let lowered = lowered(&held_limits(&meta)?, &limits);
            lowering = !lowered.is_empty();
            if lowering && let Some(misfit) = verify::first_misfit(&txn, &limits)? {
                return Err(StoreError::LimitsLowered {
                    limits: lowered,
                    misfit: format!("{misfit}, so keep each at least as high"),
                });
            }
            // Create every table so readers never meet a missing one.
            txn.open_table(STATE)?;
            txn.open_table(CHANGELOG)?;
            txn.open_table(FEED)?;
            txn.open_table(feed::FEED_BY_ORIGIN)?;
            txn.open_table(ORIGINS)?;
            txn.open_table(DEAD_LETTERS)?;
            txn.open_table(DISAGREEMENTS)?;
            txn.open_table(idempotency::IDEMPOTENCY)?;
            txn.open_table(PEERS)?;
            txn.open_table(PEERS_HEARD)?;
            txn.open_table(PEERS_PROGRESS)?;
            txn.open_table(COMPACTED)?;
            txn.open_table(CHAINS)?;
            txn.open_table(SEALS)?;
            txn.open_table(CERTS)?;
            txn.open_table(seals::CERTS_MORE)?;
            txn.open_table(proofs::PROOFS)?;
            txn.open_table(proofs::BLOCKS)?;
            txn.open_table(idempotency::RESTORED)?;
        }
        // The dead letters' count and bytes, computed when missing or when an older build
        // changed the dead letters since (its count is then not the table's).
        let rows = txn.open_table(DEAD_LETTERS)?.len()?;
        // (A damaged record is computed again too, and a total left with no dead letters.)
        let kept = dead_letter_usage(&txn.open_table(META)?).ok().flatten();
        if kept.is_none_or(|u| u.count != rows || (rows == 0 && u.bytes != 0)) {
            let mut usage = DeadLetterUsage::default();
            for row in txn.open_table(DEAD_LETTERS)?.iter()? {
                usage.add(row?.1.value().len());
            }
            save_dead_letter_usage(&mut txn.open_table(META)?, usage)?;
        }
        feed::check_index(&txn)?;
        txn.commit()?;
        let db = Arc::new(db);
        let (sums, open_scan) = aae::open(&db, &limits, &rule, new_rule)?;
        let (idempotency_index, dead_letter_ids, keys_restored) = {
            let txn = db.begin_read()?;
            let keys_restored = !txn.open_table(idempotency::RESTORED)?.is_empty()?;
            let index = idempotency::Index::load(
                &txn.open_table(idempotency::IDEMPOTENCY)?,
                &txn.open_table(META)?,
            )?;
            let last = txn
                .open_table(DEAD_LETTERS)?
                .last()?
                .map_or(0, |(k, _)| k.value());
            let high = match txn.open_table(META)?.get(META_DEAD_LETTER_HIGH)? {
                Some(g) => u64_from(g.value(), "meta")?,
                None => 0,
            };
            (
                index,
                dead_letters::Ids::new(last.max(high) + 1),
                keys_restored,
            )
        };
        let store = Store {
            db,
            node: node.clone(),
            limits: std::sync::RwLock::new(limits),
            keys: None,
            aae: sums,
            _open_scan: open_scan,
            conflicts: std::sync::Mutex::default(),
            fingerprints: true,
            resolver: None,
            re_resolving: std::sync::Mutex::default(),
            idempotency_window: idempotency::Window::default(),
            idempotency_index,
            dead_letter_ids,
            keys_restored: keys_restored.into(),
            opened: std::time::Instant::now(),
            rule,
            opened_format,
            lowering_limits: lowering,
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

    /// Has `resolver` decide, as each change is applied, what keys with concurrent versions
    /// resolve to; the resolution is kept in the state (see `resolution.rs`).
    pub fn with_resolver(mut self, resolver: Arc<dyn Resolver>) -> Store {
        self.resolver = Some(resolver);
        self
    }

    /// Marks `collections` as waiting to be resolved again, from now until a pass of
    /// [`StoreWriter::re_resolve`] over each reaches its end: a node marks those its record
    /// says are unfinished before replication starts, and a reload those it upgrades before
    /// the new resolvers decide anything, so none is settled with a peer meanwhile.
    pub fn mark_re_resolving(&self, collections: impl IntoIterator<Item = String>) {
        self.re_resolving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .mark(collections);
    }

    /// Whether `collection`'s keys are being resolved again (see [`Store::mark_re_resolving`]).
    pub(crate) fn is_re_resolving(&self, collection: &str) -> bool {
        self.re_resolving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .holds(collection)
    }

    /// The record of collections being resolved again, to change.
    pub(crate) fn re_resolving_now(&self) -> std::sync::MutexGuard<'_, ReResolving> {
        self.re_resolving.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The collections being resolved again now (for status).
    pub fn re_resolving(&self) -> Vec<String> {
        let r = self.re_resolving.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<String> = r.pending.keys().cloned().collect();
        out.extend(
            r.running
                .keys()
                .filter(|c| !r.pending.contains_key(*c))
                .cloned(),
        );
        out.sort();
        out
    }

    /// The store format found when the store was opened (this build's for a new store; a lower
    /// one for a store this build continues, until the next open).
    pub fn opened_format(&self) -> u64 {
        self.opened_format
    }

    /// The limits events and state rows are decoded against.
    pub fn limits(&self) -> EventLimits {
        *self.limits.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Raises the limits (a reloaded config). Lower limits are refused: events stored under
    /// the old ones must stay readable.
    pub fn raise_limits(&self, limits: EventLimits) -> Result<(), StoreError> {
        let mut current = self.limits.write().unwrap_or_else(|e| e.into_inner());
        let held: Vec<u64> = limits_record(&current).iter().map(|(_, n)| *n).collect();
        let lowered = lowered(&held, &limits);
        if !lowered.is_empty() {
            return Err(StoreError::LimitsLowered {
                limits: lowered,
                misfit: "a running node does not lower its limits; restart it with the lower ones: a start takes them when every stored event fits them".into(),
            });
        }
        *current = limits;
        Ok(())
    }

    /// Conflicts met and how they were resolved since the store opened.
    pub fn conflict_tally(&self) -> ConflictTally {
        self.conflicts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The store file at `path` opened by a tool while its node is stopped
/// ([`StoreError::is_already_open`] otherwise), once it is shown to be `node`'s.
pub(crate) fn open_stopped(
    path: &std::path::Path,
    node: &edgerep_wire::NodeId,
) -> Result<redb::Database, StoreError> {
    let db = redb::Database::open(path)?;
    {
        let txn = db.begin_read()?;
        let meta = txn.open_table(META)?;
        let stored = meta
            .get(META_NODE_ID)?
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
    Ok(db)
}
