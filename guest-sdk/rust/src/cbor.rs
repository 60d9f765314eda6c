//! A small CBOR codec (RFC 8949) for plugin values.
//!
//! Values reach a plugin as the bytes of one CBOR data item in deterministic encoding. This module
//! decodes them into a [`Value`] tree, lets a plugin read and change it (mostly maps with text
//! keys), and encodes it back deterministically:
//!
//! - integers and lengths in their shortest form, definite lengths only;
//! - floats in the shortest of half, single and double precision that holds the value exactly,
//!   every NaN as `f9 7e00`, infinities as half precision;
//! - map entries sorted by the bytes of their encoded keys (so shorter keys first, then bytewise).
//!
//! That is the profile the host checks (RFC 8949 section 4.2.1), so `Value::decode(b)?.encode()`
//! gives back `b` for every value the host hands a plugin.
//!
//! ```
//! use edgerep_guest::cbor::Value;
//!
//! let mut v = Value::decode(&[0xa1, 0x61, 0x74, 0x14])?; // {"t": 20}
//! let t = v.get("t").and_then(Value::as_f64).unwrap_or(0.0);
//! v.set("f", t * 9.0 / 5.0 + 32.0)?;
//! v.remove("t");
//! assert_eq!(v.encode(), [0xa1, 0x61, 0x66, 0xf9, 0x54, 0x40]); // {"f": 68.0}
//! # Ok::<(), edgerep_guest::cbor::Error>(())
//! ```

use std::fmt;

/// Deepest nesting of arrays, maps and tags that [`Value::decode`] accepts.
pub const MAX_DEPTH: usize = 128;

/// One CBOR data item.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `null` (`f6`).
    Null,
    /// `false` / `true` (`f4` / `f5`).
    Bool(bool),
    /// An integer (major types 0 and 1: -2^64 ..= 2^64-1). Integers outside that range are
    /// encoded as bignums (tags 2 and 3).
    Int(i128),
    /// A float (half, single or double precision on the wire).
    Float(f64),
    /// A text string.
    Text(String),
    /// A byte string.
    Bytes(Vec<u8>),
    /// An array.
    Array(Vec<Value>),
    /// A map, as its entries. [`Value::encode`] sorts them; the helpers ([`Value::set`]) keep
    /// keys unique.
    Map(Vec<(Value, Value)>),
    /// A tagged item: tag number and content.
    Tag(u64, Box<Value>),
    /// Any other simple value: 0..=19, 23 (`undefined`) and 32..=255.
    Simple(u8),
}

/// Why bytes could not be decoded, or a map operation was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The input ends inside the data item.
    Truncated {
        /// Length of the input.
        offset: usize,
    },
    /// The input is not well-formed CBOR (or a text string is not UTF-8).
    Malformed {
        /// Where the offending byte or item starts.
        offset: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// Arrays, maps and tags nest deeper than [`MAX_DEPTH`].
    TooDeep {
        /// Where the item that is too deep starts.
        offset: usize,
    },
    /// Bytes follow the data item.
    TrailingBytes {
        /// Where the first extra byte is.
        offset: usize,
    },
    /// A map operation ([`Value::set`]) on a value that is not a map.
    NotAMap,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Truncated { offset } => write!(f, "cbor value ends early at byte {offset}"),
            Error::Malformed { offset, reason } => {
                write!(f, "malformed cbor at byte {offset}: {reason}")
            }
            Error::TooDeep { offset } => {
                write!(
                    f,
                    "cbor value nested deeper than {MAX_DEPTH} levels at byte {offset}"
                )
            }
            Error::TrailingBytes { offset } => {
                write!(f, "trailing bytes after the cbor value at byte {offset}")
            }
            Error::NotAMap => f.write_str("cbor value is not a map"),
        }
    }
}

impl std::error::Error for Error {}

/// So that `?` works in a plugin function returning `Result<_, String>`.
impl From<Error> for String {
    fn from(e: Error) -> String {
        e.to_string()
    }
}

