//! Application values: any CBOR data item, held in deterministic encoding.
//!
//! A [`Value`] is the bytes of exactly one CBOR data item (RFC 8949) in the *core deterministic
//! encoding* of RFC 8949 section 4.2.1, so two equal values are always the same bytes, on every
//! node. The bytes are the value: equality, hashing and ordering are those of the bytes.
//!
//! # The deterministic profile
//!
//! [`Value::from_canonical`] and [`canonical_item_len`] accept, and every encoder in this module
//! emits, only:
//!
//! - integers, lengths, tag numbers and simple values in the shortest argument form (additional
//!   information 28 to 30 is malformed, and so is a simple value below 32 in the two-byte form);
//! - definite lengths only (an indefinite length is non-canonical, a `break` (0xff) outside an
//!   indefinite-length item is malformed);
//! - map keys sorted by the bytewise lexicographic order of their deterministic encodings, with no
//!   duplicates;
//! - floats in the shortest of half, single and double precision that represents the value
//!   exactly; every NaN is the half-precision quiet NaN `f9 7e 00` (NaN payloads and signs are not
//!   kept), infinities are half precision;
//! - text strings of valid UTF-8;
//! - tags with any tag number; the tag content is checked like any other item (the tag number is
//!   not interpreted, so `2(h'01')` is not rewritten as the integer 1).
//!
//! [`Value::canonicalize`] accepts any well-formed CBOR item (indefinite lengths, non-shortest
//! arguments, unsorted maps, needlessly long floats) and rewrites it in this profile. It still
//! rejects duplicate map keys (compared after the keys are put in deterministic encoding), invalid
//! UTF-8 and trailing bytes.
//!
//! # Limits
//!
//! Everything here decodes untrusted bytes under [`DecodeLimits`]: the length of the encoding
//! (`max_bytes`; checked on the input before parsing, on the output of [`Value::canonicalize`]
//! and [`Value::from_json`], and on the item found by [`canonical_item_len`]), the nesting depth
//! (`max_depth`: at most that many arrays, maps and tags nested inside each other, empty ones
//! included; scalars add no level; checked before descending) and the number of data items
//! (`max_items`: every array, map, tag, map key, map value, array element and scalar counts as
//! one, and so does every chunk of an indefinite-length string). A header claiming more elements
//! or bytes than the input has left fails at once with [`ValueError::Truncated`], and no
//! allocation is sized by a length read from the input. Validation is a single pass with an
//! explicit stack and never recurses; [`Value::canonicalize`], [`Value::from_json`] and
//! [`Value::to_json`] recurse once per nesting level, so `max_depth` should stay modest (the
//! default is 32). A value accepted under some limits is always accepted again by
//! [`Value::from_canonical`] under the same limits.
//!
//! # JSON mapping
//!
//! JSON to CBOR ([`Value::from_json`], [`Value::from_json_str`]):
//!
//! | JSON                          | CBOR                                                  |
//! |-------------------------------|-------------------------------------------------------|
//! | `null`                        | null (`f6`)                                           |
//! | `true` / `false`              | true (`f5`) / false (`f4`)                            |
//! | number that is a `u64`        | unsigned integer (major type 0)                       |
//! | number that is a negative `i64` | negative integer (major type 1)                     |
//! | any other number              | float, shortest exact form (`1.0` stays a float: `f9 3c 00`) |
//! | string                        | text string                                           |
//! | array                         | array                                                 |
//! | object                        | map with text keys, in deterministic key order        |
//!
//! "Is a `u64`" follows `serde_json`: JSON text `1` is an integer, `1.0` and `1e2` are floats, and
//! an integer literal outside the `i64`/`u64` range is parsed by `serde_json` as a float; text
//! parsed by [`Value::from_json_str`] (and the API's bodies) refuses such a literal where no float
//! holds it exactly ([`ValueError::InexactInteger`]: it would lose digits). JSON
//! text is parsed by `serde_json`, whose default float parser may round a long decimal to a
//! neighbouring `f64` (one unit in the last place); the conversion of the parsed number is exact.
//!
//! CBOR to JSON ([`Value::to_json`], meant for display):
//!
//! | CBOR                                   | JSON                                            |
//! |----------------------------------------|-------------------------------------------------|
//! | unsigned or negative integer           | number; if outside the `i64`/`u64` range (negative below `-2^63`), the nearest `f64` |
//! | byte string                            | `{"$bytes": "<standard base64, padded>"}`        |
//! | text string                            | string                                          |
//! | array                                  | array                                           |
//! | map                                    | object, entries in encoded (deterministic) order |
//! | map key that is not a text string      | its JSON form written as JSON text, e.g. key `1` becomes `"1"`, key `h'01'` becomes `"{\"$bytes\":\"AQ==\"}"` |
//! | tag `N` with content `c`               | `{"$tag": N, "$value": <c>}`                    |
//! | float                                  | number; NaN and infinities become `null`        |
//! | false / true / null                    | `false` / `true` / `null`                       |
//! | undefined                              | `null`                                          |
//! | other simple value `N`                 | `{"$simple": N}`                                |
//!
//! If two map keys give the same JSON object key (say the integer `1` and the text `"1"`), the
//! later entry wins.
//!
//! Round trip: for every `serde_json::Value` `j` whose encoding is within the limits,
//! `Value::from_json(&j, limits)?.to_json() == j`. That includes floats (an integral float such
//! as `2.0` comes back as the float `2.0`, not the integer `2`), negative zero (a float), and
//! objects whose keys look like the markers above (`{"$bytes": "AA=="}` stays that object). The
//! one thing not kept is the order of object keys: they come back in deterministic order (shorter
//! keys first, then bytewise), which `serde_json::Value` equality ignores. The other direction is
//! lossy: byte strings, tags, simple values, undefined, non-text map keys, non-finite floats and
//! integers outside `i64`/`u64` do not survive CBOR to JSON to CBOR.

use std::fmt;

use base64::Engine as _;
use half::f16;

/// Limits applied when decoding untrusted CBOR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Longest accepted encoding, in bytes.
    pub max_bytes: usize,
    /// Deepest accepted nesting of arrays, maps and tags (0 allows only scalars).
    pub max_depth: usize,
    /// Most data items accepted in one value (every element, key, value, tag and scalar counts).
    pub max_items: usize,
}

impl Default for DecodeLimits {
    /// 1 MiB, 32 levels, 100 000 items.
    fn default() -> Self {
        DecodeLimits {
            max_bytes: 1024 * 1024,
            max_depth: 32,
            max_items: 100_000,
        }
    }
}

/// Why bytes or JSON could not be turned into a [`Value`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ValueError {
    /// JSON text holds an integer outside the 64-bit range that no float holds exactly (see
    /// [`crate::json::InexactInteger`]).
    #[error("{0}")]
    InexactInteger(String),
    /// The encoding is longer than [`DecodeLimits::max_bytes`].
    #[error("cbor value is {len} bytes, over the limit of {max}")]
    TooLarge {
        /// Length of the encoding, in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Arrays, maps and tags are nested deeper than [`DecodeLimits::max_depth`].
    #[error("cbor value nested deeper than {max} levels")]
    TooDeep {
        /// The limit.
        max: usize,
    },
    /// The value has more data items than [`DecodeLimits::max_items`].
    #[error(
        "value has more than {max} data items (every element, key and scalar counts; the most one value may hold, a fixed limit)"
    )]
    TooManyItems {
        /// The limit.
        max: usize,
    },
    /// The input ends before the data item does.
    #[error("cbor value ends early at byte {offset}")]
    Truncated {
        /// Where the input ends (its length).
        offset: usize,
    },
    /// The input is not well-formed CBOR, or a text string is not valid UTF-8.
    #[error("malformed cbor at byte {offset}: {reason}")]
    Malformed {
        /// Offset of the offending data item or byte.
        offset: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// Well-formed CBOR, but not in deterministic encoding.
    #[error("cbor value not in deterministic encoding at byte {offset}: {reason}")]
    NonCanonical {
        /// Offset of the offending data item.
        offset: usize,
        /// What is not deterministic.
        reason: &'static str,
    },
    /// A map has the same key twice (compared in deterministic encoding).
    #[error("duplicate cbor map key at byte {offset}")]
    DuplicateKey {
        /// Offset of the repeated key in the input.
        offset: usize,
    },
    /// Bytes follow the one data item.
    #[error("trailing bytes after the cbor value at byte {offset}")]
    TrailingBytes {
        /// Offset of the first byte after the item.
        offset: usize,
    },
    /// JSON text could not be parsed; the message says where.
    #[error("invalid json: {0}")]
    Json(String),
}

/// A CBOR data item in deterministic encoding (the bytes are the value).
///
/// Built only through the checked constructors, so the bytes are always exactly one data item in
/// the deterministic profile described in the [module documentation](self).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Value(Vec<u8>);

