//! Helpers for tests that run the real `edgerep` binary.

#![allow(dead_code, unreachable_pub)]

pub mod hostile;
pub mod proxy;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_edgerep");

/// Runs `edgerep ARGS` to completion.
pub fn edgerep(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("running edgerep")
}

/// Runs `edgerep` with `args` (a `run` that must refuse to start) and waits at most 20 s for it
/// to exit: its exit code and stderr. Panics, after killing it, if it is still running then:
/// it started, as `what` says it must not.
pub fn refused_to_start(args: &[&str], what: &str) -> (Option<i32>, String) {
    let mut run = Command::new(BIN)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running edgerep");
    let deadline = Instant::now() + Duration::from_secs(20);
    let code = loop {
        if let Some(code) = run.try_wait().unwrap() {
            break code;
        }
        if Instant::now() > deadline {
            let _ = run.kill();
            let _ = run.wait();
            panic!("{what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut run.stderr.take().unwrap(), &mut err).unwrap();
    (code.code(), err)
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `edgerep init DIR --node-id ID`, returning the config path.
pub fn init(dir: &Path, node_id: &str) -> PathBuf {
    let o = edgerep(&["init", dir.to_str().unwrap(), "--node-id", node_id]);
    assert!(o.status.success(), "init failed: {}", stderr(&o));
    dir.join("edgerep.toml")
}

/// The API address from a config file.
pub fn api_addr(config: &Path) -> SocketAddr {
    edgerep_config::Config::load(config).unwrap().api.listen
}

/// A running `edgerep run` process.
pub struct Node {
    pub child: Child,
    pub config: PathBuf,
    pub addr: SocketAddr,
    pub log: PathBuf,
}

impl Node {
    /// Starts `edgerep run --config CONFIG` and waits until its API answers.
    pub fn start(config: &Path) -> Node {
        Node::start_with(config, &[])
    }

    /// [`Node::start`] with more arguments for `run` (such as `--alone`).
    pub fn start_with(config: &Path, args: &[&str]) -> Node {
        let node = Node::spawn(config, args);
        node.wait_ready();
        node
    }

    /// Starts `edgerep run --config CONFIG ARGS` without waiting for its API (a node that may
    /// stop at once).
    pub fn spawn(config: &Path, args: &[&str]) -> Node {
        let log = config.with_extension(format!("log.{}", std::process::id()));
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(BIN)
            .args(["run", "--config", config.to_str().unwrap()])
            .args(args)
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("spawning edgerep run");
        Node {
            child,
            config: config.to_path_buf(),
            addr: api_addr(config),
            log,
        }
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let agent = agent();
        while Instant::now() < deadline {
            // (401: the API answers, and wants a token.)
            if let Ok(r) = agent.get(&format!("http://{}/v1/status", self.addr)).call()
                && (r.status() == 200 || r.status() == 401)
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "node did not become ready; log:\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM and wait for a clean exit; returns the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id() as i32;
        send_signal(pid, "TERM");
        self.child.wait().unwrap()
    }

    pub fn status(&self) -> serde_json::Value {
        // A few tries: over a throttled loopback (`slow_link.rs`) a request's headers can take
        // longer to arrive than the node waits for them (10 s), and it closes the connection
        // unanswered; a node that is gone fails every try.
        let mut tries = 0;
        let mut r = loop {
            match agent().get(&self.url("/v1/status?verify=true")).call() {
                Ok(r) => break r,
                Err(e) if tries < 3 => {
                    tries += 1;
                    eprintln!("status of {}: {e}; trying again", self.addr);
                    std::thread::sleep(Duration::from_secs(1));
                }
                Err(e) => panic!("status of {}: {e}", self.addr),
            }
        };
        serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs test `test` of this test executable again inside `unshare UNSHARE... --` (a namespace
/// of its own: root, as on the CI machine), with `inside` set in its environment (the test
/// does its work when it finds it set). Panics unless the test ran there and passed; returns
/// what it printed.
pub fn run_inside(unshare: &[&str], inside: &str, test: &str) -> String {
    let me = std::env::current_exe().unwrap();
    let out = Command::new("unshare")
        .args(unshare)
        .arg("--")
        .arg(&me)
        .args(["--exact", test, "--nocapture"])
        .env(inside, "1")
        .output()
        .expect("running unshare (util-linux)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "inside the namespace:\n{text}");
    assert!(
        text.contains("1 passed"),
        "the test did not run inside:\n{text}"
    );
    text
}

/// Sends a signal with the `kill` command (keeps unsafe libc calls out of the tests).
pub fn send_signal(pid: i32, signal: &str) {
    let status = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .expect("running kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        // Longer than the node's own request timeout (30 s): the node's answer always comes
        // first (503 after the origin gate's 10 s wait, say, which a 10 s client sometimes
        // gave up on just before).
        .timeout_global(Some(Duration::from_secs(40)))
        .build()
        .into()
}

/// `edgerep init --cluster N DIR`, returning the config paths.
pub fn cluster(dir: &Path, n: usize) -> Vec<PathBuf> {
    let o = edgerep(&["init", "--cluster", &n.to_string(), dir.to_str().unwrap()]);
    assert!(o.status.success(), "init --cluster failed: {}", stderr(&o));
    (1..=n)
        .map(|i| dir.join(format!("node-{i}/edgerep.toml")))
        .collect()
}

/// Appends a `[[revoked]]` entry for `node` after `after_seq` to the config file at `config`
/// (taken in at the next reload).
pub fn revoke_in_config(config: &Path, node: &str, after_seq: u64) {
    let text = std::fs::read_to_string(config).unwrap();
    std::fs::write(
        config,
        format!("{text}\n[[revoked]]\nnode = \"{node}\"\nafter_seq = {after_seq}\n"),
    )
    .unwrap();
}

/// `edgerep reload --config CONFIG`; panics unless it succeeds.
pub fn reload(config: &Path) {
    let o = edgerep(&["reload", "--config", config.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// PUTs a JSON value and returns the sequence number the node gave it; panics unless 200.
pub fn put(node: &Node, collection: &str, key: &str, json: &str) -> u64 {
    let mut r = agent()
        .put(&node.url(&format!("/v1/kv/{collection}/{key}")))
        .content_type("application/json")
        .send(json.as_bytes())
        .unwrap();
    let body = r.body_mut().read_to_string().unwrap();
    assert_eq!(r.status(), 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    answer["seq"].as_u64().unwrap()
}

/// Resident memory of a process, in bytes (VmRSS in /proc).
pub fn rss_bytes(pid: u32) -> u64 {
    proc_status_bytes(pid, "VmRSS:")
}

/// Peak resident memory of a process so far, in bytes (VmHWM in /proc).
pub fn peak_rss_bytes(pid: u32) -> u64 {
    proc_status_bytes(pid, "VmHWM:")
}

/// A `kB` line of `/proc/PID/status`, in bytes. Panics if it cannot be read (the process is
/// gone, or no such line): a memory bound checked against a zero would pass whatever happened.
fn proc_status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/status for {field}: {e}"));
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or_else(|| panic!("/proc/{pid}/status has no {field} line in kB:\n{status}"));
    assert!(kb > 0, "/proc/{pid}/status says {field} 0 kB");
    kb * 1024
}

pub fn status(node: &Node) -> serde_json::Value {
    node.status()
}

/// The node's `GET /metrics` text.
pub fn metrics(node: &Node) -> String {
    let mut r = agent().get(&node.url("/metrics")).call().unwrap();
    assert_eq!(r.status(), 200);
    r.body_mut().read_to_string().unwrap()
}

/// Waits until every node reports the same digest and the same per-origin counts, and each
/// store verifies; panics with the statuses after `limit`.
/// Per node, the sum over its peers of a `traffic` counter in its status `s`.
pub fn traffic(s: &serde_json::Value, field: &str) -> u64 {
    s["replication"]["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["traffic"][field].as_u64().unwrap())
        .sum()
}

pub fn converge(nodes: &[&Node], limit: Duration) -> serde_json::Value {
    let deadline = Instant::now() + limit;
    loop {
        let all: Vec<serde_json::Value> = nodes.iter().map(|n| status(n)).collect();
        let same = all
            .windows(2)
            .all(|w| w[0]["digest"] == w[1]["digest"] && w[0]["origins"] == w[1]["origins"]);
        if same && all.iter().all(|s| s["verified"] == true) {
            return all[0].clone();
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = nodes
                .iter()
                .map(|n| std::fs::read_to_string(&n.log).unwrap_or_default())
                .collect();
            panic!(
                "no convergence after {limit:?}:\n{}\nlogs:\n{}",
                serde_json::to_string_pretty(&all).unwrap(),
                logs.join("\n-----\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn get(node: &Node, collection: &str, key: &str) -> (u16, String) {
    let mut r = agent()
        .get(&node.url(&format!("/v1/kv/{collection}/{key}")))
        .call()
        .unwrap();
    let status = r.status().as_u16();
    (status, r.body_mut().read_to_string().unwrap())
}

/// Path and sha256 of a Rust plugin built by `cargo xtask build-plugins`.
pub fn built_plugin(name: &str) -> (PathBuf, String) {
    built_plugin_of("rust", name)
}

/// Path and sha256 of a plugin built by `cargo xtask build-plugins` with `toolchain` (`rust`,
/// `tinygo` or `go`).
pub fn built_plugin_of(toolchain: &str, name: &str) -> (PathBuf, String) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/plugins")
        .join(toolchain);
    let sums = std::fs::read_to_string(dir.join("SHA256SUMS")).unwrap_or_else(|e| {
        panic!("target/plugins/{toolchain}/SHA256SUMS (run `cargo xtask build-plugins` first): {e}")
    });
    let file = format!("{name}.wasm");
    let sha = sums
        .lines()
        .find_map(|l| l.strip_suffix(&file).map(|h| h.trim().to_owned()))
        .unwrap_or_else(|| panic!("{file} not in SHA256SUMS"));
    (dir.join(file).canonicalize().unwrap(), sha)
}

/// POSTs one JSON batch to `node`: each of `writes` a (key, value as JSON) of `collection`.
/// Returns the answer; panics unless it is 200.
pub fn batch(
    node: &Node,
    collection: &str,
    writes: impl IntoIterator<Item = (String, String)>,
) -> serde_json::Value {
    let writes: Vec<String> = writes
        .into_iter()
        .map(|(key, value)| {
            format!(r#"{{"collection":"{collection}","key":"{key}","value":{value}}}"#)
        })
        .collect();
    let body = format!(r#"{{"writes":[{}]}}"#, writes.join(","));
    let mut r = agent()
        .post(&node.url("/v1/batch"))
        .content_type("application/json")
        .send(body.as_bytes())
        .unwrap();
    let text = r.body_mut().read_to_string().unwrap();
    assert_eq!(r.status(), 200, "{text}");
    serde_json::from_str(&text).unwrap()
}

/// `edgerep debug damage` on a stopped node's store: removes `key` of `collection` behind the
/// store's bookkeeping, or with `flip` makes its row unreadable.
pub fn damage(config: &Path, collection: &str, key: &str, flip: bool) -> Output {
    let mut args = vec![
        "debug",
        "damage",
        "--config",
        config.to_str().unwrap(),
        "--collection",
        collection,
        "--key",
        key,
    ];
    if flip {
        args.push("--flip-byte");
    }
    edgerep(&args)
}
