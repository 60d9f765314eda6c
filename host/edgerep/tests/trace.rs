//! Trace context across sites, with real processes: three nodes export their spans over
//! OTLP/HTTP (JSON) to a receiver inside this test. A write on node-1 with a W3C `traceparent`
//! gives node-1's commit span (a child of the client's span) and an apply span on node-2 and on
//! node-3 (children of the commit span); every event carries the commit span's context in its
//! metadata; node-3's transform on apply is a child span of its apply; the log lines carry the
//! trace id; a malformed header is refused and writes nothing.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Node, agent, cluster, converge, put};
use serde_json::Value as Json;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

/// An OTLP/HTTP receiver on loopback: every body posted to `/v1/traces`, as JSON.
struct Receiver {
    port: u16,
    bodies: Arc<Mutex<Vec<Json>>>,
    _runtime: tokio::runtime::Runtime,
}

impl Receiver {
    fn start() -> Receiver {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let bodies: Arc<Mutex<Vec<Json>>> = Arc::default();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let kept = bodies.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| {
                let kept = kept.clone();
                async move {
                    let json: Json = serde_json::from_slice(&body).expect("OTLP JSON");
                    kept.lock().unwrap().push(json);
                    "{}"
                }
            }),
        );
        runtime.spawn(async move { axum::serve(listener, app).await });
        Receiver {
            port,
            bodies,
            _runtime: runtime,
        }
    }

    /// Every span received: (node, name, trace id, span id, parent span id).
    fn spans(&self) -> Vec<(String, String, String, String, String)> {
        let mut out = Vec::new();
        for body in self.bodies.lock().unwrap().iter() {
            for rs in body["resourceSpans"].as_array().into_iter().flatten() {
                let node = rs["resource"]["attributes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|a| a["key"] == "edgerep.node")
                    .and_then(|a| a["value"]["stringValue"].as_str())
                    .unwrap_or("")
                    .to_owned();
                for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                    for s in ss["spans"].as_array().into_iter().flatten() {
                        let text = |k: &str| s[k].as_str().unwrap_or("").to_owned();
                        out.push((
                            node.clone(),
                            text("name"),
                            text("traceId"),
                            text("spanId"),
                            text("parentSpanId"),
                        ));
                    }
                }
            }
        }
        out
    }
}

