//! The changelog and state as the replica core reads them (its `Log`), over the store's
//! reading handle; the one write it needs (a sync before a state page) goes to the committer.

use super::*;

/// The changelog and state as the replica reads them.
pub struct StoreLog {
    store: Arc<Store>,
    /// This node's keys (its certificate goes with its seals, and peers' certificates learnt
    /// from their messages go with their origins' seals); `None` when it signs none.
    pub(super) keys: Option<Arc<crate::keys::NodeKeys>>,
    /// Set when some collections commit without syncing: the committer syncs before a state
    /// page is read, so that a snapshot never carries this node's own events a crash could
    /// take back.
    sync_before_state: Option<Committer>,
}

impl StoreLog {
    /// The log over `store`, for a store whose every commit is durable and whose seals carry
    /// no certificates (a node's store adds both with [`StoreLog::with_keys`] and
    /// [`StoreLog::syncing_before_state`]; the simulation runs on this alone).
    pub fn new(store: Arc<Store>) -> StoreLog {
        StoreLog {
            store,
            keys: None,
            sync_before_state: None,
        }
    }

    /// Sends this node's certificate with its seals, and peers' certificates with theirs.
    pub fn with_keys(mut self, keys: Option<Arc<crate::keys::NodeKeys>>) -> StoreLog {
        self.keys = keys;
        self
    }

    /// Has `committer` sync the store before each state page is read.
    pub fn syncing_before_state(mut self, committer: Committer) -> StoreLog {
        self.sync_before_state = Some(committer);
        self
    }
}

impl Log for StoreLog {
    fn state_page(
        &self,
        after: Option<&StateCursor>,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<StatePage, LogError> {
        let storage = |e: StoreError| LogError::Storage {
            reason: e.to_string(),
        };
        if let Some(committer) = &self.sync_before_state {
            committer.sync_blocking().map_err(|e| LogError::Storage {
                reason: format!("syncing before a state page: {e}"),
            })?;
        }
        let page = self
            .store
            .state_page(
                after.map(|(c, k)| (c.as_str(), k.as_slice())),
                max_events,
                max_bytes,
            )
            .map_err(storage)?;
        Ok(StatePage {
            versions: page.versions,
            proofs: page.proofs,
            seals: page.seals,
            next: page.next,
        })
    }

    fn read(
        &self,
        origin: &NodeId,
        after: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Read, LogError> {
        let storage = |e: StoreError| match e {
            StoreError::ChangelogCompacted { floor, .. } => LogError::Compacted {
                origin: origin.clone(),
                floor,
            },
            other => LogError::Storage {
                reason: other.to_string(),
            },
        };
        let events = self
            .store
            .changelog(origin.as_str(), after, max_events)
            .map_err(storage)?;
        let mut bytes = 0usize;
        let mut out = Vec::with_capacity(events.len());
        for event in events {
            // An estimate: the key, the value, and the fixed fields with room to spare.
            let size = event.key.len() + event.value.as_ref().map_or(0, |v| v.len()) + 128;
            if !out.is_empty() && bytes + size > max_bytes {
                break;
            }
            bytes += size;
            out.push(event);
        }
        let Some(last) = out.last().map(|e| e.seq) else {
            return Ok(Read::default());
        };
        let mut seals = self.store.seals(origin, after, last).map_err(storage)?;
        match seals.last().map(|s| s.seq) {
            // End at the last seal read.
            Some(sealed) => out.truncate((sealed - after) as usize),
            // No seal within the limits: read on to the next one (at most SEAL_EVERY_* more).
            None => {
                let Some(next) = self.store.next_seal(origin, last).map_err(storage)? else {
                    return Err(LogError::Inconsistent {
                        reason: format!("no seal of {origin} after {after}"),
                    });
                };
                let more = self
                    .store
                    .changelog(origin.as_str(), last, (next.seq - last) as usize)
                    .map_err(storage)?;
                out.extend(more);
                seals.push(next);
            }
        }
        Ok(Read { events: out, seals })
    }

    fn seal_at(&self, origin: &NodeId, seq: u64) -> Result<Option<Seal>, LogError> {
        let seals = self
            .store
            .seals(origin, seq.saturating_sub(1), seq)
            .map_err(|e| LogError::Storage {
                reason: e.to_string(),
            })?;
        Ok(seals.into_iter().find(|s| s.seq == seq))
    }

    fn cert(&self, origin: &NodeId) -> Option<Vec<u8>> {
        let keys = self.keys.as_ref()?;
        if origin == self.store.node() {
            return Some(keys.own_cert().to_vec());
        }
        self.store
            .cert(origin)
            .ok()
            .flatten()
            .or_else(|| keys.cert(origin))
    }
}
