//! JSON forms of plugin inputs and outputs, for `edgerep plugin run --input` and the conformance
//! runner. The format is the one of `tests/vectors/plugins/README.md`.
//!
//! An event (the input of a transform, or one version given to a resolver):
//!
//! | field | default | notes |
//! |---|---|---|
//! | `collection` | required | a valid collection name |
//! | `key` or `key_base64` | required | text (its UTF-8 bytes) or standard base64 |
//! | `op` | `"put"` | `"put"` or `"delete"` |
//! | `value` or `value_hex` | required for a put, absent for a delete | JSON (mapped as `Value::from_json`) or the hex of deterministic CBOR; if both are given they must agree |
//! | `hlc` | `0.0` | `"ms.logical"` or `{"physical_ms", "logical"}` |
//! | `origin` | `"vector"` | a valid node id |
//! | `seq` | `1` | |
//! | `schema` | `0` | |
//! | `meta` | `{}` | text to text |
//! | `context` | `[]` | `[{"origin", "seq"}]` |
//!
//! Unknown fields are refused, so a typo cannot silently fall back to a default.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use edgerep_wire::event::{EventError, FORMAT_VERSION, check_collection_name};
use edgerep_wire::{DecodeLimits, Event, Hlc, NodeId, Op, Value, ValueError, VersionVector};
use serde_json::{Map, Value as Json, json};

use crate::failure::Failure;
use crate::output::{Change, Resolution};

/// Why a JSON form is refused (the message names the field).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum JsonError {
    /// An event for a transform on ingest gives a sequence number other than 0.
    #[error(
        "seq {seq}: a transform on ingest sees sequence number 0 (the write is numbered when it is stored); leave seq out, or give \"stage\": \"apply\""
    )]
    IngestSeq {
        /// The sequence number given.
        seq: u64,
    },
    /// An event for a transform on ingest gives a causal context.
    #[error(
        "context: a transform on ingest sees no causal context (the write gets one when it is stored); leave context out, or give \"stage\": \"apply\""
    )]
    IngestContext,
    /// Something that must be a JSON object is not.
    #[error("{what} is not a JSON object")]
    NotObject {
        /// What it is (`event`, `hlc`, ...).
        what: &'static str,
    },
    /// An object has a field it may not have.
    #[error("{what}: unknown field {field:?} (known: {})", .known.join(", "))]
    UnknownField {
        /// The object (`event`, `hlc`, ...).
        what: &'static str,
        /// The unknown field.
        field: String,
        /// The fields it may have.
        known: &'static [&'static str],
    },
    /// A field that must be text is not.
    #[error("{field} is not text")]
    NotText {
        /// The field.
        field: &'static str,
    },
    /// A field that must be a non-negative integer is not.
    #[error("{field} is not a non-negative integer")]
    NotUint {
        /// The field.
        field: &'static str,
    },
    /// A required field is missing.
    #[error("missing {field}")]
    Missing {
        /// The field (`key (or key_base64)` where either will do).
        field: &'static str,
    },
    /// A required field of a part is missing.
    #[error("{what}: missing {field}")]
    MissingIn {
        /// The part (`resolver input`, `context entry`, `hlc`).
        what: &'static str,
        /// The field.
        field: &'static str,
    },
    /// `key_base64` is not standard base64.
    #[error("key_base64: {0}")]
    KeyBase64(base64::DecodeError),
    /// Both `key` and `key_base64` are given.
    #[error("both key and key_base64")]
    BothKeys,
    /// A collection name or node id is not valid.
    #[error(transparent)]
    InvalidName(#[from] EventError),
    /// The key is empty.
    #[error("empty key")]
    EmptyKey,
    /// `op` is neither `put` nor `delete`.
    #[error("unknown op {op:?} (put or delete)")]
    UnknownOp {
        /// The op given.
        op: String,
    },
    /// A put has neither `value` nor `value_hex`.
    #[error("a put needs value or value_hex")]
    PutWithoutValue,
    /// A delete has a value.
    #[error("a delete has no value")]
    DeleteWithValue,
    /// `context` is not a list.
    #[error("context is not a list")]
    ContextNotList,
    /// A resolver input's `versions` is not a list.
    #[error("resolver input: versions is not a list")]
    VersionsNotList,
    /// A resolver input's versions are not what a node could pass: fewer than two, not in the
    /// node's order, or of another key.
    #[error("resolver input: {0}")]
    VersionsNotAsANodeGives(String),
    /// `schema` does not fit in 32 bits.
    #[error("schema is over u32")]
    SchemaOverU32,
    /// The JSON form of a value is not a valid value.
    #[error("{field}: {error}")]
    InvalidValue {
        /// The field (`value`, `merge`).
        field: &'static str,
        /// Why the value is refused.
        error: ValueError,
    },
    /// The hex of a value is not hex.
    #[error("{field}: {error}")]
    InvalidHex {
        /// The field (`value_hex`, `merge_hex`).
        field: &'static str,
        /// Why the hex is refused.
        error: hex::FromHexError,
    },
    /// The hex of a value is not one data item in deterministic CBOR.
    #[error("{field}: {error}")]
    InvalidCbor {
        /// The field (`value_hex`, `merge_hex`).
        field: &'static str,
        /// Why the bytes are refused.
        error: ValueError,
    },
    /// The JSON form and the hex of a value are different values.
    #[error(
        "{hex_field} {} is not the deterministic encoding of {json_field} (that is {})",
        hex::encode(.from_hex.as_bytes()),
        hex::encode(.from_json.as_bytes())
    )]
    HexMismatch {
        /// The field of the JSON form (`value`, `merge`).
        json_field: &'static str,
        /// The field of the hex (`value_hex`, `merge_hex`).
        hex_field: &'static str,
        /// The value of the JSON form.
        from_json: Value,
        /// The value of the hex.
        from_hex: Value,
    },
    /// `hlc` is text but not `"physical_ms.logical"`.
    #[error("hlc {hlc:?} is not \"physical_ms.logical\"")]
    HlcFormat {
        /// The text given.
        hlc: String,
    },
    /// The logical part of `hlc` does not fit in 32 bits.
    #[error("hlc logical is over u32")]
    HlcLogicalOverU32,
    /// A metadata value is not text.
    #[error("meta {key:?} is not text")]
    MetaNotText {
        /// Its key.
        key: String,
    },
    /// One of a resolver input's versions is refused.
    #[error("versions[{index}]: {error}")]
    Version {
        /// Its position in `versions`.
        index: usize,
        /// Why it is refused.
        error: Box<JsonError>,
    },
}

