//! Versions on demand: a reader asks the loop for the snapshot of a commit the root does not
//! hold (the Airflow bundle on a worker whose task runs on a commit that retention removed, or
//! that this node's root never saw), over `POST /versions/<commit>`.
//!
//! The HTTP server only queues the request ([`Versions::ask`]) and raises the loop's trigger;
//! the loop's next cycle thread, which owns the publisher and its cache, serves every queued
//! request before it polls ([`Versions::take`], `Publisher::materialize`), and each caller gets
//! its answer, or finds the version ready when it asks again. Requests for the same commit
//! share one materialization. The queue is bounded:
//! a caller beyond [`MAX_PENDING`] commits is told to come back, so nobody who can reach the
//! port can make the loop build without end.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::oneshot;

use super::publish::{Publisher, VersionError};
use crate::commit::CommitId;

/// Distinct commits waiting to be materialized at once.
pub(crate) const MAX_PENDING: usize = 16;
/// Callers waiting for an answer at once, each holding one of the server's connections: a
/// quarter of them, so that a new worker whose tasks all start together cannot take the
/// connections the kubelet's probes need. Those beyond are told to come back (503).
pub(crate) const MAX_WAITING: usize = 8;
/// The longest lease a caller may ask for: a reader that needs longer renews its own.
pub(crate) const MAX_LEASE: Duration = Duration::from_secs(3600);
/// The lease given when the caller names none: long enough for a task to start and take its
/// own.
pub(crate) const DEFAULT_LEASE: Duration = Duration::from_secs(600);

/// What a caller is told.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub(crate) enum Answer {
    /// The snapshot is in the root and leased.
    Ready {
        commit: CommitId,
        /// Where it is (absolute, on this publisher's mount of the root).
        path: PathBuf,
        /// The lease's end, unix seconds.
        leased_until: u64,
        /// Built for this request (false: it was there already).
        built: bool,
    },
    /// The remote does not have that commit (or will not give it by id).
    NotInRemote { commit: CommitId, reason: String },
    /// The root's check rejected the commit: it is never materialized.
    Rejected { commit: CommitId, reason: String },
    /// Materializing failed (the remote is unreachable, the disk full...): worth retrying.
    Failed { commit: CommitId, reason: String },
}

/// One commit asked for, with everyone waiting on it.
#[derive(Debug)]
pub(crate) struct Pending {
    pub commit: CommitId,
    pub lease: Duration,
    waiters: Vec<oneshot::Sender<Answer>>,
}

impl Pending {
    /// Tell everyone who asked for this commit.
    pub(crate) fn answer(self, answer: Answer) {
        for waiter in self.waiters {
            let _ = waiter.send(answer.clone());
        }
    }
}

/// The queue of commits asked for, shared by the HTTP server and the loop.
#[derive(Debug, Default)]
pub(crate) struct Versions {
    pending: Mutex<VecDeque<Pending>>,
    waiting: std::sync::atomic::AtomicUsize,
}

/// A caller's place among those waiting ([`MAX_WAITING`]), given back when dropped.
pub(crate) struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The queue is full: the caller should retry shortly.
#[derive(Debug)]
pub(crate) struct Busy;

impl Versions {
    fn pending(&self) -> std::sync::MutexGuard<'_, VecDeque<Pending>> {
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queue `commit` (joining a request already queued for it, whose lease grows to the
    /// longer of the two); the answer arrives on the receiver.
    pub(crate) fn ask(
        &self,
        commit: CommitId,
        lease: Duration,
    ) -> Result<oneshot::Receiver<Answer>, Busy> {
        let (tx, rx) = oneshot::channel();
        let lease = lease.min(MAX_LEASE);
        let mut pending = self.pending();
        if let Some(queued) = pending.iter_mut().find(|p| p.commit == commit) {
            queued.lease = queued.lease.max(lease);
            queued.waiters.push(tx);
            return Ok(rx);
        }
        if pending.len() >= MAX_PENDING {
            return Err(Busy);
        }
        pending.push_back(Pending {
            commit,
            lease,
            waiters: vec![tx],
        });
        Ok(rx)
    }

    /// A place to wait for an answer, unless [`MAX_WAITING`] callers wait already.
    pub(crate) fn wait_place(&self) -> Option<Waiting<'_>> {
        use std::sync::atomic::Ordering;
        self.waiting
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < MAX_WAITING).then_some(n + 1)
            })
            .ok()
            .map(|_| Waiting(&self.waiting))
    }

    /// Everything queued, for the loop to serve. A request whose callers stopped waiting is
    /// served all the same: they were told to ask again, and will find it ready.
    pub(crate) fn take(&self) -> Vec<Pending> {
        self.pending().drain(..).collect()
    }
}

