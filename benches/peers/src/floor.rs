//! The loopback floor: a TCP echo (two crossings per round trip) and a relay that
//! forwards bytes between two clients without parsing them (four crossings, like a
//! ping-pong through a broker). No broker can beat the relay.
//!
//! And the UDP floor: a UDP echo (`floor-udp-echo`, two crossings, a reference row
//! for `rtt`), and a sink that only counts datagrams (`floor-udp-sink`), fed the
//! `tingest` load: what taking in those datagrams costs a process that does
//! nothing else with them.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use avbus::bench::{cpu_ms, histogram, quantiles, scaled, stamp, Row, PAYLOAD, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Serves the echo: every byte read is written back.
pub async fn serve_echo(listener: TcpListener) {
    while let Ok((s, _)) = listener.accept().await {
        let _ = s.set_nodelay(true);
        tokio::spawn(async move {
            let (mut r, mut w) = s.into_split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
        });
    }
}

/// Serves the relay: connections are paired in accept order, and each forwards to
/// the other.
pub async fn serve_relay(listener: TcpListener) {
    loop {
        let Ok((mut a, _)) = listener.accept().await else {
            return;
        };
        let Ok((mut b, _)) = listener.accept().await else {
            return;
        };
        let _ = a.set_nodelay(true);
        let _ = b.set_nodelay(true);
        tokio::spawn(async move {
            let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
        });
    }
}

async fn connect(addr: &str) -> Result<TcpStream, String> {
    let s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    Ok(s)
}

/// `rtt` through the echo (`relay: false`) or the relay: the same 64-byte payload,
/// warm-up and count as the broker rows.
pub async fn rtt(addr: &str, relay: bool, scale: f64) -> Result<Row, String> {
    let mut a = connect(addr).await?;
    if relay {
        let mut b = connect(addr).await?;
        // The far end of the relay echoes, as the broker workload's second client does.
        tokio::spawn(async move {
            let mut buf = [0u8; PAYLOAD];
            while b.read_exact(&mut buf).await.is_ok() {
                if b.write_all(&buf).await.is_err() {
                    return;
                }
            }
        });
    }
    let n = scaled(20_000, scale);
    let warmup = scaled(1_000, scale);
    let mut h = histogram();
    let mut buf = [0u8; PAYLOAD];
    let deadline = Instant::now() + Duration::from_secs(60);
    for i in 0..warmup + n {
        if Instant::now() > deadline {
            break;
        }
        let t0 = Instant::now();
        a.write_all(&stamp()).await.map_err(|e| e.to_string())?;
        tokio::time::timeout(Duration::from_secs(2), a.read_exact(&mut buf))
            .await
            .map_err(|_| "floor: no echo".to_string())?
            .map_err(|e| e.to_string())?;
        if i >= warmup {
            let _ = h.record(t0.elapsed().as_micros().max(1) as u64);
        }
    }
    let system = if relay { "floor-relay" } else { "floor-echo" };
    Ok(Row::new("rtt", system, quantiles(&h)))
}

/// Longest a UDP floor server lives: the bench kills it when its workload is done,
/// and it also exits as soon as the bench (its parent) is gone.
const SERVER_LIFETIME: Duration = Duration::from_secs(3600);

/// Exits this process when its parent goes away (or after [`SERVER_LIFETIME`]), so
/// that a UDP floor server never outlives the bench.
fn exit_with_parent() {
    let parent = std::os::unix::process::parent_id();
    std::thread::spawn(move || {
        let tick = Duration::from_millis(200);
        for _ in 0..SERVER_LIFETIME.as_millis() / tick.as_millis() {
            std::thread::sleep(tick);
            if std::os::unix::process::parent_id() != parent {
                break;
            }
        }
        std::process::exit(0);
    });
}

