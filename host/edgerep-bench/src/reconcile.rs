//! `edgerep bench reconcile`: anti-entropy between two nodes on loopback (child processes of
//! this binary, mutual TLS over QUIC) holding the same `--keys` keys, after `d` of them were
//! removed from node B's store behind its bookkeeping's back (`Store::damage_file`, node
//! stopped), for each `d` of `--diffs`: the sessions node A runs (`POST /v1/reconcile`) until
//! one agrees, with their round trips and bytes each way, and the time to agreement. Then, in
//! the same run, what sending the whole state as a snapshot takes instead: the bytes of every
//! snapshot page of A's state (encoded peer messages with their proofs), and the time to read
//! and encode them on A and merge them into an empty store (both ends' work, without the
//! network).

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use edgerep_config::Config;
use serde_json::{Value as Json, json};

use crate::ingest::sample_value;
use crate::replicate::{NodeProcess, write_batch};
use edgerep_client::client::Outcome;

/// Arguments of `edgerep bench reconcile`.
#[derive(Debug, clap::Args)]
pub struct ReconcileArgs {
    /// Keys both nodes hold.
    #[arg(long, default_value_t = 1_000_000)]
    keys: u64,
    /// Numbers of keys removed from node B's store, one measurement each.
    #[arg(long, value_delimiter = ',', default_value = "0,1,1000,100000")]
    diffs: Vec<u64>,
    /// Target size of one encoded event, in bytes.
    #[arg(long, default_value_t = 200)]
    event_bytes: usize,
    /// Most sessions per measurement (each repairs at most 1,024 keys).
    #[arg(long, default_value_t = 1000)]
    max_sessions: u64,
}

/// What the sessions of one measurement added up to.
#[derive(Debug, Default)]
struct Totals {
    sessions: u64,
    round_trips: u64,
    bytes_sent: u64,
    bytes_received: u64,
    differing: u64,
    repaired_out: u64,
    seconds: f64,
    /// The first session alone: round trips, bytes A->B, bytes B->A.
    first: (u64, u64, u64),
}

/// Keys node `n` found different with its peer, since it started.
fn found_by(n: &NodeProcess) -> anyhow::Result<u64> {
    let s = n.status(false)?;
    Ok(
        s["replication"]["peers"][0]["anti_entropy"]["differing_total"]
            .as_u64()
            .unwrap_or(0),
    )
}

