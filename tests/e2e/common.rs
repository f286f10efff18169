//! Shared pieces of the end-to-end tests: an in-process bus on port 0, a raw
//! protocol client for byte-level tests, a cuttable TCP proxy, and a test adapter.
//! Every wait is bounded by [`within`]; nothing sleeps.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use avbus::bus::{start, BusHandle};
use avbus::client::{Client, ClientOptions, IncomingCommand, SubEvent, Subscription};
use avbus::config::Config;
use avbus::model::{Access, ControlKind, ControlSpec, DeviceDescriptor, EnumOption, Quality};
use avbus::protocol::{frame, BusMsg, ClientMsg, Epoch, Resume, Role, Seq, SessionId, Update};
use avbus::value::Value;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

/// The longest any single wait in a test may take before it fails.
pub const LIMIT: Duration = Duration::from_secs(20);

/// Held by each test that loads the whole machine, so that they run one at a time:
/// the benchmark workloads (`avbus bench`, which count what their bus dropped), the
/// soak run (whose checks include queues and memory) and the panel in Chromium. In
/// test binaries of their own, which cargo ran one after another, they never met; in
/// one binary they share CI's two CPUs, and a benchmark's fanout subscribers, starved
/// while Chromium started, fell seconds behind and lost messages. Async tests hold it
/// across awaits (`HEAVY.lock().await`), sync ones take it with `blocking_lock`.
pub static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Awaits `fut`, failing the test if it takes longer than [`LIMIT`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(LIMIT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// A test configuration: loopback, port 0 (TCP and HTTP).
pub fn config() -> Config {
    let mut cfg = Config::default();
    cfg.listen.set_tcp(SocketAddr::from(([127, 0, 0, 1], 0)));
    cfg
}

pub async fn bus(cfg: Config) -> BusHandle {
    start(cfg).await.expect("bus starts")
}

pub fn opts(addr: &str, name: &str, role: Role) -> ClientOptions {
    let mut o = ClientOptions::tcp(addr, name).role(role);
    o.backoff_min = Duration::from_millis(20);
    o.backoff_max = Duration::from_millis(200);
    o
}

pub async fn client(bus: &BusHandle, name: &str, role: Role) -> Client {
    Client::connect(opts(&bus.tcp.to_string(), name, role))
        .await
        .expect("client connects")
}

/// Next subscription event, failing on timeout or end.
pub async fn next(sub: &mut Subscription) -> SubEvent {
    within("a subscription event", sub.next())
        .await
        .expect("subscription open")
}

/// Next update, skipping markers.
pub async fn next_update(sub: &mut Subscription) -> Update {
    loop {
        if let SubEvent::Update(u) = next(sub).await {
            return u;
        }
    }
}

/// Reads updates until one satisfies `pred`.
pub async fn until(sub: &mut Subscription, mut pred: impl FnMut(&Update) -> bool) -> Update {
    loop {
        let u = next_update(sub).await;
        if pred(&u) {
            return u;
        }
    }
}

/// Waits until the device `key` is online and each of `controls` shows a confirmed
/// value (quality `ok`); returns the panel's subscription to `key/#`, positioned
/// after that. The kit marks a device online before it publishes what it read, so
/// `online` alone does not say that the values are there. (Which controls a device
/// reports depends on its state: a projector in standby reports no input, so the
/// test names the ones it reads.)
pub async fn ready(panel: &Client, key: &str, controls: &[&str]) -> Subscription {
    let online = format!("{key}/online");
    let mut unconfirmed: std::collections::HashSet<String> =
        controls.iter().map(|c| format!("{key}/{c}")).collect();
    let mut sub = panel
        .subscribe(&[&format!("{key}/#")])
        .await
        .expect("subscribe to the device");
    let mut is_online = false;
    // The snapshot then live updates; a control is confirmed by its latest record.
    let mut confirmed = std::collections::HashSet::new();
    while !is_online || !unconfirmed.is_empty() {
        let u = next_update(&mut sub).await;
        if u.topic == online {
            is_online = u.value == Value::Boolean(true);
        } else if u.quality == Some(Quality::Ok) && !u.value.is_nil() {
            if unconfirmed.remove(&u.topic) {
                confirmed.insert(u.topic);
            }
        } else if confirmed.remove(&u.topic) {
            unconfirmed.insert(u.topic);
        }
    }
    sub
}

/// Collects the snapshot (until `Synced`).
pub async fn snapshot(sub: &mut Subscription) -> Vec<Update> {
    let mut out = Vec::new();
    loop {
        match next(sub).await {
            SubEvent::Update(u) => out.push(u),
            SubEvent::Synced { .. } => return out,
            other => panic!("unexpected {other:?} in snapshot"),
        }
    }
}

/// Waits for the client's next `Disconnected` event.
pub async fn disconnected(
    events: &mut tokio::sync::broadcast::Receiver<avbus::client::ConnectionEvent>,
) -> String {
    within("the disconnect event", async {
        loop {
            if let Ok(avbus::client::ConnectionEvent::Disconnected { reason }) = events.recv().await
            {
                return reason;
            }
        }
    })
    .await
}

// ----- raw protocol client ------------------------------------------------------

/// A client that speaks the protocol frame by frame, for byte-level tests.
pub struct Raw {
    pub io: Framed<TcpStream, LengthDelimitedCodec>,
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Raw {
        let s = TcpStream::connect(addr).await.expect("connect");
        Raw {
            io: Framed::new(s, avbus::bus::codec(16 << 20)),
        }
    }

    pub async fn send(&mut self, msg: &ClientMsg) {
        let f = frame(msg);
        self.io.send(f.slice(4..)).await.expect("send");
    }

    /// Sends bytes as they are (no framing added).
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.io.get_mut().write_all(bytes).await.expect("send raw");
    }

    /// The next message, or `None` when the bus closed the connection.
    pub async fn recv(&mut self) -> Option<BusMsg> {
        match within("a frame from the bus", self.io.next()).await {
            None => None,
            Some(Err(_)) => None,
            Some(Ok(b)) => Some(avbus::protocol::decode_bus(&b).expect("bus frames decode")),
        }
    }

    /// Reads until `pred` matches (failing on close).
    pub async fn recv_until(&mut self, mut pred: impl FnMut(&BusMsg) -> bool) -> BusMsg {
        loop {
            let m = self.recv().await.expect("connection open");
            if pred(&m) {
                return m;
            }
        }
    }

    /// Reads until the bus closes the connection; returns what came before.
    pub async fn until_closed(&mut self) -> Vec<BusMsg> {
        let mut out = Vec::new();
        while let Some(m) = self.recv().await {
            out.push(m);
        }
        out
    }

    pub async fn hello(
        &mut self,
        name: &str,
        resume: Option<Resume>,
    ) -> (SessionId, Epoch, Seq, bool) {
        self.send(&ClientMsg::Hello {
            v: avbus::protocol::PROTOCOL_VERSION,
            name: name.into(),
            role: Role::Panel,
            credentials: Value::Nil,
            resume,
        })
        .await;
        match self.recv().await {
            Some(BusMsg::Welcome {
                session,
                epoch,
                seq,
                resumed,
                ..
            }) => (session, epoch, seq, resumed),
            other => panic!("expected welcome, got {other:?}"),
        }
    }
}

// ----- cuttable proxy -------------------------------------------------------------

/// A TCP proxy in front of the bus whose connections the test can cut, and which
/// can refuse new ones, to simulate a dropped Wi-Fi link.
pub struct Proxy {
    pub addr: SocketAddr,
    down: Arc<AtomicBool>,
    cut: Arc<Notify>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        let down = Arc::new(AtomicBool::new(false));
        let cut = Arc::new(Notify::new());
        let (d, c) = (down.clone(), cut.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if d.load(Ordering::SeqCst) {
                    continue;
                }
                let c = c.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = c.notified() => {}
                    }
                });
            }
        });
        Proxy { addr, down, cut }
    }

    /// Drops every current connection.
    pub fn cut(&self) {
        self.cut.notify_waiters();
    }

    /// Refuses (accepts and drops) new connections while `down`.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }
}

