//! Publishing part of a commit: `--subdir` (the tree at one path) and `--sparse-checkout-file`
//! (the paths git's sparse checkout would leave in a worktree).
//!
//! Sparse patterns are read as git reads `.git/info/sparse-checkout`: gitignore syntax, where a
//! match includes a path and a `!` pattern excludes it again, the last matching pattern wins,
//! and a path no pattern decides takes the decision of its nearest decided parent directory
//! (nothing at all decided: excluded). That is git's non-cone matching; the patterns `git
//! sparse-checkout set --cone` writes (`/*`, `!/*/`, `/dags/`) select the same paths under it, so
//! both kinds of file work, as they do for git-sync.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use gix::ObjectId;

use crate::entries::Entries;
use crate::text::escape_bytes;

#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    #[error("--subdir {subdir}: the commit has no directory there; create it in the repository, or correct --subdir")]
    NoSubdir { subdir: String },
    #[error("--subdir {subdir}: the commit has a {what} there, not a directory; point --subdir at the directory that holds the DAGs")]
    NotADirectory { subdir: String, what: &'static str },
    #[error("cannot read tree '{path}' from the cache: {cause}")]
    Read { path: String, cause: String },
    #[error("the patterns of --sparse-checkout-file {} select nothing in this commit; git would leave an empty worktree. Check the patterns (e.g. `/dags/` for the dags folder)", file.display())]
    NothingSelected { file: PathBuf },
}

impl SelectError {
    /// True when the cache, not the repository or the settings, is at fault.
    pub fn blames_cache(&self) -> bool {
        matches!(self, SelectError::Read { .. })
    }
}

/// `--subdir`, normalized: no leading or trailing slash, no empty, `.` or `..` component.
pub(crate) fn parse_subdir(value: &str) -> Result<Option<Vec<u8>>, String> {
    let trimmed = value.trim().trim_matches('/');
    if trimmed.is_empty() || trimmed == "." {
        return Ok(None);
    }
    for component in trimmed.split('/') {
        if component.is_empty() || component == "." || component == ".." {
            return Err(format!(
                "--subdir {value}: give a path inside the repository, like dags or airflow/dags"
            ));
        }
    }
    Ok(Some(trimmed.as_bytes().to_vec()))
}

/// The id of the tree at `subdir` of `tree`.
pub(crate) fn subtree(
    repo: &gix::Repository,
    tree: ObjectId,
    subdir: &[u8],
) -> Result<ObjectId, SelectError> {
    let shown = escape_bytes(subdir);
    let read = |cause: String| SelectError::Read {
        path: shown.clone(),
        cause,
    };
    let tree = repo
        .find_tree(tree)
        .map_err(|e| read(super::error_chain(&e)))?;
    let entry = tree
        .lookup_entry_by_path(Path::new(std::ffi::OsStr::from_bytes(subdir)))
        .map_err(|e| read(super::error_chain(&e)))?
        .ok_or_else(|| SelectError::NoSubdir {
            subdir: shown.clone(),
        })?;
    use gix::object::tree::EntryKind;
    match entry.mode().kind() {
        EntryKind::Tree => Ok(entry.object_id()),
        EntryKind::Commit => Err(SelectError::NotADirectory {
            subdir: shown,
            what: "submodule",
        }),
        EntryKind::Link => Err(SelectError::NotADirectory {
            subdir: shown,
            what: "symlink",
        }),
        EntryKind::Blob | EntryKind::BlobExecutable => Err(SelectError::NotADirectory {
            subdir: shown,
            what: "file",
        }),
    }
}

/// Sparse checkout patterns, as git reads them.
#[derive(Debug, Clone)]
pub struct Sparse {
    file: PathBuf,
    patterns: Vec<gix::glob::Pattern>,
    /// The file's content, for the fingerprint of what is published.
    text: Vec<u8>,
}

