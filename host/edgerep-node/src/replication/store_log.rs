//! The changelog and state as the replica core reads them (its `Log`), over the store's
//! reading handle; the one write it needs (a sync before a state page) goes to the committer.

use super::*;
use edgerep_wire::seal::MAX_CERTS_PER_ORIGIN;

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

/// How long reading one snapshot page may take on the replicator thread (every peer waits
/// meanwhile): past it the page ends at the key it reached, and the next page goes on from
/// there. A page's proofs may read a changelog block per version.
const PAGE_READ_TIME: std::time::Duration = std::time::Duration::from_millis(200);

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
            .state_page_within(after, max_events, max_bytes, PAGE_READ_TIME)
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
        // Rows past the byte budget are not decoded: a batch of large events reads about
        // `max_bytes`, not `max_events` of them.
        let events = self
            .store
            .changelog_page(origin.as_str(), after, max_events, max_bytes)
            .map_err(storage)?;
        let mut bytes = 0usize;
        let mut out = Vec::with_capacity(events.len());
        for event in events {
            // The bytes the event travels as (its metadata and causal context may be most of
            // them), and its byte string's head.
            let size = event.encoded_len() + 9;
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

    fn certs(&self, origin: &NodeId) -> Vec<Vec<u8>> {
        let Some(keys) = self.keys.as_ref() else {
            return Vec::new();
        };
        if origin == self.store.node() {
            return vec![keys.own_cert().to_vec()];
        }
        // Those stored first (they came with events this node holds), then those learnt since.
        let mut certs = self.store.certs_of(origin).unwrap_or_default();
        for der in keys.certs(origin) {
            if certs.len() < MAX_CERTS_PER_ORIGIN && !certs.contains(&der) {
                certs.push(der);
            }
        }
        certs
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use edgerep_replica::Log as _;
    use edgerep_store::{LocalWrite, StoreWriter};
    use edgerep_wire::event::EventLimits;
    use edgerep_wire::{HlcClock, Value};

    use super::*;

    /// A read stops at its byte budget counted in the events' encoded bytes, not in an estimate
    /// of key and value: events whose metadata is most of them were counted at about 140 bytes
    /// each, so a read of 1,024 of them (16 MB) passed what a frame holds, and the peer closed
    /// the connection at every resend.
    #[test]
    fn a_read_counts_what_the_events_weigh() {
        let node = NodeId::parse("a").unwrap();
        let limits = EventLimits {
            max_meta_bytes: 16_384,
            max_event_bytes: 1 << 20,
            ..EventLimits::default()
        };
        let (store, resume) = Store::open_with_backend(
            redb::backends::InMemoryBackend::new(),
            "memory",
            &node,
            limits,
        )
        .unwrap();
        let writer = StoreWriter::new(store);
        let mut clock = HlcClock::new(resume.hlc_last, 60_000);
        let writes = (0..1024)
            .map(|i| LocalWrite {
                collection: "c".into(),
                key: format!("k{i}").into_bytes(),
                value: Some(Value::from_json(&serde_json::json!(1), &Default::default()).unwrap()),
                schema: 0,
                meta: BTreeMap::from([("note".to_owned(), "x".repeat(16_000))]),
                context: None,
            })
            .collect();
        writer.commit_local(writes, &mut clock, 1).unwrap();
        let log = StoreLog::new(writer.reader());
        let budget = 1 << 20;
        let read = log.read(&node, 0, 1024, budget).unwrap();
        let bytes: usize = read.events.iter().map(|e| e.encoded_len()).sum();
        // Within the budget, and the block that ends at the next seal (SEAL_EVERY_BYTES).
        assert!(
            bytes <= budget + edgerep_wire::seal::SEAL_EVERY_BYTES,
            "{} events, {bytes} bytes",
            read.events.len()
        );
        assert!(!read.events.is_empty());
    }
}
