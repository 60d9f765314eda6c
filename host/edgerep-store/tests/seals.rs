//! Origin seals in the store: local commits seal their events, a receiving store applies a
//! batch only when its seals match the chain over the events and verify, and a snapshot raises
//! a have only with the origin's seal. The keys here are stand-ins (a keyed hash per node) for
//! the node's certificate keys: what matters to the store is only that one node cannot make
//! another's signature.

use std::collections::BTreeMap;
use std::sync::Arc;

use edgerep_store::{
    EventDeadLetter, KeyError, Keys, LocalWrite, Received, StatePage, Store, StoreError,
    StoreWriter, Sync,
};
use edgerep_wire::event::EventLimits;
use edgerep_wire::seal::SEAL_EVERY_EVENTS;
use edgerep_wire::{EncodedEvent, HlcClock, NodeId, Seal, Value};
use redb::backends::InMemoryBackend;

/// Signs as `me` with a keyed hash; checks any node's signature the same way.
struct TestKeys {
    me: NodeId,
}

fn mac(node: &NodeId, message: &[u8]) -> Vec<u8> {
    let key = blake3::hash(node.as_str().as_bytes());
    blake3::keyed_hash(key.as_bytes(), message)
        .as_bytes()
        .to_vec()
}

impl Keys for TestKeys {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        Ok(mac(&self.me, message))
    }
    fn verify(&self, origin: &NodeId, _: u64, message: &[u8], sig: &[u8]) -> Result<(), KeyError> {
        if mac(origin, message) == sig {
            Ok(())
        } else {
            Err(KeyError::BadSignature(format!(
                "signature by {origin} does not verify"
            )))
        }
    }
    fn learn(&self, _: &NodeId, _: &[u8]) -> Result<(), KeyError> {
        Ok(())
    }
}

/// Keys that know no other node's certificate.
struct NoCertificates;

impl Keys for NoCertificates {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        Ok(mac(&node("u"), message))
    }
    fn verify(&self, origin: &NodeId, seq: u64, _: &[u8], _: &[u8]) -> Result<(), KeyError> {
        Err(KeyError::NoCertificate {
            origin: origin.clone(),
            seq,
        })
    }
    fn learn(&self, _: &NodeId, _: &[u8]) -> Result<(), KeyError> {
        Ok(())
    }
}

fn node(id: &str) -> NodeId {
    NodeId::parse(id).unwrap()
}

fn store(id: &str) -> StoreWriter {
    let (store, _) = Store::open_with_backend(
        InMemoryBackend::new(),
        "memory",
        &node(id),
        EventLimits::default(),
    )
    .unwrap();
    StoreWriter::new(store.with_keys(Arc::new(TestKeys { me: node(id) })))
}

