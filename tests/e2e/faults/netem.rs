//! A userspace stand-in for `tc netem` (the kernels this harness runs on may lack
//! `sch_netem`): every IPv4 packet crossing a host's link, both ways, is handed to
//! this process by an iptables `NFQUEUE` rule in the host's namespace; a thread holds
//! each one for `delay ± jitter` (uniform), then lets it go, or drops it with
//! probability `loss`. Packets held for different times leave out of order, so
//! jitter reorders, as netem's does.
//!
//! Bounds: the kernel queue holds at most [`QUEUE_MAX`] packets awaiting a verdict,
//! those held here included; past that the kernel drops new ones (as a full netem
//! queue would), so this thread's heap never holds more than that.
//!
//! The thread waits in `ppoll` on the queue's socket (a packet arrived), an eventfd
//! (stop) and the due time of the earliest packet it holds, never on a fixed tick.

use std::collections::{BinaryHeap, HashSet};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::netns::{Host, HOST_IF};

/// Packets the kernel queues for this thread before dropping.
const QUEUE_MAX: u32 = 4096;
/// The queue number (namespaces have their own numbers).
const QUEUE_NUM: u16 = 0;
/// `NETLINK_NETFILTER`, the protocol of a queue's socket.
const NETLINK_NETFILTER: libc::c_int = 12;
/// Held while a queue is opened, so that the one new netfilter socket is its own.
static OPENING: Mutex<()> = Mutex::new(());

/// What to do to a link's packets (each direction on its own).
#[derive(Debug, Clone, Copy)]
pub struct Impairment {
    /// Probability that a packet is lost (0..1).
    pub loss: f64,
    /// Mean time a packet is held.
    pub delay: Duration,
    /// Each packet is held `delay ± jitter`, uniformly (never less than zero).
    pub jitter: Duration,
}

/// What the emulator did (read at any time).
#[derive(Debug, Default)]
pub struct Counts {
    /// Packets seen.
    pub seen: AtomicU64,
    /// Packets dropped on purpose.
    pub lost: AtomicU64,
    /// Packets released before one that arrived earlier.
    pub reordered: AtomicU64,
}

/// An impaired link; the impairment ends (held packets released) on drop.
pub struct Netem {
    counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
    /// Written once on stop, to wake the thread.
    wake: Arc<OwnedFd>,
    thread: Option<JoinHandle<io::Result<()>>>,
    ns: String,
}

struct Held {
    due: Instant,
    arrival: u64,
    msg: nfq::Message,
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        self.due == other.due
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Held {
    // Earliest due first out of the (max-)heap.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.due.cmp(&self.due)
    }
}

/// Why the emulator cannot run here, or `None` (iptables with NFQUEUE).
pub fn unavailable() -> Option<String> {
    match std::process::Command::new("iptables")
        .arg("--version")
        .output()
    {
        Ok(o) if o.status.success() => None,
        _ => Some("needs iptables (NFQUEUE) for loss and jitter: apt-get install iptables".into()),
    }
}

impl Netem {
    /// Impairs every packet on `host`'s link, with a random generator seeded by
    /// `seed` (printed by the tests, for a rerun).
    pub fn start(host: &Host, imp: Impairment, seed: u64) -> io::Result<Netem> {
        let counts = Arc::new(Counts::default());
        let stop = Arc::new(AtomicBool::new(false));
        // SAFETY: a new descriptor, owned from here on.
        let wake = match unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) } {
            -1 => return Err(io::Error::last_os_error()),
            fd => Arc::new(unsafe { OwnedFd::from_raw_fd(fd) }),
        };
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = {
            let (counts, stop, wake) = (counts.clone(), stop.clone(), wake.clone());
            let path = format!("/run/netns/{}", host.ns.name());
            std::thread::Builder::new()
                .name("netem".into())
                .spawn(move || -> io::Result<()> {
                    let queue = open_in(&path);
                    let (mut queue, fd) = match queue {
                        Ok(q) => {
                            let _ = ready_tx.send(Ok(()));
                            q
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(io::Error::new(e.kind(), e.to_string())));
                            return Err(e);
                        }
                    };
                    let fds = [fd, wake.as_raw_fd()];
                    pump(&mut queue, fds, imp, seed, &counts, &stop)
                })?
        };
        ready_rx
            .recv()
            .map_err(|_| io::Error::other("the netem thread ended"))??;
        // The queue is bound before any packet is sent to it.
        for (chain, dir) in [("INPUT", "-i"), ("OUTPUT", "-o")] {
            host.ns.exec(
                "iptables",
                &[
                    "-w",
                    "-A",
                    chain,
                    dir,
                    HOST_IF,
                    "-j",
                    "NFQUEUE",
                    "--queue-num",
                    "0",
                ],
            )?;
        }
        Ok(Netem {
            counts,
            stop,
            wake,
            thread: Some(thread),
            ns: host.ns.name().to_string(),
        })
    }

    /// What it did so far.
    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// Ends the impairment: removes the rules, releases what is held.
    pub fn stop(mut self) -> io::Result<()> {
        self.finish()
    }

    fn finish(&mut self) -> io::Result<()> {
        let mut result = Ok(());
        for (chain, dir) in [("INPUT", "-i"), ("OUTPUT", "-o")] {
            let r = super::netns::run(
                "ip",
                &[
                    "netns",
                    "exec",
                    &self.ns,
                    "iptables",
                    "-w",
                    "-D",
                    chain,
                    dir,
                    HOST_IF,
                    "-j",
                    "NFQUEUE",
                    "--queue-num",
                    "0",
                ],
            );
            result = result.and(r);
        }
        self.stop.store(true, Ordering::SeqCst);
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer to our eventfd.
        unsafe { libc::write(self.wake.as_raw_fd(), one.as_ptr().cast(), one.len()) };
        if let Some(t) = self.thread.take() {
            let r = t
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the netem thread panicked")));
            result = result.and(r);
        }
        result
    }
}

