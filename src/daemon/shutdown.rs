//! SIGTERM is honoured within [`SHUTDOWN_GRACE`], whatever a system call does.
//!
//! The loop stops cleanly on SIGTERM: the cycle in flight finishes or abandons its staging
//! directory, and the process exits 0 (`run`). That needs the loop's thread to see the signal
//! and the cycle's thread to come back. A system call that hangs (a stalled NFS server, a FUSE
//! volume that stopped answering, anything the shared volume can do to a reader) can hold
//! either, and a process that does not exit keeps an init container from finishing and a pod
//! from terminating until the kubelet's SIGKILL.
//!
//! So a watchdog that needs neither: the signal handler itself records when the first stop was
//! asked for (an atomic store, all a handler may do), and a thread of its own, which touches no
//! file, exits the process once [`SHUTDOWN_GRACE`] has passed since. What a cycle leaves
//! behind when cut short is a staging directory, which the next start removes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// After SIGTERM, how long a cycle in flight may take to wind down before the process exits
/// anyway (Kubernetes sends SIGKILL 30 s after SIGTERM by default).
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// When the first SIGTERM or SIGINT arrived, in milliseconds of `CLOCK_MONOTONIC`; 0: none.
static ASKED_AT: AtomicU64 = AtomicU64::new(0);

fn monotonic_ms() -> u64 {
    // clock_gettime is async-signal-safe (POSIX lists it), so the handler may call this.
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec to write into; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    (now.tv_sec as u64) * 1000 + (now.tv_nsec as u64) / 1_000_000 + 1
}

/// Install the watchdog: from now on, the process exits with status 0 at most
/// [`SHUTDOWN_GRACE`] (plus a tenth of a second) after the first SIGTERM or SIGINT, even when
/// the loop cannot finish. Tokio's own handlers for these signals keep working beside it.
pub(crate) fn arm() -> std::io::Result<()> {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: the action only reads the monotonic clock and does an atomic compare-and-swap,
        // both async-signal-safe; it allocates nothing and takes no lock.
        unsafe {
            signal_hook_registry::register(signal, || {
                let _ = ASKED_AT.compare_exchange(
                    0,
                    monotonic_ms(),
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                );
            })?;
        }
    }
    std::thread::Builder::new()
        .name("shutdown-watchdog".into())
        .spawn(|| loop {
            std::thread::sleep(Duration::from_millis(100));
            let asked = ASKED_AT.load(Ordering::SeqCst);
            if asked != 0 && monotonic_ms().saturating_sub(asked) > SHUTDOWN_GRACE.as_millis() as u64
            {
                // stderr may be what hangs; say it, but do not wait for it.
                tracing::warn!(
                    "the cycle in flight did not stop within {} of the stop request (a system call does not return: is the volume or the network stalled?); exiting now, its staging directory is removed on the next start",
                    humantime::format_duration(SHUTDOWN_GRACE)
                );
                std::process::exit(0);
            }
        })?;
    Ok(())
}
