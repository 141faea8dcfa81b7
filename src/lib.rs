//! dagsnap publishes a git repository to readers as atomic, immutable snapshots.
//!
//! A publisher fetches with gix into a private cache, writes the commit's tree into a new
//! read-only directory under `ROOT/.dagsnap/snapshots/`, makes it durable, and atomically
//! re-points the symlink `ROOT/current` at it. Readers (Airflow's `dags_folder`) only ever see
//! the link: a complete snapshot of one commit, never git state, never a half-written tree.
//!
//! The code is layered; each layer is a folder and knows only the ones below it:
//! - [`git`]: the remote, the ref to follow, the private cache, credentials and diagnostics;
//! - [`store`]: the root readers see — layout, snapshots, the link, locks, records, retention;
//! - [`daemon`]: one sync cycle ([`daemon::publish::Publisher::cycle`]) and the loop around it;
//! - [`ops`]: the operator's commands (status, list, log, rollback, pin, verify);
//! - [`cli`]: dagsnap's flags and environment, how values read, and the git-sync personality;
//! - [`logging`], [`progress`], [`fsutil`]: log output, progress lines, and the filesystem
//!   rules everything shares.
//!
//! `docs/design.md` explains the design and its invariants in prose.

pub mod cli;
pub mod daemon;
pub mod entries;
pub mod fsutil;
pub mod git;
pub mod logging;
pub mod ops;
pub mod progress;
pub mod store;
pub mod text;
