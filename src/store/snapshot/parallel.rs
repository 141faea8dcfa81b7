//! Dealing work to threads: entries by directory, and items one at a time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::entries::Entry;

/// The entries (by number) each worker writes: whole directories per worker, so that workers
/// do not queue on one directory's lock; the largest directories first, each to the worker
/// with the least to do. Submodule directories are made in step 2 and need no worker.
pub(super) fn deal_by_directory(entries: &[Entry], jobs: usize) -> Vec<Vec<usize>> {
    let mut by_dir: HashMap<&[u8], Vec<usize>> = HashMap::new();
    for (n, entry) in entries.iter().enumerate() {
        let parent = match entry.path.iter().rposition(|b| *b == b'/') {
            Some(end) => &entry.path[..end],
            None => &[][..],
        };
        by_dir.entry(parent).or_default().push(n);
    }
    let mut groups: Vec<Vec<usize>> = by_dir.into_values().collect();
    groups.sort_by_key(|g| std::cmp::Reverse(g.len()));
    let workers = jobs.min(groups.len()).max(1);
    let mut parts: Vec<Vec<usize>> = vec![Vec::new(); workers];
    for group in groups {
        if let Some(lightest) = parts.iter_mut().min_by_key(|p| p.len()) {
            lightest.extend(group);
        }
    }
    parts.retain(|p| !p.is_empty());
    parts
}

/// Run `work` on each item of `items`, on up to `jobs` threads; the first error is returned.
pub(super) fn in_parallel<T: Sync, E: Send>(
    items: &[T],
    jobs: usize,
    work: impl Fn(&T) -> Result<(), E> + Sync,
) -> Result<(), E> {
    if jobs <= 1 || items.len() <= 1 {
        return items.iter().try_for_each(work);
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..jobs.min(items.len()))
            .map(|_| {
                scope.spawn(|| loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= items.len() || failed.load(Ordering::Relaxed) {
                        return Ok(());
                    }
                    if let Err(e) = work(&items[n]) {
                        failed.store(true, Ordering::Relaxed);
                        return Err(e);
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect::<Result<Vec<()>, E>>()
            .map(|_| ())
    })
}
