//! Upgrades without restarts and without drift, with real processes: a resolver upgraded on a
//! running cluster node by node (`edgerep reload`) while writes go on, one node late; peers
//! added and removed; what a reload refuses.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Node, agent, built_plugin, cluster, converge, edgerep, status, stderr, stdout};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The `tally` collection resolved by `counter-v1`; with `upgrade_at`, `counter-v2` (the same
/// build with another parameter, so another plugin to the cluster) from then on.
fn tally(wasm: &std::path::Path, sha: &str, upgrade_at: Option<u64>) -> String {
    let mut t = r#"
[[collections.declared]]
name = "tally"
resolver = "counter-v1"
"#
    .to_owned();
    if let Some(at) = upgrade_at {
        t.push_str(&format!(
            r#"
[[collections.declared.upgrades]]
effective_from = {at}
resolver = "counter-v2"
"#
        ));
    }
    t.push_str(&format!(
        r#"
[plugins.counter-v1]
path = "{0}"
sha256 = "{sha}"
params = {{ version = "1" }}
"#,
        wasm.display()
    ));
    if upgrade_at.is_some() {
        t.push_str(&format!(
            r#"
[plugins.counter-v2]
path = "{0}"
sha256 = "{sha}"
params = {{ version = "2" }}
"#,
            wasm.display()
        ));
    }
    t
}

/// The text of each config file.
fn texts(configs: &[std::path::PathBuf]) -> Vec<String> {
    configs
        .iter()
        .map(|c| std::fs::read_to_string(c).unwrap())
        .collect()
}

/// Who resolved `tally/KEY` on `node` (`x-edgerep-resolved-by`); panics unless it reads 200.
fn resolved_by(node: &Node, key: &str) -> String {
    let mut r = agent()
        .get(node.url(&format!("/v1/kv/tally/{key}")))
        .call()
        .unwrap();
    assert_eq!(
        r.status(),
        200,
        "{key}: {}",
        r.body_mut().read_to_string().unwrap()
    );
    let by = r.headers().get("x-edgerep-resolved-by").unwrap();
    by.to_str().unwrap().to_owned()
}

/// `edgerep reload --config CONFIG`, returning its stdout; panics unless it succeeds.
fn reload(config: &std::path::Path) -> serde_json::Value {
    let o = edgerep(&["reload", "--config", config.to_str().unwrap()]);
    assert!(
        o.status.success(),
        "reload failed: {}{}",
        stdout(&o),
        stderr(&o)
    );
    serde_json::from_str(&stdout(&o)).unwrap()
}

