//! `passthrough`: returns the event unchanged, as one change (the benchmark's trivial transform).

use edgerep_guest::{Change, Event, Transform};

/// The plugin.
pub struct Passthrough;

impl Transform for Passthrough {
    fn transform(event: Event) -> Result<Vec<Change>, String> {
        Ok(vec![Change::from_owned_event(event)])
    }
}

edgerep_guest::export_transform!(Passthrough);
