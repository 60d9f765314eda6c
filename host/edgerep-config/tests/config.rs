//! Parsing and validating configuration files: the accepted shapes, the defaults, and the errors
//! (each must name the file and the key).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use edgerep_config::{CollectionRefused, Config, ConfigError, starter_toml};
use edgerep_wire::event::NodeId;

const FILE: &str = "/etc/edgerep/edgerep.toml";

/// The smallest valid file that may list peers: the required keys and the TLS identity.
const MINIMAL: &str = r#"
[node]
id = "site-a"
data_dir = "data"

[api]
listen = "127.0.0.1:7070"

[replication]
listen = "127.0.0.1:7071"
ca = "certs/ca.pem"
cert = "certs/node.pem"
key = "/secure/node.key"
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new(FILE))
}

/// Parses `text`, expects an error blaming `key`, checks the file and key appear in the message
/// and returns the error.
#[track_caller]
fn expect_error(text: &str, key: &str) -> ConfigError {
    let err = parse(text).expect_err("config should be refused");
    let shown = err.to_string();
    assert_eq!(err.file, Path::new(FILE), "{shown}");
    assert_eq!(err.key.as_deref(), Some(key), "{shown}");
    assert!(shown.starts_with(FILE), "{shown}");
    assert!(shown.contains(&format!("key `{key}`: ")), "{shown}");
    assert!(!err.message.ends_with('.'), "{shown}");
    err
}

/// `MINIMAL` followed by `extra`.
fn with(extra: &str) -> String {
    format!("{MINIMAL}\n{extra}")
}

