//! The hub's own thread: a single-threaded tokio runtime on an OS thread of lower
//! CPU priority than the rest of the bus.
//!
//! Control and telemetry share no queue and no task; with this they share no
//! thread either. tokio does not preempt a task, so a hub sharing the bus's worker
//! threads held any control task queued behind it for as long as one hub turn took
//! (a read burst, a flush to every subscriber). On its own thread it runs beside
//! control on another core, and where both want the same core the kernel shares
//! it by priority: [`HUB_NICE`] steps below the bus, the hub gets the smaller part
//! (`docs/performance.md`, `tflood`, has the measurements).

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Hub, HubMsg, Ingest};

/// How much lower than the bus's the hub thread's priority is, in nice steps (up
/// to the lowest, 19). At 10 below, when the hub and a control thread both want
/// one core, the kernel gives the hub about a tenth of it; a hub with a core to
/// itself runs at full speed.
pub(super) const HUB_NICE: i32 = 10;

/// The hub's runtime, made on the calling thread so that the UDP socket can be
/// registered with it (and any error returned) before the thread starts.
pub(super) fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
}

/// Runs `hub` on `rt` in a thread of its own. The tracker holds a task that ends
/// when the hub does, so the bus's shutdown waits for it as for any task.
pub(super) fn spawn(
    rt: tokio::runtime::Runtime,
    hub: Hub,
    ctl: mpsc::Receiver<HubMsg>,
    ingest: mpsc::Receiver<Ingest>,
    cancel: CancellationToken,
    tracker: &TaskTracker,
) -> std::io::Result<()> {
    let (done, done_rx) = oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("avbus-telemetry".into())
        .spawn(move || {
            lower_priority(HUB_NICE);
            rt.block_on(hub.run(ctl, ingest, cancel));
            // Dropping the runtime here closes the socket; then the tracker's task
            // ends.
            drop(rt);
            drop(done);
        })?;
    tracker.spawn(async move {
        let _ = done_rx.await;
    });
    Ok(())
}

/// Lowers the calling thread's CPU priority by `steps` from where it is. On Linux
/// the nice value belongs to the thread (`who` 0 is the caller), so the rest of
/// the bus keeps its own. Elsewhere (where it would apply to the whole process),
/// nothing is changed.
fn lower_priority(steps: i32) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: getpriority and setpriority only read and change the scheduler's
        // view of this thread; errno is this thread's own.
        let r = unsafe {
            *libc::__errno_location() = 0;
            let now = libc::getpriority(libc::PRIO_PROCESS, 0);
            let now = if now == -1 && *libc::__errno_location() != 0 {
                0
            } else {
                now
            };
            libc::setpriority(libc::PRIO_PROCESS, 0, (now + steps).min(19))
        };
        if r != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "telemetry hub priority unchanged");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = steps;
}
