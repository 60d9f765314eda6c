//! The node's configuration: one TOML file, parsed strictly.
//!
//! [`Config::load`] reads the file, [`Config::parse`] parses text. Both refuse unknown keys,
//! wrong types, malformed values and inconsistent settings, and every [`ConfigError`] names the
//! file, the key (a dotted path such as `peers[1].address`) and, when it can, the line and column.
//!
//! ```toml
//! [node]
//! id = "site-a"              # required, node id rules
//! data_dir = "data"          # required; relative to the config file's directory
//! max_clock_skew_ms = 60000  # optional, 1..=86400000 (one day)
//! sync_interval_ms = 20      # optional, 1..=60000: how often `periodic` collections sync
//!
//! [api]
//! listen = "127.0.0.1:7070"  # required, IP:port of the local HTTP API
//! token_file = "api.token"   # required unless listen is a loopback address: clients send
//!                            # `authorization: Bearer <the file's text>`
//! max_connections = 256      # optional, open connections at once
//! request_timeout_ms = 30000 # optional, a request (not a watch stream) taking longer gets 408
//! max_watch_streams = 64     # optional, open watch streams at once (< max_connections)
//! max_body_bytes_in_flight = 67108864 # optional, >= limits.max_request_bytes: request bodies
//!                            # read at once (and kept until answered), in bytes
//! verify_interval_ms = 10000 # optional, least time between two `?verify=true` status reads
//! idempotency_window_ms = 86400000 # optional, > 0: how long a write's idempotency key is kept
//! idempotency_max_keys = 100000    # optional, > 0: most idempotency keys kept (oldest go first)
//!
//! [replication]
//! listen = "127.0.0.1:7071"  # required, IP:port of the peer listener
//! extra_origins = 16         # optional: origins accepted beyond this node and its peers
//! authenticate = true        # optional: off only to measure its cost; never in production
//! anti_entropy_interval_ms = 60000 # optional: compare states with each peer this often
//!                            # (jittered; 0: only on demand, `edgerep reconcile`, and after
//!                            # a snapshot raised this node's floors)
//! idle_timeout_ms = 10000    # optional, 2000..=600000: a silent peer connection is dead after it
//!
//! [[peers]]                  # zero or more
//! id = "site-b"
//! address = "127.0.0.1:7171" # host:port
//!
//! [collections]
//! accept_undeclared = true   # optional, default false
//!
//! [[collections.declared]]   # zero or more
//! name = "orders"
//! transforms_on_ingest = ["redact"]  # plugin names, run in order before storing
//! transforms_on_apply = []   # plugin names, run on events from peers
//! resolver = "lww"           # or the name of a resolver plugin
//! durability = "immediate"   # or "periodic": acknowledge before the disk sync (see Durability)
//! compare = "values"          # or "versions": what anti-entropy compares (see CollectionConfig)
//!
//! [[collections.declared.upgrades]]  # zero or more, in time order (see `Upgrade`)
//! effective_from = "2027-01-01T00:00:00Z"  # or ms since the Unix epoch
//! resolver = "v2"            # and/or transforms_on_apply = [...]
//!
//! [plugins.redact]           # zero or more
//! path = "plugins/redact.wasm"  # relative to the config file's directory
//! sha256 = "..."             # required, 64 hex digits
//! fuel = 10000000            # optional, per call
//! memory_bytes = 16777216    # optional
//! deadline_ms = 1000         # optional, wall-clock backstop
//! on_failure = "dead-letter" # or "skip" or "halt"
//! params = { remove = "card" }
//!
//! [limits]                   # each optional, > 0
//! max_key_bytes = 1024
//! max_value_bytes = 65536
//! max_value_depth = 32        # at most 100
//! max_meta_entries = 16
//! max_meta_bytes = 4096      # metadata keys and values together
//! max_batch_events = 10000
//! max_request_bytes = 16777216
//! max_dead_letters = 100000  # past it, a transform on apply that would set one aside halts
//! max_dead_letter_bytes = 268435456  # their records together; past it, the same
//!
//! [commit]
//! max_events = 1000
//!
//! [retention]                # each optional
//! compact = true             # remove changelog entries every peer acknowledged
//! keep_events = 100000       # per origin, the newest entries kept even so
//! interval_ms = 10000        # how often to compact, 100..=3600000
//! peer_absent_ms = 604800000 # a peer unheard of this long, or connected but acknowledging
//!                            # nothing new this long while it lacks events, stops holding
//!                            # entries back (0: never)
//! max_held_events = 10000000 # per origin, the most entries kept for peers that lack them
//!                            # (a peer further behind gets a snapshot; 0: no bound)
//!
//! [tracing]                  # optional
//! otlp_endpoint = "http://127.0.0.1:4318/v1/traces"  # export spans over OTLP/HTTP (JSON)
//!
//! [authorization]            # optional; the same on every node (peers compare it)
//! site-b = ["orders"]        # origin = collections it may write; origins not listed: all
//!
//! [[revoked]]                # zero or more: a node whose certificate is refused, and whose
//! node = "site-c"            # events after `after_seq` are refused wherever they come from
//! after_seq = 1200
//! ```

