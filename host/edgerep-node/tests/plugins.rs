//! Plugins wired into a running node: hostile plugins under each failure policy, dead letters
//! and their replay, refusal at start (hash mismatch, wrong world), and resolver plugins deciding
//! concurrent versions. The plugins are the real components built by `cargo xtask build-plugins`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use edgerep_config::Config;
use edgerep_node::RunningNode;
use edgerep_store::Store;
use edgerep_wire::event::FORMAT_VERSION;
use edgerep_wire::{DecodeLimits, Event, Hlc, NodeId, Op, Value, VersionVector};
use serde_json::{Value as Json, json};

fn plugin_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/plugins/rust")
}

/// Path and sha256 of a built plugin; fails the test if it was not built.
fn plugin(name: &str) -> (String, String) {
    let path = plugin_dir().join(format!("{name}.wasm"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; build the plugins first with `cargo xtask build-plugins`",
            path.display()
        )
    });
    let runtime = edgerep_plugin::Runtime::new(None).unwrap();
    let sha = runtime.inspect(&bytes).unwrap().sha256;
    (path.display().to_string(), sha)
}

fn plugin_table(table: &str, file: &str, extra: &str) -> String {
    let (path, sha) = plugin(file);
    format!("[plugins.{table}]\npath = '{path}'\nsha256 = \"{sha}\"\n{extra}\n")
}

fn collection(name: &str, ingest: &[&str], resolver: &str) -> String {
    let list: Vec<String> = ingest.iter().map(|p| format!("{p:?}")).collect();
    format!(
        "[[collections.declared]]\nname = \"{name}\"\ntransforms_on_ingest = [{}]\nresolver = \"{resolver}\"\n",
        list.join(", ")
    )
}

fn config_text(dir: &Path, body: &str) -> String {
    format!(
        "[node]\nid = \"site-a\"\ndata_dir = '{}'\n[api]\nlisten = \"127.0.0.1:0\"\n[replication]\nlisten = \"127.0.0.1:1\"\n\
         [collections]\naccept_undeclared = true\n{body}",
        dir.join("data").display()
    )
}

fn config(dir: &Path, body: &str) -> Config {
    Config::parse(&config_text(dir, body), &dir.join("edgerep.toml")).expect("test config parses")
}

struct Node {
    runtime: tokio::runtime::Runtime,
    node: Option<RunningNode>,
    agent: ureq::Agent,
}

struct Resp {
    status: u16,
    headers: BTreeMap<String, String>,
    body: Json,
}

impl Node {
    fn start(config: Config) -> Node {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let node = runtime
            .block_on(edgerep_node::start(config))
            .expect("node starts");
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        Node {
            runtime,
            node: Some(node),
            agent,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.node.as_ref().unwrap().api_addr)
    }

    fn finish(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Resp {
        let mut r = r.expect("request");
        let headers = r
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        let text = r.body_mut().read_to_string().unwrap();
        Resp {
            status: r.status().as_u16(),
            headers,
            body: serde_json::from_str(&text).unwrap_or(Json::String(text)),
        }
    }

    fn put(&self, path: &str, value: Json) -> Resp {
        Node::finish(
            self.agent
                .put(&self.url(path))
                .content_type("application/json")
                .send(value.to_string().as_bytes()),
        )
    }

    fn post(&self, path: &str, body: Json) -> Resp {
        Node::finish(
            self.agent
                .post(&self.url(path))
                .content_type("application/json")
                .send(body.to_string().as_bytes()),
        )
    }

    fn get(&self, path: &str) -> Resp {
        Node::finish(self.agent.get(&self.url(path)).call())
    }

    fn stop(mut self) {
        let node = self.node.take().unwrap();
        self.runtime.block_on(node.shutdown()).unwrap();
    }
}

/// A keyed write a plugin fails on is set aside once: the key is recorded with the failure, so
/// a retry (its answer lost, say) gets the same answer, marked replayed, instead of running the
/// plugin and keeping a second dead letter (replaying both would commit the write twice). The
/// same for a keyed batch whose every write failed.
#[test]
fn a_retried_keyed_write_a_plugin_failed_on_is_set_aside_once() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(hostile_config(dir.path()));
    let keyed = |method: &str, path: &str, key: &str, body: Json| {
        let url = node.url(path);
        let request = if method == "PUT" {
            node.agent.put(&url)
        } else {
            node.agent.post(&url)
        };
        Node::finish(
            request
                .header("idempotency-key", key)
                .content_type("application/json")
                .send(body.to_string().as_bytes()),
        )
    };
    let dead_letters = || {
        node.get("/v1/dead-letters").body["dead_letters"]
            .as_array()
            .map_or(0, Vec::len)
    };
    let first = keyed("PUT", "/v1/kv/trap/k", "retry-1", json!({"n": 1}));
    assert_eq!(first.status, 422, "{}", first.body);
    assert_eq!(first.body["dead_letter"], 1, "{}", first.body);
    for _ in 0..3 {
        let again = keyed("PUT", "/v1/kv/trap/k", "retry-1", json!({"n": 1}));
        assert_eq!(again.status, 422, "{}", again.body);
        assert_eq!(again.body, first.body);
        assert_eq!(
            again.headers.get("idempotent-replayed").map(String::as_str),
            Some("true")
        );
    }
    assert_eq!(dead_letters(), 1, "set aside once");
    // The same key with another body is refused, as for a committed write.
    let other = keyed("PUT", "/v1/kv/trap/k", "retry-1", json!({"n": 2}));
    assert_eq!(other.status, 409, "{}", other.body);

