//! Anti-entropy with real processes: a node's store damaged behind its bookkeeping's back (a
//! key removed, another made unreadable) while it is stopped; after its restart the damage is
//! found, repaired from its peer, and reported as drift, on demand and periodically.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Node, built_plugin, cluster, converge, edgerep, get, put, status, stderr, stdout};

/// Writes `n` keys on `node` and waits until both nodes hold them.
fn fill(n1: &Node, n2: &Node, n: usize) {
    for i in 0..n {
        put(n1, "c", &format!("k{i}"), &format!(r#"{{"v":{i}}}"#));
    }
    converge(&[n1, n2], Duration::from_secs(30));
}

fn damage(config: &Path, key: &str, flip: bool) -> std::process::Output {
    common::damage(config, "c", key, flip)
}

/// Has the node of `config` start a session with each peer every 300-375 ms (a pair's lower id
/// starts them).
fn comparing_often(config: &Path) {
    let text = std::fs::read_to_string(config).unwrap();
    std::fs::write(
        config,
        text.replacen(
            "[replication]\n",
            "[replication]\nanti_entropy_interval_ms = 300\n",
            1,
        ),
    )
    .unwrap();
}

/// Waits until `check` holds on `node`'s anti-entropy status for `peer`.
fn wait_aae(node: &Node, peer: &str, what: &str, check: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = status(node);
        let peers = s["replication"]["peers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if let Some(p) = peers.iter().find(|p| p["id"] == peer)
            && check(&p["anti_entropy"])
        {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {s}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn damage_is_found_at_restart_and_repaired_on_demand() {
    let dir = tempfile::tempdir().unwrap();
    let configs = cluster(dir.path(), 2);
    let n1 = Node::start(&configs[0]);
    let n2 = Node::start(&configs[1]);
    fill(&n1, &n2, 40);
    // Clean states agree.
    let o = edgerep(&["reconcile", "--config", configs[0].to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let session = &report["sessions"][0];
    assert_eq!(session["peer"], "node-2", "{report}");
    assert_eq!(session["agreed"], true, "{report}");
    assert_eq!(session["differing"], 0, "{report}");
    // The damage tool refuses a running node's store.
    let o = damage(&configs[1], "k7", false);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    assert!(stderr(&o).contains("stop the node first"), "{}", stderr(&o));
    n2.terminate();
    let o = damage(&configs[1], "k7", false);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = damage(&configs[1], "k8", true);
    assert!(o.status.success(), "{}", stderr(&o));
    let n2 = Node::start(&configs[1]);
    // The check at open runs beside the node's start: wait for its finding.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let s = loop {
        let s = status(&n2);
        if s["store_check_at_open"]["running"] != true {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "{s}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(s["store_check_at_open"]["damage_found"], true, "{s}");
    assert_eq!(s["store_check_at_open"]["entries_recorded"], 40, "{s}");
    assert_eq!(s["store_check_at_open"]["unreadable"], 1, "{s}");
    assert_eq!(get(&n2, "c", "k7").0, 404, "the damage is real");
    // A row that cannot be read: 409 naming its key, for a read and for a scan through it (it
    // was 500, and the scan's message did not say which key, so a client could not go on
    // after it).
    let (code, body) = get(&n2, "c", "k8");
    assert_eq!(code, 409, "{body}");
    assert!(
        body.contains("row_damaged") && body.contains(r#"key \"k8\""#),
        "{body}"
    );
    let mut r = common::agent().get(&n2.url("/v1/scan/c")).call().unwrap();
    let body = r.body_mut().read_to_string().unwrap();
    assert_eq!(r.status().as_u16(), 409, "{body}");
    assert!(body.contains(r#"key \"k8\""#), "{body}");
    // `status --verify` prints the status and fails while a row is unreadable: a script that
    // reads only the exit code does not take the store for sound.
    let o = edgerep(&[
        "status",
        "--verify",
        "--config",
        configs[1].to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    let printed: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(printed["verified"], false, "{printed}");
    assert!(
        stderr(&o).contains("the store's check failed"),
        "{}",
        stderr(&o)
    );
    // Bookkeeping says node-2 holds everything: replication alone never repairs it.
    assert_eq!(s["origins"]["node-1"], 40, "{s}");
    let o = edgerep(&[
        "reconcile",
        "--config",
        configs[0].to_str().unwrap(),
        "--peer",
        "node-2",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let session = &report["sessions"][0];
    assert_eq!(session["agreed"], false, "{report}");
    assert_eq!(session["differing"], 2, "{report}");
    assert!(session["round_trips"].as_u64().unwrap() <= 5, "{report}");
    // node-2 merged node-1's versions: drift (its have covered them), one key replaced.
    wait_aae(&n2, "node-1", "node-2 repaired", |a| {
        a["drift_total"] == 2
            && a["replaced_total"] == 1
            && a["collections"]["c"]["drift_total"] == 2
            && a["collections"]["c"]["repaired_in_total"] == 2
    });
    converge(&[&n1, &n2], Duration::from_secs(30));
    assert_eq!(get(&n2, "c", "k7").1, r#"{"v":7}"#);
    assert_eq!(get(&n2, "c", "k8").1, r#"{"v":8}"#);
    // Afterwards the states agree again.
    let o = edgerep(&["reconcile", "--config", configs[1].to_str().unwrap()]);
    let report: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(report["sessions"][0]["agreed"], true, "{report}");
}

#[test]
fn periodic_anti_entropy_repairs_a_node_nobody_asked_about() {
    let dir = tempfile::tempdir().unwrap();
    let configs = cluster(dir.path(), 2);
    comparing_often(&configs[0]);
    let n1 = Node::start(&configs[0]);
    let n2 = Node::start(&configs[1]);
    // More than 32 keys: a session then opens with the root's children, not its entries.
    fill(&n1, &n2, 40);
    wait_aae(&n1, "node-2", "a clean session agreed", |a| {
        a["agreed"] == true && a["sessions_total"].as_u64().unwrap_or(0) >= 1
    });
    // node-2 starts none, and says so too (before, its status said "not yet" for good).
    wait_aae(&n2, "node-1", "node-2 saw the states agree", |a| {
        a["agreed"] == true && a["last_agreed_at_ms"].as_u64().is_some()
    });
    n2.terminate();
    assert!(damage(&configs[1], "k3", false).status.success());
    let n2 = Node::start(&configs[1]);
    converge(&[&n1, &n2], Duration::from_secs(30));
    assert_eq!(get(&n2, "c", "k3").1, r#"{"v":3}"#);
    wait_aae(&n2, "node-1", "drift reported on node-2", |a| {
        a["drift_total"] == 1
    });
}

/// A node that takes writes all the time from its start is still compared with its peer, after
/// a few intervals. Before, a peer never compared with was compared only once replication was
/// idle for a second, so a node busy from its start never was, and its status said "not yet".
#[test]
fn a_node_busy_from_its_start_is_still_compared() {
    let dir = tempfile::tempdir().unwrap();
    let configs = cluster(dir.path(), 2);
    comparing_often(&configs[0]);
    let n1 = Node::start(&configs[0]);
    let n2 = Node::start(&configs[1]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, url) = (stop.clone(), n1.url("/v1/kv/c/"));
        std::thread::spawn(move || {
            let agent = common::agent();
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = agent
                    .put(&format!("{url}busy{}", i % 50))
                    .header("content-type", "application/json")
                    .send(format!(r#"{{"v":{i}}}"#))
                    .unwrap();
                assert!(r.status().is_success(), "{}", r.status());
                i += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            i
        })
    };
    wait_aae(&n1, "node-2", "compared while busy", |a| {
        a["sessions_total"].as_u64().unwrap_or(0) >= 1
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(writer.join().unwrap() > 10);
    converge(&[&n1, &n2], Duration::from_secs(30));
}

/// GET of a key: (body, the `x-edgerep-resolved-by` header).
fn read(node: &Node, key: &str) -> (String, String) {
    let mut r = common::agent()
        .get(&node.url(&format!("/v1/kv/tally/{key}")))
        .call()
        .unwrap();
    assert_eq!(r.status(), 200);
    let by = r
        .headers()
        .get("x-edgerep-resolved-by")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (r.body_mut().read_to_string().unwrap(), by)
}

fn disagreements(node: &Node) -> serde_json::Value {
    let mut r = common::agent()
        .get(&node.url("/v1/disagreements"))
        .call()
        .unwrap();
    serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap()
}

/// Two nodes holding the same two concurrent versions of `tally/k`, resolved differently:
/// node-1's resolver plugin picks the first (node-1's), node-2's runs past its deadline
/// (`node_2_deadline_ms`) and last-writer-wins stands in (node-2's, the later clock).
/// Periodic anti-entropy is off: sessions run when the test asks.
fn resolved_differently(dir: &Path, node_2_deadline_ms: u64) -> (Vec<PathBuf>, String, Node, Node) {
    let configs = cluster(dir, 2);
    let (wasm, sha) = built_plugin("slow-pick");
    // The same resolver build, fuel and params on both nodes; node-2's deadline for it is too
    // short for the call.
    for (config, deadline_ms) in [(&configs[0], 60_000), (&configs[1], node_2_deadline_ms)] {
        let mut text = std::fs::read_to_string(config).unwrap();
        text = text.replacen(
            "[replication]\n",
            "[replication]\nanti_entropy_interval_ms = 0\n",
            1,
        );
        text.push_str(&format!(
            r#"
[[collections.declared]]
name = "tally"
resolver = "slowpick"

[plugins.slowpick]
path = "{}"
sha256 = "{sha}"
fuel = 4000000000
deadline_ms = {deadline_ms}
"#,
            wasm.display()
        ));
        std::fs::write(config, text).unwrap();
    }
    // Concurrent writes of one key: node-1's first, node-2's later (the later clock wins
    // under last-writer-wins), each while the other node is down.
    let n1 = Node::start_with(&configs[0], &["--alone"]);
    put(&n1, "tally", "k", r#"{"from":"node-1"}"#);
    n1.terminate();
    let n2 = Node::start_with(&configs[1], &["--alone"]);
    put(&n2, "tally", "k", r#"{"from":"node-2"}"#);
    let n1 = Node::start(&configs[0]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while [&n1, &n2].iter().any(|n| {
        let s = status(n);
        s["origins"]["node-1"] != 1 || s["origins"]["node-2"] != 1
    }) {
        assert!(
            Instant::now() < deadline,
            "{}\n{}",
            status(&n1),
            status(&n2)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Each node resolved the key when its versions changed, and kept the answer.
    let (v1, by1) = read(&n1, "k");
    let (v2, by2) = read(&n2, "k");
    assert_eq!(
        (v1.as_str(), by1.as_str()),
        (r#"{"from":"node-1"}"#, "plugin:slowpick")
    );
    assert_eq!(
        (v2.as_str(), by2.as_str()),
        (r#"{"from":"node-2"}"#, "lww-fallback:slowpick")
    );
    (configs, sha, n1, n2)
}

/// One anti-entropy session started by node-1: its report.
fn reconcile(config: &Path) -> serde_json::Value {
    let o = edgerep(&["reconcile", "--config", config.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    report["sessions"][0].clone()
}

#[test]
fn a_resolver_that_failed_on_one_node_decides_there_when_run_again_with_no_disagreement() {
    let dir = tempfile::tempdir().unwrap();
    let (configs, _, n1, n2) = resolved_differently(dir.path(), 1);
    // node-2 restarts with time enough for the plugin (the failure was the machine's, not the
    // plugin's): the key keeps its stand-in until anti-entropy finds node-1 resolved it.
    n2.terminate();
    let text = std::fs::read_to_string(&configs[1]).unwrap();
    std::fs::write(
        &configs[1],
        text.replace("deadline_ms = 1\n", "deadline_ms = 60000\n"),
    )
    .unwrap();
    let n2 = Node::start(&configs[1]);
    assert_eq!(read(&n2, "k").1, "lww-fallback:slowpick");
    let session = reconcile(&configs[0]);
    assert_eq!(session["agreed"], false, "{session}");
    assert_eq!(session["disagreements"], 0, "{session}");
    // node-2 ran its plugin again, which decided as node-1's did: both hold the plugin's answer.
    converge(&[&n1, &n2], Duration::from_secs(30));
    for n in [&n1, &n2] {
        assert_eq!(
            read(n, "k"),
            (
                r#"{"from":"node-1"}"#.to_owned(),
                "plugin:slowpick".to_owned()
            )
        );
        assert_eq!(disagreements(n)["disagreements"], serde_json::json!([]));
        assert_eq!(status(n)["disagreements"], 0);
    }
    wait_aae(&n2, "node-1", "resolved again on node-2", |a| {
        a["resolved_again_total"] == 1 && a["collections"]["tally"]["resolved_again_total"] == 1
    });
    assert_eq!(reconcile(&configs[0])["agreed"], true);
}

#[test]
fn nodes_that_resolve_the_same_versions_differently_settle_on_the_default_and_record_it() {
    let dir = tempfile::tempdir().unwrap();
    let (configs, sha, n1, n2) = resolved_differently(dir.path(), 1);
    // The states differ (bookkeeping agrees: both hold every event).
    assert_ne!(status(&n1)["digest"], status(&n2)["digest"]);
    // node-2's plugin fails again when run again: node-2 settles on the default. node-1 keeps
    // its plugin's answer at first (node-2's was the stand-in, which a plugin run again may
    // replace), and follows at the next session, when node-2's is the default.
    let session = reconcile(&configs[0]);
    assert_eq!(session["agreed"], false, "{session}");
    assert_eq!(session["disagreements"], 0, "{session}");
    wait_aae(&n2, "node-1", "node-2 settled", |a| {
        a["disagreements_total"] == 1
    });
    assert_eq!(read(&n1, "k").1, "plugin:slowpick");
    let session = reconcile(&configs[0]);
    assert_eq!(session["agreed"], false, "{session}");
    assert_eq!(session["disagreements"], 1, "{session}");
    // Both settle on the deterministic default and agree.
    converge(&[&n1, &n2], Duration::from_secs(30));
    for n in [&n1, &n2] {
        assert_eq!(
            read(n, "k"),
            (
                r#"{"from":"node-2"}"#.to_owned(),
                "lww-after-disagreement".to_owned()
            )
        );
        let d = disagreements(n);
        let list = d["disagreements"].as_array().unwrap();
        assert_eq!(list.len(), 1, "{d}");
        assert_eq!(list[0]["collection"], "tally", "{d}");
        assert_eq!(list[0]["key"], "k", "{d}");
        assert_eq!(list[0]["here"]["resolver_sha256"], sha.as_str(), "{d}");
        assert_eq!(list[0]["on_peer"]["resolver_sha256"], sha.as_str(), "{d}");
        assert_ne!(
            list[0]["here"]["resolution_blake3"], list[0]["on_peer"]["resolution_blake3"],
            "{d}"
        );
        assert_eq!(status(n)["disagreements"], 1);
    }
    assert_eq!(
        disagreements(&n1)["disagreements"][0]["here"]["resolved_by"],
        "plugin:slowpick"
    );
    assert_eq!(
        disagreements(&n2)["disagreements"][0]["here"]["resolved_by"],
        "lww-fallback:slowpick"
    );
    wait_aae(&n1, "node-2", "disagreement counted", |a| {
        a["disagreements_total"] == 1 && a["collections"]["tally"]["disagreements_total"] == 1
    });
    // A further session finds the states equal.
    assert_eq!(reconcile(&configs[0])["agreed"], true);
}

#[test]
fn nodes_whose_resolvers_differ_pause_replication_with_the_reason_in_status() {
    let dir = tempfile::tempdir().unwrap();
    let configs = cluster(dir.path(), 2);
    let (wasm, sha) = built_plugin("merge-counter");
    let with_fuel = |fuel: u64| {
        format!(
            r#"
[[collections.declared]]
name = "tally"
resolver = "counter"

[plugins.counter]
path = "{}"
sha256 = "{sha}"
fuel = {fuel}
"#,
            wasm.display()
        )
    };
    let base: Vec<String> = configs
        .iter()
        .map(|c| std::fs::read_to_string(c).unwrap())
        .collect();
    // The same resolver build with another fuel budget on node-2: it could resolve the same
    // versions otherwise (one runs out of fuel where the other does not).
    std::fs::write(&configs[0], format!("{}{}", base[0], with_fuel(10_000_000))).unwrap();
    std::fs::write(&configs[1], format!("{}{}", base[1], with_fuel(20_000_000))).unwrap();
    // Neither can confirm its own history with the other: both start alone.
    let n1 = Node::start_with(&configs[0], &["--alone"]);
    let n2 = Node::start_with(&configs[1], &["--alone"]);
    put(&n1, "tally", "k", r#"{"node-1":1}"#);
    let deadline = Instant::now() + Duration::from_secs(20);
    let why = loop {
        let s = status(&n1);
        let peer = &s["replication"]["peers"][0];
        if let Some(e) = peer["last_error"].as_str()
            && e.contains("resolvers differ")
        {
            break e.to_owned();
        }
        assert!(Instant::now() < deadline, "{s}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(why.contains("plugin counter has settings"), "{why}");
    assert!(
        why.contains("fuel=10000000") && why.contains("fuel=20000000"),
        "{why}"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        status(&n2)["origins"]["node-1"].as_u64().unwrap_or(0) == 0,
        "nothing replicates while the resolvers differ"
    );
    // node-2 gets node-1's config for the collection: replication resumes.
    n2.terminate();
    std::fs::write(&configs[1], format!("{}{}", base[1], with_fuel(10_000_000))).unwrap();
    let n2 = Node::start(&configs[1]);
    converge(&[&n1, &n2], Duration::from_secs(30));
    assert_eq!(get(&n2, "tally", "k").1, r#"{"node-1":1}"#);
}

#[test]
fn a_transform_on_apply_past_its_deadline_halts_instead_of_dead_lettering() {
    let dir = tempfile::tempdir().unwrap();
    let configs = cluster(dir.path(), 2);
    let (wasm, sha) = built_plugin("spin");
    // node-2 runs a transform on apply that loops; its fuel would last seconds, its deadline is
    // 5 ms: the call ends on the deadline, which depends on the machine. Its policy says
    // dead-letter, but setting aside here an event another node applied would make the
    // states part: replication halts instead, and nothing is dead-lettered.
    let mut text = std::fs::read_to_string(&configs[1]).unwrap();
    text = text.replacen("[retention]\n", "[retention]\ncompact = false\n", 1);
    text.push_str(&format!(
        r#"
[[collections.declared]]
name = "slow"
transforms_on_apply = ["spin"]

[plugins.spin]
path = "{}"
sha256 = "{sha}"
fuel = 4000000000
deadline_ms = 5
on_failure = "dead-letter"
"#,
        wasm.display()
    ));
    std::fs::write(&configs[1], text).unwrap();
    let n1 = Node::start(&configs[0]);
    let n2 = Node::start(&configs[1]);
    put(&n1, "slow", "k", r#"{"a":1}"#);
    let deadline = Instant::now() + Duration::from_secs(30);
    let st = loop {
        let st = status(&n2);
        if st["replication"]["halted"].is_string() {
            break st;
        }
        assert!(Instant::now() < deadline, "{st}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let reason = st["replication"]["halted"].as_str().unwrap();
    assert!(reason.contains("ran past its deadline"), "{reason}");
    assert!(reason.contains("each of 3 tries"), "{reason}");
    assert_eq!(st["dead_letters"], 0, "{st}");
    assert_eq!(st["origins"]["node-1"].as_u64().unwrap_or(0), 0, "{st}");
}

#[test]
fn a_collection_transformed_on_apply_is_compared_on_its_versions_and_repaired_through_the_transform()
 {
    let dir = tempfile::tempdir().unwrap();
    let configs = cluster(dir.path(), 2);
    let (redact, sha) = built_plugin("redact");
    // node-2 redacts the cards it receives; node-1 keeps them whole. Both compare the
    // collection on the versions they hold.
    let mut one = std::fs::read_to_string(&configs[0]).unwrap();
    one = one.replacen(
        "[replication]\n",
        "[replication]\nanti_entropy_interval_ms = 0\n",
        1,
    );
    one.push_str("\n[[collections.declared]]\nname = \"cards\"\ncompare = \"versions\"\n");
    std::fs::write(&configs[0], one).unwrap();
    let mut two = std::fs::read_to_string(&configs[1]).unwrap();
    two = two.replacen(
        "[replication]\n",
        "[replication]\nanti_entropy_interval_ms = 0\n",
        1,
    );
    two = two.replacen("[retention]\n", "[retention]\ncompact = false\n", 1);
    two.push_str(&format!(
        "\n[[collections.declared]]\nname = \"cards\"\ntransforms_on_apply = [\"redact\"]\n\n[plugins.redact]\npath = \"{}\"\nsha256 = \"{sha}\"\nparams = {{ remove = \"card\" }}\n",
        redact.display()
    ));
    std::fs::write(&configs[1], two).unwrap();
    let n1 = Node::start(&configs[0]);
    let n2 = Node::start(&configs[1]);
    for i in 0..5 {
        put(
            &n1,
            "cards",
            &format!("c-{i}"),
            &format!(r#"{{"name":"n{i}","card":"411{i}"}}"#),
        );
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while status(&n2)["origins"]["node-1"].as_u64().unwrap_or(0) < 5 {
        assert!(Instant::now() < deadline, "{}", status(&n2));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(get(&n2, "cards", "c-1").1, r#"{"name":"n1"}"#);
    // The values differ by design; the versions agree.
    let reconcile = |config: &Path| -> serde_json::Value {
        let o = edgerep(&["reconcile", "--config", config.to_str().unwrap()]);
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_str(&stdout(&o)).unwrap()
    };
    let report = reconcile(&configs[0]);
    assert_eq!(report["sessions"][0]["agreed"], true, "{report}");
    // node-2's own write is not redacted: an origin's own writes never pass its transforms on
    // apply.
    put(&n2, "cards", "own", r#"{"name":"own","card":"4999"}"#);
    let deadline = Instant::now() + Duration::from_secs(30);
    while status(&n1)["origins"]["node-2"].as_u64().unwrap_or(0) < 1 {
        assert!(Instant::now() < deadline, "{}", status(&n1));
        std::thread::sleep(Duration::from_millis(50));
    }
    // A key lost on node-2 behind its bookkeeping comes back redacted; its own key comes back
    // as it wrote it.
    n2.terminate();
    for key in ["c-3", "own"] {
        let o = common::damage(&configs[1], "cards", key, false);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let n2 = Node::start(&configs[1]);
    assert_eq!(get(&n2, "cards", "c-3").0, 404, "the damage is real");
    assert_eq!(get(&n2, "cards", "own").0, 404, "the damage is real");
    let report = reconcile(&configs[0]);
    assert_eq!(report["sessions"][0]["agreed"], false, "{report}");
    wait_aae(&n2, "node-1", "node-2 repaired cards", |a| {
        a["collections"]["cards"]["drift_total"] == 2
    });
    assert_eq!(
        get(&n2, "cards", "own").1,
        r#"{"card":"4999","name":"own"}"#,
        "its own write, not through its transform"
    );
    assert_eq!(
        get(&n2, "cards", "c-3").1,
        r#"{"name":"n3"}"#,
        "through the transform"
    );
    assert_eq!(get(&n1, "cards", "c-3").1, r#"{"card":"4113","name":"n3"}"#);
    let report = reconcile(&configs[0]);
    assert_eq!(
        report["sessions"][0]["agreed"],
        true,
        "{report}\n{}\n-----\n{}",
        std::fs::read_to_string(&n1.log).unwrap_or_default(),
        std::fs::read_to_string(&n2.log).unwrap_or_default()
    );
    assert_eq!(status(&n2)["verified"], true);
}

/// A careless operator changes the fuel of the resolver deciding a collection and restarts the
/// node, where a reload would have refused the change: the node refuses to start (exit 2),
/// naming the collection and the way to change a decider (an upgrade), since the versions it
/// holds were decided one way and those still to come would be decided another. With the
/// former settings back it starts. (A collection the store holds no keys of may change: see
/// `nodes_whose_resolvers_differ_pause_replication_with_the_reason_in_status`.)
#[test]
fn a_decider_changed_in_place_across_a_restart_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let configs = cluster(dir.path(), 2);
    let (wasm, sha) = built_plugin("merge-counter");
    let base = std::fs::read_to_string(&configs[0]).unwrap();
    let with_fuel = |fuel: u64| {
        format!(
            "{base}\n[[collections.declared]]\nname = \"tally\"\nresolver = \"counter\"\n\n[plugins.counter]\npath = \"{}\"\nsha256 = \"{sha}\"\nfuel = {fuel}\n",
            wasm.display()
        )
    };
    std::fs::write(&configs[0], with_fuel(10_000_000)).unwrap();
    let n1 = Node::start_with(&configs[0], &["--alone"]);
    put(&n1, "tally", "k", r#"{"node-1":1}"#);
    n1.terminate();
    // In the same edit, a limit raised: the refused start must not record it (else the
    // file put back would be refused as lowering it).
    let raised =
        with_fuel(20_000_000).replacen("[limits]\n", "[limits]\nmax_value_bytes = 1048576\n", 1);
    assert!(raised.contains("max_value_bytes = 1048576"));
    std::fs::write(&configs[0], raised).unwrap();
    let (code, err) = common::refused_to_start(
        &["run", "--alone", "--config", configs[0].to_str().unwrap()],
        "node-1 started with its resolver's fuel changed in place",
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("collection \\\"tally\\\": a plugin deciding it changed")
            || err.contains("collection \"tally\": a plugin deciding it changed"),
        "{err}"
    );
    assert!(err.contains("[[collections.declared.upgrades]]"), "{err}");
    std::fs::write(&configs[0], with_fuel(10_000_000)).unwrap();
    let n1 = Node::start_with(&configs[0], &["--alone"]);
    assert_eq!(get(&n1, "tally", "k").1, r#"{"node-1":1}"#);
    // The way to change it: an upgrade appended, naming a new plugin, is taken at a restart.
    n1.terminate();
    let upgraded = with_fuel(10_000_000).replace(
        "\n[plugins.counter]",
        &format!(
            "\n[[collections.declared.upgrades]]\neffective_from = 1700000000000\nresolver = \"counter2\"\n\n[plugins.counter2]\npath = \"{}\"\nsha256 = \"{sha}\"\nfuel = 20000000\n\n[plugins.counter]",
            wasm.display()
        ),
    );
    assert!(upgraded.contains("counter2"));
    std::fs::write(&configs[0], &upgraded).unwrap();
    let n1 = Node::start_with(&configs[0], &["--alone"]);
    assert_eq!(get(&n1, "tally", "k").1, r#"{"node-1":1}"#);
    // Its keys are re-resolved at that start (as a reload would), once: the record is saved
    // after, so the next start does not do it again.
    let said = "keys re-resolved at start for upgrades added since the last start";
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&n1.log)
        .unwrap()
        .contains("re-resolution at start done and recorded")
    {
        assert!(Instant::now() < deadline, "not re-resolved at start");
        std::thread::sleep(Duration::from_millis(50));
    }
    n1.terminate();
    let n1 = Node::start_with(&configs[0], &["--alone"]);
    assert_eq!(get(&n1, "tally", "k").1, r#"{"node-1":1}"#);
    let log = std::fs::read_to_string(&n1.log).unwrap();
    assert_eq!(log.matches(said).count(), 1, "{log}");
    // Left out of the config while undeclared collections are taken: it would be decided by
    // last writer wins from then on, a change in place like any other, so the start is refused
    // (once, it started and took the collection undeclared).
    n1.terminate();
    assert!(base.contains("accept_undeclared = true"), "{base}");
    std::fs::write(&configs[0], &base).unwrap();
    let (code, err) = common::refused_to_start(
        &["run", "--alone", "--config", configs[0].to_str().unwrap()],
        "node-1 started with a decided collection left out of its config",
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("is no longer declared"), "{err}");
    // Declared again with its plugin's fuel changed: still refused (the refused start recorded
    // nothing).
    let changed = upgraded.replace("fuel = 10000000", "fuel = 30000000");
    assert_ne!(changed, upgraded);
    std::fs::write(&configs[0], &changed).unwrap();
    let (code, err) = common::refused_to_start(
        &["run", "--alone", "--config", configs[0].to_str().unwrap()],
        "node-1 started with its resolver's fuel changed",
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("a plugin deciding it changed"), "{err}");
    std::fs::write(&configs[0], &upgraded).unwrap();
    let n1 = Node::start_with(&configs[0], &["--alone"]);
    assert_eq!(get(&n1, "tally", "k").1, r#"{"node-1":1}"#);
    // Where undeclared collections are refused, a collection left out stays as it is (a start
    // warns of it) and the store's record keeps what decided it: declared again by a reload,
    // unchanged, it is taken; as last writer wins, refused (a reload judges by the store's
    // record, as a start does).
    let closed =
        |text: &str| text.replacen("accept_undeclared = true", "accept_undeclared = false", 1);
    let reload = || common::edgerep(&["reload", "--config", configs[0].to_str().unwrap()]);
    n1.terminate();
    std::fs::write(&configs[0], closed(&upgraded)).unwrap();
    Node::start_with(&configs[0], &["--alone"]).terminate();
    std::fs::write(&configs[0], closed(&base)).unwrap();
    let n1 = Node::start_with(&configs[0], &["--alone"]);
    assert!(
        std::fs::read_to_string(&n1.log)
            .unwrap()
            .contains("is no longer declared"),
        "the start warns of the collection left out"
    );
    std::fs::write(&configs[0], closed(&upgraded)).unwrap();
    let o = reload();
    assert!(o.status.success(), "{}", common::stderr(&o));
    n1.terminate();
    std::fs::write(&configs[0], closed(&base)).unwrap();
    let _n1 = Node::start_with(&configs[0], &["--alone"]);
    std::fs::write(
        &configs[0],
        format!(
            "{}\n[[collections.declared]]\nname = \"tally\"\n",
            closed(&base)
        ),
    )
    .unwrap();
    let o = reload();
    assert!(!o.status.success());
    let said = format!("{}{}", common::stdout(&o), common::stderr(&o));
    assert!(
        said.contains("\"tally\"") && said.contains("holds its keys"),
        "{said}"
    );
}

/// A transform on apply that halts on one origin's event halts that collection only: the
/// origin's events wait behind it, and another origin's writes still replicate. (Once, the
/// halt closed every link: one event that any writer of one collection could send stopped all
/// replication on the node, again after every restart.)
#[test]
fn a_halted_collection_holds_back_only_the_origin_behind_it() {
    let dir = tempfile::tempdir().unwrap();
    let configs = cluster(dir.path(), 3);
    let (wasm, sha) = built_plugin("spin");
    let mut text = std::fs::read_to_string(&configs[1]).unwrap();
    text = text.replacen("[retention]\n", "[retention]\ncompact = false\n", 1);
    text.push_str(&format!(
        "\n[[collections.declared]]\nname = \"slow\"\ntransforms_on_apply = [\"spin\"]\n\n[plugins.spin]\npath = \"{}\"\nsha256 = \"{sha}\"\nfuel = 4000000000\ndeadline_ms = 5\n",
        wasm.display()
    ));
    std::fs::write(&configs[1], text).unwrap();
    let n1 = Node::start(&configs[0]);
    let n2 = Node::start(&configs[1]);
    let n3 = Node::start(&configs[2]);
    put(&n1, "slow", "k", r#"{"a":1}"#);
    put(&n1, "c", "behind", r#"{"a":2}"#);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !status(&n2)["replication"]["halted"].is_string() {
        assert!(Instant::now() < deadline, "{}", status(&n2));
        std::thread::sleep(Duration::from_millis(100));
    }
    put(&n3, "c", "other", r#"{"a":3}"#);
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(&n2, "c", "other").0 != 200 {
        assert!(
            Instant::now() < deadline,
            "node-3's write did not reach node-2 while collection slow is halted: {}",
            status(&n2)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let st = status(&n2);
    assert_eq!(st["origins"]["node-1"].as_u64().unwrap_or(0), 0, "{st}");
    assert_eq!(get(&n2, "c", "behind").0, 404, "node-1's later event waits");
    let halted = st["replication"]["halted"].as_str().unwrap();
    assert!(halted.contains("collection \"slow\""), "{halted}");
    assert_eq!(st["dead_letters"], 0, "{st}");
}

/// A transform on apply may change an event's value only: `enrich` also sets a metadata entry,
/// which the state would have dropped unseen. The change is refused as the plugin's bad output
/// and its failure policy (dead letter) applies; an event it leaves unchanged is applied.
#[test]
fn a_transform_on_apply_changing_meta_is_refused_as_bad_output() {
    let dir = tempfile::tempdir().unwrap();
    let configs = cluster(dir.path(), 2);
    let (wasm, sha) = built_plugin("enrich");
    let mut text = std::fs::read_to_string(&configs[1]).unwrap();
    text = text.replacen("[retention]\n", "[retention]\ncompact = false\n", 1);
    text.push_str(&format!(
        "\n[[collections.declared]]\nname = \"temps\"\ntransforms_on_apply = [\"enrich\"]\n\n[plugins.enrich]\npath = \"{}\"\nsha256 = \"{sha}\"\n",
        wasm.display()
    ));
    std::fs::write(&configs[1], text).unwrap();
    let n1 = Node::start(&configs[0]);
    let n2 = Node::start(&configs[1]);
    put(&n1, "temps", "plain", r#"{"note":"no celsius field"}"#);
    put(&n1, "temps", "hot", r#"{"celsius":30}"#);
    let deadline = Instant::now() + Duration::from_secs(30);
    let st = loop {
        let st = status(&n2);
        if st["origins"]["node-1"] == 2 {
            break st;
        }
        assert!(Instant::now() < deadline, "{st}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(st["dead_letters"], 1, "{st}");
    assert_eq!(get(&n2, "temps", "plain").0, 200);
    assert_eq!(get(&n2, "temps", "hot").0, 404, "set aside, not applied");
    let o = edgerep(&[
        "dead-letters",
        "list",
        "--config",
        configs[1].to_str().unwrap(),
    ]);
    let listed = stdout(&o);
    assert!(
        listed.contains("may change only the value, not the schema or meta"),
        "{listed}{}",
        stderr(&o)
    );
}

/// Asked to compare with a peer that is not connected (stopped here), `edgerep reconcile` fails
/// and says so, rather than answering with no sessions as if there were nothing to repair; once
/// the peer is back, the same command compares.
#[test]
fn reconcile_with_a_peer_not_connected_says_nothing_was_compared() {
    let dir = tempfile::tempdir().unwrap();
    let configs = cluster(dir.path(), 2);
    let n1 = Node::start(&configs[0]);
    let config = configs[0].to_str().unwrap();
    for args in [
        vec!["reconcile", "--config", config, "--peer", "node-2"],
        vec!["reconcile", "--config", config],
    ] {
        let o = edgerep(&args);
        assert!(!o.status.success(), "{args:?}: {}", stdout(&o));
        let err = stderr(&o);
        assert!(
            err.contains("409")
                && (err.contains("node-2 is not connected")
                    || err.contains("no peer is connected"))
                && err.contains("nothing was compared"),
            "{args:?}: {err}"
        );
    }
    let n2 = Node::start(&configs[1]);
    fill(&n1, &n2, 3);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = edgerep(&["reconcile", "--config", config, "--peer", "node-2"]);
        if o.status.success() {
            let report: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
            assert_eq!(report["sessions"][0]["peer"], "node-2", "{report}");
            assert_eq!(report["sessions"][0]["agreed"], true, "{report}");
            break;
        }
        // Connected, but the handshake may still be under way.
        assert!(stderr(&o).contains("409"), "{}", stderr(&o));
        assert!(Instant::now() < deadline, "{}", stderr(&o));
        std::thread::sleep(Duration::from_millis(100));
    }
}
