//! Everything at once, with real processes: three nodes over links that drop, duplicate, delay
//! and reorder datagrams, each killed (SIGKILL) and restarted in turn while clients write to it,
//! with compaction keeping no spare events (so a node back from the dead may need a snapshot)
//! and anti-entropy every 2 s. Clients retry every request with its idempotency key until it is
//! answered, as a client that was cut off must. Afterwards the nodes agree, and each origin's
//! events are exactly the writes its clients made: none lost, none applied twice.

mod common;

use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::proxy::{Weather, proxied};
use common::{Node, agent, api_addr, cluster, converge, get};

/// Writes per request.
const WRITES: usize = 10;

/// POSTs request `r` of client `i` (keys of its own, and two keys every client writes) under
/// its idempotency key until an answer comes: retried on any failure a client may retry
/// (no answer, 503, 408, 409 for a key still in flight). Panics on any other answer.
fn write_until_answered(addr: SocketAddr, i: usize, r: usize) {
    let writes: Vec<String> = (0..WRITES)
        .map(|k| {
            let key = if k < WRITES - 2 {
                format!("n{i}-{r}-{k}")
            } else {
                format!("shared-{}-{k}", r % 5)
            };
            format!(r#"{{"collection":"c","key":"{key}","value":{{"n":{i},"r":{r},"k":{k}}}}}"#)
        })
        .collect();
    let body = format!(r#"{{"writes":[{}]}}"#, writes.join(","));
    let agent = agent();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(
            Instant::now() < deadline,
            "request {r} of client {i} unanswered for 120 s"
        );
        // No answer (the node is down, or was killed with the request in flight): again.
        if let Ok(mut answer) = agent
            .post(&format!("http://{addr}/v1/batch"))
            .content_type("application/json")
            .header("idempotency-key", &format!("chaos-{i}-{r}"))
            .send(body.as_bytes())
        {
            let code = answer.status().as_u16();
            let text = answer.body_mut().read_to_string().unwrap_or_default();
            match code {
                200 => {
                    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                    assert_eq!(
                        v["committed"].as_array().map(Vec::len),
                        Some(WRITES),
                        "{text}"
                    );
                    return;
                }
                408 | 409 | 503 => {}
                _ => panic!("request {r} of client {i}: {code} {text}"),
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn kills_restarts_and_bad_links_lose_nothing_and_apply_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let configs = cluster(dir.path(), 3);
    for c in &configs {
        let text = std::fs::read_to_string(c).unwrap();
        assert!(text.contains("\n[retention]\n") && text.contains("\n[replication]\n"));
        let text = text
            .replace(
                "\n[retention]\n",
                "\n[retention]\nkeep_events = 0\ninterval_ms = 300\npeer_absent_ms = 3000\n",
            )
            .replace(
                "\n[replication]\n",
                "\n[replication]\nanti_entropy_interval_ms = 2000\n",
            );
        std::fs::write(c, text).unwrap();
    }
    let links = [(0, 1), (1, 0), (0, 2), (2, 0), (1, 2), (2, 1)];
    let proxies = proxied(&configs, &links);
    let storm = Weather {
        loss_per_mille: 50,
        duplicate_per_mille: 20,
        delay: Duration::from_millis(2),
        jitter: Duration::from_millis(20),
    };
    for p in &proxies {
        p.set_weather(storm);
    }
    let nodes: Vec<Mutex<Option<Node>>> = configs
        .iter()
        .map(|c| Mutex::new(Some(Node::start(c))))
        .collect();
    let addrs: Vec<SocketAddr> = configs.iter().map(|c| api_addr(c)).collect();
    let writing = AtomicBool::new(true);
    let requests: Vec<usize> = std::thread::scope(|scope| {
        let writers: Vec<_> = addrs
            .iter()
            .enumerate()
            .map(|(i, &addr)| {
                let writing = &writing;
                scope.spawn(move || {
                    let mut r = 0;
                    while writing.load(Ordering::Relaxed) {
                        write_until_answered(addr, i, r);
                        r += 1;
                        // About 40 requests a second per client: a backlog a restarted node
                        // catches up in seconds, not minutes.
                        std::thread::sleep(Duration::from_millis(25));
                    }
                    r
                })
            })
            .collect();
        // Each node in turn: killed, down for a while, started again.
        let started = Instant::now();
        let mut victim = 0;
        while started.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(2500));
            let node = nodes[victim].lock().unwrap().take().unwrap();
            node.kill();
            std::thread::sleep(Duration::from_millis(1500));
            *nodes[victim].lock().unwrap() = Some(Node::start(&configs[victim]));
            victim = (victim + 1) % nodes.len();
        }
        std::thread::sleep(Duration::from_secs(2));
        writing.store(false, Ordering::Relaxed);
        writers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    for p in &proxies {
        p.set_weather(Weather::default());
    }
    let held: Vec<Node> = nodes
        .into_iter()
        .map(|n| n.into_inner().unwrap().unwrap())
        .collect();
    let all: Vec<&Node> = held.iter().collect();
    let healed = Instant::now();
    let s = converge(&all, Duration::from_secs(180));
    eprintln!(
        "requests answered per client: {requests:?}; converged {:?} after the storm; origins: {}",
        healed.elapsed(),
        s["origins"]
    );
    for (i, &n) in requests.iter().enumerate() {
        assert!(n > 5, "client {i} made {n} requests only");
        assert_eq!(
            s["origins"][format!("node-{}", i + 1)].as_u64(),
            Some((n * WRITES) as u64),
            "node-{}'s events are not its {n} requests of {WRITES} writes each: {}",
            i + 1,
            s["origins"]
        );
    }
    for node in &all {
        for (i, &n) in requests.iter().enumerate() {
            for r in [0, n / 2, n - 1] {
                let (code, body) = get(node, "c", &format!("n{i}-{r}-0"));
                assert_eq!(code, 200, "n{i}-{r}-0: {body}");
                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                assert_eq!(v, serde_json::json!({"n": i, "r": r, "k": 0}));
            }
        }
    }
}
