//! The [`Runtime`]: one wasmtime engine, its epoch ticker and the linker with the host's imports;
//! it loads (checks, compiles or takes from the cache, links) and inspects components.

use std::collections::BTreeMap;
use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine};
use wasmtime_wasi::{WasiCtxView, WasiView};

use crate::bindings::resolver::ResolverPre;
use crate::bindings::transform::TransformPre;
use crate::bindings::{self, Host, Level};
use crate::error::LoadError;
use crate::failure::describe;
use crate::limits::{Limits, MemoryLimiter};
use crate::plugin::{Bound, Plugin};
use crate::wasi::WasiState;

/// A plugin to load: the component's bytes and how to run it.
#[derive(Clone, Debug)]
pub struct PluginSource {
    /// The plugin's name (from the config), used in logs and messages.
    pub name: String,
    /// Where the bytes came from, for messages only.
    pub path: PathBuf,
    /// The component.
    pub wasm: Vec<u8>,
    /// The SHA-256 the bytes must have (hex, either case); `None` skips the check.
    pub expected_sha256: Option<String>,
    /// The budget of every call.
    pub limits: Limits,
    /// Parameters the plugin reads through `host.param`/`host.params`.
    pub params: BTreeMap<String, String>,
}

/// Which world of `wit/plugin.wit` a component implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum World {
    /// Exports `transform`.
    Transform,
    /// Exports `resolve`.
    Resolver,
}

impl World {
    /// The world's name in the WIT: `transform` or `resolver`.
    pub fn as_str(self) -> &'static str {
        match self {
            World::Transform => "transform",
            World::Resolver => "resolver",
        }
    }
}

/// What [`Runtime::inspect`] found in a component.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inspection {
    /// The world its exports name, if exactly one matches.
    pub world: Option<World>,
    /// Its import names (interfaces, as `namespace:package/interface@version`).
    pub imports: Vec<String>,
    /// Its export names.
    pub exports: Vec<String>,
    /// SHA-256 of the bytes, lowercase hex (what `expected_sha256` should say).
    pub sha256: String,
    /// Size of the bytes.
    pub size: usize,
    /// Why [`Runtime::load`] would refuse it (empty when it would load): refused imports, no
    /// world, exports or imports of the wrong type.
    pub problems: Vec<String>,
    /// The parameters it declares (`None`: it declares none).
    pub params: Option<Vec<edgerep_wire::params::DeclaredParam>>,
}

/// The plugin runtime of one node: a wasmtime engine configured for deterministic execution, an
/// epoch ticker thread (the wall-clock backstop) and a linker with the host imports and WASI.
///
/// The engine consumes fuel (the deterministic budget), interrupts on epochs, canonicalizes NaNs
/// and makes relaxed SIMD deterministic. The ticker thread stops when the runtime and every
/// plugin it loaded are dropped.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    cache_dir: Option<PathBuf>,
    /// Hex digest of the engine's precompile compatibility hash, part of every cache file name.
    compat: String,
    ticker: Arc<Ticker>,
    compilations: AtomicU64,
    cache_hits: AtomicU64,
}

/// Makes `dir` the plugin cache: created if missing, this user's alone (it holds native code
/// the node runs; a cached component is trusted once its checksum matches, see `cache::load`),
/// with what earlier runs left there cleaned up.
fn prepare_cache_dir(dir: &Path, compat: &str) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    cache::remove_stale_temporaries(dir);
    cache::remove_other_engines(dir, compat);
    Ok(())
}