mod error;
mod raw;
mod starter;
mod validate;

use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};

use edgerep_wire::event::{NodeId, check_collection_name};

pub use error::ConfigError;
pub use starter::starter_toml;

use error::{line_col, locate, render_path, tidy_message};
use raw::{RESOLVER_LWW, RawConfig};

/// Most origins one causal context may name, on every node (a cluster-wide constant, so that
/// an event one node accepts is never too large for another).
pub const MAX_CONTEXT_ENTRIES: usize = 1024;

/// The largest encoded event the limits allow: key, value and metadata at their limits, a causal
/// context of [`MAX_CONTEXT_ENTRIES`] (at most 80 bytes each: an id of up to 64 bytes and a
/// sequence number), and 4096 bytes for the fixed fields and CBOR heads.
pub fn max_event_bytes(key: usize, value: usize, meta: usize) -> usize {
    key.saturating_add(value)
        .saturating_add(meta)
        .saturating_add(MAX_CONTEXT_ENTRIES * 80)
        .saturating_add(4096)
}

/// A node's whole configuration, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it came from, absolute if the current directory could be determined.
    pub source: PathBuf,
    /// `[node]`: who this node is and where it keeps its data.
    pub node: NodeConfig,
    /// `[api]`: the local HTTP API for applications.
    pub api: ApiConfig,
    /// `[replication]`: the peer listener.
    pub replication: ReplicationConfig,
    /// `[[peers]]`: the sites this node replicates with (unique ids, none equal to `node.id`).
    pub peers: Vec<PeerConfig>,
    /// `[collections]`: which collections writes may go to.
    pub collections: CollectionsConfig,
    /// `[limits]`: bounds on what the API accepts.
    pub limits: LimitsConfig,
    /// `[commit]`: group commit.
    pub commit: CommitConfig,
    /// `[retention]`: changelog compaction.
    pub retention: RetentionConfig,
    /// `[tracing]`: where trace spans go.
    pub tracing: TracingConfig,
    /// `[plugins.NAME]` tables, sorted by name.
    pub plugins: Vec<PluginConfig>,
    /// `[authorization]`: per origin, the collections it may write (origins not listed may
    /// write every collection).
    pub authorization: std::collections::BTreeMap<NodeId, Vec<String>>,
    /// `[[revoked]]`: revoked nodes.
    pub revoked: Vec<Revoked>,
}

/// One `[[revoked]]` entry: a node whose certificate is no longer accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    /// The node.
    pub node: NodeId,
    /// Its events up to this sequence number stay valid; later ones are refused everywhere.
    pub after_seq: u64,
}

/// `[node]`.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeConfig {
    /// This node's id.
    pub id: NodeId,
    /// The data directory, already resolved against the config file's directory when the file
    /// gave a relative path.
    pub data_dir: PathBuf,
    /// Remote hybrid-clock timestamps further ahead of wall time than this do not move this
    /// node's clock (the changes themselves are applied: acceptance never depends on a node's
    /// wall clock) (1..=86400000, default 60000).
    pub max_clock_skew_ms: u64,
    /// How often writes to `periodic` collections are synced to disk, in milliseconds
    /// (1..=60000, default 20).
    pub sync_interval_ms: u64,
    /// Take writes at once, without first learning from a peer how far it holds this node's
    /// own events (`edgerep run --alone`; never from the file).
    pub alone: bool,
}

/// `[api]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiConfig {
    /// Address of the local HTTP API.
    pub listen: SocketAddr,
    /// The file holding the bearer token clients must send (required unless `listen` is a
    /// loopback address).
    pub token_file: Option<PathBuf>,
    /// Most open connections at once (> 0, default 256).
    pub max_connections: usize,
    /// A request (other than a watch stream) taking longer is answered 408 (default 30 s).
    pub request_timeout_ms: u64,
    /// Most open watch streams at once (less than `max_connections`; default 64, at most half
    /// of `max_connections`).
    pub max_watch_streams: usize,
    /// Most bytes of request bodies read at once and held until their requests are answered
    /// (default 64 MiB, at least `limits.max_request_bytes`): what many large requests at once
    /// may take of the node's memory.
    pub max_body_bytes_in_flight: usize,
    /// Least time between two `?verify=true` status reads (default 10 s).
    pub verify_interval_ms: u64,
    /// How long an idempotency key is kept after the write it came with (default 24 h).
    pub idempotency_window_ms: u64,
    /// Most idempotency keys kept; the oldest go first (default 100,000).
    pub idempotency_max_keys: u64,
}

