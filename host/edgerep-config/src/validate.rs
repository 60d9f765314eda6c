//! Rules checked after the file deserialized: uniqueness, relations between values, and values
//! that are well-formed but not supported (yet).

use std::collections::HashMap;

use crate::error::{Seg, render_path};
use crate::raw::{RESOLVER_LWW, RawConfig};

/// A rule violation: the key path to blame and the message.
pub(crate) type Violation = (Vec<Seg>, String);

/// Checks every rule, returning the first violation in file order (roughly).
pub(crate) fn validate(raw: &RawConfig) -> Result<(), Violation> {
    check_node(raw)?;
    check_listeners(raw)?;
    check_peers(raw)?;
    check_plugins(raw)?;
    check_collections(raw)?;
    check_limits(raw)?;
    check_retention(raw)?;
    check_tracing(raw)?;
    check_api(raw)?;
    check_authorization(raw)?;
    Ok(())
}

/// The largest frame a peer message may take (the transport's limit).
pub(crate) const MAX_FRAME_BYTES: usize = 8 << 20;
/// Largest `node.max_clock_skew_ms`: one day.
const MAX_CLOCK_SKEW_MS: u64 = 86_400_000;

/// A path the config names is taken as written (relative to the config file's directory):
/// no shell expands `~` or `$VAR` in it, so one that starts so would name a directory called
/// `~` or `$HOME` beside the config file, created there without a word.
fn check_path(at: Vec<Seg>, path: &str) -> Result<(), Violation> {
    if path.starts_with('~') || path.contains('$') {
        return Err((
            at,
            format!(
                "{path:?}: `~` and `$` are not expanded here (no shell reads this file); write the path out in full, e.g. \"/var/lib/edgerep\", or relative to this file's directory"
            ),
        ));
    }
    Ok(())
}

fn check_api(raw: &RawConfig) -> Result<(), Violation> {
    let api = &raw.api;
    if let Some(file) = &api.token_file {
        check_path(vec![Seg::Key("api"), Seg::Key("token_file")], file)?;
    }
    if api
        .token_file
        .as_deref()
        .is_some_and(|f| f.trim().is_empty())
    {
        return Err((
            vec![Seg::Key("api"), Seg::Key("token_file")],
            "must not be empty: name a file holding the bearer token".to_owned(),
        ));
    }
    if !api.listen.ip().is_loopback() && api.token_file.is_none() {
        return Err((
            vec![Seg::Key("api"), Seg::Key("listen")],
            format!(
                "{} is not a loopback address: anyone who can reach it could write and read \
                 every collection; set api.token_file to a file holding a bearer token (clients \
                 send `authorization: Bearer TOKEN`), or listen on 127.0.0.1",
                api.listen
            ),
        ));
    }
    for (key, value) in [
        ("max_connections", api.max_connections),
        ("max_watch_streams", api.max_watch_streams.unwrap_or(1)),
        ("request_timeout_ms", api.request_timeout_ms as usize),
        ("idempotency_window_ms", api.idempotency_window_ms as usize),
        ("idempotency_max_keys", api.idempotency_max_keys as usize),
    ] {
        if value == 0 {
            return Err((
                vec![Seg::Key("api"), Seg::Key(key)],
                "must be greater than 0".to_owned(),
            ));
        }
    }
    for (key, value) in [
        ("max_connections", api.max_connections),
        ("max_watch_streams", api.max_watch_streams.unwrap_or(0)),
    ] {
        if value > MAX_API_PERMITS {
            return Err((
                vec![Seg::Key("api"), Seg::Key(key)],
                format!("{value} is over {MAX_API_PERMITS}"),
            ));
        }
    }
    if let Some(watches) = api.max_watch_streams
        && watches >= api.max_connections
    {
        return Err((
            vec![Seg::Key("api"), Seg::Key("max_watch_streams")],
            format!(
                "{} must be less than api.max_connections ({}): each watch stream holds a \
                 connection for as long as it follows, so watch streams alone could take every \
                 one, and writes, `edgerep status` and `edgerep reload` would wait in the \
                 kernel's backlog",
                watches, api.max_connections
            ),
        ));
    }
    Ok(())
}

/// Most connections or watch streams the API may be configured to hold at once.
const MAX_API_PERMITS: usize = 1_000_000;

