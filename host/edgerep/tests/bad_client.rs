//! An API client sending bodies of millions of tiny JSON items to a real `edgerep run` process:
//! the node answers each one and its peak memory stays far below what a tree of the whole body
//! would take (tens of bytes an item: a 16 MiB body of zeros is about a gigabyte as a tree).

mod common;

use common::{Node, agent, init, peak_rss_bytes};

/// POSTs `body` to `path` of `node`; the status and the answer's JSON.
fn post(node: &Node, path: &str, body: &[u8]) -> (u16, serde_json::Value) {
    answer(
        agent()
            .post(&node.url(path))
            .content_type("application/json")
            .send(body)
            .unwrap(),
    )
}

/// An answer's status and JSON body (every answer, refusals too, has one).
fn answer(mut r: ureq::http::Response<ureq::Body>) -> (u16, serde_json::Value) {
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("{status}: {text:?}")),
    )
}

#[test]
fn bodies_of_millions_of_tiny_items_are_answered_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let config = init(&dir.path().join("n"), "node-1");
    let node = Node::start(&config);
    let pid = node.child.id();
    let baseline = peak_rss_bytes(pid);
    let zeros = |n: usize| format!("[{}0]", "0,".repeat(n - 1));

    // One value of 8 million zeros in a batch: refused at the value's item limit, before the
    // rest is read. (A PUT of it is refused for its length before its body is read.)
    let big = zeros(8_000_000);
    let body = format!(r#"{{"writes":[{{"collection":"c","key":"big","value":{big}}}]}}"#);
    let (status, answer) = post(&node, "/v1/batch", body.as_bytes());
    assert_eq!(
        (status, answer["kind"].as_str()),
        (400, Some("bad_value")),
        "{answer}"
    );
    assert!(
        answer["error"].as_str().unwrap().contains("writes[0]"),
        "{answer}"
    );

    // A valid batch of 5,000 writes of 1,500 zeros each: 7.5 million items in 15 MB of text.
    // Taken whole, each write's tree dropped once its value is compact.
    let value = zeros(1_500);
    let writes: Vec<String> = (0..5_000)
        .map(|i| format!(r#"{{"collection":"c","key":"k{i}","value":{value}}}"#))
        .collect();
    let body = format!(r#"{{"writes":[{}]}}"#, writes.join(","));
    assert!(body.len() > 15_000_000 && body.len() < 16 << 20);
    let (status, answer) = post(&node, "/v1/batch", body.as_bytes());
    assert_eq!(status, 200, "{answer}");
    let (status, _) = {
        let mut r = agent().get(&node.url("/v1/kv/c/k4999")).call().unwrap();
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
    };
    assert_eq!(status, 200);

    // The node took the bodies (16 MiB each at most) and the batch's values (7.5 MB), not
    // trees of millions of items.
    let peak = peak_rss_bytes(pid);
    assert!(
        peak < baseline + (200 << 20),
        "peak resident memory {} MB from {} MB at start",
        peak >> 20,
        baseline >> 20
    );
    eprintln!(
        "peak resident memory {} MB from {} MB at start",
        peak >> 20,
        baseline >> 20
    );
}

/// Connections that send nothing held the API's `max_connections` slots for ever (axum serves
/// without a timer, so hyper's header read timeout did not apply), and no token is needed to
/// open them: every other client waited in the kernel's backlog. Now a connection that sends no
/// request within 10 s, or `api.request_timeout_ms` if shorter, is closed.
#[test]
fn idle_connections_do_not_lock_the_api_out() {
    use std::io::Read;
    use std::time::{Duration, Instant};

    let dir = tempfile::tempdir().unwrap();
    let config = init(&dir.path().join("n"), "node-1");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("\n[api]\n"));
    std::fs::write(
        &config,
        text.replace(
            "\n[api]\n",
            "\n[api]\nmax_connections = 4\nrequest_timeout_ms = 2000\n",
        ),
    )
    .unwrap();
    let node = Node::start(&config);
    // Every slot taken by a connection that sends nothing (and one that sent half a request).
    let mut idle: Vec<std::net::TcpStream> = (0..3)
        .map(|_| std::net::TcpStream::connect(node.addr).unwrap())
        .collect();
    let mut half = std::net::TcpStream::connect(node.addr).unwrap();
    std::io::Write::write_all(&mut half, b"GET /v1/status HTTP/1.1\r\nHost: x\r\n").unwrap();
    idle.push(half);
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let mut r = agent().get(&node.url("/v1/status")).call().unwrap();
    assert_eq!(
        r.status(),
        200,
        "{}",
        r.body_mut().read_to_string().unwrap()
    );
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(6), "answered after {waited:?}");
    eprintln!("a client was answered {waited:?} after 4 idle connections took every slot");
    // The idle connections were closed by the node.
    for mut c in idle {
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 256];
        let n = c.read(&mut buf).unwrap_or(0);
        assert!(
            n == 0 || String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408"),
            "{:?}",
            String::from_utf8_lossy(&buf[..n])
        );
    }
}

