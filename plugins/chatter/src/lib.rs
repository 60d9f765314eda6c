//! `chatter` (hostile, for tests): logs the same mebibyte of text for ever. Each call is a few
//! instructions of the plugin's and a mebibyte copied and checked by the host: the host's work
//! must be charged as fuel, so the call runs out of fuel (on every node alike), not into its
//! deadline.

use edgerep_guest::{Change, Event, Transform, log};

/// The plugin.
pub struct Chatter;

impl Transform for Chatter {
    fn transform(_event: Event) -> Result<Vec<Change>, String> {
        let text = "a".repeat(1 << 20);
        loop {
            log::debug(&text);
        }
    }
}

edgerep_guest::export_transform!(Chatter);
