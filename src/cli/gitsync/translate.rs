//! Steps 3 and 4 of the module doc: git-sync's back-compat rules and checks, then what they
//! mean for dagsnap, as a typed [`Translation`], one function per group of settings:
//! [`repository`], [`timing`], [`files`], [`hooks`], [`credentials`], [`serving`].
//!
//! The translation is handed to clap as a `sync` command line ([`Translation::argv`]), so that
//! dagsnap's own checks and its `DAGSNAP_*` defaults apply to what git-sync's configuration
//! leaves unsaid, exactly as for a `sync` typed by hand.

use std::time::Duration;

use super::flags::{GITHUB_KEY_ENV, PASSWORD_ENV};
use super::settings::{from_env, parse_credentials, Settings};
use super::{invalid, ConfigError, Note};
use crate::cli::values::parse_git_config;

/// What a git-sync configuration is, in dagsnap's `sync` settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Translation {
    pub repository: Repository,
    pub timing: Timing,
    pub files: Files,
    pub hooks: Hooks,
    pub credentials: Credentials,
    pub serving: Serving,
}

/// What to publish, and where.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Repository {
    pub root: String,
    pub repo: String,
    /// `None`: the remote's HEAD.
    pub git_ref: Option<String>,
    pub depth: i64,
    pub submodules: String,
    pub sparse_checkout_file: Option<String>,
    pub link: String,
}

/// When to sync, for how long, and when to give up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Timing {
    pub period: Duration,
    pub init_period: Option<Duration>,
    pub sync_on_signal: Option<String>,
    pub sync_timeout: Duration,
    pub one_time: bool,
    /// Failures tolerated (dagsnap's count: git-sync's minus one), -1 for never giving up.
    pub max_failures: i64,
    pub init_max_failures: Option<i64>,
}

/// What is written besides the snapshots, and for how long old ones stay.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Files {
    pub touch_file: Option<String>,
    pub error_file: Option<String>,
    pub group_write: bool,
    /// Only when git-sync's `--stale-worktree-timeout` asks for more than dagsnap's default.
    pub grace: Option<Duration>,
}

/// A hook: its command and bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    pub command: String,
    pub timeout: Duration,
    pub backoff: Duration,
}

/// The webhook git-sync calls after a sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    pub url: String,
    pub method: String,
    pub success_status: i64,
    pub timeout: Duration,
    pub backoff: Duration,
}

/// What runs after (and before) a publish.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hooks {
    pub exechook: Option<Hook>,
    /// git-sync's pre-publish hook, dagsnap's `--check-command` (no backoff: once per commit).
    pub check: Option<(String, Duration)>,
    pub webhook: Option<Webhook>,
}

/// How the remote is reached.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub username: Option<String>,
    pub password_file: Option<String>,
    /// `$GITSYNC_PASSWORD` or a `--credential` password: never on a command line.
    pub password: Option<String>,
    pub ssh_key_files: Vec<String>,
    /// For SSH remotes: whether host keys are checked, and against which file.
    pub ssh_known_hosts: Option<(bool, Option<String>)>,
    pub ca_file: Option<String>,
    /// `--git-config` keys passed on as git configuration.
    pub git_config: Vec<(String, String)>,
    /// Credentials go over plain `http://`, as git-sync sends them (warned at start).
    pub allow_insecure_http: bool,
    pub other: OtherAuth,
}

/// The HTTP endpoints and the log level.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Serving {
    pub http_bind: Option<String>,
    pub log_level: Option<&'static str>,
}

/// Every group, in git-sync's order of checks (the first problem found is the one said).
pub(super) fn translate(
    s: &Settings,
    env: &dyn Fn(&str) -> Option<String>,
    notes: &mut Vec<Note>,
) -> Result<Translation, ConfigError> {
    let repository = repository(s, notes)?;
    let timing = timing(s, notes)?;
    let files = files(s, env, notes)?;
    let hooks = hooks(s, notes)?;
    let credentials = credentials(s, env, &repository.repo, notes)?;
    let serving = serving(s, notes)?;
    let adopt_after = dagsnap_duration(env, "DAGSNAP_ADOPT_AFTER").unwrap_or(DEFAULT_ADOPT_AFTER);
    notes.push(Note::Info(format!(
        "running as git-sync: readers use {} as before; snapshots live in .dagsnap/ next to it (hidden from Airflow by .airflowignore), and a root git-sync published is taken over once git-sync has left it alone for {} (DAGSNAP_ADOPT_AFTER)",
        repository.link,
        humantime::format_duration(adopt_after)
    )));
    Ok(Translation {
        repository,
        timing,
        files,
        hooks,
        credentials,
        serving,
    })
}

