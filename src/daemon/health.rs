//! What the loop says about itself while it runs, for `/healthz`, `/readyz`, `POST
//! /sync?wait=1`, the error file, the publisher record and the metrics.
//!
//! - Alive: a cycle started recently enough. The loop starts one every period (or after its
//!   backoff), and a cycle ends by `--sync-timeout`; a loop that started none for longer than
//!   `max(2 × its wait, --sync-timeout)` plus a slack is wedged (a system call that never
//!   returns, on a hung NFS server say), and a restart is the fix. A remote that is down never
//!   makes the loop look dead: it keeps starting cycles that fail.
//! - Ready: a complete snapshot is live under the link, and, with `--ready-max-age`, the remote
//!   was reached successfully recently enough (so DAGs going stale shows).
//!
//! The state sits behind a mutex held for a few field updates, never across an await or I/O.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tokio::sync::{watch, Notify};

use super::metrics::Metrics;
use crate::commit::CommitId;
use crate::store::Root;

/// Added to every liveness limit: scheduling noise, a slow `stat` on NFS.
const LIVENESS_SLACK: Duration = Duration::from_secs(5);

/// What one finished cycle was, for those waiting on it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CycleDone {
    /// The cycle's number (1 for the first one this process ran).
    pub cycle: u64,
    /// `published`, `unchanged`, `held`, `superseded`, `deferred`, `skipped` or `failed`.
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit: Option<CommitId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Default)]
struct State {
    /// Cycles started so far.
    started: u64,
    running_since: Option<Instant>,
    last_start: Option<Instant>,
    /// The wait the loop planned after its last cycle (the period, or its backoff).
    planned_wait: Duration,
    last_success: Option<(SystemTime, Instant)>,
    failures: u64,
    last_error: Option<String>,
    standing_by: bool,
    /// The full ref the last successful cycle followed (`refs/heads/main`), for webhooks.
    followed_ref: Option<String>,
}

/// The loop's shared self-report.
#[derive(Debug)]
pub(crate) struct Health {
    state: Mutex<State>,
    done: watch::Sender<Option<CycleDone>>,
    created: Instant,
    pub metrics: Metrics,
    /// Raised by `POST /sync`; any number of raises during a cycle make one more cycle.
    pub trigger: Notify,
    /// Versions readers asked for (`POST /versions/<commit>`), served by the next cycle.
    pub versions: super::versions::Versions,
    root: Root,
    period: Duration,
    sync_timeout: Duration,
    ready_max_age: Option<Duration>,
}

