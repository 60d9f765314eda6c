//! Integration tests of the local HTTP API: each test starts a node in-process on a temporary
//! data directory (API on port 0) and drives it over real HTTP with a blocking client from the
//! test thread while a tokio runtime serves.

use std::collections::BTreeMap;
use std::io::BufRead as _;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use base64::Engine as _;
use edgerep_config::Config;
use edgerep_node::RunningNode;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Value as Json, json};

/// Longest any single request, shutdown or wait in these tests may take.
const TIMEOUT: Duration = Duration::from_secs(20);

/// Limits small enough to hit from a test.
const SMALL_LIMITS: &str = r#"
[collections]
accept_undeclared = false

[[collections.declared]]
name = "orders"

[limits]
max_key_bytes = 64
max_value_bytes = 256
max_value_depth = 4
max_meta_entries = 2
max_batch_events = 5
max_request_bytes = 4096
"#;

/// Any collection accepted, default limits.
const OPEN: &str = r#"
[collections]
accept_undeclared = true
"#;

fn config(dir: &Path, extra: &str) -> Config {
    config_with_api(dir, "", extra)
}

/// [`config`] with `api` added to the `[api]` table.
fn config_with_api(dir: &Path, api: &str, extra: &str) -> Config {
    let text = format!(
        r#"
[node]
id = "site-a"
data_dir = '{}'

[api]
listen = "127.0.0.1:0"
{api}

[replication]
# Never bound by these tests; it only has to differ from api.listen.
listen = "127.0.0.1:1"
{extra}
"#,
        dir.join("data").display()
    );
    // On disk as well: a reload reads it.
    std::fs::write(dir.join("edgerep.toml"), &text).expect("writing the test config");
    Config::parse(&text, &dir.join("edgerep.toml")).expect("test config parses")
}

/// A node serving on its own runtime, and a client for it.
struct Node {
    rt: tokio::runtime::Runtime,
    running: Option<RunningNode>,
    base: String,
    agent: ureq::Agent,
}

/// A response, fully read.
struct Resp {
    status: u16,
    headers: ureq::http::HeaderMap,
    body: Vec<u8>,
}

impl Resp {
    fn json(&self) -> Json {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response ({}) is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Asserts 200 and returns the JSON body.
    #[track_caller]
    fn ok_json(&self) -> Json {
        assert_eq!(self.status, 200, "expected 200, got: {}", self.text());
        self.json()
    }
}

/// The parts of `GET /v1/status` that change with every write.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Snapshot {
    digest: String,
    feed_last: u64,
}

fn finish(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>, what: &str) -> Resp {
    let mut r = r.unwrap_or_else(|e| panic!("{what}: request failed: {e}"));
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_vec()
        .unwrap_or_else(|e| panic!("{what}: reading the body failed: {e}"));
    Resp {
        status,
        headers,
        body,
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(TIMEOUT))
        // A fresh connection per request: refused uploads may leave the server closing it.
        .max_idle_connections(0)
        .build()
        .into()
}

impl Node {
    fn start(dir: &Path, extra: &str) -> Node {
        Node::start_config(config(dir, extra))
    }

    fn start_config(config: Config) -> Node {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let running = rt
            .block_on(edgerep_node::start(config))
            .expect("node starts");
        let base = format!("http://{}", running.api_addr);
        Node {
            rt,
            running: Some(running),
            base,
            agent: agent(),
        }
    }

    fn stop(mut self) {
        let running = self.running.take().expect("node is running");
        self.rt
            .block_on(async { tokio::time::timeout(TIMEOUT, running.shutdown()).await })
            .expect("shutdown finishes in time")
            .expect("shutdown is clean");
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn get(&self, path: &str) -> Resp {
        finish(self.agent.get(self.url(path)).call(), path)
    }

    fn get_cbor(&self, path: &str) -> Resp {
        finish(
            self.agent
                .get(self.url(path))
                .header("accept", "application/cbor")
                .call(),
            path,
        )
    }

    fn delete(&self, path: &str) -> Resp {
        finish(self.agent.delete(self.url(path)).call(), path)
    }

    fn put(&self, path: &str, content_type: &str, body: &[u8]) -> Resp {
        finish(
            self.agent
                .put(self.url(path))
                .header("content-type", content_type)
                .send(body),
            path,
        )
    }

    fn put_json(&self, path: &str, value: &Json) -> Resp {
        self.put(path, "application/json", value.to_string().as_bytes())
    }

    fn put_cbor(&self, path: &str, body: &[u8]) -> Resp {
        self.put(path, "application/cbor", body)
    }

    fn batch(&self, content_type: &str, body: &[u8]) -> Resp {
        finish(
            self.agent
                .post(self.url("/v1/batch"))
                .header("content-type", content_type)
                .send(body),
            "/v1/batch",
        )
    }

    fn batch_json(&self, body: &Json) -> Resp {
        self.batch("application/json", body.to_string().as_bytes())
    }

    fn status(&self) -> Json {
        self.get("/v1/status").ok_json()
    }

    fn snapshot(&self) -> Snapshot {
        let s = self.status();
        Snapshot {
            digest: s["digest"].as_str().expect("digest").to_owned(),
            feed_last: s["feed_last"].as_u64().expect("feed_last"),
        }
    }

    /// Sends one request that must be refused with `status` and `kind`, with an error message
    /// containing every one of `needles`, and checks that the store did not change.
    #[track_caller]
    fn refused(
        &self,
        what: &str,
        send: impl FnOnce(&Node) -> Resp,
        status: u16,
        kind: &str,
        needles: &[&str],
    ) {
        let before = self.snapshot();
        let r = send(self);
        assert_eq!(r.status, status, "{what}: status; body: {}", r.text());
        let body = r.json();
        assert_eq!(body["kind"], kind, "{what}: kind; body: {body}");
        let message = body["error"].as_str().unwrap_or_else(|| {
            panic!("{what}: no error message: {body}");
        });
        for needle in needles {
            assert!(
                message.contains(needle),
                "{what}: error message {message:?} does not mention {needle:?}"
            );
        }
        assert_eq!(self.snapshot(), before, "{what}: a refused request wrote");
    }

    /// The value at `path` as JSON, asserting 200.
    #[track_caller]
    fn value(&self, path: &str) -> Json {
        self.get(path).ok_json()
    }

    #[track_caller]
    fn assert_missing(&self, path: &str) {
        let r = self.get(path);
        assert_eq!(r.status, 404, "{path} should not exist: {}", r.text());
        assert_eq!(r.json()["kind"], "key_not_found");
    }

    /// The lines of a watch that ends by itself (follow=false or a limit).
    fn watch(&self, query: &str) -> Vec<Json> {
        let r = self.get(&format!("/v1/watch?{query}"));
        assert_eq!(r.status, 200, "watch {query}: {}", r.text());
        assert_eq!(r.header("content-type"), Some("application/x-ndjson"));
        lines(&r.body)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            let _ = self
                .rt
                .block_on(async { tokio::time::timeout(TIMEOUT, running.shutdown()).await });
        }
    }
}

fn lines(body: &[u8]) -> Vec<Json> {
    body.split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).expect("each watch line is JSON"))
        .collect()
}

fn positions(lines: &[Json]) -> Vec<u64> {
    lines
        .iter()
        .map(|l| l["position"].as_u64().expect("position"))
        .collect()
}

/// `"physical.logical"` as a comparable pair.
fn hlc(text: &Json) -> (u64, u32) {
    let text = text.as_str().expect("hlc is a string");
    let (p, l) = text.split_once('.').expect("hlc is physical.logical");
    (p.parse().expect("physical"), l.parse().expect("logical"))
}

fn enc(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

/// A CBOR batch body: `{"writes": [{"collection", "key" (bytes), "op", "value"?}, ...]}` where
/// a put's value is the unsigned integer given.
fn cbor_batch(writes: &[(&str, &[u8], &str, Option<u64>)]) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut e = minicbor::Encoder::new(&mut buf);
    e.map(1).unwrap().str("writes").unwrap();
    e.array(writes.len() as u64).unwrap();
    for (collection, key, op, value) in writes {
        e.map(if value.is_some() { 4 } else { 3 }).unwrap();
        e.str("collection").unwrap().str(collection).unwrap();
        e.str("key").unwrap().bytes(key).unwrap();
        e.str("op").unwrap().str(op).unwrap();
        if let Some(v) = value {
            e.str("value").unwrap().u64(*v).unwrap();
        }
    }
    buf
}

