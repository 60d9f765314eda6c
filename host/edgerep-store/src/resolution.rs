//! Resolutions kept in the state: what a key holding concurrent versions resolves to, decided
//! once, when its versions change, and stored after them in the key's state row.
//!
//! A state row is the key's versions (see `versions`), then, for a key with concurrent versions
//! in a collection whose resolver is a plugin, one resolution record. The state digest and the
//! anti-entropy fingerprints hash the whole row, so two nodes that hold the same versions but
//! resolved them differently (a resolver that is not deterministic, different builds, a
//! deadline hit on one node only) differ, and anti-entropy finds them. Reads serve the stored
//! resolution: a read never runs a plugin whose answer the other nodes did not also reach.
//!
//! Invariant: a record is only ever computed from the row's versions, by the collection's
//! resolver or by the deterministic default ([`Resolution::default_of`]) after a disagreement;
//! versions changing drop it and a new one is computed in the same transaction.

use edgerep_wire::aae::KeyResolution;
use edgerep_wire::cbor::{CborError, Reader};
use edgerep_wire::value::DecodeLimits;
use edgerep_wire::{NodeId, Value};
use minicbor::data::Type;
use minicbor::{Decoder, Encoder};
use redb::{ReadableTable, Table};

use crate::keys::split_state_key;
use crate::{Digest, StoreError, Versions, aae, corrupt, write_row};

/// Disagreement records kept, the newest: nodes that keep disagreeing (two resolver builds
/// during a rolling upgrade, say) would otherwise add records at every session for ever.
pub(crate) const DISAGREEMENTS_KEPT: u64 = 100_000;

/// What [`Resolution::by`] says after two nodes disagreed: the last-writer-wins version, the
/// deterministic default every node computes alike.
pub const BY_DEFAULT_AFTER_DISAGREEMENT: &str = "lww-after-disagreement";

/// [`Resolution::by`] of a key whose versions' time falls in an epoch without a plugin: plain
/// last-writer-wins, read from the versions, so no record is kept (as a node that has no
/// plugin for the collection at all keeps none: the rows, and so the digests, agree while an
/// upgrade that adds a resolver rolls out).
pub const BY_LWW: &str = "lww";

/// What [`Resolution::by`] starts with when the collection's plugin decided.
pub const BY_PLUGIN: &str = "plugin:";
/// What [`Resolution::by`] starts with when the collection's plugin failed (a deadline, a
/// trap) and last-writer-wins stood in for it.
pub const BY_FALLBACK: &str = "lww-fallback:";

/// What a build named in a repair's resolutions ends with while its collection is being
/// resolved again (see [`settle`]).
pub(crate) const RE_RESOLVING: &str = "(re-resolving)";

/// Most keys one [`settle`] resolves again, and about the most time it spends doing so
/// (plugins run on the committer, and a peer's repair decides which keys): the rest are left
/// as they are, for a later session. Which keys run now is local scheduling, not state: a key
/// left out is neither resolved again nor moved to the default.
const RESOLVED_AGAIN_MAX: u64 = 256;
const RESOLVED_AGAIN_TIME: std::time::Duration = std::time::Duration::from_millis(250);

/// The value a key with concurrent versions resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// Who decided it: `plugin:NAME`, `lww-fallback:NAME` (the plugin failed),
    /// [`BY_DEFAULT_AFTER_DISAGREEMENT`].
    pub by: String,
    /// The resolved value (`None`: the key reads as deleted).
    pub value: Option<Value>,
    /// The version picked, as an index into the versions (`None`: a merged value).
    pub winner: Option<usize>,
}

impl Resolution {
    /// The last-writer-wins version of `versions`, decided `by`.
    pub fn lww(versions: &Versions, by: String) -> Resolution {
        Resolution {
            by,
            value: versions.lww_value().cloned(),
            winner: versions.lww_index(),
        }
    }

