//! Origin seals: how a node vouches for its own events, so that no other node can forge or
//! rewrite them, also when they are relayed or arrive inside a snapshot.
//!
//! Each event's deterministic encoding `e_s` gives a leaf `l_s = BLAKE3(0x00 || len(e_s) || e_s)`.
//! Each origin keeps a hash chain over its leaves: `c_0` is derived from the origin's id and
//! `c_s = BLAKE3(0x02 || c_{s-1} || l_s)`. The origin cuts its events into blocks (one per commit
//! transaction, at most [`SEAL_EVERY_EVENTS`] events and [`SEAL_EVERY_BYTES`] bytes) and signs,
//! for the block `first..=s`, `(origin, s, first, c_s, r)` where `r` is the Merkle root of the
//! block's leaves (RFC 6962's tree shape, inner nodes `BLAKE3(0x01 || left || right)`): a [`Seal`].
//!
//! - A receiver that holds the origin's events up to `first - 1` (and so `c_{first-1}`)
//!   recomputes the chain and the root over a batch and checks one signature per block to know
//!   every event of it came from the origin unchanged.
//! - One event alone (a version in a snapshot page, long after its neighbours were compacted)
//!   is proven by its block's seal and its Merkle path: at most 8 hashes ([`Proof`]).
//! - Two valid seals for one `(origin, s)` with different chain hashes prove a fork.
//!
//! Invariant: pure code (hashing and byte layouts; signing and verifying are the transport's).

use crate::event::NodeId;

/// A chain hash, a leaf or a Merkle root.
pub type ChainHash = [u8; 32];

/// Most events between two seals of one origin (the batches a peer sends end at seals).
pub const SEAL_EVERY_EVENTS: u64 = 256;

/// Most bytes of events between two seals of one origin.
pub const SEAL_EVERY_BYTES: usize = 1 << 20;

/// Longest signature accepted (an ECDSA P-256 signature in DER takes at most 72 bytes).
pub const MAX_SIGNATURE_BYTES: usize = 512;

/// Longest certificate accepted (DER).
pub const MAX_CERT_BYTES: usize = 16 * 1024;

/// Most certificates of one origin a node holds, sends and reads from one message. A node keeps
/// its key for life, but the CA may have issued its id more than one (a site rebuilt with a new
/// key): a node verifies an origin's seal under any of them, so that an old certificate a peer
/// sends never replaces the key that verifies the origin's current events.
pub const MAX_CERTS_PER_ORIGIN: usize = 4;

/// Longest Merkle path accepted (a block of [`SEAL_EVERY_EVENTS`] leaves needs 8).
pub const MAX_PATH_HASHES: usize = 16;

const LEAF: u8 = 0;
const NODE: u8 = 1;
const LINK: u8 = 2;

/// The chain hash before `origin`'s first event.
pub fn chain_start(origin: &NodeId) -> ChainHash {
    let mut h = blake3::Hasher::new_derive_key("edgerep 2026 origin chain v1");
    h.update(origin.as_str().as_bytes());
    *h.finalize().as_bytes()
}

/// The leaf of the event whose deterministic encoding is `event_bytes`.
pub fn event_leaf(event_bytes: &[u8]) -> ChainHash {
    let mut h = blake3::Hasher::new();
    h.update(&[LEAF]);
    h.update(&(event_bytes.len() as u64).to_be_bytes());
    h.update(event_bytes);
    *h.finalize().as_bytes()
}

/// The chain hash after the event whose leaf is `leaf`.
pub fn chain_link(previous: &ChainHash, leaf: &ChainHash) -> ChainHash {
    let mut h = blake3::Hasher::new();
    h.update(&[LINK]);
    h.update(previous);
    h.update(leaf);
    *h.finalize().as_bytes()
}

/// The chain hash after the event whose deterministic encoding is `event_bytes`.
pub fn chain_next(previous: &ChainHash, event_bytes: &[u8]) -> ChainHash {
    chain_link(previous, &event_leaf(event_bytes))
}

