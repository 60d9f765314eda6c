//! The committer thread over a real store on disk: how it answers requests the store refuses.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use edgerep_node::committer::{CommitError, Committer, Links, SyncPolicy};
use edgerep_store::idempotency::Receipt;
use edgerep_store::{LocalWrite, Store, StoreWriter};
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
    let (store, resume) = Store::open(
        &dir.join("s.redb"),
        &NodeId::parse("a").unwrap(),
        EventLimits::default(),
    )
    .unwrap();
    let (feed, _) = watch::channel(resume.feed_last);
    // Leaked so the gate stays open (no reason held) for the test's life.
    let (gate_tx, gate) = watch::channel(None);
    std::mem::forget(gate_tx);
    Committer::spawn(
        StoreWriter::new(store),
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
        },
    )
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
