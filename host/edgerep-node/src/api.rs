//! The local HTTP API for applications at the site (loopback by default).
//!
//! | method and path | what |
//! |---|---|
//! | `PUT /v1/kv/{collection}/{key}` | write the body (JSON, or CBOR with `content-type: application/cbor`) |
//! | `DELETE /v1/kv/{collection}/{key}` | delete the key |
//! | `GET /v1/kv/{collection}/{key}` | the value (JSON, or CBOR with `accept: application/cbor`); `?versions=true` lists every concurrent version (404 when the key has none) |
//! | `POST /v1/batch` | several writes, committed all or nothing (except writes a transform plugin fails on: those are left out, dead-lettered by default, and listed under `rejected`) |
//! | `GET /v1/scan/{collection}?prefix=&start=&end=&after=&limit=` | one page of live keys, with the cursor of the next (`next`, or `next_base64` for a key that is not UTF-8; each bound also as `*_base64`) |
//! | `GET /v1/watch?after=N&collection=&follow=&limit=` | the changes after feed position N, one JSON object a line, resumable |
//! | `GET /v1/changelog/{origin}?after=N&limit=` | the events of one origin after sequence N (this node's own once synced) |
//! | `GET /v1/status?verify=true` | node status, state digest, plugin metrics; `verify` rechecks the store |
//! | `GET /v1/dead-letters?after=&limit=` | events plugins failed on, with the reason |
//! | `GET /v1/dead-letters/{id}` | one dead letter in full |
//! | `DELETE /v1/dead-letters/{id}` | drop a dead letter for good |
//! | `POST /v1/dead-letters/{id}/replay` | run it through the current plugins again; on success it is committed and removed, in one transaction |
//! | `GET /metrics` | the status as OpenMetrics text, for Prometheus |
//! | `GET /v1/disagreements?after=&limit=` | keys this node and a peer resolved differently over the same versions (both then hold the last-writer-wins default) |
//!
//! Keys are path segments, percent-decoded to bytes, so any byte string can be a key.
//! Writes are answered only after they are durable. Every refusal is a 4xx with
//! `{"error": message, "kind": kind}` and writes nothing.
//! Changelog retention removes old entries (see `[retention]`): reading a changelog or the watch
//! feed from below what is kept is answered 410 `compacted`, naming where reading can resume
//! (for watch: after a read of the state).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Extension, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use edgerep_config::Config;
use edgerep_store::idempotency::Receipt;
use edgerep_store::{Committed, LocalWrite, ScanRange, Store, Versions};
use edgerep_wire::event::{Event, Op};
use serde::Deserialize;
use serde_json::{Value as Json, json};
use tokio::sync::watch;

use crate::committer::{CommitError, Committer};
use crate::idempotency;
use crate::ingest;
use crate::request::{self, Format};
use crate::trace::{ClientTrace, TRACEPARENT};

/// Everything the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The node's config, as last (re)loaded.
    pub reloader: Arc<crate::reload::Reloader>,
    /// The store (read directly; written only through the committer).
    pub store: Arc<Store>,
    /// The group committer.
    pub committer: Committer,
    /// The plugins and their wiring to collections.
    pub pipeline: Arc<crate::pipeline::Pipeline>,
    /// Last feed position, updated after each commit.
    pub feed: watch::Receiver<u64>,
    /// Turns true when the node shuts down (ends watch streams).
    pub shutdown: watch::Receiver<bool>,
    /// Where the API listens.
    pub api_addr: SocketAddr,
    /// When the node started.
    pub started: Instant,
    /// Replication, when peers are configured.
    pub replication: Option<Arc<crate::replication::Replication>>,
    /// Guards of an API reachable beyond loopback (token, limits).
    pub guard: Arc<Guard>,
    /// Idempotency keys answered, refused.
    pub idempotency: Arc<crate::idempotency::Counters>,
    /// Idempotency keys of requests running now.
    pub claims: Arc<crate::idempotency::Claims>,
    /// Trace spans of writes (see `trace`).
    pub traces: Arc<crate::trace::Traces>,
    /// Commit durations and per-collection counts (see `metrics`).
    pub commit_metrics: Arc<crate::metrics::CommitMetrics>,
    /// Requests whose transforms on ingest may run at once (see [`plugin_runs`]).
    pub plugin_runs: Arc<tokio::sync::Semaphore>,
    /// This run's feed generation and the feed position it opened at (see [`FeedRun`]).
    pub feed_run: FeedRun,
}

/// Which run of the node gave a feed position. Each run opens the store at the feed's durable
/// end; a position a run gave beyond the position some later run opened at may have been
/// numbered by history that later run does not hold (a restore from a backup, or a crash that
/// lost periodic commits), and the later run numbers other events with it. Watch lines carry
/// `generation` (and the answer a `feed-generation` header), and a client resuming with the
/// `generation` of an earlier run and a cursor past the lowest position any later run opened at
/// is told to read the state again (410 `feed_renumbered`).
#[derive(Debug, Clone)]
pub struct FeedRun {
    /// Random per run of the process.
    pub generation: u64,
    /// The runs the store recorded (generation, feed position opened at), oldest first, this
    /// one last.
    runs: Arc<Vec<(u64, u64)>>,
}

impl FeedRun {
    /// A new run, recorded in the store: it opened at feed position `opened_at`.
    pub fn start(
        store: &edgerep_store::StoreWriter,
        opened_at: u64,
    ) -> Result<FeedRun, edgerep_store::StoreError> {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(opened_at);
        // Never 0, so a client's `generation=0` is no run's.
        let generation = h.finish().max(1);
        let runs = store.record_feed_run(generation, opened_at)?;
        Ok(FeedRun {
            generation,
            runs: Arc::new(runs),
        })
    }

    /// Where a cursor given by run `generation` stops being good: the lowest position a later
    /// run opened at (`None`: it is good, this run's own). A generation no kept run has (older
    /// than those kept, or made up) is judged against every kept run.
    pub fn good_up_to(&self, generation: u64) -> Option<u64> {
        let later = match self.runs.iter().position(|(g, _)| *g == generation) {
            Some(i) => &self.runs[i + 1..],
            None => &self.runs[..],
        };
        later.iter().map(|(_, opened_at)| *opened_at).min()
    }
}

/// How many requests' transforms on ingest may run at once: plugin calls are CPU work, so more
/// than twice the cores gains nothing, and each holds an instance of up to `memory_bytes` (256
/// connections at once held 256 of them). Further requests wait their turn (within the
/// request timeout).
pub fn plugin_runs() -> tokio::sync::Semaphore {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    tokio::sync::Semaphore::new(2 * cores.max(1))
}

impl AppState {
    /// The config in force.
    pub fn config(&self) -> Arc<Config> {
        self.reloader.config()
    }

    /// The ingest step with the pipeline, committer and config of this node.
    pub(crate) fn ingest_step(&self) -> ingest::Ingest<'_> {
        ingest::Ingest {
            pipeline: &self.pipeline,
            store: &self.store,
            dead_letters: self.committer.dead_letter_budget(),
            config: self.config(),
            clock_last_ms: self.committer.clock_last_ms(),
        }
    }
}

/// What protects the API: the bearer token (required when it listens beyond loopback), the
/// number of open watch streams, and how often the store may be verified.
#[derive(Debug)]
pub struct Guard {
    /// The token clients must send (`authorization: Bearer TOKEN`), if one is configured; a
    /// reload reads its file again (a token is rotated by writing the file and reloading).
    token: std::sync::RwLock<Option<Arc<str>>>,
    /// Counts token changes: a watch stream ends when the token it was opened with changes.
    token_changes: watch::Sender<u64>,
    /// Requests running on in tasks of their own (see `detached`), at most `max_connections`.
    detached: Arc<tokio::sync::Semaphore>,
    watch_streams: Arc<tokio::sync::Semaphore>,
    max_watch_streams: usize,
    /// Room for request bodies, in KiB (`api.max_body_bytes_in_flight`; see `body_room`).
    bodies: Arc<tokio::sync::Semaphore>,
    max_body_bytes_in_flight: usize,
    max_request_bytes: usize,
    request_timeout: std::time::Duration,
    /// Least time between two verifications (0 on a loopback API).
    verify_interval: std::time::Duration,
    last_verify: std::sync::Mutex<Option<Instant>>,
    /// Held by the verification running (one at a time, whatever the interval): each walks the
    /// whole store in one read transaction, and one whose client left runs on to its end, so
    /// requests that time out or hang up could otherwise pile them up.
    verifying: Arc<tokio::sync::Mutex<()>>,
}

impl Guard {
    /// The token `config`'s `api.token_file` holds, if it names one.
    pub(crate) fn read_token(config: &Config) -> Result<Option<Arc<str>>, String> {
        let Some(path) = &config.api.token_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("api.token_file: cannot read {}: {e}", path.display()))?;
        let token = text.trim();
        if !token.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
            return Err(format!(
                "api.token_file: {} holds characters a header cannot carry (visible ASCII and spaces only)",
                path.display()
            ));
        }
        if token.len() < 16 {
            return Err(format!(
                "api.token_file: {} holds a token of {} characters; use at least 16",
                path.display(),
                token.len()
            ));
        }
        Ok(Some(token.into()))
    }

    /// Takes in the token a reload read (the file's path is unchanged: that takes a restart).
    pub(crate) fn set_token(&self, token: Option<Arc<str>>) {
        let mut held = self.token.write().unwrap_or_else(|e| e.into_inner());
        if *held != token {
            *held = token;
            self.token_changes.send_modify(|n| *n += 1);
        }
    }

    fn token(&self) -> Option<Arc<str>> {
        self.token.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The guards `config` asks for; reads the token file.
    pub fn from_config(config: &Config) -> Result<Guard, String> {
        let api = &config.api;
        let token = Guard::read_token(config)?;
        Ok(Guard {
            token: std::sync::RwLock::new(token),
            token_changes: watch::channel(0).0,
            detached: Arc::new(tokio::sync::Semaphore::new(api.max_connections)),
            watch_streams: Arc::new(tokio::sync::Semaphore::new(api.max_watch_streams)),
            max_watch_streams: api.max_watch_streams,
            bodies: Arc::new(tokio::sync::Semaphore::new(
                api.max_body_bytes_in_flight.div_ceil(1024),
            )),
            max_body_bytes_in_flight: api.max_body_bytes_in_flight,
            max_request_bytes: config.limits.max_request_bytes,
            request_timeout: std::time::Duration::from_millis(api.request_timeout_ms),
            verify_interval: if api.listen.ip().is_loopback() {
                std::time::Duration::ZERO
            } else {
                std::time::Duration::from_millis(api.verify_interval_ms)
            },
            last_verify: std::sync::Mutex::new(None),
            verifying: Arc::default(),
        })
    }

    /// What a web page in the operator's browser must not do to a node that trusts loopback
    /// (no token): send it a request from another origin (`Origin` is not this API's own: a
    /// form or `fetch` posting writes, replays or reloads; or `Sec-Fetch-Site` says another
    /// site or origin: a GET from an image or a script, which sends no Origin, starting a full
    /// verify or holding watch streams), or reach it under another name than a loopback one
    /// (`Host`: DNS rebinding, which would also let the page read).
    fn browser_refusal(&self, headers: &HeaderMap) -> Option<ApiError> {
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
        if self.token().is_none()
            && let Some(host) = host
            && !loopback_name(host)
        {
            return Some(ApiError::new(
                StatusCode::FORBIDDEN,
                "bad_host",
                format!(
                    "Host {host:?} is not a loopback name: without api.token_file this API answers only requests addressed to a loopback address, localhost or a one-label name (a web page could reach it under a name of its own by DNS rebinding)"
                ),
            ));
        }
        // A browser says where a request comes from even when it sends no Origin (a GET from
        // an image or a script of another site): only this page's own requests, and ones the
        // operator typed, pass.
        if let Some(site) = headers.get("sec-fetch-site")
            && !matches!(site.as_bytes(), b"same-origin" | b"none")
        {
            return Some(ApiError::new(
                StatusCode::FORBIDDEN,
                "cross_origin",
                format!(
                    "a request a web page of another origin made (Sec-Fetch-Site: {}) is refused: only this node's own status page may use its API from a browser",
                    String::from_utf8_lossy(site.as_bytes())
                ),
            ));
        }
        let origin = headers.get(header::ORIGIN)?;
        let own = origin
            .to_str()
            .ok()
            .and_then(|o| o.split_once("://"))
            // `https`: the page served through a TLS proxy in front of the node.
            .is_some_and(|(scheme, rest)| matches!(scheme, "http" | "https") && Some(rest) == host);
        (!own).then(|| {
            ApiError::new(
                StatusCode::FORBIDDEN,
                "cross_origin",
                format!(
                    "a request from a web page of another origin ({}) is refused: only this node's own status page may use its API from a browser",
                    String::from_utf8_lossy(origin.as_bytes())
                ),
            )
        })
    }

    /// Whether the request carries the token (always true without one).
    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(token) = self.token() else {
            return true;
        };
        // The scheme's name is case-insensitive (RFC 9110, 11.1).
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then_some(token)
            })
            .unwrap_or("");
        // Compared as hashes (blake3's equality runs in constant time): the time taken depends
        // neither on where they differ nor on the token's length.
        blake3::hash(given.as_bytes()) == blake3::hash(token.as_bytes())
    }

    /// Takes the right to verify the store now, or says how long to wait.
    fn verify_slot(&self) -> Result<(), std::time::Duration> {
        if self.verify_interval.is_zero() {
            return Ok(());
        }
        let mut last = self.last_verify.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(at) = *last {
            let since = at.elapsed();
            if since < self.verify_interval {
                return Err(self.verify_interval.saturating_sub(since));
            }
        }
        *last = Some(Instant::now());
        Ok(())
    }
}

