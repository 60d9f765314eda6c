//! The peer protocol's messages (version [`PROTOCOL_VERSION`]) and their CBOR encoding.
//!
//! A message is one CBOR array whose first item is the message type; framing (the length prefix)
//! is the transport's. Encoding is deterministic (definite lengths, shortest heads) and the decoder
//! accepts only that encoding, so a message has exactly one byte form:
//!
//! | type | message | array |
//! |---|---|---|
//! | 0 | [`Hello`] | `[0, protocol, node, instance, [fingerprint…], have, compacted, [[name, value]…], [seal…]]` (the last: at most one, [`Hello::your_seal`]) |
//! | 1 | [`Message::Events`] | `[1, [event bytes…], [seal…], [[origin, cert]…]]`, each event's canonical bytes ([`EncodedEvent`]) in a byte string |
//! | 2 | [`Message::Ack`] | `[2, have, rewind]` |
//! | 3 | [`Message::Bye`] | `[3, reason]` |
//! | 4 | [`Message::Snapshot`] | `[4, id, page, floors, [event bytes…], done, have, [seal…], [[origin, cert]…], [proof…]]` (`have` empty unless `done`; one proof per event) |
//! | 5 | [`Message::SnapshotAck`] | `[5, id, page]` |
//! | 6 | [`Message::Reconcile`] | `[6, id, [[level, prefix, fingerprint (16 bytes), count]…], [[level, prefix, [[state key, hash (16 bytes)]…]]…]]` |
//! | 7 | [`Message::Repair`] | `[7, id, [event bytes…], [proof…], [seal…], [[origin, cert]…], [state key…], [[state key, versions hash (32 bytes), resolution hash (32 bytes), build]…]]` (one proof per event) |
//! | 8 | [`Message::Prune`] | `[8, [origin…]]` (strictly ascending, at most [`MAX_ORIGINS`]) |
//! | 9 | [`Message::Graft`] | `[9, [origin…]]` (likewise) |
//!
//! A seal is `[origin, seq, first, chain (32 bytes), root (32 bytes), signature (bytes)]` (see
//! `edgerep_wire::seal`): in an Events message, each origin's run ends at one of its seals; a
//! cert is the origin's certificate (DER), sent once per session before the first seal it
//! verifies. A proof is `[seal seq, path]`, the path its hashes concatenated (32 bytes each, at
//! most `MAX_PATH_HASHES`): the event beside it is proven by its origin's seal at that sequence
//! number, which the same message carries.
//! `have` (and `compacted`) is `[[node, seq]…]`, strictly ascending by node id, at most
//! [`MAX_ORIGINS`] entries. The Hello's last item is the sender's policy (limits, write
//! authorization, revocations) as `[name, value]` text pairs strictly ascending by name: peers
//! must agree on it. A fingerprint is
//! `[collection, resolver, [transform…], [[plugin, sha256 hex, settings]…], [[from ms, resolver, [transform…]]…]]`
//! (the last list: the collection's upgrades, strictly ascending by time, at most
//! [`MAX_UPGRADES`]); fingerprints are strictly ascending by collection, plugins strictly
//! ascending by name (transforms keep their order: it is the order they run in).
//!
//! Invariant: [`Message::decode`] never panics and allocates at most in proportion to its input,
//! which is at most [`MessageLimits::max_frame_bytes`].

use bytes::Bytes;
use edgerep_wire::EncodedEvent;
use edgerep_wire::event::{self, EventLimits, check_collection_name};
use edgerep_wire::seal::{
    MAX_CERT_BYTES, MAX_CERTS_PER_ORIGIN, MAX_PATH_HASHES, MAX_SIGNATURE_BYTES, Proof,
};
use edgerep_wire::{NodeId, Seal};
use minicbor::Encoder;

use crate::reconcile::{MAX_KEYS, MAX_RANGES, RangeFingerprint, RangeItems};
use edgerep_wire::aae::{KeyResolution, LEAF_LEVEL, Node, bucket_of};
use edgerep_wire::cbor::{CborError, Reader};

/// The protocol version this code speaks: the latest.
pub const PROTOCOL_VERSION: u32 = 7;

/// The oldest protocol version this code speaks. A session speaks the lower of the two
/// Hellos' versions, so nodes of two builds talk through a rolling upgrade as long as each
/// speaks the other's version or the other speaks its own. To keep that possible, a Hello of
/// every later version begins with this version's items (later versions append theirs, which
/// this build reads past), and a build that raises [`PROTOCOL_VERSION`] keeps speaking the
/// versions down to its minimum. A Hello below [`MIN_PROTOCOL_VERSION`] is refused by its
/// version alone, before the rest of it is read.
///
/// What peers compare must stay comparable too: a policy entry or plugin setting a later
/// build adds is sent only when its value differs from what builds without it do (this build
/// takes an entry it lacks for a difference, and refuses the session), and a changed default
/// is a changed policy. A rule that decides state differently for what honest builds send
/// (the merge of versions, what a snapshot page must prove) changes with the protocol version,
/// not under it. (The merge's one-version-per-origin bound differs only for events whose
/// contexts leave out their origin's own earlier writes, which no honest build sends.)
pub const MIN_PROTOCOL_VERSION: u32 = 7;

/// Most upgrades one collection's fingerprint may list.
pub const MAX_UPGRADES: usize = 64;

/// Most origins a `have` list may name (the same on every node, so a list one node sends is
/// never too long for another; each node bounds the origins it accepts events from lower).
pub const MAX_ORIGINS: usize = 1024;

/// Most entries in a Hello's policy.
pub const MAX_POLICY_ENTRIES: usize = 4096;

/// Longest text accepted for a resolver, transform or plugin name, or a `Bye` reason, in bytes.
pub const MAX_TEXT_BYTES: usize = 1024;

/// Message type numbers (the first item of a message's array).
mod kind {
    pub(super) const HELLO: u64 = 0;
    pub(super) const EVENTS: u64 = 1;
    pub(super) const ACK: u64 = 2;
    pub(super) const BYE: u64 = 3;
    pub(super) const SNAPSHOT: u64 = 4;
    pub(super) const SNAPSHOT_ACK: u64 = 5;
    pub(super) const RECONCILE: u64 = 6;
    pub(super) const REPAIR: u64 = 7;
    pub(super) const PRUNE: u64 = 8;
    pub(super) const GRAFT: u64 = 9;
}

/// What one side runs for one collection; peers compare these and report differences.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectionFingerprint {
    /// The collection name.
    pub name: String,
    /// The resolver that turns concurrent versions into a value (a plugin name or a built-in).
    pub resolver: String,
    /// The transforms run on events applied from peers, in the order they run.
    pub transforms_on_apply: Vec<String>,
    /// The plugins the collection uses, strictly ascending by name.
    pub plugins: Vec<PluginFingerprint>,
    /// What decides the collection's events from later hybrid-clock times on, in time order
    /// (`resolver` and `transforms_on_apply` above decide the events before the first).
    pub upgrades: Vec<UpgradeFingerprint>,
}

/// One upgrade in a [`CollectionFingerprint`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeFingerprint {
    /// In force for events at or after this hybrid-clock time (ms since the Unix epoch).
    pub from_ms: u64,
    /// The resolver from then on.
    pub resolver: String,
    /// The transforms on apply from then on.
    pub transforms_on_apply: Vec<String>,
}

/// One plugin in a [`CollectionFingerprint`]: what decides what it does.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PluginFingerprint {
    /// The plugin's name in the config.
    pub name: String,
    /// SHA-256 of the component, lowercase hex.
    pub sha256: String,
    /// Its settings that change its output, as `key=value` words (fuel, memory, failure
    /// policy, a hash of its parameters); not its wall-clock deadline, which is per machine.
    pub settings: String,
}

/// Longest [`PluginFingerprint::settings`].
pub const MAX_PLUGIN_SETTINGS_BYTES: usize = 512;

/// The first message on a session, from each side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The sender's protocol version ([`PROTOCOL_VERSION`]).
    pub protocol: u32,
    /// The sender's node id; must be the id the transport authenticated.
    pub node: NodeId,
    /// Chosen at random each time the sender's process starts: two sessions under one node id
    /// with different instances that alternate are two machines using the same identity.
    pub instance: u64,
    /// What the sender runs, per collection, strictly ascending by collection name.
    pub fingerprint: Vec<CollectionFingerprint>,
    /// Per origin, the highest sequence number up to which the sender durably holds every event,
    /// strictly ascending by origin.
    pub have: Vec<(NodeId, u64)>,
    /// Per origin, the highest sequence number the sender compacted out of its changelog: a
    /// receiver below it may be sent a snapshot, and only then.
    pub compacted: Vec<(NodeId, u64)>,
    /// The sender's policy as (name, value) pairs, strictly ascending by name: limits, write
    /// authorization and revocations. Peers with different policies do not replicate.
    pub policy: Vec<(String, String)>,
    /// The receiver's own seal at the sequence number `have` gives for the receiver's origin
    /// (none if `have` names none of its events): a node restored from a backup waits for the
    /// events its peers hold of its own origin, and takes that claim only with its own
    /// signature behind it, so a peer cannot hold its writes back with a made-up number.
    pub your_seal: Option<Seal>,
}