/// Serves the UDP echo on 127.0.0.1 (a free port): every datagram is sent back to
/// where it came from, from one blocking thread. Prints the ready line
/// (`{"ready":{"udp":ADDR}}`) first.
pub fn serve_udp_echo() -> Result<(), String> {
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = udp.local_addr().map_err(|e| e.to_string())?;
    println!("{{\"ready\":{{\"udp\":\"{addr}\"}}}}");
    exit_with_parent();
    let mut buf = [0u8; 65536];
    // Ends with the process (`exit_with_parent`).
    loop {
        // An error here (an interrupted call, or the ICMP error of a client gone
        // away, which Linux reports on the next call) ends nothing.
        if let Ok((n, from)) = udp.recv_from(&mut buf) {
            let _ = udp.send_to(&buf[..n], from);
        }
    }
}

/// `rtt` through the UDP echo: one connected socket, the same 64-byte payload,
/// warm-up and count as the TCP floor; a round with no echo within [`WAIT`] counts
/// as `lost` and the next one starts. A late echo of an earlier round is told apart
/// by its bytes (each payload carries its own send time).
pub async fn udp_rtt(addr: SocketAddr, scale: f64) -> Result<Row, String> {
    let udp = tokio::net::UdpSocket::bind(SocketAddr::new(addr.ip(), 0))
        .await
        .map_err(|e| e.to_string())?;
    udp.connect(addr).await.map_err(|e| e.to_string())?;
    let n = scaled(20_000, scale);
    let warmup = scaled(1_000, scale);
    let mut h = histogram();
    let mut lost = 0u64;
    // Larger than a payload, so a datagram of another size is seen as different.
    let mut buf = [0u8; 2 * PAYLOAD];
    let deadline = Instant::now() + Duration::from_secs(60);
    for i in 0..warmup + n {
        if Instant::now() > deadline {
            break;
        }
        let ping = stamp();
        let t0 = Instant::now();
        udp.send(&ping).await.map_err(|e| e.to_string())?;
        let until = tokio::time::Instant::now() + WAIT;
        let mut echoed = false;
        // Each pass takes one datagram; the wait as a whole ends at `until`.
        while let Ok(r) = tokio::time::timeout_at(until, udp.recv(&mut buf)).await {
            let len = r.map_err(|e| e.to_string())?;
            if buf[..len] == ping[..] {
                echoed = true;
                break;
            }
        }
        if !echoed {
            lost += 1;
        } else if i >= warmup {
            let _ = h.record(t0.elapsed().as_micros().max(1) as u64);
        }
    }
    let mut f = quantiles(&h);
    f.push(("lost", lost as f64));
    Ok(Row::new("rtt", "floor-udp-echo", f))
}

/// Receive buffer the sink asks for: the bus's default
/// (`telemetry.udp_recv_buffer`, 4 MiB; the kernel may grant less).
const SINK_RECV_BUFFER: libc::c_int = 4 << 20;
/// Datagrams per `recvmmsg`, as the bus's telemetry hub takes them.
const SINK_BATCH: usize = 32;
/// Buffer per datagram: the protocol's largest datagram and one byte, as the hub's.
const SINK_SLOT: usize = avbus::telemetry::MAX_DATAGRAM + 1;

