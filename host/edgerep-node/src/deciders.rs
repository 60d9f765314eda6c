//! What decides each collection's state (its resolver and transforms on apply, their upgrades,
//! and the builds and settings of the plugins among them), recorded in the store at every start
//! and compared with the config at the next: a change in place would decide the versions this
//! node already holds one way and the ones still to come (or still on an offline site) another,
//! so it is refused as a reload refuses it. Upgrades (`[[collections.declared.upgrades]]` with
//! `effective_from`) are the way to change a decider; a collection whose store holds no keys yet
//! may change freely.

use std::collections::BTreeMap;

use edgerep_config::Config;
use serde_json::{Value as Json, json};

/// One record: per collection name, what decides it.
type Entries = serde_json::Map<String, Json>;

/// The entries of a record of `config` ([`record_pending`]): a JSON object by collection
/// name (canonical: sorted keys).
fn entries(config: &Config) -> Entries {
    let mut out = Entries::new();
    for c in &config.collections.declared {
        let plugins: BTreeMap<&str, Json> = c
            .deciding_plugins()
            .into_iter()
            .map(|name| {
                let settings = config.plugin(name).map_or(Json::Null, |p| {
                    json!({
                        "sha256": p.sha256,
                        "fuel": p.fuel,
                        "memory_bytes": p.memory_bytes,
                        "on_failure": p.on_failure.as_str(),
                        "params": p.params,
                    })
                });
                (name, settings)
            })
            .collect();
        let upgrades = upgrades_of(c);
        out.insert(
            c.name.clone(),
            json!({
                "resolver": c.resolver,
                "transforms_on_apply": c.transforms_on_apply,
                "upgrades": upgrades,
                "plugins": plugins,
            }),
        );
    }
    out
}

/// A collection's upgrades as the record keeps them: `[from_ms, resolver, transforms_on_apply]`.
fn upgrades_of(c: &edgerep_config::CollectionConfig) -> Vec<Json> {
    c.upgrades
        .iter()
        .map(|u| json!([u.from_ms, u.resolver, u.transforms_on_apply]))
        .collect()
}

/// A saved record, unless it cannot be read (written by a later version, or damaged): then
/// nothing is compared with it.
fn parse(record: &str) -> Option<Entries> {
    match serde_json::from_str(record) {
        Ok(Json::Object(entries)) => Some(entries),
        _ => None,
    }
}

/// Whether the `before` record names `collection` (it was declared when the record was made).
pub fn recorded(before: &str, collection: &str) -> bool {
    collection != RECORD_VERSION && parse(before).is_some_and(|e| e.contains_key(collection))
}

/// How `config` changes what decided the collections of the `before` record, for each
/// collection `holds` says the store has keys of: one line per change, empty if none. A record
/// that cannot be read is not compared ([`parse`]).
pub fn changes<E>(
    before: &str,
    config: &Config,
    holds: impl Fn(&str) -> Result<bool, E>,
    pending: impl Fn(&str, u64) -> bool,
) -> Result<Vec<String>, E> {
    changes_of(before, config, |_| true, holds, pending)
}

