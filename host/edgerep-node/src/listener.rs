//! The API's TCP listener, with a bound on open connections: past `api.max_connections` the
//! next connection waits in the kernel's backlog until one closes (nothing is read from it).
//! And the HTTP/1.1 server on it ([`serve`]), which closes connections that send no request.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

/// Longest a connection may take to send a request's headers from when it may (connected, or
/// answered): a client that connects and sends nothing, trickles its headers, or keeps an idle
/// connection is closed after it (or after `api.request_timeout_ms`, if shorter). Without it,
/// `api.max_connections` idle sockets, opened without a token, locked every client out.
pub(crate) const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` over HTTP/1.1 until `stop` turns true; then stops accepting, ends
/// each connection after its request in progress, and returns once all are closed.
pub(crate) async fn serve(
    mut listener: Limited,
    app: axum::Router,
    mut stop: watch::Receiver<bool>,
    header_timeout: Duration,
) {
    // Each connection's task holds a receiver of `closing`: when all are dropped, all are done.
    let (closing, open) = watch::channel(false);
    loop {
        let stopping = async {
            let _ = stop.wait_for(|&s| s).await;
        };
        let (io, _addr) = tokio::select! {
            conn = axum::serve::Listener::accept(&mut listener) => conn,
            () = stopping => break,
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let mut shutdown = open.clone();
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout);
            let conn = builder
                .serve_connection(hyper_util::rt::TokioIo::new(io), service)
                .with_upgrades();
            let mut conn = std::pin::pin!(conn);
            let stopping = async {
                let _ = shutdown.wait_for(|&s| s).await;
            };
            tokio::select! {
                _ = conn.as_mut() => {}
                () = stopping => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    let _ = closing.send(true);
    drop(open);
    closing.closed().await;
}

/// A TCP listener that holds at most `max` connections open.
#[derive(Debug)]
pub(crate) struct Limited {
    inner: TcpListener,
    open: Arc<Semaphore>,
}

impl Limited {
    pub(crate) fn new(inner: TcpListener, max: usize) -> Limited {
        Limited {
            inner,
            open: Arc::new(Semaphore::new(max)),
        }
    }
}

/// A connection that gives its slot back when it closes.
#[derive(Debug)]
pub(crate) struct Counted {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
}

impl axum::serve::Listener for Limited {
    type Io = Counted;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Counted, SocketAddr) {
        loop {
            // The semaphore is never closed, so acquiring only waits.
            let Ok(slot) = self.open.clone().acquire_owned().await else {
                continue;
            };
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    return (
                        Counted {
                            stream,
                            _slot: slot,
                        },
                        addr,
                    );
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait a little, as axum does.
                    tracing::warn!("api: accepting a connection failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
