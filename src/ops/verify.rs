//! `dagsnap verify`: does a snapshot on disk still hold exactly its commit?
//!
//! Every file is read back and hashed as a git blob, every symlink target compared, every mode
//! checked (executable or not, and read-only), and the directory is walked for entries that
//! should not be there (a `__pycache__` written by a reader running as root, a file dropped in
//! by hand). The expectation comes from git itself when the publisher's cache is given
//! (`--cache-dir`: the tree recorded in the manifest is read from it), or else from the entry
//! list recorded when the snapshot was built.
//!
//! Snapshots share unchanged files by hard link, so damage to one file shows up in every
//! retained snapshot that shares it; verifying each reports each.

use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use gix::ObjectId;
use serde::Serialize;

use crate::commit::CommitId;
use crate::entries::{Entries, Entry, MODE_EXECUTABLE, MODE_SUBMODULE, MODE_SYMLINK};
use crate::fsutil;
use crate::store::repair;
use crate::store::{Author, Root, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("nothing is published under {root} and no commit was named; give one")]
    NothingPublished { root: String },
    #[error("snapshot {commit} has no {what} to verify against (built by an older dagsnap?); pass --cache-dir of a publisher to verify against git")]
    NoRecord {
        commit: CommitId,
        what: &'static str,
    },
    #[error("cannot repair {commit}: {cause}")]
    Repair { commit: CommitId, cause: String },
    #[error("cannot read tree {tree} of {commit} from the cache {}: {cause}", cache.display())]
    Cache {
        commit: CommitId,
        tree: String,
        cache: PathBuf,
        cause: String,
    },
}

/// Where the expected content came from.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The commit's tree, read from a publisher's git cache.
    GitCache,
    /// The entry list recorded when the snapshot was built.
    RecordedEntries,
}

/// A difference between a snapshot and its commit.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub what: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub commit: CommitId,
    pub source: Source,
    pub checked: usize,
    pub missing: Vec<Problem>,
    pub modified: Vec<Problem>,
    pub extra: Vec<Problem>,
}

impl Report {
    /// True when every expected entry is present and unmodified, and nothing else is there: a
    /// `__pycache__` a reader running as root wrote is damage too (readers import from it).
    pub fn is_intact(&self) -> bool {
        self.missing.is_empty() && self.modified.is_empty() && self.extra.is_empty()
    }
}

/// Where `verify --repair` gets the commit's objects.
#[derive(Debug)]
pub struct RepairFrom {
    /// A publisher's cache, read (not locked) if it holds the commit.
    pub cache: Option<PathBuf>,
    /// Otherwise the repository, fetched into a private temporary cache.
    pub remote: Option<crate::git::Remote>,
}

