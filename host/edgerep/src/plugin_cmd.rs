//! `edgerep plugin check|run`: the plugin author's tools. They run the same runtime as a node,
//! with the same limits, so what works here works in the node.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use edgerep_plugin::json::{
    change_to_json, event_at_stage, resolution_to_json, resolver_input_from_json,
};
use edgerep_plugin::{Limits, PluginSource, Runtime, World};
use serde_json::json;

mod author;

/// Exit status when the plugin failed (the failure kind is printed).
pub(crate) const EXIT_PLUGIN_FAILED: u8 = 5;

/// `edgerep plugin ...`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum PluginCommand {
    /// Show which world a component implements, its imports and exports, its sha256 and size.
    Check {
        /// The component.
        file: PathBuf,
    },
    /// Run a plugin once on an input and print its output as JSON, or its failure kind
    /// (out-of-fuel, memory-limit, deadline, trap, stack-overflow, plugin-error, bad-output) and
    /// exit 5.
    Run {
        /// The component.
        file: PathBuf,
        /// The input as a JSON file: an event for a transform (every field but collection, key
        /// and value may be left out), or {"collection", "key", "versions": [event, ...]} for a resolver.
        #[arg(long)]
        input: PathBuf,
        /// Fuel for the call.
        #[arg(long, default_value_t = 10_000_000)]
        fuel: u64,
        /// Memory cap in bytes.
        #[arg(long, default_value_t = 16 * 1024 * 1024)]
        memory: usize,
        /// Wall-clock backstop in milliseconds.
        #[arg(long, default_value_t = 1000)]
        deadline_ms: u64,
        /// A parameter for the plugin, as name=value (repeatable).
        #[arg(long = "param", value_parser = parse_param)]
        params: Vec<(String, String)>,
        /// Where a node runs the transform: ingest, or apply (a peer's event: at most one
        /// change, to the event's own key, schema and meta unchanged, else bad-output).
        #[arg(long, value_parser = ["ingest", "apply"], default_value = "ingest")]
        stage: String,
    },
    /// Start a plugin in DIR/NAME: source (with native tests in Rust), a README and a sample
    /// vector that passes.
    New {
        /// rust, tinygo or go (tinygo and go share one source).
        #[arg(long, value_parser = author::parse_lang)]
        lang: edgerep_build::Toolchain,
        /// transform (filter, redact, enrich, route) or resolver (decides concurrent writes).
        #[arg(long, value_parser = author::parse_world, default_value = "transform")]
        world: World,
        /// The plugin's name (lowercase letters, digits, '-').
        name: String,
        /// Where to make the folder NAME (default: here).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Build a plugin folder into a component; prints its path, sha256 and size.
    Build {
        /// rust, tinygo or go (default: rust with a Cargo.toml, else tinygo).
        #[arg(long, value_parser = author::parse_lang)]
        lang: Option<edgerep_build::Toolchain>,
        /// The plugin folder.
        dir: PathBuf,
        /// The component to write (default: DIR/target/<name>.<lang>.wasm).
        #[arg(short = 'o', long = "out")]
        out: Option<PathBuf>,
        /// Write the new sha256 into this node config, in every [plugins.NAME] whose path is
        /// the component (keeping the file's comments and layout).
        #[arg(long, value_name = "FILE")]
        update_config: Option<PathBuf>,
    },
    /// Run every vector (*.json, in VECTORS and its folders, or VECTORS itself if it is one
    /// file) against a component; prints pass or the difference per vector and exits 5 if any
    /// failed, 2 if a vector file is not valid (INVALID).
    Test {
        /// The component.
        wasm: PathBuf,
        /// A vector file, or a folder of vectors.
        vectors: PathBuf,
    },
}

fn parse_param(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected name=value, got {s:?}"))
}

fn read_wasm(file: &PathBuf) -> anyhow::Result<Vec<u8>> {
    std::fs::read(file).with_context(|| format!("reading {}", file.display()))
}

