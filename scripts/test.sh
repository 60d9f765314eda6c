#!/usr/bin/env bash
# Runs every test of edgerep on a fresh machine: installs what the tests need, then checks
# formatting, lints, and runs the whole test suite (unit, integration, real-process crash tests,
# randomized decoder tests, a short benchmark smoke run).
#
# Tool installs are cached outside the repository (under $EDGEREP_CACHE, default ~/.cache/edgerep)
# and reused on the next run.
set -euo pipefail
cd "$(dirname "$0")/.."

export EDGEREP_CACHE="${EDGEREP_CACHE:-$HOME/.cache/edgerep}"
mkdir -p "$EDGEREP_CACHE"

step() { printf '\n==> %s\n' "$*"; }

step "toolchain"
if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: install Rust with rustup (https://rustup.rs), then run this again" >&2
    exit 1
fi
# rustfmt and clippy come with rustup's default profile; add them if this toolchain lacks them.
for component in rustfmt clippy; do
    if ! rustup component list --installed 2>/dev/null | grep -q "^$component"; then
        rustup component add "$component"
    fi
done
cargo --version
rustc --version

step "format"
cargo fmt --all -- --check

step "lints"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "plugins: build (wasm32 targets installed if missing) into target/plugins/rust"
cargo xtask build-plugins
cargo xtask check-plugins

step "plugins: SDK and plugin crates (format, lints, native unit tests, vectors)"
cargo xtask test-plugins

step "tests"
cargo test --workspace --locked