/// One protocol message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// The handshake.
    Hello(Hello),
    /// Events the receiver lacks. Within one message, each origin's events form one run of
    /// consecutive ascending sequence numbers.
    Events {
        /// The events.
        events: Vec<EncodedEvent>,
        /// The origins' seals over them: each origin's run ends at one.
        seals: Vec<Seal>,
        /// Certificates (DER) of origins whose seals the receiver may not be able to verify yet.
        certs: Vec<(NodeId, Vec<u8>)>,
    },
    /// The receiver's durable per-origin have after applying.
    Ack {
        /// Per origin, the highest contiguous sequence number held durably, strictly ascending.
        have: Vec<(NodeId, u64)>,
        /// The receiver saw a gap: the sender should resend from `have`.
        rewind: bool,
    },
    /// The sender is closing the session.
    Bye {
        /// Why, for the log.
        reason: String,
    },
    /// One page of the sender's state, for a receiver that needs events the sender compacted
    /// away. Pages go one at a time (the next after the receiver's [`Message::SnapshotAck`]).
    /// Merging a page is idempotent; only the last page's `have` moves the receiver's cursors.
    Snapshot {
        /// Which snapshot (the sender numbers them per session).
        id: u64,
        /// The page's number within the snapshot, from 0.
        page: u64,
        /// The sender's compacted floors when the snapshot began (per origin, strictly
        /// ascending): the receiver takes a new snapshot only if it is below one of them.
        floors: Vec<(NodeId, u64)>,
        /// The versions of consecutive keys, in key order, each as its origin sent it.
        versions: Vec<EncodedEvent>,
        /// Per version, what proves it is its origin's.
        proofs: Vec<Proof>,
        /// The last page: the state sent reflects at least every event up to `have`.
        done: bool,
        /// Per origin, strictly ascending; empty unless `done`.
        have: Vec<(NodeId, u64)>,
        /// The seals the proofs name and, on the last page, the seal of each origin of `have`
        /// at its sequence number there.
        seals: Vec<Seal>,
        /// Certificates (DER) of origins the seals name.
        certs: Vec<(NodeId, Vec<u8>)>,
    },
    /// The receiver durably merged the snapshot page.
    SnapshotAck {
        /// The snapshot.
        id: u64,
        /// The page.
        page: u64,
    },
    /// The relay tree: stop pushing the events of these origins to the sender (it got them
    /// first elsewhere); the receiver's Acks keep announcing what it holds of them.
    Prune {
        /// Strictly ascending.
        origins: Vec<NodeId>,
    },
    /// The relay tree: push the events of these origins to the sender again (they stopped
    /// arriving by the other paths).
    Graft {
        /// Strictly ascending.
        origins: Vec<NodeId>,
    },
    /// Anti-entropy: ranges of the sender's state to compare (see [`crate::reconcile`]).
    Reconcile {
        /// The session (chosen by the side that opened it).
        id: u64,
        /// Ranges with the sender's fingerprints.
        fingerprints: Vec<RangeFingerprint>,
        /// Ranges with the sender's entries.
        items: Vec<RangeItems>,
    },
    /// Anti-entropy: the sender's versions of keys that differ, proven like snapshot versions,
    /// and the keys whose versions it wants.
    Repair {
        /// The session.
        id: u64,
        /// The versions, each as its origin sent it.
        versions: Vec<EncodedEvent>,
        /// Per version, what proves it is its origin's.
        proofs: Vec<Proof>,
        /// The seals the proofs name.
        seals: Vec<Seal>,
        /// Certificates (DER) of origins the seals name.
        certs: Vec<(NodeId, Vec<u8>)>,
        /// State keys (`collection 0x00 key`) whose versions the sender wants.
        want: Vec<Vec<u8>>,
        /// How the sender resolved the keys it sends that hold concurrent versions.
        resolutions: Vec<KeyResolution>,
    },
}

/// Size limits applied when decoding a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageLimits {
    /// Largest message, in bytes.
    pub max_frame_bytes: usize,
    /// Most events in one [`Message::Events`].
    pub max_events_per_batch: usize,
    /// Limits for each event.
    pub event: EventLimits,
}

impl Default for MessageLimits {
    /// 8 MiB frames, 4096 events per batch, default event limits.
    fn default() -> MessageLimits {
        MessageLimits {
            max_frame_bytes: 8 << 20,
            max_events_per_batch: 4096,
            event: EventLimits::default(),
        }
    }
}

/// Why message bytes were refused. Every variant names the part that was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The message is larger than [`MessageLimits::max_frame_bytes`].
    #[error("message is {size} bytes, over the limit of {limit}")]
    TooLarge {
        /// Size of the message.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A list has more entries than its limit allows.
    #[error("{what}: {count} entries, over the limit of {limit}")]
    TooMany {
        /// The list.
        what: String,
        /// How many it had.
        count: u64,
        /// The limit.
        limit: u64,
    },
    /// An item is not valid CBOR or not of the expected type or shape.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// The item.
        what: String,
        /// What was wrong.
        reason: String,
    },
    /// The first item names no message type this version knows.
    #[error("unknown message type {0}")]
    UnknownType(u64),
    /// A Hello of a protocol version this build no longer speaks.
    #[error(
        "the peer speaks protocol version {theirs}, this node speaks versions {MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION}: upgrade the older of the two nodes"
    )]
    Version {
        /// The peer's.
        theirs: u32,
    },
    /// An item decodes but is not in deterministic encoding (a longer head than needed).
    #[error("{what} is not in deterministic encoding")]
    NonCanonical {
        /// The item.
        what: String,
    },
    /// An item is well-formed but its value is not allowed.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// The item.
        what: String,
        /// What was wrong.
        reason: String,
    },
    /// An event in a [`Message::Events`] was refused.
    #[error("event {index} of the batch: {source}")]
    Event {
        /// Position of the event in the batch.
        index: usize,
        /// Why it was refused.
        source: event::DecodeError,
    },
    /// Bytes follow the message.
    #[error("{count} trailing bytes after the message")]
    TrailingBytes {
        /// How many.
        count: usize,
    },
}

impl From<CborError> for DecodeError {
    fn from(e: CborError) -> DecodeError {
        match e {
            CborError::Malformed { what, reason } => DecodeError::Malformed { what, reason },
            CborError::NonCanonical { what } => DecodeError::NonCanonical { what },
            CborError::Invalid { what, reason } => DecodeError::Invalid { what, reason },
            CborError::TrailingBytes { count } => DecodeError::TrailingBytes { count },
        }
    }
}

impl Message {
    /// About how many bytes the message takes decoded, in memory (at least its frame's
    /// `frame_bytes`): what a queue of received messages is charged. The frame's size alone
    /// undercounts: a causal-context entry of a few bytes on the wire is a map entry of about
    /// 80 decoded, so frames of many-entry contexts would otherwise fill memory many times over
    /// the queue's bound.
    pub fn approx_decoded_bytes(&self, frame_bytes: usize) -> usize {
        let certs = |c: &[(NodeId, Vec<u8>)]| c.iter().map(|(_, d)| d.len() + 64).sum::<usize>();
        let seals = |s: &[Seal]| s.len() * (std::mem::size_of::<Seal>() + 64);
        let proofs = |p: &[Proof]| p.iter().map(|p| 48 + p.path.len() * 32).sum::<usize>();
        let decoded = match self {
            Message::Events {
                events,
                seals: s,
                certs: c,
            } => crate::replica::approx_bytes(events) + seals(s) + certs(c),
            Message::Snapshot {
                floors,
                versions,
                proofs: p,
                have,
                seals: s,
                certs: c,
                ..
            } => {
                crate::replica::approx_bytes(versions)
                    + proofs(p)
                    + seals(s)
                    + certs(c)
                    + (floors.len() + have.len()) * 64
            }
            Message::Repair {
                versions,
                proofs: p,
                seals: s,
                certs: c,
                want,
                resolutions,
                ..
            } => {
                crate::replica::approx_bytes(versions)
                    + proofs(p)
                    + seals(s)
                    + certs(c)
                    + want.iter().map(|k| k.len() + 32).sum::<usize>()
                    + resolutions
                        .iter()
                        .map(|r| r.state_key.len() + r.build.len() + 160)
                        .sum::<usize>()
            }
            Message::Reconcile {
                fingerprints,
                items,
                ..
            } => {
                fingerprints.len() * 128
                    + items
                        .iter()
                        .map(|r| 64 + r.items.iter().map(|(k, _)| k.len() + 48).sum::<usize>())
                        .sum::<usize>()
            }
            // Small messages: lists of origins and numbers, a few times their encoding.
            Message::Hello(_)
            | Message::Ack { .. }
            | Message::Bye { .. }
            | Message::SnapshotAck { .. }
            | Message::Prune { .. }
            | Message::Graft { .. } => frame_bytes.saturating_mul(4),
        };
        decoded.max(frame_bytes)
    }