/// Refuses requests without the token, and answers 408 to a request whose answer takes longer
/// than `api.request_timeout_ms` to start (a watch stream's body may then run on).
async fn guard(
    State(app): Shared,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(refused) = app.guard.browser_refusal(req.headers()) {
        return refused.into_response();
    }
    if !app.guard.authorized(req.headers()) {
        let mut resp = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this API needs `authorization: Bearer TOKEN` with the token from api.token_file"
                .into(),
        )
        .into_response();
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return resp;
    }
    let claimed = app.guard.body_claim(&req);
    let room = match app.guard.body_room(claimed).await {
        Ok(room) => BodyRoom {
            _share: room.map(Arc::new),
        },
        Err(e) => return e.into_response(),
    };
    // The handler takes a share of the room into the task that may outlive this answer (see
    // `detached`): what it holds of the body is counted until that task ends.
    let mut req = req;
    req.extensions_mut().insert(room.clone());
    let timeout = app.guard.request_timeout;
    match tokio::time::timeout(timeout, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "timeout",
            format!(
                "no answer within {} ms (api.request_timeout_ms); the request may still take effect: retry it with the same idempotency-key header, or without one read the key first",
                timeout.as_millis()
            ),
        )
        .into_response(),
    }
}

type Shared = State<Arc<AppState>>;

/// A request's share of the room for bodies (see [`Guard::body_room`]): the room is given back
/// when every share is dropped.
#[derive(Clone)]
struct BodyRoom {
    _share: Option<Arc<tokio::sync::OwnedSemaphorePermit>>,
}

/// Longest a request waits for room for its body (see [`Guard::body_room`]).
const BODY_ROOM_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl Guard {
    /// The bytes of body `req` may carry: what its `content-length` says; with a chunked body
    /// (no length given), the most a request may carry. 0 for a method without a body, for
    /// none, and for one over the limit (refused 413 unread).
    fn body_claim(&self, req: &axum::extract::Request) -> usize {
        use axum::http::Method;
        if matches!(
            *req.method(),
            Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS
        ) {
            return 0;
        }
        let headers = req.headers();
        match headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        {
            Some(n) if n > self.max_request_bytes => 0,
            Some(n) => n,
            None if headers.contains_key(header::TRANSFER_ENCODING) => self.max_request_bytes,
            None => 0,
        }
    }

    /// Room for a body of `claimed` bytes among the bodies being read or worked on, held until
    /// its request is answered. Many large requests at once then wait their turn instead of
    /// taking the node's memory (64 batches of 16 MB at once took 1.2 GB). `None` for no body.
    async fn body_room(
        &self,
        claimed: usize,
    ) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, ApiError> {
        if claimed == 0 {
            return Ok(None);
        }
        // At most the whole room (the config check keeps a largest request within it).
        let kib = u32::try_from(claimed.div_ceil(1024)).unwrap_or(u32::MAX);
        let wait = BODY_ROOM_WAIT.min(self.request_timeout);
        match tokio::time::timeout(wait, self.bodies.clone().acquire_many_owned(kib)).await {
            Ok(Ok(room)) => Ok(Some(room)),
            _ => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_requests",
                format!(
                    "other requests' bodies fill the room for them (api.max_body_bytes_in_flight, {} bytes); this one ({claimed} bytes{}) waited {} ms: nothing was written, retry",
                    self.max_body_bytes_in_flight,
                    if claimed == self.max_request_bytes {
                        ", as much as limits.max_request_bytes allows: a body sent without content-length (chunked) is counted so; send content-length"
                    } else {
                        ""
                    },
                    wait.as_millis()
                ),
            )),
        }
    }
}

/// Whether `host` (a Host header: name or address, and maybe a port) is one a web page cannot
/// rebind: a loopback address, `localhost` (or a name under it), or a name of one label (this
/// machine's own name; public DNS names, which a page's owner controls, have dots).
fn loopback_name(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    match name.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => name == "localhost" || name.ends_with(".localhost") || !name.contains('.'),
    }
}

/// A refusal or failure, sent as `{"error": ..., "kind": ...}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    /// More fields for the answer's JSON object (e.g. which plugin failed).
    detail: Option<Json>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, kind: &'static str, message: String) -> ApiError {
        ApiError {
            status,
            kind,
            message,
            detail: None,
        }
    }
    /// 422: a plugin failed on the write (the detail says which, how, and where it was kept).
    pub(crate) fn plugin_failed(message: String, detail: Json) -> ApiError {
        ApiError {
            detail: Some(detail),
            ..ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "plugin_failed", message)
        }
    }
    /// 503: writes to the collection are stopped by a plugin's halt policy.
    pub(crate) fn halted(collection: &str, reason: &str) -> ApiError {
        ApiError::stopped(
            collection,
            &crate::pipeline::Stopped::Halted(reason.to_owned()),
        )
    }
    pub(crate) fn stopped(collection: &str, why: &crate::pipeline::Stopped) -> ApiError {
        use crate::pipeline::Stopped;
        let (kind, message) = match why {
            Stopped::Halted(reason) => (
                "collection_halted",
                format!(
                    "writes to collection {collection:?} are stopped: {reason}; fix the plugin or its policy, then reload the config or restart the node"
                ),
            ),
            Stopped::Paused(reason) => (
                "collection_paused",
                format!("writes to collection {collection:?} wait: {reason}"),
            ),
        };
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, kind, message)
    }
    pub(crate) fn bad_request(kind: &'static str, message: String) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, kind, message)
    }
    pub(crate) fn too_large(kind: &'static str, message: String) -> ApiError {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, kind, message)
    }
    fn not_found(kind: &'static str, message: String) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, kind, message)
    }
    pub(crate) fn internal(message: String) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
    /// Prefixes the message with where in the request the problem is.
    pub(crate) fn at(mut self, at: &str) -> ApiError {
        self.message = format!("{at}: {}", self.message);
        self
    }
}

impl ApiError {
    /// The answer's status and JSON body.
    pub(crate) fn parts(&self) -> (u16, Json) {
        let mut body = json!({"error": self.message, "kind": self.kind});
        if let Some(Json::Object(extra)) = &self.detail {
            for (k, v) in extra {
                body[k] = v.clone();
            }
        }
        (self.status.as_u16(), body)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = self.parts();
        (
            StatusCode::from_u16(status).unwrap_or(self.status),
            axum::Json(body),
        )
            .into_response()
    }
}

/// An error answer recorded with an idempotency key (`{"status", "body"}`), given again.
fn failed_answer(failed: &Json) -> Response {
    let status = failed["status"]
        .as_u64()
        .and_then(|s| u16::try_from(s).ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::UNPROCESSABLE_ENTITY);
    (status, axum::Json(failed["body"].clone())).into_response()
}

impl From<request::Refused> for ApiError {
    fn from(r: request::Refused) -> ApiError {
        let status = match r.class {
            request::Class::Invalid => StatusCode::BAD_REQUEST,
            request::Class::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            request::Class::Forbidden => StatusCode::FORBIDDEN,
        };
        ApiError::new(status, r.kind, r.message)
    }
}

impl From<ingest::IngestError> for ApiError {
    fn from(e: ingest::IngestError) -> ApiError {
        use ingest::IngestError;
        match e {
            IngestError::Stopped { collection, why } => ApiError::stopped(&collection, &why),
            IngestError::Halted { collection, reason } => ApiError::halted(&collection, &reason),
            e @ IngestError::TooMany { .. } => {
                ApiError::too_large("too_many_writes", e.to_string())
            }
            e @ IngestError::TooLarge { .. } => {
                ApiError::too_large("writes_too_large", e.to_string())
            }
            e @ IngestError::NotAuthorized { .. } => {
                ApiError::new(StatusCode::FORBIDDEN, "write_not_authorized", e.to_string())
            }
            e @ IngestError::DeadLettersFull { .. } => ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "dead_letters_full",
                e.to_string(),
            ),
        }
    }
}

/// How a write a plugin failed on is answered.
impl ingest::Failed {
    /// The answer to a single write (PUT, DELETE) that failed.
    pub(crate) fn to_error(&self) -> ApiError {
        let kept = match self.dead_letter {
            Some(id) => format!("; kept as dead letter {id}"),
            None => "; dropped (policy skip)".to_owned(),
        };
        self.error_with(&kept)
    }

    /// The answer to a replay of dead letter `id` that failed again (the entry stays).
    pub(crate) fn to_replay_error(&self, id: u64) -> ApiError {
        self.error_with(&format!("; dead letter {id} stays (nothing written)"))
    }

    fn error_with(&self, kept: &str) -> ApiError {
        let r = &self.rejection;
        ApiError::plugin_failed(
            format!(
                "plugin {:?} failed on the write ({}): {}{kept}",
                r.plugin,
                r.failure.kind.as_str(),
                r.failure.message
            ),
            self.to_json(),
        )
    }
}

impl From<CommitError> for ApiError {
    fn from(e: CommitError) -> ApiError {
        match e {
            CommitError::Closed => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                e.to_string(),
            ),
            CommitError::DeadLetterGone(_) => {
                ApiError::new(StatusCode::CONFLICT, "dead_letter_gone", e.to_string())
            }
            CommitError::Refused(_) => {
                ApiError::new(StatusCode::CONFLICT, "write_refused", e.to_string())
            }
            CommitError::KeyInUse(_) => ApiError::new(
                StatusCode::CONFLICT,
                "idempotency_key_in_use",
                e.to_string(),
            ),
            CommitError::Unconfirmed(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "origin_unconfirmed",
                e.to_string(),
            ),
            CommitError::DiskFailed(_) | CommitError::DiskFailedEarlier(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "disk_failed",
                e.to_string(),
            ),
            other => ApiError::internal(other.to_string()),
        }
    }
}

