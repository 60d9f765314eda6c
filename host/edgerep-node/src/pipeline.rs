//! The node's plugins at work: loads them at start, runs a collection's transform chain on
//! ingest and on apply (events from peers), resolves keys that hold concurrent versions, and halts collections whose plugin
//! failed under the `halt` policy.
//!
//! Invariants: a write reaches the committer only after every transform of its collection
//! accepted it (a change a transform routes to another collection is checked against that
//! collection's rules, allowed and not stopped, but does not run its transforms: chains could
//! route in circles); a plugin failure never takes the node down (it becomes a [`Rejection`] handled by
//! the plugin's failure policy); a failing resolver falls back to last-writer-wins and says so.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use edgerep_config::{Config, FailurePolicy, PluginConfig};
use edgerep_plugin::{
    Change, Failure, FailureKind, Limits, Plugin, PluginSource, Resolution, Runtime, World,
};
use edgerep_store::{LocalWrite, OnApply, Resolution as StoreResolution, Versions};
use edgerep_wire::event::FORMAT_VERSION;
use edgerep_wire::{Event, Hlc, NodeId, Op, Value, VersionVector};
use serde_json::{Value as Json, json};

use crate::NodeError;

/// A configured plugin and what to do when it fails.
struct Loaded {
    plugin: Plugin,
    policy: FailurePolicy,
    /// What it was loaded from (a reload keeps the loaded plugin when this is unchanged, and
    /// `events` too).
    config: PluginConfig,
    /// The node's event limits it checks its output against (a reload that raises them loads
    /// the plugin anew: kept, it refused values the new limits allow, on this node only).
    events: edgerep_wire::event::EventLimits,
    /// Times this resolver failed and last-writer-wins was used instead.
    fallbacks: AtomicU64,
    /// Until when (a monotonic instant) this resolver is not called: it ran past its deadline
    /// on every try, and it runs inside the committer's transaction (every write waits).
    cooling_until: Mutex<Option<std::time::Instant>>,
}

/// How long a resolver that ran past its deadline on every try is left out (last-writer-wins
/// instead, counted as fallbacks; anti-entropy settles what other nodes resolved otherwise).
const RESOLVER_COOL_OFF: Duration = Duration::from_secs(30);

impl Loaded {
    /// Whether the resolver is left out now (see [`RESOLVER_COOL_OFF`]).
    fn cooling(&self) -> bool {
        let mut until = self.cooling_until.lock().unwrap_or_else(|p| p.into_inner());
        if until.is_some_and(|t| std::time::Instant::now() >= t) {
            *until = None;
        }
        until.is_some()
    }

    /// Leaves the resolver out for [`RESOLVER_COOL_OFF`] from now.
    fn cool_off(&self) {
        *self.cooling_until.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(std::time::Instant::now() + RESOLVER_COOL_OFF);
    }
}

/// `call`, tried again up to [`DEADLINE_RETRIES`] times while it runs past its deadline (wall
/// time, which differs between machines); `retrying` says so each time.
fn retried_past_deadline<T>(
    mut call: impl FnMut() -> Result<T, Failure>,
    retrying: impl Fn(),
) -> Result<T, Failure> {
    let mut outcome = call();
    for _ in 0..DEADLINE_RETRIES {
        match &outcome {
            Err(f) if f.kind == FailureKind::Deadline => {
                retrying();
                outcome = call();
            }
            _ => break,
        }
    }
    outcome
}

/// A write a plugin refused (by failing on it).
#[derive(Debug, Clone)]
pub struct Rejection {
    /// The plugin that failed.
    pub plugin: String,
    /// Its sha256.
    pub plugin_sha256: String,
    /// The failure.
    pub failure: Failure,
    /// The plugin's failure policy.
    pub policy: FailurePolicy,
    /// The event the plugin was given, encoded.
    pub event: Vec<u8>,
}

/// How many times a call that ran past its wall-clock deadline is tried again before the
/// failure counts: the deadline is the one plugin limit that is not the same on every node.
pub(crate) const DEADLINE_RETRIES: u32 = 2;

/// What decides a collection's state from one hybrid-clock time on (see
/// `edgerep_config::Upgrade`).
#[derive(Debug, Clone)]
struct Epoch {
    from_ms: u64,
    /// A resolver plugin (`None`: last-writer-wins).
    resolver: Option<String>,
    on_apply: Vec<String>,
}

/// The plugins as one config wires them; replaced whole by a reload.
struct Wiring {
    plugins: BTreeMap<String, Arc<Loaded>>,
    ingest: HashMap<String, Vec<String>>,
    /// Per collection with a resolver plugin or transforms on apply in some epoch, its epochs
    /// in time order (the first from 0).
    deciding: HashMap<String, Vec<Epoch>>,
}

