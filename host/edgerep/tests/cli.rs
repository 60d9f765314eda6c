//! The command-line contract, run against the real binary: init, run, put/get/del/scan/watch,
//! status, config check, exit codes, demo and the benchmark's output format.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Node, agent, edgerep, init, send_signal, stderr, stdout};

/// Runs `edgerep ARGS` until it exits `code` (a node taking in a change), at most 20 s: its
/// output then. Panics with the last stderr past that.
fn exits_within(args: &[&str], code: i32) -> std::process::Output {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let o = edgerep(args);
        if o.status.code() == Some(code) {
            return o;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "`edgerep {}` did not exit {code} within 20 s: {}",
            args.join(" "),
            stderr(&o)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn verbs_against_a_running_node() {
    let dir = tempfile::tempdir().unwrap();
    let config = init(dir.path(), "cli-1");
    let c = config.to_str().unwrap();
    let node = Node::start(&config);

    let o = edgerep(&[
        "put",
        "--config",
        c,
        "orders",
        "o-1",
        r#"{"item":"bolts","qty":40}"#,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains(r#""seq":1"#), "{}", stdout(&o));
    edgerep(&["put", "--config", c, "orders", "o-2", "[1,2,3]"]);
    edgerep(&["put", "--config", c, "other", "x", "true"]);

    let o = edgerep(&["get", "--config", c, "orders", "o-1"]);
    assert_eq!(o.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v, serde_json::json!({"item": "bolts", "qty": 40}));

    let o = edgerep(&["get", "--config", c, "orders", "missing"]);
    assert_eq!(o.status.code(), Some(1), "absent key exits 1");
    assert!(stderr(&o).contains("not found"));

    let o = edgerep(&["scan", "--config", c, "orders"]);
    let lines: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["key"], "o-1");
    assert_eq!(lines[1]["value"], serde_json::json!([1, 2, 3]));
    let o = edgerep(&["scan", "--config", c, "orders", "--prefix", "o-2"]);
    assert_eq!(stdout(&o).lines().count(), 1);

    let o = edgerep(&["del", "--config", c, "orders", "o-1"]);
    assert!(o.status.success());
    assert_eq!(
        edgerep(&["get", "--config", c, "orders", "o-1"])
            .status
            .code(),
        Some(1)
    );

    let o = edgerep(&["put", "--config", c, "orders", "o-3", "{broken"]);
    assert_eq!(o.status.code(), Some(3), "refused input exits 3");
    assert!(stderr(&o).contains("malformed JSON"), "{}", stderr(&o));
    // Requests HTTP cannot carry (a path far over any key limit, a control character in a
    // header: a key file with CRLF endings) are refused (3), nothing sent, not called a broken
    // connection whose outcome is unknown (4: retry).
    let long = "k".repeat(70_000);
    let cr = ["--idempotency-key", "key-1\r"];
    for (what, args) in [
        (
            "a long key",
            vec!["put", "--config", c, "orders", &long, "1"],
        ),
        (
            "a CR in a header",
            [&["put", "--config", c, "orders", "o-9", "1"][..], &cr].concat(),
        ),
    ] {
        let o = edgerep(&args);
        assert_eq!(o.status.code(), Some(3), "{what}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("nothing was sent"),
            "{what}: {}",
            stderr(&o)
        );
    }

    let o = edgerep(&["watch", "--config", c, "--no-follow"]);
    assert_eq!(stdout(&o).lines().count(), 4, "3 puts and 1 delete");
    let o = edgerep(&[
        "watch",
        "--config",
        c,
        "--after",
        "2",
        "--no-follow",
        "--collection",
        "orders",
    ]);
    let events: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["op"], "delete");
    assert_eq!(events[0]["position"], 4);

    // A stored value is printed as data: one shaped like a node's answer about a dropped
    // write is not read as one (get printed "note: 3 items" for it).
    let o = edgerep(&[
        "put",
        "--config",
        c,
        "other",
        "d",
        r#"{"dropped":"3 items"}"#,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = edgerep(&["get", "--config", c, "other", "d"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).contains("3 items"), "{}", stdout(&o));
    assert!(!stderr(&o).contains("note:"), "{}", stderr(&o));

    let o = edgerep(&["status", "--config", c, "--verify"]);
    let s: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(s["node_id"], "cli-1");
    assert_eq!(s["digest"].as_str().unwrap().len(), 64);
    assert_eq!(s["verified"], true);

    // A listing piped into a reader that stops early (`| head -1`) ends quietly with exit 0,
    // not with a panic on the broken pipe: 3,000 lines are more than a pipe's buffer holds.
    common::batch(
        &node,
        "bulk",
        (0..3000).map(|i| {
            (
                format!("b-{i:05}"),
                format!(r#"{{"n":{i},"pad":"{}"}}"#, "x".repeat(40)),
            )
        }),
    );
    for args in [
        vec!["watch", "--config", c, "--no-follow"],
        vec!["scan", "--config", c, "bulk"],
    ] {
        ends_quietly_when_its_reader_goes(&args);
    }

    // Clean stop on SIGTERM, exit status 0, and a log on stderr.
    let pid = node.child.id() as i32;
    send_signal(pid, "TERM");
    let mut node = node;
    let status = node.child.wait().unwrap();
    assert!(
        status.success(),
        "SIGTERM should stop the node cleanly: {status:?}"
    );
    let log = std::fs::read_to_string(&node.log).unwrap();
    assert!(log.contains("stopped"), "log: {log}");

    // The node is gone: client verbs exit 4.
    assert_eq!(
        edgerep(&["get", "--config", c, "orders", "o-2"])
            .status
            .code(),
        Some(4)
    );
}

#[test]
fn digest_matches_for_empty_nodes_and_differs_after_a_write() {
    let dir = tempfile::tempdir().unwrap();
    let a = init(&dir.path().join("a"), "same-node");
    let b = init(&dir.path().join("b"), "same-node");
    let (na, nb) = (Node::start(&a), Node::start(&b));
    let digest = |cfg: &std::path::Path| -> String {
        let o = edgerep(&["status", "--config", cfg.to_str().unwrap()]);
        let s: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        s["digest"].as_str().unwrap().to_owned()
    };
    // Digests cover the events (origin, sequence, clock), so equal state means equal events:
    // an empty node equals an empty node, and a write makes them differ.
    assert_eq!(digest(&a), digest(&b));
    edgerep(&["put", "--config", a.to_str().unwrap(), "c", "k", "1"]);
    assert_ne!(digest(&a), digest(&b));
    drop((na, nb));
}

#[test]
fn config_check_names_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = init(dir.path(), "cfg-1");
    let o = edgerep(&["config", "check", config.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("ok"));

    let bad = dir.path().join("bad.toml");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("[limits]", "[limits]\nmax_keys = 3");
    let text = if text.contains("max_keys") {
        text
    } else {
        format!("{text}\n[limits]\nmax_keys = 3\n")
    };
    std::fs::write(&bad, text).unwrap();
    let o = edgerep(&["config", "check", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(err.contains("bad.toml"), "{err}");
    assert!(err.contains("max_keys"), "{err}");

    let o = edgerep(&["run", "--config", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "run refuses a broken config");
    assert!(stderr(&o).contains("max_keys"));
}

/// `edgerep init` listens for replication on loopback. A peer added at another machine's
/// address could then neither be reached nor reach this node (a loopback socket sends only to
/// this machine's addresses), the error blamed the peer, and local writes waited for it for
/// good; `config check` said ok. Now `config check` and `run` refuse it (exit 2), warn for a
/// name, and take this machine's own addresses.
#[test]
fn a_loopback_replication_listener_with_a_peer_on_another_machine_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let configs = common::cluster(dir.path(), 2);
    let text = std::fs::read_to_string(&configs[0]).unwrap();
    let at = |address: &str| {
        let mut doc: toml_edit::DocumentMut = text.parse().unwrap();
        doc["peers"][0]["address"] = toml_edit::value(address);
        std::fs::write(&configs[0], doc.to_string()).unwrap();
        configs[0].to_str().unwrap()
    };
    // TEST-NET-1: never an address of this machine.
    let c = at("192.0.2.7:7071");
    for args in [&["config", "check", c][..], &["run", "--config", c][..]] {
        let o = edgerep(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("is a loopback address, but peer \"node-2\" is at 192.0.2.7"),
            "{}",
            stderr(&o)
        );
    }
    let o = edgerep(&["config", "check", at("node-2.invalid:7071")]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("reachable only if that name"),
        "{}",
        stderr(&o)
    );
    for near in ["127.0.0.2:7071", "[::1]:7071", "localhost:7071"] {
        let o = edgerep(&["config", "check", at(near)]);
        assert_eq!(o.status.code(), Some(0), "{near}: {}", stderr(&o));
    }
}

/// Writes `content` to a token file beside `config` and names it in `[api]`; returns its path.
fn with_token_file(config: &std::path::Path, content: &str) -> std::path::PathBuf {
    let token = config.with_file_name("token");
    std::fs::write(&token, content).unwrap();
    let text = std::fs::read_to_string(config).unwrap().replacen(
        "[api]\n",
        &format!("[api]\ntoken_file = '{}'\n", token.display()),
        1,
    );
    assert!(text.contains("token_file"), "{text}");
    std::fs::write(config, text).unwrap();
    token
}

/// `config check` refuses a token file `run` would refuse (under 16 characters): it used to
/// pass it, and the node then failed to start.
#[test]
fn config_check_refuses_a_token_run_would_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let config = init(dir.path(), "cfg-t");
    let token = with_token_file(&config, "short\n");
    let o = edgerep(&["config", "check", config.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    assert!(stderr(&o).contains("at least 16"), "{}", stderr(&o));
    std::fs::write(&token, "a-token-of-enough-length\n").unwrap();
    // A token others may read passes, with a warning naming the file and the fix.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = edgerep(&["config", "check", config.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("api.token_file")
            && stderr(&o).contains("mode 644")
            && stderr(&o).contains("chmod 600"),
        "{}",
        stderr(&o)
    );
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let o = edgerep(&["config", "check", config.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!stderr(&o).contains("warning"), "{}", stderr(&o));
}

/// A `node.data_dir` that is a file (or under one) is the config's fault: `config check`
/// refuses it, and `run` exits 2 (not 4, "a retry may pass", on which a supervisor restarts it
/// for ever), both naming `node.data_dir`.
#[test]
fn a_data_dir_that_cannot_be_one_is_refused_by_check_and_run_as_config() {
    let dir = tempfile::tempdir().unwrap();
    let config = init(dir.path(), "cfg-d");
    let file = dir.path().join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let text = std::fs::read_to_string(&config).unwrap();
    for data_dir in [file.clone(), file.join("data")] {
        let changed: String = text
            .lines()
            .map(|l| {
                if l.trim_start().starts_with("data_dir") {
                    format!("data_dir = {:?}\n", data_dir.to_str().unwrap())
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        assert_ne!(changed, text, "the config names a data_dir");
        std::fs::write(&config, changed).unwrap();
        let o = edgerep(&["config", "check", config.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
        assert!(
            stderr(&o).contains("node.data_dir") && stderr(&o).contains("is not a directory"),
            "{}",
            stderr(&o)
        );
        let o = edgerep(&["run", "--config", config.to_str().unwrap(), "--alone"]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains("node.data_dir"), "{}", stderr(&o));
    }
}

#[test]
fn init_refuses_to_overwrite_and_help_works() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path(), "n1");
    let o = edgerep(&["init", dir.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("already exists"));
    let o = edgerep(&[
        "init",
        dir.path().join("x").to_str().unwrap(),
        "--node-id",
        "bad id",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("node id"), "{}", stderr(&o));
    for verb in [
        &["--help"][..],
        &["put", "--help"],
        &["bench", "ingest", "--help"],
        &["config", "check", "--help"],
    ] {
        let o = edgerep(verb);
        assert!(o.status.success(), "{verb:?} --help");
        assert!(stdout(&o).contains("Usage"), "{verb:?}");
    }
    assert_eq!(edgerep(&["no-such-verb"]).status.code(), Some(2));
}

/// `init` refuses ports it cannot honour instead of writing something else: the same port for
/// the API and replication (it used to pick another replication port silently), port 0 (which
/// `run` refuses), and single-node flags given with --cluster (they were ignored).
#[test]
fn init_refuses_ports_it_would_not_honour() {
    let dir = tempfile::tempdir().unwrap();
    let at = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let cases: [(&[&str], &str); 4] = [
        (
            &["--api-port", "17070", "--replication-port", "17070"],
            "both 17070",
        ),
        (&["--api-port", "0"], "--api-port"),
        (&["--cluster", "2", "--api-port", "17071"], "--cluster"),
        (&["--cluster", "2", "--node-id", "n9"], "--cluster"),
    ];
    for (i, (flags, names)) in cases.iter().enumerate() {
        let target = at(&format!("c{i}"));
        let mut args = vec!["init", target.as_str()];
        args.extend_from_slice(flags);
        let o = edgerep(&args);
        assert_eq!(o.status.code(), Some(2), "{flags:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(names), "{flags:?}: {}", stderr(&o));
        assert!(
            !Path::new(&target).join("edgerep.toml").exists(),
            "{flags:?} wrote a config"
        );
    }
}

/// `init --cluster N --force` over a cluster that ran replaces nothing: it used to delete each
/// node's directory, stores included (and `demo --dir` over a cluster did the same, always).
/// Without stores it rewrites the configs and certificates.
#[test]
fn init_force_never_deletes_a_store() {
    let dir = tempfile::tempdir().unwrap();
    let at = dir.path().to_str().unwrap();
    let o = edgerep(&["init", "--cluster", "2", at]);
    assert!(o.status.success(), "{}", stderr(&o));
    let data = dir.path().join("node-2").join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("store.redb"), b"a node's data").unwrap();
    let ca_before = std::fs::read(dir.path().join("ca").join("ca.pem")).unwrap();
    let o = edgerep(&["init", "--cluster", "2", "--force", at]);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    assert!(stderr(&o).contains("holds a node's data"), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(data.join("store.redb")).unwrap(),
        b"a node's data"
    );
    assert_eq!(
        std::fs::read(dir.path().join("ca").join("ca.pem")).unwrap(),
        ca_before,
        "nothing was rewritten"
    );
    std::fs::remove_dir_all(&data).unwrap();
    // What else an operator keeps in a node's directory (a store under a data_dir of its own,
    // a plugin, a token) stays: only the configs and certificates are rewritten.
    let kept = dir.path().join("node-1").join("store").join("edgerep.redb");
    std::fs::create_dir_all(kept.parent().unwrap()).unwrap();
    std::fs::write(&kept, b"a store elsewhere").unwrap();
    let o = edgerep(&["init", "--cluster", "2", "--force", at]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_ne!(
        std::fs::read(dir.path().join("ca").join("ca.pem")).unwrap(),
        ca_before
    );
    assert_eq!(std::fs::read(&kept).unwrap(), b"a store elsewhere");
    // A store under the data_dir a node's config names is a node's data too, also in a node
    // directory past the new count: its keys are not replaced.
    let o = edgerep(&["init", "--cluster", "3", "--force", at]);
    assert!(o.status.success(), "{}", stderr(&o));
    let config = dir.path().join("node-3").join("edgerep.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("data_dir = \"data\""), "{text}");
    std::fs::write(
        &config,
        text.replace("data_dir = \"data\"", "data_dir = \"store\""),
    )
    .unwrap();
    let moved = dir.path().join("node-3").join("store").join("edgerep.redb");
    std::fs::create_dir_all(moved.parent().unwrap()).unwrap();
    std::fs::write(&moved, b"node-3's store").unwrap();
    let key = std::fs::read(dir.path().join("node-3").join("certs").join("node.key")).unwrap();
    let o = edgerep(&["init", "--cluster", "2", "--force", at]);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    assert!(stderr(&o).contains("holds a node's data"), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(dir.path().join("node-3").join("certs").join("node.key")).unwrap(),
        key
    );
}

/// `init DIR --force` over a node that ran replaced its config without a word: the new one had
/// no peers, certificates nor the old ports, and the node took writes that replicated to
/// nobody. It now refuses, naming the data, and leaves the config as it was; over a starter
/// that never ran it still rewrites.
#[test]
fn init_force_does_not_replace_the_config_of_a_node_that_ran() {
    let dir = tempfile::tempdir().unwrap();
    let at = dir.path().join("site-a");
    let at = at.to_str().unwrap();
    let o = edgerep(&["init", at, "--node-id", "site-a"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = edgerep(&["init", at, "--node-id", "site-a", "--force"]);
    assert!(
        o.status.success(),
        "a starter that never ran: {}",
        stderr(&o)
    );
    // An empty data directory (a first start that failed on a port taken leaves one) is no
    // node's data.
    let data = dir.path().join("site-a").join("data");
    std::fs::create_dir_all(&data).unwrap();
    let o = edgerep(&["init", at, "--node-id", "site-a", "--force"]);
    assert!(
        o.status.success(),
        "an empty data directory: {}",
        stderr(&o)
    );
    let config = dir.path().join("site-a").join("edgerep.toml");
    let before = std::fs::read(&config).unwrap();
    std::fs::write(data.join("edgerep.redb"), b"a node's data").unwrap();
    let o = edgerep(&["init", at, "--node-id", "site-a", "--force"]);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    assert!(stderr(&o).contains("holds a node's data"), "{}", stderr(&o));
    assert_eq!(std::fs::read(&config).unwrap(), before);
}

/// A node whose replication port is taken fails to start, naming the port, before it opens its
/// store (a store opened and closed by a failed start would have its check at open fix, and
/// so stop reporting, damage it found).
#[test]
fn a_port_in_use_fails_the_start_before_the_store_is_opened() {
    let dir = tempfile::tempdir().unwrap();
    let configs = common::cluster(dir.path(), 2);
    let listen = edgerep_config::Config::load(&configs[0])
        .unwrap()
        .replication
        .listen;
    let _taken = std::net::UdpSocket::bind(listen).unwrap();
    let o = edgerep(&["run", "--config", configs[0].to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("cannot listen for peers on {listen}")),
        "{}",
        stderr(&o)
    );
    let store = configs[0].parent().unwrap().join("data/edgerep.redb");
    assert!(!store.exists(), "{} was created", store.display());
}

/// `demo --dir` over a cluster `init --cluster` made: it wrote a new CA over it, so the CA key
/// that could issue certificates to new sites was gone. Refused, nothing touched.
#[test]
fn the_demo_does_not_write_over_a_cluster_it_did_not_make() {
    let dir = tempfile::tempdir().unwrap();
    let at = dir.path().to_str().unwrap();
    let o = edgerep(&["init", "--cluster", "2", at]);
    assert!(o.status.success(), "{}", stderr(&o));
    let key = dir.path().join("ca").join("ca.key");
    let before = std::fs::read(&key).unwrap();
    let o = edgerep(&["demo", "--once", "--dir", at]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("holds a cluster the demo did not write"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        std::fs::read(&key).unwrap(),
        before,
        "the CA key is as it was"
    );
}

#[test]
fn demo_runs_to_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let o = edgerep(&[
        "demo",
        "--once",
        "--dir",
        dir.path().join("demo").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("equal digests: the nodes converged."), "{out}");
    // Every node shows the plugin-merged counter and the same verified digest.
    let merged = r#"{"node-1":5,"node-2":10,"node-3":15}"#;
    let counters: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("get counters/visits"))
        .collect();
    assert_eq!(counters.len(), 3, "{out}");
    assert!(counters.iter().all(|l| l.ends_with(merged)), "{out}");
    let digests: Vec<&str> = out
        .lines()
        .filter(|l| l.contains(" digest \""))
        .map(|l| l.split('"').nth(1).unwrap())
        .collect();
    assert_eq!(digests.len(), 3, "{out}");
    assert!(
        digests.iter().all(|d| d.len() == 64 && *d == digests[0]),
        "{out}"
    );
    assert_eq!(out.matches("verified true").count(), 3, "{out}");
    // The later scenes: an offline site caught up, a dead letter replayed after the plugin's
    // fix, a damaged store repaired by anti-entropy; node logs in a file, not in the output.
    assert!(out.contains("node-3 get orders/late-1 (back)"), "{out}");
    assert!(
        out.contains("refused (422)") && out.contains("kept as dead letter"),
        "{out}"
    );
    assert!(
        out.contains(r#"node-3 get readings/r-1                {"temp":21.5,"status":"ok"}"#),
        "{out}"
    );
    assert!(
        out.contains(r#"node-2 get orders/o-1 (repaired)       {"qty":10,"item":"part-1"}"#),
        "{out}"
    );
    assert!(
        out.contains("anti-entropy repaired it from a peer: equal digests"),
        "{out}"
    );
    assert!(out.contains("the store check found damage: true"), "{out}");
    assert!(
        !stderr(&o).contains(" INFO "),
        "node logs on stderr: {}",
        stderr(&o)
    );
    let log = dir.path().join("demo/nodes.log");
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("node started"), "{}", log.display());
    // Run again in the same directory: refused, saying why, before the last run's log goes.
    let o = edgerep(&[
        "demo",
        "--once",
        "--dir",
        dir.path().join("demo").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    assert!(
        stderr(&o).contains("a demo already ran in"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        logged,
        "the log is kept"
    );
}

#[test]
fn bench_ingest_prints_figures_and_a_json_last_line() {
    let o = edgerep(&[
        "bench",
        "ingest",
        "--seconds",
        "0.3",
        "--batches",
        "1,100",
        "--clients",
        "1,2",
    ]);
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    let last: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert!(last["raw_redb_events_per_s"].as_f64().unwrap() > 0.0);
    assert!(last["api_events_per_s"].as_f64().unwrap() > 0.0);
    assert!(last["ratio"].as_f64().unwrap() > 0.0);
    assert!(last["single_event_p99_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(last["cells"].as_array().unwrap().len(), 4);
    // The JSON says what the lines said (its fingerprints once held the keys' figures).
    assert_eq!(
        last["fingerprints"]["with_events_per_s"], last["store_only_events_per_s"],
        "{last}"
    );
    let fp_line = out
        .lines()
        .find(|l| l.starts_with("anti-entropy fingerprints on the write path:"))
        .unwrap();
    let with = last["fingerprints"]["with_events_per_s"].as_f64().unwrap();
    assert!(
        fp_line.contains(&format!("{with:.0} events/s with")),
        "{fp_line}"
    );
}

/// The plugin author's verbs against the real components (built by `cargo xtask build-plugins`).
#[test]
fn plugin_check_and_run() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/plugins/rust");
    let wasm = |name: &str| {
        let p = dir.join(format!("{name}.wasm"));
        assert!(
            p.exists(),
            "{} missing: run `cargo xtask build-plugins`",
            p.display()
        );
        p.display().to_string()
    };
    let o = edgerep(&["plugin", "check", &wasm("merge-counter")]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(report["world"], "resolver");
    assert_eq!(report["sha256"].as_str().unwrap().len(), 64);

    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("event.json");
    std::fs::write(
        &input,
        r#"{"collection": "orders", "key": "o-1", "value": {"card": "4111", "qty": 2}}"#,
    )
    .unwrap();
    let input = input.to_str().unwrap();
    let o = edgerep(&[
        "plugin",
        "run",
        &wasm("redact"),
        "--input",
        input,
        "--param",
        "remove=card",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(out[0]["value"], serde_json::json!({"qty": 2}));
    assert!(stderr(&o).contains("fuel used:"));

    // As a node runs it on a peer's event: redact's changed value is kept; enrich's added
    // metadata is refused as the node refuses it.
    let mut on_apply = vec!["plugin", "run", "--stage", "apply", "--input", input];
    let redact = wasm("redact");
    on_apply.extend([redact.as_str(), "--param", "remove=card"]);
    let o = edgerep(&on_apply);
    assert!(o.status.success(), "{}", stderr(&o));
    let out: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(out[0]["value"], serde_json::json!({"qty": 2}));
    let sensor = tmp.path().join("sensor.json");
    std::fs::write(
        &sensor,
        r#"{"collection": "sensors", "key": "s-1", "value": {"celsius": 20}}"#,
    )
    .unwrap();
    let enrich = wasm("enrich");
    let sensor = sensor.to_str().unwrap();
    let o = edgerep(&["plugin", "run", &enrich, "--input", sensor]);
    assert!(
        o.status.success(),
        "on ingest enrich may add metadata: {}",
        stderr(&o)
    );
    let o = edgerep(&[
        "plugin", "run", &enrich, "--input", sensor, "--stage", "apply",
    ]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "bad-output");
    assert!(
        stderr(&o).contains("not the schema or meta"),
        "{}",
        stderr(&o)
    );

    for (plugin, kind, extra) in [
        ("spin", "out-of-fuel", &["--fuel", "1000000"][..]),
        ("trap", "trap", &[][..]),
        (
            "balloon",
            "memory-limit",
            &["--fuel", "1000000000", "--memory", "4194304"][..],
        ),
    ] {
        let path = wasm(plugin);
        let mut args = vec!["plugin", "run", path.as_str(), "--input", input];
        args.extend_from_slice(extra);
        let o = edgerep(&args);
        assert_eq!(o.status.code(), Some(5), "{plugin}: {}", stderr(&o));
        assert_eq!(stdout(&o).trim(), kind, "{plugin}");
        if plugin == "trap" {
            // What the plugin logged (its panic message) reaches the author, without colour
            // codes when stderr is not a terminal.
            let err = stderr(&o);
            assert!(err.contains("deliberate panic on key"), "{err}");
            assert!(!err.contains('\u{1b}'), "{err}");
        }
    }
}

/// A config whose certificate names another node: `config check` says so and exits 2, and
/// `run` refuses to start with exit 2 (a usage error), not 4.
#[test]
fn a_certificate_of_another_node_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let configs = common::cluster(dir.path(), 2);
    let text = std::fs::read_to_string(&configs[0])
        .unwrap()
        .replace(
            "cert = \"certs/node.pem\"",
            "cert = \"../node-2/certs/node.pem\"",
        )
        .replace(
            "key = \"certs/node.key\"",
            "key = \"../node-2/certs/node.key\"",
        );
    std::fs::write(&configs[0], text).unwrap();
    let c = configs[0].to_str().unwrap();
    let o = edgerep(&["config", "check", c]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("names node \"node-2\", but node.id is \"node-1\""),
        "{}",
        stderr(&o)
    );
    let o = edgerep(&["run", "--config", c]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("replication.cert"), "{}", stderr(&o));
}

/// `config check` loads every plugin as `run` would: a wrong sha256, a missing file and a
/// resolver listed as a transform are found before the node starts, and nothing is written.
#[test]
fn config_check_loads_every_plugin() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/plugins/rust");
    let wasm = dir.join("merge-counter.wasm").canonicalize().unwrap();
    let sums = std::fs::read_to_string(dir.join("SHA256SUMS")).unwrap();
    let sha = sums
        .lines()
        .find_map(|l| {
            l.strip_suffix("merge-counter.wasm")
                .map(|h| h.trim().to_owned())
        })
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let config = init(tmp.path(), "cfg-plugins");
    let base = std::fs::read_to_string(&config).unwrap();
    let check = |extra: String| {
        std::fs::write(&config, format!("{base}{extra}")).unwrap();
        let o = edgerep(&["config", "check", config.to_str().unwrap()]);
        (o.status.code(), stderr(&o))
    };
    let plugin = |path: &std::path::Path, sha: &str, role: &str| {
        format!(
            "\n[[collections.declared]]\nname = \"tally\"\n{role}\n\n[plugins.counter]\npath = \"{}\"\nsha256 = \"{sha}\"\n",
            path.display()
        )
    };
    let (code, err) = check(plugin(&wasm, &sha, "resolver = \"counter\""));
    assert_eq!(code, Some(0), "{err}");
    let (code, err) = check(plugin(&wasm, &"0".repeat(64), "resolver = \"counter\""));
    assert_eq!(code, Some(2));
    assert!(
        err.contains("plugins.counter") && err.contains("sha256"),
        "{err}"
    );
    let (code, err) = check(plugin(
        &tmp.path().join("nope.wasm"),
        &sha,
        "resolver = \"counter\"",
    ));
    assert_eq!(code, Some(2));
    assert!(err.contains("cannot read"), "{err}");
    let (code, err) = check(plugin(&wasm, &sha, "transforms_on_ingest = [\"counter\"]"));
    assert_eq!(code, Some(2));
    assert!(err.contains("is a resolver, not a transform"), "{err}");
    assert!(
        !tmp.path().join("data").exists(),
        "config check writes nothing"
    );
}

/// A plugin declares its parameters (`params.toml`, embedded by the build): `plugin check`
/// shows them, and `config check` refuses a config that misses a required one or names one the
/// plugin does not declare (a typo), before the node runs.
#[test]
fn declared_parameters_are_shown_and_checked_before_the_node_runs() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/plugins");
    for toolchain in ["rust", "tinygo", "go"] {
        let wasm = dir.join(toolchain).join("filter.wasm");
        // Every toolchain's build is checked (`./scripts/test.sh` builds them all).
        assert!(
            wasm.is_file(),
            "{} is missing: run `cargo xtask build-plugins --toolchain {toolchain}` first",
            wasm.display()
        );
        let o = edgerep(&["plugin", "check", wasm.to_str().unwrap()]);
        assert!(o.status.success(), "{}", stderr(&o));
        let report: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        let names: Vec<&str> = report["params"]
            .as_array()
            .unwrap_or_else(|| panic!("{toolchain}: {report}"))
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["equals", "field"], "{toolchain}");
        assert_eq!(report["params"][1]["required"], true);
        // The shipped plugins whose parameters are all optional declare them too: a typo in
        // one (`remvoe`) would otherwise redact nothing, silently.
        for (plugin, declared) in [("redact", ["mask", "remove"]), ("enrich", ["from", "to"])] {
            let wasm = dir.join(toolchain).join(format!("{plugin}.wasm"));
            let o = edgerep(&["plugin", "check", wasm.to_str().unwrap()]);
            assert!(o.status.success(), "{}", stderr(&o));
            let report: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
            let names: Vec<&str> = report["params"]
                .as_array()
                .unwrap_or_else(|| panic!("{toolchain} {plugin}: {report}"))
                .iter()
                .map(|p| p["name"].as_str().unwrap())
                .collect();
            assert_eq!(names, declared, "{toolchain} {plugin}");
        }
    }
    let wasm = dir.join("rust/filter.wasm").canonicalize().unwrap();
    let sums = std::fs::read_to_string(dir.join("rust/SHA256SUMS")).unwrap();
    let sha = sums
        .lines()
        .find_map(|l| l.strip_suffix("filter.wasm").map(|h| h.trim().to_owned()))
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let config = init(tmp.path(), "params-node");
    let base = std::fs::read_to_string(&config).unwrap();
    let check = |params: &str| {
        std::fs::write(
            &config,
            format!(
                "{base}\n[[collections.declared]]\nname = \"readings\"\ntransforms_on_ingest = [\"filter\"]\n\n[plugins.filter]\npath = \"{}\"\nsha256 = \"{sha}\"\n{params}\n",
                wasm.display()
            ),
        )
        .unwrap();
        let o = edgerep(&["config", "check", config.to_str().unwrap()]);
        (o.status.code(), stderr(&o))
    };
    let (code, err) = check("params = { field = \"status\", equals = \"drop\" }");
    assert_eq!(code, Some(0), "{err}");
    let (code, err) = check("params = { field = \"status\" }");
    assert_eq!(code, Some(2));
    assert!(
        err.contains("plugins.filter") && err.contains("\"equals\"") && err.contains("missing"),
        "{err}"
    );
    let (code, err) = check("params = { field = \"status\", equals = \"drop\", feild = \"x\" }");
    assert_eq!(code, Some(2));
    assert!(
        err.contains("\"feild\"") && err.contains("field (required)"),
        "{err}"
    );
    let (redact, redact_sha) = common::built_plugin("redact");
    std::fs::write(
        &config,
        format!(
            "{base}\n[[collections.declared]]\nname = \"orders\"\ntransforms_on_ingest = [\"redact\"]\n\n[plugins.redact]\npath = \"{}\"\nsha256 = \"{redact_sha}\"\nparams = {{ remvoe = \"card\" }}\n",
            redact.display()
        ),
    )
    .unwrap();
    let o = edgerep(&["config", "check", config.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("\"remvoe\""), "{}", stderr(&o));
}

/// `dead-letters delete` and `replay --all [--collection]` against a running node.
#[test]
fn dead_letters_are_deleted_and_replayed_all_at_once() {
    let (wasm, sha) = common::built_plugin("filter");
    let tmp = tempfile::tempdir().unwrap();
    let config = init(tmp.path(), "dl-node");
    let base = std::fs::read_to_string(&config).unwrap();
    let with_params = |params: &str| {
        format!(
            "{base}\n[[collections.declared]]\nname = \"readings\"\ntransforms_on_ingest = [\"filter\"]\n\n[[collections.declared]]\nname = \"other\"\ntransforms_on_ingest = [\"filter\"]\n\n[plugins.filter]\npath = \"{}\"\nsha256 = \"{sha}\"\n{params}\n",
            wasm.display()
        )
    };
    // The filter with too little fuel fails on every write: each becomes a dead letter.
    std::fs::write(
        &config,
        with_params("params = { field = \"status\", equals = \"drop\" }\nfuel = 100"),
    )
    .unwrap();
    let c = config.to_str().unwrap();
    let node = Node::start(&config);
    for (coll, key) in [("readings", "r1"), ("readings", "r2"), ("other", "o1")] {
        let o = edgerep(&["put", "--config", c, coll, key, r#"{"status":"ok"}"#]);
        assert_eq!(o.status.code(), Some(3), "refused: {}", stderr(&o));
    }
    let list = |c: &str| -> Vec<serde_json::Value> {
        stdout(&edgerep(&["dead-letters", "list", "--config", c]))
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    assert_eq!(list(c).len(), 3);
    // Replaying with the same plugins fails; the entries stay.
    let o = edgerep(&[
        "dead-letters",
        "replay",
        "--config",
        c,
        "--all",
        "--collection",
        "readings",
    ]);
    // The node refused both (its plugin fails them again): exit 3, as for any 4xx (1 is
    // "absent", which they are not).
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert_eq!(
        stdout(&o).matches("refused, stays").count(),
        2,
        "{}",
        stdout(&o)
    );
    assert!(
        stderr(&o).contains("0 replayed, 2 refused by the node (they stay), 0 failed"),
        "{}",
        stderr(&o)
    );
    // One is dropped for good.
    let first = list(c)[0]["id"].as_u64().unwrap().to_string();
    let o = edgerep(&["dead-letters", "delete", "--config", c, &first]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(list(c).len(), 2);
    let o = edgerep(&["dead-letters", "delete", "--config", c, &first]);
    assert_eq!(o.status.code(), Some(1), "deleting twice: {}", stderr(&o));
    drop(node);
    // Its fuel given: every remaining one is replayed and removed.
    std::fs::write(
        &config,
        with_params("params = { field = \"status\", equals = \"drop\" }"),
    )
    .unwrap();
    let node = Node::start(&config);
    let o = edgerep(&["dead-letters", "replay", "--config", c, "--all"]);
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    assert_eq!(
        stdout(&o).matches(": replayed").count(),
        2,
        "{}",
        stdout(&o)
    );
    assert!(list(c).is_empty());
    let o = edgerep(&["get", "--config", c, "other", "o1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    drop(node);
}

/// A dead-letter listing piped into a reader that stops early (`| head -1`) ends quietly with
/// exit 0, not with a panic on the broken pipe: 300 dead letters of some 500 bytes each are more
/// than a pipe's buffer holds.
/// Appends to `config` a collection `readings` whose writes go through the filter plugin at
/// `wasm` (dropping `{"status": "drop"}`), with `extra` lines for the plugin (its limits).
fn filter_readings(config: &Path, wasm: &Path, sha: &str, extra: &str) {
    let base = std::fs::read_to_string(config).unwrap();
    std::fs::write(
        config,
        format!(
            "{base}\n[[collections.declared]]\nname = \"readings\"\ntransforms_on_ingest = [\"filter\"]\n\n[plugins.filter]\npath = \"{}\"\nsha256 = \"{sha}\"\nparams = {{ field = \"status\", equals = \"drop\" }}\n{extra}",
            wasm.display()
        ),
    )
    .unwrap();
}

#[test]
fn a_dead_letter_listing_piped_into_head_ends_quietly() {
    let (wasm, sha) = common::built_plugin("filter");
    let tmp = tempfile::tempdir().unwrap();
    let config = init(tmp.path(), "dl-pipe");
    // The filter with too little fuel fails on every write: each becomes a dead letter.
    filter_readings(&config, &wasm, &sha, "fuel = 100\n");
    let c = config.to_str().unwrap();
    let node = Node::start(&config);
    let pad = "x".repeat(300);
    for i in 0..300 {
        let mut r = agent()
            .put(&node.url(&format!("/v1/kv/readings/r-{i:03}")))
            .content_type("application/json")
            .send(format!(r#"{{"status":"ok","pad":"{pad}"}}"#).as_bytes())
            .unwrap();
        let body = r.body_mut().read_to_string().unwrap();
        assert!(r.status().is_client_error(), "{}: {body}", r.status());
    }
    let o = edgerep(&["dead-letters", "list", "--config", c, "--limit", "1000"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let listed = stdout(&o);
    assert_eq!(listed.lines().count(), 300);
    assert!(listed.len() > 128 * 1024, "{} bytes", listed.len());
    ends_quietly_when_its_reader_goes(&["dead-letters", "list", "--config", c, "--limit", "1000"]);
    drop(node);
}

/// Runs the CLI with `args`, reads the first line it prints (a JSON object) and closes the pipe,
/// as `| head -1` does: the verb must end with exit 0, not panic on the broken pipe.
fn ends_quietly_when_its_reader_goes(args: &[&str]) {
    let mut child = std::process::Command::new(common::BIN)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut first,
    )
    .unwrap();
    assert!(first.starts_with('{'), "{args:?}: {first}");
    // The reader (and with it the pipe) is gone here.
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
    assert!(!stderr(&o).contains("panicked"), "{args:?}: {}", stderr(&o));
}

/// `edgerep reload --config B` for a node started with A: the node reloaded A (a file nobody
/// checked) and only then did the verb find the two differ. Now the verb sends the digest of
/// what it checked and the node refuses (409) before taking anything: A's own edit (a limit
/// raised) is not in force either. The verb exits 2 naming both files.
#[test]
fn reload_names_the_file_the_node_reads_when_another_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let config = init(dir.path(), "cfg-r");
    let node = Node::start(&config);
    let c = config.to_str().unwrap();
    let o = edgerep(&["reload", "--config", c]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let copy = dir.path().join("edited-copy.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &copy,
        format!("{text}\n# edited here, not in the node's file\n"),
    )
    .unwrap();
    assert!(text.contains("\n[limits]\n"));
    std::fs::write(
        &config,
        text.replace("\n[limits]\n", "\n[limits]\nmax_value_bytes = 200000\n"),
    )
    .unwrap();
    let o = edgerep(&["reload", "--config", copy.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    let err = stderr(&o);
    assert!(
        err.contains("edited-copy.toml") && err.contains(c) && err.contains("nothing was reloaded"),
        "{err}"
    );
    // A value over the limit A raises is still refused: A was not taken in.
    let big = format!(r#"{{"v":"{}"}}"#, "x".repeat(100_000));
    let put_big = || {
        let r = agent()
            .put(&node.url("/v1/kv/c/big"))
            .content_type("application/json")
            .config()
            .http_status_as_error(false)
            .build()
            .send(big.as_bytes())
            .unwrap();
        (r.status().as_u16(), r.into_body().read_to_string())
    };
    let (status, body) = put_big();
    assert_eq!(status, 413, "{body:?}");
    // Reloaded with A itself, it is.
    let o = edgerep(&["reload", "--config", c]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let (status, body) = put_big();
    assert_eq!(status, 200, "{body:?}");
    drop(node);
}

/// Careless operators: a second node started on a running node's data directory (it got
/// redb's "Database already open" and exit 4, as for a passing fault), and a config listening
/// on port 0 (checked fine, then no command could find the node).
#[test]
fn a_second_node_on_a_data_directory_and_port_0_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let config = init(dir.path(), "cfg-d");
    let node = Node::start(&config);
    let text = std::fs::read_to_string(&config).unwrap();
    let c = edgerep_config::Config::load(&config).unwrap();
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .to_string()
    };
    let second = dir.path().join("second.toml");
    std::fs::write(
        &second,
        text.replace(&c.api.listen.to_string(), &free())
            .replace(&c.replication.listen.to_string(), &free()),
    )
    .unwrap();
    let (code, err) = common::refused_to_start(
        &["run", "--config", second.to_str().unwrap()],
        "a second node ran on the same data directory",
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("open in another process") && err.contains("node.data_dir"),
        "{err}"
    );
    // The same config started twice (by hand beside its service): it said only that the API
    // port was taken, with exit 4 (a passing fault, so a supervisor retried for ever).
    let (code, err) = common::refused_to_start(
        &["run", "--config", config.to_str().unwrap()],
        "the same config ran twice",
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("a node already runs on this data directory"),
        "{err}"
    );
    drop(node);
    // A store file that is no store (a bad restore): exit 2, saying what to do, not exit 4.
    let store = c.node.data_dir.join("edgerep.redb");
    std::fs::write(
        &store,
        b"not a store at all, just some bytes of another program",
    )
    .unwrap();
    let (code, err) = common::refused_to_start(
        &["run", "--config", config.to_str().unwrap()],
        "a node ran on a file that is no store",
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("is not a store this node can open")
            && err.contains("backup")
            && err.contains("another edgerep build wrote it"),
        "{err}"
    );
    let zero = dir.path().join("zero.toml");
    std::fs::write(
        &zero,
        text.replace(&c.api.listen.to_string(), "127.0.0.1:0"),
    )
    .unwrap();
    for verb in ["run", "config"] {
        let args: &[&str] = if verb == "run" {
            &["run", "--config", zero.to_str().unwrap()]
        } else {
            &["config", "check", zero.to_str().unwrap()]
        };
        let (code, err) = common::refused_to_start(args, "a node ran on port 0");
        assert_eq!(code, Some(2), "{verb}: {err}");
        assert!(err.contains("api.listen: port 0"), "{verb}: {err}");
    }
}

/// A config file being written when a reload reads it (a SIGHUP while an editor or a script
/// rewrites it in place) is refused whole: a file cut short can parse, and would drop the peers
/// after the cut.
#[test]
fn a_config_file_changing_while_it_is_read_is_not_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let config = init(dir.path(), "cfg-w");
    let node = Node::start(&config);
    let text = std::fs::read_to_string(&config).unwrap();
    let writing = {
        let config = config.clone();
        let text = text.clone();
        std::thread::spawn(move || {
            let until = std::time::Instant::now() + Duration::from_secs(3);
            let mut i = 0u64;
            while std::time::Instant::now() < until {
                std::fs::write(&config, format!("{text}\n# write {i}\n")).unwrap();
                i += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let r = agent()
        .post(&node.url("/v1/reload"))
        .config()
        .http_status_as_error(false)
        .build()
        .send_empty()
        .unwrap();
    assert_eq!(r.status(), 422);
    let body = r.into_body().read_to_string().unwrap();
    assert!(
        body.contains("the file changed while it was read"),
        "{body}"
    );
    writing.join().unwrap();
    let o = edgerep(&["reload", "--config", config.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    drop(node);
}

/// A token rotated by writing its file: `edgerep reload` (which sends the file's token) is
/// refused and says to reload with SIGHUP; after SIGHUP the CLI works with the new token and the
/// old one is refused.
#[test]
fn a_rotated_token_is_taken_in_by_sighup_and_the_reload_verb_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let config = init(dir.path(), "cfg-rot");
    let token = with_token_file(&config, "first-token-0123456789\n");
    let node = Node::start(&config);
    let c = config.to_str().unwrap();
    let o = edgerep(&["status", "--config", c]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    std::fs::write(&token, "second-token-0123456789\n").unwrap();
    let o = edgerep(&["reload", "--config", c]);
    assert_eq!(o.status.code(), Some(3), "{}", stdout(&o));
    assert!(stderr(&o).contains("SIGHUP"), "{}", stderr(&o));
    // SIGHUP: the node reads the file again.
    send_signal(node.child.id() as i32, "HUP");
    exits_within(&["status", "--config", c], 0);
    let old = common::agent()
        .get(&node.url("/v1/status"))
        .header("authorization", "Bearer first-token-0123456789")
        .call()
        .unwrap();
    assert_eq!(old.status().as_u16(), 401);
    drop(node);
}

/// A reload by SIGHUP has nobody to answer: its refusal shows in status (`last_reload_error`)
/// and fails `status --check` until a reload passes.
#[test]
fn a_refused_sighup_reload_shows_in_status_until_one_passes() {
    let dir = tempfile::tempdir().unwrap();
    let config = init(dir.path(), "cfg-hup");
    let node = Node::start(&config);
    let c = config.to_str().unwrap();
    let o = edgerep(&["status", "--config", c, "--check"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // A change that takes a restart: the file still parses (the CLI reads it too).
    let good = std::fs::read_to_string(&config).unwrap();
    let needs_restart = good.replacen("[node]\n", "[node]\nsync_interval_ms = 10\n", 1);
    assert_ne!(good, needs_restart);
    std::fs::write(&config, needs_restart).unwrap();
    send_signal(node.child.id() as i32, "HUP");
    let o = exits_within(&["status", "--config", c, "--check"], 4);
    assert!(
        stderr(&o).contains("the config was not reloaded (the node runs the config it had)"),
        "{}",
        stderr(&o)
    );
    std::fs::write(&config, good).unwrap();
    send_signal(node.child.id() as i32, "HUP");
    exits_within(&["status", "--config", c, "--check"], 0);
    drop(node);
}

/// A node that took a collection while undeclared collections were accepted, restarted with
/// `accept_undeclared = false` and the collection not declared: the start warns, status lists
/// it under `collections_not_declared`, and `status --check` fails naming it. Before, the
/// collection's data was refused to clients without a word (it was never in the record of
/// declared collections the start compares with).
#[test]
fn a_collection_left_undeclared_by_a_stricter_config_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = init(dir.path(), "cfg-undecl");
    let node = Node::start(&config);
    common::put(&node, "orders", "o-1", r#"{"v":1}"#);
    common::put(&node, "readings", "r-1", r#"{"v":2}"#);
    node.terminate();
    let text = std::fs::read_to_string(&config).unwrap();
    let strict = text.replacen(
        "accept_undeclared = true",
        "accept_undeclared = false\n\n[[collections.declared]]\nname = \"orders\"",
        1,
    );
    assert_ne!(text, strict);
    std::fs::write(&config, strict).unwrap();
    let node = Node::start(&config);
    let c = config.to_str().unwrap();
    let o = edgerep(&["status", "--config", c, "--check"]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    let status: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(
        status["collections_not_declared"],
        serde_json::json!(["readings"])
    );
    assert!(
        stderr(&o).contains(r#"this store holds keys of collection "readings""#),
        "{}",
        stderr(&o)
    );
    let log = std::fs::read_to_string(&node.log).unwrap();
    assert!(
        log.contains(r#"this store holds keys of collection \"readings\""#)
            || log.contains(r#"this store holds keys of collection "readings""#),
        "{log}"
    );
    drop(node);
}

/// What the verbs make of answers a node gives only off loopback (429: a verification asked
/// again too soon) or that no node gives (a body that is not JSON: the config names a port
/// where something else listens). A stand-in server on loopback gives each canned answer once.
#[test]
fn answers_to_retry_later_and_answers_that_are_not_a_nodes_exit_4() {
    use std::io::{BufRead, Write};
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = server.local_addr().unwrap();
    let retry_later = r#"{"error":"verified lately, try again","kind":"verify_rate_limited"}"#;
    let answers = [
        format!(
            "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{retry_later}",
            retry_later.len()
        ),
        "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: 14\r\nconnection: close\r\n\r\n<html>hi</html".to_owned(),
        "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: 14\r\nconnection: close\r\n\r\n<html>hi</html".to_owned(),
        // Another server's 404 page: not "absent" (exit 1), which a script would believe.
        "HTTP/1.1 404 Not Found\r\ncontent-type: text/html\r\ncontent-length: 14\r\nconnection: close\r\n\r\n<html>no</html".to_owned(),
        // The connection closed with no answer (a node killed after reading the request).
        String::new(),
    ];
    let serving = std::thread::spawn(move || {
        for answer in answers {
            let (stream, _) = server.accept().unwrap();
            // The request's head, read to its end (a GET has no body).
            let mut reader = std::io::BufReader::new(stream);
            let mut line = String::new();
            let mut length = 0usize;
            while reader.read_line(&mut line).unwrap() > 0 && line != "\r\n" {
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap();
                }
                line.clear();
            }
            let mut body = vec![0; length];
            std::io::Read::read_exact(&mut reader, &mut body).unwrap();
            reader.get_mut().write_all(answer.as_bytes()).unwrap();
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let config = init(dir.path(), "stand-in");
    let mut doc: toml_edit::DocumentMut =
        std::fs::read_to_string(&config).unwrap().parse().unwrap();
    doc["api"]["listen"] = toml_edit::value(addr.to_string());
    std::fs::write(&config, doc.to_string()).unwrap();
    let c = config.to_str().unwrap();
    // 429: a retry later passes, so the verb fails with 4 (try again), not 3 (refused).
    let o = edgerep(&["status", "--config", c, "--verify"]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(stderr(&o).contains("retry later"), "{}", stderr(&o));
    // Not JSON where a node's answer is: 4 (not the node's answer), not 0 or 2, and not
    // printed as if it were the node's.
    for args in [
        &["status", "--config", c, "--verify"][..],
        &["get", "--config", c, "orders", "o-1"][..],
    ] {
        let o = edgerep(args);
        assert_eq!(o.status.code(), Some(4), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("not the JSON"),
            "{args:?}: {}",
            stderr(&o)
        );
        assert!(stdout(&o).is_empty(), "{args:?}: {}", stdout(&o));
    }
    let o = edgerep(&["get", "--config", c, "orders", "o-1"]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("404 without a node's JSON error"),
        "{}",
        stderr(&o)
    );
    // A write whose connection broke after it was sent may have committed: the message says
    // so and how to retry, not that the node could not be reached.
    let o = edgerep(&[
        "put",
        "--config",
        c,
        "orders",
        "o-1",
        "{}",
        "--idempotency-key",
        "k-1",
    ]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("broke before an answer came"),
        "{}",
        stderr(&o)
    );
    assert!(
        stderr(&o).contains("same --idempotency-key"),
        "{}",
        stderr(&o)
    );
    serving.join().unwrap();
    // Nothing listens any more: that one cannot be reached.
    let o = edgerep(&["get", "--config", c, "orders", "o-1"]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("cannot reach the node"),
        "{}",
        stderr(&o)
    );
}

/// `status --check` exits 4 naming what needs an operator (a peer not connected, local writes
/// waiting for it), and 0 once nothing does: a monitoring script reads the exit code only.
/// Before, `status` exited 0 whatever the node said.
#[test]
fn status_check_names_what_needs_an_operator() {
    let dir = tempfile::tempdir().unwrap();
    let configs = common::cluster(dir.path(), 2);
    let c1 = configs[0].to_str().unwrap();
    let n1 = Node::start(&configs[0]);
    let o = edgerep(&["status", "--config", c1, "--check"]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("\"digest\""),
        "the status is printed too"
    );
    let said = stderr(&o);
    assert!(said.contains("peer node-2 is not connected"), "{said}");
    assert!(said.contains("local writes wait"), "{said}");
    // Without --check, the same status exits 0, as before.
    assert_eq!(edgerep(&["status", "--config", c1]).status.code(), Some(0));
    let n2 = Node::start(&configs[1]);
    common::converge(&[&n1, &n2], std::time::Duration::from_secs(30));
    let o = exits_within(&["status", "--config", c1, "--check"], 0);
    assert_eq!(stderr(&o), "");
    // A copy of node-2's config whose api.listen is node-1's: the status is node-1's, and
    // --check says so instead of passing.
    let api_of = |path: &std::path::Path| {
        let doc: toml_edit::DocumentMut = std::fs::read_to_string(path).unwrap().parse().unwrap();
        doc["api"]["listen"].as_str().unwrap().to_owned()
    };
    let mut mixed: toml_edit::DocumentMut = std::fs::read_to_string(&configs[1])
        .unwrap()
        .parse()
        .unwrap();
    mixed["api"]["listen"] = toml_edit::value(api_of(&configs[0]));
    let mixed_path = configs[1].with_file_name("mixed.toml");
    std::fs::write(&mixed_path, mixed.to_string()).unwrap();
    let o = edgerep(&[
        "status",
        "--config",
        mixed_path.to_str().unwrap(),
        "--check",
    ]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(
            r#"the node answering at this config's api.listen is "node-1", not this config's node.id "node-2""#
        ),
        "{}",
        stderr(&o)
    );
}

/// A plugin no declared collection names loads and never runs: `config check` says so (a
/// forgotten `transforms_on_ingest`, a misspelled collection), and stops saying it once a
/// collection names it.
#[test]
fn config_check_warns_of_a_plugin_nothing_runs() {
    let dir = tempfile::tempdir().unwrap();
    let config = init(dir.path(), "cfg-p");
    let (wasm, sha) = common::built_plugin("passthrough");
    let base = std::fs::read_to_string(&config).unwrap();
    let plugin = format!(
        "\n[plugins.pass]\npath = \"{}\"\nsha256 = \"{sha}\"\n",
        wasm.display()
    );
    std::fs::write(&config, format!("{base}{plugin}")).unwrap();
    let o = edgerep(&["config", "check", config.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(r#"plugin "pass" is loaded but no declared collection names it"#),
        "{}",
        stderr(&o)
    );
    std::fs::write(
        &config,
        format!(
            "{base}\n[[collections.declared]]\nname = \"c\"\ntransforms_on_ingest = [\"pass\"]\n{plugin}"
        ),
    )
    .unwrap();
    let o = edgerep(&["config", "check", config.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!stderr(&o).contains("warning"), "{}", stderr(&o));
}

/// The build is named the same way by `--version`, status and the metrics: the commit the
/// binary was built from, which git names for this checkout (`unknown` without git).
#[test]
fn version_status_and_metrics_name_the_build_commit() {
    let git = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output();
    let commit = match git {
        Ok(o) if o.status.success() => String::from_utf8(o.stdout).unwrap().trim().to_owned(),
        _ => "unknown".to_owned(),
    };
    let o = edgerep(&["--version"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        stdout(&o).trim(),
        format!("edgerep {} (commit {commit})", env!("CARGO_PKG_VERSION"))
    );

    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&init(dir.path(), "build-1"));
    let s = common::status(&node);
    assert_eq!(s["build_commit"], serde_json::json!(commit), "{s}");
    assert_eq!(s["version"], serde_json::json!(env!("CARGO_PKG_VERSION")));
    let m = common::metrics(&node);
    let line = format!(
        "edgerep_build_info{{version=\"{}\",commit=\"{commit}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    assert!(m.contains(&line), "no {line:?} in the metrics:\n{m}");
}

/// A client sending a refused write again and again (its context names an event this node does
/// not hold) gets its 409 each time, and the log a line per 10 s, not one per request.
#[test]
fn a_refused_write_sent_again_and_again_is_logged_once_per_interval() {
    let dir = tempfile::tempdir().unwrap();
    let config = init(dir.path(), "refused-1");
    let node = Node::start(&config);
    let began = std::time::Instant::now();
    for _ in 0..20 {
        let r = agent()
            .put(&node.url("/v1/kv/orders/o-1"))
            .header("x-edgerep-context", "refused-1:50")
            .send(r#"{"qty":1}"#)
            .unwrap();
        assert_eq!(r.status().as_u16(), 409);
    }
    // One line per 10 s begun (on a machine so loaded that the requests took longer).
    let most = began.elapsed().as_secs() / 10 + 1;
    let log = node.log.clone();
    assert!(node.terminate().success());
    let logs = std::fs::read_to_string(&log).unwrap();
    let lines = logs
        .lines()
        .filter(|l| l.contains("a local write was refused"))
        .count() as u64;
    assert!(
        (1..=most).contains(&lines),
        "{lines} lines, at most {most}: {logs}"
    );
}

/// `edgerep shrink` gives back what changelog compaction freed: refused while the node runs,
/// then the file is smaller and the node starts on it with its state whole.
#[test]
fn shrink_gives_freed_pages_back_and_the_store_stays_whole() {
    let dir = tempfile::tempdir().unwrap();
    let config = init(dir.path(), "shrink-1");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace(
            "\n[retention]\n",
            "\n[retention]\nkeep_events = 100\ninterval_ms = 200\n",
        ),
    )
    .unwrap();
    let c = config.to_str().unwrap();
    let node = Node::start(&config);
    // 30,000 events of about 450 bytes over 100 keys: the changelog holds the backlog until
    // compaction keeps its newest 100.
    let pad = "x".repeat(400);
    let mut last = 0;
    for round in 0..300 {
        let answer = common::batch(
            &node,
            "bulk",
            (0..100).map(|k| {
                (
                    format!("k-{k:03}"),
                    format!(r#"{{"pad":"{pad}","round":{round}}}"#),
                )
            }),
        );
        last = answer["committed"].as_array().unwrap().last().unwrap()["seq"]
            .as_u64()
            .unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while common::status(&node)["compacted"]["shrink-1"].as_u64() != Some(last - 100) {
        assert!(
            std::time::Instant::now() < deadline,
            "no compaction: {}",
            common::status(&node)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let o = edgerep(&["shrink", "--config", c]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("stop the node first"), "{}", stderr(&o));
    assert!(node.terminate().success());

    // A config naming another node over this store (a careless copy) is refused before any
    // page moves: the shrink below still gives back more than half.
    let file = dir.path().join("data").join("edgerep.redb");
    let other = dir.path().join("other.toml");
    std::fs::write(
        &other,
        std::fs::read_to_string(&config)
            .unwrap()
            .replace("\"shrink-1\"", "\"shrink-2\""),
    )
    .unwrap();
    let o = edgerep(&["shrink", "--config", other.to_str().unwrap()]);
    assert_ne!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(
        stderr(&o).contains("shrink-1") && stderr(&o).contains("shrink-2"),
        "{}",
        stderr(&o)
    );

    let o = edgerep(&["shrink", "--config", c]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    let sizes: Vec<u64> = out
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(
        sizes.len() >= 2 && sizes[1] < sizes[0] / 2,
        "not shrunk by half: {out}"
    );
    assert_eq!(std::fs::metadata(&file).unwrap().len(), sizes[1], "{out}");

    let _node = Node::start(&config);
    let s: serde_json::Value =
        serde_json::from_str(&stdout(&edgerep(&["status", "--config", c, "--verify"]))).unwrap();
    assert_eq!(s["verified"], true, "{s}");
    assert_eq!(s["origins"]["shrink-1"], last, "{s}");
    assert_eq!(s["state_entries"], 100, "{s}");
    let o = edgerep(&["get", "--config", c, "bulk", "k-099"]);
    assert!(stdout(&o).contains(r#""round":299"#), "{}", stdout(&o));
}

/// A stop signal while the node is still starting (here: compiling a standard-Go plugin, which
/// takes seconds, on one CPU) stops it at once, not once the start ends; and the next start is
/// a normal one.
#[test]
fn sigterm_during_the_start_stops_the_node_before_it_serves() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/plugins/go");
    let wasm = dir.join("filter.wasm");
    assert!(
        wasm.is_file(),
        "{} is missing: run `cargo xtask build-plugins --toolchain go` first",
        wasm.display()
    );
    let sums = std::fs::read_to_string(dir.join("SHA256SUMS")).unwrap();
    let sha = sums
        .lines()
        .find_map(|l| l.strip_suffix("filter.wasm").map(|h| h.trim().to_owned()))
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let config = init(tmp.path(), "slow-start");
    filter_readings(&config, &wasm.canonicalize().unwrap(), &sha, "");
    // On one CPU (`taskset`): the runtime then has one worker, which the start must not hold
    // (before, the signal was seen only once the start ended there).
    let log_path = tmp.path().join("node.log");
    let child = std::process::Command::new("taskset")
        .args(["-c", "0", common::BIN, "run", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .expect("running taskset (util-linux)");
    let mut node = Node {
        child,
        config: config.clone(),
        addr: common::api_addr(&config),
        log: log_path,
    };
    let log = || std::fs::read_to_string(&node.log).unwrap_or_default();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !log().contains("compiling the plugin") {
        assert!(
            std::time::Instant::now() < deadline,
            "the node never said it compiles the plugin: {}",
            log()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    send_signal(node.child.id() as i32, "TERM");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = node.child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            node.child.kill().unwrap();
            panic!("SIGTERM did not stop the node within 60 s: {}", log());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = log();
    assert!(status.success(), "{status:?}: {text}");
    assert!(
        text.contains("stopped before the start finished"),
        "the log should say the start was cut short: {text}"
    );
    assert!(
        !text.contains("node started") && !text.contains("plugin loaded"),
        "the start ran on after SIGTERM: {text}"
    );
    // Nothing half-written: the next start compiles again and serves.
    let node = Node::start(&config);
    assert_eq!(node.terminate().code(), Some(0));
}

/// A node key TLS takes but seals cannot (P-384; seals are ECDSA P-256) is refused by `config
/// check` as by `run` (which checks its files as `config check` does before it starts), and
/// both name `replication.key`, its file, and what to do.
#[test]
fn a_node_key_seals_cannot_use_is_refused_by_the_check_as_by_run() {
    use edgerep_transport::certs::Ca;
    let tmp = tempfile::tempdir().unwrap();
    let o = edgerep(&["init", "--cluster", "2", tmp.path().to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ca_dir = tmp.path().join("ca");
    let ca = Ca::load(&ca_dir.join("ca.pem"), &ca_dir.join("ca.key")).unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let (cert_pem, key_pem) = ca
        .renew_node("node-1", &key.serialize_pem())
        .unwrap()
        .to_pem();
    let certs = tmp.path().join("node-1/certs");
    std::fs::write(certs.join("node.pem"), cert_pem).unwrap();
    std::fs::write(certs.join("node.key"), key_pem).unwrap();
    let config = tmp.path().join("node-1/edgerep.toml");
    let c = config.to_str().unwrap();
    let o = edgerep(&["config", "check", c]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "config check took it: {}",
        stdout(&o)
    );
    let key_file = certs.join("node.key").display().to_string();
    for err in [stderr(&o), {
        let (code, err) = common::refused_to_start(&["run", "--config", c], "run took a P-384 key");
        assert_eq!(code, Some(2), "{err}");
        err
    }] {
        assert!(
            err.contains("replication.key") && err.contains(&key_file) && err.contains("P-256"),
            "{err}"
        );
    }
}

/// The plugin cache is a speed-up: one the node cannot use (here a file where its directory
/// goes; also a read-only disk or another user's directory) is said in the log, and the node
/// starts, compiling its plugins; it no longer refused to start as if its config were wrong.
#[test]
fn a_plugin_cache_that_cannot_be_used_is_said_and_the_node_runs_without() {
    let (wasm, sha) = common::built_plugin("filter");
    let tmp = tempfile::tempdir().unwrap();
    let config = init(tmp.path(), "no-cache");
    filter_readings(&config, &wasm, &sha, "");
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("plugin-cache"), b"not a directory").unwrap();
    let node = Node::start(&config);
    assert_eq!(
        common::put(&node, "readings", "r-1", r#"{"status":"ok"}"#),
        1,
        "the filter runs"
    );
    let log = std::fs::read_to_string(&node.log).unwrap();
    assert!(log.contains("not using the plugin cache"), "{log}");
    assert_eq!(node.terminate().code(), Some(0));
}

/// What `config check` passed without a word, though the operator most likely did not mean it:
/// authentication turned off on a node with peers (any peer holding a certificate could then
/// write as any other node), and an id in `[[revoked]]` or `[authorization]` that names no
/// node known here (a typo leaves the node meant able to write). Warned of, exit 0.
#[test]
fn config_check_warns_of_what_an_operator_rarely_means() {
    let dir = tempfile::tempdir().unwrap();
    let configs = common::cluster(dir.path(), 2);
    let c = configs[0].to_str().unwrap();
    let o = edgerep(&["config", "check", c]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!stderr(&o).contains("warning"), "{}", stderr(&o));
    let text = std::fs::read_to_string(&configs[0]).unwrap();
    let changed = text.replacen(
        "[replication]\n",
        "[replication]\nauthenticate = false\n",
        1,
    ) + "\n[[revoked]]\nnode = \"node-33\"\nafter_seq = 0\n";
    assert_ne!(changed, text);
    std::fs::write(&configs[0], changed).unwrap();
    let o = edgerep(&["config", "check", c]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("warning") && err.contains("replication.authenticate = false"),
        "{err}"
    );
    assert!(
        err.contains("[[revoked]] names node-33") && err.contains("typo"),
        "{err}"
    );
}
