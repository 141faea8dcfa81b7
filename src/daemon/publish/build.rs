//! What a snapshot of a commit must hold ([`Expected`]), its entries (selection and
//! submodules), and building it into a staging directory and installing it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use super::sources::{self, Part};
use super::{PublishError, Publisher};
use crate::commit::CommitId;
use crate::git::select;
use crate::git::submodules::{Expanded, ReposBlobs};
use crate::git::{CommitInfo, SourceError};
use crate::store::snapshot::{self, Previous, SnapshotError, Stats};
use crate::store::{Expected, Installed, Manifest, ModuleRecord};

/// A version of what this publisher publishes: a commit of `--repo`, or one commit of each
/// source, with what its snapshot must hold.
pub(super) struct Version {
    /// The snapshot's commit information; for several sources, combined
    /// ([`sources::composite_info`]).
    pub info: CommitInfo,
    pub expected: Expected,
    pub parts: Vec<PartInfo>,
}

/// One source's commit in a [`Version`].
pub(super) struct PartInfo {
    pub part: Part,
    pub info: CommitInfo,
    /// The tree published: the commit's, or the one at its subdir.
    pub tree: String,
    /// Not in the cache: a stale source's commit, whose files are those of the live snapshot.
    pub from_live: bool,
}

impl Publisher {
    /// The version `id` names, made of `parts` (what a snapshot of it must hold, for each
    /// source what it publishes).
    pub(super) fn version(&self, id: &CommitId, parts: &[Part]) -> Result<Version, PublishError> {
        let mut infos = Vec::with_capacity(parts.len());
        for part in parts {
            infos.push(self.part_info(part)?);
        }
        if !self.several() {
            let Some(one) = infos.pop() else {
                return Err(PublishError::Internal("a version without a commit".into()));
            };
            let content = &self.sources[0].source.content;
            let expected = Expected {
                tree: one.tree.clone(),
                select: content.select_key(),
                submodules: content.submodules.name(),
            };
            return Ok(Version {
                info: one.info.clone(),
                expected,
                parts: vec![one],
            });
        }
        let name = |p: &PartInfo| self.sources[p.part.index].health.name.clone();
        let trees: Vec<(String, String)> =
            infos.iter().map(|p| (name(p), p.tree.clone())).collect();
        let tree = sources::composite_tree(&trees).map_err(PublishError::Internal)?;
        let named: Vec<(String, CommitInfo)> =
            infos.iter().map(|p| (name(p), p.info.clone())).collect();
        Ok(Version {
            info: sources::composite_info(id, &tree, &named),
            expected: Expected {
                tree,
                select: self.source.select.clone(),
                submodules: self.sources[0].source.content.submodules.name(),
            },
            parts: infos,
        })
    }

    /// A source's commit as the cache knows it; a stale one the cache lacks as the manifest
    /// of the live snapshot recorded it, when that snapshot is the one that lists it (its
    /// files are shared from the live snapshot, and only from it).
    fn part_info(&self, part: &Part) -> Result<PartInfo, PublishError> {
        let followed = &self.sources[part.index];
        let info = match (followed.cache.commit_info(part.commit), &part.stale) {
            (Ok(info), _) => info,
            (Err(e), Some(stale)) => {
                let live = self.root.current()?.filter(|c| c.complete);
                if live.is_none_or(|live| live.commit != stale.snapshot) {
                    return Err(e.into());
                }
                let live = &stale.listed;
                return Ok(PartInfo {
                    info: CommitInfo {
                        commit: live.commit.clone(),
                        tree: live.tree.clone(),
                        tree_id: gix::ObjectId::from_hex(live.tree.as_bytes())
                            .unwrap_or_else(|_| gix::ObjectId::null(gix::hash::Kind::Sha1)),
                        subject: live.subject.clone(),
                        author: String::new(),
                        commit_time: live.commit_time,
                    },
                    tree: live.tree.clone(),
                    part: part.clone(),
                    from_live: true,
                });
            }
            (Err(e), None) => return Err(e.into()),
        };
        let tree = match &followed.source.content.subdir {
            Some(subdir) => select::subtree(&followed.cache.repo(), info.tree_id, subdir)?,
            None => info.tree_id,
        };
        Ok(PartInfo {
            tree: tree.to_string(),
            info,
            part: part.clone(),
            from_live: false,
        })
    }

    /// Whether a commit can change nothing published: only part of each is published.
    pub(super) fn selects_part(&self) -> bool {
        self.several()
            || self
                .sources
                .iter()
                .any(|f| f.source.content.subdir.is_some())
    }

