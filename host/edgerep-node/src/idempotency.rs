//! Idempotency keys on the local API: a client that did not get its answer (a timeout, a
//! crash of the node) retries with the same key and gets the first answer, with nothing
//! written twice.
//!
//! A write request may carry a key (`Idempotency-Key` header: the whole request; or
//! `idempotency_key` on writes of a batch: each such write alone). The committer records the
//! key with the request's commits in the transaction that commits them
//! (`edgerep_store::idempotency`). Before a request runs (transforms, commit), its keys are
//! looked up: a key recorded with the same request is answered from the record (header
//! `idempotent-replayed: true`) and writes nothing; with another request, 409
//! `idempotency_key_reused`. Two requests with one key at the same time: the first to commit
//! records it; the other gets 409 `idempotency_key_in_use`, and its retry the first's answer.
//!
//! A key is claimed while its request runs ([`Claims`]): a second request with a key in flight
//! gets 409 `idempotency_key_in_use` before its plugins run, so two concurrent tries of one
//! request cannot both set a failing write aside.
//!
//! What identifies "the same request" is a hash of its shape ([`Shape`]) and its writes as the
//! client sent them (collection, key, operation, value, schema, metadata), before transforms run.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, StatusCode};
use edgerep_store::LocalWrite;
use edgerep_store::idempotency::{MAX_KEY_BYTES, Recorded};
use minicbor::{Decoder, Encoder};
use serde_json::{Value as Json, json};

use crate::api::ApiError;

/// The request header carrying a key.
pub(crate) const HEADER: &str = "idempotency-key";
/// The answer header of a replayed answer.
pub(crate) const REPLAYED: &str = "idempotent-replayed";

/// What the status shows.
#[derive(Debug, Default)]
pub struct Counters {
    /// Requests (or batch writes) answered from a record.
    pub replays: AtomicU64,
    /// Keys sent again with another request (409).
    pub reused: AtomicU64,
    /// Keys that a concurrent request recorded first (409, retryable).
    pub in_use: AtomicU64,
}

impl Counters {
    /// As JSON, with the number of keys held and of records dropped early (see
    /// `edgerep_store::Store::idempotency_dropped_early`).
    pub(crate) fn to_json(&self, held: u64, dropped_early: u64) -> Json {
        json!({
            "keys_held": held,
            "dropped_early_total": dropped_early,
            "replays_total": self.replays.load(Ordering::Relaxed),
            "reused_total": self.reused.load(Ordering::Relaxed),
            "in_use_total": self.in_use.load(Ordering::Relaxed),
        })
    }
}

/// The keys of requests running now (looked up, not yet answered).
#[derive(Debug, Default)]
pub struct Claims {
    running: Arc<Mutex<HashSet<String>>>,
}

/// Keys claimed by one request, given back when it is answered (dropped).
#[must_use]
pub(crate) struct Claim {
    running: Arc<Mutex<HashSet<String>>>,
    keys: Vec<String>,
}

impl Claims {
    /// Claims `keys` for one request: all of them, or none and a 409 naming the first held by
    /// another request (counted in `in_use`).
    pub(crate) fn claim<'k>(
        &self,
        keys: impl IntoIterator<Item = &'k str>,
        counters: &Counters,
    ) -> Result<Claim, ApiError> {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let mut claim = Claim {
            running: self.running.clone(),
            keys: Vec::new(),
        };
        for key in keys {
            if running.contains(key) {
                // (Emptied: `claim` drops while `running` is still locked.)
                for k in claim.keys.drain(..) {
                    running.remove(&k);
                }
                counters.in_use.fetch_add(1, Ordering::Relaxed);
                return Err(in_use(key));
            }
            running.insert(key.to_owned());
            claim.keys.push(key.to_owned());
        }
        Ok(claim)
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.keys.is_empty() {
            return;
        }
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        for k in &self.keys {
            running.remove(k);
        }
    }
}

/// The answer to a key another request holds: retryable.
fn in_use(key: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "idempotency_key_in_use",
        format!(
            "idempotency key {key:?} is held by a request running now; nothing was written: retry to get its answer"
        ),
    )
}

/// A key must be 1 to 255 visible ASCII characters.
pub(crate) fn check_key(key: &str) -> Result<(), crate::request::Refused> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(crate::request::Refused::bad_request(
            "bad_idempotency_key",
            format!(
                "an idempotency key is 1 to {MAX_KEY_BYTES} visible ASCII characters (no spaces); got {} bytes",
                key.len()
            ),
        ));
    }
    Ok(())
}

