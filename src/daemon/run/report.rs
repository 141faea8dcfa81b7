//! What the loop says about a cycle once it ended: to the health state and the metrics, in
//! the error and touch files, to the hooks, and in the log.

use std::time::{Duration, SystemTime};

use super::{Loop, Ran};
use crate::commit::CommitId;
use crate::daemon::health::CycleDone;
use crate::daemon::hooks::{self, ErrorRecord, HookEvent};
use crate::daemon::metrics::CycleReport;
use crate::daemon::publish::Outcome;

impl Loop {
    /// Tell the health state and the metrics what a cycle did; returns its summary, and whether it
    /// is the first success since start (git-sync runs its hooks and counts a sync for that one).
    pub(super) fn observe(&mut self, ran: &Ran, failed: Option<&str>) -> (CycleDone, bool) {
        let (health, result) = (&self.health, &ran.result);
        let synced_once = &mut self.synced_once;
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
            (Ok(Outcome::StandingBack { .. }), None) => ("standing-back", None),
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
            duration: ran.elapsed,
            fetch: ran.timings.fetch,
            build: ran.timings.build,
            publish: ran.timings.publish,
            lock_wait: ran.timings.lock_wait,
            fetched: ran.timings.fetched,
            built,
        });
        let done = CycleDone {
            cycle: ran.cycle,
            outcome,
            commit,
            error: failed.map(str::to_string),
        };
        health.cycle_finished(done.clone(), ran.followed_ref.clone(), failed.is_some());
        let first_success = !matches!(outcome, "failed" | "skipped") && !*synced_once;
        if first_success {
            *synced_once = true;
        }
        (done, first_success)
    }

    /// The side effects of a cycle outside the root's store: the error file, the touch file, the
    /// hooks, and the metrics that describe the root.
    pub(super) fn after_cycle(&self, ran: &Ran, done: &CycleDone, after: AfterCycle<'_>) {
        let (root, health, hooks) = (&ran.root, &self.health, &self.hooks);
        let (touch_file, error_file) = (&self.surface.touch_file, &self.surface.error_file);
        let (failed, failures) = (after.failed, after.failures);
        let current = root.current().ok().flatten().filter(|c| c.complete);
        let commit_time = || {
            let current = current.as_ref()?;
            Some(root.manifest(&current.commit).ok()??.commit_time)
        };
        health.metrics.set_root(
            current.as_ref().map(|c| c.commit.as_str()),
            commit_time,
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
}

/// What [`Loop::after_cycle`] needs to know besides the cycle's summary.
pub(super) struct AfterCycle<'a> {
    pub failed: Option<&'a str>,
    /// The check's rejection of the remote's commit, as the error file says it.
    pub rejection: Option<String>,
    pub failures: u64,
    pub first_success: bool,
    pub previous: Option<CommitId>,
}

/// How often waiting for git-sync is said again at info while a take-over lasts.
const GIT_SYNC_REMINDER: Duration = Duration::from_secs(600);

/// What the log already said, so that a state that lasts is said once.
#[derive(Debug, Default)]
pub(super) struct Said {
    /// The last (remote commit, pinned or rejected commit) reported as held back.
    held: Option<(String, CommitId)>,
    /// The configuration this publisher last said it stands back for.
    standing_back: Option<String>,
    /// When waiting for git-sync was last said at info: once per take-over, however often
    /// git-sync takes the link back meanwhile, and again every [`GIT_SYNC_REMINDER`].
    git_sync_wait: Option<std::time::Instant>,
}

/// Log what a cycle did. A pinned root says so once per new remote commit, a rejected commit
/// once, waiting for git-sync once per take-over, rather than at every poll.
pub(super) fn report(outcome: &Outcome, said: &mut Said) {
    let held = &mut said.held;
    match outcome {
        Outcome::Held { commit, pin } => {
            let now = Some((commit.to_string(), pin.commit.clone()));
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
            ..
        } => {
            let due = said
                .git_sync_wait
                .is_none_or(|at| at.elapsed() >= GIT_SYNC_REMINDER);
            if due {
                tracing::info!(remote = %commit, git_sync_commit = %git_sync, git_sync_wrote_ago = %humantime::format_duration(Duration::from_secs(quiet_for.as_secs())), "git-sync still writes this root; the snapshot is ready, and the link moves once git-sync has left the root alone for --adopt-after");
                said.git_sync_wait = Some(std::time::Instant::now());
            } else {
                tracing::debug!(remote = %commit, git_sync_commit = %git_sync, "waiting for git-sync to go quiet");
            }
            return;
        }
        Outcome::Rejected { commit, verdict } => {
            let now = Some(("rejected".to_string(), commit.clone()));
            if *held != now {
                if verdict.signature.is_some() {
                    tracing::warn!(%commit, why = %verdict.why(), detail = %verdict.headline(), "this commit's signature was refused; the link stays where it is (a commit signed by a trusted key goes live at once)");
                } else {
                    tracing::warn!(%commit, why = %verdict.why(), output = %verdict.excerpt(20).join(" | "), "the check rejected this commit; the link stays where it is (`dagsnap recheck` runs the check again)");
                }
                *held = now;
            } else {
                if verdict.signature.is_some() {
                    tracing::debug!(%commit, "signature refused earlier; not verified again");
                } else {
                    tracing::debug!(%commit, "rejected by the check earlier; not checked again");
                }
            }
            return;
        }
        Outcome::StandingBack { follows } => {
            let now = follows.to_string();
            if said.standing_back.as_deref() != Some(now.as_str()) {
                tracing::warn!(%follows, "standing back: a publisher of another configuration started after this one, and the root follows it now; this publisher moves nothing until it is stopped (a finished rolling update stops it; start this configuration again to go back)");
                said.standing_back = Some(now);
            } else {
                tracing::debug!(%follows, "standing back");
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

/// A duration rounded to milliseconds, for the log.
pub(super) fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}
