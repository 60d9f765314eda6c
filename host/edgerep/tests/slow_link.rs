//! Replication over a slow link: two real processes in a network namespace of their own, whose
//! loopback is throttled to 400 kbit/s with `tc` (a token bucket), so one batch of events takes
//! longer to cross than the replica's resend timer (3 s). The catching-up node gets every event,
//! and the sender resends nothing: it waits while the link still carries what it sent.
//!
//! The test runs itself again inside `unshare -n` (root, as on the CI machine); the namespace
//! and its throttle go with the process.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Node, batch, cluster, converge, status};

const INSIDE: &str = "EDGEREP_SLOW_LINK_INSIDE";

#[test]
fn a_backlog_crosses_a_link_slower_than_the_resend_timer_without_resends() {
    if std::env::var_os(INSIDE).is_none() {
        let text = common::run_inside(
            &["-n"],
            INSIDE,
            "a_backlog_crosses_a_link_slower_than_the_resend_timer_without_resends",
        );
        if let Some(line) = text.lines().find(|l| l.starts_with("caught up")) {
            eprintln!("{line}");
        }
        return;
    }
    let sh = |cmd: &str| {
        let o = Command::new("sh").args(["-c", cmd]).output().unwrap();
        assert!(
            o.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    sh("ip link set lo up");
    let dir = tempfile::tempdir().unwrap();
    let configs = cluster(dir.path(), 2);
    // node-1 takes a backlog of 3,000 events (about 700 kB) while node-2 is down.
    let n1 = Node::start_with(&configs[0], &["--alone"]);
    let value = format!(r#"{{"pad":"{}"}}"#, "x".repeat(150));
    for b in 0..3 {
        batch(
            &n1,
            "c",
            (0..1000).map(|i| (format!("k{b}-{i}"), value.clone())),
        );
    }
    // Now the link is slow: 400 kbit/s, so one batch of 1,024 events takes about 5 s.
    sh("tc qdisc add dev lo root tbf rate 400kbit burst 16kb latency 5s");
    let started = Instant::now();
    let n2 = Node::start(&configs[1]);
    converge(&[&n1, &n2], Duration::from_secs(90));
    let took = started.elapsed();
    let s1 = status(&n1);
    let peer = &s1["replication"]["peers"][0]["traffic"];
    eprintln!("caught up over the slow link in {took:?}; node-1 sent {peer}");
    assert_eq!(
        peer["events_resent"].as_u64(),
        Some(0),
        "events resent over a link that was carrying them: {peer}"
    );
    assert!(peer["events_sent"].as_u64().unwrap() >= 3000, "{peer}");
}
