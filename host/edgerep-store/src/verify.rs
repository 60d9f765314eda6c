//! The store's self-check: the digest recomputed, the feed and the changelog gapless, the chains
//! and seals consistent (see [`Store::verify`]).

use super::*;

/// The first stored event or state row that `limits` would not read, named with why: every
/// changelog event, every state row, and the original of every kept proof (what a store reads
/// and sends again later). `None` when all fit. Reads them all: run only to lower limits.
pub(crate) fn first_misfit(
    txn: &redb::WriteTransaction,
    limits: &EventLimits,
) -> Result<Option<String>, StoreError> {
    for row in txn.open_table(CHANGELOG)?.iter()? {
        let (k, v) = row?;
        if let Err(e) = EncodedEvent::decode_slice(v.value(), limits) {
            return Ok(Some(format!(
                "the changelog's event {} does not fit them ({e})",
                log_name(k.value())
            )));
        }
    }
    for row in txn.open_table(STATE)?.iter()? {
        let (k, v) = row?;
        // A row's versions, and the value a resolver merged them into (it may be larger than
        // any of them), as every read decodes them.
        let fits = resolution::split_row(v.value()).and_then(|split| {
            let versions = Versions::decode(split.versions, limits).map_err(|e| e.to_string())?;
            if let Some(r) = split.resolution {
                Resolution::decode(r, versions.events().len(), &limits.value)
                    .map_err(|e| format!("its resolution: {e}"))?;
            }
            Ok(())
        });
        if let Err(e) = fits {
            let (collection, key) = split_state_key(k.value()).unwrap_or(("?", &[]));
            return Ok(Some(format!(
                "the state's key {:?} of collection {collection:?} does not fit them ({e})",
                String::from_utf8_lossy(key)
            )));
        }
    }
    for row in txn.open_table(proofs::PROOFS)?.iter()? {
        let (k, v) = row?;
        let Some((origin, _)) = split_log_key(k.value()) else {
            continue;
        };
        if let Some(original) = proofs::Kept::decode(&origin, v.value())?.original
            && let Err(e) = EncodedEvent::decode_slice(&original, limits)
        {
            return Ok(Some(format!(
                "the event {} kept as received (before the transforms on apply) does not fit them ({e})",
                log_name(k.value())
            )));
        }
    }
    for row in txn.open_table(proofs::BLOCKS)?.iter()? {
        let (k, v) = row?;
        let Some((origin, seq)) = split_log_key(k.value()) else {
            continue;
        };
        for live in proofs::KeptBlock::decode(&origin, seq, v.value())?.live {
            if let Some(original) = live.original
                && let Err(e) = EncodedEvent::decode_slice(&original, limits)
            {
                return Ok(Some(format!(
                    "an event of {origin}'s block up to {seq}, kept as received (before the transforms on apply), does not fit them ({e})"
                )));
            }
        }
    }
    Ok(None)
}

/// (origin, seq) of a changelog-style key.
fn split_log_key(k: &[u8]) -> Option<(NodeId, u64)> {
    let at = k.iter().position(|&b| b == 0)?;
    let origin = std::str::from_utf8(&k[..at]).ok()?;
    Some((NodeId::parse(origin).ok()?, log_seq(origin, k)?))
}

/// `origin:seq` of a changelog key, for messages.
fn log_name(k: &[u8]) -> String {
    match k.iter().position(|&b| b == 0) {
        Some(at) => {
            let origin = String::from_utf8_lossy(&k[..at]);
            match log_seq(&origin, k) {
                Some(seq) => format!("{origin}:{seq}"),
                None => origin.into_owned(),
            }
        }
        None => String::from_utf8_lossy(k).into_owned(),
    }
}

impl Store {
    /// Recomputes the digest from the whole state table (to check the incremental one).
    pub fn recompute_digest(&self) -> Result<Digest, StoreError> {
        self.recompute_digest_in(&self.db.begin_read()?)
    }

    /// [`Store::recompute_digest`] as of the snapshot `txn` reads.
    pub(crate) fn recompute_digest_in(&self, txn: &ReadTransaction) -> Result<Digest, StoreError> {
        let state = txn.open_table(STATE)?;
        let mut digest = Digest::default();
        for row in state.iter()? {
            let (k, v) = row?;
            let (coll, key) = split_state_key(k.value())
                .ok_or_else(|| corrupt("state", "key without separator"))?;
            digest.add(self.rule.entry(coll, key, v.value(), &self.limits()));
        }
        Ok(digest)
    }