#[test]
fn minimal_config_gets_defaults() {
    let config = parse(MINIMAL).unwrap();
    assert_eq!(config.source, Path::new(FILE));
    assert_eq!(config.node.id, NodeId::parse("site-a").unwrap());
    assert_eq!(config.node.data_dir, Path::new("/etc/edgerep/data"));
    assert_eq!(config.node.max_clock_skew_ms, 60_000);
    assert_eq!(config.replication.idle_timeout_ms, 10_000);
    assert_eq!(
        config.api.listen,
        "127.0.0.1:7070".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(
        config.replication.listen,
        "127.0.0.1:7071".parse::<SocketAddr>().unwrap()
    );
    assert!(config.peers.is_empty());
    assert!(!config.collections.accept_undeclared);
    assert!(config.collections.declared.is_empty());
    let limits = &config.limits;
    assert_eq!(limits.max_key_bytes, 1024);
    assert_eq!(limits.max_value_bytes, 65_536);
    assert_eq!(limits.max_value_depth, 32);
    assert_eq!(limits.max_meta_entries, 16);
    assert_eq!(limits.max_batch_events, 10_000);
    assert_eq!(limits.max_request_bytes, 16_777_216);
    assert_eq!(limits.max_dead_letters, 100_000);
    assert_eq!(limits.max_dead_letter_bytes, 256 * 1024 * 1024);
    assert_eq!(config.commit.max_events, 1000);
}

/// The dead-letter limits are u64: one of 4 GiB is taken (not read as 0 where a usize is 32
/// bits), and 0 is refused naming the key.
#[test]
fn dead_letter_limits_take_any_positive_u64() {
    let config = parse(&with("[limits]\nmax_dead_letter_bytes = 4294967296\n")).unwrap();
    assert_eq!(config.limits.max_dead_letter_bytes, 1 << 32);
    let err = parse(&with("[limits]\nmax_dead_letter_bytes = 0\n"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("limits.max_dead_letter_bytes") && err.contains("must be greater than 0"),
        "{err}"
    );
}

#[test]
fn partial_tables_get_defaults_for_the_rest() {
    let config = parse(&with(
        "[limits]\nmax_key_bytes = 10\n[commit]\n[[collections.declared]]\nname = \"orders\"\n",
    ))
    .unwrap();
    assert_eq!(config.limits.max_key_bytes, 10);
    assert_eq!(config.limits.max_value_depth, 32);
    assert_eq!(config.commit.max_events, 1000);
    let orders = config.collection("orders").unwrap();
    assert_eq!(orders.resolver, "lww");
    assert!(orders.transforms_on_ingest.is_empty());
    assert!(orders.transforms_on_apply.is_empty());
}

#[test]
fn full_config_is_read() {
    let config = parse(&with(
        r#"
[[peers]]
id = "site-b"
address = "site-b.example:7171"

[[peers]]
id = "site-c"
address = "[::1]:7172"

[collections]
accept_undeclared = true

[[collections.declared]]
name = "orders"
transforms_on_ingest = []
transforms_on_apply = []
resolver = "lww"

[limits]
max_key_bytes = 1
max_value_bytes = 2
max_value_depth = 3
max_meta_entries = 4
max_batch_events = 5
max_request_bytes = 6

[commit]
max_events = 7
"#,
    ))
    .unwrap();
    assert_eq!(config.peers.len(), 2);
    assert_eq!(config.peers[0].id.as_str(), "site-b");
    assert_eq!(config.peers[0].address, "site-b.example:7171");
    assert_eq!(config.peers[1].address, "[::1]:7172");
    assert!(config.collections.accept_undeclared);
    assert_eq!(config.collections.declared.len(), 1);
    assert_eq!(
        (
            config.limits.max_key_bytes,
            config.limits.max_value_bytes,
            config.limits.max_value_depth,
            config.limits.max_meta_entries,
            config.limits.max_batch_events,
            config.limits.max_request_bytes,
        ),
        (1, 2, 3, 4, 5, 6)
    );
    assert_eq!(config.commit.max_events, 7);
}

#[test]
fn relative_data_dir_resolves_against_the_config_dir() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edgerep.toml");
    std::fs::write(&path, MINIMAL.replace("\"data\"", "\"./state/db\"")).unwrap();
    let config = Config::load(&path).unwrap();
    assert_eq!(config.source, path);
    assert_eq!(config.node.data_dir, dir.path().join("state").join("db"));

    let config = parse(&MINIMAL.replace("\"data\"", "\"/var/lib/edgerep\"")).unwrap();
    assert_eq!(config.node.data_dir, Path::new("/var/lib/edgerep"));

    // No shell reads the file: `~` and `$VAR` would name directories beside it.
    for home in ["\"~/edgerep\"", "\"$HOME/edgerep\""] {
        let err = expect_error(&MINIMAL.replace("\"data\"", home), "node.data_dir");
        assert!(err.message.contains("not expanded"), "{err}");
    }
}

#[test]
fn relative_config_path_becomes_absolute() {
    let config = Config::parse(MINIMAL, Path::new("conf/edgerep.toml")).unwrap();
    assert!(config.source.is_absolute(), "{:?}", config.source);
    assert!(config.source.ends_with("conf/edgerep.toml"));
    let expected: PathBuf = std::env::current_dir().unwrap().join("conf").join("data");
    assert_eq!(config.node.data_dir, expected);
}

#[test]
fn unknown_top_level_key() {
    let err = expect_error(&format!("colour = \"blue\"\n{MINIMAL}"), "colour");
    assert!(
        err.message
            .contains("unknown key `colour`; expected one of `node`"),
        "{err}"
    );
    assert!(err.line_col.is_some(), "{err}");
}

#[test]
fn unknown_nested_key() {
    let err = expect_error(&with("[limits]\nmax_keys = 3\n"), "limits.max_keys");
    assert!(
        err.message
            .contains("unknown key `max_keys`; expected one of `max_key_bytes`"),
        "{err}"
    );
    // Points at the key: line of `max_keys` in the combined text.
    let line = with("[limits]\nmax_keys = 3\n")
        .lines()
        .position(|l| l.starts_with("max_keys"))
        .unwrap()
        + 1;
    assert_eq!(err.line_col, Some((line, 1)), "{err}");
}

#[test]
fn unknown_key_in_array_of_tables() {
    expect_error(
        &with("[[peers]]\nid = \"site-b\"\naddress = \"b:1\"\nport = 3\n"),
        "peers[0].port",
    );
}

#[test]
fn wrong_type() {
    let text = MINIMAL.replace("listen = \"127.0.0.1:7070\"", "listen = 7");
    let err = expect_error(&text, "api.listen");
    assert!(err.message.contains("invalid type"), "{err}");
    assert!(err.line_col.is_some(), "{err}");
}

#[test]
fn missing_required_key() {
    let text = MINIMAL.replace("id = \"site-a\"\n", "");
    let err = expect_error(&text, "node.id");
    assert!(err.message.contains("required key is missing"), "{err}");
}

#[test]
fn missing_required_table() {
    let text = MINIMAL.replace("[api]\nlisten = \"127.0.0.1:7070\"\n", "");
    let err = expect_error(&text, "api");
    assert_eq!(err.message, "required key is missing");
    assert_eq!(err.line_col, None);
}

#[test]
fn bad_node_id() {
    let text = MINIMAL.replace("\"site-a\"", "\"site a\"");
    let err = expect_error(&text, "node.id");
    assert!(err.message.contains("invalid node id \"site a\""), "{err}");
    assert_eq!(err.line_col, Some((3, 6)), "{err}");
}

#[test]
fn bad_socket_addr() {
    let text = MINIMAL.replace("\"127.0.0.1:7071\"", "\"localhost:7071\"");
    let err = expect_error(&text, "replication.listen");
    assert!(
        err.message
            .contains("invalid socket address \"localhost:7071\""),
        "{err}"
    );
}

#[test]
fn api_and_replication_must_differ() {
    let text = MINIMAL.replace("\"127.0.0.1:7071\"", "\"127.0.0.1:7070\"");
    let err = expect_error(&text, "replication.listen");
    assert!(err.message.contains("api.listen"), "{err}");
    assert!(err.line_col.is_some(), "{err}");
}

#[test]
fn duplicate_peer_id() {
    let err = expect_error(
        &with(
            "[[peers]]\nid = \"site-b\"\naddress = \"b:1\"\n\
             [[peers]]\nid = \"site-c\"\naddress = \"c:1\"\n\
             [[peers]]\nid = \"site-b\"\naddress = \"b2:1\"\n",
        ),
        "peers[2].id",
    );
    assert!(
        err.message.contains("duplicate peer id \"site-b\""),
        "{err}"
    );
    assert!(err.message.contains("peers[0].id"), "{err}");
    assert!(err.line_col.is_some(), "{err}");
}

#[test]
fn peer_id_equal_to_node_id() {
    let err = expect_error(
        &with(
            "[[peers]]\nid = \"site-b\"\naddress = \"b:1\"\n[[peers]]\nid = \"site-a\"\naddress = \"a:1\"\n",
        ),
        "peers[1].id",
    );
    assert!(err.message.contains("node.id"), "{err}");
}

#[test]
fn bad_peer_id() {
    expect_error(
        &with("[[peers]]\nid = \"-b\"\naddress = \"b:1\"\n"),
        "peers[0].id",
    );
}

#[test]
fn bad_peer_address() {
    for (address, needle) in [
        ("site-b", "expected \"host:port\""),
        ("site-b:", "port is missing"),
        ("site-b:0", "not 0"),
        ("site-b:99999", "invalid port \"99999\""),
        (":7071", "host is empty"),
    ] {
        let text = with(&format!(
            "[[peers]]\nid = \"site-b\"\naddress = \"b:1\"\n[[peers]]\nid = \"site-c\"\naddress = \"{address}\"\n"
        ));
        let err = expect_error(&text, "peers[1].address");
        assert!(err.message.contains(needle), "{address}: {err}");
        assert!(err.line_col.is_some(), "{err}");
    }
}

#[test]
fn duplicate_collection() {
    let err = expect_error(
        &with(
            "[[collections.declared]]\nname = \"orders\"\n[[collections.declared]]\nname = \"orders\"\n",
        ),
        "collections.declared[1].name",
    );
    assert!(
        err.message.contains("duplicate collection \"orders\""),
        "{err}"
    );
}

#[test]
fn bad_collection_name() {
    let err = expect_error(
        &with("[[collections.declared]]\nname = \"or/ders\"\n"),
        "collections.declared[0].name",
    );
    assert!(err.message.contains("invalid collection name"), "{err}");
}

const SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

#[test]
fn transforms_must_name_defined_plugins() {
    for key in ["transforms_on_ingest", "transforms_on_apply"] {
        let err = expect_error(
            &with(&format!(
                "[[collections.declared]]\nname = \"orders\"\n{key} = [\"redact\"]\n"
            )),
            &format!("collections.declared[0].{key}[0]"),
        );
        assert!(err.message.contains("unknown plugin \"redact\""), "{err}");
        assert!(err.message.contains("[plugins.NAME]"), "{err}");
        assert!(err.line_col.is_some(), "{err}");
    }
    let err = expect_error(
        &with(&format!(
            "[plugins.enrich]\npath = \"e.wasm\"\nsha256 = \"{SHA}\"\n\
             [[collections.declared]]\nname = \"orders\"\ntransforms_on_ingest = [\"enrich\", \"redact\"]\n"
        )),
        "collections.declared[0].transforms_on_ingest[1]",
    );
    assert!(err.message.contains("defined plugins: enrich"), "{err}");
}

#[test]
fn what_anti_entropy_compares() {
    let parsed = |extra: &str| {
        parse(&with(&format!(
            "[plugins.redact]\npath = \"r.wasm\"\nsha256 = \"{SHA}\"\n[[collections.declared]]\nname = \"orders\"\n{extra}"
        )))
    };
    let c = parsed("").unwrap();
    assert!(
        !c.collections.declared[0].compare_on_versions,
        "values by default"
    );
    let c = parsed("compare = \"versions\"\n").unwrap();
    assert!(c.collections.declared[0].compare_on_versions);
    let c = parsed("transforms_on_apply = [\"redact\"]\n[retention]\ncompact = false\n").unwrap();
    assert!(
        c.collections.declared[0].compare_on_versions,
        "versions with transforms on apply"
    );
    let err = expect_error(
        &with(&format!(
            "[plugins.redact]\npath = \"r.wasm\"\nsha256 = \"{SHA}\"\n[[collections.declared]]\nname = \"orders\"\ntransforms_on_apply = [\"redact\"]\ncompare = \"values\"\n"
        )),
        "collections.declared[0].compare",
    );
    assert!(err.message.contains("transforms on apply"), "{err}");
    assert!(parsed("compare = \"both\"\n").is_err());
}

#[test]
fn plugins_parse_with_defaults_and_resolved_paths() {
    let text = with(&format!(
        "[plugins.redact]\npath = \"plugins/redact.wasm\"\nsha256 = \"{}\"\non_failure = \"halt\"\n\
         params = {{ remove = \"card\" }}\n\
         [plugins.counter]\npath = \"/abs/counter.wasm\"\nsha256 = \"{SHA}\"\nfuel = 500\n\
         [[collections.declared]]\nname = \"orders\"\ntransforms_on_ingest = [\"redact\"]\nresolver = \"counter\"\n",
        SHA.to_uppercase()
    ));
    let c = Config::parse(&text, Path::new("/etc/edgerep/edgerep.toml")).unwrap();
    let names: Vec<&str> = c.plugins.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["counter", "redact"], "sorted by name");
    let redact = c.plugin("redact").unwrap();
    assert_eq!(redact.path, Path::new("/etc/edgerep/plugins/redact.wasm"));
    assert_eq!(redact.sha256, SHA, "stored lowercase");
    assert_eq!(redact.fuel, 10_000_000);
    assert_eq!(redact.memory_bytes, 16 * 1024 * 1024);
    assert_eq!(redact.deadline_ms, 1000);
    assert_eq!(redact.on_failure, edgerep_config::FailurePolicy::Halt);
    assert_eq!(
        redact.params.get("remove").map(String::as_str),
        Some("card")
    );
    let counter = c.plugin("counter").unwrap();
    assert_eq!(counter.path, Path::new("/abs/counter.wasm"));
    assert_eq!(counter.fuel, 500);
    assert_eq!(
        counter.on_failure,
        edgerep_config::FailurePolicy::DeadLetter
    );
    assert_eq!(c.collection("orders").unwrap().resolver, "counter");
}

