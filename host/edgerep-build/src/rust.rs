//! Rust plugins: `cargo build` of `cdylib` crates for a wasm target.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::BuildError;

/// The target a Rust plugin is built for unless its manifest asks for another one
/// (`[package.metadata.edgerep] target = "..."`).
pub const DEFAULT_TARGET: &str = "wasm32-unknown-unknown";

/// A plugin crate as `cargo metadata` describes it: a package with a `cdylib` target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RustPlugin {
    /// Its folder's name (the output of the first-party build is `<folder>.wasm`).
    pub folder: String,
    /// The Cargo package name.
    pub package: String,
    /// The `cdylib` target's name (the core module is `<lib>.wasm`, with `_` for `-`), which
    /// `[lib] name` may set apart from the package's.
    pub lib: String,
    /// The Rust target triple: `[package.metadata.edgerep] target`, or [`DEFAULT_TARGET`].
    pub target: String,
    /// Its `Cargo.toml`, as cargo names it (absolute).
    pub manifest: PathBuf,
}

/// The plugins of the workspace or package at `manifest` (its `Cargo.toml`): every package with
/// a `cdylib` target, by folder name. For a workspace member, every plugin of its workspace.
pub fn plugins_in(manifest: &Path) -> Result<Vec<RustPlugin>, BuildError> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let out = Command::new(&cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--manifest-path",
        ])
        .arg(manifest)
        .output()
        .map_err(|e| BuildError::ToolMissing {
            tool: cargo.clone(),
            message: e.to_string(),
            hint: "install Rust with rustup (https://rustup.rs)".into(),
        })?;
    if !out.status.success() {
        return Err(BuildError::Failed {
            what: format!("cargo metadata --manifest-path {}", manifest.display()),
            status: out.status.to_string(),
            output: format!("\n{}", String::from_utf8_lossy(&out.stderr).trim_end()),
        });
    }
    let bad = |what: &str| BuildError::io(manifest, format!("cargo metadata: {what}"));
    let meta: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| bad(&e.to_string()))?;
    let mut plugins = Vec::new();
    for package in meta["packages"]
        .as_array()
        .ok_or_else(|| bad("no packages"))?
    {
        let name = package["name"]
            .as_str()
            .ok_or_else(|| bad("a package without a name"))?;
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
            .ok_or_else(|| bad(&format!("package {name} without a manifest path")))?;
        let folder = Some(Path::new(manifest_path))
            .and_then(Path::parent)
            .and_then(Path::file_name)
            .and_then(|f| f.to_str())
            .ok_or_else(|| bad(&format!("no folder for package {name}")))?;
        plugins.push(RustPlugin {
            folder: folder.to_owned(),
            package: name.to_owned(),
            lib: lib["name"]
                .as_str()
                .ok_or_else(|| bad(&format!("package {name}: a target without a name")))?
                .replace('-', "_"),
            target: package["metadata"]["edgerep"]["target"]
                .as_str()
                .unwrap_or(DEFAULT_TARGET)
                .to_owned(),
            manifest: PathBuf::from(manifest_path),
        });
    }
    plugins.sort_by(|a, b| a.folder.cmp(&b.folder));
    Ok(plugins)
}

/// One `cargo build --release --locked --target <target>` of some packages of a workspace.
#[derive(Clone, Debug)]
pub struct CargoBuild {
    /// The folder to run cargo in (the workspace, or a plugin crate).
    pub dir: PathBuf,
    /// Packages to build (`-p`); empty: the folder's package.
    pub packages: Vec<String>,
    /// The Rust target triple.
    pub target: String,
    /// The target directory.
    pub target_dir: PathBuf,
    /// `CARGO_ENCODED_RUSTFLAGS` (flags separated by 0x1f); ambient `RUSTFLAGS` are dropped, so
    /// the modules do not depend on flags meant for the host build.
    pub encoded_rustflags: String,
    /// Quiet, with output discarded (to find which package of a failed build fails).
    pub quiet: bool,
}

/// Installs with `rustup target add` the `targets` rustup does not list as installed for the
/// toolchain `dir` builds with (its `rust-toolchain.toml`, if any), saying so on stderr
/// (prefixed `who`). Without a usable rustup they are assumed installed (the build then says
/// what is missing).
pub fn ensure_targets(targets: &[&str], dir: &Path, who: &str) -> Result<(), BuildError> {
    let installed = match Command::new("rustup")
        .current_dir(dir)
        .args(["target", "list", "--installed"])
        .output()
    {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).into_owned(),
        _ => {
            eprintln!("{who}: rustup not usable; assuming the targets {targets:?} are installed");
            return Ok(());
        }
    };
    let missing: Vec<&str> = targets
        .iter()
        .copied()
        .filter(|t| !installed.lines().any(|l| l.trim() == *t))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let what = format!("rustup target add {}", missing.join(" "));
    eprintln!("{who}: {what}");
    let status = Command::new("rustup")
        .current_dir(dir)
        .args(["target", "add"])
        .args(&missing)
        .status()
        .map_err(|e| BuildError::ToolMissing {
            tool: "rustup".into(),
            message: e.to_string(),
            hint: "install Rust with rustup (https://rustup.rs)".into(),
        })?;
    if !status.success() {
        return Err(BuildError::Failed {
            what,
            status: status.to_string(),
            output: String::new(),
        });
    }
    Ok(())
}

impl CargoBuild {
    /// Runs the build.
    pub fn run(&self) -> Result<(), BuildError> {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let mut cmd = Command::new(&cargo);
        cmd.current_dir(&self.dir)
            .args(["build", "--release", "--locked", "--target", &self.target])
            .arg("--target-dir")
            .arg(&self.target_dir)
            .env("CARGO_ENCODED_RUSTFLAGS", &self.encoded_rustflags)
            .env_remove("RUSTFLAGS");
        for p in &self.packages {
            cmd.args(["-p", p]);
        }
        if self.quiet {
            cmd.arg("-q").stdout(Stdio::null()).stderr(Stdio::null());
        }
        let status = cmd.status().map_err(|e| BuildError::ToolMissing {
            tool: cargo.clone(),
            message: e.to_string(),
            hint: "install Rust with rustup (https://rustup.rs)".into(),
        })?;
        if !status.success() {
            return Err(BuildError::Failed {
                what: format!(
                    "cargo build --target {}{} (in {})",
                    self.target,
                    self.packages
                        .iter()
                        .map(|p| format!(" -p {p}"))
                        .collect::<String>(),
                    self.dir.display()
                ),
                status: status.to_string(),
                output: String::new(),
            });
        }
        Ok(())
    }

    /// Where the core module of the library `lib` (its crate name, `-` as `_`) ends up.
    pub fn core_path(&self, lib: &str) -> PathBuf {
        self.target_dir
            .join(&self.target)
            .join("release")
            .join(format!("{}.wasm", lib.replace('-', "_")))
    }
}

/// `RUSTFLAGS` (encoded) that keep this machine's paths out of the modules (panic messages name
/// source files), so the same sources give the same bytes on every machine: the cargo home
/// becomes `/cargo` and `root` becomes `/edgerep`.
pub fn remap_flags(root: &Path) -> String {
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