impl Runtime {
    /// Builds the engine, the linker and the epoch ticker. With a `cache_dir`, compiled components
    /// are kept there (created if missing) and reused by later loads, also across restarts.
    pub fn new(cache_dir: Option<&Path>) -> Result<Runtime, LoadError> {
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .consume_fuel(true)
            .epoch_interruption(true)
            .cranelift_nan_canonicalization(true)
            .relaxed_simd_deterministic(true);
        let engine = Engine::new(&config).map_err(|e| LoadError::Engine(describe(&e)))?;
        let mut linker = Linker::new(&engine);
        bindings::transform::edgerep::plugin::host::add_to_linker::<HostState, HasSelf<HostState>>(
            &mut linker,
            |state| state,
        )
        .and_then(|()| crate::wasi::add_to_linker(&mut linker))
        .map_err(|e| LoadError::Engine(describe(&e)))?;
        let compat = {
            let mut hasher = Sha256Hasher(Sha256::new());
            engine.precompile_compatibility_hash().hash(&mut hasher);
            hex::encode(&hasher.0.finalize()[..16])
        };
        // The cache is a speed-up: a directory that cannot be made this user's alone (a
        // read-only or full disk, another user's directory) is said, and plugins are compiled
        // at each start instead (the store's own open then reports a failed disk as such).
        let cache_dir = cache_dir.filter(|dir| match prepare_cache_dir(dir, &compat) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(
                    path = %dir.display(),
                    "not using the plugin cache (plugins are compiled at each start): {e}"
                );
                false
            }
        });
        let ticker = Arc::new(Ticker::start(engine.clone()));
        Ok(Runtime {
            engine,
            linker,
            cache_dir: cache_dir.map(Path::to_path_buf),
            compat,
            ticker,
            compilations: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
        })
    }

    /// Checks, compiles (or takes from the cache), links and pre-instantiates a plugin.
    ///
    /// Refuses: a hash mismatch (naming the file and both hashes), bytes that are not a
    /// component, imports other than `edgerep:plugin/host`, `edgerep:plugin/types` and `wasi:*`,
    /// exports that match neither world (or both), and exports or imports of the wrong type.
    pub fn load(&self, source: PluginSource) -> Result<Plugin, LoadError> {
        let plugin = format!("{:?} ({})", source.name, source.path.display());
        check_limits(&source.limits, &plugin)?;
        let sha256 = sha256_hex(&source.wasm);
        if let Some(expected) = &source.expected_sha256 {
            let normalized = expected.trim().to_ascii_lowercase();
            if normalized.len() != 64 || !normalized.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(LoadError::InvalidHash {
                    plugin,
                    expected: expected.clone(),
                });
            }
            if normalized != sha256 {
                return Err(LoadError::HashMismatch {
                    plugin,
                    expected: normalized,
                    actual: sha256,
                });
            }
        }
        check_header(&source.wasm, &plugin)?;
        let component = self.compile(&source.wasm, &sha256, &plugin)?;
        // The config's parameters against what the component declares (its sections parse:
        // it compiled).
        let mut source = source;
        let declared =
            crate::declared::of_component(&source.wasm).map_err(|e| LoadError::Params {
                plugin: plugin.clone(),
                reason: e.to_string(),
            })?;
        if let Some(declared) = &declared {
            source.params = crate::declared::apply(declared, &source.params).map_err(|e| {
                LoadError::Params {
                    plugin: plugin.clone(),
                    reason: e.to_string(),
                }
            })?;
        }
        let shape = Shape::of(&self.engine, &component);
        let refused = shape.refused_imports();
        if !refused.is_empty() {
            return Err(LoadError::RefusedImports { plugin, refused });
        }
        if let Some(found) = shape.other_contract() {
            return Err(LoadError::OtherContract {
                plugin,
                found,
                serves: CONTRACT_VERSION,
            });
        }
        let world = shape.world().map_err(|reason| LoadError::World {
            plugin: plugin.clone(),
            exports: shape.export_names(),
            reason: reason.to_string(),
        })?;
        let bound = self.bind(&component, world, &shape, &plugin)?;
        let loaded = Plugin::new(
            source,
            sha256,
            world,
            bound,
            self.engine.clone(),
            self.ticker.clone(),
        );
        // Once, as every call will: a component that cannot be instantiated under its limits
        // is refused here (at start, reload and `config check`), not found out call after call.
        // Only for a failure every machine meets alike: a deadline or the machine's memory
        // decides nothing about the plugin (its calls' failures follow their policy).
        match loaded.instantiation_fuel() {
            Err(failure) if !failure.kind.depends_on_machine() => {
                Err(LoadError::Instantiate { plugin, failure })
            }
            Err(failure) => {
                tracing::warn!(plugin = %plugin, kind = failure.kind.as_str(), "instantiating the plugin at load failed on this machine (its calls may fail the same way): {}", edgerep_wire::text::one_line(&failure.message));
                Ok(loaded)
            }
            Ok(_) => Ok(loaded),
        }
    }

    /// Describes a component for `edgerep plugin check`: its world, imports, exports, hash and
    /// size, and what would keep [`Runtime::load`] from loading it. Compiles it (without the
    /// cache); refuses only bytes that are not a valid component.
    pub fn inspect(&self, wasm: &[u8]) -> Result<Inspection, LoadError> {
        let plugin = "component".to_owned();
        check_header(wasm, &plugin)?;
        let component = self.compile_now(wasm, &plugin)?;
        let shape = Shape::of(&self.engine, &component);
        let mut problems = Vec::new();
        let refused = shape.refused_imports();
        if !refused.is_empty() {
            problems.push(
                LoadError::RefusedImports {
                    plugin: plugin.clone(),
                    refused,
                }
                .to_string(),
            );
        }
        if let Some(found) = shape.other_contract() {
            problems.push(
                LoadError::OtherContract {
                    plugin: plugin.clone(),
                    found,
                    serves: CONTRACT_VERSION,
                }
                .to_string(),
            );
        }
        let world = match shape.world() {
            Ok(world) => {
                if problems.is_empty()
                    && let Err(e) = self.bind(&component, world, &shape, &plugin)
                {
                    problems.push(e.to_string());
                }
                Some(world)
            }
            Err(reason) => {
                problems.push(
                    LoadError::World {
                        plugin,
                        exports: shape.export_names(),
                        reason: reason.to_string(),
                    }
                    .to_string(),
                );
                None
            }
        };
        let params = crate::declared::of_component(wasm).unwrap_or_else(|e| {
            problems.push(
                LoadError::Params {
                    plugin: "component".to_owned(),
                    reason: e.to_string(),
                }
                .to_string(),
            );
            None
        });
        Ok(Inspection {
            world,
            exports: shape.export_names(),
            imports: shape.imports,
            sha256: sha256_hex(wasm),
            size: wasm.len(),
            problems,
            params,
        })
    }

    /// How many components this runtime compiled (cache misses and loads without a cache).
    pub fn compilations(&self) -> u64 {
        self.compilations.load(Ordering::Relaxed)
    }

    /// How many loads took the compiled component from the cache.
    pub fn cache_hits(&self) -> u64 {
        self.cache_hits.load(Ordering::Relaxed)
    }

    /// The engine and linker, for tests of the host side.
    #[cfg(test)]
    pub(crate) fn parts(&self) -> (&Engine, &Linker<HostState>) {
        (&self.engine, &self.linker)
    }

    /// Links `component` and checks its exports against `world`'s types.
    fn bind(
        &self,
        component: &Component,
        world: World,
        shape: &Shape,
        plugin: &str,
    ) -> Result<Bound, LoadError> {
        let pre = self
            .linker
            .instantiate_pre(component)
            .map_err(|e| LoadError::Link {
                plugin: plugin.to_owned(),
                message: describe(&e),
            })?;
        let wrong_type = |e: wasmtime::Error| LoadError::World {
            plugin: plugin.to_owned(),
            exports: shape.export_names(),
            reason: format!(
                "its exports do not have the types of the {} world: {}",
                world.as_str(),
                describe(&e)
            ),
        };
        Ok(match world {
            World::Transform => Bound::Transform(TransformPre::new(pre).map_err(wrong_type)?),
            World::Resolver => Bound::Resolver(ResolverPre::new(pre).map_err(wrong_type)?),
        })
    }

    /// Compiles, through the cache when there is one.
    fn compile(&self, wasm: &[u8], sha256: &str, plugin: &str) -> Result<Component, LoadError> {
        let Some(dir) = &self.cache_dir else {
            return self.compile_now(wasm, plugin);
        };
        let path = dir.join(format!("{sha256}-{}.cwasm", self.compat));
        match cache::load(&self.engine, &path) {
            Ok(Some(component)) => {
                self.cache_hits.fetch_add(1, Ordering::Relaxed);
                return Ok(component);
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(
                path = %path.display(),
                "ignoring unusable compiled plugin in the cache (it will be rewritten): {e}"
            ),
        }
        tracing::info!(
            plugin,
            "compiling the plugin (not in the plugin cache yet: this can take seconds)"
        );
        let component = self.compile_now(wasm, plugin)?;
        match component.serialize() {
            Ok(bytes) => {
                if let Err(e) = cache::store(&path, &bytes) {
                    tracing::warn!(path = %path.display(), "cannot write the plugin cache: {e}");
                }
            }
            Err(e) => tracing::warn!("cannot serialize a compiled plugin: {}", describe(&e)),
        }
        Ok(component)
    }

    fn compile_now(&self, wasm: &[u8], plugin: &str) -> Result<Component, LoadError> {
        self.compilations.fetch_add(1, Ordering::Relaxed);
        Component::new(&self.engine, wasm).map_err(|e| LoadError::Compile {
            plugin: plugin.to_owned(),
            message: describe(&e),
        })
    }
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("cache_dir", &self.cache_dir)
            .field("compilations", &self.compilations())
            .field("cache_hits", &self.cache_hits())
            .finish_non_exhaustive()
    }
}

