//! A JSON batch body read as it streams: each write is read as a small JSON tree (at most its
//! value's items and its fields'), checked, and turned into a [`LocalWrite`] holding its value
//! as compact CBOR before the next is read. The body is never one tree: a tree costs tens of
//! bytes an item, so a 16 MiB batch of tiny items took about a gigabyte.
//!
//! What it accepts, and the codes it refuses with, are those of reading the whole body first
//! (the API tests hold it to them), with two differences: it stops at the first refusal, so of
//! a body with several faults another may be named (a bad write before the 10,001st of a batch
//! too large, malformed text after a bad write); and a write over its item budget is refused as
//! `bad_value` whichever field held the items.

use std::cell::{Cell, RefCell};
use std::fmt;

use edgerep_config::Config;
use edgerep_wire::json::Budget;
use edgerep_wire::value::DecodeLimits;
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::error::Category;

use super::{Batch, Refused, bad, check_count, json_write};

/// Items one write's fields may hold besides its value's: every field name and scalar, and two
/// per metadata entry, with room to spare (more is refused as too many items).
fn field_items(config: &Config) -> usize {
    64 + 2 * config.limits.max_meta_entries
}

/// Parses a JSON batch body.
pub(super) fn parse(
    body: &[u8],
    config: &Config,
    limits: &DecodeLimits,
    origins_held: &dyn Fn() -> usize,
) -> Result<Batch, Refused> {
    let read = Read {
        config,
        limits,
        origins_held,
        refused: RefCell::new(None),
        inside: Cell::new(Level::Body),
        wide: Cell::new(false),
    };
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed = (&read)
        .deserialize(&mut de)
        .and_then(|batch| de.end().map(|()| batch));
    match parsed {
        Ok(batch) => match read
            .wide
            .get()
            .then(|| edgerep_wire::json::inexact_integer(body))
            .flatten()
        {
            Some(w) => Err(Refused::bad_request(
                "bad_value",
                format!("value refused: {w}"),
            )),
            None => Ok(batch),
        },
        Err(e) => Err(read.refused.into_inner().unwrap_or_else(|| {
            match (e.classify(), read.inside.get()) {
                // A value of the wrong type where the body or `writes` was expected (the
                // writes themselves are read by a reader that takes any type).
                (Category::Data, Level::Body) => {
                    bad("body", "expected an object with \"writes\"".into())
                }
                (Category::Data, Level::Writes) => {
                    bad("body", "\"writes\" must be an array".into())
                }
                // Within a write, a data error is a key named twice: malformed, as when the
                // whole body was read first.
                _ => malformed(&e),
            }
        })),
    }
}

fn malformed(e: &serde_json::Error) -> Refused {
    // Nested past serde_json's own bound (deeper than any limits.max_value_depth allows): the
    // value's fault, named as a value nested too deep is.
    if edgerep_wire::json::is_too_deep(e) {
        return Refused::bad_request(
            "bad_value",
            format!("value refused: nested too deeply ({e}) (limits.max_value_depth)"),
        );
    }
    Refused::bad_request("malformed_json", format!("malformed JSON: {e}"))
}

/// Where the reader is, for the errors serde reports without the reader's help.
#[derive(Clone, Copy)]
enum Level {
    Body,
    Writes,
    /// Reading one write (by a reader that takes any type).
    Write,
}

struct Read<'a> {
    config: &'a Config,
    limits: &'a DecodeLimits,
    /// How many origins the store holds events of (asked only for a long context).
    origins_held: &'a dyn Fn() -> usize,
    /// The refusal that stopped the read, when the reader found it (serde carries only text).
    refused: RefCell<Option<Refused>>,
    inside: Cell<Level>,
    /// A write held a whole number outside the 64-bit integer range (see
    /// [`Budget::wide`]): the body is looked through for one that lost digits.
    wide: Cell<bool>,
}

impl Read<'_> {
    /// Stops the read with `refusal`.
    fn refuse<E: serde::de::Error>(&self, refusal: Refused) -> E {
        let e = E::custom(&refusal.message);
        *self.refused.borrow_mut() = Some(refusal);
        e
    }
}

impl<'de> DeserializeSeed<'de> for &Read<'_> {
    type Value = Batch;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Batch, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for &Read<'_> {
    type Value = Batch;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object with \"writes\"")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Batch, A::Error> {
        let mut batch = None;
        while let Some(key) = map.next_key::<String>()? {
            if key != "writes" {
                return Err(self.refuse(bad("body", format!("unknown field {key:?}"))));
            }
            if batch.is_some() {
                return Err(self.refuse(Refused::bad_request(
                    "malformed_json",
                    "malformed JSON: duplicate object key \"writes\"".into(),
                )));
            }
            self.inside.set(Level::Writes);
            batch = Some(map.next_value_seed(Writes(self))?);
            self.inside.set(Level::Body);
        }
        batch.ok_or_else(|| self.refuse(bad("body", "\"writes\" must be an array".into())))
    }
}

/// The `writes` array.
struct Writes<'r, 'a>(&'r Read<'a>);

impl<'de> DeserializeSeed<'de> for Writes<'_, '_> {
    type Value = Batch;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Batch, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Writes<'_, '_> {
    type Value = Batch;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of writes")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Batch, A::Error> {
        let read = self.0;
        let mut batch = Batch {
            writes: Vec::new(),
            keys: Vec::new(),
        };
        let fields = field_items(read.config);
        let per_write = read.limits.max_items.saturating_add(fields);
        loop {
            let i = batch.writes.len();
            let at = format!("writes[{i}]");
            let budget = Budget::new(per_write);
            read.inside.set(Level::Write);
            let item = match seq.next_element_seed(budget.value()) {
                Ok(Some(item)) => item,
                Ok(None) => break,
                Err(_) if budget.exhausted() => {
                    return Err(read.refuse(Refused::bad_request(
                        "bad_value",
                        format!(
                            "{at}: more than {} JSON items in one write (its value may hold {}, its other fields {}: two per metadata entry and some)",
                            per_write,
                            read.limits.max_items,
                            fields
                        ),
                    )));
                }
                Err(e) => return Err(e),
            };
            read.inside.set(Level::Writes);
            if budget.wide() {
                read.wide.set(true);
            }
            check_count(i + 1, read.config).map_err(|r| read.refuse::<A::Error>(r))?;
            let (write, key) = json_write(&item, &at, read.config, read.limits, read.origins_held)
                .map_err(|r| read.refuse::<A::Error>(r))?;
            batch.writes.push(write);
            batch.keys.push(key);
        }
        Ok(batch)
    }
}