impl Sparse {
    /// Read `file` (at start: a file that is missing or unreadable stops dagsnap there).
    pub fn read(file: &Path) -> Result<Sparse, String> {
        let text = std::fs::read(file)
            .map_err(|e| format!("cannot read --sparse-checkout-file {}: {e}", file.display()))?;
        let sparse = Sparse::parse(file, &text);
        if sparse.patterns.is_empty() {
            return Err(format!(
                "--sparse-checkout-file {} holds no patterns; git would check out nothing. Give patterns like `/dags/`",
                file.display()
            ));
        }
        Ok(sparse)
    }

    pub fn parse(file: &Path, text: &[u8]) -> Sparse {
        let patterns = text
            .split(|b| *b == b'\n')
            .filter_map(|line| {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                if line.is_empty() || line.starts_with(b"#") {
                    return None;
                }
                gix::glob::Pattern::from_bytes(trim_trailing_spaces(line))
            })
            .collect();
        Sparse {
            file: file.to_path_buf(),
            patterns,
            text: text.to_vec(),
        }
    }

    /// A short name for these patterns (FNV-1a of the file's content), recorded with each
    /// snapshot so that other patterns build it anew.
    pub fn fingerprint(&self) -> String {
        let hash = self.text.iter().fold(0xcbf29ce484222325u64, |hash, b| {
            (hash ^ u64::from(*b)).wrapping_mul(0x100000001b3)
        });
        format!("{hash:016x}")
    }

    /// Keep the entries git's sparse checkout would leave; `prefix` is where they sit in the
    /// commit (`--subdir`), since patterns name paths from the repository's top.
    pub fn filter(&self, entries: Entries, prefix: &[u8]) -> Result<Entries, SelectError> {
        let kept: Vec<_> = entries
            .0
            .into_iter()
            .filter(|entry| {
                let mut path = prefix.to_vec();
                if !path.is_empty() {
                    path.push(b'/');
                }
                path.extend_from_slice(&entry.path);
                self.includes(&path)
            })
            .collect();
        if kept.is_empty() {
            return Err(SelectError::NothingSelected {
                file: self.file.clone(),
            });
        }
        Ok(Entries(kept))
    }

    /// Whether git's sparse checkout keeps the file at `path`.
    pub fn includes(&self, path: &[u8]) -> bool {
        if let Some(decided) = self.decide(path, false) {
            return decided;
        }
        let mut dir = path;
        while let Some(slash) = dir.iter().rposition(|b| *b == b'/') {
            dir = &dir[..slash];
            if let Some(decided) = self.decide(dir, true) {
                return decided;
            }
        }
        false
    }

    /// The last pattern that matches `path` decides: included, or (`!`) excluded.
    fn decide(&self, path: &[u8], is_dir: bool) -> Option<bool> {
        use gix::bstr::ByteSlice;
        let basename = path.iter().rposition(|b| *b == b'/').map(|p| p + 1);
        self.patterns
            .iter()
            .rev()
            .find(|pattern| {
                pattern.matches_repo_relative_path(
                    path.as_bstr(),
                    basename,
                    Some(is_dir),
                    gix::glob::pattern::Case::Sensitive,
                    gix::glob::wildmatch::Mode::NO_MATCH_SLASH_LITERAL,
                )
            })
            .map(|pattern| !pattern.is_negative())
    }
}

/// Git drops trailing spaces of a pattern unless the last one is escaped with a backslash.
fn trim_trailing_spaces(line: &[u8]) -> &[u8] {
    let mut end = line.len();
    while end > 0 && line[end - 1] == b' ' {
        if end >= 2 && line[end - 2] == b'\\' {
            break;
        }
        end -= 1;
    }
    &line[..end]
}

/// The part of each commit a publisher reads: the tree at `--subdir`, narrowed by the sparse
/// patterns. Given to the [`super::Remote`], it lets the cache fetch commits and trees without
/// blobs and then only the blobs it names ([`super::filtered`]).
#[derive(Debug, Clone)]
pub struct Selection {
    pub subdir: Option<Vec<u8>>,
    pub sparse: Option<Sparse>,
}

impl Selection {
    /// A selection of part of the tree; `None` for the whole tree (every blob is read anyway).
    pub fn of(subdir: Option<Vec<u8>>, sparse: Option<Sparse>) -> Option<Selection> {
        (subdir.is_some() || sparse.is_some()).then_some(Selection { subdir, sparse })
    }

