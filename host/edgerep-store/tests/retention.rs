//! Retention: compaction of the changelog, and state snapshots for peers that need compacted
//! events (a snapshot merged into a store gives the state the events behind it give).

use std::collections::BTreeMap;

use edgerep_store::{LocalWrite, StoreError, StoreWriter, Sync};
use edgerep_wire::event::EventLimits;
use edgerep_wire::{HlcClock, NodeId, Value, VersionVector};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redb::backends::InMemoryBackend;

fn store(id: &str) -> StoreWriter {
    let node = NodeId::parse(id).unwrap();
    StoreWriter::open_with_backend(
        InMemoryBackend::new(),
        "memory",
        &node,
        EventLimits::default(),
    )
    .unwrap()
    .0
}

fn write(store: &StoreWriter, clock: &mut HlcClock, at: u64, keys: &[(&str, i64)]) {
    let writes = keys
        .iter()
        .map(|(k, n)| LocalWrite {
            collection: "c".into(),
            key: k.as_bytes().to_vec(),
            value: (*n >= 0)
                .then(|| Value::from_json(&serde_json::json!(n), &Default::default()).unwrap()),
            schema: 0,
            meta: BTreeMap::new(),
            context: None,
        })
        .collect();
    store.commit_local(writes, clock, at).unwrap();
}

fn clock() -> HlcClock {
    HlcClock::new(Default::default(), 60_000)
}

fn held(store: &StoreWriter, origin: &str) -> u64 {
    store
        .status()
        .unwrap()
        .origins
        .get(origin)
        .copied()
        .unwrap_or(0)
}

/// Sends `to` the events of `origin` that `from` holds and `to` lacks.
fn ship(from: &StoreWriter, to: &StoreWriter, origin: &str) {
    let events = from
        .changelog(origin, held(to, origin), usize::MAX)
        .unwrap();
    to.apply_events(events).unwrap();
}

fn assert_verified(store: &StoreWriter) {
    assert_eq!(
        store.verify().unwrap(),
        Ok(()),
        "verify of {}",
        store.node()
    );
}

/// Merges `from`'s whole state into `to`, in pages of at most `page_events` versions.
fn install_all(from: &StoreWriter, to: &StoreWriter, page_events: usize) -> usize {
    let have = from.status().unwrap().origins;
    let mut after: Option<edgerep_wire::StateCursor> = None;
    let mut pages = 0;
    loop {
        let page = from
            .state_page(after.as_ref(), page_events, usize::MAX)
            .unwrap();
        assert!(!page.versions.is_empty() || page.next.is_none());
        pages += 1;
        let last = page.next.is_none();
        to.install_snapshot(page.versions, last.then_some(&have), None, Sync::Immediate)
            .unwrap();
        if last {
            return pages;
        }
        after = page.next;
    }
}

