//! The change event: one write (put or delete) to one key of one collection, made at one origin node.

use std::fmt;

/// Errors from building or decoding an [`Event`] or one of its parts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EventError {
    /// A node id is empty, too long or has a character outside `[A-Za-z0-9._-]`.
    #[error("invalid node id {id:?}: {reason}")]
    InvalidNodeId {
        /// The rejected id.
        id: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A collection name is empty, too long or has a character outside `[A-Za-z0-9._-]`.
    #[error("invalid collection name {name:?}: {reason}")]
    InvalidCollection {
        /// The rejected name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// Longest node id or collection name, in bytes.
pub const NAME_MAX_BYTES: usize = 64;

/// Checks the shared syntax of node ids and collection names.
fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("must not be empty");
    }
    if name.len() > NAME_MAX_BYTES {
        return Err("longer than 64 bytes");
    }
    if !name.as_bytes()[0].is_ascii_alphanumeric() {
        return Err("must start with a letter or digit");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err("only letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

/// Most collections a node may declare (the peer protocol's Hello lists each, and a peer's
/// longer list is refused before it is compared).
pub const MAX_COLLECTIONS: usize = 4096;

/// Checks that `name` is a valid collection name: 1 to 64 bytes of `[A-Za-z0-9._-]`, starting
/// with a letter or digit.
pub fn check_collection_name(name: &str) -> Result<(), EventError> {
    check_name(name).map_err(|reason| EventError::InvalidCollection {
        name: name.to_owned(),
        reason,
    })
}

/// The id of a node (an edge site): 1 to 64 bytes of `[A-Za-z0-9._-]`, starting with a letter or digit.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(String);

impl NodeId {
    /// Validates and wraps a node id.
    pub fn parse(id: &str) -> Result<NodeId, EventError> {
        check_name(id).map_err(|reason| EventError::InvalidNodeId {
            id: id.to_owned(),
            reason,
        })?;
        Ok(NodeId(id.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Maps keyed by node id ([`Have`]) are looked up by `&str` too: the id orders, compares and
/// hashes exactly as its text.
impl std::borrow::Borrow<str> for NodeId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// A node id serializes as its text (a JSON object keyed by node ids keys by the ids).
impl serde::Serialize for NodeId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

use std::collections::BTreeMap;

use minicbor::Encoder;

use crate::cbor::Reader;

use crate::hlc::Hlc;
use crate::value::{DecodeLimits, Value, ValueError, canonical_item_len};

/// The field of an event naming the idempotency keys its write was sent with: a byte string of
/// 16-byte digests (`edgerep_store::idempotency::digest`), one per key. This version writes it
/// into [`Event::extra`] (every version keeps fields from 11 up there byte for byte) and only
/// its origin reads it back: after a restore from a backup its lost writes come back from the
/// peers, and a retry under one of their keys must not write again.
pub const FIELD_IDEMPOTENCY_KEYS: u64 = 11;

/// The event format version this code writes. Readers accept higher versions: later versions only
/// add fields, which older readers keep byte for byte (see [`Event::extra`]).
pub const FORMAT_VERSION: u64 = 1;

/// Whether an event writes a value or deletes the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// Sets the key to the event's value.
    Put,
    /// Deletes the key (the event is a tombstone).
    Delete,
}

/// Dot: the unique name of one event, its origin node and that node's sequence number.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dot {
    /// The node where the event was written.
    pub origin: NodeId,
    /// The origin's sequence number for the event (1, 2, 3, ... with no gaps).
    pub seq: u64,
}

/// Causal context of a write: for each origin, the highest sequence number of that origin's writes
/// to the same key that the write has seen (and so supersedes).
///
/// Invariant behind this compact form: a node's writes to one key are causally ordered (each new
/// write saw the node's earlier ones), so "saw X's write n to this key" implies "saw every earlier
/// write of X to this key". This is a dotted version vector: the event's own dot plus this vector.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct VersionVector(BTreeMap<NodeId, u64>);

impl VersionVector {
    /// An empty vector (a write that supersedes nothing).
    pub fn new() -> VersionVector {
        VersionVector::default()
    }

    /// Whether the vector covers `dot`: the event named by `dot` is superseded by a write with this context.
    pub fn covers(&self, dot: &Dot) -> bool {
        self.0.get(&dot.origin).is_some_and(|&seq| seq >= dot.seq)
    }

    /// The highest sequence number of `origin` the vector covers, if it names `origin`.
    pub fn get(&self, origin: &NodeId) -> Option<u64> {
        self.0.get(origin).copied()
    }

    /// Adds `dot` (and so every earlier write of its origin to the key).
    pub fn add(&mut self, dot: &Dot) {
        let entry = self.0.entry(dot.origin.clone()).or_insert(0);
        *entry = (*entry).max(dot.seq);
    }

    /// Covers at most `upto` of `origin` (nothing of it when `upto` is 0).
    pub fn limit(&mut self, origin: &NodeId, upto: u64) {
        if upto == 0 {
            self.0.remove(origin);
        } else if let Some(seq) = self.0.get_mut(origin) {
            *seq = (*seq).min(upto);
        }
    }

    /// Adds everything `other` covers.
    pub fn join(&mut self, other: &VersionVector) {
        for (origin, &seq) in &other.0 {
            let entry = self.0.entry(origin.clone()).or_insert(0);
            *entry = (*entry).max(seq);
        }
    }

    /// The entries, by origin.
    pub fn iter(&self) -> impl Iterator<Item = (&NodeId, u64)> {
        self.0.iter().map(|(k, &v)| (k, v))
    }

    /// Number of origins in the vector.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the vector is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The text form a read gives its client, for a write to send back: `origin:seq` entries
    /// joined by commas, by origin (`""` for the empty vector).
    pub fn to_text(&self) -> String {
        let entries: Vec<String> = self.0.iter().map(|(o, s)| format!("{o}:{s}")).collect();
        entries.join(",")
    }

    /// Reads [`VersionVector::to_text`]'s form: at most `max_entries` entries, each a valid
    /// node id named once with a sequence number of at least 1. The error names what is wrong.
    pub fn parse_text(text: &str, max_entries: usize) -> Result<VersionVector, String> {
        let mut vv = VersionVector::new();
        if text.trim().is_empty() {
            return Ok(vv);
        }
        for (i, entry) in text.split(',').enumerate() {
            if i == max_entries {
                return Err(format!("more than {max_entries} entries"));
            }
            let entry = entry.trim();
            let (origin, seq) = entry
                .rsplit_once(':')
                .ok_or_else(|| format!("entry {entry:?} is not origin:seq"))?;
            let origin = NodeId::parse(origin).map_err(|e| format!("entry {entry:?}: {e}"))?;
            let seq: u64 = seq.parse().ok().filter(|&s| s > 0).ok_or_else(|| {
                format!("entry {entry:?}: {seq:?} is not a sequence number (1 or more)")
            })?;
            if vv.0.insert(origin, seq).is_some() {
                return Err(format!("entry {entry:?} names its origin again"));
            }
        }
        Ok(vv)
    }
}

/// Per origin, the highest sequence number up to which every event is held (or sent, or
/// acknowledged): what the store records, the committer reports and the replica compares.
/// An origin left out counts as 0.
pub type Have = BTreeMap<NodeId, u64>;

/// One change event. Built by the node that accepted the write and never changed afterwards: the
/// bytes from [`Event::encode`] are what every node stores, ships and hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Format version the event was written with ([`FORMAT_VERSION`] for new events).
    pub format: u64,
    /// Collection the key belongs to.
    pub collection: String,
    /// The key (any bytes, non-empty).
    pub key: Vec<u8>,
    /// Put or delete.
    pub op: Op,
    /// The value: present exactly when `op` is [`Op::Put`].
    pub value: Option<Value>,
    /// Hybrid logical clock timestamp at the origin.
    pub hlc: Hlc,
    /// Node where the write was made.
    pub origin: NodeId,
    /// The origin's sequence number for this event: per origin, gapless, immutable.
    pub seq: u64,
    /// Version of the application's value schema (0 when the application does not say).
    pub schema: u32,
    /// Small text metadata, set by the application or by plugins.
    pub meta: BTreeMap<String, String>,
    /// Versions of the key this write supersedes.
    pub context: VersionVector,
    /// Fields from a later format version this code does not know, by field number, each a
    /// deterministic CBOR item kept byte for byte so re-encoding loses nothing.
    pub extra: BTreeMap<u64, Value>,
}

impl AsRef<Event> for Event {
    fn as_ref(&self) -> &Event {
        self
    }
}

/// The bytes metadata takes against [`EventLimits::max_meta_bytes`]: its keys and values.
pub fn meta_bytes<'a>(meta: impl IntoIterator<Item = (&'a str, &'a str)>) -> usize {
    meta.into_iter()
        .fold(0usize, |n, (k, v)| n.saturating_add(k.len() + v.len()))
}

/// Limits applied when decoding an event from untrusted bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventLimits {
    /// Largest encoded event.
    pub max_event_bytes: usize,
    /// Largest key.
    pub max_key_bytes: usize,
    /// Most metadata entries.
    pub max_meta_entries: usize,
    /// Most metadata bytes (the UTF-8 lengths of every key and value, summed).
    pub max_meta_bytes: usize,
    /// Most origins in a causal context.
    pub max_context_entries: usize,
    /// Limits for the value (and unknown fields).
    pub value: DecodeLimits,
}

impl Default for EventLimits {
    fn default() -> EventLimits {
        EventLimits {
            max_event_bytes: 1 << 20,
            max_key_bytes: 1024,
            max_meta_entries: 16,
            max_meta_bytes: 4096,
            max_context_entries: 1024,
            value: DecodeLimits::default(),
        }
    }
}

/// Why event bytes were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The bytes are not valid CBOR for an event, or a field has the wrong type.
    #[error("malformed event: {0}")]
    Malformed(String),
    /// The value or an unknown field is not a valid deterministic CBOR item.
    #[error("event field {field}: {source}")]
    Value {
        /// Field number.
        field: u64,
        /// What was wrong with it.
        source: ValueError,
    },
    /// A field is invalid (bad name, too long, missing, inconsistent).
    #[error("invalid event: {0}")]
    Invalid(String),
    /// The event is over a size limit.
    #[error("event too large: {0}")]
    TooLarge(String),
    /// The bytes decode, but are not the deterministic encoding of what they decode to.
    #[error("event is not in deterministic encoding")]
    NonCanonical,
}

impl From<minicbor::decode::Error> for DecodeError {
    fn from(e: minicbor::decode::Error) -> DecodeError {
        DecodeError::Malformed(e.to_string())
    }
}

impl From<crate::cbor::CborError> for DecodeError {
    fn from(e: crate::cbor::CborError) -> DecodeError {
        use crate::cbor::CborError;
        match e {
            CborError::NonCanonical { .. } => DecodeError::NonCanonical,
            CborError::Invalid { what, reason } => {
                DecodeError::Invalid(format!("{what}: {reason}"))
            }
            CborError::Malformed { what, reason } => {
                DecodeError::Malformed(format!("{what}: {reason}"))
            }
            CborError::TrailingBytes { count } => {
                DecodeError::Malformed(format!("{count} trailing bytes after the event"))
            }
        }
    }
}

impl From<EventError> for DecodeError {
    fn from(e: EventError) -> DecodeError {
        DecodeError::Invalid(e.to_string())
    }
}

mod field {
    pub(super) const FORMAT: u64 = 0;
    pub(super) const COLLECTION: u64 = 1;
    pub(super) const KEY: u64 = 2;
    pub(super) const OP: u64 = 3;
    pub(super) const VALUE: u64 = 4;
    pub(super) const HLC: u64 = 5;
    pub(super) const ORIGIN: u64 = 6;
    pub(super) const SEQ: u64 = 7;
    pub(super) const SCHEMA: u64 = 8;
    pub(super) const META: u64 = 9;
    pub(super) const CONTEXT: u64 = 10;
    /// Field numbers at or above this one are unknown to this version and kept verbatim.
    pub(super) const FIRST_UNKNOWN: u64 = 11;
}

/// Sorts text keys in deterministic CBOR order: the order of their encodings, which for text
/// strings is shorter first, then bytewise.
fn canonical_text_order<'a, V>(entries: impl Iterator<Item = (&'a str, V)>) -> Vec<(&'a str, V)> {
    let mut v: Vec<_> = entries.collect();
    v.sort_by(|a, b| (a.0.len(), a.0.as_bytes()).cmp(&(b.0.len(), b.0.as_bytes())));
    v
}

