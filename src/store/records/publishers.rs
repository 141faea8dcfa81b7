//! `.dagsnap/publishers.d/<host>.<pid>.json`: what each publisher of the root last did, for
//! `dagsnap status`, and its heartbeat.
//!
//! A publisher holds a lock on its own record for as long as it runs, so a reader tells a
//! running publisher from the record a dead one left (dead ones are removed by GC after an
//! hour). The record is rewritten at every cycle with an advancing `beat`: a small write in the
//! store, never where readers look. Peers compare the beat with what the lock says
//! ([`LockWitness`]): a beat that advances under a lock they cannot see means the volume does
//! not carry locks between them.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::{Check, Read};
use crate::store::lock::FileLock;
use crate::store::StoreError;

const DIR: &str = "publishers.d";
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
    /// The heartbeat: advanced at every cycle. A peer that sees it advance while this record's
    /// lock is invisible to it knows that locks do not travel between the two.
    #[serde(default)]
    pub beat: u64,
    /// When this publisher stopped (written as it exits; a crashed one leaves none).
    #[serde(
        default,
        with = "optional_time",
        skip_serializing_if = "Option::is_none"
    )]
    pub stopped_at: Option<SystemTime>,
    /// This publisher's `--period`, so that peers know how often to expect a beat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_ms: Option<u64>,
    /// Set while this publisher has found that locks do not reach a peer (see [`LockWitness`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_fault: Option<String>,
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
        let mut registration = Registration { lock, record };
        registration.write();
        Ok(registration)
    }

    /// Note a cycle's result and advance the heartbeat; the record is rewritten at every
    /// cycle (it lives in the store, where readers never look).
    pub fn update(&mut self, success: bool, error: Option<String>) {
        let now = SystemTime::now();
        self.record.last_cycle_at = now;
        self.record.beat += 1;
        if success {
            self.record.last_success_at = Some(now);
            self.record.consecutive_failures = 0;
            self.record.last_error = None;
        } else if error.is_some() {
            self.record.consecutive_failures += 1;
            self.record.last_error = error;
        }
        self.write();
    }

    /// Say in the record that locks do not reach a peer (or no longer).
    pub fn set_lock_fault(&mut self, fault: Option<String>) {
        self.record.lock_fault = fault;
    }

    /// The path of this record, which its owner keeps locked.
    pub fn path(&self) -> &Path {
        self.lock.path()
    }

    fn write(&mut self) {
        let mut bytes = serde_json::to_vec_pretty(&self.record).unwrap_or_default();
        bytes.push(b'\n');
        if let Err(e) = self.lock.rewrite(&bytes) {
            tracing::debug!(error = %e, "cannot update this publisher's record");
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
                running: record.stopped_at.is_none() && is_running(&path),
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

impl Drop for Registration {
    /// Say in the record that this publisher stopped, before its lock goes: peers that cannot
    /// see the lock (a volume whose locks stay on each client) must not take it for alive.
    fn drop(&mut self) {
        self.record.stopped_at = Some(SystemTime::now());
        self.write();
    }
}

/// Whether a publisher of `source` (another configuration than the caller's) beat recently,
/// whatever the locks say: its record was written within three of its periods (and at least a
/// minute). On a volume whose locks do not work, this is what keeps a publisher of another
/// configuration from taking over a root whose publishers still run.
pub(in crate::store) fn alive_publisher_of(
    store: &Path,
    source: &super::SourceRecord,
) -> Option<PublisherRecord> {
    let entries = std::fs::read_dir(store.join(DIR)).ok()?;
    let now = SystemTime::now();
    entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .filter_map(|path| {
            let modified = std::fs::metadata(&path).ok()?.modified().ok()?;
            match super::read_json::<PublisherRecord>(&path) {
                Ok(Read::Valid(record)) => Some((record, modified)),
                _ => None,
            }
        })
        .filter(|(record, _)| {
            record.stopped_at.is_none()
                // Publisher records do not say what they select; repository and ref tell the
                // configurations apart well enough to find a running one.
                && source.follows(&record.repo, &record.ref_name)
        })
        .find(|(record, modified)| {
            let period = Duration::from_millis(record.period_ms.unwrap_or(10_000));
            let window = (period * 3).max(Duration::from_secs(60));
            now.duration_since(*modified).is_ok_and(|age| age <= window)
        })
        .map(|(record, _)| record)
}

/// Peers whose heartbeat advanced while their lock was invisible from here.
#[derive(Debug, Default)]
pub struct LockWitness {
    peers: std::collections::HashMap<PathBuf, PeerBeat>,
}

#[derive(Debug, Clone, Copy)]
struct PeerBeat {
    beat: u64,
    /// Cycles in a row in which the beat advanced and the lock was invisible.
    strikes: u32,
    /// Cycles in a row in which the beat did not advance.
    still: u32,
}

/// Locks taken through another client of the volume are invisible here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockFault {
    pub host: String,
    pub pid: u32,
}

impl std::fmt::Display for LockFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} pid {}", self.host, self.pid)
    }
}

impl LockWitness {
    /// Look at every peer's record once (a cycle of this publisher): a peer whose beat
    /// advanced while its lock is invisible from here, in two observations in a row, proves
    /// that locks do not travel between the two (one observation could be a peer that stopped
    /// between writing its beat and our look). A peer whose beat stands still for three cycles
    /// has stopped, and its evidence is forgotten.
    pub(in crate::store) fn observe(&mut self, store: &Path, own: &Path) -> Option<LockFault> {
        let entries = std::fs::read_dir(store.join(DIR)).ok()?;
        let mut present = std::collections::HashSet::new();
        let mut fault = None;
        for path in entries.filter_map(Result::ok).map(|e| e.path()) {
            if path == own || path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            let Ok(Read::Valid(record)) = super::read_json::<PublisherRecord>(&path) else {
                continue;
            };
            if record.stopped_at.is_some() {
                continue;
            }
            let held = FileLock::is_held(&path).unwrap_or(true);
            present.insert(path.clone());
            let beat = record.beat;
            let peer = self.peers.entry(path).or_insert(PeerBeat {
                beat,
                strikes: 0,
                still: 0,
            });
            if beat > peer.beat {
                peer.still = 0;
                peer.strikes = if held { 0 } else { peer.strikes + 1 };
            } else {
                peer.still += 1;
                if peer.still >= 3 {
                    peer.strikes = 0;
                }
            }
            peer.beat = beat;
            if peer.strikes >= 2 && fault.is_none() {
                fault = Some(LockFault {
                    host: record.host.clone(),
                    pid: record.pid,
                });
            }
        }
        self.peers.retain(|path, _| present.contains(path));
        fault
    }
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