/// The request's `Idempotency-Key`, if it has one.
pub(crate) fn from_headers(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    // Two keys on one request (a client library and a proxy both adding one) name no one
    // request: refused rather than the first taken silently.
    if headers.get_all(HEADER).iter().nth(1).is_some() {
        return Err(ApiError::bad_request(
            "bad_idempotency_key",
            format!("the {HEADER} header is given more than once"),
        ));
    }
    let Some(key) = crate::api::header_text(headers, HEADER, "bad_idempotency_key")? else {
        return Ok(None);
    };
    check_key(key)?;
    Ok(Some(key.to_owned()))
}

/// What a key names: the shape of the request is part of what a retry must repeat, so a key
/// recorded with a single write (`PUT`/`DELETE` on a key) is not replayed as a batch of that
/// one write, nor as one write of a batch: their answers differ (a batch lists what plugins
/// refused; a single write's refusal is an error answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// `PUT`/`DELETE /v1/collections/{c}/keys/{k}` with an `Idempotency-Key` header.
    One,
    /// A batch with an `Idempotency-Key` header: the whole batch.
    Batch,
    /// One write of a batch with its own `idempotency_key`.
    BatchWrite,
}

impl Shape {
    fn tag(self) -> &'static [u8] {
        match self {
            Shape::One => b"one",
            Shape::Batch => b"batch",
            Shape::BatchWrite => b"batch-write",
        }
    }
}

/// The hash that identifies a request: its shape and its writes as the client sent them.
pub(crate) fn body_hash(shape: Shape, writes: &[LocalWrite]) -> [u8; 32] {
    hash_writes(Form::Counted(shape), writes)
}

/// How a record's hash was made: records written by earlier versions keep their form until
/// they expire, and a retry across the upgrade still matches them.
#[derive(Clone, Copy)]
enum Form {
    /// Writes only, before shapes were hashed.
    Legacy,
    /// Shape and writes, before the counts were: a batch's metadata could imitate the end of
    /// one write and the start of the next, so two different batches could hash alike.
    Shaped(Shape),
    /// Shape, the number of writes, and each write's number of metadata entries: every
    /// field's place is fixed by what came before it.
    Counted(Shape),
}

fn hash_writes(form: Form, writes: &[LocalWrite]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    let mut field = |b: &[u8]| {
        h.update(&(b.len() as u64).to_le_bytes());
        h.update(b);
    };
    let counted = match form {
        Form::Legacy => false,
        Form::Shaped(shape) => {
            field(b"shape");
            field(shape.tag());
            false
        }
        Form::Counted(shape) => {
            field(b"shape-counted");
            field(shape.tag());
            field(&(writes.len() as u64).to_le_bytes());
            true
        }
    };
    for w in writes {
        field(w.collection.as_bytes());
        field(&w.key);
        match &w.value {
            Some(v) => {
                field(b"put");
                field(v.as_bytes());
            }
            None => field(b"delete"),
        }
        field(&w.schema.to_le_bytes());
        if counted {
            field(&(w.meta.len() as u64).to_le_bytes());
        }
        for (k, v) in &w.meta {
            field(k.as_bytes());
            field(v.as_bytes());
        }
        // Only when given: records of writes without one keep their hashes.
        // Marked by a byte no text has, so no metadata entry (text) hashes alike.
        if let Some(context) = &w.context {
            field(&[0xff]);
            field(context.to_text().as_bytes());
        }
        field(b"end");
    }
    *h.finalize().as_bytes()
}

/// What a request's answer is rebuilt from besides its commits: for each commit, the index of
/// the request's write it came from, and the writes plugins refused (as the answer listed
/// them); for a single write a plugin failed on, the error answer (`{"status", "body"}`): its
/// retry gets that answer again instead of running the plugins, and setting aside, once more.
///
/// Encoded `[indexes, rejected, failed or null, 1]`; records written before the request's
/// shape was hashed hold `[indexes, rejected]` or `[indexes, rejected, failed]` (`legacy`).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Extra {
    pub(crate) indexes: Vec<u64>,
    pub(crate) rejected: Vec<Json>,
    pub(crate) failed: Option<Json>,
    /// Decoded from a record whose body hash has no shape (see [`lookup`]).
    pub(crate) legacy: bool,
}

