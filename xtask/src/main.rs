//! edgerep's build tasks, run as `cargo xtask <task>` (an alias in `.cargo/config.toml`). The
//! build logic itself is the `edgerep-build` library; this is a thin caller.
//!
//! - `build-plugins [--toolchain rust,tinygo,go] [NAME...]`: builds the plugins (all, or the named
//!   folders) with each toolchain (default: all three) and writes
//!   `target/plugins/<toolchain>/<folder>.wasm` plus a `SHA256SUMS` file per toolchain; prints each
//!   output's path, size and sha256.
//!   - rust: the crates of `plugins/`, in release for `wasm32-unknown-unknown` (or the target a
//!     plugin asks for in `[package.metadata.edgerep] target`, e.g. `wasi-probe` for
//!     `wasm32-wasip2`), target directory `target/plugins-build`, made components with
//!     `wit-component` (validated);
//!   - go: the folders of `plugins/go/`, with the `go` on PATH (or `$GO`, Go >= 1.24), and
//!   - tinygo: the same folders with TinyGo (`$TINYGO`, or the one `scripts/install-tinygo.sh`
//!     installs in `$EDGEREP_CACHE`), both as wasip1 `c-shared` modules made components with the
//!     `wasi_snapshot_preview1` reactor adapter.
//! - `check-plugins [FILE...]`: validates components (default: every `target/plugins/*/*.wasm`)
//!   and prints their top-level imports and exports; fails if one exports neither `transform`
//!   nor `resolve`, if one imports anything outside `edgerep:plugin` (and, for Go, TinyGo and
//!   WASI Rust plugins, `wasi:`), or if a Go or TinyGo build implements another world than the
//!   Rust build of the same plugin.
//! - `test-plugins`: format check, clippy (native and wasm32) and native tests of the two guest
//!   workspaces (`guest-sdk/rust`, `plugins/`), which the root workspace does not include.
//! - `go-bindings [--check]`: generates the Go SDK's bindings from `wit/` (see `go_bindings.rs`);
//!   `--check` fails, naming the file, if the committed ones differ.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use clap::{Parser, Subcommand};
use edgerep_build::Toolchain;
use edgerep_build::component::{self, CONTRACT_PREFIX};
use edgerep_build::go::{Go, GoToolchain, TinyGo};
use edgerep_build::rust::{CargoBuild, DEFAULT_TARGET, RustPlugin, plugins_in};
use sha2::{Digest, Sha256};

mod go_bindings;

/// Targets `build-plugins` makes sure rustup has installed.
const TARGETS: [&str; 2] = ["wasm32-unknown-unknown", "wasm32-wasip2"];

#[derive(Parser)]
#[command(name = "cargo xtask", about = "edgerep's build tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
#[allow(clippy::enum_variant_names)] // the variants are the command names: build-plugins, ...
enum Task {
    /// Build every plugin (or the named ones) into target/plugins/TOOLCHAIN/NAME.wasm.
    BuildPlugins {
        /// Toolchains, comma-separated or repeated: rust, tinygo, go (default: all three).
        #[arg(long = "toolchain", value_name = "TOOLCHAIN")]
        toolchains: Vec<String>,
        /// Plugin folder names (default: all).
        names: Vec<String>,
    },
    /// Validate plugin components and print their imports and exports.
    CheckPlugins {
        /// Component files (default: target/plugins/*/*.wasm).
        files: Vec<PathBuf>,
    },
    /// Format check, lints (native and wasm) and native tests of guest-sdk/rust and plugins/.
    TestPlugins,
    /// Generate the Go SDK's bindings from wit/ (guest-sdk/go/internal/wit, third_party/go-pkg).
    GoBindings {
        /// Regenerate into a temporary folder and fail if anything differs from the committed files.
        #[arg(long)]
        check: bool,
    },
}

fn main() -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("xtask has no parent directory")?
        .to_path_buf();
    match Cli::parse().task {
        Task::BuildPlugins { toolchains, names } => {
            build_plugins(&root, &names, &parse_toolchains(&toolchains)?)
        }
        Task::CheckPlugins { files } => check_plugins(&root, files),
        Task::TestPlugins => test_plugins(&root),
        Task::GoBindings { check } => go_bindings::run(&root, check),
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

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}

