//! The operator's commands: what is live ([`status`]), what is retained and what happened
//! ([`history`]: list, log, rollback, pin, unpin), and whether the files are intact ([`verify`]).

pub mod history;
pub mod status;
pub mod verify;
