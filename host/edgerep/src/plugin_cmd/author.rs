//! `edgerep plugin new|build|test`: start a plugin from a template, build it into a component
//! (with edgerep-build, as `cargo xtask build-plugins` does), run its vectors against it.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail, ensure};
use edgerep_build::Toolchain;
use edgerep_build::component;
use edgerep_build::go::{Go, GoToolchain, TinyGo};
use edgerep_build::rust::{CargoBuild, DEFAULT_TARGET, remap_flags};
use edgerep_plugin::{Runtime, World};

const RUST_CARGO_TOML: &str = include_str!("../../templates/rust_Cargo.toml");
const RUST_LIB_RS: &str = include_str!("../../templates/rust_lib.rs");
const RUST_RESOLVER_LIB_RS: &str = include_str!("../../templates/rust_resolver_lib.rs");
const GO_MAIN_GO: &str = include_str!("../../templates/go_main.go");
const GO_RESOLVER_MAIN_GO: &str = include_str!("../../templates/go_resolver_main.go");
const SAMPLE_RESOLVER_VECTOR: &str = include_str!("../../templates/sample_resolver.json");
const GO_MOD: &str = include_str!("../../templates/go.mod.txt");
const SAMPLE_VECTOR: &str = include_str!("../../templates/sample.json");
const README: &str = include_str!("../../templates/README.md");
const PARAMS_TOML: &str = include_str!("../../templates/params.toml");

/// The edgerep checkout this binary was built from.
fn checkout() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::path::absolute(&root)
        .ok()
        .and_then(|p| p.canonicalize().ok())
        .unwrap_or(root)
}

pub(crate) fn parse_lang(s: &str) -> Result<Toolchain, String> {
    Toolchain::parse(s).ok_or_else(|| format!("unknown language {s:?} (have: rust, tinygo, go)"))
}

fn fill(template: &str, vars: &[(&str, &str)]) -> String {
    vars.iter().fold(template.to_owned(), |t, (k, v)| {
        t.replace(&format!("{{{{{k}}}}}"), v)
    })
}