/// `[replication]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicationConfig {
    /// Address of the peer (QUIC) listener; differs from `api.listen`.
    pub listen: SocketAddr,
    /// The node's TLS identity; required when `[[peers]]` are configured.
    pub tls: Option<TlsFiles>,
    /// Origins accepted beyond this node and its configured peers (default 16); events of
    /// further origins are refused.
    pub extra_origins: usize,
    /// Origins sign their events and every node checks the seals (default true). Off only to
    /// measure what authentication costs (`edgerep bench replicate`): every node of a cluster
    /// must agree (it is part of the policy peers compare).
    pub authenticate: bool,
    /// How often this node compares its state with each peer's (anti-entropy), jittered by up
    /// to a quarter; 0: only on demand and after a snapshot raised this node's floors (default
    /// 60 s).
    pub anti_entropy_interval_ms: u64,
    /// A connection to a peer that hears nothing for this long is taken for dead (QUIC's idle
    /// timeout; keep-alives go every second). Longer on links that drop out for a while (a
    /// cellular handover, a satellite pass): a dead connection drops what was queued on it,
    /// read again after the next. 2000..=600000, default 10000.
    pub idle_timeout_ms: u64,
}

/// `[replication]` `ca`, `cert`, `key`: the files of a node's mutual-TLS identity, resolved
/// against the config file's directory.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsFiles {
    /// The deployment CA's certificate (PEM): peers must present certificates it signed.
    pub ca: PathBuf,
    /// This node's certificate (PEM), signed by the CA, naming this node's id.
    pub cert: PathBuf,
    /// This node's private key (PEM).
    pub key: PathBuf,
}

/// One `[[peers]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerConfig {
    /// The peer's node id.
    pub id: NodeId,
    /// `host:port` of the peer's replication listener; the host may be a DNS name, an IPv4
    /// address or a bracketed IPv6 address, and the port is 1..=65535.
    pub address: String,
}

/// `[collections]`.
#[derive(Debug, Clone, PartialEq)]
pub struct CollectionsConfig {
    /// When true, any valid collection name is accepted and created on its first write; when
    /// false (the default), only declared collections are.
    pub accept_undeclared: bool,
    /// The declared collections, with unique names.
    pub declared: Vec<CollectionConfig>,
}

/// When a write to a collection is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// After its transaction is synced to disk (the default): an acknowledged write survives
    /// a crash.
    #[default]
    Immediate,
    /// After its transaction commits, before the disk sync, which happens within
    /// `node.sync_interval_ms` (like NATS JetStream's default): a crash of the node can lose
    /// the last interval of acknowledged writes. Replication still ships a node's own events
    /// only once they are synced, so no peer ever holds an event its origin lost.
    Periodic,
}

impl Durability {
    /// The name used in the config (`immediate`, `periodic`).
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Immediate => "immediate",
            Durability::Periodic => "periodic",
        }
    }
}

/// What a node does with an event when a plugin fails on it (trap, fuel, memory, deadline, or
/// an error the plugin returns).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Store the event in the dead-letter table with the reason, and go on (the default).
    DeadLetter,
    /// Drop the event, count it, and go on.
    Skip,
    /// Stop accepting writes to the collection until the node restarts, and report it.
    Halt,
}

impl FailurePolicy {
    /// The name used in the config (`dead-letter`, `skip`, `halt`).
    pub fn as_str(self) -> &'static str {
        match self {
            FailurePolicy::DeadLetter => "dead-letter",
            FailurePolicy::Skip => "skip",
            FailurePolicy::Halt => "halt",
        }
    }
}

/// One `[plugins.NAME]` table: a WebAssembly component and the budget it runs under.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginConfig {
    /// The plugin's name (the table name), used by collections to refer to it.
    pub name: String,
    /// The `.wasm` file, resolved against the config file's directory.
    pub path: PathBuf,
    /// Expected sha256 of the file, 64 lowercase hex digits; a mismatch refuses to start.
    pub sha256: String,
    /// Fuel (roughly, WebAssembly instructions) per call (default 10,000,000).
    pub fuel: u64,
    /// Most linear memory the plugin may use, in bytes (default 16 MiB).
    pub memory_bytes: usize,
    /// Wall-clock backstop per call, in milliseconds (default 1000). Fuel is the real budget;
    /// this only catches a plugin stuck in a host call.
    pub deadline_ms: u64,
    /// What happens to an event the plugin fails on.
    pub on_failure: FailurePolicy,
    /// Parameters the plugin reads through `host.param`.
    pub params: std::collections::BTreeMap<String, String>,
}

