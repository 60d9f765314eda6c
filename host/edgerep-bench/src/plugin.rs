//! `edgerep bench plugin`: what a plugin costs per event, per toolchain, and through the API.

use anyhow::Context as _;
use edgerep_client::client::Client;
use edgerep_config::Config;
use edgerep_wire::event::Event;
use serde_json::json;
use std::time::{Duration, Instant};

use crate::ingest::{api_cell, sample_event, sample_value, verify_and_stop};

/// Arguments of `edgerep bench plugin`.
#[derive(Debug, clap::Args)]
pub struct PluginArgs {
    /// Folder with the built plugins (`passthrough.wasm`, `redact.wasm`).
    #[arg(long, default_value = "target/plugins/rust")]
    plugins: std::path::PathBuf,
    /// Calls per plugin for the per-event cost.
    #[arg(long, default_value_t = 20_000)]
    calls: usize,
    /// Seconds each ingest measurement runs.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Events per API request in the ingest measurement.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Concurrent clients in the ingest measurement.
    #[arg(long, default_value_t = 2)]
    clients: usize,
    /// Toolchains compared side by side; their builds are in `<plugins>/../<toolchain>/`.
    #[arg(long, value_delimiter = ',', default_value = "rust,tinygo,go")]
    toolchains: Vec<String>,
}

/// One plugin's cost with one toolchain's build, for the side-by-side table.
struct ToolchainCost {
    toolchain: String,
    plugin: &'static str,
    bytes: u64,
    instantiate_us: f64,
    instantiate_fuel: u64,
    cost: PluginCost,
}

/// Loads `dir/<name>.wasm` with the benchmark's limits; returns it and its size in bytes.
fn load_plugin(
    dir: &std::path::Path,
    name: &str,
    params: &[(&str, &str)],
) -> anyhow::Result<(edgerep_plugin::Plugin, u64)> {
    let path = dir.join(format!("{name}.wasm"));
    let wasm = std::fs::read(&path).with_context(|| {
        format!(
            "reading {} (build it with `cargo xtask build-plugins`)",
            path.display()
        )
    })?;
    let bytes = wasm.len() as u64;
    let runtime = edgerep_plugin::Runtime::new(None)?;
    let plugin = runtime.load(edgerep_plugin::PluginSource {
        name: name.into(),
        path,
        wasm,
        expected_sha256: None,
        limits: edgerep_plugin::Limits {
            fuel: 10_000_000,
            memory_bytes: 16 << 20,
            deadline: Duration::from_secs(1),
            ..edgerep_plugin::Limits::default()
        },
        params: params
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    })?;
    Ok((plugin, bytes))
}

