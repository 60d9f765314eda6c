//! Idempotency records: written with the commit, found again after a reopen, refused twice,
//! and expired by time (on the wall clock and on the monotonic clock, from when this process
//! recorded them or opened the store) and by count, oldest first.

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
        context: None,
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
        let r = s.idempotency_at("K2", 10_000).unwrap().unwrap();
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
        assert!(matches!(e.error, StoreError::KeyInUse { receipt: 0, ref key } if key == "K1"));
        assert_eq!(e.writes.len(), 1, "the writes come back");
        assert_eq!(s.status().unwrap().feed_last, before);
    }
    // After a reopen the index is rebuilt from the table.
    let s = open(&path, window);
    assert_eq!(s.idempotency_count().unwrap(), 2);
    assert!(s.idempotency_at("K1", 10_050).unwrap().is_some());
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
    assert!(s.idempotency_at("K1", 10_101).unwrap().is_none());
    assert!(s.idempotency_at("K2", 10_101).unwrap().is_some());
    // K1 went inside its window: counted, for the operator to raise the bound.
    assert_eq!(s.idempotency_dropped_early(), 1);
    // Past the window's time on the wall clock: K2 goes by the count (K5 makes four). K3 and
    // K4, less than the window old on the monotonic clock (from when this process recorded
    // them, or opened the store), stay: the wall clock stepping forward (NTP on a box that
    // booted without a real-time clock, before or after a restart) must not expire at once
    // the keys a client may be retrying now.
    s.commit_local_keyed(
        vec![write("w")],
        &[],
        &[receipt("K5", 0, 1)],
        Sync::Immediate,
        &mut clock,
        11_200,
    )
    .unwrap();
    let held = |keys: &[&str], at: u64| -> Vec<bool> {
        keys.iter()
            .map(|k| s.idempotency_at(k, at).unwrap().is_some())
            .collect()
    };
    assert_eq!(
        held(&["K2", "K3", "K4", "K5"], 11_200),
        [false, true, true, true]
    );
    // K2 was inside the window on the monotonic clock only (kept from the open to be safe):
    // not counted as dropped early.
    assert_eq!(s.idempotency_dropped_early(), 1);
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
        held(&["K2", "K3", "K4", "K5", "K6"], 12_300),
        [false, false, false, false, true]
    );
    assert_eq!(s.idempotency_count().unwrap(), 1);
    assert_eq!(
        s.idempotency_dropped_early(),
        1,
        "past both clocks: not early"
    );
    assert_eq!(s.verify().unwrap(), Ok(()));
}

/// The count bound holds however many keys each commit records (it once removed at most 256
/// per commit, so commits of 1,000 keys grew the table without end), and a commit never
/// removes its own records (it once could, leaving their keys in the index without rows: a
/// retry then got "in use" for ever, and after a restart committed again). Past the count,
/// records go down to the count less 1/32 of it (300 - 9 = 291).
#[test]
fn the_count_bound_holds_for_large_commits_and_spares_the_commit_s_own_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let mut clock = HlcClock::new(Default::default(), 60_000);
    let s = open(
        &path,
        Window {
            keep_ms: 3_600_000,
            keep_keys: 300,
        },
    );
    let commit = |s: &StoreWriter, clock: &mut HlcClock, prefix: &str, n: usize, at: u64| {
        let writes = (0..n).map(|i| write(&format!("{prefix}{i}"))).collect();
        let receipts: Vec<Receipt> = (0..n)
            .map(|i| receipt(&format!("{prefix}{i}"), i, 1))
            .collect();
        s.commit_local_keyed(writes, &[], &receipts, Sync::Immediate, clock, at)
            .unwrap();
    };
    commit(&s, &mut clock, "a", 300, 10_000);
    assert_eq!(s.idempotency_count().unwrap(), 300, "at the count: none go");
    // Every earlier record goes; the commit's own 300 stay.
    commit(&s, &mut clock, "b", 300, 10_001);
    assert_eq!(s.idempotency_count().unwrap(), 300);
    assert!(s.idempotency_at("a299", 10_002).unwrap().is_none());
    assert!(s.idempotency_at("b0", 10_002).unwrap().is_some());
    // One commit of more keys than the window keeps: all of them stay, the earlier go.
    commit(&s, &mut clock, "c", 400, 10_003);
    assert_eq!(s.idempotency_count().unwrap(), 400);
    for k in ["c0", "c399"] {
        assert!(s.idempotency_at(k, 10_004).unwrap().is_some(), "{k}");
    }
    commit(&s, &mut clock, "d", 1, 10_005);
    assert_eq!(s.idempotency_count().unwrap(), 291);
    assert!(s.idempotency_at("c109", 10_006).unwrap().is_none());
    assert!(s.idempotency_at("c110", 10_006).unwrap().is_some());
    // What the index holds is what a reopen reads from the table.
    drop(s);
    let s = open(
        &path,
        Window {
            keep_ms: 3_600_000,
            keep_keys: 300,
        },
    );
    assert_eq!(s.idempotency_count().unwrap(), 291);
    assert!(s.idempotency_at("c110", 10_006).unwrap().is_some());
    assert!(s.idempotency_at("d0", 10_006).unwrap().is_some());
    assert_eq!(s.verify().unwrap(), Ok(()));
}

