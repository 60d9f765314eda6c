//! The versions of one key: the events that no other event of that key supersedes.
//!
//! Invariant: applying the same set of events in any order, with any duplicates, gives the same
//! versions (the maximal elements under "supersedes": the context covers the dot, or a later
//! event of the same origin), sorted by dot, so every node that has seen the same events stores
//! the same bytes. A key holds at most one version per origin.

use edgerep_wire::event::{DecodeError, Dot, EventLimits};
use edgerep_wire::{EncodedEvent, Op, Value, VersionVector};
use minicbor::{Decoder, Encoder};

/// What applying one event did to a key's versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The event is now one of the key's versions (replacing those it supersedes).
    Added,
    /// The key already holds this exact event: nothing changed.
    Duplicate,
    /// A version the key holds already supersedes the event: nothing changed.
    Obsolete,
}

/// The current versions of one key, sorted by dot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Versions(Vec<EncodedEvent>);

impl Versions {
    /// No versions (a key never written).
    pub fn new() -> Versions {
        Versions::default()
    }

    /// The versions, sorted by dot.
    pub fn events(&self) -> &[EncodedEvent] {
        &self.0
    }

    /// Whether the key has no versions.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Applies one event: it replaces every version it supersedes, unless it is already held or
    /// already superseded.
    pub fn apply(&mut self, event: EncodedEvent) -> Applied {
        let dot = event.dot();
        if self
            .0
            .iter()
            .any(|v| v.origin == event.origin && v.seq == event.seq)
        {
            return Applied::Duplicate;
        }
        if self.0.iter().any(|v| supersedes(v, &event)) {
            return Applied::Obsolete;
        }
        self.0.retain(|v| !supersedes(&event, v));
        let at = self
            .0
            .binary_search_by(|v| (&v.origin, v.seq).cmp(&(&dot.origin, dot.seq)))
            .unwrap_or_else(|i| i);
        self.0.insert(at, event);
        Applied::Added
    }

    /// Drops a version with `event`'s origin and sequence number but other bytes; returns
    /// whether there was one.
    pub fn drop_other_bytes(&mut self, event: &EncodedEvent) -> bool {
        let before = self.0.len();
        self.0
            .retain(|v| !(v.origin == event.origin && v.seq == event.seq && v != event));
        self.0.len() != before
    }

    /// The causal context for a new write that supersedes every current version.
    pub fn context(&self) -> VersionVector {
        let mut vv = VersionVector::new();
        for v in &self.0 {
            vv.join(&v.context);
            vv.add(&v.dot());
        }
        vv
    }

    /// The built-in resolution, last writer wins: the version with the highest hybrid clock
    /// timestamp, ties broken by the higher origin id. `None` when there are no versions.
    pub fn lww_winner(&self) -> Option<&EncodedEvent> {
        self.lww_index().map(|i| &self.0[i])
    }

    /// The position of [`Versions::lww_winner`] among the versions.
    pub fn lww_index(&self) -> Option<usize> {
        self.0
            .iter()
            .enumerate()
            .max_by(|(_, a), (_, b)| (a.hlc, &a.origin).cmp(&(b.hlc, &b.origin)))
            .map(|(i, _)| i)
    }

    /// The key's value under last-writer-wins: `None` if absent or the winner is a delete.
    pub fn lww_value(&self) -> Option<&Value> {
        self.lww_winner()
            .filter(|e| e.op == Op::Put)
            .and_then(|e| e.value.as_ref())
    }

    /// Deterministic encoding: a CBOR array of the events' canonical bytes (byte strings), by
    /// dot. The events are not encoded again: their bytes are copied.
    pub fn encode(&self) -> Vec<u8> {
        let len: usize = self.0.iter().map(|e| e.encoded_len() + 9).sum();
        let mut buf = Vec::with_capacity(len + 9);
        let mut e = Encoder::new(&mut buf);
        // Writing into a Vec cannot fail.
        let _ = e.array(self.0.len() as u64);
        for event in &self.0 {
            let _ = e.bytes(event.bytes());
        }
        buf
    }

    /// The encoding of versions holding exactly one event, from that event's encoding (saves
    /// re-encoding the event on the write path).
    pub fn encode_single(event: &[u8]) -> Vec<u8> {
        let mut buf = Vec::with_capacity(event.len() + 10);
        let mut e = Encoder::new(&mut buf);
        // Writing into a Vec cannot fail.
        let _ = e.array(1).and_then(|e| e.bytes(event));
        buf
    }

    /// Decodes what [`Versions::encode`] wrote.
    pub fn decode(bytes: &[u8], limits: &EventLimits) -> Result<Versions, DecodeError> {
        let mut d = Decoder::new(bytes);
        let n = d
            .array()?
            .ok_or_else(|| DecodeError::Malformed("indefinite-length versions".into()))?;
        let mut events = Vec::new();
        for _ in 0..n {
            events.push(EncodedEvent::decode_slice(d.bytes()?, limits)?);
        }
        Ok(Versions(events))
    }

    /// The dots of the versions.
    pub fn dots(&self) -> impl Iterator<Item = Dot> + '_ {
        self.0.iter().map(|e| e.dot())
    }
}

