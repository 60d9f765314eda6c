//! `slow-pick` (for tests): a deterministic resolver that takes a while. It counts to
//! [`ROUNDS`] (about 10^9 fuel, a few hundred milliseconds: long enough that the deadline's
//! epoch ticker, starved on a loaded machine, still ticks before the call ends), then picks
//! the first version (the lowest dot), which is not what last-writer-wins picks when a later
//! write has the higher origin. On a node whose deadline for it is shorter than that, the call runs past the
//! deadline and the node falls back to last-writer-wins: the same build with the same fuel
//! resolves differently on two nodes, which anti-entropy must find.

use edgerep_guest::{Event, Resolution, Resolver};

/// Iterations of the busy loop.
pub const ROUNDS: u64 = 150_000_000;

/// The plugin.
pub struct SlowPick;

impl Resolver for SlowPick {
    fn resolve(_collection: &str, _key: &[u8], versions: Vec<Event>) -> Result<Resolution, String> {
        let mut counter: u64 = 0;
        let p: *mut u64 = &mut counter;
        for _ in 0..ROUNDS {
            // SAFETY: `p` points to a live local for the whole loop. Volatile: the loop stays.
            unsafe { p.write_volatile(p.read_volatile().wrapping_add(1)) };
        }
        if versions.is_empty() {
            return Err("slow-pick: no versions".into());
        }
        Ok(Resolution::pick(0))
    }
}

edgerep_guest::export_resolver!(SlowPick);
