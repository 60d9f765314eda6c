//! The committer thread over a real store on disk: how it answers requests the store refuses.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use edgerep_node::committer::{ApplyChain, CommitError, Committer, Links, SyncPolicy};
use edgerep_node::dead_letter_budget::DeadLetterLimits;
use edgerep_store::idempotency::Receipt;
use edgerep_store::{DeadLetterUsage, LocalWrite, Store, StoreWriter};
use edgerep_wire::event::EventLimits;
use edgerep_wire::{HlcClock, NodeId, Value};
use tokio::sync::watch;

fn write(key: &str) -> LocalWrite {
    LocalWrite {
        collection: "c".into(),
        key: key.as_bytes().to_vec(),
        value: Some(Value::from_json(&serde_json::json!(1), &Default::default()).unwrap()),
        schema: 0,
        meta: BTreeMap::new(),
        context: None,
    }
}

/// A receipt of a request whose writes all failed: it records only its answer.
fn failure_receipt(key: &str) -> Receipt {
    Receipt {
        key: key.into(),
        body: [3; 32],
        first: 0,
        count: 0,
        extra: b"failed".to_vec(),
    }
}

fn committer(dir: &std::path::Path) -> (Committer, std::thread::JoinHandle<()>) {
    let (c, thread, _) = committer_reading(dir);
    (c, thread)
}

/// [`committer`] and a reader of its store.
fn committer_reading(
    dir: &std::path::Path,
) -> (Committer, std::thread::JoinHandle<()>, Arc<Store>) {
    let (store, resume) = Store::open(
        &dir.join("s.redb"),
        &NodeId::parse("a").unwrap(),
        EventLimits::default(),
    )
    .unwrap();
    let writer = StoreWriter::new(store);
    let reader = writer.reader();
    let (c, thread, _) = spawn(writer, resume);
    (c, thread, reader)
}

/// A committer over `store`, and what it says when the disk fails.
fn spawn(
    store: StoreWriter,
    resume: edgerep_store::Resume,
) -> (
    Committer,
    std::thread::JoinHandle<()>,
    watch::Receiver<Option<String>>,
) {
    let (feed, _) = watch::channel(resume.feed_last);
    let (disk_failed, failed) = watch::channel(None);
    // Leaked so the gate stays open (no reason held) for the test's life.
    let (gate_tx, gate) = watch::channel(None);
    std::mem::forget(gate_tx);
    Committer::spawn(
        store,
        HlcClock::new(resume.hlc_last, 60_000),
        1000,
        SyncPolicy {
            periodic: Default::default(),
            interval: Duration::from_millis(100),
        },
        Links {
            feed,
            hook: Box::new(|_| {}),
            origin_gate: gate,
            metrics: Arc::new(Default::default()),
            disk_failed,
        },
    )
    .map(|(c, t)| (c, t, failed))
    .unwrap()
}

/// `f`'s outcome, which must come within 10 s (the committer once retried a group for ever).
async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .expect("answered within 10 s")
}

/// A key recorded by a request with no writes (a failure's answer), sent again: the second
/// gets `KeyInUse` and the thread goes on. It once looked for the request "holding write
/// `index`", found none for a request of no writes, and retried the same group for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_in_use_on_a_request_of_no_writes_fails_that_request_only() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _thread) = committer(dir.path());
    within(c.commit_keyed(vec![], vec![], vec![failure_receipt("K")]))
        .await
        .expect("first record committed");
    let again = within(c.commit_keyed(vec![], vec![], vec![failure_receipt("K")])).await;
    assert_eq!(again, Err(CommitError::KeyInUse("K".into())));
    // Sent together, so that they may share a group: the refused key fails its own request,
    // the write beside it (no key) commits, every time.
    for i in 0..50 {
        let key = format!("w{i}");
        let (refused, plain) = tokio::join!(
            within(c.commit_keyed(vec![], vec![], vec![failure_receipt("K")])),
            within(c.commit(vec![write(&key)])),
        );
        assert_eq!(refused, Err(CommitError::KeyInUse("K".into())));
        let plain = plain.expect("the unkeyed write commits");
        assert_eq!(plain.len(), 1);
    }
}

