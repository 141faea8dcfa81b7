//! Operator stories, end to end: real git repositories, the real `dagsnap` binary, real
//! signals. One test binary keeps link time down on small CI machines.

mod airflow;
mod auth;
mod bad_input;
mod boundaries;
mod broken_locks;
mod cache;
mod chaos;
mod damaged_state;
mod docs;
mod gate;
mod git_sync;
mod incident;
mod lifecycle;
mod names;
mod publishing;
mod readers;
mod refs;
mod repair;
mod retention;
mod reuse;
mod seed_incident;
mod self_repair;
mod servers;
mod shapes;
mod shared_root;
mod sidecar;
mod status;
mod support;
mod transports;
mod untrusted;
