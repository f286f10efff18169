//! A TCP stream's write side, shared by a connection's writer task and the router's
//! direct writes ([`super::outbox::DirectWrite`]). Tokio's `TcpStream` writes through
//! `&self` (readiness + non-blocking calls), so one `Arc` serves both without a lock;
//! the outbox's own lock keeps writes from interleaving.
//!
//! The reader has the stream's read half to itself, through tokio's own
//! `OwnedReadHalf`: a read that comes back short clears the socket's readiness there,
//! so after a frame the reader waits for the next one without a `recv` that can only
//! say `EAGAIN`.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::AsyncWrite;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;

use super::outbox::DirectWrite;

/// A handle on a TCP stream's shared write half.
#[derive(Clone)]
pub struct SharedTcp(pub Arc<OwnedWriteHalf>);

impl SharedTcp {
    fn stream(&self) -> &TcpStream {
        (*self.0).as_ref()
    }
}

impl DirectWrite for SharedTcp {
    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }
}

impl AsyncWrite for SharedTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.stream().poll_write_ready(cx))?;
            match self.0.try_write(buf) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Half-close the write side, as `TcpStream`'s own shutdown does.
        let sock = socket2::SockRef::from(self.stream());
        Poll::Ready(match sock.shutdown(std::net::Shutdown::Write) {
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
            r => r,
        })
    }
}
