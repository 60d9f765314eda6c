//! Runs every case of `tests/vectors/plugins/` (format: that folder's README.md) against the
//! plugins' Rust code, natively, and checks that each case is consistent in itself (every
//! `value_hex` / `merge_hex` is the deterministic encoding of its JSON `value` / `merge`).
//!
//! The hostile plugins (spin, balloon, trap, flood) cannot run natively: their cases are only
//! checked for shape. The host runs all cases against the built components.
//!
//! `EDGEREP_BLESS=1 cargo test -p conformance` fills in missing `value_hex` / `merge_hex` from the
//! JSON forms (it never derives them from a plugin's output) and rewrites the files.

use std::fs;
use std::path::{Path, PathBuf};

use edgerep_guest::cbor::Value;
use edgerep_guest::{Change, Dot, Event, Hlc, Op, Resolution, Resolver, Transform, testing};
use serde_json::{Map, Value as Json, json};

const HOSTILE: [&str; 4] = ["spin", "balloon", "trap", "flood"];
const ERROR_KINDS: [&str; 5] = [
    "plugin-error",
    "trap",
    "out-of-fuel",
    "memory-limit",
    "bad-output",
];

fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/vectors/plugins")
}

/// JSON to CBOR, the mapping of edgerep-wire's `Value::from_json`.
fn json_to_cbor(j: &Json) -> Value {
    match j {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => {
            if let Some(u) = n.as_u64() {
                Value::Int(i128::from(u))
            } else if let Some(i) = n.as_i64() {
                Value::Int(i128::from(i))
            } else {
                Value::Float(n.as_f64().expect("a JSON number is an f64"))
            }
        }
        Json::String(s) => Value::Text(s.clone()),
        Json::Array(a) => Value::Array(a.iter().map(json_to_cbor).collect()),
        Json::Object(o) => Value::Map(
            o.iter()
                .map(|(k, v)| (Value::Text(k.clone()), json_to_cbor(v)))
                .collect(),
        ),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd-length hex {s:?}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap_or_else(|_| panic!("bad hex {s:?}")))
        .collect()
}

fn unbase64(s: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|&c| c != b'=') {
        let v = ALPHABET
            .iter()
            .position(|&a| a == c)
            .unwrap_or_else(|| panic!("bad base64 {s:?}")) as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

fn obj<'a>(j: &'a Json, what: &str) -> &'a Map<String, Json> {
    j.as_object()
        .unwrap_or_else(|| panic!("{what} is not an object: {j}"))
}

fn check_keys(o: &Map<String, Json>, allowed: &[&str], what: &str) {
    for k in o.keys() {
        assert!(allowed.contains(&k.as_str()), "{what}: unknown field {k:?}");
    }
}

fn key_of(o: &Map<String, Json>, what: &str) -> Option<Vec<u8>> {
    match (o.get("key"), o.get("key_base64")) {
        (Some(k), None) => Some(
            k.as_str()
                .unwrap_or_else(|| panic!("{what}: key is not a string"))
                .as_bytes()
                .to_vec(),
        ),
        (None, Some(k)) => Some(unbase64(k.as_str().expect("key_base64 is a string"))),
        (None, None) => None,
        (Some(_), Some(_)) => panic!("{what}: both key and key_base64"),
    }
}

fn meta_of(j: Option<&Json>, what: &str) -> Vec<(String, String)> {
    let mut meta: Vec<(String, String)> = j
        .map(|m| {
            obj(m, what)
                .iter()
                .map(|(k, v)| {
                    let v = v
                        .as_str()
                        .unwrap_or_else(|| panic!("{what}: meta value not text"));
                    (k.clone(), v.to_owned())
                })
                .collect()
        })
        .unwrap_or_default();
    meta.sort();
    meta
}

fn op_of(j: Option<&Json>, what: &str) -> Op {
    match j.map(|o| o.as_str().unwrap_or_else(|| panic!("{what}: op not text"))) {
        None | Some("put") => Op::Put,
        Some("delete") => Op::Delete,
        Some(other) => panic!("{what}: unknown op {other:?}"),
    }
}