/// At the deepest nesting a config may allow, values canonicalize and read back on the API's
/// worker threads; nesting far deeper is refused with 400 and the node keeps serving (before
/// the config capped `max_value_depth`, a large one let a 64 KB CBOR body overflow a worker's
/// stack and kill the process).
#[test]
fn the_deepest_allowed_values_do_not_exhaust_a_worker_stack() {
    let depth = edgerep_wire::value::MAX_DEPTH_ALLOWED;
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(
        dir.path(),
        &format!("{OPEN}\n[limits]\nmax_value_depth = {depth}\n"),
    );
    // `depth` arrays, one inside the other, around a 0.
    let mut deepest = vec![0x81u8; depth];
    deepest.push(0x00);
    node.put_cbor("/v1/kv/c/deep", &deepest).ok_json();
    let mut expected = json!(0);
    for _ in 0..depth {
        expected = json!([expected]);
    }
    assert_eq!(node.value("/v1/kv/c/deep"), expected);
    node.put_json("/v1/kv/c/deep-json", &expected).ok_json();
    let cbor = node.get_cbor("/v1/kv/c/deep-json");
    assert_eq!(cbor.status, 200, "{}", cbor.text());

    let mut deeper = vec![0x81u8; 60_000];
    deeper.push(0x00);
    node.refused(
        "CBOR value nested 60,000 deep",
        |n| n.put_cbor("/v1/kv/c/deeper", &deeper),
        400,
        "bad_value",
        &[&format!("nested deeper than {depth} levels")],
    );
    let mut body = b"{\"writes\": [{\"collection\": \"c\", \"key\": \"k\", \"value\": ".to_vec();
    body.extend(std::iter::repeat_n(b'[', 60_000));
    body.push(b'0');
    body.extend(std::iter::repeat_n(b']', 60_000));
    body.extend(b"}]}");
    let r = node.batch("application/json", &body);
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(node.value("/v1/kv/c/deep"), expected);
    node.stop();
}