    /// The deterministic encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        self.encode_into(&mut buf);
        buf
    }

    /// Appends the deterministic encoding to `buf`.
    pub fn encode_into(&self, buf: &mut Vec<u8>) {
        // Writing into a Vec cannot fail, so the encoder's results are ignored throughout.
        match self {
            Message::Hello(h) => {
                let mut e = Encoder::new(&mut *buf);
                let _ = e.array(9).and_then(|e| e.u64(kind::HELLO));
                let _ = e.u32(h.protocol).and_then(|e| e.str(h.node.as_str()));
                let _ = e.u64(h.instance);
                let _ = e.array(h.fingerprint.len() as u64);
                for f in &h.fingerprint {
                    let _ = e.array(5).and_then(|e| e.str(&f.name));
                    let _ = e.str(&f.resolver);
                    let _ = e.array(f.transforms_on_apply.len() as u64);
                    for t in &f.transforms_on_apply {
                        let _ = e.str(t);
                    }
                    let _ = e.array(f.plugins.len() as u64);
                    for p in &f.plugins {
                        let _ = e
                            .array(3)
                            .and_then(|e| e.str(&p.name))
                            .and_then(|e| e.str(&p.sha256))
                            .and_then(|e| e.str(&p.settings));
                    }
                    let _ = e.array(f.upgrades.len() as u64);
                    for u in &f.upgrades {
                        let _ = e
                            .array(3)
                            .and_then(|e| e.u64(u.from_ms))
                            .and_then(|e| e.str(&u.resolver))
                            .and_then(|e| e.array(u.transforms_on_apply.len() as u64));
                        for t in &u.transforms_on_apply {
                            let _ = e.str(t);
                        }
                    }
                }
                encode_have(&mut e, &h.have);
                encode_have(&mut e, &h.compacted);
                let _ = e.array(h.policy.len() as u64);
                for (name, value) in &h.policy {
                    let _ = e
                        .array(2)
                        .and_then(|e| e.str(name))
                        .and_then(|e| e.str(value));
                }
                let _ = e.array(u64::from(h.your_seal.is_some()));
                if let Some(seal) = &h.your_seal {
                    encode_seal(&mut e, seal);
                }
            }
            Message::Events {
                events,
                seals,
                certs,
            } => {
                let _ = Encoder::new(&mut *buf)
                    .array(4)
                    .and_then(|e| e.u64(kind::EVENTS));
                encode_events(buf, events);
                encode_seals(buf, seals, certs);
            }
            Message::Ack { have, rewind } => {
                let mut e = Encoder::new(&mut *buf);
                let _ = e.array(3).and_then(|e| e.u64(kind::ACK));
                encode_have(&mut e, have);
                let _ = e.bool(*rewind);
            }
            Message::Bye { reason } => {
                let _ = Encoder::new(&mut *buf)
                    .array(2)
                    .and_then(|e| e.u64(kind::BYE))
                    .and_then(|e| e.str(reason));
            }
            Message::Snapshot {
                id,
                page,
                floors,
                versions,
                proofs,
                done,
                have,
                seals,
                certs,
            } => {
                let mut e = Encoder::new(&mut *buf);
                let _ = e
                    .array(10)
                    .and_then(|e| e.u64(kind::SNAPSHOT))
                    .and_then(|e| e.u64(*id))
                    .and_then(|e| e.u64(*page));
                encode_have(&mut e, floors);
                encode_events(buf, versions);
                let mut e = Encoder::new(&mut *buf);
                let _ = e.bool(*done);
                encode_have(&mut e, have);
                encode_seals(buf, seals, certs);
                encode_proofs(buf, proofs);
            }
            Message::Prune { origins } | Message::Graft { origins } => {
                let ty = if matches!(self, Message::Prune { .. }) {
                    kind::PRUNE
                } else {
                    kind::GRAFT
                };
                let mut e = Encoder::new(&mut *buf);
                let _ = e
                    .array(2)
                    .and_then(|e| e.u64(ty))
                    .and_then(|e| e.array(origins.len() as u64));
                for o in origins {
                    let _ = e.str(o.as_str());
                }
            }
            Message::SnapshotAck { id, page } => {
                let _ = Encoder::new(&mut *buf)
                    .array(3)
                    .and_then(|e| e.u64(kind::SNAPSHOT_ACK))
                    .and_then(|e| e.u64(*id))
                    .and_then(|e| e.u64(*page));
            }
            Message::Reconcile {
                id,
                fingerprints,
                items,
            } => {
                let mut e = Encoder::new(&mut *buf);
                let _ = e
                    .array(4)
                    .and_then(|e| e.u64(kind::RECONCILE))
                    .and_then(|e| e.u64(*id))
                    .and_then(|e| e.array(fingerprints.len() as u64));
                for f in fingerprints {
                    let _ = e
                        .array(4)
                        .and_then(|e| e.u64(u64::from(f.node.level)))
                        .and_then(|e| e.u64(u64::from(f.node.prefix)))
                        .and_then(|e| e.bytes(&f.fingerprint))
                        .and_then(|e| e.u64(f.count));
                }
                let _ = e.array(items.len() as u64);
                for range in items {
                    let _ = e
                        .array(3)
                        .and_then(|e| e.u64(u64::from(range.node.level)))
                        .and_then(|e| e.u64(u64::from(range.node.prefix)))
                        .and_then(|e| e.array(range.items.len() as u64));
                    for (k, h) in &range.items {
                        let _ = e.array(2).and_then(|e| e.bytes(k)).and_then(|e| e.bytes(h));
                    }
                }
            }
            Message::Repair {
                id,
                versions,
                proofs,
                seals,
                certs,
                want,
                resolutions,
            } => {
                let _ = Encoder::new(&mut *buf)
                    .array(8)
                    .and_then(|e| e.u64(kind::REPAIR))
                    .and_then(|e| e.u64(*id));
                encode_events(buf, versions);
                encode_proofs(buf, proofs);
                encode_seals(buf, seals, certs);
                let mut e = Encoder::new(&mut *buf);
                let _ = e.array(want.len() as u64);
                for k in want {
                    let _ = e.bytes(k);
                }
                let _ = e.array(resolutions.len() as u64);
                for r in resolutions {
                    let _ = e
                        .array(4)
                        .and_then(|e| e.bytes(&r.state_key))
                        .and_then(|e| e.bytes(&r.versions))
                        .and_then(|e| e.bytes(&r.resolution))
                        .and_then(|e| e.str(&r.build));
                }
            }
        }
    }

    /// Decodes one message from untrusted bytes. Never panics; refuses anything over `limits`,
    /// anything malformed or not in deterministic encoding, and trailing bytes.
    pub fn decode(bytes: &[u8], limits: &MessageLimits) -> Result<Message, DecodeError> {
        Message::decode_in(bytes, None, limits)
    }

    /// [`Message::decode`] of a received frame: the events a message carries keep their bytes
    /// as slices of `frame` (shared, not copied).
    pub fn decode_frame(frame: &Bytes, limits: &MessageLimits) -> Result<Message, DecodeError> {
        Message::decode_in(frame, Some(frame), limits)
    }

    fn decode_in(
        bytes: &[u8],
        frame: Option<&Bytes>,
        limits: &MessageLimits,
    ) -> Result<Message, DecodeError> {
        if bytes.len() > limits.max_frame_bytes {
            return Err(DecodeError::TooLarge {
                size: bytes.len(),
                limit: limits.max_frame_bytes,
            });
        }
        let mut r = Reader::new(bytes);
        let items = r.array("message")?;
        if items == 0 {
            return Err(DecodeError::Malformed {
                what: "message".into(),
                reason: "empty array".into(),
            });
        }
        let ty = r.u64("message type")?;
        if ty == kind::HELLO {
            return decode_hello(&mut r, items).map(Message::Hello);
        }
        let (want, message) = match ty {
            kind::EVENTS => (4, "events message"),
            kind::ACK => (3, "ack"),
            kind::BYE => (2, "bye"),
            kind::SNAPSHOT => (10, "snapshot"),
            kind::SNAPSHOT_ACK => (3, "snapshot ack"),
            kind::RECONCILE => (4, "reconcile"),
            kind::REPAIR => (8, "repair"),
            kind::PRUNE => (2, "prune"),
            kind::GRAFT => (2, "graft"),
            other => return Err(DecodeError::UnknownType(other)),
        };
        if items != want {
            return Err(DecodeError::Malformed {
                what: message.into(),
                reason: format!("expected an array of {want} items, found {items}"),
            });
        }
        let message = match ty {
            kind::EVENTS => {
                let events = decode_events(&mut r, frame, limits)?;
                let (seals, certs) = decode_seals(&mut r, limits, "events")?;
                Message::Events {
                    events,
                    seals,
                    certs,
                }
            }
            kind::ACK => Message::Ack {
                have: decode_have(&mut r, "ack have")?,
                rewind: r.bool("ack rewind")?,
            },
            kind::SNAPSHOT => {
                let id = r.u64("snapshot id")?;
                let page = r.u64("snapshot page")?;
                let floors = decode_have(&mut r, "snapshot floors")?;
                let versions = decode_events(&mut r, frame, limits)?;
                let done = r.bool("snapshot done")?;
                let have = decode_have(&mut r, "snapshot have")?;
                let (seals, certs) = decode_seals(&mut r, limits, "snapshot")?;
                let proofs = decode_proofs(&mut r, versions.len(), "snapshot")?;
                if !done && !have.is_empty() {
                    return Err(DecodeError::Invalid {
                        what: "snapshot have".into(),
                        reason: "given on a page that is not the last".into(),
                    });
                }
                Message::Snapshot {
                    id,
                    page,
                    floors,
                    versions,
                    proofs,
                    done,
                    have,
                    seals,
                    certs,
                }
            }
            kind::PRUNE => Message::Prune {
                origins: decode_origins(&mut r, "prune origins")?,
            },
            kind::GRAFT => Message::Graft {
                origins: decode_origins(&mut r, "graft origins")?,
            },
            kind::SNAPSHOT_ACK => Message::SnapshotAck {
                id: r.u64("snapshot ack id")?,
                page: r.u64("snapshot ack page")?,
            },
            kind::RECONCILE => {
                let id = r.u64("reconcile id")?;
                let (fingerprints, items) = decode_ranges(&mut r, limits)?;
                Message::Reconcile {
                    id,
                    fingerprints,
                    items,
                }
            }
            kind::REPAIR => {
                let id = r.u64("repair id")?;
                let versions = decode_events(&mut r, frame, limits)?;
                let proofs = decode_proofs(&mut r, versions.len(), "repair")?;
                let (seals, certs) = decode_seals(&mut r, limits, "repair")?;
                let n = bounded_len(&mut r, "repair want", MAX_KEYS)?;
                let mut want = Vec::with_capacity(n);
                for _ in 0..n {
                    want.push(state_key(&mut r, limits, "repair want")?);
                }
                let n = bounded_len(&mut r, "repair resolutions", MAX_KEYS)?;
                let mut resolutions = Vec::with_capacity(n);
                for _ in 0..n {
                    r.array_of(4, "repair resolution")?;
                    let state_key = state_key(&mut r, limits, "repair resolution key")?;
                    let versions = hash32(&mut r, "repair resolution versions")?;
                    let resolution = hash32(&mut r, "repair resolution hash")?;
                    let build = text(&mut r, "repair resolution build")?;
                    if build.len() > 128 {
                        return Err(DecodeError::Invalid {
                            what: "repair resolution build".into(),
                            reason: format!("{} bytes, at most 128", build.len()),
                        });
                    }
                    resolutions.push(KeyResolution {
                        state_key,
                        versions,
                        resolution,
                        build: build.to_owned(),
                    });
                }
                Message::Repair {
                    id,
                    versions,
                    proofs,
                    seals,
                    certs,
                    want,
                    resolutions,
                }
            }
            _ => Message::Bye {
                reason: text(&mut r, "bye reason")?.to_owned(),
            },
        };
        r.finish()?;
        Ok(message)
    }
}

/// `[[seal seq, path]…]`.
fn encode_proofs(buf: &mut Vec<u8>, proofs: &[Proof]) {
    let mut e = Encoder::new(&mut *buf);
    let _ = e.array(proofs.len() as u64);
    for p in proofs {
        let _ = e
            .array(2)
            .and_then(|e| e.u64(p.seal))
            .and_then(|e| e.bytes(&p.path.concat()));
    }
}

/// A state key (`collection 0x00 key`) within the event limits.
fn state_key(
    r: &mut Reader<'_>,
    limits: &MessageLimits,
    what: &str,
) -> Result<Vec<u8>, DecodeError> {
    let k = r.bytes(what)?;
    let most = limits.event.max_key_bytes + 256;
    if k.len() > most || !k.contains(&0) {
        return Err(DecodeError::Invalid {
            what: what.into(),
            reason: format!(
                "{} bytes, not a collection, a 0x00 byte and a key within {most} bytes",
                k.len()
            ),
        });
    }
    Ok(k.to_vec())
}

fn tree_node(r: &mut Reader<'_>, what: &str) -> Result<Node, DecodeError> {
    let level = r.u64(what)?;
    let prefix = r.u64(what)?;
    let node = Node {
        level: u8::try_from(level).unwrap_or(u8::MAX),
        prefix: u16::try_from(prefix).unwrap_or(u16::MAX),
    };
    if level > u64::from(LEAF_LEVEL) || prefix > u64::from(u16::MAX) || !node.is_valid() {
        return Err(DecodeError::Invalid {
            what: what.into(),
            reason: format!("no tree node at level {level} with prefix {prefix}"),
        });
    }
    Ok(node)
}

fn hash16(r: &mut Reader<'_>, what: &str) -> Result<[u8; 16], DecodeError> {
    r.bytes(what)?.try_into().map_err(|_| DecodeError::Invalid {
        what: what.into(),
        reason: "not 16 bytes".into(),
    })
}

