//! The Go toolchains: standard Go ([`Go`]) and TinyGo ([`TinyGo`]), each building one plugin
//! folder (a Go main package using the edgerep Go SDK) into a wasip1 core module.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{BuildError, Toolchain, component};

/// The oldest standard Go that builds plugins (`//go:wasmexport` with `-buildmode=c-shared`).
pub const GO_MIN: (u32, u32) = (1, 24);

/// Where to get Go.
const GO_HINT: &str = "install Go 1.24 or newer from https://go.dev/dl and put its bin folder on \
                       PATH, or set GO to the go binary";

/// A standard Go toolchain.
#[derive(Clone, Debug)]
pub struct Go {
    /// The `go` binary.
    pub path: PathBuf,
    /// Its version, as `go env GOVERSION` prints it (`go1.26.8`).
    pub version: String,
}

impl Go {
    /// The `go` in `$GO`, or else on `PATH`; fails unless it is Go 1.24 or newer.
    pub fn find() -> Result<Go, BuildError> {
        let path = std::env::var_os("GO")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("go"));
        Go::at(path)
    }

    /// The Go toolchain at `path`; fails unless it is Go 1.24 or newer.
    pub fn at(path: PathBuf) -> Result<Go, BuildError> {
        let out = Command::new(&path)
            .args(["env", "GOVERSION"])
            .env("GOTOOLCHAIN", "local")
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| BuildError::ToolMissing {
                tool: path.display().to_string(),
                message: e.to_string(),
                hint: GO_HINT.into(),
            })?;
        let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !out.status.success() || version.is_empty() {
            return Err(BuildError::ToolMissing {
                tool: path.display().to_string(),
                message: format!("`go env GOVERSION` failed ({})", out.status),
                hint: GO_HINT.into(),
            });
        }
        match parse_go_version(&version) {
            Some(v) if v >= GO_MIN => Ok(Go { path, version }),
            _ => Err(BuildError::ToolTooOld {
                tool: path.display().to_string(),
                found: version,
                needed: format!("go{}.{}", GO_MIN.0, GO_MIN.1),
                hint: GO_HINT.into(),
            }),
        }
    }

    /// Builds the Go main package in `dir` into a wasip1 core module (returned, and left in
    /// `work_dir`):
    /// `GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -trimpath -buildvcs=false
    /// -ldflags="-checklinkname=0 -buildid="`. `-checklinkname=0` lets the bindings' runtime
    /// reach `runtime.sbrk` (for allocations before the Go runtime starts); `-trimpath`, no VCS
    /// stamp and an empty build ID make the bytes depend only on the sources and the toolchain.
    /// `GOTOOLCHAIN=local` keeps the build from fetching another toolchain.
    pub fn build_core(&self, dir: &Path, work_dir: &Path) -> Result<Vec<u8>, BuildError> {
        let out = core_path(dir, work_dir, "go")?;
        let mut cmd = Command::new(&self.path);
        cmd.current_dir(dir)
            .args([
                "build",
                "-buildmode=c-shared",
                "-trimpath",
                "-buildvcs=false",
                "-ldflags=-checklinkname=0 -buildid=",
                "-o",
            ])
            .arg(&out)
            .arg(".");
        go_env(&mut cmd);
        cmd.env("GOOS", "wasip1").env("GOARCH", "wasm");
        run(cmd, &format!("go build (in {})", dir.display()))?;
        std::fs::read(&out).map_err(|e| BuildError::io(&out, e))
    }
}

/// `go1.26.8` → (1, 26); `go1.24rc1` → (1, 24).
fn parse_go_version(v: &str) -> Option<(u32, u32)> {
    let v = v.strip_prefix("go")?;
    let mut parts = v.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Environment shared by both Go toolchains: no cgo, no workspace file, no ambient flags, no
/// toolchain downloads.
fn go_env(cmd: &mut Command) {
    cmd.env("CGO_ENABLED", "0")
        .env("GOWORK", "off")
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "");
}

/// `<work_dir>/<folder name>.<suffix>.core.wasm`, absolute (the build runs in the plugin folder).
fn core_path(dir: &Path, work_dir: &Path, suffix: &str) -> Result<PathBuf, BuildError> {
    let name = dir
        .file_name()
        .ok_or_else(|| BuildError::io(dir, "a plugin folder has a name"))?
        .to_string_lossy()
        .into_owned();
    std::fs::create_dir_all(work_dir).map_err(|e| BuildError::io(work_dir, e))?;
    let work_dir = std::path::absolute(work_dir).map_err(|e| BuildError::io(work_dir, e))?;
    Ok(work_dir.join(format!("{name}.{suffix}.core.wasm")))
}

