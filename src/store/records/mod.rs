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

pub(crate) mod claims;
mod journal;
pub(crate) mod leases;
pub(crate) mod publishers;
mod types;
pub(crate) mod verdicts;

pub(crate) use claims::Claim;
pub(crate) use journal::LinkHistory;
pub(crate) use publishers::{
    LockFault, LockWitness, Observed, PublisherRecord, Registration, SeenPublisher,
};
pub use types::*;
pub(crate) use verdicts::{CheckClaim, SignatureVerdict, Verdict};

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{RootLock, Store, StoreError, MAX_CLOCK_SKEW};
use crate::commit::CommitId;
use crate::fsutil::{self, Dir, Found, IoError};

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
/// The largest record read (a publication, a pin, a verdict with its 64 KiB of output, a
/// manifest): anything larger is damaged, whatever it holds.
pub(crate) const MAX_RECORD: u64 = 1 << 20;

/// The record files in one root's store directory.
#[derive(Debug, Clone)]
pub struct Records {
    store: Store,
}

impl Records {
    pub(super) fn at(store: Store) -> Records {
        Records { store }
    }

    /// The newest publication that is believed ([`believed`]): the newest readable file in
    /// `publications/` (newest by observation time, then publication time); without one,
    /// `state.json` as dagsnap before 0.3 wrote it, or the journal's newest entry. Every
    /// decision that asks what is newest asks this, so a record not believed for one is not
    /// believed for any.
    pub fn latest(&self) -> Result<Option<Publication>, StoreError> {
        let now = SystemTime::now();
        if let Some(dir) = self.store.read_dir(PUBLICATIONS_DIR)? {
            let mut names = publication_names(&dir)?;
            names.sort();
            for name in names.iter().rev() {
                match read_json::<Publication>(&dir, name)? {
                    Read::Valid(publication) if believed(&publication, now) => {
                        return Ok(Some(publication))
                    }
                    Read::Valid(publication) => warn_unbelieved(&dir.join(name), &publication),
                    Read::Damaged(why) => warn_damaged(
                        &dir.join(name),
                        &why,
                        "using the publication before it instead",
                    ),
                    // Removed by GC between listing and reading.
                    Read::Missing => {}
                }
            }
        }
        if let Some(store) = self.store.open()? {
            match read_json::<Publication>(&store, STATE_FILE)? {
                Read::Valid(state) if believed(&state, now) => return Ok(Some(state)),
                Read::Valid(state) => warn_unbelieved(&store.join(STATE_FILE), &state),
                Read::Damaged(why) => warn_damaged(
                    &store.join(STATE_FILE),
                    &why,
                    "using the journal's latest entry instead; the next publish rewrites it",
                ),
                Read::Missing => {}
            }
        }
        Ok(self
            .journal()?
            .into_iter()
            .rev()
            .find(|entry| believed(entry, now)))
    }

    /// Every journal entry, oldest first; damaged lines are skipped with a warning.
    pub fn journal(&self) -> Result<Vec<Publication>, StoreError> {
        let Some(store) = self.store.open()? else {
            return Ok(Vec::new());
        };
        let read = journal::read(&store, JOURNAL_FILE)?;
        if !read.damaged.is_empty() {
            let lines: Vec<String> = read.damaged.iter().map(|n| n.to_string()).collect();
            warn_damaged(
                &store.join(JOURNAL_FILE),
                &format!("unreadable line(s) {}", lines.join(", ")),
                "skipping them; the next collection removes them",
            );
        }
        Ok(read.entries)
    }