#[test]
fn refused_requests_answer_4xx_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), SMALL_LIMITS);
    // Something in the store, so the digest is not the empty one.
    node.put_json("/v1/kv/orders/seed", &json!({"n": 1}))
        .ok_json();
    let k = "/v1/kv/orders/k1";

    // Malformed bodies.
    node.refused(
        "truncated JSON",
        |n| n.put(k, "application/json", b"{\"a\": "),
        400,
        "malformed_json",
        &["malformed JSON", "EOF"],
    );
    node.refused(
        "not JSON at all",
        |n| n.put(k, "application/json; charset=utf-8", b"hello"),
        400,
        "malformed_json",
        &["malformed JSON", "line 1"],
    );
    node.refused(
        "JSON that is not UTF-8",
        |n| n.put(k, "application/json", b"\"\xff\""),
        400,
        "malformed_json",
        &["not UTF-8"],
    );
    node.refused(
        "empty JSON body",
        |n| n.put(k, "application/json", b""),
        400,
        "malformed_json",
        &["malformed JSON"],
    );
    node.refused(
        "reserved CBOR additional info",
        |n| n.put_cbor(k, &[0x1c]),
        400,
        "malformed_cbor",
        &["malformed cbor at byte 0"],
    );
    node.refused(
        "truncated CBOR array",
        |n| n.put_cbor(k, &[0x82, 0x01]),
        400,
        "malformed_cbor",
        &["ends early"],
    );
    node.refused(
        "CBOR with trailing bytes",
        |n| n.put_cbor(k, &[0x01, 0x02]),
        400,
        "malformed_cbor",
        &["trailing bytes"],
    );
    node.refused(
        "CBOR map with a duplicate key",
        |n| n.put_cbor(k, &[0xa2, 0x61, 0x61, 0x01, 0x61, 0x61, 0x02]),
        400,
        "malformed_cbor",
        &["duplicate cbor map key"],
    );

    // Value limits: 256 bytes of canonical CBOR, depth 4.
    node.refused(
        "JSON value over max_value_bytes",
        |n| n.put_json(k, &json!("x".repeat(300))),
        413,
        "value_too_large",
        &["303 bytes", "over the limit of 256"],
    );
    let mut bstr = vec![0x58, 255];
    bstr.extend([7u8; 255]);
    node.refused(
        "CBOR value one byte over max_value_bytes",
        |n| n.put_cbor(k, &bstr),
        413,
        "value_too_large",
        &["257 bytes", "over the limit of 256"],
    );
    node.refused(
        "JSON value nested 5 deep",
        |n| n.put_json(k, &json!([[[[[1]]]]])),
        400,
        "bad_value",
        &["nested deeper than 4 levels"],
    );
    // Well-formed CBOR that is too deep is a bad value, not malformed CBOR.
    node.refused(
        "CBOR value nested 5 deep",
        |n| n.put_cbor(k, &[0x81, 0x81, 0x81, 0x81, 0x81, 0x01]),
        400,
        "bad_value",
        &["nested deeper than 4 levels"],
    );

    // Collections: only "orders" is declared.
    node.refused(
        "PUT to an invalid collection name",
        |n| n.put_json("/v1/kv/bad%20name/k", &json!(1)),
        400,
        "bad_collection",
        &["invalid collection name", "bad name"],
    );
    node.refused(
        "PUT to an undeclared collection names it",
        |n| n.put_json("/v1/kv/other/k", &json!(1)),
        403,
        "collection_not_allowed",
        &["\"other\" is not declared", "accept_undeclared is false"],
    );
    node.refused(
        "DELETE in an undeclared collection",
        |n| n.delete("/v1/kv/other/k"),
        403,
        "collection_not_allowed",
        &["\"other\""],
    );
    node.refused(
        "scan of an undeclared collection",
        |n| n.get("/v1/scan/other"),
        403,
        "collection_not_allowed",
        &["\"other\""],
    );
    node.refused(
        "watch filtered on an undeclared collection",
        |n| n.get("/v1/watch?collection=other&follow=false"),
        403,
        "collection_not_allowed",
        &["\"other\""],
    );

    // Keys.
    node.refused(
        "PUT with an empty key",
        |n| n.put_json("/v1/kv/orders/", &json!(1)),
        400,
        "bad_key",
        &["must not be empty"],
    );
    node.refused(
        "DELETE with an empty key",
        |n| n.delete("/v1/kv/orders/"),
        400,
        "bad_key",
        &["must not be empty"],
    );
    let long_key = format!("/v1/kv/orders/{}", "k".repeat(65));
    node.refused(
        "key over max_key_bytes",
        |n| n.put_json(&long_key, &json!(1)),
        400,
        "bad_key",
        &["65 bytes", "limit of 64", "max_key_bytes"],
    );
    let long_binary_key = format!("/v1/kv/orders/{}", "%FF".repeat(65));
    node.refused(
        "percent-encoded key over max_key_bytes once decoded",
        |n| n.put_json(&long_binary_key, &json!(1)),
        400,
        "bad_key",
        &["65 bytes", "limit of 64"],
    );

    // Media type and body size.
    node.refused(
        "PUT with text/plain",
        |n| n.put(k, "text/plain", b"1"),
        415,
        "unsupported_media_type",
        &["\"text/plain\"", "application/json or application/cbor"],
    );
    node.refused(
        "batch with text/plain",
        |n| n.batch("text/plain", b"{}"),
        415,
        "unsupported_media_type",
        &["\"text/plain\""],
    );
    let huge = json!("y".repeat(5000)).to_string();
    node.refused(
        "PUT body over max_request_bytes",
        |n| n.put(k, "application/json", huge.as_bytes()),
        413,
        "request_too_large",
        &["4096 bytes", "max_request_bytes"],
    );
    let huge_batch =
        json!({"writes": [{"collection": "orders", "key": "a", "value": "z".repeat(5000)}]});
    node.refused(
        "batch body over max_request_bytes",
        |n| n.batch_json(&huge_batch),
        413,
        "request_too_large",
        &["4096 bytes", "max_request_bytes"],
    );

    // Batches with one bad write among good ones: nothing of them is stored.
    let good = |key: &str| json!({"collection": "orders", "key": key, "value": {"ok": true}});
    let bad_batches: [(&str, Json, u16, &str, &[&str]); 12] = [
        (
            "unknown op",
            json!({"writes": [good("b1"), {"collection": "orders", "key": "b2", "op": "upsert", "value": 1}, good("b3")]}),
            400,
            "bad_batch",
            &["writes[1]", "unknown op \"upsert\""],
        ),
        (
            "put without a value",
            json!({"writes": [good("b1"), good("b2"), {"collection": "orders", "key": "b3", "op": "put"}]}),
            400,
            "bad_batch",
            &["writes[2]", "a put needs a \"value\""],
        ),
        (
            "delete with a value",
            json!({"writes": [good("b1"), {"collection": "orders", "key": "b2", "op": "delete", "value": 1}]}),
            400,
            "bad_batch",
            &["writes[1]", "a delete takes no \"value\""],
        ),
        (
            "missing key",
            json!({"writes": [good("b1"), {"collection": "orders", "value": 1}]}),
            400,
            "bad_batch",
            &["writes[1]", "missing \"key\""],
        ),
        (
            "empty key",
            json!({"writes": [good("b1"), {"collection": "orders", "key": "", "value": 1}]}),
            400,
            "bad_key",
            &["writes[1]", "must not be empty"],
        ),
        (
            "value too deep",
            json!({"writes": [good("b1"), {"collection": "orders", "key": "b2", "value": [[[[[0]]]]]}]}),
            400,
            "bad_value",
            &["writes[1]", "nested deeper than 4"],
        ),
        (
            "too many meta entries",
            json!({"writes": [good("b1"), {"collection": "orders", "key": "b2", "value": 1, "meta": {"a": "1", "b": "2", "c": "3"}}]}),
            400,
            "bad_meta",
            &["writes[1]", "3 metadata entries", "max_meta_entries"],
        ),
        (
            "unknown field in a write",
            json!({"writes": [good("b1"), {"collection": "orders", "key": "b2", "value": 1, "colour": "red"}]}),
            400,
            "bad_batch",
            &["writes[1]", "unknown field \"colour\""],
        ),
        (
            "a context that is not text",
            json!({"writes": [good("b1"), {"collection": "orders", "key": "b2", "value": 1, "context": 5}]}),
            400,
            "bad_batch",
            &["writes[1]", "\"context\" must be a string"],
        ),
        (
            "a context that is not origin:seq entries",
            json!({"writes": [good("b1"), {"collection": "orders", "key": "b2", "value": 1, "context": "n-1:1,n-1:2"}]}),
            400,
            "bad_batch",
            &["writes[1]", "\"context\"", "names its origin again"],
        ),
        (
            "a context naming more origins than the node may hold",
            json!({"writes": [good("b1"), {"collection": "orders", "key": "b2", "value": 1, "context": (0..40).map(|i| format!("o{i}:1")).collect::<Vec<_>>().join(",")}]}),
            400,
            "bad_batch",
            &["writes[1]", "origins at most"],
        ),
        (
            "unknown top-level field",
            json!({"writes": [good("b1")], "atomic": true}),
            400,
            "bad_batch",
            &["unknown field \"atomic\""],
        ),
    ];
    for (what, body, status, kind, needles) in &bad_batches {
        node.refused(what, |n| n.batch_json(body), *status, kind, needles);
    }
    // A CBOR batch field of the wrong type (a context as a number, say) is named as in JSON
    // (it was "malformed").
    for (field, wrong) in [("context", 7i64), ("schema", -1), ("op", 1), ("meta", 5)] {
        let mut body = Vec::new();
        let mut e = minicbor::Encoder::new(&mut body);
        e.map(1).unwrap().str("writes").unwrap().array(1).unwrap();
        e.map(4).unwrap();
        e.str("collection").unwrap().str("orders").unwrap();
        e.str("key").unwrap().bytes(b"b1").unwrap();
        e.str("value").unwrap().u64(1).unwrap();
        e.str(field).unwrap().i64(wrong).unwrap();
        let needle = format!("\"{field}\" has the wrong type");
        node.refused(
            field,
            |n| n.batch("application/cbor", &body),
            400,
            "bad_batch",
            &["writes[0]", &needle],
        );
    }
    // A header context that is not text, or not entries.
    node.refused(
        "a context header that is not origin:seq entries",
        |n| {
            finish(
                n.agent
                    .put(n.url(k))
                    .header("content-type", "application/json")
                    .header("x-edgerep-context", "n-1:zero")
                    .send(b"1".as_slice()),
                k,
            )
        },
        400,
        "bad_context",
        &["x-edgerep-context", "not a sequence number"],
    );
    // Given twice, the lines are one list (as HTTP joins them): the second is read too, not
    // left out unsaid.
    node.refused(
        "a context header given twice, its second line not entries",
        |n| {
            finish(
                n.agent
                    .put(n.url(k))
                    .header("content-type", "application/json")
                    .header("x-edgerep-context", "site-a:1")
                    .header("x-edgerep-context", "n-1:zero")
                    .send(b"1".as_slice()),
                k,
            )
        },
        400,
        "bad_context",
        &["x-edgerep-context", "not a sequence number"],
    );
    node.refused(
        "undeclared collection in a batch",
        |n| {
            n.batch_json(&json!({"writes": [good("b1"), {"collection": "other", "key": "b2", "value": 1}, good("b3")]}))
        },
        403,
        "collection_not_allowed",
        &["writes[1]", "\"other\" is not declared"],
    );
    node.refused(
        "empty batch",
        |n| n.batch_json(&json!({"writes": []})),
        400,
        "bad_batch",
        &["the batch is empty"],
    );
    node.refused(
        "malformed JSON batch",
        |n| n.batch("application/json", b"{\"writes\": [}"),
        400,
        "malformed_json",
        &["malformed JSON"],
    );
    // The JSON body is read as it streams; what it refuses is what reading it whole refused.
    let streamed: [(&str, &[u8], &str, &str); 6] = [
        (
            "a body that is not an object",
            b"[1]",
            "bad_batch",
            "expected an object with \"writes\"",
        ),
        (
            "no writes",
            b"{}",
            "bad_batch",
            "\"writes\" must be an array",
        ),
        (
            "writes not an array",
            br#"{"writes": 5}"#,
            "bad_batch",
            "\"writes\" must be an array",
        ),
        (
            "writes named twice",
            br#"{"writes": [], "writes": []}"#,
            "malformed_json",
            "duplicate object key \"writes\"",
        ),
        (
            "a key named twice in a write",
            br#"{"writes": [{"collection": "orders", "key": "b1", "key": "b2", "value": 1}]}"#,
            "malformed_json",
            "duplicate object key \"key\"",
        ),
        (
            "text after the body",
            br#"{"writes": [{"collection": "orders", "key": "b1", "value": 1}]} x"#,
            "malformed_json",
            "trailing characters",
        ),
    ];
    for (what, body, kind, needle) in streamed {
        node.refused(
            what,
            |n| n.batch("application/json", body),
            400,
            kind,
            &[needle],
        );
    }
    node.refused(
        "malformed CBOR batch",
        |n| n.batch("application/cbor", &[0xa1, 0x66]),
        400,
        "malformed_cbor",
        &["ends early"],
    );
    let cbor_bad_op = cbor_batch(&[
        ("orders", &b"b1"[..], "put", Some(1)),
        ("orders", &b"b2"[..], "merge", Some(2)),
    ]);
    node.refused(
        "CBOR batch with an unknown op",
        |n| n.batch("application/cbor", &cbor_bad_op),
        400,
        "bad_batch",
        &["writes[1]", "unknown op \"merge\""],
    );
    let cbor_undeclared = cbor_batch(&[
        ("orders", &b"b1"[..], "put", Some(1)),
        ("other", &b"b2"[..], "put", Some(2)),
    ]);
    node.refused(
        "CBOR batch with an undeclared collection",
        |n| n.batch("application/cbor", &cbor_undeclared),
        403,
        "collection_not_allowed",
        &["writes[1]", "\"other\""],
    );
    for key in ["b1", "b2", "b3"] {
        node.assert_missing(&format!("/v1/kv/orders/{key}"));
    }

    // Batch size: at most 5 writes.
    let six: Vec<Json> = (0..6).map(|i| good(&format!("m{i}"))).collect();
    node.refused(
        "JSON batch over max_batch_events",
        |n| n.batch_json(&json!({ "writes": six })),
        413,
        "batch_too_large",
        &["6 writes", "limit of 5", "max_batch_events"],
    );
    let six_cbor: Vec<(&str, &[u8], &str, Option<u64>)> = (0..6)
        .map(|_| ("orders", &b"m"[..], "put", Some(1)))
        .collect();
    let six_cbor = cbor_batch(&six_cbor);
    node.refused(
        "CBOR batch over max_batch_events",
        |n| n.batch("application/cbor", &six_cbor),
        413,
        "batch_too_large",
        &["6 writes", "limit of 5"],
    );
    node.assert_missing("/v1/kv/orders/m0");

    // Query parameters.
    for (what, path, needle) in [
        (
            "scan limit=0",
            "/v1/scan/orders?limit=0",
            "limit must be 1 to 10000",
        ),
        (
            "scan limit over the maximum",
            "/v1/scan/orders?limit=10001",
            "limit must be 1 to 10000",
        ),
        (
            "scan limit not a number",
            "/v1/scan/orders?limit=ten",
            "limit",
        ),
        (
            "scan unknown parameter",
            "/v1/scan/orders?colour=red",
            "colour",
        ),
        ("watch unknown parameter", "/v1/watch?since=3", "since"),
        (
            "watch negative after",
            "/v1/watch?after=-1&follow=false",
            "after",
        ),
        (
            "get versions not a bool",
            "/v1/kv/orders/seed?versions=maybe",
            "versions",
        ),
        ("status unknown parameter", "/v1/status?deep=1", "deep"),
        (
            "changelog unknown parameter",
            "/v1/changelog/site-a?from=1",
            "from",
        ),
        (
            "changelog limit zero",
            "/v1/changelog/site-a?limit=0",
            "limit must be 1 to 10000",
        ),
        // Every listing holds its limit to the same range (these two clamped it silently).
        (
            "dead letters limit zero",
            "/v1/dead-letters?limit=0",
            "limit must be 1 to 10000",
        ),
        (
            "disagreements limit over the maximum",
            "/v1/disagreements?limit=50000",
            "limit must be 1 to 10000",
        ),
        (
            "watch limit zero",
            "/v1/watch?limit=0&follow=false",
            "limit must be at least 1",
        ),
    ] {
        node.refused(what, |n| n.get(path), 400, "bad_query", &[needle]);
    }
    // A cursor beyond the end of the feed (only possible after a crash lost the last commits of a
    // periodic collection) is refused rather than followed past events numbered again.
    node.refused(
        "watch beyond the end of the feed",
        |n| n.get("/v1/watch?after=1000000&follow=false"),
        400,
        "cursor_ahead",
        &["after=1000000", "beyond the end"],
    );
    node.refused(
        "unknown route",
        |n| n.get("/v1/nope"),
        404,
        "no_such_route",
        &["/v1/nope"],
    );

    // After all that, the boundaries are accepted and the seed is intact.
    assert_eq!(node.value("/v1/kv/orders/seed"), json!({"n": 1}));
    let before = node.snapshot();
    let mut bstr = vec![0x58, 254];
    bstr.extend([7u8; 254]);
    node.put_cbor("/v1/kv/orders/exactly-256", &bstr).ok_json();
    node.put_json("/v1/kv/orders/depth-4", &json!([[[[1]]]]))
        .ok_json();
    let key64 = format!("/v1/kv/orders/{}", "k".repeat(64));
    node.put_json(&key64, &json!(64)).ok_json();
    let five: Vec<Json> = (0..5).map(|i| good(&format!("m{i}"))).collect();
    let r = node.batch_json(&json!({ "writes": five })).ok_json();
    assert_eq!(r["committed"].as_array().unwrap().len(), 5);
    assert_eq!(node.value("/v1/kv/orders/depth-4"), json!([[[[1]]]]));
    assert_eq!(node.value(&key64), json!(64));
    assert_eq!(node.get_cbor("/v1/kv/orders/exactly-256").body, bstr);
    assert_eq!(node.snapshot().feed_last, before.feed_last + 8);
    let status = node.get("/v1/status?verify=true").ok_json();
    assert_eq!(status["verified"], true, "{status}");
    node.stop();
}