    /// What a failure of plugin `plugin` leaves: last-writer-wins, said to stand in for it.
    pub fn fallback(versions: &Versions, plugin: &str) -> Resolution {
        Resolution::lww(versions, format!("{BY_FALLBACK}{plugin}"))
    }

    /// Whether last-writer-wins stood in for a plugin that failed.
    pub fn is_fallback(&self) -> bool {
        self.by.starts_with(BY_FALLBACK)
    }

    /// The plugin that decided, or that failed and was stood in for.
    fn plugin(&self) -> Option<&str> {
        self.by
            .strip_prefix(BY_PLUGIN)
            .or_else(|| self.by.strip_prefix(BY_FALLBACK))
    }

    /// The deterministic default over `versions` after a disagreement: last-writer-wins.
    pub fn default_of(versions: &Versions) -> Resolution {
        Resolution::lww(versions, BY_DEFAULT_AFTER_DISAGREEMENT.into())
    }

    /// `[by, value bytes or null, winner or null]`, canonical CBOR.
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        let mut e = Encoder::new(&mut buf);
        // Writing into a Vec cannot fail.
        let _ = e.array(3).and_then(|e| e.str(&self.by));
        let _ = match &self.value {
            Some(v) => e.bytes(v.as_bytes()),
            None => e.null(),
        };
        let _ = match self.winner {
            Some(i) => e.u64(i as u64),
            None => e.null(),
        };
        buf
    }

    /// Decodes what [`Resolution::encode`] wrote; `versions` is how many versions the row
    /// holds (a winner must name one of them).
    pub fn decode(
        bytes: &[u8],
        versions: usize,
        limits: &DecodeLimits,
    ) -> Result<Resolution, String> {
        let mut d = Decoder::new(bytes);
        let bad = |e: minicbor::decode::Error| format!("resolution record: {e}");
        if d.array().map_err(bad)? != Some(3) {
            return Err("resolution record: expected an array of 3".into());
        }
        let by = d.str().map_err(bad)?.to_owned();
        let value = if d.datatype().map_err(bad)? == Type::Null {
            d.skip().map_err(bad)?;
            None
        } else {
            let raw = d.bytes().map_err(bad)?.to_vec();
            Some(Value::from_canonical(raw, limits).map_err(|e| format!("resolution value: {e}"))?)
        };
        let winner = if d.datatype().map_err(bad)? == Type::Null {
            d.skip().map_err(bad)?;
            None
        } else {
            let i = d.u64().map_err(bad)?;
            if i >= versions as u64 {
                return Err(format!(
                    "resolution record: winner {i} of {versions} versions"
                ));
            }
            Some(i as usize)
        };
        if d.position() != bytes.len() {
            return Err("resolution record: trailing bytes".into());
        }
        Ok(Resolution { by, value, winner })
    }
}

/// Decides resolutions for the store (the node's pipeline of resolver plugins).
pub trait Resolver: Send + Sync {
    /// Whether keys of `collection` with concurrent versions keep a resolution (its resolver is
    /// a plugin; last-writer-wins needs none, it is read from the versions).
    fn resolves(&self, collection: &str) -> bool;
    /// Resolves `versions` (at least two) of `key`. Must depend on nothing but its arguments
    /// and the configured plugin: every node computes it for itself.
    fn resolve(&self, collection: &str, key: &[u8], versions: &Versions) -> Resolution;
    /// [`Resolver::resolve`] once more where it failed here before (anti-entropy found a
    /// peer's resolution differs): tried now (with the deadline's retries), whatever holds
    /// the plugin back after earlier failures, so that every try ends in an answer or a
    /// failure (never "later", which a plugin failing for good on this node would make
    /// "never").
    fn resolve_again(&self, collection: &str, key: &[u8], versions: &Versions) -> Resolution {
        self.resolve(collection, key, versions)
    }
    /// The SHA-256 of the build that resolves `collection` (named in disagreement records).
    fn build(&self, collection: &str) -> String;
}