/// Verifications run one at a time (each walks the whole store, and one whose client left runs
/// on to its end): clients asking at once are answered in turn, each with a verified store.
#[test]
fn verifications_asked_at_once_are_answered_in_turn() {
    let dir = tempfile::tempdir().unwrap();
    let config = init(&dir.path().join("n"), "node-1");
    let node = Node::start(&config);
    let url = node.url("/v1/status?verify=true");
    let askers: Vec<_> = (0..8)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                let mut r = agent().get(&url).call().unwrap();
                let body: serde_json::Value =
                    serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
                (r.status().as_u16(), body["verified"].clone())
            })
        })
        .collect();
    for a in askers {
        assert_eq!(a.join().unwrap(), (200, serde_json::Value::Bool(true)));
    }
}

/// Answers that misled a client: a wrong method got axum's 405 with an empty body (every other
/// refusal carries `{"error","kind"}`); a value nested past 127 levels got `malformed_json`
/// while one of 101 to 127 got `bad_value`; a batch write naming both `key` and `key_base64`
/// was taken with the later one.
#[test]
fn a_wrong_method_deep_nesting_and_two_keys_get_named_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let config = init(&dir.path().join("n"), "node-1");
    let node = Node::start(&config);
    let (status, json) = answer(
        agent()
            .post(&node.url("/v1/kv/c/k"))
            .content_type("application/json")
            .send(&b"{}"[..])
            .unwrap(),
    );
    assert_eq!(
        (status, json["kind"].as_str()),
        (405, Some("method_not_allowed")),
        "{json}"
    );
    for depth in [110, 200] {
        let deep = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let (status, json) = answer(
            agent()
                .put(&node.url("/v1/kv/c/deep"))
                .content_type("application/json")
                .send(deep.as_bytes())
                .unwrap(),
        );
        assert_eq!(
            (status, json["kind"].as_str()),
            (400, Some("bad_value")),
            "{depth}: {json}"
        );
        let body = format!(r#"{{"writes":[{{"collection":"c","key":"d","value":{deep}}}]}}"#);
        let (status, json) = post(&node, "/v1/batch", body.as_bytes());
        assert_eq!(
            (status, json["kind"].as_str()),
            (400, Some("bad_value")),
            "{depth}: {json}"
        );
    }
    let (status, json) = post(
        &node,
        "/v1/batch",
        br#"{"writes":[{"collection":"c","key":"a","key_base64":"Yg==","value":1}]}"#,
    );
    assert_eq!(status, 400, "{json}");
    assert!(
        json["error"].as_str().unwrap().contains("not both"),
        "{json}"
    );
    let mut r = agent().get(&node.url("/v1/kv/c/b")).call().unwrap();
    assert_eq!(
        r.status().as_u16(),
        404,
        "{}",
        r.body_mut().read_to_string().unwrap()
    );
}

