//! The private cache: a bare repository on local disk that one publisher process owns, kept up
//! to date by conversations with the remote ([`super::fetch`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, SystemTime};

use gix::ObjectId;
use serde::{Deserialize, Serialize};

use super::fetch::{current_credentials, with_ssh_log, Conversation, Fetched};
use super::filtered::Served;
use super::http::SharedHttp;
use super::listing::{Listing, Settings};
use super::remote::{Remote, Target};
use super::{error_chain, SourceError};
use crate::commit::CommitId;
use crate::fsutil::lock::{FileLock, LockError};
use crate::fsutil::{self, Context, IoError};

/// The local ref every fetch writes to. Keeping exactly one ref means the cache's ref store
/// never grows and negotiation always has the previous tip as a "have".
const TARGET_REF: &str = "refs/dagsnap/target";
/// Where a commit fetched by id for a repair goes (see [`Cache::fetch_commit`]).
const REPAIR_REF: &str = "refs/dagsnap/repair";
const CACHE_LAYOUT_VERSION: u32 = 1;
/// Packs the cache may accumulate (one per fetch) before it is re-created.
const MAX_PACKS: usize = 48;
/// Where the `ssh` of the current fetch writes its messages (read back to explain failures).
const SSH_LOG: &str = "ssh.log";
/// Growth below this is never worth a re-fetch, however small the first pack was.
const GROWTH_SLACK_BYTES: u64 = 16 << 20;

/// What the remote said the target was, and when we asked.
#[derive(Debug, Clone)]
pub struct Observation {
    pub commit: ObjectId,
    /// The full ref name that matched (`refs/heads/main`), or the commit id for a fixed commit.
    pub ref_name: String,
    /// When the question was sent. The remote's answer reflects a state at least this recent.
    pub observed_at: SystemTime,
    /// When the answer was in: the state it reflects is no more recent than this. Two
    /// publishers' observations are ordered only when one's question followed the other's
    /// answer (the never-backward rule, `store::link`).
    pub answered_at: SystemTime,
    /// Whether a pack was received this time (false for an unchanged poll).
    pub fetched: bool,
    /// The annotated tag object the ref points at, when it does (in the cache).
    pub tag: Option<ObjectId>,
}

/// Metadata of a commit, for manifests and status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitInfo {
    pub commit: CommitId,
    pub tree: String,
    pub tree_id: ObjectId,
    pub subject: String,
    pub author: String,
    /// Committer date, seconds since the epoch (UTC).
    pub commit_time: i64,
}

/// What the cache was created for (`cache.json`, its completion marker): another layout, URL
/// or depth means the directory is re-initialized. The root it publishes into is recorded too,
/// so that `dagsnap caches --prune` can tell caches of roots that are gone.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct CacheRecord {
    pub layout: u32,
    pub url: String,
    pub depth: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<PathBuf>,
}

impl CacheRecord {
    fn same_fetch(&self, other: &CacheRecord) -> bool {
        (self.layout, &self.url, self.depth) == (other.layout, &other.url, other.depth)
    }

