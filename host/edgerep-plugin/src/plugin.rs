//! A loaded [`Plugin`]: pre-instantiated, called with fresh or pooled instances under its limits.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use edgerep_wire::Event;
use wasmtime::{Engine, Store};

use crate::bindings::resolver::{Resolver, ResolverPre};
use crate::bindings::transform::{Transform, TransformPre};
use crate::failure::{Failure, FailureKind, Phase, classify};
use crate::limits::Limits;
use crate::metrics::{Metrics, MetricsSnapshot};
use crate::output::{Change, Resolution, check_changes, check_resolution, event_to_wit};
use crate::runtime::{HostState, Identity, PluginSource, Ticker, World, truncate};

/// Most idle instances kept per plugin for calls with `fresh = false`.
pub const POOL_MAX_IDLE: usize = 4;

/// The most data one call may hand to the host (wasmtime's "hostcall fuel": bytes of the host's
/// copies of strings and lists, counted before they are allocated): the output limit plus room
/// for the per-change overhead, so an oversized result is refused before the host copies it all.
/// Exceeding it is bad-output.
const HOSTCALL_DATA_MAX: usize =
    crate::output::MAX_OUTPUT_BYTES + crate::output::MAX_CHANGES * 1024;

/// Longest failure message kept from a guest, in bytes.
const MESSAGE_MAX_BYTES: usize = 4096;

/// A loaded plugin. Cheap to clone (the clones share instances and metrics), `Send` and `Sync`.
#[derive(Clone)]
pub struct Plugin {
    inner: Arc<Inner>,
}

struct Inner {
    identity: Arc<Identity>,
    path: PathBuf,
    sha256: String,
    world: World,
    limits: Limits,
    bound: Bound,
    engine: Engine,
    /// The deadline in epoch ticks.
    deadline_ticks: u64,
    /// Idle transform instances (at most [`POOL_MAX_IDLE`]).
    pool: Mutex<Vec<Live<Transform>>>,
    metrics: Metrics,
    /// Keeps the epoch ticker running while the plugin lives.
    _ticker: Arc<Ticker>,
}

/// The pre-instantiated component, typed by its world.
pub(crate) enum Bound {
    Transform(TransformPre<HostState>),
    Resolver(ResolverPre<HostState>),
}

/// An instance and the store it lives in.
struct Live<I> {
    store: Store<HostState>,
    instance: I,
    /// Fuel its instantiation used.
    fuel: u64,
}

/// A successful call's output, with what the conformance runner and benchmarks look at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallReport<T> {
    /// The checked (and canonicalized) output.
    pub output: T,
    /// Fuel the call used (not counting instantiation).
    pub fuel_used: u64,
    /// Whether every value the guest returned was already in deterministic encoding, byte for
    /// byte (the host canonicalizes values either way).
    pub canonical: bool,
}

