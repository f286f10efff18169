//! The hub's UDP I/O in batches: on Linux one `recvmmsg` takes up to
//! [`RECV_BATCH`] datagrams and one `sendmmsg` hands up to [`SEND_BATCH`] to the
//! kernel; elsewhere the same batches are filled and sent one datagram per call.
//!
//! Both run on the tokio socket's file descriptor inside `try_io`, so tokio's
//! readiness stays right: a call that finds nothing to read (or no room to write)
//! returns `WouldBlock` and the hub waits for the next readiness event. Buffers are
//! allocated once, when the hub starts, and reused for every batch.
//!
//! GSO (`UDP_SEGMENT`) is not used: it splits one large buffer into equal segments
//! for *one* destination, while a flush sends one or two datagrams to each of many
//! subscribers (and a subscriber's datagrams differ in size).

use std::io;
use std::net::SocketAddr;

use socket2::SockAddr;
use tokio::net::UdpSocket;

use crate::telemetry::MAX_DATAGRAM;

/// Datagrams taken from the socket per system call: enough to amortise the call
/// when datagrams queue up (a flood, or the hub back from other work), while the
/// buffers (32 × 1201 bytes ≈ 38 KiB) stay small.
pub(super) const RECV_BATCH: usize = 32;
/// Datagrams handed to the kernel per system call; a flush that makes more sends
/// them in several calls. The kernel's own limit (`UIO_MAXIOV`, 1024) is far above.
pub(super) const SEND_BATCH: usize = 64;
/// Buffer per received datagram: one byte more than the largest accepted, so an
/// oversized datagram is seen (and counted) as such instead of silently cut.
const SLOT: usize = MAX_DATAGRAM + 1;

/// Datagrams received by one [`RecvBatch::recv`].
pub(super) struct RecvBatch {
    buf: Box<[u8]>,
    len: [usize; RECV_BATCH],
    from: [Option<SocketAddr>; RECV_BATCH],
    n: usize,
    #[cfg(target_os = "linux")]
    names: Box<[libc::sockaddr_storage]>,
}

impl RecvBatch {
    pub(super) fn new() -> RecvBatch {
        RecvBatch {
            buf: vec![0u8; RECV_BATCH * SLOT].into_boxed_slice(),
            len: [0; RECV_BATCH],
            from: [None; RECV_BATCH],
            n: 0,
            // SAFETY: all zeroes is a valid (empty) sockaddr_storage.
            #[cfg(target_os = "linux")]
            names: vec![unsafe { std::mem::zeroed::<libc::sockaddr_storage>() }; RECV_BATCH]
                .into_boxed_slice(),
        }
    }

    /// The `i`th datagram and its source (`None` for an address family the hub
    /// cannot answer, never seen on an IP socket).
    pub(super) fn get(&self, i: usize) -> (&[u8], Option<SocketAddr>) {
        (&self.buf[i * SLOT..i * SLOT + self.len[i]], self.from[i])
    }

    /// Takes the datagrams waiting on `socket` (at most [`RECV_BATCH`]).
    ///
    /// # Errors
    /// `WouldBlock` when none waits (tokio's readiness is then cleared); any other
    /// error of the call (the batch is then empty).
    pub(super) fn recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        self.n = 0;
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let fd = socket.as_raw_fd();
            self.n = socket.try_io(tokio::io::Interest::READABLE, || self.recvmmsg(fd))?;
        }
        #[cfg(not(target_os = "linux"))]
        {
            while self.n < RECV_BATCH {
                let i = self.n;
                match socket.try_recv_from(&mut self.buf[i * SLOT..(i + 1) * SLOT]) {
                    Ok((len, from)) => {
                        self.len[i] = len;
                        self.from[i] = Some(from);
                        self.n += 1;
                    }
                    Err(e) if self.n == 0 => return Err(e),
                    Err(_) => break,
                }
            }
        }
        Ok(self.n)
    }

    #[cfg(target_os = "linux")]
    fn recvmmsg(&mut self, fd: std::os::fd::RawFd) -> io::Result<usize> {
        // The headers point into `buf` and `names`; they live only for this call.
        // SAFETY: all zeroes is a valid iovec and mmsghdr (null pointers, 0 lengths).
        let mut iov: [libc::iovec; RECV_BATCH] = unsafe { std::mem::zeroed() };
        let mut hdr: [libc::mmsghdr; RECV_BATCH] = unsafe { std::mem::zeroed() };
        let base = self.buf.as_mut_ptr();
        for i in 0..RECV_BATCH {
            iov[i] = libc::iovec {
                // SAFETY: slot i lies inside `buf` (RECV_BATCH × SLOT bytes).
                iov_base: unsafe { base.add(i * SLOT) }.cast(),
                iov_len: SLOT,
            };
            let h = &mut hdr[i].msg_hdr;
            h.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as _;
            h.msg_iov = &mut iov[i];
            h.msg_iovlen = 1;
        }
        // SAFETY: every header points at live, writable buffers of the sizes given;
        // the kernel writes at most that much into each.
        let r = unsafe {
            libc::recvmmsg(
                fd,
                hdr.as_mut_ptr(),
                RECV_BATCH as _,
                libc::MSG_DONTWAIT as _,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = r as usize;
        for (i, h) in hdr[..n].iter().enumerate() {
            self.len[i] = (h.msg_len as usize).min(SLOT);
            self.from[i] = socket_addr(&self.names[i], h.msg_hdr.msg_namelen);
        }
        Ok(n)
    }
}

#[cfg(target_os = "linux")]
fn socket_addr(raw: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let mut storage = socket2::SockAddrStorage::zeroed();
    // SAFETY: sockaddr_storage is a sockaddr type of this platform; `len` is what
    // the kernel wrote into it (at most its size), so family and length match.
    unsafe {
        *storage.view_as::<libc::sockaddr_storage>() = *raw;
        SockAddr::new(storage, len)
    }
    .as_socket()
}

/// One datagram waiting in a [`SendBatch`]: its bytes in the arena and where it goes.
pub(super) struct Pending {
    start: usize,
    len: usize,
    to: SockAddr,
}

/// What one [`SendBatch::send`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Sent {
    /// Datagrams the kernel took.
    pub sent: u64,
    /// Datagrams dropped: the socket buffer was full, or the kernel refused that
    /// destination.
    pub dropped: u64,
}