    /// The blobs of `tree` (a commit's) the selection reads that `repo` lacks: its files and
    /// symlinks, and the top `.gitmodules`, which says where its submodules come from. A
    /// selection that selects nothing here needs nothing: building the snapshot says why.
    pub(crate) fn missing_blobs(
        &self,
        repo: &gix::Repository,
        tree: ObjectId,
    ) -> Result<Vec<ObjectId>, String> {
        let mut wanted = Vec::new();
        let top = repo.find_tree(tree).map_err(|e| super::error_chain(&e))?;
        if let Some(entry) = top
            .lookup_entry_by_path(".gitmodules")
            .map_err(|e| super::error_chain(&e))?
        {
            if entry.mode().is_blob() {
                wanted.push(entry.object_id());
            }
        }
        let selected = match &self.subdir {
            Some(subdir) => match subtree(repo, tree, subdir) {
                Ok(id) => id,
                Err(SelectError::Read { cause, .. }) => return Err(cause),
                Err(_) => return Ok(missing(repo, wanted)),
            },
            None => tree,
        };
        let entries = super::tree::entries(repo, selected).map_err(|e| e.to_string())?;
        let prefix = self.subdir.clone().unwrap_or_default();
        let entries = match &self.sparse {
            Some(sparse) => match sparse.filter(entries, &prefix) {
                Ok(kept) => kept,
                Err(_) => return Ok(missing(repo, wanted)),
            },
            None => entries,
        };
        wanted.extend(
            entries
                .0
                .iter()
                .filter(|e| e.mode != crate::entries::MODE_SUBMODULE)
                .map(|e| e.id),
        );
        Ok(missing(repo, wanted))
    }
}

/// `ids` without repeats and without what `repo` has.
fn missing(repo: &gix::Repository, mut ids: Vec<ObjectId>) -> Vec<ObjectId> {
    ids.sort_unstable();
    ids.dedup();
    ids.retain(|id| !repo.has_object(id));
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sparse(text: &str) -> Sparse {
        Sparse::parse(Path::new("sparse"), text.as_bytes())
    }

    #[test]
    fn cone_patterns_keep_the_folder_and_the_files_above_it() {
        let cone = sparse("/*\n!/*/\n/dags/\n");
        assert!(cone.includes(b"README.md"));
        assert!(cone.includes(b"dags/a.py"));
        assert!(cone.includes(b"dags/team/b.py"));
        assert!(!cone.includes(b"src/main.rs"));
        assert!(!cone.includes(b"src/dags/a.py"));
        let nested = sparse("/*\n!/*/\n/airflow/\n!/airflow/*/\n/airflow/dags/\n");
        assert!(nested.includes(b"airflow/requirements.txt"));
        assert!(nested.includes(b"airflow/dags/x/y.py"));
        assert!(!nested.includes(b"airflow/plugins/p.py"));
    }

    #[test]
    fn plain_patterns_match_as_gitignore_does() {
        let patterns = sparse("# Python and SQL\n*.py\n!tests/*\n/dags/**/*.sql\n!docs/\n");
        assert!(patterns.includes(b"dags/a.py"));
        assert!(patterns.includes(b"setup.py"));
        assert!(!patterns.includes(b"tests/test_a.py"));
        // A file's own match decides before its directory's, as in git's sparse checkout.
        assert!(patterns.includes(b"docs/conf.py"));
        assert!(!patterns.includes(b"docs/index.md"));
        assert!(patterns.includes(b"dags/q/x.sql"));
        assert!(!patterns.includes(b"x.sql"));
        assert!(!patterns.includes(b"README.md"));
        let dir = sparse("dags\n");
        assert!(dir.includes(b"dags/a/b.py"));
        assert!(dir.includes(b"x/dags/c.py"));
    }

    #[test]
    fn subdirs_are_normalized_and_checked() {
        assert_eq!(parse_subdir("/dags/").unwrap(), Some(b"dags".to_vec()));
        assert_eq!(parse_subdir("").unwrap(), None);
        assert!(parse_subdir("a/../b").is_err());
        assert!(parse_subdir("a//b").is_err());
    }
}
