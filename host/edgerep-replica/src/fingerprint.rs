//! Comparing what two nodes run for their collections. Differences are reported, not fatal: a
//! node may be mid-upgrade, and the operator decides.

use std::collections::BTreeMap;

use crate::message::CollectionFingerprint;

/// Sorts fingerprints by collection and plugins by name, the order the protocol requires.
///
/// # Panics
/// If two fingerprints name the same collection, or one lists the same plugin twice.
pub(crate) fn normalize(fingerprint: &mut [CollectionFingerprint]) {
    fingerprint.sort_by(|a, b| a.name.cmp(&b.name));
    for pair in fingerprint.windows(2) {
        assert!(
            pair[0].name != pair[1].name,
            "collection {:?} fingerprinted twice",
            pair[0].name
        );
    }
    for f in fingerprint {
        f.plugins.sort();
        for pair in f.plugins.windows(2) {
            assert!(
                pair[0].name != pair[1].name,
                "plugin {:?} listed twice for {:?}",
                pair[0].name,
                f.name
            );
        }
    }
}

/// One difference between our fingerprint and the peer's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Difference {
    /// One sentence.
    pub(crate) text: String,
    /// Whether the two nodes would decide the same events differently: their resolvers
    /// differ (name, build or settings) for some time both have configured. Such a session
    /// does not start (replication with that peer pauses, with the reason in status) rather
    /// than let the states part. Transforms on apply may differ by design (those collections
    /// are compared on the versions) and transforms on ingest only shape a node's own writes:
    /// reported, not pausing.
    pub(crate) pauses: bool,
    /// The peer decides the collection's events from this time on with an upgrade this node
    /// does not have (its upgrades are ours and more): the collection pauses here from then.
    pub(crate) lacks_upgrade: Option<(String, u64)>,
}

/// A collection's epochs: (from, resolver, transforms on apply), the first from 0.
fn epochs(f: &CollectionFingerprint) -> Vec<(u64, &str, &[String])> {
    std::iter::once((0, f.resolver.as_str(), f.transforms_on_apply.as_slice()))
        .chain(f.upgrades.iter().map(|u| {
            (
                u.from_ms,
                u.resolver.as_str(),
                u.transforms_on_apply.as_slice(),
            )
        }))
        .collect()
}

/// Most differences a report (an error, the mismatches kept for the status, the log) lists; the
/// rest are counted (a peer's Hello may name thousands of collections or policy entries).
pub(crate) const REPORTED_DIFFERENCES: usize = 16;

/// `list` with at most [`REPORTED_DIFFERENCES`] items, the rest counted in a last one.
pub(crate) fn at_most_reported(mut list: Vec<String>) -> Vec<String> {
    if list.len() > REPORTED_DIFFERENCES {
        let more = list.len() - REPORTED_DIFFERENCES;
        list.truncate(REPORTED_DIFFERENCES);
        list.push(format!("and {more} more"));
    }
    list
}