    let writes = json!({"writes": [
        {"collection": "trap", "key": "b1", "value": 1},
        {"collection": "trap", "key": "b2", "value": 2},
    ]});
    let first = keyed("POST", "/v1/batch", "retry-2", writes.clone());
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.body["rejected"].as_array().map(Vec::len), Some(2));
    let again = keyed("POST", "/v1/batch", "retry-2", writes);
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.body, first.body);
    assert_eq!(
        again.headers.get("idempotent-replayed").map(String::as_str),
        Some("true")
    );
    assert_eq!(dead_letters(), 3);

    // Per-write keys: the write that committed and the one refused each answer from their own
    // record on a retry; nothing is set aside again.
    let writes = json!({"writes": [
        {"collection": "plain", "key": "p1", "value": 1, "idempotency_key": "w-1"},
        {"collection": "trap", "key": "t1", "value": 2, "idempotency_key": "w-2"},
    ]});
    let first = node.post("/v1/batch", writes.clone());
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.body["committed"].as_array().map(Vec::len), Some(1));
    assert_eq!(first.body["rejected"][0]["write"], 1, "{}", first.body);
    assert_eq!(dead_letters(), 4);
    let again = node.post("/v1/batch", writes);
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.body, first.body);
    assert_eq!(
        again.headers.get("idempotent-replayed").map(String::as_str),
        Some("true")
    );
    assert_eq!(dead_letters(), 4, "set aside once");
    // The refused write retried alone: its refusal is numbered as in this request.
    let alone = json!({"writes": [
        {"collection": "trap", "key": "t1", "value": 2, "idempotency_key": "w-2"},
    ]});
    let again = node.post("/v1/batch", alone);
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.body["rejected"].as_array().map(Vec::len), Some(1));
    assert_eq!(again.body["rejected"][0]["write"], 0, "{}", again.body);
    assert_eq!(dead_letters(), 4, "set aside once");
    // Two keys on one request: refused, nothing set aside or written.
    let twice = Node::finish(
        node.agent
            .put(&node.url("/v1/kv/plain/two-keys"))
            .header("idempotency-key", "one")
            .header("idempotency-key", "two")
            .content_type("application/json")
            .send(json!({"n": 1}).to_string().as_bytes()),
    );
    assert_eq!(twice.status, 400, "{}", twice.body);
    assert_eq!(twice.body["kind"], "bad_idempotency_key", "{}", twice.body);
    assert_eq!(node.get("/v1/kv/plain/two-keys").status, 404);
    node.stop();
}

/// A request sent with `Idempotency-Key` as a header or a field.
fn keyed(node: &Node, method: &str, path: &str, key: Option<&str>, body: Json) -> Resp {
    let url = node.url(path);
    let mut request = if method == "PUT" {
        node.agent.put(&url)
    } else {
        node.agent.post(&url)
    };
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    Node::finish(
        request
            .content_type("application/json")
            .send(body.to_string().as_bytes()),
    )
}

fn replayed(r: &Resp) -> bool {
    r.headers.get("idempotent-replayed").map(String::as_str) == Some("true")
}

