//! `dagsnap status`: what readers see right now, from the root alone.
//!
//! Works from any pod that mounts the root, read-only mounts included: it reads the link, the
//! snapshot's manifest and the publication record, and writes nothing.

use std::time::SystemTime;

use serde::Serialize;

use crate::commit::CommitId;
use crate::store::records::SeenPublisher;
use crate::store::{rfc3339, Pin, Root, StoreError};

/// The live publication, as shown to operators.
#[derive(Debug, Serialize)]
pub struct Status {
    pub root: String,
    pub link: String,
    /// False when nothing has been published yet.
    pub published: bool,
    /// False when the link points at a snapshot that no longer exists.
    pub complete: bool,
    /// Where a reader opening the link arrives, when that is not the snapshot it names (a
    /// directory on the way to the link was replaced by a symlink to elsewhere).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolves_elsewhere: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit: Option<CommitId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit_date: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub published_at: Option<String>,
    /// Seconds since publication.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub age_seconds: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub published_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    /// The repository and ref the sync loops of this root follow (as configured).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    pub ref_name: Option<String>,
    /// The full ref that `ref` resolved to at the latest sync, when it says more
    /// (`refs/heads/main` for `HEAD` or `main`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolved_ref: Option<String>,
    /// Snapshots in the store (shown when the link is missing: they can be linked again).
    pub retained_snapshots: usize,
    /// How many of them the check rejected (`rollback` does not take those without --force).
    #[serde(skip)]
    pub rejected_snapshots: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Present while an operator pins the link: sync loops leave it alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pinned: Option<Pin>,
    /// Every publisher of the root that left a record: running ones, and recently stopped ones.
    pub publishers: Vec<SeenPublisher>,
    /// Seconds since a running publisher last reached the remote and found the link right
    /// (or, without one, since the snapshot was published).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confirmed_seconds_ago: Option<u64>,
    /// While readers are still served git-sync's worktree (a root being taken over from
    /// git-sync): its commit, and how long ago git-sync last wrote the root.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub git_sync: Option<GitSyncView>,
    /// What `--check-command` said of the live commit, when it checked it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check: Option<CheckView>,
    /// What of the commit the live snapshot holds when not all of it (`subdir=dags`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub select: String,
    /// The live snapshot's submodules: path, commit, URL.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub submodules: Vec<crate::store::ModuleRecord>,
    /// For a snapshot of several sources, each one's commit.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<crate::store::SourceCommit>,
    /// The newest commit the check rejected, when its verdict is the newest one: the remote has
    /// moved on to a commit that readers do not get.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected: Option<RejectedView>,
}

#[derive(Debug, Serialize)]
pub struct RejectedView {
    pub commit: CommitId,
    pub checked_at: String,
    pub checked_by: String,
    /// "exit status 1", "timed out after 2m", ...
    pub why: String,
    pub duration_ms: u64,
    /// The first lines of what the check printed, control characters escaped.
    pub output: Vec<String>,
}

/// The check's verdict on the live commit.
#[derive(Debug, Serialize)]
pub struct CheckView {
    pub accepted: bool,
    /// Why it was rejected, when it was (the commit is live because an operator forced it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    pub duration_ms: u64,
    pub checked_at: String,
}

