//! `sync`'s arguments: where to publish, what to follow, how often, and the groups its `--help`
//! shows (HTTP endpoints, the check, hooks, access, retention).

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, ValueEnum};

use super::values::{
    self, parse_bool, parse_duration, parse_http_method, parse_jobs, parse_positive_duration,
    parse_signal, parse_success_status, parse_webhook_url,
};
use super::PublishRoot;

/// `--submodules`: git-sync's modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Submodules {
    Off,
    Shallow,
    Recursive,
}

#[derive(Debug, Args)]
pub struct SyncArgs {
    #[command(flatten, next_help_heading = "Root and cache")]
    pub root: PublishRoot,

    /// Repository to follow: https://..., ssh://..., git@host:path, file://... or a local path.
    #[arg(long, env = "DAGSNAP_REPO", help_heading = "Repository", required_unless_present_any = ["sources", "sources_file"], conflicts_with_all = ["sources", "sources_file"])]
    pub repo: Option<String>,

    /// Branch, tag (annotated tags are peeled) or full commit id; unset follows the remote's HEAD.
    #[arg(long = "ref", env = "DAGSNAP_REF", help_heading = "Repository")]
    pub git_ref: Option<String>,

    /// Commits of history to fetch; 0 fetches all history.
    #[arg(
        long,
        env = "DAGSNAP_DEPTH",
        default_value_t = 1,
        help_heading = "Repository"
    )]
    pub depth: u32,

    /// Private git cache on local disk (never under --root), only this uid may write it.
    /// Default: $XDG_CACHE_HOME/dagsnap, ~/.cache/dagsnap or $TMPDIR/dagsnap-<uid>, keyed by
    /// repository and root.
    #[arg(long, env = "DAGSNAP_CACHE_DIR", help_heading = "Root and cache")]
    pub cache_dir: Option<PathBuf>,

    /// Time between polls of the remote.
    #[arg(long, env = "DAGSNAP_PERIOD", default_value = "10s", value_parser = parse_positive_duration, help_heading = "Schedule")]
    pub period: Duration,

    /// Exit 0 after the first successful sync (for init containers); exit 1 if it fails.
    #[arg(long, env = "DAGSNAP_ONE_TIME", help_heading = "Schedule", value_parser = parse_bool)]
    pub one_time: bool,

    /// Upper bound for one cycle (fetch, checkout, publish); a cycle that takes longer is
    /// abandoned and counts as a failure.
    #[arg(long, env = "DAGSNAP_SYNC_TIMEOUT", default_value = "5m", value_parser = parse_positive_duration, help_heading = "Schedule")]
    pub sync_timeout: Duration,

    /// Consecutive failed cycles tolerated before exiting non-zero; -1 never exits (backs off
    /// and retries). Default: -1, or 0 with --one-time.
    #[arg(
        long,
        env = "DAGSNAP_MAX_FAILURES",
        allow_negative_numbers = true,
        help_heading = "Schedule"
    )]
    pub max_failures: Option<i64>,

    /// Until the first successful sync after start, wait this long between attempts instead of
    /// backing off (for a network that is slow to come up, like a service mesh's sidecar).
    #[arg(long, env = "DAGSNAP_INIT_PERIOD", value_parser = parse_positive_duration, help_heading = "Schedule")]
    pub init_period: Option<Duration>,

    /// Consecutive failures tolerated before the first successful sync after start; -1 never
    /// exits. Default: as --max-failures.
    #[arg(
        long,
        env = "DAGSNAP_INIT_MAX_FAILURES",
        allow_negative_numbers = true,
        help_heading = "Schedule"
    )]
    pub init_max_failures: Option<i64>,

    /// No two link moves closer than this (the newest commit goes live when the interval
    /// ends). For Airflow 2, which resolves the link for every file it opens: at most one swap
    /// falls inside a parsing pass shorter than this. Off by default.
    #[arg(long, env = "DAGSNAP_MIN_PUBLISH_INTERVAL", value_parser = parse_positive_duration, help_heading = "Schedule")]
    pub min_publish_interval: Option<Duration>,

    /// Also sync now when this signal arrives (a name like HUP or SIGUSR1, or a number).
    /// SIGHUP always does.
    #[arg(long, env = "DAGSNAP_SYNC_ON_SIGNAL", value_parser = parse_signal, help_heading = "Schedule")]
    pub sync_on_signal: Option<i32>,

    /// Longest wait between retries after failures (backoff doubles from --period up to this).
    #[arg(long, env = "DAGSNAP_BACKOFF_MAX", default_value = "5m", value_parser = parse_positive_duration, help_heading = "Schedule")]
    pub backoff_max: Duration,

    #[command(flatten, next_help_heading = "Several repositories, one snapshot")]
    pub sources: super::sources::SourceArgs,

    #[command(flatten, next_help_heading = "HTTP endpoints")]
    pub http: HttpArgs,

    #[command(flatten, next_help_heading = "Check before publishing")]
    pub check: CheckArgs,

    #[command(flatten, next_help_heading = "Hooks and files")]
    pub hooks: HookArgs,

    #[command(flatten, next_help_heading = "Credentials and trust")]
    pub access: AccessArgs,

    #[command(flatten, next_help_heading = "Retention")]
    pub retention: RetentionArgs,

    /// Make what dagsnap creates under the root (records, locks, directories; snapshots stay
    /// read-only) writable by the group, for publishers that run as different users of one
    /// group on a shared volume.
    #[arg(long, env = "DAGSNAP_GROUP_WRITE", value_parser = parse_bool, help_heading = "Root and cache")]
    pub group_write: bool,

    /// Take over a root that git-sync publishes (its .git, .worktrees and link): dagsnap builds
    /// its snapshots alongside, moves the link once git-sync has been quiet for --adopt-after,
    /// and removes git-sync's files after --grace. Implied when dagsnap runs as git-sync.
    #[arg(long, env = "DAGSNAP_ADOPT_GIT_SYNC", value_parser = parse_bool, help_heading = "Root and cache")]
    pub adopt_git_sync: bool,

    /// How long git-sync must have left the root alone before dagsnap moves the link it
    /// published (longer than git-sync's --period).
    #[arg(long, env = "DAGSNAP_ADOPT_AFTER", default_value = "30s", value_parser = parse_duration, help_heading = "Root and cache")]
    pub adopt_after: Duration,

    /// What to do with submodules: recursive publishes each submodule's recorded commit, and
    /// theirs, as `git clone --recurse-submodules` shows them (each fetched into a private cache
    /// of its own); shallow only the commit's own submodules; off publishes each as an empty
    /// directory, as `git clone` leaves it.
    #[arg(long, env = "DAGSNAP_SUBMODULES", value_enum, default_value_t = Submodules::Recursive, help_heading = "Repository")]
    pub submodules: Submodules,

    /// Publish only this directory of each commit (e.g. `dags`): the snapshot is the tree at
    /// that path, and a commit that changes nothing in it does not move the link.
    #[arg(long, env = "DAGSNAP_SUBDIR", help_heading = "Repository")]
    pub subdir: Option<String>,

    /// Publish only the paths git's sparse checkout would leave, with the patterns in this file
    /// (as git reads .git/info/sparse-checkout: cone-mode or plain patterns). Read at start.
    #[arg(
        long,
        env = "DAGSNAP_SPARSE_CHECKOUT_FILE",
        help_heading = "Repository"
    )]
    pub sparse_checkout_file: Option<std::path::PathBuf>,

    /// Threads that write each snapshot (directories, links, files, modes): on a network volume
    /// every such call is a round trip, and parallel ones overlap. 1 writes one file at a time.
    #[arg(long, env = "DAGSNAP_BUILD_JOBS", default_value_t = crate::store::snapshot::DEFAULT_BUILD_JOBS, value_parser = parse_jobs, help_heading = "Root and cache")]
    pub build_jobs: usize,

    /// Write every file of each new snapshot instead of hard-linking unchanged files from the
    /// previous one (for filesystems where links misbehave; costs time and space).
    #[arg(long, env = "DAGSNAP_FULL_COPY", help_heading = "Root and cache", value_parser = parse_bool)]
    pub full_copy: bool,

    /// How often the loop checks the live snapshot against its entry list (types, modes,
    /// sizes; no content is read) and, if it was changed, rebuilds it and swaps the link to the
    /// rebuilt copy. 0 turns it off.
    #[arg(long, env = "DAGSNAP_VERIFY_PERIOD", default_value = "10m", value_parser = parse_duration, help_heading = "Schedule")]
    pub verify_period: Duration,

    /// How often a long fetch or checkout logs its progress (objects, bytes, rate, files).
    #[arg(long, env = "DAGSNAP_PROGRESS_INTERVAL", default_value = "5s", value_parser = parse_positive_duration, help_heading = "Schedule")]
    pub progress_interval: Duration,

    /// How long to wait for another publisher holding the root's lock before skipping a cycle.
    #[arg(long, env = "DAGSNAP_LOCK_TIMEOUT", default_value = "30s", value_parser = parse_duration, help_heading = "Root and cache")]
    pub lock_timeout: Duration,
}