/// A state row split into its versions and its resolution record.
pub(crate) struct Row<'a> {
    /// The encoded versions.
    pub(crate) versions: &'a [u8],
    /// The resolution record, if the row holds one.
    pub(crate) resolution: Option<&'a [u8]>,
}

/// Splits a state row (see the module comment).
pub(crate) fn split_row(row: &[u8]) -> Result<Row<'_>, String> {
    let mut d = Decoder::new(row);
    let n = d
        .array()
        .map_err(|e| format!("versions: {e}"))?
        .ok_or("versions: indefinite length")?;
    for _ in 0..n {
        d.bytes().map_err(|e| format!("versions: {e}"))?;
    }
    let end = d.position();
    Ok(Row {
        versions: &row[..end],
        resolution: (end < row.len()).then(|| &row[end..]),
    })
}

/// A row from its encoded versions and resolution record.
pub(crate) fn join_row(versions: &[u8], resolution: Option<&Resolution>) -> Vec<u8> {
    match resolution {
        None => versions.to_vec(),
        Some(r) if r.by == BY_LWW => versions.to_vec(),
        Some(r) => {
            let mut out = versions.to_vec();
            out.extend_from_slice(&r.encode());
            out
        }
    }
}

/// The hash a peer is told of a row's versions (to know whether both hold the same) and of
/// its resolution (absent: all zeros).
pub(crate) fn hash_of(bytes: Option<&[u8]>) -> [u8; 32] {
    bytes.map_or([0; 32], |b| *blake3::hash(b).as_bytes())
}

/// A key whose resolution differed from a peer's over the same versions (kept in the
/// `disagreements` table; both nodes then hold the deterministic default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disagreement {
    /// The collection.
    pub collection: String,
    /// The key.
    pub key: Vec<u8>,
    /// The peer whose resolution differed.
    pub peer: String,
    /// BLAKE3 of the versions both held (hex).
    pub versions: String,
    /// Who resolved the key here, and BLAKE3 of the record (hex).
    pub here_by: String,
    /// BLAKE3 of this node's resolution record (hex).
    pub here_resolution: String,
    /// SHA-256 of this node's resolver build.
    pub here_build: String,
    /// BLAKE3 of the peer's resolution record (hex).
    pub peer_resolution: String,
    /// SHA-256 of the peer's resolver build.
    pub peer_build: String,
    /// When this node found it (ms since the Unix epoch; local information, never compared).
    pub at_ms: u64,
}

const DISAGREEMENT_FIELDS: u64 = 10;

impl Disagreement {
    /// A CBOR array of the fields in declaration order.
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        let mut e = Encoder::new(&mut buf);
        // Writing into a Vec cannot fail.
        let _ = e
            .array(DISAGREEMENT_FIELDS)
            .and_then(|e| e.str(&self.collection))
            .and_then(|e| e.bytes(&self.key))
            .and_then(|e| e.str(&self.peer))
            .and_then(|e| e.str(&self.versions))
            .and_then(|e| e.str(&self.here_by))
            .and_then(|e| e.str(&self.here_resolution))
            .and_then(|e| e.str(&self.here_build))
            .and_then(|e| e.str(&self.peer_resolution))
            .and_then(|e| e.str(&self.peer_build))
            .and_then(|e| e.u64(self.at_ms));
        buf
    }

    /// Decodes what [`Disagreement::encode`] wrote (with the strict reader).
    pub fn decode(bytes: &[u8]) -> Result<Disagreement, CborError> {
        let mut r = Reader::new(bytes);
        r.array_of(DISAGREEMENT_FIELDS, "disagreement record")?;
        let collection = r.str("disagreement collection")?.to_owned();
        let key = r.bytes("disagreement key")?.to_vec();
        let mut s = |what| r.str(what).map(str::to_owned);
        let d = Disagreement {
            collection,
            key,
            peer: s("disagreement peer")?,
            versions: s("disagreement versions")?,
            here_by: s("disagreement resolver here")?,
            here_resolution: s("disagreement resolution here")?,
            here_build: s("disagreement build here")?,
            peer_resolution: s("disagreement resolution at the peer")?,
            peer_build: s("disagreement build at the peer")?,
            at_ms: r.u64("disagreement time")?,
        };
        r.finish()?;
        Ok(d)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The tables [`settle`] writes.
pub(crate) struct SettleTables<'a, 't> {
    pub(crate) state: &'a mut Table<'t, &'static [u8], &'static [u8]>,
    pub(crate) disagreements: &'a mut Table<'t, u64, &'static [u8]>,
    pub(crate) index: &'a mut aae::Writes,
    pub(crate) digest: &'a mut Digest,
}

/// What [`settle`] changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Settled {
    /// Keys moved to the deterministic default after a disagreement.
    pub(crate) moved: u64,
    /// Keys whose plugin had failed here and decided when run again.
    pub(crate) resolved_again: u64,
}

