//! `.dagsnap/publishers.d/<host>.<pid>.json`: what each publisher of the root last did, for
//! `dagsnap status`, and its heartbeat.
//!
//! A publisher holds a lock on its own record for as long as it runs, so a reader tells a
//! running publisher from the record a dead one left (dead ones are removed by GC after an
//! hour). The record is rewritten at every cycle with an advancing `beat`: a small write in the
//! store, never where readers look. Peers compare the beat with what the lock says
//! ([`LockWitness`]): a beat that advances under a lock they cannot see means the volume does
//! not carry locks between them.
//!
//! Records are input: anyone who can write the volume can write one with an advancing beat.
//! Such a record is not taken for evidence unless a real publisher could have written it
//! ([`LockWitness::observe`]).

use std::ffi::{OsStr, OsString};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::claims::lock_file;
use super::{sub_dir, Check, Read};
use crate::fsutil::lock::FileLock;
use crate::fsutil::Dir;
use crate::store::{Store, StoreError};

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
    /// Peers (`host pid`) whose beat advanced while their lock was invisible from here: what
    /// a peer on another host needs to see before it believes that locks fail between the two.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub suspects: Vec<String>,
    /// Where this publisher answers HTTP (`http://address:port`, loopback first): readers that
    /// need a version the root does not hold ask it there (`POST /versions/<commit>`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub serves: Vec<String>,
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
    /// It runs, but the root follows another configuration (started after it): it moves
    /// nothing until it stops.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub standing_back: bool,
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
        store: &Store,
        record: PublisherRecord,
    ) -> Result<Registration, StoreError> {
        let dir = store.ensure(DIR)?;
        let name = format!("{}.{}.json", record.host, record.pid);
        let lock = lock_file(&dir, &name, |dir, name| {
            FileLock::acquire_in(dir, name, Duration::ZERO)
        })?;
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

    /// Say in the record that locks do not reach a peer (or no longer), and which peers are
    /// suspected.
    pub fn set_lock_fault(&mut self, fault: Option<String>, suspects: Vec<String>) {
        self.record.lock_fault = fault;
        self.record.suspects = suspects;
    }

    /// Say in the record where this publisher answers HTTP.
    pub fn set_serves(&mut self, urls: Vec<String>) {
        self.record.serves = urls;
        self.write();
    }

    /// The name of this record in `publishers.d/`, which its owner keeps locked.
    pub fn name(&self) -> &OsStr {
        self.lock.name()
    }

    fn write(&mut self) {
        let mut bytes = serde_json::to_vec_pretty(&self.record).unwrap_or_default();
        bytes.push(b'\n');
        if let Err(e) = self.lock.rewrite(&bytes) {
            tracing::debug!(error = %e, "cannot update this publisher's record");
        }
    }
}

/// The publisher records in `dir` (names ending in `.json`), read as input: damaged ones, and
/// anything but a regular file, are left out.
fn records_in(dir: &Dir) -> Vec<(OsString, PublisherRecord)> {
    dir.names()
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.to_string_lossy().ends_with(".json"))
        .filter_map(
            |name| match super::read_json::<PublisherRecord>(dir, &name) {
                Ok(Read::Valid(record)) => Some((name, record)),
                // Torn while its publisher rewrote it, or damaged: not worth a warning here.
                _ => None,
            },
        )
        .collect()
}

/// Every publisher record in the store at `store`, running ones first.
pub(in crate::store) fn read_all(store: &Store) -> Vec<SeenPublisher> {
    let Some(dir) = sub_dir(store, DIR) else {
        return Vec::new();
    };
    let source = super::claims::source(store).ok().flatten();
    let mut seen: Vec<SeenPublisher> = records_in(&dir)
        .into_iter()
        .map(|(name, record)| {
            let running = record.stopped_at.is_none() && is_running(&dir, &name);
            let standing_back = running
                && source
                    .as_ref()
                    .is_some_and(|s| !s.follows(&record.repo, &record.ref_name));
            SeenPublisher {
                running,
                standing_back,
                record,
            }
        })
        .collect();
    seen.sort_by(|a, b| {
        b.running
            .cmp(&a.running)
            .then_with(|| (&a.record.host, a.record.pid).cmp(&(&b.record.host, b.record.pid)))
    });
    seen
}

fn is_running(dir: &Dir, name: &OsStr) -> bool {
    FileLock::is_held_in(dir, &name.to_string_lossy()).unwrap_or(false)
}

