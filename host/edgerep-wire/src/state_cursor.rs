//! Where a page of the state starts (snapshots send the state a page at a time).

use crate::NodeId;

/// A position in the state, in (collection, key) order: a state page continues after it.
/// Keys go whole onto a page, except a key whose versions together are over a page's bound:
/// its versions go over several pages, in (origin, seq) order, and `after_version` says the
/// last one sent (the next page goes on inside the key). Versions merge one by one on the
/// receiving side, so a key sent so is the key sent whole.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StateCursor {
    /// The collection of the key.
    pub collection: String,
    /// The key.
    pub key: Vec<u8>,
    /// Inside the key, after this version (its origin and sequence number); `None`: after the
    /// whole key.
    pub after_version: Option<(NodeId, u64)>,
}

impl StateCursor {
    /// After the whole key `key` of `collection`.
    pub fn after_key(collection: impl Into<String>, key: impl Into<Vec<u8>>) -> StateCursor {
        StateCursor {
            collection: collection.into(),
            key: key.into(),
            after_version: None,
        }
    }
}