/// Measures the size and instantiation (time and fuel, best of 20) of `dir/<name>.wasm`.
fn instantiation(dir: &std::path::Path, name: &str) -> anyhow::Result<(u64, f64, u64)> {
    let (plugin, bytes) = load_plugin(dir, name, &[])?;
    let mut best = f64::MAX;
    let mut fuel = 0;
    for _ in 0..20 {
        let t = Instant::now();
        fuel = plugin
            .instantiation_fuel()
            .map_err(|f| anyhow::anyhow!("{name}: {f}"))?;
        best = best.min(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok((bytes, best, fuel))
}

struct PluginCost {
    name: &'static str,
    ns_per_event: f64,
    fuel_per_event: f64,
    fresh_ns_per_event: f64,
}

/// Per-event cost of one plugin called directly: with a reused instance (as at ingest) and with a
/// fresh instance per call (as for resolvers).
fn plugin_cost(
    dir: &std::path::Path,
    name: &'static str,
    params: &[(&str, &str)],
    event: &Event,
    calls: usize,
) -> anyhow::Result<PluginCost> {
    let (plugin, _) = load_plugin(dir, name, params)?;
    // Warm up the instance pool.
    for _ in 0..100 {
        plugin
            .transform(event, false)
            .map_err(|f| anyhow::anyhow!("{name}: {f}"))?;
    }
    let before = plugin.metrics();
    let t = Instant::now();
    for _ in 0..calls {
        plugin
            .transform(event, false)
            .map_err(|f| anyhow::anyhow!("{name}: {f}"))?;
    }
    let ns = t.elapsed().as_nanos() as f64 / calls as f64;
    let after = plugin.metrics();
    let fuel = (after.fuel_total - before.fuel_total) as f64 / calls as f64;
    let fresh_calls = (calls / 10).max(100);
    let t = Instant::now();
    for _ in 0..fresh_calls {
        plugin
            .transform(event, true)
            .map_err(|f| anyhow::anyhow!("{name}: {f}"))?;
    }
    let fresh = t.elapsed().as_nanos() as f64 / fresh_calls as f64;
    Ok(PluginCost {
        name,
        ns_per_event: ns,
        fuel_per_event: fuel,
        fresh_ns_per_event: fresh,
    })
}

/// Runs `edgerep bench plugin` and prints its figures; returns the exit code.
pub fn plugin(args: PluginArgs) -> anyhow::Result<u8> {
    let (value, event_len) = sample_value(200)?;
    let event = sample_event(value.clone())?;
    println!(
        "edgerep bench plugin: events of {event_len} bytes, plugins from {}",
        args.plugins.display()
    );
    let costs = [
        plugin_cost(&args.plugins, "passthrough", &[], &event, args.calls)?,
        plugin_cost(
            &args.plugins,
            "redact",
            &[("remove", "sensor"), ("mask", "site")],
            &event,
            args.calls,
        )?,
    ];
    println!(
        "{:>12} {:>14} {:>14} {:>22}",
        "plugin", "ns/event", "fuel/event", "fresh instance ns/event"
    );
    for c in &costs {
        println!(
            "{:>12} {:>14.0} {:>14.0} {:>22.0}",
            c.name, c.ns_per_event, c.fuel_per_event, c.fresh_ns_per_event
        );
    }

    // The same plugins built with each toolchain, side by side.
    let root = args
        .plugins
        .parent()
        .map_or_else(|| std::path::PathBuf::from("."), |p| p.to_path_buf());
    let mut side = Vec::new();
    for toolchain in &args.toolchains {
        let dir = root.join(toolchain);
        if !dir.join("passthrough.wasm").exists() {
            println!(
                "{toolchain}: no builds in {} (cargo xtask build-plugins --toolchain {toolchain})",
                dir.display()
            );
            continue;
        }
        for (name, params) in [
            ("passthrough", &[][..]),
            ("redact", &[("remove", "sensor"), ("mask", "site")][..]),
        ] {
            let (bytes, instantiate_us, instantiate_fuel) = instantiation(&dir, name)?;
            let cost = plugin_cost(&dir, name, params, &event, args.calls)?;
            side.push(ToolchainCost {
                toolchain: toolchain.clone(),
                plugin: name,
                bytes,
                instantiate_us,
                instantiate_fuel,
                cost,
            });
        }
    }
    println!("\nthe same plugins built with each toolchain (per event: a pooled instance):");
    println!(
        "{:>12} {:>8} {:>12} {:>12} {:>14} {:>12} {:>14}",
        "plugin", "build", "bytes", "inst. us", "inst. fuel", "ns/event", "fuel/event"
    );
    for c in &side {
        println!(
            "{:>12} {:>8} {:>12} {:>12.1} {:>14} {:>12.0} {:>14.0}",
            c.plugin,
            c.toolchain,
            c.bytes,
            c.instantiate_us,
            c.instantiate_fuel,
            c.cost.ns_per_event,
            c.cost.fuel_per_event
        );
    }

    // Ingest through the API into two collections of one node: one without plugins, one with
    // the passthrough transform; measured alternately, twice each, best of each kept.
    let dir = crate::scratch::dir("edgerep-bench-plugin-")?;
    let passthrough = args.plugins.join("passthrough.wasm");
    let sha = edgerep_plugin::Runtime::new(None)?
        .inspect(&std::fs::read(&passthrough)?)?
        .sha256;
    let text = format!(
        "[node]\nid = \"bench-node\"\ndata_dir = \"data\"\n[api]\nlisten = \"127.0.0.1:0\"\n\
         [replication]\nlisten = \"127.0.0.1:1\"\n[collections]\naccept_undeclared = true\n\
         [[collections.declared]]\nname = \"chain\"\ntransforms_on_ingest = [\"passthrough\"]\n\
         [plugins.passthrough]\npath = '{}'\nsha256 = \"{sha}\"\n",
        std::fs::canonicalize(&passthrough)?.display()
    );
    let config_path = dir.path().join("edgerep.toml");
    std::fs::write(&config_path, text)?;
    let config = Config::load(&config_path)?;
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let node = rt.block_on(edgerep_node::start(config))?;
    let client = Client::new(node.api_addr);
    let (mut plain, mut chain) = (0.0f64, 0.0f64);
    for round in 0..4 {
        let (collection, best) = if round % 2 == 0 {
            ("plain", &mut plain)
        } else {
            ("chain", &mut chain)
        };
        let cell = api_cell(
            &client,
            collection,
            value.as_bytes(),
            args.batch,
            args.clients,
            args.seconds,
            round,
            false,
        )?;
        println!(
            "ingest into {collection:>5} (batch {} x {} clients): {:.0} events/s",
            args.batch, args.clients, cell.eps
        );
        *best = best.max(cell.eps);
    }
    verify_and_stop(&rt, node, &client)?;
    let ratio = chain / plain;
    println!(
        "ingest with one transform: {chain:.0} events/s = {ratio:.3} of {plain:.0} events/s without plugins (same node, same run)"
    );
    let summary = json!({
        "bench": "plugin",
        "event_bytes": event_len,
        "plugins": costs.iter().map(|c| json!({
            "name": c.name,
            "ns_per_event": c.ns_per_event.round(),
            "fuel_per_event": c.fuel_per_event.round(),
            "fresh_instance_ns_per_event": c.fresh_ns_per_event.round(),
        })).collect::<Vec<_>>(),
        "ingest_without_plugins_events_per_s": plain.round(),
        "ingest_with_transform_events_per_s": chain.round(),
        "ratio": (ratio * 1000.0).round() / 1000.0,
    });
    println!("{summary}");
    Ok(0)
}