fn writes(prefix: &str, n: usize) -> Vec<LocalWrite> {
    (0..n)
        .map(|i| LocalWrite {
            collection: "c".into(),
            key: format!("{prefix}{i}").into_bytes(),
            value: Some(
                Value::from_json(&serde_json::json!({ "i": i }), &Default::default()).unwrap(),
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

/// `origin`'s events after `after` up to `upto` and the seals among them, as a peer sends them.
fn batch(
    from: &StoreWriter,
    origin: &str,
    after: u64,
    upto: u64,
) -> (Vec<EncodedEvent>, Vec<Seal>) {
    let events = from
        .changelog(origin, after, (upto - after) as usize)
        .unwrap();
    let seals = from.seals(&node(origin), after, upto).unwrap();
    (events, seals)
}

/// The sequence numbers of `origin` that `store` holds seals at, up to `upto`.
fn sealed_at(store: &StoreWriter, origin: &str, upto: u64) -> Vec<u64> {
    store
        .seals(&node(origin), 0, upto)
        .unwrap()
        .iter()
        .map(|s| s.seq)
        .collect()
}

fn apply(to: &StoreWriter, events: Vec<EncodedEvent>, seals: &[Seal]) -> Result<(), StoreError> {
    let events = events.into_iter().map(Received::as_received).collect();
    to.apply_sealed(events, seals, &[], &[], Sync::Immediate, &mut clock(), 1)
        .map(drop)
}

#[test]
fn local_commits_are_sealed_at_their_end_and_every_256_events() {
    let a = store("a");
    let mut c = clock();
    a.commit_local(writes("x", 3), &mut c, 1).unwrap();
    a.commit_local(writes("y", 600), &mut c, 2).unwrap();
    let seqs = sealed_at(&a, "a", 603);
    let every = SEAL_EVERY_EVENTS;
    assert_eq!(seqs, [3, 3 + every, 3 + 2 * every, 603]);
    for s in a.seals(&node("a"), 0, 603).unwrap() {
        assert_eq!(s.signature, mac(&node("a"), &s.message()), "signed by a");
    }
}

#[test]
fn a_sealed_batch_applies_and_a_forged_one_changes_nothing() {
    let (a, b) = (store("a"), store("b"));
    let mut c = clock();
    a.commit_local(writes("x", 10), &mut c, 1).unwrap();
    a.commit_local(writes("y", 10), &mut c, 2).unwrap();

    // A changed value under the origin's genuine seal: the events no longer chain to it, and
    // the block the seal covers (all of it here) is not the one it signed. A forgery, not a
    // fork (another history the origin signed would match its own seal's block): refused
    // whole, naming the origin and the event, so the peer that sent it is known for a liar.
    let before = b.status().unwrap();
    let (mut events, seals) = batch(&a, "a", 0, 10);
    let mut changed = events[4].clone().into_event();
    changed.value = Some(Value::from_json(&serde_json::json!(666), &Default::default()).unwrap());
    events[4] = EncodedEvent::new(changed);
    let e = apply(&b, events, &seals).unwrap_err();
    assert!(matches!(e, StoreError::Forged { .. }), "{e}");
    assert!(
        e.to_string().contains("not the ones its seal signed"),
        "{e}"
    );
    assert_eq!(b.status().unwrap(), before);
    assert_eq!(b.status().unwrap().origins.get("a"), None);
    // A seal with the right chain hash, signed by another node.
    let (events, mut seals) = batch(&a, "a", 0, 10);
    seals[0].signature = mac(&node("b"), &seals[0].message());
    let e = apply(&b, events, &seals).unwrap_err();
    assert!(e.to_string().contains("does not verify"), "{e}");
    // Events past the last seal.
    let (mut events, seals) = batch(&a, "a", 0, 10);
    events.extend(a.changelog("a", 10, 3).unwrap());
    let e = apply(&b, events, &seals).unwrap_err();
    assert!(e.to_string().contains("after its last seal"), "{e}");
    assert!(matches!(e, StoreError::Forged { .. }));
    assert_eq!(
        b.status().unwrap(),
        before,
        "nothing of a forged batch is applied"
    );

    // The real thing, in two batches: the second continues the chain from the stored head.
    let (events, seals) = batch(&a, "a", 0, 10);
    apply(&b, events, &seals).unwrap();
    let (events, seals) = batch(&a, "a", 10, 20);
    apply(&b, events, &seals).unwrap();
    assert_eq!(b.status().unwrap().digest, a.status().unwrap().digest);
    // b now holds a's seals too, and can prove a's events to a third store.
    let third = store("c");
    let (events, seals) = batch(&b, "a", 0, 20);
    assert_eq!(seals.last().map(|s| s.seq), Some(20));
    apply(&third, events, &seals).unwrap();
}

/// Installs `page` from a peer with its proofs and seals, and `extra` seals (for the have).
fn install(
    to: &StoreWriter,
    page: &StatePage,
    have: Option<&edgerep_wire::Have>,
    extra: &[Seal],
) -> Result<edgerep_store::Installed, StoreError> {
    let mut seals = page.seals.clone();
    seals.extend(extra.iter().cloned());
    to.install_sealed(
        page.versions.clone(),
        &page.proofs,
        have,
        &seals,
        &[],
        None,
        Sync::Immediate,
    )
}

#[test]
fn a_snapshot_raises_a_have_only_with_the_origins_seal() {
    let (a, b) = (store("a"), store("b"));
    let mut c = clock();
    a.commit_local(writes("x", 5), &mut c, 1).unwrap();
    let page = a.state_page(None, 100, 1 << 20).unwrap();
    let have: edgerep_wire::Have = [(NodeId::parse("a").unwrap(), 5)].into();
    // Versions without the seal their proofs name.
    let e = b
        .install_sealed(
            page.versions.clone(),
            &page.proofs,
            Some(&have),
            &[],
            &[],
            None,
            Sync::Immediate,
        )
        .unwrap_err();
    assert!(e.to_string().contains("which the page lacks"), "{e}");
    // A have without the seal there.
    let e = b
        .install_sealed(vec![], &[], Some(&have), &[], &[], None, Sync::Immediate)
        .unwrap_err();
    assert!(e.to_string().contains("without a's seal"), "{e}");
    let mut forged = a.seals(&node("a"), 4, 5).unwrap();
    forged[0].signature = mac(&node("b"), &forged[0].message());
    let e = b
        .install_sealed(
            vec![],
            &[],
            Some(&have),
            &forged,
            &[],
            None,
            Sync::Immediate,
        )
        .unwrap_err();
    assert!(e.to_string().contains("does not verify"), "{e}");
    assert_eq!(b.status().unwrap().origins.get("a"), None);
    assert!(install(&b, &page, Some(&have), &[]).unwrap().wrote);
    assert_eq!(b.status().unwrap().origins["a"], 5);
    // The same page again, and a last page with nothing in it, change nothing: neither is
    // committed (a peer repeating pages costs this node no durable write).
    let digest = b.status().unwrap().digest;
    let again = install(&b, &page, Some(&have), &[]).unwrap();
    assert!(!again.wrote && again.changed == 0, "{again:?}");
    let empty = b
        .install_sealed(
            vec![],
            &[],
            Some(&edgerep_wire::Have::new()),
            &[],
            &[],
            None,
            Sync::Immediate,
        )
        .unwrap();
    assert!(!empty.wrote, "{empty:?}");
    assert_eq!(b.status().unwrap().digest, digest);
    // Later events of a continue the chain from the snapshot's seal.
    a.commit_local(writes("y", 3), &mut c, 2).unwrap();
    let (events, seals) = batch(&a, "a", 5, 8);
    apply(&b, events, &seals).unwrap();
    assert_eq!(b.status().unwrap().digest, a.status().unwrap().digest);
}

#[test]
fn a_restored_node_takes_its_own_events_back_from_a_sealed_snapshot() {
    // a wrote 5 events that b holds; a lost them (a wiped store under the same id).
    let (a, b) = (store("a"), store("b"));
    let mut c = clock();
    a.commit_local(writes("x", 5), &mut c, 1).unwrap();
    let (events, seals) = batch(&a, "a", 0, 5);
    apply(&b, events, &seals).unwrap();
    let restored = store("a");
    let page = b.state_page(None, 100, 1 << 20).unwrap();
    let have: edgerep_wire::Have = [(NodeId::parse("a").unwrap(), 5)].into();
    install(&restored, &page, Some(&have), &[]).unwrap();
    // Its next write continues after 5, its chain from the seal: no sequence number reused.
    let done = restored.commit_local(writes("z", 1), &mut c, 2).unwrap();
    assert_eq!(done[0].seq, 6);
    let (events, seals) = batch(&restored, "a", 5, 6);
    apply(&b, events, &seals).unwrap();
}

/// Every version of a snapshot page is proven one by one: from the changelog while its block
/// is there, from the proof kept when compaction removed it, and again from a store that only
/// ever had it from a snapshot. A changed version, a proof of another position, or a seal of
/// another block is refused whole.
#[test]
fn snapshot_versions_are_proven_one_by_one_also_after_compaction() {
    let (a, b) = (store("a"), store("b"));
    let mut c = clock();
    // Blocks of several events; later blocks overwrite some keys of earlier ones, so the live
    // versions sit scattered across blocks.
    a.commit_local(writes("k", 10), &mut c, 1).unwrap();
    a.commit_local(writes("k", 3), &mut c, 2).unwrap();
    a.commit_local(writes("m", 4), &mut c, 3).unwrap();
    a.commit_local(writes("k", 1), &mut c, 4).unwrap();
    let (events, seals) = batch(&a, "a", 0, 18);
    apply(&b, events, &seals).unwrap();
    let all: edgerep_wire::Have = [(NodeId::parse("a").unwrap(), 18)].into();

    // From the changelog.
    let page = b.state_page(None, 100, 1 << 20).unwrap();
    assert_eq!(page.versions.len(), 14);
    let fresh = store("c");
    install(&fresh, &page, None, &[]).unwrap();
    assert_eq!(fresh.status().unwrap().digest, a.status().unwrap().digest);

    // After compaction: only whole blocks go (a floor inside the first block removes nothing).
    let out = b
        .compact(
            &[(NodeId::parse("a").unwrap(), 7)].into(),
            1000,
            Sync::Immediate,
        )
        .unwrap();
    assert_eq!((out.removed, out.compacted.get("a").copied()), (0, None));
    let out = b.compact(&all, 1000, Sync::Immediate).unwrap();
    assert_eq!(out.removed, 18);
    let page = b.state_page(None, 100, 1 << 20).unwrap();
    assert_eq!(page.versions.len(), 14);
    let c_store = store("c");
    install(
        &c_store,
        &page,
        Some(&all),
        &b.seals(&node("a"), 17, 18).unwrap(),
    )
    .unwrap();
    assert_eq!(c_store.status().unwrap().digest, a.status().unwrap().digest);
    assert_eq!(b.verify().unwrap(), Ok(()));

    // A third hop: c never held a's events, only the snapshot; its page proves them too.
    let page = c_store.state_page(None, 100, 1 << 20).unwrap();
    let d = store("d");
    install(
        &d,
        &page,
        Some(&all),
        &c_store.seals(&node("a"), 17, 18).unwrap(),
    )
    .unwrap();
    assert_eq!(d.status().unwrap().digest, a.status().unwrap().digest);

    // Lies, each refused whole (nothing merged).
    let e_store = store("e");
    let mut changed = page.clone();
    let mut v3 = changed.versions[3].clone().into_event();
    v3.value = Some(Value::from_json(&serde_json::json!(666), &Default::default()).unwrap());
    changed.versions[3] = EncodedEvent::new(v3);
    let e = install(&e_store, &changed, None, &[]).unwrap_err();
    assert!(e.to_string().contains("is not what a sealed"), "{e}");
    let mut moved = page.clone();
    moved.proofs.swap(0, 1);
    assert!(install(&e_store, &moved, None, &[]).is_err());
    let mut short = page.clone();
    short.proofs.pop();
    let e = install(&e_store, &short, None, &[]).unwrap_err();
    assert!(e.to_string().contains("proofs"), "{e}");
    let mut other_seal = page.clone();
    let first_seal = other_seal.proofs[0].seal;
    other_seal.proofs[0].seal = other_seal
        .seals
        .iter()
        .map(|s| s.seq)
        .find(|&s| s != first_seal)
        .unwrap();
    assert!(install(&e_store, &other_seal, None, &[]).is_err());
    let mut resigned = page.clone();
    resigned.seals[0].signature = mac(&node("e"), &resigned.seals[0].message());
    let e = install(&e_store, &resigned, None, &[]).unwrap_err();
    assert!(e.to_string().contains("does not verify"), "{e}");
    assert_eq!(e_store.status().unwrap().state_entries, 0);

    // A version superseded after compaction loses its kept proof (swept by compaction); the
    // state's pages stay provable.
    a.commit_local(writes("m", 2), &mut c, 5).unwrap();
    let (events, seals) = batch(&a, "a", 18, 20);
    apply(&b, events, &seals).unwrap();
    b.compact(
        &[(NodeId::parse("a").unwrap(), 20)].into(),
        1000,
        Sync::Immediate,
    )
    .unwrap();
    let page = b.state_page(None, 100, 1 << 20).unwrap();
    let f = store("f");
    let upto: edgerep_wire::Have = [(NodeId::parse("a").unwrap(), 20)].into();
    install(
        &f,
        &page,
        Some(&upto),
        &b.seals(&node("a"), 19, 20).unwrap(),
    )
    .unwrap();
    assert_eq!(f.status().unwrap().digest, a.status().unwrap().digest);
    assert_eq!(b.verify().unwrap(), Ok(()));
}

#[test]
fn seals_made_before_the_node_had_keys_are_signed_when_it_gets_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.redb");
    let (bare, _) = StoreWriter::open(&path, &node("a"), EventLimits::default()).unwrap();
    let mut c = clock();
    bare.commit_local(writes("x", 3), &mut c, 1).unwrap();
    assert!(
        bare.seals(&node("a"), 0, 3).unwrap()[0]
            .signature
            .is_empty()
    );
    drop(bare);
    // The node restarts with keys.
    let (a, _) = Store::open(&path, &node("a"), EventLimits::default()).unwrap();
    let a = StoreWriter::new(a.with_keys(Arc::new(TestKeys { me: node("a") })));
    assert_eq!(a.sign_unsigned_seals().unwrap(), 1);
    assert_eq!(a.sign_unsigned_seals().unwrap(), 0);
    let b = store("b");
    let (events, seals) = batch(&a, "a", 0, 3);
    apply(&b, events, &seals).unwrap();
    assert_eq!(b.verify().unwrap(), Ok(()));
    assert_eq!(a.verify().unwrap(), Ok(()));
}

#[test]
fn a_run_between_seals_is_at_most_a_mebibyte_or_one_event() {
    let a = store("a");
    let mut c = clock();
    let big = |i: usize| LocalWrite {
        collection: "c".into(),
        key: format!("big{i}").into_bytes(),
        value: Some(
            Value::from_json(&serde_json::json!("x".repeat(600_000)), &Default::default()).unwrap(),
        ),
        schema: 0,
        meta: BTreeMap::new(),
        context: None,
    };
    // One transaction of two 600 KB events: sealed after the first, so that no run between
    // seals passes 1 MiB (a peer's frame holds a run whole).
    a.commit_local(vec![big(0), big(1)], &mut c, 1).unwrap();
    let seqs = sealed_at(&a, "a", 2);
    assert_eq!(seqs, [1, 2]);
}

#[test]
fn compaction_removes_the_seals_below_the_floor() {
    let a = store("a");
    let mut c = clock();
    for i in 0..5 {
        a.commit_local(writes(&format!("w{i}-"), 2), &mut c, 1)
            .unwrap();
    }
    assert_eq!(a.seals(&node("a"), 0, 10).unwrap().len(), 5);
    let floors: edgerep_wire::Have = [(NodeId::parse("a").unwrap(), 6)].into();
    a.compact(&floors, 100, Sync::Immediate).unwrap();
    let left = sealed_at(&a, "a", 10);
    assert_eq!(left, [6, 8, 10]);
    // A floor inside a block (9 is in 9..=10) stops at the block before it.
    let floors: edgerep_wire::Have = [(NodeId::parse("a").unwrap(), 9)].into();
    a.compact(&floors, 100, Sync::Immediate).unwrap();
    assert_eq!(sealed_at(&a, "a", 10), [8, 10]);
    let floors: edgerep_wire::Have = [(NodeId::parse("a").unwrap(), 10)].into();
    a.compact(&floors, 100, Sync::Immediate).unwrap();
    assert_eq!(sealed_at(&a, "a", 10), [10]);
    assert_eq!(a.verify().unwrap(), Ok(()));
}

/// Two histories an origin signed (a node restored from a backup and started alone, or its key
/// used twice): a store holding one takes the other's events of that origin nowhere, reports
/// the fork, and applies the rest of the batch.
#[test]
fn a_second_history_the_origin_signed_is_a_fork_not_a_forgery() {
    let (a, a_again, b, c) = (store("a"), store("a"), store("b"), store("c"));
    let mut clk = clock();
    a.commit_local(writes("x", 2), &mut clk, 1).unwrap();
    a_again
        .commit_local(writes("other", 4), &mut clk, 2)
        .unwrap();
    c.commit_local(writes("c", 2), &mut clk, 3).unwrap();
    let (events, seals) = batch(&a, "a", 0, 2);
    apply(&b, events, &seals).unwrap();
    // A batch with a's other history (events 1..4, validly sealed) and c's events.
    let (mut events, mut seals) = batch(&a_again, "a", 0, 4);
    let (more, more_seals) = batch(&c, "c", 0, 2);
    events.extend(more);
    seals.extend(more_seals);
    let received: Vec<Received> = events.into_iter().map(Received::as_received).collect();
    // A dead letter of one of the fork's events (a's third) and one of c's first: only c's,
    // whose event is applied, is set aside.
    let dead_letter = |origin: &str, seq: u64| EventDeadLetter {
        origin: NodeId::parse(origin).unwrap(),
        seq,
        record: format!("{origin}:{seq}").into_bytes(),
    };
    let dead_letters = [dead_letter("a", 3), dead_letter("c", 1)];
    let send = || {
        b.apply_sealed(
            received.clone(),
            &seals,
            &[],
            &dead_letters,
            Sync::Immediate,
            &mut clock(),
            1,
        )
        .unwrap()
    };
    let out = send();
    assert_eq!(out.forks.len(), 1, "{:?}", out.forks);
    assert_eq!((out.forks[0].origin.as_str(), out.forks[0].seq), ("a", 4));
    let held = b.status().unwrap().origins;
    assert_eq!(
        (held["a"], held["c"]),
        (2, 2),
        "a's first history kept, c's events applied"
    );
    assert_eq!(b.dead_letters(0, 10).unwrap(), [(1, b"c:1".to_vec())]);
    // The same batch again (a peer resends a fork each time it is asked): nothing more is set
    // aside, neither for the fork's events nor for c's, held now.
    let again = send();
    assert_eq!(again.forks.len(), 1, "{:?}", again.forks);
    assert!(again.dead_letters.is_empty(), "{:?}", again.dead_letters);
    assert_eq!(b.dead_letters_usage().unwrap().count, 1);
    assert_eq!(b.verify().unwrap(), Ok(()));
}

/// A fork whose block starts right after the held head: the seal covers exactly the received
/// events, and they are the ones the origin signed in its other history (the block's root is
/// the seal's). Still a fork, not a forgery: the peer that relays it is not lying.
#[test]
fn a_fork_whose_block_starts_at_the_held_head_is_a_fork() {
    let (a, a_again, b) = (store("a"), store("a"), store("b"));
    let mut clk = clock();
    a.commit_local(writes("x", 2), &mut clk, 1).unwrap();
    a_again
        .commit_local(writes("other", 2), &mut clk, 2)
        .unwrap();
    a_again
        .commit_local(writes("more", 2), &mut clk, 3)
        .unwrap();
    let (events, seals) = batch(&a, "a", 0, 2);
    apply(&b, events, &seals).unwrap();
    let (events, seals) = batch(&a_again, "a", 2, 4);
    assert_eq!((seals.len(), seals[0].first), (1, 3));
    let received: Vec<Received> = events.into_iter().map(Received::as_received).collect();
    let out = b
        .apply_sealed(received, &seals, &[], &[], Sync::Immediate, &mut clock(), 1)
        .unwrap();
    assert_eq!(out.forks.len(), 1, "{:?}", out.forks);
    assert_eq!(b.status().unwrap().origins["a"], 2);
}

/// Keys that hold `origin` revoked after its event `after`, as a node's do once a reload
/// revoked it.
struct RevokingKeys {
    inner: TestKeys,
    origin: NodeId,
    after: u64,
}

impl Keys for RevokingKeys {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        self.inner.sign(message)
    }
    fn verify(&self, origin: &NodeId, seq: u64, m: &[u8], sig: &[u8]) -> Result<(), KeyError> {
        if *origin == self.origin && seq > self.after {
            return Err(KeyError::Revoked {
                origin: origin.clone(),
                after: self.after,
                seq,
            });
        }
        self.inner.verify(origin, seq, m, sig)
    }
    fn learn(&self, _: &NodeId, _: &[u8]) -> Result<(), KeyError> {
        Ok(())
    }
}

/// A batch admitted before a reload revoked its origin reaches the store after: it is not
/// applied, and the error says revoked, not forged (the relaying peer is honest; cutting it
/// off as a liar would be wrong).
#[test]
fn a_batch_past_a_revocation_is_refused_as_revoked_not_forged() {
    let a = store("a");
    a.commit_local(writes("x", 10), &mut clock(), 1).unwrap();
    let (b, _) = Store::open_with_backend(
        InMemoryBackend::new(),
        "memory",
        &node("b"),
        EventLimits::default(),
    )
    .unwrap();
    let b = StoreWriter::new(b.with_keys(Arc::new(RevokingKeys {
        inner: TestKeys { me: node("b") },
        origin: node("a"),
        after: 5,
    })));
    let (events, seals) = batch(&a, "a", 0, 10);
    match apply(&b, events, &seals) {
        Err(StoreError::Revoked { origin, after, seq }) => {
            assert_eq!((origin.as_str(), after, seq), ("a", 5, 10));
        }
        other => panic!("expected Revoked, got {other:?}"),
    }
    assert!(
        b.changelog("a", 0, 10).unwrap().is_empty(),
        "nothing applied"
    );
}

/// A page of a snapshot before its last one comes without the have the snapshot's versions
/// were taken at. A version on it naming other origins' events nobody sealed (its origin
/// signed a lie) would stand over its key for good and pass the lie on to this node's own
/// writes of that key, which every peer would hold back. Such a page may name only what a
/// seal it carries proves exist: the sender adds one per origin its versions name.
#[test]
fn a_snapshot_page_before_the_last_names_only_events_a_seal_it_carries_proves() {
    let (x, p, r) = (store("x"), store("p"), store("r"));
    let mut c = clock();
    // x writes k0; p holds it and writes k0 over it: p's version names x's event.
    x.commit_local(writes("k", 1), &mut c, 1).unwrap();
    let (events, seals) = batch(&x, "x", 0, 1);
    apply(&p, events, &seals).unwrap();
    let over = LocalWrite {
        context: Some(p.get("c", b"k0").unwrap().context()),
        ..writes("k", 1).remove(0)
    };
    p.commit_local(vec![over], &mut c, 2).unwrap();
    let page = p.state_page(None, 100, 1 << 20).unwrap();
    assert_eq!(page.versions.len(), 1, "p's version supersedes x's");
    assert_eq!(page.versions[0].context.get(&node("x")), Some(1));
    // The page carries x's seal for the context, beside p's own.
    assert!(
        page.seals
            .iter()
            .any(|s| s.origin == node("x") && s.seq >= 1)
    );
    let out = install(&r, &page, None, &[]).unwrap();
    assert_eq!((out.changed, out.future_contexts), (1, 0), "{out:?}");
    // Without it, r holds nothing of x that proves the event named: left out.
    let r2 = store("r");
    let mut bare = page.clone();
    bare.seals.retain(|s| s.origin != node("x"));
    let out = install(&r2, &bare, None, &[]).unwrap();
    assert_eq!((out.changed, out.future_contexts), (0, 1), "{out:?}");
    // A lie p signed: its own event naming x's event 2^40, in a block of its own, with x's
    // real seal beside it (which proves only x's event 1). Left out.
    let mut lie = page.versions[0].clone().into_event();
    lie.seq = 2;
    lie.context.add(&edgerep_wire::event::Dot {
        origin: node("x"),
        seq: 1 << 40,
    });
    let lie = EncodedEvent::new(lie);
    let mut seal = Seal {
        origin: node("p"),
        seq: 2,
        first: 2,
        chain: [0; 32],
        root: edgerep_wire::seal::event_leaf(lie.bytes()),
        signature: Vec::new(),
    };
    seal.signature = mac(&node("p"), &seal.message());
    let x_seal: Vec<Seal> = page
        .seals
        .iter()
        .filter(|s| s.origin == node("x"))
        .cloned()
        .collect();
    let out = r2
        .install_sealed(
            vec![lie],
            &[edgerep_wire::seal::Proof {
                seal: 2,
                path: Vec::new(),
            }],
            None,
            &[vec![seal], x_seal].concat(),
            &[],
            None,
            Sync::Immediate,
        )
        .unwrap();
    assert_eq!((out.changed, out.future_contexts), (0, 1), "{out:?}");
    // A seal of x's that does not verify proves nothing either (and is no forgery: no version
    // names it).
    let mut fake = page.clone();
    for s in fake.seals.iter_mut().filter(|s| s.origin == node("x")) {
        s.signature = mac(&node("p"), &s.message());
    }
    let out = install(&r2, &fake, None, &[]).unwrap();
    assert_eq!((out.changed, out.future_contexts), (0, 1), "{out:?}");
    assert_eq!(r2.status().unwrap().origins.get("p"), None);
    // Two seals of x at one seq: the real one, and one whose root proves an event x never
    // wrote. The version is proven by the one the page's check picks, which must verify
    // itself: the real one verifying vouches for nothing else.
    let mut made_up = x.changelog("x", 0, 1).unwrap()[0].clone().into_event();
    made_up.key = b"made-up".to_vec();
    let made_up = EncodedEvent::new(made_up);
    let real = x.seals(&node("x"), 0, 1).unwrap().remove(0);
    let mut forged = Seal {
        first: 1,
        root: edgerep_wire::seal::event_leaf(made_up.bytes()),
        ..real.clone()
    };
    forged.signature = mac(&node("p"), &forged.message());
    let e = r2
        .install_sealed(
            vec![made_up],
            &[edgerep_wire::seal::Proof {
                seal: 1,
                path: Vec::new(),
            }],
            None,
            &[real, forged],
            &[],
            None,
            Sync::Immediate,
        )
        .unwrap_err();
    assert!(e.to_string().contains("does not verify"), "{e}");
    assert!(r2.get("c", b"made-up").unwrap().events().is_empty());
}

/// A batch that starts past what the store holds of its origin (in a node, an earlier batch of
/// the origin is still at the committer) is checked by the batch alone before a transform's
/// failure on it may halt anything: whole blocks under seals whose root and signature match
/// pass; changed events or a seal the origin did not sign are forgeries; events whose block
/// the batch does not hold whole, or that no seal covers, are not shown either way.
#[test]
fn a_batch_ahead_of_the_store_is_proven_by_itself_or_not_at_all() {
    let (a, b) = (store("a"), store("b"));
    let mut c = clock();
    a.commit_local(writes("x", 10), &mut c, 1).unwrap();
    a.commit_local(writes("y", 10), &mut c, 2).unwrap();
    a.commit_local(writes("z", 10), &mut c, 3).unwrap();
    assert_eq!(sealed_at(&a, "a", 30), [10, 20, 30]);
    // b holds a's events up to 10; 11..=20 would be on their way to its store.
    let (events, seals) = batch(&a, "a", 0, 10);
    apply(&b, events, &seals).unwrap();

    // The block 21..=30 whole, with its genuine seal: shown to be a's.
    let (events, seals) = batch(&a, "a", 20, 30);
    b.check_sealed(&events, &seals, &[]).unwrap();
    b.check_sealed_but_forks(&events, &seals, &[]).unwrap();

    // One of its events changed under that seal: forged.
    let (mut events, seals) = batch(&a, "a", 20, 30);
    let mut changed = events[3].clone().into_event();
    changed.value = Some(Value::from_json(&serde_json::json!(666), &Default::default()).unwrap());
    events[3] = EncodedEvent::new(changed);
    for e in [
        b.check_sealed(&events, &seals, &[]).unwrap_err(),
        b.check_sealed_but_forks(&events, &seals, &[]).unwrap_err(),
    ] {
        assert!(matches!(e, StoreError::Forged { seq: 30, .. }), "{e}");
        assert!(
            e.to_string().contains("not the ones its seal signed"),
            "{e}"
        );
    }

    // Made-up events under a seal made to match them, signed by another node: forged.
    let (mut events, mut seals) = batch(&a, "a", 20, 30);
    events[3] = {
        let mut e = events[3].clone().into_event();
        e.value = Some(Value::from_json(&serde_json::json!(7), &Default::default()).unwrap());
        EncodedEvent::new(e)
    };
    let leaves: Vec<_> = events.iter().map(|e| e.leaf()).collect();
    let seal = seals.iter_mut().find(|s| s.seq == 30).unwrap();
    seal.root = edgerep_wire::seal::merkle_root(&leaves);
    seal.signature = mac(&node("m"), &seal.message());
    let e = b.check_sealed(&events, &seals, &[]).unwrap_err();
    assert!(matches!(e, StoreError::Forged { .. }), "{e}");
    assert!(e.to_string().contains("does not verify"), "{e}");

    // Events with no seal at all, or part of a block: nothing shown, and not a forgery either
    // (an honest batch may start inside a block; it is taken again once the store holds what
    // comes before it).
    let (events, _) = batch(&a, "a", 20, 30);
    let e = b.check_sealed(&events[..4], &[], &[]).unwrap_err();
    assert!(matches!(e, StoreError::Unproven { seq: 21, .. }), "{e}");
    let (events, seals) = batch(&a, "a", 20, 30);
    let e = b.check_sealed(&events[2..], &seals, &[]).unwrap_err();
    assert!(matches!(e, StoreError::Unproven { seq: 23, .. }), "{e}");
    assert!(e.to_string().contains("whole block"), "{e}");

    // A store that has no certificate of the origin yet (it may come with an earlier batch
    // still on its way to the store): not shown either way, not a forgery.
    let (unknown, _) = Store::open_with_backend(
        InMemoryBackend::new(),
        "memory",
        &node("u"),
        EventLimits::default(),
    )
    .unwrap();
    let unknown = StoreWriter::new(unknown.with_keys(Arc::new(NoCertificates)));
    let (events, seals) = batch(&a, "a", 20, 30);
    let e = unknown.check_sealed(&events, &seals, &[]).unwrap_err();
    assert!(matches!(e, StoreError::Unproven { seq: 21, .. }), "{e}");
    assert!(e.to_string().contains("no certificate"), "{e}");

    // Events b already holds are not checked (they would not apply), and events next to what
    // it holds are still walked from its head.
    let (events, seals) = batch(&a, "a", 0, 20);
    b.check_sealed(&events, &seals, &[]).unwrap();
    assert_eq!(b.status().unwrap().origins.get("a"), Some(&10));
}

/// An origin's certificates as batches bring them: the first is kept, others are added beside
/// it (a copy once), none replaces one held, and past the bound per origin no more are kept (a
/// relay sends every one it holds, so a peer holding only some can verify every seal).
#[test]
fn an_origins_certificates_are_added_never_replaced() {
    use edgerep_wire::seal::MAX_CERTS_PER_ORIGIN;
    let a = store("a");
    let b = store("b");
    let mut c = clock();
    let cert = |i: u8| vec![i; 40 + usize::from(i)];
    for i in 0..(MAX_CERTS_PER_ORIGIN as u8 + 2) {
        a.commit_local(writes(&format!("w{i}-"), 1), &mut c, 1)
            .unwrap();
        let (events, seals) = batch(&a, "a", u64::from(i), u64::from(i) + 1);
        let events = events.into_iter().map(Received::as_received).collect();
        // Each batch carries a new certificate and the first one again.
        let certs = vec![(node("a"), cert(i)), (node("a"), cert(0))];
        b.apply_sealed(events, &seals, &certs, &[], Sync::Immediate, &mut c, 1)
            .unwrap();
        let held = b.certs_of(&node("a")).unwrap();
        assert_eq!(held[0], cert(0), "the first stays first");
        let mut sorted = held.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), held.len(), "each once: {held:?}");
        let expected = usize::from(i + 1).min(MAX_CERTS_PER_ORIGIN);
        assert_eq!(held.len(), expected);
        for j in 0..expected as u8 {
            assert!(held.contains(&cert(j)), "{j}");
        }
    }
    let all = b.certs().unwrap();
    assert_eq!(all.len(), MAX_CERTS_PER_ORIGIN);
    assert!(all.iter().all(|(o, _)| *o == node("a")));
    assert!(b.certs_of(&node("z")).unwrap().is_empty());
}

