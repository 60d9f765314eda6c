//! The anti-entropy tree's shape (see `docs/design.md`, "Anti-entropy"): state entries fall into
//! 65,536 buckets by a hash of their state key (`collection 0x00 key`), and the buckets form a
//! 16-ary tree of 5 levels. Pure code: every node computes the same bucket for the same key.

/// What a node tells a peer in repair of how it resolved a key with concurrent versions: both
/// hold the same versions when `versions` match, and then must hold the same `resolution`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyResolution {
    /// The state key (`collection 0x00 key`).
    pub state_key: Vec<u8>,
    /// BLAKE3 of the encoded versions the sender holds.
    pub versions: [u8; 32],
    /// BLAKE3 of the sender's resolution record.
    pub resolution: [u8; 32],
    /// The SHA-256 (lowercase hex) of the sender's resolver build, for the record of a
    /// disagreement.
    pub build: String,
}

/// The deepest level of the tree: one node per bucket.
pub const LEAF_LEVEL: u8 = 4;
/// The bucket of a state key.
pub fn bucket_of(state_key: &[u8]) -> u16 {
    let h = blake3::hash(state_key);
    u16::from_be_bytes([h.as_bytes()[0], h.as_bytes()[1]])
}

/// A node of the tree: its level (0 is the root) and the top `4·level` bits of its buckets' ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Node {
    /// 0..=[`LEAF_LEVEL`].
    pub level: u8,
    /// The prefix, right-aligned (`0..16^level`).
    pub prefix: u16,
}

impl Node {
    /// The root: every entry.
    pub const ROOT: Node = Node {
        level: 0,
        prefix: 0,
    };

    /// Whether this is a node of the tree.
    pub fn is_valid(&self) -> bool {
        self.level <= LEAF_LEVEL && u32::from(self.prefix) < 1u32 << (4 * u32::from(self.level))
    }

    /// The first and last bucket this node covers.
    pub fn buckets(&self) -> (u16, u16) {
        let shift = 4 * u32::from(LEAF_LEVEL - self.level);
        let lo = (u32::from(self.prefix) << shift) as u16;
        let hi = (u32::from(lo) + (1u32 << shift) - 1) as u16;
        (lo, hi)
    }

    /// Its 16 children (none for a leaf).
    pub fn children(&self) -> Vec<Node> {
        if self.level >= LEAF_LEVEL {
            return Vec::new();
        }
        (0..16)
            .map(|i| Node {
                level: self.level + 1,
                prefix: (self.prefix << 4) | i,
            })
            .collect()
    }

    /// Whether this node covers bucket `b`.
    pub fn covers(&self, b: u16) -> bool {
        let (lo, hi) = self.buckets();
        lo <= b && b <= hi
    }
}
