//! `trap` (hostile, for tests): panics. A panic is logged through the host's log (error level),
//! then aborts: the WebAssembly `unreachable` instruction, a trap for the host.

use edgerep_guest::{Change, Event, Transform};

/// The plugin.
pub struct Trap;

impl Transform for Trap {
    fn transform(event: Event) -> Result<Vec<Change>, String> {
        panic!("trap plugin: deliberate panic on key {:?}", event.key_str());
    }
}

edgerep_guest::export_transform!(Trap);
