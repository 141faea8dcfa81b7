//! `.dagsnap/verdicts/<commit>.<fingerprint>.json`: what `--check-command` said of a commit,
//! or what `--verify-signatures` found (the fingerprint then names the mode and the key set:
//! `signatures-<mode>-<digest>`, so a change of keys verifies again).
//!
//! A commit is checked once per check command (the fingerprint names the command): the
//! verdict is shared by every publisher of the root and survives restarts, so a rejected commit
//! is not checked again at every poll, nor once per pod. `<commit>.<fingerprint>.checking` is
//! locked by the publisher running the check; others wait for its verdict instead of running
//! the check too. `dagsnap recheck` forgets verdicts.
//!
//! Verdicts are input like any record: one that does not parse, or names another commit or
//! command than its file name, is ignored (the commit is checked again) and removed by GC.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::claims::lock_file;
use super::{read_json, sub_dir, write_json, Check, Read};
use crate::commit::CommitId;
use crate::fsutil::lock::{FileLock, LockError};
use crate::fsutil::Dir;
use crate::store::{Store, StoreError};

const DIR: &str = "verdicts";
/// Present while the root's publishers run with `--verify-signatures`: operator commands then
/// move the link only to verified commits (unless forced).
const SIGNATURES_REQUIRED: &str = "signatures.json";

#[derive(Debug, Serialize, Deserialize)]
struct Required {
    mode: String,
}

impl Check for Required {}

/// Say in the root that publishers require signatures (`Some(mode)`), or no longer.
pub(in crate::store) fn require_signatures(
    store: &Store,
    mode: Option<&str>,
) -> Result<(), StoreError> {
    match mode {
        Some(mode) => write_json(
            &store.create()?,
            SIGNATURES_REQUIRED,
            &Required { mode: mode.into() },
        ),
        None => {
            if let Some(dir) = store.open()? {
                if dir.kind(SIGNATURES_REQUIRED)?.is_some() {
                    tracing::info!("this publisher runs without --verify-signatures: operator commands no longer require verified commits in this root");
                    dir.remove_file(SIGNATURES_REQUIRED)?;
                }
            }
            Ok(())
        }
    }
}

/// The mode the root's publishers require, if they do (a damaged record counts as required:
/// refusing is the safe side).
pub(in crate::store) fn signatures_required(store: &Store) -> Option<String> {
    let dir = store.open().ok()??;
    match read_json::<Required>(&dir, SIGNATURES_REQUIRED) {
        Ok(Read::Missing) => None,
        Ok(Read::Valid(required)) => Some(required.mode),
        _ => Some("unknown".into()),
    }
}

/// What the check said of one commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    pub commit: CommitId,
    /// Names the check command (see [`fingerprint`]).
    pub fingerprint: String,
    pub accepted: bool,
    /// The check's exit code (`None`: killed by a signal, timed out, or never started).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The signal that killed the check, when something other than dagsnap killed it (the
    /// kernel's OOM killer, say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    #[serde(default)]
    pub timed_out: bool,
    /// Why the check could not be started (a command that does not exist, say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_started: Option<String>,
    pub duration_ms: u64,
    /// What the check printed (stdout and stderr together; its start and end, at most 64 KiB),
    /// as it printed it: escape it before showing it ([`Verdict::excerpt`]).
    #[serde(default)]
    pub output: String,
    /// How many bytes of output were dropped between the kept start and end.
    #[serde(default)]
    pub output_dropped: u64,
    #[serde(with = "super::rfc3339")]
    pub checked_at: SystemTime,
    pub host: String,
    pub pid: u32,
    /// Set for a verdict of `--verify-signatures` rather than of the check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<Box<SignatureVerdict>>,
}

/// What the signature verification found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignatureVerdict {
    /// `verified`, or why not: `unsigned`, `unknown_key`, `bad_signature`, `expired`,
    /// `revoked`, `wrong_principal`.
    pub reason: String,
    /// The signing key's fingerprint, when the signature names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Who the trusted keys say signed (an allowed-signers principal, an OpenPGP user id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
}

/// Its commit is checked as it is read ([`CommitId`]); nothing else can be inconsistent.
impl Check for Verdict {}

