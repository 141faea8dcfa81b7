//! `.dagsnap/leases/<commit>.<holder>.json`: a reader asking GC to keep a snapshot for a while.
//!
//! The Airflow bundle (`integrations/airflow`) writes one when a worker runs a task against a
//! version (the commit its DAG run was scheduled with), where the volume is writable for it:
//! `{"commit": ..., "holder": ..., "expires_at": <unix seconds>}`. GC keeps a leased snapshot
//! until the lease expires, then removes the lease. A publisher that materializes a version for
//! a reader (`POST /versions/<commit>`) leases it the same way, as `dagsnap-<host>-<pid>`, so
//! that it survives until the reader takes its own. Leases are input like any record: a damaged
//! one is ignored, and none is honoured for more than [`MAX_LEASE`] after it was written, so a
//! mistaken far-future expiry cannot keep a snapshot forever.

use std::collections::HashSet;
use std::ffi::OsString;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::{sub_dir, write_json, MAX_RECORD};
use crate::commit::CommitId;
use crate::fsutil::{Dir, Found};
use crate::store::{Store, StoreError};

const DIR: &str = "leases";
/// The longest a lease is honoured, counted from when its file was written.
pub(crate) const MAX_LEASE: Duration = Duration::from_secs(30 * 24 * 3600);

#[derive(Debug, Serialize, Deserialize)]
struct Lease {
    commit: CommitId,
    #[serde(default)]
    holder: String,
    expires_at: u64,
}

/// Write (or renew) `holder`'s lease on `commit` until `until`. `holder` becomes part of a file
/// name: anything but letters, digits, `-`, `_` and `.` is replaced.
pub(in crate::store) fn write(
    store: &Store,
    commit: &CommitId,
    holder: &str,
    until: SystemTime,
) -> Result<(), StoreError> {
    let holder: String = holder
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let dir = store.ensure(DIR)?;
    let lease = Lease {
        commit: commit.clone(),
        expires_at: until
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        holder: holder.clone(),
    };
    write_json(&dir, &format!("{commit}.{holder}.json"), &lease)
}

/// Each lease file with the commit it names and when it ends (`None`: damaged: unreadable,
/// not a regular file, over [`MAX_RECORD`] bytes).
fn read_all(dir: &Dir) -> Vec<(OsString, Option<(CommitId, SystemTime)>)> {
    dir.names()
        .unwrap_or_default()
        .into_iter()
        .filter(|name| {
            let name = name.to_string_lossy();
            name.ends_with(".json") && !name.starts_with('.')
        })
        .map(|name| {
            let lease = match dir.read_record(&name, MAX_RECORD) {
                Ok(Found::Bytes(bytes)) => serde_json::from_slice::<Lease>(&bytes).ok(),
                _ => None,
            };
            let written = dir
                .stat(&name)
                .ok()
                .flatten()
                .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s.st_mtime.max(0) as u64))
                .unwrap_or(SystemTime::UNIX_EPOCH);
            let ends = lease.map(|lease| {
                let asked = SystemTime::UNIX_EPOCH + Duration::from_secs(lease.expires_at);
                (lease.commit, asked.min(written + MAX_LEASE))
            });
            (name, ends)
        })
        .collect()
}

/// The commits that an unexpired lease names.
pub(in crate::store) fn leased(store: &Store, now: SystemTime) -> HashSet<CommitId> {
    let Some(dir) = sub_dir(store, DIR) else {
        return HashSet::new();
    };
    read_all(&dir)
        .into_iter()
        .filter_map(|(_, lease)| lease)
        .filter(|(_, ends)| *ends > now)
        .map(|(commit, _)| commit)
        .collect()
}

/// Remove expired and damaged leases (GC, under the root's lock), never following a symlink.
pub(in crate::store) fn remove_expired(store: &Store, now: SystemTime) {
    let Some(dir) = sub_dir(store, DIR) else {
        return;
    };
    for (name, lease) in read_all(&dir) {
        if lease.is_none_or(|(_, ends)| ends <= now) {
            let _ = dir.remove_tree(&name);
        }
    }
}
