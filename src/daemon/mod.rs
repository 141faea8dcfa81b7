//! The long-running side: one sync cycle ([`publish`]), the loop that schedules cycles, bounds
//! them and stops on signals ([`run`]), and what the loop shows the outside world while it runs:
//! its health ([`health`]), HTTP endpoints ([`http`]), Prometheus metrics ([`metrics`]), and the
//! hooks and files that follow a publish ([`hooks`]); the operator's check that may stop a
//! commit before the link moves ([`check`]); versions readers ask for, built without moving
//! the link ([`versions`]); and the watchdog that ends the process within its
//! bound after SIGTERM whatever a system call does ([`shutdown`]).

pub(crate) mod check;
pub(crate) mod health;
pub(crate) mod hooks;
pub(crate) mod http;
pub(crate) mod metrics;
pub(crate) mod publish;
mod run;
pub(crate) mod shutdown;
pub(crate) mod versions;

pub use run::{run, Exit};
pub(crate) use run::{Opener, Schedule, Surface};