/// The fields an event may have.
const EVENT_FIELDS: [&str; 12] = [
    "collection",
    "key",
    "key_base64",
    "op",
    "value",
    "value_hex",
    "hlc",
    "origin",
    "seq",
    "schema",
    "meta",
    "context",
];

/// An event from its JSON form (see the [module documentation](self) for fields and defaults).
pub fn event_from_json(json: &Json) -> Result<Event, JsonError> {
    event_with_defaults(json, None)
}

/// A resolver's input: `{"collection", "key" | "key_base64", "versions": [event, ...]}`, where
/// each version defaults its `collection` and `key` to the input's.
pub fn resolver_input_from_json(json: &Json) -> Result<(String, Vec<u8>, Vec<Event>), JsonError> {
    let o = object(json, "resolver input")?;
    check_fields(
        o,
        &["collection", "key", "key_base64", "versions"],
        "resolver input",
    )?;
    let collection = text(o, "collection")?
        .ok_or(JsonError::MissingIn {
            what: "resolver input",
            field: "collection",
        })?
        .to_owned();
    check_collection_name(&collection)?;
    let key = key_of(o)?.ok_or(JsonError::MissingIn {
        what: "resolver input",
        field: "key (or key_base64)",
    })?;
    let versions = o
        .get("versions")
        .ok_or(JsonError::MissingIn {
            what: "resolver input",
            field: "versions",
        })?
        .as_array()
        .ok_or(JsonError::VersionsNotList)?
        .iter()
        .enumerate()
        .map(|(i, v)| {
            event_with_defaults(v, Some((&collection, &key))).map_err(|e| JsonError::Version {
                index: i,
                error: Box::new(e),
            })
        })
        .collect::<Result<Vec<Event>, _>>()?;
    check_versions_as_a_node_gives(&collection, &key, &versions)?;
    Ok((collection, key, versions))
}

