//! The state digest: a hash of the whole replicated state that is cheap to keep up to date.
//!
//! Each state entry (collection, key, encoded versions) hashes to 256 bits with BLAKE3; the digest
//! is the sum of the entry hashes modulo 2^256. Adding and removing an entry is one addition or
//! subtraction, so every write updates it in O(1), and the sum does not depend on the order in
//! which entries were written. Two nodes have equal digests when their states are equal, and
//! different digests otherwise except with negligible probability for non-adversarial data.

/// A state digest (or one entry's hash), as four little-endian 64-bit limbs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Digest([u64; 4]);

impl Digest {
    /// The hash of one state entry.
    pub fn of_entry(collection: &str, key: &[u8], versions: &[u8]) -> Digest {
        let mut h = blake3::Hasher::new();
        h.update(&(collection.len() as u64).to_le_bytes());
        h.update(collection.as_bytes());
        h.update(&(key.len() as u64).to_le_bytes());
        h.update(key);
        h.update(versions);
        Digest::from_bytes(h.finalize().as_bytes())
    }

    /// Adds an entry hash (mod 2^256).
    pub fn add(&mut self, other: Digest) {
        let mut carry = false;
        for (a, b) in self.0.iter_mut().zip(other.0) {
            let (s1, c1) = a.overflowing_add(b);
            let (s2, c2) = s1.overflowing_add(u64::from(carry));
            *a = s2;
            carry = c1 || c2;
        }
    }

    /// Removes an entry hash (mod 2^256).
    pub fn sub(&mut self, other: Digest) {
        let mut borrow = false;
        for (a, b) in self.0.iter_mut().zip(other.0) {
            let (d1, b1) = a.overflowing_sub(b);
            let (d2, b2) = d1.overflowing_sub(u64::from(borrow));
            *a = d2;
            borrow = b1 || b2;
        }
    }

    /// The 32-byte form.
    pub fn to_bytes(self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (chunk, limb) in out.chunks_exact_mut(8).zip(self.0) {
            chunk.copy_from_slice(&limb.to_le_bytes());
        }
        out
    }

    /// From the 32-byte form.
    pub fn from_bytes(bytes: &[u8; 32]) -> Digest {
        let mut limbs = [0u64; 4];
        for (limb, chunk) in limbs.iter_mut().zip(bytes.chunks_exact(8)) {
            let mut b = [0u8; 8];
            b.copy_from_slice(chunk);
            *limb = u64::from_le_bytes(b);
        }
        Digest(limbs)
    }

    /// Lowercase hex of the 32-byte form.
    pub fn to_hex(self) -> String {
        self.to_bytes().iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// How a state row hashes into the digest and the anti-entropy fingerprints.
///
/// A row hashes whole ([`Digest::of_entry`]: its versions with their values, and the kept
/// resolution), except in collections whose values differ between nodes by design (transforms
/// on apply, which may differ per node): there it hashes only what every node holds alike, each
/// version's dot and causal context ([`HashRule::versions_only`]), so nodes that hold the same
/// versions agree however their transforms shaped the values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashRule {
    versions_only: std::collections::BTreeSet<String>,
    /// Names the rule (a hash of `versions_only`): what a row's hash computed ahead of the
    /// writer was computed under (`edgerep_wire::encoded::RowHint`).
    tag: u64,
}

impl Default for HashRule {
    fn default() -> HashRule {
        HashRule::versions_only(Default::default())
    }
}

impl HashRule {
    /// Rows of `collections` hash on their versions' dots and contexts only.
    pub fn versions_only(collections: std::collections::BTreeSet<String>) -> HashRule {
        let mut h = blake3::Hasher::new_derive_key("edgerep 2026 hash rule v1");
        for c in &collections {
            h.update(&(c.len() as u64).to_le_bytes());
            h.update(c.as_bytes());
        }
        let mut tag = [0u8; 8];
        tag.copy_from_slice(&h.finalize().as_bytes()[..8]);
        HashRule {
            versions_only: collections,
            tag: u64::from_le_bytes(tag),
        }
    }

    /// The rule's tag (see the field).
    pub fn tag(&self) -> u64 {
        self.tag
    }

    /// The collections hashed on their versions only.
    pub fn collections(&self) -> &std::collections::BTreeSet<String> {
        &self.versions_only
    }

    /// The hash of one state row.
    pub(crate) fn entry(
        &self,
        collection: &str,
        key: &[u8],
        row: &[u8],
        limits: &edgerep_wire::event::EventLimits,
    ) -> Digest {
        if !self.versions_only.contains(collection) {
            return Digest::of_entry(collection, key, row);
        }
        // A row that cannot be read hashes whole: it differs from every peer's, as it should.
        match crate::Versions::decode(row, limits) {
            Ok(versions) => {
                let mut h = blake3::Hasher::new();
                h.update(b"versions-only");
                h.update(&(collection.len() as u64).to_le_bytes());
                h.update(collection.as_bytes());
                h.update(&(key.len() as u64).to_le_bytes());
                h.update(key);
                for v in versions.events() {
                    h.update(&(v.origin.as_str().len() as u64).to_le_bytes());
                    h.update(v.origin.as_str().as_bytes());
                    h.update(&v.seq.to_le_bytes());
                    for (origin, seq) in v.context.iter() {
                        h.update(&(origin.as_str().len() as u64).to_le_bytes());
                        h.update(origin.as_str().as_bytes());
                        h.update(&seq.to_le_bytes());
                    }
                    h.update(b"|");
                }
                Digest::from_bytes(h.finalize().as_bytes())
            }
            Err(_) => Digest::of_entry(collection, key, row),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_independent_and_removable() {
        let a = Digest::of_entry("c", b"a", b"1");
        let b = Digest::of_entry("c", b"b", b"2");
        let mut x = Digest::default();
        x.add(a);
        x.add(b);
        let mut y = Digest::default();
        y.add(b);
        y.add(a);
        assert_eq!(x, y);
        x.sub(a);
        x.sub(b);
        assert_eq!(x, Digest::default());
    }

    #[test]
    fn carries_across_limbs() {
        let mut x = Digest([u64::MAX, u64::MAX, 0, 0]);
        x.add(Digest([1, 0, 0, 0]));
        assert_eq!(x, Digest([0, 0, 1, 0]));
        x.sub(Digest([1, 0, 0, 0]));
        assert_eq!(x, Digest([u64::MAX, u64::MAX, 0, 0]));
        assert_eq!(Digest::from_bytes(&x.to_bytes()), x);
    }

    #[test]
    fn entry_hash_separates_fields() {
        assert_ne!(
            Digest::of_entry("ab", b"c", b""),
            Digest::of_entry("a", b"bc", b"")
        );
    }
}
