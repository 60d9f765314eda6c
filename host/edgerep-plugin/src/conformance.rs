//! The plugin conformance runner: runs the cases of `tests/vectors/plugins/` (format: that
//! folder's README.md) against built components, so every build of a plugin (Rust, Go, TinyGo)
//! is held to the same outputs.
//!
//! Each case loads `<wasm_dir>/<plugin>.wasm` with the case's params and limits, calls it once on a
//! fresh instance and compares: changes field by field with values byte for byte (`value_hex`,
//! `merge_hex`), or the failure kind (and the exact message for `plugin-error` if the case gives
//! one). Every value the guest returns must already be in deterministic encoding, byte for byte
//! (the host would canonicalize it, which would hide a guest codec that is not deterministic).
//! The README calls the host's `bad-output` kind `invalid-output`; both names are accepted.
//!
//! Across builds ([`run_vector_file_across`], [`run_vector_dir_across`]), a case must pass on
//! every build of its plugin, and the builds must agree with each other: the same changes or
//! resolution, byte for byte, or the same failure kind (and the same message for
//! `plugin-error`).

use std::fs;
use std::path::{Path, PathBuf};

use edgerep_wire::Value;
use serde_json::{Map, Value as Json};

use crate::failure::{Failure, FailureKind};
use crate::json::{
    change_to_json, check_fields, event_from_json, key_of, meta_of, object, resolution_to_json,
    resolver_input_from_json, text, uint, value_of,
};
use crate::limits::Limits;
use crate::output::{Change, Resolution};
use crate::runtime::{PluginSource, Runtime, World};

/// The limits a case gets where it does not say: [`Limits::default`].
pub fn default_limits() -> Limits {
    Limits::default()
}

/// One build of the plugins: the toolchain's name and the folder of its components
/// (`<wasm_dir>/<plugin>.wasm`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Build {
    /// The toolchain (`rust`, `tinygo`, `go`): for messages.
    pub toolchain: String,
    /// The folder of the components; or one component file, run for every case whatever its
    /// `plugin` (and then a case's folder need not be named after its plugin).
    pub wasm_dir: PathBuf,
    /// What to run to make the components, for the message when one is missing.
    pub build_hint: String,
}

impl Build {
    /// The build of `toolchain` in `wasm_dir`, made by `cargo xtask build-plugins --toolchain
    /// <toolchain>`.
    pub fn new(toolchain: &str, wasm_dir: impl Into<PathBuf>) -> Build {
        Build {
            toolchain: toolchain.to_owned(),
            wasm_dir: wasm_dir.into(),
            build_hint: format!("cargo xtask build-plugins --toolchain {toolchain}"),
        }
    }
}

/// What one case gave on one build.
#[derive(Clone, Debug)]
pub struct CaseRun {
    /// The build's toolchain.
    pub toolchain: String,
    /// The call's output, or its failure.
    pub outcome: Result<Outcome, Failure>,
    /// Fuel the call used (not counting instantiation).
    pub fuel_used: u64,
}

/// What a successful call gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A transform's changes.
    Changes(Vec<Change>),
    /// A resolver's decision.
    Resolution(Resolution),
}

/// Runs one case file against `<wasm_dir>/<plugin>.wasm`. `Err` says what differs, naming the
/// file and the case's description.
pub fn run_vector_file(runtime: &Runtime, wasm_dir: &Path, vector: &Path) -> Result<(), String> {
    let build = Build {
        toolchain: "component".into(),
        wasm_dir: wasm_dir.to_path_buf(),
        build_hint: "cargo xtask build-plugins".into(),
    };
    run_vector_file_across(runtime, std::slice::from_ref(&build), vector).map(|_| ())
}

/// Runs one case file against every build in `builds`: each must meet the case's expectation,
/// and all must agree byte for byte (see the [module documentation](self)). Returns what each
/// build gave; `Err` names the file, the case's description and the build.
pub fn run_vector_file_across(
    runtime: &Runtime,
    builds: &[Build],
    vector: &Path,
) -> Result<Vec<CaseRun>, String> {
    let text = fs::read_to_string(vector).map_err(|e| format!("{}: {e}", vector.display()))?;
    let case: Json = serde_json::from_str(&text)
        .map_err(|e| format!("{}: invalid JSON: {e}", vector.display()))?;
    let description = case
        .get("description")
        .and_then(Json::as_str)
        .unwrap_or("(no description)")
        .to_owned();
    run_case_across(runtime, builds, vector, &case)
        .map_err(|e| format!("{} ({description}): {e}", vector.display()))
}

