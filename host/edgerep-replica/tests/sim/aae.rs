//! Anti-entropy in the simulation: faults that bookkeeping cannot see (a key lost from a
//! node's state, a version's bytes changed in place, a node whose resolver answers
//! differently), and reconciliation sessions (the real `edgerep_replica::reconcile` over the
//! model's state) that must find and repair each.
//!
//! Model of what the store keeps: a key with concurrent versions has a resolution, computed
//! from its versions by the node's resolver ("pick the last version"; a biased node picks the
//! first), or the last-writer-wins default once two nodes found they disagreed on those
//! versions. The entry hash covers the state key, the versions and the resolution, as the
//! store's does. Repair merges versions proven their origin's (the model's seals) by the
//! ordinary rule, replacing a version held with the same dot but other bytes; where both sides
//! then hold the same versions but resolve them differently, both take the default.

use std::collections::BTreeSet;

use edgerep_replica::reconcile::{self, MapTree};
use edgerep_store::{Applied, Versions};
use edgerep_wire::seal::event_leaf;
use edgerep_wire::{EncodedEvent, Op, Value};

use super::{Key, MemLog, seal_valid};

/// `collection 0x00 key`.
pub(crate) fn state_key(key: &Key) -> Vec<u8> {
    let mut out = key.0.as_bytes().to_vec();
    out.push(0);
    out.extend_from_slice(&key.1);
    out
}

fn split(state_key: &[u8]) -> Key {
    let at = state_key
        .iter()
        .position(|&b| b == 0)
        .expect("a state key has a separator");
    (
        String::from_utf8(state_key[..at].to_vec()).expect("UTF-8 collection"),
        state_key[at + 1..].to_vec(),
    )
}

fn versions_hash(v: &Versions) -> [u8; 32] {
    *blake3::hash(&v.encode()).as_bytes()
}

/// What `log` resolves `key` to (empty: a single version needs no resolution).
pub(crate) fn resolution(log: &MemLog, biased: bool, key: &Key, v: &Versions) -> Vec<u8> {
    let events = v.events();
    if events.len() < 2 {
        return Vec::new();
    }
    if log.settled.get(key) == Some(&versions_hash(v)) {
        return format!("default:{:?}", v.lww_index()).into_bytes();
    }
    let pick = if biased { 0 } else { events.len() - 1 };
    format!("plugin:{pick}").into_bytes()
}

/// A node's state as reconciliation sees it: state key -> entry hash (the store's shape: the
/// key, the versions, the resolution).
pub(crate) struct ModelTree;

impl ModelTree {
    pub(crate) fn of(log: &MemLog, biased: bool) -> MapTree {
        MapTree(
            log.state
                .iter()
                .map(|(key, v)| {
                    let sk = state_key(key);
                    let mut h = blake3::Hasher::new();
                    h.update(&sk);
                    h.update(&v.encode());
                    h.update(&resolution(log, biased, key, v));
                    let mut out = [0u8; 16];
                    out.copy_from_slice(&h.finalize().as_bytes()[..16]);
                    (sk, out)
                })
                .collect(),
        )
    }
}

/// One session between `a` (opening) and `b`: the state keys found different, and the
/// messages it took.
pub(crate) fn session(a: &MapTree, b: &MapTree) -> Result<(BTreeSet<Vec<u8>>, u64), String> {
    let mut keys = BTreeSet::new();
    let mut step = reconcile::open(a).map_err(|e| e.to_string())?;
    let mut messages = 1;
    let mut turn_b = true;
    loop {
        let me = if turn_b { b } else { a };
        let next = reconcile::answer(me, &step.fingerprints, &step.items, messages)
            .map_err(|e| e.to_string())?;
        keys.extend(next.send.iter().cloned());
        keys.extend(next.want.iter().cloned());
        if !step.has_ranges() {
            break;
        }
        messages += 1;
        if messages > 64 {
            return Err("a reconciliation session did not end within 64 messages".into());
        }
        step = next;
        turn_b = !turn_b;
    }
    Ok((keys, messages))
}

