//! Changelog retention: compaction of changelog entries every peer holds, and the two sides of a
//! state snapshot (reading the state in pages, merging a peer's pages).
//!
//! Invariants:
//! - Per origin, the changelog holds exactly the events `compacted + 1 ..= held` (`held` in
//!   `origins`, `compacted` in the `compacted` table, 0 when absent).
//! - `meta.feed_floor` is at least the feed position of every compacted event. A snapshot page
//!   or repair that changes the state (changes that have no feed position) uses up one position
//!   and raises the floor to it: a watch from below it, even one at the feed's end before, must
//!   start over from a read of the state.
//! - Merging a snapshot page applies each version by [`Versions::apply`], the rule events are
//!   applied by. Causal contexts are transitive (a write's context covers everything the
//!   versions it replaces covered), so merging the versions a peer holds gives the state that
//!   applying the events behind them would give.

use std::collections::BTreeMap;

use edgerep_wire::seal::{Proof, event_leaf};
use edgerep_wire::{EncodedEvent, Have, Hlc, NodeId, Seal, StateCursor};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use crate::keys::{log_key, log_seq, split_state_key, state_key};
use crate::proofs::{self, BLOCKS, PROOFS, PageProofs};
use crate::seals::{self, CHAINS, SEALS};
use crate::{
    Applied, CHANGELOG, Counters, DISAGREEMENTS, META, META_HLC, META_OWN_SEEN, ORIGINS, RowDamage,
    STATE, Store, StoreError, StoreWriter, Sync, Unresolved, Versions, aae, apply_to_state,
    corrupt, hlc_bytes, meta_u64, parse_origin, resolution, u64_from,
};
use edgerep_wire::aae::KeyResolution;

/// A repair in progress: the peer's resolutions to compare with this node's, and what this
/// node's transforms on apply made of versions of collections that have them.
struct Repairing<'a> {
    resolutions: &'a [KeyResolution],
    peer: &'a NodeId,
    transformed: &'a BTreeMap<(String, u64), crate::OnApply>,
}

/// Rows of kept proofs and blocks a compaction checks for superseded versions at least (more
/// of a large table while time allows: see `proofs::sweep`).
const SWEEP_ROWS: u64 = 256;
/// Per origin, the highest sequence number removed from the changelog.
pub(crate) const COMPACTED: TableDefinition<&str, u64> = TableDefinition::new("compacted");
/// Feed positions up to this one can no longer be read (see the module invariants).
pub(crate) const META_FEED_FLOOR: &str = "feed_floor";

/// What [`StoreWriter::compact`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compaction {
    /// Changelog entries removed.
    pub removed: u64,
    /// Whether the floors allow more than this call removed (a whole block past the budget):
    /// call again at once. (Whole blocks rarely fill the budget exactly, so `removed` below it
    /// does not say the floors are reached.)
    pub more: bool,
    /// Every origin's compacted floor afterwards.
    pub compacted: Have,
}

/// One page of the state (see [`Store::state_page`]).
#[derive(Debug, Clone, PartialEq)]
pub struct StatePage {
    /// The versions of keys (whole, or a part of one over a page by itself: see
    /// [`StateCursor`]), in (collection, key) order, each as its origin sent it (a
    /// transform on apply may have changed what this node holds).
    pub versions: Vec<EncodedEvent>,
    /// Per version, what proves it is its origin's.
    pub proofs: Vec<Proof>,
    /// The seals the proofs name, once each.
    pub seals: Vec<Seal>,
    /// Versions left out because nothing this node holds proves them (a damaged store).
    pub unproven: u64,
    /// The (collection, key) the next page starts after; `None` when the state is done.
    pub next: Option<StateCursor>,
}

/// What a merge did to one collection (see [`Installed`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CollectionCounts {
    /// Versions that changed a key.
    pub changed: u64,
    /// Of those, versions this node's have already covered (drift).
    pub covered: u64,
    /// Keys settled on the default after a disagreement.
    pub disagreements: u64,
    /// Keys whose plugin had failed here and decided when run again (see `Installed`).
    pub resolved_again: u64,
}

/// What [`StoreWriter::install_snapshot`] (or [`StoreWriter::repair_sealed`]) did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// Versions that changed their key (merged in, replacing what they supersede).
    pub changed: u64,
    /// Of those, versions of an origin up to where this node's have already covered it: what
    /// this node should have held already (drift), not writes still in flight.
    pub covered: u64,
    /// Versions that replaced a damaged one (same origin and sequence number, other bytes) or
    /// a damaged key this node could not read (repair only).
    pub replaced: u64,
    /// Keys whose resolution differed from the peer's over the same versions, now resolved by
    /// the deterministic default (repair only).
    pub disagreements: u64,
    /// Keys whose resolver plugin had failed here (last-writer-wins stood in) and, run again
    /// when a peer's resolution differed, decided (repair only).
    pub resolved_again: u64,
    /// `changed`, `covered`, `disagreements` and `resolved_again` per collection.
    pub by_collection: BTreeMap<String, CollectionCounts>,
    /// Every origin's highest sequence number held afterwards.
    pub held: Have,
    /// Every origin's compacted floor afterwards.
    pub compacted: Have,
    /// Versions a repair offered, up to this node's have, that are not the event this node
    /// holds under their origin and sequence number (another history the origin signed, sent
    /// by a peer that holds it): left out.
    pub forks: Vec<RepairFork>,
    /// Versions left out because their causal context names events this node does not hold
    /// (a context its origin forged: merged, such a version would supersede the named origins'
    /// future writes to the key, here and on every node it is repaired to; this node's own,
    /// beyond any it issued, would make it refuse its own writes to the key). Checked for
    /// every origin in a repair and on a snapshot's last page, for this node's own events on a
    /// snapshot's earlier pages (their have comes last). After a restore that lost this
    /// node's later events, an honest version may be left out too, until the snapshot's last
    /// page brings them back: anti-entropy then merges it.
    pub future_contexts: u64,
    /// Versions left out because their key's row cannot be read (damage here) and a snapshot
    /// page, unlike a repair, does not replace it: the row stays until a repair does.
    pub left_out_of_damaged_rows: u64,
    /// The feed's last position afterwards (raised past the changes, which have none).
    pub feed_last: u64,
    /// Whether anything was written (and synced, with `Sync::Immediate`). A page or repair that
    /// changes nothing here is not committed: it costs a peer's message no durable write.
    pub wrote: bool,
}