/// A Reconcile message's ranges.
fn decode_ranges(
    r: &mut Reader<'_>,
    limits: &MessageLimits,
) -> Result<(Vec<RangeFingerprint>, Vec<RangeItems>), DecodeError> {
    let n = list_len(r, "reconcile fingerprints")?;
    let m_items = |n: usize, what: &str| {
        if n > MAX_RANGES {
            Err(DecodeError::TooMany {
                what: what.into(),
                count: n as u64,
                limit: MAX_RANGES as u64,
            })
        } else {
            Ok(())
        }
    };
    m_items(n, "reconcile fingerprints")?;
    let mut fingerprints = Vec::with_capacity(n);
    for _ in 0..n {
        r.array_of(4, "range fingerprint")?;
        let node = tree_node(r, "range")?;
        let fingerprint = hash16(r, "range fingerprint")?;
        let count = r.u64("range count")?;
        fingerprints.push(RangeFingerprint {
            node,
            fingerprint,
            count,
        });
    }
    let n = list_len(r, "reconcile items")?;
    m_items(n, "reconcile items")?;
    let mut items = Vec::with_capacity(n);
    let mut keys = 0usize;
    for _ in 0..n {
        r.array_of(3, "range items")?;
        let node = tree_node(r, "range")?;
        let k = list_len(r, "range items")?;
        keys += k;
        if keys > MAX_KEYS {
            return Err(DecodeError::TooMany {
                what: "reconcile items".into(),
                count: keys as u64,
                limit: MAX_KEYS as u64,
            });
        }
        let mut list = Vec::with_capacity(k);
        for _ in 0..k {
            r.array_of(2, "range item")?;
            let key = state_key(r, limits, "range item key")?;
            if !node.covers(bucket_of(&key)) {
                return Err(DecodeError::Invalid {
                    what: "range item key".into(),
                    reason: "outside its range".into(),
                });
            }
            list.push((key, hash16(r, "range item hash")?));
        }
        items.push(RangeItems { node, items: list });
    }
    disjoint(
        fingerprints
            .iter()
            .map(|f| f.node)
            .chain(items.iter().map(|i| i.node)),
    )?;
    Ok((fingerprints, items))
}

/// The ranges of one Reconcile message cover disjoint buckets: an honest side describes each
/// differing range once, by its children's fingerprints or by its entries. Overlapping ranges
/// would have the receiver read and compare the same entries once per range (a message naming
/// the root 4,096 times asked for 4,096 copies of the whole state).
fn disjoint(nodes: impl Iterator<Item = Node>) -> Result<(), DecodeError> {
    let mut spans: Vec<(u16, u16, Node)> = nodes
        .map(|n| {
            let (lo, hi) = n.buckets();
            (lo, hi, n)
        })
        .collect();
    spans.sort_unstable_by_key(|&(lo, hi, _)| (lo, hi));
    for pair in spans.windows(2) {
        let ((_, hi, a), (lo, _, b)) = (pair[0], pair[1]);
        if lo <= hi {
            return Err(DecodeError::Invalid {
                what: "reconcile ranges".into(),
                reason: format!(
                    "range {}/{:x} overlaps range {}/{:x} (each range is named once, and ranges are disjoint)",
                    a.level, a.prefix, b.level, b.prefix
                ),
            });
        }
    }
    Ok(())
}

/// `[event bytes…]`.
fn encode_events(buf: &mut Vec<u8>, events: &[EncodedEvent]) {
    let mut e = Encoder::new(&mut *buf);
    let _ = e.array(events.len() as u64);
    for ev in events {
        let _ = e.bytes(ev.bytes());
    }
}

/// Certificates (DER) by origin.
pub type Certs = Vec<(NodeId, Vec<u8>)>;

/// `[seal…], [[origin, cert]…]`.
fn encode_seals(buf: &mut Vec<u8>, seals: &[Seal], certs: &[(NodeId, Vec<u8>)]) {
    let mut e = Encoder::new(&mut *buf);
    let _ = e.array(seals.len() as u64);
    for s in seals {
        encode_seal(&mut e, s);
    }
    let _ = e.array(certs.len() as u64);
    for (origin, der) in certs {
        let _ = e
            .array(2)
            .and_then(|e| e.str(origin.as_str()))
            .and_then(|e| e.bytes(der));
    }
}

/// `[origin, seq, first, chain, root, signature]`.
fn encode_seal(e: &mut Encoder<&mut Vec<u8>>, s: &Seal) {
    let _ = e
        .array(6)
        .and_then(|e| e.str(s.origin.as_str()))
        .and_then(|e| e.u64(s.seq))
        .and_then(|e| e.u64(s.first))
        .and_then(|e| e.bytes(&s.chain))
        .and_then(|e| e.bytes(&s.root))
        .and_then(|e| e.bytes(&s.signature));
}

fn decode_seal(r: &mut Reader<'_>) -> Result<Seal, DecodeError> {
    r.array_of(6, "seal")?;
    let origin = node_id(r, "seal origin")?;
    let seq = r.u64("seal seq")?;
    let first = r.u64("seal first")?;
    if first == 0 || first > seq {
        return Err(DecodeError::Invalid {
            what: "seal first".into(),
            reason: format!("{first} is not a block's first sequence number up to {seq}"),
        });
    }
    let chain = hash32(r, "seal chain")?;
    let root = hash32(r, "seal root")?;
    let signature = r.bytes("seal signature")?;
    if signature.len() > MAX_SIGNATURE_BYTES {
        return Err(DecodeError::Invalid {
            what: "seal signature".into(),
            reason: format!(
                "{} bytes, over the limit of {MAX_SIGNATURE_BYTES}",
                signature.len()
            ),
        });
    }
    Ok(Seal {
        origin,
        seq,
        first,
        chain,
        root,
        signature: signature.to_vec(),
    })
}

fn hash32(r: &mut Reader<'_>, what: &str) -> Result<[u8; 32], DecodeError> {
    r.bytes(what)?.try_into().map_err(|_| DecodeError::Invalid {
        what: what.into(),
        reason: "not 32 bytes".into(),
    })
}

/// A snapshot page's or a repair's (`message`) proofs: exactly one per version.
fn decode_proofs(
    r: &mut Reader<'_>,
    versions: usize,
    message: &str,
) -> Result<Vec<Proof>, DecodeError> {
    let n = list_len(r, &format!("{message} proofs"))?;
    if n != versions {
        return Err(DecodeError::Invalid {
            what: format!("{message} proofs"),
            reason: format!("{n} proofs for {versions} versions"),
        });
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        r.array_of(2, "proof")?;
        let seal = r.u64("proof seal")?;
        let bytes = r.bytes("proof path")?;
        if bytes.len() % 32 != 0 || bytes.len() > 32 * MAX_PATH_HASHES {
            return Err(DecodeError::Invalid {
                what: "proof path".into(),
                reason: format!(
                    "{} bytes, not a multiple of 32 up to {}",
                    bytes.len(),
                    32 * MAX_PATH_HASHES
                ),
            });
        }
        let path = bytes
            .chunks_exact(32)
            .map(|c| {
                let mut h = [0u8; 32];
                h.copy_from_slice(c);
                h
            })
            .collect();
        out.push(Proof { seal, path });
    }
    Ok(out)
}

fn decode_seals(
    r: &mut Reader<'_>,
    limits: &MessageLimits,
    what: &str,
) -> Result<(Vec<Seal>, Certs), DecodeError> {
    let n = list_len(r, "seals")?;
    if n > limits.max_events_per_batch.max(MAX_ORIGINS) {
        return Err(DecodeError::TooMany {
            what: format!("{what} seals"),
            count: n as u64,
            limit: limits.max_events_per_batch.max(MAX_ORIGINS) as u64,
        });
    }
    let mut seals = Vec::with_capacity(n);
    for _ in 0..n {
        seals.push(decode_seal(r)?);
    }
    let n = list_len(r, "certs")?;
    if n > MAX_ORIGINS {
        return Err(DecodeError::TooMany {
            what: format!("{what} certs"),
            count: n as u64,
            limit: MAX_ORIGINS as u64,
        });
    }
    let mut certs: Certs = Vec::with_capacity(n);
    let mut per_origin: std::collections::BTreeMap<NodeId, usize> = Default::default();
    for _ in 0..n {
        r.array_of(2, "cert")?;
        let origin = node_id(r, "cert origin")?;
        let der = r.bytes("cert")?;
        if der.len() > MAX_CERT_BYTES {
            return Err(DecodeError::Invalid {
                what: "cert".into(),
                reason: format!("{} bytes, over the limit of {MAX_CERT_BYTES}", der.len()),
            });
        }
        // At most MAX_CERTS_PER_ORIGIN distinct certificates per origin are read (the first;
        // senders send those they hold): further ones are not kept, so they cost no memory
        // however long the message is queued.
        let kept = per_origin.entry(origin.clone()).or_default();
        if *kept < MAX_CERTS_PER_ORIGIN && !certs.iter().any(|(o, d)| *o == origin && d == der) {
            *kept += 1;
            certs.push((origin, der.to_vec()));
        }
    }
    Ok((seals, certs))
}

fn encode_have(e: &mut Encoder<&mut Vec<u8>>, have: &[(NodeId, u64)]) {
    let _ = e.array(have.len() as u64);
    for (node, seq) in have {
        let _ = e
            .array(2)
            .and_then(|e| e.str(node.as_str()))
            .and_then(|e| e.u64(*seq));
    }
}

/// Text of at most [`MAX_TEXT_BYTES`].
fn text<'b>(r: &mut Reader<'b>, what: &str) -> Result<&'b str, DecodeError> {
    let s = r.str(what)?;
    if s.len() > MAX_TEXT_BYTES {
        return Err(DecodeError::Invalid {
            what: what.into(),
            reason: format!("{} bytes, over the limit of {MAX_TEXT_BYTES}", s.len()),
        });
    }
    Ok(s)
}

/// Non-empty text of at most [`MAX_TEXT_BYTES`].
fn name<'b>(r: &mut Reader<'b>, what: &str) -> Result<&'b str, DecodeError> {
    let s = text(r, what)?;
    if s.is_empty() {
        return Err(DecodeError::Invalid {
            what: what.into(),
            reason: "empty".into(),
        });
    }
    Ok(s)
}

fn node_id(r: &mut Reader<'_>, what: &str) -> Result<NodeId, DecodeError> {
    NodeId::parse(r.str(what)?).map_err(|e| DecodeError::Invalid {
        what: what.into(),
        reason: e.to_string(),
    })
}

/// Errors unless `key` sorts strictly after the previous key of the list.
fn ascending<K: Ord + Clone>(
    previous: &mut Option<K>,
    key: &K,
    what: &str,
) -> Result<(), DecodeError> {
    if previous.as_ref().is_some_and(|p| p >= key) {
        return Err(DecodeError::Invalid {
            what: what.into(),
            reason: "not strictly ascending (out of order or duplicate)".into(),
        });
    }
    *previous = Some(key.clone());
    Ok(())
}

/// A list length, checked against the bytes left so nothing is allocated for a claimed length
/// the input cannot hold (every item takes at least one byte).
fn list_len(r: &mut Reader<'_>, what: &str) -> Result<usize, DecodeError> {
    let n = r.array(what)?;
    if n > r.remaining() as u64 {
        return Err(DecodeError::Malformed {
            what: what.into(),
            reason: format!("claims {n} items but only {} bytes follow", r.remaining()),
        });
    }
    Ok(n as usize)
}