#[test]
fn a_rolling_resolver_upgrade_with_writes_going_on_ends_without_drift() {
    let dir = tempfile::tempdir().unwrap();
    let configs = cluster(dir.path(), 3);
    let (wasm, sha) = built_plugin("merge-counter");
    let base = texts(&configs);
    for (c, b) in configs.iter().zip(&base) {
        std::fs::write(c, format!("{b}{}", tally(&wasm, &sha, None))).unwrap();
    }
    let nodes: Vec<Arc<Node>> = configs.iter().map(|c| Arc::new(Node::start(c))).collect();

    // Concurrent versions decided before the upgrade: every node writes each `early-*` key at
    // the same moment (before any of them can have the others' write).
    let upgrade_at = now_ms() + 8_000;
    burst(&nodes, "early");
    // Writers on every node all along, on keys of their own and shared ones; each node counts
    // its own writes into the key's map, so concurrent versions of a key meet and a resolver
    // decides them.
    let stop = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let (node, stop, refused) = (node.clone(), stop.clone(), refused.clone());
            std::thread::spawn(move || {
                let agent = agent();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let key = format!("busy-{}", n % 5);
                    let r = agent
                        .put(node.url(&format!("/v1/kv/tally/{key}")))
                        .content_type("application/json")
                        .send(format!(r#"{{"node-{}":{n}}}"#, i + 1).as_bytes())
                        .unwrap();
                    match r.status().as_u16() {
                        200 => {}
                        // The late node while it lacks the upgrade: told why, nothing written.
                        503 => {
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                        s => panic!("write answered {s}"),
                    }
                    std::thread::sleep(Duration::from_millis(15));
                }
            })
        })
        .collect();

    // node-1 and node-2 take the upgrade before its time, node-3 only after it.
    let upgraded: Vec<String> = base
        .iter()
        .map(|b| format!("{b}{}", tally(&wasm, &sha, Some(upgrade_at))))
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    for i in 0..2 {
        std::fs::write(&configs[i], &upgraded[i]).unwrap();
        let r = reload(&configs[i]);
        assert_eq!(
            r["reloaded"]["plugins_loaded"],
            serde_json::json!(["counter-v2"]),
            "{r}"
        );
        assert_eq!(r["reloaded"]["sessions_restarted"], true, "{r}");
        std::thread::sleep(Duration::from_secs(1));
    }
    // Past the upgrade's time, node-3 (which has not got it) pauses the collection, saying why.
    while now_ms() < upgrade_at + 1_500 {
        std::thread::sleep(Duration::from_millis(100));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let paused = loop {
        let s = status(&nodes[2]);
        if let Some(p) = s["paused_collections"]["tally"].as_object() {
            break p.clone();
        }
        assert!(Instant::now() < deadline, "node-3 did not pause: {s}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(paused["from_ms"], upgrade_at, "{paused:?}");
    let metrics = common::metrics(&nodes[2]);
    assert!(
        metrics.contains(r#"edgerep_collection_stopped{collection="tally",why="paused"} 1"#),
        "{metrics}"
    );
    let reason = paused["reason"].as_str().unwrap();
    assert!(
        reason.contains("upgrade") && reason.contains("edgerep reload"),
        "{reason}"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        refused.load(Ordering::Relaxed) > 0,
        "node-3's writes after the upgrade's time wait while it lacks the upgrade"
    );
    std::fs::write(&configs[2], &upgraded[2]).unwrap();
    let r = reload(&configs[2]);
    assert_eq!(
        r["reloaded"]["upgrades_added"][0]
            .as_str()
            .unwrap()
            .split(' ')
            .next(),
        Some("tally"),
        "{r}"
    );
    let s = status(&nodes[2]);
    assert!(
        s["paused_collections"]["tally"].is_null(),
        "the reload brought the upgrade: {s}"
    );
    // Concurrent versions decided after the upgrade's time.
    burst(&nodes, "late");
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }

    let refs: Vec<&Node> = nodes.iter().map(|n| n.as_ref()).collect();
    converge(&refs, Duration::from_secs(60));
    // Every key with concurrent versions is resolved by the resolver in force at its newest
    // version's time, on every node alike.
    let mut by = std::collections::BTreeMap::<String, u64>::new();
    for node in &nodes {
        for k in 0..BURST_KEYS {
            for prefix in ["early", "late", "busy"] {
                let key = format!("{prefix}-{k}");
                let mut r = agent()
                    .get(node.url(&format!("/v1/kv/tally/{key}?versions=true")))
                    .call()
                    .unwrap();
                if r.status() == 404 {
                    continue;
                }
                let v: serde_json::Value =
                    serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
                let versions = v["versions"].as_array().unwrap();
                if versions.is_empty() {
                    continue;
                }
                let newest = versions
                    .iter()
                    .map(|e| {
                        let hlc = e["hlc"].as_str().unwrap();
                        hlc.split('.').next().unwrap().parse::<u64>().unwrap()
                    })
                    .max()
                    .unwrap();
                let resolved_by = resolved_by(node, &key);
                if versions.len() > 1 {
                    let want = if newest >= upgrade_at {
                        "plugin:counter-v2"
                    } else {
                        "plugin:counter-v1"
                    };
                    assert_eq!(resolved_by, want, "{key} on {}: {v}", node.addr);
                }
                *by.entry(resolved_by).or_default() += 1;
            }
        }
    }
    eprintln!("keys by resolution (3 nodes): {by:?}");
    assert!(
        by.contains_key("plugin:counter-v1") && by.contains_key("plugin:counter-v2"),
        "both versions decided some keys: {by:?}"
    );
}

/// Keys each burst writes.
const BURST_KEYS: usize = 8;

/// Every node writes each key `PREFIX-k` at the same moment (threads released together), so
/// the versions are concurrent: each committed before any other node's write could arrive.
fn burst(nodes: &[Arc<Node>], prefix: &str) {
    for k in 0..BURST_KEYS {
        let gate = Arc::new(std::sync::Barrier::new(nodes.len()));
        let threads: Vec<_> = nodes
            .iter()
            .enumerate()
            .map(|(i, node)| {
                let (node, gate) = (node.clone(), gate.clone());
                let key = format!("{prefix}-{k}");
                let agent = agent();
                std::thread::spawn(move || {
                    gate.wait();
                    let r = agent
                        .put(node.url(&format!("/v1/kv/tally/{key}")))
                        .content_type("application/json")
                        .send(format!(r#"{{"node-{}":{k}}}"#, i + 1).as_bytes())
                        .unwrap();
                    assert_eq!(r.status(), 200, "{key} on node-{}", i + 1);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }
}

#[test]
fn a_reload_refuses_what_needs_a_restart_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let configs = [common::init(dir.path(), "node-1")];
    let (wasm, sha) = built_plugin("merge-counter");
    let base = std::fs::read_to_string(&configs[0]).unwrap();
    std::fs::write(&configs[0], format!("{base}{}", tally(&wasm, &sha, None))).unwrap();
    let node = Node::start(&configs[0]);

    // The resolver's parameters changed in place: refused, naming the way to do it.
    let in_place = format!("{base}{}", tally(&wasm, &sha, None))
        .replace("version = \"1\"", "version = \"1b\"");
    std::fs::write(&configs[0], &in_place).unwrap();
    let o = edgerep(&["reload", "--config", configs[0].to_str().unwrap()]);
    assert!(!o.status.success());
    let said = format!("{}{}", stdout(&o), stderr(&o));
    assert!(
        said.contains("plugins.counter-v1") && said.contains("effective_from"),
        "{said}"
    );
    // A limit lowered: refused (a start would refuse it too).
    std::fs::write(
        &configs[0],
        format!("{base}{}", tally(&wasm, &sha, None))
            .replace("[limits]\n", "[limits]\nmax_key_bytes = 100\n"),
    )
    .unwrap();
    let o = edgerep(&["reload", "--config", configs[0].to_str().unwrap()]);
    assert!(!o.status.success());
    let said = format!("{}{}", stdout(&o), stderr(&o));
    assert!(
        said.contains("[limits]") && said.contains("lowered"),
        "{said}"
    );
    // A collection the node took undeclared (last writer wins) and holds events of, declared
    // with a resolver plugin in place: refused like the same change to a declared collection.
    common::put(&node, "loose", "k", r#"{"n":1}"#);
    let declare = |name: &str| {
        format!(
            "{base}{}\n[[collections.declared]]\nname = \"{name}\"\nresolver = \"counter-v1\"\n",
            tally(&wasm, &sha, None)
        )
    };
    std::fs::write(&configs[0], declare("loose")).unwrap();
    let o = edgerep(&["reload", "--config", configs[0].to_str().unwrap()]);
    assert!(!o.status.success());
    let said = format!("{}{}", stdout(&o), stderr(&o));
    assert!(
        said.contains("\"loose\"")
            && said.contains("holds its keys")
            && said.contains("effective_from"),
        "{said}"
    );
    // A new collection compared on its versions, or synced periodically: the store's hash
    // rule and the committer's sync policy are set at start, so a restart.
    for extra in ["compare = \"versions\"", "durability = \"periodic\""] {
        std::fs::write(
            &configs[0],
            format!(
                "{base}{}\n[[collections.declared]]\nname = \"fresh\"\n{extra}\n",
                tally(&wasm, &sha, None)
            ),
        )
        .unwrap();
        let o = edgerep(&["reload", "--config", configs[0].to_str().unwrap()]);
        assert!(!o.status.success());
        let said = format!("{}{}", stdout(&o), stderr(&o));
        assert!(
            said.contains("\"fresh\"") && said.contains("restart"),
            "{extra}: {said}"
        );
    }
    // An upgrade that brings a collection its first transforms on apply: it must then be
    // compared on its versions, which takes a restart. Refused, saying so (it said "durability
    // or what anti-entropy compares changed", neither of which the operator touched).
    let (pass, pass_sha) = built_plugin("passthrough");
    std::fs::write(
        &configs[0],
        format!(
            "{}{}\n[[collections.declared.upgrades]]\neffective_from = {}\ntransforms_on_apply = [\"pass\"]\n\n[plugins.pass]\npath = \"{}\"\nsha256 = \"{pass_sha}\"\n",
            // (Transforms on apply need the changelog kept whole.)
            base.replace("\n[retention]\n", "\n[retention]\ncompact = false\n"),
            tally(&wasm, &sha, None),
            now_ms() + 60_000,
            pass.display()
        ),
    )
    .unwrap();
    let o = edgerep(&["reload", "--config", configs[0].to_str().unwrap()]);
    assert!(!o.status.success());
    let said = format!("{}{}", stdout(&o), stderr(&o));
    assert!(
        said.contains("\"tally\"")
            && said.contains("first transforms on apply")
            && said.contains("compare = \"versions\""),
        "{said}"
    );
    // A broken file is caught before the node is asked.
    std::fs::write(&configs[0], "[node\n").unwrap();
    let o = edgerep(&["reload", "--config", configs[0].to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    // Nothing changed: the node runs what it started with.
    let s = status(&node);
    assert!(s["plugins"]["counter-v1"].is_object(), "{s}");
    // SIGHUP takes in an allowed change: a new collection and an upgrade.
    std::fs::write(
        &configs[0],
        format!(
            "{base}{}\n[[collections.declared]]\nname = \"extra\"\n",
            tally(&wasm, &sha, Some(now_ms() + 60_000))
        ),
    )
    .unwrap();
    common::send_signal(node.child.id() as i32, "HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = status(&node);
        // The plugins are swapped first, then the config.
        if s["plugins"]["counter-v2"].is_object()
            && s["collections"].to_string().contains("\"extra\"")
        {
            assert_eq!(
                s["collections"]["declared"][0]["upgrades"][0]["resolver"], "counter-v2",
                "{s}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "SIGHUP did not reload: {s}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `text` without its `[[peers]]` entry for `id`.
fn without_peer(text: &str, id: &str) -> String {
    let entry = format!("[[peers]]\nid = \"{id}\"\n");
    let at = text.find(&entry).expect("the peer's entry");
    let end = text[at + entry.len()..]
        .find('\n')
        .map_or(text.len(), |i| at + entry.len() + i + 1);
    format!("{}{}", &text[..at], &text[end..])
}

#[test]
fn peers_are_added_and_removed_by_a_reload_while_the_others_keep_going() {
    let dir = tempfile::tempdir().unwrap();
    let configs = cluster(dir.path(), 3);
    let full = texts(&configs);
    // node-1 and node-2 start without node-3 among their peers.
    for i in 0..2 {
        std::fs::write(&configs[i], without_peer(&full[i], "node-3")).unwrap();
    }
    let n1 = Node::start(&configs[0]);
    let n2 = Node::start(&configs[1]);
    for k in 0..50 {
        common::put(&n1, "orders", &format!("k{k}"), "{\"n\":1}");
    }
    converge(&[&n1, &n2], Duration::from_secs(20));
    // node-3 knows them, they do not know it: refused.
    let n3 = Node::start_with(&configs[2], &["--alone"]);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        status(&n3)["origins"]["node-1"].as_u64().unwrap_or(0),
        0,
        "an unknown peer gets nothing"
    );
    let sessions_before = status(&n1)["replication"]["peers"][0]["connected"].clone();
    assert_eq!(sessions_before, true);

    // Adding it: node-1 and node-2 reload; it catches up.
    for i in 0..2 {
        std::fs::write(&configs[i], &full[i]).unwrap();
        let r = reload(&configs[i]);
        assert_eq!(r["reloaded"]["sessions_restarted"], false, "{r}");
    }
    converge(&[&n1, &n2, &n3], Duration::from_secs(30));

    // Removing node-2 from node-1 (and node-1 from node-2): their link closes, node-3 relays.
    std::fs::write(&configs[0], without_peer(&full[0], "node-2")).unwrap();
    reload(&configs[0]);
    std::fs::write(&configs[1], without_peer(&full[1], "node-1")).unwrap();
    reload(&configs[1]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = status(&n1);
        let peers = s["replication"]["peers"].as_array().unwrap().clone();
        let ids: Vec<&str> = peers.iter().map(|p| p["id"].as_str().unwrap()).collect();
        if ids == ["node-3"] && peers[0]["connected"] == true {
            break;
        }
        assert!(Instant::now() < deadline, "node-1 still lists {ids:?}: {s}");
        std::thread::sleep(Duration::from_millis(100));
    }
    for k in 0..50 {
        common::put(&n1, "orders", &format!("after-{k}"), "{\"n\":2}");
    }
    converge(&[&n1, &n2, &n3], Duration::from_secs(30));
    assert_eq!(common::get(&n2, "orders", "after-49").0, 200);
}

#[test]
fn limits_are_raised_by_a_reload_on_every_node() {
    let dir = tempfile::tempdir().unwrap();
    let configs = cluster(dir.path(), 2);
    let nodes: Vec<Node> = configs.iter().map(|c| Node::start(c)).collect();
    // A 100 KB value: over the default max_value_bytes (64 KiB).
    let big = format!("{{\"blob\":\"{}\"}}", "x".repeat(100_000));
    let put = |node: &Node, key: &str| {
        let mut r = agent()
            .put(node.url(&format!("/v1/kv/files/{key}")))
            .content_type("application/json")
            .send(big.as_bytes())
            .unwrap();
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
    };
    let (status, body) = put(&nodes[0], "f-1");
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("max_value_bytes"), "{body}");
    for c in &configs {
        let text = std::fs::read_to_string(c).unwrap();
        std::fs::write(
            c,
            text.replace("[limits]\n", "[limits]\nmax_value_bytes = 262144\n"),
        )
        .unwrap();
        let r = reload(c);
        assert_eq!(
            r["reloaded"]["sessions_restarted"], true,
            "the policy changed: {r}"
        );
    }
    let (status, body) = put(&nodes[0], "f-1");
    assert_eq!(status, 200, "{body}");
    converge(&[&nodes[0], &nodes[1]], Duration::from_secs(30));
    let (status, body) = common::get(&nodes[1], "files", "f-1");
    assert_eq!((status, body.len()), (200, big.len()), "replicated whole");
    // Lowering is refused: what is stored must stay readable.
    let text = std::fs::read_to_string(&configs[0]).unwrap();
    std::fs::write(
        &configs[0],
        text.replace("max_value_bytes = 262144", "max_value_bytes = 1000"),
    )
    .unwrap();
    let o = edgerep(&["reload", "--config", configs[0].to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("lowered"), "{}", stderr(&o));
    // And a restart with the limit back at its default: refused too (the reload recorded the
    // raised limit in the store), naming it; with the raised limit, the value reads whole.
    let mut nodes = nodes.into_iter();
    nodes.next().unwrap().terminate();
    let text = std::fs::read_to_string(&configs[0]).unwrap();
    std::fs::write(&configs[0], text.replace("max_value_bytes = 1000\n", "")).unwrap();
    let (code, err) = common::refused_to_start(
        &["run", "--config", configs[0].to_str().unwrap()],
        "node-1 started with limits lower than a reload raised them to",
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("max_value_bytes 65536"), "{err}");
    std::fs::write(
        &configs[0],
        text.replace("max_value_bytes = 1000", "max_value_bytes = 262144"),
    )
    .unwrap();
    let n1 = Node::start(&configs[0]);
    let (status, body) = common::get(&n1, "files", "f-1");
    assert_eq!((status, body.len()), (200, big.len()), "{body}");
}

/// An upgrade that reaches two nodes only after its time, while no node that had it was
/// connected (so nothing paused them): their concurrent writes after that time were resolved
/// by the old resolver; the reload decides them again, and a third node that had the upgrade
/// all along agrees with them.
#[test]
fn keys_resolved_before_an_upgrade_arrived_are_resolved_again_by_the_reload() {
    let dir = tempfile::tempdir().unwrap();
    let configs = cluster(dir.path(), 3);
    let (wasm, sha) = built_plugin("merge-counter");
    let base = texts(&configs);
    for i in 1..3 {
        std::fs::write(
            &configs[i],
            format!("{}{}", base[i], tally(&wasm, &sha, None)),
        )
        .unwrap();
    }
    let nodes: Vec<Arc<Node>> = configs[1..]
        .iter()
        .map(|c| Arc::new(Node::start(c)))
        .collect();
    let upgrade_at = now_ms();
    std::thread::sleep(Duration::from_millis(50));
    burst(&nodes, "late");
    let refs: Vec<&Node> = nodes.iter().map(|n| n.as_ref()).collect();
    converge(&refs, Duration::from_secs(30));
    let concurrent: Vec<String> = (0..BURST_KEYS)
        .map(|k| format!("late-{k}"))
        .filter(|k| resolved_by(&nodes[0], k) == "plugin:counter-v1")
        .collect();
    assert!(!concurrent.is_empty(), "some keys hold concurrent versions");
    // Both take the upgrade, already past its time: the kept resolutions are decided again.
    let upgraded: Vec<String> = base
        .iter()
        .map(|b| format!("{b}{}", tally(&wasm, &sha, Some(upgrade_at))))
        .collect();
    for (i, node) in nodes.iter().enumerate() {
        std::fs::write(&configs[i + 1], &upgraded[i + 1]).unwrap();
        let r = reload(&configs[i + 1]);
        assert_eq!(
            r["reloaded"]["keys_re_resolved"]["tally"],
            concurrent.len(),
            "{r}"
        );
        for k in &concurrent {
            assert_eq!(resolved_by(node, k), "plugin:counter-v2", "{k}");
        }
    }
    converge(&refs, Duration::from_secs(30));
    // node-1, upgraded from the start, joins and agrees.
    std::fs::write(&configs[0], &upgraded[0]).unwrap();
    let n1 = Node::start(&configs[0]);
    converge(&[&n1, &nodes[0], &nodes[1]], Duration::from_secs(30));
    for k in &concurrent {
        assert_eq!(resolved_by(&n1, k), "plugin:counter-v2", "{k}");
    }
}

/// A peer's version stamped ten years ahead (its clock, or a lie) is past any effective_from an
/// operator would pick: the refusal names its key and the way past it (a write to that key
/// here supersedes it), and once that write is made the upgrade goes in.
#[test]
fn an_upgrade_blocked_by_a_version_from_the_future_says_how_to_get_past_it() {
    let dir = tempfile::tempdir().unwrap();
    let configs = cluster(dir.path(), 3);
    let (wasm, sha) = built_plugin("passthrough");
    let base = format!(
        "{}\n[[collections.declared]]\nname = \"c\"\ntransforms_on_apply = [\"pass\"]\n\n[plugins.pass]\npath = \"{}\"\nsha256 = \"{sha}\"\n",
        std::fs::read_to_string(&configs[0]).unwrap().replacen(
            "[retention]\n",
            "[retention]\ncompact = false\n",
            1
        ),
        wasm.display()
    );
    std::fs::write(&configs[0], &base).unwrap();
    let n1 = Node::start(&configs[0]);
    // node-2's identity in a hostile peer's hands, its clock ten years ahead.
    let mut h = common::hostile::Hostile::connect(&configs[1], &configs[0]);
    let hello = h.hello(&[], &[]);
    h.send(&hello).unwrap();
    let mut e = common::hostile::event("node-2", 1, "c", "far", 1);
    e.hlc = edgerep_wire::Hlc::new(now_ms() + 10 * 365 * 86_400_000, 0);
    let m = h.sealed(vec![e]);
    h.send(&m).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while status(&n1)["origins"]["node-2"] != 1 {
        assert!(Instant::now() < deadline, "node-1 applies it");
        std::thread::sleep(Duration::from_millis(50));
    }
    let upgraded = base.replace(
        "transforms_on_apply = [\"pass\"]\n",
        &format!(
            "transforms_on_apply = [\"pass\"]\n\n[[collections.declared.upgrades]]\neffective_from = {}\ntransforms_on_apply = []\n",
            now_ms() + 60_000
        ),
    );
    std::fs::write(&configs[0], &upgraded).unwrap();
    let o = edgerep(&["reload", "--config", configs[0].to_str().unwrap()]);
    assert!(!o.status.success());
    let said = format!("{}{}", stdout(&o), stderr(&o));
    assert!(
        said.contains(r#"to key "far""#) && said.contains("ahead of this node's clock"),
        "{said}"
    );
    common::put(&n1, "c", "far", r#"{"v":2}"#);
    reload(&configs[0]);
    assert_eq!(status(&n1)["verified"], true);
}

/// An upgrade of a collection's transforms on apply from a time this node already applied
/// events of comes too late for it: those events went through the old transforms and are not
/// applied again, while nodes that took the upgrade in time apply the new ones (values that
/// differ for good, which anti-entropy does not see: it compares such collections on their
/// versions). A reload refuses it; an upgrade from a later time is taken. This node's own
/// writes do not count (they never pass its transforms on apply).
#[test]
fn an_upgrade_of_transforms_on_apply_from_a_time_already_applied_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let configs = cluster(dir.path(), 2);
    let (wasm, sha) = built_plugin("passthrough");
    let with = |text: &str| {
        format!(
            "{}\n[[collections.declared]]\nname = \"c\"\ntransforms_on_apply = [\"pass\"]\n\n[plugins.pass]\npath = \"{}\"\nsha256 = \"{sha}\"\n",
            text.replacen("[retention]\n", "[retention]\ncompact = false\n", 1),
            wasm.display()
        )
    };
    let bases: Vec<String> = texts(&configs).iter().map(|t| with(t)).collect();
    for (c, t) in configs.iter().zip(&bases) {
        std::fs::write(c, t).unwrap();
    }
    let n1 = Node::start(&configs[0]);
    let n2 = Node::start(&configs[1]);
    common::put(&n2, "c", "k", r#"{"v":1}"#);
    converge(&[&n1, &n2], Duration::from_secs(30));
    let upgraded = |from_ms: u64| {
        bases[0].replace(
            "transforms_on_apply = [\"pass\"]\n",
            &format!(
                "transforms_on_apply = [\"pass\"]\n\n[[collections.declared.upgrades]]\neffective_from = {from_ms}\ntransforms_on_apply = []\n"
            ),
        )
    };
    std::fs::write(&configs[0], upgraded(now_ms() - 60_000)).unwrap();
    let o = edgerep(&["reload", "--config", configs[0].to_str().unwrap()]);
    assert!(!o.status.success());
    let said = format!("{}{}", stdout(&o), stderr(&o));
    assert!(
        said.contains("already applied event node-2:1")
            && said.contains(r#"to key "k""#)
            && said.contains("pick an effective_from after it"),
        "{said}"
    );
    // The refused file left in place, and the node restarted (a crash, a supervisor): the
    // start refuses it the same way.
    n1.terminate();
    let (code, err) = common::refused_to_start(
        &["run", "--config", configs[0].to_str().unwrap()],
        "node-1 started with an upgrade from a time it already applied events of",
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("already applied event node-2:1"), "{err}");
    // From a time ahead: taken by a reload, and by the starts after it.
    std::fs::write(&configs[0], bases[0].as_str()).unwrap();
    let n1 = Node::start(&configs[0]);
    std::fs::write(&configs[0], upgraded(now_ms() + 60_000)).unwrap();
    reload(&configs[0]);
    assert_eq!(status(&n1)["verified"], true);
    n1.terminate();
    let n1 = Node::start(&configs[0]);
    assert_eq!(status(&n1)["verified"], true);
}

/// An upgrade of a collection's transforms on apply from a time only just ahead, taken by a
/// reload while a peer writes to it: the reload checked what was applied from that time on
/// before it compiled the new plugin (seconds, for a standard-Go build), and put it in force
/// after, so the peer's events stamped in between went through the old transform here and
/// through the new one on nodes that took the upgrade sooner: values that differ for good,
/// unseen by anti-entropy. Now batches of peers' events wait while a reload checks and puts the new
/// plugins in force, and the check comes after the compile: the reload is refused (naming an
/// event applied from that time on), or every event from that time on went through the new
/// transform and none before it did.
#[test]
fn an_upgrade_taken_while_a_peer_writes_leaves_no_event_to_the_old_transform() {
    let dir = tempfile::tempdir().unwrap();
    let configs = cluster(dir.path(), 2);
    let (pass, pass_sha) = built_plugin("passthrough");
    let (redact, redact_sha) = common::built_plugin_of("go", "redact");
    let bases: Vec<String> = texts(&configs)
        .iter()
        .map(|t| {
            format!(
                "{}\n[[collections.declared]]\nname = \"c\"\ntransforms_on_apply = [\"pass\"]\n\n[plugins.pass]\npath = \"{}\"\nsha256 = \"{pass_sha}\"\n",
                t.replacen("[retention]\n", "[retention]\ncompact = false\n", 1),
                pass.display()
            )
        })
        .collect();
    // node-2, the writer, has not taken the upgrade yet (a node that took it announces it,
    // and a node without it holds that node's events from its time on until it has it).
    let from = now_ms() + 8_000;
    let upgraded = |base: &str| {
        base.replace(
            "transforms_on_apply = [\"pass\"]\n",
            &format!(
                "transforms_on_apply = [\"pass\"]\n\n[[collections.declared.upgrades]]\neffective_from = {from}\ntransforms_on_apply = [\"redact\"]\n"
            ),
        ) + &format!(
            "\n[plugins.redact]\npath = \"{}\"\nsha256 = \"{redact_sha}\"\nparams = {{ mask = \"celsius\" }}\n",
            redact.display()
        )
    };
    for (c, t) in configs.iter().zip(&bases) {
        std::fs::write(c, t).unwrap();
    }
    let n1 = Node::start(&configs[0]);
    let n2 = Node::start(&configs[1]);
    common::put(&n2, "c", "first", r#"{"celsius":1}"#);
    converge(&[&n1, &n2], Duration::from_secs(30));

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let url = n2.url("/v1/kv/c/");
        std::thread::spawn(move || {
            // Writes node-2 took (once node-1 announces the upgrade, node-2, which lacks it,
            // refuses writes to the collection: 503).
            let (mut i, mut taken) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let r = agent()
                    .put(&format!("{url}k{i:05}"))
                    .content_type("application/json")
                    .send(format!(r#"{{"celsius":{i}}}"#).as_bytes())
                    .unwrap();
                taken += u64::from(r.status() == 200);
                i += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            taken
        })
    };
    // node-1 takes it half a second before its time (compiling the standard-Go build takes
    // seconds).
    let wait = (from - 500).saturating_sub(now_ms());
    assert!(
        wait > 0,
        "the cluster took too long to start for this test's times"
    );
    std::thread::sleep(Duration::from_millis(wait));
    std::fs::write(&configs[0], upgraded(&bases[0])).unwrap();
    // By a signal (`edgerep reload` checks the file first, compiling the plugin itself, and
    // the node's reload would start past the upgrade's time).
    let started = Instant::now();
    common::send_signal(n1.child.id() as i32, "HUP");
    let outcome = loop {
        let st = status(&n1);
        if let Some(e) = st["last_reload_error"].as_str() {
            break Err(e.to_owned());
        }
        if st["collections"]["declared"][0]["upgrades"]
            .as_array()
            .is_some_and(|u| !u.is_empty())
        {
            break Ok(());
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no reload: {st}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = started.elapsed();
    std::thread::sleep(Duration::from_millis(1000));
    stop.store(true, Ordering::Relaxed);
    let written = writer.join().unwrap();
    converge(&[&n1, &n2], Duration::from_secs(30));
    eprintln!("reload took {took:?}, {written} writes: {outcome:?}");
    if let Err(said) = outcome {
        assert!(said.contains("already applied event node-2:"), "{said}");
        return;
    }
    // Taken: each of node-2's events went through the transform of its time.
    let mut events = Vec::new();
    loop {
        let path = format!("/v1/changelog/node-2?after={}&limit=1000", events.len());
        let mut r = agent().get(&n1.url(&path)).call().unwrap();
        let page: serde_json::Value =
            serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
        let page = page["events"].as_array().expect("a page of events").clone();
        if page.is_empty() {
            break;
        }
        events.extend(page);
    }
    assert!(
        events.len() as u64 > written,
        "{} events listed, {written} written after the first; the last: {:?}; node-1: {}",
        events.len(),
        events.last(),
        status(&n1)["origins"]
    );
    let (mut before, mut after) = (0, 0);
    for e in &events {
        let key = e["key"].as_str().unwrap();
        let at: u64 = e["hlc"]
            .as_str()
            .unwrap()
            .split('.')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let (code, value) = common::get(&n1, "c", key);
        assert_eq!(code, 200, "{key}");
        let redacted = value.contains("***");
        if at >= from {
            after += 1;
        } else {
            before += 1;
        }
        assert_eq!(
            redacted,
            at >= from,
            "{key} stamped {at}, the upgrade from {from}: {value}"
        );
    }
    assert!(before > 0 && after > 0, "{before} before, {after} after");
}

/// A careless operator raises a limit on one node by a typo and reloads: its peer refuses it
/// (nodes must run the same limits), and the store recorded the raise, so the old value was
/// refused for good, by a reload and by a start alike: the pair stayed apart until every node
/// of the fleet took the typo. A reload back is still refused (a reload never lowers a limit),
/// but now a restart with the old value is taken (no stored event needs the higher one) and the
/// pair replicates again.
#[test]
fn a_limit_raised_by_a_typo_is_undone_by_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let configs = cluster(dir.path(), 2);
    let n1 = Node::start(&configs[0]);
    let n2 = Node::start(&configs[1]);
    common::put(&n1, "c", "before", r#"{"v":1}"#);
    converge(&[&n1, &n2], Duration::from_secs(30));
    let text = std::fs::read_to_string(&configs[0]).unwrap();
    assert!(text.contains("\n[limits]\n"));
    std::fs::write(
        &configs[0],
        text.replace("\n[limits]\n", "\n[limits]\nmax_value_bytes = 6553600\n"),
    )
    .unwrap();
    common::reload(&configs[0]);
    // node-2 refuses node-1 for its limits.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = status(&n2);
        let error = s["replication"]["peers"][0]["last_error"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if error.contains("max_value_bytes") {
            break;
        }
        assert!(Instant::now() < deadline, "node-2 still takes node-1: {s}");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::write(&configs[0], &text).unwrap();
    let o = edgerep(&["reload", "--config", configs[0].to_str().unwrap()]);
    assert_ne!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(
        stderr(&o).contains("restart the node with the lower ones"),
        "{}",
        stderr(&o)
    );
    n1.terminate();
    let n1 = Node::start(&configs[0]);
    common::put(&n2, "c", "after", r#"{"v":2}"#);
    converge(&[&n1, &n2], Duration::from_secs(30));
    assert_eq!(common::get(&n1, "c", "after").0, 200);
}

/// A reload that raises the node's event limits loads its plugins anew: kept as loaded, they
/// checked their output against the old limits, and refused on this node alone values the new
/// ones allow (a node restarted with the same config took them). Unchanged limits keep them.
#[test]
fn a_reload_raising_the_limits_loads_the_plugins_anew() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::init(dir.path(), "node-1");
    let (wasm, sha) = built_plugin("merge-counter");
    let base = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{base}{}", tally(&wasm, &sha, None))).unwrap();
    let _node = Node::start(&config);
    let r = reload(&config);
    assert_eq!(
        r["reloaded"]["plugins_loaded"],
        serde_json::json!([]),
        "{r}"
    );
    let raised = base.replace("# max_value_bytes = 65536", "max_value_bytes = 131072");
    assert_ne!(raised, base, "the config names max_value_bytes");
    std::fs::write(&config, format!("{raised}{}", tally(&wasm, &sha, None))).unwrap();
    let r = reload(&config);
    assert_eq!(
        r["reloaded"]["plugins_loaded"],
        serde_json::json!(["counter-v1"]),
        "{r}"
    );
}

/// An effective_from typed years ahead (2062 for 2026, say) can be corrected: an upgrade more
/// than node.max_clock_skew_ms ahead, under which the node holds no version, may still be
/// changed or removed, by a reload and at a restart. Before, both were refused ("upgrades
/// already in force changed or were removed", and at a start the store had to be moved away),
/// and an upgrade at the time meant was refused as not after 2062. One already in force still
/// may not change.
#[test]
fn an_upgrade_dated_years_ahead_by_mistake_can_be_corrected() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::init(dir.path(), "n1");
    let (wasm, sha) = built_plugin("merge-counter");
    let base = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{base}{}", tally(&wasm, &sha, None))).unwrap();
    let n1 = Node::start(&config);
    common::put(&n1, "tally", "k", "1");
    let years_ahead = now_ms() + 36 * 365 * 86_400_000;
    std::fs::write(
        &config,
        format!("{base}{}", tally(&wasm, &sha, Some(years_ahead))),
    )
    .unwrap();
    reload(&config);
    // Removed by a reload (this panicked half-way, the new config already in force), then
    // given again at the time meant, ten minutes from now.
    std::fs::write(&config, format!("{base}{}", tally(&wasm, &sha, None))).unwrap();
    let answer = reload(&config);
    assert_eq!(
        answer["reloaded"]["upgrades_added"],
        serde_json::json!([]),
        "{answer}"
    );
    let meant = now_ms() + 600_000;
    std::fs::write(
        &config,
        format!("{base}{}", tally(&wasm, &sha, Some(meant))),
    )
    .unwrap();
    let answer = reload(&config);
    assert_eq!(upgrades_added(&answer), Some(1), "{answer}");
    // Within node.max_clock_skew_ms (60 s by default) of now it counts as in force: it may be
    // corrected while further ahead (here, to a time past), and then it stays.
    let in_force = now_ms() - 1_000;
    let stuck = format!("{base}{}", tally(&wasm, &sha, Some(in_force)));
    std::fs::write(&config, &stuck).unwrap();
    // A time already past: an upgrade from then, whose keys are resolved again.
    let answer = reload(&config);
    assert_eq!(upgrades_added(&answer), Some(1), "{answer}");
    assert!(
        answer["reloaded"]["keys_re_resolved"]
            .get("tally")
            .is_some(),
        "{answer}"
    );
    std::fs::write(&config, format!("{base}{}", tally(&wasm, &sha, None))).unwrap();
    let o = edgerep(&["reload", "--config", config.to_str().unwrap()]);
    assert!(!o.status.success(), "{}", stdout(&o));
    assert!(
        stderr(&o).contains("upgrades already in force changed or were removed"),
        "{}",
        stderr(&o)
    );
    // At a restart: a file whose pending upgrade was changed with the node stopped starts.
    std::fs::write(&config, &stuck).unwrap();
    reload(&config);
    let again_ahead = now_ms() + 36 * 365 * 86_400_000;
    let with_two = stuck.replace(
        "resolver = \"counter-v2\"\n",
        &format!(
            "resolver = \"counter-v2\"\n\n[[collections.declared.upgrades]]\neffective_from = {again_ahead}\nresolver = \"counter-v1\"\n"
        ),
    );
    std::fs::write(&config, &with_two).unwrap();
    reload(&config);
    n1.terminate();
    let corrected = with_two.replace(
        &format!("effective_from = {again_ahead}"),
        &format!("effective_from = {}", now_ms() + 3_600_000),
    );
    std::fs::write(&config, &corrected).unwrap();
    let n1 = Node::start(&config);
    assert_eq!(status(&n1)["verified"], true);
    // And removed at a restart.
    n1.terminate();
    std::fs::write(&config, &stuck).unwrap();
    let n1 = Node::start(&config);
    assert_eq!(common::get(&n1, "tally", "k").0, 200);
}

/// How many upgrades a reload's answer lists as added.
fn upgrades_added(answer: &serde_json::Value) -> Option<usize> {
    answer["reloaded"]["upgrades_added"]
        .as_array()
        .map(Vec::len)
}
