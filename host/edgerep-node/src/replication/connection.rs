//! One connection's tasks: the dialer that keeps a configured peer connected, and the reader
//! and writer of a peer link that carry frames between it and the replicator thread.

use super::*;

/// A peer's reader stops reading while its messages not yet taken by the replicator take more
/// bytes than this.
pub(super) const INBOX_MAX_BYTES: usize = 32 << 20;

/// What a message costs the inbox at least, whatever its frame's size: a decoded message takes
/// a few hundred bytes however small its frame (a peer sending 3-byte frames must not queue
/// millions of them within [`INBOX_MAX_BYTES`]).
const INBOX_MESSAGE_MIN_BYTES: usize = 1024;

/// What `message`, of a `frame_bytes` frame, costs the inbox: what it takes decoded (see
/// [`Message::approx_decoded_bytes`]), at least [`INBOX_MESSAGE_MIN_BYTES`].
pub(super) fn inbox_cost(message: &Message, frame_bytes: usize) -> usize {
    message
        .approx_decoded_bytes(frame_bytes)
        .max(INBOX_MESSAGE_MIN_BYTES)
}

/// How often a paused reader looks whether its connection closed.
const READER_CLOSE_LOOK: Duration = Duration::from_millis(100);

/// Dial retry back-off bounds.
const DIAL_MIN: Duration = Duration::from_millis(100);

const DIAL_MAX: Duration = Duration::from_secs(3);

/// A connection that lasted less than this is a failed dial for the back-off: a peer that
/// closes every session right after the handshake (another policy, a duplicate id, halted)
/// is not dialled ten times a second.
const DIAL_LASTED: Duration = Duration::from_secs(10);

/// The node of a pair that does not dial (the greater id) dials again once the peer has not
/// been connected to it for this long: the peer may be unable to reach it (a firewall or NAT
/// in front of this node lets connections out only), and would never reconnect.
const UNDIALED_FOR: Duration = Duration::from_secs(15);
/// The longest such wait (it doubles after each connection that did not last).
const UNDIALED_FOR_MAX: Duration = Duration::from_secs(300);

/// A connection whose stream is not opened within this is closed (a peer that completes the
/// handshake and stops there would hold the connection, and its task, for ever: keep-alives
/// keep it from idling out).
const LINK_WITHIN: Duration = Duration::from_secs(10);

/// `d` stretched by a random factor in [0.5, 1.5): peers that lost a hub at the same moment do
/// not dial it again in lockstep. (The clock's low digits were the source once: on a clock
/// that counts in microseconds they are always zero.)
fn jittered(d: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    // Each `RandomState` is keyed anew (randomly per thread, then stepped): a random draw.
    let draw = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    d.mul_f64(0.5 + (draw % 1000) as f64 / 1000.0)
}

/// What every dialer shares with the node's replication.
#[derive(Clone)]
pub(super) struct Links {
    pub(super) transport: Transport,
    pub(super) inbox: std_mpsc::Sender<Input>,
    pub(super) limits: SharedLimits,
    pub(super) accepted: Accepted,
    pub(super) precheck: Precheck,
}

/// What a connection's reader works out for each batch it decodes, on the runtime's workers
/// and ahead of the committer's one thread (which every write of the node waits for): the
/// events' leaves and the store's hints (kept with the events), and the seals' signatures of
/// origins whose certificate is known (the keys remember those that verified, so the
/// committer's check of the same seal is a lookup). Nothing is decided here: the committer
/// still checks every seal, chain and revocation.
#[derive(Clone, Debug)]
pub(super) struct Precheck {
    pub(super) store: Arc<Store>,
    pub(super) keys: Option<Arc<crate::keys::NodeKeys>>,
}

/// Runs of events in a frame past which [`Precheck`] leaves the seals to the committer.
const PRECHECK_RUNS_MAX: usize = 64;

/// Origins a connection's [`Prechecked`] follows at most (an honest peer sends a few; past it
/// the record starts over, which only costs head starts).
const PRECHECKED_ORIGINS_MAX: usize = 1024;