fn check_authorization(raw: &RawConfig) -> Result<(), Violation> {
    for (origin, collections) in &raw.authorization {
        let at = vec![Seg::Key("authorization"), Seg::Name(origin.clone())];
        if let Err(e) = edgerep_wire::NodeId::parse(origin) {
            return Err((at, format!("invalid origin (a node id): {e}")));
        }
        for (i, c) in collections.iter().enumerate() {
            if let Err(e) = edgerep_wire::event::check_collection_name(c) {
                let mut path = at.clone();
                path.push(Seg::Index(i));
                return Err((path, e.to_string()));
            }
        }
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, r) in raw.revoked.iter().enumerate() {
        if r.node == raw.node.id {
            return Err((
                vec![Seg::Key("revoked"), Seg::Index(i), Seg::Key("node")],
                "is this node's own id: a revoked node must not run".to_owned(),
            ));
        }
        if r.after_seq.is_none() {
            return Err((
                vec![Seg::Key("revoked"), Seg::Index(i), Seg::Key("after_seq")],
                format!(
                    "missing: the last of {:?}'s events to keep (its later events are refused \
                     wherever they come from); `after_seq = 0` refuses all of them, and nodes \
                     that lack them then never get them",
                    r.node.as_str()
                ),
            ));
        }
        if let Some(first) = seen.insert(r.node.as_str(), i) {
            return Err((
                vec![Seg::Key("revoked"), Seg::Index(i), Seg::Key("node")],
                format!(
                    "node {:?} is revoked twice (also at {})",
                    r.node.as_str(),
                    render_path(&[Seg::Key("revoked"), Seg::Index(first)])
                ),
            ));
        }
    }
    Ok(())
}

fn check_tracing(raw: &RawConfig) -> Result<(), Violation> {
    if let Some(e) = &raw.tracing.otlp_endpoint {
        // The exporter is built without TLS: an https:// endpoint would take the config and
        // export nothing, silently.
        if e.starts_with("https://") {
            return Err((
                vec![Seg::Key("tracing"), Seg::Key("otlp_endpoint")],
                format!(
                    "{e:?}: https:// is not supported (this build exports over plain HTTP, without TLS); export to a collector on this machine or site, e.g. an OpenTelemetry Collector at \"http://127.0.0.1:4318/v1/traces\", which forwards over TLS"
                ),
            ));
        }
        let rest = e.strip_prefix("http://");
        if rest.is_none_or(|r| r.is_empty() || r.contains(char::is_whitespace)) {
            return Err((
                vec![Seg::Key("tracing"), Seg::Key("otlp_endpoint")],
                format!(
                    "{e:?} is not an http:// URL (the collector's OTLP/HTTP traces endpoint, e.g. \"http://127.0.0.1:4318/v1/traces\")"
                ),
            ));
        }
        // The exporter parses it at start: a URL it refuses must not pass `config check`.
        if let Err(why) = e.parse::<http::Uri>() {
            return Err((
                vec![Seg::Key("tracing"), Seg::Key("otlp_endpoint")],
                format!(
                    "{e:?} is not a URL ({why}; the collector's OTLP/HTTP traces endpoint, e.g. \"http://127.0.0.1:4318/v1/traces\")"
                ),
            ));
        }
    }
    Ok(())
}

fn check_retention(raw: &RawConfig) -> Result<(), Violation> {
    let r = &raw.retention;
    if !(100..=3_600_000).contains(&r.interval_ms) {
        return Err((
            vec![Seg::Key("retention"), Seg::Key("interval_ms")],
            "must be between 100 and 3600000 (milliseconds)".to_owned(),
        ));
    }
    if r.max_held_events > 0 && r.max_held_events < r.keep_events {
        return Err((
            vec![Seg::Key("retention"), Seg::Key("max_held_events")],
            format!(
                "must be at least keep_events ({}), or 0 for no bound",
                r.keep_events
            ),
        ));
    }
    if r.compact
        && let Some(c) = raw.collections.declared.iter().find(|c| {
            !c.transforms_on_apply.is_empty()
                || c.upgrades.iter().any(|u| {
                    u.transforms_on_apply
                        .as_ref()
                        .is_some_and(|t| !t.is_empty())
                })
        })
    {
        return Err((
            vec![Seg::Key("retention"), Seg::Key("compact")],
            format!(
                "cannot compact the changelog while collection {:?} runs transforms_on_apply: \
                 a peer brought up to date from this node's state would get its transformed \
                 values instead of the events; set compact = false in [retention]",
                c.name
            ),
        ));
    }
    Ok(())
}