/// Datagrams to many destinations, assembled during a flush and handed to the
/// kernel [`SEND_BATCH`] at a time. Holds at most `SEND_BATCH` datagrams: the hub
/// sends it when [`SendBatch::is_full`].
pub(super) struct SendBatch {
    arena: Vec<u8>,
    pending: Vec<Pending>,
}

impl SendBatch {
    pub(super) fn new() -> SendBatch {
        SendBatch {
            arena: Vec::with_capacity(SEND_BATCH * MAX_DATAGRAM),
            pending: Vec::with_capacity(SEND_BATCH),
        }
    }

    /// Whether the batch must be sent before another datagram is added.
    pub(super) fn is_full(&self) -> bool {
        self.pending.len() >= SEND_BATCH
    }

    /// Adds a copy of `d` for `to`. The batch must not be full (the hub sends it
    /// first); a datagram over [`MAX_DATAGRAM`] is never made by the hub.
    pub(super) fn push(&mut self, d: &[u8], to: SocketAddr) {
        debug_assert!(!self.is_full() && d.len() <= MAX_DATAGRAM);
        let start = self.arena.len();
        self.arena.extend_from_slice(d);
        self.pending.push(Pending {
            start,
            len: d.len(),
            to: SockAddr::from(to),
        });
    }

    /// Hands every waiting datagram to the kernel and empties the batch.
    pub(super) fn send(&mut self, socket: &UdpSocket) -> Sent {
        if self.pending.is_empty() {
            return Sent::default();
        }
        let arena = &self.arena;
        let sent = send_all(&self.pending, |msgs| send_some(socket, arena, msgs));
        self.pending.clear();
        self.arena.clear();
        sent
    }
}

/// Sends `msgs` in calls of at most [`SEND_BATCH`] through `sys`, which sends a
/// prefix of what it is given and says how many went (as `sendmmsg` does).
///
/// The policy, whatever the call: a short count resends from the first datagram not
/// taken (the next call reports why it was not); `WouldBlock` means the socket
/// buffer is full, and the rest of the batch is dropped (telemetry is never
/// queued: the next batch carries newer values); any other error drops only the
/// datagram it concerns (one unreachable subscriber does not cost the others).
pub(super) fn send_all(
    msgs: &[Pending],
    mut sys: impl FnMut(&[Pending]) -> io::Result<usize>,
) -> Sent {
    let mut out = Sent::default();
    let mut i = 0;
    while i < msgs.len() {
        let chunk = &msgs[i..msgs.len().min(i + SEND_BATCH)];
        match sys(chunk) {
            Ok(k) if k > 0 => {
                let k = k.min(chunk.len());
                out.sent += k as u64;
                i += k;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                out.dropped += (msgs.len() - i) as u64;
                break;
            }
            // An error for the first datagram (or a call that took none): drop it
            // and go on, so every call makes progress.
            _ => {
                out.dropped += 1;
                i += 1;
            }
        }
    }
    out
}