/// Rebuild the snapshot of `commit` and swap the link to the rebuilt copy ([`repair::Repair::run`]),
/// with the objects from `from`.
pub fn repair(
    root: &Root,
    commit: &CommitId,
    from: RepairFrom,
    reason: String,
    lock_timeout: std::time::Duration,
) -> Result<(), VerifyError> {
    root.require_writable()?;
    let id = commit.object_id();
    let failed = |cause: String| VerifyError::Repair {
        commit: commit.clone(),
        cause,
    };
    if root
        .manifest(commit)
        .ok()
        .flatten()
        .is_some_and(|m| !m.sources.is_empty())
    {
        return Err(failed("it is a snapshot of several sources, which a running publisher repairs itself (every --verify-period, from its sources' caches); restart one, or roll back to another snapshot".into()));
    }
    let progress = gix::progress::tree::Root::new();
    let interrupt = AtomicBool::new(false);
    // A publisher's cache, if it has the commit; else a temporary one of our own.
    let from_cache = from.cache.as_deref().and_then(|dir| {
        let repo_dir = if dir.join("repo.git").is_dir() {
            dir.join("repo.git")
        } else {
            dir.to_path_buf()
        };
        let repo = crate::git::open_for_reading(&repo_dir).ok()?;
        repo.has_object(id).then_some(repo)
    });
    let mut temporary = None;
    let repo = match from_cache {
        Some(repo) => repo,
        None => {
            let remote = from.remote.ok_or_else(|| {
                failed("the cache does not hold it and no repository is known to fetch it from; give --repo".into())
            })?;
            let dir = std::env::temp_dir()
                .join(format!("dagsnap-repair-{}", crate::fsutil::unique_suffix()));
            let mut cache = crate::git::Cache::open(&dir, &remote, root.path())
                .map_err(|e| failed(crate::git::error_chain(&e)))?;
            cache
                .fetch_commit(&remote, id, &progress, &interrupt)
                .map_err(|e| failed(remote.redactor().redact(&crate::git::error_chain(&e))))?;
            let repo = cache.repo();
            temporary = Some((cache, dir));
            repo
        }
    };
    let result = (|| {
        let manifest = root
            .manifest(commit)?
            .ok_or_else(|| failed("it has no manifest to describe the rebuilt copy".into()))?;
        // The published tree: the commit's, or the one at --subdir.
        let tree =
            ObjectId::from_hex(manifest.tree.as_bytes()).map_err(|e| failed(e.to_string()))?;
        let (entries, repos) = match (&from.cache, &temporary) {
            (Some(cache), None) => from_git_cache(root, commit, cache)?,
            _ if !manifest.modules.is_empty() || manifest.select.contains("sparse=") => {
                return Err(failed("it has submodules or sparse patterns; give --cache-dir of a publisher, whose caches hold what it was built from".into()))
            }
            _ => (
                crate::git::tree::entries(&repo, tree).map_err(|e| failed(e.to_string()))?,
                vec![repo.clone()],
            ),
        };
        let source = root.records().source()?;
        let who = Author {
            host: format!("{}@{}", operator(), crate::fsutil::hostname()),
            pid: std::process::id(),
            repo: source.as_ref().map(|s| s.repo.clone()).unwrap_or_default(),
            ref_name: source.map(|s| s.ref_name).unwrap_or_default(),
        };
        let blobs = crate::git::submodules::ReposBlobs(
            repos.into_iter().map(crate::git::RepoBlobs::new).collect(),
        );
        repair::Repair {
            root,
            commit,
            manifest: &manifest,
            lock_timeout,
            jobs: crate::store::snapshot::DEFAULT_BUILD_JOBS,
            progress: &progress,
            interrupt: &interrupt,
        }
        .run(entries, &blobs, &who, reason)
        .map_err(|e| failed(e.to_string()))?;
        Ok(())
    })();
    if let Some((cache, dir)) = temporary {
        drop(cache);
        let _ = crate::fsutil::remove_tree(&dir);
    }
    result
}

/// Who is at the keyboard: `$USER`, else the uid.
fn operator() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| format!("uid {}", nix::unistd::getuid()))
}

/// Verify the snapshot of `commit` (a full id or prefix; default: the current one).
pub fn verify(
    root: &Root,
    commit: Option<&str>,
    cache: Option<&Path>,
) -> Result<Report, VerifyError> {
    root.require_initialized()?;
    // What readers get: the directory the link names (during a repair, its fresh copy).
    let (commit, dir) = match commit {
        Some(wanted) => {
            let commit = root.resolve_commit(wanted)?;
            let dir = root.snapshot_path(&commit);
            (commit, dir)
        }
        None => root.current()?.map(|c| (c.commit, c.dir)).ok_or_else(|| {
            VerifyError::NothingPublished {
                root: root.path().display().to_string(),
            }
        })?,
    };
    let (expected, source) = match cache {
        Some(cache) => (entries_from_cache(root, &commit, cache)?, Source::GitCache),
        None => (
            root.entries(&commit)?
                .ok_or_else(|| VerifyError::NoRecord {
                    commit: commit.clone(),
                    what: "entry list",
                })?,
            Source::RecordedEntries,
        ),
    };
    let mut report = Report {
        commit,
        source,
        checked: expected.0.len(),
        missing: Vec::new(),
        modified: Vec::new(),
        extra: Vec::new(),
    };
    let mut expected_dirs: HashSet<PathBuf> = HashSet::from([PathBuf::new()]);
    let mut expected_paths: HashSet<PathBuf> = HashSet::new();
    for entry in &expected.0 {
        let relative = PathBuf::from(std::ffi::OsStr::from_bytes(&entry.path));
        for ancestor in relative.ancestors().skip(1) {
            expected_dirs.insert(ancestor.to_path_buf());
        }
        if entry.mode == MODE_SUBMODULE {
            expected_dirs.insert(relative.clone());
        }
        expected_paths.insert(relative.clone());
        check_entry(&dir, entry, &relative, &mut report);
    }
    for found in walk(&dir) {
        let relative = found.strip_prefix(&dir).unwrap_or(&found).to_path_buf();
        if relative.as_os_str().is_empty() || expected_paths.contains(&relative) {
            continue;
        }
        let is_dir = fs::symlink_metadata(&found)
            .map(|m| m.is_dir())
            .unwrap_or(false);
        if is_dir && expected_dirs.contains(&relative) {
            check_dir_mode(&found, &relative, &mut report);
            continue;
        }
        report.extra.push(Problem {
            path: relative.display().to_string(),
            what: if is_dir {
                "directory not in the commit"
            } else {
                "file not in the commit"
            }
            .into(),
        });
    }
    Ok(report)
}

