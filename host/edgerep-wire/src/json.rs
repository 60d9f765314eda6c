//! Strict JSON parsing: like `serde_json`, but an object that names a key twice is refused
//! (plain `serde_json` keeps the last one), so that JSON and CBOR bodies are held to the same
//! rule.

use std::cell::Cell;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value as Json};

/// Parses JSON text, refusing duplicate object keys. The error names the key and, like every
/// `serde_json` error, the line and column.
pub fn parse(bytes: &[u8]) -> Result<Json, serde_json::Error> {
    match parse_bounded(bytes, usize::MAX) {
        Ok(v) => Ok(v),
        Err(Bounded::Json(e)) => Err(e),
        // (usize::MAX items cannot fit in memory; said as an error all the same)
        Err(Bounded::TooManyItems) => Err(serde_json::Error::custom("too many items")),
        Err(Bounded::Inexact(w)) => Err(serde_json::Error::custom(w)),
    }
}

/// [`parse`], refusing text of more than `max_items` items (every value, array element and
/// object key counts) as soon as it gets there: the tree costs far more memory than the text
/// (tens of bytes an item), so a 16 MiB array of zeros would take about a gigabyte.
pub fn parse_bounded(bytes: &[u8], max_items: usize) -> Result<Json, Bounded> {
    let budget = Budget::new(max_items);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = budget
        .value()
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v));
    match parsed {
        Ok(v) => match budget.wide().then(|| inexact_integer(bytes)).flatten() {
            Some(w) => Err(Bounded::Inexact(w)),
            None => Ok(v),
        },
        Err(_) if budget.exhausted() => Err(Bounded::TooManyItems),
        Err(e) => Err(Bounded::Json(e)),
    }
}

/// An integer in JSON text outside the 64-bit range that no float holds exactly: read as the
/// nearest float (as serde_json reads it) it would lose digits, so it is refused instead.
/// (One a float holds exactly, such as 100000000000000000000 from JavaScript's 1e20, is read
/// as that float.)
#[derive(Debug, Clone, PartialEq)]
pub struct InexactInteger {
    /// The integer as written.
    pub literal: String,
    /// Where it starts: line and column (in bytes), from 1.
    pub line: usize,
    /// See `line`.
    pub column: usize,
}

impl fmt::Display for InexactInteger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = if self.literal.len() > 40 {
            format!("{}... ({} digits)", &self.literal[..40], self.literal.len())
        } else {
            self.literal.clone()
        };
        write!(
            f,
            "integer {shown} at line {} column {} is outside the 64-bit range and would lose digits as a float (send it as a string)",
            self.line, self.column
        )
    }
}

