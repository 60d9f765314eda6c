//! Idempotency records: written with the commit, found again after a reopen, refused twice,
//! and expired by time (on the wall clock, and for records of this process on the monotonic
//! clock too) and by count, oldest first.

use std::collections::BTreeMap;

use edgerep_store::idempotency::{Receipt, Window};
use edgerep_store::{LocalWrite, Store, StoreError, StoreWriter, Sync};
use edgerep_wire::event::EventLimits;
use edgerep_wire::{HlcClock, NodeId, Value};

fn write(key: &str) -> LocalWrite {
    LocalWrite {
        collection: "c".into(),
        key: key.as_bytes().to_vec(),
        value: Some(Value::from_json(&serde_json::json!(1), &Default::default()).unwrap()),
        schema: 0,
        meta: BTreeMap::new(),
    }
}

fn receipt(key: &str, first: usize, count: usize) -> Receipt {
    Receipt {
        key: key.into(),
        body: [key.len() as u8; 32],
        first,
        count,
        extra: key.as_bytes().to_vec(),
    }
}

fn open(path: &std::path::Path, window: Window) -> StoreWriter {
    let (store, _) =
        Store::open(path, &NodeId::parse("a").unwrap(), EventLimits::default()).unwrap();
    StoreWriter::new(store.with_idempotency_window(window))
}

#[test]
fn records_survive_a_reopen_refuse_a_second_commit_and_expire_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let window = Window {
        keep_ms: 1_000,
        keep_keys: 3,
    };
    let mut clock = HlcClock::new(Default::default(), 60_000);
    {
        let s = open(&path, window);
        // Two requests in one transaction: one write each.
        let out = s
            .commit_local_keyed(
                vec![write("x"), write("y")],
                &[],
                &[receipt("K1", 0, 1), receipt("K2", 1, 1)],
                Sync::Immediate,
                &mut clock,
                10_000,
            )
            .unwrap();
        let r = s.idempotency("K2").unwrap().unwrap();
        assert_eq!(r.committed, vec![out[1]]);
        assert_eq!((r.at_ms, r.extra.as_slice()), (10_000, &b"K2"[..]));
        // The same key again: refused, nothing written.
        let before = s.status().unwrap().feed_last;
        let e = s
            .commit_local_keyed(
                vec![write("z")],
                &[],
                &[receipt("K1", 0, 1)],
                Sync::Immediate,
                &mut clock,
                10_001,
            )
            .unwrap_err();
        assert!(matches!(e.error, StoreError::KeyInUse { index: 0, ref key } if key == "K1"));
        assert_eq!(e.writes.len(), 1, "the writes come back");
        assert_eq!(s.status().unwrap().feed_last, before);
    }
    // After a reopen the index is rebuilt from the table.
    let s = open(&path, window);
    assert_eq!(s.idempotency_count().unwrap(), 2);
    assert!(s.idempotency("K1").unwrap().is_some());
    // Two more keys: over the count of 3, the oldest (K1) goes.
    for (i, k) in ["K3", "K4"].iter().enumerate() {
        s.commit_local_keyed(
            vec![write(k)],
            &[],
            &[receipt(k, 0, 1)],
            Sync::Immediate,
            &mut clock,
            10_100 + i as u64,
        )
        .unwrap();
    }
    assert_eq!(s.idempotency_count().unwrap(), 3);
    assert!(s.idempotency("K1").unwrap().is_none());
    assert!(s.idempotency("K2").unwrap().is_some());
    // Past the window's time on the wall clock, the next commit that records a key removes
    // what is older: K2, recorded before the reopen. K3 and K4, recorded by this process less
    // than the window ago on its monotonic clock, stay: the wall clock stepping forward (NTP
    // on a box that booted without a real-time clock) must not expire at once the keys a
    // client may be retrying now.
    s.commit_local_keyed(
        vec![write("w")],
        &[],
        &[receipt("K5", 0, 1)],
        Sync::Immediate,
        &mut clock,
        11_200,
    )
    .unwrap();
    let held = |keys: &[&str]| -> Vec<bool> {
        keys.iter()
            .map(|k| s.idempotency(k).unwrap().is_some())
            .collect()
    };
    assert_eq!(held(&["K2", "K3", "K4", "K5"]), [false, true, true, true]);
    // Once the window has passed on both clocks, they go too.
    std::thread::sleep(std::time::Duration::from_millis(1_100));
    s.commit_local_keyed(
        vec![write("v")],
        &[],
        &[receipt("K6", 0, 1)],
        Sync::Immediate,
        &mut clock,
        12_300,
    )
    .unwrap();
    assert_eq!(
        held(&["K2", "K3", "K4", "K5", "K6"]),
        [false, false, false, false, true]
    );
    assert_eq!(s.idempotency_count().unwrap(), 1);
    assert_eq!(s.verify().unwrap(), Ok(()));
}
