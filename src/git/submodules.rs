//! Submodules: a snapshot holds what `git clone --recurse-submodules` would show.
//!
//! A commit records a submodule as a gitlink: a path and a commit id, nothing more. Where that
//! commit lives is written in the superproject's `.gitmodules` at the same commit. For each
//! gitlink, [`Expander::expand`]:
//!
//! 1. finds the submodule's URL in `.gitmodules` (by path, as git does), resolving a relative
//!    URL (`../lib.git`) against the URL of the repository that holds it;
//! 2. fetches the recorded commit, and only that (depth 1), into a private cache of its own
//!    under `<cache>/modules/<key>`, with the superproject's TLS and SSH settings, and its HTTP
//!    credentials only when the submodule lives on the same host (a token for one host is
//!    never sent to another);
//! 3. walks the submodule commit's tree into entries under the gitlink's path (the gitlink
//!    entry stays: it is the directory they live in, and it records the submodule's commit);
//! 4. with `recursive`, does the same for the submodule's own submodules.
//!
//! The result is one entry list, in git's path order, whose blobs come from several
//! repositories ([`ReposBlobs`]): the snapshot is still one immutable, verified tree, and
//! unchanged submodule files are shared by hard link like any other. Nothing here runs on an
//! idle poll: the cycle stops before building when the commit is already live.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use gix::ObjectId;

pub(crate) use super::gitmodules::gitmodules_of_tree;
use super::gitmodules::{parse_gitmodules, resolve_url, server_of};
use super::{tree, Cache, Remote, RepoBlobs, SourceError, Target};
use crate::entries::{Entries, Entry, MODE_SUBMODULE};
use crate::text::escape_bytes;

/// What to do with the submodules of a commit (git-sync's `--submodules`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Each submodule is an empty directory, as `git clone` without `--recurse-submodules`
    /// leaves it.
    Off,
    /// The submodules of the commit, but not theirs (`git submodule update --init`).
    Shallow,
    /// Submodules all the way down (`git clone --recurse-submodules`).
    Recursive,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Shallow => "shallow",
            Mode::Recursive => "recursive",
        }
    }
}

/// How deep submodules may nest: deeper than any real layout, shallow enough to stop a chain
/// of repositories that include each other.
const MAX_DEPTH: usize = 8;
/// How many submodules one snapshot may check out, nested ones and one repository at several
/// paths each counted: a commit is a few objects, and without a bound ten pushed objects can
/// name one submodule at thousands of paths and fill the volume with copies of it.
const MAX_SUBMODULES: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum SubmoduleError {
    #[error("submodule '{path}' has no URL in .gitmodules{within}; add it there (git clone --recurse-submodules fails on it too), or publish with --submodules off")]
    NoUrl { path: String, within: String },
    #[error("cannot read .gitmodules{within}: {cause}; correct it in the repository, or publish with --submodules off")]
    Gitmodules { within: String, cause: String },
    #[error("submodule '{path}' has URL '{url}', which dagsnap cannot use: {cause}; correct it in .gitmodules, or publish with --submodules off")]
    Url {
        path: String,
        url: String,
        cause: String,
    },
    #[error("cannot fetch submodule '{path}' (commit {commit}) from {url}: {source}")]
    Fetch {
        path: String,
        commit: ObjectId,
        url: String,
        #[source]
        source: Box<SourceError>,
    },
    #[error("submodule '{path}' (commit {commit} of {url}): {source}")]
    Tree {
        path: String,
        commit: ObjectId,
        url: String,
        #[source]
        source: Box<tree::TreeError>,
    },
    #[error("a submodule's cache: {source}")]
    Cache {
        #[source]
        source: Box<SourceError>,
    },
    #[error("submodule '{path}' is nested more than {MAX_DEPTH} levels deep (do its repositories include each other?); publish with --submodules shallow or off")]
    TooDeep { path: String },
    #[error("the commit checks out more than {MAX_SUBMODULES} submodules (counting nested ones, and each path a submodule appears at); '{path}' is one too many. Publish with --submodules shallow or off, or reduce the submodules in the repository")]
    TooMany { path: String },
    #[error("submodule '{path}' has URL '{url}' on this machine's disk, and the repository was fetched over the network: transport 'file' not allowed (git refuses it too, protocol.file.allow; a commit must not make dagsnap publish files of the host it runs on). If this is intended, allow it: --git-config protocol.file.allow:always")]
    FileTransport { path: String, url: String },
    #[error("submodule '{path}' (commit {commit}) is not in the cache {}; verify without --cache-dir checks it against the entry list recorded at build time", cache.display())]
    NotCached {
        path: String,
        commit: ObjectId,
        cache: PathBuf,
    },
}

