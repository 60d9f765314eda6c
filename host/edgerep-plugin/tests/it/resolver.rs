//! Resolving concurrent versions: the result does not depend on the order they arrived in.

use edgerep_plugin::{Resolution, Runtime};
use edgerep_wire::Event;

use crate::common::{event, limits, load};

/// Four concurrent versions of one counter map, from four origins.
fn versions() -> Vec<Event> {
    [
        ("site-c", 4, serde_json::json!({"a": 3, "b": 10})),
        ("site-a", 9, serde_json::json!({"a": 7})),
        ("site-d", 1, serde_json::json!({"c": 1, "b": 2})),
        ("site-b", 2, serde_json::json!({"a": 5, "c": 9, "d": 0})),
    ]
    .into_iter()
    .map(|(origin, seq, value)| {
        event(
            serde_json::json!({"collection": "counters", "key": "c-1", "origin": origin,
            "seq": seq, "value": value}),
        )
    })
    .collect()
}

/// Every permutation of `items` (Heap's algorithm).
fn permutations<T: Clone>(items: &[T]) -> Vec<Vec<T>> {
    fn heap<T: Clone>(k: usize, items: &mut Vec<T>, out: &mut Vec<Vec<T>>) {
        if k <= 1 {
            out.push(items.clone());
            return;
        }
        for i in 0..k {
            heap(k - 1, items, out);
            let j = if k.is_multiple_of(2) { i } else { 0 };
            items.swap(j, k - 1);
        }
    }
    let mut out = Vec::new();
    heap(items.len(), &mut items.to_vec(), &mut out);
    out
}

/// The node sorts versions canonically (by origin, then sequence number) before resolving, so
/// every arrival order gives the same input and so the same output; and merge-counter (the
/// maximum per counter name) is itself order-independent, so even unsorted input agrees.
#[test]
fn merge_counter_agrees_for_every_permutation() {
    let runtime = Runtime::new(None).unwrap();
    let p = load(&runtime, "merge-counter", limits(10_000_000, 16 << 20), &[]);
    let all = permutations(&versions());
    assert_eq!(all.len(), 24);

    let expected = edgerep_wire::Value::from_json(
        &serde_json::json!({"a": 7, "b": 10, "c": 9, "d": 0}),
        &Default::default(),
    )
    .unwrap();
    let mut fuel = None;
    for arrival in &all {
        // As the node does it: canonical order first.
        let mut sorted = arrival.clone();
        sorted.sort_by_key(|x| x.dot());
        let before = p.metrics().fuel_total;
        let resolution = p.resolve("counters", b"c-1", &sorted).unwrap();
        assert_eq!(resolution, Resolution::Merge(Some(expected.clone())));
        let used = p.metrics().fuel_total - before;
        assert_eq!(*fuel.get_or_insert(used), used, "sorted input, same fuel");

        // merge-counter itself does not care about the order.
        let unsorted = p.resolve("counters", b"c-1", arrival).unwrap();
        assert_eq!(unsorted, Resolution::Merge(Some(expected.clone())));
    }
}