/// `edgerep plugin new`.
pub(crate) fn new(
    lang: Toolchain,
    world: World,
    name: &str,
    dir: Option<PathBuf>,
) -> anyhow::Result<u8> {
    ensure!(
        !name.is_empty()
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
        "a plugin name is lowercase letters, digits and '-', starting with a letter: {name:?}"
    );
    let folder = dir.unwrap_or_else(|| PathBuf::from(".")).join(name);
    ensure!(!folder.exists(), "{} already exists", folder.display());
    let root = checkout();
    let sdk_dir = root.join(match lang {
        Toolchain::Rust => "guest-sdk/rust",
        Toolchain::TinyGo | Toolchain::Go => "guest-sdk/go",
    });
    ensure!(
        sdk_dir.is_dir(),
        "{} is not there: a plugin builds against the SDK of the edgerep source checkout this binary was built from ({}); run `edgerep plugin new` with a binary built in a checkout that is still in place",
        sdk_dir.display(),
        root.display()
    );
    let folder_text = folder.display().to_string();
    let mut files: Vec<(PathBuf, String)> = Vec::new();
    match lang {
        Toolchain::Rust => {
            let sdk = root.join("guest-sdk/rust").display().to_string();
            let vars = [
                ("name", name),
                ("sdk", sdk.as_str()),
                ("world", world.as_str()),
                ("does", does(world)),
            ];
            files.push(("Cargo.toml".into(), fill(RUST_CARGO_TOML, &vars)));
            let lib = match world {
                World::Transform => RUST_LIB_RS,
                World::Resolver => RUST_RESOLVER_LIB_RS,
            };
            files.push(("src/lib.rs".into(), fill(lib, &vars)));
        }
        Toolchain::TinyGo | Toolchain::Go => {
            // Quoted: go.mod reads an unquoted path with a space as a path and a version.
            let quoted = |p: PathBuf| go_quoted(&p.display().to_string());
            let sdk = quoted(root.join("guest-sdk/go"));
            let sdk_pkg = quoted(root.join("guest-sdk/go/third_party/go-pkg"));
            let vars = [
                ("name", name),
                ("sdk", sdk.as_str()),
                ("sdk_pkg", sdk_pkg.as_str()),
            ];
            files.push(("go.mod".into(), fill(GO_MOD, &vars)));
            let main = match world {
                World::Transform => GO_MAIN_GO,
                World::Resolver => GO_RESOLVER_MAIN_GO,
            };
            files.push(("main.go".into(), fill(main, &vars)));
        }
    }
    let vars = [
        ("name", name),
        ("lang", lang.as_str()),
        ("dir", folder_text.as_str()),
        ("world", world.as_str()),
        ("does", does(world)),
    ];
    files.push(("README.md".into(), fill(README, &vars)));
    files.push(("params.toml".into(), PARAMS_TOML.to_owned()));
    let sample = match world {
        World::Transform => SAMPLE_VECTOR,
        World::Resolver => SAMPLE_RESOLVER_VECTOR,
    };
    files.push(("vectors/sample.json".into(), fill(sample, &vars)));
    for (path, text) in files {
        let path = folder.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    if lang == Toolchain::Rust {
        pin_sdk_lock(&root, &folder);
    }
    println!("{}", folder.display());
    eprintln!(
        "edgerep: made {folder_text}: build it with `edgerep plugin build --lang {lang} {folder_text}`"
    );
    Ok(0)
}

/// Gives the Rust scaffold in `folder` a lock file with the SDK's pinned dependencies (the
/// checkout's `guest-sdk/rust/Cargo.lock`, with the plugin's own package added), so two authors
/// build the same bytes rather than whatever their registry cache held that day. Without cargo
/// at hand the scaffold keeps none, and the first build makes one.
fn pin_sdk_lock(root: &Path, folder: &Path) {
    let lock = folder.join("Cargo.lock");
    if std::fs::copy(root.join("guest-sdk/rust/Cargo.lock"), &lock).is_err() {
        return;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let added = |offline: bool| {
        let mut cmd = Command::new(&cargo);
        cmd.current_dir(folder)
            .args(["update", "--workspace", "-q"]);
        if offline {
            // (Its failure is no news when the registry can be asked next.)
            cmd.arg("--offline").stderr(std::process::Stdio::null());
        }
        cmd.status().is_ok_and(|s| s.success())
    };
    if !added(true) && !added(false) {
        eprintln!(
            "edgerep: could not add the plugin to the SDK's lock file (cargo update --workspace in {}); the first build makes one",
            folder.display()
        );
        let _ = std::fs::remove_file(&lock);
    }
}

/// `s` as a Go interpreted string literal, as go.mod reads it (`strconv.Unquote`): `"` and `\`
/// escaped, control characters as `\xNN`, everything else as it is (Rust's `{:?}` writes
/// `\u{301}`, which Go refuses).
fn go_quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// What the scaffold of `world` does, for its README and Cargo.toml.
fn does(world: World) -> &'static str {
    match world {
        World::Transform => "sets the field `hello` to `\"world\"` in map values",
        World::Resolver => {
            "picks the concurrent version with the largest `rank` (ties: the later version)"
        }
    }
}

/// `World` from `--world`.
pub(crate) fn parse_world(s: &str) -> Result<World, String> {
    match s {
        "transform" => Ok(World::Transform),
        "resolver" => Ok(World::Resolver),
        other => Err(format!("expected transform or resolver, got {other:?}")),
    }
}

/// Before `out` is replaced by `wasm`: the other build it holds, if any, is kept as
/// `<out>.previous` (and said on stderr). A node may run the build `out` holds, and a
/// resolver's build cannot change in place: without it, a node whose config pins that build
/// (or whose store recorded it) could neither reload nor restart until the old bytes were
/// rebuilt exactly.
fn keep_previous_build(out: &Path, wasm: &[u8]) -> anyhow::Result<()> {
    let held = match std::fs::read(out) {
        Ok(held) => held,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", out.display())),
    };
    if held == wasm {
        return Ok(());
    }
    let mut name = out.as_os_str().to_owned();
    name.push(".previous");
    let previous = PathBuf::from(name);
    edgerep_client::files::write_durably(&previous, &held)?;
    eprintln!(
        "edgerep: the build {} held (sha256 {}) is kept at {}: a node that runs it needs it back there to reload or restart, unless its config moves to the new one",
        out.display(),
        edgerep_plugin::sha256_hex(&held),
        previous.display()
    );
    Ok(())
}

/// `edgerep plugin build`.
pub(crate) fn build(
    lang: Option<Toolchain>,
    dir: &Path,
    out: Option<PathBuf>,
    update_config: Option<&Path>,
) -> anyhow::Result<u8> {
    let dir = std::path::absolute(dir).with_context(|| format!("{}", dir.display()))?;
    let lang = match lang {
        Some(l) => l,
        None if dir.join("Cargo.toml").is_file() => Toolchain::Rust,
        None if dir.join("go.mod").is_file() => {
            eprintln!(
                "edgerep: {} has a go.mod: building with TinyGo (give --lang go for the standard Go toolchain)",
                dir.display()
            );
            Toolchain::TinyGo
        }
        None => bail!(
            "{} has neither Cargo.toml nor go.mod: give --lang",
            dir.display()
        ),
    };
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .context("a plugin folder has a name")?;
    let wasm = match lang {
        Toolchain::Rust => build_rust(&dir)?,
        Toolchain::Go | Toolchain::TinyGo => {
            let builder = match lang {
                Toolchain::Go => GoToolchain::Go(Go::find()?),
                _ => GoToolchain::TinyGo(tinygo()?),
            };
            builder
                .build_component(&dir, &dir.join("target/edgerep-build").join(lang.as_str()))
                .with_context(|| format!("building {} with {lang}", dir.display()))?
        }
    };
    let out = out.unwrap_or_else(|| dir.join(format!("target/{name}.{lang}.wasm")));
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    // Built, but what `plugin check` refuses a node refuses too: not a success, and the file
    // a node may load is left as it was.
    let i = Runtime::new(None)?.inspect(&wasm)?;
    if !i.problems.is_empty() || i.world.is_none() {
        eprintln!(
            "edgerep: {} built, but a node would refuse it (nothing written): {}",
            dir.display(),
            i.problems.join("; ")
        );
        return Ok(crate::EXIT_USAGE);
    }
    // The config's new text is worked out and checked before anything is written, so that a
    // refusal leaves both files as they were.
    let updated = update_config
        .map(|config| with_sha256(config, &out, &i.sha256))
        .transpose()?;
    // Judged on the config as updated: a table whose sha256 is missing or a placeholder (what
    // the update is for) reads only once it holds the new one.
    if let (Some(config), Some((text, _))) = (update_config, &updated) {
        refuse_deciding_in_place(config, text, &out)?;
    }
    keep_previous_build(&out, &wasm)?;
    edgerep_client::files::write_durably(&out, &wasm)?;
    println!("{}", out.display());
    println!("sha256 {}", i.sha256);
    println!("size {}", i.size);
    if let (Some(config), Some((text, names))) = (update_config, updated) {
        edgerep_client::files::write_durably(config, text.as_bytes())?;
        for name in names {
            eprintln!(
                "edgerep: {}: plugins.{name}.sha256 is now {} (a running node loads the new build with `edgerep reload --config {}`)",
                config.display(),
                i.sha256,
                config.display()
            );
        }
    }
    Ok(0)
}

/// Refuses (before anything is written) to build over `out` when the node config `config`
/// (as `text`, updated) names it as a plugin that decides a collection's state (a resolver or a transform on
/// apply): such a plugin never changes in place (the node refuses that reload, and nodes
/// running the two builds would decide the same events differently); a new build comes as a
/// new plugin named in an upgrade. Overwritten, the build the node runs would be gone.
fn refuse_deciding_in_place(config: &Path, text: &str, out: &Path) -> anyhow::Result<()> {
    let Ok(target) = std::fs::canonicalize(out) else {
        return Ok(()); // a new file: nothing names it yet
    };
    let cfg = edgerep_config::Config::parse(text, config)?;
    let deciding: std::collections::BTreeSet<&str> = cfg
        .collections
        .declared
        .iter()
        .flat_map(|c| c.deciding_plugins())
        .collect();
    for p in &cfg.plugins {
        if deciding.contains(p.name.as_str())
            && std::fs::canonicalize(&p.path).is_ok_and(|path| path == target)
        {
            bail!(
                "plugins.{} in {} is {} and decides a collection's state: a new build does not replace it in place (the node refuses that reload, and nodes running the two builds would decide the same events differently); build it to another file (-o {}-v2.wasm), add that as a new [plugins.NAME] and name it in a [[collections.declared.upgrades]] entry with effective_from (nothing was written)",
                p.name,
                config.display(),
                out.display(),
                p.name
            );
        }
    }
    Ok(())
}

/// `path` resolved: the whole path when the file exists (links followed), else its folder
/// (the file is still to be written).
fn resolved(path: &Path) -> Option<PathBuf> {
    if let Ok(path) = std::fs::canonicalize(path) {
        return Some(path);
    }
    let dir = match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(dir) => dir,
        None => Path::new("."),
    };
    Some(std::fs::canonicalize(dir).ok()?.join(path.file_name()?))
}