/// The plugins of the plugins workspace (see [`plugins_in`]).
fn plugins_of(root: &Path) -> Result<Vec<RustPlugin>> {
    Ok(plugins_in(&root.join("plugins/Cargo.toml"))?)
}

fn ensure_targets() -> Result<()> {
    Ok(edgerep_build::rust::ensure_targets(
        &TARGETS,
        Path::new("."),
        "xtask",
    )?)
}

/// Which toolchains `build-plugins` runs.
fn parse_toolchains(list: &[String]) -> Result<Vec<Toolchain>> {
    if list.is_empty() {
        return Ok(Toolchain::ALL.to_vec());
    }
    let mut out = Vec::new();
    for name in list.iter().flat_map(|l| l.split(',')) {
        let t = Toolchain::parse(name.trim())
            .with_context(|| format!("unknown toolchain {name:?} (have: rust, tinygo, go)"))?;
        if !out.contains(&t) {
            out.push(t);
        }
    }
    Ok(out)
}

fn build_plugins(root: &Path, names: &[String], toolchains: &[Toolchain]) -> Result<()> {
    // A name must be a plugin of some toolchain; each toolchain builds the named ones it has.
    let rust: Vec<String> = plugins_of(root)?.into_iter().map(|p| p.folder).collect();
    let go: Vec<String> = go_plugins_of(root)?
        .iter()
        .map(|p| folder_name(p).to_owned())
        .collect();
    for name in names {
        ensure!(
            rust.contains(name) || go.contains(name),
            "no plugin named {name:?} in plugins/ (have: {}) or plugins/go/ (have: {})",
            rust.join(", "),
            go.join(", ")
        );
    }
    let mut lines = Vec::new();
    for &toolchain in toolchains {
        let have = if toolchain == Toolchain::Rust {
            &rust
        } else {
            &go
        };
        if !names.is_empty() && !names.iter().any(|n| have.contains(n)) {
            eprintln!("xtask: {toolchain}: none of {} to build", names.join(", "));
            continue;
        }
        lines.extend(match toolchain {
            Toolchain::Rust => build_rust_plugins(root, names)?,
            Toolchain::Go | Toolchain::TinyGo => build_go_plugins(root, names, toolchain)?,
        });
    }
    for line in lines {
        println!("{line}");
    }
    Ok(())
}

/// Keeps the plugins named in `names` (all if empty; `build_plugins` checked the names).
fn select<T>(all: &mut Vec<T>, names: &[String], folder: impl Fn(&T) -> &str) {
    if !names.is_empty() {
        all.retain(|p| names.iter().any(|n| n == folder(p)));
    }
}

/// Writes the components of one toolchain into `target/plugins/<toolchain>/`, with SHA256SUMS
/// and without stale files when every plugin was built; returns one line per output.
fn write_outputs(
    root: &Path,
    toolchain: Toolchain,
    outputs: &[(String, Vec<u8>)],
    complete: bool,
) -> Result<Vec<String>> {
    let out_dir = root.join("target/plugins").join(toolchain.as_str());
    fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let mut sums = String::new();
    let mut lines = Vec::new();
    for (folder, component) in outputs {
        let out = out_dir.join(format!("{folder}.wasm"));
        fs::write(&out, component).with_context(|| format!("writing {}", out.display()))?;
        let sha = hex_sha256(component);
        writeln!(sums, "{sha}  {folder}.wasm").expect("writing to a String");
        let shown = out.strip_prefix(root).unwrap_or(&out).display().to_string();
        lines.push(format!(
            "{shown:<44} {:>9} bytes  sha256 {sha}",
            component.len()
        ));
    }
    if complete {
        fs::write(out_dir.join("SHA256SUMS"), sums).context("writing SHA256SUMS")?;
        // A full build leaves exactly the current plugins: drop outputs of removed ones.
        for entry in fs::read_dir(&out_dir).context("listing the output directory")? {
            let path = entry?.path();
            let stale = path.extension().is_some_and(|e| e == "wasm")
                && !outputs.iter().any(|(folder, _)| {
                    path.file_stem()
                        .is_some_and(|s| s.to_string_lossy() == folder.as_str())
                });
            if stale {
                fs::remove_file(&path)
                    .with_context(|| format!("removing stale {}", path.display()))?;
            }
        }
    }
    Ok(lines)
}

