//! A hostile peer for tests: it holds a valid certificate from the cluster's CA (a stolen or
//! buggy node) and speaks the replication protocol, so a test can send a real node anything:
//! forged origins, forks, unsolicited snapshots, extreme causal contexts, oversize or malformed
//! frames, floods of origins, or nothing at all (a peer that never reads).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use edgerep_config::Config;
use edgerep_replica::{Hello, Message, MessageLimits, PROTOCOL_VERSION};
use edgerep_transport::certs::Identity;
use edgerep_transport::frame::{FrameReader, write_frame};
use edgerep_transport::seal::Signer;
use edgerep_transport::tls::TransportConfig;
use edgerep_transport::{PeerConnection, Transport};
use edgerep_wire::seal::{ChainHash, chain_link, chain_start, event_leaf, merkle_root};
use edgerep_wire::{EncodedEvent, Event, Hlc, NodeId, Op, Seal, Value, VersionVector};
use quinn::{RecvStream, SendStream};

/// One connection from a hostile node to a real one.
pub struct Hostile {
    pub rt: tokio::runtime::Runtime,
    pub id: NodeId,
    /// The target's policy (a Hello must match it to be accepted).
    pub policy: Vec<(String, String)>,
    pub conn: PeerConnection,
    send: SendStream,
    recv: RecvStream,
    reader: FrameReader,
    _transport: Transport,
    /// Signs with the stolen identity's key.
    pub signer: Signer,
    /// Every chain hash this peer computed, by (origin, seq).
    chains: BTreeMap<(NodeId, u64), ChainHash>,
}

impl Hostile {
    /// Connects to the node of `target_config` using the identity (certificate and key) of the
    /// node whose config is `as_config`: an authenticated peer of the target.
    pub fn connect(as_config: &Path, target_config: &Path) -> Hostile {
        let me = Config::load(as_config).unwrap();
        let target = Config::load(target_config).unwrap();
        let tls = me.replication.tls.as_ref().unwrap();
        let read = |p: &Path| std::fs::read_to_string(p).unwrap();
        let identity =
            Identity::from_pem(&read(&tls.ca), &read(&tls.cert), &read(&tls.key)).unwrap();
        let signer = Signer::new(&identity).unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let address = target.replication.listen.to_string();
        let peers = vec![(target.node.id.clone(), address.clone())];
        let (transport, conn, send, recv) = rt.block_on(async {
            let transport = Transport::bind(
                "127.0.0.1:0".parse().unwrap(),
                identity,
                peers,
                TransportConfig::default(),
            )
            .unwrap();
            let conn = transport.connect(&target.node.id, &address).await.unwrap();
            let (send, recv) = conn.quic().open_bi().await.unwrap();
            (transport, conn, send, recv)
        });
        Hostile {
            rt,
            id: me.node.id.clone(),
            policy: edgerep_node::replication::policy(&target),
            conn,
            send,
            recv,
            reader: FrameReader::new(MessageLimits::default().max_frame_bytes as u32),
            _transport: transport,
            signer,
            chains: BTreeMap::new(),
        }
    }

    /// An Events message of `events` with a seal at the end of each origin's run, signed with
    /// this peer's key (valid for its own events, a forgery for any other origin's), chained
    /// from what this peer sent before under that origin (or the start of its chain), and this
    /// peer's certificate.
    pub fn sealed(&mut self, events: Vec<Event>) -> Message {
        let mut seals = Vec::new();
        let mut i = 0;
        while i < events.len() {
            let origin = events[i].origin.clone();
            let first = events[i].seq;
            let mut chain = if first <= 1 {
                chain_start(&origin)
            } else {
                self.chains
                    .get(&(origin.clone(), first - 1))
                    .copied()
                    .unwrap_or([0; 32])
            };
            let mut leaves = Vec::new();
            while i < events.len() && events[i].origin == origin {
                let leaf = event_leaf(&events[i].encode());
                chain = chain_link(&chain, &leaf);
                leaves.push(leaf);
                self.chains.insert((origin.clone(), events[i].seq), chain);
                i += 1;
            }
            let seq = events[i - 1].seq;
            seals.push(self.seal(origin, first, seq, chain, merkle_root(&leaves)));
        }
        Message::Events {
            events: events.into_iter().map(EncodedEvent::new).collect(),
            seals,
            certs: vec![(self.id.clone(), self.signer.cert().to_vec())],
        }
    }