impl SyncArgs {
    /// Consecutive failures tolerated: `None` means never give up.
    pub fn failure_budget(&self) -> Option<u64> {
        match self.max_failures {
            Some(n) if n < 0 => None,
            Some(n) => Some(n as u64),
            None if self.one_time => Some(0),
            None => None,
        }
    }

    /// Consecutive failures tolerated before the first success after start.
    pub fn init_failure_budget(&self) -> Option<u64> {
        match self.init_max_failures {
            Some(n) if n < 0 => None,
            Some(n) => Some(n as u64),
            None => self.failure_budget(),
        }
    }

    /// The cache directory: as given, or a default on local disk keyed by repository and root
    /// so that two publishers on one host, each for its own root, never collide.
    pub fn cache_dir(&self, display_url: &str) -> PathBuf {
        if let Some(dir) = &self.cache_dir {
            return dir.clone();
        }
        let root =
            std::fs::canonicalize(&self.root.root).unwrap_or_else(|_| self.root.root.clone());
        let key = format!(
            "{:016x}",
            fnv1a(format!("{display_url}\n{}", root.display()).as_bytes())
        );
        default_cache_base().join(key)
    }
}

/// `$XDG_CACHE_HOME/dagsnap`, else `$HOME/.cache/dagsnap`, else `dagsnap-<uid>` in the temp
/// dir: whichever is writable first. Containers often run as a uid without a home (HOME=/), so
/// the fallback matters; it is per uid because another user could create a shared one first.
pub fn default_cache_base() -> PathBuf {
    let candidates = [
        std::env::var_os("XDG_CACHE_HOME").map(PathBuf::from),
        std::env::var_os("HOME")
            .filter(|h| !h.is_empty() && Path::new(h) != Path::new("/"))
            .map(|h| PathBuf::from(h).join(".cache")),
    ];
    for candidate in candidates.into_iter().flatten() {
        let probe = nearest_existing(&candidate);
        if nix::unistd::access(&probe, nix::unistd::AccessFlags::W_OK).is_ok() {
            return candidate.join("dagsnap");
        }
    }
    std::env::temp_dir().join(format!("dagsnap-{}", nix::unistd::geteuid()))
}

