//! Anti-entropy between two peers, sans IO: range-based reconciliation of their states over the
//! 16-ary bucket tree of `edgerep_wire::aae` (see `docs/design.md`, "Anti-entropy").
//!
//! A session is a ping-pong of [`crate::Message::Reconcile`] messages. Each names ranges (tree
//! nodes) with the sender's fingerprint of each, or the sender's whole list of entries (state
//! key and entry hash) in a range. The receiver answers every range whose fingerprint differs
//! from its own: with the fingerprints of the range's 16 children, or with its own entries of
//! the range when it holds at most [`ITEMS_UP_TO`] there (or the range is a single bucket). An
//! entry list is compared key by key: keys whose entries differ are repaired by
//! [`crate::Message::Repair`] (each side sends its versions of them, proven like snapshot
//! versions, and names the keys it wants). Equal ranges end; a message that needs no answer is
//! answered by an empty one, and an empty one is not answered: the session is over.
//!
//! Invariant: answering is a pure function of the message and the local tree, so a responder
//! keeps no state per session; work per message is bounded by the message's size and
//! [`MAX_RANGES`], [`MAX_KEYS`].

use std::collections::BTreeMap;

use edgerep_wire::aae::{Node, bucket_of};

use crate::log::LogError;

/// A range's entries are listed instead of split when the sender holds at most this many there.
pub const ITEMS_UP_TO: u64 = 32;
/// Most ranges (fingerprints and entry lists) in one message.
pub const MAX_RANGES: usize = 4096;
/// Most keys one side lists in one message (entries, or keys wanted in a repair).
pub const MAX_KEYS: usize = 16384;
/// Most bytes of entries (state keys and hashes) one message lists: keys run to 16 KiB, so
/// [`MAX_KEYS`] of them could pass what a frame holds. Ranges past it are left for the next
/// session.
pub const MAX_LISTED_BYTES: usize = 4 << 20;
/// Most differing ranges one answer goes into (each becomes 16 fingerprints or an entry list,
/// within [`MAX_RANGES`] and [`MAX_KEYS`] per message); the rest are found by the next session.
pub const MAX_DIFFERING: usize = 2048;

/// One entry as a range lists it: (state key `collection 0x00 key`, the first 16 bytes of the
/// entry hash).
pub type Entry = (Vec<u8>, [u8; 16]);

/// A range and the sender's fingerprint of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeFingerprint {
    /// The range: a node of the bucket tree.
    pub node: Node,
    /// The first 16 bytes of BLAKE3(sum of entry hashes ‖ count).
    pub fingerprint: [u8; 16],
    /// How many entries the sender holds in the range.
    pub count: u64,
}

/// A range and every entry the sender holds in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeItems {
    /// The range.
    pub node: Node,
    /// (state key `collection 0x00 key`, the first 16 bytes of the entry hash), in (bucket,
    /// state key) order.
    pub items: Vec<Entry>,
}

/// The local side of the comparison: the node's anti-entropy index.
pub trait Tree {
    /// The fingerprint of `node` and how many entries it holds.
    fn fingerprint(&self, node: Node) -> Result<([u8; 16], u64), LogError>;
    /// The entries under each of `nodes`: (state key, first 16 bytes of the entry hash), in
    /// (bucket, state key) order. Called once per message, with every range it needs.
    fn items_of(&self, nodes: &[Node]) -> Result<Vec<Vec<Entry>>, LogError>;
}

/// What to send after a Reconcile message, and what it found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Step {
    /// Ranges to send with their fingerprints.
    pub fingerprints: Vec<RangeFingerprint>,
    /// Ranges to send with their entries.
    pub items: Vec<RangeItems>,
    /// Keys whose versions this side should send (it holds them, the peer lacks them or holds
    /// others).
    pub send: Vec<Vec<u8>>,
    /// Keys whose versions this side wants from the peer.
    pub want: Vec<Vec<u8>>,
    /// Entries compared key by key.
    pub compared: u64,
}

impl Step {
    /// Whether the step has ranges to send.
    pub fn has_ranges(&self) -> bool {
        !self.fingerprints.is_empty() || !self.items.is_empty()
    }
}

