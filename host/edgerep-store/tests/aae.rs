//! The anti-entropy index: kept in step with every write, equal on stores with equal states,
//! rebuilt from the state at open (so damage behind the store's back shows), and what repair
//! merges puts a damaged store back to its peer's state.

use std::collections::BTreeMap;

use edgerep_store::aae::{Damage, Node};
use edgerep_store::{LocalWrite, Store, StoreWriter, Sync};
use edgerep_wire::event::EventLimits;
use edgerep_wire::{EncodedEvent, HlcClock, NodeId, Value};
use redb::backends::InMemoryBackend;

fn node(id: &str) -> NodeId {
    NodeId::parse(id).unwrap()
}

fn memory(id: &str) -> StoreWriter {
    StoreWriter::new(memory_store(id))
}

/// An in-memory store still to configure (then made a [`StoreWriter`]).
fn memory_store(id: &str) -> Store {
    Store::open_with_backend(
        InMemoryBackend::new(),
        "memory",
        &node(id),
        EventLimits::default(),
    )
    .unwrap()
    .0
}

fn on_disk(path: &std::path::Path, id: &str) -> StoreWriter {
    StoreWriter::open(path, &node(id), EventLimits::default())
        .unwrap()
        .0
}

fn writes(prefix: &str, n: usize, v: i64) -> Vec<LocalWrite> {
    (0..n)
        .map(|i| LocalWrite {
            collection: "c".into(),
            key: format!("{prefix}{i}").into_bytes(),
            value: Some(
                Value::from_json(&serde_json::json!({ "v": v }), &Default::default()).unwrap(),
            ),
            schema: 0,
            meta: BTreeMap::new(),
            context: None,
        })
        .collect()
}

fn clock() -> HlcClock {
    HlcClock::new(Default::default(), 60_000)
}

/// Sends `to` every event of `origin` that `from` holds beyond what `to` holds.
fn ship(from: &StoreWriter, to: &StoreWriter, origin: &str) {
    let after = to
        .status()
        .unwrap()
        .origins
        .get(origin)
        .copied()
        .unwrap_or(0);
    let events = from.changelog(origin, after, usize::MAX).unwrap();
    to.apply_events(events).unwrap();
}

/// The leaves (single buckets) whose fingerprints differ, found by descending from the root
/// only where the fingerprints differ (what a reconciliation session does).
fn differing_leaves(a: &StoreWriter, b: &StoreWriter) -> Vec<Node> {
    let mut out = Vec::new();
    let mut todo = vec![Node::ROOT];
    while let Some(n) = todo.pop() {
        if a.aae_fingerprint(n).unwrap() == b.aae_fingerprint(n).unwrap() {
            continue;
        }
        if n.children().is_empty() {
            out.push(n);
        } else {
            todo.extend(n.children());
        }
    }
    out
}

/// Repairs `to` from `from` over the differing leaves: the keys whose entries differ, with
/// `from`'s versions and proofs, merged by `repair_sealed`.
fn repair(from: &StoreWriter, to: &StoreWriter) -> edgerep_store::Installed {
    let mut keys = Vec::new();
    for leaf in differing_leaves(from, to) {
        let mine: BTreeMap<_, _> = from
            .aae_items(leaf)
            .unwrap()
            .into_iter()
            .map(|i| (i.state_key, i.hash))
            .collect();
        let theirs: BTreeMap<_, _> = to
            .aae_items(leaf)
            .unwrap()
            .into_iter()
            .map(|i| (i.state_key, i.hash))
            .collect();
        for (k, h) in &mine {
            if theirs.get(k) != Some(h) {
                keys.push(k.clone());
            }
        }
    }
    let page = from.versions_of(&keys).unwrap();
    assert_eq!(page.unproven, 0);
    to.repair_sealed(
        page.versions,
        &page.proofs,
        &page.seals,
        &[],
        &to.resolutions_of(&keys).unwrap(),
        from.node(),
        &Default::default(),
        None,
        Sync::Immediate,
    )
    .unwrap()
}

/// What `to` does with `theirs`, the resolutions `from` holds of keys, in a repair with no
/// versions: it settles them.
fn told(
    to: &StoreWriter,
    theirs: &[edgerep_wire::aae::KeyResolution],
    from: &StoreWriter,
) -> edgerep_store::Installed {
    to.repair_sealed(
        Vec::new(),
        &[],
        &[],
        &[],
        theirs,
        from.node(),
        &Default::default(),
        None,
        Sync::Immediate,
    )
    .unwrap()
}

