//! Helpers shared by the integration tests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use edgerep_plugin::{Limits, Plugin, PluginSource, Runtime};
use edgerep_wire::Event;

/// Where `cargo xtask build-plugins` puts the Rust components.
pub(crate) fn wasm_dir() -> PathBuf {
    toolchain_dir("rust")
}

/// Where `cargo xtask build-plugins` puts the components of `toolchain` (`rust`, `tinygo`, `go`).
pub(crate) fn toolchain_dir(toolchain: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/plugins")
        .join(toolchain)
}

/// The plugins that have a Go source (`plugins/go/<name>/`), built with TinyGo and standard Go.
pub(crate) fn go_plugins() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../plugins/go");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The path of a plugin built with `toolchain`; panics (fails the test) if it was not built.
pub(crate) fn toolchain_wasm_path(toolchain: &str, plugin: &str) -> PathBuf {
    let path = toolchain_dir(toolchain).join(format!("{plugin}.wasm"));
    assert!(
        path.is_file(),
        "{} is missing: run `cargo xtask build-plugins --toolchain {toolchain}` first",
        path.display()
    );
    path
}

/// The conformance vectors.
pub(crate) fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/vectors/plugins")
}

/// The path of a built plugin; panics (fails the test) if it was not built.
pub(crate) fn wasm_path(plugin: &str) -> PathBuf {
    let path = wasm_dir().join(format!("{plugin}.wasm"));
    assert!(
        path.is_file(),
        "{} is missing: run `cargo xtask build-plugins` first",
        path.display()
    );
    path
}

/// The bytes of a built plugin (see [`wasm_path`]).
pub(crate) fn wasm(plugin: &str) -> Vec<u8> {
    std::fs::read(wasm_path(plugin)).expect("readable component")
}

/// A source for a built plugin.
pub(crate) fn source(plugin: &str, limits: Limits, params: &[(&str, &str)]) -> PluginSource {
    PluginSource {
        name: plugin.to_owned(),
        path: wasm_path(plugin),
        wasm: wasm(plugin),
        expected_sha256: None,
        limits,
        params: params
            .iter()
            .map(|&(k, v)| (k.to_owned(), v.to_owned()))
            .collect::<BTreeMap<_, _>>(),
    }
}

/// Loads a built plugin.
pub(crate) fn load(
    runtime: &Runtime,
    plugin: &str,
    limits: Limits,
    params: &[(&str, &str)],
) -> Plugin {
    runtime
        .load(source(plugin, limits, params))
        .unwrap_or_else(|e| panic!("loading {plugin}: {e}"))
}

/// Calls `p` twice on pooled instances (`fresh = false`) and once on a fresh one; every call
/// must fail with `kind` and the same fuel (a broken instance that was reused would fail
/// differently). Returns the last failure.
pub(crate) fn fails_alike(
    p: &Plugin,
    kind: edgerep_plugin::FailureKind,
) -> edgerep_plugin::Failure {
    let mut failures = Vec::new();
    for fresh in [false, false, true] {
        let failure = p.transform(&order("o-1"), fresh).unwrap_err();
        assert_eq!(failure.kind, kind, "{failure}");
        failures.push(failure);
    }
    let fuel: Vec<u64> = failures.iter().map(|f| f.fuel_used).collect();
    assert!(fuel.windows(2).all(|w| w[0] == w[1]), "fuel {fuel:?}");
    failures.pop().expect("three calls")
}

/// Limits with the given fuel and memory and a generous deadline (so that fuel and memory, the
/// deterministic limits, are what stop a call).
pub(crate) fn limits(fuel: u64, memory_bytes: usize) -> Limits {
    Limits {
        fuel,
        memory_bytes,
        deadline: Duration::from_secs(60),
        ..Limits::default()
    }
}

/// An event from its JSON form (the vectors' format).
pub(crate) fn event(json: serde_json::Value) -> Event {
    edgerep_plugin::json::event_from_json(&json).expect("valid event JSON")
}

/// A small order event.
pub(crate) fn order(key: &str) -> Event {
    event(serde_json::json!({
        "collection": "orders",
        "key": key,
        "value": {"item": "bolts", "qty": 40, "card": "4111", "email": "a@example.com"},
        "meta": {"by": "pos"},
    }))
}