/// Runs a build command, its output going to our stderr.
fn run(mut cmd: Command, what: &str) -> Result<(), BuildError> {
    let status = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .status()
        .map_err(|e| BuildError::ToolMissing {
            tool: cmd.get_program().to_string_lossy().into_owned(),
            message: e.to_string(),
            hint: "see the README's toolchain section".into(),
        })?;
    if !status.success() {
        return Err(BuildError::Failed {
            what: what.to_owned(),
            status: status.to_string(),
            output: String::new(),
        });
    }
    Ok(())
}

/// A TinyGo toolchain: the `tinygo` binary, and optionally an `env.sh` to source first (what the
/// repository's `scripts/install-tinygo.sh` writes next to the binary: TINYGOROOT, GOROOT of
/// the Go release TinyGo supports, PATH with its LLVM tools).
#[derive(Clone, Debug)]
pub struct TinyGo {
    /// The `tinygo` binary.
    pub path: PathBuf,
    /// A shell file to source before running it, if any.
    pub env_file: Option<PathBuf>,
}

/// The TinyGo version plugins build with (the pin of `scripts/install-tinygo.sh`).
const TINYGO_VERSION: &str = "0.41.1";

/// Where to get TinyGo.
const TINYGO_HINT: &str = "run scripts/install-tinygo.sh from the edgerep repository, or set \
                           TINYGO to a tinygo binary";

impl TinyGo {
    /// TinyGo at `path`, with the `env.sh` next to it if there is one.
    pub fn at(path: PathBuf) -> TinyGo {
        let env_file = path
            .parent()
            .map(|d| d.join("env.sh"))
            .filter(|f| f.is_file());
        TinyGo { path, env_file }
    }

