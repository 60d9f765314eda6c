//! Turning request bodies (JSON or CBOR) into validated [`LocalWrite`]s.
//!
//! Invariant: everything a write needs is checked here, before the committer sees it: collection
//! allowed, key non-empty and within the limit, value well-formed and within the limits, metadata
//! within the limit. The committer only fails on storage errors.

use std::collections::BTreeMap;

use base64::Engine as _;
use edgerep_config::Config;
use edgerep_store::LocalWrite;
use edgerep_wire::value::{DecodeLimits, Value, ValueError};
use minicbor::Decoder;

mod batch_json;

/// Why a write request is refused: what was wrong (`message`, naming where), a stable `kind`
/// for programs, and the class of refusal. The HTTP layer maps it (`Refused::from`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub(crate) struct Refused {
    pub(crate) class: Class,
    pub(crate) kind: &'static str,
    pub(crate) message: String,
}

/// The classes of refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// Malformed or invalid.
    Invalid,
    /// Over a limit.
    TooLarge,
    /// Not allowed here (a collection the node does not take).
    Forbidden,
}

impl Refused {
    pub(crate) fn bad_request(kind: &'static str, message: String) -> Refused {
        Refused {
            class: Class::Invalid,
            kind,
            message,
        }
    }
    pub(crate) fn too_large(kind: &'static str, message: String) -> Refused {
        Refused {
            class: Class::TooLarge,
            kind,
            message,
        }
    }
    pub(crate) fn forbidden(kind: &'static str, message: String) -> Refused {
        Refused {
            class: Class::Forbidden,
            kind,
            message,
        }
    }
    /// Prefixes the message with where in the request the problem is.
    pub(crate) fn at(mut self, at: &str) -> Refused {
        self.message = format!("{at}: {}", self.message);
        self
    }
}

/// The body formats the API reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Json,
    Cbor,
}

/// Maps a value decoding error to the refusal the client sees.
pub(crate) fn value_error(e: ValueError, format: Format) -> Refused {
    match e {
        ValueError::TooLarge { .. } => Refused::too_large(
            "value_too_large",
            format!("value refused: {e} (limits.max_value_bytes)"),
        ),
        ValueError::Json(m) => {
            Refused::bad_request("malformed_json", format!("malformed JSON: {m}"))
        }
        other @ ValueError::TooDeep { .. } => Refused::bad_request(
            "bad_value",
            format!("value refused: {other} (limits.max_value_depth)"),
        ),
        other @ ValueError::TooManyItems { .. } => {
            Refused::bad_request("bad_value", format!("value refused: {other}"))
        }
        other => {
            let kind = if format == Format::Cbor {
                "malformed_cbor"
            } else {
                "bad_value"
            };
            Refused::bad_request(kind, format!("value refused: {other}"))
        }
    }
}

/// Checks that the config accepts writes to `collection`.
/// An invalid name is a bad request (400); a valid name the config does not allow is forbidden (403).
pub(crate) fn check_collection(config: &Config, collection: &str) -> Result<(), Refused> {
    check_collection_name(collection)?;
    check_collection_allowed(config, collection)
}

/// Checks a collection name's form (not whether the config lets it be written).
pub(crate) fn check_collection_name(collection: &str) -> Result<(), Refused> {
    edgerep_wire::event::check_collection_name(collection)
        .map_err(|e| Refused::bad_request("bad_collection", e.to_string()))
}

/// Checks that the config lets `collection` be written. A keyed write checks it after its key's
/// lookup: a retry of a write that committed gets its answer even if the operator disallowed
/// the collection since.
pub(crate) fn check_collection_allowed(config: &Config, collection: &str) -> Result<(), Refused> {
    config
        .check_collection(collection)
        .map_err(|m| Refused::forbidden("collection_not_allowed", m.to_string()))
}

/// How many entries a writer's context may name ([`parse_context`]): one per origin this node
/// may hold events of (itself, its peers and `replication.extra_origins`), or per origin it
/// holds events of (`origins_held`: more, once a peer that wrote was removed from the config,
/// and a context read here names it), one short of an event's bound (the write adds this
/// node's own).
pub(crate) fn context_bound(config: &Config, origins_held: usize) -> usize {
    config
        .max_origins()
        .max(origins_held)
        .min(edgerep_config::MAX_CONTEXT_ENTRIES - 1)
}