/// Builds the router.
pub fn router(state: AppState) -> Router {
    let body_limit = state.config().limits.max_request_bytes;
    let state = Arc::new(state);
    Router::new()
        .route("/v1/status", get(status))
        .route("/metrics", get(metrics))
        // An empty key matches no `{*key}`: route it to the handlers, which refuse it clearly.
        .route(
            "/v1/kv/{collection}/",
            get(get_key).put(put_key).delete(delete_key),
        )
        .route(
            "/v1/kv/{collection}/{*key}",
            get(get_key).put(put_key).delete(delete_key),
        )
        .route("/v1/batch", post(batch))
        .route("/v1/scan/{collection}", get(scan))
        .route("/v1/watch", get(watch_feed))
        .route("/v1/changelog/{origin}", get(changelog))
        .route("/v1/dead-letters", get(dead_letters))
        .route("/v1/disagreements", get(disagreements))
        .route(
            "/v1/dead-letters/{id}",
            get(dead_letter).delete(delete_dead_letter),
        )
        .route("/v1/dead-letters/{id}/replay", post(replay_dead_letter))
        .route("/v1/reconcile", post(reconcile))
        .route("/v1/reload", post(reload))
        .fallback(|uri: Uri| async move {
            ApiError::not_found("no_such_route", format!("no such endpoint: {}", uri.path()))
        })
        // Every refusal carries its JSON body, a wrong method's too.
        .method_not_allowed_fallback(|method: axum::http::Method, uri: Uri| async move {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{method} is not a method of {}", uri.path()),
            )
        })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard))
        // The status page holds no data (it reads the API, with the token if one is set), so
        // it is served without the guard.
        .route("/ui", get(ui))
        .with_state(state)
}

/// The status page (`/ui`): one HTML file embedded in the binary, reading `/v1/status` and
/// `/v1/dead-letters` every second.
async fn ui() -> Response {
    let mut r = Response::new(Body::from(include_str!("ui/index.html")));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    r
}

/// Runs the ingest step of `writes` (see [`ingest::run`]), on a blocking thread when a plugin
/// may run.
async fn run_ingest(
    app: &Arc<AppState>,
    writes: Vec<LocalWrite>,
    record_failures: bool,
) -> Result<ingest::Outcome, ApiError> {
    // Without transforms nothing blocks (no plugin call, no dead letter): stay on this thread.
    if !ingest::may_block(&app.pipeline, &writes) {
        return Ok(ingest::run(&app.ingest_step(), writes, record_failures)?);
    }
    // A write that could not commit yet (no peer confirmed this node's own events) is refused
    // before plugins run: their failures would be set aside as dead letters for a request
    // the client is told to retry, once per retry.
    app.committer.origin_confirmed().await?;
    let turn = plugin_turn(app).await?;
    let app = app.clone();
    tokio::task::spawn_blocking(move || {
        // Held until the plugins are done, even if the caller stopped waiting.
        let _turn = turn;
        ingest::run(&app.ingest_step(), writes, record_failures)
    })
    .await
    .map_err(|e| ApiError::internal(format!("ingest task failed: {e}")))?
    .map_err(ApiError::from)
}

/// Waits for this request's turn among those running transforms on ingest (see
/// [`plugin_runs`]); the turn is held until the permit is dropped.
async fn plugin_turn(app: &Arc<AppState>) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    app.plugin_runs
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| ApiError::internal("plugin runs closed".to_owned()))
}

/// Runs blocking store work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, edgerep_store::StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(
            e @ (edgerep_store::StoreError::ChangelogCompacted { .. }
            | edgerep_store::StoreError::FeedCompacted { .. }),
        )) => Err(ApiError::new(StatusCode::GONE, "compacted", e.to_string())),
        // Damage on this disk, of one key: the request is not wrong, nor the node broken.
        Ok(Err(e @ edgerep_store::StoreError::UnreadableRow { .. })) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "row_damaged",
            e.to_string(),
        )),
        Ok(Err(e)) => Err(ApiError::internal(format!("store: {e}"))),
        Err(e) => Err(ApiError::internal(format!("store task failed: {e}"))),
    }
}

fn request_format(headers: &HeaderMap) -> Result<Format, ApiError> {
    let Some(ct) = headers.get(header::CONTENT_TYPE) else {
        return Ok(Format::Json);
    };
    let ct = ct
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match ct.as_str() {
        "application/json" | "" => Ok(Format::Json),
        "application/cbor" => Ok(Format::Cbor),
        other => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "content-type {other:?} is not supported: use application/json or application/cbor"
            ),
        )),
    }
}

fn wants_cbor(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/cbor"))
}

/// A keyed request refused for a limit before its key was looked up with its writes (its body
/// over `limits.max_request_bytes`): when a request under the key was recorded (committed,
/// maybe under a higher limit lowered since), a 409 saying so instead. A bare 413 tells the
/// client its write was never made, and one that splits its batch under new keys would write
/// it twice.
fn recorded_over_limit(app: &AppState, headers: &HeaderMap, refused: ApiError) -> ApiError {
    if refused.kind != "request_too_large" {
        return refused;
    }
    let Ok(Some(key)) = idempotency::from_headers(headers) else {
        return refused;
    };
    match app.store.idempotency(&key) {
        Ok(Some(r)) => recorded_key_over_limit(&key, r.at_ms, refused),
        _ => refused,
    }
}

/// The 409 of [`recorded_over_limit`] for `key`, recorded at `at_ms`.
fn recorded_key_over_limit(key: &str, at_ms: u64, refused: ApiError) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "idempotency_key_over_limit",
        format!(
            "a request under idempotency key {key:?} was recorded at {at_ms} ms (Unix time); this one is over a limit lowered since ({}), so it cannot be compared with it: nothing was written (raise the limit back to get the recorded answer; a request that is no retry takes a new key)",
            refused.message
        ),
    )
}

fn body_bytes(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(
                "request_too_large",
                format!("request body over the limit of {limit} bytes (limits.max_request_bytes)"),
            )
        } else {
            ApiError::bad_request("bad_body", format!("cannot read request body: {e}"))
        }
    })
}

/// [`collection_and_key`] for a write, which takes no query: a `?` in a key the client did not
/// percent-encode would otherwise cut the key short, and the write would land on another key.
fn write_collection_and_key(uri: &Uri) -> Result<(String, Vec<u8>), ApiError> {
    if let Some(q) = uri.query() {
        return Err(ApiError::bad_request(
            "bad_query",
            format!(
                "a write to /v1/kv takes no query string (got {q:?}): percent-encode '?' in a key as %3F"
            ),
        ));
    }
    collection_and_key(uri)
}

/// Splits `/v1/kv/{collection}/{key}` from the raw path and percent-decodes both, so keys may be
/// any bytes.
fn collection_and_key(uri: &Uri) -> Result<(String, Vec<u8>), ApiError> {
    let rest = uri.path().strip_prefix("/v1/kv/").unwrap_or("");
    let (c, k) = rest.split_once('/').unwrap_or((rest, ""));
    let collection = percent_encoding::percent_decode_str(c)
        .decode_utf8()
        .map_err(|_| {
            ApiError::bad_request("bad_collection", "collection name is not UTF-8".into())
        })?
        .into_owned();
    let key: Vec<u8> = percent_encoding::percent_decode_str(k).collect();
    Ok((collection, key))
}

/// A key as JSON: `"key": text` when it is UTF-8, `"key_base64"` otherwise.
fn key_json(obj: &mut serde_json::Map<String, Json>, key: &[u8]) {
    match std::str::from_utf8(key) {
        Ok(s) => obj.insert("key".into(), Json::String(s.into())),
        Err(_) => obj.insert(
            "key_base64".into(),
            Json::String(base64::engine::general_purpose::STANDARD.encode(key)),
        ),
    };
}

/// An event as JSON (for watch, changelog and versions).
pub fn event_json(event: &Event, position: Option<u64>) -> Json {
    let mut o = serde_json::Map::new();
    if let Some(p) = position {
        o.insert("position".into(), p.into());
    }
    o.insert("collection".into(), event.collection.clone().into());
    key_json(&mut o, &event.key);
    o.insert(
        "op".into(),
        match event.op {
            Op::Put => "put",
            Op::Delete => "delete",
        }
        .into(),
    );
    if let Some(v) = &event.value {
        o.insert("value".into(), v.to_json());
    }
    o.insert("hlc".into(), event.hlc.to_string().into());
    o.insert("origin".into(), event.origin.to_string().into());
    o.insert("seq".into(), event.seq.into());
    if event.schema != 0 {
        o.insert("schema".into(), event.schema.into());
    }
    if !event.meta.is_empty() {
        o.insert("meta".into(), json!(event.meta));
    }
    Json::Object(o)
}

fn committed_json(c: &Committed) -> Json {
    json!({"seq": c.seq, "hlc": c.hlc.to_string(), "position": c.position})
}

async fn put_key(
    State(app): Shared,
    uri: Uri,
    headers: HeaderMap,
    Extension(room): Extension<BodyRoom>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (collection, key) = write_collection_and_key(&uri)?;
    // (Whether the config lets it be written: after the idempotency lookup.)
    request::check_collection_name(&collection)?;
    request::check_key(&app.config(), &key)?;
    let format = request_format(&headers)?;
    let body = body_bytes(body, app.config().limits.max_request_bytes)
        .map_err(|e| recorded_over_limit(&app, &headers, e))?;
    let value = request::parse_value(&body, format, &crate::value_limits(&app.config()))?;
    let write = LocalWrite {
        collection,
        key,
        value: Some(value),
        schema: 0,
        meta: Default::default(),
        context: context_header(&headers, &app)?,
    };
    write_one(&app, write, &headers, room).await
}

/// Runs one write through ingest and commits it. The answer is `{"seq", "hlc", "position"}`
/// when it became one event (the usual case), else `{"committed": [...]}` (a transform dropped
/// or split it). With an idempotency key, a retry gets the first answer (see `idempotency`).
async fn write_one(
    app: &Arc<AppState>,
    write: LocalWrite,
    headers: &HeaderMap,
    room: BodyRoom,
) -> Result<Response, ApiError> {
    let key = idempotency::from_headers(headers)?;
    let trace = trace_header(headers)?;
    if key.is_none() {
        return write_one_run(app, write, None, trace).await;
    }
    let owned = app.clone();
    detached(app, room, async move {
        write_one_run(&owned, write, key, trace).await
    })
    .await
}

/// Runs `f` to its end in a task of its own. A keyed request runs so, holding its keys: a
/// client that stops waiting (a timeout, a closed connection) does not free its keys while its
/// plugins run or its commit waits, so a retry cannot run them a second time meanwhile. At most
/// `api.max_connections` such tasks run (a client that sends and hangs up must not pile them
/// up: 503 beyond), and none starts once the node is stopping.
async fn detached<T: Send + 'static>(
    app: &AppState,
    room: BodyRoom,
    f: impl std::future::Future<Output = Result<T, ApiError>> + Send + 'static,
) -> Result<T, ApiError> {
    if *app.shutdown.borrow() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the node is stopping; nothing was written: retry once it is back".into(),
        ));
    }
    let permit = app.guard.detached.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_requests",
            format!(
                "{} write requests are running (api.max_connections), some of them for clients that stopped waiting; nothing was written: retry",
                app.config().api.max_connections
            ),
        )
    })?;
    tokio::spawn(async move {
        let _permit = permit;
        let _room = room;
        f.await
    })
    .await
    .map_err(|e| ApiError::internal(format!("request task failed: {e}")))?
}

