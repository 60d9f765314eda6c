//! Seeded simulation of replication over the real store: N nodes, each a real [`Replica`] reading
//! through the node's own `Log` ([`StoreLog`]) and writing through a real [`StoreWriter`] (redb
//! in memory: the same tables, seals, chains, proofs and checks as a file), wired through a
//! simulated network of ordered sessions (QUIC streams) that delays, cuts, heals and drops them,
//! with nodes that crash (the replica and every queued apply lost, the store kept: every commit
//! here is durable), crash between a durable apply and its acknowledgement, fail applies, and
//! compact their changelogs to random floors (so peers behind them get snapshots). Messages go
//! through the real codec. One seeded PRNG drives everything on one thread, so a seed replays
//! exactly (checked).
//!
//! The model simulation (`edgerep-replica/tests/sim.rs`) checks the core's promises against a
//! model of the store, with byzantine peers and drift; this one checks that the real store and
//! the core keep them together: after the chaos every fault is healed, and the cluster must
//! become quiescent with equal haves, digests and state sizes everywhere, every store passing
//! its own verification, every local write held everywhere, every changelog event
//! byte-identical to what its origin wrote, and no event handed to a store twice.
//!
//! With a lying node (`a_lying_peer_changes_nothing_on_the_real_store`), the stores must refuse
//! its changed events and versions, and its false acknowledgements and compacted floors must
//! harm nobody else. Those claims live on in its peers' sessions until they end (in this
//! simulation, at the heal; a node's connections end sooner or later, and anti-entropy repairs
//! what is left): before that they can keep the liar's own events from peers, so that peers
//! that took some of its snapshot pages hold more of its versions than peers that took none
//! (found by seed 185729268: equal haves, different states, until the sessions restarted).
//!
//! `SIM_STORE_SEED=<seed>` runs one seed; `SIM_STORE_SEEDS=<n>` runs n seeds instead of 60.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use edgerep_node::replication::StoreLog;
use edgerep_replica::{Fault, Have, Message, MessageLimits, Output, Replica, ReplicaConfig};
use edgerep_store::{KeyError, Keys, LocalWrite, Received, Store, StoreError, StoreWriter, Sync};
use edgerep_wire::seal::{chain_next, chain_start};
use edgerep_wire::{EncodedEvent, HlcClock, NodeId, Op, Seal, Value};

// The simulations' shared seeded generator.
#[path = "../../edgerep-replica/tests/sim/rng.rs"]
mod rng;
use rng::Rng;

/// The stand-in for a node's signing key: a hash keyed by the signer, deterministic so that a
/// seed replays byte for byte (real keys sign with random nonces). The store signs its own seals
/// with it and checks its peers' with it, as it does with real keys.
struct SimKeys(NodeId);

fn stand_in_signature(signer: &NodeId, message: &[u8]) -> Vec<u8> {
    chain_next(&chain_start(signer), message).to_vec()
}

impl Keys for SimKeys {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        Ok(stand_in_signature(&self.0, message))
    }

    fn verify(
        &self,
        origin: &NodeId,
        _seq: u64,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), KeyError> {
        if signature == stand_in_signature(origin, message) {
            Ok(())
        } else {
            Err(KeyError::BadSignature(format!(
                "the signature is not {origin}'s"
            )))
        }
    }

    fn learn(&self, _origin: &NodeId, _cert: &[u8]) -> Result<(), KeyError> {
        Ok(())
    }
}

/// Work the core handed a node's store, done one at a time in the order yielded.
enum Work {
    Apply {
        peer: NodeId,
        events: Vec<EncodedEvent>,
        seals: Vec<Seal>,
        certs: Vec<(NodeId, Vec<u8>)>,
        /// The peer's chain it was queued on (see `Node::chains`).
        chain: u64,
    },
    Install {
        peer: NodeId,
        versions: Vec<EncodedEvent>,
        proofs: Vec<edgerep_wire::seal::Proof>,
        have: Option<Have>,
        seals: Vec<Seal>,
        certs: Vec<(NodeId, Vec<u8>)>,
    },
}

