//! The records dagsnap keeps next to the snapshots: why the link moved and when (the journal
//! and the latest publication), the operator's pin, and which repository the root follows (the
//! claim). [`Records`] owns their files; [`super::Root`] owns the snapshots and the link.
//!
//! Every record is read back as input. A crash, a full disk, a person with an editor or a
//! filesystem bug may leave one torn, truncated or invalid. The rule:
//! - the link and the snapshot directories are the truth; records describe them;
//! - a damaged record is skipped (a journal line) or replaced by what the truth implies (a
//!   damaged pin holds the live snapshot; a damaged latest publication falls back to the
//!   journal), with one warning that names the file and says what dagsnap does instead;
//! - nothing that reads records fails because one is damaged, and the next write replaces it.

pub mod claims;
mod journal;
pub mod leases;
pub mod publishers;
mod types;
pub mod verdicts;

pub use claims::Claim;
pub use journal::LinkHistory;
pub use publishers::{LockFault, LockWitness, PublisherRecord, Registration, SeenPublisher};
pub use types::*;
pub use verdicts::{CheckClaim, Verdict};

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{RootLock, StoreError};
use crate::fsutil::{self, Context, IoError};

/// Where dagsnap before 0.3 kept the latest publication (one file, overwritten); still read
/// when no publication file exists.
const STATE_FILE: &str = "state.json";
/// One file per publication, created exclusively, so that two publishers writing at once (on
/// a volume whose locks do not work) never lose one, and the newest is well defined: the
/// greatest name, which starts with the observation time.
const PUBLICATIONS_DIR: &str = "publications";
/// Publication files kept; older ones are removed by GC (the journal keeps the history).
const PUBLICATIONS_KEPT: usize = 64;
const JOURNAL_FILE: &str = "journal.jsonl";
const PIN_FILE: &str = "pin.json";

/// The record files in one root's store directory.
#[derive(Debug, Clone)]
pub struct Records {
    store: PathBuf,
}

impl Records {
    pub(super) fn at(store: &Path) -> Records {
        Records {
            store: store.to_path_buf(),
        }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.store.join(name)
    }

    /// The newest publication: the newest readable file in `publications/` (newest by
    /// observation time, then publication time); without one, `state.json` as dagsnap before
    /// 0.3 wrote it, or the journal's newest entry.
    pub fn latest(&self) -> Result<Option<Publication>, StoreError> {
        let dir = self.file(PUBLICATIONS_DIR);
        let mut names = match fs::read_dir(&dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            other => other
                .at("list", &dir)?
                .filter_map(Result::ok)
                .map(|e| e.file_name())
                .filter(|n| {
                    let n = n.to_string_lossy();
                    n.ends_with(".json") && !n.starts_with('.')
                })
                .collect(),
        };
        names.sort();
        for name in names.iter().rev() {
            let path = dir.join(name);
            match read_json::<Publication>(&path)? {
                Read::Valid(publication) => return Ok(Some(publication)),
                Read::Damaged(why) => {
                    warn_damaged(&path, &why, "using the publication before it instead")
                }
                // Removed by GC between listing and reading.
                Read::Missing => {}
            }
        }
        match read_json::<Publication>(&self.file(STATE_FILE))? {
            Read::Valid(state) => return Ok(Some(state)),
            Read::Damaged(why) => warn_damaged(
                &self.file(STATE_FILE),
                &why,
                "using the journal's latest entry instead; the next publish rewrites it",
            ),
            Read::Missing => {}
        }
        Ok(self.journal()?.pop())
    }

    /// Every journal entry, oldest first; damaged lines are skipped with a warning.
    pub fn journal(&self) -> Result<Vec<Publication>, StoreError> {
        let path = self.file(JOURNAL_FILE);
        let read = journal::read(&path)?;
        if !read.damaged.is_empty() {
            let lines: Vec<String> = read.damaged.iter().map(|n| n.to_string()).collect();
            warn_damaged(
                &path,
                &format!("unreadable line(s) {}", lines.join(", ")),
                "skipping them; the next collection removes them",
            );
        }
        Ok(read.entries)
    }

    /// The verdict of the check named `fingerprint` on `commit`, if recorded.
    pub fn verdict(&self, commit: &str, fingerprint: &str) -> Option<Verdict> {
        verdicts::read(&self.store, commit, fingerprint)
    }

    /// Record a check's verdict (shared by every publisher, kept across restarts).
    pub fn record_verdict(&self, verdict: &Verdict) -> Result<(), StoreError> {
        verdicts::write(&self.store, verdict)
    }

