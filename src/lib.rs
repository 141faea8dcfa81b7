//! dagsnap publishes a git repository to readers as atomic, immutable snapshots.
//!
//! A publisher fetches with gix into a private cache, writes the commit's tree into a new
//! read-only directory under `ROOT/.dagsnap/snapshots/`, makes it durable, and atomically
//! re-points the symlink `ROOT/current` at it. Readers (Airflow's `dags_folder`) only ever see
//! the link: a complete snapshot of one commit, never git state, never a half-written tree.
//!
//! Where to start reading:
//! - [`publish`]: one sync cycle, the order of its steps and why each is safe;
//! - [`store`]: the root's layout and everything written under it;
//! - [`link`]: the atomic symlink swap;
//! - [`snapshot`]: turning a tree into a sealed directory;
//! - [`gc`]: which snapshots are kept, and deleting the rest safely;
//! - [`source`]: the remote, the ref to follow, and the private cache;
//! - [`access`], [`diagnose`]: credentials, TLS and SSH settings, and errors that say what to do;
//! - [`daemon`]: the loop, its timeouts, backoff and signals;
//! - [`history`], [`verify`]: the operator's commands (list, log, rollback, pin, verify);
//! - [`cli`]: flags and environment variables.
//!
//! `docs/design.md` explains the design and its invariants in prose.

pub mod access;
pub mod cli;
pub mod daemon;
pub mod diagnose;
pub mod entries;
pub mod fsutil;
pub mod gc;
pub mod history;
pub mod link;
pub mod lock;
pub mod logging;
pub mod progress;
pub mod publish;
pub mod records;
pub mod redact;
pub mod snapshot;
pub mod source;
pub mod status;
pub mod store;
pub mod verify;
