//! `GET /metrics`: what `status` reports, in the OpenMetrics text format Prometheus scrapes
//! (encoded by `prometheus-client`). Every scrape builds the registry afresh from the node's
//! current figures: nothing here is on the write path.
//!
//! Names: `edgerep_` prefix; counters end in `_total` (added by the encoder), durations are
//! `_seconds`, timestamps `_timestamp_seconds`. Per-peer metrics carry `peer`, per-origin ones
//! `origin`, per-plugin ones `plugin`.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::replication::ReplicationStatus;

/// Label pairs.
type Labels = Vec<(String, String)>;

/// What the committer measures as it goes (kept for the node's life; the one part of the
/// metrics on the write path: an atomic add or two per commit).
#[derive(Debug)]
pub struct CommitMetrics {
    /// Duration of each store transaction, by kind (`local`: local writes, `apply`: a peer's
    /// batch), including its sync when immediate.
    commit_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    /// Duration of each separate sync (of `periodic` collections' commits).
    sync_seconds: Histogram,
    /// Local writes committed, per collection.
    written: Family<Labels, Counter>,
    /// Peers' events applied, per collection.
    applied: Family<Labels, Counter>,
    /// Peers' events whose timestamp was ahead of this node's wall clock by more than
    /// `node.max_clock_skew_ms` (applied, but the clock did not follow them).
    skewed: Counter,
    /// When a skewed event was last logged (at most one warning a minute).
    skew_logged: std::sync::Mutex<Option<std::time::Instant>>,
    /// Per origin whose events came skewed, how far ahead of this node's wall clock the last
    /// batch's were at most (ms), and when (one entry per origin: origins are peers' ids).
    skewed_origins: std::sync::Mutex<std::collections::BTreeMap<String, (u64, std::time::Instant)>>,
    /// The collections declared (at the start, or by a reload since): always counted under
    /// their names.
    declared: std::sync::RwLock<std::collections::BTreeSet<String>>,
    /// Other collections counted under their own name (at most [`MAX_COLLECTION_LABELS`],
    /// the first seen; the rest under [`OTHER_COLLECTIONS`]): their names come from clients and
    /// peers, and a label is kept for the node's life.
    labelled: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

/// How many undeclared collections get a label of their own in the per-collection counters.
pub(crate) const MAX_COLLECTION_LABELS: usize = 256;
/// The label of the collections past [`MAX_COLLECTION_LABELS`].
pub(crate) const OTHER_COLLECTIONS: &str = "_other";

/// 50 µs to about 1.6 s, doubling.
fn duration_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

impl Default for CommitMetrics {
    fn default() -> CommitMetrics {
        CommitMetrics::new(std::iter::empty())
    }
}

impl CommitMetrics {
    /// Metrics whose per-collection counters always name `declared`.
    pub(crate) fn new(declared: impl IntoIterator<Item = String>) -> CommitMetrics {
        CommitMetrics {
            declared: std::sync::RwLock::new(declared.into_iter().collect()),
            commit_seconds: Family::new_with_constructor(duration_buckets),
            sync_seconds: duration_buckets(),
            written: Family::default(),
            applied: Family::default(),
            skewed: Counter::default(),
            skew_logged: std::sync::Mutex::new(None),
            skewed_origins: std::sync::Mutex::default(),
            labelled: std::sync::Mutex::new(Default::default()),
        }
    }