/// Per origin, how far this connection's frames were pre-checked: a run is pre-checked only
/// where it continues what the store holds or what this connection's earlier frames carried
/// (pipelined batches go ahead of the committer), and only past it. A frame sent again, or
/// another history of the same events, or events past a gap (refused by the core, which only
/// asks for a rewind) buy no signature check here.
pub(super) type Prechecked = std::collections::HashMap<String, u64>;

impl Precheck {
    fn run(&self, message: &Message, prechecked: &mut Prechecked) {
        let Message::Events { events, seals, .. } = message else {
            return;
        };
        for e in events {
            e.leaf();
            self.store.hint(e);
        }
        // Only seals at one of the frame's events that the store does not hold yet (the
        // committer checks no other), and none after one fails: a frame of seals alone, or of
        // events already held, must not buy signature checks.
        let Some(keys) = &self.keys else { return };
        use edgerep_store::Keys as _;
        // The frame's runs of events, each one origin's (first, last): a seal inside one is at
        // one of its events when the run has no gap (an honest frame's never has; a dishonest
        // one at worst buys checks of the seals it sent, up to the first that fails, and is
        // refused by the core).
        let mut runs: Vec<(&str, u64, u64)> = Vec::new();
        for e in events {
            match runs.last_mut() {
                Some((o, _, last)) if *o == e.origin.as_str() => *last = e.seq,
                _ => runs.push((e.origin.as_str(), e.seq, e.seq)),
            }
        }
        // An honest frame holds one run per origin, a few; past that the committer checks
        // alone (this is a head start, never a decision).
        if runs.is_empty() || runs.len() > PRECHECK_RUNS_MAX {
            return;
        }
        let mut origins: Vec<&str> = runs.iter().map(|r| r.0).collect();
        origins.sort_unstable();
        origins.dedup();
        let Ok(held) = self.store.held_of(origins.iter().copied()) else {
            return;
        };
        if prechecked.len() > PRECHECKED_ORIGINS_MAX {
            prechecked.clear();
        }
        for &(origin, first, last) in &runs {
            let held = origins.binary_search(&origin).map_or(u64::MAX, |i| held[i]);
            let from = held.max(prechecked.get(origin).copied().unwrap_or(0));
            // Past a gap, or nothing new: the committer decides alone.
            if first > from.saturating_add(1) || last <= from {
                continue;
            }
            for seal in seals
                .iter()
                .filter(|s| s.origin.as_str() == origin && from < s.seq && s.seq <= last)
            {
                if keys
                    .verify(&seal.origin, seal.seq, &seal.message(), &seal.signature)
                    .is_err()
                {
                    return;
                }
            }
            match prechecked.get_mut(origin) {
                Some(upto) => *upto = last,
                None => {
                    prechecked.insert(origin.to_owned(), last);
                }
            }
        }
    }
}

/// Whether `peer` holds a live connection it dialed to this node: from one of `from`, or
/// from anywhere when `from` is empty.
fn connected_to_us(accepted: &Accepted, peer: &NodeId, from: &[std::net::SocketAddr]) -> bool {
    accepted
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(peer)
        .is_some_and(|c| {
            // An IPv4 peer reaching a dual-stack socket shows as an IPv4-mapped IPv6 address.
            let same = |a: &std::net::SocketAddr| {
                a.ip().to_canonical() == c.remote.ip().to_canonical() && a.port() == c.remote.port()
            };
            c.close_reason().is_none() && (from.is_empty() || from.iter().any(same))
        })
}