#[test]
fn plugin_mistakes_name_their_key() {
    let cases = [
        (
            "[plugins.p]\npath = \"p.wasm\"\nsha256 = \"abc\"\n".to_owned(),
            "plugins.p.sha256",
            "64 hex digits",
        ),
        (
            "[plugins.p]\npath = \"p.wasm\"\n".to_owned(),
            "plugins.p.sha256",
            "missing",
        ),
        (
            format!("[plugins.p]\npath = \"p.wasm\"\nsha256 = \"{SHA}\"\nfuel = 0\n"),
            "plugins.p.fuel",
            "greater than 0",
        ),
        (
            format!("[plugins.p]\npath = \"p.wasm\"\nsha256 = \"{SHA}\"\nmemory_bytes = 100\n"),
            "plugins.p.memory_bytes",
            "65536",
        ),
        (
            format!("[plugins.p]\npath = \"p.wasm\"\nsha256 = \"{SHA}\"\ndeadline_ms = 0\n"),
            "plugins.p.deadline_ms",
            "greater than 0",
        ),
        (
            format!("[plugins.p]\npath = \"p.wasm\"\nsha256 = \"{SHA}\"\non_failure = \"retry\"\n"),
            "plugins.p.on_failure",
            "retry",
        ),
        // A plugin key written after the params header: a parameter there, unheeded.
        (
            format!(
                "[plugins.p]\npath = \"p.wasm\"\nsha256 = \"{SHA}\"\n[plugins.p.params]\nfield = \"x\"\non_failure = \"halt\"\n"
            ),
            "plugins.p.params.on_failure",
            "move it above that header",
        ),
        (
            format!("[plugins.p]\npath = \"p.wasm\"\nsha256 = \"{SHA}\"\nfules = 3\n"),
            "plugins.p.fules",
            "expected one of",
        ),
        (
            format!("[plugins.\"bad name\"]\npath = \"p.wasm\"\nsha256 = \"{SHA}\"\n"),
            "plugins.bad name",
            "invalid plugin name",
        ),
        (
            format!("[plugins.p]\npath = \"\"\nsha256 = \"{SHA}\"\n"),
            "plugins.p.path",
            ".wasm",
        ),
        (
            format!("[plugins.p]\npath = \"~/p.wasm\"\nsha256 = \"{SHA}\"\n"),
            "plugins.p.path",
            "not expanded",
        ),
    ];
    for (extra, key, needle) in cases {
        let err = expect_error(&with(&extra), key);
        assert!(err.message.contains(needle), "{key}: {err}");
    }
}