async fn write_one_run(
    app: &Arc<AppState>,
    write: LocalWrite,
    key: Option<String>,
    trace: Option<ClientTrace>,
) -> Result<Response, ApiError> {
    let body = idempotency::body_hash(idempotency::Shape::One, std::slice::from_ref(&write));
    // A key is looked up once the origin gate is open: after a restore, the writes (and keys)
    // the backup lacks come back from the peers first (a key looked up before would be new).
    if key.is_some() {
        app.committer.origin_confirmed().await?;
    }
    // Held until answered: a concurrent try of this request is refused before its plugins run.
    let _claim = match &key {
        Some(k) => Some(app.claims.claim([k.as_str()], &app.idempotency)?),
        None => None,
    };
    if let Some(k) = &key
        && let idempotency::Lookup::Replay(r) = idempotency::lookup(
            &app.store,
            &app.idempotency,
            k,
            idempotency::Shape::One,
            &body,
            std::slice::from_ref(&write),
        )?
    {
        let extra = idempotency::Extra::decode(&r.extra).map_err(ApiError::internal)?;
        if let Some(failed) = extra.failed {
            return Ok(replayed(failed_answer(&failed)));
        }
        let indexes: Vec<usize> = extra.indexes.iter().map(|&i| i as usize).collect();
        return Ok(replayed(one_answer(&r.committed, &indexes).into_response()));
    }
    request::check_collection_allowed(&app.config(), &write.collection)?;
    let outcome = run_ingest(app, vec![write], true).await?;
    if let Some(failed) = outcome.failed.first() {
        let error = failed.to_error();
        // The dead letter (if the policy keeps one) and the key with this answer, in one
        // transaction: a retry gets this answer, and does not set the write aside a second
        // time (a replay of each would commit it twice). If that transaction fails, neither
        // was kept and the client hears why.
        let receipts: Vec<Receipt> = key
            .map(|key| {
                let (status, answer) = error.parts();
                Receipt {
                    key,
                    body,
                    first: 0,
                    count: 0,
                    extra: idempotency::Extra {
                        failed: Some(json!({"status": status, "body": answer})),
                        ..idempotency::Extra::default()
                    }
                    .encode(),
                }
            })
            .into_iter()
            .collect();
        if !outcome.set_aside.is_empty() || !receipts.is_empty() {
            commit_keyed(
                app,
                Vec::new(),
                outcome.set_aside,
                outcome.promise,
                receipts,
                None,
            )
            .await?;
        }
        return Err(error);
    }
    let (indexes, writes): (Vec<usize>, Vec<LocalWrite>) = outcome.accepted.into_iter().unzip();
    // A write a transform dropped records its key too (no commits): its retry is answered
    // "dropped" from the record, even if the transform was changed in between.
    let receipts = match key {
        Some(key) => vec![Receipt {
            key,
            body,
            first: 0,
            count: writes.len(),
            extra: idempotency::Extra {
                indexes: indexes.iter().map(|&i| i as u64).collect(),
                ..idempotency::Extra::default()
            }
            .encode(),
        }],
        None => Vec::new(),
    };
    let committed = commit_keyed(
        app,
        writes,
        outcome.set_aside,
        outcome.promise,
        receipts,
        trace.as_ref(),
    )
    .await?;
    Ok(one_answer(&committed, &indexes).into_response())
}

/// The answer to one write: `{"seq", "hlc", "position"}`, or `{"committed": [...]}` (with
/// `"dropped"` saying so when a transform on ingest dropped the write).
fn one_answer(committed: &[Committed], indexes: &[usize]) -> axum::Json<Json> {
    if committed.len() == 1 {
        return axum::Json(committed_json(&committed[0]));
    }
    if committed.is_empty() {
        return axum::Json(json!({
            "committed": [],
            "dropped": "the collection's transforms on ingest dropped the write: nothing was written",
        }));
    }
    let list: Vec<Json> = indexes
        .iter()
        .zip(committed)
        .map(|(i, c)| json!({"write": i, "seq": c.seq, "hlc": c.hlc.to_string(), "position": c.position}))
        .collect();
    axum::Json(json!({"committed": list}))
}

/// Marks an answer given from an idempotency record.
fn replayed(mut r: Response) -> Response {
    r.headers_mut()
        .insert(idempotency::REPLAYED, HeaderValue::from_static("true"));
    r
}

/// Commits `writes` with the request's dead letters (`set_aside`, their places under the
/// limit in `promise`) and `receipts`, in one
/// transaction; counts a key a concurrent request recorded first. A traced
/// request (`trace`) is committed under a commit span whose context each event carries in its
/// metadata (`traceparent`; see `trace`).
async fn commit_keyed(
    app: &Arc<AppState>,
    mut writes: Vec<LocalWrite>,
    set_aside: edgerep_store::SetAside,
    promise: crate::dead_letter_budget::DeadLetterPromise,
    receipts: Vec<Receipt>,
    trace: Option<&ClientTrace>,
) -> Result<Vec<Committed>, ApiError> {
    let span = match trace {
        Some(t) if !writes.is_empty() => {
            let span = app.traces.commit_span(t, writes.len());
            for (i, w) in writes.iter_mut().enumerate() {
                w.meta
                    .insert(TRACEPARENT.to_owned(), span.traceparent.clone());
                if let Err(problem) = request::meta_problem(&app.config(), &w.meta) {
                    span.end(Err("refused"));
                    return Err(ApiError::bad_request(
                        "bad_meta",
                        format!(
                            "the write to collection {:?}, key {:?} (write {i} as the transforms \
                             on ingest made them): with the traceparent header added to its \
                             metadata, {problem}",
                            w.collection,
                            String::from_utf8_lossy(&w.key)
                        ),
                    ));
                }
            }
            // Every write of a traced client carries one: at info level once per 10 s, the
            // others at debug (the exported spans, when a collector is configured, have all).
            static LOG: crate::log_limit::Throttle =
                crate::log_limit::Throttle::new(crate::log_limit::EVERY);
            match LOG.allow() {
                Some(left_out) => {
                    tracing::info!(trace_id = %span.trace_id, events = writes.len(), left_out, "committing a traced write")
                }
                None => {
                    tracing::debug!(trace_id = %span.trace_id, events = writes.len(), "committing a traced write")
                }
            }
            Some(span)
        }
        _ => None,
    };
    let result = app
        .committer
        .commit_setting_aside(writes, Vec::new(), set_aside, promise, receipts)
        .await;
    if let Some(span) = span {
        match &result {
            Ok(c) => span.end(Ok((
                c.first().map_or(0, |c| c.seq),
                c.last().map_or(0, |c| c.seq),
            ))),
            Err(e) => span.end(Err(&e.to_string())),
        }
    }
    result.map_err(|e| {
        if matches!(e, CommitError::KeyInUse(_)) {
            app.idempotency
                .in_use
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        ApiError::from(e)
    })
}

/// The request's W3C `traceparent` header, checked, if it has one.
fn trace_header(headers: &HeaderMap) -> Result<Option<ClientTrace>, ApiError> {
    let Some(text) = header_text(headers, TRACEPARENT, "bad_traceparent")? else {
        return Ok(None);
    };
    crate::trace::Traces::parse_header(text)
        .map(Some)
        .map_err(|e| ApiError::bad_request("bad_traceparent", e.to_string()))
}

/// The header a read gives a key's causal context in, and a write takes it back in (see
/// `LocalWrite::context`): `origin:seq` entries joined by commas.
pub(crate) const CONTEXT_HEADER: &str = "x-edgerep-context";

/// The writer's context from the request's [`CONTEXT_HEADER`], checked, if it has one.
fn context_header(
    headers: &HeaderMap,
    app: &AppState,
) -> Result<Option<edgerep_wire::VersionVector>, ApiError> {
    // Given more than once, the lines are one list (as HTTP joins repeated header lines): a
    // client adding an entry a line must not have all but the first left out unsaid.
    let mut lines = Vec::new();
    let mut given = false;
    for v in headers.get_all(CONTEXT_HEADER) {
        given = true;
        let line = v.to_str().map_err(|_| {
            ApiError::bad_request(
                "bad_context",
                format!("the {CONTEXT_HEADER} header is not visible ASCII"),
            )
        })?;
        // An empty line (the context of a key read absent, sent back) adds nothing.
        if !line.trim().is_empty() {
            lines.push(line);
        }
    }
    if !given {
        return Ok(None);
    }
    let text = lines.join(",");
    request::parse_context(&text, &app.config(), &|| origins_held(app))
        .map(Some)
        .map_err(|e| {
            ApiError::bad_request("bad_context", format!("the {CONTEXT_HEADER} header: {e}"))
        })
}

/// How many origins the store holds events of (0 if it cannot say: the config's bound then
/// stands).
fn origins_held(app: &AppState) -> usize {
    app.store.origins_held().unwrap_or(0)
}

/// The text of header `name`, if the request has it; refused as `kind` when it is not visible
/// ASCII.
pub(crate) fn header_text<'h>(
    headers: &'h HeaderMap,
    name: &str,
    kind: &'static str,
) -> Result<Option<&'h str>, ApiError> {
    let Some(v) = headers.get(name) else {
        return Ok(None);
    };
    v.to_str()
        .map(Some)
        .map_err(|_| ApiError::bad_request(kind, format!("the {name} header is not visible ASCII")))
}

async fn delete_key(
    State(app): Shared,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (collection, key) = write_collection_and_key(&uri)?;
    request::check_collection_name(&collection)?;
    request::check_key(&app.config(), &key)?;
    let write = LocalWrite {
        collection,
        key,
        value: None,
        schema: 0,
        meta: Default::default(),
        context: context_header(&headers, &app)?,
    };
    write_one(&app, write, &headers, BodyRoom { _share: None }).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GetQuery {
    #[serde(default)]
    versions: bool,
}

async fn get_key(
    State(app): Shared,
    uri: Uri,
    headers: HeaderMap,
    query: Result<Query<GetQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request("bad_query", e.body_text()))?;
    let (collection, key) = collection_and_key(&uri)?;
    request::check_collection(&app.config(), &collection)?;
    request::check_key(&app.config(), &key)?;
    let app2 = app.clone();
    let (c2, k2) = (collection.clone(), key.clone());
    // Reading and resolving (which may call a resolver plugin) happen off the async threads.
    let (versions, resolved) = blocking(move || {
        let (versions, kept) = app2.store.get_resolved(&c2, &k2)?;
        let resolved = app2.pipeline.resolve(&c2, &k2, &versions, kept.as_ref());
        Ok((versions, resolved))
    })
    .await?;
    // What a write based on this read sends back, so that it supersedes only what was read:
    // of this node's own events, only synced ones (a crash would issue the numbers of unsynced
    // ones again, to other writes this client never saw; this node's own later writes name
    // its earlier ones anyway).
    let mut read_context = versions.context();
    read_context.limit(&app.config().node.id, app.committer.own_synced());
    let context = HeaderValue::from_str(&read_context.to_text()).ok();
    let not_found = || {
        let mut resp = ApiError::not_found(
            "key_not_found",
            format!(
                "key {:?} not found in collection {collection:?}",
                String::from_utf8_lossy(&key)
            ),
        )
        .into_response();
        if let Some(c) = context.clone() {
            resp.headers_mut().insert(CONTEXT_HEADER, c);
        }
        resp
    };
    if q.versions {
        // A key with no version never existed here (a deleted one keeps its tombstone): absent,
        // as a plain read says.
        if versions.events().is_empty() {
            return Ok(not_found());
        }
        let list: Vec<Json> = versions
            .events()
            .iter()
            .map(|e| event_json(e, None))
            .collect();
        return Ok(axum::Json(json!({
            "collection": collection,
            "versions": list,
            "context": read_context.to_text(),
        }))
        .into_response());
    }
    let Some(value) = &resolved.value else {
        return Ok(not_found());
    };
    let mut resp = if wants_cbor(&headers) {
        let mut r = Response::new(Body::from(value.as_bytes().to_vec()));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/cbor"),
        );
        r
    } else {
        axum::Json(value.to_json()).into_response()
    };
    let h = resp.headers_mut();
    let put = |h: &mut HeaderMap, name: &'static str, v: String| {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(name, v);
        }
    };
    if let Some(winner) = resolved.winner.map(|i| &versions.events()[i]) {
        put(h, "x-edgerep-origin", winner.origin.to_string());
        put(h, "x-edgerep-seq", winner.seq.to_string());
        put(h, "x-edgerep-hlc", winner.hlc.to_string());
    }
    put(h, "x-edgerep-versions", versions.events().len().to_string());
    put(h, "x-edgerep-resolved-by", resolved.by);
    if let Some(c) = context {
        h.insert(CONTEXT_HEADER, c);
    }
    Ok(resp)
}

