//! A small blocking client for the local API, used by the CLI verbs, the demo and the benchmark.

use std::io::BufRead;
use std::net::SocketAddr;
use std::time::Duration;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value as Json;

/// Characters left as they are in a path segment.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// How a request ended.
#[derive(Debug)]
pub enum Outcome {
    /// 2xx, with the body.
    Ok(Vec<u8>),
    /// 404 for a missing key (or other not-found).
    NotFound(String),
    /// Another 4xx: the node refused the request, with its message.
    Refused(u16, String),
    /// 5xx or the node could not be reached.
    Failed(String),
    /// The request could not be made (a header value or a path HTTP cannot carry): nothing
    /// was sent.
    NotSent(String),
}

/// Idle connections a client (and its clones) keeps open to its node for the next request.
const IDLE_CONNECTIONS: usize = 64;

/// A client for one node's local API.
#[derive(Clone)]
pub struct Client {
    base: String,
    agent: ureq::Agent,
    /// What it was built from (see [`Client::with_own_pool`]).
    addr: SocketAddr,
    token: Option<String>,
    answer_within: Option<Duration>,
}

// Not derived: the token stays out of logs.
impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// Whether `e` came before a connection to the node was made (nothing was sent): the address
/// is wrong, or nothing listens there.
fn not_connected(e: &ureq::Error) -> bool {
    use std::io::ErrorKind::*;
    match e {
        ureq::Error::Io(io) => matches!(
            io.kind(),
            ConnectionRefused | AddrNotAvailable | HostUnreachable | NetworkUnreachable
        ),
        ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => true,
        _ => false,
    }
}

/// Percent-encodes one path segment.
pub fn segment(s: &[u8]) -> String {
    percent_encoding::percent_encode(s, SEGMENT).to_string()
}

