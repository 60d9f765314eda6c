//! `balloon` (hostile, for tests): allocates 1 MiB blocks without end and keeps them. The host
//! must stop it with its memory cap (`memory-limit`); the failed allocation aborts (a trap).

use std::hint::black_box;

use edgerep_guest::{Change, Event, Transform};

/// The plugin.
pub struct Balloon;

impl Transform for Balloon {
    fn transform(_event: Event) -> Result<Vec<Change>, String> {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            let mut block = vec![0u8; 1 << 20];
            // Touch every 64 KiB page so the memory is really used.
            for page in block.chunks_mut(1 << 16) {
                page[0] = 1;
            }
            hoard.push(black_box(block));
            black_box(&mut hoard);
        }
    }
}

edgerep_guest::export_transform!(Balloon);
