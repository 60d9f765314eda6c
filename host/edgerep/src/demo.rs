//! `edgerep demo`: the README's first command. Runs one node on a starter config, shows the API
//! at work through real HTTP requests, then keeps serving until Ctrl-C (unless `--once`).

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use edgerep_config::Config;

use crate::client::{Client, Outcome};

fn expect_ok(step: &str, outcome: Outcome) -> anyhow::Result<Vec<u8>> {
    match outcome {
        Outcome::Ok(body) => Ok(body),
        other => bail!("demo step {step:?} failed: {other:?}"),
    }
}

fn show(label: &str, body: &[u8]) {
    println!("  {label:<34} {}", String::from_utf8_lossy(body).trim_end());
}

pub(crate) fn run(dir: Option<PathBuf>, once: bool) -> anyhow::Result<u8> {
    crate::init_logging();
    let _temp;
    let dir = match dir {
        Some(d) => d,
        None => {
            let t = tempfile::Builder::new().prefix("edgerep-demo-").tempdir()?;
            let p = t.path().to_path_buf();
            _temp = t;
            p
        }
    };
    let config_path = dir.join("edgerep.toml");
    if !config_path.exists() {
        crate::write_starter(&dir, "demo-1", None, None, false)?;
    }
    let config = Config::load(&config_path)?;
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let node = rt.block_on(edgerep_node::start(config))?;
    let c = Client::new(node.api_addr);
    println!(
        "edgerep demo: node demo-1 serving its local API on http://{}",
        node.api_addr
    );
    println!("config: {}\n", config_path.display());

    println!("writes (each answered after its durable commit):");
    let b = expect_ok(
        "put",
        c.put_json("sensors", b"t-1", r#"{"celsius": 21.5, "site": "hall"}"#),
    )?;
    show("put sensors/t-1", &b);
    for (k, v) in [
        ("o-1", r#"{"item": "bolts", "qty": 40}"#),
        ("o-2", r#"{"item": "nuts", "qty": 25}"#),
        ("o-3", r#"{"item": "gears", "qty": 3}"#),
    ] {
        let b = expect_ok("put", c.put_json("orders", k.as_bytes(), v))?;
        show(&format!("put orders/{k}"), &b);
    }
    let b = expect_ok("delete", c.delete("orders", b"o-2"))?;
    show("del orders/o-2", &b);
    let batch = br#"{"writes": [{"collection": "sensors", "key": "t-2", "value": {"celsius": 19.0}}, {"collection": "sensors", "key": "t-3", "value": {"celsius": 23.25}}]}"#;
    let b = expect_ok("batch", c.batch(batch, false))?;
    show("batch of 2 (all or nothing)", &b);

    println!("\nreads:");
    let b = expect_ok("get", c.get("sensors", b"t-1", false))?;
    show("get sensors/t-1", &b);
    match c.get("orders", b"o-2", false) {
        Outcome::NotFound(m) => println!("  {:<34} absent ({m})", "get orders/o-2"),
        other => bail!("deleted key still readable: {other:?}"),
    }
    let b = expect_ok("scan", c.scan_page("orders", &[]))?;
    show("scan orders", &b);

    println!("\nbad input is refused and writes nothing:");
    for (label, outcome) in [
        (
            "put malformed JSON",
            c.put_json("orders", b"o-9", "{not json"),
        ),
        ("put with an empty key", c.put_json("orders", b"", "1")),
    ] {
        match outcome {
            Outcome::Refused(status, m) => println!("  {label:<34} {status}: {m}"),
            other => bail!("{label} was not refused: {other:?}"),
        }
    }

    println!("\nthe change feed (watch, resumable by position):");
    let mut lines = Vec::new();
    let outcome = c.watch(&[("after", "0".into()), ("follow", "false".into())], |l| {
        lines.push(l.to_owned());
        true
    });
    expect_ok("watch", outcome)?;
    for l in &lines {
        println!("  {l}");
    }

    let b = expect_ok("status", c.status(true))?;
    let status: serde_json::Value = serde_json::from_slice(&b)?;
    println!(
        "\nstatus: digest {} over {} keys, store verified: {}",
        status["digest"], status["state_entries"], status["verified"]
    );
    if status["verified"] != serde_json::Value::Bool(true) {
        bail!("store verification failed: {}", status["verify_error"]);
    }

    if !once {
        println!("\nthe node keeps serving; try, in another terminal:");
        println!(
            "  cargo run --release -p edgerep -- get --config {} sensors t-1",
            config_path.display()
        );
        println!(
            "  cargo run --release -p edgerep -- watch --config {}",
            config_path.display()
        );
        println!("Ctrl-C stops it.");
        rt.block_on(crate::wait_for_signal())?;
    }
    rt.block_on(node.shutdown())?;
    println!("demo node stopped");
    Ok(0)
}
