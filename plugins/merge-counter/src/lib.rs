//! `merge-counter`: merges per-origin counters.
//!
//! Each version's value is a CBOR map from text (an origin, say) to an unsigned integer (that
//! origin's count). The merge takes, for every key, its largest count over all put versions, and
//! returns `merge(some(map))`. Delete versions add nothing; when every version is a delete the
//! result is `merge(none)`. A put whose value is not such a map is an error.

use std::collections::BTreeMap;

use edgerep_guest::cbor::Value;
use edgerep_guest::{Event, Resolution, Resolver};

/// The plugin.
pub struct MergeCounter;

impl Resolver for MergeCounter {
    fn resolve(_collection: &str, _key: &[u8], versions: Vec<Event>) -> Result<Resolution, String> {
        let mut merged: BTreeMap<String, u64> = BTreeMap::new();
        let mut any_put = false;
        for (i, version) in versions.iter().enumerate() {
            let bad = || {
                format!(
                    "merge-counter: version {i} ({}/{}) is not a map of text to unsigned integers",
                    version.origin, version.seq
                )
            };
            let Some(value) = version.value_cbor().map_err(|_| bad())? else {
                continue;
            };
            any_put = true;
            let entries = value.as_map().ok_or_else(bad)?;
            for (k, n) in entries {
                let (Some(k), Some(n)) = (k.as_str(), n.as_u64()) else {
                    return Err(bad());
                };
                let count = merged.entry(k.to_owned()).or_insert(0);
                *count = (*count).max(n);
            }
        }
        if !any_put {
            return Ok(Resolution::deleted());
        }
        let map: Value = merged.into_iter().collect();
        Ok(Resolution::merged(&map))
    }
}

edgerep_guest::export_resolver!(MergeCounter);