fn nearest_existing(path: &Path) -> PathBuf {
    let mut p = path.to_path_buf();
    while !p.exists() {
        if !p.pop() {
            break;
        }
    }
    p
}

/// Stable across releases and platforms (unlike `DefaultHasher`), so a cache keeps its name.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}

/// `/healthz`, `/readyz`, `/metrics` and `POST /sync`.
#[derive(Debug, Args)]
pub struct HttpArgs {
    /// Serve the endpoints on this address: `:8080` (every interface), `127.0.0.1:8080`,
    /// `[::]:8080`. Off by default.
    #[arg(long, env = "DAGSNAP_HTTP_BIND")]
    pub http_bind: Option<String>,

    /// /readyz fails once the last successful check of the remote is older than this (DAGs
    /// going stale shows in the pod's readiness). Default: readiness only needs a live snapshot.
    #[arg(long, env = "DAGSNAP_READY_MAX_AGE", value_parser = parse_positive_duration)]
    pub ready_max_age: Option<Duration>,

    /// `POST /sync` requires `Authorization: Bearer <token>` with the token in this file.
    #[arg(long, env = "DAGSNAP_TRIGGER_TOKEN_FILE")]
    pub trigger_token_file: Option<PathBuf>,

    /// `POST /sync` accepts push webhooks signed with the secret in this file: GitHub's
    /// X-Hub-Signature-256, GitLab's X-Gitlab-Token. A push to another ref is ignored.
    #[arg(long, env = "DAGSNAP_WEBHOOK_SECRET_FILE")]
    pub webhook_secret_file: Option<PathBuf>,
}