/// Runs every `*.json` under `vectors_dir` (one folder per plugin), all of them even after a
/// failure. Returns how many ran, or every failure, one per line.
pub fn run_vector_dir(
    runtime: &Runtime,
    wasm_dir: &Path,
    vectors_dir: &Path,
) -> Result<usize, String> {
    let files = vector_files(vectors_dir)?;
    let failures: Vec<String> = files
        .iter()
        .filter_map(|file| run_vector_file(runtime, wasm_dir, file).err())
        .collect();
    if failures.is_empty() {
        Ok(files.len())
    } else {
        Err(format!(
            "{} of {} plugin vectors failed:\n{}",
            failures.len(),
            files.len(),
            failures.join("\n")
        ))
    }
}

/// Runs every `*.json` under `vectors_dir` against the builds `builds_of(plugin)` names for its
/// plugin ([`run_vector_file_across`]), all of them even after a failure. Returns what every
/// case gave on every build, or every failure, one per line.
pub fn run_vector_dir_across(
    runtime: &Runtime,
    vectors_dir: &Path,
    builds_of: impl Fn(&str) -> Vec<Build>,
) -> Result<Vec<(PathBuf, Vec<CaseRun>)>, String> {
    let files = vector_files(vectors_dir)?;
    let mut runs = Vec::new();
    let mut failures = Vec::new();
    for file in &files {
        let plugin = file
            .parent()
            .and_then(Path::file_name)
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        match run_vector_file_across(runtime, &builds_of(&plugin), file) {
            Ok(r) => runs.push((file.clone(), r)),
            Err(e) => failures.push(e),
        }
    }
    if failures.is_empty() {
        Ok(runs)
    } else {
        Err(format!(
            "{} of {} plugin vectors failed:\n{}",
            failures.len(),
            files.len(),
            failures.join("\n")
        ))
    }
}

/// A vector file and its result: `Err` says what differs.
pub type VectorResult = (PathBuf, Result<(), String>);

/// Runs every `*.json` in `vectors_dir` and in its folders against the one component `wasm`
/// (whatever the cases' `plugin`), all of them even after a failure: for a plugin author's own
/// vectors. Returns each file with its result (`Err` says what differs), sorted by file.
pub fn run_vectors_on_component(
    runtime: &Runtime,
    wasm: &Path,
    vectors_dir: &Path,
) -> Result<Vec<VectorResult>, String> {
    if !wasm.is_file() {
        return Err(format!("{} is not a file", wasm.display()));
    }
    let build = Build {
        toolchain: "component".into(),
        wasm_dir: wasm.to_path_buf(),
        build_hint: "edgerep plugin build".into(),
    };
    // One vector file, or a folder of them (and its folders).
    let mut files: Vec<PathBuf> = if vectors_dir.is_file() {
        vec![vectors_dir.to_path_buf()]
    } else {
        let mut files: Vec<PathBuf> = fs::read_dir(vectors_dir)
            .map_err(|e| format!("{}: {e}", vectors_dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "json"))
            .collect();
        files.extend(vector_files(vectors_dir)?);
        files
    };
    files.sort();
    Ok(files
        .into_iter()
        .map(|file| {
            let r = run_vector_file_across(runtime, std::slice::from_ref(&build), &file);
            (file, r.map(|_| ()))
        })
        .collect())
}

