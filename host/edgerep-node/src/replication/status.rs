//! What replication reports: per peer (connection, traffic, lag), forks and refusals, and the
//! whole (`ReplicationStatus`, read by the status API and the metrics).

use super::*;

/// One peer as `status` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PeerStatus {
    /// The peer's node id.
    pub id: String,
    /// `host:port` from the config.
    pub address: String,
    /// A connection is up and the handshake is done.
    pub connected: bool,
    /// Milliseconds since the Unix epoch of the last message from the peer (`None`: never,
    /// as far as this node saved).
    pub last_contact_ms: Option<u64>,
    /// Milliseconds since the last message from the peer, on the monotonic clock (a step of
    /// the wall clock moves `last_contact_ms`, not this: what an alert on a silent peer reads);
    /// for a peer not heard from since the start, the uptime plus how long it had been silent
    /// then, by the last contact saved before it (for a peer never heard from, since this node
    /// began to wait for it, at an earlier start: then `last_contact_ms` is `None`).
    pub last_contact_age_ms: Option<u64>,
    /// What the peer acknowledged holding, per origin (persisted across restarts).
    pub acked: Have,
    /// What the peer said it holds at its last handshake, per origin.
    pub peer_have: Have,
    /// Events this node holds that the peer has not acknowledged.
    pub lag_events: u64,
    /// Age in seconds of the oldest event the peer lacks (0 when it lacks none). Where
    /// compaction removed events the peer lacks (`needs_snapshot`), at least the age of the
    /// oldest event still held past them: the peer may lag by more.
    pub lag_seconds: f64,
    /// Whether the peer lacks events compaction removed here: it can catch up only by a
    /// snapshot (of this node's or another peer's state).
    pub needs_snapshot: bool,
    /// Events sent and not yet acknowledged.
    pub in_flight: u64,
    /// Differences between the peer's configuration and ours (collections, resolvers, plugin
    /// hashes), as reported at the handshake.
    pub mismatches: Vec<String>,
    /// Why the last connection ended or failed, if it did.
    pub last_error: Option<String>,
    /// A snapshot under way with this peer ("sending page N" or "receiving page N"): it
    /// needed events compacted here, or we needed events compacted there.
    pub snapshot: Option<String>,
    /// The instance number of the peer's running process (from its Hello).
    pub instance: Option<String>,
    /// Set when two machines were seen using this peer's node id (sessions refused for a while).
    pub duplicate_id: Option<String>,
    /// The peer is revoked in `[[revoked]]`: its connections are refused.
    pub revoked: bool,
    /// Anti-entropy with this peer: the last comparison, and what the comparisons found and
    /// repaired since the node started.
    pub anti_entropy: AntiEntropyStatus,
    /// What went over the link since the node started, and the relay tree on it.
    pub traffic: PeerTraffic,
}

/// What this node and one peer exchanged since the node started (all connections).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct PeerTraffic {
    /// Messages (frames) sent.
    pub messages_sent: u64,
    /// Messages received.
    pub messages_received: u64,
    /// Bytes of the messages sent.
    pub bytes_sent: u64,
    /// Bytes of the messages received.
    pub bytes_received: u64,
    /// Events sent in Events messages.
    pub events_sent: u64,
    /// Events received in Events messages.
    pub events_received: u64,
    /// Received events this node already held or was applying (dropped): what a relay
    /// tree keeps low.
    pub duplicates_received: u64,
    /// Origins this node asked the peer to stop pushing (it got them first elsewhere).
    pub prunes_sent: u64,
    /// Origins this node asked the peer to push again (they stopped arriving elsewhere).
    pub grafts_sent: u64,
    /// Events sent to the peer again (after a rewind it asked for, or no acknowledgement in
    /// time).
    pub events_resent: u64,
    /// Snapshot pages sent to the peer.
    pub snapshot_pages_sent: u64,
    /// Rewinds the peer asked for while the last one's resend was still on its way (put off
    /// until that resend is acknowledged in part, or 750 ms by default; a count growing with
    /// nothing lost is a faulty or hostile peer).
    pub rewinds_deferred: u64,
    /// Origins whose events this node does not push to the peer now (the peer pruned them).
    pub not_pushed_to_peer: Vec<String>,
    /// Origins whose events the peer does not push to this node now (this node pruned them).
    pub not_pushed_by_peer: Vec<String>,
}