/// The first integer literal of JSON text (outside strings) that is outside the 64-bit range
/// and not exactly a float, if any. The text is taken to be well-formed JSON.
pub fn inexact_integer(text: &[u8]) -> Option<InexactInteger> {
    let (mut i, mut line, mut line_start) = (0, 1, 0);
    let mut in_string = false;
    while i < text.len() {
        let b = text[i];
        if in_string {
            match b {
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'\n' => {
                line += 1;
                line_start = i + 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < text.len()
                    && matches!(text[i], b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-')
                {
                    i += 1;
                }
                let literal = std::str::from_utf8(&text[start..i]).unwrap_or_default();
                let integral = !literal.contains(['.', 'e', 'E']);
                if integral
                    && literal.parse::<i64>().is_err()
                    && literal.parse::<u64>().is_err()
                    && let Ok(x) = literal.parse::<f64>()
                    && format!("{:.0}", x.abs()) != literal.trim_start_matches('-')
                {
                    return Some(InexactInteger {
                        literal: literal.to_owned(),
                        line,
                        column: start - line_start + 1,
                    });
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// Items that the values read from a document may still hold, for a caller that walks the
/// document itself and reads some parts as trees ([`Budget::value`]).
#[derive(Debug)]
pub struct Budget {
    left: Cell<usize>,
    over: Cell<bool>,
    /// A number was read as a float that an integer outside the 64-bit range could be.
    wide: Cell<bool>,
}

impl Budget {
    /// A budget of `max_items` items.
    pub fn new(max_items: usize) -> Budget {
        Budget {
            left: Cell::new(max_items),
            over: Cell::new(false),
            wide: Cell::new(false),
        }
    }

    /// Reads one value strictly (an object naming a key twice is an error), each of its items
    /// charged to this budget; the read fails where the budget runs out.
    pub fn value(&self) -> Strict<'_> {
        Strict {
            left: &self.left,
            over: &self.over,
            wide: &self.wide,
        }
    }

    /// Whether a value read held a whole number outside the 64-bit integer range (read as a
    /// float): the text may hold an integer that lost digits ([`inexact_integer`] tells).
    pub fn wide(&self) -> bool {
        self.wide.get()
    }

    /// Whether a read failed because the budget ran out.
    pub fn exhausted(&self) -> bool {
        self.over.get()
    }
}

/// Whether `e` is serde_json's own nesting bound (128 levels): a value nested deeper than any
/// `max_depth` allows, not malformed text.
pub fn is_too_deep(e: &serde_json::Error) -> bool {
    e.is_syntax() && e.to_string().starts_with("recursion limit exceeded")
}

/// Why [`parse_bounded`] refused its text.
#[derive(Debug)]
pub enum Bounded {
    /// More items than allowed (the text up to there was well-formed).
    TooManyItems,
    /// Not JSON, or an object naming a key twice.
    Json(serde_json::Error),
    /// An integer that would lose digits.
    Inexact(InexactInteger),
}

/// A strict read of one JSON value, charged to a [`Budget`] (see [`Budget::value`]).
#[derive(Clone, Copy)]
pub struct Strict<'a> {
    /// Items still allowed.
    left: &'a Cell<usize>,
    /// Set when they ran out.
    over: &'a Cell<bool>,
    /// Set when a float read is a whole number outside the 64-bit integer range.
    wide: &'a Cell<bool>,
}

impl Strict<'_> {
    fn take<E: serde::de::Error>(self) -> Result<(), E> {
        match self.left.get().checked_sub(1) {
            Some(n) => {
                self.left.set(n);
                Ok(())
            }
            None => {
                self.over.set(true);
                Err(E::custom("too many items in one value"))
            }
        }
    }
}

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Json;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Json, D::Error> {
        self.take()?;
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Json, E> {
        Ok(Json::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Json, E> {
        Ok(Json::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Json, E> {
        Ok(Json::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Json, E> {
        // Integers within the range come as i64 or u64; past it serde_json reads the nearest
        // float (which may round onto the range's edge).
        if v.fract() == 0.0 && v.abs() >= 9_223_372_036_854_775_808.0 {
            self.wide.set(true);
        }
        Ok(Json::from(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Json, E> {
        Ok(Json::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Json, E> {
        Ok(Json::String(v))
    }

    fn visit_unit<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_none<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(self)? {
            out.push(v);
        }
        Ok(Json::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            self.take()?;
            if out.contains_key(&key) {
                return Err(A::Error::custom(format!("duplicate object key {key:?}")));
            }
            let value = map.next_value_seed(self)?;
            out.insert(key, value);
        }
        Ok(Json::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_past_64_bits_that_would_lose_digits_are_refused_where_they_are() {
        // Within the range, and past it where a float holds them exactly: read.
        for ok in [
            &b"[18446744073709551615, -9223372036854775808]"[..],
            b"100000000000000000000",
            b"[1.5e300, -1e19, 12345678901234567890123.0]",
            br#"{"s": "99999999999999999999", "n": 1}"#,
        ] {
            assert!(parse(ok).is_ok(), "{}", String::from_utf8_lossy(ok));
        }
        for (text, literal, line, column) in [
            (&b"99999999999999999999"[..], "99999999999999999999", 1, 1),
            (
                b"[1,\n  -9223372036854775809]",
                "-9223372036854775809",
                2,
                3,
            ),
            (
                br#"{"a\"1": "x", "id": 18446744073709551617}"#,
                "18446744073709551617",
                1,
                21,
            ),
        ] {
            match parse_bounded(text, 100) {
                Err(Bounded::Inexact(w)) => {
                    assert_eq!(
                        (w.literal.as_str(), w.line, w.column),
                        (literal, line, column)
                    );
                    assert!(w.to_string().contains("send it as a string"), "{w}");
                }
                other => panic!("{}: {other:?}", String::from_utf8_lossy(text)),
            }
        }
    }

    #[test]
    fn text_of_too_many_items_is_refused_early() {
        assert!(parse_bounded(b"[0, 0, 0]", 4).is_ok());
        assert!(matches!(
            parse_bounded(b"[0, 0, 0, 0]", 4),
            Err(Bounded::TooManyItems)
        ));
        // Keys count: {"a": 0} is three items.
        assert!(parse_bounded(br#"{"a": 0}"#, 3).is_ok());
        assert!(matches!(
            parse_bounded(br#"{"a": 0}"#, 2),
            Err(Bounded::TooManyItems)
        ));
        // Malformed text is that, not too many items.
        assert!(matches!(parse_bounded(b"[0, ", 4), Err(Bounded::Json(_))));
        // Refused where the budget ran out: the tree of 4M items is never built (a test with
        // a counting allocator would show it; this one only shows the error comes early).
        let huge = format!("[{}0]", "0,".repeat(4_000_000));
        assert!(matches!(
            parse_bounded(huge.as_bytes(), 100_000),
            Err(Bounded::TooManyItems)
        ));
    }

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        assert!(parse(br#"{"a": 1, "b": [1, {"c": null}]}"#).is_ok());
        let e = parse(br#"{"a": 1, "a": 2}"#).unwrap_err().to_string();
        assert!(e.contains("duplicate object key \"a\""), "{e}");
        let e = parse(br#"[{"x": {"y": 1, "y": 1}}]"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("duplicate object key \"y\""), "{e}");
    }

    #[test]
    fn same_values_as_serde_json() {
        let text =
            br#"{"n": -3, "u": 18446744073709551615, "f": 1.5, "s": "x", "z": null, "l": [true]}"#;
        let plain: Json = serde_json::from_slice(text).unwrap();
        assert_eq!(parse(text).unwrap(), plain);
        assert!(parse(b"{} x").is_err());
    }
}
