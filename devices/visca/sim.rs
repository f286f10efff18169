//! A strict VISCA-over-IP PTZ camera on a real UDP socket, to test the VISCA adapter
//! (retransmission, sequence recovery, slow power) without hardware. After the Sony
//! manuals cited in [`super`]:
//! * **Sequence numbers** per controller address: a new controller, or one that sent
//!   `RESET` (answered `01` as a control reply), starts at 0 or 1, then counts up by one.
//!   A repeat of a performed message (its reply was lost) gets control `ERROR 0F 01` and
//!   is not performed again; a repeat of one that got a VISCA error is evaluated again;
//!   any other number gets `0F 01`.
//! * **Commands** get an ACK naming their socket (1 or 2), then a completion: at once for
//!   continuous drives and preset set/reset, on arrival for moves to a position, home,
//!   zoom-to and recall, after the power time for power. With both sockets busy a
//!   command gets "buffer full"; a motion taken over by a later command completes then;
//!   `81 2y FF` cancels socket `y`. Inquiries are answered at once, without ACK.
//! * **Errors**: syntax (`90 60 02`) for malformed or out-of-range commands, "not
//!   executable" (`90 6y 41`) in standby or while switching power, control `0F 02` for
//!   a payload that does not match its type, an unknown type or a reply sent to the
//!   camera. Too short, too long or mis-sized datagrams are dropped and counted.
//! * **Motion** integrates over time at the configured speeds (pan/tilt scaled by the
//!   Sony speed table, zoom by `(p + 1) / 8`, standard = `p` 3), clamped to the ranges.
//!
//! One task owns the socket; the camera sits behind a std `Mutex` that nothing holds
//! across an `.await`, shared with [`Sim::state`] and the [`Panel`] (the IR remote).

use std::io;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::net::UdpSocket;

use crate::devices::udp::UdpSimulator;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::proto::{Command, Power, PresetAction};
use camera::{Camera, NotExecutable};

mod camera;

/// Command sockets: the camera executes at most two commands at a time (the manuals'
/// "two sockets"); a third gets "buffer full".
pub const SOCKETS: usize = 2;
/// Receive buffer: larger than any valid datagram (24 bytes), so an oversized one is seen
/// as too long rather than truncated into something valid.
const RECV_BUF: usize = 2048;
/// Datagrams taken per wake-up before replies go out, so a flood cannot hold replies
/// (and the stop signal) back for long.
const RECV_BATCH: usize = 32;

/// What the simulated camera is like.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Pan limits in VISCA units (SRG-300 series: `DE00`..=`2200`, ±170°).
    pub pan_range: RangeInclusive<i16>,
    /// Tilt limits (`FC00`..=`1200`, -20°..=+90°, image flip off).
    pub tilt_range: RangeInclusive<i16>,
    /// Zoom limits (0 wide ..= `4000` optical tele).
    pub zoom_range: RangeInclusive<u16>,
    /// Pan units per second at the fastest speed byte.
    pub pan_speed: f64,
    /// Tilt units per second at the fastest speed byte.
    pub tilt_speed: f64,
    /// Zoom units per second at the fastest variable speed (also zoom-to and recall).
    pub zoom_speed: f64,
    /// Number of presets (numbers 0..presets; at most 255, as `FF` is no number).
    pub presets: usize,
    /// From power-on command to completion; commands meanwhile are not executable.
    pub power_on_time: Duration,
    /// From standby command to completion.
    pub power_off_time: Duration,
    /// Delay before every reply (ACK, error, inquiry answer).
    pub ack_delay: Duration,
    /// Drop every Nth received datagram (counting all), as if lost on the way in; `Some(0)`
    /// drops nothing.
    pub drop_every: Option<u32>,
    /// Whether the camera starts powered on (else in standby).
    pub powered: bool,
}

impl Default for SimConfig {
    /// An SRG-300-like camera: real ranges and speeds (51.2 units per degree), 16 presets.
    fn default() -> Self {
        SimConfig {
            pan_range: -0x2200..=0x2200,
            tilt_range: -0x0400..=0x1200,
            zoom_range: 0..=0x4000,
            pan_speed: 101.0 * 51.2,
            tilt_speed: 91.0 * 51.2,
            zoom_speed: f64::from(0x4000) / 2.5,
            presets: 16,
            power_on_time: Duration::from_secs(6),
            power_off_time: Duration::from_secs(2),
            ack_delay: Duration::from_millis(5),
            drop_every: None,
            powered: true,
        }
    }
}

impl SimConfig {
    /// The default camera made fast for tests: motion about 50 times faster, power in
    /// tens of milliseconds, replies without delay.
    pub fn fast() -> Self {
        SimConfig {
            pan_speed: 250_000.0,
            tilt_speed: 250_000.0,
            zoom_speed: 250_000.0,
            power_on_time: Duration::from_millis(60),
            power_off_time: Duration::from_millis(20),
            ack_delay: Duration::ZERO,
            ..SimConfig::default()
        }
    }
}

/// A snapshot of the camera.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimState {
    /// Power as inquiries report it (it changes when a switch completes).
    pub power: Power,
    /// The power being switched to, while switching.
    pub switching: Option<Power>,
    pub pan: i16,
    pub tilt: i16,
    pub zoom: u16,
    /// Whether any axis is moving.
    pub moving: bool,
    /// Command sockets holding a command.
    pub busy_sockets: usize,
    /// Datagrams received, dropped by [`SimConfig::drop_every`], and ignored as garbage.
    pub received: u64,
    pub dropped: u64,
    pub ignored: u64,
}

