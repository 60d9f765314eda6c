//! `edgerep bench ingest`: events per second through the local API into the store, at several
//! batch sizes and client concurrencies, and in the same run the raw redb limit: the same event
//! sizes written straight into redb (a data row and a changelog row per event) with the same
//! durability. Only ratios from one run compare: these machines are shared and noisy.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use edgerep_config::Config;
use edgerep_wire::event::{Event, FORMAT_VERSION, Op};
use edgerep_wire::value::{DecodeLimits, Value};
use edgerep_wire::{Hlc, NodeId, VersionVector};
use minicbor::Encoder;
use serde_json::json;

use crate::client::{Client, Outcome};

/// Arguments of `edgerep bench ingest`.
#[derive(Debug, clap::Args)]
pub(crate) struct IngestArgs {
    /// Seconds each measurement runs.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Events per API request to try.
    #[arg(long, value_delimiter = ',', default_value = "1,10,100,1000")]
    batches: Vec<usize>,
    /// Concurrent clients to try.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    clients: Vec<usize>,
    /// Target size of one encoded event, in bytes.
    #[arg(long, default_value_t = 200)]
    event_bytes: usize,
    /// Events per transaction for the raw redb limit.
    #[arg(long, default_value_t = 1000)]
    raw_commit_events: usize,
}

/// The event the benchmarks size and feed to plugins (a large sequence number, so its size is
/// what a busy node's events weigh).
fn sample_event(value: Value) -> anyhow::Result<Event> {
    Ok(Event {
        format: FORMAT_VERSION,
        collection: "bench".into(),
        key: b"k-0-000000001".to_vec(),
        op: Op::Put,
        value: Some(value),
        hlc: Hlc::new(1_790_000_000_000, 0),
        origin: NodeId::parse("bench-node")?,
        seq: 1_000_000,
        schema: 0,
        meta: Default::default(),
        context: VersionVector::new(),
        extra: Default::default(),
    })
}

/// A value whose event encodes to about `target` bytes.
pub(crate) fn sample_value(target: usize) -> anyhow::Result<(Value, usize)> {
    let limits = DecodeLimits::default();
    let mut pad = 0;
    loop {
        let v = Value::from_json(
            &json!({"site": "site-0042", "sensor": "temp-0007", "reading": 21.5, "unit": "C", "note": "x".repeat(pad)}),
            &limits,
        )?;
        let len = sample_event(v.clone())?.encode().len();
        if len >= target || pad > 1 << 20 {
            return Ok((v, len));
        }
        pad += 1;
    }
}

/// Four pairs of measurements with (`measure(true)`) and without (`measure(false)`) keys, each
/// pair back to back, the order alternating so that a drift of the machine favours neither
/// side. Returns the medians of each side and of the pairs' ratios, and the ratios as text.
fn keyed_pairs(
    mut measure: impl FnMut(bool) -> anyhow::Result<f64>,
) -> anyhow::Result<(f64, f64, f64, String)> {
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[(v.len() - 1) / 2] + v[v.len() / 2]) / 2.0
    };
    let (mut with_all, mut without_all, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for pair in 0..4 {
        let (mut with, mut without) = (0f64, 0f64);
        for keyed in [pair % 2 == 0, pair % 2 != 0] {
            let eps = measure(keyed)?;
            if keyed {
                with = eps;
            } else {
                without = eps;
            }
        }
        with_all.push(with);
        without_all.push(without);
        ratios.push(with / without);
    }
    let shown: Vec<String> = ratios.iter().map(|r| format!("{r:.3}")).collect();
    Ok((
        median(&mut with_all),
        median(&mut without_all),
        median(&mut ratios),
        shown.join(", "),
    ))
}