/// Whether `v`, as `log` holds it, is its origin's event (the model's stand-in for a proof:
/// the seal `log` holds for it names its leaf and verifies).
fn proven(log: &MemLog, v: &EncodedEvent) -> bool {
    log.seals
        .get(&(v.origin.clone(), v.seq))
        .is_some_and(|s| s.root == event_leaf(v.bytes()) && seal_valid(s))
}

/// What repairing one key did.
#[derive(Default)]
pub(crate) struct Repaired {
    /// Versions merged that the receiver's have covered (drift).
    pub(crate) drift: u64,
    /// Keys both sides moved to the default after disagreeing.
    pub(crate) disagreements: u64,
}

/// Repairs `key` between `a` and `b`: each merges the other's proven versions it lacks (those
/// its have covers: the rest is in flight), then, holding the same versions, they compare
/// resolutions.
pub(crate) fn repair(
    a: &mut MemLog,
    a_biased: bool,
    b: &mut MemLog,
    b_biased: bool,
    state_key: &[u8],
) -> Repaired {
    let key = split(state_key);
    let mut out = Repaired::default();
    let from_a: Vec<EncodedEvent> = sendable(a, &key);
    let from_b: Vec<EncodedEvent> = sendable(b, &key);
    out.drift += merge(b, &key, from_a);
    out.drift += merge(a, &key, from_b);
    let (va, vb) = (a.state.get(&key).cloned(), b.state.get(&key).cloned());
    if let (Some(va), Some(vb)) = (va, vb)
        && va.encode() == vb.encode()
        && resolution(a, a_biased, &key, &va) != resolution(b, b_biased, &key, &vb)
    {
        let h = versions_hash(&va);
        a.settled.insert(key.clone(), h);
        b.settled.insert(key, h);
        out.disagreements += 1;
    }
    out
}

/// `log`'s versions of `key`, as their origins wrote them, that it can prove.
fn sendable(log: &MemLog, key: &Key) -> Vec<EncodedEvent> {
    log.state
        .get(key)
        .map(|v| v.events().iter().filter_map(|e| log.provable(e)).collect())
        .unwrap_or_default()
}

/// Merges `versions` into `to`'s versions of `key`; returns how many changed it and were
/// covered by its have.
fn merge(to: &mut MemLog, key: &Key, versions: Vec<EncodedEvent>) -> u64 {
    let mut drift = 0;
    for v in versions {
        if to.seq(&v.origin) < v.seq {
            continue;
        }
        let entry = to.state.entry(key.clone()).or_default();
        entry.drop_other_bytes(&v);
        if entry.apply(v) == Applied::Added {
            drift += 1;
        }
    }
    drift
}

/// Damage behind the bookkeeping's back: removes `key` from `log`'s state, or changes one
/// version's value in place (same origin and sequence number). Returns what it did.
pub(crate) fn damage(log: &mut MemLog, key: &Key, flip: bool) -> &'static str {
    if !flip {
        log.state.remove(key);
        return "lost";
    }
    let Some(v) = log.state.get_mut(key) else {
        return "nothing";
    };
    let mut e = v.events()[0].clone().into_event();
    e.op = Op::Put;
    e.value = Some(Value::from_json_str("666", &Default::default()).expect("a JSON number"));
    let e = EncodedEvent::new(e);
    v.drop_other_bytes(&e);
    v.apply(e);
    "flipped"
}

/// `log`'s versions and resolution of a state key, for failure messages.
pub(crate) fn describe(log: &MemLog, biased: bool, state_key: &[u8]) -> String {
    let key = split(state_key);
    match log.state.get(&key) {
        None => "absent".into(),
        Some(v) => format!(
            "{:?} resolved {:?}",
            v.events()
                .iter()
                .map(|e| format!(
                    "{}:{} ctx {:?} proven {}",
                    e.origin,
                    e.seq,
                    e.context,
                    proven(log, e)
                ))
                .collect::<Vec<_>>(),
            String::from_utf8_lossy(&resolution(log, biased, &key, v))
        ),
    }
}
