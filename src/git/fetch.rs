//! One conversation with the remote: connect (with dagsnap's HTTP client and credentials), list
//! refs, and receive a pack only when the advertised commit is new to the cache. Failures come
//! back as errors that say what the server or ssh said.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use gix::ObjectId;

use super::filtered::Served;
use super::http::SharedHttp;
use super::remote::{Remote, Target};
use super::{error_chain, SourceError};

/// What one fetch found: the commit, the full name of the ref that matched, and whether a pack
/// came in.
pub(super) struct Fetched {
    pub(super) commit: ObjectId,
    pub(super) ref_name: String,
    pub(super) fetched: bool,
    /// The annotated tag object the ref points at, when it points at one.
    pub(super) tag: Option<ObjectId>,
    /// How the server served a fetch of part of the commit (`None`: nothing fetched that way).
    pub(super) served: Option<Served>,
    /// When the ref listing's answer was in.
    pub(super) answered_at: std::time::SystemTime,
}

/// The commits the cache follows (its local refs): what it tells the server it has. One the
/// cache cannot read means its objects are damaged: an error that has the cache re-created.
fn followed_commits(repo: &gix::Repository) -> Result<Vec<ObjectId>, SourceError> {
    let Ok(platform) = repo.references() else {
        return Ok(Vec::new());
    };
    let Ok(refs) = platform.prefixed("refs/dagsnap/") else {
        return Ok(Vec::new());
    };
    let mut ids = Vec::new();
    for mut reference in refs.filter_map(Result::ok) {
        let id = match reference.peel_to_id() {
            Ok(id) => id.detach(),
            Err(e) => {
                return Err(SourceError::CacheRepo {
                    dir: repo.path().to_path_buf(),
                    cause: format!(
                        "{} cannot be read: {}",
                        reference.name().as_bstr(),
                        error_chain(&e)
                    ),
                })
            }
        };
        match repo.find_header(id) {
            Ok(header) if header.kind() == gix::object::Kind::Commit => ids.push(id),
            Ok(_) => {}
            Err(e) => {
                return Err(SourceError::Object {
                    commit: id,
                    cause: error_chain(&e),
                })
            }
        }
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// Everything one conversation with the remote needs, for the cache's repository.
pub(super) struct Conversation<'a> {
    pub(super) repo: &'a gix::Repository,
    pub(super) remote: &'a Remote,
    /// The HTTP user and password as of this cycle ([`current_credentials`]).
    pub(super) credentials: Option<(&'a str, &'a str)>,
    pub(super) progress: &'a gix::progress::tree::Root,
    pub(super) interrupt: &'a AtomicBool,
    /// The cache's HTTP client: its connections and its last ref listing outlive the conversation.
    pub(super) http: &'a SharedHttp,
    /// The commit whose selection this process already made complete in the cache: a poll
    /// that finds it again need not walk the selection ([`super::filtered`]).
    pub(super) complete: Option<ObjectId>,
}

type Connection<'a, 'r> = gix::remote::Connection<
    'a,
    'static,
    'r,
    Box<dyn gix::protocol::transport::client::blocking_io::Transport + Send>,
>;

impl<'a> Conversation<'a> {
    /// Find which full ref a short `--ref` names on the remote (one ls-refs, no fetch).
    pub(super) fn resolve_name(&self, name: &str) -> Result<String, SourceError> {
        let remote = self.remote;
        let candidates = Target::candidates(name);
        let specs: Vec<String> = candidates
            .iter()
            .enumerate()
            .map(|(i, c)| format!("+{c}:refs/dagsnap/candidate/{i}"))
            .collect();
        let git_remote = self.make_remote(&specs)?;
        let connection = self.connect(&git_remote)?;
        // List every ref, not only the candidates: this runs once per start, and when the name
        // is wrong the error can then say which branches and tags do exist.
        let options = gix::remote::ref_map::Options {
            prefix_from_spec_as_filter_on_remote: false,
            ..Default::default()
        };
        let (ref_map, _handshake) = connection
            .ref_map(self.progress.add_child("list refs"), options)
            .map_err(|e| self.error("list refs of", &e))?;
        let advertised: Vec<String> = ref_map
            .remote_refs
            .iter()
            .map(|r| r.unpack().0.to_string())
            .filter(|n| n.starts_with("refs/heads/") || n.starts_with("refs/tags/"))
            .collect();
        let matching: Vec<&String> = candidates
            .iter()
            .filter(|c| advertised.contains(c))
            .collect();
        match matching.as_slice() {
            [] => Err(SourceError::RefNotFound {
                wanted: name.to_string(),
                url: remote.display_url(),
                known: advertised,
            }),
            [only] => Ok(only.to_string()),
            [first, others @ ..] => {
                tracing::warn!(r#ref = %name, using = %first, ignoring = ?others, "--ref is ambiguous; following the branch. Give the full ref name to silence this");
                Ok(first.to_string())
            }
        }
    }

    /// Connect to the remote with dagsnap's HTTP settings and, if configured, its credentials.
    /// Without dagsnap credentials, git's credential helpers (if configured) are asked as usual.
    fn connect<'c, 'r>(
        &self,
        git_remote: &'c gix::Remote<'r>,
    ) -> Result<Connection<'c, 'r>, SourceError> {
        let mut connection = self.open_transport(git_remote)?;
        if !self.remote.is_http() {
            return Ok(connection);
        }
        if let Some(options) = self.transport_options()? {
            connection = connection.with_transport_options(options);
        }
        if let Some(credentials) = self.credentials_fn() {
            connection = connection.with_credentials(credentials);
        }
        Ok(connection)
    }

    /// A connection whose transport is made but not configured (over HTTP: on the cache's
    /// client, in the protocol version its configuration names). The caller configures it
    /// ([`Self::transport_options`], [`Self::credentials_fn`]) or lets gix's handshake do so.
    pub(super) fn open_transport<'c, 'r>(
        &self,
        git_remote: &'c gix::Remote<'r>,
    ) -> Result<Connection<'c, 'r>, SourceError> {
        let (repo, remote, http) = (self.repo, self.remote, self.http);
        if !remote.is_http() {
            return git_remote
                .connect(gix::remote::Direction::Fetch)
                .map_err(|e| self.error("connect to", &e));
        }
        // A transport of its own for this conversation, over the HTTP client kept for the cache.
        let url = gix::url::parse(gix::bstr::BStr::new(remote.url.as_str()))
            .map_err(|e| self.error("connect to", &gix::Error::from_error(e)))?;
        let v1 = repo
            .config_snapshot()
            .string("protocol.version")
            .is_some_and(|v| v.as_slice() == b"1");
        let version = if v1 {
            gix::protocol::transport::Protocol::V1
        } else {
            gix::protocol::transport::Protocol::V2
        };
        let transport: Box<dyn gix::protocol::transport::client::blocking_io::Transport + Send> =
            Box::new(http.connect(url, version));
        Ok(git_remote.to_connection_with_transport(transport))
    }

    /// How the transport is configured before its handshake: dagsnap's HTTP settings (CA,
    /// proxy, cookie, timeouts), or git's configuration for other transports.
    pub(super) fn transport_options(&self) -> Result<Option<Box<dyn std::any::Any>>, SourceError> {
        let (repo, remote) = (self.repo, self.remote);
        let from_config = repo
            .transport_options(remote.url.as_str(), None)
            .map_err(|e| self.error("configure HTTP for", &e))?;
        if !remote.is_http() {
            return Ok(from_config);
        }
        let https = remote.url.to_ascii_lowercase().starts_with("https://");
        let cookie = match &remote.access.cookie_file {
            Some(file) => {
                super::credentials::cookie_header(file, &remote.url).map_err(|source| {
                    SourceError::Access {
                        url: remote.display_url(),
                        source,
                    }
                })?
            }
            None => None,
        };
        Ok(Some(remote.access.http_options(from_config, https, cookie)))
    }

    /// What answers the server's request for credentials: dagsnap's HTTP user and password when
    /// it has them (`None`: git's credential helpers, as git would ask them).
    pub(super) fn credentials_fn(&self) -> Option<gix::protocol::AuthenticateFn<'static>> {
        let (Some((username, password)), true) =
            (self.credentials, self.remote.access.has_http_credentials())
        else {
            return None;
        };
        let (username, password) = (username.to_string(), password.to_string());
        Some(Box::new(move |action| match action {
            gix::credentials::helper::Action::Get(context) => {
                Ok(Some(gix::credentials::protocol::Outcome {
                    identity: gix::sec::identity::Account {
                        username: username.clone(),
                        password: password.clone(),
                        oauth_refresh_token: None,
                    },
                    next: context.into(),
                }))
            }
            // Nothing to store or forget: the credentials come from dagsnap's configuration.
            _ => Ok(None),
        }))
    }

    /// A gix remote for `remote.url` that fetches exactly `specs` and no tags.
    pub(super) fn make_remote(&self, specs: &[String]) -> Result<gix::Remote<'a>, SourceError> {
        let (repo, remote) = (self.repo, self.remote);
        let invalid = |e: gix::Error| SourceError::Remote {
            during: "set up a fetch from",
            url: remote.display_url(),
            cause: remote.redactor().redact(&error_chain(&e)),
        };
        repo.remote_at(remote.url.as_str())
            .map_err(invalid)?
            .with_fetch_tags(gix::remote::fetch::Tags::None)
            .with_refspecs(
                specs.iter().map(String::as_str),
                gix::remote::Direction::Fetch,
            )
            .map_err(invalid)
    }

    /// Run one fetch exchange for `spec_source`: handshake and ref listing always, pack
    /// negotiation only if the advertised commit is not in the cache yet.
    ///
    /// `local_ref` is where the commit goes in the cache.
    pub(super) fn fetch_if_needed(
        &self,
        spec_source: &str,
        local_ref: &str,
    ) -> Result<Fetched, SourceError> {
        let (repo, remote, progress) = (self.repo, self.remote, self.progress);
        let git_remote = self.make_remote(&[format!("+{spec_source}:{local_ref}")])?;
        // The listing this exchange makes is the one a later poll may ask again, not any before it.
        self.http.forget_listing();
        let connection = self.connect(&git_remote)?;
        let prepare = connection
            .prepare_fetch(progress.add_child("list refs"), Default::default())
            .map_err(|e| self.error("list refs of", &e))?;
        let answered_at = std::time::SystemTime::now();

        let ref_map = prepare.ref_map();
        let mapping = ref_map.mappings.iter().find(|m| {
            matches!(
                m.spec_index,
                gix::protocol::fetch::refmap::SpecIndex::ExplicitInRemote(_)
            )
        });
        let Some(mapping) = mapping else {
            return Err(SourceError::RefNotFound {
                wanted: spec_source.to_string(),
                url: remote.display_url(),
                known: ref_map
                    .remote_refs
                    .iter()
                    .map(|r| r.unpack().0.to_string())
                    .collect(),
            });
        };
        let ref_name = mapping
            .remote
            .as_target()
            .or_else(|| mapping.remote.as_name())
            .map(|n| n.to_string())
            .unwrap_or_else(|| spec_source.to_string());
        let Some(commit) = mapping.remote.peeled_id().map(|id| id.to_owned()) else {
            return Err(SourceError::EmptyRemote {
                url: remote.display_url(),
            });
        };
        // An annotated tag: the ref's own target is the tag object (its signature is verified
        // with --verify-signatures tag), which must be in the cache too.
        let tag = match &mapping.remote {
            gix::protocol::fetch::refmap::Source::Ref(r) => match r.unpack() {
                (_, Some(target), Some(_)) if target != commit.as_ref() => Some(target.to_owned()),
                _ => None,
            },
            gix::protocol::fetch::refmap::Source::ObjectId(_) => None,
        };

        let present = repo.has_object(commit) && tag.is_none_or(|t| repo.has_object(t));
        let (fetched, served) = match &remote.selection {
            // Checked by this process already: the selection's objects are all here.
            Some(_) if present && self.complete == Some(commit) => {
                drop(prepare);
                (false, None)
            }
            Some(selection) => {
                // Requests gix's fetch cannot make (a filter, objects by id): this
                // conversation ends with a flush, and each request has its own.
                drop(prepare);
                let haves = followed_commits(repo)?;
                let want = tag.unwrap_or(commit);
                let served = self.fetch_selection(selection, commit, want, &haves)?;
                if served.is_some() {
                    self.point(local_ref, want)?;
                }
                (served.is_some(), served)
            }
            None if present => {
                // Unchanged (or already fetched by an earlier cycle): dropping `prepare` ends
                // the conversation with a flush, without negotiating a pack.
                drop(prepare);
                (false, None)
            }
            None => {
                // Not gix's receive: dagsnap indexes the pack itself, so that no object is
                // ever held whole in memory ([`super::index_pack`]).
                drop(prepare);
                let want = tag.unwrap_or(commit);
                self.request(&[want], &followed_commits(repo)?, None, true)?;
                self.point(local_ref, want)?;
                (true, None)
            }
        };

        let object = repo.find_header(commit).map_err(|e| SourceError::Remote {
            during: "find the fetched commit from",
            url: remote.display_url(),
            cause: format!("{commit} is missing after the fetch: {}", error_chain(&e)),
        })?;
        if object.kind() != gix::object::Kind::Commit {
            return Err(SourceError::NotACommit {
                what: ref_name,
                url: remote.display_url(),
                kind: object.kind().to_string(),
            });
        }
        Ok(Fetched {
            commit,
            ref_name,
            fetched,
            tag,
            served,
            answered_at,
        })
    }

    /// Point the cache's `local_ref` at `id`, as gix's fetch does with its refspec.
    fn point(&self, local_ref: &str, id: ObjectId) -> Result<(), SourceError> {
        self.repo
            .reference(
                local_ref,
                id,
                gix::refs::transaction::PreviousValue::Any,
                "fetch",
            )
            .map(drop)
            .map_err(|e| SourceError::CacheRepo {
                dir: self.repo.path().to_path_buf(),
                cause: format!("cannot point {local_ref} at {id}: {}", error_chain(&e)),
            })
    }

    pub(super) fn error(&self, during: &'static str, err: &gix::Error) -> SourceError {
        remote_error(self.remote, during, err, self.interrupt)
    }
}