fn decode_have(r: &mut Reader<'_>, what: &str) -> Result<Vec<(NodeId, u64)>, DecodeError> {
    let n = origins_len(r, what)?;
    let mut have = Vec::with_capacity(n);
    let mut previous = None;
    for _ in 0..n {
        r.array_of(2, "have entry")?;
        let node = node_id(r, "have origin")?;
        ascending(&mut previous, &node, what)?;
        have.push((node, r.u64("have seq")?));
    }
    Ok(have)
}

/// The length of a list with one item per origin: at most [`MAX_ORIGINS`].
fn origins_len(r: &mut Reader<'_>, what: &str) -> Result<usize, DecodeError> {
    bounded_len(r, what, MAX_ORIGINS)
}

/// The length of a list of at most `max` items.
fn bounded_len(r: &mut Reader<'_>, what: &str, max: usize) -> Result<usize, DecodeError> {
    let n = list_len(r, what)?;
    if n > max {
        return Err(DecodeError::TooMany {
            what: what.into(),
            count: n as u64,
            limit: max as u64,
        });
    }
    Ok(n)
}

/// `[name…]` (transforms, in the order they run).
fn names(r: &mut Reader<'_>, list: &str, item: &str) -> Result<Vec<String>, DecodeError> {
    let n = list_len(r, list)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(name(r, item)?.to_owned());
    }
    Ok(out)
}

/// `[origin…]`, strictly ascending, at most [`MAX_ORIGINS`].
fn decode_origins(r: &mut Reader<'_>, what: &str) -> Result<Vec<NodeId>, DecodeError> {
    let n = origins_len(r, what)?;
    let mut origins = Vec::with_capacity(n);
    let mut previous = None;
    for _ in 0..n {
        let node = node_id(r, what)?;
        ascending(&mut previous, &node, what)?;
        origins.push(node);
    }
    Ok(origins)
}

/// Items of this version's Hello, its type included (a later version's has these first).
const HELLO_ITEMS: u64 = 9;

/// A Hello of `items` items (after its type): its version first, refused by that alone when
/// this build does not speak it ([`DecodeError::Version`]); then this version's [`HELLO_ITEMS`], and
/// past them what a later version appended (not read: the session speaks this version).
fn decode_hello(r: &mut Reader<'_>, items: u64) -> Result<Hello, DecodeError> {
    if items < 2 {
        return Err(DecodeError::Malformed {
            what: "hello".into(),
            reason: format!("expected an array of {HELLO_ITEMS} items, found {items}"),
        });
    }
    let protocol = r.u32("hello protocol")?;
    if protocol < MIN_PROTOCOL_VERSION {
        return Err(DecodeError::Version { theirs: protocol });
    }
    if items < HELLO_ITEMS || (protocol == PROTOCOL_VERSION && items != HELLO_ITEMS) {
        return Err(DecodeError::Malformed {
            what: "hello".into(),
            reason: format!(
                "expected an array of {HELLO_ITEMS} items{}, found {items}",
                if protocol > PROTOCOL_VERSION {
                    " or more"
                } else {
                    ""
                }
            ),
        });
    }
    let node = node_id(r, "hello node")?;
    let instance = r.u64("hello instance")?;
    let n = bounded_len(r, "hello fingerprint", event::MAX_COLLECTIONS)?;
    let mut fingerprint = Vec::with_capacity(n);
    let mut previous = None;
    for _ in 0..n {
        r.array_of(5, "collection fingerprint")?;
        let name_ = r.str("fingerprint collection")?;
        check_collection_name(name_).map_err(|e| DecodeError::Invalid {
            what: "fingerprint collection".into(),
            reason: e.to_string(),
        })?;
        ascending(&mut previous, &name_, "hello fingerprint")?;
        let resolver = name(r, "fingerprint resolver")?.to_owned();
        let transforms_on_apply = names(r, "fingerprint transforms", "fingerprint transform")?;
        let p = list_len(r, "fingerprint plugins")?;
        let mut plugins = Vec::with_capacity(p);
        let mut previous_plugin = None;
        for _ in 0..p {
            r.array_of(3, "fingerprint plugin")?;
            let plugin = name(r, "fingerprint plugin name")?;
            ascending(&mut previous_plugin, &plugin, "fingerprint plugins")?;
            let hash = r.str("fingerprint plugin sha256")?;
            if hash.len() != 64 || !hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                return Err(DecodeError::Invalid {
                    what: "fingerprint plugin sha256".into(),
                    reason: "not 64 lowercase hex digits".into(),
                });
            }
            let settings = r.str("fingerprint plugin settings")?;
            if settings.len() > MAX_PLUGIN_SETTINGS_BYTES {
                return Err(DecodeError::Invalid {
                    what: "fingerprint plugin settings".into(),
                    reason: format!(
                        "{} bytes, at most {MAX_PLUGIN_SETTINGS_BYTES}",
                        settings.len()
                    ),
                });
            }
            plugins.push(PluginFingerprint {
                name: plugin.to_owned(),
                sha256: hash.to_owned(),
                settings: settings.to_owned(),
            });
        }
        let u = bounded_len(r, "fingerprint upgrades", MAX_UPGRADES)?;
        let mut upgrades: Vec<UpgradeFingerprint> = Vec::with_capacity(u);
        for _ in 0..u {
            r.array_of(3, "fingerprint upgrade")?;
            let from_ms = r.u64("fingerprint upgrade time")?;
            if upgrades.last().is_some_and(|p| p.from_ms >= from_ms) {
                return Err(DecodeError::Invalid {
                    what: "fingerprint upgrades".into(),
                    reason: "not strictly ascending by time".into(),
                });
            }
            let resolver = name(r, "fingerprint upgrade resolver")?.to_owned();
            let transforms_on_apply = names(
                r,
                "fingerprint upgrade transforms",
                "fingerprint upgrade transform",
            )?;
            upgrades.push(UpgradeFingerprint {
                from_ms,
                resolver,
                transforms_on_apply,
            });
        }
        fingerprint.push(CollectionFingerprint {
            name: name_.to_owned(),
            resolver,
            transforms_on_apply,
            plugins,
            upgrades,
        });
    }
    let have = decode_have(r, "hello have")?;
    let compacted = decode_have(r, "hello compacted")?;
    let n = bounded_len(r, "hello policy", MAX_POLICY_ENTRIES)?;
    let mut policy = Vec::with_capacity(n);
    let mut previous = None;
    for _ in 0..n {
        r.array_of(2, "policy entry")?;
        let key = name(r, "policy name")?;
        ascending(&mut previous, &key, "hello policy")?;
        policy.push((key.to_owned(), text(r, "policy value")?.to_owned()));
    }
    let your_seal = match bounded_len(r, "hello seal", 1)? {
        0 => None,
        _ => Some(decode_seal(r)?),
    };
    for _ in HELLO_ITEMS..items {
        r.skip_item("hello item of a later version")?;
    }
    r.finish()?;
    Ok(Hello {
        protocol,
        node,
        instance,
        fingerprint,
        have,
        compacted,
        policy,
        your_seal,
    })
}

