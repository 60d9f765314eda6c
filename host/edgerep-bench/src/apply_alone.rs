//! The receiver's store alone: a peer's events applied by `StoreWriter::apply_sealed`, without
//! transport, the committer thread or another process on the machine. What catch-up could reach
//! if nothing but the receiver's store stood in its way; told apart from the raw redb limit, it
//! shows how much of the gap is the store's.

use std::path::Path;
use std::time::Instant;

use edgerep_store::{Applied, Received, Store, StoreWriter, Sync};
use edgerep_wire::{HlcClock, NodeId, Value};

/// What [`apply_alone`] measured.
pub(crate) struct ApplyAlone {
    /// Events per second through `apply_sealed`, durable, one transaction per batch.
    pub(crate) events_per_s: f64,
    /// Mean events per batch (each ends at one of the origin's seals, as a session's do).
    pub(crate) per_batch: f64,
    /// CPU time of this thread per event applied, µs.
    pub(crate) cpu_us: f64,
}

/// Writes `events` events of `value` on a store of origin `bench-a` (1000 per commit, not
/// timed), reads them back as batches of at most `batch` events ending at one of its seals (or
/// reaching the next seal when none is that close, as a session's reader does), has each event hinted as a connection's reader does (not timed: a
/// node does it on another thread), then times applying every batch to a fresh store, durably.
/// The seals are unsigned (the stores have no TLS identity): their chains are checked, no
/// signature.
pub(crate) fn apply_alone(
    dir: &Path,
    value: &Value,
    events: u64,
    batch: usize,
) -> anyhow::Result<ApplyAlone> {
    let origin = NodeId::parse("bench-a")?;
    let (from, _) = Store::open(&dir.join("apply-from.redb"), &origin, Default::default())?;
    let from = StoreWriter::new(from);
    let mut clock = HlcClock::new(Default::default(), 60_000);
    let wall_ms = edgerep_node::committer::wall_ms();
    let mut written = 0u64;
    while written < events {
        let n = (events - written).min(1000);
        let writes = (written..written + n)
            .map(|i| crate::ingest::bench_write(format!("k-apply-{i:09}"), value))
            .collect();
        from.commit_local(writes, &mut clock, wall_ms)?;
        written += n;
    }
    let (to, _) = Store::open(
        &dir.join("apply-to.redb"),
        &NodeId::parse("bench-b")?,
        Default::default(),
    )?;
    let to = StoreWriter::new(to);
    let mut batches = Vec::new();
    let mut after = 0u64;
    while after < written {
        let upto = (after + batch as u64).min(written);
        let last = match from.seals(&origin, after, upto)?.last() {
            Some(seal) => seal.seq,
            None => match from.next_seal(&origin, after)? {
                Some(seal) => seal.seq,
                None => anyhow::bail!("no seal of {origin} after {after}"),
            },
        };
        let seals = from.seals(&origin, after, last)?;
        let received: Vec<Received> = from
            .changelog(origin.as_str(), after, (last - after) as usize)?
            .into_iter()
            .map(|e| {
                to.hint(&e);
                e.leaf();
                Received::as_received(e)
            })
            .collect();
        batches.push((received, seals));
        after = last;
    }
    let count = batches.len();
    let cpu = crate::replicate::cpu_seconds_of("thread-self");
    let start = Instant::now();
    for (received, seals) in batches {
        let out = to.apply_sealed(
            received,
            &seals,
            &[],
            &[],
            Sync::Immediate,
            &mut clock,
            wall_ms,
        )?;
        if !out.forks.is_empty() || out.applied.iter().any(|a| *a != Applied::Added) {
            anyhow::bail!("a batch was not applied whole: {:?}", out.applied);
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let cpu = crate::replicate::cpu_seconds_of("thread-self") - cpu;
    let held = to.status()?.origins.get(&origin).copied().unwrap_or(0);
    if held != written {
        anyhow::bail!("the receiver holds {held} of {written} events after the run");
    }
    drop((from, to));
    for name in ["apply-from.redb", "apply-to.redb"] {
        let _ = std::fs::remove_file(dir.join(name));
    }
    Ok(ApplyAlone {
        events_per_s: written as f64 / seconds,
        per_batch: written as f64 / count.max(1) as f64,
        cpu_us: cpu * 1e6 / written.max(1) as f64,
    })
}