async fn batch(
    State(app): Shared,
    headers: HeaderMap,
    Extension(room): Extension<BodyRoom>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let format = request_format(&headers)?;
    let request_key = idempotency::from_headers(&headers)?;
    let trace = trace_header(&headers)?;
    let body = body_bytes(body, app.config().limits.max_request_bytes)
        .map_err(|e| recorded_over_limit(&app, &headers, e))?;
    // Its keys (the header's, or its writes') are known once it is parsed: every batch runs
    // to its end (see `detached`).
    detached(
        &app,
        room,
        batch_run(app.clone(), headers, body, format, request_key, trace),
    )
    .await
}

/// Largest batch body parsed on the async thread that received it (when no transform runs on
/// ingest).
const INLINE_BATCH_BYTES: usize = 16 << 10;

async fn batch_run(
    app: Arc<AppState>,
    headers: HeaderMap,
    body: Bytes,
    format: Format,
    request_key: Option<String>,
    trace: Option<ClientTrace>,
) -> Result<Response, ApiError> {
    let app2 = app.clone();
    // Where transforms on ingest may run, the batch takes its turn among the requests running
    // them (see `plugin_runs`), held until its transforms are done.
    let turn = if app.pipeline.any_ingest() {
        Some(plugin_turn(&app).await?)
    } else {
        None
    };
    // Parsing a large batch, looking its keys up and running transforms is CPU and disk work:
    // keep it off the async threads. A small batch with no transform and no key is done here
    // (the hop to a blocking thread and back would cost more than the work).
    let parse = move |app: &AppState, body: &[u8]| {
        request::parse_batch(
            body,
            format,
            &app.config(),
            &crate::value_limits(&app.config()),
            &|| origins_held(app),
        )
    };
    let blocking_failed =
        |e: tokio::task::JoinError| ApiError::internal(format!("parse task failed: {e}"));
    // Keys are looked up once the origin gate is open (see `write_one_run`); a batch's per-write
    // keys are known only once parsed, so every batch waits here (it would wait to commit).
    app.committer.origin_confirmed().await?;
    let retry = request_key.clone().map(|key| (key, body.clone()));
    let prepared = if turn.is_none() && body.len() <= INLINE_BATCH_BYTES {
        match parse(&app, &body) {
            Err(e) => Err(e.into()),
            Ok(batch) if request_key.is_none() && batch.keys.iter().all(Option::is_none) => {
                prepare_batch(&app, batch, None)
            }
            Ok(batch) => {
                tokio::task::spawn_blocking(move || prepare_batch(&app2, batch, request_key))
                    .await
                    .map_err(blocking_failed)?
            }
        }
    } else {
        tokio::task::spawn_blocking(move || -> Result<PreparedBatch, ApiError> {
            let _turn = turn;
            let batch = parse(&app2, &body)?;
            prepare_batch(&app2, batch, request_key)
        })
        .await
        .map_err(blocking_failed)?
    };
    let prepared = match (prepared, retry) {
        (Err(e), Some((key, body))) if e.kind == "batch_too_large" => {
            let app = app.clone();
            tokio::task::spawn_blocking(move || replay_over_count(&app, &key, &body, format, e))
                .await
                .map_err(blocking_failed)??
        }
        (prepared, _) => prepared?,
    };
    let (committed, indexes, failed, replays, set_aside_now) = match prepared {
        PreparedBatch::Replay { committed, extra } => {
            let indexes: Vec<usize> = extra.indexes.iter().map(|&i| i as usize).collect();
            let r = batch_answer(&headers, &committed, &indexes, &extra.rejected);
            return Ok(replayed(r));
        }
        PreparedBatch::Run {
            outcome,
            original,
            receipts,
            replays,
            _claim,
        } => {
            let failed: Vec<Json> = outcome
                .failed
                .iter()
                .map(|f| {
                    let mut j = f.to_json();
                    j["write"] = json!(original[f.write]);
                    j
                })
                .collect();
            let (indexes, writes): (Vec<usize>, Vec<LocalWrite>) = outcome
                .accepted
                .into_iter()
                .map(|(i, w)| (original[i], w))
                .unzip();
            let mut receipts = receipts;
            if let Some(r) = receipts.first_mut()
                && r.first == usize::MAX
            {
                // The request's own key: all its commits, and what plugins refused.
                r.first = 0;
                r.count = writes.len();
                r.extra = idempotency::Extra {
                    indexes: indexes.iter().map(|&i| i as u64).collect(),
                    rejected: failed.clone(),
                    ..idempotency::Extra::default()
                }
                .encode();
                // Nothing to commit (plugins refused every write): the key is still recorded
                // with this answer, so a retry does not set the writes aside once more.
            } else {
                receipts = per_write_receipts(receipts, &indexes, &failed);
            }
            // Writes set aside now are new dead letters: written, though not to the state.
            let set_aside_now = !outcome.set_aside.is_empty();
            let committed = commit_keyed(
                &app,
                writes,
                outcome.set_aside,
                outcome.promise,
                receipts,
                trace.as_ref(),
            )
            .await?;
            (committed, indexes, failed, replays, set_aside_now)
        }
    };
    // Writes answered from their own records join the answer in write order, what plugins
    // refused of them too.
    let mut failed = failed;
    for (i, r) in &replays {
        let extra = idempotency::Extra::decode(&r.extra).map_err(ApiError::internal)?;
        // Numbered as in this request (the first one may have held it elsewhere).
        failed.extend(extra.rejected.into_iter().map(|mut f| {
            f["write"] = serde_json::json!(i);
            f
        }));
    }
    failed.sort_by_key(|f| f["write"].as_u64());
    // `idempotent-replayed` says the request wrote nothing: not when some of its writes
    // (without a key, or with a new one) committed now, or were set aside as dead letters.
    let wrote_now = !committed.is_empty() || set_aside_now;
    let (committed, indexes) = if replays.is_empty() {
        (committed, indexes)
    } else {
        let mut all: Vec<(usize, Committed)> = indexes.into_iter().zip(committed).collect();
        for (i, r) in &replays {
            all.extend(r.committed.iter().map(|c| (*i, *c)));
        }
        all.sort_by_key(|(i, c)| (*i, c.seq));
        let (indexes, committed): (Vec<usize>, Vec<Committed>) = all.into_iter().unzip();
        (committed, indexes)
    };
    let r = batch_answer(&headers, &committed, &indexes, &failed);
    if replays.is_empty() || wrote_now {
        Ok(r)
    } else {
        Ok(replayed(r))
    }
}

/// A batch after its keys were looked up and its writes ran through ingest.
enum PreparedBatch {
    /// The request's key is recorded with this request: its answer.
    Replay {
        committed: Vec<Committed>,
        extra: idempotency::Extra,
    },
    /// Writes to commit.
    Run {
        /// The ingest outcome over the writes not answered from records.
        outcome: ingest::Outcome,
        /// For each of those, its index in the request.
        original: Vec<usize>,
        /// The request's key (`first == usize::MAX`, filled in once committed), or one
        /// receipt per keyed write (`first`: its index in the request, filled in later).
        receipts: Vec<Receipt>,
        /// Writes answered from their records: (index in the request, record).
        replays: Vec<(usize, edgerep_store::idempotency::Recorded)>,
        /// The request's keys, held until it is answered.
        _claim: idempotency::Claim,
    },
}

/// Checks that the config lets each write's collection be written (after the idempotency
/// lookups: see `request::check_collection_allowed`); one refused refuses the batch.
fn check_batch_collections<'w>(
    app: &AppState,
    writes: impl Iterator<Item = (usize, &'w LocalWrite)>,
    some_replayed: bool,
) -> Result<(), ApiError> {
    let config = app.config();
    for (i, w) in writes {
        request::check_collection_allowed(&config, &w.collection).map_err(|e| {
            let mut e = e.at(&format!("writes[{i}]"));
            if some_replayed {
                e.message.push_str(
                    "; nothing of this request was written now, but its writes whose idempotency keys were recorded were written by their first try",
                );
            }
            e
        })?;
    }
    Ok(())
}

/// A batch under an Idempotency-Key header refused (`refused`) for holding more writes than
/// `limits.max_batch_events`: when the key was recorded (the batch taken under a higher limit
/// lowered since), the retry is parsed and gets the recorded answer if it is the same
/// request. Else the refusal, or the 409 of
/// [`recorded_over_limit`] when a request under the key was recorded. Nothing runs here:
/// a batch over the limit is only ever answered from a record.
fn replay_over_count(
    app: &AppState,
    key: &str,
    body: &[u8],
    format: Format,
    refused: ApiError,
) -> Result<PreparedBatch, ApiError> {
    let Some(recorded) = app
        .store
        .idempotency(key)
        .map_err(|e| ApiError::internal(format!("store: {e}")))?
    else {
        return Err(refused);
    };
    let over = |refused| recorded_key_over_limit(key, recorded.at_ms, refused);
    // Parsed up to as many writes as a record may hold (the body is within
    // `limits.max_request_bytes`): the record does not say how many the request had (writes a
    // filter dropped after the last one that committed are not counted), and the body's hash
    // decides whether it is the same request.
    let config = app.config();
    let mut wider = (*config).clone();
    wider.limits.max_batch_events =
        usize::try_from(edgerep_store::idempotency::MAX_RECORD_WRITES).unwrap_or(usize::MAX);
    let batch =
        match request::parse_batch(body, format, &wider, &crate::value_limits(&config), &|| {
            origins_held(app)
        }) {
            Ok(batch) if batch.keys.iter().all(Option::is_none) => batch,
            _ => return Err(over(refused)),
        };
    let hash = idempotency::body_hash(idempotency::Shape::Batch, &batch.writes);
    match idempotency::lookup(
        &app.store,
        &app.idempotency,
        key,
        idempotency::Shape::Batch,
        &hash,
        &batch.writes,
    )? {
        idempotency::Lookup::Replay(r) => Ok(PreparedBatch::Replay {
            committed: r.committed,
            extra: idempotency::Extra::decode(&r.extra).map_err(ApiError::internal)?,
        }),
        idempotency::Lookup::New => Err(refused),
    }
}

