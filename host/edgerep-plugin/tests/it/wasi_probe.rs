//! A plugin that imports WASI gets deterministic answers: fixed wall clock, virtual monotonic
//! clock, seeded randomness; the same on every call of a fresh instance and on every runtime.

use edgerep_plugin::json::change_to_json;
use edgerep_plugin::{Runtime, wasi};

use crate::common::{fails_alike, limits, load, order};

fn probe(runtime: &Runtime, fresh: bool) -> (Vec<u8>, serde_json::Value) {
    let p = load(runtime, "wasi-probe", limits(100_000_000, 32 << 20), &[]);
    let changes = p.transform(&order("o-1"), fresh).unwrap();
    assert_eq!(changes.len(), 1);
    let value = changes[0].value.clone().expect("a put");
    (
        value.as_bytes().to_vec(),
        change_to_json(&changes[0])["value"].clone(),
    )
}

#[test]
fn wasi_answers_are_deterministic() {
    let first_runtime = Runtime::new(None).unwrap();
    let second_runtime = Runtime::new(None).unwrap();
    let (a, json) = probe(&first_runtime, true);
    let (b, _) = probe(&first_runtime, true);
    let (c, _) = probe(&second_runtime, true);
    assert_eq!(a, b, "two fresh calls differ");
    assert_eq!(a, c, "two runtimes differ");

    assert_eq!(json["wall_ms"], wasi::WALL_CLOCK_SECS * 1000, "{json}");
    let mono_ns = json["mono_ns"].as_u64().expect("mono_ns");
    assert_eq!(mono_ns % wasi::MONOTONIC_STEP_NS, 0, "{json}");
    let random = json["random_hex"].as_str().expect("random_hex");
    assert_eq!(random.len(), 32);
    assert_ne!(random, "0".repeat(32));

    // Reused instances keep drawing from the same seeded stream, so they agree across runtimes too.
    let p1 = load(
        &first_runtime,
        "wasi-probe",
        limits(100_000_000, 32 << 20),
        &[],
    );
    let p2 = load(
        &second_runtime,
        "wasi-probe",
        limits(100_000_000, 32 << 20),
        &[],
    );
    for _ in 0..3 {
        assert_eq!(
            p1.transform(&order("o-1"), false).unwrap(),
            p2.transform(&order("o-1"), false).unwrap()
        );
    }
}

/// The host's work for a plugin costs fuel: a unit a random byte drawn. wasmtime charges only
/// instructions, so a plugin asking the host for 1 MiB of randomness a call for a handful of
/// instructions ran on host time, towards its deadline (a wall-clock outcome that differs
/// between nodes), whatever its fuel. Now such a call is out of fuel, on every node alike.
#[test]
fn host_work_for_the_plugin_costs_fuel() {
    let runtime = Runtime::new(None).unwrap();
    let small = load(
        &runtime,
        "wasi-probe",
        limits(100_000_000, 32 << 20),
        &[("random_bytes", "16")],
    );
    let cheap = small.transform_report(&order("o-1"), true).unwrap();
    let big = load(
        &runtime,
        "wasi-probe",
        limits(100_000_000, 32 << 20),
        &[("random_bytes", "1048576")],
    );
    let dear = big.transform_report(&order("o-1"), true).unwrap();
    assert!(
        dear.fuel_used >= cheap.fuel_used + (1 << 20) - 16,
        "1 MiB of randomness cost {} fuel, 16 bytes {}",
        dear.fuel_used,
        cheap.fuel_used
    );
    // A budget the call's own instructions fit in (what it used less the 1 MiB of host work),
    // with half a MiB to spare, but not the host's work.
    let budget = dear.fuel_used - (1 << 20) + (1 << 19);
    let tight = load(
        &runtime,
        "wasi-probe",
        limits(budget, 32 << 20),
        &[("random_bytes", "1048576")],
    );
    let failure = tight.transform(&order("o-1"), true).unwrap_err();
    assert_eq!(
        failure.kind,
        edgerep_plugin::FailureKind::OutOfFuel,
        "{failure:?}"
    );
    assert!(failure.message.contains("host's work"), "{failure:?}");
}

/// A loop of random draws stops on its fuel. Each draw of 1 MiB is a few instructions of the
/// plugin's and a mebibyte of the host's work; a draw could not fail, so the work was charged
/// only when the call ended and such a loop ran into its deadline (here a minute), an outcome
/// that depends on the machine. Now the draw past the budget traps, out of fuel, with the
/// same fuel every time.
#[test]
fn a_loop_of_random_draws_runs_out_of_fuel_not_into_its_deadline() {
    let runtime = Runtime::new(None).unwrap();
    let looping = load(
        &runtime,
        "wasi-probe",
        limits(64 << 20, 32 << 20),
        &[("random_bytes", "1048576"), ("random_draws", "1000000000")],
    );
    let started = std::time::Instant::now();
    let failure = fails_alike(&looping, edgerep_plugin::FailureKind::OutOfFuel);
    assert!(failure.message.contains("host's work"), "{failure:?}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "three calls took {:?}: they ran into the deadline",
        started.elapsed()
    );
}

/// WASI handles a guest keeps take host memory its cap does not count: a guest keeping every
/// pollable it got grew its instance's table toward wasmtime's bound of a million (over
/// 100 MB), and on a reused instance the call that found it full failed for what earlier calls
/// left there. Now an instance holds at most 4096 handles (a call that keeps more fails, its
/// own doing, on a new instance too), and one that keeps more than 64 is not reused.
#[test]
fn handles_a_guest_keeps_are_bounded_and_not_carried_to_the_next_call() {
    let runtime = Runtime::new(None).unwrap();
    let greedy = load(
        &runtime,
        "wasi-probe",
        limits(100_000_000, 32 << 20),
        &[("handles_kept", "5000")],
    );
    let failure = greedy.transform(&order("o-1"), true).unwrap_err();
    assert_eq!(
        failure.kind,
        edgerep_plugin::FailureKind::MemoryLimit,
        "{failure}"
    );
    assert!(failure.message.contains("WASI handles"), "{failure}");
    // 1500 subscriptions a call (two handles each) fit an instance once, not twice: each call
    // must start on an instance that holds none of them.
    let leaky = load(
        &runtime,
        "wasi-probe",
        limits(100_000_000, 32 << 20),
        &[("handles_kept", "1500")],
    );
    for i in 0..5 {
        leaky
            .transform(&order("o-1"), false)
            .unwrap_or_else(|f| panic!("call {i}: {f}"));
    }
    assert!(
        leaky.metrics().errors.is_empty(),
        "a call failed first on a reused instance: {:?}",
        leaky.metrics().errors
    );
}
