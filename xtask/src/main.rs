//! edgerep's build tasks, run as `cargo xtask <task>` (an alias in `.cargo/config.toml`).
//!
//! - `build-plugins [NAME...]`: builds the plugins in `plugins/` (all, or the named folders) in
//!   release for `wasm32-unknown-unknown` (or the target a plugin asks for in
//!   `[package.metadata.edgerep] target`, e.g. `wasi-probe` for `wasm32-wasip2`), with their own
//!   target directory `target/plugins-build`, turns each core module into a component with
//!   `wit-component` (validated), and writes `target/plugins/rust/<folder>.wasm` plus a
//!   `SHA256SUMS` file; prints each output's path, size and sha256.
//! - `check-plugins [FILE...]`: validates components (default: every `target/plugins/rust/*.wasm`)
//!   and prints their top-level imports and exports; fails if one that is not a WASI plugin
//!   imports anything outside `edgerep:plugin`, or if one exports neither `transform` nor
//!   `resolve`.
//! - `test-plugins`: format check, clippy (native and wasm32) and native tests of the two guest
//!   workspaces (`guest-sdk/rust`, `plugins/`), which the root workspace does not include.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use clap::{Parser, Subcommand};
use sha2::{Digest, Sha256};
use wasmparser::{ComponentExternalKind, ComponentTypeRef, Encoding, Payload};

/// The target a plugin is built for unless its manifest says otherwise.
const DEFAULT_TARGET: &str = "wasm32-unknown-unknown";
/// Targets `build-plugins` makes sure rustup has installed.
const TARGETS: [&str; 2] = ["wasm32-unknown-unknown", "wasm32-wasip2"];
/// The only import namespace a deterministic (non-WASI) plugin may use.
const CONTRACT_PREFIX: &str = "edgerep:plugin/";

#[derive(Parser)]
#[command(name = "cargo xtask", about = "edgerep's build tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
#[allow(clippy::enum_variant_names)] // the variants are the command names: build-plugins, ...
enum Task {
    /// Build every plugin in plugins/ (or the named ones) into target/plugins/rust/NAME.wasm.
    BuildPlugins {
        /// Plugin folder names (default: all).
        names: Vec<String>,
    },
    /// Validate plugin components and print their imports and exports.
    CheckPlugins {
        /// Component files (default: target/plugins/rust/*.wasm).
        files: Vec<PathBuf>,
    },
    /// Format check, lints (native and wasm) and native tests of guest-sdk/rust and plugins/.
    TestPlugins,
}

fn main() -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("xtask has no parent directory")?
        .to_path_buf();
    match Cli::parse().task {
        Task::BuildPlugins { names } => build_plugins(&root, &names),
        Task::CheckPlugins { files } => check_plugins(&root, files),
        Task::TestPlugins => test_plugins(&root),
    }
}

/// Runs `cargo <args>` in `dir`, failing with `what` if it fails.
fn run_cargo(dir: &Path, args: &[&str], what: &str) -> Result<()> {
    eprintln!("xtask: ({}) cargo {}", what, args.join(" "));
    let status = Command::new(cargo())
        .current_dir(dir)
        .args(args)
        .env_remove("RUSTFLAGS")
        .status()
        .with_context(|| format!("running cargo for {what}"))?;
    ensure!(status.success(), "{what}: cargo {} failed", args.join(" "));
    Ok(())
}

/// The checks of the two guest workspaces, which `cargo test --workspace` at the root does not
/// see. Their target directories come from their `.cargo/config.toml` (under `target/`).
fn test_plugins(root: &Path) -> Result<()> {
    ensure_targets()?;
    let sdk = root.join("guest-sdk/rust");
    let plugins = root.join("plugins");
    fn clippy<'a>(extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec!["clippy", "--locked", "--all-targets"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--", "-D", "warnings"]);
        args
    }
    run_cargo(&sdk, &["fmt", "--check"], "guest-sdk/rust")?;
    run_cargo(&sdk, &clippy(&[]), "guest-sdk/rust")?;
    run_cargo(
        &sdk,
        &clippy(&["--target", DEFAULT_TARGET]),
        "guest-sdk/rust",
    )?;
    run_cargo(&sdk, &["test", "--locked"], "guest-sdk/rust")?;
    run_cargo(&plugins, &["fmt", "--all", "--check"], "plugins")?;
    run_cargo(&plugins, &clippy(&["--workspace"]), "plugins")?;
    let all = plugins_of(root)?;
    let mut wasm_clippy = vec![
        "--workspace",
        "--exclude",
        "conformance",
        "--target",
        DEFAULT_TARGET,
    ];
    for p in all.iter().filter(|p| p.target != DEFAULT_TARGET) {
        wasm_clippy.extend(["--exclude", p.package.as_str()]);
    }
    run_cargo(&plugins, &clippy(&wasm_clippy), "plugins")?;
    run_cargo(&plugins, &["test", "--locked", "--workspace"], "plugins")?;
    Ok(())
}