#[test]
fn unknown_resolver() {
    let err = expect_error(
        &with("[[collections.declared]]\nname = \"orders\"\nresolver = \"crdt\"\n"),
        "collections.declared[0].resolver",
    );
    assert!(err.message.contains("\"crdt\""), "{err}");
    assert!(err.message.contains("\"lww\""), "{err}");
    assert!(err.message.contains("resolver plugin"), "{err}");
}

#[test]
fn zero_limits() {
    for key in [
        "max_key_bytes",
        "max_value_bytes",
        "max_value_depth",
        "max_meta_entries",
        "max_batch_events",
        "max_request_bytes",
    ] {
        let err = expect_error(
            &with(&format!("[limits]\n{key} = 0\n")),
            &format!("limits.{key}"),
        );
        assert!(err.message.contains("greater than 0"), "{err}");
        assert!(err.line_col.is_some(), "{err}");
    }
    let err = expect_error(&with("[commit]\nmax_events = 0\n"), "commit.max_events");
    assert!(err.message.contains("greater than 0"), "{err}");
    // The idle timeout leaves room for a lost keep-alive (sent every second), and ten minutes
    // at most.
    for bad in ["1999", "600001"] {
        let err = expect_error(
            &MINIMAL.replace(
                "[replication]\n",
                &format!("[replication]\nidle_timeout_ms = {bad}\n"),
            ),
            "replication.idle_timeout_ms",
        );
        assert!(err.message.contains("between 2000 and 600000"), "{err}");
    }
    // A day at most: a peer may push the node's kept clock that far ahead.
    for bad in ["0", "86400001"] {
        let err = expect_error(
            &MINIMAL.replace(
                "data_dir = \"data\"",
                &format!("data_dir = \"data\"\nmax_clock_skew_ms = {bad}"),
            ),
            "node.max_clock_skew_ms",
        );
        assert!(err.message.contains("between 1 and 86400000"), "{err}");
    }
}

/// Limits that pass "greater than 0" but would break the node at run time: nesting deep enough
/// to exhaust an API worker's stack while canonicalizing, keys too long for a request's path,
/// and more permits than tokio's semaphore holds (which panicked at start).
#[test]
fn limits_too_large_for_the_node() {
    assert!(parse(&with("[limits]\nmax_value_depth = 100\n")).is_ok());
    let err = expect_error(
        &with("[limits]\nmax_value_depth = 101\n"),
        "limits.max_value_depth",
    );
    assert!(err.message.contains("is over 100"), "{err}");
    assert!(err.message.contains("stack"), "{err}");
    // A key longer than a request's path carries could be written by batch but never read.
    assert!(parse(&with("[limits]\nmax_key_bytes = 16384\n")).is_ok());
    let err = expect_error(
        &with("[limits]\nmax_key_bytes = 16385\n"),
        "limits.max_key_bytes",
    );
    assert!(err.message.contains("is over 16384"), "{err}");
    assert!(err.message.contains("65,534 bytes"), "{err}");
    for key in ["max_connections", "max_watch_streams"] {
        let text = MINIMAL.replace("[api]\n", &format!("[api]\n{key} = 2305843009213693952\n"));
        assert_ne!(text, MINIMAL, "the test's config has an [api] table");
        let err = expect_error(&text, &format!("api.{key}"));
        assert!(err.message.contains("is over 1000000"), "{err}");
    }
}

#[test]
fn negative_limit() {
    expect_error(
        &with("[limits]\nmax_key_bytes = -1\n"),
        "limits.max_key_bytes",
    );
}

#[test]
fn value_limit_above_request_limit() {
    let err = expect_error(
        &with("[limits]\nmax_value_bytes = 2000\nmax_request_bytes = 1000\n"),
        "limits.max_value_bytes",
    );
    assert!(err.message.contains("max_request_bytes"), "{err}");
}

#[test]
fn empty_data_dir() {
    expect_error(&MINIMAL.replace("\"data\"", "\"\""), "node.data_dir");
}

#[test]
fn malformed_toml_has_line_and_column() {
    let err = parse("[node]\nid = \"site-a\"\ndata_dir = \n").unwrap_err();
    assert_eq!(err.file, Path::new(FILE));
    assert_eq!(err.key, None);
    let (line, col) = err.line_col.expect("position of the syntax error");
    assert_eq!(line, 3, "{err}");
    assert!(col > 1, "{err}");
    let shown = err.to_string();
    assert!(shown.starts_with(&format!("{FILE}:3:{col}: ")), "{shown}");
    assert!(!shown.contains('\n'), "{shown}");
}

#[test]
fn duplicate_toml_key_is_an_error() {
    let err = parse(&MINIMAL.replace("data_dir = \"data\"", "data_dir = \"a\"\ndata_dir = \"b\""))
        .unwrap_err();
    assert!(err.to_string().starts_with(FILE), "{err}");
    assert!(err.line_col.is_some(), "{err}");
}