// ----- a test adapter ---------------------------------------------------------------

/// The test device `lab/dev`: every kind of control.
pub fn lab_device() -> DeviceDescriptor {
    let opt = |id: &str| EnumOption {
        id: id.into(),
        label: id.to_uppercase(),
    };
    DeviceDescriptor {
        room: "lab".into(),
        name: "dev".into(),
        label: "Lab device".into(),
        class: "virtual".into(),
        driver: "test".into(),
        controls: vec![
            ControlSpec::new("power", ControlKind::Bool),
            ControlSpec::new(
                "level",
                ControlKind::Int {
                    min: 0,
                    max: 100,
                    step: None,
                    unit: "%".into(),
                },
            ),
            ControlSpec::new(
                "mode",
                ControlKind::Enum {
                    options: vec![opt("auto"), opt("manual")],
                },
            ),
            ControlSpec::new("name", ControlKind::String { max_len: 8 }),
            ControlSpec::new(
                "hours",
                ControlKind::Int {
                    min: 0,
                    max: 1_000_000,
                    step: None,
                    unit: "h".into(),
                },
            )
            .access(Access::Read),
            ControlSpec::new("go", ControlKind::Trigger),
            ControlSpec::new("move", ControlKind::Momentary),
            // The adapter never answers commands for this one.
            ControlSpec::new("slow", ControlKind::Bool),
        ],
    }
}

