//! Fetching only what the publisher reads. With `--subdir` or `--sparse-checkout-file` (a
//! [`Selection`]), the cache receives the commit with a filter, then only what the selection
//! reads, by id: what git's partial clone does (`--filter=blob:none`, then the objects a
//! checkout needs), and what GitHub, GitLab and git with `uploadpack.allowFilter` serve. With
//! `--subdir`, a monorepo's first publish costs the trees on the way to the folder and the
//! folder, and a commit outside the folder costs those few trees; with sparse patterns alone,
//! every tree of the commit and the selected blobs.
//!
//! The cache holds no blob outside the selection. Nothing else reads one: the snapshot, its
//! check and its verification read the selection's entries, and the consolidation of a
//! filtered cache re-creates it ([`super::Cache`]), which costs one filtered fetch.

use gix::ObjectId;

use super::fetch::Conversation;
use super::select::Selection;
use super::{error_chain, SourceError};

/// The filter that leaves out blobs: commits and trees only.
const NO_BLOBS: &str = "blob:none";
/// The filter that leaves out trees too: commits alone, and objects asked for by id alone.
const NO_TREES: &str = "tree:0";

/// What [`Conversation::fetch_selection`] found the server willing to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Served {
    /// Commits and trees first, then the selection's blobs by id.
    Filtered,
    /// The server does not filter: the commit came whole.
    Whole,
    /// The server filters but will not give blobs by id: the commit came whole after all.
    WholeNoObjectsById,
}

