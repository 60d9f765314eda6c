//! Everything that writes, on the one [`StoreWriter`]: local commits, peers' batches (their
//! seals checked), resolutions decided again, dead letters, peer cursors and syncs. Snapshot
//! merges, repairs and compaction are in `retention.rs`, also on the writer.
//!
//! Invariant: one write transaction changes every table together; the digest, the entry count
//! and the anti-entropy sums change with the rows they cover.

use super::*;

/// One origin's chain walked over the new events of a batch (see `StoreWriter::apply_in`).
pub(crate) struct ChainWalk<'a> {
    /// What the store held of the origin before the batch.
    pub(crate) held: u64,
    /// The last event walked, and the chain hash after it.
    pub(crate) seq: u64,
    pub(crate) chain: ChainHash,
    /// The batch's seals met on the way, each matching the chain and its block.
    pub(crate) sealed: Vec<&'a Seal>,
    /// The leaves since the last seal met.
    pub(crate) block: Block,
}

impl ChainWalk<'_> {
    pub(crate) fn new(held: u64, chain: ChainHash) -> Self {
        ChainWalk {
            held,
            seq: held,
            chain,
            sealed: Vec::new(),
            block: Block::default(),
        }
    }
}

/// Applies one event to its key's versions in `state` by the merge rule ([`Versions::apply`]),
/// keeping the digest, the entry count and the anti-entropy sums up to date. Shared by received
/// events, snapshot pages and repairs, so all merge exactly alike. With `repair` (anti-entropy
/// on a damaged store, the event proven its origin's) a key that does not decode is replaced,
/// and a version with the event's origin and sequence number but other bytes is dropped
/// first. Returns what applying did and whether something damaged was replaced.
///
/// With `new_to_store` (the event is past what this store holds of its origin: a peer's new
/// event, not a snapshot's or a repair's copy of one it may hold) the row is written first as
/// the event alone, what it then most likely becomes (a new key, an event superseding every
/// version): one descent of the tree instead of a read and a write. The row it replaced comes
/// back with the insert; where the merge gives another row (concurrent versions, an obsolete
/// event) that row is written over it, in the same transaction (an error aborts the whole
/// transaction, the first write with it). Otherwise the row is read first: most copies of
/// held events change nothing.
#[allow(clippy::too_many_arguments)]
pub(crate) fn apply_to_state(
    state: &mut redb::Table<'_, &'static [u8], &'static [u8]>,
    index: &mut aae::Writes,
    digest: &mut Digest,
    entries: &mut u64,
    limits: &EventLimits,
    event: EncodedEvent,
    new_to_store: bool,
    repair: bool,
    unresolved: &mut Unresolved<'_>,
) -> Result<(Applied, RowDamage), StoreError> {
    let hint = event
        .row_hint()
        .filter(|h| h.rule == unresolved.rule.tag())
        .copied();
    let skey = state_key(&event.collection, &event.key);
    let alone = Versions::encode_single(event.bytes());
    // With `new_to_store`, `alone` is in the table from here on (else the row is as it was).
    let old_row = if new_to_store {
        state
            .insert(skey.as_slice(), alone.as_slice())?
            .map(|g| g.value().to_vec())
    } else {
        state.get(skey.as_slice())?.map(|g| g.value().to_vec())
    };
    let Some(old_row) = old_row else {
        // A new key (what a catch-up mostly applies): its row is the event alone.
        if !new_to_store {
            state.insert(skey.as_slice(), alone.as_slice())?;
        }
        let row = NewRow {
            skey: &skey,
            old_hash: None,
            bytes: &alone,
            hint,
        };
        row.account(index, digest, entries, |b| {
            unresolved
                .rule
                .entry(&event.collection, &event.key, b, limits)
        });
        return Ok((Applied::Added, RowDamage::None));
    };
    let old_hash = unresolved
        .rule
        .entry(&event.collection, &event.key, &old_row, limits);
    let (mut versions, mut damaged) = match Versions::decode(&old_row, limits) {
        Ok(v) => (v, false),
        Err(_) if repair => (Versions::new(), true),
        Err(_) => {
            // The key's row cannot be read (damage on this disk): the event stays out of the
            // state, which keeps the row as it is until a repair replaces it (anti-entropy:
            // the row differs from every peer's). Refusing the event instead would stop every
            // later event of its origin here, and a repair sends only events this node holds.
            if new_to_store {
                state.insert(skey.as_slice(), old_row.as_slice())?;
            }
            return Ok((Applied::Obsolete, RowDamage::LeftOut));
        }
    };
    if repair {
        damaged |= versions.drop_other_bytes(&event);
    }
    let (collection, key) = (event.collection.clone(), event.key.clone());
    let applied = versions.apply(event);
    if applied == Applied::Added || damaged {
        // Added and alone in its row: the row written above, as the event's hint hashed it.
        let is_alone = applied == Applied::Added && versions.events().len() == 1;
        let merged;
        let bytes = if is_alone {
            if !new_to_store {
                state.insert(skey.as_slice(), alone.as_slice())?;
            }
            alone.as_slice()
        } else {
            merged = versions.encode();
            state.insert(skey.as_slice(), merged.as_slice())?;
            merged.as_slice()
        };
        let row = NewRow {
            skey: &skey,
            old_hash: Some(old_hash),
            bytes,
            hint: hint.filter(|_| is_alone),
        };
        row.account(index, digest, entries, |b| {
            unresolved.rule.entry(&collection, &key, b, limits)
        });
        if versions.events().len() > 1 && applied == Applied::Added {
            unresolved.concurrent(&collection, skey);
        }
    } else if new_to_store {
        // Nothing changes: the row goes back as it was.
        state.insert(skey.as_slice(), old_row.as_slice())?;
    }
    Ok((
        applied,
        if damaged {
            RowDamage::Replaced
        } else {
            RowDamage::None
        },
    ))
}

/// What [`apply_to_state`] did about a key's row that could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RowDamage {
    /// The row was read (or there was none).
    None,
    /// A repair replaced the damaged row, or a damaged copy of one of its versions.
    Replaced,
    /// The row could not be read and stays as it is: the event is not in the state.
    LeftOut,
}

/// A key's state row as an applied event leaves it.
struct NewRow<'a> {
    skey: &'a [u8],
    /// The hash of the row it replaces; `None`: the key had no row.
    old_hash: Option<Digest>,
    bytes: &'a [u8],
    /// The event's hint when the row is that event alone (it hashed the row already).
    hint: Option<edgerep_wire::encoded::RowHint>,
}

impl NewRow<'_> {
    /// Keeps the digest, the entry count and the anti-entropy sums in step with the row (written
    /// by the caller); `hash` hashes the row when no hint did.
    fn account(
        self,
        index: &mut aae::Writes,
        digest: &mut Digest,
        entries: &mut u64,
        hash: impl FnOnce(&[u8]) -> Digest,
    ) {
        match self.old_hash {
            Some(h) => digest.sub(h),
            None => *entries += 1,
        }
        let new_hash = match self.hint {
            Some(h) => Digest::from_bytes(&h.alone),
            None => hash(self.bytes),
        };
        digest.add(new_hash);
        match self.hint {
            Some(h) => index.set_in(h.bucket, self.old_hash, new_hash),
            None => index.set(self.skey, self.old_hash, new_hash),
        }
    }
}

/// Each origin's walk over a batch, and the origins whose events fork from what is held.
pub(crate) type Walked<'s> = (BTreeMap<NodeId, ChainWalk<'s>>, BTreeMap<NodeId, Fork>);

