//! The operator's check (`--check-command`) on an installed snapshot: once per commit and
//! check command for the whole root, the verdict recorded in the root.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use super::{PublishError, Publisher};
use crate::commit::CommitId;
use crate::fsutil::lock::LockError;
use crate::store::snapshot::SnapshotError;
use crate::store::{Cause, CheckClaim, Current, StoreError, Verdict};

impl Publisher {
    /// Step 9: run the operator's check on the installed snapshot of `commit`, once per
    /// commit and check command for the whole root: a recorded verdict is used as is, and a
    /// publisher that finds another running the check waits for its verdict (at most the check's
    /// timeout) instead of running it again. Returns the rejection, if it was rejected. A check
    /// the cycle's interrupt stops is abandoned: no verdict, the cycle ends as cancelled.
    pub(super) fn check(
        &mut self,
        commit: &CommitId,
        ref_name: &str,
        current: Option<&Current>,
        interrupt: &AtomicBool,
    ) -> Result<Option<Verdict>, PublishError> {
        use crate::daemon::check::{self, CheckEnv, Ended};
        let Some(command) = self.gate.check.clone() else {
            return Ok(None);
        };
        let fingerprint = crate::store::records::verdicts::fingerprint(&command.command);
        let claim = match self.claim_check(commit, &fingerprint, command.timeout, interrupt)? {
            Claimed::Decided(verdict) => return Ok((!verdict.accepted).then_some(verdict)),
            Claimed::Ours(claim) => claim,
        };
        let env = CheckEnv {
            commit,
            previous: current.map(|c| c.commit.as_str()),
            ref_name,
        };
        tracing::info!(%commit, check = %crate::text::escape(&command.command), "checking the new snapshot before it goes live");
        let ran = check::run(&command, &self.root.snapshot_path(commit), &env, interrupt);
        let mut verdict = Verdict {
            commit: commit.clone(),
            fingerprint,
            accepted: false,
            exit_code: None,
            signal: None,
            timed_out: false,
            not_started: None,
            duration_ms: ran.duration.as_millis() as u64,
            output: ran.output,
            output_dropped: ran.output_dropped,
            checked_at: SystemTime::now(),
            host: crate::fsutil::hostname(),
            pid: std::process::id(),
            signature: None,
        };
        let result = match ran.ended {
            Ended::Abandoned => {
                tracing::info!(%commit, "the check was stopped with the cycle; it runs again next time");
                self.last_check = Some("abandoned");
                return Err(SnapshotError::Cancelled.into());
            }
            Ended::Exited { code, signal } => {
                verdict.accepted = code == Some(0);
                verdict.exit_code = code;
                verdict.signal = signal;
                if verdict.accepted {
                    "accepted"
                } else {
                    "rejected"
                }
            }
            Ended::TimedOut => {
                verdict.timed_out = true;
                "timeout"
            }
            Ended::NotStarted(reason) => {
                verdict.not_started = Some(reason);
                "rejected"
            }
        };
        self.root.records().record_verdict(&verdict)?;
        drop(claim);
        self.last_check = Some(result);
        if verdict.accepted {
            tracing::info!(%commit, duration_ms = verdict.duration_ms, "the check accepted the new snapshot");
            return Ok(None);
        }
        self.journal(
            commit,
            Cause::Rejected,
            ref_name,
            format!("{}: {}", verdict.why(), verdict.headline()),
        )?;
        Ok(Some(verdict))
    }

    /// The right to check `commit` for the root, or the verdict another publisher recorded:
    /// a publisher that finds another running the check waits for its verdict, at most the
    /// check's timeout (and a little), instead of running it again.
    fn claim_check(
        &self,
        commit: &CommitId,
        fingerprint: &str,
        timeout: Duration,
        interrupt: &AtomicBool,
    ) -> Result<Claimed, PublishError> {
        let waiting_since = Instant::now();
        loop {
            if let Some(verdict) = self.root.records().verdict(commit, fingerprint) {
                return Ok(Claimed::Decided(verdict));
            }
            if let Some(claim) = self.root.records().claim_check(commit, fingerprint)? {
                // Another publisher may have finished between our look and our claim.
                if let Some(verdict) = self.root.records().verdict(commit, fingerprint) {
                    return Ok(Claimed::Decided(verdict));
                }
                return Ok(Claimed::Ours(claim));
            }
            if interrupt.load(Ordering::Relaxed) {
                return Err(SnapshotError::Cancelled.into());
            }
            if waiting_since.elapsed() < Duration::from_millis(200) {
                tracing::info!(%commit, "another publisher of this root is checking this commit; waiting for its verdict instead of checking it again");
            }
            if waiting_since.elapsed() > timeout + Duration::from_secs(5) {
                return Err(StoreError::Lock(LockError::Busy {
                    path: self.root.snapshot_path(commit),
                    waited: waiting_since.elapsed(),
                    holder: Some("another publisher checking this commit".into()),
                })
                .into());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// What claiming the check of a commit found.
enum Claimed {
    /// A verdict is recorded: the check is not run again.
    Decided(Verdict),
    /// This publisher runs the check, holding the claim until the verdict is written.
    Ours(CheckClaim),
}
