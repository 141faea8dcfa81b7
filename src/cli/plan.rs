//! `sync`'s arguments checked and turned into what the loop runs: [`SyncPlan`], the stage after
//! clap's plain arguments ([`SyncArgs`]), as ripgrep's high-level arguments follow its
//! low-level ones. Every rule that combines several settings lives here (the retention a
//! volume needs, a check that must end before the cycle does, options that need the HTTP
//! endpoints), checked without starting anything, so that a mistake is one line at start.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::{Submodules, SyncArgs};
use crate::daemon::check::CheckCommand;
use crate::daemon::hooks::{ExecHook, WebHook};
use crate::daemon::http::Auth;
use crate::daemon::publish::{Content, Gate, Publisher, Settings, Source};
use crate::daemon::{Opener, Schedule, Surface};
use crate::git::access::{Access, Password};
use crate::git::redact::Redactor;
use crate::git::{select, submodules, Remote, Target};
use crate::store::snapshot::Reuse;
use crate::store::volume::{Locks, Mount};
use crate::store::Root;

/// The least `--grace` on a volume whose locks are not known to work.
pub(crate) const MIN_UNVERIFIED_GRACE: Duration = Duration::from_secs(120);

/// A `sync` that can run: every setting checked, the pieces of the loop built.
#[derive(Debug)]
pub struct SyncPlan {
    /// `--repo`, or each `--source`.
    pub sources: Vec<Source>,
    pub root: Root,
    pub cache_dir: PathBuf,
    pub settings: Settings,
    pub gate: Gate,
    pub schedule: Schedule,
    /// `--http-bind` and who may `POST /sync`; bound by [`SyncPlan::surface`].
    pub http: Option<(String, Auth)>,
    pub exec_hook: Option<ExecHook>,
    pub web_hook: Option<WebHook>,
    pub touch_file: Option<PathBuf>,
    pub error_file: Option<PathBuf>,
    pub ready_max_age: Option<Duration>,
    /// `--group-write`: files under the root writable by the group too.
    pub group_write: bool,
    /// Said at start, at warning level: what the operator should know (and fix).
    pub warnings: Vec<String>,
}

impl SyncPlan {
    /// Check `args` and build what the loop needs. `mount` is the root's volume (or its nearest
    /// existing ancestor's): what it promises about locks decides whether the root can be
    /// shared at all, and how long snapshots must stay.
    pub fn new(args: SyncArgs, mount: Option<&Mount>) -> Result<SyncPlan, String> {
        let mut warnings = Vec::new();
        let access = args.access.access(args.sync_timeout)?;
        if !access.ssh.check_host_keys {
            warnings.push("SSH HOST KEY CHECKING IS OFF (--ssh-known-hosts=false): anyone between this pod and the server can serve it DAGs. Use --ssh-known-hosts-file instead".into());
        }
        let sources = match &args.repo {
            Some(repo) => vec![repository(&args, repo, access)?],
            None => several(&args, &access)?,
        };
        let shown: Vec<String> = sources.iter().map(|s| s.remote.display_url()).collect();
        let cache_dir = args.cache_dir(&shown.join("\n"));
        let root = args.root.locate().map_err(|e| e.to_string())?;
        let settings = settings(&args, mount, &mut warnings)?;
        let root = owned_files(&args, root);
        let gate = gate(&args, &cache_dir)?;
        check_http(&args)?;
        let (touch_file, error_file) = (
            relative_to_root(&args, &args.hooks.touch_file),
            relative_to_root(&args, &args.hooks.error_file),
        );
        let hook = &args.hooks;
        Ok(SyncPlan {
            schedule: schedule(&args),
            http: args.http.http_bind.clone().map(|bind| {
                let auth = Auth {
                    token_file: args.http.trigger_token_file.clone(),
                    webhook_secret_file: args.http.webhook_secret_file.clone(),
                };
                (bind, auth)
            }),
            exec_hook: hook.exechook_command.clone().map(|command| ExecHook {
                command,
                direct: hook.exechook_direct,
                timeout: hook.exechook_timeout,
                backoff: hook.exechook_backoff,
                work_dir: cache_dir.join(HOOK_DIR),
            }),
            web_hook: hook.webhook_url.clone().map(|url| WebHook {
                url,
                method: hook.webhook_method.clone(),
                success_status: hook.webhook_success_status,
                timeout: hook.webhook_timeout,
                backoff: hook.webhook_backoff,
            }),
            touch_file,
            error_file,
            ready_max_age: args.http.ready_max_age,
            group_write: args.group_write,
            sources,
            root,
            cache_dir,
            settings,
            gate,
            warnings,
        })
    }