fn check_node(raw: &RawConfig) -> Result<(), Violation> {
    if raw.node.data_dir.trim().is_empty() {
        return Err((
            vec![Seg::Key("node"), Seg::Key("data_dir")],
            "must not be empty: name the directory that holds the node's database".to_owned(),
        ));
    }
    check_path(
        vec![Seg::Key("node"), Seg::Key("data_dir")],
        &raw.node.data_dir,
    )?;
    // A day at most: a peer may push this node's clock (kept across restarts) that far ahead
    // of its wall clock, and a clock ahead by more than a day is a fault to fix, not a skew.
    if !(1..=MAX_CLOCK_SKEW_MS).contains(&raw.node.max_clock_skew_ms) {
        return Err((
            vec![Seg::Key("node"), Seg::Key("max_clock_skew_ms")],
            format!("must be between 1 and {MAX_CLOCK_SKEW_MS} (milliseconds: one day)"),
        ));
    }
    if !(1..=60_000).contains(&raw.node.sync_interval_ms) {
        return Err((
            vec![Seg::Key("node"), Seg::Key("sync_interval_ms")],
            "must be between 1 and 60000 (milliseconds)".to_owned(),
        ));
    }
    Ok(())
}

fn check_plugins(raw: &RawConfig) -> Result<(), Violation> {
    for (name, plugin) in &raw.plugins {
        let at =
            |key: &'static str| vec![Seg::Key("plugins"), Seg::Name(name.clone()), Seg::Key(key)];
        if let Err(e) = edgerep_wire::event::check_collection_name(name) {
            return Err((
                vec![Seg::Key("plugins"), Seg::Name(name.clone())],
                format!(
                    "invalid plugin name: {}",
                    e.to_string().replace("collection name", "name")
                ),
            ));
        }
        if plugin.path.trim().is_empty() {
            return Err((at("path"), "must name the plugin's .wasm file".to_owned()));
        }
        check_path(at("path"), &plugin.path)?;
        if plugin.fuel == 0 {
            return Err((at("fuel"), "must be greater than 0".to_owned()));
        }
        if plugin.memory_bytes < 65_536 {
            return Err((
                at("memory_bytes"),
                format!(
                    "{} is below one WebAssembly page (65536 bytes)",
                    plugin.memory_bytes
                ),
            ));
        }
        if plugin.deadline_ms == 0 {
            return Err((at("deadline_ms"), "must be greater than 0".to_owned()));
        }
        // The plugin's `on_failure` written after the `[plugins.NAME.params]` header, where
        // TOML puts every later key: a plugin that declares no parameters would take it as
        // one, and `on_failure = "halt"` would go unheeded. (Its other keys there fail to
        // parse already: `fuel` and the like are numbers where parameters are text, and
        // `sha256` is then missing from the plugin.)
        if plugin.params.contains_key("on_failure") {
            return Err((
                vec![
                    Seg::Key("plugins"),
                    Seg::Name(name.clone()),
                    Seg::Key("params"),
                    Seg::Name("on_failure".to_owned()),
                ],
                format!(
                    "on_failure is a key of the plugin itself, written after the [plugins.{name}.params] header (TOML puts every later key in that table): move it above that header, where it takes effect"
                ),
            ));
        }
    }
    Ok(())
}

fn check_listeners(raw: &RawConfig) -> Result<(), Violation> {
    // Keep-alives go every second: a timeout of 2 s or more lets one be lost.
    if !(2_000..=600_000).contains(&raw.replication.idle_timeout_ms) {
        return Err((
            vec![Seg::Key("replication"), Seg::Key("idle_timeout_ms")],
            "must be between 2000 and 600000 (milliseconds)".to_owned(),
        ));
    }
    if raw.api.listen == raw.replication.listen {
        return Err((
            vec![Seg::Key("replication"), Seg::Key("listen")],
            format!(
                "{} is also api.listen; the API and replication listeners need different addresses",
                raw.replication.listen
            ),
        ));
    }
    Ok(())
}

