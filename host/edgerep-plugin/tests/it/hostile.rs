//! Hostile plugins fail with the right kind, and the plugin keeps working afterwards: a failed
//! instance is discarded and the next call gets a fresh one.

use std::time::{Duration, Instant};

use edgerep_plugin::{FailureKind, Limits, PluginSource, Runtime};
use edgerep_wire::{DecodeLimits, Value};

use crate::common::{event, fails_alike, limits, load, order, toolchain_wasm_path};

/// Calls `plugin` twice on pooled instances (`fresh = false`) and once on a fresh one; every call
/// must fail with `kind` and the same fuel. A broken instance that was reused would fail
/// differently ("cannot enter component instance", a trap).
fn fails_every_time(runtime: &Runtime, plugin: &str, limits: Limits, kind: FailureKind) -> u64 {
    let p = load(runtime, plugin, limits, &[]);
    let fuel = fails_alike(&p, kind).fuel_used;
    let metrics = p.metrics();
    assert_eq!(metrics.calls, 3);
    assert_eq!(metrics.errors.get(kind.as_str()), Some(&3));
    fuel
}

#[test]
fn spin_runs_out_of_fuel() {
    let runtime = Runtime::new(None).unwrap();
    let fuel = fails_every_time(
        &runtime,
        "spin",
        limits(10_000_000, 16 << 20),
        FailureKind::OutOfFuel,
    );
    assert_eq!(fuel, 10_000_000, "out of fuel uses the whole budget");
}

#[test]
fn spin_hits_the_deadline_with_fuel_to_spare() {
    let runtime = Runtime::new(None).unwrap();
    let p = load(
        &runtime,
        "spin",
        Limits {
            fuel: u64::MAX / 2,
            memory_bytes: 16 << 20,
            deadline: Duration::from_millis(50),
            ..Limits::default()
        },
        &[],
    );
    for fresh in [false, true] {
        let start = Instant::now();
        let failure = p.transform(&order("o-1"), fresh).unwrap_err();
        let elapsed = start.elapsed();
        assert_eq!(failure.kind, FailureKind::Deadline, "{failure}");
        assert!(
            elapsed >= Duration::from_millis(50),
            "stopped early: {elapsed:?}"
        );
        assert!(
            elapsed < Duration::from_secs(5),
            "stopped late: {elapsed:?}"
        );
        assert!(failure.fuel_used > 0);
    }
}

#[test]
fn balloon_hits_the_memory_limit() {
    let runtime = Runtime::new(None).unwrap();
    fails_every_time(
        &runtime,
        "balloon",
        limits(1_000_000_000, 16 << 20),
        FailureKind::MemoryLimit,
    );
}

/// A panic's message reaches the failure, from every toolchain: the Rust SDK and standard Go
/// log it (error level) before the trap; TinyGo, which cannot recover a panic, prints it to its
/// stdout before aborting.
#[test]
fn a_panics_message_is_in_the_failure_on_every_toolchain() {
    let runtime = Runtime::new(None).unwrap();
    for toolchain in ["rust", "tinygo", "go"] {
        let path = toolchain_wasm_path(toolchain, "trap");
        let p = runtime
            .load(PluginSource {
                name: "trap".into(),
                wasm: std::fs::read(&path).unwrap(),
                path,
                expected_sha256: None,
                limits: limits(100_000_000, 64 << 20),
                params: Default::default(),
            })
            .unwrap();
        for key in ["o-1", "o-2"] {
            let failure = p.transform(&order(key), false).unwrap_err();
            assert_eq!(failure.kind, FailureKind::Trap, "{toolchain}: {failure}");
            // On the failure's first line, after the trap.
            let first = failure.message.lines().next().unwrap_or("");
            let said = first
                .split_once("(the plugin said: ")
                .map_or("", |(_, s)| s);
            assert!(
                said.contains("trap plugin: deliberate panic on key") && said.contains(key),
                "{toolchain}: {}",
                failure.message
            );
        }
    }
}

#[test]
fn trap_traps() {
    let runtime = Runtime::new(None).unwrap();
    let p = load(&runtime, "trap", limits(10_000_000, 16 << 20), &[]);
    let failure = p.transform(&order("o-1"), false).unwrap_err();
    assert_eq!(failure.kind, FailureKind::Trap);
    assert!(
        failure.message.contains("unreachable"),
        "{}",
        failure.message
    );
    fails_every_time(
        &runtime,
        "trap",
        limits(10_000_000, 16 << 20),
        FailureKind::Trap,
    );
}