/// A node calls a resolver only for two versions or more of one key, sorted by origin then
/// sequence number (the WIT contract): a test input that differs would pass a test and
/// decide otherwise on a node (a tie broken by position picks another version).
fn check_versions_as_a_node_gives(
    collection: &str,
    key: &[u8],
    versions: &[Event],
) -> Result<(), JsonError> {
    let refuse = |why: String| Err(JsonError::VersionsNotAsANodeGives(why));
    if versions.len() < 2 {
        return refuse(format!(
            "{} version(s); a node calls a resolver only for two concurrent versions or more",
            versions.len()
        ));
    }
    if let Some((i, v)) = versions
        .iter()
        .enumerate()
        .find(|(_, v)| v.collection != collection || v.key != key)
    {
        return refuse(format!(
            "versions[{i}] is of collection {:?} key {:?}, not the input's {collection:?} {:?}: a resolver decides one key",
            v.collection,
            String::from_utf8_lossy(&v.key),
            String::from_utf8_lossy(key)
        ));
    }
    for (i, pair) in versions.windows(2).enumerate() {
        let (a, b) = (&pair[0], &pair[1]);
        if (&a.origin, a.seq) >= (&b.origin, b.seq) {
            return refuse(format!(
                "versions[{}] ({}:{}) must come after versions[{i}] ({}:{}): a node passes versions sorted by origin, then seq, each once; list them so, and count \"pick\" in that order",
                i + 1,
                b.origin,
                b.seq,
                a.origin,
                a.seq
            ));
        }
    }
    Ok(())
}

fn event_with_defaults(json: &Json, inherit: Option<(&str, &[u8])>) -> Result<Event, JsonError> {
    let o = object(json, "event")?;
    check_fields(o, &EVENT_FIELDS, "event")?;
    let collection = match text(o, "collection")? {
        Some(c) => c.to_owned(),
        None => inherit
            .ok_or(JsonError::Missing {
                field: "collection",
            })?
            .0
            .to_owned(),
    };
    check_collection_name(&collection)?;
    let key = match key_of(o)? {
        Some(k) => k,
        None => inherit
            .ok_or(JsonError::Missing {
                field: "key (or key_base64)",
            })?
            .1
            .to_vec(),
    };
    if key.is_empty() {
        return Err(JsonError::EmptyKey);
    }
    let op = match text(o, "op")? {
        None | Some("put") => Op::Put,
        Some("delete") => Op::Delete,
        Some(other) => {
            return Err(JsonError::UnknownOp {
                op: other.to_owned(),
            });
        }
    };
    let value = value_of(o, "value", "value_hex")?;
    match (op, &value) {
        (Op::Put, None) => return Err(JsonError::PutWithoutValue),
        (Op::Delete, Some(_)) => return Err(JsonError::DeleteWithValue),
        _ => {}
    }
    let origin = NodeId::parse(text(o, "origin")?.unwrap_or("vector"))?;
    let mut context = VersionVector::new();
    if let Some(c) = o.get("context") {
        for dot in c.as_array().ok_or(JsonError::ContextNotList)? {
            let d = object(dot, "context entry")?;
            check_fields(d, &["origin", "seq"], "context entry")?;
            let origin = NodeId::parse(text(d, "origin")?.ok_or(JsonError::MissingIn {
                what: "context entry",
                field: "origin",
            })?)?;
            let seq = uint(d, "seq")?.ok_or(JsonError::MissingIn {
                what: "context entry",
                field: "seq",
            })?;
            context.add(&edgerep_wire::event::Dot { origin, seq });
        }
    }
    Ok(Event {
        format: FORMAT_VERSION,
        collection,
        key,
        op,
        value,
        hlc: hlc_of(o.get("hlc"))?,
        origin,
        seq: uint(o, "seq")?.unwrap_or(1),
        schema: u32::try_from(uint(o, "schema")?.unwrap_or(0))
            .map_err(|_| JsonError::SchemaOverU32)?,
        meta: meta_of(o.get("meta"))?,
        context,
        extra: BTreeMap::new(),
    })
}