/// Query parameters this stop added, sent wrong: a watch `generation` that is not a number, or
/// does not fit 64 bits, is a 400 naming the query; a made-up one is judged against every run
/// the node records (position 0 is before all of them); a reload `expect` that is empty or
/// garbage is a 409 that reloads nothing, and an unknown parameter a 400.
#[test]
fn watch_generations_and_reload_digests_sent_wrong_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = init(&dir.path().join("n"), "node-1");
    let node = Node::start(&config);
    let get = |path: &str| answer(agent().get(&node.url(path)).call().unwrap());
    for bad in ["abc", "18446744073709551616", "-1", ""] {
        let (status, json) = get(&format!("/v1/watch?follow=false&generation={bad}"));
        assert_eq!(
            (status, json["kind"].as_str()),
            (400, Some("bad_query")),
            "{bad}: {json}"
        );
    }
    let mut r = agent()
        .get(&node.url("/v1/watch?follow=false&after=0&generation=12345"))
        .call()
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        200,
        "{}",
        r.body_mut().read_to_string().unwrap()
    );
    let (status, json) = get("/v1/watch?follow=false&after=1&generation=12345");
    assert_eq!(
        (status, json["kind"].as_str()),
        (410, Some("feed_renumbered")),
        "{json}"
    );
    // Named as no run of this node's (it said "given by an earlier run of this node").
    let said = json["error"].as_str().unwrap_or_default();
    assert!(
        said.contains("generation=12345, which is none of the") && !said.contains("earlier run"),
        "{json}"
    );
    for expect in ["", "zz", &"0".repeat(64)] {
        let (status, json) = post(&node, &format!("/v1/reload?expect={expect}"), b"");
        assert_eq!(
            (status, json["kind"].as_str()),
            (409, Some("file_differs")),
            "{expect:?}: {json}"
        );
    }
    let (status, json) = post(&node, "/v1/reload?expekt=abc", b"");
    assert_eq!(
        (status, json["kind"].as_str()),
        (400, Some("bad_query")),
        "{json}"
    );
}

/// A node in `dir` whose request bodies in flight may take `room` bytes together, each at most
/// `max_request` bytes; and its config file.
fn node_with_body_room(
    dir: &std::path::Path,
    room: usize,
    max_request: usize,
) -> (Node, std::path::PathBuf) {
    let config = init(&dir.join("n"), "node-1");
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text
        .replace(
            "\n[api]\n",
            &format!("\n[api]\nmax_body_bytes_in_flight = {room}\n"),
        )
        .replace(
            "\n[limits]\n",
            &format!("\n[limits]\nmax_request_bytes = {max_request}\n"),
        );
    std::fs::write(&config, text).unwrap();
    (Node::start(&config), config)
}