    /// The verdict of the check named `fingerprint` on `commit`, if recorded.
    pub fn verdict(&self, commit: &CommitId, fingerprint: &str) -> Option<Verdict> {
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
    pub fn rejection(&self, commit: &CommitId) -> Option<Verdict> {
        self.verdicts()
            .into_iter()
            .find(|v| v.commit == commit)
            .filter(|v| !v.accepted)
    }

    /// Say whether the root's publishers require signatures (`--verify-signatures` mode).
    pub fn require_signatures(&self, mode: Option<&str>) -> Result<(), StoreError> {
        verdicts::require_signatures(&self.store, mode)
    }

    /// Whether moving the link to `commit` needs force because signatures are required and no
    /// signature verdict accepted it: the mode required, when so.
    pub fn unverified(&self, commit: &CommitId) -> Option<String> {
        let mode = verdicts::signatures_required(&self.store)?;
        let verified = self
            .verdicts()
            .iter()
            .any(|v| v.commit == commit && v.accepted && v.signature.is_some());
        (!verified).then_some(mode)
    }

    /// Forget the verdicts on `commit` (`dagsnap recheck`); how many went.
    pub fn forget_verdicts(&self, _lock: &RootLock, commit: &CommitId) -> usize {
        verdicts::forget(&self.store, commit)
    }

    /// The right to run the check on `commit` now, or `None` while another publisher runs it.
    pub fn claim_check(
        &self,
        commit: &CommitId,
        fingerprint: &str,
    ) -> Result<Option<CheckClaim>, StoreError> {
        verdicts::claim(&self.store, commit, fingerprint)
    }

    /// Remove verdicts nobody needs any more (GC); `retained` says which commits have a
    /// snapshot.
    pub fn remove_unneeded_verdicts(&self, _lock: &RootLock, retained: &dyn Fn(&CommitId) -> bool) {
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
    pub fn record_publication(
        &self,
        _lock: &RootLock,
        publication: &Publication,
    ) -> Result<(), StoreError> {
        let store = self.store.create()?;
        // A correction names what an earlier publication named; it observes nothing new.
        let observes = publication.cause != Cause::Reconcile;
        if publication.resets_ordering() {
            // An operator's action ends the ordering of everything observed before it,
            // including a record from a clock that runs ahead: only it remains to compare with.
            if let Some(dir) = self.store.read_dir(PUBLICATIONS_DIR)? {
                for name in dir.names().unwrap_or_default() {
                    let _ = dir.remove_file(&name);
                }
            }
            let _ = store.remove_file(STATE_FILE);
        }
        if (publication.moved_link && observes) || publication.resets_ordering() {
            write_publication(&self.store.ensure(PUBLICATIONS_DIR)?, publication)?;
        }
        journal::append(&store, JOURNAL_FILE, publication)
    }

    /// Keep the newest [`PUBLICATIONS_KEPT`] publication files (under the lock, from GC),
    /// removing damaged ones and those not [`believed`] first; the old `state.json` goes once
    /// a publication file replaces it.
    pub fn trim_publications(&self, _lock: &RootLock) -> Result<(), StoreError> {
        let Some(dir) = self.store.read_dir(PUBLICATIONS_DIR)? else {
            return Ok(());
        };
        let now = SystemTime::now();
        let mut names = dir.names()?;
        if names.is_empty() {
            return Ok(());
        }
        // The newest must be readable and believed.
        names.retain(|name| {
            let text = name.to_string_lossy();
            if !text.ends_with(".json") || text.starts_with('.') {
                // Temporary names of writers that died, and anything else.
                return true;
            }
            let why = match read_json::<Publication>(&dir, name) {
                Ok(Read::Damaged(why)) => why,
                Ok(Read::Valid(p)) if !believed(&p, now) => {
                    "its observation lies in the future".to_string()
                }
                _ => return true,
            };
            let _ = dir.remove_file(name);
            tracing::info!(path = %dir.join(name).display(), why, "removed a publication record");
            false
        });
        names.sort();
        let excess = names.len().saturating_sub(PUBLICATIONS_KEPT);
        for name in &names[..excess] {
            let _ = dir.remove_file(name);
        }
        if let Some(store) = self.store.open()? {
            let _ = store.remove_file(STATE_FILE);
        }
        Ok(())
    }

    /// Rewrite the journal without its damaged lines (under the lock, from GC).
    pub fn clean_journal(&self, _lock: &RootLock) -> Result<(), StoreError> {
        let Some(store) = self.store.open()? else {
            return Ok(());
        };
        let read = journal::read(&store, JOURNAL_FILE)?;
        if !read.damaged.is_empty() || read.replace {
            journal::rewrite(&store, JOURNAL_FILE, &read.entries)?;
            tracing::info!(path = %store.join(JOURNAL_FILE).display(), removed = read.damaged.len(), "removed damaged lines from the journal");
        }
        Ok(())
    }

    /// The operator's pin, if any. A pin file that cannot be read is taken as a pin of the live
    /// snapshot (`live`): when in doubt, hold the link where it is, and say how to release it.
    pub fn pin(&self, live: Option<&CommitId>) -> Result<Option<Pin>, StoreError> {
        let Some(store) = self.store.open()? else {
            return Ok(None);
        };
        let path = store.join(PIN_FILE);
        match read_json::<Pin>(&store, PIN_FILE)? {
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
                let pinned_at = store
                    .stat(PIN_FILE)
                    .ok()
                    .flatten()
                    .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s.st_mtime.max(0) as u64))
                    .unwrap_or_else(SystemTime::now);
                Ok(Some(Pin {
                    commit: live.clone(),
                    reason: format!("pin.json is damaged ({why})"),
                    pinned_at,
                    pinned_by: "unknown".into(),
                }))
            }
        }
    }

    /// Pin the link: sync loops will not move it until the pin is cleared. The caller moves
    /// the link first if the pinned commit is not live.
    pub fn set_pin(&self, _lock: &RootLock, pin: &Pin) -> Result<(), StoreError> {
        write_json(&self.store.create()?, PIN_FILE, pin)
    }

    /// Remove the pin file, whatever it holds; whether there was one.
    pub(super) fn clear_pin(&self, _lock: &RootLock) -> Result<bool, StoreError> {
        let Some(store) = self.store.open()? else {
            return Ok(false);
        };
        let there = store.kind(PIN_FILE)?.is_some();
        match store.kind(PIN_FILE)? {
            Some(fsutil::Kind::Dir) => store.remove_tree(PIN_FILE)?,
            _ => store.remove_file(PIN_FILE)?,
        }
        Ok(there)
    }
}

