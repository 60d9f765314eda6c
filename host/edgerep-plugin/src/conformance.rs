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

use crate::error::LoadError;
use crate::failure::{Failure, FailureKind};
use crate::json::{
    JsonError, change_to_json, check_fields, event_at_stage, key_of, meta_of, object,
    resolution_to_json, resolver_input_from_json, text, uint, value_of,
};
use crate::limits::Limits;
use crate::output::{Change, Resolution};
use crate::plugin::CallReport;
use crate::runtime::{PluginSource, Runtime, World};

/// Why a case, a vector file or a folder of them did not pass (the message says what differs).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConformanceError {
    /// A file or folder cannot be read.
    #[error("{path}: {error}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// Why it cannot be read.
        error: std::io::Error,
    },
    /// A vector file is not JSON.
    #[error("{path}: invalid JSON: {error}")]
    InvalidJson {
        /// The vector file.
        path: PathBuf,
        /// Why it is not JSON.
        error: serde_json::Error,
    },
    /// A case did not pass.
    #[error("{path} ({description}): {error}")]
    Case {
        /// The vector file.
        path: PathBuf,
        /// The case's description.
        description: String,
        /// What differs.
        error: Box<ConformanceError>,
    },
    /// A case did not pass on one of several builds.
    #[error("{toolchain} build: {error}")]
    Build {
        /// The build's toolchain.
        toolchain: String,
        /// What differs.
        error: Box<ConformanceError>,
    },
    /// Some of the vector files did not pass (all of them ran).
    #[error(
        "{} of {} plugin vectors failed:\n{}",
        .failures.len(),
        .total,
        lines(.failures)
    )]
    Failed {
        /// Why each failing file did not pass.
        failures: Vec<ConformanceError>,
        /// How many vector files ran.
        total: usize,
    },
    /// The component to run is not a file.
    #[error("{path} is not a file")]
    NotAFile {
        /// The path given.
        path: PathBuf,
    },
    /// No builds were given.
    #[error("no builds to run the case against")]
    NoBuilds,
    /// The case is not valid (a field is missing, unknown or of the wrong type).
    #[error(transparent)]
    InvalidCase(#[from] JsonError),
    /// The case's `params` are not valid.
    #[error("params: {0}")]
    Params(JsonError),
    /// The case's `input` is not valid.
    #[error("input: {0}")]
    Input(JsonError),
    /// The case's `plugin` is not the name of its folder.
    #[error("plugin {plugin:?} is not the folder's name {folder:?}")]
    PluginNotFolder {
        /// The case's `plugin`.
        plugin: String,
        /// The name of the case file's folder.
        folder: Option<String>,
    },
    /// The case's `world` is neither `transform` nor `resolver`.
    #[error("unknown world {world:?}")]
    UnknownWorld {
        /// The case's `world`.
        world: String,
    },
    /// The case's `stage` is neither `ingest` nor `apply`, or `apply` for a resolver.
    #[error("unknown stage {stage:?} (\"ingest\" or \"apply\"; \"apply\" only for a transform)")]
    UnknownStage {
        /// The case's `stage`.
        stage: String,
    },
    /// The case's `limits.memory_bytes` does not fit in a `usize`.
    #[error("memory_bytes is too large")]
    MemoryTooLarge,
    /// A build's component cannot be read.
    #[error("cannot read the component {path}: {error} (build the plugins: `{build_hint}`)")]
    ReadComponent {
        /// The component file.
        path: PathBuf,
        /// Why it cannot be read.
        error: std::io::Error,
        /// What to run to make it.
        build_hint: String,
    },
    /// A build's component does not load.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// A build's component implements the other world.
    #[error(
        "the component implements the {} world, the case says {}",
        .component.as_str(),
        .case.as_str()
    )]
    WrongWorld {
        /// The world the component implements.
        component: World,
        /// The world the case says.
        case: World,
    },
    /// The plugin returned a value not in deterministic encoding.
    #[error(
        "the plugin returned a value that is not in deterministic encoding \
         (the host canonicalized it)"
    )]
    NotCanonical,
    /// Two builds gave different outcomes.
    #[error("the builds disagree:\n  {first_toolchain:<9} {first}\n  {toolchain:<9} {other}")]
    Disagree {
        /// The first build's toolchain.
        first_toolchain: String,
        /// The first build's outcome, as JSON (or the failure).
        first: String,
        /// The other build's toolchain.
        toolchain: String,
        /// The other build's outcome, as JSON (or the failure).
        other: String,
    },
    /// The case's `expect.ok` is not a list for a transform.
    #[error("expect.ok of a transform is not a list")]
    ExpectOkNotList,
    /// One of the case's expected changes is not valid.
    #[error("expect.ok[{index}]: {error}")]
    ExpectedChange {
        /// Its position in `expect.ok`.
        index: usize,
        /// Why it is not valid.
        error: Box<ConformanceError>,
    },
    /// The case's `expect.error` is not a failure kind.
    #[error("unknown error kind {kind:?}")]
    UnknownErrorKind {
        /// The case's `expect.error`.
        kind: String,
    },
    /// The case's `expect` has not exactly one of `ok` and `error`.
    #[error("expect needs exactly one of ok or error (message only with error)")]
    ExpectNotOkOrError,
    /// The transform returned other changes than expected.
    #[error("changes differ: {}", changes_differ(.expected, .got))]
    ChangesDiffer {
        /// The changes expected.
        expected: Vec<Change>,
        /// The changes returned.
        got: Vec<Change>,
    },
    /// The resolver returned another resolution than expected.
    #[error(
        "resolutions differ: expected {}, got {}",
        resolution_to_json(.expected),
        resolution_to_json(.got)
    )]
    ResolutionsDiffer {
        /// The resolution expected.
        expected: Resolution,
        /// The resolution returned.
        got: Resolution,
    },
    /// The call failed with another kind than expected.
    #[error("expected the failure {expected}, got {}: {}", .got.kind, .got.message)]
    WrongFailure {
        /// The kind expected.
        expected: FailureKind,
        /// The failure.
        got: Failure,
    },
    /// The call failed with the expected kind but another message.
    #[error("expected the message {expected:?}, got {got:?}")]
    WrongMessage {
        /// The message expected.
        expected: String,
        /// The failure's message.
        got: String,
    },
    /// The call succeeded where a failure was expected.
    #[error("expected the failure {expected}, the call succeeded")]
    UnexpectedSuccess {
        /// The kind expected.
        expected: FailureKind,
    },
    /// The failure happened while the instance started where the case expects it in the
    /// call, or the other way round.
    #[error(
        "expected the failure while {expected} (a case expecting a start-up failure says \"while\": \"starting\"), got {got}"
    )]
    WrongPhase {
        /// `starting` or `calling`.
        expected: &'static str,
        /// What failed.
        got: Failure,
    },
    /// The same event on a reused (pooled) instance gave something else than on a fresh one.
    #[error(
        "not repeatable: call {call} of the same event on a reused instance gave {}, a fresh instance {} (state kept between calls, or randomness such as Go's map iteration order, reaches the output)",
        .got.as_ref().map_or_else(|f| format!("the failure {}: {}", f.kind, f.message), |c| changes_json(c).to_string()),
        changes_json(.fresh)
    )]
    NotRepeatable {
        /// Which call on the reused instance (1 or 2).
        call: u32,
        /// What the fresh instance gave.
        fresh: Vec<Change>,
        /// What the reused one gave.
        got: Result<Vec<Change>, Failure>,
    },
    /// `expect.message` with a failure kind other than `plugin-error`.
    #[error(
        "expect.message is only for \"plugin-error\" (the plugin's own message), not {kind:?}, whose message is the runtime's"
    )]
    MessageNotPluginError {
        /// The kind the case expects.
        kind: String,
    },
    /// `expect.while` is neither `starting` nor `calling`.
    #[error("expect.while is {got:?}: it is \"starting\" or \"calling\" (the default)")]
    UnknownWhile {
        /// What the case says.
        got: String,
    },
    /// The call failed where success was expected.
    #[error("expected success, got {failure}")]
    UnexpectedFailure {
        /// The failure.
        failure: Failure,
    },
    /// The call's outcome is of the other world than the expectation.
    #[error("the outcome does not match the world")]
    OutcomeNotWorld,
    /// An expected change's `op` is neither `put` nor `delete`.
    #[error("unknown op {op:?}")]
    UnknownOp {
        /// The `op` given, if it is text.
        op: Option<String>,
    },
    /// An expected put has no value, or an expected delete has one.
    #[error("a put has a value, a delete none")]
    OpValueMismatch,
    /// The expected `pick` does not fit in a `usize`.
    #[error("pick is too large")]
    PickTooLarge,
    /// The expected merge is null (a delete) but has a `merge_hex`.
    #[error("merge null (a delete) has no merge_hex")]
    MergeNullWithHex,
    /// The expected resolution has neither `pick` nor `merge`.
    #[error("expect.ok needs pick or merge")]
    NoPickOrMerge,
}