/// Two different events with the same origin and sequence number met here.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ForkReport {
    /// The origin.
    pub origin: String,
    /// The sequence number.
    pub seq: u64,
    /// BLAKE3 of the event this node holds (or, for a fork found by its seal, this node's
    /// chain hash there).
    pub held_hash: String,
    /// BLAKE3 of the different one a peer sent (or the chain hash its seal names).
    pub received_hash: String,
    /// The peer that sent it.
    pub from_peer: String,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
}

/// Events a peer sent that this node refused (not stored, not relayed).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RefusalReport {
    /// The peer that sent them.
    pub from_peer: String,
    /// The first refused event's origin and sequence number.
    pub origin: String,
    /// Its sequence number.
    pub seq: u64,
    /// Why.
    pub reason: String,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
}

/// Replication as a whole, for `status`.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ReplicationStatus {
    /// Address the QUIC endpoint listens on.
    pub listen: Option<String>,
    /// When this node's certificate, or its CA's, expires (the first; Unix seconds): past it,
    /// peers refuse new connections from this node.
    pub certificate_expires_unix_s: Option<i64>,
    /// One entry per configured peer, in config order.
    pub peers: Vec<PeerStatus>,
    /// Why a collection's replication stopped, the last one if several did (a transform on
    /// apply failed under the `halt` policy, or past its deadline): that collection's events,
    /// and their origins' later ones, wait until the node reloads its config or restarts;
    /// other origins and collections go on.
    pub halted: Option<String>,
    /// Why local writes wait, until the peers said how far they hold this node's own events.
    pub origin_check: Option<String>,
    /// A peer saw another machine using this node's id (a copied identity): which peer, how
    /// long ago, and what it said. Kept until a restart.
    pub another_machine_uses_this_id: Option<String>,
    /// Forks met (two different events with one origin and sequence number), newest last.
    pub forks: Vec<ForkReport>,
    /// Forks met since the node started.
    pub forks_total: u64,
    /// The last refusals, newest last: events refused (each with its origin's later ones in
    /// the batch), peers cut off, declined snapshots.
    pub refused: Vec<RefusalReport>,
    /// Events refused and peers cut off since the node started (declined snapshots are in
    /// `snapshots_declined_total`).
    pub refused_total: u64,
    /// Sessions closed because the peer broke the protocol, or refused because the configs
    /// differ where they must agree, since the node started.
    pub protocol_errors_total: u64,
    /// Events held back until what they depend on arrives (causal delivery), since the node
    /// started; they are sent again and applied then. A count that keeps growing for one
    /// event is a context naming events that do not exist: see `deferred_last`.
    pub deferred_total: u64,
    /// Why the last event was held back.
    pub deferred_last: Option<String>,
    /// Snapshots a peer began that this node declined (it was not behind the peer's compacted
    /// floors: a stale view, or a peer trying to replace what this node holds).
    pub snapshots_declined_total: u64,
    /// Snapshot pages from peers merged here, since the node started.
    pub snapshot_pages_merged_total: u64,
    /// Compaction transactions run, and changelog entries they removed, since the node started.
    pub compactions_total: u64,
    /// See `compactions_total`.
    pub compacted_events_total: u64,
    /// Origins whose changelog could not be read (they are not replicated; the others are).
    pub unreadable: BTreeMap<String, String>,
    /// Peers whose seal could not be read for this node's Hello on the current session: the
    /// Hello went without it, so the peer takes this node's word on how far it holds the
    /// peer's own events as none (replication goes on).
    pub unreadable_seals: BTreeMap<String, String>,
}

/// What `status` reports of forks and refusals.
#[derive(Default)]
pub(super) struct Reports {
    pub(super) forks: VecDeque<ForkReport>,
    pub(super) forks_total: u64,
    pub(super) refused: VecDeque<RefusalReport>,
    pub(super) refused_total: u64,
    pub(super) protocol_errors_total: u64,
    pub(super) deferred_total: u64,
    pub(super) deferred_last: Option<String>,
    pub(super) snapshots_declined_total: u64,
    pub(super) snapshot_pages_merged_total: u64,
    pub(super) compactions_total: u64,
    pub(super) compacted_events_total: u64,
    /// Forks reported already (by origin and sequence number), at most [`FORKS_REMEMBERED`].
    seen_forks: BTreeSet<(String, u64)>,
    /// Per origin (bounded: the origins a node holds), its fork lines' limit: a peer replaying
    /// another history of a long log shows thousands of forks, each counted and listed, one
    /// line per 10 s.
    fork_lines: BTreeMap<String, crate::log_limit::Throttle>,
}