fn check_peers(raw: &RawConfig) -> Result<(), Violation> {
    let r = &raw.replication;
    let files = [("ca", &r.ca), ("cert", &r.cert), ("key", &r.key)];
    for (name, value) in files {
        if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
            return Err((
                vec![Seg::Key("replication"), Seg::Key(name)],
                "must not be empty: name a PEM file".to_owned(),
            ));
        }
        if let Some(path) = value {
            check_path(vec![Seg::Key("replication"), Seg::Key(name)], path)?;
        }
    }
    let given: Vec<&str> = files
        .iter()
        .filter(|f| f.1.is_some())
        .map(|f| f.0)
        .collect();
    if !given.is_empty() && given.len() < 3 {
        let missing: Vec<&str> = files
            .iter()
            .filter(|f| f.1.is_none())
            .map(|f| f.0)
            .collect();
        return Err((
            vec![Seg::Key("replication"), Seg::Key(missing[0])],
            format!(
                "missing: ca, cert and key go together (given: {}; missing: {})",
                given.join(", "),
                missing.join(", ")
            ),
        ));
    }
    if !raw.peers.is_empty() && given.is_empty() {
        return Err((
            vec![Seg::Key("replication")],
            "peers are configured, so replication needs this node's TLS identity: set ca, cert \
             and key (`edgerep certs` creates them)"
                .to_owned(),
        ));
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut addresses: HashMap<(String, u16), usize> = HashMap::new();
    let own = raw.replication.listen;
    for (i, peer) in raw.peers.iter().enumerate() {
        let at = peer_key(i, "address");
        let (host, port) = address_key(&peer.address);
        if let Some(first) = addresses.insert((host.clone(), port), i) {
            let first = render_path(&peer_key(first, "address"));
            return Err((
                at,
                format!(
                    "address \"{}\" is already the address of another peer ({first}): each node listens on its own",
                    peer.address
                ),
            ));
        }
        // This node's own replication address: the node would dial itself. (A name other
        // than `localhost` is not looked up here.)
        let ips: Vec<std::net::IpAddr> =
            if peer.address.to_ascii_lowercase().starts_with("localhost:") {
                vec![
                    std::net::Ipv4Addr::LOCALHOST.into(),
                    std::net::Ipv6Addr::LOCALHOST.into(),
                ]
            } else {
                host.trim_matches(['[', ']'])
                    .parse::<std::net::IpAddr>()
                    .into_iter()
                    .collect()
            };
        if port == own.port()
            && ips.iter().any(|ip| {
                ip.to_canonical() == own.ip().to_canonical()
                    || (own.ip().is_unspecified() && ip.is_loopback())
            })
        {
            return Err((
                at,
                format!(
                    "address \"{}\" is this node's own replication.listen; a peer's address is where that peer listens",
                    peer.address
                ),
            ));
        }
        let path = peer_key(i, "id");
        if peer.id == raw.node.id {
            return Err((
                path,
                format!(
                    "peer id \"{}\" is this node's own id (node.id); a node does not peer with itself",
                    peer.id
                ),
            ));
        }
        if let Some(first) = seen.insert(peer.id.as_str(), i) {
            let first = render_path(&peer_key(first, "id"));
            return Err((
                path,
                format!(
                    "duplicate peer id \"{}\" (already used at {first})",
                    peer.id
                ),
            ));
        }
    }
    Ok(())
}

/// A peer address as compared for duplicates: the host in lowercase (names are not case
/// sensitive) and the port as a number (`07171` is `7171`). The address was checked already
/// (`host:port`, port 1..=65535).
fn address_key(address: &str) -> (String, u16) {
    let (host, port) = address.rsplit_once(':').unwrap_or((address, "0"));
    let host = match host.to_ascii_lowercase() {
        // The name every machine gives its own loopback address.
        h if h == "localhost" => "127.0.0.1".to_owned(),
        h => h,
    };
    (host, port.parse().unwrap_or(0))
}

/// The path of `key` in the `i`th `[[peers]]` table.
fn peer_key(i: usize, key: &'static str) -> Vec<Seg> {
    vec![Seg::Key("peers"), Seg::Index(i), Seg::Key(key)]
}

