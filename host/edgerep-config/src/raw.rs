//! The file as serde reads it: every table denies unknown keys, and values whose syntax can be
//! checked on their own (node ids, socket addresses, peer addresses, collection names) are checked
//! while deserializing, so the error carries the key path and the value's position.
//!
//! Rules that relate several values (uniqueness, limits against each other) live in
//! `crate::validate`.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use edgerep_wire::event::{NodeId, check_collection_name};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

/// Default for `node.max_clock_skew_ms`.
pub(crate) const DEFAULT_MAX_CLOCK_SKEW_MS: u64 = 60_000;
/// Default for `limits.max_key_bytes`.
pub(crate) const DEFAULT_MAX_KEY_BYTES: usize = 1024;
/// Default for `limits.max_value_bytes`.
pub(crate) const DEFAULT_MAX_VALUE_BYTES: usize = 65_536;
/// Default for `limits.max_value_depth`.
pub(crate) const DEFAULT_MAX_VALUE_DEPTH: usize = 32;
/// Default for `limits.max_meta_entries`.
pub(crate) const DEFAULT_MAX_META_ENTRIES: usize = 16;
/// Default for `limits.max_dead_letters`.
pub(crate) const DEFAULT_MAX_DEAD_LETTERS: u64 = 100_000;
/// Default for `limits.max_dead_letter_bytes` (256 MiB).
pub(crate) const DEFAULT_MAX_DEAD_LETTER_BYTES: u64 = 256 * 1024 * 1024;
/// Default for `limits.max_meta_bytes`.
pub(crate) const DEFAULT_MAX_META_BYTES: usize = 4096;
/// Default for `replication.extra_origins`.
pub(crate) const DEFAULT_EXTRA_ORIGINS: usize = 16;
/// Default for `api.max_connections`.
pub(crate) const DEFAULT_API_MAX_CONNECTIONS: usize = 256;
/// Default for `api.request_timeout_ms`.
pub(crate) const DEFAULT_API_REQUEST_TIMEOUT_MS: u64 = 30_000;
/// Default for `api.max_body_bytes_in_flight`.
pub(crate) const DEFAULT_API_MAX_BODY_BYTES_IN_FLIGHT: usize = 64 * 1024 * 1024;
/// Default for `api.max_watch_streams`.
pub(crate) const DEFAULT_API_MAX_WATCH_STREAMS: usize = 64;
/// Default for `api.verify_interval_ms`.
pub(crate) const DEFAULT_API_VERIFY_INTERVAL_MS: u64 = 10_000;
/// Default for `limits.max_batch_events`.
pub(crate) const DEFAULT_MAX_BATCH_EVENTS: usize = 10_000;
/// Default for `limits.max_request_bytes`.
pub(crate) const DEFAULT_MAX_REQUEST_BYTES: usize = 16 * 1024 * 1024;
/// Default for `commit.max_events`.
pub(crate) const DEFAULT_COMMIT_MAX_EVENTS: usize = 1000;
/// The only conflict resolver so far: last writer wins.
pub(crate) const RESOLVER_LWW: &str = "lww";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub(crate) node: RawNode,
    pub(crate) api: RawApi,
    pub(crate) replication: RawReplication,
    #[serde(default)]
    pub(crate) peers: Vec<RawPeer>,
    #[serde(default)]
    pub(crate) collections: RawCollections,
    #[serde(default)]
    pub(crate) limits: RawLimits,
    #[serde(default)]
    pub(crate) commit: RawCommit,
    #[serde(default)]
    pub(crate) retention: RawRetention,
    #[serde(default)]
    pub(crate) tracing: RawTracing,
    #[serde(default)]
    pub(crate) plugins: BTreeMap<String, RawPlugin>,
    #[serde(default)]
    pub(crate) authorization: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub(crate) revoked: Vec<RawRevoked>,
}

/// One `[[revoked]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRevoked {
    #[serde(deserialize_with = "node_id")]
    pub(crate) node: NodeId,
    /// Required (checked in `validate`): left out, it silently meant 0, refusing the node's
    /// whole history, which nodes that lack it could then never get.
    pub(crate) after_seq: Option<u64>,
}

