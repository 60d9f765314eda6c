//! Deterministic simulation of the replication core: N replicas, each a real [`Replica`] over an
//! in-memory durable store that applies events with the store's rules (the real
//! `Versions::apply`, idempotent, gapless per origin, all or nothing), wired through a simulated
//! network that loses, duplicates, reorders and delays messages, cuts and heals links, drops
//! sessions and crashes nodes (also between a durable apply and its ack). Nodes compact their
//! changelogs now and then (to any floor up to what they hold), so peers that fall behind a floor
//! get snapshots of the state, merged by the store's rules (`StoreWriter::install_snapshot`). Everything
//! is driven by one seeded PRNG on one thread, so a seed replays a run exactly.
//!
//! After the chaos, every fault is healed and the cluster must become quiescent, with identical
//! state and haves everywhere, each changelog holding exactly the events above its compacted
//! floors (the same events wherever two nodes hold one), every local write reflected everywhere,
//! and no event applied twice.
//!
//! Origins seal their events (a hash chain, "signed" with a per-origin keyed hash standing in
//! for the node key: only the origin's own code computes it), and stores check the seals of
//! what they apply and of a snapshot's have, as the real store does. With a byzantine node
//! (`Knobs::byzantine`), that node tampers with what it sends during the chaos: it changes
//! events it relays, appends events under other origins' names, strips seals, and claims
//! compacted floors and snapshot haves it cannot prove. The honest nodes must still converge,
//! and every event any node holds must be the one its origin wrote.
//!
//! Anti-entropy (`sim/aae.rs`) runs once the cluster is quiescent. In a run without drift
//! faults it must find nothing (clean runs report zero drift). With drift faults (`Knobs::damage`:
//! a key lost from a node's state or a version's bytes changed in place, behind the
//! bookkeeping's back; `Knobs::disagreeing`: a node whose resolver answers differently), the
//! states differ where replication cannot see it, and anti-entropy must find and repair every
//! difference before the end state is checked (resolutions included).
//!
//! `SIM_SEED=<seed>` runs one seed (twice, checking the trace is the same); `SIM_SEEDS=<n>` runs
//! n random seeds instead of the default 200 (and n/5 instead of 40 with heavy compaction);
//! `SIM_TRACE=1` prints every step of a `SIM_SEED` run.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Bound;

use edgerep_replica::{
    Fault, Have, Log, LogError, Message, MessageLimits, Output, Read, Replica, ReplicaConfig,
    StateCursor, StatePage,
};
use edgerep_store::{Applied, Versions};
use edgerep_wire::event::Dot;
use edgerep_wire::seal::{
    ChainHash, Proof, chain_link, chain_next, chain_start, event_leaf, merkle_root,
};
use edgerep_wire::{EncodedEvent, Event, Hlc, HlcClock, NodeId, Op, Seal, Value, VersionVector};

#[path = "sim/aae.rs"]
mod aae;
#[path = "sim/rng.rs"]
mod rng;
use rng::Rng;

/// FNV-1a over the trace, to check that a seed replays exactly.
struct Trace {
    hash: u64,
    print: bool,
}