/// A deprecated name of git-sync's in use (`old` standing for `new`): said in one line at start.
fn deprecated(notes: &mut Vec<Note>, old: &str, new: &str) {
    notes.push(Note::Deprecated(format!("{old} (for {new})")));
}

fn info(notes: &mut Vec<Note>, text: &str) {
    notes.push(Note::Info(text.to_string()));
}

/// `--root`, `--repo`, `--ref` (from `--branch`/`--rev`), `--depth`, `--submodules`,
/// `--sparse-checkout-file`, `--git-gc`, `--link` (from `--dest`, or the last part of `--repo`).
fn repository(s: &Settings, notes: &mut Vec<Note>) -> Result<Repository, ConfigError> {
    let root = s.string("root");
    if root.is_empty() {
        return Err(invalid("required flag: --root must be specified"));
    }
    let repo = s.string("repo");
    if repo.is_empty() {
        return Err(invalid("required flag: --repo must be specified"));
    }
    let (branch, rev) = (s.string("branch"), s.string("rev"));
    let mut git_ref = s.string("ref");
    match (branch.is_empty(), rev.is_empty() || rev == "HEAD") {
        (false, true) => {
            deprecated(notes, "--branch", "--ref");
            git_ref = branch;
        }
        (true, false) => {
            deprecated(notes, "--rev", "--ref");
            git_ref = rev;
        }
        (false, false) => {
            return Err(invalid("deprecated flag combo: can't set --ref from deprecated --branch and --rev (one or the other is OK)"))
        }
        (true, true) => {}
    }
    if git_ref.is_empty() {
        return Err(invalid("required flag: --ref must be specified"));
    }
    let depth = s.int("depth");
    if depth < 0 {
        return Err(invalid(
            "invalid flag: --depth must be greater than or equal to 0",
        ));
    }
    let submodules = s.string("submodules");
    if !["recursive", "shallow", "off"].contains(&submodules.as_str()) {
        return Err(invalid(
            "invalid flag: --submodules must be one of \"recursive\", \"shallow\", or \"off\"",
        ));
    }
    let sparse = s.string("sparse-checkout-file");
    let git_gc = s.string("git-gc");
    if !["auto", "always", "aggressive", "off"].contains(&git_gc.as_str()) {
        return Err(invalid("invalid flag: --git-gc must be one of \"auto\", \"always\", \"aggressive\", or \"off\""));
    }
    if s.given("git-gc") {
        info(
            notes,
            "--git-gc has nothing to do: dagsnap's git cache is private and bounded, and the root holds no git state",
        );
    }
    let filter = s.string("filter");
    if !filter.is_empty() {
        if !is_filter_spec(&filter) {
            return Err(invalid(format!(
                "invalid flag: --filter {filter:?} is not a git filter (blob:none, blob:limit=<n>[kmg], tree:<depth>, object:type=<type>, sparse:oid=<blob>, combine:<a>+<b>)"
            )));
        }
        let what = if sparse.is_empty() {
            "every file is published, so every blob is needed and the filter would save nothing; with --sparse-checkout-file, dagsnap fetches commits and trees without blobs, then only the selected files' blobs"
        } else {
            "with --sparse-checkout-file, dagsnap fetches commits and trees without blobs (filter blob:none), then only the selected files' blobs, from servers that filter"
        };
        info(notes, &format!("--filter {filter}: {what}"));
    }
    let mut link = s.string("link");
    if !s.string("dest").is_empty() {
        deprecated(notes, "--dest", "--link");
        link = s.string("dest");
    }
    if link.is_empty() {
        link = repo
            .trim_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string();
    }
    Ok(Repository {
        root,
        git_ref: (git_ref != "HEAD").then_some(git_ref),
        repo,
        depth,
        submodules,
        sparse_checkout_file: (!sparse.is_empty()).then_some(sparse),
        link,
    })
}