#[test]
fn values_keys_deletes_and_batches_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), OPEN);

    // JSON in, JSON out.
    let doc = json!({"name": "widget", "tags": ["a", "b"], "n": [1, -2, 2.5, true, null], "nested": {"z": {}, "a": []}});
    let put = node.put_json("/v1/kv/items/w1", &doc).ok_json();
    assert_eq!(put["seq"], 1);
    assert_eq!(put["position"], 1);
    let got = node.get("/v1/kv/items/w1");
    assert_eq!(got.ok_json(), doc);
    assert_eq!(got.header("x-edgerep-origin"), Some("site-a"));
    assert_eq!(got.header("x-edgerep-seq"), Some("1"));
    assert_eq!(got.header("x-edgerep-versions"), Some("1"));
    assert_eq!(got.header("x-edgerep-hlc"), put["hlc"].as_str());

    // Non-canonical CBOR in (unsorted map), canonical CBOR out.
    node.put_cbor(
        "/v1/kv/items/c1",
        &[0xa2, 0x61, 0x62, 0x02, 0x61, 0x61, 0x01],
    )
    .ok_json();
    let got = node.get_cbor("/v1/kv/items/c1");
    assert_eq!(got.status, 200);
    assert_eq!(got.header("content-type"), Some("application/cbor"));
    assert_eq!(got.body, [0xa2, 0x61, 0x61, 0x01, 0x61, 0x62, 0x02]);
    assert_eq!(node.value("/v1/kv/items/c1"), json!({"a": 1, "b": 2}));
    // Indefinite lengths and a non-shortest integer are re-encoded too.
    node.put_cbor("/v1/kv/items/c2", &[0x9f, 0x18, 0x01, 0x02, 0xff])
        .ok_json();
    assert_eq!(node.get_cbor("/v1/kv/items/c2").body, [0x82, 0x01, 0x02]);

    // Overwrite, then delete.
    node.put_json("/v1/kv/items/w1", &json!("v2")).ok_json();
    assert_eq!(node.value("/v1/kv/items/w1"), json!("v2"));
    let del = node.delete("/v1/kv/items/w1").ok_json();
    let r = node.get("/v1/kv/items/w1");
    assert_eq!(r.status, 404);
    let body = r.json();
    assert_eq!(body["kind"], "key_not_found");
    let message = body["error"].as_str().unwrap();
    assert!(
        message.contains("\"w1\"") && message.contains("\"items\""),
        "{message}"
    );
    let versions = node.value("/v1/kv/items/w1?versions=true");
    assert_eq!(versions["versions"].as_array().unwrap().len(), 1);
    assert_eq!(versions["versions"][0]["op"], "delete");
    assert_eq!(versions["versions"][0]["seq"], del["seq"]);
    node.assert_missing("/v1/kv/items/never-written");
    // Listing the versions of a key that never existed says it is absent too.
    let r = node.get("/v1/kv/items/never-written?versions=true");
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.json()["kind"], "key_not_found");

    // A write takes no query string: an unencoded '?' in a key would otherwise cut the key
    // short and land the write on another key.
    let r = node.put_json("/v1/kv/items/a?b", &json!(1));
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["kind"], "bad_query");
    assert!(r.text().contains("%3F"), "{}", r.text());
    node.assert_missing("/v1/kv/items/a");
    node.put_json("/v1/kv/items/o-1", &json!(1)).ok_json();
    let r = node.delete("/v1/kv/items/o-1?x=1");
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(node.value("/v1/kv/items/o-1"), json!(1));
    // Percent-encoded, '?' is part of the key.
    node.put_json("/v1/kv/items/a%3Fb", &json!(2)).ok_json();
    assert_eq!(node.value("/v1/kv/items/a%3Fb"), json!(2));
    node.assert_missing("/v1/kv/items/a");

    // Keys with '/' and bytes that are not UTF-8.
    for (path, key_json, value) in [
        (
            "/v1/kv/items/dir/sub/file.txt",
            json!({"key": "dir/sub/file.txt"}),
            json!(1),
        ),
        ("/v1/kv/items/a%20b%3Fc", json!({"key": "a b?c"}), json!(2)),
        (
            "/v1/kv/items/bin%FF%00x",
            json!({"key_base64": base64::engine::general_purpose::STANDARD.encode(b"bin\xff\x00x")}),
            json!(3),
        ),
    ] {
        let put = node.put_json(path, &value).ok_json();
        assert_eq!(node.value(path), value, "{path}");
        let v = node.value(&format!("{path}?versions=true"));
        let only = &v["versions"][0];
        for (field, expected) in key_json.as_object().unwrap() {
            assert_eq!(&only[field], expected, "{path}: {v}");
        }
        assert_eq!(only["seq"], put["seq"]);
        assert_eq!(only["value"], value);
    }
    // The raw bytes, not their text: %FF and its UTF-8 replacement are different keys.
    node.assert_missing("/v1/kv/items/bin%EF%BF%BD%00x");

    // `?versions=true`: one version with origin, seq and hlc.
    let put = node.put_json("/v1/kv/items/v", &json!({"x": 1})).ok_json();
    let v = node.value("/v1/kv/items/v?versions=true");
    assert_eq!(v["collection"], "items");
    let list = v["versions"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{v}");
    assert_eq!(list[0]["origin"], "site-a");
    assert_eq!(list[0]["seq"], put["seq"]);
    assert_eq!(list[0]["hlc"], put["hlc"]);
    assert_eq!(list[0]["op"], "put");
    assert_eq!(list[0]["key"], "v");
    assert_eq!(list[0]["value"], json!({"x": 1}));

    // JSON batch: all writes committed, answered in order.
    let before = node.snapshot();
    let r = node
        .batch_json(&json!({"writes": [
            {"collection": "items", "key": "b1", "value": {"i": 1}},
            {"collection": "other", "key_base64": "AAE=", "op": "put", "value": [1, 2], "meta": {"by": "test"}, "schema": 3},
            {"collection": "items", "key": "v", "op": "delete"},
        ]}))
        .ok_json();
    let committed = r["committed"].as_array().unwrap();
    assert_eq!(committed.len(), 3);
    for (i, c) in committed.iter().enumerate() {
        assert_eq!(c["position"], before.feed_last + 1 + i as u64, "{r}");
        assert_eq!(c["seq"], before.feed_last + 1 + i as u64, "{r}");
    }
    assert!(hlc(&committed[0]["hlc"]) < hlc(&committed[1]["hlc"]));
    assert!(hlc(&committed[1]["hlc"]) < hlc(&committed[2]["hlc"]));
    assert_eq!(node.value("/v1/kv/items/b1"), json!({"i": 1}));
    assert_eq!(node.value("/v1/kv/other/%00%01"), json!([1, 2]));
    let v = node.value("/v1/kv/other/%00%01?versions=true");
    assert_eq!(v["versions"][0]["schema"], 3);
    assert_eq!(v["versions"][0]["meta"], json!({"by": "test"}));
    node.assert_missing("/v1/kv/items/v");
    assert_eq!(node.snapshot().feed_last, before.feed_last + 3);

    // CBOR batch, JSON answer.
    let before = node.snapshot();
    let body = cbor_batch(&[
        ("items", &b"cb1"[..], "put", Some(10)),
        ("items", &[0xfe, 0xff][..], "put", Some(11)),
        ("items", &b"b1"[..], "delete", None),
    ]);
    let r = node.batch("application/cbor", &body).ok_json();
    let committed = r["committed"].as_array().unwrap();
    let got: Vec<u64> = committed
        .iter()
        .map(|c| c["position"].as_u64().unwrap())
        .collect();
    let first = before.feed_last + 1;
    assert_eq!(got, [first, first + 1, first + 2]);
    assert_eq!(node.value("/v1/kv/items/cb1"), json!(10));
    assert_eq!(node.value("/v1/kv/items/%FE%FF"), json!(11));
    node.assert_missing("/v1/kv/items/b1");

    // CBOR batch, compact CBOR answer: [lowest position, highest position, count].
    let body = cbor_batch(&[
        ("items", &b"cb2"[..], "put", Some(20)),
        ("items", &b"cb3"[..], "put", Some(21)),
    ]);
    let r = finish(
        node.agent
            .post(node.url("/v1/batch"))
            .header("content-type", "application/cbor")
            .header("accept", "application/cbor")
            .send(&body[..]),
        "cbor batch",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/cbor"));
    let mut d = minicbor::Decoder::new(&r.body);
    assert_eq!(d.array().unwrap(), Some(4));
    let (first, last, count, refused) = (
        d.u64().unwrap(),
        d.u64().unwrap(),
        d.u64().unwrap(),
        d.u64().unwrap(),
    );
    assert_eq!(
        (first, last, count, refused),
        (before.feed_last + 4, before.feed_last + 5, 2, 0)
    );
    assert_eq!(node.value("/v1/kv/items/cb2"), json!(20));
    assert_eq!(node.value("/v1/kv/items/cb3"), json!(21));

    let status = node.get("/v1/status?verify=true").ok_json();
    assert_eq!(status["verified"], true, "{status}");
    assert_eq!(status["node_id"], "site-a");
    assert_eq!(status["origins"]["site-a"], status["feed_last"]);
    node.stop();
}

#[test]
fn scan_pages_filters_and_skips_deleted_keys() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), OPEN);
    // 25 keys in "s", written in a scrambled order, plus neighbours that must not show up.
    let mut order: Vec<u32> = (0..25).collect();
    order.sort_by_key(|i| (i * 7) % 25);
    let writes: Vec<Json> = order
        .iter()
        .map(|i| json!({"collection": "s", "key": format!("k{i:02}"), "value": i}))
        .collect();
    node.batch_json(&json!({ "writes": writes })).ok_json();
    node.batch_json(&json!({"writes": [
        {"collection": "r", "key": "k00", "value": "other collection"},
        {"collection": "t", "key": "k99", "value": "other collection"},
        {"collection": "s", "key": "p/1", "value": "p1"},
        {"collection": "s", "key": "p/2", "value": "p2"},
        {"collection": "s", "key": "q/1", "value": "q1"},
    ]}))
    .ok_json();

    let scan = |query: &str| -> (Vec<(String, Json)>, Option<String>) {
        let r = node.value(&format!("/v1/scan/s?{query}"));
        assert_eq!(r["collection"], "s");
        let items = r["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| (i["key"].as_str().unwrap().to_owned(), i["value"].clone()))
            .collect();
        (items, r["next"].as_str().map(str::to_owned))
    };
    let all_pages = |query: &str| -> (Vec<(String, Json)>, Vec<usize>) {
        let mut keys = Vec::new();
        let mut sizes = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let q = match &after {
                Some(a) => format!("{query}&after={}", enc(a)),
                None => query.to_owned(),
            };
            let (items, next) = scan(&q);
            sizes.push(items.len());
            keys.extend(items);
            assert!(sizes.len() < 20, "scan does not end: {keys:?}");
            match next {
                Some(n) => after = Some(n),
                None => return (keys, sizes),
            }
        }
    };

    let expected: Vec<(String, Json)> = (0..25).map(|i| (format!("k{i:02}"), json!(i))).collect();
    let (got, sizes) = all_pages("prefix=k&limit=10");
    assert_eq!(got, expected);
    assert_eq!(sizes, [10, 10, 5]);
    // Without a prefix the p/ and q/ keys are there too, after the k keys.
    let (got, _) = all_pages("limit=10");
    assert_eq!(got.len(), 28);
    assert_eq!(got[25].0, "p/1");
    assert_eq!(got[27].0, "q/1");
    // Default limit: everything in one page.
    let (got, next) = scan("");
    assert_eq!((got.len(), next), (28, None));

    // Prefix and range filters.
    let (got, _) = scan(&format!("prefix={}", enc("p/")));
    assert_eq!(
        got,
        [("p/1".into(), json!("p1")), ("p/2".into(), json!("p2"))]
    );
    let (got, _) = scan("start=k05&end=k08");
    let keys: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["k05", "k06", "k07"]);
    let (got, _) = scan("prefix=k2&start=k22");
    let keys: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["k22", "k23", "k24"]);
    let (got, next) = scan("start=k05&end=k08&limit=2");
    assert_eq!(got.len(), 2);
    let (got, next) = scan(&format!(
        "start=k05&end=k08&limit=2&after={}",
        next.unwrap()
    ));
    assert_eq!(got, [("k07".into(), json!(7))]);
    assert_eq!(next, None);

    // Deleted keys are not listed, and paging over them still yields every live key once.
    for key in ["k00", "k03", "k10", "k11", "k24"] {
        node.delete(&format!("/v1/kv/s/{key}")).ok_json();
    }
    let expected: Vec<(String, Json)> = (0..25)
        .filter(|i| ![0, 3, 10, 11, 24].contains(i))
        .map(|i| (format!("k{i:02}"), json!(i)))
        .collect();
    let (got, _) = all_pages("prefix=k&limit=10");
    assert_eq!(got, expected);
    let (got, _) = all_pages("prefix=k&limit=3");
    assert_eq!(got, expected);
    let (got, _) = scan("start=k09&end=k13");
    let keys: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["k09", "k12"]);
    node.stop();
}