impl SubmoduleError {
    /// True when a submodule's cache, not the repository, may be at fault (retried once with
    /// a fresh cache by [`Expander`] itself, so never blamed on the superproject's cache).
    fn blames_cache(&self) -> bool {
        match self {
            SubmoduleError::Fetch { source, .. } => source.blames_cache(),
            SubmoduleError::Tree { source, .. } => source.blames_cache(),
            _ => false,
        }
    }
}

/// One submodule of a snapshot, for the manifest and for operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Module {
    /// Its path in the snapshot (nested ones under their parent's).
    pub path: Vec<u8>,
    pub commit: ObjectId,
    /// Where it was fetched from, credentials masked.
    pub url: String,
}

/// A commit's entries with its submodules filled in.
pub(crate) struct Expanded {
    pub entries: Entries,
    /// Where the blobs come from: the superproject's repository first.
    pub blobs: ReposBlobs,
    pub modules: Vec<Module>,
}

/// Blobs from several repositories (a superproject and its submodules): each is asked in turn.
/// Object ids are content hashes, so any repository that has the object has the right one.
pub(crate) struct ReposBlobs(pub Vec<RepoBlobs>);

impl crate::entries::Blobs for ReposBlobs {
    fn read(&self, id: &gix::oid, buf: &mut Vec<u8>) -> Result<(), String> {
        let mut first_error = None;
        for repo in &self.0 {
            match repo.read(id, buf) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(first_error.unwrap_or_else(|| format!("no repository holds blob {id}")))
    }

    fn copy(
        &self,
        id: &gix::oid,
        out: &mut dyn std::io::Write,
        buf: &mut Vec<u8>,
    ) -> Result<u64, crate::entries::CopyError> {
        // A copy may have written part of the blob when it fails, so it is asked of the
        // repository that has the blob, not of each in turn.
        match self.0.iter().find(|repo| repo.has(id)) {
            Some(repo) => repo.copy(id, out, buf),
            None => Err(crate::entries::CopyError::Read(format!(
                "no repository holds blob {id}"
            ))),
        }
    }

    fn fork(&self) -> Box<dyn crate::entries::Blobs + Send> {
        Box::new(ReposBlobs(self.0.clone()))
    }
}

/// The submodules' private caches: one per URL under `dir`, opened (and locked) on first use.
struct Caches {
    dir: PathBuf,
    root: PathBuf,
    open: HashMap<PathBuf, Cache>,
}

/// Fills in the submodules of a commit's entries; keeps the submodules' caches between cycles.
pub(crate) struct Expander {
    mode: Mode,
    caches: Caches,
    said_off: bool,
}

impl std::fmt::Debug for Expander {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Expander")
            .field("mode", &self.mode)
            .field("dir", &self.caches.dir)
            .finish()
    }
}

impl Expander {
    /// For a publisher whose cache is `cache_dir`: the submodules' caches live beside its
    /// repository, as private as it is.
    pub(crate) fn new(mode: Mode, cache_dir: &Path, root: &Path) -> Expander {
        Expander {
            mode,
            caches: Caches {
                dir: cache_dir.join("modules"),
                root: root.to_path_buf(),
                open: HashMap::new(),
            },
            said_off: false,
        }
    }

    /// `tree`'s entries (fetched from `remote`) with every submodule the mode asks for filled
    /// in.
    pub(crate) fn expand(
        &mut self,
        remote: &Remote,
        tree: Tree,
        progress: &gix::progress::tree::Root,
        interrupt: &AtomicBool,
    ) -> Result<Expanded, SubmoduleError> {
        let Tree {
            repo,
            entries,
            gitmodules,
            prefix,
        } = tree;
        let has_gitlinks = entries.0.iter().any(|e| e.mode == MODE_SUBMODULE);
        if !has_gitlinks || self.mode == Mode::Off {
            if has_gitlinks && !self.said_off {
                let paths: Vec<String> = entries
                    .0
                    .iter()
                    .filter(|e| e.mode == MODE_SUBMODULE)
                    .map(|e| escape_bytes(&e.path))
                    .collect();
                tracing::info!(submodules = %paths.join(", "), "the commit has submodules; --submodules off publishes each as an empty directory, as git clone without --recurse-submodules does");
                self.said_off = true;
            }
            return Ok(Expanded {
                entries,
                blobs: ReposBlobs(vec![RepoBlobs::new(repo)]),
                modules: Vec::new(),
            });
        }
        // Between cycles, not during one: this cycle reads what the last fetch brought.
        for cache in self.caches.open.values_mut() {
            cache.maintain().map_err(|source| SubmoduleError::Cache {
                source: Box::new(source),
            })?;
        }
        let mut found = Found {
            out: entries.0.clone(),
            repos: vec![repo.clone()],
            modules: Vec::new(),
        };
        let level = Level {
            remote,
            entries: &entries,
            gitmodules,
            lookup_prefix: prefix,
            place: Vec::new(),
            depth: 0,
            allow_file: file_transport_allowed(&repo),
        };
        self.expand_level(
            level,
            &mut found,
            &Pass {
                progress,
                interrupt,
            },
        )?;
        let Found {
            mut out,
            repos,
            modules,
        } = found;
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(Expanded {
            entries: Entries(out),
            blobs: ReposBlobs(repos.into_iter().map(RepoBlobs::new).collect()),
            modules,
        })
    }