/// Why the [`Panel`] refused a button.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PanelError {
    #[error("the camera is in standby or switching power")]
    NotExecutable,
    #[error("no such preset, position or speed on this camera")]
    Invalid,
}

/// A simulated camera serving one UDP socket. Dropping it stops the task too.
pub struct Sim {
    net: UdpSimulator,
    shared: Arc<Shared>,
}

impl Sim {
    /// Binds `listen` (the socket is ready when this returns) and serves it.
    ///
    /// # Errors
    /// The socket's bind error.
    pub async fn start(listen: SocketAddr, cfg: SimConfig) -> io::Result<Sim> {
        let (socket, addr) = UdpSimulator::bind(listen).await?;
        let camera = Mutex::new(Camera::new(cfg, Instant::now()));
        let shared = Arc::new(Shared {
            camera,
            wake: Notify::new(),
        });
        let serving = shared.clone();
        let net = UdpSimulator::serve(socket, addr, |socket, cancel| run(socket, serving, cancel));
        Ok(Sim { net, shared })
    }

    /// The address the camera listens on.
    pub fn addr(&self) -> SocketAddr {
        self.net.addr()
    }

    /// The camera's IR remote; it outlives the socket harmlessly.
    pub fn panel(&self) -> Panel {
        Panel {
            shared: self.shared.clone(),
        }
    }

    /// The camera now.
    pub fn state(&self) -> SimState {
        self.shared.lock().snapshot(Instant::now())
    }

    /// Sends raw bytes from the camera's socket to `to` (e.g. a reply the controller
    /// never asked for).
    ///
    /// # Errors
    /// The socket's send error.
    pub async fn inject(&self, to: SocketAddr, bytes: &[u8]) -> io::Result<usize> {
        self.net.inject(to, bytes).await
    }

    /// Stops serving and closes the socket; a new [`Sim::start`] on the same address
    /// brings up a fresh camera.
    pub async fn stop(self) {
        self.net.stop().await;
    }
}

/// The camera's IR remote / joystick: changes made here show in inquiries, and moves
/// take over axes from network commands like any later command would.
#[derive(Clone)]
pub struct Panel {
    shared: Arc<Shared>,
}

impl Panel {
    /// Does what `command` would do from the network, without socket or replies.
    ///
    /// # Errors
    /// [`PanelError::Invalid`] for out-of-range values or a cancel,
    /// [`PanelError::NotExecutable`] in standby or while switching power.
    pub fn press(&self, command: Command) -> Result<(), PanelError> {
        let now = Instant::now();
        let mut camera = self.shared.lock();
        camera.advance(now);
        if !camera.valid(&command) || matches!(command, Command::Cancel(_)) {
            return Err(PanelError::Invalid);
        }
        let result = camera.perform(now, &command, None);
        camera.reap(now);
        drop(camera);
        // The task may need an earlier wake-up (an arrival, a power switch).
        self.shared.wake.notify_one();
        result
            .map(drop)
            .map_err(|NotExecutable| PanelError::NotExecutable)
    }

    /// Moves to preset `n`.
    ///
    /// # Errors
    /// As [`Panel::press`].
    pub fn recall(&self, n: u8) -> Result<(), PanelError> {
        self.press(Command::Preset(PresetAction::Recall, n))
    }
}

struct Shared {
    camera: Mutex<Camera>,
    /// Wakes the task after a [`Panel`] change.
    wake: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Camera> {
        // A panic elsewhere while holding the lock leaves a usable camera state.
        self.camera.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The socket task: receive, reply when replies are due, wake for arrivals and power.
async fn run(socket: Arc<UdpSocket>, shared: Arc<Shared>, cancel: CancellationToken) {
    let mut buf = vec![0u8; RECV_BUF];
    let mut ready = Vec::new();
    loop {
        let deadline = {
            let mut camera = shared.lock();
            camera.poll(Instant::now(), &mut ready);
            camera.next_deadline()
        };
        for (to, bytes) in ready.drain(..) {
            // A failed send is a lost datagram; the controller's retransmission covers it.
            if let Err(e) = socket.send_to(&bytes, to).await {
                tracing::debug!(%to, error = %e, "visca sim: send failed");
            }
        }
        tokio::select! {
            // `Sim::stop` or drop: the socket closes when the last handle goes.
            () = cancel.cancelled() => break,
            // A datagram from a controller (or garbage).
            received = socket.recv_from(&mut buf) => match received {
                Ok((n, from)) => {
                    let mut camera = shared.lock();
                    camera.on_datagram(Instant::now(), from, &buf[..n]);
                    // Take what is already waiting too, then reply to the whole batch.
                    for _ in 1..RECV_BATCH {
                        let Ok((n, from)) = socket.try_recv_from(&mut buf) else { break };
                        camera.on_datagram(Instant::now(), from, &buf[..n]);
                    }
                }
                Err(e) => tracing::debug!(error = %e, "visca sim: receive failed"),
            },
            // A reply is due, a move arrives, or a power switch completes.
            () = sleep_until(deadline) => {}
            // The panel changed something; recompute the deadline.
            () = shared.wake.notified() => {}
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
