//! Signals, standing by for a busy cache, and ending a stalled cycle's helpers.

use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, Signal, SignalKind};

use super::{render, Opener, STANDBY_POLL};
use crate::daemon::publish::Publisher;

/// The signals the loop answers.
pub(super) struct Signals {
    sigterm: Signal,
    sigint: Signal,
    sighup: Signal,
    /// `--sync-on-signal`, unless it is SIGHUP.
    sync: Option<Signal>,
}

impl Signals {
    pub(super) fn install(sync_signal: Option<i32>) -> std::io::Result<Signals> {
        let sync = match sync_signal.filter(|s| *s != nix::sys::signal::Signal::SIGHUP as i32) {
            Some(number) => Some(signal(SignalKind::from_raw(number))?),
            None => None,
        };
        Ok(Signals {
            sigterm: signal(SignalKind::terminate())?,
            sigint: signal(SignalKind::interrupt())?,
            sighup: signal(SignalKind::hangup())?,
            sync,
        })
    }

    /// The next SIGTERM or SIGINT.
    pub(super) async fn terminate(&mut self) {
        tokio::select! {
            _ = self.sigterm.recv() => {}
            _ = self.sigint.recv() => {}
        }
    }

    /// The next signal of any kind the loop answers between cycles.
    pub(super) async fn next(&mut self) -> Wake {
        let sync = async {
            match &mut self.sync {
                Some(signal) => {
                    signal.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = self.sigterm.recv() => Wake::Stop,
            _ = self.sigint.recv() => Wake::Stop,
            _ = self.sighup.recv() => Wake::Hangup,
            _ = sync => Wake::SyncSignal,
        }
    }
}

/// What woke the loop between cycles.
pub(super) enum Wake {
    /// SIGTERM or SIGINT.
    Stop,
    Hangup,
    /// `--sync-on-signal`.
    SyncSignal,
}

/// Open the publisher. A second process started with the same configuration on one host finds
/// the cache busy: instead of exiting (and being restarted by its supervisor, over and over), it
/// stands by, says so once, and takes over when the first one stops. A signal ends the wait,
/// and so does `patience` running out (then the busy cache is the error). Any other failure to
/// open is returned: retrying will not help.
pub(super) async fn stand_by(
    open: &Opener,
    patience: Option<Duration>,
    signals: &mut Signals,
) -> Result<Option<Publisher>, String> {
    let started = tokio::time::Instant::now();
    let mut waiting = false;
    loop {
        let opening = tokio::task::spawn_blocking({
            let open = Arc::clone(open);
            move || open()
        });
        let attempt = tokio::select! {
            joined = opening => joined.map_err(|e| format!("internal error while starting: {e}"))?,
            // Opening may hang on a stalled volume: a stop request is answered all the same.
            _ = signals.terminate() => {
                tracing::info!("stop requested while starting; exiting");
                return Ok(None);
            }
        };
        match attempt {
            Ok(publisher) => {
                if waiting {
                    tracing::info!("the cache is free; taking over");
                }
                return Ok(Some(publisher));
            }
            Err(e) if e.is_cache_busy() && patience.is_some_and(|p| started.elapsed() >= p) => {
                return Err(render(&e));
            }
            Err(e) if e.is_cache_busy() => {
                if waiting {
                    tracing::debug!("the cache is still in use; waiting to take over");
                } else {
                    tracing::info!(reason = %render(&e), "standing by: another dagsnap process with this configuration runs on this host; this one takes over when it stops");
                    waiting = true;
                }
            }
            Err(e) => return Err(render(&e)),
        }
        tokio::select! {
            _ = tokio::time::sleep(STANDBY_POLL) => {}
            _ = signals.terminate() => {
                tracing::info!("stop requested while standing by; exiting");
                return Ok(None);
            }
        }
    }
}

/// SIGKILL every process descended from this one; returns the pids signalled.
///
/// dagsnap itself starts no processes; its descendants are the transport helpers gix spawns
/// (`ssh`, `git upload-pack` for local remotes) and whatever those started, such as a shell
/// running `core.sshCommand`. Killing the whole subtree closes every copy of the pipes a blocked
/// read is waiting on.
pub(super) fn kill_descendants() -> Vec<i32> {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let parents: Vec<(u32, u32)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // The command name may contain spaces and parentheses; fields resume after the last ')'.
            let ppid = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some((pid, ppid))
        })
        .collect();
    let mut doomed = vec![me];
    let mut i = 0;
    while i < doomed.len() {
        let parent = doomed[i];
        doomed.extend(
            parents
                .iter()
                .filter(|(_, ppid)| *ppid == parent)
                .map(|(pid, _)| *pid),
        );
        i += 1;
    }
    doomed
        .iter()
        .skip(1)
        .filter_map(|pid| i32::try_from(*pid).ok())
        .filter(|pid| {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid),
                nix::sys::signal::Signal::SIGKILL,
            )
            .is_ok()
        })
        .collect()
}