/// A request's dead letters are kept in the transaction of its writes and key: a request
/// refused (its key in use) keeps none, and one committed keeps them under the ids its answer
/// named. (They were once kept in a transaction of their own before the key's: a crash between
/// the two, or a refusal of the second, left a dead letter whose retry set the write aside
/// again, and a replay of each committed it twice.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_s_dead_letters_commit_with_its_writes_and_key_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _thread, store) = committer_reading(dir.path());
    within(c.commit_keyed(vec![], vec![], vec![failure_receipt("K")]))
        .await
        .expect("first record committed");
    // Each request takes its places under the limits as it would.
    let budget = c.dead_letter_budget().clone();
    let limits = DeadLetterLimits {
        count: 10,
        bytes: 1000,
    };
    let places = |records: &[&[u8]]| {
        let mut p = budget.promise();
        let bytes = records.iter().map(|r| r.len() as u64).sum();
        p.take(limits, records.len() as u64, bytes).unwrap();
        p
    };
    let usage = |count, bytes| DeadLetterUsage { count, bytes };
    let refused_set = store.set_aside(vec![b"set aside".to_vec()]);
    let id = refused_set.records[0].0;
    let refused = within(c.commit_setting_aside(
        vec![write("beside")],
        vec![],
        refused_set,
        places(&[b"set aside"]),
        vec![failure_receipt("K")],
    ))
    .await;
    assert_eq!(refused, Err(CommitError::KeyInUse("K".into())));
    assert_eq!(
        budget.used(),
        usage(0, 0),
        "the refused request's place is given back"
    );
    assert!(
        store.dead_letters(0, 10).unwrap().is_empty(),
        "nothing kept"
    );
    assert_eq!(store.status().unwrap().feed_last, 0, "nothing written");
    // Committed: the dead letters under their reserved ids (the refused one's id is skipped),
    // the write and the key together.
    let set = store.set_aside(vec![b"one".to_vec(), b"two".to_vec()]);
    let first = set.records[0].0;
    assert_eq!(first, id + 1);
    // Reserved later and committed first: held back from listings until the earlier ones are
    // settled, so a client paging with `after` does not skip them.
    let late = store.set_aside(vec![b"three".to_vec()]);
    within(c.commit_setting_aside(vec![], vec![], late, places(&[b"three"]), vec![]))
        .await
        .expect("committed");
    let held = store.set_aside(vec![b"four".to_vec()]);
    assert!(
        store.dead_letters(0, 10).unwrap().is_empty(),
        "{first} is still reserved"
    );
    let committed = within(c.commit_setting_aside(
        vec![write("beside")],
        vec![],
        set,
        places(&[b"one", b"two"]),
        vec![failure_receipt("K2")],
    ))
    .await
    .expect("committed");
    assert_eq!(committed.len(), 1);
    assert_eq!(
        store.dead_letters(0, 10).unwrap(),
        vec![
            (first, b"one".to_vec()),
            (first + 1, b"two".to_vec()),
            (first + 2, b"three".to_vec())
        ],
        "listed up to the one still reserved"
    );
    drop(held);
    assert_eq!(store.dead_letters(first + 1, 10).unwrap().len(), 1);
    assert!(store.idempotency("K2").unwrap().is_some());
    assert_eq!(
        budget.used(),
        usage(3, 11),
        "the three committed count as held, by the store's count"
    );
    assert_eq!(within(c.remove_dead_letter(first)).await, Ok(true));
    assert_eq!(within(c.remove_dead_letter(first)).await, Ok(false));
    assert_eq!(budget.used(), usage(2, 8), "a removal counts once");
}

/// An in-memory disk that can be told to fail every write and sync, or only syncs.
#[derive(Debug, Clone, Default)]
struct FailingDisk {
    inner: Arc<redb::backends::InMemoryBackend>,
    failing: Arc<std::sync::atomic::AtomicBool>,
    failing_sync: Arc<std::sync::atomic::AtomicBool>,
}

impl FailingDisk {
    fn check(&self) -> std::io::Result<()> {
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(std::io::Error::other("injected disk failure"));
        }
        Ok(())
    }
}

impl redb::StorageBackend for FailingDisk {
    fn len(&self) -> std::io::Result<u64> {
        self.inner.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.inner.read(offset, out)
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.check()?;
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        self.check()?;
        if self.failing_sync.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(std::io::Error::other("injected sync failure"));
        }
        self.inner.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.check()?;
        self.inner.write(offset, data)
    }
    fn close(&self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A disk that fails under the store (full, say) is reported once, with its reason, so the
/// node stops instead of answering 500 for ever: redb refuses every later operation until
/// the file is opened again, even once the disk is fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_fails_under_the_store_is_reported() {
    let disk = FailingDisk::default();
    let (store, resume) = Store::open_with_backend(
        disk.clone(),
        "disk",
        &NodeId::parse("a").unwrap(),
        EventLimits::default(),
    )
    .unwrap();
    let (c, _thread, failed) = spawn(StoreWriter::new(store), resume);
    within(c.commit(vec![write("before")])).await.unwrap();
    assert_eq!(*failed.borrow(), None);
    disk.failing
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let e = within(c.commit(vec![write("during")])).await.unwrap_err();
    assert!(
        matches!(&e, CommitError::DiskFailed(r) if r.contains("injected disk failure")),
        "{e:?}"
    );
    let reason = failed.borrow().clone().expect("the failure is reported");
    assert!(reason.contains("injected disk failure"), "{reason}");
    // Healed, the store still refuses (redb wants a reopen): hence the node stops. The
    // refusal names the first failure, not redb's "previous I/O error".
    disk.failing
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let e = within(c.commit(vec![write("after")])).await.unwrap_err();
    assert!(
        matches!(&e, CommitError::DiskFailedEarlier(r) if r.contains("injected disk failure")),
        "{e:?}"
    );
    assert!(e.to_string().contains("nothing of this was written"), "{e}");
}

