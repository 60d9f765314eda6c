//! What one plugin call may use: fuel (the deterministic budget), memory, and a wall-clock backstop.

use std::time::Duration;

use edgerep_wire::event::EventLimits;

use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};

/// The budget of every call to one plugin.
///
/// Fuel is what makes a call fail the same way on every node: a plugin that runs out of fuel does
/// so at the same instruction everywhere. The deadline is only a backstop against a stuck host or
/// an unexpectedly slow machine; it depends on the machine, so results that must agree across
/// nodes must never depend on it (size `fuel` so that it always runs out first).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Fuel (roughly, WebAssembly instructions) per call. Instantiating a fresh instance gets a
    /// budget of its own of the same size.
    pub fuel: u64,
    /// Most linear memory one instance may hold, in bytes, all its memories together, and its
    /// tables (8 bytes an element).
    pub memory_bytes: usize,
    /// Wall-clock backstop per call, checked about every millisecond.
    pub deadline: Duration,
    /// What a returned change or merged value must fit: the node's event limits (a change
    /// becomes an event every peer must decode).
    pub events: EventLimits,
}

impl Default for Limits {
    /// 100 million fuel (tens of milliseconds of work), 64 MiB of memory, a 1 s deadline, the
    /// default event limits.
    fn default() -> Limits {
        Limits {
            fuel: 100_000_000,
            memory_bytes: 64 << 20,
            deadline: Duration::from_secs(1),
            events: EventLimits::default(),
        }
    }
}

/// The error a refused memory grow becomes: the call fails at once, classified as memory-limit.
#[derive(Clone, Copy, Debug, thiserror::Error)]
#[error(
    "memory limit: growing {what} to {desired} bytes would hold {total} bytes in all, over the limit of {limit}"
)]
pub(crate) struct MemoryLimitHit {
    /// What grew: "linear memory" or "a table".
    what: &'static str,
    /// Size the guest asked for, of the memory that grew.
    desired: usize,
    /// What all memories of the instance would hold together.
    total: usize,
    /// The cap.
    limit: usize,
}

impl MemoryLimitHit {
    /// A refusal, for tests of the classification.
    #[cfg(test)]
    pub(crate) fn new(desired: usize, total: usize, limit: usize) -> MemoryLimitHit {
        MemoryLimitHit {
            what: "linear memory",
            desired,
            total,
            limit,
        }
    }
}

/// The store's [`ResourceLimiter`]: wasmtime's [`StoreLimits`] (per-memory cap, trap on a
/// refused grow) plus a cap on the total of all memories, and a record that a grow was refused.
///
/// The record matters for guests that handle a failed grow themselves (a refused `memory.grow`
/// returns -1 to the guest when the limiter answers `Ok(false)`): their own abort afterwards is a
/// trap like any other, and the record turns it into memory-limit.
pub(crate) struct MemoryLimiter {
    /// wasmtime's limits, built with `trap_on_grow_failure(true)`.
    inner: StoreLimits,
    /// The cap on all memories together.
    limit: usize,
    /// Bytes held by all memories of the store.
    total: usize,
    /// Bytes added by the last approved grow, taken back if wasmtime then fails to grow.
    last_grow: usize,
    /// Set when a grow was refused during the current call.
    refused: Option<MemoryLimitHit>,
}

impl MemoryLimiter {
    /// Memories allowed per store: a component has one per core instance that defines one.
    const MEMORIES: usize = 16;
    /// Tables allowed per store.
    const TABLES: usize = 64;
    /// Elements allowed per table.
    const TABLE_ELEMENTS: usize = 1_000_000;
    /// Bytes a table element is counted as (a reference: one pointer).
    const TABLE_ELEMENT_BYTES: usize = 8;
    /// Core instances allowed per store (a component is a handful of core instances).
    const INSTANCES: usize = 64;

    /// A limiter capping all memories of one store at `limit` bytes.
    pub(crate) fn new(limit: usize) -> MemoryLimiter {
        MemoryLimiter {
            inner: StoreLimitsBuilder::new()
                .memory_size(limit)
                .table_elements(Self::TABLE_ELEMENTS)
                .tables(Self::TABLES)
                .memories(Self::MEMORIES)
                .instances(Self::INSTANCES)
                .trap_on_grow_failure(true)
                .build(),
            limit,
            total: 0,
            last_grow: 0,
            refused: None,
        }
    }

    /// Forgets a refusal from an earlier call (the instance that saw it was discarded anyway).
    pub(crate) fn begin_call(&mut self) {
        self.refused = None;
    }