/// Forks [`Reports`] remembers so as to report each once; past it they are forgotten and a
/// fork seen again is reported again (noise, but bounded memory under a peer replaying
/// another history of a long log).
const FORKS_REMEMBERED: usize = 65_536;

impl Reports {
    /// Whether the fork at `origin`'s `seq` is not reported yet (it is remembered as reported).
    fn first_fork(&mut self, origin: &str, seq: u64) -> bool {
        if self.seen_forks.len() >= FORKS_REMEMBERED {
            self.seen_forks.clear();
        }
        self.seen_forks.insert((origin.to_owned(), seq))
    }

    pub(super) fn deferred(&mut self, reason: &str) {
        self.deferred_total += 1;
        self.deferred_last = Some(reason.to_owned());
    }

    /// Reports (logs and keeps) the fork at `origin`'s `seq` a message of `peer`'s showed,
    /// `what` saying how, unless it was reported already.
    pub(super) fn found_fork(
        &mut self,
        peer: &NodeId,
        (origin, seq): (&str, u64),
        held_hash: String,
        received_hash: String,
        what: &str,
    ) {
        if !self.first_fork(origin, seq) {
            return;
        }
        let lines = self
            .fork_lines
            .entry(origin.to_owned())
            .or_insert_with(|| crate::log_limit::Throttle::new(crate::log_limit::EVERY));
        if let Some(left_out) = lines.allow() {
            tracing::error!(
                peer = %peer, origin, seq, held = %held_hash, received = %received_hash, left_out,
                "fork: {what} (lines like this one are written once per 10 s per origin, `left_out` says how many were not; status `forks` lists the last ones)"
            );
        }
        self.fork(ForkReport {
            origin: origin.to_owned(),
            seq,
            held_hash,
            received_hash,
            from_peer: peer.to_string(),
            at_ms: wall_ms(),
        });
    }

    fn fork(&mut self, report: ForkReport) {
        self.forks_total += 1;
        if self.forks.len() == MAX_REPORTS {
            self.forks.pop_front();
        }
        self.forks.push_back(report);
    }

    pub(super) fn refused(&mut self, report: RefusalReport, events: u64) {
        self.refused_total += events;
        if self.refused.len() == MAX_REPORTS {
            self.refused.pop_front();
        }
        self.refused.push_back(report);
    }
}

impl super::Replicator {
    /// The age of the oldest event `peer` lacks, in seconds. Where compaction removed events
    /// the peer lacks (it needs a snapshot), at least the age of the oldest event still held
    /// past them.
    pub(super) fn lag_seconds(&self, acked: &BTreeMap<NodeId, u64>) -> f64 {
        let now = wall_ms();
        let mut oldest: Option<u64> = None;
        for (origin, &held) in self.core.local_have() {
            let theirs = acked.get(origin).copied().unwrap_or(0);
            if held <= theirs {
                continue;
            }
            let events = match self.store.changelog(origin.as_str(), theirs, 1) {
                Err(edgerep_store::StoreError::ChangelogCompacted { floor, .. }) => {
                    self.store.changelog(origin.as_str(), floor, 1)
                }
                other => other,
            };
            if let Ok(events) = events
                && let Some(e) = events.first()
            {
                let t = e.hlc.physical_ms;
                oldest = Some(oldest.map_or(t, |o: u64| o.min(t)));
            }
        }
        oldest.map_or(0.0, |t| now.saturating_sub(t) as f64 / 1000.0)
    }