struct Node {
    id: NodeId,
    store: StoreWriter,
    log: StoreLog,
    /// `None` while the node is down.
    replica: Option<Replica>,
    /// Applies and installs not done yet (volatile: lost in a crash).
    work: VecDeque<Work>,
    /// Per peer, its current chain, as the node's driver has them (`ApplyChain`): an Apply
    /// that fails or leaves events out breaks its chain, and the Applies queued on it behind it
    /// are refused unapplied; Applies queued after that go on a new one.
    chains: BTreeMap<NodeId, u64>,
    clock: HlcClock,
    down_until: u64,
    /// Wall clock offset of this node, in ms.
    skew: u64,
}

impl Node {
    fn status(&self) -> edgerep_store::StoreStatus {
        self.store.status().expect("store status")
    }
}

/// A message on the wire: it dies with its session.
struct Packet {
    from: usize,
    to: usize,
    epoch: u64,
    bytes: Vec<u8>,
}

#[derive(Clone, Copy, Debug)]
struct Knobs {
    nodes: usize,
    chaos_steps: u64,
    write: u64,
    delay_max: u64,
    cut: u64,
    disconnect: u64,
    crash: u64,
    crash_after_apply: u64,
    apply_failure: u64,
    compact: u64,
    /// This node tampers with what it sends during the chaos: it changes events and versions of
    /// other origins it relays, or strips seals. Its own store stays honest.
    byzantine: Option<usize>,
}

impl Knobs {
    fn random(rng: &mut Rng) -> Knobs {
        let faulty = rng.chance(800);
        let f = |rng: &mut Rng, max: u64| if faulty { rng.below(max + 1) } else { 0 };
        Knobs {
            nodes: rng.range(3, 5) as usize,
            chaos_steps: rng.range(150, 450),
            write: rng.range(50, 300),
            delay_max: rng.pick(&[1, 20, 200]),
            cut: f(rng, 8),
            disconnect: f(rng, 8),
            crash: f(rng, 5),
            crash_after_apply: f(rng, 30),
            apply_failure: f(rng, 30),
            compact: if rng.chance(600) { rng.below(30) } else { 0 },
            byzantine: None,
        }
    }
}

/// Events a receiver may hold queued behind an apply before it stops reading that peer.
const READ_LIMIT: usize = 64;

#[derive(Default, Debug)]
struct Stats {
    writes: u64,
    crashes: u64,
    applies: u64,
    /// Applies the store refused for a gap (after an earlier one failed).
    gaps: u64,
    /// Applies refused unapplied because the one before them on their chain failed.
    chain_refused: u64,
    installs: u64,
    compactions: u64,
    /// Messages the byzantine node changed, and the applies and snapshot pages the stores
    /// refused as forged.
    tampered: u64,
    forged_refused: u64,
    /// Applies in which the store left a liar's changed events out (forks).
    forks: u64,
    delivered: u64,
}

struct Sim {
    seed: u64,
    rng: Rng,
    now: u64,
    knobs: Knobs,
    config: ReplicaConfig,
    nodes: Vec<Node>,
    sessions: BTreeMap<(usize, usize), u64>,
    next_epoch: u64,
    cut: BTreeSet<(usize, usize)>,
    /// In flight, by (delivery time, send order).
    wire: BTreeMap<(u64, u64), Packet>,
    sent: u64,
    /// Per (from, to, epoch): when its last message arrives (the next arrives no earlier).
    streams: BTreeMap<(usize, usize, u64), u64>,
    /// Every local write, as its origin's store committed it.
    written: BTreeMap<(NodeId, u64), EncodedEvent>,
    /// A hash of everything sent, in order (a seed must replay it exactly).
    trace: blake3::Hasher,
    /// A deliberate bug in every node's core (the checks must catch it).
    fault: Option<Fault>,
    stats: Stats,
}

/// `SIM_TRACE=1` prints what happens (for replaying one seed).
fn tracing() -> bool {
    std::env::var_os("SIM_TRACE").is_some()
}

/// The dots of `events`, for the trace.
fn dots(events: &[EncodedEvent]) -> String {
    events
        .iter()
        .map(|e| format!("{}:{}", e.origin, e.seq))
        .collect::<Vec<_>>()
        .join(" ")
}

