//! What a snapshot holds, as git records it: one entry per file, symlink or submodule, with its
//! mode, object id and size — and the rules a path must follow to be part of a snapshot.
//!
//! The git side produces the list from a commit's tree ([`crate::git::tree`]); the store writes
//! it into a directory ([`crate::store::snapshot`]) and keeps it beside the snapshot
//! (`manifests/<sha>.entries`), where later builds read it back to share unchanged files and
//! `verify` reads it to check the snapshot. Read back from disk it is input like any other:
//! [`Entries::decode`] applies the same path rules as a tree walk, so a tampered list cannot
//! name a path outside the snapshot.
//!
//! Format: records `<mode in octal> <object id in hex> <size>[@<mtime>] <path>\0`, in git's
//! path order, `<mtime>` (nanoseconds since the epoch) for regular files as they were written
//! (lists of dagsnap before 0.4 have none). Paths are bytes (git allows any byte but NUL in a
//! path), hence the NUL terminator.

use gix::ObjectId;

/// Git's mode of a regular file.
pub(crate) const MODE_FILE: u32 = 0o100644;
/// Git's mode of an executable file.
pub(crate) const MODE_EXECUTABLE: u32 = 0o100755;
/// Git's mode of a symlink.
pub(crate) const MODE_SYMLINK: u32 = 0o120000;
/// Git's mode of a submodule (a gitlink: a commit id; in a snapshot, a directory holding the
/// submodule's files, or empty with `--submodules off`).
pub(crate) const MODE_SUBMODULE: u32 = 0o160000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub mode: u32,
    pub id: ObjectId,
    /// Bytes of content (for a symlink, of its target).
    pub size: u64,
    /// A regular file's modification time as written into the snapshot, in nanoseconds since
    /// the epoch (`None` before it is written, or in an older list): a file edited in place
    /// and given back its size and mode still has another one. 64 bits, not 128: an entry
    /// list holds 100,000 of these, and `i128`'s alignment made every entry 32 bytes larger.
    pub mtime: Option<i64>,
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
            let stamp = match entry.mtime {
                Some(mtime) => format!("@{mtime}"),
                None => String::new(),
            };
            out.extend_from_slice(
                format!("{:o} {} {}{stamp} ", entry.mode, entry.id, entry.size).as_bytes(),
            );
            out.extend_from_slice(&entry.path);
            out.push(0);
        }
        out
    }

    /// Parse an entry list written by [`Entries::encode`], refusing any record a tree walk would
    /// not have produced: an unknown mode, or a path that breaks [`check_path`].
    pub fn decode(bytes: &[u8]) -> Result<Entries, String> {
        // Sized exactly: a list of 100,000 entries is 5.6 MB, and growing it by doubling would
        // hold up to twice that.
        let mut entries = Vec::with_capacity(bytes.iter().filter(|b| **b == 0).count());
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
                .filter(|m| [MODE_FILE, MODE_EXECUTABLE, MODE_SYMLINK, MODE_SUBMODULE].contains(m))
                .ok_or_else(|| bad("bad mode"))?;
            let id = fields
                .next()
                .and_then(|i| ObjectId::from_hex(i).ok())
                .ok_or_else(|| bad("bad object id"))?;
            let (size, mtime) = fields
                .next()
                .and_then(|s| std::str::from_utf8(s).ok())
                .and_then(|s| match s.split_once('@') {
                    Some((size, mtime)) => Some((size.parse().ok()?, Some(mtime.parse().ok()?))),
                    None => Some((s.parse().ok()?, None)),
                })
                .ok_or_else(|| bad("bad size"))?;
            let path = fields.next().unwrap_or_default();
            check_path(path, mode).map_err(|reason| {
                bad(&format!(
                    "path '{}' {reason}",
                    crate::text::escape_bytes(path)
                ))
            })?;
            entries.push(Entry {
                mode,
                id,
                size,
                mtime,
                path: path.to_vec(),
            });
        }
        Ok(Entries(entries))
    }

    pub fn total_size(&self) -> u64 {
        self.0.iter().map(|e| e.size).sum()
    }
}

/// Why a blob could not be copied: reading it (the source's fault) or writing it (the target's).
#[derive(Debug)]
pub(crate) enum CopyError {
    Read(String),
    Write(std::io::Error),
}

/// Where the content of each entry comes from (the git side provides it; the store writes it).
pub(crate) trait Blobs {
    /// Put the content of blob `id` into `buf`, replacing what it held.
    fn read(&self, id: &gix::oid, buf: &mut Vec<u8>) -> Result<(), String>;

    /// Write the content of blob `id` to `out` and return its size; `buf` is room to read into.
    /// Unless the source can do better (stream a large blob), the blob is read whole.
    fn copy(
        &self,
        id: &gix::oid,
        out: &mut dyn std::io::Write,
        buf: &mut Vec<u8>,
    ) -> Result<u64, CopyError> {
        self.read(id, buf).map_err(CopyError::Read)?;
        out.write_all(buf).map_err(CopyError::Write)?;
        Ok(buf.len() as u64)
    }

    /// Another reader of the same blobs, for another thread.
    fn fork(&self) -> Box<dyn Blobs + Send>;
}

