//! What plugins return, checked: everything a guest hands back is untrusted until it passes here.

use std::collections::BTreeMap;

use edgerep_wire::event::{EventError, EventLimits, check_collection_name};
use edgerep_wire::{DecodeLimits, Event, Op, Value, ValueError};

use crate::bindings::wit;
use crate::failure::{Failure, FailureKind};

/// Most changes one transform call may return.
pub const MAX_CHANGES: usize = 10_000;

/// Most bytes one transform call may return, all changes together (collection names, keys,
/// values and metadata).
pub const MAX_OUTPUT_BYTES: usize = 64 << 20;

/// A change a transform returned, checked: a valid collection name, a non-empty key of at most
/// 1024 bytes, a value exactly on puts, in deterministic CBOR, at most 16 metadata entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// Collection to write to.
    pub collection: String,
    /// Key to write.
    pub key: Vec<u8>,
    /// Put or delete.
    pub op: Op,
    /// The value for a put (canonicalized by the host), none for a delete.
    pub value: Option<Value>,
    /// Schema version of the value.
    pub schema: u32,
    /// Metadata.
    pub meta: BTreeMap<String, String>,
}

/// A resolver's decision, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// The version at this index (into the list given to [`crate::Plugin::resolve`]) wins.
    Pick(usize),
    /// A merged value: `Some` for a put (canonicalized by the host), `None` for a delete.
    Merge(Option<Value>),
}