/// `--period` (from `--wait`), `--init-period`, `--sync-on-signal`, `--sync-timeout` (from
/// `--timeout`), `--one-time`, `--max-failures` (from `--max-sync-failures`),
/// `--init-max-failures`.
fn timing(s: &Settings, notes: &mut Vec<Note>) -> Result<Timing, ConfigError> {
    let mut period = s.duration("period");
    let wait = s.float("wait");
    if wait != 0.0 {
        deprecated(notes, "--wait", "--period");
        period = Duration::from_millis((wait * 1000.0).max(0.0) as u64);
    }
    if period < Duration::from_millis(10) {
        return Err(invalid("invalid flag: --period must be at least 10ms"));
    }
    let init_period = Some(s.duration("init-period")).filter(|p| !p.is_zero());
    if s.int("change-permissions") != 0 {
        return Err(invalid(
            "deprecated flag: --change-permissions is no longer supported",
        ));
    }
    let signal = s.string("sync-on-signal");
    if !signal.is_empty() {
        crate::cli::parse_signal(&signal).map_err(|_| {
            invalid("invalid flag: --sync-on-signal must be a valid signal name or number")
        })?;
    }
    let mut sync_timeout = s.duration("sync-timeout");
    let timeout = s.int("timeout");
    if timeout != 0 {
        deprecated(notes, "--timeout", "--sync-timeout");
        sync_timeout = Duration::from_secs(timeout.max(0) as u64);
    }
    if sync_timeout < Duration::from_millis(10) {
        return Err(invalid(
            "invalid flag: --sync-timeout must be at least 10ms",
        ));
    }
    let mut max_failures = s.int("max-failures");
    if s.int("max-sync-failures") != 0 {
        deprecated(notes, "--max-sync-failures", "--max-failures");
        max_failures = s.int("max-sync-failures");
    }
    let init_max_failures = s.int("init-max-failures");
    notes.push(Note::Info(if max_failures < 0 {
        "failed syncs are retried with a backoff from --period up to 5m (DAGSNAP_BACKOFF_MAX), not every --period; the published DAGs stay live".to_string()
    } else {
        format!("as git-sync, this process exits after {} failed sync(s) in a row (--max-failures {max_failures}); what is published stays live meanwhile and after, and retries back off from --period up to 5m (DAGSNAP_BACKOFF_MAX)", max_failures.max(1))
    }));
    Ok(Timing {
        period,
        init_period,
        sync_on_signal: (!signal.is_empty()).then_some(signal),
        sync_timeout,
        one_time: s.bool("one-time"),
        // git-sync exits when the failures in a row reach N (0 and 1 both mean the first
        // one); dagsnap's --max-failures counts the failures it tolerates.
        max_failures: tolerated(max_failures),
        init_max_failures: (init_max_failures > 0).then(|| tolerated(init_max_failures)),
    })
}

/// `--touch-file`, `--error-file`, `--add-user`, `--group-write`, `--stale-worktree-timeout`.
///
/// Snapshots stay `--grace` after they stop being live: dagsnap's own `DAGSNAP_GRACE` if set
/// (it wins over `--stale-worktree-timeout`, which is said), else the longer of the default
/// and `--stale-worktree-timeout`.
fn files(
    s: &Settings,
    env: &dyn Fn(&str) -> Option<String>,
    notes: &mut Vec<Note>,
) -> Result<Files, ConfigError> {
    let optional = |name: &str| Some(s.string(name)).filter(|v| !v.is_empty());
    if s.bool("add-user") {
        info(notes, "--add-user is not needed: when this uid has no passwd entry, ssh gets one through nss_wrapper, and /etc/passwd is left alone");
    }
    let stale = s.duration("stale-worktree-timeout");
    let (grace, from_flag) = match dagsnap_duration(env, "DAGSNAP_GRACE") {
        Some(grace) => {
            if s.given("stale-worktree-timeout") && stale != grace {
                info(
                    notes,
                    &format!(
                        "DAGSNAP_GRACE {} wins over --stale-worktree-timeout {}",
                        humantime::format_duration(grace),
                        humantime::format_duration(stale)
                    ),
                );
            }
            (grace, None)
        }
        None => {
            let grace = stale.max(DEFAULT_GRACE);
            (grace, (stale > DEFAULT_GRACE).then_some(stale))
        }
    };
    info(notes, &format!(
        "previous snapshots stay for {} after they stop being live (--grace), so that readers never lose files they opened",
        humantime::format_duration(grace),
    ));
    Ok(Files {
        touch_file: optional("touch-file"),
        error_file: optional("error-file"),
        group_write: s.bool("group-write"),
        grace: from_flag,
    })
}

