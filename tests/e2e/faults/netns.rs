//! Network namespaces for the fault tests: a [`Lab`] is one bus namespace and any
//! number of [`Host`]s, each in its own namespace and joined to the bus namespace by
//! one veth pair, the link the test cuts or impairs.
//!
//! ```text
//!   bus namespace (the bus, the publisher, the checker: 127.0.0.1 and 198.18.N.1)
//!     ├── veth hN 198.18.N.1/24  <══ link N ══>  veth "uplink" 198.18.N.2 ── host N
//!     └── ...                                       (a panel, a device simulator)
//! ```
//!
//! Code runs "inside" a namespace on a [`NsRuntime`]: a thread that entered the
//! namespace with `setns(2)` and drives a current-thread tokio runtime. Every socket
//! opened by a task spawned there belongs to that namespace, so the real
//! `avbus::client::Client` (or simulator, or bus) is used unchanged; handles such as a
//! `Client` are then used from the test's own runtime (they only talk over channels).
//!
//! Nothing leaves the namespaces: the root namespace gets no address or route, and
//! the addresses (198.18.0.0/15, reserved for benchmarking network devices) exist
//! only inside them, so parallel tests (and other processes) never collide. Names are
//! `avbf-<pid>-<n>-<role>`; each namespace is deleted on drop (also when a test
//! fails), and namespaces left by a killed test process are removed by the next one.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::thread::JoinHandle;

use tokio::sync::oneshot;

/// Prefix of every namespace this harness creates.
const PREFIX: &str = "avbf";
/// A host's end of its link (the name is the same in every host namespace).
pub const HOST_IF: &str = "uplink";

/// Runs `program args`, returning its stderr as the error when it fails.
pub fn run(program: &str, args: &[&str]) -> io::Result<()> {
    let out = Command::new(program).args(args).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Why namespaces cannot be used here, or `None` when they can (checked once, by
/// creating and deleting one).
pub fn unavailable() -> Option<&'static str> {
    static WHY: OnceLock<Option<String>> = OnceLock::new();
    WHY.get_or_init(|| {
        sweep_stale();
        let probe = format!("{PREFIX}-{}-probe", std::process::id());
        match run("ip", &["netns", "add", &probe]) {
            Ok(()) => {
                let _ = run("ip", &["netns", "del", &probe]);
                None
            }
            Err(e) => Some(format!("needs CAP_NET_ADMIN and iproute2 ({e})")),
        }
    })
    .as_deref()
}

/// Removes namespaces of this harness whose process is gone (a test killed before
/// its drops ran).
fn sweep_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let mut parts = name.split('-');
        if parts.next() != Some(PREFIX) {
            continue;
        }
        let Some(pid) = parts.next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = run("ip", &["netns", "del", name]);
        }
    }
}

