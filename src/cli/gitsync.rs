//! The git-sync personality: dagsnap started as `git-sync` (a symlink named so, or
//! `dagsnap git-sync ...`) reads git-sync v4's flags and environment, and v3's names the Airflow
//! Helm chart still sets, with git-sync's precedence and defaults, and runs dagsnap's loop.
//!
//! How a setting is resolved, as git-sync's `env.go` and `main.go` do it:
//!
//! 1. The environment gives each flag its default: the current name (`GITSYNC_REPO`) is read
//!    first, then the older ones (`GIT_SYNC_REPO`); when several are set, the last older one
//!    wins, with a warning. A value that does not parse is fatal, as in git-sync, even if a flag
//!    overrides it.
//! 2. A flag on the command line beats the environment (pflag syntax: `--name=value`,
//!    `--name value`, `--bool`, `--bool=false`, `-v 5`; single-dash long names as v3 wrote
//!    them are accepted too).
//! 3. v3 names override their v4 counterparts when set: `--branch`/`--rev` set `--ref`,
//!    `--dest` sets `--link`, `--wait` (seconds) sets `--period`, `--timeout` (seconds) sets
//!    `--sync-timeout`, `--max-sync-failures` sets `--max-failures`, `--sync-hook-command` sets
//!    `--exechook-command`.
//! 4. The result is checked as git-sync checks it, with git-sync's wording, and translated into
//!    dagsnap's own `sync` options. Where dagsnap behaves differently on purpose, a note says so
//!    once at start; a setting dagsnap cannot honour fails at start, naming it.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::time::Duration;

use super::values::{
    format_git_config, parse_bool, parse_duration, parse_git_config, parse_go_int,
};

/// What the command line asked for.
#[derive(Debug)]
pub enum Parsed {
    /// Print this and exit 0 (`--help`, `--man`, `--version`).
    Print(String),
    Run(Box<Invocation>),
}

/// A git-sync configuration, as dagsnap runs it.
#[derive(Debug)]
pub struct Invocation {
    /// dagsnap's `sync` command line (parsed by clap, so dagsnap's own checks apply too).
    pub argv: Vec<OsString>,
    /// `$GITSYNC_PASSWORD`, or a `--credential` password: never on a command line.
    pub password: Option<String>,
    /// git-sync runs `--exechook-command` as a program, not through a shell.
    pub exechook_direct: bool,
    /// The pre-publish hook, like the exec hook, is a program, not a shell command.
    pub check_direct: bool,
    /// Said once at start: deprecated names in use, and what dagsnap does differently.
    pub notes: Vec<Note>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    Info(String),
    Warn(String),
}

/// A configuration git-sync would refuse too, or one dagsnap cannot honour: one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Str,
    Bool,
    Int,
    Duration,
    Float,
    /// Repeatable; the environment's value is split at `:` (`--ssh-key-file`).
    List,
    /// Repeatable JSON (`--credential`).
    Credentials,
}

/// One of git-sync's flags.
struct Spec {
    name: &'static str,
    short: Option<char>,
    kind: Kind,
    /// Its environment variables: the current name first, then older names (which win).
    env: &'static [&'static str],
    default: &'static str,
    help: &'static str,
}

const fn flag(
    name: &'static str,
    kind: Kind,
    env: &'static [&'static str],
    default: &'static str,
    help: &'static str,
) -> Spec {
    Spec {
        name,
        short: None,
        kind,
        env,
        default,
        help,
    }
}

use Kind::*;

