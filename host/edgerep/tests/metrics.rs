//! `GET /metrics` on real processes: OpenMetrics text a Prometheus scrape reads, whose values
//! move as writes replicate.

mod common;

use std::time::{Duration, Instant};

use common::{Node, agent, cluster, put};

fn scrape(node: &Node) -> (String, String) {
    let mut r = agent().get(&node.url("/metrics")).call().unwrap();
    assert_eq!(r.status(), 200);
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (ct, r.body_mut().read_to_string().unwrap())
}

/// The value of the sample `name{labels}` (exactly as written), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
}

/// `counter{collection="c"}` is 6, and commits of `kind` were timed.
fn six_events_committed(text: &str, counter: &str, kind: &str) {
    assert_eq!(
        sample(text, &format!(r#"{counter}{{collection="c"}}"#)),
        Some(6.0),
        "{text}"
    );
    let commits = format!(r#"edgerep_commit_duration_seconds_count{{kind="{kind}"}}"#);
    assert!(sample(text, &commits).is_some_and(|n| n >= 1.0), "{text}");
}

#[test]
fn metrics_are_scraped_and_move_as_writes_replicate() {
    let dir = tempfile::tempdir().unwrap();
    let configs = cluster(dir.path(), 2);
    let n1 = Node::start(&configs[0]);
    let n2 = Node::start(&configs[1]);
    put(&n1, "c", "first", "1");
    let held = r#"edgerep_origin_held_seq{origin="node-1"}"#;
    let deadline = Instant::now() + Duration::from_secs(30);
    let (ct, before) = loop {
        let (ct, text) = scrape(&n2);
        if sample(&text, held) == Some(1.0)
            && sample(&text, r#"edgerep_peer_connected{peer="node-1"}"#) == Some(1.0)
        {
            break (ct, text);
        }
        assert!(Instant::now() < deadline, "{text}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
    assert!(before.trim_end().ends_with("# EOF"), "{before}");
    // Nothing compacted yet (keep_events is 100000): node-1's one event is in the changelog.
    assert_eq!(
        sample(&before, r#"edgerep_changelog_events{origin="node-1"}"#),
        Some(1.0),
        "{before}"
    );
    // Every sample is edgerep's, counters end in _total.
    for line in before.lines().filter(|l| !l.starts_with('#')) {
        assert!(line.starts_with("edgerep_"), "{line}");
    }
    assert!(
        before.contains("# TYPE edgerep_idempotency_replays counter"),
        "{before}"
    );
    assert!(
        sample(&before, "edgerep_idempotency_replays_total").is_some(),
        "{before}"
    );
    // A node whose peer said how far it holds its own events takes writes.
    assert_eq!(sample(&before, "edgerep_local_writes_waiting"), Some(0.0));
    assert_eq!(sample(&before, "edgerep_unreadable_origins"), Some(0.0));
    let position = sample(&before, "edgerep_feed_position").unwrap();
    for i in 0..5 {
        put(&n1, "c", &format!("k{i}"), "2");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, text) = scrape(&n2);
        if sample(&text, held) == Some(6.0) {
            assert_eq!(sample(&text, "edgerep_feed_position"), Some(position + 5.0));
            assert_eq!(sample(&text, "edgerep_state_entries"), Some(6.0));
            // node-2 applied node-1's six events of `c`, in transactions it timed.
            six_events_committed(&text, "edgerep_collection_applied_events_total", "apply");
            assert!(
                sample(
                    &text,
                    r#"edgerep_commit_duration_seconds_bucket{le="+Inf",kind="apply"}"#
                )
                .is_some(),
                "{text}"
            );
            assert!(
                sample(
                    &text,
                    r#"edgerep_peer_last_contact_age_seconds{peer="node-1"}"#
                )
                .is_some_and(|age| age < 30.0),
                "{text}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The peer's traffic (replication publishes its status a little after the store's): the
    // six events received from node-1.
    let deadline = Instant::now() + Duration::from_secs(30);
    let received = r#"edgerep_peer_received_events_total{peer="node-1"}"#;
    while !sample(&scrape(&n2).1, received).is_some_and(|n| n >= 6.0) {
        assert!(Instant::now() < deadline, "{}", scrape(&n2).1);
        std::thread::sleep(Duration::from_millis(100));
    }
    let text = scrape(&n2).1;
    for series in [
        r#"edgerep_peer_resent_events_total{peer="node-1"}"#,
        r#"edgerep_peer_snapshot_pages_sent_total{peer="node-1"}"#,
        "edgerep_snapshot_pages_merged_total",
        "edgerep_compactions_total",
        "edgerep_compacted_events_total",
    ] {
        assert!(sample(&text, series).is_some(), "{series} in {text}");
    }
    // On the writer: six local writes of `c` in timed local transactions.
    six_events_committed(
        &scrape(&n1).1,
        "edgerep_collection_written_events_total",
        "local",
    );
    // On the writer, the peer's lag goes back to zero once it acknowledged everything.
    let deadline = Instant::now() + Duration::from_secs(30);
    while sample(&scrape(&n1).1, r#"edgerep_peer_lag_events{peer="node-2"}"#) != Some(0.0) {
        assert!(Instant::now() < deadline, "{}", scrape(&n1).1);
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Both nodes write each key at the same moment (threads released together): the versions
/// are concurrent, each committed before the other node's could arrive.
fn concurrent_writes(nodes: &[&Node], collection: &str, keys: usize) {
    for k in 0..keys {
        let gate = std::sync::Arc::new(std::sync::Barrier::new(nodes.len()));
        std::thread::scope(|s| {
            for (i, node) in nodes.iter().enumerate() {
                let gate = gate.clone();
                let url = node.url(&format!("/v1/kv/{collection}/k{k}"));
                s.spawn(move || {
                    let agent = agent();
                    gate.wait();
                    let r = agent
                        .put(&url)
                        .content_type("application/json")
                        .send(format!(r#"{{"node-{}":{k}}}"#, i + 1).as_bytes())
                        .unwrap();
                    assert_eq!(r.status(), 200);
                });
            }
        });
    }
}

#[test]
fn conflicts_resolutions_and_plugin_costs_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let configs = cluster(dir.path(), 2);
    let (wasm, sha) = common::built_plugin("merge-counter");
    for c in &configs {
        let text = std::fs::read_to_string(c).unwrap();
        std::fs::write(
            c,
            format!(
                "{text}\n[[collections.declared]]\nname = \"tally\"\nresolver = \"counter\"\n\
                 [plugins.counter]\npath = \"{}\"\nsha256 = \"{sha}\"\n",
                wasm.display()
            ),
        )
        .unwrap();
    }
    let n1 = Node::start(&configs[0]);
    let n2 = Node::start(&configs[1]);
    put(&n1, "tally", "warm", r#"{"node-1":0}"#);
    common::converge(&[&n1, &n2], Duration::from_secs(30));
    concurrent_writes(&[&n1, &n2], "tally", 8);
    concurrent_writes(&[&n1, &n2], "plain", 8);
    common::converge(&[&n1, &n2], Duration::from_secs(30));
    let total = |series: &str| {
        [&n1, &n2]
            .iter()
            .map(|n| sample(&scrape(n).1, series).unwrap_or(0.0))
            .sum::<f64>()
    };
    let conflicts = total(r#"edgerep_conflicts_total{collection="tally"}"#);
    let by_plugin = total(r#"edgerep_resolutions_total{collection="tally",by="plugin:counter"}"#);
    let plain = total(r#"edgerep_conflicts_total{collection="plain"}"#);
    let by_lww = total(r#"edgerep_resolutions_total{collection="plain",by="lww"}"#);
    eprintln!("conflicts: tally {conflicts} (plugin {by_plugin}), plain {plain} (lww {by_lww})");
    assert!(
        conflicts >= 1.0 && by_plugin >= 1.0,
        "tally: {conflicts} {by_plugin}"
    );
    assert!(plain >= 1.0 && by_lww == plain, "plain: {plain} {by_lww}");
    // The resolver's calls, in histograms of fuel and time whose counts add up.
    let text = scrape(&n1).1;
    let calls = sample(&text, r#"edgerep_plugin_calls_total{plugin="counter"}"#).unwrap();
    let fuel = sample(&text, r#"edgerep_plugin_fuel_total{plugin="counter"}"#).unwrap();
    for (histogram, sum) in [
        ("edgerep_plugin_fuel_per_call", Some(fuel)),
        ("edgerep_plugin_call_duration_seconds", None),
    ] {
        let count = sample(&text, &format!("{histogram}_count{{plugin=\"counter\"}}"));
        let inf = sample(
            &text,
            &format!("{histogram}_bucket{{le=\"+Inf\",plugin=\"counter\"}}"),
        );
        assert_eq!(count, Some(calls), "{histogram} in {text}");
        assert_eq!(inf, Some(calls), "{histogram} in {text}");
        if let Some(sum) = sum {
            assert_eq!(
                sample(&text, &format!("{histogram}_sum{{plugin=\"counter\"}}")),
                Some(sum),
                "{text}"
            );
        }
    }
    assert!(
        text.contains("# TYPE edgerep_plugin_call_duration_seconds histogram"),
        "{text}"
    );
}

/// A peer never heard from since the start has an age (the node's uptime): before, its series
/// was left out, so an alert on the age missed a peer dead since before a restart.
#[test]
fn a_peer_never_heard_from_has_an_age() {
    let dir = tempfile::tempdir().unwrap();
    let configs = cluster(dir.path(), 2);
    let n1 = Node::start(&configs[0]);
    std::thread::sleep(Duration::from_millis(1500));
    let text = scrape(&n1).1;
    let age = sample(
        &text,
        r#"edgerep_peer_last_contact_age_seconds{peer="node-2"}"#,
    );
    let uptime = sample(&text, "edgerep_uptime_seconds").unwrap();
    assert!(age.is_some_and(|a| a >= 1.0 && a <= uptime), "{text}");
    assert_eq!(
        sample(&text, r#"edgerep_peer_connected{peer="node-2"}"#),
        Some(0.0)
    );
}
