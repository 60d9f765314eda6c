//! `edgerep demo`: the README's first command. Writes a 3-node cluster on loopback
//! (`init --cluster 3`: a CA, certificates, every node peered with the others), with a resolver
//! plugin (`merge-counter`) on the `counters` collection. First the sites run cut off from each
//! other and each writes, including concurrent updates of one key; then they connect, replicate
//! over QUIC with mutual TLS, and converge: the demo shows the conflict settled by the plugin,
//! the same value on every node, and equal state digests.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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
    println!("  {label:<38} {}", String::from_utf8_lossy(body).trim_end());
}

/// The repository's root, when this binary runs from a checkout (for the example plugin).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The merge-counter component: built with the project's own command on first use.
fn merge_counter() -> anyhow::Result<PathBuf> {
    let root = repo_root();
    let wasm = root.join("target/plugins/rust/merge-counter.wasm");
    if !wasm.exists() {
        println!(
            "building the example resolver plugin (first run only): cargo xtask build-plugins"
        );
        let status = std::process::Command::new(std::env::var("CARGO").unwrap_or("cargo".into()))
            .current_dir(&root)
            .args([
                "xtask",
                "build-plugins",
                "--toolchain",
                "rust",
                "merge-counter",
            ])
            .status()
            .context("running cargo xtask build-plugins")?;
        if !status.success() || !wasm.exists() {
            bail!(
                "building merge-counter failed; run `cargo xtask build-plugins` in {}",
                root.display()
            );
        }
    }
    Ok(wasm.canonicalize()?)
}

fn sha256_hex(path: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(path)?;
    let runtime = edgerep_plugin::Runtime::new(None)?;
    Ok(runtime.inspect(&bytes)?.sha256)
}

/// Adds the `counters` collection with the merge-counter resolver to a cluster config.
fn add_resolver(config: &Path, wasm: &Path, sha256: &str) -> anyhow::Result<()> {
    let mut text = std::fs::read_to_string(config)?;
    text.push_str(&format!(
        "\n# The demo's resolver plugin: concurrent versions of a counters map merge key by key.\n\
         [[collections.declared]]\nname = \"counters\"\nresolver = \"merge-counter\"\n\n\
         [plugins.merge-counter]\npath = \"{}\"\nsha256 = \"{sha256}\"\n",
        wasm.display()
    ));
    std::fs::write(config, text)?;
    Config::load(config)?;
    Ok(())
}

struct Site {
    name: String,
    config: Config,
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
    let wasm = merge_counter()?;
    let sha = sha256_hex(&wasm)?;
    let paths = crate::cluster::write_cluster(&dir, 3, true)?;
    let mut sites = Vec::new();
    for (i, p) in paths.iter().enumerate() {
        add_resolver(p, &wasm, &sha)?;
        sites.push(Site {
            name: format!("node-{}", i + 1),
            config: Config::load(p)?,
        });
    }
    println!("edgerep demo: a 3-node cluster in {}", dir.display());
    println!(
        "  (edgerep init --cluster 3: a CA, a certificate per node, loopback ports, all peered)\n"
    );
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;

    println!("1. the sites are cut off from each other; each one takes writes:");
    for (i, site) in sites.iter().enumerate() {
        let mut alone = site.config.clone();
        alone.peers.clear();
        let node = rt.block_on(edgerep_node::start(alone))?;
        let c = Client::new(node.api_addr);
        let n = i + 1;
        let b = expect_ok(
            "put",
            c.put_json(
                "orders",
                format!("o-{n}").as_bytes(),
                &format!(r#"{{"item": "part-{n}", "qty": {}}}"#, 10 * n),
            ),
        )?;
        show(&format!("{} put orders/o-{n}", site.name), &b);
        // The same key on every site: concurrent versions, to be settled by the resolver.
        let b = expect_ok(
            "put",
            c.put_json(
                "counters",
                b"visits",
                &format!(r#"{{"{}": {}}}"#, site.name, 5 * n),
            ),
        )?;
        show(&format!("{} put counters/visits", site.name), &b);
        let b = expect_ok(
            "put",
            c.put_json("orders", b"status", &format!(r#""set at {}""#, site.name)),
        )?;
        show(&format!("{} put orders/status", site.name), &b);
        rt.block_on(node.shutdown())?;
    }

    println!("\n2. the sites connect (QUIC, mutual TLS) and replicate:");
    let mut nodes = Vec::new();
    for site in &sites {
        let node = rt.block_on(edgerep_node::start(site.config.clone()))?;
        println!(
            "  {} api http://{}  replication {}",
            site.name, node.api_addr, site.config.replication.listen
        );
        nodes.push(node);
    }
    let clients: Vec<Client> = nodes.iter().map(|n| Client::new(n.api_addr)).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let statuses = loop {
        let all: Vec<serde_json::Value> = clients
            .iter()
            .map(|c| {
                expect_ok("status", c.status(true)).and_then(|b| Ok(serde_json::from_slice(&b)?))
            })
            .collect::<anyhow::Result<_>>()?;
        let converged = all
            .windows(2)
            .all(|w| w[0]["digest"] == w[1]["digest"] && w[0]["origins"] == w[1]["origins"])
            && all[0]["origins"].as_object().is_some_and(|o| o.len() == 3);
        if converged {
            break all;
        }
        if Instant::now() > deadline {
            bail!(
                "the nodes did not converge within 30 s: {}",
                serde_json::to_string_pretty(&all)?
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };

    println!("\n3. every node holds the same state:");
    for (site, c) in sites.iter().zip(&clients) {
        let b = expect_ok("get", c.get("counters", b"visits", false))?;
        show(&format!("{} get counters/visits", site.name), &b);
    }
    println!("  (three concurrent versions, merged key by key by the merge-counter plugin)");
    for (site, c) in sites.iter().zip(&clients) {
        let b = expect_ok("get", c.get("orders", b"status", false))?;
        show(&format!("{} get orders/status", site.name), &b);
    }
    println!("  (three concurrent versions, settled by last-writer-wins on the hybrid clock)");
    for (site, s) in sites.iter().zip(&statuses) {
        println!(
            "  {} digest {} keys {} verified {}",
            site.name, s["digest"], s["state_entries"], s["verified"]
        );
        if s["verified"] != serde_json::Value::Bool(true) {
            bail!(
                "store verification failed on {}: {}",
                site.name,
                s["verify_error"]
            );
        }
    }
    println!("  equal digests: the nodes converged.");

    if !once {
        println!("\nthe cluster keeps serving; try, in another terminal:");
        println!(
            "  cargo run --release -p edgerep -- put --config {} orders o-9 '{{\"qty\": 1}}'",
            paths[0].display()
        );
        println!(
            "  cargo run --release -p edgerep -- get --config {} orders o-9",
            paths[2].display()
        );
        println!(
            "  cargo run --release -p edgerep -- status --config {}",
            paths[1].display()
        );
        println!("or open a node's status page in a browser:");
        for (site, node) in sites.iter().zip(&nodes) {
            println!("  {} http://{}/ui", site.name, node.api_addr);
        }
        println!("Ctrl-C stops it.");
        rt.block_on(crate::wait_for_signal())?;
    }
    for node in nodes {
        rt.block_on(node.shutdown())?;
    }
    println!("demo cluster stopped");
    Ok(0)
}
