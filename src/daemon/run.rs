//! The sync loop: when to run a cycle, how long to let it run, what to do when it fails, and
//! how to stop.
//!
//! Cycles run one at a time on a blocking thread (gix is blocking). The loop itself only waits:
//! for the cycle, for its deadline, for the next poll, and for signals.
//!
//! - SIGTERM / SIGINT: raise the cycle's interrupt flag, let the cycle finish or abandon its
//!   staging directory, exit 0. A publish that already reached the link swap completes.
//! - SIGHUP: start the next cycle now.
//! - A failed cycle leaves the link alone, is logged, and is retried after a jittered
//!   exponential backoff; only a configured failure budget makes the process exit.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};

use std::path::PathBuf;
use std::time::SystemTime;

use super::health::{CycleDone, Health};
use super::hooks::{self, ErrorRecord, ExecHook, HookEvent, Hooks, WebHook};
use super::http::{self, Auth};
use super::metrics::CycleReport;
use crate::daemon::publish::{Outcome, PublishError, Publisher, Timings};
use crate::progress::{Reporter, Style};
use crate::store::Root;

/// When and how persistently to sync.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub period: Duration,
    pub sync_timeout: Duration,
    /// Consecutive failures tolerated before giving up; `None` retries forever.
    pub failure_budget: Option<u64>,
    pub backoff_max: Duration,
    pub one_time: bool,
    /// How often long operations report progress in the logs.
    pub progress_interval: Duration,
    /// Until the first success after start: the wait between attempts (instead of the backoff).
    pub init_period: Option<Duration>,
    /// Until the first success after start: the failures tolerated.
    pub init_failure_budget: Option<u64>,
    /// A signal that starts a cycle now, besides SIGHUP.
    pub sync_signal: Option<i32>,
}

/// How the loop ended.
#[derive(Debug)]
pub enum Exit {
    /// A signal asked us to stop, or `--one-time` succeeded.
    Clean,
    /// The failure budget ran out.
    GaveUp { failures: u64, last_error: String },
    /// The publisher could not start (a wrong setting, an unusable root or cache): retrying
    /// will not help.
    Unusable { message: String },
}

/// Opens the publisher; called again while the cache is busy (see [`run`]).
pub type Opener = Arc<dyn Fn() -> Result<Publisher, PublishError> + Send + Sync>;

/// While another process holds the cache, how often to try to take it over.
const STANDBY_POLL: Duration = Duration::from_secs(1);

/// After SIGTERM, how long a cycle in flight may take to wind down before the loop gives up on
/// it and returns; the watchdog (`shutdown`) ends the process a little later if even the loop
/// cannot run.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(super::shutdown::SHUTDOWN_GRACE.as_secs() - 2);

/// After `--sync-timeout` fires, how long the cycle may take to notice its interrupt flag before
/// its transport processes are killed.
const HELPER_GRACE: Duration = Duration::from_secs(1);

/// What the loop shows the outside world besides the link.
#[derive(Debug, Default)]
pub struct Surface {
    /// `--http-bind`, already bound, and who may `POST /sync`.
    pub http: Option<(std::net::TcpListener, Auth)>,
    pub exec_hook: Option<ExecHook>,
    pub web_hook: Option<WebHook>,
    /// `--touch-file`, absolute.
    pub touch_file: Option<PathBuf>,
    /// `--error-file`, absolute.
    pub error_file: Option<PathBuf>,
    pub ready_max_age: Option<Duration>,
    /// `--check-command` is set: its metric series start at zero.
    pub checks: bool,
}