impl Wiring {
    /// The epoch of `collection` in force at hybrid-clock time `physical_ms`.
    fn epoch(&self, collection: &str, physical_ms: u64) -> Option<&Epoch> {
        self.deciding
            .get(collection)?
            .iter()
            .rev()
            .find(|e| e.from_ms <= physical_ms)
    }
}

/// Why a collection takes no writes (see [`Pipeline::stopped`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stopped {
    /// A plugin with the `halt` policy failed (the reason); a reload or restart resumes it.
    Halted(String),
    /// A peer runs an upgrade this node lacks (the reason names it; see [`Pause`]).
    Paused(String),
}

/// One plugin call on an event, for its trace.
#[derive(Debug, Clone)]
pub struct PluginCall {
    /// The plugin.
    pub plugin: String,
    /// When the call (with its retries) started and ended.
    pub start: std::time::SystemTime,
    /// See `start`.
    pub end: std::time::SystemTime,
    /// The failure kind, if it failed.
    pub failure: Option<String>,
}

/// Why a collection is paused: a peer decides its events from `from_ms` on with an upgrade this
/// node's config does not have.
///
/// A peer is authenticated, not trusted: a pause is kept per announcing peer, its status names
/// the peer, and it ends when this node's config gets the upgrade or stops listing the peer
/// (removed or `[[revoked]]`): one lying peer cannot pause a collection for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pause {
    /// The peer that announced the upgrade.
    pub peer: NodeId,
    /// Events of the collection at or after this hybrid-clock time wait.
    pub from_ms: u64,
    /// One sentence naming the peer and the upgrade.
    pub reason: String,
}

/// A config's wiring loaded and compiled by [`Pipeline::prepare`], not yet in force.
pub struct Wired {
    wiring: Wiring,
    loaded: Vec<String>,
}

/// The loaded plugins and the per-collection wiring.
pub struct Pipeline {
    node: NodeId,
    current: RwLock<Arc<Wiring>>,
    halted: Mutex<BTreeMap<String, String>>,
    /// Collections whose replicated events wait (a transform on apply halted them; see
    /// [`Pipeline::halt_apply`]), with the reason.
    apply_halted: Mutex<BTreeMap<String, String>>,
    /// Whether `apply_halted` holds anything (read per event on the apply path without the lock).
    any_apply_halted: std::sync::atomic::AtomicBool,
    /// Per collection, per announcing peer.
    paused: Mutex<BTreeMap<String, BTreeMap<NodeId, Pause>>>,
    /// Whether `paused` holds anything (read per event on the apply path without the lock).
    any_paused: std::sync::atomic::AtomicBool,
    /// The node's limits on a value (a merged resolution is checked against them).
    value_limits: RwLock<edgerep_wire::value::DecodeLimits>,
    /// Held (read) by each batch of peers' events from before its transforms on apply run
    /// until it is committed, and (write) by a reload from its check of what was committed
    /// under the old wiring until the new is in force (see [`Pipeline::hold_wiring`]).
    wiring_in_use: Arc<tokio::sync::RwLock<()>>,
}

/// The wiring in force held for one batch of peers' events (see [`Pipeline::hold_wiring`]).
pub(crate) type WiringHeld = tokio::sync::OwnedRwLockReadGuard<()>;

