//! `fanout` (hostile, for tests): each write becomes `copies` writes (param, default 10), to keys
//! `KEY-0` … `KEY-(copies-1)` with the same value, in collection `to` (param, default: the
//! write's own). Each call stays well within the host's per-call limits; two in a chain
//! multiply (10 × 10 = 100 writes of one); `to` routes around whatever guards the write's own
//! collection.

use edgerep_guest::{Change, Event, Transform, param_or};

/// The plugin.
pub struct Fanout;

impl Transform for Fanout {
    fn transform(event: Event) -> Result<Vec<Change>, String> {
        let copies: usize = param_or("copies", "10")
            .parse()
            .map_err(|e| format!("param copies: {e}"))?;
        let to = param_or("to", &event.collection);
        let key = event.key_str().unwrap_or("fanout").to_owned();
        let mut out = Vec::with_capacity(copies);
        for i in 0..copies {
            out.push(
                Change::from_event(&event)
                    .with_key(format!("{key}-{i}"))
                    .with_collection(&to),
            );
        }
        Ok(out)
    }
}

edgerep_guest::export_transform!(Fanout);
