//! `--check-command`: run the operator's check on a built snapshot, before the link moves.
//!
//! The check runs in the snapshot (complete and read-only) with the commit in its environment,
//! in a process group of its own, under `--check-timeout`, on the cycle's blocking thread: the
//! cycle is waiting for its verdict anyway. What it prints (stdout and stderr together) is kept,
//! bounded: its first [`OUTPUT_HEAD`] bytes (the summary a check prints first, which `status`
//! shows) and its last [`OUTPUT_TAIL`] bytes (where a traceback ends), with a marker where the
//! middle was dropped. Python is told not to write bytecode next to the modules it
//! imports (the snapshot is read-only; root would write anyway): `PYTHONDONTWRITEBYTECODE=1`,
//! unless the environment sets it. Not a `PYTHONPYCACHEPREFIX`: Python then reads bytecode only
//! from the prefix, so every check would compile all of Airflow again (measured: 1.8 s per
//! check becomes 3.7 s, docs/benchmarks.md). A prefix the environment sets is passed on.
//!
//! A check that the cycle's interrupt stops (SIGTERM, `--sync-timeout`) is abandoned: killed,
//! and no verdict is recorded, so it runs again later.

use std::collections::VecDeque;
use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::commit::CommitId;

/// How much of the start of a check's output is kept.
pub(crate) const OUTPUT_HEAD: usize = 16 << 10;
/// How much of the end of a check's output is kept.
pub(crate) const OUTPUT_TAIL: usize = 48 << 10;

/// The operator's check.
#[derive(Debug, Clone)]
pub struct CheckCommand {
    pub command: String,
    /// Run `command` as a program, without a shell (git-sync's pre-publish hook), instead of
    /// `sh -c`.
    pub direct: bool,
    pub timeout: Duration,
    /// A writable directory of its own (`$DAGSNAP_HOOK_DIR`), kept between runs: the snapshot
    /// it runs in is read-only.
    pub work_dir: PathBuf,
}

/// What the check is told about the commit.
#[derive(Debug, Clone)]
pub(crate) struct CheckEnv<'a> {
    pub commit: &'a CommitId,
    pub previous: Option<&'a str>,
    pub ref_name: &'a str,
}

/// How a check ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ended {
    /// It exited with `code`, or was killed by `signal` (not one dagsnap sent).
    Exited {
        code: Option<i32>,
        signal: Option<i32>,
    },
    TimedOut,
    /// Stopped by the cycle's interrupt: no verdict.
    Abandoned,
    /// It could not be started (a wrong path, say): a rejection with the reason as output.
    NotStarted(String),
}

#[derive(Debug, Clone)]
pub(crate) struct Ran {
    pub ended: Ended,
    pub duration: Duration,
    pub output: String,
    /// Bytes of output dropped between the kept head and tail.
    pub output_dropped: u64,
}

/// Run `check` in `snapshot`:
///
/// 1. Start it in a process group of its own, in the snapshot, with the commit's environment
///    ([`command`]); a check that cannot be started is a verdict too.
/// 2. Collect its output (the head and tail of stdout and stderr together) on threads of its own
///    ([`collect`]).
/// 3. Wait for it to end, killing its group at `--check-timeout` or when the cycle is
///    interrupted ([`wait`]).
/// 4. Kill whatever it left behind in its group, and take what it printed.
pub(crate) fn run(
    check: &CheckCommand,
    snapshot: &Path,
    env: &CheckEnv,
    interrupt: &AtomicBool,
) -> Ran {
    let started = Instant::now();
    // (1)
    let spawned = crate::fsutil::ensure_private_dir(&check.work_dir)
        .map_err(|e| e.to_string())
        .and_then(|()| {
            command(check, snapshot, env)
                .spawn()
                .map_err(|e| e.to_string())
        });
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            return Ran {
                ended: Ended::NotStarted(format!("cannot start the check: {e}")),
                duration: started.elapsed(),
                output: format!("cannot start `{}`: {e}", check.command),
                output_dropped: 0,
            }
        }
    };
    // (2)
    let (kept, streams, finished) = collect(&mut child);
    // (3)
    let group = nix::unistd::Pid::from_raw(child.id() as i32);
    let ended = wait(&mut child, group, check.timeout, started, interrupt);
    // (4) A process that left the group may still hold the output pipes: wait a moment for
    // them, not forever.
    let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
    for _ in 0..streams {
        if finished.recv_timeout(Duration::from_secs(1)).is_err() {
            break;
        }
    }
    let (output, output_dropped) = kept.lock().unwrap_or_else(|p| p.into_inner()).text();
    Ran {
        ended,
        duration: started.elapsed(),
        output,
        output_dropped,
    }
}