/// `json` as the event a transform on ingest sees at a node: sequence number 0 (the default
/// here) and no causal context, since the write is numbered and given its context when it is
/// stored. A vector giving either is refused: no node would call the transform so, and a
/// transform that reads them would pass its vectors and misbehave in a node.
pub fn ingest_event_from_json(json: &Json) -> Result<Event, JsonError> {
    let mut event = event_from_json(json)?;
    if json.get("seq").is_some() && event.seq != 0 {
        return Err(JsonError::IngestSeq { seq: event.seq });
    }
    if !event.context.is_empty() {
        return Err(JsonError::IngestContext);
    }
    event.seq = 0;
    Ok(event)
}

/// The event a transform sees at its stage: [`event_from_json`] on apply,
/// [`ingest_event_from_json`] on ingest.
pub fn event_at_stage(json: &Json, on_apply: bool) -> Result<Event, JsonError> {
    if on_apply {
        event_from_json(json)
    } else {
        ingest_event_from_json(json)
    }
}

/// `value`'s JSON form when it converts back to the same bytes (`None` for bytes, NaN, map keys
/// that are not text, ...): what `plugin run` prints beside the exact hex, so that its output
/// pasted into a vector reads back as the same value.
fn exact_json(value: &Value) -> Option<Json> {
    let json = value.to_json();
    Value::from_json(&json, &edgerep_wire::value::DecodeLimits::default())
        .is_ok_and(|back| back == *value)
        .then_some(json)
}

/// A change as JSON: `collection`, `key` (or `key_base64` if the key is not UTF-8), `op`,
/// `value` (the JSON form, for reading; left out when it would not read back as the same
/// value) and `value_hex` (the deterministic CBOR, exact) on puts, `schema`, `meta`.
pub fn change_to_json(change: &Change) -> Json {
    let mut o = Map::new();
    o.insert("collection".into(), json!(change.collection));
    match std::str::from_utf8(&change.key) {
        Ok(key) => o.insert("key".into(), json!(key)),
        Err(_) => o.insert("key_base64".into(), json!(BASE64.encode(&change.key))),
    };
    o.insert("op".into(), json!(op_name(change.op)));
    if let Some(value) = &change.value {
        if let Some(json) = exact_json(value) {
            o.insert("value".into(), json);
        }
        o.insert("value_hex".into(), json!(hex::encode(value.as_bytes())));
    }
    o.insert("schema".into(), json!(change.schema));
    o.insert("meta".into(), json!(change.meta));
    Json::Object(o)
}

/// A resolution as JSON: `{"pick": i}`, `{"merge": value, "merge_hex": hex}` (`merge` left
/// out when it would not read back as the same value, or is null: `{"merge": null}` is a merge
/// into a delete), or `{"merge": null}` for a merge into a delete.
pub fn resolution_to_json(resolution: &Resolution) -> Json {
    match resolution {
        Resolution::Pick(i) => json!({ "pick": i }),
        Resolution::Merge(None) => json!({ "merge": null }),
        Resolution::Merge(Some(value)) => {
            let mut o = Map::new();
            if let Some(json) = exact_json(value).filter(|j| !j.is_null()) {
                o.insert("merge".into(), json);
            }
            o.insert("merge_hex".into(), json!(hex::encode(value.as_bytes())));
            Json::Object(o)
        }
    }
}

/// A failure as JSON: `{"error": kind, "message": text, "fuel_used": n}`.
pub fn failure_to_json(failure: &Failure) -> Json {
    json!({
        "error": failure.kind.as_str(),
        "message": failure.message,
        "fuel_used": failure.fuel_used,
    })
}