    /// Fill in the submodules of one repository's entries (and, recursively, theirs).
    fn expand_level(
        &mut self,
        level: Level<'_>,
        found: &mut Found,
        pass: &Pass<'_>,
    ) -> Result<(), SubmoduleError> {
        let within = if level.place.is_empty() {
            String::new()
        } else {
            format!(" of submodule '{}'", escape_bytes(trim_slash(&level.place)))
        };
        let urls = match &level.gitmodules {
            Some(bytes) => parse_gitmodules(bytes).map_err(|cause| SubmoduleError::Gitmodules {
                within: within.clone(),
                cause,
            })?,
            None => HashMap::new(),
        };
        for gitlink in level.entries.0.iter().filter(|e| e.mode == MODE_SUBMODULE) {
            self.expand_gitlink(&level, gitlink, &urls, &within, found, pass)?;
        }
        Ok(())
    }

    /// Fill in the submodule at `gitlink` of `level`: check its URL, fetch its commit, add its
    /// entries under the gitlink's path, and go down into its own submodules (recursive mode).
    fn expand_gitlink(
        &mut self,
        level: &Level<'_>,
        gitlink: &Entry,
        urls: &HashMap<Vec<u8>, String>,
        within: &str,
        found: &mut Found,
        pass: &Pass<'_>,
    ) -> Result<(), SubmoduleError> {
        let mut path = level.place.clone();
        path.extend_from_slice(&gitlink.path);
        let shown = escape_bytes(&path);
        if level.depth >= MAX_DEPTH {
            return Err(SubmoduleError::TooDeep { path: shown });
        }
        if found.modules.len() >= MAX_SUBMODULES {
            return Err(SubmoduleError::TooMany { path: shown });
        }
        let mut key = level.lookup_prefix.clone();
        key.extend_from_slice(&gitlink.path);
        let Some(url) = urls.get(&key) else {
            return Err(SubmoduleError::NoUrl {
                path: shown,
                within: within.to_string(),
            });
        };
        let sub_remote = submodule_remote(level.remote, url, gitlink.id).map_err(|cause| {
            SubmoduleError::Url {
                path: shown.clone(),
                url: level.remote.redactor().redact(url),
                cause,
            }
        })?;
        // git's transport policy for submodules (protocol.file.allow, CVE-2022-39253): a
        // repository on this machine only for a superproject that is itself local, or when the
        // operator allows it.
        if sub_remote.is_local() && !level.remote.is_local() && !level.allow_file {
            return Err(SubmoduleError::FileTransport {
                path: shown,
                url: sub_remote.display_url(),
            });
        }
        let (sub_repo, sub_tree, sub_entries) = match self.fetch(
            &sub_remote,
            gitlink.id,
            &shown,
            pass,
        ) {
            Err(e) if e.blames_cache() => {
                tracing::warn!(submodule = %shown, "the submodule's cache could not be read or extended as expected (its objects may be damaged); re-creating it and trying again");
                tracing::debug!(submodule = %shown, error = %e, "what the damaged cache said");
                self.recreate(&sub_remote, &shown)?;
                self.fetch(&sub_remote, gitlink.id, &shown, pass)?
            }
            other => other?,
        };
        found.modules.push(Module {
            path: path.clone(),
            commit: gitlink.id,
            url: sub_remote.display_url(),
        });
        let mut place = path;
        place.push(b'/');
        for entry in &sub_entries.0 {
            let mut full = place.clone();
            full.extend_from_slice(&entry.path);
            found.out.push(Entry {
                path: full,
                ..entry.clone()
            });
        }
        if !found.repos.iter().any(|r| r.path() == sub_repo.path()) {
            found.repos.push(sub_repo.clone());
        }
        if self.mode != Mode::Recursive || !sub_entries.0.iter().any(|e| e.mode == MODE_SUBMODULE) {
            return Ok(());
        }
        let gitmodules = gitmodules_of_tree(&sub_repo, sub_tree).map_err(|cause| {
            SubmoduleError::Gitmodules {
                within: format!(" of submodule '{shown}'"),
                cause,
            }
        })?;
        self.expand_level(
            Level {
                remote: &sub_remote,
                entries: &sub_entries,
                gitmodules,
                lookup_prefix: Vec::new(),
                place,
                depth: level.depth + 1,
                allow_file: level.allow_file,
            },
            found,
            pass,
        )
    }

