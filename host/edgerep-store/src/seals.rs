//! Origin seals in the store (see `edgerep_wire::seal`): per origin the head of its chain (the
//! chain hash at the highest sequence number held), the seals at the origin's seal points, and
//! the certificates that verify them.
//!
//! Invariants: an origin's chain head is at the sequence number the store holds of it, and a
//! seal exists at that number (every batch from a peer ends at a seal, every local commit ends
//! with one, a snapshot raises a have only with one), so this node can always send a peer what
//! proves the end of a batch or of a snapshot. Seals below an origin's compacted floor are
//! removed with its changelog entries; the one at the floor stays.

use edgerep_wire::NodeId;
use edgerep_wire::seal::{ChainHash, MAX_CERTS_PER_ORIGIN, Seal, chain_start};
use redb::{ReadableTable, TableDefinition};

use crate::keys::log_key;
use crate::{StoreError, corrupt};

/// `origin` → sequence number (8 bytes, big endian) and chain hash (32 bytes).
pub(crate) const CHAINS: TableDefinition<&str, &[u8]> = TableDefinition::new("chains");
/// `origin 0x00 sequence` → the block's first sequence number (8 bytes, big endian), chain hash
/// (32 bytes), Merkle root (32 bytes) and signature.
pub(crate) const SEALS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("seals");
/// `origin` → its certificate (DER), as learnt from peers: the first one stored.
pub(crate) const CERTS: TableDefinition<&str, &[u8]> = TableDefinition::new("certs");
/// `(origin, BLAKE3 of the DER)` → another certificate of `origin` (one the CA issued its id
/// before or since), at most [`MAX_CERTS_PER_ORIGIN`] − 1 per origin: relayed with the origin's
/// events, so that a peer holding only some of them can verify every seal.
pub(crate) const CERTS_MORE: TableDefinition<(&str, &[u8]), &[u8]> =
    TableDefinition::new("certs_more");

/// Seals and certificates that came with events or a snapshot page from a peer.
pub(crate) type Sealed<'a> = (&'a [Seal], &'a [(NodeId, Vec<u8>)]);

/// Why [`Keys`] could not sign, or refused a seal or a certificate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Signing failed.
    #[error("{0}")]
    Sign(String),
    /// The origin was revoked after its event `after`: its seals beyond are refused.
    #[error("{origin} is revoked after its event {after}: its seal at {seq} is refused")]
    Revoked {
        /// The origin.
        origin: NodeId,
        /// Its last event still vouched for.
        after: u64,
        /// The seal's sequence number.
        seq: u64,
    },
    /// No certificate of the origin is known to check its seal with.
    #[error("no certificate of {origin} to check its seal at {seq} with")]
    NoCertificate {
        /// The origin.
        origin: NodeId,
        /// The seal's sequence number.
        seq: u64,
    },
    /// The signature does not verify (what the verifier said).
    #[error("{0}")]
    BadSignature(String),
    /// A certificate does not chain to the deployment CA or is not valid (what the check said).
    #[error("{0}")]
    BadCertificate(String),
    /// A certificate of `origin` past the [`edgerep_wire::seal::MAX_CERTS_PER_ORIGIN`] this
    /// node holds of it (an honest node sends no more than it holds).
    #[error(
        "a certificate of {origin} other than the {held} this node holds of it (at most that many are kept per origin)"
    )]
    TooManyCertificates {
        /// The origin.
        origin: NodeId,
        /// How many this node holds of it.
        held: usize,
    },
    /// A certificate sent for `origin` names another node.
    #[error("the certificate sent for {origin} names {named}")]
    OtherNode {
        /// The origin it was sent for.
        origin: NodeId,
        /// The node it names.
        named: NodeId,
    },
}

/// What signs this node's seals and checks its peers' (the node implements it with the
/// deployment CA's certificates; the store never sees a key or a certificate format).
pub trait Keys: Send + Sync {
    /// Signs `message` as this node.
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError>;
    /// Checks `signature` over `message` by `origin`, for its event `seq`.
    fn verify(
        &self,
        origin: &NodeId,
        seq: u64,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), KeyError>;
    /// Takes in `origin`'s certificate (DER) after checking it chains to the deployment CA and
    /// names `origin`.
    fn learn(&self, origin: &NodeId, cert: &[u8]) -> Result<(), KeyError>;
    /// The last sequence number `origin` may still vouch for (a revoked node), if limited.
    fn vouches_up_to(&self, _origin: &NodeId) -> Option<u64> {
        None
    }
}

