//! The storage seam: the replica reads the node's changelog and state through [`Log`] and never
//! writes them.

use edgerep_wire::seal::Proof;
use edgerep_wire::{EncodedEvent, NodeId, Seal};

pub use edgerep_wire::StateCursor;

/// One page of the state, for a snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatePage {
    /// The versions of keys, in key order, each as its origin sent it (see [`StateCursor`]).
    pub versions: Vec<EncodedEvent>,
    /// Per version, what proves it is its origin's.
    pub proofs: Vec<Proof>,
    /// The seals the proofs name, once each.
    pub seals: Vec<Seal>,
    /// Where the next page starts (where this one ended); `None` when the state is done.
    pub next: Option<StateCursor>,
}

/// Events of one origin as read for a peer, with the origin's seals over them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Read {
    /// Consecutive events of the origin.
    pub events: Vec<EncodedEvent>,
    /// The origin's seals at sequence numbers within the events; the last event has one.
    pub seals: Vec<Seal>,
}

/// Read access to the node's durable changelog (every event it holds, keyed by origin and sequence).
pub trait Log {
    /// Events of `origin` with sequence numbers after `after`, in order and without gaps,
    /// ending at one of the origin's seals, with the seals among them: at most `max_events` and
    /// `max_bytes` of encoded events, except that the events up to the first seal are returned
    /// even if they alone are more.
    fn read(
        &self,
        origin: &NodeId,
        after: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Read, LogError>;

    /// The seal of `origin` at `seq`, if the node holds one.
    fn seal_at(&self, origin: &NodeId, seq: u64) -> Result<Option<Seal>, LogError>;

    /// The certificates (DER) that verify `origin`'s seals the node holds (at most
    /// [`edgerep_wire::seal::MAX_CERTS_PER_ORIGIN`]; usually one).
    fn certs(&self, origin: &NodeId) -> Vec<Vec<u8>>;

    /// The versions of the keys after `after` (from the first key if `None`): whole keys, at
    /// most `max_events` versions and `max_bytes` of encoded versions, except that a first key
    /// over them by itself goes over several pages, a version at least on each (see
    /// [`StateCursor`]); a page may be empty only if `next` moves on. The state read must reflect at least every
    /// event the durable local have covers (never an event a crash could take back).
    fn state_page(
        &self,
        after: Option<&StateCursor>,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<StatePage, LogError>;
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
    /// Events of `origin` up to `floor` were compacted away: a peer that lacks them needs a
    /// snapshot of the state.
    #[error("events of {origin} up to {floor} were compacted")]
    Compacted {
        /// The origin.
        origin: NodeId,
        /// The highest sequence number removed.
        floor: u64,
    },
    /// The changelog returned something other than what the local have promises (a gap, a
    /// wrong origin, or nothing where events should be).
    #[error("changelog inconsistent with the local have: {reason}")]
    Inconsistent {
        /// What was wrong.
        reason: String,
    },
}

/// The certificates `log` holds of the origins `seals` name, each origin asked once: what a
/// message carrying those seals carries, so that its receiver can verify them.
pub fn certs_for_seals<L: Log + ?Sized>(log: &L, seals: &[Seal]) -> Vec<(NodeId, Vec<u8>)> {
    let mut asked = std::collections::BTreeSet::new();
    let mut certs = Vec::new();
    for seal in seals {
        if asked.insert(&seal.origin) {
            certs.extend(
                log.certs(&seal.origin)
                    .into_iter()
                    .map(|c| (seal.origin.clone(), c)),
            );
        }
    }
    certs
}
