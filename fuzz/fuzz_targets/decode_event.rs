//! Event decoding never panics, and whatever it accepts re-encodes to the same bytes.
#![no_main]

use edgerep_wire::Event;
use edgerep_wire::event::EventLimits;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(event) = Event::decode(data, &EventLimits::default()) {
        assert_eq!(event.encode(), data);
    }
});