/// Walks each origin's chain over its new events among `events` (their canonical bytes, as
/// received) from the head the store holds, checking the seals met on the way (`seal_at`): a
/// seal that does not verify is a forgery ([`StoreError::Forged`]: nothing may be applied);
/// one that verifies but that the events do not chain to is a fork (two histories the origin
/// signed), unless the seal covers exactly their block and its root is not theirs: events
/// changed under a genuine seal, a forgery too. (Changed events in a block this store holds
/// part of look like a fork.) Returns each origin's walk and the forks (their events are left
/// out, the rest applied).
pub(crate) fn walk_chains<'e, 's>(
    events: impl IntoIterator<Item = &'e EncodedEvent>,
    seal_at: &BTreeMap<(&str, u64), &'s Seal>,
    origins: &impl ReadableTable<&'static str, u64>,
    chains: &impl ReadableTable<&'static str, &'static [u8]>,
    keys: Option<&dyn Keys>,
) -> Result<Walked<'s>, StoreError> {
    let forged = |origin: &NodeId, seq: u64, reason: String| StoreError::Forged {
        origin: origin.to_string(),
        seq,
        reason,
    };
    let mut forks: BTreeMap<NodeId, Fork> = BTreeMap::new();
    let mut walks: BTreeMap<NodeId, ChainWalk<'s>> = BTreeMap::new();
    for e in events {
        if !forks.contains_key(&e.origin) {
            if !walks.contains_key(&e.origin) {
                let held = origins.get(e.origin.as_str())?.map_or(0, |g| g.value());
                let (head, chain) = seals::head(chains, &e.origin)?;
                if head != held {
                    return Err(corrupt(
                        "chains",
                        format!("{}'s chain ends at {head}, its events at {held}", e.origin),
                    ));
                }
                walks.insert(e.origin.clone(), ChainWalk::new(held, chain));
            }
            if let Some(w) = walks.get_mut(&e.origin)
                && Some(e.seq) == w.seq.checked_add(1)
            {
                w.seq = e.seq;
                let leaf = e.leaf();
                w.chain = chain_link(&w.chain, &leaf);
                w.block.push(e.seq, leaf);
                if let Some(&seal) = seal_at.get(&(e.origin.as_str(), e.seq)) {
                    let signed = match keys {
                        Some(keys) => {
                            match keys.verify(&e.origin, e.seq, &seal.message(), &seal.signature) {
                                // Revoked while the batch was on its way (admitted before the
                                // reload): refused, but not a forgery.
                                Err(KeyError::Revoked { after, seq, .. }) => {
                                    return Err(StoreError::Revoked {
                                        origin: e.origin.to_string(),
                                        after,
                                        seq,
                                    });
                                }
                                other => other.map_err(|e| e.to_string()),
                            }
                        }
                        None if seal.chain == w.chain => Ok(()),
                        None => Err("its seal's chain hash does not match the events".to_owned()),
                    };
                    if let Err(reason) = signed {
                        return Err(forged(&e.origin, e.seq, reason));
                    }
                    if seal.chain == w.chain {
                        // The chain is the origin's; a block it describes wrongly
                        // would make every proof of these events fail later.
                        if seal.first != w.block.first || seal.root != w.block.root() {
                            return Err(forged(
                                &e.origin,
                                e.seq,
                                "its seal names another block than its events".into(),
                            ));
                        }
                        w.block.clear();
                        w.sealed.push(seal);
                    } else if seal.first == w.block.first && seal.root != w.block.root() {
                        // The seal covers exactly these events and they are not the ones it
                        // signed: changed on the way, not another history of the origin's
                        // (whose block would match its own seal's root).
                        return Err(forged(
                            &e.origin,
                            e.seq,
                            "its events are not the ones its seal signed".into(),
                        ));
                    } else {
                        forks.insert(
                            e.origin.clone(),
                            Fork {
                                origin: e.origin.to_string(),
                                seq: e.seq,
                                held_chain: w.chain,
                                received_chain: seal.chain,
                            },
                        );
                    }
                }
            }
        }
    }
    Ok((walks, forks))
}

impl Store {
    /// Works out what writing `event` needs of it alone (its key's bucket, the hash of its row
    /// when it is its key's only version: a new key, or an event that supersedes every version
    /// the key held) and keeps it with the event ([`EncodedEvent::row_hint`]), so that a thread
    /// other than the writer's does it: a connection's reader, where the event is decoded. The
    /// writer takes the row's hash from there only when the event ends up alone in its row,
    /// and only under the rule it was computed with.
    pub fn hint(&self, event: &EncodedEvent) {
        if event.row_hint().is_some() {
            return;
        }
        event.set_row_hint(edgerep_wire::encoded::RowHint {
            rule: self.rule.tag(),
            bucket: edgerep_wire::aae::bucket_of(&state_key(&event.collection, &event.key)),
            alone: self
                .rule
                .entry(
                    &event.collection,
                    &event.key,
                    &Versions::encode_single(event.bytes()),
                    &self.limits(),
                )
                .to_bytes(),
        });
    }

    /// Whether `events` are their origins' as `seals` vouch for them, read against what this
    /// store holds now (the check [`StoreWriter::apply_sealed`] makes before writing, without
    /// writing): [`StoreError::Forged`] for a seal that does not verify, a block described
    /// wrongly, a batch going past its last seal, or events that do not chain to what the
    /// store holds under a seal that verifies (a fork, or events changed under a genuine
    /// seal). Events already held are not checked (they would not apply). Events past what
    /// the store holds (an earlier batch of their origin still on its way to the store) are
    /// checked by the batch alone: each must lie in a block the batch holds whole, under a seal
    /// whose root matches and whose signature verifies; otherwise [`StoreError::Unproven`].
    /// For decisions that must not be taken on a peer's word alone, such as halting
    /// replication because a transform failed on an event.
    pub fn check_sealed(
        &self,
        events: &[EncodedEvent],
        seals: &[Seal],
        certs: &[(NodeId, Vec<u8>)],
    ) -> Result<(), StoreError> {
        self.check_sealed_in(events, seals, certs, true)
    }

    /// [`StoreWriter::check_sealed`] that lets forks pass: events under a seal that verifies
    /// which do not chain to what the store holds are another history their origin signed,
    /// which [`StoreWriter::apply_sealed`] leaves out and reports; an honest peer may relay
    /// them. Anything else that fails is the sender's forgery.
    pub fn check_sealed_but_forks(
        &self,
        events: &[EncodedEvent],
        seals: &[Seal],
        certs: &[(NodeId, Vec<u8>)],
    ) -> Result<(), StoreError> {
        self.check_sealed_in(events, seals, certs, false)
    }

    fn check_sealed_in(
        &self,
        events: &[EncodedEvent],
        seals: &[Seal],
        certs: &[(NodeId, Vec<u8>)],
        forks_refused: bool,
    ) -> Result<(), StoreError> {
        if let Some(keys) = &self.keys {
            for (origin, der) in certs {
                match keys.learn(origin, der) {
                    // As in `learn_certs`: one certificate too many of an origin is no lie (a
                    // renewal), and a seal that needed it fails its own check below.
                    Ok(()) | Err(KeyError::TooManyCertificates { .. }) => {}
                    Err(e) => {
                        return Err(StoreError::Forged {
                            origin: origin.to_string(),
                            seq: 0,
                            reason: format!("its certificate: {e}"),
                        });
                    }
                }
            }
        }
        let seal_at: BTreeMap<(&str, u64), &Seal> = seals
            .iter()
            .map(|s| ((s.origin.as_str(), s.seq), s))
            .collect();
        let txn = self.db.begin_read()?;
        let origins = txn.open_table(ORIGINS)?;
        let chains = txn.open_table(CHAINS)?;
        let (walks, forks) =
            walk_chains(events, &seal_at, &origins, &chains, self.keys.as_deref())?;
        if let Some(fork) = forks.values().next().filter(|_| forks_refused) {
            return Err(StoreError::Forged {
                origin: fork.origin.clone(),
                seq: fork.seq,
                reason: "its events do not chain to what this node holds under a seal that verifies (a second history, or events changed under a genuine seal)".into(),
            });
        }
        let ahead = events.iter().filter(|e| {
            !forks.contains_key(&e.origin) && walks.get(&e.origin).is_some_and(|w| e.seq > w.seq)
        });
        prove_by_batch_alone(ahead, events, seals, self.keys.as_deref())?;
        for (origin, w) in walks.iter().filter(|(o, _)| !forks.contains_key(*o)) {
            let sealed_upto = w.sealed.last().map_or(w.held, |s| s.seq);
            if w.seq != w.held && sealed_upto != w.seq {
                return Err(StoreError::Forged {
                    origin: origin.to_string(),
                    seq: w.seq,
                    reason: format!(
                        "the batch ends at {}, after its last seal (at {sealed_upto})",
                        w.seq
                    ),
                });
            }
        }
        Ok(())
    }
}

/// Shows each of `ahead` (events of `events` past where their origin's chain walk from the
/// store stopped) to be its origin's from the batch alone: a seal of `seals` covers it, the
/// batch holds that seal's whole block, the block's Merkle root is the seal's and (with `keys`)
/// the seal's signature verifies. A root or signature that does not match is a forgery; a
/// block the batch does not hold whole proves nothing either way ([`StoreError::Unproven`]).
fn prove_by_batch_alone<'e>(
    ahead: impl Iterator<Item = &'e EncodedEvent>,
    events: &[EncodedEvent],
    seals: &[Seal],
    keys: Option<&dyn Keys>,
) -> Result<(), StoreError> {
    let mut proven: BTreeSet<(&str, u64)> = BTreeSet::new();
    let mut by_dot: Option<BTreeMap<(&str, u64), &EncodedEvent>> = None;
    // By origin and sequence number, so that finding an event's seal is a lookup, not a scan
    // (copies of one seal count once: a peer repeating seals must not make the proof cost
    // events × seals).
    let by_seq: BTreeMap<(&str, u64), &Seal> = seals
        .iter()
        .map(|s| ((s.origin.as_str(), s.seq), s))
        .collect();
    for e in ahead {
        let origin = e.origin.as_str();
        let unproven = |reason: &str| StoreError::Unproven {
            origin: origin.to_owned(),
            seq: e.seq,
            reason: reason.to_owned(),
        };
        // (A forgery is named by the seal it fails, as the chain walk names it.)
        let forged = |seal: &Seal, reason: &str| StoreError::Forged {
            origin: origin.to_owned(),
            seq: seal.seq,
            reason: reason.to_owned(),
        };
        // The first seal at or after the event: its block covers the event, or none does
        // (an origin's blocks do not overlap).
        let Some(seal) = by_seq
            .range((origin, e.seq)..=(origin, u64::MAX))
            .next()
            .map(|(_, s)| *s)
            .filter(|s| s.first <= e.seq)
        else {
            return Err(unproven(
                "no seal of the batch covers it, and it does not follow what this node holds",
            ));
        };
        if proven.contains(&(origin, seal.seq)) {
            continue;
        }
        // A block longer than the batch cannot be in it (and its length is the peer's word).
        if seal.seq - seal.first >= events.len() as u64 {
            return Err(unproven("the batch does not hold its seal's whole block"));
        }
        let by_dot = by_dot.get_or_insert_with(|| {
            events
                .iter()
                .map(|e| ((e.origin.as_str(), e.seq), e))
                .collect()
        });
        let Some(leaves) = (seal.first..=seal.seq)
            .map(|q| by_dot.get(&(origin, q)).map(|e| e.leaf()))
            .collect::<Option<Vec<_>>>()
        else {
            return Err(unproven("the batch does not hold its seal's whole block"));
        };
        if edgerep_wire::seal::merkle_root(&leaves) != seal.root {
            return Err(forged(seal, "its events are not the ones its seal signed"));
        }
        if let Some(keys) = keys {
            match keys.verify(&e.origin, seal.seq, &seal.message(), &seal.signature) {
                Ok(()) => {}
                Err(KeyError::Revoked { after, seq, .. }) => {
                    return Err(StoreError::Revoked {
                        origin: origin.to_owned(),
                        after,
                        seq,
                    });
                }
                // The certificate may come with an earlier batch still on its way to the
                // store: not shown either way.
                Err(why @ KeyError::NoCertificate { .. }) => {
                    return Err(unproven(&why.to_string()));
                }
                Err(other) => return Err(forged(seal, &other.to_string())),
            }
        }
        proven.insert((origin, seal.seq));
    }
    Ok(())
}