/// The HTTP user and password as of now (a password file is read again each time, an askpass
/// service or a GitHub App asked), for http remotes.
pub(super) fn current_credentials(
    remote: &Remote,
) -> Result<Option<(String, String)>, SourceError> {
    if !remote.is_http() {
        return Ok(None);
    }
    remote
        .access
        .credentials(&remote.redactor)
        .map_err(|source| SourceError::Access {
            url: remote.display_url(),
            source,
        })
}

/// A failed step of the conversation as an error that says what to do; `Cancelled` when the
/// process was asked to stop.
fn remote_error(
    remote: &Remote,
    during: &'static str,
    err: &gix::Error,
    interrupt: &AtomicBool,
) -> SourceError {
    if interrupt.load(Ordering::Relaxed) {
        return SourceError::Cancelled;
    }
    let mut cause = error_chain(err);
    if let (Some(path), "connect to" | "list refs of") = (remote.local_path(), during) {
        if let Some(said) = local_server_says(&path) {
            cause = format!("{cause} | git upload-pack: {said}");
        }
    }
    // A pack that ends before it is complete was cut off by the server (it failed while
    // packing: a repository it cannot pack, such as a tree deeper than its core.maxTreeDepth)
    // or by the network; a fresh cache would receive the same.
    let during = match during {
        "fetch from" if ends_early(err) => {
            cause = format!(
                "the pack ended before it was complete: the server stopped sending it (its own log says why, e.g. a repository it cannot pack) or the connection was cut; {cause}"
            );
            "receive a complete pack from"
        }
        other => other,
    };
    SourceError::Remote {
        during,
        url: remote.display_url(),
        cause: remote.redactor().redact(&cause),
    }
}

