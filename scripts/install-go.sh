#!/usr/bin/env bash
# Makes sure a Go >= 1.24 is at hand (it builds the Go plugins, runs the Go SDK's tests, and
# fetches the Go that TinyGo is built with). Uses the machine's Go if it is new enough (on PATH,
# or /usr/local/go/bin/go); else installs Go 1.26.8 into a cache outside the repository,
# ${EDGEREP_CACHE:-$HOME/.cache/edgerep}/go-1.26.8, and reuses it on the next run.
#
# Usage:
#   PATH="$(scripts/install-go.sh | tail -n 1):$PATH"   # the LAST stdout line: the folder holding go
#
# Everything but that last line goes to stderr. The toolchain comes from the Go module proxy
# (golang.org/toolchain, what `GOTOOLCHAIN=go1.26.8` fetches; registries only, no download site),
# checked against the module's go.sum hash pinned below before anything of it is unpacked.
# Needs curl, python3 and ca-certificates (Debian: apt-get install curl python3 ca-certificates).
set -euo pipefail
exec 3>&1 1>&2 # stdout is only for the final path

GO_VERSION=1.26.8
MIN_MINOR=24
# go.sum's h1 hash of golang.org/toolchain@v0.0.1-go1.26.8.linux-amd64 (sum.golang.org).
H1_LINUX_AMD64="h1:ZOmGe1OnfREDMIdb1Qi4G9JSuDPBLGExZMQ4nis1RXM="

cache="${EDGEREP_CACHE:-$HOME/.cache/edgerep}"
root="$cache/go-$GO_VERSION"

new_enough() { # $1: a go binary
    local v
    v="$("$1" env GOVERSION 2>/dev/null)" || return 1
    [[ "$v" =~ ^go1\.([0-9]+) ]] && [ "${BASH_REMATCH[1]}" -ge "$MIN_MINOR" ]
}

for candidate in "$(command -v go || true)" /usr/local/go/bin/go "$root/bin/go"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ] && new_enough "$candidate"; then
        echo "[install-go] using $("$candidate" env GOVERSION) at $candidate"
        dirname "$candidate" >&3
        exit 0
    fi
done

if [ "$(uname -s)/$(uname -m)" != "Linux/x86_64" ]; then
    echo "[install-go] no Go >= 1.$MIN_MINOR found, and this script pins the toolchain for linux/amd64 only: install Go 1.$MIN_MINOR or newer (https://go.dev/dl) and put its bin folder on PATH" >&2
    exit 1
fi
for tool in curl python3; do
    command -v "$tool" >/dev/null 2>&1 || { echo "[install-go] needs $tool" >&2; exit 1; }
done

module="golang.org/toolchain@v0.0.1-go$GO_VERSION.linux-amd64"
# The first proxy GOPROXY names ("direct" entries skipped: the toolchain comes from a proxy).
proxy=""
IFS=',|' read -r -a proxies <<<"${GOPROXY:-https://proxy.golang.org}"
for p in "${proxies[@]}"; do
    case "$p" in
        off)
            echo "[install-go] GOPROXY=off forbids fetching Go $GO_VERSION: install Go 1.$MIN_MINOR or newer and put its bin folder on PATH" >&2
            exit 1
            ;;
        direct | "") ;;
        *) proxy="${p%/}"; break ;;
    esac
done
proxy="${proxy:-https://proxy.golang.org}"
mkdir -p "$cache"
tmp="$(mktemp -d "$cache/go-install.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
echo "[install-go] no Go >= 1.$MIN_MINOR found: fetching Go $GO_VERSION from $proxy ($module)"
curl --fail --silent --show-error --location --retry 3 \
    -o "$tmp/go.zip" "$proxy/golang.org/toolchain/@v/v0.0.1-go$GO_VERSION.linux-amd64.zip"
# Checks the zip against the pinned hash (Go's dirhash "h1": SHA-256 over the sorted lines
# "<sha256 hex>  <name>" of its files), then unpacks it with its files' modes.
python3 - "$tmp/go.zip" "$H1_LINUX_AMD64" "$tmp/unpacked" "$module/" <<'EOF'
import base64, hashlib, os, sys, zipfile
path, want, out, prefix = sys.argv[1:5]
z = zipfile.ZipFile(path)
names = sorted(n for n in z.namelist() if not n.endswith("/"))
h = hashlib.sha256()
for n in names:
    h.update(f"{hashlib.sha256(z.read(n)).hexdigest()}  {n}\n".encode())
got = "h1:" + base64.b64encode(h.digest()).decode()
if got != want:
    sys.exit(f"[install-go] the downloaded toolchain's hash is {got}, not the pinned {want}: not installed")
for n in names:
    if not n.startswith(prefix) or ".." in n.split("/"):
        sys.exit(f"[install-go] unexpected file {n!r} in the toolchain zip: not installed")
    target = os.path.join(out, n[len(prefix):])
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with open(target, "wb") as f:
        f.write(z.read(n))
    os.chmod(target, (z.getinfo(n).external_attr >> 16) & 0o777 or 0o644)
    # The module zip holds each go.mod as _go.mod (else it would cut the module in parts): the
    # go command puts them back when it unpacks a toolchain, and so does this.
    if os.path.basename(target) == "_go.mod":
        with open(os.path.join(os.path.dirname(target), "go.mod"), "wb") as f:
            f.write(z.read(n))
EOF
"$tmp/unpacked/bin/go" version
rm -rf "$root"
mv "$tmp/unpacked" "$root"
echo "$root/bin" >&3