/// One `[plugins.NAME]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPlugin {
    pub(crate) path: String,
    #[serde(deserialize_with = "sha256_hex")]
    pub(crate) sha256: String,
    #[serde(default = "default_plugin_fuel")]
    pub(crate) fuel: u64,
    #[serde(default = "default_plugin_memory_bytes")]
    pub(crate) memory_bytes: usize,
    #[serde(default = "default_plugin_deadline_ms")]
    pub(crate) deadline_ms: u64,
    #[serde(default)]
    pub(crate) on_failure: RawFailurePolicy,
    #[serde(default)]
    pub(crate) params: BTreeMap<String, String>,
}

/// `on_failure` of a plugin.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum RawFailurePolicy {
    #[default]
    DeadLetter,
    Skip,
    Halt,
}

/// Default for `plugins.NAME.fuel`: ten million instructions' worth per call.
pub(crate) const DEFAULT_PLUGIN_FUEL: u64 = 10_000_000;
/// Default for `plugins.NAME.memory_bytes`: 16 MiB.
pub(crate) const DEFAULT_PLUGIN_MEMORY_BYTES: usize = 16 * 1024 * 1024;
/// Default for `plugins.NAME.deadline_ms`.
pub(crate) const DEFAULT_PLUGIN_DEADLINE_MS: u64 = 1000;

fn default_plugin_fuel() -> u64 {
    DEFAULT_PLUGIN_FUEL
}
fn default_plugin_memory_bytes() -> usize {
    DEFAULT_PLUGIN_MEMORY_BYTES
}
fn default_plugin_deadline_ms() -> u64 {
    DEFAULT_PLUGIN_DEADLINE_MS
}

/// A string holding a sha256 digest as 64 hex digits (stored lowercase).
fn sha256_hex<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let text = String::deserialize(d)?;
    if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(D::Error::custom(format!(
            "invalid sha256 {text:?}: expected 64 hex digits (`edgerep plugin check FILE.wasm` prints it)"
        )));
    }
    Ok(text.to_ascii_lowercase())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNode {
    #[serde(deserialize_with = "node_id")]
    pub(crate) id: NodeId,
    pub(crate) data_dir: String,
    #[serde(default = "default_max_clock_skew_ms")]
    pub(crate) max_clock_skew_ms: u64,
    #[serde(default = "default_sync_interval_ms")]
    pub(crate) sync_interval_ms: u64,
}

/// `[api]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawApi {
    #[serde(deserialize_with = "socket_addr")]
    pub(crate) listen: SocketAddr,
    pub(crate) token_file: Option<String>,
    #[serde(default = "default_api_max_connections")]
    pub(crate) max_connections: usize,
    #[serde(default = "default_api_request_timeout_ms")]
    pub(crate) request_timeout_ms: u64,
    /// Unset: [`default_max_watch_streams`] of `max_connections`.
    pub(crate) max_watch_streams: Option<usize>,
    #[serde(default = "default_api_max_body_bytes_in_flight")]
    pub(crate) max_body_bytes_in_flight: usize,
    #[serde(default = "default_api_verify_interval_ms")]
    pub(crate) verify_interval_ms: u64,
    #[serde(default = "default_api_idempotency_window_ms")]
    pub(crate) idempotency_window_ms: u64,
    #[serde(default = "default_api_idempotency_max_keys")]
    pub(crate) idempotency_max_keys: u64,
}

fn default_api_max_connections() -> usize {
    DEFAULT_API_MAX_CONNECTIONS
}
fn default_api_request_timeout_ms() -> u64 {
    DEFAULT_API_REQUEST_TIMEOUT_MS
}
/// `api.max_watch_streams` when not given: 64, but at most half of `max_connections`, so that
/// watch streams never take every connection.
pub(crate) fn default_max_watch_streams(max_connections: usize) -> usize {
    DEFAULT_API_MAX_WATCH_STREAMS.min(max_connections / 2)
}
fn default_api_max_body_bytes_in_flight() -> usize {
    DEFAULT_API_MAX_BODY_BYTES_IN_FLIGHT
}
fn default_api_verify_interval_ms() -> u64 {
    DEFAULT_API_VERIFY_INTERVAL_MS
}
fn default_api_idempotency_window_ms() -> u64 {
    24 * 3600 * 1000
}
fn default_api_idempotency_max_keys() -> u64 {
    100_000
}
fn default_extra_origins() -> usize {
    DEFAULT_EXTRA_ORIGINS
}
fn default_anti_entropy_interval_ms() -> u64 {
    60_000
}
fn default_idle_timeout_ms() -> u64 {
    10_000
}
fn default_max_meta_bytes() -> usize {
    DEFAULT_MAX_META_BYTES
}