fn node(left: &ChainHash, right: &ChainHash) -> ChainHash {
    let mut h = blake3::Hasher::new();
    h.update(&[NODE]);
    h.update(left);
    h.update(right);
    *h.finalize().as_bytes()
}

/// The largest power of two below `n` (n >= 2): where RFC 6962 splits a tree of `n` leaves.
fn split(n: usize) -> usize {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

/// The Merkle root of a block's leaves (`[0; 32]` for none, which no seal carries).
pub fn merkle_root(leaves: &[ChainHash]) -> ChainHash {
    match leaves.len() {
        0 => [0; 32],
        1 => leaves[0],
        n => {
            let k = split(n);
            node(&merkle_root(&leaves[..k]), &merkle_root(&leaves[k..]))
        }
    }
}

/// The Merkle path of leaf `index` among `leaves`, the deepest sibling first.
pub fn merkle_path(leaves: &[ChainHash], index: usize) -> Vec<ChainHash> {
    let mut out = Vec::new();
    path_into(leaves, index, &mut out);
    out
}

fn path_into(leaves: &[ChainHash], index: usize, out: &mut Vec<ChainHash>) {
    let n = leaves.len();
    if n <= 1 || index >= n {
        return;
    }
    let k = split(n);
    if index < k {
        path_into(&leaves[..k], index, out);
        out.push(merkle_root(&leaves[k..]));
    } else {
        path_into(&leaves[k..], index - k, out);
        out.push(merkle_root(&leaves[..k]));
    }
}

/// Every subtree root of a block's Merkle tree, computed once: each leaf's path is then read
/// off it (a path computed alone hashes the whole block, so one per leaf of a block of 256
/// hashed it 256 times: most of a snapshot's cost).
#[derive(Debug, Clone)]
pub struct MerkleTree {
    len: usize,
    /// The root of the subtree over `leaves[start..start + len]`, by `(start, len)`.
    roots: std::collections::HashMap<(usize, usize), ChainHash>,
}

impl MerkleTree {
    /// The tree over `leaves`.
    pub fn new(leaves: &[ChainHash]) -> MerkleTree {
        let mut roots = std::collections::HashMap::with_capacity(2 * leaves.len());
        fn build(
            leaves: &[ChainHash],
            start: usize,
            roots: &mut std::collections::HashMap<(usize, usize), ChainHash>,
        ) -> ChainHash {
            let root = match leaves.len() {
                0 => [0; 32],
                1 => leaves[0],
                n => {
                    let k = split(n);
                    let left = build(&leaves[..k], start, roots);
                    let right = build(&leaves[k..], start + k, roots);
                    node(&left, &right)
                }
            };
            roots.insert((start, leaves.len()), root);
            root
        }
        build(leaves, 0, &mut roots);
        MerkleTree {
            len: leaves.len(),
            roots,
        }
    }

    /// [`merkle_root`] of the leaves.
    pub fn root(&self) -> ChainHash {
        self.roots.get(&(0, self.len)).copied().unwrap_or([0; 32])
    }

    /// [`merkle_path`] of leaf `index`.
    pub fn path(&self, index: usize) -> Vec<ChainHash> {
        let mut out = Vec::new();
        let (mut start, mut len, mut index) = (0, self.len, index);
        if index >= len {
            return out;
        }
        // From the root down, then reversed: the deepest sibling first. (Every subtree on the
        // way was built by `new`.)
        while len > 1 {
            let k = split(len);
            if index < k {
                out.push(self.roots[&(start + k, len - k)]);
                len = k;
            } else {
                out.push(self.roots[&(start, k)]);
                (start, len, index) = (start + k, len - k, index - k);
            }
        }
        out.reverse();
        out
    }
}

/// The root that `leaf` at `index` of a block of `size` leaves gives with `path`; `None` when
/// the path has the wrong length for that position.
pub fn root_from_path(
    leaf: &ChainHash,
    index: u64,
    size: u64,
    path: &[ChainHash],
) -> Option<ChainHash> {
    if index >= size {
        return None;
    }
    if size == 1 {
        return path.is_empty().then_some(*leaf);
    }
    let (sibling, rest) = path.split_last()?;
    let k = split(usize::try_from(size).ok()?) as u64;
    if index < k {
        Some(node(&root_from_path(leaf, index, k, rest)?, sibling))
    } else {
        Some(node(
            sibling,
            &root_from_path(leaf, index - k, size - k, rest)?,
        ))
    }
}

/// An origin's signature over its chain and its last block at one of its sequence numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seal {
    /// The origin that signed.
    pub origin: NodeId,
    /// The sequence number the seal covers (and every one before it): its block's last.
    pub seq: u64,
    /// The first sequence number of the block the seal ends.
    pub first: u64,
    /// The origin's chain hash after event `seq`.
    pub chain: ChainHash,
    /// The Merkle root of the leaves of events `first..=seq`.
    pub root: ChainHash,
    /// The signature over [`Seal::signed_bytes`] (empty from a node that does not sign:
    /// accepted only where authentication is off).
    pub signature: Vec<u8>,
}

