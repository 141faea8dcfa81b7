//! Step 3 of [`super::receive`]: the id of every delta, from the pack file, bases first.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};

use gix::ObjectId;

use super::{damaged, Entry, IndexError, Kind};

/// The id of every delta, resolved from the pack file, bases first. Returns the ids
/// of bases the pack does not hold (a thin pack's), read from the cache.
pub(super) fn resolve(
    file: &File,
    entries: &mut [Entry],
    repo: &gix::Repository,
    kind: gix::hash::Kind,
    interrupt: &AtomicBool,
) -> Result<Vec<ObjectId>, IndexError> {
    let mut ofs_children: HashMap<usize, Vec<usize>> = HashMap::new();
    let mut ref_children: HashMap<ObjectId, Vec<usize>> = HashMap::new();
    for (i, entry) in entries.iter().enumerate() {
        match entry.kind {
            // Entries are in the pack's order: their offsets ascend.
            Kind::Ofs(base) => match entries.binary_search_by_key(&base, |e| e.offset) {
                Ok(b) => ofs_children.entry(b).or_default().push(i),
                Err(_) => {
                    return Err(damaged(format!(
                        "the delta at {} names no entry",
                        entry.offset
                    )))
                }
            },
            Kind::Ref(id) => ref_children.entry(id).or_default().push(i),
            Kind::Whole(_) => {}
        }
    }
    let mut resolver = Resolver {
        file,
        kind,
        interrupt,
        ofs_children,
        ref_children,
    };
    let roots: Vec<usize> = (0..entries.len())
        .filter(|&i| matches!(entries[i].kind, Kind::Whole(_)))
        .collect();
    for root in roots {
        let (object_kind, id) = entries[root]
            .object
            .ok_or_else(|| damaged("a base has no id".into()))?;
        if !resolver.has_children(root, id) {
            continue;
        }
        let content = resolver.content(&entries[root])?;
        resolver.descend(entries, root, id, object_kind, &content)?;
    }
    // Deltas whose base is not in the pack: a thin pack's, against objects of the cache.
    let mut external = Vec::new();
    let waiting: Vec<ObjectId> = resolver.ref_children.keys().copied().collect();
    for base in waiting {
        if !resolver.ref_children.contains_key(&base) {
            continue;
        }
        let object = repo
            .find_object(base)
            .map_err(|_| IndexError::MissingBase(base))?;
        let (object_kind, content) = (object.kind, object.data.clone());
        drop(object);
        external.push(base);
        resolver.descend_from(entries, base, object_kind, &content)?;
    }
    if let Some(entry) = entries.iter().find(|e| e.object.is_none()) {
        return Err(damaged(format!(
            "the delta at {} could not be resolved",
            entry.offset
        )));
    }
    Ok(external)
}

/// Resolves deltas depth first: a base's content is in memory while its deltas are applied.
struct Resolver<'a> {
    file: &'a File,
    kind: gix::hash::Kind,
    interrupt: &'a AtomicBool,
    ofs_children: HashMap<usize, Vec<usize>>,
    ref_children: HashMap<ObjectId, Vec<usize>>,
}

impl Resolver<'_> {
    fn has_children(&self, index: usize, id: ObjectId) -> bool {
        self.ofs_children.contains_key(&index) || self.ref_children.contains_key(&id)
    }

    /// The inflated data of `entry` (a whole object's content, or a delta's instructions).
    fn content(&self, entry: &Entry) -> Result<Vec<u8>, IndexError> {
        let mut compressed = vec![0u8; (entry.end - entry.data_offset) as usize];
        self.file
            .read_exact_at(&mut compressed, entry.data_offset)
            .map_err(IndexError::Read)?;
        let size = usize::try_from(entry.size).map_err(|e| damaged(e.to_string()))?;
        let mut out = vec![0u8; size];
        let mut state = gix::zlib::Decompress::new();
        let status = state
            .decompress(&compressed, &mut out, gix::zlib::FlushDecompress::Finish)
            .map_err(|e| {
                damaged(format!(
                    "the entry at {} does not inflate: {e}",
                    entry.offset
                ))
            })?;
        if status != gix::zlib::Status::StreamEnd || state.total_out() != entry.size {
            return Err(damaged(format!(
                "the entry at {} does not inflate to its {} bytes",
                entry.offset, entry.size
            )));
        }
        Ok(out)
    }

    /// Apply the deltas based on entry `index` (object `id` of `object_kind`, `content`).
    fn descend(
        &mut self,
        entries: &mut [Entry],
        index: usize,
        id: ObjectId,
        object_kind: gix::object::Kind,
        content: &[u8],
    ) -> Result<(), IndexError> {
        let children = self.ofs_children.remove(&index).unwrap_or_default();
        self.apply_all(entries, children, object_kind, content)?;
        self.descend_from(entries, id, object_kind, content)
    }

    /// Apply the deltas that name object `id` as their base.
    fn descend_from(
        &mut self,
        entries: &mut [Entry],
        id: ObjectId,
        object_kind: gix::object::Kind,
        content: &[u8],
    ) -> Result<(), IndexError> {
        let children = self.ref_children.remove(&id).unwrap_or_default();
        self.apply_all(entries, children, object_kind, content)
    }

    fn apply_all(
        &mut self,
        entries: &mut [Entry],
        children: Vec<usize>,
        object_kind: gix::object::Kind,
        base: &[u8],
    ) -> Result<(), IndexError> {
        for child in children {
            if self.interrupt.load(Ordering::Relaxed) {
                return Err(IndexError::Interrupted);
            }
            let delta = self.content(&entries[child])?;
            let result = super::super::delta::apply(base, &delta).map_err(damaged)?;
            let mut hasher = gix::hash::hasher(self.kind);
            hasher.update(&gix::objs::encode::loose_header(
                object_kind,
                result.len() as u64,
            ));
            hasher.update(&result);
            let id = hasher.try_finalize().map_err(|e| damaged(e.to_string()))?;
            entries[child].object = Some((object_kind, id));
            self.descend(entries, child, id, object_kind, &result)?;
        }
        Ok(())
    }
}
