//! Fresh calls are deterministic: the same input gives the same output and exactly the same fuel.

use edgerep_plugin::Runtime;
use edgerep_plugin::json::change_to_json;

use crate::common::{event, limits, load, order};

#[test]
fn the_same_transform_twice_uses_the_same_fuel() {
    let runtime = Runtime::new(None).unwrap();
    for (plugin, params) in [
        ("redact", &[("remove", "card"), ("mask", "email")][..]),
        ("passthrough", &[][..]),
        ("enrich", &[][..]),
    ] {
        let p = load(&runtime, plugin, limits(10_000_000, 16 << 20), params);
        let input = order("o-1");
        let first = p.transform(&input, true).unwrap();
        let fuel_first = p.metrics().fuel_total;
        let second = p.transform(&input, true).unwrap();
        let fuel_second = p.metrics().fuel_total - fuel_first;
        assert_eq!(first, second, "{plugin}");
        assert_eq!(
            fuel_first, fuel_second,
            "{plugin}: fuel differs between two fresh calls"
        );
        assert!(fuel_first > 0);

        // A second plugin loaded from the same bytes agrees too.
        let again = load(&runtime, plugin, limits(10_000_000, 16 << 20), params);
        assert_eq!(again.transform(&input, true).unwrap(), first, "{plugin}");
        assert_eq!(again.metrics().fuel_total, fuel_first, "{plugin}");
    }
}

#[test]
fn redact_does_what_its_params_say() {
    let runtime = Runtime::new(None).unwrap();
    let p = load(
        &runtime,
        "redact",
        limits(10_000_000, 16 << 20),
        &[("remove", "card"), ("mask", "email")],
    );
    let changes = p.transform(&order("o-1"), true).unwrap();
    assert_eq!(changes.len(), 1);
    let json = change_to_json(&changes[0]);
    let value = &json["value"];
    assert!(value.get("card").is_none(), "{json}");
    assert_ne!(value["email"], "a@example.com", "{json}");
    assert_eq!(value["qty"], 40, "{json}");
}

#[test]
fn a_hundred_fresh_resolves_use_identical_fuel() {
    let runtime = Runtime::new(None).unwrap();
    let p = load(&runtime, "merge-counter", limits(10_000_000, 16 << 20), &[]);
    let versions = [
        event(
            serde_json::json!({"collection": "counters", "key": "c-1", "origin": "a", "seq": 1,
            "value": {"x": 1, "y": 7}}),
        ),
        event(
            serde_json::json!({"collection": "counters", "key": "c-1", "origin": "b", "seq": 3,
            "value": {"x": 5}}),
        ),
    ];
    let first = p.resolve("counters", b"c-1", &versions).unwrap();
    let fuel = p.metrics().fuel_per_call.max;
    for _ in 0..99 {
        assert_eq!(p.resolve("counters", b"c-1", &versions).unwrap(), first);
    }
    let metrics = p.metrics();
    assert_eq!(metrics.calls, 100);
    assert!(metrics.errors.is_empty(), "{:?}", metrics.errors);
    assert_eq!(metrics.fuel_per_call.min, fuel);
    assert_eq!(metrics.fuel_per_call.max, fuel);
    assert_eq!(metrics.fuel_total, 100 * fuel);
    assert_eq!(metrics.nanos_per_call.count, 100);
}
