//! A cuttable network path: a TCP proxy that the soak can cut (both sides dropped
//! without a goodbye) or hold down (new connections are accepted and dropped at
//! once). One stands in front of the bus for each panel slot (the panel's Wi-Fi: it
//! drops, the client reconnects through it and resumes) and one in front of each
//! switcher simulator (the device's network: the adapter marks it offline and
//! reconnects with backoff).
//!
//! Links live in the soak's process, so their sockets never count against the bus's
//! file descriptors; the bus sees its ordinary connections.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Pause after a failed `accept`.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// One link. Its accept loop and pumps end when the token given to [`Link::start`]
/// is cancelled (the soak's teardown, after the checks).
pub(super) struct Link {
    /// Where its client connects.
    pub addr: SocketAddr,
    down: Arc<AtomicBool>,
    /// The soak's stop token: every cut token is a child of it.
    root: CancellationToken,
    /// Cancelled to cut every current connection; replaced by a fresh one each cut.
    /// A std `Mutex`: it is only swapped, never held across an `.await`.
    cut: Arc<Mutex<CancellationToken>>,
}

impl Link {
    /// Binds a loopback port and forwards each connection to `target`.
    ///
    /// # Errors
    /// The bind error.
    pub async fn start(target: SocketAddr, stop: CancellationToken) -> std::io::Result<Link> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let down = Arc::new(AtomicBool::new(false));
        let cut = Arc::new(Mutex::new(stop.child_token()));
        let root = stop.clone();
        let (d, c) = (down.clone(), cut.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    // The soak is over: stop accepting (current pumps end with it).
                    _ = stop.cancelled() => return,
                    a = listener.accept() => a,
                };
                let Ok((inbound, _)) = accepted else {
                    // Out of descriptors, most likely: try again shortly rather than
                    // spin (the soak's own limits keep this from lasting).
                    tokio::time::sleep(ACCEPT_RETRY).await;
                    continue;
                };
                if d.load(Ordering::SeqCst) {
                    // Down: the connection opens and dies at once.
                    drop(inbound);
                    continue;
                }
                let token = c.lock().unwrap_or_else(PoisonError::into_inner).clone();
                tokio::spawn(pump(inbound, target, token));
            }
        });
        Ok(Link {
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
async fn pump(mut inbound: TcpStream, target: SocketAddr, cut: CancellationToken) {
    let Ok(mut outbound) = TcpStream::connect(target).await else {
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