/// dagsnap's defaults for what git-sync has no flag for (`sync`'s own defaults).
const DEFAULT_GRACE: Duration = Duration::from_secs(600);
const DEFAULT_ADOPT_AFTER: Duration = Duration::from_secs(30);

/// A duration dagsnap's own environment variable `name` sets, if it reads as one (a bad value
/// is refused by `sync` itself, with its name).
fn dagsnap_duration(env: &dyn Fn(&str) -> Option<String>, name: &str) -> Option<Duration> {
    env(name).and_then(|v| crate::cli::values::parse_duration(&v).ok())
}

/// `--exechook-*` (from `--sync-hook-command`), `--pre-publish-exechook-*`, `--webhook-*`.
fn hooks(s: &Settings, notes: &mut Vec<Note>) -> Result<Hooks, ConfigError> {
    let at_least_a_second = |flag: &str| {
        if s.duration(flag) < Duration::from_secs(1) {
            return Err(invalid(format!(
                "invalid flag: --{flag} must be at least 1s"
            )));
        }
        Ok(())
    };
    let mut exechook = s.string("exechook-command");
    if !s.string("sync-hook-command").is_empty() {
        deprecated(notes, "--sync-hook-command", "--exechook-command");
        exechook = s.string("sync-hook-command");
    }
    let exechook = if exechook.is_empty() {
        None
    } else {
        at_least_a_second("exechook-timeout")?;
        at_least_a_second("exechook-backoff")?;
        Some(Hook {
            command: exechook,
            timeout: s.duration("exechook-timeout"),
            backoff: s.duration("exechook-backoff"),
        })
    };
    // git-sync's pre-publish hook is dagsnap's gate: the same program, run the same way, but
    // once per commit; a rejected commit is not retried with backoff (which would hold back
    // every later commit), the next commit is checked instead.
    let pre_publish = s.string("pre-publish-exechook-command");
    let check = if pre_publish.is_empty() {
        None
    } else {
        at_least_a_second("pre-publish-exechook-timeout")?;
        info(notes, "--pre-publish-exechook-command checks each new commit once, before the link moves: a commit it rejects stays unpublished (`dagsnap status` says why) and is not retried, so the next commit pushed goes live as soon as it passes; --pre-publish-exechook-backoff is not used");
        Some((pre_publish, s.duration("pre-publish-exechook-timeout")))
    };
    let url = s.string("webhook-url");
    let webhook = if url.is_empty() {
        None
    } else {
        let mut status = s.int("webhook-success-status");
        if status == -1 {
            status = 0;
        }
        if status < 0 {
            return Err(invalid(
                "invalid flag: --webhook-success-status must be a valid HTTP code or 0",
            ));
        }
        at_least_a_second("webhook-timeout")?;
        at_least_a_second("webhook-backoff")?;
        Some(Webhook {
            url,
            method: s.string("webhook-method").to_ascii_uppercase(),
            success_status: status,
            timeout: s.duration("webhook-timeout"),
            backoff: s.duration("webhook-backoff"),
        })
    };
    Ok(Hooks {
        exechook,
        check,
        webhook,
    })
}