#[rustfmt::skip]
/// git-sync v4's flags (with v4.5's `--init-*` and `--pre-publish-exechook-*`), then the v3
/// names git-sync still accepts. Defaults are git-sync's.
const FLAGS: &[Spec] = &[
    Spec {
        name: "verbose",
        short: Some('v'),
        kind: Int,
        env: &["GITSYNC_VERBOSE"],
        default: "0",
        help: "log verbosity: 0 info, 1-5 debug, 6 and more trace",
    },
    flag("repo", Str, &["GITSYNC_REPO", "GIT_SYNC_REPO"], "", "the repository to sync (required)"),
    flag("ref", Str, &["GITSYNC_REF"], "HEAD", "the branch, tag or commit to sync"),
    flag("depth", Int, &["GITSYNC_DEPTH", "GIT_SYNC_DEPTH"], "1", "commits of history to fetch; 0 is all"),
    flag("submodules", Str, &["GITSYNC_SUBMODULES", "GIT_SYNC_SUBMODULES"], "recursive", "recursive, shallow or off"),
    flag("sparse-checkout-file", Str, &["GITSYNC_SPARSE_CHECKOUT_FILE", "GIT_SYNC_SPARSE_CHECKOUT_FILE"], "", "a sparse-checkout file: only the paths its patterns select are published"),
    flag("root", Str, &["GITSYNC_ROOT", "GIT_SYNC_ROOT"], "", "the directory to publish into (required)"),
    flag("link", Str, &["GITSYNC_LINK", "GIT_SYNC_LINK"], "", "the link readers use, absolute or relative to --root (default: the last part of --repo)"),
    flag("error-file", Str, &["GITSYNC_ERROR_FILE", "GIT_SYNC_ERROR_FILE"], "", "a file that holds the last error (absolute or relative to --root)"),
    flag("period", Duration, &["GITSYNC_PERIOD", "GIT_SYNC_PERIOD"], "10s", "the time between syncs"),
    flag("init-period", Duration, &["GITSYNC_INIT_PERIOD"], "0", "the time between attempts until the first sync succeeds (0: --period)"),
    flag("sync-timeout", Duration, &["GITSYNC_SYNC_TIMEOUT", "GIT_SYNC_SYNC_TIMEOUT"], "120s", "the time allowed for one sync"),
    flag("one-time", Bool, &["GITSYNC_ONE_TIME", "GIT_SYNC_ONE_TIME"], "false", "exit after the first sync"),
    flag("sync-on-signal", Str, &["GITSYNC_SYNC_ON_SIGNAL", "GIT_SYNC_SYNC_ON_SIGNAL"], "", "sync when this signal arrives (e.g. SIGHUP)"),
    flag("max-failures", Int, &["GITSYNC_MAX_FAILURES", "GIT_SYNC_MAX_FAILURES"], "0", "consecutive failures before exiting (-1: never)"),
    flag("init-max-failures", Int, &["GITSYNC_INIT_MAX_FAILURES"], "0", "failures before exiting until the first sync succeeds (0: --max-failures)"),
    flag("touch-file", Str, &["GITSYNC_TOUCH_FILE", "GIT_SYNC_TOUCH_FILE"], "", "a file touched after each sync that changed something"),
    flag("add-user", Bool, &["GITSYNC_ADD_USER", "GIT_SYNC_ADD_USER"], "false", "give this uid a passwd entry for ssh"),
    flag("group-write", Bool, &["GITSYNC_GROUP_WRITE", "GIT_SYNC_GROUP_WRITE"], "false", "make what is written group-writable"),
    flag("stale-worktree-timeout", Duration, &["GITSYNC_STALE_WORKTREE_TIMEOUT"], "0", "how long to keep previous checkouts"),
    flag("exechook-command", Str, &["GITSYNC_EXECHOOK_COMMAND", "GIT_SYNC_EXECHOOK_COMMAND"], "", "a program run in the new checkout after each sync"),
    flag("exechook-timeout", Duration, &["GITSYNC_EXECHOOK_TIMEOUT", "GIT_SYNC_EXECHOOK_TIMEOUT"], "30s", "the time allowed for the exec hook"),
    flag("exechook-backoff", Duration, &["GITSYNC_EXECHOOK_BACKOFF", "GIT_SYNC_EXECHOOK_BACKOFF"], "3s", "the wait before a failed exec hook runs again"),
    flag("pre-publish-exechook-command", Str, &["GITSYNC_PRE_PUBLISH_EXECHOOK_COMMAND"], "", "a program run in each new snapshot before the link moves; failing keeps the commit unpublished"),
    flag("pre-publish-exechook-timeout", Duration, &["GITSYNC_PRE_PUBLISH_EXECHOOK_TIMEOUT"], "30s", "the time allowed for the pre-publish hook"),
    flag("pre-publish-exechook-backoff", Duration, &["GITSYNC_PRE_PUBLISH_EXECHOOK_BACKOFF"], "3s", "the wait before a failed pre-publish hook runs again"),
    flag("webhook-url", Str, &["GITSYNC_WEBHOOK_URL", "GIT_SYNC_WEBHOOK_URL"], "", "a URL called after each sync"),
    flag("webhook-method", Str, &["GITSYNC_WEBHOOK_METHOD", "GIT_SYNC_WEBHOOK_METHOD"], "POST", "its HTTP method"),
    flag("webhook-success-status", Int, &["GITSYNC_WEBHOOK_SUCCESS_STATUS", "GIT_SYNC_WEBHOOK_SUCCESS_STATUS"], "200", "the status that means success (0: any)"),
    flag("webhook-timeout", Duration, &["GITSYNC_WEBHOOK_TIMEOUT", "GIT_SYNC_WEBHOOK_TIMEOUT"], "1s", "the time allowed for one call"),
    flag("webhook-backoff", Duration, &["GITSYNC_WEBHOOK_BACKOFF", "GIT_SYNC_WEBHOOK_BACKOFF"], "3s", "the wait before a failed call is made again"),
    flag("username", Str, &["GITSYNC_USERNAME", "GIT_SYNC_USERNAME"], "", "the user name for HTTPS"),
    flag("password-file", Str, &["GITSYNC_PASSWORD_FILE", "GIT_SYNC_PASSWORD_FILE"], "", "a file holding the password or token"),
    flag("credential", Credentials, &["GITSYNC_CREDENTIAL"], "", "credentials as JSON: {\"url\", \"username\", \"password-file\"}"),
    flag("ssh-key-file", List, &["GITSYNC_SSH_KEY_FILE", "GIT_SYNC_SSH_KEY_FILE", "GIT_SSH_KEY_FILE"], "/etc/git-secret/ssh", "the SSH key(s)"),
    flag("ssh-known-hosts", Bool, &["GITSYNC_SSH_KNOWN_HOSTS", "GIT_SYNC_KNOWN_HOSTS", "GIT_KNOWN_HOSTS"], "true", "check the server's host key"),
    flag("ssh-known-hosts-file", Str, &["GITSYNC_SSH_KNOWN_HOSTS_FILE", "GIT_SYNC_SSH_KNOWN_HOSTS_FILE", "GIT_SSH_KNOWN_HOSTS_FILE"], "/etc/git-secret/known_hosts", "the known_hosts file"),
    flag("cookie-file", Bool, &["GITSYNC_COOKIE_FILE", "GIT_SYNC_COOKIE_FILE", "GIT_COOKIE_FILE"], "false", "use a git cookie file (not supported)"),
    flag("askpass-url", Str, &["GITSYNC_ASKPASS_URL", "GIT_SYNC_ASKPASS_URL", "GIT_ASKPASS_URL"], "", "a URL that gives credentials (not supported)"),
    flag("github-base-url", Str, &["GITSYNC_GITHUB_BASE_URL"], "https://api.github.com/", "GitHub app authentication (not supported)"),
    flag("github-app-private-key-file", Str, &["GITSYNC_GITHUB_APP_PRIVATE_KEY_FILE"], "", "GitHub app authentication (not supported)"),
    flag("github-app-client-id", Str, &["GITSYNC_GITHUB_APP_CLIENT_ID"], "", "GitHub app authentication (not supported)"),
    flag("github-app-application-id", Int, &["GITSYNC_GITHUB_APP_APPLICATION_ID"], "0", "GitHub app authentication (not supported)"),
    flag("github-app-installation-id", Int, &["GITSYNC_GITHUB_APP_INSTALLATION_ID"], "0", "GitHub app authentication (not supported)"),
    flag("git", Str, &["GITSYNC_GIT", "GIT_SYNC_GIT"], "git", "the git command (dagsnap does not run git to fetch)"),
    flag("git-config", Str, &["GITSYNC_GIT_CONFIG", "GIT_SYNC_GIT_CONFIG"], "", "git settings as 'key:value,...' (http.sslCAInfo and safe.directory)"),
    flag("git-gc", Str, &["GITSYNC_GIT_GC", "GIT_SYNC_GIT_GC"], "always", "auto, always, aggressive or off (nothing to collect)"),
    flag("http-bind", Str, &["GITSYNC_HTTP_BIND", "GIT_SYNC_HTTP_BIND"], "", "serve /, /metrics, /healthz, /readyz and POST /sync here"),
    flag("http-metrics", Bool, &["GITSYNC_HTTP_METRICS", "GIT_SYNC_HTTP_METRICS"], "false", "metrics (always served with --http-bind)"),
    flag("http-pprof", Bool, &["GITSYNC_HTTP_PPROF", "GIT_SYNC_HTTP_PPROF"], "false", "Go's pprof (not supported)"),
    // v3 names.
    flag("branch", Str, &["GIT_SYNC_BRANCH"], "", "DEPRECATED: use --ref"),
    flag("change-permissions", Int, &["GIT_SYNC_PERMISSIONS"], "0", "DEPRECATED: use --group-write"),
    flag("dest", Str, &["GIT_SYNC_DEST"], "", "DEPRECATED: use --link"),
    flag("max-sync-failures", Int, &["GIT_SYNC_MAX_SYNC_FAILURES"], "0", "DEPRECATED: use --max-failures"),
    flag("password", Str, &[], "", "DEPRECATED: use --password-file or $GITSYNC_PASSWORD"),
    flag("rev", Str, &["GIT_SYNC_REV"], "", "DEPRECATED: use --ref"),
    flag("ssh", Bool, &[], "false", "DEPRECATED: no longer necessary"),
    flag("sync-hook-command", Str, &["GIT_SYNC_HOOK_COMMAND"], "", "DEPRECATED: use --exechook-command"),
    flag("timeout", Int, &["GIT_SYNC_TIMEOUT"], "0", "DEPRECATED: use --sync-timeout"),
    flag("v", Int, &[], "-1", "DEPRECATED: use -v or --verbose"),
    flag("wait", Float, &["GIT_SYNC_WAIT"], "0", "DEPRECATED: use --period"),
    // Print and exit.
    Spec {
        name: "help",
        short: Some('h'),
        kind: Bool,
        env: &[],
        default: "false",
        help: "print this help and exit",
    },
    flag("man", Bool, &[], "false", "print this help and exit"),
    flag("version", Bool, &[], "false", "print the version and exit"),
];