impl ConformanceError {
    /// Whether this says the vector file itself is not valid (not JSON, a field missing,
    /// unknown or of the wrong type, an expectation that cannot be met by any plugin), as
    /// opposed to a plugin that did not give what a valid vector expects.
    pub fn is_invalid_vector(&self) -> bool {
        use ConformanceError as E;
        match self {
            E::Case { error, .. } | E::Build { error, .. } => error.is_invalid_vector(),
            E::Io { .. }
            | E::InvalidJson { .. }
            | E::InvalidCase(_)
            | E::Params(_)
            | E::Input(_)
            | E::PluginNotFolder { .. }
            | E::UnknownWorld { .. }
            | E::UnknownStage { .. }
            | E::MemoryTooLarge
            | E::ExpectOkNotList
            | E::ExpectedChange { .. }
            | E::UnknownErrorKind { .. }
            | E::ExpectNotOkOrError
            | E::MessageNotPluginError { .. }
            | E::UnknownWhile { .. }
            | E::UnknownOp { .. }
            | E::OpValueMismatch
            | E::PickTooLarge
            | E::MergeNullWithHex
            | E::NoPickOrMerge => true,
            _ => false,
        }
    }
}

/// Expected and returned changes, one line each, then where they first differ. `value_hex`
/// is left out of the lines where `value` shows the value, unless the bytes are all that
/// differ (an encoding the JSON cannot show).
fn changes_differ(expected: &[Change], got: &[Change]) -> String {
    let (expected, got) = (changes_json(expected), changes_json(got));
    let first = first_difference(&expected, &got, String::new());
    let hex_only = first
        .as_ref()
        .is_some_and(|(at, ..)| at.ends_with(".value_hex"));
    let shown = |changes: &Json| -> Json {
        let mut changes = changes.clone();
        if !hex_only {
            for change in changes.as_array_mut().into_iter().flatten() {
                if let Some(o) = change.as_object_mut().filter(|o| o.contains_key("value")) {
                    o.remove("value_hex");
                }
            }
        }
        changes
    };
    let mut out = format!(
        "\n  expected {}\n  got      {}",
        shown(&expected),
        shown(&got)
    );
    if let Some((at, e, g)) = first {
        out.push_str(&format!(
            "\n  first difference at {at}: expected {e}, got {g}"
        ));
    }
    out
}

