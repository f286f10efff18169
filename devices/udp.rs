//! What the UDP devices (VISCA camera, X32 console) share: on the adapter side the
//! retransmission policy and the driver's observable local address; on the simulator
//! side the bound socket, the task serving it, raw injection for tests, and stopping.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Retransmission policy: how long one copy of a request waits for its answer, and
/// how many copies are sent before the device counts as unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    pub try_timeout: Duration,
    pub tries: u32,
}

/// The local address of a driver's UDP socket while connected, readable from outside
/// the device task (diagnostics; tests inject datagrams to it). Shared by every driver
/// made from the same settings.
#[derive(Debug, Clone, Default)]
pub struct LocalAddr(Arc<Mutex<Option<SocketAddr>>>);

impl LocalAddr {
    /// The bound address, `None` while disconnected.
    pub fn get(&self) -> Option<SocketAddr> {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn set(&self, addr: Option<SocketAddr>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = addr;
    }
}

/// A simulator's socket and serving task.
pub struct UdpSimulator {
    addr: SocketAddr,
    socket: Arc<UdpSocket>,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl UdpSimulator {
    /// Binds `listen` (the socket is ready when this returns).
    ///
    /// # Errors
    /// The bind error.
    pub async fn bind(listen: SocketAddr) -> io::Result<(Arc<UdpSocket>, SocketAddr)> {
        let socket = Arc::new(UdpSocket::bind(listen).await?);
        let addr = socket.local_addr()?;
        Ok((socket, addr))
    }

    /// Spawns `serve(socket, cancel)`, which must return once `cancel` fires.
    pub fn serve<F>(
        socket: Arc<UdpSocket>,
        addr: SocketAddr,
        serve: impl FnOnce(Arc<UdpSocket>, CancellationToken) -> F,
    ) -> UdpSimulator
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let cancel = CancellationToken::new();
        let task = tokio::spawn(serve(socket.clone(), cancel.clone()));
        UdpSimulator {
            addr,
            socket,
            cancel,
            task: Some(task),
        }
    }

    /// The address the device listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends raw bytes from the device's socket to `to` (garbage or unasked
    /// replies, for tests).
    ///
    /// # Errors
    /// The socket's send error.
    pub async fn inject(&self, to: SocketAddr, bytes: &[u8]) -> io::Result<usize> {
        self.socket.send_to(bytes, to).await
    }

    /// Stops serving and waits for the task; the socket closes with it.
    pub async fn stop(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for UdpSimulator {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}