impl Drop for Registration {
    /// Say in the record that this publisher stopped, before its lock goes: peers that cannot
    /// see the lock (a volume whose locks stay on each client) must not take it for alive.
    fn drop(&mut self) {
        self.record.stopped_at = Some(SystemTime::now());
        self.write();
    }
}

/// When `name` in `dir` was last written.
fn modified(dir: &Dir, name: &OsStr) -> Option<SystemTime> {
    let stat = dir.stat(name).ok()??;
    Some(
        SystemTime::UNIX_EPOCH
            + Duration::new(
                stat.st_mtime.max(0) as u64,
                stat.st_mtime_nsec.max(0) as u32,
            ),
    )
}

/// Peers whose heartbeat advanced while their lock was invisible from here.
#[derive(Debug, Default)]
pub struct LockWitness {
    peers: std::collections::HashMap<OsString, PeerBeat>,
    /// Where the next look starts in the sorted list of peers' records.
    cursor: usize,
}

/// Peers' records read per look: each costs the volume an open, a read and a lock test, and
/// with a hundred pods on one root every publisher reading every peer's record each poll would
/// be most of what the root costs its NFS server. A look reads the next few in turn; evidence
/// is counted per peer, so a fault is found after two looks at a peer however many there are.
const PEERS_PER_LOOK: usize = 8;

#[derive(Debug, Clone)]
struct PeerBeat {
    beat: u64,
    /// Cycles in a row in which the beat advanced and the lock was invisible.
    strikes: u32,
    /// Cycles in a row in which the beat did not advance.
    still: u32,
    /// When this publisher last saw the beat advance (its own clock).
    advanced_at: std::time::Instant,
    /// `host pid`, when the peer is a credible suspect (see [`credible`]).
    suspect: Option<String>,
    /// The peer's locks are proven invisible from here, as of the last look at it.
    fault: Option<LockFault>,
}

/// However fast this publisher polls, a peer's beat is given this long, and three of its own
/// periods, to advance before the peer counts as stopped: a slow peer (a cycle on a slow
/// volume takes seconds) must not make a fault come and go, and the link move in between.
const STILL_PATIENCE: Duration = Duration::from_secs(10);

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

/// What [`LockWitness::observe`] concluded from one look.
#[derive(Debug, Default)]
pub struct Observed {
    /// A peer whose locks are invisible from here, proven.
    pub fault: Option<LockFault>,
    /// Peers (`host pid`) whose beat advanced under an invisible lock at the last look.
    pub suspects: Vec<String>,
}

impl LockWitness {
    /// Look at the next [`PEERS_PER_LOOK`] peers' records (a cycle of this publisher; all of
    /// them when there are no more): a peer whose beat advanced while its lock is invisible from
    /// here, in two looks at it in a row, proves that locks do not travel between the two (one
    /// look could be a peer that stopped between writing its beat and our look). A peer whose
    /// beat stands still for three looks and for [`STILL_PATIENCE`] (or three of its periods,
    /// if longer) has stopped, and its evidence is forgotten. What each look concluded stands
    /// until the next look at that peer.
    ///
    /// Records are input, so only a record a real publisher could have written is evidence
    /// ([`credible`]): not one in this publisher's own name (`me`, as `host pid`); on this host
    /// (where every lock is visible to the kernel that holds it, so only the volume's mounts can
    /// hide one), only one naming a live process of this program; from another host, only one
    /// whose publisher suspects this one in turn (a volume that loses locks between two
    /// clients loses them both ways, and both see it within two beats).
    pub(in crate::store) fn observe(&mut self, store: &Store, own: &OsStr, me: &str) -> Observed {
        let Some(dir) = sub_dir(store, DIR) else {
            return Observed::default();
        };
        let mut names: Vec<OsString> = dir
            .names()
            .unwrap_or_default()
            .into_iter()
            .filter(|n| n != own && n.to_string_lossy().ends_with(".json"))
            .collect();
        names.sort();
        self.peers.retain(|name, _| names.contains(name));
        let take = names.len().min(PEERS_PER_LOOK);
        let start = self.cursor % names.len().max(1);
        self.cursor = start + take;
        for name in names.iter().cycle().skip(start).take(take) {
            match super::read_json::<PublisherRecord>(&dir, name) {
                Ok(Read::Valid(record)) => self.look_at(&dir, name, &record, me),
                // Torn while its publisher rewrote it, or damaged: no evidence either way.
                _ => continue,
            }
        }
        let mut suspects: Vec<(&OsString, &PeerBeat)> = self.peers.iter().collect();
        suspects.sort_by(|a, b| a.0.cmp(b.0));
        Observed {
            fault: suspects.iter().find_map(|(_, peer)| peer.fault.clone()),
            suspects: suspects
                .iter()
                .filter_map(|(_, peer)| peer.suspect.clone())
                .collect(),
        }
    }