/// A resolver that picks version `pick` (a stand-in for a plugin; two nodes given different
/// `pick`s resolve the same versions differently under one build, as a plugin that is not
/// deterministic could), under the build named second.
struct Pick(usize, &'static str);

impl edgerep_store::Resolver for Pick {
    fn resolves(&self, collection: &str) -> bool {
        collection == "c"
    }

    fn resolve(
        &self,
        _collection: &str,
        _key: &[u8],
        versions: &edgerep_store::Versions,
    ) -> edgerep_store::Resolution {
        let i = self.0.min(versions.events().len() - 1);
        edgerep_store::Resolution {
            by: "plugin:pick".into(),
            value: versions.events()[i].value.clone(),
            winner: Some(i),
        }
    }

    fn build(&self, _collection: &str) -> String {
        self.1.into()
    }
}

#[test]
fn resolutions_are_kept_compared_and_settled_on_the_default_when_nodes_disagree() {
    let with = |id: &str, pick: usize| {
        StoreWriter::new(memory_store(id).with_resolver(std::sync::Arc::new(Pick(pick, "build-1"))))
    };
    // x and y write the same key concurrently; a and b receive both, and resolve them
    // differently (a picks the first version, b the second).
    let (x, y) = (memory("x"), memory("y"));
    let (a, b) = (with("a", 0), with("b", 1));
    let mut c = clock();
    x.commit_local(writes("k", 1, 1), &mut c, 1).unwrap();
    y.commit_local(writes("k", 1, 2), &mut c, 2).unwrap();
    x.commit_local(writes("solo", 1, 3), &mut c, 3).unwrap();
    for s in [&a, &b] {
        ship(&x, s, "x");
        ship(&y, s, "y");
    }
    let (va, ra) = a.get_resolved("c", b"k0").unwrap();
    let (vb, rb) = b.get_resolved("c", b"k0").unwrap();
    assert_eq!(va, vb, "the same versions");
    assert_eq!(va.events().len(), 2);
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!((ra.winner, rb.winner), (Some(0), Some(1)));
    // A single version keeps no resolution.
    assert!(a.get_resolved("c", b"solo0").unwrap().1.is_none());
    // The rows differ, so the fingerprints do: anti-entropy finds the key.
    assert_ne!(a.status().unwrap().digest, b.status().unwrap().digest);
    let leaves = differing_leaves(&a, &b);
    assert_eq!(leaves.len(), 1);
    // Each side tells the other how it resolved the key; neither has versions to send.
    let key = vec![b"c\0k0".to_vec()];
    let (from_a, from_b) = (
        a.resolutions_of(&key).unwrap(),
        b.resolutions_of(&key).unwrap(),
    );
    assert_eq!(from_a.len(), 1);
    assert_eq!(from_a[0].build, "build-1");
    assert_eq!(from_a[0].versions, from_b[0].versions);
    assert_ne!(from_a[0].resolution, from_b[0].resolution);
    assert_eq!(told(&b, &from_a, &a).disagreements, 1);
    assert_eq!(told(&a, &from_b, &b).disagreements, 1);
    // Both now hold the deterministic default, and agree.
    for s in [&a, &b] {
        let (v, r) = s.get_resolved("c", b"k0").unwrap();
        let r = r.unwrap();
        assert_eq!(r.by, edgerep_store::BY_DEFAULT_AFTER_DISAGREEMENT);
        assert_eq!(r.value.as_ref(), v.lww_value());
        assert_eq!(s.verify().unwrap(), Ok(()));
    }
    assert_eq!(a.status().unwrap().digest, b.status().unwrap().digest);
    assert!(differing_leaves(&a, &b).is_empty());
    // Each recorded the disagreement, naming the key, the peer and both builds.
    let (_, d) = b.disagreements(0, 10).unwrap().remove(0);
    assert_eq!((d.collection.as_str(), d.key.as_slice()), ("c", &b"k0"[..]));
    assert_eq!(
        (
            d.peer.as_str(),
            d.here_build.as_str(),
            d.peer_build.as_str()
        ),
        ("a", "build-1", "build-1")
    );
    assert_eq!(a.disagreements_count().unwrap(), 1);
    // Settling again changes nothing; what a peer says of versions this node does not hold
    // alike is ignored.
    assert_eq!(told(&b, &from_a, &a).disagreements, 0);
    let mut lie = from_a.clone();
    lie[0].versions = [7; 32];
    assert_eq!(told(&b, &lie, &a).disagreements, 0);
    // A new version changes the key: it is resolved again by the plugin.
    ship(&x, &a, "x");
    x.commit_local(writes("k", 1, 4), &mut c, 4).unwrap();
    ship(&x, &a, "x");
    assert_eq!(a.get_resolved("c", b"k0").unwrap().0.events().len(), 2);
    assert_eq!(
        a.get_resolved("c", b"k0").unwrap().1.unwrap().by,
        "plugin:pick"
    );
}

/// Nodes whose resolvers are not the same build (an upgrade one of them has not taken yet),
/// or one still resolving its keys again after an upgrade, answer differently for now: their
/// resolutions are left as they are, not settled on the default (which every node would then
/// keep for good, the upgraded plugin's merge lost). Once both resolve alike, they settle.
#[test]
fn resolutions_are_not_settled_across_builds_or_while_resolved_again() {
    let with = |id: &str, pick: usize, build: &'static str| {
        StoreWriter::new(memory_store(id).with_resolver(std::sync::Arc::new(Pick(pick, build))))
    };
    let (x, y) = (memory("x"), memory("y"));
    let mut c = clock();
    x.commit_local(writes("k", 1, 1), &mut c, 1).unwrap();
    y.commit_local(writes("k", 1, 2), &mut c, 2).unwrap();
    x.commit_local(writes("m", 1, 3), &mut c, 3).unwrap();
    let a = with("a", 0, "v1");
    let b = with("b", 1, "v2");
    let d = with("d", 0, "v2");
    for s in [&a, &b, &d] {
        ship(&x, s, "x");
        ship(&y, s, "y");
    }
    let key = vec![b"c\0k0".to_vec()];
    let by = |s: &StoreWriter| s.get_resolved("c", b"k0").unwrap().1.unwrap().by;
    // Another build: left alone both ways.
    assert_eq!(
        told(&b, &a.resolutions_of(&key).unwrap(), &a).disagreements,
        0
    );
    assert_eq!(
        told(&a, &b.resolutions_of(&key).unwrap(), &b).disagreements,
        0
    );
    assert_eq!(
        (by(&a), by(&b)),
        ("plugin:pick".into(), "plugin:pick".into())
    );
    // The same build, `d` still resolving its keys again: it says so, and neither settles.
    d.mark_re_resolving(["c".to_owned()]);
    let from_d = d.resolutions_of(&key).unwrap();
    assert_eq!(from_d[0].build, "v2 (re-resolving)");
    assert_eq!(told(&b, &from_d, &d).disagreements, 0);
    assert_eq!(
        told(&d, &b.resolutions_of(&key).unwrap(), &b).disagreements,
        0
    );
    assert_eq!(by(&b), "plugin:pick");
    // Two passes that overlap (a start's and a reload's): marked until the last one ends.
    let (_, next) = d.re_resolve("c", None, 1).unwrap();
    assert!(next.is_some(), "two keys, one a page");
    assert_eq!(d.re_resolve("c", None, 100).unwrap().1, None);
    assert_eq!(d.re_resolving(), ["c"], "the first pass still runs");
    assert_eq!(
        told(&b, &d.resolutions_of(&key).unwrap(), &d).disagreements,
        0
    );
    assert_eq!(d.re_resolve("c", next.as_deref(), 100).unwrap().1, None);
    assert!(d.re_resolving().is_empty());
    // A mark made while a pass runs (a reload's upgrade during a start's pass) outlives that
    // pass, which decided part of the keys under the wiring before it.
    let (_, next) = d.re_resolve("c", None, 1).unwrap();
    d.mark_re_resolving(["c".to_owned()]);
    assert_eq!(d.re_resolve("c", next.as_deref(), 100).unwrap().1, None);
    assert_eq!(d.re_resolving(), ["c"], "marked after that pass began");
    assert_eq!(d.re_resolve("c", None, 100).unwrap().1, None);
    assert!(d.re_resolving().is_empty());
    // Done: the same build answering otherwise is a disagreement again.
    let from_d = d.resolutions_of(&key).unwrap();
    assert_eq!(from_d[0].build, "v2");
    assert_eq!(told(&b, &from_d, &d).disagreements, 1);
    assert_eq!(by(&b), edgerep_store::BY_DEFAULT_AFTER_DISAGREEMENT);
}

