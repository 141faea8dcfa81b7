//! The git side: what to follow on the remote, how to reach it, and the private cache that gix
//! fetches into. Nothing in this layer knows about the published root.
//!
//! Three concepts, one type each (after cargo's git source):
//! - [`Target`]: what `--ref` names — the remote's HEAD, a branch or tag, or one commit.
//! - [`Remote`]: the repository URL, its redactor, the target and the fetch depth.
//! - [`Cache`]: a bare repository on local disk owned by exactly one publisher process.
//!
//! One file per concept:
//! - `remote.rs`: [`Remote`] and [`Target`].
//! - `cache.rs`: [`Cache`], its on-disk layout, its lock, and keeping it bounded.
//! - `fetch.rs`: one conversation with the remote (list refs, receive a pack only when new).
//! - `request.rs`: one fetch request (wants, haves, a filter), the way every pack comes in.
//! - `filtered.rs`: with a selection, the commit filtered, then what the selection reads by id.
//! - `index_pack/`: a received pack indexed without holding any object whole (`delta.rs`:
//!   git's delta format).
//! - `http.rs`: the HTTP client gix's conversations go through, kept for the cache's life.
//! - `listing.rs`: an idle poll over HTTP, the last ref listing asked again.
//! - `no_progress.rs`: fetch requests that ask the server for no progress messages.
//! - `tls.rs`: whom HTTPS trusts: the system's roots, the CA files, and a configured CA's own
//!   certificate presented by a server (as git accepts it).
//! - `access.rs`: credentials, TLS and SSH settings, and git configuration for the cache.
//! - `credentials.rs`: credentials asked for at each conversation (askpass, a GitHub App).
//! - `redact.rs`: secrets never printed. `diagnose.rs`: errors that say what to do.
//! - `tree.rs`: a commit's tree as a list of entries, with the path rules git applies on Linux.
//! - `select.rs`: `--subdir` and sparse patterns, the part of a commit that is published.
//! - `submodules.rs`: each submodule's commit fetched into a cache of its own and filled in.
//! - `gitmodules.rs`: what `.gitmodules` says: paths, URLs resolved, the server a URL names.
//! - `blobs.rs`: objects as a snapshot's content. `pages.rs`: pack pages handed back, so memory
//!   does not grow with the repository.
//!
//! The cache is never on the shared volume and never seen by readers; it holds the only git
//! state dagsnap has. Each cycle asks the remote for the target's commit (handshake + ls-refs)
//! and stops there if that commit is already in the cache, so an idle poll costs one round trip
//! and no writes; over HTTP, once a conversation has listed the refs, the next poll only asks
//! that listing again and has a conversation only if the answer differs. Only a new commit
//! causes a pack to be negotiated and received.

pub(crate) mod access;
mod blobs;
mod cache;
mod credentials;
mod delta;
pub(crate) mod diagnose;
mod fetch;
mod filtered;
mod gitmodules;
mod http;
mod index_pack;
mod listing;
mod no_progress;
pub(crate) mod pages;
pub(crate) mod redact;
mod remote;
mod request;
pub(crate) mod select;
pub(crate) mod submodules;
mod tls;
pub(crate) mod tree;

pub(crate) use blobs::RepoBlobs;
pub use cache::Cache;
pub(crate) use cache::{CacheRecord, CommitInfo, Observation};
pub(crate) use credentials::{AppKey, GitHubApp};
pub use remote::{Remote, Target};

use std::path::PathBuf;

use gix::ObjectId;

use crate::fsutil::lock::LockError;
use crate::fsutil::IoError;
use access::AccessError;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cache directory {} is in use by another dagsnap process{}; give each publisher its own --cache-dir", dir.display(), holder.as_deref().map(|h| format!(" ({h})")).unwrap_or_default())]
    CacheInUse {
        dir: PathBuf,
        holder: Option<String>,
    },
    #[error("cache directory {} is not private: {why}. Whoever can write it can change what dagsnap publishes; remove it (dagsnap re-creates it) or give --cache-dir a directory only this uid can write", dir.display())]
    CacheNotPrivate { dir: PathBuf, why: String },
    #[error("cannot lock cache directory {}: {source}", dir.display())]
    CacheLock {
        dir: PathBuf,
        #[source]
        source: LockError,
    },
    #[error(transparent)]
    CacheIo(#[from] IoError),
    #[error("cache repository {} is unusable: {cause}; delete the directory and dagsnap will re-create it", dir.display())]
    CacheRepo { dir: PathBuf, cause: String },
    #[error("cannot {during} {url}: {}", describe(during, url, cause))]
    Remote {
        during: &'static str,
        url: String,
        cause: String,
    },
    #[error(
        "ref '{wanted}' does not exist in {url}{}; check --ref{}",
        known_refs_suffix(known),
        short_commit_hint(wanted)
    )]
    RefNotFound {
        wanted: String,
        url: String,
        known: Vec<String>,
    },
    #[error("{url} has no commits yet (its HEAD is unborn); push a commit or set --ref to an existing branch")]
    EmptyRemote { url: String },
    #[error("{what} in {url} is a {kind}, not a commit; point --ref at a commit, branch or tag")]
    NotACommit {
        what: String,
        url: String,
        kind: String,
    },
    #[error("cannot read commit {commit} from the cache: {cause}")]
    Object { commit: ObjectId, cause: String },
    #[error("{url}: {source}")]
    Access {
        url: String,
        #[source]
        source: AccessError,
    },
    #[error("interrupted")]
    Cancelled,
}