/// The first place (a path such as `[0].value.hello`) where `expected` and `got` differ,
/// with what each holds there (`nothing` where one lacks it).
fn first_difference(expected: &Json, got: &Json, at: String) -> Option<(String, String, String)> {
    let shown = |v: Option<&Json>| v.map_or_else(|| "nothing".to_owned(), Json::to_string);
    match (expected, got) {
        (Json::Array(e), Json::Array(g)) => (0..e.len().max(g.len())).find_map(|i| {
            let here = format!("{at}[{i}]");
            match (e.get(i), g.get(i)) {
                (Some(e), Some(g)) => first_difference(e, g, here),
                (e, g) => Some((here, shown(e), shown(g))),
            }
        }),
        (Json::Object(e), Json::Object(g)) => {
            let keys: std::collections::BTreeSet<&String> = e.keys().chain(g.keys()).collect();
            keys.into_iter().find_map(|k| {
                let here = format!("{at}.{k}");
                match (e.get(k), g.get(k)) {
                    (Some(e), Some(g)) => first_difference(e, g, here),
                    (e, g) => Some((here, shown(e), shown(g))),
                }
            })
        }
        (e, g) if e == g => None,
        (e, g) => Some((
            if at.is_empty() {
                "the top".to_owned()
            } else {
                at
            },
            e.to_string(),
            g.to_string(),
        )),
    }
}

