//! Checking, without reading content, that a snapshot still holds what its entry list says.

use std::collections::HashSet;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::mtime_ns;
use super::parallel::{deal_by_directory, in_parallel};
use crate::entries::{Entries, Entry, MODE_EXECUTABLE, MODE_FILE, MODE_SUBMODULE, MODE_SYMLINK};
use crate::fsutil;
use crate::text::escape_bytes;

/// Check, without reading any content, that `dir` still holds what `entries` describe: every
/// entry there with its type, read-only mode and size, every directory read-only, and nothing
/// else (a `__pycache__` written by a reader running as root, a file added by hand). Costs one
/// `lstat` per entry, made by `jobs` threads a directory each (on a network volume each is a
/// round trip). Returns a problem found.
pub(crate) fn quick_check(dir: &Path, entries: &Entries, jobs: usize) -> Result<(), String> {
    let mut expected: HashSet<&[u8]> = HashSet::new();
    for entry in &entries.0 {
        for (i, _) in entry.path.iter().enumerate().filter(|(_, b)| **b == b'/') {
            expected.insert(&entry.path[..i]);
        }
        expected.insert(&entry.path);
    }
    let parts = deal_by_directory(&entries.0, jobs.max(1));
    in_parallel(&parts, jobs, |part| {
        part.iter()
            .try_for_each(|&n| check_entry(dir, &entries.0[n]))
    })?;
    for found in walkdir::WalkDir::new(dir).min_depth(1).follow_links(false) {
        let found = found.map_err(|e| e.to_string())?;
        let relative = found
            .path()
            .strip_prefix(dir)
            .unwrap_or(found.path())
            .as_os_str()
            .as_bytes();
        if !expected.contains(relative) {
            return Err(format!("'{}' is not in the commit", escape_bytes(relative)));
        }
        if found.file_type().is_dir() {
            let mode = found
                .metadata()
                .map(|m| m.permissions().mode() & 0o7777)
                .map_err(|e| e.to_string())?;
            if mode != fsutil::read_only_mode(true, false) {
                return Err(format!(
                    "directory '{}' has mode {mode:o}",
                    escape_bytes(relative)
                ));
            }
        }
    }
    Ok(())
}

/// Whether `entry` is in `dir` as recorded (type, read-only mode, size); the problem if not.
pub(super) fn check_entry(dir: &Path, entry: &Entry) -> Result<(), String> {
    let shown = || escape_bytes(&entry.path);
    let meta = fs::symlink_metadata(dir.join(std::ffi::OsStr::from_bytes(&entry.path)))
        .map_err(|e| format!("'{}': {e}", shown()))?;
    let mode = meta.permissions().mode() & 0o7777;
    let problem = match entry.mode {
        MODE_SYMLINK if !meta.file_type().is_symlink() => Some("is not a symlink".into()),
        MODE_SYMLINK if meta.len() != entry.size => Some("has another target".into()),
        MODE_SUBMODULE if !meta.is_dir() => Some("is not a directory".into()),
        MODE_FILE | MODE_EXECUTABLE if !meta.is_file() => Some("is not a regular file".into()),
        MODE_FILE | MODE_EXECUTABLE if meta.len() != entry.size => {
            Some(format!("has {} bytes, not {}", meta.len(), entry.size))
        }
        MODE_FILE | MODE_EXECUTABLE
            if mode != fsutil::read_only_mode(false, entry.mode == MODE_EXECUTABLE) =>
        {
            Some(format!("has mode {mode:o}"))
        }
        MODE_FILE | MODE_EXECUTABLE
            if entry.mtime.is_some_and(|recorded| {
                use std::os::unix::fs::MetadataExt;
                recorded != mtime_ns(meta.mtime(), meta.mtime_nsec())
            }) =>
        {
            Some("was modified after it was written (its modification time changed)".into())
        }
        _ => None,
    };
    match problem {
        Some(problem) => Err(format!("'{}' {problem}", shown())),
        None => Ok(()),
    }
}
