//! Soak: the standard-Go and the TinyGo builds of `passthrough` each handle 100 000 calls on
//! pooled instances (as ingest runs transforms) without a single failure, under a memory cap.
//!
//! Standard Go guests used to trap here after some thousands of calls ("cannot leave component
//! instance": a garbage collection starting inside `cabi_realloc` calls WASI imports); the Go
//! SDK's collector management (guest-sdk/go/internal/gc) is what makes this pass. Built with
//! `-tags edgerep_gc_unmanaged` (no management), the standard-Go build fails this test.

use std::time::Instant;

use edgerep_plugin::{Limits, PluginSource, Runtime};

use crate::common::{event, limits, toolchain_wasm_path};

/// Calls per build.
const CALLS: u64 = 100_000;

fn soak(runtime: &Runtime, toolchain: &str, limits: Limits) {
    let path = toolchain_wasm_path(toolchain, "passthrough");
    let plugin = runtime
        .load(PluginSource {
            name: format!("passthrough-{toolchain}"),
            wasm: std::fs::read(&path).unwrap(),
            path,
            expected_sha256: None,
            limits,
            params: Default::default(),
        })
        .unwrap();
    let start = Instant::now();
    for i in 0..CALLS {
        // Events of varying size, so the guest's heap sees varied allocations.
        let input = event(serde_json::json!({
            "collection": "orders",
            "key": format!("o-{i}"),
            "value": {"item": "x".repeat((i % 200) as usize), "qty": i, "tags": vec![i; (i % 17) as usize]},
            "meta": {"by": "soak", "n": i.to_string()},
        }));
        let changes = plugin
            .transform(&input, false)
            .unwrap_or_else(|f| panic!("{toolchain} passthrough, call {i} of {CALLS}: {f}"));
        assert_eq!(changes.len(), 1, "{toolchain} call {i}");
        if i % 9973 == 0 {
            assert_eq!(changes[0].key, input.key);
            assert_eq!(changes[0].value, input.value);
        }
    }
    let metrics = plugin.metrics();
    assert_eq!(metrics.calls, CALLS);
    assert!(metrics.errors.is_empty(), "{:?}", metrics.errors);
    println!(
        "{toolchain:<6} {CALLS} pooled calls in {:.1} s ({:.1} µs/call), fuel per call p50 {} p99 {} max {}",
        start.elapsed().as_secs_f64(),
        start.elapsed().as_secs_f64() * 1e6 / CALLS as f64,
        metrics.fuel_per_call.p50,
        metrics.fuel_per_call.p99,
        metrics.fuel_per_call.max,
    );
}

#[test]
fn go_builds_survive_100k_pooled_calls() {
    let runtime = Runtime::new(None).unwrap();
    // A 32 MiB cap: a guest whose heap grew without bound would fail with memory-limit.
    for toolchain in ["go", "tinygo"] {
        soak(&runtime, toolchain, limits(50_000_000, 32 << 20));
    }
}