#[test]
fn missing_file_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.toml");
    let err = Config::load(&path).unwrap_err();
    assert_eq!(err.file, path);
    assert_eq!(err.key, None);
    let shown = err.to_string();
    assert!(shown.starts_with(&path.display().to_string()), "{shown}");
    assert!(shown.contains("cannot read config file"), "{shown}");
}

#[test]
fn error_display_format() {
    let err = expect_error(
        &with(
            "[[peers]]\nid = \"site-b\"\naddress = \"b:1\"\n[[peers]]\nid = \"site-c\"\naddress = \"c:99999\"\n",
        ),
        "peers[1].address",
    );
    let (line, col) = err.line_col.unwrap();
    assert_eq!(
        err.to_string(),
        format!(
            "{FILE}:{line}:{col}: key `peers[1].address`: {}",
            err.message
        )
    );
}

fn open_config(accept_undeclared: bool) -> Config {
    parse(&with(&format!(
        "[collections]\naccept_undeclared = {accept_undeclared}\n[[collections.declared]]\nname = \"orders\"\n"
    )))
    .unwrap()
}

#[test]
fn check_collection_closed_policy() {
    let config = open_config(false);
    assert_eq!(config.check_collection("orders"), Ok(()));
    assert!(config.collection("orders").is_some());
    assert!(config.collection("stock").is_none());
    let refused = config.check_collection("stock").unwrap_err();
    assert!(
        matches!(&refused, CollectionRefused::Undeclared { name, .. } if name == "stock"),
        "{refused:?}"
    );
    let err = refused.to_string();
    assert!(err.contains("\"stock\""), "{err}");
    assert!(err.contains(FILE), "{err}");
    assert!(
        err.contains("collections.accept_undeclared is false"),
        "{err}"
    );
    let refused = config.check_collection("bad/name").unwrap_err();
    assert!(
        matches!(refused, CollectionRefused::BadName(_)),
        "{refused:?}"
    );
    assert!(
        refused.to_string().contains("invalid collection name"),
        "{refused}"
    );
}

#[test]
fn check_collection_open_policy() {
    let config = open_config(true);
    assert_eq!(config.check_collection("orders"), Ok(()));
    assert_eq!(config.check_collection("stock"), Ok(()));
    assert!(config.collection("stock").is_none());
    for bad in ["", "bad/name", "-x", &"x".repeat(65)] {
        let err = config.check_collection(bad).unwrap_err().to_string();
        assert!(err.contains("invalid collection name"), "{bad:?}: {err}");
    }
}

#[test]
fn starter_config_parses() {
    let id = NodeId::parse("site-a").unwrap();
    let api: SocketAddr = "127.0.0.1:7070".parse().unwrap();
    let replication: SocketAddr = "[::]:7071".parse().unwrap();
    let text = starter_toml(&id, api, replication);
    let config = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(config.node.id, id);
    assert_eq!(config.node.data_dir, Path::new("/etc/edgerep/data"));
    assert_eq!(config.api.listen, api);
    assert_eq!(config.replication.listen, replication);
    assert!(config.collections.accept_undeclared);
    assert!(config.peers.is_empty());
    assert_eq!(config.check_collection("anything"), Ok(()));
    // Every optional value the starter mentions is the default.
    assert_eq!(
        config,
        parse(&format!(
            "[node]\nid = \"site-a\"\ndata_dir = \"data\"\n[api]\nlisten = \"{api}\"\n\
         [replication]\nlisten = \"{replication}\"\n[collections]\naccept_undeclared = true\n"
        ))
        .unwrap()
    );
}

/// `key = ...` with a snake_case key.
fn is_assignment(line: &str) -> bool {
    line.split_once(" = ").is_some_and(|(key, _)| {
        !key.is_empty()
            && key
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    })
}

#[test]
fn starter_config_with_commented_examples_enabled_parses() {
    // Uncommenting the example tables in the starter gives a valid file too.
    let id = NodeId::parse("site-a").unwrap();
    let text = starter_toml(
        &id,
        "127.0.0.1:7070".parse().unwrap(),
        "127.0.0.1:7071".parse().unwrap(),
    );
    let uncommented: String = text
        .lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest) if rest.starts_with('[') || is_assignment(rest) => rest,
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let config = parse(&uncommented).unwrap_or_else(|e| panic!("{e}\n{uncommented}"));
    assert_eq!(config.peers.len(), 1);
    assert_eq!(config.collections.declared.len(), 1);
}

#[test]
fn example_file_parses() {
    let path = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/edgerep.toml"
    ));
    let config = Config::load(path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.node.id.as_str(), "site-a");
    assert!(config.node.data_dir.is_absolute());
    assert!(
        config.node.data_dir.ends_with("examples/data"),
        "{:?}",
        config.node.data_dir
    );
    assert_eq!(config.peers.len(), 2);
    assert_eq!(config.collections.declared.len(), 1);
    assert_eq!(config.collections.declared[0].name, "orders");
    assert!(config.collections.accept_undeclared);
}

#[test]
fn tls_files_resolve_against_the_config_directory() {
    let config = parse(MINIMAL).unwrap();
    let tls = config.replication.tls.unwrap();
    assert_eq!(tls.ca, Path::new("/etc/edgerep/certs/ca.pem"));
    assert_eq!(tls.cert, Path::new("/etc/edgerep/certs/node.pem"));
    assert_eq!(tls.key, Path::new("/secure/node.key"));
}

#[test]
fn peers_need_a_tls_identity() {
    let text = MINIMAL
        .replace("ca = \"certs/ca.pem\"\n", "")
        .replace("cert = \"certs/node.pem\"\n", "")
        .replace("key = \"/secure/node.key\"\n", "");
    // Without peers, no identity is needed.
    assert!(parse(&text).unwrap().replication.tls.is_none());
    let err = expect_error(
        &format!("{text}\n[[peers]]\nid = \"site-b\"\naddress = \"b:1\"\n"),
        "replication",
    );
    assert!(err.message.contains("edgerep certs"), "{err}");
}