/// Looks a batch's keys up and runs the writes that need it through ingest (blocking).
fn prepare_batch(
    app: &Arc<AppState>,
    batch: request::Batch,
    request_key: Option<String>,
) -> Result<PreparedBatch, ApiError> {
    let request::Batch { writes, keys } = batch;
    if let Some(key) = request_key {
        if keys.iter().any(Option::is_some) {
            return Err(ApiError::bad_request(
                "bad_idempotency_key",
                "give the batch an Idempotency-Key header or its writes idempotency_key fields, not both".into(),
            ));
        }
        if writes.len() as u64 > edgerep_store::idempotency::MAX_RECORD_WRITES {
            return Err(ApiError::bad_request(
                "bad_idempotency_key",
                format!(
                    "a batch of {} writes cannot carry an Idempotency-Key (at most {})",
                    writes.len(),
                    edgerep_store::idempotency::MAX_RECORD_WRITES
                ),
            ));
        }
        let body = idempotency::body_hash(idempotency::Shape::Batch, &writes);
        let claim = app.claims.claim([key.as_str()], &app.idempotency)?;
        if let idempotency::Lookup::Replay(r) = idempotency::lookup(
            &app.store,
            &app.idempotency,
            &key,
            idempotency::Shape::Batch,
            &body,
            &writes,
        )? {
            let extra = idempotency::Extra::decode(&r.extra).map_err(ApiError::internal)?;
            return Ok(PreparedBatch::Replay {
                committed: r.committed,
                extra,
            });
        }
        check_batch_collections(app, writes.iter().enumerate(), false)?;
        let original = (0..writes.len()).collect();
        let outcome = ingest::run(&app.ingest_step(), writes, true)?;
        return Ok(PreparedBatch::Run {
            outcome,
            original,
            receipts: vec![Receipt {
                key,
                body,
                first: usize::MAX,
                count: 0,
                extra: Vec::new(),
            }],
            replays: Vec::new(),
            _claim: claim,
        });
    }
    // Per-write keys: every key is looked up before anything runs (one reused key refuses the
    // whole batch, nothing written).
    let claim = app
        .claims
        .claim(keys.iter().flatten().map(String::as_str), &app.idempotency)?;
    let mut replays = Vec::new();
    let mut receipts = Vec::new();
    let mut run = Vec::with_capacity(writes.len());
    let mut original = Vec::with_capacity(writes.len());
    for (i, (w, key)) in writes.into_iter().zip(keys).enumerate() {
        if let Some(key) = key {
            let body =
                idempotency::body_hash(idempotency::Shape::BatchWrite, std::slice::from_ref(&w));
            match idempotency::lookup(
                &app.store,
                &app.idempotency,
                &key,
                idempotency::Shape::BatchWrite,
                &body,
                std::slice::from_ref(&w),
            )
            .map_err(|e| e.at(&format!("writes[{i}]")))?
            {
                idempotency::Lookup::Replay(r) => {
                    replays.push((i, r));
                    continue;
                }
                idempotency::Lookup::New => receipts.push(Receipt {
                    key,
                    body,
                    first: i,
                    count: 0,
                    extra: Vec::new(),
                }),
            }
        }
        original.push(i);
        run.push(w);
    }
    // (Writes answered from their records were checked when they ran.)
    check_batch_collections(app, original.iter().copied().zip(&run), !replays.is_empty())?;
    let outcome = if run.is_empty() {
        ingest::Outcome::default()
    } else {
        // A refusal names the write by its place in the request, not among those run.
        ingest::run(&app.ingest_step(), run, true).map_err(|e| match e {
            ingest::IngestError::NotAuthorized { write, reason } => {
                ingest::IngestError::NotAuthorized {
                    write: original[write],
                    reason,
                }
            }
            e => e,
        })?
    };
    Ok(PreparedBatch::Run {
        outcome,
        original,
        receipts,
        replays,
        _claim: claim,
    })
}

/// Per-write receipts (`first` = the write's index in the request) made to name their commits:
/// the commits of one write are consecutive (ingest keeps write order). A write a plugin
/// refused records its refusal (`rejected`, as the answer lists it) and no commits, so a retry
/// gets that answer and does not set the write aside again; one a transform dropped records
/// no commits and no refusal, so its retry is answered the same even if the transform changed.
fn per_write_receipts(receipts: Vec<Receipt>, indexes: &[usize], failed: &[Json]) -> Vec<Receipt> {
    receipts
        .into_iter()
        .map(|mut r| {
            let write = r.first;
            let Some(first) = indexes.iter().position(|&i| i == write) else {
                let refused = failed
                    .iter()
                    .find(|f| f["write"].as_u64() == Some(write as u64));
                r.first = 0;
                r.count = 0;
                r.extra = idempotency::Extra {
                    rejected: refused.into_iter().cloned().collect(),
                    ..idempotency::Extra::default()
                }
                .encode();
                return r;
            };
            let count = indexes[first..].iter().take_while(|&&i| i == write).count();
            r.first = first;
            r.count = count;
            r.extra = idempotency::Extra {
                indexes: vec![write as u64; count],
                ..idempotency::Extra::default()
            }
            .encode();
            r
        })
        .collect()
}

/// The answer to a batch: JSON `{"committed": [...], "rejected": [...]}`, or the compact CBOR
/// form for clients that ask for it.
fn batch_answer(
    headers: &HeaderMap,
    committed: &[Committed],
    indexes: &[usize],
    rejected: &[Json],
) -> Response {
    if wants_cbor(headers) {
        // Compact answer for high-rate clients:
        // [lowest position, highest position, events committed, writes refused by plugins].
        // (Not the first and last in write order: writes answered from their idempotency
        // records come with their first commit's positions.)
        let first = committed.iter().map(|c| c.position).min().unwrap_or(0);
        let last = committed.iter().map(|c| c.position).max().unwrap_or(0);
        let mut buf = Vec::new();
        let _ = minicbor::Encoder::new(&mut buf)
            .array(4)
            .and_then(|e| e.u64(first))
            .and_then(|e| e.u64(last))
            .and_then(|e| e.u64(committed.len() as u64))
            .and_then(|e| e.u64(rejected.len() as u64));
        let mut r = Response::new(Body::from(buf));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/cbor"),
        );
        return r;
    }
    let list: Vec<Json> = indexes
        .iter()
        .zip(committed)
        .map(|(i, c)| json!({"write": i, "seq": c.seq, "hlc": c.hlc.to_string(), "position": c.position}))
        .collect();
    axum::Json(json!({"committed": list, "rejected": rejected})).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScanQuery {
    prefix: Option<String>,
    start: Option<String>,
    end: Option<String>,
    after: Option<String>,
    prefix_base64: Option<String>,
    start_base64: Option<String>,
    end_base64: Option<String>,
    after_base64: Option<String>,
    limit: Option<usize>,
}

/// A key bound given as text (`name`) or, for keys that are not UTF-8, as base64 (`name_base64`).
fn key_param(
    name: &str,
    text: Option<String>,
    b64: Option<String>,
) -> Result<Option<Vec<u8>>, ApiError> {
    match (text, b64) {
        (Some(_), Some(_)) => Err(ApiError::bad_request(
            "bad_query",
            format!("give {name} or {name}_base64, not both"),
        )),
        (Some(t), None) => Ok(Some(t.into_bytes())),
        (None, Some(b)) => base64::engine::general_purpose::STANDARD
            .decode(b)
            .map(Some)
            .map_err(|e| {
                ApiError::bad_request("bad_query", format!("{name}_base64 is not base64: {e}"))
            }),
        (None, None) => Ok(None),
    }
}

/// Most keys one scan page returns.
const SCAN_LIMIT_MAX: usize = 10_000;

async fn scan(
    State(app): Shared,
    uri: Uri,
    query: Result<Query<ScanQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request("bad_query", e.body_text()))?;
    let raw = uri.path().strip_prefix("/v1/scan/").unwrap_or("");
    let collection = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| {
            ApiError::bad_request("bad_collection", "collection name is not UTF-8".into())
        })?
        .into_owned();
    request::check_collection(&app.config(), &collection)?;
    let limit = page_limit(q.limit, 1000)?;
    let range = ScanRange {
        prefix: key_param("prefix", q.prefix, q.prefix_base64)?.unwrap_or_default(),
        start: key_param("start", q.start, q.start_base64)?,
        end: key_param("end", q.end, q.end_base64)?,
        after: key_param("after", q.after, q.after_base64)?,
    };
    let app2 = app.clone();
    let c2 = collection.clone();
    let (items, next) = blocking(move || {
        let page = app2.store.scan(&c2, &range, limit)?;
        let items: Vec<Json> = page
            .entries
            .iter()
            .map(|(key, versions)| {
                let kept = page.resolutions.get(key);
                scan_item(
                    key,
                    versions,
                    &app2.pipeline.resolve(&c2, key, versions, kept),
                )
            })
            .collect();
        Ok((items, page.next))
    })
    .await?;
    // The cursor for the next page: `next` as text, or `next_base64` when the key is not UTF-8.
    let mut body = json!({"collection": collection, "items": items, "next": null});
    if let Some(next) = next {
        match String::from_utf8(next) {
            Ok(text) => body["next"] = json!(text),
            Err(e) => {
                body["next_base64"] =
                    json!(base64::engine::general_purpose::STANDARD.encode(e.as_bytes()))
            }
        }
    }
    Ok(axum::Json(body).into_response())
}