/// Open the publisher (standing by while its cache is busy), then run cycles until a signal, a
/// one-time success, or the failure budget ends the loop.
///
/// Around each cycle: its start and end go to the [`Health`] state (liveness, readiness, the
/// metrics, callers of `POST /sync?wait=1`); a publish, and the first success after start (as
/// git-sync counts it), touch the touch file and hand the publication to the hooks; a failure
/// writes the error file, a success removes it. Between cycles the loop waits for the period
/// (or its backoff), a signal, or a `POST /sync`.
pub async fn run(
    open: Opener,
    root: Root,
    schedule: Schedule,
    surface: Surface,
    style: Style,
) -> std::io::Result<Exit> {
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    super::shutdown::arm()?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut sync_signal = match schedule
        .sync_signal
        .filter(|s| *s != nix::sys::signal::Signal::SIGHUP as i32)
    {
        Some(number) => Some(signal(SignalKind::from_raw(number))?),
        None => None,
    };
    let health = Arc::new(Health::new(
        root,
        schedule.period,
        schedule.sync_timeout,
        surface.ready_max_age,
    ));
    if surface.checks {
        health.metrics.check_configured();
    }
    let mut surface = surface;
    if let Some((listener, auth)) = surface.http.take() {
        tracing::info!(address = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "serving /healthz, /readyz, /metrics and POST /sync");
        tokio::spawn(http::serve(listener, Arc::clone(&health), Arc::new(auth)));
    }
    // A one-time sync (an init container) waits for a busy cache at most a cycle's length.
    let patience = schedule.one_time.then_some(schedule.sync_timeout);
    health.standing_by(true);
    let publisher = match stand_by(&open, patience, &mut sigterm, &mut sigint).await {
        Ok(Some(publisher)) => publisher,
        Ok(None) => return Ok(Exit::Clean),
        Err(message) => return Ok(Exit::Unusable { message }),
    };
    health.standing_by(false);
    let hooks = Hooks::start(
        surface.exec_hook.clone(),
        surface.web_hook.clone(),
        Arc::clone(&health),
        schedule.one_time,
    );
    let reporter = Reporter::start(style, schedule.progress_interval);
    let redactor = publisher.remote().redactor().clone();
    let mut publisher = Some(publisher);
    let mut failures: u64 = 0;
    let mut held = None;
    let mut synced_once = false;

    loop {
        let Some(mut owned) = publisher.take() else {
            // Only reachable if a cycle's thread panicked and took the publisher with it.
            return Ok(Exit::GaveUp {
                failures,
                last_error: "internal error: the sync worker was lost".into(),
            });
        };
        let cycle = health.cycle_started();
        let cycle_started = std::time::Instant::now();
        let interrupt = Arc::new(AtomicBool::new(false));
        let mut task = tokio::task::spawn_blocking({
            let interrupt = Arc::clone(&interrupt);
            let tree = reporter.shared_tree();
            move || {
                let result = owned.cycle(&tree, &interrupt);
                (owned, result)
            }
        });

        let deadline = tokio::time::sleep(schedule.sync_timeout);
        tokio::pin!(deadline);
        let grace = tokio::time::sleep(Duration::MAX);
        tokio::pin!(grace);
        let reap = tokio::time::sleep(Duration::MAX);
        tokio::pin!(reap);
        let (mut timed_out, mut terminating) = (false, false);
        let joined = loop {
            tokio::select! {
                joined = &mut task => break joined,
                _ = &mut deadline, if !timed_out => {
                    timed_out = true;
                    interrupt.store(true, Ordering::Relaxed);
                    reap.as_mut().reset(tokio::time::Instant::now() + HELPER_GRACE);
                    tracing::warn!(timeout = %humantime::format_duration(schedule.sync_timeout), "sync cycle exceeded --sync-timeout, abandoning it");
                }
                _ = &mut reap, if timed_out => {
                    // The cycle is still blocked, most likely reading from a transport helper
                    // (ssh, git upload-pack) whose server went silent: the interrupt flag is only
                    // checked between reads. Killing the helpers ends the read with EOF. gix may
                    // retry the connection once it sees EOF, so keep at it until the cycle returns.
                    let killed = kill_descendants();
                    if !killed.is_empty() {
                        tracing::warn!(processes = killed.len(), "stopped the transport processes of the stalled cycle");
                    }
                    reap.as_mut().reset(tokio::time::Instant::now() + HELPER_GRACE);
                }
                _ = terminate(&mut sigterm, &mut sigint), if !terminating => {
                    terminating = true;
                    interrupt.store(true, Ordering::Relaxed);
                    grace.as_mut().reset(tokio::time::Instant::now() + SHUTDOWN_GRACE);
                    tracing::info!("stop requested; finishing or abandoning the cycle in flight");
                }
                _ = &mut grace, if terminating => {
                    tracing::warn!("cycle did not stop within {}; exiting, its staging directory is removed on the next start", humantime::format_duration(SHUTDOWN_GRACE));
                    return Ok(Exit::Clean);
                }
            }
        };

        let (mut owned, result) = match joined {
            Ok(pair) => pair,
            Err(e) => {
                return Ok(Exit::GaveUp {
                    failures: failures + 1,
                    last_error: format!("internal error in the sync worker: {e}"),
                })
            }
        };
        health.metrics.set_lock_fault(owned.lock_fault().is_some());
        if let Some(result) = owned.take_check_result() {
            health.metrics.record_check(result);
        }
        let timings = owned.timings();
        let followed_ref = owned.followed_ref();
        let root = owned.root().clone();
        publisher = Some(owned);

        let failed = match &result {
            Ok(outcome) => {
                report(outcome, &mut held);
                match outcome {
                    // Nothing is live and the remote's commit was rejected: an init container
                    // must not let Airflow start on an empty folder.
                    Outcome::Rejected { commit, verdict }
                        if schedule.one_time
                            && !matches!(root.current(), Ok(Some(c)) if c.complete) =>
                    {
                        Some(format!(
                            "commit {commit} was rejected by --check-command ({}) and no earlier snapshot is live: {}",
                            verdict.why(),
                            verdict.headline()
                        ))
                    }
                    _ => {
                        failures = 0;
                        None
                    }
                }
            }
            Err(e) if e.is_cancelled() && terminating => return Ok(Exit::Clean),
            Err(e) if e.is_contention() => {
                tracing::warn!(error = %redactor.redact(&render(e)), "skipping this cycle; another publisher of this root is busy");
                None
            }
            Err(e) if e.is_cancelled() && timed_out => Some(format!(
                "sync cycle took longer than --sync-timeout {}; raise it if the repository is large or the network slow",
                humantime::format_duration(schedule.sync_timeout)
            )),
            Err(e) => Some(redactor.redact(&render(e))),
        };
        if failed.is_some() {
            failures += 1;
        }
        let (done, first_success) = observe(
            &health,
            cycle,
            &result,
            failed.as_deref(),
            cycle_started.elapsed(),
            timings,
            followed_ref,
            &mut synced_once,
        );
        let previous = match &result {
            Ok(Outcome::Published { previous, .. }) => previous.clone(),
            _ => None,
        };
        after_cycle(
            &root,
            &health,
            &hooks,
            &surface,
            &done,
            AfterCycle {
                failed: failed.as_deref(),
                rejection: match &result {
                    Ok(Outcome::Rejected { commit, verdict }) => Some(format!(
                        "commit {commit} was rejected by --check-command ({}); the link stays where it was: {}",
                        verdict.why(),
                        verdict.headline()
                    )),
                    _ => None,
                },
                failures,
                first_success,
                previous,
            },
        );
        if terminating {
            return Ok(Exit::Clean);
        }
        if schedule.one_time && failed.is_none() && done.outcome != "skipped" {
            if hooks.is_empty() || hooks.finish().await {
                return Ok(Exit::Clean);
            }
            return Ok(Exit::GaveUp {
                failures: 1,
                last_error: "a hook failed after the sync (see above)".into(),
            });
        }

        // Before the first success, --init-max-failures and --init-period apply.
        let (budget, init_wait) = if synced_once {
            (schedule.failure_budget, None)
        } else {
            (schedule.init_failure_budget, schedule.init_period)
        };
        let throttled = match &result {
            Ok(Outcome::Throttled { wait, .. }) => Some(*wait),
            _ => None,
        };
        let wait = match failed {
            // Come back when the interval ends, so that the newest commit goes live then.
            None => throttled.map_or(schedule.period, |w| schedule.period.min(w)),
            Some(message) => {
                if budget.is_some_and(|budget| failures > budget) {
                    if let Some(publisher) = publisher.take() {
                        publisher.abandon_first_start();
                    }
                    return Ok(Exit::GaveUp {
                        failures,
                        last_error: message,
                    });
                }
                let wait = init_wait
                    .unwrap_or_else(|| backoff(schedule.period, schedule.backoff_max, failures));
                tracing::error!(error = %message, consecutive_failures = failures, retry_in = %humantime::format_duration(round_ms(wait)), "sync failed; the published snapshot is unchanged");
                wait
            }
        };
        health.planned(wait);

        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = terminate(&mut sigterm, &mut sigint) => {
                tracing::info!("stop requested; exiting");
                return Ok(Exit::Clean);
            }
            _ = sighup.recv() => tracing::info!("SIGHUP received; syncing now"),
            _ = recv_optional(&mut sync_signal) => tracing::info!("--sync-on-signal signal received; syncing now"),
            _ = health.trigger.notified() => tracing::info!("sync requested over HTTP; syncing now"),
        }
    }
}