/// One `[[collections.declared]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct CollectionConfig {
    /// The collection name (valid per `check_collection_name`).
    pub name: String,
    /// Transform plugins run, in order, on events written through the API, before they are
    /// stored (each a name from `[plugins]`).
    pub transforms_on_ingest: Vec<String>,
    /// Transform plugins run, in order, on events arriving from peers, before they are applied.
    pub transforms_on_apply: Vec<String>,
    /// The conflict resolver: `"lww"` (last writer wins on the hybrid clock, ties broken by
    /// origin id) or the name of a resolver plugin from `[plugins]`.
    pub resolver: String,
    /// When writes to the collection are acknowledged.
    pub durability: Durability,
    /// Anti-entropy compares the collection on its versions only (their dots and causal
    /// contexts), not their values: values differ between nodes by design (transforms on
    /// apply). Always true with transforms on apply; `compare = "versions"` on the nodes that
    /// hold the collection without them (default: values).
    pub compare_on_versions: bool,
    /// Changes of what decides the collection's state (resolver, transforms on apply), each
    /// in force for events from its hybrid-clock time on; strictly ascending by time.
    /// `resolver` and `transforms_on_apply` above decide events before the first.
    pub upgrades: Vec<Upgrade>,
}

/// One `[[collections.declared.upgrades]]` entry, with what it leaves unchanged filled in from
/// the entry before it. Every node applies the same version to the same events, however
/// long a rollout takes: an event is decided by the upgrade in force at its hybrid-clock time,
/// a key's concurrent versions by the one in force at the newest of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade {
    /// Milliseconds since the Unix epoch (compared with an event's hybrid-clock time).
    pub from_ms: u64,
    /// The resolver from then on.
    pub resolver: String,
    /// The transforms on apply from then on.
    pub transforms_on_apply: Vec<String>,
}

impl CollectionConfig {
    /// The resolver and transforms on apply in force for an event at hybrid-clock time
    /// `physical_ms`, with the time they took effect (0: the first).
    pub fn deciding_at(&self, physical_ms: u64) -> (u64, &str, &[String]) {
        match self
            .upgrades
            .iter()
            .rev()
            .find(|u| u.from_ms <= physical_ms)
        {
            Some(u) => (u.from_ms, &u.resolver, &u.transforms_on_apply),
            None => (0, &self.resolver, &self.transforms_on_apply),
        }
    }

    /// Every (from, resolver, transforms on apply) in time order, the first from 0.
    pub fn epochs(&self) -> impl Iterator<Item = (u64, &str, &[String])> {
        std::iter::once((
            0,
            self.resolver.as_str(),
            self.transforms_on_apply.as_slice(),
        ))
        .chain(self.upgrades.iter().map(|u| {
            (
                u.from_ms,
                u.resolver.as_str(),
                u.transforms_on_apply.as_slice(),
            )
        }))
    }

    /// Whether a resolver plugin (not last-writer-wins) decides the collection's concurrent
    /// versions in some epoch: its state rows then keep resolutions.
    pub fn resolved_by_plugin(&self) -> bool {
        self.epochs()
            .any(|(_, resolver, _)| resolver != RESOLVER_LWW)
    }

    /// The plugins that decide the collection's state in some epoch (resolvers and transforms
    /// on apply), without repeats.
    pub fn deciding_plugins(&self) -> std::collections::BTreeSet<&str> {
        self.plugins_of_epochs(usize::MAX)
    }

    /// The plugins the first `epochs` of [`CollectionConfig::epochs`] name (the collection's
    /// own settings, then its upgrades in order).
    pub fn plugins_of_epochs(&self, epochs: usize) -> std::collections::BTreeSet<&str> {
        let mut out = std::collections::BTreeSet::new();
        for (_, resolver, transforms) in self.epochs().take(epochs) {
            if resolver != RESOLVER_LWW {
                out.insert(resolver);
            }
            out.extend(transforms.iter().map(String::as_str));
        }
        out
    }
}

/// A time in milliseconds since the Unix epoch as RFC 3339 text (UTC), for messages.
pub fn format_ms(ms: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{ms} ms"))
}