/// [`changes`] for the collections `which` names only (a reload: those it declares anew).
/// `pending` says which recorded upgrades may still change or go (see
/// `reload::pending_upgrade`): only those before the first of them must stay as they were.
pub fn changes_of<E>(
    before: &str,
    config: &Config,
    which: impl Fn(&str) -> bool,
    holds: impl Fn(&str) -> Result<bool, E>,
    pending: impl Fn(&str, u64) -> bool,
) -> Result<Vec<String>, E> {
    let Some(before) = parse(before) else {
        return Ok(Vec::new());
    };
    let now = entries(config);
    let mut problems = Vec::new();
    // A collection the record lacks was undeclared when the store last ran: events of it it
    // holds were decided by the defaults (taken undeclared). Not so in a record of an older
    // build, which a reload declaring a collection did not update: no comparison then.
    let undeclared = undeclared_entry();
    let versioned = before.contains_key(RECORD_VERSION);
    for (name, is) in now.iter().filter(|(name, _)| which(name)) {
        let Some(was) = before.get(name).or(versioned.then_some(&undeclared)) else {
            continue;
        };
        let differs = |field: &str| was.get(field) != is.get(field);
        let upgrades = |r: &Json| r.get("upgrades").and_then(Json::as_array).cloned();
        let settled = settled_of(was, name, &pending);
        let upgrades_kept = match (upgrades(was), upgrades(is)) {
            (Some(w), Some(i)) => i.starts_with(&w[..settled.min(w.len())]),
            _ => false,
        };
        let mut what = Vec::new();
        if differs("resolver") || differs("transforms_on_apply") {
            what.push("its resolver or transforms_on_apply changed in place".to_owned());
        }
        if !upgrades_kept {
            what.push("upgrades already in force changed or were removed".to_owned());
        }
        // Every plugin that decided it before decides it as it did (an appended upgrade may
        // name new plugins).
        let plugins = |r: &Json| r.get("plugins").and_then(Json::as_object).cloned();
        let deciding = plugins_of_settled(was, settled);
        let plugins_kept = match (plugins(was), plugins(is)) {
            (Some(w), Some(i)) => w
                .iter()
                .filter(|(name, _)| deciding.contains(name.as_str()))
                .all(|(name, settings)| i.get(name) == Some(settings)),
            _ => false,
        };
        if !plugins_kept {
            what.push("a plugin deciding it changed its build, parameters or limits".to_owned());
        }
        if what.is_empty() || !holds(name)? {
            continue;
        }
        problems.push(format!(
            "collection {name:?}: {} since this store last ran, and the store holds its keys: versions held here were decided one way and the ones still to come another; put the former settings back and add a [[collections.declared.upgrades]] entry with effective_from (upgrades can only be appended)",
            what.join("; ")
        ));
    }
    // A collection the record declared and the config no longer does is taken undeclared (when
    // undeclared collections are accepted): decided by the defaults from now on, a change in
    // place like any other if a resolver, transforms or upgrades decided it before.
    if config.collections.accept_undeclared {
        let decided_by_defaults = |was: &Json| {
            ["resolver", "transforms_on_apply", "upgrades", "plugins"]
                .iter()
                .all(|field| was.get(field) == undeclared.get(field))
        };
        for (name, was) in &before {
            if name == RECORD_VERSION
                || now.contains_key(name)
                || !which(name)
                || decided_by_defaults(was)
                || !holds(name)?
            {
                continue;
            }
            problems.push(format!(
                "collection {name:?} is no longer declared, so it would be taken undeclared (last writer wins, no transforms on apply), but a resolver, transforms on apply or upgrades decided it when this store last ran, and the store holds its keys: versions held here were decided one way and the ones still to come another; declare it again as it was"
            ));
        }
    }
    Ok(problems)
}

/// What decides a collection taken undeclared: the defaults.
fn undeclared_entry() -> Json {
    json!({
        "resolver": "lww",
        "transforms_on_apply": [],
        "upgrades": [],
        "plugins": {},
    })
}

/// Collections the `before` record declared, which `config` no longer declares nor takes
/// undeclared, and whose keys the store holds: their state here stays as it is, and peers'
/// events for them become dead letters (a renamed collection looks like this).
pub fn left_behind<E>(
    before: &str,
    config: &Config,
    holds: impl Fn(&str) -> Result<bool, E>,
) -> Result<Vec<String>, E> {
    let Some(before) = parse(before) else {
        return Ok(Vec::new());
    };
    if config.collections.accept_undeclared {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for name in before.keys().filter(|n| n.as_str() != RECORD_VERSION) {
        if config.collections.declared.iter().any(|c| c.name == *name) {
            continue;
        }
        if holds(name)? {
            out.push(name.clone());
        }
    }
    Ok(out)
}

/// The collections of `config` whose keys are still to be re-resolved: marked so in the
/// `before` record (a reload or a start recorded new upgrades before re-resolving, and did not
/// finish), or with upgrades the record lacks (a record an older build wrote, a file appended
/// to, or a pending upgrade changed with the node stopped). Their keys are
/// re-resolved at start, as a reload does: the same rule on every node, so running it again
/// changes nothing already right.
pub fn upgraded_since(before: &str, config: &Config) -> Vec<String> {
    let Some(before) = parse(before) else {
        return Vec::new();
    };
    config
        .collections
        .declared
        .iter()
        .filter(|c| {
            let was = before.get(&c.name);
            let pending = was
                .and_then(|r| r.get(RE_RESOLVE))
                .and_then(Json::as_bool)
                .unwrap_or(false);
            let recorded = was
                .and_then(|r| r.get("upgrades"))
                .and_then(Json::as_array)
                .cloned()
                .unwrap_or_default();
            pending || upgrades_of(c).iter().any(|u| !recorded.contains(u))
        })
        .map(|c| c.name.clone())
        .collect()
}

/// How many upgrades of collection `name` the `before` record holds (0 when it has no entry):
/// those after it were appended to the config file since, by no reload, and are checked at
/// start as a reload checks them. `None` (no check) for a record an older build wrote: it
/// saved a reload's upgrades only once their re-resolution ended, so it may lag behind
/// upgrades in force.
pub fn upgrades_recorded(
    before: &str,
    name: &str,
    pending: impl Fn(&str, u64) -> bool,
) -> Option<usize> {
    let before = parse(before)?;
    before.get(RECORD_VERSION)?;
    Some(
        before
            .get(name)
            .map_or(0, |r| settled_of(r, name, &pending)),
    )
}

/// How many of a record entry's upgrades of collection `name` are settled: those before the
/// first `pending` one.
fn settled_of(entry: &Json, name: &str, pending: &dyn Fn(&str, u64) -> bool) -> usize {
    entry
        .get("upgrades")
        .and_then(Json::as_array)
        .map_or(0, |upgrades| {
            upgrades
                .iter()
                .take_while(|u| {
                    u.get(0)
                        .and_then(Json::as_u64)
                        .is_none_or(|from_ms| !pending(name, from_ms))
                })
                .count()
        })
}

/// The plugins a record entry's own settings and its first `settled` upgrades name (each
/// upgrade is `[from_ms, resolver, transforms_on_apply]`).
fn plugins_of_settled(entry: &Json, settled: usize) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let mut add = |resolver: Option<&Json>, transforms: Option<&Json>| {
        if let Some(r) = resolver.and_then(Json::as_str) {
            out.insert(r.to_owned());
        }
        for t in transforms.and_then(Json::as_array).into_iter().flatten() {
            if let Some(t) = t.as_str() {
                out.insert(t.to_owned());
            }
        }
    };
    add(entry.get("resolver"), entry.get("transforms_on_apply"));
    for u in entry
        .get("upgrades")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
        .take(settled)
    {
        add(u.get(1), u.get(2));
    }
    out
}