/// The value of an event or expected change: `value` (JSON) or `value_hex`, both checked
/// against each other when both are given.
fn value_of(o: &Map<String, Json>, op: Op, what: &str) -> Option<Vec<u8>> {
    let from_json = o.get("value").map(|v| json_to_cbor(v).encode());
    let from_hex = o
        .get("value_hex")
        .map(|h| unhex(h.as_str().expect("value_hex is text")));
    match op {
        Op::Delete => {
            assert!(
                from_json.is_none() && from_hex.is_none(),
                "{what}: a delete has no value"
            );
            None
        }
        Op::Put => {
            if let (Some(a), Some(b)) = (&from_json, &from_hex) {
                assert_eq!(
                    hex(a),
                    hex(b),
                    "{what}: value_hex is not the deterministic encoding of value"
                );
            }
            let v = from_hex.or(from_json);
            assert!(v.is_some(), "{what}: a put needs value or value_hex");
            v
        }
    }
}

fn hlc_of(j: Option<&Json>, what: &str) -> Hlc {
    match j {
        None => Hlc::ZERO,
        Some(Json::String(s)) => {
            let (p, l) = s
                .split_once('.')
                .unwrap_or_else(|| panic!("{what}: hlc {s:?}"));
            Hlc {
                physical_ms: p.parse().expect("hlc physical_ms"),
                logical: l.parse().expect("hlc logical"),
            }
        }
        Some(j) => {
            let o = obj(j, what);
            check_keys(o, &["physical_ms", "logical"], what);
            Hlc {
                physical_ms: o["physical_ms"].as_u64().expect("physical_ms"),
                logical: u32::try_from(o["logical"].as_u64().expect("logical")).expect("u32"),
            }
        }
    }
}

