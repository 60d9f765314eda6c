//! What plugins return, checked: everything a guest hands back is untrusted until it passes here.

use std::collections::BTreeMap;

use edgerep_wire::event::{EventLimits, check_collection_name};
use edgerep_wire::{DecodeLimits, Event, Op, Value};

use crate::bindings::wit;

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
fn check_value(bytes: &[u8], canonical: &mut bool) -> Result<Value, String> {
    let value = Value::canonicalize(bytes, &DecodeLimits::default())
        .map_err(|e| format!("invalid value: {e}"))?;
    *canonical &= value.as_bytes() == bytes;
    Ok(value)
}

/// Checks and converts what a transform returned. The flag says whether every value was
/// already in deterministic encoding (the conformance runner holds guests to it).
pub(crate) fn check_changes(changes: Vec<wit::Change>) -> Result<(Vec<Change>, bool), String> {
    if changes.len() > MAX_CHANGES {
        return Err(format!(
            "{} changes, over the limit of {MAX_CHANGES}",
            changes.len()
        ));
    }
    let total: usize = changes.iter().map(change_bytes).sum();
    if total > MAX_OUTPUT_BYTES {
        return Err(format!(
            "{total} bytes of changes, over the limit of {MAX_OUTPUT_BYTES}"
        ));
    }
    let mut canonical = true;
    let checked = changes
        .into_iter()
        .enumerate()
        .map(|(i, change)| {
            check_change(change, &mut canonical).map_err(|e| format!("change {i}: {e}"))
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

fn check_change(change: wit::Change, canonical: &mut bool) -> Result<Change, String> {
    // A change becomes an event every peer must decode, so the event decoder's limits apply.
    let limits = EventLimits::default();
    check_collection_name(&change.collection).map_err(|e| e.to_string())?;
    if change.key.is_empty() {
        return Err("empty key".into());
    }
    if change.key.len() > limits.max_key_bytes {
        return Err(format!(
            "key is {} bytes, over the limit of {}",
            change.key.len(),
            limits.max_key_bytes
        ));
    }
    let op = match change.op {
        wit::Op::Put => Op::Put,
        wit::Op::Delete => Op::Delete,
    };
    let value = match (op, change.value) {
        (Op::Put, Some(bytes)) => Some(check_value(&bytes, canonical)?),
        (Op::Delete, None) => None,
        (Op::Put, None) => return Err("put without a value".into()),
        (Op::Delete, Some(_)) => return Err("delete with a value".into()),
    };
    if change.meta.len() > limits.max_meta_entries {
        return Err(format!(
            "{} metadata entries, over the limit of {}",
            change.meta.len(),
            limits.max_meta_entries
        ));
    }
    let mut meta = BTreeMap::new();
    for (k, v) in change.meta {
        if meta.insert(k, v).is_some() {
            return Err("duplicate metadata key".into());
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

/// Checks and converts what a resolver returned for `versions` versions; the flag as for
/// [`check_changes`].
pub(crate) fn check_resolution(
    resolution: wit::Resolution,
    versions: usize,
) -> Result<(Resolution, bool), String> {
    let mut canonical = true;
    let checked = match resolution {
        wit::Resolution::Pick(i) => {
            let i = i as usize;
            if i >= versions {
                return Err(format!(
                    "pick({i}) out of range: there are {versions} versions"
                ));
            }
            Resolution::Pick(i)
        }
        wit::Resolution::Merge(None) => Resolution::Merge(None),
        wit::Resolution::Merge(Some(bytes)) => {
            Resolution::Merge(Some(check_value(&bytes, &mut canonical)?))
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
        let (out, canonical) = check_changes(vec![put("c", b"k", Some(raw))]).unwrap();
        assert_eq!(
            out[0].value.as_ref().unwrap().as_bytes(),
            [0xa2, 0x61, b'a', 0x02, 0x61, b'b', 0x01]
        );
        assert!(!canonical);
        let (_, canonical) = check_changes(vec![put("c", b"k", Some(vec![1]))]).unwrap();
        assert!(canonical);
        let (_, canonical) =
            check_resolution(wit::Resolution::Merge(Some(vec![0x18, 1])), 1).unwrap();
        assert!(!canonical);
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
        ];
        for (change, expected) in cases {
            let error = check_changes(vec![change]).unwrap_err();
            assert!(error.contains(expected), "{error:?} lacks {expected:?}");
        }
        let many = vec![put("c", b"k", Some(vec![1])); MAX_CHANGES + 1];
        assert!(check_changes(many).unwrap_err().contains("10001 changes"));
    }

    #[test]
    fn picks_are_checked() {
        assert_eq!(
            check_resolution(wit::Resolution::Pick(1), 2),
            Ok((Resolution::Pick(1), true))
        );
        assert!(check_resolution(wit::Resolution::Pick(2), 2).is_err());
        assert!(check_resolution(wit::Resolution::Merge(Some(vec![0xff])), 2).is_err());
        assert_eq!(
            check_resolution(wit::Resolution::Merge(None), 2),
            Ok((Resolution::Merge(None), true))
        );
    }
}
