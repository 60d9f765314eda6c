//! Giving a stopped node's free pages back to the filesystem. The store file grows to hold its
//! largest moment (a backlog during a long partition, a snapshot being merged) and redb reuses
//! freed pages but never returns them: after changelog compaction removed a backlog, the file
//! keeps its size until it is shrunk. redb relocates pages in transactions of its own, so a crash
//! midway leaves a store that opens as after any crash.

use std::path::Path;

use crate::StoreError;

/// The store file's size before and after [`shrink_file`], in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shrunk {
    /// Bytes before.
    pub before: u64,
    /// Bytes after.
    pub after: u64,
}

/// Shrinks the store file at `path`, which must be `node`'s and must not be open (the node
/// stopped: [`StoreError::is_already_open`] otherwise).
pub fn shrink_file(path: &Path, node: &edgerep_wire::NodeId) -> Result<Shrunk, StoreError> {
    let before = file_len(path)?;
    let mut db = crate::open_stopped(path, node)?;
    // Each pass moves what it can; the last finds nothing more to move.
    while db.compact()? {}
    drop(db);
    Ok(Shrunk {
        before,
        after: file_len(path)?,
    })
}

fn file_len(path: &Path) -> Result<u64, StoreError> {
    std::fs::metadata(path)
        .map(|m| m.len())
        .map_err(|e| StoreError::Storage(redb::Error::Io(e)))
}
