//! `edgerep demo`: the README's first command. Writes a 3-node cluster on loopback
//! (`init --cluster 3`: a CA, certificates, every node peered with the others), with a resolver
//! plugin (`merge-counter`) on the `counters` collection and a transform (`filter`, its fuel
//! too small at first) on node-1's `readings`. First the sites run cut off from each other and
//! each writes, including concurrent updates of one key; then they connect, replicate over QUIC
//! with mutual TLS, and converge: the demo shows the conflict settled by the plugin, the same
//! value on every node, and equal state digests. Then: a site offline while the others write,
//! and back; a write the plugin fails on, kept as a dead letter and replayed once a config
//! reload (no restart) gives the plugin its fuel; a store damaged behind its node's back, found
//! at start and repaired from a peer by anti-entropy. The nodes' logs go to a file the demo
//! names.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use edgerep_config::Config;

use edgerep_client::client::{Client, Outcome};

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

/// The demo's plugin components (merge-counter, filter): built with the project's own command
/// on first use.
fn example_plugins() -> anyhow::Result<(PathBuf, PathBuf)> {
    let root = repo_root();
    let dir = root.join("target/plugins/rust");
    let (merge, filter) = (dir.join("merge-counter.wasm"), dir.join("filter.wasm"));
    if !merge.exists() || !filter.exists() {
        println!("building the example plugins (first run only): cargo xtask build-plugins");
        let status = std::process::Command::new(std::env::var("CARGO").unwrap_or("cargo".into()))
            .current_dir(&root)
            .args([
                "xtask",
                "build-plugins",
                "--toolchain",
                "rust",
                "merge-counter",
                "filter",
            ])
            .status()
            .context("running cargo xtask build-plugins")?;
        if !status.success() || !merge.exists() || !filter.exists() {
            bail!(
                "building the example plugins failed; run `cargo xtask build-plugins` in {}",
                root.display()
            );
        }
    }
    Ok((merge.canonicalize()?, filter.canonicalize()?))
}

/// The filter's fuel line at first: far too little for a call (scene 5 raises it).
const FILTER_STARVED: &str = "fuel = 100";

/// node-1's `readings` collection, through the filter transform (`fuel` its fuel line, or
/// nothing for the default).
fn filter_section(wasm: &Path, sha256: &str, fuel: &str) -> String {
    format!(
        "\n# The demo's transform on node-1: drops readings whose status is \"drop\".\n\
         [[collections.declared]]\nname = \"readings\"\ntransforms_on_ingest = [\"filter\"]\n\n\
         [plugins.filter]\npath = \"{}\"\nsha256 = \"{sha256}\"\n\
         params = {{ field = \"status\", equals = \"drop\" }}\n{fuel}\n",
        wasm.display()
    )
}