fn scan_item(key: &[u8], versions: &Versions, resolved: &edgerep_store::Resolution) -> Json {
    let mut o = serde_json::Map::new();
    key_json(&mut o, key);
    o.insert(
        "value".into(),
        resolved.value.as_ref().map_or(Json::Null, |v| v.to_json()),
    );
    if versions.events().len() > 1 {
        o.insert("versions".into(), versions.events().len().into());
        o.insert("resolved_by".into(), resolved.by.clone().into());
    }
    Json::Object(o)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WatchQuery {
    #[serde(default)]
    after: u64,
    /// The `feed-generation` of the answer that gave `after` (see [`FeedRun`]).
    generation: Option<u64>,
    collection: Option<String>,
    #[serde(default = "yes")]
    follow: bool,
    limit: Option<u64>,
}

fn yes() -> bool {
    true
}

/// Feed entries read per store call while streaming.
const WATCH_CHUNK: usize = 512;

async fn watch_feed(
    State(app): Shared,
    query: Result<Query<WatchQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request("bad_query", e.body_text()))?;
    if let Some(c) = &q.collection {
        request::check_collection(&app.config(), c)?;
    }
    // (A stream of no events would end at once, as a listing's empty page does.)
    if q.limit == Some(0) {
        return Err(ApiError::bad_request(
            "bad_query",
            "limit must be at least 1 (or absent: no end)".into(),
        ));
    }
    let run = app.feed_run.clone();
    if let Some(bound) = q.generation.and_then(|g| run.good_up_to(g))
        && q.after > bound
    {
        // A generation this node never recorded (another node's, a typo, or one older than
        // the runs it keeps) is said to be that, not taken for one of its runs.
        let whose = if run.runs.iter().any(|(g, _)| Some(*g) == q.generation) {
            format!(
                "was given by an earlier run of this node, beyond the feed's end ({bound}) when a later run started: positions past it were lost (a restore from a backup, or a crash losing periodic commits) and numbered again"
            )
        } else {
            format!(
                "comes with generation={}, which is none of the {} runs this node keeps a record of (another node's cursor, a mistyped one, or an older run's): it is past the feed's end ({bound}) when one of them started, so it may name positions numbered again",
                q.generation.unwrap_or_default(),
                run.runs.len()
            )
        };
        return Err(ApiError::new(
            StatusCode::GONE,
            "feed_renumbered",
            format!(
                "after={} {whose}; read the state (scan), then watch from after=feed_last with generation={}",
                q.after, run.generation
            ),
        ));
    }
    // Positions only come from the feed, so a cursor beyond its end means the node lost its last
    // commits in a crash (collections with `durability = "periodic"`) and will number new events
    // from its end again: following from the cursor would skip them.
    let feed_last = *app.feed.borrow();
    if q.after > feed_last {
        // A position committed but not yet synced (what `status` shows as feed_last) is not a
        // loss: the stream opens, and serves what comes after it once synced (it serves only
        // synced positions). A crash before the sync takes the stream down with it; the
        // client's next watch from there is then beyond the end, and told so below.
        let store = app.store.clone();
        let committed = blocking(move || Ok(store.status()?.feed_last)).await?;
        if q.after > committed {
            let feed_last = *app.feed.borrow();
            return Err(ApiError::bad_request(
                "cursor_ahead",
                format!(
                    "after={} is beyond the end of this node's feed ({feed_last}): its last commits were lost in a crash (durability = \"periodic\"); watch again from after={feed_last} or rescan",
                    q.after
                ),
            ));
        }
    }
    // Refuse a cursor below the feed floor now, with a clear answer, not mid-stream.
    let store = app.store.clone();
    let after = q.after;
    blocking(move || store.feed(after, 0)).await?;
    let Ok(permit) = app.guard.watch_streams.clone().try_acquire_owned() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_watches",
            format!(
                "{} watch streams are open, the most this node serves (api.max_watch_streams)",
                app.guard.max_watch_streams
            ),
        ));
    };
    struct Cursor {
        /// Held while the stream lives.
        _permit: tokio::sync::OwnedSemaphorePermit,
        app: Arc<AppState>,
        after: u64,
        remaining: u64,
        filter: Option<String>,
        follow: bool,
        /// Set once a line saying why the stream ends is sent.
        ended: bool,
        feed: watch::Receiver<u64>,
        shutdown: watch::Receiver<bool>,
        /// Changes when the API's token does (a rotation): the stream, opened with the old
        /// one, ends.
        token: watch::Receiver<u64>,
    }
    let cursor = Cursor {
        _permit: permit,
        feed: app.feed.clone(),
        shutdown: app.shutdown.clone(),
        token: app.guard.token_changes.subscribe(),
        app,
        after: q.after,
        remaining: q.limit.unwrap_or(u64::MAX),
        filter: q.collection,
        follow: q.follow,
        ended: false,
    };
    // The last line of a stream the node ends early (an answer's status is sent already): the
    // client can tell it from a complete listing or a cut connection.
    let end = |mut c: Cursor, kind: &str, error: &str| {
        c.ended = true;
        let mut line = json!({"error": error, "kind": kind})
            .to_string()
            .into_bytes();
        line.push(b'\n');
        Some((Ok::<_, std::io::Error>(Bytes::from(line)), c))
    };
    const SHUTDOWN: (&str, &str) = ("shutting_down", "the node is shutting down");
    const TOKEN: (&str, &str) = ("token_changed", "the node's API token changed");
    let stream = futures_util::stream::unfold(cursor, move |mut c| async move {
        loop {
            if c.ended || c.remaining == 0 {
                return None;
            }
            if *c.shutdown.borrow() {
                return end(c, SHUTDOWN.0, SHUTDOWN.1);
            }
            if c.token.has_changed().unwrap_or(true) {
                return end(c, TOKEN.0, TOKEN.1);
            }
            // Mark the current position seen before reading, so no commit is missed; serve
            // only up to it (synced: a position a crash can take back is never shown).
            let synced = *c.feed.borrow_and_update();
            let store = c.app.store.clone();
            let after = c.after;
            // At most what is left to send (unless a filter skips events), and a page's bytes.
            let limit = match c.filter {
                Some(_) => WATCH_CHUNK,
                None => usize::try_from(c.remaining)
                    .unwrap_or(usize::MAX)
                    .clamp(1, WATCH_CHUNK),
            };
            let read = move || store.feed_page(after, limit, edgerep_store::PAGE_BYTES);
            let chunk = match tokio::task::spawn_blocking(read).await {
                Ok(Ok(mut chunk)) => {
                    chunk.retain(|(pos, _)| *pos <= synced);
                    chunk
                }
                // The stream ends with a last line saying why (an answer's status is
                // sent already): the client can tell this from a cut connection.
                Ok(Err(e)) => {
                    c.ended = true;
                    let mut line = match &e {
                        edgerep_store::StoreError::FeedCompacted { floor } => json!({
                            "error": e.to_string(),
                            "kind": "compacted",
                            "floor": floor,
                        }),
                        _ => json!({"error": format!("store: {e}"), "kind": "internal"}),
                    }
                    .to_string()
                    .into_bytes();
                    line.push(b'\n');
                    return Some((Ok(Bytes::from(line)), c));
                }
                Err(e) => return Some((Err(std::io::Error::other(e.to_string())), c)),
            };
            if !chunk.is_empty() {
                let mut out = Vec::new();
                for (pos, event) in &chunk {
                    if c.remaining == 0 {
                        break;
                    }
                    // Skipped (filtered) events move the cursor too, so they are not read again.
                    c.after = *pos;
                    if c.filter.as_deref().is_some_and(|f| f != event.collection) {
                        continue;
                    }
                    c.remaining -= 1;
                    let mut line = event_json(event, Some(*pos));
                    line["generation"] = c.app.feed_run.generation.into();
                    let _ = serde_json::to_writer(&mut out, &line);
                    out.push(b'\n');
                    // A chunk stays near a page (JSON can take six bytes for one of a value's):
                    // what a reader that stopped leaves queued is bounded.
                    if out.len() >= edgerep_store::PAGE_BYTES {
                        break;
                    }
                }
                if !out.is_empty() {
                    return Some((Ok::<_, std::io::Error>(Bytes::from(out)), c));
                }
                continue;
            }
            if !c.follow {
                return None;
            }
            tokio::select! {
                changed = c.feed.changed() => if changed.is_err() { return None },
                _ = c.shutdown.changed() => return end(c, SHUTDOWN.0, SHUTDOWN.1),
                // (`changed` marks the new token seen: `has_changed` above would miss it.)
                _ = c.token.changed() => return end(c, TOKEN.0, TOKEN.1),
            }
        }
    });
    let mut resp = Response::new(Body::from_stream(stream));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    resp.headers_mut()
        .insert("feed-generation", HeaderValue::from(run.generation));
    Ok(resp)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangelogQuery {
    #[serde(default)]
    after: u64,
    limit: Option<usize>,
}

async fn changelog(
    State(app): Shared,
    uri: Uri,
    query: Result<Query<ChangelogQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request("bad_query", e.body_text()))?;
    let origin = uri
        .path()
        .strip_prefix("/v1/changelog/")
        .unwrap_or("")
        .to_owned();
    edgerep_wire::NodeId::parse(&origin).map_err(|e| {
        ApiError::bad_request(
            "bad_origin",
            format!("origin {origin:?} is not a node id: {e}"),
        )
    })?;
    // As the scan's: an empty page is the end of a listing to a client, so limit=0 would end
    // it before its first event.
    let limit = page_limit(q.limit, 1000)?;
    let store = app.store.clone();
    let o2 = origin.clone();
    let events =
        blocking(move || store.changelog_page(&o2, q.after, limit, edgerep_store::PAGE_BYTES))
            .await?;
    // This node's own events are listed once synced only: a crash would issue the numbers of
    // unsynced ones again, to other writes, and a client paging on with `after` would skip
    // those. (Synced only moves forward, so reading it after the page is safe.)
    let synced = if origin == app.config().node.id.as_str() {
        app.committer.own_synced()
    } else {
        u64::MAX
    };
    let list: Vec<Json> = events
        .iter()
        .take_while(|e| e.seq <= synced)
        .map(|e| event_json(e, None))
        .collect();
    Ok(axum::Json(json!({"origin": origin, "events": list})).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusQuery {
    #[serde(default)]
    verify: bool,
}

async fn status(
    State(app): Shared,
    query: Result<Query<StatusQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request("bad_query", e.body_text()))?;
    if q.verify
        && let Err(wait) = app.guard.verify_slot()
    {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "verify_rate_limited",
            format!(
                "the store was verified less than api.verify_interval_ms ago; try again in {} ms (or ask without verify=true)",
                wait.as_millis()
            ),
        ));
    }
    // The turn is held until the verification ends, even if this request is dropped first.
    let turn = if q.verify {
        Some(app.guard.verifying.clone().lock_owned().await)
    } else {
        None
    };
    let store = app.store.clone();
    let (s, verified, disagreements, keys_held) = blocking(move || {
        // Verify first: it waits for the store's check at open, so the counters read after it
        // include that check's correction.
        let verified = if q.verify {
            Some(store.verify()?)
        } else {
            None
        };
        drop(turn);
        let s = store.status()?;
        Ok((
            s,
            verified,
            store.disagreements_count()?,
            store.idempotency_count()?,
        ))
    })
    .await?;
    let mut body = json!({
        "node_id": app.config().node.id.to_string(),
        "version": env!("CARGO_PKG_VERSION"),
        "build_commit": crate::BUILD_COMMIT,
        "protocol": edgerep_replica::PROTOCOL_VERSION,
        "store_format": edgerep_store::STORE_FORMAT,
        "api": app.api_addr.to_string(),
        "uptime_s": app.started.elapsed().as_secs(),
        "digest": s.digest.to_hex(),
        "state_entries": s.state_entries,
        "feed_last": s.feed_last,
        "origins": s.origins,
        "hlc_last": s.hlc_last.to_string(),
        "dead_letters": s.dead_letters,
        "dead_letter_bytes": s.dead_letter_bytes,
        "disagreements": disagreements,
        "re_resolving": app.store.re_resolving(),
        "idempotency": app.idempotency.to_json(keys_held, app.store.idempotency_dropped_early()),
        "compacted": s.compacted,
        "feed_floor": s.feed_floor,
        "collections": collections_json(&app.config().collections),
        "last_reload_error": app.reloader.last_error(),
        "clock_skewed_origins": app.commit_metrics.skewed_origins(),
    });
    let (store, config) = (app.store.clone(), app.config());
    body["collections_not_declared"] =
        match blocking(move || crate::collections_not_declared(&store, &config)).await {
            Ok(names) => json!(names),
            Err(e) => json!(format!("cannot be listed: {}", e.message)),
        };
    body["store_check_at_open"] = match app.store.open_check_now() {
        Some(Ok(check)) => json!({
            "damage_found": check.found_damage(),
            "digest_fixed": check.digest_fixed,
            "entries_recorded": check.entries_recorded,
            "entries": check.entries,
            "unreadable": check.unreadable,
        }),
        Some(Err(e)) => json!({ "failed": e }),
        None => json!({ "running": true }),
    };
    if let Some(r) = &app.replication {
        body["replication"] = json!(r.status());
    }
    if let Json::Object(extra) = app.pipeline.status_json() {
        for (k, v) in extra {
            body[k] = v;
        }
    }
    if let Some(v) = verified {
        body["verified"] = json!(v.is_ok());
        if let Err(problem) = v {
            body["verify_error"] = json!(problem);
        }
    }
    Ok(axum::Json(body).into_response())
}

