//! A hostile peer against real `edgerep run` processes: it holds node-2's valid certificate
//! (a stolen or buggy node) and speaks the protocol. For each attack: the attacked node keeps
//! serving its clients and its other peers, nothing acknowledged is lost, the honest nodes
//! converge to equal digests, and the attack is reported with a reason.

mod common;

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::hostile::{Hostile, event, with_context};
use common::{
    Node, agent, built_plugin, cluster, converge, edgerep, get, put, rss_bytes, status, stderr,
    stdout,
};
use edgerep_replica::Message;
use edgerep_wire::seal::{Proof, chain_link, chain_start, event_leaf, merkle_path, merkle_root};
use edgerep_wire::{NodeId, Seal};

/// node-1 and node-3 running (node-2's identity is the attacker's), converged on one write each.
fn honest_pair(dir: &std::path::Path) -> (Vec<PathBuf>, Node, Node) {
    let configs = cluster(dir, 3);
    let (n1, n3) = start_honest_pair(&configs);
    (configs, n1, n3)
}

/// Starts node-1 and node-3 of `configs` (as the test left them), each writes one key, and
/// they converge.
/// `[authorization] node-2 = ["orders"]` on the honest nodes (node-1 and node-3; peers must
/// share the policy).
fn node2_may_write_only_orders(configs: &[PathBuf]) {
    for c in [&configs[0], &configs[2]] {
        let text = std::fs::read_to_string(c).unwrap();
        std::fs::write(
            c,
            format!("{text}\n[authorization]\nnode-2 = [\"orders\"]\n"),
        )
        .unwrap();
    }
}

