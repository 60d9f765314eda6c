//! From a core module to a plugin component, and what a component imports and exports.

use wasmparser::{ComponentExternalKind, ComponentTypeRef, Encoding, Payload};
use wit_component::{ComponentEncoder, StringEncoding};
use wit_parser::Resolve;

use crate::BuildError;

/// The contract, `wit/plugin.wit`, as built into this crate (so builds need no checkout).
pub const PLUGIN_WIT: &str = include_str!("../../../wit/plugin.wit");

/// The only import namespace of the contract.
pub const CONTRACT_PREFIX: &str = "edgerep:plugin/";

/// The `wasi_snapshot_preview1` module name the adapter provides.
const PREVIEW1: &str = "wasi_snapshot_preview1";

fn component_error(what: &str, e: impl std::fmt::Display) -> BuildError {
    BuildError::Component(format!("{what}: {e:#}"))
}

/// Turns a core module carrying wit-bindgen's `component-type` custom sections (a Rust plugin
/// built with the SDK) into a component, validated. A module that is already a component is
/// returned as it is.
pub fn from_module(module: &[u8]) -> Result<Vec<u8>, BuildError> {
    if wasmparser::Parser::is_component(module) {
        return Ok(module.to_vec());
    }
    let module = drop_import_only_worlds(module)
        .map_err(|e| component_error("reading the module's sections", e))?;
    ComponentEncoder::default()
        .module(&module)
        .and_then(|e| e.validate(true).encode())
        .map_err(|e| component_error("making a component of the module", e))
}

/// Turns a wasip1 core module with `//go:wasmexport` functions (a Go or TinyGo plugin) into a
/// component: embeds the world of `wit/plugin.wit` its exports name ([`world_of_module`]), and
/// adapts its `wasi_snapshot_preview1` imports with the reactor adapter of
/// `wasi-preview1-component-adapter-provider` (the version that matches wasmtime).
pub fn from_wasip1_module(module: &[u8]) -> Result<Vec<u8>, BuildError> {
    let world = world_of_module(module)?;
    let mut resolve = Resolve::default();
    let package = resolve
        .push_str("plugin.wit", PLUGIN_WIT)
        .map_err(|e| component_error("parsing wit/plugin.wit", e))?;
    let world_id = resolve
        .select_world(&[package], Some(world))
        .map_err(|e| component_error("selecting the world", e))?;
    let mut module = module.to_vec();
    wit_component::embed_component_metadata(
        &mut module,
        &resolve,
        world_id,
        StringEncoding::UTF8,
        false,
    )
    .map_err(|e| component_error("embedding the world in the module", e))?;
    ComponentEncoder::default()
        .module(&module)
        .and_then(|e| {
            e.adapter(
                PREVIEW1,
                wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
            )
        })
        .and_then(|e| e.validate(true).encode())
        .map_err(|e| component_error(&format!("making a {world} component of the module"), e))
}

/// The world a core module implements, by its function exports: `transform` or `resolver`.
pub fn world_of_module(module: &[u8]) -> Result<&'static str, BuildError> {
    let exports = module_exports(module)?;
    let has = |name: &str| exports.iter().any(|e| e == name);
    match (has("transform"), has("resolve")) {
        (true, false) => Ok("transform"),
        (false, true) => Ok("resolver"),
        (true, true) => Err(BuildError::Component(
            "the module exports both `transform` and `resolve` (a Go plugin imports the SDK's \
             transform package or its resolver package, not both)"
                .into(),
        )),
        (false, false) => Err(BuildError::Component(format!(
            "the module exports neither `transform` nor `resolve` (a Go plugin imports the SDK's \
             transform or resolver package and calls Register in an init function); exports: {exports:?}"
        ))),
    }
}

/// The names of a core module's function exports.
pub fn module_exports(module: &[u8]) -> Result<Vec<String>, BuildError> {
    let mut names = Vec::new();
    for payload in wasmparser::Parser::new(0).parse_all(module) {
        let payload = payload.map_err(|e| component_error("reading the module", e))?;
        if let Payload::ExportSection(reader) = payload {
            for export in reader {
                let export = export.map_err(|e| component_error("reading the module", e))?;
                if export.kind == wasmparser::ExternalKind::Func {
                    names.push(export.name.to_owned());
                }
            }
        }
    }
    Ok(names)
}