/// `[replication]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawReplication {
    #[serde(deserialize_with = "socket_addr")]
    pub(crate) listen: SocketAddr,
    pub(crate) ca: Option<String>,
    pub(crate) cert: Option<String>,
    pub(crate) key: Option<String>,
    #[serde(default = "default_extra_origins")]
    pub(crate) extra_origins: usize,
    #[serde(default = "yes")]
    pub(crate) authenticate: bool,
    #[serde(default = "default_anti_entropy_interval_ms")]
    pub(crate) anti_entropy_interval_ms: u64,
    #[serde(default = "default_idle_timeout_ms")]
    pub(crate) idle_timeout_ms: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPeer {
    #[serde(deserialize_with = "node_id")]
    pub(crate) id: NodeId,
    #[serde(deserialize_with = "peer_address")]
    pub(crate) address: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCollections {
    #[serde(default)]
    pub(crate) accept_undeclared: bool,
    #[serde(default)]
    pub(crate) declared: Vec<RawCollection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCollection {
    #[serde(deserialize_with = "collection_name")]
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) transforms_on_ingest: Vec<String>,
    #[serde(default)]
    pub(crate) transforms_on_apply: Vec<String>,
    #[serde(default = "default_resolver")]
    pub(crate) resolver: String,
    #[serde(default)]
    pub(crate) durability: RawDurability,
    pub(crate) compare: Option<RawCompare>,
    #[serde(default)]
    pub(crate) upgrades: Vec<RawUpgrade>,
}

/// One `[[collections.declared.upgrades]]` entry: what decides the collection's state from a
/// hybrid-clock time on.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpgrade {
    pub(crate) effective_from: RawTime,
    pub(crate) resolver: Option<String>,
    pub(crate) transforms_on_apply: Option<Vec<String>>,
}

/// A point in time: RFC 3339 text, or milliseconds since the Unix epoch.
#[derive(Debug, Clone)]
pub(crate) enum RawTime {
    Millis(u64),
    Text(String),
}

