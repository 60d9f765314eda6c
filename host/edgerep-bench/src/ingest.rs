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
use serde_json::{Value as Json, json};

use edgerep_client::client::{Client, Outcome};

/// Arguments of `edgerep bench ingest`.
#[derive(Debug, clap::Args)]
pub struct IngestArgs {
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
pub(crate) fn sample_event(value: Value) -> anyhow::Result<Event> {
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

/// A put of `value` under `key` in the `bench` collection, as a client without a context writes.
pub(crate) fn bench_write(key: String, value: &Value) -> edgerep_store::LocalWrite {
    edgerep_store::LocalWrite {
        collection: "bench".into(),
        key: key.into_bytes(),
        value: Some(value.clone()),
        schema: 0,
        meta: Default::default(),
        context: None,
    }
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

/// Pairs of measurements with (`measure(true)`) and without (`measure(false)`) keys: a cost of a
/// few percent sits inside the noise of one measurement on a shared machine (single runs of
/// the store alone have read anywhere from +7% to -11%), so many short pairs and the median.
const KEY_PAIRS: usize = 8;

/// What [`keyed_pairs`] measured: medians of each side and of the pairs' ratios.
struct KeyCost {
    with: f64,
    without: f64,
    ratio: f64,
    /// The pairs' ratios, as text.
    shown: String,
    /// CPU time of this process (the node and its clients) per event, µs, with and without
    /// keys, and the median of the pairs' ratios: less sensitive than throughput to the
    /// disk's sync time drifting on a shared machine.
    cpu_with_us: f64,
    cpu_without_us: f64,
    cpu_ratio: f64,
}

impl KeyCost {
    /// The figures as printed (`target`: appended to the percentage).
    fn line(&self, pair_seconds: f64, target: &str) -> String {
        format!(
            "{:.0} events/s with, {:.0} without (medians of {KEY_PAIRS} pairs of {pair_seconds} s); ratio per pair {}, median {:.3} ({:+.1}%{target}); CPU per event {:.1} µs with, {:.1} without (median ratio {:.3})",
            self.with,
            self.without,
            self.shown,
            self.ratio,
            (self.ratio - 1.0) * 100.0,
            self.cpu_with_us,
            self.cpu_without_us,
            self.cpu_ratio
        )
    }

    /// `what` (a JSON object naming the measurement) with the figures added.
    fn json(&self, mut what: Json) -> Json {
        what["with_events_per_s"] = json!(self.with.round());
        what["without_events_per_s"] = json!(self.without.round());
        what["ratio"] = json!(self.ratio);
        what["cpu_us_per_event_with"] = json!(self.cpu_with_us);
        what["cpu_us_per_event_without"] = json!(self.cpu_without_us);
        what["cpu_ratio"] = json!(self.cpu_ratio);
        what
    }
}

/// [`KEY_PAIRS`] pairs of measurements with (`measure(true)`) and without (`measure(false)`)
/// keys, each pair back to back, the order alternating so that a drift of the machine favours
/// neither side; `measure` returns events/s over `seconds`.
fn keyed_pairs(
    seconds: f64,
    mut measure: impl FnMut(bool) -> anyhow::Result<f64>,
) -> anyhow::Result<KeyCost> {
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[(v.len() - 1) / 2] + v[v.len() / 2]) / 2.0
    };
    let (mut with_all, mut without_all, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let (mut cpu_with, mut cpu_without, mut cpu_ratios) = (Vec::new(), Vec::new(), Vec::new());
    for pair in 0..KEY_PAIRS {
        let (mut with, mut without) = ((0f64, 0f64), (0f64, 0f64));
        for keyed in [pair % 2 == 0, pair % 2 != 0] {
            let cpu = crate::replicate::cpu_seconds_of("self");
            let eps = measure(keyed)?;
            let cpu = crate::replicate::cpu_seconds_of("self") - cpu;
            let us_per_event = cpu * 1e6 / (eps * seconds).max(1.0);
            if keyed {
                with = (eps, us_per_event);
            } else {
                without = (eps, us_per_event);
            }
        }
        with_all.push(with.0);
        without_all.push(without.0);
        ratios.push(with.0 / without.0);
        cpu_with.push(with.1);
        cpu_without.push(without.1);
        cpu_ratios.push(with.1 / without.1);
    }
    let shown: Vec<String> = ratios.iter().map(|r| format!("{r:.3}")).collect();
    Ok(KeyCost {
        with: median(&mut with_all),
        without: median(&mut without_all),
        ratio: median(&mut ratios),
        shown: shown.join(", "),
        cpu_with_us: median(&mut cpu_with),
        cpu_without_us: median(&mut cpu_without),
        cpu_ratio: median(&mut cpu_ratios),
    })
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
            writes.push(bench_write(format!("k-s-{n:09}"), value));
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
pub(crate) fn verify_and_stop(
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
/// Checks a CBOR batch answer `[lowest position, highest position, committed, refused]`: all `n`
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

pub(crate) struct Cell {
    pub(crate) batch: usize,
    pub(crate) clients: usize,
    pub(crate) eps: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) requests: usize,
}

/// The node's group commits of local writes so far, from its metrics: how many, their total
/// time (sync included), and the local events they wrote.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Commits {
    count: f64,
    seconds: f64,
    events: f64,
}

impl Commits {
    pub(crate) fn read(client: &Client) -> anyhow::Result<Commits> {
        let text = match client.metrics() {
            Outcome::Ok(b) => String::from_utf8(b)?,
            other => bail!("reading the node's metrics failed: {other:?}"),
        };
        let mut c = Commits::default();
        for line in text.lines() {
            let Some((name, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            if name == "edgerep_commit_duration_seconds_count{kind=\"local\"}" {
                c.count += value;
            } else if name == "edgerep_commit_duration_seconds_sum{kind=\"local\"}" {
                c.seconds += value;
            } else if name.starts_with("edgerep_collection_written_events_total{") {
                c.events += value;
            }
        }
        Ok(c)
    }

    /// Events per commit and mean commit time in ms between `before` and `self`.
    pub(crate) fn since(&self, before: &Commits) -> (f64, f64) {
        let n = (self.count - before.count).max(1.0);
        (
            (self.events - before.events) / n,
            (self.seconds - before.seconds) * 1e3 / n,
        )
    }
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn api_cell(
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
            client.with_own_pool(),
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

/// Runs `edgerep bench ingest` and prints its figures; returns the exit code.
pub fn ingest(args: IngestArgs) -> anyhow::Result<u8> {
    let dir = crate::scratch::dir("edgerep-bench-")?;
    let (value, event_len) = sample_value(args.event_bytes)?;
    println!(
        "edgerep bench ingest: events of {event_len} bytes encoded, {} s per measurement, durable commits",
        args.seconds
    );

    // The raw limit is measured before and after the API runs, and the higher of the two is the
    // reference: the disk's fsync time drifts on shared machines, and the higher limit is the
    // harder one to meet.
    let sample_event = vec![0x5au8; event_len];
    let machine = crate::machine::Watch::start();
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
    // What a durable commit of few events costs redb itself: the bound on many small writers
    // (each waits for its group's commit).
    let raw_small = edgerep_store::bench::raw_redb_throughput(
        dir.path(),
        &sample_event,
        value.as_bytes(),
        16,
        args.seconds / 2.0,
    )?;
    // The same with the keys of 16 writers (each its own range, as the API cells' clients):
    // each writer's key lands on a leaf of its own, a page each commit writes.
    let raw_small_16 = edgerep_store::bench::raw_redb_throughput_spread(
        dir.path(),
        &sample_event,
        value.as_bytes(),
        16,
        16,
        args.seconds / 2.0,
    )?;
    println!(
        "raw redb, 16 events per commit: {raw_small:.0} events/s ({:.3} ms per commit); with the keys of 16 writers: {raw_small_16:.0} events/s ({:.3} ms per commit)",
        16e3 / raw_small,
        16e3 / raw_small_16
    );
    // What keeping the anti-entropy sums costs on the write path: the store alone with and
    // without them, alternated twice, the better of each.
    let mut fp_with = 0f64;
    let mut fp_without = 0f64;
    for _ in 0..2 {
        fp_with = fp_with.max(store_only(
            dir.path(),
            &value,
            args.raw_commit_events,
            args.seconds,
            true,
            false,
        )?);
        fp_without = fp_without.max(store_only(
            dir.path(),
            &value,
            args.raw_commit_events,
            args.seconds,
            false,
            false,
        )?);
    }
    let store_eps = fp_with;
    println!(
        "edgerep store without the API, {} events per commit: {store_eps:.0} events/s ({:.3} of raw)",
        args.raw_commit_events,
        store_eps / raw
    );
    // What the store's row shapes cost redb itself (the event kept twice, a read per write):
    // how much of the gap above is the layout and how much the store's own work.
    let shaped = edgerep_store::bench::raw_redb_throughput_store_shaped(
        dir.path(),
        &sample_event,
        args.raw_commit_events,
        args.seconds,
    )?;
    println!(
        "raw redb with the store's row shapes (a read, the state row holding the event, the changelog row), {} per commit: {shaped:.0} events/s = {:.3} of raw; the store alone is {:.3} of it",
        args.raw_commit_events,
        shaped / raw,
        store_eps / shaped
    );
    println!(
        "anti-entropy fingerprints on the write path: {fp_with:.0} events/s with, {fp_without:.0} without = {:.3} of it ({:+.1}%; target at most -5%)",
        fp_with / fp_without,
        (fp_with / fp_without - 1.0) * 100.0
    );

    let node_dir = dir.path().join("node");
    edgerep_client::starter::write_starter(&node_dir, "bench-node", None, None, true)?;
    let config = Config::load(&node_dir.join("edgerep.toml"))?;
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let node = rt.block_on(edgerep_node::start(config))?;
    let client = Client::new(node.api_addr);

    println!(
        "{:>7} {:>8} {:>12} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10}",
        "batch",
        "clients",
        "events/s",
        "p50 ms",
        "p99 ms",
        "requests",
        "vs raw1",
        "ev/commit",
        "commit ms"
    );
    let mut cells = Vec::new();
    for (round, (&batch, &clients)) in args
        .batches
        .iter()
        .flat_map(|b| args.clients.iter().map(move |c| (b, c)))
        .enumerate()
    {
        let commits_before = Commits::read(&client)?;
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
        let (per_commit, commit_ms) = Commits::read(&client)?.since(&commits_before);
        println!(
            "{:>7} {:>8} {:>12.0} {:>9.3} {:>9.3} {:>9} {:>9.3} {:>10.1} {:>10.3}",
            cell.batch,
            cell.clients,
            cell.eps,
            cell.p50_ms,
            cell.p99_ms,
            cell.requests,
            cell.eps / raw_before,
            per_commit,
            commit_ms
        );
        cells.push((cell, per_commit, commit_ms));
    }
    // What idempotency keys cost: a fresh key per request against none, on small requests
    // (where a key weighs most) and larger ones. KEY_PAIRS pairs of half-length measurements,
    // each pair back to back (the order alternating, so a drift of the machine does not favour
    // one side); the figures are the medians of the pairs' ratios and of each side.
    let pair_seconds = args.seconds / 2.0;
    let mut keys_cost = Vec::new();
    let mut round = 10_000;
    // The store's part of it, without HTTP or the committer's grouping: commits of 4 writes
    // each with its key against the same without keys.
    let c = keyed_pairs(pair_seconds, |keyed| {
        store_only(dir.path(), &value, 4, pair_seconds, true, keyed)
    })?;
    println!(
        "idempotency keys in the store alone, 4 writes per durable commit, a key per write: {}",
        c.line(pair_seconds, "")
    );
    keys_cost.push(c.json(json!({"store_alone": true, "batch": 1, "per_commit": 4})));
    for (batch, clients) in [(1usize, 4usize), (100, 4)] {
        let c = keyed_pairs(pair_seconds, |keyed| {
            round += 1;
            let cell = api_cell(
                &client,
                "bench",
                value.as_bytes(),
                batch,
                clients,
                pair_seconds,
                round,
                keyed,
            )?;
            Ok(cell.eps)
        })?;
        println!(
            "idempotency keys, batch {batch} x {clients} clients, a key per request: {}",
            c.line(pair_seconds, "; target at most -5%")
        );
        keys_cost.push(c.json(json!({"batch": batch, "clients": clients})));
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
    let verdict = machine.verdict(raw_before, raw_after);
    println!("{}", verdict.line());

    let commits_of: Vec<(f64, f64)> = cells.iter().map(|c| (c.1, c.2)).collect();
    let cells: Vec<Cell> = cells.into_iter().map(|c| c.0).collect();
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
        "machine_check": verdict.json(),
        "raw_redb_events_per_commit": args.raw_commit_events,
        "raw_redb_16_per_commit_events_per_s": raw_small.round(),
        "raw_redb_16_per_commit_16_writers_events_per_s": raw_small_16.round(),
        "store_only_events_per_s": store_eps.round(),
        "raw_redb_store_shaped_events_per_s": shaped.round(),
        "fingerprints": {"with_events_per_s": fp_with.round(), "without_events_per_s": fp_without.round(), "ratio": fp_with / fp_without},
        "idempotency_keys": keys_cost,
        "api_events_per_s": best.eps.round(),
        "api_batch": best.batch,
        "api_clients": best.clients,
        "single_event_p50_ms": single.map(|s| s.p50_ms),
        "single_event_p99_ms": single.map(|s| s.p99_ms),
        "cells": cells.iter().zip(&commits_of).map(|(c, (per_commit, commit_ms))| json!({"batch": c.batch, "clients": c.clients, "events_per_s": c.eps.round(), "p50_ms": c.p50_ms, "p99_ms": c.p99_ms, "events_per_commit": per_commit, "commit_ms": commit_ms})).collect::<Vec<_>>(),
        "ratio": (best.eps / raw * 1000.0).round() / 1000.0,
    });
    println!("{summary}");
    Ok(0)
}