/// The text of the node config `config` with `sha256` in every `[plugins.NAME]` whose `path`
/// is the component `wasm`, keeping the file's comments and layout, and their names; nothing
/// is written. Refuses when none names it, or when the result is not a valid config.
fn with_sha256(config: &Path, wasm: &Path, sha256: &str) -> anyhow::Result<(String, Vec<String>)> {
    let text =
        std::fs::read_to_string(config).with_context(|| format!("reading {}", config.display()))?;
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .with_context(|| format!("{} is not valid TOML", config.display()))?;
    let base = config
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let target = resolved(wasm).with_context(|| format!("resolving {}", wasm.display()))?;
    let mut updated = Vec::new();
    // Each table's path as resolved, for the refusal below.
    let mut seen = Vec::new();
    if let Some(plugins) = doc.get_mut("plugins").and_then(|p| p.as_table_like_mut()) {
        for (name, table) in plugins.iter_mut() {
            let Some(t) = table.as_table_like_mut() else {
                continue;
            };
            let Some(path) = t.get("path").and_then(|p| p.as_str()).map(str::to_owned) else {
                continue;
            };
            let at = resolved(&base.join(&path));
            if at.as_ref().is_some_and(|p| *p == target) {
                t.insert("sha256", toml_edit::value(sha256));
                updated.push(name.to_string());
            }
            seen.push(format!(
                "plugins.{name}.path {path:?} is {}",
                at.unwrap_or_else(|| base.join(&path)).display()
            ));
        }
    }
    if updated.is_empty() {
        let tables = if seen.is_empty() {
            "it has no [plugins.NAME] table".to_owned()
        } else {
            seen.join("; ")
        };
        let stem = target
            .file_stem()
            .map_or_else(|| "NAME".into(), |s| s.to_string_lossy().into_owned());
        bail!(
            "no [plugins.NAME] table of {} has path {} (nothing changed, the component was not written): a table's path is read from the config's folder {} ({tables}). Add one, for example:\n\n[plugins.{stem}]\npath = {:?}\nsha256 = \"{sha256}\"\n",
            config.display(),
            target.display(),
            std::fs::canonicalize(base)
                .unwrap_or_else(|_| base.to_path_buf())
                .display(),
            target.display().to_string(),
        );
    }
    let new_text = doc.to_string();
    if let Err(e) = edgerep_config::Config::parse(&new_text, config) {
        bail!("the updated config would not load (nothing changed): {e}");
    }
    Ok((new_text, updated))
}