/// The gate before the link moves.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Run this through `sh -c` in each new snapshot before the link moves to it, with
    /// DAGSNAP_COMMIT, DAGSNAP_PREVIOUS, DAGSNAP_SNAPSHOT, DAGSNAP_REF and GITSYNC_HASH set.
    /// Exit 0 publishes; anything else keeps the live snapshot and records why. Each commit is
    /// checked once (`dagsnap recheck` forgets a verdict).
    #[arg(long, env = "DAGSNAP_CHECK_COMMAND")]
    pub check_command: Option<String>,

    /// Run the check as a program rather than through `sh -c` (git-sync's pre-publish hook:
    /// the path of an executable, without arguments).
    #[arg(skip)]
    pub check_direct: bool,

    /// Kill the check (and what it started) after this long and reject the commit; shorter
    /// than --sync-timeout.
    #[arg(long, env = "DAGSNAP_CHECK_TIMEOUT", default_value = "2m", value_parser = parse_positive_duration)]
    pub check_timeout: Duration,

    /// Publish only signed code: `commit` (the commit carries a good signature by a trusted
    /// key), `tag` (--ref names an annotated tag signed by a trusted key), `tag-and-commit`
    /// (both). A refused commit is never live; submodule commits are not verified.
    #[arg(long, env = "DAGSNAP_VERIFY_SIGNATURES", value_parser = crate::signatures::Mode::parse)]
    pub verify_signatures: Option<crate::signatures::Mode>,

    /// Trusted SSH signing keys, in git's allowed-signers format (gpg.ssh.allowedSignersFile);
    /// re-read when it changes.
    #[arg(long, env = "DAGSNAP_ALLOWED_SIGNERS")]
    pub allowed_signers: Option<PathBuf>,

    /// Revoked SSH keys, one public key per line (gpg.ssh.revocationFile); re-read when it
    /// changes.
    #[arg(long, env = "DAGSNAP_REVOKED_KEYS")]
    pub revoked_keys: Option<PathBuf>,

    /// Trusted OpenPGP keys: exported public keys (`gpg --export`, binary or armored);
    /// re-read when it changes.
    #[arg(long, env = "DAGSNAP_GPG_KEYRING")]
    pub gpg_keyring: Option<PathBuf>,
}

impl CheckArgs {
    /// The configured check; an empty command (a chart that renders the variable empty) is none.
    pub fn command(&self) -> Option<&str> {
        self.check_command
            .as_deref()
            .filter(|c| !c.trim().is_empty())
    }
}

/// What runs after a publish, and the touch and error files.
#[derive(Debug, Args)]
pub struct HookArgs {
    /// Run this through `sh -c` after every publish (and the first sync after start), in the
    /// new snapshot, with DAGSNAP_COMMIT, DAGSNAP_PREVIOUS, DAGSNAP_SNAPSHOT, DAGSNAP_REF and
    /// GITSYNC_HASH set. Runs beside the loop, for the newest commit.
    #[arg(long, env = "DAGSNAP_EXECHOOK_COMMAND")]
    pub exechook_command: Option<String>,

    /// Run the exec hook as a program rather than through `sh -c` (git-sync's way: the command
    /// is the path of an executable, without arguments).
    #[arg(skip)]
    pub exechook_direct: bool,

    /// Kill the exec hook (and what it started) after this long.
    #[arg(long, env = "DAGSNAP_EXECHOOK_TIMEOUT", default_value = "30s", value_parser = parse_positive_duration)]
    pub exechook_timeout: Duration,

    /// Wait this long before running a failed exec hook again.
    #[arg(long, env = "DAGSNAP_EXECHOOK_BACKOFF", default_value = "3s", value_parser = parse_positive_duration)]
    pub exechook_backoff: Duration,

