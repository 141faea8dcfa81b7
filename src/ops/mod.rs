//! The operator's commands: what is live ([`status`]), what is retained and what happened
//! ([`history`]: list, log, rollback, pin, unpin), whether the files are intact ([`verify`]), and
//! removing snapshots or a whole root ([`remove`]).

pub mod caches;
pub mod history;
pub mod remove;
pub mod status;
pub mod verify;