#[test]
fn tls_files_go_together() {
    let text = MINIMAL.replace("cert = \"certs/node.pem\"\n", "");
    let err = expect_error(&text, "replication.cert");
    assert!(err.message.contains("missing: cert"), "{err}");
    let text = MINIMAL.replace("key = \"/secure/node.key\"", "key = \" \"");
    expect_error(&text, "replication.key");
}

#[test]
fn durability_and_sync_interval() {
    let config = parse(&with(
        "[[collections.declared]]\nname = \"fast\"\ndurability = \"periodic\"\n\
         [[collections.declared]]\nname = \"safe\"\n",
    ))
    .unwrap();
    assert_eq!(config.node.sync_interval_ms, 20);
    let d: Vec<_> = config
        .collections
        .declared
        .iter()
        .map(|c| (c.name.as_str(), c.durability))
        .collect();
    assert_eq!(
        d,
        [
            ("fast", edgerep_config::Durability::Periodic),
            ("safe", edgerep_config::Durability::Immediate)
        ]
    );
    let err = expect_error(
        &with("[[collections.declared]]\nname = \"x\"\ndurability = \"sometimes\"\n"),
        "collections.declared[0].durability",
    );
    assert!(err.message.contains("immediate"), "{err}");
    for bad in ["0", "60001"] {
        let err = expect_error(
            &MINIMAL.replace(
                "data_dir = \"data\"",
                &format!("data_dir = \"data\"\nsync_interval_ms = {bad}"),
            ),
            "node.sync_interval_ms",
        );
        assert!(err.message.contains("between 1 and 60000"), "{err}");
    }
}

#[test]
fn tracing_endpoint_is_optional_and_checked() {
    assert_eq!(parse(MINIMAL).unwrap().tracing.otlp_endpoint, None);
    let config = parse(&with(
        "[tracing]\notlp_endpoint = \"http://127.0.0.1:4318/v1/traces\"\n",
    ))
    .unwrap();
    assert_eq!(
        config.tracing.otlp_endpoint.as_deref(),
        Some("http://127.0.0.1:4318/v1/traces")
    );
    // Starts like a URL, but the exporter would refuse it at start (an unclosed bracket).
    let err = expect_error(
        &with("[tracing]\notlp_endpoint = \"http://[::1:4318/v1/traces\"\n"),
        "tracing.otlp_endpoint",
    );
    assert!(err.message.contains("is not a URL"), "{err}");
    for bad in ["127.0.0.1:4318", "http://", "ftp://x", "http://a b"] {
        let err = expect_error(
            &with(&format!("[tracing]\notlp_endpoint = \"{bad}\"\n")),
            "tracing.otlp_endpoint",
        );
        assert!(err.message.contains("not an http:// URL"), "{err}");
    }
    // The exporter has no TLS: an https:// endpoint would export nothing, and say nothing.
    let err = expect_error(
        &with("[tracing]\notlp_endpoint = \"https://collector:4318/v1/traces\"\n"),
        "tracing.otlp_endpoint",
    );
    assert!(err.message.contains("https:// is not supported"), "{err}");
    expect_error(&with("[tracing]\nendpoint = \"x\"\n"), "tracing.endpoint");
}

#[test]
fn retention_defaults_and_errors() {
    let config = parse(MINIMAL).unwrap();
    let r = &config.retention;
    assert!(r.compact);
    assert_eq!(
        (
            r.keep_events,
            r.interval_ms,
            r.peer_absent_ms,
            r.max_held_events
        ),
        (100_000, 10_000, Some(604_800_000), Some(10_000_000))
    );
    let config = parse(&with(
        "[retention]\ncompact = false\nkeep_events = 0\ninterval_ms = 100\npeer_absent_ms = 0\nmax_held_events = 0\n",
    ))
    .unwrap();
    let r = &config.retention;
    assert!(!r.compact);
    assert_eq!(
        (
            r.keep_events,
            r.interval_ms,
            r.peer_absent_ms,
            r.max_held_events
        ),
        (0, 100, None, None)
    );
    // Fewer held for lagging peers than kept for readers is a mistake, named.
    let err = expect_error(
        &with("[retention]\nkeep_events = 500\nmax_held_events = 499\n"),
        "retention.max_held_events",
    );
    assert!(err.message.contains("at least keep_events (500)"), "{err}");
    parse(&with(
        "[retention]\nkeep_events = 500\nmax_held_events = 500\n",
    ))
    .unwrap();
    for bad in ["99", "3600001"] {
        let err = expect_error(
            &with(&format!("[retention]\ninterval_ms = {bad}\n")),
            "retention.interval_ms",
        );
        assert!(err.message.contains("between 100 and 3600000"), "{err}");
    }
    expect_error(&with("[retention]\nkeep = 5\n"), "retention.keep");
    // Compaction would send a transformed state as a snapshot: refused, naming the collection.
    let apply = "[[collections.declared]]\nname = \"cards\"\ntransforms_on_apply = [\"redact\"]\n\
                 [plugins.redact]\npath = \"r.wasm\"\nsha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"\n";
    let err = expect_error(&with(apply), "retention.compact");
    assert!(
        err.message.contains("\"cards\"") && err.message.contains("compact = false"),
        "{err}"
    );
    parse(&with(&format!("{apply}[retention]\ncompact = false\n"))).unwrap();
}