    /// The refusal during this call, if any.
    pub(crate) fn refused(&self) -> Option<&MemoryLimitHit> {
        self.refused.as_ref()
    }

    /// Bytes held by all memories and tables of the store.
    pub(crate) fn total(&self) -> usize {
        self.total
    }
}

impl MemoryLimiter {
    /// One grow of `what` adding `added` bytes (to `desired_bytes`) against the cap on all
    /// memories and tables together; `inner` is wasmtime's own check of it, asked only when
    /// the cap allows. Refused: the call fails at once, and the refusal is recorded.
    fn grow(
        &mut self,
        what: &'static str,
        added: usize,
        desired_bytes: usize,
        inner: impl FnOnce(&mut StoreLimits) -> wasmtime::Result<bool>,
    ) -> wasmtime::Result<bool> {
        let total = self.total.saturating_add(added);
        // `trap_on_grow_failure(true)` makes StoreLimits answer with an error, never `false`;
        // both mean the same here.
        if total <= self.limit && matches!(inner(&mut self.inner), Ok(true)) {
            self.last_grow = added;
            self.total = total;
            return Ok(true);
        }
        let hit = MemoryLimitHit {
            what,
            desired: desired_bytes,
            total,
            limit: self.limit,
        };
        self.refused = Some(hit);
        Err(wasmtime::Error::new(hit))
    }

    /// What a grow of `what` that wasmtime failed with `error` becomes: the plugin's doing when
    /// it failed before the limiter was asked (the total stands), else this machine's (the
    /// grow approved last is taken back from the total).
    fn grow_failed(&mut self, what: &'static str, error: wasmtime::Error) -> wasmtime::Error {
        let reason = format!("{error:#}");
        if failed_before_asking(&error) {
            return wasmtime::Error::new(GrowImpossible { what, reason });
        }
        self.total -= std::mem::take(&mut self.last_grow);
        wasmtime::Error::new(HostGrowFailed { what, reason })
    }
}

/// A grow of a memory or table that the cap allowed but this machine could not make (the OS
/// refused the memory): a failure of the machine, not of the plugin, and maybe of this node
/// alone ([`crate::FailureKind::HostOutOfMemory`]).
#[derive(Debug)]
pub(crate) struct HostGrowFailed {
    what: &'static str,
    reason: String,
}

impl std::fmt::Display for HostGrowFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "this machine could not grow {} within the plugin's cap: {}",
            self.what, self.reason
        )
    }
}

impl std::error::Error for HostGrowFailed {}

/// A grow the plugin's own module makes impossible, which wasmtime fails before asking the
/// limiter: a table whose new size overflows (a 64-bit table: memory64 is among wasmtime 48's
/// default features), or a memory past what its page size lets it address. The plugin's doing, the same on every node: memory-limit, not this
/// machine's failure (which would halt a collection on every node alike, for good).
#[derive(Debug)]
pub(crate) struct GrowImpossible {
    what: &'static str,
    reason: String,
}

impl std::fmt::Display for GrowImpossible {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "memory limit: the plugin asked to grow {} past what its type allows: {}",
            self.what, self.reason
        )
    }
}

impl std::error::Error for GrowImpossible {}

