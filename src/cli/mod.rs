//! Command line and environment: every option `--foo-bar` also reads `DAGSNAP_FOO_BAR`;
//! a flag on the command line wins over the environment.
//!
//! Flags parse into plain arguments (clap's structs), which are then checked into a plan that
//! knows how to build the machinery (after ripgrep's low and high arguments):
//! - `mod.rs`: the command line ([`Cli`], [`Command`]) and the root every command names.
//! - `sync.rs`: `sync`'s arguments, grouped as its `--help` groups them.
//! - `operate.rs`: the operator commands' arguments (status, list, rollback, pin, gc, ...).
//! - `plan.rs`: `sync`'s arguments checked against each other into a [`SyncPlan`].
//! - `values.rs`: how values read (durations, booleans, signals, URLs), for both personalities.
//! - `gitsync/`: git-sync's flags and environment, translated into `sync`'s arguments.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub mod gitsync;
mod operate;
mod plan;
mod sources;
mod sync;
pub(crate) mod values;

pub use operate::{
    CachesArgs, GcArgs, ListArgs, LogArgs, PinArgs, RecheckArgs, RemoveArgs, RollbackArgs,
    StatusArgs, UnpinArgs, VerifyArgs,
};
pub use plan::SyncPlan;
pub(crate) use sync::Submodules;
pub use sync::{default_cache_base, SyncArgs};
pub(crate) use values::parse_signal;

#[derive(Debug, Parser)]
#[command(
    name = "dagsnap",
    version,
    about = "Publish a git repository to readers as atomic, immutable snapshots behind a symlink.",
    long_about = None,
)]
pub struct Cli {
    /// Log format: text for people, json for log collectors. auto: JSON for `sync` without a
    /// terminal (a container's log), text otherwise (operator commands always print text).
    #[arg(long, global = true, env = "DAGSNAP_LOG_FORMAT", value_enum, default_value_t = LogFormat::Auto, help_heading = "Logging (any command)")]
    pub log_format: LogFormat,

    /// Log level or filter (error, warn, info, debug, trace; or a tracing filter like "dagsnap=debug").
    #[arg(
        long,
        global = true,
        env = "DAGSNAP_LOG_LEVEL",
        default_value = "info",
        help_heading = "Logging (any command)"
    )]
    pub log_level: String,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Keep the link pointing at the latest commit of a ref (a loop; --one-time for init containers).
    Sync(Box<SyncArgs>),
    /// Show what is live under a root.
    Status(StatusArgs),
    /// List retained snapshots, newest first, with what is current and pinned.
    List(ListArgs),
    /// Show the publication journal (syncs, rollbacks, pins), newest first.
    Log(LogArgs),
    /// Point the link at an earlier retained snapshot and pin it there.
    Rollback(RollbackArgs),
    /// Keep sync loops from moving the link (default: pin what is live now).
    Pin(PinArgs),
    /// Let sync loops move the link again; they publish the remote's latest commit next.
    Unpin(UnpinArgs),
    /// Forget the check's verdict on a commit (default: the last rejected), so sync loops check
    /// it again at their next poll.
    Recheck(RecheckArgs),
    /// Check that a snapshot on disk still holds exactly its commit.
    Verify(Box<VerifyArgs>),
    /// Delete snapshots the retention policy no longer keeps (sync does this after publishing).
    Gc(GcArgs),
    /// Delete retained snapshots by name, or (--all) everything dagsnap made in a root.
    Remove(RemoveArgs),
    /// List this machine's private caches; --prune deletes those whose root is gone.
    Caches(CachesArgs),
    /// Run as git-sync: read git-sync's flags and environment (also when started under the
    /// name `git-sync`). `dagsnap git-sync --help` lists them.
    #[command(name = "git-sync", disable_help_flag = true)]
    GitSync(GitSyncArgs),
}

/// git-sync's command line, read by [`gitsync::parse`].
#[derive(Debug, Args)]
pub struct GitSyncArgs {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
    pub args: Vec<std::ffi::OsString>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Auto,
    Text,
    Json,
}

/// Where `sync` publishes.
#[derive(Debug, Args)]
pub struct PublishRoot {
    /// Directory to publish into (created if missing); may be a shared volume.
    #[arg(long, env = "DAGSNAP_ROOT")]
    pub root: PathBuf,

    /// The link readers use (Airflow's dags_folder points at it): relative to the root, or
    /// absolute (inside the root, or outside it on the same volume, as git-sync allows).
    /// Recorded in the root, so operator commands find it. [default: current]
    #[arg(long, env = "DAGSNAP_LINK")]
    pub link: Option<PathBuf>,
}

impl PublishRoot {
    pub fn locate(&self) -> Result<crate::store::Root, crate::store::StoreError> {
        crate::store::Root::locate(&self.root, self.link.as_deref())
    }
}

/// The root an operator command looks at.
#[derive(Debug, Args)]
pub struct RootArgs {
    /// The root to look at: the directory sync loops publish into.
    #[arg(long, env = "DAGSNAP_ROOT")]
    pub root: PathBuf,

    /// The link's path inside the root. Default: the one the sync loops recorded (else
    /// `current`).
    #[arg(long, env = "DAGSNAP_LINK")]
    pub link: Option<PathBuf>,
}

impl RootArgs {
    /// The root; one that git-sync still serves (being taken over) is read as such.
    pub fn locate(&self) -> Result<crate::store::Root, crate::store::StoreError> {
        let root = crate::store::Root::locate(&self.root, self.link.as_deref())?;
        Ok(if crate::store::gitsync::present(&self.root) {
            root.adopting_git_sync(DEFAULT_ADOPT_AFTER)
        } else {
            root
        })
    }
}

/// `--adopt-after`'s default.
const DEFAULT_ADOPT_AFTER: Duration = Duration::from_secs(30);
