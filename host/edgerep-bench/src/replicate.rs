//! `edgerep bench replicate`: two nodes on loopback (child processes of this binary, from
//! `init --cluster 2`, mutual TLS over QUIC), events written on node A through its HTTP batch
//! API and durably applied on node B; and in the same run the raw limits it is compared with:
//! raw redb durable batched inserts (the function `bench ingest` uses) and one raw quinn stream
//! carrying frames the size of a replication batch. Only ratios from one run compare: these
//! machines are shared and noisy.
//!
//! Figures, for each durability mode (`immediate`: every commit synced before it is
//! acknowledged, the default; `periodic`: collections declared `durability = "periodic"`,
//! acknowledged before the sync, synced every 20 ms (the default sync_interval_ms)): end-to-end throughput while A takes the
//! writes (events written on A / time until B's status shows them all applied, `origins[A]`);
//! catch-up throughput (B stopped while A takes the writes, then started: replication alone);
//! replication latency p50/p99 at fixed offered rates (A's write acknowledgement to B's
//! `/v1/watch` feed delivering the event, both timed by this process's monotonic clock); and each
//! node's peak resident memory (`VmHWM` of its process). Then what authentication costs: a
//! second pair of nodes with `replication.authenticate = false` (no origin seals signed or
//! checked) runs the immediate end-to-end throughput and the latency at the first rate again,
//! and both are printed side by side.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use edgerep_config::Config;
use serde_json::{Value as Json, json};

use crate::ingest::{batch_body, check_batch_answer, percentile, sample_value};
use edgerep_client::client::{Client, Outcome};

/// Arguments of `edgerep bench replicate`.
#[derive(Debug, clap::Args)]
pub struct ReplicateArgs {
    /// Events written on node A for the end-to-end throughput (the raw quinn stream carries as many).
    #[arg(long, default_value_t = 200_000)]
    events: u64,
    /// Seconds each timed measurement runs: raw redb (before and after) and each latency rate.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Offered rates, in events per second, for the latency measurements.
    #[arg(long, value_delimiter = ',', default_value = "200,10000")]
    rates: Vec<u64>,
    /// Events per API request in the throughput measurement.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Concurrent writers on node A in the throughput measurement.
    #[arg(long, default_value_t = 2)]
    clients: usize,
    /// Target size of one encoded event, in bytes.
    #[arg(long, default_value_t = 200)]
    event_bytes: usize,
    /// Events per transaction for the raw redb limit.
    #[arg(long, default_value_t = 1000)]
    raw_commit_events: usize,
    /// Events per replication batch (the replica's default `batch_events`): the raw quinn frames
    /// are this many events long.
    #[arg(long, default_value_t = 1024)]
    replication_batch_events: usize,
}

/// One `edgerep run` child process.
pub(crate) struct NodeProcess {
    name: String,
    child: std::process::Child,
    api: SocketAddr,
    pub(crate) client: Client,
    log: PathBuf,
}

impl NodeProcess {
    pub(crate) fn start(exe: &Path, config: &Path, name: &str) -> anyhow::Result<NodeProcess> {
        let api: SocketAddr = Config::load(config)?.api.listen;
        let log = config.with_file_name("node.log");
        let log_file = std::fs::File::create(&log)?;
        let child = Command::new(exe)
            .arg("run")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        crate::scratch::child_started(child.id());
        Ok(NodeProcess {
            name: name.to_owned(),
            child,
            api,
            client: Client::new(api),
            log,
        })
    }

    /// user + system CPU seconds the process used so far (from `/proc/PID/stat`).
    pub(crate) fn cpu_seconds(&self) -> f64 {
        cpu_seconds_of(&self.child.id().to_string())
    }

    pub(crate) fn status(&self, verify: bool) -> anyhow::Result<Json> {
        match self.client.status(verify) {
            Outcome::Ok(b) => Ok(serde_json::from_slice(&b)?),
            other => bail!("{}: status failed: {other:?}", self.name),
        }
    }

    /// `VmHWM` (peak resident set) and `VmRSS` of the process, in MB (10^6 bytes).
    fn memory_mb(&self) -> (f64, f64) {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        (
            proc_kb(&text, "VmHWM:") / 1e3,
            proc_kb(&text, "VmRSS:") / 1e3,
        )
    }

