//! `edgerep plugin new|build|test`: a scaffold of each language builds and passes its sample
//! vector out of the box, a wrong expectation fails `plugin test` with exit 5 and an invalid vector
//! file with exit 2.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn edgerep(args: &[&std::ffi::OsStr]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_edgerep"));
    cmd.args(args);
    // Rust scaffolds share one target folder, so the guest SDK builds once (inside cargo's
    // target directory, which CI keeps outside the checkout).
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    cmd.env("CARGO_TARGET_DIR", target.join("plugin-new"));
    if let Some(t) = tinygo() {
        cmd.env("TINYGO", t);
    }
    let out = cmd.output().expect("running edgerep");
    eprintln!(
        "edgerep {:?}: {}\n{}{}",
        args,
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// TinyGo as `cargo xtask build-plugins` finds it: `$TINYGO`, else what
/// `scripts/install-tinygo.sh` installs or finds in `$EDGEREP_CACHE`.
fn tinygo() -> Option<PathBuf> {
    if let Some(t) = std::env::var_os("TINYGO") {
        return Some(t.into());
    }
    let out = Command::new("bash")
        .arg(root().join("scripts/install-tinygo.sh"))
        .output()
        .ok()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().rev().find(|l| !l.trim().is_empty())?;
    out.status.success().then(|| PathBuf::from(line.trim()))
}

fn os(s: &str) -> &std::ffi::OsStr {
    s.as_ref()
}

/// Changes what the Rust transform scaffold in `dir` sets `hello` to (from `"world"`), so its
/// build is another module; returns the source as it was.
fn set_hello(dir: &Path, to: &str) -> String {
    let lib = dir.join("src/lib.rs");
    let code = std::fs::read_to_string(&lib).unwrap();
    let from = r#"value.set("hello", "world")"#;
    assert!(code.contains(from), "{}: {code}", lib.display());
    std::fs::write(
        &lib,
        code.replace(from, &format!("value.set(\"hello\", \"{to}\")")),
    )
    .unwrap();
    code
}

#[test]
fn resolver_scaffolds_build_and_pass_their_vectors_and_native_tests() {
    let tmp = tempfile::tempdir().unwrap();
    for lang in ["rust", "tinygo", "go"] {
        let name = format!("pick-{lang}");
        let out = edgerep(&[
            os("plugin"),
            os("new"),
            os("--lang"),
            os(lang),
            os("--world"),
            os("resolver"),
            os(&name),
            os("--dir"),
            tmp.path().as_os_str(),
        ]);
        assert!(
            out.status.success(),
            "plugin new --world resolver --lang {lang}"
        );
        let dir = tmp.path().join(&name);
        let wasm = tmp.path().join(format!("{name}.wasm"));
        let out = edgerep(&[
            os("plugin"),
            os("build"),
            os("--lang"),
            os(lang),
            dir.as_os_str(),
            os("-o"),
            wasm.as_os_str(),
        ]);
        assert!(out.status.success(), "plugin build ({lang})");
        let out = edgerep(&[os("plugin"), os("check"), wasm.as_os_str()]);
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains("\"world\": \"resolver\""));
        let out = edgerep(&[
            os("plugin"),
            os("test"),
            wasm.as_os_str(),
            dir.join("vectors").as_os_str(),
        ]);
        assert!(out.status.success(), "plugin test ({lang})");
        if lang == "rust" {
            native_tests_pass(&dir);
            // No path of this machine's in the build (the SDK's, in the checkout, was: the
            // same source built elsewhere got another sha256).
            let bytes = std::fs::read(&wasm).unwrap();
            for path in [
                root().canonicalize().unwrap(),
                tmp.path().canonicalize().unwrap(),
            ] {
                let path = path.display().to_string();
                assert!(
                    !bytes.windows(path.len()).any(|w| w == path.as_bytes()),
                    "{} names {path}",
                    wasm.display()
                );
            }
        }
    }
}

