//! Proofs of single versions (see `edgerep_wire::seal`): what lets a snapshot page carry a
//! version whose neighbours in its origin's chain are long gone, and its receiver check that the
//! version is the origin's, unchanged.
//!
//! Invariants:
//! - Every version in the state whose event is no longer in the changelog (its origin's
//!   compacted floor is at or above it) has a row in `proofs`: its block's seal, its Merkle path,
//!   and the event as the origin sent it when the version differs (a transform on apply changed
//!   it here). Compaction writes the rows of the live versions of the blocks it removes (it
//!   removes whole blocks only), a snapshot page the rows of the versions it merges.
//! - Rows of versions superseded since are garbage, swept a few at a time by compaction.

use edgerep_wire::event::EventLimits;
use edgerep_wire::seal::{ChainHash, MAX_PATH_HASHES, Proof, event_leaf, merkle_path};
use edgerep_wire::{Event, NodeId, Seal};
use redb::{ReadableTable, TableDefinition};

use crate::keys::{log_key, log_seq, state_key};
use crate::seals;
use crate::{META, STATE, StoreError, Versions, corrupt};

/// `origin 0x00 sequence` → a [`Kept`] proof of a live version whose event left the changelog.
pub(crate) const PROOFS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("proofs");
/// The `proofs` key the last sweep ended at.
const META_PROOF_SWEEP: &str = "proof_sweep";

/// A kept proof: which key the version belongs to, its block's seal, its path, and the origin's
/// event when the version in the state differs from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Kept {
    pub(crate) state_key: Vec<u8>,
    pub(crate) seal: Seal,
    pub(crate) path: Vec<ChainHash>,
    pub(crate) original: Option<Vec<u8>>,
}

impl Kept {
    /// `u32 len, state key, u64 seal seq, u32 len, seal, u8 count, path, original event…`.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let seal = seals::encode(&self.seal);
        let mut out = Vec::with_capacity(
            17 + self.state_key.len()
                + seal.len()
                + 32 * self.path.len()
                + self.original.as_ref().map_or(0, Vec::len),
        );
        out.extend_from_slice(&(self.state_key.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.state_key);
        out.extend_from_slice(&self.seal.seq.to_be_bytes());
        out.extend_from_slice(&(seal.len() as u32).to_be_bytes());
        out.extend_from_slice(&seal);
        out.push(self.path.len() as u8);
        for h in &self.path {
            out.extend_from_slice(h);
        }
        if let Some(original) = &self.original {
            out.extend_from_slice(original);
        }
        out
    }

    pub(crate) fn decode(origin: &NodeId, bytes: &[u8]) -> Result<Kept, StoreError> {
        let bad = || corrupt("proofs", "a row shorter than its fields");
        let mut at = 0usize;
        let mut take = |n: usize| -> Result<&[u8], StoreError> {
            let out = bytes
                .get(at..at.checked_add(n).ok_or_else(bad)?)
                .ok_or_else(bad)?;
            at += n;
            Ok(out)
        };
        let len = |b: &[u8]| u32::from_be_bytes(b.try_into().unwrap_or_default()) as usize;
        let n = len(take(4)?);
        let state_key = take(n)?.to_vec();
        let seq = u64::from_be_bytes(take(8)?.try_into().unwrap_or_default());
        let n = len(take(4)?);
        let seal = seals::decode(origin, seq, take(n)?)?;
        let count = take(1)?[0] as usize;
        let mut path = Vec::with_capacity(count);
        for _ in 0..count {
            let mut h = [0u8; 32];
            h.copy_from_slice(take(32)?);
            path.push(h);
        }
        let rest = &bytes[at..];
        Ok(Kept {
            state_key,
            seal,
            path,
            original: (!rest.is_empty()).then(|| rest.to_vec()),
        })
    }

    /// The proof as a page carries it.
    pub(crate) fn proof(&self) -> Proof {
        Proof {
            seal: self.seal.seq,
            path: self.path.clone(),
        }
    }
}