impl<'de> Deserialize<'de> for RawTime {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<RawTime, D::Error> {
        struct Time;
        impl serde::de::Visitor<'_> for Time {
            type Value = RawTime;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(
                    "a time: RFC 3339 text such as \"2026-12-03T18:00:00Z\", or milliseconds since the Unix epoch",
                )
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RawTime, E> {
                Ok(RawTime::Millis(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RawTime, E> {
                u64::try_from(v)
                    .map(RawTime::Millis)
                    .map_err(|_| E::custom(format!("{v} is before 1970: a time is RFC 3339 text or milliseconds since the Unix epoch")))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawTime, E> {
                Ok(RawTime::Text(v.to_owned()))
            }
        }
        d.deserialize_any(Time)
    }
}

impl RawTime {
    /// Milliseconds since the Unix epoch, or why the value is not a time.
    pub(crate) fn millis(&self) -> Result<u64, String> {
        match self {
            RawTime::Millis(ms) => Ok(*ms),
            RawTime::Text(text) => {
                let t = time::OffsetDateTime::parse(
                    text,
                    &time::format_description::well_known::Rfc3339,
                )
                .map_err(|e| {
                    format!(
                        "{text:?} is not an RFC 3339 time such as \"2026-12-03T18:00:00Z\" ({e}); milliseconds since the Unix epoch work too"
                    )
                })?;
                u64::try_from(t.unix_timestamp_nanos() / 1_000_000)
                    .map_err(|_| format!("{text:?} is before 1970"))
            }
        }
    }
}

/// `compare` of a collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum RawCompare {
    Values,
    Versions,
}

/// `durability` of a collection.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum RawDurability {
    #[default]
    Immediate,
    Periodic,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimits {
    #[serde(default = "default_max_key_bytes")]
    pub(crate) max_key_bytes: usize,
    #[serde(default = "default_max_value_bytes")]
    pub(crate) max_value_bytes: usize,
    #[serde(default = "default_max_value_depth")]
    pub(crate) max_value_depth: usize,
    #[serde(default = "default_max_meta_entries")]
    pub(crate) max_meta_entries: usize,
    #[serde(default = "default_max_meta_bytes")]
    pub(crate) max_meta_bytes: usize,
    #[serde(default = "default_max_batch_events")]
    pub(crate) max_batch_events: usize,
    #[serde(default = "default_max_request_bytes")]
    pub(crate) max_request_bytes: usize,
    #[serde(default = "default_max_dead_letters")]
    pub(crate) max_dead_letters: u64,
    #[serde(default = "default_max_dead_letter_bytes")]
    pub(crate) max_dead_letter_bytes: u64,
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            max_key_bytes: default_max_key_bytes(),
            max_value_bytes: default_max_value_bytes(),
            max_value_depth: default_max_value_depth(),
            max_meta_entries: default_max_meta_entries(),
            max_meta_bytes: default_max_meta_bytes(),
            max_batch_events: default_max_batch_events(),
            max_request_bytes: default_max_request_bytes(),
            max_dead_letters: default_max_dead_letters(),
            max_dead_letter_bytes: default_max_dead_letter_bytes(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCommit {
    #[serde(default = "default_commit_max_events")]
    pub(crate) max_events: usize,
}

impl Default for RawCommit {
    fn default() -> Self {
        RawCommit {
            max_events: default_commit_max_events(),
        }
    }
}

/// `[tracing]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTracing {
    pub(crate) otlp_endpoint: Option<String>,
}

/// `[retention]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRetention {
    #[serde(default = "yes")]
    pub(crate) compact: bool,
    #[serde(default = "default_keep_events")]
    pub(crate) keep_events: u64,
    #[serde(default = "default_retention_interval_ms")]
    pub(crate) interval_ms: u64,
    #[serde(default = "default_peer_absent_ms")]
    pub(crate) peer_absent_ms: u64,
    #[serde(default = "default_max_held_events")]
    pub(crate) max_held_events: u64,
}

impl Default for RawRetention {
    fn default() -> Self {
        RawRetention {
            compact: true,
            keep_events: default_keep_events(),
            interval_ms: default_retention_interval_ms(),
            peer_absent_ms: default_peer_absent_ms(),
            max_held_events: default_max_held_events(),
        }
    }
}

fn yes() -> bool {
    true
}
fn default_keep_events() -> u64 {
    100_000
}
fn default_retention_interval_ms() -> u64 {
    10_000
}
/// Seven days.
fn default_peer_absent_ms() -> u64 {
    7 * 24 * 3600 * 1000
}
/// Ten million entries per origin (about 2 GB of 200-byte events).
pub(crate) const DEFAULT_MAX_HELD_EVENTS: u64 = 10_000_000;
fn default_max_held_events() -> u64 {
    DEFAULT_MAX_HELD_EVENTS
}

/// Default for `node.sync_interval_ms`.
pub(crate) const DEFAULT_SYNC_INTERVAL_MS: u64 = 20;

fn default_sync_interval_ms() -> u64 {
    DEFAULT_SYNC_INTERVAL_MS
}

fn default_max_clock_skew_ms() -> u64 {
    DEFAULT_MAX_CLOCK_SKEW_MS
}
fn default_max_key_bytes() -> usize {
    DEFAULT_MAX_KEY_BYTES
}
fn default_max_value_bytes() -> usize {
    DEFAULT_MAX_VALUE_BYTES
}
fn default_max_dead_letters() -> u64 {
    DEFAULT_MAX_DEAD_LETTERS
}
fn default_max_dead_letter_bytes() -> u64 {
    DEFAULT_MAX_DEAD_LETTER_BYTES
}
fn default_max_value_depth() -> usize {
    DEFAULT_MAX_VALUE_DEPTH
}
fn default_max_meta_entries() -> usize {
    DEFAULT_MAX_META_ENTRIES
}
fn default_max_batch_events() -> usize {
    DEFAULT_MAX_BATCH_EVENTS
}
fn default_max_request_bytes() -> usize {
    DEFAULT_MAX_REQUEST_BYTES
}
fn default_commit_max_events() -> usize {
    DEFAULT_COMMIT_MAX_EVENTS
}
fn default_resolver() -> String {
    RESOLVER_LWW.to_owned()
}

/// A string holding a valid node id.
fn node_id<'de, D: Deserializer<'de>>(d: D) -> Result<NodeId, D::Error> {
    let text = String::deserialize(d)?;
    NodeId::parse(&text).map_err(D::Error::custom)
}

/// A string holding a valid collection name.
fn collection_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let text = String::deserialize(d)?;
    check_collection_name(&text).map_err(D::Error::custom)?;
    Ok(text)
}

/// A string holding `ip:port` (`127.0.0.1:7070`, `[::1]:7070`).
fn socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map_err(|_| {
        D::Error::custom(format!(
            "invalid socket address {text:?}: expected an IP address and port such as \
             \"127.0.0.1:7070\" or \"[::1]:7070\" (host names are not accepted here)"
        ))
    })
}