/// A Rust scaffold comes with a lock file: every package of the SDK's own, at its version, and
/// the plugin's package.
fn sdk_versions_are_pinned(dir: &Path) {
    let packages = |lock: &Path| -> Vec<String> {
        let text = std::fs::read_to_string(lock).unwrap();
        let mut out = Vec::new();
        let mut name = None;
        for line in text.lines() {
            if let Some(n) = line.strip_prefix("name = ") {
                name = Some(n.to_owned());
            } else if let (Some(v), Some(n)) = (line.strip_prefix("version = "), name.take()) {
                out.push(format!("{n} {v}"));
            }
        }
        out
    };
    let scaffold = packages(&dir.join("Cargo.lock"));
    let sdk = packages(&root().join("guest-sdk/rust/Cargo.lock"));
    assert!(
        sdk.iter().any(|p| p.starts_with("\"wit-bindgen\" ")),
        "{sdk:?}"
    );
    for p in &sdk {
        assert!(scaffold.contains(p), "{p} not pinned: {scaffold:?}");
    }
    assert_eq!(scaffold.len(), sdk.len() + 1, "{scaffold:?}");
}

/// The scaffold's native tests pass as made (`cargo test` in its folder).
fn native_tests_pass(dir: &Path) {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    let out = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["test", "--quiet"])
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", target.join("plugin-new"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo test in the scaffold: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn scaffolds_build_and_pass_their_vectors() {
    let tmp = tempfile::tempdir().unwrap();
    for lang in ["rust", "tinygo", "go"] {
        let name = format!("demo-{lang}");
        let out = edgerep(&[
            os("plugin"),
            os("new"),
            os("--lang"),
            os(lang),
            os(&name),
            os("--dir"),
            tmp.path().as_os_str(),
        ]);
        assert!(out.status.success(), "plugin new --lang {lang}");
        let dir = tmp.path().join(&name);
        if lang == "rust" {
            sdk_versions_are_pinned(&dir);
        }
        let wasm = tmp.path().join(format!("{name}.wasm"));
        let out = edgerep(&[
            os("plugin"),
            os("build"),
            os("--lang"),
            os(lang),
            dir.as_os_str(),
            os("-o"),
            wasm.as_os_str(),
        ]);
        assert!(out.status.success(), "plugin build --lang {lang}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("sha256 ") && stdout.contains("size "),
            "{stdout}"
        );
        assert!(wasm.is_file());

        let vectors = dir.join("vectors");
        let out = edgerep(&[
            os("plugin"),
            os("test"),
            wasm.as_os_str(),
            vectors.as_os_str(),
        ]);
        assert!(out.status.success(), "plugin test ({lang})");
        assert!(String::from_utf8_lossy(&out.stdout).contains("pass "));
        if lang == "rust" {
            native_tests_pass(&dir);
            update_config_writes_the_new_hash(&tmp.path().join("node"), &dir, &wasm);
        }

        // A wrong expected value fails, naming the file.
        let sample = vectors.join("sample.json");
        let text = std::fs::read_to_string(&sample).unwrap();
        let broken = text.replace("\"hello\": \"world\"", "\"hello\": \"World!\"");
        assert_ne!(text, broken);
        std::fs::write(vectors.join("broken.json"), broken).unwrap();
        let out = edgerep(&[
            os("plugin"),
            os("test"),
            wasm.as_os_str(),
            vectors.as_os_str(),
        ]);
        assert_eq!(
            out.status.code(),
            Some(5),
            "plugin test with a broken vector ({lang})"
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("FAIL") && stdout.contains("broken.json"),
            "{stdout}"
        );
        assert!(
            stdout.contains("pass ") && stdout.contains("sample.json"),
            "{stdout}"
        );
        assert_eq!(
            stdout.matches("broken.json").count(),
            1,
            "the path once: {stdout}"
        );
        assert!(!stdout.contains("component build"), "{stdout}");
        // The message points at the field that differs, and the values read as JSON.
        assert!(
            stdout.contains(
                "first difference at [0].value.hello: expected \"World!\", got \"world\""
            ),
            "{stdout}"
        );
        assert!(!stdout.contains("value_hex"), "{stdout}");
        // A vector file that is not valid is not a plugin failure: exit 2, named as such.
        std::fs::write(vectors.join("broken.json"), "{\"plugin\": ").unwrap();
        let out = edgerep(&[
            os("plugin"),
            os("test"),
            wasm.as_os_str(),
            vectors.as_os_str(),
        ]);
        assert_eq!(out.status.code(), Some(2), "an invalid vector ({lang})");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("INVALID") && stdout.contains("broken.json"),
            "{stdout}"
        );
        assert!(!stdout.contains("FAIL"), "{stdout}");
        std::fs::remove_file(vectors.join("broken.json")).unwrap();
        // One vector file alone.
        let out = edgerep(&[
            os("plugin"),
            os("test"),
            wasm.as_os_str(),
            sample.as_os_str(),
        ]);
        assert!(out.status.success(), "plugin test FILE ({lang})");
        assert!(String::from_utf8_lossy(&out.stdout).contains("1 of 1 vectors passed"));
    }
}

