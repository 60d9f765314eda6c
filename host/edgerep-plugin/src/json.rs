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
use edgerep_wire::event::{FORMAT_VERSION, check_collection_name};
use edgerep_wire::{DecodeLimits, Event, Hlc, NodeId, Op, Value, VersionVector};
use serde_json::{Map, Value as Json, json};

use crate::failure::Failure;
use crate::output::{Change, Resolution};

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
pub fn event_from_json(json: &Json) -> Result<Event, String> {
    event_with_defaults(json, None)
}

/// A resolver's input: `{"collection", "key" | "key_base64", "versions": [event, ...]}`, where
/// each version defaults its `collection` and `key` to the input's.
pub fn resolver_input_from_json(json: &Json) -> Result<(String, Vec<u8>, Vec<Event>), String> {
    let o = object(json, "resolver input")?;
    check_fields(
        o,
        &["collection", "key", "key_base64", "versions"],
        "resolver input",
    )?;
    let collection = text(o, "collection")?
        .ok_or("resolver input: missing collection")?
        .to_owned();
    check_collection_name(&collection).map_err(|e| e.to_string())?;
    let key = key_of(o)?.ok_or("resolver input: missing key (or key_base64)")?;
    let versions = o
        .get("versions")
        .ok_or("resolver input: missing versions")?
        .as_array()
        .ok_or("resolver input: versions is not a list")?
        .iter()
        .enumerate()
        .map(|(i, v)| {
            event_with_defaults(v, Some((&collection, &key)))
                .map_err(|e| format!("versions[{i}]: {e}"))
        })
        .collect::<Result<_, _>>()?;
    Ok((collection, key, versions))
}

fn event_with_defaults(json: &Json, inherit: Option<(&str, &[u8])>) -> Result<Event, String> {
    let o = object(json, "event")?;
    check_fields(o, &EVENT_FIELDS, "event")?;
    let collection = match text(o, "collection")? {
        Some(c) => c.to_owned(),
        None => inherit.ok_or("missing collection")?.0.to_owned(),
    };
    check_collection_name(&collection).map_err(|e| e.to_string())?;
    let key = match key_of(o)? {
        Some(k) => k,
        None => inherit.ok_or("missing key (or key_base64)")?.1.to_vec(),
    };
    if key.is_empty() {
        return Err("empty key".into());
    }
    let op = match text(o, "op")? {
        None | Some("put") => Op::Put,
        Some("delete") => Op::Delete,
        Some(other) => return Err(format!("unknown op {other:?} (put or delete)")),
    };
    let value = value_of(o, "value", "value_hex")?;
    match (op, &value) {
        (Op::Put, None) => return Err("a put needs value or value_hex".into()),
        (Op::Delete, Some(_)) => return Err("a delete has no value".into()),
        _ => {}
    }
    let origin =
        NodeId::parse(text(o, "origin")?.unwrap_or("vector")).map_err(|e| e.to_string())?;
    let mut context = VersionVector::new();
    if let Some(c) = o.get("context") {
        for dot in c.as_array().ok_or("context is not a list")? {
            let d = object(dot, "context entry")?;
            check_fields(d, &["origin", "seq"], "context entry")?;
            let origin = NodeId::parse(text(d, "origin")?.ok_or("context entry: missing origin")?)
                .map_err(|e| e.to_string())?;
            let seq = uint(d, "seq")?.ok_or("context entry: missing seq")?;
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
        schema: u32::try_from(uint(o, "schema")?.unwrap_or(0)).map_err(|_| "schema is over u32")?,
        meta: meta_of(o.get("meta"))?,
        context,
        extra: BTreeMap::new(),
    })
}

/// A change as JSON: `collection`, `key` (or `key_base64` if the key is not UTF-8), `op`,
/// `value` (the JSON form, for reading) and `value_hex` (the deterministic CBOR, exact) on puts,
/// `schema`, `meta`.
pub fn change_to_json(change: &Change) -> Json {
    let mut o = Map::new();
    o.insert("collection".into(), json!(change.collection));
    match std::str::from_utf8(&change.key) {
        Ok(key) => o.insert("key".into(), json!(key)),
        Err(_) => o.insert("key_base64".into(), json!(BASE64.encode(&change.key))),
    };
    o.insert("op".into(), json!(op_name(change.op)));
    if let Some(value) = &change.value {
        o.insert("value".into(), value.to_json());
        o.insert("value_hex".into(), json!(hex::encode(value.as_bytes())));
    }
    o.insert("schema".into(), json!(change.schema));
    o.insert("meta".into(), json!(change.meta));
    Json::Object(o)
}