#[test]
fn a_traced_write_is_one_trace_from_the_client_to_every_site() {
    let receiver = Receiver::start();
    let dir = tempfile::tempdir().unwrap();
    let configs = cluster(dir.path(), 3);
    // node-3 runs a transform on the events it applies: its call is a span of the trace too.
    let (pass, sha) = common::built_plugin("passthrough");
    for (i, c) in configs.iter().enumerate() {
        let text = std::fs::read_to_string(c).unwrap();
        let orders = if i == 2 {
            format!(
                "[[collections.declared]]\nname = \"orders\"\ntransforms_on_apply = [\"pass\"]\n\
                 [plugins.pass]\npath = \"{}\"\nsha256 = \"{sha}\"\n",
                pass.display()
            )
        } else {
            "[[collections.declared]]\nname = \"orders\"\ncompare = \"versions\"\n".to_owned()
        };
        std::fs::write(
            c,
            format!(
                "{}\n[tracing]\notlp_endpoint = \"http://127.0.0.1:{}/v1/traces\"\n{orders}",
                text.replace("[retention]\n", "[retention]\ncompact = false\n"),
                receiver.port
            ),
        )
        .unwrap();
    }
    let nodes: Vec<Node> = configs.iter().map(|c| Node::start(c)).collect();
    put(&nodes[0], "orders", "plain", r#"{"n":0}"#);
    converge(&[&nodes[0], &nodes[1], &nodes[2]], Duration::from_secs(30));

    // A malformed traceparent is refused, naming it; nothing is written.
    let r = agent()
        .put(&nodes[0].url("/v1/kv/orders/bad"))
        .header("traceparent", "00-xyz-00f067aa0ba902b7-01")
        .content_type("application/json")
        .send(br#"{"n":1}"#.as_slice())
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = agent()
        .put(&nodes[0].url("/v1/kv/orders/bad"))
        .header("traceparent", "00-é")
        .content_type("application/json")
        .send(br#"{"n":1}"#.as_slice())
        .unwrap();
    assert_eq!(r.status(), 400, "a header that is not ASCII");
    assert_eq!(common::get(&nodes[0], "orders", "bad").0, 404);

    let r = agent()
        .put(&nodes[0].url("/v1/kv/orders/traced"))
        .header("traceparent", &format!("00-{TRACE}-{CLIENT_SPAN}-01"))
        .content_type("application/json")
        .send(br#"{"n":2}"#.as_slice())
        .unwrap();
    assert_eq!(r.status(), 200);
    converge(&[&nodes[0], &nodes[1], &nodes[2]], Duration::from_secs(30));

    // The commit span on node-1, then an apply span on each other node under it.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (commit, applies, plugin) = loop {
        let spans = receiver.spans();
        let plugin = spans
            .iter()
            .find(|s| s.1 == "edgerep.plugin" && s.2 == TRACE)
            .cloned();
        let commit = spans
            .iter()
            .find(|s| s.1 == "edgerep.commit" && s.2 == TRACE)
            .cloned();
        let applies: Vec<_> = spans
            .iter()
            .filter(|s| s.1 == "edgerep.apply" && s.2 == TRACE)
            .cloned()
            .collect();
        if let (Some(commit), Some(plugin)) = (commit.filter(|_| applies.len() >= 2), plugin) {
            break (commit, applies, plugin);
        }
        assert!(
            Instant::now() < deadline,
            "spans of trace {TRACE} received so far: {spans:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    println!("commit span (node, name, trace, span, parent): {commit:?}");
    for a in &applies {
        println!("apply span: {a:?}");
    }
    assert_eq!(commit.0, "node-1");
    assert_eq!(
        commit.4, CLIENT_SPAN,
        "the commit span's parent is the client's span"
    );
    let mut on: Vec<&str> = applies.iter().map(|a| a.0.as_str()).collect();
    on.sort();
    assert_eq!(on, ["node-2", "node-3"], "{applies:?}");
    for a in &applies {
        assert_eq!(
            a.4, commit.3,
            "an apply span's parent is the commit span: {a:?}"
        );
    }
    println!("plugin span: {plugin:?}");
    let node3_apply = applies.iter().find(|a| a.0 == "node-3").unwrap();
    assert_eq!(plugin.0, "node-3");
    assert_eq!(
        plugin.4, node3_apply.3,
        "the transform's span is a child of node-3's apply span"
    );
    // Untraced writes make no spans.
    assert!(
        receiver.spans().iter().all(|s| s.2 == TRACE),
        "{:?}",
        receiver.spans()
    );

    // The event carries the commit span's context, on every node.
    let expected = format!("00-{TRACE}-{}-01", commit.3);
    for node in &nodes {
        let mut r = agent()
            .get(&node.url("/v1/changelog/node-1?after=0"))
            .call()
            .unwrap();
        let log: Json = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
        let event = log["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["key"] == "traced")
            .cloned()
            .unwrap();
        assert_eq!(event["meta"]["traceparent"], expected.as_str(), "{event}");
    }
    // Log lines carry the trace id: the commit on node-1, the applies on node-2 and node-3.
    drop(nodes);
    for (i, c) in configs.iter().enumerate() {
        let logs: String = std::fs::read_dir(c.parent().unwrap())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".log."))
            .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
            .collect();
        let want = if i == 0 {
            "committing a traced write"
        } else {
            "applied a traced event"
        };
        assert!(
            logs.lines()
                .any(|l| l.contains(want) && l.contains(&format!("trace_id={TRACE}"))),
            "node-{}'s log has no {want:?} line with the trace id:\n{logs}",
            i + 1
        );
    }
}

/// A collector that cannot be reached: the spans are dropped, and the node's log says so
/// (before, the exporter's failures were silent: spans vanished with nothing in the log).
#[test]
fn spans_a_collector_does_not_take_are_said_in_the_log() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let config = common::init(dir.path(), "traced");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!("{text}\n[tracing]\notlp_endpoint = \"http://127.0.0.1:{port}/v1/traces\"\n"),
    )
    .unwrap();
    let node = Node::start(&config);
    let r = agent()
        .put(&node.url("/v1/kv/orders/traced"))
        .header("traceparent", format!("00-{TRACE}-{CLIENT_SPAN}-01"))
        .content_type("application/json")
        .send(br#"{"n":1}"#.as_slice())
        .unwrap();
    assert_eq!(r.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = std::fs::read_to_string(&node.log).unwrap();
        if log.contains("exporting trace spans failed") {
            assert!(log.contains(&port.to_string()), "{log}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no export failure in the log after 20 s: {log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