/// `plugin build DIR -o WASM --update-config CONFIG`.
fn build_updating(dir: &Path, wasm: &Path, config: &Path) -> Output {
    edgerep(&[
        os("plugin"),
        os("build"),
        dir.as_os_str(),
        os("-o"),
        wasm.as_os_str(),
        os("--update-config"),
        config.as_os_str(),
    ])
}

/// The author's loop on a running node: the plugin transforms writes on ingest; its source
/// changes, `plugin build --update-config` writes the new hash, `edgerep reload` takes it in,
/// and the same process transforms the next write with the new build.
fn deployed_plugin_is_rebuilt_and_reloaded(config: &Path, dir: &Path, wasm: &Path) {
    let text = std::fs::read_to_string(config).unwrap();
    std::fs::write(
        config,
        format!("{text}\n[[collections.declared]]\nname = \"things\"\ntransforms_on_ingest = [\"demo\"]\n"),
    )
    .unwrap();
    let node = common::Node::start(config);
    let pid = node.child.id();
    let hello = |key: &str| {
        common::put(&node, "things", key, r#"{"name":"x"}"#);
        let (status, body) = common::get(&node, "things", key);
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["hello"].clone()
    };
    assert_eq!(hello("t-1"), "world");
    let source = set_hello(dir, "again");
    let out = build_updating(dir, wasm, config);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = edgerep(&[os("reload"), os("--config"), config.as_os_str()]);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("\"demo\""),
        "the new build was loaded: {said}"
    );
    assert_eq!(hello("t-2"), "again", "the same node, the new build");
    assert_eq!(node.child.id(), pid);
    std::fs::write(dir.join("src/lib.rs"), source).unwrap();
    node.terminate();
}

