//! The adapter kit: what an integrator implements to add a device ([`Driver`]), and
//! the runtime that owns everything else ([`Host`]).
//!
//! A driver speaks one device's protocol: connect, read the full state, carry out a
//! command, report what changed. The runtime, not each driver, owns:
//!
//! * **reconnection** with exponential backoff and jitter ([`Backoff`]), and a full
//!   state pull after every (re)connect;
//! * **polling** on the driver's schedule, and unsolicited changes from devices that
//!   push them ([`Driver::next_event`]);
//! * **reachability**: the device is `offline` on the bus until connected, and again
//!   the moment the link fails;
//! * **commands one at a time**, each within its deadline; a queued `set` is
//!   **superseded** by a newer `set` of the same control (a dragged slider sends the
//!   newest value, not every value), the older one answered `ok` with
//!   `{"superseded": true}`;
//! * a **watchdog**: a connect, poll or command that overruns its deadline is
//!   abandoned, the link is treated as broken and re-established;
//! * **containment**: each device runs in its own task; a panic is caught at the task
//!   boundary, the device goes offline and restarts with backoff, and the bus and the
//!   other devices carry on.
//!
//! `pending` marks (a command on its way) are the bus's: it sets them when it forwards
//! a `set` and clears them when the runtime answers, after the confirmed state has
//! been published.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::client::{Client, IncomingCommand};
use crate::model::{DeviceDescriptor, Quality};
use crate::protocol::{now_ms, CommandOp, ErrorCode};
use crate::value::Value;

/// State changes a driver reports: `(control name, value)`.
pub type Changes = Vec<(String, Value)>;

/// Commands buffered per device before further ones are answered `busy`.
const DEVICE_QUEUE: usize = 256;

/// Why the device could not be reached or understood. Any of these ends the
/// connection: the runtime marks the device offline and reconnects with backoff.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DeviceError {
    #[error("unreachable: {0}")]
    Unreachable(String),
    #[error("authentication failed: {0}")]
    Auth(String),
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// A command refused or failed by the device, answered to the panel as is.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct CommandFailure {
    pub code: ErrorCode,
    pub message: String,
}

impl CommandFailure {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> CommandFailure {
        CommandFailure {
            code,
            message: message.into(),
        }
    }
}

/// A command for the device, already checked by the bus against the descriptor.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceCommand {
    /// The control's name (the last topic level).
    pub control: String,
    pub op: CommandOp,
    /// The normalised value (`set`) or the arguments (`call`).
    pub value: Value,
    /// When the panel stops waiting (ms since the Unix epoch); the runtime abandons
    /// the command then, so a driver may use it to size its own waits.
    pub deadline_ms: u64,
}

/// How often and how patiently the runtime talks to a device.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Full state poll interval (devices that push changes may poll rarely).
    pub poll: Duration,
    /// Longest a connect (including login) may take.
    pub connect: Duration,
    /// Longest a poll may take.
    pub poll_timeout: Duration,
    /// First reconnect delay; doubles up to `backoff_max`, ±50 % jitter.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            poll: Duration::from_secs(5),
            connect: Duration::from_secs(5),
            poll_timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
        }
    }
}

/// What an integrator implements for a device. Futures must be `Send`; blocking
/// work goes through `tokio::task::spawn_blocking`.
pub trait Driver: Send + 'static {
    /// The device: room, name, class, driver, typed controls.
    fn descriptor(&self) -> DeviceDescriptor;

    /// How often to poll and how long to wait.
    fn timing(&self) -> Timing {
        Timing::default()
    }

    /// Opens the link to the device (and logs in).
    fn connect(&mut self) -> impl Future<Output = Result<(), DeviceError>> + Send;

    /// Reads the device's full state.
    fn poll(&mut self) -> impl Future<Output = Result<Changes, DeviceError>> + Send;

    /// Carries out one command; returns the state it confirmed (published before the
    /// panel gets `ok`). `Err(DeviceError)` means the link broke.
    fn execute(
        &mut self,
        command: &DeviceCommand,
    ) -> impl Future<Output = Result<Result<Changes, CommandFailure>, DeviceError>> + Send;

    /// Waits for a change the device pushes by itself. Must be cancel-safe: the
    /// runtime drops this future whenever something else happens first. Devices that
    /// push nothing keep the default, which never resolves.
    fn next_event(&mut self) -> impl Future<Output = Result<Changes, DeviceError>> + Send {
        std::future::pending()
    }

    /// Closes the link (after an error, or at shutdown).
    fn disconnect(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// Exponential backoff with ±50 % jitter, so that devices (and panels) that lost
/// their link together do not come back together.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
    rng: fastrand::Rng,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff::with_rng(min, max, fastrand::Rng::new())
    }

    /// With a given random source (tests pass a seeded one).
    pub fn with_rng(min: Duration, max: Duration, rng: fastrand::Rng) -> Backoff {
        Backoff {
            min,
            max,
            attempt: 0,
            rng,
        }
    }

    /// The next delay: `min × 2^attempt`, capped at `max`, times 0.5..1.5.
    pub fn next_delay(&mut self) -> Duration {
        let base = self
            .min
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        base.mul_f64(0.5 + self.rng.f64())
    }

    /// Back to the first delay (after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Commands waiting for the device, with `set` superseding.