/// Appends `records` to the dead letters in `txn`, each under the next id, and counts them
/// ([`META_DEAD_LETTER_USAGE`]); returns their ids.
pub(crate) fn append_dead_letters(
    store: &Store,
    txn: &redb::WriteTransaction,
    records: &[&[u8]],
) -> Result<Vec<u64>, StoreError> {
    if records.is_empty() {
        return Ok(Vec::new());
    }
    let first = store.dead_letter_ids.take(records.len() as u64);
    let mut ids = Vec::new();
    let mut added = DeadLetterUsage::default();
    let mut dead = txn.open_table(DEAD_LETTERS)?;
    for (id, record) in (first..).zip(records) {
        insert_dead_letter(&mut dead, id, record)?;
        added.add(record.len());
        ids.push(id);
    }
    count_dead_letters(&mut txn.open_table(META)?, added, Default::default())?;
    Ok(ids)
}

/// Keeps the highest dead-letter id given, in a transaction that removes dead letters.
fn keep_dead_letter_high(
    meta: &mut redb::Table<'_, &'static str, &'static [u8]>,
    high: u64,
) -> Result<(), StoreError> {
    meta.insert(META_DEAD_LETTER_HIGH, &high.to_be_bytes()[..])?;
    Ok(())
}

/// Changes the dead letters' count and bytes ([`META_DEAD_LETTER_USAGE`]) by `added` less
/// `removed`, in the transaction that added and removed them.
fn count_dead_letters(
    meta: &mut redb::Table<'_, &'static str, &'static [u8]>,
    added: DeadLetterUsage,
    removed: DeadLetterUsage,
) -> Result<(), StoreError> {
    if added != removed {
        let held = dead_letter_usage(meta)?.unwrap_or_default();
        let now = DeadLetterUsage {
            count: held
                .count
                .saturating_add(added.count)
                .saturating_sub(removed.count),
            bytes: held
                .bytes
                .saturating_add(added.bytes)
                .saturating_sub(removed.bytes),
        };
        save_dead_letter_usage(meta, now)?;
    }
    Ok(())
}

/// Inserts dead letter `id` (reserved by [`Store::set_aside`]).
fn insert_dead_letter(
    dead: &mut redb::Table<'_, u64, &'static [u8]>,
    id: u64,
    record: &[u8],
) -> Result<(), StoreError> {
    if dead.insert(id, record)?.is_some() {
        return Err(corrupt(
            "dead_letters",
            format!("dead letter {id} was there already (ids are reserved once)"),
        ));
    }
    Ok(())
}

/// The keys of one transaction whose versions changed to concurrent ones, to resolve once
/// before it commits (after every event of the batch, not after each).
pub(crate) struct Unresolved<'a> {
    pub(crate) resolver: Option<&'a dyn Resolver>,
    /// How rows hash (carried here: every state write of the transaction needs it).
    pub(crate) rule: &'a HashRule,
    pub(crate) keys: BTreeSet<Vec<u8>>,
    /// What the transaction's conflicts came to (added to the store's once it commits).
    pub(crate) tally: ConflictTally,
}

/// Conflicts met and how they were resolved, per collection, since the store opened (in
/// memory: a figure for metrics, not state).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConflictTally {
    /// Versions applied that left their key holding concurrent versions.
    pub conflicts: BTreeMap<String, u64>,
    /// Per (collection, who decided: `lww`, `plugin:NAME`, `lww-fallback:NAME`), keys with
    /// concurrent versions resolved.
    pub resolutions: BTreeMap<(String, String), u64>,
}

/// Collections a [`ConflictTally`] names, at most (the first met; the rest are counted under
/// [`TALLY_OTHER`]): their names come from clients and peers, and the tally lives as long as
/// the store is open.
pub(crate) const TALLY_COLLECTIONS: usize = 1024;
/// The name the collections past [`TALLY_COLLECTIONS`] are counted under.
pub(crate) const TALLY_OTHER: &str = "_other";

impl ConflictTally {
    /// Adds `other` to this tally.
    pub(crate) fn add(&mut self, other: ConflictTally) {
        for (c, n) in other.conflicts {
            let c = if self.conflicts.len() < TALLY_COLLECTIONS || self.conflicts.contains_key(&c) {
                c
            } else {
                TALLY_OTHER.to_owned()
            };
            *self.conflicts.entry(c).or_default() += n;
        }
        for ((c, by), n) in other.resolutions {
            let key = (c, by);
            let key = if self.resolutions.len() < TALLY_COLLECTIONS
                || self.resolutions.contains_key(&key)
            {
                key
            } else {
                (TALLY_OTHER.to_owned(), key.1)
            };
            *self.resolutions.entry(key).or_default() += n;
        }
    }
}

/// Why `context`, a local writer's, names events this node does not hold (see
/// [`LocalWrite::context`]), or `None` when it names only held ones; `seq` is the sequence number
/// the write takes.
fn context_beyond_held(
    context: &VersionVector,
    origins: &impl ReadableTable<&'static str, u64>,
    node: &NodeId,
    seq: u64,
) -> Result<Option<String>, StoreError> {
    for (origin, claimed) in context.iter() {
        let held = if origin == node {
            seq - 1
        } else {
            origins.get(origin.as_str())?.map_or(0, |g| g.value())
        };
        if claimed > held {
            return Ok(Some(format!(
                "the write's context names event {claimed} of {origin}, and this node holds its events up to {held} only (a context is what a read of this node gave)"
            )));
        }
    }
    Ok(None)
}

impl<'a> Unresolved<'a> {
    /// A change left `skey` with concurrent versions (a peer's event, or a local write whose
    /// writer's context did not cover them all): counted as a conflict, and resolved before the
    /// transaction commits.
    pub(crate) fn concurrent(&mut self, collection: &str, skey: Vec<u8>) {
        *self
            .tally
            .conflicts
            .entry(collection.to_owned())
            .or_default() += 1;
        if self.resolver.is_some_and(|r| r.resolves(collection)) {
            self.keys.insert(skey);
        } else {
            *self
                .tally
                .resolutions
                .entry((collection.to_owned(), "lww".to_owned()))
                .or_default() += 1;
        }
    }

    pub(crate) fn new(resolver: Option<&'a dyn Resolver>, rule: &'a HashRule) -> Unresolved<'a> {
        Unresolved {
            resolver,
            rule,
            keys: BTreeSet::new(),
            tally: ConflictTally::default(),
        }
    }

    /// Resolves every key collected and writes its row with the resolution; returns the
    /// transaction's tally of conflicts.
    pub(crate) fn resolve(
        mut self,
        state: &mut redb::Table<'_, &'static [u8], &'static [u8]>,
        index: &mut aae::Writes,
        digest: &mut Digest,
        limits: &EventLimits,
    ) -> Result<ConflictTally, StoreError> {
        let Some(resolver) = self.resolver else {
            return Ok(self.tally);
        };
        for skey in self.keys {
            let Some((collection, key)) = split_state_key(&skey) else {
                return Err(corrupt("state", "key without separator"));
            };
            let Some(row) = state.get(skey.as_slice())?.map(|g| g.value().to_vec()) else {
                continue;
            };
            let split = resolution::split_row(&row).map_err(|e| corrupt("state", e))?;
            let versions =
                Versions::decode(split.versions, limits).map_err(|e| corrupt("state", e))?;
            if versions.events().len() < 2 {
                continue;
            }
            let r = resolver.resolve(collection, key, &versions);
            *self
                .tally
                .resolutions
                .entry((collection.to_owned(), r.by.clone()))
                .or_default() += 1;
            let new_row = resolution::join_row(split.versions, Some(&r));
            let hash = |row: &[u8]| self.rule.entry(collection, key, row, limits);
            write_row(
                state,
                index,
                digest,
                &skey,
                (hash(&row), hash(&new_row)),
                &new_row,
            )?;
        }
        Ok(self.tally)
    }
}