/// The check's command: run directly or through `sh -c`, in the snapshot, with the commit's
/// environment, in a process group of its own.
fn command(check: &CheckCommand, snapshot: &Path, env: &CheckEnv) -> Command {
    let mut command = if check.direct {
        Command::new(&check.command)
    } else {
        let mut sh = Command::new("sh");
        sh.arg("-c").arg(&check.command);
        sh
    };
    command
        .current_dir(snapshot)
        .env("DAGSNAP_HOOK_DIR", &check.work_dir)
        .env("DAGSNAP_COMMIT", env.commit)
        .env("GITSYNC_HASH", env.commit)
        .env("DAGSNAP_SNAPSHOT", snapshot)
        .env("DAGSNAP_PREVIOUS", env.previous.unwrap_or(""))
        .env("DAGSNAP_REF", env.ref_name)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if std::env::var_os("PYTHONDONTWRITEBYTECODE").is_none() {
        command.env("PYTHONDONTWRITEBYTECODE", "1");
    }
    command
}

/// Read the child's stdout and stderr on threads of their own into one [`Kept`]; how many
/// streams, and where each says it ended.
fn collect(
    child: &mut std::process::Child,
) -> (Arc<Mutex<Kept>>, usize, std::sync::mpsc::Receiver<()>) {
    let kept = Arc::new(Mutex::new(Kept::default()));
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let streams = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ];
    let mut count = 0;
    for mut stream in streams.into_iter().flatten() {
        let (kept, done) = (Arc::clone(&kept), done.clone());
        count += 1;
        std::thread::spawn(move || {
            let mut buffer = [0u8; 8192];
            while let Ok(n) = stream.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                kept.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(&buffer[..n]);
            }
            let _ = done.send(());
        });
    }
    (kept, count, finished)
}

/// Wait for the child to end; kill its group at `timeout` or on `interrupt`.
fn wait(
    child: &mut std::process::Child,
    group: nix::unistd::Pid,
    timeout: Duration,
    started: Instant,
    interrupt: &AtomicBool,
) -> Ended {
    let kill = |child: &mut std::process::Child| {
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = child.wait();
    };
    loop {
        match child.try_wait() {
            // A check that dies as the interrupt arrives (the loop stops every process it
            // started once a cycle overruns) was stopped, not failed.
            Ok(Some(_)) if interrupt.load(Ordering::Relaxed) => return Ended::Abandoned,
            Ok(Some(status)) => {
                return Ended::Exited {
                    code: status.code(),
                    signal: status.signal(),
                }
            }
            Ok(None) => {}
            Err(e) => {
                kill(child);
                return Ended::NotStarted(format!("cannot wait for the check: {e}"));
            }
        }
        if interrupt.load(Ordering::Relaxed) {
            kill(child);
            return Ended::Abandoned;
        }
        if started.elapsed() >= timeout {
            kill(child);
            return Ended::TimedOut;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The head and tail of a stream of output, and how much fell between them.
#[derive(Debug, Default)]
struct Kept {
    head: Vec<u8>,
    tail: VecDeque<u8>,
    dropped: u64,
}

impl Kept {
    fn push(&mut self, mut bytes: &[u8]) {
        let room = OUTPUT_HEAD - self.head.len();
        let (first, rest) = bytes.split_at(room.min(bytes.len()));
        self.head.extend_from_slice(first);
        bytes = rest;
        self.tail.extend(bytes);
        let excess = self.tail.len().saturating_sub(OUTPUT_TAIL);
        self.tail.drain(..excess);
        self.dropped += excess as u64;
    }

    /// The kept text (invalid UTF-8 replaced), with a marker where bytes were dropped.
    fn text(&self) -> (String, u64) {
        let mut bytes = self.head.clone();
        if self.dropped > 0 {
            bytes.extend_from_slice(
                format!("\n[... {} bytes of output dropped ...]\n", self.dropped).as_bytes(),
            );
        }
        bytes.extend(self.tail.iter());
        (String::from_utf8_lossy(&bytes).into_owned(), self.dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_output_keeps_its_start_and_its_end() {
        let mut kept = Kept::default();
        kept.push(b"summary line\n");
        for _ in 0..10_000 {
            kept.push(&[b'x'; 100]);
        }
        kept.push(b"\nlast words");
        let (text, dropped) = kept.text();
        assert!(text.starts_with("summary line\n"));
        assert!(text.ends_with("last words"));
        assert!(text.contains("bytes of output dropped"));
        assert_eq!(
            dropped as usize + OUTPUT_HEAD + OUTPUT_TAIL,
            13 + 1_000_000 + 11
        );
    }

    #[test]
    fn short_output_is_kept_whole() {
        let mut kept = Kept::default();
        kept.push(b"ok\n");
        assert_eq!(kept.text(), ("ok\n".to_string(), 0));
    }
}