/// Drops the import-only `component-type` sections when the module has a complete one.
///
/// The Rust SDK generates bindings for both worlds, and with `pub_export_macro` wit-bindgen
/// emits, for each, a section with only the world's imports (the `transform` and `resolver`
/// worlds without their exports); the plugin's `export_transform!`/`export_resolver!` emits the
/// complete world ("imports and exports"). wit-component merges all of them, which is correct but
/// leaves a transform importing the type `resolution` (and a resolver the type `change`):
/// harmless type-equality imports, but noise. Keeping only the complete world gives each
/// component exactly its world.
fn drop_import_only_worlds(module: &[u8]) -> Result<Vec<u8>, wasmparser::BinaryReaderError> {
    let is_type_section = |name: &str| name.starts_with("component-type:");
    let mut complete = false;
    for payload in wasmparser::Parser::new(0).parse_all(module) {
        if let Payload::CustomSection(c) = payload? {
            complete |= is_type_section(c.name()) && c.name().ends_with(":imports and exports");
        }
    }
    if !complete {
        return Ok(module.to_vec());
    }
    let mut out = module[..8].to_vec();
    for payload in wasmparser::Parser::new(0).parse_all(module) {
        let payload = payload?;
        if let Payload::CustomSection(c) = &payload
            && is_type_section(c.name())
            && !c.name().ends_with(":imports and exports")
        {
            continue;
        }
        if let Some((id, range)) = payload.as_section() {
            let (Ok(start), Ok(end)) = (usize::try_from(range.start), usize::try_from(range.end))
            else {
                unreachable!("a section of a module in memory lies in memory")
            };
            wasm_encoder::Section::append_to(
                &wasm_encoder::RawSection {
                    id,
                    data: &module[start..end],
                },
                &mut out,
            );
        }
    }
    Ok(out)
}

/// Top-level imports and exports of a component: (name, kind).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Surface {
    /// Imports: name and kind (`instance`, `func`, `type`, ...).
    pub imports: Vec<(String, &'static str)>,
    /// Exports: name and kind.
    pub exports: Vec<(String, &'static str)>,
}

impl Surface {
    /// Whether the component imports any `wasi:` interface.
    pub fn imports_wasi(&self) -> bool {
        self.imports.iter().any(|(n, _)| n.starts_with("wasi:"))
    }
}

/// Validates a component and lists its top-level imports and exports.
pub fn surface(bytes: &[u8]) -> Result<Surface, BuildError> {
    if !wasmparser::Parser::is_component(bytes) {
        return Err(BuildError::Component(
            "not a component (a core module?)".into(),
        ));
    }
    wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all())
        .validate_all(bytes)
        .map_err(|e| component_error("the component does not validate", e))?;
    let mut depth = 0usize;
    let mut s = Surface {
        imports: Vec::new(),
        exports: Vec::new(),
    };
    let read = |e| component_error("reading the component", e);
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        match payload.map_err(read)? {
            Payload::Version { encoding, .. } => {
                depth += 1;
                if depth == 1 && encoding != Encoding::Component {
                    return Err(BuildError::Component("not a component".into()));
                }
            }
            Payload::End(_) => depth -= 1,
            Payload::ComponentImportSection(reader) if depth == 1 => {
                for import in reader {
                    let import = import.map_err(read)?;
                    let kind = match import.ty {
                        ComponentTypeRef::Instance(_) => "instance",
                        ComponentTypeRef::Func(_) => "func",
                        ComponentTypeRef::Type(_) => "type",
                        ComponentTypeRef::Module(_) => "module",
                        ComponentTypeRef::Component(_) => "component",
                        ComponentTypeRef::Value(_) => "value",
                    };
                    s.imports.push((import.name.name.to_owned(), kind));
                }
            }
            Payload::ComponentExportSection(reader) if depth == 1 => {
                for export in reader {
                    let export = export.map_err(read)?;
                    let kind = match export.kind {
                        ComponentExternalKind::Instance => "instance",
                        ComponentExternalKind::Func => "func",
                        ComponentExternalKind::Type => "type",
                        ComponentExternalKind::Module => "module",
                        ComponentExternalKind::Component => "component",
                        ComponentExternalKind::Value => "value",
                    };
                    s.exports.push((export.name.name.to_owned(), kind));
                }
            }
            _ => {}
        }
    }
    Ok(s)
}