/// A resolver plugin that fails (last-writer-wins stands in, as the node's pipeline does)
/// its first `fails` calls, then picks the first version, as [`Pick`]`(0)` does.
struct Failing {
    fails: std::sync::atomic::AtomicU32,
}

impl Failing {
    fn new(fails: u32) -> Failing {
        Failing {
            fails: fails.into(),
        }
    }
}

impl edgerep_store::Resolver for Failing {
    fn resolves(&self, collection: &str) -> bool {
        collection == "c"
    }

    fn resolve(
        &self,
        collection: &str,
        key: &[u8],
        versions: &edgerep_store::Versions,
    ) -> edgerep_store::Resolution {
        use std::sync::atomic::Ordering::Relaxed;
        let left = self.fails.load(Relaxed);
        if left > 0 {
            self.fails.store(left - 1, Relaxed);
            return edgerep_store::Resolution::fallback(versions, "pick");
        }
        Pick(0, "build-0").resolve(collection, key, versions)
    }

    fn build(&self, _collection: &str) -> String {
        "build-0".into()
    }
}

#[test]
fn a_resolver_that_failed_on_one_node_runs_again_and_only_a_failure_that_persists_ends_on_the_default()
 {
    let with = |id: &str, r: Failing| {
        StoreWriter::new(memory_store(id).with_resolver(std::sync::Arc::new(r)))
    };
    let (x, y) = (memory("x"), memory("y"));
    let mut c = clock();
    x.commit_local(writes("k", 1, 1), &mut c, 1).unwrap();
    y.commit_local(writes("k", 1, 2), &mut c, 2).unwrap();
    // `a`'s plugin answers; `b`'s fails once (a deadline hit under load, say); `p`'s always
    // fails. The plugin picks x's version, last-writer-wins y's (the later clock).
    let a = with("a", Failing::new(0));
    let b = with("b", Failing::new(1));
    let p = with("p", Failing::new(u32::MAX));
    for s in [&a, &b, &p] {
        ship(&x, s, "x");
        ship(&y, s, "y");
    }
    let by = |s: &StoreWriter| s.get_resolved("c", b"k0").unwrap().1.unwrap().by;
    assert_eq!(by(&a), "plugin:pick");
    assert_eq!(by(&b), "lww-fallback:pick");
    assert_eq!(by(&p), "lww-fallback:pick");
    assert_ne!(a.status().unwrap().digest, b.status().unwrap().digest);
    let key = vec![b"c\0k0".to_vec()];
    // A session between a and b: each is told the other's resolution as it stood.
    let (from_a, from_b) = (
        a.resolutions_of(&key).unwrap(),
        b.resolutions_of(&key).unwrap(),
    );
    // `a` keeps its plugin's answer: b's is exactly the stand-in `a` would write.
    let out = told(&a, &from_b, &b);
    assert_eq!((out.disagreements, out.resolved_again), (0, 0));
    // `b` runs its plugin again; it answers, as `a`'s did: no disagreement.
    let out = told(&b, &from_a, &a);
    assert_eq!((out.disagreements, out.resolved_again), (0, 1));
    assert_eq!(out.by_collection["c"].resolved_again, 1);
    for s in [&a, &b] {
        assert_eq!(by(s), "plugin:pick");
        assert_eq!(s.verify().unwrap(), Ok(()));
        assert_eq!(s.disagreements_count().unwrap(), 0);
    }
    assert_eq!(a.status().unwrap().digest, b.status().unwrap().digest);
    assert!(differing_leaves(&a, &b).is_empty());
    // Between a and p: p's plugin fails again, so p settles on the default; `a` follows at
    // the next session, when p's resolution is the default and no longer the stand-in.
    let (from_a, from_p) = (
        a.resolutions_of(&key).unwrap(),
        p.resolutions_of(&key).unwrap(),
    );
    assert_eq!(told(&a, &from_p, &p).disagreements, 0);
    assert_eq!(told(&p, &from_a, &a).disagreements, 1);
    assert_eq!(by(&p), edgerep_store::BY_DEFAULT_AFTER_DISAGREEMENT);
    assert_eq!(by(&a), "plugin:pick");
    let (from_a, from_p) = (
        a.resolutions_of(&key).unwrap(),
        p.resolutions_of(&key).unwrap(),
    );
    assert_eq!(told(&p, &from_a, &a).disagreements, 0);
    assert_eq!(told(&a, &from_p, &p).disagreements, 1);
    for s in [&a, &p] {
        assert_eq!(by(s), edgerep_store::BY_DEFAULT_AFTER_DISAGREEMENT);
        assert_eq!(s.verify().unwrap(), Ok(()));
        assert_eq!(s.disagreements_count().unwrap(), 1);
    }
    assert_eq!(a.status().unwrap().digest, p.status().unwrap().digest);
    // The default stays: the plugin is not run over it again.
    let out = told(&p, &b.resolutions_of(&key).unwrap(), &b);
    assert_eq!((out.disagreements, out.resolved_again), (0, 0));
    assert_eq!(by(&p), edgerep_store::BY_DEFAULT_AFTER_DISAGREEMENT);
}