fn pair(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

impl Sim {
    fn new(seed: u64, fault: Option<Fault>) -> Sim {
        Sim::with_knobs(seed, fault, |_| {})
    }

    fn with_knobs(seed: u64, fault: Option<Fault>, adjust: impl FnOnce(&mut Knobs)) -> Sim {
        let mut rng = Rng(seed);
        let mut knobs = Knobs::random(&mut rng);
        adjust(&mut knobs);
        let config = ReplicaConfig {
            window_events: rng.pick(&[4, 32, 256, 16384]),
            batch_events: rng.pick(&[1, 3, 16, 1024]),
            batch_bytes: rng.pick(&[300, 4096, 1 << 20]),
            retransmit_after_ms: rng.pick(&[150, 600, 3000]),
            apply_events: rng.pick(&[1, 5, 64, 4096]),
            announce_every_ms: rng.pick(&[10, 100, 250]),
            graft_after_ms: rng.pick(&[50, 400, 1000]),
            ..ReplicaConfig::default()
        };
        let nodes = (0..knobs.nodes)
            .map(|i| {
                let id = NodeId::parse(&format!("n{i}")).unwrap();
                let (store, resume) = Store::open_in_memory(&id, Default::default()).unwrap();
                let store = StoreWriter::new(store.with_keys(Arc::new(SimKeys(id.clone()))));
                Node {
                    log: StoreLog::new(store.reader()),
                    store,
                    replica: None,
                    work: VecDeque::new(),
                    chains: BTreeMap::new(),
                    clock: HlcClock::new(resume.hlc_last, 60_000),
                    down_until: 0,
                    skew: rng.below(50),
                    id,
                }
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
            cut: BTreeSet::new(),
            wire: BTreeMap::new(),
            sent: 0,
            streams: BTreeMap::new(),
            written: BTreeMap::new(),
            trace: blake3::Hasher::new(),
            fault,
            stats: Stats::default(),
        };
        for i in 0..sim.nodes.len() {
            sim.start(i);
        }
        sim
    }

    /// A (re)started node: a fresh core over what its store holds.
    fn start(&mut self, i: usize) {
        let status = self.nodes[i].status();
        let mut r = Replica::new(self.nodes[i].id.clone(), self.config.clone());
        if let Some(f) = self.fault {
            r.inject_fault(f);
        }
        r.set_local_have(&status.origins);
        r.set_compacted(&status.compacted);
        self.nodes[i].replica = Some(r);
    }

    /// The replica and everything volatile go; the store stays.
    fn crash(&mut self, i: usize, down_ms: u64) {
        if self.nodes[i].replica.take().is_none() {
            return;
        }
        self.nodes[i].work.clear();
        if tracing() {
            eprintln!("{} n{i} crashes", self.now);
        }
        self.nodes[i].down_until = self.now + down_ms;
        self.stats.crashes += 1;
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
        self.wire.retain(|_, packet| packet.epoch != epoch);
        for (me, other) in [(p.0, p.1), (p.1, p.0)] {
            let peer = self.nodes[other].id.clone();
            if let Some(r) = self.nodes[me].replica.as_mut() {
                r.disconnected(&peer, self.now);
            }
        }
    }

    fn connect(&mut self, p: (usize, usize)) {
        self.next_epoch += 1;
        self.sessions.insert(p, self.next_epoch);
        for (me, other) in [(p.0, p.1), (p.1, p.0)] {
            let peer = self.nodes[other].id.clone();
            self.nodes[me]
                .replica
                .as_mut()
                .unwrap()
                .connected(&peer, self.now);
        }
    }

    /// A local write through the store (acknowledged to its client once it returns).
    fn write(&mut self, i: usize) -> Result<(), String> {
        let key = if self.rng.chance(500) {
            format!("shared-{}", self.rng.below(6))
        } else {
            format!("n{i}-{}", self.rng.below(20))
        };
        let collection = self.rng.pick(&["c1", "c2"]).to_owned();
        let value = (!self.rng.chance(150)).then(|| {
            let mut cbor = Vec::new();
            minicbor::Encoder::new(&mut cbor)
                .u64(self.rng.below(1000))
                .unwrap();
            Value::from_canonical(cbor, &Default::default()).unwrap()
        });
        let wall = self.now + self.nodes[i].skew;
        let node = &mut self.nodes[i];
        let committed = node
            .store
            .commit_local(
                vec![LocalWrite {
                    collection,
                    key: key.into_bytes(),
                    value,
                    schema: 0,
                    meta: BTreeMap::new(),
                    context: None,
                }],
                &mut node.clock,
                wall,
            )
            .map_err(|e| format!("n{i} could not commit a local write: {e}"))?;
        let seq = committed[0].seq;
        let event = node
            .store
            .changelog(node.id.as_str(), seq - 1, 1)
            .map_err(|e| format!("n{i} cannot read its own write back: {e}"))?
            .pop()
            .ok_or_else(|| format!("n{i}'s changelog lacks its write {seq}"))?;
        self.written.insert((node.id.clone(), seq), event);
        let have = node.status().origins;
        node.replica.as_mut().unwrap().set_local_have(&have);
        self.stats.writes += 1;
        Ok(())
    }

    /// Each origin to a random floor between its current one and its have (the store stops at
    /// seal boundaries); a peer behind it then needs a snapshot.
    fn compact(&mut self, i: usize) -> Result<(), String> {
        if self.nodes[i].replica.is_none() {
            return Ok(());
        }
        let status = self.nodes[i].status();
        let floors: Have = status
            .origins
            .iter()
            .map(|(o, &h)| {
                let floor = status.compacted.get(o).copied().unwrap_or(0);
                (o.clone(), self.rng.range(floor, h))
            })
            .collect();
        let node = &mut self.nodes[i];
        let out = node
            .store
            .compact(&floors, u64::MAX, Sync::Immediate)
            .map_err(|e| format!("n{i} could not compact: {e}"))?;
        node.replica.as_mut().unwrap().set_compacted(&out.compacted);
        if out.removed > 0 {
            self.stats.compactions += 1;
        }
        if tracing() {
            eprintln!("{} n{i} compacts to {:?}", self.now, out.compacted);
        }
        Ok(())
    }

    fn send(&mut self, from: usize, to: usize, message: &Message, chaos: bool) {
        let Some(&epoch) = self.sessions.get(&pair(from, to)) else {
            return;
        };
        let tampered = (chaos && self.knobs.byzantine == Some(from) && self.rng.chance(400))
            .then(|| self.tamper(from, message))
            .flatten();
        if tampered.is_some() {
            self.stats.tampered += 1;
        }
        let sent = tampered.as_ref().unwrap_or(message);
        if tracing() {
            let what = match sent {
                Message::Events { events, seals, .. } => {
                    format!("events [{}] seals {}", dots(events), seals.len())
                }
                Message::Snapshot { versions, .. } => format!("snapshot [{}]", dots(versions)),
                other => format!("{other:?}").chars().take(120).collect(),
            };
            let lie = if tampered.is_some() {
                " (tampered)"
            } else {
                ""
            };
            eprintln!("{} n{from} -> n{to}{lie}: {what}", self.now);
        }
        let bytes = sent.encode();
        self.trace.update(&(bytes.len() as u64).to_le_bytes());
        self.trace.update(&bytes);
        self.sent += 1;
        // A session is one ordered stream each way: a message arrives after the one before it.
        let last = self.streams.entry((from, to, epoch)).or_insert(0);
        let at = (self.now + self.rng.range(1, self.knobs.delay_max)).max(*last);
        *last = at;
        self.wire.insert(
            (at, self.sent),
            Packet {
                from,
                to,
                epoch,
                bytes,
            },
        );
    }

    /// What the byzantine node `from` sends instead of `message`, if it can change it: a
    /// well-formed lie, canonical and within limits: events and versions changed under their
    /// origins' seals, seals stripped, compacted floors nobody has (inviting snapshots), and
    /// acknowledgements of events never received (false cursors).
    fn tamper(&mut self, from: usize, message: &Message) -> Option<Message> {
        let me = self.nodes[from].id.clone();
        let mut cbor = Vec::new();
        minicbor::Encoder::new(&mut cbor).u64(999_999).ok()?;
        let lie = Value::from_canonical(cbor, &Default::default()).ok()?;
        let change = |e: &mut EncodedEvent| {
            let mut changed = e.clone().into_event();
            changed.op = Op::Put;
            changed.value = Some(lie.clone());
            *e = EncodedEvent::new(changed);
        };
        let mut m = message.clone();
        match &mut m {
            Message::Events { events, seals, .. } => {
                if self.rng.chance(300) {
                    seals.clear();
                } else {
                    change(events.iter_mut().find(|e| e.origin != me)?);
                }
            }
            Message::Snapshot { versions, .. } => {
                change(versions.iter_mut().find(|e| e.origin != me)?);
            }
            // Claim compacted floors far above what anyone holds, inviting a snapshot nobody
            // needs.
            Message::Hello(h) => {
                for (o, s) in h.have.clone() {
                    if o != me && s > 0 {
                        h.compacted.push((o, s + 1000));
                    }
                }
                h.compacted.sort();
                h.compacted.dedup_by(|a, b| a.0 == b.0);
            }
            // A false cursor: acknowledge far more than was received.
            Message::Ack { have, .. } => {
                for (_, s) in have.iter_mut() {
                    *s += 1000;
                }
            }
            _ => return None,
        }
        Some(m)
    }

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
            // Backpressure: stop reading this peer's stream while its events wait; what follows
            // on the stream waits too.
            if r.pending_apply_events(&peer) >= READ_LIMIT {
                continue;
            }
            let packet = self.wire.remove(&k).unwrap();
            let message = Message::decode(&packet.bytes, &MessageLimits::default())
                .map_err(|e| format!("n{i} could not decode a message from n{from}: {e}"))?;
            r.handle(&peer, message, self.now)
                .map_err(|e| format!("n{i} refused a message from n{from}: {e}"))?;
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
                    certs,
                } => {
                    let chain = self.nodes[i].chains.get(&peer).copied().unwrap_or(0);
                    self.nodes[i].work.push_back(Work::Apply {
                        peer,
                        events,
                        seals,
                        certs,
                        chain,
                    })
                }
                Output::InstallSnapshot {
                    peer,
                    versions,
                    proofs,
                    have,
                    seals,
                    certs,
                } => self.nodes[i].work.push_back(Work::Install {
                    peer,
                    versions,
                    proofs,
                    have,
                    seals,
                    certs,
                }),
                Output::Acked { peer, have } => {
                    // An acknowledgement is durable at the (honest) peer that gave it.
                    let j = self.nodes.iter().position(|n| n.id == peer).unwrap();
                    if self.knobs.byzantine == Some(j) {
                        continue;
                    }
                    let held = self.nodes[j].status().origins;
                    for (o, &s) in &have {
                        let h = held.get(o).copied().unwrap_or(0);
                        if s > h {
                            return Err(format!(
                                "n{j} acknowledged {o}:{s} to n{i} but its store holds only {h}"
                            ));
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Tells node `i`'s core that its Apply (or, with `install`, its snapshot page) of `peer`'s
    /// did not become durable, as the node's driver does, and passes on what follows.
    fn not_done(
        &mut self,
        i: usize,
        peer: &NodeId,
        install: bool,
        why: &str,
    ) -> Result<(), String> {
        let now = self.now;
        let r = self.nodes[i]
            .replica
            .as_mut()
            .expect("a node with queued work is up");
        if install {
            r.install_failed(peer, why, now);
        } else {
            r.apply_failed(peer, why, now);
        }
        self.outputs(i)
    }

    /// Does node `i`'s oldest queued work on its store, maybe failing it, or crashing right
    /// after it is durable.
    fn work(&mut self, i: usize, chaos: bool) -> Result<(), String> {
        let Some(work) = self.nodes[i].work.pop_front() else {
            return Ok(());
        };
        let now = self.now;
        let wall = now + self.nodes[i].skew;
        let fail = chaos && self.rng.chance(self.knobs.apply_failure);
        let crash_after = chaos && self.rng.chance(self.knobs.crash_after_apply);
        let liar = self.knobs.byzantine.map(|b| self.nodes[b].id.clone());
        let node = &mut self.nodes[i];
        let before = node.status();
        match work {
            Work::Apply {
                peer,
                events,
                seals,
                certs,
                chain,
            } => {
                if chain < node.chains.get(&peer).copied().unwrap_or(0) {
                    self.stats.chain_refused += 1;
                    return self.not_done(i, &peer, false, "the batch before it failed");
                }
                // Breaks the peer's chain: later Applies queued on it are refused.
                let break_chain = |node: &mut Node| {
                    *node.chains.entry(peer.clone()).or_insert(0) = chain + 1;
                };
                if fail {
                    break_chain(node);
                    return self.not_done(i, &peer, false, "injected");
                }
                // Nothing handed out twice: an event of another origin above the floor that the
                // store holds already was filtered out by the core, or it is a bug.
                for e in &events {
                    let held = before.origins.get(&e.origin).copied().unwrap_or(0);
                    let floor = before.compacted.get(&e.origin).copied().unwrap_or(0);
                    if e.origin != node.id && e.seq <= held && e.seq > floor {
                        return Err(format!(
                            "n{i} was handed {}:{} from {peer}, which it holds already",
                            e.origin, e.seq
                        ));
                    }
                }
                if tracing() {
                    eprintln!("{now} n{i} applies from {peer}: [{}]", dots(&events));
                }
                let applied = node.store.apply_sealed(
                    events.into_iter().map(Received::as_received).collect(),
                    &seals,
                    &certs,
                    &[],
                    Sync::Immediate,
                    &mut node.clock,
                    wall,
                );
                match applied {
                    Ok(out) => {
                        self.stats.applies += 1;
                        // Events changed under their origin's genuine seal chain to no history
                        // the store holds: it leaves that origin's events out (a fork report)
                        // and applies the rest. Only a liar's events do that here.
                        if !out.forks.is_empty() {
                            if liar.as_ref() != Some(&peer) {
                                return Err(format!(
                                    "n{i} found forks in what honest {peer} sent: {:?}",
                                    out.forks
                                ));
                            }
                            self.stats.forks += out.forks.len() as u64;
                            break_chain(node);
                        }
                    }
                    // An earlier Apply of the origin's events (from another peer) failed or left
                    // them out (a fork): this one then starts past the store's have. The core
                    // takes the failure back and asks again, as the node's driver has it do.
                    Err(e @ StoreError::Gap { .. })
                        if self.knobs.apply_failure > 0
                            || self.stats.forks + self.stats.forged_refused > 0 =>
                    {
                        self.stats.gaps += 1;
                        break_chain(node);
                        return self.not_done(i, &peer, false, &e.to_string());
                    }
                    // Only the byzantine node's lies are refused as forged.
                    Err(e @ StoreError::Forged { .. }) if liar.as_ref() == Some(&peer) => {
                        self.stats.forged_refused += 1;
                        break_chain(node);
                        return self.not_done(i, &peer, false, &e.to_string());
                    }
                    Err(e) => {
                        return Err(format!("n{i}'s store refused an apply from {peer}: {e}"));
                    }
                }
                if crash_after {
                    let down = self.rng.range(10, 500);
                    self.crash(i, down);
                    return Ok(());
                }
                let node = &mut self.nodes[i];
                let have = node.status().origins;
                let r = node.replica.as_mut().unwrap();
                r.set_local_have(&have);
                r.applied(&peer, now);
            }
            Work::Install {
                peer,
                versions,
                proofs,
                have,
                seals,
                certs,
            } => {
                if fail {
                    return self.not_done(i, &peer, true, "injected");
                }
                for v in &versions {
                    let _ = node.clock.observe(v.hlc, wall);
                }
                if tracing() {
                    eprintln!(
                        "{now} n{i} installs from {peer}: [{}] have {have:?}",
                        dots(&versions)
                    );
                }
                let installed = node.store.install_sealed(
                    versions,
                    &proofs,
                    have.as_ref(),
                    &seals,
                    &certs,
                    Some(node.clock.last()),
                    Sync::Immediate,
                );
                let out = match installed {
                    Ok(out) => out,
                    Err(e @ (StoreError::Forged { .. } | StoreError::SnapshotRefused(_)))
                        if liar.as_ref() == Some(&peer) =>
                    {
                        self.stats.forged_refused += 1;
                        return self.not_done(i, &peer, true, &e.to_string());
                    }
                    Err(e) => {
                        return Err(format!(
                            "n{i}'s store refused a snapshot page from {peer}: {e}"
                        ));
                    }
                };
                self.stats.installs += 1;
                if crash_after {
                    let down = self.rng.range(10, 500);
                    self.crash(i, down);
                    return Ok(());
                }
                let r = self.nodes[i].replica.as_mut().unwrap();
                r.set_local_have(&out.held);
                r.set_compacted(&out.compacted);
                r.installed(&peer, now);
            }
        }
        self.outputs(i)
    }

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
                let held = node.status().origins;
                for (o, s) in have {
                    let h = held.get(o).copied().unwrap_or(0);
                    if *s > h {
                        return Err(format!(
                            "n{i} sent an ack for {o}:{s} but its store holds only {h}"
                        ));
                    }
                }
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
                let cut: Vec<_> = self.cut.iter().copied().collect();
                let p = cut[self.rng.below(cut.len() as u64) as usize];
                self.cut.remove(&p);
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
            if self.rng.chance(k.write) {
                let i = self.rng.below(n as u64) as usize;
                for _ in 0..self.rng.range(1, 3) {
                    if self.nodes[i].replica.is_some() {
                        self.write(i)?;
                    }
                }
            }
            if self.rng.chance(k.compact) {
                let i = self.rng.below(n as u64) as usize;
                self.compact(i)?;
            }
        }
        for i in 0..n {
            if self.nodes[i].replica.is_none() && self.now >= self.nodes[i].down_until {
                self.start(i);
            }
        }
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
            // Applying is slower than receiving now and then, so applies queue up.
            if self.nodes[i].replica.is_some() && (!chaos || self.rng.chance(700)) {
                self.work(i, chaos)?;
            }
            let Some(r) = self.nodes[i].replica.as_mut() else {
                continue;
            };
            if r.poll_timeout().is_some_and(|t| t <= self.now) {
                r.handle_timeout(self.now);
            }
            any |= self.transmit(i, chaos)?;
        }
        Ok(any)
    }

    fn next_time(&self) -> u64 {
        let mut t = self.now + 50;
        if let Some((&(at, _), _)) = self.wire.iter().next() {
            t = t.min(at);
        }
        for node in &self.nodes {
            match &node.replica {
                Some(r) => {
                    if let Some(d) = r.poll_timeout() {
                        t = t.min(d);
                    }
                }
                None => t = t.min(node.down_until),
            }
        }
        t.max(self.now + 1)
    }

    fn run(&mut self) -> Result<[u8; 32], String> {
        for _ in 0..self.knobs.chaos_steps {
            self.now += self.rng.range(1, 10);
            self.step(true).map_err(|e| self.fail(e))?;
        }
        // Heal: every link, every node up, until quiescent.
        self.cut.clear();
        // A liar's claims (acknowledgements, compacted floors) live on in its peers' sessions:
        // they end, as connections do sooner or later, and the sessions start again from
        // honest Hellos.
        if self.knobs.byzantine.is_some() {
            let all: Vec<_> = self.sessions.keys().copied().collect();
            for p in all {
                self.drop_session(p);
            }
        }
        let mut quiet = 0;
        for _ in 0..100_000 {
            let busy = self.step(false).map_err(|e| self.fail(e))?;
            let settled = self
                .nodes
                .iter()
                .all(|n| n.replica.is_some() && n.work.is_empty())
                && self.wire.is_empty()
                && !busy
                && self
                    .nodes
                    .windows(2)
                    .all(|w| w[0].status().origins == w[1].status().origins);
            quiet = if settled { quiet + 1 } else { 0 };
            if quiet >= 2 {
                self.check().map_err(|e| self.fail(e))?;
                return Ok(*self.trace.finalize().as_bytes());
            }
            self.now = self.next_time();
        }
        let haves: Vec<_> = self
            .nodes
            .iter()
            .map(|n| format!("{:?}", n.status().origins))
            .collect();
        Err(self.fail(format!(
            "not quiescent after 100000 steps; {} messages in flight; haves {haves:?}",
            self.wire.len()
        )))
    }

    fn fail(&self, what: String) -> String {
        format!(
            "seed {}: {what} (knobs {:?}, {:?})",
            self.seed, self.knobs, self.stats
        )
    }

    /// The end state: one state everywhere (on the liar's node too, once it lies no more), each
    /// store sound, every write everywhere, every event byte-identical to what its origin
    /// wrote.
    fn check(&self) -> Result<(), String> {
        let statuses: Vec<_> = self.nodes.iter().map(Node::status).collect();
        let first = 0;
        for i in 1..self.nodes.len() {
            let (s, f) = (&statuses[i], &statuses[first]);
            if s.origins != f.origins {
                return Err(format!(
                    "haves differ: n{first} {:?}, n{i} {:?}",
                    f.origins, s.origins
                ));
            }
            if (s.digest, s.state_entries) != (f.digest, f.state_entries) {
                return Err(format!(
                    "states differ: n{first} {} keys digest {:?}, n{i} {} keys digest {:?}",
                    f.state_entries, f.digest, s.state_entries, s.digest
                ));
            }
        }
        for (i, node) in self.nodes.iter().enumerate() {
            match node.store.verify() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(format!("n{i}'s store fails verification: {e}")),
                Err(e) => return Err(format!("n{i}'s store cannot be verified: {e}")),
            }
            let status = &statuses[i];
            for ((origin, seq), written) in &self.written {
                if status.origins.get(origin).copied().unwrap_or(0) < *seq {
                    return Err(format!("n{i} lacks the write {origin}:{seq}"));
                }
                let floor = status.compacted.get(origin).copied().unwrap_or(0);
                if *seq <= floor {
                    continue;
                }
                let held = node
                    .store
                    .changelog(origin.as_str(), seq - 1, 1)
                    .map_err(|e| format!("n{i} cannot read {origin}:{seq}: {e}"))?;
                if held.first().map(|e| e.bytes()) != Some(written.bytes()) {
                    return Err(format!(
                        "n{i}'s changelog holds {origin}:{seq} other than its origin wrote it"
                    ));
                }
            }
        }
        if self.stats.writes == 0 {
            return Err("the run wrote nothing".into());
        }
        Ok(())
    }
}

