//! Dead letters: events a plugin failed on, kept at the node with everything needed to see why
//! and to replay them (`edgerep dead-letters list|show|replay`).
//!
//! A record is a CBOR map with text keys (the store keeps it as opaque bytes). Records written by
//! this version have `v: 1`; a reader refuses other versions instead of guessing.

use std::collections::BTreeMap;

use base64::Engine as _;
use edgerep_store::LocalWrite;
use edgerep_wire::cbor::{CborError, Reader};
use edgerep_wire::value::{DecodeLimits, canonical_item_len};
use edgerep_wire::{Op, Value};
use minicbor::Encoder;
use serde_json::{Value as Json, json};

/// Where in the node the plugin failed: a transform on ingest (a local write; replay commits it).
pub const STAGE_INGEST: &str = "ingest";
/// A transform on apply (an event from a peer: it stays in the changelog as received and is
/// relayed; only this node's state lacks it; it cannot be replayed as a local write).
pub const STAGE_APPLY: &str = "apply";

/// One dead letter.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// [`STAGE_INGEST`] or [`STAGE_APPLY`].
    pub stage: String,
    /// The write as the client sent it (after the API's validation, before any plugin).
    pub write: LocalWrite,
    /// The plugin that failed.
    pub plugin: String,
    /// sha256 of that plugin's `.wasm`.
    pub plugin_sha256: String,
    /// Failure kind (`out-of-fuel`, `memory-limit`, `deadline`, `trap`, `stack-overflow`,
    /// `plugin-error`, `bad-output`).
    pub failure: String,
    /// Details.
    pub message: String,
    /// Fuel the failed call used.
    pub fuel_used: u64,
    /// Wall clock at the failure, milliseconds since the epoch (for people, not for logic).
    pub at_ms: u64,
    /// The event the failing plugin was given, in its deterministic encoding.
    pub event: Vec<u8>,
}

const VERSION: u64 = 1;