#[derive(Default)]
struct Queue {
    items: VecDeque<IncomingCommand>,
}

impl Queue {
    /// Adds a command; returns the queued one it supersedes, if any.
    fn push(&mut self, cmd: IncomingCommand) -> Option<IncomingCommand> {
        if cmd.command.op == CommandOp::Set {
            if let Some(i) = self.items.iter().position(|q| {
                q.command.op == CommandOp::Set && q.command.topic == cmd.command.topic
            }) {
                return Some(std::mem::replace(&mut self.items[i], cmd));
            }
        }
        self.items.push_back(cmd);
        None
    }
}

/// Hosts drivers on one bus connection: dispatches the bus's commands to the
/// device they are for, and supervises each device's task.
#[derive(Clone)]
pub struct Host {
    client: Client,
    routes: Arc<Mutex<HashMap<String, mpsc::Sender<IncomingCommand>>>>,
    /// Fires when the bus connection is re-established: every device republishes
    /// its full state (the bus marks values stale until then).
    refresh: broadcast::Sender<()>,
}

impl Host {
    /// Starts dispatching `client`'s commands (take no other `commands()` receiver
    /// from this client).
    pub async fn start(client: Client) -> Host {
        let routes: Arc<Mutex<HashMap<String, mpsc::Sender<IncomingCommand>>>> = Arc::default();
        let mut commands = client.commands().await;
        let r = routes.clone();
        tokio::spawn(async move {
            while let Some(cmd) = commands.recv().await {
                let key = cmd
                    .command
                    .topic
                    .rsplit_once('/')
                    .map(|(k, _)| k.to_owned());
                let tx = key.and_then(|k| r.lock().ok()?.get(&k).cloned());
                match tx {
                    Some(tx) => {
                        if let Err(e) = tx.try_send(cmd) {
                            let cmd = match e {
                                mpsc::error::TrySendError::Full(c)
                                | mpsc::error::TrySendError::Closed(c) => c,
                            };
                            cmd.fail(ErrorCode::Busy, "the device's command queue is full")
                                .await;
                        }
                    }
                    None => {
                        cmd.fail(ErrorCode::DeviceOffline, "no driver runs this device")
                            .await
                    }
                }
            }
        });
        let (refresh, _) = broadcast::channel(4);
        let mut events = client.events();
        let tx = refresh.clone();
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(crate::client::ConnectionEvent::Connected { .. }) => {
                        let _ = tx.send(());
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Host {
            client,
            routes,
            refresh,
        }
    }

    /// The bus connection.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Runs a device made by `make` until `cancel`, restarting it (a fresh driver
    /// from `make`) with backoff after a panic.
    pub fn spawn<D, F>(&self, make: F, cancel: CancellationToken) -> JoinHandle<()>
    where
        D: Driver,
        F: Fn() -> D + Send + 'static,
    {
        let host = self.clone();
        tokio::spawn(async move {
            let first = make();
            let desc = first.descriptor();
            let key = desc.key();
            let timing = first.timing();
            let (tx, mut rx) = mpsc::channel(DEVICE_QUEUE);
            if let Ok(mut r) = host.routes.lock() {
                r.insert(key.clone(), tx);
            }
            if let Err(e) = host.client.declare(desc, false).await {
                tracing::error!(device = %key, error = %e, "declare refused");
                return;
            }
            let mut backoff = Backoff::new(timing.backoff_min, timing.backoff_max);
            let mut driver = Some(first);
            loop {
                let d = driver.take().unwrap_or_else(&make);
                let client = host.client.clone();
                let child_cancel = cancel.clone();
                let refresh = host.refresh.subscribe();
                // The device runs in its own task so that a panic stays there; the
                // command receiver comes back when it ends normally.
                let task = tokio::spawn(async move {
                    let mut d = d;
                    let rx = run_device(&mut d, &client, rx, refresh, child_cancel).await;
                    d.disconnect().await;
                    rx
                });
                match task.await {
                    Ok(back) => {
                        if cancel.is_cancelled() {
                            let _ = host.client.set_online(&key, false).await;
                            return;
                        }
                        rx = back;
                    }
                    Err(e) => {
                        tracing::error!(device = %key, error = %e, "device task panicked: restarting");
                        let _ = host.client.set_online(&key, false).await;
                        let (tx, fresh) = mpsc::channel(DEVICE_QUEUE);
                        if let Ok(mut r) = host.routes.lock() {
                            r.insert(key.clone(), tx);
                        }
                        rx = fresh;
                        let delay = backoff.next_delay();
                        tokio::select! {
                            _ = cancel.cancelled() => return,
                            _ = tokio::time::sleep(delay) => {}
                        }
                    }
                }
            }
        })
    }
}

fn topic(key: &str, control: &str) -> String {
    format!("{key}/{control}")
}

/// The values last published for one device, so that a poll reporting the same
/// state publishes nothing (a poll every second must not flood every panel).
/// Cleared on every (re)connect and bus reconnect: the full state goes out again.
struct Published {
    values: HashMap<String, Value>,
    /// The device's `meter` controls: their values go out as telemetry (UDP, or
    /// straight to the hub in-process), never through the TCP state stream.
    meters: std::collections::HashSet<String>,
}

impl Published {
    fn new(desc: &DeviceDescriptor) -> Published {
        Published {
            values: HashMap::new(),
            meters: desc
                .controls
                .iter()
                .filter(|c| matches!(c.kind, crate::model::ControlKind::Meter { .. }))
                .map(|c| c.name.clone())
                .collect(),
        }
    }