/// Environment variables that only git-sync's environment reads (not a flag's default).
const PASSWORD_ENV: &[&str] = &["GITSYNC_PASSWORD", "GIT_SYNC_PASSWORD"];
const GITHUB_KEY_ENV: &[&str] = &["GITSYNC_GITHUB_APP_PRIVATE_KEY"];

/// Where a setting came from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    Default,
    Env(&'static str),
    Flag,
}

#[derive(Debug, Clone)]
struct Setting {
    values: Vec<String>,
    from: Source,
}

/// Every flag's setting, after the environment and the command line.
struct Settings {
    by_name: BTreeMap<&'static str, Setting>,
}

/// git-sync's `envString` and friends: the current name, then older names (the last one set
/// wins, with a warning when several are set).
fn from_env(
    keys: &[&'static str],
    env: &dyn Fn(&str) -> Option<String>,
    notes: &mut Vec<Note>,
) -> Option<(String, &'static str)> {
    let (first, older) = keys.split_first()?;
    let mut found: Option<(String, &'static str)> = env(first).map(|v| (v, *first));
    let mut count = usize::from(found.is_some());
    for alt in older {
        if let Some(value) = env(alt) {
            notes.push(Note::Warn(format!(
                "env ${alt} has been deprecated, use ${first} instead"
            )));
            found = Some((value, alt));
            count += 1;
        }
    }
    if count > 1 {
        if let Some((_, winner)) = &found {
            notes.push(Note::Warn(format!(
                "env ${first} was overridden by ${winner}"
            )));
        }
    }
    found
}

impl Settings {
    /// Step 1: each flag's default from the environment (or git-sync's own default).
    fn from_environment(
        env: &dyn Fn(&str) -> Option<String>,
        notes: &mut Vec<Note>,
    ) -> Result<Settings, ConfigError> {
        let mut by_name = BTreeMap::new();
        for spec in FLAGS {
            let setting = match from_env(spec.env, env, notes) {
                Some((value, key)) => {
                    let kind_name = match spec.kind {
                        Bool => "bool",
                        Int => "int",
                        Duration => "duration",
                        Float => "float",
                        Str | List | Credentials => "string",
                    };
                    check_value(spec.kind, &value).map_err(|why| {
                        ConfigError(format!("invalid {kind_name} env {key}={value:?}: {why}"))
                    })?;
                    let values = match spec.kind {
                        List => value.split(':').map(str::to_string).collect(),
                        _ => vec![value],
                    };
                    Setting {
                        values,
                        from: Source::Env(key),
                    }
                }
                None => Setting {
                    values: match spec.kind {
                        List => spec.default.split(':').map(str::to_string).collect(),
                        _ => vec![spec.default.to_string()],
                    },
                    from: Source::Default,
                },
            };
            by_name.insert(spec.name, setting);
        }
        Ok(Settings { by_name })
    }

    /// Step 2: the command line, pflag's way.
    fn apply_args(&mut self, args: &[OsString]) -> Result<(), ConfigError> {
        let mut i = 0;
        while i < args.len() {
            let arg = args[i].to_str().ok_or_else(|| {
                ConfigError(format!("invalid argument {:?}: not valid UTF-8", args[i]))
            })?;
            i += 1;
            if arg == "--" {
                if let Some(extra) = args.get(i) {
                    return Err(ConfigError(format!(
                        "unexpected argument {extra:?}: git-sync takes only flags"
                    )));
                }
                break;
            }
            let (spec, inline, shown) = if let Some(long) = arg.strip_prefix("--") {
                let (name, value) = match long.split_once('=') {
                    Some((name, value)) => (name, Some(value.to_string())),
                    None => (long, None),
                };
                let spec =
                    find(name).ok_or_else(|| ConfigError(format!("unknown flag: --{name}")))?;
                (spec, value, format!("--{name}"))
            } else if let Some(short) = arg.strip_prefix('-').filter(|s| !s.is_empty()) {
                let mut chars = short.chars();
                let first = chars.next().unwrap_or_default();
                let rest = chars.as_str();
                match FLAGS.iter().find(|s| s.short == Some(first)) {
                    // `-v 5`, `-v=5`, `-v5`, `-h`, `-?`.
                    Some(spec) if rest.is_empty() || rest.starts_with('=') || spec.kind == Int => {
                        let value = (!rest.is_empty())
                            .then(|| rest.strip_prefix('=').unwrap_or(rest).to_string());
                        (spec, value, format!("-{first}"))
                    }
                    _ if first == '?' && rest.is_empty() => (
                        find("help").ok_or_else(|| ConfigError("internal: no help".into()))?,
                        None,
                        "-?".into(),
                    ),
                    // v3 (Go's flag package) wrote long names with one dash: `-repo=...`.
                    _ => {
                        let (name, value) = match short.split_once('=') {
                            Some((name, value)) => (name, Some(value.to_string())),
                            None => (short, None),
                        };
                        let spec = find(name).ok_or_else(|| {
                            ConfigError(format!("unknown shorthand flag: '{first}' in {arg}"))
                        })?;
                        (spec, value, format!("-{name}"))
                    }
                }
            } else {
                return Err(ConfigError(format!(
                    "unexpected argument {arg:?}: git-sync takes only flags (did you mean --repo={arg}?)"
                )));
            };
            let value = match (inline, spec.kind) {
                (Some(value), _) => value,
                (None, Bool) => "true".to_string(),
                (None, _) => {
                    let value = args
                        .get(i)
                        .and_then(|v| v.to_str())
                        .ok_or_else(|| ConfigError(format!("flag needs an argument: {shown}")))?;
                    i += 1;
                    value.to_string()
                }
            };
            check_value(spec.kind, &value).map_err(|why| {
                ConfigError(format!(
                    "invalid argument {value:?} for \"{shown}\" flag: {why}"
                ))
            })?;
            let setting = self
                .by_name
                .get_mut(spec.name)
                .ok_or_else(|| ConfigError(format!("internal: no setting for {}", spec.name)))?;
            let repeatable = matches!(spec.kind, List | Credentials);
            if repeatable && setting.from == Source::Flag {
                setting.values.push(value);
            } else {
                setting.values = vec![value];
            }
            setting.from = Source::Flag;
        }
        Ok(())
    }

    fn raw(&self, name: &str) -> &Setting {
        // Every name asked for is in FLAGS (a test walks them).
        self.by_name
            .get(name)
            .unwrap_or_else(|| unreachable!("no git-sync flag {name}"))
    }

    fn string(&self, name: &str) -> String {
        self.raw(name).values.first().cloned().unwrap_or_default()
    }

    fn list(&self, name: &str) -> Vec<String> {
        self.raw(name)
            .values
            .iter()
            .filter(|v| !v.is_empty())
            .cloned()
            .collect()
    }

    fn given(&self, name: &str) -> bool {
        self.raw(name).from != Source::Default
    }

    // Values were checked when they were set: these only convert.
    fn bool(&self, name: &str) -> bool {
        parse_bool(&self.string(name)).unwrap_or(false)
    }

    fn int(&self, name: &str) -> i64 {
        parse_go_int(&self.string(name)).unwrap_or(0)
    }

    fn duration(&self, name: &str) -> Duration {
        parse_duration(&self.string(name)).unwrap_or_default()
    }

    fn float(&self, name: &str) -> f64 {
        self.string(name).trim().parse().unwrap_or(0.0)
    }
}

fn find(name: &str) -> Option<&'static Spec> {
    FLAGS.iter().find(|s| s.name == name)
}

fn check_value(kind: Kind, value: &str) -> Result<(), String> {
    match kind {
        Bool => parse_bool(value).map(drop),
        Int => parse_go_int(value).map(drop),
        Duration => parse_duration(value).map(drop),
        Float => value
            .trim()
            .parse::<f64>()
            .map(drop)
            .map_err(|_| format!("invalid number '{value}'")),
        Credentials if !value.trim().is_empty() => parse_credentials(value).map(drop),
        Str | List | Credentials => Ok(()),
    }
}

/// One `--credential`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
struct Credential {
    url: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default, rename = "password-file")]
    password_file: String,
}

