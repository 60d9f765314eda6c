//! An event together with its canonical bytes: what the changelog stores, what messages carry,
//! what a key's versions keep, and what hashes and seals are computed over.
//!
//! Invariant: `bytes` is always [`Event::encode`] of `event`. The only ways to make an
//! [`EncodedEvent`] are encoding an event ([`EncodedEvent::new`]) and a checking decode
//! ([`EncodedEvent::decode`]), so code holding one never encodes the event again, and bytes
//! taken from storage or the network are checked exactly once, where they enter.

use std::fmt;
use std::ops::Deref;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use crate::event::{DecodeError, Event, EventLimits};
use crate::seal::{ChainHash, event_leaf};

/// An event and its canonical encoding. Cloning and moving are cheap: the parsed event, its
/// bytes and what was worked out of them are shared behind one pointer (a batch of events moves
/// from the network through the replica core and admission to the store without copying them).
#[derive(Clone)]
pub struct EncodedEvent {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Inner {
    event: Event,
    bytes: Bytes,
    /// [`event_leaf`] of `bytes`, once asked for: a receiver computes it where the event is
    /// decoded, off the thread that writes the store.
    leaf: OnceLock<ChainHash>,
    /// What a store works out of the event alone, set where the event is decoded.
    row: OnceLock<RowHint>,
}

/// What a store works out of an event alone before it writes it (see `edgerep_store`'s
/// `Store::hint`): its key's anti-entropy bucket and the hash of its state row when it is its
/// key's only version, under the store's hash rule named by `rule`. A store whose rule has
/// another tag works them out again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowHint {
    /// The tag of the hash rule `alone` was computed under.
    pub rule: u64,
    /// The bucket of the event's state key.
    pub bucket: u16,
    /// The hash of the state row holding the event alone.
    pub alone: [u8; 32],
}

impl PartialEq for EncodedEvent {
    fn eq(&self, other: &EncodedEvent) -> bool {
        // The leaf follows from the bytes, whether computed yet or not.
        self.inner.bytes == other.inner.bytes && self.inner.event == other.inner.event
    }
}

impl Eq for EncodedEvent {}

impl EncodedEvent {
    /// Encodes `event` (the one encode an event gets, at the node that wrote it).
    pub fn new(event: Event) -> EncodedEvent {
        let bytes = Bytes::from(event.encode());
        EncodedEvent::of(event, bytes)
    }

    fn of(event: Event, bytes: Bytes) -> EncodedEvent {
        EncodedEvent {
            inner: Arc::new(Inner {
                event,
                bytes,
                leaf: OnceLock::new(),
                row: OnceLock::new(),
            }),
        }
    }

    /// Decodes untrusted bytes ([`Event::decode`]: bounded, and refused unless canonical),
    /// keeping `bytes` as they are: a slice of a received frame or of a stored row is not copied.
    pub fn decode(bytes: Bytes, limits: &EventLimits) -> Result<EncodedEvent, DecodeError> {
        let event = Event::decode(&bytes, limits)?;
        Ok(EncodedEvent::of(event, bytes))
    }

    /// The event's leaf in its origin's hash chain and Merkle trees ([`event_leaf`] of its
    /// bytes), computed once.
    pub fn leaf(&self) -> ChainHash {
        *self
            .inner
            .leaf
            .get_or_init(|| event_leaf(&self.inner.bytes))
    }

    /// The store's hint, if one was set.
    pub fn row_hint(&self) -> Option<&RowHint> {
        self.inner.row.get()
    }

    /// Sets the store's hint (the first one set stays).
    pub fn set_row_hint(&self, hint: RowHint) {
        let _ = self.inner.row.set(hint);
    }

    /// [`EncodedEvent::decode`] of borrowed bytes (copied once, into the result).
    pub fn decode_slice(bytes: &[u8], limits: &EventLimits) -> Result<EncodedEvent, DecodeError> {
        EncodedEvent::decode(Bytes::copy_from_slice(bytes), limits)
    }

    /// The same event with bytes of its own: a slice of a larger buffer keeps all of that
    /// buffer alive, this copy only the event.
    pub fn detached(self) -> EncodedEvent {
        let inner = Arc::unwrap_or_clone(self.inner);
        EncodedEvent {
            inner: Arc::new(Inner {
                bytes: Bytes::copy_from_slice(&inner.bytes),
                ..inner
            }),
        }
    }

    /// The parsed event.
    pub fn event(&self) -> &Event {
        &self.inner.event
    }

    /// The canonical bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.inner.bytes
    }

    /// The canonical bytes, shared.
    pub fn shared_bytes(&self) -> Bytes {
        self.inner.bytes.clone()
    }

    /// The encoded length.
    pub fn encoded_len(&self) -> usize {
        self.inner.bytes.len()
    }

    /// The parsed event, without its bytes (copied when a clone of this one still shares it).
    pub fn into_event(self) -> Event {
        Arc::unwrap_or_clone(self.inner).event
    }
}

impl From<Event> for EncodedEvent {
    fn from(event: Event) -> EncodedEvent {
        EncodedEvent::new(event)
    }
}

impl AsRef<Event> for EncodedEvent {
    fn as_ref(&self) -> &Event {
        &self.inner.event
    }
}

impl Deref for EncodedEvent {
    type Target = Event;

    fn deref(&self) -> &Event {
        &self.inner.event
    }
}

impl fmt::Debug for EncodedEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.event.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Hlc, NodeId, Op, Value, VersionVector};

    fn event() -> Event {
        Event {
            format: 1,
            collection: "c".into(),
            key: b"k".to_vec(),
            op: Op::Put,
            value: Some(
                Value::from_json(&serde_json::json!({"a": 1}), &Default::default()).unwrap(),
            ),
            hlc: Hlc::new(5, 0),
            origin: NodeId::parse("n1").unwrap(),
            seq: 1,
            schema: 0,
            meta: Default::default(),
            context: VersionVector::new(),
            extra: Default::default(),
        }
    }

    #[test]
    fn the_bytes_are_the_encoding_and_a_decode_keeps_them_without_copying() {
        let encoded = EncodedEvent::new(event());
        assert_eq!(encoded.bytes(), event().encode().as_slice());
        let frame = Bytes::from([&[0xffu8][..], encoded.bytes(), &[0xff]].concat());
        let inner = frame.slice(1..frame.len() - 1);
        let decoded = EncodedEvent::decode(inner.clone(), &EventLimits::default()).unwrap();
        assert_eq!(decoded, encoded);
        assert_eq!(decoded.bytes().as_ptr(), inner.as_ptr());
        assert_eq!(decoded.seq, 1);
    }

    #[test]
    fn the_leaf_is_the_bytes_leaf_and_does_not_change_equality() {
        let a = EncodedEvent::new(event());
        let b = EncodedEvent::new(event());
        assert_eq!(a.leaf(), event_leaf(a.bytes()));
        assert_eq!(a, b, "one leaf computed, the other not");
        assert_eq!(a.clone().detached().leaf(), a.leaf());
    }

    #[test]
    fn a_checking_decode_refuses_what_is_not_canonical() {
        let mut bytes = event().encode();
        // The format field (1) written as a two-byte integer: valid CBOR, not the canonical form.
        assert_eq!(&bytes[1..3], &[0x00, 0x01]);
        bytes.splice(2..3, [0x18, 0x01]);
        assert_eq!(
            EncodedEvent::decode_slice(&bytes, &EventLimits::default()),
            Err(DecodeError::NonCanonical)
        );
    }
}
