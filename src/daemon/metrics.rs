//! Prometheus metrics of the sync loop: dagsnap's own, and git-sync's names with git-sync's
//! meanings, so that dashboards and alerts built on a git-sync sidecar keep working.
//!
//! Everything is updated by the loop after each cycle (and by the hooks after each run);
//! `/metrics` only encodes. Nothing here blocks: the counters are atomics, and the families
//! take a short lock of their own.

use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// `result` of a cycle, as `dagsnap_syncs_total` counts it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ResultLabel {
    pub result: &'static str,
}

/// `reason` of a signature refusal.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct SourceLabel {
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct PhaseLabel {
    pub phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CommitLabel {
    pub commit: String,
}

/// git-sync's `status` label: `success`, `error` or `noop`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StatusLabel {
    pub status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct HookLabel {
    pub hook: &'static str,
    pub result: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn seconds_histogram() -> Histogram {
    // 1 ms .. ~9 min.
    Histogram::new(exponential_buckets(0.001, 2.5, 15))
}

/// What a cycle can be, as `dagsnap_syncs_total` counts it.
const SYNC_RESULTS: [&str; 10] = [
    "published",
    "unchanged",
    "held",
    "superseded",
    "rejected",
    "throttled",
    "deferred",
    "standing-back",
    "skipped",
    "failed",
];

/// The metric families, registered once.
pub(crate) struct Metrics {
    registry: Registry,
    syncs: Family<ResultLabel, Counter>,
    phase_seconds: HistogramFamily<PhaseLabel>,
    last_success: Gauge<f64, AtomicU64>,
    consecutive_failures: Gauge,
    live_commit: Family<CommitLabel, Gauge>,
    live_commit_time: Gauge,
    build_files: Gauge,
    build_bytes: Gauge,
    build_reused: Gauge,
    retained: Gauge,
    pinned: Gauge,
    lock_fault: Gauge,
    standing_back: Gauge,
    lock_wait_seconds: Histogram,
    hooks: Family<HookLabel, Counter>,
    checks: Family<ResultLabel, Counter>,
    versions: Family<ResultLabel, Counter>,
    signature_refusals: Family<ReasonLabel, Counter>,
    git_sync_count: Family<StatusLabel, Counter>,
    git_sync_duration: HistogramFamily<StatusLabel>,
    git_fetch_count: Counter,
    source_failures: Family<SourceLabel, Gauge>,
    ready: Gauge,
    period: Gauge<f64, AtomicU64>,
    keep: Gauge,
    root_size: Gauge,
    root_available: Gauge,
    source_last_success: Family<SourceLabel, Gauge<f64, AtomicU64>>,
}

/// What one cycle reports to the metrics.
#[derive(Debug, Clone, Default)]
pub(crate) struct CycleReport {
    /// One of [`SYNC_RESULTS`].
    pub result: &'static str,
    /// git-sync's status for it: `success` (the link moved, or the first sync), `noop`, `error`.
    pub git_sync_status: &'static str,
    pub duration: Duration,
    pub fetch: Option<Duration>,
    pub build: Option<Duration>,
    pub publish: Option<Duration>,
    pub lock_wait: Option<Duration>,
    /// A pack was received.
    pub fetched: bool,
    pub built: Option<crate::store::snapshot::Stats>,
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let mut registry = Registry::default();
        let metrics = Metrics {
            syncs: Family::default(),
            phase_seconds: Family::new_with_constructor(seconds_histogram),
            last_success: Gauge::default(),
            consecutive_failures: Gauge::default(),
            live_commit: Family::default(),
            live_commit_time: Gauge::default(),
            build_files: Gauge::default(),
            build_bytes: Gauge::default(),
            build_reused: Gauge::default(),
            retained: Gauge::default(),
            pinned: Gauge::default(),
            lock_fault: Gauge::default(),
            standing_back: Gauge::default(),
            lock_wait_seconds: seconds_histogram(),
            hooks: Family::default(),
            checks: Family::default(),
            versions: Family::default(),
            signature_refusals: Family::default(),
            source_failures: Family::default(),
            ready: Gauge::default(),
            period: Gauge::default(),
            keep: Gauge::default(),
            root_size: Gauge::default(),
            root_available: Gauge::default(),
            source_last_success: Family::default(),
            git_sync_count: Family::default(),
            git_sync_duration: Family::new_with_constructor(seconds_histogram),
            git_fetch_count: Counter::default(),
            registry: Registry::default(),
        };
        metrics.register_dagsnap(&mut registry);
        metrics.register_git_sync(&mut registry);
        metrics.start_at_zero();
        Metrics {
            registry,
            ..metrics
        }
    }

    /// dagsnap's own families.
    fn register_dagsnap(&self, registry: &mut Registry) {
        let metrics = self;
        registry.register(
            "dagsnap_syncs",
            "Sync cycles by result: published, unchanged, held (pinned), superseded (a peer was ahead), rejected (--check-command), throttled (--min-publish-interval), deferred (git-sync still writes the root), skipped (a peer was busy), failed",
            metrics.syncs.clone(),
        );
        registry.register(
            "dagsnap_cycle_phase_seconds",
            "Time spent per phase of a cycle: fetch (asking the remote, receiving a pack), build (writing the snapshot), publish (lock, decision, link swap)",
            metrics.phase_seconds.clone(),
        );
        registry.register(
            "dagsnap_last_success_timestamp_seconds",
            "When the last cycle succeeded (the remote was reached and the link is right), Unix time",
            metrics.last_success.clone(),
        );
        registry.register(
            "dagsnap_consecutive_failures",
            "Failed cycles since the last success",
            metrics.consecutive_failures.clone(),
        );
        registry.register(
            "dagsnap_ready",
            "1 while /readyz answers 200: a complete snapshot is live (and, with --ready-max-age, the remote was confirmed recently)",
            metrics.ready.clone(),
        );
        registry.register(
            "dagsnap_period_seconds",
            "The configured --period: how often the remote is asked",
            metrics.period.clone(),
        );
        registry.register(
            "dagsnap_retention_keep",
            "The configured --keep: snapshots kept for rollback besides the live and pinned ones",
            metrics.keep.clone(),
        );
        registry.register(
            "dagsnap_root_size_bytes",
            "Size of the volume that holds the root (statvfs, at most every 30 s and after each build)",
            metrics.root_size.clone(),
        );
        registry.register(
            "dagsnap_root_available_bytes",
            "Bytes of the volume that holds the root available to dagsnap (statvfs, at most every 30 s and after each build)",
            metrics.root_available.clone(),
        );
        registry.register(
            "dagsnap_source_consecutive_failures",
            "With several sources (--source): polls since this source last answered (a failing source holds back every source unless --allow-stale-source names it)",
            metrics.source_failures.clone(),
        );
        registry.register(
            "dagsnap_source_last_success_timestamp_seconds",
            "With several sources (--source): when this source last answered, Unix time",
            metrics.source_last_success.clone(),
        );
        registry.register(
            "dagsnap_live_commit_info",
            "The commit the link points at (value 1)",
            metrics.live_commit.clone(),
        );
        registry.register(
            "dagsnap_live_commit_timestamp_seconds",
            "Committer date of the live commit (for several sources, of the newest source commit), Unix time: how old the DAGs readers see are",
            metrics.live_commit_time.clone(),
        );
        registry.register(
            "dagsnap_last_build_files",
            "Files in the last snapshot this process built",
            metrics.build_files.clone(),
        );
        registry.register(
            "dagsnap_last_build_bytes",
            "Bytes in the last snapshot this process built",
            metrics.build_bytes.clone(),
        );
        registry.register(
            "dagsnap_last_build_reused_files",
            "Files of the last snapshot shared with the previous one (hard links) instead of written",
            metrics.build_reused.clone(),
        );
        registry.register(
            "dagsnap_retained_snapshots",
            "Snapshots in the store",
            metrics.retained.clone(),
        );
        registry.register(
            "dagsnap_pinned",
            "1 while an operator pins the link",
            metrics.pinned.clone(),
        );
        registry.register(
            "dagsnap_lock_fault",
            "1 while locks on the volume do not reach another publisher of the root (the link is not moved meanwhile)",
            metrics.lock_fault.clone(),
        );
        registry.register(
            "dagsnap_standing_back",
            "1 while the root follows another configuration, started after this publisher, which therefore moves nothing",
            metrics.standing_back.clone(),
        );
        registry.register(
            "dagsnap_lock_wait_seconds",
            "Time waited for the root's lock before moving the link",
            metrics.lock_wait_seconds.clone(),
        );
        registry.register(
            "dagsnap_hook_runs",
            "Runs of the exec hook and the webhook by result: success, failure, timeout",
            metrics.hooks.clone(),
        );
        registry.register(
            "dagsnap_check",
            "Runs of --check-command by result: accepted, rejected, timeout, abandoned",
            metrics.checks.clone(),
        );
        registry.register(
            "dagsnap_versions",
            "Versions readers asked for (POST /versions/<commit>) by result: built, present, not_in_remote, rejected, failed",
            metrics.versions.clone(),
        );
        registry.register(
            "dagsnap_signature_refusals",
            "Commits refused by --verify-signatures, by reason: unsigned, unknown_key, bad_signature, expired, revoked, wrong_principal",
            metrics.signature_refusals.clone(),
        );
    }

    /// git-sync's names, with git-sync's meanings.
    fn register_git_sync(&self, registry: &mut Registry) {
        let metrics = self;
        registry.register(
            "git_sync_count",
            "How many git syncs completed, partitioned by state (success, error, noop), as git-sync counts them",
            metrics.git_sync_count.clone(),
        );
        registry.register(
            "git_sync_duration_seconds",
            "Durations of syncs by state, as git-sync reports them (a histogram here, a summary in git-sync: _sum and _count agree)",
            metrics.git_sync_duration.clone(),
        );
        registry.register(
            "git_fetch_count",
            "Fetches as git-sync counts its git fetch runs: a pack received, or the remote moved to a commit the cache holds",
            metrics.git_fetch_count.clone(),
        );
    }

    /// Every known series exists from the start, at zero, so that a rate() or an alert on
    /// failures sees a value before the first failure.
    fn start_at_zero(&self) {
        let metrics = self;
        for result in SYNC_RESULTS {
            let _ = metrics.syncs.get_or_create(&ResultLabel { result });
        }
        for status in ["success", "error", "noop"] {
            let _ = metrics
                .git_sync_count
                .get_or_create(&StatusLabel { status });
            let _ = metrics
                .git_sync_duration
                .get_or_create(&StatusLabel { status });
        }
    }

    /// Record one cycle.
    pub(crate) fn record_cycle(&self, report: &CycleReport) {
        self.syncs
            .get_or_create(&ResultLabel {
                result: report.result,
            })
            .inc();
        let phases = [
            ("fetch", report.fetch),
            ("build", report.build),
            ("publish", report.publish),
        ];
        for (phase, took) in phases {
            if let Some(took) = took {
                self.phase_seconds
                    .get_or_create(&PhaseLabel { phase })
                    .observe(took.as_secs_f64());
            }
        }
        if let Some(wait) = report.lock_wait {
            self.lock_wait_seconds.observe(wait.as_secs_f64());
        }
        if report.fetched {
            self.git_fetch_count.inc();
        }
        if let Some(built) = report.built {
            self.build_files.set(built.files as i64);
            self.build_bytes.set(built.bytes as i64);
            self.build_reused.set(built.reused as i64);
        }
        let status = StatusLabel {
            status: report.git_sync_status,
        };
        self.git_sync_count.get_or_create(&status).inc();
        self.git_sync_duration
            .get_or_create(&status)
            .observe(report.duration.as_secs_f64());
    }

    /// What the loop was started with: `--period` and `--keep`.
    pub(crate) fn set_configuration(&self, period: Duration, keep: usize) {
        self.period.set(period.as_secs_f64());
        self.keep.set(i64::try_from(keep).unwrap_or(i64::MAX));
    }

    /// What `/readyz` answers now.
    pub(crate) fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    /// The volume's size and free bytes, when they could be read.
    pub(crate) fn set_volume(&self, space: Option<crate::fsutil::Space>) {
        if let Some(space) = space {
            self.root_size
                .set(i64::try_from(space.size).unwrap_or(i64::MAX));
            self.root_available
                .set(i64::try_from(space.available).unwrap_or(i64::MAX));
        }
    }

    /// How each of several sources fares.
    pub(crate) fn set_sources(&self, sources: &[crate::daemon::publish::SourceHealth]) {
        for source in sources {
            let label = SourceLabel {
                source: source.name.clone(),
            };
            self.source_failures
                .get_or_create(&label)
                .set(source.consecutive_failures as i64);
            if let Some(at) = source.last_success {
                let seconds = at
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64());
                self.source_last_success.get_or_create(&label).set(seconds);
            }
        }
    }

    pub(crate) fn set_health(&self, last_success: Option<SystemTime>, consecutive_failures: u64) {
        if let Some(at) = last_success {
            let seconds = at
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            self.last_success.set(seconds);
        }
        self.consecutive_failures.set(consecutive_failures as i64);
    }

    /// What the root looks like after a cycle.
    /// What the root shows. `commit_time` (the live commit's date, from its manifest) is asked
    /// only when the live commit changed: an idle poll reads nothing more.
    pub(crate) fn set_root(
        &self,
        live: Option<&str>,
        commit_time: impl FnOnce() -> Option<i64>,
        retained: usize,
        pinned: bool,
    ) {
        let live = live.map(|c| CommitLabel {
            commit: c.to_string(),
        });
        if live
            .as_ref()
            .is_none_or(|l| self.live_commit.get(l).is_none())
        {
            self.live_commit.clear();
            if let Some(live) = &live {
                self.live_commit.get_or_create(live).set(1);
                self.live_commit_time.set(commit_time().unwrap_or(0));
            }
        }
        self.retained.set(retained as i64);
        self.pinned.set(i64::from(pinned));
    }

    pub(crate) fn set_lock_fault(&self, fault: bool) {
        self.lock_fault.set(i64::from(fault));
    }

    pub(crate) fn set_standing_back(&self, standing_back: bool) {
        self.standing_back.set(i64::from(standing_back));
    }

    /// `--check-command` is configured: its series start at zero.
    pub(crate) fn check_configured(&self) {
        for result in ["accepted", "rejected", "timeout", "abandoned"] {
            let _ = self.checks.get_or_create(&ResultLabel { result });
        }
    }

    /// The HTTP endpoints are on, so readers may ask for versions: their series start at zero.
    pub(crate) fn versions_served(&self) {
        for result in ["built", "present", "not_in_remote", "rejected", "failed"] {
            let _ = self.versions.get_or_create(&ResultLabel { result });
        }
    }

    /// `--verify-signatures` is on: its series start at zero.
    pub(crate) fn signatures_configured(&self) {
        for reason in crate::signatures::Reason::ALL {
            let reason = reason.label();
            let _ = self
                .signature_refusals
                .get_or_create(&ReasonLabel { reason });
        }
    }

    pub(crate) fn record_signature_refusal(&self, reason: &'static str) {
        self.signature_refusals
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// A version a reader asked for was served with `result`.
    pub(crate) fn record_version(&self, result: &'static str) {
        self.versions.get_or_create(&ResultLabel { result }).inc();
    }

    pub(crate) fn record_check(&self, result: &'static str) {
        self.checks.get_or_create(&ResultLabel { result }).inc();
    }

    /// A hook is configured: its series start at zero.
    pub(crate) fn hook_configured(&self, hook: &'static str) {
        for result in ["success", "failure", "timeout"] {
            let _ = self.hooks.get_or_create(&HookLabel { hook, result });
        }
    }

    pub(crate) fn record_hook(&self, hook: &'static str, result: &'static str) {
        self.hooks.get_or_create(&HookLabel { hook, result }).inc();
    }

    /// The Prometheus text format (version 0.0.4).
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_sync_dashboards_find_their_series() {
        let metrics = Metrics::new();
        metrics.record_cycle(&CycleReport {
            result: "published",
            git_sync_status: "success",
            duration: Duration::from_millis(120),
            fetch: Some(Duration::from_millis(20)),
            ..CycleReport::default()
        });
        metrics.set_root(Some("abc"), || None, 3, false);
        metrics.set_root(Some("def"), || None, 3, true);
        let text = metrics.encode();
        for needle in [
            "git_sync_count_total{status=\"success\"} 1",
            "git_sync_duration_seconds_count{status=\"success\"} 1",
            "dagsnap_syncs_total{result=\"published\"} 1",
            "dagsnap_live_commit_info{commit=\"def\"} 1",
            "dagsnap_pinned 1",
        ] {
            assert!(text.contains(needle), "{needle} in\n{text}");
        }
        assert!(!text.contains("commit=\"abc\""), "{text}");
    }
}
