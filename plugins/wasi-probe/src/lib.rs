//! `wasi-probe` (for host tests), built for `wasm32-wasip2` so that it imports WASI: reads the
//! wall clock, the monotonic clock and the random source, and returns one change (the event's
//! collection, key, schema and meta) whose value is the map
//! `{"wall_ms": uint, "mono_ns": uint, "random_hex": text}`:
//! - `wall_ms`: `SystemTime::now()` in milliseconds since the Unix epoch (0 if before it);
//! - `mono_ns`: nanoseconds an `Instant` measured across a short loop;
//! - `random_hex`: 16 bytes from `getrandom`, as 32 lowercase hex digits (the first 16 of
//!   `random_bytes`, a param: 16 by default; more asks the host for that much work).
//!
//! With the param `random_draws` = N, the call first asks `wasi:random` for `random_bytes`
//! bytes N times in one call each (a hostile plugin's loop: a few instructions a mebibyte of
//! the host's work).
//!
//! With the param `handles_kept` = N, the call subscribes to the monotonic clock N times and
//! keeps every pollable it got, also across calls (a guest that leaks WASI handles).
//!
//! A host that answers WASI deterministically (fixed clocks, seeded random) gets the same output
//! from every call on a fresh instance.

use std::hint::black_box;
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use edgerep_guest::cbor::Value;
use edgerep_guest::{Change, Event, Transform, param_or};

/// The plugin.
pub struct WasiProbe;

/// The pollables `handles_kept` made, never dropped.
static KEPT: Mutex<Vec<wasip2::io::poll::Pollable>> = Mutex::new(Vec::new());

impl Transform for WasiProbe {
    fn transform(event: Event) -> Result<Vec<Change>, String> {
        let wall_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));

        let start = Instant::now();
        let mut x: u64 = 0;
        for i in 0..1000u64 {
            x = black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        let mono_ns = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);

        let n: usize = param_or("random_bytes", "16")
            .parse()
            .map_err(|e| format!("wasi-probe: param random_bytes: {e}"))?;
        let draws: u64 = param_or("random_draws", "0")
            .parse()
            .map_err(|e| format!("wasi-probe: param random_draws: {e}"))?;
        for _ in 0..draws {
            black_box(wasip2::random::random::get_random_bytes(n as u64));
        }
        let kept: usize = param_or("handles_kept", "0")
            .parse()
            .map_err(|e| format!("wasi-probe: param handles_kept: {e}"))?;
        let mut held = KEPT
            .lock()
            .map_err(|_| "wasi-probe: lock poisoned".to_owned())?;
        for _ in 0..kept {
            held.push(wasip2::clocks::monotonic_clock::subscribe_duration(0));
        }
        drop(held);
        let mut random = vec![0u8; n.max(16)];
        getrandom::fill(&mut random).map_err(|e| format!("wasi-probe: getrandom: {e}"))?;
        let random_hex: String = random[..16].iter().map(|b| format!("{b:02x}")).collect();

        let value: Value = [
            ("wall_ms", Value::from(wall_ms)),
            ("mono_ns", Value::from(mono_ns)),
            ("random_hex", Value::from(random_hex)),
        ]
        .into_iter()
        .collect();
        Ok(vec![Change::from_event(&event).with_value(&value)])
    }
}

edgerep_guest::export_transform!(WasiProbe);
