//! Anti-entropy with real processes: a node's store damaged behind its bookkeeping's back (a
//! key removed, another made unreadable) while it is stopped; after its restart the damage is
//! found, repaired from its peer, and reported as drift, on demand and periodically.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Node, cluster, converge, edgerep, get, put, status, stderr, stdout};

/// Writes `n` keys on `node` and waits until both nodes hold them.
fn fill(n1: &Node, n2: &Node, n: usize) {
    for i in 0..n {
        put(n1, "c", &format!("k{i}"), &format!(r#"{{"v":{i}}}"#));
    }
    converge(&[n1, n2], Duration::from_secs(30));
}

fn damage(config: &Path, key: &str, flip: bool) -> std::process::Output {
    let mut args = vec![
        "debug",
        "damage",
        "--config",
        config.to_str().unwrap(),
        "--collection",
        "c",
        "--key",
        key,
    ];
    if flip {
        args.push("--flip-byte");
    }
    edgerep(&args)
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
    let s = status(&n2);
    assert_eq!(s["store_check_at_open"]["damage_found"], true, "{s}");
    assert_eq!(s["store_check_at_open"]["entries_recorded"], 40, "{s}");
    assert_eq!(s["store_check_at_open"]["unreadable"], 1, "{s}");
    assert_eq!(get(&n2, "c", "k7").0, 404, "the damage is real");
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
        a["drift_total"] == 2 && a["replaced_total"] == 1
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
    // node-1 (the lower id) starts a session every 300-375 ms.
    let text = std::fs::read_to_string(&configs[0]).unwrap();
    std::fs::write(
        &configs[0],
        text.replacen(
            "[replication]\n",
            "[replication]\nanti_entropy_interval_ms = 300\n",
            1,
        ),
    )
    .unwrap();
    let n1 = Node::start(&configs[0]);
    let n2 = Node::start(&configs[1]);
    fill(&n1, &n2, 30);
    wait_aae(&n1, "node-2", "a clean session agreed", |a| {
        a["agreed"] == true && a["sessions_total"].as_u64().unwrap_or(0) >= 1
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