fn query_value(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

impl Client {
    /// A client for the API at `addr`.
    pub fn new(addr: SocketAddr) -> Client {
        Client::with_token(addr, None)
    }

    /// A client for the API at `addr` that sends `token` as its bearer token. It waits for
    /// answers as long as they take: for many requests (benchmarks, the demo); a one-off
    /// caller takes [`Client::with_timeout`].
    pub fn with_token(addr: SocketAddr, token: Option<String>) -> Client {
        Client::build(addr, token, None)
    }

    /// [`Client::with_token`], waiting at most `answer_within` for an answer (a node stopped
    /// or wedged must not hang the caller for ever). The timeout costs: measured with `bench
    /// ingest` on one build, 16 clients writing one event per request made 4,218 events/s
    /// with it and 8,917 without.
    pub fn with_timeout(
        addr: SocketAddr,
        token: Option<String>,
        answer_within: Duration,
    ) -> Client {
        Client::build(addr, token, Some(answer_within))
    }

    /// The same client with a connection pool of its own. Clones share one pool behind one
    /// lock: many threads each sending requests as fast as they can do better each with its own.
    pub fn with_own_pool(&self) -> Client {
        Client::build(self.addr, self.token.clone(), self.answer_within)
    }

    fn build(addr: SocketAddr, token: Option<String>, answer_within: Option<Duration>) -> Client {
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(5)))
            .timeout_global(answer_within)
            // Clones share one pool; ureq keeps 3 idle connections per host by default, so
            // 16 threads sharing a client opened a new TCP connection for most requests.
            .max_idle_connections(IDLE_CONNECTIONS)
            .max_idle_connections_per_host(IDLE_CONNECTIONS);
        if let Some(value) = token
            .as_ref()
            .and_then(|t| ureq::http::HeaderValue::from_str(&format!("Bearer {t}")).ok())
        {
            config = config.middleware(
                move |mut req: ureq::http::Request<ureq::SendBody>,
                      next: ureq::middleware::MiddlewareNext| {
                    req.headers_mut()
                        .insert(ureq::http::header::AUTHORIZATION, value.clone());
                    next.handle(req)
                },
            );
        }
        let agent: ureq::Agent = config.build().into();
        Client {
            base: format!("http://{addr}"),
            agent,
            addr,
            token,
            answer_within,
        }
    }

    fn finish(&self, r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Outcome {
        let mut resp = match r {
            Ok(r) => r,
            Err(ureq::Error::Timeout(_)) => {
                return Outcome::Failed(format!(
                    "no answer from the node at {} in time (is it stopped or overloaded?): whether the request took effect is unknown",
                    self.base
                ));
            }
            Err(e) if not_connected(&e) => {
                return Outcome::Failed(format!(
                    "cannot reach the node at {} (is it running? the address is api.listen in its config): {e}",
                    self.base
                ));
            }
            // Refused before anything was sent: the same request can never be made.
            Err(e @ (ureq::Error::Http(_) | ureq::Error::BadUri(_))) => {
                return Outcome::NotSent(format!(
                    "the request cannot be made, so nothing was sent (a key far over limits.max_key_bytes, or a control character in --idempotency-key or --context?): {e}"
                ));
            }
            // The connection was made: the request may have reached the node, and a write
            // may have committed before the connection broke.
            Err(e) => {
                return Outcome::Failed(format!(
                    "the connection to the node at {} broke before an answer came, so whether the request took effect is unknown (retry a write with the same --idempotency-key to be sure it happens once): {e}",
                    self.base
                ));
            }
        };
        let status = resp.status().as_u16();
        let body = match resp.body_mut().with_config().limit(1 << 30).read_to_vec() {
            Ok(b) => b,
            Err(e) => return Outcome::Failed(format!("reading the answer: {e}")),
        };
        let message = || {
            serde_json::from_slice::<Json>(&body)
                .ok()
                .and_then(|j| j.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned())
        };
        let kind = || {
            serde_json::from_slice::<Json>(&body)
                .ok()
                .and_then(|j| j.get("kind").and_then(|e| e.as_str()).map(str::to_owned))
        };
        match status {
            200..=299 => Outcome::Ok(body),
            // Absent only as a node says it: a 404 of a key or a dead letter. Another 404 of a
            // node (`unknown_peer`, `no_such_route`) is a refusal, and one that is not a node's
            // JSON is some other server's.
            404 if matches!(
                kind().as_deref(),
                Some("key_not_found" | "dead_letter_not_found")
            ) =>
            {
                Outcome::NotFound(message())
            }
            // The node's HTTP server refuses these itself, before any handler (no JSON):
            // headers over what it reads (a context of many entries), a path over 64 KiB.
            414 | 431 if kind().is_none() => Outcome::Refused(
                status,
                format!(
                    "the request's {} is longer than the node's HTTP server reads (a key far over limits.max_key_bytes?): nothing was written",
                    if status == 414 {
                        "path (its key, percent-encoded)"
                    } else {
                        "headers"
                    }
                ),
            ),
            400..=499 if kind().is_none() => Outcome::Failed(format!(
                "answered {status} without a node's JSON error (is api.listen another server's address?): {}",
                message()
            )),
            // Not a refusal: a write queued before the node's timeout may still commit.
            408 => Outcome::Failed(format!(
                "the node did not answer in time, so whether the request took effect is unknown (a write may still commit: retry a write with the same --idempotency-key to be sure it happens once): {}",
                message()
            )),
            // Not a refusal either: the first try with the key is still being committed, and
            // its outcome decides (it may still fail and write nothing).
            409 if kind().as_deref() == Some("idempotency_key_in_use") => Outcome::Failed(format!(
                "a request with the same idempotency key is still being committed, so whether this write takes effect is not known yet: retry with the same key to get its answer: {}",
                message()
            )),
            // Too many requests for now (a store verification ran lately): a retry passes.
            429 => Outcome::Failed(format!("the node asks to retry later: {}", message())),
            400..=499 => Outcome::Refused(status, message()),
            _ => Outcome::Failed(format!("node answered {status}: {}", message())),
        }
    }

    fn kv_url(&self, collection: &str, key: &[u8]) -> String {
        format!(
            "{}/v1/kv/{}/{}",
            self.base,
            segment(collection.as_bytes()),
            segment(key)
        )
    }

    /// PUT a JSON value.
    pub fn put_json(&self, collection: &str, key: &[u8], json: &str) -> Outcome {
        self.put_json_keyed(collection, key, json, None, None)
    }

    /// PUT a JSON value, with an idempotency key and the causal context of the read it is based
    /// on (`x-edgerep-context`) if given.
    pub fn put_json_keyed(
        &self,
        collection: &str,
        key: &[u8],
        json: &str,
        idempotency_key: Option<&str>,
        context: Option<&str>,
    ) -> Outcome {
        let mut req = self
            .agent
            .put(&self.kv_url(collection, key))
            .content_type("application/json");
        if let Some(k) = idempotency_key {
            req = req.header("idempotency-key", k);
        }
        if let Some(c) = context {
            req = req.header("x-edgerep-context", c);
        }
        self.finish(req.send(json.as_bytes()))
    }

    /// DELETE a key, with an idempotency key and a read's causal context if given.
    pub fn delete(
        &self,
        collection: &str,
        key: &[u8],
        idempotency_key: Option<&str>,
        context: Option<&str>,
    ) -> Outcome {
        let mut req = self.agent.delete(&self.kv_url(collection, key));
        if let Some(k) = idempotency_key {
            req = req.header("idempotency-key", k);
        }
        if let Some(c) = context {
            req = req.header("x-edgerep-context", c);
        }
        self.finish(req.call())
    }

    /// GET a key's value as JSON (or all its versions).
    pub fn get(&self, collection: &str, key: &[u8], versions: bool) -> Outcome {
        let mut url = self.kv_url(collection, key);
        if versions {
            url.push_str("?versions=true");
        }
        self.finish(self.agent.get(&url).call())
    }

    /// POST a batch body (JSON or CBOR).
    pub fn batch(&self, body: &[u8], cbor: bool) -> Outcome {
        self.batch_keyed(body, cbor, None)
    }

    /// POST a batch body, with an idempotency key for the whole request if given.
    pub fn batch_keyed(&self, body: &[u8], cbor: bool, idempotency_key: Option<&str>) -> Outcome {
        let ct = if cbor {
            "application/cbor"
        } else {
            "application/json"
        };
        let mut req = self
            .agent
            .post(&format!("{}/v1/batch", self.base))
            .content_type(ct);
        if cbor {
            req = req.header("accept", "application/cbor");
        }
        if let Some(k) = idempotency_key {
            req = req.header("idempotency-key", k);
        }
        self.finish(req.send(body))
    }

    /// One page of a scan.
    pub fn scan_page(&self, collection: &str, params: &[(&str, &str)]) -> Outcome {
        let mut url = format!("{}/v1/scan/{}", self.base, segment(collection.as_bytes()));
        for (i, (k, v)) in params.iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(&format!("{k}={}", query_value(v)));
        }
        self.finish(self.agent.get(&url).call())
    }

    /// Status JSON.
    pub fn status(&self, verify: bool) -> Outcome {
        let url = format!(
            "{}/v1/status{}",
            self.base,
            if verify { "?verify=true" } else { "" }
        );
        self.finish(self.agent.get(&url).call())
    }

    /// The node's metrics, as OpenMetrics text (`GET /metrics`).
    pub fn metrics(&self) -> Outcome {
        self.finish(self.agent.get(&format!("{}/metrics", self.base)).call())
    }

    /// POST /v1/reload (reread the config file and apply what may change while running), with
    /// `expect` the digest of the file the caller checked (`edgerep_config::file_digest`): the
    /// node refuses (409) when its file differs.
    pub fn reload(&self, expect: Option<&str>) -> Outcome {
        let url = match expect {
            Some(d) => format!("{}/v1/reload?expect={}", self.base, query_value(d)),
            None => format!("{}/v1/reload", self.base),
        };
        self.finish(self.agent.post(&url).send_empty())
    }

    /// POST /v1/reconcile (anti-entropy now, with one peer or every connected one).
    pub fn reconcile(&self, peer: Option<&str>) -> Outcome {
        let url = match peer {
            Some(p) => format!("{}/v1/reconcile?peer={}", self.base, query_value(p)),
            None => format!("{}/v1/reconcile", self.base),
        };
        self.finish(self.agent.post(&url).send_empty())
    }

    /// A page of dead letters.
    pub fn dead_letters(&self, after: u64, limit: usize) -> Outcome {
        let url = format!("{}/v1/dead-letters?after={after}&limit={limit}", self.base);
        self.finish(self.agent.get(&url).call())
    }

    /// One dead letter.
    pub fn dead_letter(&self, id: u64) -> Outcome {
        self.finish(
            self.agent
                .get(&format!("{}/v1/dead-letters/{id}", self.base))
                .call(),
        )
    }

    /// Replays one dead letter.
    /// DELETE a dead letter.
    pub fn delete_dead_letter(&self, id: u64) -> Outcome {
        self.finish(
            self.agent
                .delete(&format!("{}/v1/dead-letters/{id}", self.base))
                .call(),
        )
    }

    /// Replays dead letter `id`.
    pub fn replay_dead_letter(&self, id: u64) -> Outcome {
        self.finish(
            self.agent
                .post(&format!("{}/v1/dead-letters/{id}/replay", self.base))
                .send_empty(),
        )
    }

    /// Streams the watch feed, calling `line` for each event's JSON line until it returns false
    /// or the stream ends. A stream the node ends before it should (a follow stream, or fewer
    /// events than a `limit` asked) is a failure naming the last position read, and a last
    /// line saying why (the feed compacted under the stream) is the outcome, not a line.
    pub fn watch(&self, params: &[(&str, String)], mut line: impl FnMut(&str) -> bool) -> Outcome {
        let follow = !params.iter().any(|(k, v)| *k == "follow" && v == "false");
        let limit = params
            .iter()
            .find(|(k, _)| *k == "limit")
            .and_then(|(_, v)| v.parse::<u64>().ok());
        let mut url = format!("{}/v1/watch", self.base);
        for (i, (k, v)) in params.iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(&format!("{k}={}", query_value(v)));
        }
        // A watch stream runs for as long as the caller wants.
        let resp = match self
            .agent
            .get(&url)
            .config()
            .timeout_global(None)
            .build()
            .call()
        {
            Ok(r) if r.status().is_success() => r,
            other => return self.finish(other),
        };
        let reader = std::io::BufReader::new(resp.into_body().into_reader());
        // The last line's position and the generation of the run that gave it.
        let mut last: Option<(u64, Option<u64>)> = None;
        let mut events: u64 = 0;
        let resume = |last: Option<(u64, Option<u64>)>| match last {
            Some((p, Some(g))) => format!("watch again from --after {p} --generation {g}"),
            Some((p, None)) => format!("watch again from --after {p}"),
            None => "watch again from the same position".to_owned(),
        };
        for l in reader.lines() {
            let l = match l {
                Ok(l) => l,
                Err(e) => {
                    return Outcome::Failed(format!("watch stream broke: {e}; {}", resume(last)));
                }
            };
            let parsed: Option<serde_json::Value> = serde_json::from_str(&l).ok();
            if let Some(end) = parsed.as_ref().filter(|j| j.get("error").is_some()) {
                let message = end["error"].as_str().unwrap_or("").to_owned();
                return match end["kind"].as_str() {
                    Some("compacted") => Outcome::Refused(410, message),
                    _ => Outcome::Failed(format!(
                        "the node ended the watch stream: {message}; {}",
                        resume(last)
                    )),
                };
            }
            if let Some(j) = &parsed
                && let Some(p) = j["position"].as_u64()
            {
                last = Some((p, j["generation"].as_u64()));
            }
            events += 1;
            if !line(&l) {
                return Outcome::Ok(Vec::new());
            }
        }
        if follow && limit.is_none_or(|n| events < n) {
            return Outcome::Failed(format!(
                "the node ended the watch stream (shutting down, or its API token changed); {}",
                resume(last)
            ));
        }
        Outcome::Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node that takes the connection and never answers (stopped, wedged, out of
    /// connections): the call ends within its timeout, saying the outcome is unknown. It
    /// once waited for ever.
    #[test]
    fn a_node_that_never_answers_does_not_hang_the_caller() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let client = Client::with_timeout(addr, None, Duration::from_millis(500));
        let started = std::time::Instant::now();
        let outcome = client.status(false);
        assert!(started.elapsed() < Duration::from_secs(10));
        match outcome {
            Outcome::Failed(m) => assert!(m.contains("unknown"), "{m}"),
            other => panic!("expected a failure, got {other:?}"),
        }
        drop(listener);
    }
}
