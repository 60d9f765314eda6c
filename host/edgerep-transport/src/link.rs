//! A peer link: the one bidirectional stream of frames replication runs on, over an
//! authenticated connection. The dialer opens it ([`PeerConnection::open_link`]), the acceptor
//! accepts it ([`PeerConnection::accept_link`]); each side gets a [`LinkSender`] and a
//! [`LinkReceiver`], and closes the connection with a [`crate::CloseCode`] and a reason.

use bytes::Bytes;

use crate::endpoint::{PeerConnection, describe_close};
use crate::frame::{FrameError, FrameReader, FrameWriter};

/// The link could not be opened (the connection closed first).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no stream: {0}")]
pub struct LinkError(pub String);

/// Sends frames to the peer: pushed into a buffer, written by [`LinkSender::flush`].
#[derive(Debug)]
pub struct LinkSender {
    send: quinn::SendStream,
    writer: FrameWriter,
}

impl LinkSender {
    /// Buffers one frame (refused if it is over the frame limit).
    pub fn push(&mut self, frame: &[u8]) -> Result<(), FrameError> {
        self.writer.push(frame)
    }

    /// Bytes buffered and not yet written.
    pub fn buffered_bytes(&self) -> usize {
        self.writer.buffered_bytes()
    }

    /// Writes what is buffered.
    pub async fn flush(&mut self) -> Result<(), FrameError> {
        self.writer.flush(&mut self.send).await
    }

    /// Buffers `frame` and writes the buffer.
    pub async fn send(&mut self, frame: &[u8]) -> Result<(), FrameError> {
        self.push(frame)?;
        self.flush().await
    }

    /// Ends the stream after what was written (the peer reads the end after the last frame).
    pub fn finish(&mut self) {
        let _ = self.send.finish();
    }
}

/// Receives the peer's frames.
#[derive(Debug)]
pub struct LinkReceiver {
    recv: quinn::RecvStream,
    reader: FrameReader,
}

impl LinkReceiver {
    /// The next frame's payload: `Ok(None)` when the peer ended the stream between frames;
    /// [`FrameError::TooLarge`] as soon as a prefix announces more than the limit.
    pub async fn recv(&mut self) -> Result<Option<Bytes>, FrameError> {
        self.reader.read_frame(&mut self.recv).await
    }
}

impl PeerConnection {
    /// Opens the link (the dialer's side), reading frames of at most `max_frame_bytes`.
    pub async fn open_link(
        &self,
        max_frame_bytes: u32,
    ) -> Result<(LinkSender, LinkReceiver), LinkError> {
        let (send, recv) = self
            .conn
            .open_bi()
            .await
            .map_err(|e| LinkError(describe_close(&e)))?;
        Ok(link(send, recv, max_frame_bytes))
    }

    /// Accepts the link the dialer opens, reading frames of at most `max_frame_bytes`.
    pub async fn accept_link(
        &self,
        max_frame_bytes: u32,
    ) -> Result<(LinkSender, LinkReceiver), LinkError> {
        let (send, recv) = self
            .conn
            .accept_bi()
            .await
            .map_err(|e| LinkError(describe_close(&e)))?;
        Ok(link(send, recv, max_frame_bytes))
    }

    /// How many times stream data left for the peer so far (QUIC STREAM frames sent, resent
    /// ones included): growing while the link carries what was written; acknowledgements and
    /// keep-alives do not count.
    pub fn stream_frames_sent(&self) -> u64 {
        self.conn.stats().frame_tx.stream
    }

    /// How many times stream data arrived from the peer so far (QUIC STREAM frames received):
    /// growing while the peer's messages come in.
    pub fn stream_frames_received(&self) -> u64 {
        self.conn.stats().frame_rx.stream
    }

    /// QUIC's current estimate of the round trip to the peer (smoothed): what timers that wait
    /// for the peer's answer must allow for on a slow link.
    pub fn rtt(&self) -> std::time::Duration {
        self.conn.rtt()
    }

    /// [`PeerConnection::rtt`] in whole milliseconds, as the replication core counts time.
    pub fn rtt_ms(&self) -> u64 {
        u64::try_from(self.rtt().as_millis()).unwrap_or(u64::MAX)
    }

    /// Why the connection closed (ours or the peer's, in words), if it has.
    pub fn close_reason(&self) -> Option<String> {
        self.conn.close_reason().map(|e| describe_close(&e))
    }

    /// Waits until the connection closes; says why.
    pub async fn closed(&self) -> String {
        describe_close(&self.conn.closed().await)
    }
}

fn link(
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    max_frame_bytes: u32,
) -> (LinkSender, LinkReceiver) {
    (
        // What this side sends is bounded as what it reads (both sides take the same
        // limit): a frame the peer would refuse fails here, where it was made.
        LinkSender {
            send,
            writer: FrameWriter::new(max_frame_bytes),
        },
        LinkReceiver {
            recv,
            reader: FrameReader::new(max_frame_bytes),
        },
    )
}