/// Keys that count the signatures they check.
struct Counting {
    inner: TestKeys,
    verified: std::sync::atomic::AtomicU64,
}

impl Keys for Counting {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        self.inner.sign(message)
    }
    fn verify(&self, origin: &NodeId, seq: u64, m: &[u8], sig: &[u8]) -> Result<(), KeyError> {
        self.verified
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.verify(origin, seq, m, sig)
    }
    fn learn(&self, _: &NodeId, _: &[u8]) -> Result<(), KeyError> {
        Ok(())
    }
}

/// A snapshot page of versions the state holds byte for byte changes nothing, and now buys no
/// signature check either (before, a peer sending such pages under ever new seals had each seal
/// checked on the committer, page after page); a version the state lacks is checked as before.
#[test]
fn held_versions_in_a_snapshot_page_buy_no_signature_check() {
    let a = store("a");
    let keys = Arc::new(Counting {
        inner: TestKeys { me: node("b") },
        verified: Default::default(),
    });
    let (opened, _) = Store::open_with_backend(
        InMemoryBackend::new(),
        "memory",
        &node("b"),
        EventLimits::default(),
    )
    .unwrap();
    let b = StoreWriter::new(opened.with_keys(keys.clone()));
    let verified = || keys.verified.load(std::sync::atomic::Ordering::Relaxed);
    let mut c = clock();
    a.commit_local(writes("x", 5), &mut c, 1).unwrap();
    let page = a.state_page(None, 100, 1 << 20).unwrap();
    assert!(install(&b, &page, None, &[]).unwrap().wrote);
    let first = verified();
    assert!(first >= 1, "the page's seal was checked");
    for _ in 0..10 {
        let again = install(&b, &page, None, &[]).unwrap();
        assert!(!again.wrote && again.changed == 0, "{again:?}");
    }
    assert_eq!(verified(), first, "held versions checked again");
    a.commit_local(writes("y", 1), &mut c, 2).unwrap();
    let page = a.state_page(None, 100, 1 << 20).unwrap();
    let merged = install(&b, &page, None, &[]).unwrap();
    assert_eq!(merged.changed, 1, "{merged:?}");
    assert!(verified() > first, "a version not held is checked");
}