/// Whether `later` supersedes `earlier` (two events of one key): its causal context covers
/// `earlier`, or both are of one origin and `later` came after. For honest events applied in
/// causal order (what the store's admission gives: an event waits for what its context names,
/// and an origin's events are stored in order) the second clause changes nothing: an origin's
/// earlier write to the key is covered by its later one's context, or was already superseded
/// by a version that context covers (`write.rs` builds local contexts so). It bounds what a
/// peer holding a valid certificate can do with contexts that leave its own earlier writes
/// out: the key holds one version per origin at most, not one per event it sent (a row growing
/// without bound, re-encoded at every write, soon too large for any message that could repair
/// it). Rows an older build let grow so are left as they are until the key is written again.
fn supersedes(later: &EncodedEvent, earlier: &EncodedEvent) -> bool {
    later.context.covers(&earlier.dot())
        || (later.origin == earlier.origin && later.seq > earlier.seq)
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgerep_wire::{Event, Hlc, NodeId};

    fn ev(origin: &str, seq: u64, hlc: u64, ctx: &[(&str, u64)], value: i64) -> EncodedEvent {
        let mut context = VersionVector::new();
        for (o, s) in ctx {
            context.add(&Dot {
                origin: NodeId::parse(o).unwrap(),
                seq: *s,
            });
        }
        EncodedEvent::new(Event {
            format: 1,
            collection: "c".into(),
            key: b"k".to_vec(),
            op: Op::Put,
            value: Some(Value::from_json(&serde_json::json!(value), &Default::default()).unwrap()),
            hlc: Hlc::new(hlc, 0),
            origin: NodeId::parse(origin).unwrap(),
            seq,
            schema: 0,
            meta: Default::default(),
            context,
            extra: Default::default(),
        })
    }

    #[test]
    fn successive_writes_replace_concurrent_writes_join() {
        let a1 = ev("a", 1, 10, &[], 1);
        let b1 = ev("b", 1, 11, &[], 2); // concurrent with a1
        let a2 = ev("a", 2, 12, &[("a", 1), ("b", 1)], 3); // saw both
        let mut v = Versions::new();
        assert_eq!(v.apply(a1.clone()), Applied::Added);
        assert_eq!(v.apply(b1.clone()), Applied::Added);
        assert_eq!(v.events().len(), 2);
        assert_eq!(v.lww_winner().unwrap().origin.as_str(), "b");
        assert_eq!(v.apply(a2.clone()), Applied::Added);
        assert_eq!(v.events(), std::slice::from_ref(&a2));
        assert_eq!(v.apply(b1), Applied::Obsolete);
        assert_eq!(v.apply(a2), Applied::Duplicate);
    }

    /// A peer whose events leave its own earlier writes out of their contexts: the key keeps
    /// its latest version from that origin only, in any order, beside other origins' versions.
    #[test]
    fn an_origin_holds_one_version_of_a_key_whatever_its_contexts_say() {
        let events: Vec<EncodedEvent> = (1..=50)
            .map(|seq| ev("evil", seq, 100 + seq, &[], seq as i64))
            .chain([ev("b", 1, 11, &[], -1)])
            .collect();
        let mut forward = Versions::new();
        for e in &events {
            forward.apply(e.clone());
        }
        let mut backward = Versions::new();
        for e in events.iter().rev() {
            backward.apply(e.clone());
        }
        let dots: Vec<(String, u64)> = forward
            .events()
            .iter()
            .map(|e| (e.origin.as_str().to_owned(), e.seq))
            .collect();
        assert_eq!(dots, [("b".to_owned(), 1), ("evil".to_owned(), 50)]);
        assert_eq!(forward.encode(), backward.encode());
        assert_eq!(forward.apply(events[3].clone()), Applied::Obsolete);
    }

    #[test]
    fn any_order_gives_same_versions_and_bytes() {
        let events = [
            ev("a", 1, 10, &[], 1),
            ev("b", 1, 11, &[], 2),
            ev("c", 1, 9, &[("a", 1)], 3),
            ev("a", 2, 12, &[("a", 1)], 4),
            ev("b", 2, 13, &[("b", 1), ("a", 1)], 5),
        ];
        let mut reference: Option<Vec<u8>> = None;
        // Every permutation of 5 events, each applied twice.
        let mut idx: Vec<usize> = (0..events.len()).collect();
        permute(&mut idx, 0, &mut |order| {
            let mut v = Versions::new();
            for &i in order.iter().chain(order.iter().rev()) {
                v.apply(events[i].clone());
            }
            let bytes = v.encode();
            match &reference {
                None => reference = Some(bytes),
                Some(r) => assert_eq!(r, &bytes, "order {order:?}"),
            }
        });
        let v = Versions::decode(reference.as_ref().unwrap(), &Default::default()).unwrap();
        let dots: Vec<_> = v.dots().map(|d| (d.origin.to_string(), d.seq)).collect();
        assert_eq!(dots, [("a".into(), 2), ("b".into(), 2), ("c".into(), 1)]);
    }

    fn permute(v: &mut Vec<usize>, k: usize, f: &mut impl FnMut(&[usize])) {
        if k == v.len() {
            f(v);
            return;
        }
        for i in k..v.len() {
            v.swap(k, i);
            permute(v, k + 1, f);
            v.swap(k, i);
        }
    }

    #[test]
    fn encode_single_matches_encode() {
        let e = ev("a", 1, 10, &[], 1);
        let mut v = Versions::new();
        v.apply(e.clone());
        assert_eq!(Versions::encode_single(e.bytes()), v.encode());
    }

    #[test]
    fn context_of_new_write_supersedes_all_versions() {
        let mut v = Versions::new();
        v.apply(ev("a", 1, 10, &[], 1));
        v.apply(ev("b", 4, 11, &[("z", 9)], 2));
        let ctx = v.context();
        let got: Vec<_> = ctx.iter().map(|(o, s)| (o.to_string(), s)).collect();
        assert_eq!(got, [("a".into(), 1), ("b".into(), 4), ("z".into(), 9)]);
    }
}
