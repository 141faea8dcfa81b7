//! What a root says about its publishers, leases and pin: thin doors into `records`, each
//! opening the store from the root.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::time::{Duration, SystemTime};

use super::records::{self, Observed, PublisherRecord, Registration, SeenPublisher};
use super::{Claim, LockWitness, Pin, Publication, Root, RootLock, SourceRecord, StoreError};

impl Root {
    /// Register this process as a publisher of `source` (see [`records::claims::claim`]).
    pub fn claim(&self, source: &SourceRecord, timeout: Duration) -> Result<Claim, StoreError> {
        records::claims::claim(&self.store(), &self.root, source, timeout)
    }

    /// Create this process's publisher record (see `records::publishers`).
    pub fn register_publisher(&self, record: PublisherRecord) -> Result<Registration, StoreError> {
        Registration::register(&self.store(), record)
    }

    /// Look at the other publishers' heartbeats once (see
    /// [`records::publishers::LockWitness::observe`]); `own` is this publisher's record's name,
    /// `me` its identity (`host pid`).
    pub fn observe_peers(&self, witness: &mut LockWitness, own: &OsStr, me: &str) -> Observed {
        witness.observe(&self.store(), own, me)
    }

    /// Commits that a reader's unexpired lease asks GC to keep (see `records::leases`).
    pub fn leased_commits(&self, now: SystemTime) -> HashSet<String> {
        records::leases::leased(&self.store(), now)
    }

    /// Remove expired leases (GC).
    pub fn remove_expired_leases(&self, _lock: &RootLock, now: SystemTime) {
        records::leases::remove_expired(&self.store(), now)
    }

    /// Every publisher record of this root, running ones first.
    pub fn publishers(&self) -> Vec<SeenPublisher> {
        records::publishers::read_all(&self.store())
    }

    /// Remove records of publishers that stopped long ago (GC).
    pub fn remove_dead_publisher_records(&self) {
        records::publishers::remove_dead(&self.store())
    }

    /// The repository and ref recorded for this root.
    pub fn source(&self) -> Result<Option<SourceRecord>, StoreError> {
        records::claims::source(&self.store())
    }

    /// Whether a sync loop of this root is running, on any host that shares its locks.
    pub fn publishers_running(&self) -> Result<bool, StoreError> {
        records::claims::publishers_running(&self.store())
    }

    /// The operator's pin, if any (a damaged pin file holds what is live).
    pub fn pinned(&self) -> Result<Option<Pin>, StoreError> {
        let live = self.current().ok().flatten().map(|c| c.commit);
        self.records().pin(live.as_deref())
    }

    /// Pin the link: sync loops will not move it until [`Root::unpin`]. The caller moves the
    /// link first if the pinned commit is not live.
    pub fn pin(&self, lock: &RootLock, pin: &Pin) -> Result<(), StoreError> {
        self.records().set_pin(lock, pin)
    }

    /// Release the pin, whatever state its file is in; returns what it was.
    pub fn unpin(&self, lock: &RootLock) -> Result<Option<Pin>, StoreError> {
        let pin = self.pinned()?;
        self.records().clear_pin(lock)?;
        Ok(pin)
    }

    /// Record an operator's action that does not move the link (pin, unpin).
    pub fn record(&self, lock: &RootLock, entry: &Publication) -> Result<(), StoreError> {
        self.records().record_publication(lock, entry)
    }
}
