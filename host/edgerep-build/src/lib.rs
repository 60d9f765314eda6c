//! edgerep's plugin builds: from a plugin folder to a WebAssembly component that implements a
//! world of `wit/plugin.wit`, with any of the three toolchains edgerep supports.
//!
//! - [`Toolchain::Rust`]: `cargo build --release` of a `cdylib` for `wasm32-unknown-unknown` (or
//!   the target the crate asks for); the module carries wit-bindgen's `component-type` sections,
//!   so [`component::from_module`] makes the component without an adapter.
//! - [`Toolchain::Go`]: `GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared` ([`go::Go`]).
//! - [`Toolchain::TinyGo`]: `tinygo build -target=wasip1 -buildmode=c-shared` ([`go::TinyGo`]).
//!
//! Both Go toolchains give a wasip1 core module with `//go:wasmexport` functions;
//! [`component::from_wasip1_module`] embeds the world its exports name and makes the component
//! with the `wasi_snapshot_preview1` reactor adapter (the one that matches wasmtime 48).
//!
//! ```no_run
//! use std::path::Path;
//! use edgerep_build::{component, go::Go};
//! # fn main() -> Result<(), edgerep_build::BuildError> {
//! let go = Go::find()?;
//! let core = go.build_core(Path::new("plugins/go/redact"), Path::new("target/tmp"))?;
//! let wasm = component::from_wasip1_module(&core)?;
//! component::check(&wasm, true)?;
//! # Ok(()) }
//! ```
//!
//! Builds are reproducible: the same sources and toolchain versions give the same bytes (paths
//! are trimmed or remapped, build IDs and VCS stamps left out).

use std::fmt;
use std::path::PathBuf;

pub mod component;
pub mod go;
pub mod params;
pub mod rust;

/// The toolchains a plugin can be built with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Toolchain {
    /// Rust (`cargo`), for `wasm32-unknown-unknown`.
    Rust,
    /// TinyGo, `-target=wasip1`.
    TinyGo,
    /// The standard Go toolchain, `GOOS=wasip1 GOARCH=wasm`.
    Go,
}

impl Toolchain {
    /// Every toolchain.
    pub const ALL: [Toolchain; 3] = [Toolchain::Rust, Toolchain::TinyGo, Toolchain::Go];

    /// The name used in paths (`target/plugins/<name>/`) and on command lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Toolchain::Rust => "rust",
            Toolchain::TinyGo => "tinygo",
            Toolchain::Go => "go",
        }
    }

    /// The toolchain named `name` (the inverse of [`Toolchain::as_str`]).
    pub fn parse(name: &str) -> Option<Toolchain> {
        Toolchain::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

impl fmt::Display for Toolchain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A tool is not installed (or could not be started).
    #[error("cannot run {tool}: {message} ({hint})")]
    ToolMissing {
        /// The program.
        tool: String,
        /// What the OS said.
        message: String,
        /// How to get it.
        hint: String,
    },
    /// A tool is older than the build needs.
    #[error("{tool} is version {found}, the plugin build needs {needed} or newer ({hint})")]
    ToolTooOld {
        /// The program.
        tool: String,
        /// The version it reported.
        found: String,
        /// The oldest version that works.
        needed: String,
        /// How to get a newer one.
        hint: String,
    },
    /// A tool ran and failed (its output went to our stderr, or is in `output`).
    #[error("{what} failed ({status}){output}")]
    Failed {
        /// The command, as the user would type it.
        what: String,
        /// Its exit status.
        status: String,
        /// Its captured output, if it was captured (empty or starting with a newline).
        output: String,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {message}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The module could not be turned into a component, or the component is not a plugin.
    #[error("{0}")]
    Component(String),
}

impl BuildError {
    pub(crate) fn io(path: impl Into<PathBuf>, error: impl fmt::Display) -> BuildError {
        BuildError::Io {
            path: path.into(),
            message: error.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toolchain_names_round_trip() {
        for t in Toolchain::ALL {
            assert_eq!(Toolchain::parse(t.as_str()), Some(t));
        }
        assert_eq!(Toolchain::parse("cobol"), None);
    }
}