/// The store's own cost: local writes committed straight through `StoreWriter::commit_local`, without
/// HTTP, parsing or the committer thread. Tells the API's overhead apart from the store's.
fn store_only(
    dir: &std::path::Path,
    value: &Value,
    per_commit: usize,
    seconds: f64,
    fingerprints: bool,
    keyed: bool,
) -> anyhow::Result<f64> {
    let node = NodeId::parse("bench-store")?;
    let path = dir.join("store-only.redb");
    let (store, resume) = edgerep_store::Store::open(&path, &node, Default::default())?;
    let store = edgerep_store::StoreWriter::new(if fingerprints {
        store
    } else {
        store.without_fingerprints()
    });
    let mut clock = edgerep_wire::HlcClock::new(resume.hlc_last, 60_000);
    let start = Instant::now();
    let mut n: u64 = 0;
    let mut writes = Vec::with_capacity(per_commit);
    while start.elapsed().as_secs_f64() < seconds {
        writes.clear();
        for _ in 0..per_commit {
            n += 1;
            writes.push(edgerep_store::LocalWrite {
                collection: "bench".into(),
                key: format!("k-s-{n:09}").into_bytes(),
                value: Some(value.clone()),
                schema: 0,
                meta: Default::default(),
            });
        }
        // With keys: one per write, as from single-write requests each with its key.
        let receipts: Vec<edgerep_store::idempotency::Receipt> = if keyed {
            (0..per_commit)
                .map(|i| edgerep_store::idempotency::Receipt {
                    key: format!("bench-key-{}", n - (per_commit - 1 - i) as u64),
                    body: [7; 32],
                    first: i,
                    count: 1,
                    extra: vec![0x82, 0x01, 0x62, b'[', b']'],
                })
                .collect()
        } else {
            Vec::new()
        };
        store
            .commit_local_keyed(
                std::mem::take(&mut writes),
                &[],
                &receipts,
                edgerep_store::Sync::Immediate,
                &mut clock,
                edgerep_node::committer::wall_ms(),
            )
            .map_err(|e| e.error)?;
    }
    let eps = n as f64 / start.elapsed().as_secs_f64();
    drop(store);
    let _ = std::fs::remove_file(&path);
    Ok(eps)
}

/// Rechecks the benchmark node's store (changelog gapless, digest recomputed), stops the node,
/// and fails the benchmark if the check failed. Returns the node's last status.
fn verify_and_stop(
    rt: &tokio::runtime::Runtime,
    node: edgerep_node::RunningNode,
    client: &Client,
) -> anyhow::Result<serde_json::Value> {
    let status = match client.status(true) {
        Outcome::Ok(b) => serde_json::from_slice::<serde_json::Value>(&b)?,
        other => bail!("status after the benchmark failed: {other:?}"),
    };
    rt.block_on(node.shutdown())?;
    if status["verified"] != json!(true) {
        bail!(
            "store verification after the benchmark failed: {}",
            status["verify_error"]
        );
    }
    Ok(status)
}

/// A CBOR batch body of `n` puts with keys unique to (client, counter).
/// Checks a CBOR batch answer `[first position, last position, committed, refused]`: all `n`
/// events must be stored.
pub(crate) fn check_batch_answer(answer: &[u8], n: usize) -> anyhow::Result<()> {
    let mut d = minicbor::Decoder::new(answer);
    let ok = d.array().ok() == Some(Some(4))
        && d.u64().is_ok()
        && d.u64().is_ok()
        && d.u64().ok() == Some(n as u64)
        && d.u64().ok() == Some(0);
    if !ok {
        bail!("benchmark batch not fully committed: {answer:?}");
    }
    Ok(())
}

pub(crate) fn batch_body(
    collection: &str,
    value: &[u8],
    client: usize,
    counter: &mut u64,
    n: usize,
) -> Vec<u8> {
    let mut buf = Vec::with_capacity(n * (value.len() + 48));
    let mut e = Encoder::new(&mut buf);
    let _ = e
        .map(1)
        .and_then(|e| e.str("writes"))
        .and_then(|e| e.array(n as u64));
    for _ in 0..n {
        *counter += 1;
        let key = format!("k-{client}-{counter:09}");
        let mut e = Encoder::new(&mut buf);
        let _ = e
            .map(3)
            .and_then(|e| e.str("collection"))
            .and_then(|e| e.str(collection))
            .and_then(|e| e.str("key"))
            .and_then(|e| e.str(&key))
            .and_then(|e| e.str("value"));
        buf.extend_from_slice(value);
    }
    buf
}