/// `--username`, `$GITSYNC_PASSWORD` (or `--password`), `--password-file`, `--credential`,
/// the unsupported ways (`--cookie-file`, `--askpass-url`, `--github-app-*`), SSH's files for
/// SSH remotes, `--git`, `--git-config`.
fn credentials(
    s: &Settings,
    env: &dyn Fn(&str) -> Option<String>,
    repo: &str,
    notes: &mut Vec<Note>,
) -> Result<Credentials, ConfigError> {
    let mut password = from_env(PASSWORD_ENV, env, notes).map(|(v, _)| v);
    if !s.string("password").is_empty() {
        deprecated(notes, "--password", "$GITSYNC_PASSWORD");
        password = Some(s.string("password"));
    }
    let mut password = password.filter(|p| !p.is_empty());
    let mut username = s.string("username");
    let mut password_file = s.string("password-file");
    check_password_sources(repo, &username, password.is_some(), &password_file)?;
    for raw in s.list("credential") {
        let credentials = parse_credentials(&raw)
            .map_err(|why| invalid(format!("invalid flag: --credential {why}")))?;
        for credential in credentials {
            if credential.url.is_empty() {
                return Err(invalid("invalid flag: --credential URL must be specified"));
            }
            if credential.username.is_empty() {
                return Err(invalid(
                    "invalid flag: --credential username must be specified",
                ));
            }
            match (
                credential.password.is_empty(),
                credential.password_file.is_empty(),
            ) {
                (true, true) => {
                    return Err(invalid(
                        "invalid flag: --credential password or password-file must be specified",
                    ))
                }
                (false, false) => return Err(invalid(
                    "invalid flag: only one of --credential password and password-file may be specified",
                )),
                _ => {}
            }
            let for_repo = repo.starts_with(credential.url.trim_end_matches('/'));
            if for_repo && username.is_empty() {
                username = credential.username;
                if credential.password_file.is_empty() {
                    password = Some(credential.password);
                } else {
                    password_file = credential.password_file;
                }
            } else {
                notes.push(Note::Info(format!(
                    "--credential for {} is not used: dagsnap sends --repo's credentials, to --repo's server only (submodules there included)",
                    crate::git::redact::Redactor::default().redact(&credential.url)
                )));
            }
        }
    }
    let has_password = password.is_some() || !password_file.is_empty();
    let other = other_auth(s, env, has_password)?;
    let (ssh_key_files, ssh_known_hosts) = ssh(s, repo, notes);
    if s.string("git") != "git" {
        info(
            notes,
            &format!(
                "--git {} is not used: dagsnap fetches with its own git implementation (gix)",
                s.string("git")
            ),
        );
    }
    let (ca_file, git_config) = git_config(s, notes)?;
    let has_credentials = !username.is_empty()
        || password.is_some()
        || reqwest::Url::parse(repo).is_ok_and(|u| !u.username().is_empty());
    let allow_insecure_http = has_credentials && repo.to_ascii_lowercase().starts_with("http://");
    if allow_insecure_http {
        notes.push(Note::Warn(
            "credentials for --repo go over plain http://, as git-sync sends them: anyone on the network path can read them; use https:// (dagsnap's own `sync` refuses this unless --allow-insecure-http-credentials)".to_string(),
        ));
    }
    Ok(Credentials {
        username: (!username.is_empty()).then_some(username),
        password_file: (!password_file.is_empty()).then_some(password_file),
        password,
        ssh_key_files,
        ssh_known_hosts,
        ca_file,
        git_config,
        allow_insecure_http,
        other,
    })
}

/// git-sync's rules for where a password may come from.
fn check_password_sources(
    repo: &str,
    username: &str,
    password: bool,
    password_file: &str,
) -> Result<(), ConfigError> {
    let url_has_user = reqwest::Url::parse(repo).is_ok_and(|u| !u.username().is_empty());
    if !username.is_empty() {
        if !password && password_file.is_empty() {
            return Err(invalid("required flag: $GITSYNC_PASSWORD or --password-file must be specified when --username is specified"));
        }
        if password && !password_file.is_empty() {
            return Err(invalid(
                "invalid flag: only one of $GITSYNC_PASSWORD and --password-file may be specified",
            ));
        }
        if url_has_user {
            return Err(invalid("invalid flag: credentials may not be specified in --repo when --username is specified"));
        }
    } else {
        if password {
            return Err(invalid(
                "invalid flag: $GITSYNC_PASSWORD may only be specified when --username is specified",
            ));
        }
        if !password_file.is_empty() {
            return Err(invalid(
                "invalid flag: --password-file may only be specified when --username is specified",
            ));
        }
    }
    Ok(())
}