    /// Call this URL after every publish with the publication as JSON (commit, previous,
    /// ref, snapshot, time) and a Gitsync-Hash header.
    #[arg(long, env = "DAGSNAP_WEBHOOK_URL", value_parser = parse_webhook_url)]
    pub webhook_url: Option<String>,

    #[arg(long, env = "DAGSNAP_WEBHOOK_METHOD", default_value = "POST", value_parser = parse_http_method)]
    pub webhook_method: String,

    /// The status that means the webhook succeeded; 0 accepts any answer.
    #[arg(long, env = "DAGSNAP_WEBHOOK_SUCCESS_STATUS", default_value_t = 200, value_parser = parse_success_status)]
    pub webhook_success_status: u16,

    #[arg(long, env = "DAGSNAP_WEBHOOK_TIMEOUT", default_value = "1s", value_parser = parse_positive_duration)]
    pub webhook_timeout: Duration,

    #[arg(long, env = "DAGSNAP_WEBHOOK_BACKOFF", default_value = "3s", value_parser = parse_positive_duration)]
    pub webhook_backoff: Duration,

    /// Touch this file after every publish (absolute, or relative to --root).
    #[arg(long, env = "DAGSNAP_TOUCH_FILE")]
    pub touch_file: Option<PathBuf>,

    /// Write the last error here as JSON (absolute, or relative to --root); removed after a
    /// successful sync.
    #[arg(long, env = "DAGSNAP_ERROR_FILE")]
    pub error_file: Option<PathBuf>,
}

/// Credentials and trust for the remote. Secrets are never taken as flags (they would show in
/// `ps`): a password comes from `--password-file` or the `DAGSNAP_PASSWORD` variable.
#[derive(Debug, Args)]
pub struct AccessArgs {
    /// User name for HTTPS. GitHub tokens: any name (e.g. x-access-token); GitLab deploy
    /// tokens: the token's user name.
    #[arg(long, env = "DAGSNAP_USERNAME")]
    pub username: Option<String>,

    /// File holding the HTTPS password or token (a mounted secret). Read again before every
    /// fetch, so a rotated token needs no restart. Alternatively set DAGSNAP_PASSWORD.
    #[arg(long, env = "DAGSNAP_PASSWORD_FILE")]
    pub password_file: Option<PathBuf>,

    /// The password given by other means than a file (git-sync's $GITSYNC_PASSWORD).
    #[arg(skip)]
    pub password: Option<String>,

    /// Allow sending credentials over plain http:// (they travel in clear text).
    #[arg(long, env = "DAGSNAP_ALLOW_INSECURE_HTTP_CREDENTIALS", value_parser = parse_bool)]
    pub allow_insecure_http_credentials: bool,

    /// Extra CA certificates (PEM) to trust for HTTPS, for a server with its own CA. The system
    /// store, SSL_CERT_FILE, and git's GIT_SSL_CAINFO / http.sslCAInfo are trusted too.
    #[arg(long, env = "DAGSNAP_CA_FILE")]
    pub ca_file: Option<PathBuf>,

