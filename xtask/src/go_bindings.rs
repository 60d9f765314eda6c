//! `cargo xtask go-bindings [--check]`: the Go SDK's generated code.
//!
//! Two things in `guest-sdk/go` are generated, never edited by hand:
//!
//! - `internal/wit/<world>/{imports,exports/wit_exports}/`: the bindings of each world of
//!   `wit/plugin.wit`, from the `wit-bindgen-go` crate (the Go generator of wit-bindgen 0.63, used
//!   as a library, so the version is pinned by Cargo.lock), formatted with `gofmt`;
//! - `third_party/go-pkg/`: the Go module `go.bytecodealliance.org/pkg` (v0.4.0) that those
//!   bindings import, copied from the source that ships inside the `wit-bindgen-go` crate, with a
//!   `go.mod` of ours. The Go module proxy does not serve that module (it answers 403), so the SDK
//!   and the plugins point at this copy with a `replace` directive and nothing is fetched.
//!
//! The generator writes code for standard Go only; two edits, made here and nowhere else, make
//! the same code build with TinyGo:
//!
//! - the bindings name the pinner `witRuntime.Pinner` instead of `runtime.Pinner` (TinyGo's
//!   runtime has no `Pinner`), so their `"runtime"` import goes;
//! - in the go-pkg copy, `wit/runtime/runtime.go` gets `//go:build !tinygo` (it links to
//!   `runtime.sbrk`, which TinyGo lacks), and so do the async support files (futures, streams,
//!   the async runtime: `runtime.Pinner` and runtime internals; the contract has no async
//!   functions); two files of ours join the runtime package (`xtask/go-pkg/`): `pinner_go.go`
//!   (`Pinner` is `runtime.Pinner`) and `runtime_tinygo.go` (TinyGo's `Pinner`, `Allocate` and
//!   `cabi_realloc`).
//!
//! `--check` regenerates into a temporary directory and fails, naming the file, if anything
//! differs from what is committed (a changed, missing or extra file).

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail, ensure};
use wit_parser::Resolve;

/// The Go SDK's module path.
pub(crate) const SDK_MODULE: &str = "github.com/edgerep/edgerep/guest-sdk/go";
/// The worlds of `wit/plugin.wit` the SDK has bindings for.
const WORLDS: [&str; 2] = ["transform", "resolver"];
/// The folders (under `guest-sdk/go`) that hold generated files and nothing else.
const GENERATED_DIRS: [&str; 5] = [
    "internal/wit/transform/imports",
    "internal/wit/transform/exports/wit_exports",
    "internal/wit/resolver/imports",
    "internal/wit/resolver/exports/wit_exports",
    "third_party/go-pkg",
];
/// The Go version the copy of go-pkg declares: the oldest the SDK supports (its own `go.mod`
/// says the same). Upstream's `go.mod` asks for a newer one than it needs.
const GO_PKG_GO_VERSION: &str = "1.24";

/// Generates every file into a map: path under `guest-sdk/go` → contents.
fn generate(root: &Path) -> Result<BTreeMap<PathBuf, Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut resolve = Resolve::default();
    let (package, _) = resolve.push_dir(root.join("wit")).context("parsing wit/")?;
    for world in WORLDS {
        let id = resolve
            .select_world(&[package], Some(world))
            .with_context(|| format!("world {world} in wit/"))?;
        let opts = wit_bindgen_go::Opts {
            // gofmt runs below, where a missing gofmt is an error instead of unformatted code.
            format: wit_bindgen_go::Format::False,
            pkg_name: Some(format!("{SDK_MODULE}/internal/wit/{world}")),
            quiet: true,
            ..Default::default()
        };
        let mut files = wit_bindgen_core::Files::default();
        opts.build()
            .generate(&mut resolve.clone(), id, &mut files)
            .with_context(|| format!("generating the Go bindings of world {world}"))?;
        for (name, contents) in files.iter() {
            let contents = if name.ends_with(".go") {
                let source = std::str::from_utf8(contents)
                    .with_context(|| format!("{name} is not UTF-8"))?;
                let source =
                    pinner_for_tinygo(source).with_context(|| format!("editing {name}"))?;
                gofmt(source.as_bytes()).with_context(|| format!("formatting {name}"))?
            } else {
                contents.to_vec()
            };
            out.insert(Path::new("internal/wit").join(world).join(name), contents);
        }
    }
    for (path, contents) in go_pkg(root)? {
        out.insert(Path::new("third_party/go-pkg").join(path), contents);
    }
    for path in out.keys() {
        ensure!(
            GENERATED_DIRS.iter().any(|d| path.starts_with(d)),
            "the generator wrote {} outside the folders xtask knows as generated",
            path.display()
        );
    }
    Ok(out)
}