    /// TinyGo as the project finds it: `$TINYGO` if set, otherwise what the checkout's
    /// `scripts/install-tinygo.sh` installs (once, into a cache outside the repository) and
    /// prints as its last line.
    pub fn locate(checkout: &Path) -> Result<TinyGo, BuildError> {
        if let Some(path) = std::env::var_os("TINYGO") {
            return Ok(TinyGo::at(PathBuf::from(path)));
        }
        // One on the PATH, of the pinned version only: another builds other bytes (another
        // sha256 than the rest of the fleet's).
        let on_path = std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .map(|dir| dir.join("tinygo"))
            .find(|p| p.is_absolute() && p.is_file());
        if let Some(path) = on_path {
            let version = Command::new(&path)
                .arg("version")
                .output()
                .ok()
                .filter(|out| out.status.success())
                .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned());
            match version {
                Some(v) if v.contains(&format!("tinygo version {TINYGO_VERSION} ")) => {
                    return Ok(TinyGo::at(path));
                }
                v => eprintln!(
                    "edgerep: the tinygo at {} is not the pinned {TINYGO_VERSION} ({}): another version builds other bytes (another sha256 than the fleet's), so the pinned one is used; set TINYGO={} to use it anyway",
                    path.display(),
                    v.as_deref().unwrap_or("`tinygo version` failed"),
                    path.display()
                ),
            }
        }
        let script = checkout.join("scripts/install-tinygo.sh");
        let cache = std::env::var_os("EDGEREP_CACHE")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/edgerep")));
        if !cache.is_some_and(|c| c.join(format!("tinygo-{TINYGO_VERSION}")).is_dir()) {
            eprintln!(
                "edgerep: installing TinyGo {TINYGO_VERSION} once with {} (Debian packages for LLVM, Go and a TinyGo build from source into the cache: minutes, and root for apt-get); set TINYGO to a tinygo {TINYGO_VERSION} binary instead",
                script.display()
            );
        }
        let failed = |message: String| BuildError::ToolMissing {
            tool: "tinygo".to_owned(),
            message,
            hint: TINYGO_HINT.to_owned(),
        };
        if !script.is_file() {
            return Err(failed(format!("{} is missing", script.display())));
        }
        let out = Command::new("bash")
            .arg(&script)
            .env("EDGEREP_TINYGO_QUIET", "1")
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| failed(format!("running {}: {e}", script.display())))?;
        if !out.status.success() {
            return Err(failed(format!(
                "{} failed ({}): see its output above",
                script.display(),
                out.status
            )));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let path = stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(|l| PathBuf::from(l.trim()))
            .ok_or_else(|| failed(format!("{} printed no tinygo path", script.display())))?;
        if !path.is_file() {
            return Err(failed(format!(
                "{} printed {}, which is not a file",
                script.display(),
                path.display()
            )));
        }
        Ok(TinyGo::at(path))
    }

    /// A command running `tinygo` with `args`, inside the environment of `env_file`.
    fn command(&self, args: &[&str]) -> Command {
        match &self.env_file {
            None => {
                let mut cmd = Command::new(&self.path);
                cmd.args(args);
                cmd
            }
            Some(env) => {
                // `. env.sh`, then exec tinygo with the arguments as they are (no shell quoting).
                let mut cmd = Command::new("sh");
                cmd.arg("-c")
                    .arg(". \"$0\" && exec \"$@\"")
                    .arg(env)
                    .arg(&self.path)
                    .args(args);
                cmd
            }
        }
    }

    /// `tinygo version`'s output (also a check that it runs).
    pub fn version(&self) -> Result<String, BuildError> {
        let out = self
            .command(&["version"])
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| BuildError::ToolMissing {
                tool: self.path.display().to_string(),
                message: e.to_string(),
                hint: TINYGO_HINT.into(),
            })?;
        if !out.status.success() {
            return Err(BuildError::ToolMissing {
                tool: self.path.display().to_string(),
                message: format!(
                    "`tinygo version` failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
                hint: TINYGO_HINT.into(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Builds the Go main package in `dir` into a wasip1 core module (returned, and left in
    /// `work_dir`): `tinygo build -target=wasip1 -buildmode=c-shared -no-debug -opt=z
    /// -scheduler=none`. No debug information (smaller, and no paths in the module), size
    /// optimization, and no goroutine scheduler (plugins have no goroutines; without it TinyGo
    /// needs no asyncify pass, which makes modules bigger and calls slower).
    pub fn build_core(&self, dir: &Path, work_dir: &Path) -> Result<Vec<u8>, BuildError> {
        let out = core_path(dir, work_dir, "tinygo")?;
        let out_arg: OsString = out.clone().into_os_string();
        let out_str = out_arg.to_string_lossy().into_owned();
        let mut cmd = self.command(&[
            "build",
            "-target=wasip1",
            "-buildmode=c-shared",
            "-no-debug",
            "-opt=z",
            "-scheduler=none",
            "-o",
            &out_str,
            ".",
        ]);
        cmd.current_dir(dir);
        go_env(&mut cmd);
        run(cmd, &format!("tinygo build (in {})", dir.display()))?;
        std::fs::read(&out).map_err(|e| BuildError::io(&out, e))
    }
}

/// Either Go toolchain, for code that builds with whichever it was given.
#[derive(Clone, Debug)]
pub enum GoToolchain {
    /// Standard Go.
    Go(Go),
    /// TinyGo.
    TinyGo(TinyGo),
}

impl GoToolchain {
    /// Which toolchain this is.
    pub fn toolchain(&self) -> Toolchain {
        match self {
            GoToolchain::Go(_) => Toolchain::Go,
            GoToolchain::TinyGo(_) => Toolchain::TinyGo,
        }
    }

    /// The core module of the plugin in `dir` ([`Go::build_core`], [`TinyGo::build_core`]).
    pub fn build_core(&self, dir: &Path, work_dir: &Path) -> Result<Vec<u8>, BuildError> {
        match self {
            GoToolchain::Go(go) => go.build_core(dir, work_dir),
            GoToolchain::TinyGo(tinygo) => tinygo.build_core(dir, work_dir),
        }
    }

    /// The checked component of the plugin in `dir`: [`GoToolchain::build_core`], then
    /// [`component::from_wasip1_module`] and [`component::check`].
    pub fn build_component(&self, dir: &Path, work_dir: &Path) -> Result<Vec<u8>, BuildError> {
        let core = self.build_core(dir, work_dir)?;
        let wasm = component::from_wasip1_module(&core)?;
        component::check(&wasm, true)?;
        crate::params::embed(wasm, dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_versions() {
        assert_eq!(parse_go_version("go1.26.8"), Some((1, 26)));
        assert_eq!(parse_go_version("go1.24rc1"), Some((1, 24)));
        assert_eq!(parse_go_version("go1.9"), Some((1, 9)));
        assert!(parse_go_version("go1.9") < Some(GO_MIN));
        assert!(parse_go_version("go1.24.0") >= Some(GO_MIN));
        assert_eq!(parse_go_version("devel"), None);
    }
}