fn check_entry(dir: &Path, entry: &Entry, relative: &Path, report: &mut Report) {
    let path = dir.join(relative);
    let shown = relative.display().to_string();
    let problem = |what: String| Problem {
        path: shown.clone(),
        what,
    };
    let meta = match fs::symlink_metadata(&path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            report.missing.push(problem("missing".into()));
            return;
        }
        Err(e) => {
            report.missing.push(problem(format!("unreadable: {e}")));
            return;
        }
    };
    let mode = meta.permissions().mode() & 0o7777;
    match entry.mode {
        MODE_SYMLINK => {
            if !meta.file_type().is_symlink() {
                report.modified.push(problem("should be a symlink".into()));
                return;
            }
            match fs::read_link(&path) {
                Ok(target) if blob_id(target.as_os_str().as_bytes()) == Some(entry.id) => {}
                Ok(target) => report
                    .modified
                    .push(problem(format!("symlink points to {}", target.display()))),
                Err(e) => report
                    .modified
                    .push(problem(format!("unreadable symlink: {e}"))),
            }
        }
        MODE_SUBMODULE => {
            if !meta.is_dir() {
                report
                    .modified
                    .push(problem("should be a (submodule) directory".into()));
            }
        }
        git_mode => {
            if !meta.is_file() {
                report
                    .modified
                    .push(problem("should be a regular file".into()));
                return;
            }
            let wanted = fsutil::read_only_mode(false, git_mode == MODE_EXECUTABLE);
            if mode != wanted {
                report
                    .modified
                    .push(problem(format!("mode {mode:o}, expected {wanted:o}")));
            }
            match hash_file(&path) {
                Ok(id) if id == entry.id => {}
                Ok(_) => report
                    .modified
                    .push(problem("content differs from the commit".into())),
                Err(e) => report.modified.push(problem(format!("unreadable: {e}"))),
            }
        }
    }
}

fn check_dir_mode(path: &Path, relative: &Path, report: &mut Report) {
    let mode = fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0);
    let wanted = fsutil::read_only_mode(true, false);
    if mode != wanted {
        report.modified.push(Problem {
            path: format!("{}/", relative.display()),
            what: format!("directory mode {mode:o}, expected {wanted:o}"),
        });
    }
}

/// Every path under `dir` except `dir` itself, without following symlinks, in order.
fn walk(dir: &Path) -> BTreeSet<PathBuf> {
    walkdir::WalkDir::new(dir)
        .follow_links(false)
        .min_depth(1)
        .into_iter()
        .filter_map(Result::ok)
        .map(|e| e.into_path())
        .collect()
}

fn blob_id(data: &[u8]) -> Option<ObjectId> {
    gix::objs::compute_hash(gix::hash::Kind::Sha1, gix::object::Kind::Blob, data).ok()
}

