//! `edgerep bench topology`: real nodes (child processes of this binary) on loopback, peered as
//! a chain, a star and full meshes, to measure what relaying costs:
//!
//! - chain of 5: single-event writes on the first node at a steady rate, each timed from the
//!   writer's acknowledgement to every other node's watch feed delivering it; the latency one
//!   relay hop adds (the p50 at the far end less the p50 one hop away, per hop) against the
//!   one-hop latency of the same run;
//! - star and meshes taking a burst: every node (the spokes of a star) writes a burst at once;
//!   once every node holds every event, events received per write over all links (ideal N−1:
//!   each write reaches each other node once), duplicates dropped, bytes per write, how long
//!   traffic went on after every node held everything, and CPU time per delivered event
//!   (user + system of every node, from `/proc`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use edgerep_config::Config;
use serde_json::Value as Json;

use crate::ingest::{batch_body, check_batch_answer, percentile, sample_value};
use crate::replicate::{NodeProcess, watch_arrivals};
use edgerep_client::client::Outcome;

/// Arguments of `edgerep bench topology`.
#[derive(Debug, clap::Args)]
pub struct TopologyArgs {
    /// Events each writing node writes in the burst.
    #[arg(long, default_value_t = 2000)]
    burst: u64,
    /// Events per API request in the burst.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Single-event writes per second on the chain's first node.
    #[arg(long, default_value_t = 100)]
    chain_rate: u64,
    /// Seconds the chain's writes last.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Target size of one encoded event, in bytes.
    #[arg(long, default_value_t = 200)]
    event_bytes: usize,
    /// Which topologies to run (chain5, star8, mesh8, mesh12).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "chain5,star8,mesh8,mesh12"
    )]
    only: Vec<String>,
}

/// Which nodes (1-based) peer with which.
fn links(name: &str) -> anyhow::Result<(usize, Vec<(usize, usize)>)> {
    let n: usize = name
        .trim_start_matches(|c: char| c.is_ascii_alphabetic())
        .parse()
        .with_context(|| format!("topology {name}: expected e.g. chain5, star8, mesh12"))?;
    if !(2..=16).contains(&n) {
        bail!("topology {name}: 2 to 16 nodes");
    }
    let links = if name.starts_with("chain") {
        (1..n).map(|i| (i, i + 1)).collect()
    } else if name.starts_with("star") {
        (2..=n).map(|i| (1, i)).collect()
    } else if name.starts_with("mesh") {
        (1..=n)
            .flat_map(|i| (i + 1..=n).map(move |j| (i, j)))
            .collect()
    } else {
        bail!("topology {name}: expected chain, star or mesh");
    };
    Ok((n, links))
}

/// Writes a cluster of `n` nodes whose configs keep only the peers `links` names.
fn write_topology(dir: &Path, n: usize, links: &[(usize, usize)]) -> anyhow::Result<Vec<PathBuf>> {
    let configs = edgerep_client::cluster::write_cluster(dir, n, false)?;
    for (i, path) in configs.iter().enumerate() {
        let me = i + 1;
        let text = std::fs::read_to_string(path)?;
        let mut doc: toml_edit::DocumentMut = text.parse()?;
        if let Some(peers) = doc
            .get_mut("peers")
            .and_then(|p| p.as_array_of_tables_mut())
        {
            peers.retain(|t| {
                let id = t.get("id").and_then(|v| v.as_str()).unwrap_or("");
                let other: usize = id.trim_start_matches("node-").parse().unwrap_or(usize::MAX);
                links.contains(&(me.min(other), me.max(other)))
            });
        }
        std::fs::write(path, doc.to_string())?;
        Config::load(path).with_context(|| format!("checking {}", path.display()))?;
    }
    Ok(configs)
}

fn start_all(exe: &Path, configs: &[PathBuf]) -> anyhow::Result<Vec<NodeProcess>> {
    configs
        .iter()
        .enumerate()
        .map(|(i, c)| NodeProcess::start(exe, c, &format!("node-{}", i + 1)))
        .collect()
}