impl Conversation<'_> {
    /// Bring `want` (the commit, or the annotated tag naming it) and what of `commit` the
    /// selection reads into the cache; `haves` are the commits the cache already follows.
    /// `None` when the cache had all of it.
    ///
    /// 1. If the cache lacks the commit, ask for it with the cache's commits as "haves" and a
    ///    filter: with `--subdir`, `tree:0` (the commits alone); otherwise `blob:none` (the
    ///    commits and their trees). A server that does not filter sends the commit whole, as
    ///    gix's fetch would; one that refuses `tree:0` is asked with `blob:none`.
    /// 2. With `--subdir`, walk down to the folder, asking for each tree on the way the cache
    ///    lacks, alone (`tree:0`, by id); then ask for the folder's tree, unfiltered, with the
    ///    cache's commits as "haves": the server sends what changed in the folder and nothing
    ///    outside it, however many trees outside it changed.
    /// 3. Walk the selection for the blobs the cache still lacks (with sparse patterns and no
    ///    `--subdir`: all of them; otherwise none, unless the cache was missing some).
    /// 4. Ask for exactly those, by id, in one request with no "have" (a have would tell the
    ///    server the cache holds every blob the have reaches, and it would send none).
    /// 5. A server that will not give objects by id (protocol v0 on a connection that stays
    ///    open, without `uploadpack.allowReachableSHA1InWant`) is asked for the whole commit,
    ///    with no "have".
    pub(super) fn fetch_selection(
        &self,
        selection: &Selection,
        commit: ObjectId,
        want: ObjectId,
        haves: &[ObjectId],
    ) -> Result<Option<Served>, SourceError> {
        match self.fetch_parts(selection, commit, want, haves) {
            Err(e) if e.object_refused().is_some() => {
                // (5)
                tracing::debug!(error = %e, "the server refuses objects by id; asking for the whole commit");
                self.request(&[want], &[], None, true)?;
                Ok(Some(Served::WholeNoObjectsById))
            }
            other => other,
        }
    }

    /// Steps 1 to 4 of [`Conversation::fetch_selection`].
    fn fetch_parts(
        &self,
        selection: &Selection,
        commit: ObjectId,
        want: ObjectId,
        haves: &[ObjectId],
    ) -> Result<Option<Served>, SourceError> {
        let repo = self.repo;
        let mut served = None;
        if !repo.has_object(want) || !repo.has_object(commit) {
            // (1)
            served = Some(self.fetch_commit_alone(selection, want, haves)?);
        }
        // (2)
        let mut folder = None;
        if let (Some(subdir), None | Some(Served::Filtered)) = (&selection.subdir, served) {
            let (tree, fetched) = self.fetch_folder(commit, subdir, haves)?;
            folder = tree;
            if fetched {
                served.get_or_insert(Served::Filtered);
            }
        }
        // (3)
        let tree = self.tree_of(commit)?;
        let missing = match (selection.missing_blobs(repo, tree), folder) {
            (Ok(missing), _) => missing,
            (Err(_), Some(folder)) => {
                // Trees of the folder the cache never had (it followed another selection):
                // the folder whole, without "haves".
                self.request(&[folder], &[], None, false)?;
                served.get_or_insert(Served::Filtered);
                selection
                    .missing_blobs(repo, tree)
                    .map_err(|cause| SourceError::Object { commit, cause })?
            }
            (Err(cause), None) => return Err(SourceError::Object { commit, cause }),
        };
        if missing.is_empty() {
            return Ok(served);
        }
        tracing::debug!(
            blobs = missing.len(),
            "fetching the selection's blobs by id"
        );
        // (4)
        self.request(&missing, &[], None, false)?;
        Ok(Some(served.unwrap_or(Served::Filtered)))
    }

    /// The commit without what the selection does not read: its trees too with `--subdir`
    /// (`tree:0`), or its trees without blobs (`blob:none`).
    fn fetch_commit_alone(
        &self,
        selection: &Selection,
        want: ObjectId,
        haves: &[ObjectId],
    ) -> Result<Served, SourceError> {
        let served = |filtered: bool| {
            if filtered {
                Served::Filtered
            } else {
                Served::Whole
            }
        };
        if selection.subdir.is_some() {
            match self.request(&[want], haves, Some(NO_TREES), true) {
                Ok(filtered) => return Ok(served(filtered)),
                Err(e) if refused_filter(&e) => {
                    tracing::debug!(error = %e, "the server refuses filter {NO_TREES}; asking with {NO_BLOBS}");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(served(self.request(
            &[want],
            haves,
            Some(NO_BLOBS),
            true,
        )?))
    }

    /// The trees on the way to `subdir` of `commit` that the cache lacks, each alone, then the
    /// folder's tree and what it holds that `haves` do not reach. Returns the folder's tree
    /// (`None` when the commit has no folder there: building the snapshot says so) and
    /// whether anything was fetched.
    fn fetch_folder(
        &self,
        commit: ObjectId,
        subdir: &[u8],
        haves: &[ObjectId],
    ) -> Result<(Option<ObjectId>, bool), SourceError> {
        let repo = self.repo;
        let object_error = |cause: String| SourceError::Object { commit, cause };
        let mut fetched = false;
        let mut tree = self.tree_of(commit)?;
        for component in subdir.split(|b| *b == b'/') {
            if !repo.has_object(tree) {
                self.request(&[tree], &[], Some(NO_TREES), false)?;
                fetched = true;
            }
            let object = repo
                .find_tree(tree)
                .map_err(|e| object_error(error_chain(&e)))?;
            let next = object
                .find_entry(component)
                .filter(|entry| entry.mode().is_tree())
                .map(|entry| entry.object_id());
            match next {
                Some(next) => tree = next,
                None => return Ok((None, fetched)),
            }
        }
        if !repo.has_object(tree) {
            self.request(&[tree], haves, None, false)?;
            fetched = true;
        }
        Ok((Some(tree), fetched))
    }

    /// The tree of `commit`, which is in the cache.
    fn tree_of(&self, commit: ObjectId) -> Result<ObjectId, SourceError> {
        let object_error = |cause: String| SourceError::Object { commit, cause };
        let found = self
            .repo
            .find_commit(commit)
            .map_err(|e| object_error(error_chain(&e)))?;
        found
            .tree_id()
            .map(|id| id.detach())
            .map_err(|e| object_error(error_chain(&e)))
    }
}

/// Whether the server refused the filter itself (git: `uploadpackfilter.<kind>.allow`,
/// `uploadpackfilter.tree.maxDepth`).
fn refused_filter(error: &SourceError) -> bool {
    let SourceError::Remote { cause, .. } = error else {
        return false;
    };
    let lower = cause.to_lowercase();
    lower.contains("filter") && error.object_refused().is_none()
}
