//! edgerep's peer transport: QUIC (quinn) with mutual TLS from a deployment CA.
//!
//! A deployment has one CA ([`certs::Ca`]). Every node holds a certificate the CA issued for its
//! node id ([`certs::NodeCert`]), with the id in a URI subject alternative name
//! `edgerep://node/<id>` ([`certs::node_id_of`] reads it back). Nodes accept and dial only
//! certificates that chain to that CA, the listener hands out connections only from configured
//! peers, and the dialer checks that the node it reached is the node it meant to reach.
//!
//! - [`certs`]: CA and node certificates (rcgen), PEM in and out, the files a node reads.
//! - [`tls`]: the quinn server and client configurations (rustls on *ring*, TLS 1.3, ALPN
//!   [`tls::ALPN`]) and the QUIC transport settings ([`tls::TransportConfig`]).
//! - [`endpoint`]: [`Transport`], one UDP socket that listens and dials, and [`PeerConnection`],
//!   an authenticated connection to a known peer.
//! - [`frame`]: length-prefixed frames on quinn streams, bounded in size.
//! - [`link`]: a peer link, the stream of frames replication runs on ([`PeerConnection::open_link`],
//!   [`PeerConnection::accept_link`]).
//! - [`bench`]: the raw stream throughput the replication benchmark compares itself with.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use edgerep_transport::certs::{Ca, Identity};
//! use edgerep_transport::{Transport, tls::TransportConfig};
//! use edgerep_wire::event::NodeId;
//!
//! let ca = Ca::generate("example deployment")?;
//! let node = ca.issue_node("site-a")?;
//! let identity = Identity::new(&ca, &node)?;
//! let peers = vec![(NodeId::parse("site-b")?, "10.0.0.2:7071".to_owned())];
//! let transport = Transport::bind("0.0.0.0:7071".parse()?, identity, peers, TransportConfig::default())?;
//! let site_b = transport.connect(&NodeId::parse("site-b")?, "10.0.0.2:7071").await?;
//! let (mut send, _recv) = site_b.open_link(1 << 20).await?;
//! send.send(b"hello").await?;
//! # Ok(())
//! # }
//! ```
//!
//! quinn stays inside: users see peer connections and links, not QUIC streams.

pub mod bench;
pub mod certs;
pub mod endpoint;
pub mod frame;
pub mod link;
mod repeats;
pub mod seal;
pub mod tls;

pub use endpoint::{
    AcceptError, BindError, CloseCode, ConnectError, Incoming, PeerConnection, Transport,
    addresses_of, describe_close,
};
pub use link::{LinkError, LinkReceiver, LinkSender};
