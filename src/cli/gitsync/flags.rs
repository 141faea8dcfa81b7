//! git-sync's flags: names, kinds, environment variables and defaults, as git-sync v4.7
//! declares them (v3's names included).

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
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
pub(super) struct Spec {
    pub name: &'static str,
    pub short: Option<char>,
    pub kind: Kind,
    /// Its environment variables: the current name first, then older names (which win).
    pub env: &'static [&'static str],
    pub default: &'static str,
    pub help: &'static str,
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
pub(super) const FLAGS: &[Spec] = &[
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
    flag("git-config", Str, &["GITSYNC_GIT_CONFIG", "GIT_SYNC_GIT_CONFIG"], "", "git configuration as 'key:value,...' (applied to fetches and to the git processes dagsnap starts)"),
    flag("git-config-add", List, &[], "", "one more git configuration 'key:value'; repeatable"),
    flag("filter", Str, &["GITSYNC_FILTER"], "", "a partial-clone filter (blob:none, tree:0): dagsnap fetches only the tip, the filter is not needed"),
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
pub(super) const PASSWORD_ENV: &[&str] = &["GITSYNC_PASSWORD", "GIT_SYNC_PASSWORD"];
pub(super) const GITHUB_KEY_ENV: &[&str] = &["GITSYNC_GITHUB_APP_PRIVATE_KEY"];