    fn clear(&mut self) {
        self.values.clear();
    }
}

async fn publish(client: &Client, key: &str, last: &mut Published, changes: Changes) {
    let mut telemetry = Vec::new();
    for (control, value) in changes {
        if last.meters.contains(&control) {
            telemetry.push((topic(key, &control), value));
            continue;
        }
        if last.values.get(&control) == Some(&value) {
            continue;
        }
        last.values.insert(control.clone(), value.clone());
        if let Err(e) = client
            .publish_state(&topic(key, &control), value, Quality::Ok)
            .await
        {
            tracing::warn!(device = key, control, error = %e, "publish failed");
        }
    }
    if !telemetry.is_empty() {
        client.publish_telemetry(telemetry);
    }
}

/// Connects (with backoff) and serves the device until the link fails for good or
/// `cancel` fires; returns the command receiver.
async fn run_device<D: Driver>(
    d: &mut D,
    client: &Client,
    mut rx: mpsc::Receiver<IncomingCommand>,
    mut refresh: broadcast::Receiver<()>,
    cancel: CancellationToken,
) -> mpsc::Receiver<IncomingCommand> {
    let key = d.descriptor().key();
    let t = d.timing();
    let mut backoff = Backoff::new(t.backoff_min, t.backoff_max);
    loop {
        let connected = tokio::select! {
            _ = cancel.cancelled() => return rx,
            r = tokio::time::timeout(t.connect, d.connect()) => match r {
                Ok(r) => r,
                Err(_) => Err(DeviceError::Unreachable(format!("no connection within {:?}", t.connect))),
            },
        };
        let why = match connected {
            Ok(()) => {
                backoff.reset();
                tracing::info!(device = %key, "connected");
                match serve(d, client, &key, &mut rx, &mut refresh, &cancel).await {
                    None => return rx,
                    Some(why) => why,
                }
            }
            Err(e) => e,
        };
        let _ = client.set_online(&key, false).await;
        d.disconnect().await;
        let delay = backoff.next_delay();
        tracing::warn!(device = %key, error = %why, retry_in = ?delay, "device offline");
        // While offline the bus refuses commands itself (`device_offline`); any that
        // were already routed here are answered the same way.
        let until = tokio::time::sleep(delay);
        tokio::pin!(until);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return rx,
                _ = &mut until => break,
                Some(cmd) = rx.recv() => cmd.fail(ErrorCode::DeviceOffline, format!("{key} is reconnecting")).await,
            }
        }
    }
}

