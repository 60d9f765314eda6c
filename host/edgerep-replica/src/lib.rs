//! edgerep's replication core, sans-IO in the manner of quinn-proto: messages and timer
//! deadlines in, messages and apply requests out. It reads no clock (time is a `u64` of
//! milliseconds the caller passes in), does no IO and uses no randomness, so the same inputs give
//! the same outputs; the transport and the store drive it, and tests drive it with a simulated
//! network.
//!
//! - [`message`]: the protocol's messages and their strict CBOR codec.
//! - [`Replica`]: one node's state machine for all its peers.
//! - [`Log`]: how it reads the node's changelog and state (it never writes: the caller applies).
//!
//! ```
//! use edgerep_replica::{Log, LogError, Message, Read, Replica, ReplicaConfig, StateCursor, StatePage};
//! use edgerep_wire::{NodeId, Seal};
//!
//! struct Empty;
//! impl Log for Empty {
//!     fn read(&self, _: &NodeId, _: u64, _: usize, _: usize) -> Result<Read, LogError> {
//!         Ok(Read::default())
//!     }
//!     fn seal_at(&self, _: &NodeId, _: u64) -> Result<Option<Seal>, LogError> {
//!         Ok(None)
//!     }
//!     fn certs(&self, _: &NodeId) -> Vec<Vec<u8>> {
//!         Vec::new()
//!     }
//!     fn state_page(&self, _: Option<&StateCursor>, _: usize, _: usize) -> Result<StatePage, LogError> {
//!         Ok(StatePage::default())
//!     }
//! }
//!
//! let b = NodeId::parse("b").unwrap();
//! let mut a = Replica::new(NodeId::parse("a").unwrap(), ReplicaConfig::default());
//! a.connected(&b, 0);
//! let (to, hello) = a.poll_transmit(0, &Empty).unwrap().unwrap();
//! assert!(to == b && matches!(hello, Message::Hello(_)));
//! ```

mod fingerprint;
pub mod have;
mod log;
pub mod message;
pub mod reconcile;
mod replica;
mod session;

pub use have::Have;
pub use log::{Log, LogError, Read, StateCursor, StatePage, certs_for_seals};
pub use message::{
    CollectionFingerprint, DecodeError, Hello, MIN_PROTOCOL_VERSION, Message, MessageLimits,
    PROTOCOL_VERSION, PluginFingerprint, UpgradeFingerprint,
};
#[cfg(feature = "fault-injection")]
#[doc(hidden)]
pub use replica::Fault;
pub use replica::{
    APPLIES_IN_FLIGHT, Output, PeerView, ProtocolError, Replica, ReplicaConfig,
    SNAPSHOT_HOLD_MAX_MS, SNAPSHOT_HOLD_MS, trim_to_seals,
};