fn check_collections(raw: &RawConfig) -> Result<(), Violation> {
    let declared = raw.collections.declared.len();
    if declared > edgerep_wire::event::MAX_COLLECTIONS {
        return Err((
            vec![Seg::Key("collections"), Seg::Key("declared")],
            format!(
                "{declared} collections declared, at most {}",
                edgerep_wire::event::MAX_COLLECTIONS
            ),
        ));
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, collection) in raw.collections.declared.iter().enumerate() {
        let at = |key: &'static str| {
            vec![
                Seg::Key("collections"),
                Seg::Key("declared"),
                Seg::Index(i),
                Seg::Key(key),
            ]
        };
        if collection.compare == Some(crate::raw::RawCompare::Values)
            && (!collection.transforms_on_apply.is_empty()
                || collection.upgrades.iter().any(|u| {
                    u.transforms_on_apply
                        .as_ref()
                        .is_some_and(|t| !t.is_empty())
                }))
        {
            return Err((
                at("compare"),
                "\"values\" with transforms on apply: this node's values are what its transforms make of the events, which other nodes need not share; anti-entropy compares such a collection on its versions (remove the key, or set \"versions\")".to_owned(),
            ));
        }
        if let Some(first) = seen.insert(collection.name.as_str(), i) {
            let first = render_path(&[
                Seg::Key("collections"),
                Seg::Key("declared"),
                Seg::Index(first),
                Seg::Key("name"),
            ]);
            return Err((
                at("name"),
                format!(
                    "duplicate collection \"{}\" (already declared at {first})",
                    collection.name
                ),
            ));
        }
        let defined = || {
            if raw.plugins.is_empty() {
                "no plugins are defined (add a [plugins.NAME] table)".to_owned()
            } else {
                let names: Vec<&str> = raw.plugins.keys().map(String::as_str).collect();
                format!("defined plugins: {}", names.join(", "))
            }
        };
        for (key, list) in [
            ("transforms_on_ingest", &collection.transforms_on_ingest),
            ("transforms_on_apply", &collection.transforms_on_apply),
        ] {
            for (j, name) in list.iter().enumerate() {
                if !raw.plugins.contains_key(name) {
                    let mut path = at(key);
                    path.push(Seg::Index(j));
                    return Err((path, format!("unknown plugin {name:?}; {}", defined())));
                }
            }
        }
        check_upgrades(raw, i, collection, &defined)?;
        if collection.resolver != RESOLVER_LWW && !raw.plugins.contains_key(&collection.resolver) {
            return Err((
                at("resolver"),
                format!(
                    "unknown resolver {:?}: use \"{RESOLVER_LWW}\" (last writer wins on the hybrid \
                     clock, ties broken by origin id) or the name of a resolver plugin; {}",
                    collection.resolver,
                    defined()
                ),
            ));
        }
    }
    Ok(())
}

/// `[[collections.declared.upgrades]]` of collection `i`: times that parse, strictly
/// ascending; each entry changes something; every plugin it names is defined.
fn check_upgrades(
    raw: &RawConfig,
    i: usize,
    collection: &crate::raw::RawCollection,
    defined: &dyn Fn() -> String,
) -> Result<(), Violation> {
    let mut previous: Option<u64> = None;
    for (j, u) in collection.upgrades.iter().enumerate() {
        let at = |key: &'static str| {
            vec![
                Seg::Key("collections"),
                Seg::Key("declared"),
                Seg::Index(i),
                Seg::Key("upgrades"),
                Seg::Index(j),
                Seg::Key(key),
            ]
        };
        let from = u
            .effective_from
            .millis()
            .map_err(|m| (at("effective_from"), m))?;
        if let Some(p) = previous
            && from <= p
        {
            return Err((
                at("effective_from"),
                format!(
                    "{} is not after the previous upgrade's {}: upgrades are listed in time order",
                    crate::format_ms(from),
                    crate::format_ms(p)
                ),
            ));
        }
        previous = Some(from);
        if u.resolver.is_none() && u.transforms_on_apply.is_none() {
            return Err((
                at("effective_from"),
                "this upgrade changes nothing: give it a resolver or transforms_on_apply"
                    .to_owned(),
            ));
        }
        if let Some(r) = &u.resolver
            && r != RESOLVER_LWW
            && !raw.plugins.contains_key(r)
        {
            return Err((
                at("resolver"),
                format!(
                    "unknown resolver {r:?}: use \"{RESOLVER_LWW}\" or the name of a resolver plugin; {}",
                    defined()
                ),
            ));
        }
        for (k, name) in u.transforms_on_apply.iter().flatten().enumerate() {
            if !raw.plugins.contains_key(name) {
                let mut path = at("transforms_on_apply");
                path.push(Seg::Index(k));
                return Err((path, format!("unknown plugin {name:?}; {}", defined())));
            }
        }
    }
    Ok(())
}