impl Value {
    /// Wraps bytes that must already be exactly one data item in deterministic encoding.
    ///
    /// Errors: [`ValueError::TooLarge`] (checked before parsing), [`ValueError::NonCanonical`],
    /// [`ValueError::Malformed`], [`ValueError::Truncated`], [`ValueError::DuplicateKey`],
    /// [`ValueError::TrailingBytes`], [`ValueError::TooDeep`], [`ValueError::TooManyItems`].
    pub fn from_canonical(bytes: Vec<u8>, limits: &DecodeLimits) -> Result<Value, ValueError> {
        check_input_len(bytes.len(), limits)?;
        let len = validate(&bytes, limits)?;
        if len != bytes.len() {
            return Err(ValueError::TrailingBytes { offset: len });
        }
        Ok(Value(bytes))
    }

    /// The data item at the start of `bytes` (more may follow it), which must be in
    /// deterministic encoding and within `limits`: one validating pass and one copy.
    ///
    /// Errors as [`Value::from_canonical`], except that trailing bytes are allowed.
    pub fn first_item(bytes: &[u8], limits: &DecodeLimits) -> Result<Value, ValueError> {
        match validate(bytes, limits) {
            Ok(len) => {
                check_input_len(len, limits)?;
                Ok(Value(bytes[..len].to_vec()))
            }
            // Size comes before shape, as in `from_canonical`: an item over `max_bytes` is
            // too large whatever else it is (measured again without limits, on this path only).
            Err(shape @ (ValueError::TooManyItems { .. } | ValueError::TooDeep { .. })) => {
                if let Ok(len) = validate(bytes, &UNLIMITED) {
                    check_input_len(len, limits)?;
                }
                Err(shape)
            }
            Err(other) => Err(other),
        }
    }

    /// Wraps bytes already checked to be exactly one data item in deterministic encoding, e.g. a
    /// slice whose length [`canonical_item_len`] returned. For decoders in this crate that must
    /// not validate twice; the check is repeated only in debug builds.
    pub(crate) fn from_canonical_unchecked(bytes: Vec<u8>) -> Value {
        debug_assert_eq!(
            validate(&bytes, &UNLIMITED),
            Ok(bytes.len()),
            "from_canonical_unchecked given bytes that are not one deterministic cbor item"
        );
        Value(bytes)
    }

    /// Accepts any well-formed CBOR data item (indefinite lengths, non-shortest arguments,
    /// unsorted maps, longer floats) and re-encodes it deterministically.
    ///
    /// Rejects duplicate map keys (compared after canonical encoding), invalid UTF-8, trailing
    /// bytes, and anything over the limits (the output length is checked against `max_bytes`
    /// too, so the result always passes [`Value::from_canonical`] with the same limits).
    pub fn canonicalize(bytes: &[u8], limits: &DecodeLimits) -> Result<Value, ValueError> {
        check_input_len(bytes.len(), limits)?;
        // Most clients already send deterministic CBOR: one validating pass, no allocation per
        // item, and the bytes are the answer (a canonical item canonicalizes to itself). Any
        // other input, and every error, takes the re-encoding path below, which names the fault.
        if validate(bytes, limits) == Ok(bytes.len()) {
            return Ok(Value(bytes.to_vec()));
        }
        reencode(bytes, limits)
    }

    /// Converts JSON to CBOR (see the [mapping](self#json-mapping)).
    ///
    /// Errors if the result exceeds the limits: [`ValueError::TooLarge`], [`ValueError::TooDeep`]
    /// or [`ValueError::TooManyItems`] (the depth is checked before descending).
    pub fn from_json(json: &serde_json::Value, limits: &DecodeLimits) -> Result<Value, ValueError> {
        let mut out = Vec::new();
        let mut items = 0;
        json_to_cbor(json, 0, limits, &mut items, &mut out)?;
        if out.len() > limits.max_bytes {
            return Err(ValueError::TooLarge {
                len: out.len(),
                max: limits.max_bytes,
            });
        }
        Ok(Value(out))
    }

    /// Parses JSON text, then converts it with [`Value::from_json`].
    ///
    /// Malformed JSON is [`ValueError::Json`], whose message gives the line and column.
    pub fn from_json_str(text: &str, limits: &DecodeLimits) -> Result<Value, ValueError> {
        // Each JSON item becomes one CBOR item: text of more cannot fit the limit, and is
        // refused as it is read.
        let json =
            crate::json::parse_bounded(text.as_bytes(), limits.max_items).map_err(|e| match e {
                crate::json::Bounded::TooManyItems => ValueError::TooManyItems {
                    max: limits.max_items,
                },
                crate::json::Bounded::Json(e) if crate::json::is_too_deep(&e) => {
                    ValueError::TooDeep {
                        max: limits.max_depth,
                    }
                }
                crate::json::Bounded::Json(e) => ValueError::Json(e.to_string()),
                crate::json::Bounded::Inexact(w) => ValueError::InexactInteger(w.to_string()),
            })?;
        Value::from_json(&json, limits)
    }

    /// Converts the value to JSON for display (see the [mapping](self#json-mapping)).
    pub fn to_json(&self) -> serde_json::Value {
        JsonReader {
            bytes: &self.0,
            pos: 0,
        }
        .item()
    }

    /// The deterministic encoding.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The deterministic encoding, by value.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }

    /// Length of the encoding in bytes (at least 1).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always `false`: every data item takes at least one byte.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Value {
    /// Prints the JSON form, e.g. `Value({"a":1})`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Value({})", self.to_json())
    }
}

/// Validates that `bytes` starts with exactly one data item in deterministic encoding within
/// `limits` and returns the item's length in bytes.
///
/// Bytes after the item are allowed and ignored, so this slices a value out of an enclosing
/// encoding without re-encoding it. `max_bytes` applies to the item, not to the whole slice:
/// an item longer than it is [`ValueError::TooLarge`].
pub fn canonical_item_len(bytes: &[u8], limits: &DecodeLimits) -> Result<usize, ValueError> {
    let len = validate(bytes, limits)?;
    check_input_len(len, limits)?;
    Ok(len)
}

/// The deepest nesting a configuration may allow ([`DecodeLimits::max_depth`]): canonicalizing
/// and converting recurse once per level on the caller's stack (an API worker's is 2 MiB), so
/// the limit is kept far below what would exhaust it, and below JSON parsers' own limits
/// (serde_json's is 127 levels), so any value stored reads back as JSON, and JSON and CBOR
/// bodies are held to the same depth.
pub const MAX_DEPTH_ALLOWED: usize = 100;

/// No limits, for re-checking bytes that were validated under the caller's limits.
const UNLIMITED: DecodeLimits = DecodeLimits {
    max_bytes: usize::MAX,
    max_depth: usize::MAX,
    max_items: usize::MAX,
};

