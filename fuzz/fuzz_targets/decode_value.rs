//! Value validation and canonicalization never panic and agree with each other.
#![no_main]

use edgerep_wire::{DecodeLimits, Value};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = DecodeLimits::default();
    let canonical = Value::from_canonical(data.to_vec(), &limits);
    if let Ok(fixed) = Value::canonicalize(data, &limits) {
        let again = Value::canonicalize(fixed.as_bytes(), &limits).expect("canonical output re-canonicalizes");
        assert_eq!(again, fixed);
        assert!(Value::from_canonical(fixed.as_bytes().to_vec(), &limits).is_ok());
        if let Ok(c) = canonical {
            assert_eq!(c, fixed);
        }
    }
});