    /// The record of the cache in `dir`, if it has a readable one.
    pub(crate) fn read(dir: &Path) -> Option<CacheRecord> {
        let bytes = std::fs::read(dir.join(MARKER)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

/// The completion marker: written last when a cache is created.
const MARKER: &str = "cache.json";

/// A publisher's private bare repository plus the lock that makes it private.
pub struct Cache {
    dir: PathBuf,
    repo: gix::ThreadSafeRepository,
    record: CacheRecord,
    /// Configuration overrides applied at every open (the ssh command, protocol version).
    config: Vec<String>,
    /// The full ref name a short `--ref` resolved to, so later polls need one connection only.
    resolved: Option<String>,
    /// Set when the cache should be re-created before the next fetch.
    reset_due: bool,
    /// Set when the cache's packs should be consolidated before the next fetch.
    consolidate_due: bool,
    /// The remote is read in part (`--subdir`, sparse patterns): the cache may hold only the
    /// selection's blobs, so `git repack` cannot consolidate it and it is re-created instead.
    partial: bool,
    /// Said once: the server sent whole commits where part would do.
    said_whole: bool,
    /// The commit whose selection this process made complete in the cache (see `partial`).
    complete: Option<ObjectId>,
    /// This process created the cache directory (see [`Cache::remove_if_created`]).
    created_dir: bool,
    /// The HTTP backend every conversation of this cache uses.
    http: SharedHttp,
    /// What the next poll over HTTP asks first (see [`IdleCheck`]).
    idle: Option<IdleCheck>,
    _lock: FileLock,
}

/// The last poll's question over HTTP and what was concluded from its answer: if the server
/// answers the same `ls-refs` request byte for byte as it did, the target is where it was and
/// the poll needs no conversation (see `git::http`). Valid while the credentials are the
/// ones it was asked with, and until the cache is reset.
struct IdleCheck {
    listing: Listing,
    credentials: Option<(String, String)>,
    commit: ObjectId,
    ref_name: String,
    tag: Option<ObjectId>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache").field("dir", &self.dir).finish()
    }
}

impl Cache {
    /// Lock `dir` for this process and open (or create, or repair) the bare repository in it.
    ///
    /// Steps, each idempotent so that a crash at any point is repaired by the next start:
    /// 1. create `dir`, take `dir/lock` without waiting (a second process gets `CacheInUse`);
    /// 2. if `dir/cache.json` (the completion marker, written last) is missing or was made for
    ///    another URL or depth, delete `dir/repo.git`: a half-initialized or foreign repository
    ///    is cheaper to re-fetch than to diagnose;
    /// 3. remove git lock files (`shallow.lock`, `refs/**/*.lock`): we hold the cache's lock,
    ///    so any lock file in it was left by a predecessor that was killed mid-fetch, and gix
    ///    would otherwise refuse every later fetch;
    /// 4. open `repo.git`, or initialize it and then write the marker.
    pub fn open(dir: &Path, remote: &Remote, root: &Path) -> Result<Cache, SourceError> {
        let created_dir = prepare_private_dir(dir)?;
        let lock = lock_cache(dir)?;
        let record = CacheRecord {
            layout: CACHE_LAYOUT_VERSION,
            url: remote.display_url(),
            depth: remote.depth,
            root: Some(std::path::absolute(root).unwrap_or_else(|_| root.to_path_buf())),
        };
        let config = cache_config(remote, &dir.join(SSH_LOG));
        super::access::write_git_config(remote.git_config(), dir)?;
        let marker = dir.join(MARKER);
        let repo_dir = dir.join("repo.git");
        remove_stale_lock_files(&repo_dir)?;
        let repo = match CacheRecord::read(dir) {
            Some(found) if found.same_fetch(&record) => match open_repo(&repo_dir, &config) {
                Ok(repo) => {
                    if found.root != record.root {
                        let bytes = serde_json::to_vec_pretty(&record).unwrap_or_default();
                        fsutil::write_atomically(&marker, &bytes)?;
                    }
                    repo
                }
                Err(cause) => {
                    tracing::warn!(cache = %repo_dir.display(), %cause, "cache repository unreadable, re-creating it");
                    init_repo(&repo_dir, &marker, &record, &config)?
                }
            },
            Some(_) => {
                tracing::info!(cache = %dir.display(), "cache was made for another repository or depth, re-creating it");
                init_repo(&repo_dir, &marker, &record, &config)?
            }
            None => init_repo(&repo_dir, &marker, &record, &config)?,
        };
        // A cache that grew in an earlier process (a one-time run exits before its next
        // update) is consolidated at this one's first update.
        let grown = has_grown(&pack_sizes(&repo_dir), record.depth);
        Ok(Cache {
            consolidate_due: grown,
            dir: dir.to_path_buf(),
            repo,
            record,
            resolved: None,
            reset_due: false,
            partial: remote.selection.is_some(),
            said_whole: false,
            complete: None,
            created_dir,
            http: SharedHttp::default(),
            idle: None,
            config,
            _lock: lock,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A thread-local handle on the cache's repository, for reading trees and blobs.
    pub fn repo(&self) -> gix::Repository {
        super::pages::keep_mapped(self.repo.to_thread_local())
    }

    /// Delete the cache directory if this process created it (a first start that failed for
    /// good); returns it if it was removed.
    pub fn remove_if_created(self) -> Option<PathBuf> {
        let dir = self.dir.clone();
        let created = self.created_dir;
        drop(self);
        (created && fsutil::remove_tree(&dir).is_ok()).then_some(dir)
    }

    /// Whether the cache is still where it was opened: its directory, its lock file (the one
    /// this process holds) and its repository. A cleaner of temporary files may delete it under
    /// a running loop; see [`Cache::recreate`].
    pub fn is_intact(&self) -> bool {
        self._lock.is_still_at_path() && self.dir.join("repo.git").is_dir()
    }

    /// Start the cache over: the directory (re-created private if it is gone), its lock (taken
    /// again if its file is gone or replaced), and an empty repository. The next fetch brings
    /// the target commit in full. This is the repair for anything that is the cache's fault:
    /// damaged objects, a deleted directory, stray files.
    pub fn recreate(&mut self) -> Result<(), SourceError> {
        let _ = prepare_private_dir(&self.dir)?;
        if !self._lock.is_still_at_path() {
            // A new lock file is another inode: taking it does not conflict with the lock still
            // held on the old one, which is released when replaced.
            self._lock = lock_cache(&self.dir)?;
        }
        self.reset()
    }

    /// Between cycles: consolidate a grown cache, or re-create one that is due for it. Called
    /// before each update; caches only ever fetched into by commit id (a submodule's) are
    /// maintained by their owner the same way.
    pub fn maintain(&mut self) -> Result<(), SourceError> {
        if self.consolidate_due && self.partial {
            // A fetch of the tip is what a filtered cache needs: its trees and the selection.
            tracing::debug!(cache = %self.dir.display(), "re-creating the cache, which holds only the selection's blobs (one filtered fetch of the tip)");
            self.consolidate_due = false;
            self.reset_due = true;
        }
        if self.consolidate_due && !self.reset_due {
            self.consolidate_due = false;
            if let Err(why) = self.consolidate() {
                // Re-creating costs a fetch of the tip, and always works.
                tracing::info!(cache = %self.dir.display(), %why, "cannot consolidate the cache's packs; re-creating it instead (one fetch of the tip)");
                self.reset_due = true;
            }
        }
        if self.reset_due {
            self.reset()?;
        }
        Ok(())
    }

    /// Rewrite the cache's packs into one that holds what its refs reach (`git repack -a -d`):
    /// the objects of commits the cache no longer follows go, nothing is fetched again, and the
    /// cache stays bounded by the size of the tip (shallow) or of the history (`--depth 0`).
    /// Needs the `git` program (the image carries it); without it, the caller re-creates the
    /// cache instead. The cache is locked by this process, so no one else writes to it.
    fn consolidate(&mut self) -> Result<(), String> {
        let repo_dir = self.dir.join("repo.git");
        let before: u64 = pack_sizes(&repo_dir).iter().sum();
        let started = std::time::Instant::now();
        let out = std::process::Command::new("git")
            .arg("--git-dir")
            .arg(&repo_dir)
            .args(["-c", "gc.auto=0", "-c", "repack.writeBitmaps=false"])
            .args(["repack", "-a", "-d", "-q"])
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env_remove("GIT_DIR")
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| format!("cannot run git: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "git repack failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        self.repo = open_repo(&repo_dir, &self.config)?;
        let after: u64 = pack_sizes(&repo_dir).iter().sum();
        tracing::info!(cache = %self.dir.display(), bytes_before = before, bytes_after = after, elapsed_ms = started.elapsed().as_millis() as u64, "consolidated the cache's packs");
        Ok(())
    }

    /// Wipe and re-create the repository.
    fn reset(&mut self) -> Result<(), SourceError> {
        let marker = self.dir.join(MARKER);
        self.repo = init_repo(
            &self.dir.join("repo.git"),
            &marker,
            &self.record,
            &self.config,
        )?;
        self.resolved = None;
        self.idle = None;
        self.complete = None;
        self.reset_due = false;
        Ok(())
    }

    /// Ask the remote for the target's commit and make sure the cache holds it.
    ///
    /// An unchanged poll ends after the ref listing: the commit is already here, so no pack is
    /// negotiated and nothing is written. A fixed commit that is already here needs no
    /// connection at all.
    pub fn update(
        &mut self,
        remote: &Remote,
        progress: &gix::progress::tree::Root,
        interrupt: &AtomicBool,
    ) -> Result<Observation, SourceError> {
        self.maintain()?;
        let observed_at = SystemTime::now();
        // Read the credentials now, every time: a rotated token is picked up without a restart.
        let credentials = current_credentials(remote)?;
        if let Some(check) = self.idle.take() {
            // The commit was in the cache when the check was made, and only a reset (which
            // drops the check) removes what the target ref holds.
            let settings = Settings {
                timeout: remote.access.http_timeout,
                ca_file: remote.access.ca_file.as_deref(),
            };
            if check.credentials == credentials
                && self.http.answers_as_before(&check.listing, &settings)
            {
                tracing::debug!(commit = %check.commit, "the remote answered the last listing as before");
                let observation = Observation {
                    commit: check.commit,
                    ref_name: check.ref_name.clone(),
                    observed_at,
                    answered_at: SystemTime::now(),
                    fetched: false,
                    tag: check.tag,
                };
                self.idle = Some(check);
                return Ok(observation);
            }
        }
        let repo = self.repo();
        if let Target::Commit(id) = &remote.target {
            if repo.has_object(id) {
                return Ok(Observation {
                    commit: *id,
                    ref_name: id.to_string(),
                    observed_at,
                    answered_at: observed_at,
                    fetched: false,
                    tag: None,
                });
            }
        }
        // ssh writes its messages to a file per fetch (see `Access::ssh_command`); start empty.
        let ssh_log = self.dir.join(SSH_LOG);
        if remote.is_ssh() {
            let _ = std::fs::write(&ssh_log, b"");
        }
        let result = Self::talk(
            &mut self.resolved,
            &Conversation {
                repo: &repo,
                remote,
                credentials: borrowed(&credentials),
                progress,
                interrupt,
                http: &self.http,
                complete: self.complete,
            },
        );
        // The listing the conversation made (its `ls-refs`, made last), for the next poll if
        // it succeeded. This also drops an answer the conversation did not use (it failed
        // before listing): it must not answer a later poll's question.
        let listing = self.http.take_listing();
        if result.is_err() {
            self.http.start_over();
        }
        if let Err(SourceError::RefNotFound { .. }) = &result {
            // The branch may have been deleted and a tag of that name created; look again next time.
            self.resolved = None;
        }
        let Fetched {
            commit,
            ref_name,
            fetched,
            tag,
            served,
            answered_at,
        } = result.map_err(|e| with_ssh_log(e, &ssh_log, remote))?;
        self.note_served(served, remote);
        self.complete = Some(commit);
        self.idle = listing.map(|listing| IdleCheck {
            listing,
            credentials,
            commit,
            ref_name: ref_name.clone(),
            tag,
        });
        if fetched {
            self.after_fetch()?;
        }
        Ok(Observation {
            commit,
            ref_name,
            observed_at,
            answered_at,
            fetched,
            tag,
        })
    }

    /// The conversation with the remote: resolve a short ref name (once), then list the ref and
    /// fetch what is new.
    fn talk(
        resolved: &mut Option<String>,
        talk: &Conversation<'_>,
    ) -> Result<Fetched, SourceError> {
        let spec_source = match (&talk.remote.target, &*resolved) {
            (Target::RemoteHead, _) => "HEAD".to_string(),
            (Target::Commit(id), _) => id.to_string(),
            (Target::Name(_), Some(full)) => full.clone(),
            (Target::Name(name), None) => {
                let full = talk.resolve_name(name)?;
                *resolved = Some(full.clone());
                full
            }
        };
        talk.fetch_if_needed(&spec_source, TARGET_REF)
    }

    /// Make sure the cache holds `commit`, fetching it by id if it does not: repairing a
    /// snapshot of a commit older than the remote's tip (a pinned one) needs what a shallow
    /// cache has let go. The server must let it be fetched by id (protocol v2 servers do for
    /// any commit reachable from a ref).
    pub fn fetch_commit(
        &mut self,
        remote: &Remote,
        commit: ObjectId,
        progress: &gix::progress::tree::Root,
        interrupt: &AtomicBool,
    ) -> Result<(), SourceError> {
        let repo = self.repo();
        if repo.has_object(commit) {
            return Ok(());
        }
        let credentials = current_credentials(remote)?;
        let ssh_log = self.dir.join(SSH_LOG);
        let talk = Conversation {
            repo: &repo,
            remote,
            credentials: borrowed(&credentials),
            progress,
            interrupt,
            http: &self.http,
            complete: None,
        };
        let fetched = talk
            .fetch_if_needed(&commit.to_string(), REPAIR_REF)
            .map_err(|e| {
                self.http.start_over();
                with_ssh_log(e, &ssh_log, remote)
            })?;
        self.note_served(fetched.served, remote);
        if fetched.fetched {
            self.after_fetch()?;
        }
        Ok(())
    }

    /// Say once that the server sent whole commits where part of them would do.
    fn note_served(&mut self, served: Option<Served>, remote: &Remote) {
        let why = match served {
            None | Some(Served::Filtered) => return,
            Some(Served::Whole) => "the server does not filter (git: uploadpack.allowFilter)",
            Some(Served::WholeNoObjectsById) => {
                "the server does not give objects by id (git: protocol v2, or uploadpack.allowReachableSHA1InWant)"
            }
        };
        if !self.said_whole {
            self.said_whole = true;
            tracing::info!(url = %remote.display_url(), "{why}: fetching whole commits, not only the part that is published; this costs transfer, nothing else (docs/operations.md, \"Fetching only the selection\")");
        }
    }

    /// Keep the cache bounded as packs accumulate: one pack arrives per fetch, and a shallow
    /// cache only ever needs the tip's objects.
    ///
    /// The handle is re-opened so gix sees (and has room for) the new pack. Once the cache
    /// holds more than `MAX_PACKS` packs (lookups slow down), or its packs weigh more than twice
    /// its largest one (usually the first, full fetch: history the cache no longer needs has
    /// doubled it), it is consolidated before the next update ([`Cache::consolidate`]): its
    /// packs rewritten into one holding what its refs reach, so nothing is fetched again. With
    /// full history (`--depth 0`) only the pack count applies.
    fn after_fetch(&mut self) -> Result<(), SourceError> {
        let repo_dir = self.dir.join("repo.git");
        let packs = pack_sizes(&repo_dir);
        if has_grown(&packs, self.record.depth) {
            // Not now: this cycle still reads the commit just fetched.
            tracing::debug!(cache = %self.dir.display(), packs = packs.len(), bytes = packs.iter().sum::<u64>(), "the cache has grown; it is consolidated before the next fetch");
            self.consolidate_due = true;
        }
        self.repo = open_repo(&repo_dir, &self.config).map_err(|cause| SourceError::CacheRepo {
            dir: repo_dir.clone(),
            cause,
        })?;
        Ok(())
    }

    /// Commit metadata for the manifest.
    pub fn commit_info(&self, commit: ObjectId) -> Result<CommitInfo, SourceError> {
        let repo = self.repo();
        let object_error = |cause: String| SourceError::Object { commit, cause };
        let commit_obj = repo
            .find_commit(commit)
            .map_err(|e| object_error(error_chain(&e)))?;
        let tree = commit_obj
            .tree_id()
            .map_err(|e| object_error(error_chain(&e)))?;
        let subject = commit_obj
            .message()
            .map(|m| m.summary().to_string())
            .unwrap_or_default();
        let author = commit_obj
            .author()
            .map(|a| format!("{} <{}>", a.name, a.email))
            .unwrap_or_default();
        let commit_time = commit_obj.time().map(|t| t.seconds).unwrap_or(0);
        Ok(CommitInfo {
            commit: CommitId::from(commit),
            tree: tree.to_string(),
            tree_id: tree.detach(),
            subject,
            author,
            commit_time,
        })
    }
}

/// Take the cache's lock without waiting: a second process on one cache is refused.
fn lock_cache(dir: &Path) -> Result<FileLock, SourceError> {
    match FileLock::acquire_as_holder(&dir.join("lock"), Duration::ZERO) {
        Ok(lock) => Ok(lock),
        Err(LockError::Busy { holder, .. }) => Err(SourceError::CacheInUse {
            dir: dir.to_path_buf(),
            holder,
        }),
        Err(source) => Err(SourceError::CacheLock {
            dir: dir.to_path_buf(),
            source,
        }),
    }
}

/// Make `dir` a directory only this uid can write: create it `0700` (whatever the umask) if it
/// is missing; refuse one that another uid owns or that others may write. Whoever can write the
/// cache can change the git state that dagsnap publishes to readers.
fn prepare_private_dir(dir: &Path) -> Result<bool, SourceError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let refuse = |why: String| SourceError::CacheNotPrivate {
        dir: dir.to_path_buf(),
        why,
    };
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .at("create cache directory", dir)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .at("make private", dir)?;
            Ok(true)
        }
        Err(e) => Err(IoError::new("inspect cache directory", dir, e).into()),
        Ok(meta) if !meta.is_dir() => Err(refuse("it is not a directory".into())),
        Ok(meta) if meta.uid() != nix::unistd::geteuid().as_raw() => Err(refuse(format!(
            "it belongs to uid {}, not to this process's uid {}",
            meta.uid(),
            nix::unistd::geteuid()
        ))),
        Ok(meta) if meta.mode() & 0o022 != 0 => Err(refuse(format!(
            "others may write it (mode {:o})",
            meta.mode() & 0o7777
        ))),
        Ok(_) => Ok(false),
    }
}

fn open_repo(dir: &Path, config: &[String]) -> Result<gix::ThreadSafeRepository, String> {
    open_options(config).open(dir).map_err(|e| error_chain(&e))
}

fn open_options(config: &[String]) -> gix::open::Options {
    // gix sizes its table of pack indices when the repository is opened. Every fetch adds a
    // pack, so the handle is re-opened after each one (see `Cache::update`) and sized with
    // room to spare.
    gix::open::Options::default()
        .config_overrides(config.iter().map(String::as_str))
        .object_store_slots(gix::odb::store::init::Slots::AsNeededByDiskState {
            multiplier: 2.0,
            minimum: 64,
        })
}

fn remove_stale_lock_files(repo_dir: &Path) -> Result<(), SourceError> {
    if !repo_dir.is_dir() {
        return Ok(());
    }
    for entry in walkdir::WalkDir::new(repo_dir)
        .follow_links(false)
        .into_iter()
        // Objects hold no lock files and are by far the largest part of the tree.
        .filter_entry(|e| e.file_name() != "objects")
        .filter_map(Result::ok)
    {
        if entry.file_type().is_file() && entry.file_name().to_string_lossy().ends_with(".lock") {
            tracing::info!(path = %entry.path().display(), "removing a lock file left in the cache by an interrupted fetch");
            std::fs::remove_file(entry.path()).at("remove stale lock file", entry.path())?;
        }
    }
    // A pack or index an interrupted fetch was writing (`index_pack`): never named, never read.
    let packs = repo_dir.join("objects/pack");
    for entry in std::fs::read_dir(&packs).into_iter().flatten().flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(super::index_pack::TEMPORARY)
        {
            tracing::info!(path = %entry.path().display(), "removing a pack file left in the cache by an interrupted fetch");
            std::fs::remove_file(entry.path()).at("remove an unfinished pack", &entry.path())?;
        }
    }
    Ok(())
}

/// Sizes of the packs in the repository at `dir`.
/// Whether packs of these sizes are due for consolidation ([`Cache::after_fetch`]).
fn has_grown(packs: &[u64], depth: u32) -> bool {
    let total: u64 = packs.iter().sum();
    let largest = packs.iter().copied().max().unwrap_or(0);
    packs.len() > MAX_PACKS || (depth > 0 && total > 2 * largest + GROWTH_SLACK_BYTES)
}

fn pack_sizes(dir: &Path) -> Vec<u64> {
    std::fs::read_dir(dir.join("objects/pack"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "pack"))
                .filter(|e| {
                    !e.file_name()
                        .to_string_lossy()
                        .starts_with(super::index_pack::TEMPORARY)
                })
                .filter_map(|e| e.metadata().ok().map(|m| m.len()))
                .collect()
        })
        .unwrap_or_default()
}

