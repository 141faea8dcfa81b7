//! A snapshot's life, from the first file written to the last one deleted:
//!
//! 1. **staging** — `snapshots/.staging-<host>.<pid>.<time>.<n>`, written by one publisher
//!    ([`Root::begin_staging`]); a [`Staging`] guard removes it on every failure path, and GC
//!    removes one whose publisher died. Never the link's target.
//! 2. **installed** — `snapshots/<sha>`, renamed into place whole after its manifest and entry
//!    list were written ([`Root::install`]); linked only once trusted ([`Root::check_snapshot`]).
//! 3. **live** — the link points at it (`link`); GC never touches it, nor a pinned or leased one.
//! 4. **out of service** — renamed within its directory, never deleted in place: *set aside*
//!    (not trusted, [`Root::set_aside`]) and *retired by GC* go to the trash at once; *retired by
//!    a repair* (`.retired-<sha>.<secs>.<n>`: readers may still hold it) goes to the trash after
//!    `--grace` ([`Root::retired_dirs`]). One helper does every such rename ([`rename_aside`]).
//! 5. **trash** — `.trash-<label>.<millis>.<n>`, deleted once older than the quarantine
//!    ([`Root::empty_trash`], outside the root's lock); a young one can still come back
//!    ([`Root::restore_from_trash`]).
//! 6. **gone** — with its manifest and entry list, unless the commit was built again.
//!
//! A repair's fresh copy lives the same life in `snapshots/.repair/`. Every step is a rename
//! within one directory: moving a directory to another parent rewrites its `..` entry, which
//! needs write permission on it, and snapshots are read-only (`0555`), so a non-root publisher
//! could not move them anywhere else.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::layout::{
    ensure_in, trash_name, LEGACY_TRASH_DIR, MANIFESTS_DIR, REPAIR_DIR, RETIRED_PREFIX,
    STAGING_PREFIX, STORE_DIR, TRASH_PREFIX,
};
use super::link::{self, Current};
use super::records::{self, read_json, warn_damaged, DirIdentity, Expected, Manifest, Read};
use super::{Root, RootLock, StoreError};
use crate::commit::CommitId;
use crate::entries::Entries;
use crate::fsutil::{self, Dir, Found, Kind};

/// The largest entry list read back (millions of files); a larger file is damaged.
const MAX_ENTRIES_BYTES: u64 = 512 << 20;

/// A directory under the store that a snapshot is being written into. Dropping it without
/// [`Root::install`] deletes it, so every failure path cleans up by construction.
#[derive(Debug)]
pub struct Staging {
    parent: Dir,
    name: String,
    dir: Dir,
}

impl Staging {
    /// Where it is, for messages.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The directory itself, to write into.
    pub fn dir(&self) -> &Dir {
        &self.dir
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Err(e) = self.parent.remove_tree(&self.name) {
            tracing::warn!(error = %e, "could not remove staging directory; the next start removes it");
        }
    }
}

/// Result of installing a staged snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Installed {
    /// Our copy is now `snapshots/<sha>`.
    Ours,
    /// Another publisher installed the same commit first; ours was discarded. Same commit means
    /// same content, so this is success.
    AlreadyThere,
}

/// An entry of `snapshots/` or `snapshots/.repair/` found by listing it, reachable by name.
#[derive(Debug)]
pub struct StoreEntry {
    parent: Dir,
    name: String,
    /// Where it is, for messages.
    pub path: PathBuf,
}

impl StoreEntry {
    fn in_dir(parent: &Dir, name: String) -> Result<StoreEntry, StoreError> {
        Ok(StoreEntry {
            path: parent.join(&name),
            parent: parent.try_clone()?,
            name,
        })
    }

    /// Delete it (and everything in it), never following a symlink.
    pub fn remove(&self) -> Result<(), StoreError> {
        Ok(self.parent.remove_tree(&self.name)?)
    }
}

/// A staging directory found in the store, and who made it when, if its name says.
#[derive(Debug)]
pub struct StagingDir {
    pub entry: StoreEntry,
    owner: Option<Owner>,
}

impl std::ops::Deref for StagingDir {
    type Target = StoreEntry;
    fn deref(&self) -> &StoreEntry {
        &self.entry
    }
}

