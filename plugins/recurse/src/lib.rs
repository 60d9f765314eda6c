//! `recurse` (hostile, for tests): recurses without end on every event. Each call keeps a
//! frame on the stack, so the host stops it when its WebAssembly stack runs out
//! (`stack-overflow`), long before its fuel would: a failure whose point depends on the
//! machine's code, that no retry on this machine passes.

use std::hint::black_box;

use edgerep_guest::{Change, Event, Transform};

/// The plugin.
pub struct Recurse;

/// Goes one call deeper, for ever (`black_box` keeps the compiler from making a loop of it).
fn deeper(depth: u64) -> u64 {
    let frame = black_box([depth; 8]);
    if black_box(depth) == u64::MAX {
        return frame[0];
    }
    black_box(deeper(depth + 1)).wrapping_add(frame[7])
}

impl Transform for Recurse {
    fn transform(_event: Event) -> Result<Vec<Change>, String> {
        Err(format!("recurse: came back from {} calls", deeper(0)))
    }
}

edgerep_guest::export_transform!(Recurse);