/// Whether `versions` hold the event (`origin`, `seq`).
fn holds(versions: &Versions, origin: &str, seq: u64) -> bool {
    versions
        .events()
        .iter()
        .any(|v| v.seq == seq && v.origin.as_str() == origin)
}

/// The tables that keeping proofs reads and writes, open in one write transaction.
pub(crate) struct Tables<'a, 't> {
    pub(crate) state: &'a redb::Table<'t, &'static [u8], &'static [u8]>,
    pub(crate) changelog: &'a redb::Table<'t, &'static [u8], &'static [u8]>,
    pub(crate) seals: &'a redb::Table<'t, &'static [u8], &'static [u8]>,
    pub(crate) proofs: &'a mut redb::Table<'t, &'static [u8], &'static [u8]>,
}

/// Before `origin`'s events `from..=to` leave the changelog: writes the proof of each of them
/// that is a live version. `from..=to` must be whole blocks (`from` a block's first event, `to`
/// a seal).
pub(crate) fn keep(
    t: &mut Tables<'_, '_>,
    limits: &EventLimits,
    origin: &NodeId,
    from: u64,
    to: u64,
) -> Result<(), StoreError> {
    if from > to {
        return Ok(());
    }
    let (lo, hi) = (log_key(origin.as_str(), from), log_key(origin.as_str(), to));
    let mut blocks = Vec::new();
    for row in t.seals.range(lo.as_slice()..=hi.as_slice())? {
        let (k, v) = row?;
        let seq = log_seq(origin.as_str(), k.value())
            .ok_or_else(|| corrupt("seals", "a key of another origin in range"))?;
        blocks.push(seals::decode(origin, seq, v.value())?);
    }
    let mut next = from;
    for seal in blocks {
        if seal.first != next {
            return Err(corrupt(
                "seals",
                format!(
                    "{origin}'s block ending at {} starts at {}, expected {next}",
                    seal.seq, seal.first
                ),
            ));
        }
        next = seal.seq + 1;
        let (lo, hi) = (
            log_key(origin.as_str(), seal.first),
            log_key(origin.as_str(), seal.seq),
        );
        let mut events = Vec::new();
        for row in t.changelog.range(lo.as_slice()..=hi.as_slice())? {
            events.push(row?.1.value().to_vec());
        }
        if events.len() as u64 != seal.seq - seal.first + 1 {
            return Err(corrupt(
                "changelog",
                format!(
                    "{origin}'s block {}..={} is not whole",
                    seal.first, seal.seq
                ),
            ));
        }
        let leaves: Vec<ChainHash> = events.iter().map(|e| event_leaf(e)).collect();
        for (i, bytes) in events.into_iter().enumerate() {
            let event = Event::decode(&bytes, limits).map_err(|e| corrupt("changelog", e))?;
            let skey = state_key(&event.collection, &event.key);
            let Some(g) = t.state.get(skey.as_slice())? else {
                continue;
            };
            let versions = Versions::decode(g.value(), limits).map_err(|e| corrupt("state", e))?;
            let Some(version) = versions
                .events()
                .iter()
                .find(|v| v.seq == event.seq && v.origin == event.origin)
            else {
                continue;
            };
            let original = (version.encode() != bytes).then_some(bytes);
            let kept = Kept {
                state_key: skey,
                seal: seal.clone(),
                path: merkle_path(&leaves, i),
                original,
            };
            t.proofs.insert(
                log_key(origin.as_str(), event.seq).as_slice(),
                kept.encode().as_slice(),
            )?;
        }
    }
    if next != to + 1 {
        return Err(corrupt(
            "seals",
            format!("{origin}'s events {next}..={to} are past its last seal"),
        ));
    }
    Ok(())
}