impl StagingDir {
    /// When it was created: from its name, else its modification time.
    pub fn created(&self) -> Option<SystemTime> {
        self.owner.as_ref().map(|o| o.created).or_else(|| {
            let stat = self.entry.parent.stat(&self.entry.name).ok()??;
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(stat.st_mtime.max(0) as u64))
        })
    }

    /// The host and pid that made it, if its name says.
    pub fn owner(&self) -> Option<(&str, u32)> {
        self.owner.as_ref().map(|o| (o.host.as_str(), o.pid))
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Owner {
    host: String,
    pid: u32,
    created: SystemTime,
}

/// How something leaves service by a rename within its own directory ([`rename_aside`]).
#[derive(Debug, Clone, Copy)]
enum Aside {
    /// `.retired-<label>.<unix seconds>.<unique>`: kept for `--grace`, readers may hold it.
    Retired,
    /// `.trash-<label>.<unix millis>.<unique>`: deleted after the quarantine.
    Trash,
}

/// Rename `name` in `dir` out of service (see [`Aside`]); one that is gone already is fine.
fn rename_aside(dir: &Dir, name: &str, label: &str, aside: Aside) -> Result<(), StoreError> {
    let destination = match aside {
        Aside::Trash => trash_name(label),
        Aside::Retired => {
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            format!("{RETIRED_PREFIX}{label}.{now}.{}", fsutil::unique_suffix())
        }
    };
    match dir.rename(name, &destination) {
        // Someone else moved it first.
        Err(e) if e.errno() == Some(libc::ENOENT) => Ok(()),
        other => Ok(other?),
    }
}

impl Root {
    /// Whether `snapshots/<commit>` is a directory (not a symlink to one).
    pub fn has_snapshot(&self, commit: &CommitId) -> bool {
        self.snapshots_dir()
            .ok()
            .flatten()
            .is_some_and(|d| matches!(d.kind(commit), Ok(Some(Kind::Dir))))
    }

    /// `snapshots/<commit>`, opened without following a symlink; `None` if it is not there.
    pub fn open_snapshot(&self, commit: &CommitId) -> Result<Option<Dir>, StoreError> {
        match self.snapshots_dir()? {
            Some(snapshots) => Ok(snapshots.open_dir(commit)?),
            None => Ok(None),
        }
    }

    /// The directory the link shows (`snapshots/<commit>` or a repair's fresh copy), opened
    /// without following a symlink.
    pub fn open_current(&self, current: &Current) -> Result<Option<Dir>, StoreError> {
        if !current.in_repair {
            return self.open_snapshot(&current.commit);
        }
        match self.repair_dir()? {
            Some(repair) => Ok(repair.open_dir(&current.commit)?),
            None => Ok(None),
        }
    }

    /// The repair's fresh copy of `commit`, opened without following a symlink.
    pub fn open_fresh_copy(&self, commit: &CommitId) -> Result<Option<Dir>, StoreError> {
        match self.repair_dir()? {
            Some(repair) => Ok(repair.open_dir(commit)?),
            None => Ok(None),
        }
    }

    /// Whether the installed snapshot of `commit` is one dagsnap built for that commit, before
    /// anything links it. Anyone who can write the volume can put a directory under a commit's
    /// name; readers would get its content as that commit.
    ///
    /// Trusted: a real directory with a readable manifest for `commit` (and for `tree`, when the
    /// caller knows the commit's tree) that records this directory's identity (inode and
    /// modification time, which a rename keeps, so only the directory dagsnap built has them), or,
    /// for a manifest without one (older dagsnap) or a volume restored from a backup, whose
    /// files match the recorded entry list in type, mode and size. Returns why not, otherwise.
    pub fn check_snapshot(
        &self,
        commit: &CommitId,
        expected: Option<&Expected>,
    ) -> Result<(), String> {
        let stat = match self.snapshots_dir() {
            Ok(Some(snapshots)) => snapshots.stat(commit),
            Ok(None) => Ok(None),
            Err(e) => return Err(format!("it cannot be read ({e})")),
        };
        let stat = match stat {
            Ok(Some(stat)) if Kind::of_stat(&stat) == Kind::Dir => stat,
            Ok(Some(_)) => return Err("it is not a directory".into()),
            Ok(None) => return Err("it cannot be read (it is not there)".into()),
            Err(e) => return Err(format!("it cannot be read ({e})")),
        };
        let manifest = self
            .manifest(commit)
            .ok()
            .flatten()
            .ok_or("it has no manifest written by dagsnap")?;
        if manifest.commit != commit {
            return Err(format!("its manifest is for commit {}", manifest.commit));
        }
        if let Some(expected) = expected {
            expected.matches(&manifest, || self.entries(commit).ok().flatten())?;
        }
        if manifest.dir == Some(DirIdentity::of(&stat)) {
            return Ok(());
        }
        let entries = self.entries(commit).ok().flatten().ok_or(
            "it is not the directory dagsnap built, and has no entry list to check it against",
        )?;
        let jobs = crate::store::snapshot::DEFAULT_BUILD_JOBS;
        crate::store::snapshot::quick_check(&self.snapshot_path(commit), &entries, jobs).map_err(
            |problem| {
                format!("it is not the directory dagsnap built, and it differs from its entry list ({problem})")
            },
        )
    }

    /// Whether the live snapshot holds what a build of `expected` would (the same tree, selected
    /// and with submodules the same way), so that a commit that changed nothing it publishes
    /// (a change outside `--subdir`) need not move the link.
    pub fn live_holds(&self, expected: &Expected) -> bool {
        let Ok(Some(current)) = self.current() else {
            return false;
        };
        current.complete && self.check_snapshot(&current.commit, Some(expected)).is_ok()
    }

    /// Move a snapshot that cannot be trusted out of the way, so that it is rebuilt.
    pub fn set_aside(
        &self,
        lock: &RootLock,
        commit: &CommitId,
        why: &str,
    ) -> Result<(), StoreError> {
        tracing::warn!(%commit, why, "moving aside a snapshot dagsnap did not build (or that was changed); it is rebuilt");
        self.move_snapshot_to_trash(lock, commit)
    }

    /// A fresh, empty, uniquely named directory in the store to build a snapshot in.
    pub fn begin_staging(&self) -> Result<Staging, StoreError> {
        begin_staging_in(self.snapshots_dir_created()?)
    }

    /// A staging directory for a repair's fresh copy, inside `snapshots/.repair/` so that it is
    /// renamed within its directory (see `store::repair`).
    pub fn begin_repair_staging(&self) -> Result<Staging, StoreError> {
        let repair = ensure_in(&self.snapshots_dir_created()?, REPAIR_DIR)?;
        begin_staging_in(repair)
    }

    /// Install a complete staged snapshot as `snapshots/<commit>`.
    ///
    /// 1. If another publisher installed the commit while this one built it, discard this copy
    ///    and leave its records alone (step 2's race, made rare). Otherwise write the entry
    ///    list and the manifest (atomically), the manifest recording the staging directory's
    ///    identity (inode and modification time), which the rename keeps. They go first so
    ///    that a snapshot is never visible without them; a crash after this step leaves
    ///    records without a snapshot, which the next attempt simply overwrites.
    /// 2. `rename(2)` the staging directory to `snapshots/<commit>`. If that name already exists
    ///    (`EEXIST`/`ENOTEMPTY`), another publisher installed the same commit first: same commit,
    ///    same content, so our copy is deleted and this is success. Our manifest and entry list
    ///    replaced theirs in step 1, so they are written once more: the manifest with the inode
    ///    of the directory that won, the entry list without our files' modification times
    ///    (theirs differ; sizes and modes are the same).
    /// 3. `fsync` the snapshots directory so the rename is durable before any link points at it.
    pub fn install(
        &self,
        staging: Staging,
        manifest: &Manifest,
        entries: &Entries,
    ) -> Result<Installed, StoreError> {
        let commit = manifest.commit.clone();
        let manifests = self.store().ensure(MANIFESTS_DIR)?;
        let mut manifest = manifest.clone();
        // (1)
        if staging.parent.kind(&commit)? == Some(Kind::Dir) {
            drop(staging);
            return Ok(Installed::AlreadyThere);
        }
        manifest.dir = Some(DirIdentity::of(&staging.dir.stat_self()?));
        manifests.write_atomically(format!("{commit}.entries"), &entries.encode())?;
        records::write_json(&manifests, &format!("{commit}.json"), &manifest)?;
        // (2)
        match staging.parent.rename(&staging.name, &commit) {
            Ok(()) => {
                let snapshots = staging.parent.try_clone()?;
                // Renamed away: there is nothing left for the guard to delete.
                std::mem::forget(staging);
                // (3)
                snapshots.fsync()?;
                Ok(Installed::Ours)
            }
            Err(e) if matches!(e.errno(), Some(libc::EEXIST) | Some(libc::ENOTEMPTY)) => {
                let snapshots = staging.parent.try_clone()?;
                drop(staging);
                let winner = snapshots.stat(&commit)?.ok_or(e)?;
                let mut theirs = entries.clone();
                theirs.0.iter_mut().for_each(|entry| entry.mtime = None);
                manifests.write_atomically(format!("{commit}.entries"), &theirs.encode())?;
                manifest.dir = Some(DirIdentity::of(&winner));
                records::write_json(&manifests, &format!("{commit}.json"), &manifest)?;
                Ok(Installed::AlreadyThere)
            }
            Err(e) => Err(fsutil::IoError::new(
                "move snapshot into place at",
                staging.parent.join(&commit),
                e.source,
            )
            .into()),
        }
    }

    /// Rename a repair's staged fresh copy of `commit` to `snapshots/.repair/<commit>`, retiring
    /// any copy an interrupted repair left there.
    pub fn install_fresh_copy(
        &self,
        staging: Staging,
        commit: &CommitId,
    ) -> Result<(), StoreError> {
        let repair = staging.parent.try_clone()?;
        if repair.kind(commit)?.is_some() {
            rename_aside(&repair, commit, commit, Aside::Retired)?;
        }
        repair.rename(&staging.name, commit)?;
        std::mem::forget(staging);
        repair.fsync()?;
        Ok(())
    }

    /// Take `snapshots/<commit>` out of service without deleting it: readers that resolved the
    /// link to it keep their files until GC deletes it after `--grace`.
    pub fn retire_snapshot(&self, _lock: &RootLock, commit: &CommitId) -> Result<(), StoreError> {
        match self.snapshots_dir()? {
            Some(snapshots) if snapshots.kind(commit)?.is_some() => {
                rename_aside(&snapshots, commit, commit, Aside::Retired)
            }
            _ => Ok(()),
        }
    }

    /// Take the repair's fresh copy of `commit` out of service (its files live on in
    /// `snapshots/<commit>`, which shares them).
    pub fn retire_fresh_copy(&self, commit: &CommitId) -> Result<(), StoreError> {
        match self.repair_dir()? {
            Some(repair) if repair.kind(commit)?.is_some() => {
                rename_aside(&repair, commit, commit, Aside::Retired)
            }
            _ => Ok(()),
        }
    }

    /// Directories retired by repairs, and when: GC moves them to the trash after `--grace`.
    pub fn retired_dirs(&self) -> Result<Vec<(StoreEntry, SystemTime)>, StoreError> {
        let mut found = Vec::new();
        for dir in [self.snapshots_dir()?, self.repair_dir()?]
            .into_iter()
            .flatten()
        {
            for name in dir.names()? {
                let name = name.to_string_lossy().into_owned();
                let Some(rest) = name.strip_prefix(RETIRED_PREFIX) else {
                    continue;
                };
                // `<label>.<seconds>.<pid>-<random>`
                let seconds = rest
                    .rsplit('.')
                    .nth(1)
                    .and_then(|s| s.parse::<u64>().ok())
                    .unwrap_or(0);
                let at = SystemTime::UNIX_EPOCH + Duration::from_secs(seconds);
                found.push((StoreEntry::in_dir(&dir, name)?, at));
            }
        }
        Ok(found)
    }

    /// Move a retired directory into the trash (GC, under the lock).
    pub fn move_retired_to_trash(
        &self,
        _lock: &RootLock,
        retired: &StoreEntry,
    ) -> Result<(), StoreError> {
        rename_aside(&retired.parent, &retired.name, "retired", Aside::Trash)
    }

    /// Move an abandoned staging directory into the trash.
    pub fn move_staging_to_trash(
        &self,
        _lock: &RootLock,
        staging: &StagingDir,
    ) -> Result<(), StoreError> {
        rename_aside(&staging.parent, &staging.name, "staging", Aside::Trash)
    }

    /// Move the snapshot of `commit` out of service, into the trash. Under the lock, so no
    /// publisher decides to link it meanwhile; the slow deletion happens later, without the
    /// lock ([`Root::empty_trash`]). Its manifest and entry list stay until the trash is
    /// emptied, so that [`Root::restore_from_trash`] can bring it back whole.
    pub fn move_snapshot_to_trash(
        &self,
        _lock: &RootLock,
        commit: &CommitId,
    ) -> Result<(), StoreError> {
        match self.snapshots_dir()? {
            Some(snapshots) => rename_aside(&snapshots, commit, commit, Aside::Trash),
            None => Ok(()),
        }
    }

    /// Bring the snapshot of `commit` back from the trash, if it is there and young enough
    /// that no one deletes it yet (less than half of `quarantine` old, see
    /// [`Root::empty_trash`]). For a link that names a snapshot GC just retired: on a volume
    /// whose locks do not work, another publisher may have decided to link it before GC moved
    /// it. Whether it was restored.
    pub fn restore_from_trash(&self, commit: &CommitId, quarantine: Duration) -> bool {
        if self.has_snapshot(commit) {
            return true;
        }
        let Ok(Some(snapshots)) = self.snapshots_dir() else {
            return false;
        };
        let prefix = format!("{TRASH_PREFIX}{commit}.");
        let now = SystemTime::now();
        let mut found: Vec<(SystemTime, String)> = snapshots
            .names()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|name| {
                let name = name.to_string_lossy().into_owned();
                let trashed = trashed_at(name.strip_prefix(&prefix)?)?;
                Some((trashed, name))
            })
            .filter(|(at, _)| {
                now.duration_since(*at)
                    .is_ok_and(|age| age < quarantine / 2)
            })
            .collect();
        found.sort();
        match found.pop() {
            Some((_, name)) => snapshots.rename(&name, commit).is_ok(),
            None => false,
        }
    }

    /// Delete what has been in the trash for `quarantine` or longer; returns how many entries
    /// went. Entries another process is deleting at the same time are skipped without error.
    ///
    /// The quarantine (a publisher's lock timeout plus its sync timeout) outlasts any publisher
    /// that decided to link a snapshot just before GC retired it: on a volume whose locks do not
    /// work, such a publisher swaps the link to a name GC has just moved, and brings the snapshot
    /// back intact ([`Root::restore_from_trash`]). An operator's deletion passes zero.
    ///
    /// The trash is in `snapshots/`, `snapshots/.repair/`, the store itself (store directories
    /// that were not directories, set aside) and the `trash/` of dagsnap before 0.2. Each is
    /// reached without following a symlink, and so is everything deleted.
    pub fn empty_trash(&self, quarantine: Duration) -> Result<usize, StoreError> {
        let now = SystemTime::now();
        let store = self.store();
        let mut doomed: Vec<(StoreEntry, Option<CommitId>)> = Vec::new();
        let dirs = [self.snapshots_dir()?, self.repair_dir()?, store.open()?];
        for dir in dirs.into_iter().flatten() {
            for name in dir.names()? {
                let name = name.to_string_lossy().into_owned();
                let Some(rest) = name.strip_prefix(TRASH_PREFIX) else {
                    continue;
                };
                // `<label>.<millis>.<suffix>`; older trash names have no time and go at once.
                let (label, tail) = rest.split_once('.').unwrap_or((rest, ""));
                let due = trashed_at(tail)
                    .is_none_or(|at| now.duration_since(at).is_ok_and(|age| age >= quarantine));
                if due {
                    let commit = CommitId::parse(label).ok();
                    doomed.push((StoreEntry::in_dir(&dir, name)?, commit));
                }
            }
        }
        if let Some(legacy) = store.read_dir(LEGACY_TRASH_DIR)? {
            for name in legacy.names()? {
                let name = name.to_string_lossy().into_owned();
                doomed.push((StoreEntry::in_dir(&legacy, name)?, None));
            }
        }
        let manifests = self.manifests_dir()?;
        for (entry, commit) in &doomed {
            entry.remove()?;
            // The records of a snapshot go with it, unless it was built again meanwhile.
            if let (Some(commit), Some(manifests)) = (commit, &manifests) {
                if !self.has_snapshot(commit) {
                    let _ = manifests.remove_file(format!("{commit}.json"));
                    let _ = manifests.remove_file(format!("{commit}.entries"));
                }
            }
        }
        Ok(doomed.len())
    }

    /// Every staging directory in the store, from any host.
    pub fn staging_dirs(&self) -> Result<Vec<StagingDir>, StoreError> {
        let mut found = Vec::new();
        for dir in [self.snapshots_dir()?, self.repair_dir()?]
            .into_iter()
            .flatten()
        {
            for name in dir.names()? {
                let name = name.to_string_lossy().into_owned();
                if let Some(rest) = name.strip_prefix(STAGING_PREFIX) {
                    let owner = parse_staging_owner(rest);
                    found.push(StagingDir {
                        entry: StoreEntry::in_dir(&dir, name)?,
                        owner,
                    });
                }
            }
        }
        Ok(found)
    }

    /// Commits of every installed snapshot.
    pub fn snapshot_commits(&self) -> Result<Vec<CommitId>, StoreError> {
        let Some(snapshots) = self.snapshots_dir()? else {
            return Ok(Vec::new());
        };
        Ok(snapshots
            .names()?
            .into_iter()
            .filter_map(|n| CommitId::parse(n.to_str()?).ok())
            .collect())
    }

    /// What the snapshot of `commit` is, as recorded when it was built; `None` when there is
    /// no readable manifest (a damaged one is warned about).
    pub fn manifest(&self, commit: &CommitId) -> Result<Option<Manifest>, StoreError> {
        let Some(manifests) = self.manifests_dir()? else {
            return Ok(None);
        };
        let name = format!("{commit}.json");
        Ok(match read_json::<Manifest>(&manifests, &name)? {
            Read::Valid(manifest) => Some(manifest),
            Read::Missing => None,
            Read::Damaged(why) => {
                warn_damaged(
                    &manifests.join(&name),
                    &why,
                    "treating the snapshot as undescribed",
                );
                None
            }
        })
    }

    /// What the snapshot of `commit` holds, as recorded when it was built; `None` when there is
    /// no readable entry list (a damaged one is warned about).
    ///
    /// Files' modification times belong to one build: they are kept only when the manifest
    /// records the identity of the directory now at `snapshots/<commit>`, i.e. when the list
    /// was written for that very directory. Two publishers that build a commit at once both
    /// write the records before one of them wins the rename; until the loser writes them again,
    /// the list's times are the loser's, and comparing them would take the winner's files for
    /// edited ones.
    pub fn entries(&self, commit: &CommitId) -> Result<Option<Entries>, StoreError> {
        let Some(manifests) = self.manifests_dir()? else {
            return Ok(None);
        };
        let name = format!("{commit}.entries");
        let why = match manifests.read_record(&name, MAX_ENTRIES_BYTES)? {
            Found::Missing => return Ok(None),
            Found::Bytes(bytes) => match Entries::decode(&bytes) {
                Ok(mut entries) => {
                    if entries.0.iter().any(|e| e.mtime.is_some()) && !self.built_here(commit) {
                        entries.0.iter_mut().for_each(|e| e.mtime = None);
                    }
                    return Ok(Some(entries));
                }
                Err(why) => why,
            },
            Found::Unusable(why) => why,
        };
        warn_damaged(&manifests.join(&name), &why, "not using it");
        Ok(None)
    }

    /// Whether the manifest of `commit` records the identity of the directory now at
    /// `snapshots/<commit>`.
    fn built_here(&self, commit: &CommitId) -> bool {
        let Ok(Some(snapshots)) = self.snapshots_dir() else {
            return false;
        };
        let Ok(Some(stat)) = snapshots.stat(commit) else {
            return false;
        };
        self.manifest(commit)
            .ok()
            .flatten()
            .is_some_and(|m| m.dir == Some(DirIdentity::of(&stat)))
    }

    /// The full id of the snapshot that `wanted` names: a full id or an unambiguous prefix of at
    /// least 4 hex digits, among installed snapshots.
    pub fn resolve_commit(&self, wanted: &str) -> Result<CommitId, StoreError> {
        let wanted = wanted.trim().to_ascii_lowercase();
        let retained = self.snapshot_commits()?;
        let matches: Vec<&CommitId> = retained
            .iter()
            .filter(|c| wanted.len() >= 4 && c.starts_with(&wanted))
            .collect();
        match matches.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(StoreError::NotRetained {
                wanted,
                retained: self.describe_commits(&retained),
            }),
            many => Err(StoreError::Ambiguous {
                wanted,
                matches: self
                    .describe_commits(&many.iter().map(|c| (*c).clone()).collect::<Vec<_>>()),
            }),
        }
    }

    /// `<short sha> <subject>` for each commit, for error messages.
    fn describe_commits(&self, commits: &[CommitId]) -> Vec<String> {
        commits
            .iter()
            .map(|c| {
                let subject = self
                    .manifest(c)
                    .ok()
                    .flatten()
                    .map(|m| m.subject)
                    .unwrap_or_default();
                format!("{} {subject}", c.short()).trim_end().to_string()
            })
            .collect()
    }

    /// Remove everything dagsnap made in this root: the link and its leftover temporaries,
    /// `.airflowignore` if it is still the one dagsnap wrote, the store with every snapshot
    /// (write permission is restored inside it first), and the link's directories if that leaves
    /// them empty. The root directory itself stays: it may be a mount point. Returns what went.
    ///
    /// The caller makes sure no publisher runs; readers lose their files.
    pub fn remove_everything(&self, _lock: RootLock) -> Result<Vec<PathBuf>, StoreError> {
        let mut removed = Vec::new();
        let link = self.link_path();
        let name = self.link_rel.file_name().unwrap_or_default();
        if self.current().ok().flatten().is_some() {
            link::open_parent(self.link_base(), &self.link_rel)?.remove_file(name)?;
            removed.push(link.clone());
        }
        link::remove_stale_temporaries(self.link_base(), &self.link_rel)?;
        let root = self.store().root_dir()?;
        let ours = format!("{STORE_DIR}\n");
        if matches!(root.read_record(super::layout::AIRFLOWIGNORE, 4096)?, Found::Bytes(b) if b == ours.as_bytes())
        {
            root.remove_file(super::layout::AIRFLOWIGNORE)?;
            removed.push(root.join(super::layout::AIRFLOWIGNORE));
        }
        // The lock lives in the store; it is released with the deleted file.
        root.remove_tree(STORE_DIR)?;
        removed.push(root.join(STORE_DIR));
        let mut dir = self.link_rel.parent().map(Path::to_path_buf);
        while let Some(relative) = dir.filter(|d| !d.as_os_str().is_empty()) {
            let gone = link::open_parent(self.link_base(), &relative)
                .and_then(|parent| parent.remove_dir(relative.file_name().unwrap_or_default()));
            if gone.is_err() {
                break;
            }
            removed.push(self.link_base().join(&relative));
            dir = relative.parent().map(Path::to_path_buf);
        }
        Ok(removed)
    }
}