/// A key names one request in one shape, and one try of it at a time: a batch of one write is
/// not answered from a single write's record (the single write's refusal would come back as an
/// empty success), a write a transform dropped is answered "dropped" from its record, and
/// concurrent tries of a keyed request a plugin fails on set it aside once.
#[test]
fn a_key_names_one_shape_of_request_and_one_try_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let body = [
        plugin_table("trap", "trap", ""),
        plugin_table("spin", "spin", "fuel = 50000000"),
        plugin_table(
            "filter",
            "filter",
            "params = { field = \"drop\", equals = \"yes\" }",
        ),
        collection("trap", &["trap"], "lww"),
        collection("spin", &["spin"], "lww"),
        collection("filtered", &["filter"], "lww"),
    ]
    .concat();
    let node = Node::start(config(dir.path(), &body));
    let dead_letters = || {
        node.get("/v1/dead-letters").body["dead_letters"]
            .as_array()
            .map_or(0, Vec::len)
    };

    // One write refused by a plugin, its key then sent on a batch of that write.
    let one = keyed(
        &node,
        "PUT",
        "/v1/kv/trap/s",
        Some("shape"),
        json!({"n": 1}),
    );
    assert_eq!(one.status, 422, "{}", one.body);
    let write = json!({"collection": "trap", "key": "s", "value": {"n": 1}});
    let batch = keyed(
        &node,
        "POST",
        "/v1/batch",
        Some("shape"),
        json!({"writes": [write.clone()]}),
    );
    assert_eq!(batch.status, 409, "{}", batch.body);
    assert_eq!(
        batch.body["kind"], "idempotency_key_reused",
        "{}",
        batch.body
    );
    let mut field = write.clone();
    field["idempotency_key"] = json!("shape");
    let per_write = keyed(&node, "POST", "/v1/batch", None, json!({"writes": [field]}));
    assert_eq!(per_write.status, 409, "{}", per_write.body);
    // The batch's own key, then sent with one write of a batch: also another request.
    let b = keyed(
        &node,
        "POST",
        "/v1/batch",
        Some("batch-shape"),
        json!({"writes": [write.clone()]}),
    );
    assert_eq!(b.status, 200, "{}", b.body);
    let mut field = write.clone();
    field["idempotency_key"] = json!("batch-shape");
    let per_write = keyed(&node, "POST", "/v1/batch", None, json!({"writes": [field]}));
    assert_eq!(per_write.status, 409, "{}", per_write.body);
    assert_eq!(dead_letters(), 2, "one for the PUT, one for the batch");

    // Dropped by a transform: the retry is answered from the record.
    let dropped = keyed(
        &node,
        "PUT",
        "/v1/kv/filtered/d",
        Some("drop-1"),
        json!({"drop": "yes"}),
    );
    assert_eq!(dropped.status, 200, "{}", dropped.body);
    assert!(dropped.body["dropped"].is_string(), "{}", dropped.body);
    assert!(!replayed(&dropped));
    let again = keyed(
        &node,
        "PUT",
        "/v1/kv/filtered/d",
        Some("drop-1"),
        json!({"drop": "yes"}),
    );
    assert_eq!(again.body, dropped.body);
    assert!(replayed(&again), "the dropped write's key was recorded");
    let writes = json!({"writes": [
        {"collection": "filtered", "key": "d2", "value": {"drop": "yes"}, "idempotency_key": "drop-2"},
    ]});
    let first = keyed(&node, "POST", "/v1/batch", None, writes.clone());
    assert_eq!(first.status, 200, "{}", first.body);
    let again = keyed(&node, "POST", "/v1/batch", None, writes);
    assert_eq!(again.body, first.body);
    assert!(
        replayed(&again),
        "the dropped batch write's key was recorded"
    );
    assert_eq!(node.get("/v1/kv/filtered/d").status, 404);

    // Eight tries of one keyed write at once, each running out of fuel in the plugin: one
    // runs; the others are refused as in use (retryable) or answered from its record.
    let before = dead_letters();
    let answers: Vec<Resp> = std::thread::scope(|s| {
        let tries: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| keyed(&node, "PUT", "/v1/kv/spin/r", Some("race"), json!({"n": 1})))
            })
            .collect();
        tries.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let ran: Vec<&Resp> = answers
        .iter()
        .filter(|r| r.status == 422 && !replayed(r))
        .collect();
    assert_eq!(ran.len(), 1, "one try ran the plugin");
    for r in &answers {
        match r.status {
            422 => assert_eq!(r.body, ran[0].body),
            409 => assert_eq!(r.body["kind"], "idempotency_key_in_use", "{}", r.body),
            other => panic!("status {other}: {}", r.body),
        }
    }
    assert_eq!(dead_letters(), before + 1, "set aside once");
    node.stop();
}

/// A node whose API answers 408 after 300 ms, with collection `spin` whose plugin spins until
/// its 1.5 s deadline; `api` adds lines to `[api]`.
fn slow_spin_node(dir: &Path, api: &str) -> Node {
    let body = [
        plugin_table("spin", "spin", "fuel = 100000000000\ndeadline_ms = 1500"),
        collection("spin", &["spin"], "lww"),
    ]
    .concat();
    let text = config_text(dir, &body).replace(
        "listen = \"127.0.0.1:0\"\n",
        &format!("listen = \"127.0.0.1:0\"\nrequest_timeout_ms = 300\n{api}"),
    );
    Node::start(Config::parse(&text, &dir.join("edgerep.toml")).expect("config parses"))
}

/// A keyed write whose client stopped waiting (the node's request timeout) runs on holding its
/// key: a retry meanwhile is refused as in use at once, not run a second time beside it; once
/// the first is done, the retry gets its answer.
#[test]
fn a_keyed_write_whose_client_stopped_waiting_keeps_its_key_until_done() {
    let dir = tempfile::tempdir().unwrap();
    let node = slow_spin_node(dir.path(), "");
    let first = keyed(&node, "PUT", "/v1/kv/spin/k", Some("slow"), json!({"n": 1}));
    assert_eq!(first.status, 408, "{}", first.body);
    let again = keyed(&node, "PUT", "/v1/kv/spin/k", Some("slow"), json!({"n": 1}));
    assert_eq!(again.status, 409, "{}", again.body);
    assert_eq!(
        again.body["kind"], "idempotency_key_in_use",
        "{}",
        again.body
    );
    // The first try ends (its plugin's deadline): its answer is recorded with its dead letter.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let last = loop {
        let r = keyed(&node, "PUT", "/v1/kv/spin/k", Some("slow"), json!({"n": 1}));
        if r.status != 409 && r.status != 408 {
            break r;
        }
        assert!(std::time::Instant::now() < deadline, "{}", r.body);
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(last.status, 422, "{}", last.body);
    assert!(replayed(&last), "answered from the first try's record");
    let dead = node.get("/v1/dead-letters").body["dead_letters"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(dead, 1);
    node.stop();
}

/// Write requests whose clients stopped waiting run on in tasks of their own, at most
/// `api.max_connections` of them: beyond, a write is refused (503, nothing written) rather than
/// piling up tasks for clients that hang up.
#[test]
fn writes_running_on_for_clients_that_left_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let node = slow_spin_node(dir.path(), "max_connections = 2\n");
    for key in ["left-1", "left-2"] {
        let r = keyed(&node, "PUT", "/v1/kv/spin/k", Some(key), json!({"n": 1}));
        assert_eq!(r.status, 408, "{}", r.body);
    }
    let refused = keyed(
        &node,
        "PUT",
        "/v1/kv/spin/k",
        Some("third"),
        json!({"n": 1}),
    );
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(
        refused.body["kind"], "too_many_requests",
        "{}",
        refused.body
    );
    // Once they end, writes run again.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = keyed(
            &node,
            "PUT",
            "/v1/kv/plain/k",
            Some("later"),
            json!({"n": 1}),
        );
        if r.status == 200 {
            break;
        }
        assert_eq!(r.status, 503, "{}", r.body);
        assert!(std::time::Instant::now() < deadline, "{}", r.body);
        std::thread::sleep(Duration::from_millis(100));
    }
    node.stop();
}