    /// Give the git processes dagsnap starts the configured git configuration
    /// ([`crate::git::access::export_git_config`]). Before any other thread starts.
    pub fn export_git_config(&self) {
        if let Some(first) = self.sources.first() {
            // One --git-config for every source.
            crate::git::access::export_git_config(first.remote.git_config(), &self.cache_dir);
        }
    }

    /// Whether any source is reached over ssh.
    pub fn uses_ssh(&self) -> bool {
        self.sources.iter().any(|s| s.remote.is_ssh())
    }

    /// Hides every source's secrets.
    pub fn redactor(&self) -> Redactor {
        crate::daemon::publish::redactor(&self.sources)
    }

    /// Opens the publisher; called again while its cache is busy (see `daemon::run`).
    pub fn opener(&self) -> Opener {
        let (root, sources, cache_dir) = (
            self.root.clone(),
            self.sources.clone(),
            self.cache_dir.clone(),
        );
        let (settings, gate) = (self.settings, self.gate.clone());
        Arc::new(move || {
            Publisher::open(root.clone(), sources.clone(), &cache_dir, settings)
                .map(|publisher| publisher.with_gate(gate.clone()))
        })
    }

    /// What the loop shows the outside world; binds `--http-bind` now, so that a busy port is
    /// one clear error at start.
    pub fn surface(&self) -> Result<Surface, String> {
        let http = match &self.http {
            Some((bind, auth)) => Some((crate::daemon::http::bind(bind)?, auth.clone())),
            None => None,
        };
        Ok(Surface {
            http,
            exec_hook: self.exec_hook.clone(),
            web_hook: self.web_hook.clone(),
            touch_file: self.touch_file.clone(),
            error_file: self.error_file.clone(),
            ready_max_age: self.ready_max_age,
            checks: self.gate.check.is_some(),
            signatures: self.gate.signatures.is_some(),
            keep: self.settings.retention.keep,
        })
    }
}

/// The retention and timing a publisher runs with. On a volume other machines share, a
/// publisher's decision may reach the link as late as its lock timeout plus its sync timeout
/// if locks fail: what it may link is kept that long. A volume whose locks stay on one client
/// is refused; one whose locks are not known to work gets a longer grace.
fn settings(
    args: &SyncArgs,
    mount: Option<&Mount>,
    warnings: &mut Vec<String>,
) -> Result<Settings, String> {
    let pending = if mount.is_none_or(|m| m.is_shared()) {
        args.lock_timeout + args.sync_timeout
    } else {
        Duration::ZERO
    };
    let mut retention = args.retention.policy(pending);
    match mount.map(|m| m.locks()).unwrap_or(Locks::Expected) {
        Locks::Local(why) => return Err(why),
        Locks::Unverified(why) => {
            warnings.push(why);
            // Without locks that are known to work, GC elsewhere may retire a snapshot readers
            // were just sent to; a longer grace gives them time.
            if retention.grace < MIN_UNVERIFIED_GRACE {
                warnings.push(format!(
                    "raising --grace to {}: locks on this volume are not known to work",
                    humantime::format_duration(MIN_UNVERIFIED_GRACE)
                ));
                retention.grace = MIN_UNVERIFIED_GRACE;
            }
        }
        Locks::Expected => {}
    }
    Ok(Settings {
        period: args.period,
        min_publish_interval: args.min_publish_interval,
        lock_timeout: args.lock_timeout,
        reuse: if args.full_copy {
            Reuse::FullCopy
        } else {
            Reuse::HardLink
        },
        retention,
        verify_period: Some(args.verify_period).filter(|p| !p.is_zero()),
        build_jobs: args.build_jobs,
    })
}