/// A writer's context from its text (see `LocalWrite::context`), of at most [`context_bound`]
/// entries (`origins_held` is asked only for a context longer than the config's bound): a
/// context naming more names events the node cannot hold, and the bound keeps a batch of
/// contexts within a few times its bytes in memory.
pub(crate) fn parse_context(
    text: &str,
    config: &Config,
    origins_held: &dyn Fn() -> usize,
) -> Result<edgerep_wire::VersionVector, String> {
    let entries = text.split(',').count();
    let mut max = context_bound(config, 0);
    if entries > max {
        max = context_bound(config, origins_held());
    }
    if entries > max {
        return Err(format!(
            "more than {max} entries: this node holds events of {max} origins at most (itself, its peers and replication.extra_origins, or those it holds events of)"
        ));
    }
    edgerep_wire::VersionVector::parse_text(text, max)
}

/// Checks a key against the limits.
pub(crate) fn check_key(config: &Config, key: &[u8]) -> Result<(), Refused> {
    if key.is_empty() {
        return Err(Refused::bad_request(
            "bad_key",
            "key must not be empty".into(),
        ));
    }
    if key.len() > config.limits.max_key_bytes {
        return Err(Refused::bad_request(
            "bad_key",
            format!(
                "key is {} bytes, over the limit of {} (limits.max_key_bytes)",
                key.len(),
                config.limits.max_key_bytes
            ),
        ));
    }
    Ok(())
}

/// Parses a single value body.
pub(crate) fn parse_value(
    body: &[u8],
    format: Format,
    limits: &DecodeLimits,
) -> Result<Value, Refused> {
    match format {
        Format::Json => {
            let text = std::str::from_utf8(body).map_err(|e| {
                Refused::bad_request(
                    "malformed_json",
                    format!("malformed JSON: body is not UTF-8: {e}"),
                )
            })?;
            Value::from_json_str(text, limits).map_err(|e| value_error(e, format))
        }
        Format::Cbor => Value::canonicalize(body, limits).map_err(|e| value_error(e, format)),
    }
}

fn check_meta(config: &Config, meta: &BTreeMap<String, String>, at: &str) -> Result<(), Refused> {
    meta_problem(config, meta)
        .map_err(|problem| Refused::bad_request("bad_meta", format!("{at}: {problem}")))
}

/// Whether metadata is within `limits.max_meta_entries` and `limits.max_meta_bytes`: Err says
/// which limit it exceeds.
pub(crate) fn meta_problem(config: &Config, meta: &BTreeMap<String, String>) -> Result<(), String> {
    let limits = &config.limits;
    if meta.len() > limits.max_meta_entries {
        return Err(format!(
            "{} metadata entries, over the limit of {} (limits.max_meta_entries)",
            meta.len(),
            limits.max_meta_entries
        ));
    }
    let bytes: usize = meta.iter().map(|(k, v)| k.len() + v.len()).sum();
    if bytes > limits.max_meta_bytes {
        return Err(format!(
            "{bytes} bytes of metadata, over the limit of {} (limits.max_meta_bytes)",
            limits.max_meta_bytes
        ));
    }
    Ok(())
}

fn bad(at: &str, what: String) -> Refused {
    Refused::bad_request("bad_batch", format!("{at}: {what}"))
}

/// Parses and validates a batch body: `{"writes": [{"collection", "key" | "key_base64", "op",
/// "value", "schema", "meta", "context"}, ...]}` in JSON, or the same map in CBOR (where `key` may also be a
/// byte string).
/// Each write's context may name at most [`context_bound`] entries (see [`parse_context`]).
pub(crate) fn parse_batch(
    body: &[u8],
    format: Format,
    config: &Config,
    limits: &DecodeLimits,
    origins_held: &dyn Fn() -> usize,
) -> Result<Batch, Refused> {
    let batch = match format {
        Format::Json => batch_json::parse(body, config, limits, origins_held)?,
        Format::Cbor => parse_batch_cbor(body, config, limits, origins_held)?,
    };
    if batch.writes.is_empty() {
        return Err(bad("writes", "the batch is empty".into()));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, k) in batch.keys.iter().enumerate() {
        if let Some(k) = k {
            crate::idempotency::check_key(k).map_err(|e| e.at(&format!("writes[{i}]")))?;
            if !seen.insert(k) {
                return Err(bad(
                    &format!("writes[{i}]"),
                    format!("idempotency_key {k:?} is given to two writes of the batch"),
                ));
            }
        }
    }
    Ok(batch)
}