/// One `sendmmsg` (Linux) or `send_to` (elsewhere) of a prefix of `msgs`.
fn send_some(socket: &UdpSocket, arena: &[u8], msgs: &[Pending]) -> io::Result<usize> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let fd = socket.as_raw_fd();
        socket.try_io(tokio::io::Interest::WRITABLE, || sendmmsg(fd, arena, msgs))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let m = &msgs[0];
        let to = m.to.as_socket().ok_or(io::ErrorKind::InvalidInput)?;
        socket
            .try_send_to(&arena[m.start..m.start + m.len], to)
            .map(|_| 1)
    }
}

#[cfg(target_os = "linux")]
fn sendmmsg(fd: std::os::fd::RawFd, arena: &[u8], msgs: &[Pending]) -> io::Result<usize> {
    let n = msgs.len().min(SEND_BATCH);
    // SAFETY: all zeroes is a valid iovec and mmsghdr (null pointers, 0 lengths).
    let mut iov: [libc::iovec; SEND_BATCH] = unsafe { std::mem::zeroed() };
    let mut hdr: [libc::mmsghdr; SEND_BATCH] = unsafe { std::mem::zeroed() };
    for (i, m) in msgs[..n].iter().enumerate() {
        let bytes = &arena[m.start..m.start + m.len];
        iov[i] = libc::iovec {
            // The kernel only reads through it (sendmmsg).
            iov_base: bytes.as_ptr().cast_mut().cast(),
            iov_len: bytes.len(),
        };
        let h = &mut hdr[i].msg_hdr;
        h.msg_name = m.to.as_ptr().cast_mut().cast();
        h.msg_namelen = m.to.len();
        h.msg_iov = &mut iov[i];
        h.msg_iovlen = 1;
    }
    // SAFETY: the n headers point at live buffers and addresses of the lengths given,
    // which the kernel only reads.
    let r = unsafe { libc::sendmmsg(fd, hdr.as_mut_ptr(), n as _, 0) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(n: usize) -> Vec<Pending> {
        (0..n)
            .map(|i| Pending {
                start: i,
                len: 1,
                to: SockAddr::from(SocketAddr::from(([127, 0, 0, 1], 1000 + i as u16))),
            })
            .collect()
    }

    fn port(p: &Pending) -> u16 {
        p.to.as_socket().map_or(0, |a| a.port())
    }

    #[test]
    fn short_counts_resend_the_rest_in_calls_no_larger_than_the_batch() {
        // 150 datagrams, more than two calls' worth; the "kernel" takes at most 7
        // of what it is given each time.
        let msgs = batch(150);
        let mut seen = Vec::new();
        let mut calls = 0;
        let sent = send_all(&msgs, |chunk| {
            calls += 1;
            assert!(chunk.len() <= SEND_BATCH);
            let k = chunk.len().min(7);
            seen.extend(chunk[..k].iter().map(port));
            Ok(k)
        });
        assert_eq!(
            sent,
            Sent {
                sent: 150,
                dropped: 0
            }
        );
        assert_eq!(calls, 150usize.div_ceil(7));
        // Every datagram once, in order.
        assert_eq!(seen, (0..150).map(|i| 1000 + i).collect::<Vec<u16>>());
    }

    #[test]
    fn a_full_socket_buffer_mid_batch_drops_the_rest() {
        let msgs = batch(100);
        let mut calls = 0;
        let sent = send_all(&msgs, |chunk| {
            calls += 1;
            if calls == 1 {
                Ok(chunk.len().min(40))
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            }
        });
        assert_eq!(
            sent,
            Sent {
                sent: 40,
                dropped: 60
            }
        );
        // No retry after WouldBlock: the hub never spins on a full buffer.
        assert_eq!(calls, 2);
    }

    #[test]
    fn a_refused_destination_costs_only_its_own_datagram() {
        let msgs = batch(10);
        let bad = 1004;
        let mut seen = Vec::new();
        let sent = send_all(&msgs, |chunk| {
            // As sendmmsg: the datagrams before the bad one go; an error only when
            // the first one given fails.
            match chunk.iter().position(|m| port(m) == bad) {
                Some(0) => Err(io::Error::from_raw_os_error(22)),
                Some(k) => {
                    seen.extend(chunk[..k].iter().map(port));
                    Ok(k)
                }
                None => {
                    seen.extend(chunk.iter().map(port));
                    Ok(chunk.len())
                }
            }
        });
        assert_eq!(
            sent,
            Sent {
                sent: 9,
                dropped: 1
            }
        );
        assert!(!seen.contains(&bad));
        assert_eq!(seen.len(), 9);
    }

    #[test]
    fn a_call_that_takes_nothing_still_makes_progress() {
        let msgs = batch(3);
        let sent = send_all(&msgs, |_| Ok(0));
        assert_eq!(
            sent,
            Sent {
                sent: 0,
                dropped: 3
            }
        );
    }
}
