//! The link: the one thing readers look at. Where it points ([`Root::current`]), the atomic
//! swap ([`swap`]), and every decision to move it: forward only ([`Root::publish_if_newer`]),
//! back onto what the records name ([`Root::reconcile_link`]), and to a repair's copy of the
//! same commit ([`Root::relink`]).
//!
//! The link's directory is reached from the root one component at a time without following a
//! symlink ([`open_parent`]), so the link is never read, swapped or removed anywhere but where
//! readers look.

use std::ffi::OsStr;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::layout::{REPAIR_DIR, SNAPSHOTS_DIR};
use super::records::{Author, Cause, Pin, Publication};
use super::{gitsync, Root, RootLock, StoreError};
use crate::commit::CommitId;
use crate::fsutil::{self, Dir, IoError, Kind};

/// Prefix of the temporary links [`swap`] creates next to the link. It starts with `.dagsnap`
/// so the `.airflowignore` that dagsnap writes hides a leftover one from Airflow, and start-up
/// recognizes and removes leftovers after a crash.
pub(crate) const TEMP_PREFIX: &str = ".dagsnap-link-";

/// What [`Root::desired`] says when the pin names the commit.
pub(crate) const BY_PIN: &str = "the pin";

/// The action of the error [`open_parent`] fails with when a directory on the way is not one.
const NOT_A_LINK_DIR: &str = "use as the link's directory";

/// What the link points at right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Current {
    pub commit: CommitId,
    /// False if the snapshot was deleted from under the link (a dangling link).
    pub complete: bool,
    /// The directory the link names: `snapshots/<commit>`, or, while a repair swaps a fresh
    /// copy in, `snapshots/.repair/<commit>`.
    pub dir: PathBuf,
    /// The link names a repair's fresh copy (if this lasts, a repair was interrupted).
    pub in_repair: bool,
}