    /// The last lines of the node's log, for error messages.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "--- {} log (last lines) ---\n{}",
            self.name,
            lines[lines.len().saturating_sub(15)..].join("\n")
        )
    }

    /// SIGTERM, then waits for a clean exit (SIGKILL after 15 s).
    pub(crate) fn stop(mut self) -> anyhow::Result<()> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Some(code) = self.child.try_wait()? {
                crate::scratch::child_ended(self.child.id());
                if !code.success() {
                    bail!("{} exited with {code}\n{}", self.name, self.log_tail());
                }
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("{} did not stop within 15 s of SIGTERM", self.name)
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        crate::scratch::child_ended(self.child.id());
    }
}

/// user + system CPU seconds process `pid` (or `self`, or `thread-self`) used so far (from
/// `/proc/PID/stat`).
pub(crate) fn cpu_seconds_of(pid: &str) -> f64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name (in parentheses, which may hold spaces): utime and
    // stime are the 14th and 15th of the line, the 12th and 13th after the name.
    let rest = text.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / clock_ticks_per_second()
}

/// The kernel's clock ticks per second (`getconf CLK_TCK`; 100 if it cannot be read).
fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// A `kB` figure from `/proc/PID/status`.
fn proc_kb(status: &str, field: &str) -> f64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0)
}