/// One plugin crate of the `plugins/` workspace.
#[derive(Debug)]
struct Plugin {
    /// Folder name: the output is `<folder>.wasm`.
    folder: String,
    /// Cargo package name.
    package: String,
    /// Name of the `cdylib` target (the core module is `<lib>.wasm`, with `_` for `-`).
    lib: String,
    /// Rust target triple.
    target: String,
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}

/// Reads the plugins from `cargo metadata` of the plugins workspace: every member with a
/// `cdylib` target is a plugin.
fn plugins_of(root: &Path) -> Result<Vec<Plugin>> {
    let manifest = root.join("plugins/Cargo.toml");
    let out = Command::new(cargo())
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--manifest-path",
        ])
        .arg(&manifest)
        .output()
        .context("running cargo metadata")?;
    if !out.status.success() {
        bail!(
            "cargo metadata --manifest-path {} failed:\n{}",
            manifest.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("parsing cargo metadata")?;
    let mut plugins = Vec::new();
    for package in meta["packages"].as_array().context("no packages")? {
        let name = package["name"].as_str().context("package without a name")?;
        let Some(lib) = package["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|t| {
                t["crate_types"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|c| c == "cdylib"))
            })
        else {
            continue;
        };
        let manifest_path = package["manifest_path"]
            .as_str()
            .context("package without a manifest path")?;
        let folder = Path::new(manifest_path)
            .parent()
            .and_then(Path::file_name)
            .and_then(|f| f.to_str())
            .with_context(|| format!("no folder for {manifest_path}"))?;
        let target = package["metadata"]["edgerep"]["target"]
            .as_str()
            .unwrap_or(DEFAULT_TARGET);
        plugins.push(Plugin {
            folder: folder.to_owned(),
            package: name.to_owned(),
            lib: lib["name"]
                .as_str()
                .context("target without a name")?
                .replace('-', "_"),
            target: target.to_owned(),
        });
    }
    plugins.sort_by(|a, b| a.folder.cmp(&b.folder));
    Ok(plugins)
}

fn ensure_targets() -> Result<()> {
    let installed = match Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
    {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).into_owned(),
        _ => {
            eprintln!("xtask: rustup not usable; assuming the wasm targets are installed");
            return Ok(());
        }
    };
    let missing: Vec<&str> = TARGETS
        .into_iter()
        .filter(|t| !installed.lines().any(|l| l.trim() == *t))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: rustup target add {}", missing.join(" "));
    let status = Command::new("rustup")
        .args(["target", "add"])
        .args(&missing)
        .status()
        .context("running rustup target add")?;
    ensure!(
        status.success(),
        "rustup target add {} failed",
        missing.join(" ")
    );
    Ok(())
}

/// `RUSTFLAGS` that keep this machine's paths out of the modules (panic messages name source
/// files), so the same sources give the same bytes on every machine.
fn remap_flags(root: &Path) -> String {
    let mut flags = Vec::new();
    if let Some(home) = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
    {
        flags.push(format!("--remap-path-prefix={}=/cargo", home.display()));
    }
    flags.push(format!("--remap-path-prefix={}=/edgerep", root.display()));
    flags.join("\x1f")
}

