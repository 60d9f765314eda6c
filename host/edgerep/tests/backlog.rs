//! A node back from a long absence catches up a backlog of a million events (real processes on
//! loopback) while its memory, and its peer's, stays bounded. A test binary of its own, so it
//! does not compete with the other cluster tests for the CPU.

mod common;

use std::time::{Duration, Instant};

use common::{Node, agent, cluster, put, rss_bytes};

#[test]
fn a_node_back_from_a_long_absence_catches_up_a_million_events_with_bounded_memory() {
    let events: usize = std::env::var("EDGEREP_BACKLOG_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let configs = cluster(dir.path(), 2);
    // The full check of each store at the end reads a million events: on a loaded machine it
    // took longer than the API's request timeout (30 s), answered 408. Given as long as the
    // client here waits.
    for c in &configs {
        let text = std::fs::read_to_string(c).unwrap();
        assert!(text.contains("[api]\n"), "{text}");
        std::fs::write(
            c,
            text.replacen("[api]\n", "[api]\nrequest_timeout_ms = 300000\n", 1),
        )
        .unwrap();
    }
    // node-2 is down while node-1 takes the whole backlog: node-1 is alone (no peer ever held
    // its events), so it takes writes without waiting for a peer to confirm its origin.
    let n1 = Node::start_with(&configs[0], &["--alone"]);
    let started = Instant::now();
    let mut written = 0;
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let url = n1.url("/v1/batch");
            let per = events / 2 + if w == 0 { events % 2 } else { 0 };
            std::thread::spawn(move || {
                let agent = agent();
                let mut i = 0;
                while i < per {
                    let k = (per - i).min(5000);
                    let writes: Vec<String> = (i..i + k)
                        .map(|j| {
                            format!(
                                r#"{{"collection":"bulk","key":"w{w}-{j:07}","value":{{"payload":"{:0>150}"}}}}"#,
                                j
                            )
                        })
                        .collect();
                    let body = format!(r#"{{"writes":[{}]}}"#, writes.join(","));
                    let mut r = agent
                        .post(&url)
                        .content_type("application/json")
                        .send(body.as_bytes())
                        .unwrap();
                    let text = r.body_mut().read_to_string().unwrap();
                    assert_eq!(r.status(), 200, "{text}");
                    i += k;
                }
                per
            })
        })
        .collect();
    for w in writers {
        written += w.join().unwrap();
    }
    assert_eq!(written, events);
    println!(
        "wrote {events} events in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let sender_rss_before = rss_bytes(n1.child.id());

    let n2 = Node::start(&configs[1]);
    let started = Instant::now();
    let (mut peak2, mut peak1) = (0u64, 0u64);
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        peak2 = peak2.max(rss_bytes(n2.child.id()));
        peak1 = peak1.max(rss_bytes(n1.child.id()));
        let s2 = status_fast(&n2);
        if s2["origins"]["node-1"].as_u64() == Some(events as u64) {
            break;
        }
        assert!(Instant::now() < deadline, "no catch-up in 600 s: {s2}");
        // Live traffic on node-2 is served while it catches up.
        put(&n2, "live", "during-catch-up", r#"{"ok":true}"#);
        std::thread::sleep(Duration::from_millis(200));
    }
    let took = started.elapsed().as_secs_f64();
    println!(
        "caught up {events} events in {took:.1} s ({:.0} events/s); peak RSS: receiver {} MiB, \
         sender {} MiB (sender before: {} MiB)",
        events as f64 / took,
        peak2 >> 20,
        peak1 >> 20,
        sender_rss_before >> 20
    );
    // The backlog is about 200 bytes x events on disk; neither side may hold it in memory.
    let backlog_bytes = events as u64 * 200;
    let bound = 160u64 << 20;
    assert!(
        peak2 < bound && peak1 < bound,
        "memory grew with the backlog ({backlog_bytes} bytes): receiver {peak2}, sender {peak1}"
    );
    // Same state on both; then each store rechecked in full (slow at this size).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (s1, s2) = (status_fast(&n1), status_fast(&n2));
        if s1["digest"] == s2["digest"] && s1["origins"] == s2["origins"] {
            break;
        }
        assert!(Instant::now() < deadline, "no convergence:\n{s1}\n{s2}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let slow: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(300)))
        .build()
        .into();
    for node in [&n1, &n2] {
        let mut r = slow
            .get(&node.url("/v1/status?verify=true"))
            .call()
            .unwrap();
        let s: serde_json::Value =
            serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
        assert_eq!(s["verified"], true, "{s}");
    }
}

/// Status without the full verification (cheap enough to poll during a large catch-up).
fn status_fast(node: &Node) -> serde_json::Value {
    let mut r = agent().get(&node.url("/v1/status")).call().unwrap();
    serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap()
}