/// `plugin build --update-config`: the node config names the component (built already) with a
/// placeholder for its sha256; the build writes the hash in place, keeping the file's comments,
/// and the config checks. (With the file there, the build once read the config before
/// updating it, and refused the placeholder it was asked to fill in.)
fn update_config_writes_the_new_hash(node: &Path, dir: &Path, wasm: &Path) {
    let out = edgerep(&[os("init"), node.as_os_str()]);
    assert!(out.status.success());
    let config = node.join("edgerep.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "\n# the plugin under work\n[plugins.demo]\npath = \"{}\"\nsha256 = \"TODO\"\n",
        wasm.display(),
    ));
    assert!(wasm.is_file());
    std::fs::write(&config, &text).unwrap();
    let out = edgerep(&[os("config"), os("check"), config.as_os_str()]);
    assert_eq!(out.status.code(), Some(2), "the placeholder is refused");
    let out = build_updating(dir, wasm, &config);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let sha = stdout
        .lines()
        .find_map(|l| l.strip_prefix("sha256 "))
        .unwrap()
        .to_owned();
    let updated = std::fs::read_to_string(&config).unwrap();
    assert!(
        updated.contains(&format!("sha256 = \"{sha}\"")),
        "{updated}"
    );
    assert!(updated.contains("# the plugin under work"), "comments kept");
    let out = edgerep(&[os("config"), os("check"), config.as_os_str()]);
    assert!(out.status.success(), "the config checks with the new hash");
    deployed_plugin_is_rebuilt_and_reloaded(&config, dir, wasm);
    // A config that does not name the component is left alone.
    let other = node.join("other.toml");
    std::fs::write(
        &other,
        std::fs::read_to_string(node.join("edgerep.toml"))
            .unwrap()
            .replace("[plugins.demo]", "[plugins.demo2]")
            .replace(&wasm.display().to_string(), "/nowhere.wasm"),
    )
    .unwrap();
    let before = std::fs::read_to_string(&other).unwrap();
    let out = build_updating(dir, wasm, &other);
    assert!(!out.status.success());
    assert_eq!(std::fs::read_to_string(&other).unwrap(), before);
    // The refusal says how the config's paths were read, and gives a table to paste.
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("plugins.demo2.path \"/nowhere.wasm\" is /nowhere.wasm")
            && said.contains("read from the config's folder")
            && said.contains("sha256 = \""),
        "{said}"
    );
    // A component that decides a collection's state (here a resolver) is not built
    // over in place: refused before anything is written, the build the node runs kept.
    let deciding = node.join("deciding.toml");
    std::fs::write(
        &deciding,
        format!(
            "{}\n[[collections.declared]]\nname = \"shaped\"\nresolver = \"demo\"\n",
            std::fs::read_to_string(&config).unwrap()
        ),
    )
    .unwrap();
    let (config_before, wasm_before) = (
        std::fs::read(&deciding).unwrap(),
        std::fs::read(wasm).unwrap(),
    );
    let out = build_updating(dir, wasm, &deciding);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("plugins.demo") && said.contains("upgrades") && said.contains("-v2.wasm"),
        "{said}"
    );
    assert_eq!(std::fs::read(&deciding).unwrap(), config_before);
    assert_eq!(std::fs::read(wasm).unwrap(), wasm_before);
    // The component built again from the source as it was (the author's loop above changed
    // it and put it back), for the checks that follow.
    let out = edgerep(&[
        os("plugin"),
        os("build"),
        dir.as_os_str(),
        os("-o"),
        wasm.as_os_str(),
    ]);
    assert!(out.status.success());
}

/// Without `CARGO_TARGET_DIR`, Rust plugins build in one directory shared by every plugin
/// (`$EDGEREP_CACHE/plugin-target`), not each in its own `target/`: a new plugin reuses the
/// SDK's compiled dependencies.
#[test]
fn rust_plugins_share_one_target_directory() {
    let tmp = tempfile::tempdir().unwrap();
    // Kept between runs (inside cargo's target directory), so only the first run compiles the
    // SDK's dependencies.
    let cache = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
        .join("plugin-shared-cache");
    for name in ["shared-one", "shared-two"] {
        let run = |args: &[&std::ffi::OsStr]| {
            let out = Command::new(env!("CARGO_BIN_EXE_edgerep"))
                .args(args)
                .env_remove("CARGO_TARGET_DIR")
                .env("EDGEREP_CACHE", &cache)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&[
            os("plugin"),
            os("new"),
            os("--lang"),
            os("rust"),
            os(name),
            os("--dir"),
            tmp.path().as_os_str(),
        ]);
        let dir = tmp.path().join(name);
        let wasm = tmp.path().join(format!("{name}.wasm"));
        run(&[
            os("plugin"),
            os("build"),
            dir.as_os_str(),
            os("-o"),
            wasm.as_os_str(),
        ]);
        assert!(wasm.is_file());
        assert!(
            cache
                .join(format!(
                    "plugin-target/wasm32-unknown-unknown/release/{}.wasm",
                    name.replace('-', "_")
                ))
                .is_file(),
            "built in the shared directory"
        );
        assert!(
            !dir.join("target/wasm32-unknown-unknown").exists(),
            "no target directory of its own"
        );
    }
}

