//! A changed config taken in without a restart (`edgerep reload`, `POST /reload`, SIGHUP).
//!
//! What takes effect: peers added, removed or moved (while there is at least one), limits
//! raised (`max_request_bytes` aside: the HTTP layer's), plugins
//! (new ones, and new builds or parameters of plugins that decide no collection's state),
//! transforms on ingest, new collections, upgrades appended to a collection
//! (`[[collections.declared.upgrades]]`, each from an `effective_from` time), write
//! authorization and revocations. Sessions re-handshake when what the handshake compares
//! changed (the collections' fingerprints, the policy); otherwise they keep going.
//!
//! Invariant: what decided an event before the reload decides it after. A plugin that decides
//! some collection's state cannot change in place (a new build or new parameters come as a
//! new plugin named in an upgrade), a collection's upgrades can only be appended, limits are
//! never lowered (a start lowers them only when every stored event fits), and the rest of
//! the config (addresses, TLS, durability, retention, ...) needs a restart: a reload that
//! changes any of it is refused whole, naming what, and nothing changes. What decides each
//! collection and the limits are recorded in the store before the new wiring takes effect.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use edgerep_config::Config;
use edgerep_store::{Store, StoreError};
use serde::Serialize;

use crate::committer::Committer;
use crate::keys::NodeKeys;
use crate::pipeline::Pipeline;
use crate::replication::Replication;

/// Why a reload was refused or failed. Every case but `ReResolve` and `Interrupted` changed
/// nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    /// The config file cannot be read or is not valid.
    #[error("{0}")]
    Config(#[from] edgerep_config::ConfigError),
    /// The file is another node's config.
    #[error(
        "{file}: not reloaded (nothing changed): it is node {theirs:?}'s config, not this node's ({ours:?})"
    )]
    OtherNode {
        /// The config file.
        file: String,
        /// The node the file names.
        theirs: String,
        /// This node.
        ours: String,
    },
    /// Changes that take a restart (or cannot be made at all), each named.
    #[error("{file}: not reloaded (nothing changed): {}", problems.join("; "))]
    NeedsRestart {
        /// The config file.
        file: String,
        /// What changed that a reload cannot take in.
        problems: Vec<String>,
    },
    /// The new plugins could not be loaded.
    #[error("{0}")]
    Plugins(String),
    /// The store refused the new limits.
    #[error(transparent)]
    Store(#[from] edgerep_store::StoreError),
    /// After the new config took effect, resolving a collection's keys again failed.
    #[error(
        "the new config is in force, but resolving collection {collection:?}'s keys again failed: {source} (the next reload or start resolves them again)"
    )]
    ReResolve {
        /// The collection.
        collection: String,
        /// Why.
        source: crate::committer::CommitError,
    },
    /// A blocking task of the reload did not finish (before anything changed).
    #[error("reload task failed: {0}")]
    Task(String),
    /// The store's record of what decides each collection could not be saved (before anything
    /// changed).
    #[error("saving what decides each collection failed (nothing changed): {0}")]
    Record(crate::committer::CommitError),
    /// The raised event limits could not be recorded in the store (before anything changed).
    #[error("recording the raised limits in the store failed (nothing changed): {0}")]
    Limits(crate::committer::CommitError),
    /// The reload's own task stopped midway (part of the new config may be in force).
    #[error("reload stopped midway: {0} (part of the new config may be in force: reload again)")]
    Interrupted(String),
    /// The API's token file cannot be read again, or holds no good token.
    #[error("{0} (nothing changed)")]
    Token(String),
    /// The node's config file is not the one the caller checked.
    #[error(
        "the node's config file {file} is not what was checked: another file was checked, or {file} changed since; nothing was reloaded. Edit {file} and reload with --config {file}, or restart the node with --config naming the other file"
    )]
    FileDiffers {
        /// The node's config file.
        file: String,
    },
}

/// How far apart a reload reads the config file twice (see [`Reloader::reload_file`]).
pub const SETTLE: std::time::Duration = std::time::Duration::from_millis(100);

impl ReloadError {
    /// Whether the new config is, or may be, in force despite the error (resolving keys again
    /// failed after it took effect, or a task of the reload stopped midway): not a refusal.
    pub fn took_effect(&self) -> bool {
        matches!(
            self,
            ReloadError::ReResolve { .. } | ReloadError::Interrupted(_)
        )
    }

    /// Whether the node itself failed (its store, a task), not the file: nothing changed,
    /// and the same reload may pass when tried again.
    pub fn node_failed(&self) -> bool {
        matches!(
            self,
            ReloadError::Store(_)
                | ReloadError::Task(_)
                | ReloadError::Record(_)
                | ReloadError::Limits(_)
        )
    }
}