impl DeadLetter {
    /// The record's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        let mut e = Encoder::new(&mut buf);
        let w = &self.write;
        let fields = 14 + u64::from(w.value.is_some()) + u64::from(w.context.is_some());
        // Writing into a Vec cannot fail.
        let _ = e.map(fields);
        let _ = e.str("v").and_then(|e| e.u64(VERSION));
        let _ = e.str("stage").and_then(|e| e.str(&self.stage));
        let _ = e.str("collection").and_then(|e| e.str(&w.collection));
        let _ = e.str("key").and_then(|e| e.bytes(&w.key));
        let _ = e
            .str("op")
            .and_then(|e| e.str(if w.value.is_some() { "put" } else { "delete" }));
        if let Some(v) = &w.value {
            let _ = e.str("value");
            buf.extend_from_slice(v.as_bytes());
        }
        let mut e = Encoder::new(&mut buf);
        let _ = e.str("schema").and_then(|e| e.u32(w.schema));
        let _ = e.str("meta").and_then(|e| e.map(w.meta.len() as u64));
        for (k, v) in &w.meta {
            let _ = e.str(k).and_then(|e| e.str(v));
        }
        // The writer's context, so a replay supersedes only what its read saw (absent from
        // older records, and ignored by older builds).
        if let Some(c) = &w.context {
            let _ = e.str("context").and_then(|e| e.str(&c.to_text()));
        }
        let _ = e.str("plugin").and_then(|e| e.str(&self.plugin));
        let _ = e
            .str("plugin_sha256")
            .and_then(|e| e.str(&self.plugin_sha256));
        let _ = e.str("failure").and_then(|e| e.str(&self.failure));
        let _ = e.str("message").and_then(|e| e.str(&self.message));
        let _ = e.str("fuel_used").and_then(|e| e.u64(self.fuel_used));
        let _ = e.str("at_ms").and_then(|e| e.u64(self.at_ms));
        let _ = e.str("event").and_then(|e| e.bytes(&self.event));
        buf
    }

    /// Reads a record written by [`DeadLetter::encode`] (with the strict reader: a record is
    /// this node's own writing, so anything else is damage).
    pub fn decode(bytes: &[u8]) -> Result<DeadLetter, CborError> {
        let bad = |reason: String| CborError::Invalid {
            what: "dead-letter record".into(),
            reason,
        };
        let mut r = Reader::new(bytes);
        let n = r.map("dead-letter record")?;
        let mut f: BTreeMap<String, Field> = BTreeMap::new();
        for _ in 0..n {
            let name = r.str("dead-letter field name")?.to_owned();
            let field = match name.as_str() {
                "v" | "schema" | "fuel_used" | "at_ms" => Field::U(r.u64("dead-letter number")?),
                "key" | "event" => Field::B(r.bytes("dead-letter bytes")?.to_vec()),
                "value" => {
                    // The node checked the value against its limits (which the config may
                    // raise past the defaults) before it kept the record: read back, it is
                    // bounded only by the record itself.
                    let limits = DecodeLimits {
                        max_bytes: bytes.len(),
                        max_depth: edgerep_wire::value::MAX_DEPTH_ALLOWED,
                        max_items: bytes.len(),
                    };
                    let len = canonical_item_len(r.rest(), &limits)
                        .map_err(|e| bad(format!("value: {e}")))?;
                    let value = Value::from_canonical(r.rest()[..len].to_vec(), &limits)
                        .map_err(|e| bad(format!("value: {e}")))?;
                    r.skip(len, "dead-letter value")?;
                    Field::V(value)
                }
                "meta" => {
                    let m = r.map("dead-letter metadata")?;
                    let mut meta = BTreeMap::new();
                    for _ in 0..m {
                        let k = r.str("dead-letter metadata key")?.to_owned();
                        meta.insert(k, r.str("dead-letter metadata value")?.to_owned());
                    }
                    Field::M(meta)
                }
                _ => Field::S(r.str("dead-letter text")?.to_owned()),
            };
            f.insert(name, field);
        }
        r.finish()?;
        let text = |f: &mut BTreeMap<String, Field>, k: &str| match f.remove(k) {
            Some(Field::S(s)) => Ok(s),
            _ => Err(bad(format!("missing {k}"))),
        };
        let num = |f: &mut BTreeMap<String, Field>, k: &str| match f.remove(k) {
            Some(Field::U(u)) => Ok(u),
            _ => Err(bad(format!("missing {k}"))),
        };
        let version = num(&mut f, "v")?;
        if version != VERSION {
            return Err(bad(format!("version {version} is not supported")));
        }
        let op = text(&mut f, "op")?;
        let value = match f.remove("value") {
            Some(Field::V(v)) => Some(v),
            _ => None,
        };
        if (op == "put") != value.is_some() {
            return Err(bad("op and value disagree".into()));
        }
        let key = match f.remove("key") {
            Some(Field::B(b)) => b,
            _ => return Err(bad("missing key".into())),
        };
        let event = match f.remove("event") {
            Some(Field::B(b)) => b,
            _ => Vec::new(),
        };
        let meta = match f.remove("meta") {
            Some(Field::M(m)) => m,
            _ => BTreeMap::new(),
        };
        let context = match f.remove("context") {
            Some(Field::S(text)) => Some(
                edgerep_wire::VersionVector::parse_text(&text, edgerep_config::MAX_CONTEXT_ENTRIES)
                    .map_err(|e| bad(format!("context: {e}")))?,
            ),
            _ => None,
        };
        Ok(DeadLetter {
            stage: text(&mut f, "stage")?,
            write: LocalWrite {
                collection: text(&mut f, "collection")?,
                key,
                value,
                schema: u32::try_from(num(&mut f, "schema")?)
                    .map_err(|_| bad("schema too large".into()))?,
                meta,
                context,
            },
            plugin: text(&mut f, "plugin")?,
            plugin_sha256: text(&mut f, "plugin_sha256")?,
            failure: text(&mut f, "failure")?,
            message: text(&mut f, "message")?,
            fuel_used: num(&mut f, "fuel_used")?,
            at_ms: num(&mut f, "at_ms")?,
            event,
        })
    }

    /// JSON for `dead-letters show` (and, without `value`/`event`, for `list`).
    pub fn to_json(&self, id: u64, full: bool) -> Json {
        let w = &self.write;
        let mut o = json!({
            "id": id,
            "stage": self.stage,
            "collection": w.collection,
            "op": if w.value.is_some() { "put" } else { "delete" },
            "plugin": self.plugin,
            "plugin_sha256": self.plugin_sha256,
            "failure": self.failure,
            "message": self.message,
            "fuel_used": self.fuel_used,
            "at_ms": self.at_ms,
        });
        match std::str::from_utf8(&w.key) {
            Ok(k) => o["key"] = json!(k),
            Err(_) => {
                o["key_base64"] = json!(base64::engine::general_purpose::STANDARD.encode(&w.key))
            }
        }
        if full {
            if let Some(v) = &w.value {
                o["value"] = v.to_json();
            }
            o["schema"] = json!(w.schema);
            o["meta"] = json!(w.meta);
            if let Some(c) = &w.context {
                o["context"] = json!(c.to_text());
            }
            o["event_base64"] =
                json!(base64::engine::general_purpose::STANDARD.encode(&self.event));
        }
        o
    }

    /// The operation of the dead-lettered write.
    pub fn op(&self) -> Op {
        if self.write.value.is_some() {
            Op::Put
        } else {
            Op::Delete
        }
    }
}

enum Field {
    U(u64),
    S(String),
    B(Vec<u8>),
    V(Value),
    M(BTreeMap<String, String>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut meta = BTreeMap::new();
        meta.insert("a".to_owned(), "b".to_owned());
        let d = DeadLetter {
            stage: STAGE_INGEST.into(),
            write: LocalWrite {
                collection: "orders".into(),
                key: vec![0xff, 1],
                value: Some(
                    Value::from_json(&json!({"x": [1, 2]}), &DecodeLimits::default()).unwrap(),
                ),
                schema: 3,
                meta,
                context: None,
            },
            plugin: "spin".into(),
            plugin_sha256: "ab".repeat(32),
            failure: "out-of-fuel".into(),
            message: "all fuel consumed".into(),
            fuel_used: 1000,
            at_ms: 42,
            event: vec![1, 2, 3],
        };
        assert_eq!(DeadLetter::decode(&d.encode()).unwrap(), d);
        let mut del = d.clone();
        del.write.value = None;
        assert_eq!(DeadLetter::decode(&del.encode()).unwrap(), del);
        let mut read = d.clone();
        read.write.context =
            Some(edgerep_wire::VersionVector::parse_text("n-1:3,n-2:9", 4).unwrap());
        assert_eq!(DeadLetter::decode(&read.encode()).unwrap(), read);
        // A record whose context is not origin:seq entries is refused, naming the field.
        let mut bytes = read.encode();
        let at = bytes
            .windows(5)
            .position(|w| w == b"n-1:3")
            .expect("the context's text is in the record");
        bytes[at + 4] = b'x';
        let e = DeadLetter::decode(&bytes).unwrap_err();
        assert!(e.to_string().contains("context"), "{e}");
        assert!(DeadLetter::decode(&[0xa0]).is_err());
        assert!(DeadLetter::decode(&[0xff]).is_err());
    }
}