    /// Every recorded verdict, newest first.
    pub fn verdicts(&self) -> Vec<Verdict> {
        verdicts::all(&self.store)
    }

    /// The newest verdict on `commit` (by any check command), if it is a rejection: what
    /// operator commands go by, since they do not know the loops' check command.
    pub fn rejection(&self, commit: &str) -> Option<Verdict> {
        self.verdicts()
            .into_iter()
            .find(|v| v.commit == commit)
            .filter(|v| !v.accepted)
    }

    /// Forget the verdicts on `commit` (`dagsnap recheck`); how many went.
    pub fn forget_verdicts(&self, _lock: &RootLock, commit: &str) -> usize {
        verdicts::forget(&self.store, commit)
    }

    /// The right to run the check on `commit` now, or `None` while another publisher runs it.
    pub fn claim_check(
        &self,
        commit: &str,
        fingerprint: &str,
    ) -> Result<Option<CheckClaim>, StoreError> {
        verdicts::claim(&self.store, commit, fingerprint)
    }

    /// Remove verdicts nobody needs any more (GC); `retained` says which commits have a
    /// snapshot.
    pub fn remove_unneeded_verdicts(&self, _lock: &RootLock, retained: &dyn Fn(&str) -> bool) {
        verdicts::remove_unneeded(&self.store, retained)
    }

    /// When each commit was linked and unlinked, from the journal's link moves.
    pub fn link_history(&self) -> Result<LinkHistory, StoreError> {
        Ok(LinkHistory::from_journal(&self.journal()?))
    }

    /// Record that the link is about to move (or, for `moved_link: false`, an operator's
    /// action): the latest publication and a journal line, both before the link moves, so that a
    /// crash in between leaves a record newer than the link and never a link newer than every
    /// record.
    pub(super) fn record_publication(
        &self,
        _lock: &RootLock,
        publication: &Publication,
    ) -> Result<(), StoreError> {
        // A correction names what an earlier publication named; it observes nothing new.
        let observes = publication.cause != Cause::Reconcile;
        if publication.resets_ordering() {
            // An operator's action ends the ordering of everything observed before it,
            // including a record from a clock that runs ahead: only it remains to compare with.
            let dir = self.file(PUBLICATIONS_DIR);
            if let Ok(entries) = fs::read_dir(&dir) {
                for entry in entries.filter_map(Result::ok) {
                    let _ = fs::remove_file(entry.path());
                }
            }
            let _ = fs::remove_file(self.file(STATE_FILE));
        }
        if (publication.moved_link && observes) || publication.resets_ordering() {
            write_publication(&self.file(PUBLICATIONS_DIR), publication)?;
        }
        journal::append(&self.file(JOURNAL_FILE), publication)
    }

    /// Keep the newest [`PUBLICATIONS_KEPT`] publication files (under the lock, from GC); the
    /// old `state.json` goes once a publication file replaces it.
    pub fn trim_publications(&self, _lock: &RootLock) -> Result<(), StoreError> {
        let dir = self.file(PUBLICATIONS_DIR);
        let mut names: Vec<_> = match fs::read_dir(&dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            other => other
                .at("list", &dir)?
                .filter_map(Result::ok)
                .map(|e| e.file_name())
                .collect(),
        };
        if names.is_empty() {
            return Ok(());
        }
        // Damaged ones first (they were warned about when read): the newest must be readable.
        names.retain(|name| {
            let path = dir.join(name);
            let damaged = name.to_string_lossy().ends_with(".json")
                && !name.to_string_lossy().starts_with('.')
                && matches!(read_json::<Publication>(&path), Ok(Read::Damaged(_)));
            if damaged {
                let _ = fs::remove_file(&path);
                tracing::info!(path = %path.display(), "removed a damaged publication record");
            }
            !damaged
        });
        names.sort();
        let excess = names.len().saturating_sub(PUBLICATIONS_KEPT);
        for name in &names[..excess] {
            let _ = fs::remove_file(dir.join(name));
        }
        let _ = fs::remove_file(self.file(STATE_FILE));
        Ok(())
    }

    /// Rewrite the journal without its damaged lines (under the lock, from GC).
    pub fn clean_journal(&self, _lock: &RootLock) -> Result<(), StoreError> {
        let path = self.file(JOURNAL_FILE);
        let read = journal::read(&path)?;
        if !read.damaged.is_empty() {
            journal::rewrite(&path, &read.entries)?;
            tracing::info!(path = %path.display(), removed = read.damaged.len(), "removed damaged lines from the journal");
        }
        Ok(())
    }