/// Tell the health state and the metrics what a cycle did; returns its summary, and whether it
/// is the first success since start (git-sync runs its hooks and counts a sync for that one).
#[allow(clippy::too_many_arguments)]
fn observe(
    health: &Health,
    cycle: u64,
    result: &Result<Outcome, PublishError>,
    failed: Option<&str>,
    duration: Duration,
    timings: Timings,
    followed_ref: Option<String>,
    synced_once: &mut bool,
) -> (CycleDone, bool) {
    let (outcome, commit) = match (result, failed) {
        (_, Some(_)) => ("failed", None),
        (Ok(Outcome::Published { commit, .. }), None) => ("published", Some(commit.clone())),
        (Ok(Outcome::Unchanged { commit }), None) => ("unchanged", Some(commit.clone())),
        // The link is right: it holds everything the remote's commit publishes.
        (Ok(Outcome::Same { live, .. }), None) => ("unchanged", Some(live.clone())),
        (Ok(Outcome::Held { commit, .. }), None) => ("held", Some(commit.clone())),
        (Ok(Outcome::Superseded { commit, .. }), None) => ("superseded", Some(commit.clone())),
        (Ok(Outcome::Deferred { commit, .. }), None) => ("deferred", Some(commit.clone())),
        (Ok(Outcome::Throttled { commit, .. }), None) => ("throttled", Some(commit.clone())),
        (Ok(Outcome::Rejected { commit, .. }), None) => ("rejected", Some(commit.clone())),
        (Err(_), None) => ("skipped", None),
    };
    // git-sync counts a sync that changed something, and the first one, as a success.
    let git_sync_status = match outcome {
        // git-sync counts a pre-publish hook that fails as a failed sync.
        "failed" | "rejected" => "error",
        "skipped" => "noop",
        "published" => "success",
        _ if !*synced_once => "success",
        _ => "noop",
    };
    let built = match result {
        Ok(Outcome::Published { built, .. }) => *built,
        _ => None,
    };
    health.metrics.record_cycle(&CycleReport {
        result: outcome,
        git_sync_status,
        duration,
        fetch: timings.fetch,
        build: timings.build,
        publish: timings.publish,
        lock_wait: timings.lock_wait,
        fetched: timings.fetched,
        built,
    });
    let done = CycleDone {
        cycle,
        outcome,
        commit,
        error: failed.map(str::to_string),
    };
    health.cycle_finished(done.clone(), followed_ref, failed.is_some());
    let first_success = !matches!(outcome, "failed" | "skipped") && !*synced_once;
    if first_success {
        *synced_once = true;
    }
    (done, first_success)
}