impl Extra {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        let mut e = Encoder::new(&mut buf);
        // Writing into a Vec cannot fail.
        let _ = e.array(4);
        // Writes committed one for one, in order (no transform dropped or split one): just
        // their number.
        if self
            .indexes
            .iter()
            .copied()
            .eq(0..self.indexes.len() as u64)
        {
            let _ = e.u64(self.indexes.len() as u64);
        } else {
            let _ = e.array(self.indexes.len() as u64);
            for i in &self.indexes {
                let _ = e.u64(*i);
            }
        }
        let _ = e.str(&Json::Array(self.rejected.clone()).to_string());
        let _ = match &self.failed {
            Some(failed) => e.str(&failed.to_string()),
            None => e.null(),
        };
        let _ = e.u8(1);
        buf
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Extra, String> {
        let mut d = Decoder::new(bytes);
        let bad = |e: minicbor::decode::Error| format!("idempotency answer: {e}");
        let fields = d.array().map_err(bad)?;
        if !matches!(fields, Some(2..=4)) {
            return Err("idempotency answer: expected 2 to 4 fields".into());
        }
        let indexes = if d.datatype().map_err(bad)? == minicbor::data::Type::Array {
            let n = d.array().map_err(bad)?.ok_or("indefinite list")?;
            let mut indexes = Vec::new();
            for _ in 0..n {
                indexes.push(d.u64().map_err(bad)?);
            }
            indexes
        } else {
            let n = d.u64().map_err(bad)?;
            // Bounded before anything is allocated: a damaged record must not claim millions.
            if n > edgerep_store::idempotency::MAX_RECORD_WRITES {
                return Err(format!("idempotency answer: {n} writes"));
            }
            (0..n).collect()
        };
        let rejected = match serde_json::from_str(d.str().map_err(bad)?) {
            Ok(Json::Array(list)) => list,
            _ => return Err("idempotency answer: rejected writes are not a JSON list".into()),
        };
        let failed = match fields {
            Some(4) if d.datatype().map_err(bad)? == minicbor::data::Type::Null => {
                d.skip().map_err(bad)?;
                None
            }
            Some(3 | 4) => match serde_json::from_str(d.str().map_err(bad)?) {
                Ok(failed @ Json::Object(_)) => Some(failed),
                _ => return Err("idempotency answer: the failure is not a JSON object".into()),
            },
            _ => None,
        };
        if fields == Some(4) && d.u8().map_err(bad)? != 1 {
            return Err("idempotency answer: unknown version".into());
        }
        Ok(Extra {
            indexes,
            rejected,
            failed,
            legacy: fields != Some(4),
        })
    }
}

/// What the store holds of a key, as seen by a request with hash `body`.
pub(crate) enum Lookup {
    /// Not recorded: run the request.
    New,
    /// Recorded with this request: answer from the record.
    Replay(Recorded),
}