/// A parsed batch: its writes, and each write's idempotency key if it has one.
pub(crate) struct Batch {
    pub(crate) writes: Vec<LocalWrite>,
    pub(crate) keys: Vec<Option<String>>,
}

fn check_count(n: usize, config: &Config) -> Result<(), Refused> {
    if n > config.limits.max_batch_events {
        return Err(Refused::too_large(
            "batch_too_large",
            format!(
                "{n} writes in one batch, over the limit of {} (limits.max_batch_events)",
                config.limits.max_batch_events
            ),
        ));
    }
    Ok(())
}

/// The fields of one batch write as read from the body, before validation.
#[derive(Default)]
struct RawWrite {
    collection: Option<String>,
    key: Option<Vec<u8>>,
    op: Option<String>,
    value: Option<Value>,
    schema: u32,
    meta: BTreeMap<String, String>,
    idempotency_key: Option<String>,
    /// The writer's context, as text (see `LocalWrite::context`).
    context: Option<String>,
}

impl RawWrite {
    /// Validates the write at position `at` of the batch.
    fn finish(
        self,
        config: &Config,
        at: &str,
        origins_held: &dyn Fn() -> usize,
    ) -> Result<LocalWrite, Refused> {
        let collection = self
            .collection
            .ok_or_else(|| bad(at, "missing \"collection\"".into()))?;
        // (Whether the config lets it be written is checked after the idempotency lookup.)
        check_collection_name(&collection).map_err(|e| e.at(at))?;
        let key = self.key.ok_or_else(|| bad(at, "missing \"key\"".into()))?;
        check_key(config, &key).map_err(|e| e.at(at))?;
        check_meta(config, &self.meta, at)?;
        let value = match self.op.as_deref() {
            Some("put") | None => Some(
                self.value
                    .ok_or_else(|| bad(at, "a put needs a \"value\"".into()))?,
            ),
            Some("delete") => {
                if self.value.is_some() {
                    return Err(bad(at, "a delete takes no \"value\"".into()));
                }
                None
            }
            Some(other) => {
                return Err(bad(
                    at,
                    format!("unknown op {other:?} (expected \"put\" or \"delete\")"),
                ));
            }
        };
        Ok(LocalWrite {
            collection,
            key,
            value,
            schema: self.schema,
            meta: self.meta,
            context: self
                .context
                .map(|text| {
                    parse_context(&text, config, origins_held)
                        .map_err(|e| bad(at, format!("\"context\": {e}")))
                })
                .transpose()?,
        })
    }
}