/// Compares a peer's resolutions with this node's: where both hold the same versions of a key
/// but resolved them differently, records the disagreement and gives the key the
/// deterministic default here (the peer does the same when it gets this node's resolution).
/// What the peer says is checked against this node's own state only: a key it names that
/// this node does not hold alike is left alone.
///
/// A plugin failure on one node (a deadline hit under load) is not a disagreement of
/// resolvers: where the record here is the stand-in for a failed plugin, the plugin runs
/// again first, and its answer replaces the stand-in (and ends the matter if the peer's is
/// the same); where the peer's record is exactly the stand-in this node would write for its
/// own plugin, this node keeps its plugin's answer: the peer runs its plugin again when it
/// gets it. Only a failure that persists, or resolvers that answer differently, end on the
/// default (the peer's stand-in then turns into the default at its end, which this node
/// follows at the next session). Nothing the peer says is taken as a value: only which of
/// this node's own answers to keep.
pub(crate) fn settle(
    t: &mut SettleTables<'_, '_>,
    store: &crate::Store,
    resolver: &dyn Resolver,
    theirs: &[KeyResolution],
    peer: &NodeId,
    by_collection: &mut std::collections::BTreeMap<String, crate::retention::CollectionCounts>,
) -> Result<Settled, StoreError> {
    let limits = &store.limits();
    let rule = &store.rule;
    let mut out = Settled::default();
    let mut ran = 0;
    let started = std::time::Instant::now();
    for their in theirs {
        let Some((collection, key)) = split_state_key(&their.state_key) else {
            continue;
        };
        if !resolver.resolves(collection) {
            continue;
        }
        // Resolvers that are not the same build on both sides (an upgrade one of them has not
        // taken yet), or keys one side is still resolving again after an upgrade: their
        // answers may differ for now, and settling would move the key to the default on every
        // node for good. Left for a later session, once both resolve alike.
        if their.build != resolver.build(collection) || store.is_re_resolving(collection) {
            continue;
        }
        let Some(row) = t
            .state
            .get(their.state_key.as_slice())?
            .map(|g| g.value().to_vec())
        else {
            continue;
        };
        let Ok(split) = split_row(&row) else {
            continue;
        };
        let Some(stored) = split.resolution else {
            continue;
        };
        let versions_hash = hash_of(Some(split.versions));
        if versions_hash != their.versions || hash_of(Some(stored)) == their.resolution {
            continue;
        }
        let versions = Versions::decode(split.versions, limits).map_err(|e| corrupt("state", e))?;
        // Writes `new` over the key's row `old`, the digest and sums kept in step.
        let replace = |t: &mut SettleTables<'_, '_>, old: &[u8], new: &[u8]| {
            let hash = |r: &[u8]| rule.entry(collection, key, r, limits);
            write_row(
                t.state,
                t.index,
                t.digest,
                &their.state_key,
                (hash(old), hash(new)),
                new,
            )
        };
        // The row as it stands, once the plugin's answer replaced the stand-in.
        let mut rewritten: Option<Vec<u8>> = None;
        let mut ours = stored.to_vec();
        let mut here = Resolution::decode(&ours, versions.events().len(), &limits.value);
        let default = Resolution::default_of(&versions).encode();
        // A peer on the default (or keeping no record) settles this key on the default
        // whatever the plugin says now: not run again for it.
        let theirs_is_default =
            their.resolution == hash_of(Some(&default)) || their.resolution == hash_of(None);
        if !theirs_is_default && here.as_ref().is_ok_and(Resolution::is_fallback) {
            if ran == RESOLVED_AGAIN_MAX || started.elapsed() >= RESOLVED_AGAIN_TIME {
                continue;
            }
            ran += 1;
            let again = resolver.resolve_again(collection, key, &versions);
            if !again.is_fallback() {
                let encoded = again.encode();
                let new_row = join_row(split.versions, Some(&again));
                replace(t, &row, &new_row)?;
                out.resolved_again += 1;
                by_collection
                    .entry(collection.to_owned())
                    .or_default()
                    .resolved_again += 1;
                rewritten = Some(new_row);
                ours = encoded;
                here = Ok(again);
                if hash_of(Some(&ours)) == their.resolution {
                    continue;
                }
            }
        }
        if let Ok(r) = &here
            && !r.is_fallback()
            && let Some(plugin) = r.plugin()
            && their.resolution == hash_of(Some(&Resolution::fallback(&versions, plugin).encode()))
        {
            // The peer's plugin failed where this node's answered: the peer runs it again
            // when it gets this node's resolution.
            continue;
        }
        if default == ours {
            // Already the default here: the peer moves when it gets this node's resolution.
            continue;
        }
        let our_hash = hash_of(Some(&ours));
        let here_by = here.map_or_else(|e| format!("unreadable ({e})"), |r| r.by);
        let record = Disagreement {
            collection: collection.to_owned(),
            key: key.to_vec(),
            peer: peer.to_string(),
            versions: hex(&versions_hash),
            here_by,
            here_resolution: hex(&our_hash),
            here_build: resolver.build(collection),
            peer_resolution: hex(&their.resolution),
            peer_build: their.build.clone(),
            at_ms: crate::wall_ms(),
        };
        let id = t.disagreements.last()?.map_or(1, |(k, _)| k.value() + 1);
        t.disagreements.insert(id, record.encode().as_slice())?;
        // Ids run on without gaps: the one this many before goes (the oldest kept).
        if let Some(old) = id.checked_sub(DISAGREEMENTS_KEPT) {
            t.disagreements.remove(old)?;
        }
        let mut new_row = split.versions.to_vec();
        new_row.extend_from_slice(&default);
        replace(t, rewritten.as_deref().unwrap_or(&row), &new_row)?;
        out.moved += 1;
        by_collection
            .entry(collection.to_owned())
            .or_default()
            .disagreements += 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_rows_split() {
        let limits = DecodeLimits::default();
        let v = Value::from_json_str("{\"n\":3}", &limits).unwrap();
        let r = Resolution {
            by: "plugin:merge".into(),
            value: Some(v),
            winner: None,
        };
        assert_eq!(Resolution::decode(&r.encode(), 2, &limits).unwrap(), r);
        let picked = Resolution {
            by: "plugin:pick".into(),
            value: None,
            winner: Some(1),
        };
        assert_eq!(
            Resolution::decode(&picked.encode(), 2, &limits).unwrap(),
            picked
        );
        assert!(
            Resolution::decode(&picked.encode(), 1, &limits).is_err(),
            "winner out of range"
        );
        let mut trailing = picked.encode();
        trailing.push(0);
        assert!(Resolution::decode(&trailing, 2, &limits).is_err());

        let versions = Versions::new().encode();
        let row = join_row(&versions, Some(&r));
        let split = split_row(&row).unwrap();
        assert_eq!(split.versions, versions.as_slice());
        assert_eq!(split.resolution, Some(r.encode().as_slice()));
        assert!(split_row(&versions).unwrap().resolution.is_none());
    }
}
