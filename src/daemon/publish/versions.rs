//! A version on demand: the snapshot of a commit that a reader needs and the root does not hold,
//! built without moving the link (see `daemon::versions` for how requests reach the loop).

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, SystemTime};

use super::build::Version;
use super::sources::Part;
use super::{PublishError, Publisher};
use crate::commit::CommitId;
use crate::git::SourceError;

/// Why a version could not be materialized.
#[derive(Debug, thiserror::Error)]
pub(crate) enum VersionError {
    #[error("{commit} is not in {url}: {reason}. Is the version from another repository, or was it force-pushed away?")]
    NotInRemote {
        commit: CommitId,
        url: String,
        reason: String,
    },
    #[error(
        "{commit} was rejected by --check-command in this root ({why}); it is never materialized"
    )]
    Rejected { commit: CommitId, why: String },
    #[error(transparent)]
    Publish(#[from] PublishError),
}

/// A version that is in the root, leased.
#[derive(Debug)]
pub(crate) struct Materialized {
    pub dir: PathBuf,
    pub leased_until: SystemTime,
    /// Built now (false: an intact snapshot was there).
    pub built: bool,
}

impl Publisher {
    /// Make sure the root holds the snapshot of `commit`, with this publisher's settings, and
    /// lease it for `lease`; the link never moves. The steps:
    ///
    /// 1. **Rejected**: a commit the root's check rejected is refused, as the cycle refuses it.
    /// 2. **Lease** first: a peer's GC that sees the snapshot installed sees the lease too.
    /// 3. **Present**: an intact snapshot of it is installed: done (one that is not intact is
    ///    set aside and built again, as the cycle does).
    /// 4. **Fetch** the commit by id if the cache lacks it (for a snapshot of several sources,
    ///    each source's commit as the set's manifest lists it); a remote that does not give it,
    ///    or a set whose manifest is gone, is [`VersionError::NotInRemote`].
    /// 5. **Build** and install it as step 8 of the cycle does (sharing unchanged files with
    ///    the live snapshot), once `--verify-signatures` (if set) accepts the commit.
    pub(crate) fn materialize(
        &mut self,
        commit: &CommitId,
        lease: Duration,
        progress: &gix::progress::tree::Root,
        interrupt: &AtomicBool,
    ) -> Result<Materialized, VersionError> {
        // (1)
        if let Some(verdict) = self.known_rejection(commit) {
            return Err(VersionError::Rejected {
                commit: commit.clone(),
                why: verdict.why().to_string(),
            });
        }
        // (2)
        let leased_until = SystemTime::now() + lease;
        let holder = format!(
            "dagsnap-{}-{}",
            crate::fsutil::hostname(),
            std::process::id()
        );
        self.root
            .records()
            .lease(commit, &holder, leased_until)
            .map_err(PublishError::from)?;
        // (3)
        let dir = self.root.snapshot_path(commit);
        if self.root.has_snapshot(commit) && self.root.check_snapshot(commit, None).is_ok() {
            return Ok(Materialized {
                dir,
                leased_until,
                built: false,
            });
        }
        // (4)
        let url = self.source.repo.clone();
        let not_in_remote = |reason: String| VersionError::NotInRemote {
            commit: commit.clone(),
            url: url.clone(),
            reason,
        };
        let version = self
            .version_of_snapshot(commit, progress, interrupt)
            .map_err(|e| match e {
                Fetched::Refused(reason) => not_in_remote(reason),
                Fetched::Failed(e) => e.into(),
            })?;
        // (5)
        if let Some(why) = self.version_unsigned(commit) {
            return Err(VersionError::Rejected {
                commit: commit.clone(),
                why,
            });
        }
        if self.root.has_snapshot(commit) {
            if let Err(why) = self.root.check_snapshot(commit, Some(&version.expected)) {
                let lock = self
                    .root
                    .lock(self.settings.lock_timeout)
                    .map_err(PublishError::from)?;
                self.root
                    .set_aside(&lock, commit, &why)
                    .map_err(PublishError::from)?;
            }
        }
        let built = !self.root.has_snapshot(commit);
        if built {
            self.build(version, progress, interrupt)?;
        }
        Ok(Materialized {
            dir,
            leased_until,
            built,
        })
    }
}

