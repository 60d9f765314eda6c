//! Reads: keys, scans, the feed, the changelog, seals and certificates, status, dead letters.
//! Each read is one redb read transaction (a consistent snapshot).

use super::*;

/// Most rows one scan page reads per entry asked for (see [`Store::scan`]).
pub const SCAN_ROWS_PER_ENTRY: usize = 16;

/// Stored bytes past which a scan or changelog page ends early, after its first entry (see
/// [`Store::scan`], [`Store::changelog_page`]): a page of 10,000 values of 64 KiB, each shown as
/// a JSON tree, would otherwise take gigabytes.
pub const PAGE_BYTES: usize = 1 << 20;

/// A version [`Store::version_from`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundVersion {
    /// Its origin.
    pub origin: NodeId,
    /// Its sequence number.
    pub seq: u64,
    /// Its hybrid-clock physical time, ms since the Unix epoch.
    pub at_ms: u64,
    /// The key it is a version of.
    pub key: Vec<u8>,
}

impl Store {
    /// What the idempotency key `key` was recorded with, if it is held within the window (by
    /// this node's wall clock now; see [`idempotency::Window`]).
    pub fn idempotency(&self, key: &str) -> Result<Option<idempotency::Recorded>, StoreError> {
        self.idempotency_at(key, crate::wall_ms())
    }

    /// [`Store::idempotency`] as of the wall clock at `wall_ms`.
    pub fn idempotency_at(
        &self,
        key: &str,
        wall_ms: u64,
    ) -> Result<Option<idempotency::Recorded>, StoreError> {
        // A new key (the common case) is answered by the index alone, without a read
        // transaction.
        if !self.idempotency_index.contains(key) {
            return Ok(None);
        }
        let txn = self.db.begin_read()?;
        self.idempotency_index.get(
            &txn.open_table(idempotency::IDEMPOTENCY)?,
            &txn.open_table(crate::tables::META)?,
            key,
            self.idempotency_window,
            wall_ms,
        )
    }