    /// The submodule's repository holding `commit`, and that commit's entries.
    fn fetch(
        &mut self,
        remote: &Remote,
        commit: ObjectId,
        shown: &str,
        pass: &Pass<'_>,
    ) -> Result<(gix::Repository, ObjectId, Entries), SubmoduleError> {
        let (progress, interrupt) = (pass.progress, pass.interrupt);
        let fetch_error = |source: SourceError| SubmoduleError::Fetch {
            path: shown.to_string(),
            commit,
            url: remote.display_url(),
            source: Box::new(source),
        };
        let Caches { dir, root, open } = &mut self.caches;
        let cache_dir = dir.join(cache_key(&remote.display_url()));
        let cache = match open.entry(cache_dir.clone()) {
            std::collections::hash_map::Entry::Occupied(found) => found.into_mut(),
            std::collections::hash_map::Entry::Vacant(slot) => {
                prepare_modules_dir(dir).map_err(fetch_error)?;
                slot.insert(Cache::open(&cache_dir, remote, root).map_err(fetch_error)?)
            }
        };
        cache
            .fetch_commit(remote, commit, progress, interrupt)
            .map_err(fetch_error)?;
        let repo = cache.repo();
        let tree_id = repo
            .find_commit(commit)
            .and_then(|c| c.tree_id().map(|id| id.detach()))
            .map_err(|e| {
                fetch_error(SourceError::Object {
                    commit,
                    cause: super::error_chain(&e),
                })
            })?;
        let entries = tree::entries(&repo, tree_id).map_err(|source| SubmoduleError::Tree {
            path: shown.to_string(),
            commit,
            url: remote.display_url(),
            source: Box::new(source),
        })?;
        Ok((repo, tree_id, entries))
    }

    fn recreate(&mut self, remote: &Remote, shown: &str) -> Result<(), SubmoduleError> {
        let cache_dir = self.caches.dir.join(cache_key(&remote.display_url()));
        if let Some(cache) = self.caches.open.get_mut(&cache_dir) {
            tracing::debug!(submodule = %shown, "re-creating the submodule's cache");
            cache.recreate().map_err(|source| SubmoduleError::Cache {
                source: Box::new(source),
            })?;
        }
        Ok(())
    }
}

/// The entries of a snapshot's submodules as the caches of the publisher whose cache is
/// `cache_dir` hold them, read as they are (no lock, no fetch): what `verify` checks a
/// snapshot with submodules against. `modules` are the manifest's (path, commit, URL as
/// recorded); returns the entries under their paths and the repositories that hold them.
pub(crate) fn cached_modules(
    cache_dir: &Path,
    modules: &[(Vec<u8>, ObjectId, String)],
) -> Result<(Vec<Entry>, Vec<gix::Repository>), SubmoduleError> {
    let mut entries = Vec::new();
    let mut repos: Vec<gix::Repository> = Vec::new();
    for (path, commit, url) in modules {
        let shown = escape_bytes(path);
        let dir = cache_dir.join("modules").join(cache_key(url));
        let not_cached = || SubmoduleError::NotCached {
            path: shown.clone(),
            commit: *commit,
            cache: dir.clone(),
        };
        let repo = super::open_for_reading(&dir.join("repo.git")).map_err(|_| not_cached())?;
        if !repo.has_object(commit) {
            return Err(not_cached());
        }
        let tree = repo
            .find_commit(*commit)
            .map_err(|_| not_cached())?
            .tree_id()
            .map_err(|_| not_cached())?
            .detach();
        let found = tree::entries(&repo, tree).map_err(|source| SubmoduleError::Tree {
            path: shown.clone(),
            commit: *commit,
            url: url.clone(),
            source: Box::new(source),
        })?;
        for entry in found.0 {
            let mut full = path.clone();
            full.push(b'/');
            full.extend_from_slice(&entry.path);
            entries.push(Entry {
                path: full,
                ..entry
            });
        }
        if !repos.iter().any(|r| r.path() == repo.path()) {
            repos.push(repo);
        }
    }
    Ok((entries, repos))
}

