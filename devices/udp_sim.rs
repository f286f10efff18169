//! What every UDP device simulator shares: its bound socket, the task serving it,
//! raw injection for tests, and stopping (explicitly, or when dropped).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

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