/// Transforms on ingest that fan out: each call stays within the per-call limits, but a chain
/// multiplies (two `fanout`s of 10 make 100 writes of one), and a batch adds up. Before, nothing
/// bounded the total: one request could build writes without end. Now one write's chain may
/// make at most `limits.max_batch_events` writes (else the plugin's fault, bad-output), and
/// one request's writes as made at most as many (else 413, nothing written).
#[test]
fn transforms_that_fan_out_are_bounded_by_the_batch_limit() {
    let start_with = |max: usize, extra: &str| {
        let dir = tempfile::tempdir().unwrap();
        let body = [
            plugin_table("fan-a", "fanout", ""),
            plugin_table("fan-b", "fanout", ""),
            collection("fan", &["fan-a", "fan-b"], "lww"),
            format!("[limits]\nmax_batch_events = {max}\n{extra}"),
        ]
        .concat();
        (Node::start(config(dir.path(), &body)), dir)
    };
    let start = |max: usize| start_with(max, "");
    // 100 writes of one write: over a limit of 50, the chain's fault.
    let (node, _dir) = start(50);
    let r = node.put("/v1/kv/fan/k", json!({"n": 1}));
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.body["failure"], "bad-output", "{}", r.body);
    let message = r.body["error"].as_str().unwrap_or_default();
    assert!(
        message.contains("more than 50 writes of one write"),
        "{message}"
    );
    assert_eq!(node.get("/v1/kv/fan/k-0-0").status, 404);
    node.stop();

    // Within a limit of 250: one write makes 100; a batch of three would make 300.
    let (node, _dir) = start(250);
    let r = node.put("/v1/kv/fan/k", json!({"n": 1}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["committed"].as_array().map(Vec::len), Some(100));
    assert_eq!(node.get("/v1/kv/fan/k-9-9").status, 200);
    let before = node.get("/v1/status").body["feed_last"].clone();
    let writes: Vec<Json> = (0..3)
        .map(|i| json!({"collection": "fan", "key": format!("b{i}"), "value": i}))
        .collect();
    let r = node.post("/v1/batch", json!({ "writes": writes }));
    assert_eq!(r.status, 413, "{}", r.body);
    assert_eq!(r.body["kind"], "too_many_writes", "{}", r.body);
    let message = r.body["error"].as_str().unwrap_or_default();
    assert!(
        message.contains("made 300 writes of this request"),
        "{message}"
    );
    assert_eq!(node.get("/v1/status").body["feed_last"], before);
    assert_eq!(node.get("/v1/kv/fan/b0-0-0").status, 404);
    node.stop();

    // Within the count, over the bytes: one write of 1 KiB made 100 writes (100 KiB), over
    // 4 x max_request_bytes (32 KiB). 413, nothing written.
    let (node, _dir) = start_with(250, "max_request_bytes = 8192\nmax_value_bytes = 4096\n");
    let r = node.put("/v1/kv/fan/k", json!({"pad": "x".repeat(1000)}));
    assert_eq!(r.status, 413, "{}", r.body);
    assert_eq!(r.body["kind"], "writes_too_large", "{}", r.body);
    let message = r.body["error"].as_str().unwrap_or_default();
    assert!(
        message.contains("over 32768 (4 x limits.max_request_bytes)"),
        "{message}"
    );
    assert_eq!(node.get("/v1/kv/fan/k-0-0").status, 404);
    node.stop();
}

fn hostile_config(dir: &Path) -> Config {
    let body = [
        plugin_table("spin", "spin", "fuel = 2000000"),
        plugin_table(
            "balloon",
            "balloon",
            "fuel = 2000000000\nmemory_bytes = 4194304",
        ),
        plugin_table("trap", "trap", ""),
        plugin_table(
            "flood",
            "flood",
            "fuel = 2000000000\nmemory_bytes = 8388608",
        ),
        plugin_table("trap-skip", "trap", "on_failure = \"skip\""),
        plugin_table("trap-halt", "trap", "on_failure = \"halt\""),
        plugin_table("redact", "redact", "params = { remove = \"card\" }"),
        plugin_table(
            "route-to-halting",
            "fanout",
            "params = { copies = \"1\", to = \"halting\" }",
        ),
        collection("spin", &["spin"], "lww"),
        collection("balloon", &["balloon"], "lww"),
        collection("trap", &["trap"], "lww"),
        collection("flood", &["flood"], "lww"),
        collection("skipping", &["trap-skip"], "lww"),
        collection("halting", &["trap-halt"], "lww"),
        collection("orders", &["redact"], "lww"),
        collection("routed", &["route-to-halting"], "lww"),
    ]
    .concat();
    config(dir, &body)
}