/// A credential (a JSON object) or several (a JSON list).
fn parse_credentials(text: &str) -> Result<Vec<Credential>, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let parsed = match value {
        serde_json::Value::Array(_) => serde_json::from_value(value),
        other => serde_json::from_value(other).map(|c| vec![c]),
    };
    parsed.map_err(|e| format!("not a credential: {e}"))
}

/// Parse git-sync's command line `args` (without the program name) and the environment `env`.
pub fn parse(
    args: &[OsString],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Parsed, ConfigError> {
    let mut notes = Vec::new();
    let mut settings = Settings::from_environment(env, &mut notes)?;
    settings.apply_args(args)?;
    if settings.bool("version") {
        return Ok(Parsed::Print(format!(
            "dagsnap {} (running as git-sync)\n",
            env!("CARGO_PKG_VERSION")
        )));
    }
    if settings.bool("help") || settings.bool("man") {
        return Ok(Parsed::Print(help()));
    }
    translate(&settings, env, notes).map(|i| Parsed::Run(Box::new(i)))
}

fn invalid(text: impl Into<String>) -> ConfigError {
    ConfigError(text.into())
}

/// Steps 3 and 4: git-sync's back-compat rules and checks, then dagsnap's options.
fn translate(
    s: &Settings,
    env: &dyn Fn(&str) -> Option<String>,
    mut notes: Vec<Note>,
) -> Result<Invocation, ConfigError> {
    let mut argv: Vec<OsString> = vec!["dagsnap".into(), "sync".into()];
    let info = |notes: &mut Vec<Note>, text: &str| notes.push(Note::Info(text.to_string()));

    let root = s.string("root");
    if root.is_empty() {
        return Err(invalid("required flag: --root must be specified"));
    }
    let repo = s.string("repo");
    if repo.is_empty() {
        return Err(invalid("required flag: --repo must be specified"));
    }
    opt(&mut argv, "root", &root);
    opt(&mut argv, "repo", &repo);

    let (branch, rev) = (s.string("branch"), s.string("rev"));
    let mut git_ref = s.string("ref");
    match (branch.is_empty(), rev.is_empty() || rev == "HEAD") {
        (false, true) => {
            info(&mut notes, "setting --ref from deprecated --branch");
            git_ref = branch;
        }
        (true, false) => {
            info(&mut notes, "setting --ref from deprecated --rev");
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
    if git_ref != "HEAD" {
        opt(&mut argv, "ref", &git_ref);
    }

    let depth = s.int("depth");
    if depth < 0 {
        return Err(invalid(
            "invalid flag: --depth must be greater than or equal to 0",
        ));
    }
    opt(&mut argv, "depth", &depth.to_string());

    let submodules = s.string("submodules");
    if !["recursive", "shallow", "off"].contains(&submodules.as_str()) {
        return Err(invalid(
            "invalid flag: --submodules must be one of \"recursive\", \"shallow\", or \"off\"",
        ));
    }
    opt(&mut argv, "submodules", &submodules);
    let sparse = s.string("sparse-checkout-file");
    if !sparse.is_empty() {
        opt(&mut argv, "sparse-checkout-file", &sparse);
    }
    let git_gc = s.string("git-gc");
    if !["auto", "always", "aggressive", "off"].contains(&git_gc.as_str()) {
        return Err(invalid("invalid flag: --git-gc must be one of \"auto\", \"always\", \"aggressive\", or \"off\""));
    }
    if s.given("git-gc") {
        info(
            &mut notes,
            "--git-gc has nothing to do: dagsnap's git cache is private and bounded, and the root holds no git state",
        );
    }

    let mut link = s.string("link");
    if !s.string("dest").is_empty() {
        info(&mut notes, "setting --link from deprecated --dest");
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
    opt(&mut argv, "link", &link);

    let mut period = s.duration("period");
    let wait = s.float("wait");
    if wait != 0.0 {
        info(&mut notes, "setting --period from deprecated --wait");
        period = Duration::from_millis((wait * 1000.0).max(0.0) as u64);
    }
    if period < Duration::from_millis(10) {
        return Err(invalid("invalid flag: --period must be at least 10ms"));
    }
    opt(&mut argv, "period", &go_duration(period));
    let init_period = s.duration("init-period");
    if !init_period.is_zero() {
        opt(&mut argv, "init-period", &go_duration(init_period));
    }

    if s.int("change-permissions") != 0 {
        return Err(invalid(
            "deprecated flag: --change-permissions is no longer supported",
        ));
    }

    let signal = s.string("sync-on-signal");
    if !signal.is_empty() {
        super::parse_signal(&signal).map_err(|_| {
            invalid("invalid flag: --sync-on-signal must be a valid signal name or number")
        })?;
        opt(&mut argv, "sync-on-signal", &signal);
    }

    let mut sync_timeout = s.duration("sync-timeout");
    let timeout = s.int("timeout");
    if timeout != 0 {
        info(
            &mut notes,
            "setting --sync-timeout from deprecated --timeout",
        );
        sync_timeout = Duration::from_secs(timeout.max(0) as u64);
    }
    if sync_timeout < Duration::from_millis(10) {
        return Err(invalid(
            "invalid flag: --sync-timeout must be at least 10ms",
        ));
    }
    opt(&mut argv, "sync-timeout", &go_duration(sync_timeout));

    if s.bool("one-time") {
        argv_flag(&mut argv, "one-time");
    }
    let mut max_failures = s.int("max-failures");
    if s.int("max-sync-failures") != 0 {
        info(
            &mut notes,
            "setting --max-failures from deprecated --max-sync-failures",
        );
        max_failures = s.int("max-sync-failures");
    }
    // git-sync exits when the failures in a row reach N (0 and 1 both mean the first one);
    // dagsnap's --max-failures counts the failures it tolerates.
    opt(
        &mut argv,
        "max-failures",
        &tolerated(max_failures).to_string(),
    );
    let init_max_failures = s.int("init-max-failures");
    if init_max_failures > 0 {
        opt(
            &mut argv,
            "init-max-failures",
            &tolerated(init_max_failures).to_string(),
        );
    }
    notes.push(Note::Info(if max_failures < 0 {
        "failed syncs are retried with a backoff from --period up to 5m (DAGSNAP_BACKOFF_MAX), not every --period; the published DAGs stay live".to_string()
    } else {
        format!("as git-sync, this process exits after {} failed sync(s) in a row (--max-failures {max_failures}); what is published stays live meanwhile and after, and retries back off from --period up to 5m (DAGSNAP_BACKOFF_MAX)", max_failures.max(1))
    }));

    for (flag, name) in [("touch-file", "touch-file"), ("error-file", "error-file")] {
        let value = s.string(flag);
        if !value.is_empty() {
            opt(&mut argv, name, &value);
        }
    }
    if s.bool("add-user") {
        info(&mut notes, "--add-user is not needed: when this uid has no passwd entry, ssh gets one through nss_wrapper, and /etc/passwd is left alone");
    }
    if s.bool("group-write") {
        argv_flag(&mut argv, "group-write");
    }
    let stale = s.duration("stale-worktree-timeout");
    let grace = Duration::from_secs(600);
    if stale > grace {
        opt(&mut argv, "grace", &go_duration(stale));
    }
    info(&mut notes, &format!(
        "previous snapshots stay for {} after they stop being live (--grace), so that readers never lose files they opened; --stale-worktree-timeout {} only makes that longer",
        humantime::format_duration(stale.max(grace)),
        humantime::format_duration(stale)
    ));

    // Hooks.
    let mut exechook = s.string("exechook-command");
    if !s.string("sync-hook-command").is_empty() {
        info(
            &mut notes,
            "setting --exechook-command from deprecated --sync-hook-command",
        );
        exechook = s.string("sync-hook-command");
    }
    let exechook_direct = !exechook.is_empty();
    if !exechook.is_empty() {
        for (flag, least) in [("exechook-timeout", 1), ("exechook-backoff", 1)] {
            if s.duration(flag) < Duration::from_secs(least) {
                return Err(invalid(format!(
                    "invalid flag: --{flag} must be at least 1s"
                )));
            }
        }
        opt(&mut argv, "exechook-command", &exechook);
        opt(
            &mut argv,
            "exechook-timeout",
            &go_duration(s.duration("exechook-timeout")),
        );
        opt(
            &mut argv,
            "exechook-backoff",
            &go_duration(s.duration("exechook-backoff")),
        );
    }
    // git-sync's pre-publish hook is dagsnap's gate: the same program, run the same way, but
    // once per commit; a rejected commit is not retried with backoff (which would hold back
    // every later commit), the next commit is checked instead.
    let pre_publish = s.string("pre-publish-exechook-command");
    let check_direct = !pre_publish.is_empty();
    if check_direct {
        if s.duration("pre-publish-exechook-timeout") < Duration::from_secs(1) {
            return Err(invalid(
                "invalid flag: --pre-publish-exechook-timeout must be at least 1s",
            ));
        }
        opt(&mut argv, "check-command", &pre_publish);
        opt(
            &mut argv,
            "check-timeout",
            &go_duration(s.duration("pre-publish-exechook-timeout")),
        );
        info(&mut notes, "--pre-publish-exechook-command checks each new commit once, before the link moves: a commit it rejects stays unpublished (`dagsnap status` says why) and is not retried, so the next commit pushed goes live as soon as it passes; --pre-publish-exechook-backoff is not used");
    }
    let webhook = s.string("webhook-url");
    if !webhook.is_empty() {
        let mut status = s.int("webhook-success-status");
        if status == -1 {
            status = 0;
        }
        if status < 0 {
            return Err(invalid(
                "invalid flag: --webhook-success-status must be a valid HTTP code or 0",
            ));
        }
        for flag in ["webhook-timeout", "webhook-backoff"] {
            if s.duration(flag) < Duration::from_secs(1) {
                return Err(invalid(format!(
                    "invalid flag: --{flag} must be at least 1s"
                )));
            }
        }
        opt(&mut argv, "webhook-url", &webhook);
        opt(
            &mut argv,
            "webhook-method",
            &s.string("webhook-method").to_ascii_uppercase(),
        );
        opt(&mut argv, "webhook-success-status", &status.to_string());
        opt(
            &mut argv,
            "webhook-timeout",
            &go_duration(s.duration("webhook-timeout")),
        );
        opt(
            &mut argv,
            "webhook-backoff",
            &go_duration(s.duration("webhook-backoff")),
        );
    }

    // Credentials.
    let mut password = from_env(PASSWORD_ENV, env, &mut notes).map(|(v, _)| v);
    if !s.string("password").is_empty() {
        info(
            &mut notes,
            "setting $GITSYNC_PASSWORD from deprecated --password",
        );
        password = Some(s.string("password"));
    }
    let password = password.filter(|p| !p.is_empty());
    let mut username = s.string("username");
    let mut password_file = s.string("password-file");
    let url_has_user = reqwest::Url::parse(&repo).is_ok_and(|u| !u.username().is_empty());
    if !username.is_empty() {
        if password.is_none() && password_file.is_empty() {
            return Err(invalid("required flag: $GITSYNC_PASSWORD or --password-file must be specified when --username is specified"));
        }
        if password.is_some() && !password_file.is_empty() {
            return Err(invalid(
                "invalid flag: only one of $GITSYNC_PASSWORD and --password-file may be specified",
            ));
        }
        if url_has_user {
            return Err(invalid("invalid flag: credentials may not be specified in --repo when --username is specified"));
        }
    } else {
        if password.is_some() {
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
    let mut password = password;
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
    if !username.is_empty() {
        opt(&mut argv, "username", &username);
    }
    if !password_file.is_empty() {
        opt(&mut argv, "password-file", &password_file);
    }
    if s.bool("cookie-file") {
        return Err(invalid("--cookie-file is not supported by dagsnap: give the credentials with --username and --password-file (or $GITSYNC_PASSWORD)"));
    }
    if !s.string("askpass-url").is_empty() {
        return Err(invalid("--askpass-url is not supported by dagsnap: give the credentials with --username and --password-file (or $GITSYNC_PASSWORD); a rotated password file is read again before every fetch"));
    }
    let github_app = s.given("github-app-private-key-file")
        || s.given("github-app-client-id")
        || s.int("github-app-application-id") != 0
        || s.int("github-app-installation-id") != 0
        || from_env(GITHUB_KEY_ENV, env, &mut Vec::new()).is_some();
    if github_app {
        return Err(invalid("GitHub app authentication (--github-app-*) is not supported by dagsnap: use a token (e.g. a fine-grained personal access token or a deploy key) with --username and --password-file"));
    }

    // SSH, for SSH remotes only (git-sync's defaults name files that exist only when mounted).
    if is_ssh(&repo) {
        let keys = s.list("ssh-key-file");
        let explicit = s.given("ssh-key-file");
        for key in keys {
            if explicit || std::path::Path::new(&key).exists() {
                opt(&mut argv, "ssh-key-file", &key);
            }
        }
        let check = s.bool("ssh-known-hosts");
        opt(
            &mut argv,
            "ssh-known-hosts",
            if check { "true" } else { "false" },
        );
        if check {
            opt(
                &mut argv,
                "ssh-known-hosts-file",
                &s.string("ssh-known-hosts-file"),
            );
        }
    }
    if s.bool("ssh") {
        info(
            &mut notes,
            "--ssh is deprecated and no longer necessary: an ssh:// or user@host: repository uses SSH",
        );
    }

    let git = s.string("git");
    if git != "git" {
        info(
            &mut notes,
            &format!(
                "--git {git} is not used: dagsnap fetches with its own git implementation (gix)"
            ),
        );
    }
    let git_config = s.string("git-config");
    if !git_config.is_empty() {
        let mut passed = Vec::new();
        for (key, value) in
            parse_git_config(&git_config).map_err(|e| invalid(format!("invalid flag: {e}")))?
        {
            match key.to_ascii_lowercase().as_str() {
                "http.sslcainfo" => opt(&mut argv, "ca-file", &value),
                "safe.directory" => info(
                    &mut notes,
                    "--git-config safe.directory has nothing to do: dagsnap's cache is private to this process",
                ),
                // git's transport policy, which dagsnap applies to submodules as git does.
                "protocol.file.allow" | "protocol.allow" => passed.push((key, value)),
                _ => {
                    return Err(invalid(format!(
                        "--git-config {key} is not supported by dagsnap (it understands http.sslCAInfo, safe.directory, protocol.allow and protocol.file.allow); remove it, or tell us what you need it for"
                    )))
                }
            }
        }
        if !passed.is_empty() {
            opt(&mut argv, "git-config", &format_git_config(&passed));
        }
    }

    let bind = s.string("http-bind");
    if bind.is_empty() {
        if s.bool("http-metrics") {
            return Err(invalid(
                "required flag: --http-bind must be specified when --http-metrics is set",
            ));
        }
        if s.bool("http-pprof") {
            return Err(invalid(
                "required flag: --http-bind must be specified when --http-pprof is set",
            ));
        }
    } else {
        if s.bool("http-pprof") {
            return Err(invalid("--http-pprof is not supported by dagsnap (it is not a Go program); /metrics and the logs describe what it does"));
        }
        opt(&mut argv, "http-bind", &bind);
        if !s.bool("http-metrics") {
            info(
                &mut notes,
                "/metrics is served whenever --http-bind is set (git_sync_* series included)",
            );
        }
    }

    let mut verbose = s.int("verbose");
    if s.int("v") >= 0 {
        verbose = s.int("v");
    }
    if s.given("verbose") || s.int("v") >= 0 {
        let level = match verbose {
            i64::MIN..=0 => "info",
            1..=5 => "debug",
            _ => "trace",
        };
        argv.push("--log-level".into());
        argv.push(level.into());
    }

    argv_flag(&mut argv, "adopt-git-sync");
    notes.push(Note::Info(format!(
        "running as git-sync: readers use {} as before; snapshots live in .dagsnap/ next to it (hidden from Airflow by .airflowignore), and a root git-sync published is taken over once git-sync has left it alone for 30s (DAGSNAP_ADOPT_AFTER)",
        link
    )));
    Ok(Invocation {
        argv,
        password,
        exechook_direct,
        check_direct,
        notes,
    })
}

fn opt(argv: &mut Vec<OsString>, name: &str, value: &str) {
    argv.push(format!("--{name}").into());
    argv.push(value.into());
}

fn argv_flag(argv: &mut Vec<OsString>, name: &str) {
    argv.push(format!("--{name}").into());
}

/// git-sync's failure count (exit when the failures in a row reach N; 0 and 1 both exit on
/// the first) as dagsnap's (the failures tolerated).
fn tolerated(git_sync: i64) -> i64 {
    match git_sync {
        n if n < 0 => -1,
        0 => 0,
        n => n - 1,
    }
}

/// A duration in a notation dagsnap reads back exactly.
fn go_duration(d: Duration) -> String {
    format!("{}ns", d.as_nanos())
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

fn help() -> String {
    let mut out = String::from(
        "Usage: git-sync [FLAGS...]\n\n\
         This is dagsnap running as git-sync: it reads git-sync's flags and environment and\n\
         publishes each commit as an atomic, read-only snapshot behind --link.\n\
         See docs/migrating.md for what each flag does here.\n\n FLAGS (and their environment variables):\n",
    );
    for spec in FLAGS {
        let short = spec.short.map(|c| format!("-{c}, ")).unwrap_or_default();
        let env = if spec.env.is_empty() {
            String::new()
        } else {
            format!(" (${})", spec.env.join(", $"))
        };
        out.push_str(&format!(
            "    {short}--{}{env}\n            {}",
            spec.name, spec.help
        ));
        if !spec.default.is_empty() && !matches!(spec.default, "false" | "0" | "-1") {
            out.push_str(&format!(" [default: {}]", spec.default));
        }
        out.push('\n');
    }
    out.push_str("\n ENVIRONMENT VARIABLES:\n    $GITSYNC_PASSWORD (or $GIT_SYNC_PASSWORD)\n            the password or token for --username\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str], env: &[(&str, &str)]) -> Result<Invocation, ConfigError> {
        let env: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        match parse(&args, &|key| env.get(key).cloned())? {
            Parsed::Run(invocation) => Ok(*invocation),
            Parsed::Print(text) => panic!("printed {text}"),
        }
    }

    /// The value dagsnap receives for `--name`, if any.
    fn option(invocation: &Invocation, name: &str) -> Option<String> {
        let flag = OsString::from(format!("--{name}"));
        let at = invocation.argv.iter().position(|a| *a == flag)?;
        invocation
            .argv
            .get(at + 1)
            .map(|v| v.to_string_lossy().into_owned())
    }

    fn has(invocation: &Invocation, name: &str) -> bool {
        let flag = OsString::from(format!("--{name}"));
        invocation.argv.contains(&flag)
    }

    const BASE: [(&str, &str); 2] = [
        ("GITSYNC_REPO", "https://h/org/dags.git"),
        ("GITSYNC_ROOT", "/git"),
    ];

    #[test]
    fn every_flag_has_a_setting_and_a_known_kind_of_default() {
        let settings = Settings::from_environment(&|_| None, &mut Vec::new()).unwrap();
        for spec in FLAGS {
            assert!(settings.by_name.contains_key(spec.name));
            if spec.kind != Credentials && spec.kind != List && spec.kind != Str {
                check_value(spec.kind, spec.default).unwrap();
            }
        }
    }

    #[test]
    fn a_flag_beats_the_environment_and_an_older_name_beats_a_newer_one() {
        let i = run(
            &["--period=3s"],
            &[BASE[0], BASE[1], ("GITSYNC_PERIOD", "9s")],
        )
        .unwrap();
        assert_eq!(option(&i, "period").as_deref(), Some("3000000000ns"));
        let i = run(
            &[],
            &[
                BASE[0],
                BASE[1],
                ("GITSYNC_PERIOD", "9s"),
                ("GIT_SYNC_PERIOD", "4s"),
            ],
        )
        .unwrap();
        assert_eq!(option(&i, "period").as_deref(), Some("4000000000ns"));
        assert!(i.notes.contains(&Note::Warn(
            "env $GIT_SYNC_PERIOD has been deprecated, use $GITSYNC_PERIOD instead".into()
        )));
        assert!(i.notes.contains(&Note::Warn(
            "env $GITSYNC_PERIOD was overridden by $GIT_SYNC_PERIOD".into()
        )));
        // v3's --wait (seconds) beats v4's --period.
        let i = run(
            &["--period", "9s"],
            &[BASE[0], BASE[1], ("GIT_SYNC_WAIT", "1.5")],
        )
        .unwrap();
        assert_eq!(option(&i, "period").as_deref(), Some("1500000000ns"));
    }

    #[test]
    fn the_charts_v3_and_v4_names_together_resolve_as_git_sync_resolves_them() {
        let i = run(
            &[],
            &[
                ("GIT_SYNC_REV", "HEAD"),
                ("GITSYNC_REF", "v2-2-stable"),
                ("GIT_SYNC_BRANCH", "main"),
                ("GIT_SYNC_REPO", "https://h/org/dags.git"),
                ("GITSYNC_REPO", "https://h/org/dags.git"),
                ("GIT_SYNC_DEPTH", "1"),
                ("GITSYNC_DEPTH", "1"),
                ("GIT_SYNC_ROOT", "/git"),
                ("GITSYNC_ROOT", "/git"),
                ("GIT_SYNC_DEST", "repo"),
                ("GITSYNC_LINK", "repo"),
                ("GIT_SYNC_ADD_USER", "true"),
                ("GITSYNC_ADD_USER", "true"),
                ("GITSYNC_PERIOD", "5s"),
                ("GIT_SYNC_MAX_SYNC_FAILURES", "0"),
                ("GITSYNC_MAX_FAILURES", "0"),
                ("GIT_SYNC_USERNAME", "u"),
                ("GITSYNC_USERNAME", "u"),
                ("GIT_SYNC_PASSWORD", "p"),
                ("GITSYNC_PASSWORD", "p"),
            ],
        )
        .unwrap();
        assert_eq!(
            option(&i, "ref").as_deref(),
            Some("main"),
            "--branch wins over --ref when --rev is HEAD"
        );
        assert_eq!(option(&i, "link").as_deref(), Some("repo"));
        assert_eq!(option(&i, "root").as_deref(), Some("/git"));
        assert_eq!(option(&i, "period").as_deref(), Some("5000000000ns"));
        assert_eq!(option(&i, "max-failures").as_deref(), Some("0"));
        assert_eq!(option(&i, "username").as_deref(), Some("u"));
        assert_eq!(i.password.as_deref(), Some("p"));
        assert!(has(&i, "adopt-git-sync"));
    }

    #[test]
    fn failure_budgets_translate_to_failures_tolerated() {
        for (given, tolerated) in [("0", "0"), ("1", "0"), ("3", "2"), ("-1", "-1")] {
            let i = run(&["--max-failures", given], &BASE).unwrap();
            assert_eq!(
                option(&i, "max-failures").as_deref(),
                Some(tolerated),
                "{given}"
            );
        }
        let i = run(&["--init-max-failures=5", "--init-period=500ms"], &BASE).unwrap();
        assert_eq!(option(&i, "init-max-failures").as_deref(), Some("4"));
        assert_eq!(option(&i, "init-period").as_deref(), Some("500000000ns"));
    }

    #[test]
    fn the_link_defaults_to_the_last_part_of_the_repository() {
        let i = run(&[], &BASE).unwrap();
        assert_eq!(option(&i, "link").as_deref(), Some("dags.git"));
        let i = run(&["-dest=dags", "-wait=2"], &BASE).unwrap();
        assert_eq!(
            option(&i, "link").as_deref(),
            Some("dags"),
            "v3's single-dash flags"
        );
        assert_eq!(option(&i, "period").as_deref(), Some("2000000000ns"));
    }

    /// Arguments, environment, and what the error must say.
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

    #[test]
    fn bad_values_get_git_sync_s_one_line_errors() {
        let cases: [Case; 14] = [
            (&[], &[BASE[1]], "required flag: --repo must be specified"),
            (&[], &[BASE[0]], "required flag: --root must be specified"),
            (&["--period=5ms"], &BASE, "--period must be at least 10ms"),
            (
                &["--depth=-1"],
                &BASE,
                "--depth must be greater than or equal to 0",
            ),
            (&["--nope"], &BASE, "unknown flag: --nope"),
            (
                &["--one-time=maybe"],
                &BASE,
                "invalid argument \"maybe\" for \"--one-time\" flag",
            ),
            (&["--repo"], &BASE, "flag needs an argument: --repo"),
            (
                &[],
                &[BASE[0], BASE[1], ("GITSYNC_ONE_TIME", "maybe")],
                "invalid bool env GITSYNC_ONE_TIME=\"maybe\"",
            ),
            (
                &[],
                &[BASE[0], BASE[1], ("GITSYNC_PERIOD", "10")],
                "invalid duration env GITSYNC_PERIOD=\"10\"",
            ),
            (
                &["--branch=a", "--rev=b"],
                &BASE,
                "can't set --ref from deprecated --branch and --rev",
            ),
            (
                &["--username=u"],
                &BASE,
                "$GITSYNC_PASSWORD or --password-file must be specified",
            ),
            (&["--submodules=all"], &BASE, "--submodules must be one of"),
            (
                &["--askpass-url=http://x/"],
                &BASE,
                "--askpass-url is not supported",
            ),
            (
                &["--sync-on-signal=SIGNOPE"],
                &BASE,
                "--sync-on-signal must be a valid signal",
            ),
        ];
        for (args, env, needle) in cases {
            let err = run(args, env).unwrap_err().0;
            assert!(err.contains(needle), "{args:?} {env:?}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn booleans_and_ints_read_like_go() {
        let i = run(&["--one-time=T"], &BASE).unwrap();
        assert!(has(&i, "one-time"));
        let i = run(
            &[],
            &[
                BASE[0],
                BASE[1],
                ("GITSYNC_ONE_TIME", "1"),
                ("GITSYNC_DEPTH", "0x10"),
            ],
        )
        .unwrap();
        assert!(has(&i, "one-time"));
        assert_eq!(option(&i, "depth").as_deref(), Some("16"));
        let i = run(&["-v", "6"], &BASE).unwrap();
        assert_eq!(option(&i, "log-level").as_deref(), Some("trace"));
        let i = run(&["-v2"], &BASE).unwrap();
        assert_eq!(option(&i, "log-level").as_deref(), Some("debug"));
    }

    #[test]
    fn ssh_settings_apply_to_ssh_remotes_only() {
        let env = [
            ("GITSYNC_REPO", "git@h:org/dags.git"),
            BASE[1],
            ("GIT_SSH_KEY_FILE", "/k1:/k2"),
        ];
        let i = run(&[], &env).unwrap();
        let keys: Vec<_> = i
            .argv
            .windows(2)
            .filter(|w| w[0] == "--ssh-key-file")
            .map(|w| w[1].clone())
            .collect();
        assert_eq!(keys, ["/k1", "/k2"]);
        assert_eq!(
            option(&i, "ssh-known-hosts-file").as_deref(),
            Some("/etc/git-secret/known_hosts")
        );
        let i = run(&[], &BASE).unwrap();
        assert!(!has(&i, "ssh-key-file") && !has(&i, "ssh-known-hosts"));
    }

    #[test]
    fn git_config_reads_quoted_pairs() {
        assert_eq!(
            parse_git_config(r#"http.sslCAInfo:/ca.pem,"safe.directory":"*""#).unwrap(),
            [
                ("http.sslCAInfo".to_string(), "/ca.pem".to_string()),
                ("safe.directory".into(), "*".into())
            ]
        );
        assert!(parse_git_config("novalue").is_err());
        let i = run(&["--git-config=http.sslCAInfo:/ca.pem"], &BASE).unwrap();
        assert_eq!(option(&i, "ca-file").as_deref(), Some("/ca.pem"));
        assert!(run(&["--git-config=core.autocrlf:true"], &BASE)
            .unwrap_err()
            .0
            .contains("core.autocrlf"));
    }

    #[test]
    fn a_credential_for_the_repository_is_used() {
        let i = run(
            &[r#"--credential={"url":"https://h/org","username":"bot","password-file":"/s/t"}"#],
            &BASE,
        )
        .unwrap();
        assert_eq!(option(&i, "username").as_deref(), Some("bot"));
        assert_eq!(option(&i, "password-file").as_deref(), Some("/s/t"));
    }
}
