//! The plugin conformance runner: runs the cases of `tests/vectors/plugins/` (format: that
//! folder's README.md) against built components, so every build of a plugin (Rust, Go, TinyGo)
//! can be held to the same outputs.
//!
//! Each case loads `<wasm_dir>/<plugin>.wasm` with the case's params and limits, calls it once on a
//! fresh instance and compares: changes field by field with values byte for byte (`value_hex`,
//! `merge_hex`), or the failure kind (and the exact message for `plugin-error` if the case gives
//! one). The README calls the host's `bad-output` kind `invalid-output`; both names are accepted.

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

/// Runs one case file against `<wasm_dir>/<plugin>.wasm`. `Err` says what differs, naming the
/// file and the case's description.
pub fn run_vector_file(runtime: &Runtime, wasm_dir: &Path, vector: &Path) -> Result<(), String> {
    let text = fs::read_to_string(vector).map_err(|e| format!("{}: {e}", vector.display()))?;
    let case: Json = serde_json::from_str(&text)
        .map_err(|e| format!("{}: invalid JSON: {e}", vector.display()))?;
    let description = case
        .get("description")
        .and_then(Json::as_str)
        .unwrap_or("(no description)")
        .to_owned();
    run_case(runtime, wasm_dir, vector, &case)
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

fn run_case(runtime: &Runtime, wasm_dir: &Path, vector: &Path, case: &Json) -> Result<(), String> {
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
    if folder != Some(plugin) {
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

    let path = wasm_dir.join(format!("{plugin}.wasm"));
    let wasm = fs::read(&path).map_err(|e| {
        format!(
            "cannot read the component {}: {e} (build the plugins: `cargo xtask build-plugins`)",
            path.display()
        )
    })?;
    let loaded = runtime
        .load(PluginSource {
            name: plugin.to_owned(),
            path,
            wasm,
            expected_sha256: None,
            limits,
            params,
        })
        .map_err(|e| e.to_string())?;
    if loaded.world() != world {
        return Err(format!(
            "the component implements the {} world, the case says {}",
            loaded.world().as_str(),
            world.as_str()
        ));
    }
    let input = o.get("input").ok_or("missing input")?;
    let got = match world {
        World::Transform => {
            let event = event_from_json(input).map_err(|e| format!("input: {e}"))?;
            loaded.transform(&event, true).map(Outcome::Changes)
        }
        World::Resolver => {
            let (collection, key, versions) =
                resolver_input_from_json(input).map_err(|e| format!("input: {e}"))?;
            loaded
                .resolve(&collection, &key, &versions)
                .map(Outcome::Resolution)
        }
    };
    expect.check(got)
}

/// What a call gave.
enum Outcome {
    Changes(Vec<Change>),
    Resolution(Resolution),
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