#[test]
fn the_index_follows_every_write_and_equal_states_fingerprint_equal() {
    let (a, b) = (memory("a"), memory("b"));
    let mut c = clock();
    a.commit_local(writes("k", 500, 1), &mut c, 1).unwrap();
    a.commit_local(writes("k", 100, 2), &mut c, 2).unwrap();
    ship(&a, &b, "a");
    let (fa, fb) = (
        a.aae_fingerprint(Node::ROOT).unwrap(),
        b.aae_fingerprint(Node::ROOT).unwrap(),
    );
    assert_eq!(fa, fb);
    assert_eq!(fa.count, 500);
    // The root's sum is the state digest; every level agrees.
    assert_eq!(fa.sum, a.status().unwrap().digest);
    assert!(differing_leaves(&a, &b).is_empty());
    let total: u64 = Node::ROOT
        .children()
        .iter()
        .map(|n| a.aae_fingerprint(*n).unwrap().count)
        .sum();
    assert_eq!(total, 500);
    // One more write on a: exactly one leaf differs, holding that key.
    a.commit_local(writes("k", 1, 3), &mut c, 3).unwrap();
    let leaves = differing_leaves(&a, &b);
    assert_eq!(leaves.len(), 1, "{leaves:?}");
    let items = a.aae_items(leaves[0]).unwrap();
    assert!(items.iter().any(|i| i.state_key == b"c\0k0"));
    ship(&a, &b, "a");
    assert!(differing_leaves(&a, &b).is_empty());
}

#[test]
fn damage_behind_the_stores_back_is_found_at_open_and_repaired_from_a_peer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.redb");
    let a = memory("a");
    let mut c = clock();
    a.commit_local(writes("k", 300, 1), &mut c, 1).unwrap();
    {
        let b = on_disk(&path, "b");
        ship(&a, &b, "a");
        assert_eq!(b.status().unwrap().digest, a.status().unwrap().digest);
        assert_eq!(b.damage("c", &[b"k7".to_vec()], Damage::Remove).unwrap(), 1);
        assert_eq!(
            b.damage("c", &[b"k8".to_vec()], Damage::FlipByte).unwrap(),
            1
        );
        assert_eq!(
            b.damage("c", &[b"nope".to_vec()], Damage::Remove).unwrap(),
            0
        );
    }
    let b = on_disk(&path, "b");
    let check = b.open_check().unwrap();
    assert_eq!(
        (check.entries_recorded, check.entries, check.unreadable),
        (Some(300), 299, 1),
        "{check:?}"
    );
    assert!(check.digest_fixed && check.found_damage());
    // The sums and the digest now say what the state holds: the two keys differ (one of them
    // cannot even be read).
    let problem = b.verify().unwrap().unwrap_err();
    assert!(problem.contains("cannot be read"), "{problem}");
    assert_eq!(differing_leaves(&a, &b).len(), 2);
    // Bookkeeping says b holds every event of a: replication would never resend them.
    assert_eq!(b.status().unwrap().origins["a"], 300);
    let out = repair(&a, &b);
    assert_eq!(out.changed, 2, "{out:?}");
    assert_eq!(out.covered, 2, "both were drift: b's have covered them");
    assert_eq!(
        out.replaced, 1,
        "the flipped key could not be read: replaced"
    );
    assert_eq!(b.status().unwrap().digest, a.status().unwrap().digest);
    assert!(differing_leaves(&a, &b).is_empty());
    assert_eq!(b.verify().unwrap(), Ok(()));
    // Repair is idempotent.
    let again = repair(&a, &b);
    assert_eq!(again.changed, 0);
    drop(b);
    let b = on_disk(&path, "b");
    assert!(
        !b.open_check().unwrap().found_damage(),
        "a clean open finds nothing"
    );
}

/// A peer's new event for a key whose row cannot be read here: it used to fail its whole batch,
/// at every resend, so no later event of its origin was ever applied, and no repair could help
/// (a repair sends only events this node holds). Now the event goes into the changelog and
/// stays out of the state, the rest of the batch applies, and a repair replaces the row with
/// the peer's versions, the new event among them.
#[test]
fn a_peers_event_for_a_damaged_key_does_not_stop_its_origin() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.redb");
    let a = memory("a");
    let mut c = clock();
    a.commit_local(writes("k", 10, 1), &mut c, 1).unwrap();
    {
        let b = on_disk(&path, "b");
        ship(&a, &b, "a");
        assert_eq!(
            b.damage("c", &[b"k3".to_vec()], Damage::FlipByte).unwrap(),
            1
        );
    }
    let b = on_disk(&path, "b");
    assert_eq!(b.open_check().unwrap().unreadable, 1);
    // a writes the damaged key again, and another key after it.
    a.commit_local(writes("k", 4, 2), &mut c, 2).unwrap();
    a.commit_local(writes("n", 1, 3), &mut c, 3).unwrap();
    ship(&a, &b, "a");
    assert_eq!(
        b.status().unwrap().origins["a"],
        15,
        "every event of a held"
    );
    assert!(b.get("c", b"k3").is_err(), "the row is left as it was");
    assert_eq!(b.get("c", b"k2").unwrap(), a.get("c", b"k2").unwrap());
    assert_eq!(b.get("c", b"n0").unwrap(), a.get("c", b"n0").unwrap());
    let out = repair(&a, &b);
    assert_eq!(out.replaced, 1, "{out:?}");
    assert_eq!(b.get("c", b"k3").unwrap(), a.get("c", b"k3").unwrap());
    assert_eq!(b.status().unwrap().digest, a.status().unwrap().digest);
    assert!(differing_leaves(&a, &b).is_empty());
}