/// Lowercase hex SHA-256 (how a plugin's file is named in a config's `sha256`).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn check_limits(limits: &Limits, plugin: &str) -> Result<(), LoadError> {
    let reason = if limits.fuel == 0 {
        "fuel is 0"
    } else if limits.memory_bytes == 0 {
        "memory_bytes is 0"
    } else if limits.deadline.is_zero() {
        "the deadline is 0"
    } else {
        return Ok(());
    };
    Err(LoadError::InvalidLimits {
        plugin: plugin.to_owned(),
        reason,
    })
}

/// Tells garbage, core modules and precompiled artifacts apart from components by their header:
/// `\0asm`, then a 16-bit version and a 16-bit layer (0 for a core module, 1 for a component).
fn check_header(wasm: &[u8], plugin: &str) -> Result<(), LoadError> {
    let not_wasm = |reason: String| LoadError::NotWasm {
        plugin: plugin.to_owned(),
        reason,
    };
    if wasm.is_empty() {
        return Err(not_wasm("the file is empty".into()));
    }
    if wasm.starts_with(b"\x7fELF") {
        return Err(not_wasm(
            "an ELF file, perhaps a precompiled .cwasm: give the .wasm component".into(),
        ));
    }
    if wasm.len() < 8 || !wasm.starts_with(b"\0asm") {
        let head = &wasm[..wasm.len().min(8)];
        return Err(not_wasm(format!(
            "it starts with {} instead of 0061736d",
            hex::encode(head)
        )));
    }
    if u16::from_le_bytes([wasm[6], wasm[7]]) == 0 {
        return Err(LoadError::CoreModule {
            plugin: plugin.to_owned(),
        });
    }
    Ok(())
}