/// Replaces a state row that exists with `new`, keeping the digest and the anti-entropy sums
/// in step (`hashes`: the old row's and the new row's).
pub(crate) fn write_row(
    state: &mut redb::Table<'_, &'static [u8], &'static [u8]>,
    index: &mut aae::Writes,
    digest: &mut Digest,
    skey: &[u8],
    hashes: (Digest, Digest),
    new: &[u8],
) -> Result<(), StoreError> {
    let (old_hash, new_hash) = hashes;
    if old_hash == new_hash {
        state.insert(skey, new)?;
        return Ok(());
    }
    digest.sub(old_hash);
    digest.add(new_hash);
    index.set(skey, Some(old_hash), new_hash);
    state.insert(skey, new)?;
    Ok(())
}

impl StoreWriter {
    pub(crate) fn add_conflicts(&self, tally: ConflictTally) {
        // Most transactions meet no conflict: no lock for them (every local commit comes here).
        if tally.conflicts.is_empty() && tally.resolutions.is_empty() {
            return;
        }
        self.conflicts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add(tally);
    }

    /// Decides again the kept resolution of every key of `collection` that holds concurrent
    /// versions, with the resolver as it is now (after a config reload changed what resolves
    /// the collection: keys resolved before by the old wiring get what every node with the new
    /// one computes). One transaction over at most `max_rows` rows after `after` (a state key;
    /// `None`: from the collection's first); returns how many rows changed and where to go on
    /// (`None`: the collection is done).
    pub fn re_resolve(
        &self,
        collection: &str,
        after: Option<&[u8]>,
        max_rows: usize,
    ) -> Result<(u64, Option<Vec<u8>>), StoreError> {
        if after.is_none() {
            self.re_resolving_now().began(collection);
        }
        let Some(resolver) = self.resolver.as_deref() else {
            self.re_resolving_now().ended(collection, true);
            return Ok((0, None));
        };
        let out = self.re_resolve_page(resolver, collection, after, max_rows);
        // The pass ends at its last page, or at an error (its caller stops there).
        if !matches!(out, Ok((_, Some(_)))) {
            self.re_resolving_now().ended(collection, out.is_ok());
        }
        out
    }

    /// One page of [`StoreWriter::re_resolve`].
    fn re_resolve_page(
        &self,
        resolver: &dyn crate::Resolver,
        collection: &str,
        after: Option<&[u8]>,
        max_rows: usize,
    ) -> Result<(u64, Option<Vec<u8>>), StoreError> {
        let resolves = resolver.resolves(collection);
        let prefix = state_key(collection, b"");
        let start = after.map_or_else(|| prefix.clone(), <[u8]>::to_vec);
        let mut next = None;
        let txn = self.db.begin_write()?;
        let (changed, deltas) = {
            let mut state = txn.open_table(STATE)?;
            let mut meta = txn.open_table(META)?;
            let mut index = aae::Writes::new(self.fingerprints);
            let mut counters = Counters::load(&meta)?;
            let mut rows = Vec::new();
            for row in state.range(start.as_slice()..)? {
                let (k, v) = row?;
                if !k.value().starts_with(&prefix) {
                    break;
                }
                if after == Some(k.value()) {
                    continue;
                }
                if rows.len() == max_rows {
                    next = rows.last().map(|(k, _): &(Vec<u8>, Vec<u8>)| k.clone());
                    break;
                }
                rows.push((k.value().to_vec(), v.value().to_vec()));
            }
            let mut changed = 0;
            for (skey, row) in rows {
                let split = resolution::split_row(&row).map_err(|e| corrupt("state", e))?;
                let versions = Versions::decode(split.versions, &self.limits())
                    .map_err(|e| corrupt("state", e))?;
                if versions.events().len() < 2 {
                    continue;
                }
                let key = &skey[prefix.len()..];
                let r = resolves.then(|| resolver.resolve(collection, key, &versions));
                let new_row = resolution::join_row(split.versions, r.as_ref());
                if new_row == row {
                    continue;
                }
                let hash = |row: &[u8]| self.rule.entry(collection, key, row, &self.limits());
                write_row(
                    &mut state,
                    &mut index,
                    &mut counters.digest,
                    &skey,
                    (hash(&row), hash(&new_row)),
                    &new_row,
                )?;
                changed += 1;
            }
            if changed > 0 {
                counters.save(&mut meta)?;
            }
            let deltas = std::mem::take(&mut index.deltas);
            (changed, deltas)
        };
        txn.commit()?;
        self.aae.apply(&deltas);
        Ok((changed, next))
    }

    /// Has the keys check and take in the certificates that came with `sealed`; Err names the
    /// origin whose certificate was refused, and why.
    pub(crate) fn learn_certs(
        &self,
        sealed: Option<seals::Sealed<'_>>,
    ) -> Result<(), (NodeId, KeyError)> {
        if let (Some(keys), Some((_, certs))) = (&self.keys, sealed) {
            for (origin, der) in certs {
                match keys.learn(origin, der) {
                    // One certificate too many of an origin is no lie (the CA may have issued
                    // its id more keys than a node keeps): not taken, and a seal that needed
                    // it fails its own check.
                    Ok(()) | Err(KeyError::TooManyCertificates { .. }) => {}
                    Err(reason) => return Err((origin.clone(), reason)),
                }
            }
        }
        Ok(())
    }

    /// A seal over this node's chain at `seq`, ending `block`.
    pub(crate) fn seal_own(
        &self,
        seq: u64,
        chain: ChainHash,
        block: &Block,
    ) -> Result<Seal, KeyError> {
        let mut seal = Seal {
            origin: self.node.clone(),
            seq,
            first: block.first,
            chain,
            root: block.root(),
            signature: Vec::new(),
        };
        if let Some(keys) = &self.keys {
            seal.signature = keys.sign(&seal.message())?;
        }
        Ok(seal)
    }

    /// Commits a group of local writes in one durable transaction, in order. Each becomes an
    /// event from this node with the next sequence number, a fresh timestamp from `clock`, and a
    /// causal context that supersedes every version the key holds (given its writer's context,
    /// what that read saw and this node's own earlier writes). All or nothing.
    pub fn commit_local(
        &self,
        writes: Vec<LocalWrite>,
        clock: &mut HlcClock,
        wall_ms: u64,
    ) -> Result<Vec<Committed>, StoreError> {
        self.commit_local_replacing(writes, &[], Sync::Immediate, clock, wall_ms)
    }

    /// [`StoreWriter::commit_local`], and in the same transaction removes the dead letters
    /// `dead_letters` (a replay: the events that failed before are committed now, exactly once).
    pub fn commit_local_replacing(
        &self,
        writes: Vec<LocalWrite>,
        dead_letters: &[u64],
        sync: Sync,
        clock: &mut HlcClock,
        wall_ms: u64,
    ) -> Result<Vec<Committed>, StoreError> {
        self.commit_local_checked(writes, dead_letters, sync, clock, wall_ms)
            .map_err(|e| e.error)
    }

    /// [`StoreWriter::commit_local_replacing`], giving the writes back when one of them is refused
    /// ([`StoreError::WriteRefused`]: the event it would make could not be read back within the
    /// store's limits, or a version the key holds already claims to supersede it), so that the
    /// caller can commit the others without it. Nothing is written when it fails.
    pub fn commit_local_checked(
        &self,
        writes: Vec<LocalWrite>,
        dead_letters: &[u64],
        sync: Sync,
        clock: &mut HlcClock,
        wall_ms: u64,
    ) -> Result<Vec<Committed>, LocalCommitError> {
        self.commit_local_keyed(writes, dead_letters, &[], sync, clock, wall_ms)
    }

    /// [`StoreWriter::commit_local_keyed`] that also keeps `set_aside` (dead letters of the
    /// request's writes a plugin failed on, under ids from [`Store::set_aside`])
    /// in the same transaction: a request's dead letters, writes and key are written together
    /// or not at all.
    #[allow(clippy::too_many_arguments)]
    pub fn commit_local_setting_aside(
        &self,
        writes: Vec<LocalWrite>,
        dead_letters: &[u64],
        set_aside: &[(u64, Vec<u8>)],
        receipts: &[idempotency::Receipt],
        sync: Sync,
        clock: &mut HlcClock,
        wall_ms: u64,
    ) -> Result<Vec<Committed>, LocalCommitError> {
        if writes.is_empty()
            && dead_letters.is_empty()
            && set_aside.is_empty()
            && receipts.is_empty()
        {
            return Ok(Vec::new());
        }
        // Each write made into an event, with the context its writer gave (handed back as is).
        let mut made: Vec<(Event, Option<VersionVector>)> = Vec::with_capacity(writes.len());
        let mut rest = writes.into_iter();
        let result = self.commit_local_in(
            &mut rest,
            &mut made,
            dead_letters,
            set_aside,
            receipts,
            sync,
            clock,
            wall_ms,
        );
        result.map_err(|error| {
            // Hand every write back, in order: those made into events, then the others.
            let writes = match &error {
                StoreError::WriteRefused { .. } | StoreError::KeyInUse { .. } => made
                    .into_iter()
                    .map(|(event, context)| LocalWrite {
                        context,
                        ..LocalWrite::from(event)
                    })
                    .chain(rest)
                    .collect(),
                _ => Vec::new(),
            };
            LocalCommitError { error, writes }
        })
    }