/// Looks `key` up for the request of hash `body` (see [`body_hash`]) and `writes`; Err(409)
/// when it was recorded with another request. A record written before shapes were hashed
/// matches the request's writes without their shape, so a retry across that upgrade still
/// gets its answer.
pub(crate) fn lookup(
    store: &edgerep_store::Store,
    counters: &Counters,
    key: &str,
    shape: Shape,
    body: &[u8; 32],
    writes: &[LocalWrite],
) -> Result<Lookup, ApiError> {
    let Some(r) = store
        .idempotency(key)
        .map_err(|e| ApiError::internal(format!("store: {e}")))?
    else {
        // No record: the key may still have written, before a restore from a backup lost
        // the record (the write itself came back from the peers).
        if let Some((seq, at_ms)) = store
            .restored_key(key)
            .map_err(|e| ApiError::internal(format!("store: {e}")))?
        {
            counters.reused.fetch_add(1, Ordering::Relaxed);
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "idempotency_key_restored",
                format!(
                    "idempotency key {key:?} was used at {at_ms} ms (Unix time) by a write this node committed as its event {seq}; this node's store was restored from a backup since, and the answer went with it, but the write came back from the peers: nothing was written again (read the key to see the write's effect)"
                ),
            ));
        }
        return Ok(Lookup::New);
    };
    // (A legacy record of a failure is a single write's error answer: it answers no batch.)
    let same = r.body == *body
        || r.body == hash_writes(Form::Shaped(shape), writes)
        || (Extra::decode(&r.extra)
            .is_ok_and(|e| e.legacy && (e.failed.is_none() || shape == Shape::One))
            && r.body == hash_writes(Form::Legacy, writes));
    if same {
        counters.replays.fetch_add(1, Ordering::Relaxed);
        return Ok(Lookup::Replay(r));
    }
    counters.reused.fetch_add(1, Ordering::Relaxed);
    Err(ApiError::new(
        StatusCode::CONFLICT,
        "idempotency_key_reused",
        format!(
            "idempotency key {key:?} was used at {} ms (Unix time) with another request; nothing was written (a retry must send the same writes, in the same form: a single write, a batch, or one write of a batch; or use a new key)",
            r.at_ms
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_round_trip_and_writes_in_order_are_just_counted() {
        let in_order = Extra {
            indexes: (0..100).collect(),
            rejected: vec![],
            failed: None,
            legacy: false,
        };
        let bytes = in_order.encode();
        assert!(
            bytes.len() < 10,
            "100 writes in order took {} bytes",
            bytes.len()
        );
        assert_eq!(Extra::decode(&bytes).unwrap(), in_order);
        let reordered = Extra {
            indexes: vec![0, 2, 2, 5],
            rejected: vec![json!({"index": 1, "reason": "filtered"})],
            failed: None,
            legacy: false,
        };
        assert_eq!(Extra::decode(&reordered.encode()).unwrap(), reordered);
        let failed = Extra {
            failed: Some(json!({"status": 422, "body": {"kind": "plugin_failed"}})),
            ..Extra::default()
        };
        assert_eq!(Extra::decode(&failed.encode()).unwrap(), failed);
        assert_eq!(
            Extra::decode(&Extra::default().encode()).unwrap(),
            Extra::default()
        );
        assert!(Extra::decode(&bytes[..1]).is_err());
        // A damaged answer claiming more writes than a record may hold.
        let mut huge = Vec::new();
        minicbor::Encoder::new(&mut huge)
            .array(2)
            .and_then(|e| e.u64(u64::from(u32::MAX)))
            .and_then(|e| e.str("[]"))
            .expect("writing to a Vec");
        assert!(Extra::decode(&huge).is_err());
        // Records from before shapes were hashed: two or three fields, read as legacy.
        let mut old = Vec::new();
        minicbor::Encoder::new(&mut old)
            .array(3)
            .and_then(|e| e.u64(1))
            .and_then(|e| e.str("[]"))
            .and_then(|e| e.str(r#"{"status":422}"#))
            .expect("writing to a Vec");
        let old = Extra::decode(&old).unwrap();
        assert!(old.legacy);
        // A version this edgerep does not know: refused, not read as something else.
        let mut next = Vec::new();
        minicbor::Encoder::new(&mut next)
            .array(4)
            .and_then(|e| e.u64(1))
            .and_then(|e| e.str("[]"))
            .and_then(|e| e.null())
            .and_then(|e| e.u8(2))
            .expect("writing to a Vec");
        assert!(Extra::decode(&next).is_err());
        assert_eq!(old.failed, Some(json!({"status": 422})));
    }

    #[test]
    fn one_write_a_batch_of_it_and_a_batch_write_hash_apart() {
        let write = LocalWrite {
            collection: "c".into(),
            key: b"k".to_vec(),
            value: None,
            schema: 0,
            meta: Default::default(),
            context: None,
        };
        let one = body_hash(Shape::One, std::slice::from_ref(&write));
        let batch = body_hash(Shape::Batch, std::slice::from_ref(&write));
        let batch_write = body_hash(Shape::BatchWrite, std::slice::from_ref(&write));
        assert_ne!(one, batch);
        assert_ne!(one, batch_write);
        assert_ne!(batch, batch_write);
        // What records written before shapes were hashed hold, for all three.
        assert_ne!(hash_writes(Form::Legacy, std::slice::from_ref(&write)), one);
        assert_ne!(
            hash_writes(Form::Shaped(Shape::One), std::slice::from_ref(&write)),
            one
        );
    }

    /// A batch of one write whose metadata imitates the end of a write and the start of the
    /// next must not hash as the batch of two writes it imitates (the form before counts did:
    /// its retry was replayed instead of refused).
    #[test]
    fn metadata_cannot_imitate_a_second_write() {
        let limits = edgerep_wire::value::DecodeLimits::default();
        let one = edgerep_wire::Value::from_json(&json!(1), &limits).unwrap();
        let text = edgerep_wire::Value::from_json(&json!("hello world!"), &limits).unwrap();
        assert_eq!(
            text.as_bytes()[0],
            b'l',
            "a 12-byte text's head reads as 'l'"
        );
        let imitation = LocalWrite {
            collection: "c".into(),
            key: b"k".to_vec(),
            value: Some(one.clone()),
            schema: 0,
            meta: [
                ("end".to_owned(), "c2".to_owned()),
                ("k2".to_owned(), "put".to_owned()),
                (
                    String::from_utf8(text.as_bytes().to_vec()).unwrap(),
                    "\0\0\0\0".to_owned(),
                ),
            ]
            .into(),
            context: None,
        };
        let two = [
            LocalWrite {
                meta: Default::default(),
                ..imitation.clone()
            },
            LocalWrite {
                collection: "c2".into(),
                key: b"k2".to_vec(),
                value: Some(text),
                schema: 0,
                meta: Default::default(),
                context: None,
            },
        ];
        let imitation = std::slice::from_ref(&imitation);
        assert_eq!(
            hash_writes(Form::Shaped(Shape::Batch), imitation),
            hash_writes(Form::Shaped(Shape::Batch), &two),
            "the old form collides (else this test shows nothing)"
        );
        assert_ne!(
            body_hash(Shape::Batch, imitation),
            body_hash(Shape::Batch, &two)
        );
    }
}