/// [`ValueError::TooLarge`] if `len` is over `max_bytes`.
fn check_input_len(len: usize, limits: &DecodeLimits) -> Result<(), ValueError> {
    if len > limits.max_bytes {
        return Err(ValueError::TooLarge {
            len,
            max: limits.max_bytes,
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Heads

/// Major type 0: unsigned integer.
const MAJOR_UNSIGNED: u8 = 0;
/// Major type 1: negative integer.
const MAJOR_NEGATIVE: u8 = 1;
/// Major type 2: byte string.
const MAJOR_BYTES: u8 = 2;
/// Major type 3: text string.
const MAJOR_TEXT: u8 = 3;
/// Major type 4: array.
const MAJOR_ARRAY: u8 = 4;
/// Major type 5: map.
const MAJOR_MAP: u8 = 5;
/// Major type 6: tag.
const MAJOR_TAG: u8 = 6;
/// Major type 7: simple values and floats.
const MAJOR_SIMPLE: u8 = 7;

/// Additional information meaning "indefinite length" (or `break` in major type 7).
const AI_INDEFINITE: u8 = 31;

/// The canonical NaN, a half-precision quiet NaN.
const CANONICAL_NAN: [u8; 3] = [0xf9, 0x7e, 0x00];

/// The head of a data item: initial byte and argument.
#[derive(Clone, Copy)]
struct Head {
    /// Major type, 0 to 7.
    major: u8,
    /// Additional information, 0 to 31 (never 28 to 30).
    ai: u8,
    /// The argument (0 when `ai` is 31).
    arg: u64,
    /// Length of the head in bytes.
    len: usize,
}

impl Head {
    /// Whether the argument is in the shortest form (meaningless for major type 7).
    fn is_shortest(&self) -> bool {
        match self.ai {
            24 => self.arg >= 24,
            25 => self.arg > 0xff,
            26 => self.arg > 0xffff,
            27 => self.arg > 0xffff_ffff,
            _ => true,
        }
    }
}

/// Reads the head at `pos`.
fn read_head(bytes: &[u8], pos: usize) -> Result<Head, ValueError> {
    let truncated = ValueError::Truncated {
        offset: bytes.len(),
    };
    let Some(&initial) = bytes.get(pos) else {
        return Err(truncated);
    };
    let major = initial >> 5;
    let ai = initial & 0x1f;
    let (arg, len) = match ai {
        0..=23 => (u64::from(ai), 1),
        24..=27 => {
            let n = 1usize << (ai - 24);
            let Some(arg_bytes) = bytes.get(pos + 1..pos + 1 + n) else {
                return Err(truncated);
            };
            let arg = arg_bytes
                .iter()
                .fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
            (arg, 1 + n)
        }
        28..=30 => {
            return Err(ValueError::Malformed {
                offset: pos,
                reason: "reserved additional information value (28 to 30)",
            });
        }
        _ => (0, 1),
    };
    Ok(Head {
        major,
        ai,
        arg,
        len,
    })
}

/// Appends a head with the argument in shortest form.
fn write_head(out: &mut Vec<u8>, major: u8, arg: u64) {
    let mt = major << 5;
    if arg < 24 {
        // arg < 24, so the cast is exact.
        out.push(mt | arg as u8);
    } else if let Ok(a) = u8::try_from(arg) {
        out.extend_from_slice(&[mt | 24, a]);
    } else if let Ok(a) = u16::try_from(arg) {
        out.push(mt | 25);
        out.extend_from_slice(&a.to_be_bytes());
    } else if let Ok(a) = u32::try_from(arg) {
        out.push(mt | 26);
        out.extend_from_slice(&a.to_be_bytes());
    } else {
        out.push(mt | 27);
        out.extend_from_slice(&arg.to_be_bytes());
    }
}

/// `usize` to `u64` (lossless on every supported target).
fn to_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// Whether `x` (not NaN) is exactly a half-precision float.
fn fits_f16(x: f64) -> bool {
    f16::from_f64(x).to_f64().to_bits() == x.to_bits()
}

/// Whether `x` (not NaN) is exactly a single-precision float.
fn fits_f32(x: f64) -> bool {
    // `as` rounds to nearest; the round trip is exact only if `x` is representable.
    #[allow(clippy::cast_possible_truncation)]
    let single = x as f32;
    f64::from(single).to_bits() == x.to_bits()
}

/// Appends `x` as the shortest exact float (NaN as `f9 7e 00`).
fn write_float(out: &mut Vec<u8>, x: f64) {
    if x.is_nan() {
        out.extend_from_slice(&CANONICAL_NAN);
    } else if fits_f16(x) {
        out.push(0xf9);
        out.extend_from_slice(&f16::from_f64(x).to_bits().to_be_bytes());
    } else if fits_f32(x) {
        #[allow(clippy::cast_possible_truncation)]
        let single = x as f32;
        out.push(0xfa);
        out.extend_from_slice(&single.to_bits().to_be_bytes());
    } else {
        out.push(0xfb);
        out.extend_from_slice(&x.to_bits().to_be_bytes());
    }
}

/// The float held by a major-type-7 head with additional information 25 to 27.
fn float_of(head: &Head) -> f64 {
    match head.ai {
        // The argument has only as many bits as the head carries, so the casts are exact.
        25 => f16::from_bits(head.arg as u16).to_f64(),
        26 => f64::from(f32::from_bits(head.arg as u32)),
        _ => f64::from_bits(head.arg),
    }
}

/// Checks that a string of `len` bytes starting at `pos` fits in the input; returns its end.
fn string_end(bytes: &[u8], pos: usize, len: u64) -> Result<usize, ValueError> {
    let remaining = bytes.len().saturating_sub(pos);
    if len > to_u64(remaining) {
        return Err(ValueError::Truncated {
            offset: bytes.len(),
        });
    }
    // len <= remaining, so it fits in usize and pos + len <= bytes.len().
    Ok(pos + usize::try_from(len).unwrap_or(remaining))
}

/// Fails fast if a container claims more items than there are bytes left (each item takes at
/// least one byte); `count` is the number of items (twice the pairs for a map).
fn check_count(bytes: &[u8], pos: usize, count: Option<u64>) -> Result<(), ValueError> {
    let remaining = to_u64(bytes.len().saturating_sub(pos));
    match count {
        Some(n) if n <= remaining => Ok(()),
        _ => Err(ValueError::Truncated {
            offset: bytes.len(),
        }),
    }
}

/// Number of items (keys and values both count) in an array or map of `arg` entries.
fn container_items(major: u8, arg: u64) -> Option<u64> {
    if major == MAJOR_MAP {
        arg.checked_mul(2)
    } else {
        Some(arg)
    }
}

/// Error for a header whose additional information is 31 where no indefinite length exists.
fn bad_indefinite(major: u8, offset: usize) -> ValueError {
    if major == MAJOR_SIMPLE {
        ValueError::Malformed {
            offset,
            reason: "break outside an indefinite-length item",
        }
    } else {
        ValueError::Malformed {
            offset,
            reason: "indefinite length on an integer or tag",
        }
    }
}

/// Checks a simple value or float head (major type 7, not `break`) in the deterministic profile.
fn check_simple_canonical(head: &Head, offset: usize) -> Result<(), ValueError> {
    match head.ai {
        24 if head.arg < 32 => Err(ValueError::Malformed {
            offset,
            reason: "simple value below 32 in the two-byte form",
        }),
        25..=27 => {
            let x = float_of(head);
            if x.is_nan() {
                if head.ai == 25 && head.arg == 0x7e00 {
                    Ok(())
                } else {
                    Err(ValueError::NonCanonical {
                        offset,
                        reason: "nan not encoded as f9 7e 00",
                    })
                }
            } else if (head.ai > 25 && fits_f16(x)) || (head.ai > 26 && fits_f32(x)) {
                Err(ValueError::NonCanonical {
                    offset,
                    reason: "float not in the shortest exact form",
                })
            } else {
                Ok(())
            }
        }
        _ => Ok(()),
    }
}

/// The reason for a non-shortest argument of the given major type.
fn not_shortest_reason(major: u8) -> &'static str {
    match major {
        MAJOR_UNSIGNED | MAJOR_NEGATIVE => "integer not in shortest form",
        MAJOR_TAG => "tag number not in shortest form",
        _ => "length not in shortest form",
    }
}

// ---------------------------------------------------------------------------------------------
// Validation: one pass, explicit stack, no recursion.

/// An open container during validation.
struct Frame {
    /// Items still to come (keys and values both count for a map, 1 for a tag).
    remaining: u64,
    /// Whether this is a map (its items alternate key, value).
    map: bool,
    /// Start of the key being read (maps only).
    key_start: usize,
    /// The previous key of this map, as a range of the input.
    prev_key: Option<(usize, usize)>,
}

/// Validates the data item at the start of `bytes` in the deterministic profile and returns its
/// length. Does not check `max_bytes`.
fn validate(bytes: &[u8], limits: &DecodeLimits) -> Result<usize, ValueError> {
    let mut stack: Vec<Frame> = Vec::new();
    let mut pos = 0usize;
    let mut items = 0usize;
    loop {
        let start = pos;
        if let Some(top) = stack.last_mut()
            && top.map
            && top.remaining % 2 == 0
        {
            top.key_start = start;
        }
        items += 1;
        if items > limits.max_items {
            return Err(ValueError::TooManyItems {
                max: limits.max_items,
            });
        }
        let head = read_head(bytes, pos)?;
        pos += head.len;
        if head.ai == AI_INDEFINITE {
            return Err(match head.major {
                MAJOR_BYTES..=MAJOR_MAP => ValueError::NonCanonical {
                    offset: start,
                    reason: "indefinite length",
                },
                major => bad_indefinite(major, start),
            });
        }
        if head.major != MAJOR_SIMPLE && !head.is_shortest() {
            return Err(ValueError::NonCanonical {
                offset: start,
                reason: not_shortest_reason(head.major),
            });
        }
        match head.major {
            MAJOR_UNSIGNED | MAJOR_NEGATIVE => {}
            MAJOR_BYTES | MAJOR_TEXT => {
                let end = string_end(bytes, pos, head.arg)?;
                if head.major == MAJOR_TEXT
                    && std::str::from_utf8(bytes.get(pos..end).unwrap_or_default()).is_err()
                {
                    return Err(ValueError::Malformed {
                        offset: start,
                        reason: "text string is not valid utf-8",
                    });
                }
                pos = end;
            }
            MAJOR_ARRAY | MAJOR_MAP | MAJOR_TAG => {
                if stack.len() >= limits.max_depth {
                    return Err(ValueError::TooDeep {
                        max: limits.max_depth,
                    });
                }
                let count = if head.major == MAJOR_TAG {
                    Some(1)
                } else {
                    container_items(head.major, head.arg)
                };
                check_count(bytes, pos, count)?;
                let count = count.unwrap_or(0);
                if count > 0 {
                    stack.push(Frame {
                        remaining: count,
                        map: head.major == MAJOR_MAP,
                        key_start: 0,
                        prev_key: None,
                    });
                    continue;
                }
            }
            _ => check_simple_canonical(&head, start)?,
        }
        // The item that started at `start` is complete; close every container it completes.
        loop {
            let Some(top) = stack.last_mut() else {
                return Ok(pos);
            };
            if top.map && top.remaining % 2 == 0 {
                let key = (top.key_start, pos);
                if let Some(prev) = top.prev_key {
                    let prev_bytes = bytes.get(prev.0..prev.1).unwrap_or_default();
                    let key_bytes = bytes.get(key.0..key.1).unwrap_or_default();
                    match prev_bytes.cmp(key_bytes) {
                        std::cmp::Ordering::Less => {}
                        std::cmp::Ordering::Equal => {
                            return Err(ValueError::DuplicateKey { offset: key.0 });
                        }
                        std::cmp::Ordering::Greater => {
                            return Err(ValueError::NonCanonical {
                                offset: key.0,
                                reason: "map keys not in bytewise order",
                            });
                        }
                    }
                }
                top.prev_key = Some(key);
            }
            top.remaining -= 1;
            if top.remaining > 0 {
                break;
            }
            stack.pop();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Canonicalization: recursive (bounded by max_depth), writes the deterministic encoding.

/// [`Value::canonicalize`] by re-encoding: reads any well-formed CBOR and writes the
/// deterministic encoding. `bytes` is already known to be within `max_bytes`.
fn reencode(bytes: &[u8], limits: &DecodeLimits) -> Result<Value, ValueError> {
    let mut canon = Canonicalizer {
        bytes,
        pos: 0,
        items: 0,
        limits,
        entries: Vec::new(),
    };
    let mut out = Vec::with_capacity(bytes.len());
    canon.item(0, &mut out)?;
    if canon.pos != bytes.len() {
        return Err(ValueError::TrailingBytes { offset: canon.pos });
    }
    if out.len() > limits.max_bytes {
        return Err(ValueError::TooLarge {
            len: out.len(),
            max: limits.max_bytes,
        });
    }
    Ok(Value(out))
}

/// Reads any well-formed CBOR and writes it in deterministic encoding.
struct Canonicalizer<'a> {
    /// The input.
    bytes: &'a [u8],
    /// Read position.
    pos: usize,
    /// Data items (and string chunks) read so far.
    items: usize,
    /// The limits.
    limits: &'a DecodeLimits,
    /// The entries of the maps being read, innermost last: a map's entries are pushed once
    /// complete and popped when the map is, so nested maps share one allocation.
    entries: Vec<Entry>,
}

/// One map entry as written to the output: where its key starts, where its value starts and
/// ends (offsets into the output), and where its key was in the input.
#[derive(Clone, Copy)]
struct Entry {
    key: usize,
    value: usize,
    end: usize,
    input: usize,
}

/// Writes the head of a container of `count` items at `at`, before the items already written
/// there (an indefinite-length container's count is known only at its end).
fn insert_head(out: &mut Vec<u8>, at: usize, major: u8, count: u64) {
    let mut head = Vec::with_capacity(9);
    write_head(&mut head, major, count);
    out.splice(at..at, head);
}

impl Canonicalizer<'_> {
    /// Counts one data item against `max_items`.
    fn count_item(&mut self) -> Result<(), ValueError> {
        self.items += 1;
        if self.items > self.limits.max_items {
            return Err(ValueError::TooManyItems {
                max: self.limits.max_items,
            });
        }
        Ok(())
    }

    /// Consumes a `break` if one is next.
    fn take_break(&mut self) -> bool {
        if self.bytes.get(self.pos) == Some(&0xff) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// Fails with [`ValueError::TooDeep`] if a container at `depth` enclosing containers is too deep.
    fn check_depth(&self, depth: usize) -> Result<(), ValueError> {
        if depth >= self.limits.max_depth {
            return Err(ValueError::TooDeep {
                max: self.limits.max_depth,
            });
        }
        Ok(())
    }

    /// Reads a string (after its head at `start`), definite or chunked, and appends it as one
    /// definite string.
    fn string(&mut self, head: &Head, start: usize, out: &mut Vec<u8>) -> Result<(), ValueError> {
        let check_utf8 = |chunk: &[u8], offset: usize| {
            if head.major == MAJOR_TEXT && std::str::from_utf8(chunk).is_err() {
                Err(ValueError::Malformed {
                    offset,
                    reason: "text string is not valid utf-8",
                })
            } else {
                Ok(())
            }
        };
        if head.ai != AI_INDEFINITE {
            let end = string_end(self.bytes, self.pos, head.arg)?;
            let content = self.bytes.get(self.pos..end).unwrap_or_default();
            check_utf8(content, start)?;
            self.pos = end;
            write_head(out, head.major, to_u64(content.len()));
            out.extend_from_slice(content);
            return Ok(());
        }
        let mut content = Vec::new();
        while !self.take_break() {
            let chunk_start = self.pos;
            self.count_item()?;
            let chunk = read_head(self.bytes, self.pos)?;
            if chunk.major != head.major || chunk.ai == AI_INDEFINITE {
                return Err(ValueError::Malformed {
                    offset: chunk_start,
                    reason: "chunk of an indefinite-length string is not a definite string of the same type",
                });
            }
            self.pos += chunk.len;
            let end = string_end(self.bytes, self.pos, chunk.arg)?;
            let bytes = self.bytes.get(self.pos..end).unwrap_or_default();
            check_utf8(bytes, chunk_start)?;
            content.extend_from_slice(bytes);
            self.pos = end;
        }
        write_head(out, head.major, to_u64(content.len()));
        out.extend_from_slice(&content);
        Ok(())
    }

    /// Reads one map entry whose key starts at the current position, appends it, and records
    /// it in `entries`.
    fn entry(
        &mut self,
        depth: usize,
        indefinite: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), ValueError> {
        let input = self.pos;
        let key = out.len();
        self.item(depth + 1, out)?;
        if indefinite && self.bytes.get(self.pos) == Some(&0xff) {
            return Err(ValueError::Malformed {
                offset: self.pos,
                reason: "indefinite-length map ends after a key with no value",
            });
        }
        let value = out.len();
        self.item(depth + 1, out)?;
        self.entries.push(Entry {
            key,
            value,
            end: out.len(),
            input,
        });
        Ok(())
    }

    /// Puts the map entries written from `body` on (the last `entries.len() - base` recorded)
    /// in key order, and refuses a key given twice. Entries already in order, the usual case,
    /// are left where they are.
    fn sort_entries(
        &mut self,
        base: usize,
        body: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), ValueError> {
        let entries = &mut self.entries[base..];
        let in_order = entries
            .windows(2)
            .all(|pair| out[pair[0].key..pair[0].value] < out[pair[1].key..pair[1].value]);
        if !in_order {
            let written = out.split_off(body);
            let start = |e: &Entry| e.key - body;
            entries.sort_by(|a, b| {
                written[start(a)..a.value - body].cmp(&written[start(b)..b.value - body])
            });
            // Report the duplicate that comes first in the input.
            let duplicate = entries
                .windows(2)
                .filter(|pair| {
                    written[start(&pair[0])..pair[0].value - body]
                        == written[start(&pair[1])..pair[1].value - body]
                })
                .map(|pair| pair[0].input.max(pair[1].input))
                .min();
            if let Some(offset) = duplicate {
                return Err(ValueError::DuplicateKey { offset });
            }
            for e in entries.iter() {
                out.extend_from_slice(&written[start(e)..e.end - body]);
            }
        }
        self.entries.truncate(base);
        Ok(())
    }

    /// Reads one data item, `depth` containers deep, and appends its deterministic encoding.
    fn item(&mut self, depth: usize, out: &mut Vec<u8>) -> Result<(), ValueError> {
        let start = self.pos;
        self.count_item()?;
        let head = read_head(self.bytes, self.pos)?;
        self.pos += head.len;
        let indefinite = head.ai == AI_INDEFINITE;
        match head.major {
            MAJOR_UNSIGNED | MAJOR_NEGATIVE | MAJOR_TAG if indefinite => {
                return Err(bad_indefinite(head.major, start));
            }
            MAJOR_UNSIGNED | MAJOR_NEGATIVE => write_head(out, head.major, head.arg),
            MAJOR_BYTES | MAJOR_TEXT => self.string(&head, start, out)?,
            MAJOR_ARRAY => {
                self.check_depth(depth)?;
                if indefinite {
                    let body = out.len();
                    let mut count = 0u64;
                    while !self.take_break() {
                        self.item(depth + 1, out)?;
                        count += 1;
                    }
                    insert_head(out, body, MAJOR_ARRAY, count);
                } else {
                    check_count(self.bytes, self.pos, Some(head.arg))?;
                    write_head(out, MAJOR_ARRAY, head.arg);
                    for _ in 0..head.arg {
                        self.item(depth + 1, out)?;
                    }
                }
            }
            MAJOR_MAP => {
                self.check_depth(depth)?;
                let base = self.entries.len();
                // A definite map's head is known before its entries: write it first, so entries
                // already in order stay where they are written.
                let body = if indefinite {
                    let body = out.len();
                    while !self.take_break() {
                        self.entry(depth, true, out)?;
                    }
                    body
                } else {
                    check_count(self.bytes, self.pos, container_items(MAJOR_MAP, head.arg))?;
                    write_head(out, MAJOR_MAP, head.arg);
                    let body = out.len();
                    for _ in 0..head.arg {
                        self.entry(depth, false, out)?;
                    }
                    body
                };
                let count = self.entries.len() - base;
                self.sort_entries(base, body, out)?;
                if indefinite {
                    insert_head(out, body, MAJOR_MAP, to_u64(count));
                }
            }
            MAJOR_TAG => {
                self.check_depth(depth)?;
                write_head(out, MAJOR_TAG, head.arg);
                self.item(depth + 1, out)?;
            }
            _ => match head.ai {
                0..=23 => out.push(0xe0 | head.ai),
                24 if head.arg < 32 => {
                    return Err(ValueError::Malformed {
                        offset: start,
                        reason: "simple value below 32 in the two-byte form",
                    });
                }
                // 24: the argument is one byte.
                24 => out.extend_from_slice(&[0xf8, head.arg as u8]),
                25..=27 => write_float(out, float_of(&head)),
                _ => return Err(bad_indefinite(MAJOR_SIMPLE, start)),
            },
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// JSON

/// Appends the CBOR for `json`, `depth` containers deep.
fn json_to_cbor(
    json: &serde_json::Value,
    depth: usize,
    limits: &DecodeLimits,
    items: &mut usize,
    out: &mut Vec<u8>,
) -> Result<(), ValueError> {
    let count = |items: &mut usize| {
        *items += 1;
        if *items > limits.max_items {
            Err(ValueError::TooManyItems {
                max: limits.max_items,
            })
        } else {
            Ok(())
        }
    };
    let check_depth = || {
        if depth >= limits.max_depth {
            Err(ValueError::TooDeep {
                max: limits.max_depth,
            })
        } else {
            Ok(())
        }
    };
    count(items)?;
    match json {
        serde_json::Value::Null => out.push(0xf6),
        serde_json::Value::Bool(b) => out.push(if *b { 0xf5 } else { 0xf4 }),
        serde_json::Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                write_head(out, MAJOR_UNSIGNED, u);
            } else if let Some(i) = n.as_i64().filter(|i| *i < 0) {
                // For negative i, -1 - i == !i, which is non-negative.
                write_head(out, MAJOR_NEGATIVE, !i as u64);
            } else if let Some(x) = n.as_f64() {
                write_float(out, x);
            } else {
                return Err(ValueError::Json(format!(
                    "json number {n} is not representable"
                )));
            }
        }
        serde_json::Value::String(s) => {
            write_head(out, MAJOR_TEXT, to_u64(s.len()));
            out.extend_from_slice(s.as_bytes());
        }
        serde_json::Value::Array(elements) => {
            check_depth()?;
            write_head(out, MAJOR_ARRAY, to_u64(elements.len()));
            for element in elements {
                json_to_cbor(element, depth + 1, limits, items, out)?;
            }
        }
        serde_json::Value::Object(map) => {
            check_depth()?;
            let mut entries = Vec::with_capacity(map.len());
            for (k, v) in map {
                count(items)?;
                let mut key = Vec::with_capacity(k.len() + 9);
                write_head(&mut key, MAJOR_TEXT, to_u64(k.len()));
                key.extend_from_slice(k.as_bytes());
                let mut value = Vec::new();
                json_to_cbor(v, depth + 1, limits, items, &mut value)?;
                entries.push((key, value));
            }
            entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            write_head(out, MAJOR_MAP, to_u64(entries.len()));
            for (key, value) in entries {
                out.extend_from_slice(&key);
                out.extend_from_slice(&value);
            }
        }
    }
    Ok(())
}

/// Reads already validated CBOR as JSON. Never panics: should the bytes be cut short (they
/// cannot be, for a [`Value`]), missing items read as `null`.
struct JsonReader<'a> {
    /// The encoding.
    bytes: &'a [u8],
    /// Read position.
    pos: usize,
}

impl JsonReader<'_> {
    /// Takes `len` bytes (or what is left).
    fn take(&mut self, len: u64) -> &[u8] {
        let remaining = self.bytes.len().saturating_sub(self.pos);
        let len = usize::try_from(len).unwrap_or(usize::MAX).min(remaining);
        let start = self.pos;
        self.pos += len;
        self.bytes.get(start..self.pos).unwrap_or_default()
    }

    /// Whether every byte has been read.
    fn at_end(&self) -> bool {
        self.pos >= self.bytes.len()
    }

    /// Reads one data item.
    fn item(&mut self) -> serde_json::Value {
        use serde_json::Value as J;
        let Ok(head) = read_head(self.bytes, self.pos) else {
            self.pos = self.bytes.len();
            return J::Null;
        };
        self.pos += head.len;
        match head.major {
            MAJOR_UNSIGNED => J::from(head.arg),
            MAJOR_NEGATIVE => match i64::try_from(head.arg) {
                Ok(n) => J::from(-1 - n),
                // Below -2^63: the nearest f64.
                Err(_) => float_json(-1.0 - head.arg as f64),
            },
            MAJOR_BYTES => {
                let content = self.take(head.arg);
                let mut object = serde_json::Map::new();
                object.insert(
                    "$bytes".to_owned(),
                    J::String(base64::engine::general_purpose::STANDARD.encode(content)),
                );
                J::Object(object)
            }
            MAJOR_TEXT => J::String(String::from_utf8_lossy(self.take(head.arg)).into_owned()),
            MAJOR_ARRAY => {
                let mut elements = Vec::new();
                for _ in 0..head.arg {
                    if self.at_end() {
                        break;
                    }
                    elements.push(self.item());
                }
                J::Array(elements)
            }
            MAJOR_MAP => {
                let mut object = serde_json::Map::new();
                for _ in 0..head.arg {
                    if self.at_end() {
                        break;
                    }
                    let key = match self.item() {
                        J::String(s) => s,
                        other => other.to_string(),
                    };
                    let value = self.item();
                    object.insert(key, value);
                }
                J::Object(object)
            }
            MAJOR_TAG => {
                let mut object = serde_json::Map::new();
                object.insert("$tag".to_owned(), J::from(head.arg));
                object.insert("$value".to_owned(), self.item());
                J::Object(object)
            }
            _ => match head.ai {
                20 => J::Bool(false),
                21 => J::Bool(true),
                22 | 23 | AI_INDEFINITE => J::Null,
                25..=27 => float_json(float_of(&head)),
                _ => {
                    let mut object = serde_json::Map::new();
                    object.insert("$simple".to_owned(), J::from(head.arg));
                    J::Object(object)
                }
            },
        }
    }
}

/// A float as a JSON number, or `null` if it is not finite.
fn float_json(x: f64) -> serde_json::Value {
    serde_json::Number::from_f64(x).map_or(serde_json::Value::Null, serde_json::Value::Number)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        assert!(s.len().is_multiple_of(2), "odd hex {s}");
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("test hex"))
            .collect()
    }

    fn lim() -> DecodeLimits {
        DecodeLimits::default()
    }

    /// Deterministic encodings from RFC 8949 Appendix A.
    const RFC_CANONICAL: &[&str] = &[
        "00",
        "01",
        "0a",
        "17",
        "1818",
        "1819",
        "1864",
        "1903e8",
        "1a000f4240",
        "1b000000e8d4a51000",
        "1bffffffffffffffff",
        "c249010000000000000000",
        "3bffffffffffffffff",
        "c349010000000000000000",
        "20",
        "29",
        "3863",
        "3903e7",
        "f90000",
        "f98000",
        "f93c00",
        "fb3ff199999999999a",
        "f93e00",
        "f97bff",
        "fa47c35000",
        "fa7f7fffff",
        "fb7e37e43c8800759c",
        "f90001",
        "f90400",
        "f9c400",
        "fbc010666666666666",
        "f97c00",
        "f97e00",
        "f9fc00",
        "f4",
        "f5",
        "f6",
        "f7",
        "f0",
        "f8ff",
        "c074323031332d30332d32315432303a30343a30305a",
        "c11a514b67b0",
        "c1fb41d452d9ec200000",
        "d74401020304",
        "d818456449455446",
        "d82076687474703a2f2f7777772e6578616d706c652e636f6d",
        "40",
        "4401020304",
        "60",
        "6161",
        "6449455446",
        "62225c",
        "62c3bc",
        "63e6b0b4",
        "64f0908591",
        "80",
        "83010203",
        "8301820203820405",
        "98190102030405060708090a0b0c0d0e0f101112131415161718181819",
        "a0",
        "a201020304",
        "a26161016162820203",
        "826161a161626163",
        "a56161614161626142616361436164614461656145",
    ];

    #[test]
    fn rfc_vectors_validate() {
        for h in RFC_CANONICAL {
            let bytes = hex(h);
            let v =
                Value::from_canonical(bytes.clone(), &lim()).unwrap_or_else(|e| panic!("{h}: {e}"));
            assert_eq!(v.as_bytes(), &bytes[..], "{h}");
            assert_eq!(canonical_item_len(&bytes, &lim()), Ok(bytes.len()), "{h}");
            let mut with_trailer = bytes.clone();
            with_trailer.extend_from_slice(&[0xff, 0x00]);
            assert_eq!(
                canonical_item_len(&with_trailer, &lim()),
                Ok(bytes.len()),
                "{h}"
            );
            assert_eq!(
                Value::canonicalize(&bytes, &lim()).map(Value::into_bytes),
                Ok(bytes.clone()),
                "{h}"
            );
        }
    }

    #[test]
    fn json_encodes_to_rfc_vectors() {
        let cases = [
            (json!(0), "00"),
            (json!(23), "17"),
            (json!(24), "1818"),
            (json!(1000000), "1a000f4240"),
            (json!(18446744073709551615u64), "1bffffffffffffffff"),
            (json!(-1), "20"),
            (json!(-1000), "3903e7"),
            (json!(i64::MIN), "3b7fffffffffffffff"),
            (json!(0.0), "f90000"),
            (json!(-0.0), "f98000"),
            (json!(1.0), "f93c00"),
            (json!(1.5), "f93e00"),
            (json!(1.1), "fb3ff199999999999a"),
            (json!(65504.0), "f97bff"),
            (json!(100000.0), "fa47c35000"),
            (json!(3.4028234663852886e38), "fa7f7fffff"),
            (json!(1.0e300), "fb7e37e43c8800759c"),
            (json!(5.960464477539063e-8), "f90001"),
            (json!(-4.1), "fbc010666666666666"),
            (json!(false), "f4"),
            (json!(true), "f5"),
            (json!(null), "f6"),
            (json!(""), "60"),
            (json!("IETF"), "6449455446"),
            (json!("\u{6c34}"), "63e6b0b4"),
            (json!([]), "80"),
            (json!([1, [2, 3]]), "8201820203"),
            (json!({}), "a0"),
            (json!({"a": 1, "b": [2, 3]}), "a26161016162820203"),
            (json!({"b": [2, 3], "a": 1}), "a26161016162820203"),
            (json!(["a", {"b": "c"}]), "826161a161626163"),
            // Bytewise order puts the shorter key first.
            (json!({"aa": 1, "b": 2}), "a261620262616101"),
        ];
        for (j, h) in cases {
            let v = Value::from_json(&j, &lim()).unwrap_or_else(|e| panic!("{j}: {e}"));
            assert_eq!(v.as_bytes(), &hex(h)[..], "{j}");
            assert!(Value::from_canonical(v.as_bytes().to_vec(), &lim()).is_ok());
            assert_eq!(v.to_json(), j, "{h}");
        }
    }

    #[test]
    fn floats_pick_shortest_form() {
        let enc = |x: f64| {
            let mut out = Vec::new();
            write_float(&mut out, x);
            out
        };
        assert_eq!(enc(f64::NAN), hex("f97e00"));
        assert_eq!(enc(-f64::NAN), hex("f97e00"));
        assert_eq!(enc(f64::INFINITY), hex("f97c00"));
        assert_eq!(enc(f64::NEG_INFINITY), hex("f9fc00"));
        assert_eq!(enc(1.0e-10), hex("fb3ddb7cdfd9d7bdbb"));
        assert_eq!(enc(f64::from(f32::MIN_POSITIVE)), hex("fa00800000"));
        // Smallest f16 subnormal, and half of it (needs f32).
        assert_eq!(enc(5.960464477539063e-8), hex("f90001"));
        assert_eq!(enc(5.960464477539063e-8 / 2.0), hex("fa33000000"));
    }

    #[test]
    fn non_canonical_rejected_and_fixed() {
        // (input, expected canonical form, expected from_canonical error)
        let cases = [
            (
                "1800",
                "00",
                ValueError::NonCanonical {
                    offset: 0,
                    reason: "integer not in shortest form",
                },
            ),
            (
                "190017",
                "17",
                ValueError::NonCanonical {
                    offset: 0,
                    reason: "integer not in shortest form",
                },
            ),
            (
                "1a0000ffff",
                "19ffff",
                ValueError::NonCanonical {
                    offset: 0,
                    reason: "integer not in shortest form",
                },
            ),
            (
                "1b00000000ffffffff",
                "1affffffff",
                ValueError::NonCanonical {
                    offset: 0,
                    reason: "integer not in shortest form",
                },
            ),
            (
                "3800",
                "20",
                ValueError::NonCanonical {
                    offset: 0,
                    reason: "integer not in shortest form",
                },
            ),
            (
                "5801ff",
                "41ff",
                ValueError::NonCanonical {
                    offset: 0,
                    reason: "length not in shortest form",
                },
            ),
            (
                "d80100",
                "c100",
                ValueError::NonCanonical {
                    offset: 0,
                    reason: "tag number not in shortest form",
                },
            ),
            (
                "a2616201616102",
                "a2616102616201",
                ValueError::NonCanonical {
                    offset: 4,
                    reason: "map keys not in bytewise order",
                },
            ),
            (
                "a2626161016162 02",
                "a2616202626161 01",
                ValueError::NonCanonical {
                    offset: 5,
                    reason: "map keys not in bytewise order",
                },
            ),
            (
                "9f0102ff",
                "820102",
                ValueError::NonCanonical {
                    offset: 0,
                    reason: "indefinite length",
                },
            ),
            (
                "fb3ff8000000000000",
                "f93e00",
                ValueError::NonCanonical {
                    offset: 0,
                    reason: "float not in the shortest exact form",
                },
            ),
            (
                "fa3fc00000",
                "f93e00",
                ValueError::NonCanonical {
                    offset: 0,
                    reason: "float not in the shortest exact form",
                },
            ),
            (
                "fb40f86a0000000000",
                "fa47c35000",
                ValueError::NonCanonical {
                    offset: 0,
                    reason: "float not in the shortest exact form",
                },
            ),
            (
                "fa7f800000",
                "f97c00",
                ValueError::NonCanonical {
                    offset: 0,
                    reason: "float not in the shortest exact form",
                },
            ),
            (
                "fb7ff8000000000000",
                "f97e00",
                ValueError::NonCanonical {
                    offset: 0,
                    reason: "nan not encoded as f9 7e 00",
                },
            ),
            (
                "f97e01",
                "f97e00",
                ValueError::NonCanonical {
                    offset: 0,
                    reason: "nan not encoded as f9 7e 00",
                },
            ),
            (
                "f9fe00",
                "f97e00",
                ValueError::NonCanonical {
                    offset: 0,
                    reason: "nan not encoded as f9 7e 00",
                },
            ),
            // RFC 8949 Appendix A, indefinite-length examples.
            (
                "5f42010243030405ff",
                "450102030405",
                ValueError::NonCanonical {
                    offset: 0,
                    reason: "indefinite length",
                },
            ),
            (
                "5fff",
                "40",
                ValueError::NonCanonical {
                    offset: 0,
                    reason: "indefinite length",
                },
            ),
            (
                "7f657374726561646d696e67ff",
                "6973747265616d696e67",
                ValueError::NonCanonical {
                    offset: 0,
                    reason: "indefinite length",
                },
            ),
            (
                "9fff",
                "80",
                ValueError::NonCanonical {
                    offset: 0,
                    reason: "indefinite length",
                },
            ),
            (
                "9f018202039f0405ffff",
                "8301820203820405",
                ValueError::NonCanonical {
                    offset: 0,
                    reason: "indefinite length",
                },
            ),
            (
                "83018202039f0405ff",
                "8301820203820405",
                ValueError::NonCanonical {
                    offset: 5,
                    reason: "indefinite length",
                },
            ),
            (
                "83019f0203ff820405",
                "8301820203820405",
                ValueError::NonCanonical {
                    offset: 2,
                    reason: "indefinite length",
                },
            ),
            (
                "bf61610161629f0203ffff",
                "a26161016162820203",
                ValueError::NonCanonical {
                    offset: 0,
                    reason: "indefinite length",
                },
            ),
            (
                "826161bf61626163ff",
                "826161a161626163",
                ValueError::NonCanonical {
                    offset: 3,
                    reason: "indefinite length",
                },
            ),
            (
                "bf6346756ef563416d7421ff",
                "a263416d74216346756ef5",
                ValueError::NonCanonical {
                    offset: 0,
                    reason: "indefinite length",
                },
            ),
        ];
        for (input, fixed, err) in cases {
            let bytes = hex(input);
            let got = Value::from_canonical(bytes.clone(), &lim());
            match (&got, &err) {
                (
                    Err(ValueError::NonCanonical { offset, reason }),
                    ValueError::NonCanonical {
                        offset: o,
                        reason: r,
                    },
                ) => {
                    assert_eq!((offset, reason), (o, r), "{input}");
                }
                _ => panic!("{input}: expected {err:?}, got {got:?}"),
            }
            let c = Value::canonicalize(&bytes, &lim()).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(c.as_bytes(), &hex(fixed)[..], "{input}");
            assert!(
                Value::from_canonical(c.clone().into_bytes(), &lim()).is_ok(),
                "{input}"
            );
            assert_eq!(
                Value::canonicalize(c.as_bytes(), &lim()),
                Ok(c.clone()),
                "{input}"
            );
        }
    }

    #[test]
    fn simple_value_in_two_byte_form() {
        // f8 with a value below 32 is malformed (RFC 8949 section 3.3), in both functions.
        for h in ["f800", "f813", "f818", "f81f"] {
            let bytes = hex(h);
            assert!(
                matches!(
                    Value::from_canonical(bytes.clone(), &lim()),
                    Err(ValueError::Malformed { offset: 0, .. })
                ),
                "{h}"
            );
            assert!(
                matches!(
                    Value::canonicalize(&bytes, &lim()),
                    Err(ValueError::Malformed { offset: 0, .. })
                ),
                "{h}"
            );
        }
        assert!(Value::from_canonical(hex("f820"), &lim()).is_ok());
        assert_eq!(
            Value::from_canonical(hex("f820"), &lim()).map(|v| v.to_json()),
            Ok(json!({"$simple": 32}))
        );
    }

    #[test]
    fn duplicate_keys_rejected_by_both() {
        let dup = hex("a2616101616102");
        assert_eq!(
            Value::from_canonical(dup.clone(), &lim()),
            Err(ValueError::DuplicateKey { offset: 4 })
        );
        assert_eq!(
            Value::canonicalize(&dup, &lim()),
            Err(ValueError::DuplicateKey { offset: 4 })
        );
        assert_eq!(
            canonical_item_len(&dup, &lim()),
            Err(ValueError::DuplicateKey { offset: 4 })
        );
        // Duplicates that only show once keys are canonical: 0x1800 and 0x00 are both 0.
        let dup = hex("a3 1800 01 01 02 00 03");
        assert_eq!(
            Value::canonicalize(&dup, &lim()),
            Err(ValueError::DuplicateKey { offset: 6 })
        );
        // Non-adjacent in the input.
        let dup = hex("bf 6161 01 6162 02 6161 03 ff");
        assert_eq!(
            Value::canonicalize(&dup, &lim()),
            Err(ValueError::DuplicateKey { offset: 7 })
        );
    }

    #[test]
    fn deep_nesting_is_too_deep_not_a_crash() {
        let mut bytes = vec![0x81u8; 100_000];
        bytes.push(0x00);
        let err = Err(ValueError::TooDeep { max: 32 });
        assert_eq!(Value::from_canonical(bytes.clone(), &lim()), err);
        assert_eq!(Value::canonicalize(&bytes, &lim()), err);
        assert_eq!(
            canonical_item_len(&bytes, &lim()),
            Err(ValueError::TooDeep { max: 32 })
        );
        let mut indefinite = vec![0x9fu8; 100_000];
        indefinite.extend(vec![0xffu8; 100_000]);
        assert_eq!(Value::canonicalize(&indefinite, &lim()), err);
        let mut tags = vec![0xc1u8; 100_000];
        tags.push(0x00);
        assert_eq!(Value::from_canonical(tags.clone(), &lim()), err);
        assert_eq!(Value::canonicalize(&tags, &lim()), err);
        // Exactly max_depth containers pass, one more fails; tags and empty containers count.
        for (depth, ok) in [(32usize, true), (33, false)] {
            let mut b = vec![0x81u8; depth - 1];
            b.push(0x80);
            assert_eq!(
                Value::from_canonical(b.clone(), &lim()).is_ok(),
                ok,
                "{depth}"
            );
            assert_eq!(Value::canonicalize(&b, &lim()).is_ok(), ok, "{depth}");
            let mut b = vec![0xc1u8; depth];
            b.push(0x00);
            assert_eq!(
                Value::from_canonical(b.clone(), &lim()).is_ok(),
                ok,
                "{depth}"
            );
            assert_eq!(Value::canonicalize(&b, &lim()).is_ok(), ok, "{depth}");
        }
        let scalar_only = DecodeLimits {
            max_depth: 0,
            ..lim()
        };
        assert!(Value::from_canonical(hex("17"), &scalar_only).is_ok());
        assert_eq!(
            Value::from_canonical(hex("80"), &scalar_only),
            Err(ValueError::TooDeep { max: 0 })
        );
    }

    #[test]
    fn huge_claimed_lengths_fail_fast() {
        for h in [
            "9b1000000000000000",
            "bb1000000000000000",
            "bbffffffffffffffff",
            "5b1000000000000000",
            "7bffffffffffffffff",
            "9bffffffffffffffff00",
            "c1",
        ] {
            let bytes = hex(h);
            let err = Err(ValueError::Truncated {
                offset: bytes.len(),
            });
            assert_eq!(Value::from_canonical(bytes.clone(), &lim()), err, "{h}");
            assert_eq!(Value::canonicalize(&bytes, &lim()), err, "{h}");
        }
        // Non-canonical heads still fail fast in canonicalize.
        let bytes = hex("9b00000000ffffffff00");
        assert_eq!(
            Value::canonicalize(&bytes, &lim()),
            Err(ValueError::Truncated { offset: 10 })
        );
    }

    #[test]
    fn every_prefix_is_truncated() {
        let full =
            hex("a4 6161 8201820203 6162 c11a514b67b0 6163 fb3ff199999999999a 6164 bf6346756ef5ff");
        let canonical = Value::canonicalize(&full, &lim()).expect("valid");
        for value in [full.as_slice(), canonical.as_bytes()] {
            for k in 0..value.len() {
                let prefix = &value[..k];
                let err = Err(ValueError::Truncated { offset: k });
                assert_eq!(Value::canonicalize(prefix, &lim()), err, "prefix {k}");
                if value == canonical.as_bytes() {
                    assert_eq!(
                        Value::from_canonical(prefix.to_vec(), &lim()),
                        err,
                        "prefix {k}"
                    );
                    assert_eq!(
                        canonical_item_len(prefix, &lim()),
                        Err(ValueError::Truncated { offset: k })
                    );
                } else {
                    assert!(Value::from_canonical(prefix.to_vec(), &lim()).is_err());
                }
            }
        }
    }

    #[test]
    fn trailing_bytes() {
        assert_eq!(
            Value::from_canonical(hex("0000"), &lim()),
            Err(ValueError::TrailingBytes { offset: 1 })
        );
        assert_eq!(
            Value::canonicalize(&hex("820102ff"), &lim()),
            Err(ValueError::TrailingBytes { offset: 3 })
        );
        assert_eq!(canonical_item_len(&hex("820102ff00"), &lim()), Ok(3));
    }

    #[test]
    fn malformed_inputs() {
        let cases = [
            ("62c328", 0, "text string is not valid utf-8"),
            ("8262c328", 1, "text string is not valid utf-8"),
            ("1c", 0, "reserved additional information value (28 to 30)"),
            ("5d", 0, "reserved additional information value (28 to 30)"),
            ("fe", 0, "reserved additional information value (28 to 30)"),
            ("ff", 0, "break outside an indefinite-length item"),
            ("8201ff", 2, "break outside an indefinite-length item"),
            ("1f", 0, "indefinite length on an integer or tag"),
            ("3f", 0, "indefinite length on an integer or tag"),
            ("df00", 0, "indefinite length on an integer or tag"),
        ];
        for (h, offset, reason) in cases {
            let bytes = hex(h);
            let err = Err(ValueError::Malformed { offset, reason });
            assert_eq!(Value::from_canonical(bytes.clone(), &lim()), err, "{h}");
            assert_eq!(Value::canonicalize(&bytes, &lim()), err, "{h}");
        }
        // Only in canonicalize (from_canonical stops at the indefinite length).
        for (h, offset) in [
            ("7f62c328ff", 1),
            ("7f61c361bcff", 1),
            ("5f6161ff", 1),
            ("5f5f4100ffff", 1),
            ("9f01", 2),
            ("bf6161ff", 3),
        ] {
            let got = Value::canonicalize(&hex(h), &lim());
            match got {
                Err(ValueError::Malformed { offset: o, .. }) => assert_eq!(o, offset, "{h}"),
                Err(ValueError::Truncated { .. }) if h == "9f01" => {}
                other => panic!("{h}: {other:?}"),
            }
        }
    }

    #[test]
    fn item_and_size_limits() {
        let three = DecodeLimits {
            max_items: 3,
            ..lim()
        };
        assert!(Value::from_canonical(hex("820102"), &three).is_ok());
        assert_eq!(
            Value::from_canonical(hex("83010203"), &three),
            Err(ValueError::TooManyItems { max: 3 })
        );
        assert_eq!(
            Value::canonicalize(&hex("9f010203ff"), &three),
            Err(ValueError::TooManyItems { max: 3 })
        );
        assert_eq!(
            Value::from_json(&json!([1, 2, 3]), &three),
            Err(ValueError::TooManyItems { max: 3 })
        );
        assert_eq!(
            Value::from_json(&json!({"a": 1, "b": 2}), &three),
            Err(ValueError::TooManyItems { max: 3 })
        );
        let small = DecodeLimits {
            max_bytes: 2,
            ..lim()
        };
        assert_eq!(
            Value::from_canonical(hex("190100"), &small),
            Err(ValueError::TooLarge { len: 3, max: 2 })
        );
        assert_eq!(
            Value::canonicalize(&hex("190100"), &small),
            Err(ValueError::TooLarge { len: 3, max: 2 })
        );
        assert_eq!(
            canonical_item_len(&hex("1901000000"), &small),
            Err(ValueError::TooLarge { len: 3, max: 2 })
        );
        assert_eq!(canonical_item_len(&hex("18180000"), &small), Ok(2));
        assert_eq!(
            Value::from_json(&json!("abc"), &small),
            Err(ValueError::TooLarge { len: 4, max: 2 })
        );
        // The output can be longer than the input: an indefinite array of 256 items is 258 bytes,
        // its definite form 259.
        let mut indefinite = vec![0x9fu8];
        indefinite.extend([0u8; 256]);
        indefinite.push(0xff);
        let fits_input = DecodeLimits {
            max_bytes: 258,
            ..lim()
        };
        assert_eq!(
            Value::canonicalize(&indefinite, &fits_input),
            Err(ValueError::TooLarge { len: 259, max: 258 })
        );
        assert_eq!(
            Value::canonicalize(&indefinite, &lim()).map(|v| v.len()),
            Ok(259)
        );
        let mut deep = json!(0);
        for _ in 0..33 {
            deep = json!([deep]);
        }
        assert_eq!(
            Value::from_json(&deep, &lim()),
            Err(ValueError::TooDeep { max: 32 })
        );
    }

    #[test]
    fn canonicalize_is_idempotent() {
        for h in [
            "bf 63416d74 21 6346756e f5 a2 02 00 01 00 f6 ff",
            "d9ffff 9f 1b0000000000000001 fa3fc00000 5f4101ff 7f6161ff f8ff ff",
            "a3 40 01 f93c00 02 a0 03",
            "c2 5f 4100 4101 ff",
            "9f 9f ff 9f 9f ff ff ff",
        ] {
            let bytes = hex(h);
            let once = Value::canonicalize(&bytes, &lim()).unwrap_or_else(|e| panic!("{h}: {e}"));
            assert!(
                Value::from_canonical(once.as_bytes().to_vec(), &lim()).is_ok(),
                "{h}"
            );
            let twice = Value::canonicalize(once.as_bytes(), &lim()).expect("canonical input");
            assert_eq!(once, twice, "{h}");
        }
        let v = Value::canonicalize(
            &hex("bf 63416d74 21 6346756e f5 a2 02 00 01 00 f6 ff"),
            &lim(),
        )
        .expect("valid");
        assert_eq!(
            v.as_bytes(),
            &hex("a3 63416d74 21 6346756e f5 a2 01 00 02 00 f6")[..]
        );
        assert_eq!(
            v.to_json(),
            json!({"{\"1\":0,\"2\":0}": null, "Amt": -2, "Fun": true})
        );
    }

    /// The fast path of [`Value::canonicalize`] (validate, keep the bytes) must agree with
    /// re-encoding: every input the validator accepts re-encodes to itself. Checked on canonical
    /// values and on many byte-level mutations of them (flipped, dropped and inserted bytes).
    #[test]
    fn accepted_input_reencodes_to_itself() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(12);
        let seeds = [
            "a3 63416d74 21 6346756e f5 a2 01 00 02 00 f6",
            "d9ffff 82 01 fa3fc00000",
            "a2 40 01 41 00 02",
            "9f 9f ff ff",
            "f93c00",
            "fb3ff199999999999a",
            "f8 20",
            "c2 42 0001",
            "83 18 18 19 0100 1a 00010000",
            "a1 61 61 a1 61 62 a1 61 63 80",
        ];
        let (mut accepted, mut tried) = (0, 0);
        for h in seeds {
            let base = Value::canonicalize(&hex(h), &lim()).expect("seed is valid cbor");
            for _ in 0..3000 {
                let mut bytes = base.as_bytes().to_vec();
                for _ in 0..rng.random_range(0..3) {
                    let at = rng.random_range(0..=bytes.len());
                    match rng.random_range(0..3) {
                        0 if at < bytes.len() => bytes[at] = rng.random(),
                        1 if at < bytes.len() => {
                            bytes.remove(at);
                        }
                        _ => bytes.insert(at, rng.random()),
                    }
                }
                tried += 1;
                if validate(&bytes, &lim()) != Ok(bytes.len()) {
                    continue;
                }
                accepted += 1;
                let again = reencode(&bytes, &lim()).unwrap_or_else(|e| {
                    panic!("{bytes:02x?} validated but re-encoding failed: {e}")
                });
                assert_eq!(again.as_bytes(), &bytes[..], "{bytes:02x?}");
            }
        }
        // The mutations must reach the fast path often, or the check says little.
        assert!(accepted > tried / 10, "{accepted} of {tried} accepted");
    }

    /// `first_item` reports size before shape, as `from_canonical` does: an item over
    /// `max_bytes` with too many items is too large (an API client gets 413, not 400).
    #[test]
    fn first_item_says_too_large_before_too_many_items() {
        let limits = DecodeLimits {
            max_bytes: 65_536,
            max_depth: 16,
            max_items: 100_000,
        };
        let mut big = vec![0x9a];
        big.extend_from_slice(&150_000u32.to_be_bytes());
        big.extend(std::iter::repeat_n(0u8, 150_000));
        big.push(0x01); // bytes after the item are allowed
        assert!(matches!(
            Value::first_item(&big, &limits),
            Err(ValueError::TooLarge { .. })
        ));
        let small = [0x82, 0x01, 0x02, 0xff];
        assert_eq!(
            Value::first_item(&small, &limits).unwrap().as_bytes(),
            &small[..3]
        );
        let few_items = DecodeLimits {
            max_items: 2,
            ..limits
        };
        assert!(matches!(
            Value::first_item(&small, &few_items),
            Err(ValueError::TooManyItems { .. })
        ));
    }

    #[test]
    fn json_round_trip_nested_document() {
        let doc = json!({
            "name": "sensor-7",
            "tags": ["a", "b", "", "\u{1f600}"],
            "reading": {"t": -12.5, "ok": true, "n": null, "count": 18446744073709551615u64,
                        "min": -9223372036854775808i64, "ratio": 0.1, "whole": 2.0, "neg0": -0.0},
            "nested": [[[[{"deep": [1, -1, 1.5e300, 3.4028234663852886e38]}]]]],
            "$bytes": "not really bytes",
            "empty": {},
        });
        let v = Value::from_json(&doc, &lim()).expect("fits");
        assert_eq!(v.to_json(), doc);
        assert_eq!(
            Value::from_canonical(v.as_bytes().to_vec(), &lim()),
            Ok(v.clone())
        );
        assert_eq!(Value::from_json(&v.to_json(), &lim()), Ok(v.clone()));
        // Text goes through serde_json's float parser, which may be one ulp off without its
        // `float_roundtrip` feature; so compare with its own parse of the text.
        let text = serde_json::to_string_pretty(&doc).expect("serializes");
        let parsed: serde_json::Value = serde_json::from_str(&text).expect("parses");
        assert_eq!(
            Value::from_json_str(&text, &lim()),
            Value::from_json(&parsed, &lim())
        );
        let exact = r#"{"b": [2, 3],
            "a": 1}"#;
        assert_eq!(
            Value::from_json_str(exact, &lim()).map(Value::into_bytes),
            Ok(hex("a26161016162820203"))
        );
        // Keys come back in deterministic order.
        let keys: Vec<String> = v
            .to_json()
            .as_object()
            .expect("object")
            .keys()
            .cloned()
            .collect();
        assert_eq!(
            keys,
            ["name", "tags", "empty", "$bytes", "nested", "reading"]
        );
    }

    #[test]
    fn from_json_str_reports_position() {
        match Value::from_json_str("{\"a\": [1, 2,]}", &lim()) {
            Err(ValueError::Json(msg)) => assert!(msg.contains("line 1 column"), "{msg}"),
            other => panic!("{other:?}"),
        }
        let err = Value::from_json_str("[1,\n  ]", &lim()).expect_err("malformed");
        assert!(err.to_string().starts_with("invalid json: "), "{err}");
        assert!(err.to_string().contains("line 2 column 3"), "{err}");
    }

    #[test]
    fn to_json_mapping() {
        let cases = [
            ("4401020304", json!({"$bytes": "AQIDBA=="})),
            ("40", json!({"$bytes": ""})),
            (
                "c249010000000000000000",
                json!({"$tag": 2, "$value": {"$bytes": "AQAAAAAAAAAA"}}),
            ),
            ("3bffffffffffffffff", json!(-18446744073709551616.0)),
            ("3b7fffffffffffffff", json!(i64::MIN)),
            ("1bffffffffffffffff", json!(u64::MAX)),
            ("f97e00", json!(null)),
            ("f97c00", json!(null)),
            ("f7", json!(null)),
            ("f0", json!({"$simple": 16})),
            ("f8ff", json!({"$simple": 255})),
            ("a201020304", json!({"1": 2, "3": 4})),
            ("a2 01 00 6131 01", json!({"1": 1})),
            ("a1 41 01 f5", json!({"{\"$bytes\":\"AQ==\"}": true})),
            ("a1 80 f5", json!({"[]": true})),
            ("fa47c35000", json!(100000.0)),
        ];
        for (h, expected) in cases {
            let v = Value::from_canonical(hex(h), &lim()).unwrap_or_else(|e| panic!("{h}: {e}"));
            assert_eq!(v.to_json(), expected, "{h}");
        }
        let v = Value::from_json(&json!({"a": 1}), &lim()).expect("fits");
        assert_eq!(format!("{v:?}"), r#"Value({"a":1})"#);
        assert!(!v.is_empty());
        assert_eq!(v.len(), 4);
    }

    #[test]
    fn error_messages() {
        assert_eq!(
            ValueError::TooLarge { len: 5, max: 4 }.to_string(),
            "cbor value is 5 bytes, over the limit of 4"
        );
        assert_eq!(
            ValueError::TooDeep { max: 32 }.to_string(),
            "cbor value nested deeper than 32 levels"
        );
        assert_eq!(
            ValueError::Truncated { offset: 3 }.to_string(),
            "cbor value ends early at byte 3"
        );
        assert_eq!(
            Value::from_canonical(hex("1800"), &lim()).map_err(|e| e.to_string()),
            Err(
                "cbor value not in deterministic encoding at byte 0: integer not in shortest form"
                    .to_owned()
            )
        );
    }

    #[test]
    fn default_limits() {
        assert_eq!(
            DecodeLimits::default(),
            DecodeLimits {
                max_bytes: 1 << 20,
                max_depth: 32,
                max_items: 100_000
            }
        );
    }
}