/// Checks a plugin component: valid, exports `transform` or `resolve`, and imports nothing
/// outside the contract, except WASI when `allow_wasi` (and then only `wasi:` interfaces).
pub fn check(bytes: &[u8], allow_wasi: bool) -> Result<Surface, BuildError> {
    let s = surface(bytes)?;
    let funcs: Vec<&str> = s
        .exports
        .iter()
        .filter(|(_, k)| *k == "func")
        .map(|(n, _)| n.as_str())
        .collect();
    if !(funcs.contains(&"transform") ^ funcs.contains(&"resolve")) {
        return Err(BuildError::Component(format!(
            "exports neither `transform` nor `resolve`, or both (exports: {funcs:?}); a Rust plugin ends with one `edgerep_guest::export_transform!(Type);` or `edgerep_guest::export_resolver!(Type);`, a Go plugin imports the SDK's transform or resolver package and calls Register in an init function"
        )));
    }
    let foreign: Vec<&str> = s
        .imports
        .iter()
        // Type imports (`event`, `change`, ...: the world's `use` of the contract's types) are
        // equality bounds, not something a host supplies.
        .filter(|(n, k)| {
            *k != "type"
                && !n.starts_with(CONTRACT_PREFIX)
                && !(allow_wasi && n.starts_with("wasi:"))
        })
        .map(|(n, _)| n.as_str())
        .collect();
    if !foreign.is_empty() {
        return Err(BuildError::Component(format!(
            "imports outside {CONTRACT_PREFIX}*{}: {foreign:?}",
            if allow_wasi { " and wasi:*" } else { "" }
        )));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A wasip1-style core module exporting the transform world's function (the canonical ABI
    /// passes the event by pointer and returns a pointer to the result), with one WASI import as
    /// a Go runtime would have.
    fn core_module(export: &str) -> Vec<u8> {
        wat::parse_str(format!(
            r#"(module
                (import "wasi_snapshot_preview1" "proc_exit" (func (param i32)))
                (memory (export "memory") 1)
                (func (export "_initialize"))
                (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32) i32.const 64)
                (func (export "{export}") (param i32) (result i32) i32.const 16)
                (func (export "cabi_post_{export}") (param i32))
            )"#
        ))
        .unwrap()
    }

    #[test]
    fn a_wasip1_module_becomes_a_component_of_its_world() {
        let core = core_module("transform");
        assert_eq!(world_of_module(&core).unwrap(), "transform");
        let wasm = from_wasip1_module(&core).unwrap();
        let s = check(&wasm, true).unwrap();
        assert!(s.exports.contains(&("transform".to_owned(), "func")));
        assert!(s.imports_wasi(), "{:?}", s.imports);
        // Without WASI allowed, the adapter's imports are refused.
        let error = check(&wasm, false).unwrap_err().to_string();
        assert!(
            error.contains("imports outside edgerep:plugin/*"),
            "{error}"
        );
        // The same bytes every time.
        assert_eq!(from_wasip1_module(&core).unwrap(), wasm);
    }

    #[test]
    fn the_world_comes_from_the_exports() {
        let error = world_of_module(&core_module("run"))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("exports neither `transform` nor `resolve`"),
            "{error}"
        );
        let both =
            wat::parse_str(r#"(module (func (export "transform")) (func (export "resolve")))"#)
                .unwrap();
        let error = world_of_module(&both).unwrap_err().to_string();
        assert!(error.contains("both"), "{error}");
        let error = from_module(b"not wasm").unwrap_err().to_string();
        assert!(error.contains("reading the module"), "{error}");
        assert!(surface(&core_module("transform")).is_err());
    }
}