/// Where plugin builds keep their intermediate files: `plugins-build` in cargo's target
/// directory (`CARGO_TARGET_DIR` when set, so a CI cache outside the checkout is reused).
/// The finished components always go to `target/plugins/` of the checkout.
fn build_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("plugins-build")
}

/// The Rust plugins: one `cargo build` per target for all of them, then a component each.
fn build_rust_plugins(root: &Path, names: &[String]) -> Result<Vec<String>> {
    ensure_targets()?;
    let mut all = plugins_of(root)?;
    select(&mut all, names, |p| &p.folder);
    let target_dir = build_dir(root);

    // One cargo invocation per target, every plugin of that target at once.
    let mut by_target: BTreeMap<&str, Vec<&RustPlugin>> = BTreeMap::new();
    for p in &all {
        by_target.entry(&p.target).or_default().push(p);
    }
    for (target, plugins) in &by_target {
        let build = |packages: Vec<String>, quiet: bool| CargoBuild {
            dir: root.join("plugins"),
            packages,
            target: (*target).to_owned(),
            target_dir: target_dir.clone(),
            encoded_rustflags: edgerep_build::rust::remap_flags(root),
            quiet,
        };
        let list: Vec<&str> = plugins.iter().map(|p| p.folder.as_str()).collect();
        eprintln!("xtask: building {} for {target}", list.join(", "));
        if build(plugins.iter().map(|p| p.package.clone()).collect(), false)
            .run()
            .is_err()
        {
            // Name the culprits: build each alone (the others are cached), quietly.
            let failed: Vec<&str> = plugins
                .iter()
                .filter(|p| build(vec![p.package.clone()], true).run().is_err())
                .map(|p| p.folder.as_str())
                .collect();
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

    let mut outputs = Vec::new();
    for p in &all {
        let core = CargoBuild {
            dir: root.join("plugins"),
            packages: Vec::new(),
            target: p.target.clone(),
            target_dir: target_dir.clone(),
            encoded_rustflags: String::new(),
            quiet: true,
        }
        .core_path(&p.lib);
        let bytes = fs::read(&core)
            .with_context(|| format!("plugin {}: reading {}", p.folder, core.display()))?;
        let component = component::from_module(&bytes).with_context(|| {
            format!(
                "plugin {}: making a component of {}",
                p.folder,
                core.display()
            )
        })?;
        component::check(&component, p.target != DEFAULT_TARGET)
            .with_context(|| format!("plugin {}: checking the component", p.folder))?;
        let component =
            edgerep_build::params::embed(component, &root.join("plugins").join(&p.folder))
                .with_context(|| format!("plugin {}: its declared parameters", p.folder))?;
        outputs.push((p.folder.clone(), component));
    }
    write_outputs(root, Toolchain::Rust, &outputs, names.is_empty())
}

/// The Go plugins: the folders of `plugins/go/` that hold Go files.
fn go_plugins_of(root: &Path) -> Result<Vec<PathBuf>> {
    let dir = root.join("plugins/go");
    let mut found = Vec::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir()
            && fs::read_dir(&path)?
                .filter_map(|e| e.ok())
                .any(|e| e.path().extension().is_some_and(|x| x == "go"))
        {
            found.push(path);
        }
    }
    found.sort();
    Ok(found)
}

fn folder_name(path: &Path) -> &str {
    path.file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
}

/// The TinyGo to build with: `$TINYGO`, or the one `scripts/install-tinygo.sh` installs (or
/// finds installed) in `$EDGEREP_CACHE`.
fn tinygo(root: &Path) -> Result<TinyGo> {
    if std::env::var_os("TINYGO").is_none() {
        eprintln!("xtask: scripts/install-tinygo.sh (installs TinyGo once, then reuses it)");
    }
    Ok(TinyGo::locate(root)?)
}

/// The Go plugins with standard Go or TinyGo: a core module each, then a component with the
/// reactor adapter.
fn build_go_plugins(root: &Path, names: &[String], toolchain: Toolchain) -> Result<Vec<String>> {
    let mut all = go_plugins_of(root)?;
    select(&mut all, names, |p| folder_name(p));
    let work_dir = build_dir(root).join(toolchain.as_str());
    let builder = match toolchain {
        Toolchain::Go => {
            let go = Go::find()?;
            eprintln!(
                "xtask: building {} plugins with {} ({})",
                all.len(),
                go.version,
                go.path.display()
            );
            GoToolchain::Go(go)
        }
        _ => {
            let tinygo = tinygo(root)?;
            eprintln!(
                "xtask: building {} plugins with {}",
                all.len(),
                tinygo.version()?
            );
            GoToolchain::TinyGo(tinygo)
        }
    };
    let mut outputs = Vec::new();
    for dir in &all {
        let folder = folder_name(dir);
        eprintln!("xtask: {toolchain}: {folder}");
        let component = builder
            .build_component(dir, &work_dir)
            .with_context(|| format!("plugin {folder} ({toolchain})"))?;
        outputs.push((folder.to_owned(), component));
    }
    write_outputs(root, toolchain, &outputs, names.is_empty())
}

fn check_plugins(root: &Path, files: Vec<PathBuf>) -> Result<()> {
    let files = if files.is_empty() {
        let mut found = Vec::new();
        for toolchain in Toolchain::ALL {
            let dir = root.join("target/plugins").join(toolchain.as_str());
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            let mut these: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "wasm"))
                .collect();
            these.sort();
            found.extend(these);
        }
        ensure!(
            !found.is_empty(),
            "no components in target/plugins/*/ (run `cargo xtask build-plugins` first)"
        );
        found
    } else {
        files
    };
    // The Rust build's world of each plugin, which the Go and TinyGo builds must match.
    let rust_world = |name: &str| -> Option<&'static str> {
        let bytes = fs::read(root.join("target/plugins/rust").join(name)).ok()?;
        world_of(&component::surface(&bytes).ok()?)
    };
    let mut failed = Vec::new();
    for file in &files {
        let bytes = fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        println!(
            "{}  ({} bytes, sha256 {})",
            file.display(),
            bytes.len(),
            hex_sha256(&bytes)
        );
        let toolchain = file
            .parent()
            .and_then(|d| d.file_name())
            .and_then(|d| Toolchain::parse(&d.to_string_lossy()));
        let go_build = matches!(toolchain, Some(Toolchain::Go | Toolchain::TinyGo));
        let result = component::surface(&bytes).and_then(|s| {
            for (name, kind) in &s.imports {
                println!("  import {kind:<8} {name}");
            }
            for (name, kind) in &s.exports {
                println!("  export {kind:<8} {name}");
            }
            component::check(&bytes, go_build || s.imports_wasi())
        });
        let outcome = result.map_err(anyhow::Error::from).and_then(|s| {
            if go_build {
                let name = file.file_name().map(|n| n.to_string_lossy().into_owned());
                if let Some(want) = name.as_deref().and_then(rust_world) {
                    let got = world_of(&s).unwrap_or("none");
                    ensure!(
                        got == want,
                        "implements the {got} world, the Rust build of the plugin the {want} world"
                    );
                }
            }
            Ok(s)
        });
        match outcome {
            Ok(s) if s.imports_wasi() => {
                println!(
                    "  ok (imports WASI: the host answers it deterministically, grants nothing)"
                )
            }
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

/// The world a component's exports name.
fn world_of(s: &component::Surface) -> Option<&'static str> {
    let has = |n: &str| {
        s.exports
            .iter()
            .any(|(name, kind)| name == n && *kind == "func")
    };
    match (has("transform"), has("resolve")) {
        (true, false) => Some("transform"),
        (false, true) => Some("resolver"),
        _ => None,
    }
}

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .fold(String::new(), |mut s, b| {
            write!(s, "{b:02x}").expect("writing to a String");
            s
        })
}