    /// The entries of `version` as this publisher publishes them (for each source the part its
    /// subdir and sparse patterns select, submodules filled in, under its name when there are
    /// several), and where their content comes from.
    pub(super) fn entries_of(
        &mut self,
        version: &Version,
        progress: &gix::progress::tree::Root,
        interrupt: &AtomicBool,
    ) -> Result<Expanded, PublishError> {
        if !self.several() {
            return match version.parts.first() {
                Some(part) => self.part_entries(part, progress, interrupt),
                None => Err(PublishError::Internal("a version without a commit".into())),
            };
        }
        // Git's path order: a directory sorts as its name followed by '/'.
        let mut order: Vec<(Vec<u8>, &PartInfo)> = version
            .parts
            .iter()
            .map(|p| {
                let name = &self.sources[p.part.index].health.name;
                ([name.as_bytes(), b"/"].concat(), p)
            })
            .collect();
        order.sort_by(|a, b| a.0.cmp(&b.0));
        let mut all = Expanded {
            entries: crate::entries::Entries::default(),
            blobs: ReposBlobs(Vec::new()),
            modules: Vec::new(),
        };
        for (prefix, part) in order {
            let expanded = if part.from_live {
                self.live_entries_under(&prefix)?
            } else {
                let mut expanded = self.part_entries(part, progress, interrupt)?;
                for entry in &mut expanded.entries.0 {
                    entry.path.splice(0..0, prefix.iter().copied());
                }
                for module in &mut expanded.modules {
                    module.path.splice(0..0, prefix.iter().copied());
                }
                expanded
            };
            all.entries.0.extend(expanded.entries.0);
            all.blobs.0.extend(expanded.blobs.0);
            all.modules.extend(expanded.modules);
        }
        Ok(all)
    }

    /// The entries under `prefix` of the live snapshot: a stale source's files, shared from it.
    fn live_entries_under(&self, prefix: &[u8]) -> Result<Expanded, PublishError> {
        let current = self.root.current()?.filter(|c| c.complete);
        let entries = match &current {
            Some(current) => self.root.entries(&current.commit)?,
            None => None,
        };
        let Some(entries) = entries else {
            return Err(PublishError::Internal(
                "a stale source's files must come from the live snapshot, which has no entry list; the set is published once the source answers again"
                    .into(),
            ));
        };
        Ok(Expanded {
            entries: crate::entries::Entries(
                entries
                    .0
                    .into_iter()
                    .filter(|e| e.path.starts_with(prefix))
                    .collect(),
            ),
            blobs: ReposBlobs(Vec::new()),
            modules: Vec::new(),
        })
    }

    /// One source's entries at one commit: the part its subdir and sparse patterns select,
    /// submodules filled in from its own caches.
    fn part_entries(
        &mut self,
        part: &PartInfo,
        progress: &gix::progress::tree::Root,
        interrupt: &AtomicBool,
    ) -> Result<Expanded, PublishError> {
        let followed = &mut self.sources[part.part.index];
        let (info, content) = (&part.info, &followed.source.content);
        let repo = followed.cache.repo();
        let tree =
            gix::ObjectId::from_hex(part.tree.as_bytes()).map_err(|e| SourceError::Object {
                commit: info.tree_id,
                cause: e.to_string(),
            })?;
        let entries = crate::git::tree::entries(&repo, tree)?;
        let prefix = content.subdir.clone().unwrap_or_default();
        let entries = match &content.sparse {
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
        Ok(followed
            .expander
            .expand(&followed.source.remote, tree, progress, interrupt)?)
    }

    pub(super) fn build(
        &mut self,
        version: Version,
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

        let expanded = self.entries_of(&version, progress, interrupt)?;
        let staging = self.root.begin_staging()?;
        // The manifest first: building consumes the entries.
        let mut manifest = self.manifest_of(&version, &expanded);
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

impl Publisher {
    /// The manifest of a snapshot of `version` holding what `expanded` says; for several
    /// sources, each one's commit.
    pub(super) fn manifest_of(&self, version: &Version, expanded: &Expanded) -> Manifest {
        let mut manifest = content_manifest(
            version.info.clone(),
            &version.expected,
            expanded,
            Stats::default(),
        );
        if self.several() {
            manifest.sources = version
                .parts
                .iter()
                .map(|p| {
                    sources::source_commit(
                        &self.sources[p.part.index].source,
                        &p.part,
                        &p.info,
                        &p.tree,
                    )
                })
                .collect();
            manifest.sources.sort_by(|a, b| a.name.cmp(&b.name));
        }
        manifest
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
        sources: Vec::new(),
    }
}