/// A resolution as JSON: `{"pick": i}`, `{"merge": value, "merge_hex": hex}`, or
/// `{"merge": null}` for a merge into a delete.
pub fn resolution_to_json(resolution: &Resolution) -> Json {
    match resolution {
        Resolution::Pick(i) => json!({ "pick": i }),
        Resolution::Merge(None) => json!({ "merge": null }),
        Resolution::Merge(Some(value)) => json!({
            "merge": value.to_json(),
            "merge_hex": hex::encode(value.as_bytes()),
        }),
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

pub(crate) fn object<'a>(json: &'a Json, what: &str) -> Result<&'a Map<String, Json>, String> {
    json.as_object()
        .ok_or_else(|| format!("{what} is not a JSON object"))
}

pub(crate) fn check_fields(
    o: &Map<String, Json>,
    allowed: &[&str],
    what: &str,
) -> Result<(), String> {
    match o.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(format!(
            "{what}: unknown field {k:?} (known: {})",
            allowed.join(", ")
        )),
        None => Ok(()),
    }
}

pub(crate) fn text<'a>(o: &'a Map<String, Json>, field: &str) -> Result<Option<&'a str>, String> {
    o.get(field)
        .map(|v| v.as_str().ok_or_else(|| format!("{field} is not text")))
        .transpose()
}

pub(crate) fn uint(o: &Map<String, Json>, field: &str) -> Result<Option<u64>, String> {
    o.get(field)
        .map(|v| {
            v.as_u64()
                .ok_or_else(|| format!("{field} is not a non-negative integer"))
        })
        .transpose()
}

/// `key` (text) or `key_base64`, if either is given.
pub(crate) fn key_of(o: &Map<String, Json>) -> Result<Option<Vec<u8>>, String> {
    match (text(o, "key")?, text(o, "key_base64")?) {
        (Some(key), None) => Ok(Some(key.as_bytes().to_vec())),
        (None, Some(b64)) => BASE64
            .decode(b64)
            .map(Some)
            .map_err(|e| format!("key_base64: {e}")),
        (None, None) => Ok(None),
        (Some(_), Some(_)) => Err("both key and key_base64".into()),
    }
}

/// A value from its JSON form (`json_field`) and/or its deterministic CBOR in hex (`hex_field`);
/// when both are given they must be the same value (JSON `null` is the CBOR null).
pub(crate) fn value_of(
    o: &Map<String, Json>,
    json_field: &str,
    hex_field: &str,
) -> Result<Option<Value>, String> {
    let limits = DecodeLimits::default();
    let from_json = o
        .get(json_field)
        .map(|j| Value::from_json(j, &limits).map_err(|e| format!("{json_field}: {e}")))
        .transpose()?;
    let from_hex = text(o, hex_field)?
        .map(|h| {
            let bytes = hex::decode(h).map_err(|e| format!("{hex_field}: {e}"))?;
            Value::from_canonical(bytes, &limits).map_err(|e| format!("{hex_field}: {e}"))
        })
        .transpose()?;
    match (from_json, from_hex) {
        (Some(a), Some(b)) if a != b => Err(format!(
            "{hex_field} {} is not the deterministic encoding of {json_field} (that is {})",
            hex::encode(b.as_bytes()),
            hex::encode(a.as_bytes())
        )),
        (a, b) => Ok(b.or(a)),
    }
}

fn hlc_of(json: Option<&Json>) -> Result<Hlc, String> {
    match json {
        None => Ok(Hlc::default()),
        Some(Json::String(s)) => {
            let parsed = s
                .split_once('.')
                .and_then(|(p, l)| Some(Hlc::new(p.parse().ok()?, l.parse().ok()?)));
            parsed.ok_or_else(|| format!("hlc {s:?} is not \"physical_ms.logical\""))
        }
        Some(j) => {
            let o = object(j, "hlc")?;
            check_fields(o, &["physical_ms", "logical"], "hlc")?;
            let physical_ms = uint(o, "physical_ms")?.ok_or("hlc: missing physical_ms")?;
            let logical = uint(o, "logical")?.unwrap_or(0);
            Ok(Hlc::new(
                physical_ms,
                u32::try_from(logical).map_err(|_| "hlc logical is over u32")?,
            ))
        }
    }
}

pub(crate) fn meta_of(json: Option<&Json>) -> Result<BTreeMap<String, String>, String> {
    let Some(json) = json else {
        return Ok(BTreeMap::new());
    };
    object(json, "meta")?
        .iter()
        .map(|(k, v)| {
            let v = v
                .as_str()
                .ok_or_else(|| format!("meta {k:?} is not text"))?;
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
            let error = event_from_json(&bad).unwrap_err();
            assert!(
                error.contains(expected),
                "{bad}: {error:?} lacks {expected:?}"
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
    }
}
