//! `flood` (hostile, for tests): returns 200 000 changes, each a put of a 1 KiB byte string
//! (about 210 MB in all). Under a small memory cap (16 MiB) it fails while building them
//! (`memory-limit`); with room to spare the host must cope with (or refuse) a huge output.

use edgerep_guest::cbor::Value;
use edgerep_guest::{Change, Event, Transform};

/// How many changes the plugin returns.
pub const CHANGES: usize = 200_000;

/// The plugin.
pub struct Flood;

impl Transform for Flood {
    fn transform(event: Event) -> Result<Vec<Change>, String> {
        let value = Value::Bytes(vec![0xab; 1024]);
        let mut out = Vec::new();
        for i in 0..CHANGES {
            let key = format!("{}-{i}", event.key_str().unwrap_or("flood"));
            out.push(Change::put(&event.collection, key, &value));
        }
        Ok(out)
    }
}

edgerep_guest::export_transform!(Flood);