pub(crate) fn run(command: PluginCommand) -> anyhow::Result<u8> {
    // What a plugin logs (`log` in the SDKs) is shown: the author's window into the plugin.
    crate::init_logging_with("warn,edgerep_plugin::guest=debug");
    match command {
        PluginCommand::New {
            lang,
            world,
            name,
            dir,
        } => author::new(lang, world, &name, dir),
        PluginCommand::Build {
            lang,
            dir,
            out,
            update_config,
        } => author::build(lang, &dir, out, update_config.as_deref()),
        PluginCommand::Test { wasm, vectors } => author::test(&wasm, &vectors),
        PluginCommand::Check { file } => {
            let wasm = read_wasm(&file)?;
            let runtime = Runtime::new(None)?;
            let i = runtime.inspect(&wasm).with_context(|| {
                format!("{} is not a component edgerep can inspect", file.display())
            })?;
            let report = json!({
                "file": file.display().to_string(),
                "world": i.world.map(World::as_str),
                "sha256": i.sha256,
                "size": i.size,
                "imports": i.imports,
                "exports": i.exports,
                "problems": i.problems,
                "params": i.params.as_ref().map(|list| list.iter().map(|p| json!({
                    "name": p.name,
                    "required": p.required,
                    "default": p.default,
                    "description": p.description,
                })).collect::<Vec<_>>()),
            });
            println!("{}", serde_json::to_string_pretty(&report)?);
            if !i.problems.is_empty() || i.world.is_none() {
                eprintln!(
                    "edgerep: {} would be refused by a node: {}",
                    file.display(),
                    i.problems.join("; ")
                );
                return Ok(crate::EXIT_USAGE);
            }
            Ok(0)
        }
        PluginCommand::Run {
            file,
            input,
            fuel,
            memory,
            deadline_ms,
            params,
            stage,
        } => {
            let wasm = read_wasm(&file)?;
            let text = std::fs::read_to_string(&input)
                .with_context(|| format!("reading {}", input.display()))?;
            let input_json: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", input.display()))?;
            let runtime = Runtime::new(None)?;
            let name = file
                .file_stem()
                .map_or("plugin".into(), |s| s.to_string_lossy().into_owned());
            let loaded = runtime.load(PluginSource {
                name,
                path: file.clone(),
                wasm,
                expected_sha256: None,
                limits: Limits {
                    fuel,
                    memory_bytes: memory,
                    deadline: Duration::from_millis(deadline_ms),
                    // What a node that sets no [limits] decodes (values of 64 KiB).
                    events: edgerep_plugin::conformance::node_default_event_limits(),
                },
                params: params.into_iter().collect::<BTreeMap<_, _>>(),
            });
            let plugin = match loaded {
                Ok(plugin) => plugin,
                // It cannot start under these limits: the failure every call would give.
                Err(edgerep_plugin::LoadError::Instantiate { failure, .. }) => {
                    return Ok(plugin_failed(&failure, " while starting"));
                }
                Err(e) => return Err(e.into()),
            };
            let result = match plugin.world() {
                World::Transform => {
                    let event = event_at_stage(&input_json, stage == "apply")
                        .map_err(|e| anyhow::anyhow!("{}: {e}", input.display()))?;
                    plugin
                        .transform_report(&event, true)
                        .and_then(|report| {
                            if stage != "apply" {
                                return Ok(report.output);
                            }
                            edgerep_plugin::on_apply(&event, report.output, report.fuel_used)
                                .map(|kept| kept.into_iter().collect())
                        })
                        .map(|changes| {
                            json!(changes.iter().map(change_to_json).collect::<Vec<_>>())
                        })
                }
                World::Resolver if stage == "apply" => {
                    anyhow::bail!(
                        "--stage apply is for transforms; {} is a resolver",
                        file.display()
                    )
                }
                World::Resolver => {
                    let (collection, key, versions) = resolver_input_from_json(&input_json)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", input.display()))?;
                    plugin
                        .resolve(&collection, &key, &versions)
                        .map(|r| resolution_to_json(&r))
                }
            };
            let metrics = plugin.metrics();
            match result {
                Ok(output) => {
                    println!("{}", serde_json::to_string_pretty(&output)?);
                    eprintln!("fuel used: {}", metrics.fuel_total);
                    Ok(0)
                }
                Err(failure) => Ok(plugin_failed(&failure, "")),
            }
        }
    }
}

/// `plugin run`'s report of a failure (`when`: where it happened, if not in the call): its kind
/// on stdout, the whole failure on stderr; the exit code.
fn plugin_failed(failure: &edgerep_plugin::Failure, when: &str) -> u8 {
    println!("{}", failure.kind.as_str());
    eprintln!(
        "edgerep: plugin failed{when}: {}: {} (fuel used: {})",
        failure.kind.as_str(),
        failure.message,
        failure.fuel_used
    );
    EXIT_PLUGIN_FAILED
}

/// `edgerep dead-letters ...`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum DeadLetterCommand {
    /// List dead letters (one JSON object a line): id, collection, key, plugin, failure, message.
    List {
        /// The node's config file.
        #[arg(long)]
        config: PathBuf,
        /// Only ids after this one.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Show one dead letter in full (value, metadata, the event the plugin saw).
    Show {
        /// The node's config file.
        #[arg(long)]
        config: PathBuf,
        /// Its id.
        id: u64,
    },
    /// Run a dead letter (or every one, `--all`) through the collection's current plugins
    /// again; on success its changes are committed and it is removed, in one transaction; on
    /// failure it stays.
    Replay {
        /// The node's config file.
        #[arg(long)]
        config: PathBuf,
        /// Its id.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<u64>,
        /// Every dead letter written through the API (those of events from peers cannot be
        /// replayed), one at a time; prints a line for each; exit 4 if a replay failed, else
        /// 3 if the node refused some.
        #[arg(long)]
        all: bool,
        /// With --all: only this collection's.
        #[arg(long, requires = "all")]
        collection: Option<String>,
    },
    /// Drop a dead letter for good (its write is not committed).
    Delete {
        /// The node's config file.
        #[arg(long)]
        config: PathBuf,
        /// Its id.
        id: u64,
    },
}

