//! The data edgerep stores and ships: the change [`event::Event`], the hybrid logical clock
//! ([`hlc`]) and the deterministic CBOR encoding of both ([`value`] for application values).
//!
//! Invariant: this crate does no IO and reads no clock. Everything here is a pure function of its
//! inputs, so the same event is the same bytes on every node.

pub mod aae;
pub mod cbor;
pub mod encoded;
pub mod event;
pub mod hlc;
pub mod json;
pub mod params;
pub mod seal;
pub mod state_cursor;
pub mod text;
pub mod value;

pub use encoded::EncodedEvent;
pub use event::{Event, Have, NodeId, Op, VersionVector};
pub use hlc::{Hlc, HlcClock};
pub use seal::Seal;
pub use state_cursor::StateCursor;
pub use value::{DecodeLimits, Value, ValueError};
