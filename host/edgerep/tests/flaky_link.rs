//! Replication over bad links, with real processes and real QUIC: every link between the nodes
//! passes through a UDP relay (`common::proxy`) that delays, drops, duplicates and reorders
//! datagrams and cuts the link now and then, while the nodes take writes.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::proxy::{Weather, proxied};
use common::{Node, batch, cluster, converge, get, put, status, traffic};

/// A link of 5 s per round trip (a cellular link far from its tower): a backlog crosses it
/// without being sent twice. The answers to a batch come 5 s after it left at best; a resend
/// timer of a fixed 3 s sent the whole window again, and again, while QUIC was still carrying
/// the first copy.
#[test]
fn a_link_of_seconds_per_round_trip_carries_a_backlog_without_resends() {
    let dir = tempfile::tempdir().unwrap();
    let configs = cluster(dir.path(), 2);
    let proxies = proxied(&configs, &[(0, 1), (1, 0)]);
    for p in &proxies {
        p.set_weather(Weather {
            delay: Duration::from_millis(2500),
            ..Weather::default()
        });
    }
    let n1 = Node::start_with(&configs[0], &["--alone"]);
    let value = format!(r#"{{"pad":"{}"}}"#, "x".repeat(150));
    for b in 0..2 {
        batch(
            &n1,
            "c",
            (0..600).map(|i| (format!("k{b}-{i}"), value.clone())),
        );
    }
    let started = Instant::now();
    let n2 = Node::start(&configs[1]);
    converge(&[&n1, &n2], Duration::from_secs(150));
    let s1 = status(&n1);
    eprintln!(
        "caught up over a 5 s round trip in {:?}; node-1 sent {}",
        started.elapsed(),
        s1["replication"]["peers"][0]["traffic"]
    );
    // (Both nodes dial at start, node-2 once to replace a connection of its last run node-1
    // may hold: when a later connection replaces the first, the new session sends again what
    // the first had not had acknowledged, so `events_sent` may be a multiple of 1,200. That is
    // not a resend of the timers.)
    assert_eq!(traffic(&s1, "events_resent"), 0, "{s1}");
}

/// Three nodes writing while every link between them loses 10% of its datagrams, duplicates
/// 3%, delays them 5 to 45 ms (so they overtake each other), and is cut for 1.5 s every 5 s.
/// Once the weather clears, every node holds every acknowledged write, once: equal digests,
/// each origin's last sequence number the one its node acknowledged last, every key's value
/// the one written.
#[test]
fn bad_weather_loses_nothing_and_applies_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let configs = cluster(dir.path(), 3);
    let links = [(0, 1), (1, 0), (0, 2), (2, 0), (1, 2), (2, 1)];
    let proxies = proxied(&configs, &links);
    let storm = Weather {
        loss_per_mille: 100,
        duplicate_per_mille: 30,
        delay: Duration::from_millis(5),
        jitter: Duration::from_millis(40),
    };
    for p in &proxies {
        p.set_weather(storm);
    }
    let nodes: Vec<Node> = configs.iter().map(|c| Node::start(c)).collect();
    // Writes wait (10 s at most) for the peers' word on each node's own events: let it come
    // through the storm first.
    let deadline = Instant::now() + Duration::from_secs(60);
    while nodes
        .iter()
        .any(|n| !status(n)["replication"]["origin_check"].is_null())
    {
        assert!(Instant::now() < deadline, "the origin gates stayed closed");
        std::thread::sleep(Duration::from_millis(100));
    }
    let writing = std::sync::atomic::AtomicBool::new(true);
    let last_seqs: Vec<u64> = std::thread::scope(|scope| {
        // The cuts, while the nodes write.
        scope.spawn(|| {
            while writing.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(3500));
                proxies.iter().for_each(|p| p.cut(true));
                std::thread::sleep(Duration::from_millis(1500));
                proxies.iter().for_each(|p| p.cut(false));
            }
        });
        let writers: Vec<_> = nodes
            .iter()
            .enumerate()
            .map(|(i, node)| {
                scope.spawn(move || {
                    let mut last = 0;
                    for b in 0..40 {
                        let answer = batch(
                            node,
                            "c",
                            (0..25).map(|k| {
                                (
                                    format!("n{i}-{b}-{k}"),
                                    format!(r#"{{"n":{i},"b":{b},"k":{k}}}"#),
                                )
                            }),
                        );
                        last = answer["committed"].as_array().unwrap().last().unwrap()["seq"]
                            .as_u64()
                            .unwrap();
                        // Concurrent updates of one key from every node.
                        last = last.max(put(
                            node,
                            "c",
                            "shared",
                            &format!(r#"{{"by":{i},"b":{b}}}"#),
                        ));
                        std::thread::sleep(Duration::from_millis(250));
                    }
                    last
                })
            })
            .collect();
        let seqs = writers.into_iter().map(|w| w.join().unwrap()).collect();
        writing.store(false, std::sync::atomic::Ordering::Relaxed);
        seqs
    });
    for p in &proxies {
        p.cut(false);
        p.set_weather(Weather::default());
    }
    let nodes: Vec<&Node> = nodes.iter().collect();
    let s = converge(&nodes, Duration::from_secs(120));
    let mut expected = BTreeMap::new();
    for (i, seq) in last_seqs.iter().enumerate() {
        // 40 batches of 25 and 40 single puts, numbered from 1: nothing skipped, nothing twice.
        assert_eq!(*seq, 40 * 26, "node-{}'s own writes", i + 1);
        expected.insert(format!("node-{}", i + 1), serde_json::json!(seq));
    }
    assert_eq!(
        s["origins"],
        serde_json::Value::Object(expected.into_iter().collect()),
        "{s}"
    );
    for node in &nodes {
        for (i, b, k) in [(0, 0, 0), (1, 17, 3), (2, 39, 24), (0, 21, 12)] {
            let (code, body) = get(node, "c", &format!("n{i}-{b}-{k}"));
            assert_eq!(code, 200, "{body}");
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v, serde_json::json!({"n": i, "b": b, "k": k}), "{body}");
        }
        let (code, _) = get(node, "c", "shared");
        assert_eq!(code, 200);
    }
    let shared: Vec<String> = nodes.iter().map(|n| get(n, "c", "shared").1).collect();
    assert!(shared.windows(2).all(|w| w[0] == w[1]), "{shared:?}");
    for n in &nodes {
        let s = status(n);
        for p in s["replication"]["peers"].as_array().unwrap() {
            eprintln!("{} -> {}: {}", s["node_id"], p["id"], p["traffic"]);
        }
    }
}
