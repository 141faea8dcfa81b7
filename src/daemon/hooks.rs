//! What runs after a publish: an exec hook (`--exechook-command`) and a webhook
//! (`--webhook-url`), and the touch and error files.
//!
//! Each hook has a worker task beside the loop, fed through a channel that keeps only the
//! newest publication: when commits publish faster than a hook runs, it runs for the newest,
//! and a hook that fails is retried after its backoff unless a newer commit replaced it
//! meanwhile. The loop hands an event over and moves on; a hook that hangs or a receiver that
//! is down never delays a cycle. Every run is bounded by its timeout (an exec hook's whole
//! process group is killed), its output is kept to the last [`OUTPUT_TAIL`] bytes, and its
//! outcome is logged and counted.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::io::AsyncReadExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::health::Health;
use crate::commit::CommitId;

/// How much of a hook's output is kept (the end of it).
pub(crate) const OUTPUT_TAIL: usize = 64 << 10;

/// A publication, as hooks see it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct HookEvent {
    pub commit: CommitId,
    pub previous: Option<CommitId>,
    /// The snapshot directory (the exec hook's working directory).
    pub snapshot: PathBuf,
    #[serde(rename = "ref")]
    pub ref_name: String,
    #[serde(with = "crate::store::rfc3339")]
    pub time: SystemTime,
}

#[derive(Debug, Clone)]
pub struct ExecHook {
    pub command: String,
    /// Run `command` as a program, without a shell (git-sync's way), instead of `sh -c`.
    pub direct: bool,
    pub timeout: Duration,
    pub backoff: Duration,
    /// A writable directory of its own (`$DAGSNAP_HOOK_DIR`), kept between runs: the snapshot
    /// it runs in is read-only.
    pub work_dir: PathBuf,
}

#[derive(Debug, Clone)]
pub struct WebHook {
    pub url: String,
    pub method: String,
    /// The status that means success; 0 takes any response.
    pub success_status: u16,
    pub timeout: Duration,
    pub backoff: Duration,
}

/// The running hook workers.
pub(crate) struct Hooks {
    senders: Vec<watch::Sender<Option<HookEvent>>>,
    workers: Vec<JoinHandle<bool>>,
    /// Process groups of exec hooks running now, killed when the hooks stop.
    running: Arc<AtomicI32>,
}

impl Hooks {
    /// Start a worker per configured hook. With `one_time`, a failed run is not retried: the
    /// process reports it in its exit status instead ([`Hooks::finish`]).
    pub(crate) fn start(
        exec: Option<ExecHook>,
        web: Option<WebHook>,
        health: Arc<Health>,
        one_time: bool,
    ) -> Hooks {
        let running = Arc::new(AtomicI32::new(0));
        let mut hooks = Hooks {
            senders: Vec::new(),
            workers: Vec::new(),
            running: Arc::clone(&running),
        };
        if let Some(exec) = exec {
            let (sender, receiver) = watch::channel(None);
            let runner = Runner::Exec(exec, Arc::clone(&running));
            health.metrics.hook_configured(runner.name());
            hooks.senders.push(sender);
            hooks.workers.push(tokio::spawn(work(
                runner,
                receiver,
                Arc::clone(&health),
                one_time,
            )));
        }
        if let Some(web) = web {
            let client = reqwest::Client::builder().timeout(web.timeout).build();
            match client {
                Ok(client) => {
                    health.metrics.hook_configured("web");
                    let (sender, receiver) = watch::channel(None);
                    hooks.senders.push(sender);
                    hooks.workers.push(tokio::spawn(work(
                        Runner::Web(web, client),
                        receiver,
                        health,
                        one_time,
                    )));
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot set up the webhook's HTTP client; the webhook is off")
                }
            }
        }
        hooks
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.senders.is_empty()
    }

    /// Hand a publication to every hook (replacing one that has not started yet).
    pub(crate) fn publish(&self, event: &HookEvent) {
        for sender in &self.senders {
            sender.send_replace(Some(event.clone()));
        }
    }

