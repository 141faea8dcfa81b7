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

//!
//! - `report`: what the loop says about a cycle once it ended (health, metrics, files, hooks,
//!   the log).
//! - `signals`: the signals the loop answers, standing by for a busy cache, and ending a
//!   stalled cycle's helpers.

mod report;
mod signals;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::health::{CycleDone, Health};
use super::hooks::{ExecHook, Hooks, WebHook};
use super::http::{self, Auth};
use crate::daemon::publish::{Outcome, PublishError, Publisher, Timings};
use crate::git::redact::Redactor;
use crate::progress::{Reporter, Style};
use crate::store::Root;
use report::{report, round_ms, AfterCycle, Said};
use signals::{kill_descendants, stand_by, Signals, Wake};

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
pub(crate) type Opener = Arc<dyn Fn() -> Result<Publisher, PublishError> + Send + Sync>;

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
    /// `--verify-signatures` is set: its refusal series start at zero.
    pub signatures: bool,
    /// `--keep`, for the metrics.
    pub keep: usize,
}

/// Open the publisher (standing by while its cache is busy), then run cycles until a signal, a
/// one-time success, or the failure budget ends the loop. Each turn of the loop:
///
/// 1. **Run** the cycle on a blocking thread, within `--sync-timeout` (then its interrupt is
///    raised and its transport helpers are killed until it returns) and answering SIGTERM
///    (the cycle is interrupted and given [`SHUTDOWN_GRACE`]) ([`Loop::supervise`]).
/// 2. **Judge** what it did: a failure (counted), contention (skipped), or a success; an init
///    container whose only commit was rejected fails ([`Loop::judge`]).
/// 3. **Report** it: to the [`Health`] state (liveness, readiness, the metrics, callers of
///    `POST /sync?wait=1`); a publish, and the first success after start (as git-sync counts
///    it), touch the touch file and hand the publication to the hooks; a failure writes the
///    error file, a success removes it (`report`).
/// 4. **End** on a stop request, a one-time success (once the hooks finished), or a failure
///    budget spent; else **wait** for the period (the backoff after a failure, the end of
///    `--min-publish-interval`), a signal, or a `POST /sync` ([`Loop::wait_next`]).
pub async fn run(
    open: Opener,
    root: Root,
    schedule: Schedule,
    mut surface: Surface,
    style: Style,
) -> std::io::Result<Exit> {
    let mut signals = Signals::install(schedule.sync_signal)?;
    super::shutdown::arm()?;
    let health = Arc::new(Health::new(
        root,
        schedule.period,
        schedule.sync_timeout,
        surface.ready_max_age,
    ));
    health
        .metrics
        .set_configuration(schedule.period, surface.keep);
    if surface.checks {
        health.metrics.check_configured();
    }
    if surface.signatures {
        health.metrics.signatures_configured();
    }
    let mut serves = Vec::new();
    if let Some((listener, auth)) = surface.http.take() {
        health.metrics.versions_served();
        tracing::info!(address = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "serving /healthz, /readyz, /metrics, POST /sync and POST /versions/<commit>");
        serves = listener.local_addr().map(http::urls).unwrap_or_default();
        tokio::spawn(http::serve(listener, Arc::clone(&health), Arc::new(auth)));
    }
    // A one-time sync (an init container) waits for a busy cache at most a cycle's length.
    let patience = schedule.one_time.then_some(schedule.sync_timeout);
    health.standing_by(true);
    let mut publisher = match stand_by(&open, patience, &mut signals).await {
        Ok(Some(publisher)) => publisher,
        Ok(None) => return Ok(Exit::Clean),
        Err(message) => return Ok(Exit::Unusable { message }),
    };
    health.standing_by(false);
    publisher.announce(serves);
    let mut looper = Loop {
        hooks: Hooks::start(
            surface.exec_hook.clone(),
            surface.web_hook.clone(),
            Arc::clone(&health),
            schedule.one_time,
        ),
        reporter: Reporter::start(style, schedule.progress_interval),
        redactor: publisher.redactor().clone(),
        publisher: Some(publisher),
        schedule,
        surface,
        health,
        signals,
        failures: 0,
        said: Said::default(),
        synced_once: false,
        held_back_since: None,
    };
    loop {
        // (1)
        let ran = match looper.supervise().await {
            Ok(ran) => ran,
            Err(exit) => return Ok(exit),
        };
        // (2)
        let failed = match looper.judge(&ran) {
            Ok(failed) => failed,
            Err(exit) => return Ok(exit),
        };
        // (3)
        let done = looper.report_cycle(&ran, failed.as_deref());
        // (4)
        if ran.terminating {
            return Ok(Exit::Clean);
        }
        if looper.schedule.one_time && failed.is_none() && done.outcome != "skipped" {
            // The tip is ready but may not go live yet (git-sync still writes the root, or
            // --min-publish-interval): a one-time run publishes it or fails, never exits 0
            // with an older tree live.
            if let Some(exit) = looper.held_back(&ran) {
                return Ok(exit);
            }
            if looper.held_back_since.is_some() {
                if let Some(exit) = looper.wait_next(&ran, None).await {
                    return Ok(exit);
                }
                continue;
            }
            if looper.hooks.is_empty() || looper.hooks.finish().await {
                return Ok(Exit::Clean);
            }
            return Ok(Exit::GaveUp {
                failures: 1,
                last_error: "a hook failed after the sync (see above)".into(),
            });
        }
        if let Some(exit) = looper.wait_next(&ran, failed).await {
            return Ok(exit);
        }
    }
}