    /// A seal signed with this peer's key (valid for its own origin only).
    pub fn seal(
        &self,
        origin: NodeId,
        first: u64,
        seq: u64,
        chain: ChainHash,
        root: ChainHash,
    ) -> Seal {
        let signature = self
            .signer
            .sign(&Seal::signed_bytes(&origin, seq, first, &chain, &root))
            .unwrap();
        Seal {
            origin,
            seq,
            first,
            chain,
            root,
            signature,
        }
    }

    /// Sends one message.
    pub fn send(&mut self, m: &Message) -> Result<(), String> {
        self.send_raw(&m.encode())
    }

    /// Sends one frame with any payload.
    pub fn send_raw(&mut self, payload: &[u8]) -> Result<(), String> {
        let send = &mut self.send;
        self.rt
            .block_on(write_frame(send, payload))
            .map_err(|e| e.to_string())
    }

    /// Sends bytes as they are (no length prefix).
    pub fn send_bytes(&mut self, bytes: &[u8]) -> Result<(), String> {
        let send = &mut self.send;
        self.rt
            .block_on(send.write_all(bytes))
            .map_err(|e| e.to_string())
    }

    /// A valid Hello from this node holding `have`, having compacted up to `compacted`.
    pub fn hello(&self, have: &[(&str, u64)], compacted: &[(&str, u64)]) -> Message {
        self.hello_with(have, compacted, Vec::new())
    }

    /// [`Hostile::hello`] claiming to run `fingerprint`.
    pub fn hello_with(
        &self,
        have: &[(&str, u64)],
        compacted: &[(&str, u64)],
        fingerprint: Vec<edgerep_replica::CollectionFingerprint>,
    ) -> Message {
        let list = |l: &[(&str, u64)]| {
            l.iter()
                .map(|(o, s)| (NodeId::parse(o).unwrap(), *s))
                .collect()
        };
        Message::Hello(Hello {
            protocol: PROTOCOL_VERSION,
            node: self.id.clone(),
            instance: 7,
            fingerprint,
            have: list(have),
            compacted: list(compacted),
            policy: self.policy.clone(),
            your_seal: None,
        })
    }

    /// The next message from the target within `wait`: `Ok(None)` on timeout, `Err` when the
    /// connection ended (with the reason).
    pub fn recv(&mut self, wait: Duration) -> Result<Option<Message>, String> {
        let reader = &mut self.reader;
        let recv = &mut self.recv;
        match self
            .rt
            .block_on(async { tokio::time::timeout(wait, reader.read_frame(recv)).await })
        {
            Err(_) => Ok(None),
            Ok(Ok(Some(bytes))) => Message::decode(&bytes, &MessageLimits::default())
                .map(Some)
                .map_err(|e| e.to_string()),
            Ok(Ok(None)) => Err("stream finished".into()),
            Ok(Err(e)) => Err(e.to_string()),
        }
    }

    /// Reads messages until one matches `want` or `wait` passes; returns it.
    pub fn wait_for(&mut self, wait: Duration, want: impl Fn(&Message) -> bool) -> Option<Message> {
        let deadline = std::time::Instant::now() + wait;
        while std::time::Instant::now() < deadline {
            match self.recv(Duration::from_millis(100)) {
                Ok(Some(m)) if want(&m) => return Some(m),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    }

    /// Whether the target closed the connection within `wait`, and its reason.
    pub fn closed_within(&mut self, wait: Duration) -> Option<String> {
        let deadline = std::time::Instant::now() + wait;
        while std::time::Instant::now() < deadline {
            if let Some(reason) = self.conn.close_reason() {
                return Some(reason);
            }
            if let Err(e) = self.recv(Duration::from_millis(50)) {
                return Some(self.conn.close_reason().unwrap_or(e));
            }
        }
        None
    }
}

/// An event for tests: a put of `{"v": n}` under `key`.
pub fn event(origin: &str, seq: u64, collection: &str, key: &str, v: u64) -> Event {
    let value = Value::from_json(&serde_json::json!({ "v": v }), &Default::default()).unwrap();
    Event {
        format: 1,
        collection: collection.into(),
        key: key.as_bytes().to_vec(),
        op: Op::Put,
        value: Some(value),
        hlc: Hlc::new(1_700_000_000_000 + seq, 0),
        origin: NodeId::parse(origin).unwrap(),
        seq,
        schema: 0,
        meta: Default::default(),
        context: VersionVector::new(),
        extra: Default::default(),
    }
}

/// `event` with a causal context.
pub fn with_context(mut e: Event, context: &[(&str, u64)]) -> Event {
    for (o, s) in context {
        e.context.add(&edgerep_wire::event::Dot {
            origin: NodeId::parse(o).unwrap(),
            seq: *s,
        });
    }
    e
}