    /// The operator's pin, if any. A pin file that cannot be read is taken as a pin of the live
    /// snapshot (`live`): when in doubt, hold the link where it is, and say how to release it.
    pub fn pin(&self, live: Option<&str>) -> Result<Option<Pin>, StoreError> {
        let path = self.file(PIN_FILE);
        match read_json::<Pin>(&path)? {
            Read::Valid(pin) => Ok(Some(pin)),
            Read::Missing => Ok(None),
            Read::Damaged(why) => {
                let Some(live) = live else {
                    warn_damaged(&path, &why, "nothing is live to hold; ignoring it");
                    return Ok(None);
                };
                warn_damaged(
                    &path,
                    &why,
                    "holding the live snapshot as if pinned; `dagsnap unpin` releases it, `dagsnap pin` replaces it",
                );
                let pinned_at = fs::metadata(&path)
                    .and_then(|m| m.modified())
                    .unwrap_or_else(|_| SystemTime::now());
                Ok(Some(Pin {
                    commit: live.to_string(),
                    reason: format!("pin.json is damaged ({why})"),
                    pinned_at,
                    pinned_by: "unknown".into(),
                }))
            }
        }
    }

    pub(super) fn set_pin(&self, _lock: &RootLock, pin: &Pin) -> Result<(), StoreError> {
        write_json(&self.file(PIN_FILE), pin)
    }

    /// Remove the pin file, whatever it holds; whether there was one.
    pub(super) fn clear_pin(&self, _lock: &RootLock) -> Result<bool, StoreError> {
        let path = self.file(PIN_FILE);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(IoError::new("remove", &path, e).into()),
        }
    }
}

/// A record file as read from disk.
pub(crate) enum Read<T> {
    Missing,
    Valid(T),
    /// It exists but is not a valid record: why.
    Damaged(String),
}

/// A record that can say whether what was parsed makes sense.
pub(crate) trait Check {
    fn check(&self) -> Result<(), String>;
}

/// Read a JSON record. Only failing to read the file is an error; a file that does not parse
/// or does not make sense is [`Read::Damaged`].
pub(crate) fn read_json<T: DeserializeOwned + Check>(path: &Path) -> Result<Read<T>, IoError> {
    let bytes = match fs::read(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Read::Missing),
        other => other.at("read", path)?,
    };
    Ok(match serde_json::from_slice::<T>(&bytes) {
        Ok(value) => match value.check() {
            Ok(()) => Read::Valid(value),
            Err(why) => Read::Damaged(why),
        },
        Err(e) => Read::Damaged(e.to_string()),
    })
}

/// Write a JSON record atomically (a reader sees the old or the new one, never a torn one).
pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| {
        IoError::new(
            "encode",
            path,
            io::Error::new(io::ErrorKind::InvalidData, e),
        )
    })?;
    Ok(fsutil::write_atomically(path, &bytes)?)
}

/// Write `publication` as a new file in `dir`, named so that names sort by observation time,
/// then publication time: written under a temporary name and hard-linked into place, so it
/// appears whole, and never replaces another publisher's.
fn write_publication(dir: &Path, publication: &Publication) -> Result<(), StoreError> {
    let nanos = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    };
    match fs::create_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
            return Err(IoError::new("create", dir, e).into())
        }
        _ => {}
    }
    let name = format!(
        "{:020}-{:020}-{}.json",
        nanos(publication.observed_at),
        nanos(publication.published_at),
        fsutil::unique_suffix()
    );
    let bytes = serde_json::to_vec_pretty(publication).map_err(|e| {
        IoError::new(
            "encode",
            dir.join(&name),
            io::Error::new(io::ErrorKind::InvalidData, e),
        )
    })?;
    let temp = dir.join(format!(".tmp-{name}"));
    fsutil::write_atomically(&temp, &bytes)?;
    let path = dir.join(&name);
    let linked = fs::hard_link(&temp, &path).at("create", &path);
    let _ = fs::remove_file(&temp);
    linked?;
    fsutil::fsync_dir(dir)?;
    Ok(())
}

/// Warn that a record is damaged and what dagsnap does instead, once per process for each file
/// and cause: a loop polling every few seconds would otherwise repeat it at every poll.
pub(crate) fn warn_damaged(path: &Path, why: &str, instead: &str) {
    static SEEN: Mutex<Option<HashSet<(PathBuf, String)>>> = Mutex::new(None);
    let mut seen = SEEN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let first = seen
        .get_or_insert_with(HashSet::new)
        .insert((path.to_path_buf(), why.to_string()));
    if first {
        tracing::warn!(path = %path.display(), damage = %why, "a record under the root is damaged; {instead}");
    } else {
        tracing::debug!(path = %path.display(), damage = %why, "a record under the root is damaged; {instead}");
    }
}