/// The messages of `errors`, one per line.
fn lines(errors: &[ConformanceError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Changes as a JSON list, for messages.
fn changes_json(changes: &[Change]) -> Json {
    Json::Array(changes.iter().map(change_to_json).collect())
}

/// The limits a case gets where it does not say: a node's defaults for a plugin its config
/// gives none (`plugins.NAME.fuel`, `memory_bytes`, `deadline_ms` in `edgerep-config`), so a
/// plugin that passes its vectors here runs within them in a node. (It was
/// [`Limits::default`], ten times the fuel and four times the memory: a plugin could pass here
/// and run out of fuel on every write in a node.)
pub fn default_limits() -> Limits {
    Limits {
        fuel: NODE_DEFAULT_FUEL,
        memory_bytes: NODE_DEFAULT_MEMORY_BYTES,
        deadline: std::time::Duration::from_millis(1000),
        events: node_default_event_limits(),
    }
}

/// The event limits of a node whose config sets no `[limits]` (`edgerep_node::event_limits`;
/// the CLI's tests hold the two equal): what a plugin's changes and merged values must fit
/// there. (It was `EventLimits::default()`, values of 1 MiB: a plugin passed its vectors here
/// with values of 100 KiB that a node refused on every write, 64 KiB being its default.)
pub fn node_default_event_limits() -> edgerep_wire::event::EventLimits {
    let (key, value, meta, context) = (1024, 65_536, 4096, 1024);
    edgerep_wire::event::EventLimits {
        // As `edgerep_config::max_event_bytes`: key, value, metadata, a full causal context
        // (80 bytes an origin), 4096 for the rest.
        max_event_bytes: key + value + meta + context * 80 + 4096,
        max_key_bytes: key,
        max_meta_entries: 16,
        max_meta_bytes: meta,
        max_context_entries: context,
        value: edgerep_wire::value::DecodeLimits {
            max_bytes: value,
            max_depth: 32,
            ..edgerep_wire::value::DecodeLimits::default()
        },
    }
}

/// `edgerep-config`'s default `plugins.NAME.fuel` (the CLI's tests hold the two equal).
pub const NODE_DEFAULT_FUEL: u64 = 10_000_000;
/// `edgerep-config`'s default `plugins.NAME.memory_bytes`.
pub const NODE_DEFAULT_MEMORY_BYTES: usize = 16 << 20;

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
pub fn run_vector_file(
    runtime: &Runtime,
    wasm_dir: &Path,
    vector: &Path,
) -> Result<(), ConformanceError> {
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
) -> Result<Vec<CaseRun>, ConformanceError> {
    let text = fs::read_to_string(vector).map_err(|error| ConformanceError::Io {
        path: vector.to_path_buf(),
        error,
    })?;
    let case: Json =
        serde_json::from_str(&text).map_err(|error| ConformanceError::InvalidJson {
            path: vector.to_path_buf(),
            error,
        })?;
    let description = case
        .get("description")
        .and_then(Json::as_str)
        .unwrap_or("(no description)")
        .to_owned();
    run_case_across(runtime, builds, vector, &case).map_err(|e| ConformanceError::Case {
        path: vector.to_path_buf(),
        description,
        error: Box::new(e),
    })
}

/// Runs every `*.json` under `vectors_dir` (one folder per plugin), all of them even after a
/// failure. Returns how many ran, or every failure, one per line.
pub fn run_vector_dir(
    runtime: &Runtime,
    wasm_dir: &Path,
    vectors_dir: &Path,
) -> Result<usize, ConformanceError> {
    let files = vector_files(vectors_dir)?;
    let failures: Vec<ConformanceError> = files
        .iter()
        .filter_map(|file| run_vector_file(runtime, wasm_dir, file).err())
        .collect();
    if failures.is_empty() {
        Ok(files.len())
    } else {
        Err(ConformanceError::Failed {
            failures,
            total: files.len(),
        })
    }
}

/// Runs every `*.json` under `vectors_dir` against the builds `builds_of(plugin)` names for its
/// plugin ([`run_vector_file_across`]), all of them even after a failure. Returns what every
/// case gave on every build, or every failure, one per line.
pub fn run_vector_dir_across(
    runtime: &Runtime,
    vectors_dir: &Path,
    builds_of: impl Fn(&str) -> Vec<Build>,
) -> Result<Vec<(PathBuf, Vec<CaseRun>)>, ConformanceError> {
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
        Err(ConformanceError::Failed {
            failures,
            total: files.len(),
        })
    }
}

/// A vector file and its result: `Err` says what differs.
pub type VectorResult = (PathBuf, Result<(), ConformanceError>);

/// Runs every `*.json` in `vectors_dir` and in its folders against the one component `wasm`
/// (whatever the cases' `plugin`), all of them even after a failure: for a plugin author's own
/// vectors. Returns each file with its result (`Err` says what differs), sorted by file.
pub fn run_vectors_on_component(
    runtime: &Runtime,
    wasm: &Path,
    vectors_dir: &Path,
) -> Result<Vec<VectorResult>, ConformanceError> {
    if !wasm.is_file() {
        return Err(ConformanceError::NotAFile {
            path: wasm.to_path_buf(),
        });
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
            .map_err(|error| ConformanceError::Io {
                path: vectors_dir.to_path_buf(),
                error,
            })?
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
pub fn vector_files(vectors_dir: &Path) -> Result<Vec<PathBuf>, ConformanceError> {
    let read = |dir: &Path| -> Result<Vec<PathBuf>, ConformanceError> {
        let mut paths = fs::read_dir(dir)
            .map_err(|error| ConformanceError::Io {
                path: dir.to_path_buf(),
                error,
            })?
            .map(|entry| {
                entry
                    .map(|e| e.path())
                    .map_err(|error| ConformanceError::Io {
                        path: dir.to_path_buf(),
                        error,
                    })
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
) -> Result<Vec<CaseRun>, ConformanceError> {
    if builds.is_empty() {
        return Err(ConformanceError::NoBuilds);
    }
    let o = object(case, "case")?;
    check_fields(
        o,
        &[
            "plugin",
            "world",
            "stage",
            "description",
            "params",
            "limits",
            "input",
            "expect",
        ],
        "case",
    )?;
    let plugin = text(o, "plugin")?.ok_or(JsonError::Missing { field: "plugin" })?;
    let folder = vector
        .parent()
        .and_then(Path::file_name)
        .and_then(|f| f.to_str());
    let single = builds.iter().all(|b| b.wasm_dir.is_file());
    if !single && folder != Some(plugin) {
        return Err(ConformanceError::PluginNotFolder {
            plugin: plugin.to_owned(),
            folder: folder.map(str::to_owned),
        });
    }
    let world = match text(o, "world")?.ok_or(JsonError::Missing { field: "world" })? {
        "transform" => World::Transform,
        "resolver" => World::Resolver,
        other => {
            return Err(ConformanceError::UnknownWorld {
                world: other.to_owned(),
            });
        }
    };
    // Where a node runs the transform: on ingest (the default), or on apply, where its output
    // is held to the on-apply rule (`on_apply`) as a node holds it.
    let on_apply = match text(o, "stage")? {
        None | Some("ingest") => false,
        Some("apply") if world == World::Transform => true,
        Some(other) => {
            return Err(ConformanceError::UnknownStage {
                stage: other.to_owned(),
            });
        }
    };
    let params = meta_of(o.get("params")).map_err(ConformanceError::Params)?;
    let mut limits = default_limits();
    if let Some(l) = o.get("limits") {
        let l = object(l, "limits")?;
        check_fields(l, &["fuel", "memory_bytes"], "limits")?;
        if let Some(fuel) = uint(l, "fuel")? {
            limits.fuel = fuel;
        }
        if let Some(bytes) = uint(l, "memory_bytes")? {
            limits.memory_bytes =
                usize::try_from(bytes).map_err(|_| ConformanceError::MemoryTooLarge)?;
        }
    }
    let expect = Expect::parse(
        o.get("expect")
            .ok_or(JsonError::Missing { field: "expect" })?,
        world,
    )?;

    let input = o
        .get("input")
        .ok_or(JsonError::Missing { field: "input" })?;
    let mut runs: Vec<CaseRun> = Vec::new();
    for build in builds {
        // With several builds, say which one; with one (a single component) there is no other.
        let which = |e: ConformanceError| {
            if builds.len() > 1 {
                ConformanceError::Build {
                    toolchain: build.toolchain.clone(),
                    error: Box::new(e),
                }
            } else {
                e
            }
        };
        let call = match world {
            World::Resolver => Call::Resolve,
            World::Transform if on_apply => Call::OnApply,
            World::Transform => Call::OnIngest,
        };
        let run =
            run_on_build(runtime, build, plugin, call, &params, limits, input).map_err(which)?;
        if !run.canonical {
            return Err(which(ConformanceError::NotCanonical));
        }
        let outcome = run.outcome;
        expect.check(outcome.clone()).map_err(which)?;
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
) -> Result<(), ConformanceError> {
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
    Err(ConformanceError::Disagree {
        first_toolchain: first.toolchain.clone(),
        first: show(&first.outcome),
        toolchain: toolchain.to_owned(),
        other: show(outcome),
    })
}

/// Loads `<build>/<plugin>.wasm` and calls it once on a fresh instance. `Err` only for a build
/// that cannot be loaded.
fn run_on_build(
    runtime: &Runtime,
    build: &Build,
    plugin: &str,
    call: Call,
    params: &std::collections::BTreeMap<String, String>,
    limits: Limits,
    input: &Json,
) -> Result<BuildRun, ConformanceError> {
    let path = if build.wasm_dir.is_file() {
        build.wasm_dir.clone()
    } else {
        build.wasm_dir.join(format!("{plugin}.wasm"))
    };
    let wasm = fs::read(&path).map_err(|error| ConformanceError::ReadComponent {
        path: path.clone(),
        error,
        build_hint: build.build_hint.clone(),
    })?;
    let loaded = match runtime.load(PluginSource {
        name: plugin.to_owned(),
        path,
        wasm,
        expected_sha256: None,
        limits,
        params: params.clone(),
    }) {
        Ok(loaded) => loaded,
        // A node refuses such a plugin at load; a case may expect exactly that (`"while":
        // "starting"`), as the failure of every call it would be.
        Err(LoadError::Instantiate { failure, .. }) => return Ok(build_run(Err(failure))),
        Err(other) => return Err(other.into()),
    };
    let world = match call {
        Call::Resolve => World::Resolver,
        Call::OnIngest | Call::OnApply => World::Transform,
    };
    if loaded.world() != world {
        return Err(ConformanceError::WrongWorld {
            component: loaded.world(),
            case: world,
        });
    }
    let on_apply = call == Call::OnApply;
    let got = match world {
        World::Transform => {
            let event = event_at_stage(input, on_apply).map_err(ConformanceError::Input)?;
            let fresh = loaded.transform_report(&event, true);
            if on_apply {
                // On apply a node runs transforms on fresh instances only, and keeps what the
                // on-apply rule lets through.
                let kept = fresh.and_then(|r| {
                    crate::output::on_apply(&event, r.output, r.fuel_used).map(|c| CallReport {
                        output: c.into_iter().collect(),
                        fuel_used: r.fuel_used,
                        canonical: r.canonical,
                    })
                });
                return Ok(build_run(kept.map(|r| {
                    ((Outcome::Changes(r.output), r.canonical), r.fuel_used)
                })));
            }
            // A node runs transforms on ingest on pooled instances: the same event twice on
            // one reused instance must give what a fresh one gives (state kept between calls,
            // or a random stream that moves on, shows here and nowhere else).
            if let Ok(first) = &fresh {
                for call in 1..=2 {
                    let again = loaded.transform_report(&event, false);
                    let same = again.as_ref().is_ok_and(|r| r.output == first.output);
                    if !same {
                        return Err(ConformanceError::NotRepeatable {
                            call,
                            fresh: first.output.clone(),
                            got: again.map(|r| r.output),
                        });
                    }
                }
            }
            fresh.map(|r| ((Outcome::Changes(r.output), r.canonical), r.fuel_used))
        }
        World::Resolver => {
            let (collection, key, versions) =
                resolver_input_from_json(input).map_err(ConformanceError::Input)?;
            loaded
                .resolve_report(&collection, &key, &versions)
                .map(|r| ((Outcome::Resolution(r.output), r.canonical), r.fuel_used))
        }
    };
    Ok(build_run(got))
}

/// A call's result as [`run_on_build`] reports it.
fn build_run(got: Result<((Outcome, bool), u64), Failure>) -> BuildRun {
    match got {
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
    }
}

/// What a case calls: a transform as a node runs it on ingest or on apply, or a resolver.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Call {
    OnIngest,
    OnApply,
    Resolve,
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
        /// The failure is expected while the fresh instance starts (`"while": "starting"`),
        /// not in the call: a start-up failure passes a case only where it says so (else a
        /// budget too small to start the instance, or an `init` that panics, passed every case
        /// expecting that kind of failure of the call).
        starting: bool,
    },
}

/// What the runtime puts before a failure's message when the instance failed to start.
const STARTING: &str = "instantiating: ";

impl Expect {
    fn parse(json: &Json, world: World) -> Result<Expect, ConformanceError> {
        let o = object(json, "expect")?;
        check_fields(o, &["ok", "error", "message", "while"], "expect")?;
        let starting = match text(o, "while")? {
            None | Some("calling") => false,
            Some("starting") => true,
            Some(other) => {
                return Err(ConformanceError::UnknownWhile {
                    got: other.to_owned(),
                });
            }
        };
        match (o.get("ok"), text(o, "error")?) {
            (Some(ok), None) if !o.contains_key("message") && !o.contains_key("while") => {
                match world {
                    World::Transform => ok
                        .as_array()
                        .ok_or(ConformanceError::ExpectOkNotList)?
                        .iter()
                        .enumerate()
                        .map(|(i, c)| {
                            expected_change(c).map_err(|e| ConformanceError::ExpectedChange {
                                index: i,
                                error: Box::new(e),
                            })
                        })
                        .collect::<Result<_, _>>()
                        .map(Expect::Changes),
                    World::Resolver => expected_resolution(ok).map(Expect::Resolution),
                }
            }
            (None, Some(kind)) => {
                let kind = match kind {
                    "invalid-output" => FailureKind::BadOutput,
                    other => FailureKind::parse(other).ok_or_else(|| {
                        ConformanceError::UnknownErrorKind {
                            kind: other.to_owned(),
                        }
                    })?,
                };
                let message = text(o, "message")?.map(str::to_owned);
                // Other kinds' messages are the runtime's (with a wasm backtrace): a case
                // naming one would hold the runtime's wording, not the plugin's.
                if message.is_some() && kind != FailureKind::PluginError {
                    return Err(ConformanceError::MessageNotPluginError {
                        kind: kind.as_str().to_owned(),
                    });
                }
                Ok(Expect::Failure {
                    kind,
                    message,
                    starting,
                })
            }
            _ => Err(ConformanceError::ExpectNotOkOrError),
        }
    }

    fn check(&self, got: Result<Outcome, Failure>) -> Result<(), ConformanceError> {
        match (self, got) {
            (Expect::Changes(want), Ok(Outcome::Changes(got))) => {
                if want == &got {
                    return Ok(());
                }
                Err(ConformanceError::ChangesDiffer {
                    expected: want.clone(),
                    got,
                })
            }
            (Expect::Resolution(want), Ok(Outcome::Resolution(got))) => {
                if want == &got {
                    return Ok(());
                }
                Err(ConformanceError::ResolutionsDiffer {
                    expected: want.clone(),
                    got,
                })
            }
            (
                Expect::Failure {
                    kind,
                    message,
                    starting,
                },
                Err(failure),
            ) => {
                if failure.message.starts_with(STARTING) != *starting {
                    return Err(ConformanceError::WrongPhase {
                        expected: if *starting { "starting" } else { "calling" },
                        got: failure,
                    });
                }
                if failure.kind != *kind {
                    return Err(ConformanceError::WrongFailure {
                        expected: *kind,
                        got: failure,
                    });
                }
                match message {
                    Some(m) if *m != failure.message => Err(ConformanceError::WrongMessage {
                        expected: m.clone(),
                        got: failure.message,
                    }),
                    _ => Ok(()),
                }
            }
            (Expect::Failure { kind, .. }, Ok(_)) => {
                Err(ConformanceError::UnexpectedSuccess { expected: *kind })
            }
            (_, Err(failure)) => Err(ConformanceError::UnexpectedFailure { failure }),
            (_, Ok(_)) => Err(ConformanceError::OutcomeNotWorld),
        }
    }
}

/// An expected change: every field is required, `value_hex` (authoritative) or `value` on puts.
fn expected_change(json: &Json) -> Result<Change, ConformanceError> {
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
            return Err(JsonError::Missing { field }.into());
        }
    }
    let op = match text(o, "op")? {
        Some("put") => edgerep_wire::Op::Put,
        Some("delete") => edgerep_wire::Op::Delete,
        other => {
            return Err(ConformanceError::UnknownOp {
                op: other.map(str::to_owned),
            });
        }
    };
    let value = value_of(o, "value", "value_hex")?;
    if (op == edgerep_wire::Op::Put) != value.is_some() {
        return Err(ConformanceError::OpValueMismatch);
    }
    Ok(Change {
        collection: text(o, "collection")?.unwrap_or_default().to_owned(),
        key: key_of(o)?.ok_or(JsonError::Missing {
            field: "key (or key_base64)",
        })?,
        op,
        value,
        schema: u32::try_from(uint(o, "schema")?.unwrap_or_default())
            .map_err(|_| JsonError::SchemaOverU32)?,
        meta: meta_of(o.get("meta"))?,
    })
}

/// An expected resolution: `{"pick": i}`, `{"merge": json, "merge_hex": hex}` or `{"merge": null}`.
fn expected_resolution(json: &Json) -> Result<Resolution, ConformanceError> {
    let o: &Map<String, Json> = object(json, "expect.ok")?;
    if let Some(i) = uint(o, "pick")? {
        check_fields(o, &["pick"], "expect.ok")?;
        return Ok(Resolution::Pick(
            usize::try_from(i).map_err(|_| ConformanceError::PickTooLarge)?,
        ));
    }
    check_fields(o, &["merge", "merge_hex"], "expect.ok")?;
    if o.get("merge").is_some_and(Json::is_null) {
        if o.contains_key("merge_hex") {
            return Err(ConformanceError::MergeNullWithHex);
        }
        return Ok(Resolution::Merge(None));
    }
    let value: Option<Value> = value_of(o, "merge", "merge_hex")?;
    value
        .map(|v| Resolution::Merge(Some(v)))
        .ok_or(ConformanceError::NoPickOrMerge)
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
        let error = agree(&rust, "go", &merge(&[0x02])).unwrap_err().to_string();
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
