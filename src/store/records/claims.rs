//! Which repository and ref a root follows, and who is publishing it: `source.json`, and a
//! shared lock on `publishers` held by every running publisher.

use std::time::Duration;

use super::{read_json, set_aside, warn_damaged, write_json, Read, SourceRecord};
use crate::fsutil::lock::{FileLock, LockError};
use crate::fsutil::{is_not_regular, Dir};
use crate::store::{Store, StoreError};

const SOURCE_FILE: &str = "source.json";
const PUBLISHERS_FILE: &str = "publishers";
const CLAIM_LOCK_FILE: &str = "claim.lock";

/// This process's registration as a publisher of the root (see [`claim`]).
#[derive(Debug)]
pub struct Claim {
    _shared: FileLock,
}

/// Register this process as a publisher of `source` in the store at `store` for as long as the
/// returned [`Claim`] lives, refusing if live publishers of this root follow something else.
///
/// Every publisher holds a shared lock on `.dagsnap/publishers` for its lifetime. Under a short
/// exclusive lock on `.dagsnap/claim.lock`:
/// - no record yet (or a damaged one), or the same source: take the shared lock (writing the
///   record if it is new or damaged);
/// - a different source: if the exclusive lock can be taken and no publisher of the old
///   configuration beat recently (its heartbeat in `publishers.d`, which does not depend on
///   locks working), nobody follows it any more (a finished rolling update): rewrite the
///   record, then downgrade to shared. Otherwise refuse with [`StoreError::SourceMismatch`].
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
    let root = store.root_path();
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
            match lock_file(&dir, PUBLISHERS_FILE, FileLock::try_exclusive)? {
                // The lock says nobody follows the old configuration; a heartbeat may say otherwise
                // on a volume whose locks stay on each client.
                Some(_) if super::publishers::alive_publisher_of(store, &theirs).is_some() => {
                    return Err(StoreError::SourceMismatch {
                        root: root.to_path_buf(),
                        theirs: Box::new(theirs),
                        ours: Box::new(source.clone()),
                    })
                }
                Some(exclusive) => {
                    tracing::warn!(from = %theirs, to = %source, "no publisher of the previous configuration is running; this root now follows the new one");
                    write_json(&dir, SOURCE_FILE, source)?;
                    exclusive.downgrade()?;
                    Some(exclusive)
                }
                None => {
                    return Err(StoreError::SourceMismatch {
                        root: root.to_path_buf(),
                        theirs: Box::new(theirs),
                        ours: Box::new(source.clone()),
                    })
                }
            }
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