    /// SSH private key (a deploy key); repeat for several. Without one, the ssh agent and the
    /// user's ssh configuration are used.
    #[arg(
        long = "ssh-key-file",
        env = "DAGSNAP_SSH_KEY_FILE",
        value_delimiter = ','
    )]
    pub ssh_key_files: Vec<PathBuf>,

    /// known_hosts file with the server's host key (default: the user's ~/.ssh/known_hosts).
    #[arg(long, env = "DAGSNAP_SSH_KNOWN_HOSTS_FILE")]
    pub ssh_known_hosts_file: Option<PathBuf>,

    /// Check the SSH host key against known hosts. `--ssh-known-hosts=false` accepts any host
    /// key, so anyone between you and the server can serve you DAGs: only for tests.
    #[arg(long, env = "DAGSNAP_SSH_KNOWN_HOSTS", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true", value_parser = parse_bool)]
    pub ssh_known_hosts: bool,

    /// SSH port, for the scp-like form `user@host:path`, which cannot carry one (the
    /// `ssh://user@host:port/path` form can).
    #[arg(long, env = "DAGSNAP_SSH_PORT")]
    pub ssh_port: Option<u16>,

    /// git configuration for every fetch, as `git -c` would give it, in git-sync's syntax:
    /// `key:value[,key:value...]` (quote a key or value holding `:` or `,`); repeatable. For
    /// example `protocol.file.allow:always` lets a repository fetched over the network have
    /// submodules on this machine's disk, which git (and dagsnap) refuse by default.
    #[arg(long = "git-config", env = "DAGSNAP_GIT_CONFIG", value_parser = parse_git_config_arg)]
    pub git_config: Vec<GitConfig>,

    /// A cookie file (Netscape format, git's http.cookieFile): the cookies that match the
    /// repository's URL go with every request, read again at every fetch.
    #[arg(long, env = "DAGSNAP_COOKIE_FILE")]
    pub cookie_file: Option<PathBuf>,

    /// A URL asked for HTTPS credentials before every fetch, answering `username=` and
    /// `password=` lines (git-sync's --askpass-url; a cloud's metadata server, say).
    #[arg(long, env = "DAGSNAP_ASKPASS_URL")]
    pub askpass_url: Option<String>,

    /// A GitHub App's private key (PEM file): its installation token is the HTTPS password,
    /// renewed before it expires. With --github-app-client-id (or -application-id) and
    /// --github-app-installation-id.
    #[arg(long, env = "DAGSNAP_GITHUB_APP_PRIVATE_KEY_FILE")]
    pub github_app_private_key_file: Option<PathBuf>,

    /// The GitHub App's private key itself (git-sync's $GITSYNC_GITHUB_APP_PRIVATE_KEY).
    #[arg(skip)]
    pub github_app_private_key: Option<String>,

    /// The GitHub App's client id (the JWT's issuer).
    #[arg(long, env = "DAGSNAP_GITHUB_APP_CLIENT_ID")]
    pub github_app_client_id: Option<String>,

    /// The GitHub App's application id (the JWT's issuer, when no client id is given).
    #[arg(long, env = "DAGSNAP_GITHUB_APP_APPLICATION_ID")]
    pub github_app_application_id: Option<u64>,

    /// The installation of the GitHub App whose token is used.
    #[arg(long, env = "DAGSNAP_GITHUB_APP_INSTALLATION_ID")]
    pub github_app_installation_id: Option<u64>,

    /// The GitHub API's base URL (a GitHub Enterprise server's).
    #[arg(
        long,
        env = "DAGSNAP_GITHUB_BASE_URL",
        default_value = "https://api.github.com/"
    )]
    pub github_base_url: String,
}

/// One `--git-config`'s pairs.
#[derive(Debug, Clone)]
pub struct GitConfig(pub Vec<(String, String)>);

fn parse_git_config_arg(text: &str) -> Result<GitConfig, String> {
    values::parse_git_config(text).map(GitConfig)
}

impl AccessArgs {
    /// The access settings, with the one source of the HTTPS password: the file, or
    /// DAGSNAP_PASSWORD, or an askpass service, or a GitHub App. Two at once are refused.
    pub fn access(&self, request_timeout: Duration) -> Result<crate::git::access::Access, String> {
        use crate::git::access::{Access, Password, Ssh};
        let given = self
            .password
            .clone()
            .or_else(|| std::env::var("DAGSNAP_PASSWORD").ok())
            .filter(|value| !value.is_empty());
        let mut sources = Vec::new();
        if let Some(file) = &self.password_file {
            sources.push(("--password-file", Password::File(file.clone())));
        } else if let Some(value) = given {
            sources.push(("DAGSNAP_PASSWORD", Password::Fixed(value)));
        }
        if let Some(url) = &self.askpass_url {
            sources.push(("--askpass-url", Password::Askpass(url.clone())));
        }
        if let Some(app) = self.github_app()? {
            sources.push(("--github-app-*", Password::GitHubApp(app)));
        }
        if sources.len() > 1 {
            let names: Vec<&str> = sources.iter().map(|(name, _)| *name).collect();
            return Err(format!(
                "{} each give the HTTPS password: keep one",
                names.join(" and ")
            ));
        }
        let password = sources.pop().map(|(_, source)| source);
        Ok(Access {
            username: self.username.clone(),
            password,
            allow_insecure_http: self.allow_insecure_http_credentials,
            ca_file: self.ca_file.clone(),
            ssh: Ssh {
                key_files: self.ssh_key_files.clone(),
                known_hosts_file: self.ssh_known_hosts_file.clone(),
                check_host_keys: self.ssh_known_hosts,
                port: self.ssh_port,
                connect_timeout: Duration::from_secs(30).min(request_timeout),
            },
            http_timeout: request_timeout,
            git_config: self.git_config.iter().flat_map(|c| c.0.clone()).collect(),
            cookie_file: self.cookie_file.clone(),
        })
    }