    /// Let the hooks finish what they were handed, then stop them; whether every last run
    /// succeeded (for `--one-time`, whose exit status says so).
    pub(crate) async fn finish(mut self) -> bool {
        self.senders.clear();
        let mut all = true;
        for worker in std::mem::take(&mut self.workers) {
            all &= worker.await.unwrap_or(false);
        }
        all
    }
}

impl Drop for Hooks {
    fn drop(&mut self) {
        for worker in &self.workers {
            worker.abort();
        }
        let group = self.running.load(Ordering::Relaxed);
        if group > 0 {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(group),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

enum Runner {
    Exec(ExecHook, Arc<AtomicI32>),
    Web(WebHook, reqwest::Client),
}

/// Why a run failed.
#[derive(Debug)]
enum Failure {
    Failed(String),
    TimedOut(String),
}

impl Runner {
    fn name(&self) -> &'static str {
        match self {
            Runner::Exec(..) => "exec",
            Runner::Web(..) => "web",
        }
    }

    fn backoff(&self) -> Duration {
        match self {
            Runner::Exec(hook, _) => hook.backoff,
            Runner::Web(hook, _) => hook.backoff,
        }
    }

    async fn run(&self, event: &HookEvent) -> Result<(), Failure> {
        match self {
            Runner::Exec(hook, running) => exec(hook, event, running).await,
            Runner::Web(hook, client) => web(hook, client, event).await,
        }
    }
}

/// A hook's worker: run it for the newest event, retry failures after the backoff until they
/// succeed or a newer event replaces them. Returns whether the last run succeeded.
async fn work(
    runner: Runner,
    mut events: watch::Receiver<Option<HookEvent>>,
    health: Arc<Health>,
    one_time: bool,
) -> bool {
    let name = runner.name();
    let mut succeeded = true;
    loop {
        if events.changed().await.is_err() {
            return succeeded;
        }
        let Some(mut event) = events.borrow_and_update().clone() else {
            continue;
        };
        loop {
            match runner.run(&event).await {
                Ok(()) => {
                    health.metrics.record_hook(name, "success");
                    tracing::info!(hook = name, commit = %event.commit, "hook succeeded");
                    succeeded = true;
                    break;
                }
                Err(failure) => {
                    let (result, detail) = match &failure {
                        Failure::Failed(detail) => ("failure", detail),
                        Failure::TimedOut(detail) => ("timeout", detail),
                    };
                    health.metrics.record_hook(name, result);
                    succeeded = false;
                    tracing::warn!(hook = name, commit = %event.commit, result, detail = %crate::text::escape(detail), retry_in = %humantime::format_duration(runner.backoff()), "hook failed");
                    if one_time {
                        break;
                    }
                    // Retry after the backoff, with the newest event if one arrived meanwhile.
                    tokio::select! {
                        _ = tokio::time::sleep(runner.backoff()) => {}
                        changed = events.changed() => {
                            if changed.is_err() {
                                return succeeded;
                            }
                            if let Some(newer) = events.borrow_and_update().clone() {
                                event = newer;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Run the exec hook: `sh -c COMMAND` (or COMMAND itself) in the snapshot, in a process group of its own so that
/// a timeout kills everything it started.
async fn exec(hook: &ExecHook, event: &HookEvent, running: &AtomicI32) -> Result<(), Failure> {
    let (program, shell) = if hook.direct {
        (hook.command.as_str(), None)
    } else {
        ("sh", Some(hook.command.as_str()))
    };
    crate::fsutil::ensure_private_dir(&hook.work_dir)
        .map_err(|e| Failure::Failed(format!("cannot make the hook's directory: {e}")))?;
    let mut command = tokio::process::Command::new(program);
    if let Some(script) = shell {
        command.arg("-c").arg(script);
    }
    command
        .current_dir(&event.snapshot)
        .env("DAGSNAP_HOOK_DIR", &hook.work_dir)
        .env("DAGSNAP_COMMIT", &event.commit)
        .env("GITSYNC_HASH", &event.commit)
        .env("DAGSNAP_PREVIOUS", event.previous.as_deref().unwrap_or(""))
        .env("DAGSNAP_SNAPSHOT", &event.snapshot)
        .env("DAGSNAP_REF", &event.ref_name)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .map_err(|e| Failure::Failed(format!("cannot start {program}: {e}")))?;
    let group = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .unwrap_or(0);
    running.store(group, Ordering::Relaxed);
    let output = Arc::new(Mutex::new(VecDeque::new()));
    let readers = [
        child
            .stdout
            .take()
            .map(|out| tokio::spawn(tail_into(out, Arc::clone(&output)))),
        child
            .stderr
            .take()
            .map(|err| tokio::spawn(tail_into(err, Arc::clone(&output)))),
    ];
    let waited = tokio::time::timeout(hook.timeout, child.wait()).await;
    if waited.is_err() && group > 0 {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(group),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = child.wait().await;
    }
    running.store(0, Ordering::Relaxed);
    for reader in readers.into_iter().flatten() {
        let _ = tokio::time::timeout(Duration::from_secs(1), reader).await;
    }
    let output = {
        let tail = output.lock().unwrap_or_else(|p| p.into_inner());
        String::from_utf8_lossy(&tail.iter().copied().collect::<Vec<u8>>()).into_owned()
    };
    match waited {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(Failure::Failed(format!("{status}; output: {output}"))),
        Ok(Err(e)) => Err(Failure::Failed(format!("cannot wait for it: {e}"))),
        Err(_) => Err(Failure::TimedOut(format!(
            "killed after --exechook-timeout {}; output: {output}",
            humantime::format_duration(hook.timeout)
        ))),
    }
}

/// Read all of `stream`, keeping its last [`OUTPUT_TAIL`] bytes (shared by stdout and stderr).
async fn tail_into(mut stream: impl AsyncReadExt + Unpin, tail: Arc<Mutex<VecDeque<u8>>>) {
    let mut buf = [0u8; 8192];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let mut tail = tail.lock().unwrap_or_else(|p| p.into_inner());
        tail.extend(&buf[..n]);
        let excess = tail.len().saturating_sub(OUTPUT_TAIL);
        tail.drain(..excess);
    }
}

/// Call the webhook with the publication as JSON (and git-sync's `Gitsync-Hash` header).
async fn web(hook: &WebHook, client: &reqwest::Client, event: &HookEvent) -> Result<(), Failure> {
    let method = reqwest::Method::from_bytes(hook.method.as_bytes())
        .map_err(|_| Failure::Failed(format!("invalid --webhook-method {}", hook.method)))?;
    let response = client
        .request(method, &hook.url)
        .header("Gitsync-Hash", event.commit.as_str())
        .header("Content-Type", "application/json")
        .body(serde_json::to_vec(event).unwrap_or_default())
        .send()
        .await
        .map_err(|e| {
            // The URL may hold a secret in its path or query (many receivers work that way):
            // errors never quote it.
            let timed_out = e.is_timeout();
            let text = crate::git::error_chain(&e.without_url());
            if timed_out {
                Failure::TimedOut(text)
            } else {
                Failure::Failed(text)
            }
        })?;
    let status = response.status().as_u16();
    if hook.success_status != 0 && status != hook.success_status {
        return Err(Failure::Failed(format!(
            "answered {status}, expected {}",
            hook.success_status
        )));
    }
    Ok(())
}

/// `--touch-file`: create it, or bump its modification time, after every publish.
pub(crate) fn touch(path: &Path) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    file.set_modified(SystemTime::now())
}

/// `--error-file`: the last error, as JSON, written atomically; removed after a success.
#[derive(Debug, Serialize)]
pub(crate) struct ErrorRecord<'a> {
    #[serde(with = "crate::store::rfc3339")]
    pub time: SystemTime,
    pub error: &'a str,
    pub consecutive_failures: u64,
}

pub(crate) fn write_error(path: &Path, record: &ErrorRecord<'_>) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut bytes = serde_json::to_vec_pretty(record).unwrap_or_default();
    bytes.push(b'\n');
    crate::fsutil::write_atomically(path, &bytes).map_err(|e| e.source)
}

pub(crate) fn clear_error(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