#[test]
fn a_version_changed_in_place_is_replaced_by_the_proven_one() {
    let (a, b) = (memory("a"), memory("b"));
    let mut c = clock();
    a.commit_local(writes("k", 3, 1), &mut c, 1).unwrap();
    ship(&a, &b, "a");
    // b's copy of k1 holds another value under the same origin and sequence number: merged by
    // the ordinary rule it would stay (a duplicate); repair drops it for the proven one.
    let mut versions = b.get("c", b"k1").unwrap();
    let mut changed = versions.events()[0].clone().into_event();
    changed.value = Some(Value::from_json(&serde_json::json!(666), &Default::default()).unwrap());
    let changed = EncodedEvent::new(changed);
    versions = edgerep_store::Versions::new();
    versions.apply(changed.clone());
    let other = memory("x");
    other
        .install_snapshot(vec![changed], None, None, Sync::Immediate)
        .unwrap();
    let page = a.versions_of(&[b"c\0k1".to_vec()]).unwrap();
    let out = other
        .repair_sealed(
            page.versions,
            &page.proofs,
            &page.seals,
            &[],
            &[],
            a.node(),
            &Default::default(),
            None,
            Sync::Immediate,
        )
        .unwrap();
    assert_eq!((out.changed, out.replaced), (1, 1), "{out:?}");
    assert_eq!(other.get("c", b"k1").unwrap(), a.get("c", b"k1").unwrap());
    assert!(!versions.is_empty());
}

#[test]
fn a_collection_compared_on_versions_hashes_without_values_and_a_new_rule_is_not_damage() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let rule = |on: bool| {
        edgerep_store::HashRule::versions_only(if on {
            ["c".to_owned()].into()
        } else {
            Default::default()
        })
    };
    let open = |on: bool| {
        StoreWriter::open_with_rule(&path, &node("b"), EventLimits::default(), rule(on))
            .unwrap()
            .0
    };
    let a = memory("a");
    let mut c = clock();
    a.commit_local(writes("k", 20, 1), &mut c, 1).unwrap();
    {
        let b = open(false);
        ship(&a, &b, "a");
        assert_eq!(b.status().unwrap().digest, a.status().unwrap().digest);
    }
    // Reopened under the other rule: the digest is recomputed, and that is not damage.
    let b = open(true);
    let check = b.open_check().unwrap();
    assert!(check.rule_changed && !check.found_damage(), "{check:?}");
    assert_ne!(b.status().unwrap().digest, a.status().unwrap().digest);
    assert_eq!(b.verify().unwrap(), Ok(()));
    // Two stores under "versions" that hold the same versions, one with a value a transform on
    // apply changed: equal digests (under "values" they would differ).
    let twin = |on: bool, transform: bool| {
        let name = format!("t-{on}-{transform}.redb");
        let s = StoreWriter::open_with_rule(
            &dir.path().join(name),
            &node("t"),
            EventLimits::default(),
            rule(on),
        )
        .unwrap()
        .0;
        let events = a.changelog("a", 0, usize::MAX).unwrap();
        let received = events
            .into_iter()
            .map(|e| {
                let on_apply = if transform && e.key == b"k3" {
                    edgerep_store::OnApply::Value(Some(
                        Value::from_json(&serde_json::json!("redacted"), &Default::default())
                            .unwrap(),
                    ))
                } else {
                    edgerep_store::OnApply::AsReceived
                };
                edgerep_store::Received::new(e, on_apply)
            })
            .collect();
        s.apply_remote(received, &[], Sync::Immediate, &mut clock(), 1)
            .unwrap();
        s.status().unwrap().digest
    };
    assert_eq!(twin(true, false), twin(true, true));
    assert_ne!(twin(false, false), twin(false, true));
    drop(b);
    let b = open(false);
    assert!(b.open_check().unwrap().rule_changed && !b.open_check().unwrap().found_damage());
}

/// A start under a new hash rule that stops before its check at open has recomputed the
/// digest (a crash, a start refused later, a stop): the next start recomputes it again. The
/// rule was recorded at open, before the digest followed it, so the next start took the old
/// digest for damage.
#[test]
fn a_start_under_a_new_rule_stopped_before_its_check_ended_is_not_damage() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let open = |on: bool| {
        let rule = edgerep_store::HashRule::versions_only(if on {
            ["c".to_owned()].into()
        } else {
            Default::default()
        });
        StoreWriter::open_with_rule(&path, &node("b"), EventLimits::default(), rule)
            .unwrap()
            .0
    };
    {
        let b = open(false);
        let mut c = clock();
        for batch in 0..20 {
            b.commit_local(writes(&format!("k{batch}-"), 1000, 1), &mut c, 1)
                .unwrap();
        }
    }
    // A start under rule `on` that writes `n` keys and stops at once: the check (20,000 rows)
    // cannot have ended.
    let interrupted = |on: bool, n: usize| {
        let b = open(on);
        let mut c = clock();
        if n > 0 {
            b.commit_local(writes("k0-", n, 2), &mut c, 2).unwrap();
        }
        assert!(
            b.open_check_now().is_none(),
            "the check ended before the stop"
        );
    };
    // A start under rule `on` whose check runs to its end: not damage, a rule change or not.
    let checked = |on: bool, changed: bool| {
        let b = open(on);
        let check = b.open_check().unwrap();
        assert!(
            check.rule_changed == changed && !check.found_damage(),
            "{check:?}"
        );
        assert_eq!(b.verify().unwrap(), Ok(()));
    };
    interrupted(true, 0);
    checked(true, true);
    checked(true, false);
    // A start under the other rule writes, and stops before its check ended; the next runs
    // under the recorded rule again: the writes hashed under the other one are not damage.
    interrupted(false, 10);
    checked(true, true);
}

