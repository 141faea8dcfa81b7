//! `journal.jsonl`: every publication, rollback, pin and unpin, one JSON object per line,
//! oldest first. Appended under the root's lock; trimmed to its newest lines when it grows.
//!
//! Read line by line from bytes: a torn last line (a crash mid-append), a line of garbage or an
//! invalid UTF-8 byte costs that line only.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::SystemTime;

use super::{Check, Publication};
use crate::fsutil::{self, Context, IoError};
use crate::store::StoreError;

/// Past this size, the journal is trimmed after an append.
const MAX_BYTES: u64 = 1 << 20;
/// What a trim keeps: the newest lines that fit in this many bytes (thousands of entries).
const KEEP_BYTES: usize = 512 << 10;

pub(super) struct Read {
    pub entries: Vec<Publication>,
    /// Line numbers (1-based) that could not be read.
    pub damaged: Vec<usize>,
}

pub(super) fn read(path: &Path) -> Result<Read, StoreError> {
    let bytes = match fs::read(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        other => other.at("read journal", path)?,
    };
    let mut read = Read {
        entries: Vec::new(),
        damaged: Vec::new(),
    };
    for (n, line) in bytes.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<Publication>(line) {
            Ok(entry) if entry.check().is_ok() => read.entries.push(entry),
            _ => read.damaged.push(n + 1),
        }
    }
    Ok(read)
}

/// Append `entry` and make it durable. A journal past [`MAX_BYTES`] is then trimmed to its
/// newest readable lines; a trim that fails is only logged: the entry is recorded, and the next
/// append tries again.
pub(super) fn append(path: &Path, entry: &Publication) -> Result<(), StoreError> {
    let mut line = encode(entry, path)?;
    line.push(b'\n');
    let mut file = fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(crate::fsutil::file_mode())
        .open(path)
        .at("open journal", path)?;
    file.write_all(&line).at("append to journal", path)?;
    file.sync_data().at("fsync journal", path)?;
    if file.metadata().map(|m| m.len()).unwrap_or(0) > MAX_BYTES {
        if let Err(e) = read(path).and_then(|r| rewrite(path, &r.entries)) {
            tracing::warn!(error = %e, "could not trim the journal; the next publication retries");
        }
    }
    Ok(())
}

/// Replace the journal with the newest of `entries` that fit in [`KEEP_BYTES`], atomically.
pub(super) fn rewrite(path: &Path, entries: &[Publication]) -> Result<(), StoreError> {
    let mut lines = Vec::new();
    let mut size = 0;
    for entry in entries.iter().rev() {
        let mut line = encode(entry, path)?;
        line.push(b'\n');
        size += line.len();
        if size > KEEP_BYTES {
            break;
        }
        lines.push(line);
    }
    lines.reverse();
    Ok(fsutil::write_atomically(path, &lines.concat())?)
}

fn encode(entry: &Publication, path: &Path) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(entry).map_err(|e| {
        IoError::new(
            "encode an entry of",
            path,
            io::Error::new(io::ErrorKind::InvalidData, e),
        )
        .into()
    })
}

/// When commits were last linked and last unlinked. A commit that is linked but not retired is
/// the one the journal says is live.
#[derive(Debug, Default, Clone)]
pub struct LinkHistory {
    pub published: HashMap<String, SystemTime>,
    pub retired: HashMap<String, SystemTime>,
}

impl LinkHistory {
    pub(super) fn from_journal(journal: &[Publication]) -> LinkHistory {
        let mut history = LinkHistory::default();
        let moves: Vec<&Publication> = journal.iter().filter(|e| e.moved_link).collect();
        for (i, entry) in moves.iter().enumerate() {
            history
                .published
                .insert(entry.commit.clone(), entry.published_at);
            // The next move retires this commit; a later publication of it un-retires it.
            match moves.get(i + 1) {
                Some(next) => history
                    .retired
                    .insert(entry.commit.clone(), next.published_at),
                None => history.retired.remove(&entry.commit),
            };
        }
        history
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::records::Cause;

    fn entry(n: u8) -> Publication {
        Publication {
            commit: format!("{:040x}", n),
            cause: Cause::Sync,
            observed_at: SystemTime::UNIX_EPOCH,
            published_at: SystemTime::UNIX_EPOCH,
            host: "h".into(),
            pid: 1,
            repo: "r".into(),
            ref_name: "main".into(),
            moved_link: true,
            reason: None,
        }
    }

    #[test]
    fn a_damaged_line_costs_that_line_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.jsonl");
        append(&path, &entry(1)).unwrap();
        let mut file = fs::OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"commit\": \"\xff garbage\n{\"torn\":")
            .unwrap();
        file.write_all(b"\n").unwrap();
        append(&path, &entry(2)).unwrap();
        let read = read(&path).unwrap();
        assert_eq!(read.entries, vec![entry(1), entry(2)]);
        assert_eq!(read.damaged, vec![2, 3]);
    }

    #[test]
    fn a_journal_past_its_limit_is_trimmed_and_keeps_accepting_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.jsonl");
        // Over the limit already, with an invalid byte in the middle.
        let mut big = Vec::new();
        for n in 0..6000u32 {
            big.extend_from_slice(&serde_json::to_vec(&entry((n % 200) as u8)).unwrap());
            big.push(b'\n');
            if n == 2000 {
                big.extend_from_slice(b"\xff\xfe\n");
            }
        }
        fs::write(&path, &big).unwrap();
        assert!(fs::metadata(&path).unwrap().len() > MAX_BYTES);
        append(&path, &entry(250)).unwrap();
        let size = fs::metadata(&path).unwrap().len();
        assert!(size <= KEEP_BYTES as u64, "trimmed to {size}");
        let read = read(&path).unwrap();
        assert_eq!(read.entries.last(), Some(&entry(250)));
        assert!(read.damaged.is_empty());
        append(&path, &entry(251)).unwrap();
        assert_eq!(
            super::read(&path).unwrap().entries.last(),
            Some(&entry(251))
        );
    }
}