    /// The GitHub App, if its flags are given, checked as git-sync checks them.
    fn github_app(&self) -> Result<Option<crate::git::GitHubApp>, String> {
        use crate::git::{AppKey, GitHubApp};
        let key = match (
            &self.github_app_private_key_file,
            &self.github_app_private_key,
        ) {
            (Some(file), _) => Some(AppKey::File(file.clone())),
            (None, Some(pem)) if !pem.is_empty() => Some(AppKey::Pem(pem.clone())),
            _ => None,
        };
        let issuer = self
            .github_app_client_id
            .clone()
            .filter(|id| !id.is_empty())
            .or_else(|| self.github_app_application_id.map(|id| id.to_string()));
        match (key, issuer, self.github_app_installation_id) {
            (None, None, None) => Ok(None),
            (Some(key), Some(issuer), Some(installation)) => Ok(Some(GitHubApp::new(
                key,
                issuer,
                installation,
                self.github_base_url.clone(),
            ))),
            _ => Err("GitHub App authentication needs the app's private key (--github-app-private-key-file), its client id (or application id) and the installation id".into()),
        }
    }
}

/// How many snapshots to keep, shared by `sync` and `gc`.
#[derive(Debug, Args)]
pub struct RetentionArgs {
    /// Snapshots to keep for rollback (the most recently live ones), besides the current and
    /// the pinned one.
    #[arg(long, env = "DAGSNAP_KEEP", default_value_t = 5)]
    pub keep: usize,

    /// Keep every snapshot that was live less than this long ago, so readers that opened it
    /// before a swap can finish. Must exceed the NFS attribute cache time (60 s by default)
    /// and the longest DAG-parsing pass.
    #[arg(long, env = "DAGSNAP_GRACE", default_value = "10m", value_parser = parse_duration)]
    pub grace: Duration,

    /// Staging directories older than this are left by a publisher that died, on any host, and
    /// are removed.
    #[arg(long, env = "DAGSNAP_STAGING_MAX_AGE", default_value = "1h", value_parser = parse_positive_duration)]
    pub staging_max_age: Duration,
}

impl RetentionArgs {
    /// The policy of a publisher whose decisions may take `pending` (its lock timeout plus
    /// its sync timeout) to reach the link.
    pub fn policy(&self, pending: Duration) -> crate::store::gc::Policy {
        crate::store::gc::Policy {
            keep: self.keep,
            grace: self.grace,
            staging_max_age: self.staging_max_age,
            pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    #[test]
    fn one_time_gives_up_on_first_failure_unless_told_otherwise() {
        let parse = |args: &[&str]| match Cli::parse_from(args).command {
            Command::Sync(s) => s.failure_budget(),
            _ => unreachable!(),
        };
        let base = ["dagsnap", "sync", "--repo", "r", "--root", "/x"];
        assert_eq!(parse(&base), None);
        assert_eq!(parse(&[&base[..], &["--one-time"]].concat()), Some(0));
        assert_eq!(
            parse(&[&base[..], &["--one-time", "--max-failures", "3"]].concat()),
            Some(3)
        );
        assert_eq!(
            parse(&[&base[..], &["--max-failures", "-1"]].concat()),
            None
        );
    }

    #[test]
    fn cache_key_is_stable_across_releases() {
        // A cache keeps its name only if the key function never changes: pinned values
        // (FNV-1a 64, the published test vectors).
        assert_eq!(fnv1a(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x85944171f73967e8);
    }
}