fn build_plugins(root: &Path, names: &[String]) -> Result<()> {
    ensure_targets()?;
    let mut all = plugins_of(root)?;
    if !names.is_empty() {
        for name in names {
            ensure!(
                all.iter().any(|p| &p.folder == name),
                "no plugin named {name:?} in plugins/ (have: {})",
                all.iter()
                    .map(|p| p.folder.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        all.retain(|p| names.contains(&p.folder));
    }
    let target_dir = root.join("target/plugins-build");
    let out_dir = root.join("target/plugins/rust");

    // One cargo invocation per target, every plugin of that target at once.
    let mut by_target: BTreeMap<&str, Vec<&Plugin>> = BTreeMap::new();
    for p in &all {
        by_target.entry(&p.target).or_default().push(p);
    }
    // The plugin build's flags are ours alone: ambient RUSTFLAGS are meant for the host build
    // (say `-C target-cpu=native`) and would make the modules differ between machines.
    let rustflags = remap_flags(root);
    for (target, plugins) in &by_target {
        let mut cmd = Command::new(cargo());
        cmd.current_dir(root.join("plugins"))
            .args(["build", "--release", "--locked", "--target", target])
            .arg("--target-dir")
            .arg(&target_dir)
            .env("CARGO_ENCODED_RUSTFLAGS", &rustflags)
            .env_remove("RUSTFLAGS");
        for p in plugins {
            cmd.args(["-p", &p.package]);
        }
        let list: Vec<&str> = plugins.iter().map(|p| p.folder.as_str()).collect();
        eprintln!("xtask: building {} for {target}", list.join(", "));
        let status = cmd
            .status()
            .with_context(|| format!("running cargo build for {}", list.join(", ")))?;
        if !status.success() {
            // Name the culprits: build each alone (the others are cached), quietly.
            let mut failed = Vec::new();
            for p in plugins {
                let ok = Command::new(cargo())
                    .current_dir(root.join("plugins"))
                    .args(["build", "-q", "--release", "--locked", "--target", target])
                    .arg("--target-dir")
                    .arg(&target_dir)
                    .args(["-p", &p.package])
                    .env("CARGO_ENCODED_RUSTFLAGS", &rustflags)
                    .env_remove("RUSTFLAGS")
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                if !ok {
                    failed.push(p.folder.as_str());
                }
            }
            bail!(
                "plugin(s) {} failed to build for {target} (see the errors above)",
                if failed.is_empty() {
                    list.join(", ")
                } else {
                    failed.join(", ")
                }
            );
        }
    }

    fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let mut sums = String::new();
    let mut lines = Vec::new();
    for p in &all {
        let core = target_dir
            .join(&p.target)
            .join("release")
            .join(format!("{}.wasm", p.lib));
        let bytes = fs::read(&core)
            .with_context(|| format!("plugin {}: reading {}", p.folder, core.display()))?;
        let component = if wasmparser::Parser::is_component(&bytes) {
            bytes
        } else {
            componentize(&bytes).with_context(|| {
                format!(
                    "plugin {}: making a component of {}",
                    p.folder,
                    core.display()
                )
            })?
        };
        check_component(&component, p.target != DEFAULT_TARGET)
            .with_context(|| format!("plugin {}: checking the component", p.folder))?;
        let out = out_dir.join(format!("{}.wasm", p.folder));
        fs::write(&out, &component)
            .with_context(|| format!("plugin {}: writing {}", p.folder, out.display()))?;
        let sha = hex_sha256(&component);
        writeln!(sums, "{sha}  {}.wasm", p.folder).expect("writing to a String");
        let shown = out.strip_prefix(root).unwrap_or(&out).display().to_string();
        lines.push(format!(
            "{shown:<40} {:>8} bytes  sha256 {sha}",
            component.len()
        ));
    }
    if names.is_empty() {
        fs::write(out_dir.join("SHA256SUMS"), sums).context("writing SHA256SUMS")?;
        // A full build leaves exactly the current plugins: drop outputs of removed ones.
        for entry in fs::read_dir(&out_dir).context("listing the output directory")? {
            let path = entry?.path();
            let stale = path.extension().is_some_and(|e| e == "wasm")
                && !all.iter().any(|p| {
                    path.file_stem()
                        .is_some_and(|s| s.to_string_lossy() == p.folder)
                });
            if stale {
                fs::remove_file(&path)
                    .with_context(|| format!("removing stale {}", path.display()))?;
            }
        }
    }
    for line in lines {
        println!("{line}");
    }
    Ok(())
}

/// Turns a core module carrying wit-bindgen's `component-type` custom sections into a component.
fn componentize(module: &[u8]) -> Result<Vec<u8>> {
    let module = drop_import_only_worlds(module)?;
    wit_component::ComponentEncoder::default()
        .module(&module)?
        .validate(true)
        .encode()
}

/// Drops the import-only `component-type` sections when the module has a complete one.
///
/// The SDK generates bindings for both worlds, and with `pub_export_macro` wit-bindgen emits, for
/// each, a section with only the world's imports (the `transform` and `resolver` worlds without
/// their exports); the plugin's `export_transform!`/`export_resolver!` emits the complete world
/// ("imports and exports"). wit-component merges all of them, which is correct but leaves a
/// transform importing the type `resolution` (and a resolver the type `change`): harmless
/// type-equality imports, but noise. Keeping only the complete world gives each component
/// exactly its world.
fn drop_import_only_worlds(module: &[u8]) -> Result<Vec<u8>> {
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
            let range = usize::try_from(range.start)?..usize::try_from(range.end)?;
            out.push(id);
            let mut len = range.len() as u64;
            loop {
                let byte = (len & 0x7f) as u8;
                len >>= 7;
                if len == 0 {
                    out.push(byte);
                    break;
                }
                out.push(byte | 0x80);
            }
            out.extend_from_slice(&module[range]);
        }
    }
    Ok(out)
}

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .fold(String::new(), |mut s, b| {
            write!(s, "{b:02x}").expect("writing to a String");
            s
        })
}

