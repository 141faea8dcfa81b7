//! What a snapshot of a commit must hold ([`Expected`]), its entries (selection and
//! submodules), and building it into a staging directory and installing it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use super::{PublishError, Publisher};
use crate::commit::CommitId;
use crate::git::select;
use crate::git::submodules::Expanded;
use crate::git::{CommitInfo, SourceError};
use crate::store::snapshot::{self, Previous, SnapshotError, Stats};
use crate::store::{Expected, Installed, Manifest, ModuleRecord};

impl Publisher {
    /// What a snapshot of the commit `info` describes must hold, as this publisher publishes
    /// it: the tree at `--subdir` (or the commit's), the selection, the submodules mode.
    pub(super) fn expected(&self, info: &CommitInfo) -> Result<Expected, PublishError> {
        let tree = match &self.content.subdir {
            Some(subdir) => select::subtree(&self.cache.repo(), info.tree_id, subdir)?,
            None => info.tree_id,
        };
        Ok(Expected {
            tree: tree.to_string(),
            select: self.content.select_key(),
            submodules: self.content.submodules.name(),
        })
    }

    /// The entries of the commit `info` describes as this publisher publishes them (the part
    /// `--subdir` and the sparse patterns select, submodules filled in), and where their
    /// content comes from.
    pub(super) fn entries_of(
        &mut self,
        info: &CommitInfo,
        expected: &Expected,
        progress: &gix::progress::tree::Root,
        interrupt: &AtomicBool,
    ) -> Result<Expanded, PublishError> {
        let repo = self.cache.repo();
        let tree =
            gix::ObjectId::from_hex(expected.tree.as_bytes()).map_err(|e| SourceError::Object {
                commit: info.tree_id,
                cause: e.to_string(),
            })?;
        let entries = crate::git::tree::entries(&repo, tree)?;
        let prefix = self.content.subdir.clone().unwrap_or_default();
        let entries = match &self.content.sparse {
            Some(sparse) => sparse.filter(entries, &prefix)?,
            None => entries,
        };
        let gitmodules =
            crate::git::submodules::gitmodules_of_tree(&repo, info.tree_id).map_err(|cause| {
                crate::git::submodules::SubmoduleError::Gitmodules {
                    within: String::new(),
                    cause,
                }
            })?;
        let lookup_prefix = if prefix.is_empty() {
            prefix
        } else {
            [prefix.as_slice(), b"/"].concat()
        };
        let tree = crate::git::submodules::Tree {
            repo,
            entries,
            gitmodules,
            prefix: lookup_prefix,
        };
        Ok(self
            .expander
            .expand(&self.remote, tree, progress, interrupt)?)
    }

    pub(super) fn build(
        &mut self,
        info: CommitInfo,
        expected: &Expected,
        progress: &gix::progress::tree::Root,
        interrupt: &AtomicBool,
    ) -> Result<Stats, PublishError> {
        // Unchanged files are shared with the snapshot readers see now, if it is intact.
        let current = self.root.current()?.filter(|c| c.complete);
        let previous_entries = match &current {
            Some(current) => self.root.entries(&current.commit).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot share files of the current snapshot; writing all files");
                None
            }),
            None => None,
        };
        let previous_dir = match &current {
            Some(current) => self.root.open_current(current).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot share files of the current snapshot; writing all files");
                None
            }),
            None => None,
        };
        let previous = previous_dir
            .as_ref()
            .zip(previous_entries.as_ref())
            .map(|(dir, entries)| Previous { dir, entries });

        let expanded = self.entries_of(&info, expected, progress, interrupt)?;
        let staging = self.root.begin_staging()?;
        // The manifest first: building consumes the entries.
        let mut manifest = content_manifest(info, expected, &expanded, Stats::default());
        let built = snapshot::build(
            expanded.entries,
            &expanded.blobs,
            snapshot::Into {
                dir: staging.dir(),
                previous,
                reuse: self.settings.reuse,
                jobs: self.settings.build_jobs,
            },
            progress,
            interrupt,
        );
        // What the build mapped and allocated would otherwise stay with an idle loop.
        crate::git::pages::give_back();
        let built = built?;
        if interrupt.load(Ordering::Relaxed) {
            return Err(SnapshotError::Cancelled.into());
        }
        manifest.files = built.stats.files;
        manifest.bytes = built.stats.bytes;
        if self.root.install(staging, &manifest, &built.entries)? == Installed::AlreadyThere {
            tracing::debug!(commit = %manifest.commit, "another publisher installed this commit first; discarded our copy");
        }
        Ok(built.stats)
    }
}

/// The manifest of a snapshot of `info`'s commit holding what `expected` and `expanded` say.
pub(super) fn content_manifest(
    info: CommitInfo,
    expected: &Expected,
    expanded: &Expanded,
    stats: Stats,
) -> Manifest {
    let has_submodules = expanded
        .entries
        .0
        .iter()
        .any(|e| e.mode == crate::entries::MODE_SUBMODULE);
    Manifest {
        tree: expected.tree.clone(),
        select: expected.select.clone(),
        submodules: if has_submodules {
            expected.submodules.to_string()
        } else {
            String::new()
        },
        modules: module_records(&expanded.modules),
        ..manifest_for(info, stats)
    }
}

pub(super) fn module_records(modules: &[crate::git::submodules::Module]) -> Vec<ModuleRecord> {
    modules
        .iter()
        .map(|m| ModuleRecord {
            path: String::from_utf8_lossy(&m.path).into_owned(),
            commit: CommitId::from(m.commit),
            url: m.url.clone(),
        })
        .collect()
}

/// The manifest of a snapshot of the commit `info` describes, built here and now.
pub(super) fn manifest_for(info: CommitInfo, stats: Stats) -> Manifest {
    Manifest {
        commit: info.commit,
        tree: info.tree,
        subject: info.subject,
        author: info.author,
        commit_time: info.commit_time,
        files: stats.files,
        bytes: stats.bytes,
        materialized_at: SystemTime::now(),
        materialized_by: format!("{} pid {}", crate::fsutil::hostname(), std::process::id()),
        dir: None,
        select: String::new(),
        submodules: String::new(),
        modules: Vec::new(),
    }
}