/// Why what a plugin returned is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum OutputError {
    /// A value is not valid CBOR, or is over the decoder's limits.
    #[error("invalid value: {0}")]
    InvalidValue(ValueError),
    /// More than [`MAX_CHANGES`] changes.
    #[error("{count} changes, over the limit of {MAX_CHANGES}")]
    TooManyChanges {
        /// How many changes.
        count: usize,
    },
    /// More than [`MAX_OUTPUT_BYTES`] bytes of changes.
    #[error("{total} bytes of changes, over the limit of {MAX_OUTPUT_BYTES}")]
    TooManyBytes {
        /// How many bytes.
        total: usize,
    },
    /// One of the changes is refused.
    #[error("change {index}: {error}")]
    InvalidChange {
        /// Its position in the list.
        index: usize,
        /// Why it is refused.
        error: Box<OutputError>,
    },
    /// A change's collection name is not valid.
    #[error(transparent)]
    Collection(#[from] EventError),
    /// A change's key is empty.
    #[error("empty key")]
    EmptyKey,
    /// A change's key is over the event decoder's limit.
    #[error("key is {len} bytes, over the limit of {max}")]
    KeyTooLong {
        /// The key's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A put has no value.
    #[error("put without a value")]
    PutWithoutValue,
    /// A delete has a value.
    #[error("delete with a value")]
    DeleteWithValue,
    /// A change has more metadata entries than the event decoder allows.
    #[error("{count} metadata entries, over the limit of {max}")]
    TooManyMeta {
        /// How many entries.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A change's metadata (keys and values) takes more bytes than the event decoder allows.
    #[error("metadata of {bytes} bytes, over the limit of {max}")]
    MetaTooLarge {
        /// Bytes of its keys and values.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// A change has the same metadata key twice.
    #[error("duplicate metadata key")]
    DuplicateMetaKey,
    /// A resolver picked a version that is not there.
    #[error("pick({index}) out of range: there are {versions} versions")]
    PickOutOfRange {
        /// The index picked.
        index: usize,
        /// How many versions there are.
        versions: usize,
    },
}

/// An event as the guest sees it.
pub(crate) fn event_to_wit(event: &Event) -> wit::Event {
    wit::Event {
        collection: event.collection.clone(),
        key: event.key.clone(),
        op: op_to_wit(event.op),
        value: event.value.as_ref().map(|v| v.as_bytes().to_vec()),
        hlc: wit::Hlc {
            physical_ms: event.hlc.physical_ms,
            logical: event.hlc.logical,
        },
        origin: event.origin.as_str().to_owned(),
        seq: event.seq,
        schema: event.schema,
        meta: event
            .meta
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        context: event
            .context
            .iter()
            .map(|(origin, seq)| wit::Dot {
                origin: origin.as_str().to_owned(),
                seq,
            })
            .collect(),
    }
}

fn op_to_wit(op: Op) -> wit::Op {
    match op {
        Op::Put => wit::Op::Put,
        Op::Delete => wit::Op::Delete,
    }
}

/// Checks a value a guest returned and puts it in deterministic encoding; notes in `canonical`
/// whether it already was.
fn check_value(
    bytes: &[u8],
    canonical: &mut bool,
    limits: &DecodeLimits,
) -> Result<Value, OutputError> {
    let value = Value::canonicalize(bytes, limits).map_err(OutputError::InvalidValue)?;
    *canonical &= value.as_bytes() == bytes;
    Ok(value)
}

/// Checks and converts what a transform returned. The flag says whether every value was
/// already in deterministic encoding (the conformance runner holds guests to it).
pub(crate) fn check_changes(
    changes: Vec<wit::Change>,
    limits: &EventLimits,
) -> Result<(Vec<Change>, bool), OutputError> {
    if changes.len() > MAX_CHANGES {
        return Err(OutputError::TooManyChanges {
            count: changes.len(),
        });
    }
    let total: usize = changes.iter().map(change_bytes).sum();
    if total > MAX_OUTPUT_BYTES {
        return Err(OutputError::TooManyBytes { total });
    }
    let mut canonical = true;
    let checked = changes
        .into_iter()
        .enumerate()
        .map(|(i, change)| {
            check_change(change, &mut canonical, limits).map_err(|e| OutputError::InvalidChange {
                index: i,
                error: Box::new(e),
            })
        })
        .collect::<Result<_, _>>()?;
    Ok((checked, canonical))
}

/// The bytes a change carries.
fn change_bytes(change: &wit::Change) -> usize {
    change.collection.len()
        + change.key.len()
        + change.value.as_ref().map_or(0, Vec::len)
        + change
            .meta
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
}

fn check_change(
    change: wit::Change,
    canonical: &mut bool,
    limits: &EventLimits,
) -> Result<Change, OutputError> {
    // A change becomes an event every peer must decode, so the event decoder's limits apply.
    check_collection_name(&change.collection)?;
    if change.key.is_empty() {
        return Err(OutputError::EmptyKey);
    }
    if change.key.len() > limits.max_key_bytes {
        return Err(OutputError::KeyTooLong {
            len: change.key.len(),
            max: limits.max_key_bytes,
        });
    }
    let op = match change.op {
        wit::Op::Put => Op::Put,
        wit::Op::Delete => Op::Delete,
    };
    let value = match (op, change.value) {
        (Op::Put, Some(bytes)) => Some(check_value(&bytes, canonical, &limits.value)?),
        (Op::Delete, None) => None,
        (Op::Put, None) => return Err(OutputError::PutWithoutValue),
        (Op::Delete, Some(_)) => return Err(OutputError::DeleteWithValue),
    };
    if change.meta.len() > limits.max_meta_entries {
        return Err(OutputError::TooManyMeta {
            count: change.meta.len(),
            max: limits.max_meta_entries,
        });
    }
    let meta_bytes =
        edgerep_wire::event::meta_bytes(change.meta.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    if meta_bytes > limits.max_meta_bytes {
        return Err(OutputError::MetaTooLarge {
            bytes: meta_bytes,
            max: limits.max_meta_bytes,
        });
    }
    let mut meta = BTreeMap::new();
    for (k, v) in change.meta {
        if meta.insert(k, v).is_some() {
            return Err(OutputError::DuplicateMetaKey);
        }
    }
    Ok(Change {
        collection: change.collection,
        key: change.key,
        op,
        value,
        schema: change.schema,
        meta,
    })
}

/// What a node keeps of a transform's changes to a peer's `event` when the transform runs on
/// apply: at most one change, to the event's own key, with the event's own schema and metadata
/// (on apply a transform may change the value, make the event a delete, or drop it: `None`).
/// `Err` is the `bad-output` failure (with the call's `fuel_used`) the node refuses such output
/// with; the conformance runner and `plugin run --stage apply` apply the same rule.
pub fn on_apply(
    event: &Event,
    changes: Vec<Change>,
    fuel_used: u64,
) -> Result<Option<Change>, Failure> {
    on_apply_rule(event, changes).map_err(|message| Failure {
        kind: FailureKind::BadOutput,
        message,
        fuel_used,
    })
}

fn on_apply_rule(event: &Event, mut changes: Vec<Change>) -> Result<Option<Change>, String> {
    let change = match changes.len() {
        0 => return Ok(None),
        1 => changes.remove(0),
        n => {
            return Err(format!(
                "on apply a transform returns at most one change (the event's own key); it returned {n}"
            ));
        }
    };
    if change.collection != event.collection || change.key != event.key {
        return Err(format!(
            "on apply a transform may change only the event's own key ({}/{}), not {}/{}",
            event.collection,
            String::from_utf8_lossy(&event.key),
            change.collection,
            String::from_utf8_lossy(&change.key)
        ));
    }
    // The state keeps what a transform makes of the value; the event's schema and meta stay
    // as its origin wrote them (a change to them would be dropped unseen). What the plugin
    // returned is described, not printed: the message is kept in dead letters and halt
    // reasons, and the plugin chose its size.
    if change.schema != event.schema || change.meta != event.meta {
        return Err(format!(
            "on apply a transform may change only the value, not the schema or meta (the event's: schema {}, {} meta entries; returned: schema {}, {} meta entries{})",
            event.schema,
            event.meta.len(),
            change.schema,
            change.meta.len(),
            if change.meta == event.meta {
                ", the same"
            } else {
                ", changed"
            }
        ));
    }
    Ok(Some(change))
}

/// Checks and converts what a resolver returned for `versions` versions; the flag as for
/// [`check_changes`].
pub(crate) fn check_resolution(
    resolution: wit::Resolution,
    versions: usize,
    limits: &DecodeLimits,
) -> Result<(Resolution, bool), OutputError> {
    let mut canonical = true;
    let checked = match resolution {
        wit::Resolution::Pick(i) => {
            let i = i as usize;
            if i >= versions {
                return Err(OutputError::PickOutOfRange { index: i, versions });
            }
            Resolution::Pick(i)
        }
        wit::Resolution::Merge(None) => Resolution::Merge(None),
        wit::Resolution::Merge(Some(bytes)) => {
            Resolution::Merge(Some(check_value(&bytes, &mut canonical, limits)?))
        }
    };
    Ok((checked, canonical))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(collection: &str, key: &[u8], value: Option<Vec<u8>>) -> wit::Change {
        wit::Change {
            collection: collection.into(),
            key: key.to_vec(),
            op: wit::Op::Put,
            value,
            schema: 0,
            meta: vec![],
        }
    }

    #[test]
    fn non_canonical_values_are_fixed() {
        // {"b": 1, "a": 2} with the keys out of order and 1 as a two-byte integer.
        let raw = vec![0xa2, 0x61, b'b', 0x18, 0x01, 0x61, b'a', 0x02];
        let (out, canonical) =
            check_changes(vec![put("c", b"k", Some(raw))], &EventLimits::default()).unwrap();
        assert_eq!(
            out[0].value.as_ref().unwrap().as_bytes(),
            [0xa2, 0x61, b'a', 0x02, 0x61, b'b', 0x01]
        );
        assert!(!canonical);
        let (_, canonical) =
            check_changes(vec![put("c", b"k", Some(vec![1]))], &EventLimits::default()).unwrap();
        assert!(canonical);
        let (_, canonical) = check_resolution(
            wit::Resolution::Merge(Some(vec![0x18, 1])),
            1,
            &DecodeLimits::default(),
        )
        .unwrap();
        assert!(!canonical);
    }

    /// What a plugin returns is held to the node's limits, which its config may raise past
    /// the defaults (a pass-through transform once refused writes the node took).
    #[test]
    fn the_nodes_limits_bound_what_a_plugin_returns() {
        let raised = EventLimits {
            max_key_bytes: 4096,
            ..EventLimits::default()
        };
        let long_key = || put("c", &[b'k'; 2000], Some(vec![1]));
        let refused = check_changes(vec![long_key()], &EventLimits::default()).unwrap_err();
        assert!(
            refused.to_string().contains("key is 2000 bytes"),
            "{refused}"
        );
        assert!(check_changes(vec![long_key()], &raised).is_ok());
    }

    #[test]
    fn bad_changes_are_refused() {
        let cases = [
            (put("c", b"k", Some(vec![0xff])), "change 0: invalid value"),
            (
                put("c", b"k", Some(vec![0x01, 0x02])),
                "change 0: invalid value",
            ),
            (
                put("bad name", b"k", Some(vec![1])),
                "invalid collection name",
            ),
            (put("c", b"", Some(vec![1])), "empty key"),
            (put("c", &[0; 1025], Some(vec![1])), "key is 1025 bytes"),
            (put("c", b"k", None), "put without a value"),
            (
                wit::Change {
                    op: wit::Op::Delete,
                    ..put("c", b"k", Some(vec![1]))
                },
                "delete with a value",
            ),
            (
                wit::Change {
                    meta: vec![("a".into(), "1".into()), ("a".into(), "2".into())],
                    ..put("c", b"k", Some(vec![1]))
                },
                "duplicate metadata key",
            ),
            (
                // Within the entry count, over the bytes an event's metadata may take: the
                // event decoder on every peer would refuse it.
                wit::Change {
                    meta: vec![("big".into(), "x".repeat(5000))],
                    ..put("c", b"k", Some(vec![1]))
                },
                "metadata of 5003 bytes, over the limit of 4096",
            ),
        ];
        for (change, expected) in cases {
            let error = check_changes(vec![change], &EventLimits::default())
                .unwrap_err()
                .to_string();
            assert!(error.contains(expected), "{error:?} lacks {expected:?}");
        }
        let many = vec![put("c", b"k", Some(vec![1])); MAX_CHANGES + 1];
        assert!(
            check_changes(many, &EventLimits::default())
                .unwrap_err()
                .to_string()
                .contains("10001 changes")
        );
    }

    #[test]
    fn picks_are_checked() {
        assert_eq!(
            check_resolution(wit::Resolution::Pick(1), 2, &DecodeLimits::default()),
            Ok((Resolution::Pick(1), true))
        );
        assert!(check_resolution(wit::Resolution::Pick(2), 2, &DecodeLimits::default()).is_err());
        assert!(
            check_resolution(
                wit::Resolution::Merge(Some(vec![0xff])),
                2,
                &DecodeLimits::default()
            )
            .is_err()
        );
        assert_eq!(
            check_resolution(wit::Resolution::Merge(None), 2, &DecodeLimits::default()),
            Ok((Resolution::Merge(None), true))
        );
    }
}