impl Verdict {
    /// What reached it: `--check-command` or `--verify-signatures`.
    pub fn by(&self) -> &'static str {
        if self.signature.is_some() {
            "--verify-signatures"
        } else {
            "--check-command"
        }
    }

    /// Why it was rejected, in a few words: "exit status 1", "timed out after 2m".
    pub fn why(&self) -> String {
        if let Some(signature) = &self.signature {
            let key = signature
                .key
                .as_deref()
                .map(|k| format!(" (key {k})"))
                .unwrap_or_default();
            return format!(
                "signature refused: {}{key}",
                signature.reason.replace('_', " ")
            );
        }
        if let Some(reason) = &self.not_started {
            return crate::text::escape(reason).into_owned();
        }
        match (self.timed_out, self.exit_code, self.signal) {
            (true, _, _) => format!(
                "timed out after {}",
                humantime::format_duration(std::time::Duration::from_secs(self.duration_ms / 1000))
            ),
            // A shell reports a child killed by signal N as 128 + N: say what that usually
            // means (137: SIGKILL, the OOM killer's), without claiming it.
            (false, Some(code @ 129..=192), _) => {
                match nix::sys::signal::Signal::try_from(code - 128) {
                    Ok(name) => {
                        format!("exit status {code}, as a shell reports a process killed by {name}")
                    }
                    Err(_) => format!("exit status {code}"),
                }
            }
            (false, Some(code), _) => format!("exit status {code}"),
            (false, None, Some(signal)) => match nix::sys::signal::Signal::try_from(signal) {
                Ok(name) => format!("killed by signal {signal} ({name})"),
                Err(_) => format!("killed by signal {signal}"),
            },
            (false, None, None) => "ended without an exit status".into(),
        }
    }

    /// The first `lines` lines of output that are not blank, control characters escaped, each
    /// cut at 300 characters: what status, logs and the error file show.
    pub fn excerpt(&self, lines: usize) -> Vec<String> {
        self.output
            .lines()
            .filter(|l| !l.trim().is_empty())
            .take(lines)
            .map(shown_line)
            .collect()
    }

    /// The line worth showing in one-line summaries (the journal, the error file): the last one
    /// that is not blank, because that is where failures end up (Python's exception after its
    /// traceback, a test runner's summary, the shell's complaint before it exits).
    pub fn headline(&self) -> String {
        self.output
            .lines()
            .rfind(|l| !l.trim().is_empty())
            .map(|l| shown_line(l.trim_start()))
            .unwrap_or_else(|| "(no output)".into())
    }
}

/// One line of a check's output as dagsnap shows it: control characters escaped, cut at 300
/// characters.
fn shown_line(line: &str) -> String {
    let escaped = crate::text::escape(line.trim_end());
    match escaped.char_indices().nth(300) {
        Some((cut, _)) => format!("{}...", &escaped[..cut]),
        None => escaped.into_owned(),
    }
}

/// A short, stable name for a check command: FNV-1a 64 of its text, in hex.
pub(crate) fn fingerprint(command: &str) -> String {
    let hash = command.bytes().fold(0xcbf29ce484222325u64, |hash, b| {
        (hash ^ u64::from(b)).wrapping_mul(0x100000001b3)
    });
    format!("{hash:016x}")
}

fn name(commit: &CommitId, fingerprint: &str) -> String {
    format!("{commit}.{fingerprint}.json")
}

/// The verdict on `commit` by the check named `fingerprint`, if one was recorded (and is valid).
pub(in crate::store) fn read(
    store: &Store,
    commit: &CommitId,
    fingerprint: &str,
) -> Option<Verdict> {
    let dir = sub_dir(store, DIR)?;
    match read_json::<Verdict>(&dir, name(commit, fingerprint)) {
        Ok(Read::Valid(v)) if v.commit == commit && v.fingerprint == fingerprint => Some(v),
        _ => None,
    }
}

pub(in crate::store) fn write(store: &Store, verdict: &Verdict) -> Result<(), StoreError> {
    let dir = store.ensure(DIR)?;
    write_json(&dir, &name(&verdict.commit, &verdict.fingerprint), verdict)
}

/// Every valid verdict in `dir`, newest first.
fn all_in(dir: &Dir) -> Vec<Verdict> {
    let mut found: Vec<Verdict> = dir
        .names()
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.to_string_lossy().ends_with(".json"))
        .filter_map(|n| match read_json::<Verdict>(dir, &n) {
            Ok(Read::Valid(v)) => {
                (n.to_string_lossy() == name(&v.commit, &v.fingerprint)).then_some(v)
            }
            _ => None,
        })
        .collect();
    found.sort_by_key(|v| std::cmp::Reverse(v.checked_at));
    found
}

/// Every valid verdict, newest first.
pub(in crate::store) fn all(store: &Store) -> Vec<Verdict> {
    sub_dir(store, DIR)
        .map(|dir| all_in(&dir))
        .unwrap_or_default()
}

/// Forget every verdict on `commit`; how many went.
pub(in crate::store) fn forget(store: &Store, commit: &CommitId) -> usize {
    let Some(dir) = sub_dir(store, DIR) else {
        return 0;
    };
    let prefix = format!("{commit}.");
    dir.names()
        .unwrap_or_default()
        .into_iter()
        .filter(|n| {
            let n = n.to_string_lossy();
            n.starts_with(&prefix) && n.ends_with(".json")
        })
        .filter(|n| dir.remove_file(n).is_ok())
        .count()
}

/// Verdicts kept at most (the newest), whatever else.
const KEPT: usize = 200;
/// How long a verdict on a commit that is no longer in the store is kept: a rejected commit
/// that is still the remote's tip must not be built and checked again at every poll.
const KEEP_UNRETAINED: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