    /// [`StoreWriter::commit_local_checked`] that also records each receipt's idempotency key with
    /// its writes' commits, in the same transaction ([`StoreError::KeyInUse`] when one is
    /// recorded already), and removes expired records.
    pub fn commit_local_keyed(
        &self,
        writes: Vec<LocalWrite>,
        dead_letters: &[u64],
        receipts: &[idempotency::Receipt],
        sync: Sync,
        clock: &mut HlcClock,
        wall_ms: u64,
    ) -> Result<Vec<Committed>, LocalCommitError> {
        // (Receipts alone are recorded: a request whose every write a plugin refused keeps
        // its answer under its key.)
        self.commit_local_setting_aside(writes, dead_letters, &[], receipts, sync, clock, wall_ms)
    }

    /// Removes the keys restored from peers (see `idempotency::RESTORED`) that are past the
    /// window at `now_ms`: after a restore, once, at the next start. Nothing to do (no
    /// transaction) when there are none. The caller passes the earlier of its wall clock and
    /// the last time its hybrid clock issued or observed: a clock that booted ahead must not
    /// remove keys still within the window (a retry would write again).
    pub fn prune_restored_keys(&self, now_ms: u64) -> Result<(), StoreError> {
        if !self
            .keys_restored
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return Ok(());
        }
        let txn = self.db.begin_write()?;
        let left = idempotency::prune_restored(&txn, self.idempotency_window, now_ms)?;
        txn.commit()?;
        self.keys_restored
            .store(left, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn commit_local_in(
        &self,
        writes: &mut std::vec::IntoIter<LocalWrite>,
        made: &mut Vec<(Event, Option<VersionVector>)>,
        dead_letters: &[u64],
        set_aside: &[(u64, Vec<u8>)],
        receipts: &[idempotency::Receipt],
        sync: Sync,
        clock: &mut HlcClock,
        wall_ms: u64,
    ) -> Result<Vec<Committed>, StoreError> {
        let limits = self.limits();
        let mut txn = self.db.begin_write()?;
        txn.set_durability(sync.redb())?;
        let mut out = Vec::with_capacity(writes.len());
        let tally;
        let deltas = {
            let mut dead = txn.open_table(DEAD_LETTERS)?;
            let mut removed = DeadLetterUsage::default();
            for &id in dead_letters {
                match dead.remove(id)? {
                    Some(record) => removed.add(record.value().len()),
                    // Replayed already (or never existed): abort, so a replay happens once.
                    None => return Err(StoreError::NoSuchDeadLetter(id)),
                }
            }
            let mut added = DeadLetterUsage::default();
            for (id, record) in set_aside {
                insert_dead_letter(&mut dead, *id, record)?;
                added.add(record.len());
            }
            drop(dead);
            if !dead_letters.is_empty() || !set_aside.is_empty() {
                let mut meta = txn.open_table(META)?;
                if !dead_letters.is_empty() {
                    keep_dead_letter_high(&mut meta, self.dead_letter_ids.high())?;
                }
                count_dead_letters(&mut meta, added, removed)?;
            }
            let mut state = txn.open_table(STATE)?;
            let mut changelog = txn.open_table(CHANGELOG)?;
            let mut feed = crate::feed::FeedWriter::open(&txn)?;
            let mut origins = txn.open_table(ORIGINS)?;
            let mut meta = txn.open_table(META)?;
            let mut chains = txn.open_table(CHAINS)?;
            let mut seals_t = txn.open_table(SEALS)?;
            let mut aae_rows = aae::Writes::new(self.fingerprints);
            // Keys a write given its writer's context left with concurrent versions.
            let mut unresolved = Unresolved::new(self.resolver.as_deref(), &self.rule);
            let mut seq = origins.get(self.node.as_str())?.map_or(0, |g| g.value());
            // Numbers of this node's own that part of a snapshot brought back (see
            // `META_OWN_SEEN`): taken until the rest of its history is back.
            let own_seen = meta_u64(&meta, META_OWN_SEEN)?;
            if own_seen > seq && !writes.as_slice().is_empty() {
                return Err(StoreError::OwnNumbersTaken {
                    held: seq,
                    seen: own_seen,
                });
            }
            let (head_seq, mut chain) = seals::head(&chains, &self.node)?;
            if head_seq != seq {
                return Err(corrupt(
                    "chains",
                    format!("this node's chain ends at {head_seq}, its events at {seq}"),
                ));
            }
            // Events and bytes since the last seal: a seal at least every SEAL_EVERY_* of them.
            let (mut unsealed, mut unsealed_bytes) = (0u64, 0usize);
            let mut block = Block::default();
            let Counters {
                mut position,
                mut digest,
                mut entries,
            } = Counters::load(&meta)?;
            let mut event_bytes = Vec::with_capacity(256);
            // The first write of each keyed request (or keyed write of a batch) carries the
            // key's digest in its event: after a restore lost the record, a retry under the key
            // is still known once the event is back (see `RESTORED`). (Receipts cover separate
            // writes; they are few: one per request, or per keyed write of a batch.)
            let digests: BTreeMap<usize, [u8; 16]> = receipts
                .iter()
                .filter(|r| r.count > 0)
                .map(|r| (r.first, idempotency::digest(&r.key)))
                .collect();
            for w in writes.by_ref() {
                let index = made.len();
                let mut extra = BTreeMap::new();
                if let Some(field) = digests
                    .get(&index)
                    .and_then(|d| idempotency::keys_field(&[*d]))
                {
                    extra.insert(edgerep_wire::event::FIELD_IDEMPOTENCY_KEYS, field);
                }
                let skey = state_key(&w.collection, &w.key);
                let old = state.get(skey.as_slice())?;
                // A row that cannot be read (a damaged disk) refuses this write only, below:
                // the others of the group commit (anti-entropy repairs the row).
                let (mut versions, old_hash, unreadable) = match &old {
                    Some(g) => {
                        let bytes = g.value();
                        match Versions::decode(bytes, &limits) {
                            Ok(versions) => (
                                versions,
                                Some(self.rule.entry(&w.collection, &w.key, bytes, &limits)),
                                None,
                            ),
                            Err(e) => (
                                Versions::new(),
                                None,
                                Some(format!(
                                    "key {:?} of collection {:?}: its stored state cannot be read ({e}); the store is damaged there, and anti-entropy repairs it from a peer",
                                    String::from_utf8_lossy(&w.key),
                                    w.collection
                                )),
                            ),
                        }
                    }
                    None => (Versions::new(), None, None),
                };
                drop(old);
                seq = seq.checked_add(1).ok_or_else(|| StoreError::WriteRefused {
                    index,
                    reason: "this node's sequence numbers are exhausted".into(),
                })?;
                let writer_context = w.context;
                let hlc = clock.now(wall_ms);
                let event = Event {
                    format: FORMAT_VERSION,
                    collection: w.collection,
                    key: w.key,
                    op: if w.value.is_some() {
                        Op::Put
                    } else {
                        Op::Delete
                    },
                    value: w.value,
                    hlc,
                    origin: self.node.clone(),
                    seq,
                    schema: w.schema,
                    meta: w.meta,
                    context: match &writer_context {
                        // What the writer read, and every earlier write of this node's: a
                        // node's writes to one key stay causally ordered (what makes the
                        // compact context exact), so a key holds one version per origin at
                        // most, however stale the contexts clients send.
                        // Contexts are transitive (snapshots rely on it): the held versions
                        // this context covers are superseded, so what they superseded is
                        // named too, however old the writer's read. (Held versions are
                        // concurrent: none names another, so one pass suffices.)
                        Some(read) => {
                            let mut vv = read.clone();
                            if seq > 1 {
                                vv.add(&edgerep_wire::event::Dot {
                                    origin: self.node.clone(),
                                    seq: seq - 1,
                                });
                            }
                            for v in versions.events() {
                                if vv.covers(&v.dot()) {
                                    vv.join(&v.context);
                                }
                            }
                            vv
                        }
                        None => versions.context(),
                    },
                    extra,
                };
                event_bytes.clear();
                event.encode_into(&mut event_bytes);
                // A local write supersedes every version (or, given its writer's context, what
                // that read saw and this node's own earlier writes).
                // A version whose context already covers this event's dot (a peer's claim that
                // this node wrote more than it did) would make it obsolete: refuse the write
                // rather than lose it.
                // A writer's context may name only events this node holds: one naming more
                // would supersede, on every node, events nobody has seen yet.
                let beyond = match &writer_context {
                    Some(context) => context_beyond_held(context, &origins, &self.node, seq)?,
                    None => None,
                };
                let problem = if unreadable.is_some() {
                    unreadable
                } else if beyond.is_some() {
                    beyond
                } else if let Some(v) = versions
                    .events()
                    .iter()
                    .find(|v| v.context.covers(&event.dot()))
                {
                    Some(format!(
                        "key {:?} of collection {:?} holds version {}:{} whose causal context claims this node's sequence number {} already; this node never issued it (a peer sent a forged or corrupt context)",
                        String::from_utf8_lossy(&event.key),
                        event.collection,
                        v.origin,
                        v.seq,
                        event.seq
                    ))
                } else {
                    // An event that could not be read back would stop every reader of the key
                    // and of the changelog: never write one (`check_encoded` says what reading
                    // it back would, without doing it).
                    event
                        .check_encoded(event_bytes.len(), &limits)
                        .err()
                        .map(|e| {
                            format!(
                                "the event could not be read back within the store's limits: {e}"
                            )
                        })
                };
                if let Some(reason) = problem {
                    made.push((event, writer_context));
                    return Err(StoreError::WriteRefused { index, reason });
                }
                position += 1;
                match old_hash {
                    Some(h) => digest.sub(h),
                    None => entries += 1,
                }
                changelog.insert(
                    log_key(self.node.as_str(), seq).as_slice(),
                    event_bytes.as_slice(),
                )?;
                // A run between seals stays within SEAL_EVERY_BYTES, or is one event alone: seal
                // what came before an event that would push it past.
                if unsealed > 0 && unsealed_bytes + event_bytes.len() > SEAL_EVERY_BYTES {
                    let seal = self.seal_own(seq - 1, chain, &block).map_err(|e| {
                        StoreError::WriteRefused {
                            index,
                            reason: e.to_string(),
                        }
                    })?;
                    seals::put(&mut seals_t, &seal)?;
                    (unsealed, unsealed_bytes) = (0, 0);
                    block.clear();
                }
                let leaf = event_leaf(&event_bytes);
                chain = chain_link(&chain, &leaf);
                block.push(seq, leaf);
                unsealed += 1;
                unsealed_bytes += event_bytes.len();
                if unsealed >= SEAL_EVERY_EVENTS || unsealed_bytes >= SEAL_EVERY_BYTES {
                    let seal = self.seal_own(seq, chain, &block).map_err(|e| {
                        StoreError::WriteRefused {
                            index,
                            reason: e.to_string(),
                        }
                    })?;
                    seals::put(&mut seals_t, &seal)?;
                    (unsealed, unsealed_bytes) = (0, 0);
                    block.clear();
                }
                // The key holds this event alone unless its writer's context left versions
                // it did not see: those stay, concurrent with it, and are resolved below.
                let new_bytes = if versions.dots().all(|d| event.context.covers(&d)) {
                    Versions::encode_single(&event_bytes)
                } else {
                    versions.apply(EncodedEvent::new(event.clone()));
                    unresolved.concurrent(&event.collection, skey.clone());
                    versions.encode()
                };
                let new_hash = self
                    .rule
                    .entry(&event.collection, &event.key, &new_bytes, &limits);
                digest.add(new_hash);
                aae_rows.set(&skey, old_hash, new_hash);
                state.insert(skey.as_slice(), new_bytes.as_slice())?;
                out.push(Committed { seq, hlc, position });
                made.push((event, writer_context));
            }
            tally = unresolved.resolve(&mut state, &mut aae_rows, &mut digest, &limits)?;
            if let Some(first) = out.first() {
                if unsealed > 0 {
                    let seal = self.seal_own(seq, chain, &block).map_err(|e| {
                        StoreError::WriteRefused {
                            index: out.len() - 1,
                            reason: e.to_string(),
                        }
                    })?;
                    seals::put(&mut seals_t, &seal)?;
                }
                chains.insert(
                    self.node.as_str(),
                    seals::encode_head(seq, &chain).as_slice(),
                )?;
                feed.insert(
                    first.position,
                    self.node.as_str(),
                    first.seq,
                    out.len() as u64,
                )?;
                origins.insert(self.node.as_str(), seq)?;
                Counters {
                    position,
                    digest,
                    entries,
                }
                .save(&mut meta)?;
                meta.insert(META_HLC, &hlc_bytes(clock.last())[..])?;
            }
            let keys = if receipts.is_empty() {
                None
            } else {
                Some(self.idempotency_index.record(
                    &mut txn.open_table(idempotency::IDEMPOTENCY)?,
                    &mut meta,
                    receipts,
                    &out,
                    self.idempotency_window,
                    wall_ms,
                )?)
            };
            (std::mem::take(&mut aae_rows.deltas), keys)
        };
        txn.commit()?;
        self.aae.apply(&deltas.0);
        self.add_conflicts(tally);
        if let Some(keys) = deltas.1 {
            self.idempotency_index.apply(keys);
        }
        Ok(out)
    }

    /// Applies events written at other nodes (received by replication) in one durable
    /// transaction. Idempotent: an event already held changes nothing. Each origin's events must
    /// come without gaps (sequence `n + 1` after `n`), else nothing is applied and the error says
    /// which event is missing. Returns, per event, what it did to its key's versions
    /// ([`Applied::Duplicate`] also for an event already in the changelog).
    pub fn apply_events<E: Into<EncodedEvent>>(
        &self,
        events: Vec<E>,
    ) -> Result<Vec<Applied>, StoreError> {
        let events = events.into_iter().map(Received::as_received).collect();
        Ok(self
            .apply_in(events, None, &[], Sync::Immediate, None)?
            .applied)
    }

    /// [`StoreWriter::apply_events`] for events received from peers: `clock` observes each event's
    /// hybrid clock timestamp and its last value is saved in the same transaction, so the clock
    /// never goes back across a restart. A timestamp too far ahead of `wall_ms` is still applied
    /// (refusing it would stall its origin forever and break convergence) but does not move the
    /// clock; it is counted in the returned [`RemoteApply::skewed`]. Each event's changelog
    /// entry is the event as received; its effect on the state is its [`OnApply`]. The dead
    /// letters `dead_letters` (each of one of these events) are written in the same transaction,
    /// each only if its event is new to the changelog (see [`EventDeadLetter`]).
    pub fn apply_remote(
        &self,
        events: Vec<Received>,
        dead_letters: &[EventDeadLetter],
        sync: Sync,
        clock: &mut HlcClock,
        wall_ms: u64,
    ) -> Result<RemoteApply, StoreError> {
        self.apply_observed(events, None, dead_letters, sync, clock, wall_ms)
    }

    /// Has `clock` observe the events' timestamps, then applies them (see
    /// [`StoreWriter::apply_remote`]). The clock moves only if they are applied: a batch refused
    /// (forged, a gap) must not push this node's timestamps ahead.
    pub(crate) fn apply_observed(
        &self,
        events: Vec<Received>,
        sealed: Option<seals::Sealed<'_>>,
        dead_letters: &[EventDeadLetter],
        sync: Sync,
        clock: &mut HlcClock,
        wall_ms: u64,
    ) -> Result<RemoteApply, StoreError> {
        let mut skewed = 0;
        let mut skewed_by_origin = BTreeMap::new();
        let mut observed = clock.clone();
        for r in &events {
            if let Err(e) = observed.observe(r.event.hlc, wall_ms) {
                skewed += 1;
                let ahead = skewed_by_origin.entry(r.event.origin.clone()).or_insert(0);
                *ahead = e.ahead_ms.max(*ahead);
            }
        }
        let mut out = self.apply_in(events, sealed, dead_letters, sync, Some(observed.last()))?;
        *clock = observed;
        out.skewed = skewed;
        out.skewed_by_origin = skewed_by_origin;
        Ok(out)
    }

    /// [`StoreWriter::apply_remote`] for events whose origins vouch for them: each origin's events in
    /// the batch must end at one of `seals`, every seal must match the origin's chain over the
    /// events (from the chain head this store holds) and verify with the origin's certificate
    /// (`certs` brings certificates the store may lack). Otherwise nothing is applied:
    /// [`StoreError::Forged`].
    #[allow(clippy::too_many_arguments)]
    pub fn apply_sealed(
        &self,
        events: Vec<Received>,
        seals: &[Seal],
        certs: &[(NodeId, Vec<u8>)],
        dead_letters: &[EventDeadLetter],
        sync: Sync,
        clock: &mut HlcClock,
        wall_ms: u64,
    ) -> Result<RemoteApply, StoreError> {
        self.apply_observed(
            events,
            Some((seals, certs)),
            dead_letters,
            sync,
            clock,
            wall_ms,
        )
    }

    /// Signs this node's own seals made while it had no keys (before it had a TLS identity), so
    /// that peers can check its earlier events too. Returns how many it signed.
    pub fn sign_unsigned_seals(&self) -> Result<u64, StoreError> {
        let Some(keys) = &self.keys else {
            return Ok(0);
        };
        let mut signed = 0;
        loop {
            let txn = self.db.begin_write()?;
            let mut n = 0;
            {
                let mut table = txn.open_table(SEALS)?;
                let (lo, hi) = (
                    log_key(self.node.as_str(), 0),
                    log_key(self.node.as_str(), u64::MAX),
                );
                let mut unsigned = Vec::new();
                for row in table.range(lo.as_slice()..=hi.as_slice())? {
                    let (k, v) = row?;
                    if v.value().len() == 72 {
                        let seq = log_seq(self.node.as_str(), k.value())
                            .ok_or_else(|| corrupt("seals", "a key of another origin in range"))?;
                        unsigned.push(seals::decode(&self.node, seq, v.value())?);
                        if unsigned.len() == 10_000 {
                            break;
                        }
                    }
                }
                for mut seal in unsigned {
                    seal.signature = keys
                        .sign(&seal.message())
                        .map_err(|e| corrupt("seals", format!("cannot sign: {e}")))?;
                    seals::put(&mut table, &seal)?;
                    n += 1;
                }
            }
            txn.commit()?;
            signed += n;
            if n < 10_000 {
                return Ok(signed);
            }
        }
    }

    /// Makes every earlier [`Sync::Deferred`] commit durable (an empty immediate commit).
    pub fn sync(&self) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(redb::Durability::Immediate)?;
        txn.commit()?;
        Ok(())
    }