/// The folder of the workspace `dir`'s package belongs to (`dir` itself for a lone package).
fn workspace_root(cargo: &str, dir: &Path) -> anyhow::Result<PathBuf> {
    let out = Command::new(cargo)
        .current_dir(dir)
        .args(["locate-project", "--workspace", "--message-format", "plain"])
        .output()
        .with_context(|| format!("running {cargo}"))?;
    ensure!(
        out.status.success(),
        "cargo locate-project failed in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let manifest = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    Ok(manifest
        .parent()
        .map_or_else(|| dir.to_path_buf(), Path::to_path_buf))
}

fn build_rust(dir: &Path) -> anyhow::Result<Vec<u8>> {
    let manifest_path = dir.join("Cargo.toml");
    // What cargo itself reads of the manifest: the library's own name (`[lib] name`), and the
    // target the plugin asks for.
    // For a member of a workspace cargo lists every member: keep this folder's own package.
    let own = manifest_path
        .canonicalize()
        .with_context(|| format!("reading {}", manifest_path.display()))?;
    let plugins: Vec<_> = edgerep_build::rust::plugins_in(&manifest_path)?
        .into_iter()
        .filter(|p| p.manifest.canonicalize().is_ok_and(|m| m == own))
        .collect();
    let [plugin] = &plugins[..] else {
        bail!(
            "{} is no plugin package: a Rust plugin is a package with `[lib] crate-type = [\"cdylib\"]` (for a workspace, build each member's folder)",
            manifest_path.display()
        );
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    // The lock file is the workspace's (a member's folder has none of its own): one made here
    // would re-resolve, and rewrite, the whole workspace's.
    let workspace = workspace_root(&cargo, dir)?;
    if !workspace.join("Cargo.lock").is_file() {
        // The build is --locked: make the lock file once, from what is cached if possible.
        let offline = Command::new(&cargo)
            .current_dir(&workspace)
            .args(["generate-lockfile", "--offline", "-q"])
            .status();
        if !offline.is_ok_and(|s| s.success()) {
            let status = Command::new(&cargo)
                .current_dir(&workspace)
                .args(["generate-lockfile"])
                .status()
                .with_context(|| format!("running {cargo}"))?;
            ensure!(
                status.success(),
                "cargo generate-lockfile failed ({status})"
            );
        }
    }
    // A plugin of this checkout is remapped as `cargo xtask build-plugins` does (the checkout
    // as /edgerep), so both give the same bytes; one outside it as its own root (/edgerep),
    // with this checkout's SDK as /edgerep-sdk. Either way no machine's paths are in it.
    let checkout = checkout();
    let in_checkout = dir.canonicalize().is_ok_and(|d| d.starts_with(&checkout));
    let encoded_rustflags = if in_checkout {
        remap_flags(&checkout)
    } else {
        format!(
            "--remap-path-prefix={}=/edgerep-sdk\x1f{}",
            checkout.display(),
            remap_flags(dir)
        )
    };
    let target_dir = shared_target_dir().unwrap_or_else(|| dir.join("target"));
    let cargo_build = CargoBuild {
        dir: dir.to_path_buf(),
        packages: Vec::new(),
        target: plugin.target.clone(),
        target_dir,
        // The SDK is a path dependency in this checkout: its path (panic locations) is
        // remapped too, or each machine's checkout would give the build another sha256, and
        // peers would refuse one another's resolver as another build. (The plugin's folder,
        // remapped last, wins where the two overlap.)
        encoded_rustflags,
        quiet: false,
    };
    edgerep_build::rust::ensure_targets(&[plugin.target.as_str()], dir, "edgerep")?;
    cargo_build.run()?;
    let core = cargo_build.core_path(&plugin.lib);
    let bytes = std::fs::read(&core).with_context(|| format!("reading {}", core.display()))?;
    let wasm = component::from_module(&bytes)
        .with_context(|| format!("making a component of {}", core.display()))?;
    component::check(&wasm, plugin.target != DEFAULT_TARGET).context("checking the component")?;
    Ok(edgerep_build::params::embed(wasm, dir)?)
}

/// Where Rust plugins build: `$CARGO_TARGET_DIR` if set, else one directory shared by every
/// plugin on the machine, `${EDGEREP_CACHE:-~/.cache/edgerep}/plugin-target`, so a new plugin
/// reuses its SDK's compiled dependencies instead of building them again (`None`: no home).
fn shared_target_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return Some(PathBuf::from(dir));
    }
    let cache = std::env::var_os("EDGEREP_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/edgerep")))?;
    Some(cache.join("plugin-target"))
}