/// Waits until every node shows the same digest and origins (and `until` holds on them).
fn wait_converged(
    clients: &[Client],
    what: &str,
    until: impl Fn(&[serde_json::Value]) -> bool,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let all: Vec<serde_json::Value> = clients
            .iter()
            .map(|c| {
                expect_ok("status", c.status(false)).and_then(|b| Ok(serde_json::from_slice(&b)?))
            })
            .collect::<anyhow::Result<_>>()?;
        let converged = all
            .windows(2)
            .all(|w| w[0]["digest"] == w[1]["digest"] && w[0]["origins"] == w[1]["origins"]);
        if converged && until(&all) {
            return Ok(all);
        }
        if Instant::now() > deadline {
            bail!(
                "{what}: not reached within 30 s: {}",
                serde_json::to_string_pretty(&all)?
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Logs to `path` (the nodes run in this process): the walkthrough stays readable.
fn log_to_file(path: &Path) -> anyhow::Result<()> {
    let file = std::fs::File::create(path)
        .with_context(|| format!("creating the log file {}", path.display()))?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::sync::Mutex::new(file))
        .with_ansi(false)
        .try_init();
    Ok(())
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

/// Starts a site's node again in this process: its UDP port is free once the stopped node's
/// connections have closed, which may take a moment.
fn restart(rt: &tokio::runtime::Runtime, site: &Site) -> anyhow::Result<edgerep_node::RunningNode> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match rt.block_on(edgerep_node::start(site.config.clone())) {
            Ok(node) => return Ok(node),
            Err(
                edgerep_node::NodeError::Listen { source, .. }
                | edgerep_node::NodeError::ReplicationListen { source, .. },
            ) if source.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

struct Site {
    name: String,
    config: Config,
}

pub(crate) fn run(dir: Option<PathBuf>, once: bool) -> anyhow::Result<u8> {
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
    // The demo writes a new CA and configs over a demo's earlier ones; a cluster `init
    // --cluster` made (a CA and no demo log) is not its to replace: its CA key may be the only
    // way to issue certificates to new sites.
    let log = dir.join("nodes.log");
    if dir.join("ca").join("ca.key").exists() && !log.exists() {
        anyhow::bail!(
            "{} holds a cluster the demo did not write (ca/ca.key, and no nodes.log): the demo would write a new CA over it; give --dir a new or empty directory",
            dir.display()
        );
    }
    // A demo that ran here before left its nodes' stores: the cluster is not written over
    // them (new keys over stores sealed with the old ones). Said before the log is emptied.
    for i in 1..=3 {
        if let Some(data) = edgerep_client::cluster::holds_a_store(&dir.join(format!("node-{i}")))?
        {
            anyhow::bail!(
                "a demo already ran in {} ({} holds its store): remove {} to run it there again, or give --dir a new directory",
                dir.display(),
                data.display(),
                dir.display()
            );
        }
    }
    let (wasm, filter) = example_plugins()?;
    let sha = sha256_hex(&wasm)?;
    let filter_sha = sha256_hex(&filter)?;
    // The log first: it marks the directory as the demo's, also when the demo stops before
    // its cluster is whole (run again, it then writes over what it left, unless its nodes
    // made stores: refused above).
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    log_to_file(&log)?;
    let paths = edgerep_client::cluster::write_cluster(&dir, 3, true)?;
    let mut sites = Vec::new();
    for (i, p) in paths.iter().enumerate() {
        add_resolver(p, &wasm, &sha)?;
        if i == 0 {
            // The filter with too little fuel: it fails on every write (scene 5 fixes it).
            let mut text = std::fs::read_to_string(p)?;
            text.push_str(&filter_section(&filter, &filter_sha, FILTER_STARVED));
            std::fs::write(p, text)?;
        }
        sites.push(Site {
            name: format!("node-{}", i + 1),
            config: Config::load(p)?,
        });
    }
    println!("edgerep demo: a 3-node cluster in {}", dir.display());
    println!(
        "  (edgerep init --cluster 3: a CA, a certificate per node, loopback ports, all peered)"
    );
    println!("  the nodes' logs: {}\n", log.display());
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

    println!("\n4. node-3 goes offline; node-1 and node-2 keep taking writes:");
    let n3 = nodes.remove(2);
    rt.block_on(n3.shutdown())?;
    for (i, c) in clients[..2].iter().enumerate() {
        let n = i + 1;
        let b = expect_ok(
            "put",
            c.put_json(
                "orders",
                format!("late-{n}").as_bytes(),
                &format!(r#"{{"item": "part-{n}", "qty": 1}}"#),
            ),
        )?;
        show(&format!("{} put orders/late-{n}", sites[i].name), &b);
    }
    let seen = wait_converged(&clients[..2], "node-1 and node-2 agree", |all| {
        all[0]["replication"]["peers"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["id"] == "node-3"))
            .is_some_and(|p| p["connected"] == false && p["lag_events"].as_u64() >= Some(2))
    })?;
    if let Some(p) = seen[0]["replication"]["peers"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["id"] == "node-3"))
    {
        println!(
            "  node-1 sees node-3: connected {}, {} events it lacks",
            p["connected"], p["lag_events"]
        );
    }
    nodes.insert(2, restart(&rt, &sites[2])?);
    wait_converged(&clients, "node-3 caught up", |_| true)?;
    let b = expect_ok("get", clients[2].get("orders", b"late-1", false))?;
    show("node-3 get orders/late-1 (back)", &b);
    println!("  node-3 is back and caught up: equal digests again.");

    println!("\n5. a plugin fails on a write; the write is kept as a dead letter:");
    match clients[0].put_json("readings", b"r-1", r#"{"status": "ok", "temp": 21.5}"#) {
        Outcome::Refused(status, message) => {
            println!("  node-1 put readings/r-1                 refused ({status}): {message}")
        }
        other => bail!("the failing plugin should have refused the write: {other:?}"),
    }
    let list: serde_json::Value =
        serde_json::from_slice(&expect_ok("dead letters", clients[0].dead_letters(0, 10))?)?;
    let letter = list["dead_letters"][0].clone();
    let id = letter["id"]
        .as_u64()
        .context("the failed write is a dead letter")?;
    println!(
        "  node-1 dead letter {id}: collection {}, key {}, plugin {}, {}",
        letter["collection"], letter["key"], letter["plugin"], letter["failure"]
    );
    println!(
        "  the operator gives the plugin its default fuel, reloads node-1's config (no restart) and replays it:"
    );
    let text = std::fs::read_to_string(&paths[0])?.replace(
        &filter_section(&filter, &filter_sha, FILTER_STARVED),
        &filter_section(&filter, &filter_sha, ""),
    );
    std::fs::write(&paths[0], text)?;
    sites[0].config = Config::load(&paths[0])?;
    let reloaded = rt
        .block_on(nodes[0].reload(sites[0].config.clone()))
        .map_err(anyhow::Error::msg)?;
    println!(
        "  node-1 reload                           plugins loaded anew: {:?}",
        reloaded.plugins_loaded
    );
    let b = expect_ok("replay", clients[0].replay_dead_letter(id))?;
    show(&format!("node-1 dead-letters replay {id}"), &b);
    wait_converged(&clients, "the replayed write replicated", |all| {
        all.iter().all(|s| s["dead_letters"] == 0)
    })?;
    let b = expect_ok("get", clients[2].get("readings", b"r-1", false))?;
    show("node-3 get readings/r-1", &b);

    println!(
        "\n6. node-2's store is damaged behind its back (orders/o-1's row removed while stopped):"
    );
    let n2 = nodes.remove(1);
    rt.block_on(n2.shutdown())?;
    let store = sites[1].config.node.data_dir.join("edgerep.redb");
    edgerep_store::StoreWriter::damage_file(
        &store,
        &sites[1].config.node.id,
        "orders",
        &[b"o-1".to_vec()],
        edgerep_store::aae::Damage::Remove,
    )?;
    nodes.insert(1, restart(&rt, &sites[1])?);
    // The check at open runs beside the node's start: wait for its finding.
    let deadline = Instant::now() + Duration::from_secs(30);
    let s = loop {
        let s: serde_json::Value =
            serde_json::from_slice(&expect_ok("status", clients[1].status(false))?)?;
        if s["store_check_at_open"]["running"] != true || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if s["store_check_at_open"]["damage_found"] != true {
        bail!(
            "node-2's store check at open did not report the damage within 30 s: {}",
            s["store_check_at_open"]
        );
    }
    println!("  node-2 at start: the store check found damage: true");
    match clients[1].get("orders", b"o-1", false) {
        Outcome::NotFound(_) => println!("  node-2 get orders/o-1                   not found"),
        other => bail!("node-2 still served orders/o-1 after it was removed: {other:?}"),
    }
    // Anti-entropy runs with the peers connected now: wait for node-2's sessions first (it
    // just started).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s: serde_json::Value =
            serde_json::from_slice(&expect_ok("status", clients[1].status(false))?)?;
        let peers = s["replication"]["peers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if !peers.is_empty() && peers.iter().all(|p| p["connected"] == true) {
            break;
        }
        if Instant::now() > deadline {
            bail!("node-2 did not reconnect to its peers within 30 s: {s}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let reports: serde_json::Value =
        serde_json::from_slice(&expect_ok("reconcile", clients[1].reconcile(None))?)?;
    for r in reports["sessions"].as_array().into_iter().flatten() {
        println!(
            "  node-2 reconcile with {}: {} versions repaired here",
            r["peer"], r["repaired_in"]
        );
    }
    let b = expect_ok("get", clients[1].get("orders", b"o-1", false))?;
    show("node-2 get orders/o-1 (repaired)", &b);
    let all = wait_converged(&clients, "the repaired store agrees", |_| true)?;
    println!(
        "  anti-entropy repaired it from a peer: equal digests {} on every node.",
        all[0]["digest"]
    );

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
        rt.block_on(async {
            let mut signals = crate::Signals::install()?;
            signals.stop().await;
            anyhow::Ok(())
        })?;
    }
    for node in nodes {
        rt.block_on(node.shutdown())?;
    }
    println!("demo cluster stopped");
    Ok(0)
}