pub(crate) fn dead_letters(command: DeadLetterCommand) -> anyhow::Result<u8> {
    match command {
        DeadLetterCommand::List {
            config,
            after,
            limit,
        } => {
            let c = crate::client(&config)?;
            Ok(crate::report(c.dead_letters(after, limit), |body| {
                let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
                for d in v["dead_letters"].as_array().into_iter().flatten() {
                    // A reader that went (`| head`) ends the listing.
                    if !crate::print_line(&d.to_string()) {
                        break;
                    }
                }
            }))
        }
        DeadLetterCommand::Show { config, id } => {
            let c = crate::client(&config)?;
            Ok(crate::report(c.dead_letter(id), crate::print_pretty))
        }
        DeadLetterCommand::Replay {
            config,
            id: Some(id),
            ..
        } => {
            let c = crate::client(&config)?;
            Ok(crate::report(c.replay_dead_letter(id), crate::print_body))
        }
        DeadLetterCommand::Replay {
            config,
            id: None,
            collection,
            ..
        } => replay_all(&crate::client(&config)?, collection.as_deref()),
        DeadLetterCommand::Delete { config, id } => {
            let c = crate::client(&config)?;
            Ok(crate::report(c.delete_dead_letter(id), crate::print_body))
        }
    }
}

/// `dead-letters replay --all`: every replayable dead letter (of `collection`), one at a time.
/// Exits 0 when all were replayed, 3 when the node refused some (they stay), 4 when a replay
/// or the listing failed (the node's answer did not come, or came late: a replay may have
/// been made); the summary line is printed in every case.
fn replay_all(c: &edgerep_client::client::Client, collection: Option<&str>) -> anyhow::Result<u8> {
    use edgerep_client::client::Outcome;
    let (mut after, mut replayed, mut refused, mut failed) = (0u64, 0u64, 0u64, 0u64);
    let summary = |replayed, refused, failed| {
        eprintln!(
            "{replayed} replayed, {refused} refused by the node (they stay), {failed} failed (see `dead-letters list`)"
        );
    };
    loop {
        let list = match c.dead_letters(after, 100) {
            Outcome::Ok(body) => match serde_json::from_slice::<serde_json::Value>(&body) {
                Ok(list) => list,
                Err(e) => {
                    let m = format!("the node's dead-letter list is not JSON: {e}");
                    let code = crate::report(Outcome::Failed(m), |_| {});
                    summary(replayed, refused, failed);
                    return Ok(code);
                }
            },
            other => {
                let code = crate::report(other, |_| {});
                summary(replayed, refused, failed);
                return Ok(code);
            }
        };
        let items = list["dead_letters"].as_array().cloned().unwrap_or_default();
        if items.is_empty() {
            break;
        }
        for d in items {
            let id = d["id"].as_u64().unwrap_or(0);
            after = after.max(id);
            if collection.is_some_and(|want| d["collection"] != want) || d["stage"] != "ingest" {
                continue;
            }
            match c.replay_dead_letter(id) {
                // Every one is replayed even when the reader of the lines went (`| head`).
                Outcome::Ok(_) => {
                    replayed += 1;
                    let _ = crate::print_line(&format!("{id}: replayed"));
                }
                Outcome::NotFound(m) | Outcome::Refused(_, m) | Outcome::NotSent(m) => {
                    refused += 1;
                    let _ = crate::print_line(&format!(
                        "{id}: refused, stays: {}",
                        edgerep_wire::text::one_line(&m)
                    ));
                }
                Outcome::Failed(m) => {
                    failed += 1;
                    let _ = crate::print_line(&format!(
                        "{id}: failed: {}",
                        edgerep_wire::text::one_line(&m)
                    ));
                }
            }
        }
    }
    summary(replayed, refused, failed);
    Ok(if failed > 0 {
        crate::EXIT_FAILED
    } else if refused > 0 {
        crate::EXIT_REFUSED
    } else {
        0
    })
}

#[cfg(test)]
mod tests {
    /// `plugin test` runs a case with a node's default limits (what `plugins.NAME` gets when it
    /// says none): the two crates hold the numbers apart, this holds them equal.
    #[test]
    fn conformance_defaults_are_a_nodes_defaults() {
        let id = edgerep_wire::NodeId::parse("n").unwrap();
        let text = format!(
            "{}\n[plugins.p]\npath = \"p.wasm\"\nsha256 = \"{}\"\n",
            edgerep_config::starter_toml(
                &id,
                "127.0.0.1:1".parse().unwrap(),
                "127.0.0.1:2".parse().unwrap()
            ),
            "0".repeat(64)
        );
        let config =
            edgerep_config::Config::parse(&text, std::path::Path::new("/x/edgerep.toml")).unwrap();
        let p = config.plugin("p").unwrap();
        let limits = edgerep_plugin::conformance::default_limits();
        assert_eq!(p.fuel, limits.fuel);
        assert_eq!(p.memory_bytes, limits.memory_bytes);
        assert_eq!(limits.events, edgerep_node::event_limits(&config));
    }
}
