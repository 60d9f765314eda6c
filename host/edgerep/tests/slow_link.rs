//! Replication over a slow link: two real processes in a network namespace of their own, whose
//! loopback is throttled to 400 kbit/s with `tc` (a token bucket), so one batch of events takes
//! longer to cross than the replica's resend timer (3 s). The catching-up node gets every event,
//! and the sender resends nothing: it waits while the link still carries what it sent, and
//! while the peer's data (its acknowledgements behind it) comes in.
//!
//! The test runs itself again inside `unshare -n` (root, as on the CI machine); the namespace
//! and its throttle go with the process.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Node, batch, cluster, converge, status};

const INSIDE: &str = "EDGEREP_SLOW_LINK_INSIDE";

/// Runs `test` again inside a network namespace of its own (see the module's doc), printing
/// its "caught up" line; true here, false inside it (where the test goes on).
fn ran_inside(test: &str) -> bool {
    if std::env::var_os(INSIDE).is_some() {
        return false;
    }
    let text = common::run_inside(&["-n"], INSIDE, test);
    if let Some(line) = text.lines().find(|l| l.starts_with("caught up")) {
        eprintln!("{line}");
    }
    true
}

fn sh(cmd: &str) {
    let o = Command::new("sh").args(["-c", cmd]).output().unwrap();
    assert!(
        o.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Writes `n` events of about 230 bytes to `node`, keys `{prefix}{i}`, 1,000 per request.
fn backlog(node: &Node, prefix: &str, n: usize) {
    let value = format!(r#"{{"pad":"{}"}}"#, "x".repeat(150));
    for b in 0..n.div_ceil(1000) {
        let upto = (n - b * 1000).min(1000);
        batch(
            node,
            "c",
            (0..upto).map(|i| (format!("{prefix}{b}-{i}"), value.clone())),
        );
    }
}

/// The link is slow from now on: `kbit` kbit/s (both ways together); at 400, one batch of
/// 1,024 events takes about 5 s.
fn throttle(kbit: u32) {
    sh(&format!(
        "tc qdisc add dev lo root tbf rate {kbit}kbit burst 16kb latency 5s"
    ));
}

#[test]
fn a_backlog_crosses_a_link_slower_than_the_resend_timer_without_resends() {
    if ran_inside("a_backlog_crosses_a_link_slower_than_the_resend_timer_without_resends") {
        return;
    }
    sh("ip link set lo up");
    let dir = tempfile::tempdir().unwrap();
    let configs = cluster(dir.path(), 2);
    // node-1 takes a backlog of 3,000 events (about 700 kB) while node-2 is down.
    let n1 = Node::start_with(&configs[0], &["--alone"]);
    backlog(&n1, "k", 3000);
    throttle(400);
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

/// Backlogs both ways over a link of 100 kbit/s: node-1's 100 events cross in about 2 s, and
/// their acknowledgements travel behind node-2's 2,000 (about 35 s of them). Before, node-1's
/// resend timer fired again and again while they were on their way: its window went 4 more
/// times (400 events resent; caught up in 49 s). Now node-2's data arriving holds the timer
/// back: none went again in two runs (40 s). At most one resend is allowed here, for a stall
/// of the shaped link longer than the timer.
#[test]
fn backlogs_both_ways_cross_a_slow_link_resending_at_most_one_window() {
    if ran_inside("backlogs_both_ways_cross_a_slow_link_resending_at_most_one_window") {
        return;
    }
    sh("ip link set lo up");
    let dir = tempfile::tempdir().unwrap();
    let configs = cluster(dir.path(), 2);
    let n1 = Node::start_with(&configs[0], &["--alone"]);
    backlog(&n1, "a", 100);
    n1.terminate();
    let n2 = Node::start_with(&configs[1], &["--alone"]);
    backlog(&n2, "b", 2000);
    n2.terminate();
    throttle(100);
    let started = Instant::now();
    let n1 = Node::start(&configs[0]);
    let n2 = Node::start(&configs[1]);
    converge(&[&n1, &n2], Duration::from_secs(150));
    let took = started.elapsed();
    let sent = |n: &Node| status(n)["replication"]["peers"][0]["traffic"].clone();
    let (t1, t2) = (sent(&n1), sent(&n2));
    eprintln!(
        "caught up both ways over the slow link in {took:?}; node-1 sent {t1}, node-2 sent {t2}"
    );
    assert!(
        t1["events_resent"].as_u64().unwrap() <= 100,
        "node-1's window went again while node-2's data (and its acknowledgements) came in: {t1}"
    );
    assert!(t2["events_resent"].as_u64().unwrap() <= 1024, "{t2}");
}