/// Names the pinner `witRuntime.Pinner` instead of `runtime.Pinner` and drops the `"runtime"`
/// import (see the module documentation). Fails if the code uses anything else of package
/// runtime, or names the pinner without importing witRuntime: a newer generator needs a look.
fn pinner_for_tinygo(source: &str) -> Result<String> {
    if !source.contains("runtime.Pinner") {
        return Ok(source.to_owned());
    }
    ensure!(
        source.contains("witRuntime \"go.bytecodealliance.org/pkg/wit/runtime\""),
        "uses runtime.Pinner without importing witRuntime"
    );
    let edited: String = source
        .replace("runtime.Pinner", "witRuntime.Pinner")
        .lines()
        .filter(|line| line.trim() != "\"runtime\"")
        .map(|line| format!("{line}\n"))
        .collect();
    let bytes = edited.as_bytes();
    for (i, _) in edited.match_indices("runtime.") {
        let before = i.checked_sub(1).map(|j| bytes[j]);
        ensure!(
            before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_'),
            "uses package runtime beyond its Pinner (at byte {i}): the TinyGo edit needs updating"
        );
    }
    Ok(edited)
}

/// The go-pkg files that get `//go:build !tinygo`, and their package: `runtime.go` (TinyGo's
/// version is ours), and the async support (futures, streams and the async runtime, which use
/// `runtime.Pinner` and runtime internals; the contract has no async functions).
const STANDARD_GO_ONLY: [(&str, &str); 4] = [
    ("wit/runtime/runtime.go", "runtime"),
    ("wit/async/async.go", "async"),
    ("wit/types/future.go", "wit_types"),
    ("wit/types/stream.go", "wit_types"),
];

/// Our files in the go-pkg copy (see the module documentation).
const GO_PKG_PINNER_GO: &str = include_str!("../go-pkg/pinner_go.go");
const GO_PKG_RUNTIME_TINYGO: &str = include_str!("../go-pkg/runtime_tinygo.go");

/// The files of the go-pkg copy: its Go sources and LICENSE from the crate, and our go.mod.
fn go_pkg(root: &Path) -> Result<Vec<(PathBuf, Vec<u8>)>> {
    let src = crate_dir(root, "wit-bindgen-go")?.join("src/pkg");
    let mut files = vec![
        (
            PathBuf::from("go.mod"),
            format!(
                "// A copy of go.bytecodealliance.org/pkg (v0.4.0, as shipped in the wit-bindgen-go crate), made by\n\
                 // `cargo xtask go-bindings`. Do not edit.\n\
                 module go.bytecodealliance.org/pkg\n\ngo {GO_PKG_GO_VERSION}\n"
            )
            .into_bytes(),
        ),
        (
            PathBuf::from("LICENSE"),
            fs::read(src.join("LICENSE")).context("reading go-pkg's LICENSE")?,
        ),
    ];
    let mut stack = vec![PathBuf::from("wit")];
    while let Some(dir) = stack.pop() {
        let mut entries: Vec<_> = fs::read_dir(src.join(&dir))
            .with_context(|| format!("listing {}", src.join(&dir).display()))?
            .collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let rel = dir.join(entry.file_name());
            if entry.file_type()?.is_dir() {
                stack.push(rel);
            } else if rel.extension().is_some_and(|e| e == "go" || e == "s") {
                let mut contents = fs::read(src.join(&rel))?;
                if let Some(package) = STANDARD_GO_ONLY
                    .iter()
                    .find(|(file, _)| rel == Path::new(file))
                    .map(|(_, package)| package)
                {
                    ensure!(
                        contents.starts_with(format!("package {package}\n").as_bytes()),
                        "go-pkg's {} changed: the TinyGo edit needs a look",
                        rel.display()
                    );
                    contents.splice(0..0, b"//go:build !tinygo\n\n".iter().copied());
                }
                files.push((rel.clone(), contents));
            }
        }
    }
    files.push((
        PathBuf::from("wit/runtime/pinner_go.go"),
        GO_PKG_PINNER_GO.as_bytes().to_vec(),
    ));
    files.push((
        PathBuf::from("wit/runtime/runtime_tinygo.go"),
        GO_PKG_RUNTIME_TINYGO.as_bytes().to_vec(),
    ));
    Ok(files)
}

