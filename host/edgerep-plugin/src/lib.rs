//! edgerep's WebAssembly plugin runtime: the wasmtime embedder. The only crate that names wasmtime.
//!
//! A plugin is a WebAssembly component implementing one world of `wit/plugin.wit`: `transform`
//! (one event in, changes out) or `resolver` (concurrent versions of a key in, a decision out).
//! It runs sandboxed: it may import only the host's `log`/`param`/`params` and a WASI that grants
//! nothing and answers clocks and randomness deterministically ([`wasi`]); it runs under a fuel
//! budget, a memory cap and a wall-clock backstop ([`Limits`]); and everything it returns is checked
//! and canonicalized before the node sees it ([`Change`], [`Resolution`]).
//!
//! ```no_run
//! use edgerep_plugin::{Limits, PluginSource, Runtime, World};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let runtime = Runtime::new(Some(std::path::Path::new("/var/lib/edgerep/plugin-cache")))?;
//! let path = std::path::PathBuf::from("plugins/redact.wasm");
//! let plugin = runtime.load(PluginSource {
//!     name: "redact".into(),
//!     wasm: std::fs::read(&path)?,
//!     path,
//!     expected_sha256: None,
//!     limits: Limits::default(),
//!     params: [("fields".to_owned(), "ssn,card".to_owned())].into(),
//! })?;
//! assert_eq!(plugin.world(), World::Transform);
//! # let event: edgerep_wire::Event = unimplemented!();
//! match plugin.transform(&event, true) {
//!     Ok(changes) => println!("{} changes", changes.len()),
//!     Err(failure) => println!("{}: {}", failure.kind.as_str(), failure.message),
//! }
//! # Ok(()) }
//! ```
//!
//! # For the node
//!
//! - **Determinism.** With `fresh = true` (and always for [`Plugin::resolve`]) a call's result,
//!   failure kind and fuel depend only on the component, its parameters, its limits and the input.
//!   The exceptions are [`FailureKind::Deadline`], the wall-clock backstop, and
//!   [`FailureKind::StackOverflow`] (how deep a stack may grow depends on the CPU's machine
//!   code): they depend on the machine, so never turn them into a replicated decision (retry a
//!   deadline, or stop the plugin). Fuel
//!   charges per instruction, so bulk-memory instructions are cheap in fuel but not in time: a
//!   hostile plugin can reach the deadline with fuel to spare.
//! - **Pooled instances** (`fresh = false`) are faster (no instantiation) but keep guest state
//!   between calls: use them only where nodes need not agree (say transforms at ingest, whose
//!   output is then replicated as data). At most [`POOL_MAX_IDLE`] idle instances are kept per
//!   plugin, each holding up to [`Limits::memory_bytes`].
//! - **Resolvers** get the versions in the order given: sort them canonically (by dot) first.
//! - **Outputs** are checked ([`Change`]: valid collection name, key of 1 to 1024 bytes, value
//!   exactly on puts and canonicalized, at most 16 metadata entries; at most [`MAX_CHANGES`]
//!   changes and [`MAX_OUTPUT_BYTES`]), so every change can become an event peers will decode;
//!   the encoded event's total size (at most 1 MiB) is the node's to check.
//! - **Loading** compiles a component (tens of milliseconds); give [`Runtime::new`] a cache
//!   directory so restarts load the compiled code instead. Check [`Plugin::world`] when wiring a
//!   plugin: calling the other world's function is [`FailureKind::WrongWorld`].
//! - The [`Runtime`] runs one epoch ticker thread, which stops when the runtime and all its
//!   plugins are dropped.

mod bindings;
pub mod conformance;
pub mod declared;
mod error;
mod failure;
pub mod json;
mod limits;
mod metrics;
mod output;
mod plugin;
mod runtime;
pub mod wasi;

pub use error::LoadError;
pub use failure::{Failure, FailureKind};
pub use limits::Limits;
pub use metrics::{FUEL_BOUNDS, MetricsSnapshot, NANOS_BOUNDS, Summary};
pub use output::{Change, MAX_CHANGES, MAX_OUTPUT_BYTES, Resolution, on_apply};
pub use plugin::{CallReport, POOL_MAX_IDLE, Plugin};
pub use runtime::{Inspection, PluginSource, Runtime, World, sha256_hex};
