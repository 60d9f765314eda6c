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
//! What identifies "the same request" is a hash of the writes as the client sent them
//! (collection, key, operation, value, schema, metadata), before transforms run.

use std::sync::atomic::{AtomicU64, Ordering};

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
    /// As JSON, with the number of keys held.
    pub(crate) fn to_json(&self, held: u64) -> Json {
        json!({
            "keys_held": held,
            "replays_total": self.replays.load(Ordering::Relaxed),
            "reused_total": self.reused.load(Ordering::Relaxed),
            "in_use_total": self.in_use.load(Ordering::Relaxed),
        })
    }
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

/// The hash that identifies a request: its writes as the client sent them.
pub(crate) fn body_hash(writes: &[LocalWrite]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    let mut field = |b: &[u8]| {
        h.update(&(b.len() as u64).to_le_bytes());
        h.update(b);
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
        for (k, v) in &w.meta {
            field(k.as_bytes());
            field(v.as_bytes());
        }
        field(b"end");
    }
    *h.finalize().as_bytes()
}

/// What a request's answer is rebuilt from besides its commits: for each commit, the index of
/// the request's write it came from, and the writes plugins refused (as the answer listed
/// them); for a single write a plugin failed on, the error answer (`{"status", "body"}`): its
/// retry gets that answer again instead of running the plugins, and setting aside, once more.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Extra {
    pub(crate) indexes: Vec<u64>,
    pub(crate) rejected: Vec<Json>,
    pub(crate) failed: Option<Json>,
}

impl Extra {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        let mut e = Encoder::new(&mut buf);
        // Writing into a Vec cannot fail.
        let _ = e.array(if self.failed.is_some() { 3 } else { 2 });
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
        if let Some(failed) = &self.failed {
            let _ = e.str(&failed.to_string());
        }
        buf
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Extra, String> {
        let mut d = Decoder::new(bytes);
        let bad = |e: minicbor::decode::Error| format!("idempotency answer: {e}");
        let fields = d.array().map_err(bad)?;
        if fields != Some(2) && fields != Some(3) {
            return Err("idempotency answer: expected 2 or 3 fields".into());
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
        let failed = if fields == Some(3) {
            match serde_json::from_str(d.str().map_err(bad)?) {
                Ok(failed @ Json::Object(_)) => Some(failed),
                _ => return Err("idempotency answer: the failure is not a JSON object".into()),
            }
        } else {
            None
        };
        Ok(Extra {
            indexes,
            rejected,
            failed,
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

/// Looks `key` up; Err(409) when it was recorded with another request.
pub(crate) fn lookup(
    store: &edgerep_store::Store,
    counters: &Counters,
    key: &str,
    body: &[u8; 32],
) -> Result<Lookup, ApiError> {
    match store
        .idempotency(key)
        .map_err(|e| ApiError::internal(format!("store: {e}")))?
    {
        None => Ok(Lookup::New),
        Some(r) if r.body == *body => {
            counters.replays.fetch_add(1, Ordering::Relaxed);
            Ok(Lookup::Replay(r))
        }
        Some(r) => {
            counters.reused.fetch_add(1, Ordering::Relaxed);
            Err(ApiError::new(
                StatusCode::CONFLICT,
                "idempotency_key_reused",
                format!(
                    "idempotency key {key:?} was used at {} ms (Unix time) with another request; nothing was written (a retry must send the same writes, or use a new key)",
                    r.at_ms
                ),
            ))
        }
    }
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
    }
}