/// The chain head of `origin`: (sequence number, chain hash); the start of its chain when the
/// store holds none of its events.
pub(crate) fn head(
    chains: &impl ReadableTable<&'static str, &'static [u8]>,
    origin: &NodeId,
) -> Result<(u64, ChainHash), StoreError> {
    match chains.get(origin.as_str())? {
        Some(g) => decode_head(g.value()),
        None => Ok((0, chain_start(origin))),
    }
}

pub(crate) fn decode_head(bytes: &[u8]) -> Result<(u64, ChainHash), StoreError> {
    if bytes.len() != 40 {
        return Err(corrupt("chains", "a head is not 40 bytes"));
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&bytes[..8]);
    let mut chain = [0u8; 32];
    chain.copy_from_slice(&bytes[8..]);
    Ok((u64::from_be_bytes(seq), chain))
}

pub(crate) fn encode_head(seq: u64, chain: &ChainHash) -> [u8; 40] {
    let mut out = [0u8; 40];
    out[..8].copy_from_slice(&seq.to_be_bytes());
    out[8..].copy_from_slice(chain);
    out
}

/// Stores the certificates that came with `sealed` (checked by the keys before), each once:
/// an origin's first in [`CERTS`], others beside it in [`CERTS_MORE`] up to the bound (none
/// replaces one stored).
pub(crate) fn put_certs(
    txn: &redb::WriteTransaction,
    sealed: Option<Sealed<'_>>,
) -> Result<(), StoreError> {
    let Some((_, certs)) = sealed else {
        return Ok(());
    };
    if certs.is_empty() {
        return Ok(());
    }
    let mut first = txn.open_table(CERTS)?;
    let mut more = txn.open_table(CERTS_MORE)?;
    for (origin, der) in certs {
        let origin = origin.as_str();
        let held = first.get(origin)?.map(|g| g.value() == der.as_slice());
        match held {
            None => {
                first.insert(origin, der.as_slice())?;
                continue;
            }
            Some(true) => continue,
            Some(false) => {}
        }
        let hash = blake3::hash(der);
        if more.get((origin, hash.as_bytes().as_slice()))?.is_some() {
            continue;
        }
        let mut others = 0;
        for row in more.range((origin, &[][..])..)? {
            if row?.0.value().0 != origin {
                break;
            }
            others += 1;
        }
        if others + 1 < MAX_CERTS_PER_ORIGIN {
            more.insert((origin, hash.as_bytes().as_slice()), der.as_slice())?;
        }
    }
    Ok(())
}

/// Stores `seal` (its chain hash and signature under its origin and sequence number).
pub(crate) fn put(
    seals: &mut redb::Table<'_, &'static [u8], &'static [u8]>,
    seal: &Seal,
) -> Result<(), StoreError> {
    let value = encode(seal);
    seals.insert(
        log_key(seal.origin.as_str(), seal.seq).as_slice(),
        value.as_slice(),
    )?;
    Ok(())
}

/// A seal's stored bytes (without its origin and sequence number, which are its key).
pub(crate) fn encode(seal: &Seal) -> Vec<u8> {
    let mut value = Vec::with_capacity(72 + seal.signature.len());
    value.extend_from_slice(&seal.first.to_be_bytes());
    value.extend_from_slice(&seal.chain);
    value.extend_from_slice(&seal.root);
    value.extend_from_slice(&seal.signature);
    value
}

/// The seal of (`origin`, `seq`) from its stored bytes.
pub(crate) fn decode(origin: &NodeId, seq: u64, value: &[u8]) -> Result<Seal, StoreError> {
    if value.len() < 72 {
        return Err(corrupt("seals", "a seal shorter than its fixed fields"));
    }
    let hash = |at: usize| {
        let mut h = [0u8; 32];
        h.copy_from_slice(&value[at..at + 32]);
        h
    };
    let mut first = [0u8; 8];
    first.copy_from_slice(&value[..8]);
    Ok(Seal {
        origin: origin.clone(),
        seq,
        first: u64::from_be_bytes(first),
        chain: hash(8),
        root: hash(40),
        signature: value[72..].to_vec(),
    })
}
