//! The operator commands' arguments: status, list, log, rollback, pin, unpin, recheck, verify,
//! gc, remove and caches. Each names a root ([`RootArgs`]).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::sync::{AccessArgs, RetentionArgs};
use super::values::{parse_bool, parse_duration, parse_positive_duration};
use super::RootArgs;

#[derive(Debug, Args)]
pub struct GcArgs {
    #[command(flatten)]
    pub root: RootArgs,

    #[command(flatten)]
    pub retention: RetentionArgs,

    /// How long to wait for a publisher holding the root's lock.
    #[arg(long, env = "DAGSNAP_LOCK_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub lock_timeout: Duration,
}

#[derive(Debug, Args)]
pub struct CachesArgs {
    /// Where the caches are. Default: where `sync` puts them without --cache-dir.
    #[arg(long)]
    pub base: Option<PathBuf>,

    /// Delete the caches (not in use) whose root no longer exists.
    #[arg(long)]
    pub prune: bool,

    /// Print JSON instead of text.
    #[arg(long, env = "DAGSNAP_JSON", value_parser = parse_bool)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RemoveArgs {
    #[command(flatten)]
    pub root: RootArgs,

    /// Snapshots to delete (full ids or prefixes); never the live or the pinned one.
    #[arg(required_unless_present = "all")]
    pub commits: Vec<String>,

    /// Delete everything dagsnap made in the root (the link, the store with every snapshot,
    /// its .airflowignore), leaving the root directory. Refused while a sync loop of the root
    /// runs. Readers lose their DAGs.
    #[arg(long, conflicts_with = "commits")]
    pub all: bool,

    /// How long to wait for a publisher holding the root's lock.
    #[arg(long, env = "DAGSNAP_LOCK_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub lock_timeout: Duration,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub root: RootArgs,

    /// Print JSON instead of a table.
    #[arg(long, env = "DAGSNAP_JSON", value_parser = parse_bool)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LogArgs {
    #[command(flatten)]
    pub root: RootArgs,

    /// Show at most this many entries, newest first; 0 shows them all.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,

    /// Print JSON instead of text.
    #[arg(long, env = "DAGSNAP_JSON", value_parser = parse_bool)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    #[command(flatten)]
    pub root: RootArgs,

    /// Commit to go back to (full id or unambiguous prefix); default: the one published before
    /// the current one.
    #[arg(conflicts_with = "steps")]
    pub commit: Option<String>,

    /// Go back this many publications instead.
    #[arg(long)]
    pub steps: Option<usize>,

    /// Why, for the journal (shown by `dagsnap log` and `status`).
    #[arg(long)]
    pub reason: Option<String>,

    /// Go to the commit even if --check-command rejected it.
    #[arg(long)]
    pub force: bool,

    /// How long to wait for a publisher holding the root's lock.
    #[arg(long, env = "DAGSNAP_LOCK_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub lock_timeout: Duration,
}

#[derive(Debug, Args)]
pub struct PinArgs {
    #[command(flatten)]
    pub root: RootArgs,

    /// Commit to pin (full id or unambiguous prefix of a retained snapshot); default: the
    /// current one. A commit that is not live is made live first.
    pub commit: Option<String>,

    /// Why, for the journal.
    #[arg(long)]
    pub reason: Option<String>,

    /// Pin the commit even if --check-command rejected it.
    #[arg(long)]
    pub force: bool,

    /// How long to wait for a publisher holding the root's lock.
    #[arg(long, env = "DAGSNAP_LOCK_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub lock_timeout: Duration,
}

#[derive(Debug, Args)]
pub struct RecheckArgs {
    #[command(flatten)]
    pub root: RootArgs,

    /// The commit to check again (full id or unambiguous prefix); default: the one rejected
    /// last.
    pub commit: Option<String>,

    /// Why, for the journal.
    #[arg(long)]
    pub reason: Option<String>,

    /// How long to wait for a publisher holding the root's lock.
    #[arg(long, env = "DAGSNAP_LOCK_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub lock_timeout: Duration,
}

#[derive(Debug, Args)]
pub struct UnpinArgs {
    #[command(flatten)]
    pub root: RootArgs,

    /// Why, for the journal.
    #[arg(long)]
    pub reason: Option<String>,

    /// How long to wait for a publisher holding the root's lock.
    #[arg(long, env = "DAGSNAP_LOCK_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub lock_timeout: Duration,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub root: RootArgs,

    /// Snapshot to verify (full id or prefix); default: the current one.
    pub commit: Option<String>,

    /// A publisher's cache: verify against the commit's tree as git has it, instead of the
    /// entries recorded when the snapshot was built (and, with --repair, rebuild from it).
    #[arg(long, env = "DAGSNAP_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,

    /// If the snapshot is damaged, rebuild it (from --cache-dir if it has the commit, else
    /// fetched from the repository) and swap the link to the rebuilt copy atomically.
    #[arg(long)]
    pub repair: bool,

    /// With --repair: the repository to fetch the commit from. Default: the one the root
    /// follows. Credentials as for `sync` (--password-file, DAGSNAP_PASSWORD, --ssh-key-file…).
    #[arg(long, env = "DAGSNAP_REPO")]
    pub repo: Option<String>,

    #[command(flatten, next_help_heading = "Credentials and trust (with --repair)")]
    pub access: AccessArgs,

    /// How long to wait for a publisher holding the root's lock (with --repair).
    #[arg(long, env = "DAGSNAP_LOCK_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub lock_timeout: Duration,

    /// Print JSON instead of text.
    #[arg(long, env = "DAGSNAP_JSON", value_parser = parse_bool)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub root: RootArgs,

    /// Exit 1 unless a running publisher reached the remote and found the link right within
    /// this long (without one: unless the snapshot was published within it).
    #[arg(long, env = "DAGSNAP_MAX_AGE", value_parser = parse_positive_duration)]
    pub max_age: Option<Duration>,

    /// Print JSON instead of text.
    #[arg(long, env = "DAGSNAP_JSON", value_parser = parse_bool)]
    pub json: bool,
}