/// Removes up to `limit` rows of superseded versions, going on from where the last sweep ended.
pub(crate) fn sweep(
    txn: &redb::WriteTransaction,
    limits: &EventLimits,
    limit: u64,
) -> Result<u64, StoreError> {
    let mut proofs = txn.open_table(PROOFS)?;
    let mut meta = txn.open_table(META)?;
    let state = txn.open_table(STATE)?;
    let start = meta.get(META_PROOF_SWEEP)?.map(|g| g.value().to_vec());
    let mut stale = Vec::new();
    let mut last = None;
    let mut seen = 0;
    let rows = match &start {
        Some(s) => proofs.range::<&[u8]>((
            std::ops::Bound::Excluded(s.as_slice()),
            std::ops::Bound::Unbounded,
        ))?,
        None => proofs.range::<&[u8]>(..)?,
    };
    for row in rows {
        let (k, v) = row?;
        seen += 1;
        let key = k.value().to_vec();
        let split = key
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| corrupt("proofs", "a key without separator"))?;
        let origin = std::str::from_utf8(&key[..split])
            .map_err(|_| corrupt("proofs", "an origin that is not UTF-8"))?;
        let seq = log_seq(origin, &key).ok_or_else(|| corrupt("proofs", "a malformed key"))?;
        let id = NodeId::parse(origin).map_err(|e| corrupt("proofs", e))?;
        let kept = Kept::decode(&id, v.value())?;
        let live = match state.get(kept.state_key.as_slice())? {
            Some(g) => holds(
                &Versions::decode(g.value(), limits).map_err(|e| corrupt("state", e))?,
                origin,
                seq,
            ),
            None => false,
        };
        if !live {
            stale.push(key.clone());
        }
        last = Some(key);
        if seen >= limit {
            break;
        }
    }
    let removed = stale.len() as u64;
    for k in stale {
        proofs.remove(k.as_slice())?;
    }
    match last {
        Some(k) if seen >= limit => {
            meta.insert(META_PROOF_SWEEP, k.as_slice())?;
        }
        _ => {
            meta.remove(META_PROOF_SWEEP)?;
        }
    }
    Ok(removed)
}

/// Proofs for the versions of one snapshot page, and the seals they name (once each).
#[derive(Default)]
pub(crate) struct PageProofs {
    /// Per version: the event as its origin sent it, and its proof.
    pub(crate) versions: Vec<(Event, Proof)>,
    pub(crate) seals: Vec<Seal>,
    /// Blocks read from the changelog for this page: (origin, seal seq) → leaves.
    blocks: std::collections::BTreeMap<(String, u64), Vec<ChainHash>>,
    /// Seals already in `seals`.
    named: std::collections::BTreeSet<(String, u64)>,
    /// Versions left out: nothing here proves them (a damaged store).
    pub(crate) unproven: u64,
}

impl PageProofs {
    /// Adds `version` with its proof: a kept row when its event left the changelog, else its
    /// block read from the changelog. A version nothing here proves (a damaged store) is left
    /// out and counted: sent on, it would get this node cut off as a forger.
    pub(crate) fn add(
        &mut self,
        changelog: &impl ReadableTable<&'static [u8], &'static [u8]>,
        seals_t: &impl ReadableTable<&'static [u8], &'static [u8]>,
        proofs: &impl ReadableTable<&'static [u8], &'static [u8]>,
        limits: &EventLimits,
        version: Event,
    ) -> Result<(), StoreError> {
        match self.prove(changelog, seals_t, proofs, limits, version)? {
            Some((original, seal, proof))
                if seal.proves(original.seq, &original.encode(), &proof.path) =>
            {
                if self.named.insert((seal.origin.to_string(), seal.seq)) {
                    self.seals.push(seal);
                }
                self.versions.push((original, proof));
            }
            _ => self.unproven += 1,
        }
        Ok(())
    }

