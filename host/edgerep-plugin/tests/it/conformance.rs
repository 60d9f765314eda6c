//! The conformance vectors (tests/vectors/plugins) against every build of every plugin: Rust
//! always, TinyGo and standard Go for the plugins with a Go source in plugins/go/. The builds
//! must agree byte for byte.

use std::collections::BTreeMap;
use std::fs;

use edgerep_plugin::conformance::{
    Build, run_vector_dir_across, run_vector_file, run_vector_file_across, vector_files,
};
use edgerep_plugin::{FailureKind, Runtime};

use crate::common::{go_plugins, toolchain_dir, toolchain_wasm_path, vectors_dir, wasm_dir};

/// The toolchains of the Go builds.
const GO_TOOLCHAINS: [&str; 2] = ["tinygo", "go"];

/// The plugins every toolchain builds (the hostile ones included).
const ALL_TOOLCHAIN_PLUGINS: [&str; 8] = [
    "balloon",
    "enrich",
    "filter",
    "merge-counter",
    "passthrough",
    "redact",
    "spin",
    "trap",
];

#[test]
fn every_vector_passes_on_every_build() {
    let files = vector_files(&vectors_dir()).unwrap();
    assert!(files.len() >= 40, "only {} vectors", files.len());
    let go = go_plugins();
    for plugin in ALL_TOOLCHAIN_PLUGINS {
        assert!(
            go.iter().any(|p| p == plugin),
            "plugins/go/{plugin} is missing"
        );
    }
    let builds_of = |plugin: &str| -> Vec<Build> {
        let mut builds = vec![Build::new("rust", toolchain_dir("rust"))];
        if go.iter().any(|p| p == plugin) {
            builds.extend(GO_TOOLCHAINS.map(|t| Build::new(t, toolchain_dir(t))));
        }
        builds
    };
    // Fail with the build hint if any component is missing.
    for file in &files {
        let plugin = file
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap();
        for build in builds_of(plugin) {
            toolchain_wasm_path(&build.toolchain, plugin);
        }
    }
    let cache = tempfile::tempdir().unwrap();
    let runtime = Runtime::new(Some(cache.path())).unwrap();
    let runs = run_vector_dir_across(&runtime, &vectors_dir(), builds_of)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(runs.len(), files.len());

    // Every case of the eight plugins ran on all three builds, and the hostile ones failed the
    // same way on each (run_vector_dir_across checked the kinds against the vectors).
    let mut fuel: BTreeMap<String, BTreeMap<String, Vec<u64>>> = BTreeMap::new();
    for (file, case_runs) in &runs {
        let plugin = file
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap();
        let toolchains: Vec<&str> = case_runs.iter().map(|r| r.toolchain.as_str()).collect();
        if ALL_TOOLCHAIN_PLUGINS.contains(&plugin) {
            assert_eq!(toolchains, ["rust", "tinygo", "go"], "{}", file.display());
        }
        for run in case_runs {
            fuel.entry(plugin.to_owned())
                .or_default()
                .entry(run.toolchain.clone())
                .or_default()
                .push(run.fuel_used);
        }
    }
    for (plugin, kind) in [
        ("spin", FailureKind::OutOfFuel),
        ("balloon", FailureKind::MemoryLimit),
        ("trap", FailureKind::Trap),
    ] {
        let (_, case_runs) = runs
            .iter()
            .find(|(f, _)| f.parent().unwrap().ends_with(plugin))
            .unwrap();
        for run in case_runs {
            assert_eq!(
                run.outcome.as_ref().map_err(|f| f.kind).err(),
                Some(kind),
                "{plugin} ({})",
                run.toolchain
            );
        }
    }
    println!("fuel per call over the vectors (median, max), by plugin and toolchain:");
    for (plugin, by_toolchain) in &fuel {
        let cells: Vec<String> = ["rust", "tinygo", "go"]
            .iter()
            .filter_map(|t| {
                let mut v = by_toolchain.get(*t)?.clone();
                v.sort_unstable();
                Some(format!("{t} {} / {}", v[v.len() / 2], v[v.len() - 1]))
            })
            .collect();
        println!("  {plugin:<14} {}", cells.join("   "));
    }
    // Each component compiled once: the Rust ones, and two Go builds of eight plugins.
    assert!(
        runtime.compilations() <= 9 + 16,
        "{}",
        runtime.compilations()
    );
}