/// Two Rust plugins of one name (a folder copied to start another) share the target directory,
/// where a cdylib's file carries no hash: each build reads its own plugin's module, never the
/// other's (cargo rebuilds the one whose output the other overwrote); and a `[lib] name` apart
/// from the package's is found.
#[test]
fn a_copied_plugin_folder_builds_its_own_module() {
    let tmp = tempfile::tempdir().unwrap();
    let (first, copy) = (tmp.path().join("first"), tmp.path().join("copy"));
    for dir in [&first, &copy] {
        std::fs::create_dir_all(dir).unwrap();
        let out = edgerep(&[
            os("plugin"),
            os("new"),
            os("--lang"),
            os("rust"),
            os("same-name"),
            os("--dir"),
            dir.as_os_str(),
        ]);
        assert!(out.status.success());
    }
    // The copy is changed, as one starts another plugin from a copy.
    set_hello(&copy.join("same-name"), "copy");
    let build = |dir: &Path, out: &str| -> Vec<u8> {
        let wasm = tmp.path().join(out);
        let run = edgerep(&[
            os("plugin"),
            os("build"),
            dir.join("same-name").as_os_str(),
            os("-o"),
            wasm.as_os_str(),
        ]);
        assert!(run.status.success(), "plugin build {}", dir.display());
        std::fs::read(wasm).unwrap()
    };
    let first_wasm = build(&first, "first.wasm");
    let copy_wasm = build(&copy, "copy.wasm");
    assert!(
        first_wasm != copy_wasm,
        "the copy's change is in its module"
    );
    // Built again after the copy, with nothing changed: its own module, not the copy's.
    assert!(
        build(&first, "first-again.wasm") == first_wasm,
        "built again, the first plugin's own module"
    );

    // `[lib] name` apart from the package name, and a change: the build reads the renamed
    // library's module (the package's name would find the last build's, stale).
    let manifest = first.join("same-name/Cargo.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    assert!(text.contains("[lib]\n"), "{text}");
    std::fs::write(
        &manifest,
        text.replace("[lib]\n", "[lib]\nname = \"renamed_lib\"\n"),
    )
    .unwrap();
    set_hello(&first.join("same-name"), "renamed");
    let renamed = build(&first, "renamed.wasm");
    // A member of a workspace (cargo lists every member): its own package is built, with the
    // workspace's lock file as it is (it was re-resolved and rewritten), into the same bytes
    // as `cargo xtask build-plugins` gives (its paths were remapped otherwise).
    let lock = root().join("plugins/Cargo.lock");
    let lock_before = std::fs::read(&lock).unwrap();
    let member = tmp.path().join("redact.wasm");
    let run = edgerep(&[
        os("plugin"),
        os("build"),
        root().join("plugins/redact").as_os_str(),
        os("-o"),
        member.as_os_str(),
    ]);
    assert!(run.status.success(), "plugin build of a workspace member");
    assert!(
        std::fs::read(&lock).unwrap() == lock_before,
        "the workspace's lock file is left as it was"
    );
    assert!(
        std::fs::read(&member).unwrap()
            == std::fs::read(root().join("target/plugins/rust/redact.wasm")).unwrap(),
        "plugin build and cargo xtask build-plugins give the same bytes"
    );
    assert!(
        renamed != first_wasm && renamed != copy_wasm,
        "the renamed library's module, not a stale one"
    );

    // Built over a file holding another build (a node may run it, and a resolver's build
    // cannot change in place): the build it held is kept beside it, and the command says where.
    let over = tmp.path().join("first.wasm");
    let previous = tmp.path().join("first.wasm.previous");
    let build_over = || {
        edgerep(&[
            os("plugin"),
            os("build"),
            copy.join("same-name").as_os_str(),
            os("-o"),
            over.as_os_str(),
        ])
    };
    let run = build_over();
    assert!(run.status.success());
    let said = String::from_utf8_lossy(&run.stderr);
    assert!(said.contains("first.wasm.previous"), "{said}");
    assert!(std::fs::read(&over).unwrap() == copy_wasm);
    assert!(
        std::fs::read(&previous).unwrap() == first_wasm,
        "the old build kept"
    );
    // The same build again: nothing to keep, and the kept one stays as it was.
    let run = build_over();
    assert!(run.status.success());
    assert!(!String::from_utf8_lossy(&run.stderr).contains(".previous"));
    assert!(std::fs::read(&previous).unwrap() == first_wasm);
}