/// An event, with the defaults of the README; `collection`/`key` default to `inherit`'s (for
/// resolver versions).
fn event_of(j: &Json, inherit: Option<(&str, &[u8])>, what: &str) -> Event {
    let o = obj(j, what);
    check_keys(
        o,
        &[
            "collection",
            "key",
            "key_base64",
            "op",
            "value",
            "value_hex",
            "hlc",
            "origin",
            "seq",
            "schema",
            "meta",
            "context",
        ],
        what,
    );
    let collection = o
        .get("collection")
        .map(|c| c.as_str().expect("collection is text").to_owned())
        .or_else(|| inherit.map(|(c, _)| c.to_owned()))
        .unwrap_or_else(|| panic!("{what}: no collection"));
    let key = key_of(o, what)
        .or_else(|| inherit.map(|(_, k)| k.to_vec()))
        .unwrap_or_else(|| panic!("{what}: no key"));
    let op = op_of(o.get("op"), what);
    let context = o
        .get("context")
        .map(|c| {
            c.as_array()
                .expect("context is an array")
                .iter()
                .map(|d| {
                    let d = obj(d, what);
                    check_keys(d, &["origin", "seq"], what);
                    Dot {
                        origin: d["origin"].as_str().expect("origin").to_owned(),
                        seq: d["seq"].as_u64().expect("seq"),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    Event {
        collection,
        key,
        op,
        value: value_of(o, op, what),
        hlc: hlc_of(o.get("hlc"), what),
        origin: o
            .get("origin")
            .map_or("vector", |v| v.as_str().expect("origin is text"))
            .to_owned(),
        seq: o.get("seq").map_or(1, |v| v.as_u64().expect("seq")),
        schema: o.get("schema").map_or(0, |v| {
            u32::try_from(v.as_u64().expect("schema")).expect("u32")
        }),
        meta: meta_of(o.get("meta"), what),
        context,
    }
}

fn change_of(j: &Json, what: &str) -> Change {
    let o = obj(j, what);
    check_keys(
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
        what,
    );
    for required in ["collection", "op", "schema", "meta"] {
        assert!(
            o.contains_key(required),
            "{what}: expected change lacks {required}"
        );
    }
    let op = op_of(o.get("op"), what);
    Change {
        collection: o["collection"].as_str().expect("collection").to_owned(),
        key: key_of(o, what).unwrap_or_else(|| panic!("{what}: no key")),
        op,
        value: value_of(o, op, what),
        schema: u32::try_from(o["schema"].as_u64().expect("schema")).expect("u32"),
        meta: meta_of(o.get("meta"), what),
    }
}

fn show_change(c: &Change) -> String {
    format!(
        "{} {:?} {:?} value={} schema={} meta={:?}",
        c.collection,
        String::from_utf8_lossy(&c.key),
        c.op,
        c.value.as_deref().map_or("none".to_owned(), hex),
        c.schema,
        c.meta
    )
}

fn run_transform(plugin: &str, event: Event) -> Result<Vec<Change>, String> {
    match plugin {
        "redact" => redact::Redact::transform(event),
        "enrich" => enrich::Enrich::transform(event),
        "filter" => filter::Filter::transform(event),
        "passthrough" => passthrough::Passthrough::transform(event),
        other => panic!("no native transform {other:?}"),
    }
}

fn run_resolver(
    plugin: &str,
    collection: &str,
    key: &[u8],
    versions: Vec<Event>,
) -> Result<Resolution, String> {
    match plugin {
        "merge-counter" => merge_counter::MergeCounter::resolve(collection, key, versions),
        other => panic!("no native resolver {other:?}"),
    }
}

/// Fills missing `value_hex` / `merge_hex` from the JSON forms; true if anything changed.
fn bless(case: &mut Json) -> bool {
    let mut changed = false;
    let fill = |o: &mut Map<String, Json>, json_key: &str, hex_key: &str| -> bool {
        match o.get(json_key) {
            Some(v) if !v.is_null() && !o.contains_key(hex_key) => {
                let h = hex(&json_to_cbor(v).encode());
                o.insert(hex_key.to_owned(), json!(h));
                true
            }
            _ => false,
        }
    };
    if let Some(ok) = case.pointer_mut("/expect/ok") {
        match ok {
            Json::Array(changes) => {
                for c in changes {
                    if let Some(o) = c.as_object_mut() {
                        changed |= fill(o, "value", "value_hex");
                    }
                }
            }
            Json::Object(o) => changed |= fill(o, "merge", "merge_hex"),
            _ => {}
        }
    }
    changed
}

fn run_case(path: &Path, case: &Json) {
    let what = path.display().to_string();
    let o = obj(case, &what);
    check_keys(
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
        &what,
    );
    // On apply, the host holds the output to its on-apply rule; natively only an output the
    // rule keeps (an `ok`) can be checked, and a refusal is the host's (`bad-output`).
    let stage = o.get("stage").map(|s| s.as_str().expect("stage is text"));
    assert!(
        matches!(stage, None | Some("ingest" | "apply")),
        "{what}: unknown stage {stage:?}"
    );
    let on_apply = stage == Some("apply");
    let plugin = o["plugin"].as_str().expect("plugin");
    let folder = path
        .parent()
        .and_then(Path::file_name)
        .and_then(|f| f.to_str())
        .expect("folder");
    assert_eq!(plugin, folder, "{what}: plugin differs from its folder");
    let world = o["world"].as_str().expect("world");
    assert!(
        o.get("description").is_some_and(Json::is_string),
        "{what}: needs a description"
    );
    let params: Vec<(String, String)> = o
        .get("params")
        .map(|p| {
            obj(p, &what)
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_str().expect("param values are text").to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    if let Some(limits) = o.get("limits") {
        let l = obj(limits, &what);
        check_keys(l, &["fuel", "memory_bytes"], &what);
        assert!(l.values().all(Json::is_u64), "{what}: limits are integers");
    }
    let expect = obj(&o["expect"], &what);
    assert_eq!(
        expect.len() - usize::from(expect.contains_key("message")),
        1,
        "{what}: expect"
    );
    if let Some(kind) = expect.get("error") {
        let kind = kind.as_str().expect("error kind is text");
        assert!(
            ERROR_KINDS.contains(&kind),
            "{what}: unknown error kind {kind}"
        );
    } else {
        assert!(
            !expect.contains_key("message"),
            "{what}: message without error"
        );
    }

    let params_ref: Vec<(&str, &str)> = params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    testing::set_params(&params_ref);
    let input = obj(&o["input"], &what);

    match world {
        "transform" => {
            assert!(
                !input.contains_key("versions"),
                "{what}: transform input has versions"
            );
            let mut event = event_of(&o["input"], None, &format!("{what}: input"));
            if !on_apply {
                // At ingest a node gives a transform sequence number 0 and no causal context
                // (the host's runner refuses a vector giving others).
                assert!(
                    !input.contains_key("seq") || event.seq == 0,
                    "{what}: a transform on ingest sees seq 0"
                );
                assert!(
                    event.context.is_empty(),
                    "{what}: a transform on ingest sees no context"
                );
                event.seq = 0;
            }
            if on_apply && expect.contains_key("error") {
                assert_eq!(
                    expect["error"], "bad-output",
                    "{what}: on apply the host refuses with bad-output"
                );
                return;
            }
            if HOSTILE.contains(&plugin) {
                assert!(
                    expect.contains_key("error"),
                    "{what}: hostile cases expect an error"
                );
                return;
            }
            let got = run_transform(plugin, event);
            if let Some(ok) = expect.get("ok") {
                let want: Vec<Change> = ok
                    .as_array()
                    .expect("transform ok is a list")
                    .iter()
                    .enumerate()
                    .map(|(i, c)| change_of(c, &format!("{what}: expect.ok[{i}]")))
                    .collect();
                let got = got.unwrap_or_else(|e| panic!("{what}: plugin error {e:?}"));
                let got: Vec<String> = got.iter().map(show_change).collect();
                let want: Vec<String> = want.iter().map(show_change).collect();
                assert_eq!(got, want, "{what}");
            } else {
                check_error(&what, expect, got.err());
            }
        }
        "resolver" => {
            check_keys(
                input,
                &["collection", "key", "key_base64", "versions"],
                &what,
            );
            let collection = input["collection"].as_str().expect("collection");
            let key = key_of(input, &what).expect("resolver input key");
            let versions: Vec<Event> = input["versions"]
                .as_array()
                .expect("versions is a list")
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    event_of(
                        v,
                        Some((collection, &key)),
                        &format!("{what}: versions[{i}]"),
                    )
                })
                .collect();
            let got = run_resolver(plugin, collection, &key, versions);
            if let Some(ok) = expect.get("ok") {
                let ok = obj(ok, &what);
                let want = if let Some(i) = ok.get("pick") {
                    check_keys(ok, &["pick"], &what);
                    Resolution::Pick(u32::try_from(i.as_u64().expect("pick")).expect("u32"))
                } else {
                    check_keys(ok, &["merge", "merge_hex"], &what);
                    let merge = &ok["merge"];
                    let from_json = (!merge.is_null()).then(|| json_to_cbor(merge).encode());
                    let from_hex = ok.get("merge_hex").map(|h| unhex(h.as_str().expect("hex")));
                    if merge.is_null() {
                        assert!(from_hex.is_none(), "{what}: merge null has no merge_hex");
                    }
                    if let (Some(a), Some(b)) = (&from_json, &from_hex) {
                        assert_eq!(hex(a), hex(b), "{what}: merge_hex is not merge's encoding");
                    }
                    Resolution::Merge(from_hex.or(from_json))
                };
                let got = got.unwrap_or_else(|e| panic!("{what}: plugin error {e:?}"));
                assert_eq!(got, want, "{what}");
            } else {
                check_error(&what, expect, got.err());
            }
        }
        other => panic!("{what}: unknown world {other:?}"),
    }
}

fn check_error(what: &str, expect: &Map<String, Json>, got: Option<String>) {
    let kind = expect["error"].as_str().expect("error");
    assert_eq!(
        kind, "plugin-error",
        "{what}: natively only plugin errors can happen"
    );
    let message = got.unwrap_or_else(|| panic!("{what}: expected an error, got ok"));
    if let Some(m) = expect.get("message") {
        assert_eq!(Some(message.as_str()), m.as_str(), "{what}: error message");
    }
}

#[test]
fn plugin_vectors() {
    let bless_mode = std::env::var_os("EDGEREP_BLESS").is_some();
    let mut folders: Vec<PathBuf> = fs::read_dir(vectors_dir())
        .expect("tests/vectors/plugins exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.is_dir())
        .collect();
    folders.sort();
    let mut count = 0;
    let mut seen = Vec::new();
    for folder in folders {
        let mut files: Vec<PathBuf> = fs::read_dir(&folder)
            .expect("readable folder")
            .map(|e| e.expect("dir entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        files.sort();
        for file in files {
            let text = fs::read_to_string(&file).expect("readable case");
            let mut case: Json =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            if bless_mode && bless(&mut case) {
                let pretty = serde_json::to_string_pretty(&case).expect("serializes") + "\n";
                fs::write(&file, pretty).expect("writable case");
                eprintln!("blessed {}", file.display());
            }
            run_case(&file, &case);
            count += 1;
        }
        seen.push(
            folder
                .file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned(),
        );
    }
    for plugin in [
        "redact",
        "enrich",
        "filter",
        "merge-counter",
        "passthrough",
        "spin",
        "balloon",
        "trap",
        "flood",
    ] {
        assert!(seen.iter().any(|s| s == plugin), "no vectors for {plugin}");
    }
    eprintln!("{count} plugin vectors passed");
}