/// How one side describes `node` to the other: its entries when few (or a single bucket), else
/// its children's fingerprints. Returns whether it lists entries (filled in later, in one pass).
fn describe(tree: &impl Tree, node: Node, count: u64, step: &mut Step) -> Result<bool, LogError> {
    if count <= ITEMS_UP_TO || node.children().is_empty() {
        return Ok(true);
    }
    for child in node.children() {
        let (fingerprint, count) = tree.fingerprint(child)?;
        step.fingerprints.push(RangeFingerprint {
            node: child,
            fingerprint,
            count,
        });
    }
    Ok(false)
}

/// The first message of a session: the whole tree described from the root.
pub fn open(tree: &impl Tree) -> Result<Step, LogError> {
    let mut step = Step::default();
    let (_, count) = tree.fingerprint(Node::ROOT)?;
    if describe(tree, Node::ROOT, count, &mut step)? {
        let items = tree.items_of(&[Node::ROOT])?.pop().unwrap_or_default();
        step.items.push(RangeItems {
            node: Node::ROOT,
            items,
        });
    }
    Ok(step)
}

/// Where a session starts in a list it may cut short (ranges past [`MAX_DIFFERING`], keys past
/// a repair's bound): a place of its own for each `seed` (the session's id). Keys that differ
/// at every session (by design, or because no repair settles them) would otherwise fill the
/// first places every time and keep the same others, real drift among them, out of every
/// session.
pub fn rotation(seed: u64, len: usize) -> usize {
    if len == 0 {
        return 0;
    }
    // splitmix64's finalizer: neighbouring ids land far apart.
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z % len as u64) as usize
}

/// Answers a Reconcile message's ranges. When more ranges differ than one answer takes, those
/// taken start at the session's own place (see [`rotation`]; `seed`: the session's id).
pub fn answer(
    tree: &impl Tree,
    fingerprints: &[RangeFingerprint],
    items: &[RangeItems],
    seed: u64,
) -> Result<Step, LogError> {
    let mut step = Step::default();
    // Ranges this side lists, then ranges the peer listed: their entries read in one pass.
    let mut listed = Vec::new();
    let (mut differing, mut listed_keys) = (0, 0u64);
    let start = rotation(seed, fingerprints.len());
    for theirs in fingerprints[start..].iter().chain(&fingerprints[..start]) {
        let (mine, count) = tree.fingerprint(theirs.node)?;
        if mine == theirs.fingerprint || differing >= MAX_DIFFERING {
            continue;
        }
        // Room in the answer: 16 fingerprints, or one entry list of `count` keys.
        let lists = count <= ITEMS_UP_TO || theirs.node.children().is_empty();
        let fits = if lists {
            step.items.len() + listed.len() < MAX_RANGES && listed_keys + count <= MAX_KEYS as u64
        } else {
            step.fingerprints.len() + 16 <= MAX_RANGES
        };
        if !fits {
            continue;
        }
        differing += 1;
        if describe(tree, theirs.node, count, &mut step)? {
            listed.push(theirs.node);
            listed_keys += count;
        }
    }
    // The peer's lists are compared key by key, unless this side holds more there than one
    // answer lists (an empty peer lists the root whole): such a range is split instead (its
    // children's fingerprints), and the peer lists the children; one that no longer fits in
    // the answer (MAX_RANGES) is left for the next session. A single bucket cannot be split:
    // past MAX_KEYS it is left for the next session too, unless it is the first compared (so
    // a bucket larger than MAX_KEYS is compared at all). So an answer reads at most MAX_KEYS
    // of this side's entries into memory, plus those of one bucket, whatever the state's size
    // and however many buckets the peer lists.
    let mut compare: Vec<&RangeItems> = Vec::with_capacity(items.len());
    for theirs in items {
        let (_, count) = tree.fingerprint(theirs.node)?;
        if listed_keys + count > MAX_KEYS as u64 {
            if !theirs.node.children().is_empty() {
                if step.fingerprints.len() + 16 <= MAX_RANGES {
                    describe(tree, theirs.node, u64::MAX, &mut step)?;
                }
                continue;
            }
            if listed_keys > 0 {
                continue;
            }
        }
        listed_keys += count;
        compare.push(theirs);
    }
    let mut wanted = listed.clone();
    wanted.extend(compare.iter().map(|r| r.node));
    let mut entries = tree.items_of(&wanted)?.into_iter();
    let mut listed_bytes = 0usize;
    for node in listed {
        let items = entries.next().unwrap_or_default();
        // (The hash, and the CBOR heads of the entry, its key and its hash.)
        let bytes: usize = items.iter().map(|(k, _)| k.len() + 16 + 8).sum();
        if !step.items.is_empty() && listed_bytes + bytes > MAX_LISTED_BYTES {
            continue;
        }
        listed_bytes += bytes;
        step.items.push(RangeItems { node, items });
    }
    for theirs in compare {
        let mine: BTreeMap<Vec<u8>, [u8; 16]> =
            entries.next().unwrap_or_default().into_iter().collect();
        let other: BTreeMap<&[u8], &[u8; 16]> = theirs
            .items
            .iter()
            .map(|(k, h)| (k.as_slice(), h))
            .collect();
        step.compared += (mine.len() + other.len()) as u64;
        for (k, h) in &mine {
            if other.get(k.as_slice()) != Some(&h) && step.send.len() < MAX_KEYS {
                step.send.push(k.clone());
            }
        }
        for (k, h) in &other {
            if mine.get(*k) != Some(*h) && step.want.len() < MAX_KEYS {
                step.want.push(k.to_vec());
            }
        }
    }
    Ok(step)
}