#[test]
fn hostile_plugins_land_in_dead_letters_and_the_node_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(hostile_config(dir.path()));
    let cases = [
        ("spin", "out-of-fuel"),
        ("balloon", "memory-limit"),
        ("trap", "trap"),
        ("flood", "memory-limit"),
    ];
    for (round, (coll, failure)) in cases.iter().enumerate() {
        let r = node.put(&format!("/v1/kv/{coll}/k1"), json!({"n": 1}));
        assert_eq!(r.status, 422, "{coll}: {}", r.body);
        assert_eq!(r.body["kind"], "plugin_failed", "{coll}");
        assert_eq!(r.body["failure"], *failure, "{coll}: {}", r.body);
        assert_eq!(r.body["plugin"], *coll);
        let id = r.body["dead_letter"]
            .as_u64()
            .expect("kept as a dead letter");
        assert_eq!(id, round as u64 + 1);
        // The dead letter has the reason, the plugin and its hash, the fuel, the original write.
        let d = node.get(&format!("/v1/dead-letters/{id}"));
        assert_eq!(d.status, 200);
        assert_eq!(d.body["failure"], *failure);
        assert_eq!(d.body["plugin"], *coll);
        assert_eq!(d.body["plugin_sha256"], plugin(coll).1);
        assert_eq!(d.body["collection"], *coll);
        assert_eq!(d.body["key"], "k1");
        assert_eq!(d.body["value"], json!({"n": 1}));
        assert!(d.body["fuel_used"].as_u64().unwrap() > 0);
        assert!(!d.body["event_base64"].as_str().unwrap().is_empty());
        // Nothing was written to the collection.
        assert_eq!(node.get(&format!("/v1/kv/{coll}/k1")).status, 404);
        // Other collections are unaffected, and the next good event goes through.
        let ok = node.put(&format!("/v1/kv/plain/after-{coll}"), json!(round));
        assert_eq!(ok.status, 200, "{}", ok.body);
        let ok = node.put("/v1/kv/orders/o", json!({"card": "4111", "qty": round}));
        assert_eq!(ok.status, 200, "{}", ok.body);
        assert_eq!(
            node.get("/v1/kv/orders/o").body,
            json!({"qty": round}),
            "redact ran"
        );
    }
    let list = node.get("/v1/dead-letters");
    let ids: Vec<u64> = list.body["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [1, 2, 3, 4]);

    // skip: refused, nothing kept.
    let r = node.put("/v1/kv/skipping/k", json!(1));
    assert_eq!(
        (
            r.status,
            r.body["policy"].clone(),
            r.body["dead_letter"].clone()
        ),
        (422, json!("skip"), Json::Null)
    );
    assert_eq!(
        node.get("/v1/dead-letters").body["dead_letters"]
            .as_array()
            .unwrap()
            .len(),
        4
    );

    // halt: refused as a whole and nothing kept (the client retries it once the plugin is
    // fixed; a dead letter as well would commit it twice, by the retry and by a replay), and
    // the collection stops taking writes; others go on.
    let r = node.put("/v1/kv/halting/k", json!(1));
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.body["kind"], "collection_halted");
    let r = node.put("/v1/kv/halting/k2", json!(2));
    assert_eq!(r.status, 503);
    assert!(
        r.body["error"].as_str().unwrap().contains("trap-halt"),
        "{}",
        r.body
    );
    // Nor through a transform of another collection that routes its writes there (before,
    // they were committed into the halted collection).
    let r = node.put("/v1/kv/routed/k3", json!(3));
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.body["kind"], "collection_halted", "{}", r.body);
    assert_eq!(node.get("/v1/kv/halting/k3-0").status, 404);
    assert_eq!(node.put("/v1/kv/plain/x", json!(1)).status, 200);
    assert_eq!(
        node.get("/v1/dead-letters").body["dead_letters"]
            .as_array()
            .unwrap()
            .len(),
        4
    );

    // A batch: the failing write is dead-lettered, the others commit.
    let r = node.post(
        "/v1/batch",
        json!({"writes": [
            {"collection": "plain", "key": "b1", "value": 1},
            {"collection": "trap", "key": "b2", "value": 2},
            {"collection": "plain", "key": "b3", "value": 3},
        ]}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["committed"].as_array().unwrap().len(), 2);
    assert_eq!(r.body["rejected"][0]["write"], 1);
    assert_eq!(r.body["rejected"][0]["failure"], "trap");
    assert_eq!(r.body["rejected"][0]["dead_letter"], 5);

    // Metrics per plugin, and the halted collection, in status.
    let s = node.get("/v1/status?verify=true").body;
    assert_eq!(s["verified"], true);
    assert_eq!(s["dead_letters"], 5);
    assert_eq!(
        s["plugins"]["spin"]["errors"]["out-of-fuel"], 1,
        "{}",
        s["plugins"]["spin"]
    );
    assert_eq!(s["plugins"]["trap"]["errors"]["trap"], 2);
    assert!(s["plugins"]["redact"]["calls"].as_u64().unwrap() >= 4);
    assert!(
        s["plugins"]["redact"]["fuel_per_call"]["p50"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert!(s["halted_collections"]["halting"].is_string());
    // And in the metrics, which said nothing of a halt at ingest before.
    let metrics = node.get("/metrics").body;
    let metrics = metrics.as_str().unwrap_or_default();
    assert!(
        metrics.contains(r#"edgerep_collection_stopped{collection="halting",why="halted"} 1"#),
        "{metrics}"
    );
    node.stop();
}

#[test]
fn replay_commits_once_with_the_current_plugins() {
    let dir = tempfile::tempdir().unwrap();
    // filter with too little fuel fails with out-of-fuel.
    let broken = [
        plugin_table(
            "filter",
            "filter",
            "params = { field = \"status\", equals = \"drop\" }\nfuel = 100",
        ),
        collection("readings", &["filter"], "lww"),
    ]
    .concat();
    let node = Node::start(config(dir.path(), &broken));
    let r = node.put("/v1/kv/readings/r1", json!({"status": "ok", "v": 1}));
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.body["failure"], "out-of-fuel");
    let id = r.body["dead_letter"].as_u64().unwrap();
    // Replaying with the same plugins fails again and keeps the dead letter.
    let again = node.post(&format!("/v1/dead-letters/{id}/replay"), json!(null));
    assert_eq!(again.status, 422, "{}", again.body);
    let message = again.body["error"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("dead letter {id} stays")) && !message.contains("policy skip"),
        "{message}"
    );
    assert_eq!(node.get(&format!("/v1/dead-letters/{id}")).status, 200);
    // Ids start at 1: id 0 names no dead letter (it used to read, and replay, dead letter 1).
    assert_eq!(id, 1, "the first dead letter of this node");
    assert_eq!(node.get("/v1/dead-letters/0").status, 404);
    let zero = node.post("/v1/dead-letters/0/replay", json!(null));
    assert_eq!(zero.status, 404, "{}", zero.body);
    assert_eq!(node.get(&format!("/v1/dead-letters/{id}")).status, 200);
    node.stop();

    // The operator gives it its fuel and restarts: the replay commits and removes the entry.
    let fixed = [
        plugin_table(
            "filter",
            "filter",
            "params = { field = \"status\", equals = \"drop\" }",
        ),
        collection("readings", &["filter"], "lww"),
    ]
    .concat();
    let node = Node::start(config(dir.path(), &fixed));
    let r = node.post(&format!("/v1/dead-letters/{id}/replay"), json!(null));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["replayed"], id);
    assert_eq!(
        node.get("/v1/kv/readings/r1").body,
        json!({"status": "ok", "v": 1})
    );
    assert_eq!(node.get(&format!("/v1/dead-letters/{id}")).status, 404);
    // A retry (its answer lost) gets the same answer, and nothing is committed again.
    let origins = node.get("/v1/status").body["origins"].clone();
    let twice = node.post(&format!("/v1/dead-letters/{id}/replay"), json!(null));
    assert_eq!(
        twice.status, 200,
        "a replay's answer is kept: {}",
        twice.body
    );
    assert_eq!(twice.body, r.body);
    assert_eq!(node.get("/v1/status").body["origins"], origins);
    let s = node.get("/v1/status?verify=true").body;
    assert_eq!(
        (s["verified"].clone(), s["dead_letters"].clone()),
        (json!(true), json!(0))
    );
    // The filter drops what matches, and a dropped write commits nothing.
    let r = node.put("/v1/kv/readings/r2", json!({"status": "drop"}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["committed"], json!([]));
    assert!(
        r.body["dropped"]
            .as_str()
            .is_some_and(|d| d.contains("dropped the write")),
        "the answer says the write was dropped: {}",
        r.body
    );
    assert_eq!(node.get("/v1/kv/readings/r2").status, 404);
    node.stop();
}

#[test]
fn bad_plugins_refuse_to_start_with_clear_messages() {
    let dir = tempfile::tempdir().unwrap();
    let (path, sha) = plugin("redact");
    let wrong = "0".repeat(64);
    let text = format!(
        "[plugins.redact]\npath = '{path}'\nsha256 = \"{wrong}\"\n{}",
        collection("orders", &["redact"], "lww")
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let err = rt
        .block_on(edgerep_node::start(config(dir.path(), &text)))
        .unwrap_err()
        .to_string();
    assert!(err.contains("redact.wasm"), "{err}");
    assert!(
        err.contains(&wrong) && err.contains(&sha),
        "names both hashes: {err}"
    );

    // A resolver used as a transform, and a transform used as a resolver.
    let text = [
        plugin_table("counter", "merge-counter", ""),
        collection("c", &["counter"], "lww"),
    ]
    .concat();
    let err = rt
        .block_on(edgerep_node::start(config(dir.path(), &text)))
        .unwrap_err()
        .to_string();
    assert!(err.contains("is a resolver, not a transform"), "{err}");
    let text = [
        plugin_table("redact", "redact", ""),
        collection("c", &[], "redact"),
    ]
    .concat();
    let err = rt
        .block_on(edgerep_node::start(config(dir.path(), &text)))
        .unwrap_err()
        .to_string();
    assert!(err.contains("is a transform, not a resolver"), "{err}");

    // A file that is not a component.
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"\0asm\x01\0\0\0").unwrap();
    let text = format!(
        "[plugins.junk]\npath = '{}'\nsha256 = \"{}\"\n",
        junk.display(),
        {
            edgerep_plugin::Runtime::new(None)
                .unwrap()
                .inspect(b"\0asm\x01\0\0\0")
                .map(|i| i.sha256)
                .unwrap_or_else(|_| "ab".repeat(32))
        }
    );
    let err = rt
        .block_on(edgerep_node::start(config(dir.path(), &text)))
        .unwrap_err()
        .to_string();
    assert!(err.contains("junk"), "{err}");
}

/// Applies `events` to the store of the node in `dir` before it starts, as replication would
/// have (under the node's limits: a store refuses to open under lower ones than before).
fn applied_before_start(dir: &Path, events: Vec<Event>) {
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let (store, _) = Store::open(
        &dir.join("data/edgerep.redb"),
        &NodeId::parse("site-a").unwrap(),
        edgerep_node::event_limits(&config(dir, "")),
    )
    .unwrap();
    edgerep_store::StoreWriter::new(store)
        .apply_events(events)
        .unwrap();
}

fn counter_event(origin: &str, counts: Json, hlc: u64) -> Event {
    Event {
        format: FORMAT_VERSION,
        collection: "counters".into(),
        key: b"visits".to_vec(),
        op: Op::Put,
        value: Some(Value::from_json(&counts, &DecodeLimits::default()).unwrap()),
        hlc: Hlc::new(hlc, 0),
        origin: NodeId::parse(origin).unwrap(),
        seq: 1,
        schema: 0,
        meta: BTreeMap::new(),
        context: VersionVector::new(),
        extra: BTreeMap::new(),
    }
}

#[test]
fn resolver_plugin_merges_concurrent_versions_and_failures_fall_back_to_lww() {
    let dir = tempfile::tempdir().unwrap();
    // Concurrent writes to one key from three sites, as replication would apply them.
    let mut bad = counter_event("site-f", json!("not a counter map"), 50);
    bad.collection = "broken".into();
    let mut other = counter_event("site-e", json!({"x": 1}), 40);
    other.collection = "broken".into();
    applied_before_start(
        dir.path(),
        vec![
            counter_event("site-b", json!({"site-b": 5, "site-c": 1}), 30),
            counter_event("site-c", json!({"site-b": 2, "site-c": 7}), 10),
            counter_event("site-d", json!({"site-d": 3}), 20),
            bad,
            other,
        ],
    );
    let body = [
        plugin_table("merge-counter", "merge-counter", ""),
        collection("counters", &[], "merge-counter"),
        collection("broken", &[], "merge-counter"),
    ]
    .concat();
    let node = Node::start(config(dir.path(), &body));
    let r = node.get("/v1/kv/counters/visits");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.body,
        json!({"site-b": 5, "site-c": 7, "site-d": 3}),
        "per-origin maximum"
    );
    assert_eq!(r.headers["x-edgerep-resolved-by"], "plugin:merge-counter");
    assert_eq!(r.headers["x-edgerep-versions"], "3");
    let scan = node.get("/v1/scan/counters").body;
    assert_eq!(
        scan["items"][0]["value"],
        json!({"site-b": 5, "site-c": 7, "site-d": 3})
    );
    assert_eq!(scan["items"][0]["resolved_by"], "plugin:merge-counter");

    // The resolver fails on a value that is not a counter map: last-writer-wins decides, and says so.
    let r = node.get("/v1/kv/broken/visits");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.headers["x-edgerep-resolved-by"],
        "lww-fallback:merge-counter"
    );
    assert_eq!(r.body, json!("not a counter map"), "highest hlc wins");
    let s = node.get("/v1/status").body;
    assert_eq!(s["plugins"]["merge-counter"]["fallbacks_to_lww"], 1);
    assert_eq!(
        s["plugins"]["merge-counter"]["errors"]["plugin-error"], 1,
        "{}",
        s["plugins"]
    );
    node.stop();
}

