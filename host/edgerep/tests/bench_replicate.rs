//! Smoke test of `edgerep bench replicate`: a short run through the real binary (two child
//! nodes peered over loopback QUIC) whose last line is one JSON object with positive figures.

mod common;

use common::{edgerep, stderr, stdout};

#[test]
fn bench_replicate_prints_positive_figures_as_json() {
    let o = edgerep(&[
        "bench",
        "replicate",
        "--events",
        "2000",
        "--seconds",
        "1",
        "--rates",
        "200,2000",
    ]);
    let out = stdout(&o);
    assert!(
        o.status.success(),
        "bench replicate failed:\n{out}\n{}",
        stderr(&o)
    );
    let last = out.lines().last().unwrap_or_default();
    let j: serde_json::Value =
        serde_json::from_str(last).unwrap_or_else(|e| panic!("last line is not JSON ({e}): {out}"));
    assert_eq!(j["bench"], "replicate", "{j}");
    assert_eq!(j["events"], 2000, "{j}");
    for field in [
        "raw_redb_events_per_s",
        "raw_quinn_events_per_s",
        "ratio",
        "ratio_quinn",
    ] {
        let v = j[field].as_f64().unwrap_or(0.0);
        assert!(v > 0.0, "{field} = {v}: {j}");
    }
    // The receiver's store alone, applied whole.
    let alone = &j["store_apply_alone"];
    for field in ["events_per_s", "events_per_batch", "ratio_to_raw_before"] {
        let v = alone[field].as_f64().unwrap_or(0.0);
        assert!(v > 0.0, "store_apply_alone.{field} = {v}: {j}");
    }
    // Both durability modes are measured, each with its own figures.
    for mode in ["immediate", "periodic"] {
        let m = &j[mode];
        for field in [
            "ingest_events_per_s",
            "e2e_events_per_s",
            "ratio",
            "catchup_ingest_events_per_s",
            "catchup_events_per_s",
            "catchup_ratio",
        ] {
            let v = m[field].as_f64().unwrap_or(0.0);
            assert!(v > 0.0, "{mode}.{field} = {v}: {j}");
        }
        let lat = m["latency"].as_array().expect("latency array");
        assert_eq!(lat.len(), 2, "{j}");
        for l in lat {
            assert!(l["events"].as_u64().unwrap_or(0) > 0, "{l}");
            assert!(l["p50_ms"].as_f64().unwrap_or(0.0) > 0.0, "{l}");
            assert!(
                l["p99_ms"].as_f64().unwrap_or(0.0) >= l["p50_ms"].as_f64().unwrap(),
                "{l}"
            );
        }
    }
    assert_eq!(j["ratio"], j["immediate"]["ratio"], "{j}");
    // The cost of authentication: the same measurements without it, side by side.
    let auth = &j["authentication"];
    for field in [
        "e2e_events_per_s_with",
        "e2e_events_per_s_without",
        "e2e_ratio",
        "p50_ms_with",
        "p50_ms_without",
    ] {
        assert!(auth[field].as_f64().unwrap_or(0.0) > 0.0, "{field}: {j}");
    }
    assert_eq!(auth["latency_rate"], 200, "{j}");
    assert!(out.contains("authentication cost (immediate)"), "{out}");
    for node in ["node_a", "node_b"] {
        assert!(j["rss_peak_mb"][node].as_f64().unwrap_or(0.0) > 0.0, "{j}");
    }
    // The run says whether the machine was quiet enough, and why not when it was not.
    let check = &j["machine_check"];
    let quiet = check["quiet"].as_bool().expect("machine_check.quiet");
    assert_eq!(
        quiet,
        check["reasons"].as_array().is_some_and(|r| r.is_empty()),
        "{j}"
    );
    assert!(out.contains("machine check: "), "{out}");
}