/// Whether `err` says that a stream ended early (an `UnexpectedEof` somewhere in its causes).
fn ends_early(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(err);
    while let Some(e) = current {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::UnexpectedEof)
        {
            return true;
        }
        current = e.source();
    }
    let text = error_chain(err);
    text.contains("failed to fill whole buffer") || text.contains("early eof")
}

/// What `git upload-pack`, the server side of a local remote, says when asked for its refs.
/// gix runs it with its error output discarded, so a refusal (a repository owned by another
/// user: "dubious ownership") reaches dagsnap only as a closed pipe. Asked again, after a
/// failure only, and for at most a few seconds.
fn local_server_says(path: &Path) -> Option<String> {
    use std::io::Read;
    use std::process::{Command, Stdio};
    let mut child = Command::new("git")
        .args(["upload-pack", "--advertise-refs"])
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while child.try_wait().ok()?.is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut said = String::new();
    child
        .stderr
        .take()?
        .take(4096)
        .read_to_string(&mut said)
        .ok()?;
    let said = crate::git::diagnose::one_line(&said);
    (!said.is_empty()).then_some(said)
}

/// Add what ssh said (its log of this fetch) to a remote failure: gix only sees the connection
/// close, ssh knows why.
pub(super) fn with_ssh_log(err: SourceError, log: &Path, remote: &Remote) -> SourceError {
    match err {
        SourceError::Remote { during, url, cause } if remote.is_ssh() => {
            let said = std::fs::read_to_string(log).unwrap_or_default();
            let said = crate::git::diagnose::one_line(&remote.redactor().redact(&said));
            let cause = if said.is_empty() {
                cause
            } else {
                format!("{cause} | ssh: {said}")
            };
            SourceError::Remote { during, url, cause }
        }
        other => other,
    }
}
