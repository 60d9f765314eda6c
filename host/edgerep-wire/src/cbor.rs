//! A strict reader over untrusted CBOR: every item must have the expected type, a definite length
//! and the shortest head (RFC 8949 §4.2.1), so an accepted item has exactly one encoding. Events
//! (`crate::event`) and replication messages are read with it.
//!
//! Every read names what it was reading, and every error carries that name.

use minicbor::Decoder;
use minicbor::data::Type;

/// Why an item was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CborError {
    /// Not valid CBOR, or not of the expected type or shape.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// The item.
        what: String,
        /// What was wrong.
        reason: String,
    },
    /// Valid, but not in deterministic encoding (a longer head than needed).
    #[error("{what} is not in deterministic encoding")]
    NonCanonical {
        /// The item.
        what: String,
    },
    /// Well-formed, but its value is not allowed.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// The item.
        what: String,
        /// What was wrong.
        reason: String,
    },
    /// Bytes follow the last item.
    #[error("{count} trailing bytes")]
    TrailingBytes {
        /// How many.
        count: usize,
    },
}

/// Length of the shortest head that encodes the argument `n`.
pub fn head_len(n: u64) -> usize {
    match n {
        0..=23 => 1,
        24..=0xff => 2,
        0x100..=0xffff => 3,
        0x1_0000..=0xffff_ffff => 5,
        _ => 9,
    }
}

/// Reads items from one buffer, checking type, definiteness and shortest encoding.
pub struct Reader<'b> {
    d: Decoder<'b>,
    bytes: &'b [u8],
}

/// How deep [`Reader::skip_item`] follows nested items.
pub const SKIP_DEPTH: usize = 16;

impl<'b> Reader<'b> {
    /// A reader at the start of `bytes`.
    pub fn new(bytes: &'b [u8]) -> Reader<'b> {
        Reader {
            d: Decoder::new(bytes),
            bytes,
        }
    }

    /// Bytes not read yet (an upper bound on the number of items still to come).
    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.d.position()
    }

    /// Where the next item starts.
    pub fn position(&self) -> usize {
        self.d.position()
    }