/// Every difference between our fingerprint and the peer's, in collection order.
pub(crate) fn differences(
    ours: &[CollectionFingerprint],
    theirs: &[CollectionFingerprint],
) -> Vec<Difference> {
    let mut by_name: BTreeMap<
        &str,
        (
            Option<&CollectionFingerprint>,
            Option<&CollectionFingerprint>,
        ),
    > = BTreeMap::new();
    for f in ours {
        by_name.entry(&f.name).or_default().0 = Some(f);
    }
    for f in theirs {
        by_name.entry(&f.name).or_default().1 = Some(f);
    }
    let mut out = Vec::new();
    let say = |out: &mut Vec<Difference>, text: String, pauses: bool| {
        out.push(Difference {
            text,
            pauses,
            lacks_upgrade: None,
        })
    };
    let deciding = |f: &CollectionFingerprint| epochs(f).iter().any(|e| e.1 != "lww");
    for (name, pair) in by_name {
        match pair {
            (Some(a), None) => say(
                &mut out,
                format!("collection {name}: configured here, not on the peer"),
                deciding(a),
            ),
            (None, Some(b)) => say(
                &mut out,
                format!("collection {name}: configured on the peer, not here"),
                deciding(b),
            ),
            (Some(a), Some(b)) => {
                let (ea, eb) = (epochs(a), epochs(b));
                // The resolvers both sides run for some time (their builds must agree too).
                let mut shared_resolvers: Vec<&str> = Vec::new();
                for (i, (x, y)) in ea.iter().zip(eb.iter()).enumerate() {
                    let which = if i == 0 {
                        String::new()
                    } else {
                        format!("upgrade {i}: ")
                    };
                    if x.0 != y.0 {
                        say(
                            &mut out,
                            format!(
                                "collection {name}: {which}in force from {} ms here, {} ms on the peer",
                                x.0, y.0
                            ),
                            true,
                        );
                        break;
                    }
                    if x.1 != y.1 {
                        say(
                            &mut out,
                            format!(
                                "collection {name}: {which}resolver {:?} here, {:?} on the peer",
                                x.1, y.1
                            ),
                            true,
                        );
                    } else {
                        shared_resolvers.push(x.1);
                    }
                    if x.2 != y.2 {
                        // A node with transforms on apply compares the collection on its
                        // versions; one without compares values unless told otherwise.
                        let hint = if x.2.is_empty() != y.2.is_empty() {
                            "; the node without them must set compare = \"versions\" for the collection, or anti-entropy finds its keys differing at every session"
                        } else {
                            ""
                        };
                        say(
                            &mut out,
                            format!(
                                "collection {name}: {which}transforms on apply {:?} here, {:?} on the peer{hint}",
                                x.2, y.2
                            ),
                            false,
                        );
                    }
                }
                let common = ea.len().min(eb.len());
                if ea[..common] == eb[..common] {
                    if let Some(&(from, resolver, transforms)) = eb.get(common) {
                        out.push(Difference {
                            text: format!(
                                "collection {name}: the peer decides events from {from} ms on with an upgrade (resolver {resolver:?}, transforms on apply {transforms:?}) this node's config does not have"
                            ),
                            pauses: false,
                            lacks_upgrade: Some((name.to_owned(), from)),
                        });
                    } else if let Some(&(from, _, _)) = ea.get(common) {
                        out.push(Difference {
                            text: format!(
                                "collection {name}: this node decides events from {from} ms on with an upgrade the peer's config does not have"
                            ),
                            pauses: false,
                            lacks_upgrade: None,
                        });
                    }
                }
                let ap: BTreeMap<_, _> = a.plugins.iter().map(|p| (&p.name, p)).collect();
                let bp: BTreeMap<_, _> = b.plugins.iter().map(|p| (&p.name, p)).collect();
                let mut plugins: Vec<_> = ap.keys().chain(bp.keys()).collect();
                plugins.sort();
                plugins.dedup();
                for p in plugins {
                    // A resolver both sides run for the same events.
                    let resolver = shared_resolvers.contains(&p.as_str());
                    match (ap.get(p), bp.get(p)) {
                        (Some(x), Some(y)) => {
                            if x.sha256 != y.sha256 {
                                say(
                                    &mut out,
                                    format!(
                                        "collection {name}: plugin {p} has sha256 {} here, {} on the peer",
                                        x.sha256, y.sha256
                                    ),
                                    resolver,
                                );
                            }
                            if x.settings != y.settings {
                                say(
                                    &mut out,
                                    format!(
                                        "collection {name}: plugin {p} has settings {:?} here, {:?} on the peer",
                                        x.settings, y.settings
                                    ),
                                    resolver,
                                );
                            }
                        }
                        (Some(_), None) => say(
                            &mut out,
                            format!("collection {name}: plugin {p} here, not on the peer"),
                            false,
                        ),
                        (None, Some(_)) => say(
                            &mut out,
                            format!("collection {name}: plugin {p} on the peer, not here"),
                            false,
                        ),
                        (None, None) => {}
                    }
                }
            }
            (None, None) => unreachable!("every entry has one side"),
        }
    }
    out
}