/// What a reload did.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Reloaded {
    /// The file read.
    pub file: String,
    /// Plugins loaded anew (new, or a new build or parameters).
    pub plugins_loaded: Vec<String>,
    /// Upgrades that are new, as `collection from TIME`.
    pub upgrades_added: Vec<String>,
    /// Per collection whose resolver changed, the keys whose kept resolution changed.
    pub keys_re_resolved: BTreeMap<String, u64>,
    /// Whether sessions with peers handshake again (what they compare changed).
    pub sessions_restarted: bool,
    /// What changed outside the config that only a restart takes in (the TLS files' contents).
    pub takes_a_restart: Vec<String>,
    /// Ids `[[revoked]]` or `[authorization]` names that are no peer and no origin this node
    /// holds events of (a typo?), and configured peers the origin bound leaves no room for,
    /// each as a sentence.
    pub unknown_nodes: Vec<String>,
    /// Origins whose `[authorization]` this reload narrowed, each as a sentence: their events
    /// to the collections taken away are judged by each node's config when they arrive, so
    /// nodes that got some before their reload and nodes that get them after differ for good.
    pub authorization_narrowed: Vec<String>,
}

/// The origins `new`'s `[authorization]` lets write fewer collections than `old`'s did (an
/// origin `old` did not list could write every one), each as a sentence.
fn authorization_narrowed(old: &Config, new: &Config) -> Vec<String> {
    new.authorization
        .iter()
        .filter_map(|(origin, allowed)| {
            const WHY: &str = "stay in their state and are kept out of the others' for good; narrow it only for an origin that no longer writes there, on every node before it writes again (or revoke it with [[revoked]], whose after_seq makes every node judge alike)";
            match old.authorization.get(origin) {
                None => Some(format!("[authorization] now limits {origin} (it could write every collection): its events to other collections that some nodes already took {WHY}")),
                Some(before) => {
                    let taken: Vec<&String> =
                        before.iter().filter(|c| !allowed.contains(c)).collect();
                    (!taken.is_empty()).then(|| format!("[authorization] took {taken:?} from {origin}: its events there that some nodes already took {WHY}"))
                }
            }
        })
        .collect()
}

/// The node's current config and what a reload changes.
pub struct Reloader {
    config: RwLock<Arc<Config>>,
    pipeline: Arc<Pipeline>,
    store: Arc<edgerep_store::Store>,
    keys: Option<Arc<NodeKeys>>,
    replication: Option<Arc<Replication>>,
    committer: Committer,
    /// The API's guard, whose token a reload reads again.
    guard: Arc<crate::api::Guard>,
    /// One reload at a time.
    busy: tokio::sync::Mutex<()>,
    /// What the TLS files (CA, certificate, key) held at start: the identity is read only then.
    tls_files: Option<blake3::Hash>,
    /// Told the collections a reload declares (counted under their names, as after a start).
    commit_metrics: Option<Arc<crate::metrics::CommitMetrics>>,
    /// Why the last reload failed (`None`: it passed, or none was asked for), for status: a
    /// reload by SIGHUP has nobody to answer, and its refusal must not show only in the log.
    last_error: std::sync::Mutex<Option<String>>,
}

/// Why the next start would refuse `config`'s TLS files, if it would: they do not load as this
/// node's identity, or (with authentication) their key does not verify the newest seal of this
/// node's own events in `store` (blocking: it may read back through the store's seals).
fn refused_at_next_start(store: &edgerep_store::Store, config: &Config) -> Option<String> {
    let identity = match crate::replication::load_identity(config) {
        Ok(identity) => identity,
        Err(e) => {
            return Some(format!(
                "replication.ca, cert or key: the next start would refuse the files as they are now ({e}): put the former ones back before restarting"
            ));
        }
    };
    if !config.replication.authenticate {
        return None;
    }
    let node = &config.node.id;
    let keys = match NodeKeys::new(&identity, config) {
        Ok(keys) => keys,
        Err(e) => {
            return Some(format!(
                "replication.key: the next start would refuse it ({e}): put the former key back before restarting"
            ));
        }
    };
    let held = store.status().ok()?.origins.get(node).copied().unwrap_or(0);
    crate::check_own_key(store, &keys, node, held, |e| {
        crate::NodeError::Replication(format!("reading this node's seals: {e}"))
    })
    .err()
    .map(|e| {
        format!(
            "replication.key: the next start would refuse the new key ({e}): put the former key and certificate back before restarting"
        )
    })
}

/// A hash of what `config`'s TLS files hold now (an unreadable file counts as such). Taken at
/// start before the identity is read: files changed in between read as changed at a reload.
pub(crate) fn tls_files(config: &Config) -> Option<blake3::Hash> {
    let tls = config.replication.tls.as_ref()?;
    let mut hasher = blake3::Hasher::new();
    for path in [&tls.ca, &tls.cert, &tls.key] {
        match std::fs::read(path) {
            Ok(bytes) => {
                hasher.update(&(bytes.len() as u64).to_le_bytes());
                hasher.update(&bytes);
            }
            Err(_) => {
                hasher.update(&u64::MAX.to_le_bytes());
            }
        }
    }
    Some(hasher.finalize())
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("file", &self.config().source)
            .finish()
    }
}