/// chatter logs a mebibyte of text in a loop: a few instructions a call of the plugin's, a
/// mebibyte copied and checked by the host. The host's work is charged as fuel (a unit a byte),
/// so the call runs out of fuel, with the same fuel every time, long before its deadline (one
/// minute here: uncharged, it ran until then).
#[test]
fn a_plugin_that_makes_the_host_work_runs_out_of_fuel() {
    let runtime = Runtime::new(None).unwrap();
    let fuel = fails_every_time(
        &runtime,
        "chatter",
        limits(50_000_000, 16 << 20),
        FailureKind::OutOfFuel,
    );
    assert!(fuel > 50_000_000, "{fuel}");
}

/// flood returns 200 000 changes of 1 KiB (about 210 MB). Under a cap smaller than that it
/// cannot even build them: memory-limit (the vectors' case, and what the default 64 MiB cap
/// gives). With room to build them, the host refuses the result: bad-output, because it is over
/// the 64 MiB output limit. wasmtime notices while copying the result out (the store's hostcall
/// data budget, 64 MiB plus 10 000 KiB of per-change room, runs out), so the host never holds
/// more than that budget of it.
#[test]
fn flood_is_memory_limit_or_bad_output() {
    let runtime = Runtime::new(None).unwrap();
    fails_every_time(
        &runtime,
        "flood",
        limits(1_000_000_000, 16 << 20),
        FailureKind::MemoryLimit,
    );
    let p = load(&runtime, "flood", limits(20_000_000_000, 1 << 30), &[]);
    let failure = p.transform(&order("o-1"), true).unwrap_err();
    assert_eq!(failure.kind, FailureKind::BadOutput, "{failure}");
    assert!(
        failure
            .message
            .starts_with("the host refused data from the plugin"),
        "{failure}"
    );
}

/// A good plugin whose call fails (here: an input too large for its memory cap, refused while
/// the host copies it in) keeps working: the broken instance is discarded.
#[test]
fn a_good_plugin_recovers_after_a_failure() {
    let runtime = Runtime::new(None).unwrap();
    let p = load(&runtime, "passthrough", limits(100_000_000, 4 << 20), &[]);
    // 5 MiB of value: over the 1 MiB an event may carry, so built past edgerep-wire's defaults.
    let mut huge = event(serde_json::json!({"collection": "c", "key": "k", "value": 1}));
    let wide = DecodeLimits {
        max_bytes: 8 << 20,
        ..DecodeLimits::default()
    };
    huge.value = Some(Value::from_json(&serde_json::json!("x".repeat(5 << 20)), &wide).unwrap());
    for fresh in [false, true] {
        let failure = p.transform(&huge, fresh).unwrap_err();
        assert_eq!(failure.kind, FailureKind::MemoryLimit, "{failure}");
        let changes = p.transform(&order("o-2"), fresh).unwrap();
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].key, b"o-2");
    }
    let metrics = p.metrics();
    assert_eq!(metrics.calls, 4);
    assert_eq!(metrics.errors.get("memory-limit"), Some(&2));
}

/// A plugin that keeps memory call after call fills a reused instance; the call that finds it
/// full is run again on a new instance, so no event is refused for what earlier calls left.
/// A fault on a new instance is not run again.
#[test]
fn a_reused_instance_that_faults_is_not_the_events_fault() {
    let runtime = Runtime::new(None).unwrap();
    // Room for a few 512 KiB blocks past what the guest starts with.
    let p = load(&runtime, "leak", limits(1_000_000_000, 4 << 20), &[]);
    for i in 0..24 {
        let key = format!("o-{i}");
        let changes = p
            .transform(&order(&key), false)
            .unwrap_or_else(|e| panic!("call {i} on a reused instance: {e}"));
        assert_eq!(changes[0].key, key.as_bytes());
    }
    let metrics = p.metrics();
    let faults = metrics.errors.get("memory-limit").copied().unwrap_or(0);
    // The instance filled up at least once (else this test shows nothing), and each time the
    // call ran once more: 24 answers.
    assert!(faults >= 2, "{metrics:?}");
    assert_eq!(metrics.calls, 24 + faults, "{metrics:?}");

    // A fault on a new instance (the pool is empty after a failure) is the event's: not run
    // again.
    let trap = load(&runtime, "trap", limits(1_000_000_000, 16 << 20), &[]);
    let failure = trap.transform(&order("o-1"), false).unwrap_err();
    assert_eq!(failure.kind, FailureKind::Trap);
    assert_eq!(
        trap.metrics().calls,
        1,
        "a new instance's fault is not run again"
    );
}