/// The configured collections, for `status`.
fn collections_json(c: &edgerep_config::CollectionsConfig) -> Json {
    let declared: Vec<Json> = c
        .declared
        .iter()
        .map(|d| {
            json!({
                "name": d.name,
                "resolver": d.resolver,
                "transforms_on_ingest": d.transforms_on_ingest,
                "transforms_on_apply": d.transforms_on_apply,
                "durability": match d.durability {
                    edgerep_config::Durability::Immediate => "immediate",
                    edgerep_config::Durability::Periodic => "periodic",
                },
                "compare": if d.compare_on_versions { "versions" } else { "values" },
                "upgrades": d.upgrades.iter().map(|u| json!({
                    "effective_from": edgerep_config::format_ms(u.from_ms),
                    "from_ms": u.from_ms,
                    "resolver": u.resolver,
                    "transforms_on_apply": u.transforms_on_apply,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({"accept_undeclared": c.accept_undeclared, "declared": declared})
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReconcileQuery {
    peer: Option<String>,
}

/// Runs anti-entropy now with one peer (`?peer=ID`) or every connected peer, and answers with
/// what each session found and repaired once they end.
async fn reconcile(
    State(app): Shared,
    query: Result<Query<ReconcileQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request("bad_query", e.body_text()))?;
    let Some(replication) = &app.replication else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "no_peers",
            "this node has no [[peers]] to compare its state with".into(),
        ));
    };
    let peer = match q.peer {
        Some(p) => {
            let id = edgerep_wire::NodeId::parse(&p)
                .map_err(|e| ApiError::bad_request("bad_query", format!("peer {p:?}: {e}")))?;
            if !app.config().peers.iter().any(|c| c.id == id) {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "unknown_peer",
                    format!("{p:?} is not one of this node's [[peers]]"),
                ));
            }
            Some(id)
        }
        None => None,
    };
    // Answered before the request's own timeout (api.request_timeout_ms, 408): sessions still
    // running then are in the answer with their reports so far.
    let rx = replication.reconcile(peer, app.guard.request_timeout.mul_f64(0.8));
    let reports = rx
        .await
        .map_err(|_| ApiError::internal("the replicator stopped".into()))?
        .map_err(|e| {
            use crate::replication::NotReconciled;
            match e {
                NotReconciled::NotConnected(why) => {
                    ApiError::new(StatusCode::CONFLICT, "peer_not_connected", why)
                }
                NotReconciled::Busy(why) => {
                    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "busy", why)
                }
                NotReconciled::Failed(why) => ApiError::internal(why),
            }
        })?;
    Ok(axum::Json(json!({ "sessions": reports })).into_response())
}

/// `POST /v1/reload[?expect=DIGEST]`: reads the node's config file again and takes in what
/// changed (see `reload.rs`); 422 with the reasons when it cannot be taken in without a restart
/// (nothing changed); 409 `file_differs` when the file's digest is not `expect` (the file the
/// caller checked; nothing changed); 503 `reload_failed` when the node's store or a task
/// failed before anything changed (a retry may pass); 500 `reloaded_with_errors` when the new
/// config took effect but a step after failed.
async fn reload(
    State(app): Shared,
    query: Result<Query<ReloadQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request("bad_query", e.body_text()))?;
    let reloaded = app.reloader.reload_file(q.expect).await.map_err(|e| {
        if matches!(e, crate::reload::ReloadError::FileDiffers { .. }) {
            ApiError::new(StatusCode::CONFLICT, "file_differs", e.to_string())
        } else if e.took_effect() {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "reloaded_with_errors",
                e.to_string(),
            )
        } else if e.node_failed() {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "reload_failed",
                e.to_string(),
            )
        } else {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "not_reloaded",
                e.to_string(),
            )
        }
    })?;
    Ok(axum::Json(json!({ "reloaded": reloaded })).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReloadQuery {
    /// `edgerep_config::file_digest` of the file the caller checked.
    expect: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeadLettersQuery {
    #[serde(default)]
    after: u64,
    limit: Option<usize>,
}

fn read_dead_letter(id: u64, bytes: &[u8]) -> Result<crate::dead_letter::DeadLetter, ApiError> {
    crate::dead_letter::DeadLetter::decode(bytes)
        .map_err(|e| ApiError::internal(format!("dead letter {id}: {e}")))
}

/// The `limit` of a listing, `default` when absent: 1 to [`SCAN_LIMIT_MAX`], else 400
/// `bad_query` (an empty page is the end of a listing to a client, so 0 would end it at once).
fn page_limit(limit: Option<usize>, default: usize) -> Result<usize, ApiError> {
    match limit.unwrap_or(default) {
        n @ 1..=SCAN_LIMIT_MAX => Ok(n),
        _ => Err(ApiError::bad_request(
            "bad_query",
            format!("limit must be 1 to {SCAN_LIMIT_MAX}"),
        )),
    }
}

async fn dead_letters(
    State(app): Shared,
    query: Result<Query<DeadLettersQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request("bad_query", e.body_text()))?;
    let limit = page_limit(q.limit, 100)?;
    let store = app.store.clone();
    // The store ends a page at its byte budget; the records are decoded off the async workers.
    let list = blocking(move || {
        let rows = store.dead_letters(q.after, limit)?;
        Ok(rows
            .iter()
            .map(|(id, bytes)| Ok(read_dead_letter(*id, bytes)?.to_json(*id, false)))
            .collect::<Result<Vec<Json>, ApiError>>())
    })
    .await??;
    Ok(axum::Json(json!({"dead_letters": list})).into_response())
}

async fn metrics(State(app): Shared) -> Result<Response, ApiError> {
    let store = app.store.clone();
    let (s, disagreements, keys) = blocking(move || {
        Ok((
            store.status()?,
            store.disagreements_count()?,
            store.idempotency_count()?,
        ))
    })
    .await?;
    let replication = app.replication.as_ref().map(|r| r.status());
    let text = crate::metrics::render(&crate::metrics::Figures {
        store: &s,
        disagreements,
        idempotency_keys: keys,
        idempotency: &app.idempotency,
        replication: replication.as_ref(),
        uptime_seconds: app.started.elapsed().as_secs_f64(),
        commits: &app.commit_metrics,
        conflicts: &app.store.conflict_tally(),
        plugin_metrics: &app.pipeline.plugin_metrics(),
        stopped_collections: &app.pipeline.stopped_collections(),
        idempotency_dropped_early: app.store.idempotency_dropped_early(),
    });
    let mut r = Response::new(Body::from(text));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    Ok(r)
}

async fn disagreements(
    State(app): Shared,
    query: Result<Query<DeadLettersQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request("bad_query", e.body_text()))?;
    let limit = page_limit(q.limit, 100)?;
    let store = app.store.clone();
    let rows = blocking(move || store.disagreements(q.after, limit)).await?;
    let list: Vec<Json> = rows
        .into_iter()
        .map(|(id, d)| {
            let mut o = json!({
                "id": id,
                "collection": d.collection,
                "peer": d.peer,
                "versions_blake3": d.versions,
                "here": {"resolved_by": d.here_by, "resolution_blake3": d.here_resolution, "resolver_sha256": d.here_build},
                "on_peer": {"resolution_blake3": d.peer_resolution, "resolver_sha256": d.peer_build},
                "now_resolved_by": edgerep_store::BY_DEFAULT_AFTER_DISAGREEMENT,
                "at_ms": d.at_ms,
            });
            if let Some(obj) = o.as_object_mut() {
                key_json(obj, &d.key);
            }
            o
        })
        .collect();
    Ok(axum::Json(json!({"disagreements": list})).into_response())
}

fn dead_letter_id(uri: &Uri) -> Result<u64, ApiError> {
    let rest = uri.path().strip_prefix("/v1/dead-letters/").unwrap_or("");
    let id = rest.split('/').next().unwrap_or("");
    id.parse().map_err(|_| {
        ApiError::bad_request("bad_id", format!("dead letter id {id:?} is not a number"))
    })
}

async fn find_dead_letter(
    app: &Arc<AppState>,
    id: u64,
) -> Result<crate::dead_letter::DeadLetter, ApiError> {
    let not_found = || {
        ApiError::not_found(
            "dead_letter_not_found",
            format!(
                "no dead letter {id} (never given, or deleted, or replayed longer ago than idempotency records are kept)"
            ),
        )
    };
    let store = app.store.clone();
    match blocking(move || store.dead_letter(id)).await? {
        Some(bytes) => read_dead_letter(id, &bytes),
        None => Err(not_found()),
    }
}

async fn dead_letter(State(app): Shared, uri: Uri) -> Result<Response, ApiError> {
    let id = dead_letter_id(&uri)?;
    let d = find_dead_letter(&app, id).await?;
    Ok(axum::Json(d.to_json(id, true)).into_response())
}

/// Re-runs a dead letter's write through the collection's current transforms. If they accept
/// it, its changes are committed and the dead letter removed in the same transaction (so a
/// replay commits at most once); if a plugin fails again, nothing changes and the answer says why.
async fn delete_dead_letter(State(app): Shared, uri: Uri) -> Result<Response, ApiError> {
    let id = dead_letter_id(&uri)?;
    let removed = app
        .committer
        .remove_dead_letter(id)
        .await
        .map_err(ApiError::from)?;
    if !removed {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "dead_letter_not_found",
            format!("no dead letter {id} (deleted or replayed already?)"),
        ));
    }
    Ok(axum::Json(json!({"deleted": id})).into_response())
}

/// The key a replay's answer is kept under, with the replay's writes (a space: no client's
/// idempotency key holds one, so none can take it).
fn replay_receipt_key(id: u64) -> String {
    format!("dead-letter replay {id}")
}

/// The answer a replay of dead letter `id` got, if it was replayed and its record is still
/// kept (the idempotency window): a retry after a lost answer gets it again.
async fn replay_answered(app: &Arc<AppState>, id: u64) -> Result<Option<Response>, ApiError> {
    let store = app.store.clone();
    let key = replay_receipt_key(id);
    let Some(r) = blocking(move || store.idempotency(&key)).await? else {
        return Ok(None);
    };
    let list: Vec<Json> = r.committed.iter().map(committed_json).collect();
    Ok(Some(replayed(
        axum::Json(json!({"replayed": id, "committed": list})).into_response(),
    )))
}

async fn replay_dead_letter(State(app): Shared, uri: Uri) -> Result<Response, ApiError> {
    let id = dead_letter_id(&uri)?;
    let d = match find_dead_letter(&app, id).await {
        Ok(d) => d,
        Err(e) if e.status == StatusCode::NOT_FOUND => {
            return replay_answered(&app, id).await?.ok_or(e);
        }
        Err(e) => return Err(e),
    };
    if d.stage != crate::dead_letter::STAGE_INGEST {
        return Err(ApiError::bad_request(
            "not_replayable",
            format!(
                "dead letter {id} is from stage {:?} (an event from a peer): it stays in the changelog as received and cannot be replayed as a local write",
                d.stage
            ),
        ));
    }
    request::check_collection(&app.config(), &d.write.collection)?;
    let outcome = run_ingest(&app, vec![d.write], false).await?;
    if let Some(failed) = outcome.failed.first() {
        return Err(failed.to_replay_error(id));
    }
    let writes: Vec<LocalWrite> = outcome.accepted.into_iter().map(|(_, w)| w).collect();
    // The answer is kept with the writes, in their transaction.
    let key = replay_receipt_key(id);
    let receipt = edgerep_store::idempotency::Receipt {
        body: *blake3::hash(key.as_bytes()).as_bytes(),
        key,
        first: 0,
        count: writes.len(),
        extra: Vec::new(),
    };
    let committed = match app
        .committer
        .commit_keyed(writes, vec![id], vec![receipt])
        .await
    {
        Ok(c) => c,
        // A concurrent replay of it committed first: its answer.
        Err(e @ CommitError::DeadLetterGone(_)) => {
            return replay_answered(&app, id).await?.ok_or_else(|| e.into());
        }
        Err(e) => return Err(e.into()),
    };
    let list: Vec<Json> = committed.iter().map(committed_json).collect();
    Ok(axum::Json(json!({"replayed": id, "committed": list})).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cursor is good up to the lowest position any later run opened at: across several
    /// restarts, not only the last (run 2 lost positions past 90 that run 1 gave; run 3 opened
    /// at 120 after a clean stop, but 95 of run 1 still names another event).
    #[test]
    fn a_cursor_is_good_up_to_the_lowest_later_opening() {
        let run = FeedRun {
            generation: 3,
            runs: Arc::new(vec![(1, 0), (2, 90), (3, 120)]),
        };
        assert_eq!(run.good_up_to(1), Some(90));
        assert_eq!(run.good_up_to(2), Some(120));
        assert_eq!(run.good_up_to(3), None, "this run's own");
        assert_eq!(
            run.good_up_to(7),
            Some(0),
            "unknown: judged against every kept run"
        );
    }
}