/// Waits until `f` holds for the statuses of both nodes, or fails with both statuses and logs.
pub(crate) fn wait_until(
    a: &NodeProcess,
    b: &NodeProcess,
    limit: Duration,
    what: &str,
    f: impl Fn(&Json, &Json) -> bool,
) -> anyhow::Result<(Json, Json)> {
    let deadline = Instant::now() + limit;
    loop {
        let (sa, sb) = (a.status(false), b.status(false));
        if let (Ok(sa), Ok(sb)) = (&sa, &sb)
            && f(sa, sb)
        {
            return Ok((sa.clone(), sb.clone()));
        }
        if Instant::now() > deadline {
            bail!(
                "{what}: not reached after {limit:?}\nnode A: {sa:?}\nnode B: {sb:?}\n{}\n{}",
                a.log_tail(),
                b.log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// When each event of a watch arrived: (N of its key `k-0-N`, time).
pub(crate) type Arrivals = Arc<Mutex<Vec<(u64, Instant)>>>;

/// Watches `node`'s feed on a thread, from its current end, for `events` events of
/// `collection`: when each arrived, and (on the channel) the watch's outcome once all did.
pub(crate) fn watch_arrivals(
    node: &NodeProcess,
    collection: &str,
    events: u64,
) -> anyhow::Result<(Arrivals, std::sync::mpsc::Receiver<Outcome>)> {
    let after = node.status(false)?["feed_last"].as_u64().unwrap_or(0);
    let seen: Arrivals = Arc::default();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let (client, kept, collection) = (node.client.clone(), seen.clone(), collection.to_owned());
    std::thread::spawn(move || {
        let params = [
            ("after", after.to_string()),
            ("collection", collection),
            ("limit", events.to_string()),
        ];
        let outcome = client.watch(&params, |line| {
            let t = Instant::now();
            let index = serde_json::from_str::<Json>(line).ok().and_then(|j| {
                j["key"]
                    .as_str()
                    .and_then(|k| k.strip_prefix("k-0-"))
                    .and_then(|n| n.parse::<u64>().ok())
            });
            if let (Some(i), Ok(mut s)) = (index, kept.lock()) {
                s.push((i, t));
            }
            true
        });
        let _ = done_tx.send(outcome);
    });
    Ok((seen, done_rx))
}

/// Writes one batch of `n` events with keys `k-0-{first+1}` … on `client`, durably.
pub(crate) fn write_batch(
    client: &Client,
    collection: &str,
    value: &[u8],
    first: u64,
    n: usize,
) -> anyhow::Result<()> {
    let mut counter = first;
    let body = batch_body(collection, value, 0, &mut counter, n);
    match client.batch(&body, true) {
        Outcome::Ok(answer) => check_batch_answer(&answer, n),
        other => bail!("benchmark write failed: {other:?}"),
    }
}

fn origin_seq(status: &Json, origin: &str) -> u64 {
    status["origins"][origin].as_u64().unwrap_or(0)
}

/// The end-to-end measurement: `events` written on A by `clients` writers in batches of
/// `batch`; returns (seconds until A acknowledged all, seconds until B's status showed them all).
fn end_to_end(
    a: &NodeProcess,
    b: &NodeProcess,
    collection: &str,
    value: &[u8],
    args: &ReplicateArgs,
) -> anyhow::Result<(f64, f64)> {
    let origin = "node-1";
    let target = origin_seq(&a.status(false)?, origin) + args.events;
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut writers = Vec::new();
    for _ in 0..args.clients.max(1) {
        // A client (and so a kept-alive connection) per writer.
        let (client, next, value) = (Client::new(a.api), next.clone(), value.to_vec());
        let collection = collection.to_owned();
        let (events, batch) = (args.events, args.batch.max(1) as u64);
        // Each writer returns when its last batch was acknowledged.
        writers.push(std::thread::spawn(move || -> anyhow::Result<Instant> {
            let mut last = Instant::now();
            loop {
                let first = next.fetch_add(batch, Ordering::Relaxed);
                if first >= events {
                    return Ok(last);
                }
                let n = batch.min(events - first) as usize;
                write_batch(&client, &collection, &value, first, n)?;
                last = Instant::now();
            }
        }));
    }
    let limit = Duration::from_secs(60);
    let mut written = 0.0f64;
    let mut join = |writers: &mut Vec<std::thread::JoinHandle<anyhow::Result<Instant>>>,
                    all: bool|
     -> anyhow::Result<()> {
        let mut i = 0;
        while i < writers.len() {
            if all || writers[i].is_finished() {
                let last = writers
                    .swap_remove(i)
                    .join()
                    .map_err(|_| anyhow::anyhow!("writer thread panicked"))??;
                written = written.max((last - start).as_secs_f64());
            } else {
                i += 1;
            }
        }
        Ok(())
    };
    let done = loop {
        // A failed writer ends the measurement at once.
        join(&mut writers, false)?;
        let sb = b.status(false)?;
        if origin_seq(&sb, origin) >= target {
            break start.elapsed().as_secs_f64();
        }
        if start.elapsed() > limit + Duration::from_secs_f64(args.events as f64 / 1000.0) {
            bail!(
                "node B did not apply A's events in time: B has {} of {target}\nA: {}\nB: {sb}\n{}\n{}",
                origin_seq(&sb, origin),
                a.status(false)?,
                a.log_tail(),
                b.log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    join(&mut writers, true)?;
    let sa = a.status(false)?;
    if origin_seq(&sa, origin) != target {
        bail!(
            "node A holds {} events of its own, expected {target}",
            origin_seq(&sa, origin)
        );
    }
    Ok((written, done))
}

/// Sender threads for the fixed-rate writes: requests in flight at most.
const SENDERS: u64 = 32;

/// One latency measurement at a fixed offered rate.
struct Latency {
    rate: u64,
    events: u64,
    achieved: f64,
    behind_max_ms: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    negative: usize,
    /// Raw redb's p50 and p99 for one durable commit of one event at the same rate, measured
    /// just after (ms).
    raw_commit_ms: (f64, f64),
}

/// Writes at `rate` events/s on A for `seconds` (open loop: request `i` is due at `i` ×
/// interval, whatever earlier requests took, with up to [`SENDERS`] in flight), and times each
/// event from A's acknowledgement to B's watch feed delivering it.
fn latency_at(
    a: &NodeProcess,
    b: &NodeProcess,
    mode: Mode,
    value: &[u8],
    rate: u64,
    seconds: f64,
) -> anyhow::Result<Latency> {
    let rate = rate.max(1);
    let per_request = rate.div_ceil(1000).max(1);
    let interval = Duration::from_secs_f64(per_request as f64 / rate as f64);
    let requests = ((rate as f64 * seconds) / per_request as f64)
        .ceil()
        .max(1.0) as u64;
    let events = requests * per_request;
    let collection = mode.collection(&format!("lat{rate}"));

    // B's watch feed, from its current end, only this collection, until every event arrived.
    let (seen, done_rx) = watch_arrivals(b, &collection, events)?;
    std::thread::sleep(Duration::from_millis(200));

    let acks: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::default();
    let behind_max = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut senders = Vec::new();
    for _ in 0..SENDERS.min(requests) {
        let (client, value, collection) = (Client::new(a.api), value.to_vec(), collection.clone());
        let (acks, behind_max, next) = (acks.clone(), behind_max.clone(), next.clone());
        senders.push(std::thread::spawn(move || -> anyhow::Result<()> {
            loop {
                let slot = next.fetch_add(1, Ordering::Relaxed);
                if slot >= requests {
                    return Ok(());
                }
                let due = start + interval.mul_f64(slot as f64);
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                } else {
                    behind_max.fetch_max((now - due).as_micros() as u64, Ordering::Relaxed);
                }
                write_batch(
                    &client,
                    &collection,
                    &value,
                    slot * per_request,
                    per_request as usize,
                )?;
                let t = Instant::now();
                if let Ok(mut a) = acks.lock() {
                    a.push((slot, t));
                }
            }
        }));
    }
    for s in senders {
        s.join()
            .map_err(|_| anyhow::anyhow!("sender thread panicked"))??;
    }
    let achieved = events as f64 / start.elapsed().as_secs_f64();
    match done_rx.recv_timeout(Duration::from_secs(30)) {
        Ok(Outcome::Ok(_)) => {}
        Ok(other) => bail!("watching node B failed: {other:?}"),
        Err(_) => bail!(
            "node B's watch feed delivered {} of {events} events within 30 s after the writes\n{}\n{}",
            seen.lock().map(|s| s.len()).unwrap_or(0),
            a.log_tail(),
            b.log_tail()
        ),
    }
    let mut acked_at = vec![None; requests as usize];
    for (slot, t) in acks.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.iter() {
        acked_at[*slot as usize] = Some(*t);
    }
    let mut lat = Vec::with_capacity(events as usize);
    let mut negative = 0;
    for (i, t) in seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.iter() {
        let slot = (i.saturating_sub(1) / per_request) as usize;
        let Some(Some(acked)) = acked_at.get(slot) else {
            bail!("node B delivered key k-0-{i} that was not written");
        };
        let ms = if t >= acked {
            (*t - *acked).as_secs_f64() * 1e3
        } else {
            negative += 1;
            -(*acked - *t).as_secs_f64() * 1e3
        };
        lat.push(ms);
    }
    if lat.len() as u64 != events {
        bail!("node B delivered {} of {events} events", lat.len());
    }
    lat.sort_by(f64::total_cmp);
    Ok(Latency {
        rate,
        events,
        achieved,
        behind_max_ms: behind_max.load(Ordering::Relaxed) as f64 / 1e3,
        p50_ms: percentile(&lat, 0.50),
        p99_ms: percentile(&lat, 0.99),
        max_ms: lat.last().copied().unwrap_or(0.0),
        negative,
        raw_commit_ms: (0.0, 0.0),
    })
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Runs `edgerep bench replicate` and prints its figures; returns the exit code.
pub fn replicate(args: ReplicateArgs) -> anyhow::Result<u8> {
    let exe = std::env::current_exe().context("finding this executable")?;
    let dir = crate::scratch::dir("edgerep-bench-replicate-")?;
    let (value, event_len) = sample_value(args.event_bytes)?;
    println!(
        "edgerep bench replicate: events of {event_len} bytes encoded, {} events end to end, {} s per timed measurement",
        args.events, args.seconds
    );

    // 1. Raw redb, before (and again after) the nodes run; the higher is the reference.
    let raw_event = vec![0x5au8; event_len];
    let raw_limit = || {
        edgerep_store::bench::raw_redb_throughput(
            dir.path(),
            &raw_event,
            value.as_bytes(),
            args.raw_commit_events,
            args.seconds,
        )
    };
    let machine = crate::machine::Watch::start();
    let raw_before = raw_limit()?;
    println!(
        "raw redb, durable, {} events per commit: {raw_before:.0} events/s",
        args.raw_commit_events
    );

    // 2. Raw quinn: one stream, mutual TLS, frames the size of a replication batch.
    let batch_events = args.replication_batch_events.max(1);
    let frame_bytes = batch_events * event_len;
    let frames = args.events.div_ceil(batch_events as u64).max(1);
    let quinn = {
        let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
        rt.block_on(edgerep_transport::bench::raw_stream_throughput(
            frames,
            frame_bytes,
        ))?
    };
    let quinn_eps = quinn.events_per_second() * batch_events as f64;
    println!(
        "raw quinn, one stream, {frames} frames of {frame_bytes} bytes ({batch_events} events): {quinn_eps:.0} events/s ({:.1} MB/s)",
        quinn.megabytes_per_second()
    );

    // 3. The receiver's store alone: the same batches applied without transport or threads.
    let alone = crate::apply_alone::apply_alone(dir.path(), &value, args.events, batch_events)?;
    println!(
        "the receiver's store alone (apply_sealed, durable, {:.0} events per batch, unsigned seals, no transport): {:.0} events/s = {:.3} of raw redb just before; CPU {:.1} µs per event",
        alone.per_batch,
        alone.events_per_s,
        alone.events_per_s / raw_before,
        alone.cpu_us
    );

    // 4. Two nodes, peered over loopback QUIC with mutual TLS; the periodic mode's collections
    //    declared on both.
    let configs = edgerep_client::cluster::write_cluster(&dir.path().join("cluster"), 2, false)?;
    let mut periodic = vec!["bench".to_owned(), "catchup".to_owned()];
    periodic.extend(args.rates.iter().map(|r| format!("lat{r}")));
    for config in &configs {
        let mut text = std::fs::read_to_string(config)?;
        for name in &periodic {
            text.push_str(&format!(
                "\n[[collections.declared]]\nname = \"{}\"\ndurability = \"periodic\"\n",
                Mode::Periodic.collection(name)
            ));
        }
        std::fs::write(config, text)?;
        Config::load(config)?;
    }
    let a = NodeProcess::start(&exe, &configs[0], "node-1 (A)")?;
    let mut b = NodeProcess::start(&exe, &configs[1], "node-2 (B)")?;
    wait_peered(&a, &b)?;
    println!("two nodes (child processes) peered over loopback QUIC with mutual TLS");

    let mut modes = Vec::new();
    for mode in [Mode::Immediate, Mode::Periodic] {
        println!("\n-- durability {}: {}", mode.name(), mode.describe());
        let cpu_before = (a.cpu_seconds(), b.cpu_seconds());
        let (written_s, e2e_s) =
            end_to_end(&a, &b, &mode.collection("bench"), value.as_bytes(), &args)?;
        let cpu_us = (
            (a.cpu_seconds() - cpu_before.0) * 1e6 / args.events as f64,
            (b.cpu_seconds() - cpu_before.1) * 1e6 / args.events as f64,
        );
        let ingest_eps = args.events as f64 / written_s;
        let e2e_eps = args.events as f64 / e2e_s;
        println!(
            "writes on A ({} x {} clients, HTTP batch API) while replicating: {ingest_eps:.0} events/s, all acknowledged after {written_s:.3} s",
            args.batch, args.clients
        );
        println!(
            "end to end (A's writes applied on B): {e2e_eps:.0} events/s, all on B after {e2e_s:.3} s ({:.3} s after A acknowledged the last)",
            e2e_s - written_s
        );
        println!(
            "CPU time per replicated event (user + system, from /proc): node A {:.1} µs (taking the writes and sending), node B {:.1} µs (applying)",
            cpu_us.0, cpu_us.1
        );
        let CatchUp {
            ingest_eps: catchup_ingest_eps,
            catchup_eps,
            answered,
            cpu_us: catchup_cpu_us,
            committing,
            b: restarted,
        } = catch_up(&exe, &configs[1], &a, b, mode, value.as_bytes(), &args)?;
        b = restarted;
        println!(
            "catch-up (B stopped while A took {} events at {catchup_ingest_eps:.0} events/s, then started): {catchup_eps:.0} events/s applied on B, timed from B's start (B answered its API {:.0} ms after it)",
            args.events,
            answered.as_secs_f64() * 1e3
        );
        println!(
            "CPU time per caught-up event (user + system, from /proc): node A {:.1} µs (sending), node B {:.1} µs (starting and applying); B's committer spent {:.0}% of the catch-up in apply transactions (from its edgerep_commit_duration_seconds)",
            catchup_cpu_us.0,
            catchup_cpu_us.1,
            committing * 100.0
        );
        let mut latencies = Vec::new();
        for &rate in &args.rates {
            let mut l = latency_at(&a, &b, mode, value.as_bytes(), rate, args.seconds)?;
            println!(
                "latency at {} events/s offered ({} events, {:.0}/s achieved, sender up to {:.1} ms behind schedule): p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms{}",
                l.rate,
                l.events,
                l.achieved,
                l.behind_max_ms,
                l.p50_ms,
                l.p99_ms,
                l.max_ms,
                if l.negative > 0 {
                    format!(
                        " ({} events seen on B before A's answer arrived)",
                        l.negative
                    )
                } else {
                    String::new()
                }
            );
            // The floor under that latency, on this disk now: B makes each event durable in
            // a commit of its own at least (the nodes are idle while this runs).
            let (raw_p50, raw_p99) = edgerep_store::bench::raw_redb_commit_latency(
                dir.path(),
                &raw_event,
                value.as_bytes(),
                rate,
                args.seconds.min(2.0),
            )?;
            println!(
                "raw redb, one durable commit of one event at up to {rate}/s on this disk, just after: p50 {raw_p50:.3} ms, p99 {raw_p99:.3} ms (each event above waits for at least one commit on B)"
            );
            l.raw_commit_ms = (raw_p50, raw_p99);
            latencies.push(l);
        }
        modes.push(ModeFigures {
            mode,
            ingest_eps,
            e2e_eps,
            e2e_s,
            written_s,
            catchup_ingest_eps,
            catchup_eps,
            latencies,
            cpu_us,
        });
    }

    // Both nodes converged and verified; then memory, then stop.
    let (sa, _) = wait_until(&a, &b, Duration::from_secs(30), "convergence", |sa, sb| {
        sa["digest"] == sb["digest"]
            && sa["origins"] == sb["origins"]
            && sa["replication"]["peers"][0]["lag_events"] == json!(0)
    })?;
    for n in [&a, &b] {
        let s = n.status(true)?;
        if s["verified"] != json!(true) {
            bail!(
                "{}: store verification failed: {}",
                n.name,
                s["verify_error"]
            );
        }
    }
    let (a_peak, a_rss) = a.memory_mb();
    let (b_peak, b_rss) = b.memory_mb();
    println!(
        "\nconverged: equal digests {}, stores verified; keys on each node: {}",
        sa["digest"], sa["state_entries"]
    );
    println!(
        "resident memory, peak (VmHWM): node A {a_peak:.1} MB, node B {b_peak:.1} MB (at the end: {a_rss:.1} MB, {b_rss:.1} MB; B restarted for each catch-up)"
    );
    a.stop()?;
    b.stop()?;

    // The same pair without authentication: what signing and checking origin seals costs.
    let plain = edgerep_client::cluster::write_cluster(&dir.path().join("plain"), 2, false)?;
    for config in &plain {
        let text = std::fs::read_to_string(config)?.replacen(
            "[replication]\n",
            "[replication]\nauthenticate = false\n",
            1,
        );
        std::fs::write(config, text)?;
        Config::load(config)?;
    }
    let pa = NodeProcess::start(&exe, &plain[0], "node-1 (A, unauthenticated)")?;
    let pb = NodeProcess::start(&exe, &plain[1], "node-2 (B, unauthenticated)")?;
    wait_peered(&pa, &pb)?;
    println!(
        "\n-- authentication off (replication.authenticate = false): no seals signed or checked"
    );
    let (_, plain_e2e_s) = end_to_end(&pa, &pb, "bench", value.as_bytes(), &args)?;
    let plain_e2e_eps = args.events as f64 / plain_e2e_s;
    let rate = args.rates.first().copied().unwrap_or(200);
    let plain_latency = latency_at(
        &pa,
        &pb,
        Mode::Immediate,
        value.as_bytes(),
        rate,
        args.seconds,
    )?;
    pa.stop()?;
    pb.stop()?;
    let with_latency = modes[0]
        .latencies
        .iter()
        .find(|l| l.rate == rate)
        .map_or(f64::NAN, |l| l.p50_ms);
    let auth = AuthCost {
        with_eps: modes[0].e2e_eps,
        without_eps: plain_e2e_eps,
        rate,
        with_p50_ms: with_latency,
        without_p50_ms: plain_latency.p50_ms,
    };
    println!(
        "authentication cost (immediate): end to end {:.0} events/s with, {:.0} without = {:.3} of it ({:+.1}% throughput; bound -10%); p50 at {rate}/s {:.3} ms with, {:.3} ms without ({:+.3} ms; bound +0.5 ms)",
        auth.with_eps,
        auth.without_eps,
        auth.with_eps / auth.without_eps,
        100.0 * (auth.with_eps / auth.without_eps - 1.0),
        auth.with_p50_ms,
        auth.without_p50_ms,
        auth.with_p50_ms - auth.without_p50_ms
    );

    let raw_after = raw_limit()?;
    let raw = raw_before.max(raw_after);
    println!(
        "raw redb again after the nodes ran: {raw_after:.0} events/s; reference limit: {raw:.0} events/s (the higher)"
    );
    let verdict = machine.verdict(raw_before, raw_after);
    println!("{}", verdict.line());
    for m in &modes {
        println!(
            "{}: end to end {:.0} events/s = {:.3} of raw redb, {:.3} of raw quinn; catch-up {:.0} events/s = {:.3} of raw redb, {:.3} of the receiver's store alone",
            m.mode.name(),
            m.e2e_eps,
            m.e2e_eps / raw,
            m.e2e_eps / quinn_eps,
            m.catchup_eps,
            m.catchup_eps / raw,
            m.catchup_eps / alone.events_per_s
        );
    }
    // The raw limit moves with the disk from run to run (this machine's ranged over 240k to
    // 430k events/s in one day) while the store's own apply does not as much: catch-up against
    // the store alone, in the same run, is what shows the replication path's own cost.
    println!(
        "issue 12 targets: end to end >= 0.75 of raw redb, catch-up >= 0.9 of it; p99 <= 3 ms at 200/s and <= 10 ms at 10k/s; < 100 MB per node"
    );
    let immediate = &modes[0];
    let mode_json = |m: &ModeFigures| {
        json!({
            "ingest_events_per_s": m.ingest_eps.round(),
            "e2e_events_per_s": m.e2e_eps.round(),
            "e2e_seconds": round3(m.e2e_s),
            "b_after_last_ack_seconds": round3(m.e2e_s - m.written_s),
            "ratio": round3(m.e2e_eps / raw),
            "catchup_ingest_events_per_s": m.catchup_ingest_eps.round(),
            "catchup_events_per_s": m.catchup_eps.round(),
            "catchup_ratio": round3(m.catchup_eps / raw),
            "catchup_ratio_to_store_alone": round3(m.catchup_eps / alone.events_per_s),
            "cpu_us_per_event": {"node_a": round3(m.cpu_us.0), "node_b": round3(m.cpu_us.1)},
            "latency": m.latencies.iter().map(|l| json!({
                "rate": l.rate,
                "events": l.events,
                "achieved_rate": l.achieved.round(),
                "p50_ms": round3(l.p50_ms),
                "p99_ms": round3(l.p99_ms),
                "max_ms": round3(l.max_ms),
                "raw_redb_commit_p50_ms": round3(l.raw_commit_ms.0),
                "raw_redb_commit_p99_ms": round3(l.raw_commit_ms.1),
            })).collect::<Vec<_>>(),
        })
    };
    let summary = json!({
        "bench": "replicate",
        "event_bytes": event_len,
        "events": args.events,
        "raw_redb_events_per_s": raw.round(),
        "raw_redb_before_after": [raw_before.round(), raw_after.round()],
        "machine_check": verdict.json(),
        "raw_redb_events_per_commit": args.raw_commit_events,
        "raw_quinn_events_per_s": quinn_eps.round(),
        "raw_quinn_frame_bytes": frame_bytes,
        "raw_quinn_mb_per_s": round3(quinn.megabytes_per_second()),
        "store_apply_alone": {
            "events_per_s": alone.events_per_s.round(),
            "events_per_batch": round3(alone.per_batch),
            "cpu_us_per_event": round3(alone.cpu_us),
            "ratio_to_raw_before": round3(alone.events_per_s / raw_before),
        },
        "immediate": mode_json(immediate),
        "periodic": mode_json(&modes[1]),
        "rss_peak_mb": {"node_a": round3(a_peak), "node_b": round3(b_peak)},
        "digest": sa["digest"],
        "authentication": {
            "e2e_events_per_s_with": auth.with_eps.round(),
            "e2e_events_per_s_without": auth.without_eps.round(),
            "e2e_ratio": round3(auth.with_eps / auth.without_eps),
            "latency_rate": auth.rate,
            "p50_ms_with": round3(auth.with_p50_ms),
            "p50_ms_without": round3(auth.without_p50_ms),
        },
        "ratio_quinn": round3(immediate.e2e_eps / quinn_eps),
        "ratio": round3(immediate.e2e_eps / raw),
    });
    println!("{summary}");
    Ok(0)
}

/// Authenticated against unauthenticated replication (immediate durability).
struct AuthCost {
    with_eps: f64,
    without_eps: f64,
    rate: u64,
    with_p50_ms: f64,
    without_p50_ms: f64,
}

/// A durability mode of the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Immediate,
    Periodic,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Immediate => "immediate",
            Mode::Periodic => "periodic",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Mode::Immediate => "every commit synced before it is acknowledged, on A and on B",
            Mode::Periodic => {
                "acknowledged before the sync, synced every 20 ms (the default sync_interval_ms) (A ships its events once synced)"
            }
        }
    }

    /// The collection a measurement of this mode writes to.
    fn collection(self, base: &str) -> String {
        match self {
            Mode::Immediate => base.to_owned(),
            Mode::Periodic => format!("{base}-periodic"),
        }
    }
}

/// The figures of one durability mode.
struct ModeFigures {
    mode: Mode,
    ingest_eps: f64,
    e2e_eps: f64,
    e2e_s: f64,
    written_s: f64,
    catchup_ingest_eps: f64,
    catchup_eps: f64,
    latencies: Vec<Latency>,
    /// CPU µs per event during the end-to-end measurement, on A and on B.
    cpu_us: (f64, f64),
}

pub(crate) fn wait_peered(a: &NodeProcess, b: &NodeProcess) -> anyhow::Result<()> {
    let connected = |s: &Json| s["replication"]["peers"][0]["connected"] == json!(true);
    wait_until(a, b, Duration::from_secs(30), "nodes peered", |sa, sb| {
        connected(sa) && connected(sb)
    })?;
    Ok(())
}

/// Seconds `node`'s committer spent in apply transactions since it started (its
/// `edgerep_commit_duration_seconds_sum{kind="apply"}`).
fn apply_seconds(node: &NodeProcess) -> anyhow::Result<f64> {
    let text = match node.client.metrics() {
        Outcome::Ok(b) => String::from_utf8(b)?,
        other => bail!("{}: metrics failed: {other:?}", node.name),
    };
    let line = text
        .lines()
        .find(|l| l.starts_with("edgerep_commit_duration_seconds_sum{kind=\"apply\"}"))
        .with_context(|| format!("{}: no apply commit duration in its metrics", node.name))?;
    let value = line.rsplit(' ').next().unwrap_or_default();
    value
        .parse()
        .with_context(|| format!("{}: apply commit duration {value:?}", node.name))
}

/// What [`catch_up`] measured, and node B running again.
struct CatchUp {
    /// A's writes while B was stopped.
    ingest_eps: f64,
    /// B's catch-up, from its start to holding every event.
    catchup_eps: f64,
    /// From B's start to its API's first answer.
    answered: Duration,
    /// CPU per caught-up event of A (from B's start) and of B (its whole process).
    cpu_us: (f64, f64),
    /// Share of the catch-up B's committer spent in apply transactions (the rest it waited
    /// for work).
    committing: f64,
    b: NodeProcess,
}

/// Stops B, writes `args.events` on A, starts B and times until B applied them all: replication
/// alone, from A's changelog.
fn catch_up(
    exe: &Path,
    b_config: &Path,
    a: &NodeProcess,
    b: NodeProcess,
    mode: Mode,
    value: &[u8],
    args: &ReplicateArgs,
) -> anyhow::Result<CatchUp> {
    let name = b.name.clone();
    b.stop()?;
    let origin = "node-1";
    let target = origin_seq(&a.status(false)?, origin) + args.events;
    let collection = mode.collection("catchup");
    let start = Instant::now();
    let batch = args.batch.max(1) as u64;
    let client = Client::new(a.api);
    let mut first = 0;
    while first < args.events {
        let n = batch.min(args.events - first) as usize;
        write_batch(&client, &collection, value, first, n)?;
        first += n as u64;
    }
    let ingest_eps = args.events as f64 / start.elapsed().as_secs_f64();
    // A's own events ship once synced: wait for that (at most one sync interval).
    std::thread::sleep(Duration::from_millis(300));
    let a_cpu = a.cpu_seconds();
    let b = NodeProcess::start(exe, b_config, &name)?;
    let start = Instant::now();
    // Timed from B's start: its start-up and the handshake count.
    while b.status(false).is_err() {
        if start.elapsed() > Duration::from_secs(30) {
            bail!(
                "{name} did not answer within 30 s of its start\n{}",
                b.log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let answered = start.elapsed();
    let limit = Duration::from_secs(60) + Duration::from_secs_f64(args.events as f64 / 1000.0);
    loop {
        let sb = b.status(false)?;
        if origin_seq(&sb, origin) >= target {
            break;
        }
        if start.elapsed() > limit {
            bail!(
                "catch-up: B has {} of {target} after {:?}\n{}",
                origin_seq(&sb, origin),
                limit,
                b.log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let took = start.elapsed().as_secs_f64();
    let catchup_eps = args.events as f64 / took;
    let committing = apply_seconds(&b)? / took;
    let per_event = |seconds: f64| seconds * 1e6 / args.events as f64;
    Ok(CatchUp {
        ingest_eps,
        catchup_eps,
        answered,
        cpu_us: (
            per_event(a.cpu_seconds() - a_cpu),
            per_event(b.cpu_seconds()),
        ),
        committing,
        b,
    })
}
