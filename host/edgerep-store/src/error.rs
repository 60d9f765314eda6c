//! The store's errors.

use crate::STORE_FORMAT;

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// redb failed (IO error, full disk, corruption detected by redb; or the file is open in
    /// another process).
    #[error("{}", storage_message(.0))]
    Storage(#[from] redb::Error),
    /// The data directory belongs to another node.
    #[error(
        "the data in {path} belongs to node {stored:?}, but the config says node {configured:?}: put node.id back to {stored:?}, or point node.data_dir at an empty directory (a new node, which gets the cluster's data from its peers)"
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
    /// A key's stored state does not decode (damage on this disk): reads of the key fail until
    /// anti-entropy repairs it from a peer.
    #[error(
        "key {key:?} of collection {collection:?}: its stored state cannot be read ({reason}); the store is damaged there, and anti-entropy repairs it from a peer"
    )]
    UnreadableRow {
        /// The collection.
        collection: String,
        /// The key (lossy UTF-8).
        key: String,
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
        /// The receipt's position in the list given to the commit (a receipt may cover no
        /// write: a request whose writes all failed records only its answer).
        receipt: usize,
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
    /// This node's own events up to `seen` came back in part of a peer's snapshot (its store was
    /// restored from a backup), its history only up to `held`: the numbers between are taken,
    /// so no local write commits until the rest is back (nothing was written).
    #[error(
        "this node's own events up to {seen} came back in part of a peer's snapshot (its store was restored from a backup), its history only up to {held}: their sequence numbers are taken, so no write is taken until the rest comes back from the peers"
    )]
    OwnNumbersTaken {
        /// How far this node holds its own history.
        held: u64,
        /// The highest of its own events the snapshot brought back.
        seen: u64,
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
    /// Events of a peer's batch that start past what the store holds of their origin (an
    /// earlier batch may still be on its way to the store) and that the batch alone does not
    /// prove its origin's: no forgery shown, nothing shown either (see
    /// `Store::check_sealed`). The batch is taken again once the store holds what comes
    /// before it.
    #[error("events of {origin} from {seq} cannot be checked yet: {reason}")]
    Unproven {
        /// The origin they claim.
        origin: String,
        /// The first event not shown to be the origin's.
        seq: u64,
        /// Why it could not be shown.
        reason: String,
    },
    /// A peer's batch carries events of an origin past its revocation: it was admitted before
    /// a reload revoked the origin. Nothing of the batch was applied; it is not a forgery (the
    /// peer resends, and admission now keeps those events out).
    #[error(
        "events of {origin} past its revocation (after its event {after}; a seal at {seq}): the batch was not applied"
    )]
    Revoked {
        /// The revoked origin.
        origin: String,
        /// Its last event still vouched for.
        after: u64,
        /// The seal's sequence number.
        seq: u64,
    },
    /// A request the store cannot answer as asked (names what was wrong).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// New limits would lower some of the store's: events stored under the old limits must stay
    /// readable (a reload or a start with lower limits is refused).
    #[error(
        "[limits] lower than the store was written under: {}; events stored under the old limits must stay readable: {misfit}",
        limits.join(", ")
    )]
    LimitsLowered {
        /// The limits that would be lowered, each with its value and the one held.
        limits: Vec<String>,
        /// Why they cannot be: the first stored event or row that does not fit them, or that a
        /// running node cannot check (only a start lowers limits).
        misfit: String,
    },
    /// The database was written by an older edgerep whose tables this one cannot continue.
    #[error(
        "store format {found} is older than this edgerep can continue (it writes format {STORE_FORMAT}): this build cannot read it. Run the build that wrote it until its peers hold all its events (compare `edgerep status` on each), then move node.data_dir away and start this build on an empty one: it catches up from its peers (events no peer holds would be lost)"
    )]
    OldFormat {
        /// Format found in the file.
        found: u64,
    },
    /// The database was written by a newer edgerep with a table layout this one does not know.
    #[error(
        "store format {found} is newer than this edgerep supports ({supported}): the data directory was written by a newer build; run that build (or a newer one) on it; or, once its peers hold all its events (compare `edgerep status` on each), move node.data_dir away and start this build on an empty one: it catches up from its peers"
    )]
    UnsupportedFormat {
        /// Format found in the file.
        found: u64,
        /// Highest format this code reads.
        supported: u64,
    },
}

impl StoreError {
    /// Whether the store file is open already (by a running node, or another process).
    pub fn is_already_open(&self) -> bool {
        matches!(self, StoreError::Storage(redb::Error::DatabaseAlreadyOpen))
    }

    /// Whether the store file could not be opened for lack of permission: the node's user or
    /// its `node.data_dir` is wrong, and trying again changes nothing. (Not a read-only file
    /// system: one remounted so after disk errors is the disk's failure.)
    pub fn is_not_permitted(&self) -> bool {
        matches!(self, StoreError::Storage(redb::Error::Io(e))
            if e.kind() == std::io::ErrorKind::PermissionDenied)
    }

    /// Whether the file is no store at all, or one redb cannot read (a bad restore, another
    /// program's file, a damaged header): starting again on it fails again.
    pub fn is_not_a_store(&self) -> bool {
        matches!(
            self,
            StoreError::Storage(redb::Error::Corrupted(_) | redb::Error::UpgradeRequired(_))
        ) || matches!(self, StoreError::Storage(redb::Error::Io(e))
            if matches!(e.kind(), std::io::ErrorKind::InvalidData | std::io::ErrorKind::IsADirectory))
    }

    /// Whether the disk failed under the store (a write or sync error, or one before it): redb
    /// refuses every later operation until the file is opened again, so the process must
    /// reopen it (restart) once the disk is fixed.
    pub fn is_disk_failure(&self) -> bool {
        matches!(
            self,
            StoreError::Storage(redb::Error::Io(_) | redb::Error::PreviousIo)
        )
    }
}

/// What a redb error means to an operator.
fn storage_message(e: &redb::Error) -> String {
    match e {
        redb::Error::DatabaseAlreadyOpen => "the store file is open in another process: another node (or `edgerep` command) runs on this data directory; stop it, or give each node its own node.data_dir".to_owned(),
        e => format!("storage: {e}"),
    }
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
    redb::SetDurabilityError,
    redb::CompactionError
);

pub(crate) fn corrupt(table: &'static str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        table,
        reason: e.to_string(),
    }
}

/// An origin's id as a table keys it; one that does not parse is a corrupt record.
pub(crate) fn parse_origin(id: &str) -> Result<edgerep_wire::NodeId, StoreError> {
    edgerep_wire::NodeId::parse(id).map_err(|e| corrupt("origins", format!("origin {id:?}: {e}")))
}