/// `--repo`: its tree is the snapshot.
fn repository(args: &SyncArgs, repo: &str, access: Access) -> Result<Source, String> {
    let target = Target::parse(args.git_ref.as_deref())?;
    let content = content(args)?;
    let remote = Remote::new(repo, target, args.depth, access)?.reading_only(
        select::Selection::of(content.subdir.clone(), content.sparse.clone()),
    );
    Ok(Source {
        name: None,
        remote,
        content,
        allow_stale: false,
    })
}

/// Each `--source` (or each of `--sources-file`), published under its name. Settings of
/// `--repo` that would apply to all of them at once are refused: a credential would reach every
/// source's server, and a ref or subdir names a place in one repository.
fn several(args: &SyncArgs, access: &Access) -> Result<Vec<Source>, String> {
    let specs = args.sources.specs()?;
    let one_for_all = [
        (args.git_ref.is_some(), "--ref", "--source-ref NAME=REF"),
        (
            args.subdir.is_some(),
            "--subdir",
            "--source-subdir NAME=PATH",
        ),
        (
            args.sparse_checkout_file.is_some(),
            "--sparse-checkout-file",
            "--source-subdir NAME=PATH",
        ),
        (
            access.username.is_some(),
            "--username",
            "--source-username NAME=USER",
        ),
        (
            access.password.is_some(),
            "--password-file (or DAGSNAP_PASSWORD, --askpass-url, --github-app-*)",
            "--source-password-file NAME=FILE",
        ),
        (
            !access.ssh.key_files.is_empty(),
            "--ssh-key-file",
            "--source-ssh-key-file NAME=FILE",
        ),
        (
            access.cookie_file.is_some(),
            "--cookie-file",
            "a source's own credentials",
        ),
    ];
    if let Some((_, flag, instead)) = one_for_all.iter().find(|(given, _, _)| *given) {
        return Err(format!("{flag} would apply to every source (a credential would reach every source's server); with --source give each source its own: {instead}"));
    }
    let content = content(args)?;
    specs
        .into_iter()
        .map(|spec| {
            let mut own = access.clone();
            own.username = spec.username.clone();
            own.password = spec.password_file.clone().map(Password::File);
            own.ssh.key_files = spec.ssh_key_file.clone().into_iter().collect();
            let target = Target::parse(spec.git_ref.as_deref())
                .map_err(|e| format!("source '{}': {e}", spec.name))?;
            let content = Content {
                subdir: match &spec.subdir {
                    Some(value) => select::parse_subdir(value)
                        .map_err(|e| format!("source '{}': {e}", spec.name))?,
                    None => None,
                },
                ..content.clone()
            };
            let remote = Remote::new(&spec.url, target, spec.depth.unwrap_or(args.depth), own)
                .map_err(|e| format!("source '{}': {e}", spec.name))?
                .reading_only(select::Selection::of(content.subdir.clone(), None));
            Ok(Source {
                name: Some(spec.name),
                remote,
                content,
                allow_stale: spec.allow_stale,
            })
        })
        .collect()
}

/// What of each commit is published.
fn content(args: &SyncArgs) -> Result<Content, String> {
    Ok(Content {
        submodules: match args.submodules {
            Submodules::Off => submodules::Mode::Off,
            Submodules::Shallow => submodules::Mode::Shallow,
            Submodules::Recursive => submodules::Mode::Recursive,
        },
        subdir: match &args.subdir {
            Some(value) => select::parse_subdir(value).map_err(|e| e.to_string())?,
            None => None,
        },
        sparse: match &args.sparse_checkout_file {
            Some(file) => Some(select::Sparse::read(file).map_err(|e| e.to_string())?),
            None => None,
        },
    })
}