/// Whether wasmtime's grow failure `error` came before it asked the limiter (the grow was
/// impossible by the memory's or table's type): the messages of wasmtime 48's `Memory::grow`
/// and `Table::grow` (pinned; `grows_past_what_a_type_allows_are_the_plugins_doing` runs them).
fn failed_before_asking(error: &wasmtime::Error) -> bool {
    let text = error.to_string();
    text.contains("memory growth exceeds memory type's limits")
        || text.contains("overflow calculating new table size")
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.grow(
            "linear memory",
            desired.saturating_sub(current),
            desired,
            |inner| inner.memory_growing(current, desired, maximum),
        )
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        let error = self.grow_failed("a linear memory", error);
        self.inner.memory_grow_failed(error)
    }

    /// Tables count against the same cap as memories, at [`Self::TABLE_ELEMENT_BYTES`] an
    /// element: a component may declare tables as large as it likes, and fill them for little
    /// fuel.
    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.grow(
            "a table",
            desired
                .saturating_sub(current)
                .saturating_mul(Self::TABLE_ELEMENT_BYTES),
            desired.saturating_mul(Self::TABLE_ELEMENT_BYTES),
            |inner| inner.table_growing(current, desired, maximum),
        )
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        let error = self.grow_failed("a table", error);
        self.inner.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_is_on_all_memories_together() {
        let mut limiter = MemoryLimiter::new(100 << 16);
        assert!(limiter.memory_growing(0, 60 << 16, None).unwrap());
        assert!(limiter.memory_growing(0, 30 << 16, None).unwrap());
        assert_eq!(limiter.total(), 90 << 16);
        assert!(limiter.refused().is_none());
        let error = limiter
            .memory_growing(30 << 16, 50 << 16, None)
            .unwrap_err();
        assert!(error.downcast_ref::<MemoryLimitHit>().is_some());
        assert!(limiter.refused().is_some());
        assert_eq!(limiter.total(), 90 << 16);
        limiter.begin_call();
        assert!(limiter.refused().is_none());

        // A grow wasmtime then fails to make is taken back.
        assert!(limiter.memory_growing(30 << 16, 35 << 16, None).unwrap());
        assert_eq!(limiter.total(), 95 << 16);
        let error = limiter
            .memory_grow_failed(wasmtime::Error::msg("mmap failed"))
            .unwrap_err();
        assert_eq!(limiter.total(), 90 << 16);
        // Classified as this machine's failure (a plugin's bad output, before: a failure every
        // node would share, though the OS may refuse the memory on one node only).
        let (kind, message) = crate::failure::classify(&error, None, crate::failure::Phase::Call);
        assert_eq!(kind, crate::FailureKind::HostOutOfMemory);
        assert!(kind.depends_on_machine());
        assert!(message.contains("mmap failed"), "{message}");

        // A memory's own declared maximum counts as the limit too.
        assert!(limiter.memory_growing(0, 2 << 16, Some(1 << 16)).is_err());
    }

    /// Grows a module's own types make impossible fail in wasmtime before the limiter is asked:
    /// the plugin's doing (memory-limit), not this machine's, and the total stands. Run through
    /// wasmtime itself, so that a wasmtime whose messages changed fails here.
    #[test]
    fn grows_past_what_a_type_allows_are_the_plugins_doing() {
        // wasmtime's default features, as the runtime's engine has them (64-bit tables
        // included: memory64 is on by default in wasmtime 48).
        let engine = wasmtime::Engine::new(&wasmtime::Config::new()).unwrap();
        let run = |wat: &str| {
            let module = wasmtime::Module::new(&engine, wat::parse_str(wat).unwrap()).unwrap();
            let mut store = wasmtime::Store::new(&engine, MemoryLimiter::new(1 << 24));
            store.limiter(|l| l);
            let instance = wasmtime::Instance::new(&mut store, &module, &[]).unwrap();
            let total = store.data().total();
            let f = instance.get_typed_func::<(), ()>(&mut store, "f").unwrap();
            let error = f.call(&mut store, ()).unwrap_err();
            assert_eq!(store.data().total(), total, "{wat}");
            crate::failure::classify(&error, None, crate::failure::Phase::Call)
        };
        // A 64-bit table whose new size overflows (a host-out-of-memory failure before, which
        // halted a collection on every node alike).
        let (kind, message) = run(r#"(module (table i64 1 funcref)
                 (func (export "f") (drop (table.grow (ref.null func) (i64.const -1)))))"#);
        assert_eq!(kind, crate::FailureKind::MemoryLimit, "{message}");
        assert!(!kind.depends_on_machine());
        assert!(message.contains("past what its type allows"), "{message}");
        // A 32-bit memory grown past 4 GiB, and past the cap: the cap refuses them first.
        for pages in ["0x10000", "1000"] {
            let (kind, message) = run(&format!(
                r#"(module (memory 1) (func (export "f") (drop (memory.grow (i32.const {pages})))))"#
            ));
            assert_eq!(kind, crate::FailureKind::MemoryLimit, "{message}");
        }
    }

    /// Tables count against the cap: a component's 64 tables of a million elements each were
    /// allowed whatever `memory_bytes` said (512 MiB of references).
    #[test]
    fn tables_count_against_the_cap() {
        let mut limiter = MemoryLimiter::new(1 << 20);
        assert!(limiter.memory_growing(0, 1 << 19, None).unwrap());
        assert!(limiter.table_growing(0, 50_000, None).unwrap());
        assert_eq!(limiter.total(), (1 << 19) + 400_000);
        let error = limiter.table_growing(50_000, 100_000, None).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("growing a table to 800000 bytes"),
            "{error}"
        );
        assert!(limiter.refused().is_some());
        assert_eq!(limiter.total(), (1 << 19) + 400_000);
    }
}