/// One write of a JSON batch, at position `at`, with its idempotency key if it has one.
fn json_write(
    item: &serde_json::Value,
    at: &str,
    config: &Config,
    limits: &DecodeLimits,
    origins_held: &dyn Fn() -> usize,
) -> Result<(LocalWrite, Option<String>), Refused> {
    let fields = item
        .as_object()
        .ok_or_else(|| bad(at, "expected an object".into()))?;
    let mut w = RawWrite::default();
    for (k, v) in fields {
        match k.as_str() {
            "collection" => {
                w.collection = Some(
                    v.as_str()
                        .ok_or_else(|| bad(at, "\"collection\" must be a string".into()))?
                        .to_owned(),
                )
            }
            "key" | "key_base64" if w.key.is_some() => {
                return Err(bad(at, "give \"key\" or \"key_base64\", not both".into()));
            }
            "key" => {
                w.key = Some(
                    v.as_str()
                        .ok_or_else(|| bad(at, "\"key\" must be a string".into()))?
                        .as_bytes()
                        .to_vec(),
                )
            }
            "key_base64" => {
                let s = v
                    .as_str()
                    .ok_or_else(|| bad(at, "\"key_base64\" must be a string".into()))?;
                w.key = Some(
                    base64::engine::general_purpose::STANDARD
                        .decode(s)
                        .map_err(|e| bad(at, format!("\"key_base64\" is not base64: {e}")))?,
                );
            }
            "op" => {
                w.op = Some(
                    v.as_str()
                        .ok_or_else(|| bad(at, "\"op\" must be a string".into()))?
                        .to_owned(),
                )
            }
            "value" => {
                w.value = Some(
                    Value::from_json(v, limits).map_err(|e| value_error(e, Format::Json).at(at))?,
                )
            }
            "schema" => {
                w.schema = v
                    .as_u64()
                    .and_then(|s| u32::try_from(s).ok())
                    .ok_or_else(|| {
                        bad(
                            at,
                            "\"schema\" must be an integer from 0 to 4294967295".into(),
                        )
                    })?
            }
            "meta" => {
                let m = v
                    .as_object()
                    .ok_or_else(|| bad(at, "\"meta\" must be an object of strings".into()))?;
                for (mk, mv) in m {
                    let mv = mv
                        .as_str()
                        .ok_or_else(|| bad(at, format!("meta {mk:?} must be a string")))?;
                    w.meta.insert(mk.clone(), mv.to_owned());
                }
            }
            "idempotency_key" => {
                w.idempotency_key = Some(
                    v.as_str()
                        .ok_or_else(|| bad(at, "\"idempotency_key\" must be a string".into()))?
                        .to_owned(),
                )
            }
            "context" => {
                w.context = Some(
                    v.as_str()
                        .ok_or_else(|| bad(at, "\"context\" must be a string".into()))?
                        .to_owned(),
                )
            }
            other => return Err(bad(at, format!("unknown field {other:?}"))),
        }
    }
    let key = w.idempotency_key.take();
    Ok((w.finish(config, at, origins_held)?, key))
}

/// The body is well-formed canonical CBOR by then (checked whole first): what the walk finds
/// wrong is a field of the wrong type, named as the JSON path names it.
fn cbor_err(at: &str, e: impl std::fmt::Display) -> Refused {
    bad(at, format!("wrong type in the CBOR batch: {e}"))
}

fn cbor_field_err(at: &str, field: &str, e: impl std::fmt::Display) -> Refused {
    bad(at, format!("\"{field}\" has the wrong type: {e}"))
}