#[test]
fn an_api_beyond_loopback_needs_a_token_file() {
    let open = MINIMAL.replace("listen = \"127.0.0.1:7070\"", "listen = \"0.0.0.0:7070\"");
    let err = expect_error(&open, "api.listen");
    assert!(err.message.contains("not a loopback address"), "{err}");
    assert!(err.message.contains("api.token_file"), "{err}");
    let guarded = open.replace(
        "listen = \"0.0.0.0:7070\"",
        "listen = \"0.0.0.0:7070\"\ntoken_file = \"api.token\"",
    );
    let config = parse(&guarded).unwrap();
    assert_eq!(
        config.api.token_file.as_deref(),
        Some(Path::new("/etc/edgerep/api.token"))
    );
    assert_eq!(config.api.max_connections, 256);
    assert_eq!(config.api.max_watch_streams, 64);
    let zero = guarded.replace(
        "token_file = \"api.token\"",
        "token_file = \"api.token\"\nmax_watch_streams = 0",
    );
    expect_error(&zero, "api.max_watch_streams");
}

#[test]
fn limits_must_fit_a_peer_frame() {
    let err = expect_error(
        &with("[limits]\nmax_value_bytes = 9000000\nmax_request_bytes = 16000000"),
        "limits.max_value_bytes",
    );
    assert!(
        err.message.contains("over what one peer message carries"),
        "{err}"
    );
    let config = parse(&with("[limits]\nmax_meta_bytes = 100")).unwrap();
    assert_eq!(config.limits.max_meta_bytes, 100);
    expect_error(
        &with("[limits]\nmax_meta_bytes = 0"),
        "limits.max_meta_bytes",
    );
}

#[test]
fn authorization_and_revocations() {
    let config = parse(&with(
        "[authorization]\nsite-b = [\"orders\"]\n\n[[revoked]]\nnode = \"site-c\"\nafter_seq = 12\n",
    ))
    .unwrap();
    let (b, c, d) = (
        NodeId::parse("site-b").unwrap(),
        NodeId::parse("site-c").unwrap(),
        NodeId::parse("site-d").unwrap(),
    );
    assert!(config.write_allowed(&b, "orders").is_ok());
    let refused = config.write_allowed(&b, "stock").unwrap_err();
    assert_eq!(
        (refused.origin.as_str(), refused.collection.as_str()),
        ("site-b", "stock")
    );
    assert!(
        refused
            .to_string()
            .contains("may not write collection \"stock\""),
        "{refused}"
    );
    assert!(
        config.write_allowed(&d, "stock").is_ok(),
        "origins not listed write all"
    );
    assert!(config.is_revoked(&c) && !config.is_revoked(&b));
    assert_eq!(config.revocation(&c, 12), None);
    assert!(config.revocation(&c, 13).unwrap().contains("revoked"));
    assert_eq!(config.max_origins(), 1 + 16);
    expect_error(
        &with("[authorization]\n\"not an id\" = [\"orders\"]\n"),
        "authorization.not an id",
    );
    expect_error(
        &with("[authorization]\nsite-b = [\"bad name\"]\n"),
        "authorization.site-b[0]",
    );
    expect_error(
        &with("[[revoked]]\nnode = \"site-a\"\nafter_seq = 0\n"),
        "revoked[0].node",
    );
    expect_error(
        &with(
            "[[revoked]]\nnode = \"site-c\"\nafter_seq = 1\n\n[[revoked]]\nnode = \"site-c\"\nafter_seq = 2\n",
        ),
        "revoked[1].node",
    );
    // Left out, after_seq silently meant 0 (the node's whole history refused).
    let e = expect_error(
        &with("[[revoked]]\nnode = \"site-c\"\n"),
        "revoked[0].after_seq",
    );
    assert!(e.to_string().contains("after_seq = 0"), "{e}");
}

#[test]
fn upgrades_fill_in_what_they_leave_unchanged_and_are_checked() {
    let text = |upgrades: &str| {
        with(&format!(
            "[plugins.v1]\npath = \"v1.wasm\"\nsha256 = \"{SHA}\"\n\
             [plugins.v2]\npath = \"v2.wasm\"\nsha256 = \"{SHA}\"\n\
             [plugins.t]\npath = \"t.wasm\"\nsha256 = \"{SHA}\"\n\
             [retention]\ncompact = false\n\
             [[collections.declared]]\nname = \"counters\"\nresolver = \"v1\"\n{upgrades}"
        ))
    };
    let c = parse(&text(
        "[[collections.declared.upgrades]]\neffective_from = \"2026-12-03T18:00:00Z\"\nresolver = \"v2\"\n\
         [[collections.declared.upgrades]]\neffective_from = 1796407200000\ntransforms_on_apply = [\"t\"]\n",
    ))
    .unwrap();
    let counters = &c.collections.declared[0];
    assert_eq!(counters.upgrades.len(), 2);
    assert_eq!(counters.upgrades[0].from_ms, 1_796_320_800_000);
    assert_eq!(counters.upgrades[0].resolver, "v2");
    assert!(counters.upgrades[0].transforms_on_apply.is_empty());
    assert_eq!(
        counters.upgrades[1].resolver, "v2",
        "kept from the upgrade before"
    );
    assert_eq!(counters.upgrades[1].transforms_on_apply, ["t"]);
    assert!(
        counters.compare_on_versions,
        "transforms on apply in some epoch"
    );
    assert_eq!(counters.deciding_at(1_796_320_799_999).1, "v1");
    assert_eq!(counters.deciding_at(1_796_320_800_000).1, "v2");
    assert_eq!(
        counters.deciding_plugins().into_iter().collect::<Vec<_>>(),
        ["t", "v1", "v2"]
    );
    assert_eq!(
        edgerep_config::format_ms(1_796_320_800_000),
        "2026-12-03T18:00:00Z"
    );

    let err = expect_error(
        &text(
            "[[collections.declared.upgrades]]\neffective_from = 2000\nresolver = \"v2\"\n\
             [[collections.declared.upgrades]]\neffective_from = 1000\nresolver = \"v1\"\n",
        ),
        "collections.declared[0].upgrades[1].effective_from",
    );
    assert!(err.message.contains("time order"), "{err}");
    let err = expect_error(
        &text(
            "[[collections.declared.upgrades]]\neffective_from = \"tomorrow\"\nresolver = \"v2\"\n",
        ),
        "collections.declared[0].upgrades[0].effective_from",
    );
    assert!(err.message.contains("RFC 3339"), "{err}");
    for (bad, says) in [("-5", "before 1970"), ("true", "a time: RFC 3339")] {
        let err = expect_error(
            &text(&format!(
                "[[collections.declared.upgrades]]\neffective_from = {bad}\nresolver = \"v2\"\n"
            )),
            "collections.declared[0].upgrades[0].effective_from",
        );
        assert!(err.message.contains(says), "{err}");
    }
    let err = expect_error(
        &text("[[collections.declared.upgrades]]\neffective_from = 5\n"),
        "collections.declared[0].upgrades[0].effective_from",
    );
    assert!(err.message.contains("changes nothing"), "{err}");
    let err = expect_error(
        &text("[[collections.declared.upgrades]]\neffective_from = 5\nresolver = \"v3\"\n"),
        "collections.declared[0].upgrades[0].resolver",
    );
    assert!(err.message.contains("unknown resolver"), "{err}");
}