/// The path rules git applies when it checks out on Linux, which are the rules for a path in a
/// snapshot: a repository that `git clone` checks out is published, and nothing else.
///
/// Refused: an empty path or component (`a//b`, a leading `/`), `.` and `..` (they would leave
/// the snapshot), `.git` and every name a case-insensitive, NTFS or HFS+ filesystem would take
/// for it (`.GIT`, `git~1`, `.git.`, `.g\u{200c}it`, also after a backslash, as git checks), and
/// `.gitmodules` as a symlink. Everything else is allowed, including names Windows reserves
/// (`aux.py`, `con`, `nul`), `:`, `?`, `*`, trailing dots and spaces, backslashes, tabs and
/// newlines: they are ordinary file names on Linux, and DAG repositories use some of them
/// (`2024-01-01T00:00:00.sql`).
///
/// Returns why the path is refused.
pub(crate) fn check_path(path: &[u8], mode: u32) -> Result<(), &'static str> {
    if path.is_empty() {
        return Err("is empty");
    }
    let mut components = path.split(|b| *b == b'/').peekable();
    while let Some(component) = components.next() {
        let leaf = components.peek().is_none();
        check_component(component, leaf && mode == MODE_SYMLINK)?;
    }
    Ok(())
}

/// One path component, as [`check_path`] judges it.
pub(crate) fn check_component(name: &[u8], is_symlink: bool) -> Result<(), &'static str> {
    use gix::validate::path::component::{Error, Mode, Options};
    // Git's defaults on Linux (core.protectNTFS is on everywhere since git 2.24) plus HFS+, whose
    // aliases of `.git` are as dangerous on a volume a Mac may mount; not Windows' device names
    // and reserved characters, which are fine on Linux.
    let options = Options {
        protect_windows: false,
        protect_hfs: true,
        protect_ntfs: true,
    };
    let mode = is_symlink.then_some(Mode::Symlink);
    const DOT_GIT: &str =
        "names '.git' (or a name that a case-insensitive, NTFS or HFS+ filesystem takes for '.git')";
    if let Err(e) = gix::validate::path::component(name.into(), mode, options) {
        return Err(match e {
            Error::Empty => "has an empty component",
            Error::Relative => "has a '.' or '..' component, which would leave the snapshot",
            Error::DotGitDir => DOT_GIT,
            Error::SymlinkedGitModules => "is a '.gitmodules' that is a symlink",
            Error::PathSeparator => "has a component containing '/'",
            _ => "is refused by git's path rules",
        });
    }
    // Git also looks for `.git` after each backslash, which NTFS takes for a separator.
    for piece in name.split(|b| *b == b'\\').skip(1) {
        if let Err(Error::DotGitDir) = gix::validate::path::component(piece.into(), None, options) {
            return Err(DOT_GIT);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {

    #[test]
    fn an_entry_stays_small_since_lists_hold_one_per_file() {
        // 100,000 files make two lists of these during an update: each byte is 200 KB.
        assert!(
            std::mem::size_of::<Entry>() <= 80,
            "{}",
            std::mem::size_of::<Entry>()
        );
    }

    use super::*;

    #[test]
    fn round_trips_paths_with_spaces_and_newlines() {
        let entries = Entries(vec![
            Entry {
                mode: MODE_EXECUTABLE,
                id: ObjectId::empty_blob(gix::hash::Kind::Sha1),
                size: 0,
                mtime: Some(1_700_000_000_123_456_789),
                path: b"bin/run me.sh".to_vec(),
            },
            Entry {
                mode: MODE_SYMLINK,
                id: ObjectId::empty_tree(gix::hash::Kind::Sha1),
                size: 7,
                mtime: None,
                path: b"odd\nname".to_vec(),
            },
        ]);
        assert_eq!(Entries::decode(&entries.encode()).unwrap(), entries);
        assert!(Entries::decode(b"100644 zz 1 a\0").is_err());
        // Lists written before modification times were recorded still read.
        let old = format!(
            "100644 {} 3 a.py\0",
            ObjectId::empty_blob(gix::hash::Kind::Sha1)
        );
        assert_eq!(Entries::decode(old.as_bytes()).unwrap().0[0].mtime, None);
        let bad = format!(
            "100644 {} 3@x a.py\0",
            ObjectId::empty_blob(gix::hash::Kind::Sha1)
        );
        assert!(Entries::decode(bad.as_bytes()).is_err());
    }

    #[test]
    fn a_tampered_entry_list_cannot_name_a_path_outside_the_snapshot() {
        let id = ObjectId::empty_blob(gix::hash::Kind::Sha1);
        for path in [
            "../../etc/passwd",
            "/etc/passwd",
            "a/../../b",
            "a//b",
            "./a",
            ".git/config",
            "",
        ] {
            let record = format!("100644 {id} 0 {path}\0");
            assert!(Entries::decode(record.as_bytes()).is_err(), "{path:?}");
        }
        assert!(Entries::decode(format!("100600 {id} 0 a\0").as_bytes()).is_err());
    }

    #[test]
    fn linux_names_pass_and_git_aliases_do_not() {
        for ok in [
            "aux.py",
            "con.py",
            "nul",
            "a:b.sql",
            "x.",
            "q?.py",
            "*",
            "trailing ",
            "back\\slash",
            "tab\tname",
            "new\nline",
            "dags/.gitignore",
            ".github/workflows/ci.yml",
            "gitx",
        ] {
            assert_eq!(check_path(ok.as_bytes(), MODE_FILE), Ok(()), "{ok:?}");
        }
        for bad in [
            ".git",
            ".GIT/config",
            "a/.Git/x",
            "git~1/config",
            ".git./x",
            ".git /x",
            "a\\.git",
            ".g\u{200c}it/config",
            "..",
            "a/./b",
        ] {
            assert!(check_path(bad.as_bytes(), MODE_FILE).is_err(), "{bad:?}");
        }
        assert!(check_path(b".gitmodules", MODE_SYMLINK).is_err());
        assert!(check_path(b".gitmodules", MODE_FILE).is_ok());
    }
}
