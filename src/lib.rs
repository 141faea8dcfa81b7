//! dagsnap publishes a git repository to readers as atomic, immutable snapshots.
//!
//! A publisher fetches with gix into a private cache, writes the commit's tree into a new
//! read-only directory under `ROOT/.dagsnap/snapshots/`, makes it durable, and atomically
//! re-points the symlink `ROOT/current` at it. Readers (Airflow's `dags_folder`) only ever see
//! the link: a complete snapshot of one commit, never git state, never a half-written tree.
//!
//! The code is layered; each layer is a folder and knows only the ones below it:
//! - `git`: the remote, the ref to follow, the private cache, credentials and diagnostics;
//! - `signatures`: verifying signed commits and tags against trusted keys;
//! - `store`: the root readers see — layout, snapshots, the link, locks, records, retention;
//! - `daemon`: one sync cycle (`daemon::publish::Publisher::cycle`) and the loop around it;
//! - `ops`: the operator's commands (status, list, log, rollback, pin, verify);
//! - `cli`: dagsnap's flags and environment, how values read, and the git-sync personality;
//! - `logging`, `progress`, `fsutil`, `text`: log output, progress lines, and the filesystem
//!   rules everything shares, and how untrusted text is shown.
//!
//! The modules are private: what the binary and the tests use is the one `pub use` block below,
//! so the compiler reports anything else that nothing uses. `docs/design.md` explains the
//! design and its invariants in prose.

mod cli;
mod commit;
mod daemon;
mod entries;
mod fsutil;
mod git;
mod logging;
mod ops;
mod progress;
mod signatures;
mod store;
mod text;

pub use crate::{
    // The command line: dagsnap's own, and git-sync's translated into it.
    cli::{
        default_cache_base, gitsync, CachesArgs, Cli, Command, GcArgs, ListArgs, LogArgs,
        LogFormat, PinArgs, RecheckArgs, RemoveArgs, RollbackArgs, StatusArgs, SyncArgs, SyncPlan,
        UnpinArgs, VerifyArgs,
    },
    // The sync loop.
    commit::CommitId,
    daemon::{run, Exit},
    fsutil::{remove_tree, set_group_write},
    git::{access::provide_passwd_entry, Cache, Remote, Target},
    logging::init as init_logging,
    // The operator commands.
    ops::{caches, history, remove, status, verify},
    progress::Style,
    store::{gc, rfc3339, volume::Mount, Cause, Publication, Root, StoreError},
    text::escape,
};