    /// Records that this build runs the store: its format (a format this build continues is
    /// raised to its own, which older builds then refuse) and `limits` (see
    /// [`StoreWriter::record_limits`]). Called once a start's checks all passed. Returns the
    /// format it raised the store from, if it did (so the caller can say that older builds
    /// no longer open it).
    pub fn record_open(&self, limits: &EventLimits) -> Result<Option<u64>, StoreError> {
        let txn = self.db.begin_write()?;
        let raised_from;
        {
            let mut meta = txn.open_table(META)?;
            let found = match meta.get(META_STORE_FORMAT)? {
                Some(g) => u64_from(g.value(), "meta")?,
                None => STORE_FORMAT,
            };
            raised_from = (found < STORE_FORMAT).then_some(found);
            meta.insert(META_STORE_FORMAT, &STORE_FORMAT.to_be_bytes()[..])?;
            // Lower limits were checked at open against everything stored: the record goes
            // down to them (else it keeps the highest each limit has been).
            let held = if self.lowering_limits {
                Vec::new()
            } else {
                held_limits(&meta)?
            };
            record_limits(&mut meta, &held, limits)?;
        }
        txn.commit()?;
        Ok(raised_from)
    }

    /// Records `limits` as ones the store was written under (each kept at the highest it has
    /// been; a start under lower ones is refused): before a reload raises them.
    pub fn record_limits(&self, limits: &EventLimits) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            let held = held_limits(&meta)?;
            record_limits(&mut meta, &held, limits)?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Records a run of the node: its feed `generation` and the feed position it opened at, after
    /// the runs before it (the oldest dropped past [`FEED_RUNS_KEPT`]). Returns every run kept,
    /// oldest first, this one last. A watch cursor given by a run is good up to the lowest
    /// position any later run opened at: past it, a run that lost history (a restore, a crash
    /// losing periodic commits) may have numbered other events.
    pub fn record_feed_run(
        &self,
        generation: u64,
        opened_at: u64,
    ) -> Result<Vec<(u64, u64)>, StoreError> {
        let txn = self.db.begin_write()?;
        let runs = {
            let mut meta = txn.open_table(META)?;
            let mut runs: Vec<(u64, u64)> = match meta.get(META_FEED_RUNS)? {
                Some(g) => g
                    .value()
                    .chunks(16)
                    .map(|c| {
                        let (generation, opened_at) = c.split_at(c.len().min(8));
                        Ok((u64_from(generation, "meta")?, u64_from(opened_at, "meta")?))
                    })
                    .collect::<Result<_, StoreError>>()?,
                None => Vec::new(),
            };
            runs.push((generation, opened_at));
            let extra = runs.len().saturating_sub(FEED_RUNS_KEPT);
            runs.drain(..extra);
            let bytes: Vec<u8> = runs
                .iter()
                .flat_map(|(g, o)| g.to_be_bytes().into_iter().chain(o.to_be_bytes()))
                .collect();
            meta.insert(META_FEED_RUNS, bytes.as_slice())?;
            runs
        };
        txn.commit()?;
        Ok(runs)
    }