/// Publishers, their claims and heartbeats, and readers' leases.
impl Records {
    /// Register this process as a publisher of `source` (see [`claims::claim`]).
    pub fn claim(&self, source: &SourceRecord, timeout: Duration) -> Result<Claim, StoreError> {
        claims::claim(&self.store, source, timeout)
    }

    /// Make `source` the configuration this root follows, from now (see [`claims::take_over`]).
    pub(crate) fn take_over(
        &self,
        lock: &RootLock,
        source: &SourceRecord,
    ) -> Result<SourceRecord, StoreError> {
        claims::take_over(&self.store, lock, source)
    }

    /// Write `record` back as the configuration the root follows (see [`claims::put_back`]).
    pub(crate) fn put_back_source(
        &self,
        lock: &RootLock,
        record: &SourceRecord,
    ) -> Result<(), StoreError> {
        claims::put_back(&self.store, lock, record)
    }

    /// The repository and ref recorded for this root.
    pub fn source(&self) -> Result<Option<SourceRecord>, StoreError> {
        claims::source(&self.store)
    }

    /// Whether a sync loop of this root is running, on any host that shares its locks.
    pub fn publishers_running(&self) -> Result<bool, StoreError> {
        claims::publishers_running(&self.store)
    }

    /// Create this process's publisher record (see [`publishers`]).
    pub fn register(&self, record: PublisherRecord) -> Result<Registration, StoreError> {
        Registration::register(&self.store, record)
    }

    /// Every publisher record of this root, running ones first.
    pub fn publishers(&self) -> Vec<SeenPublisher> {
        publishers::read_all(&self.store)
    }

    /// Look at the other publishers' heartbeats once ([`LockWitness::observe`]); `own` is this
    /// publisher's record's name, `me` its identity (`host pid`).
    pub fn observe_peers(&self, witness: &mut LockWitness, own: &OsStr, me: &str) -> Observed {
        witness.observe(&self.store, own, me)
    }

    /// Remove records of publishers that stopped long ago (GC).
    pub fn remove_dead_publishers(&self, _lock: &RootLock) {
        publishers::remove_dead(&self.store)
    }

    /// Commits that a reader's unexpired lease asks GC to keep (see [`leases`]).
    pub fn leased(&self, now: SystemTime) -> HashSet<CommitId> {
        leases::leased(&self.store, now)
    }

    /// Ask GC to keep `commit` until `until`, as `holder` (see [`leases`]).
    pub fn lease(
        &self,
        commit: &CommitId,
        holder: &str,
        until: SystemTime,
    ) -> Result<(), StoreError> {
        leases::write(&self.store, commit, holder, until)
    }

    /// Remove expired and damaged leases (GC).
    pub fn remove_expired_leases(&self, _lock: &RootLock, now: SystemTime) {
        leases::remove_expired(&self.store, now)
    }
}

/// Whether a publication is believed: its observation of the remote lies at most
/// [`MAX_CLOCK_SKEW`] ahead of this host's clock. One further ahead comes from a clock that ran
/// ahead (or was forged, or this clock was stepped back); believing it would stop every
/// correctly clocked publisher until that time, or have the link put back on it every cycle.
pub(crate) fn believed(publication: &Publication, now: SystemTime) -> bool {
    publication.observed_at <= now + MAX_CLOCK_SKEW
}