/// A named network namespace, deleted on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `avbf-<pid>-<n>-<role>` with its loopback up.
    pub fn new(role: &str) -> io::Result<Netns> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}-{}-{n}-{role}", std::process::id());
        run("ip", &["netns", "add", &name])?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name (for `ip netns exec`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <ns> ARGS...`.
    pub fn ip(&self, args: &[&str]) -> io::Result<()> {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// `ip netns exec <ns> PROGRAM ARGS...`.
    pub fn exec(&self, program: &str, args: &[&str]) -> io::Result<()> {
        let mut all = vec!["netns", "exec", &self.name, program];
        all.extend_from_slice(args);
        run("ip", &all)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace also deletes the veth ends inside it (and so their
        // peers).
        if let Err(e) = run("ip", &["netns", "del", &self.name]) {
            eprintln!("faults: could not delete namespace {}: {e}", self.name);
        }
    }
}

/// A thread inside a namespace driving a current-thread tokio runtime; tasks spawned
/// through it open their sockets in that namespace. Stopped (and its tasks dropped)
/// on drop.
pub struct NsRuntime {
    handle: tokio::runtime::Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl NsRuntime {
    /// Starts the thread in `ns`.
    pub fn start(ns: &Netns) -> io::Result<NsRuntime> {
        let file = std::fs::File::open(format!("/run/netns/{}", ns.name))?;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("ns-{}", ns.name))
            .spawn(move || {
                // SAFETY: a plain system call on a descriptor we own; this thread is ours,
                // and it enters the namespace before it creates any socket.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    let _ = ready_tx.send(Err(io::Error::last_os_error()));
                    return;
                }
                drop(file);
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(rt.handle().clone()));
                rt.block_on(async {
                    let _ = stop_rx.await;
                });
            })?;
        let handle = ready_rx
            .recv()
            .map_err(|_| io::Error::other("namespace thread ended"))??;
        Ok(NsRuntime {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Runs `fut` inside the namespace; resolves with its output.
    pub async fn run<F>(&self, fut: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle
            .spawn(fut)
            .await
            .expect("a task in a namespace ended without an answer")
    }
}

impl Drop for NsRuntime {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One test's namespaces: the bus's, and a host per faulted machine.
pub struct Lab {
    /// Runs code in the bus's namespace (declared before `ns`: stops first).
    pub bus: NsRuntime,
    /// The bus's namespace.
    pub ns: Netns,
    hosts: u8,
}

impl Lab {
    /// A bus namespace, or why there cannot be one.
    pub fn new() -> Result<Lab, String> {
        if let Some(why) = unavailable() {
            return Err(why.to_string());
        }
        let ns = Netns::new("bus").map_err(|e| e.to_string())?;
        let bus = NsRuntime::start(&ns).map_err(|e| e.to_string())?;
        Ok(Lab { bus, ns, hosts: 0 })
    }

    /// A new host namespace linked to the bus's by its own veth pair.
    pub fn host(&mut self, role: &str) -> io::Result<Host> {
        self.hosts += 1;
        let n = self.hosts;
        let ns = Netns::new(role)?;
        let bus_if = format!("h{n}");
        // Both ends are created directly inside their namespaces: no name ever
        // appears in the root namespace.
        run(
            "ip",
            &[
                "link",
                "add",
                &bus_if,
                "netns",
                &self.ns.name,
                "type",
                "veth",
                "peer",
                "name",
                HOST_IF,
                "netns",
                &ns.name,
            ],
        )?;
        let bus_addr = Ipv4Addr::new(198, 18, n, 1);
        let addr = Ipv4Addr::new(198, 18, n, 2);
        self.ns
            .ip(&["addr", "add", &format!("{bus_addr}/24"), "dev", &bus_if])?;
        self.ns.ip(&["link", "set", &bus_if, "up"])?;
        ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", HOST_IF])?;
        ns.ip(&["link", "set", HOST_IF, "up"])?;
        let rt = NsRuntime::start(&ns)?;
        Ok(Host {
            rt,
            ns,
            bus_ns: self.ns.name.clone(),
            bus_if,
            addr: IpAddr::V4(addr),
            bus_addr: IpAddr::V4(bus_addr),
        })
    }
}

/// A machine behind its own link to the bus's namespace.
pub struct Host {
    /// Runs code on this host (declared before `ns`: stops first).
    pub rt: NsRuntime,
    /// The host's namespace.
    pub ns: Netns,
    bus_ns: String,
    bus_if: String,
    /// The host's address.
    pub addr: IpAddr,
    /// The bus's address as seen from this host.
    pub bus_addr: IpAddr,
}

impl Host {
    /// Cuts the link: the bus's end goes down, so everything either side sends is
    /// lost without an answer (no reset, no "unreachable" for the host), as when a
    /// panel's Wi-Fi or a device's cable goes away.
    pub fn partition(&self) -> io::Result<()> {
        run(
            "ip",
            &["-n", &self.bus_ns, "link", "set", &self.bus_if, "down"],
        )
    }

    /// Restores the link.
    pub fn heal(&self) -> io::Result<()> {
        run(
            "ip",
            &["-n", &self.bus_ns, "link", "set", &self.bus_if, "up"],
        )
    }
}