/// A tree whose submodules are to be filled in.
pub(crate) struct Tree {
    /// The repository holding it.
    pub repo: gix::Repository,
    pub entries: Entries,
    /// The `.gitmodules` that describes its submodules.
    pub gitmodules: Option<Vec<u8>>,
    /// Where the tree sits in the commit, ending in `/` (non-empty for `--subdir`:
    /// `.gitmodules` names full paths).
    pub prefix: Vec<u8>,
}

/// What an expansion has found so far: the entries, the repositories their blobs are in, the
/// submodules.
struct Found {
    out: Vec<Entry>,
    repos: Vec<gix::Repository>,
    modules: Vec<Module>,
}

/// What a fetch reports to and listens to.
struct Pass<'a> {
    progress: &'a gix::progress::tree::Root,
    interrupt: &'a AtomicBool,
}

/// One repository's level of the expansion.
struct Level<'a> {
    /// The repository that holds these entries (relative URLs resolve against it).
    remote: &'a Remote,
    entries: &'a Entries,
    gitmodules: Option<Vec<u8>>,
    /// What `.gitmodules` paths start with beyond the entries' own (`--subdir`).
    lookup_prefix: Vec<u8>,
    /// Where these entries go in the snapshot (`""` or `"libs/common/"`).
    place: Vec<u8>,
    depth: usize,
    /// `protocol.file.allow=always` (or `protocol.allow`) is configured.
    allow_file: bool,
}

/// Whether git configuration (`--git-config`, or the user's and the system's) allows the
/// `file` transport for submodules: only `always` does, since git treats a submodule's fetch
/// as not the user's own (`GIT_PROTOCOL_FROM_USER=0`), which `user` refuses.
fn file_transport_allowed(repo: &gix::Repository) -> bool {
    let config = repo.config_snapshot();
    config
        .string("protocol.file.allow")
        .or_else(|| config.string("protocol.allow"))
        .is_some_and(|value| value.eq_ignore_ascii_case(b"always"))
}

fn trim_slash(path: &[u8]) -> &[u8] {
    path.strip_suffix(b"/").unwrap_or(path)
}

/// A cache directory name for a submodule URL: short, stable, and different per URL.
fn cache_key(url: &str) -> String {
    let hash = url.bytes().fold(0xcbf29ce484222325u64, |hash, b| {
        (hash ^ u64::from(b)).wrapping_mul(0x100000001b3)
    });
    let name: String = url
        .rsplit(['/', ':'])
        .find(|s| !s.is_empty())
        .unwrap_or("module")
        .trim_end_matches(".git")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(32)
        .collect();
    format!("{name}-{hash:016x}")
}

fn prepare_modules_dir(dir: &Path) -> Result<(), SourceError> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(crate::fsutil::IoError::new("create", dir, e).into()),
    }
}

/// The remote of a submodule at `url` (as `.gitmodules` of `parent` gives it): the parent's TLS,
/// SSH and timeout settings; its HTTP credentials only on the parent's own server; depth 1.
fn submodule_remote(parent: &Remote, url: &str, commit: ObjectId) -> Result<Remote, String> {
    let resolved = resolve_url(&parent.url, url)?;
    let mut access = parent.access.clone();
    if server_of(&resolved) != server_of(&parent.url) {
        access.username = None;
        access.password = None;
    }
    Remote::new(&resolved, Target::Commit(commit), 1, access)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_go_to_the_superproject_s_server_only() {
        let access = crate::git::access::Access {
            username: Some("ci-bot".into()),
            password: Some(crate::git::access::Password::Fixed("token".into())),
            ..Default::default()
        };
        let parent = Remote::new(
            "https://git.example.com/org/dags.git",
            Target::RemoteHead,
            1,
            access,
        )
        .unwrap();
        let commit = ObjectId::null(gix::hash::Kind::Sha1);
        let same = submodule_remote(&parent, "../lib.git", commit).unwrap();
        assert_eq!(same.url, "https://git.example.com/org/lib.git");
        assert_eq!(same.access.username.as_deref(), Some("ci-bot"));
        assert!(same.access.password.is_some());
        assert_eq!(same.depth, 1);
        let other = submodule_remote(&parent, "https://other.example.com/lib.git", commit).unwrap();
        assert_eq!(other.access.username, None);
        assert!(other.access.password.is_none());
    }

    #[test]
    fn cache_keys_are_readable_and_distinct() {
        let a = cache_key("https://git.example.com/org/common.git");
        assert!(a.starts_with("common-"), "{a}");
        assert_ne!(a, cache_key("https://git.example.com/other/common.git"));
    }
}