/// `[limits]`: every value is greater than 0, and `max_value_bytes <= max_request_bytes`.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitsConfig {
    /// Longest key, in bytes (default 1024).
    pub max_key_bytes: usize,
    /// Largest value, as the bytes of its deterministic CBOR encoding (default 65536).
    pub max_value_bytes: usize,
    /// Deepest nesting of arrays and maps in a value (default 32).
    pub max_value_depth: usize,
    /// Most metadata entries on one event (default 16).
    pub max_meta_entries: usize,
    /// Most metadata bytes on one event, keys and values together (default 4096).
    pub max_meta_bytes: usize,
    /// Most events in one API request (default 10000).
    pub max_batch_events: usize,
    /// Largest HTTP request body, in bytes (default 16 MiB).
    pub max_request_bytes: usize,
    /// Most dead letters the node keeps (default 100000): past it, a transform on apply whose
    /// policy would set a peer's event aside halts its collection instead.
    pub max_dead_letters: u64,
    /// Most bytes of dead letters the node keeps, their records together (default 256 MiB):
    /// past it, the same as past `max_dead_letters`. A dead letter holds its event, so a count
    /// alone would let large events fill the disk.
    pub max_dead_letter_bytes: u64,
}

/// `[commit]`: group commit.
#[derive(Debug, Clone, PartialEq)]
pub struct CommitConfig {
    /// Most events in one durable transaction (> 0, default 1000).
    pub max_events: usize,
}

/// `[tracing]`: the spans of writes (the origin's commit, each peer's apply) go to an
/// OpenTelemetry collector when an endpoint is set; the W3C trace context of a write travels
/// in its event's metadata either way.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TracingConfig {
    /// The OTLP/HTTP traces endpoint (`http://` only: the exporter has no TLS; e.g.
    /// `http://127.0.0.1:4318/v1/traces`); `None`: no spans are exported.
    pub otlp_endpoint: Option<String>,
}

/// `[retention]`: which changelog entries a node may remove. A peer that needs removed entries
/// (new, or back after `peer_absent_ms`) is brought up to date from a snapshot of the state.
#[derive(Debug, Clone, PartialEq)]
pub struct RetentionConfig {
    /// Remove entries every peer acknowledged (default true). Refused with transforms on
    /// apply: this node's state is then not the events', so it must not be sent as a snapshot.
    pub compact: bool,
    /// Per origin, the newest entries kept even when acknowledged (default 100000), for
    /// changelog and watch readers.
    pub keep_events: u64,
    /// How often to compact (default 10 s).
    pub interval_ms: u64,
    /// A peer not heard from for this long no longer holds entries back (default 7 days;
    /// `None`: every configured peer always does).
    pub peer_absent_ms: Option<u64>,
    /// Per origin, the most entries kept for peers that lack them (default 10,000,000; `None`:
    /// no bound): a peer further behind (one that acknowledges slowly, or not at all) gets a
    /// snapshot instead, so its pace does not decide this node's disk use.
    pub max_held_events: Option<u64>,
}

/// The config file at `path` as text; an error names the file.
fn read_text(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| {
        ConfigError::file(
            path,
            format!("cannot read config file: {}", tidy_message(&e.to_string())),
        )
    })
}