/// Why a component's exports name no single world.
#[derive(Debug, thiserror::Error)]
enum WorldError {
    /// It exports both worlds' functions.
    #[error("it exports both `transform` and `resolve`")]
    Both,
    /// It exports neither world's function.
    #[error("it exports neither `transform` nor `resolve`")]
    Neither,
}

/// A component's imports and exports.
struct Shape {
    imports: Vec<String>,
    /// Export names, and whether each is a function.
    exports: Vec<(String, bool)>,
}

impl Shape {
    fn of(engine: &Engine, component: &Component) -> Shape {
        let ty = component.component_type();
        Shape {
            imports: ty
                .imports(engine)
                .map(|(name, _)| name.to_owned())
                .collect(),
            exports: ty
                .exports(engine)
                .map(|(name, item)| {
                    (
                        name.to_owned(),
                        matches!(item.ty, ComponentItem::ComponentFunc(_)),
                    )
                })
                .collect(),
        }
    }

    fn export_names(&self) -> Vec<String> {
        self.exports.iter().map(|(name, _)| name.clone()).collect()
    }

    /// Imports other than the host's interfaces and WASI.
    fn refused_imports(&self) -> Vec<String> {
        self.imports
            .iter()
            .filter(|name| !import_allowed(name))
            .cloned()
            .collect()
    }

    /// The first import of another contract version than this edgerep serves.
    fn other_contract(&self) -> Option<String> {
        self.imports
            .iter()
            .find_map(|name| other_contract(name))
            .map(str::to_owned)
    }

    /// The world whose export the component has.
    fn world(&self) -> Result<World, WorldError> {
        let exports_func = |wanted: &str| {
            self.exports
                .iter()
                .any(|(name, is_func)| *is_func && name == wanted)
        };
        match (exports_func("transform"), exports_func("resolve")) {
            (true, false) => Ok(World::Transform),
            (false, true) => Ok(World::Resolver),
            (true, true) => Err(WorldError::Both),
            (false, false) => Err(WorldError::Neither),
        }
    }
}

/// The version of the contract (`package edgerep:plugin@…` in `wit/plugin.wit`) this edgerep
/// serves.
pub(crate) const CONTRACT_VERSION: &str = "0.1.0";

/// An `edgerep:plugin/*` import of a version the linker cannot match with
/// [`CONTRACT_VERSION`] (for 0.x, another minor version; else another major): a plugin built
/// against another edgerep's contract, which fails to link with an error that does not say so.
fn other_contract(name: &str) -> Option<&str> {
    let (interface, version) = name.split_once('@')?;
    if !interface.starts_with("edgerep:plugin/") {
        return None;
    }
    let compatible_part = |v: &str| {
        let mut parts = v.split('.');
        match (parts.next(), parts.next()) {
            (Some("0"), Some(minor)) => format!("0.{minor}"),
            (Some(major), _) => major.to_owned(),
            _ => v.to_owned(),
        }
    };
    (compatible_part(version) != compatible_part(CONTRACT_VERSION)).then_some(name)
}

/// Whether a plugin may import the interface `name` (any version: the linker picks a compatible one).
fn import_allowed(name: &str) -> bool {
    let unversioned = name.split('@').next().unwrap_or(name);
    unversioned.starts_with("wasi:")
        || unversioned == "edgerep:plugin/host"
        || unversioned == "edgerep:plugin/types"
}

