//! What `Runtime::load` and `Runtime::inspect` accept and refuse.

use std::path::PathBuf;

use edgerep_plugin::{FailureKind, LoadError, Runtime, World};

use crate::common::{limits, load, order, source, wasm, wasm_path};

#[test]
fn hash_mismatch_names_the_file_and_both_hashes() {
    let runtime = Runtime::new(None).unwrap();
    let wrong = "ab".repeat(32);
    let actual = edgerep_plugin::Runtime::new(None)
        .unwrap()
        .inspect(&wasm("redact"))
        .unwrap()
        .sha256;
    let mut src = source("redact", limits(1_000_000, 16 << 20), &[]);
    src.expected_sha256 = Some(wrong.clone());
    let error = runtime.load(src).unwrap_err();
    assert!(matches!(error, LoadError::HashMismatch { .. }), "{error:?}");
    let message = error.to_string();
    let path = wasm_path("redact").display().to_string();
    for part in [path.as_str(), wrong.as_str(), actual.as_str()] {
        assert!(message.contains(part), "{message:?} lacks {part:?}");
    }

    // The right hash, in upper case, is accepted.
    let mut src = source("redact", limits(1_000_000, 16 << 20), &[]);
    src.expected_sha256 = Some(actual.to_uppercase());
    let plugin = runtime.load(src).unwrap();
    assert_eq!(plugin.sha256(), actual);

    let mut src = source("redact", limits(1_000_000, 16 << 20), &[]);
    src.expected_sha256 = Some("not-a-hash".into());
    assert!(matches!(
        runtime.load(src),
        Err(LoadError::InvalidHash { .. })
    ));
}

#[test]
fn worlds_are_detected_from_the_exports() {
    let runtime = Runtime::new(None).unwrap();
    let resolver = load(&runtime, "merge-counter", limits(10_000_000, 16 << 20), &[]);
    assert_eq!(resolver.world(), World::Resolver);
    let transform = load(&runtime, "redact", limits(10_000_000, 16 << 20), &[]);
    assert_eq!(transform.world(), World::Transform);

    let failure = resolver.transform(&order("o-1"), true).unwrap_err();
    assert_eq!(failure.kind, FailureKind::WrongWorld);
    assert!(
        failure.message.contains("resolver world"),
        "{}",
        failure.message
    );
    let failure = transform
        .resolve("orders", b"o-1", &[order("o-1")])
        .unwrap_err();
    assert_eq!(failure.kind, FailureKind::WrongWorld);
    assert_eq!(resolver.metrics().errors.get("wrong-world"), Some(&1));

    let inspection = runtime.inspect(&wasm("merge-counter")).unwrap();
    assert_eq!(inspection.world, Some(World::Resolver));
    assert_eq!(inspection.exports, ["resolve"]);
    assert!(inspection.problems.is_empty(), "{:?}", inspection.problems);
}

fn load_bytes(runtime: &Runtime, wasm: Vec<u8>) -> Result<edgerep_plugin::Plugin, LoadError> {
    let mut src = source("passthrough", limits(1_000_000, 16 << 20), &[]);
    src.name = "bad".into();
    src.path = PathBuf::from("plugins/bad.wasm");
    src.wasm = wasm;
    runtime.load(src)
}

#[test]
fn core_modules_and_garbage_are_refused() {
    let runtime = Runtime::new(None).unwrap();
    let core = wat::parse_str("(module (func (export \"transform\")))").unwrap();
    let error = load_bytes(&runtime, core.clone()).unwrap_err();
    assert!(matches!(error, LoadError::CoreModule { .. }), "{error:?}");
    assert!(error.to_string().contains("plugins/bad.wasm"), "{error}");
    assert!(error.to_string().contains("not a component"), "{error}");
    assert!(matches!(
        runtime.inspect(&core),
        Err(LoadError::CoreModule { .. })
    ));

    for garbage in [
        b"".to_vec(),
        b"hello, world".to_vec(),
        vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0],
    ] {
        let error = load_bytes(&runtime, garbage).unwrap_err();
        assert!(matches!(error, LoadError::NotWasm { .. }), "{error:?}");
    }
    // A component header followed by garbage.
    let mut broken = b"\0asm\x0d\0\x01\0".to_vec();
    broken.extend_from_slice(&[0xff; 16]);
    let error = load_bytes(&runtime, broken).unwrap_err();
    assert!(matches!(error, LoadError::Compile { .. }), "{error:?}");
}