impl Value {
    /// Decodes exactly one data item. Accepts any well-formed CBOR (also non-deterministic
    /// encodings such as indefinite lengths); refuses trailing bytes and nesting deeper than
    /// [`MAX_DEPTH`].
    pub fn decode(bytes: &[u8]) -> Result<Value, Error> {
        let mut d = Decoder { bytes, pos: 0 };
        let v = d.item(0)?;
        if d.pos != bytes.len() {
            return Err(Error::TrailingBytes { offset: d.pos });
        }
        Ok(v)
    }

    /// The deterministic encoding (see the [module documentation](self)).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// Appends the deterministic encoding to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Value::Null => out.push(0xf6),
            Value::Bool(false) => out.push(0xf4),
            Value::Bool(true) => out.push(0xf5),
            Value::Int(i) => encode_int(*i, out),
            Value::Float(f) => encode_float(*f, out),
            Value::Text(s) => {
                head(3, s.len() as u64, out);
                out.extend_from_slice(s.as_bytes());
            }
            Value::Bytes(b) => {
                head(2, b.len() as u64, out);
                out.extend_from_slice(b);
            }
            Value::Array(items) => {
                head(4, items.len() as u64, out);
                for item in items {
                    item.encode_into(out);
                }
            }
            Value::Map(entries) => {
                head(5, entries.len() as u64, out);
                let mut encoded: Vec<(Vec<u8>, &Value)> =
                    entries.iter().map(|(k, v)| (k.encode(), v)).collect();
                encoded.sort_by(|a, b| a.0.cmp(&b.0));
                for (k, v) in encoded {
                    out.extend_from_slice(&k);
                    v.encode_into(out);
                }
            }
            Value::Tag(tag, content) => {
                head(6, *tag, out);
                content.encode_into(out);
            }
            Value::Simple(n) => {
                if *n < 24 {
                    out.push(0xe0 | n);
                } else {
                    out.push(0xf8);
                    out.push(*n);
                }
            }
        }
    }

    /// An empty map.
    pub fn map() -> Value {
        Value::Map(Vec::new())
    }

    /// Whether this is a map.
    pub fn is_map(&self) -> bool {
        matches!(self, Value::Map(_))
    }

    /// Whether this is `null`.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// The entries of a map.
    pub fn as_map(&self) -> Option<&Vec<(Value, Value)>> {
        match self {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    /// The entries of a map, to change them.
    pub fn as_map_mut(&mut self) -> Option<&mut Vec<(Value, Value)>> {
        match self {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    /// The value under the text key `key`, if this is a map that has it.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    }

    /// The value under the text key `key`, to change it.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut Value> {
        self.as_map_mut()?
            .iter_mut()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    }

    /// Whether this is a map with the text key `key`.
    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Sets the text key `key` of a map to `value`, returning the value it replaced.
    ///
    /// Errors with [`Error::NotAMap`] (and changes nothing) if this is not a map.
    pub fn set(&mut self, key: &str, value: impl Into<Value>) -> Result<Option<Value>, Error> {
        let value = value.into();
        let map = self.as_map_mut().ok_or(Error::NotAMap)?;
        match map.iter_mut().find(|(k, _)| k.as_str() == Some(key)) {
            Some((_, v)) => Ok(Some(std::mem::replace(v, value))),
            None => {
                map.push((Value::Text(key.to_owned()), value));
                Ok(None)
            }
        }
    }

    /// Removes the text key `key` from a map, returning its value. `None` if this is not a map
    /// or has no such key.
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        let map = self.as_map_mut()?;
        let i = map.iter().position(|(k, _)| k.as_str() == Some(key))?;
        Some(map.remove(i).1)
    }

    /// The entries of a map whose keys are text, in stored order (empty if not a map).
    pub fn entries(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.as_map()
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| Some((k.as_str()?, v)))
    }

    /// A number (integer or float) as `f64` (large integers are rounded to the nearest `f64`).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            _ => None,
        }
    }

    /// An integer that fits in `i64`.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => i64::try_from(*i).ok(),
            _ => None,
        }
    }

    /// An integer that fits in `u64`.
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Value::Int(i) => u64::try_from(*i).ok(),
            _ => None,
        }
    }

    /// An integer.
    pub fn as_i128(&self) -> Option<i128> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// A text string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }

    /// A boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// A byte string.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// The items of an array.
    pub fn as_array(&self) -> Option<&Vec<Value>> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The items of an array, to change them.
    pub fn as_array_mut(&mut self) -> Option<&mut Vec<Value>> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