struct Cell {
    batch: usize,
    clients: usize,
    eps: f64,
    p50_ms: f64,
    p99_ms: f64,
    requests: usize,
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[allow(clippy::too_many_arguments)]
fn api_cell(
    client: &Client,
    collection: &str,
    value: &[u8],
    batch: usize,
    clients: usize,
    seconds: f64,
    round: usize,
    keyed: bool,
) -> anyhow::Result<Cell> {
    let stop = Arc::new(AtomicBool::new(false));
    let events = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for id in 0..clients {
        let (client, stop, events, value, collection) = (
            client.clone(),
            stop.clone(),
            events.clone(),
            value.to_vec(),
            collection.to_owned(),
        );
        handles.push(std::thread::spawn(move || -> anyhow::Result<Vec<f64>> {
            let mut counter = 0u64;
            let mut lat = Vec::new();
            let tag = round * 1000 + id;
            while !stop.load(Ordering::Relaxed) {
                let body = batch_body(&collection, &value, tag, &mut counter, batch);
                // A fresh idempotency key per request (what a client that retries sends).
                let key = keyed.then(|| format!("bench-{tag}-{counter}"));
                let t = Instant::now();
                match client.batch_keyed(&body, true, key.as_deref()) {
                    Outcome::Ok(answer) => check_batch_answer(&answer, batch)?,
                    other => bail!("benchmark write failed: {other:?}"),
                }
                lat.push(t.elapsed().as_secs_f64() * 1e3);
                events.fetch_add(batch as u64, Ordering::Relaxed);
            }
            Ok(lat)
        }));
    }
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    stop.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    for h in handles {
        lat.extend(
            h.join()
                .map_err(|_| anyhow::anyhow!("client thread panicked"))??,
        );
    }
    let elapsed = start.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    Ok(Cell {
        batch,
        clients,
        eps: events.load(Ordering::Relaxed) as f64 / elapsed,
        p50_ms: percentile(&lat, 0.50),
        p99_ms: percentile(&lat, 0.99),
        requests: lat.len(),
    })
}

pub(crate) fn ingest(args: IngestArgs) -> anyhow::Result<u8> {
    let dir = tempfile::Builder::new()
        .prefix("edgerep-bench-")
        .tempdir()?;
    let (value, event_len) = sample_value(args.event_bytes)?;
    println!(
        "edgerep bench ingest: events of {event_len} bytes encoded, {} s per measurement, durable commits",
        args.seconds
    );

    // The raw limit is measured before and after the API runs, and the higher of the two is the
    // reference: the disk's fsync time drifts on shared machines, and the higher limit is the
    // harder one to meet.
    let sample_event = vec![0x5au8; event_len];
    let raw_before = edgerep_store::bench::raw_redb_throughput(
        dir.path(),
        &sample_event,
        value.as_bytes(),
        args.raw_commit_events,
        args.seconds,
    )?;
    println!(
        "raw redb, {} events per commit: {raw_before:.0} events/s",
        args.raw_commit_events
    );
    let raw = raw_before;
    // What keeping the anti-entropy sums costs on the write path: the store alone with and
    // without them, alternated twice, the better of each.
    let mut with = 0f64;
    let mut without = 0f64;
    for _ in 0..2 {
        with = with.max(store_only(
            dir.path(),
            &value,
            args.raw_commit_events,
            args.seconds,
            true,
            false,
        )?);
        without = without.max(store_only(
            dir.path(),
            &value,
            args.raw_commit_events,
            args.seconds,
            false,
            false,
        )?);
    }
    let store_eps = with;
    println!(
        "edgerep store without the API, {} events per commit: {store_eps:.0} events/s ({:.3} of raw)",
        args.raw_commit_events,
        store_eps / raw
    );
    println!(
        "anti-entropy fingerprints on the write path: {with:.0} events/s with, {without:.0} without = {:.3} of it ({:+.1}%; target at most -5%)",
        with / without,
        (with / without - 1.0) * 100.0
    );

    let node_dir = dir.path().join("node");
    crate::write_starter(&node_dir, "bench-node", None, None, true)?;
    let config = Config::load(&node_dir.join("edgerep.toml"))?;
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let node = rt.block_on(edgerep_node::start(config))?;
    let client = Client::new(node.api_addr);

    println!(
        "{:>7} {:>8} {:>12} {:>9} {:>9} {:>9} {:>9}",
        "batch", "clients", "events/s", "p50 ms", "p99 ms", "requests", "vs raw1"
    );
    let mut cells = Vec::new();
    for (round, (&batch, &clients)) in args
        .batches
        .iter()
        .flat_map(|b| args.clients.iter().map(move |c| (b, c)))
        .enumerate()
    {
        let cell = api_cell(
            &client,
            "bench",
            value.as_bytes(),
            batch,
            clients,
            args.seconds,
            round,
            false,
        )?;
        println!(
            "{:>7} {:>8} {:>12.0} {:>9.3} {:>9.3} {:>9} {:>9.3}",
            cell.batch,
            cell.clients,
            cell.eps,
            cell.p50_ms,
            cell.p99_ms,
            cell.requests,
            cell.eps / raw_before
        );
        cells.push(cell);
    }
    // What idempotency keys cost: a fresh key per request against none, on small requests
    // (where a key weighs most) and larger ones. Four pairs, each measured back to back (the
    // order alternating, so a drift of the machine does not favour one side); the figures are
    // the medians of the pairs' ratios and of each side.
    let mut keys_cost = Vec::new();
    let mut round = 10_000;
    // The store's part of it, without HTTP or the committer's grouping: commits of 4 writes
    // each with its key against the same without keys.
    let (with, without, ratio, shown) =
        keyed_pairs(|keyed| store_only(dir.path(), &value, 4, args.seconds, true, keyed))?;
    println!(
        "idempotency keys in the store alone, 4 writes per durable commit, a key per write: {with:.0} events/s with, {without:.0} without (medians of 4 pairs); ratio per pair {shown}, median {ratio:.3} ({:+.1}%)",
        (ratio - 1.0) * 100.0
    );
    keys_cost.push(json!({"store_alone": true, "batch": 1, "per_commit": 4, "with_events_per_s": with.round(), "without_events_per_s": without.round(), "ratio": ratio}));
    for (batch, clients) in [(1usize, 4usize), (100, 4)] {
        let (with, without, ratio, shown) = keyed_pairs(|keyed| {
            round += 1;
            let cell = api_cell(
                &client,
                "bench",
                value.as_bytes(),
                batch,
                clients,
                args.seconds,
                round,
                keyed,
            )?;
            Ok(cell.eps)
        })?;
        println!(
            "idempotency keys, batch {batch} x {clients} clients, a key per request: {with:.0} events/s with, {without:.0} without (medians of 4 pairs); ratio per pair {shown}, median {ratio:.3} ({:+.1}%; target at most -5%)",
            (ratio - 1.0) * 100.0
        );
        keys_cost.push(json!({"batch": batch, "clients": clients, "with_events_per_s": with.round(), "without_events_per_s": without.round(), "ratio": ratio}));
    }
    let status = verify_and_stop(&rt, node, &client)?;
    let raw_after = edgerep_store::bench::raw_redb_throughput(
        dir.path(),
        &sample_event,
        value.as_bytes(),
        args.raw_commit_events,
        args.seconds,
    )?;
    let raw = raw_before.max(raw_after);
    println!(
        "raw redb again after the API runs: {raw_after:.0} events/s; reference limit: {raw:.0} events/s (the higher)"
    );

    let best = cells
        .iter()
        .filter(|c| c.clients > 1)
        .max_by(|a, b| a.eps.total_cmp(&b.eps))
        .or_else(|| cells.iter().max_by(|a, b| a.eps.total_cmp(&b.eps)))
        .context("no measurement ran")?;
    let single = cells.iter().find(|c| c.batch == 1 && c.clients == 1);
    println!(
        "best with concurrent clients: batch {} x {} clients, {:.0} events/s = {:.3} of raw redb ({:.0} events/s at {} per commit)",
        best.batch,
        best.clients,
        best.eps,
        best.eps / raw,
        raw,
        args.raw_commit_events
    );
    if let Some(s) = single {
        println!(
            "single-event latency (1 client, 1 event per request): p50 {:.3} ms, p99 {:.3} ms",
            s.p50_ms, s.p99_ms
        );
    }
    println!(
        "store verified after the run: {} events in the feed, digest {}",
        status["feed_last"], status["digest"]
    );
    let summary = json!({
        "bench": "ingest",
        "event_bytes": event_len,
        "seconds_per_cell": args.seconds,
        "raw_redb_events_per_s": raw.round(),
        "raw_redb_before_after": [raw_before.round(), raw_after.round()],
        "raw_redb_events_per_commit": args.raw_commit_events,
        "store_only_events_per_s": store_eps.round(),
        "fingerprints": {"with_events_per_s": with.round(), "without_events_per_s": without.round(), "ratio": with / without},
        "idempotency_keys": keys_cost,
        "api_events_per_s": best.eps.round(),
        "api_batch": best.batch,
        "api_clients": best.clients,
        "single_event_p50_ms": single.map(|s| s.p50_ms),
        "single_event_p99_ms": single.map(|s| s.p99_ms),
        "cells": cells.iter().map(|c| json!({"batch": c.batch, "clients": c.clients, "events_per_s": c.eps.round(), "p50_ms": c.p50_ms, "p99_ms": c.p99_ms})).collect::<Vec<_>>(),
        "ratio": (best.eps / raw * 1000.0).round() / 1000.0,
    });
    println!("{summary}");
    Ok(0)
}

/// Arguments of `edgerep bench plugin`.
#[derive(Debug, clap::Args)]
pub(crate) struct PluginArgs {
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

pub(crate) fn plugin(args: PluginArgs) -> anyhow::Result<u8> {
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
    let dir = tempfile::Builder::new()
        .prefix("edgerep-bench-plugin-")
        .tempdir()?;
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
