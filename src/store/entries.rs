//! The list of what a snapshot holds, as git records it: one record per file, symlink or
//! submodule, with its mode, object id and size.
//!
//! It is written next to each snapshot (`manifests/<sha>.entries`) when the snapshot is built
//! and is what later builds compare against to reuse unchanged files, so reuse does not depend
//! on the private cache still holding the previous commit.
//!
//! Format: records `<mode in octal> <object id in hex> <size> <path>\0`, in git's path order.
//! Paths are bytes (git allows any byte but NUL in a path), hence the NUL terminator.

use std::collections::HashMap;

use gix::ObjectId;

/// Git's mode of a regular file.
pub const MODE_FILE: u32 = 0o100644;
/// Git's mode of an executable file.
pub const MODE_EXECUTABLE: u32 = 0o100755;
/// Git's mode of a symlink.
pub const MODE_SYMLINK: u32 = 0o120000;
/// Git's mode of a submodule (a commit id, checked out as an empty directory).
pub const MODE_SUBMODULE: u32 = 0o160000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub mode: u32,
    pub id: ObjectId,
    /// Bytes of content (for a symlink, of its target).
    pub size: u64,
    pub path: Vec<u8>,
}

impl Entry {
    pub fn is_regular_file(&self) -> bool {
        self.mode == MODE_FILE || self.mode == MODE_EXECUTABLE
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entries(pub Vec<Entry>);

impl Entries {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.0.len() * 80);
        for entry in &self.0 {
            out.extend_from_slice(
                format!("{:o} {} {} ", entry.mode, entry.id, entry.size).as_bytes(),
            );
            out.extend_from_slice(&entry.path);
            out.push(0);
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Entries, String> {
        let mut entries = Vec::new();
        for (n, record) in bytes.split(|b| *b == 0).enumerate() {
            if record.is_empty() {
                continue;
            }
            let bad = |what: &str| format!("record {n}: {what}");
            let mut fields = record.splitn(4, |b| *b == b' ');
            let mode = fields
                .next()
                .and_then(|m| std::str::from_utf8(m).ok())
                .and_then(|m| u32::from_str_radix(m, 8).ok())
                .ok_or_else(|| bad("bad mode"))?;
            let id = fields
                .next()
                .and_then(|i| ObjectId::from_hex(i).ok())
                .ok_or_else(|| bad("bad object id"))?;
            let size = fields
                .next()
                .and_then(|s| std::str::from_utf8(s).ok())
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| bad("bad size"))?;
            let path = fields
                .next()
                .filter(|p| !p.is_empty())
                .ok_or_else(|| bad("no path"))?;
            entries.push(Entry {
                mode,
                id,
                size,
                path: path.to_vec(),
            });
        }
        Ok(Entries(entries))
    }

    /// The entries of an index built from a commit's tree (sizes unknown until written: 0).
    pub fn from_index(index: &gix::index::State) -> Entries {
        Entries(
            index
                .entries()
                .iter()
                .map(|e| Entry {
                    mode: e.mode.bits(),
                    id: e.id,
                    size: 0,
                    path: e.path(index).to_vec(),
                })
                .collect(),
        )
    }

    /// Entries by path, for comparing two snapshots.
    pub fn by_path(&self) -> HashMap<&[u8], &Entry> {
        self.0.iter().map(|e| (e.path.as_slice(), e)).collect()
    }

    pub fn total_size(&self) -> u64 {
        self.0.iter().map(|e| e.size).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_paths_with_spaces_and_newlines() {
        let entries = Entries(vec![
            Entry {
                mode: MODE_EXECUTABLE,
                id: ObjectId::empty_blob(gix::hash::Kind::Sha1),
                size: 0,
                path: b"bin/run me.sh".to_vec(),
            },
            Entry {
                mode: MODE_SYMLINK,
                id: ObjectId::empty_tree(gix::hash::Kind::Sha1),
                size: 7,
                path: b"odd\nname".to_vec(),
            },
        ]);
        assert_eq!(Entries::decode(&entries.encode()).unwrap(), entries);
        assert!(Entries::decode(b"100644 zz 1 a\0").is_err());
    }
}
