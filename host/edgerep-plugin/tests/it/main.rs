//! Integration tests against the real components from `cargo xtask build-plugins`
//! (`target/plugins/rust/*.wasm`). A missing component fails the test with a message saying
//! to build them; nothing passes silently.
//!
//! One test binary for all of them: wasmtime makes every test binary slow to link.

mod bench;
mod cache;
mod common;
mod conformance;
mod determinism;
mod hostile;
mod loading;
mod resolver;
mod soak;
mod wasi_probe;