/// Serve every request taken from the queue, in the cycle's thread (which owns `publisher`),
/// before the cycle polls; an interrupt (a stop, `--sync-timeout`) fails those not served yet.
pub(crate) fn serve(
    publisher: &mut Publisher,
    asked: Vec<Pending>,
    metrics: &super::metrics::Metrics,
    progress: &gix::progress::tree::Root,
    interrupt: &std::sync::atomic::AtomicBool,
) {
    for pending in asked {
        let commit = pending.commit.clone();
        let started = std::time::Instant::now();
        let answer = match publisher.materialize(&commit, pending.lease, progress, interrupt) {
            Ok(done) => {
                metrics.record_version(if done.built { "built" } else { "present" });
                tracing::info!(%commit, built = done.built, elapsed_ms = started.elapsed().as_millis() as u64, "materialized a version a reader asked for; the link stays");
                Answer::Ready {
                    commit,
                    path: done.dir,
                    leased_until: done
                        .leased_until
                        .duration_since(std::time::SystemTime::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs()),
                    built: done.built,
                }
            }
            Err(e) => {
                let reason = publisher.redactor().redact(&crate::git::error_chain(&e));
                tracing::warn!(%commit, error = %reason, "could not materialize a version a reader asked for");
                let (result, answer) = match e {
                    VersionError::NotInRemote { .. } => {
                        ("not_in_remote", Answer::NotInRemote { commit, reason })
                    }
                    VersionError::Rejected { .. } => {
                        ("rejected", Answer::Rejected { commit, reason })
                    }
                    VersionError::Publish(_) => ("failed", Answer::Failed { commit, reason }),
                };
                metrics.record_version(result);
                answer
            }
        };
        pending.answer(answer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(digit: char) -> CommitId {
        CommitId::parse(&digit.to_string().repeat(40)).unwrap()
    }

    #[test]
    fn requests_for_one_commit_share_one_materialization_with_the_longer_lease() {
        let versions = Versions::default();
        let first = versions.ask(commit('a'), Duration::from_secs(60)).unwrap();
        let second = versions
            .ask(commit('a'), Duration::from_secs(7200))
            .unwrap();
        let taken = versions.take();
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].lease, MAX_LEASE, "capped");
        let done = taken.into_iter().next().unwrap();
        done.answer(Answer::Failed {
            commit: commit('a'),
            reason: "x".into(),
        });
        for mut rx in [first, second] {
            assert!(matches!(rx.try_recv(), Ok(Answer::Failed { .. })));
        }
        assert!(versions.take().is_empty());
    }

    #[test]
    fn at_most_a_quarter_of_the_connections_wait_for_versions() {
        let versions = Versions::default();
        let places: Vec<_> = (0..MAX_WAITING)
            .map(|_| versions.wait_place().unwrap())
            .collect();
        assert!(
            versions.wait_place().is_none(),
            "the ninth caller comes back later"
        );
        drop(places);
        assert!(versions.wait_place().is_some(), "places are given back");
    }

    #[test]
    fn a_full_queue_refuses_and_a_request_whose_caller_left_is_still_served() {
        let versions = Versions::default();
        let digits = "0123456789abcdef";
        let kept: Vec<_> = digits
            .chars()
            .map(|d| versions.ask(commit(d), DEFAULT_LEASE).unwrap())
            .collect();
        assert!(versions.ask(commit('f'), DEFAULT_LEASE).is_ok(), "joins");
        let other = CommitId::parse(&"ab".repeat(20)).unwrap();
        assert!(versions.ask(other, DEFAULT_LEASE).is_err(), "full");
        drop(kept);
        assert_eq!(versions.take().len(), 16);
        assert!(
            versions.ask(commit('0'), DEFAULT_LEASE).is_ok(),
            "room again"
        );
    }
}