/// Names a config file's contents: lowercase hex BLAKE3 of its bytes (what `edgerep reload`
/// checked, compared with what the node reads).
pub fn file_digest(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

impl Config {
    /// Reads and parses the configuration file at `path`. A file that cannot be read is a
    /// [`ConfigError`] naming it, like every other error.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::parse(&read_text(path)?, path)
    }

    /// The text of the config file at `path` for a node that runs: read twice, `settle` apart,
    /// and refused if the two reads differ (an editor or a script writing it in place at that
    /// moment: a file cut short can parse, and drop every peer after the cut). Parse it with
    /// [`Config::parse`]; [`file_digest`] names it.
    pub fn read_settled(path: &Path, settle: std::time::Duration) -> Result<String, ConfigError> {
        let text = read_text(path)?;
        std::thread::sleep(settle);
        if read_text(path)? != text {
            return Err(ConfigError::file(
                path,
                "the file changed while it was read (is it being written?): nothing was taken; \
                 write a config file whole elsewhere and rename it over this one",
            ));
        }
        Ok(text)
    }

    /// Parses configuration text. `path` is the file it came from: errors name it, and a
    /// relative `node.data_dir` is resolved against its directory.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw = deserialize(text, path)?;
        validate::validate(&raw).map_err(|(segs, message)| ConfigError {
            file: path.to_path_buf(),
            key: Some(render_path(&segs)),
            line_col: locate(text, &segs).map(|span| line_col(text, span.start)),
            message,
        })?;
        let source = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let data_dir = resolve_data_dir(&source, &raw.node.data_dir);
        let plugins = raw
            .plugins
            .into_iter()
            .map(|(name, p)| PluginConfig {
                name,
                path: resolve_data_dir(&source, &p.path),
                sha256: p.sha256,
                fuel: p.fuel,
                memory_bytes: p.memory_bytes,
                deadline_ms: p.deadline_ms,
                on_failure: match p.on_failure {
                    raw::RawFailurePolicy::DeadLetter => FailurePolicy::DeadLetter,
                    raw::RawFailurePolicy::Skip => FailurePolicy::Skip,
                    raw::RawFailurePolicy::Halt => FailurePolicy::Halt,
                },
                params: p.params,
            })
            .collect();
        Ok(Config {
            node: NodeConfig {
                id: raw.node.id,
                data_dir,
                max_clock_skew_ms: raw.node.max_clock_skew_ms,
                sync_interval_ms: raw.node.sync_interval_ms,
                alone: false,
            },
            source: source.clone(),
            api: ApiConfig {
                listen: raw.api.listen,
                token_file: raw
                    .api
                    .token_file
                    .as_deref()
                    .map(|f| resolve_data_dir(&source, f)),
                max_connections: raw.api.max_connections,
                request_timeout_ms: raw.api.request_timeout_ms,
                max_watch_streams: raw
                    .api
                    .max_watch_streams
                    .unwrap_or_else(|| raw::default_max_watch_streams(raw.api.max_connections)),
                max_body_bytes_in_flight: raw.api.max_body_bytes_in_flight,
                verify_interval_ms: raw.api.verify_interval_ms,
                idempotency_window_ms: raw.api.idempotency_window_ms,
                idempotency_max_keys: raw.api.idempotency_max_keys,
            },
            replication: ReplicationConfig {
                listen: raw.replication.listen,
                tls: match (
                    &raw.replication.ca,
                    &raw.replication.cert,
                    &raw.replication.key,
                ) {
                    (Some(ca), Some(cert), Some(key)) => Some(TlsFiles {
                        ca: resolve_data_dir(&source, ca),
                        cert: resolve_data_dir(&source, cert),
                        key: resolve_data_dir(&source, key),
                    }),
                    _ => None,
                },
                extra_origins: raw.replication.extra_origins,
                authenticate: raw.replication.authenticate,
                anti_entropy_interval_ms: raw.replication.anti_entropy_interval_ms,
                idle_timeout_ms: raw.replication.idle_timeout_ms,
            },
            peers: raw
                .peers
                .into_iter()
                .map(|p| PeerConfig {
                    id: p.id,
                    address: p.address,
                })
                .collect(),
            collections: CollectionsConfig {
                accept_undeclared: raw.collections.accept_undeclared,
                declared: raw
                    .collections
                    .declared
                    .into_iter()
                    .map(|c| CollectionConfig {
                        compare_on_versions: !c.transforms_on_apply.is_empty()
                            || c.upgrades.iter().any(|u| {
                                u.transforms_on_apply
                                    .as_ref()
                                    .is_some_and(|t| !t.is_empty())
                            })
                            || c.compare == Some(raw::RawCompare::Versions),
                        upgrades: upgrades(&c),
                        name: c.name,
                        transforms_on_ingest: c.transforms_on_ingest,
                        transforms_on_apply: c.transforms_on_apply,
                        resolver: c.resolver,
                        durability: match c.durability {
                            raw::RawDurability::Immediate => Durability::Immediate,
                            raw::RawDurability::Periodic => Durability::Periodic,
                        },
                    })
                    .collect(),
            },
            limits: LimitsConfig {
                max_key_bytes: raw.limits.max_key_bytes,
                max_value_bytes: raw.limits.max_value_bytes,
                max_value_depth: raw.limits.max_value_depth,
                max_meta_entries: raw.limits.max_meta_entries,
                max_meta_bytes: raw.limits.max_meta_bytes,
                max_batch_events: raw.limits.max_batch_events,
                max_request_bytes: raw.limits.max_request_bytes,
                max_dead_letters: raw.limits.max_dead_letters,
                max_dead_letter_bytes: raw.limits.max_dead_letter_bytes,
            },
            commit: CommitConfig {
                max_events: raw.commit.max_events,
            },
            tracing: TracingConfig {
                otlp_endpoint: raw.tracing.otlp_endpoint.clone(),
            },
            retention: RetentionConfig {
                compact: raw.retention.compact,
                keep_events: raw.retention.keep_events,
                interval_ms: raw.retention.interval_ms,
                peer_absent_ms: (raw.retention.peer_absent_ms > 0)
                    .then_some(raw.retention.peer_absent_ms),
                max_held_events: (raw.retention.max_held_events > 0)
                    .then_some(raw.retention.max_held_events),
            },
            plugins,
            authorization: raw
                .authorization
                .into_iter()
                .filter_map(|(origin, collections)| {
                    NodeId::parse(&origin).ok().map(|o| (o, collections))
                })
                .collect(),
            revoked: raw
                .revoked
                .into_iter()
                .map(|r| Revoked {
                    node: r.node,
                    after_seq: r.after_seq.unwrap_or_default(),
                })
                .collect(),
        })
    }

    /// Most origins this node accepts events from: itself, its peers, and
    /// `replication.extra_origins`.
    pub fn max_origins(&self) -> usize {
        1 + self.peers.len() + self.replication.extra_origins
    }

    /// Why event `seq` of `origin` is refused by `[[revoked]]`, if it is.
    pub fn revocation(&self, origin: &NodeId, seq: u64) -> Option<String> {
        let r = self
            .revoked
            .iter()
            .find(|r| r.node == *origin && seq > r.after_seq)?;
        Some(format!(
            "node {:?} is revoked ([[revoked]] after_seq = {}): its event {seq} is refused",
            origin.as_str(),
            r.after_seq
        ))
    }

    /// Whether `origin` may write to `collection` by `[authorization]`: Err names the rule.
    pub fn write_allowed(&self, origin: &NodeId, collection: &str) -> Result<(), NotAuthorized> {
        match self.authorization.get(origin) {
            Some(allowed) if !allowed.iter().any(|c| c == collection) => Err(NotAuthorized {
                origin: origin.clone(),
                collection: collection.to_owned(),
                allowed: allowed.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// Whether `node` is revoked (its certificate is refused).
    pub fn is_revoked(&self, node: &NodeId) -> bool {
        self.revoked.iter().any(|r| r.node == *node)
    }

    /// Whether writes to collection `name` are accepted: Ok if it is declared, or if
    /// `collections.accept_undeclared` is true and `name` is a valid collection name; otherwise
    /// Err with a message saying why.
    pub fn check_collection(&self, name: &str) -> Result<(), CollectionRefused> {
        if self.collection(name).is_some() {
            return Ok(());
        }
        check_collection_name(name)?;
        if self.collections.accept_undeclared {
            Ok(())
        } else {
            Err(CollectionRefused::Undeclared {
                name: name.to_owned(),
                file: self.source.clone(),
            })
        }
    }

    /// The plugin called `name`, if any.
    pub fn plugin(&self, name: &str) -> Option<&PluginConfig> {
        self.plugins.iter().find(|p| p.name == name)
    }

    /// The plugins no declared collection names (as a transform or resolver, in any epoch):
    /// they load and never run, the likely sign of a forgotten or misspelled name. (A plugin
    /// named `lww` is never a resolver: `resolver = "lww"` is the built-in last-writer-wins.)
    pub fn unused_plugins(&self) -> Vec<&str> {
        let used = |name: &str| {
            self.collections.declared.iter().any(|c| {
                c.transforms_on_ingest.iter().any(|t| t == name)
                    || c.epochs().any(|(_, resolver, apply)| {
                        (resolver == name && resolver != RESOLVER_LWW)
                            || apply.iter().any(|t| t == name)
                    })
            })
        };
        self.plugins
            .iter()
            .map(|p| p.name.as_str())
            .filter(|n| !used(n))
            .collect()
    }

    /// The declared collection called `name`, if any.
    pub fn collection(&self, name: &str) -> Option<&CollectionConfig> {
        self.collections.declared.iter().find(|c| c.name == name)
    }
}

/// An origin that `[authorization]` does not let write a collection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "origin {:?} may not write collection {collection:?} ([authorization] {origin} = {allowed:?})",
    origin.as_str()
)]
pub struct NotAuthorized {
    /// The origin.
    pub origin: NodeId,
    /// The collection it wrote.
    pub collection: String,
    /// The collections it may write.
    pub allowed: Vec<String>,
}

/// Why the config does not accept writes to a collection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CollectionRefused {
    /// Not a valid collection name.
    #[error(transparent)]
    BadName(#[from] edgerep_wire::event::EventError),
    /// Valid, but not declared, and undeclared collections are not accepted.
    #[error(
        "collection {name:?} is not declared in {} and collections.accept_undeclared is false",
        file.display()
    )]
    Undeclared {
        /// The collection.
        name: String,
        /// The config file.
        file: PathBuf,
    },
}