fn op_name(op: Op) -> &'static str {
    match op {
        Op::Put => "put",
        Op::Delete => "delete",
    }
}

pub(crate) fn object<'a>(
    json: &'a Json,
    what: &'static str,
) -> Result<&'a Map<String, Json>, JsonError> {
    json.as_object().ok_or(JsonError::NotObject { what })
}

pub(crate) fn check_fields(
    o: &Map<String, Json>,
    allowed: &'static [&'static str],
    what: &'static str,
) -> Result<(), JsonError> {
    match o.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(JsonError::UnknownField {
            what,
            field: k.clone(),
            known: allowed,
        }),
        None => Ok(()),
    }
}

pub(crate) fn text<'a>(
    o: &'a Map<String, Json>,
    field: &'static str,
) -> Result<Option<&'a str>, JsonError> {
    o.get(field)
        .map(|v| v.as_str().ok_or(JsonError::NotText { field }))
        .transpose()
}

pub(crate) fn uint(o: &Map<String, Json>, field: &'static str) -> Result<Option<u64>, JsonError> {
    o.get(field)
        .map(|v| v.as_u64().ok_or(JsonError::NotUint { field }))
        .transpose()
}

/// `key` (text) or `key_base64`, if either is given.
pub(crate) fn key_of(o: &Map<String, Json>) -> Result<Option<Vec<u8>>, JsonError> {
    match (text(o, "key")?, text(o, "key_base64")?) {
        (Some(key), None) => Ok(Some(key.as_bytes().to_vec())),
        (None, Some(b64)) => BASE64.decode(b64).map(Some).map_err(JsonError::KeyBase64),
        (None, None) => Ok(None),
        (Some(_), Some(_)) => Err(JsonError::BothKeys),
    }
}

/// A value from its JSON form (`json_field`) and/or its deterministic CBOR in hex (`hex_field`);
/// when both are given they must be the same value (JSON `null` is the CBOR null).
pub(crate) fn value_of(
    o: &Map<String, Json>,
    json_field: &'static str,
    hex_field: &'static str,
) -> Result<Option<Value>, JsonError> {
    let limits = DecodeLimits::default();
    let from_json = o
        .get(json_field)
        .map(|j| {
            Value::from_json(j, &limits).map_err(|error| JsonError::InvalidValue {
                field: json_field,
                error,
            })
        })
        .transpose()?;
    let from_hex = text(o, hex_field)?
        .map(|h| {
            let bytes = hex::decode(h).map_err(|error| JsonError::InvalidHex {
                field: hex_field,
                error,
            })?;
            Value::from_canonical(bytes, &limits).map_err(|error| JsonError::InvalidCbor {
                field: hex_field,
                error,
            })
        })
        .transpose()?;
    match (from_json, from_hex) {
        (Some(a), Some(b)) if a != b => Err(JsonError::HexMismatch {
            json_field,
            hex_field,
            from_json: a,
            from_hex: b,
        }),
        (a, b) => Ok(b.or(a)),
    }
}

fn hlc_of(json: Option<&Json>) -> Result<Hlc, JsonError> {
    match json {
        None => Ok(Hlc::default()),
        Some(Json::String(s)) => {
            let parsed = s
                .split_once('.')
                .and_then(|(p, l)| Some(Hlc::new(p.parse().ok()?, l.parse().ok()?)));
            parsed.ok_or_else(|| JsonError::HlcFormat { hlc: s.clone() })
        }
        Some(j) => {
            let o = object(j, "hlc")?;
            check_fields(o, &["physical_ms", "logical"], "hlc")?;
            let physical_ms = uint(o, "physical_ms")?.ok_or(JsonError::MissingIn {
                what: "hlc",
                field: "physical_ms",
            })?;
            let logical = uint(o, "logical")?.unwrap_or(0);
            Ok(Hlc::new(
                physical_ms,
                u32::try_from(logical).map_err(|_| JsonError::HlcLogicalOverU32)?,
            ))
        }
    }
}

