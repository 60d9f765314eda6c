//! A full disk, for real: node-2's data directory is a tmpfs of a few MiB, so its store runs
//! out of space while it takes its own writes and node-1's. It must stop with exit 4 naming the
//! disk (not hang, not panic, not answer 500 for ever while it looks alive), refuse to run on
//! with the disk still full, and once space is freed catch up with nothing lost and nothing
//! applied twice: every write either node acknowledged is on both, and the stores verify.
//!
//! The test runs itself again inside `unshare -m` (root, as on the CI machine): the tmpfs is
//! mounted in a mount namespace of its own and goes with the process.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Node, agent, cluster, converge, get};

const INSIDE: &str = "EDGEREP_FULL_DISK_INSIDE";
const TEST: &str = "a_full_disk_stops_the_node_and_a_restart_with_space_loses_nothing";

/// Waits at most `limit` for `node` to exit; its exit code (panics if it is still running).
fn exit_code(node: &mut Node, limit: Duration) -> Option<i32> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = node.child.try_wait().unwrap() {
            return status.code();
        }
        assert!(
            Instant::now() < deadline,
            "the node is still running after {limit:?}; log:\n{}",
            std::fs::read_to_string(&node.log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// POSTs one batch of `n` keys `{prefix}-{i}` of about 1 kB each: the HTTP status and body
/// (0 when the node could not be reached at all).
fn write_batch(node: &Node, prefix: &str, n: usize) -> (u16, String) {
    let pad = "x".repeat(1000);
    let writes: Vec<String> = (0..n)
        .map(|i| format!(r#"{{"collection":"c","key":"{prefix}-{i}","value":{{"pad":"{pad}"}}}}"#))
        .collect();
    let body = format!(r#"{{"writes":[{}]}}"#, writes.join(","));
    match agent()
        .post(&node.url("/v1/batch"))
        .content_type("application/json")
        .send(body.as_bytes())
    {
        Ok(mut r) => (
            r.status().as_u16(),
            r.body_mut().read_to_string().unwrap_or_default(),
        ),
        Err(e) => (0, e.to_string()),
    }
}

/// Whether an API answer (503) says the disk is full (its kind, its first failure, what to
/// do), or that the node is stopping (it stops once its disk failed, maybe at a peer's event).
/// Both wrote nothing.
fn disk_full(answer: &str) -> bool {
    (answer.contains(r#""kind":"disk_failed""#)
        && answer.contains("No space left on device")
        && answer.contains("once the disk is fixed"))
        || answer.contains(r#""kind":"shutting_down""#)
}

#[test]
fn a_full_disk_stops_the_node_and_a_restart_with_space_loses_nothing() {
    if std::env::var_os(INSIDE).is_none() {
        let text = common::run_inside(&["-m", "--propagation", "private"], INSIDE, TEST);
        for line in text.lines().filter(|l| l.starts_with("full disk:")) {
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
    let dir = tempfile::tempdir().unwrap();
    let configs = cluster(dir.path(), 2);
    let data = configs[1].parent().unwrap().join("data");
    std::fs::create_dir_all(&data).unwrap();
    sh(&format!(
        "mount -t tmpfs -o size=6m tmpfs '{}'",
        data.display()
    ));

    let n1 = Node::start(&configs[0]);
    let mut n2 = Node::start(&configs[1]);
    // Both take writes until node-2's disk is full: node-1's reach node-2 by replication.
    let (mut acked_1, mut acked_2) = (Vec::new(), Vec::new());
    let mut refused_2 = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut b = 0;
    while n2.child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "node-2 still runs after 120 s of writes on a 6 MiB disk; log:\n{}",
            std::fs::read_to_string(&n2.log).unwrap_or_default()
        );
        let (code, text) = write_batch(&n1, &format!("one{b}"), 50);
        assert_eq!(code, 200, "node-1 (its disk is not full): {text}");
        acked_1.push(format!("one{b}"));
        if refused_2.is_none() {
            match write_batch(&n2, &format!("two{b}"), 20) {
                (200, _) => acked_2.push(format!("two{b}")),
                (code, text) => refused_2 = Some((code, text)),
            }
        }
        b += 1;
    }
    let code = exit_code(&mut n2, Duration::from_secs(1));
    let log = std::fs::read_to_string(&n2.log).unwrap_or_default();
    assert_eq!(code, Some(4), "node-2 on a full disk; log:\n{log}");
    assert!(
        log.contains("No space left on device") && log.contains("once the disk is fixed"),
        "the log names neither the disk nor what to do:\n{log}"
    );
    if let Some((code, text)) = &refused_2 {
        assert!(
            *code == 0 || (*code == 503 && disk_full(text)),
            "a write refused for a full disk must say so: {code} {text}"
        );
    }
    eprintln!(
        "full disk: node-2 stopped after {} of node-1's batches and {} of its own; a write of its own refused: {:?}",
        acked_1.len(),
        acked_2.len(),
        refused_2.as_ref().map(|(c, _)| c)
    );

    // Restarted with the disk still full, it stops again, saying so, at a write it cannot
    // make (its own or node-1's); one that fits in pages the store freed may still be taken.
    let mut again = Node::spawn(&configs[1], &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut k = 0;
    while again.child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "node-2 runs on with its disk full"
        );
        match write_batch(&again, &format!("again{k}"), 20) {
            (200, _) => acked_2.push(format!("again{k}")),
            (0, _) => std::thread::sleep(Duration::from_millis(50)),
            (code, text) => assert!(code == 503 && disk_full(&text), "{code} {text}"),
        }
        k += 1;
    }
    assert_eq!(exit_code(&mut again, Duration::from_secs(1)), Some(4));
    drop(again);

    // Space freed: node-2 catches up, and every acknowledged write is on both nodes once.
    sh(&format!("mount -o remount,size=512m '{}'", data.display()));
    let n2 = Node::start(&configs[1]);
    let (code, text) = write_batch(&n2, "after", 20);
    assert_eq!(code, 200, "{text}");
    converge(&[&n1, &n2], Duration::from_secs(120));
    for node in [&n1, &n2] {
        for prefix in acked_1.iter().chain(&acked_2) {
            for i in [0, 19] {
                let (code, body) = get(node, "c", &format!("{prefix}-{i}"));
                assert_eq!(code, 200, "{prefix}-{i} lost: {body}");
            }
        }
    }
    let s = n2.status();
    let keys = s["state_entries"].as_u64().unwrap();
    let expected = acked_1.len() * 50 + acked_2.len() * 20 + 20;
    assert_eq!(
        keys as usize, expected,
        "node-2 holds {keys} keys, the acknowledged writes are {expected}"
    );
    let origins = &s["origins"];
    assert_eq!(
        origins["node-1"].as_u64().unwrap() as usize,
        acked_1.len() * 50,
        "{origins}"
    );
    assert_eq!(
        origins["node-2"].as_u64().unwrap() as usize,
        acked_2.len() * 20 + 20,
        "{origins}"
    );
}