fn seeds() -> Vec<u64> {
    if let Some(seed) = std::env::var("SIM_STORE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return vec![seed];
    }
    let n = std::env::var("SIM_STORE_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    (0..n).map(|i| 0x5eed_0000 + i).collect()
}

#[test]
fn random_clusters_on_the_real_store_converge() {
    let (mut applies, mut installs, mut crashes, mut compactions) = (0, 0, 0, 0);
    let mut chain_refused = 0;
    for seed in seeds() {
        let mut sim = Sim::new(seed, None);
        sim.run().unwrap_or_else(|e| panic!("{e}"));
        applies += sim.stats.applies;
        installs += sim.stats.installs;
        crashes += sim.stats.crashes;
        compactions += sim.stats.compactions;
        chain_refused += sim.stats.chain_refused;
    }
    eprintln!(
        "{applies} applies, {installs} snapshot pages installed, {crashes} crashes, {compactions} compactions, {chain_refused} applies refused behind a failed one"
    );
    // The seeds must exercise what they are meant to.
    if std::env::var("SIM_STORE_SEED").is_err() {
        assert!(applies > 100, "only {applies} applies");
        assert!(
            chain_refused > 0,
            "no apply was refused behind a failed one"
        );
        assert!(installs > 0, "no snapshot was installed");
        assert!(crashes > 0 && compactions > 0, "no crash or no compaction");
    }
}

#[test]
fn a_seed_replays_exactly_on_the_real_store() {
    let seed = seeds()[0];
    let first = Sim::new(seed, None).run().unwrap_or_else(|e| panic!("{e}"));
    let second = Sim::new(seed, None).run().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        first, second,
        "seed {seed} sent other bytes the second time"
    );
}