/// Serves a connected device. `None`: cancelled; `Some(error)`: the link failed.
async fn serve<D: Driver>(
    d: &mut D,
    client: &Client,
    key: &str,
    rx: &mut mpsc::Receiver<IncomingCommand>,
    refresh: &mut broadcast::Receiver<()>,
    cancel: &CancellationToken,
) -> Option<DeviceError> {
    let t = d.timing();
    let mut last = Published::new(&d.descriptor());
    // Read the full state first (it proves the link), then mark the device online —
    // the bus shows every control `stale` at that moment — then publish the state,
    // which turns each control `ok`. Panels never see an unconfirmed value as `ok`.
    let state = match tokio::time::timeout(t.poll_timeout, d.poll()).await {
        Ok(Ok(changes)) => changes,
        Ok(Err(e)) => return Some(e),
        Err(_) => return Some(DeviceError::Unreachable("first poll timed out".into())),
    };
    let _ = client.set_online(key, true).await;
    publish(client, key, &mut last, state).await;
    let mut queue = Queue::default();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + t.poll, t.poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Take everything already routed here, so that superseding sees it.
        while let Ok(cmd) = rx.try_recv() {
            supersede(&mut queue, cmd).await;
        }
        if let Some(cmd) = queue.items.pop_front() {
            if let Err(e) = execute(d, client, key, &mut last, cmd).await {
                return Some(e);
            }
            continue;
        }
        tokio::select! {
            _ = cancel.cancelled() => return None,
            Some(cmd) = rx.recv() => supersede(&mut queue, cmd).await,
            ev = d.next_event() => match ev {
                Ok(changes) => publish(client, key, &mut last, changes).await,
                Err(e) => return Some(e),
            },
            _ = tick.tick() => match tokio::time::timeout(t.poll_timeout, d.poll()).await {
                Ok(Ok(changes)) => publish(client, key, &mut last, changes).await,
                Ok(Err(e)) => return Some(e),
                Err(_) => return Some(DeviceError::Unreachable("poll timed out".into())),
            },
            // The bus connection came back: full state again, and online.
            Ok(()) = refresh.recv() => match tokio::time::timeout(t.poll_timeout, d.poll()).await {
                Ok(Ok(changes)) => {
                    let _ = client.set_online(key, true).await;
                    last.clear();
                    publish(client, key, &mut last, changes).await;
                }
                Ok(Err(e)) => return Some(e),
                Err(_) => return Some(DeviceError::Unreachable("poll timed out".into())),
            },
        }
    }
}

async fn supersede(queue: &mut Queue, cmd: IncomingCommand) {
    if let Some(old) = queue.push(cmd) {
        let result = Value::Map(vec![(Value::from("superseded"), Value::Boolean(true))]);
        old.ok(result).await;
    }
}

/// Runs one command within its deadline. `Err`: the link is broken.
async fn execute<D: Driver>(
    d: &mut D,
    client: &Client,
    key: &str,
    last: &mut Published,
    cmd: IncomingCommand,
) -> Result<(), DeviceError> {
    let c = &cmd.command;
    let control = c
        .topic
        .rsplit_once('/')
        .map_or(c.topic.as_str(), |(_, n)| n)
        .to_owned();
    let dc = DeviceCommand {
        control,
        op: c.op,
        value: c.value.clone(),
        deadline_ms: c.deadline,
    };
    let left = Duration::from_millis(c.deadline.saturating_sub(now_ms()));
    match tokio::time::timeout(left, d.execute(&dc)).await {
        Ok(Ok(Ok(changes))) => {
            publish(client, key, last, changes).await;
            cmd.ok(Value::Nil).await;
            Ok(())
        }
        Ok(Ok(Err(f))) => {
            cmd.fail(f.code, f.message).await;
            Ok(())
        }
        Ok(Err(e)) => {
            cmd.fail(ErrorCode::DeviceOffline, e.to_string()).await;
            Err(e)
        }
        Err(_) => {
            // The watchdog: the driver did not finish in time; its state is unknown.
            cmd.fail(
                ErrorCode::Timeout,
                format!("{key}: the device did not answer in time"),
            )
            .await;
            Err(DeviceError::Unreachable(
                "a command overran its deadline".into(),
            ))
        }
    }
}

#[cfg(test)]
#[path = "kit_tests.rs"]
mod tests;
