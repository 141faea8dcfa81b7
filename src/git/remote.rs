//! What to follow: the repository URL and the ref.

use std::path::PathBuf;

use gix::ObjectId;

use super::access::{self, Access, Password};
use super::redact::Redactor;
use super::select::Selection;

/// What `--ref` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Whatever branch the remote's HEAD points at (`--ref` unset).
    RemoteHead,
    /// A branch or tag, short (`main`, `v1.2`) or full (`refs/heads/main`).
    Name(String),
    /// One fixed commit, by full hex id.
    Commit(ObjectId),
}

impl Target {
    /// Parse `--ref`. A 40-hex-digit value is a commit; anything else names a ref, validated
    /// the way git validates ref names so that a typo fails here instead of at every poll.
    pub fn parse(value: Option<&str>) -> Result<Target, String> {
        let Some(value) = value
            .map(str::trim)
            .filter(|v| !v.is_empty() && *v != "HEAD")
        else {
            return Ok(Target::RemoteHead);
        };
        if value.len() == 40 && value.bytes().all(|b| b.is_ascii_hexdigit()) {
            return ObjectId::from_hex(value.as_bytes())
                .map(Target::Commit)
                .map_err(|e| format!("invalid commit id '{value}': {e}"));
        }
        gix::refs::PartialName::try_from(value).map_err(|e| {
            format!(
                "invalid ref name '{value}': {e}; use a branch, a tag or a full 40-digit commit id"
            )
        })?;
        Ok(Target::Name(value.to_string()))
    }

    /// The ref names to try, in order of preference, for a name that is not fully qualified.
    /// A branch wins over a tag of the same name: following a branch is what a sync tool is for.
    pub(super) fn candidates(name: &str) -> Vec<String> {
        if name.starts_with("refs/") {
            vec![name.to_string()]
        } else {
            vec![format!("refs/heads/{name}"), format!("refs/tags/{name}")]
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::RemoteHead => f.write_str("HEAD"),
            Target::Name(name) => f.write_str(name),
            Target::Commit(id) => write!(f, "{id}"),
        }
    }
}

/// The repository to follow.
#[derive(Debug, Clone)]
pub struct Remote {
    /// The URL as gix receives it: a plain path made absolute, credentials moved out.
    pub(super) url: String,
    pub(super) redactor: Redactor,
    pub target: Target,
    /// Commits of history to fetch; 0 means all.
    pub depth: u32,
    pub(super) access: Access,
    /// The part of each commit the publisher reads, when not the whole tree: the cache then
    /// fetches only its blobs from servers that allow it ([`super::filtered`]).
    pub(super) selection: Option<Selection>,
}

impl Remote {
    /// The git configuration given for it (`--git-config`), as key and value.
    pub(crate) fn git_config(&self) -> &[(String, String)] {
        &self.access.git_config
    }

    /// Describe the repository at `url`. Credentials in an http(s) URL are moved into `access`
    /// (unless `--username`/a password were given, which win) and the URL is kept without them;
    /// everything `access` refers to is checked now, so that a typo fails at start-up.
    pub fn new(
        url: &str,
        target: Target,
        depth: u32,
        mut access: Access,
    ) -> Result<Remote, String> {
        let url = url.trim();
        if url.is_empty() {
            return Err("--repo is empty; give the repository URL or path".into());
        }
        let url = absolutize_local_path(url);
        // Learn the URL's secrets before anything can print it.
        let redactor = Redactor::for_url(&url);
        let split = access::split_credentials(&url);
        if access.username.is_none() {
            access.username = split.username.clone();
        }
        if access.password.is_none() {
            access.password = match (&split.password, &split.username) {
                (Some(password), _) => Some(Password::Fixed(password.clone())),
                // `https://TOKEN@host`: the token is the user name and the password is empty.
                (None, Some(_)) => Some(Password::Fixed(String::new())),
                (None, None) => None,
            };
        }
        let url = split.url;
        gix::url::parse(gix::bstr::BStr::new(url.as_str()))
            .map_err(|e| format!("invalid repository URL '{}': {e}", redactor.redact(&url)))?;
        access
            .validate(&url, &redactor)
            .map_err(|e| e.to_string())?;
        Ok(Remote {
            redactor,
            url,
            target,
            depth,
            access,
            selection: None,
        })
    }

    /// The same remote, of which only `selection` of each commit is read (`None`: all of it).
    pub fn reading_only(self, selection: Option<Selection>) -> Remote {
        Remote { selection, ..self }
    }

    /// True for remotes reached through `ssh`: `ssh://` and scp-like `[user@]host:path`.
    pub fn is_ssh(&self) -> bool {
        let lower = self.url.to_ascii_lowercase();
        lower.starts_with("ssh://")
            || lower.starts_with("git+ssh://")
            || (!lower.contains("://")
                && !lower.starts_with('/')
                && lower
                    .split('/')
                    .next()
                    .is_some_and(|head| head.contains(':')))
    }

    /// The path of a repository on this machine (`file://` or a plain path).
    pub fn local_path(&self) -> Option<PathBuf> {
        let path = self.url.strip_prefix("file://").unwrap_or(&self.url);
        path.starts_with('/').then(|| PathBuf::from(path))
    }

    /// True for a repository reached on this machine's disk (`file://` or a path), which is
    /// everything not reached over the network (http(s), ssh, `git://`).
    pub fn is_local(&self) -> bool {
        !self.is_http() && !self.is_ssh() && !self.url.to_ascii_lowercase().starts_with("git://")
    }

    /// True for `http://` and `https://` remotes.
    pub(super) fn is_http(&self) -> bool {
        let lower = self.url.to_ascii_lowercase();
        lower.starts_with("http://") || lower.starts_with("https://")
    }

    /// The URL with credentials masked, fit for logs and the root's records.
    pub fn display_url(&self) -> String {
        self.redactor.redact(&self.url)
    }

    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    pub(super) fn shallow(&self) -> gix::remote::fetch::Shallow {
        match std::num::NonZeroU32::new(self.depth) {
            Some(depth) => gix::remote::fetch::Shallow::DepthAtRemote(depth),
            None => gix::remote::fetch::Shallow::NoChange,
        }
    }
}

/// A relative local path means "relative to where I ran dagsnap"; gix would resolve it
/// elsewhere, so pin it down. URLs and scp-like `host:path` are left alone.
fn absolutize_local_path(url: &str) -> String {
    let looks_local = !url.contains("://")
        && (url.starts_with('.') || url.starts_with('/') || !url.contains(':'));
    if !looks_local || url.starts_with('/') {
        return url.to_string();
    }
    match std::path::absolute(url) {
        // Drop `.` components so logs and records show `/srv/dags`, not `/srv/./dags/.`.
        Ok(path) => path
            .components()
            .filter(|c| !matches!(c, std::path::Component::CurDir))
            .collect::<PathBuf>()
            .to_string_lossy()
            .into_owned(),
        Err(_) => url.to_string(),
    }
}