#[test]
fn components_outside_the_contract_are_refused() {
    let runtime = Runtime::new(None).unwrap();

    // No export of either world.
    let error = load_bytes(&runtime, wat::parse_str("(component)").unwrap()).unwrap_err();
    assert!(matches!(error, LoadError::World { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains("exports neither"), "{message}");
    assert!(
        message.contains("`transform`") && message.contains("`resolve`"),
        "{message}"
    );

    // An export called transform with the wrong type.
    let wrong_type = wat::parse_str(
        r#"(component
            (core module $m (func (export "f")))
            (core instance $i (instantiate $m))
            (func (export "transform") (canon lift (core func $i "f"))))"#,
    )
    .unwrap();
    let error = load_bytes(&runtime, wrong_type.clone()).unwrap_err();
    assert!(matches!(error, LoadError::World { .. }), "{error:?}");
    assert!(
        error
            .to_string()
            .contains("do not have the types of the transform world"),
        "{error}"
    );
    let inspection = runtime.inspect(&wrong_type).unwrap();
    assert_eq!(inspection.world, Some(World::Transform));
    assert_eq!(inspection.problems.len(), 1, "{:?}", inspection.problems);

    // Imports outside the host and WASI are refused, by name.
    let evil = wat::parse_str(
        r#"(component
            (import "acme:evil/net@1.0.0" (instance (export "connect" (func))))
            (import "edgerep:plugin/host@0.1.0" (instance))
            (core module $m (func (export "f")))
            (core instance $i (instantiate $m))
            (func (export "resolve") (canon lift (core func $i "f"))))"#,
    )
    .unwrap();
    let error = load_bytes(&runtime, evil.clone()).unwrap_err();
    match &error {
        LoadError::RefusedImports { refused, .. } => assert_eq!(refused, &["acme:evil/net@1.0.0"]),
        other => panic!("{other:?}"),
    }
    assert!(error.to_string().contains("acme:evil/net@1.0.0"), "{error}");
    let inspection = runtime.inspect(&evil).unwrap();
    assert_eq!(
        inspection.imports,
        ["acme:evil/net@1.0.0", "edgerep:plugin/host@0.1.0"]
    );
    assert!(!inspection.problems.is_empty());

    // A WASI interface the host does not provide is a link error naming it.
    let unknown_wasi = wat::parse_str(
        r#"(component
            (import "wasi:http/outgoing-handler@0.2.0" (instance (export "handle" (func))))
            (core module $m (func (export "f")))
            (core instance $i (instantiate $m))
            (func (export "resolve") (canon lift (core func $i "f"))))"#,
    )
    .unwrap();
    let error = load_bytes(&runtime, unknown_wasi).unwrap_err();
    assert!(matches!(error, LoadError::Link { .. }), "{error:?}");
    assert!(
        error.to_string().contains("wasi:http/outgoing-handler"),
        "{error}"
    );
}

#[test]
fn limits_must_be_usable() {
    let runtime = Runtime::new(None).unwrap();
    let error = runtime
        .load(source("redact", limits(0, 16 << 20), &[]))
        .unwrap_err();
    assert!(
        matches!(error, LoadError::InvalidLimits { .. }),
        "{error:?}"
    );
}

#[test]
fn inspect_reports_the_shape() {
    let runtime = Runtime::new(None).unwrap();
    let bytes = wasm("wasi-probe");
    let inspection = runtime.inspect(&bytes).unwrap();
    assert_eq!(inspection.world, Some(World::Transform));
    assert_eq!(inspection.size, bytes.len());
    assert_eq!(inspection.sha256.len(), 64);
    assert!(
        inspection
            .imports
            .iter()
            .any(|i| i.starts_with("wasi:random/random@"))
    );
    assert!(
        inspection
            .imports
            .iter()
            .any(|i| i.starts_with("edgerep:plugin/host@"))
    );
    assert!(inspection.problems.is_empty(), "{:?}", inspection.problems);
}

/// `wasm` with a custom section `name` holding `data` appended.
fn with_section(mut wasm: Vec<u8>, name: &str, data: &[u8]) -> Vec<u8> {
    use wasm_encoder::ComponentSection as _;
    wasm_encoder::CustomSection {
        name: name.into(),
        data: data.into(),
    }
    .append_to_component(&mut wasm);
    wasm
}

#[test]
fn declared_parameters_that_are_malformed_twice_declared_or_unmet_are_refused() {
    use edgerep_wire::params::{DeclaredParam, SECTION, encode};
    let runtime = Runtime::new(None).unwrap();
    let declared = encode(&[DeclaredParam {
        name: "x".into(),
        required: true,
        default: None,
        description: String::new(),
    }]);
    let garbage = with_section(wasm("passthrough"), SECTION, &[0xff, 0x00, 0x13]);
    let error = load_bytes(&runtime, garbage).unwrap_err();
    assert!(matches!(error, LoadError::Params { .. }), "{error:?}");
    assert!(error.to_string().contains("declared parameters"), "{error}");
    let twice = with_section(
        with_section(wasm("passthrough"), SECTION, &declared),
        SECTION,
        &declared,
    );
    let error = load_bytes(&runtime, twice).unwrap_err();
    assert!(error.to_string().contains("two"), "{error}");
    // A well-formed declaration the config does not meet (no params given).
    let unmet = with_section(wasm("passthrough"), SECTION, &declared);
    let error = load_bytes(&runtime, unmet.clone()).unwrap_err();
    assert!(
        error.to_string().contains("required params [\"x\"]"),
        "{error}"
    );
    let shown = runtime.inspect(&unmet).unwrap();
    assert_eq!(shown.params.unwrap()[0].name, "x");
}

/// A component that cannot be instantiated under its limits (here: its initial memory is over
/// the cap) is refused at load, naming why, instead of failing every call afterwards.
#[test]
fn a_plugin_that_cannot_be_instantiated_under_its_limits_is_refused_at_load() {
    let runtime = Runtime::new(None).unwrap();
    let error = runtime
        .load(source("passthrough", limits(10_000_000, 16 << 10), &[]))
        .unwrap_err();
    assert!(matches!(error, LoadError::Instantiate { .. }), "{error:?}");
    let text = error.to_string();
    assert!(
        text.contains("cannot be instantiated under its limits") && text.contains("memory"),
        "{text}"
    );
    // With room, the same component loads.
    assert!(
        runtime
            .load(source("passthrough", limits(10_000_000, 16 << 20), &[]))
            .is_ok()
    );
}
