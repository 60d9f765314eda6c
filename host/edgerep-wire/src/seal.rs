//! Origin seals: how a node vouches for its own events, so that no other node can forge or
//! rewrite them, also when they are relayed or arrive inside a snapshot.
//!
//! Each origin keeps a hash chain over its events: `c_0` is derived from the origin's id, and
//! `c_s = BLAKE3(c_{s-1} || len(e_s) || e_s)` where `e_s` is the deterministic encoding of its
//! event `s`. The origin signs `(origin, s, c_s)` with its certificate's key once per commit
//! transaction (and at least every [`SEAL_EVERY_EVENTS`] events): a [`Seal`]. A receiver that
//! holds the origin's events up to `h` (and so `c_h`) recomputes the chain over a batch
//! `h+1..=s` and checks one signature to know every event of it came from the origin unchanged.
//! Two valid seals for one `(origin, s)` with different chain hashes prove a fork.
//!
//! Invariant: pure code (hashing and byte layouts; signing and verifying are the transport's).

use crate::event::NodeId;

/// A chain hash.
pub type ChainHash = [u8; 32];

/// Most events between two seals of one origin (the batches a peer sends end at seals).
pub const SEAL_EVERY_EVENTS: u64 = 256;

/// Most bytes of events between two seals of one origin.
pub const SEAL_EVERY_BYTES: usize = 1 << 20;

/// Longest signature accepted (an ECDSA P-256 signature in DER takes at most 72 bytes).
pub const MAX_SIGNATURE_BYTES: usize = 512;

/// Longest certificate accepted (DER).
pub const MAX_CERT_BYTES: usize = 16 * 1024;

/// The chain hash before `origin`'s first event.
pub fn chain_start(origin: &NodeId) -> ChainHash {
    let mut h = blake3::Hasher::new_derive_key("edgerep 2026 origin chain v1");
    h.update(origin.as_str().as_bytes());
    *h.finalize().as_bytes()
}

/// The chain hash after the event whose deterministic encoding is `event_bytes`.
pub fn chain_next(previous: &ChainHash, event_bytes: &[u8]) -> ChainHash {
    let mut h = blake3::Hasher::new();
    h.update(previous);
    h.update(&(event_bytes.len() as u64).to_be_bytes());
    h.update(event_bytes);
    *h.finalize().as_bytes()
}

/// An origin's signature over its chain at one of its sequence numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seal {
    /// The origin that signed.
    pub origin: NodeId,
    /// The sequence number the seal covers (and every one before it).
    pub seq: u64,
    /// The origin's chain hash after event `seq`.
    pub chain: ChainHash,
    /// The signature over [`Seal::signed_bytes`] (empty from a node that does not sign:
    /// accepted only where authentication is off).
    pub signature: Vec<u8>,
}

impl Seal {
    /// The bytes an origin signs for `(origin, seq, chain)`.
    pub fn signed_bytes(origin: &NodeId, seq: u64, chain: &ChainHash) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + origin.as_str().len() + 1 + 8 + 32);
        out.extend_from_slice(b"edgerep seal v1\n");
        out.extend_from_slice(origin.as_str().as_bytes());
        out.push(0);
        out.extend_from_slice(&seq.to_be_bytes());
        out.extend_from_slice(chain);
        out
    }

    /// This seal's [`Seal::signed_bytes`].
    pub fn message(&self) -> Vec<u8> {
        Seal::signed_bytes(&self.origin, self.seq, &self.chain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn signed_bytes_name_origin_seq_and_chain() {
        let a = NodeId::parse("a").unwrap();
        let m = Seal::signed_bytes(&a, 7, &[9; 32]);
        assert!(m.starts_with(b"edgerep seal v1\na\0"));
        assert_ne!(m, Seal::signed_bytes(&a, 8, &[9; 32]));
        assert_ne!(
            m,
            Seal::signed_bytes(&NodeId::parse("ab").unwrap(), 7, &[9; 32])
        );
    }
}