/// What [`after_cycle`] needs to know besides the cycle's summary.
struct AfterCycle<'a> {
    failed: Option<&'a str>,
    /// The check's rejection of the remote's commit, as the error file says it.
    rejection: Option<String>,
    failures: u64,
    first_success: bool,
    previous: Option<String>,
}

/// The side effects of a cycle outside the root's store: the error file, the touch file, the
/// hooks, and the metrics that describe the root.
fn after_cycle(
    root: &Root,
    health: &Health,
    hooks: &Hooks,
    surface: &Surface,
    done: &CycleDone,
    after: AfterCycle<'_>,
) {
    let (touch_file, error_file) = (&surface.touch_file, &surface.error_file);
    let (failed, failures) = (after.failed, after.failures);
    let current = root.current().ok().flatten();
    health.metrics.set_root(
        current
            .as_ref()
            .filter(|c| c.complete)
            .map(|c| c.commit.as_str()),
        root.snapshot_commits().map(|c| c.len()).unwrap_or(0),
        root.pinned().ok().flatten().is_some(),
    );
    if let (Some(path), Some(error)) = (error_file, failed) {
        let record = ErrorRecord {
            time: SystemTime::now(),
            error,
            consecutive_failures: failures,
        };
        if let Err(e) = hooks::write_error(path, &record) {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the error file");
        }
        return;
    }
    if done.outcome == "skipped" {
        return;
    }
    // A rejected commit is no failure of the loop (what is live is good), but it is the error
    // an operator must see.
    if let (Some(path), Some(rejection)) = (error_file, &after.rejection) {
        let record = ErrorRecord {
            time: SystemTime::now(),
            error: rejection,
            consecutive_failures: 0,
        };
        if let Err(e) = hooks::write_error(path, &record) {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the error file");
        }
        return;
    }
    if let Some(path) = error_file {
        if let Err(e) = hooks::clear_error(path) {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove the error file");
        }
    }
    // A publish, or the first success after start (git-sync runs its hooks then too).
    if done.outcome != "published" && !after.first_success {
        return;
    }
    let Some(current) = current.filter(|c| c.complete) else {
        return;
    };
    if let Some(path) = touch_file {
        if let Err(e) = hooks::touch(path) {
            tracing::warn!(path = %path.display(), error = %e, "cannot touch the touch file");
        }
    }
    hooks.publish(&HookEvent {
        previous: after.previous,
        snapshot: current.dir.clone(),
        ref_name: health.followed_ref().unwrap_or_default(),
        commit: current.commit,
        time: SystemTime::now(),
    });
}