    /// Saves the node's record of what decides each collection (read back with
    /// [`crate::Store::recorded_deciders`]), durably.
    pub fn record_deciders(&self, record: &str) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        txn.open_table(META)?
            .insert(META_DECIDERS, record.as_bytes())?;
        txn.commit()?;
        Ok(())
    }

    /// Saves what a peer acknowledged holding (per origin, the highest sequence number), without
    /// waiting for the disk: a cursor is advice (status, lag), never what a session resumes from
    /// (the peer's `Hello` is), so losing the latest one in a crash costs nothing.
    pub fn save_peer_cursor(&self, peer: &str, have: &Have) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(redb::Durability::None)?;
        {
            let mut peers = txn.open_table(PEERS)?;
            let mut bytes = Vec::new();
            let mut e = minicbor::Encoder::new(&mut bytes);
            e.map(have.len() as u64).map_err(|e| corrupt("peers", e))?;
            for (origin, seq) in have {
                e.str(origin.as_str()).map_err(|e| corrupt("peers", e))?;
                e.u64(*seq).map_err(|e| corrupt("peers", e))?;
            }
            peers.insert(peer, bytes.as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Saves when each peer of `heard` was last heard from, or since when it is awaited, and
    /// when each peer of `progress` last acknowledged more (wall clock, ms), in one transaction
    /// that does not wait for the disk (like a cursor, it is advice: losing the latest costs a
    /// little retention).
    pub fn save_peers_heard(
        &self,
        heard: &BTreeMap<NodeId, crate::Heard>,
        progress: &BTreeMap<NodeId, u64>,
    ) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(redb::Durability::None)?;
        {
            let mut table = txn.open_table(PEERS_HEARD)?;
            for (peer, heard) in heard {
                table.insert(peer.as_str(), heard.encode())?;
            }
            let mut table = txn.open_table(PEERS_PROGRESS)?;
            for (peer, at_ms) in progress {
                table.insert(peer.as_str(), at_ms)?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Records, durably and for good, that another history of this node's own events was
    /// proven at `seq` (the first record stands): the node refuses local writes on this store
    /// from then on, also after a restart, since every one would extend a history some peers
    /// refuse (acknowledged, then lost).
    pub fn record_own_fork(&self, seq: u64) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(redb::Durability::Immediate)?;
        {
            let mut meta = txn.open_table(META)?;
            if meta_u64(&meta, META_OWN_FORK)? == 0 {
                meta.insert(META_OWN_FORK, &seq.max(1).to_be_bytes()[..])?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Applies `events` (see [`StoreWriter::apply_sealed`]); with `sealed` `None` the events are
    /// trusted (tests, tools): their chains are computed and an unsigned seal ends each run.
    pub(crate) fn apply_in(
        &self,
        events: Vec<Received>,
        sealed: Option<seals::Sealed<'_>>,
        dead_letters: &[EventDeadLetter],
        sync: Sync,
        hlc_last: Option<Hlc>,
    ) -> Result<RemoteApply, StoreError> {
        let limits = self.limits();
        let forged = |origin: &NodeId, seq: u64, reason: String| StoreError::Forged {
            origin: origin.to_string(),
            seq,
            reason,
        };
        // Certificates first: the seals below may need them.
        self.learn_certs(sealed)
            .map_err(|(origin, reason)| forged(&origin, 0, format!("its certificate: {reason}")))?;
        let seal_at: BTreeMap<(&str, u64), &Seal> = sealed
            .map(|(seals, _)| seals)
            .unwrap_or_default()
            .iter()
            .map(|s| ((s.origin.as_str(), s.seq), s))
            .collect();
        let mut txn = self.db.begin_write()?;
        // Dead letters are durable when committed, whatever the sync asked: their ids are
        // listed at once, and ids given in a commit a crash lost would be given again to
        // other records (a delete by id would then remove the wrong one).
        txn.set_durability(if dead_letters.is_empty() {
            sync.redb()
        } else {
            redb::Durability::Immediate
        })?;
        let mut out = Vec::with_capacity(events.len());
        let mut left_out_of_damaged_rows = 0u64;
        // Each event that earned a dead letter (by the index of one of its), and those of them
        // this transaction writes into the changelog.
        let wanted: BTreeMap<(&NodeId, u64), usize> = dead_letters
            .iter()
            .enumerate()
            .map(|(i, d)| ((&d.origin, d.seq), i))
            .collect();
        let mut earned: BTreeSet<usize> = BTreeSet::new();
        let tally;
        let (held, feed_last, forks, deltas, keys_restored) = {
            let mut state = txn.open_table(STATE)?;
            let mut changelog = txn.open_table(CHANGELOG)?;
            let mut feed = crate::feed::FeedWriter::open(&txn)?;
            let mut origins = txn.open_table(ORIGINS)?;
            let mut meta = txn.open_table(META)?;
            let mut chains = txn.open_table(CHAINS)?;
            let mut seals_t = txn.open_table(SEALS)?;
            let mut index = aae::Writes::new(self.fingerprints);
            let mut unresolved = Unresolved::new(self.resolver.as_deref(), &self.rule);
            seals::put_certs(&txn, sealed)?;
            // Before anything is written, one pass walks each origin's chain over its new
            // events (their canonical bytes, as received), checking the batch's seals on the way: a seal that
            // does not verify is a forgery (nothing is applied); one that verifies but that
            // the events do not chain to from this node's history is a fork (two histories the
            // origin signed; events changed under it are a forgery where the seal covers their
            // block exactly, see `walk_chains`). That origin's events are left out, the rest
            // applied.
            let (walks, forks) = walk_chains(
                events.iter().map(|r| &r.event),
                &seal_at,
                &origins,
                &chains,
                self.keys.as_deref(),
            )?;
            let Counters {
                mut position,
                mut digest,
                mut entries,
            } = Counters::load(&meta)?;
            // The feed run being built: (first position, origin, first seq, count).
            let mut run: Option<(u64, String, u64, u64)> = None;
            let mut keys_restored = false;
            // Per origin seen in the batch, the highest sequence number held (saved at the end).
            let mut held_by_origin: Have = Have::new();
            for Received { event, on_apply } in events {
                if forks.contains_key(&event.origin) {
                    // The other history of a forked origin: not this node's to take.
                    out.push(Applied::Obsolete);
                    continue;
                }
                // Each origin's events up to `held` are held (in the changelog from its
                // compacted floor on, in the state through a snapshot below it), so an event is
                // already held exactly when its sequence number is at most `held`.
                let held = match held_by_origin.get(&event.origin) {
                    Some(&h) => h,
                    None => {
                        let h = origins.get(event.origin.as_str())?.map_or(0, |g| g.value());
                        held_by_origin.insert(event.origin.clone(), h);
                        h
                    }
                };
                if event.seq <= held {
                    out.push(Applied::Duplicate);
                    continue;
                }
                if Some(event.seq) != held.checked_add(1) {
                    return Err(StoreError::Gap {
                        origin: event.origin.to_string(),
                        seq: event.seq,
                        expected: held.saturating_add(1),
                    });
                }
                let lkey = log_key(event.origin.as_str(), event.seq);
                changelog.insert(lkey.as_slice(), event.bytes())?;
                if let Some(&i) = wanted.get(&(&event.origin, event.seq)) {
                    earned.insert(i);
                }
                // This node's own write back from a peer (its store was restored or lost
                // data): the keys it was sent with, whose records went with the store.
                if event.origin == self.node {
                    keys_restored |= idempotency::keep_restored(&txn, &event)?;
                }
                if let Some(h) = held_by_origin.get_mut(&event.origin) {
                    *h = event.seq;
                }
                position += 1;
                run = match run {
                    Some((start, origin, first, count))
                        if origin == event.origin.as_str() && first + count == event.seq =>
                    {
                        Some((start, origin, first, count + 1))
                    }
                    other => {
                        if let Some((start, origin, first, count)) = other {
                            feed.insert(start, origin.as_str(), first, count)?;
                        }
                        Some((position, event.origin.to_string(), event.seq, 1))
                    }
                };
                let event = match on_apply {
                    OnApply::AsReceived => event,
                    OnApply::Value(value) => {
                        // This node's version of the event (a transform on apply decided it):
                        // the one event encoded again on this path.
                        let mut event = event.into_event();
                        event.op = if value.is_some() { Op::Put } else { Op::Delete };
                        event.value = value;
                        EncodedEvent::new(event)
                    }
                    OnApply::Dropped => {
                        out.push(Applied::Obsolete);
                        continue;
                    }
                };
                let (applied, damage) = apply_to_state(
                    &mut state,
                    &mut index,
                    &mut digest,
                    &mut entries,
                    &limits,
                    event,
                    true,
                    false,
                    &mut unresolved,
                )?;
                left_out_of_damaged_rows += u64::from(damage == RowDamage::LeftOut);
                out.push(applied);
            }
            tally = unresolved.resolve(&mut state, &mut index, &mut digest, &limits)?;
            // Each origin given new events ends at one of the batch's seals (trusted events: an
            // unsigned seal ends the run); its chain head moves to the end.
            for (origin, w) in &walks {
                if w.seq == w.held || forks.contains_key(origin) {
                    continue;
                }
                for seal in &w.sealed {
                    seals::put(&mut seals_t, seal)?;
                }
                let sealed_upto = w.sealed.last().map_or(w.held, |s| s.seq);
                if sealed_upto != w.seq {
                    if sealed.is_some() {
                        return Err(forged(
                            origin,
                            w.seq,
                            format!(
                                "the batch ends at {}, after its last seal (at {sealed_upto})",
                                w.seq
                            ),
                        ));
                    }
                    seals::put(
                        &mut seals_t,
                        &Seal {
                            origin: origin.clone(),
                            seq: w.seq,
                            first: w.block.first,
                            chain: w.chain,
                            root: w.block.root(),
                            signature: Vec::new(),
                        },
                    )?;
                }
                chains.insert(
                    origin.as_str(),
                    seals::encode_head(w.seq, &w.chain).as_slice(),
                )?;
            }
            for (origin, seq) in &held_by_origin {
                origins.insert(origin.as_str(), *seq)?;
            }
            if let Some((start, origin, first, count)) = run {
                feed.insert(start, origin.as_str(), first, count)?;
                Counters {
                    position,
                    digest,
                    entries,
                }
                .save(&mut meta)?;
            }
            if let Some(hlc) = hlc_last {
                meta.insert(META_HLC, &hlc_bytes(hlc)[..])?;
            }
            (
                held_by_origin,
                position,
                forks,
                std::mem::take(&mut index.deltas),
                keys_restored,
            )
        };
        // Only now: what the batch sets aside goes with its events (not with those held
        // already or left out as a fork's).
        let kept: Vec<&[u8]> = dead_letters
            .iter()
            .filter(|d| {
                wanted
                    .get(&(&d.origin, d.seq))
                    .is_some_and(|i| earned.contains(i))
            })
            .map(|d| d.record.as_slice())
            .collect();
        let dead_ids = append_dead_letters(self, &txn, &kept)?;
        txn.commit()?;
        if keys_restored {
            self.keys_restored
                .store(true, std::sync::atomic::Ordering::Release);
        }
        self.aae.apply(&deltas);
        self.add_conflicts(tally);
        Ok(RemoteApply {
            applied: out,
            dead_letters: dead_ids,
            held,
            feed_last,
            skewed: 0,
            skewed_by_origin: BTreeMap::new(),
            forks: forks.into_values().collect(),
            left_out_of_damaged_rows,
        })
    }

    /// Appends a dead-letter record (opaque bytes; the plugin runtime defines their content) and
    /// returns its id.
    pub fn add_dead_letter(&self, record: &[u8]) -> Result<u64, StoreError> {
        let txn = self.db.begin_write()?;
        let ids = append_dead_letters(self, &txn, &[record])?;
        txn.commit()?;
        ids.first()
            .copied()
            .ok_or_else(|| corrupt("dead_letters", "a dead letter appended got no id"))
    }

    /// Removes dead letter `id`; whether it was there.
    pub fn remove_dead_letter(&self, id: u64) -> Result<bool, StoreError> {
        let txn = self.db.begin_write()?;
        let removed = txn.open_table(DEAD_LETTERS)?.remove(id)?.map(|record| {
            let mut usage = DeadLetterUsage::default();
            usage.add(record.value().len());
            usage
        });
        let mut meta = txn.open_table(META)?;
        keep_dead_letter_high(&mut meta, self.dead_letter_ids.high())?;
        count_dead_letters(&mut meta, Default::default(), removed.unwrap_or_default())?;
        drop(meta);
        txn.commit()?;
        Ok(removed.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Collection names come from clients and peers: past the first [`TALLY_COLLECTIONS`], the
    /// tally counts them under one name, and every conflict is still counted.
    #[test]
    fn a_conflict_tally_names_a_bounded_number_of_collections() {
        let mut tally = ConflictTally::default();
        for i in 0..TALLY_COLLECTIONS + 10 {
            let c = format!("c-{i}");
            tally.add(ConflictTally {
                conflicts: [(c.clone(), 2)].into(),
                resolutions: [((c, "lww".to_owned()), 1)].into(),
            });
        }
        assert_eq!(tally.conflicts.len(), TALLY_COLLECTIONS + 1);
        assert_eq!(tally.conflicts[TALLY_OTHER], 20);
        assert_eq!(tally.conflicts["c-0"], 2);
        assert_eq!(
            tally.conflicts.values().sum::<u64>(),
            2 * (TALLY_COLLECTIONS as u64 + 10)
        );
        assert_eq!(tally.resolutions.len(), TALLY_COLLECTIONS + 1);
        assert_eq!(
            tally.resolutions[&(TALLY_OTHER.to_owned(), "lww".to_owned())],
            10
        );
    }

    /// A peer never heard from is saved apart from a contact, and reads back as such.
    #[test]
    fn peers_heard_keeps_contacts_and_awaited_peers_apart() {
        let (store, _) = crate::Store::open_with_backend(
            redb::backends::InMemoryBackend::new(),
            "memory",
            &NodeId::parse("a").unwrap(),
            edgerep_wire::event::EventLimits::default(),
        )
        .unwrap();
        let writer = StoreWriter::new(store);
        let (b, c) = (NodeId::parse("b").unwrap(), NodeId::parse("c").unwrap());
        let saved = BTreeMap::from([
            (b.clone(), crate::Heard::At(1_796_000_000_000)),
            (c.clone(), crate::Heard::AwaitedSince(1_796_000_000_123)),
        ]);
        let progress = BTreeMap::from([(b.clone(), 1_796_000_000_050)]);
        writer.save_peers_heard(&saved, &progress).unwrap();
        assert_eq!(writer.reader().peers_progress().unwrap(), progress);
        assert_eq!(writer.reader().peers_heard().unwrap(), saved);
        // Heard from at last: the contact replaces the wait.
        let heard = BTreeMap::from([(c.clone(), crate::Heard::At(1_796_000_000_500))]);
        writer.save_peers_heard(&heard, &BTreeMap::new()).unwrap();
        assert_eq!(
            writer.reader().peers_heard().unwrap()[&c],
            crate::Heard::At(1_796_000_000_500)
        );
    }
}