/// A string holding `host:port`, checked by [`check_peer_address`].
fn peer_address<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let text = String::deserialize(d)?;
    check_peer_address(&text).map_err(D::Error::custom)?;
    Ok(text)
}

/// Checks a peer address: `host:port` where host is a DNS name, an IPv4 address or a bracketed
/// IPv6 address, and port is 1..=65535.
pub(crate) fn check_peer_address(address: &str) -> Result<(), String> {
    let Some((host, port)) = address.rsplit_once(':') else {
        return Err(format!(
            "invalid peer address {address:?}: expected \"host:port\", e.g. \"site-b.example:7071\""
        ));
    };
    if host.is_empty() {
        return Err(format!(
            "invalid peer address {address:?}: the host is empty"
        ));
    }
    if let Some(inner) = host.strip_prefix('[') {
        let ok = inner
            .strip_suffix(']')
            .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok());
        if !ok {
            return Err(format!(
                "invalid peer address {address:?}: {host:?} is not a bracketed IPv6 address"
            ));
        }
    } else if host.contains(':') {
        return Err(format!(
            "invalid peer address {address:?}: write an IPv6 host in brackets, e.g. \"[::1]:7071\""
        ));
    } else if host
        .rsplit('.')
        .next()
        .is_some_and(|last| !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()))
        && host.parse::<std::net::Ipv4Addr>().is_err()
    {
        // No DNS name ends in an all-digit label; the resolver would read "192.168.1" as
        // 192.168.0.1 and "127.1" as 127.0.0.1, so a typo would dial another machine.
        return Err(format!(
            "invalid peer address {address:?}: host {host:?} is not an IPv4 address (four numbers 0..=255 separated by dots, e.g. \"192.168.1.20\")"
        ));
    } else if !is_dns_name_or_ipv4(host) {
        return Err(format!(
            "invalid peer address {address:?}: host {host:?} is not a DNS name or IP address"
        ));
    }
    match port.parse::<u16>() {
        Ok(0) => Err(format!(
            "invalid peer address {address:?}: port must be 1..=65535, not 0"
        )),
        Ok(_) => Ok(()),
        Err(_) if port.is_empty() => Err(format!(
            "invalid peer address {address:?}: the port is missing, expected \"host:port\""
        )),
        Err(_) => Err(format!(
            "invalid port {port:?} in peer address {address:?}: expected a number in 1..=65535"
        )),
    }
}

/// Dot-separated labels of ASCII letters, digits and `-` (which also covers dotted IPv4).
fn is_dns_name_or_ipv4(host: &str) -> bool {
    host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::check_peer_address;

    #[test]
    fn peer_addresses() {
        for ok in [
            "127.0.0.1:7171",
            "site-b:7071",
            "site-b.example.com:1",
            "[::1]:65535",
            "localhost:7071",
        ] {
            assert_eq!(check_peer_address(ok), Ok(()), "{ok}");
        }
        for (bad, needle) in [
            ("site-b", "expected \"host:port\""),
            (":7071", "host is empty"),
            ("site-b:", "port is missing"),
            ("site-b:0", "not 0"),
            ("site-b:99999", "invalid port \"99999\""),
            ("site-b:http", "invalid port \"http\""),
            ("::1:7071", "brackets"),
            ("192.168.1:7071", "not an IPv4 address"),
            ("10.0.0.256:7071", "not an IPv4 address"),
            ("127.1:7071", "not an IPv4 address"),
            ("1234:7071", "not an IPv4 address"),
            ("[zz]:7071", "bracketed IPv6"),
            ("bad host:7071", "not a DNS name"),
            ("a..b:7071", "not a DNS name"),
        ] {
            let err = check_peer_address(bad).unwrap_err();
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }
}