/// Many large requests at once: their bodies wait for room (`api.max_body_bytes_in_flight`)
/// instead of all being read, parsed and held at once. 24 batches of about 3.5 MB sent
/// together into a room of 8 MiB: each is answered 200, or 503 `too_many_requests` naming the
/// room (and then wrote nothing); every write answered 200 is there; and the node's peak memory
/// grows by much less than the 84 MB sent (here about 40 MB; 117 MB with a room of 1 GiB).
#[test]
fn many_large_requests_at_once_wait_for_room_for_their_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let (node, config) = node_with_body_room(dir.path(), 8 << 20, 4 << 20);
    let pid = node.child.id();
    let baseline = peak_rss_bytes(pid);
    let pad = "z".repeat(60_000);
    let bodies: Vec<String> = (0..24)
        .map(|t| {
            let writes: Vec<String> = (0..58)
                .map(|i| {
                    format!(r#"{{"collection":"c","key":"t{t}-{i}","value":{{"p":"{pad}"}}}}"#)
                })
                .collect();
            format!(r#"{{"writes":[{}]}}"#, writes.join(","))
        })
        .collect();
    let start = std::sync::Barrier::new(bodies.len());
    let answers: Vec<(u16, serde_json::Value)> = std::thread::scope(|s| {
        let sent: Vec<_> = bodies
            .iter()
            .map(|body| {
                let (node, start) = (&node, &start);
                s.spawn(move || {
                    start.wait();
                    post(node, "/v1/batch", body.as_bytes())
                })
            })
            .collect();
        sent.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let grew = peak_rss_bytes(pid).saturating_sub(baseline);
    let mut ok = 0;
    for (t, (status, answer)) in answers.iter().enumerate() {
        match status {
            200 => {
                ok += 1;
                let (code, _) = common::get(&node, "c", &format!("t{t}-57"));
                assert_eq!(
                    code, 200,
                    "batch {t} answered 200 and its last write is missing"
                );
            }
            503 => {
                assert_eq!(answer["kind"], "too_many_requests", "{answer}");
                assert!(
                    answer["error"]
                        .as_str()
                        .unwrap()
                        .contains("api.max_body_bytes_in_flight"),
                    "{answer}"
                );
                let (code, _) = common::get(&node, "c", &format!("t{t}-0"));
                assert_eq!(code, 404, "batch {t} refused, yet written");
            }
            other => panic!("batch {t}: {other} {answer}"),
        }
    }
    eprintln!(
        "{ok} of {} batches answered 200; peak memory grew by {} MB",
        answers.len(),
        grew >> 20
    );
    assert!(ok > 0);
    assert!(
        grew < 70 << 20,
        "peak memory grew by {} MB for 24 bodies of 3.5 MB in a room of 8 MiB",
        grew >> 20
    );
    // A room smaller than the largest request could never read it: refused by name.
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "max_body_bytes_in_flight = 8388608",
        "max_body_bytes_in_flight = 1048576",
    );
    std::fs::write(&config, text).unwrap();
    let o = common::edgerep(&["config", "check", config.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        common::stderr(&o).contains("api.max_body_bytes_in_flight"),
        "{}",
        common::stderr(&o)
    );
}

/// Requests that lie about their bodies, against the room for them: two clients that announce
/// 2 MiB each and send nothing hold the whole room (4 MiB); a request with more than the largest
/// body is refused 413 at once (it claims no room: it is read only up to the limit), and a POST
/// without a body (a reload) is answered meanwhile. Once the liars hang up, a write passes.
#[test]
fn bodies_announced_and_never_sent_hold_only_their_room() {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};

    let dir = tempfile::tempdir().unwrap();
    let (node, _) = node_with_body_room(dir.path(), 4 << 20, 2 << 20);
    let announce = |length: usize| {
        let mut c = std::net::TcpStream::connect(node.addr).unwrap();
        let head = format!(
            "POST /v1/batch HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {length}\r\n\r\n"
        );
        c.write_all(head.as_bytes()).unwrap();
        c
    };
    let liars = [announce(2 << 20), announce(2 << 20)];
    std::thread::sleep(Duration::from_millis(300));
    // More than the largest body: refused at once, not kept waiting for room.
    let started = Instant::now();
    let mut over = announce((2 << 20) + 1);
    // (The node may answer and close before all of it is sent.)
    let _ = over.write_all(&vec![b' '; (2 << 20) + 1]);
    over.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    let mut buf = [0u8; 512];
    let n = over.read(&mut buf).unwrap_or(0);
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered after {:?}",
        started.elapsed()
    );
    // No body, no room needed.
    let mut r = agent().post(&node.url("/v1/reload")).send_empty().unwrap();
    assert_ne!(
        r.status(),
        503,
        "{}",
        r.body_mut().read_to_string().unwrap()
    );
    drop(liars);
    let (status, answer) = post(
        &node,
        "/v1/batch",
        br#"{"writes":[{"collection":"c","key":"k","value":1}]}"#,
    );
    assert_eq!(status, 200, "{answer}");
}
