//! The long-running side: one sync cycle ([`publish`]) and the loop that schedules cycles,
//! bounds them and stops on signals ([`run`]).

pub mod publish;
mod run;

pub use run::{run, Exit, Opener, Schedule};
