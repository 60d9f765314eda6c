//! The status page (`/ui`) in a real headless browser: Debian's chromium driven through its
//! chromedriver (WebDriver). Two nodes; node-1 has a dead letter (a filter plugin without its
//! params). The page loads with no console errors, shows node-2 connected, then down when it
//! stops and connected again when it is back, and its Replay button replays the dead letter
//! once the plugin's params are fixed. A screenshot goes to `target/ui/status-page.png`.
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (`scripts/test.sh` installs them).

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Node, built_plugin, cluster, converge};
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value as Json, json};

/// chromedriver on a free loopback port, killed on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    fn start(log: &Path) -> Driver {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("/usr/bin/chromedriver (scripts/test.sh installs Debian's chromium-driver)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The browser's console messages since the last call (chromedriver's `se/log`).
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/se/log",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (
            http::Method::POST,
            Some(json!({"type": "browser"}).to_string()),
        )
    }
}

/// Console messages at level SEVERE, and the errors the page recorded itself.
async fn errors(c: &Client) -> Vec<String> {
    let log = c
        .issue_cmd(BrowserLog)
        .await
        .expect("reading the browser log");
    let mut out: Vec<String> = log
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["level"] == "SEVERE")
        .map(|e| e["message"].to_string())
        .collect();
    let page = c
        .execute(
            "return window.edgerepErrors || ['page script did not run'];",
            vec![],
        )
        .await
        .unwrap();
    out.extend(
        page.as_array()
            .into_iter()
            .flatten()
            .map(|e| format!("page: {e}")),
    );
    out
}

/// Waits until `script` (returning a boolean) holds on the page.
async fn wait_for(c: &Client, what: &str, script: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if c.execute(script, vec![]).await.unwrap() == Json::Bool(true) {
            return;
        }
        if Instant::now() > deadline {
            let body = c
                .execute("return document.body.innerText;", vec![])
                .await
                .unwrap();
            panic!(
                "the page never showed {what}; it shows:\n{}",
                body.as_str().unwrap_or("")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

const PEER_STATE: &str = "const td = document.querySelector('#peers tr[data-peer=\"node-2\"] td[data-state]'); return td !== null && td.dataset.state === ";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_a_peer_going_down_and_back_and_replays_a_dead_letter() {
    let dir = tempfile::tempdir().unwrap();
    let configs = cluster(dir.path(), 2);
    let (wasm, sha) = built_plugin("filter");
    let declare = |params: &str| {
        format!(
            "\n[[collections.declared]]\nname = \"readings\"\ntransforms_on_ingest = [\"filter\"]\n\n[plugins.filter]\npath = \"{}\"\nsha256 = \"{sha}\"\n{params}\n",
            wasm.display()
        )
    };
    let base1 = std::fs::read_to_string(&configs[0]).unwrap();
    std::fs::write(
        &configs[0],
        format!(
            "{base1}{}",
            declare("params = { field = \"status\", equals = \"drop\" }\nfuel = 100")
        ),
    )
    .unwrap();
    let base2 = std::fs::read_to_string(&configs[1]).unwrap();
    std::fs::write(
        &configs[1],
        format!("{base2}\n[[collections.declared]]\nname = \"readings\"\n"),
    )
    .unwrap();

    // A write the filter (with too little fuel) fails: a dead letter on node-1.
    let n1 = Node::start(&configs[0]);
    let mut n2 = Some(Node::start(&configs[1]));
    let r = common::agent()
        .put(&n1.url("/v1/kv/readings/r1"))
        .content_type("application/json")
        .send(r#"{"status":"ok"}"#.as_bytes())
        .unwrap();
    assert_eq!(r.status(), 422);
    // The plugin's fuel given: a replay will pass.
    drop(n1);
    std::fs::write(
        &configs[0],
        format!(
            "{base1}{}",
            declare("params = { field = \"status\", equals = \"drop\" }")
        ),
    )
    .unwrap();
    let n1 = Node::start(&configs[0]);
    for (i, node) in [&n1, n2.as_ref().unwrap()].into_iter().enumerate() {
        for k in 0..25 {
            common::put(node, "orders", &format!("o{i}-{k}"), r#"{"qty":1}"#);
        }
    }
    converge(&[&n1, n2.as_ref().unwrap()], Duration::from_secs(30));

    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/ui");
    std::fs::create_dir_all(&shots).unwrap();
    let driver = Driver::start(&dir.path().join("chromedriver.log"));
    let profile = dir.path().join("chromium-profile");
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1280,900", format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    caps.insert("goog:loggingPrefs".into(), json!({"browser": "ALL"}));
    let c = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a chromium session through chromedriver");

    c.goto(&n1.url("/ui")).await.unwrap();
    wait_for(&c, "node-2 connected", &format!("{PEER_STATE}'connected';")).await;
    wait_for(
        &c,
        "the dead letter",
        "return document.querySelectorAll('#dead-letters tbody tr').length === 1 && document.body.innerText.includes('readings / r1');",
    )
    .await;
    wait_for(
        &c,
        "the plugin and the collection",
        "return document.querySelector('#plugins tbody').innerText.includes('filter') && document.querySelector('#collections tbody').innerText.includes('readings');",
    )
    .await;
    // A few seconds of the chart, with writes arriving from node-2.
    for k in 0..30 {
        common::put(
            n2.as_ref().unwrap(),
            "orders",
            &format!("live-{k}"),
            r#"{"qty":2}"#,
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let png = c.screenshot().await.unwrap();
    std::fs::write(shots.join("status-page.png"), &png).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    assert_eq!(
        errors(&c).await,
        Vec::<String>::new(),
        "console errors at load"
    );

    // node-2 stops: the page shows it down; back: connected again.
    n2.take().unwrap().terminate();
    wait_for(&c, "node-2 down", &format!("{PEER_STATE}'down';")).await;
    std::fs::write(
        shots.join("status-page-peer-down.png"),
        c.screenshot().await.unwrap(),
    )
    .unwrap();
    let n2 = Node::start(&configs[1]);
    wait_for(
        &c,
        "node-2 connected again",
        &format!("{PEER_STATE}'connected';"),
    )
    .await;

    // Replay: the dead letter goes, its write is stored and reaches node-2.
    c.find(Locator::Css("#dead-letters button.replay"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for(
        &c,
        "the replay's answer and no dead letter left",
        "return document.querySelectorAll('#dead-letters tbody tr').length === 0 && document.getElementById('dl-result').innerText.includes('dead letter');",
    )
    .await;
    let result = c
        .execute(
            "return document.getElementById('dl-result').innerText;",
            vec![],
        )
        .await
        .unwrap();
    assert!(
        result.as_str().unwrap().contains("committed"),
        "the replay's answer: {result}"
    );
    let s = converge(&[&n1, &n2], Duration::from_secs(30));
    assert_eq!(s["dead_letters"], 0, "{s}");
    assert_eq!(
        common::get(&n2, "readings", "r1"),
        (200, r#"{"status":"ok"}"#.to_owned())
    );
    assert_eq!(errors(&c).await, Vec::<String>::new(), "console errors");
    c.close().await.unwrap();
}