impl Reloader {
    pub(crate) fn new(
        config: Config,
        pipeline: Arc<Pipeline>,
        store: Arc<edgerep_store::Store>,
        keys: Option<Arc<NodeKeys>>,
        replication: Option<Arc<Replication>>,
        committer: Committer,
        guard: Arc<crate::api::Guard>,
    ) -> Reloader {
        Reloader {
            tls_files: None,
            config: RwLock::new(Arc::new(config)),
            pipeline,
            store,
            keys,
            replication,
            committer,
            guard,
            busy: tokio::sync::Mutex::new(()),
            commit_metrics: None,
            last_error: std::sync::Mutex::new(None),
        }
    }

    /// Why the last reload failed, if it did (a later reload that passes clears it).
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn record_outcome<T>(&self, result: &Result<T, ReloadError>) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = match result {
            Ok(_) => None,
            Err(e) if e.took_effect() => {
                Some(format!("the config was reloaded, with an error: {e}"))
            }
            Err(e) => Some(format!(
                "the config was not reloaded (the node runs the config it had): {e}"
            )),
        };
    }

    /// With the per-collection metrics to tell the collections a reload declares.
    pub(crate) fn with_metrics(mut self, metrics: Arc<crate::metrics::CommitMetrics>) -> Reloader {
        self.commit_metrics = Some(metrics);
        self
    }

    /// With what the TLS files held at start ([`tls_files`] of the config, taken before the
    /// identity was read).
    pub(crate) fn with_tls_files(mut self, tls_files: Option<blake3::Hash>) -> Reloader {
        self.tls_files = tls_files;
        self
    }

    /// The config in force.
    pub fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A collection declared by this reload that the node took undeclared before (last writer
    /// wins, no transforms on apply) and whose events it holds keeps those settings: deciding
    /// them otherwise in place would decide the events already applied differently on nodes
    /// that reload at different times, as for a declared collection (see [`reloadable`]).
    fn declared_in_place(&self, old: &Config, new: &Config) -> Result<(), ReloadError> {
        // Judged against the store's record of what decided each collection when it last
        // ran, as a start judges (a collection the record lacks counts as taken undeclared),
        // whatever `accept_undeclared` says now: the store may hold events an earlier run took
        // undeclared, or of a collection declared before and left out for a while.
        let Some(recorded) = self.store.recorded_deciders()? else {
            return Ok(());
        };
        let problems = crate::deciders::changes_of(
            &recorded,
            new,
            |name| old.collection(name).is_none(),
            |c| self.store.holds_collection(c),
            |c, from_ms| pending_upgrade(&self.store, old, c, from_ms).unwrap_or(false),
        )?;
        refused_if_any(new, problems)
    }

    /// Reads the config file the node started with again and takes it in. The file is read
    /// once this reload's turn came: of two at once (SIGHUP and a request) around an edit, the
    /// last to run reads the file as it is last, never an older read after a newer one.
    ///
    /// The file must read the same twice, [`SETTLE`] apart (one being written is refused), and
    /// with `expect`, its [`edgerep_config::file_digest`] must be that (the file
    /// `edgerep reload --config FILE` checked): else nothing changes.
    pub async fn reload_file(
        self: &Arc<Self>,
        expect: Option<String>,
    ) -> Result<Reloaded, ReloadError> {
        let this = self.clone();
        tokio::spawn(async move {
            let _one = this.busy.lock().await;
            let result = this.reload_file_locked(expect).await;
            this.record_outcome(&result);
            result
        })
        .await
        .map_err(|e| ReloadError::Interrupted(e.to_string()))?
    }

    /// Takes in `new` (see the module comment). An error in checking it or loading its plugins
    /// changes nothing; resolving kept resolutions again runs after the new config took effect,
    /// and a store error there is reported as the reload's error.
    ///
    /// Runs to its end in a task of its own even when the caller stops waiting (a request
    /// timed out, a client went away): stopped halfway, the pipeline would decide by the new
    /// config while the node's config, replication and keys kept the old.
    pub async fn reload(self: &Arc<Self>, new: Config) -> Result<Reloaded, ReloadError> {
        let this = self.clone();
        tokio::spawn(async move {
            let _one = this.busy.lock().await;
            let result = this.reload_locked(new).await;
            this.record_outcome(&result);
            result
        })
        .await
        .map_err(|e| ReloadError::Interrupted(e.to_string()))?
    }

    /// [`Reloader::reload_file`], with the lock that runs one reload at a time held.
    async fn reload_file_locked(&self, expect: Option<String>) -> Result<Reloaded, ReloadError> {
        let path = self.config().source.clone();
        let file = path.clone();
        let text = tokio::task::spawn_blocking(move || Config::read_settled(&path, SETTLE))
            .await
            .map_err(|e| ReloadError::Task(e.to_string()))??;
        // Compared before parsing: a file the caller did not check is not judged at all.
        if let Some(expected) = expect
            && expected != edgerep_config::file_digest(text.as_bytes())
        {
            return Err(ReloadError::FileDiffers {
                file: file.display().to_string(),
            });
        }
        let config = Config::parse(&text, &file)?;
        self.reload_locked(config).await
    }

    /// [`Reloader::reload`], with the lock that runs one reload at a time held.
    async fn reload_locked(&self, mut new: Config) -> Result<Reloaded, ReloadError> {
        let old = self.config();
        // Set from the command line, not the file.
        new.node.alone = old.node.alone;
        // Which of the upgrades in force now are still pending (each a scan of its collection
        // in the store, off the async threads), once for every check below.
        let (store, o) = (self.store.clone(), old.clone());
        let pending_now = tokio::task::spawn_blocking(move || {
            let mut out = std::collections::BTreeSet::new();
            for c in &o.collections.declared {
                for u in &c.upgrades {
                    if pending_upgrade(&store, &o, &c.name, u.from_ms)? {
                        out.insert((c.name.clone(), u.from_ms));
                    }
                }
            }
            Ok::<_, StoreError>(out)
        })
        .await
        .map_err(|e| ReloadError::Task(e.to_string()))??;
        let pending = |collection: &str, from_ms: u64| {
            pending_now.contains(&(collection.to_owned(), from_ms))
        };
        reloadable(&old, &new, &pending)?;
        self.declared_in_place(&old, &new)?;
        // Upgrades past the settled ones are judged as new (a pending one corrected to a time
        // already past is an upgrade from then).
        let settled: std::collections::BTreeMap<String, usize> = old
            .collections
            .declared
            .iter()
            .map(|c| (c.name.clone(), settled_upgrades(c, &pending)))
            .collect();
        let settled_of = |name: &str| settled.get(name).copied().unwrap_or(0);
        // The upgrades `new` brings, per collection: past the settled ones, those `old` did not
        // have (appended, or a pending one changed).
        let brought = |c: &edgerep_config::CollectionConfig| -> Vec<edgerep_config::Upgrade> {
            let was = old.collection(&c.name).map_or(&[][..], |o| &o.upgrades[..]);
            c.upgrades
                .get(settled_of(&c.name)..)
                .unwrap_or_default()
                .iter()
                .filter(|u| !was.contains(u))
                .cloned()
                .collect()
        };
        // The same paths (checked above), other contents: a reissued certificate or a new CA
        // is taken in only by a restart (the endpoint was built with the old ones). Said in
        // the answer, not refused: the rest of the reload (a revocation, say) may be urgent.
        let mut takes_a_restart = Vec::new();
        if tls_files(&new) != self.tls_files {
            takes_a_restart.push("replication.ca, cert or key: the files' contents changed since the node started; the node presents and trusts the old ones until a restart".to_owned());
            // Files the next start would refuse (another key than the one this node's events
            // are sealed with, a certificate of another CA): said now, while the former files
            // can still be put back, not at that start.
            let (store, config) = (self.store.clone(), new.clone());
            let refused =
                tokio::task::spawn_blocking(move || refused_at_next_start(&store, &config))
                    .await
                    .map_err(|e| ReloadError::Task(e.to_string()))?;
            if let Some(why) = refused {
                tracing::error!("{why}");
                takes_a_restart.push(why);
            }
        }
        // Read before anything changes: a token file now unreadable or too short fails the
        // whole reload.
        let token = crate::api::Guard::read_token(&new).map_err(ReloadError::Token)?;
        // The new wiring is loaded first (what can fail), then what decides each collection is
        // recorded, the collections given upgrades marked as still to be re-resolved, and only
        // then is the wiring put in force: a crash leaves either the old record and wiring, or
        // a record a start finishes from (re-resolving them); never one that lacks upgrades in
        // force (a start checks those as appended to the file by no reload), nor one naming
        // plugins that never loaded.
        let pipeline = self.pipeline.clone();
        let wired = new.clone();
        let prepared = tokio::task::spawn_blocking(move || pipeline.prepare(&wired))
            .await
            .map_err(|e| ReloadError::Task(e.to_string()))?
            .map_err(|e| ReloadError::Plugins(e.to_string()))?;
        // From the check of what the old wiring committed until the new one is in force, no
        // batch of peers' events runs or commits under the old transforms on apply (each
        // batch already shaped by them is committed first): what the check finds is all of
        // it. (Taken after the plugins compiled, which may take seconds: batches wait only
        // for the check and the records.)
        let quiet = self.pipeline.quiesce().await;
        let store = self.store.clone();
        let n = new.clone();
        let settled_then = settled.clone();
        let problems = tokio::task::spawn_blocking(move || {
            late_upgrades(&store, &n, |name| {
                Some(settled_then.get(name).copied().unwrap_or(0))
            })
        })
        .await
        .map_err(|e| ReloadError::Task(e.to_string()))??;
        refused_if_any(&new, problems)?;
        let recorded = self.store.recorded_deciders()?;
        let upgraded: Vec<String> = new
            .collections
            .declared
            .iter()
            .filter(|c| !brought(c).is_empty())
            .map(|c| c.name.clone())
            .collect();
        // The limits (checked above: only raised) are recorded in the store before anything is
        // written under them (a start below them is refused: what was stored must stay
        // readable), and before the record of what decides each collection: a failure of
        // either leaves the old wiring and config in force and the old record (limits recorded
        // higher than any event written under them change nothing a start checks).
        self.committer
            .record_limits(crate::event_limits(&new))
            .await
            .map_err(ReloadError::Limits)?;
        self.committer
            .record_deciders(crate::deciders::record_pending(
                &new,
                recorded.as_deref(),
                &upgraded,
            ))
            .await
            .map_err(ReloadError::Record)?;
        self.store.raise_limits(crate::event_limits(&new))?;
        // Anti-entropy leaves the upgraded collections' resolutions alone from before the new
        // wiring decides anything until they are re-resolved (below).
        self.store.mark_re_resolving(upgraded.iter().cloned());
        // The new wiring and the config the API checks requests against are put in force one
        // right after the other (a request checked by one and run by the other would be
        // judged by rules no start would give it).
        let plugins_loaded = self.pipeline.install(&new, prepared);
        drop(quiet);
        if let Some(metrics) = &self.commit_metrics {
            metrics.declare(new.collections.declared.iter().map(|c| c.name.clone()));
        }
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(new.clone());
        if let Some(keys) = &self.keys {
            keys.set_revoked(&new);
        }
        // What peers compare to decide whether they may replicate: the deciding part of the
        // fingerprint and the policy. (A transform on ingest only shapes this node's writes:
        // its new build reaches peers at their next handshake.)
        let sessions_restarted = self.replication.is_some()
            && (crate::replication::deciding_fingerprint(&old)
                != crate::replication::deciding_fingerprint(&new)
                || crate::replication::policy(&old) != crate::replication::policy(&new));
        if let Some(r) = &self.replication {
            r.reload(new.clone(), sessions_restarted);
        }
        let mut upgrades_added = Vec::new();
        for c in &new.collections.declared {
            for u in &brought(c) {
                upgrades_added.push(format!(
                    "{} from {}",
                    c.name,
                    edgerep_config::format_ms(u.from_ms)
                ));
            }
        }
        // The collections upgraded now (recorded as to be re-resolved above).
        let mut changed_resolution = upgraded;
        // And those an earlier reload's re-resolution did not finish (the record still marks
        // them): a reload after fixing what failed finishes it, not only the next start.
        for name in recorded
            .as_deref()
            .map(|r| crate::deciders::upgraded_since(r, &new))
            .unwrap_or_default()
        {
            if !changed_resolution.contains(&name) {
                changed_resolution.push(name);
            }
        }
        let file = new.source.display().to_string();
        self.guard.set_token(token);
        // Keys resolved before by the old wiring (an upgrade that came late to this node)
        // get what the new one decides, the same as on every other node. One collection
        // failing does not keep the others from theirs.
        let mut keys_re_resolved = BTreeMap::new();
        let mut failed = None;
        for collection in changed_resolution {
            match self.committer.re_resolve(collection.clone()).await {
                Ok(n) => {
                    keys_re_resolved.insert(collection, n);
                }
                Err(source) => {
                    tracing::error!(%collection, "resolving the collection's keys again failed (the next reload or start tries again): {source}");
                    failed.get_or_insert(ReloadError::ReResolve { collection, source });
                }
            }
        }
        // Done: the next start need not re-resolve them (until this is saved, it does).
        if !keys_re_resolved.is_empty() {
            let done = crate::deciders::with_upgrades(&self.config(), keys_re_resolved.keys());
            let saved = self.committer.clear_marks(done).await;
            if let Err(e) = saved {
                tracing::warn!(
                    "saving what decides each collection failed (the next start re-resolves the upgraded collections again): {e}"
                );
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        // A store that cannot say which origins it holds leaves the check out (the reload
        // took effect already).
        let unknown_nodes = self
            .store
            .status()
            .map(|s| crate::unknown_nodes(&self.config(), Some(&s.origins)))
            .unwrap_or_default();
        let reloaded = Reloaded {
            file,
            plugins_loaded,
            upgrades_added,
            keys_re_resolved,
            sessions_restarted,
            unknown_nodes,
            takes_a_restart,
            authorization_narrowed: authorization_narrowed(&old, &new),
        };
        for what in reloaded
            .takes_a_restart
            .iter()
            .chain(&reloaded.unknown_nodes)
            .chain(&reloaded.authorization_narrowed)
        {
            tracing::warn!("reloaded, but {what}");
        }
        tracing::info!(?reloaded, "config reloaded");
        Ok(reloaded)
    }
}

/// Whether the upgrade of `collection` from `from_ms` may still be changed or removed (an
/// effective_from mistyped years ahead must not stand for good): it takes effect more than
/// `node.max_clock_skew_ms` from now, and this node holds no version of the collection stamped
/// at or after it (a peer's clock far ahead may have stamped some), so nothing here was decided
/// by it. Every node judges its own store when its config changes.
pub(crate) fn pending_upgrade(
    store: &Store,
    config: &Config,
    collection: &str,
    from_ms: u64,
) -> Result<bool, StoreError> {
    if from_ms <= crate::committer::wall_ms().saturating_add(config.node.max_clock_skew_ms) {
        return Ok(false);
    }
    Ok(store.version_from(collection, from_ms)?.is_none())
}

/// How many of `c`'s upgrades are settled: those before its first [`pending_upgrade`]. They
/// stay as they are; the pending ones after them may change or go.
pub(crate) fn settled_upgrades(
    c: &edgerep_config::CollectionConfig,
    pending: &dyn Fn(&str, u64) -> bool,
) -> usize {
    c.upgrades
        .iter()
        .take_while(|u| !pending(&c.name, u.from_ms))
        .count()
}

/// Why `new` cannot be taken in without a restart, if it cannot (see the module comment).
/// `pending` says which of `old`'s upgrades may still change (see [`pending_upgrade`]).
pub fn reloadable(
    old: &Config,
    new: &Config,
    pending: &dyn Fn(&str, u64) -> bool,
) -> Result<(), ReloadError> {
    if new.node.id != old.node.id {
        return Err(ReloadError::OtherNode {
            file: new.source.display().to_string(),
            theirs: new.node.id.to_string(),
            ours: old.node.id.to_string(),
        });
    }
    let mut restart = Vec::new();
    let mut differs = |name: &str, same: bool| {
        if !same {
            restart.push(name.to_owned());
        }
    };
    // Each key of the sections that take a restart named (an operator edits one), and the
    // section if a key not listed here differs.
    // Each named key of a section: `(section.key, unchanged)`.
    macro_rules! keys_of {
        ($section:literal, $old:expr, $new:expr; $($key:ident),+) => {
            [$((concat!($section, ".", stringify!($key)), $old.$key == $new.$key)),+]
        };
    }
    let (on, nn) = (&old.node, &new.node);
    let node_keys = keys_of!("node", on, nn; data_dir, max_clock_skew_ms, sync_interval_ms);
    let (oa, na) = (&old.api, &new.api);
    let api_keys = keys_of!("api", oa, na;
        listen, token_file, max_connections, request_timeout_ms, max_watch_streams,
        max_body_bytes_in_flight, verify_interval_ms, idempotency_window_ms, idempotency_max_keys);
    let (or, nr) = (&old.replication, &new.replication);
    let replication_keys = keys_of!("replication", or, nr;
        listen, tls, extra_origins, authenticate, anti_entropy_interval_ms, idle_timeout_ms);
    let commit_keys = keys_of!("commit", old.commit, new.commit; max_events);
    let (ot, nt) = (&old.retention, &new.retention);
    let retention_keys = keys_of!("retention", ot, nt;
        compact, keep_events, interval_ms, peer_absent_ms, max_held_events);
    let tracing_keys = keys_of!("tracing", old.tracing, new.tracing; otlp_endpoint);
    for (section, same, keys) in [
        ("[node]", on == nn, &node_keys[..]),
        ("[api]", oa == na, &api_keys[..]),
        ("[replication]", or == nr, &replication_keys[..]),
        ("[commit]", old.commit == new.commit, &commit_keys[..]),
        ("[retention]", ot == nt, &retention_keys[..]),
        ("[tracing]", old.tracing == new.tracing, &tracing_keys[..]),
    ] {
        let named: Vec<&str> = keys
            .iter()
            .filter(|(_, same)| !same)
            .map(|(key, _)| *key)
            .collect();
        match (same, named.is_empty()) {
            (true, _) => {}
            (false, true) => differs(section, false),
            (false, false) => named.into_iter().for_each(|key| differs(key, false)),
        }
    }
    differs(
        "limits.max_request_bytes",
        old.limits.max_request_bytes == new.limits.max_request_bytes,
    );
    differs(
        "collections.accept_undeclared",
        old.collections.accept_undeclared == new.collections.accept_undeclared,
    );
    let mut problems = Vec::new();
    let (o, n) = (&old.limits, &new.limits);
    let lowered: Vec<&str> = [
        ("max_key_bytes", n.max_key_bytes < o.max_key_bytes),
        ("max_value_bytes", n.max_value_bytes < o.max_value_bytes),
        ("max_value_depth", n.max_value_depth < o.max_value_depth),
        ("max_meta_entries", n.max_meta_entries < o.max_meta_entries),
        ("max_meta_bytes", n.max_meta_bytes < o.max_meta_bytes),
    ]
    .into_iter()
    .filter(|(_, lower)| *lower)
    .map(|(name, _)| name)
    .collect();
    if !lowered.is_empty() {
        problems.push(format!(
            "[limits] {lowered:?} lowered: a reload only raises limits; restart the node with the lower ones (a start takes them when every event the store holds fits them)"
        ));
    }
    if old.peers.is_empty() != new.peers.is_empty() {
        problems.push(
            "[[peers]]: going from no peers to some (or back) starts or stops replication, which takes a restart".to_owned(),
        );
    }
    if !restart.is_empty() {
        problems.push(format!(
            "{} changed, which takes effect only at a restart",
            restart.join(", ")
        ));
    }
    for (i, o) in old.collections.declared.iter().enumerate() {
        let Some(n) = new.collection(&o.name) else {
            problems.push(format!(
                "collection {:?} is gone (removing a collection takes a restart)",
                o.name
            ));
            continue;
        };
        let at = format!("collections.declared[{i}] ({:?})", o.name);
        let settled = settled_upgrades(o, pending);
        if n.durability != o.durability {
            problems.push(format!("{at}: durability changed (takes a restart)"));
        }
        if n.compare_on_versions != o.compare_on_versions {
            // An upgrade bringing the collection's first transforms on apply makes it compared
            // on its versions: say so, the operator may not have touched `compare`.
            let first_transforms = !o.compare_on_versions
                && n.upgrades[settled.min(n.upgrades.len())..]
                    .iter()
                    .any(|u| !u.transforms_on_apply.is_empty());
            problems.push(if first_transforms {
                format!(
                    "{at}: the upgrade added brings the collection's first transforms on apply, so anti-entropy must compare it on its versions: set compare = \"versions\" on it and restart first (every node), then add the upgrade by reload"
                )
            } else {
                format!("{at}: compare (what anti-entropy compares) changed (takes a restart)")
            });
        }
        if n.resolver != o.resolver || n.transforms_on_apply != o.transforms_on_apply {
            problems.push(format!(
                "{at}: resolver or transforms_on_apply changed in place, which would decide events already applied differently on nodes that reload at different times; keep them and add a [[collections.declared.upgrades]] entry with effective_from"
            ));
        }
        if n.upgrades.len() < settled || n.upgrades[..settled] != o.upgrades[..settled] {
            problems.push(format!(
                "{at}: upgrades already in force changed or were removed; upgrades can only be appended (one taking effect more than node.max_clock_skew_ms from now, under which this node holds no version, may still be changed or removed)"
            ));
        }
        if let Some(first_new) = n.upgrades.get(settled)
            && o.upgrades[..settled]
                .last()
                .is_some_and(|l| l.from_ms >= first_new.from_ms)
        {
            problems.push(format!("{at}: a new upgrade must come after the last one"));
        }
    }
    // A new collection whose rows hash on their versions (the store's rule) or that syncs
    // periodically (the committer's policy) takes a restart: both are set when the node starts.
    for (i, n) in new.collections.declared.iter().enumerate() {
        if old.collection(&n.name).is_none()
            && (n.compare_on_versions || n.durability != edgerep_config::Durability::Immediate)
        {
            problems.push(format!(
                "collections.declared[{i}] ({:?}) is new and is compared on its versions (transforms_on_apply or compare = \"versions\") or has durability = \"periodic\", which takes effect only at a restart",
                n.name
            ));
        }
    }
    // A plugin that decides some collection's state keeps what decides its output.
    for o in &old.collections.declared {
        // The plugins of upgrades still pending may change or go with them.
        let settled = settled_upgrades(o, pending);
        for name in o.plugins_of_epochs(1 + settled) {
            let (Some(a), Some(b)) = (old.plugin(name), new.plugin(name)) else {
                problems.push(format!(
                    "plugins.{name} is gone, but it decides collection {:?}",
                    o.name
                ));
                continue;
            };
            if (&a.sha256, a.fuel, a.memory_bytes, a.on_failure, &a.params)
                != (&b.sha256, b.fuel, b.memory_bytes, b.on_failure, &b.params)
            {
                problems.push(format!(
                    "plugins.{name}: its build, parameters or limits changed, but it decides collection {:?}: nodes reloading at different times would decide the same events differently; add the new version as a new plugin and name it in a [[collections.declared.upgrades]] entry with effective_from",
                    o.name
                ));
            }
        }
    }
    problems.sort();
    problems.dedup();
    refused_if_any(new, problems)
}

/// [`ReloadError::NeedsRestart`] naming `problems`, if there are any.
fn refused_if_any(new: &Config, problems: Vec<String>) -> Result<(), ReloadError> {
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ReloadError::NeedsRestart {
            file: new.source.display().to_string(),
            problems,
        })
    }
}