/// The git blob id of a file's content, streamed so that large files cost no memory.
fn hash_file(path: &Path) -> io::Result<ObjectId> {
    let mut file = fs::File::open(path)?;
    let len = file.metadata()?.len();
    gix::objs::compute_stream_hash(
        gix::hash::Kind::Sha1,
        gix::object::Kind::Blob,
        &mut file,
        len,
        &mut gix::progress::Discard,
        &AtomicBool::new(false),
    )
    .map_err(io::Error::other)
}

/// The commit's entries as git has them, from a publisher's cache. Opens the cache read-only
/// and without its lock: a running publisher may keep it.
fn entries_from_cache(
    root: &Root,
    commit: &CommitId,
    cache: &Path,
) -> Result<Entries, VerifyError> {
    Ok(from_git_cache(root, commit, cache)?.0)
}

/// What the snapshot of `commit` holds according to git, read from the caches of the publisher
/// whose cache is `cache` (not locked, nothing fetched): the published tree (the one at
/// `--subdir`, if it was built with one), its submodules from their caches, and for a sparse
/// selection only the paths it kept (the patterns are not recorded; git vouches for each path
/// kept). Also the repositories the objects come from.
fn from_git_cache(
    root: &Root,
    commit: &CommitId,
    cache: &Path,
) -> Result<(Entries, Vec<gix::Repository>), VerifyError> {
    let manifest = root
        .manifest(commit)?
        .ok_or_else(|| VerifyError::NoRecord {
            commit: commit.clone(),
            what: "manifest",
        })?;
    let failed = |cause: String| VerifyError::Cache {
        commit: commit.clone(),
        tree: manifest.tree.clone(),
        cache: cache.to_path_buf(),
        cause,
    };
    let repo_dir = if cache.join("repo.git").is_dir() {
        cache.join("repo.git")
    } else {
        cache.to_path_buf()
    };
    let repo =
        crate::git::open_for_reading(&repo_dir).map_err(|e| failed(crate::git::error_chain(&e)))?;
    let tree = ObjectId::from_hex(manifest.tree.as_bytes()).map_err(|e| failed(e.to_string()))?;
    let mut entries = crate::git::tree::entries(&repo, tree).map_err(|e| failed(e.to_string()))?;
    let mut repos = vec![repo];
    if manifest
        .select
        .split(' ')
        .any(|part| part.starts_with("sparse="))
    {
        let recorded = root.entries(commit)?.ok_or_else(|| VerifyError::NoRecord {
            commit: commit.clone(),
            what: "entry list",
        })?;
        let kept: HashSet<&[u8]> = recorded.0.iter().map(|e| e.path.as_slice()).collect();
        entries.0.retain(|e| kept.contains(e.path.as_slice()));
    }
    if !manifest.modules.is_empty() {
        let mut modules = Vec::new();
        for module in &manifest.modules {
            let id =
                ObjectId::from_hex(module.commit.as_bytes()).map_err(|e| failed(e.to_string()))?;
            modules.push((module.path.as_bytes().to_vec(), id, module.url.clone()));
        }
        let (more, module_repos) = crate::git::submodules::cached_modules(cache, &modules)
            .map_err(|e| failed(e.to_string()))?;
        entries.0.extend(more);
        entries.0.sort_by(|a, b| a.path.cmp(&b.path));
        repos.extend(module_repos);
    }
    Ok((entries, repos))
}

pub fn render(report: &Report) -> String {
    let mut out = format!(
        "snapshot {} checked against {} ({} entries): {}\n",
        report.commit,
        match report.source {
            Source::GitCache => "the git cache",
            Source::RecordedEntries => "the entries recorded at publish time",
        },
        report.checked,
        if report.is_intact() {
            "intact"
        } else {
            "DAMAGED (`dagsnap verify --repair` rebuilds it)"
        }
    );
    for (label, problems) in [
        ("missing", &report.missing),
        ("modified", &report.modified),
        ("extra", &report.extra),
    ] {
        for p in problems {
            out.push_str(&format!(
                "  {label:<9} {}: {}\n",
                crate::text::escape(&p.path),
                crate::text::escape(&p.what)
            ));
        }
    }
    out
}