#[test]
fn compaction_removes_what_is_asked_and_reads_below_it_say_so() {
    let (a, b) = (store("a"), store("b"));
    let (mut ca, mut cb) = (clock(), clock());
    for i in 0..3 {
        write(
            &a,
            &mut ca,
            1000 + i,
            &[("k1", i as i64), ("k2", 1), ("k3", 2), ("k4", 3), ("k5", 4)],
        );
        write(&b, &mut cb, 1000 + i, &[("k1", 10 + i as i64), ("k6", 1)]);
        ship(&b, &a, "b");
    }
    let before = a.status().unwrap();
    assert_eq!(
        (before.origins["a"], before.origins["b"], before.feed_last),
        (15, 6, 21)
    );

    // At most 4 entries per call, but compaction removes whole blocks (a block is one commit
    // here, 5 events of a or 2 of b): the first call removes a's first block alone.
    let c = a
        .compact(
            &BTreeMap::from([
                (NodeId::parse("a").unwrap(), 12),
                (NodeId::parse("b").unwrap(), 4),
            ]),
            4,
            Sync::Immediate,
        )
        .unwrap();
    assert_eq!(
        (c.removed, c.compacted.clone()),
        (5, BTreeMap::from([(NodeId::parse("a").unwrap(), 5)]))
    );
    assert!(c.more, "a's block 6..=10 and b's are within the floors");
    // A floor inside a block stops before the block (a: 12 is inside 11..=15).
    let c = a
        .compact(
            &BTreeMap::from([
                (NodeId::parse("a").unwrap(), 12),
                (NodeId::parse("b").unwrap(), 4),
                (NodeId::parse("z").unwrap(), 9),
            ]),
            100,
            Sync::Immediate,
        )
        .unwrap();
    assert_eq!(c.removed, 5 + 4);
    assert!(
        !c.more,
        "the floors are reached (a's next block ends past 12)"
    );
    assert_eq!(
        c.compacted,
        BTreeMap::from([
            (NodeId::parse("a").unwrap(), 10),
            (NodeId::parse("b").unwrap(), 4)
        ]),
        "whole blocks, capped at what is held"
    );
    assert_verified(&a);

    let after = a.status().unwrap();
    assert_eq!(
        after.digest, before.digest,
        "compaction leaves the state alone"
    );
    assert_eq!(after.compacted, c.compacted);
    match a.changelog("a", 9, 10) {
        Err(StoreError::ChangelogCompacted { origin, floor }) => {
            assert_eq!((origin.as_str(), floor), ("a", 10))
        }
        other => panic!("expected ChangelogCompacted, got {other:?}"),
    }
    let rest: Vec<u64> = a
        .changelog("a", 10, 10)
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(rest, vec![11, 12, 13, 14, 15]);
    // Feed: [a1-5][b1-2][a6-10][b3-4][a11-15][b5-6] at positions 1..=21; a up to 10 and b up
    // to 4 are gone, so positions up to 14 (b4) can no longer be read.
    assert_eq!(after.feed_floor, 14);
    assert!(matches!(
        a.feed(13, 10),
        Err(StoreError::FeedCompacted { floor: 14 })
    ));
    let feed: Vec<(u64, String, u64)> = a
        .feed(14, 10)
        .unwrap()
        .into_iter()
        .map(|(p, e)| (p, e.origin.to_string(), e.seq))
        .collect();
    let want = [
        (15, "a", 11),
        (16, "a", 12),
        (17, "a", 13),
        (18, "a", 14),
        (19, "a", 15),
        (20, "b", 5),
        (21, "b", 6),
    ];
    assert_eq!(feed, want.map(|(p, o, s)| (p, o.to_string(), s)));

    // New events continue the changelog above the floor.
    write(&a, &mut ca, 2000, &[("k9", 9)]);
    assert_eq!(a.changelog("a", 12, 10).unwrap().last().unwrap().seq, 16);
    assert_verified(&a);
}