impl Trace {
    fn add(&mut self, now: u64, line: impl FnOnce() -> String, bytes: &[u8]) {
        for b in now.to_le_bytes().iter().chain(bytes) {
            self.hash = (self.hash ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
        if self.print {
            println!("{now:>8} {}", line());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The durable store of one node.

type Key = (String, Vec<u8>);

/// What a node holds durably: survives crashes. Applies events by `StoreWriter::apply_events`' rules,
/// compacts and installs snapshots by `StoreWriter::compact`'s and `StoreWriter::install_snapshot`'s.
///
/// Invariant: per origin, the changelog holds exactly the events `compacted + 1 ..= have`.
struct MemLog {
    /// The node whose store this is.
    node: NodeId,
    changelog: BTreeMap<(NodeId, u64), EncodedEvent>,
    /// Encoded size of each changelog event.
    sizes: BTreeMap<(NodeId, u64), usize>,
    have: Have,
    /// Per origin, the highest sequence number removed from the changelog (compacted, or below
    /// a snapshot's have).
    compacted: Have,
    state: BTreeMap<Key, Versions>,
    hlc_last: Hlc,
    /// Per event written by replication, how many times an apply wrote it.
    applied: BTreeMap<(NodeId, u64), u32>,
    /// Events handed to apply that were already held above the compacted floor (the core failed
    /// to filter them).
    duplicates: u64,
    /// Applies refused for a gap.
    gaps: u64,
    /// Per origin, the chain head at `have` (kept across compaction).
    heads: BTreeMap<NodeId, (u64, ChainHash)>,
    /// The chain hash after each changelog event.
    chains: BTreeMap<(NodeId, u64), ChainHash>,
    /// Applies and snapshot pages refused because a seal was missing, wrong or not the origin's.
    forged: u64,
    /// Of those, snapshot pages refused because a version was not proven its origin's.
    forged_versions: u64,
    /// The seal of each event held, also of versions that came in a snapshot (every event is
    /// its own block in this model), and the seal of each have a snapshot raised.
    seals: BTreeMap<(NodeId, u64), Seal>,
    /// Keys whose resolution two nodes found they disagreed on, with the hash of the versions
    /// then held: resolved by the last-writer-wins default while they stay (see `sim/aae.rs`).
    settled: BTreeMap<Key, [u8; 32]>,
}

/// The stand-in for an origin's signature: a hash keyed by the signer. In this model only the
/// origin's own code calls it for its own events; a byzantine node uses it with its own id.
fn sign_as(signer: &NodeId, seal: &Seal) -> Vec<u8> {
    chain_next(&chain_start(signer), &seal.message()).to_vec()
}

/// A seal of `origin` over the block `first..=seq` signed by `signer`.
fn seal_by(
    signer: &NodeId,
    origin: &NodeId,
    first: u64,
    seq: u64,
    chain: ChainHash,
    root: ChainHash,
) -> Seal {
    let mut seal = Seal {
        origin: origin.clone(),
        seq,
        first,
        chain,
        root,
        signature: Vec::new(),
    };
    seal.signature = sign_as(signer, &seal);
    seal
}

/// Whether `seal` verifies as its origin's.
fn seal_valid(seal: &Seal) -> bool {
    seal.signature == sign_as(&seal.origin, seal)
}

impl MemLog {
    fn new(node: NodeId) -> MemLog {
        MemLog {
            node,
            changelog: BTreeMap::new(),
            sizes: BTreeMap::new(),
            have: Have::new(),
            compacted: Have::new(),
            state: BTreeMap::new(),
            hlc_last: Hlc::default(),
            applied: BTreeMap::new(),
            duplicates: 0,
            gaps: 0,
            heads: BTreeMap::new(),
            chains: BTreeMap::new(),
            forged: 0,
            forged_versions: 0,
            seals: BTreeMap::new(),
            settled: BTreeMap::new(),
        }
    }

    /// `version` as its origin wrote it, if this store can prove it (like the store's proofs:
    /// the changelog's event, else the version itself when its seal names it).
    fn provable(&self, version: &EncodedEvent) -> Option<EncodedEvent> {
        let dot = (version.origin.clone(), version.seq);
        if let Some(e) = self.changelog.get(&dot) {
            return Some(e.clone());
        }
        let seal = self.seals.get(&dot)?;
        (seal.root == event_leaf(version.bytes()) && seal_valid(seal)).then(|| version.clone())
    }

    fn seq(&self, origin: &NodeId) -> u64 {
        self.have.get(origin).copied().unwrap_or(0)
    }

    /// The compacted floor of `origin`.
    fn floor(&self, origin: &NodeId) -> u64 {
        self.compacted.get(origin).copied().unwrap_or(0)
    }

    /// Removes `origin`'s changelog entries `from ..= to`, which must all be there.
    fn remove_range(&mut self, origin: &NodeId, from: u64, to: u64) -> Result<(), String> {
        for seq in from..=to {
            let dot = (origin.clone(), seq);
            if self.changelog.remove(&dot).is_none() {
                return Err(format!(
                    "{}'s changelog lacks {origin}:{seq} (removing {from}..={to})",
                    self.node
                ));
            }
            self.sizes.remove(&dot);
        }
        Ok(())
    }

    /// The chain head of `origin` (its start when nothing of it is held).
    fn head(&self, origin: &NodeId) -> (u64, ChainHash) {
        self.heads
            .get(origin)
            .copied()
            .unwrap_or_else(|| (0, chain_start(origin)))
    }

    /// The origin's seal at `seq`, if this node holds one there.
    fn seal(&self, origin: &NodeId, seq: u64) -> Option<Seal> {
        self.seals.get(&(origin.clone(), seq)).cloned()
    }

    fn insert(&mut self, event: EncodedEvent) {
        let (_, head) = self.head(&event.origin);
        let leaf = event_leaf(event.bytes());
        let chain = chain_link(&head, &leaf);
        // What the origin signed (honest code only ever inserts what verified as the origin's,
        // or the node's own writes).
        let seal = seal_by(
            &event.origin,
            &event.origin,
            event.seq,
            event.seq,
            chain,
            leaf,
        );
        self.seals.insert((event.origin.clone(), event.seq), seal);
        self.heads.insert(event.origin.clone(), (event.seq, chain));
        self.chains.insert((event.origin.clone(), event.seq), chain);
        self.have.insert(event.origin.clone(), event.seq);
        self.state
            .entry((event.collection.clone(), event.key.clone()))
            .or_default()
            .apply(event.clone());
        self.sizes
            .insert((event.origin.clone(), event.seq), event.encoded_len());
        self.changelog
            .insert((event.origin.clone(), event.seq), event);
    }

    /// One durable transaction: idempotent (events the have covers are skipped: below the
    /// compacted floor they are not in the changelog), each origin gapless, else nothing is
    /// applied.
    fn apply(&mut self, events: &[EncodedEvent], seals: &[Seal]) -> Result<(), String> {
        let mut held = self.have.clone();
        for e in events {
            if e.seq <= self.seq(&e.origin) {
                continue;
            }
            let h = held.get(&e.origin).copied().unwrap_or(0);
            if e.seq != h + 1 {
                self.gaps += 1;
                return Err(format!("gap: {} seq {} after {h}", e.origin, e.seq));
            }
            held.insert(e.origin.clone(), e.seq);
        }
        // Like `StoreWriter::apply_sealed`: the chain over each origin's new events must match its
        // seals, each seal must be the origin's, and each origin's new events end at one.
        let at: BTreeMap<(&NodeId, u64), &Seal> =
            seals.iter().map(|s| ((&s.origin, s.seq), s)).collect();
        // Per origin: last event walked, chain there, last seal met, the block's leaves since.
        let mut chains: BTreeMap<&NodeId, (u64, ChainHash, u64, Vec<ChainHash>)> = BTreeMap::new();
        for e in events {
            if e.seq <= self.seq(&e.origin) {
                continue;
            }
            let c = chains.entry(&e.origin).or_insert_with(|| {
                let (seq, chain) = self.head(&e.origin);
                (seq, chain, seq, Vec::new())
            });
            c.0 = e.seq;
            let leaf = event_leaf(e.bytes());
            c.1 = chain_link(&c.1, &leaf);
            c.3.push(leaf);
            if let Some(seal) = at.get(&(&e.origin, e.seq)) {
                if seal.chain != c.1
                    || !seal_valid(seal)
                    || seal.first != c.2 + 1
                    || seal.root != merkle_root(&c.3)
                {
                    self.forged += 1;
                    return Err(format!("forged: {}:{} has no valid seal", e.origin, e.seq));
                }
                c.2 = e.seq;
                c.3.clear();
            }
        }
        if let Some((o, c)) = chains.iter().find(|(_, c)| c.0 != c.2) {
            self.forged += 1;
            return Err(format!(
                "forged: {o}'s events end at {} after its last seal",
                c.0
            ));
        }
        for e in events {
            if e.seq <= self.seq(&e.origin) {
                // At or below the floor, a snapshot installed after this Apply was handed out
                // covered it: legitimately redundant. Above, the core handed out an event twice,
                // unless it is this node's own: a peer may send those back (a node restored from
                // a backup takes them), and a local write may take the number meanwhile (only
                // a byzantine peer sends events of this node it never wrote; the seal check
                // refuses them when they come first).
                if e.seq > self.floor(&e.origin) && e.origin != self.node {
                    self.duplicates += 1;
                }
                continue;
            }
            *self.applied.entry((e.origin.clone(), e.seq)).or_default() += 1;
            self.insert(e.clone());
        }
        Ok(())
    }

    /// Removes the changelog entries of each origin up to its floor in `floors` (capped at what
    /// is held), like `StoreWriter::compact`. Returns how many were removed.
    fn compact(&mut self, floors: &Have) -> Result<u64, String> {
        let mut removed = 0;
        for (origin, &floor) in floors {
            let (done, to) = (self.floor(origin), floor.min(self.seq(origin)));
            if to <= done {
                continue;
            }
            self.remove_range(origin, done + 1, to)?;
            self.compacted.insert(origin.clone(), to);
            removed += to - done;
        }
        Ok(removed)
    }

    /// Merges a page of a peer's state in one durable transaction, like
    /// `StoreWriter::install_snapshot`: each version applied like an event; on the last page (`have`
    /// given), for each origin where `have` is ahead, the changelog gives up its entries and
    /// both the have and the compacted floor move to it. A snapshot claiming more of this node's
    /// own events than it holds is refused (nothing changes). Returns the keys changed.
    fn install(
        &mut self,
        versions: Vec<EncodedEvent>,
        proofs: &[Proof],
        have: Option<&Have>,
        seals: &[Seal],
    ) -> Result<u64, String> {
        // Like `StoreWriter::install_sealed`: every version proven its origin's, or nothing merged.
        let at: BTreeMap<(&NodeId, u64), &Seal> =
            seals.iter().map(|s| ((&s.origin, s.seq), s)).collect();
        if proofs.len() != versions.len() {
            self.forged += 1;
            return Err("forged: a version without a proof".into());
        }
        for (v, p) in versions.iter().zip(proofs) {
            match at.get(&(&v.origin, p.seal)) {
                Some(seal) if seal_valid(seal) && seal.proves(v.seq, v.bytes(), &p.path) => {}
                _ => {
                    self.forged += 1;
                    self.forged_versions += 1;
                    return Err(format!(
                        "forged: version {}:{} is not proven",
                        v.origin, v.seq
                    ));
                }
            }
        }
        // Like `StoreWriter::install_sealed`: a have moves only with its origin's seal there.
        for (origin, &seq) in have.into_iter().flatten() {
            if seq > self.seq(origin)
                && !seals
                    .iter()
                    .any(|s| s.origin == *origin && s.seq == seq && seal_valid(s))
            {
                self.forged += 1;
                return Err(format!(
                    "forged: snapshot claims {origin} up to {seq} without its seal"
                ));
            }
        }
        if let Some(&own) = have.and_then(|h| h.get(&self.node))
            && own > self.seq(&self.node)
        {
            return Err(format!(
                "snapshot refused: it reflects this node's events up to {own}, but this node \
                 holds only {}",
                self.seq(&self.node)
            ));
        }
        let mut changed = 0;
        for (v, p) in versions.into_iter().zip(proofs) {
            let key = (v.collection.clone(), v.key.clone());
            let dot = (v.origin.clone(), v.seq);
            if self.state.entry(key).or_default().apply(v) == Applied::Added {
                changed += 1;
                let seal = at[&(&dot.0, p.seal)].clone();
                self.seals.insert(dot, seal);
            }
        }
        for (origin, &seq) in have.into_iter().flatten() {
            let held = self.seq(origin);
            if seq <= held {
                continue;
            }
            self.remove_range(origin, self.floor(origin) + 1, held)?;
            self.have.insert(origin.clone(), seq);
            self.compacted.insert(origin.clone(), seq);
            if let Some(seal) = seals.iter().find(|s| s.origin == *origin && s.seq == seq) {
                self.heads.insert(origin.clone(), (seq, seal.chain));
                self.seals.insert((origin.clone(), seq), seal.clone());
            }
        }
        Ok(changed)
    }
}

impl Log for MemLog {
    fn read(
        &self,
        origin: &NodeId,
        after: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Read, LogError> {
        let floor = self.floor(origin);
        if after < floor {
            return Err(LogError::Compacted {
                origin: origin.clone(),
                floor,
            });
        }
        let mut out = Vec::new();
        let mut bytes = 0;
        for (dot, e) in self
            .changelog
            .range((origin.clone(), after + 1)..=(origin.clone(), u64::MAX))
            .take(max_events)
        {
            bytes += self.sizes[dot];
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(e.clone());
        }
        // Every event is a seal point here.
        let seals = out
            .iter()
            .filter_map(|e| self.seal(&e.origin, e.seq))
            .collect();
        Ok(Read { events: out, seals })
    }

    fn seal_at(&self, origin: &NodeId, seq: u64) -> Result<Option<Seal>, LogError> {
        Ok(self.seal(origin, seq))
    }

    fn certs(&self, _: &NodeId) -> Vec<Vec<u8>> {
        Vec::new()
    }

    /// Like `Store::state_page`: whole keys in (collection, key) order, within the limits except
    /// that the first key always comes whole (the store splits one over the limits by itself:
    /// the simulation's keys never are).
    fn state_page(
        &self,
        after: Option<&StateCursor>,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<StatePage, LogError> {
        let after: Option<Key> = after.map(|a| (a.collection.clone(), a.key.clone()));
        let rows = match &after {
            Some(a) => self
                .state
                .range::<Key, _>((Bound::Excluded(a), Bound::Unbounded)),
            None => self.state.range::<Key, _>(..),
        };
        let (mut versions, mut bytes) = (Vec::new(), 0usize);
        let mut last: Option<Key> = None;
        let mut next = None;
        for (key, v) in rows {
            let size: usize = v.events().iter().map(|e| e.encoded_len() + 300).sum();
            if last.is_some()
                && (versions.len() + v.events().len() > max_events || bytes + size > max_bytes)
            {
                next = last;
                break;
            }
            last = Some(key.clone());
            bytes += size;
            // Each version as its origin wrote it; one nothing here proves (changed in place,
            // its event compacted: damage) is left out, as the store leaves it out.
            versions.extend(v.events().iter().filter_map(|e| self.provable(e)));
        }
        // Every event is its own block here: its seal proves it with an empty path.
        let (mut proofs, mut seals) = (Vec::new(), Vec::new());
        for v in &versions {
            let seal = self
                .seal(&v.origin, v.seq)
                .ok_or_else(|| LogError::Inconsistent {
                    reason: format!(
                        "{} holds version {}:{} without its seal",
                        self.node, v.origin, v.seq
                    ),
                })?;
            proofs.push(Proof {
                seal: v.seq,
                path: Vec::new(),
            });
            seals.push(seal);
        }
        Ok(StatePage {
            versions,
            proofs,
            seals,
            next: next.map(|(c, k)| StateCursor::after_key(c, k)),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The cluster.

/// Work the core handed a node's store, done one at a time in the order yielded.
enum Work {
    /// An [`Output::Apply`].
    Apply {
        peer: NodeId,
        events: Vec<EncodedEvent>,
        seals: Vec<Seal>,
    },
    /// An [`Output::InstallSnapshot`].
    Install {
        peer: NodeId,
        versions: Vec<EncodedEvent>,
        proofs: Vec<Proof>,
        have: Option<Have>,
        seals: Vec<Seal>,
    },
}

struct Node {
    id: NodeId,
    log: MemLog,
    /// `None` while the node is down.
    replica: Option<Replica>,
    /// Apply and InstallSnapshot outputs not done yet, in order (volatile: lost in a crash).
    applies: VecDeque<Work>,
    down_until: u64,
    /// Wall clock offset of this node, in ms.
    skew: u64,
}

/// A message on the wire.
struct Packet {
    from: usize,
    to: usize,
    /// The session it belongs to: it dies with it.
    epoch: u64,
    bytes: Vec<u8>,
}

/// What one run varies.
#[derive(Clone, Copy)]
struct Knobs {
    nodes: usize,
    chaos_steps: u64,
    write_per_mille: u64,
    loss: u64,
    duplicate: u64,
    reorder: u64,
    cut: u64,
    disconnect: u64,
    crash: u64,
    crash_after_apply: u64,
    apply_failure: u64,
    /// Per mille per step: a node compacts its changelog (each origin to a random floor up to
    /// what it holds), forcing snapshots on peers behind the floors.
    compact: u64,
    /// Links never connected in the whole run.
    cut_forever: &'static [(usize, usize)],
    /// A node down from `absent_from` until `absent_until` (long-absence catch-up).
    absent: Option<(usize, u64, u64)>,
    /// During absence, writes per step on the other nodes (the backlog).
    backlog_writes: u64,
    fault: Option<Fault>,
    /// This node tampers with what it sends during the chaos (see the module docs).
    byzantine: Option<usize>,
    /// Per mille per chaos step: a node's state loses a key or has a version changed in place,
    /// behind the bookkeeping's back.
    damage: u64,
    /// This node's resolver picks another version than the others'.
    disagreeing: Option<usize>,
}

impl Knobs {
    /// Three nodes on a network that loses, duplicates, reorders, cuts and crashes nothing.
    fn clean(chaos_steps: u64) -> Knobs {
        Knobs {
            nodes: 3,
            chaos_steps,
            write_per_mille: 300,
            loss: 0,
            duplicate: 0,
            reorder: 0,
            cut: 0,
            disconnect: 0,
            crash: 0,
            crash_after_apply: 0,
            apply_failure: 0,
            compact: 0,
            cut_forever: &[],
            absent: None,
            backlog_writes: 1,
            fault: None,
            byzantine: None,
            damage: 0,
            disagreeing: None,
        }
    }

    fn random(rng: &mut Rng) -> Knobs {
        let faulty = rng.chance(700);
        let f = |rng: &mut Rng, max: u64| if faulty { rng.below(max + 1) } else { 0 };
        Knobs {
            nodes: rng.range(3, 5) as usize,
            chaos_steps: rng.range(200, 600),
            write_per_mille: rng.range(50, 250),
            loss: f(rng, 100),
            duplicate: f(rng, 100),
            reorder: f(rng, 150),
            cut: f(rng, 8),
            disconnect: f(rng, 8),
            crash: f(rng, 4),
            crash_after_apply: f(rng, 20),
            apply_failure: if rng.chance(300) { rng.below(30) } else { 0 },
            compact: if rng.chance(500) { rng.below(21) } else { 0 },
            cut_forever: &[],
            absent: None,
            backlog_writes: 0,
            fault: None,
            byzantine: None,
            damage: 0,
            disagreeing: None,
        }
    }
}

/// Events a receiver may hold queued behind an apply before it stops reading that peer.
const READ_LIMIT: usize = 64;

struct Sim {
    seed: u64,
    rng: Rng,
    now: u64,
    knobs: Knobs,
    config: ReplicaConfig,
    nodes: Vec<Node>,
    /// Per unordered pair (i < j) with a session: its epoch.
    sessions: BTreeMap<(usize, usize), u64>,
    next_epoch: u64,
    cut: BTreeSet<(usize, usize)>,
    /// In flight, by (delivery time, send order).
    wire: BTreeMap<(u64, u64), Packet>,
    sent_packets: u64,
    /// Per stream (from, to, epoch): when its Hello arrives (nothing of it arrives earlier) and
    /// when its last in-order message arrives (the next one arrives no earlier).
    streams: BTreeMap<(usize, usize, u64), (u64, u64)>,
    /// Every local write (acknowledged to its client once committed), with its key.
    written: Vec<(Dot, Key)>,
    /// Every local write as its origin wrote it.
    written_events: BTreeMap<(NodeId, u64), EncodedEvent>,
    /// Messages the byzantine node tampered with.
    tampered: u64,
    injected_failures: u64,
    /// Drift faults injected (`Knobs::damage`).
    damaged: u64,
    /// Keys damaged on a node: that node writes them no more. Its next write there would carry
    /// a context built from what is left (see `damage`), which can supersede versions nobody
    /// holds any more; that loss is real, and not what anti-entropy can repair.
    damaged_keys: BTreeSet<(usize, Key)>,
    trace: Trace,
    stats: Stats,
    /// Node starts so far (each start's instance number).
    starts: u64,
}

#[derive(Default, Debug, Clone, Copy)]
struct Stats {
    writes: u64,
    delivered: u64,
    lost: u64,
    crashes: u64,
    max_in_flight: u64,
    max_pending: usize,
    max_apply_events: usize,
    rewinds: u64,
    /// Events in every Events message sent (copies included).
    events_sent: u64,
    steps: u64,
    heal_steps: u64,
    /// Worst time for a live write of node 0 to reach node 1, while node 2 was catching up.
    live_lag_ms: u64,
    /// Compactions that removed changelog entries.
    compactions: u64,
    /// Snapshot pages sent (resends included).
    snapshot_pages_sent: u64,
    /// Snapshot pages merged durably, and of those the last pages (whole snapshots).
    snapshot_pages_installed: u64,
    snapshots_installed: u64,
    /// Applies and snapshot pages refused for a missing, wrong or foreign seal.
    forged_refused: u64,
    /// Of those, snapshot pages with a version not proven its origin's.
    versions_refused: u64,
    /// Messages the byzantine node tampered with.
    tampered: u64,
    /// Drift faults injected.
    damaged: u64,
    /// Anti-entropy sessions, their messages, and the keys they found different.
    aae_sessions: u64,
    aae_messages: u64,
    aae_differing: u64,
    /// Versions repair merged that the receiver's have covered (drift).
    drift_repaired: u64,
    /// Keys two nodes resolved differently, settled on the default.
    disagreements: u64,
}

fn pair(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

impl Sim {
    fn new(seed: u64, knobs: Option<Knobs>, print: bool) -> Sim {
        let mut rng = Rng::new(seed);
        let knobs = knobs.unwrap_or_else(|| Knobs::random(&mut rng));
        let config = ReplicaConfig {
            window_events: rng.pick(&[4, 32, 256, 16384]),
            batch_events: rng.pick(&[1, 3, 16, 1024]),
            batch_bytes: rng.pick(&[200, 4096, 1 << 20]),
            retransmit_after_ms: rng.pick(&[150, 600, 3000]),
            apply_events: rng.pick(&[1, 5, 64, 4096]),
            announce_every_ms: rng.pick(&[10, 100, 250]),
            graft_after_ms: rng.pick(&[50, 400, 1000]),
            ..ReplicaConfig::default()
        };
        let nodes = (0..knobs.nodes)
            .map(|i| Node {
                id: NodeId::parse(&format!("n{i}")).unwrap(),
                log: MemLog::new(NodeId::parse(&format!("n{i}")).unwrap()),
                replica: None,
                applies: VecDeque::new(),
                down_until: 0,
                skew: rng.below(50),
            })
            .collect();
        let mut sim = Sim {
            seed,
            rng,
            now: 1_000_000,
            knobs,
            config,
            nodes,
            sessions: BTreeMap::new(),
            next_epoch: 0,
            cut: knobs.cut_forever.iter().map(|&(a, b)| pair(a, b)).collect(),
            wire: BTreeMap::new(),
            sent_packets: 0,
            streams: BTreeMap::new(),
            written: Vec::new(),
            written_events: BTreeMap::new(),
            tampered: 0,
            injected_failures: 0,
            damaged: 0,
            damaged_keys: BTreeSet::new(),
            trace: Trace {
                hash: 0xcbf2_9ce4_8422_2325,
                print,
            },
            stats: Stats::default(),
            starts: 0,
        };
        for i in 0..sim.nodes.len() {
            sim.start(i);
        }
        sim
    }

    fn fail(&self, what: String) -> String {
        format!("seed {}: {what}", self.seed)
    }

    fn start(&mut self, i: usize) {
        // Each start is a new process, with an instance of its own (as a node picks one at
        // random): a peer resumes an interrupted snapshot only with the same process.
        self.starts += 1;
        let config = ReplicaConfig {
            instance: self.starts,
            ..self.config.clone()
        };
        let mut r = Replica::new(self.nodes[i].id.clone(), config);
        if let Some(f) = self.knobs.fault {
            r.inject_fault(f);
        }
        r.set_local_have(&self.nodes[i].log.have);
        r.set_compacted(&self.nodes[i].log.compacted);
        self.nodes[i].replica = Some(r);
        let now = self.now;
        self.trace.add(now, || format!("start n{i}"), &[1, i as u8]);
    }

    /// Crash: the replica and every volatile thing go; the durable log stays.
    fn crash(&mut self, i: usize, down_ms: u64) {
        if self.nodes[i].replica.is_none() {
            return;
        }
        self.nodes[i].replica = None;
        self.nodes[i].applies.clear();
        self.nodes[i].down_until = self.now + down_ms;
        self.stats.crashes += 1;
        let now = self.now;
        self.trace.add(now, || format!("crash n{i}"), &[2, i as u8]);
        let gone: Vec<_> = self
            .sessions
            .keys()
            .copied()
            .filter(|&(a, b)| a == i || b == i)
            .collect();
        for p in gone {
            self.drop_session(p);
        }
    }

    fn drop_session(&mut self, p: (usize, usize)) {
        let Some(epoch) = self.sessions.remove(&p) else {
            return;
        };
        // What was on the wire dies with the connection.
        self.wire.retain(|_, packet| packet.epoch != epoch);
        let now = self.now;
        for (me, other) in [(p.0, p.1), (p.1, p.0)] {
            let peer = self.nodes[other].id.clone();
            if let Some(r) = self.nodes[me].replica.as_mut() {
                r.disconnected(&peer, now);
            }
        }
        self.trace.add(
            now,
            || format!("disconnect n{}-n{}", p.0, p.1),
            &[3, p.0 as u8, p.1 as u8],
        );
    }

    fn connect(&mut self, p: (usize, usize)) {
        self.next_epoch += 1;
        self.sessions.insert(p, self.next_epoch);
        let now = self.now;
        // The round trip each side's driver would measure: the resend timers stretch by it.
        let rtt_ms = self.rng.range(0, 400);
        for (me, other) in [(p.0, p.1), (p.1, p.0)] {
            let peer = self.nodes[other].id.clone();
            let replica = self.nodes[me].replica.as_mut().unwrap();
            replica.connected(&peer, now);
            replica.set_link_rtt(&peer, rtt_ms);
        }
        self.trace.add(
            now,
            || format!("connect n{}-n{}", p.0, p.1),
            &[4, p.0 as u8, p.1 as u8],
        );
    }

    /// A local write: the node commits it durably (acknowledging its client), then tells its replica.
    fn write(&mut self, i: usize) {
        let shared = self.rng.chance(500);
        let key = if shared {
            format!("s{}", self.rng.below(6))
        } else {
            format!("n{i}-{}", self.rng.below(20))
        };
        let collection = self.rng.pick(&["c1", "c2"]).to_owned();
        let delete = self.rng.chance(150);
        let value = self.rng.below(1000);
        if self
            .damaged_keys
            .contains(&(i, (collection.clone(), key.clone().into_bytes())))
        {
            return;
        }
        let node = &mut self.nodes[i];
        let mut clock = HlcClock::new(node.log.hlc_last, 60_000);
        let hlc = clock.now(self.now + node.skew);
        node.log.hlc_last = clock.last();
        let context = node
            .log
            .state
            .get(&(collection.clone(), key.clone().into_bytes()))
            .map_or_else(VersionVector::new, Versions::context);
        let mut cbor = Vec::new();
        minicbor::Encoder::new(&mut cbor).u64(value).unwrap();
        let event = EncodedEvent::new(Event {
            format: 1,
            collection,
            key: key.into_bytes(),
            op: if delete { Op::Delete } else { Op::Put },
            value: (!delete).then(|| Value::from_canonical(cbor, &Default::default()).unwrap()),
            hlc,
            origin: node.id.clone(),
            seq: node.log.seq(&node.id) + 1,
            schema: 0,
            meta: BTreeMap::new(),
            context,
            extra: BTreeMap::new(),
        });
        self.written
            .push((event.dot(), (event.collection.clone(), event.key.clone())));
        self.written_events
            .insert((event.origin.clone(), event.seq), event.clone());
        node.log.insert(event);
        let have = node.log.have.clone();
        node.replica.as_mut().unwrap().set_local_have(&have);
        self.stats.writes += 1;
        let now = self.now;
        self.trace.add(now, || format!("write n{i}"), &[5, i as u8]);
    }

    /// Compaction on node `i`, if it is up: each origin to a random floor between its current
    /// one and its have. Any such floor is correct; a peer behind it then needs a snapshot.
    fn compact(&mut self, i: usize) -> Result<(), String> {
        if self.nodes[i].replica.is_none() {
            return Ok(());
        }
        let held: Vec<(NodeId, u64, u64)> = {
            let log = &self.nodes[i].log;
            log.have
                .iter()
                .map(|(o, &h)| (o.clone(), log.floor(o), h))
                .collect()
        };
        let floors: Have = held
            .into_iter()
            .map(|(o, floor, h)| (o, self.rng.range(floor, h)))
            .collect();
        let node = &mut self.nodes[i];
        let removed = node
            .log
            .compact(&floors)
            .map_err(|e| format!("n{i} could not compact: {e}"))?;
        let compacted = node.log.compacted.clone();
        node.replica.as_mut().unwrap().set_compacted(&compacted);
        if removed > 0 {
            self.stats.compactions += 1;
        }
        let now = self.now;
        self.trace.add(
            now,
            || format!("n{i} compacts {removed} events, floors {compacted:?}"),
            &[9, i as u8],
        );
        Ok(())
    }

    fn send(&mut self, from: usize, to: usize, message: &Message, chaos: bool) {
        let Some(&epoch) = self.sessions.get(&pair(from, to)) else {
            return;
        };
        let bytes = message.encode();
        self.trace.add(
            self.now,
            || format!("n{from} -> n{to} {}", describe(message)),
            &bytes,
        );
        self.sent_packets += 1;
        let tampered;
        let message = if chaos
            && self.knobs.byzantine == Some(from)
            && self.rng.chance(400)
            && let Some(m) = self.tamper(from, to, message)
        {
            self.tampered += 1;
            tampered = m;
            &tampered
        } else {
            message
        };
        let bytes = message.encode();
        let hello = matches!(message, Message::Hello(_));
        // The transport is a QUIC stream: the Hello opens it and is never lost; the rest may be
        // (the core must also survive what a stream never does).
        if chaos && !hello && self.rng.chance(self.knobs.loss) {
            self.stats.lost += 1;
            return;
        }
        let copies = if chaos && !hello && self.rng.chance(self.knobs.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            // A stream delivers in order; a reordered message may overtake or fall behind
            // others, but never its session's Hello.
            let mut at = self.now + self.rng.range(1, 5);
            let key = (from, to, epoch);
            let (hello_at, last_at) = self.streams.get(&key).copied().unwrap_or((0, 0));
            if chaos && !hello && self.rng.chance(self.knobs.reorder) {
                at = (at + self.rng.range(5, 200)).max(hello_at);
            } else {
                at = at.max(last_at);
                let hello_at = if hello { at } else { hello_at };
                self.streams.insert(key, (hello_at, at));
            }
            self.sent_packets += 1;
            self.wire.insert(
                (at, self.sent_packets),
                Packet {
                    from,
                    to,
                    epoch,
                    bytes: bytes.clone(),
                },
            );
        }
    }

    /// What the byzantine node `from` sends `to` instead of `message`, if it lies this time.
    /// It lies about everything but its own origin (its own history is its to write).
    fn tamper(&mut self, from: usize, to: usize, message: &Message) -> Option<Message> {
        let me = self.nodes[from].id.clone();
        let mut m = message.clone();
        match &mut m {
            Message::Events { events, seals, .. } => match self.rng.below(3) {
                // Change an event of another origin it relays (its seal no longer matches).
                0 => {
                    let e = events.iter_mut().find(|e| e.origin != me)?;
                    let mut cbor = Vec::new();
                    minicbor::Encoder::new(&mut cbor).u64(999_999).ok()?;
                    let mut changed = e.clone().into_event();
                    changed.op = Op::Put;
                    changed.value = Some(Value::from_canonical(cbor, &Default::default()).ok()?);
                    *e = EncodedEvent::new(changed);
                }
                // Append events under an honest origin's name that origin never wrote,
                // "sealed" with its own key.
                1 => {
                    let victims: Vec<usize> = (0..self.nodes.len())
                        .filter(|&j| {
                            j != from && !events.iter().any(|e| e.origin == self.nodes[j].id)
                        })
                        .collect();
                    let victim = self.nodes[*victims.first()?].id.clone();
                    let next = self.nodes[to].log.seq(&victim) + 1;
                    let mut chain = self.nodes[to].log.head(&victim).1;
                    let mut leaves = Vec::new();
                    for seq in next..next + 2 {
                        let mut cbor = Vec::new();
                        minicbor::Encoder::new(&mut cbor).u64(seq).ok()?;
                        let forged = EncodedEvent::new(Event {
                            format: 1,
                            collection: "c1".into(),
                            key: b"forged".to_vec(),
                            op: Op::Put,
                            value: Some(Value::from_canonical(cbor, &Default::default()).ok()?),
                            hlc: Hlc::new(self.now, 0),
                            origin: victim.clone(),
                            seq,
                            schema: 0,
                            meta: BTreeMap::new(),
                            context: VersionVector::new(),
                            extra: BTreeMap::new(),
                        });
                        let leaf = event_leaf(forged.bytes());
                        chain = chain_link(&chain, &leaf);
                        leaves.push(leaf);
                        events.push(forged);
                    }
                    seals.push(seal_by(
                        &me,
                        &victim,
                        next,
                        next + 1,
                        chain,
                        merkle_root(&leaves),
                    ));
                }
                // Strip the seals.
                _ => seals.clear(),
            },
            // Claim compacted floors far above what anyone holds, inviting snapshots.
            Message::Hello(h) => {
                for (o, s) in h.have.clone() {
                    if o != me && s > 0 {
                        h.compacted.push((o, s + 1000));
                    }
                }
                h.compacted.sort();
                h.compacted.dedup_by(|a, b| a.0 == b.0);
            }
            // Claim other origins far ahead, with floors that make the peer look behind and
            // seals of its own making.
            Message::Snapshot {
                floors,
                have,
                seals,
                done,
                versions,
                ..
            } => {
                for (o, s) in floors.iter_mut() {
                    if *o != me {
                        *s += 1000;
                    }
                }
                // Change a version of another origin (its proof no longer leads to the root
                // its origin signed).
                if self.rng.chance(500)
                    && let Some(v) = versions.iter_mut().find(|v| v.origin != me)
                {
                    let mut cbor = Vec::new();
                    minicbor::Encoder::new(&mut cbor).u64(777_777).ok()?;
                    let mut changed = v.clone().into_event();
                    changed.op = Op::Put;
                    changed.value = Some(Value::from_canonical(cbor, &Default::default()).ok()?);
                    *v = EncodedEvent::new(changed);
                }
                if *done {
                    for (o, s) in have.iter_mut() {
                        if *o != me {
                            *s += 1000;
                            seals.retain(|x| !(x.origin == *o && x.seq == *s));
                            seals.push(seal_by(&me, o, *s, *s, [7; 32], [6; 32]));
                        }
                    }
                }
            }
            _ => return None,
        }
        Some(m)
    }

    /// Delivers what is due to node `i`, unless the receiver pushes back on that peer.
    fn deliver(&mut self, i: usize) -> Result<(), String> {
        let due: Vec<(u64, u64)> = self
            .wire
            .range(..=(self.now, u64::MAX))
            .filter(|(_, p)| p.to == i)
            .map(|(k, _)| *k)
            .collect();
        for k in due {
            let from = self.wire[&k].from;
            let peer = self.nodes[from].id.clone();
            let live = self.sessions.get(&pair(from, i)) == Some(&self.wire[&k].epoch);
            let Some(r) = self.nodes[i].replica.as_mut() else {
                self.wire.remove(&k);
                continue;
            };
            if !live {
                self.wire.remove(&k);
                continue;
            }
            // Backpressure: stop reading this peer's stream while its events wait.
            if r.pending_apply_events(&peer) >= READ_LIMIT {
                continue;
            }
            let packet = self.wire.remove(&k).unwrap();
            let message = Message::decode(&packet.bytes, &MessageLimits::default())
                .map_err(|e| format!("n{i} could not decode a message from n{from}: {e}"))?;
            if let Message::Ack { rewind: true, .. } = message {
                self.stats.rewinds += 1;
            }
            r.handle(&peer, message, self.now)
                .map_err(|e| format!("n{i} refused a message from n{from}: {e}"))?;
            let pending = r.pending_apply_events(&peer);
            self.stats.max_pending = self.stats.max_pending.max(pending);
            self.stats.delivered += 1;
            self.outputs(i)?;
        }
        Ok(())
    }

    fn outputs(&mut self, i: usize) -> Result<(), String> {
        let mut outs = Vec::new();
        if let Some(r) = self.nodes[i].replica.as_mut() {
            while let Some(out) = r.poll_output() {
                outs.push(out);
            }
        }
        for out in outs {
            match out {
                Output::Apply {
                    peer,
                    events,
                    seals,
                    ..
                } => {
                    self.stats.max_apply_events = self.stats.max_apply_events.max(events.len());
                    self.nodes[i].applies.push_back(Work::Apply {
                        peer,
                        events,
                        seals,
                    });
                }
                Output::InstallSnapshot {
                    peer,
                    versions,
                    proofs,
                    have,
                    seals,
                    ..
                } => {
                    self.nodes[i].applies.push_back(Work::Install {
                        peer,
                        versions,
                        proofs,
                        have,
                        seals,
                    });
                }
                Output::Acked { peer, have } => {
                    // An acknowledgement the peer gave is durable there.
                    let j = self.nodes.iter().position(|n| n.id == peer).unwrap();
                    for (o, &s) in &have {
                        let held = self.nodes[j].log.seq(o);
                        if s > held {
                            return Err(format!(
                                "n{j} acknowledged {o}:{s} to n{i} but durably holds only {held}"
                            ));
                        }
                    }
                }
                Output::PeerReady { .. }
                | Output::Mismatch { .. }
                | Output::UpgradeMissing { .. }
                | Output::SnapshotDeclined { .. } => {}
            }
        }
        Ok(())
    }

    /// Does node `i`'s oldest pending Apply or InstallSnapshot, maybe failing it or crashing
    /// right after it.
    fn apply(&mut self, i: usize, chaos: bool) -> Result<(), String> {
        match self.nodes[i].applies.pop_front() {
            None => Ok(()),
            Some(Work::Apply {
                peer,
                events,
                seals,
            }) => self.apply_events(i, peer, events, &seals, chaos),
            Some(Work::Install {
                peer,
                versions,
                proofs,
                have,
                seals,
            }) => self.install(i, peer, versions, &proofs, have, &seals, chaos),
        }
    }

    /// Applies events the core handed node `i` out.
    fn apply_events(
        &mut self,
        i: usize,
        peer: NodeId,
        events: Vec<EncodedEvent>,
        seals: &[Seal],
        chaos: bool,
    ) -> Result<(), String> {
        let now = self.now;
        if chaos && self.rng.chance(self.knobs.apply_failure) {
            self.injected_failures += 1;
            self.trace.add(
                now,
                || format!("n{i} apply fails (injected)"),
                &[6, i as u8],
            );
            self.nodes[i]
                .replica
                .as_mut()
                .unwrap()
                .apply_failed(&peer, "injected", now);
            return self.outputs(i);
        }
        let result = self.nodes[i].log.apply(&events, seals);
        if self.nodes[i].log.duplicates > 0 {
            return Err(format!(
                "n{i} was handed {} events it already held (applied twice)",
                self.nodes[i].log.duplicates
            ));
        }
        match result {
            Ok(()) => {
                self.trace.add(
                    now,
                    || format!("n{i} applied {} from {peer}", events.len()),
                    &[7, i as u8],
                );
                if chaos && self.rng.chance(self.knobs.crash_after_apply) {
                    // Durable, never acknowledged.
                    let down = self.rng.range(10, 500);
                    self.crash(i, down);
                    return Ok(());
                }
                let node = &mut self.nodes[i];
                let have = node.log.have.clone();
                let r = node.replica.as_mut().unwrap();
                r.set_local_have(&have);
                r.applied(&peer, now);
            }
            Err(e) => {
                self.trace
                    .add(now, || format!("n{i} apply refused: {e}"), &[8, i as u8]);
                self.nodes[i]
                    .replica
                    .as_mut()
                    .unwrap()
                    .apply_failed(&peer, &e, now);
            }
        }
        self.outputs(i)
    }

    /// Merges a snapshot page the core handed node `i` out.
    #[allow(clippy::too_many_arguments)]
    fn install(
        &mut self,
        i: usize,
        peer: NodeId,
        versions: Vec<EncodedEvent>,
        proofs: &[Proof],
        have: Option<Have>,
        seals: &[Seal],
        chaos: bool,
    ) -> Result<(), String> {
        let now = self.now;
        if chaos && self.rng.chance(self.knobs.apply_failure) {
            self.injected_failures += 1;
            self.trace.add(
                now,
                || format!("n{i} install fails (injected)"),
                &[10, i as u8],
            );
            self.nodes[i]
                .replica
                .as_mut()
                .unwrap()
                .install_failed(&peer, "injected", now);
            return self.outputs(i);
        }
        let (count, last) = (versions.len(), have.is_some());
        // A peer never holds more of this node's events than this node: a refusal is a bug,
        // unless the page claims a have without its seal (only a byzantine node sends that).
        let changed = match self.nodes[i]
            .log
            .install(versions, proofs, have.as_ref(), seals)
        {
            Ok(changed) => changed,
            Err(e) if e.starts_with("forged") && self.knobs.byzantine.is_some() => {
                self.trace
                    .add(now, || format!("n{i} install refused: {e}"), &[12, i as u8]);
                self.nodes[i]
                    .replica
                    .as_mut()
                    .unwrap()
                    .install_failed(&peer, &e, now);
                return self.outputs(i);
            }
            Err(e) => {
                return Err(format!(
                    "n{i} could not install a snapshot page from {peer}: {e}"
                ));
            }
        };
        self.stats.snapshot_pages_installed += 1;
        self.stats.snapshots_installed += u64::from(last);
        self.trace.add(
            now,
            || {
                format!(
                    "n{i} installed {count} versions ({changed} keys changed) from {peer}, have {have:?}"
                )
            },
            &[11, i as u8],
        );
        if chaos && self.rng.chance(self.knobs.crash_after_apply) {
            // Durable, never acknowledged.
            let down = self.rng.range(10, 500);
            self.crash(i, down);
            return Ok(());
        }
        let node = &mut self.nodes[i];
        let r = node.replica.as_mut().unwrap();
        r.set_local_have(&node.log.have);
        r.set_compacted(&node.log.compacted);
        r.installed(&peer, now);
        self.outputs(i)
    }

    /// Sends everything node `i` has to send, checking what the core promises about it.
    fn transmit(&mut self, i: usize, chaos: bool) -> Result<bool, String> {
        let mut any = false;
        loop {
            let node = &mut self.nodes[i];
            let Some(r) = node.replica.as_mut() else {
                return Ok(any);
            };
            let Some((peer, message)) = r
                .poll_transmit(self.now, &node.log)
                .map_err(|e| format!("n{i}: {e}"))?
            else {
                return Ok(any);
            };
            any = true;
            if let Message::Ack { have, .. } = &message {
                for (o, s) in have {
                    let held = node.log.seq(o);
                    if *s > held {
                        return Err(format!(
                            "n{i} sent an ack for {o}:{s} but durably holds only {held}"
                        ));
                    }
                }
            }
            if let Message::Snapshot { have, .. } = &message {
                self.stats.snapshot_pages_sent += 1;
                // The state sent must reflect the have the snapshot claims.
                for (o, s) in have {
                    let held = node.log.seq(o);
                    if *s > held {
                        return Err(format!(
                            "n{i} sent a snapshot reflecting {o}:{s} but durably holds only {held}"
                        ));
                    }
                }
            }
            if let Message::Events { events, .. } = &message {
                self.stats.events_sent += events.len() as u64;
                // Origins the peer does not acknowledge are outside the window, one batch
                // each at most.
                let view = r.peer_view(&peer).unwrap();
                let mut in_flight = view.in_flight_events;
                for o in &view.stalled_origins {
                    let of_origin = view
                        .sent
                        .get(o)
                        .copied()
                        .unwrap_or(0)
                        .saturating_sub(view.acked.get(o).copied().unwrap_or(0));
                    if of_origin > self.config.batch_events as u64 {
                        return Err(format!(
                            "n{i} has {of_origin} events of stalled {o} in flight to {peer}, over a batch of {}",
                            self.config.batch_events
                        ));
                    }
                    in_flight -= of_origin;
                }
                if in_flight > self.config.window_events {
                    return Err(format!(
                        "n{i} has {in_flight} events in flight to {peer}, over the window of {}",
                        self.config.window_events
                    ));
                }
                self.stats.max_in_flight = self.stats.max_in_flight.max(in_flight);
            }
            let to = self.nodes.iter().position(|n| n.id == peer).unwrap();
            self.send(i, to, &message, chaos);
        }
    }

    /// One step of the world. Returns whether anything was transmitted.
    fn step(&mut self, chaos: bool) -> Result<bool, String> {
        let n = self.nodes.len();
        if chaos {
            let k = self.knobs;
            if self.rng.chance(k.cut) {
                let p = pair(
                    self.rng.below(n as u64) as usize,
                    self.rng.below(n as u64) as usize,
                );
                if p.0 != p.1 && self.cut.insert(p) {
                    self.drop_session(p);
                }
            }
            if self.rng.chance(k.cut * 2) && !self.cut.is_empty() {
                let healable: Vec<_> = self
                    .cut
                    .iter()
                    .copied()
                    .filter(|p| !k.cut_forever.iter().any(|&(a, b)| pair(a, b) == *p))
                    .collect();
                if !healable.is_empty() {
                    let p = healable[self.rng.below(healable.len() as u64) as usize];
                    self.cut.remove(&p);
                }
            }
            if self.rng.chance(k.disconnect) && !self.sessions.is_empty() {
                let keys: Vec<_> = self.sessions.keys().copied().collect();
                let p = keys[self.rng.below(keys.len() as u64) as usize];
                self.drop_session(p);
            }
            if self.rng.chance(k.crash) {
                let i = self.rng.below(n as u64) as usize;
                let down = self.rng.range(50, 3000);
                self.crash(i, down);
            }
            if self.rng.chance(k.write_per_mille) {
                let i = self.rng.below(n as u64) as usize;
                for _ in 0..self.rng.range(1, 3) {
                    if self.nodes[i].replica.is_some() {
                        self.write(i);
                    }
                }
            }
            // Drawn only when on, so that runs without compaction replay as before.
            if k.compact > 0 && self.rng.chance(k.compact) {
                let i = self.rng.below(n as u64) as usize;
                self.compact(i)?;
            }
        }
        if let Some((absent, from, until)) = self.knobs.absent {
            if self.now >= from && self.now < until && self.nodes[absent].replica.is_some() {
                self.crash(absent, until - self.now);
            }
            if self.now < until {
                for i in (0..n).filter(|&i| i != absent) {
                    for _ in 0..self.knobs.backlog_writes {
                        if self.nodes[i].replica.is_some() {
                            self.write(i);
                        }
                    }
                }
            }
        }
        for i in 0..n {
            if self.nodes[i].replica.is_none() && self.now >= self.nodes[i].down_until {
                self.start(i);
            }
        }
        // Sessions come up between live nodes on uncut links.
        for a in 0..n {
            for b in a + 1..n {
                let up = self.nodes[a].replica.is_some() && self.nodes[b].replica.is_some();
                if up && !self.cut.contains(&(a, b)) && !self.sessions.contains_key(&(a, b)) {
                    self.connect((a, b));
                }
            }
        }
        let mut any = false;
        for i in 0..n {
            if self.nodes[i].replica.is_none() {
                continue;
            }
            self.deliver(i)?;
            if self.nodes[i].replica.is_none() {
                continue;
            }
            // Applying is slower than receiving now and then, so applies queue up.
            if !chaos || self.rng.chance(700) {
                self.apply(i, chaos)?;
            }
            if let Some(r) = self.nodes[i].replica.as_mut()
                && r.poll_timeout().is_some_and(|t| t <= self.now)
            {
                r.handle_timeout(self.now);
            }
            any |= self.transmit(i, chaos)?;
        }
        Ok(any)
    }

    /// The next time something can happen without new writes.
    fn next_time(&self) -> u64 {
        let mut t = self.now + 50;
        if let Some((&(at, _), _)) = self.wire.iter().next() {
            t = t.min(at);
        }
        for node in &self.nodes {
            if let Some(r) = &node.replica {
                if let Some(d) = r.poll_timeout() {
                    t = t.min(d);
                }
            } else {
                t = t.min(node.down_until);
            }
        }
        t.max(self.now + 1)
    }

    fn run(&mut self) -> Result<Stats, String> {
        let chaos_steps = self.knobs.chaos_steps;
        let absent_until = self.knobs.absent.map_or(0, |(_, _, u)| u);
        let mut step = 0;
        while step < chaos_steps || self.now < absent_until {
            step += 1;
            self.stats.steps += 1;
            self.now += self.rng.range(1, 10);
            self.step(true).map_err(|e| self.fail(e))?;
            if self.knobs.damage > 0 && self.rng.chance(self.knobs.damage) {
                self.damage();
            }
            self.watch_live_lag();
        }
        // Heal: no new faults (the permanent cuts stay), every node up, until quiescent.
        self.cut = self
            .knobs
            .cut_forever
            .iter()
            .map(|&(a, b)| pair(a, b))
            .collect();
        let mut quiet = 0;
        for _ in 0..200_000 {
            self.stats.heal_steps += 1;
            let busy = self.step(false).map_err(|e| self.fail(e))?;
            let settled = self
                .nodes
                .iter()
                .all(|n| n.replica.is_some() && n.applies.is_empty())
                && self.wire.is_empty()
                && !busy
                && self
                    .nodes
                    .windows(2)
                    .all(|w| w[0].log.have == w[1].log.have);
            quiet = if settled { quiet + 1 } else { 0 };
            if quiet >= 2 {
                if self.damaged > 0 || self.knobs.disagreeing.is_some() {
                    // Replication is done and cannot see these differences: anti-entropy must
                    // find and repair them all.
                    self.anti_entropy().map_err(|e| self.fail(e))?;
                    self.check().map_err(|e| self.fail(e))?;
                } else {
                    self.check().map_err(|e| self.fail(e))?;
                    self.anti_entropy().map_err(|e| self.fail(e))?;
                    if self.stats.aae_differing + self.stats.drift_repaired > 0 {
                        return Err(self.fail(format!(
                            "anti-entropy found {} differing keys (drift {}) in a run without drift faults",
                            self.stats.aae_differing, self.stats.drift_repaired
                        )));
                    }
                }
                self.stats.damaged = self.damaged;
                self.stats.forged_refused = self.nodes.iter().map(|n| n.log.forged).sum();
                self.stats.versions_refused =
                    self.nodes.iter().map(|n| n.log.forged_versions).sum();
                self.stats.tampered = self.tampered;
                return Ok(self.stats);
            }
            self.now = self.next_time();
        }
        let haves: Vec<_> = self
            .nodes
            .iter()
            .map(|n| format!("{:?}", n.log.have))
            .collect();
        Err(self.fail(format!(
            "not quiescent after 200000 steps; {} messages in flight; haves {haves:?}",
            self.wire.len()
        )))
    }

    /// A drift fault: a random node's state loses a random key, or has one of its versions
    /// changed in place. Node 0 is never damaged: anti-entropy repairs from a peer's state,
    /// and a version damaged on every node that holds it has no good copy left to repair from.
    /// A damaged node writes the key no more: with version-vector contexts, its next write
    /// there would claim every earlier version of its own, superseding (on every node) what
    /// those had superseded, although its state no longer shows them: a real loss, which the
    /// real node risks too if it writes a damaged key before anti-entropy repairs it.
    fn damage(&mut self) {
        let i = 1 + self.rng.below(self.nodes.len() as u64 - 1) as usize;
        let n = self.nodes[i].log.state.len() as u64;
        if n == 0 {
            return;
        }
        let at = self.rng.below(n) as usize;
        let flip = self.rng.chance(500);
        let Some(key) = self.nodes[i].log.state.keys().nth(at).cloned() else {
            return;
        };
        let what = aae::damage(&mut self.nodes[i].log, &key, flip);
        self.damaged += 1;
        self.damaged_keys.insert((i, key.clone()));
        let now = self.now;
        self.trace.add(
            now,
            || format!("damage n{i} {key:?}: {what}"),
            &[9, i as u8, u8::from(flip)],
        );
    }

    /// Anti-entropy between every pair of nodes not cut for good, in rounds, until a round
    /// finds nothing.
    fn anti_entropy(&mut self) -> Result<(), String> {
        const ROUNDS: usize = 8;
        let mut last = String::new();
        for _ in 0..ROUNDS {
            let mut found = false;
            for i in 0..self.nodes.len() {
                for j in i + 1..self.nodes.len() {
                    if self.cut.contains(&(i, j)) {
                        continue;
                    }
                    let (bi, bj) = (
                        self.knobs.disagreeing == Some(i),
                        self.knobs.disagreeing == Some(j),
                    );
                    let (keys, messages) = aae::session(
                        &aae::ModelTree::of(&self.nodes[i].log, bi),
                        &aae::ModelTree::of(&self.nodes[j].log, bj),
                    )?;
                    self.stats.aae_sessions += 1;
                    self.stats.aae_messages += messages;
                    self.stats.aae_differing += keys.len() as u64;
                    found |= !keys.is_empty();
                    if let Some(k) = keys.first() {
                        let all: Vec<String> = self
                            .nodes
                            .iter()
                            .enumerate()
                            .map(|(n, node)| {
                                let b = self.knobs.disagreeing == Some(n);
                                format!("n{n}: {}", aae::describe(&node.log, b, k))
                            })
                            .collect();
                        last = format!(
                            "n{i} and n{j} differ at {:?}; {}",
                            String::from_utf8_lossy(k),
                            all.join("; ")
                        );
                    }
                    let (left, right) = self.nodes.split_at_mut(j);
                    let (a, b) = (&mut left[i].log, &mut right[0].log);
                    for k in &keys {
                        let r = aae::repair(a, bi, b, bj, k);
                        self.stats.drift_repaired += r.drift;
                        self.stats.disagreements += r.disagreements;
                    }
                }
            }
            if !found {
                return Ok(());
            }
        }
        Err(format!(
            "anti-entropy still finds differences after {ROUNDS} rounds; the last: {last}"
        ))
    }

    /// During a long absence of node 2, how long node 0's writes take to reach node 1.
    fn watch_live_lag(&mut self) {
        let Some((absent, _, until)) = self.knobs.absent else {
            return;
        };
        if self.nodes[absent].replica.is_none() || self.now < until {
            return;
        }
        let (a, b) = (&self.nodes[0], &self.nodes[1]);
        let got = b.log.seq(&a.id);
        if let Some(e) = a.log.changelog.get(&(a.id.clone(), got + 1)) {
            let age = (self.now + a.skew).saturating_sub(e.hlc.physical_ms);
            self.stats.live_lag_ms = self.stats.live_lag_ms.max(age);
        }
    }

    /// The end state every correct core must reach.
    fn check(&self) -> Result<(), String> {
        let first = &self.nodes[0];
        for (i, node) in self.nodes.iter().enumerate() {
            let log = &node.log;
            if log.have != first.log.have {
                return Err(format!(
                    "n{i} has {:?}, n0 has {:?}",
                    log.have, first.log.have
                ));
            }
            if log.state.len() != first.log.state.len() {
                return Err(format!(
                    "n{i} has {} keys, n0 {}",
                    log.state.len(),
                    first.log.state.len()
                ));
            }
            let (bi, b0) = (
                self.knobs.disagreeing == Some(i),
                self.knobs.disagreeing == Some(0),
            );
            for ((key, v), (key0, v0)) in log.state.iter().zip(&first.log.state) {
                if key == key0
                    && aae::resolution(log, bi, key, v) != aae::resolution(&first.log, b0, key0, v0)
                {
                    return Err(format!("n{i} and n0 resolve {key:?} differently"));
                }
                if key != key0 || v.encode() != v0.encode() {
                    // Each version as its dot and context.
                    let show = |v: &Versions| {
                        v.events()
                            .iter()
                            .map(|e| format!("{}:{} ctx {:?}", e.origin, e.seq, e.context))
                            .collect::<Vec<_>>()
                    };
                    return Err(format!(
                        "n{i} and n0 differ at {key:?} / {key0:?}: {:?} vs {:?}",
                        show(v),
                        show(v0)
                    ));
                }
            }
            // Per origin, the changelog holds exactly the events above the compacted floor.
            let mut expected = 0;
            for (o, &floor) in &log.compacted {
                if floor > log.seq(o) {
                    return Err(format!(
                        "n{i} compacted {o} to {floor} but holds only {}",
                        log.seq(o)
                    ));
                }
            }
            for (o, &held) in &log.have {
                let floor = log.floor(o);
                let range = (o.clone(), floor + 1)..=(o.clone(), held);
                let n = if held > floor {
                    log.changelog.range(range).count() as u64
                } else {
                    0
                };
                if n != held - floor {
                    return Err(format!(
                        "n{i}'s changelog holds {n} events of {o} in {}..={held}, not all",
                        floor + 1
                    ));
                }
                expected += n;
            }
            if log.changelog.len() as u64 != expected {
                return Err(format!(
                    "n{i}'s changelog holds {} events, {expected} above its floors",
                    log.changelog.len()
                ));
            }
            // No acknowledged write lost: each is held, and reflected in its key's versions
            // (one of them is the write, or supersedes it).
            for (dot, key) in &self.written {
                if log.seq(&dot.origin) < dot.seq {
                    return Err(format!(
                        "n{i} lacks the acknowledged write {}:{}",
                        dot.origin, dot.seq
                    ));
                }
                let reflected = log.state.get(key).is_some_and(|v| {
                    v.events()
                        .iter()
                        .any(|e| e.dot() == *dot || e.context.covers(dot))
                });
                if !reflected {
                    let sk = aae::state_key(key);
                    let all: Vec<String> = self
                        .nodes
                        .iter()
                        .enumerate()
                        .map(|(n, node)| {
                            let b = self.knobs.disagreeing == Some(n);
                            format!("n{n}: {}", aae::describe(&node.log, b, &sk))
                        })
                        .collect();
                    return Err(format!(
                        "n{i}'s state does not reflect the acknowledged write {}:{} to {key:?} ({})",
                        dot.origin,
                        dot.seq,
                        all.join("; ")
                    ));
                }
            }
            if log.duplicates > 0 {
                return Err(format!(
                    "n{i} was handed {} events it already held (applied twice)",
                    log.duplicates
                ));
            }
            // Applied exactly once: at most once ever; exactly once for the events of other
            // origins the changelog still holds (snapshots bring the others' effects, not them).
            for ((o, s), &times) in &log.applied {
                if times > 1 {
                    return Err(format!("n{i} applied {o}:{s} {times} times"));
                }
            }
            for ((o, s), e) in &log.changelog {
                let times = log.applied.get(&(o.clone(), *s)).copied().unwrap_or(0);
                let want = u32::from(e.origin != node.id);
                if times != want {
                    return Err(format!("n{i} applied {o}:{s} {times} times"));
                }
            }
            let refused: u64 = self.nodes.iter().map(|n| n.log.forged).sum();
            if log.gaps > 0 && self.injected_failures == 0 && refused == 0 {
                return Err(format!(
                    "n{i} was handed {} applies with a gap though no apply ever failed",
                    log.gaps
                ));
            }
        }
        // Every event any node holds is the one its origin wrote.
        for (i, node) in self.nodes.iter().enumerate() {
            for (dot, e) in &node.log.changelog {
                if let Some(w) = self.written_events.get(dot)
                    && w != e
                {
                    return Err(format!(
                        "n{i} holds {}:{} but not as its origin wrote it",
                        dot.0, dot.1
                    ));
                }
            }
        }
        // An event two nodes both hold is the same event.
        for (i, a) in self.nodes.iter().enumerate() {
            for (j, b) in self.nodes.iter().enumerate().skip(i + 1) {
                for (dot, e) in &a.log.changelog {
                    if b.log.changelog.get(dot).is_some_and(|f| f != e) {
                        return Err(format!("n{i} and n{j} hold different {}:{}", dot.0, dot.1));
                    }
                }
            }
        }
        Ok(())
    }
}

fn describe(m: &Message) -> String {
    match m {
        Message::Hello(h) => format!("hello have {:?}", h.have),
        Message::Events { events, .. } => {
            let mut runs: Vec<(String, u64, u64)> = Vec::new();
            for e in events {
                match runs.last_mut() {
                    Some((o, _, last)) if *o == e.origin.as_str() => *last = e.seq,
                    _ => runs.push((e.origin.to_string(), e.seq, e.seq)),
                }
            }
            format!("events {runs:?}")
        }
        Message::Ack { have, rewind } => format!("ack {have:?} rewind {rewind}"),
        Message::Bye { reason } => format!("bye {reason}"),
        Message::Prune { origins } => format!("prune {origins:?}"),
        Message::Graft { origins } => format!("graft {origins:?}"),
        Message::Reconcile { id, .. } => format!("reconcile {id}"),
        Message::Repair { id, versions, .. } => format!("repair {id}: {} versions", versions.len()),
        Message::Snapshot {
            id,
            page,
            versions,
            done,
            have,
            ..
        } => format!(
            "snapshot {id} page {page}: {} versions, done {done}, have {have:?}",
            versions.len()
        ),
        Message::SnapshotAck { id, page } => format!("snapshot ack {id} page {page}"),
    }
}

/// Runs one seed; the error names the seed and how to reproduce it.
fn run_seed(seed: u64, knobs: Option<Knobs>, print: bool) -> Result<(Stats, u64), String> {
    let mut sim = Sim::new(seed, knobs, print);
    let stats = sim.run()?;
    Ok((stats, sim.trace.hash))
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} must be a number"))
    })
}

/// Whether enough seeds ran for a check that the faults a test injects really happened (one
/// seed, or a low `SIM_SEEDS`, may see none); says so when the check is left out.
fn enough_seeds(ran: usize, needed: usize, check: &str) -> bool {
    if ran < needed {
        println!("not checked, {ran} seeds ran of the {needed} it needs: {check}");
    }
    ran >= needed
}

/// Runs the seeds of `range` (or `SIM_SEED` alone), failing with every failing seed.
fn run_seeds(
    test: &str,
    seeds: std::ops::Range<u64>,
    knobs: impl Fn(u64) -> Option<Knobs>,
) -> Vec<Stats> {
    if let Some(seed) = env_u64("SIM_SEED") {
        let print = std::env::var("SIM_TRACE").is_ok();
        let (stats, hash) = run_seed(seed, knobs(seed), print).unwrap_or_else(|e| panic!("{e}"));
        let (_, again) = run_seed(seed, knobs(seed), false).unwrap();
        assert_eq!(hash, again, "seed {seed} did not replay the same trace");
        println!("seed {seed}: {stats:?}");
        return vec![stats];
    }
    let mut failures = Vec::new();
    let mut all = Vec::new();
    for seed in seeds {
        match run_seed(seed, knobs(seed), false) {
            Ok((stats, _)) => all.push(stats),
            Err(e) => failures.push(format!(
                "{e}\n  reproduce: SIM_SEED={seed} cargo test -p edgerep-replica --test sim {test}"
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{} seeds failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    all
}

fn seed_count() -> u64 {
    env_u64("SIM_SEEDS").unwrap_or(200)
}

#[test]
fn random_clusters_converge() {
    // Half the seeds here, half in the next test, so the two run in parallel.
    let n = seed_count();
    let stats = run_seeds("random_clusters_converge", 0..n / 2, |_| None);
    assert!(stats.iter().map(|s| s.writes).sum::<u64>() > 0);
}

#[test]
fn random_clusters_converge_more() {
    let n = seed_count();
    let stats = run_seeds("random_clusters_converge_more", n / 2..n, |_| None);
    if enough_seeds(stats.len(), 20, "the chaos actually happened") {
        // The chaos actually happened.
        assert!(
            stats
                .iter()
                .any(|s| s.lost > 0 && s.crashes > 0 && s.rewinds > 0)
        );
    }
}

#[test]
fn a_seed_replays_exactly() {
    for seed in [1, 7, 42] {
        let (_, a) = run_seed(seed, None, false).unwrap();
        let (_, b) = run_seed(seed, None, false).unwrap();
        assert_eq!(a, b, "seed {seed}");
    }
    // With snapshots too: the first seed from 50,000 whose run installs snapshot pages.
    let (seed, a) = (50_000..50_100)
        .find_map(|seed| {
            let (stats, a) = run_seed(seed, compaction_knobs(seed), false).unwrap();
            (stats.snapshot_pages_installed > 0).then_some((seed, a))
        })
        .expect("a seed installing snapshot pages");
    let (_, b) = run_seed(seed, compaction_knobs(seed), false).unwrap();
    assert_eq!(a, b, "seed {seed} with compaction");
}

/// n0–n2 never connect: n0's writes reach n2 only through n1.
fn relay_knobs(seed: u64) -> Option<Knobs> {
    let mut k = Knobs::random(&mut Rng::new(seed ^ 0xabc));
    k.nodes = 3;
    k.cut_forever = &[(0, 2)];
    Some(k)
}

#[test]
fn writes_relay_around_a_cut_link() {
    let stats = run_seeds(
        "writes_relay_around_a_cut_link",
        10_000..10_020,
        relay_knobs,
    );
    assert!(stats.iter().all(|s| s.writes > 0));
}

#[test]
fn a_cut_link_carries_nothing() {
    let mut sim = Sim::new(10_000, relay_knobs(10_000), false);
    sim.run().unwrap();
    assert!(!sim.sessions.contains_key(&(0, 2)));
    let n0 = sim.nodes[0].id.clone();
    assert!(sim.written.iter().any(|(d, _)| d.origin == n0), "n0 wrote");
}

/// In a full mesh on a clean network, relaying at once, each write crosses each link about
/// once: the first duplicates prune the slower paths (the relay tree), so events sent per write
/// stay near the N−1 a write needs to reach every other node.
#[test]
fn a_mesh_carries_each_write_about_once_per_peer() {
    for nodes in [3, 5] {
        let knobs = Knobs {
            nodes,
            ..Knobs::clean(600)
        };
        let mut sim = Sim::new(40_000, Some(knobs), std::env::var("SIM_TRACE").is_ok());
        sim.config = ReplicaConfig::default();
        for i in 0..nodes {
            sim.nodes[i].replica = None;
            sim.start(i);
        }
        let stats = sim.run().unwrap_or_else(|e| panic!("{e}"));
        let per_write = stats.events_sent as f64 / stats.writes as f64;
        println!("mesh of {nodes}: {per_write:.2} events sent per write: {stats:?}");
        let ideal = (nodes - 1) as f64;
        assert!(per_write >= ideal, "{stats:?}");
        assert!(
            per_write <= 1.2 * ideal,
            "mesh of {nodes}: {per_write:.2} events sent per write, ideal {ideal}"
        );
    }
}

#[test]
fn long_absence_catches_up_within_bounds() {
    let knobs = |_| {
        Some(Knobs {
            // n2 is down from the start for ~2.5 s of simulated time while n0 and n1 write
            // a backlog of thousands of events.
            absent: Some((2, 0, 1_002_500)),
            backlog_writes: 3,
            ..Knobs::clean(300)
        })
    };
    for seed in 20_000..20_004 {
        let mut sim = Sim::new(seed, knobs(seed), std::env::var("SIM_TRACE").is_ok());
        sim.config = ReplicaConfig {
            window_events: 256,
            batch_events: 64,
            batch_bytes: 1 << 20,
            retransmit_after_ms: 3000,
            ..ReplicaConfig::default()
        };
        for i in 0..3 {
            sim.nodes[i].replica = None;
            sim.start(i);
        }
        let stats = sim.run().unwrap_or_else(|e| panic!("{e}"));
        println!("seed {seed}: {stats:?}");
        assert!(stats.writes > 2000, "backlog of {} writes", stats.writes);
        assert!(stats.max_in_flight <= 256, "{stats:?}");
        assert!(
            stats.max_in_flight > 64,
            "the window was exercised: {stats:?}"
        );
        // Reading stops at READ_LIMIT queued events; one more message may land on top.
        assert!(stats.max_pending <= READ_LIMIT + 64, "{stats:?}");
        assert!(stats.max_apply_events <= READ_LIMIT + 2 * 64, "{stats:?}");
        // A network that loses and reorders nothing needs no rewind.
        assert_eq!(stats.rewinds, 0, "{stats:?}");
        // Live writes between n0 and n1 keep flowing while n2 catches up.
        assert!(stats.live_lag_ms < 200, "{stats:?}");
    }
}

/// The usual chaos, and a compaction every ~33 steps.
fn compaction_knobs(seed: u64) -> Option<Knobs> {
    let mut k = Knobs::random(&mut Rng::new(seed ^ 0xc0de));
    k.compact = 30;
    Some(k)
}

/// Compaction often, with the usual chaos: peers that fall behind a compacted floor (slow, cut
/// off, restarted) get snapshots instead of events, and the cluster still converges with nothing
/// lost and nothing applied twice.
#[test]
fn compaction_forces_snapshots_and_clusters_still_converge() {
    let stats = run_seeds(
        "compaction_forces_snapshots_and_clusters_still_converge",
        50_000..50_000 + seed_count() / 5,
        compaction_knobs,
    );
    let sum = |f: fn(&Stats) -> u64| stats.iter().map(f).sum::<u64>();
    let (compactions, sent, pages, snapshots) = (
        sum(|s| s.compactions),
        sum(|s| s.snapshot_pages_sent),
        sum(|s| s.snapshot_pages_installed),
        sum(|s| s.snapshots_installed),
    );
    println!(
        "{} seeds: {compactions} compactions, {sent} snapshot pages sent, {pages} installed, \
         {snapshots} snapshots installed whole",
        stats.len()
    );
    if enough_seeds(stats.len(), 20, "snapshots actually happened") {
        // Snapshots actually happened, to the end.
        assert!(compactions > 0 && pages > 0 && snapshots > 0);
    }
}

/// A deliberately broken core must fail the checks on some seed.
fn broken_core_is_caught(fault: Fault, expect: &[&str]) {
    let mut caught = 0;
    let mut first = None;
    for seed in 30_000..30_012 {
        let mut k = Knobs::random(&mut Rng::new(seed));
        k.fault = Some(fault);
        // The relay tree sends few duplicates on its own: the network makes some.
        k.duplicate = k.duplicate.max(20);
        if let Err(e) = run_seed(seed, Some(k), false) {
            caught += 1;
            first.get_or_insert(e);
        }
    }
    let e = first.unwrap_or_else(|| panic!("{fault:?} was never caught"));
    println!("{fault:?} caught on {caught} of 12 seeds, first: {e}");
    assert!(
        expect.iter().any(|x| e.contains(x)),
        "{fault:?} caught, but by: {e}"
    );
    assert!(
        caught >= 10,
        "{fault:?} caught on only {caught} of 12 seeds"
    );
}

#[test]
fn acking_before_applying_is_caught() {
    broken_core_is_caught(Fault::AckBeforeApply, &["but durably holds only"]);
}

#[test]
fn applying_duplicates_is_caught() {
    broken_core_is_caught(
        Fault::ApplyDuplicates,
        &[
            "applied twice",
            "times",
            "with a gap though no apply ever failed",
        ],
    );
}

/// One node of every cluster lies during the chaos (see the module docs): the others refuse
/// what it cannot prove, converge, and hold every event exactly as its origin wrote it.
fn byzantine_knobs(seed: u64) -> Option<Knobs> {
    let mut k = Knobs::random(&mut Rng::new(seed ^ 0xb12));
    k.byzantine = Some(k.nodes - 1);
    if seed.is_multiple_of(2) {
        // Half the runs with compaction, so snapshots (and lies about them) happen.
        k.compact = 10;
    }
    Some(k)
}

#[test]
fn a_byzantine_node_cannot_rewrite_history() {
    let n = seed_count() / 4;
    let stats = run_seeds(
        "a_byzantine_node_cannot_rewrite_history",
        70_000..70_000 + n,
        byzantine_knobs,
    );
    if enough_seeds(stats.len(), 10, "the byzantine node lied, and was refused") {
        let tampered: u64 = stats.iter().map(|s| s.tampered).sum();
        let refused: u64 = stats.iter().map(|s| s.forged_refused).sum();
        let versions: u64 = stats.iter().map(|s| s.versions_refused).sum();
        println!(
            "{} seeds: {tampered} messages tampered with, {refused} applies or pages refused ({versions} pages for a version not proven its origin's)",
            stats.len()
        );
        assert!(
            tampered > 0 && refused > 0,
            "the byzantine node lied, and was refused"
        );
        if enough_seeds(
            stats.len(),
            50,
            "snapshot versions were changed, and refused",
        ) {
            assert!(versions > 0, "snapshot versions were changed, and refused");
        }
    }
}

/// Drift faults during the chaos (see the module docs): keys lost and versions changed in
/// place behind the bookkeeping's back, and node 1 resolving concurrent versions differently.
fn drift_knobs(seed: u64) -> Option<Knobs> {
    let mut rng = Rng::new(seed ^ 0xd21f7);
    let mut k = Knobs::random(&mut rng);
    k.damage = rng.range(5, 40);
    k.disagreeing = Some(1);
    // No compaction: a snapshot copies its sender's state, damage included, so a key lost on
    // the sender and changed in place on the only other holder (whose changelog no longer
    // has the event) would have no good copy left anywhere. Anti-entropy repairs from a
    // good copy; it cannot make one.
    k.compact = 0;
    Some(k)
}

#[test]
fn anti_entropy_finds_and_repairs_what_bookkeeping_cannot_see() {
    let n = seed_count() / 4;
    let stats = run_seeds(
        "anti_entropy_finds_and_repairs_what_bookkeeping_cannot_see",
        90_000..90_000 + n,
        drift_knobs,
    );
    let sum = |f: fn(&Stats) -> u64| stats.iter().map(f).sum::<u64>();
    println!(
        "{} seeds: {} damages, {} anti-entropy sessions ({} messages) found {} differing keys, repaired {} versions of drift, settled {} disagreements",
        stats.len(),
        sum(|s| s.damaged),
        sum(|s| s.aae_sessions),
        sum(|s| s.aae_messages),
        sum(|s| s.aae_differing),
        sum(|s| s.drift_repaired),
        sum(|s| s.disagreements),
    );
    if enough_seeds(stats.len(), 10, "damage was injected and repaired") {
        assert!(sum(|s| s.damaged) > 0, "damage was injected");
        assert!(sum(|s| s.drift_repaired) > 0, "and repaired as drift");
        assert!(
            sum(|s| s.disagreements) > 0,
            "the biased resolver disagreed"
        );
    }
}