/// Open the publisher. A second process started with the same configuration on one host finds
/// the cache busy: instead of exiting (and being restarted by its supervisor, over and over), it
/// stands by, says so once, and takes over when the first one stops. A signal ends the wait,
/// and so does `patience` running out (then the busy cache is the error). Any other failure to
/// open is returned: retrying will not help.
async fn stand_by(
    open: &Opener,
    patience: Option<Duration>,
    sigterm: &mut tokio::signal::unix::Signal,
    sigint: &mut tokio::signal::unix::Signal,
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
            _ = terminate(sigterm, sigint) => {
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
                if !waiting {
                    tracing::info!(reason = %render(&e), "standing by: another dagsnap process with this configuration runs on this host; this one takes over when it stops");
                    waiting = true;
                }
            }
            Err(e) => return Err(render(&e)),
        }
        tokio::select! {
            _ = tokio::time::sleep(STANDBY_POLL) => {}
            _ = terminate(sigterm, sigint) => {
                tracing::info!("stop requested while standing by; exiting");
                return Ok(None);
            }
        }
    }
}

/// The next delivery of an optional signal; never, without one.
async fn recv_optional(signal: &mut Option<tokio::signal::unix::Signal>) {
    match signal {
        Some(signal) => {
            signal.recv().await;
        }
        None => std::future::pending().await,
    }
}

async fn terminate(
    sigterm: &mut tokio::signal::unix::Signal,
    sigint: &mut tokio::signal::unix::Signal,
) {
    tokio::select! {
        _ = sigterm.recv() => {}
        _ = sigint.recv() => {}
    }
}