/// A sync that fails after the commit's pages were written: redb wrote its header before the
/// sync, so the group may well be there after a restart. The answer said "nothing written",
/// on which a client retrying without an idempotency key wrote twice; now it says the outcome
/// is unknown and how to find out. (Here the in-memory disk keeps what was written: the write
/// is there when the store is opened again.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_that_fails_says_the_write_may_be_durable() {
    let disk = FailingDisk::default();
    let node = NodeId::parse("a").unwrap();
    let (store, resume) =
        Store::open_with_backend(disk.clone(), "disk", &node, EventLimits::default()).unwrap();
    let (c, thread, failed) = spawn(StoreWriter::new(store), resume);
    within(c.commit(vec![write("before")])).await.unwrap();
    disk.failing_sync
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let e = within(c.commit(vec![write("during")])).await.unwrap_err();
    let text = e.to_string();
    assert!(
        matches!(&e, CommitError::DiskFailed(_))
            && text.contains("injected sync failure")
            && text.contains("may be durable")
            && !text.contains("nothing written"),
        "{text}"
    );
    assert!(failed.borrow().is_some());
    drop(c);
    thread.join().unwrap();
    let healed = FailingDisk {
        inner: disk.inner.clone(),
        ..FailingDisk::default()
    };
    let (store, _) =
        Store::open_with_backend(healed, "disk", &node, EventLimits::default()).unwrap();
    assert_eq!(
        store.get("c", b"during").unwrap().events().len(),
        1,
        "the write whose sync failed is there after a restart"
    );
}

/// One key whose stored state cannot be read (a damaged disk; here `debug damage
/// --flip-byte`): a write to it is refused, with the reason, and a write to another key sent
/// at the same time commits. Before, the whole group failed with "store failed", for as long
/// as the row stayed damaged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_row_refuses_only_the_writes_to_its_key() {
    let (store, resume) = Store::open_with_backend(
        redb::backends::InMemoryBackend::new(),
        "memory",
        &NodeId::parse("a").unwrap(),
        EventLimits::default(),
    )
    .unwrap();
    let writer = StoreWriter::new(store);
    let mut clock = HlcClock::new(resume.hlc_last, 60_000);
    writer
        .commit_local(vec![write("bad"), write("good")], &mut clock, 1)
        .unwrap();
    writer
        .damage(
            "c",
            &[b"bad".to_vec()],
            edgerep_store::aae::Damage::FlipByte,
        )
        .unwrap();
    let reader = writer.reader();
    assert!(reader.get("c", b"bad").is_err(), "the row is unreadable");
    let (c, _thread, failed) = spawn(writer, resume);
    let (bad, good) = tokio::join!(
        within(c.commit(vec![write("bad")])),
        within(c.commit(vec![write("good")]))
    );
    assert!(
        matches!(&bad, Err(CommitError::Refused(r)) if r.contains("cannot be read")),
        "{bad:?}"
    );
    good.expect("a write to another key commits");
    assert_eq!(reader.get("c", b"good").unwrap().events().len(), 1);
    assert_eq!(*failed.borrow(), None, "no disk failure");
}

/// A panic on the committer thread (a bug; here in a resolver it runs) used to leave the node
/// up with nothing to write: every write answered `shutting_down` and peers' applies went
/// unanswered, with nothing for a supervisor to see. Now it is reported as the store stopping,
/// which stops the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_on_the_committer_thread_is_reported() {
    struct Panics;
    impl edgerep_store::Resolver for Panics {
        fn resolves(&self, _: &str) -> bool {
            true
        }
        fn resolve(
            &self,
            _: &str,
            _: &[u8],
            _: &edgerep_store::Versions,
        ) -> edgerep_store::Resolution {
            panic!("a resolver bug")
        }
        fn build(&self, _: &str) -> String {
            "test".into()
        }
    }
    let open = |id: &str| {
        Store::open_with_backend(
            redb::backends::InMemoryBackend::new(),
            "memory",
            &NodeId::parse(id).unwrap(),
            EventLimits::default(),
        )
        .unwrap()
    };
    let (store, resume) = open("a");
    let writer = StoreWriter::new(store.with_resolver(Arc::new(Panics)));
    let mut clock = HlcClock::new(resume.hlc_last, 60_000);
    writer
        .commit_local(vec![write("k")], &mut clock, 1)
        .unwrap();
    let other = StoreWriter::new(open("b").0);
    other.commit_local(vec![write("k")], &mut clock, 2).unwrap();
    let events: Vec<_> = other
        .changelog("b", 0, usize::MAX)
        .unwrap()
        .into_iter()
        .map(edgerep_store::Received::as_received)
        .collect();
    let seals = other.seals(&NodeId::parse("b").unwrap(), 0, 1).unwrap();
    let (c, thread, failed) = spawn(writer, resume);
    // A concurrent version of k: the resolver runs, and panics.
    let applier = c.clone();
    tokio::task::spawn_blocking(move || {
        applier.apply(
            events,
            seals,
            vec![],
            vec![],
            Default::default(),
            ApplyChain::default(),
            [(NodeId::parse("b").unwrap(), 1)].into(),
            Box::new(|_| {}),
        )
    })
    .await
    .unwrap()
    .unwrap();
    assert!(thread.join().is_err(), "the thread panicked");
    let reason = failed.borrow().clone().expect("the panic is reported");
    assert!(reason.contains("committer thread panicked"), "{reason}");
}