    pub(super) fn publish(&self) {
        let empty = BTreeMap::new();
        let peers = self
            .peers
            .iter()
            .map(|(id, address)| {
                let acked = self.acked.get(id).unwrap_or(&empty);
                let needs_snapshot = self
                    .core
                    .compacted()
                    .iter()
                    .any(|(o, &floor)| acked.get(o).copied().unwrap_or(0) < floor);
                let lag_events = self
                    .core
                    .local_have()
                    .iter()
                    .map(|(o, &s)| s.saturating_sub(acked.get(o).copied().unwrap_or(0)))
                    .sum();
                let view = self.core.peer_view(id);
                let counters = self.core.counters(id);
                let [messages_sent, bytes_sent, messages_received, bytes_received] =
                    self.frames.get(id).copied().unwrap_or_default();
                let names = |o: &[NodeId]| o.iter().map(|o| o.to_string()).collect();
                let traffic = PeerTraffic {
                    messages_sent,
                    messages_received,
                    bytes_sent,
                    bytes_received,
                    events_sent: counters.events_sent,
                    events_received: counters.events_received,
                    duplicates_received: counters.duplicates_received,
                    prunes_sent: counters.prunes_sent,
                    grafts_sent: counters.grafts_sent,
                    events_resent: counters.events_resent,
                    snapshot_pages_sent: counters.snapshot_pages_sent,
                    rewinds_deferred: counters.rewinds_deferred,
                    not_pushed_to_peer: view
                        .as_ref()
                        .map_or(Vec::new(), |v| names(&v.lazy_origins)),
                    not_pushed_by_peer: view
                        .as_ref()
                        .map_or(Vec::new(), |v| names(&v.pruned_origins)),
                };
                PeerStatus {
                    traffic,
                    id: id.to_string(),
                    address: address.clone(),
                    connected: view.as_ref().is_some_and(|v| v.ready),
                    last_contact_ms: self.last_contact.get(id).copied(),
                    last_contact_age_ms: (self.heard_at.contains_key(id)
                        || self.silent_at_start.contains_key(id))
                    .then(|| u64::try_from(self.silent_for(id).as_millis()).unwrap_or(u64::MAX)),
                    acked: acked.clone(),
                    peer_have: self.peer_have.get(id).cloned().unwrap_or_default(),
                    lag_events,
                    lag_seconds: if lag_events == 0 {
                        0.0
                    } else {
                        self.lag_seconds(acked)
                    },
                    needs_snapshot,
                    in_flight: view.as_ref().map_or(0, |v| v.in_flight_events),
                    mismatches: self.mismatches.get(id).cloned().unwrap_or_default(),
                    last_error: self
                        .last_error
                        .get(id)
                        .cloned()
                        .or_else(|| view.as_ref().and_then(|v| v.last_apply_error.clone()))
                        .or_else(|| view.as_ref().and_then(|v| v.last_send_error.clone())),
                    instance: self
                        .instances
                        .get(id)
                        .and_then(|i| i.back())
                        .map(|(i, _)| format!("{i:016x}")),
                    duplicate_id: self
                        .duplicates
                        .get(id)
                        .filter(|(at, _)| at.elapsed() < DUPLICATE_WINDOW)
                        .map(|(_, why)| why.clone()),
                    revoked: self.config.is_revoked(id),
                    anti_entropy: self
                        .anti_entropy
                        .status
                        .get(id)
                        .cloned()
                        .unwrap_or_default(),
                    snapshot: view.as_ref().and_then(|v| {
                        v.snapshot_sending_page
                            .map(|p| format!("sending page {p}"))
                            .or_else(|| {
                                v.snapshot_receiving_page
                                    .map(|p| format!("receiving page {p}"))
                            })
                            .or_else(|| {
                                (v.refuses_snapshots && needs_snapshot).then(|| {
                                    "none sent: the peer runs transforms on apply and refuses snapshots; it gets every origin as events but those compacted here past what it holds".to_owned()
                                })
                            })
                    }),
                }
            })
            .collect();
        if let Ok(mut s) = self.status.lock() {
            s.peers = peers;
            s.halted = self.halted.clone();
            s.origin_check = self.origin_gate.borrow().clone();
            s.another_machine_uses_this_id = self.twin.as_ref().map(|(peer, reason, at)| {
                format!(
                    "peer {peer} saw it {} s ago: {reason}",
                    at.elapsed().as_secs()
                )
            });
            s.forks = self.reports.forks.iter().cloned().collect();
            s.forks_total = self.reports.forks_total;
            s.refused = self.reports.refused.iter().cloned().collect();
            s.refused_total = self.reports.refused_total;
            s.protocol_errors_total = self.reports.protocol_errors_total;
            s.deferred_total = self.reports.deferred_total;
            s.deferred_last = self.reports.deferred_last.clone();
            s.snapshots_declined_total = self.reports.snapshots_declined_total;
            s.snapshot_pages_merged_total = self.reports.snapshot_pages_merged_total;
            s.compactions_total = self.reports.compactions_total;
            s.compacted_events_total = self.reports.compacted_events_total;
            let named = |reasons: &BTreeMap<NodeId, String>| {
                reasons
                    .iter()
                    .map(|(node, why)| (node.to_string(), why.clone()))
                    .collect()
            };
            s.unreadable = named(self.core.unreadable());
            s.unreadable_seals = named(self.core.unreadable_seals());
        }
    }
}