/// The ways of authenticating dagsnap does not have (yet): refused at start, naming them.
/// `--cookie-file` (git-sync's `/etc/git-secret/cookie_file`), `--askpass-url` and the GitHub
/// App's flags, as git-sync checks them: one source of credentials.
fn other_auth(
    s: &Settings,
    env: &dyn Fn(&str) -> Option<String>,
    has_password: bool,
) -> Result<OtherAuth, ConfigError> {
    let askpass_url = Some(s.string("askpass-url")).filter(|u| !u.is_empty());
    let key_file = Some(s.string("github-app-private-key-file")).filter(|f| !f.is_empty());
    let key = from_env(GITHUB_KEY_ENV, env, &mut Vec::new()).map(|(pem, _)| pem);
    let client_id = Some(s.string("github-app-client-id")).filter(|c| !c.is_empty());
    let application_id = Some(s.int("github-app-application-id")).filter(|id| *id != 0);
    let installation_id = Some(s.int("github-app-installation-id")).filter(|id| *id != 0);
    let github_app = key_file.is_some()
        || key.is_some()
        || client_id.is_some()
        || application_id.is_some()
        || installation_id.is_some();
    if github_app {
        if key_file.is_none() && key.is_none() {
            return Err(invalid("required flag: --github-app-private-key-file or $GITSYNC_GITHUB_APP_PRIVATE_KEY must be specified when using GitHub app auth"));
        }
        if client_id.is_none() && application_id.is_none() {
            return Err(invalid("required flag: --github-app-application-id or --github-app-client-id must be specified when using GitHub app auth"));
        }
        if installation_id.is_none() {
            return Err(invalid("required flag: --github-app-installation-id must be specified when using GitHub app auth"));
        }
    }
    let sources =
        usize::from(has_password) + usize::from(askpass_url.is_some()) + usize::from(github_app);
    if sources > 1 {
        return Err(invalid("only one of --password-file/$GITSYNC_PASSWORD, --askpass-url and GitHub app auth may be specified"));
    }
    Ok(OtherAuth {
        // git-sync's fixed path for it (a mounted secret).
        cookie_file: s
            .bool("cookie-file")
            .then(|| "/etc/git-secret/cookie_file".to_string()),
        askpass_url,
        github_app_key_file: key_file,
        github_app_key: key,
        github_app_client_id: client_id,
        github_app_application_id: application_id,
        github_app_installation_id: installation_id,
        github_base_url: github_app.then(|| s.string("github-base-url")),
    })
}

/// Credentials asked for at every conversation: an askpass service or a GitHub App.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OtherAuth {
    pub cookie_file: Option<String>,
    pub askpass_url: Option<String>,
    pub github_app_key_file: Option<String>,
    /// `$GITSYNC_GITHUB_APP_PRIVATE_KEY`: never on a command line.
    pub github_app_key: Option<String>,
    pub github_app_client_id: Option<String>,
    pub github_app_application_id: Option<i64>,
    pub github_app_installation_id: Option<i64>,
    pub github_base_url: Option<String>,
}

/// SSH's key files and host key checking, for SSH remotes only (git-sync's defaults name
/// files that exist only when mounted).
type SshFiles = (Vec<String>, Option<(bool, Option<String>)>);

fn ssh(s: &Settings, repo: &str, notes: &mut Vec<Note>) -> SshFiles {
    if s.bool("ssh") {
        info(
            notes,
            "--ssh is deprecated and no longer necessary: an ssh:// or user@host: repository uses SSH",
        );
    }
    if !is_ssh(repo) {
        return (Vec::new(), None);
    }
    let explicit = s.given("ssh-key-file");
    let keys = s
        .list("ssh-key-file")
        .into_iter()
        .filter(|key| explicit || std::path::Path::new(key).exists())
        .collect();
    let check = s.bool("ssh-known-hosts");
    let file = check.then(|| s.string("ssh-known-hosts-file"));
    (keys, Some((check, file)))
}