/// Every difference between our policy and the peer's (both sorted by name), one sentence each.
/// Unlike collection fingerprints these are fatal: two nodes with different limits, write
/// authorization or revocations would decide the same events differently.
pub(crate) fn policy_differences(
    ours: &[(String, String)],
    theirs: &[(String, String)],
) -> Vec<String> {
    let mut by_name: BTreeMap<&str, (Option<&str>, Option<&str>)> = BTreeMap::new();
    for (k, v) in ours {
        by_name.entry(k).or_default().0 = Some(v);
    }
    for (k, v) in theirs {
        by_name.entry(k).or_default().1 = Some(v);
    }
    let differences = by_name
        .into_iter()
        .filter(|(_, (a, b))| a != b)
        .map(|(name, (a, b))| {
            format!(
                "{name}: {} here, {} on the peer",
                a.unwrap_or("(unset)"),
                b.unwrap_or("(unset)")
            )
        })
        .collect();
    at_most_reported(differences)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::PluginFingerprint;

    /// A peer's policy of thousands of entries, all different: the report names 16 and counts
    /// the rest (it goes to the log and the status on every reconnect).
    #[test]
    fn a_long_policy_difference_is_reported_in_part() {
        let ours: Vec<(String, String)> = Vec::new();
        let theirs: Vec<(String, String)> = (0..4096)
            .map(|i| (format!("p{i:05}"), "x".repeat(1024)))
            .collect();
        let found = policy_differences(&ours, &theirs);
        assert_eq!(found.len(), REPORTED_DIFFERENCES + 1);
        assert_eq!(found.last().unwrap(), "and 4080 more");
        assert!(found[0].starts_with("p00000: (unset) here, xxx"));
        let few = policy_differences(&ours, &theirs[..3]);
        assert_eq!(few.len(), 3);
    }

    fn fp(
        name: &str,
        resolver: &str,
        transforms: &[&str],
        plugins: &[(&str, char)],
    ) -> CollectionFingerprint {
        CollectionFingerprint {
            name: name.into(),
            resolver: resolver.into(),
            transforms_on_apply: transforms.iter().map(|t| t.to_string()).collect(),
            plugins: plugins
                .iter()
                .map(|(n, c)| PluginFingerprint {
                    name: n.to_string(),
                    sha256: c.to_string().repeat(64),
                    settings: format!("fuel={c}"),
                })
                .collect(),
            upgrades: Vec::new(),
        }
    }

    #[test]
    fn equal_fingerprints_have_no_differences() {
        let a = vec![fp("c", "lww", &["t"], &[("t", 'a')])];
        assert!(differences(&a, &a.clone()).is_empty());
    }

    #[test]
    fn each_kind_of_difference_is_named() {
        let ours = vec![
            fp("a", "lww", &[], &[]),
            fp("c", "lww", &["x", "y"], &[("p", 'a'), ("q", 'b')]),
        ];
        let theirs = vec![
            fp("b", "lww", &[], &[]),
            fp("c", "max", &["y", "x"], &[("p", 'c'), ("r", 'b')]),
        ];
        let got: Vec<String> = differences(&ours, &theirs)
            .into_iter()
            .map(|d| d.text)
            .collect();
        let want = [
            "collection a: configured here, not on the peer",
            "collection b: configured on the peer, not here",
            "collection c: resolver \"lww\" here, \"max\" on the peer",
            "collection c: transforms on apply [\"x\", \"y\"] here, [\"y\", \"x\"] on the peer",
            &format!(
                "collection c: plugin p has sha256 {} here, {} on the peer",
                "a".repeat(64),
                "c".repeat(64)
            ),
            "collection c: plugin p has settings \"fuel=a\" here, \"fuel=c\" on the peer",
            "collection c: plugin q here, not on the peer",
            "collection c: plugin r on the peer, not here",
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn normalize_sorts_collections_and_plugins() {
        let mut f = vec![
            fp("b", "lww", &[], &[("z", 'a'), ("y", 'b')]),
            fp("a", "lww", &[], &[]),
        ];
        normalize(&mut f);
        assert_eq!(f[0].name, "a");
        assert_eq!(f[1].plugins[0].name, "y");
    }

    #[test]
    fn only_resolver_differences_pause() {
        let pauses = |ours: &[CollectionFingerprint], theirs: &[CollectionFingerprint]| {
            differences(ours, theirs)
                .into_iter()
                .map(|d| d.pauses)
                .collect::<Vec<_>>()
        };
        // A resolver build or its settings.
        let a = vec![fp("c", "m", &[], &[("m", 'a')])];
        assert_eq!(
            pauses(&a, &[fp("c", "m", &[], &[("m", 'b')])]),
            [true, true]
        );
        // Another resolver; a collection with a plugin resolver on one side only.
        assert_eq!(pauses(&a, &[fp("c", "lww", &[], &[])]), [true, false]);
        assert_eq!(pauses(&a, &[]), [true]);
        assert_eq!(pauses(&[fp("c", "lww", &[], &[])], &[]), [false]);
        // Transforms on apply (and their builds) differ by design.
        let t = vec![fp("c", "lww", &["t"], &[("t", 'a')])];
        assert_eq!(
            pauses(&t, &[fp("c", "lww", &["u"], &[("u", 'a')])]),
            [false, false, false]
        );
        assert_eq!(
            pauses(&t, &[fp("c", "lww", &["t"], &[("t", 'b')])]),
            [false, false]
        );
    }

    #[test]
    fn an_upgrade_the_peer_has_and_we_lack_pauses_the_collection_not_the_session() {
        use crate::message::UpgradeFingerprint;
        let upgrade = |from_ms: u64, resolver: &str| UpgradeFingerprint {
            from_ms,
            resolver: resolver.into(),
            transforms_on_apply: Vec::new(),
        };
        let base = fp("c", "v1", &[], &[("v1", 'a')]);
        let mut upgraded = fp("c", "v1", &[], &[("v1", 'a'), ("v2", 'b')]);
        upgraded.upgrades = vec![upgrade(5000, "v2")];

        let found = differences(std::slice::from_ref(&base), std::slice::from_ref(&upgraded));
        assert!(found.iter().all(|d| !d.pauses), "{found:?}");
        assert_eq!(
            found
                .iter()
                .filter_map(|d| d.lacks_upgrade.clone())
                .collect::<Vec<_>>(),
            [("c".to_owned(), 5000)]
        );
        // The upgraded side only reports it.
        let found = differences(std::slice::from_ref(&upgraded), std::slice::from_ref(&base));
        assert!(
            found.iter().all(|d| !d.pauses && d.lacks_upgrade.is_none()),
            "{found:?}"
        );
        // Equal schedules: nothing.
        assert!(
            differences(
                std::slice::from_ref(&upgraded),
                std::slice::from_ref(&upgraded)
            )
            .is_empty()
        );
        // The same upgrade at another time, or another resolver from the same time: the
        // nodes would decide the same events differently.
        let mut other_time = upgraded.clone();
        other_time.upgrades = vec![upgrade(6000, "v2")];
        assert!(
            differences(std::slice::from_ref(&upgraded), &[other_time])
                .iter()
                .any(|d| d.pauses)
        );
        let mut other_resolver = upgraded.clone();
        other_resolver.upgrades = vec![upgrade(5000, "v1")];
        assert!(
            differences(std::slice::from_ref(&upgraded), &[other_resolver])
                .iter()
                .any(|d| d.pauses)
        );
        // A build that differs for a resolver only the peer's upgrade runs does not pause.
        let mut later = upgraded.clone();
        later.upgrades.push(upgrade(9000, "v3"));
        later.plugins.push(PluginFingerprint {
            name: "v3".into(),
            sha256: "d".repeat(64),
            settings: String::new(),
        });
        let found = differences(std::slice::from_ref(&upgraded), &[later]);
        assert!(found.iter().all(|d| !d.pauses), "{found:?}");
        assert!(
            found
                .iter()
                .any(|d| d.lacks_upgrade == Some(("c".into(), 9000)))
        );
    }
}