fn parse_batch_cbor(
    body: &[u8],
    config: &Config,
    limits: &DecodeLimits,
    origins_held: &dyn Fn() -> usize,
) -> Result<Batch, Refused> {
    // Canonicalize the whole body first: that checks well-formedness, depth and size in one
    // place, and lets the walk below slice each value out with `Value::first_item`.
    let whole_limits = DecodeLimits {
        max_bytes: config.limits.max_request_bytes,
        max_depth: limits.max_depth + 3,
        max_items: config.limits.max_request_bytes,
    };
    // Values sit three levels down (body map, writes array, write map): a body too deep means
    // some value is too deep.
    let canonical = Value::canonicalize(body, &whole_limits).map_err(|e| match e {
        ValueError::TooDeep { .. } => Refused::bad_request(
            "bad_value",
            format!(
                "a value in the batch is nested deeper than {} levels (limits.max_value_depth)",
                limits.max_depth
            ),
        ),
        other => value_error(other, Format::Cbor),
    })?;
    let bytes = canonical.as_bytes();
    let mut d = Decoder::new(bytes);
    let n = d.map().map_err(|e| cbor_err("body", e))?.unwrap_or(0);
    let mut out = Vec::new();
    let mut keys = Vec::new();
    for _ in 0..n {
        let field = d.str().map_err(|e| cbor_err("body", e))?;
        if field != "writes" {
            return Err(bad("body", format!("unknown field {field:?}")));
        }
        let count = d.array().map_err(|e| cbor_err("writes", e))?.unwrap_or(0) as usize;
        check_count(count, config)?;
        for i in 0..count {
            let at = format!("writes[{i}]");
            let fields = d.map().map_err(|e| cbor_err(&at, e))?.unwrap_or(0);
            let mut w = RawWrite::default();
            for _ in 0..fields {
                let name = d.str().map_err(|e| cbor_err(&at, e))?;
                match name {
                    "collection" => {
                        w.collection = Some(
                            d.str()
                                .map_err(|e| cbor_field_err(&at, "collection", e))?
                                .to_owned(),
                        )
                    }
                    "key" => {
                        w.key = Some(match d.datatype().map_err(|e| cbor_err(&at, e))? {
                            minicbor::data::Type::Bytes => {
                                d.bytes().map_err(|e| cbor_err(&at, e))?.to_vec()
                            }
                            _ => d
                                .str()
                                .map_err(|e| cbor_field_err(&at, "key", e))?
                                .as_bytes()
                                .to_vec(),
                        })
                    }
                    "op" => {
                        w.op = Some(
                            d.str()
                                .map_err(|e| cbor_field_err(&at, "op", e))?
                                .to_owned(),
                        )
                    }
                    "value" => {
                        // The body is canonical already: this checks the value's own limits.
                        let start = d.position();
                        let item = Value::first_item(&bytes[start..], limits)
                            .map_err(|e| value_error(e, Format::Cbor).at(&at))?;
                        d.set_position(start + item.as_bytes().len());
                        w.value = Some(item);
                    }
                    "schema" => w.schema = d.u32().map_err(|e| cbor_field_err(&at, "schema", e))?,
                    "meta" => {
                        let m = d
                            .map()
                            .map_err(|e| cbor_field_err(&at, "meta", e))?
                            .unwrap_or(0);
                        for _ in 0..m {
                            let k = d
                                .str()
                                .map_err(|e| cbor_field_err(&at, "meta", e))?
                                .to_owned();
                            let v = d
                                .str()
                                .map_err(|e| cbor_field_err(&at, "meta", e))?
                                .to_owned();
                            w.meta.insert(k, v);
                        }
                    }
                    "idempotency_key" => {
                        w.idempotency_key = Some(
                            d.str()
                                .map_err(|e| cbor_field_err(&at, "idempotency_key", e))?
                                .to_owned(),
                        )
                    }
                    "context" => {
                        w.context = Some(
                            d.str()
                                .map_err(|e| cbor_field_err(&at, "context", e))?
                                .to_owned(),
                        )
                    }
                    other => return Err(bad(&at, format!("unknown field {other:?}"))),
                }
            }
            keys.push(w.idempotency_key.take());
            out.push(w.finish(config, &at, origins_held)?);
        }
    }
    Ok(Batch { writes: out, keys })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A context may name as many origins as the store holds events of, past the config's
    /// bound: after a peer that wrote is removed from the config, a context read here names it
    /// (before, sending it back was refused as naming more origins than the node may hold,
    /// which it did hold). Never more; and the store is asked only for a context longer than
    /// the config's bound.
    #[test]
    fn a_context_may_name_every_origin_the_store_holds() {
        let text = edgerep_config::starter_toml(
            &edgerep_wire::NodeId::parse("n").unwrap(),
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        )
        .replace("[replication]\n", "[replication]\nextra_origins = 1\n");
        let config = Config::parse(&text, std::path::Path::new("/x/edgerep.toml")).unwrap();
        assert_eq!(config.max_origins(), 2);
        let asked = std::cell::Cell::new(0);
        let held = |n: usize| {
            let asked = &asked;
            move || {
                asked.set(asked.get() + 1);
                n
            }
        };
        parse_context("a:1,b:2", &config, &held(0)).unwrap();
        assert_eq!(
            asked.get(),
            0,
            "within the config's bound, the store is not asked"
        );
        let e = parse_context("a:1,b:2,c:3", &config, &held(2)).unwrap_err();
        assert!(e.contains("more than 2 entries"), "{e}");
        let context = parse_context("a:1,b:2,c:3", &config, &held(3)).unwrap();
        assert_eq!(context.iter().count(), 3);
        assert!(parse_context("a:1,b:2,c:3,d:4", &config, &held(3)).is_err());
        // An event's own bound stands whatever the store holds.
        let long: Vec<String> = (0..edgerep_config::MAX_CONTEXT_ENTRIES)
            .map(|i| format!("o{i}:1"))
            .collect();
        assert!(parse_context(&long.join(","), &config, &held(1_000_000)).is_err());
    }
}