/// Why the commits of a version could not be had.
pub(super) enum Fetched {
    /// The remote does not give one of them (or the root no longer knows which they are):
    /// why.
    Refused(String),
    Failed(PublishError),
}

impl Fetched {
    /// As the error of a cycle that needed the snapshot of `commit`.
    pub(super) fn into_error(self, commit: &CommitId) -> PublishError {
        match self {
            Fetched::Refused(why) => PublishError::UnknownSources {
                commit: commit.clone(),
                why,
            },
            Fetched::Failed(e) => e,
        }
    }
}

impl Publisher {
    /// What a snapshot of `commit` holds: `--repo`'s commit, or each source's as the
    /// snapshot's manifest lists them, each fetched by id if its cache let it go. A stale
    /// source's commit that cannot be fetched may still come from the live snapshot
    /// ([`Publisher::version`] decides).
    pub(super) fn version_of_snapshot(
        &mut self,
        commit: &CommitId,
        progress: &gix::progress::tree::Root,
        interrupt: &AtomicBool,
    ) -> Result<Version, Fetched> {
        let parts = if self.several() {
            self.parts_of(commit).map_err(|e| match e {
                PublishError::UnknownSources { why, .. } => Fetched::Refused(why),
                e => Fetched::Failed(e),
            })?
        } else {
            vec![Part::by_id(0, commit.object_id())]
        };
        for part in &parts {
            match self.fetch_by_id(part, progress, interrupt) {
                Err(_) if part.stale.is_some() => {}
                other => other?,
            }
        }
        match self.version(commit, &parts) {
            Ok(version) => Ok(version),
            Err(PublishError::Source(SourceError::Object { cause, .. })) => Err(Fetched::Refused(
                format!("the remote has no commit by that id ({cause})"),
            )),
            Err(e) => Err(Fetched::Failed(e)),
        }
    }

    /// Fetch `part`'s commit by id into its source's cache, if the cache lacks it.
    fn fetch_by_id(
        &mut self,
        part: &Part,
        progress: &gix::progress::tree::Root,
        interrupt: &AtomicBool,
    ) -> Result<(), Fetched> {
        let followed = &mut self.sources[part.index];
        // A server that refuses a want hangs up as it says why; a reply cut by the hang-up
        // (a broken pipe while the request is still being sent) is asked again, twice.
        let mut hang_ups = 0;
        loop {
            match followed.cache.fetch_commit(
                &followed.source.remote,
                part.commit,
                progress,
                interrupt,
            ) {
                Ok(()) => return Ok(()),
                Err(e) => match refused_by_remote(&e) {
                    Some(reason) => return Err(Fetched::Refused(reason)),
                    None if hung_up(&e) && hang_ups < 2 => hang_ups += 1,
                    None => return Err(Fetched::Failed(e.into())),
                },
            }
        }
    }
}

/// What a server says when it will not give a commit by id: it does not have it, or it is not
/// reachable from any of its refs. `None` for any other failure (the network, credentials).
fn refused_by_remote(error: &SourceError) -> Option<String> {
    error.object_refused().map(|phrase| {
        format!("the server has no commit by that id that its refs reach (it said \"{phrase}\")")
    })
}

/// A fetch cut short by the server closing the connection.
fn hung_up(error: &SourceError) -> bool {
    let SourceError::Remote { cause, .. } = error else {
        return false;
    };
    let lower = cause.to_lowercase();
    [
        "broken pipe",
        "connection reset",
        "early eof",
        "unexpected end of file",
    ]
    .iter()
    .any(|phrase| lower.contains(phrase))
}
