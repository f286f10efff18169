//! A panel's network path: a TCP proxy in front of the bus, one per panel slot, that
//! the soak can cut (the Wi-Fi drops: the client reconnects through it and resumes)
//! or hold down (new connections are accepted and dropped at once, as an unreachable
//! bus looks to a panel in a dead spot).
//!
//! It lives in the soak's process, so its sockets never count against the bus's file
//! descriptors; the bus sees one ordinary TCP connection per panel.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// One slot's proxy. Its accept loop and pumps end when the soak's `stop` token is
/// cancelled.
pub(super) struct SlotProxy {
    /// Where the slot's panel connects.
    pub addr: SocketAddr,
    down: Arc<AtomicBool>,
    /// The soak's stop token: every cut token is a child of it.
    root: CancellationToken,
    /// Cancelled to cut every current connection; replaced by a fresh one each cut.
    /// A std `Mutex`: it is only swapped, never held across an `.await`.
    cut: Arc<Mutex<CancellationToken>>,
}

impl SlotProxy {
    /// Binds a loopback port and forwards each connection to `bus`.
    ///
    /// # Errors
    /// The bind error.
    pub async fn start(bus: SocketAddr, stop: CancellationToken) -> std::io::Result<SlotProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let down = Arc::new(AtomicBool::new(false));
        let cut = Arc::new(Mutex::new(stop.child_token()));
        let root = stop.clone();
        let (d, c) = (down.clone(), cut.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    // The soak is over: stop accepting (current pumps end with `stop`).
                    _ = stop.cancelled() => return,
                    a = listener.accept() => a,
                };
                let Ok((inbound, _)) = accepted else { continue };
                if d.load(Ordering::SeqCst) {
                    // Down: the panel's connection opens and dies at once.
                    drop(inbound);
                    continue;
                }
                let token = c.lock().unwrap_or_else(PoisonError::into_inner).clone();
                tokio::spawn(pump(inbound, bus, token));
            }
        });
        Ok(SlotProxy {
            addr,
            down,
            root,
            cut,
        })
    }

    /// Drops every current connection (neither side gets a goodbye).
    pub fn cut(&self) {
        let mut token = self.cut.lock().unwrap_or_else(PoisonError::into_inner);
        token.cancel();
        // A child of the soak's token, not of the cancelled one (which would be born
        // cancelled): later connections live until the next cut or the soak's end.
        *token = self.root.child_token();
    }

    /// Refuses new connections while `down`.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }
}

/// Copies both ways until either side closes or the connection is cut.
async fn pump(mut inbound: TcpStream, bus: SocketAddr, cut: CancellationToken) {
    let Ok(mut outbound) = TcpStream::connect(bus).await else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    tokio::select! {
        // Cut (or the soak ended): both sockets are dropped here, unflushed.
        _ = cut.cancelled() => {}
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
    }
}