/// Feeds `Hash` output into SHA-256, for a cache key that is stable across processes.
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn finish(&self) -> u64 {
        let digest = self.0.clone().finalize();
        u64::from_le_bytes(
            digest[..8]
                .try_into()
                .expect("a sha256 digest has 32 bytes"),
        )
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// The compiled-component cache: one file per component and engine, written atomically.
mod cache {
    use super::*;

    /// First bytes of every cache file, before the SHA-256 of the rest.
    const MAGIC: &[u8; 16] = b"edgerep-cwasm-1\n";

    /// Why a cache file is unusable.
    #[derive(Debug, thiserror::Error)]
    pub(super) enum CacheError {
        /// It cannot be read.
        #[error(transparent)]
        Io(std::io::Error),
        /// It does not start with `MAGIC`.
        #[error("not an edgerep cache file")]
        NotCacheFile,
        /// It is too short to hold the checksum.
        #[error("truncated")]
        Truncated,
        /// The rest is not what the checksum says.
        #[error("checksum mismatch")]
        ChecksumMismatch,
        /// wasmtime refuses the compiled component.
        #[error("{}", describe(.0))]
        Deserialize(wasmtime::Error),
    }

    /// The compiled component in `path`, `None` if there is no such file, an error if the file
    /// is there but unusable (torn, corrupt, or from another engine).
    #[allow(unsafe_code)]
    pub(super) fn load(engine: &Engine, path: &Path) -> Result<Option<Component>, CacheError> {
        let file = match fs::read(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(CacheError::Io(e)),
        };
        let body = file
            .strip_prefix(MAGIC.as_slice())
            .ok_or(CacheError::NotCacheFile)?;
        if body.len() < 32 {
            return Err(CacheError::Truncated);
        }
        let (digest, artifact) = body.split_at(32);
        if Sha256::digest(artifact).as_slice() != digest {
            return Err(CacheError::ChecksumMismatch);
        }
        // SAFETY: `Component::deserialize` trusts its input to be an artifact wasmtime produced,
        // since it maps it as executable code. We only load files we wrote: they sit in the
        // node's own cache directory, are named by the SHA-256 of the wasm and the engine's
        // compatibility hash, were written by `store` (from `Component::serialize` of this
        // engine's configuration) through a temporary file and a rename, and their checksum was
        // just verified, so a torn or corrupted write is refused above. wasmtime itself checks
        // the version and engine settings recorded in the artifact.
        let component =
            unsafe { Component::deserialize(engine, artifact) }.map_err(CacheError::Deserialize)?;
        Ok(Some(component))
    }

    /// Removes the temporary files (`NAME.tmp.PID.N`, see [`store`]) that a process killed
    /// while it wrote them left behind: those of a process no longer running, and this
    /// process's own from before its first runtime (a restarted node may get the same id, as
    /// the first process of a container always does). Each is a compiled plugin, megabytes.
    pub(super) fn remove_stale_temporaries(dir: &Path) {
        static FIRST_RUNTIME: std::sync::OnceLock<std::time::SystemTime> =
            std::sync::OnceLock::new();
        let first_runtime = *FIRST_RUNTIME.get_or_init(std::time::SystemTime::now);
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .and_then(|n| n.split_once(".tmp."))
                .and_then(|(_, rest)| rest.split('.').next()?.parse::<u32>().ok())
            else {
                continue;
            };
            let stale = if pid == std::process::id() {
                entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|at| at < first_runtime)
            } else {
                !Path::new(&format!("/proc/{pid}")).exists()
            };
            if stale {
                let _ = fs::remove_file(entry.path());
            }
        }
    }

    /// Removes the compiled components of other engines (another edgerep build, or other
    /// engine settings: every upgrade of edgerep compiles everything again), which this
    /// runtime never loads: megabytes each, left for ever otherwise. Those of this engine stay
    /// (a reload back to an earlier build of a plugin finds it compiled).
    pub(super) fn remove_other_engines(dir: &Path, compat: &str) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        let ours = format!("-{compat}.cwasm");
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(".cwasm") && !name.ends_with(&ours) {
                let _ = fs::remove_file(entry.path());
            }
        }
    }

    /// Writes `artifact` to `path` atomically: a temporary file in the same directory, synced,
    /// then renamed over `path`.
    pub(super) fn store(path: &Path, artifact: &[u8]) -> std::io::Result<()> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let tmp = path.with_extension(format!(
            "tmp.{}.{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let result = (|| {
            use std::os::unix::fs::OpenOptionsExt;
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            file.write_all(MAGIC)?;
            file.write_all(&Sha256::digest(artifact))?;
            file.write_all(artifact)?;
            file.sync_all()?;
            fs::rename(&tmp, path)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}

/// The thread that advances the engine's epoch every millisecond, for the deadline backstop.
/// Shared by the runtime and its plugins; stops when the last of them is dropped.
pub(crate) struct Ticker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Ticker {
    /// Time between two epoch ticks: the deadline's resolution.
    pub(crate) const TICK: Duration = Duration::from_millis(1);

    fn start(engine: Engine) -> Ticker {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::Builder::new()
            .name("edgerep-plugin-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    thread::park_timeout(Ticker::TICK);
                    engine.increment_epoch();
                }
            })
            .expect("cannot spawn the epoch ticker thread");
        Ticker {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

/// The name and parameters of a plugin, shared by its instances, and its log budget.
pub(crate) struct Identity {
    pub(crate) name: String,
    pub(crate) params: BTreeMap<String, String>,
    /// Log lines the plugin may still write, across its calls and instances (see
    /// [`Identity::take_log_line`]).
    log_budget: std::sync::Mutex<LogBudget>,
    /// Lines suppressed and not yet reported.
    suppressed: std::sync::atomic::AtomicU64,
    /// When suppressed lines were last reported (at most every [`SUPPRESSED_EVERY`]).
    suppressed_noticed: std::sync::Mutex<Option<std::time::Instant>>,
}

/// How often a plugin's suppressed lines are reported, at most (one host line each time).
const SUPPRESSED_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

impl Identity {
    pub(crate) fn new(name: String, params: BTreeMap<String, String>) -> Identity {
        Identity {
            name,
            params,
            log_budget: std::sync::Mutex::new(LogBudget {
                lines: LOG_LINES_BURST,
                at: std::time::Instant::now(),
            }),
            suppressed: std::sync::atomic::AtomicU64::new(0),
            suppressed_noticed: std::sync::Mutex::new(None),
        }
    }

    /// Whether the plugin may write one more log line at `now`: at most [`LOG_LINES_BURST`] at
    /// once, refilled at [`LOG_LINES_PER_SECOND`] (a plugin logging on every event of a large
    /// batch wrote hundreds of MB, synchronously, from the committer or replicator thread).
    pub(crate) fn take_log_line(&self, now: std::time::Instant) -> bool {
        let mut b = self.log_budget.lock().unwrap_or_else(|e| e.into_inner());
        let refill = now.saturating_duration_since(b.at).as_secs_f64() * LOG_LINES_PER_SECOND;
        b.lines = (b.lines + refill).min(LOG_LINES_BURST);
        b.at = b.at.max(now);
        if b.lines >= 1.0 {
            b.lines -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A plugin's log lines left, as of `at`.
struct LogBudget {
    lines: f64,
    at: std::time::Instant,
}

/// Most log lines one call may write; the rest are counted and reported in one line.
const LOG_LINES_PER_CALL: u32 = 100;

/// Log lines a plugin may write at once, across calls ([`Identity::take_log_line`]).
const LOG_LINES_BURST: f64 = 1000.0;

/// Log lines a plugin may write a second, over time, across calls.
const LOG_LINES_PER_SECOND: f64 = 100.0;

/// Longest log line kept, in bytes; longer lines are cut.
const LOG_LINE_MAX_BYTES: usize = 4096;

/// The data of one store (one instance): the host side of the plugin's imports.
pub(crate) struct HostState {
    identity: Arc<Identity>,
    pub(crate) limiter: MemoryLimiter,
    log_lines: u32,
    log_suppressed: u64,
    /// Created on first use, so plugins that do not import WASI never pay for it.
    wasi: Option<WasiState>,
    /// The call's stdout and stderr (their last bytes), and its last error-level log line:
    /// what the plugin said before it failed.
    output: crate::wasi::OutputTail,
    last_error_log: Option<String>,
    /// The host's work for the plugin in the current call (see [`crate::wasi::HostWork`]).
    work: Arc<crate::wasi::HostWork>,
}

impl HostState {
    pub(crate) fn new(identity: Arc<Identity>, memory_bytes: usize) -> HostState {
        let work = Arc::new(crate::wasi::HostWork::default());
        HostState {
            identity,
            limiter: MemoryLimiter::new(memory_bytes),
            log_lines: 0,
            log_suppressed: 0,
            wasi: None,
            output: crate::wasi::OutputTail::new(work.clone()),
            last_error_log: None,
            work,
        }
    }

    /// Whether the instance may be reused: it keeps at most [`crate::wasi::MAX_POOLED_HANDLES`]
    /// WASI handles from its calls.
    pub(crate) fn reusable(&mut self) -> bool {
        self.wasi
            .as_mut()
            .is_none_or(|w| w.handles() <= crate::wasi::MAX_POOLED_HANDLES)
    }

    /// What the plugin said in the current call before failing: its last error-level log line
    /// (the SDKs log a panic's message so), else the last lines it printed (a TinyGo panic
    /// prints its message, then aborts).
    pub(crate) fn said(&self) -> Option<String> {
        self.last_error_log
            .clone()
            .or_else(|| self.output.last_lines())
            .map(|s| {
                let one_line = s.split_whitespace().collect::<Vec<_>>().join(" ");
                truncate(&one_line, 512).into_owned()
            })
    }

    /// Resets the per-call state: the log budget and the record of a refused grow; the host's
    /// work for the call may take up to `fuel` units.
    pub(crate) fn begin_call(&mut self, fuel: u64) {
        self.work.arm(fuel);
        self.log_lines = 0;
        self.log_suppressed = 0;
        self.last_error_log = None;
        self.output.clear();
        self.limiter.begin_call();
    }

    /// Reports the log lines suppressed during the call, and those not reported before, in
    /// one line at most every [`SUPPRESSED_EVERY`]: a plugin logging on every call past its
    /// budget must not turn each call into a line of the host's.
    pub(crate) fn end_call(&mut self) {
        use std::sync::atomic::Ordering;
        if self.log_suppressed == 0 {
            return;
        }
        let identity = &self.identity;
        identity
            .suppressed
            .fetch_add(self.log_suppressed, Ordering::Relaxed);
        self.log_suppressed = 0;
        let due = {
            let mut noticed = identity
                .suppressed_noticed
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let due = noticed.is_none_or(|at| at.elapsed() >= SUPPRESSED_EVERY);
            if due {
                *noticed = Some(std::time::Instant::now());
            }
            due
        };
        if due {
            let lines = identity.suppressed.swap(0, Ordering::Relaxed);
            if lines > 0 {
                tracing::warn!(
                    target: "edgerep_plugin::guest",
                    plugin = %identity.name,
                    "suppressed {lines} lines (more than {LOG_LINES_PER_CALL} in one call, or more than {LOG_LINES_PER_SECOND} a second over time)"
                );
            }
        }
    }

    /// Fuel for host work done for the plugin since the last call (see `WasiState::take_debt`).
    pub(crate) fn take_host_debt(&mut self) -> u64 {
        self.work.take()
    }

    /// The host's work for the plugin in the current call.
    pub(crate) fn host_work(&self) -> &crate::wasi::HostWork {
        &self.work
    }

    pub(crate) fn wasi(&mut self) -> &mut WasiState {
        let output = &self.output;
        self.wasi
            .get_or_insert_with(|| WasiState::new(output.clone()))
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        let wasi = self.wasi();
        WasiCtxView {
            ctx: &mut wasi.ctx,
            table: &mut wasi.table,
        }
    }
}

impl Host for HostState {
    fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        self.work.spend(message.len())?;
        if matches!(level, Level::Error) {
            self.last_error_log = Some(truncate(&message, LOG_LINE_MAX_BYTES).into_owned());
        }
        if self.log_lines >= LOG_LINES_PER_CALL
            || !self.identity.take_log_line(std::time::Instant::now())
        {
            self.log_suppressed += 1;
            return Ok(());
        }
        self.log_lines += 1;
        let message = truncate(&message, LOG_LINE_MAX_BYTES);
        // One line: a plugin's text must not pass for lines the node wrote.
        let message = edgerep_wire::text::one_line(&message);
        let plugin = &self.identity.name;
        match level {
            Level::Debug => tracing::debug!(target: "edgerep_plugin::guest", %plugin, "{message}"),
            Level::Info => tracing::info!(target: "edgerep_plugin::guest", %plugin, "{message}"),
            Level::Warn => tracing::warn!(target: "edgerep_plugin::guest", %plugin, "{message}"),
            Level::Error => tracing::error!(target: "edgerep_plugin::guest", %plugin, "{message}"),
        }
        Ok(())
    }

    fn param(&mut self, name: String) -> wasmtime::Result<Option<String>> {
        let value = self.identity.params.get(&name).cloned();
        self.work
            .spend(name.len() + value.as_ref().map_or(0, String::len))?;
        Ok(value)
    }

    fn params(&mut self) -> wasmtime::Result<Vec<(String, String)>> {
        let bytes = self
            .identity
            .params
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum();
        self.work.spend(bytes)?;
        Ok(self
            .identity
            .params
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

/// `text` cut to at most `max` bytes at a character boundary, with "…" when cut.
pub(crate) fn truncate(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return text.into();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end]).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_allowed() {
        assert!(import_allowed("edgerep:plugin/host@0.1.0"));
        assert!(import_allowed("edgerep:plugin/types@0.1.0"));
        assert!(import_allowed("wasi:cli/environment@0.2.6"));
        assert!(!import_allowed("edgerep:plugin/other@0.1.0"));
        assert!(!import_allowed("acme:evil/net"));
        assert!(!import_allowed("edgerep:plugin/hostile"));
        // Versions the linker cannot match are named as another contract.
        assert_eq!(other_contract("edgerep:plugin/host@0.1.0"), None);
        assert_eq!(other_contract("edgerep:plugin/host@0.1.7"), None);
        assert_eq!(other_contract("edgerep:plugin/host"), None);
        assert_eq!(other_contract("wasi:cli/environment@0.2.6"), None);
        assert_eq!(
            other_contract("edgerep:plugin/host@0.2.0"),
            Some("edgerep:plugin/host@0.2.0")
        );
        assert_eq!(
            other_contract("edgerep:plugin/types@1.0.0"),
            Some("edgerep:plugin/types@1.0.0")
        );
        // The version named here is the contract's own.
        let wit = include_str!("../../../wit/plugin.wit");
        assert!(
            wit.contains(&format!("package edgerep:plugin@{CONTRACT_VERSION};")),
            "wit/plugin.wit's package version is not CONTRACT_VERSION"
        );
    }

    #[test]
    fn headers() {
        assert!(matches!(
            check_header(b"", "p"),
            Err(LoadError::NotWasm { .. })
        ));
        assert!(matches!(
            check_header(b"hello world", "p"),
            Err(LoadError::NotWasm { .. })
        ));
        assert!(matches!(
            check_header(b"\0asm\x01\0\0\0", "p"),
            Err(LoadError::CoreModule { .. })
        ));
        assert!(check_header(b"\0asm\x0d\0\x01\0", "p").is_ok());
    }

    #[test]
    fn logging_is_rate_limited_per_call() {
        let identity = Arc::new(Identity::new(
            "chatty".into(),
            [
                ("b".to_owned(), "2".to_owned()),
                ("a".to_owned(), "1".to_owned()),
            ]
            .into(),
        ));
        let mut state = HostState::new(identity, 1 << 20);
        for call in 0..2 {
            state.begin_call(u64::MAX);
            for i in 0..150 {
                state
                    .log(Level::Info, format!("call {call} line {i}"))
                    .unwrap();
            }
            assert_eq!((state.log_lines, state.log_suppressed), (100, 50));
            state.end_call();
            assert_eq!(state.log_suppressed, 0);
        }
        assert_eq!(state.param("a".into()).unwrap().as_deref(), Some("1"));
        assert_eq!(state.param("c".into()).unwrap(), None);
        assert_eq!(
            state.params().unwrap(),
            [
                ("a".to_owned(), "1".to_owned()),
                ("b".to_owned(), "2".to_owned())
            ]
        );
    }

    /// What a call hands the host costs fuel, a unit a byte: past the call's budget the host
    /// function traps, out of fuel (however few instructions asked for it), and the work is
    /// counted when the call ends.
    #[test]
    fn the_hosts_work_for_a_call_is_charged_and_bounded_by_its_fuel() {
        let identity = Arc::new(Identity::new(
            "chatty".into(),
            [("name".to_owned(), "value".to_owned())].into(),
        ));
        let mut state = HostState::new(identity, 1 << 20);
        state.begin_call(100);
        state.log(Level::Debug, "x".repeat(60)).unwrap();
        assert_eq!(
            state.param("name".into()).unwrap().as_deref(),
            Some("value")
        );
        // 60 + 9 bytes so far; 40 more pass the budget of 100.
        let e = state.log(Level::Debug, "y".repeat(40)).unwrap_err();
        assert_eq!(
            e.downcast_ref::<wasmtime::Trap>(),
            Some(&wasmtime::Trap::OutOfFuel),
            "{e:?}"
        );
        assert!(state.params().is_err());
        assert_eq!(state.take_host_debt(), 60 + 9 + 40 + 9);
        // The next call starts afresh.
        state.begin_call(100);
        assert!(state.log(Level::Debug, "z".repeat(100)).is_ok());
    }

    /// Across calls and instances, a plugin writes at most a burst of lines at once, then
    /// lines at a steady rate: a plugin logging on every event of a large batch is cut there.
    #[test]
    fn logging_is_rate_limited_across_calls() {
        let identity = Identity::new("chatty".into(), BTreeMap::new());
        let start = std::time::Instant::now();
        let taken = (0..1500).filter(|_| identity.take_log_line(start)).count();
        assert_eq!(taken, LOG_LINES_BURST as usize);
        assert!(!identity.take_log_line(start + Duration::from_millis(5)));
        let later = start + Duration::from_secs(1);
        let taken = (0..500).filter(|_| identity.take_log_line(later)).count();
        assert_eq!(taken, LOG_LINES_PER_SECOND as usize);
        // Drained as of an hour on: however long this test takes, no line comes back.
        while identity.take_log_line(start + Duration::from_secs(3600)) {}
        // Instances share it: a second instance of the same plugin is out of lines too.
        let mut state = HostState::new(Arc::new(identity), 1 << 20);
        state.begin_call(u64::MAX);
        state.log(Level::Info, "one more".into()).unwrap();
        assert_eq!(state.log_suppressed, 1);
        // What was suppressed is reported once per interval: the first report goes at once,
        // the count of the calls after it is kept for the next instead of a host line per call.
        let kept = |state: &HostState| {
            state
                .identity
                .suppressed
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        state.end_call();
        assert_eq!(kept(&state), 0);
        for _ in 0..3 {
            state.begin_call(u64::MAX);
            state.log(Level::Info, "and another".into()).unwrap();
            state.end_call();
        }
        assert_eq!(kept(&state), 3);
    }

    #[test]
    fn truncation_keeps_characters_whole() {
        assert_eq!(truncate("héllo", 2), "h…");
        assert_eq!(truncate("hello", 5), "hello");
    }
}