/// Errors unless `key` comes after `last` in deterministic order (shorter first, then
/// bytewise); `duplicate` names an equal one.
fn in_text_order(last: Option<&str>, key: &str, duplicate: &str) -> Result<(), DecodeError> {
    match last.map(|l| (l.len(), l.as_bytes()).cmp(&(key.len(), key.as_bytes()))) {
        Some(std::cmp::Ordering::Equal) => Err(DecodeError::Invalid(duplicate.into())),
        Some(std::cmp::Ordering::Greater) => Err(DecodeError::NonCanonical),
        _ => Ok(()),
    }
}

impl Event {
    /// The event's dot (origin and sequence number).
    pub fn dot(&self) -> Dot {
        Dot {
            origin: self.origin.clone(),
            seq: self.seq,
        }
    }

    /// The deterministic CBOR encoding: a map from field number to field, fields in ascending
    /// order, `value` only on puts, `schema`, `meta` and `context` left out when zero or empty.
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(
            64 + self.collection.len() + self.key.len() + self.value.as_ref().map_or(0, Value::len),
        );
        self.encode_into(&mut buf);
        buf
    }

    /// Appends the deterministic encoding to `buf`.
    pub fn encode_into(&self, buf: &mut Vec<u8>) {
        let fields = 7
            + u64::from(self.value.is_some())
            + u64::from(self.schema != 0)
            + u64::from(!self.meta.is_empty())
            + u64::from(!self.context.is_empty())
            + self.extra.len() as u64;
        let mut e = Encoder::new(&mut *buf);
        // Writing into a Vec cannot fail.
        let _ = e.map(fields);
        let _ = e.u64(field::FORMAT).and_then(|e| e.u64(self.format));
        let _ = e
            .u64(field::COLLECTION)
            .and_then(|e| e.str(&self.collection));
        let _ = e.u64(field::KEY).and_then(|e| e.bytes(&self.key));
        let op = match self.op {
            Op::Put => 0,
            Op::Delete => 1,
        };
        let _ = e.u64(field::OP).and_then(|e| e.u64(op));
        if let Some(value) = &self.value {
            let _ = e.u64(field::VALUE);
            buf.extend_from_slice(value.as_bytes());
        }
        let mut e = Encoder::new(&mut *buf);
        let _ = e
            .u64(field::HLC)
            .and_then(|e| e.array(2))
            .and_then(|e| e.u64(self.hlc.physical_ms))
            .and_then(|e| e.u32(self.hlc.logical));
        let _ = e
            .u64(field::ORIGIN)
            .and_then(|e| e.str(self.origin.as_str()));
        let _ = e.u64(field::SEQ).and_then(|e| e.u64(self.seq));
        if self.schema != 0 {
            let _ = e.u64(field::SCHEMA).and_then(|e| e.u32(self.schema));
        }
        if !self.meta.is_empty() {
            let _ = e
                .u64(field::META)
                .and_then(|e| e.map(self.meta.len() as u64));
            for (k, v) in canonical_text_order(self.meta.iter().map(|(k, v)| (k.as_str(), v))) {
                let _ = e.str(k).and_then(|e| e.str(v));
            }
        }
        if !self.context.is_empty() {
            let _ = e
                .u64(field::CONTEXT)
                .and_then(|e| e.map(self.context.len() as u64));
            for (k, v) in canonical_text_order(self.context.iter().map(|(k, v)| (k.as_str(), v))) {
                let _ = e.str(k).and_then(|e| e.u64(v));
            }
        }
        for (&number, value) in &self.extra {
            let _ = Encoder::new(&mut *buf).u64(number);
            buf.extend_from_slice(value.as_bytes());
        }
    }

    /// The collection and key of an event's canonical bytes, read without decoding the rest:
    /// for bytes a store wrote after checking them, where only the event's key matters. The
    /// first three fields are always the format, the collection and the key.
    pub fn collection_and_key(bytes: &[u8]) -> Result<(&str, &[u8]), DecodeError> {
        fn field(r: &mut Reader<'_>, want: u64, what: &str) -> Result<(), DecodeError> {
            match r.u64("field number")? {
                n if n == want => Ok(()),
                n => Err(DecodeError::Invalid(format!(
                    "field {n} where {what} (field {want}) belongs"
                ))),
            }
        }
        let mut r = Reader::new(bytes);
        r.map("event")?;
        field(&mut r, field::FORMAT, "the format")?;
        r.u64("format")?;
        field(&mut r, field::COLLECTION, "the collection")?;
        let collection = r.str("collection")?;
        field(&mut r, field::KEY, "the key")?;
        let key = r.bytes("key")?;
        Ok((collection, key))
    }

    /// Decodes an event from untrusted bytes. Never panics; refuses anything over `limits`,
    /// anything malformed, and anything that is not the deterministic encoding of the event.
    pub fn decode(bytes: &[u8], limits: &EventLimits) -> Result<Event, DecodeError> {
        if bytes.len() > limits.max_event_bytes {
            return Err(DecodeError::TooLarge(format!(
                "{} bytes, over the limit of {}",
                bytes.len(),
                limits.max_event_bytes
            )));
        }
        // One strict pass: every head the shortest, every length definite, fields and map keys
        // in deterministic order, optional fields present only when the encoder writes them.
        // What it accepts is exactly what `encode` gives back (checked in debug builds and by
        // `strict_decoding_accepts_exactly_the_encoder_s_bytes`), so nothing is re-encoded.
        let mut r = Reader::new(bytes);
        let fields = r.map("event")?;
        let mut format = None;
        let mut collection = None;
        let mut key = None;
        let mut op = None;
        let mut value = None;
        let mut hlc = None;
        let mut origin = None;
        let mut seq = None;
        let mut schema = 0;
        let mut meta = BTreeMap::new();
        let mut context = VersionVector::new();
        let mut extra = BTreeMap::new();
        let mut previous: Option<u64> = None;
        for _ in 0..fields {
            let number = r.u64("field number")?;
            if previous.is_some_and(|p| p >= number) {
                return Err(DecodeError::NonCanonical);
            }
            previous = Some(number);
            match number {
                field::FORMAT => format = Some(r.u64("format")?),
                field::COLLECTION => {
                    let name = r.str("collection")?;
                    check_collection_name(name)?;
                    collection = Some(name.to_owned());
                }
                field::KEY => {
                    let k = r.bytes("key")?;
                    if k.is_empty() {
                        return Err(DecodeError::Invalid("empty key".into()));
                    }
                    if k.len() > limits.max_key_bytes {
                        return Err(DecodeError::TooLarge(format!(
                            "key is {} bytes, over the limit of {}",
                            k.len(),
                            limits.max_key_bytes
                        )));
                    }
                    key = Some(k.to_vec());
                }
                field::OP => {
                    op = Some(match r.u64("op")? {
                        0 => Op::Put,
                        1 => Op::Delete,
                        other => {
                            return Err(DecodeError::Invalid(format!("unknown operation {other}")));
                        }
                    })
                }
                field::VALUE | field::FIRST_UNKNOWN.. => {
                    let len = canonical_item_len(r.rest(), &limits.value).map_err(|source| {
                        DecodeError::Value {
                            field: number,
                            source,
                        }
                    })?;
                    let item = Value::from_canonical_unchecked(r.rest()[..len].to_vec());
                    r.skip(len, "value")?;
                    if number == field::VALUE {
                        value = Some(item);
                    } else {
                        extra.insert(number, item);
                    }
                }
                field::HLC => {
                    r.array_of(2, "hlc")?;
                    hlc = Some(Hlc::new(r.u64("hlc time")?, r.u32("hlc counter")?));
                }
                field::ORIGIN => origin = Some(NodeId::parse(r.str("origin")?)?),
                field::SEQ => seq = Some(r.u64("seq")?),
                field::SCHEMA => {
                    schema = r.u32("schema")?;
                    // The encoder leaves schema 0 out.
                    if schema == 0 {
                        return Err(DecodeError::NonCanonical);
                    }
                }
                field::META => {
                    let n = r.map("metadata")?;
                    if n == 0 {
                        // The encoder leaves empty metadata out.
                        return Err(DecodeError::NonCanonical);
                    }
                    if n as usize > limits.max_meta_entries {
                        return Err(DecodeError::TooLarge(format!(
                            "{n} metadata entries, over the limit of {}",
                            limits.max_meta_entries
                        )));
                    }
                    let mut meta_bytes = 0usize;
                    let mut last: Option<&str> = None;
                    for _ in 0..n {
                        let k = r.str("metadata key")?;
                        let v = r.str("metadata value")?;
                        in_text_order(last, k, "duplicate metadata key")?;
                        last = Some(k);
                        meta_bytes = meta_bytes.saturating_add(k.len() + v.len());
                        if meta_bytes > limits.max_meta_bytes {
                            return Err(DecodeError::TooLarge(format!(
                                "metadata of over {meta_bytes} bytes, over the limit of {}",
                                limits.max_meta_bytes
                            )));
                        }
                        meta.insert(k.to_owned(), v.to_owned());
                    }
                }
                field::CONTEXT => {
                    let n = r.map("causal context")?;
                    if n == 0 {
                        // The encoder leaves an empty context out.
                        return Err(DecodeError::NonCanonical);
                    }
                    if n as usize > limits.max_context_entries {
                        return Err(DecodeError::TooLarge(format!(
                            "{n} causal context entries, over the limit of {}",
                            limits.max_context_entries
                        )));
                    }
                    let mut last: Option<&str> = None;
                    for _ in 0..n {
                        let name = r.str("causal context origin")?;
                        in_text_order(last, name, "duplicate causal context origin")?;
                        last = Some(name);
                        let s = r.u64("causal context sequence number")?;
                        context.0.insert(NodeId::parse(name)?, s);
                    }
                }
            }
        }
        if r.remaining() > 0 {
            return Err(DecodeError::Malformed(format!(
                "trailing bytes after the event at byte {}",
                r.position()
            )));
        }
        let missing = |name: &str| DecodeError::Invalid(format!("missing field {name}"));
        let event = Event {
            format: format.ok_or_else(|| missing("format"))?,
            collection: collection.ok_or_else(|| missing("collection"))?,
            key: key.ok_or_else(|| missing("key"))?,
            op: op.ok_or_else(|| missing("op"))?,
            value,
            hlc: hlc.ok_or_else(|| missing("hlc"))?,
            origin: origin.ok_or_else(|| missing("origin"))?,
            seq: seq.ok_or_else(|| missing("seq"))?,
            schema,
            meta,
            context,
            extra,
        };
        event.check()?;
        debug_assert!(
            event.encode() == bytes,
            "the strict decoder accepted bytes the encoder does not give"
        );
        Ok(event)
    }

    /// What [`Event::decode`] would say of this event's encoding (`encoded_len` bytes long)
    /// under `limits`, without reading it back: the writer's check that an event it makes can be
    /// read by every reader. The value and unknown fields are walked (a `Value` may have been
    /// checked under other limits); the rest is the limits on lengths and counts and
    /// [`Event::check`]. Agrees with `decode` (see the wire crate's `strict_event` tests).
    pub fn check_encoded(
        &self,
        encoded_len: usize,
        limits: &EventLimits,
    ) -> Result<(), DecodeError> {
        if encoded_len > limits.max_event_bytes {
            return Err(DecodeError::TooLarge(format!(
                "{encoded_len} bytes, over the limit of {}",
                limits.max_event_bytes
            )));
        }
        check_collection_name(&self.collection)?;
        if self.key.is_empty() {
            return Err(DecodeError::Invalid("empty key".into()));
        }
        if self.key.len() > limits.max_key_bytes {
            return Err(DecodeError::TooLarge(format!(
                "key is {} bytes, over the limit of {}",
                self.key.len(),
                limits.max_key_bytes
            )));
        }
        // An unknown field under a known field's number would be read back as that field.
        if let Some(number) = self.extra.keys().find(|&&n| n < field::FIRST_UNKNOWN) {
            return Err(DecodeError::Invalid(format!(
                "unknown field number {number} is a known field's"
            )));
        }
        let items = self
            .value
            .iter()
            .map(|v| (field::VALUE, v))
            .chain(self.extra.iter().map(|(&n, v)| (n, v)));
        for (number, item) in items {
            let len = canonical_item_len(item.as_bytes(), &limits.value).map_err(|source| {
                DecodeError::Value {
                    field: number,
                    source,
                }
            })?;
            if len != item.len() {
                return Err(DecodeError::Malformed(format!(
                    "field {number} holds more than one item"
                )));
            }
        }
        if self.meta.len() > limits.max_meta_entries {
            return Err(DecodeError::TooLarge(format!(
                "{} metadata entries, over the limit of {}",
                self.meta.len(),
                limits.max_meta_entries
            )));
        }
        let meta_bytes = meta_bytes(self.meta.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        if meta_bytes > limits.max_meta_bytes {
            return Err(DecodeError::TooLarge(format!(
                "metadata of over {meta_bytes} bytes, over the limit of {}",
                limits.max_meta_bytes
            )));
        }
        if self.context.len() > limits.max_context_entries {
            return Err(DecodeError::TooLarge(format!(
                "{} causal context entries, over the limit of {}",
                self.context.len(),
                limits.max_context_entries
            )));
        }
        self.check()
    }

    /// Checks the invariants between fields that the type does not enforce.
    pub fn check(&self) -> Result<(), DecodeError> {
        if self.format == 0 {
            return Err(DecodeError::Invalid("format version 0".into()));
        }
        if self.seq == 0 {
            return Err(DecodeError::Invalid(
                "sequence number 0 (they start at 1)".into(),
            ));
        }
        // An event supersedes only what its origin saw before writing it: never its own
        // sequence number or a later one of its origin (such a context would make the origin's
        // next writes to the key obsolete everywhere).
        if let Some(c) = self.context.get(&self.origin).filter(|&c| c >= self.seq) {
            return Err(DecodeError::Invalid(format!(
                "causal context names its own origin at sequence {c}, not below the event's own {}",
                self.seq
            )));
        }
        match (self.op, &self.value) {
            (Op::Put, None) => Err(DecodeError::Invalid("put without a value".into())),
            (Op::Delete, Some(_)) => Err(DecodeError::Invalid("delete with a value".into())),
            _ => Ok(()),
        }
    }
}
