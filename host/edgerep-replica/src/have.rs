//! Per-origin cursors: for each origin node, a sequence number (every event of that origin up to
//! it is covered). Absent origins count as 0.

use edgerep_wire::NodeId;

pub use edgerep_wire::Have;

/// The cursor for `origin` (0 when absent).
pub fn get(have: &Have, origin: &NodeId) -> u64 {
    have.get(origin).copied().unwrap_or(0)
}

/// Raises `have[origin]` to at least `seq`; returns whether it moved. (Called per event on
/// the replication path: the origin is cloned only when it is new to `have`.)
pub fn raise(have: &mut Have, origin: &NodeId, seq: u64) -> bool {
    match have.get_mut(origin) {
        Some(held) if *held >= seq => false,
        Some(held) => {
            *held = seq;
            true
        }
        None if seq == 0 => false,
        None => {
            have.insert(origin.clone(), seq);
            true
        }
    }
}

/// Raises every cursor of `have` to at least the one in `other`; returns whether any moved.
pub fn join<'a>(have: &mut Have, other: impl IntoIterator<Item = (&'a NodeId, u64)>) -> bool {
    let mut moved = false;
    for (origin, seq) in other {
        moved |= raise(have, origin, seq);
    }
    moved
}

/// The wire form: entries in ascending origin order, zeros left out.
pub(crate) fn to_wire(have: &Have) -> Vec<(NodeId, u64)> {
    have.iter()
        .filter(|&(_, &s)| s > 0)
        .map(|(o, &s)| (o.clone(), s))
        .collect()
}

/// Σ over origins of `ahead − behind` where `ahead` is further (events `behind` lacks).
pub(crate) fn distance(ahead: &Have, behind: &Have) -> u64 {
    ahead
        .iter()
        .map(|(o, &s)| s.saturating_sub(get(behind, o)))
        .fold(0u64, u64::saturating_add)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> NodeId {
        NodeId::parse(s).unwrap()
    }

    #[test]
    fn join_takes_the_max_and_reports_movement() {
        let mut h = Have::from([(n("a"), 5)]);
        assert!(!join(&mut h, [(&n("a"), 3)]));
        assert!(join(&mut h, [(&n("a"), 6), (&n("b"), 1)]));
        assert_eq!(h, Have::from([(n("a"), 6), (n("b"), 1)]));
        assert_eq!(distance(&h, &Have::from([(n("a"), 4), (n("c"), 9)])), 3);
        assert_eq!(
            to_wire(&Have::from([(n("a"), 0), (n("b"), 2)])),
            vec![(n("b"), 2)]
        );
    }

    #[test]
    fn raise_moves_a_cursor_only_up_and_never_records_a_zero() {
        let mut have = Have::new();
        assert!(!raise(&mut have, &n("a"), 0));
        assert!(have.is_empty());
        assert!(raise(&mut have, &n("a"), 3));
        assert!(!raise(&mut have, &n("a"), 2));
        assert!(!raise(&mut have, &n("a"), 3));
        assert!(raise(&mut have, &n("a"), 4));
        assert_eq!(have, Have::from([(n("a"), 4)]));
    }
}