/// The newest records wait in the meta table and move to the table in groups: across those
/// moves every key is found, refused a second commit, kept through a reopen (whether it waits
/// or has moved), and expired by count and time from either place.
#[test]
fn records_waiting_to_move_to_the_table_are_found_kept_and_expired() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let window = Window {
        keep_ms: 1_000,
        keep_keys: 64,
    };
    let mut clock = HlcClock::new(Default::default(), 60_000);
    let s = open(&path, window);
    // 50 commits of one key each: several groups move, the last ones wait.
    let mut commits = Vec::new();
    for i in 0..50u64 {
        let out = s
            .commit_local_keyed(
                vec![write(&format!("w{i}"))],
                &[],
                &[receipt(&format!("key-{i}"), 0, 1)],
                Sync::Immediate,
                &mut clock,
                10_000 + i,
            )
            .unwrap();
        commits.push(out[0]);
    }
    let check = |s: &StoreWriter| {
        assert_eq!(s.idempotency_count().unwrap(), 50);
        for (i, c) in commits.iter().enumerate() {
            let r = s
                .idempotency_at(&format!("key-{i}"), 10_100)
                .unwrap()
                .unwrap_or_else(|| panic!("key-{i}"));
            assert_eq!(r.committed, vec![*c], "key-{i}");
        }
    };
    check(&s);
    for i in [0, 49] {
        let e = s
            .commit_local_keyed(
                vec![write("again")],
                &[],
                &[receipt(&format!("key-{i}"), 0, 1)],
                Sync::Immediate,
                &mut clock,
                10_100,
            )
            .unwrap_err();
        assert!(matches!(e.error, StoreError::KeyInUse { .. }), "key-{i}");
    }
    drop(s);
    let s = open(&path, window);
    check(&s);
    // Past the count (64): down to 62, the oldest first, the new ones kept.
    for i in 50..70u64 {
        s.commit_local_keyed(
            vec![write(&format!("w{i}"))],
            &[],
            &[receipt(&format!("key-{i}"), 0, 1)],
            Sync::Immediate,
            &mut clock,
            10_100 + i,
        )
        .unwrap();
    }
    let held = s.idempotency_count().unwrap();
    assert!((62..=64).contains(&held), "{held} held");
    assert!(s.idempotency_at("key-0", 10_200).unwrap().is_none());
    assert!(s.idempotency_at("key-69", 10_200).unwrap().is_some());
    // Past the time on both clocks (the monotonic one counts from the reopen for the records
    // of an earlier run): all go at the first commit, from the table and from meta.
    drop(s);
    let s = open(&path, window);
    assert!(
        s.idempotency_at("key-69", 12_000).unwrap().is_some(),
        "not yet on the monotonic clock"
    );
    std::thread::sleep(std::time::Duration::from_millis(window.keep_ms + 100));
    assert!(s.idempotency_at("key-69", 12_000).unwrap().is_none());
    s.commit_local_keyed(
        vec![write("late")],
        &[],
        &[receipt("late", 0, 1)],
        Sync::Immediate,
        &mut clock,
        12_000,
    )
    .unwrap();
    assert_eq!(
        s.idempotency_count().unwrap(),
        1,
        "only the late key is held"
    );
    drop(s);
    let s = open(&path, window);
    assert_eq!(s.idempotency_count().unwrap(), 1);
    assert!(s.idempotency_at("late", 12_000).unwrap().is_some());
    assert_eq!(s.verify().unwrap(), Ok(()));
}