/// Keys whose slots for every origin's certificates are full: each certificate a batch brings
/// is one too many (a renewal past the bound), though the held ones verify.
struct FullSlots(TestKeys);

impl Keys for FullSlots {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        self.0.sign(message)
    }
    fn verify(
        &self,
        origin: &NodeId,
        seq: u64,
        message: &[u8],
        sig: &[u8],
    ) -> Result<(), KeyError> {
        self.0.verify(origin, seq, message, sig)
    }
    fn learn(&self, origin: &NodeId, _: &[u8]) -> Result<(), KeyError> {
        Err(KeyError::TooManyCertificates {
            origin: origin.clone(),
            held: 4,
        })
    }
}

/// The check before transforms on apply (and of events admission holds back) takes a
/// certificate too many as the committer does: no lie, so a genuine batch passes (before, it
/// was called forged, and the honest peer that relayed it was cut off).
#[test]
fn a_certificate_too_many_is_no_forgery_in_the_check_before_applying() {
    let a = store("a");
    a.commit_local(writes("x", 5), &mut clock(), 1).unwrap();
    let (store_b, _) = Store::open_with_backend(
        InMemoryBackend::new(),
        "memory",
        &node("b"),
        EventLimits::default(),
    )
    .unwrap();
    let b = StoreWriter::new(store_b.with_keys(Arc::new(FullSlots(TestKeys { me: node("b") }))));
    let (events, seals) = batch(&a, "a", 0, 5);
    let certs = [(node("a"), b"a renewed certificate".to_vec())];
    b.check_sealed_but_forks(&events, &seals, &certs).unwrap();
    b.check_sealed(&events, &seals, &certs).unwrap();
    // A forged seal still is one.
    let mut forged = seals.clone();
    forged[0].signature = mac(&node("b"), &forged[0].message());
    let e = b.check_sealed(&events, &forged, &certs).unwrap_err();
    assert!(matches!(e, StoreError::Forged { .. }), "{e}");
}