/// A resolver whose pick can change (a reload naming another build).
struct Switch(std::sync::atomic::AtomicUsize);

impl edgerep_store::Resolver for Switch {
    fn resolves(&self, collection: &str) -> bool {
        collection == "c"
    }

    fn resolve(
        &self,
        collection: &str,
        key: &[u8],
        versions: &edgerep_store::Versions,
    ) -> edgerep_store::Resolution {
        Pick(self.0.load(std::sync::atomic::Ordering::Relaxed), "build-1")
            .resolve(collection, key, versions)
    }

    fn build(&self, _collection: &str) -> String {
        "switch".into()
    }
}

#[test]
fn kept_resolutions_are_decided_again_page_by_page_after_the_resolver_changes() {
    let switch = std::sync::Arc::new(Switch(0.into()));
    let a = StoreWriter::new(memory_store("a").with_resolver(switch.clone()));
    let b =
        StoreWriter::new(memory_store("b").with_resolver(std::sync::Arc::new(Pick(1, "build-1"))));
    let (x, y) = (memory("x"), memory("y"));
    let mut c = clock();
    // Five keys written concurrently by x and y: five keys with two versions each.
    x.commit_local(writes("k", 5, 1), &mut c, 1).unwrap();
    y.commit_local(writes("k", 5, 2), &mut c, 2).unwrap();
    for s in [&a, &b] {
        ship(&x, s, "x");
        ship(&y, s, "y");
    }
    let tally = a.conflict_tally();
    assert_eq!(tally.conflicts.get("c"), Some(&5));
    assert_eq!(
        tally
            .resolutions
            .get(&("c".to_owned(), "plugin:pick".to_owned())),
        Some(&5)
    );
    assert_ne!(a.status().unwrap().digest, b.status().unwrap().digest);
    // a's resolver changes to b's: two rows per transaction, three transactions.
    switch.0.store(1, std::sync::atomic::Ordering::Relaxed);
    let (mut after, mut changed, mut pages) = (None, 0, 0);
    loop {
        let (n, next) = a.re_resolve("c", after.as_deref(), 2).unwrap();
        changed += n;
        pages += 1;
        match next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!((changed, pages), (5, 3));
    assert_eq!(a.status().unwrap().digest, b.status().unwrap().digest);
    assert_eq!(a.verify().unwrap(), Ok(()));
    // Nothing left to change.
    assert_eq!(a.re_resolve("c", None, 100).unwrap(), (0, None));
}

/// The check at open runs beside the first writes: writes committed while it hashes the state
/// (new keys and changed ones) count once in the sums, and its correction of damaged
/// bookkeeping holds them too. Equal to what a later open computes from the state alone.
#[test]
fn writes_during_the_check_at_open_count_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.redb");
    let open = |path: &std::path::Path| {
        let (store, resume) = StoreWriter::open(path, &node("a"), EventLimits::default()).unwrap();
        (store, HlcClock::new(resume.hlc_last, 60_000))
    };
    const BATCHES: usize = 100;
    {
        let (a, mut c) = open(&path);
        for b in 0..BATCHES {
            a.commit_local(writes(&format!("k{b}-"), 1000, 1), &mut c, 1)
                .unwrap();
        }
        assert_eq!(
            a.damage("c", &[b"k0-7".to_vec()], Damage::Remove).unwrap(),
            1
        );
    }
    let (a, mut c) = open(&path);
    // Changed keys and new ones, committed at once.
    a.commit_local(writes("k1-", 500, 2), &mut c, 1).unwrap();
    let overlapped = a.open_check_now().is_none();
    a.commit_local(writes("new-", 500, 2), &mut c, 1).unwrap();
    let check = a.open_check().unwrap();
    assert_eq!(
        (check.entries_recorded, check.entries),
        (Some(BATCHES as u64 * 1000), BATCHES as u64 * 1000 - 1),
        "{check:?}"
    );
    assert!(check.found_damage(), "{check:?}");
    let entries = BATCHES as u64 * 1000 - 1 + 500;
    let status = a.status().unwrap();
    assert_eq!(status.state_entries, entries);
    let root = a.aae_fingerprint(Node::ROOT).unwrap();
    assert_eq!(root.count, entries);
    let children: Vec<_> = Node::ROOT
        .children()
        .into_iter()
        .map(|n| a.aae_fingerprint(n).unwrap())
        .collect();
    drop(a);
    let (a, _) = open(&path);
    let fresh = a.open_check().unwrap();
    assert!(!fresh.found_damage(), "{fresh:?}");
    assert_eq!(a.aae_fingerprint(Node::ROOT).unwrap(), root);
    for (n, f) in Node::ROOT.children().into_iter().zip(&children) {
        assert_eq!(a.aae_fingerprint(n).unwrap(), *f, "{n:?}");
    }
    assert_eq!(a.status().unwrap().digest, status.digest);
    assert_eq!(a.verify().unwrap(), Ok(()));
    assert!(
        overlapped,
        "the first write committed after the check had finished: this test showed nothing"
    );
}

