//! The conformance vectors (tests/vectors/plugins) against the Rust components.

use std::fs;

use edgerep_plugin::Runtime;
use edgerep_plugin::conformance::{run_vector_dir, run_vector_file, vector_files};

use crate::common::{vectors_dir, wasm_dir, wasm_path};

#[test]
fn every_vector_passes() {
    let files = vector_files(&vectors_dir()).unwrap();
    assert!(files.len() >= 40, "only {} vectors", files.len());
    // Fail with the build hint if any component is missing.
    for file in &files {
        let plugin = file
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap();
        wasm_path(plugin);
    }
    let cache = tempfile::tempdir().unwrap();
    let runtime = Runtime::new(Some(cache.path())).unwrap();
    let ran =
        run_vector_dir(&runtime, &wasm_dir(), &vectors_dir()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ran, files.len());
    // Nine components, compiled once each.
    assert!(runtime.compilations() <= 9, "{}", runtime.compilations());
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
    let error = run_vector_file(&runtime, &wasm_dir(), &file).unwrap_err();
    assert!(
        error.contains("changed.json") && error.contains("changes differ"),
        "{error}"
    );

    // A JSON form that disagrees with its hex is a broken vector.
    case["expect"]["ok"][0]["value_hex"] =
        "a3637174791828646974656d65626f6c7473657072696365f93400".into();
    fs::write(&file, case.to_string()).unwrap();
    let error = run_vector_file(&runtime, &wasm_dir(), &file).unwrap_err();
    assert!(error.contains("not the deterministic encoding"), "{error}");

    // An unexpected failure kind.
    case["expect"] = serde_json::json!({"error": "trap"});
    fs::write(&file, case.to_string()).unwrap();
    let error = run_vector_file(&runtime, &wasm_dir(), &file).unwrap_err();
    assert!(
        error.contains("expected the failure trap, the call succeeded"),
        "{error}"
    );

    // A typo in a field.
    case["expekt"] = case["expect"].take();
    fs::write(&file, case.to_string()).unwrap();
    let error = run_vector_file(&runtime, &wasm_dir(), &file).unwrap_err();
    assert!(error.contains("unknown field \"expekt\""), "{error}");

    // A missing component says how to build it.
    let error = run_vector_file(&runtime, dir.path(), &original).unwrap_err();
    assert!(error.contains("cargo xtask build-plugins"), "{error}");
}