/// Serves the UDP sink on 127.0.0.1 (free ports): one blocking thread takes
/// datagrams with `recvmmsg`, [`SINK_BATCH`] at most per call, and counts them,
/// parsing nothing; each TCP connection is answered with the count so far (8
/// bytes, little-endian) and closed. Prints the ready line
/// (`{"ready":{"udp":ADDR,"tcp":ADDR}}`) first.
pub fn serve_udp_sink() -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let fd = udp.as_raw_fd();
    let size = SINK_RECV_BUFFER;
    // SAFETY: `fd` is the open socket above; the option value is a c_int of the
    // length given.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let (u, t) = (
        udp.local_addr().map_err(|e| e.to_string())?,
        tcp.local_addr().map_err(|e| e.to_string())?,
    );
    println!("{{\"ready\":{{\"udp\":\"{u}\",\"tcp\":\"{t}\"}}}}");
    exit_with_parent();
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        // Ends with the process (`exit_with_parent`).
        for mut s in tcp.incoming().flatten() {
            let _ = s.write_all(&c.load(Ordering::Relaxed).to_le_bytes());
        }
    });
    let mut buf = vec![0u8; SINK_BATCH * SINK_SLOT];
    // SAFETY: all zeroes is a valid iovec and mmsghdr (null pointers, 0 lengths).
    let mut iov: [libc::iovec; SINK_BATCH] = unsafe { std::mem::zeroed() };
    let mut hdr: [libc::mmsghdr; SINK_BATCH] = unsafe { std::mem::zeroed() };
    let base = buf.as_mut_ptr();
    for i in 0..SINK_BATCH {
        iov[i] = libc::iovec {
            // SAFETY: slot i lies inside `buf` (SINK_BATCH × SINK_SLOT bytes).
            iov_base: unsafe { base.add(i * SINK_SLOT) }.cast(),
            iov_len: SINK_SLOT,
        };
        hdr[i].msg_hdr.msg_iov = &mut iov[i];
        hdr[i].msg_hdr.msg_iovlen = 1;
    }
    // Ends with the process (`exit_with_parent`).
    loop {
        // Blocks for the first datagram, then takes what else is waiting.
        // SAFETY: every header points at a live, writable slot of the size given
        // (`buf` and `iov` outlive the call); no source address is asked for.
        let r = unsafe {
            libc::recvmmsg(
                fd,
                hdr.as_mut_ptr(),
                SINK_BATCH as _,
                libc::MSG_WAITFORONE as _,
                std::ptr::null_mut(),
            )
        };
        if r > 0 {
            count.fetch_add(r as u64, Ordering::Relaxed);
        } else if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(format!("recvmmsg: {e}"));
            }
        }
    }
}

/// The sink's count so far.
fn sink_count(tcp: SocketAddr) -> Result<u64, String> {
    let mut s = std::net::TcpStream::connect_timeout(&tcp, WAIT).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(WAIT)).map_err(|e| e.to_string())?;
    let mut b = [0u8; 8];
    s.read_exact(&mut b)
        .map_err(|e| format!("sink count: {e}"))?;
    Ok(u64::from_le_bytes(b))
}

/// `tingest` into the UDP sink (`pid`; datagrams to `udp`, its count from `tcp`):
/// the same datagrams, sender loop, time and count as avbus's `tingest`
/// ([`avbus::bench::telemetry::blast_floor`]); then the count once it has stopped
/// changing for 100 ms (at most 2 s), and the sink's CPU over the window and that
/// settle, per datagram received.
pub async fn udp_ingest(
    udp: SocketAddr,
    tcp: SocketAddr,
    pid: u32,
    scale: f64,
) -> Result<Row, String> {
    tokio::task::spawn_blocking(move || {
        let n0 = sink_count(tcp)?;
        let cpu0 = cpu_ms(pid);
        let (sent, secs) = avbus::bench::telemetry::blast_floor(udp, scale)?;
        // What the socket still held is taken in after the window: its cost counts.
        let quiet = Duration::from_millis(100);
        let end = Instant::now() + WAIT;
        let mut last = sink_count(tcp)?;
        let mut since = Instant::now();
        while Instant::now() < end && since.elapsed() < quiet {
            std::thread::sleep(Duration::from_millis(10));
            let now = sink_count(tcp)?;
            if now != last {
                last = now;
                since = Instant::now();
            }
        }
        let cpu1 = cpu_ms(pid);
        let datagrams = (last - n0) as f64;
        let mut f = vec![
            ("datagrams_sent_per_s", (sent as f64 / secs).round()),
            ("datagrams_per_s", (datagrams / secs).round()),
            ("seconds", (secs * 100.0).round() / 100.0),
        ];
        if let (Some(a), Some(b)) = (cpu0, cpu1) {
            if datagrams > 0.0 {
                let per = (b - a) * 1000.0 / datagrams;
                f.push(("cpu_us_per_datagram", (per * 100.0).round() / 100.0));
                f.push(("one_core_datagrams_per_s", (1e6 / per.max(0.001)).round()));
            }
        }
        Ok(Row::new("tingest", "floor-udp-sink", f))
    })
    .await
    .map_err(|e| e.to_string())?
}