/// The root, taking over git-sync's files when asked to, and owning the touch and error files
/// this publisher keeps in it (so a restart does not take them for foreign).
fn owned_files(args: &SyncArgs, root: Root) -> Root {
    let mut root = root;
    if args.adopt_git_sync {
        root = root.adopting_git_sync(args.adopt_after);
    }
    for file in [&args.hooks.touch_file, &args.hooks.error_file] {
        if let Some(path) = relative_to_root(args, file) {
            root = root.owning(&path);
        }
    }
    root
}

/// The writable directories of the exec hook and the check, in the private cache directory
/// (`$DAGSNAP_HOOK_DIR`): the snapshot they run in is read-only.
const HOOK_DIR: &str = "exechook";
const CHECK_DIR: &str = "check";

/// A file given relative to the root, made absolute.
fn relative_to_root(args: &SyncArgs, path: &Option<PathBuf>) -> Option<PathBuf> {
    path.as_ref().map(|p| {
        if p.is_absolute() {
            p.clone()
        } else {
            args.root.root.join(p)
        }
    })
}

/// `--check-command`, which must end before the cycle's `--sync-timeout` does.
fn gate(args: &SyncArgs, cache_dir: &Path) -> Result<Gate, String> {
    let gate = Gate {
        check: args.check.command().map(|command| CheckCommand {
            command: command.to_string(),
            direct: args.check.check_direct,
            timeout: args.check.check_timeout,
            work_dir: cache_dir.join(CHECK_DIR),
        }),
        signatures: signatures(args)?,
    };
    if gate.check.is_some() && args.check.check_timeout >= args.sync_timeout {
        return Err(format!(
            "--check-timeout {} is not shorter than --sync-timeout {}: every cycle would end before its check; raise --sync-timeout",
            humantime::format_duration(args.check.check_timeout),
            humantime::format_duration(args.sync_timeout)
        ));
    }
    Ok(gate)
}

/// `--verify-signatures` with its trusted keys, read now: a file that cannot be read or parsed
/// is one line at start. Key files without the mode are refused too (they would do nothing).
fn signatures(args: &SyncArgs) -> Result<Option<crate::signatures::Policy>, String> {
    let check = &args.check;
    let files = crate::signatures::KeyFiles {
        allowed_signers: check.allowed_signers.clone(),
        revoked_keys: check.revoked_keys.clone(),
        gpg_keyring: check.gpg_keyring.clone(),
    };
    match check.verify_signatures {
        None if files != crate::signatures::KeyFiles::default() => Err(
            "--allowed-signers, --revoked-keys and --gpg-keyring need --verify-signatures (commit, tag or tag-and-commit)".into(),
        ),
        None => Ok(None),
        Some(mode) => crate::signatures::Policy::load(mode, files).map(Some),
    }
}

/// Options of the HTTP endpoints need them on; a secret that cannot be read would refuse
/// every request: say so now, not at 3 am.
fn check_http(args: &SyncArgs) -> Result<(), String> {
    if args.http.http_bind.is_none() {
        let needs_server = [
            ("--ready-max-age", args.http.ready_max_age.is_some()),
            (
                "--trigger-token-file",
                args.http.trigger_token_file.is_some(),
            ),
            (
                "--webhook-secret-file",
                args.http.webhook_secret_file.is_some(),
            ),
        ];
        if let Some((flag, _)) = needs_server.iter().find(|(_, given)| *given) {
            return Err(format!(
                "{flag} needs --http-bind: it applies to the HTTP endpoints, which are off"
            ));
        }
    }
    for (flag, file) in [
        ("--trigger-token-file", &args.http.trigger_token_file),
        ("--webhook-secret-file", &args.http.webhook_secret_file),
    ] {
        if let Some(file) = file {
            check_secret(flag, file)?;
        }
    }
    Ok(())
}

