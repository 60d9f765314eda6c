//! `leak` (hostile, for tests): passes the event through, and keeps 512 KiB more memory after
//! every call. A new instance always has room for one call; an instance reused call after call
//! reaches its memory cap, and the call that finds it full is no fault of its event's.

use std::hint::black_box;
use std::sync::Mutex;

use edgerep_guest::{Change, Event, Transform};

/// What every call so far kept.
static KEPT: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// The plugin.
pub struct Leak;

impl Transform for Leak {
    fn transform(event: Event) -> Result<Vec<Change>, String> {
        let mut block = vec![0u8; 512 << 10];
        // Touch every 64 KiB page so the memory is really used.
        for page in block.chunks_mut(1 << 16) {
            page[0] = 1;
        }
        KEPT.lock()
            .map_err(|_| "leak: lock poisoned".to_owned())?
            .push(black_box(block));
        Ok(vec![Change::from_owned_event(event)])
    }
}

edgerep_guest::export_transform!(Leak);