/// The entry field marking a collection whose keys are still to be re-resolved.
const RE_RESOLVE: &str = "re_resolve";

/// The record's key for its version (no collection name holds `#`): records with it save a
/// reload's upgrades before they take effect.
const RECORD_VERSION: &str = "#record";

/// The record of `config` (its [`entries`]), with the collections in `pending`, and those the
/// `before` record marks, marked as still to be re-resolved (until [`clear_marks`] clears a
/// mark, every start re-resolves them), and the `before` record's entries for collections the
/// config no longer declares: declared again later, they are compared with what decided them,
/// not taken as new. Where undeclared collections are accepted, such a collection is taken
/// undeclared from now on (a start lets that happen only to one whose keys the store does not
/// hold, or that the defaults decided already): its entry is the defaults'.
pub fn record_pending(config: &Config, before: Option<&str>, pending: &[String]) -> String {
    let mut now = entries(config);
    let before = before.and_then(parse).unwrap_or_default();
    let marked = |name: &str| {
        pending.iter().any(|p| p == name)
            || before
                .get(name)
                .and_then(|r| r.get(RE_RESOLVE))
                .and_then(Json::as_bool)
                .unwrap_or(false)
    };
    for (name, entry) in now.iter_mut() {
        if marked(name)
            && let Json::Object(entry) = entry
        {
            entry.insert(RE_RESOLVE.to_owned(), Json::Bool(true));
        }
    }
    for (name, was) in before {
        if name == RECORD_VERSION {
            continue;
        }
        let was = if config.collections.accept_undeclared {
            undeclared_entry()
        } else {
            was
        };
        now.entry(name).or_insert(was);
    }
    now.insert(RECORD_VERSION.to_owned(), Json::from(2));
    Json::Object(now).to_string()
}

/// Each of `collections` with how many upgrades `config` gives it (what [`clear_marks`] takes).
pub fn with_upgrades<'a>(
    config: &Config,
    collections: impl Iterator<Item = &'a String>,
) -> Vec<(String, usize)> {
    collections
        .map(|c| {
            let upgrades = config.collection(c).map_or(0, |d| d.upgrades.len());
            (c.clone(), upgrades)
        })
        .collect()
}