/// Three origins write overlapping keys (concurrent versions, deletes), partly seeing each
/// other's writes. A store that got every event, compacted its whole changelog, is the
/// snapshot's sender; a store that got only some events merges the snapshot in pages and must
/// hold the same state, byte for byte (equal digests), then carry on with events.
#[test]
fn a_snapshot_gives_the_state_the_events_give() {
    for seed in 0..20u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let names = ["a", "b", "c"];
        let stores: Vec<StoreWriter> = names.iter().map(|n| store(n)).collect();
        let mut clocks = (0..3).map(|_| clock()).collect::<Vec<_>>();
        for round in 0..30u64 {
            let i = rng.random_range(0..3);
            let keys: Vec<(String, i64)> = (0..rng.random_range(1..4))
                .map(|_| {
                    let n = rng.random_range(-1..100);
                    (format!("k{}", rng.random_range(0..8)), n)
                })
                .collect();
            let keys: Vec<(&str, i64)> = keys.iter().map(|(k, n)| (k.as_str(), *n)).collect();
            write(&stores[i], &mut clocks[i], 1000 + round, &keys);
            // Now and then a node catches up with another origin.
            if rng.random_bool(0.4) {
                let (from, to) = (rng.random_range(0..3), rng.random_range(0..3));
                if from != to {
                    ship(&stores[from], &stores[to], names[from]);
                }
            }
        }
        // The sender holds everything and keeps none of its changelog.
        let sender = store("s");
        for (i, n) in names.iter().enumerate() {
            ship(&stores[i], &sender, n);
        }
        let have = sender.status().unwrap().origins;
        sender.compact(&have, u64::MAX, Sync::Immediate).unwrap();
        assert_verified(&sender);

        // c has all of its own events and some of the others': it merges the snapshot.
        let c = &stores[2];
        let before = c.status().unwrap().origins;
        let watched_to = c.status().unwrap().feed_last;
        let pages = install_all(&sender, c, 1 + seed as usize % 4);
        assert!(
            pages >= 2,
            "seed {seed}: pages of few versions make several pages"
        );
        let (cs, ss) = (c.status().unwrap(), sender.status().unwrap());
        assert_eq!(
            cs.digest, ss.digest,
            "seed {seed}: snapshot state equals event state"
        );
        assert_eq!(cs.origins, ss.origins, "seed {seed}");
        assert_verified(c);
        for origin in ["a", "b"] {
            let (had, sent) = (before.get(origin).copied().unwrap_or(0), ss.origins[origin]);
            if had < sent {
                // c skipped events it never got: its changelog starts after the snapshot.
                assert_eq!(cs.compacted.get(origin), Some(&sent), "seed {seed}");
                assert!(matches!(
                    c.changelog(origin, sent - 1, 1),
                    Err(StoreError::ChangelogCompacted { .. })
                ));
            } else {
                assert_eq!(cs.compacted.get(origin), None, "seed {seed}");
                assert_eq!(
                    c.changelog(origin, 0, usize::MAX).unwrap().len() as u64,
                    had
                );
            }
        }
        assert!(
            cs.feed_floor == cs.feed_last,
            "seed {seed}: watchers must start over"
        );
        // Even one that had read the whole feed (its cursor at the end before the snapshot):
        // told so, not left waiting with changes it will never see.
        assert!(
            matches!(
                c.feed(watched_to, 10),
                Err(StoreError::FeedCompacted { floor }) if floor > watched_to
            ),
            "seed {seed}: a caught-up watcher is told to start over"
        );
        assert!(c.feed(cs.feed_floor, 10).unwrap().is_empty());
        // Merging the same snapshot again changes nothing.
        install_all(&sender, c, 3);
        assert_eq!(
            c.status().unwrap().digest,
            ss.digest,
            "seed {seed}: idempotent"
        );

        // Events after the snapshot apply on top, on both.
        write(&stores[0], &mut clocks[0], 5000, &[("k1", 7), ("k2", -1)]);
        ship(&stores[0], c, "a");
        ship(&stores[0], &sender, "a");
        assert_eq!(
            c.status().unwrap().digest,
            sender.status().unwrap().digest,
            "seed {seed}"
        );
        assert_verified(c);
    }
}