    /// The bytes not read yet.
    pub fn rest(&self) -> &'b [u8] {
        &self.bytes[self.d.position()..]
    }

    /// Skips `n` bytes (an item another checker has measured). Errors past the end.
    pub fn skip(&mut self, n: usize, what: &str) -> Result<(), CborError> {
        if n > self.remaining() {
            return Err(CborError::Malformed {
                what: what.to_owned(),
                reason: "runs past the end".into(),
            });
        }
        self.d.set_position(self.d.position() + n);
        Ok(())
    }

    /// Skips one whole item of definite length, nested at most [`SKIP_DEPTH`] deep: each
    /// level read costs input bytes, so the work is bounded by the bytes left, and the memory by
    /// the depth (indefinite lengths, which minicbor's own skip keeps a stack for, are refused).
    pub fn skip_item(&mut self, what: &str) -> Result<(), CborError> {
        self.skip_at(what, 0)
    }

    fn skip_at(&mut self, what: &str, depth: usize) -> Result<(), CborError> {
        if depth > SKIP_DEPTH {
            return Err(CborError::Malformed {
                what: what.to_owned(),
                reason: format!("nested deeper than {SKIP_DEPTH}"),
            });
        }
        let found = self.d.datatype().map_err(Reader::malformed(what))?;
        match found {
            Type::Array => {
                let n = self.array(what)?;
                for _ in 0..n {
                    self.skip_at(what, depth + 1)?;
                }
                Ok(())
            }
            Type::Map => {
                let n = self.map(what)?;
                for _ in 0..n {
                    self.skip_at(what, depth + 1)?;
                    self.skip_at(what, depth + 1)?;
                }
                Ok(())
            }
            Type::Tag => {
                self.d.tag().map_err(Reader::malformed(what))?;
                self.skip_at(what, depth + 1)
            }
            Type::ArrayIndef | Type::MapIndef | Type::BytesIndef | Type::StringIndef => {
                Err(CborError::Malformed {
                    what: what.to_owned(),
                    reason: "indefinite length".to_owned(),
                })
            }
            // A scalar, a byte or text string: read past without a stack.
            _ => self.d.skip().map_err(Reader::malformed(what)),
        }
    }

    /// Errors unless every byte was read.
    pub fn finish(&self) -> Result<(), CborError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(CborError::TrailingBytes { count }),
        }
    }

    /// Checks the next item's type before reading it, so a wrong type is named, not guessed.
    fn expect(&mut self, want: &[Type], name: &str, what: &str) -> Result<(), CborError> {
        let found = self.d.datatype().map_err(|e| CborError::Malformed {
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
        Err(CborError::Malformed {
            what: what.to_owned(),
            reason,
        })
    }

    /// Maps a minicbor error on an item whose type was already checked.
    fn malformed(what: &str) -> impl FnOnce(minicbor::decode::Error) -> CborError + '_ {
        move |e| CborError::Malformed {
            what: what.to_owned(),
            reason: e.to_string(),
        }
    }

    /// Errors unless the head just read (from `start`, `payload` bytes following it) is the
    /// shortest for `n`.
    fn shortest(&self, start: usize, payload: usize, n: u64, what: &str) -> Result<(), CborError> {
        if self.d.position() - start - payload == head_len(n) {
            Ok(())
        } else {
            Err(CborError::NonCanonical {
                what: what.to_owned(),
            })
        }
    }

    /// A definite-length array; returns its length.
    pub fn array(&mut self, what: &str) -> Result<u64, CborError> {
        self.expect(&[Type::Array], "an array", what)?;
        self.length(what, |d| d.array())
    }

    /// The head of a definite-length array or map (its type already checked) read by `read`:
    /// its length, if the head is the shortest.
    fn length(
        &mut self,
        what: &str,
        read: impl FnOnce(&mut Decoder<'b>) -> Result<Option<u64>, minicbor::decode::Error>,
    ) -> Result<u64, CborError> {
        let start = self.d.position();
        let n = read(&mut self.d)
            .map_err(Self::malformed(what))?
            .ok_or_else(|| CborError::Malformed {
                what: what.to_owned(),
                reason: "indefinite length".into(),
            })?;
        self.shortest(start, 0, n, what)?;
        Ok(n)
    }

    /// A definite-length array of exactly `n` items.
    pub fn array_of(&mut self, n: u64, what: &str) -> Result<(), CborError> {
        let got = self.array(what)?;
        if got == n {
            Ok(())
        } else {
            Err(CborError::Malformed {
                what: what.to_owned(),
                reason: format!("expected an array of {n} items, found {got}"),
            })
        }
    }

    /// A definite-length map; returns its number of entries.
    pub fn map(&mut self, what: &str) -> Result<u64, CborError> {
        self.expect(&[Type::Map], "a map", what)?;
        self.length(what, |d| d.map())
    }

    /// An unsigned integer.
    pub fn u64(&mut self, what: &str) -> Result<u64, CborError> {
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
    pub fn u32(&mut self, what: &str) -> Result<u32, CborError> {
        let n = self.u64(what)?;
        u32::try_from(n).map_err(|_| CborError::Invalid {
            what: what.to_owned(),
            reason: format!("{n} does not fit in 32 bits"),
        })
    }

    /// Whether the next item is null; a null is read past, anything else is left to read.
    pub fn null(&mut self, what: &str) -> Result<bool, CborError> {
        let found = self.d.datatype().map_err(Self::malformed(what))?;
        if found != Type::Null {
            return Ok(false);
        }
        self.d.skip().map_err(Self::malformed(what))?;
        Ok(true)
    }

    /// A boolean.
    pub fn bool(&mut self, what: &str) -> Result<bool, CborError> {
        self.expect(&[Type::Bool], "a boolean", what)?;
        self.d.bool().map_err(Self::malformed(what))
    }

    /// A definite-length text string.
    pub fn str(&mut self, what: &str) -> Result<&'b str, CborError> {
        self.expect(&[Type::String], "a text string", what)?;
        let start = self.d.position();
        let s = self.d.str().map_err(Self::malformed(what))?;
        self.shortest(start, s.len(), s.len() as u64, what)?;
        Ok(s)
    }

    /// A definite-length byte string.
    pub fn bytes(&mut self, what: &str) -> Result<&'b [u8], CborError> {
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

    #[test]
    fn longer_heads_and_indefinite_lengths_are_refused() {
        // 5 as a one-byte-argument integer, and "a" with a one-byte length.
        assert!(matches!(
            Reader::new(&[0x18, 5]).u64("n"),
            Err(CborError::NonCanonical { .. })
        ));
        assert!(matches!(
            Reader::new(&[0x78, 1, b'a']).str("s"),
            Err(CborError::NonCanonical { .. })
        ));
        assert!(matches!(
            Reader::new(&[0x9f, 0xff]).array("a"),
            Err(CborError::Malformed { .. })
        ));
        assert_eq!(Reader::new(&[0x05]).u64("n"), Ok(5));
        let mut r = Reader::new(&[0x05, 0x06]);
        r.u64("n").unwrap();
        assert_eq!(r.finish(), Err(CborError::TrailingBytes { count: 1 }));
    }
}
