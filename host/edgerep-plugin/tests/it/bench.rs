//! Per-call cost of trivial transforms on reused instances. Prints; asserts only loosely (debug
//! builds are slow). For real numbers:
//! `cargo test --release -p edgerep-plugin --test it bench -- --nocapture`.

use std::time::Instant;

use edgerep_plugin::Runtime;

use crate::common::{limits, load, order, source, toolchain_wasm_path};

/// The cheapest possible transform, hand-written: it reads nothing and returns `ok([])`. Its
/// per-call cost is the host's and wasmtime's share (handing the event over, calling, checking).
const TRIVIAL: &str = r#"
(component
  (type $op (enum "put" "delete"))
  (export $op-e "op" (type $op))
  (type $hlc (record (field "physical-ms" u64) (field "logical" u32)))
  (export $hlc-e "hlc" (type $hlc))
  (type $dot (record (field "origin" string) (field "seq" u64)))
  (export $dot-e "dot" (type $dot))
  (type $event (record
     (field "collection" string) (field "key" (list u8)) (field "op" $op-e)
     (field "value" (option (list u8))) (field "hlc" $hlc-e) (field "origin" string)
     (field "seq" u64) (field "schema" u32) (field "meta" (list (tuple string string)))
     (field "context" (list $dot-e))))
  (export $event-e "event" (type $event))
  (type $change (record (field "collection" string) (field "key" (list u8)) (field "op" $op-e)
     (field "value" (option (list u8))) (field "schema" u32) (field "meta" (list (tuple string string)))))
  (export $change-e "change" (type $change))
  (core module $m
    (memory (export "memory") 1)
    (global $bump (mut i32) (i32.const 1024))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $p i32)
      (local.set $p (i32.and
        (i32.add (global.get $bump) (i32.sub (local.get 2) (i32.const 1)))
        (i32.sub (i32.const 0) (local.get 2))))
      (global.set $bump (i32.add (local.get $p) (local.get 3)))
      (local.get $p))
    (func (export "transform") (param i32) (result i32)
      (global.set $bump (i32.const 1024))
      (i32.store8 (i32.const 16) (i32.const 0))
      (i32.store (i32.const 20) (i32.const 0))
      (i32.store (i32.const 24) (i32.const 0))
      (i32.const 16)))
  (core instance $i (instantiate $m))
  (func (export "transform") (param "event" $event-e) (result (result (list $change-e) (error string)))
    (canon lift (core func $i "transform") (memory (core memory $i "memory")) (realloc (core func $i "realloc"))))
)
"#;

#[test]
fn bench_per_call_cost() {
    let runtime = Runtime::new(None).unwrap();
    let input = order("o-1");

    let mut trivial = source("passthrough", limits(10_000_000, 16 << 20), &[]);
    trivial.name = "trivial".into();
    trivial.wasm = wat::parse_str(TRIVIAL).unwrap();
    let p = runtime.load(trivial).unwrap();
    assert_eq!(p.transform(&input, true).unwrap(), []);
    let calls = if cfg!(debug_assertions) {
        5_000
    } else {
        100_000
    };
    let start = Instant::now();
    for _ in 0..calls {
        p.transform(&input, false).unwrap();
    }
    println!(
        "trivial (host and wasmtime only): reused instance {:.2} µs/call, fuel/call {}",
        start.elapsed().as_nanos() as f64 / calls as f64 / 1000.0,
        p.metrics().fuel_per_call.max,
    );

    for (plugin, params) in [
        ("passthrough", &[][..]),
        ("redact", &[("remove", "card"), ("mask", "email")][..]),
    ] {
        let p = load(&runtime, plugin, limits(10_000_000, 16 << 20), params);
        for _ in 0..1_000 {
            p.transform(&input, false).unwrap();
        }
        let calls = if cfg!(debug_assertions) {
            5_000
        } else {
            50_000
        };
        let start = Instant::now();
        for _ in 0..calls {
            p.transform(&input, false).unwrap();
        }
        let pooled_ns = start.elapsed().as_nanos() / calls;
        let fuel = p.metrics().fuel_per_call;

        let fresh_calls = calls / 10;
        let start = Instant::now();
        for _ in 0..fresh_calls {
            p.transform(&input, true).unwrap();
        }
        let fresh_ns = start.elapsed().as_nanos() / fresh_calls;
        println!(
            "{plugin}: reused instance {:.2} µs/call, fresh instance {:.2} µs/call, fuel/call p50 {} (min {}, max {}), {}",
            pooled_ns as f64 / 1000.0,
            fresh_ns as f64 / 1000.0,
            fuel.p50,
            fuel.min,
            fuel.max,
            if cfg!(debug_assertions) {
                "debug build"
            } else {
                "release build"
            },
        );
        assert!(pooled_ns < 1_000_000, "{plugin}: {pooled_ns} ns per call");
    }
}

/// The same plugins built with each toolchain, side by side: component size, instantiation
/// (fuel and time), and per call on reused instances (fuel and time).
#[test]
fn bench_toolchains_side_by_side() {
    let runtime = Runtime::new(None).unwrap();
    let input = order("o-1");
    let calls: u32 = if cfg!(debug_assertions) {
        2_000
    } else {
        20_000
    };
    println!(
        "{:<12} {:<7} {:>10} {:>12} {:>12} {:>10} {:>10}   ({})",
        "plugin",
        "build",
        "bytes",
        "inst. fuel",
        "inst. µs",
        "fuel/call",
        "µs/call",
        if cfg!(debug_assertions) {
            "debug build"
        } else {
            "release build"
        }
    );
    for (plugin, params) in [
        ("passthrough", &[][..]),
        ("redact", &[("remove", "card"), ("mask", "email")][..]),
    ] {
        for toolchain in ["rust", "tinygo", "go"] {
            let path = toolchain_wasm_path(toolchain, plugin);
            let mut source = source(plugin, limits(100_000_000, 64 << 20), params);
            source.wasm = std::fs::read(&path).unwrap();
            source.path = path;
            let size = source.wasm.len();
            let p = runtime.load(source).unwrap();
            let inst_fuel = p.instantiation_fuel().unwrap();
            let start = Instant::now();
            for _ in 0..20 {
                p.instantiation_fuel().unwrap();
            }
            let inst_us = start.elapsed().as_secs_f64() * 1e6 / 20.0;
            let first = p.transform(&input, false).unwrap();
            for _ in 0..200 {
                assert_eq!(p.transform(&input, false).unwrap(), first);
            }
            let start = Instant::now();
            for _ in 0..calls {
                p.transform(&input, false).unwrap();
            }
            let call_us = start.elapsed().as_secs_f64() * 1e6 / f64::from(calls);
            println!(
                "{plugin:<12} {toolchain:<7} {size:>10} {inst_fuel:>12} {inst_us:>12.0} {:>10} {call_us:>10.2}",
                p.metrics().fuel_per_call.p50,
            );
        }
    }
}