fn start_honest_pair(configs: &[PathBuf]) -> (Node, Node) {
    let n1 = Node::start(&configs[0]);
    let n3 = Node::start(&configs[2]);
    put(&n1, "c", "from-1", r#"{"v":1}"#);
    put(&n3, "c", "from-3", r#"{"v":3}"#);
    converge(&[&n1, &n3], Duration::from_secs(30));
    (n1, n3)
}

/// Connects as node-2 to node-1 claiming to hold node-1's own events up to 1,000,000 (node-1
/// wrote a few), with a seal there signed by node-2's key when `signed`; node-1 answers the
/// handshake.
fn claiming_node1_wrote_more(configs: &[PathBuf], signed: bool) -> Hostile {
    let mut h = Hostile::connect(&configs[1], &configs[0]);
    let mut hello = h.hello(&[("node-1", 1_000_000)], &[]);
    if signed && let Message::Hello(hello) = &mut hello {
        let node1 = NodeId::parse("node-1").unwrap();
        hello.your_seal = Some(h.seal(node1, 999_990, 1_000_000, [1; 32], [2; 32]));
    }
    h.send(&hello).unwrap();
    assert!(
        h.wait_for(Duration::from_secs(5), |m| matches!(m, Message::Hello(_)))
            .is_some(),
        "node-1 answers the handshake"
    );
    h
}

/// Adds `keys` (TOML lines, each ending in `\n`) to the `[retention]` table of `config`.
fn with_retention(config: &std::path::Path, keys: &str) {
    let text = std::fs::read_to_string(config).unwrap();
    assert!(
        text.contains("\n[retention]\n"),
        "no [retention] table in {config:?}"
    );
    let text = text.replace("\n[retention]\n", &format!("\n[retention]\n{keys}"));
    std::fs::write(config, text).unwrap();
}

/// Connects as node-2 to node-1 and completes the handshake.
fn attacker(configs: &[PathBuf], compacted: &[(&str, u64)]) -> Hostile {
    let mut h = Hostile::connect(&configs[1], &configs[0]);
    let hello = h.hello(&[], compacted);
    h.send(&hello).unwrap();
    assert!(
        h.wait_for(Duration::from_secs(5), |m| matches!(m, Message::Hello(_)))
            .is_some(),
        "node-1 answers the handshake"
    );
    h
}

/// Waits until key `key` of collection `c` can be read on `node`.
fn wait_for_key(node: &Node, key: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(node, "c", key).0 != 200 {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn replication(node: &Node) -> serde_json::Value {
    status(node)["replication"].clone()
}

/// `edgerep status --check` on the node of `config` fails, naming `words`.
fn check_fails_naming(config: &Path, words: &str) {
    let out = edgerep(&["status", "--check", "--config", config.to_str().unwrap()]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains(words) || stdout(&out).contains(words),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
}

/// Waits until `check` holds on node's replication status.
fn wait_status(node: &Node, what: &str, check: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = replication(node);
        if check(&r) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {r:#}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A causal context naming node-1's own sequence numbers far ahead: before, the next local
/// write to the key tripped an assert and killed node-1's committer. Now the event is held back
/// (it names events nobody wrote), node-1 keeps taking writes to that key, and it is reported.
#[test]
fn a_context_naming_this_nodes_future_is_held_back_and_the_committer_lives() {
    let dir = tempfile::tempdir().unwrap();
    let (configs, n1, n3) = honest_pair(dir.path());
    let mut h = attacker(&configs, &[]);
    let poisoned = with_context(
        event("node-2", 1, "c", "k", 666),
        &[("node-1", u64::MAX - 1)],
    );
    let m = h.sealed(vec![poisoned]);
    h.send(&m).unwrap();
    wait_status(&n1, "the event is held back with a reason", |r| {
        r["deferred_total"].as_u64().unwrap_or(0) >= 1
            && r["deferred_last"]
                .as_str()
                .is_some_and(|s| s.contains("this node issued only up to"))
    });
    // The key the poisoned event targets still takes writes, again and again.
    for i in 0..3 {
        put(&n1, "c", "k", &format!(r#"{{"v":{i}}}"#));
    }
    put(&n3, "c", "after", r#"{"v":3}"#);
    let s = converge(&[&n1, &n3], Duration::from_secs(30));
    assert!(s["origins"].get("node-2").is_none(), "{s}");
    assert_eq!(get(&n3, "c", "k").1, r#"{"v":2}"#);
}

/// A snapshot page nobody asked for, whose `have` claims node-3's events up to 10^12: before,
/// node-1 dropped node-3's real events as duplicates from then on. Now it is declined (node-1 is
/// not behind the sender's compacted floors), reported, and node-3's writes keep arriving.
#[test]
fn an_unsolicited_snapshot_is_declined_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (configs, n1, n3) = honest_pair(dir.path());
    let mut h = attacker(&configs, &[]);
    h.send(&Message::Snapshot {
        id: 0,
        page: 0,
        floors: vec![],
        versions: vec![event("node-3", 1, "c", "from-3", 999).into()],
        proofs: vec![Proof {
            seal: 1,
            path: vec![],
        }],
        done: true,
        have: vec![(NodeId::parse("node-3").unwrap(), 1_000_000_000_000)],
        seals: vec![],
        certs: vec![],
    })
    .unwrap();
    wait_status(&n1, "the snapshot is declined and reported", |r| {
        r["snapshots_declined_total"] == 1
            && r["refused"][0]["reason"]
                .as_str()
                .is_some_and(|s| s.contains("declined"))
    });
    for i in 0..20 {
        put(&n3, "c", &format!("later-{i}"), r#"{"v":3}"#);
    }
    let s = converge(&[&n1, &n3], Duration::from_secs(30));
    assert_eq!(s["origins"]["node-3"], 21, "{s}");
    assert_eq!(get(&n1, "c", "from-3").1, r#"{"v":3}"#);
}

/// Sends `forged` (events of node-3, sealed with the attacker's key): the connection is closed
/// naming node-3, and node-1 reports the refusal.
fn forgery_is_refused(h: &mut Hostile, n1: &Node, forged: Vec<edgerep_wire::Event>) {
    let m = h.sealed(forged);
    h.send(&m).unwrap();
    let reason = h.closed_within(Duration::from_secs(5));
    assert!(
        reason.as_deref().is_some_and(|r| r.contains("node-3")),
        "{reason:?}"
    );
    wait_status(n1, "the forgery is reported", |r| {
        r["refused"].as_array().is_some_and(|l| {
            l.iter().any(|x| {
                x["reason"]
                    .as_str()
                    .is_some_and(|s| s.contains("events of node-3 up to"))
            })
        })
    });
}

/// Events under the name of node-3 (connected to node-1) with the sequence numbers node-3 will
/// use next: before, they were stored and node-3's real events were dropped as duplicates. Now
/// their seal, not node-3's, refuses them and cuts the peer off, and node-3's real writes win.
#[test]
fn events_forged_under_a_connected_origins_name_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (configs, n1, n3) = honest_pair(dir.path());
    let mut h = attacker(&configs, &[]);
    let forged: Vec<_> = (2..=4)
        .map(|seq| event("node-3", seq, "c", &format!("x{seq}"), 666))
        .collect();
    forgery_is_refused(&mut h, &n1, forged);
    for seq in 2..=4 {
        put(&n3, "c", &format!("x{seq}"), r#"{"v":3}"#);
    }
    converge(&[&n1, &n3], Duration::from_secs(30));
    for seq in 2..=4 {
        assert_eq!(get(&n1, "c", &format!("x{seq}")).1, r#"{"v":3}"#);
    }
}

/// node-2's events to one key, each with a causal context that leaves node-2's own earlier
/// writes out (an honest node's never does): before, each stayed as a concurrent version, so the
/// key's row grew by one version per event, was re-encoded whole at every write, and would soon
/// not fit a message that could repair it. Now the key holds node-2's latest version only, and
/// node-3 (which got them through node-1) holds the same.
#[test]
fn an_origin_cannot_pile_up_versions_of_one_key() {
    let dir = tempfile::tempdir().unwrap();
    let (configs, n1, n3) = honest_pair(dir.path());
    let mut h = attacker(&configs, &[]);
    let piled: Vec<_> = (1..=250)
        .map(|seq| event("node-2", seq, "c", "k", seq))
        .collect();
    let m = h.sealed(piled);
    h.send(&m).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while status(&n1)["origins"]["node-2"] != 250 {
        assert!(Instant::now() < deadline, "node-1 applies the events");
        std::thread::sleep(Duration::from_millis(50));
    }
    let s = converge(&[&n1, &n3], Duration::from_secs(30));
    assert_eq!(s["origins"]["node-2"], 250, "{s}");
    for node in [&n1, &n3] {
        let mut r = agent()
            .get(&node.url("/v1/kv/c/k?versions=true"))
            .call()
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let body: serde_json::Value =
            serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
        let versions = body["versions"].as_array().unwrap();
        assert_eq!(versions.len(), 1, "{body:#}");
        assert_eq!(versions[0]["seq"], 250, "{body:#}");
    }
}

/// node-2's event 1 sent to node-1 and applied there, and another event 1 sealed as validly
/// (a restored node-2, or a liar), not sent: the message that would send it.
fn second_history(h: &mut Hostile, n1: &Node) -> Message {
    let m = h.sealed(vec![event("node-2", 1, "c", "fork", 1)]);
    h.send(&m).unwrap();
    wait_for_key(n1, "fork", "node-2:1 applied");
    h.sealed(vec![event("node-2", 1, "c", "fork", 2)])
}

/// The same origin and sequence number with different contents (node-2 restored from an old
/// backup, or lying): the second is never applied, and the fork is reported with both hashes
/// and the peer it came from.
#[test]
fn a_fork_is_detected_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (configs, n1, n3) = honest_pair(dir.path());
    let mut h = attacker(&configs, &[]);
    let m = second_history(&mut h, &n1);
    h.send(&m).unwrap();
    wait_status(&n1, "the fork is reported", |r| r["forks_total"] == 1);
    let r = replication(&n1);
    let fork = &r["forks"][0];
    assert_eq!(fork["origin"], "node-2");
    assert_eq!(fork["seq"], 1);
    assert_eq!(fork["from_peer"], "node-2");
    assert_ne!(fork["held_hash"], fork["received_hash"]);
    assert_eq!(fork["held_hash"].as_str().unwrap().len(), 64);
    assert_eq!(get(&n1, "c", "fork").1, r#"{"v":1}"#);
    converge(&[&n1, &n3], Duration::from_secs(30));
}

/// A second history of 2,000 of node-2's own events, each under a seal of its own: before,
/// proving them scanned the whole batch once per seal and checked 2,000 signatures on the
/// replicator thread for every such message (and reported 2,000 forks). Now a batch proves at
/// most 16 seals: 16 forks are reported, whatever the peer resends, and node-3's writes keep
/// reaching node-1.
#[test]
fn a_long_second_history_buys_a_bounded_number_of_proofs() {
    let dir = tempfile::tempdir().unwrap();
    let (configs, n1, n3) = honest_pair(dir.path());
    let mut h = attacker(&configs, &[]);
    let n = 2000;
    let first: Vec<_> = (1..=n)
        .map(|seq| event("node-2", seq, "c", &format!("h{seq}"), 1))
        .collect();
    let m = h.sealed(first);
    h.send(&m).unwrap();
    wait_for_key(&n1, &format!("h{n}"), "node-2's first history applied");
    // The second history, each event sealed alone (one signature check each to prove).
    let (mut events, mut seals) = (Vec::new(), Vec::new());
    for seq in 1..=n {
        let Message::Events {
            events: e,
            seals: s,
            ..
        } = h.sealed(vec![event("node-2", seq, "c", &format!("h{seq}"), 2)])
        else {
            unreachable!()
        };
        events.extend(e);
        seals.extend(s);
    }
    let fork = Message::Events {
        events,
        seals,
        certs: Vec::new(),
    };
    for _ in 0..5 {
        h.send(&fork).unwrap();
    }
    wait_status(&n1, "forks are reported", |r| r["forks_total"] == 16);
    put(&n3, "c", "after", r#"{"v":3}"#);
    wait_for_key(&n1, "after", "node-3's write reaches node-1");
    let r = replication(&n1);
    assert_eq!(r["forks_total"], 16, "{r}");
    assert_eq!(get(&n1, "c", "h1").1, r#"{"v":1}"#);
}

/// A peer that dials again and again without opening its link: each connection used to live
/// until its link was due (10 s), holding its buffers, and the one before stayed up beside
/// it. Now a new connection from a peer closes the one it made before, at once.
#[test]
fn a_peer_holds_one_accepted_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (configs, n1, n3) = honest_pair(dir.path());
    let first = attacker(&configs, &[]);
    let bare = (0..3).map(|_| Hostile::connect(&configs[1], &configs[0]));
    let mut all: Vec<Hostile> = std::iter::once(first).chain(bare).collect();
    // Each but the last was closed by the next.
    for h in &mut all[..3] {
        let reason = h.closed_within(Duration::from_secs(5));
        assert!(
            reason
                .as_deref()
                .is_some_and(|r| r.contains("the peer connected again")),
            "{reason:?}"
        );
    }
    put(&n3, "c", "after", r#"{"v":3}"#);
    wait_for_key(&n1, "after", "node-3's write reaches node-1");
}

/// A changed copy of node-3's event 1, which node-1 holds, sent without node-3's seal over it
/// (under a seal node-2 made): before, it was reported as a fork, so any peer could raise a
/// false alarm. Now a fork is reported only when the origin's seal proves the other event; this
/// is a change by the peer: refused, the peer cut off, no fork reported.
#[test]
fn a_changed_copy_of_a_held_event_is_refused_not_reported_as_a_fork() {
    let dir = tempfile::tempdir().unwrap();
    let (configs, n1, n3) = honest_pair(dir.path());
    let mut h = attacker(&configs, &[]);
    let m = h.sealed(vec![event("node-3", 1, "c", "from-3", 666)]);
    h.send(&m).unwrap();
    let reason = h.closed_within(Duration::from_secs(10));
    assert!(
        reason
            .as_deref()
            .is_some_and(|r| r.contains("node-3:1 differs") && r.contains("the peer changed it")),
        "{reason:?}"
    );
    wait_status(&n1, "the refusal is reported", |r| {
        r["refused"][0]["reason"]
            .as_str()
            .is_some_and(|e| e.contains("node-3:1 differs"))
    });
    let r = replication(&n1);
    assert_eq!(r["forks_total"], 0, "{r}");
    assert_eq!(get(&n1, "c", "from-3").1, r#"{"v":3}"#);
    put(&n3, "c", "after", r#"{"v":3}"#);
    converge(&[&n1, &n3], Duration::from_secs(30));
}

/// Garbage where a message should be, and a frame over the limit: the session is closed with
/// the reason, and node-1 keeps serving its clients and node-3.
#[test]
fn malformed_and_oversize_frames_close_only_that_session() {
    let dir = tempfile::tempdir().unwrap();
    let (configs, n1, n3) = honest_pair(dir.path());
    let mut h = attacker(&configs, &[]);
    h.send_raw(&[0x9f, 0xff, 0x00, 0x13]).unwrap();
    let reason = h.closed_within(Duration::from_secs(5));
    assert!(
        reason.as_deref().is_some_and(|r| r.contains("undecodable")),
        "{reason:?}"
    );
    let mut h = attacker(&configs, &[]);
    // A length prefix of 64 MiB.
    h.send_bytes(&(64u32 << 20).to_be_bytes()).unwrap();
    let reason = h.closed_within(Duration::from_secs(5));
    assert!(reason.is_some(), "an oversize frame closes the session");
    put(&n1, "c", "still", r#"{"v":1}"#);
    put(&n3, "c", "still-3", r#"{"v":3}"#);
    converge(&[&n1, &n3], Duration::from_secs(30));
}

/// Events from a hundred made-up origins: node-1 holds events of at most itself, its two peers
/// and `replication.extra_origins` (16) origins; the rest are refused and reported.
#[test]
fn a_flood_of_origins_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let (configs, n1, n3) = honest_pair(dir.path());
    let mut h = attacker(&configs, &[]);
    let events = (0..100)
        .map(|i| event(&format!("made-up-{i:03}"), 1, "c", &format!("m{i}"), i))
        .collect();
    let m = h.sealed(events);
    h.send(&m).unwrap();
    wait_status(&n1, "origins over the bound are refused", |r| {
        r["refused_total"].as_u64().unwrap_or(0) >= 1
            && r["refused"][0]["reason"]
                .as_str()
                .is_some_and(|s| s.contains("over its bound of 19"))
    });
    let origins = status(&n1)["origins"].as_object().unwrap().len();
    assert!(origins <= 19, "node-1 holds {origins} origins");
    put(&n3, "c", "after", r#"{"v":3}"#);
    wait_for_key(&n1, "after", "node-3's write reaches node-1");
}

/// A peer that completes the handshake and then never reads: node-1's memory for it is
/// bounded (its frame queue stops at 16 MiB), and it keeps serving node-3 and its clients.
#[test]
fn a_peer_that_never_reads_costs_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let (configs, n1, n3) = honest_pair(dir.path());
    // 3000 events of 16 KiB: 48 MiB the silent peer lacks.
    let big = format!(r#"{{"blob":"{}"}}"#, "x".repeat(16 * 1024));
    for i in 0..30 {
        let writes: Vec<String> = (0..100)
            .map(|j| format!(r#"{{"collection":"big","key":"b{i}-{j}","value":{big}}}"#))
            .collect();
        let body = format!(r#"{{"writes":[{}]}}"#, writes.join(","));
        let r = agent()
            .post(&n1.url("/v1/batch"))
            .content_type("application/json")
            .send(body.as_bytes())
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    converge(&[&n1, &n3], Duration::from_secs(60));
    let before = rss_bytes(n1.child.id());
    let _silent = attacker(&configs, &[]);
    // What the silent peer may cost: QUIC's send buffer (16 MiB), the frame queue (16 MiB) and
    // a batch; reading the changelog also warms the store's page cache (16 MiB). Before, each
    // go-back-N round (every 3 s) queued the whole window again: 48 MiB more every 3 s.
    std::thread::sleep(Duration::from_secs(4));
    let settled = rss_bytes(n1.child.id());
    std::thread::sleep(Duration::from_secs(9));
    let after = rss_bytes(n1.child.id());
    let mib = |b: u64| b >> 20;
    assert!(
        after.saturating_sub(settled) < 16 << 20 && after.saturating_sub(before) < 96 << 20,
        "node-1 for a peer that never reads: {} MiB before, {} MiB after 4 s, {} MiB after 13 s",
        mib(before),
        mib(settled),
        mib(after)
    );
    put(&n3, "c", "after", r#"{"v":3}"#);
    converge(&[&n1, &n3], Duration::from_secs(30));
    // A minute with nothing queued for it leaving: node-1 closes its link, so it stops
    // counting the peer as busy (holding its resend timers and retention) for as long as the
    // connection stays open.
    // (Its log says so: the status's last error is soon the dialer's, finding nobody at the
    // peer's address.)
    let deadline = Instant::now() + Duration::from_secs(75);
    loop {
        let log = std::fs::read_to_string(&n1.log).unwrap_or_default();
        if log.contains("the peer is not reading: nothing queued for it left for 60 s") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the link to a peer that never reads is not closed: {}",
            replication(&n1)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Status is refreshed apart from the log (about every 100 ms).
    let deadline = Instant::now() + Duration::from_secs(5);
    while replication(&n1)["peers"][0]["connected"] != false {
        assert!(
            Instant::now() < deadline,
            "the link is closed but status says connected: {}",
            replication(&n1)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// After node-2 (the higher id of the pair) is killed and restarted, it is back in replication
/// with node-1 within a second of starting to serve, not after QUIC's idle timeout.
#[test]
fn a_restarted_peer_is_back_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let configs = cluster(dir.path(), 2);
    let n1 = Node::start(&configs[0]);
    let n2 = Node::start(&configs[1]);
    put(&n2, "c", "before", r#"{"v":1}"#);
    converge(&[&n1, &n2], Duration::from_secs(30));
    n2.kill();
    let n2 = Node::start(&configs[1]);
    let started = Instant::now();
    put(&n2, "c", "after", r#"{"v":2}"#);
    loop {
        if get(&n1, "c", "after").0 == 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "node-2's write did not reach node-1 within 1 s of its restart: {}",
            replication(&n1)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Only node-2 (the greater id, which dials once at start) can open connections: node-1 has a
/// wrong address for it, as when node-2 sits behind NAT or a firewall that lets connections out
/// only. After node-1 restarts, node-2 dials again once node-1 has stayed away for a while;
/// before, the pair stayed apart for good.
#[test]
fn a_pair_that_only_the_greater_id_can_connect_reconnects_after_a_drop() {
    let dir = tempfile::tempdir().unwrap();
    let configs = cluster(dir.path(), 2);
    let unused = UdpSocket::bind("127.0.0.1:0").unwrap();
    let nowhere = unused.local_addr().unwrap().to_string();
    // node-1's one [[peers]] table is node-2's.
    let text: Vec<String> = std::fs::read_to_string(&configs[0])
        .unwrap()
        .lines()
        .map(|l| {
            if l.starts_with("address = ") {
                format!("address = \"{nowhere}\"")
            } else {
                l.to_owned()
            }
        })
        .collect();
    std::fs::write(&configs[0], text.join("\n")).unwrap();
    let n1 = Node::start(&configs[0]);
    let n2 = Node::start(&configs[1]);
    put(&n1, "c", "before", r#"{"v":1}"#);
    converge(&[&n1, &n2], Duration::from_secs(30));
    n1.kill();
    let n1 = Node::start(&configs[0]);
    // node-1 takes writes once a peer told it how far its own events go: node-2, once it
    // dialed again (before, never: every write was refused after its 10 s wait).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = agent()
            .put(&n1.url("/v1/kv/c/after"))
            .content_type("application/json")
            .send(r#"{"v":2}"#.as_bytes())
            .unwrap();
        if r.status() == 200 {
            break;
        }
        assert_eq!(r.status(), 503);
        assert!(
            Instant::now() < deadline,
            "node-1 never took a write again: {}",
            replication(&n1)
        );
    }
    while get(&n2, "c", "after").0 != 200 {
        assert!(
            Instant::now() < deadline,
            "node-2 never dialed node-1 again: {}",
            replication(&n2)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(unused);
}

/// A peer claiming, as node-1 starts, to hold node-1's own events far beyond what node-1 wrote:
/// before, node-1's origin gate waited for those events for ever and every local write failed
/// after `ORIGIN_WAIT`. Now the claim counts only with node-1's own seal at that number behind
/// it (`Hello::your_seal`): without one it is taken as no claim, and logged. A signed seal there
/// that node-1's key does not verify keeps the gate shut, with an error naming the peer: node-1's
/// key may have changed since it wrote those events (writes would then fork them), or the peer
/// lies, and only an operator can tell which (revoking the peer reopens it).
#[test]
fn a_made_up_claim_on_a_nodes_own_events_does_not_hold_its_writes_back() {
    let dir = tempfile::tempdir().unwrap();
    let (configs, n1, n3) = honest_pair(dir.path());
    // node-3 stays away, so the attacker's claim is the first node-1 hears.
    n1.terminate();
    let _ = n3.terminate();
    let n1 = Node::start(&configs[0]);
    let h = claiming_node1_wrote_more(&configs, false);
    let started = Instant::now();
    assert_eq!(
        put(&n1, "c", "after", r#"{"v":2}"#),
        2,
        "node-1 takes writes"
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "the write waited {:?}",
        started.elapsed()
    );
    let log = std::fs::read_to_string(&n1.log).unwrap();
    assert!(
        log.contains("holds this node's own events up to 1000000, without this node's seal there"),
        "{log}"
    );
    drop(h);
    // Again, now with a seal over node-1's name signed by node-2's key.
    n1.terminate();
    let n1 = Node::start(&configs[0]);
    let h = claiming_node1_wrote_more(&configs, true);
    let mut r = agent()
        .put(&n1.url("/v1/kv/c/refused"))
        .content_type("application/json")
        .config()
        .http_status_as_error(false)
        .build()
        .send(r#"{"v":3}"#.as_bytes())
        .unwrap();
    assert_eq!(r.status(), 503, "no write while the claim stands");
    // The answer says why and what to do (it said "waiting for the missing ones to come
    // back", which they never would).
    let answer = r.body_mut().read_to_string().unwrap();
    assert!(
        answer.contains("this node's key does not verify")
            && answer.contains("new node id")
            && answer.contains("node-2"),
        "{answer}"
    );
    let log = std::fs::read_to_string(&n1.log).unwrap();
    assert!(
        log.contains("under a seal this node's key does not verify"),
        "{log}"
    );
    // An operator's alert sees it too.
    let metrics = common::metrics(&n1);
    assert!(
        metrics.contains("\nedgerep_local_writes_waiting 1.0\n"),
        "{metrics}"
    );
    drop(h);
    // node-3 comes back, node-1 restarts, and the honest pair converges.
    n1.terminate();
    let n1 = Node::start(&configs[0]);
    let n3 = Node::start(&configs[2]);
    let s = converge(&[&n1, &n3], Duration::from_secs(30));
    assert_eq!(s["origins"]["node-1"], 2, "{s}");
}

/// Once node-1's origin gate opened (it took writes), a peer claims to hold node-1's events far
/// beyond what node-1 wrote, first without a seal, then under a seal signed by its own key. Only
/// a claim proven by node-1's own seal closes the gate again (a restore that opened it too
/// early): these do not, and node-1 goes on taking writes at once.
#[test]
fn a_made_up_claim_after_the_gate_opened_does_not_stop_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (configs, n1, _n3) = honest_pair(dir.path());
    for (i, signed) in [false, true].into_iter().enumerate() {
        let h = claiming_node1_wrote_more(&configs, signed);
        let started = Instant::now();
        assert_eq!(
            put(&n1, "c", &format!("after-{i}"), r#"{"v":2}"#),
            2 + i as u64,
            "node-1 takes writes"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the write waited {:?}",
            started.elapsed()
        );
        assert!(
            replication(&n1)["origin_check"].is_null(),
            "{}",
            replication(&n1)
        );
        drop(h);
    }
    let log = std::fs::read_to_string(&n1.log).unwrap();
    assert!(
        log.contains("without this node's verified seal behind it its word is not proof"),
        "{log}"
    );
}

/// A second machine running under node-2's id (a cloned device): the two displace each
/// other's sessions at node-1; node-1 detects it, reports it, and refuses the id for a while.
#[test]
fn two_machines_under_one_node_id_are_detected() {
    let dir = tempfile::tempdir().unwrap();
    let configs = cluster(dir.path(), 2);
    let n1 = Node::start(&configs[0]);
    let n2 = Node::start(&configs[1]);
    converge(&[&n1, &n2], Duration::from_secs(30));
    // The clone: node-2's config and certificates, its own ports and data directory.
    let original = std::fs::read_to_string(&configs[1]).unwrap();
    let api = edgerep_config::Config::load(&configs[1]).unwrap();
    let free = |_: u8| {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let clone_text = original
        .replace(&api.api.listen.port().to_string(), &free(0).to_string())
        .replace(
            &api.replication.listen.port().to_string(),
            &free(1).to_string(),
        )
        .replace("data_dir = \"data\"", "data_dir = \"data-clone\"");
    assert_ne!(clone_text, original);
    let clone_config = configs[1].with_file_name("clone.toml");
    std::fs::write(&clone_config, clone_text).unwrap();
    let clone = Node::start(&clone_config);
    wait_status(&n1, "the duplicate id is reported", |r| {
        r["peers"][0]["duplicate_id"]
            .as_str()
            .is_some_and(|s| s.contains("two machines use node id"))
    });
    // The twin node-1 cut off hears it (the other, when it next connects within the minute
    // node-1 refuses both), reports it, and `status --check` asks for an operator: before,
    // only its peer's close reason said so.
    let reports = |n: &Node| {
        replication(n)["another_machine_uses_this_id"]
            .as_str()
            .is_some_and(|s| s.contains("peer node-1 saw it"))
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while !reports(&n2) && !reports(&clone) {
        assert!(Instant::now() < deadline, "no twin reports it");
        std::thread::sleep(Duration::from_millis(50));
    }
    for (twin, config) in [(&n2, &configs[1]), (&clone, &clone_config)] {
        if !reports(twin) {
            continue;
        }
        check_fails_naming(config, "another machine uses this node's id");
    }
}

/// Events under the name of node-3 while node-3 is not connected to node-1 (it is down): the
/// stolen identity cannot make node-3's seal. Before seals, node-1 stored and relayed them, and
/// node-3's real events were dropped as duplicates. Now nothing of the batch is applied, the
/// session is closed, the refusal is reported, and node-3's real events win when it is back.
#[test]
fn events_forged_under_another_origins_name_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let configs = cluster(dir.path(), 3);
    let n1 = Node::start_with(&configs[0], &["--alone"]);
    put(&n1, "c", "from-1", r#"{"v":1}"#);
    let mut h = attacker(&configs, &[]);
    let forged: Vec<_> = (1..=3)
        .map(|seq| event("node-3", seq, "c", &format!("x{seq}"), 666))
        .collect();
    forgery_is_refused(&mut h, &n1, forged);
    assert!(status(&n1)["origins"].get("node-3").is_none());
    let n3 = Node::start(&configs[2]);
    for seq in 1..=3 {
        put(&n3, "c", &format!("x{seq}"), r#"{"v":3}"#);
    }
    converge(&[&n1, &n3], Duration::from_secs(30));
    for seq in 1..=3 {
        assert_eq!(get(&n1, "c", &format!("x{seq}")).1, r#"{"v":3}"#);
    }
}

/// A snapshot that claims node-3's events up to 10^12 with a seal node-2 made (and floors that
/// make node-1 look behind): node-1 raises no have it cannot prove, and node-3's writes keep
/// arriving.
#[test]
fn a_snapshot_have_without_its_origins_seal_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (configs, n1, n3) = honest_pair(dir.path());
    let mut h = attacker(&configs, &[]);
    let node3 = NodeId::parse("node-3").unwrap();
    let seq = 1_000_000_000_000;
    // Signed with node-2's key under node-3's name.
    let seal = h.seal(node3.clone(), seq, seq, [7; 32], [8; 32]);
    h.send(&Message::Snapshot {
        id: 0,
        page: 0,
        floors: vec![(node3.clone(), seq)],
        versions: vec![],
        proofs: vec![],
        done: true,
        have: vec![(node3.clone(), seq)],
        seals: vec![seal],
        certs: vec![(h.id.clone(), h.signer.cert().to_vec())],
    })
    .unwrap();
    let reason = h.closed_within(Duration::from_secs(10));
    assert!(
        reason
            .as_deref()
            .is_some_and(|r| r.contains("node-3's seal at 1000000000000")),
        "{reason:?}"
    );
    wait_status(&n1, "the refusal is reported", |r| {
        r["refused"][0]["reason"]
            .as_str()
            .is_some_and(|e| e.contains("node-3's seal at 1000000000000"))
    });
    let s = status(&n1);
    assert_eq!(s["origins"]["node-3"], 1, "{s}");
    for i in 0..20 {
        put(&n3, "c", &format!("later-{i}"), r#"{"v":3}"#);
    }
    let s = converge(&[&n1, &n3], Duration::from_secs(30));
    assert_eq!(s["origins"]["node-3"], 21, "{s}");
}

/// A snapshot page whose version of node-3's key carries a proof under node-3's name signed
/// with node-2's key (node-1 is behind the page's floors, so it takes the snapshot): refused
/// whole before anything is written, the sender cut off and reported; node-3's value stands.
#[test]
fn a_snapshot_version_under_another_origins_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (configs, n1, n3) = honest_pair(dir.path());
    let mut h = attacker(&configs, &[]);
    let node3 = NodeId::parse("node-3").unwrap();
    let forged = event("node-3", 1, "c", "from-3", 999);
    let leaf = event_leaf(&forged.encode());
    let seal = h.seal(
        node3.clone(),
        1,
        1,
        chain_link(&chain_start(&node3), &leaf),
        leaf,
    );
    h.send(&Message::Snapshot {
        id: 0,
        page: 0,
        floors: vec![(node3.clone(), 50)],
        versions: vec![forged.into()],
        proofs: vec![Proof {
            seal: 1,
            path: vec![],
        }],
        done: false,
        have: vec![],
        seals: vec![seal],
        certs: vec![(h.id.clone(), h.signer.cert().to_vec())],
    })
    .unwrap();
    let reason = h.closed_within(Duration::from_secs(10));
    assert!(
        reason
            .as_deref()
            .is_some_and(|r| r.contains("node-3's seal at 1")),
        "{reason:?}"
    );
    wait_status(&n1, "the refusal is reported", |r| {
        r["refused"][0]["reason"]
            .as_str()
            .is_some_and(|e| e.contains("node-3's seal at 1"))
    });
    assert_eq!(get(&n1, "c", "from-3").1, r#"{"v":3}"#);
    put(&n3, "c", "after", r#"{"v":3}"#);
    let s = converge(&[&n1, &n3], Duration::from_secs(30));
    assert_eq!(s["origins"]["node-3"], 2, "{s}");
}

/// node-2's own genuine seal over a block of its events, and one of those events changed in a
/// snapshot page: the Merkle path no longer leads to the signed root. Refused, nothing merged.
#[test]
fn a_changed_version_under_its_origins_genuine_seal_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (configs, n1, n3) = honest_pair(dir.path());
    let mut h = attacker(&configs, &[]);
    let node2 = h.id.clone();
    let events: Vec<_> = (1..=5)
        .map(|seq| event("node-2", seq, "c", &format!("k{seq}"), seq))
        .collect();
    let leaves: Vec<_> = events.iter().map(|e| event_leaf(&e.encode())).collect();
    let mut chain = chain_start(&node2);
    for leaf in &leaves {
        chain = chain_link(&chain, leaf);
    }
    let seal = h.seal(node2.clone(), 1, 5, chain, merkle_root(&leaves));
    let mut changed = events[2].clone();
    changed.value = event("node-2", 3, "c", "k3", 1_000_000).value;
    h.send(&Message::Snapshot {
        id: 0,
        page: 0,
        floors: vec![(node2.clone(), 5)],
        versions: vec![events[1].clone().into(), changed.into()],
        proofs: vec![
            Proof {
                seal: 5,
                path: merkle_path(&leaves, 1),
            },
            Proof {
                seal: 5,
                path: merkle_path(&leaves, 2),
            },
        ],
        done: false,
        have: vec![],
        seals: vec![seal],
        certs: vec![(node2.clone(), h.signer.cert().to_vec())],
    })
    .unwrap();
    let reason = h.closed_within(Duration::from_secs(10));
    assert!(
        reason.as_deref().is_some_and(
            |r| r.contains("version node-2:3") && r.contains("is not what node-2 sealed")
        ),
        "{reason:?}"
    );
    // Nothing of the page was merged, not even its genuine version.
    assert_eq!(get(&n1, "c", "k2").0, 404);
    assert_eq!(get(&n1, "c", "k3").0, 404);
    put(&n3, "c", "after", r#"{"v":3}"#);
    converge(&[&n1, &n3], Duration::from_secs(30));
}

/// A stolen node is revoked while it is connected: the operator adds `[[revoked]]` to every
/// node's config and sends SIGHUP. Its session is closed at once, its reconnection refused,
/// and the honest nodes go on replicating with each other.
#[test]
fn a_revoked_node_is_cut_off_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let (configs, n1, n3) = honest_pair(dir.path());
    let mut h = attacker(&configs, &[]);
    let m = h.sealed(vec![event("node-2", 1, "c", "before", 1)]);
    h.send(&m).unwrap();
    wait_for_key(&n1, "before", "node-2:1 applied before the revocation");
    // A broken config on SIGHUP changes nothing: logged, the node serves on, node-2 stays.
    let good = std::fs::read_to_string(&configs[0]).unwrap();
    std::fs::write(&configs[0], format!("{good}\n[[revoked]]\nnode = 7\n")).unwrap();
    common::send_signal(n1.child.id() as i32, "HUP");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(h.closed_within(Duration::from_millis(200)), None);
    assert_eq!(get(&n1, "c", "before").0, 200, "node-1 serves on");
    std::fs::write(&configs[0], &good).unwrap();
    for (config, node) in [(&configs[0], &n1), (&configs[2], &n3)] {
        common::revoke_in_config(config, "node-2", 1);
        common::send_signal(node.child.id() as i32, "HUP");
    }
    let reason = h.closed_within(Duration::from_secs(5));
    assert!(
        reason.as_deref().is_some_and(|r| r.contains("revoked")),
        "{reason:?}"
    );
    wait_status(&n1, "the peer shows as revoked", |r| {
        r["peers"][0]["revoked"] == true
    });
    // Back with the same certificate: refused.
    let mut again = Hostile::connect(&configs[1], &configs[0]);
    let hello = again.hello(&[], &[]);
    let _ = again.send(&hello);
    assert!(
        again
            .closed_within(Duration::from_secs(5))
            .is_some_and(|r| r.contains("revoked")),
        "a revoked node cannot come back"
    );
    // The honest pair, both reloaded, still replicate; node-2's event up to after_seq stays.
    put(&n3, "c", "after", r#"{"v":3}"#);
    converge(&[&n1, &n3], Duration::from_secs(30));
    assert_eq!(get(&n1, "c", "before").0, 200);
}

/// node-2 signs a second history of its own (events chained from another event 2 than the one
/// node-1 holds): a fork, not a forgery. node-1 keeps what it holds, reports the fork, and the
/// session stays up for everything else.
#[test]
fn a_second_signed_history_is_reported_and_the_session_stays_up() {
    let dir = tempfile::tempdir().unwrap();
    let (configs, n1, n3) = honest_pair(dir.path());
    let mut h = attacker(&configs, &[]);
    let first = h.sealed(vec![
        event("node-2", 1, "c", "h1", 1),
        event("node-2", 2, "c", "h2", 2),
    ]);
    h.send(&first).unwrap();
    wait_for_key(&n1, "h2", "node-2:1..2 applied");
    // Another event 2, never sent: events 3..4 chain from it, under node-2's valid seal.
    let _ = h.sealed(vec![event("node-2", 2, "c", "h2", 222)]);
    let second = h.sealed(vec![
        event("node-2", 3, "c", "h3", 3),
        event("node-2", 4, "c", "h4", 4),
    ]);
    h.send(&second).unwrap();
    wait_status(&n1, "the fork is reported", |r| {
        r["forks"].as_array().is_some_and(|f| {
            f.iter()
                .any(|x| x["origin"] == "node-2" && x["seq"] == 4 && x["from_peer"] == "node-2")
        })
    });
    assert_eq!(
        h.closed_within(Duration::from_millis(500)),
        None,
        "session up"
    );
    assert_eq!(get(&n1, "c", "h3").0, 404, "the other history is not taken");
    assert_eq!(status(&n1)["origins"]["node-2"], 2);
    put(&n3, "c", "after", r#"{"v":3}"#);
    converge(&[&n1, &n3], Duration::from_secs(30));
}

/// A certificate that does not chain to the cluster's CA, sent as another origin's with that
/// peer's own (valid) events: the batch is refused, the session closed, the refusal reported.
#[test]
fn a_certificate_from_outside_the_deployment_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (configs, n1, n3) = honest_pair(dir.path());
    let mut h = attacker(&configs, &[]);
    let mut m = h.sealed(vec![event("node-2", 1, "c", "k", 1)]);
    if let Message::Events { certs, .. } = &mut m {
        certs.push((
            NodeId::parse("node-3").unwrap(),
            vec![0x30, 0x82, 0x01, 0x00, 7, 7],
        ));
    }
    h.send(&m).unwrap();
    let reason = h.closed_within(Duration::from_secs(5));
    assert!(
        reason.as_deref().is_some_and(|r| r.contains("certificate")),
        "{reason:?}"
    );
    assert_eq!(get(&n1, "c", "k").0, 404);
    // The same without events to refuse: before, the session stayed up and each message of
    // new made-up certificates bought signature checks on the replicator thread.
    let mut h = attacker(&configs, &[]);
    h.send(&Message::Events {
        events: vec![],
        seals: vec![],
        certs: vec![(
            NodeId::parse("node-3").unwrap(),
            vec![0x30, 0x82, 0x01, 0x00, 8, 8],
        )],
    })
    .unwrap();
    let reason = h.closed_within(Duration::from_secs(5));
    assert!(
        reason
            .as_deref()
            .is_some_and(|r| r.contains("certificate it sent as node-3's was refused")),
        "{reason:?}"
    );
    put(&n3, "c", "after", r#"{"v":3}"#);
    converge(&[&n1, &n3], Duration::from_secs(30));
}

/// Another certificate the CA issued node-3's id (a key of a site rebuilt before, say), sent by
/// another peer: before, it replaced node-3's key at node-1, which then refused node-3's next
/// batch as forged and cut its link, again after every reconnect. Now it adds a key and takes
/// none away: node-3's writes reach node-1 with nothing refused.
#[test]
fn another_certificate_of_an_origin_sent_by_a_peer_does_not_cut_that_origin_off() {
    let dir = tempfile::tempdir().unwrap();
    let (configs, n1, n3) = honest_pair(dir.path());
    let old = dir.path().join("old-node-3");
    let o = edgerep(&[
        "certs",
        "node",
        "--ca",
        dir.path().join("ca").to_str().unwrap(),
        "--node-id",
        "node-3",
        old.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let read = |name: &str| std::fs::read_to_string(old.join(name)).unwrap();
    let other = edgerep_transport::certs::Identity::from_pem(
        &read("ca.pem"),
        &read("node.pem"),
        &read("node.key"),
    )
    .unwrap();
    let mut h = attacker(&configs, &[]);
    h.send(&Message::Events {
        events: vec![],
        seals: vec![],
        certs: vec![(NodeId::parse("node-3").unwrap(), other.cert().to_vec())],
    })
    .unwrap();
    // The message is taken in before node-3's next writes reach node-1.
    std::thread::sleep(Duration::from_millis(500));
    for i in 0..5 {
        put(&n3, "c", &format!("after-{i}"), r#"{"v":3}"#);
        converge(&[&n1, &n3], Duration::from_secs(30));
    }
    let r = replication(&n1);
    assert!(
        r["refused"].as_array().is_none_or(|l| l.is_empty()),
        "{r:#}"
    );
    // The session with the attacker is still up: a certificate the CA issued is no lie.
    assert!(h.closed_within(Duration::from_millis(200)).is_none());
}

/// Anti-entropy repair is no back door: versions of node-3's key that node-1 holds, "repaired"
/// by node-2 with a seal it made under node-3's name, are refused whole, the peer cut off and
/// reported, and node-3's value stands.
#[test]
fn a_forged_repair_is_refused_and_the_peer_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let (configs, n1, n3) = honest_pair(dir.path());
    let mut h = attacker(&configs, &[]);
    let forged = event("node-3", 1, "c", "from-3", 999);
    h.send(&first_event_repair(&h, 77, forged)).unwrap();
    let reason = h.closed_within(Duration::from_secs(10));
    assert!(
        reason
            .as_deref()
            .is_some_and(|r| r.contains("node-3's seal at 1")),
        "{reason:?}"
    );
    wait_status(&n1, "the refusal is reported", |r| {
        r["refused"][0]["reason"]
            .as_str()
            .is_some_and(|e| e.contains("node-3's seal at 1"))
    });
    assert_eq!(get(&n1, "c", "from-3").1, r#"{"v":3}"#);
    put(&n3, "c", "after", r#"{"v":3}"#);
    converge(&[&n1, &n3], Duration::from_secs(30));
}

/// Anti-entropy messages that are not what the protocol allows (a range outside the tree, a
/// Reconcile before the handshake) close that session only; node-1 serves on.
#[test]
fn malformed_anti_entropy_messages_close_only_that_session() {
    let dir = tempfile::tempdir().unwrap();
    let (configs, n1, n3) = honest_pair(dir.path());
    // Before the handshake.
    let mut h = common::hostile::Hostile::connect(&configs[1], &configs[0]);
    h.send(&Message::Reconcile {
        id: 1,
        fingerprints: vec![],
        items: vec![],
    })
    .unwrap();
    let reason = h.closed_within(Duration::from_secs(5));
    assert!(
        reason.as_deref().is_some_and(|r| r.contains("before")),
        "{reason:?}"
    );
    // A range at level 9: refused by the decoder, with the reason.
    let mut h = attacker(&configs, &[]);
    let mut frame = Message::Reconcile {
        id: 1,
        fingerprints: vec![edgerep_replica::reconcile::RangeFingerprint {
            node: edgerep_wire::aae::Node {
                level: 4,
                prefix: 0,
            },
            fingerprint: [0; 16],
            count: 1,
        }],
        items: vec![],
    }
    .encode();
    // [6, 1, [[4, 0, fp, 1]], []]: the level follows the heads of the list (0x81) and of the
    // range (0x84).
    let at = frame.windows(2).position(|w| w == [0x81, 0x84]).unwrap() + 2;
    assert_eq!(frame[at], 4);
    frame[at] = 9;
    h.send_raw(&frame).unwrap();
    let reason = h.closed_within(Duration::from_secs(5));
    assert!(
        reason
            .as_deref()
            .is_some_and(|r| r.contains("no tree node at level 9")),
        "{reason:?}"
    );
    assert_eq!(get(&n1, "c", "from-3").0, 200);
    put(&n3, "c", "after", r#"{"v":3}"#);
    converge(&[&n1, &n3], Duration::from_secs(30));
}

/// Anti-entropy requests that repeat themselves cost one answer, not one per repetition: a
/// Repair naming one 60 KiB key 16,384 times got 4,096 copies of its versions (about 250 MB,
/// and a frame too large to send); a Reconcile naming the root 4,096 times had node-1 read and
/// keep 4,096 copies of its whole state. Now the repair answers the key once, and the
/// reconcile is refused as overlapping ranges, closing only that session.
#[test]
fn anti_entropy_requests_that_repeat_themselves_cost_one_copy() {
    let dir = tempfile::tempdir().unwrap();
    let (configs, n1, n3) = honest_pair(dir.path());
    let big = format!(r#"{{"blob":"{}"}}"#, "x".repeat(60 * 1024));
    put(&n1, "c", "big", &big);
    converge(&[&n1, &n3], Duration::from_secs(30));
    // node-1 wrote from-1 (seq 1) and big (seq 2); the attacker acknowledges both, so node-1
    // may send it their versions in repair.
    let mut h = Hostile::connect(&configs[1], &configs[0]);
    let hello = h.hello(&[("node-1", 2), ("node-3", 1)], &[]);
    h.send(&hello).unwrap();
    assert!(
        h.wait_for(Duration::from_secs(5), |m| matches!(m, Message::Hello(_)))
            .is_some(),
        "node-1 answers the handshake"
    );
    let before = rss_bytes(n1.child.id());
    h.send(&Message::Repair {
        id: 7,
        versions: vec![],
        proofs: vec![],
        seals: vec![],
        certs: vec![],
        want: vec![b"c\0big".to_vec(); 16_384],
        resolutions: vec![],
    })
    .unwrap();
    let answer = h.wait_for(Duration::from_secs(10), |m| {
        matches!(m, Message::Repair { id: 7, .. })
    });
    let Some(Message::Repair { versions, .. }) = answer else {
        panic!("node-1 answers the repair request once: {answer:?}");
    };
    assert_eq!(versions.len(), 1, "the key's one version, once");
    assert_eq!(versions[0].key, b"big");
    let after = rss_bytes(n1.child.id());
    assert!(
        after.saturating_sub(before) < 32 << 20,
        "node-1 grew by {} MiB answering one repair",
        after.saturating_sub(before) >> 20
    );

    // One connection as node-2 at a time: a second would displace the first.
    drop(h);
    std::thread::sleep(Duration::from_millis(300));
    let mut h = attacker(&configs, &[]);
    let root = edgerep_replica::reconcile::RangeItems {
        node: edgerep_wire::aae::Node::ROOT,
        items: vec![],
    };
    h.send(&Message::Reconcile {
        id: 8,
        fingerprints: vec![],
        items: vec![root; 4096],
    })
    .unwrap();
    // Refused and that session closed: node-1 says why (on the wire the close may race the
    // end of the earlier connection, so its own record is what is checked).
    let _ = h.closed_within(Duration::from_secs(5));
    wait_status(&n1, "the overlapping ranges are refused", |r| {
        r["peers"].as_array().is_some_and(|peers| {
            peers.iter().any(|p| {
                p["id"] == "node-2"
                    && p["last_error"]
                        .as_str()
                        .is_some_and(|e| e.contains("overlaps"))
            })
        })
    });
    assert_eq!(get(&n1, "c", "big").0, 200);
    put(&n3, "c", "after", r#"{"v":3}"#);
    converge(&[&n1, &n3], Duration::from_secs(30));
}

/// An event forged under node-3's name in a collection whose transform on apply runs past its
/// deadline on node-1. A deadline halts replication (it depends on the machine, so the event
/// may be neither applied nor set aside), but only for events their origin vouches for:
/// before, the transform ran before any seal was checked, and one forged event halted node-1's
/// replication with every peer. Now the batch is checked against its seals first, refused as
/// forged, the attacker cut off, and node-3's writes keep arriving.
#[test]
fn a_forged_event_a_transform_fails_on_does_not_halt_replication() {
    forged_event_behind(None);
}

/// The same forged event behind an event of a revoked node: the check of the batch's seals
/// stopped at the revoked origin's seal, answered "revoked" (not "forged"), and a check that
/// did not pass was taken as one that did: replication halted on the attacker's word. Now only
/// what admission kept is checked (the revoked node's event is refused there), and only a batch
/// shown to be its origins' halts anything.
#[test]
fn a_revoked_origin_ahead_of_a_forged_event_does_not_let_it_halt_replication() {
    forged_event_behind(Some("node-9"));
}

/// Declares `collection` in `config` with the built plugin `plugin` as its transform on apply
/// (`extra`: more lines of its `[plugins.NAME]` table), and compaction off (which transforms
/// on apply need).
fn transform_on_apply(config: &std::path::Path, collection: &str, plugin: &str, extra: &str) {
    let (wasm, sha) = built_plugin(plugin);
    let mut text = std::fs::read_to_string(config).unwrap();
    text = text.replacen("[retention]\n", "[retention]\ncompact = false\n", 1);
    text.push_str(&format!(
        "\n[[collections.declared]]\nname = \"{collection}\"\ntransforms_on_apply = [\"{plugin}\"]\n\n[plugins.{plugin}]\npath = \"{}\"\nsha256 = \"{sha}\"\n{extra}",
        wasm.display()
    ));
    std::fs::write(config, text).unwrap();
}

/// node-1 runs a transform on apply past its deadline on collection `slow`; an attacker sends
/// a forged event of node-3 there, after an event of `revoked` (revoked on node-1) if given.
fn forged_event_behind(revoked: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let configs = cluster(dir.path(), 3);
    transform_on_apply(
        &configs[0],
        "slow",
        "spin",
        "fuel = 4000000000\ndeadline_ms = 5\n",
    );
    // A revocation is policy every node shares (peers with another are refused).
    if let Some(r) = revoked {
        for c in &configs {
            let mut text = std::fs::read_to_string(c).unwrap();
            text.push_str(&format!("\n[[revoked]]\nnode = \"{r}\"\nafter_seq = 0\n"));
            std::fs::write(c, text).unwrap();
        }
    }
    let (n1, n3) = start_honest_pair(&configs);
    let mut h = attacker(&configs, &[]);
    let mut events = vec![event("node-3", 2, "slow", "x", 666)];
    if let Some(r) = revoked {
        events.insert(0, event(r, 1, "c", "y", 9));
    }
    let m = h.sealed(events);
    h.send(&m).unwrap();
    // The events admission kept are checked (the revoked node's are not among them): the
    // forged one is found out, and the attacker cut off.
    let reason = h.closed_within(Duration::from_secs(10));
    assert!(
        reason
            .as_deref()
            .is_some_and(|r| r.contains("node-3/2 is forged")),
        "{reason:?}"
    );
    let st = status(&n1);
    assert!(st["replication"]["halted"].is_null(), "{st}");
    assert_eq!(st["origins"]["node-3"], 1, "{st}");
    // Found out before its transform ran: a made-up event buys no plugin run (it was run,
    // and failed, before the seals were checked).
    assert_eq!(st["plugins"]["spin"]["calls"], 0, "{st}");
    drop(h);
    put(&n3, "c", "after", r#"{"v":3}"#);
    converge(&[&n1, &n3], Duration::from_secs(30));
    assert!(status(&n1)["replication"]["halted"].is_null());
}

/// A transform on apply that overflows its stack on a peer's event. A stack overflow depends on
/// the machine, and was made to halt the collection as a deadline does; but no other try on
/// this machine passes, so the halt held that collection, and behind it every later event of
/// the event's origin, for good (a reload tried the event again; a new build of the plugin is
/// refused for the events before its upgrade). It follows the failure policy now: the event
/// is set aside, naming the failure, and the origin's later events arrive.
#[test]
fn a_transform_on_apply_that_overflows_its_stack_sets_the_event_aside_and_halts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let configs = cluster(dir.path(), 3);
    transform_on_apply(&configs[0], "deep", "recurse", "");
    let (n1, n3) = start_honest_pair(&configs);
    put(&n3, "deep", "k", r#"{"v":1}"#);
    put(&n3, "c", "after", r#"{"v":3}"#);
    wait_for_key(
        &n1,
        "after",
        "node-3's write after the one the plugin fails on did not arrive",
    );
    let st = status(&n1);
    assert!(st["replication"]["halted"].is_null(), "{st}");
    assert_eq!(st["dead_letters"], 1, "{st}");
    assert_eq!(get(&n1, "deep", "k").0, 404);
    let c = configs[0].to_str().unwrap();
    let o = common::edgerep(&["dead-letters", "list", "--config", c]);
    assert!(
        common::stdout(&o).contains("stack-overflow"),
        "{}",
        common::stdout(&o)
    );
}

/// A second history of node-2's (node-2 restored from an old backup, say), sent next to what
/// node-1 holds, in a collection with a transform on apply: the check of seals before the
/// transforms took the fork for the sender's forgery and cut it off (on every reconnect, for a
/// peer that only relays the origin's events). It is the origin's fork: left out and
/// reported, as in any other collection, and the sender stays connected.
#[test]
fn a_fork_in_a_transformed_collection_is_reported_not_taken_for_a_forgery() {
    let dir = tempfile::tempdir().unwrap();
    let configs = cluster(dir.path(), 3);
    transform_on_apply(&configs[0], "t", "passthrough", "");
    let (n1, _n3) = start_honest_pair(&configs);
    let mut h = attacker(&configs, &[]);
    let m = h.sealed(vec![event("node-2", 1, "t", "a", 1)]);
    h.send(&m).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while status(&n1)["origins"]["node-2"] != 1 {
        assert!(Instant::now() < deadline, "node-2:1 applied");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The other history: its own event 1 (not sent), and event 2 chained from it.
    let _ = h.sealed(vec![event("node-2", 1, "t", "a", 2)]);
    let fork = h.sealed(vec![event("node-2", 2, "t", "b", 2)]);
    h.send(&fork).unwrap();
    wait_status(&n1, "the fork is reported", |r| {
        r["forks_total"].as_u64().unwrap_or(0) >= 1
    });
    assert_eq!(h.closed_within(Duration::from_secs(2)), None, "not cut off");
    let st = status(&n1);
    assert_eq!(st["origins"]["node-2"], 1, "the fork is left out: {st}");
}

/// A fork of node-2's history, in a collection node-2 may not write (`[authorization] node-2 =
/// ["orders"]`), sent again and again: its events are left out, and the dead letters the write
/// policy made of them were committed anyway, a new set each time the batch came (an honest
/// peer holding the fork resends it when asked, about once a minute; a hostile one at will),
/// until the dead-letter limit was full. Now a dead letter commits only with its event.
#[test]
fn a_fork_sent_again_and_again_sets_nothing_aside() {
    let dir = tempfile::tempdir().unwrap();
    let configs = cluster(dir.path(), 3);
    node2_may_write_only_orders(&configs);
    let (n1, _n3) = start_honest_pair(&configs);
    let mut h = attacker(&configs, &[]);
    // node-2's event 2 in a collection it may not write: set aside once, as it should be.
    let m = h.sealed(vec![
        event("node-2", 1, "orders", "a", 1),
        event("node-2", 2, "stock", "b", 2),
    ]);
    h.send(&m).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while status(&n1)["origins"]["node-2"] != 2 {
        assert!(Instant::now() < deadline, "node-2's events are held");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(status(&n1)["dead_letters"], 1);
    // The other history: events 1 and 2 (not sent), then 3 in the collection it may not write.
    let _ = h.sealed(vec![
        event("node-2", 1, "orders", "a", 3),
        event("node-2", 2, "orders", "b", 3),
    ]);
    let fork = h.sealed(vec![event("node-2", 3, "stock", "c", 3)]);
    for _ in 0..5 {
        h.send(&fork).unwrap();
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_status(&n1, "the fork is reported", |r| {
        r["forks_total"].as_u64().unwrap_or(0) >= 1
    });
    // Once more, and a write of node-1's after it: the committer has taken every batch before.
    h.send(&fork).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    put(&n1, "c", "after", r#"{"v":1}"#);
    let st = status(&n1);
    assert_eq!(st["origins"]["node-2"], 2, "the fork is left out: {st}");
    assert_eq!(
        st["dead_letters"], 1,
        "only the event held sets something aside: {st}"
    );
}

/// A peer that answers every comparison with a root that differs never lets a session of
/// node-1's end by itself: `edgerep reconcile` waited 60 s and failed. Now node-1 gives the
/// session up after its round-trip bound and says so in the report.
#[test]
fn a_peer_that_never_stops_differing_ends_the_session_it_is_in() {
    let dir = tempfile::tempdir().unwrap();
    let (configs, n1, n3) = honest_pair(dir.path());
    let mut h = attacker(&configs, &[]);
    let config = configs[0].clone();
    let asked = std::thread::spawn(move || {
        let started = Instant::now();
        let o = edgerep(&[
            "reconcile",
            "--config",
            config.to_str().unwrap(),
            "--peer",
            "node-2",
        ]);
        (o, started.elapsed())
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut answered = 0;
    while Instant::now() < deadline && !asked.is_finished() {
        let Some(Message::Reconcile { id, .. }) = h.wait_for(Duration::from_millis(200), |m| {
            matches!(m, Message::Reconcile { .. })
        }) else {
            continue;
        };
        // The root again, with a sum nobody holds and more entries than are listed at once.
        h.send(&Message::Reconcile {
            id,
            fingerprints: vec![edgerep_replica::reconcile::RangeFingerprint {
                node: edgerep_wire::aae::Node::ROOT,
                fingerprint: [answered as u8; 16],
                count: 1_000_000,
            }],
            items: vec![],
        })
        .unwrap();
        answered += 1;
    }
    let (o, took) = asked.join().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let session = &report["sessions"][0];
    assert_eq!(session["gave_up"], true, "{report}");
    assert_eq!(session["agreed"], false, "{report}");
    assert!(
        (32..=34).contains(&session["round_trips"].as_u64().unwrap_or(0)),
        "{report}"
    );
    assert!(took < Duration::from_secs(20), "took {took:?}");
    assert!(answered >= 32, "{answered}");
    put(&n3, "c", "after", r#"{"v":3}"#);
    converge(&[&n1, &n3], Duration::from_secs(30));
}

/// The report of the session `reconcile_with_attacker` ran, once the verb ended; asserts that
/// node-1 gave the session up. (The whole answer, and that session's report.)
fn given_up(
    asked: std::thread::JoinHandle<std::process::Output>,
) -> (serde_json::Value, serde_json::Value) {
    let o = asked.join().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let session = report["sessions"][0].clone();
    assert_eq!(session["gave_up"], true, "{report}");
    (report, session)
}

/// A Repair under session `id` carrying `first`, an origin's event 1, as a block of its own
/// sealed with the attacker's key: genuine for node-2's own events, a forgery for any other
/// origin's.
fn first_event_repair(h: &Hostile, id: u64, first: edgerep_wire::Event) -> Message {
    let origin = first.origin.clone();
    let leaf = event_leaf(&first.encode());
    let seal = h.seal(
        origin.clone(),
        1,
        1,
        chain_link(&chain_start(&origin), &leaf),
        leaf,
    );
    Message::Repair {
        id,
        versions: vec![first.into()],
        proofs: vec![Proof {
            seal: 1,
            path: vec![],
        }],
        seals: vec![seal],
        certs: vec![(h.id.clone(), h.signer.cert().to_vec())],
        want: vec![],
        resolutions: vec![],
    }
}

/// Runs `edgerep reconcile --peer node-2` on node-1 in a thread, and waits for the session's
/// opening Reconcile at the attacker: the thread (with the verb's output) and the session id.
fn reconcile_with_attacker(
    configs: &[PathBuf],
    h: &mut Hostile,
) -> (std::thread::JoinHandle<std::process::Output>, u64) {
    let config = configs[0].clone();
    let asked = std::thread::spawn(move || {
        edgerep(&[
            "reconcile",
            "--config",
            config.to_str().unwrap(),
            "--peer",
            "node-2",
        ])
    });
    let Some(Message::Reconcile { id, .. }) = h.wait_for(Duration::from_secs(10), |m| {
        matches!(m, Message::Reconcile { .. })
    }) else {
        panic!("node-1 opened no session with node-2");
    };
    (asked, id)
}

/// A peer answering a session of node-1's with the same entry list again and again, after
/// node-1's answer had ended the comparison: node-1 listed its state and asked for the made-up
/// key every time, charged to no budget (messages of node-1's own sessions were not), counted
/// as no round trip, for as long as the peer kept the session alive (up to 300 s). Now the
/// session is given up at the first list after the end.
#[test]
fn a_peer_repeating_itself_after_the_comparison_ended_ends_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let (configs, n1, n3) = honest_pair(dir.path());
    for i in 0..20 {
        put(&n1, "c", &format!("k{i}"), r#"{"v":1}"#);
    }
    let mut h = attacker(&configs, &[]);
    let (asked, id) = reconcile_with_attacker(&configs, &mut h);
    let made_up = b"c\0made-up".to_vec();
    let listed = edgerep_replica::reconcile::RangeItems {
        node: edgerep_wire::aae::Node {
            level: edgerep_wire::aae::LEAF_LEVEL,
            prefix: edgerep_wire::aae::bucket_of(&made_up),
        },
        items: vec![(made_up, [9; 16])],
    };
    let mut sent = 0;
    while sent < 20 && !asked.is_finished() {
        h.send(&Message::Reconcile {
            id,
            fingerprints: vec![],
            items: vec![listed.clone()],
        })
        .unwrap();
        sent += 1;
        let _ = h.wait_for(Duration::from_millis(200), |_| false);
    }
    let (report, session) = given_up(asked);
    assert_eq!(session["round_trips"], 2, "{report}");
    assert!(sent < 20, "node-1 answered {sent} lists: {report}");
    put(&n3, "c", "after", r#"{"v":3}"#);
    converge(&[&n1, &n3], Duration::from_secs(30));
}

/// A peer sending repairs into a session of node-1's that node-1 never asked for: each had
/// node-1 shape the versions (transforms on apply run plugins) and queue a merge, with no
/// bound but the four merges in flight, for as long as the peer kept the session alive.
/// Now a session takes one repair per message of node-1's that could be answered with one,
/// and is given up at the next.
#[test]
fn repairs_nobody_asked_for_end_the_session_they_name() {
    let dir = tempfile::tempdir().unwrap();
    let (configs, _n1, _n3) = honest_pair(dir.path());
    let mut h = attacker(&configs, &[]);
    let (asked, id) = reconcile_with_attacker(&configs, &mut h);
    // node-2's own event, genuinely sealed (beyond what node-1 holds of node-2: not merged,
    // but read and counted).
    let repair = first_event_repair(&h, id, event("node-2", 1, "c", "unasked", 1));
    let mut sent = 0;
    while sent < 10 && !asked.is_finished() {
        h.send(&repair).unwrap();
        sent += 1;
        let _ = h.wait_for(Duration::from_millis(200), |_| false);
    }
    let (report, _) = given_up(asked);
    assert!(sent <= 3, "node-1 took {sent} repairs: {report}");
}

/// A rolling upgrade: node-2 runs another build. One that speaks only an older protocol
/// version is refused by its version alone (the rest of its Hello is not read), named in the
/// close; while it is node-1's only peer, node-1's writes wait for the origin gate, and the 503
/// names the refusal (it named only the wait, and the peer's Hello was reported as
/// "undecodable"). One of a later version, whose Hello appends an item this build does not
/// know, gets a session in this build's version, and node-1 takes writes.
#[test]
fn peers_of_other_protocol_versions_are_named_or_spoken_to_in_this_one() {
    let dir = tempfile::tempdir().unwrap();
    let (configs, n1, n3) = honest_pair(dir.path());
    n1.terminate();
    let _ = n3.terminate();
    let n1 = Node::start(&configs[0]);
    let mut h = Hostile::connect(&configs[1], &configs[0]);
    let mut older = h.hello(&[("node-1", 1)], &[]);
    if let Message::Hello(hello) = &mut older {
        hello.protocol = edgerep_replica::MIN_PROTOCOL_VERSION - 1;
    }
    h.send(&older).unwrap();
    let named = format!(
        "the peer speaks protocol version {}, this node speaks versions",
        edgerep_replica::MIN_PROTOCOL_VERSION - 1
    );
    let reason = h.closed_within(Duration::from_secs(5)).expect("closed");
    assert!(reason.contains(&named), "{reason}");
    let r = agent()
        .put(&n1.url("/v1/kv/c/during"))
        .content_type("application/json")
        .config()
        .http_status_as_error(false)
        .build()
        .send(r#"{"v":2}"#.as_bytes())
        .unwrap();
    assert_eq!(r.status(), 503);
    let body = r.into_body().read_to_string().unwrap();
    assert!(body.contains(&format!("node-2: {named}")), "{body}");
    drop(h);
    // A later version's Hello: one more item at the end.
    let mut h = Hostile::connect(&configs[1], &configs[0]);
    let mut later = h.hello(&[("node-1", 1)], &[]);
    if let Message::Hello(hello) = &mut later {
        hello.protocol = edgerep_replica::PROTOCOL_VERSION + 1;
    }
    let mut bytes = later.encode();
    assert_eq!(bytes[0], 0x89);
    bytes[0] = 0x8a;
    bytes.extend_from_slice(&[0xa1, 0x61, b'x', 0x01]);
    h.send_raw(&bytes).unwrap();
    assert!(
        h.wait_for(Duration::from_secs(5), |m| matches!(m, Message::Hello(_)))
            .is_some(),
        "node-1 answers the handshake"
    );
    assert_eq!(
        put(&n1, "c", "after", r#"{"v":3}"#),
        2,
        "node-1 takes writes"
    );
    assert!(h.closed_within(Duration::from_secs(1)).is_none());
}

/// A peer keeping node-1's session with it alive without ending it (an empty Repair now and
/// then) held `edgerep reconcile` of every peer until the API's own timeout (408), hiding what
/// the session with node-3 found. Now the answer comes before that timeout, with node-3's
/// report and node-2's so far, marked running.
#[test]
fn a_session_a_peer_keeps_alive_does_not_hide_the_other_reports() {
    let dir = tempfile::tempdir().unwrap();
    let (configs, _n1, _n3) = honest_pair(dir.path());
    let mut h = attacker(&configs, &[]);
    let config = configs[0].clone();
    let asked = std::thread::spawn(move || {
        let started = Instant::now();
        let o = edgerep(&["reconcile", "--config", config.to_str().unwrap()]);
        (o, started.elapsed())
    });
    let Some(Message::Reconcile { id, .. }) = h.wait_for(Duration::from_secs(10), |m| {
        matches!(m, Message::Reconcile { .. })
    }) else {
        panic!("node-1 opened no session with node-2");
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline && !asked.is_finished() {
        h.send(&Message::Repair {
            id,
            versions: vec![],
            proofs: vec![],
            seals: vec![],
            certs: vec![],
            want: vec![],
            resolutions: vec![],
        })
        .unwrap();
        let _ = h.wait_for(Duration::from_secs(3), |_| false);
    }
    let (o, took) = asked.join().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let of = |peer: &str| {
        report["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["peer"] == peer)
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(of("node-2")["running"], true, "{report}");
    assert_eq!(of("node-2")["agreed"], false, "{report}");
    assert_eq!(of("node-3")["running"], false, "{report}");
    assert_eq!(of("node-3")["agreed"], true, "{report}");
    assert!(took < Duration::from_secs(30), "took {took:?}");
}

/// A peer's words reach node-1's log on one line: a close reason holding a line break and a
/// made-up log line stays inside the line node-1 writes ("connection ended: …"), escaped, so it
/// cannot pass for a line node-1 wrote.
#[test]
fn a_peers_words_cannot_forge_a_log_line() {
    let dir = tempfile::tempdir().unwrap();
    let (configs, n1, n3) = honest_pair(dir.path());
    let h = attacker(&configs, &[]);
    let forged = "2026-12-04T00:00:00.000000Z ERROR edgerep: store damaged, wiping";
    h.conn.close(
        edgerep_transport::CloseCode::Normal,
        &format!("bye\n{forged}"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let log = loop {
        let log = std::fs::read_to_string(&n1.log).unwrap_or_default();
        if log.contains("bye\\n2026-12-04") {
            break log;
        }
        assert!(
            Instant::now() < deadline,
            "the close is not in the log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        !log.lines().any(|l| l.starts_with(forged)),
        "a forged line:\n{log}"
    );
    drop(h);
    put(&n3, "c", "after", r#"{"v":3}"#);
    converge(&[&n1, &n3], Duration::from_secs(30));
}

/// A peer announces an upgrade nobody configured (a transform on apply for `c` from the start
/// of time): node-1 pauses `c` as an honest rollout would, names the peer in its status, and
/// the pause ends when the operator revokes that peer; it never pauses for good.
#[test]
fn a_peer_announcing_an_upgrade_nobody_configured_pauses_only_until_it_is_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let configs = cluster(dir.path(), 3);
    let text = std::fs::read_to_string(&configs[0]).unwrap();
    std::fs::write(
        &configs[0],
        format!("{text}\n[[collections.declared]]\nname = \"c\"\n"),
    )
    .unwrap();
    let n1 = Node::start_with(&configs[0], &["--alone"]);
    put(&n1, "c", "before", r#"{"v":1}"#);
    let mut h = Hostile::connect(&configs[1], &configs[0]);
    let hello = h.hello_with(
        &[],
        &[],
        vec![edgerep_replica::CollectionFingerprint {
            name: "c".into(),
            resolver: "lww".into(),
            transforms_on_apply: vec![],
            plugins: vec![],
            upgrades: vec![edgerep_replica::UpgradeFingerprint {
                from_ms: 1,
                resolver: "lww".into(),
                transforms_on_apply: vec!["evil".into()],
            }],
        }],
    );
    h.send(&hello).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let paused = loop {
        let s = status(&n1);
        if s["paused_collections"]["c"].is_object() {
            break s["paused_collections"]["c"].clone();
        }
        assert!(Instant::now() < deadline, "no pause: {s}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(paused["peers"], serde_json::json!(["node-2"]), "{paused}");
    let mut r = common::agent()
        .put(&n1.url("/v1/kv/c/during"))
        .content_type("application/json")
        .send(br#"{"v":2}"#.as_slice())
        .unwrap();
    assert_eq!(r.status(), 503);
    let body = r.body_mut().read_to_string().unwrap();
    assert!(
        body.contains("collection_paused") && body.contains("node-2"),
        "{body}"
    );
    // The operator revokes the lying peer: its pause ends with the reload.
    common::revoke_in_config(&configs[0], "node-2", 0);
    common::reload(&configs[0]);
    assert!(status(&n1)["paused_collections"]["c"].is_null());
    put(&n1, "c", "after", r#"{"v":3}"#);
}

/// A peer that completes the TLS handshake and never opens the stream is closed after 10 s
/// (its connection and task were held for ever: keep-alives kept it from idling out), and
/// node-1 keeps serving node-3 meanwhile.
#[test]
fn a_connection_that_never_opens_its_stream_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let (configs, n1, n3) = honest_pair(dir.path());
    // Connected, the stream opened on this side but nothing sent: node-1 sees no stream.
    let mut h = Hostile::connect(&configs[1], &configs[0]);
    put(&n3, "c", "meanwhile", r#"{"v":3}"#);
    wait_for_key(&n1, "meanwhile", "node-1 serves node-3 meanwhile");
    let reason = h.closed_within(Duration::from_secs(25));
    let reason = reason.expect("node-1 closes the connection");
    assert!(reason.contains("no stream opened"), "{reason}");
}

/// A peer closing and dialing again in a loop, each time with a Hello under a new instance:
/// each session start bought node-1's replicator thread a read (a window of its changelog, or
/// a snapshot page from the start), for one Hello each. Now a peer starts at most
/// SESSIONS_BURST sessions at once and one per 2 s after; past that the connection is closed
/// saying why, and node-1 goes on serving its honest peer.
#[test]
fn a_peer_reconnecting_in_a_loop_is_refused_sessions_past_its_burst() {
    let dir = tempfile::tempdir().unwrap();
    let (configs, n1, n3) = honest_pair(dir.path());
    let mut refused = 0;
    let started = Instant::now();
    for _ in 0..16 {
        let mut h = Hostile::connect(&configs[1], &configs[0]);
        let hello = h.hello(&[], &[]);
        h.send(&hello).unwrap();
        // Node-1 answers a session it starts with its own Hello; a refused one is closed.
        let answered = h.wait_for(Duration::from_secs(5), |m| matches!(m, Message::Hello(_)));
        if answered.is_none() {
            let reason = h.closed_within(Duration::from_secs(5));
            assert!(
                reason
                    .as_deref()
                    .is_some_and(|r| r.contains("reconnecting too often")),
                "{reason:?}"
            );
            refused += 1;
        }
    }
    // At most 10 at once and one per 2 s after were taken (however slow the dials here).
    let taken = 16 - refused;
    let allowed = 10 + (started.elapsed().as_secs_f64() * 0.5).ceil() as usize + 1;
    assert!(
        refused >= 1 && taken <= allowed,
        "16 sessions in {:?}: {taken} taken, at most {allowed} allowed",
        started.elapsed()
    );
    put(&n3, "c", "after", r#"{"v":3}"#);
    wait_for_key(&n1, "after", "node-3's write reaches node-1");
}

/// A peer's word that another machine uses node-1's id (its link closed with the DuplicateId
/// code) is reported, not obeyed: node-1 shows it in status and `status --check`, and goes on
/// taking writes and replicating (a peer is authenticated, not trusted: only a fork proven by
/// node-1's own seals stops its writes).
#[test]
fn a_peers_word_that_this_node_has_a_twin_is_reported_not_obeyed() {
    let dir = tempfile::tempdir().unwrap();
    let (configs, n1, n3) = honest_pair(dir.path());
    let h = attacker(&configs, &[]);
    h.conn.close(
        edgerep_transport::CloseCode::DuplicateId,
        "two machines use node id \"node-1\"",
    );
    wait_status(&n1, "node-1 reports the peer's word", |r| {
        r["another_machine_uses_this_id"]
            .as_str()
            .is_some_and(|s| s.contains("peer node-2 saw it"))
    });
    check_fails_naming(&configs[0], "another machine uses this node's id");
    put(&n1, "c", "after", r#"{"v":1}"#);
    wait_for_key(&n3, "after", "node-1's write reaches node-3");
}

/// A peer that opens its stream and never sends its Hello held a session (a task, buffers)
/// for as long as its keep-alives held the connection. Now the link closes after HELLO_WITHIN
/// (30 s), saying why.
#[test]
fn a_peer_that_never_says_hello_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let (configs, n1, n3) = honest_pair(dir.path());
    let mut h = Hostile::connect(&configs[1], &configs[0]);
    // Bytes on the stream so node-1 sees it, but no whole frame (no message at all).
    h.send_bytes(&[0, 0]).unwrap();
    put(&n3, "c", "meanwhile", r#"{"v":3}"#);
    wait_for_key(&n1, "meanwhile", "node-1 serves node-3 meanwhile");
    let reason = h.closed_within(Duration::from_secs(45));
    let reason = reason.expect("node-1 closes the link");
    assert!(reason.contains("no Hello within 30 s"), "{reason}");
}

/// TLS checks a certificate's dates at the handshake only: a peer whose certificate expires
/// during its session kept it for as long as the connection lived (keep-alives hold it open).
/// Now node-1 ends the session once the certificate has expired, saying why.
#[test]
fn a_session_ends_when_the_peers_certificate_expires() {
    let dir = tempfile::tempdir().unwrap();
    let (configs, n1, n3) = honest_pair(dir.path());
    // Node-2's identity, reissued by the cluster's CA to end in a few seconds.
    let ca = edgerep_transport::certs::Ca::load(
        &dir.path().join("ca/ca.pem"),
        &dir.path().join("ca/ca.key"),
    )
    .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let short = ca.issue_node_until("node-2", now + 15).unwrap();
    let tls = edgerep_config::Config::load(&configs[1])
        .unwrap()
        .replication
        .tls
        .unwrap();
    std::fs::remove_file(&tls.cert).unwrap();
    std::fs::remove_file(&tls.key).unwrap();
    edgerep_transport::certs::write_node_files(tls.cert.parent().unwrap(), &ca, &short).unwrap();
    assert_eq!(
        std::fs::read_to_string(&tls.cert).unwrap(),
        short.cert_pem()
    );
    let mut h = Hostile::connect(&configs[1], &configs[0]);
    let hello = h.hello(&[], &[]);
    h.send(&hello).unwrap();
    assert!(
        h.wait_for(Duration::from_secs(3), |m| matches!(m, Message::Hello(_)))
            .is_some(),
        "the session starts while the certificate is valid"
    );
    let reason = h.closed_within(Duration::from_secs(30));
    assert!(
        reason
            .as_deref()
            .is_some_and(|r| r.contains("certificate expired")),
        "{reason:?}"
    );
    put(&n3, "c", "after", r#"{"v":3}"#);
    wait_for_key(&n1, "after", "node-3's write reaches node-1");
}

/// A peer naming, again and again, one leaf of the tree with a sum node-1 does not hold: each
/// answer lists the leaf, and a listing reads node-1's whole state table on its replicator
/// thread. Only messages that listed ranges themselves were charged to the peer's listing
/// budget, so these 40-byte messages were all answered. Now they are charged too: past the
/// budget they are dropped, and node-1 goes on replicating with its honest peer.
#[test]
fn a_peer_naming_differing_leaves_in_a_loop_is_held_to_its_listing_budget() {
    let dir = tempfile::tempdir().unwrap();
    let (configs, n1, n3) = honest_pair(dir.path());
    let mut h = attacker(&configs, &[]);
    for i in 0..2000u64 {
        h.send(&Message::Reconcile {
            // Not a session of node-1's: the peer's own.
            id: 1_000_000 + i,
            fingerprints: vec![edgerep_replica::reconcile::RangeFingerprint {
                node: edgerep_wire::aae::Node {
                    level: edgerep_wire::aae::LEAF_LEVEL,
                    prefix: (i % 16) as u16,
                },
                fingerprint: [7; 16],
                count: 0,
            }],
            items: vec![],
        })
        .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let st = status(&n1);
        let peer = st["replication"]["peers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == "node-2")
            .cloned()
            .unwrap_or_default();
        if peer["anti_entropy"]["dropped_total"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "nothing dropped: {st}");
        std::thread::sleep(Duration::from_millis(100));
    }
    put(&n3, "c", "after", r#"{"v":3}"#);
    converge(&[&n1, &n3], Duration::from_secs(30));
}

/// As node-2, gives node-3 node-2's events 1..5 (keys `left-out-1..5` of `c`), sealed; returns
/// the link and the seal at 5.
fn node2_events_on_node3(configs: &[PathBuf], n3: &Node) -> (Hostile, Seal) {
    let mut to_n3 = Hostile::connect(&configs[1], &configs[2]);
    let hello = to_n3.hello(&[], &[]);
    to_n3.send(&hello).unwrap();
    assert!(
        to_n3
            .wait_for(Duration::from_secs(5), |m| matches!(m, Message::Hello(_)))
            .is_some()
    );
    let events = (1..=5)
        .map(|i| event("node-2", i, "c", &format!("left-out-{i}"), i))
        .collect();
    let m = to_n3.sealed(events);
    let Message::Events { seals, .. } = &m else {
        unreachable!()
    };
    let seal = seals[0].clone();
    to_n3.send(&m).unwrap();
    wait_for_key(n3, "left-out-5", "node-3 holds node-2's five events");
    (to_n3, seal)
}

/// Sends node-1 a snapshot whose floors say it is behind on node-2's events, with node-2's
/// genuine `seal` at 5 and none of the five versions.
fn send_snapshot_leaving_out(to_n1: &mut Hostile, seal: Seal) {
    let node2 = NodeId::parse("node-2").unwrap();
    to_n1
        .send(&Message::Snapshot {
            id: 0,
            page: 0,
            floors: vec![(node2.clone(), 5)],
            versions: vec![],
            proofs: vec![],
            done: true,
            have: vec![(node2, 5)],
            seals: vec![seal],
            certs: vec![(to_n1.id.clone(), to_n1.signer.cert().to_vec())],
        })
        .unwrap();
}

/// Waits (20 s at most) until node-1 holds the five versions the snapshot left out, as node-2
/// wrote them.
fn wait_left_out_repaired(n1: &Node) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(n1, "c", "left-out-3").0 != 200 {
        assert!(
            Instant::now() < deadline,
            "the left-out versions are not repaired: {}\n{}",
            status(n1),
            std::fs::read_to_string(&n1.log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for i in 1..=5 {
        assert_eq!(
            get(n1, "c", &format!("left-out-{i}")).1,
            format!(r#"{{"v":{i}}}"#)
        );
    }
}

/// A snapshot that leaves versions out. The attacker (node-2) gives node-3 its events 1..5,
/// then sends node-1 a snapshot whose floors say node-1 is behind, with node-2's genuine seal at
/// 5 and none of the five versions. node-1 takes the have (the seal is real; that nothing is
/// missing is the sender's word, as are the floors) and holds none of the keys. It compares
/// with node-3 at once, not at the next interval (60 s), and repairs them from it.
#[test]
fn versions_a_snapshot_left_out_are_repaired_from_another_peer_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (configs, n1, n3) = honest_pair(dir.path());
    let mut to_n1 = attacker(&configs, &[]);
    let (_to_n3, seal) = node2_events_on_node3(&configs, &n3);
    send_snapshot_leaving_out(&mut to_n1, seal);
    wait_status(&n1, "node-1 took the snapshot", |r| {
        r["snapshot_pages_merged_total"] == 1
    });
    wait_left_out_repaired(&n1);
    wait_status(&n1, "repaired from node-3", |r| {
        r["peers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["id"] == "node-3" && p["anti_entropy"]["repaired_in_total"] == 5)
    });
}

/// The same lie while node-1's only other peer is down: node-1 compared at once only with the
/// peers ready when the snapshot came, so node-3, back a moment later, waited for the periodic
/// comparison (60 s here, and never with periodic comparisons off). Now a peer not there is
/// compared with as soon as it is ready.
#[test]
fn versions_a_snapshot_left_out_are_repaired_from_a_peer_that_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let (configs, n1, n3) = honest_pair(dir.path());
    let mut to_n1 = attacker(&configs, &[]);
    let (to_n3, seal) = node2_events_on_node3(&configs, &n3);
    // Killed at once: node-1 would graft node-3 for node-2's events 400 ms after hearing it
    // holds them, and get them by replication. The snapshot comes once node-1 saw it go (its
    // idle timeout): a peer it still took for connected was compared with before too.
    drop(to_n3);
    n3.kill();
    wait_status(&n1, "node-1 saw node-3 go", |r| {
        r["peers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["id"] == "node-3" && p["connected"] == false)
    });
    send_snapshot_leaving_out(&mut to_n1, seal);
    wait_status(&n1, "node-1 took the snapshot", |r| {
        r["snapshot_pages_merged_total"] == 1
    });
    assert_eq!(get(&n1, "c", "left-out-3").0, 404, "left out, node-3 away");
    let n3 = Node::start(&configs[2]);
    wait_left_out_repaired(&n1);
    drop(n3);
}

/// A peer that stays connected and never acknowledges anything: it held node-1's compaction
/// back for as long as it stayed (every node's changelog grew without bound). Now a connected
/// peer whose acknowledgements have not moved for `peer_absent_ms` (2 s here) while it lacks
/// events stops counting, like a peer away that long; node-3 goes on as before.
#[test]
fn a_connected_peer_that_never_acknowledges_stops_holding_compaction_back() {
    let dir = tempfile::tempdir().unwrap();
    let configs = cluster(dir.path(), 3);
    with_retention(
        &configs[0],
        "keep_events = 5\ninterval_ms = 200\npeer_absent_ms = 2000\n",
    );
    let n1 = Node::start(&configs[0]);
    let n3 = Node::start(&configs[2]);
    let _silent = attacker(&configs, &[]);
    for i in 0..40 {
        put(&n1, "c", &format!("k{i}"), r#"{"v":1}"#);
    }
    converge(&[&n1, &n3], Duration::from_secs(30));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = status(&n1);
        if s["compacted"]["node-1"].as_u64().unwrap_or(0) >= 35 {
            break;
        }
        assert!(Instant::now() < deadline, "not compacted: {s}");
        std::thread::sleep(Duration::from_millis(100));
    }
    put(&n1, "c", "after", r#"{"v":2}"#);
    converge(&[&n1, &n3], Duration::from_secs(30));
}

/// The same across a restart of node-1: when the silent peer's acknowledgements last moved is
/// saved, so the restart does not give it a new `peer_absent_ms` (8 s here) to hold compaction
/// back. Before, it did: a node restarted more often than `peer_absent_ms` never compacted past
/// such a peer.
#[test]
fn a_restart_does_not_give_a_peer_that_never_acknowledges_a_new_wait() {
    let dir = tempfile::tempdir().unwrap();
    let configs = cluster(dir.path(), 3);
    with_retention(
        &configs[0],
        "keep_events = 5\ninterval_ms = 200\npeer_absent_ms = 8000\n",
    );
    // Counted from before node-1 starts: the 8 s cannot have run out at the check below.
    let connected = Instant::now();
    let n1 = Node::start(&configs[0]);
    let n3 = Node::start(&configs[2]);
    let silent = attacker(&configs, &[]);
    for i in 0..40 {
        put(&n1, "c", &format!("k{i}"), r#"{"v":1}"#);
    }
    converge(&[&n1, &n3], Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(5).saturating_sub(connected.elapsed()));
    let s = status(&n1);
    assert_eq!(s["compacted"]["node-1"].as_u64().unwrap_or(0), 0, "{s}");
    drop(silent);
    n1.terminate();
    let n1 = Node::start(&configs[0]);
    let restarted = Instant::now();
    let _silent = attacker(&configs, &[]);
    loop {
        let s = status(&n1);
        if s["compacted"]["node-1"].as_u64().unwrap_or(0) >= 35 {
            break;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(6),
            "not compacted 6 s after the restart (a new wait takes 8 s): {s}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    put(&n1, "c", "after", r#"{"v":2}"#);
    converge(&[&n1, &n3], Duration::from_secs(30));
}

/// A snapshot carrying a version its origin may not write (`[authorization] node-2 =
/// ["orders"]`), under node-2's genuine seal: snapshot pages were merged without the write
/// policy, so the version entered node-1's state (where an event would have been kept out as a
/// dead letter). Now it is left out of the state; the page's other version is merged.
#[test]
fn a_snapshot_version_its_origin_may_not_write_stays_out_of_the_state() {
    let dir = tempfile::tempdir().unwrap();
    let configs = cluster(dir.path(), 3);
    node2_may_write_only_orders(&configs);
    let n1 = Node::start(&configs[0]);
    let n3 = Node::start(&configs[2]);
    let mut h = attacker(&configs, &[]);
    let node2 = h.id.clone();
    let events = [
        event("node-2", 1, "orders", "allowed", 1),
        event("node-2", 2, "stock", "not-allowed", 2),
    ];
    let leaves: Vec<_> = events.iter().map(|e| event_leaf(&e.encode())).collect();
    let mut chain = chain_start(&node2);
    for leaf in &leaves {
        chain = chain_link(&chain, leaf);
    }
    let seal = h.seal(node2.clone(), 1, 2, chain, merkle_root(&leaves));
    h.send(&Message::Snapshot {
        id: 0,
        page: 0,
        floors: vec![(node2.clone(), 2)],
        versions: events.iter().cloned().map(Into::into).collect(),
        proofs: (0..2)
            .map(|i| Proof {
                seal: 2,
                path: merkle_path(&leaves, i),
            })
            .collect(),
        done: true,
        have: vec![(node2.clone(), 2)],
        seals: vec![seal],
        certs: vec![(node2.clone(), h.signer.cert().to_vec())],
    })
    .unwrap();
    wait_status(&n1, "node-1 took the snapshot", |r| {
        r["snapshot_pages_merged_total"] == 1
    });
    assert_eq!(get(&n1, "orders", "allowed").0, 200);
    assert_eq!(get(&n1, "stock", "not-allowed").0, 404);
    assert_eq!(status(&n1)["origins"]["node-2"], 2);
    put(&n3, "c", "after", r#"{"v":3}"#);
    converge(&[&n1, &n3], Duration::from_secs(30));
}

/// A connected peer that acknowledges one more event now and then (its acknowledgements move,
/// so `peer_absent_ms` never passes) held node-1's changelog back for ever. With
/// `max_held_events = 10`, node-1 keeps at most ten entries for it and compacts the rest; the
/// peer would get a snapshot when it asks for them. node-3 goes on as before.
#[test]
fn a_peer_that_acknowledges_slowly_holds_at_most_max_held_events_back() {
    let dir = tempfile::tempdir().unwrap();
    let configs = cluster(dir.path(), 3);
    with_retention(
        &configs[0],
        "keep_events = 5\ninterval_ms = 200\nmax_held_events = 10\n",
    );
    let n1 = Node::start(&configs[0]);
    let n3 = Node::start(&configs[2]);
    let mut slow = attacker(&configs, &[]);
    let node1 = NodeId::parse("node-1").unwrap();
    for i in 0..40 {
        put(&n1, "c", &format!("k{i}"), r#"{"v":1}"#);
    }
    converge(&[&n1, &n3], Duration::from_secs(30));
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut acked = 0;
    loop {
        // One more event acknowledged every 200 ms: always moving, always far behind.
        acked += 1;
        slow.send(&Message::Ack {
            have: vec![(node1.clone(), acked)],
            rewind: false,
        })
        .unwrap();
        while let Ok(Some(_)) = slow.recv(Duration::from_millis(1)) {}
        let s = status(&n1);
        let compacted = s["compacted"]["node-1"].as_u64().unwrap_or(0);
        assert!(
            compacted <= 30,
            "compacted past have - max_held_events: {s}"
        );
        if compacted == 30 {
            assert!(acked < 30, "the slow peer acknowledged {acked}");
            break;
        }
        assert!(Instant::now() < deadline, "not compacted: {s}");
        std::thread::sleep(Duration::from_millis(200));
    }
    put(&n1, "c", "after", r#"{"v":2}"#);
    converge(&[&n1, &n3], Duration::from_secs(30));
}

/// With `max_held_events = 10`, node-1 compacts past a lagging peer; but not past the have of
/// a snapshot it is sending: the peer needs the entries after it, and a snapshot overtaken by
/// the writes made while it was sent would be followed by another, for ever on a slow link.
/// node-2 (the attacker, here an honest but slow receiver) takes a snapshot and merges its
/// pages only after node-1 took 40 more writes; node-1 then sends it the events after the
/// snapshot's have from its changelog.
#[test]
fn compaction_stops_at_the_have_of_a_snapshot_being_sent() {
    let dir = tempfile::tempdir().unwrap();
    let configs = cluster(dir.path(), 3);
    with_retention(
        &configs[0],
        "keep_events = 5\ninterval_ms = 200\nmax_held_events = 10\n",
    );
    let n1 = Node::start(&configs[0]);
    let n3 = Node::start(&configs[2]);
    for i in 0..40 {
        put(&n1, "c", &format!("k{i}"), r#"{"v":1}"#);
    }
    converge(&[&n1, &n3], Duration::from_secs(30));
    let compacted = |n: &Node| status(n)["compacted"]["node-1"].as_u64().unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(20);
    while compacted(&n1) < 30 {
        assert!(Instant::now() < deadline, "not compacted: {}", status(&n1));
        std::thread::sleep(Duration::from_millis(100));
    }
    // node-2 lacks what was compacted: node-1 sends it a snapshot, whose pages it holds back.
    let mut h = attacker(&configs, &[]);
    let page = h
        .wait_for(Duration::from_secs(10), |m| {
            matches!(m, Message::Snapshot { .. })
        })
        .expect("node-1 sends a snapshot");
    for i in 40..80 {
        put(&n1, "c", &format!("k{i}"), r#"{"v":2}"#);
    }
    converge(&[&n1, &n3], Duration::from_secs(30));
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        let c = compacted(&n1);
        assert!(c <= 40, "compacted to {c}, past the snapshot's have of 40");
        while let Ok(Some(_)) = h.recv(Duration::from_millis(1)) {}
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(compacted(&n1), 40, "compacted up to the snapshot's have");
    // node-2 merges the pages: the events after the snapshot follow, from the changelog.
    let mut next = Some(page);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match next.take() {
            Some(Message::Snapshot { id, page, .. }) => {
                h.send(&Message::SnapshotAck { id, page }).unwrap()
            }
            Some(Message::Events { events, .. })
                if events
                    .iter()
                    .any(|e| e.event().origin.as_str() == "node-1" && e.event().seq == 41) =>
            {
                break;
            }
            _ => {}
        }
        assert!(Instant::now() < deadline, "node-1 never sent event 41");
        next = h.recv(Duration::from_millis(200)).unwrap();
    }
}

/// A peer's events stamped a day ahead of node-1's clock (its clock is wrong, or it lies):
/// applied (refusing them would stall their origin for good), counted in
/// `edgerep_clock_skewed_events_total`, and logged, since last-writer-wins then favours that
/// origin until the clocks agree. They were counted before, and reported nowhere.
#[test]
fn events_stamped_far_ahead_are_applied_counted_and_logged() {
    let dir = tempfile::tempdir().unwrap();
    let (configs, n1, _n3) = honest_pair(dir.path());
    let mut h = attacker(&configs, &[]);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut e = event("node-2", 1, "c", "future", 1);
    e.hlc = edgerep_wire::Hlc::new(now_ms + 86_400_000, 0);
    let m = h.sealed(vec![e]);
    h.send(&m).unwrap();
    wait_for_key(&n1, "future", "the event stamped ahead is applied");
    let text = common::metrics(&n1);
    assert!(
        text.lines()
            .any(|l| l == "edgerep_clock_skewed_events_total 1"),
        "{text}"
    );
    let log = std::fs::read_to_string(&n1.log).unwrap();
    assert!(
        log.contains("events of node-2 up to 86")
            && log.contains(
                "ahead of this node's clock: applied, but this clock does not follow them"
            ),
        "{log}"
    );
    // Status names the origin, and `status --check` asks for an operator.
    let skewed = &status(&n1)["clock_skewed_origins"]["node-2"];
    assert!(
        skewed["ahead_ms"]
            .as_u64()
            .is_some_and(|ms| ms > 86_000_000),
        "{skewed}"
    );
    check_fails_naming(&configs[0], "events of node-2 came with timestamps");
}

/// Events before the handshake are refused: a second signed event under a number node-1 holds,
/// sent on a new connection before its Hello, closes that connection ("before hello"), is not
/// applied and is reported as nothing.
#[test]
fn events_before_the_handshake_are_refused_unread() {
    let dir = tempfile::tempdir().unwrap();
    let (configs, n1, n3) = honest_pair(dir.path());
    let mut h = attacker(&configs, &[]);
    let other = second_history(&mut h, &n1);
    let mut early = Hostile::connect(&configs[1], &configs[0]);
    early.send(&other).unwrap();
    let reason = early.closed_within(Duration::from_secs(5));
    assert!(
        reason.as_deref().is_some_and(|r| r.contains("before")),
        "{reason:?}"
    );
    assert_eq!(replication(&n1)["forks_total"], 0, "{}", replication(&n1));
    assert_eq!(get(&n1, "c", "fork").1, r#"{"v":1}"#);
    put(&n3, "c", "after", r#"{"v":3}"#);
    converge(&[&n1, &n3], Duration::from_secs(30));
}

/// A peer claiming to hold more of node-1's own events than node-1 made durable asks, in a
/// Repair, for a key node-1 wrote in a `periodic` collection (acknowledged before its sync):
/// node-1 sent the unsynced version and its seal. A crash would then lose the event at node-1
/// while the peer keeps it, with node-1's seal proving node-1 wrote it: node-1 would number
/// its next writes from the last synced one, a second history of its own. Now a repair sends
/// node-1's own events only once synced, as replication does.
#[test]
fn a_repair_sends_none_of_this_nodes_unsynced_events() {
    let dir = tempfile::tempdir().unwrap();
    let configs = cluster(dir.path(), 3);
    let text = std::fs::read_to_string(&configs[0]).unwrap();
    assert!(text.contains("\n[node]\n"), "{text}");
    std::fs::write(
        &configs[0],
        format!(
            "{}\n[[collections.declared]]\nname = \"p\"\ndurability = \"periodic\"\n",
            // A sync a minute: nothing written below is synced during the test.
            text.replace("\n[node]\n", "\n[node]\nsync_interval_ms = 60000\n")
        ),
    )
    .unwrap();
    let n1 = Node::start_with(&configs[0], &["--alone"]);
    put(&n1, "p", "k", r#"{"v":1}"#);
    let mut h = Hostile::connect(&configs[1], &configs[0]);
    let hello = h.hello(&[("node-1", 1_000_000)], &[]);
    h.send(&hello).unwrap();
    assert!(
        h.wait_for(Duration::from_secs(5), |m| matches!(m, Message::Hello(_)))
            .is_some(),
        "node-1 answers the handshake"
    );
    h.send(&Message::Ack {
        have: vec![(NodeId::parse("node-1").unwrap(), 1_000_000)],
        rewind: false,
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // Asks node-1 for key p/k under repair `id`: the versions and seals it answers.
    let ask = |h: &mut Hostile, id: u64| {
        h.send(&Message::Repair {
            id,
            versions: vec![],
            proofs: vec![],
            seals: vec![],
            certs: vec![],
            want: vec![b"p\0k".to_vec()],
            resolutions: vec![],
        })
        .unwrap();
        let answer = h.wait_for(
            Duration::from_secs(10),
            |m| matches!(m, Message::Repair { id: i, .. } if *i == id),
        );
        let Some(Message::Repair {
            versions, seals, ..
        }) = answer
        else {
            panic!("node-1 answers repair request {id}: {answer:?}");
        };
        (versions, seals)
    };
    let (versions, seals) = ask(&mut h, 7);
    assert!(
        versions.is_empty(),
        "node-1 sent its unsynced version: {versions:?}"
    );
    assert!(
        seals.iter().all(|s| s.origin.as_str() != "node-1"),
        "node-1 sent the seal of its unsynced event: {seals:?}"
    );
    // Once synced (an immediate write syncs what came before it), the version goes out.
    put(&n1, "c", "synced", r#"{"v":2}"#);
    let (versions, _) = ask(&mut h, 8);
    assert_eq!(versions.len(), 1, "the synced version goes out");
}

/// Events forged under node-3's name with the sequence numbers it uses next, each with a causal
/// context naming an event nobody holds, so that admission defers them: before, deferred
/// events never met a seal check, the attacker was never cut off, and while each of its
/// batches was at the committer node-1 dropped node-3's real events as duplicates (sent again
/// and again, node-3 stopped reaching node-1). Now the held-back events are checked against
/// node-3's seals, refused as forged, and the attacker cut off; node-3's writes arrive.
#[test]
fn forged_events_that_would_wait_are_refused_and_the_peer_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let (configs, n1, n3) = honest_pair(dir.path());
    let mut h = attacker(&configs, &[]);
    let forged: Vec<_> = (2..=4)
        .map(|seq| {
            with_context(
                event("node-3", seq, "c", &format!("x{seq}"), 666),
                &[("node-9", 5)],
            )
        })
        .collect();
    let m = h.sealed(forged);
    h.send(&m).unwrap();
    let reason = h.closed_within(Duration::from_secs(5));
    assert!(
        reason
            .as_deref()
            .is_some_and(|r| r.contains("node-3") && r.contains("forged")),
        "the attacker is cut off naming the forgery: {reason:?}"
    );
    for seq in 2..=4 {
        put(&n3, "c", &format!("x{seq}"), r#"{"v":3}"#);
    }
    converge(&[&n1, &n3], Duration::from_secs(30));
    for seq in 2..=4 {
        assert_eq!(get(&n1, "c", &format!("x{seq}")).1, r#"{"v":3}"#);
    }
}