/// Raw HTTP/1.1 with the given headers (the client library sets Host itself): the status code.
fn raw_status(addr: &str, request_line: &str, headers: &[(&str, &str)], body: &str) -> u16 {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    let mut text = format!("{request_line} HTTP/1.1\r\n");
    for (k, v) in headers {
        text.push_str(&format!("{k}: {v}\r\n"));
    }
    text.push_str(&format!(
        "content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    ));
    stream.write_all(text.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// A web page in the operator's browser cannot use a node that trusts loopback: a request from
/// another origin (a form or `fetch` posting a batch, a replay or a reload) is refused, and so
/// is one addressed to the node under a name that is not a loopback one (DNS rebinding, which
/// would also let the page read). Before, both were served: nothing checked Origin or Host.
#[test]
fn a_web_page_of_another_origin_cannot_use_a_loopback_api() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), OPEN);
    let addr = node.base.trim_start_matches("http://").to_owned();
    let port = addr.rsplit_once(':').unwrap().1.to_owned();
    let batch = r#"{"writes": [{"collection": "c", "key": "k", "value": 1}]}"#;
    let before = node.snapshot();
    let post = |headers: &[(&str, &str)]| raw_status(&addr, "POST /v1/batch", headers, batch);
    assert_eq!(
        post(&[("host", &addr), ("origin", "http://evil.example")]),
        403
    );
    assert_eq!(post(&[("host", &addr), ("origin", "null")]), 403);
    let rebound = format!("evil.example:{port}");
    assert_eq!(post(&[("host", &rebound)]), 403);
    assert_eq!(
        raw_status(&addr, "GET /v1/kv/c/k", &[("host", &rebound)], ""),
        403
    );
    // A GET another site's page makes (an image, a script: no Origin), which could start a
    // full verify again and again or hold watch streams: the browser says where it came from.
    for site in ["cross-site", "same-site"] {
        assert_eq!(
            raw_status(
                &addr,
                "GET /v1/status?verify=true",
                &[("host", &addr), ("sec-fetch-site", site)],
                ""
            ),
            403,
            "{site}"
        );
    }
    assert_eq!(node.snapshot(), before, "nothing written");
    // The node's own page (same origin), and clients that send no Origin, are served.
    let own = format!("http://{addr}");
    assert_eq!(post(&[("host", &addr), ("origin", &own)]), 200);
    // The same page through a TLS proxy in front of the node.
    let own_tls = format!("https://{addr}");
    assert_eq!(post(&[("host", &addr), ("origin", &own_tls)]), 200);
    let other_tls = format!("https://evil.example:{port}");
    assert_eq!(post(&[("host", &addr), ("origin", &other_tls)]), 403);
    let local = format!("localhost:{port}");
    assert_eq!(
        raw_status(&addr, "GET /v1/kv/c/k", &[("host", &local)], ""),
        200
    );
    for site in ["same-origin", "none"] {
        assert_eq!(
            raw_status(
                &addr,
                "GET /v1/kv/c/k",
                &[("host", &addr), ("sec-fetch-site", site)],
                ""
            ),
            200,
            "{site}"
        );
    }
    node.stop();
}

/// The watch serves only synced positions: a commit of a periodic collection is acknowledged
/// before its sync, and a crash before the sync loses it and numbers the next events from the
/// last synced position again, so a watcher that had seen it would skip what came there next.
/// Here the sync interval is a minute: the periodic write stays out of the feed (and of this
/// node's changelog) until a durable write syncs it too.
#[test]
fn the_watch_serves_only_synced_positions() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
[node]
id = "site-a"
data_dir = '{}'
sync_interval_ms = 60000

[api]
listen = "127.0.0.1:0"

[replication]
listen = "127.0.0.1:1"

[collections]
accept_undeclared = true

[[collections.declared]]
name = "fast"
durability = "periodic"
"#,
        dir.path().join("data").display()
    );
    let config = Config::parse(&text, &dir.path().join("edgerep.toml")).unwrap();
    let node = Node::start_config(config);
    let answer = node.put_json("/v1/kv/fast/k1", &json!(1)).ok_json();
    assert_eq!(answer["position"], 1, "{answer}");
    assert_eq!(node.status()["feed_last"], 1, "committed");
    assert_eq!(
        positions(&node.watch("after=0&follow=false")),
        [] as [u64; 0],
        "not synced yet: not served"
    );
    // A watch from that position (a client resuming after the write's answer) is no cursor
    // beyond the end: it opens, however long the sync takes (it was refused after 5 s).
    let from_it = node.get("/v1/watch?after=1&follow=false");
    assert_eq!(from_it.status, 200, "{}", from_it.text());
    // A read's context names none of this node's unsynced events either: a crash would give
    // their numbers to other writes, which a write under this context would then supersede
    // unseen on every node.
    let read = node.get("/v1/kv/fast/k1");
    assert_eq!(read.status, 200);
    assert_eq!(
        read.header("x-edgerep-context"),
        Some(""),
        "{:?}",
        read.header("x-edgerep-context")
    );
    let listed = node.value("/v1/kv/fast/k1?versions=true");
    assert_eq!(listed["context"], "", "{listed}");
    // Nor does this node's changelog list it: a client paging on with `after` would skip the
    // other write a crash gave its number to.
    let own = node.value("/v1/changelog/site-a?after=0");
    assert_eq!(own["events"], json!([]), "{own}");
    // A durable write syncs everything before it.
    node.put_json("/v1/kv/slow/k2", &json!(2)).ok_json();
    assert_eq!(positions(&node.watch("after=0&follow=false")), [1, 2]);
    let own = node.value("/v1/changelog/site-a?after=0");
    let seqs: Vec<&Json> = own["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["seq"])
        .collect();
    assert_eq!(seqs, [1, 2], "{own}");
    let read = node.get("/v1/kv/fast/k1");
    assert_eq!(read.header("x-edgerep-context"), Some("site-a:1"));
    node.stop();
}