/// A resolver that runs past its deadline on every try is left out for a while: it runs
/// inside the committer's transaction, where every write waits, so each further key must not
/// cost another round of tries. Last-writer-wins decides meanwhile, counted as fallbacks.
#[test]
fn a_resolver_past_its_deadline_is_left_out_for_a_while() {
    let dir = tempfile::tempdir().unwrap();
    // Two keys, each with two concurrent versions.
    let mut events = Vec::new();
    for key in ["k1", "k2"] {
        for (origin, hlc) in [("site-b", 10), ("site-c", 20)] {
            let mut e = counter_event(origin, json!({"n": 1}), hlc);
            e.key = key.as_bytes().to_vec();
            e.seq = if key == "k1" { 1 } else { 2 };
            events.push(e);
        }
    }
    applied_before_start(dir.path(), events);
    let body = [
        // Fuel for seconds of work: the 1 ms deadline is what stops it.
        plugin_table(
            "slowpick",
            "slow-pick",
            "deadline_ms = 1\nfuel = 4000000000",
        ),
        collection("counters", &[], "slowpick"),
    ]
    .concat();
    let node = Node::start(config(dir.path(), &body));
    for key in ["k1", "k2"] {
        let r = node.get(&format!("/v1/kv/counters/{key}"));
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.headers["x-edgerep-resolved-by"], "lww-fallback:slowpick");
    }
    let s = node.get("/v1/status").body;
    let p = &s["plugins"]["slowpick"];
    assert_eq!(p["fallbacks_to_lww"], 2, "{p}");
    // The first key's three tries (one and two again); none for the second.
    assert_eq!(p["calls"], 3, "{p}");
    node.stop();
}