/// The longest key `limits.max_key_bytes` may allow: percent-encoded (3 bytes a byte), with a
/// 64-byte collection name, `/v1/kv/` and a query, it stays within the 65,534 bytes hyper takes
/// in a request's path.
pub(crate) const MAX_KEY_BYTES_ALLOWED: usize = 16_384;

fn check_limits(raw: &RawConfig) -> Result<(), Violation> {
    let limits = &raw.limits;
    for (key, value) in [
        ("max_key_bytes", limits.max_key_bytes as u64),
        ("max_value_bytes", limits.max_value_bytes as u64),
        ("max_value_depth", limits.max_value_depth as u64),
        ("max_meta_entries", limits.max_meta_entries as u64),
        ("max_meta_bytes", limits.max_meta_bytes as u64),
        ("max_batch_events", limits.max_batch_events as u64),
        ("max_request_bytes", limits.max_request_bytes as u64),
        ("max_dead_letters", limits.max_dead_letters),
        ("max_dead_letter_bytes", limits.max_dead_letter_bytes),
    ] {
        if value == 0 {
            return Err((
                vec![Seg::Key("limits"), Seg::Key(key)],
                "must be greater than 0".to_owned(),
            ));
        }
    }
    if limits.max_value_depth > edgerep_wire::value::MAX_DEPTH_ALLOWED {
        return Err((
            vec![Seg::Key("limits"), Seg::Key("max_value_depth")],
            format!(
                "{} is over {}: values are canonicalized by recursion, and nesting that deep \
                 could exhaust a thread's stack",
                limits.max_value_depth,
                edgerep_wire::value::MAX_DEPTH_ALLOWED
            ),
        ));
    }
    if limits.max_key_bytes > MAX_KEY_BYTES_ALLOWED {
        return Err((
            vec![Seg::Key("limits"), Seg::Key("max_key_bytes")],
            format!(
                "{} is over {MAX_KEY_BYTES_ALLOWED}: a key is sent percent-encoded in the path of \
                 /v1/kv/<collection>/<key> (3 bytes per key byte), and the HTTP server refuses \
                 a path over 65,534 bytes, so a longer key could be written but never read, \
                 overwritten or deleted by key",
                limits.max_key_bytes
            ),
        ));
    }
    if raw.api.max_body_bytes_in_flight < limits.max_request_bytes {
        return Err((
            vec![Seg::Key("api"), Seg::Key("max_body_bytes_in_flight")],
            format!(
                "{} is smaller than limits.max_request_bytes ({}); a request that big could never \
                 be read",
                raw.api.max_body_bytes_in_flight, limits.max_request_bytes
            ),
        ));
    }
    if limits.max_value_bytes > limits.max_request_bytes {
        return Err((
            vec![Seg::Key("limits"), Seg::Key("max_value_bytes")],
            format!(
                "{} is larger than limits.max_request_bytes ({}); a value that big could never \
                 arrive in a request",
                limits.max_value_bytes, limits.max_request_bytes
            ),
        ));
    }
    // One limit set: the largest event the API may accept must fit the largest frame a peer
    // may send, or it could never replicate.
    let event = crate::max_event_bytes(
        limits.max_key_bytes,
        limits.max_value_bytes,
        limits.max_meta_bytes,
    );
    if event.saturating_add(4096) > MAX_FRAME_BYTES {
        return Err((
            vec![Seg::Key("limits"), Seg::Key("max_value_bytes")],
            format!(
                "events could reach {event} bytes (max_value_bytes + max_key_bytes + \
                 max_meta_bytes + causal context), over what one peer message carries \
                 ({MAX_FRAME_BYTES} bytes less 4096 of framing); lower the limits"
            ),
        ));
    }
    if raw.commit.max_events == 0 {
        return Err((
            vec![Seg::Key("commit"), Seg::Key("max_events")],
            "must be greater than 0".to_owned(),
        ));
    }
    Ok(())
}
