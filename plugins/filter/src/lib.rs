//! `filter`: drops events whose field equals a value.
//!
//! Params (both required): `field` and `equals`. The event is dropped (no changes) when its value
//! is a map whose `field` equals `equals`:
//! - a text field equals when it is exactly the param text;
//! - a number field (integer or float) equals when the param parses as a number
//!   (`str::parse::<i128>` or `str::parse::<f64>`) of the same numeric value (so `3` equals `"3"`
//!   and `"3.0"`, and `2.5` equals `"2.5"`);
//! - a boolean field equals `"true"` or `"false"`;
//! - any other field (null, bytes, array, map, tag) never equals.
//!
//! Everything else (deletes, non-map values, missing field) passes unchanged. A missing param is
//! the error `filter needs params field and equals`.

use edgerep_guest::cbor::Value;
use edgerep_guest::{Change, Event, Transform, param};

/// The plugin.
pub struct Filter;

impl Transform for Filter {
    fn transform(event: Event) -> Result<Vec<Change>, String> {
        let (Some(field), Some(equals)) = (param("field"), param("equals")) else {
            return Err("filter needs params field and equals".to_owned());
        };
        if let Some(value) = event.value_cbor()?
            && let Some(v) = value.get(&field)
            && equal(v, &equals)
        {
            return Ok(Vec::new());
        }
        Ok(vec![Change::from_event(&event)])
    }
}

/// Whether the field value `v` equals the param text `p` (see the crate documentation).
pub fn equal(v: &Value, p: &str) -> bool {
    match v {
        Value::Text(s) => s == p,
        Value::Bool(b) => p == if *b { "true" } else { "false" },
        Value::Int(i) => match p.parse::<i128>() {
            Ok(n) => *i == n,
            Err(_) => p.parse::<f64>().is_ok_and(|f| int_equals_float(*i, f)),
        },
        Value::Float(x) => p.parse::<f64>().is_ok_and(|f| *x == f),
        _ => false,
    }
}

/// Exact comparison of an integer and a float (no rounding of the integer).
fn int_equals_float(i: i128, f: f64) -> bool {
    // 2^127 is exactly representable; every integral f64 in (-2^127, 2^127) converts exactly.
    const LIMIT: f64 = 170_141_183_460_469_231_731_687_303_715_884_105_728.0;
    f.fract() == 0.0 && (-LIMIT..LIMIT).contains(&f) && f as i128 == i
}

edgerep_guest::export_transform!(Filter);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equality_rules() {
        assert!(equal(&Value::from("on"), "on"));
        assert!(!equal(&Value::from("on"), "On"));
        assert!(!equal(&Value::from("3"), "3.0"));
        assert!(equal(&Value::Int(3), "3"));
        assert!(equal(&Value::Int(3), "3.0"));
        assert!(equal(&Value::Int(-3), "-3e0"));
        assert!(!equal(&Value::Int(3), "3.5"));
        assert!(!equal(&Value::Int(3), " 3"));
        assert!(!equal(&Value::Int(3), "three"));
        assert!(equal(&Value::Int(1 << 64), "18446744073709551616"));
        // 2^53 + 1 is not the float 2^53, whatever rounding would say.
        assert!(!equal(&Value::Int((1 << 53) + 1), "9007199254740992.0"));
        assert!(equal(&Value::Float(2.5), "2.5"));
        assert!(equal(&Value::Float(3.0), "3"));
        assert!(equal(&Value::Float(0.1), "0.1"));
        assert!(!equal(&Value::Float(f64::NAN), "NaN"));
        assert!(equal(&Value::Bool(true), "true"));
        assert!(!equal(&Value::Bool(true), "1"));
        assert!(equal(&Value::Bool(false), "false"));
        assert!(!equal(&Value::Null, "null"));
        assert!(!equal(&Value::Bytes(b"x".to_vec()), "x"));
    }
}