/// The answer of `/readyz`.
#[derive(Debug, Serialize)]
pub(crate) struct Readiness {
    pub ready: bool,
    /// Why not, when not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live_commit: Option<CommitId>,
    /// `git-sync` while readers are still served git-sync's worktree (a root being taken over).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub served_by: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_success_age_seconds: Option<f64>,
    pub consecutive_failures: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl Health {
    pub(crate) fn new(
        root: Root,
        period: Duration,
        sync_timeout: Duration,
        ready_max_age: Option<Duration>,
    ) -> Health {
        Health {
            state: Mutex::new(State::default()),
            done: watch::channel(None).0,
            created: Instant::now(),
            metrics: Metrics::new(),
            trigger: Notify::new(),
            versions: Default::default(),
            root,
            period,
            sync_timeout,
            ready_max_age,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn standing_by(&self, waiting: bool) {
        self.state().standing_by = waiting;
    }

    /// A cycle starts; returns its number.
    pub(crate) fn cycle_started(&self) -> u64 {
        let mut state = self.state();
        state.started += 1;
        let now = Instant::now();
        state.running_since = Some(now);
        state.last_start = Some(now);
        state.started
    }

    /// Cycles started so far.
    pub(crate) fn cycles_started(&self) -> u64 {
        self.state().started
    }

    /// A cycle ended: `Ok` with what it did (and the ref it followed), or the error.
    pub(crate) fn cycle_finished(
        &self,
        done: CycleDone,
        followed_ref: Option<String>,
        failed: bool,
    ) {
        {
            let mut state = self.state();
            state.running_since = None;
            if failed {
                state.failures += 1;
                state.last_error = done.error.clone();
            } else if done.outcome != "skipped" {
                state.failures = 0;
                state.last_error = None;
                state.last_success = Some((SystemTime::now(), Instant::now()));
                if followed_ref.is_some() {
                    state.followed_ref = followed_ref;
                }
            }
            self.metrics
                .set_health(state.last_success.map(|s| s.0), state.failures);
        }
        self.done.send_replace(Some(done));
    }

    /// The loop waits `wait` before its next cycle.
    pub(crate) fn planned(&self, wait: Duration) {
        self.state().planned_wait = wait;
    }

    /// Wait until a cycle numbered above `after` has finished, at most `limit`.
    pub(crate) async fn wait_for_cycle_after(
        &self,
        after: u64,
        limit: Duration,
    ) -> Option<CycleDone> {
        let mut done = self.done.subscribe();
        let finished = async {
            done.wait_for(|d| d.as_ref().is_some_and(|d| d.cycle > after))
                .await
                .ok()
                .and_then(|d| d.clone())
        };
        tokio::time::timeout(limit, finished).await.ok().flatten()
    }

    /// How long a `POST /sync?wait=1` may wait: a cycle, plus one already running.
    pub(crate) fn wait_limit(&self) -> Duration {
        self.sync_timeout * 2 + self.period + LIVENESS_SLACK
    }

    pub(crate) fn followed_ref(&self) -> Option<String> {
        self.state().followed_ref.clone()
    }

    /// `Ok` while the loop is alive; why not, when it is wedged.
    pub(crate) fn liveness(&self) -> Result<(), String> {
        let state = self.state();
        if state.standing_by {
            return Ok(());
        }
        let waited = state.last_start.unwrap_or(self.created).elapsed();
        let limit =
            (self.period.max(state.planned_wait) * 2).max(self.sync_timeout) + LIVENESS_SLACK;
        if waited > limit {
            let what = if state.running_since.is_some() {
                "the cycle in flight has not returned"
            } else {
                "no cycle started"
            };
            return Err(format!(
                "wedged: {what} for {} (limit {})",
                humantime::format_duration(Duration::from_secs(waited.as_secs())),
                humantime::format_duration(Duration::from_secs(limit.as_secs()))
            ));
        }
        Ok(())
    }

    /// Whether readers are served, and how fresh it is.
    pub(crate) fn readiness(&self) -> Readiness {
        let (live, served_by) = match self.root.current() {
            Ok(Some(current)) if current.complete => (Some(current.commit), None),
            // A root being taken over: git-sync's worktree serves readers meanwhile.
            Ok(None) => match self.root.git_sync_live().filter(|g| g.dir.is_dir()) {
                Some(git_sync) => (Some(git_sync.commit), Some("git-sync")),
                None => (None, None),
            },
            _ => (None, None),
        };
        let state = self.state();
        let age = state.last_success.map(|s| s.1.elapsed());
        let reason = if live.is_none() {
            Some("no complete snapshot is live under the link yet".to_string())
        } else {
            match (self.ready_max_age, age) {
                (Some(max), None) => Some(format!(
                    "the remote has not been reached successfully since start (--ready-max-age {})",
                    humantime::format_duration(max)
                )),
                (Some(max), Some(age)) if age > max => Some(format!(
                    "the last successful check of the remote was {} ago, more than --ready-max-age {}",
                    humantime::format_duration(Duration::from_secs(age.as_secs())),
                    humantime::format_duration(max)
                )),
                _ => None,
            }
        };
        Readiness {
            ready: reason.is_none(),
            reason,
            live_commit: live,
            served_by,
            last_success_age_seconds: age.map(|a| a.as_secs_f64()),
            consecutive_failures: state.failures,
            last_error: state.last_error.clone(),
        }
    }
}
