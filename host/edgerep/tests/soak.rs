//! Soak: a running node (the real binary) sends 100k events through a Go plugin built with the
//! standard Go toolchain and through the same plugin built with TinyGo, as ingest transforms.
//! No event may fail (no trap: Go's collector must not run inside `cabi_realloc`), and the node's
//! resident memory must stay bounded.

mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use common::{Node, agent, rss_bytes};

const EVENTS: usize = 100_000;
const BATCH: usize = 1_000;

fn wasm(toolchain: &str, plugin: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/plugins")
        .join(toolchain)
        .join(format!("{plugin}.wasm"));
    assert!(
        p.exists(),
        "{}: build the plugins first with `cargo xtask build-plugins`",
        p.display()
    );
    p.canonicalize().unwrap()
}

fn sha256(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap();
    edgerep_plugin::Runtime::new(None)
        .unwrap()
        .inspect(&bytes)
        .unwrap()
        .sha256
}

fn soak(toolchain: &str) {
    let dir = tempfile::tempdir().unwrap();
    let config = common::init(dir.path(), "soak-1");
    let plugin = wasm(toolchain, "redact");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "\n[[collections.declared]]\nname = \"orders\"\ntransforms_on_ingest = [\"redact\"]\n\n\
         [plugins.redact]\npath = '{}'\nsha256 = \"{}\"\non_failure = \"dead-letter\"\n\
         params = {{ remove = \"card\" }}\n",
        plugin.display(),
        sha256(&plugin)
    ));
    std::fs::write(&config, text).unwrap();
    let node = Node::start(&config);
    let pid = node.child.id();
    let agent = agent();
    let started = Instant::now();
    let mut rss_after_warmup = 0;
    let mut rss_peak = 0;
    for b in 0..EVENTS / BATCH {
        let writes: Vec<String> = (0..BATCH)
            .map(|i| {
                let n = b * BATCH + i;
                format!(
                    r#"{{"collection":"orders","key":"o-{n:06}","value":{{"item":"bolts","qty":{n},"card":"4111-{n}"}}}}"#
                )
            })
            .collect();
        let body = format!(r#"{{"writes":[{}]}}"#, writes.join(","));
        let mut r = agent
            .post(&node.url("/v1/batch"))
            .content_type("application/json")
            .send(body.as_bytes())
            .unwrap();
        let text = r.body_mut().read_to_string().unwrap();
        assert_eq!(r.status(), 200, "batch {b} with {toolchain}: {text}");
        let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(
            answer
                .get("rejected")
                .is_none_or(|r| r.as_array().is_some_and(|a| a.is_empty())),
            "batch {b} with {toolchain}: {text}"
        );
        let rss = rss_bytes(pid);
        rss_peak = rss_peak.max(rss);
        if b == 9 {
            rss_after_warmup = rss;
        }
    }
    let status = node.status();
    assert_eq!(status["dead_letters"], 0, "{status}");
    assert_eq!(status["origins"]["soak-1"], EVENTS as u64, "{status}");
    assert_eq!(status["verified"], true, "{status}");
    // The plugin really ran: the card field is gone.
    let mut r = agent
        .get(&node.url("/v1/kv/orders/o-099999"))
        .call()
        .unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    assert!(v.get("card").is_none() && v["qty"] == 99_999, "{v}");
    println!(
        "{toolchain}: {EVENTS} events in {:.1} s; node RSS after 10k events {} MiB, peak {} MiB",
        started.elapsed().as_secs_f64(),
        rss_after_warmup >> 20,
        rss_peak >> 20
    );
    assert!(
        rss_peak < rss_after_warmup + (64 << 20),
        "{toolchain}: node memory grew from {rss_after_warmup} to {rss_peak} bytes"
    );
}

#[test]
fn a_standard_go_plugin_handles_100k_events_in_a_running_node() {
    soak("go");
}

#[test]
fn a_tinygo_plugin_handles_100k_events_in_a_running_node() {
    soak("tinygo");
}
