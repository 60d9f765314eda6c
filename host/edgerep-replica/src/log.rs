//! The storage seam: the replica reads the node's changelog through [`Log`] and never writes it.

use edgerep_wire::{Event, NodeId};

/// Read access to the node's durable changelog (every event it holds, keyed by origin and sequence).
pub trait Log {
    /// Events of `origin` with sequence numbers after `after`, in order and without gaps: at most
    /// `max_events`, and at most `max_bytes` of encoded events, except that the first event is
    /// returned even if it alone is larger.
    fn read(
        &self,
        origin: &NodeId,
        after: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<Event>, LogError>;
}

/// Why the changelog could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// The storage failed.
    #[error("changelog read failed: {reason}")]
    Storage {
        /// The storage's error, as text.
        reason: String,
    },
    /// The changelog returned something other than what the local have promises (a gap, a
    /// wrong origin, or nothing where events should be).
    #[error("changelog inconsistent with the local have: {reason}")]
    Inconsistent {
        /// What was wrong.
        reason: String,
    },
}