/// Waits until `f` holds for every node's status.
fn wait_all(
    nodes: &[NodeProcess],
    limit: Duration,
    what: &str,
    f: impl Fn(usize, &Json) -> bool,
) -> anyhow::Result<Vec<Json>> {
    let deadline = Instant::now() + limit;
    loop {
        let statuses: Vec<anyhow::Result<Json>> = nodes.iter().map(|n| n.status(false)).collect();
        if statuses
            .iter()
            .enumerate()
            .all(|(i, s)| s.as_ref().is_ok_and(|s| f(i, s)))
        {
            return statuses.into_iter().collect();
        }
        if Instant::now() > deadline {
            let shown: Vec<String> = statuses
                .iter()
                .enumerate()
                .map(|(i, s)| match s {
                    Ok(s) => format!("node-{}: origins {}", i + 1, s["origins"]),
                    Err(e) => format!("node-{}: {e}", i + 1),
                })
                .collect();
            bail!("{what}: not reached after {limit:?}\n{}", shown.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Every node connected to every configured peer (and past the origin check).
fn wait_peered(nodes: &[NodeProcess]) -> anyhow::Result<()> {
    wait_all(nodes, Duration::from_secs(60), "peering", |_, s| {
        let r = &s["replication"];
        r["origin_check"].is_null()
            && r["peers"]
                .as_array()
                .is_some_and(|p| p.iter().all(|p| p["connected"] == true))
    })?;
    Ok(())
}

/// Per node, the sum over its peers of a traffic counter.
fn traffic_sum(status: &Json, field: &str) -> u64 {
    status["replication"]["peers"].as_array().map_or(0, |p| {
        p.iter()
            .map(|p| p["traffic"][field].as_u64().unwrap_or(0))
            .sum()
    })
}

/// The burst: every writer writes `burst` events at once; returns the figures line.
fn burst(
    name: &str,
    nodes: &[NodeProcess],
    writers: &[usize],
    value: &[u8],
    args: &TopologyArgs,
) -> anyhow::Result<()> {
    let n = nodes.len();
    let before: Vec<Json> = nodes
        .iter()
        .map(|n| n.status(false))
        .collect::<Result<_, _>>()?;
    let cpu_before: Vec<f64> = nodes.iter().map(NodeProcess::cpu_seconds).collect();
    let start = Instant::now();
    let mut threads = Vec::new();
    for &w in writers {
        let client = nodes[w].client.clone();
        let (value, batch, burst) = (value.to_vec(), args.batch, args.burst);
        threads.push(std::thread::spawn(move || -> anyhow::Result<()> {
            let mut counter = 0;
            while counter < burst {
                let k = batch.min((burst - counter) as usize);
                let body = batch_body("burst", &value, w, &mut counter, k);
                match client.batch(&body, true) {
                    Outcome::Ok(answer) => check_batch_answer(&answer, k)?,
                    other => bail!("burst write on node-{} failed: {other:?}", w + 1),
                }
            }
            Ok(())
        }));
    }
    for t in threads {
        t.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
    }
    let written = start.elapsed();
    // Every node holds every writer's events: the burst on top of what it held before.
    let ids: Vec<String> = (1..=n).map(|i| format!("node-{i}")).collect();
    let want: Vec<(String, u64)> = writers
        .iter()
        .map(|&w| {
            let held = before[w]["origins"][&ids[w]].as_u64().unwrap_or(0);
            (ids[w].clone(), held + args.burst)
        })
        .collect();
    wait_all(
        nodes,
        Duration::from_secs(120),
        "every node holds the burst",
        |_, s| {
            want.iter()
                .all(|(o, seq)| s["origins"][o].as_u64().unwrap_or(0) >= *seq)
        },
    )?;
    let converged = start.elapsed();
    let at_convergence: Vec<u64> = nodes
        .iter()
        .map(|n| {
            n.status(false)
                .map(|s| traffic_sum(&s, "messages_received"))
        })
        .collect::<Result<_, _>>()?;
    // Traffic after convergence: wait until no node receives messages for 1 s (up to 10 s).
    let mut last = at_convergence.clone();
    let mut quiet_since = Instant::now();
    let settle_deadline = Instant::now() + Duration::from_secs(10);
    while quiet_since.elapsed() < Duration::from_secs(1) && Instant::now() < settle_deadline {
        std::thread::sleep(Duration::from_millis(100));
        let now: Vec<u64> = nodes
            .iter()
            .map(|n| {
                n.status(false)
                    .map(|s| traffic_sum(&s, "messages_received"))
            })
            .collect::<Result<_, _>>()?;
        if now != last {
            quiet_since = Instant::now();
            last = now;
        }
    }
    let traffic_after = quiet_since.saturating_duration_since(start + converged);
    let after: Vec<Json> = nodes
        .iter()
        .map(|n| n.status(false))
        .collect::<Result<_, _>>()?;
    let cpu: f64 = nodes
        .iter()
        .zip(&cpu_before)
        .map(|(n, b)| n.cpu_seconds() - b)
        .sum();
    let delta = |field: &str| -> u64 {
        after
            .iter()
            .zip(&before)
            .map(|(a, b)| traffic_sum(a, field).saturating_sub(traffic_sum(b, field)))
            .sum()
    };
    let writes = args.burst * writers.len() as u64;
    let received = delta("events_received");
    let duplicates = delta("duplicates_received");
    let bytes = delta("bytes_received");
    let (prunes, grafts) = (delta("prunes_sent"), delta("grafts_sent"));
    let ideal = (n - 1) as f64;
    let per_write = received as f64 / writes as f64;
    let delivered = writes * (n as u64 - 1);
    println!(
        "{name}: {} writers x {} events; every node held all after {:.3} s (writes acknowledged after {:.3} s); deliveries per write {per_write:.2} (ideal {ideal}, ratio {:.2}); duplicates dropped {duplicates} ({:.1}%); prunes {prunes}, grafts {grafts}; {:.0} bytes received per write; messages went on {:.2} s after; CPU {:.1} µs per delivered event (all nodes, user+system)",
        writers.len(),
        args.burst,
        converged.as_secs_f64(),
        written.as_secs_f64(),
        per_write / ideal,
        100.0 * duplicates as f64 / received.max(1) as f64,
        bytes as f64 / writes as f64,
        traffic_after.as_secs_f64(),
        cpu * 1e6 / delivered as f64,
    );
    Ok(())
}

/// The chain: single-event writes on node-1 at `chain_rate`/s; per node, latency from the
/// writer's acknowledgement to the node's watch feed.
fn chain_latency(nodes: &[NodeProcess], value: &[u8], args: &TopologyArgs) -> anyhow::Result<()> {
    let events = ((args.chain_rate as f64) * args.seconds).ceil().max(1.0) as u64;
    let collection = "chain";
    let mut watchers = Vec::new();
    for node in &nodes[1..] {
        watchers.push(watch_arrivals(node, collection, events)?);
    }
    std::thread::sleep(Duration::from_millis(200));
    let interval = Duration::from_secs_f64(1.0 / args.chain_rate.max(1) as f64);
    let start = Instant::now();
    let mut acked = Vec::with_capacity(events as usize);
    for i in 0..events {
        let due = start + interval.mul_f64(i as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let mut counter = i;
        let body = batch_body(collection, value, 0, &mut counter, 1);
        match nodes[0].client.batch(&body, true) {
            Outcome::Ok(answer) => check_batch_answer(&answer, 1)?,
            other => bail!("chain write failed: {other:?}"),
        }
        acked.push(Instant::now());
    }
    let mut p50s = Vec::new();
    for (hop, (seen, done)) in watchers.into_iter().enumerate() {
        match done.recv_timeout(Duration::from_secs(30)) {
            Ok(Outcome::Ok(_)) => {}
            Ok(other) => bail!("watching node-{} failed: {other:?}", hop + 2),
            Err(_) => bail!("node-{} did not deliver every event within 30 s", hop + 2),
        }
        let seen = seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        let mut lat: Vec<f64> = seen
            .iter()
            .filter_map(|(i, t)| {
                let a = acked.get(i.checked_sub(1)? as usize)?;
                Some(if t >= a {
                    (*t - *a).as_secs_f64() * 1e3
                } else {
                    -(*a - *t).as_secs_f64() * 1e3
                })
            })
            .collect();
        if lat.len() as u64 != events {
            bail!(
                "node-{} delivered {} of {events} events",
                hop + 2,
                lat.len()
            );
        }
        lat.sort_by(f64::total_cmp);
        let (p50, p99) = (percentile(&lat, 0.5), percentile(&lat, 0.99));
        println!(
            "chain5: node-{} ({} hop{}): p50 {p50:.3} ms, p99 {p99:.3} ms, max {:.3} ms",
            hop + 2,
            hop + 1,
            if hop == 0 { "" } else { "s" },
            lat.last().copied().unwrap_or(0.0)
        );
        p50s.push(p50);
    }
    let hops = p50s.len();
    if hops >= 2 {
        let per_relay = (p50s[hops - 1] - p50s[0]) / (hops - 1) as f64;
        println!(
            "chain5: each relay hop adds {per_relay:.3} ms (p50), one hop takes {:.3} ms: target per relay hop <= one hop + 2 ms: {}",
            p50s[0],
            if per_relay <= p50s[0] + 2.0 {
                "met"
            } else {
                "missed"
            }
        );
    }
    Ok(())
}

/// Runs `edgerep bench topology` and prints its figures; returns the exit code.
pub fn topology(args: TopologyArgs) -> anyhow::Result<u8> {
    let exe = std::env::current_exe().context("finding this executable")?;
    let (value, event_len) = sample_value(args.event_bytes)?;
    println!(
        "edgerep bench topology: events of {event_len} bytes encoded; nodes are child processes on loopback QUIC with mutual TLS"
    );
    let machine = crate::machine::Watch::start();
    for name in &args.only {
        let (n, links) = links(name)?;
        let dir = crate::scratch::dir("edgerep-bench-topology-")?;
        let configs = write_topology(dir.path(), n, &links)?;
        let nodes = start_all(&exe, &configs)?;
        wait_peered(&nodes)?;
        // A node that started after its peer also dials it once (to replace a connection of a
        // previous run); let those replacements happen before measuring.
        std::thread::sleep(Duration::from_secs(3));
        wait_peered(&nodes)?;
        if name.starts_with("chain") {
            chain_latency(&nodes, value.as_bytes(), &args)?;
        } else {
            let writers: Vec<usize> = if name.starts_with("star") {
                (1..n).collect()
            } else {
                (0..n).collect()
            };
            burst(name, &nodes, &writers, value.as_bytes(), &args)?;
        }
        for node in nodes {
            node.stop()?;
        }
    }
    println!("{}", machine.verdict_alone().line());
    Ok(0)
}
