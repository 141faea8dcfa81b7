//! A commit's tree as the flat list of entries a snapshot holds.
//!
//! The walk is depth-first in tree order, which is git's index order (byte order of the full
//! paths), so the list can be compared entry by entry with another snapshot's. Every path is
//! checked with [`crate::entries::check_path`] on the way: a tree that git would refuse to check
//! out on Linux is refused here with the offending path named, and nothing else is.

use gix::ObjectId;

use crate::entries::{
    check_component, Entries, Entry, MODE_EXECUTABLE, MODE_FILE, MODE_SUBMODULE, MODE_SYMLINK,
};
use crate::text::escape_bytes;

#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// The cache could not produce an object: its fault, not the repository's.
    #[error("cannot read tree {tree} ('{path}') from the cache: {cause}")]
    Read {
        tree: ObjectId,
        path: String,
        cause: String,
    },
    /// The repository holds a path git refuses to check out: the repository's fault.
    #[error("the commit holds '{path}', which {reason}; git refuses to check it out too. Rename it in the repository")]
    Refused { path: String, reason: &'static str },
}

impl TreeError {
    /// True when the cache, not the repository, is at fault.
    pub fn blames_cache(&self) -> bool {
        matches!(self, TreeError::Read { .. })
    }
}

/// Every file, symlink and submodule of `tree`, with sizes unknown (0) until written.
pub(crate) fn entries(repo: &gix::Repository, tree: ObjectId) -> Result<Entries, TreeError> {
    let mut out = Vec::new();
    let mut prefix = Vec::new();
    let walked = walk(repo, tree, &mut prefix, &mut out);
    // The trees are spread over the pack: the walk has mapped pages all over it.
    super::pages::release();
    walked?;
    // Grown by doubling: give back up to half of it for the rest of the cycle.
    out.shrink_to_fit();
    Ok(Entries(out))
}

fn walk(
    repo: &gix::Repository,
    tree: ObjectId,
    prefix: &mut Vec<u8>,
    out: &mut Vec<Entry>,
) -> Result<(), TreeError> {
    let read_error = |prefix: &[u8], e: &gix::Error| TreeError::Read {
        tree,
        path: if prefix.is_empty() {
            "/".into()
        } else {
            escape_bytes(prefix)
        },
        cause: crate::git::error_chain(e),
    };
    let object = repo.find_tree(tree).map_err(|e| read_error(prefix, &e))?;
    super::pages::release_if_due();
    for entry in object.iter() {
        let entry = entry.map_err(|e| read_error(prefix, &e))?;
        let name: &[u8] = entry.filename();
        let kind = entry.kind();
        let at = prefix.len();
        prefix.extend_from_slice(name);
        use gix::object::tree::EntryKind;
        if let Err(reason) = check_component(name, kind == EntryKind::Link) {
            return Err(TreeError::Refused {
                path: escape_bytes(prefix),
                reason,
            });
        }
        let mode = match kind {
            EntryKind::Tree => {
                prefix.push(b'/');
                walk(repo, entry.object_id(), prefix, out)?;
                prefix.truncate(at);
                continue;
            }
            EntryKind::Blob => MODE_FILE,
            EntryKind::BlobExecutable => MODE_EXECUTABLE,
            EntryKind::Link => MODE_SYMLINK,
            EntryKind::Commit => MODE_SUBMODULE,
        };
        out.push(Entry {
            mode,
            id: entry.object_id(),
            size: 0,
            mtime: None,
            path: prefix.clone(),
        });
        prefix.truncate(at);
    }
    Ok(())
}