/// A store dropped while its check at open runs closes its file: it opens again at once.
#[test]
fn a_store_closed_during_its_check_opens_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.redb");
    {
        let a = on_disk(&path, "a");
        let mut c = clock();
        for b in 0..20 {
            a.commit_local(writes(&format!("k{b}-"), 1000, 1), &mut c, 1)
                .unwrap();
        }
    }
    for _ in 0..5 {
        drop(on_disk(&path, "a"));
    }
    let a = on_disk(&path, "a");
    assert!(!a.open_check().unwrap().found_damage());
    assert_eq!(a.aae_fingerprint(Node::ROOT).unwrap().count, 20_000);
}

/// A repair cannot rewrite history: a version of another history of an origin (sealed by it),
/// at a place this node holds, is left out and reported as a fork, whoever sends it; the
/// event held there stays.
#[test]
fn a_repair_offering_another_history_of_an_origin_is_a_fork_not_a_replacement() {
    let (a, forked, b) = (memory("a"), memory("a"), memory("b"));
    let (mut c1, mut c2) = (clock(), clock());
    a.commit_local(writes("k", 3, 1), &mut c1, 1).unwrap();
    // The same origin signing a second history: other values at the same places.
    forked.commit_local(writes("k", 3, 2), &mut c2, 1).unwrap();
    ship(&a, &b, "a");
    let before = b.status().unwrap().digest;
    let keys: Vec<Vec<u8>> = (0..3).map(|i| format!("c\0k{i}").into_bytes()).collect();
    // b merges what `from` holds of the keys, as a repair from peer `peer`.
    let offer = |from: &StoreWriter, peer: &NodeId| {
        let page = from.versions_of(&keys).unwrap();
        assert_eq!(page.versions.len(), 3);
        b.repair_sealed(
            page.versions,
            &page.proofs,
            &page.seals,
            &[],
            &[],
            peer,
            &Default::default(),
            None,
            Sync::Immediate,
        )
        .unwrap()
    };
    let out = offer(&forked, &node("m"));
    assert_eq!((out.changed, out.replaced), (0, 0), "{out:?}");
    let forks: Vec<(String, u64)> = out
        .forks
        .iter()
        .map(|f| (f.origin.to_string(), f.seq))
        .collect();
    assert_eq!(
        forks,
        vec![("a".into(), 1), ("a".into(), 2), ("a".into(), 3)]
    );
    assert!(
        out.forks
            .iter()
            .all(|f| f.held.is_some_and(|h| h != f.received))
    );
    assert_eq!(b.status().unwrap().digest, before);
    for k in 0..3 {
        let key = format!("k{k}");
        assert_eq!(
            b.get("c", key.as_bytes()).unwrap(),
            a.get("c", key.as_bytes()).unwrap()
        );
    }
    // Compacted out of b's changelog (kept as proofs and blocks for its live versions): the
    // other history is still a fork, found by what b kept of its own.
    let floors: edgerep_wire::Have = [(node("a"), 3)].into_iter().collect();
    b.compact(&floors, u64::MAX, Sync::Immediate).unwrap();
    assert!(b.changelog("a", 0, usize::MAX).is_err(), "compacted");
    let out = offer(&forked, &node("m"));
    assert_eq!((out.changed, out.forks.len()), (0, 3), "{out:?}");
    assert_eq!(b.status().unwrap().digest, before);
    // The genuine history is no fork (what the origin's events prove, compacted or not).
    let out = offer(&a, a.node());
    assert!(out.forks.is_empty(), "{out:?}");
}

/// A resolver merging versions into one value larger than any of them.
struct Merge;

impl edgerep_store::Resolver for Merge {
    fn resolves(&self, collection: &str) -> bool {
        collection == "c"
    }

    fn resolve(
        &self,
        _collection: &str,
        _key: &[u8],
        _versions: &edgerep_store::Versions,
    ) -> edgerep_store::Resolution {
        edgerep_store::Resolution {
            by: "plugin:merge".into(),
            value: Some(
                Value::from_json(&serde_json::json!("m".repeat(1500)), &Default::default())
                    .unwrap(),
            ),
            winner: None,
        }
    }

    fn build(&self, _collection: &str) -> String {
        "merge".into()
    }
}

/// Limits are lowered at a start only when everything stored fits them, merged values kept in
/// state rows included: every read decodes them (the check looked at the versions only, so a
/// merge larger than its versions passed, and the key then read as corrupt).
#[test]
fn limits_are_not_lowered_below_a_merged_value_the_state_keeps() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.redb");
    let raised = EventLimits {
        value: edgerep_wire::value::DecodeLimits {
            max_bytes: 4000,
            ..EventLimits::default().value
        },
        ..EventLimits::default()
    };
    let lowered = EventLimits {
        value: edgerep_wire::value::DecodeLimits {
            max_bytes: 1000,
            ..EventLimits::default().value
        },
        ..EventLimits::default()
    };
    {
        let store = edgerep_store::Store::open(&path, &node("a"), raised)
            .unwrap()
            .0
            .with_resolver(std::sync::Arc::new(Merge));
        let a = StoreWriter::new(store);
        a.record_open(&raised).unwrap();
        let (x, y) = (memory("x"), memory("y"));
        let mut c = clock();
        x.commit_local(writes("k", 1, 1), &mut c, 1).unwrap();
        y.commit_local(writes("k", 1, 2), &mut c, 2).unwrap();
        ship(&x, &a, "x");
        ship(&y, &a, "y");
        assert_eq!(a.conflict_tally().conflicts.get("c"), Some(&1));
    }
    let e = match StoreWriter::open(&path, &node("a"), lowered) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("opened under a limit the kept merge exceeds"),
    };
    assert!(
        e.contains("max_value_bytes 1000") && e.contains("\"k0\"") && e.contains("resolution"),
        "{e}"
    );
}

