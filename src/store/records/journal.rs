//! `journal.jsonl`: every publication, rollback, pin and unpin, one JSON object per line,
//! oldest first. Appended under the root's lock; trimmed to its newest lines when it grows.
//!
//! Read line by line from bytes: a torn last line (a crash mid-append), a line of garbage or an
//! invalid UTF-8 byte costs that line only.

use std::collections::HashMap;
use std::io::{self, Read as _, Seek, SeekFrom, Write};
use std::time::SystemTime;

use super::{Check, Publication};
use crate::commit::CommitId;
use crate::fsutil::{is_not_regular, Context, Dir, IoError};
use crate::store::StoreError;

/// Past this size, the journal is trimmed after an append.
const MAX_BYTES: u64 = 1 << 20;
/// What a trim keeps: the newest lines that fit in this many bytes (thousands of entries).
const KEEP_BYTES: usize = 512 << 10;
/// What is read of a journal: its last this many bytes. A journal dagsnap wrote is never
/// larger (it is trimmed at [`MAX_BYTES`]); one that is (a forged one, a file written to by
/// mistake) costs its older lines, never the reader's memory.
const READ_BYTES: u64 = 2 * MAX_BYTES;

pub(super) struct Read {
    pub entries: Vec<Publication>,
    /// Line numbers (1-based, in what was read) that could not be read.
    pub damaged: Vec<usize>,
    /// The file should be written anew: it was larger than what is read, or is no regular
    /// file at all.
    pub replace: bool,
}

pub(super) fn read(dir: &Dir, name: &str) -> Result<Read, StoreError> {
    let path = dir.join(name);
    let mut read = Read {
        entries: Vec::new(),
        damaged: Vec::new(),
        replace: false,
    };
    let mut file = match dir.open_read(name) {
        Ok(Some(file)) => file,
        Ok(None) => return Ok(read),
        Err(e) if is_not_regular(&e) => {
            super::warn_damaged(
                &path,
                "it is no regular file",
                "ignoring it; GC replaces it",
            );
            read.replace = true;
            return Ok(read);
        }
        Err(e) => return Err(e.into()),
    };
    let size = file.metadata().at("inspect", &path)?.len();
    let mut bytes = Vec::new();
    if size > READ_BYTES {
        read.replace = true;
        file.seek(SeekFrom::Start(size - READ_BYTES))
            .at("read journal", &path)?;
    }
    file.take(READ_BYTES)
        .read_to_end(&mut bytes)
        .at("read journal", &path)?;
    if read.replace {
        // The first line read is most likely cut.
        let first_end = bytes
            .iter()
            .position(|b| *b == b'\n')
            .map_or(bytes.len(), |n| n + 1);
        bytes.drain(..first_end);
    }
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
/// append tries again. Something else than a regular file where the journal goes is moved
/// aside and a new journal begun.
pub(super) fn append(dir: &Dir, name: &str, entry: &Publication) -> Result<(), StoreError> {
    let path = dir.join(name);
    let mut line = encode(entry, &path)?;
    line.push(b'\n');
    let mut file = match dir.open_append(name) {
        Err(e) if is_not_regular(&e) => {
            super::set_aside(dir, name);
            dir.open_append(name)?
        }
        other => other?,
    };
    file.write_all(&line).at("append to journal", &path)?;
    file.sync_data().at("fsync journal", &path)?;
    if file.metadata().map(|m| m.len()).unwrap_or(0) > MAX_BYTES {
        if let Err(e) = read(dir, name).and_then(|r| rewrite(dir, name, &r.entries)) {
            tracing::warn!(error = %e, "could not trim the journal; the next publication retries");
        }
    }
    Ok(())
}

/// Replace the journal with the newest of `entries` that fit in [`KEEP_BYTES`], atomically.
pub(super) fn rewrite(dir: &Dir, name: &str, entries: &[Publication]) -> Result<(), StoreError> {
    let path = dir.join(name);
    let mut lines = Vec::new();
    let mut size = 0;
    for entry in entries.iter().rev() {
        let mut line = encode(entry, &path)?;
        line.push(b'\n');
        size += line.len();
        if size > KEEP_BYTES {
            break;
        }
        lines.push(line);
    }
    lines.reverse();
    let bytes = lines.concat();
    match dir.write_atomically(name, &bytes) {
        Err(e) if matches!(e.errno(), Some(libc::EISDIR) | Some(libc::ENOTEMPTY)) => {
            super::set_aside(dir, name);
            Ok(dir.write_atomically(name, &bytes)?)
        }
        other => Ok(other?),
    }
}

fn encode(entry: &Publication, path: &std::path::Path) -> Result<Vec<u8>, StoreError> {
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
    pub published: HashMap<CommitId, SystemTime>,
    pub retired: HashMap<CommitId, SystemTime>,
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
    use std::fs;

    fn entry(n: u8) -> Publication {
        Publication {
            commit: CommitId::parse(&format!("{:040x}", n)).unwrap(),
            cause: Cause::Sync,
            observed_at: SystemTime::UNIX_EPOCH,
            answered_at: None,
            published_at: SystemTime::UNIX_EPOCH,
            host: "h".into(),
            pid: 1,
            repo: "r".into(),
            ref_name: "main".into(),
            moved_link: true,
            reason: None,
        }
    }

    const NAME: &str = "journal.jsonl";

    #[test]
    fn a_damaged_line_costs_that_line_only() {
        let dir = tempfile::tempdir().unwrap();
        let d = Dir::open_path(dir.path()).unwrap();
        let path = dir.path().join(NAME);
        append(&d, NAME, &entry(1)).unwrap();
        let mut file = fs::OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"commit\": \"\xff garbage\n{\"torn\":")
            .unwrap();
        file.write_all(b"\n").unwrap();
        append(&d, NAME, &entry(2)).unwrap();
        let read = read(&d, NAME).unwrap();
        assert_eq!(read.entries, vec![entry(1), entry(2)]);
        assert_eq!(read.damaged, vec![2, 3]);
    }

    #[test]
    fn a_journal_past_its_limit_is_trimmed_and_keeps_accepting_entries() {
        let dir = tempfile::tempdir().unwrap();
        let d = Dir::open_path(dir.path()).unwrap();
        let path = dir.path().join(NAME);
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
        append(&d, NAME, &entry(250)).unwrap();
        let size = fs::metadata(&path).unwrap().len();
        assert!(size <= KEEP_BYTES as u64, "trimmed to {size}");
        let read = read(&d, NAME).unwrap();
        assert_eq!(read.entries.last(), Some(&entry(250)));
        assert!(read.damaged.is_empty());
        append(&d, NAME, &entry(251)).unwrap();
        assert_eq!(
            super::read(&d, NAME).unwrap().entries.last(),
            Some(&entry(251))
        );
    }
}