/// The loop's state between cycles.
struct Loop {
    schedule: Schedule,
    surface: Surface,
    health: Arc<Health>,
    hooks: Hooks,
    reporter: Reporter,
    /// Hides the remote's secrets in what the loop says.
    redactor: Redactor,
    /// `None` only while a cycle runs (the cycle's thread owns it).
    publisher: Option<Publisher>,
    signals: Signals,
    /// Consecutive failures.
    failures: u64,
    /// What the log already said of states that last.
    said: Said,
    /// A cycle succeeded since start (git-sync's "first sync").
    synced_once: bool,
    /// Since when a one-time run's commit has been ready but held back ([`Loop::held_back`]).
    held_back_since: Option<std::time::Instant>,
}

/// A cycle that returned, with what the loop learned of it.
struct Ran {
    result: Result<Outcome, PublishError>,
    /// The health state's number of the cycle.
    cycle: u64,
    elapsed: Duration,
    timings: Timings,
    followed_ref: Option<String>,
    root: Root,
    /// `--sync-timeout` fired.
    timed_out: bool,
    /// A stop was requested while it ran.
    terminating: bool,
}

impl Loop {
    /// Step 1: run one cycle on a blocking thread and supervise it. An exit when the loop ends
    /// here (the cycle did not stop within the shutdown grace, or its thread was lost).
    async fn supervise(&mut self) -> Result<Ran, Exit> {
        let Some(mut owned) = self.publisher.take() else {
            // Only reachable if a cycle's thread panicked and took the publisher with it.
            return Err(Exit::GaveUp {
                failures: self.failures,
                last_error: "internal error: the sync worker was lost".into(),
            });
        };
        let cycle = self.health.cycle_started();
        let started = std::time::Instant::now();
        let interrupt = Arc::new(AtomicBool::new(false));
        let asked = self.health.versions.take();
        let mut task = tokio::task::spawn_blocking({
            let interrupt = Arc::clone(&interrupt);
            let tree = self.reporter.shared_tree();
            let health = Arc::clone(&self.health);
            move || {
                // Versions readers asked for first: a task waits on each.
                let metrics = &health.metrics;
                crate::daemon::versions::serve(&mut owned, asked, metrics, &tree, &interrupt);
                let result = owned.cycle(&tree, &interrupt);
                (owned, result)
            }
        });
        let timeout = self.schedule.sync_timeout;
        let deadline = tokio::time::sleep(timeout);
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
                    tracing::warn!(timeout = %humantime::format_duration(timeout), "sync cycle exceeded --sync-timeout, abandoning it");
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
                _ = self.signals.terminate(), if !terminating => {
                    terminating = true;
                    interrupt.store(true, Ordering::Relaxed);
                    grace.as_mut().reset(tokio::time::Instant::now() + SHUTDOWN_GRACE);
                    tracing::info!("stop requested; finishing or abandoning the cycle in flight");
                }
                _ = &mut grace, if terminating => {
                    tracing::warn!("cycle did not stop within {}; exiting, its staging directory is removed on the next start", humantime::format_duration(SHUTDOWN_GRACE));
                    return Err(Exit::Clean);
                }
            }
        };
        let (owned, result) = joined.map_err(|e| Exit::GaveUp {
            failures: self.failures + 1,
            last_error: format!("internal error in the sync worker: {e}"),
        })?;
        let mut owned = owned;
        self.health
            .metrics
            .set_lock_fault(owned.lock_fault().is_some());
        self.health.metrics.set_sources(&owned.source_health());
        self.health.metrics.set_volume(owned.volume());
        if let Ok(outcome) = &result {
            self.health
                .metrics
                .set_standing_back(matches!(outcome, Outcome::StandingBack { .. }));
        }
        if let Some(check) = owned.take_check_result() {
            self.health.metrics.record_check(check);
        }
        if let Some(reason) = owned.take_signature_refusal() {
            self.health.metrics.record_signature_refusal(reason);
        }
        let ran = Ran {
            result,
            cycle,
            elapsed: started.elapsed(),
            timings: owned.timings(),
            followed_ref: owned.followed_ref(),
            root: owned.root().clone(),
            timed_out,
            terminating,
        };
        self.publisher = Some(owned);
        Ok(ran)
    }

    /// Step 3: say what the cycle did (see `report`); its summary.
    fn report_cycle(&mut self, ran: &Ran, failed: Option<&str>) -> CycleDone {
        let (done, first_success) = self.observe(ran, failed);
        self.after_cycle(
            ran,
            &done,
            AfterCycle {
                failed,
                rejection: match &ran.result {
                    Ok(Outcome::Rejected { commit, verdict }) => Some(format!(
                        "commit {commit} was rejected by {} ({}); the link stays where it was: {}",
                        verdict.by(),
                        verdict.why(),
                        verdict.headline()
                    )),
                    _ => None,
                },
                failures: self.failures,
                first_success,
                previous: match &ran.result {
                    Ok(Outcome::Published { previous, .. }) => previous.clone(),
                    _ => None,
                },
            },
        );
        done
    }

    /// For a one-time run: whether the remote's commit is ready but may not go live yet (the
    /// link is left to git-sync while it writes the root, or `--min-publish-interval` holds
    /// it), remembering since when; the exit once that has lasted `--sync-timeout`.
    fn held_back(&mut self, ran: &Ran) -> Option<Exit> {
        let timeout = humantime::format_duration(self.schedule.sync_timeout);
        let why = match &ran.result {
            // Not a wait: another configuration owns the root now.
            Ok(Outcome::StandingBack { follows }) => {
                return Some(Exit::GaveUp {
                    failures: 1,
                    last_error: format!(
                        "the root follows {follows} now (a publisher of it started after this run): nothing was published"
                    ),
                })
            }
            Ok(Outcome::Deferred { commit, .. }) => format!(
                "git-sync kept writing this root, so {commit} did not go live within --sync-timeout {timeout}; stop git-sync first, or run without --one-time"
            ),
            Ok(Outcome::Throttled { commit, .. }) => format!(
                "--min-publish-interval held {commit} back longer than --sync-timeout {timeout}; a one-time run publishes or fails"
            ),
            _ => {
                self.held_back_since = None;
                return None;
            }
        };
        let since = *self
            .held_back_since
            .get_or_insert_with(std::time::Instant::now);
        (since.elapsed() >= self.schedule.sync_timeout).then_some(Exit::GaveUp {
            failures: 1,
            last_error: why,
        })
    }

    /// Step 2: what the cycle means for the loop: the failure to report (and count), if any.
    /// An exit when a stop was requested and the cycle was cut short by it.
    fn judge(&mut self, ran: &Ran) -> Result<Option<String>, Exit> {
        let failed = match &ran.result {
            Ok(outcome) => {
                report(outcome, &mut self.said);
                match outcome {
                    // Nothing is live and the remote's commit was rejected: an init container
                    // must not let Airflow start on an empty folder.
                    Outcome::Rejected { commit, verdict }
                        if self.schedule.one_time
                            && !matches!(ran.root.current(), Ok(Some(c)) if c.complete) =>
                    {
                        Some(format!(
                            "commit {commit} was rejected by {} ({}) and no earlier snapshot is live: {}",
                            verdict.by(),
                            verdict.why(),
                            verdict.headline()
                        ))
                    }
                    _ => {
                        self.failures = 0;
                        None
                    }
                }
            }
            Err(e) if e.is_cancelled() && ran.terminating => return Err(Exit::Clean),
            Err(e) if e.is_contention() => {
                tracing::warn!(error = %self.redactor.redact(&render(e)), "skipping this cycle; another publisher of this root is busy");
                None
            }
            Err(e) if e.is_cancelled() && ran.timed_out => Some(format!(
                "sync cycle took longer than --sync-timeout {}; raise it if the repository is large or the network slow",
                humantime::format_duration(self.schedule.sync_timeout)
            )),
            Err(e) => Some(self.redactor.redact(&render(e))),
        };
        if failed.is_some() {
            self.failures += 1;
        }
        Ok(failed)
    }

    /// Step 4: wait for the next cycle: the period, the backoff after a failure (before the
    /// first success, `--init-period`), or the end of `--min-publish-interval`; a signal or a
    /// `POST /sync` starts it early. An exit when the failure budget is spent or a stop is
    /// requested.
    async fn wait_next(&mut self, ran: &Ran, failed: Option<String>) -> Option<Exit> {
        let schedule = &self.schedule;
        // Before the first success, --init-max-failures and --init-period apply.
        let (budget, init_wait) = if self.synced_once {
            (schedule.failure_budget, None)
        } else {
            (schedule.init_failure_budget, schedule.init_period)
        };
        let throttled = match &ran.result {
            Ok(Outcome::Throttled { wait, .. }) => Some(*wait),
            Ok(Outcome::Deferred { resume_in, .. }) => Some(*resume_in),
            _ => None,
        };
        let wait = match failed {
            // Come back when the interval ends, so that the newest commit goes live then.
            None => throttled.map_or(schedule.period, |w| schedule.period.min(w)),
            Some(message) => {
                if budget.is_some_and(|budget| self.failures > budget) {
                    if let Some(publisher) = self.publisher.take() {
                        publisher.abandon_first_start();
                    }
                    return Some(Exit::GaveUp {
                        failures: self.failures,
                        last_error: message,
                    });
                }
                let wait = init_wait.unwrap_or_else(|| {
                    backoff(schedule.period, schedule.backoff_max, self.failures)
                });
                tracing::error!(error = %message, consecutive_failures = self.failures, retry_in = %humantime::format_duration(round_ms(wait)), "sync failed; the published snapshot is unchanged");
                wait
            }
        };
        self.health.planned(wait);
        tracing::debug!(next_poll_in = %humantime::format_duration(round_ms(wait)), "waiting for the next poll");
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            wake = self.signals.next() => match wake {
                Wake::Stop => {
                    tracing::info!("stop requested; exiting");
                    return Some(Exit::Clean);
                }
                Wake::Hangup => tracing::info!("SIGHUP received; syncing now"),
                Wake::SyncSignal => tracing::info!("--sync-on-signal signal received; syncing now"),
            },
            _ = self.health.trigger.notified() => tracing::info!("sync requested over HTTP; syncing now"),
        }
        None
    }
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
