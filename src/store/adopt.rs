//! Making a root ready for a publisher at start-up, taking back a failed first start, and
//! taking a root over from git-sync (`--adopt-git-sync`; git-sync's side is `gitsync`).

use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Component, PathBuf};
use std::time::{Duration, SystemTime};

use super::layout::{AIRFLOWIGNORE, STORE_DIR};
use super::link::{self, parent_of};
use super::{gitsync, Root, RootLock, StoreError};
use crate::commit::CommitId;
use crate::fsutil::{self, is_not_a_directory, Context, Dir, Found, IoError, Kind};

/// Directories a fresh filesystem brings along; their presence does not make a root foreign.
const FILESYSTEM_ENTRIES: &[&str] = &["lost+found"];

/// What [`Root::adopt`] created.
#[derive(Debug, Default, Clone)]
pub struct Created {
    pub root: bool,
    pub store: bool,
    pub link_dirs: Vec<PathBuf>,
    pub airflowignore: bool,
}

/// The link shows one of git-sync's worktrees (a root being taken over from git-sync).
#[derive(Debug, Clone)]
pub struct GitSyncLive {
    pub commit: CommitId,
    pub dir: PathBuf,
    /// When git-sync last wrote the root.
    pub last_write: Option<SystemTime>,
}

impl GitSyncLive {
    /// How long git-sync has left the root alone (zero if it wrote in the future).
    pub fn quiet_for(&self) -> Duration {
        self.last_write
            .and_then(|at| SystemTime::now().duration_since(at).ok())
            .unwrap_or(Duration::MAX)
    }
}

impl Root {
    /// Take over git-sync's files and link in this root once git-sync has left it alone for
    /// `after` (`--adopt-git-sync`).
    pub fn adopting_git_sync(mut self, after: Duration) -> Root {
        self.adopt_git_sync = Some(after);
        self
    }

    /// `--adopt-after`, when adopting a git-sync root.
    pub fn adopt_after(&self) -> Option<Duration> {
        self.adopt_git_sync
    }

    /// Also accept `path` (a touch or error file this publisher keeps) at start-up, if it is in
    /// the root.
    pub fn owning(mut self, path: &std::path::Path) -> Root {
        if let Ok(relative) = path.strip_prefix(&self.root) {
            if let Some(top) = relative.components().next() {
                self.own_entries.push(top.as_os_str().to_owned());
            }
        }
        self
    }

    /// The git-sync worktree the link shows, when adopting and the link is git-sync's.
    pub fn git_sync_live(&self) -> Option<GitSyncLive> {
        self.adopt_git_sync?;
        let link = self.link_path();
        let target = link::read(self.link_base(), &self.link_rel).ok()??;
        let (commit, dir) = gitsync::worktree_of(&self.root, parent_of(&link), &target)?;
        Some(GitSyncLive {
            commit,
            dir,
            last_write: gitsync::last_write(&self.root, &link, true),
        })
    }

    /// Remove git-sync's files once nobody can need them: the link has been dagsnap's for
    /// `grace` (no reader still holds a worktree it resolved before), counted from its first
    /// move after git-sync last wrote the root (a running git-sync would have taken it back,
    /// and the count starts again). Only what git-sync wrote goes, never the configured link
    /// ([`gitsync::remove`]). Returns what was removed, if anything.
    pub fn remove_git_sync_leftovers(
        &self,
        _lock: &RootLock,
        grace: Duration,
    ) -> Result<Vec<PathBuf>, StoreError> {
        if self.adopt_git_sync.is_none() || !gitsync::present(&self.root) {
            return Ok(Vec::new());
        }
        if !self.current()?.is_some_and(|c| c.complete) {
            return Ok(Vec::new());
        }
        // Since when the link has been dagsnap's: its first move after git-sync last wrote the
        // root (the journal's, not the link's mtime, which every publish renews).
        let git_sync_wrote = gitsync::last_write(&self.root, &self.link_path(), false);
        let ours_since = self
            .records()
            .journal()?
            .iter()
            .filter(|p| p.moved_link)
            .map(|p| p.published_at)
            .filter(|at| git_sync_wrote.is_none_or(|wrote| *at >= wrote))
            .min();
        let held_long_enough = ours_since.is_some_and(|since| {
            SystemTime::now()
                .duration_since(since)
                .is_ok_and(|held| held >= grace)
        });
        if !held_long_enough {
            return Ok(Vec::new());
        }
        // The configured link's entry in the root, if the link is in it.
        let link_top = if self.link_base() == self.root.as_path() {
            self.link_rel
                .components()
                .next()
                .map(|c| c.as_os_str().to_owned())
                .unwrap_or_default()
        } else {
            std::ffi::OsString::new()
        };
        Ok(gitsync::remove(&self.store().root_dir()?, &link_top)?)
    }

