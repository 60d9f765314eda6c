//! A strict reader over untrusted CBOR: every item must have the expected type, a definite length
//! and the shortest head (RFC 8949 §4.2.1), so one message has exactly one accepted encoding.
//!
//! Every read names what it was reading, and every error carries that name.

use minicbor::Decoder;
use minicbor::data::Type;

use crate::message::DecodeError;

/// Length of the shortest head that encodes the argument `n`.
fn head_len(n: u64) -> usize {
    match n {
        0..=23 => 1,
        24..=0xff => 2,
        0x100..=0xffff => 3,
        0x1_0000..=0xffff_ffff => 5,
        _ => 9,
    }
}

/// Reads items from one message, checking type, definiteness and shortest encoding.
pub(crate) struct Reader<'b> {
    d: Decoder<'b>,
    len: usize,
}

impl<'b> Reader<'b> {
    pub(crate) fn new(bytes: &'b [u8]) -> Reader<'b> {
        Reader {
            d: Decoder::new(bytes),
            len: bytes.len(),
        }
    }

    /// Bytes not read yet (an upper bound on the number of items still to come).
    pub(crate) fn remaining(&self) -> usize {
        self.len - self.d.position()
    }

    /// Errors unless every byte was read.
    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(DecodeError::TrailingBytes { count }),
        }
    }

    /// Checks the next item's type before reading it, so a wrong type is named, not guessed.
    fn expect(&mut self, want: &[Type], name: &str, what: &str) -> Result<(), DecodeError> {
        let found = self.d.datatype().map_err(|e| DecodeError::Malformed {
            what: what.to_owned(),
            reason: e.to_string(),
        })?;
        if want.contains(&found) {
            return Ok(());
        }
        let reason = match found {
            Type::ArrayIndef | Type::MapIndef | Type::BytesIndef | Type::StringIndef => {
                "indefinite length".to_owned()
            }
            other => format!("expected {name}, found {other}"),
        };
        Err(DecodeError::Malformed {
            what: what.to_owned(),
            reason,
        })
    }

    /// Maps a minicbor error on an item whose type was already checked.
    fn malformed(what: &str) -> impl FnOnce(minicbor::decode::Error) -> DecodeError + '_ {
        move |e| DecodeError::Malformed {
            what: what.to_owned(),
            reason: e.to_string(),
        }
    }

    /// Errors unless the head just read (from `start`, `payload` bytes following it) is the
    /// shortest for `n`.
    fn shortest(
        &self,
        start: usize,
        payload: usize,
        n: u64,
        what: &str,
    ) -> Result<(), DecodeError> {
        if self.d.position() - start - payload == head_len(n) {
            Ok(())
        } else {
            Err(DecodeError::NonCanonical {
                what: what.to_owned(),
            })
        }
    }

    /// A definite-length array; returns its length.
    pub(crate) fn array(&mut self, what: &str) -> Result<u64, DecodeError> {
        self.expect(&[Type::Array], "an array", what)?;
        let start = self.d.position();
        let n = self
            .d
            .array()
            .map_err(Self::malformed(what))?
            .ok_or_else(|| DecodeError::Malformed {
                what: what.to_owned(),
                reason: "indefinite length".into(),
            })?;
        self.shortest(start, 0, n, what)?;
        Ok(n)
    }

    /// A definite-length array of exactly `n` items.
    pub(crate) fn array_of(&mut self, n: u64, what: &str) -> Result<(), DecodeError> {
        let got = self.array(what)?;
        if got == n {
            Ok(())
        } else {
            Err(DecodeError::Malformed {
                what: what.to_owned(),
                reason: format!("expected an array of {n} items, found {got}"),
            })
        }
    }

    /// An unsigned integer.
    pub(crate) fn u64(&mut self, what: &str) -> Result<u64, DecodeError> {
        self.expect(
            &[Type::U8, Type::U16, Type::U32, Type::U64],
            "an unsigned integer",
            what,
        )?;
        let start = self.d.position();
        let n = self.d.u64().map_err(Self::malformed(what))?;
        self.shortest(start, 0, n, what)?;
        Ok(n)
    }

    /// An unsigned integer that fits in 32 bits.
    pub(crate) fn u32(&mut self, what: &str) -> Result<u32, DecodeError> {
        let n = self.u64(what)?;
        u32::try_from(n).map_err(|_| DecodeError::Invalid {
            what: what.to_owned(),
            reason: format!("{n} does not fit in 32 bits"),
        })
    }

    /// A boolean.
    pub(crate) fn bool(&mut self, what: &str) -> Result<bool, DecodeError> {
        self.expect(&[Type::Bool], "a boolean", what)?;
        self.d.bool().map_err(Self::malformed(what))
    }

    /// A definite-length text string.
    pub(crate) fn str(&mut self, what: &str) -> Result<&'b str, DecodeError> {
        self.expect(&[Type::String], "a text string", what)?;
        let start = self.d.position();
        let s = self.d.str().map_err(Self::malformed(what))?;
        self.shortest(start, s.len(), s.len() as u64, what)?;
        Ok(s)
    }

    /// A definite-length byte string.
    pub(crate) fn bytes(&mut self, what: &str) -> Result<&'b [u8], DecodeError> {
        self.expect(&[Type::Bytes], "a byte string", what)?;
        let start = self.d.position();
        let b = self.d.bytes().map_err(Self::malformed(what))?;
        self.shortest(start, b.len(), b.len() as u64, what)?;
        Ok(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_lengths_match_the_shortest_encoding() {
        for n in [0, 23, 24, 255, 256, 65535, 65536, u32::MAX as u64, u64::MAX] {
            let mut buf = Vec::new();
            minicbor::Encoder::new(&mut buf).u64(n).unwrap();
            assert_eq!(buf.len(), head_len(n), "{n}");
        }
    }
}