impl CheckView {
    fn render(&self) -> String {
        let took = humantime::format_duration(std::time::Duration::from_millis(
            (self.duration_ms + 50) / 100 * 100,
        ));
        match &self.why {
            None => format!("accepted in {took} at {}", self.checked_at),
            Some(why) => format!(
                "REJECTED ({why}) at {}, published by force",
                self.checked_at
            ),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct GitSyncView {
    pub commit: CommitId,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_write_seconds_ago: Option<u64>,
}

impl Status {
    /// True when readers are served a complete snapshot.
    pub fn is_healthy(&self) -> bool {
        (self.published && self.complete && self.resolves_elsewhere.is_none())
            || self.git_sync.is_some()
    }
}

pub fn gather(root: &Root) -> Result<Status, StoreError> {
    root.require_initialized()?;
    let current = root.current_as_readers_find_it()?;
    let retained = root.snapshot_commits()?;
    let mut status = Status {
        root: root.path().display().to_string(),
        link: root.link_path().display().to_string(),
        published: current.is_some(),
        complete: current.as_ref().is_some_and(|c| c.complete),
        resolves_elsewhere: None,
        commit: None,
        subject: None,
        author: None,
        commit_date: None,
        published_at: None,
        age_seconds: None,
        published_by: None,
        cause: None,
        repo: None,
        ref_name: None,
        resolved_ref: None,
        retained_snapshots: retained.len(),
        rejected_snapshots: retained
            .iter()
            .filter(|commit| root.records().rejection(commit).is_some())
            .count(),
        files: None,
        bytes: None,
        pinned: root.pinned()?,
        publishers: root.records().publishers(),
        confirmed_seconds_ago: None,
        git_sync: None,
        check: None,
        rejected: None,
        select: String::new(),
        submodules: Vec::new(),
        sources: Vec::new(),
    };
    let verdicts = root.records().verdicts();
    let live = current.as_ref().map(|c| c.commit.as_str());
    status.rejected = verdicts
        .first()
        .filter(|v| !v.accepted && Some(v.commit.as_str()) != live)
        .map(|v| RejectedView {
            commit: v.commit.clone(),
            checked_at: rfc3339::format(v.checked_at),
            checked_by: format!("{} pid {}", v.host, v.pid),
            why: v.why(),
            duration_ms: v.duration_ms,
            output: v.excerpt(STATUS_OUTPUT_LINES),
        });
    status.check = live
        .and_then(|live| verdicts.iter().find(|v| v.commit == live))
        .map(|v| CheckView {
            accepted: v.accepted,
            why: (!v.accepted).then(|| v.why()),
            duration_ms: v.duration_ms,
            checked_at: rfc3339::format(v.checked_at),
        });
    if current.is_none() {
        status.git_sync = root
            .git_sync_live()
            .filter(|g| g.dir.is_dir())
            .map(|g| GitSyncView {
                last_write_seconds_ago: g
                    .last_write
                    .and_then(|at| SystemTime::now().duration_since(at).ok())
                    .map(|d| d.as_secs()),
                commit: g.commit,
            });
    }
    let journal = root.records().journal()?;
    if let Some(source) = root.records().source()? {
        let resolved = journal
            .iter()
            .rev()
            .find(|e| e.cause == crate::store::Cause::Sync)
            .map(|e| e.ref_name.clone())
            .filter(|r| *r != source.ref_name);
        status.repo = Some(source.repo);
        status.ref_name = Some(source.ref_name);
        status.resolved_ref = resolved;
    }
    let Some(current) = current else {
        return Ok(status);
    };
    describe_live(root, current, &journal, &mut status)?;
    Ok(status)
}

/// What `status` says of the live snapshot: where readers arrive, what the manifest records,
/// when and why the link moved to it, and when a publisher last confirmed it.
fn describe_live(
    root: &Root,
    current: crate::store::Current,
    journal: &[crate::store::Publication],
    status: &mut Status,
) -> Result<(), StoreError> {
    if current.complete {
        // What readers get is where the link resolves, not what it says.
        let snapshot = std::fs::canonicalize(&current.dir);
        match std::fs::canonicalize(root.link_path()) {
            Ok(resolved) if snapshot.as_ref().is_ok_and(|s| *s == resolved) => {}
            Ok(resolved) => status.resolves_elsewhere = Some(resolved.display().to_string()),
            Err(e) => status.resolves_elsewhere = Some(format!("nowhere ({e})")),
        }
    }
    if let Some(manifest) = root.manifest(&current.commit)? {
        status.subject = Some(manifest.subject);
        status.author = Some(manifest.author);
        status.commit_date = Some(rfc3339::format(
            SystemTime::UNIX_EPOCH
                + std::time::Duration::from_secs(manifest.commit_time.max(0) as u64),
        ));
        status.select = manifest.select.clone();
        status.submodules = manifest.modules.clone();
        status.sources = manifest.sources.clone();
        status.files = Some(manifest.files);
        status.bytes = Some(manifest.bytes);
        status.published_at = Some(rfc3339::format(manifest.materialized_at));
    }
    // When and why the link last moved to this commit (a crash between writing the record and
    // moving the link can leave a newer record for another commit: the link is the truth).
    let moved = journal
        .iter()
        .rev()
        .find(|e| e.moved_link && e.commit == current.commit);
    if let Some(moved) = moved {
        status.published_at = Some(rfc3339::format(moved.published_at));
        status.age_seconds = SystemTime::now()
            .duration_since(moved.published_at)
            .ok()
            .map(|d| d.as_secs());
        status.published_by = Some(format!("{} pid {}", moved.host, moved.pid));
        status.cause = Some(moved.cause.to_string());
    }
    let confirmed = status
        .publishers
        .iter()
        .filter(|p| p.running)
        .filter_map(|p| p.record.last_success_at)
        .max();
    status.confirmed_seconds_ago = confirmed
        .or(moved.map(|e| e.published_at))
        .and_then(|at| SystemTime::now().duration_since(at).ok())
        .map(|d| d.as_secs());
    status.commit = Some(current.commit);
    Ok(())
}

/// The newest rejection, if it is news: what the check said, for the text of `status`.
fn render_rejected(status: &Status) -> String {
    let Some(rejected) = &status.rejected else {
        return String::new();
    };
    let keeps = if status.published {
        "readers keep the commit above"
    } else {
        "nothing is live"
    };
    let mut out = format!(
        "{:<13}{} by the check at {} on {} ({}); {keeps}. `dagsnap recheck` checks it again\n",
        "REJECTED:",
        rejected.commit,
        rejected.checked_at,
        crate::text::escape(&rejected.checked_by),
        rejected.why
    );
    for output in &rejected.output {
        // Already escaped.
        out.push_str(&format!("{:<13}| {output}\n", ""));
    }
    out
}

/// How many lines of a rejected commit's check output `status` shows.
const STATUS_OUTPUT_LINES: usize = 10;

/// Whether the live snapshot was confirmed within `max_age` (`status --max-age`).
pub fn is_fresh(status: &Status, max_age: std::time::Duration) -> bool {
    status
        .confirmed_seconds_ago
        .is_some_and(|seconds| seconds <= max_age.as_secs())
}

pub fn render_text(status: &Status) -> String {
    if let Some(text) = render_unpublished(status) {
        return text;
    }
    let mut out = String::new();
    let mut line = |label: &str, value: Option<&str>| {
        if let Some(value) = value {
            // Subjects, authors and reasons are chosen by others: printed inert.
            out.push_str(&format!("{label:<13}{}\n", crate::text::escape(value)));
        }
    };
    line("link:", Some(&status.link));
    line("commit:", status.commit.as_deref());
    if !status.complete {
        line(
            "WARNING:",
            Some("the snapshot behind the link is missing; a running sync republishes it"),
        );
    }
    if let Some(elsewhere) = &status.resolves_elsewhere {
        line(
            "WARNING:",
            Some(&format!(
                "readers opening the link arrive at {elsewhere}, not at the snapshot: a directory on the way to the link is a symlink; make it a real directory inside the root"
            )),
        );
    }
    line("subject:", status.subject.as_deref());
    line("author:", status.author.as_deref());
    line("commit date:", status.commit_date.as_deref());
    let published = status
        .published_at
        .as_ref()
        .map(|at| match status.age_seconds {
            Some(age) => format!("{at} ({} ago)", humantime::format_duration(seconds(age))),
            None => at.clone(),
        });
    line("published:", published.as_deref());
    line("by:", status.published_by.as_deref());
    line("cause:", status.cause.as_deref());
    line("follows:", status.repo.as_deref());
    let ref_line = status
        .ref_name
        .as_ref()
        .map(|r| match &status.resolved_ref {
            Some(resolved) => format!("{r} ({resolved})"),
            None => r.clone(),
        });
    line("ref:", ref_line.as_deref());
    if !status.select.is_empty() {
        line("publishes:", Some(&status.select));
    }
    for source in &status.sources {
        line("", Some(&super::history::source_line(source)));
    }
    for module in &status.submodules {
        line(
            "submodule:",
            Some(&format!(
                "{} at {} ({})",
                module.path, module.commit, module.url
            )),
        );
    }
    let size = status.files.zip(status.bytes).map(|(files, bytes)| {
        format!(
            "{files} file{}, {bytes} byte{}",
            if files == 1 { "" } else { "s" },
            if bytes == 1 { "" } else { "s" }
        )
    });
    line("size:", size.as_deref());
    for publisher in &status.publishers {
        line("publisher:", Some(&describe_publisher(publisher)));
    }
    line(
        "check:",
        status.check.as_ref().map(CheckView::render).as_deref(),
    );
    line(
        "PINNED:",
        status.pinned.as_ref().map(describe_pin).as_deref(),
    );
    out.push_str(&render_rejected(status));
    out
}

/// What `status` says when nothing of dagsnap's is live: the link is missing (with
/// snapshots to link), git-sync serves the root, or nothing was ever published.
fn render_unpublished(status: &Status) -> Option<String> {
    let linkable = status.retained_snapshots - status.rejected_snapshots;
    if !status.published && linkable > 0 {
        return Some(format!(
            "the link {} is missing, but {linkable} snapshot(s) are retained; a running sync restores it at its next poll, or `dagsnap rollback --root {}` links the newest of them now (and pins it)\n",
            status.link, status.root
        ));
    }
    if let Some(git_sync) = &status.git_sync {
        let ago = git_sync
            .last_write_seconds_ago
            .map(|s| format!("{} ago", humantime::format_duration(seconds(s))))
            .unwrap_or_else(|| "at an unknown time".into());
        return Some(format!(
            "served by git-sync: {} points at git-sync's worktree of {} (git-sync last wrote the root {ago}); a dagsnap sync with --adopt-git-sync takes the link over once git-sync has left the root alone for --adopt-after\n",
            status.link, git_sync.commit
        ));
    }
    if !status.published {
        let mut out = format!("nothing published yet under {}\n", status.root);
        out.push_str(&render_rejected(status));
        return Some(out);
    }
    None
}

/// One publisher's line: running or not, its last cycle and success, its failures, a lock
/// fault.
fn describe_publisher(publisher: &SeenPublisher) -> String {
    let record = &publisher.record;
    let ago = |at: SystemTime| {
        SystemTime::now()
            .duration_since(at)
            .map(|d| format!("{} ago", humantime::format_duration(seconds(d.as_secs()))))
            .unwrap_or_else(|_| "just now".into())
    };
    let mut text = format!(
        "{} pid {} ({}): last cycle {}, last success {}",
        record.host,
        record.pid,
        match (publisher.running, publisher.standing_back) {
            (true, false) => "running".to_string(),
            (true, true) => format!(
                "running, standing back: it follows {}@{}, the root another configuration",
                record.repo, record.ref_name
            ),
            (false, _) => "stopped".to_string(),
        },
        ago(record.last_cycle_at),
        record
            .last_success_at
            .map(ago)
            .unwrap_or_else(|| "never".into()),
    );
    if record.consecutive_failures > 0 {
        text.push_str(&format!(
            ", {} failure{} in a row: {}",
            record.consecutive_failures,
            if record.consecutive_failures == 1 {
                ""
            } else {
                "s"
            },
            record.last_error.as_deref().unwrap_or("?")
        ));
    }
    if let Some(fault) = &record.lock_fault {
        text.push_str(&format!("; LOCKS: {fault}, so it does not move the link"));
    }
    text
}

fn describe_pin(pin: &Pin) -> String {
    let reason = if pin.reason.is_empty() {
        String::new()
    } else {
        format!(": {}", pin.reason)
    };
    format!(
        "{} since {} by {}{reason}; sync loops will not move the link until `dagsnap unpin`",
        &pin.commit[..12.min(pin.commit.len())],
        rfc3339::format(pin.pinned_at),
        pin.pinned_by
    )
}

fn seconds(n: u64) -> std::time::Duration {
    std::time::Duration::from_secs(n)
}