    /// The origin's event behind `version`, the seal of its block and its path, if this store
    /// holds them.
    fn prove(
        &mut self,
        changelog: &impl ReadableTable<&'static [u8], &'static [u8]>,
        seals_t: &impl ReadableTable<&'static [u8], &'static [u8]>,
        proofs: &impl ReadableTable<&'static [u8], &'static [u8]>,
        limits: &EventLimits,
        version: Event,
    ) -> Result<Option<(Event, Seal, Proof)>, StoreError> {
        let origin = version.origin.clone();
        let lkey = log_key(origin.as_str(), version.seq);
        if let Some(g) = proofs.get(lkey.as_slice())? {
            let kept = Kept::decode(&origin, g.value())?;
            let original = match &kept.original {
                Some(bytes) => match Event::decode(bytes, limits) {
                    Ok(e) => e,
                    Err(_) => return Ok(None),
                },
                None => version,
            };
            let proof = kept.proof();
            return Ok(Some((original, kept.seal, proof)));
        }
        let Some(bytes) = changelog.get(lkey.as_slice())? else {
            return Ok(None);
        };
        let Ok(original) = Event::decode(bytes.value(), limits) else {
            return Ok(None);
        };
        drop(bytes);
        let hi = log_key(origin.as_str(), u64::MAX);
        let seal = match seals_t.range(lkey.as_slice()..=hi.as_slice())?.next() {
            Some(row) => {
                let (k, v) = row?;
                let seq = log_seq(origin.as_str(), k.value())
                    .ok_or_else(|| corrupt("seals", "a key of another origin"))?;
                seals::decode(&origin, seq, v.value())?
            }
            None => return Ok(None),
        };
        if !seal.covers(version.seq) {
            return Ok(None);
        }
        let block = (origin.to_string(), seal.seq);
        if !self.blocks.contains_key(&block) {
            let (lo, hi) = (
                log_key(origin.as_str(), seal.first),
                log_key(origin.as_str(), seal.seq),
            );
            let mut leaves = Vec::new();
            for row in changelog.range(lo.as_slice()..=hi.as_slice())? {
                leaves.push(event_leaf(row?.1.value()));
            }
            self.blocks.insert(block.clone(), leaves);
        }
        let leaves = &self.blocks[&block];
        let index = (version.seq - seal.first) as usize;
        let proof = Proof {
            seal: seal.seq,
            path: merkle_path(leaves, index),
        };
        Ok(Some((original, seal, proof)))
    }
}

/// The most bytes a version's proof adds to a page (its path, and its seal when it is the first
/// of its block there).
pub(crate) const PROOF_BYTES: usize = 32 * MAX_PATH_HASHES / 2 + 8 + 8 + 64 + 128 + 64;

/// Whether `seals` (by origin and sequence number) prove each of `versions` by `proofs`; the
/// first that is not, with why.
pub(crate) fn check_page<'s>(
    versions: &[Event],
    proofs: &[Proof],
    seals: &'s [Seal],
) -> Result<Vec<&'s Seal>, String> {
    if proofs.len() != versions.len() {
        return Err(format!(
            "{} versions with {} proofs",
            versions.len(),
            proofs.len()
        ));
    }
    let by_key: std::collections::BTreeMap<(&str, u64), &Seal> = seals
        .iter()
        .map(|s| ((s.origin.as_str(), s.seq), s))
        .collect();
    let mut out = Vec::with_capacity(versions.len());
    for (v, p) in versions.iter().zip(proofs) {
        let Some(&seal) = by_key.get(&(v.origin.as_str(), p.seal)) else {
            return Err(format!(
                "version {}:{} names {}'s seal at {}, which the page lacks",
                v.origin, v.seq, v.origin, p.seal
            ));
        };
        if !seal.proves(v.seq, &v.encode(), &p.path) {
            return Err(format!(
                "version {}:{} of key {:?} in collection {:?} is not what {} sealed at {}",
                v.origin,
                v.seq,
                String::from_utf8_lossy(&v.key),
                v.collection,
                v.origin,
                p.seal
            ));
        }
        out.push(seal);
    }
    Ok(out)
}