/// Say once per record that its observation lies in the future and it is not believed.
fn warn_unbelieved(path: &Path, publication: &Publication) {
    let ahead = publication
        .observed_at
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    warn_damaged(
        path,
        &format!(
            "its observation of the remote (by {}) lies {} in the future by this host's clock",
            publication.host,
            humantime::format_duration(Duration::from_secs(ahead.as_secs()))
        ),
        "not believing it for any decision (check the clocks of both hosts: NTP); GC removes it",
    );
}

/// Names of publication files in `dir` (not temporaries).
fn publication_names(dir: &Dir) -> Result<Vec<std::ffi::OsString>, StoreError> {
    Ok(dir
        .names()?
        .into_iter()
        .filter(|n| {
            let n = n.to_string_lossy();
            n.ends_with(".json") && !n.starts_with('.')
        })
        .collect())
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
    /// Why the record makes no sense, beyond what deserialization already refused.
    fn check(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Read the JSON record `name` in `dir` (a regular file of at most [`MAX_RECORD`] bytes,
/// never through a symlink). Only failing to read the file is an error; anything else there,
/// or a file that does not parse or does not make sense, is [`Read::Damaged`].
pub(crate) fn read_json<T: DeserializeOwned + Check>(
    dir: &Dir,
    name: impl AsRef<OsStr>,
) -> Result<Read<T>, IoError> {
    let bytes = match dir.read_record(name, MAX_RECORD)? {
        Found::Missing => return Ok(Read::Missing),
        Found::Unusable(why) => return Ok(Read::Damaged(why)),
        Found::Bytes(bytes) => bytes,
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
/// A directory in its place is moved into the trash first.
pub(crate) fn write_json<T: Serialize>(dir: &Dir, name: &str, value: &T) -> Result<(), StoreError> {
    let bytes = encode(value, &dir.join(name))?;
    match dir.write_atomically(name, &bytes) {
        Err(e) if matches!(e.errno(), Some(libc::EISDIR) | Some(libc::ENOTEMPTY)) => {
            set_aside(dir, name);
            Ok(dir.write_atomically(name, &bytes)?)
        }
        other => Ok(other?),
    }
}

fn encode<T: Serialize>(value: &T, path: &Path) -> Result<Vec<u8>, IoError> {
    serde_json::to_vec_pretty(value).map_err(|e| {
        IoError::new(
            "encode",
            path,
            io::Error::new(io::ErrorKind::InvalidData, e),
        )
    })
}

/// Move what is at `dir/name` (something dagsnap would not have put there: a directory where a
/// record goes, a symlink or a FIFO where a lock file goes) into the trash beside it, with a
/// warning; GC deletes it later without following it.
pub(crate) fn set_aside(dir: &Dir, name: &str) {
    let found = match dir.kind(name) {
        Ok(Some(kind)) => kind.described(),
        _ => return,
    };
    let aside = super::layout::trash_name(name);
    tracing::warn!(path = %dir.join(name).display(), found, "a file of the store is not a regular file (anyone who can write the volume could have put it there); moving it aside");
    if let Err(e) = dir.rename(name, &aside) {
        tracing::warn!(error = %e, "cannot move it aside");
    }
}

/// Write `publication` as a new file in `dir`, named so that names sort by observation time,
/// then publication time: written under a temporary name and hard-linked into place, so it
/// appears whole, and never replaces another publisher's.
fn write_publication(dir: &Dir, publication: &Publication) -> Result<(), StoreError> {
    let nanos = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    };
    let name = format!(
        "{:020}-{:020}-{}.json",
        nanos(publication.observed_at),
        nanos(publication.published_at),
        fsutil::unique_suffix()
    );
    let bytes = encode(publication, &dir.join(&name))?;
    let temp = dir.write_temporary(OsStr::new(&name), &bytes)?;
    let linked = dir.hard_link(&temp, &name);
    let _ = dir.remove_file(&temp);
    linked?;
    dir.fsync()?;
    Ok(())
}

/// The store directory of `store`, for the record modules: `None` when there is none.
pub(crate) fn sub_dir(store: &Store, name: &str) -> Option<Dir> {
    store.read_dir(name).ok().flatten()
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
