//! `dagsnap caches`: the private caches on this machine, and pruning those whose root is gone.
//!
//! Each publisher keeps a cache keyed by repository and root (by default under
//! `~/.cache/dagsnap/`). An afternoon of trying things leaves one per attempt; a cache records
//! the root it publishes into, so one whose root no longer exists can be found and deleted.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::fsutil::lock::FileLock;
use crate::git::CacheRecord;

/// One cache directory, as `caches` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct CacheInfo {
    pub dir: PathBuf,
    /// The repository it fetches (credentials redacted), if its record is readable.
    pub repo: Option<String>,
    /// The root it publishes into, if recorded (older caches do not say).
    pub root: Option<PathBuf>,
    /// A publisher holds it now.
    pub in_use: bool,
    /// Its root is recorded and is no longer a dagsnap root.
    pub orphaned: bool,
    pub bytes: u64,
}

/// Every cache directory under `base`.
pub fn list(base: &Path) -> std::io::Result<Vec<CacheInfo>> {
    let entries = match std::fs::read_dir(base) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        other => other?,
    };
    let mut caches = Vec::new();
    for entry in entries {
        let entry = entry?;
        if !entry.file_type()?.is_dir() {
            continue;
        }
        let dir = entry.path();
        let record = CacheRecord::read(&dir);
        let root = record.as_ref().and_then(|r| r.root.clone());
        let in_use = FileLock::is_held(&dir.join("lock")).unwrap_or(false);
        caches.push(CacheInfo {
            orphaned: root
                .as_ref()
                .is_some_and(|r| !r.join(crate::store::STORE_DIR).is_dir()),
            repo: record.map(|r| r.url),
            root,
            in_use,
            bytes: size_of(&dir),
            dir,
        });
    }
    caches.sort_by(|a, b| a.dir.cmp(&b.dir));
    Ok(caches)
}

/// Delete the caches that are not in use and whose root is gone; returns them.
pub fn prune(base: &Path) -> std::io::Result<Vec<CacheInfo>> {
    let mut pruned = Vec::new();
    for cache in list(base)? {
        if cache.orphaned && !cache.in_use {
            crate::fsutil::remove_tree(&cache.dir).map_err(|e| e.source)?;
            pruned.push(cache);
        }
    }
    Ok(pruned)
}

fn size_of(dir: &Path) -> u64 {
    walkdir::WalkDir::new(dir)
        .follow_links(false)
        .into_iter()
        .filter_map(Result::ok)
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

pub fn render(caches: &[CacheInfo]) -> String {
    if caches.is_empty() {
        return "no caches\n".into();
    }
    let mut out = String::new();
    for cache in caches {
        let state = match (cache.in_use, cache.orphaned) {
            (true, _) => "in use",
            (false, true) => "root gone",
            (false, false) => "idle",
        };
        out.push_str(&format!(
            "{:<10} {:>12}  {}\n           repo {}  root {}\n",
            state,
            cache.bytes,
            cache.dir.display(),
            crate::text::escape(cache.repo.as_deref().unwrap_or("?")),
            cache
                .root
                .as_ref()
                .map(|r| r.display().to_string())
                .unwrap_or_else(|| "? (recorded by newer dagsnap only)".into())
        ));
    }
    out
}
