//! What a node's Hello carries for its peers to compare: the fingerprint of the collections,
//! resolvers and plugins that decide state, and the policy every node must share.

use super::*;

/// The fingerprint of what this node runs, per collection, for the handshake.
pub fn fingerprint(config: &Config) -> Vec<CollectionFingerprint> {
    let mut out: Vec<CollectionFingerprint> = config
        .collections
        .declared
        .iter()
        .map(|c| {
            let mut names: Vec<&str> = c.transforms_on_ingest.iter().map(String::as_str).collect();
            names.extend(c.deciding_plugins());
            let mut plugins: Vec<PluginFingerprint> = names
                .into_iter()
                .filter_map(|n| config.plugin(n).map(plugin_fingerprint))
                .collect();
            plugins.sort();
            plugins.dedup();
            CollectionFingerprint {
                name: c.name.clone(),
                resolver: c.resolver.clone(),
                transforms_on_apply: c.transforms_on_apply.clone(),
                plugins,
                upgrades: c
                    .upgrades
                    .iter()
                    .map(|u| UpgradeFingerprint {
                        from_ms: u.from_ms,
                        resolver: u.resolver.clone(),
                        transforms_on_apply: u.transforms_on_apply.clone(),
                    })
                    .collect(),
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// [`fingerprint`] without the plugins that decide no collection's state (transforms on
/// ingest only): what a change of makes peers handshake again on a reload.
pub(crate) fn deciding_fingerprint(config: &Config) -> Vec<CollectionFingerprint> {
    let mut out = fingerprint(config);
    for f in &mut out {
        let deciding = config
            .collection(&f.name)
            .map(|c| c.deciding_plugins())
            .unwrap_or_default();
        f.plugins.retain(|p| deciding.contains(p.name.as_str()));
    }
    out
}

/// The collections whose values this node's transforms on apply shape (in some epoch).
pub(super) fn transformed_on_apply(config: &Config) -> BTreeSet<String> {
    config
        .collections
        .declared
        .iter()
        .filter(|c| c.epochs().any(|(_, _, t)| !t.is_empty()))
        .map(|c| c.name.clone())
        .collect()
}

/// What decides what a plugin does, for the handshake: its build and the settings that change
/// its output. Parameters go as a hash (they may hold secrets); the deadline is left out (it is
/// per machine: calls past it are retried, then halt or are found by anti-entropy).
fn plugin_fingerprint(p: &edgerep_config::PluginConfig) -> PluginFingerprint {
    let mut params = blake3::Hasher::new();
    for (k, v) in &p.params {
        params.update(&(k.len() as u64).to_le_bytes());
        params.update(k.as_bytes());
        params.update(&(v.len() as u64).to_le_bytes());
        params.update(v.as_bytes());
    }
    PluginFingerprint {
        name: p.name.clone(),
        sha256: p.sha256.clone(),
        settings: format!(
            "fuel={} memory_bytes={} on_failure={} params=blake3:{}",
            p.fuel,
            p.memory_bytes,
            p.on_failure.as_str(),
            &params.finalize().to_hex()[..32]
        ),
    }
}

/// The policy peers must agree on, as (name, value) pairs sorted by name: the limits an event
/// is checked against, write authorization and revocations (see `edgerep_replica::Hello`).
pub fn policy(config: &Config) -> Vec<(String, String)> {
    let l = &config.limits;
    let mut out: Vec<(String, String)> = [
        ("limits.max_key_bytes", l.max_key_bytes),
        ("limits.max_meta_bytes", l.max_meta_bytes),
        ("limits.max_meta_entries", l.max_meta_entries),
        ("limits.max_value_bytes", l.max_value_bytes),
        ("limits.max_value_depth", l.max_value_depth),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_string()))
    .collect();
    out.push((
        "replication.authenticate".to_owned(),
        config.replication.authenticate.to_string(),
    ));
    for (origin, collections) in &config.authorization {
        let mut c = collections.clone();
        c.sort();
        c.dedup();
        out.push((format!("authorization.{origin}"), c.join(",")));
    }
    for r in &config.revoked {
        out.push((format!("revoked.{}", r.node), r.after_seq.to_string()));
    }
    out.sort();
    out
}