/// What the test adapter saw: every command, and the unanswered `slow` ones.
pub struct Seen {
    pub commands: mpsc::UnboundedReceiver<avbus::protocol::Command>,
    pub held: mpsc::UnboundedReceiver<IncomingCommand>,
}

impl Seen {
    pub async fn recv(&mut self) -> Option<avbus::protocol::Command> {
        self.commands.recv().await
    }

    pub fn try_recv(&mut self) -> Result<avbus::protocol::Command, mpsc::error::TryRecvError> {
        self.commands.try_recv()
    }
}

/// Runs an adapter for `lab/dev` that applies every `set` (publishing the value,
/// then answering ok), answers `go` with its arguments, holds `slow` commands
/// unanswered (for the test to answer or let time out), and reports every command.
pub async fn lab_adapter(bus: &BusHandle) -> (Client, Seen) {
    let adapter = client(bus, "lab-adapter", Role::Adapter).await;
    let mut commands = adapter.commands().await;
    adapter.declare(lab_device(), true).await.expect("declare");
    adapter
        .publish_state("lab/dev/hours", Value::from(42), Quality::Ok)
        .await
        .expect("publish");
    // The publish is fire-and-forget; a read on the same connection comes back only
    // after the bus applied it, so every test sees the value from the start.
    adapter.get("lab/dev/hours").await.expect("get");
    let (seen_tx, seen_rx) = mpsc::unbounded_channel();
    let (held_tx, held_rx) = mpsc::unbounded_channel();
    let a = adapter.clone();
    tokio::spawn(async move {
        while let Some(cmd) = commands.recv().await {
            let _ = seen_tx.send(cmd.command.clone());
            let c = cmd.command.clone();
            match c.topic.as_str() {
                "lab/dev/slow" => {
                    let _ = held_tx.send(cmd);
                }
                "lab/dev/go" => cmd.ok(c.value.clone()).await,
                topic => {
                    let _ = a.publish_state(topic, c.value.clone(), Quality::Ok).await;
                    cmd.ok(Value::Nil).await;
                }
            }
        }
    });
    (
        adapter,
        Seen {
            commands: seen_rx,
            held: held_rx,
        },
    )
}

/// The `[[device]]` entry of the X32 console `hall/console` at `console`, polled only
/// every ten minutes (so every change a test sees arrived as a push).
pub fn x32_entry(console: SocketAddr) -> avbus::config::DeviceConfig {
    avbus::config::DeviceConfig {
        room: "hall".into(),
        name: "console".into(),
        driver: "x32-osc".into(),
        label: None,
        host: Some(console.ip().to_string()),
        port: Some(console.port()),
        password: None,
        poll_ms: Some(600_000),
    }
}

/// A directory under the system's temp dir, removed (with its contents) on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "avbus-{name}-{}-{n}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
