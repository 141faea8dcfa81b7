//! `.dagsnap/publishers.d/<host>.<pid>.json`: what each publisher of the root last did, for
//! `dagsnap status`.
//!
//! A publisher holds a lock on its own record for as long as it runs, so a reader tells a
//! running publisher from the record a dead one left (dead ones are removed by GC after an
//! hour). The record is rewritten when what it says changes, and at most once a minute
//! otherwise: an idle loop writes nothing readers see, and nothing at every poll.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use super::{Check, Read};
use crate::store::lock::FileLock;
use crate::store::StoreError;

const DIR: &str = "publishers.d";
/// An unchanged record is rewritten this often, so its `last_cycle_at` stays roughly right.
const REFRESH: Duration = Duration::from_secs(60);
/// Records of publishers that stopped are kept this long after their last write.
const KEEP_DEAD: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublisherRecord {
    pub host: String,
    pub pid: u32,
    pub version: String,
    pub repo: String,
    #[serde(rename = "ref")]
    pub ref_name: String,
    #[serde(with = "super::rfc3339")]
    pub started_at: SystemTime,
    #[serde(with = "super::rfc3339")]
    pub last_cycle_at: SystemTime,
    #[serde(
        default,
        with = "optional_time",
        skip_serializing_if = "Option::is_none"
    )]
    pub last_success_at: Option<SystemTime>,
    pub consecutive_failures: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl Check for PublisherRecord {
    fn check(&self) -> Result<(), String> {
        Ok(())
    }
}

/// A record as `status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SeenPublisher {
    #[serde(flatten)]
    pub record: PublisherRecord,
    /// It holds the lock on its record: it runs now.
    pub running: bool,
}

/// This process's own record, locked while it runs.
#[derive(Debug)]
pub struct Registration {
    lock: FileLock,
    record: PublisherRecord,
    written: Option<Instant>,
}

impl Registration {
    /// Create this process's record in the store at `store`, locked.
    pub(in crate::store) fn register(
        store: &Path,
        record: PublisherRecord,
    ) -> Result<Registration, StoreError> {
        let dir = store.join(DIR);
        match std::fs::create_dir(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(crate::fsutil::IoError::new("create", &dir, e).into())
            }
            _ => {}
        }
        let path = dir.join(format!("{}.{}.json", record.host, record.pid));
        let lock = FileLock::acquire(&path, Duration::ZERO)?;
        let mut registration = Registration {
            lock,
            record,
            written: None,
        };
        registration.write();
        Ok(registration)
    }

    /// Note a cycle's result; the record is rewritten if it says something new, or is stale.
    pub fn update(&mut self, success: bool, error: Option<String>) {
        let now = SystemTime::now();
        let before = self.record.clone();
        self.record.last_cycle_at = now;
        if success {
            self.record.last_success_at = Some(now);
            self.record.consecutive_failures = 0;
            self.record.last_error = None;
        } else if error.is_some() {
            self.record.consecutive_failures += 1;
            self.record.last_error = error;
        }
        // A first success, a failure, a new error or a recovery is news; another success
        // is not (no write under the root on an unchanged poll).
        let news = |r: &PublisherRecord| {
            (
                r.last_success_at.is_some(),
                r.consecutive_failures,
                r.last_error.clone(),
            )
        };
        let changed = news(&before) != news(&self.record);
        if changed || self.written.is_none_or(|at| at.elapsed() >= REFRESH) {
            self.write();
        }
    }

    fn write(&mut self) {
        let mut bytes = serde_json::to_vec_pretty(&self.record).unwrap_or_default();
        bytes.push(b'\n');
        match self.lock.rewrite(&bytes) {
            Ok(()) => self.written = Some(Instant::now()),
            Err(e) => tracing::debug!(error = %e, "cannot update this publisher's record"),
        }
    }
}

/// Every publisher record in the store at `store`, running ones first.
pub(in crate::store) fn read_all(store: &Path) -> Vec<SeenPublisher> {
    let Ok(entries) = std::fs::read_dir(store.join(DIR)) else {
        return Vec::new();
    };
    let mut seen: Vec<SeenPublisher> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .filter_map(|path| match super::read_json::<PublisherRecord>(&path) {
            Ok(Read::Valid(record)) => Some(SeenPublisher {
                running: is_running(&path),
                record,
            }),
            // Torn while its publisher rewrote it, or damaged: not worth a warning here.
            _ => None,
        })
        .collect();
    seen.sort_by(|a, b| {
        b.running
            .cmp(&a.running)
            .then_with(|| (&a.record.host, a.record.pid).cmp(&(&b.record.host, b.record.pid)))
    });
    seen
}

fn is_running(path: &Path) -> bool {
    FileLock::is_held(path).unwrap_or(false)
}

/// Remove records of publishers that stopped more than an hour ago.
pub(in crate::store) fn remove_dead(store: &Path) {
    let Ok(entries) = std::fs::read_dir(store.join(DIR)) else {
        return;
    };
    let paths: Vec<PathBuf> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
    for path in paths {
        let old = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|m| m.elapsed().ok())
            .is_some_and(|age| age > KEEP_DEAD);
        if old && !is_running(&path) {
            let _ = std::fs::remove_file(&path);
        }
    }
}

mod optional_time {
    use std::time::SystemTime;

    pub fn serialize<S: serde::Serializer>(
        t: &Option<SystemTime>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => super::super::rfc3339::serialize(t, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<SystemTime>, D::Error> {
        let text: Option<String> = serde::Deserialize::deserialize(d)?;
        text.map(|t| humantime::parse_rfc3339_weak(&t).map_err(serde::de::Error::custom))
            .transpose()
    }
}