/// A version a repair offered in place of another event this node holds at its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairFork {
    /// The origin of both events.
    pub origin: NodeId,
    /// Their sequence number.
    pub seq: u64,
    /// [`crate::event_hash`] of the event held here, when it is kept whole (`None`: compacted,
    /// kept only as its leaf or Merkle path).
    pub held: Option<[u8; 32]>,
    /// [`crate::event_hash`] of the version offered.
    pub received: [u8; 32],
}

pub(crate) fn read_map(table: &impl ReadableTable<&'static str, u64>) -> Result<Have, StoreError> {
    let mut out = Have::new();
    for row in table.iter()? {
        let (k, v) = row?;
        out.insert(parse_origin(k.value())?, v.value());
    }
    Ok(out)
}

pub(crate) fn feed_floor(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<u64, StoreError> {
    match meta.get(META_FEED_FLOOR)? {
        Some(g) => u64_from(g.value(), "meta"),
        None => Ok(0),
    }
}

/// The highest sequence number of a seal of `origin` in `from..=to`.
fn last_seal_in(
    seals_t: &impl ReadableTable<&'static [u8], &'static [u8]>,
    origin: &NodeId,
    from: u64,
    to: u64,
) -> Result<Option<u64>, StoreError> {
    seal_in(seals_t, origin, from, to, true)
}

/// The lowest sequence number of a seal of `origin` in `from..=to`.
fn first_seal_in(
    seals_t: &impl ReadableTable<&'static [u8], &'static [u8]>,
    origin: &NodeId,
    from: u64,
    to: u64,
) -> Result<Option<u64>, StoreError> {
    seal_in(seals_t, origin, from, to, false)
}

fn seal_in(
    seals_t: &impl ReadableTable<&'static [u8], &'static [u8]>,
    origin: &NodeId,
    from: u64,
    to: u64,
    last: bool,
) -> Result<Option<u64>, StoreError> {
    if from > to {
        return Ok(None);
    }
    let (lo, hi) = (log_key(origin.as_str(), from), log_key(origin.as_str(), to));
    let mut rows = seals_t.range(lo.as_slice()..=hi.as_slice())?;
    let row = if last { rows.next_back() } else { rows.next() };
    match row {
        Some(row) => {
            let (k, _) = row?;
            let seq = log_seq(origin.as_str(), k.value())
                .ok_or_else(|| corrupt("seals", "a key of another origin in range"))?;
            Ok(Some(seq))
        }
        None => Ok(None),
    }
}

/// Removes `origin`'s changelog entries `from ..= to`; returns how many there were.
fn remove_range(
    changelog: &mut redb::Table<'_, &'static [u8], &'static [u8]>,
    origin: &str,
    from: u64,
    to: u64,
) -> Result<u64, StoreError> {
    if from > to {
        return Ok(0);
    }
    let (lo, hi) = (log_key(origin, from), log_key(origin, to));
    let mut removed = 0;
    for row in changelog.extract_from_if(lo.as_slice()..=hi.as_slice(), |_, _| true)? {
        row?;
        removed += 1;
    }
    Ok(removed)
}

impl Store {
    /// The versions of the keys after `after` (from the first if `None`), in (collection, key)
    /// order: whole keys, at most `max_events` versions and `max_bytes` of encoded versions
    /// (and their proofs), except that a first key over them by itself (concurrent writes of
    /// large values) goes over several pages, a version at least on each (see
    /// [`StateCursor`]).
    pub fn state_page(
        &self,
        after: Option<&StateCursor>,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<StatePage, StoreError> {
        self.state_page_within(after, max_events, max_bytes, std::time::Duration::MAX)
    }

    /// [`Store::state_page`] ending, at a key's end, once reading it took `within`: the proofs
    /// of a page may read many changelog blocks, and whoever asks for pages (a peer) must not
    /// buy an unbounded read with each. The first key (or what fits of it) still comes.
    pub fn state_page_within(
        &self,
        after: Option<&StateCursor>,
        max_events: usize,
        max_bytes: usize,
        within: std::time::Duration,
    ) -> Result<StatePage, StoreError> {
        let started = std::time::Instant::now();
        let txn = self.db.begin_read()?;
        let state = txn.open_table(STATE)?;
        let changelog = txn.open_table(CHANGELOG)?;
        let seals_t = txn.open_table(SEALS)?;
        let proofs_t = txn.open_table(PROOFS)?;
        let blocks_t = txn.open_table(BLOCKS)?;
        let mut proven = PageProofs::default();
        let lower = after.map(|a| state_key(&a.collection, &a.key));
        // Inside the cursor's key, the page goes on from the version after this one.
        let inside = after.and_then(|a| a.after_version.as_ref());
        let rows = match &lower {
            Some(l) => state.range::<&[u8]>((
                if inside.is_some() {
                    std::ops::Bound::Included(l.as_slice())
                } else {
                    std::ops::Bound::Excluded(l.as_slice())
                },
                std::ops::Bound::Unbounded,
            ))?,
            None => state.range::<&[u8]>(..)?,
        };
        let (mut count, mut bytes) = (0usize, 0usize);
        let mut last: Option<StateCursor> = None;
        // Whether the state goes on after this page.
        let mut more = false;
        for row in rows {
            let (k, v) = row?;
            // A row that cannot be read (damage the check at open reports) is left out, as
            // `versions_within` does: the rest of the state still goes out, and anti-entropy
            // repairs the row from a peer. Failing the page would stop the snapshot for good.
            let Ok(v) = Versions::decode(v.value(), &self.limits()) else {
                if let Some((coll, key)) = split_state_key(k.value()) {
                    last = Some(StateCursor::after_key(coll, key));
                }
                continue;
            };
            let (coll, key) = split_state_key(k.value())
                .ok_or_else(|| corrupt("state", "key without separator"))?;
            let mut versions: Vec<&EncodedEvent> = v.events().iter().collect();
            // Each version's encoding and its proof.
            let weight = |e: &EncodedEvent| e.bytes().len() + proofs::PROOF_BYTES;
            let in_order = |versions: &mut Vec<&EncodedEvent>| {
                versions.sort_by(|a, b| (&a.origin, a.seq).cmp(&(&b.origin, b.seq)));
            };
            if let (Some(a), Some((origin, seq))) = (after, inside)
                && a.collection == coll
                && a.key == key
            {
                in_order(&mut versions);
                versions.retain(|e| (&e.origin, e.seq) > (origin, *seq));
            }
            let size: usize = versions.iter().map(|e| weight(e)).sum();
            let fits = count + versions.len() <= max_events && bytes + size <= max_bytes;
            if last.is_some() && (!fits || started.elapsed() >= within) {
                more = true;
                break;
            }
            if !fits {
                // The first key, over the bounds by itself: as many of its versions as fit
                // (one at least), the page ending inside it.
                in_order(&mut versions);
                let (mut taken, mut c, mut b) = (0, count, bytes);
                for e in &versions {
                    if taken > 0 && (c + 1 > max_events || b + weight(e) > max_bytes) {
                        break;
                    }
                    (taken, c, b) = (taken + 1, c + 1, b + weight(e));
                }
                if taken < versions.len() {
                    let end = versions[taken - 1];
                    last = Some(StateCursor {
                        collection: coll.to_owned(),
                        key: key.to_vec(),
                        after_version: Some((end.origin.clone(), end.seq)),
                    });
                    versions.truncate(taken);
                    more = true;
                }
            }
            if !more {
                last = Some(StateCursor::after_key(coll, key));
            }
            bytes += versions.iter().map(|e| weight(e)).sum::<usize>();
            count += versions.len();
            for version in versions.into_iter().cloned() {
                proven.add(
                    &changelog,
                    &seals_t,
                    &proofs_t,
                    &blocks_t,
                    &self.limits(),
                    version,
                )?;
            }
            if more {
                break;
            }
        }
        proven.add_context_seals(&seals_t)?;
        let next = if more { last } else { None };
        let (versions, proofs) = proven.versions.into_iter().unzip();
        Ok(StatePage {
            versions,
            proofs,
            seals: proven.seals,
            unproven: proven.unproven,
            next,
        })
    }

    /// The versions of the keys `state_keys` (`collection 0x00 key`) with their proofs, as a
    /// page: what anti-entropy sends a peer for keys that differ. Keys this node does not hold,
    /// or cannot read, are left out.
    pub fn versions_of(&self, state_keys: &[Vec<u8>]) -> Result<StatePage, StoreError> {
        Ok(self
            .versions_within(
                state_keys,
                usize::MAX,
                usize::MAX,
                std::time::Duration::MAX,
                0,
            )?
            .0)
    }

    /// [`Store::versions_of`] of the first keys of `state_keys` whose state rows, proofs and
    /// resolutions come to at most `max_bytes` and whose versions number at most
    /// `max_versions`, read within about `max_time` (at least one key): returns the page and
    /// how many keys it covers. What a peer asked for beyond that waits for a later session.
    /// (Proving a version reads its block: keys in many blocks cost far more than their rows'
    /// bytes.) A first key over the bounds by itself (concurrent writes of large values) goes
    /// in part: as many of its versions as fit, one at least, in (origin, seq) order from the
    /// `rotation`-th on (round), so that answers with other rotations bring the rest.
    pub fn versions_within(
        &self,
        state_keys: &[Vec<u8>],
        max_bytes: usize,
        max_versions: usize,
        max_time: std::time::Duration,
        rotation: usize,
    ) -> Result<(StatePage, usize), StoreError> {
        let started = std::time::Instant::now();
        let txn = self.db.begin_read()?;
        let state = txn.open_table(STATE)?;
        let changelog = txn.open_table(CHANGELOG)?;
        let seals_t = txn.open_table(SEALS)?;
        let proofs_t = txn.open_table(PROOFS)?;
        let blocks_t = txn.open_table(BLOCKS)?;
        let mut proven = PageProofs::default();
        let (mut bytes, mut versions, mut covered) = (0usize, 0usize, 0usize);
        for k in state_keys {
            if covered > 0 && started.elapsed() >= max_time {
                break;
            }
            let Some(g) = state.get(k.as_slice())? else {
                covered += 1;
                continue;
            };
            let stored = g.value().len();
            // As a state page counts: each version travels with a proof and, at most, a seal
            // (a key with many small versions, each in a block of its own, is mostly proofs),
            // and the key may go with its resolution (its state key, two hashes, a build).
            let v = Versions::decode(g.value(), &self.limits()).ok();
            let n = v.as_ref().map_or(0, |v| v.events().len());
            let weight = match v {
                Some(_) => stored + n * proofs::PROOF_BYTES + k.len() + 160,
                None => stored,
            };
            let over = bytes.saturating_add(weight) > max_bytes || versions + n > max_versions;
            if covered > 0 && over {
                break;
            }
            covered += 1;
            bytes = bytes.saturating_add(weight);
            versions += n;
            let Some(v) = v else {
                continue;
            };
            let mut sent: Vec<&EncodedEvent> = v.events().iter().collect();
            if over && n > 1 {
                sent.sort_by(|a, b| (&a.origin, a.seq).cmp(&(&b.origin, b.seq)));
                sent.rotate_left(rotation % n);
                let mut room = max_bytes.saturating_sub(k.len() + 160);
                let fit = sent
                    .iter()
                    .enumerate()
                    .take_while(|(i, e)| {
                        let w = e.bytes().len() + proofs::PROOF_BYTES;
                        let fits = *i == 0 || (w <= room && *i < max_versions);
                        room = room.saturating_sub(w);
                        fits
                    })
                    .count();
                sent.truncate(fit);
            }
            for version in sent.into_iter().cloned() {
                proven.add(
                    &changelog,
                    &seals_t,
                    &proofs_t,
                    &blocks_t,
                    &self.limits(),
                    version,
                )?;
            }
        }
        let (versions, proofs) = proven.versions.into_iter().unzip();
        Ok((
            StatePage {
                versions,
                proofs,
                seals: proven.seals,
                unproven: proven.unproven,
                next: None,
            },
            covered,
        ))
    }

    /// For the keys among `state_keys` that hold a resolution, what a peer is told of it in
    /// repair (see [`StoreWriter::repair_sealed`]).
    pub fn resolutions_of(&self, state_keys: &[Vec<u8>]) -> Result<Vec<KeyResolution>, StoreError> {
        let txn = self.db.begin_read()?;
        let state = txn.open_table(STATE)?;
        let mut out = Vec::new();
        for k in state_keys {
            let Some(g) = state.get(k.as_slice())? else {
                continue;
            };
            let Ok(row) = resolution::split_row(g.value()) else {
                continue;
            };
            let Some(record) = row.resolution else {
                continue;
            };
            // A collection being resolved again is named so: the peer then leaves its keys
            // alone (its build differs from the peer's own), as this node does.
            let build = match (split_state_key(k), self.resolver.as_deref()) {
                (Some((collection, _)), Some(r)) if self.is_re_resolving(collection) => {
                    format!("{} {}", r.build(collection), resolution::RE_RESOLVING)
                }
                (Some((collection, _)), Some(r)) => r.build(collection),
                _ => String::new(),
            };
            out.push(KeyResolution {
                state_key: k.clone(),
                versions: resolution::hash_of(Some(row.versions)),
                resolution: resolution::hash_of(Some(record)),
                build,
            });
        }
        Ok(out)
    }
}

impl StoreWriter {
    /// Removes changelog entries: per origin in `floors`, those up to the floor (capped at what
    /// the store holds), at most `max_remove` entries in all (lower origins first; call again
    /// for the rest). Feed rows whose events are all gone are removed and the feed floor
    /// raised past every removed event. The caller decides the floors (what every peer holds).
    pub fn compact(
        &self,
        floors: &Have,
        max_remove: u64,
        sync: Sync,
    ) -> Result<Compaction, StoreError> {
        self.compact_sweeping(floors, max_remove, true, sync)
    }

    /// [`StoreWriter::compact`], sweeping kept proofs and blocks only with `sweep` (a
    /// compaction going on after one that left more does not: the sweep decodes each kept
    /// block it looks at, and at every transaction it took most of the committer's time).
    pub fn compact_sweeping(
        &self,
        floors: &Have,
        max_remove: u64,
        sweep: bool,
        sync: Sync,
    ) -> Result<Compaction, StoreError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(sync.redb())?;
        let out = {
            let mut changelog = txn.open_table(CHANGELOG)?;
            let mut compacted_t = txn.open_table(COMPACTED)?;
            let mut seals_t = txn.open_table(SEALS)?;
            let mut blocks_t = txn.open_table(BLOCKS)?;
            let state = txn.open_table(STATE)?;
            let origins = txn.open_table(ORIGINS)?;
            let mut budget = max_remove;
            let mut removed = 0;
            let mut more = false;
            for (origin, &floor) in floors {
                let held = origins.get(origin.as_str())?.map_or(0, |g| g.value());
                let done = compacted_t.get(origin.as_str())?.map_or(0, |g| g.value());
                let limit = floor.min(held);
                if limit <= done {
                    continue;
                }
                if budget == 0 {
                    // A block of this origin waits for the next call, if one ends within the floor.
                    more |= last_seal_in(&seals_t, origin, done + 1, limit)?.is_some();
                    continue;
                }
                // Whole blocks only (a live version's proof needs every leaf of its block): up
                // to the last seal within the budget, or the first block alone if it is larger.
                let within = done.saturating_add(budget).min(limit);
                let to = match last_seal_in(&seals_t, origin, done + 1, within)? {
                    Some(to) => to,
                    None => match last_seal_in(&seals_t, origin, done + 1, limit)? {
                        Some(_) => {
                            first_seal_in(&seals_t, origin, done + 1, limit)?.unwrap_or(done)
                        }
                        None => done,
                    },
                };
                if to <= done {
                    continue;
                }
                proofs::keep(
                    &mut proofs::Tables {
                        state: &state,
                        changelog: &changelog,
                        seals: &seals_t,
                        blocks: &mut blocks_t,
                    },
                    &self.limits(),
                    origin,
                    done + 1,
                    to,
                )?;
                let n = remove_range(&mut changelog, origin.as_str(), done + 1, to)?;
                // Seals below the new floor go too, the old floor's included (those at and
                // above the new floor prove what is held).
                remove_range(&mut seals_t, origin.as_str(), done, to - 1)?;
                if n != to - done {
                    return Err(corrupt(
                        "changelog",
                        format!(
                            "{origin} {}..={to}: {n} entries, expected {}",
                            done + 1,
                            to - done
                        ),
                    ));
                }
                compacted_t.insert(origin.as_str(), to)?;
                budget = budget.saturating_sub(n);
                removed += n;
                more |= to < limit && last_seal_in(&seals_t, origin, to + 1, limit)?.is_some();
            }
            let compacted = read_map(&compacted_t)?;
            drop((compacted_t, origins, changelog, seals_t, blocks_t, state));
            if removed > 0 {
                crate::feed::trim(&mut txn, &compacted)?;
            }
            if sweep {
                proofs::sweep(&txn, &self.limits(), SWEEP_ROWS)?;
            }
            Compaction {
                removed,
                more,
                compacted,
            }
        };
        txn.commit()?;
        Ok(out)
    }

    /// Merges a page of a peer's state (its keys' versions) into the state, in one transaction:
    /// each version is applied like an event, so the result is what the events behind both
    /// states would give. On the last page, `have` (per origin, what the peer's state reflects)
    /// raises this node's: for an origin where it is ahead, the changelog entries below it are
    /// dropped and the compacted floor set to it. A snapshot claiming more of this node's own
    /// events than it holds is refused (a peer can never hold those). `hlc_last` is saved like
    /// in [`StoreWriter::apply_remote`].
    pub fn install_snapshot(
        &self,
        versions: Vec<EncodedEvent>,
        have: Option<&Have>,
        hlc_last: Option<Hlc>,
        sync: Sync,
    ) -> Result<Installed, StoreError> {
        self.install_in(versions, None, have, None, hlc_last, sync, None)
    }

    /// [`StoreWriter::install_snapshot`] from a peer. Every version must be proven its origin's by
    /// `proofs` (one per version) and `seals` (verified with the origins' certificates, which
    /// `certs` may bring), or the page is refused whole; a revoked origin's versions past its
    /// revocation are left out. The last page raises an origin's have only with that origin's
    /// seal at the new sequence number, and that seal's chain hash becomes the origin's chain
    /// head. With a verified seal this node's own origin may be raised too (its own events,
    /// lost here in a restore, that peers held).
    #[allow(clippy::too_many_arguments)]
    pub fn install_sealed(
        &self,
        versions: Vec<EncodedEvent>,
        proofs: &[Proof],
        have: Option<&Have>,
        seals: &[Seal],
        certs: &[(NodeId, Vec<u8>)],
        hlc_last: Option<Hlc>,
        sync: Sync,
    ) -> Result<Installed, StoreError> {
        self.install_in(
            versions,
            Some(proofs),
            have,
            Some((seals, certs)),
            hlc_last,
            sync,
            None,
        )
    }

    /// Merges versions a peer sent in anti-entropy repair: checked like a snapshot page
    /// ([`StoreWriter::install_sealed`], no have), and merged by the ordinary rule, except that a
    /// version proven its origin's replaces a version this node holds with the same origin and
    /// sequence number but other bytes, and a key this node cannot read (both: damage here).
    ///
    /// `transformed` says, per version (origin, seq) of a collection with transforms on apply
    /// here, what those made of it: the state takes that, the proof keeps the origin's event.
    /// `resolutions` are the peer's, for keys with concurrent versions: where this node holds
    /// the same versions but resolved them otherwise, the disagreement is recorded and the key
    /// takes the deterministic default ([`crate::Resolution::default_of`]).
    #[allow(clippy::too_many_arguments)]
    pub fn repair_sealed(
        &self,
        versions: Vec<EncodedEvent>,
        proofs: &[Proof],
        seals: &[Seal],
        certs: &[(NodeId, Vec<u8>)],
        resolutions: &[KeyResolution],
        peer: &NodeId,
        transformed: &BTreeMap<(String, u64), crate::OnApply>,
        hlc_last: Option<Hlc>,
        sync: Sync,
    ) -> Result<Installed, StoreError> {
        self.install_in(
            versions,
            Some(proofs),
            None,
            Some((seals, certs)),
            hlc_last,
            sync,
            Some(Repairing {
                resolutions,
                peer,
                transformed,
            }),
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn install_in(
        &self,
        versions: Vec<EncodedEvent>,
        proofs: Option<&[Proof]>,
        have: Option<&Have>,
        sealed: Option<seals::Sealed<'_>>,
        hlc_last: Option<Hlc>,
        sync: Sync,
        repairing: Option<Repairing<'_>>,
    ) -> Result<Installed, StoreError> {
        let repair = repairing.is_some();
        self.learn_certs(sealed).map_err(|(origin, reason)| {
            StoreError::SnapshotRefused(format!("the certificate of {origin}: {reason}"))
        })?;
        // A snapshot page's versions of other origins that the state already holds byte for
        // byte change nothing here: they are left out before their seals are checked, so a
        // peer sending held versions under ever new seals buys no signature check (a repair
        // keeps them: it replaces damaged copies).
        let kept_proofs;
        let (versions, proofs) = match proofs {
            Some(p) if !repair && p.len() == versions.len() => {
                let (v, p) = self.without_held(versions, p)?;
                kept_proofs = p;
                (v, Some(kept_proofs.as_slice()))
            }
            other => (versions, other),
        };
        // Each version with the proof kept for it once merged: from a peer, its block's seal
        // (checked here, before anything is written) and path; trusted, a block of its own.
        let mut proven: Vec<(EncodedEvent, Seal, Vec<edgerep_wire::seal::ChainHash>)> =
            Vec::with_capacity(versions.len());
        match (proofs, sealed) {
            (Some(proofs), Some((seals, _))) => {
                let named = proofs::check_page(&versions, proofs, seals)
                    .map_err(StoreError::SnapshotRefused)?;
                let mut verified = std::collections::BTreeSet::new();
                for ((v, p), seal) in versions.into_iter().zip(proofs).zip(named) {
                    if let Some(keys) = &self.keys {
                        if let Some(limit) = keys.vouches_up_to(&v.origin)
                            && seal.seq > limit
                        {
                            continue;
                        }
                        if verified.insert((seal.origin.clone(), seal.seq)) {
                            keys.verify(&seal.origin, seal.seq, &seal.message(), &seal.signature)
                                .map_err(|reason| {
                                    StoreError::SnapshotRefused(format!(
                                        "{}'s seal at {}: {reason}",
                                        seal.origin, seal.seq
                                    ))
                                })?;
                        }
                    }
                    proven.push((v, seal.clone(), p.path.clone()));
                }
            }
            _ => {
                for v in versions {
                    let seal = Seal {
                        origin: v.origin.clone(),
                        seq: v.seq,
                        first: v.seq,
                        chain: [0; 32],
                        root: event_leaf(v.bytes()),
                        signature: Vec::new(),
                    };
                    proven.push((v, seal, Vec::new()));
                }
            }
        }
        // Per origin, the highest of its events a verified seal on this page proves exist: what
        // a page before a snapshot's last one may name in its versions' causal contexts. For
        // each origin its versions' contexts name, the first seal of it on the page at or past
        // the highest named, if it verifies (one signature check per origin named; the seals
        // the versions name were checked above, but not necessarily the copy of one picked
        // here, which may be another seal of that seq).
        let mut sealed_upto: BTreeMap<NodeId, u64> = BTreeMap::new();
        if let (false, None, Some(keys), Some((seals, _))) = (repair, have, &self.keys, sealed) {
            let named = proofs::named_in_contexts(proven.iter().map(|(v, _, _)| v));
            // The page's seals by (origin, seq), indexed once: a page may name a million
            // origins in its contexts and carry thousands of seals.
            let mut by_origin: BTreeMap<(&NodeId, u64), &Seal> = BTreeMap::new();
            for seal in seals {
                by_origin.entry((&seal.origin, seal.seq)).or_insert(seal);
            }
            for (origin, upto) in named {
                let first = by_origin
                    .range((origin, upto)..=(origin, u64::MAX))
                    .next()
                    .map(|(_, seal)| *seal);
                if let Some(seal) = first
                    && keys
                        .vouches_up_to(origin)
                        .is_none_or(|limit| seal.seq <= limit)
                    && keys
                        .verify(origin, seal.seq, &seal.message(), &seal.signature)
                        .is_ok()
                {
                    sealed_upto.insert(origin.clone(), seal.seq);
                }
            }
        }
        // A repair replaces what this node holds of an event only with that same event (its
        // state row may be damaged; its history is not the peer's to rewrite).
        let forks = if repair {
            self.keep_held_history(&mut proven)?
        } else {
            Vec::new()
        };
        // The highest of this node's own events the page brings back (proven its own above).
        let own_top = proven
            .iter()
            .filter(|(v, _, _)| v.origin == self.node)
            .map(|(v, _, _)| v.seq)
            .max()
            .unwrap_or(0);
        let mut txn = self.db.begin_write()?;
        txn.set_durability(sync.redb())?;
        let (out, deltas, tally, keys_restored) = {
            let mut state = txn.open_table(STATE)?;
            let mut meta = txn.open_table(META)?;
            let mut proofs_t = txn.open_table(PROOFS)?;
            let mut blocks_t = txn.open_table(BLOCKS)?;
            let mut index = aae::Writes::new(self.fingerprints);
            let mut unresolved = Unresolved::new(self.resolver.as_deref(), &self.rule);
            let mut counters = Counters::load(&meta)?;
            let held_before = read_map(&txn.open_table(ORIGINS)?)?;
            let (mut changed, mut covered, mut replaced) = (0, 0, 0);
            let mut left_out_of_damaged_rows = 0;
            // This node's own events: only it issues them, so a version naming more of them
            // than it issued (or than the page brings back under this node's own seals, for a
            // restored store) depends on events that do not exist. The event path holds such
            // an event back for good (causal delivery); a snapshot, which has none, leaves it
            // out.
            let own_issued = held_before
                .get(&self.node)
                .copied()
                .unwrap_or(0)
                .max(have.and_then(|h| h.get(&self.node)).copied().unwrap_or(0))
                .max(
                    proven
                        .iter()
                        .filter(|(_, seal, _)| seal.origin == self.node)
                        .map(|(_, seal, _)| seal.seq)
                        .max()
                        .unwrap_or(0),
                );
            // Causal delivery, as the event path has it: every event a version's context names
            // must be held here (a repair's versions are within this node's have, whose events
            // were admitted that way; a snapshot's last page brings the have its versions were
            // taken at). A snapshot's earlier pages come before that have: they may name events
            // of other origins that a seal on the page proves exist (the sender adds them). A
            // version naming events nobody sealed would otherwise stand over its key for good,
            // and pass its context on to this node's own writes of the key, which every peer
            // would then hold back.
            let held_upto = |o: &NodeId| -> Option<u64> {
                let held = held_before.get(o).copied().unwrap_or(0);
                if *o == self.node {
                    Some(own_issued)
                } else if repair || have.is_some() {
                    Some(held.max(have.and_then(|h| h.get(o)).copied().unwrap_or(0)))
                } else if self.keys.is_some() {
                    Some(held.max(sealed_upto.get(o).copied().unwrap_or(0)))
                } else {
                    // Trusted (tests and tools, no signatures): as before any check.
                    None
                }
            };
            let mut future_contexts = 0;
            let mut keys_restored = false;
            let mut by_collection: BTreeMap<String, CollectionCounts> = BTreeMap::new();
            for (event, seal, path) in proven {
                let lkey = log_key(event.origin.as_str(), event.seq);
                let skey = state_key(&event.collection, &event.key);
                let collection = event.collection.clone();
                let within_have = held_before.get(&event.origin).copied().unwrap_or(0) >= event.seq;
                let shaped = repairing
                    .as_ref()
                    .and_then(|r| r.transformed.get(&(event.origin.to_string(), event.seq)));
                let (event, original) = match shaped {
                    None | Some(crate::OnApply::AsReceived) => (event, None),
                    Some(crate::OnApply::Dropped) => continue,
                    Some(crate::OnApply::Value(value)) => {
                        let original = event.bytes().to_vec();
                        let mut e = event.into_event();
                        e.op = if value.is_some() {
                            edgerep_wire::Op::Put
                        } else {
                            edgerep_wire::Op::Delete
                        };
                        e.value = value.clone();
                        (EncodedEvent::new(e), Some(original))
                    }
                };
                if event
                    .context
                    .iter()
                    .any(|(o, seq)| held_upto(o).is_some_and(|held| seq > held))
                {
                    future_contexts += 1;
                    continue;
                }
                // This node's own write back from a peer's snapshot (its store was restored):
                // the keys it was sent with, as `apply_in` keeps them.
                if event.origin == self.node && !within_have {
                    keys_restored |= crate::idempotency::keep_restored(&txn, &event)?;
                }
                let (applied, damage) = apply_to_state(
                    &mut state,
                    &mut index,
                    &mut counters.digest,
                    &mut counters.entries,
                    &self.limits(),
                    event,
                    !within_have,
                    repair,
                    &mut unresolved,
                )?;
                replaced += u64::from(damage == RowDamage::Replaced);
                left_out_of_damaged_rows += u64::from(damage == RowDamage::LeftOut);
                if applied == Applied::Added {
                    changed += 1;
                    covered += u64::from(within_have);
                    let c = by_collection.entry(collection).or_default();
                    c.changed += 1;
                    c.covered += u64::from(within_have);
                    let kept = proofs::Kept {
                        state_key: skey,
                        seal,
                        path,
                        original,
                    };
                    proofs_t.insert(lkey.as_slice(), kept.encode().as_slice())?;
                }
            }
            let tally =
                unresolved.resolve(&mut state, &mut index, &mut counters.digest, &self.limits())?;
            let mut settled = resolution::Settled::default();
            if let (Some(r), Some(resolver)) = (&repairing, self.resolver.as_deref()) {
                let mut table = txn.open_table(DISAGREEMENTS)?;
                settled = resolution::settle(
                    &mut resolution::SettleTables {
                        state: &mut state,
                        disagreements: &mut table,
                        index: &mut index,
                        digest: &mut counters.digest,
                    },
                    self,
                    resolver,
                    r.resolutions,
                    r.peer,
                    &mut by_collection,
                )?;
            }
            let (disagreements, resolved_again) = (settled.moved, settled.resolved_again);
            if changed > 0 || disagreements > 0 || resolved_again > 0 {
                // These changes have no feed position: a watch from before must start over.
                // One position is used up and becomes the floor, so that a watch already at
                // the feed's end is told so too (its next read is below the floor).
                counters.position += 1;
                counters.save(&mut meta)?;
                meta.insert(META_FEED_FLOOR, &counters.position.to_be_bytes()[..])?;
            }
            let feed_last = counters.position;
            if let Some(hlc) = hlc_last {
                meta.insert(META_HLC, &hlc_bytes(hlc)[..])?;
            }
            // Own events above the own have: their numbers are taken from now on, also after a
            // restart before the last page (which alone raises the have) comes.
            let own_seen_raised = own_top > held_before.get(&self.node).copied().unwrap_or(0)
                && own_top > meta_u64(&meta, META_OWN_SEEN)?;
            if own_seen_raised {
                meta.insert(META_OWN_SEEN, &own_top.to_be_bytes()[..])?;
            }
            drop(meta);
            let mut origins = txn.open_table(ORIGINS)?;
            let mut compacted_t = txn.open_table(COMPACTED)?;
            let mut changelog = txn.open_table(CHANGELOG)?;
            let mut chains = txn.open_table(CHAINS)?;
            let mut seals_t = txn.open_table(SEALS)?;
            let mut raised = false;
            for (origin, &seq) in have.into_iter().flatten() {
                let held = origins.get(origin.as_str())?.map_or(0, |g| g.value());
                if seq <= held {
                    continue;
                }
                // A revoked origin is not raised past its revocation point; the rest of the
                // snapshot stands (refusing it all would leave this node behind for good).
                if let Some(limit) = self.keys.as_ref().and_then(|k| k.vouches_up_to(origin))
                    && seq > limit
                {
                    continue;
                }
                let seal = sealed.and_then(|(seals, _)| {
                    seals.iter().find(|s| s.origin == *origin && s.seq == seq)
                });
                let chain = match (sealed, seal) {
                    (Some(_), None) => {
                        return Err(StoreError::SnapshotRefused(format!(
                            "it claims {origin} up to {seq} without {origin}'s seal there"
                        )));
                    }
                    (Some(_), Some(seal)) => {
                        if let Some(keys) = &self.keys {
                            keys.verify(origin, seq, &seal.message(), &seal.signature)
                                .map_err(|reason| {
                                    StoreError::SnapshotRefused(format!(
                                        "{origin}'s seal at {seq}: {reason}"
                                    ))
                                })?;
                        } else if origin.as_str() == self.node.as_str() {
                            return Err(StoreError::SnapshotRefused(format!(
                                "it reflects this node's events up to {seq}, but this node holds only {held} (and checks no signatures)"
                            )));
                        }
                        seals::put(&mut seals_t, seal)?;
                        seal.chain
                    }
                    (None, _) => {
                        if origin.as_str() == self.node.as_str() {
                            return Err(StoreError::SnapshotRefused(format!(
                                "it reflects this node's events up to {seq}, but this node holds only {held}"
                            )));
                        }
                        // Trusted (tests and tools): no chain is known past the snapshot; an
                        // unsigned seal keeps the head proven (nobody checks it).
                        let chain = [0; 32];
                        seals::put(
                            &mut seals_t,
                            &Seal {
                                origin: origin.clone(),
                                seq,
                                first: held + 1,
                                chain,
                                root: [0; 32],
                                signature: Vec::new(),
                            },
                        )?;
                        chain
                    }
                };
                chains.insert(origin.as_str(), seals::encode_head(seq, &chain).as_slice())?;
                let done = compacted_t.get(origin.as_str())?.map_or(0, |g| g.value());
                // The live versions among the events that leave keep their proofs.
                proofs::keep(
                    &mut proofs::Tables {
                        state: &state,
                        changelog: &changelog,
                        seals: &seals_t,
                        blocks: &mut blocks_t,
                    },
                    &self.limits(),
                    origin,
                    done + 1,
                    held,
                )?;
                remove_range(&mut changelog, origin.as_str(), done + 1, held)?;
                remove_range(&mut seals_t, origin.as_str(), done, held)?;
                origins.insert(origin.as_str(), seq)?;
                compacted_t.insert(origin.as_str(), seq)?;
                raised = true;
            }
            let wrote = changed > 0
                || replaced > 0
                || disagreements > 0
                || resolved_again > 0
                || raised
                || keys_restored
                || own_seen_raised;
            if wrote {
                seals::put_certs(&txn, sealed)?;
            }
            let held = read_map(&origins)?;
            let compacted = read_map(&compacted_t)?;
            let deltas = std::mem::take(&mut index.deltas);
            drop((
                origins,
                compacted_t,
                changelog,
                chains,
                seals_t,
                proofs_t,
                blocks_t,
                state,
                index,
            ));
            // Only floors raised here can cover more of the feed.
            if raised {
                crate::feed::trim(&mut txn, &compacted)?;
            }
            (
                Installed {
                    changed,
                    covered,
                    replaced,
                    disagreements,
                    resolved_again,
                    by_collection,
                    held,
                    compacted,
                    forks,
                    future_contexts,
                    left_out_of_damaged_rows,
                    feed_last,
                    wrote,
                },
                deltas,
                tally,
                keys_restored,
            )
        };
        if !out.wrote {
            txn.abort()?;
            return Ok(out);
        }
        txn.commit()?;
        if keys_restored {
            self.keys_restored
                .store(true, std::sync::atomic::Ordering::Release);
        }
        self.aae.apply(&deltas);
        self.add_conflicts(tally);
        Ok(out)
    }
}

impl Store {
    /// `versions` (with their `proofs`) less those of other origins that the state holds
    /// byte for byte: merging them again is a duplicate.
    fn without_held(
        &self,
        versions: Vec<EncodedEvent>,
        proofs: &[Proof],
    ) -> Result<(Vec<EncodedEvent>, Vec<Proof>), StoreError> {
        let txn = self.db.begin_read()?;
        let state = txn.open_table(STATE)?;
        let limits = self.limits();
        let mut kept = (Vec::with_capacity(versions.len()), Vec::new());
        for (v, p) in versions.into_iter().zip(proofs) {
            let held = v.origin != self.node
                && state
                    .get(state_key(&v.collection, &v.key).as_slice())?
                    .and_then(|row| Versions::decode(row.value(), &limits).ok())
                    .is_some_and(|held| {
                        held.events().iter().any(|h| {
                            h.origin == v.origin && h.seq == v.seq && h.bytes() == v.bytes()
                        })
                    });
            if !held {
                kept.0.push(v);
                kept.1.push(p.clone());
            }
        }
        Ok(kept)
    }

    /// Takes out of `proven` every version up to this node's have that its own history proves
    /// is not the event it holds there, and returns their (origin, seq). A version this node
    /// cannot prove either way (nothing of it kept, or damaged) stays.
    #[allow(clippy::type_complexity)]
    fn keep_held_history(
        &self,
        proven: &mut Vec<(EncodedEvent, Seal, Vec<edgerep_wire::seal::ChainHash>)>,
    ) -> Result<Vec<RepairFork>, StoreError> {
        let txn = self.db.begin_read()?;
        let origins = read_map(&txn.open_table(ORIGINS)?)?;
        let changelog = txn.open_table(CHANGELOG)?;
        let seals_t = txn.open_table(SEALS)?;
        let proofs_t = txn.open_table(PROOFS)?;
        let blocks_t = txn.open_table(BLOCKS)?;
        let mut ours = PageProofs::default();
        let mut forks = Vec::new();
        let mut kept = Vec::with_capacity(proven.len());
        for (event, seal, path) in proven.drain(..) {
            if origins.get(&event.origin).copied().unwrap_or(0) >= event.seq
                && let Some(held) = ours.holds_other(
                    &changelog,
                    &seals_t,
                    &proofs_t,
                    &blocks_t,
                    &self.limits(),
                    &event,
                )?
            {
                forks.push(RepairFork {
                    origin: event.origin.clone(),
                    seq: event.seq,
                    held: held.map(|h| crate::event_hash(h.bytes())),
                    received: crate::event_hash(event.bytes()),
                });
                continue;
            }
            kept.push((event, seal, path));
        }
        *proven = kept;
        Ok(forks)
    }
}
