//! `spin` (hostile, for tests): loops forever. The host must stop it with its fuel budget
//! (`out-of-fuel`). Volatile reads and writes keep the compiler from removing the loop.

use edgerep_guest::{Change, Event, Transform};

/// The plugin.
pub struct Spin;

impl Transform for Spin {
    fn transform(_event: Event) -> Result<Vec<Change>, String> {
        let mut counter: u64 = 0;
        let p: *mut u64 = &mut counter;
        loop {
            // SAFETY: `p` points to a live local for the whole loop.
            unsafe { p.write_volatile(p.read_volatile().wrapping_add(1)) };
        }
    }
}

edgerep_guest::export_transform!(Spin);