/// A reload's hold on the wiring (see [`Pipeline::quiesce`]).
pub(crate) type WiringQuiet = tokio::sync::OwnedRwLockWriteGuard<()>;

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("plugins", &self.wiring().plugins.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn plugin_error(config: &Config, message: String) -> NodeError {
    NodeError::Plugin(format!("{}: {message}", config.source.display()))
}

impl Pipeline {
    /// Loads every configured plugin (checking its sha256 and its world against how the
    /// collections use it). Any problem refuses to start, with a message naming the file.
    pub fn load(config: &Config) -> Result<Pipeline, NodeError> {
        let wiring = wire(config, Some(&cache_dir(config)), &BTreeMap::new())?;
        Ok(Pipeline {
            node: config.node.id.clone(),
            current: RwLock::new(Arc::new(wiring)),
            halted: Mutex::new(BTreeMap::new()),
            apply_halted: Mutex::new(BTreeMap::new()),
            any_apply_halted: std::sync::atomic::AtomicBool::new(false),
            paused: Mutex::new(BTreeMap::new()),
            any_paused: std::sync::atomic::AtomicBool::new(false),
            value_limits: RwLock::new(crate::value_limits(config)),
            wiring_in_use: Arc::new(tokio::sync::RwLock::new(())),
        })
    }

    /// Holds the wiring in force for a batch of peers' events, from before its transforms on
    /// apply run until it is committed; `None` while a reload puts a new wiring in force (the
    /// batch is taken again later). A reload checks that nothing was committed under the old
    /// wiring at or after the times of the upgrades it brings: a batch the old transforms
    /// shaped, committed after that check and before the new wiring came into force, would
    /// escape it, and that node would hold other values than the nodes that reloaded sooner.
    pub(crate) fn hold_wiring(&self) -> Option<WiringHeld> {
        self.wiring_in_use.clone().try_read_owned().ok()
    }

    /// Waits until no batch holds the wiring (each committed), and keeps new ones from taking
    /// it until the returned guard is dropped (see [`Pipeline::hold_wiring`]).
    pub(crate) async fn quiesce(&self) -> WiringQuiet {
        self.wiring_in_use.clone().write_owned().await
    }

    /// [`Pipeline::load`] without writing anything (no compilation cache in the data
    /// directory): what `edgerep config check` runs, so a wrong sha256, a missing file or a
    /// plugin used in the wrong role is found before the node starts.
    pub fn check(config: &Config) -> Result<(), NodeError> {
        wire(config, None, &BTreeMap::new()).map(drop)
    }

    /// Replaces the wiring with `config`'s: plugins whose config is unchanged are kept as
    /// loaded (with their counters), the others loaded anew. On any error nothing changes.
    /// Halted collections resume (the reload is the operator's answer), and so do paused ones
    /// whose config now has the upgrade they waited for (one still missing a later upgrade is
    /// paused again at the peer's next handshake). Returns the plugins (re)loaded.
    pub fn reload(&self, config: &Config) -> Result<Vec<String>, NodeError> {
        let wired = self.prepare(config)?;
        Ok(self.install(config, wired))
    }

    /// Loads and compiles what `config` wires, without putting it in force (what can fail in
    /// a reload; [`Pipeline::install`] then cannot).
    pub fn prepare(&self, config: &Config) -> Result<Wired, NodeError> {
        let old = self.wiring();
        let wiring = wire(config, Some(&cache_dir(config)), &old.plugins)?;
        let loaded: Vec<String> = wiring
            .plugins
            .iter()
            .filter(|(name, l)| old.plugins.get(*name).is_none_or(|o| !Arc::ptr_eq(o, l)))
            .map(|(name, _)| name.clone())
            .collect();
        Ok(Wired { wiring, loaded })
    }

    /// Puts a prepared wiring in force; returns the plugins loaded anew.
    pub fn install(&self, config: &Config, wired: Wired) -> Vec<String> {
        let Wired { wiring, loaded } = wired;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(wiring);
        *self.value_limits.write().unwrap_or_else(|e| e.into_inner()) = crate::value_limits(config);
        self.halted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.apply_halted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.any_apply_halted.store(false, Ordering::Release);
        self.unpause_satisfied(config);
        loaded
    }

    /// Lifts the pauses `config` satisfies: it has the upgrade they wait for, or their peer is
    /// no longer one (removed or revoked). Also called when the replicator takes in a reload: a
    /// peer's handshake between the install and then may have paused again by the old config.
    pub fn unpause_satisfied(&self, config: &Config) {
        let mut paused = self.paused.lock().unwrap_or_else(|e| e.into_inner());
        for (collection, by_peer) in paused.iter_mut() {
            by_peer.retain(|peer, pause| {
                let has_it = has_upgrade(config, collection, pause.from_ms);
                let still_a_peer =
                    config.peers.iter().any(|p| p.id == *peer) && !config.is_revoked(peer);
                !has_it && still_a_peer
            });
        }
        paused.retain(|_, by_peer| !by_peer.is_empty());
        self.any_paused.store(!paused.is_empty(), Ordering::Release);
    }

    fn value_limits(&self) -> edgerep_wire::value::DecodeLimits {
        *self.value_limits.read().unwrap_or_else(|e| e.into_inner())
    }

    fn wiring(&self) -> Arc<Wiring> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether `collection` has transforms to run on ingest.
    pub fn has_ingest(&self, collection: &str) -> bool {
        self.wiring().ingest.contains_key(collection)
    }

    /// Whether any collection runs transforms on ingest.
    pub fn any_ingest(&self) -> bool {
        !self.wiring().ingest.is_empty()
    }

    /// Why writes to `collection` at hybrid-clock time `now_ms` must not go on, if they must
    /// not.
    pub fn stopped(&self, collection: &str, now_ms: u64) -> Option<Stopped> {
        if let Some(reason) = self
            .halted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(collection)
        {
            return Some(Stopped::Halted(reason.clone()));
        }
        self.paused_at(collection, now_ms).map(Stopped::Paused)
    }

    /// Halts the replication of `collection` (a transform on apply failed on a peer's event in
    /// a way that may not decide it): its events from peers wait, and with them their origins'
    /// later ones, until the node restarts or reloads its config. Local writes stop too.
    pub fn halt_apply(&self, collection: &str, reason: String) {
        self.apply_halted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(collection.to_owned(), reason.clone());
        self.any_apply_halted.store(true, Ordering::Release);
        self.halt(collection, reason);
    }

    /// Why the replication of `collection` is halted, if it is (see [`Pipeline::halt_apply`];
    /// a halt at ingest stops local writes only).
    pub fn apply_halted(&self, collection: &str) -> Option<String> {
        if !self.any_apply_halted.load(Ordering::Acquire) {
            return None;
        }
        self.apply_halted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(collection)
            .cloned()
    }

    /// Stops writes to `collection`, local and replicated, until the node restarts or reloads
    /// its config.
    pub fn halt(&self, collection: &str, reason: String) {
        // Reasons carry a plugin's failure message: one line, whatever it holds.
        let reason = edgerep_wire::text::one_line(&reason).into_owned();
        tracing::error!(collection, %reason, "collection halted");
        self.halted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(collection.to_owned(), reason);
    }

    /// Collections stopped now, each with why: `halted` (writes refused; with replication's
    /// events held back too when a transform on apply halted it) or `paused` (an upgrade a
    /// peer has and this node has not). For the metrics; status says the reasons.
    pub fn stopped_collections(&self) -> Vec<(String, &'static str)> {
        let mut out: Vec<(String, &'static str)> = self
            .halted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .map(|c| (c.clone(), "halted"))
            .collect();
        out.extend(
            self.paused
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .keys()
                .map(|c| (c.clone(), "paused")),
        );
        out
    }

    /// Pauses `collection` for events at or after `pause.from_ms`, as `pause.peer` announced
    /// (its latest announcement replaces its earlier one).
    pub fn pause(&self, collection: &str, pause: Pause) {
        let mut paused = self.paused.lock().unwrap_or_else(|e| e.into_inner());
        let by_peer = paused.entry(collection.to_owned()).or_default();
        if by_peer.get(&pause.peer) == Some(&pause) {
            return;
        }
        tracing::warn!(collection, peer = %pause.peer, reason = %pause.reason, "collection paused");
        by_peer.insert(pause.peer.clone(), pause);
        self.any_paused.store(true, Ordering::Release);
    }

    /// Why an event of `collection` at hybrid-clock time `physical_ms` must wait, if it must
    /// (the earliest pause in force).
    pub fn paused_at(&self, collection: &str, physical_ms: u64) -> Option<String> {
        if !self.any_paused.load(Ordering::Acquire) {
            return None;
        }
        self.paused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(collection)?
            .values()
            .filter(|p| p.from_ms <= physical_ms)
            .min_by_key(|p| p.from_ms)
            .map(|p| p.reason.clone())
    }

    /// The event a transform sees at ingest: this node as origin, sequence 0 (numbered when
    /// stored), the wall clock as timestamp, no causal context yet.
    fn ingest_event(&self, w: &LocalWrite, wall_ms: u64) -> Event {
        Event {
            format: FORMAT_VERSION,
            collection: w.collection.clone(),
            key: w.key.clone(),
            op: if w.value.is_some() {
                Op::Put
            } else {
                Op::Delete
            },
            value: w.value.clone(),
            hlc: Hlc::new(wall_ms, 0),
            origin: self.node.clone(),
            seq: 0,
            schema: w.schema,
            meta: w.meta.clone(),
            context: VersionVector::new(),
            extra: BTreeMap::new(),
        }
    }

    /// Runs `write` through its collection's ingest chain. `check` validates each change a
    /// plugin returns against the node's rules (collection allowed, key and value limits); a
    /// change it refuses is the plugin's fault (`bad-output`), and so are more than
    /// `max_writes` writes made from the one write at any step of the chain (each call is
    /// bounded, but a chain multiplies: two transforms could make 10^8 writes of one). A step
    /// whose writes pass `max_bytes` ends the chain early with them (see the loop).
    pub fn run_ingest(
        &self,
        write: LocalWrite,
        wall_ms: u64,
        (max_writes, max_bytes): (usize, usize),
        check: &dyn Fn(&LocalWrite) -> Result<(), String>,
    ) -> Result<Vec<LocalWrite>, Box<Rejection>> {
        let wiring = self.wiring();
        let Some(chain) = wiring.ingest.get(&write.collection) else {
            return Ok(vec![write]);
        };
        let mut current = vec![write];
        for name in chain {
            let loaded = &wiring.plugins[name];
            let mut next = Vec::new();
            // Bounded at every step, not only at the end: a chain of transforms each
            // multiplying and padding its input must not build up gigabytes on the way. Past
            // `max_bytes` the chain stops and returns what it made, which the caller refuses.
            let mut next_bytes = 0usize;
            for w in current {
                let event = self.ingest_event(&w, wall_ms);
                let reject = |failure: Failure| rejection(name, loaded, failure, &event);
                let changes = loaded.plugin.transform(&event, false).map_err(reject)?;
                if next.len() + changes.len() > max_writes {
                    return Err(reject(Failure {
                        kind: FailureKind::BadOutput,
                        message: format!(
                            "the transforms made more than {max_writes} writes of one write (limits.max_batch_events)"
                        ),
                        fuel_used: 0,
                    }));
                }
                for change in changes {
                    let mut out = change_to_write(change);
                    // The writer's context is about the key it read: it follows the write
                    // only where the transform kept its collection and key.
                    if out.collection == w.collection && out.key == w.key {
                        out.context.clone_from(&w.context);
                    }
                    next_bytes = next_bytes.saturating_add(crate::ingest::write_bytes(&out));
                    if next_bytes > max_bytes {
                        // Over the request's bound already: what was made so far is returned,
                        // and the caller refuses the request as too large (nothing written).
                        next.push(out);
                        return Ok(next);
                    }
                    if let Err(message) = check(&out) {
                        return Err(reject(Failure {
                            kind: FailureKind::BadOutput,
                            message: format!("change refused by the node: {message}"),
                            fuel_used: 0,
                        }));
                    }
                    next.push(out);
                }
            }
            current = next;
        }
        Ok(current)
    }

    /// Runs an event received from a peer through its collection's transforms on apply, each on
    /// a fresh instance (so the outcome depends only on the event and the plugins' parameters,
    /// and nodes with the same configuration reach the same state). A transform may keep the
    /// event, change its value (or make it a delete), or drop it (no changes); a change to any
    /// other key is refused (`bad-output`: routing belongs on ingest). Schema and metadata stay
    /// the event's own. `check_value` validates a changed value against the node's limits.
    /// The chain is the one in force at the event's hybrid-clock time (see `Upgrade`). This
    /// node's own events (coming back after a restore, or in a repair) are taken as they are:
    /// an origin's own writes never pass its transforms on apply, however they return.
    pub fn run_apply(
        &self,
        event: &Event,
        check_value: &dyn Fn(&Value) -> Result<(), String>,
    ) -> Result<OnApply, Box<Rejection>> {
        self.run_apply_timed(event, check_value, &mut Vec::new())
    }

    /// [`Pipeline::run_apply`], recording each plugin call in `calls` (for trace spans).
    pub fn run_apply_timed(
        &self,
        event: &Event,
        check_value: &dyn Fn(&Value) -> Result<(), String>,
        calls: &mut Vec<PluginCall>,
    ) -> Result<OnApply, Box<Rejection>> {
        if event.origin == self.node {
            return Ok(OnApply::AsReceived);
        }
        let wiring = self.wiring();
        let Some(epoch) = wiring
            .epoch(&event.collection, event.hlc.physical_ms)
            .filter(|e| !e.on_apply.is_empty())
        else {
            return Ok(OnApply::AsReceived);
        };
        let mut current = event.clone();
        for name in &epoch.on_apply {
            let loaded = &wiring.plugins[name];
            let reject = |failure: Failure| rejection(name, loaded, failure, &current);
            let bad = |message: String| {
                reject(Failure {
                    kind: FailureKind::BadOutput,
                    message,
                    fuel_used: 0,
                })
            };
            let start = std::time::SystemTime::now();
            let outcome = retried_past_deadline(
                || loaded.plugin.transform_report(&current, true),
                || {
                    static LOG: crate::log_limit::Throttle =
                        crate::log_limit::Throttle::new(crate::log_limit::EVERY);
                    if let Some(left_out) = LOG.allow() {
                        tracing::warn!(plugin = %name, collection = %event.collection, left_out, "transform on apply ran past its deadline; trying again (lines like this one are written once per 10 s)");
                    }
                },
            );
            calls.push(PluginCall {
                plugin: name.clone(),
                start,
                end: std::time::SystemTime::now(),
                failure: outcome.as_ref().err().map(|f| f.kind.as_str().to_owned()),
            });
            let report = outcome.map_err(reject)?;
            let Some(change) = edgerep_plugin::on_apply(&current, report.output, report.fuel_used)
                .map_err(reject)?
            else {
                return Ok(OnApply::Dropped);
            };
            let value = match change.op {
                Op::Put => change.value,
                Op::Delete => None,
            };
            if let Some(v) = &value {
                check_value(v).map_err(|m| bad(format!("value refused by the node: {m}")))?;
            }
            current.op = if value.is_some() { Op::Put } else { Op::Delete };
            current.value = value;
        }
        Ok(OnApply::Value(current.value))
    }

    /// The value of a key from its versions, as reads serve it: the resolution the store kept
    /// (decided when the versions last changed, the same on every node), else the single
    /// version, last-writer-wins, or the collection's resolver plugin over concurrent versions
    /// (a key written before resolutions were kept).
    pub fn resolve(
        &self,
        collection: &str,
        key: &[u8],
        versions: &Versions,
        kept: Option<&StoreResolution>,
    ) -> StoreResolution {
        match kept {
            Some(r) => r.clone(),
            None => self.resolve_now(collection, key, versions),
        }
    }

    /// The value of a key from its versions: the single version, or the collection's resolver
    /// (plugin or last-writer-wins) over concurrent ones. A resolver that runs past its
    /// deadline (wall time, which differs between nodes) is tried again; one that still fails
    /// falls back to last-writer-wins, logged and counted. A fallback on one node only is
    /// found by anti-entropy as a disagreement. A merged value past the node's value limits
    /// (it could not be stored and read back) is a failure like the others. The resolver is
    /// the one in force at the newest version's hybrid-clock time: a function of the versions
    /// alone, so every node with the same upgrades picks the same one.
    fn resolve_now(&self, collection: &str, key: &[u8], versions: &Versions) -> StoreResolution {
        self.decide(collection, key, versions, false)
    }

    /// [`Pipeline::resolve_now`], or with `again` (anti-entropy runs a resolver that failed
    /// here again, see `edgerep_store::Resolver::resolve_again`): tried even while the plugin
    /// is left out after deadlines, and none of it counts towards leaving it out.
    fn decide(
        &self,
        collection: &str,
        key: &[u8],
        versions: &Versions,
        again: bool,
    ) -> StoreResolution {
        let events = versions.events();
        let lww = |by: String| StoreResolution::lww(versions, by);
        if events.len() <= 1 {
            return lww("single".into());
        }
        let newest = events.iter().map(|e| e.hlc.physical_ms).max().unwrap_or(0);
        let wiring = self.wiring();
        let Some(name) = wiring
            .epoch(collection, newest)
            .and_then(|e| e.resolver.as_ref())
        else {
            return lww(edgerep_store::BY_LWW.into());
        };
        let loaded = &wiring.plugins[name];
        let outcome = if again {
            // As many tries past the deadline as a first resolution gets: a failure here moves
            // the key to the default on every node, so a busy moment must not decide it.
            retried_past_deadline(|| loaded.plugin.resolve(collection, key, events), || {})
        } else if loaded.cooling() {
            Err(Failure {
                kind: FailureKind::Deadline,
                message: format!(
                    "left out for {} s after it ran past its deadline on every try",
                    RESOLVER_COOL_OFF.as_secs()
                ),
                fuel_used: 0,
            })
        } else {
            // Versions are sorted by dot: the canonical order every node shares.
            let outcome = retried_past_deadline(
                || loaded.plugin.resolve(collection, key, events),
                || {
                    static LOG: crate::log_limit::Throttle =
                        crate::log_limit::Throttle::new(crate::log_limit::EVERY);
                    if let Some(left_out) = LOG.allow() {
                        tracing::warn!(plugin = %name, collection, left_out, "resolver ran past its deadline; trying again (lines like this one are written once per 10 s)");
                    }
                },
            );
            if matches!(&outcome, Err(f) if f.kind == FailureKind::Deadline) {
                loaded.cool_off();
            }
            outcome
        };
        let outcome = outcome.and_then(|r| match r {
            Resolution::Merge(Some(v)) => match crate::check_plugin_value(&v, &self.value_limits())
            {
                Ok(()) => Ok(Resolution::Merge(Some(v))),
                Err(e) => Err(Failure {
                    kind: FailureKind::BadOutput,
                    message: format!("merged a value past the node's limits: {e}"),
                    fuel_used: 0,
                }),
            },
            other => Ok(other),
        });
        match outcome {
            Ok(Resolution::Pick(i)) => StoreResolution {
                value: events[i].value.clone(),
                winner: Some(i),
                by: format!("{}{name}", edgerep_store::BY_PLUGIN),
            },
            Ok(Resolution::Merge(value)) => StoreResolution {
                value,
                winner: None,
                by: format!("{}{name}", edgerep_store::BY_PLUGIN),
            },
            Err(failure) => {
                loaded.fallbacks.fetch_add(1, Ordering::Relaxed);
                static LOG: crate::log_limit::Throttle =
                    crate::log_limit::Throttle::new(crate::log_limit::EVERY);
                if let Some(left_out) = LOG.allow() {
                    tracing::warn!(plugin = %name, collection, kind = failure.kind.as_str(), message = %edgerep_wire::text::one_line(&failure.message), left_out, "resolver failed; used last-writer-wins instead (lines like this one are written once per 10 s, `left_out` says how many were not; the plugin's fallbacks_to_lww in status counts each)");
                }
                StoreResolution::fallback(versions, name)
            }
        }
    }

    /// Each plugin's metrics, by name.
    pub fn plugin_metrics(&self) -> Vec<(String, edgerep_plugin::MetricsSnapshot)> {
        self.wiring()
            .plugins
            .iter()
            .map(|(name, l)| (name.clone(), l.plugin.metrics()))
            .collect()
    }

    /// Per-plugin status and metrics, and the halted collections.
    pub fn status_json(&self) -> Json {
        let mut plugins = serde_json::Map::new();
        let wiring = self.wiring();
        for (name, l) in &wiring.plugins {
            let m = l.plugin.metrics();
            let mut o = json!({
                "world": match l.plugin.world() { World::Transform => "transform", World::Resolver => "resolver" },
                "sha256": l.plugin.sha256(),
                "on_failure": l.policy.as_str(),
                "calls": m.calls,
                "errors": m.errors,
                "fuel_total": m.fuel_total,
                "fuel_per_call": summary_json(&m.fuel_per_call),
                "nanos_per_call": summary_json(&m.nanos_per_call),
            });
            if l.plugin.world() == World::Resolver {
                o["fallbacks_to_lww"] = json!(l.fallbacks.load(Ordering::Relaxed));
            }
            plugins.insert(name.clone(), o);
        }
        let paused: BTreeMap<String, Json> = self
            .paused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(|(c, by_peer)| {
                // The earliest pause first: what holds the collection now.
                let p = by_peer.values().min_by_key(|p| p.from_ms)?;
                let peers: Vec<&str> = by_peer.keys().map(NodeId::as_str).collect();
                Some((
                    c.clone(),
                    json!({"from": edgerep_config::format_ms(p.from_ms), "from_ms": p.from_ms, "reason": p.reason, "peers": peers}),
                ))
            })
            .collect();
        json!({
            "plugins": plugins,
            "halted_collections": *self.halted.lock().unwrap_or_else(|e| e.into_inner()),
            "paused_collections": paused,
        })
    }
}

/// Resolutions the store keeps, decided as versions change (see `edgerep_store::Resolver`).
impl edgerep_store::Resolver for Pipeline {
    fn resolves(&self, collection: &str) -> bool {
        self.wiring()
            .deciding
            .get(collection)
            .is_some_and(|epochs| epochs.iter().any(|e| e.resolver.is_some()))
    }

    fn resolve(&self, collection: &str, key: &[u8], versions: &Versions) -> StoreResolution {
        self.resolve_now(collection, key, versions)
    }

    fn resolve_again(&self, collection: &str, key: &[u8], versions: &Versions) -> StoreResolution {
        self.decide(collection, key, versions, true)
    }

    fn build(&self, collection: &str) -> String {
        let wiring = self.wiring();
        wiring
            .deciding
            .get(collection)
            .and_then(|epochs| epochs.last())
            .and_then(|e| e.resolver.as_ref())
            .map(|name| wiring.plugins[name].plugin.sha256().to_owned())
            .unwrap_or_default()
    }
}

/// Where a node keeps compiled plugins.
fn cache_dir(config: &Config) -> std::path::PathBuf {
    config.node.data_dir.join("plugin-cache")
}

/// Loads `config`'s plugins (those in `keep` with the same config are reused as loaded) and
/// wires them to the collections, checking each is used in its world.
fn wire(
    config: &Config,
    cache: Option<&std::path::Path>,
    keep: &BTreeMap<String, Arc<Loaded>>,
) -> Result<Wiring, NodeError> {
    let mut plugins = BTreeMap::new();
    let mut runtime = None;
    for p in &config.plugins {
        let events = crate::event_limits(config);
        if let Some(kept) = keep
            .get(&p.name)
            .filter(|l| l.config == *p && l.events == events)
        {
            // The same table, but the file may have been rebuilt in place: a restart would
            // refuse it on its sha256, so the reload does too (keeping the old build and
            // answering success would hide it until the next restart).
            let now = std::fs::read(&p.path)
                .map(|wasm| edgerep_plugin::sha256_hex(&wasm))
                .map_err(|e| {
                    plugin_error(
                        config,
                        format!("plugins.{}: cannot read {}: {e}", p.name, p.path.display()),
                    )
                })?;
            if now != kept.plugin.sha256() {
                return Err(plugin_error(
                    config,
                    format!(
                        "plugins.{}: {} changed since it was loaded: its sha256 is now {now}, the config says {} (a restart would refuse it); set sha256 to the new build's (`edgerep plugin build --update-config` does), then reload",
                        p.name,
                        p.path.display(),
                        kept.plugin.sha256()
                    ),
                ));
            }
            plugins.insert(p.name.clone(), kept.clone());
            continue;
        }
        let runtime = match &mut runtime {
            Some(r) => r,
            None => runtime
                .insert(Runtime::new(cache).map_err(|e| plugin_error(config, e.to_string()))?),
        };
        let wasm = std::fs::read(&p.path).map_err(|e| {
            plugin_error(
                config,
                format!("plugins.{}: cannot read {}: {e}", p.name, p.path.display()),
            )
        })?;
        let plugin = runtime
            .load(PluginSource {
                name: p.name.clone(),
                path: p.path.clone(),
                wasm,
                expected_sha256: Some(p.sha256.clone()),
                limits: Limits {
                    fuel: p.fuel,
                    memory_bytes: p.memory_bytes,
                    deadline: Duration::from_millis(p.deadline_ms),
                    events,
                },
                params: p.params.clone(),
            })
            .map_err(|e| plugin_error(config, format!("plugins.{}: {e}", p.name)))?;
        tracing::info!(plugin = %p.name, sha256 = %plugin.sha256(), world = ?plugin.world(), "plugin loaded");
        plugins.insert(
            p.name.clone(),
            Arc::new(Loaded {
                plugin,
                policy: p.on_failure,
                config: p.clone(),
                events,
                fallbacks: AtomicU64::new(0),
                cooling_until: Mutex::new(None),
            }),
        );
    }
    let world_of = |name: &str| plugins[name].plugin.world();
    let mut ingest = HashMap::new();
    let mut deciding = HashMap::new();
    for (i, c) in config.collections.declared.iter().enumerate() {
        let at = |j: usize, key: &str| {
            if j == 0 {
                format!("collections.declared[{i}].{key}")
            } else {
                format!("collections.declared[{i}].upgrades[{}].{key}", j - 1)
            }
        };
        for name in &c.transforms_on_ingest {
            // The config checked that every name is a defined plugin.
            if world_of(name) != World::Transform {
                return Err(plugin_error(
                    config,
                    format!(
                        "collections.declared[{i}].transforms_on_ingest: plugin {name:?} is a resolver, not a transform"
                    ),
                ));
            }
        }
        let mut epochs = Vec::new();
        for (j, (from_ms, resolver, on_apply)) in c.epochs().enumerate() {
            for name in on_apply {
                if world_of(name) != World::Transform {
                    return Err(plugin_error(
                        config,
                        format!(
                            "{}: plugin {name:?} is a resolver, not a transform",
                            at(j, "transforms_on_apply")
                        ),
                    ));
                }
            }
            let resolver = (resolver != "lww").then(|| resolver.to_owned());
            if let Some(name) = &resolver
                && world_of(name) != World::Resolver
            {
                return Err(plugin_error(
                    config,
                    format!(
                        "{}: plugin {name:?} is a transform, not a resolver",
                        at(j, "resolver")
                    ),
                ));
            }
            epochs.push(Epoch {
                from_ms,
                resolver,
                on_apply: on_apply.to_vec(),
            });
        }
        if !c.transforms_on_ingest.is_empty() {
            ingest.insert(c.name.clone(), c.transforms_on_ingest.clone());
        }
        if epochs
            .iter()
            .any(|e| e.resolver.is_some() || !e.on_apply.is_empty())
        {
            deciding.insert(c.name.clone(), epochs);
        }
    }
    Ok(Wiring {
        plugins,
        ingest,
        deciding,
    })
}

fn summary_json(s: &edgerep_plugin::Summary) -> Json {
    json!({"count": s.count, "min": s.min, "p50": s.p50, "p99": s.p99, "max": s.max})
}

/// The rejection of `event` by the plugin `name` that failed on it.
fn rejection(name: &str, loaded: &Loaded, failure: Failure, event: &Event) -> Box<Rejection> {
    Box::new(Rejection {
        plugin: name.to_owned(),
        plugin_sha256: loaded.plugin.sha256().to_owned(),
        failure,
        policy: loaded.policy,
        event: event.encode(),
    })
}

fn change_to_write(c: Change) -> LocalWrite {
    LocalWrite {
        collection: c.collection,
        key: c.key,
        value: match c.op {
            Op::Put => c.value,
            Op::Delete => None,
        },
        schema: c.schema,
        meta: c.meta,
        context: None,
    }
}

/// Whether `config` gives `collection` the upgrade effective from `from_ms` (what a pause for a
/// peer's upgrade waits for).
pub(crate) fn has_upgrade(config: &Config, collection: &str, from_ms: u64) -> bool {
    config
        .collection(collection)
        .is_some_and(|c| c.upgrades.iter().any(|u| u.from_ms == from_ms))
}
