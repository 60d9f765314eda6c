//! `{{name}}`: a resolver that picks, among concurrent versions, the one whose map value has the
//! largest unsigned `rank` (a version without one, or a delete, ranks 0); on a tie, the later
//! version in the list (versions come sorted by origin and sequence number, the same on every
//! node, so every node picks the same one).

use edgerep_guest::{Event, Resolution, Resolver};

/// The plugin.
pub struct Plugin;

/// The rank of one version.
fn rank(version: &Event) -> Result<u64, String> {
    Ok(version
        .value_cbor()?
        .and_then(|v| v.get("rank").and_then(|r| r.as_u64()))
        .unwrap_or(0))
}

impl Resolver for Plugin {
    fn resolve(_collection: &str, _key: &[u8], versions: Vec<Event>) -> Result<Resolution, String> {
        let mut best = (0usize, 0u64);
        for (i, version) in versions.iter().enumerate() {
            let r = rank(version)?;
            if i == 0 || r >= best.1 {
                best = (i, r);
            }
        }
        Ok(Resolution::pick(best.0))
    }
}

edgerep_guest::export_resolver!(Plugin);

#[cfg(test)]
mod tests {
    //! Native tests: `cargo test` in this folder runs the plugin's code without a node.
    use super::*;
    use edgerep_guest::cbor::Value;

    fn ranked(rank: u64) -> Event {
        let value: Value = [("rank", rank)].into_iter().collect();
        Event::put("things", "t-1", &value)
    }

    #[test]
    fn the_highest_rank_wins_and_ties_go_to_the_later_version() {
        let versions = vec![ranked(2), ranked(1)];
        assert_eq!(Plugin::resolve("things", b"t-1", versions), Ok(Resolution::pick(0)));
        let tie = vec![ranked(2), ranked(2)];
        assert_eq!(Plugin::resolve("things", b"t-1", tie), Ok(Resolution::pick(1)));
        let with_delete = vec![Event::delete("things", "t-1"), ranked(1)];
        assert_eq!(Plugin::resolve("things", b"t-1", with_delete), Ok(Resolution::pick(1)));
    }
}