/// Log what a cycle did. `held` remembers the last (remote commit, pinned commit) reported, so
/// a pinned root says so once per new remote commit rather than at every poll.
fn report(outcome: &Outcome, held: &mut Option<(String, String)>) {
    match outcome {
        Outcome::Held { commit, pin } => {
            let now = Some((commit.clone(), pin.commit.clone()));
            if *held != now {
                const HELD: &str = "the root is pinned; not moving the link to the remote's commit (dagsnap unpin releases it)";
                if pin.reason.is_empty() {
                    tracing::info!(remote = %commit, pinned = %pin.commit, pinned_by = %pin.pinned_by, "{HELD}");
                } else {
                    tracing::info!(remote = %commit, pinned = %pin.commit, pinned_by = %pin.pinned_by, reason = %pin.reason, "{HELD}");
                }
                *held = now;
            } else {
                tracing::debug!(remote = %commit, pinned = %pin.commit, "pinned; link left alone");
            }
            return;
        }
        Outcome::Deferred {
            commit,
            git_sync,
            quiet_for,
        } => {
            let now = Some(("git-sync".to_string(), git_sync.clone()));
            if *held != now {
                tracing::info!(remote = %commit, git_sync_commit = %git_sync, git_sync_wrote_ago = %humantime::format_duration(Duration::from_secs(quiet_for.as_secs())), "git-sync still writes this root; the snapshot is ready, and the link moves once git-sync has left the root alone for --adopt-after");
                *held = now;
            } else {
                tracing::debug!(remote = %commit, git_sync_commit = %git_sync, "waiting for git-sync to go quiet");
            }
            return;
        }
        Outcome::Rejected { commit, verdict } => {
            let now = Some(("rejected".to_string(), commit.clone()));
            if *held != now {
                tracing::warn!(%commit, why = %verdict.why(), output = %verdict.excerpt(20).join(" | "), "the check rejected this commit; the link stays where it is (`dagsnap recheck` runs the check again)");
                *held = now;
            } else {
                tracing::debug!(%commit, "rejected by the check earlier; not checked again");
            }
            return;
        }
        Outcome::Throttled { commit, wait } => {
            tracing::info!(%commit, goes_live_in = %humantime::format_duration(round_ms(*wait)), "the link moved less than --min-publish-interval ago; the new snapshot is ready");
            return;
        }
        Outcome::Unchanged { commit } => tracing::debug!(%commit, "up to date"),
        Outcome::Same { commit, live } => {
            tracing::debug!(%commit, %live, "up to date: the commit changes nothing published")
        }
        Outcome::Published {
            commit,
            previous,
            built,
            elapsed,
        } => tracing::info!(
            %commit,
            previous = previous.as_deref().unwrap_or("none"),
            files = built.map(|b| b.files),
            bytes = built.map(|b| b.bytes),
            reused = built.map(|b| b.reused),
            elapsed_ms = elapsed.as_millis() as u64,
            "published"
        ),
        Outcome::Superseded { commit, current } => tracing::info!(
            %commit,
            %current,
            "another publisher already published a newer state of the remote; link left alone"
        ),
    }
    *held = None;
}

/// SIGKILL every process descended from this one; returns the pids signalled.
///
/// dagsnap itself starts no processes; its descendants are the transport helpers gix spawns
/// (`ssh`, `git upload-pack` for local remotes) and whatever those started, such as a shell
/// running `core.sshCommand`. Killing the whole subtree closes every copy of the pipes a blocked
/// read is waiting on.
fn kill_descendants() -> Vec<i32> {
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

fn render(error: &PublishError) -> String {
    crate::git::error_chain(error)
}

/// Exponential backoff from `period`, capped at `max`, with "equal jitter" (half fixed, half
/// random) so that publishers that failed together do not retry together.
fn backoff(period: Duration, max: Duration, failures: u64) -> Duration {
    let exponent = failures.saturating_sub(1).min(20) as u32;
    let full = period
        .saturating_mul(2u32.saturating_pow(exponent))
        .min(max.max(period));
    let half = full / 2;
    half + half.mul_f64(rand::random::<f64>())
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_then_caps_and_jitters() {
        let period = Duration::from_secs(10);
        let max = Duration::from_secs(300);
        for failures in 1..=30 {
            let full = (period * 2u32.pow((failures - 1).min(20) as u32)).min(max);
            let waits: std::collections::BTreeSet<Duration> =
                (0..50).map(|_| backoff(period, max, failures)).collect();
            for wait in &waits {
                assert!(
                    *wait >= full / 2 && *wait <= full,
                    "failures={failures} wait={wait:?}"
                );
            }
            // Jitter: publishers that failed together do not retry together.
            assert!(waits.len() > 25, "failures={failures}: {waits:?}");
        }
    }
}