    /// When `key` has no record: whether a write sent with it came back from the peers after a
    /// restore from a backup lost its record, within the window: by this node's wall clock now,
    /// or for the whole first window this store is open (a restored box may boot with its clock
    /// ahead, or have it stepped forward: by the wall clock alone the key would expire early,
    /// and a retry write again). Its sequence number and time (ms). Such a key must not write
    /// again.
    pub fn restored_key(&self, key: &str) -> Result<Option<(u64, u64)>, StoreError> {
        if !self
            .keys_restored
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return Ok(None);
        }
        let txn = self.db.begin_read()?;
        let table = txn.open_table(idempotency::RESTORED)?;
        let found = table
            .get(idempotency::digest(key).as_slice())?
            .map(|g| g.value());
        let window = self.idempotency_window;
        let first_window = self.opened.elapsed() < std::time::Duration::from_millis(window.keep_ms);
        Ok(found.filter(|&(_, at_ms)| first_window || window.covers(at_ms, crate::wall_ms())))
    }

    /// `records` under dead-letter ids reserved for them: a request's dead letters are named
    /// in its answer and committed with its writes (see
    /// [`crate::StoreWriter::commit_local_setting_aside`]).
    pub fn set_aside(&self, records: Vec<Vec<u8>>) -> crate::SetAside {
        self.dead_letter_ids.reserve(records)
    }

    /// How many idempotency keys are held.
    pub fn idempotency_count(&self) -> Result<u64, StoreError> {
        Ok(self.idempotency_index.len())
    }

    /// Idempotency records dropped since open because the key count reached its bound while
    /// they were still inside the window's time: a retry of one of them commits again.
    pub fn idempotency_dropped_early(&self) -> u64 {
        self.idempotency_index.dropped_early()
    }

    /// The seals of `origin` after `after` up to `upto`, in order.
    pub fn seals(&self, origin: &NodeId, after: u64, upto: u64) -> Result<Vec<Seal>, StoreError> {
        if after >= upto {
            return Ok(Vec::new());
        }
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SEALS)?;
        let (lo, hi) = (
            log_key(origin.as_str(), after + 1),
            log_key(origin.as_str(), upto),
        );
        let mut out = Vec::new();
        for row in table.range(lo.as_slice()..=hi.as_slice())? {
            let (k, v) = row?;
            let seq = log_seq(origin.as_str(), k.value())
                .ok_or_else(|| corrupt("seals", "a key of another origin in range"))?;
            out.push(seals::decode(origin, seq, v.value())?);
        }
        Ok(out)
    }

    /// The first seal of `origin` after `after`, if any.
    pub fn next_seal(&self, origin: &NodeId, after: u64) -> Result<Option<Seal>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SEALS)?;
        let (lo, hi) = (
            log_key(origin.as_str(), after.saturating_add(1)),
            log_key(origin.as_str(), u64::MAX),
        );
        let mut rows = table.range(lo.as_slice()..=hi.as_slice())?;
        match rows.next() {
            Some(row) => {
                let (k, v) = row?;
                let seq = log_seq(origin.as_str(), k.value())
                    .ok_or_else(|| corrupt("seals", "a key of another origin in range"))?;
                Ok(Some(seals::decode(origin, seq, v.value())?))
            }
            None => Ok(None),
        }
    }

    /// The last seal of `origin` that is signed (seals made while the node ran without keys
    /// are not), if any.
    pub fn last_signed_seal(&self, origin: &NodeId) -> Result<Option<Seal>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SEALS)?;
        let (lo, hi) = (
            log_key(origin.as_str(), 0),
            log_key(origin.as_str(), u64::MAX),
        );
        for row in table.range(lo.as_slice()..=hi.as_slice())?.rev() {
            let (k, v) = row?;
            let seq = log_seq(origin.as_str(), k.value())
                .ok_or_else(|| corrupt("seals", "a key of another origin in range"))?;
            let seal = seals::decode(origin, seq, v.value())?;
            if !seal.signature.is_empty() {
                return Ok(Some(seal));
            }
        }
        Ok(None)
    }

    /// The certificates (DER) of `origin` this store learnt from peers: the first stored, then
    /// the others (see [`seals::CERTS_MORE`]).
    pub fn certs_of(&self, origin: &NodeId) -> Result<Vec<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read()?;
        let Some(first) = txn
            .open_table(CERTS)?
            .get(origin.as_str())?
            .map(|g| g.value().to_vec())
        else {
            return Ok(Vec::new());
        };
        let mut out = vec![first];
        let origin = origin.as_str();
        for row in txn
            .open_table(seals::CERTS_MORE)?
            .range((origin, &[][..])..)?
        {
            let (k, v) = row?;
            if k.value().0 != origin {
                break;
            }
            out.push(v.value().to_vec());
        }
        Ok(out)
    }

    /// How many origins this store holds events of (this node's own among them).
    pub fn origins_held(&self) -> Result<usize, StoreError> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(ORIGINS)?.len()? as usize)
    }

    /// Every certificate this store learnt from peers, by origin (each origin's first stored
    /// before its others).
    pub fn certs(&self) -> Result<Vec<(NodeId, Vec<u8>)>, StoreError> {
        let txn = self.db.begin_read()?;
        let mut out = Vec::new();
        for row in txn.open_table(CERTS)?.iter()? {
            let (k, v) = row?;
            let origin = NodeId::parse(k.value()).map_err(|e| corrupt("certs", e))?;
            out.push((origin, v.value().to_vec()));
        }
        for row in txn.open_table(seals::CERTS_MORE)?.iter()? {
            let (k, v) = row?;
            let origin = NodeId::parse(k.value().0).map_err(|e| corrupt("certs_more", e))?;
            out.push((origin, v.value().to_vec()));
        }
        Ok(out)
    }

    /// When each peer was last heard from, or since when a peer never heard from was awaited,
    /// as saved (see [`StoreWriter::save_peers_heard`]).
    pub fn peers_heard(&self) -> Result<BTreeMap<NodeId, crate::Heard>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(PEERS_HEARD)?;
        let mut out = BTreeMap::new();
        for row in table.iter()? {
            let (k, v) = row?;
            out.insert(parse_origin(k.value())?, crate::Heard::decode(v.value()));
        }
        Ok(out)
    }

    /// When each peer's acknowledgements last moved, as saved (see
    /// [`StoreWriter::save_peers_heard`]).
    pub fn peers_progress(&self) -> Result<BTreeMap<NodeId, u64>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(PEERS_PROGRESS)?;
        let mut out = BTreeMap::new();
        for row in table.iter()? {
            let (k, v) = row?;
            out.insert(parse_origin(k.value())?, v.value());
        }
        Ok(out)
    }

    /// Every peer's saved cursor (see [`StoreWriter::save_peer_cursor`]).
    pub fn peer_cursors(&self) -> Result<BTreeMap<NodeId, Have>, StoreError> {
        let txn = self.db.begin_read()?;
        let peers = txn.open_table(PEERS)?;
        let mut out = BTreeMap::new();
        for row in peers.iter()? {
            let (k, v) = row?;
            let mut d = minicbor::Decoder::new(v.value());
            let n = d
                .map()
                .map_err(|e| corrupt("peers", e))?
                .ok_or_else(|| corrupt("peers", "indefinite map"))?;
            let mut have = Have::new();
            for _ in 0..n {
                let origin = parse_origin(d.str().map_err(|e| corrupt("peers", e))?)?;
                let seq = d.u64().map_err(|e| corrupt("peers", e))?;
                have.insert(origin, seq);
            }
            out.insert(parse_origin(k.value())?, have);
        }
        Ok(out)
    }

    /// The versions of one key and its kept resolution, if any (see `resolution.rs`).
    pub fn get_resolved(
        &self,
        collection: &str,
        key: &[u8],
    ) -> Result<(Versions, Option<Resolution>), StoreError> {
        let txn = self.db.begin_read()?;
        let state = txn.open_table(STATE)?;
        match state.get(state_key(collection, key).as_slice())? {
            Some(g) => self
                .decode_row(g.value())
                .map_err(|e| unreadable(collection, key, e)),
            None => Ok((Versions::new(), None)),
        }
    }

    /// A state row's versions and resolution.
    pub(crate) fn decode_row(
        &self,
        row: &[u8],
    ) -> Result<(Versions, Option<Resolution>), StoreError> {
        let split = resolution::split_row(row).map_err(|e| corrupt("state", e))?;
        let versions =
            Versions::decode(split.versions, &self.limits()).map_err(|e| corrupt("state", e))?;
        let resolution = split
            .resolution
            .map(|r| Resolution::decode(r, versions.events().len(), &self.limits().value))
            .transpose()
            .map_err(|e| corrupt("state", e))?;
        Ok((versions, resolution))
    }

    /// The versions of one key (empty if the key was never written).
    pub fn get(&self, collection: &str, key: &[u8]) -> Result<Versions, StoreError> {
        let txn = self.db.begin_read()?;
        let state = txn.open_table(STATE)?;
        match state.get(state_key(collection, key).as_slice())? {
            Some(g) => Versions::decode(g.value(), &self.limits())
                .map_err(|e| unreadable(collection, key, corrupt("state", e))),
            None => Ok(Versions::new()),
        }
    }

    /// The record of what decided each collection, as the node last saved it
    /// ([`crate::StoreWriter::record_deciders`]).
    pub fn recorded_deciders(&self) -> Result<Option<String>, StoreError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        let Some(g) = meta.get(META_DECIDERS)? else {
            return Ok(None);
        };
        String::from_utf8(g.value().to_vec())
            .map(Some)
            .map_err(|e| corrupt("meta", e))
    }

    /// The collections the state holds keys of (deleted ones included), in order: one seek
    /// per collection, not a scan of their keys. At most `limit` of them.
    pub fn collections_held(&self, limit: usize) -> Result<Vec<String>, StoreError> {
        let txn = self.db.begin_read()?;
        let state = txn.open_table(STATE)?;
        let mut out = Vec::new();
        let mut from = Vec::new();
        while out.len() < limit {
            let Some(row) = state.range(from.as_slice()..)?.next() else {
                break;
            };
            let (k, _) = row?;
            let (collection, _) = split_state_key(k.value())
                .ok_or_else(|| corrupt("state", "a key without a collection"))?;
            // Every key of `collection` is `collection`, 0, key: the next collection's keys
            // come at or after `collection`, 1.
            from = collection.as_bytes().to_vec();
            from.push(1);
            out.push(collection.to_owned());
        }
        Ok(out)
    }

    /// Whether the state holds any key of `collection` (deleted ones included).
    pub fn holds_collection(&self, collection: &str) -> Result<bool, StoreError> {
        let txn = self.db.begin_read()?;
        let state = txn.open_table(STATE)?;
        let first = state_key(collection, b"");
        let Some(row) = state.range(first.as_slice()..)?.next() else {
            return Ok(false);
        };
        let (k, _) = row?;
        Ok(k.value().starts_with(&first))
    }

    /// The newest version of another origin than this node in `collection`'s state stamped at
    /// or after `from_ms` (hybrid-clock physical time), if there is one. A scan of the
    /// collection's rows (for a reload that brings an upgrade, not for the write path).
    pub fn version_from(
        &self,
        collection: &str,
        from_ms: u64,
    ) -> Result<Option<FoundVersion>, StoreError> {
        let mut newest: Option<FoundVersion> = None;
        let txn = self.db.begin_read()?;
        let state = txn.open_table(STATE)?;
        let prefix = state_key(collection, b"");
        for row in state.range(prefix.as_slice()..)? {
            let (k, v) = row?;
            if !k.value().starts_with(&prefix) {
                break;
            }
            let split = resolution::split_row(v.value()).map_err(|e| corrupt("state", e))?;
            let versions = Versions::decode(split.versions, &self.limits())
                .map_err(|e| corrupt("state", e))?;
            for e in versions.events() {
                let at = e.hlc.physical_ms;
                if at >= from_ms
                    && e.origin != self.node
                    && newest.as_ref().is_none_or(|n| at > n.at_ms)
                {
                    newest = Some(FoundVersion {
                        origin: e.origin.clone(),
                        seq: e.seq,
                        at_ms: at,
                        key: e.key.clone(),
                    });
                }
            }
        }
        Ok(newest)
    }

    /// One page of the live keys of a collection, in key order. A page reads at most
    /// [`SCAN_ROWS_PER_ENTRY`] rows per entry asked for (deleted keys are rows too), and holds
    /// at most [`PAGE_BYTES`] of stored rows after its first entry: past either it ends early,
    /// with fewer entries (maybe none) and `next` set, so a collection of millions of deletions
    /// or of large values is not read whole for one page.
    pub fn scan(
        &self,
        collection: &str,
        range: &ScanRange,
        limit: usize,
    ) -> Result<ScanPage, StoreError> {
        assert!(limit > 0, "a scan page holds at least one key");
        let txn = self.db.begin_read()?;
        let state = txn.open_table(STATE)?;
        let mut lower: Vec<u8> = range.prefix.clone();
        if let Some(start) = &range.start {
            lower = lower.max(start.clone());
        }
        let (lower_key, skip_equal) = match &range.after {
            Some(after) if *after >= lower => (state_key(collection, after), true),
            _ => (state_key(collection, &lower), false),
        };
        let mut entries = Vec::new();
        let mut resolutions = BTreeMap::new();
        let mut last_seen = None;
        let mut rows_left = limit.saturating_mul(SCAN_ROWS_PER_ENTRY);
        let mut bytes = 0usize;
        for row in state.range(lower_key.as_slice()..)? {
            let (k, v) = row?;
            if skip_equal && k.value() == lower_key.as_slice() {
                continue;
            }
            let Some((coll, key)) = split_state_key(k.value()) else {
                return Err(corrupt("state", "key without separator"));
            };
            if coll != collection || !key.starts_with(&range.prefix) {
                return Ok(ScanPage {
                    entries,
                    resolutions,
                    next: None,
                });
            }
            if range.end.as_deref().is_some_and(|end| key >= end) {
                return Ok(ScanPage {
                    entries,
                    resolutions,
                    next: None,
                });
            }
            if entries.len() == limit || rows_left == 0 || bytes >= PAGE_BYTES {
                return Ok(ScanPage {
                    entries,
                    resolutions,
                    next: last_seen,
                });
            }
            rows_left -= 1;
            last_seen = Some(key.to_vec());
            // A row that cannot be read fails the page naming its key (a client may go on
            // after it).
            let (versions, resolution) = self
                .decode_row(v.value())
                .map_err(|e| unreadable(collection, key, e))?;
            if versions.lww_value().is_some() || versions.events().len() > 1 {
                if let Some(r) = resolution {
                    resolutions.insert(key.to_vec(), r);
                }
                bytes += v.value().len();
                entries.push((key.to_vec(), versions));
            }
        }
        Ok(ScanPage {
            entries,
            resolutions,
            next: None,
        })
    }

    /// Events of this node's feed after position `after`, at most `limit`, with their positions.
    pub fn feed(&self, after: u64, limit: usize) -> Result<Vec<(u64, EncodedEvent)>, StoreError> {
        self.feed_page(after, limit, usize::MAX)
    }

    /// [`Store::feed`], stopping once the events read hold `max_bytes` (one event at least):
    /// a page of the largest events is not `limit` times the largest event in memory.
    pub fn feed_page(
        &self,
        after: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<(u64, EncodedEvent)>, StoreError> {
        let txn = self.db.begin_read()?;
        let feed = txn.open_table(FEED)?;
        let changelog = txn.open_table(CHANGELOG)?;
        let floor = feed_floor(&txn.open_table(META)?)?;
        if after < floor {
            return Err(StoreError::FeedCompacted { floor });
        }
        let first = after.saturating_add(1);
        // The run holding `first` starts at or before it.
        let start = match feed.range(..=first)?.next_back() {
            Some(row) => row?.0.value(),
            None => first,
        };
        let mut out = Vec::new();
        let mut bytes_read = 0usize;
        for row in feed.range(start..)? {
            let (run_start, run) = row?;
            let run_start = run_start.value();
            let (origin, first_seq, count) = run.value();
            for i in first.saturating_sub(run_start)..count {
                if out.len() == limit || (!out.is_empty() && bytes_read >= max_bytes) {
                    return Ok(out);
                }
                let (pos, seq) = (run_start + i, first_seq + i);
                let bytes = changelog
                    .get(log_key(origin, seq).as_slice())?
                    .ok_or_else(|| {
                        corrupt(
                            "feed",
                            format!("position {pos} names missing event {origin}:{seq}"),
                        )
                    })?;
                bytes_read += bytes.value().len();
                let event = EncodedEvent::decode_slice(bytes.value(), &self.limits())
                    .map_err(|e| corrupt("changelog", e))?;
                out.push((pos, event));
            }
        }
        Ok(out)
    }

    /// Events from `origin` with sequence numbers after `after`, at most `limit`, in order.
    pub fn changelog(
        &self,
        origin: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<EncodedEvent>, StoreError> {
        self.changelog_page(origin, after, limit, usize::MAX)
    }

    /// [`Store::changelog`] ending early once the events hold `max_bytes` (at least one event
    /// is returned if there is one): a page for a reader ([`PAGE_BYTES`]).
    pub fn changelog_page(
        &self,
        origin: &str,
        after: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<EncodedEvent>, StoreError> {
        let txn = self.db.begin_read()?;
        let changelog = txn.open_table(CHANGELOG)?;
        let floor = txn
            .open_table(COMPACTED)?
            .get(origin)?
            .map_or(0, |g| g.value());
        if after < floor {
            return Err(StoreError::ChangelogCompacted {
                origin: origin.to_owned(),
                floor,
            });
        }
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let from = log_key(origin, after.saturating_add(1));
        let to = log_key(origin, u64::MAX);
        for row in changelog
            .range(from.as_slice()..=to.as_slice())?
            .take(limit)
        {
            if bytes >= max_bytes {
                break;
            }
            let (_, v) = row?;
            bytes += v.value().len();
            out.push(
                EncodedEvent::decode_slice(v.value(), &self.limits())
                    .map_err(|e| corrupt("changelog", e))?,
            );
        }
        Ok(out)
    }

    /// The hash ([`event_hash`]) of the stored bytes of each `(origin, seq)` asked for, `None`
    /// where the changelog does not hold it (never written, or compacted). One read transaction.
    pub fn event_hashes(
        &self,
        wanted: &[(&str, u64)],
    ) -> Result<Vec<Option<[u8; 32]>>, StoreError> {
        let txn = self.db.begin_read()?;
        let changelog = txn.open_table(CHANGELOG)?;
        let mut out = Vec::with_capacity(wanted.len());
        for (origin, seq) in wanted {
            let row = changelog.get(log_key(origin, *seq).as_slice())?;
            out.push(row.map(|g| event_hash(g.value())));
        }
        Ok(out)
    }

    /// How far the store holds each of `origins` (0 for one it holds nothing of). One read
    /// transaction.
    pub fn held_of<'a>(
        &self,
        origins: impl IntoIterator<Item = &'a str>,
    ) -> Result<Vec<u64>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(ORIGINS)?;
        origins
            .into_iter()
            .map(|o| Ok(table.get(o)?.map_or(0, |g| g.value())))
            .collect()
    }

    /// Summary counters and the digest.
    pub fn status(&self) -> Result<StoreStatus, StoreError> {
        Store::status_in(&self.db.begin_read()?)
    }

    /// [`Store::status`] as of the snapshot `txn` reads.
    pub(crate) fn status_in(txn: &ReadTransaction) -> Result<StoreStatus, StoreError> {
        let meta = txn.open_table(META)?;
        let origins_t = txn.open_table(ORIGINS)?;
        let dead = txn.open_table(DEAD_LETTERS)?;
        let counters = Counters::load(&meta)?;
        let origins = read_map(&origins_t)?;
        let compacted = read_map(&txn.open_table(COMPACTED)?)?;
        Ok(StoreStatus {
            digest: counters.digest,
            state_entries: counters.entries,
            feed_last: counters.position,
            origins,
            hlc_last: match meta.get(META_HLC)? {
                Some(g) => hlc_from(g.value())?,
                None => Hlc::default(),
            },
            dead_letters: dead.len()?,
            dead_letter_bytes: dead_letter_usage(&meta)?.unwrap_or_default().bytes,
            compacted,
            feed_floor: feed_floor(&meta)?,
            own_seen: meta_u64(&meta, META_OWN_SEEN)?,
            own_fork: meta_u64(&meta, META_OWN_FORK)?,
        })
    }

    /// How many dead letters the store holds, and the bytes of their records together.
    pub fn dead_letters_usage(&self) -> Result<DeadLetterUsage, StoreError> {
        let txn = self.db.begin_read()?;
        Ok(DeadLetterUsage {
            count: txn.open_table(DEAD_LETTERS)?.len()?,
            bytes: dead_letter_usage(&txn.open_table(META)?)?
                .unwrap_or_default()
                .bytes,
        })
    }

    /// Dead-letter records with ids after `after`, at most `limit` and at most [`PAGE_BYTES`]
    /// of records after the first; none at or above an id reserved and not yet committed (see
    /// `dead_letters.rs`): paging with `after` from the last id returned skips none.
    pub fn dead_letters(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        // Read before the table: an id settled after this was committed before the snapshot.
        let below = self.dead_letter_ids.lowest_open().unwrap_or(u64::MAX);
        let txn = self.db.begin_read()?;
        let dead = txn.open_table(DEAD_LETTERS)?;
        let mut out = Vec::new();
        let mut bytes = 0;
        for row in dead
            .range((after.saturating_add(1))..below.max(after.saturating_add(1)))?
            .take(limit)
        {
            if bytes >= PAGE_BYTES {
                break;
            }
            let (k, v) = row?;
            bytes += v.value().len();
            out.push((k.value(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// The dead-letter record under `id`, if there is one. (Not through [`Store::dead_letters`],
    /// which stops below an id another request holds reserved: a record committed above it
    /// would look absent.)
    pub fn dead_letter(&self, id: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read()?;
        let dead = txn.open_table(DEAD_LETTERS)?;
        Ok(dead.get(id)?.map(|g| g.value().to_vec()))
    }

    /// The disagreements recorded after `after`, at most `limit`, with their ids.
    pub fn disagreements(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, resolution::Disagreement)>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(DISAGREEMENTS)?;
        let mut out = Vec::new();
        for row in table.range((after.saturating_add(1))..)?.take(limit) {
            let (k, v) = row?;
            let d = resolution::Disagreement::decode(v.value())
                .map_err(|e| corrupt("disagreements", e))?;
            out.push((k.value(), d));
        }
        Ok(out)
    }

    /// How many disagreements are recorded.
    pub fn disagreements_count(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(DISAGREEMENTS)?.len()?)
    }
}

/// [`StoreError::UnreadableRow`] of `key` in `collection`, for `e` (a [`StoreError::Corrupt`]
/// of its row).
fn unreadable(collection: &str, key: &[u8], e: StoreError) -> StoreError {
    StoreError::UnreadableRow {
        collection: collection.to_owned(),
        key: String::from_utf8_lossy(key).into_owned(),
        reason: match e {
            StoreError::Corrupt { reason, .. } => reason,
            other => other.to_string(),
        },
    }
}