/// Dials `peer` at `address`: again whenever the connection ends when this node is the one of
/// the pair that dials (the lower id), else once at start and then only when the peer has
/// not connected for [`UNDIALED_FOR`] (see below).
pub(super) fn spawn_dialer(
    runtime: &tokio::runtime::Handle,
    links: Links,
    local: &NodeId,
    peer: NodeId,
    address: String,
) -> tokio::task::JoinHandle<()> {
    let Links {
        transport,
        inbox,
        limits,
        accepted,
        precheck,
    } = links;
    if peer.as_str() < local.as_str() {
        // The peer dials us; but after this node restarts, the peer may hold the dead
        // connection of our previous run until QUIC's idle timeout. One dial at start
        // replaces it at once (the peer takes a new connection over an old one). Later ones
        // only when the peer stays away (it may not reach us): a peer that redials within
        // seconds, as the dialing side does, is not displaced.
        return runtime.spawn(async move {
            let peer_connected = || connected_to_us(&accepted, &peer, &[]);
            let mut id = 1u64 << 31;
            let mut undialed_for = UNDIALED_FOR / 2;
            loop {
                let began = Instant::now();
                // Whether the peer answered (a connection, or a refusal): an address that does
                // not resolve says nothing about the peer (a link down takes the name server
                // with it) and must not put off the next dial.
                let mut answered = true;
                match transport.connect(&peer, &address).await {
                    Ok(conn) if peer_connected() => {
                        conn.close(CloseCode::Normal, "the peer connected already");
                    }
                    Ok(conn) => {
                        serve_connection(
                            conn,
                            id,
                            true,
                            inbox.clone(),
                            current(&limits),
                            precheck.clone(),
                        )
                        .await;
                    }
                    Err(e) => {
                        answered = !matches!(e, edgerep_transport::ConnectError::Resolve { .. });
                        tracing::debug!(peer = %peer, "dial failed: {}", edgerep_wire::text::one_line(&e.to_string()));
                    }
                }
                id += 1;
                // A peer that ends every connection at once (it revoked this node, or no
                // longer lists it) is dialed ever less often.
                if began.elapsed() >= DIAL_LASTED || !answered {
                    undialed_for = UNDIALED_FOR;
                } else {
                    undialed_for = (undialed_for * 2).min(UNDIALED_FOR_MAX);
                }
                let mut apart_since = Instant::now();
                loop {
                    tokio::time::sleep(jittered(DIAL_MAX)).await;
                    if peer_connected() {
                        apart_since = Instant::now();
                    } else if apart_since.elapsed() >= undialed_for {
                        break;
                    }
                }
            }
        });
    }
    runtime.spawn(async move {
        let mut backoff = DIAL_MIN;
        let mut id = 0u64;
        loop {
            // The peer connected to us meanwhile from the address we dial (it restarted and
            // dialed once: its endpoint dials from the port it listens on, which the address
            // names, resolved now if it is a name): dial again only once that connection has
            // ended. A connection under its id from elsewhere (a clone of the node) does not
            // stop the dialer: the two displace each other and the replicator reports the
            // duplicate id.
            let dialed = edgerep_transport::addresses_of(&address)
                .await
                .unwrap_or_default();
            let peer_connected = || !dialed.is_empty() && connected_to_us(&accepted, &peer, &dialed);
            while peer_connected() {
                tokio::time::sleep(DIAL_MIN).await;
            }
            // Connected from elsewhere (the peer is behind a NAT this node cannot dial through,
            // or it is a clone): a dial that fails is tried again less often (and reported).
            let connected_elsewhere = || connected_to_us(&accepted, &peer, &[]);
            match transport.connect(&peer, &address).await {
                // A dial that began while the peer was down completes once it is up, maybe
                // after the peer's own connection: closed before any stream, it replaces
                // nothing.
                Ok(conn) if peer_connected() => {
                    conn.close(CloseCode::Normal, "the peer connected already");
                }
                Ok(conn) => {
                    id += 1;
                    let began = Instant::now();
                    serve_connection(
                        conn,
                        id,
                        true,
                        inbox.clone(),
                        current(&limits),
                        precheck.clone(),
                    )
                    .await;
                    if began.elapsed() >= DIAL_LASTED {
                        backoff = DIAL_MIN;
                    }
                }
                Err(e) => {
                    if connected_elsewhere() {
                        backoff = UNDIALED_FOR;
                    }
                    let reason = e.to_string();
                    tracing::debug!(peer = %peer, "dial failed: {}", edgerep_wire::text::one_line(&reason.to_string()));
                    if inbox
                        .send(Input::Disconnected {
                            peer: peer.clone(),
                            id: 0,
                            reason,
                        })
                        .is_err()
                    {
                        return;
                    }
                }
            }
            tokio::time::sleep(jittered(backoff)).await;
            backoff = (backoff * 2).min(DIAL_MAX);
        }
    })
}