/// The source folder of a dependency of xtask (from `cargo metadata`, so the version is the one
/// Cargo.lock pins).
fn crate_dir(root: &Path, name: &str) -> Result<PathBuf> {
    let out = Command::new(crate::cargo())
        .args([
            "metadata",
            "--format-version",
            "1",
            "--locked",
            "--manifest-path",
        ])
        .arg(root.join("xtask/Cargo.toml"))
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo metadata")?;
    ensure!(out.status.success(), "cargo metadata failed");
    let meta: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("parsing cargo metadata")?;
    let manifest = meta["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == name)
        .and_then(|p| p["manifest_path"].as_str())
        .with_context(|| format!("{name} is not a dependency of xtask"))?;
    Ok(Path::new(manifest)
        .parent()
        .context("manifest without a folder")?
        .to_path_buf())
}

/// `gofmt` of Go source.
fn gofmt(source: &[u8]) -> Result<Vec<u8>> {
    let mut child = Command::new("gofmt")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running gofmt (install Go >= 1.24 and put its bin folder on PATH)")?;
    let mut stdin = child.stdin.take().context("gofmt stdin")?;
    let input = source.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().context("waiting for gofmt")?;
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("gofmt writer panicked"))?
        .context("writing to gofmt")?;
    if !out.status.success() {
        bail!("gofmt failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(out.stdout)
}

/// Every file under the generated folders of `sdk`, relative to `sdk`.
fn existing(sdk: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for dir in GENERATED_DIRS {
        let mut stack = vec![PathBuf::from(dir)];
        while let Some(rel) = stack.pop() {
            let abs = sdk.join(&rel);
            if !abs.exists() {
                continue;
            }
            for entry in fs::read_dir(&abs).with_context(|| format!("listing {}", abs.display()))? {
                let entry = entry?;
                let path = rel.join(entry.file_name());
                if entry.file_type()?.is_dir() {
                    stack.push(path);
                } else {
                    files.push(path);
                }
            }
        }
    }
    files.sort();
    Ok(files)
}

/// `cargo xtask go-bindings [--check]`.
pub(crate) fn run(root: &Path, check: bool) -> Result<()> {
    let sdk = root.join("guest-sdk/go");
    let generated = generate(root)?;
    if check {
        // Also write them out, so the comparison is of real files (and a failure can be looked at).
        let tmp = std::env::temp_dir().join(format!("edgerep-go-bindings-{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        for (path, contents) in &generated {
            let file = tmp.join(path);
            fs::create_dir_all(file.parent().context("no parent")?)?;
            fs::write(&file, contents)?;
        }
        let mut problems = Vec::new();
        for (path, contents) in &generated {
            match fs::read(sdk.join(path)) {
                Ok(have) if &have == contents => {}
                Ok(_) => problems.push(format!(
                    "guest-sdk/go/{} differs from the generated {}",
                    path.display(),
                    tmp.join(path).display()
                )),
                Err(_) => problems.push(format!("guest-sdk/go/{} is missing", path.display())),
            }
        }
        for path in existing(&sdk)? {
            if !generated.contains_key(&path) {
                problems.push(format!(
                    "guest-sdk/go/{} is not generated any more (remove it)",
                    path.display()
                ));
            }
        }
        if !problems.is_empty() {
            bail!(
                "the committed Go bindings are not what `cargo xtask go-bindings` generates:\n  {}\n\
                 run `cargo xtask go-bindings` and commit the result",
                problems.join("\n  ")
            );
        }
        fs::remove_dir_all(&tmp).ok();
        println!(
            "go-bindings: {} generated files in guest-sdk/go are up to date",
            generated.len()
        );
        return Ok(());
    }
    for dir in GENERATED_DIRS {
        let _ = fs::remove_dir_all(sdk.join(dir));
    }
    for (path, contents) in &generated {
        let file = sdk.join(path);
        fs::create_dir_all(file.parent().context("no parent")?)
            .with_context(|| format!("creating the folder of {}", file.display()))?;
        fs::write(&file, contents).with_context(|| format!("writing {}", file.display()))?;
    }
    println!(
        "go-bindings: wrote {} files under guest-sdk/go",
        generated.len()
    );
    Ok(())
}