impl Drop for Netem {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.finish();
        }
    }
}

/// This process's netfilter netlink sockets (only queues open them here).
fn netfilter_sockets() -> io::Result<HashSet<RawFd>> {
    let opt = |fd: RawFd, name: libc::c_int| {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: reads one int into `v`; a descriptor that is not a socket fails.
        let r =
            unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, name, (&raw mut v).cast(), &mut len) };
        (r == 0).then_some(v)
    };
    let mut out = HashSet::new();
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let Ok(fd) = entry?.file_name().to_string_lossy().parse::<RawFd>() else {
            continue;
        };
        if opt(fd, libc::SO_DOMAIN) == Some(libc::AF_NETLINK)
            && opt(fd, libc::SO_PROTOCOL) == Some(NETLINK_NETFILTER)
        {
            out.insert(fd);
        }
    }
    Ok(out)
}

/// Opens and binds the queue from inside the namespace at `path`, with the
/// descriptor of its socket (the `nfq` crate does not expose it; it is the one
/// netfilter socket that appears while the queue opens).
fn open_in(path: &str) -> io::Result<(nfq::Queue, RawFd)> {
    let file = std::fs::File::open(path)?;
    // SAFETY: changes only this (our own) thread's network namespace.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let (mut q, fd) = {
        let _one_at_a_time = OPENING.lock().unwrap_or_else(|p| p.into_inner());
        let before = netfilter_sockets()?;
        let q = nfq::Queue::open()?;
        let new: Vec<RawFd> = netfilter_sockets()?.difference(&before).copied().collect();
        match new[..] {
            [fd] => (q, fd),
            _ => return Err(io::Error::other("cannot tell the queue's socket")),
        }
    };
    q.bind(QUEUE_NUM)?;
    // Only the verdict matters: copy no payload.
    q.set_copy_range(QUEUE_NUM, 0)?;
    q.set_queue_max_len(QUEUE_NUM, QUEUE_MAX)?;
    q.set_nonblocking(true);
    Ok((q, fd))
}

/// Serves the queue until `stop`; `fds`: the queue's socket and the stop eventfd.
fn pump(
    q: &mut nfq::Queue,
    fds: [RawFd; 2],
    imp: Impairment,
    seed: u64,
    counts: &Counts,
    stop: &AtomicBool,
) -> io::Result<()> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut held: BinaryHeap<Held> = BinaryHeap::new();
    let mut arrivals = 0u64;
    let mut released_up_to = 0u64;
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        loop {
            match q.recv() {
                Ok(mut msg) => {
                    arrivals += 1;
                    counts.seen.fetch_add(1, Ordering::Relaxed);
                    if !stopping && rng.f64() < imp.loss {
                        counts.lost.fetch_add(1, Ordering::Relaxed);
                        msg.set_verdict(nfq::Verdict::Drop);
                        q.verdict(msg)?;
                        continue;
                    }
                    let spread = imp.jitter.as_secs_f64() * (2.0 * rng.f64() - 1.0);
                    let hold = (imp.delay.as_secs_f64() + spread).max(0.0);
                    held.push(Held {
                        due: Instant::now() + Duration::from_secs_f64(hold),
                        arrival: arrivals,
                        msg,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        let now = Instant::now();
        while let Some(h) = held.peek() {
            if h.due > now && !stopping {
                break;
            }
            let mut h = held.pop().expect("peeked");
            if h.arrival < released_up_to {
                counts.reordered.fetch_add(1, Ordering::Relaxed);
            }
            released_up_to = released_up_to.max(h.arrival);
            h.msg.set_verdict(nfq::Verdict::Accept);
            q.verdict(h.msg)?;
        }
        if stopping {
            // Rules are gone: nothing new arrives; everything held was released.
            let _ = q.unbind(QUEUE_NUM);
            return Ok(());
        }
        // Until a packet arrives, stop is asked, or the earliest held one is due.
        let due = held.peek().map(|h| h.due.saturating_duration_since(now));
        let ts = due.map(|d| libc::timespec {
            tv_sec: d.as_secs() as libc::time_t,
            tv_nsec: libc::c_long::from(d.subsec_nanos() as i32),
        });
        let mut pfds = fds.map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        });
        let timeout = ts
            .as_ref()
            .map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: two live pollfds, a live (or null) timeout, no signal mask change.
        let r = unsafe { libc::ppoll(pfds.as_mut_ptr(), 2, timeout, std::ptr::null()) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}