pub(crate) fn meta_of(json: Option<&Json>) -> Result<BTreeMap<String, String>, JsonError> {
    let Some(json) = json else {
        return Ok(BTreeMap::new());
    };
    object(json, "meta")?
        .iter()
        .map(|(k, v)| {
            let v = v
                .as_str()
                .ok_or_else(|| JsonError::MetaNotText { key: k.clone() })?;
            Ok((k.clone(), v.to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let e =
            event_from_json(&json!({"collection": "c", "key": "k", "value": {"a": 1}})).unwrap();
        assert_eq!(e.op, Op::Put);
        assert_eq!(e.hlc, Hlc::new(0, 0));
        assert_eq!(e.origin.as_str(), "vector");
        assert_eq!(e.seq, 1);
        assert_eq!(e.schema, 0);
        assert!(e.meta.is_empty() && e.context.is_empty());
        assert_eq!(
            e.value.as_ref().unwrap().as_bytes(),
            [0xa1, 0x61, b'a', 0x01]
        );
        assert_valid(&e);
    }

    /// A transform on ingest sees sequence number 0 and no causal context at a node: a vector
    /// for it gets them by default, and one that gives others is refused, naming the field.
    #[test]
    fn an_ingest_event_is_numbered_0_without_context() {
        let base = json!({"collection": "c", "key": "k", "value": 1});
        assert_eq!(ingest_event_from_json(&base).unwrap().seq, 0);
        let mut zero = base.clone();
        zero["seq"] = json!(0);
        assert_eq!(ingest_event_from_json(&zero).unwrap().seq, 0);
        let mut numbered = base.clone();
        numbered["seq"] = json!(42);
        let e = ingest_event_from_json(&numbered).unwrap_err();
        assert!(e.to_string().starts_with("seq 42:"), "{e}");
        let mut with_context = base.clone();
        with_context["context"] = json!([{"origin": "b", "seq": 7}]);
        let e = ingest_event_from_json(&with_context).unwrap_err();
        assert!(e.to_string().starts_with("context:"), "{e}");
        // On apply (`event_from_json`) both are as given.
        assert_eq!(event_from_json(&numbered).unwrap().seq, 42);
    }

    /// The event is valid: it encodes and decodes to itself.
    fn assert_valid(event: &Event) {
        let back = Event::decode(&event.encode(), &Default::default()).unwrap();
        assert_eq!(&back, event);
    }

    #[test]
    fn every_field() {
        let e = event_from_json(&json!({
            "collection": "blobs", "key_base64": "AAECAw==", "value_hex": "4401020304",
            "hlc": "1700000000000.4", "origin": "site-a", "seq": 42, "schema": 3,
            "meta": {"by": "pos"}, "context": [{"origin": "site-b", "seq": 7}],
        }))
        .unwrap();
        assert_eq!(e.key, [0, 1, 2, 3]);
        assert_eq!(e.hlc, Hlc::new(1_700_000_000_000, 4));
        assert_eq!(
            e.context.iter().next().map(|(o, s)| (o.as_str(), s)),
            Some(("site-b", 7))
        );
        assert_valid(&e);
        let hlc = event_from_json(&json!({"collection": "c", "key": "k", "op": "delete",
            "hlc": {"physical_ms": 5, "logical": 2}}))
        .unwrap()
        .hlc;
        assert_eq!(hlc, Hlc::new(5, 2));
    }

    #[test]
    fn mistakes_are_refused() {
        for (bad, expected) in [
            (json!({"collection": "c", "key": "k"}), "a put needs value"),
            (
                json!({"collection": "c", "key": "k", "op": "delete", "value": 1}),
                "a delete has no value",
            ),
            (
                json!({"collection": "c", "key": "k", "value": 1, "vlaue": 2}),
                "unknown field \"vlaue\"",
            ),
            (
                json!({"collection": "c", "key": "k", "value": 1, "value_hex": "02"}),
                "not the deterministic encoding",
            ),
            (
                json!({"collection": "c", "key": "k", "value_hex": "1801"}),
                "value_hex",
            ),
            (
                json!({"collection": "bad name", "key": "k", "value": 1}),
                "invalid collection name",
            ),
            (
                json!({"collection": "c", "key": "", "value": 1}),
                "empty key",
            ),
            (
                json!({"collection": "c", "key": "k", "value": 1, "hlc": "12"}),
                "hlc",
            ),
        ] {
            let error = event_from_json(&bad).unwrap_err().to_string();
            assert!(
                error.contains(expected),
                "{bad}: {error:?} lacks {expected:?}"
            );
        }
    }

    /// What `plugin run` prints reads back as the same value when pasted into a vector: a
    /// value without an exact JSON form (bytes, a CBOR null merge) is given by its hex alone
    /// (its lossy JSON form beside the hex was refused as a mismatch).
    #[test]
    fn outputs_read_back_as_the_same_values() {
        let limits = DecodeLimits::default();
        for hex_value in ["43010203", "f6", "a1616101", "f97e00"] {
            let value = Value::from_canonical(hex::decode(hex_value).unwrap(), &limits).unwrap();
            let change = Change {
                collection: "c".into(),
                key: b"k".to_vec(),
                op: Op::Put,
                value: Some(value.clone()),
                schema: 0,
                meta: BTreeMap::new(),
            };
            let out = change_to_json(&change);
            let o = out.as_object().unwrap();
            assert_eq!(
                value_of(o, "value", "value_hex").unwrap(),
                Some(value.clone()),
                "{out}"
            );
            let merge = resolution_to_json(&Resolution::Merge(Some(value.clone())));
            let o = merge.as_object().unwrap();
            assert!(!o.get("merge").is_some_and(Json::is_null), "{merge}");
            assert_eq!(
                value_of(o, "merge", "merge_hex").unwrap(),
                Some(value),
                "{merge}"
            );
        }
    }

    #[test]
    fn outputs() {
        let value = Value::from_json(&json!({"a": 1}), &DecodeLimits::default()).unwrap();
        let change = Change {
            collection: "c".into(),
            key: vec![0xff],
            op: Op::Put,
            value: Some(value.clone()),
            schema: 2,
            meta: [("m".to_owned(), "v".to_owned())].into(),
        };
        assert_eq!(
            change_to_json(&change),
            json!({"collection": "c", "key_base64": "/w==", "op": "put", "value": {"a": 1},
                   "value_hex": "a1616101", "schema": 2, "meta": {"m": "v"}})
        );
        assert_eq!(resolution_to_json(&Resolution::Pick(3)), json!({"pick": 3}));
        assert_eq!(
            resolution_to_json(&Resolution::Merge(None)),
            json!({"merge": null})
        );
        assert_eq!(
            resolution_to_json(&Resolution::Merge(Some(value))),
            json!({"merge": {"a": 1}, "merge_hex": "a1616101"})
        );
        let (c, k, versions) = resolver_input_from_json(&json!({"collection": "c", "key": "k",
            "versions": [{"origin": "a", "value": 1}, {"origin": "b", "op": "delete"}]}))
        .unwrap();
        assert_eq!(
            (c.as_str(), k.as_slice(), versions.len()),
            ("c", b"k".as_slice(), 2)
        );
        assert_eq!(versions[1].key, b"k");

        // What no node passes a resolver is refused, naming what is wrong.
        for (versions, needle) in [
            (json!([{"origin": "a", "value": 1}]), "1 version(s)"),
            (
                json!([{"origin": "b", "value": 1}, {"origin": "a", "value": 2}]),
                "versions[1] (a:1) must come after versions[0] (b:1)",
            ),
            (
                json!([{"origin": "a", "seq": 2, "value": 1}, {"origin": "a", "seq": 2, "value": 2}]),
                "versions[1] (a:2) must come after",
            ),
            (
                json!([{"origin": "a", "value": 1}, {"origin": "b", "key": "other", "value": 2}]),
                "versions[1] is of collection \"c\" key \"other\"",
            ),
        ] {
            let e = resolver_input_from_json(
                &json!({"collection": "c", "key": "k", "versions": versions}),
            )
            .unwrap_err()
            .to_string();
            assert!(e.contains(needle), "{e}");
        }
    }
}