/// A repair answer is bounded by its rows and their proofs (each version travels with one),
/// and by the time reading them takes (proving a version reads its block): a peer wanting
/// keys in many blocks gets the first ones, always at least one.
#[test]
fn a_repair_answer_counts_its_proofs_and_stops_on_time() {
    let a = memory("a");
    let mut c = clock();
    // Ten keys, each written in a commit of its own: ten blocks.
    for i in 0..10 {
        a.commit_local(writes(&format!("k{i}-"), 1, i), &mut c, i as u64 + 1)
            .unwrap();
    }
    let keys: Vec<Vec<u8>> = (0..10).map(|i| format!("c\0k{i}-0").into_bytes()).collect();
    let all = |max_bytes, max_time| {
        a.versions_within(&keys, max_bytes, usize::MAX, max_time, 0)
            .unwrap()
    };
    let (page, covered) = all(usize::MAX, std::time::Duration::MAX);
    assert_eq!(
        (covered, page.versions.len(), page.seals.len()),
        (10, 10, 10)
    );
    // The rows (and what their resolutions may take) of all ten come to far less than this;
    // with a proof each, they do not.
    let rows: usize = page.versions.iter().map(|v| v.bytes().len() + 8).sum();
    let resolutions: usize = keys.iter().map(|k| k.len() + 160).sum();
    let budget = rows * 2 + resolutions;
    let (_, covered) = all(budget, std::time::Duration::MAX);
    assert!(covered < 10, "{covered} keys within {budget} bytes");
    // No time at all: the first key only.
    let (page, covered) = all(usize::MAX, std::time::Duration::ZERO);
    assert_eq!((covered, page.versions.len()), (1, 1));
    // The answer stops before the versions a peer's decoder takes in one message; the first
    // key always goes.
    let (_, one) = all(1, std::time::Duration::MAX);
    assert_eq!(one, 1, "the first key, whatever it weighs");
    let (page, covered) = a
        .versions_within(&keys, usize::MAX, 3, std::time::Duration::MAX, 0)
        .unwrap();
    assert_eq!((covered, page.versions.len()), (3, 3), "at most 3 versions");
}

/// A key whose concurrent versions together are over a repair answer's bounds goes in part,
/// within them (one version at least), and answers with other rotations bring the rest: sent
/// whole it made an answer no frame could carry, and the link failed at every session.
#[test]
fn a_key_over_a_repair_answer_by_itself_goes_in_parts() {
    let sender = memory("s");
    for (i, o) in ["a", "b", "c", "d", "e"].iter().enumerate() {
        let s = memory(o);
        let value = serde_json::json!({"n": i, "pad": "x".repeat(3000)});
        let write = LocalWrite {
            collection: "c".into(),
            key: b"shared".to_vec(),
            value: Some(Value::from_json(&value, &Default::default()).unwrap()),
            schema: 0,
            meta: BTreeMap::new(),
            context: None,
        };
        s.commit_local(vec![write], &mut clock(), 1000).unwrap();
        ship(&s, &sender, o);
    }
    let keys = vec![b"c\0shared".to_vec()];
    let (whole, _) = sender
        .versions_within(&keys, usize::MAX, usize::MAX, std::time::Duration::MAX, 0)
        .unwrap();
    assert_eq!(whole.versions.len(), 5);
    let max_bytes = 8_000;
    let mut seen = std::collections::BTreeSet::new();
    for rotation in 0..5 {
        let (page, covered) = sender
            .versions_within(
                &keys,
                max_bytes,
                usize::MAX,
                std::time::Duration::MAX,
                rotation,
            )
            .unwrap();
        assert_eq!(covered, 1);
        let bytes: usize = page.versions.iter().map(|v| v.bytes().len()).sum();
        assert!(
            !page.versions.is_empty() && bytes <= max_bytes,
            "rotation {rotation}: {} versions, {bytes} bytes",
            page.versions.len()
        );
        assert_eq!(page.proofs.len(), page.versions.len());
        seen.extend(page.versions.iter().map(|v| (v.origin.to_string(), v.seq)));
    }
    assert_eq!(seen.len(), 5, "the rotations bring every version: {seen:?}");
}

/// A resolver whose epoch for the collection's keys is still last-writer-wins (an upgrade that
/// adds a plugin from a later time on, rolled out to this node first).
struct LwwEpoch;

impl edgerep_store::Resolver for LwwEpoch {
    fn resolves(&self, collection: &str) -> bool {
        collection == "c"
    }

    fn resolve(
        &self,
        _collection: &str,
        _key: &[u8],
        versions: &edgerep_store::Versions,
    ) -> edgerep_store::Resolution {
        edgerep_store::Resolution::lww(versions, edgerep_store::BY_LWW.into())
    }

    fn build(&self, _collection: &str) -> String {
        "lww".into()
    }
}

/// A node that runs a resolver plugin from a later time on, and one with no plugin for the
/// collection, hold the same rows for keys whose versions fall before that time: the first
/// kept a record "lww" and the second none, so the digests differed, and every key in
/// conflict was found and sent again at each comparison, for the whole rollout.
#[test]
fn a_last_writer_wins_epoch_keeps_no_record() {
    let (x, y) = (memory("x"), memory("y"));
    let upgraded = StoreWriter::new(memory_store("a").with_resolver(std::sync::Arc::new(LwwEpoch)));
    let plain = memory("b");
    let mut c = clock();
    x.commit_local(writes("k", 3, 1), &mut c, 1).unwrap();
    y.commit_local(writes("k", 3, 2), &mut c, 2).unwrap();
    for s in [&upgraded, &plain] {
        ship(&x, s, "x");
        ship(&y, s, "y");
    }
    let (versions, record) = upgraded.get_resolved("c", b"k0").unwrap();
    assert_eq!(versions.events().len(), 2, "in conflict");
    assert!(record.is_none(), "{record:?}");
    assert_eq!(
        upgraded.status().unwrap().digest,
        plain.status().unwrap().digest
    );
    assert!(differing_leaves(&upgraded, &plain).is_empty());
}