/// What [`Root::publish_if_newer`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Published {
        previous: Option<CommitId>,
    },
    /// The link already showed this commit.
    AlreadyCurrent,
    /// Another publisher recorded a later observation of the remote; the link was left alone.
    Superseded {
        newer: Publication,
    },
    /// An operator pinned the link; it was left alone.
    Pinned {
        pin: Pin,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{} is a real {kind}, not the link dagsnap manages; move it away (dagsnap never deletes what it did not create) or choose another --link", path.display())]
    NotALink { path: PathBuf, kind: &'static str },
    #[error(transparent)]
    Io(#[from] IoError),
}

impl Root {
    /// Where the link points now. `None` when there is no link yet.
    pub fn current(&self) -> Result<Option<Current>, StoreError> {
        let Some(target) = read(self.link_base(), &self.link_rel)? else {
            return Ok(None);
        };
        // git-sync's link, in a root being taken over: nothing of dagsnap's is live yet.
        if self.adopt_git_sync.is_some()
            && gitsync::worktree_of(&self.root, parent_of(&self.link_path()), &target).is_some()
        {
            return Ok(None);
        }
        self.current_from(target).map(Some)
    }

    /// Where the link points as a reader finds it: like [`Root::current`], but reaching the
    /// link through its path even where a directory on the way was replaced by a symlink (what
    /// `status` shows, with where readers then arrive); only for display.
    pub fn current_as_readers_find_it(&self) -> Result<Option<Current>, StoreError> {
        match self.current() {
            Err(StoreError::Link(ReadError::Io(e))) if e.action == NOT_A_LINK_DIR => {
                let link = self.link_path();
                match std::fs::symlink_metadata(&link) {
                    Ok(meta) if meta.file_type().is_symlink() => {
                        let target = std::fs::read_link(&link)
                            .map_err(|e| IoError::new("read link", &link, e))?;
                        self.current_from(target).map(Some)
                    }
                    _ => Err(StoreError::Link(ReadError::Io(e))),
                }
            }
            other => other,
        }
    }

    /// What a link target names.
    fn current_from(&self, target: PathBuf) -> Result<Current, StoreError> {
        let link = self.link_path();
        let prefix = self.target_in_store(Path::new(SNAPSHOTS_DIR));
        let rest = target
            .strip_prefix(&prefix)
            .ok()
            .and_then(|rest| rest.to_str());
        let (commit, in_repair) = match rest.map(|r| r.strip_prefix(REPAIR_DIR)) {
            Some(Some(commit)) if commit.starts_with('/') => (&commit[1..], true),
            _ => (rest.unwrap_or_default(), false),
        };
        let Ok(commit) = CommitId::parse(commit) else {
            return Err(StoreError::ForeignLink { link, target });
        };
        let (dir, complete) = if in_repair {
            let dir = self.fresh_copy_path(&commit);
            let complete = self
                .repair_dir()?
                .is_some_and(|d| matches!(d.kind(&commit), Ok(Some(Kind::Dir))));
            (dir, complete)
        } else {
            (self.snapshot_path(&commit), self.has_snapshot(&commit))
        };
        Ok(Current {
            commit,
            complete,
            dir,
            in_repair,
        })
    }

    /// What the link stores to point at the snapshot of `commit` (or its repair's fresh copy):
    /// relative to the link's directory, so it resolves the same in every pod.
    fn link_target(&self, commit: &CommitId, fresh_copy: bool) -> PathBuf {
        let snapshots = self.target_in_store(Path::new(SNAPSHOTS_DIR));
        if fresh_copy {
            snapshots.join(REPAIR_DIR).join(commit)
        } else {
            snapshots.join(commit)
        }
    }

    /// Point the link at `publication.commit` unless that would move it backward.
    ///
    /// Runs under the root's lock, so the decision and the swap are one step for every other
    /// publisher of this root:
    /// 1. If the link already shows the commit, there is nothing to do. If an operator pinned a
    ///    snapshot, the link stays where the pin put it.
    /// 2. If the newest publication names another commit, and its answer came after our
    ///    question was sent, leave the link alone: another publisher may have seen a newer state
    ///    of the remote (a question sent later can be answered from an older state, so only a
    ///    question sent after the other's answer is surely newer; our next poll will be). The
    ///    record, not the link, is compared, because a publisher that died between writing the
    ///    record and moving the link still saw what it saw. "Newest" is what [`super::Records::latest`]
    ///    says, for this decision as for every other: a record whose observation lies more
    ///    than [`super::MAX_CLOCK_SKEW`] ahead of this host's clock is believed by none.
    /// 3. The snapshot must still exist (GC or a person may have removed it since it was
    ///    installed); the link never points at nothing.
    /// 4. Write the records, then swap the link ([`Root::publish`]).
    pub fn publish_if_newer(
        &self,
        lock: &RootLock,
        publication: &Publication,
    ) -> Result<Decision, StoreError> {
        // (1)
        let current = self.current()?.filter(|c| c.complete);
        if current
            .as_ref()
            .is_some_and(|c| c.commit == publication.commit)
        {
            return Ok(Decision::AlreadyCurrent);
        }
        let records = self.records();
        // A pin holds the link on its commit; only that commit may be (re)linked, e.g. when
        // its snapshot was deleted by hand and rebuilt.
        let live = current.as_ref().map(|c| &c.commit);
        if let Some(pin) = records
            .pin(live)?
            .filter(|p| p.commit != publication.commit)
        {
            return Ok(Decision::Pinned { pin });
        }
        // (2)
        if let Some(latest) = records.latest()? {
            if latest.commit != publication.commit && latest.may_be_as_recent_as(publication) {
                return Ok(Decision::Superseded { newer: latest });
            }
        }
        // (3)
        if !self.has_snapshot(&publication.commit) {
            return Err(StoreError::SnapshotGone {
                commit: publication.commit.clone(),
            });
        }
        // (4)
        self.publish(lock, publication)?;
        Ok(Decision::Published {
            previous: current.map(|c| c.commit),
        })
    }

    /// Point the link at the installed snapshot of `publication.commit` and record why.
    ///
    /// The records are written before the link moves: a crash in between leaves a record that
    /// is newer than the link, never a link that is newer than every record, so the
    /// never-backward comparison always has the newest observation to go by.
    pub fn publish(&self, lock: &RootLock, publication: &Publication) -> Result<(), StoreError> {
        self.records().record_publication(lock, publication)?;
        swap(
            self.link_base(),
            &self.link_rel,
            &self.link_target(&publication.commit, false),
        )?;
        Ok(())
    }

    /// What the link should show, whatever moved it last: the pinned commit while an operator
    /// pins one, else the commit of the newest publication that moved the link; with what names
    /// it. `live` is the commit the link shows (a damaged pin holds it).
    pub fn desired(&self, live: &CommitId) -> Result<Option<(CommitId, &'static str)>, StoreError> {
        let records = self.records();
        if let Some(pin) = records.pin(Some(live))? {
            return Ok(Some((pin.commit, BY_PIN)));
        }
        Ok(records
            .latest()?
            .filter(|p| p.moved_link)
            .map(|p| (p.commit, "the newest publication")))
    }

    /// Put the link back on what [`Root::desired`] names, if it shows something else and that
    /// snapshot is intact; journaled as `reconcile` by `who`. Returns (from, to, what named it)
    /// when it moved the link.
    ///
    /// With working locks nothing needs correcting: every decision and swap happens under the
    /// root's lock. Where locks do not travel between clients, a publisher that decided under a
    /// lock it wrongly believed exclusive, and stalled before swapping, can swap an older commit
    /// over a newer one, or over a pin; every publisher's next cycle, and the late one right
    /// after its swap, puts the link back.
    pub(crate) fn reconcile_link(
        &self,
        lock: &RootLock,
        who: &Author,
    ) -> Result<Option<(CommitId, CommitId, &'static str)>, StoreError> {
        let Some(current) = self.current()? else {
            return Ok(None);
        };
        let Some((desired, because)) = self.desired(&current.commit)? else {
            return Ok(None);
        };
        if desired == current.commit || self.check_snapshot(&desired, None).is_err() {
            return Ok(None);
        }
        let reason = format!(
            "the link showed {}; {because} names {desired}",
            current.commit
        );
        let entry = who.entry(desired.clone(), Cause::Reconcile, true, Some(reason));
        self.publish(lock, &entry)?;
        Ok(Some((current.commit, desired, because)))
    }

    /// Point the link at `commit`'s snapshot (`fresh_copy`: at the repair's fresh copy), if the
    /// link names that commit now; whether it did. Another publisher may have moved the link
    /// on meanwhile, and then there is nothing to swap.
    pub fn relink(
        &self,
        _lock: &RootLock,
        commit: &CommitId,
        fresh_copy: bool,
    ) -> Result<bool, StoreError> {
        match self.current()? {
            Some(current) if current.commit == commit => {
                swap(
                    self.link_base(),
                    &self.link_rel,
                    &self.link_target(commit, fresh_copy),
                )?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// The operator's pin, if any (a damaged pin file holds what is live).
    pub fn pinned(&self) -> Result<Option<Pin>, StoreError> {
        let live = self.current().ok().flatten().map(|c| c.commit);
        self.records().pin(live.as_ref())
    }

    /// Release the pin, whatever state its file is in; returns what it was.
    pub fn unpin(&self, lock: &RootLock) -> Result<Option<Pin>, StoreError> {
        let pin = self.pinned()?;
        self.records().clear_pin(lock)?;
        Ok(pin)
    }

    /// How long ago the link last moved (the swap creates a new symlink, so the link's own
    /// modification time is the time of the last swap, whoever made it); `None` without a link.
    pub fn since_link_moved(&self) -> Option<Duration> {
        let moved = link_modified(self.link_base(), &self.link_rel)?;
        Some(SystemTime::now().duration_since(moved).unwrap_or_default())
    }
}

/// When the link at `link_rel` under `root` was last swapped, if there is one.
pub(crate) fn link_modified(root: &Path, link_rel: &Path) -> Option<SystemTime> {
    let dir = open_parent(root, link_rel).ok()?;
    let stat = dir.stat(file_name(link_rel)).ok()??;
    Some(
        SystemTime::UNIX_EPOCH
            + Duration::new(
                stat.st_mtime.max(0) as u64,
                stat.st_mtime_nsec.max(0) as u32,
            ),
    )
}

/// Point the link at `link_rel` under `root` at `target`, so that every reader sees either the
/// old or the new target.
///
/// After kubelet's `AtomicWriter`, reduced to the part that matters for a single link:
///
/// 1. Open the link's directory, walking from `root` one component at a time without following
///    symlinks ([`open_parent`]). A directory on the way that was replaced by a symlink (to
///    somewhere outside the root) fails the swap here, before anything is written, instead of
///    putting the link where readers do not look.
/// 2. Create a new symlink `.dagsnap-link-<pid>-<random>` in that directory, pointing at
///    `target`. Nobody reads this name, so creating it is invisible. If it fails (full disk,
///    read-only mount), nothing has changed and the error is returned as is.
/// 3. `renameat(2)` the new symlink over the link. POSIX guarantees the replacement is atomic: a
///    concurrent `open("link/...")` resolves either the old or the new target, never nothing.
///    This is why the link is never deleted and re-created. If the rename fails, the temporary
///    link is removed and the link still points at the old target.
/// 4. `fsync` the directory so the rename survives a power cut. If this fails, the swap has
///    happened for every reader but may be lost on a crash; the error is returned so the caller
///    reports it, and the next cycle re-checks the link anyway.
///
/// `target` is stored as given; callers pass a path relative to the link's directory so the
/// link resolves the same in every pod, whatever the volume's mount point.
pub(crate) fn swap(root: &Path, link_rel: &Path, target: &Path) -> Result<(), IoError> {
    // (1)
    let dir = open_parent(root, link_rel)?;
    let name = file_name(link_rel);
    // (2)
    let temp = format!("{TEMP_PREFIX}{}", fsutil::unique_suffix());
    dir.symlink(target, &temp)?;
    // (3)
    if let Err(e) = dir.rename(&temp, name) {
        let _ = dir.remove_file(&temp);
        return Err(IoError::new("replace link", root.join(link_rel), e.source));
    }
    // (4)
    dir.fsync()
}

/// The directory that holds the link at `link_rel` under `root` (the root, or for a link outside
/// it the directory holding both), opened by walking down from `root` with `O_NOFOLLOW` at every
/// step: each directory between it and the link must be a real directory, so the link can never
/// land elsewhere through a symlink. (`root` itself is the operator's choice and may be reached
/// through symlinks.)
pub(crate) fn open_parent(root: &Path, link_rel: &Path) -> Result<Dir, IoError> {
    let mut dir = Dir::open_path(root)?;
    let parents: Vec<Component> = link_rel
        .parent()
        .map(|p| p.components().collect())
        .unwrap_or_default();
    for component in parents {
        let name = component.as_os_str();
        dir = match dir.open_dir(name) {
            Ok(Some(next)) => next,
            Ok(None) => {
                return Err(IoError::new(
                    "open the link's directory",
                    dir.join(name),
                    io::Error::from_raw_os_error(libc::ENOENT),
                ))
            }
            Err(e) if fsutil::is_not_a_directory(&e) => {
                return Err(IoError::new(
                    NOT_A_LINK_DIR,
                    dir.join(name),
                    io::Error::other(
                        "it is a symlink or not a directory; the link's directories must be real directories inside the root",
                    ),
                ))
            }
            Err(e) => return Err(e),
        };
    }
    Ok(dir)
}

/// The link's target as stored, or `None` if there is no link (or no directory for it yet).
/// Anything at that path that is not a symlink is an error: it is something dagsnap did not
/// create.
pub(crate) fn read(root: &Path, link_rel: &Path) -> Result<Option<PathBuf>, ReadError> {
    let dir = match open_parent(root, link_rel) {
        Ok(dir) => dir,
        Err(e) if e.errno() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let name = file_name(link_rel);
    match dir.kind(name)? {
        None => Ok(None),
        Some(Kind::Symlink) => Ok(Some(dir.read_link(name)?)),
        Some(kind) => Err(ReadError::NotALink {
            path: root.join(link_rel),
            kind: match kind {
                Kind::Dir => "directory",
                _ => "file",
            },
        }),
    }
}

/// Remove temporary links a crash left between steps 2 and 3 of [`swap`].
pub(crate) fn remove_stale_temporaries(root: &Path, link_rel: &Path) -> Result<(), IoError> {
    let dir = match open_parent(root, link_rel) {
        Ok(dir) => dir,
        Err(e) if e.errno() == Some(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    for (name, kind) in dir.entries()? {
        if !name.to_string_lossy().starts_with(TEMP_PREFIX) {
            continue;
        }
        // Only symlinks: never delete a real file that happens to share the prefix.
        let kind = match kind {
            Some(kind) => Some(kind),
            None => dir.kind(&name)?,
        };
        if kind == Some(Kind::Symlink) {
            dir.remove_file(&name)?;
            tracing::debug!(path = %dir.join(&name).display(), "removed temporary link left by a crash");
        }
    }
    Ok(())
}

/// The relative path from the directory of a link at `link_rel` (relative to a root) back up to
/// that root: `""` for `current`, `"../"` for `dags/current`.
pub(crate) fn path_to_root(link_rel: &Path) -> PathBuf {
    let depth = link_rel
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .count()
        .saturating_sub(1);
    (0..depth)
        .map(|_| Component::ParentDir.as_os_str())
        .collect()
}

fn file_name(link_rel: &Path) -> &OsStr {
    link_rel.file_name().unwrap_or(link_rel.as_os_str())
}

/// The directory holding `path` (the root itself for a top-level name).
pub(super) fn parent_of(path: &Path) -> &Path {
    path.parent().unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn swap_replaces_target_and_leaves_no_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        swap(dir.path(), Path::new("current"), Path::new("a")).unwrap();
        swap(dir.path(), Path::new("current"), Path::new("b")).unwrap();
        assert_eq!(
            read(dir.path(), Path::new("current")).unwrap(),
            Some(PathBuf::from("b"))
        );
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("current")]);
    }

    #[test]
    fn a_symlinked_directory_on_the_way_to_the_link_is_refused() {
        let outside = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("dags")).unwrap();
        let err = swap(dir.path(), Path::new("dags/current"), Path::new("x")).unwrap_err();
        assert!(err.to_string().contains("real directories"), "{err}");
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
        assert!(read(dir.path(), Path::new("dags/current")).is_err());
    }

    #[test]
    fn a_real_directory_is_not_taken_for_the_link() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("current")).unwrap();
        let err = read(dir.path(), Path::new("current")).unwrap_err();
        assert!(err.to_string().contains("real directory"), "{err}");
    }

    #[test]
    fn nested_link_reaches_root() {
        assert_eq!(path_to_root(Path::new("current")), PathBuf::from(""));
        assert_eq!(path_to_root(Path::new("dags/current")), PathBuf::from(".."));
        assert_eq!(
            path_to_root(Path::new("a/b/current")),
            PathBuf::from("../..")
        );
    }
}