fn init_repo(
    dir: &Path,
    marker: &Path,
    record: &CacheRecord,
    config: &[String],
) -> Result<gix::ThreadSafeRepository, SourceError> {
    match std::fs::remove_file(marker) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(IoError::new("remove", marker, e).into())
        }
        _ => {}
    }
    fsutil::remove_tree(dir)?;
    let repo_error = |e: gix::Error| SourceError::CacheRepo {
        dir: dir.to_path_buf(),
        cause: error_chain(&e),
    };
    gix::init_bare(dir).map_err(repo_error)?;
    let repo = open_options(config).open(dir).map_err(repo_error)?;
    let bytes = serde_json::to_vec_pretty(record).unwrap_or_default();
    fsutil::write_atomically(marker, &bytes)?;
    Ok(repo)
}

/// Configuration applied in memory to every open of the cache.
fn cache_config(remote: &Remote, ssh_log: &Path) -> Vec<String> {
    let mut config: Vec<String> = remote
        .access
        .git_config
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    // dagsnap's own settings last: they are what the cache is built on.
    config.extend([
        "protocol.version=2".into(),
        format!(
            "core.sshCommand={}",
            remote.access.ssh_command(Some(ssh_log))
        ),
        "gitoxide.userAgent=dagsnap".into(),
        // A shallow cache is the point; a server that is itself shallow is fine.
        "clone.rejectShallow=false".into(),
    ]);
    config
}

/// The user and password as a conversation borrows them.
fn borrowed(credentials: &Option<(String, String)>) -> Option<(&str, &str)> {
    credentials
        .as_ref()
        .map(|(user, password)| (user.as_str(), password.as_str()))
}