/// A fresh staging directory in `parent`.
fn begin_staging_in(parent: Dir) -> Result<Staging, StoreError> {
    let created = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let name = format!(
        "{STAGING_PREFIX}{}.{}.{created}.{:016x}",
        fsutil::hostname(),
        std::process::id(),
        rand::random::<u64>()
    );
    let path = parent.join(&name);
    let created = parent
        .create_new_dir(&name, fsutil::dir_mode())
        .map_err(|e| fsutil::IoError::new("create staging directory", &path, e.source))?;
    Ok(Staging {
        parent,
        name,
        dir: created,
    })
}

/// Parse `<host>.<pid>.<unix seconds>.<nonce>` (host names may contain dots).
fn parse_staging_owner(rest: &str) -> Option<Owner> {
    let mut parts = rest.rsplitn(4, '.');
    let _nonce = parts.next()?;
    let created: u64 = parts.next()?.parse().ok()?;
    let pid = parts.next()?.parse().ok()?;
    let host = parts.next()?.to_string();
    Some(Owner {
        host,
        pid,
        created: SystemTime::UNIX_EPOCH + Duration::from_secs(created),
    })
}

/// When a trash entry was trashed, from the `<millis>.<suffix>` after its label.
fn trashed_at(tail: &str) -> Option<SystemTime> {
    let millis: u64 = tail.split('.').next()?.parse().ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_millis(millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_owner_survives_dots_in_hostnames() {
        assert_eq!(
            parse_staging_owner("web-1.ns.svc.42.1700000000.00000000deadbeef"),
            Some(Owner {
                host: "web-1.ns.svc".to_string(),
                pid: 42,
                created: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            })
        );
        assert_eq!(parse_staging_owner("garbage"), None);
    }
}