/// A tree over a map of state key → entry hash (the first 16 bytes), kept in memory: for tests
/// and models (the simulation's). Fingerprinted like the store's tree, but with the sum of the
/// hashes as a u128.
#[derive(Debug, Clone, Default)]
pub struct MapTree(pub BTreeMap<Vec<u8>, [u8; 16]>);

impl Tree for MapTree {
    fn fingerprint(&self, node: Node) -> Result<([u8; 16], u64), LogError> {
        let (mut sum, mut count) = (0u128, 0u64);
        for (k, h) in &self.0 {
            if node.covers(bucket_of(k)) {
                sum = sum.wrapping_add(u128::from_le_bytes(*h));
                count += 1;
            }
        }
        let mut fp = [0u8; 16];
        fp.copy_from_slice(
            &blake3::hash(&[&sum.to_le_bytes()[..], &count.to_le_bytes()].concat()).as_bytes()
                [..16],
        );
        Ok((fp, count))
    }
    fn items_of(&self, nodes: &[Node]) -> Result<Vec<Vec<Entry>>, LogError> {
        Ok(nodes
            .iter()
            .map(|node| {
                let mut out: Vec<_> = self
                    .0
                    .iter()
                    .filter(|(k, _)| node.covers(bucket_of(k)))
                    .map(|(k, h)| (k.clone(), *h))
                    .collect();
                out.sort_by_key(|(k, _)| (bucket_of(k), k.clone()));
                out
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn hash(s: &str) -> [u8; 16] {
        let mut h = [0u8; 16];
        h.copy_from_slice(&blake3::hash(s.as_bytes()).as_bytes()[..16]);
        h
    }

    fn tree(n: usize) -> MapTree {
        MapTree(
            (0..n)
                .map(|i| (format!("c\0k{i}").into_bytes(), hash(&format!("v{i}"))))
                .collect(),
        )
    }

    /// Runs a session between `a` (opening) and `b`; returns (keys a sends, keys b sends,
    /// messages exchanged).
    fn session(a: &MapTree, b: &MapTree) -> (Vec<Vec<u8>>, Vec<Vec<u8>>, usize) {
        let (mut a_sends, mut b_sends) = (Vec::new(), Vec::new());
        let mut step = open(a).unwrap();
        let mut messages = 1;
        let mut turn_b = true;
        loop {
            let (me, sends, other) = if turn_b {
                (b, &mut b_sends, &mut a_sends)
            } else {
                (a, &mut a_sends, &mut b_sends)
            };
            let next = answer(me, &step.fingerprints, &step.items, 7).unwrap();
            // The side that compares entries sends its versions and names those it wants,
            // which the other side then sends.
            sends.extend(next.send.iter().cloned());
            other.extend(next.want.iter().cloned());
            if !step.has_ranges() {
                break;
            }
            messages += 1;
            step = next;
            turn_b = !turn_b;
        }
        a_sends.sort();
        b_sends.sort();
        (a_sends, b_sends, messages)
    }

    #[test]
    fn equal_trees_agree_in_one_round_trip() {
        let (a, b) = (tree(5000), tree(5000));
        let (x, y, messages) = session(&a, &b);
        assert!(x.is_empty() && y.is_empty());
        assert_eq!(messages, 2, "the opening and its empty answer");
    }

    #[test]
    fn every_difference_is_found_on_the_side_that_holds_it() {
        let a = tree(20_000);
        let mut b = tree(20_000);
        // b lacks one key, holds another differently, and holds one a lacks.
        b.0.remove(b"c\0k17".as_slice());
        b.0.insert(b"c\0k99".to_vec(), hash("other"));
        b.0.insert(b"c\0extra".to_vec(), hash("x"));
        let (a_sends, b_sends, messages) = session(&a, &b);
        assert_eq!(a_sends, vec![b"c\0k17".to_vec(), b"c\0k99".to_vec()]);
        assert_eq!(b_sends, vec![b"c\0extra".to_vec(), b"c\0k99".to_vec()]);
        assert!(messages <= 6, "{messages} messages");
    }

    /// An empty side lists the root whole; a side holding more than one answer lists splits
    /// it instead of reading everything into memory, and the session still finds every key.
    #[test]
    fn a_large_side_splits_a_range_listed_whole() {
        let (a, b) = (MapTree(BTreeMap::new()), tree(20_000));
        let opening = open(&a).unwrap();
        assert_eq!(opening.items.len(), 1, "the empty side lists the root");
        let answer = answer(&b, &opening.fingerprints, &opening.items, 7).unwrap();
        assert!(answer.send.is_empty() && answer.items.is_empty());
        assert_eq!(answer.fingerprints.len(), 16, "the root split");
        let (a_sends, b_sends, _) = session(&a, &b);
        assert!(a_sends.is_empty());
        assert_eq!(b_sends.len(), 20_000);
    }

    #[test]
    fn small_and_empty_sides_exchange_entry_lists_at_once() {
        let (a, b) = (tree(10), MapTree(BTreeMap::new()));
        let (a_sends, b_sends, messages) = session(&a, &b);
        assert_eq!(a_sends.len(), 10);
        assert!(b_sends.is_empty());
        assert!(messages <= 3, "{messages}");
    }

    /// Every bucket holds `per_bucket` entries (made up as they are read).
    struct Crowded {
        per_bucket: u64,
    }

    impl Tree for Crowded {
        fn fingerprint(&self, node: Node) -> Result<([u8; 16], u64), LogError> {
            let (lo, hi) = node.buckets();
            Ok((
                [1; 16],
                (u64::from(hi) - u64::from(lo) + 1) * self.per_bucket,
            ))
        }
        fn items_of(&self, nodes: &[Node]) -> Result<Vec<Vec<Entry>>, LogError> {
            Ok(nodes
                .iter()
                .map(|node| {
                    (0..self.per_bucket)
                        .map(|i| (format!("c\0{}-{i}", node.prefix).into_bytes(), [2; 16]))
                        .collect()
                })
                .collect())
        }
    }

    /// A peer listing thousands of single buckets (which cannot be split) does not make one
    /// answer read them all: past MAX_KEYS of this side's entries they wait for later sessions.
    #[test]
    fn listed_buckets_are_compared_up_to_the_bound() {
        let mine = Crowded { per_bucket: 10 };
        let listed = |n: u16| -> Vec<RangeItems> {
            (0..n)
                .map(|b| RangeItems {
                    node: Node {
                        level: edgerep_wire::aae::LEAF_LEVEL,
                        prefix: b,
                    },
                    items: Vec::new(),
                })
                .collect()
        };
        let step = answer(&mine, &[], &listed(MAX_RANGES as u16), 7).unwrap();
        assert_eq!(step.compared, MAX_KEYS as u64 - MAX_KEYS as u64 % 10);
        assert_eq!(step.send.len() as u64, step.compared);
        // One bucket larger than the bound is still compared, alone.
        let huge = Crowded {
            per_bucket: MAX_KEYS as u64 + 5,
        };
        let step = answer(&huge, &[], &listed(3), 7).unwrap();
        assert_eq!(step.compared, MAX_KEYS as u64 + 5);
        assert_eq!(step.send.len(), MAX_KEYS, "the keys sent stay bounded");
    }

    /// Ranges whose keys are long (up to 16 KiB each): MAX_KEYS of them listed in one answer
    /// came to 16 MB, twice what a frame holds, so the peer closed the connection at every
    /// session and the comparison never ended. The listed entries now stop at
    /// MAX_LISTED_BYTES; the ranges past it wait for the next session.
    #[test]
    fn an_answer_lists_entries_up_to_a_frame_s_worth() {
        struct Long;
        impl Tree for Long {
            fn fingerprint(&self, node: Node) -> Result<([u8; 16], u64), LogError> {
                let (lo, hi) = node.buckets();
                Ok(([1; 16], (u64::from(hi) - u64::from(lo) + 1) * 10))
            }
            fn items_of(&self, nodes: &[Node]) -> Result<Vec<Vec<Entry>>, LogError> {
                Ok(nodes
                    .iter()
                    .map(|node| {
                        (0..10)
                            .map(|i| {
                                let mut k = format!("c\0{}-{i}-", node.prefix).into_bytes();
                                k.resize(1000, b'x');
                                (k, [2; 16])
                            })
                            .collect()
                    })
                    .collect())
            }
        }
        let theirs: Vec<RangeFingerprint> = (0..MAX_RANGES as u16)
            .map(|b| RangeFingerprint {
                node: Node {
                    level: edgerep_wire::aae::LEAF_LEVEL,
                    prefix: b,
                },
                fingerprint: [0; 16],
                count: 10,
            })
            .collect();
        let step = answer(&Long, &theirs, &[], 7).unwrap();
        assert!(!step.items.is_empty());
        let listed: usize = step
            .items
            .iter()
            .flat_map(|r| &r.items)
            .map(|(k, _)| k.len() + 24)
            .sum();
        assert!(listed <= MAX_LISTED_BYTES, "{listed} bytes listed");
        let message = crate::Message::Reconcile {
            id: 1,
            fingerprints: step.fingerprints,
            items: step.items,
        };
        let frame = crate::message::MessageLimits::default().max_frame_bytes;
        assert!(
            message.encode().len() <= frame,
            "{}",
            message.encode().len()
        );
    }

    /// More differing ranges than one answer takes: each session takes them from a place of
    /// its own, so every range is reached in a few sessions (the same first ones every time
    /// would starve the others for good when those never settle).
    #[test]
    fn ranges_past_the_bound_are_reached_by_later_sessions() {
        // One key in each of 2100 leaf buckets; the peer holds none of them.
        let mut mine = BTreeMap::new();
        let mut buckets = BTreeSet::new();
        let mut i = 0;
        while mine.len() < 2100 {
            let key = format!("c\0k{i}").into_bytes();
            i += 1;
            if buckets.insert(bucket_of(&key)) {
                mine.insert(key, hash(&format!("v{i}")));
            }
        }
        let mine = MapTree(mine);
        let theirs: Vec<RangeFingerprint> = buckets
            .iter()
            .map(|&b| RangeFingerprint {
                node: Node {
                    level: edgerep_wire::aae::LEAF_LEVEL,
                    prefix: b,
                },
                fingerprint: [0; 16],
                count: 0,
            })
            .collect();
        let mut reached = BTreeSet::new();
        let mut firsts = BTreeSet::new();
        for seed in 0..4 {
            let step = answer(&mine, &theirs, &[], seed).unwrap();
            assert_eq!(step.items.len(), MAX_DIFFERING, "one answer is bounded");
            firsts.insert(step.items[0].node);
            reached.extend(step.items.iter().map(|r| r.node));
        }
        assert!(firsts.len() > 1, "sessions start at different places");
        assert_eq!(
            reached.len(),
            2100,
            "every range reached within four sessions"
        );
    }
}