/// A record past the window's time is not served, and its key can be recorded again, before
/// any commit has removed it (a key sent rarely was answered from a record a day old).
#[test]
fn a_record_past_the_window_is_gone_for_the_client_before_it_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let window = Window {
        keep_ms: 1_000,
        keep_keys: 100,
    };
    let mut clock = HlcClock::new(Default::default(), 60_000);
    {
        let s = open(&path, window);
        s.commit_local_keyed(
            vec![write("x")],
            &[],
            &[receipt("K", 0, 1)],
            Sync::Immediate,
            &mut clock,
            10_000,
        )
        .unwrap();
    }
    // Reopened: a record of an earlier run is past the window once it is on the wall clock
    // and, counted from the reopen, on the monotonic clock (a box restarted with its wall
    // clock stepped forward must not lose the keys of the requests a client is retrying).
    let s = open(&path, window);
    assert!(s.idempotency_at("K", 10_999).unwrap().is_some());
    assert!(s.idempotency_at("K", 11_001).unwrap().is_some());
    std::thread::sleep(std::time::Duration::from_millis(window.keep_ms + 100));
    assert!(s.idempotency_at("K", 10_999).unwrap().is_some());
    assert!(s.idempotency_at("K", 11_001).unwrap().is_none());
    // Recorded anew: the old row goes in the same transaction, the count stays one.
    let out = s
        .commit_local_keyed(
            vec![write("y")],
            &[],
            &[receipt("K", 0, 1)],
            Sync::Immediate,
            &mut clock,
            11_001,
        )
        .unwrap();
    assert_eq!(s.idempotency_count().unwrap(), 1);
    let r = s.idempotency_at("K", 11_002).unwrap().unwrap();
    assert_eq!((r.committed.clone(), r.at_ms), (out, 11_001));
    // Within the window (and made by this process) it is in use.
    let e = s
        .commit_local_keyed(
            vec![write("z")],
            &[],
            &[receipt("K", 0, 1)],
            Sync::Immediate,
            &mut clock,
            11_500,
        )
        .unwrap_err();
    assert!(matches!(e.error, StoreError::KeyInUse { .. }));
    drop(s);
    let s = open(&path, window);
    assert_eq!(s.idempotency_count().unwrap(), 1);
    assert_eq!(s.verify().unwrap(), Ok(()));
}

/// A node restored from a backup takes back, with its own events, the keys they were written
/// under, timed when it wrote them (their hybrid clock), not by its wall clock now: a box that
/// boots from a backup with its clock behind would otherwise time them back then, and once NTP
/// sets the clock, expire keys a client may still retry (the retry would write again).
#[test]
fn keys_back_from_a_peer_after_a_restore_keep_the_time_of_their_write() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    // The write, ten hours after the wall clock this test runs at (as if the restored box's
    // clock were now ten hours behind the one that made the write).
    let written_at = now + 10 * 3600 * 1000;
    let (seq, at_ms) = restored_key_of_a_write_at(written_at).expect("the key is back");
    assert_eq!(seq, 1);
    assert_eq!(
        at_ms, written_at,
        "timed by the write, not by the wall clock now"
    );
}

/// A box restored from a backup whose wall clock runs days ahead of the one that made the write
/// (it booted ahead, or NTP stepped it): by the wall clock alone the key restored with the
/// write is past its window, and a client's retry within the window would write again. A
/// restored key is honoured for the whole first window the store is open, whatever the wall
/// clock says.
#[test]
fn a_restored_key_holds_for_a_window_of_uptime_whatever_the_wall_clock_says() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    // Three days before this wall clock: past the default window of one day.
    let written_at = now - 3 * 24 * 3600 * 1000;
    assert_eq!(
        restored_key_of_a_write_at(written_at).map(|(seq, _)| seq),
        Some(1),
        "the key holds within the first window of uptime"
    );
}

/// A write under key K1 made at `written_at` (wall clock ms) by node "a", taken back from a
/// peer by a restored (empty) store of "a": what that store says of K1.
fn restored_key_of_a_write_at(written_at: u64) -> Option<(u64, u64)> {
    let mut clock = HlcClock::new(Default::default(), u64::MAX / 2);
    let (before, _) = StoreWriter::open_with_backend(
        redb::backends::InMemoryBackend::new(),
        "memory",
        &NodeId::parse("a").unwrap(),
        EventLimits::default(),
    )
    .unwrap();
    before
        .commit_local_keyed(
            vec![write("x")],
            &[],
            &[receipt("K1", 0, 1)],
            Sync::Immediate,
            &mut clock,
            written_at,
        )
        .unwrap();
    let events = before.changelog("a", 0, 10).unwrap();
    // The restored store (empty here) takes its own event back from a peer.
    let dir = tempfile::tempdir().unwrap();
    let restored = open(&dir.path().join("s.redb"), Window::default());
    restored.apply_events(events).unwrap();
    restored.restored_key("K1").unwrap()
}