impl Plugin {
    pub(crate) fn new(
        source: PluginSource,
        sha256: String,
        world: World,
        bound: Bound,
        engine: Engine,
        ticker: Arc<Ticker>,
    ) -> Plugin {
        // One more tick than the deadline holds, since the first tick may come at once; capped
        // far below u64::MAX because wasmtime adds it to the current epoch.
        let ticks = source
            .limits
            .deadline
            .as_micros()
            .div_ceil(Ticker::TICK.as_micros())
            + 1;
        let deadline_ticks = u64::try_from(ticks).unwrap_or(u64::MAX).min(1 << 62);
        Plugin {
            inner: Arc::new(Inner {
                identity: Arc::new(Identity::new(source.name, source.params)),
                path: source.path,
                sha256,
                world,
                limits: source.limits,
                bound,
                engine,
                deadline_ticks,
                pool: Mutex::new(Vec::new()),
                metrics: Metrics::new(),
                _ticker: ticker,
            }),
        }
    }

    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.inner.identity.name
    }

    /// The file the plugin was loaded from (for messages).
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// SHA-256 of the component, lowercase hex.
    pub fn sha256(&self) -> &str {
        &self.inner.sha256
    }

    /// The world the component implements.
    pub fn world(&self) -> World {
        self.inner.world
    }

    /// The budget of every call.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// Runs the transform on `event`.
    ///
    /// `fresh = true` uses a new instance, so the result and the fuel depend only on the input
    /// and parameters: use it for anything that must agree across nodes. `fresh = false` reuses
    /// an idle instance (faster; the guest may keep state between calls). An instance whose call
    /// failed in any way is discarded; a successful one returns to the pool if it has room.
    /// Fuel counts the call only; instantiating gets a budget of its own.
    ///
    /// A reused instance that traps or runs out of memory or fuel may do so because of what
    /// earlier calls left in it (a heap grown call after call): the call is run once more on a
    /// new instance, and that second result is the answer, so one event is not blamed for what
    /// others left behind. Both calls count in the metrics. ([`Plugin::transform_report`] makes
    /// one call, so the conformance runner sees what a reused instance does.)
    pub fn transform(&self, event: &Event, fresh: bool) -> Result<Vec<Change>, Failure> {
        let mut reused = false;
        let first = self.measured(|| {
            let (result, was_reused) = self.transform_once(event, fresh);
            reused = was_reused;
            result
        });
        let answer = match first {
            Err(failure) if reused && failure.kind.may_come_from_earlier_calls() => {
                tracing::warn!(
                    plugin = %self.inner.identity.name,
                    kind = failure.kind.as_str(),
                    "a reused instance failed; running the call again on a new one"
                );
                self.measured(|| self.transform_once(event, true).0)
            }
            answer => answer,
        };
        answer.map(|report| report.output)
    }

    /// [`Plugin::transform`], with the fuel the call used and whether the guest's values were
    /// already in deterministic encoding (for the conformance runner and benchmarks).
    pub fn transform_report(
        &self,
        event: &Event,
        fresh: bool,
    ) -> Result<CallReport<Vec<Change>>, Failure> {
        self.measured(|| self.transform_once(event, fresh).0)
    }

    /// Runs the resolver on the concurrent `versions` of `key` in `collection`, always in a
    /// fresh instance. The versions are passed in the order given: the caller sorts them
    /// canonically (by origin, then sequence number), as the WIT contract promises the guest.
    pub fn resolve(
        &self,
        collection: &str,
        key: &[u8],
        versions: &[impl AsRef<Event>],
    ) -> Result<Resolution, Failure> {
        self.measured(|| self.resolve_once(collection, key, versions))
            .map(|report| report.output)
    }

    /// [`Plugin::resolve`], with the report of [`Plugin::transform_report`].
    pub fn resolve_report(
        &self,
        collection: &str,
        key: &[u8],
        versions: &[impl AsRef<Event>],
    ) -> Result<CallReport<Resolution>, Failure> {
        self.measured(|| self.resolve_once(collection, key, versions))
    }

    /// Instantiates the plugin once, calling nothing, and returns the fuel instantiation used
    /// (the guest's start-up: a Go runtime's initialization, say). Failures are those of a call.
    pub fn instantiation_fuel(&self) -> Result<u64, Failure> {
        let fuel = match &self.inner.bound {
            Bound::Transform(pre) => self.instantiate(|store| pre.instantiate(store))?.fuel,
            Bound::Resolver(pre) => self.instantiate(|store| pre.instantiate(store))?.fuel,
        };
        Ok(fuel)
    }

    /// The plugin's metrics so far (all clones together).
    pub fn metrics(&self) -> MetricsSnapshot {
        self.inner.metrics.snapshot()
    }

    /// Runs one call and records it in the metrics.
    fn measured<T>(
        &self,
        call: impl FnOnce() -> Result<CallReport<T>, Failure>,
    ) -> Result<CallReport<T>, Failure> {
        let start = Instant::now();
        let result = call();
        let nanos = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        match result {
            Ok(report) => {
                self.inner.metrics.record(None, report.fuel_used, nanos);
                Ok(report)
            }
            Err(failure) => {
                self.inner
                    .metrics
                    .record(Some(failure.kind), failure.fuel_used, nanos);
                Err(failure)
            }
        }
    }

    /// One call, and whether it ran on a reused instance.
    fn transform_once(
        &self,
        event: &Event,
        fresh: bool,
    ) -> (Result<CallReport<Vec<Change>>, Failure>, bool) {
        let idle = if fresh { None } else { self.lock_pool().pop() };
        let reused = idle.is_some();
        (self.transform_in(event, idle), reused)
    }

    /// One call on `idle`, or on a new instance.
    fn transform_in(
        &self,
        event: &Event,
        idle: Option<Live<Transform>>,
    ) -> Result<CallReport<Vec<Change>>, Failure> {
        let Bound::Transform(pre) = &self.inner.bound else {
            return Err(self.wrong_world("transform"));
        };
        let mut live = match idle {
            Some(live) => live,
            None => self.instantiate(|store| pre.instantiate(store))?,
        };
        let input = event_to_wit(event);
        self.arm(&mut live.store);
        let outcome = live.instance.call_transform(&mut live.store, &input);
        let fuel_used = self.finish(&mut live.store);
        if let Some(failure) = self.over_budget(fuel_used) {
            return Err(failure);
        }
        let (changes, canonical) = match outcome {
            Err(error) => return Err(self.trapped(&live.store, &error, fuel_used, Phase::Call)),
            Ok(Err(message)) => return Err(failure(FailureKind::PluginError, &message, fuel_used)),
            Ok(Ok(changes)) => check_changes(changes, &self.inner.limits.events)
                .map_err(|error| failure(FailureKind::BadOutput, &error.to_string(), fuel_used))?,
        };
        if live.store.data_mut().reusable() {
            let mut pool = self.lock_pool();
            if pool.len() < POOL_MAX_IDLE {
                pool.push(live);
            }
        }
        Ok(CallReport {
            output: changes,
            fuel_used,
            canonical,
        })
    }

    fn resolve_once(
        &self,
        collection: &str,
        key: &[u8],
        versions: &[impl AsRef<Event>],
    ) -> Result<CallReport<Resolution>, Failure> {
        let Bound::Resolver(pre) = &self.inner.bound else {
            return Err(self.wrong_world("resolve"));
        };
        let mut live: Live<Resolver> = self.instantiate(|store| pre.instantiate(store))?;
        let input: Vec<_> = versions.iter().map(|v| event_to_wit(v.as_ref())).collect();
        self.arm(&mut live.store);
        let outcome = live
            .instance
            .call_resolve(&mut live.store, collection, key, &input);
        let fuel_used = self.finish(&mut live.store);
        if let Some(failure) = self.over_budget(fuel_used) {
            return Err(failure);
        }
        match outcome {
            Err(error) => Err(self.trapped(&live.store, &error, fuel_used, Phase::Call)),
            Ok(Err(message)) => Err(failure(FailureKind::PluginError, &message, fuel_used)),
            Ok(Ok(resolution)) => {
                check_resolution(resolution, versions.len(), &self.inner.limits.events.value)
                    .map(|(output, canonical)| CallReport {
                        output,
                        fuel_used,
                        canonical,
                    })
                    .map_err(|error| failure(FailureKind::BadOutput, &error.to_string(), fuel_used))
            }
        }
    }

    /// A new store and instance. Instantiation runs under the same limits as a call.
    fn instantiate<I>(
        &self,
        instantiate: impl FnOnce(&mut Store<HostState>) -> wasmtime::Result<I>,
    ) -> Result<Live<I>, Failure> {
        let inner = &self.inner;
        let mut store = Store::new(
            &inner.engine,
            HostState::new(inner.identity.clone(), inner.limits.memory_bytes),
        );
        store.limiter(|state| &mut state.limiter);
        store.set_hostcall_fuel(HOSTCALL_DATA_MAX);
        self.arm(&mut store);
        let instance = instantiate(&mut store);
        let fuel_used = self.finish(&mut store);
        if let Some(mut failure) = self.over_budget(fuel_used) {
            failure.message = format!("instantiating: {}", failure.message);
            return Err(failure);
        }
        match instance {
            Ok(instance) => Ok(Live {
                store,
                instance,
                fuel: fuel_used,
            }),
            Err(error) => {
                let mut failure = self.trapped(&store, &error, fuel_used, Phase::Instantiate);
                failure.message = format!("instantiating: {}", failure.message);
                Err(failure)
            }
        }
    }

    /// Gives the store a full budget for the next call or instantiation.
    fn arm(&self, store: &mut Store<HostState>) {
        store
            .set_fuel(self.inner.limits.fuel)
            .expect("the engine consumes fuel");
        store.set_epoch_deadline(self.inner.deadline_ticks);
        store.data_mut().begin_call(self.inner.limits.fuel);
    }

    /// Ends a call: reports suppressed log lines and returns the fuel used: the instructions
    /// wasmtime counted and the host's work for the plugin (a unit a byte logged, printed,
    /// read as a parameter or drawn at random), which
    /// wasmtime does not count, so that a call that asks the host for much work runs out of
    /// fuel, on every node alike, rather than into its deadline.
    fn finish(&self, store: &mut Store<HostState>) -> u64 {
        store.data_mut().end_call();
        let remaining = store.get_fuel().unwrap_or(0);
        let debt = store.data_mut().take_host_debt();
        self.inner
            .limits
            .fuel
            .saturating_sub(remaining)
            .saturating_add(debt)
    }

    /// The out-of-fuel failure of a call whose fuel, host work included, went past its budget
    /// (whatever else happened: it ran past the budget first, on every node).
    fn over_budget(&self, fuel_used: u64) -> Option<Failure> {
        (fuel_used > self.inner.limits.fuel).then(|| {
            failure(
                FailureKind::OutOfFuel,
                &format!(
                    "out of fuel: {fuel_used} used, over the budget of {}, counting the host's work for the plugin (a unit a byte handed to it)",
                    self.inner.limits.fuel
                ),
                fuel_used,
            )
        })
    }

    /// The failure for an error from wasmtime (a trap, a limit, a host error).
    fn trapped(
        &self,
        store: &Store<HostState>,
        error: &wasmtime::Error,
        fuel_used: u64,
        phase: Phase,
    ) -> Failure {
        let (kind, mut message) = classify(error, store.data().limiter.refused(), phase);
        // A trap: what the plugin said before it (a panic's message) goes on its first line.
        if kind == FailureKind::Trap
            && let Some(said) = store.data().said()
        {
            let (first, rest) = message.split_once('\n').unwrap_or((message.as_str(), ""));
            message = if rest.is_empty() {
                format!("{first} (the plugin said: {said})")
            } else {
                format!("{first} (the plugin said: {said})\n{rest}")
            };
        }
        let failure = failure(kind, &message, fuel_used);
        tracing::debug!(
            plugin = %self.name(),
            kind = kind.as_str(),
            fuel_used,
            memory_bytes = store.data().limiter.total(),
            // The backtrace names the plugin's own functions: its text, on one line.
            "plugin call failed: {}", edgerep_wire::text::one_line(&failure.message)
        );
        failure
    }

    fn wrong_world(&self, function: &str) -> Failure {
        let message = format!(
            "plugin {:?} implements the {} world and has no `{function}` function",
            self.name(),
            self.world().as_str()
        );
        failure(FailureKind::WrongWorld, &message, 0)
    }

    fn lock_pool(&self) -> std::sync::MutexGuard<'_, Vec<Live<Transform>>> {
        self.inner.pool.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The node shares plugins between threads.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Plugin>();
    send_sync::<crate::Runtime>();
};

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.name())
            .field("path", &self.path())
            .field("sha256", &self.sha256())
            .field("world", &self.world())
            .field("limits", self.limits())
            .finish_non_exhaustive()
    }
}

fn failure(kind: FailureKind, message: &str, fuel_used: u64) -> Failure {
    Failure {
        kind,
        message: truncate(message, MESSAGE_MAX_BYTES).into_owned(),
        fuel_used,
    }
}
