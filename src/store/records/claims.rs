//! Which repository and ref a root follows, and who is publishing it: `source.json`, and a
//! shared lock on `publishers` held by every running publisher.

use std::time::Duration;

use super::{read_json, set_aside, warn_damaged, write_json, Read, SourceRecord};
use crate::fsutil::lock::{FileLock, LockError};
use crate::fsutil::{is_not_regular, Dir};
use crate::store::{RootLock, Store, StoreError};

const SOURCE_FILE: &str = "source.json";
const PUBLISHERS_FILE: &str = "publishers";
const CLAIM_LOCK_FILE: &str = "claim.lock";

/// This process's registration as a publisher of the root (see [`claim`]).
#[derive(Debug)]
pub struct Claim {
    _shared: FileLock,
}

/// Register this process as a publisher of `source` in the store at `store` for as long as the
/// returned [`Claim`] lives. The configuration started last is the one the root follows.
///
/// Every publisher holds a shared lock on `.dagsnap/publishers` for its lifetime. Under a short
/// exclusive lock on `.dagsnap/claim.lock`:
/// - no record yet (or a damaged one), or the same source: take the shared lock (writing the
///   record if it is new or damaged);
/// - a different source: take the shared lock and leave the record: this configuration takes
///   the root over at its first publish ([`take_over`]), not before, so that a configuration
///   that cannot publish (a wrong ref) never stops the one that does. Publishers of the old
///   configuration that still run then find the record changed and stand back (they move
///   nothing, and say so) until they stop: a rolling update that changes `--ref` or `--repo`
///   completes by itself, readers keep the old configuration's tree until the new one's first
///   snapshot is live and never see it after, and a configuration started by mistake is
///   undone by starting the right one again.
///
/// "The same source" compares normalized forms ([`SourceRecord::same_as`]): `main` and
/// `refs/heads/main`, or `/srv/dags`, `/srv/dags/` and `file:///srv/dags`, are one
/// configuration.
///
/// Locks die with their process, so a crashed publisher never blocks a reconfiguration.
pub(in crate::store) fn claim(
    store: &Store,
    source: &SourceRecord,
    timeout: Duration,
) -> Result<Claim, StoreError> {
    let dir = store.create()?;
    // A lock of its own, not the root's: a start-up must not wait for publishes or GC.
    let _serialized = lock_file(&dir, CLAIM_LOCK_FILE, |dir, name| {
        FileLock::acquire_in(dir, name, timeout)
    })?;
    let record_path = dir.join(SOURCE_FILE);
    let publishers = dir.join(PUBLISHERS_FILE);
    let recorded = match read_json::<SourceRecord>(&dir, SOURCE_FILE)? {
        Read::Valid(record) => Some(record),
        Read::Missing => None,
        Read::Damaged(why) => {
            warn_damaged(
                &record_path,
                &why,
                "recording this publisher's source in its place",
            );
            None
        }
    };
    let held = match recorded {
        Some(theirs) if !theirs.same_as(source) => {
            tracing::warn!(follows = %theirs, ours = %source, "this root follows another configuration; this publisher takes it over at its first publish, and publishers of the other stand back from then on (if this is a mistake, stop this one; starting the right one again takes the root back)");
            lock_file(&dir, PUBLISHERS_FILE, FileLock::try_shared)?
        }
        Some(_) => lock_file(&dir, PUBLISHERS_FILE, FileLock::try_shared)?,
        None => {
            write_json(&dir, SOURCE_FILE, source)?;
            lock_file(&dir, PUBLISHERS_FILE, FileLock::try_shared)?
        }
    };
    // Exclusive holders only exist inside this function, under the claim lock we hold.
    let lock = held.ok_or_else(|| {
        StoreError::Lock(LockError::Busy {
            path: publishers.clone(),
            waited: Duration::ZERO,
            holder: None,
        })
    })?;
    Ok(Claim { _shared: lock })
}

/// Make `source` the configuration the root follows, claimed now, as its publisher publishes
/// for the first time (under the root's lock, which `_lock` proves).
pub(in crate::store) fn take_over(
    store: &Store,
    _lock: &RootLock,
    source: &SourceRecord,
) -> Result<SourceRecord, StoreError> {
    let claimed = SourceRecord {
        claimed_at: Some(std::time::SystemTime::now()),
        ..source.clone()
    };
    put_back(store, _lock, &claimed)?;
    Ok(claimed)
}

/// Write `record` back as the configuration the root follows, as it was (a take-over that
/// did not publish after all).
pub(in crate::store) fn put_back(
    store: &Store,
    _lock: &RootLock,
    record: &SourceRecord,
) -> Result<(), StoreError> {
    write_json(&store.create()?, SOURCE_FILE, record)
}

/// Take a lock on the file `name` in `dir` with `take`; something else than a regular file in
/// its place (a symlink, a FIFO) is moved aside first, with a warning.
pub(in crate::store) fn lock_file<T>(
    dir: &Dir,
    name: &str,
    take: impl Fn(&Dir, &str) -> Result<T, LockError>,
) -> Result<T, LockError> {
    match take(dir, name) {
        Err(LockError::Io(e)) if is_not_regular(&e) => {
            set_aside(dir, name);
            take(dir, name)
        }
        other => other,
    }
}

/// Whether any publisher of the root in `store` is running (holds its shared claim).
pub(in crate::store) fn publishers_running(store: &Store) -> Result<bool, StoreError> {
    match store.open()? {
        Some(dir) => Ok(FileLock::is_held_in(&dir, PUBLISHERS_FILE)?),
        None => Ok(false),
    }
}

/// The repository and ref recorded for the root in `store`, if readable.
pub(in crate::store) fn source(store: &Store) -> Result<Option<SourceRecord>, StoreError> {
    let Some(dir) = store.open()? else {
        return Ok(None);
    };
    let path = dir.join(SOURCE_FILE);
    Ok(match read_json::<SourceRecord>(&dir, SOURCE_FILE)? {
        Read::Valid(record) => Some(record),
        Read::Missing => None,
        Read::Damaged(why) => {
            warn_damaged(&path, &why, "showing no source");
            None
        }
    })
}