#[test]
fn watch_lists_resumes_filters_and_follows() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), OPEN);
    for (i, collection) in ["a", "b", "a", "b", "a"].iter().enumerate() {
        node.put_json(&format!("/v1/kv/{collection}/w{i}"), &json!(i))
            .ok_json();
    }
    node.delete("/v1/kv/a/w0").ok_json(); // position 6

    let all = node.watch("after=0&follow=false");
    assert_eq!(positions(&all), [1, 2, 3, 4, 5, 6]);
    for (i, line) in all.iter().take(5).enumerate() {
        assert_eq!(line["key"], format!("w{i}"));
        assert_eq!(line["op"], "put");
        assert_eq!(line["value"], json!(i));
        assert_eq!(line["origin"], "site-a");
        assert_eq!(line["seq"], i as u64 + 1);
    }
    assert_eq!(all[5]["op"], "delete");
    assert!(all[5].get("value").is_none(), "{}", all[5]);
    // Resume after a position; `after` defaults to 0.
    assert_eq!(positions(&node.watch("after=3&follow=false")), [4, 5, 6]);
    assert_eq!(positions(&node.watch("follow=false")), [1, 2, 3, 4, 5, 6]);
    assert_eq!(
        positions(&node.watch("after=6&follow=false")),
        [] as [u64; 0]
    );
    // Beyond the end of the feed: refused (see `refused_requests_answer_4xx_and_write_nothing`).
    assert_eq!(node.get("/v1/watch?after=99&follow=false").status, 400);
    // Collection filter, limit, and both.
    assert_eq!(
        positions(&node.watch("collection=a&follow=false")),
        [1, 3, 5, 6]
    );
    assert_eq!(
        positions(&node.watch("collection=b&after=2&follow=false")),
        [4]
    );
    assert_eq!(positions(&node.watch("limit=2&follow=false")), [1, 2]);
    assert_eq!(
        positions(&node.watch("limit=2")),
        [1, 2],
        "a limit ends a following watch"
    );
    assert_eq!(
        positions(&node.watch("collection=a&after=1&limit=2&follow=false")),
        [3, 5]
    );

    // A following watch started before the writes sees them as they commit.
    let follow = |query: &str| {
        let (tx, rx) = mpsc::channel::<Option<String>>();
        let (agent, url) = (node.agent.clone(), node.url(&format!("/v1/watch?{query}")));
        std::thread::spawn(move || {
            let resp = agent.get(url).call().expect("watch request");
            assert_eq!(resp.status(), 200);
            let _ = tx.send(None); // headers received: the stream is open
            let reader = std::io::BufReader::new(resp.into_body().into_reader());
            for line in reader.lines() {
                let _ = tx.send(Some(line.expect("watch line")));
            }
        });
        assert_eq!(
            rx.recv_timeout(TIMEOUT).expect("watch answers its headers"),
            None
        );
        // Give the stream time to read the (empty) rest of the feed and start waiting.
        std::thread::sleep(Duration::from_millis(150));
        rx
    };
    let collect = |rx: mpsc::Receiver<Option<String>>, n: usize| -> Vec<Json> {
        let mut out = Vec::new();
        while out.len() < n {
            let line = rx
                .recv_timeout(TIMEOUT)
                .unwrap_or_else(|e| panic!("watch line {} of {n}: {e}; got {out:?}", out.len()));
            out.push(serde_json::from_str(&line.unwrap()).unwrap());
        }
        // The limit is reached: the stream ends (the sender is dropped).
        assert!(
            matches!(
                rx.recv_timeout(TIMEOUT),
                Err(mpsc::RecvTimeoutError::Disconnected)
            ),
            "the watch should end after its limit"
        );
        out
    };

    let rx = follow("after=6&follow=true&limit=3");
    for i in 0..3 {
        node.put_json(&format!("/v1/kv/f/k{i}"), &json!(i))
            .ok_json();
    }
    let got = collect(rx, 3);
    assert_eq!(positions(&got), [7, 8, 9]);
    let keys: Vec<&str> = got.iter().map(|l| l["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["k0", "k1", "k2"]);

    // Following with a filter: only the matching collection, one batch at a time.
    let rx = follow("after=9&collection=b&limit=2");
    node.put_json("/v1/kv/a/x", &json!("skip")).ok_json(); // 10
    node.put_json("/v1/kv/b/y", &json!("take")).ok_json(); // 11
    node.batch_json(&json!({"writes": [
        {"collection": "a", "key": "x2", "value": 0},
        {"collection": "b", "key": "y2", "value": 1},
        {"collection": "b", "key": "y3", "value": 2},
    ]}))
    .ok_json(); // 12, 13, 14
    let got = collect(rx, 2);
    assert_eq!(positions(&got), [11, 13]);
    assert!(got.iter().all(|l| l["collection"] == "b"));

    // A following watch without a limit ends when the node shuts down, with a last line
    // saying so (a client tells it from a complete listing).
    let rx = follow("after=14");
    node.put_json("/v1/kv/a/last", &json!(true)).ok_json();
    let line: Json = serde_json::from_str(&rx.recv_timeout(TIMEOUT).unwrap().unwrap()).unwrap();
    assert_eq!(line["position"], 15);
    node.stop();
    let end: Json = serde_json::from_str(&rx.recv_timeout(TIMEOUT).unwrap().unwrap()).unwrap();
    assert_eq!(end["kind"], "shutting_down", "{end}");
    assert!(
        end["error"].as_str().unwrap().contains("shutting down"),
        "{end}"
    );
    assert!(matches!(
        rx.recv_timeout(TIMEOUT),
        Err(mpsc::RecvTimeoutError::Disconnected)
    ));
}

#[test]
fn concurrent_writers_get_distinct_gapless_sequence_numbers() {
    const THREADS: usize = 8;
    const PER_THREAD: usize = 50;
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), OPEN);

    let answers: Vec<(String, Json)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let node = &node;
                scope.spawn(move || {
                    (0..PER_THREAD)
                        .map(|i| {
                            let path = format!("/v1/kv/load/t{t}-{i:02}");
                            let r = node.put_json(&path, &json!({"t": t, "i": i})).ok_json();
                            (path, r)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("writer thread"))
            .collect()
    });

    let total = (THREADS * PER_THREAD) as u64;
    let mut by_seq: BTreeMap<u64, &Json> = BTreeMap::new();
    for (path, r) in &answers {
        let seq = r["seq"].as_u64().unwrap();
        assert_eq!(r["position"], seq, "{path}: {r}");
        assert!(by_seq.insert(seq, r).is_none(), "seq {seq} answered twice");
    }
    assert_eq!(
        by_seq.keys().copied().collect::<Vec<_>>(),
        (1..=total).collect::<Vec<_>>()
    );
    // The clock orders the events as their sequence numbers do.
    let clocks: Vec<(u64, u32)> = by_seq.values().map(|r| hlc(&r["hlc"])).collect();
    assert!(clocks.windows(2).all(|w| w[0] < w[1]), "hlc not increasing");

    for t in 0..THREADS {
        for i in 0..PER_THREAD {
            assert_eq!(
                node.value(&format!("/v1/kv/load/t{t}-{i:02}")),
                json!({"t": t, "i": i})
            );
        }
    }
    let status = node.get("/v1/status?verify=true").ok_json();
    assert_eq!(status["feed_last"], total, "{status}");
    assert_eq!(status["state_entries"], total, "{status}");
    assert_eq!(status["origins"], json!({"site-a": total}));
    assert_eq!(status["verified"], true, "{status}");
    let (items, next) = {
        let r = node.value("/v1/scan/load?limit=10000");
        (r["items"].as_array().unwrap().len(), r["next"].clone())
    };
    assert_eq!((items as u64, next), (total, Json::Null));
    assert_eq!(
        positions(&node.watch("follow=false")),
        (1..=total).collect::<Vec<_>>()
    );
    node.stop();
}