#[test]
fn the_runner_reports_differences() {
    let runtime = Runtime::new(None).unwrap();
    let original = vectors_dir().join("passthrough/full-event.json");
    let mut case: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&original).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("passthrough")).unwrap();
    let file = dir.path().join("passthrough/changed.json");

    // A wrong value: the hex differs.
    case["expect"]["ok"][0]["value"]["qty"] = 41.into();
    case["expect"]["ok"][0]["value_hex"] =
        "a3637174791829646974656d65626f6c7473657072696365f93400".into();
    fs::write(&file, case.to_string()).unwrap();
    let error = run_vector_file(&runtime, &wasm_dir(), &file)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("changed.json") && error.contains("changes differ"),
        "{error}"
    );

    // A JSON form that disagrees with its hex is a broken vector.
    case["expect"]["ok"][0]["value_hex"] =
        "a3637174791828646974656d65626f6c7473657072696365f93400".into();
    fs::write(&file, case.to_string()).unwrap();
    let error = run_vector_file(&runtime, &wasm_dir(), &file)
        .unwrap_err()
        .to_string();
    assert!(error.contains("not the deterministic encoding"), "{error}");

    // An unexpected failure kind.
    case["expect"] = serde_json::json!({"error": "trap"});
    fs::write(&file, case.to_string()).unwrap();
    let error = run_vector_file(&runtime, &wasm_dir(), &file)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("expected the failure trap, the call succeeded"),
        "{error}"
    );

    // A typo in a field.
    case["expekt"] = case["expect"].take();
    fs::write(&file, case.to_string()).unwrap();
    let error = run_vector_file(&runtime, &wasm_dir(), &file)
        .unwrap_err()
        .to_string();
    assert!(error.contains("unknown field \"expekt\""), "{error}");

    // A missing component says how to build it.
    let error = run_vector_file(&runtime, dir.path(), &original)
        .unwrap_err()
        .to_string();
    assert!(error.contains("cargo xtask build-plugins"), "{error}");
}

#[test]
fn a_build_that_fails_a_case_is_named() {
    // A "go build" of filter that is really passthrough: filter's drop-text case expects the
    // event dropped, passthrough keeps it, and the runner blames that build.
    let runtime = Runtime::new(None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    fs::copy(
        wasm_dir().join("passthrough.wasm"),
        dir.path().join("filter.wasm"),
    )
    .unwrap();
    let vector = vectors_dir().join("filter/drop-text.json");
    let builds = [Build::new("rust", wasm_dir()), Build::new("go", dir.path())];
    let error = run_vector_file_across(&runtime, &builds, &vector)
        .unwrap_err()
        .to_string();
    assert!(error.contains("go build: "), "{error}");
    assert!(!error.contains("rust build"), "{error}");
    // A missing build says which command makes it.
    let builds = [Build::new("tinygo", dir.path().join("nothing"))];
    let error = run_vector_file_across(&runtime, &builds, &vector)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("cargo xtask build-plugins --toolchain tinygo"),
        "{error}"
    );
}