    /// Make the root ready for a publisher, adopting what an earlier run left.
    ///
    /// - A missing root is created; a root that is a file, or not writable, is refused.
    /// - A root holding git-sync's checkout (unless taken over), a real directory where the
    ///   link goes, or a link to elsewhere is refused, never cleaned: those files may be what
    ///   readers use today. Anything else dagsnap did not create stays, and is warned about.
    /// - The store directories and `.airflowignore` are created if absent; an existing
    ///   `.airflowignore` is the user's and is left alone.
    /// - Temporary links and this host's staging directories left by a crash are removed.
    ///   Staging directories of other hosts may belong to live publishers and are left alone.
    ///
    /// Nothing is written when everything is already in place, so a restart does not touch
    /// what readers see. Returns what was created, for [`Root::undo_first_start`].
    pub fn adopt(&self) -> Result<Created, StoreError> {
        let mut created = Created::default();
        match fs::metadata(&self.root) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(fsutil::dir_mode())
                    .create(&self.root)
                    .at("create root", &self.root)?;
                created.root = true;
            }
            Err(e) => return Err(IoError::new("inspect root", &self.root, e).into()),
            Ok(meta) if !meta.is_dir() => {
                return Err(StoreError::RootNotADirectory {
                    path: self.root.clone(),
                })
            }
            Ok(_) => {}
        }
        if let Err(errno) = nix::unistd::access(&self.root, nix::unistd::AccessFlags::W_OK) {
            return Err(StoreError::RootNotWritable {
                path: self.root.clone(),
                cause: std::io::Error::from(errno).to_string(),
                uid: nix::unistd::geteuid().as_raw(),
            });
        }
        let root = self.store().root_dir()?;
        self.check_foreign_entries(&root)?;
        self.current()?;

        created.store = root.kind(STORE_DIR)? != Some(Kind::Dir);
        self.ensure_layout()?;
        created.link_dirs = self.ensure_link_parents(&root)?;
        created.airflowignore = self.ensure_airflowignore(&root)?;
        link::remove_stale_temporaries(self.link_base(), &self.link_rel)?;
        self.remove_own_stale_staging()?;
        Ok(created)
    }

    /// Take back what a first start created ([`Root::adopt`]'s report), if nothing was ever
    /// published here: an operator trying things should not be left with empty roots. Whatever
    /// existed before, or holds a snapshot, stays. Returns what was removed.
    pub fn undo_first_start(&self, created: &Created) -> Vec<PathBuf> {
        let mut removed = Vec::new();
        let untouched = self.current().ok().flatten().is_none()
            && self.snapshot_commits().is_ok_and(|c| c.is_empty());
        let Ok(root) = self.store().root_dir() else {
            return removed;
        };
        if !untouched {
            return removed;
        }
        if created.airflowignore && root.remove_file(AIRFLOWIGNORE).is_ok() {
            removed.push(root.join(AIRFLOWIGNORE));
        }
        if created.store && root.remove_tree(STORE_DIR).is_ok() {
            removed.push(root.join(STORE_DIR));
        }
        for dir in created.link_dirs.iter().rev() {
            let Ok(relative) = dir.strip_prefix(self.link_base()) else {
                continue;
            };
            let removed_it = link::open_parent(self.link_base(), relative)
                .and_then(|parent| parent.remove_dir(relative.file_name().unwrap_or_default()))
                .is_ok();
            if removed_it {
                removed.push(dir.clone());
            }
        }
        if created.root && fs::remove_dir(&self.root).is_ok() {
            removed.push(self.root.clone());
        }
        removed
    }

    /// Every directory between the root (or, for a link outside it, the directory holding both)
    /// and the link exists and is a real directory; returns those it created.
    fn ensure_link_parents(&self, root: &Dir) -> Result<Vec<PathBuf>, StoreError> {
        let mut at = if self.link_base() == self.root.as_path() {
            root.try_clone()?
        } else {
            Dir::open_path(self.link_base())?
        };
        let mut created = Vec::new();
        let parents: Vec<Component> = self
            .link_rel
            .parent()
            .map(|p| p.components().collect())
            .unwrap_or_default();
        for component in parents {
            let name = component.as_os_str();
            let (next, made) = match at.create_dir(name, fsutil::dir_mode()) {
                Ok(found) => found,
                Err(e) if is_not_a_directory(&e) => {
                    return Err(StoreError::NotARealDirectory {
                        path: at.join(name),
                        what: match at.kind(name) {
                            Ok(Some(kind)) => kind.described(),
                            _ => "not a directory",
                        },
                    })
                }
                Err(e) => return Err(e.into()),
            };
            if made {
                created.push(next.path().to_path_buf());
            }
            at = next;
        }
        Ok(created)
    }

    /// What else the root holds. git-sync's files are refused unless the root is being taken
    /// over from git-sync: they may be what readers use today, and a git-sync may still write
    /// them. Anything else (a stray file, a directory of another tool, `lost+found`) is left
    /// where it is and published beside, with one warning naming it: dagsnap never deletes
    /// what it did not create, and needs nothing but its store and its link.
    fn check_foreign_entries(&self, root: &Dir) -> Result<(), StoreError> {
        let foreign: Vec<OsString> = root
            .names()?
            .into_iter()
            .filter(|name| {
                !self.owns_top_entry(name) && !FILESYSTEM_ENTRIES.iter().any(|f| name == *f)
            })
            .collect();
        if foreign.iter().any(|name| gitsync::is_git_sync_entry(name)) {
            return Err(StoreError::ForeignContent {
                root: self.root.clone(),
                entries: listed(foreign),
            });
        }
        if !foreign.is_empty() {
            tracing::warn!(
                root = %self.root.display(),
                entries = %listed(foreign).join(", "),
                "the root holds entries dagsnap did not create; publishing beside them, never deleting them (readers of the root itself see them too)"
            );
        }
        Ok(())
    }

    /// Write `.airflowignore` unless one exists. It appears whole or not at all: written under a
    /// temporary name in the store, then hard-linked into place (`link(2)` fails if the name
    /// exists, so an operator's file, or one a concurrent publisher just made, is never
    /// replaced, and nobody ever reads a half-written one).
    fn ensure_airflowignore(&self, root: &Dir) -> Result<bool, StoreError> {
        if root.kind(AIRFLOWIGNORE)?.is_some() {
            // Nothing is written when everything is in place (a restart leaves the root as is).
            self.check_airflowignore(root);
            return Ok(false);
        }
        let store = self.store().create()?;
        let temp = format!(".tmp-airflowignore-{}", fsutil::unique_suffix());
        let created = (|| {
            let mut file = store.create_new(&temp, fsutil::file_mode())?;
            file.write_all(format!("{STORE_DIR}\n").as_bytes())
                .at("write", &store.join(&temp))?;
            file.sync_all().at("fsync", &store.join(&temp))?;
            store.hard_link_to(&temp, root, AIRFLOWIGNORE)
        })();
        let _ = store.remove_file(&temp);
        match created {
            Ok(()) => Ok(true),
            Err(e) if e.errno() == Some(libc::EEXIST) => {
                self.check_airflowignore(root);
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// An existing `.airflowignore` is the operator's; say so if it lets Airflow into the store.
    fn check_airflowignore(&self, root: &Dir) {
        let contents = match root.read_record(AIRFLOWIGNORE, 1 << 20) {
            Ok(Found::Bytes(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
            _ => String::new(),
        };
        if !contents.lines().any(|l| l.trim().contains(STORE_DIR)) {
            tracing::warn!(path = %root.join(AIRFLOWIGNORE).display(), "this .airflowignore does not exclude '{STORE_DIR}'; if dags_folder is the root itself, add a line '{STORE_DIR}' or Airflow will parse every snapshot");
        }
    }

    fn remove_own_stale_staging(&self) -> Result<(), StoreError> {
        let host = fsutil::hostname();
        let me = std::process::id();
        for staging in self.staging_dirs()? {
            let stale = staging
                .owner()
                .is_some_and(|(h, pid)| h == host && (pid == me || !process_alive(pid)));
            if stale {
                tracing::info!(path = %staging.path.display(), "removing staging directory left by an interrupted publish");
                staging.remove()?;
            }
        }
        Ok(())
    }
}

fn process_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    !matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

/// Names for a message, sorted, at most eight and a count of the rest.
fn listed(names: Vec<OsString>) -> Vec<String> {
    let mut names: Vec<String> = names
        .into_iter()
        .map(|n| crate::text::escape(&n.to_string_lossy()).into_owned())
        .collect();
    names.sort();
    if names.len() > 8 {
        let more = names.len() - 8;
        names.truncate(8);
        names.push(format!("and {more} more"));
    }
    names
}