/// Remove damaged verdicts, old verdicts on commits no longer in the store (`retained`), and
/// all but the newest [`KEPT`] (GC). Only names in `verdicts/` go, never through a symlink.
pub(in crate::store) fn remove_unneeded(store: &Store, retained: &dyn Fn(&CommitId) -> bool) {
    let Some(dir) = sub_dir(store, DIR) else {
        return;
    };
    let now = SystemTime::now();
    for (rank, verdict) in all_in(&dir).iter().enumerate() {
        let old = now
            .duration_since(verdict.checked_at)
            .is_ok_and(|age| age > KEEP_UNRETAINED);
        if rank >= KEPT || (old && !retained(&verdict.commit)) {
            let _ = dir.remove_file(name(&verdict.commit, &verdict.fingerprint));
        }
    }
    remove_damaged(&dir);
}

fn remove_damaged(dir: &Dir) {
    for entry in dir.names().unwrap_or_default() {
        let text = entry.to_string_lossy().into_owned();
        // A claim whose verdict is recorded has served its purpose: whoever claims it next
        // finds the verdict before running anything (see the check in `daemon::publish`).
        let unneeded = match text.strip_suffix(".checking") {
            Some(stem) => dir.kind(format!("{stem}.json")).is_ok_and(|k| k.is_some()),
            None => !matches!(read_json::<Verdict>(dir, &entry), Ok(Read::Valid(_))),
        };
        if unneeded {
            let _ = dir.remove_tree(&entry);
        }
    }
}

/// The right to run the check on `commit`: a lock only one publisher holds at a time.
#[derive(Debug)]
pub struct CheckClaim {
    /// `None` on a filesystem without locks: the check runs, maybe twice.
    _lock: Option<FileLock>,
}

/// Take the right to check `commit`, or `None` if another publisher is checking it now.
pub(in crate::store) fn claim(
    store: &Store,
    commit: &CommitId,
    fingerprint: &str,
) -> Result<Option<CheckClaim>, StoreError> {
    let dir = store.ensure(DIR)?;
    let lock = format!("{commit}.{fingerprint}.checking");
    match lock_file(&dir, &lock, FileLock::try_exclusive) {
        Ok(held) => Ok(held.map(|lock| CheckClaim { _lock: Some(lock) })),
        Err(LockError::Unsupported { .. }) => Ok(Some(CheckClaim { _lock: None })),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_stable_and_tell_commands_apart() {
        assert_eq!(fingerprint(""), "cbf29ce484222325");
        assert_ne!(fingerprint("check a"), fingerprint("check b"));
        assert_eq!(
            fingerprint("python check.py"),
            fingerprint("python check.py")
        );
    }

    fn verdict() -> Verdict {
        Verdict {
            commit: CommitId::parse(&"c".repeat(40)).unwrap(),
            fingerprint: fingerprint("check"),
            accepted: false,
            exit_code: None,
            signal: None,
            timed_out: false,
            not_started: None,
            duration_ms: 1500,
            output: String::new(),
            output_dropped: 0,
            checked_at: SystemTime::UNIX_EPOCH,
            signature: None,
            host: "host".into(),
            pid: 1,
        }
    }

    #[test]
    fn why_a_check_failed_is_said_in_an_operator_s_words() {
        let said = |change: &dyn Fn(&mut Verdict)| {
            let mut v = verdict();
            change(&mut v);
            v.why()
        };
        assert_eq!(said(&|v| v.exit_code = Some(1)), "exit status 1");
        assert_eq!(
            said(&|v| v.exit_code = Some(137)),
            "exit status 137, as a shell reports a process killed by SIGKILL"
        );
        assert_eq!(said(&|v| v.exit_code = Some(255)), "exit status 255");
        assert_eq!(
            said(&|v| v.signal = Some(9)),
            "killed by signal 9 (SIGKILL)"
        );
        assert_eq!(said(&|v| v.timed_out = true), "timed out after 1s");
        assert_eq!(
            said(&|v| v.not_started = Some("cannot run x: No such file\n".into())),
            "cannot run x: No such file\\n"
        );
    }

    #[test]
    fn the_headline_is_the_last_line_and_excerpts_are_escaped_and_cut() {
        let mut v = verdict();
        assert_eq!(v.headline(), "(no output)");
        v.output = format!(
            "Traceback:\n  \x1b[31mred\r\n{}\nValueError: bad\n\n",
            "y".repeat(400)
        );
        assert_eq!(v.headline(), "ValueError: bad");
        let excerpt = v.excerpt(3);
        assert_eq!(excerpt[0], "Traceback:");
        assert_eq!(excerpt[1], "  \\u{1b}[31mred");
        assert_eq!(excerpt[2].chars().count(), 303);
        assert!(excerpt[2].ends_with("y..."));
    }
}