    /// One look at the peer whose record `name` holds `record`.
    fn look_at(&mut self, dir: &Dir, name: &OsStr, record: &PublisherRecord, me: &str) {
        let identity = format!("{} {}", record.host, record.pid);
        if record.stopped_at.is_some() || identity == me {
            self.peers.remove(name);
            return;
        }
        let held = FileLock::is_held_in(dir, &name.to_string_lossy()).unwrap_or(true);
        let beat = record.beat;
        let now = std::time::Instant::now();
        let peer = self.peers.entry(name.to_os_string()).or_insert(PeerBeat {
            beat,
            strikes: 0,
            still: 0,
            advanced_at: now,
            suspect: None,
            fault: None,
        });
        let patience = Duration::from_millis(record.period_ms.unwrap_or(0))
            .saturating_mul(3)
            .max(STILL_PATIENCE);
        if beat > peer.beat {
            peer.still = 0;
            peer.advanced_at = now;
            peer.strikes = if held { 0 } else { peer.strikes + 1 };
        } else if held {
            // Its lock is visible now: whatever it was, it is not evidence any more.
            peer.still += 1;
            peer.strikes = 0;
        } else {
            peer.still += 1;
            if peer.still >= 3 && now.duration_since(peer.advanced_at) >= patience {
                peer.strikes = 0;
            }
        }
        peer.beat = beat;
        let suspected = peer.strikes > 0 && credible(record, me);
        peer.suspect = suspected.then_some(identity);
        peer.fault =
            (suspected && peer.strikes >= 2 && corroborated(record, me)).then(|| LockFault {
                host: record.host.clone(),
                pid: record.pid,
            });
    }
}

/// Whether a real publisher could have written `record`: one on this host must be a running
/// process of this very program (its lock, had it one, would be visible here); one on another
/// host cannot be checked from here ([`corroborated`] asks it to vouch for itself).
fn credible(record: &PublisherRecord, me: &str) -> bool {
    let host = me.rsplit_once(' ').map_or(me, |(host, _)| host);
    record.host != host || same_program_runs(record.pid)
}

/// Whether a peer on another host suspects this publisher (`me`) in turn; a peer on this host
/// needs no such word (see [`credible`]).
fn corroborated(record: &PublisherRecord, me: &str) -> bool {
    let host = me.rsplit_once(' ').map_or(me, |(host, _)| host);
    record.host == host || record.suspects.iter().any(|s| s == me)
}

/// Whether `pid` is a live process running the same executable as this one.
fn same_program_runs(pid: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    let exe = |pid: &str| std::fs::metadata(format!("/proc/{pid}/exe")).ok();
    match (exe(&pid.to_string()), exe("self")) {
        (Some(theirs), Some(ours)) => theirs.dev() == ours.dev() && theirs.ino() == ours.ino(),
        _ => false,
    }
}

/// Remove records of publishers that stopped more than an hour ago, by name in
/// `publishers.d/`, never through a symlink.
pub(in crate::store) fn remove_dead(store: &Store) {
    let Some(dir) = sub_dir(store, DIR) else {
        return;
    };
    let now = SystemTime::now();
    for name in dir.names().unwrap_or_default() {
        let old = modified(&dir, &name)
            .and_then(|at| now.duration_since(at).ok())
            .is_some_and(|age| age > KEEP_DEAD);
        if old && !is_running(&dir, &name) {
            let _ = dir.remove_tree(&name);
        }
    }
}

pub(super) mod optional_time {
    use std::time::SystemTime;

    pub(crate) fn serialize<S: serde::Serializer>(
        t: &Option<SystemTime>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => super::super::rfc3339::serialize(t, s),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<SystemTime>, D::Error> {
        let text: Option<String> = serde::Deserialize::deserialize(d)?;
        text.map(|t| humantime::parse_rfc3339_weak(&t).map_err(serde::de::Error::custom))
            .transpose()
    }
}
