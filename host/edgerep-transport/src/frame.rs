//! Length-prefixed frames on quinn streams: a `u32` big-endian length, then that many bytes.
//!
//! The reader checks a frame's announced length against its maximum before it allocates
//! anything for the frame, so a peer cannot make this node reserve more than the maximum by
//! lying about a length. What the bytes mean is the replication protocol's business.

use bytes::{Buf, Bytes, BytesMut};
use quinn::{ReadError, RecvStream, SendStream, WriteError};

/// Size of the length prefix, in bytes.
pub const HEADER_BYTES: usize = 4;

/// How much a reader takes from the stream at once beyond the frame it is reading, so that small
/// frames do not cost a stream read each.
const READ_AHEAD_BYTES: usize = 64 << 10;

/// The default largest frame payload, in bytes (16 MiB).
pub const DEFAULT_MAX_FRAME_BYTES: u32 = 16 << 20;

/// What went wrong reading or writing frames.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// A frame is longer than the maximum: announced by the peer when reading (nothing was
    /// allocated for it), or given when writing.
    #[error("frame of {len} bytes is larger than the maximum of {max} bytes")]
    TooLarge {
        /// The frame's payload length.
        len: u64,
        /// The maximum payload length.
        max: u32,
    },
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame: got {received} of its {expected} bytes")]
    Truncated {
        /// Bytes the frame needed (length prefix included; 4 when the prefix itself was cut).
        expected: u64,
        /// Bytes that arrived.
        received: u64,
    },
    /// Reading the stream failed (the peer reset it, the connection was lost, ...).
    #[error("reading frame: {0}")]
    Read(#[from] ReadError),
    /// Writing the stream failed (the peer stopped it, the connection was lost, ...).
    #[error("writing frame: {0}")]
    Write(#[from] WriteError),
}

impl FrameError {
    /// The connection itself ended (closed by either side, timed out, reset): not a fault of
    /// the frames on it.
    pub fn is_connection_lost(&self) -> bool {
        matches!(
            self,
            FrameError::Read(ReadError::ConnectionLost(_))
                | FrameError::Write(WriteError::ConnectionLost(_))
        )
    }
}

fn check_len(len: usize, max: u32) -> Result<u32, FrameError> {
    match u32::try_from(len) {
        Ok(n) if n <= max => Ok(n),
        _ => Err(FrameError::TooLarge {
            len: len as u64,
            max,
        }),
    }
}

/// Writes one frame (length prefix and `payload`) to `send`. The payload may be at most
/// `u32::MAX` bytes; [`FrameWriter`] checks a smaller maximum and batches small frames.
pub async fn write_frame(send: &mut SendStream, payload: &[u8]) -> Result<(), FrameError> {
    let len = check_len(payload.len(), u32::MAX)?;
    let mut buf = Vec::with_capacity(HEADER_BYTES + payload.len());
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(payload);
    send.write_chunk(Bytes::from(buf)).await?;
    Ok(())
}

/// Buffers frames and writes them to a stream together, so that many small frames cost one
/// stream write. Frames larger than the writer's maximum are refused before they are buffered.
#[derive(Debug)]
pub struct FrameWriter {
    buf: Vec<u8>,
    max_frame_bytes: u32,
}

impl Default for FrameWriter {
    fn default() -> FrameWriter {
        FrameWriter::new(DEFAULT_MAX_FRAME_BYTES)
    }
}

impl FrameWriter {
    /// A writer for frames of at most `max_frame_bytes` payload bytes.
    pub fn new(max_frame_bytes: u32) -> FrameWriter {
        FrameWriter {
            buf: Vec::new(),
            max_frame_bytes,
        }
    }

    /// Buffers one frame; nothing is sent until [`FrameWriter::flush`].
    pub fn push(&mut self, payload: &[u8]) -> Result<(), FrameError> {
        let len = check_len(payload.len(), self.max_frame_bytes)?;
        self.buf.reserve(HEADER_BYTES + payload.len());
        self.buf.extend_from_slice(&len.to_be_bytes());
        self.buf.extend_from_slice(payload);
        Ok(())
    }

    /// Bytes buffered and not yet flushed (length prefixes included).
    pub fn buffered_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Sends every buffered frame to `send`, in order. Returns once quinn has taken the bytes
    /// (they are then in flight or queued within the connection's send window), not when the
    /// peer has read them.
    pub async fn flush(&mut self, send: &mut SendStream) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.buf);
        send.write_chunk(Bytes::from(batch)).await?;
        Ok(())
    }

    /// Buffers one frame and flushes.
    pub async fn write_frame(
        &mut self,
        send: &mut SendStream,
        payload: &[u8],
    ) -> Result<(), FrameError> {
        self.push(payload)?;
        self.flush(send).await
    }
}

/// Reads frames from a stream, buffering what arrives past the current frame.
#[derive(Debug)]
pub struct FrameReader {
    buf: BytesMut,
    max_frame_bytes: u32,
}

impl Default for FrameReader {
    fn default() -> FrameReader {
        FrameReader::new(DEFAULT_MAX_FRAME_BYTES)
    }
}

impl FrameReader {
    /// A reader that refuses frames of more than `max_frame_bytes` payload bytes.
    pub fn new(max_frame_bytes: u32) -> FrameReader {
        FrameReader {
            buf: BytesMut::new(),
            max_frame_bytes,
        }
    }

    /// The largest payload this reader accepts.
    pub fn max_frame_bytes(&self) -> u32 {
        self.max_frame_bytes
    }

    /// Reads the next frame's payload from `recv`: `Ok(None)` when the stream ended cleanly
    /// between frames, [`FrameError::TooLarge`] as soon as a length prefix announces more than
    /// the maximum (before anything is allocated for it), [`FrameError::Truncated`] when the
    /// stream ends inside a frame. After an error the stream is not usable for frames any more.
    ///
    /// Use the same reader for every frame of a stream: it may have read past the frame it
    /// returns.
    pub async fn read_frame(&mut self, recv: &mut RecvStream) -> Result<Option<Bytes>, FrameError> {
        loop {
            let needed = match self.announced_len()? {
                Some(len) => {
                    let total = HEADER_BYTES + len as usize;
                    if self.buf.len() >= total {
                        self.buf.advance(HEADER_BYTES);
                        return Ok(Some(self.buf.split_to(len as usize).freeze()));
                    }
                    total
                }
                None => HEADER_BYTES,
            };
            let missing = needed - self.buf.len();
            // Room for the rest of this frame: sized by a checked length, so at most the
            // maximum frame plus its prefix.
            self.buf.reserve(missing);
            match recv.read_chunk(missing.max(READ_AHEAD_BYTES), true).await? {
                Some(chunk) => self.buf.extend_from_slice(&chunk.bytes),
                None if self.buf.is_empty() => return Ok(None),
                None => {
                    return Err(FrameError::Truncated {
                        expected: needed as u64,
                        received: self.buf.len() as u64,
                    });
                }
            }
        }
    }

    /// The payload length the buffered prefix announces, checked against the maximum.
    fn announced_len(&self) -> Result<Option<u32>, FrameError> {
        let Some(prefix) = self.buf.first_chunk::<HEADER_BYTES>() else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(*prefix);
        if len > self.max_frame_bytes {
            return Err(FrameError::TooLarge {
                len: u64::from(len),
                max: self.max_frame_bytes,
            });
        }
        Ok(Some(len))
    }
}