/// Runs one authenticated connection until it ends: the dialer opens the stream, the acceptor
/// accepts it; frames are read into the replicator and written from its channel.
pub(super) async fn serve_connection(
    conn: PeerConnection,
    id: u64,
    dialer: bool,
    inbox: std_mpsc::Sender<Input>,
    limits: MessageLimits,
    precheck: Precheck,
) {
    let peer = conn.peer.clone();
    let max_frame = limits.max_frame_bytes as u32;
    // Six round trips more on a slow link: the dialer's first frame, lost once or twice, takes
    // QUIC that long to deliver again.
    let within = LINK_WITHIN + conn.rtt().min(LINK_WITHIN) * 6;
    let link = if dialer {
        tokio::time::timeout(within, conn.open_link(max_frame)).await
    } else {
        tokio::time::timeout(within, conn.accept_link(max_frame)).await
    };
    let (mut send, mut recv) = match link {
        Ok(Ok(l)) => l,
        Ok(Err(e)) => {
            let _ = inbox.send(Input::Disconnected {
                peer,
                id,
                reason: e.to_string(),
            });
            return;
        }
        Err(_) => {
            let reason = format!("no stream opened within {} s", within.as_secs());
            conn.close(CloseCode::Protocol, &reason);
            let _ = inbox.send(Input::Disconnected { peer, id, reason });
            return;
        }
    };
    let (frames_tx, mut frames_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let queued = Arc::new(AtomicUsize::new(0));
    let paused = Arc::new(AtomicBool::new(false));
    let inbox_bytes = Arc::new(AtomicUsize::new(0));
    let resume = Arc::new(tokio::sync::Notify::new());
    if inbox
        .send(Input::Connected {
            conn: conn.clone(),
            id,
            frames: frames_tx,
            queued: queued.clone(),
            paused: paused.clone(),
            inbox_bytes: inbox_bytes.clone(),
            resume: resume.clone(),
            dialer,
        })
        .is_err()
    {
        return;
    }
    // Stopped from outside (its dialer aborted: the peer's address changed), the connection
    // still ends whole: closed, and the replicator told, so no session outlives its reader.
    let mut ended = Ended {
        conn: conn.clone(),
        inbox: inbox.clone(),
        peer: peer.clone(),
        id: Some(id),
        writer: None,
    };
    // A message larger than a frame may be (a bug: every message is built within one) would
    // be refused by the peer, which closes the link: said here, where it was made.
    let oversized = |peer: &NodeId, bytes: usize, e: &dyn std::fmt::Display| {
        tracing::error!(peer = %peer, bytes, "a message to the peer does not fit a frame, so the link ends: {e}");
    };
    let writer_peer = peer.clone();
    let writer = tokio::spawn(async move {
        while let Some(frame) = frames_rx.recv().await {
            let mut taken = frame.len();
            if let Err(e) = send.push(&frame) {
                oversized(&writer_peer, frame.len(), &e);
                break;
            }
            // Coalesce whatever else is queued into one write.
            while send.buffered_bytes() < (1 << 20) {
                match frames_rx.try_recv() {
                    Ok(f) => {
                        taken += f.len();
                        if let Err(e) = send.push(&f) {
                            oversized(&writer_peer, f.len(), &e);
                            return;
                        }
                    }
                    Err(_) => break,
                }
            }
            if send.flush().await.is_err() {
                break;
            }
            queued.fetch_sub(taken, Ordering::AcqRel);
        }
        send.finish();
    });
    ended.writer = Some(writer.abort_handle());
    let mut prechecked = Prechecked::new();
    let reason = loop {
        while paused.load(Ordering::Acquire)
            || inbox_bytes.load(Ordering::Acquire) > INBOX_MAX_BYTES
        {
            // A connection dropped while paused (replaced, refused, revoked) ends its reader.
            if conn.close_reason().is_some() {
                break;
            }
            // Woken when the replicator lifts the pause or takes messages; the timeout looks
            // at the connection's close again.
            let _ = tokio::time::timeout(READER_CLOSE_LOOK, resume.notified()).await;
        }
        match recv.recv().await {
            Ok(Some(bytes)) => match Message::decode_frame(&bytes, &limits) {
                Ok(message) => {
                    precheck.run(&message, &mut prechecked);
                    let cost = inbox_cost(&message, bytes.len());
                    inbox_bytes.fetch_add(cost, Ordering::AcqRel);
                    if inbox
                        .send(Input::Message {
                            peer: peer.clone(),
                            id,
                            message,
                            bytes: bytes.len(),
                            cost,
                        })
                        .is_err()
                    {
                        break "node stopping".to_owned();
                    }
                }
                Err(e) => {
                    let reason = match e {
                        edgerep_replica::DecodeError::Version { .. } => {
                            let reason = e.to_string();
                            let _ = inbox.send(Input::Refused {
                                peer: peer.clone(),
                                reason: reason.clone(),
                            });
                            reason
                        }
                        e => format!("undecodable message: {e}"),
                    };
                    conn.close(CloseCode::Protocol, &reason);
                    break reason;
                }
            },
            // Closed too: else the connection, kept alive by its keep-alives, would count as
            // connected (see `connected_to_us`) with no session on it.
            Ok(None) => {
                conn.close(CloseCode::Normal, "stream closed");
                break "stream closed by peer".to_owned();
            }
            // The close reason (ours or the peer's) is added below.
            Err(e) if e.is_connection_lost() => break "connection closed".to_owned(),
            Err(e) => {
                let reason = format!("bad frame: {e}");
                conn.close(CloseCode::BadFrame, &reason);
                break reason;
            }
        }
    };
    writer.abort();
    if conn.closed_by_peer_with() == Some(CloseCode::DuplicateId) {
        // (The peer's own words: one line.)
        let reason = conn.close_reason().unwrap_or_default();
        let _ = inbox.send(Input::Twin {
            peer: peer.clone(),
            reason: edgerep_wire::text::one_line(&reason).into_owned(),
        });
    }
    let reason = match conn.close_reason() {
        Some(why) => format!("{reason} ({why})"),
        None => reason,
    };
    // The reason may be the peer's own words (its close frame): one line.
    tracing::info!(peer = %peer, "connection ended: {}", edgerep_wire::text::one_line(&reason));
    let _ = inbox.send(Input::Disconnected { peer, id, reason });
    ended.id = None;
}

/// Ends a connection whose task was stopped before it ended by itself (see
/// `serve_connection`); disarmed (`id` None) once it ended by itself.
struct Ended {
    conn: PeerConnection,
    inbox: std_mpsc::Sender<Input>,
    peer: NodeId,
    id: Option<u64>,
    writer: Option<tokio::task::AbortHandle>,
}

impl Drop for Ended {
    fn drop(&mut self) {
        let Some(id) = self.id.take() else {
            return;
        };
        if let Some(w) = self.writer.take() {
            w.abort();
        }
        let reason = "the connection's task was stopped (its peer's address changed)".to_owned();
        self.conn.close(CloseCode::Normal, &reason);
        let _ = self.inbox.send(Input::Disconnected {
            peer: self.peer.clone(),
            id,
            reason,
        });
    }
}

pub(super) struct Live {
    pub(super) id: u64,
    pub(super) conn: PeerConnection,
    pub(super) frames: mpsc::UnboundedSender<Vec<u8>>,
    pub(super) queued: Arc<AtomicUsize>,
    pub(super) paused: Arc<AtomicBool>,
    pub(super) inbox_bytes: Arc<AtomicUsize>,
    /// Wakes the paused reader (see `paused` and `inbox_bytes`).
    pub(super) resume: Arc<tokio::sync::Notify>,
    /// The link's stream frames sent when last looked (see `Replicator::note_busy_links`).
    pub(super) frames_seen: u64,
    /// Stream frames received from the peer at the last look (see `note_busy_links`).
    pub(super) frames_received_seen: u64,
    /// Since when frames queued for the peer have not moved (none left over QUIC): the peer
    /// stopped reading (see `Replicator::note_busy_links`).
    pub(super) stuck_since: Option<std::time::Instant>,
    /// This node dialed the connection (else the peer did).
    pub(super) dialer: bool,
    /// When the replicator took it.
    pub(super) since: std::time::Instant,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Redials are spread over [0.5, 1.5) of the wait, differently each time.
    #[test]
    fn jitter_spreads_redials() {
        let d = Duration::from_secs(1);
        let draws: std::collections::BTreeSet<u128> =
            (0..64).map(|_| jittered(d).as_millis()).collect();
        assert!(
            draws.iter().all(|&ms| (500..1500).contains(&ms)),
            "{draws:?}"
        );
        assert!(draws.len() > 16, "too few distinct waits: {draws:?}");
    }

    /// The reader's head start on seals checks each run once, where it continues what the
    /// store holds or this connection's earlier frames carried: a frame sent again, another
    /// history of the same events and events past a gap buy no signature check (before, a peer
    /// replaying two such frames in turn had every seal of each verified on the runtime's
    /// workers, frame after frame, and evicted the honest peers' checks from the cache).
    #[test]
    fn a_frame_is_prechecked_once_and_only_where_it_continues() {
        use edgerep_store::{LocalWrite, StoreWriter};
        use edgerep_transport::certs::{Ca, Identity};
        use std::sync::atomic::Ordering::Relaxed;
        let ca = Ca::generate("test").unwrap();
        let keys_of = |id: &str| {
            let config = edgerep_config::Config::parse(
                &edgerep_config::starter_toml(
                    &NodeId::parse(id).unwrap(),
                    "127.0.0.1:1".parse().unwrap(),
                    "127.0.0.1:2".parse().unwrap(),
                ),
                std::path::Path::new("/nonexistent/edgerep.toml"),
            )
            .unwrap();
            let identity = Identity::new(&ca, &ca.issue_node(id).unwrap()).unwrap();
            Arc::new(crate::keys::NodeKeys::new(&identity, &config).unwrap())
        };
        let store_of = |id: &str, keys: &Arc<crate::keys::NodeKeys>| {
            let (store, _) = edgerep_store::Store::open_with_backend(
                redb::backends::InMemoryBackend::new(),
                "memory",
                &NodeId::parse(id).unwrap(),
                Default::default(),
            )
            .unwrap();
            StoreWriter::new(store.with_keys(keys.clone()))
        };
        let (a_keys, b_keys) = (keys_of("a"), keys_of("b"));
        let a = store_of("a", &a_keys);
        let b = store_of("b", &b_keys);
        let node_a = NodeId::parse("a").unwrap();
        edgerep_store::Keys::learn(b_keys.as_ref(), &node_a, a_keys.own_cert()).unwrap();
        let mut clock = edgerep_wire::HlcClock::new(Default::default(), 60_000);
        // Three commits of a: three blocks, three seals (at 2, 4 and 6).
        for i in 0..3 {
            let writes = (0..2)
                .map(|j| LocalWrite {
                    collection: "c".into(),
                    key: format!("k{i}-{j}").into_bytes(),
                    value: None,
                    schema: 0,
                    meta: Default::default(),
                    context: None,
                })
                .collect();
            a.commit_local(writes, &mut clock, 1).unwrap();
        }
        let frame = |after: u64, upto: u64| Message::Events {
            events: a.changelog("a", after, (upto - after) as usize).unwrap(),
            seals: a.seals(&node_a, after, upto).unwrap(),
            certs: Vec::new(),
        };
        let precheck = Precheck {
            store: b.reader(),
            keys: Some(b_keys.clone()),
        };
        let verified = || b_keys.signatures_verified.load(Relaxed);
        let mut prechecked = Prechecked::new();
        // Past a gap (b holds nothing of a): nothing checked.
        precheck.run(&frame(2, 4), &mut prechecked);
        assert_eq!(verified(), 0);
        // Continuing the store: its seals checked, once.
        precheck.run(&frame(0, 4), &mut prechecked);
        assert_eq!(verified(), 2);
        b_keys.forget_verified();
        for _ in 0..10 {
            precheck.run(&frame(0, 4), &mut prechecked);
            precheck.run(&frame(2, 4), &mut prechecked);
        }
        assert_eq!(verified(), 2, "frames sent again buy nothing");
        // The next frame, pipelined before the first is applied: its seal checked.
        precheck.run(&frame(4, 6), &mut prechecked);
        assert_eq!(verified(), 3);
        // Another connection starts from what the store holds (nothing here).
        let mut other = Prechecked::new();
        precheck.run(&frame(4, 6), &mut other);
        assert_eq!(verified(), 3);
        precheck.run(&frame(0, 2), &mut other);
        assert_eq!(verified(), 4);
    }
}