    /// The label of `collection` in per-collection series: its name if it is declared or among
    /// the first [`MAX_COLLECTION_LABELS`] others seen (decided at first sight: once labelled, a
    /// collection stays so; one under `_other` gets its own label only if a reload declares
    /// it, and what `_other` counted stays there: no series ever goes down), else
    /// [`OTHER_COLLECTIONS`].
    fn label_of<'c>(&self, collection: &'c str) -> &'c str {
        let declared = self.declared.read().unwrap_or_else(|e| e.into_inner());
        if declared.contains(collection) {
            return collection;
        }
        drop(declared);
        let mut labelled = self.labelled.lock().unwrap_or_else(|e| e.into_inner());
        if labelled.contains(collection) {
            collection
        } else if labelled.len() < MAX_COLLECTION_LABELS {
            labelled.insert(collection.to_owned());
            collection
        } else {
            OTHER_COLLECTIONS
        }
    }

    /// Collections a reload declares: counted under their names from now on (what was counted
    /// under `_other` before stays there: no series goes down).
    pub(crate) fn declare(&self, names: impl IntoIterator<Item = String>) {
        self.declared
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .extend(names);
    }

    /// A transaction of `kind` took `seconds`.
    pub(crate) fn commit(&self, kind: &str, seconds: f64) {
        self.commit_seconds
            .get_or_create(&label("kind", kind))
            .observe(seconds);
    }

    /// A separate sync took `seconds`.
    pub(crate) fn sync(&self, seconds: f64) {
        self.sync_seconds.observe(seconds);
    }

    /// `n` events of `collection` were committed: local writes (`local`) or a peer's applied to
    /// the state (`!local`). Declared collections and the first [`MAX_COLLECTION_LABELS`] others
    /// seen are counted under their names, later ones together under [`OTHER_COLLECTIONS`].
    pub(crate) fn events(&self, collection: &str, n: u64, local: bool) {
        let f = if local { &self.written } else { &self.applied };
        f.get_or_create(&label("collection", self.label_of(collection)))
            .inc_by(n);
    }

    /// `n` events of a peer's batch carried timestamps ahead of this node's clock by more than
    /// `max_skew_ms` (`by_origin`: how far, at most, per origin): counted, kept per origin for
    /// status, and logged at most once a minute (one of the two clocks is wrong).
    pub(crate) fn skewed(
        &self,
        n: u64,
        max_skew_ms: u64,
        by_origin: &std::collections::BTreeMap<edgerep_wire::NodeId, u64>,
    ) {
        if n == 0 {
            return;
        }
        let total = self.skewed.inc_by(n) + n;
        let now = std::time::Instant::now();
        {
            let mut origins = self
                .skewed_origins
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            for (origin, ahead) in by_origin {
                origins.insert(origin.to_string(), (*ahead, now));
            }
        }
        let mut logged = self.skew_logged.lock().unwrap_or_else(|e| e.into_inner());
        if logged.is_none_or(|at| at.elapsed() >= std::time::Duration::from_secs(60)) {
            *logged = Some(now);
            let named: Vec<String> = by_origin
                .iter()
                .map(|(o, ahead)| format!("{o} up to {} s ahead", ahead / 1000))
                .collect();
            tracing::warn!(
                events = n,
                total,
                "events of {} carry timestamps more than {max_skew_ms} ms (node.max_clock_skew_ms) ahead of this node's clock: applied, but this clock does not follow them, so last-writer-wins favours that origin's writes over concurrent ones until the clocks agree; check both machines' time (edgerep_clock_skewed_events_total counts them, status shows clock_skewed_origins)",
                named.join(", ")
            );
        }
    }

    /// Origins whose events came skewed (see [`CommitMetrics::skewed`]) within the last hour:
    /// how far ahead (ms) and how long ago (s), for status.
    pub(crate) fn skewed_origins(&self) -> serde_json::Value {
        let mut origins = self
            .skewed_origins
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        origins.retain(|_, (_, at)| at.elapsed() < std::time::Duration::from_secs(3600));
        serde_json::Value::Object(
            origins
                .iter()
                .map(|(o, (ahead, at))| {
                    (
                        o.clone(),
                        serde_json::json!({"ahead_ms": ahead, "seen_s_ago": at.elapsed().as_secs()}),
                    )
                })
                .collect(),
        )
    }

    fn register(&self, m: &mut Metrics) {
        m.0.register(
            "edgerep_commit_duration_seconds",
            "Store transactions (local writes, peers' batches), including their sync when immediate",
            self.commit_seconds.clone(),
        );
        m.0.register(
            "edgerep_sync_duration_seconds",
            "Separate syncs of periodic collections' commits",
            self.sync_seconds.clone(),
        );
        m.0.register(
            "edgerep_collection_written_events",
            "Local writes committed, per collection",
            self.written.clone(),
        );
        m.0.register(
            "edgerep_collection_applied_events",
            "Peers' events applied, per collection",
            self.applied.clone(),
        );
        m.0.register(
            "edgerep_clock_skewed_events",
            "Peers' events whose timestamp was ahead of this node's clock by more than node.max_clock_skew_ms",
            self.skewed.clone(),
        );
    }
}