impl Seal {
    /// The bytes an origin signs for a seal.
    pub fn signed_bytes(
        origin: &NodeId,
        seq: u64,
        first: u64,
        chain: &ChainHash,
        root: &ChainHash,
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + origin.as_str().len() + 1 + 16 + 64);
        out.extend_from_slice(b"edgerep seal v2\n");
        out.extend_from_slice(origin.as_str().as_bytes());
        out.push(0);
        out.extend_from_slice(&seq.to_be_bytes());
        out.extend_from_slice(&first.to_be_bytes());
        out.extend_from_slice(chain);
        out.extend_from_slice(root);
        out
    }

    /// This seal's [`Seal::signed_bytes`].
    pub fn message(&self) -> Vec<u8> {
        Seal::signed_bytes(&self.origin, self.seq, self.first, &self.chain, &self.root)
    }

    /// Whether this seal's block holds `seq`.
    pub fn covers(&self, seq: u64) -> bool {
        self.first <= seq && seq <= self.seq
    }

    /// Whether `event_bytes`, as the origin's event `seq`, is the one this seal's block holds,
    /// by `path` (this seal's signature is checked elsewhere).
    pub fn proves(&self, seq: u64, event_bytes: &[u8], path: &[ChainHash]) -> bool {
        self.covers(seq)
            && root_from_path(
                &event_leaf(event_bytes),
                seq - self.first,
                self.seq - self.first + 1,
                path,
            ) == Some(self.root)
    }
}

/// What proves one event alone: the sequence number of its block's seal and its Merkle path
/// to that seal's root.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Proof {
    /// The seal's sequence number (the seal travels beside, once per block).
    pub seal: u64,
    /// The path, the deepest sibling first.
    pub path: Vec<ChainHash>,
}

/// The leaves of a block being sealed, and its root when done.
#[derive(Debug, Clone, Default)]
pub struct Block {
    /// The first sequence number of the block (meaningful once a leaf is in).
    pub first: u64,
    /// The leaves so far.
    pub leaves: Vec<ChainHash>,
}

impl Block {
    /// Adds the leaf of event `seq`.
    pub fn push(&mut self, seq: u64, leaf: ChainHash) {
        if self.leaves.is_empty() {
            self.first = seq;
        }
        self.leaves.push(leaf);
    }

    /// The root of the leaves so far.
    pub fn root(&self) -> ChainHash {
        merkle_root(&self.leaves)
    }