    /// Checks invariants across tables: the feed's runs are consecutive up to its last position
    /// (runs at or below the feed floor may be missing: compaction removed them),
    /// every feed entry above its origin's compacted floor names an event in the changelog,
    /// every origin's changelog holds exactly the events after its compacted floor up to its
    /// recorded highest sequence, and the incremental digest equals a full recomputation.
    /// Returns a description of the first violation found. Every check reads one snapshot, so
    /// commits running meanwhile cannot make a consistent store look inconsistent; it is taken
    /// once the check at open has finished, so bookkeeping that check is about to correct is not
    /// reported as a violation.
    pub fn verify(&self) -> Result<Result<(), String>, StoreError> {
        // A check that could not run leaves the bookkeeping as it was: verify reports on that.
        let _ = self.open_check();
        let txn = self.db.begin_read()?;
        let status = Store::status_in(&txn)?;
        let feed = txn.open_table(FEED)?;
        let feed_index = txn.open_table(crate::feed::FEED_BY_ORIGIN)?;
        let changelog = txn.open_table(CHANGELOG)?;
        let chains = txn.open_table(CHAINS)?;
        let seals_t = txn.open_table(SEALS)?;
        let compacted_of = |o: &str| status.compacted.get(o).copied().unwrap_or(0);
        // Positions up to the floor may be missing (compacted runs); above it none may be.
        let floor = status.feed_floor;
        let mut expected = 1;
        for row in feed.iter()? {
            let (start, run) = row?;
            let start = start.value();
            if start != expected && !(start > expected && start - 1 <= floor) {
                return Ok(Err(format!(
                    "feed gap: expected position {expected}, found {start} (floor {floor})"
                )));
            }
            let (origin, first_seq, count) = run.value();
            if feed_index.get((origin, first_seq))?.map(|g| g.value()) != Some(start) {
                return Ok(Err(format!(
                    "feed run at {start} ({origin}:{first_seq}) is not in the feed's index"
                )));
            }
            for seq in (compacted_of(origin) + 1).max(first_seq)..first_seq + count {
                if changelog.get(log_key(origin, seq).as_slice())?.is_none() {
                    return Ok(Err(format!(
                        "feed run at {start} names missing event {origin}:{seq}"
                    )));
                }
            }
            expected = start + count;
        }
        if expected - 1 != status.feed_last
            && !(expected - 1 < status.feed_last && status.feed_last <= floor)
        {
            return Ok(Err(format!(
                "feed ends at {} but meta says {}",
                expected - 1,
                status.feed_last
            )));
        }
        for (origin, &last) in &status.origins {
            let floor = compacted_of(origin.as_str());
            if floor > last {
                return Ok(Err(format!(
                    "{origin} compacted up to {floor} but held only up to {last}"
                )));
            }
            let mut want = floor + 1;
            let (from, to) = (
                log_key(origin.as_str(), 0),
                log_key(origin.as_str(), u64::MAX),
            );
            for row in changelog.range(from.as_slice()..=to.as_slice())? {
                let (k, _) = row?;
                let seq = log_seq(origin.as_str(), k.value())
                    .ok_or_else(|| corrupt("changelog", "key of another origin in range"))?;
                if seq != want {
                    return Ok(Err(format!(
                        "changelog gap for origin {origin}: expected {want}, found {seq}"
                    )));
                }
                want += 1;
            }
            if want - 1 != last {
                return Ok(Err(format!(
                    "changelog of {origin} ends at {} but origins says {last}",
                    want - 1
                )));
            }
            // The chain head is at the have, and a seal proves it (see `seals`).
            let (head, chain) = seals::head(&chains, origin)?;
            if last > 0 && head != last {
                return Ok(Err(format!(
                    "{origin}'s chain ends at {head} but its events at {last}"
                )));
            }
            if last > 0 {
                let seal = match seals_t.get(log_key(origin.as_str(), last).as_slice())? {
                    Some(g) => seals::decode(origin, last, g.value())?,
                    None => {
                        return Ok(Err(format!("no seal of {origin} at its have {last}")));
                    }
                };
                if seal.chain != chain {
                    return Ok(Err(format!(
                        "{origin}'s seal at {last} does not match its chain head"
                    )));
                }
            }
        }
        // Every version whose event left the changelog is proven by a kept proof or block.
        let state = txn.open_table(STATE)?;
        let proofs_t = txn.open_table(proofs::PROOFS)?;
        let blocks_t = txn.open_table(proofs::BLOCKS)?;
        let mut proven = proofs::PageProofs::default();
        for row in state.iter()? {
            let (k, v) = row?;
            let versions = match Versions::decode(v.value(), &self.limits()) {
                Ok(v) => v,
                Err(e) => {
                    return Ok(Err(format!(
                        "state entry {:?} cannot be read: {e}",
                        String::from_utf8_lossy(k.value())
                    )));
                }
            };
            for version in versions.events() {
                if version.seq > compacted_of(version.origin.as_str()) {
                    continue;
                }
                if !proven.proves(&proofs_t, &blocks_t, &self.limits(), version)? {
                    return Ok(Err(format!(
                        "version {}:{} is compacted and nothing here proves it",
                        version.origin, version.seq
                    )));
                }
            }
        }
        let full = self.recompute_digest_in(&txn)?;
        if full != status.digest {
            return Ok(Err(format!(
                "incremental digest {} differs from recomputed {}",
                status.digest.to_hex(),
                full.to_hex()
            )));
        }
        Ok(Ok(()))
    }
}
