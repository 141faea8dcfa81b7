//! Step 3 of the cycle for several sources: one poll observes every source, and a source that
//! fails holds every source back unless `--allow-stale-source` lets its commit of the live
//! snapshot stand in.
//!
//! Never backward holds per source: the set's observation is asked when the first source is
//! asked and answered when the last answers, so a set is ordered after another only if every
//! source's question came after every source's answer of the other (see
//! `Publication::may_be_as_recent_as`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use super::sources::{composite_id, Part, Stale};
use super::steps::Seen;
use super::{PublishError, Publisher};
use crate::commit::CommitId;
use crate::git::{Observation, SourceError};
use crate::store::{Root, SourceCommit};

impl Publisher {
    /// Ask every source's remote for its commit, fetching what is new into its cache. Every
    /// source is asked even when one fails, so that the others' caches stay current and their
    /// health is known.
    pub(super) fn observe_sources(
        &mut self,
        progress: &gix::progress::tree::Root,
        interrupt: &AtomicBool,
    ) -> Result<Seen, PublishError> {
        // What the live snapshot's manifest says of each source: read only when a source
        // that may stand in stale fails, so that an idle poll reads nothing more.
        let mut live: Option<Option<(CommitId, Vec<SourceCommit>)>> = None;
        let root = &self.root;
        let mut parts = Vec::with_capacity(self.sources.len());
        let mut failed: Option<(usize, SourceError)> = None;
        let (mut asked, mut answered): (Option<SystemTime>, Option<SystemTime>) = (None, None);
        let mut fetched = false;
        for (index, followed) in self.sources.iter_mut().enumerate() {
            if interrupt.load(Ordering::Relaxed) {
                return Err(SourceError::Cancelled.into());
            }
            let error = match followed.ask(&self.redactor, progress, interrupt) {
                Ok((observation, counts)) => {
                    fetched |= counts;
                    asked = Some(
                        asked.map_or(observation.observed_at, |a| a.min(observation.observed_at)),
                    );
                    answered = Some(
                        answered
                            .map_or(observation.answered_at, |a| a.max(observation.answered_at)),
                    );
                    parts.push(Part::observed(index, &observation));
                    continue;
                }
                Err(SourceError::Cancelled) => return Err(SourceError::Cancelled.into()),
                Err(error) => error,
            };
            let name = followed.health.name.clone();
            let said = followed.health.last_error.clone().unwrap_or_default();
            let stand_in = followed.source.allow_stale.then(|| {
                let (snapshot, listed) = live.get_or_insert_with(|| live_sources(root)).as_ref()?;
                let listed = listed.iter().find(|s| s.name == name)?;
                Some(Stale {
                    listed: listed.clone(),
                    snapshot: snapshot.clone(),
                })
            });
            match stand_in.flatten() {
                Some(stale) => {
                    tracing::warn!(source = %name, error = %said, commit = %stale.listed.commit, "this source failed; publishing the other sources with its commit of the live snapshot (--allow-stale-source)");
                    parts.push(Part {
                        index,
                        commit: stale.listed.commit.object_id(),
                        ref_name: stale.listed.ref_name.clone(),
                        tag: None,
                        stale: Some(stale),
                    });
                }
                None => {
                    tracing::warn!(source = %name, error = %said, "this source failed; the live snapshot stays until it answers");
                    failed.get_or_insert((index, error));
                }
            }
        }
        if let Some((index, error)) = failed {
            return Err(PublishError::SourceFailed {
                name: self.sources[index].health.name.clone(),
                index,
                error: Box::new(error.into()),
            });
        }
        self.timings.fetched = fetched;
        let now = SystemTime::now();
        let (asked, answered) = (asked.unwrap_or(now), answered.unwrap_or(now));
        let commit = self.name_of(&parts)?;
        let mut refs: Vec<String> = parts
            .iter()
            .map(|p| format!("{}={}", self.sources[p.index].health.name, p.ref_name))
            .collect();
        refs.sort();
        let ref_name = refs.join(" ");
        Ok(Seen {
            observation: Observation {
                commit: commit.object_id(),
                ref_name,
                observed_at: asked,
                answered_at: answered,
                fetched,
                tag: None,
            },
            commit,
            parts,
        })
    }

    /// The name of the snapshot of `parts`: their commits and selections together.
    fn name_of(&self, parts: &[Part]) -> Result<CommitId, PublishError> {
        let lines: Vec<_> = parts
            .iter()
            .map(|p| {
                let source = &self.sources[p.index];
                (
                    source.health.name.clone(),
                    p.commit,
                    source.source.content.source_key(),
                )
            })
            .collect();
        composite_id(&lines).map_err(PublishError::Internal)
    }

    /// The parts of the snapshot `commit` names, as its manifest lists them. A snapshot whose
    /// manifest is gone, or that holds a source this publisher does not follow, cannot be
    /// built again here.
    pub(super) fn parts_of(&self, commit: &CommitId) -> Result<Vec<Part>, PublishError> {
        let unknown = |why: String| PublishError::UnknownSources {
            commit: commit.clone(),
            why,
        };
        let manifest = self.root.manifest(commit)?.ok_or_else(|| {
            unknown("a snapshot of several sources is named by their commits, and this root no longer has the manifest that lists them".into())
        })?;
        let mut parts = Vec::with_capacity(manifest.sources.len());
        for listed in manifest.sources {
            let index = self
                .sources
                .iter()
                .position(|f| f.health.name == listed.name)
                .ok_or_else(|| {
                    unknown(format!(
                        "it holds the source '{}', which this publisher does not follow",
                        listed.name
                    ))
                })?;
            parts.push(Part {
                index,
                commit: listed.commit.object_id(),
                ref_name: listed.ref_name.clone(),
                tag: None,
                stale: listed.stale.then(|| Stale {
                    listed,
                    snapshot: commit.clone(),
                }),
            });
        }
        if self.name_of(&parts)? != *commit {
            return Err(unknown(
                "its manifest lists sources or selections other than this publisher's".into(),
            ));
        }
        Ok(parts)
    }
}

/// The live snapshot and what its manifest says of each source (nothing for a snapshot of one
/// repository, or none live).
fn live_sources(root: &Root) -> Option<(CommitId, Vec<SourceCommit>)> {
    let current = root.current().ok()??;
    let manifest = root.manifest(&current.commit).ok()??;
    Some((current.commit, manifest.sources))
}