/// `[event bytes…]`, each kept as a slice of `frame` when the message is one.
fn decode_events(
    r: &mut Reader<'_>,
    frame: Option<&Bytes>,
    limits: &MessageLimits,
) -> Result<Vec<EncodedEvent>, DecodeError> {
    let n = r.array("events")?;
    if n > limits.max_events_per_batch as u64 {
        return Err(DecodeError::TooMany {
            what: "events".into(),
            count: n,
            limit: limits.max_events_per_batch as u64,
        });
    }
    let mut events = Vec::with_capacity((n as usize).min(r.remaining()));
    for index in 0..n as usize {
        let bytes = r.bytes("event")?;
        events.push(
            match frame {
                Some(frame) => EncodedEvent::decode(frame.slice_ref(bytes), &limits.event),
                None => EncodedEvent::decode_slice(bytes, &limits.event),
            }
            .map_err(|source| DecodeError::Event { index, source })?,
        );
    }
    // Events keep their slices of the frame only when they are most of it: a few small events
    // in a large frame (seals, certificates, or a peer padding on purpose) would otherwise keep
    // the whole frame in memory while they wait to be applied.
    let held: usize = events.iter().map(EncodedEvent::encoded_len).sum();
    if frame.is_some_and(|f| held.saturating_mul(2) < f.len()) {
        events = events.into_iter().map(EncodedEvent::detached).collect();
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgerep_wire::{Event, Hlc, Op, Value, VersionVector};

    fn node(s: &str) -> NodeId {
        NodeId::parse(s).unwrap()
    }

    fn event(origin: &str, seq: u64) -> EncodedEvent {
        EncodedEvent::new(Event {
            format: 1,
            collection: "c".into(),
            key: b"k".to_vec(),
            op: Op::Put,
            value: Some(Value::from_canonical(vec![0x18, 42], &Default::default()).unwrap()),
            hlc: Hlc::new(1000 + seq, 0),
            origin: node(origin),
            seq,
            schema: 0,
            meta: Default::default(),
            context: VersionVector::new(),
            extra: Default::default(),
        })
    }

    /// A queue of received messages is charged what they take decoded, not their frames: an
    /// event whose causal context names many origins is a few bytes an entry on the wire and
    /// tens of bytes an entry in memory.
    #[test]
    fn a_message_is_charged_what_it_takes_decoded() {
        let mut wide = event("a", 1).into_event();
        for i in 0..1000 {
            wide.context.add(&edgerep_wire::event::Dot {
                origin: node(&format!("o{i}")),
                seq: 1,
            });
        }
        let message = Message::Events {
            events: vec![EncodedEvent::new(wide); 10],
            seals: vec![],
            certs: vec![],
        };
        let frame = message.encode().len();
        let cost = message.approx_decoded_bytes(frame);
        assert!(cost >= 10 * 1000 * 80, "{cost} for a frame of {frame}");
        assert!(cost > 5 * frame, "{cost} for a frame of {frame}");
        // Never less than the frame, whatever the message.
        for m in [
            Message::Bye {
                reason: "x".repeat(100),
            },
            Message::Prune { origins: vec![] },
        ] {
            let frame = m.encode().len();
            assert!(m.approx_decoded_bytes(frame) >= frame);
        }
    }

    #[test]
    fn events_share_a_frame_they_fill_and_copy_out_of_one_they_do_not() {
        let limits = MessageLimits::default();
        let full = Bytes::from(
            Message::Events {
                events: vec![event("a", 1), event("a", 2)],
                seals: vec![],
                certs: vec![],
            }
            .encode(),
        );
        let Message::Events { events, .. } = Message::decode_frame(&full, &limits).unwrap() else {
            panic!("an events message");
        };
        let inside = |e: &EncodedEvent, f: &Bytes| {
            let range = f.as_ptr() as usize..f.as_ptr() as usize + f.len();
            range.contains(&(e.bytes().as_ptr() as usize))
        };
        assert!(events.iter().all(|e| inside(e, &full)));
        // One small event and a large certificate: the event gets bytes of its own.
        let padded = Bytes::from(
            Message::Events {
                events: vec![event("a", 1)],
                seals: vec![],
                certs: vec![(node("a"), vec![7; 4096])],
            }
            .encode(),
        );
        let Message::Events { events, .. } = Message::decode_frame(&padded, &limits).unwrap()
        else {
            panic!("an events message");
        };
        assert_eq!(events, vec![event("a", 1)]);
        assert!(!inside(&events[0], &padded));
    }

    /// A message carrying many certificates of one origin keeps the first
    /// `MAX_CERTS_PER_ORIGIN` distinct ones only (a copy is kept once): the others cost nothing
    /// while the message waits in a queue.
    #[test]
    fn at_most_a_few_certificates_of_an_origin_are_kept() {
        let mut certs = vec![(node("b"), vec![3; 60])];
        for i in 0..10u8 {
            certs.push((node("a"), vec![10 + i; 60 + usize::from(i)]));
            certs.push((node("a"), vec![10; 60]));
        }
        let m = Message::Events {
            events: vec![event("a", 1)],
            seals: vec![],
            certs,
        };
        let Message::Events { certs, .. } = decode(&m.encode()).unwrap() else {
            panic!("not events")
        };
        let mut expected = vec![(node("b"), vec![3; 60])];
        for i in 0..MAX_CERTS_PER_ORIGIN as u8 {
            expected.push((node("a"), vec![10 + i; 60 + usize::from(i)]));
        }
        assert_eq!(certs, expected);
    }

    fn hello() -> Hello {
        Hello {
            protocol: PROTOCOL_VERSION,
            node: node("a"),
            fingerprint: vec![
                CollectionFingerprint {
                    name: "orders".into(),
                    resolver: "lww".into(),
                    transforms_on_apply: vec!["redact".into(), "audit".into()],
                    plugins: vec![
                        PluginFingerprint {
                            name: "audit".into(),
                            sha256: "ab".repeat(32),
                            settings: "fuel=10".into(),
                        },
                        PluginFingerprint {
                            name: "redact".into(),
                            sha256: "0".repeat(64),
                            settings: String::new(),
                        },
                    ],
                    upgrades: vec![],
                },
                CollectionFingerprint {
                    name: "users".into(),
                    resolver: "max".into(),
                    transforms_on_apply: vec![],
                    plugins: vec![],
                    upgrades: vec![
                        UpgradeFingerprint {
                            from_ms: 1_796_320_800_000,
                            resolver: "max-v2".into(),
                            transforms_on_apply: vec!["audit".into()],
                        },
                        UpgradeFingerprint {
                            from_ms: 1_796_320_800_001,
                            resolver: "lww".into(),
                            transforms_on_apply: vec![],
                        },
                    ],
                },
            ],
            have: vec![(node("a"), 7), (node("b"), 300), (node("c"), 70_000)],
            instance: 0xdead_beef,
            compacted: vec![(node("b"), 100)],
            policy: vec![
                ("limits.max_value_bytes".into(), "65536".into()),
                ("revoked.x".into(), "12".into()),
            ],
            your_seal: None,
        }
    }

    fn samples() -> Vec<Message> {
        vec![
            Message::Hello(hello()),
            Message::Hello(Hello {
                protocol: PROTOCOL_VERSION,
                node: node("z"),
                instance: 0,
                fingerprint: vec![],
                have: vec![],
                compacted: vec![],
                policy: vec![],
                your_seal: None,
            }),
            Message::Hello(Hello {
                have: vec![(node("z"), 9)],
                your_seal: Some(Seal {
                    origin: node("z"),
                    seq: 9,
                    first: 4,
                    chain: [3; 32],
                    root: [2; 32],
                    signature: vec![9; 64],
                }),
                ..hello()
            }),
            Message::Events {
                events: vec![event("a", 1), event("a", 2), event("b", 9)],
                seals: vec![
                    Seal {
                        origin: node("a"),
                        seq: 2,
                        first: 1,
                        chain: [7; 32],
                        root: [6; 32],
                        signature: vec![1, 2, 3],
                    },
                    Seal {
                        origin: node("b"),
                        seq: 9,
                        first: 9,
                        chain: [8; 32],
                        root: [5; 32],
                        signature: vec![],
                    },
                ],
                certs: vec![(node("a"), vec![0x30, 0x82])],
            },
            Message::Events {
                events: vec![],
                seals: vec![],
                certs: vec![],
            },
            Message::Ack {
                have: vec![(node("a"), 2), (node("b"), u64::MAX)],
                rewind: true,
            },
            Message::Ack {
                have: vec![],
                rewind: false,
            },
            Message::Bye {
                reason: "shutting down".into(),
            },
            Message::Snapshot {
                id: 3,
                page: 0,
                floors: vec![(node("b"), 7)],
                versions: vec![event("a", 4), event("b", 1)],
                proofs: vec![
                    Proof {
                        seal: 4,
                        path: vec![[3; 32], [4; 32]],
                    },
                    Proof {
                        seal: 1,
                        path: vec![],
                    },
                ],
                done: false,
                have: vec![],
                seals: vec![Seal {
                    origin: node("b"),
                    seq: 1,
                    first: 1,
                    chain: [1; 32],
                    root: [2; 32],
                    signature: vec![9; 70],
                }],
                certs: vec![(node("b"), vec![1; 60])],
            },
            Message::Snapshot {
                id: 3,
                page: 1,
                floors: vec![],
                versions: vec![],
                proofs: vec![],
                done: true,
                have: vec![(node("a"), 4), (node("b"), 9)],
                seals: vec![Seal {
                    origin: node("a"),
                    seq: 4,
                    first: 3,
                    root: [3; 32],
                    chain: [1; 32],
                    signature: vec![9; 70],
                }],
                certs: vec![(node("a"), vec![1; 600])],
            },
            Message::SnapshotAck { id: 3, page: 1 },
            Message::Prune {
                origins: vec![node("a"), node("b")],
            },
            Message::Graft { origins: vec![] },
            Message::Reconcile {
                id: 9,
                // Disjoint ranges: the level-1 node beside the key's, and the key's bucket.
                fingerprints: vec![RangeFingerprint {
                    node: Node {
                        level: 1,
                        prefix: (bucket_of(b"c\0k") >> 12) ^ 1,
                    },
                    fingerprint: [4; 16],
                    count: 1_000_000,
                }],
                items: vec![RangeItems {
                    node: Node {
                        level: LEAF_LEVEL,
                        prefix: bucket_of(b"c\0k"),
                    },
                    items: vec![(b"c\0k".to_vec(), [5; 16])],
                }],
            },
            Message::Reconcile {
                id: 9,
                fingerprints: vec![],
                items: vec![],
            },
            Message::Repair {
                id: 9,
                versions: vec![event("a", 4)],
                proofs: vec![Proof {
                    seal: 4,
                    path: vec![[1; 32]],
                }],
                seals: vec![],
                certs: vec![],
                want: vec![b"c\0k".to_vec()],
                resolutions: vec![KeyResolution {
                    state_key: b"c\0k".to_vec(),
                    versions: [2; 32],
                    resolution: [3; 32],
                    build: "ab".into(),
                }],
            },
        ]
    }

    fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
        Message::decode(bytes, &MessageLimits::default())
    }

    /// Encodes a message built by hand with minicbor.
    fn cbor(f: impl FnOnce(&mut Encoder<&mut Vec<u8>>)) -> Vec<u8> {
        let mut buf = Vec::new();
        f(&mut Encoder::new(&mut buf));
        buf
    }

    fn refused(bytes: &[u8], needle: &str) {
        match decode(bytes) {
            Ok(m) => panic!("accepted {m:?}, expected an error naming {needle:?}"),
            Err(e) => assert!(
                e.to_string().contains(needle),
                "error {e:?} ({e}) does not name {needle:?}"
            ),
        }
    }

    #[test]
    fn every_message_round_trips_byte_for_byte() {
        for m in samples() {
            let bytes = m.encode();
            assert_eq!(decode(&bytes).unwrap(), m);
            assert_eq!(decode(&bytes).unwrap().encode(), bytes);
        }
    }

    #[test]
    fn encoding_is_pinned() {
        let m = Message::Ack {
            have: vec![(node("a"), 24)],
            rewind: true,
        };
        // [2, [["a", 24]], true]
        assert_eq!(
            m.encode(),
            [0x83, 0x02, 0x81, 0x82, 0x61, b'a', 0x18, 24, 0xf5]
        );
    }

    #[test]
    fn every_truncation_is_refused_without_panic() {
        for m in samples() {
            let bytes = m.encode();
            for cut in 0..bytes.len() {
                assert!(decode(&bytes[..cut]).is_err(), "{m:?} cut at {cut}");
            }
        }
    }

    /// What a peer says of its resolutions in a Repair is checked before anything reads it.
    #[test]
    fn repair_resolutions_are_checked() {
        let repair = |r: KeyResolution| {
            Message::Repair {
                id: 1,
                versions: vec![],
                proofs: vec![],
                seals: vec![],
                certs: vec![],
                want: vec![],
                resolutions: vec![r],
            }
            .encode()
        };
        let good = KeyResolution {
            state_key: b"c\0k".to_vec(),
            versions: [1; 32],
            resolution: [2; 32],
            build: "ab".repeat(32),
        };
        assert!(decode(&repair(good.clone())).is_ok());
        refused(
            &repair(KeyResolution {
                state_key: b"no-separator".to_vec(),
                ..good.clone()
            }),
            "repair resolution key",
        );
        refused(
            &repair(KeyResolution {
                build: "x".repeat(129),
                ..good.clone()
            }),
            "repair resolution build",
        );
        // A hash of another length: re-encode by hand with 31 bytes.
        let mut short = repair(good.clone());
        let at = short
            .windows(34)
            .position(|w| w[..2] == [0x58, 32] && w[2..] == [1; 32])
            .unwrap();
        short.splice(at..at + 34, [[0x58, 31].as_slice(), &[1; 31]].concat());
        refused(&short, "repair resolution versions");
        let too_many = Message::Repair {
            id: 1,
            versions: vec![],
            proofs: vec![],
            seals: vec![],
            certs: vec![],
            want: vec![],
            resolutions: vec![good; MAX_KEYS + 1],
        }
        .encode();
        refused(&too_many, "repair resolutions");
    }

    #[test]
    fn malformed_forms_are_refused_naming_the_part() {
        refused(&[], "message");
        refused(
            &cbor(|e| drop(e.u64(1))),
            "malformed message: expected an array",
        );
        refused(&cbor(|e| drop(e.array(0))), "empty array");
        refused(&[0x9f, 0x03, 0x60, 0xff], "indefinite length");
        refused(
            &cbor(|e| drop(e.array(2).and_then(|e| e.u64(99)).and_then(|e| e.u64(0)))),
            "unknown message type 99",
        );
        refused(
            &cbor(|e| drop(e.array(2).and_then(|e| e.str("x")))),
            "message type: expected an unsigned integer, found string",
        );
        refused(
            &cbor(|e| {
                drop(
                    e.array(3)
                        .and_then(|e| e.u64(3))
                        .and_then(|e| e.str("x"))
                        .and_then(|e| e.u64(0)),
                )
            }),
            "bye: expected an array of 2 items, found 3",
        );
        refused(
            &cbor(|e| drop(e.array(2).and_then(|e| e.u64(3)).and_then(|e| e.u64(1)))),
            "bye reason: expected a text string",
        );
        // A snapshot page that is not the last may not claim a have.
        let mut page = Message::Snapshot {
            id: 1,
            page: 0,
            floors: vec![],
            versions: vec![],
            proofs: vec![],
            done: true,
            have: vec![(node("a"), 1)],
            seals: vec![],
            certs: vec![],
        }
        .encode();
        let done_at = page.len() - 9; // then [["a", 1]]: 5 bytes, and three empty lists
        assert_eq!(page[done_at], 0xf5, "the done flag");
        page[done_at] = 0xf4;
        refused(
            &page,
            "invalid snapshot have: given on a page that is not the last",
        );
        // One proof per version, each path whole hashes and not too long.
        let page = |proofs: Vec<Proof>| {
            Message::Snapshot {
                id: 1,
                page: 0,
                floors: vec![],
                versions: vec![event("a", 1)],
                proofs,
                done: false,
                have: vec![],
                seals: vec![],
                certs: vec![],
            }
            .encode()
        };
        refused(
            &page(vec![]),
            "invalid snapshot proofs: 0 proofs for 1 versions",
        );
        let proof = |hashes: usize| Proof {
            seal: 1,
            path: vec![[1; 32]; hashes],
        };
        refused(
            &page(vec![proof(1), proof(1)]),
            "invalid snapshot proofs: 2 proofs for 1 versions",
        );
        assert!(decode(&page(vec![proof(MAX_PATH_HASHES)])).is_ok());
        // A repair's are checked alike, and the refusal names the repair.
        let repair = Message::Repair {
            id: 1,
            versions: vec![event("a", 1)],
            proofs: vec![],
            seals: vec![],
            certs: vec![],
            want: vec![],
            resolutions: vec![],
        }
        .encode();
        refused(&repair, "invalid repair proofs: 0 proofs for 1 versions");
        // Reconcile ranges must be nodes of the tree, and listed keys inside their range.
        let reconcile = |node: Node, key: &[u8]| {
            Message::Reconcile {
                id: 1,
                fingerprints: vec![],
                items: vec![RangeItems {
                    node,
                    items: vec![(key.to_vec(), [0; 16])],
                }],
            }
            .encode()
        };
        refused(
            &reconcile(
                Node {
                    level: 5,
                    prefix: 0,
                },
                b"c\0k",
            ),
            "invalid range: no tree node at level 5",
        );
        refused(
            &reconcile(
                Node {
                    level: 1,
                    prefix: 16,
                },
                b"c\0k",
            ),
            "invalid range: no tree node at level 1 with prefix 16",
        );
        let bucket = bucket_of(b"c\0k");
        let elsewhere = Node {
            level: 4,
            prefix: bucket.wrapping_add(1),
        };
        refused(
            &reconcile(elsewhere, b"c\0k"),
            "range item key: outside its range",
        );
        refused(
            &reconcile(Node::ROOT, b"no separator"),
            "invalid range item key",
        );
        // Ranges overlap: named twice, or one inside another (fingerprint and items alike).
        let leaf = Node {
            level: LEAF_LEVEL,
            prefix: bucket,
        };
        let overlapping = |fingerprints: Vec<Node>, items: Vec<Node>| {
            Message::Reconcile {
                id: 1,
                fingerprints: fingerprints
                    .into_iter()
                    .map(|node| RangeFingerprint {
                        node,
                        fingerprint: [0; 16],
                        count: 1,
                    })
                    .collect(),
                items: items
                    .into_iter()
                    .map(|node| RangeItems {
                        node,
                        items: vec![],
                    })
                    .collect(),
            }
            .encode()
        };
        refused(
            &overlapping(vec![], vec![Node::ROOT, Node::ROOT]),
            "invalid reconcile ranges: range 0/0 overlaps range 0/0",
        );
        refused(
            &overlapping(vec![Node::ROOT], vec![leaf]),
            "invalid reconcile ranges: range ",
        );
        refused(
            &overlapping(vec![leaf, elsewhere, leaf], vec![]),
            "overlaps",
        );
        assert!(decode(&overlapping(vec![elsewhere], vec![leaf])).is_ok());
        assert!(
            decode(&reconcile(
                Node {
                    level: 4,
                    prefix: bucket
                },
                b"c\0k"
            ))
            .is_ok()
        );
        refused(
            &page(vec![proof(MAX_PATH_HASHES + 1)]),
            "invalid proof path",
        );
        refused(
            &cbor(|e| drop(e.array(3).and_then(|e| e.u64(5)).and_then(|e| e.str("x")))),
            "snapshot ack id: expected an unsigned integer",
        );
        let long = "x".repeat(MAX_TEXT_BYTES + 1);
        refused(
            &cbor(|e| drop(e.array(2).and_then(|e| e.u64(3)).and_then(|e| e.str(&long)))),
            "bye reason: 1025 bytes",
        );
        refused(
            &cbor(|e| {
                drop(
                    e.array(3)
                        .and_then(|e| e.u64(2))
                        .and_then(|e| e.array(0))
                        .and_then(|e| e.u64(1)),
                )
            }),
            "ack rewind: expected a boolean",
        );
        refused(
            &cbor(|e| {
                drop(
                    e.array(3)
                        .and_then(|e| e.u64(2))
                        .and_then(|e| e.array(1))
                        .and_then(|e| e.array(3)),
                )
            }),
            "have entry: expected an array of 2 items",
        );
        refused(
            &cbor(|e| {
                drop(
                    e.array(3)
                        .and_then(|e| e.u64(2))
                        .and_then(|e| e.array(1))
                        .and_then(|e| e.array(2))
                        .and_then(|e| e.str("bad id!"))
                        .and_then(|e| e.u64(1))
                        .and_then(|e| e.bool(false)),
                )
            }),
            "invalid have origin",
        );
        refused(
            &cbor(|e| {
                drop(
                    e.array(3)
                        .and_then(|e| e.u64(2))
                        .and_then(|e| e.array(1))
                        .and_then(|e| e.array(2))
                        .and_then(|e| e.str("a"))
                        .and_then(|e| e.i64(-1))
                        .and_then(|e| e.bool(false)),
                )
            }),
            "have seq: expected an unsigned integer",
        );
        refused(
            &cbor(|e| {
                drop(
                    e.array(3)
                        .and_then(|e| e.u64(2))
                        .and_then(|e| e.array(1000)),
                )
            }),
            "claims 1000 items",
        );
        // A have out of order, and one with a duplicate origin.
        for (a, b) in [("b", "a"), ("a", "a")] {
            let m = Message::Ack {
                have: vec![(node(a), 1), (node(b), 2)],
                rewind: false,
            };
            refused(&m.encode(), "ack have: not strictly ascending");
            let m = Message::Prune {
                origins: vec![node(a), node(b)],
            };
            refused(&m.encode(), "prune origins: not strictly ascending");
        }
        let m = Message::Graft {
            origins: (0..=MAX_ORIGINS)
                .map(|i| node(&format!("n{i:05}")))
                .collect(),
        };
        refused(&m.encode(), "graft origins");
        refused(
            &cbor(|e| {
                drop(
                    e.array(4)
                        .and_then(|e| e.u64(1))
                        .and_then(|e| e.array(1))
                        .and_then(|e| e.str("x")),
                )
            }),
            "malformed event: expected a byte string",
        );
        refused(
            &cbor(|e| {
                drop(
                    e.array(4)
                        .and_then(|e| e.u64(1))
                        .and_then(|e| e.array(1))
                        .and_then(|e| e.bytes(b"\xa0")),
                )
            }),
            "event 0 of the batch",
        );
        let mut m = Message::Events {
            events: vec![event("a", 1)],
            seals: vec![],
            certs: vec![],
        }
        .encode();
        m.push(0);
        refused(&m, "1 trailing bytes after the message");
    }

    #[test]
    fn hello_fields_are_checked() {
        let with = |f: &dyn Fn(&mut Hello)| {
            let mut h = hello();
            f(&mut h);
            Message::Hello(h).encode()
        };
        refused(
            &with(&|h| h.fingerprint.reverse()),
            "hello fingerprint: not strictly ascending",
        );
        refused(
            &with(&|h| h.fingerprint[0].plugins.reverse()),
            "fingerprint plugins: not strictly ascending",
        );
        refused(
            &with(&|h| h.fingerprint[0].plugins[0].sha256 = "AB".repeat(32)),
            "fingerprint plugin sha256: not 64 lowercase hex",
        );
        refused(
            &with(&|h| h.fingerprint[0].plugins[0].sha256 = "ab".into()),
            "fingerprint plugin sha256",
        );
        refused(
            &with(&|h| h.fingerprint[0].plugins[0].settings = "x".repeat(513)),
            "fingerprint plugin settings",
        );
        refused(
            &with(&|h| h.fingerprint[0].name = "bad name".into()),
            "invalid fingerprint collection",
        );
        refused(
            &with(&|h| h.fingerprint[0].resolver = String::new()),
            "fingerprint resolver: empty",
        );
        refused(
            &with(&|h| h.fingerprint[0].transforms_on_apply[0] = String::new()),
            "fingerprint transform: empty",
        );
        refused(
            &with(&|h| h.fingerprint[1].upgrades.reverse()),
            "fingerprint upgrades: not strictly ascending by time",
        );
        refused(
            &with(&|h| {
                let u = h.fingerprint[1].upgrades[0].clone();
                h.fingerprint[1].upgrades = (0..=MAX_UPGRADES as u64)
                    .map(|i| UpgradeFingerprint {
                        from_ms: i,
                        ..u.clone()
                    })
                    .collect();
            }),
            "fingerprint upgrades: 65 entries, over the limit of 64",
        );
        refused(
            &with(&|h| h.have.swap(0, 1)),
            "hello have: not strictly ascending",
        );
        refused(
            &with(&|h| {
                let f = h.fingerprint[0].clone();
                h.fingerprint = (0..=event::MAX_COLLECTIONS)
                    .map(|i| CollectionFingerprint {
                        name: format!("c{i:05}"),
                        ..f.clone()
                    })
                    .collect();
            }),
            "hello fingerprint: 4097 entries, over the limit of 4096",
        );
        // At most one seal: the receiver's, at the number `have` gives for it.
        let seal = |seq| Seal {
            origin: node("a"),
            seq,
            first: 1,
            chain: [1; 32],
            root: [2; 32],
            signature: vec![3; 64],
        };
        let mut two = with(&|h| h.your_seal = Some(seal(7)));
        let one_seal_len = {
            let mut b = Vec::new();
            encode_seal(&mut Encoder::new(&mut b), &seal(7));
            b.len()
        };
        // `[seal]` (0x81 + seal) at the end becomes `[seal, seal]`.
        let at = two.len() - one_seal_len - 1;
        assert_eq!(two[at], 0x81);
        two[at] = 0x82;
        two.extend_from_within(at + 1..);
        refused(&two, "hello seal: 2 entries, over the limit of 1");
        // A Hello of a version below the minimum is refused by its version, whatever follows
        // it (the previous version's had 8 items), with both versions named.
        let mut old = with(&|h| {
            h.your_seal = None;
            h.protocol = MIN_PROTOCOL_VERSION - 1;
        });
        assert_eq!(old[0], 0x89);
        assert_eq!(old.pop(), Some(0x80));
        old[0] = 0x88;
        match decode(&old) {
            Err(e @ DecodeError::Version { theirs }) => {
                assert_eq!(theirs, MIN_PROTOCOL_VERSION - 1);
                assert!(
                    e.to_string().contains(&format!(
                        "protocol version {theirs}, this node speaks versions {MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION}"
                    )),
                    "{e}"
                );
            }
            other => panic!("{other:?}"),
        }
        refused(
            &cbor(|e| {
                e.array(3).unwrap().u64(kind::HELLO).unwrap();
                e.u32(MIN_PROTOCOL_VERSION - 1)
                    .unwrap()
                    .str("anything")
                    .unwrap();
            }),
            "upgrade the older of the two nodes",
        );
        // This version's Hello has its 9 items exactly.
        let mut short = with(&|h| h.your_seal = None);
        assert_eq!(short.pop(), Some(0x80));
        short[0] = 0x88;
        refused(&short, "expected an array of 9 items, found 8");
        let mut long = with(&|h| h.your_seal = None);
        long[0] = 0x8a;
        long.push(0x80);
        refused(&long, "expected an array of 9 items, found 10");
        // A later version's Hello: this version's items first, then whatever it appended,
        // read past (the session speaks this version).
        let later = |extra: &[u8]| {
            let mut b = with(&|h| h.protocol = PROTOCOL_VERSION + 1);
            b[0] = 0x8a;
            b.extend_from_slice(extra);
            b
        };
        for extra in [
            &[0x80][..],
            &[0xa1, 0x61, b'x', 0x82, 0x01, 0x02][..],
            &[0x43, 1, 2, 3][..],
        ] {
            match decode(&later(extra)) {
                Ok(Message::Hello(h)) => {
                    let mut expected = hello();
                    expected.protocol = PROTOCOL_VERSION + 1;
                    assert_eq!(h, expected);
                }
                other => panic!("{other:?}"),
            }
        }
        refused(&later(&[0x82, 0x01]), "hello item of a later version");
        // What a later version appended is read past within bounds: nested at most 16 deep,
        // of definite length (an indefinite one had minicbor keep a stack: 16 bytes of memory
        // per byte of input).
        let deep: Vec<u8> = std::iter::repeat_n(0x81, 17).chain([0x01]).collect();
        refused(&later(&deep), "nested deeper than 16");
        let fine: Vec<u8> = std::iter::repeat_n(0x81, 16).chain([0x01]).collect();
        assert!(decode(&later(&fine)).is_ok());
        let indefinite: Vec<u8> = std::iter::repeat_n([0x82, 0x9f], 1000).flatten().collect();
        refused(&later(&indefinite), "hello item of a later version");
        refused(&later(&[0x9f, 0xff]), "indefinite length");
        // A later version's Hello still has this version's items first.
        let mut short = later(&[]);
        short[0] = 0x88;
        short.pop();
        refused(&short, "expected an array of 9 items or more, found 8");
        let mut later_trailing = later(&[0x80]);
        later_trailing.push(0x01);
        refused(&later_trailing, "trailing");
        refused(
            &with(&|h| h.policy.reverse()),
            "hello policy: not strictly ascending",
        );
        refused(
            &with(&|h| {
                h.have = (0..=MAX_ORIGINS)
                    .map(|i| (node(&format!("n{i:05}")), 1))
                    .collect()
            }),
            "hello have: 1025 entries, over the limit of 1024",
        );
        refused(
            &cbor(|e| {
                drop(
                    e.array(8)
                        .and_then(|e| e.u64(0))
                        .and_then(|e| e.u64(1 << 32)),
                )
            }),
            "hello protocol: 4294967296 does not fit",
        );
        refused(
            &cbor(|e| {
                drop(
                    e.array(9)
                        .and_then(|e| e.u64(0))
                        .and_then(|e| e.u32(PROTOCOL_VERSION))
                        .and_then(|e| e.str("")),
                )
            }),
            "invalid hello node",
        );
        refused(
            &cbor(|e| {
                drop(
                    e.array(4)
                        .and_then(|e| e.u64(0))
                        .and_then(|e| e.u32(PROTOCOL_VERSION)),
                )
            }),
            "hello: expected an array of 9 items, found 4",
        );
    }

    #[test]
    fn non_shortest_heads_are_refused() {
        // [3, "x"] with the type, the array length and the text length each in a longer head.
        refused(
            &[0x82, 0x18, 0x03, 0x61, b'x'],
            "message type is not in deterministic encoding",
        );
        refused(
            &[0x98, 0x02, 0x03, 0x61, b'x'],
            "message is not in deterministic encoding",
        );
        refused(
            &[0x82, 0x03, 0x78, 0x01, b'x'],
            "bye reason is not in deterministic encoding",
        );
        // An Ack whose seq 5 is written in two bytes.
        refused(
            &[0x83, 0x02, 0x81, 0x82, 0x61, b'a', 0x18, 0x05, 0xf4],
            "have seq is not in deterministic encoding",
        );
        // An event byte string (over 23 bytes) with a two-byte length.
        let ev = event("a", 1).bytes().to_vec();
        let mut bytes = vec![0x84, 0x01, 0x81, 0x59, 0x00, ev.len() as u8];
        bytes.extend_from_slice(&ev);
        bytes.extend_from_slice(&[0x80, 0x80]);
        refused(&bytes, "event is not in deterministic encoding");
        // Indefinite-length text.
        refused(
            &[0x82, 0x03, 0x7f, 0x61, b'x', 0xff],
            "bye reason: indefinite length",
        );
    }

    #[test]
    fn seal_and_certificate_fields_are_checked() {
        let with_first = |first: u64, seal_chain: Vec<u8>, signature: Vec<u8>, cert: Vec<u8>| {
            cbor(|e| {
                drop(
                    e.array(4)
                        .and_then(|e| e.u64(1))
                        .and_then(|e| e.array(0))
                        .and_then(|e| e.array(1))
                        .and_then(|e| e.array(6))
                        .and_then(|e| e.str("a"))
                        .and_then(|e| e.u64(3))
                        .and_then(|e| e.u64(first))
                        .and_then(|e| e.bytes(&seal_chain))
                        .and_then(|e| e.bytes(&[5; 32]))
                        .and_then(|e| e.bytes(&signature))
                        .and_then(|e| e.array(1))
                        .and_then(|e| e.array(2))
                        .and_then(|e| e.str("a"))
                        .and_then(|e| e.bytes(&cert)),
                )
            })
        };
        let with = |seal_chain, signature, cert| with_first(2, seal_chain, signature, cert);
        assert!(decode(&with(vec![0; 32], vec![1; 70], vec![2; 600])).is_ok());
        // A block's first event is within 1..=seq.
        refused(
            &with_first(0, vec![0; 32], vec![1; 70], vec![2; 600]),
            "invalid seal first",
        );
        refused(
            &with_first(4, vec![0; 32], vec![1; 70], vec![2; 600]),
            "invalid seal first",
        );
        refused(
            &with(vec![0; 31], vec![1; 70], vec![2; 600]),
            "seal chain: not 32 bytes",
        );
        refused(
            &with(vec![0; 32], vec![1; MAX_SIGNATURE_BYTES + 1], vec![2; 600]),
            "invalid seal signature",
        );
        refused(
            &with(vec![0; 32], vec![1; 70], vec![2; MAX_CERT_BYTES + 1]),
            "invalid cert",
        );
    }

    #[test]
    fn oversized_input_is_refused() {
        let limits = MessageLimits {
            max_frame_bytes: 100,
            max_events_per_batch: 2,
            ..MessageLimits::default()
        };
        let big = Message::Bye {
            reason: "x".repeat(200),
        }
        .encode();
        assert_eq!(
            Message::decode(&big, &limits).unwrap_err(),
            DecodeError::TooLarge {
                size: big.len(),
                limit: 100
            }
        );
        let three = Message::Events {
            events: vec![event("a", 1), event("a", 2), event("a", 3)],
            seals: vec![],
            certs: vec![],
        };
        let limits = MessageLimits {
            max_frame_bytes: 1 << 20,
            ..limits
        };
        let err = Message::decode(&three.encode(), &limits).unwrap_err();
        assert_eq!(err.to_string(), "events: 3 entries, over the limit of 2");
        // An event over the event size limit names the event.
        let limits = MessageLimits {
            event: EventLimits {
                max_event_bytes: 10,
                ..EventLimits::default()
            },
            ..MessageLimits::default()
        };
        let err = Message::decode(
            &Message::Events {
                events: vec![event("a", 1)],
                seals: vec![],
                certs: vec![],
            }
            .encode(),
            &limits,
        )
        .unwrap_err();
        assert!(
            matches!(err, DecodeError::Event { index: 0, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("too large"), "{err}");
    }

    #[test]
    fn random_bytes_never_panic() {
        // Mutations of valid messages: every single-byte change either decodes to a message that
        // re-encodes to the same bytes or is refused.
        for m in samples() {
            let bytes = m.encode();
            for i in 0..bytes.len() {
                for v in [0x00, 0x17, 0x18, 0x5f, 0x7f, 0x9f, 0xbf, 0xf5, 0xff] {
                    let mut b = bytes.clone();
                    b[i] = v;
                    if let Ok(m) = decode(&b) {
                        assert_eq!(m.encode(), b);
                    }
                }
            }
        }
    }
}
