#!/usr/bin/env bash
# Runs every test of edgerep on a fresh machine: installs what the tests need, then checks
# formatting, lints, and runs the whole test suite (unit, integration, real-process crash tests,
# randomized decoder tests, a short benchmark smoke run, the plugin conformance vectors on the
# Rust, TinyGo and Go builds of every plugin, the Go plugin soak test, the status page in
# headless chromium).
#
# Tool installs are cached outside the repository (under $EDGEREP_CACHE, default ~/.cache/edgerep)
# and reused on the next run.
set -euo pipefail
cd "$(dirname "$0")/.."

export EDGEREP_CACHE="${EDGEREP_CACHE:-$HOME/.cache/edgerep}"
mkdir -p "$EDGEREP_CACHE"

# Each step's start is printed with the seconds since the script began, so a slow step shows.
started=$SECONDS
step() { printf '\n==> [%4ds] %s\n' "$((SECONDS - started))" "$*"; }

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
# Standard Go (>= 1.24) builds the Go plugins and runs the Go SDK's tests: the machine's, or
# Go 1.26.8 installed once into $EDGEREP_CACHE from the Go module proxy.
GO_BIN="$(./scripts/install-go.sh | tail -n 1)"
export PATH="$GO_BIN:$PATH"
go version

step "tinygo (built once into \$EDGEREP_CACHE by scripts/install-tinygo.sh, then reused)"
TINYGO="$(./scripts/install-tinygo.sh | tail -n 1)"
export TINYGO
"$TINYGO" version 2>/dev/null || true

step "chromium and chromedriver (Debian's, for the status page's browser test)"
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
    sudo_if_needed=""
    if [ "$(id -u)" -ne 0 ]; then sudo_if_needed="sudo"; fi
    $sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver \
        || { $sudo_if_needed apt-get update -q && $sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; }
fi
/usr/bin/chromium --version
/usr/bin/chromedriver --version

step "ip, tc and unshare (Debian's iproute2 and util-linux, for the slow-link test's network namespace)"
if ! command -v tc >/dev/null 2>&1 || ! command -v ip >/dev/null 2>&1 || ! command -v unshare >/dev/null 2>&1; then
    sudo_if_needed=""
    if [ "$(id -u)" -ne 0 ]; then sudo_if_needed="sudo"; fi
    $sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -q iproute2 util-linux \
        || { $sudo_if_needed apt-get update -q && $sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -q iproute2 util-linux; }
fi
tc -V

step "format"
cargo fmt --all -- --check

step "lints"
cargo clippy --workspace --all-targets --locked -- -D warnings

# The binary alone, as `cargo run -p edgerep` builds it: the workspace's test targets turn on
# features of its dependencies (raw-quic) that the binary must not need.
step "the edgerep binary without test features"
cargo check -p edgerep --bin edgerep --locked

step "go SDK: generated bindings up to date, format, vet, native tests"
cargo xtask go-bindings --check
unformatted="$(gofmt -l guest-sdk/go plugins/go)"
if [ -n "$unformatted" ]; then
    echo "gofmt -l lists files that are not formatted:" >&2
    echo "$unformatted" >&2
    exit 1
fi
(
    cd guest-sdk/go
    GOPROXY=off go mod tidy -diff # nothing to fetch: every dependency is a folder of this repository
    # The generated bindings convert addresses to pointers by design: vet them without unsafeptr.
    generated='/internal/wit/[a-z]*/(imports|exports/wit_exports)'
    own="$(go list ./... | grep -Ev "$generated")"
    go vet $own
    GOOS=wasip1 GOARCH=wasm go vet $(grep -v /edgereptest <<<"$own")
    GOOS=wasip1 GOARCH=wasm go vet -unsafeptr=false $(go list ./... | grep -E "$generated")
    go test ./...
)
(
    cd plugins/go
    GOPROXY=off go mod tidy -diff
    go vet ./...
    GOOS=wasip1 GOARCH=wasm go vet ./...
    go test ./...
)

step "plugins: build with rust, tinygo and go into target/plugins/<toolchain>"
cargo xtask build-plugins
cargo xtask check-plugins

step "plugins: SDK and plugin crates (format, lints, native unit tests, vectors)"
cargo xtask test-plugins

step "tests"
cargo test --workspace --locked

step "done"