/// Runs serde over the text, turning TOML and serde errors into [`ConfigError`]s with the key
/// path and position.
fn deserialize(text: &str, path: &Path) -> Result<RawConfig, ConfigError> {
    let to_error = |key: Option<String>, e: &toml::de::Error| ConfigError {
        file: path.to_path_buf(),
        key,
        line_col: e.span().map(|span| line_col(text, span.start)),
        message: tidy_message(e.message()),
    };
    let de = toml::Deserializer::parse(text).map_err(|e| to_error(None, &e))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = error_key(&e.path().to_string(), e.inner().message());
        let mut error = to_error(key, e.inner());
        if let Some(message) = key_message(&error.message) {
            let missing = error.message.starts_with("missing field");
            if missing
                && error
                    .key
                    .as_deref()
                    .is_some_and(|k| !k.contains(['.', '[']))
            {
                // A missing top-level table: the span is the whole document, which says nothing.
                error.line_col = None;
            }
            error.message = message;
        }
        error
    })
}

/// Serde speaks of fields; the file has keys. Rewords "missing field `x`" and "unknown field
/// `x`, expected ..." (the key itself is already named by the error), or None for other
/// messages.
fn key_message(message: &str) -> Option<String> {
    if message.starts_with("missing field `") {
        return Some("required key is missing".to_owned());
    }
    let rest = message.strip_prefix("unknown field `")?;
    let (field, expected) = rest.split_once('`')?;
    Some(match expected.strip_prefix(", ") {
        Some(hint) => format!("unknown key `{field}`; {hint}"),
        None => format!("unknown key `{field}`{expected}"),
    })
}