/// A case expecting the call to run out of fuel, with a budget the TinyGo build's start-up
/// alone spends (about 1.1 M): that is a failure while starting, not the call's, and the case
/// fails unless it says `"while": "starting"` (it passed before, whatever the call did).
#[test]
fn a_failure_while_starting_passes_only_a_case_that_says_so() {
    let runtime = Runtime::new(None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let case = |expect: &str| {
        format!(
            r#"{{"plugin": "passthrough", "world": "transform", "limits": {{"fuel": 1000}},
               "input": {{"collection": "c", "key": "k", "value": {{"v": 1}}}},
               "expect": {expect}}}"#
        )
    };
    fs::create_dir(dir.path().join("passthrough")).unwrap();
    let file = dir.path().join("passthrough/case.json");
    let tinygo = [Build::new("tinygo", toolchain_dir("tinygo"))];
    fs::write(&file, case(r#"{"error": "out-of-fuel"}"#)).unwrap();
    let error = run_vector_file_across(&runtime, &tinygo, &file)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("expected the failure while calling") && error.contains("instantiating"),
        "{error}"
    );
    fs::write(
        &file,
        case(r#"{"error": "out-of-fuel", "while": "starting"}"#),
    )
    .unwrap();
    run_vector_file_across(&runtime, &tinygo, &file).unwrap();
    // Rust's start-up costs nothing: the same budget runs out in the call.
    let rust = [Build::new("rust", wasm_dir())];
    assert!(run_vector_file_across(&runtime, &rust, &file).is_err());
}

/// wasi-probe returns bytes of WASI's random source: the same on every fresh instance (the
/// host seeds it afresh), but the stream moves on in a reused one, as a node's pooled ingest
/// instances are. A case it passes on a fresh instance fails as not repeatable.
#[test]
fn a_plugin_whose_output_changes_on_a_reused_instance_fails_its_case() {
    let runtime = Runtime::new(None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("wasi-probe")).unwrap();
    let file = dir.path().join("wasi-probe/case.json");
    // What a fresh instance answers, taken as the expectation.
    let p = crate::common::load(
        &runtime,
        "wasi-probe",
        edgerep_plugin::conformance::default_limits(),
        &[],
    );
    let input = serde_json::json!({"collection": "c", "key": "k", "value": {"v": 1}});
    let fresh = p
        .transform(&crate::common::event(input.clone()), true)
        .unwrap();
    let value = fresh[0].value.as_ref().unwrap().to_json();
    let case = serde_json::json!({
        "plugin": "wasi-probe",
        "world": "transform",
        "input": input,
        "expect": {"ok": [{"collection": "c", "key": "k", "op": "put", "schema": 0, "meta": {},
                           "value": value}]},
    });
    fs::write(&file, case.to_string()).unwrap();
    // The case as it stands passes a fresh instance; only the reused one differs.
    let rust = [Build::new("rust", wasm_dir())];
    let error = run_vector_file_across(&runtime, &rust, &file)
        .unwrap_err()
        .to_string();
    assert!(error.contains("not repeatable"), "{error}");
}

/// A case's `message` is the plugin's own (plugin-error only), and `while` is `starting` or
/// `calling`: anything else is refused, naming what.
#[test]
fn a_case_naming_a_runtime_message_or_an_unknown_phase_is_refused() {
    let runtime = Runtime::new(None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("trap")).unwrap();
    let file = dir.path().join("trap/case.json");
    let rust = [Build::new("rust", wasm_dir())];
    for (expect, said) in [
        (
            r#"{"error": "trap", "message": "unreachable"}"#,
            "only for \"plugin-error\"",
        ),
        (r#"{"error": "trap", "while": "later"}"#, "expect.while"),
    ] {
        let case = format!(
            r#"{{"plugin": "trap", "world": "transform",
               "input": {{"collection": "c", "key": "k", "value": {{"v": 1}}}},
               "expect": {expect}}}"#
        );
        fs::write(&file, case).unwrap();
        let error = run_vector_file_across(&runtime, &rust, &file)
            .unwrap_err()
            .to_string();
        assert!(error.contains(said), "{error}");
    }
}

/// A case's `stage` is `ingest` or `apply`, and `apply` only for a transform: a typo, or a
/// resolver "on apply", is refused naming the stage, not run as something else.
#[test]
fn a_case_with_an_unknown_stage_is_refused() {
    let runtime = Runtime::new(None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rust = [Build::new("rust", wasm_dir())];
    for (plugin, world, stage, input) in [
        (
            "redact",
            "transform",
            "aply",
            r#"{"collection": "c", "key": "k", "value": 1}"#,
        ),
        (
            "merge-counter",
            "resolver",
            "apply",
            r#"{"collection": "c", "key": "k", "versions": [{"origin": "a", "value": {}}, {"origin": "b", "value": {}}]}"#,
        ),
    ] {
        fs::create_dir_all(dir.path().join(plugin)).unwrap();
        let file = dir.path().join(plugin).join("case.json");
        let case = format!(
            r#"{{"plugin": "{plugin}", "world": "{world}", "stage": "{stage}",
               "input": {input}, "expect": {{"error": "bad-output"}}}}"#
        );
        fs::write(&file, case).unwrap();
        let error = run_vector_file_across(&runtime, &rust, &file)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains(&format!("unknown stage \"{stage}\"")),
            "{error}"
        );
    }
}
