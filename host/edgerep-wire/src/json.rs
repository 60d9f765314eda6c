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
        Ok(v) => Ok(v),
        Err(_) if budget.exhausted() => Err(Bounded::TooManyItems),
        Err(e) => Err(Bounded::Json(e)),
    }
}

/// Items that the values read from a document may still hold, for a caller that walks the
/// document itself and reads some parts as trees ([`Budget::value`]).
#[derive(Debug)]
pub struct Budget {
    left: Cell<usize>,
    over: Cell<bool>,
}

impl Budget {
    /// A budget of `max_items` items.
    pub fn new(max_items: usize) -> Budget {
        Budget {
            left: Cell::new(max_items),
            over: Cell::new(false),
        }
    }

    /// Reads one value strictly (an object naming a key twice is an error), each of its items
    /// charged to this budget; the read fails where the budget runs out.
    pub fn value(&self) -> Strict<'_> {
        Strict {
            left: &self.left,
            over: &self.over,
        }
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
}

/// A strict read of one JSON value, charged to a [`Budget`] (see [`Budget::value`]).
#[derive(Clone, Copy)]
pub struct Strict<'a> {
    /// Items still allowed.
    left: &'a Cell<usize>,
    /// Set when they ran out.
    over: &'a Cell<bool>,
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