/// The figures a scrape reports.
pub(crate) struct Figures<'a> {
    pub(crate) store: &'a edgerep_store::StoreStatus,
    pub(crate) disagreements: u64,
    pub(crate) idempotency_keys: u64,
    pub(crate) idempotency: &'a crate::idempotency::Counters,
    pub(crate) replication: Option<&'a ReplicationStatus>,
    pub(crate) uptime_seconds: f64,
    pub(crate) commits: &'a CommitMetrics,
    pub(crate) conflicts: &'a edgerep_store::ConflictTally,
    pub(crate) plugin_metrics: &'a [(String, edgerep_plugin::MetricsSnapshot)],
    /// Collections halted or paused, with which (see `Pipeline::stopped_collections`).
    pub(crate) stopped_collections: &'a [(String, &'static str)],
    /// Idempotency records dropped for the key count inside their window, since the start.
    pub(crate) idempotency_dropped_early: u64,
}

/// Histograms whose buckets were counted elsewhere (the plugin runtime's), one per label set.
#[derive(Debug)]
struct Counted(Vec<(Labels, CountedHistogram)>);

#[derive(Debug)]
struct CountedHistogram {
    sum: f64,
    count: u64,
    /// `(upper bound, values in the range)`, not cumulative; the last bound is +Inf.
    buckets: Vec<(f64, u64)>,
}

impl prometheus_client::encoding::EncodeMetric for Counted {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        for (labels, h) in &self.0 {
            encoder
                .encode_family(labels)?
                .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                    h.sum, h.count, &h.buckets, None,
                )?;
        }
        Ok(())
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Histogram
    }
}

/// A plugin runtime's ranges as histogram buckets, the bounds scaled by `scale`. A range counts
/// the whole values below its bound, and a Prometheus bucket those at or below its `le`: the
/// bucket's `le` is the bound less one.
fn counted(sum: f64, count: u64, ranges: &[(u64, u64)], scale: f64) -> CountedHistogram {
    CountedHistogram {
        sum,
        count,
        buckets: ranges
            .iter()
            .map(|&(bound, n)| {
                let le = if bound == u64::MAX {
                    f64::INFINITY
                } else {
                    bound.saturating_sub(1) as f64 * scale
                };
                (le, n)
            })
            .collect(),
    }
}

/// A registry being filled.
struct Metrics(Registry);

impl Metrics {
    fn gauge(&mut self, name: &str, help: &str, value: f64) {
        let g: Gauge<f64, std::sync::atomic::AtomicU64> = Gauge::default();
        g.set(value);
        self.0.register(name, help, g);
    }

    fn counter(&mut self, name: &str, help: &str, value: u64) {
        let c: Counter = Counter::default();
        c.inc_by(value);
        self.0.register(name, help, c);
    }

    fn gauges(&mut self, name: &str, help: &str, values: Vec<(Labels, f64)>) {
        let f: Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>> = Family::default();
        for (labels, v) in values {
            f.get_or_create(&labels).set(v);
        }
        self.0.register(name, help, f);
    }

    fn counters(&mut self, name: &str, help: &str, values: Vec<(Labels, u64)>) {
        let f: Family<Labels, Counter> = Family::default();
        for (labels, v) in values {
            f.get_or_create(&labels).inc_by(v);
        }
        self.0.register(name, help, f);
    }
}

fn label(name: &str, value: &str) -> Labels {
    vec![(name.to_owned(), value.to_owned())]
}