macro_rules! from_int {
    ($($t:ty),*) => {$(
        impl From<$t> for Value {
            fn from(i: $t) -> Value {
                Value::Int(i as i128)
            }
        }
    )*};
}
from_int!(i8, i16, i32, i64, i128, isize, u8, u16, u32, u64, usize);

impl From<bool> for Value {
    fn from(b: bool) -> Value {
        Value::Bool(b)
    }
}

impl From<f64> for Value {
    fn from(f: f64) -> Value {
        Value::Float(f)
    }
}

impl From<f32> for Value {
    fn from(f: f32) -> Value {
        Value::Float(f64::from(f))
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::Text(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::Text(s)
    }
}

impl From<&String> for Value {
    fn from(s: &String) -> Value {
        Value::Text(s.clone())
    }
}

impl From<Vec<Value>> for Value {
    fn from(items: Vec<Value>) -> Value {
        Value::Array(items)
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    /// `None` becomes `null`.
    fn from(o: Option<T>) -> Value {
        o.map_or(Value::Null, Into::into)
    }
}

impl<K: Into<Value>, V: Into<Value>> FromIterator<(K, V)> for Value {
    /// Builds a map.
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Value {
        Value::Map(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

// ---- encoding ----

fn head(major: u8, n: u64, out: &mut Vec<u8>) {
    let m = major << 5;
    if n < 24 {
        out.push(m | n as u8);
    } else if n <= u64::from(u8::MAX) {
        out.extend_from_slice(&[m | 24, n as u8]);
    } else if n <= u64::from(u16::MAX) {
        out.push(m | 25);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else if n <= u64::from(u32::MAX) {
        out.push(m | 26);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    } else {
        out.push(m | 27);
        out.extend_from_slice(&n.to_be_bytes());
    }
}

fn encode_int(i: i128, out: &mut Vec<u8>) {
    if i >= 0 {
        match u64::try_from(i) {
            Ok(u) => head(0, u, out),
            Err(_) => bignum(2, i as u128, out),
        }
    } else {
        let n = -1 - i; // >= 0, fits: i >= i128::MIN so -1 - i <= i128::MAX
        match u64::try_from(n) {
            Ok(u) => head(1, u, out),
            Err(_) => bignum(3, n as u128, out),
        }
    }
}

fn bignum(tag: u64, magnitude: u128, out: &mut Vec<u8>) {
    head(6, tag, out);
    let bytes = magnitude.to_be_bytes();
    let first = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    head(2, (bytes.len() - first) as u64, out);
    out.extend_from_slice(&bytes[first..]);
}

fn encode_float(f: f64, out: &mut Vec<u8>) {
    if f.is_nan() {
        out.extend_from_slice(&[0xf9, 0x7e, 0x00]);
        return;
    }
    let single = f as f32;
    if f64::from(single) == f || f.is_infinite() {
        if let Some(half) = f32_to_f16_exact(single) {
            out.push(0xf9);
            out.extend_from_slice(&half.to_be_bytes());
        } else {
            out.push(0xfa);
            out.extend_from_slice(&single.to_bits().to_be_bytes());
        }
    } else {
        out.push(0xfb);
        out.extend_from_slice(&f.to_bits().to_be_bytes());
    }
}

/// The half-precision bits of `f` if half precision holds it exactly (not for NaN).
fn f32_to_f16_exact(f: f32) -> Option<u16> {
    let bits = f.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32;
    let mant = bits & 0x7f_ffff;
    if exp == 0xff {
        // Infinity (NaN is handled by the caller).
        return (mant == 0).then_some(sign | 0x7c00);
    }
    if exp == 0 {
        // Zero, or an f32 subnormal (far below the smallest half subnormal).
        return (mant == 0).then_some(sign);
    }
    let e = exp - 127;
    if (-14..=15).contains(&e) {
        // Normal half: the low 13 mantissa bits must be zero.
        if mant & 0x1fff != 0 {
            return None;
        }
        return Some(sign | (((e + 15) as u16) << 10) | (mant >> 13) as u16);
    }
    if (-24..-14).contains(&e) {
        // Subnormal half: value = m * 2^-24 with m < 1024.
        let sig = 0x80_0000 | mant; // value = sig * 2^(e - 23)
        let shift = (-(e + 1)) as u32; // m = sig >> shift, 14..=23
        if sig & ((1 << shift) - 1) != 0 {
            return None;
        }
        return Some(sign | (sig >> shift) as u16);
    }
    None
}

fn f16_to_f64(h: u16) -> f64 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((h >> 10) & 0x1f);
    let mant = f64::from(h & 0x3ff);
    let magnitude = match exp {
        0 => mant * 2f64.powi(-24),
        31 if mant == 0.0 => f64::INFINITY,
        31 => f64::NAN,
        _ => (1.0 + mant / 1024.0) * 2f64.powi(exp - 15),
    };
    sign * magnitude
}

// ---- decoding ----

struct Decoder<'a> {
    bytes: &'a [u8],
    pos: usize,
}

/// Additional information 31: an indefinite length (or `break` for major type 7).
const INDEFINITE: u64 = u64::MAX;

impl Decoder<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], Error> {
        if self.bytes.len() - self.pos < n {
            return Err(Error::Truncated {
                offset: self.bytes.len(),
            });
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn byte(&mut self) -> Result<u8, Error> {
        Ok(self.take(1)?[0])
    }

    /// Reads a head: (major type, additional information, argument).
    fn head(&mut self) -> Result<(u8, u8, u64), Error> {
        let start = self.pos;
        let b = self.byte()?;
        let (major, ai) = (b >> 5, b & 0x1f);
        let arg = match ai {
            0..=23 => u64::from(ai),
            24 => u64::from(self.byte()?),
            25 => u64::from(u16::from_be_bytes(
                self.take(2)?.try_into().expect("2 bytes"),
            )),
            26 => u64::from(u32::from_be_bytes(
                self.take(4)?.try_into().expect("4 bytes"),
            )),
            27 => u64::from_be_bytes(self.take(8)?.try_into().expect("8 bytes")),
            28..=30 => {
                return Err(Error::Malformed {
                    offset: start,
                    reason: "reserved additional information value (28 to 30)",
                });
            }
            _ => INDEFINITE,
        };
        Ok((major, ai, arg))
    }

    fn len(&self, n: u64) -> Result<usize, Error> {
        // Every byte, element or entry takes at least one byte: refuse lengths the input
        // cannot hold before allocating anything for them.
        match usize::try_from(n) {
            Ok(n) if n <= self.bytes.len() - self.pos => Ok(n),
            _ => Err(Error::Truncated {
                offset: self.bytes.len(),
            }),
        }
    }

    fn string(&mut self, major: u8, ai: u8, arg: u64) -> Result<Vec<u8>, Error> {
        if ai != 31 {
            let n = self.len(arg)?;
            return Ok(self.take(n)?.to_vec());
        }
        let mut out = Vec::new();
        loop {
            let chunk_start = self.pos;
            let (m, cai, carg) = self.head()?;
            if m == 7 && cai == 31 {
                return Ok(out);
            }
            if m != major || cai == 31 {
                return Err(Error::Malformed {
                    offset: chunk_start,
                    reason: "bad chunk in an indefinite-length string",
                });
            }
            let n = self.len(carg)?;
            out.extend_from_slice(self.take(n)?);
        }
    }

    fn is_break(&self) -> bool {
        self.bytes.get(self.pos) == Some(&0xff)
    }

    fn item(&mut self, depth: usize) -> Result<Value, Error> {
        let start = self.pos;
        let (major, ai, arg) = self.head()?;
        if ai == 31 && matches!(major, 0 | 1 | 6) {
            return Err(Error::Malformed {
                offset: start,
                reason: "indefinite length on an integer or tag",
            });
        }
        if matches!(major, 4..=6) && depth >= MAX_DEPTH {
            return Err(Error::TooDeep { offset: start });
        }
        Ok(match major {
            0 => Value::Int(i128::from(arg)),
            1 => Value::Int(-1 - i128::from(arg)),
            2 => Value::Bytes(self.string(2, ai, arg)?),
            3 => {
                let bytes = self.string(3, ai, arg)?;
                Value::Text(String::from_utf8(bytes).map_err(|_| Error::Malformed {
                    offset: start,
                    reason: "text string is not valid utf-8",
                })?)
            }
            4 => {
                let mut items = Vec::new();
                if ai == 31 {
                    while !self.is_break() {
                        items.push(self.item(depth + 1)?);
                    }
                    self.pos += 1;
                } else {
                    let n = self.len(arg)?;
                    items.reserve(n);
                    for _ in 0..n {
                        items.push(self.item(depth + 1)?);
                    }
                }
                Value::Array(items)
            }
            5 => {
                let mut entries = Vec::new();
                if ai == 31 {
                    while !self.is_break() {
                        let k = self.item(depth + 1)?;
                        let v = self.item(depth + 1)?;
                        entries.push((k, v));
                    }
                    self.pos += 1;
                } else {
                    let n = self.len(arg)?;
                    entries.reserve(n / 2);
                    for _ in 0..n {
                        let k = self.item(depth + 1)?;
                        let v = self.item(depth + 1)?;
                        entries.push((k, v));
                    }
                }
                Value::Map(entries)
            }
            6 => Value::Tag(arg, Box::new(self.item(depth + 1)?)),
            _ => match ai {
                20 => Value::Bool(false),
                21 => Value::Bool(true),
                22 => Value::Null,
                0..=19 | 23 => Value::Simple(ai),
                24 if arg < 32 => {
                    return Err(Error::Malformed {
                        offset: start,
                        reason: "simple value below 32 in the two-byte form",
                    });
                }
                24 => Value::Simple(arg as u8),
                25 => Value::Float(f16_to_f64(arg as u16)),
                26 => Value::Float(f64::from(f32::from_bits(arg as u32))),
                27 => Value::Float(f64::from_bits(arg)),
                _ => {
                    return Err(Error::Malformed {
                        offset: start,
                        reason: "break outside an indefinite-length item",
                    });
                }
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    fn enc(v: &Value) -> String {
        v.encode().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// RFC 8949 appendix A, restricted to items whose encoding there is already deterministic.
    #[test]
    fn rfc8949_appendix_a() {
        let cases: &[(Value, &str)] = &[
            (Value::Int(0), "00"),
            (Value::Int(1), "01"),
            (Value::Int(10), "0a"),
            (Value::Int(23), "17"),
            (Value::Int(24), "1818"),
            (Value::Int(25), "1819"),
            (Value::Int(100), "1864"),
            (Value::Int(1000), "1903e8"),
            (Value::Int(1000000), "1a000f4240"),
            (Value::Int(1000000000000), "1b000000e8d4a51000"),
            (Value::Int(18446744073709551615), "1bffffffffffffffff"),
            (Value::Int(18446744073709551616), "c249010000000000000000"),
            (Value::Int(-18446744073709551616), "3bffffffffffffffff"),
            (Value::Int(-18446744073709551617), "c349010000000000000000"),
            (Value::Int(-1), "20"),
            (Value::Int(-10), "29"),
            (Value::Int(-100), "3863"),
            (Value::Int(-1000), "3903e7"),
            (Value::Float(0.0), "f90000"),
            (Value::Float(-0.0), "f98000"),
            (Value::Float(1.0), "f93c00"),
            (Value::Float(1.1), "fb3ff199999999999a"),
            (Value::Float(1.5), "f93e00"),
            (Value::Float(65504.0), "f97bff"),
            (Value::Float(100000.0), "fa47c35000"),
            (Value::Float(3.4028234663852886e+38), "fa7f7fffff"),
            (Value::Float(1.0e+300), "fb7e37e43c8800759c"),
            (Value::Float(5.960464477539063e-8), "f90001"),
            (Value::Float(0.00006103515625), "f90400"),
            (Value::Float(-4.0), "f9c400"),
            (Value::Float(-4.1), "fbc010666666666666"),
            (Value::Float(f64::INFINITY), "f97c00"),
            (Value::Float(f64::NAN), "f97e00"),
            (Value::Float(f64::NEG_INFINITY), "f9fc00"),
            (Value::Bool(false), "f4"),
            (Value::Bool(true), "f5"),
            (Value::Null, "f6"),
            (Value::Simple(23), "f7"),
            (Value::Simple(16), "f0"),
            (Value::Simple(255), "f8ff"),
            (
                Value::Tag(1, Box::new(Value::Int(1363896240))),
                "c11a514b67b0",
            ),
            (Value::Bytes(vec![]), "40"),
            (Value::Bytes(vec![1, 2, 3, 4]), "4401020304"),
            (Value::Text(String::new()), "60"),
            (Value::from("a"), "6161"),
            (Value::from("IETF"), "6449455446"),
            (Value::from("\"\\"), "62225c"),
            (Value::from("\u{00fc}"), "62c3bc"),
            (Value::from("\u{6c34}"), "63e6b0b4"),
            (Value::from("\u{10151}"), "64f0908591"),
            (Value::Array(vec![]), "80"),
            (Value::Array(vec![1.into(), 2.into(), 3.into()]), "83010203"),
            (
                Value::Array(vec![
                    1.into(),
                    Value::Array(vec![2.into(), 3.into()]),
                    Value::Array(vec![4.into(), 5.into()]),
                ]),
                "8301820203820405",
            ),
            (Value::map(), "a0"),
            (
                Value::Map(vec![(1.into(), 2.into()), (3.into(), 4.into())]),
                "a201020304",
            ),
            (
                Value::Map(vec![
                    ("a".into(), 1.into()),
                    ("b".into(), Value::Array(vec![2.into(), 3.into()])),
                ]),
                "a26161016162820203",
            ),
        ];
        for (v, h) in cases {
            assert_eq!(enc(v), *h, "{v:?}");
            let back = Value::decode(&hex(h)).expect(h);
            if let Value::Float(f) = v {
                if f.is_nan() {
                    assert!(matches!(back, Value::Float(b) if b.is_nan()));
                    continue;
                }
                assert_eq!(back.as_f64().map(f64::to_bits), Some(f.to_bits()), "{h}");
            } else if h.starts_with("c2") || h.starts_with("c3") {
                // Bignums decode as tags.
                assert!(matches!(back, Value::Tag(2 | 3, _)));
            } else {
                assert_eq!(&back, v, "{h}");
            }
        }
    }

    #[test]
    fn map_keys_sorted_by_encoding() {
        // Shorter encodings first, then bytewise: 10, 100, -1, "z", "aa", [100], [-1], false.
        let v = Value::Map(vec![
            (Value::Bool(false), 8.into()),
            (Value::Array(vec![Value::Int(-1)]), 7.into()),
            (Value::Array(vec![Value::Int(100)]), 6.into()),
            ("aa".into(), 5.into()),
            ("z".into(), 4.into()),
            (Value::Int(-1), 3.into()),
            (Value::Int(100), 2.into()),
            (Value::Int(10), 1.into()),
        ]);
        assert_eq!(
            enc(&v),
            "a8 0a01 186402 2003 617a04 62616105 81186406 812007 f408".replace(' ', "")
        );
        // Text keys: the length is in the first byte, so "qty" (63) < "item" (64) < "price" (65).
        let v: Value = [
            ("price", Value::Float(0.25)),
            ("qty", 40.into()),
            ("item", "bolts".into()),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            enc(&v),
            "a3 63717479 1828 646974656d 65626f6c7473 657072696365 f93400".replace(' ', "")
        );
    }

    #[test]
    fn shortest_floats() {
        for (f, h) in [
            (68.0, "f95440"),
            (-40.0, "f9d100"),
            (0.5, "f93800"),
            (0.1, "fb3fb999999999999a"),
            (70.7, "fb4051accccccccccd"),
            (65505.0, "fa477fe100"), // not a half (10-bit mantissa), exact in single
            (65536.0, "fa47800000"), // above the half range
            (2f64.powi(-24), "f90001"),
            (2f64.powi(-25), "fa33000000"), // below the smallest half subnormal
            (3.0 * 2f64.powi(-24), "f90003"),
            (2f64.powi(-14) * 1.5, "f90600"),
            (1.0 + 2f64.powi(-10), "f93c01"),
            (1.0 + 2f64.powi(-11), "fa3f801000"),
            (16777217.0, "fb4170000010000000"), // 2^24 + 1: not exact in single
        ] {
            assert_eq!(enc(&Value::Float(f)), h, "{f}");
            assert_eq!(
                Value::decode(&hex(h)).expect(h).as_f64().map(f64::to_bits),
                Some(f64::to_bits(f))
            );
        }
        // Every half value survives f16 -> f64 -> f16.
        for h in 0u16..=0xffff {
            let f = f16_to_f64(h);
            if f.is_nan() {
                continue;
            }
            assert_eq!(f32_to_f16_exact(f as f32), Some(h), "{h:04x}");
        }
    }

    #[test]
    fn decode_non_deterministic_input_then_encode_deterministically() {
        for (input, canonical) in [
            ("1800", "00"),
            ("1b0000000000000001", "01"),
            ("fa3fc00000", "f93e00"),
            ("fb3ff8000000000000", "f93e00"),
            ("9f0102ff", "820102"),
            ("5f41014102ff", "420102"),
            ("7f6161626262ff", "63616262"),
            ("bf616202616101ff", "a2616101616202"),
            ("f97e01", "f97e00"),
            ("b900020000 0101", "a20000 0101"),
        ] {
            let input = hex(input);
            let v = Value::decode(&input).expect("well-formed");
            assert_eq!(enc(&v), canonical.replace(' ', ""));
        }
    }

    #[test]
    fn decode_errors() {
        for (h, err) in [
            ("", Error::Truncated { offset: 0 }),
            ("19 01", Error::Truncated { offset: 2 }),
            ("62 61", Error::Truncated { offset: 2 }),
            ("9b ffffffffffffffff", Error::Truncated { offset: 9 }),
            ("82 01", Error::Truncated { offset: 2 }),
            ("9f 01", Error::Truncated { offset: 2 }),
            ("0000", Error::TrailingBytes { offset: 1 }),
            (
                "1c",
                Error::Malformed {
                    offset: 0,
                    reason: "reserved additional information value (28 to 30)",
                },
            ),
            (
                "ff",
                Error::Malformed {
                    offset: 0,
                    reason: "break outside an indefinite-length item",
                },
            ),
            (
                "1f",
                Error::Malformed {
                    offset: 0,
                    reason: "indefinite length on an integer or tag",
                },
            ),
            (
                "62 c328",
                Error::Malformed {
                    offset: 0,
                    reason: "text string is not valid utf-8",
                },
            ),
            (
                "f8 10",
                Error::Malformed {
                    offset: 0,
                    reason: "simple value below 32 in the two-byte form",
                },
            ),
            (
                "5f 6161 ff",
                Error::Malformed {
                    offset: 1,
                    reason: "bad chunk in an indefinite-length string",
                },
            ),
        ] {
            assert_eq!(Value::decode(&hex(h)), Err(err), "{h}");
        }
        let mut deep = vec![0x81u8; MAX_DEPTH];
        deep.push(0x00);
        assert!(Value::decode(&deep).is_ok());
        let mut deeper = vec![0x81u8; MAX_DEPTH + 1];
        deeper.push(0x00);
        assert_eq!(
            Value::decode(&deeper),
            Err(Error::TooDeep { offset: MAX_DEPTH })
        );
        // A huge nesting depth fails without overflowing the stack.
        assert!(Value::decode(&vec![0x81u8; 1_000_000]).is_err());
    }

    #[test]
    fn map_helpers() {
        let mut v = Value::decode(&hex("a2 6161 01 6162 f5")).expect("map");
        assert_eq!(v.get("a"), Some(&Value::Int(1)));
        assert_eq!(v.get("b").and_then(Value::as_bool), Some(true));
        assert_eq!(v.get("c"), None);
        assert!(v.contains_key("a"));
        assert_eq!(v.set("a", "x"), Ok(Some(Value::Int(1))));
        assert_eq!(v.set("c", 2.5), Ok(None));
        assert_eq!(v.remove("b"), Some(Value::Bool(true)));
        assert_eq!(v.remove("b"), None);
        if let Some(Value::Int(c)) = v.get_mut("zz") {
            *c += 1;
        }
        *v.get_mut("c").expect("c") = Value::Null;
        assert_eq!(enc(&v), "a2 6161 6178 6163 f6".replace(' ', ""));
        let keys: Vec<&str> = v.entries().map(|(k, _)| k).collect();
        assert_eq!(keys, ["a", "c"]);

        let mut not_map = Value::Int(3);
        assert_eq!(not_map.set("a", 1), Err(Error::NotAMap));
        assert_eq!(not_map.remove("a"), None);
        assert_eq!(not_map.get("a"), None);
        assert_eq!(not_map.entries().count(), 0);
        let s: String = Error::NotAMap.into();
        assert_eq!(s, "cbor value is not a map");
    }

    #[test]
    fn accessors() {
        assert_eq!(Value::Int(3).as_f64(), Some(3.0));
        assert_eq!(Value::Float(2.5).as_f64(), Some(2.5));
        assert_eq!(Value::from("3").as_f64(), None);
        assert_eq!(Value::Int(-1).as_u64(), None);
        assert_eq!(Value::Int(-1).as_i64(), Some(-1));
        assert_eq!(Value::Int(1 << 64).as_u64(), None);
        assert_eq!(Value::Int(1 << 64).as_i128(), Some(1 << 64));
        assert_eq!(Value::Bytes(vec![1]).as_bytes(), Some(&[1u8][..]));
        assert_eq!(Value::from(Some("a")), Value::from("a"));
        assert_eq!(Value::from(None::<u8>), Value::Null);
        assert!(Value::Null.is_null());
        assert_eq!(
            Value::from(vec![Value::Null]).as_array().map(Vec::len),
            Some(1)
        );
    }

    #[test]
    fn round_trip_of_deterministic_values() {
        for h in [
            "a3 63717479 1828 646974656d 65626f6c7473 657072696365 f93400",
            "d818 44 a1616101",
            "83 f7 f0 f8ff",
            "a2 01 80 6161 a0",
            "c1 fb 41d4 52d9 ec00 0000",
            "3bffffffffffffffff",
        ] {
            let b = hex(h);
            assert_eq!(Value::decode(&b).expect(h).encode(), b, "{h}");
        }
    }
}