/// Top-level imports and exports of a component: (name, kind).
struct Surface {
    imports: Vec<(String, &'static str)>,
    exports: Vec<(String, &'static str)>,
}

fn surface(bytes: &[u8]) -> Result<Surface> {
    ensure!(
        wasmparser::Parser::is_component(bytes),
        "not a component (a core module?)"
    );
    wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all())
        .validate_all(bytes)
        .context("component does not validate")?;
    let mut depth = 0usize;
    let mut s = Surface {
        imports: Vec::new(),
        exports: Vec::new(),
    };
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        match payload? {
            Payload::Version { encoding, .. } => {
                depth += 1;
                ensure!(
                    depth > 1 || encoding == Encoding::Component,
                    "not a component"
                );
            }
            Payload::End(_) => depth -= 1,
            Payload::ComponentImportSection(reader) if depth == 1 => {
                for import in reader {
                    let import = import?;
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
                    let export = export?;
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

/// Checks a plugin component: valid, exports `transform` or `resolve`, and (unless `wasi`)
/// imports nothing outside the contract.
fn check_component(bytes: &[u8], wasi: bool) -> Result<Surface> {
    let s = surface(bytes)?;
    let funcs: Vec<&str> = s
        .exports
        .iter()
        .filter(|(_, k)| *k == "func")
        .map(|(n, _)| n.as_str())
        .collect();
    ensure!(
        funcs.contains(&"transform") || funcs.contains(&"resolve"),
        "exports neither `transform` nor `resolve` (exports: {funcs:?})"
    );
    if !wasi {
        let foreign: Vec<&str> = s
            .imports
            .iter()
            // Type imports (`event`, `change`, ...: the world's `use` of the contract's types)
            // are equality bounds, not something a host supplies.
            .filter(|(n, k)| *k != "type" && !n.starts_with(CONTRACT_PREFIX))
            .map(|(n, _)| n.as_str())
            .collect();
        ensure!(
            foreign.is_empty(),
            "imports outside {CONTRACT_PREFIX}*: {foreign:?} (only wasm32-wasip2 plugins may import WASI)"
        );
    }
    Ok(s)
}

fn check_plugins(root: &Path, files: Vec<PathBuf>) -> Result<()> {
    let files = if files.is_empty() {
        let dir = root.join("target/plugins/rust");
        let mut found: Vec<PathBuf> = fs::read_dir(&dir)
            .with_context(|| {
                format!(
                    "reading {} (run `cargo xtask build-plugins` first)",
                    dir.display()
                )
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "wasm"))
            .collect();
        found.sort();
        found
    } else {
        files
    };
    ensure!(!files.is_empty(), "no components to check");
    let mut failed = Vec::new();
    for file in &files {
        let bytes = fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        println!(
            "{}  ({} bytes, sha256 {})",
            file.display(),
            bytes.len(),
            hex_sha256(&bytes)
        );
        let s = match surface(&bytes) {
            Ok(s) => s,
            Err(e) => {
                println!("  FAILED: {e:#}");
                failed.push(file.display().to_string());
                continue;
            }
        };
        let wasi = s.imports.iter().any(|(n, _)| n.starts_with("wasi:"));
        for (name, kind) in &s.imports {
            println!("  import {kind:<8} {name}");
        }
        for (name, kind) in &s.exports {
            println!("  export {kind:<8} {name}");
        }
        match check_component(&bytes, wasi) {
            Ok(_) if wasi => println!("  ok (imports WASI: only for hosts that provide it)"),
            Ok(_) => println!("  ok (no imports outside {CONTRACT_PREFIX}*)"),
            Err(e) => {
                println!("  FAILED: {e:#}");
                failed.push(file.display().to_string());
            }
        }
    }
    ensure!(failed.is_empty(), "check failed for: {}", failed.join(", "));
    Ok(())
}
