//! Idempotency keys with real processes: a client that loses its answer (the node killed
//! before it read it) retries with the same key and the write is in the changelog once; a
//! counter stays exact through retried increments with random kills; a key reused with another
//! request is refused and writes nothing.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Node, agent, built_plugin, edgerep, stderr, stdout};

/// A one-node config from `edgerep init`, with `extra` appended.
fn one_node(dir: &Path, extra: &str) -> PathBuf {
    let o = edgerep(&["init", dir.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let config = dir.join("edgerep.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(extra);
    std::fs::write(&config, text).unwrap();
    config
}

/// PUT with an idempotency key: (status, body, whether the answer says it is a replay).
fn put_keyed(node: &Node, path: &str, key: &str, body: &str) -> (u16, String, bool) {
    let mut r = agent()
        .put(&node.url(path))
        .content_type("application/json")
        .header("idempotency-key", key)
        .send(body.as_bytes())
        .unwrap();
    let replayed = r.headers().get("idempotent-replayed").is_some();
    (
        r.status().as_u16(),
        r.body_mut().read_to_string().unwrap(),
        replayed,
    )
}

fn post_batch(node: &Node, key: Option<&str>, body: &str) -> (u16, serde_json::Value, bool) {
    let mut req = agent()
        .post(&node.url("/v1/batch"))
        .content_type("application/json");
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    let mut r = req.send(body.as_bytes()).unwrap();
    let replayed = r.headers().get("idempotent-replayed").is_some();
    let text = r.body_mut().read_to_string().unwrap();
    (
        r.status().as_u16(),
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        replayed,
    )
}

/// This node's own events for `key` in its changelog.
fn events_of(node: &Node, key: &str) -> Vec<serde_json::Value> {
    let mut r = agent()
        .get(&node.url("/v1/changelog/node-1?after=0&limit=10000"))
        .call()
        .unwrap();
    let log: serde_json::Value =
        serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    log["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["key"] == key)
        .cloned()
        .collect()
}

/// Sends a keyed PUT on a raw connection and returns without reading the answer.
fn send_unread(node: &Node, path: &str, key: &str, body: &str) -> TcpStream {
    let mut s = TcpStream::connect(node.addr).unwrap();
    let req = format!(
        "PUT {path} HTTP/1.1\r\nhost: edgerep\r\ncontent-type: application/json\r\nidempotency-key: {key}\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    s
}

#[test]
fn a_retry_after_the_node_died_before_answering_is_written_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = one_node(dir.path(), "");
    let node = Node::start(&config);
    let before = node.status()["feed_last"].as_u64().unwrap();
    // The request reaches the node and commits; the node dies before the client reads.
    let _unread = send_unread(&node, "/v1/kv/orders/o-1", "order-o-1", r#"{"n":1}"#);
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.status()["feed_last"].as_u64().unwrap() == before {
        assert!(Instant::now() < deadline, "the write never committed");
        std::thread::sleep(Duration::from_millis(5));
    }
    node.kill();
    // The client retries after the restart: the first answer, nothing written again.
    let node = Node::start(&config);
    let (code, body, replayed) = put_keyed(&node, "/v1/kv/orders/o-1", "order-o-1", r#"{"n":1}"#);
    assert_eq!(code, 200, "{body}");
    assert!(replayed, "the answer says it is a replay");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    let events = events_of(&node, "o-1");
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(answer["seq"], events[0]["seq"]);
    assert_eq!(answer["hlc"], events[0]["hlc"]);
    // Again: the same answer.
    let (_, again, _) = put_keyed(&node, "/v1/kv/orders/o-1", "order-o-1", r#"{"n":1}"#);
    assert_eq!(again, body);
    let status = node.status();
    assert_eq!(status["idempotency"]["replays_total"], 2, "{status}");
    assert_eq!(status["idempotency"]["keys_held"], 1, "{status}");
    // The CLI sends keys too.
    let c = config.to_str().unwrap();
    let o = edgerep(&[
        "put",
        "--config",
        c,
        "orders",
        "o-2",
        r#"{"n":2}"#,
        "--idempotency-key",
        "order-o-2",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o2 = edgerep(&[
        "put",
        "--config",
        c,
        "orders",
        "o-2",
        r#"{"n":2}"#,
        "--idempotency-key",
        "order-o-2",
    ]);
    assert_eq!(stdout(&o), stdout(&o2));
    assert_eq!(events_of(&node, "o-2").len(), 1);
}

#[test]
fn a_key_reused_with_another_request_is_refused_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = one_node(dir.path(), "");
    let node = Node::start(&config);
    let (code, _, _) = put_keyed(&node, "/v1/kv/c/k", "K1", r#"{"v":1}"#);
    assert_eq!(code, 200);
    let (code, body, _) = put_keyed(&node, "/v1/kv/c/k", "K1", r#"{"v":2}"#);
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("idempotency_key_reused"), "{body}");
    assert!(body.contains("another request"), "{body}");
    let (code, body, _) = put_keyed(&node, "/v1/kv/c/other", "K1", r#"{"v":1}"#);
    assert_eq!(
        code, 409,
        "another key of the collection is another request: {body}"
    );
    assert_eq!(events_of(&node, "k").len(), 1);
    assert!(events_of(&node, "other").is_empty());
    // A key that is not 1 to 255 visible ASCII characters.
    let (code, body, _) = put_keyed(&node, "/v1/kv/c/k", "has space", r#"{"v":1}"#);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("bad_idempotency_key"), "{body}");
    let long = "x".repeat(256);
    assert_eq!(put_keyed(&node, "/v1/kv/c/k", &long, "1").0, 400);
    let (code, body, _) = put_keyed(&node, "/v1/kv/c/k", "clé", r#"{"v":1}"#);
    assert_eq!(code, 400, "a header that is not ASCII: {body}");
    assert!(body.contains("bad_idempotency_key"), "{body}");

    // A batch under one key: replayed whole, with what plugins refused.
    let batch = r#"{"writes":[{"collection":"c","key":"b1","value":1},{"collection":"c","key":"b2","value":2}]}"#;
    let (code, first, replayed) = post_batch(&node, Some("B1"), batch);
    assert_eq!((code, replayed), (200, false), "{first}");
    let (code, again, replayed) = post_batch(&node, Some("B1"), batch);
    assert_eq!((code, replayed), (200, true), "{again}");
    assert_eq!(first, again);
    let other = r#"{"writes":[{"collection":"c","key":"b1","value":9}]}"#;
    assert_eq!(post_batch(&node, Some("B1"), other).0, 409);
    assert_eq!(events_of(&node, "b1").len(), 1);
    // Keys per write: the write seen before is answered from its record, the new one commits.
    let per_write = |v: u32| {
        format!(
            r#"{{"writes":[{{"collection":"c","key":"p1","value":1,"idempotency_key":"P1"}},{{"collection":"c","key":"p2","value":{v},"idempotency_key":"P2-{v}"}}]}}"#
        )
    };
    let (code, a, _) = post_batch(&node, None, &per_write(1));
    assert_eq!(code, 200, "{a}");
    // Not marked replayed: p2 is written now (the header says the request wrote nothing).
    let (code, b, replayed) = post_batch(&node, None, &per_write(2));
    assert_eq!((code, replayed), (200, false), "{b}");
    assert_eq!(
        a["committed"][0], b["committed"][0],
        "p1 answered from its record"
    );
    assert_ne!(
        a["committed"][1]["seq"], b["committed"][1]["seq"],
        "p2 is a new write"
    );
    assert_eq!(events_of(&node, "p1").len(), 1);
    assert_eq!(events_of(&node, "p2").len(), 2);
    // One key twice in a batch, or a header and per-write keys together, are refused.
    let twice = r#"{"writes":[{"collection":"c","key":"x","value":1,"idempotency_key":"D"},{"collection":"c","key":"y","value":1,"idempotency_key":"D"}]}"#;
    let (code, body, _) = post_batch(&node, None, twice);
    assert_eq!(code, 400, "{body}");
    let (code, body, _) = post_batch(&node, Some("H"), &per_write(3));
    assert_eq!(code, 400, "{body}");
    assert!(events_of(&node, "x").is_empty());
    let status = node.status();
    assert!(
        status["idempotency"]["reused_total"].as_u64().unwrap() >= 3,
        "{status}"
    );
}

/// A retry of a keyed write that committed gets its first answer even if the operator
/// disallowed the collection meanwhile: the client must learn the write happened, not that it
/// is forbidden (the README tells clients to stop on a 4xx). Before, the collection was
/// checked before the key's lookup, and the retry got 403.
#[test]
fn a_retry_gets_its_answer_after_its_collection_was_disallowed() {
    let dir = tempfile::tempdir().unwrap();
    let config = one_node(dir.path(), "");
    let node = Node::start(&config);
    let (code, first, _) = put_keyed(&node, "/v1/kv/c/k", "K1", r#"{"v":1}"#);
    assert_eq!(code, 200, "{first}");
    let batch = r#"{"writes":[{"collection":"c","key":"b1","value":1}]}"#;
    let (code, batch_first, _) = post_batch(&node, Some("B1"), batch);
    assert_eq!(code, 200, "{batch_first}");
    let per_write =
        r#"{"writes":[{"collection":"c","key":"w1","value":1,"idempotency_key":"W1"}]}"#;
    let (code, per_write_first, _) = post_batch(&node, None, per_write);
    assert_eq!(code, 200, "{per_write_first}");
    assert_eq!(node.terminate().code(), Some(0));
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("accept_undeclared = true"));
    std::fs::write(
        &config,
        text.replace("accept_undeclared = true", "accept_undeclared = false"),
    )
    .unwrap();
    let node = Node::start(&config);
    let (code, again, replayed) = put_keyed(&node, "/v1/kv/c/k", "K1", r#"{"v":1}"#);
    assert_eq!((code, replayed), (200, true), "{again}");
    assert_eq!(again, first);
    let (code, again, replayed) = post_batch(&node, Some("B1"), batch);
    assert_eq!((code, replayed), (200, true), "{again}");
    assert_eq!(again, batch_first);
    let (code, again, _) = post_batch(&node, None, per_write);
    assert_eq!(code, 200, "{again}");
    assert_eq!(again, per_write_first);
    // A new write to it is refused, keyed or not, whole batch and all.
    let (code, body, _) = put_keyed(&node, "/v1/kv/c/k2", "K2", r#"{"v":1}"#);
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("collection_not_allowed"), "{body}");
    let mixed = r#"{"writes":[{"collection":"c","key":"w1","value":1,"idempotency_key":"W1"},{"collection":"c","key":"w2","value":2,"idempotency_key":"W2"}]}"#;
    let (code, body, _) = post_batch(&node, None, mixed);
    assert_eq!(code, 403, "{body}");
    assert!(body.to_string().contains("writes[1]"), "{body}");
    assert!(
        body.to_string().contains("were written by their first try"),
        "the client learns that its recorded write happened: {body}"
    );
    assert!(events_of(&node, "k2").is_empty() && events_of(&node, "w2").is_empty());
}

/// A keyed request taken under limits lowered since: a batch over `max_batch_events` still
/// gets its recorded answer, a body over `max_request_bytes` (which cannot be read to compare)
/// a 409 saying the key was recorded, never a bare 413 (which says nothing was written: a
/// client splitting the batch under new keys would write it twice). What was never recorded
/// is refused for the limit, as before.
#[test]
fn a_retry_over_limits_lowered_since_is_not_told_it_was_never_written() {
    let dir = tempfile::tempdir().unwrap();
    let config = one_node(dir.path(), "");
    let node = Node::start(&config);
    let batch = r#"{"writes":[{"collection":"c","key":"b1","value":1},{"collection":"c","key":"b2","value":2},{"collection":"c","key":"b3","value":3}]}"#;
    let (code, first, _) = post_batch(&node, Some("B1"), batch);
    assert_eq!(code, 200, "{first}");
    // A body of 3,000 bytes, mostly spaces, for a value of one byte.
    let wide = format!("{}1", " ".repeat(3000));
    let (code, put_first, _) = put_keyed(&node, "/v1/kv/c/k", "K1", &wide);
    assert_eq!(code, 200, "{put_first}");
    assert_eq!(node.terminate().code(), Some(0));
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replacen(
            "[limits]\n",
            "[limits]\nmax_batch_events = 2\nmax_request_bytes = 2000\nmax_value_bytes = 1000\n",
            1,
        ),
    )
    .unwrap();
    let node = Node::start(&config);

    let (code, again, replayed) = post_batch(&node, Some("B1"), batch);
    assert_eq!((code, replayed), (200, true), "{again}");
    assert_eq!(again, first);
    // The same key with a batch of other writes is no retry.
    let other = batch.replace("\"b3\"", "\"b4\"");
    let (code, body, _) = post_batch(&node, Some("B1"), &other);
    assert_eq!(code, 409, "{body}");
    assert_eq!(body["kind"], "idempotency_key_reused", "{body}");
    // A new key over the limit is refused for it.
    let (code, body, _) = post_batch(&node, Some("B2"), batch);
    assert_eq!(code, 413, "{body}");
    assert_eq!(body["kind"], "batch_too_large", "{body}");

    let (code, body, _) = put_keyed(&node, "/v1/kv/c/k", "K1", &wide);
    assert_eq!(code, 409, "{body}");
    assert!(
        body.contains("idempotency_key_over_limit") && body.contains("max_request_bytes"),
        "{body}"
    );
    let (code, body, _) = put_keyed(&node, "/v1/kv/c/k", "K2", &wide);
    assert_eq!(code, 413, "{body}");
    assert!(body.contains("request_too_large"), "{body}");
    assert_eq!(events_of(&node, "b1").len(), 1);
    assert!(events_of(&node, "b4").is_empty());
    assert_eq!(events_of(&node, "k").len(), 1);
}

#[test]
fn keys_are_kept_within_the_configured_count() {
    let dir = tempfile::tempdir().unwrap();
    let config = one_node(dir.path(), "");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replacen("[api]\n", "[api]\nidempotency_max_keys = 3\n", 1),
    )
    .unwrap();
    let node = Node::start(&config);
    for i in 0..6 {
        let (code, body, _) = put_keyed(&node, &format!("/v1/kv/c/k{i}"), &format!("K{i}"), "1");
        assert_eq!(code, 200, "{body}");
    }
    assert_eq!(node.status()["idempotency"]["keys_held"], 3);
    // The newest keys still answer; the oldest were forgotten (a retry that late writes again).
    assert!(put_keyed(&node, "/v1/kv/c/k5", "K5", "1").2);
    assert!(!put_keyed(&node, "/v1/kv/c/k0", "K0", "1").2);
}

/// A tiny deterministic generator (xorshift), so a failure replays.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn a_merge_counter_stays_exact_through_retried_increments_and_kills() {
    let dir = tempfile::tempdir().unwrap();
    let (wasm, sha) = built_plugin("merge-counter");
    let config = one_node(
        dir.path(),
        &format!(
            r#"
[[collections.declared]]
name = "tally"
resolver = "counter"

[plugins.counter]
path = "{}"
sha256 = "{sha}"
"#,
            wasm.display()
        ),
    );
    let mut node = Some(Node::start(&config));
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut kills = 0;
    const INCREMENTS: u64 = 1_000;
    // The client reads the count once and then increments it by writing count + 1, each
    // increment under its own key; when it does not get an answer it sends the same write
    // again with the same key until it does.
    for n in 1..=INCREMENTS {
        let body = format!(r#"{{"clicks":{n}}}"#);
        let key = format!("tally-{n}");
        if rng.below(1000) < 30 {
            // The node dies with the request sent and its answer unread (before or after
            // the commit: the client cannot know).
            let _unread = send_unread(node.as_ref().unwrap(), "/v1/kv/tally/site", &key, &body);
            std::thread::sleep(Duration::from_millis(rng.below(4)));
            node.take().unwrap().kill();
            kills += 1;
            node = Some(Node::start(&config));
        }
        let (code, answer, _) = put_keyed(node.as_ref().unwrap(), "/v1/kv/tally/site", &key, &body);
        assert_eq!(code, 200, "increment {n}: {answer}");
    }
    let node = node.unwrap();
    let events = events_of(&node, "site");
    assert_eq!(
        events.len() as u64,
        INCREMENTS,
        "one event per increment ({kills} kills)"
    );
    for (i, e) in events.iter().enumerate() {
        assert_eq!(
            e["value"]["clicks"],
            i as u64 + 1,
            "the increments in order"
        );
    }
    let mut r = agent().get(&node.url("/v1/kv/tally/site")).call().unwrap();
    assert_eq!(
        r.body_mut().read_to_string().unwrap(),
        format!(r#"{{"clicks":{INCREMENTS}}}"#)
    );
    assert!(kills > 10, "the run killed the node {kills} times");
    let st = node.status();
    assert_eq!(st["verified"], true, "{st}");
}

/// A batch retried whose keyed write is answered from its record while a write without a key
/// fails its transform again: the retry sets that write aside as a second dead letter, yet its
/// answer said `idempotent-replayed` ("wrote nothing"). Now it does not.
#[test]
fn a_retry_that_sets_a_write_aside_again_is_not_called_a_replay() {
    let plugins = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/plugins/rust");
    let wasm = plugins.join("filter.wasm").canonicalize().unwrap();
    let sums = std::fs::read_to_string(plugins.join("SHA256SUMS")).unwrap();
    let sha = sums
        .lines()
        .find_map(|l| l.strip_suffix("filter.wasm").map(|h| h.trim().to_owned()))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The filter with too little fuel fails on every write: each becomes a dead letter.
    let config = one_node(
        dir.path(),
        &format!(
            "\n[[collections.declared]]\nname = \"readings\"\ntransforms_on_ingest = [\"filter\"]\n\n[plugins.filter]\npath = \"{}\"\nsha256 = \"{sha}\"\nparams = {{ field = \"status\", equals = \"drop\" }}\nfuel = 100\n",
            wasm.display()
        ),
    );
    let node = Node::start(&config);
    let body = r#"{"writes":[{"collection":"c","key":"p1","value":1,"idempotency_key":"P1"},{"collection":"readings","key":"r","value":{"status":"ok"}}]}"#;
    let (status, first, replayed) = post_batch(&node, None, body);
    assert_eq!(status, 200, "{first}");
    assert!(!replayed);
    let (status, again, replayed) = post_batch(&node, None, body);
    assert_eq!(status, 200, "{again}");
    let dead = agent()
        .get(&node.url("/v1/dead-letters"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let dead: serde_json::Value = serde_json::from_str(&dead).unwrap();
    let letters = dead["dead_letters"].as_array().map_or(0, Vec::len);
    assert_eq!(letters, 2, "{dead}");
    assert!(!replayed, "a second dead letter was written: {again}");
    assert_eq!(events_of(&node, "p1").len(), 1, "p1 written once");
}