/// The TinyGo to build with, found as `cargo xtask build-plugins` finds it: `$TINYGO`, or the one
/// the checkout's `scripts/install-tinygo.sh` installs (or finds installed) in `$EDGEREP_CACHE`.
fn tinygo() -> anyhow::Result<TinyGo> {
    Ok(TinyGo::locate(&checkout())?)
}

/// `edgerep plugin test`: exit 0 if every vector passes; 2 if a vector file itself is not
/// valid (a CI script must tell a broken vector from a plugin that regressed); else 5.
pub(crate) fn test(wasm: &Path, vectors: &Path) -> anyhow::Result<u8> {
    let runtime = Runtime::new(None)?;
    let results = edgerep_plugin::conformance::run_vectors_on_component(&runtime, wasm, vectors)
        .map_err(|e| anyhow::anyhow!(e))?;
    ensure!(
        !results.is_empty(),
        "no *.json vectors in {}",
        vectors.display()
    );
    let (mut failed, mut invalid) = (0, 0);
    for (file, result) in &results {
        match result {
            Ok(()) => println!("pass {}", file.display()),
            // The messages start with the vector's path.
            Err(e) if e.is_invalid_vector() => {
                invalid += 1;
                println!("INVALID {e}");
            }
            Err(e) => {
                failed += 1;
                println!("FAIL {e}");
            }
        }
    }
    let invalid_note = if invalid > 0 {
        format!(" ({invalid} of the vector files are not valid: fix them first)")
    } else {
        String::new()
    };
    println!(
        "{} of {} vectors passed{invalid_note}",
        results.len() - failed - invalid,
        results.len()
    );
    Ok(if invalid > 0 {
        crate::EXIT_USAGE
    } else if failed > 0 {
        super::EXIT_PLUGIN_FAILED
    } else {
        0
    })
}

#[cfg(test)]
mod tests {
    /// What go.mod takes (checked with Go's `strconv.Unquote`, which go.mod's parser uses).
    #[test]
    fn paths_are_quoted_as_go_reads_them() {
        assert_eq!(super::go_quoted("/a b/c"), "\"/a b/c\"");
        assert_eq!(
            super::go_quoted("q\"b\\c\u{1}e\u{301}\u{a0}"),
            "\"q\\\"b\\\\c\\x01e\u{301}\u{a0}\""
        );
    }
}