/// The cause of a remote failure, led by what to do about it when it is recognized. Failing to
/// reach or list a remote is otherwise almost always the URL, the network or credentials.
fn describe(during: &str, url: &str, cause: &str) -> String {
    let mut cause = crate::git::diagnose::one_line(cause);
    // ssh's warnings run long; the first part says what happened.
    if cause.len() > 600 {
        let cut = (0..=600)
            .rev()
            .find(|i| cause.is_char_boundary(*i))
            .unwrap_or(0);
        cause.truncate(cut);
        cause.push_str(" …");
    }
    // Through a proxy, a connection that fails is the connection to the proxy.
    if let Some((variable, proxy)) = access::proxy_for(url) {
        if let Some(what) = crate::git::diagnose::explain_proxy_failure(&cause) {
            return format!(
                "{what} the proxy {proxy} (from {variable}); check that it runs and is reachable from here, or exempt the git host with NO_PROXY (details: {cause})"
            );
        }
    }
    match crate::git::diagnose::explain(&cause) {
        Some(d) => format!("{}; {} (details: {cause})", d.reason, d.fix),
        None if matches!(during, "connect to" | "list refs of") => {
            format!("{cause}; check the URL, that the server is reachable, and the credentials")
        }
        None => cause,
    }
}

/// A `--ref` of hex digits that names no ref is most likely an abbreviated commit id.
fn short_commit_hint(wanted: &str) -> String {
    let hex = wanted.len() >= 4 && wanted.bytes().all(|b| b.is_ascii_hexdigit());
    if hex {
        format!(". If '{wanted}' is a commit id, give all 40 hex digits (`git rev-parse {wanted}` prints them)")
    } else {
        String::new()
    }
}

fn known_refs_suffix(known: &[String]) -> String {
    if known.is_empty() {
        return String::new();
    }
    let shown: Vec<&str> = known.iter().take(10).map(String::as_str).collect();
    let more = if known.len() > shown.len() {
        ", ..."
    } else {
        ""
    };
    format!(" (it has: {}{more})", shown.join(", "))
}

impl SourceError {
    /// What the server said when it refused an object asked for by id (it does not have it, it
    /// is not reachable from its refs, or the protocol does not let it give objects by id);
    /// `None` for any other failure.
    pub(crate) fn object_refused(&self) -> Option<&'static str> {
        let SourceError::Remote { cause, .. } = self else {
            return None;
        };
        let lower = cause.to_lowercase();
        [
            "not our ref",
            "not a valid object",
            "no such remote ref",
            "couldn't find remote ref",
            "allow-tip-sha1-in-want",
        ]
        .into_iter()
        .find(|phrase| lower.contains(phrase))
    }

    /// True when the cache may be at fault, so that starting it over may help: damaged or
    /// missing objects, an unusable repository or directory, a pack that could not be
    /// received into it. Not a remote that cannot be reached or refuses us, nor a wrong setting.
    pub fn blames_cache(&self) -> bool {
        matches!(
            self,
            SourceError::Object { .. }
                | SourceError::CacheRepo { .. }
                | SourceError::CacheIo(_)
                | SourceError::NotACommit { .. }
                | SourceError::Remote {
                    during: "fetch from" | "find the fetched commit from",
                    ..
                }
        )
    }
}

/// `err` and its causes on one line, without repeating a cause its parent already quotes.
/// Open the repository at `dir` to read its objects, as operator commands do with a cache they
/// do not own: git's configuration of this host and user ignored, and packs kept mapped while
/// the handle lives ([`pages::keep_mapped`], which [`pages::release`] relies on).
pub(crate) fn open_for_reading(dir: &std::path::Path) -> gix::error::Result<gix::Repository> {
    gix::open::Options::isolated()
        .open(dir)
        .map(|repo| pages::keep_mapped(repo.to_thread_local()))
}

pub(crate) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !text.is_empty() && !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}
