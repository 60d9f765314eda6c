//! The raw QUIC limit the replication benchmark compares itself with.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use edgerep_wire::event::NodeId;

use crate::certs::{Ca, CertError, Identity};
use crate::endpoint::{AcceptError, BindError, ConnectError, Transport};
use crate::frame::{FrameError, FrameReader, FrameWriter};
use crate::tls::TransportConfig;

/// Frames are handed to quinn in batches of about this many bytes, as a replication sender
/// batching events would.
const BATCH_BYTES: usize = 64 << 10;

/// What [`raw_stream_throughput`] measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RawThroughput {
    /// Frames the receiver counted (fewer than were sent is an error).
    pub frames: u64,
    /// Payload bytes per frame.
    pub frame_bytes: usize,
    /// From the first write to the receipt of the last frame.
    pub elapsed: Duration,
}

impl RawThroughput {
    /// Frames (events) per second.
    pub fn events_per_second(&self) -> f64 {
        self.frames as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Payload megabytes (10^6 bytes) per second.
    pub fn megabytes_per_second(&self) -> f64 {
        self.events_per_second() * self.frame_bytes as f64 / 1e6
    }
}

/// The benchmark could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    /// Making the certificates failed.
    #[error("raw quinn benchmark: {0}")]
    Cert(#[from] CertError),
    /// Binding an endpoint failed.
    #[error("raw quinn benchmark: {0}")]
    Bind(#[from] BindError),
    /// Dialing failed.
    #[error("raw quinn benchmark: {0}")]
    Connect(#[from] ConnectError),
    /// Accepting failed.
    #[error("raw quinn benchmark: {0}")]
    Accept(#[from] AcceptError),
    /// Moving frames failed.
    #[error("raw quinn benchmark: {0}")]
    Frame(#[from] FrameError),
    /// Something else failed.
    #[error("raw quinn benchmark: {0}")]
    Other(String),
}

/// Measures the raw limit of one quinn stream between two endpoints on loopback, with this
/// crate's certificates, TLS and transport settings ([`TransportConfig::default`]) and framing:
/// `frames` frames of `frame_size` payload bytes, written in batches of about 64 KiB and read
/// one by one with [`FrameReader`]. Nothing is stored or decoded: this is the ceiling the
/// replication benchmark reports itself against. Runs on the current tokio runtime (a
/// multi-threaded one lets sender and receiver use separate cores).
pub async fn raw_stream_throughput(
    frames: u64,
    frame_size: usize,
) -> Result<RawThroughput, BenchError> {
    let ca = Ca::generate("raw quinn benchmark")?;
    let [a, b] = ["bench-a", "bench-b"].map(|id| NodeId::parse(id).expect("valid node id"));
    let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let sender = Transport::bind(
        loopback,
        Identity::new(&ca, &ca.issue_node(a.as_str())?)?,
        vec![(b.clone(), String::new())],
        TransportConfig::default(),
    )?;
    let receiver = Transport::bind(
        loopback,
        Identity::new(&ca, &ca.issue_node(b.as_str())?)?,
        vec![(a.clone(), String::new())],
        TransportConfig::default(),
    )?;
    let receiver_addr = receiver
        .local_addr()
        .map_err(|e| BenchError::Other(e.to_string()))?;

    let receiving = tokio::spawn(async move {
        let incoming = receiver
            .accept()
            .await
            .ok_or_else(|| BenchError::Other("endpoint closed".to_owned()))?;
        let conn = incoming.handshake().await?;
        let (_send, mut recv) = conn
            .conn
            .accept_bi()
            .await
            .map_err(|e| BenchError::Other(e.to_string()))?;
        let mut reader = FrameReader::new(frame_size.try_into().unwrap_or(u32::MAX));
        let mut received = 0u64;
        while let Some(frame) = reader.read_frame(&mut recv).await? {
            if frame.len() != frame_size {
                return Err(BenchError::Other(format!(
                    "frame of {} bytes, expected {frame_size}",
                    frame.len()
                )));
            }
            received += 1;
        }
        let done = Instant::now();
        Ok::<_, BenchError>((received, done, receiver))
    });

    let conn = sender.connect(&b, &receiver_addr.to_string()).await?;
    let (mut send, _recv) = conn
        .conn
        .open_bi()
        .await
        .map_err(|e| BenchError::Other(e.to_string()))?;
    let payload = vec![0xa5u8; frame_size];
    let mut writer = FrameWriter::new(u32::MAX);
    let start = Instant::now();
    for _ in 0..frames {
        writer.push(&payload)?;
        if writer.buffered_bytes() >= BATCH_BYTES {
            writer.flush(&mut send).await?;
        }
    }
    writer.flush(&mut send).await?;
    send.finish()
        .map_err(|e| BenchError::Other(e.to_string()))?;

    let (received, done, receiver) = receiving
        .await
        .map_err(|e| BenchError::Other(format!("receiver task: {e}")))??;
    if received != frames {
        return Err(BenchError::Other(format!(
            "received {received} of {frames} frames"
        )));
    }
    conn.close(crate::CloseCode::Normal, "done");
    sender.close(crate::CloseCode::Normal, "done");
    receiver.close(crate::CloseCode::Normal, "done");
    Ok(RawThroughput {
        frames: received,
        frame_bytes: frame_size,
        elapsed: done - start,
    })
}