/// The `current` record with the marks of the collections in `done` (re-resolved, each with
/// how many upgrades it had then) cleared; `None` when it cannot be read.
pub fn clear_marks(current: &str, done: &[(String, usize)]) -> Option<String> {
    let mut record = parse(current)?;
    for (name, upgrades) in done {
        // Only if the entry still holds the upgrades re-resolved: a reload meanwhile may have
        // appended one, whose re-resolution is still to run.
        if let Some(Json::Object(entry)) = record.get_mut(name)
            && entry
                .get("upgrades")
                .and_then(Json::as_array)
                .is_some_and(|u| u.len() == *upgrades)
        {
            entry.remove(RE_RESOLVE);
        }
    }
    Some(Json::Object(record).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(body: &str) -> Config {
        let text = format!(
            "[node]\nid = \"n\"\ndata_dir = \"/tmp/unused\"\n[api]\nlisten = \"127.0.0.1:0\"\n[replication]\nlisten = \"127.0.0.1:1\"\n{body}"
        );
        Config::parse(&text, std::path::Path::new("/tmp/edgerep.toml")).unwrap()
    }

    /// A collection the record lacks counts as taken undeclared in a record of this build; in
    /// one of an older build (whose reloads did not record new collections) it is not judged.
    #[test]
    fn a_collection_the_record_lacks_is_judged_only_in_a_versioned_record() {
        let plain = config("");
        let declared = config(&format!(
            "[[collections.declared]]\nname = \"c\"\nresolver = \"merge\"\n\n[plugins.merge]\npath = \"/tmp/m.wasm\"\nsha256 = \"{}\"\n",
            "0".repeat(64)
        ));
        let holds = |_: &str| Ok::<bool, ()>(true);
        let versioned = record_pending(&plain, None, &[]);
        let problems = changes(&versioned, &declared, holds, |_, _| false).unwrap();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("\"c\""), "{problems:?}");
        let older = Json::Object(entries(&plain)).to_string();
        assert!(
            changes(&older, &declared, holds, |_, _| false)
                .unwrap()
                .is_empty()
        );
        // And nothing held: nothing to judge.
        assert!(
            changes(
                &versioned,
                &declared,
                |_| Ok::<bool, ()>(false),
                |_, _| false
            )
            .unwrap()
            .is_empty()
        );
    }

    /// A declared collection the config dropped (renamed, say) while the store holds its keys
    /// is named; not when the store holds none, nor when undeclared collections are taken.
    #[test]
    fn a_collection_dropped_while_the_store_holds_it_is_named() {
        let declared = config("[[collections.declared]]\nname = \"orders\"\n");
        let renamed = config("[[collections.declared]]\nname = \"order\"\n");
        let record = record_pending(&declared, None, &[]);
        let holds = |c: &str| Ok::<bool, ()>(c == "orders");
        assert_eq!(left_behind(&record, &renamed, holds).unwrap(), ["orders"]);
        assert!(left_behind(&record, &declared, holds).unwrap().is_empty());
        assert!(
            left_behind(&record, &renamed, |_| Ok::<bool, ()>(false))
                .unwrap()
                .is_empty()
        );
        let open = config(
            "[collections]\naccept_undeclared = true\n[[collections.declared]]\nname = \"order\"\n",
        );
        assert!(left_behind(&record, &open, holds).unwrap().is_empty());
    }

    /// A collection a plugin resolver decided, no longer declared while undeclared collections
    /// are accepted, would be decided by the defaults from now on: a change in place, refused
    /// when the store holds its keys. One the defaults decided before may go.
    #[test]
    fn a_decided_collection_dropped_into_the_undeclared_ones_is_a_change() {
        let merge = format!(
            "[plugins.merge]\npath = \"/tmp/m.wasm\"\nsha256 = \"{}\"\n",
            "0".repeat(64)
        );
        let declared = config(&format!(
            "[collections]\naccept_undeclared = true\n[[collections.declared]]\nname = \"tally\"\nresolver = \"merge\"\n\n[[collections.declared]]\nname = \"plain\"\n\n{merge}"
        ));
        let record = record_pending(&declared, None, &[]);
        let dropped = config(&format!("[collections]\naccept_undeclared = true\n{merge}"));
        let holds = |_: &str| Ok::<bool, ()>(true);
        let problems = changes(&record, &dropped, holds, |_, _| false).unwrap();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("\"tally\" is no longer declared"),
            "{problems:?}"
        );
        // Not when the store holds none of its keys.
        assert!(
            changes(&record, &dropped, |_| Ok::<bool, ()>(false), |_, _| false)
                .unwrap()
                .is_empty()
        );
        // Not when undeclared collections are refused (then `left_behind` warns of it).
        let closed = config(&merge);
        assert!(
            changes(&record, &closed, holds, |_, _| false)
                .unwrap()
                .is_empty()
        );
        // A start it passed (the store held none of its keys) records it taken undeclared:
        // the next start, the store holding keys the defaults decided, passes too, and
        // declaring it again with its resolver is then the change in place.
        let taken = record_pending(&dropped, Some(&record), &[]);
        assert!(
            changes(&taken, &dropped, holds, |_, _| false)
                .unwrap()
                .is_empty()
        );
        let again = changes(&taken, &declared, holds, |_, _| false).unwrap();
        assert_eq!(again.len(), 1, "{again:?}");
        assert!(again[0].contains("\"tally\""), "{again:?}");
    }
}