#[test]
fn a_broken_core_is_caught_on_the_real_store() {
    for (fault, expected) in [
        (Fault::AckBeforeApply, "but its store holds only"),
        (Fault::ApplyDuplicates, "which it holds already"),
    ] {
        let caught = (0..30).find_map(|i| Sim::new(0xbad_0000 + i, Some(fault)).run().err());
        let error = caught.unwrap_or_else(|| panic!("{fault:?} went unnoticed in 30 seeds"));
        assert!(
            error.contains(expected),
            "{fault:?} caught otherwise: {error}"
        );
    }
}

#[test]
fn a_lying_peer_changes_nothing_on_the_real_store() {
    let (mut tampered, mut refused) = (0, 0);
    for i in 0..(seeds().len() as u64).div_ceil(2) {
        let mut sim = Sim::with_knobs(0xb12_0000 + i, None, |k| {
            k.byzantine = Some(1);
            k.compact = k.compact.max(10);
        });
        // The end checks hold every changelog event to what its origin wrote.
        sim.run().unwrap_or_else(|e| panic!("{e}"));
        tampered += sim.stats.tampered;
        refused += sim.stats.forged_refused + sim.stats.forks;
    }
    eprintln!(
        "{tampered} messages tampered with, {refused} applies and pages refused as forged or left out as forks"
    );
    assert!(
        tampered > 0 && refused > 0,
        "{tampered} tampered, {refused} refused"
    );
}