/// A peer's batches queue at the committer one behind the other, each admitted counting on the
/// ones before it. Once one fails, the one behind it on the same chain is refused unapplied
/// (naming the first failure), though it would apply alone; on a new chain it applies.
#[test]
fn a_batch_behind_a_failed_one_of_its_chain_is_refused_unapplied() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _thread, reader) = committer_reading(dir.path());
    let (other, resume) = Store::open_with_backend(
        redb::backends::InMemoryBackend::new(),
        "memory",
        &NodeId::parse("b").unwrap(),
        EventLimits::default(),
    )
    .unwrap();
    let other = StoreWriter::new(other);
    let mut clock = HlcClock::new(resume.hlc_last, 60_000);
    other
        .commit_local(vec![write("k1")], &mut clock, 1)
        .unwrap();
    other
        .commit_local(vec![write("k2")], &mut clock, 2)
        .unwrap();
    let b = NodeId::parse("b").unwrap();
    let event = |seq: u64| {
        vec![edgerep_store::Received::as_received(
            other.changelog("b", seq - 1, 1).unwrap().remove(0),
        )]
    };
    let seal = |seq: u64| other.seals(&b, seq - 1, seq).unwrap();
    // Each batch carries a dead letter, its place under the limit taken.
    let budget = c.dead_letter_budget().clone();
    let apply = |chain: &ApplyChain, seq: u64| {
        let (tx, rx) = std::sync::mpsc::channel();
        let record = format!("set aside with b:{seq}").into_bytes();
        let mut promise = budget.promise();
        let limits = DeadLetterLimits {
            count: 10,
            bytes: 1000,
        };
        promise.take(limits, 1, record.len() as u64).unwrap();
        c.apply(
            event(seq),
            seal(seq),
            vec![],
            vec![edgerep_store::EventDeadLetter {
                origin: b.clone(),
                seq,
                record,
            }],
            promise,
            chain.clone(),
            [(b.clone(), seq)].into(),
            Box::new(move |r| {
                let _ = tx.send(r.map(|_| ()));
            }),
        )
        .unwrap();
        rx
    };
    let chain = ApplyChain::default();
    // b:2 before b:1 (the batch before it, which held b:1, was lost): a gap.
    let first = apply(&chain, 2);
    let second = apply(&chain, 1);
    let answer = Duration::from_secs(10);
    let first = first.recv_timeout(answer).unwrap();
    assert!(
        matches!(&first, Err(CommitError::Store(e)) if e.contains("b:2 arrived before b:1")),
        "{first:?}"
    );
    let second = second.recv_timeout(answer).unwrap();
    let Err(CommitError::Store(reason)) = &second else {
        panic!("refused: {second:?}");
    };
    assert!(
        reason.contains("not applied, since the batch of the same peer before it failed"),
        "{reason}"
    );
    assert!(chain.broken().is_some());
    assert!(
        reader.get("c", b"k1").unwrap().events().is_empty(),
        "nothing applied"
    );
    assert!(reader.dead_letters(0, 10).unwrap().is_empty());
    assert_eq!(
        budget.used(),
        DeadLetterUsage::default(),
        "the places of both are given back"
    );
    // The same batch on a new chain applies.
    apply(&ApplyChain::default(), 1)
        .recv_timeout(answer)
        .unwrap()
        .expect("applied");
    assert_eq!(reader.get("c", b"k1").unwrap().events().len(), 1);
    assert_eq!(reader.dead_letters(0, 10).unwrap().len(), 1);
    let held = DeadLetterUsage {
        count: 1,
        bytes: 18,
    };
    assert_eq!(
        budget.used(),
        held,
        "the dead letter committed counts as held"
    );
}