/// What is wrong with the upgrades `new` appends (past the `before` first of each collection;
/// `None`: not known, not checked) that change a collection's transforms on apply from a time
/// this node has already applied peers' events of: those events went through the transforms
/// before the upgrade and are not applied again, while a node that took the upgrade in time
/// applies the new ones to them (their values would differ for good, unseen by anti-entropy,
/// which compares such collections on their versions). This node's own writes never pass its
/// transforms on apply. A resolver upgrade needs no such check: the keys it decides are
/// resolved again. Checked by a reload, and at a start for upgrades the store's record lacks
/// (appended to the file by no reload: a reload records its upgrades before they take effect).
pub(crate) fn late_upgrades(
    store: &edgerep_store::Store,
    new: &Config,
    before: impl Fn(&str) -> Option<usize>,
) -> Result<Vec<String>, edgerep_store::StoreError> {
    let mut problems = Vec::new();
    for (i, c) in new.collections.declared.iter().enumerate() {
        let Some(before) = before(&c.name) else {
            continue;
        };
        for (j, u) in c.upgrades.iter().enumerate().skip(before) {
            let previous = match j {
                0 => &c.transforms_on_apply,
                _ => &c.upgrades[j - 1].transforms_on_apply,
            };
            if &u.transforms_on_apply == previous {
                continue;
            }
            if let Some(found) = store.version_from(&c.name, u.from_ms)? {
                // A version stamped past any effective_from an operator would pick (a peer's
                // clock far ahead, or a peer lying about time) is named with the way out: a
                // write to its key here supersedes it.
                let ahead = found.at_ms.saturating_sub(crate::committer::wall_ms())
                    > new.node.max_clock_skew_ms;
                problems.push(format!(
                    "collections.declared[{i}] ({:?}): the upgrade from {} changes transforms_on_apply, but this node already applied event {}:{} of {} to key {:?} (the newest such) under the transforms before it, and would not apply it again; {}",
                    c.name,
                    edgerep_config::format_ms(u.from_ms),
                    found.origin,
                    found.seq,
                    edgerep_config::format_ms(found.at_ms),
                    String::from_utf8_lossy(&found.key),
                    if ahead {
                        "that time is ahead of this node's clock (its origin's clock is wrong, or it lies about time): write or delete that key here (a write without a context supersedes it), then reload"
                    } else {
                        "pick an effective_from after it"
                    }
                ));
            }
        }
    }
    Ok(problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A change that takes a restart is refused naming its key, not only its section.
    #[test]
    fn a_restart_only_change_names_its_key() {
        let config_with = |node: &str, api: &str, replication: &str| {
            let text = format!(
                "[node]\nid = \"n\"\ndata_dir = \"/tmp/unused\"\n{node}\n[api]\nlisten = \"127.0.0.1:7070\"\n{api}\n\
                 [replication]\nlisten = \"127.0.0.1:7071\"\n{replication}\n"
            );
            Config::parse(&text, std::path::Path::new("/tmp/edgerep.toml")).unwrap()
        };
        let old = config_with("", "", "");
        assert!(reloadable(&old, &config_with("", "", ""), &|_, _| false).is_ok());
        // (text after [node], after [api], after [replication]; the keys named; the sections,
        // which are not)
        let otlp = "[tracing]\notlp_endpoint = \"http://127.0.0.1:4318/v1/traces\"";
        for (node, api, replication, keys, sections) in [
            (
                "sync_interval_ms = 50",
                "max_connections = 7",
                "",
                ["node.sync_interval_ms", "api.max_connections"],
                ["[node]", "[api]"],
            ),
            (
                "[retention]\nkeep_events = 5\n[commit]\nmax_events = 10",
                "",
                "",
                ["retention.keep_events", "commit.max_events"],
                ["[retention]", "[commit]"],
            ),
            (
                "",
                "",
                &format!("anti_entropy_interval_ms = 5000\n{otlp}"),
                [
                    "replication.anti_entropy_interval_ms",
                    "tracing.otlp_endpoint",
                ],
                ["[replication]", "[tracing]"],
            ),
        ] {
            let e = reloadable(&old, &config_with(node, api, replication), &|_, _| false)
                .unwrap_err()
                .to_string();
            assert!(keys.iter().all(|k| e.contains(k)), "{keys:?}: {e}");
            assert!(!sections.iter().any(|s| e.contains(s)), "{sections:?}: {e}");
        }
    }

    /// A reload of another node's config names the file and both nodes.
    #[test]
    fn another_nodes_config_is_named_with_its_file() {
        let config = |id: &str| {
            let text = format!(
                "[node]\nid = \"{id}\"\ndata_dir = \"/tmp/unused\"\n[api]\nlisten = \"127.0.0.1:7070\"\n\
                 [replication]\nlisten = \"127.0.0.1:7071\"\n"
            );
            Config::parse(&text, std::path::Path::new("/etc/edgerep/other.toml")).unwrap()
        };
        let e = reloadable(&config("n"), &config("m"), &|_, _| false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/etc/edgerep/other.toml") && e.contains("\"m\"") && e.contains("\"n\""),
            "{e}"
        );
    }
}