#[test]
fn two_peers_at_one_address_or_a_peer_at_this_nodes_own_are_refused() {
    let err = expect_error(
        &with(
            "[[peers]]\nid = \"site-b\"\naddress = \"127.0.0.9:7071\"\n\
             [[peers]]\nid = \"site-c\"\naddress = \"127.0.0.9:7071\"\n",
        ),
        "peers[1].address",
    );
    assert!(err.message.contains("peers[0].address"), "{err}");
    // replication.listen is 127.0.0.1:7071.
    let err = expect_error(
        &with("[[peers]]\nid = \"site-b\"\naddress = \"127.0.0.1:7071\"\n"),
        "peers[0].address",
    );
    assert!(err.message.contains("own replication.listen"), "{err}");
    // The same, written otherwise: `localhost`, a leading zero in the port, a name in another
    // case (these passed, and the node dialed itself, or dialed one peer under two ids).
    let err = expect_error(
        &with("[[peers]]\nid = \"site-b\"\naddress = \"localhost:07071\"\n"),
        "peers[0].address",
    );
    assert!(err.message.contains("own replication.listen"), "{err}");
    let err = expect_error(
        &with(
            "[[peers]]\nid = \"site-b\"\naddress = \"Site-B.example:7071\"\n\
             [[peers]]\nid = \"site-c\"\naddress = \"site-b.example:07071\"\n",
        ),
        "peers[1].address",
    );
    assert!(err.message.contains("peers[0].address"), "{err}");
    let err = expect_error(
        &with(
            "[[peers]]\nid = \"site-b\"\naddress = \"127.0.0.1:7171\"\n\
             [[peers]]\nid = \"site-c\"\naddress = \"localhost:7171\"\n",
        ),
        "peers[1].address",
    );
    assert!(err.message.contains("peers[0].address"), "{err}");
    // Another loopback address is another node (127.0.0.0/8 on one machine).
    assert!(
        parse(&with(
            "[[peers]]\nid = \"site-b\"\naddress = \"127.0.0.2:7071\"\n"
        ))
        .is_ok()
    );
    // Another port of this host is another node.
    assert!(
        parse(&with(
            "[[peers]]\nid = \"site-b\"\naddress = \"127.0.0.1:7072\"\n"
        ))
        .is_ok()
    );
}

/// A plugin no declared collection names is listed (it loads and never runs), as is one named
/// `lww` given as a resolver: `resolver = "lww"` is always the built-in last-writer-wins.
#[test]
fn plugins_nothing_runs_are_listed() {
    let text = with(&format!(
        "[plugins.lww]\npath = \"a.wasm\"\nsha256 = \"{SHA}\"\n\
         [plugins.spare]\npath = \"b.wasm\"\nsha256 = \"{SHA}\"\n\
         [plugins.used]\npath = \"c.wasm\"\nsha256 = \"{SHA}\"\n\
         [[collections.declared]]\nname = \"c\"\nresolver = \"lww\"\ntransforms_on_ingest = [\"used\"]\n"
    ));
    let config = parse(&text).unwrap();
    assert_eq!(config.unused_plugins(), ["lww", "spare"]);
}

/// Each watch stream holds an API connection while it follows: watch streams may not be allowed
/// as many as the connections, or followers alone could take every one (writes, status and
/// reload would wait in the kernel's backlog). Unset, the bound is 64 but at most half the
/// connections.
#[test]
fn watch_streams_leave_connections_for_other_requests() {
    let err = expect_error(
        &api_with("max_connections = 16\nmax_watch_streams = 16"),
        "api.max_watch_streams",
    );
    assert!(
        err.message
            .contains("must be less than api.max_connections (16)"),
        "{err}"
    );
    let config = parse(&api_with("max_connections = 16\nmax_watch_streams = 15")).unwrap();
    assert_eq!(config.api.max_watch_streams, 15);
    let config = parse(&api_with("max_connections = 16")).unwrap();
    assert_eq!(config.api.max_watch_streams, 8);
    let config = parse(&api_with("max_connections = 1000")).unwrap();
    assert_eq!(config.api.max_watch_streams, 64);
    // One connection: no watch stream unless asked for, and then refused as above.
    let config = parse(&api_with("max_connections = 1")).unwrap();
    assert_eq!(config.api.max_watch_streams, 0);
    expect_error(
        &api_with("max_connections = 1\nmax_watch_streams = 1"),
        "api.max_watch_streams",
    );
}

/// `MINIMAL` with `lines` added to its `[api]` table.
fn api_with(lines: &str) -> String {
    MINIMAL.replace(
        "listen = \"127.0.0.1:7070\"",
        &format!("listen = \"127.0.0.1:7070\"\n{lines}"),
    )
}