    /// Starts the next block.
    pub fn clear(&mut self) {
        self.leaves.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_gives_the_paths_and_root_computed_alone() {
        for n in (0..=70).chain([255, 256, 257]) {
            let leaves: Vec<ChainHash> = (0..n).map(|i| event_leaf(&[i as u8, 7])).collect();
            let tree = MerkleTree::new(&leaves);
            assert_eq!(tree.root(), merkle_root(&leaves), "{n} leaves");
            for i in 0..=n {
                assert_eq!(tree.path(i), merkle_path(&leaves, i), "leaf {i} of {n}");
            }
        }
    }

    #[test]
    fn chains_depend_on_origin_order_and_bytes() {
        let (a, b) = (NodeId::parse("a").unwrap(), NodeId::parse("b").unwrap());
        assert_ne!(chain_start(&a), chain_start(&b));
        let c1 = chain_next(&chain_start(&a), b"one");
        let c2 = chain_next(&c1, b"two");
        assert_ne!(
            c2,
            chain_next(&chain_next(&chain_start(&a), b"two"), b"one")
        );
        // The length is part of what is hashed: moving bytes between events changes the chain.
        assert_ne!(
            c2,
            chain_next(&chain_next(&chain_start(&a), b"on"), b"etwo")
        );
        assert_eq!(
            c2,
            chain_next(&chain_next(&chain_start(&a), b"one"), b"two")
        );
    }

    #[test]
    fn signed_bytes_name_origin_seq_block_and_hashes() {
        let a = NodeId::parse("a").unwrap();
        let m = Seal::signed_bytes(&a, 7, 1, &[9; 32], &[8; 32]);
        assert!(m.starts_with(b"edgerep seal v2\na\0"));
        assert_ne!(m, Seal::signed_bytes(&a, 8, 1, &[9; 32], &[8; 32]));
        assert_ne!(m, Seal::signed_bytes(&a, 7, 2, &[9; 32], &[8; 32]));
        assert_ne!(m, Seal::signed_bytes(&a, 7, 1, &[9; 32], &[7; 32]));
        assert_ne!(
            m,
            Seal::signed_bytes(&NodeId::parse("ab").unwrap(), 7, 1, &[9; 32], &[8; 32])
        );
    }

    fn leaves(n: usize) -> Vec<ChainHash> {
        (0..n).map(|i| event_leaf(&i.to_be_bytes())).collect()
    }

    #[test]
    fn every_leaf_of_every_block_size_is_proven_by_its_path_and_only_there() {
        for n in 1..=40usize {
            let l = leaves(n);
            let root = merkle_root(&l);
            for i in 0..n {
                let path = merkle_path(&l, i);
                assert!(path.len() <= 6, "n {n} i {i}");
                assert_eq!(root_from_path(&l[i], i as u64, n as u64, &path), Some(root));
                // Another position, another leaf or a shorter path: not proven. (The block's
                // size is not bound by the path, as in RFC 6962: the seal signs it.)
                if n > 1 {
                    let j = (i + 1) % n;
                    assert_ne!(root_from_path(&l[i], j as u64, n as u64, &path), Some(root));
                    assert_ne!(root_from_path(&l[j], i as u64, n as u64, &path), Some(root));
                    assert_ne!(
                        root_from_path(&l[i], i as u64, n as u64, &path[1..]),
                        Some(root)
                    );
                }
            }
        }
        assert_eq!(merkle_path(&leaves(256), 77).len(), 8);
        assert_eq!(root_from_path(&[0; 32], 3, 3, &[]), None);
    }

    #[test]
    fn the_tree_has_rfc_6962s_shape() {
        let l = leaves(3);
        assert_eq!(merkle_root(&l), node(&node(&l[0], &l[1]), &l[2]));
        assert_eq!(merkle_root(&l[..1]), l[0]);
        let l = leaves(5);
        assert_eq!(
            merkle_root(&l),
            node(&node(&node(&l[0], &l[1]), &node(&l[2], &l[3])), &l[4])
        );
    }

    #[test]
    fn a_seal_proves_the_events_of_its_block() {
        let a = NodeId::parse("a").unwrap();
        let events: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 10]).collect();
        let mut block = Block::default();
        for (i, e) in events.iter().enumerate() {
            block.push(11 + i as u64, event_leaf(e));
        }
        let seal = Seal {
            origin: a,
            seq: 15,
            first: 11,
            chain: [0; 32],
            root: block.root(),
            signature: Vec::new(),
        };
        for (i, e) in events.iter().enumerate() {
            let path = merkle_path(&block.leaves, i);
            assert!(seal.proves(11 + i as u64, e, &path));
            assert!(!seal.proves(11 + i as u64, b"changed", &path));
        }
        assert!(!seal.proves(16, &events[0], &merkle_path(&block.leaves, 0)));
        assert!(!seal.proves(10, &events[0], &merkle_path(&block.leaves, 0)));
    }
}