/// The OpenMetrics text of `f`.
pub(crate) fn render(f: &Figures<'_>) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    let mut m = Metrics(Registry::default());
    f.commits.register(&mut m);
    m.gauges(
        "edgerep_build_info",
        "Always 1: the node's version and the commit it was built from, as labels",
        vec![(
            vec![
                ("version".to_owned(), env!("CARGO_PKG_VERSION").to_owned()),
                ("commit".to_owned(), crate::BUILD_COMMIT.to_owned()),
            ],
            1.0,
        )],
    );
    m.gauge(
        "edgerep_uptime_seconds",
        "Seconds since the node started",
        f.uptime_seconds,
    );
    m.gauge(
        "edgerep_feed_position",
        "Last position of this node's feed (events committed here, local and from peers)",
        f.store.feed_last as f64,
    );
    m.gauge(
        "edgerep_state_entries",
        "Keys in the state",
        f.store.state_entries as f64,
    );
    m.gauges(
        "edgerep_origin_held_seq",
        "Per origin, the highest sequence number this node holds",
        f.store
            .origins
            .iter()
            .map(|(o, s)| (label("origin", o.as_str()), *s as f64))
            .collect(),
    );
    m.gauges(
        "edgerep_changelog_events",
        "Per origin, events its changelog holds here (held less compacted): what retention keeps for peers that lack them",
        f.store
            .origins
            .iter()
            .map(|(o, s)| {
                let floor = f.store.compacted.get(o).copied().unwrap_or(0);
                (label("origin", o.as_str()), s.saturating_sub(floor) as f64)
            })
            .collect(),
    );
    m.gauge(
        "edgerep_dead_letters",
        "Dead letters held (writes or events a plugin failed on)",
        f.store.dead_letters as f64,
    );
    m.gauge(
        "edgerep_dead_letter_bytes",
        "Bytes of the dead letters held, their records together (limits.max_dead_letter_bytes bounds them)",
        f.store.dead_letter_bytes as f64,
    );
    m.gauges(
        "edgerep_collection_stopped",
        "Collections stopped now (1), by why: halted (a transform failed under halt, or ran past its deadline: local writes refused, and peers' events held back if it was on apply) or paused (an upgrade a peer has and this node has not); status says the reason",
        f.stopped_collections
            .iter()
            .map(|(c, why)| {
                (
                    vec![
                        ("collection".to_owned(), c.clone()),
                        ("why".to_owned(), (*why).to_owned()),
                    ],
                    1.0,
                )
            })
            .collect(),
    );
    m.gauge(
        "edgerep_disagreements",
        "Keys recorded as resolved differently by a peer over the same versions",
        f.disagreements as f64,
    );
    m.gauge(
        "edgerep_idempotency_keys",
        "Idempotency keys held",
        f.idempotency_keys as f64,
    );
    m.counter(
        "edgerep_idempotency_replays",
        "Requests answered from an idempotency record",
        f.idempotency.replays.load(Relaxed),
    );
    m.counter(
        "edgerep_idempotency_dropped_early",
        "Idempotency records dropped before their window ended because the keys held reached api.idempotency_max_keys (a retry of one commits again)",
        f.idempotency_dropped_early,
    );
    m.counter(
        "edgerep_idempotency_refused",
        "Idempotency keys refused: reused with another request, or in use by a concurrent one",
        f.idempotency.reused.load(Relaxed) + f.idempotency.in_use.load(Relaxed),
    );
    if let Some(r) = f.replication {
        let per_peer = |v: &dyn Fn(&crate::replication::PeerStatus) -> Option<f64>| {
            r.peers
                .iter()
                .filter_map(|p| v(p).map(|x| (label("peer", &p.id), x)))
                .collect::<Vec<_>>()
        };
        m.gauges(
            "edgerep_peer_connected",
            "Whether a session with the peer is up (1) or not (0)",
            per_peer(&|p| Some(f64::from(u8::from(p.connected)))),
        );
        // A peer not heard from since the start is as old as the node's uptime (at least): a
        // series left out would hide a peer dead since before a restart from an age alert.
        m.gauges(
            "edgerep_peer_last_contact_age_seconds",
            "Seconds since the peer was last heard from (by its last contact saved before this start if not since; for a peer never heard from, since this node began to wait for it, at this start or an earlier one)",
            per_peer(&|p| {
                Some(
                    p.last_contact_age_ms
                        .map_or(f.uptime_seconds, |ms| ms as f64 / 1000.0),
                )
            }),
        );
        m.gauges(
            "edgerep_peer_lag_events",
            "Events this node holds that the peer has not acknowledged",
            per_peer(&|p| Some(p.lag_events as f64)),
        );
        m.gauges(
            "edgerep_peer_lag_seconds",
            "Age of the oldest event the peer has not acknowledged (at least: where compaction removed some, see edgerep_peer_needs_snapshot)",
            per_peer(&|p| Some(p.lag_seconds)),
        );
        m.gauges(
            "edgerep_peer_needs_snapshot",
            "Whether the peer lacks events compaction removed here (1): it catches up only by a snapshot, and its lag may be longer than edgerep_peer_lag_seconds says",
            per_peer(&|p| Some(f64::from(u8::from(p.needs_snapshot)))),
        );
        m.gauges(
            "edgerep_peer_in_flight_events",
            "Events sent to the peer and not yet acknowledged",
            per_peer(&|p| Some(p.in_flight as f64)),
        );
        // Per-peer counters: (name, help, the count in the peer's status).
        type Count = fn(&crate::replication::PeerStatus) -> u64;
        let counts: [(&str, &str, Count); 13] = [
            (
                "edgerep_peer_sent_bytes",
                "Bytes of messages sent to the peer",
                |p| p.traffic.bytes_sent,
            ),
            (
                "edgerep_peer_received_bytes",
                "Bytes of messages received from the peer",
                |p| p.traffic.bytes_received,
            ),
            ("edgerep_peer_sent_events", "Events sent to the peer", |p| {
                p.traffic.events_sent
            }),
            (
                "edgerep_peer_received_events",
                "Events received from the peer",
                |p| p.traffic.events_received,
            ),
            (
                "edgerep_peer_resent_events",
                "Events sent to the peer again (a rewind, or no acknowledgement in time)",
                |p| p.traffic.events_resent,
            ),
            (
                "edgerep_peer_rewinds_deferred",
                "Rewinds the peer asked for while the last one's resend was on its way (put off)",
                |p| p.traffic.rewinds_deferred,
            ),
            (
                "edgerep_peer_snapshot_pages_sent",
                "Snapshot pages sent to the peer",
                |p| p.traffic.snapshot_pages_sent,
            ),
            (
                "edgerep_peer_duplicate_events",
                "Events received from the peer that this node already held (dropped)",
                |p| p.traffic.duplicates_received,
            ),
            (
                "edgerep_anti_entropy_sessions",
                "Anti-entropy sessions this node opened with the peer",
                |p| p.anti_entropy.sessions_total,
            ),
            (
                "edgerep_anti_entropy_differing_keys",
                "Keys anti-entropy found different with the peer",
                |p| p.anti_entropy.differing_total,
            ),
            (
                "edgerep_anti_entropy_drift_versions",
                "Versions repaired from the peer that this node's bookkeeping said it held (drift)",
                |p| p.anti_entropy.drift_total,
            ),
            (
                "edgerep_anti_entropy_disagreements",
                "Keys resolved differently here and on the peer, settled on the default",
                |p| p.anti_entropy.disagreements_total,
            ),
            (
                "edgerep_anti_entropy_resolved_again",
                "Keys whose resolver plugin had failed here, resolved by it when run again after the peer's resolution differed",
                |p| p.anti_entropy.resolved_again_total,
            ),
        ];
        for (name, help, count) in counts {
            let values = r
                .peers
                .iter()
                .map(|p| (label("peer", &p.id), count(p)))
                .collect();
            m.counters(name, help, values);
        }
        m.gauges(
            "edgerep_anti_entropy_last_agreed_timestamp_seconds",
            "When a session with the peer last ended in agreement",
            per_peer(&|p| p.anti_entropy.last_agreed_at_ms.map(|t| t as f64 / 1000.0)),
        );
        m.counter(
            "edgerep_snapshot_pages_merged",
            "Snapshot pages from peers merged into this node's state",
            r.snapshot_pages_merged_total,
        );
        m.counter(
            "edgerep_compactions",
            "Changelog compaction transactions run",
            r.compactions_total,
        );
        m.counter(
            "edgerep_compacted_events",
            "Changelog entries removed by compaction",
            r.compacted_events_total,
        );
        m.counter(
            "edgerep_forks",
            "Forks detected (an origin's two different events under one sequence number)",
            r.forks_total,
        );
        m.counter(
            "edgerep_refused",
            "Refusals of what peers sent: an event refused with its origin's later ones in the batch, or a peer cut off for what it sent (declined snapshots: edgerep_snapshots_declined)",
            r.refused_total,
        );
        m.counter(
            "edgerep_protocol_errors",
            "Sessions closed for a protocol error, or refused because the configs differ where they must agree",
            r.protocol_errors_total,
        );
        m.gauge(
            "edgerep_replication_halted",
            "Whether replication halted (a transform on apply failed under halt, or ran past its deadline)",
            f64::from(u8::from(r.halted.is_some())),
        );
        m.gauge(
            "edgerep_local_writes_waiting",
            "Whether local writes wait for a peer to say how far it holds this node's own events (after a start; see status origin_check)",
            f64::from(u8::from(r.origin_check.is_some())),
        );
        m.counter(
            "edgerep_deferred_events",
            "Peers' events held back until what they depend on arrives (or a halted or paused collection goes on)",
            r.deferred_total,
        );
        m.counter(
            "edgerep_snapshots_declined",
            "Snapshots a peer began that this node declined (it was not behind the peer's compacted floors)",
            r.snapshots_declined_total,
        );
        m.gauge(
            "edgerep_unreadable_origins",
            "Origins whose changelog this node cannot read (not replicated; see status unreadable)",
            r.unreadable.len() as f64,
        );
    }
    let per_plugin = |count: fn(&edgerep_plugin::MetricsSnapshot) -> u64| {
        f.plugin_metrics
            .iter()
            .map(|(name, s)| (label("plugin", name), count(s)))
            .collect::<Vec<_>>()
    };
    m.counters(
        "edgerep_conflicts",
        "Versions from peers that left their key holding concurrent versions, per collection",
        f.conflicts
            .conflicts
            .iter()
            .map(|(c, n)| (label("collection", f.commits.label_of(c)), *n))
            .collect(),
    );
    m.counters(
        "edgerep_resolutions",
        "Keys with concurrent versions resolved, per collection and by whom (lww, plugin:NAME, lww-fallback:NAME)",
        f.conflicts
            .resolutions
            .iter()
            .map(|((c, by), n)| {
                let mut l = label("collection", f.commits.label_of(c));
                l.push(("by".to_owned(), by.clone()));
                (l, *n)
            })
            .collect(),
    );
    m.0.register(
        "edgerep_plugin_fuel_per_call",
        "Fuel per plugin call",
        Counted(
            f.plugin_metrics
                .iter()
                .map(|(name, s)| {
                    (
                        label("plugin", name),
                        counted(s.fuel_total as f64, s.calls, &s.fuel_buckets, 1.0),
                    )
                })
                .collect(),
        ),
    );
    m.0.register(
        "edgerep_plugin_call_duration_seconds",
        "Wall-clock time per plugin call (with instantiation for fresh instances)",
        Counted(
            f.plugin_metrics
                .iter()
                .map(|(name, s)| {
                    (
                        label("plugin", name),
                        counted(s.nanos_total as f64 / 1e9, s.calls, &s.nanos_buckets, 1e-9),
                    )
                })
                .collect(),
        ),
    );
    m.counters(
        "edgerep_plugin_calls",
        "Plugin calls",
        per_plugin(|s| s.calls),
    );
    m.counters(
        "edgerep_plugin_fuel",
        "Fuel plugin calls used",
        per_plugin(|s| s.fuel_total),
    );
    let mut errors = Vec::new();
    for (name, s) in f.plugin_metrics {
        for (kind, n) in &s.errors {
            let mut l = label("plugin", name);
            l.push(("kind".to_owned(), (*kind).to_owned()));
            errors.push((l, *n));
        }
    }
    m.counters(
        "edgerep_plugin_errors",
        "Plugin calls that failed, by kind",
        errors,
    );
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &m.0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Collection names come from clients and peers: a peer writing each event under a new
    /// collection must not grow the node's labels for ever.
    #[test]
    fn per_collection_labels_are_bounded() {
        let m = CommitMetrics::new(["orders".to_owned()]);
        for i in 0..MAX_COLLECTION_LABELS + 44 {
            m.events(&format!("c-{i}"), 1, false);
        }
        m.events("c-0", 2, false);
        m.events("orders", 5, false);
        let count = |name: &str| m.applied.get_or_create(&label("collection", name)).get();
        assert_eq!(count("c-0"), 3, "a collection labelled stays labelled");
        assert_eq!(count(OTHER_COLLECTIONS), 44);
        assert_eq!(
            count("orders"),
            5,
            "a declared collection is never crowded out"
        );
        let labelled = m.labelled.lock().unwrap();
        assert_eq!(labelled.len(), MAX_COLLECTION_LABELS);
        assert!(!labelled.contains(&format!("c-{MAX_COLLECTION_LABELS}")));
    }
}