fn check_secret(flag: &str, file: &Path) -> Result<(), String> {
    let secret = std::fs::read(file).map_err(|e| {
        format!(
            "cannot read {flag} {}: {e}; mount the secret there or drop the flag",
            file.display()
        )
    })?;
    if secret.trim_ascii().is_empty() {
        return Err(format!(
            "{flag} {} is empty; put the secret in it",
            file.display()
        ));
    }
    Ok(())
}

/// When and how persistently to sync.
fn schedule(args: &SyncArgs) -> Schedule {
    Schedule {
        period: args.period,
        sync_timeout: args.sync_timeout,
        failure_budget: args.failure_budget(),
        backoff_max: args.backoff_max,
        one_time: args.one_time,
        progress_interval: args.progress_interval,
        init_period: args.init_period,
        init_failure_budget: args.init_failure_budget(),
        sync_signal: args.sync_on_signal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn plan(extra: &[&str], mount: Option<&Mount>) -> Result<SyncPlan, String> {
        let mut argv = vec![
            "dagsnap",
            "sync",
            "--repo",
            "/srv/dags",
            "--root",
            "/dags-root",
            "--cache-dir",
            "/cache",
        ];
        argv.extend_from_slice(extra);
        match crate::cli::Cli::try_parse_from(argv)
            .map_err(|e| e.to_string())?
            .command
        {
            crate::cli::Command::Sync(args) => SyncPlan::new(*args, mount),
            _ => unreachable!("a sync command"),
        }
    }

    #[test]
    fn a_check_that_cannot_end_before_the_cycle_is_refused() {
        let err = plan(
            &[
                "--check-command",
                "true",
                "--check-timeout",
                "2m",
                "--sync-timeout",
                "2m",
            ],
            None,
        )
        .unwrap_err();
        assert!(err.contains("raise --sync-timeout"), "{err}");
        let ok = plan(
            &[
                "--check-command",
                "true",
                "--check-timeout",
                "1m",
                "--sync-timeout",
                "2m",
            ],
            None,
        )
        .unwrap();
        assert!(ok.gate.check.is_some());
    }

    #[test]
    fn endpoint_options_need_the_endpoints() {
        for flag in [
            ["--ready-max-age", "1m"],
            ["--trigger-token-file", "/nonexistent"],
        ] {
            let err = plan(&flag, None).unwrap_err();
            assert!(err.contains("needs --http-bind"), "{err}");
        }
        let err = plan(
            &["--http-bind", ":0", "--trigger-token-file", "/nonexistent"],
            None,
        )
        .unwrap_err();
        assert!(err.contains("mount the secret there"), "{err}");
    }

    #[test]
    fn retention_follows_what_the_volume_promises_about_locks() {
        let mount = |fs_type: &str, options: &str| Mount {
            mount_point: PathBuf::from("/dags-root"),
            fs_type: fs_type.into(),
            source: "server:/export".into(),
            options: options.split(',').map(str::to_string).collect(),
        };
        // Local disk: nothing another machine decides can reach the link late.
        let local = plan(&["--grace", "10s"], Some(&mount("ext4", "rw"))).unwrap();
        assert_eq!(local.settings.retention.pending, Duration::ZERO);
        assert_eq!(local.settings.retention.grace, Duration::from_secs(10));
        // A network volume: what a publisher may link is kept its lock and sync timeouts.
        let nfs = plan(&["--grace", "10s"], Some(&mount("nfs4", "rw,vers=4.1"))).unwrap();
        assert!(nfs.settings.retention.pending > Duration::ZERO);
        // Locks that stay on each client: refused.
        let err = plan(&[], Some(&mount("nfs", "rw,vers=3,nolock"))).unwrap_err();
        assert!(err.contains("nolock"), "{err}");
        // Locks not known to work: a longer grace, said.
        let fuse = plan(&["--grace", "10s"], Some(&mount("fuse.sshfs", "rw"))).unwrap();
        assert_eq!(fuse.settings.retention.grace, MIN_UNVERIFIED_GRACE);
        assert!(fuse.warnings.iter().any(|w| w.contains("raising --grace")));
    }
}