#[test]
fn restart_keeps_data_and_continues_sequence_and_clock() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), OPEN);
    node.put_json("/v1/kv/r/a", &json!("alpha")).ok_json();
    node.put_cbor("/v1/kv/r/b", &[0xa1, 0x61, 0x78, 0xf5])
        .ok_json();
    node.put_json("/v1/kv/r/gone", &json!(0)).ok_json();
    let last = node.delete("/v1/kv/r/gone").ok_json();
    assert_eq!(last["seq"], 4);
    let before = node.status();
    node.stop();

    let node = Node::start(dir.path(), OPEN);
    let after = node.get("/v1/status?verify=true").ok_json();
    for field in [
        "digest",
        "feed_last",
        "state_entries",
        "origins",
        "hlc_last",
    ] {
        assert_eq!(
            after[field], before[field],
            "{field} changed over the restart"
        );
    }
    assert_eq!(after["verified"], true, "{after}");
    assert_eq!(node.value("/v1/kv/r/a"), json!("alpha"));
    assert_eq!(node.get_cbor("/v1/kv/r/b").body, [0xa1, 0x61, 0x78, 0xf5]);
    node.assert_missing("/v1/kv/r/gone");

    let next = node.put_json("/v1/kv/r/c", &json!("gamma")).ok_json();
    assert_eq!(next["seq"], 5);
    assert_eq!(next["position"], 5);
    assert!(
        hlc(&next["hlc"]) > hlc(&last["hlc"]),
        "hlc went back: {} then {}",
        last["hlc"],
        next["hlc"]
    );
    assert!(hlc(&next["hlc"]) > hlc(&before["hlc_last"]));
    let batch = node
        .batch_json(&json!({"writes": [
            {"collection": "r", "key": "d", "value": 1},
            {"collection": "r", "key": "a", "op": "delete"},
        ]}))
        .ok_json();
    let seqs: Vec<u64> = batch["committed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [6, 7]);
    let all = node.watch("follow=false");
    assert_eq!(positions(&all), [1, 2, 3, 4, 5, 6, 7]);
    let changelog = node.value("/v1/changelog/site-a?after=4");
    let seqs: Vec<u64> = changelog["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [5, 6, 7]);
    node.stop();

    // And once more: the writes after the first restart survive the second.
    let node = Node::start(dir.path(), OPEN);
    assert_eq!(node.value("/v1/kv/r/c"), json!("gamma"));
    node.assert_missing("/v1/kv/r/a");
    assert_eq!(node.put_json("/v1/kv/r/e", &json!(2)).ok_json()["seq"], 8);
    node.stop();
}

#[test]
fn scan_pages_through_keys_that_are_not_utf8() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), OPEN);
    for k in ["%FF1", "%FF2", "%FF3", "plain"] {
        assert_eq!(
            node.put_json(&format!("/v1/kv/b/{k}"), &json!(k)).status,
            200
        );
    }
    let mut seen = Vec::new();
    let mut cursor = String::new();
    for _ in 0..10 {
        let r = node.value(&format!("/v1/scan/b?limit=1{cursor}"));
        for item in r["items"].as_array().unwrap() {
            seen.push(
                item["key"]
                    .as_str()
                    .map(str::to_owned)
                    .or_else(|| item["key_base64"].as_str().map(|b| format!("b64:{b}")))
                    .unwrap(),
            );
        }
        cursor = match (r["next"].as_str(), r["next_base64"].as_str()) {
            (Some(n), _) => format!("&after={}", enc(n)),
            (None, Some(b)) => format!("&after_base64={}", enc(b)),
            (None, None) => break,
        };
    }
    // "plain" sorts before 0xFF; each non-UTF-8 key comes exactly once, in byte order.
    assert_eq!(seen, ["plain", "b64:/zE=", "b64:/zI=", "b64:/zM="]);
    let r = node.value(&format!("/v1/scan/b?prefix_base64={}", enc("/w==")));
    assert_eq!(r["items"].as_array().unwrap().len(), 3);
    node.refused(
        "both a text and a base64 bound",
        |n| n.get("/v1/scan/b?after=x&after_base64=eA=="),
        400,
        "bad_query",
        &["not both"],
    );
}

/// An API with a token file: every request without the token (or with another) is refused 401,
/// with it served; watch streams beyond `api.max_watch_streams` are refused 503; a reload reads
/// the token file again (a rotation once took effect only at a restart, the old token still
/// good after a reload that said it succeeded).
#[test]
fn a_guarded_api_wants_its_token_and_bounds_watch_streams() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("api.token"), "s3cret-token-0123456789\n").unwrap();
    let node = Node::start_config(config_with_api(
        dir.path(),
        "token_file = \"api.token\"\nmax_watch_streams = 1",
        OPEN,
    ));
    let r = node.get("/v1/status");
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.json()["kind"], "unauthorized");
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    let with = |token: &str, path: &str| {
        finish(
            node.agent
                .get(node.url(path))
                .header("authorization", &format!("Bearer {token}"))
                .call(),
            path,
        )
    };
    assert_eq!(with("s3cret-token-012345678X", "/v1/status").status, 401);
    assert_eq!(with("s3cret", "/v1/status").status, 401);
    assert_eq!(with("s3cret-token-0123456789", "/v1/status").status, 200);
    // The scheme's name in any case (RFC 9110); the token itself exactly.
    let scheme = |value: &str| {
        finish(
            node.agent
                .get(node.url("/v1/status"))
                .header("authorization", value)
                .call(),
            value,
        )
        .status
    };
    assert_eq!(scheme("bearer s3cret-token-0123456789"), 200);
    assert_eq!(scheme("BEARER s3cret-token-0123456789"), 200);
    assert_eq!(scheme("Basic s3cret-token-0123456789"), 401);
    assert_eq!(scheme("Bearer S3CRET-token-0123456789"), 401);
    let put = finish(
        node.agent
            .put(node.url("/v1/kv/orders/o-1"))
            .header("authorization", "Bearer s3cret-token-0123456789")
            .header("content-type", "application/json")
            .send(br#"{"qty": 1}"#.as_slice()),
        "put",
    );
    assert_eq!(put.status, 200, "{}", put.text());
    // One watch stream open (following): the second is refused until it ends.
    let mut first = node
        .agent
        .get(node.url("/v1/watch?after=0&follow=true"))
        .header("authorization", "Bearer s3cret-token-0123456789")
        .call()
        .unwrap();
    assert_eq!(first.status(), 200);
    let second = with("s3cret-token-0123456789", "/v1/watch?after=0&follow=false");
    assert_eq!(second.status, 503, "{}", second.text());
    assert_eq!(second.json()["kind"], "too_many_watches");
    let mut line = String::new();
    std::io::BufReader::new(first.body_mut().as_reader())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("o-1"), "{line}");
    drop(first);
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let again = with("s3cret-token-0123456789", "/v1/watch?after=0&follow=false");
        if again.status == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the slot is given back"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // A token rotated by writing its file and reloading: the old one is refused from then on.
    // A file left with a bad token fails the reload, and the token in force stays.
    let reload = |token: &str| {
        finish(
            node.agent
                .post(node.url("/v1/reload"))
                .header("authorization", &format!("Bearer {token}"))
                .send_empty(),
            "reload",
        )
    };
    // A token a header cannot carry: refused by name, nothing changed.
    std::fs::write(
        dir.path().join("api.token"),
        "tok\u{e9}n-0123456789abcdef\n",
    )
    .unwrap();
    let refused = reload("s3cret-token-0123456789");
    assert_eq!(refused.status, 422, "{}", refused.text());
    assert!(refused.text().contains("header"), "{}", refused.text());
    assert_eq!(with("s3cret-token-0123456789", "/v1/status").status, 200);
    std::fs::write(dir.path().join("api.token"), "short\n").unwrap();
    let refused = reload("s3cret-token-0123456789");
    assert_eq!(refused.status, 422, "{}", refused.text());
    assert!(
        refused.text().contains("api.token_file"),
        "{}",
        refused.text()
    );
    assert_eq!(with("s3cret-token-0123456789", "/v1/status").status, 200);
    // A watch stream opened with the old token (and idle, following) ends at the rotation.
    let mut open = node
        .agent
        .get(node.url("/v1/watch?after=1&follow=true"))
        .header("authorization", "Bearer s3cret-token-0123456789")
        .call()
        .unwrap();
    assert_eq!(open.status(), 200);
    let (ended_tx, ended) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut rest = String::new();
        let read = std::io::Read::read_to_string(&mut open.body_mut().as_reader(), &mut rest);
        let _ = ended_tx.send(read.map(|_| rest));
    });
    std::fs::write(dir.path().join("api.token"), "rotated-token-9876543210\n").unwrap();
    let r = reload("s3cret-token-0123456789");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(with("s3cret-token-0123456789", "/v1/status").status, 401);
    assert_eq!(with("rotated-token-9876543210", "/v1/status").status, 200);
    let rest = ended
        .recv_timeout(TIMEOUT)
        .expect("the old token's watch stream ended")
        .expect("ended cleanly");
    let end: Json = serde_json::from_str(rest.trim_end()).unwrap();
    assert_eq!(end["kind"], "token_changed", "{rest}");
    reader.join().unwrap();
    // A reload that leaves the token as it was ends no stream.
    let mut kept = node
        .agent
        .get(node.url("/v1/watch?after=1&follow=true"))
        .header("authorization", "Bearer rotated-token-9876543210")
        .call()
        .unwrap();
    assert_eq!(reload("rotated-token-9876543210").status, 200);
    let put = finish(
        node.agent
            .put(node.url("/v1/kv/orders/o-2"))
            .header("authorization", "Bearer rotated-token-9876543210")
            .header("content-type", "application/json")
            .send(br#"{"qty": 2}"#.as_slice()),
        "put",
    );
    assert_eq!(put.status, 200, "{}", put.text());
    let mut line = String::new();
    std::io::BufReader::new(kept.body_mut().as_reader())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("o-2"), "{line}");
}