/// Runs sessions from A with B until one agrees; returns their totals.
fn until_agreed(a: &NodeProcess, max_sessions: u64) -> anyhow::Result<Totals> {
    let mut t = Totals::default();
    let started = Instant::now();
    loop {
        let body = match a.client.reconcile(Some("node-2")) {
            Outcome::Ok(b) => b,
            other => bail!("reconcile failed: {other:?}"),
        };
        let report: Json = serde_json::from_slice(&body)?;
        let Some(s) = report["sessions"].as_array().and_then(|s| s.first()) else {
            // Just after B's restart, A may not have taken the new connection yet.
            if started.elapsed() > Duration::from_secs(30) {
                bail!("no session ran: {report}");
            }
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        if s["running"] == true {
            // Still going when the answer was due: the next call waits for its end (and its
            // whole report).
            if started.elapsed() > Duration::from_secs(600) {
                bail!("sessions still run 10 minutes after the first call: {report}");
            }
            continue;
        }
        t.sessions += 1;
        let n = |k: &str| s[k].as_u64().unwrap_or(0);
        if t.sessions == 1 {
            t.first = (n("round_trips"), n("bytes_sent"), n("bytes_received"));
        }
        t.round_trips += n("round_trips");
        t.bytes_sent += n("bytes_sent");
        t.bytes_received += n("bytes_received");
        t.differing += n("differing");
        t.repaired_out += n("repaired_out");
        if s["timed_out"] == true {
            // Its connection was replaced (B's restart): run another.
            if started.elapsed() > Duration::from_secs(120) {
                bail!("sessions keep timing out: {report}");
            }
            continue;
        }
        if s["agreed"] == true {
            break;
        }
        if t.sessions >= max_sessions {
            bail!("no agreement after {max_sessions} sessions");
        }
    }
    t.seconds = started.elapsed().as_secs_f64();
    Ok(t)
}

/// Runs `edgerep bench reconcile` and prints its figures; returns the exit code.
pub fn reconcile(args: ReconcileArgs) -> anyhow::Result<u8> {
    let exe = std::env::current_exe().context("finding this executable")?;
    let dir = crate::scratch::dir("edgerep-bench-reconcile-")?;
    let machine = crate::machine::Watch::start();
    let (value, event_len) = sample_value(args.event_bytes)?;
    println!(
        "edgerep bench reconcile: {} keys of {event_len}-byte events on two nodes; keys removed from node B's store: {:?}",
        args.keys, args.diffs
    );
    let configs = edgerep_client::cluster::write_cluster(&dir.path().join("cluster"), 2, false)?;
    for config in &configs {
        // Sessions only on demand, so each measurement counts exactly its own.
        let text = std::fs::read_to_string(config)?.replacen(
            "[replication]\n",
            "[replication]\nanti_entropy_interval_ms = 0\n",
            1,
        );
        std::fs::write(config, text)?;
        Config::load(config)?;
    }
    let a = NodeProcess::start(&exe, &configs[0], "node-1 (A)")?;
    let mut b = NodeProcess::start(&exe, &configs[1], "node-2 (B)")?;
    crate::replicate::wait_peered(&a, &b)?;
    let started = Instant::now();
    let batch = 1000usize;
    let mut written = 0u64;
    while written < args.keys {
        let n = batch.min((args.keys - written) as usize);
        write_batch(&a.client, "bench", value.as_bytes(), written, n)?;
        written += n as u64;
    }
    crate::replicate::wait_until(
        &a,
        &b,
        Duration::from_secs(600),
        "B holds every key",
        |sa, sb| sa["digest"] == sb["digest"] && sb["state_entries"].as_u64() == Some(args.keys),
    )?;
    println!(
        "{} keys written on A and replicated to B in {:.1} s",
        args.keys,
        started.elapsed().as_secs_f64()
    );
    let b_config = Config::load(&configs[1])?;
    let b_store = b_config.node.data_dir.join("edgerep.redb");
    let mut rows = Vec::new();
    let mut next_key = 1u64;
    println!(
        "differing keys | sessions | round trips | bytes A->B | bytes B->A | keys found | versions sent | seconds to agreement"
    );
    for &d in &args.diffs {
        if d > 0 {
            b.stop()?;
            let keys: Vec<Vec<u8>> = (0..d)
                .map(|i| {
                    // Spread over the key space; distinct across measurements.
                    let n = (next_key + i * 7919) % args.keys + 1;
                    format!("k-0-{n:09}").into_bytes()
                })
                .collect();
            next_key += d * 7919 + 1;
            let removed = edgerep_store::StoreWriter::damage_file(
                &b_store,
                &b_config.node.id,
                "bench",
                &keys,
                edgerep_store::aae::Damage::Remove,
            )?;
            b = NodeProcess::start(&exe, &configs[1], "node-2 (B)")?;
            crate::replicate::wait_peered(&a, &b)?;
            if removed != d {
                println!("({removed} of the {d} keys chosen were distinct and removed)");
            }
        }
        let found_before = found_by(&b)?;
        let t = until_agreed(&a, args.max_sessions)?;
        crate::replicate::wait_until(
            &a,
            &b,
            Duration::from_secs(60),
            "equal digests",
            |sa, sb| sa["digest"] == sb["digest"],
        )?;
        // Keys found different on either side: A counts what it compared, B what it did.
        let found = t.differing + found_by(&b)?.saturating_sub(found_before);
        println!(
            "{d:>14} | {:>8} | {:>11} | {:>10} | {:>10} | {:>10} | {:>13} | {:.3}",
            t.sessions,
            t.round_trips,
            t.bytes_sent,
            t.bytes_received,
            found,
            t.repaired_out,
            t.seconds
        );
        rows.push(json!({
            "differing": d, "sessions": t.sessions, "round_trips": t.round_trips,
            "bytes_a_to_b": t.bytes_sent, "bytes_b_to_a": t.bytes_received,
            "keys_found": found, "versions_sent": t.repaired_out, "seconds": t.seconds,
            "first_session": {"round_trips": t.first.0, "bytes_a_to_b": t.first.1, "bytes_b_to_a": t.first.2},
        }));
    }
    a.stop()?;
    b.stop()?;
    // The whole state as a snapshot, from A's store.
    let a_config = Config::load(&configs[0])?;
    let (store, _) = edgerep_store::Store::open(
        &a_config.node.data_dir.join("edgerep.redb"),
        &a_config.node.id,
        edgerep_node::event_limits(&a_config),
    )?;
    let fresh_dir = crate::scratch::dir("edgerep-bench-reconcile-fresh-")?;
    let (fresh, _) = edgerep_store::Store::open(
        &fresh_dir.path().join("fresh.redb"),
        &edgerep_wire::NodeId::parse("fresh")?,
        edgerep_node::event_limits(&a_config),
    )?;
    let fresh = edgerep_store::StoreWriter::new(fresh);
    let t0 = Instant::now();
    let (mut bytes, mut pages, mut versions) = (0u64, 0u64, 0u64);
    let mut after: Option<edgerep_wire::StateCursor> = None;
    loop {
        let page = store.state_page(after.as_ref(), 1024, 4 << 20)?;
        let message = edgerep_replica::Message::Snapshot {
            id: 1,
            page: pages,
            floors: Vec::new(),
            versions: page.versions.clone(),
            proofs: page.proofs.clone(),
            done: page.next.is_none(),
            have: Vec::new(),
            seals: page.seals.clone(),
            certs: Vec::new(),
        };
        bytes += message.encode().len() as u64;
        pages += 1;
        versions += page.versions.len() as u64;
        fresh.install_snapshot(page.versions, None, None, edgerep_store::Sync::Immediate)?;
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    let snapshot_s = t0.elapsed().as_secs_f64();
    println!(
        "whole state as a snapshot, for comparison: {pages} pages, {versions} versions, {bytes} bytes; read and encoded on A and merged into an empty store in {snapshot_s:.3} s (without the network)"
    );
    if let Some(one) = rows.iter().find(|r| r["differing"] == 1) {
        let f = &one["first_session"];
        println!(
            "target for 1 difference: found and repaired in at most 5 round trips and 10 KB each way: the session that repaired it took {} round trips, {} bytes A->B and {} bytes B->A (the sessions until one confirmed agreement: {} round trips)",
            f["round_trips"], f["bytes_a_to_b"], f["bytes_b_to_a"], one["round_trips"]
        );
    }
    let verdict = machine.verdict_alone();
    println!("{}", verdict.line());
    println!(
        "{}",
        json!({
            "bench": "reconcile", "keys": args.keys, "event_bytes": event_len,
            "measurements": rows,
            "snapshot": {"pages": pages, "versions": versions, "bytes": bytes, "seconds": snapshot_s},
            "machine_check": verdict.json(),
        })
    );
    Ok(0)
}
