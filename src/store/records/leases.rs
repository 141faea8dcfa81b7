//! `.dagsnap/leases/<commit>.<holder>.json`: a reader asking GC to keep a snapshot for a while.
//!
//! The Airflow bundle (`integrations/airflow`) writes one when a worker runs a task against a
//! version (the commit its DAG run was scheduled with), where the volume is writable for it:
//! `{"commit": ..., "holder": ..., "expires_at": <unix seconds>}`. GC keeps a leased snapshot
//! until the lease expires, then removes the lease. Leases are input like any record: a damaged
//! one is ignored, and none is honoured for more than [`MAX_LEASE`] after it was written, so a
//! mistaken far-future expiry cannot keep a snapshot forever.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Deserialize;

use crate::store::is_commit_id;

const DIR: &str = "leases";
/// The longest a lease is honoured, counted from when its file was written.
pub const MAX_LEASE: Duration = Duration::from_secs(30 * 24 * 3600);

#[derive(Debug, Deserialize)]
struct Lease {
    commit: String,
    expires_at: u64,
}

/// Each lease file with the commit it names and when it ends (`None`: damaged).
fn read_all(store: &Path) -> Vec<(PathBuf, Option<(String, SystemTime)>)> {
    let Ok(entries) = std::fs::read_dir(store.join(DIR)) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "json")
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .map(|path| {
            let lease = std::fs::read(&path)
                .ok()
                .and_then(|bytes| serde_json::from_slice::<Lease>(&bytes).ok())
                .filter(|lease| is_commit_id(&lease.commit));
            let written = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            let ends = lease.map(|lease| {
                let asked = SystemTime::UNIX_EPOCH + Duration::from_secs(lease.expires_at);
                (lease.commit, asked.min(written + MAX_LEASE))
            });
            (path, ends)
        })
        .collect()
}

/// The commits that an unexpired lease names.
pub(in crate::store) fn leased(store: &Path, now: SystemTime) -> HashSet<String> {
    read_all(store)
        .into_iter()
        .filter_map(|(_, lease)| lease)
        .filter(|(_, ends)| *ends > now)
        .map(|(commit, _)| commit)
        .collect()
}

/// Remove expired and damaged leases (GC, under the root's lock).
pub(in crate::store) fn remove_expired(store: &Path, now: SystemTime) {
    for (path, lease) in read_all(store) {
        if lease.is_none_or(|(_, ends)| ends <= now) {
            let _ = std::fs::remove_file(path);
        }
    }
}