/// Small things a careless client runs into: a JSON object naming a key twice (CBOR maps
/// already refused that), an origin that is not a node id, metadata over `max_meta_bytes`.
#[test]
fn duplicate_json_keys_bad_origins_and_large_metadata_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), OPEN);
    node.refused(
        "duplicate key in a value",
        |n| n.put("/v1/kv/c/k", "application/json", br#"{"a": 1, "a": 2}"#),
        400,
        "malformed_json",
        &["duplicate object key \"a\""],
    );
    node.refused(
        "duplicate key in a batch",
        |n| {
            n.batch(
                "application/json",
                br#"{"writes": [{"collection": "c", "key": "k", "op": "put", "value": 1, "value": 2}]}"#,
            )
        },
        400,
        "malformed_json",
        &["duplicate object key \"value\""],
    );
    node.refused(
        "changelog of a made-up origin",
        |n| n.get("/v1/changelog/..%2F..%2Fnot%20a%20node"),
        400,
        "bad_origin",
        &["is not a node id"],
    );
    let meta: serde_json::Map<String, Json> = (0..2)
        .map(|i| (format!("m{i}"), json!("x".repeat(3000))))
        .collect();
    node.refused(
        "metadata over max_meta_bytes",
        |n| {
            n.batch_json(&json!({"writes": [
                {"collection": "c", "key": "k", "op": "put", "value": 1, "meta": meta}
            ]}))
        },
        400,
        "bad_meta",
        &["bytes of metadata", "limits.max_meta_bytes"],
    );
    // An integer past 64 bits that no float holds exactly would be stored as the nearest
    // float, losing digits: refused where it is, in a value and in a batch.
    node.refused(
        "an integer that would lose digits",
        |n| {
            n.put(
                "/v1/kv/c/k",
                "application/json",
                br#"{"id": 99999999999999999999}"#,
            )
        },
        400,
        "bad_value",
        &[
            "integer 99999999999999999999 at line 1 column 8",
            "send it as a string",
        ],
    );
    node.refused(
        "an integer that would lose digits, in a batch",
        |n| {
            n.batch(
                "application/json",
                br#"{"writes": [{"collection": "c", "key": "k", "op": "put", "value": [-18446744073709551617]}]}"#,
            )
        },
        400,
        "bad_value",
        &["integer -18446744073709551617 at line 1 column 68"],
    );
    // One a float holds exactly (JavaScript writes 1e20 so) is that float.
    assert_eq!(
        node.put("/v1/kv/c/big", "application/json", b"100000000000000000000")
            .status,
        200
    );
    assert_eq!(node.value("/v1/kv/c/big"), json!(1e20));
    assert_eq!(node.get("/v1/changelog/site-a").status, 200);
    // Text of more items than a value may hold is refused as it is read (it was first read
    // whole into a tree: a 16 MiB array of zeros took about a gigabyte).
    let zeros = format!("[{}0]", "0,".repeat(4_000_000));
    node.refused(
        "a value of millions of items",
        |n| n.put("/v1/kv/c/k", "application/json", zeros.as_bytes()),
        400,
        "bad_value",
        &["more than 100000 data items"],
    );
}

/// A reload whose caller stops waiting (the API's request timeout, a client gone, a signal)
/// still runs to its end: stopped at its first wait, the pipeline took the new config and the
/// node kept the old one for ever (here: a raised value limit never took effect).
#[test]
fn a_reload_whose_caller_stops_waiting_runs_to_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(
        dir.path(),
        "[collections]\naccept_undeclared = true\n[limits]\nmax_value_bytes = 256\n",
    );
    let running = node.running.as_ref().unwrap();
    // Each try raises the limit by 100 bytes; its caller is dropped after the first poll.
    // A reload fast enough to end within that poll (no plugin to load) is not cut off: try
    // again with the next limit until one is.
    let mut limit = 256;
    let cut_off = loop {
        limit += 100;
        assert!(limit < 20_000, "no reload was cut off");
        let raised = config(
            dir.path(),
            &format!(
                "[collections]\naccept_undeclared = true\n[limits]\nmax_value_bytes = {limit}\n"
            ),
        );
        let dropped = node.rt.block_on(async {
            tokio::select! {
                biased;
                r = running.reload(raised) => Some(r),
                () = std::future::ready(()) => None,
            }
        });
        if dropped.is_none() {
            break limit;
        }
    };
    // Over the limit before the cut-off reload, within it after.
    let big = json!({"note": "x".repeat(cut_off - 60)});
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let r = node.put_json("/v1/kv/c/k", &big);
        if r.status == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the raised limit never took effect: {}",
            r.text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    node.stop();
}

/// `[authorization]` limits this node's own writes too: it let a node write a collection its
/// origin may not, every peer kept the event out of its state, and the node's state differed
/// from theirs for good (anti-entropy then even copied the write to them). Now such a write is
/// refused 403 `write_not_authorized` whatever the way in (a write, a delete, a batch), and
/// nothing is written.
#[test]
fn writes_to_a_collection_this_node_may_not_write_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(
        dir.path(),
        &format!("{OPEN}\n[authorization]\nsite-a = [\"orders\"]\n"),
    );
    let before = node.snapshot();
    node.refused(
        "a write",
        |n| n.put("/v1/kv/stock/k", "application/json", b"1"),
        403,
        "write_not_authorized",
        &["site-a", "\"stock\"", "[authorization]"],
    );
    node.refused(
        "a delete",
        |n| n.delete("/v1/kv/stock/k"),
        403,
        "write_not_authorized",
        &["\"stock\""],
    );
    node.refused(
        "a batch with one such write",
        |n| {
            n.batch_json(&json!({"writes": [
                {"collection": "orders", "key": "o", "op": "put", "value": 1},
                {"collection": "stock", "key": "k", "op": "put", "value": 1}
            ]}))
        },
        403,
        "write_not_authorized",
        &["write 1 of the request", "\"stock\""],
    );
    assert_eq!(node.snapshot(), before, "nothing written");
    assert_eq!(
        node.put("/v1/kv/orders/o", "application/json", b"1").status,
        200
    );
    // A write answered from its idempotency record does not run again: the refusal still
    // names the refused write by its place in the request (it named write 0 here).
    let first = json!({"collection": "orders", "key": "o2", "op": "put", "value": 2,
        "idempotency_key": "k1"});
    assert_eq!(node.batch_json(&json!({"writes": [first]})).status, 200);
    let before = node.snapshot();
    node.refused(
        "a batch whose refused write follows a replayed one",
        |n| {
            n.batch_json(&json!({"writes": [
                first,
                {"collection": "stock", "key": "k", "op": "put", "value": 1}
            ]}))
        },
        403,
        "write_not_authorized",
        &["write 1 of the request", "\"stock\""],
    );
    assert_eq!(node.snapshot(), before, "nothing written");
}

/// The context header given on several lines is one list, as HTTP joins repeated lines; an
/// empty line (the context of a key read absent, sent back as it came) adds nothing to it.
#[test]
fn context_lines_are_one_list_and_empty_ones_add_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), OPEN);
    let first = node.put_json("/v1/kv/c/k", &json!(1)).ok_json();
    let read = node.get("/v1/kv/c/k");
    let context = read.header("x-edgerep-context").unwrap().to_owned();
    assert_eq!(context, "site-a:1", "{first}");
    let absent = node.get("/v1/kv/c/none");
    assert_eq!(absent.header("x-edgerep-context"), Some(""));
    let r = finish(
        node.agent
            .put(node.url("/v1/kv/c/k"))
            .header("content-type", "application/json")
            .header("x-edgerep-context", "")
            .header("x-edgerep-context", context.as_str())
            .send(b"2".as_slice()),
        "/v1/kv/c/k",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let versions = node.value("/v1/kv/c/k?versions=true");
    assert_eq!(versions["context"], "site-a:2", "{versions}");
    node.stop();
}
