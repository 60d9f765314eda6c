//! What a connection's reader works out of a peer's event before the committer writes it
//! (`Store::hint`: its key's bucket, the hash of its row when it is its key's only version)
//! leaves the store exactly as working it out in the writer does: the same digest, the same
//! anti-entropy sums, a state that verifies. Covered: new keys, writes that supersede a key's
//! version, concurrent versions (two in a row: the hint must not be taken), both hash rules, and
//! an event hinted under another rule (events are shared between stores in one process).

use std::collections::{BTreeMap, BTreeSet};

use edgerep_store::aae::Node;
use edgerep_store::{HashRule, LocalWrite, Received, Store, StoreWriter, Sync};
use edgerep_wire::event::EventLimits;
use edgerep_wire::{HlcClock, NodeId, Value};

fn node(id: &str) -> NodeId {
    NodeId::parse(id).unwrap()
}

fn open(dir: &std::path::Path, id: &str, rule: &HashRule) -> StoreWriter {
    let (store, _) = Store::open_with_rule(
        &dir.join(format!("{id}.redb")),
        &node(id),
        EventLimits::default(),
        rule.clone(),
    )
    .unwrap();
    StoreWriter::new(store)
}

fn writes(keys: std::ops::Range<usize>, v: i64) -> Vec<LocalWrite> {
    keys.map(|i| LocalWrite {
        collection: "c".into(),
        key: format!("k{i}").into_bytes(),
        value: Some(Value::from_json(&serde_json::json!({ "v": v }), &Default::default()).unwrap()),
        schema: 0,
        meta: BTreeMap::new(),
        context: None,
    })
    .collect()
}

/// Applies every event of `origin` that `from` holds to `to`, hinted or not.
fn ship(from: &StoreWriter, to: &StoreWriter, origin: &str, hinted: bool) {
    let held = from.status().unwrap().origins[&node(origin)];
    let events = from.changelog(origin, 0, usize::MAX).unwrap();
    let seals = from.seals(&node(origin), 0, held).unwrap();
    let received = events
        .into_iter()
        .map(|e| {
            if hinted {
                to.hint(&e);
            }
            Received::as_received(e)
        })
        .collect();
    let mut clock = HlcClock::new(Default::default(), 60_000);
    to.apply_sealed(received, &seals, &[], &[], Sync::Immediate, &mut clock, 1)
        .unwrap();
}

fn same_with_and_without_hints(rule: HashRule) {
    let dir = tempfile::tempdir().unwrap();
    let (a, c) = (open(dir.path(), "a", &rule), open(dir.path(), "c", &rule));
    let mut clock = HlcClock::new(Default::default(), 60_000);
    // a: new keys, then writes superseding ten of them; c: keys of its own and, concurrently
    // with a's, ten of a's (those end up with two versions on the receivers).
    a.commit_local(writes(0..50, 1), &mut clock, 1).unwrap();
    a.commit_local(writes(0..10, 2), &mut clock, 2).unwrap();
    c.commit_local(writes(40..70, 3), &mut clock, 3).unwrap();
    let (hinted, plain) = (open(dir.path(), "b1", &rule), open(dir.path(), "b2", &rule));
    for (store, hints) in [(&hinted, true), (&plain, false)] {
        ship(&a, store, "a", hints);
        ship(&c, store, "c", hints);
    }
    let (h, p) = (hinted.status().unwrap(), plain.status().unwrap());
    assert_eq!(h.state_entries, 70);
    assert_eq!(h.digest, p.digest, "the same digest");
    assert_eq!(
        hinted.verify().unwrap(),
        Ok(()),
        "the digest is the state's"
    );
    let mut todo = vec![Node::ROOT];
    let mut compared = BTreeSet::new();
    while let Some(n) = todo.pop() {
        assert_eq!(
            hinted.aae_fingerprint(n).unwrap(),
            plain.aae_fingerprint(n).unwrap(),
            "anti-entropy sums of {n:?}"
        );
        compared.insert(n);
        if n.level < 2 {
            todo.extend(n.children());
        }
    }
    assert_eq!(compared.len(), 1 + 16 + 256);
}

#[test]
fn hints_leave_the_state_as_the_writer_alone_does() {
    same_with_and_without_hints(HashRule::default());
}

#[test]
fn hints_leave_the_state_as_the_writer_alone_does_when_rows_hash_on_their_versions() {
    same_with_and_without_hints(HashRule::versions_only(BTreeSet::from(["c".to_owned()])));
}

/// A hint computed by a store with another hash rule (a clone of the event that reached
/// another store of the process first) is not taken.
#[test]
fn a_hint_under_another_rule_is_worked_out_again() {
    let dir = tempfile::tempdir().unwrap();
    let plain_rule = HashRule::default();
    let other_rule = HashRule::versions_only(BTreeSet::from(["c".to_owned()]));
    let a = open(dir.path(), "a", &plain_rule);
    let mut clock = HlcClock::new(Default::default(), 60_000);
    a.commit_local(writes(0..20, 1), &mut clock, 1).unwrap();
    let other = open(dir.path(), "x", &other_rule);
    let (hinted, plain) = (
        open(dir.path(), "b1", &plain_rule),
        open(dir.path(), "b2", &plain_rule),
    );
    let seals = a.seals(&node("a"), 0, 20).unwrap();
    let events = a.changelog("a", 0, usize::MAX).unwrap();
    for e in &events {
        other.hint(e);
        hinted.hint(e);
    }
    assert_ne!(plain_rule.tag(), other_rule.tag());
    assert_eq!(
        events[0].row_hint().unwrap().rule,
        other_rule.tag(),
        "first hint stays"
    );
    let mut clock = HlcClock::new(Default::default(), 60_000);
    for store in [&hinted, &plain] {
        let received = events.iter().cloned().map(Received::as_received).collect();
        store
            .apply_sealed(received, &seals, &[], &[], Sync::Immediate, &mut clock, 1)
            .unwrap();
    }
    assert_eq!(
        hinted.status().unwrap().digest,
        plain.status().unwrap().digest
    );
    assert_eq!(hinted.verify().unwrap(), Ok(()));
}