/// `[authorization]` judges a write by where it lands: a write to a collection this node may
/// not write that a transform routes to one it may is taken; a transform that routes a write
/// into a collection it may not write fails on it (422, the transform's fault), nothing written.
#[test]
fn authorization_judges_a_routed_write_by_where_it_lands() {
    let dir = tempfile::tempdir().unwrap();
    let body = [
        plugin_table(
            "to-orders",
            "fanout",
            "params = { copies = \"1\", to = \"orders\" }",
        ),
        plugin_table(
            "to-stock",
            "fanout",
            "params = { copies = \"1\", to = \"stock\" }",
        ),
        collection("inbox", &["to-orders"], "lww"),
        collection("outbox", &["to-stock"], "lww"),
        "[authorization]\nsite-a = [\"orders\", \"outbox\"]\n".to_owned(),
    ]
    .concat();
    let node = Node::start(config(dir.path(), &body));
    let r = node.put("/v1/kv/inbox/k", json!({"n": 1}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(node.get("/v1/kv/orders/k-0").status, 200);
    let r = node.put("/v1/kv/outbox/k", json!({"n": 2}));
    assert_eq!(r.status, 422, "{}", r.body);
    let message = r.body["error"].as_str().unwrap_or_default();
    assert!(message.contains("\"stock\""), "{message}");
    assert_eq!(node.get("/v1/kv/stock/k-0").status, 404);
    node.stop();
}

/// A transform on ingest failing on every write cannot fill the disk with dead letters: past
/// `limits.max_dead_letters` a request with a write to set aside is refused whole (507, naming
/// the limit), nothing written; with room made it is set aside again.
#[test]
fn dead_letters_past_their_limit_refuse_the_request() {
    refused_past_the_limit(
        "max_dead_letters = 1",
        json!({"n": 1}),
        "limits.max_dead_letters (1)",
    );
}

/// The same by bytes: a dead letter holds its write, so a count alone would let large writes
/// fill the disk. Here a write holds 3 KB, its dead letter about 7 KB (the write and the event
/// the plugin was given): one fits under `limits.max_dead_letter_bytes` of 10,000, two do not.
#[test]
fn dead_letters_past_their_byte_limit_refuse_the_request() {
    refused_past_the_limit(
        "max_dead_letter_bytes = 10000",
        json!({"pad": "x".repeat(3000)}),
        "limits.max_dead_letter_bytes (10000)",
    );
}

/// Two writes of `value` a plugin fails on, under `limits`: the first is set aside, the second
/// refused naming `named`, and set aside once the first dead letter is removed.
fn refused_past_the_limit(limits: &str, value: serde_json::Value, named: &str) {
    let dir = tempfile::tempdir().unwrap();
    let body = [
        plugin_table("trap", "trap", ""),
        collection("broken", &["trap"], "lww"),
        format!("[limits]\n{limits}\n"),
    ]
    .concat();
    let node = Node::start(config(dir.path(), &body));
    let r = node.put("/v1/kv/broken/k1", value.clone());
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.body["dead_letter"].is_u64(), "{}", r.body);
    // Status and metrics show what counts against the limits.
    let status = node.get("/v1/status").body;
    let bytes = status["dead_letter_bytes"].as_u64().unwrap_or(0);
    assert!(
        status["dead_letters"] == 1 && bytes > 0,
        "dead_letters {}, dead_letter_bytes {}",
        status["dead_letters"],
        status["dead_letter_bytes"]
    );
    let metrics = node.agent.get(&node.url("/metrics")).call().unwrap();
    let metrics = metrics.into_body().read_to_string().unwrap();
    assert!(
        metrics.contains(&format!("edgerep_dead_letter_bytes {bytes}")),
        "{metrics}"
    );
    let before = status["feed_last"].clone();
    let r = node.put("/v1/kv/broken/k2", value.clone());
    assert_eq!(r.status, 507, "{}", r.body);
    assert_eq!(r.body["kind"], "dead_letters_full", "{}", r.body);
    assert!(
        r.body["error"].as_str().is_some_and(
            |e| e.contains(named) && e.contains("holds (or is about to hold) 1 dead letter(s)")
        ),
        "{}",
        r.body
    );
    let listed = node.get("/v1/dead-letters").body;
    let list = listed["dead_letters"].as_array().unwrap().clone();
    assert_eq!(list.len(), 1, "{listed}");
    assert_eq!(node.get("/v1/status").body["feed_last"], before);
    // Room made: the next one is set aside.
    let id = list[0]["id"].as_u64().unwrap();
    let r = node
        .agent
        .delete(node.url(&format!("/v1/dead-letters/{id}")))
        .call()
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let r = node.put("/v1/kv/broken/k2", value);
    assert_eq!(r.status, 422, "{}", r.body);
    node.stop();
}

/// A plugin's file rebuilt in place, its config table unchanged: the reload kept the build it
/// had loaded and answered success, and the next restart refused to start on the sha256. Now
/// the reload fails, naming the plugin, the file and both hashes, and the node keeps running
/// the build it loaded.
#[test]
fn a_plugin_file_rebuilt_in_place_fails_the_reload() {
    let dir = tempfile::tempdir().unwrap();
    let (source, sha) = plugin("passthrough");
    let file = dir.path().join("t.wasm");
    std::fs::copy(&source, &file).unwrap();
    let body = format!(
        "[plugins.t]\npath = '{}'\nsha256 = \"{sha}\"\n{}",
        file.display(),
        collection("orders", &["t"], "lww")
    );
    let path = dir.path().join("edgerep.toml");
    std::fs::write(&path, config_text(dir.path(), &body)).unwrap();
    let node = Node::start(Config::load(&path).unwrap());
    let same = node.post("/v1/reload", json!({}));
    assert_eq!(same.status, 200, "{}", same.body);
    let (other, _) = plugin("redact");
    std::fs::copy(&other, &file).unwrap();
    let changed = node.post("/v1/reload", json!({}));
    assert_eq!(changed.status, 422, "{}", changed.body);
    let text = changed.body.to_string();
    assert!(
        text.contains("plugins.t")
            && text.contains("changed since it was loaded")
            && text.contains(&sha),
        "{text}"
    );
    let put = node.put("/v1/kv/orders/o-1", json!({"a": 1}));
    assert_eq!(put.status, 200, "{}", put.body);
    node.stop();
}