#[test]
fn a_snapshot_claiming_more_of_the_receivers_own_events_is_refused() {
    let (a, b) = (store("a"), store("b"));
    let mut ca = clock();
    write(&a, &mut ca, 1000, &[("k", 1), ("j", 2)]);
    ship(&a, &b, "a");
    let page = b.state_page(None, 100, usize::MAX).unwrap();
    let claim = BTreeMap::from([(NodeId::parse("a").unwrap(), 3)]);
    match a.install_snapshot(page.versions, Some(&claim), None, Sync::Immediate) {
        Err(StoreError::SnapshotRefused(why)) => {
            assert!(
                why.contains("up to 3") && why.contains("holds only 2"),
                "{why}"
            )
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_verified(&a);
}

/// Blocks that do not fill the budget exactly (3 events each, 4 at most per call): each call
/// says whether the floors allow more, so the caller goes on at once rather than an interval
/// later (the node took "fewer removed than the budget" for "done", and compacted one block per
/// `retention.interval_ms`: 100 events a second with the defaults, behind any busy writer).
#[test]
fn compaction_says_when_more_is_left_under_blocks_smaller_than_its_budget() {
    let a = store("a");
    let mut ca = clock();
    for i in 0..4 {
        write(
            &a,
            &mut ca,
            1000 + i,
            &[("k1", i as i64), ("k2", 1), ("k3", 2)],
        );
    }
    let floors = BTreeMap::from([(NodeId::parse("a").unwrap(), 12)]);
    let mut calls = Vec::new();
    loop {
        let c = a.compact(&floors, 4, Sync::Immediate).unwrap();
        calls.push((c.removed, c.more));
        if !c.more {
            break;
        }
        assert!(calls.len() < 10, "{calls:?}");
    }
    assert_eq!(calls, [(3, true), (3, true), (3, true), (3, false)]);
    assert_eq!(a.status().unwrap().compacted["a"], 12);
    // Nothing left within the floors: nothing removed, and no more.
    let c = a.compact(&floors, 4, Sync::Immediate).unwrap();
    assert_eq!((c.removed, c.more), (0, false));
}

/// Event `seq` of `from`'s own origin, its causal context also naming `origin` up to `named`
/// (what an origin that lies about its context would sign).
fn naming(from: &StoreWriter, seq: u64, origin: &str, named: u64) -> edgerep_wire::EncodedEvent {
    let own = from.node().to_string();
    let mut e = from.changelog(&own, seq - 1, 1).unwrap()[0]
        .clone()
        .into_event();
    e.context.add(&edgerep_wire::event::Dot {
        origin: NodeId::parse(origin).unwrap(),
        seq: named,
    });
    edgerep_wire::EncodedEvent::new(e)
}

/// A snapshot version whose causal context names this node's own events beyond any it issued
/// (its origin signed a lie): merged, it would supersede this node's next writes to the key
/// and make the node refuse them for good. It is left out and counted; a version whose context
/// names what this node did issue is merged.
#[test]
fn a_snapshot_version_naming_this_nodes_future_is_left_out() {
    let (v, l) = (store("v"), store("l"));
    let (mut cv, mut cl) = (clock(), clock());
    write(&v, &mut cv, 1, &[("k", 1)]);
    write(&l, &mut cl, 2, &[("k", 2), ("j", 3)]);
    let with_context = |seq: u64, names: u64| naming(&l, seq, "v", names);
    let before = v.status().unwrap();
    let out = v
        .install_snapshot(
            vec![with_context(1, u64::MAX - 1)],
            None,
            None,
            Sync::Immediate,
        )
        .unwrap();
    assert_eq!((out.future_contexts, out.changed), (1, 0), "{out:?}");
    assert_eq!(v.status().unwrap().digest, before.digest);
    // The node still writes the key.
    write(&v, &mut cv, 3, &[("k", 4)]);
    // A context naming what v did issue is merged.
    let out = v
        .install_snapshot(vec![with_context(2, 1)], None, None, Sync::Immediate)
        .unwrap();
    assert_eq!((out.future_contexts, out.changed), (0, 1), "{out:?}");
    assert_verified(&v);
}

/// A snapshot's last page, which brings the have its versions were taken at: a version whose
/// context names another origin's events beyond what this node holds or that have is left out
/// (its origin forged it: merged, it would supersede that origin's next writes to the key on
/// every node). One naming what is held is merged. (A repair is held to the same rule.)
#[test]
fn a_last_page_version_naming_events_nobody_holds_is_left_out() {
    let (v, l, b) = (store("v"), store("l"), store("b"));
    let (mut cl, mut cb) = (clock(), clock());
    write(&l, &mut cl, 1, &[("k", 1), ("j", 2)]);
    write(&b, &mut cb, 2, &[("x", 3)]);
    ship(&b, &v, "b");
    let have: edgerep_wire::Have = [(NodeId::parse("l").unwrap(), 2)].into();
    let out = v
        .install_snapshot(
            vec![naming(&l, 1, "b", 1 << 40), naming(&l, 2, "b", 1)],
            Some(&have),
            None,
            Sync::Immediate,
        )
        .unwrap();
    assert_eq!((out.future_contexts, out.changed), (1, 1), "{out:?}");
    assert_verified(&v);
}

/// A store restored from a backup takes its own later events back in a peer's snapshot; an
/// earlier page can bring some of them before the last page raises its own have. Across a
/// restart in between (the peer's claim, which kept the node from writing, lived in memory
/// only), the numbers those events hold must stay taken: a write under one would sign a
/// second history of this node.
#[test]
fn own_events_from_part_of_a_snapshot_keep_their_numbers_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeId::parse("a").unwrap();
    let open = |path: &std::path::Path| {
        StoreWriter::open(path, &node, EventLimits::default())
            .unwrap()
            .0
    };
    let b = store("b");
    let mut ca = clock();
    {
        // Node a wrote three events, which b holds; then a's disk was lost.
        let a = store("a");
        write(&a, &mut ca, 1000, &[("k", 1), ("j", 2), ("i", 3)]);
        ship(&a, &b, "a");
    }
    let path = dir.path().join("a.redb");
    {
        let a = open(&path);
        // The first page of b's snapshot: a's own events, without the have (not the last page).
        let page = b.state_page(None, 100, usize::MAX).unwrap();
        assert_eq!(page.versions.len(), 3);
        a.install_snapshot(page.versions, None, None, Sync::Immediate)
            .unwrap();
        assert_eq!(held(&a, "a"), 0, "only the last page raises the own have");
        assert_eq!(a.status().unwrap().own_seen, 3);
    }
    // The restart: the store itself says which numbers are taken.
    let a = open(&path);
    assert_eq!(a.status().unwrap().own_seen, 3);
    let write_one = |a: &StoreWriter, clock: &mut HlcClock| {
        a.commit_local(
            vec![LocalWrite {
                collection: "c".into(),
                key: b"new".to_vec(),
                value: Some(Value::from_json(&serde_json::json!(9), &Default::default()).unwrap()),
                schema: 0,
                meta: BTreeMap::new(),
                context: None,
            }],
            clock,
            2000,
        )
    };
    let mut clock_after = clock();
    match write_one(&a, &mut clock_after) {
        Err(StoreError::OwnNumbersTaken { held: 0, seen: 3 }) => {}
        other => panic!("expected the write refused, got {other:?}"),
    }
    assert_eq!(held(&a, "a"), 0, "nothing was written");
    // The rest comes back (the events themselves here): then writes go on, after them.
    ship(&b, &a, "a");
    assert_eq!(held(&a, "a"), 3);
    let committed = write_one(&a, &mut clock_after).unwrap();
    assert_eq!(committed[0].seq, 4);
    assert_verified(&a);
}

/// Causal contexts are transitive, which snapshots rely on: a write supersedes what the
/// versions it covers superseded, even when its writer read an older state. Here client B read
/// X at n1 (context n3:1); then Y (n2, over X) came, a client wrote W1 over Y, and B wrote W2
/// with its stale context. W2 covers W1 (n1's own earlier write), so it must cover Y too: n4,
/// which holds Y and gets n1's state by snapshot (n1 kept no changelog), ends with W2 alone,
/// as every node given the events does. (W2's context named only X and W1, so n4 kept Y
/// beside W2, and anti-entropy then spread Y back to every node.)
#[test]
fn a_write_with_a_stale_context_supersedes_what_the_versions_it_covers_superseded() {
    use edgerep_wire::event::Dot;
    let (n1, n2, n3, n4) = (store("n1"), store("n2"), store("n3"), store("n4"));
    let mut clock = clock();
    let context = |dots: &[(&str, u64)]| {
        let mut vv = edgerep_wire::VersionVector::new();
        for (origin, seq) in dots {
            vv.add(&Dot {
                origin: NodeId::parse(origin).unwrap(),
                seq: *seq,
            });
        }
        vv
    };
    let put = |store: &StoreWriter, clock: &mut HlcClock, n: i64, read: Option<VersionVector>| {
        let write = LocalWrite {
            collection: "c".into(),
            key: b"k".to_vec(),
            value: Some(Value::from_json(&serde_json::json!(n), &Default::default()).unwrap()),
            schema: 0,
            meta: BTreeMap::new(),
            context: read,
        };
        store
            .commit_local(vec![write], clock, 1000 + n as u64)
            .unwrap();
    };
    put(&n3, &mut clock, 1, None); // X
    for to in [&n1, &n2, &n4] {
        ship(&n3, to, "n3");
    }
    put(&n2, &mut clock, 2, None); // Y, over X
    ship(&n2, &n1, "n2");
    ship(&n2, &n4, "n2");
    put(&n1, &mut clock, 3, Some(context(&[("n3", 1), ("n2", 1)]))); // W1, over Y
    put(&n1, &mut clock, 4, Some(context(&[("n3", 1)]))); // W2, read before Y came
    let held = n1.get("c", b"k").unwrap();
    assert_eq!(held.events().len(), 1, "n1 holds W2 alone");
    assert!(
        held.events()[0].context.covers(&Dot {
            origin: NodeId::parse("n2").unwrap(),
            seq: 1
        }),
        "W2's context covers Y, which W1 (that it covers) superseded: {:?}",
        held.events()[0].context
    );

    let have = n1.status().unwrap().origins;
    n1.compact(&have, u64::MAX, Sync::Immediate).unwrap();
    install_all(&n1, &n4, 1);
    assert_eq!(
        n4.get("c", b"k").unwrap().events().len(),
        1,
        "n4 holds W2 alone after the snapshot"
    );
    assert_eq!(n4.status().unwrap().digest, n1.status().unwrap().digest);
    assert_verified(&n4);
}

/// The collections a store holds keys of, one seek each: names that sort next to each other
/// ("c", "c-2", "cc"), a deleted key still counts, and the limit is kept.
#[test]
fn collections_held_lists_each_collection_once() {
    let s = store("node-1");
    let mut clock = clock();
    let put = |collection: &str, key: &str, value: Option<i64>, clock: &mut HlcClock| {
        let write = LocalWrite {
            collection: collection.into(),
            key: key.as_bytes().to_vec(),
            value: value
                .map(|n| Value::from_json(&serde_json::json!(n), &Default::default()).unwrap()),
            schema: 0,
            meta: BTreeMap::new(),
            context: None,
        };
        s.commit_local(vec![write], clock, 1).unwrap();
    };
    assert!(s.collections_held(10).unwrap().is_empty());
    for (collection, key) in [
        ("cc", "a"),
        ("c", "z"),
        ("c", "a"),
        ("c-2", "a"),
        ("b", "k"),
    ] {
        put(collection, key, Some(1), &mut clock);
    }
    put("gone", "k", Some(1), &mut clock);
    put("gone", "k", None, &mut clock);
    assert_eq!(
        s.collections_held(10).unwrap(),
        ["b", "c", "c-2", "cc", "gone"]
    );
    assert_eq!(s.collections_held(2).unwrap(), ["b", "c"]);
}

/// A page whose reading runs out of time ends at the key it reached (the first key still comes
/// whole), and the pages from there on bring the rest: the same versions as one page.
#[test]
fn a_state_page_out_of_time_ends_at_a_key_and_the_next_goes_on() {
    let s = store("node-1");
    let mut clock = clock();
    write(&s, &mut clock, 1000, &[("a", 1), ("b", 2), ("c", 3)]);
    let whole = s.state_page(None, 100, usize::MAX).unwrap();
    assert_eq!(whole.versions.len(), 3);
    assert!(whole.next.is_none());
    let mut versions = Vec::new();
    let mut after: Option<edgerep_wire::StateCursor> = None;
    let mut pages = 0;
    loop {
        let page = s
            .state_page_within(after.as_ref(), 100, usize::MAX, std::time::Duration::ZERO)
            .unwrap();
        pages += 1;
        assert_eq!(page.versions.len(), 1, "one key a page when out of time");
        versions.extend(page.versions);
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(versions, whole.versions);
}

/// A key whose concurrent versions together are over a page's bounds (large values written in
/// a partition) goes over several pages, each within them but for a single version, and the
/// pages merged give the sender's state. Sent whole, such a key made a page no frame could
/// carry, and the snapshot failed at that page for good.
#[test]
fn a_key_over_a_page_by_itself_goes_over_several_pages() {
    let big = |n: i64| {
        Value::from_json(
            &serde_json::json!({"n": n, "pad": "x".repeat(3000)}),
            &Default::default(),
        )
        .unwrap()
    };
    let sender = store("s");
    let origins = ["a", "b", "c", "d", "e"];
    for (i, o) in origins.iter().enumerate() {
        let s = store(o);
        let mut c = clock();
        let key = |k: &str, value: Option<Value>| LocalWrite {
            collection: "c".into(),
            key: k.as_bytes().to_vec(),
            value,
            schema: 0,
            meta: BTreeMap::new(),
            context: None,
        };
        // Before, at and after the shared key, in key order.
        let writes = vec![
            key(&format!("a{o}"), Some(big(i as i64))),
            key("shared", Some(big(10 + i as i64))),
            key(&format!("z{o}"), Some(big(20 + i as i64))),
        ];
        s.commit_local(writes, &mut c, 1000).unwrap();
        ship(&s, &sender, o);
    }
    let max_bytes = 8_000;
    let whole = sender.state_page(None, 1000, usize::MAX).unwrap();
    assert!(whole.next.is_none());
    let shared: usize = whole
        .versions
        .iter()
        .filter(|v| v.key == b"shared")
        .map(|v| v.bytes().len())
        .sum();
    assert!(
        shared > max_bytes,
        "the shared key alone is over a page: {shared}"
    );

    let receiver = store("r");
    let have = sender.status().unwrap().origins;
    let (mut after, mut pages, mut versions) = (None, 0, Vec::new());
    loop {
        let page = sender.state_page(after.as_ref(), 1000, max_bytes).unwrap();
        pages += 1;
        let bytes: usize = page.versions.iter().map(|v| v.bytes().len()).sum();
        assert!(
            page.versions.len() == 1 || bytes <= max_bytes,
            "page {pages}: {} versions, {bytes} bytes",
            page.versions.len()
        );
        versions.extend(page.versions.iter().map(|v| (v.origin.to_string(), v.seq)));
        let last = page.next.is_none();
        receiver
            .install_snapshot(page.versions, last.then_some(&have), None, Sync::Immediate)
            .unwrap();
        if last {
            break;
        }
        after = page.next;
        assert!(pages < 100, "the pages go on without end");
    }
    assert!(pages >= 4, "{pages} pages");
    let mut sent = versions.clone();
    sent.sort();
    sent.dedup();
    assert_eq!(
        sent.len(),
        versions.len(),
        "a version went twice: {versions:?}"
    );
    assert_eq!(versions.len(), whole.versions.len(), "{versions:?}");
    assert_eq!(
        receiver.status().unwrap().digest,
        sender.status().unwrap().digest
    );
    assert_verified(&receiver);
}