/// The `*.json` files in the folders of `vectors_dir`, sorted.
pub fn vector_files(vectors_dir: &Path) -> Result<Vec<PathBuf>, String> {
    let read = |dir: &Path| -> Result<Vec<PathBuf>, String> {
        let mut paths = fs::read_dir(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .map(|entry| {
                entry
                    .map(|e| e.path())
                    .map_err(|e| format!("{}: {e}", dir.display()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        paths.sort();
        Ok(paths)
    };
    let mut files = Vec::new();
    for folder in read(vectors_dir)?.into_iter().filter(|p| p.is_dir()) {
        files.extend(
            read(&folder)?
                .into_iter()
                .filter(|p| p.extension().is_some_and(|e| e == "json")),
        );
    }
    Ok(files)
}

fn run_case_across(
    runtime: &Runtime,
    builds: &[Build],
    vector: &Path,
    case: &Json,
) -> Result<Vec<CaseRun>, String> {
    if builds.is_empty() {
        return Err("no builds to run the case against".into());
    }
    let o = object(case, "case")?;
    check_fields(
        o,
        &[
            "plugin",
            "world",
            "description",
            "params",
            "limits",
            "input",
            "expect",
        ],
        "case",
    )?;
    let plugin = text(o, "plugin")?.ok_or("missing plugin")?;
    let folder = vector
        .parent()
        .and_then(Path::file_name)
        .and_then(|f| f.to_str());
    let single = builds.iter().all(|b| b.wasm_dir.is_file());
    if !single && folder != Some(plugin) {
        return Err(format!(
            "plugin {plugin:?} is not the folder's name {folder:?}"
        ));
    }
    let world = match text(o, "world")?.ok_or("missing world")? {
        "transform" => World::Transform,
        "resolver" => World::Resolver,
        other => return Err(format!("unknown world {other:?}")),
    };
    let params = meta_of(o.get("params")).map_err(|e| format!("params: {e}"))?;
    let mut limits = default_limits();
    if let Some(l) = o.get("limits") {
        let l = object(l, "limits")?;
        check_fields(l, &["fuel", "memory_bytes"], "limits")?;
        if let Some(fuel) = uint(l, "fuel")? {
            limits.fuel = fuel;
        }
        if let Some(bytes) = uint(l, "memory_bytes")? {
            limits.memory_bytes =
                usize::try_from(bytes).map_err(|_| "memory_bytes is too large")?;
        }
    }
    let expect = Expect::parse(o.get("expect").ok_or("missing expect")?, world)?;

    let input = o.get("input").ok_or("missing input")?;
    let mut runs: Vec<CaseRun> = Vec::new();
    for build in builds {
        // With several builds, say which one; with one (a single component) there is no other.
        let which = |e: String| {
            if builds.len() > 1 {
                format!("{} build: {e}", build.toolchain)
            } else {
                e
            }
        };
        let run = run_on_build(runtime, build, plugin, world, &params, limits, input)
            .map_err(|e| which(e.to_string()))?;
        if !run.canonical {
            return Err(which(
                "the plugin returned a value that is not in deterministic encoding \
                 (the host canonicalized it)"
                    .to_owned(),
            ));
        }
        let outcome = run.outcome;
        expect
            .check(outcome.clone())
            .map_err(|e| which(e.to_string()))?;
        if let Some(first) = runs.first() {
            agree(first, &build.toolchain, &outcome)?;
        }
        runs.push(CaseRun {
            toolchain: build.toolchain.clone(),
            outcome,
            fuel_used: run.fuel_used,
        });
    }
    Ok(runs)
}

/// Fails unless `outcome` (of the build `toolchain`) is the same as `first`'s: byte for byte on
/// success, the same kind (and message, for plugin-error) on failure.
fn agree(
    first: &CaseRun,
    toolchain: &str,
    outcome: &Result<Outcome, Failure>,
) -> Result<(), String> {
    let same = match (&first.outcome, outcome) {
        (Ok(a), Ok(b)) => a == b,
        (Err(a), Err(b)) => {
            a.kind == b.kind && (a.kind != FailureKind::PluginError || a.message == b.message)
        }
        _ => false,
    };
    if same {
        return Ok(());
    }
    let show = |o: &Result<Outcome, Failure>| match o {
        Ok(Outcome::Changes(c)) => Json::Array(c.iter().map(change_to_json).collect()).to_string(),
        Ok(Outcome::Resolution(r)) => resolution_to_json(r).to_string(),
        Err(f) => f.to_string(),
    };
    Err(format!(
        "the builds disagree:\n  {:<9} {}\n  {:<9} {}",
        first.toolchain,
        show(&first.outcome),
        toolchain,
        show(outcome)
    ))
}

/// Loads `<build>/<plugin>.wasm` and calls it once on a fresh instance. `Err` only for a build
/// that cannot be loaded.
fn run_on_build(
    runtime: &Runtime,
    build: &Build,
    plugin: &str,
    world: World,
    params: &std::collections::BTreeMap<String, String>,
    limits: Limits,
    input: &Json,
) -> Result<BuildRun, String> {
    let path = if build.wasm_dir.is_file() {
        build.wasm_dir.clone()
    } else {
        build.wasm_dir.join(format!("{plugin}.wasm"))
    };
    let wasm = fs::read(&path).map_err(|e| {
        format!(
            "cannot read the component {}: {e} (build the plugins: `{}`)",
            path.display(),
            build.build_hint
        )
    })?;
    let loaded = runtime
        .load(PluginSource {
            name: plugin.to_owned(),
            path,
            wasm,
            expected_sha256: None,
            limits,
            params: params.clone(),
        })
        .map_err(|e| e.to_string())?;
    if loaded.world() != world {
        return Err(format!(
            "the component implements the {} world, the case says {}",
            loaded.world().as_str(),
            world.as_str()
        ));
    }
    let got = match world {
        World::Transform => {
            let event = event_from_json(input).map_err(|e| format!("input: {e}"))?;
            loaded
                .transform_report(&event, true)
                .map(|r| ((Outcome::Changes(r.output), r.canonical), r.fuel_used))
        }
        World::Resolver => {
            let (collection, key, versions) =
                resolver_input_from_json(input).map_err(|e| format!("input: {e}"))?;
            loaded
                .resolve_report(&collection, &key, &versions)
                .map(|r| ((Outcome::Resolution(r.output), r.canonical), r.fuel_used))
        }
    };
    Ok(match got {
        Ok(((outcome, canonical), fuel_used)) => BuildRun {
            outcome: Ok(outcome),
            canonical,
            fuel_used,
        },
        Err(failure) => BuildRun {
            fuel_used: failure.fuel_used,
            outcome: Err(failure),
            canonical: true,
        },
    })
}

/// What [`run_on_build`] gave.
struct BuildRun {
    outcome: Result<Outcome, Failure>,
    /// Whether the guest's values were already in deterministic encoding.
    canonical: bool,
    fuel_used: u64,
}

/// What a case expects.
enum Expect {
    Changes(Vec<Change>),
    Resolution(Resolution),
    Failure {
        kind: FailureKind,
        message: Option<String>,
    },
}

impl Expect {
    fn parse(json: &Json, world: World) -> Result<Expect, String> {
        let o = object(json, "expect")?;
        check_fields(o, &["ok", "error", "message"], "expect")?;
        match (o.get("ok"), text(o, "error")?) {
            (Some(ok), None) if !o.contains_key("message") => match world {
                World::Transform => ok
                    .as_array()
                    .ok_or("expect.ok of a transform is not a list")?
                    .iter()
                    .enumerate()
                    .map(|(i, c)| expected_change(c).map_err(|e| format!("expect.ok[{i}]: {e}")))
                    .collect::<Result<_, _>>()
                    .map(Expect::Changes),
                World::Resolver => expected_resolution(ok).map(Expect::Resolution),
            },
            (None, Some(kind)) => Ok(Expect::Failure {
                kind: match kind {
                    "invalid-output" => FailureKind::BadOutput,
                    other => FailureKind::parse(other)
                        .ok_or_else(|| format!("unknown error kind {other:?}"))?,
                },
                message: text(o, "message")?.map(str::to_owned),
            }),
            _ => Err("expect needs exactly one of ok or error (message only with error)".into()),
        }
    }

    fn check(&self, got: Result<Outcome, Failure>) -> Result<(), String> {
        match (self, got) {
            (Expect::Changes(want), Ok(Outcome::Changes(got))) => {
                if want == &got {
                    return Ok(());
                }
                Err(format!(
                    "changes differ:\n  expected {}\n  got      {}",
                    Json::Array(want.iter().map(change_to_json).collect()),
                    Json::Array(got.iter().map(change_to_json).collect()),
                ))
            }
            (Expect::Resolution(want), Ok(Outcome::Resolution(got))) => {
                if want == &got {
                    return Ok(());
                }
                Err(format!(
                    "resolutions differ: expected {}, got {}",
                    resolution_to_json(want),
                    resolution_to_json(&got)
                ))
            }
            (Expect::Failure { kind, message }, Err(failure)) => {
                if failure.kind != *kind {
                    return Err(format!(
                        "expected the failure {kind}, got {}: {}",
                        failure.kind, failure.message
                    ));
                }
                match message {
                    Some(m) if *m != failure.message => Err(format!(
                        "expected the message {m:?}, got {:?}",
                        failure.message
                    )),
                    _ => Ok(()),
                }
            }
            (Expect::Failure { kind, .. }, Ok(_)) => {
                Err(format!("expected the failure {kind}, the call succeeded"))
            }
            (_, Err(failure)) => Err(format!("expected success, got {failure}")),
            (_, Ok(_)) => Err("the outcome does not match the world".into()),
        }
    }
}

/// An expected change: every field is required, `value_hex` (authoritative) or `value` on puts.
fn expected_change(json: &Json) -> Result<Change, String> {
    let o = object(json, "change")?;
    check_fields(
        o,
        &[
            "collection",
            "key",
            "key_base64",
            "op",
            "value",
            "value_hex",
            "schema",
            "meta",
        ],
        "change",
    )?;
    for field in ["collection", "op", "schema", "meta"] {
        if !o.contains_key(field) {
            return Err(format!("missing {field}"));
        }
    }
    let op = match text(o, "op")? {
        Some("put") => edgerep_wire::Op::Put,
        Some("delete") => edgerep_wire::Op::Delete,
        other => return Err(format!("unknown op {other:?}")),
    };
    let value = value_of(o, "value", "value_hex")?;
    if (op == edgerep_wire::Op::Put) != value.is_some() {
        return Err("a put has a value, a delete none".into());
    }
    Ok(Change {
        collection: text(o, "collection")?.unwrap_or_default().to_owned(),
        key: key_of(o)?.ok_or("missing key (or key_base64)")?,
        op,
        value,
        schema: u32::try_from(uint(o, "schema")?.unwrap_or_default())
            .map_err(|_| "schema is over u32")?,
        meta: meta_of(o.get("meta"))?,
    })
}

/// An expected resolution: `{"pick": i}`, `{"merge": json, "merge_hex": hex}` or `{"merge": null}`.
fn expected_resolution(json: &Json) -> Result<Resolution, String> {
    let o: &Map<String, Json> = object(json, "expect.ok")?;
    if let Some(i) = uint(o, "pick")? {
        check_fields(o, &["pick"], "expect.ok")?;
        return Ok(Resolution::Pick(
            usize::try_from(i).map_err(|_| "pick is too large")?,
        ));
    }
    check_fields(o, &["merge", "merge_hex"], "expect.ok")?;
    if o.get("merge").is_some_and(Json::is_null) {
        if o.contains_key("merge_hex") {
            return Err("merge null (a delete) has no merge_hex".into());
        }
        return Ok(Resolution::Merge(None));
    }
    let value: Option<Value> = value_of(o, "merge", "merge_hex")?;
    value
        .map(|v| Resolution::Merge(Some(v)))
        .ok_or_else(|| "expect.ok needs pick or merge".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(toolchain: &str, outcome: Result<Outcome, Failure>) -> CaseRun {
        CaseRun {
            toolchain: toolchain.into(),
            outcome,
            fuel_used: 0,
        }
    }

    fn failure(kind: FailureKind, message: &str) -> Failure {
        Failure {
            kind,
            message: message.into(),
            fuel_used: 1,
        }
    }

    #[test]
    fn builds_must_agree_byte_for_byte() {
        let value = |b: &[u8]| Value::from_canonical(b.to_vec(), &Default::default()).unwrap();
        let merge = |b: &[u8]| Ok(Outcome::Resolution(Resolution::Merge(Some(value(b)))));
        let rust = run("rust", merge(&[0x01]));
        assert!(agree(&rust, "go", &merge(&[0x01])).is_ok());
        let error = agree(&rust, "go", &merge(&[0x02])).unwrap_err();
        assert!(
            error.contains("the builds disagree") && error.contains("go"),
            "{error}"
        );
        assert!(agree(&rust, "go", &Ok(Outcome::Resolution(Resolution::Pick(0)))).is_err());
        assert!(agree(&rust, "go", &Err(failure(FailureKind::Trap, "x"))).is_err());

        // Failures: the same kind; for plugin-error also the same message.
        let trap = run("rust", Err(failure(FailureKind::Trap, "unreachable")));
        assert!(agree(&trap, "go", &Err(failure(FailureKind::Trap, "exit(2)"))).is_ok());
        assert!(agree(&trap, "go", &Err(failure(FailureKind::OutOfFuel, "x"))).is_err());
        let refused = run("rust", Err(failure(FailureKind::PluginError, "no")));
        assert!(
            agree(
                &refused,
                "go",
                &Err(failure(FailureKind::PluginError, "no"))
            )
            .is_ok()
        );
        assert!(
            agree(
                &refused,
                "go",
                &Err(failure(FailureKind::PluginError, "No"))
            )
            .is_err()
        );
    }
}