/// Whether `spec` is one of git's partial-clone filter specifications.
fn is_filter_spec(spec: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match spec.split_once(':') {
        Some(("blob", "none")) => true,
        Some(("blob", rest)) => rest
            .strip_prefix("limit=")
            .is_some_and(|n| digits(n.trim_end_matches(['k', 'm', 'g', 'K', 'M', 'G']))),
        Some(("tree", depth)) => digits(depth),
        Some(("object", rest)) => rest
            .strip_prefix("type=")
            .is_some_and(|t| ["blob", "tree", "commit", "tag"].contains(&t)),
        Some(("sparse", rest)) => rest.strip_prefix("oid=").is_some_and(|o| !o.is_empty()),
        Some(("combine", rest)) => rest.split('+').all(is_filter_spec),
        _ => false,
    }
}

/// `--git-config`'s CA file and the git configuration passed on.
type GitConfig = (Option<String>, Vec<(String, String)>);

/// `--git-config` and each `--git-config-add`, as git-sync passes them to `git config`:
/// `http.sslCAInfo` is dagsnap's `--ca-file`; every key is passed on as git configuration (the
/// cache's, and that of the git processes dagsnap starts: `safe.directory` lets a local
/// repository owned by another user be read, as git-sync's global configuration does).
fn git_config(s: &Settings, notes: &mut Vec<Note>) -> Result<GitConfig, ConfigError> {
    let mut pairs = Vec::new();
    let text = s.string("git-config");
    if !text.is_empty() {
        pairs.extend(parse_git_config(&text).map_err(|e| invalid(format!("invalid flag: {e}")))?);
    }
    for one in s
        .list("git-config-add")
        .into_iter()
        .filter(|v| !v.is_empty())
    {
        let parsed = parse_git_config(&one)
            .map_err(|e| invalid(format!("invalid flag: --git-config-add {e}")))?;
        if parsed.len() != 1 {
            return Err(invalid(format!(
                "invalid flag: --git-config-add takes one key:value, got {one:?}"
            )));
        }
        pairs.extend(parsed);
    }
    let mut ca_file = None;
    for (key, value) in &pairs {
        if key.eq_ignore_ascii_case("http.sslcainfo") {
            ca_file = Some(value.clone());
        }
    }
    if !pairs.is_empty() {
        let keys: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
        info(
            notes,
            &format!(
                "git configuration {} applies to dagsnap's fetches (gix reads the keys it knows) and to the git processes it starts",
                keys.join(", ")
            ),
        );
    }
    Ok((ca_file, pairs))
}

/// `--http-bind`, `--http-metrics`, `--http-pprof`, `-v`/`--verbose`.
fn serving(s: &Settings, notes: &mut Vec<Note>) -> Result<Serving, ConfigError> {
    let bind = s.string("http-bind");
    if bind.is_empty() {
        for flag in ["http-metrics", "http-pprof"] {
            if s.bool(flag) {
                return Err(invalid(format!(
                    "required flag: --http-bind must be specified when --{flag} is set"
                )));
            }
        }
    } else {
        if s.bool("http-pprof") {
            return Err(invalid("--http-pprof is not supported by dagsnap (it is not a Go program); /metrics and the logs describe what it does"));
        }
        if !s.bool("http-metrics") {
            info(
                notes,
                "/metrics is served whenever --http-bind is set (git_sync_* series included)",
            );
        }
    }
    let mut verbose = s.int("verbose");
    if s.int("v") >= 0 {
        verbose = s.int("v");
    }
    let log_level = (s.given("verbose") || s.int("v") >= 0).then_some(match verbose {
        i64::MIN..=0 => "info",
        1..=5 => "debug",
        _ => "trace",
    });
    Ok(Serving {
        http_bind: (!bind.is_empty()).then_some(bind),
        log_level,
    })
}

fn tolerated(git_sync: i64) -> i64 {
    match git_sync {
        n if n < 0 => -1,
        0 => 0,
        n => n - 1,
    }
}

/// Whether `repo` is reached over SSH: `ssh://...` or scp-like `user@host:path`.
fn is_ssh(repo: &str) -> bool {
    if let Some((scheme, _)) = repo.split_once("://") {
        return scheme.eq_ignore_ascii_case("ssh") || scheme.eq_ignore_ascii_case("git+ssh");
    }
    // scp-like: a colon before the first slash, and not a local path.
    match repo.split_once(':') {
        Some((host, _)) => !host.is_empty() && !host.contains('/'),
        None => false,
    }
}