/// The key to blame for a serde error at `path` (as `serde_path_to_error` renders it, `.` for
/// the root). For a missing field the path is the enclosing table, so the field named in the
/// message is appended (an unknown field is already the last segment of the path).
fn error_key(path: &str, message: &str) -> Option<String> {
    let path = if path == "." { "" } else { path };
    let field = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split_once('`'))
        .map(|(field, _)| field);
    let key = match field {
        Some(field) if path.is_empty() => field.to_owned(),
        Some(field) => format!("{path}.{field}"),
        None => path.to_owned(),
    };
    (!key.is_empty()).then_some(key)
}

/// Resolves a path from the config (`data_dir`, a plugin's `path`) against the directory of the
/// config file `source` unless it is absolute, dropping `.` components.
fn resolve_data_dir(source: &Path, data_dir: &str) -> PathBuf {
    let data_dir = Path::new(data_dir);
    let joined = if data_dir.is_absolute() {
        data_dir.to_path_buf()
    } else {
        source.parent().unwrap_or(Path::new("")).join(data_dir)
    };
    joined
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}

/// A collection's upgrades with what each leaves unchanged filled in (the config was
/// validated: every time parses).
fn upgrades(c: &raw::RawCollection) -> Vec<Upgrade> {
    let mut resolver = c.resolver.clone();
    let mut transforms = c.transforms_on_apply.clone();
    c.upgrades
        .iter()
        .map(|u| {
            if let Some(r) = &u.resolver {
                resolver = r.clone();
            }
            if let Some(t) = &u.transforms_on_apply {
                transforms = t.clone();
            }
            Upgrade {
                from_ms: u.effective_from.millis().unwrap_or_default(),
                resolver: resolver.clone(),
                transforms_on_apply: transforms.clone(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_key_appends_missing_fields() {
        assert_eq!(
            error_key("x", "unknown field `x`, expected one of `a`"),
            Some("x".into())
        );
        assert_eq!(error_key(".", "missing field `node`"), Some("node".into()));
        assert_eq!(
            error_key("node", "missing field `id`"),
            Some("node.id".into())
        );
        assert_eq!(
            error_key("api.listen", "invalid type"),
            Some("api.listen".into())
        );
        assert_eq!(error_key(".", "something"), None);
    }

    #[test]
    fn serde_messages_speak_of_keys() {
        assert_eq!(
            key_message("unknown field `x`, expected one of `a`, `b`").as_deref(),
            Some("unknown key `x`; expected one of `a`, `b`")
        );
        assert_eq!(
            key_message("unknown field `x`, there are no fields").as_deref(),
            Some("unknown key `x`; there are no fields")
        );
        assert_eq!(
            key_message("missing field `id`").as_deref(),
            Some("required key is missing")
        );
        assert_eq!(key_message("invalid type"), None);
    }

    #[test]
    fn data_dir_resolution() {
        let source = Path::new("/etc/edgerep/edgerep.toml");
        assert_eq!(
            resolve_data_dir(source, "data"),
            Path::new("/etc/edgerep/data")
        );
        assert_eq!(
            resolve_data_dir(source, "./data"),
            Path::new("/etc/edgerep/data")
        );
        assert_eq!(
            resolve_data_dir(source, "../d"),
            Path::new("/etc/edgerep/../d")
        );
        assert_eq!(
            resolve_data_dir(source, "/var/lib/x"),
            Path::new("/var/lib/x")
        );
    }
}
