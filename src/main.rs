//! The `dagsnap` binary: parse the command line, run the command, and render any error once.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use dagsnap::rfc3339;
use dagsnap::{gitsync, history, status, verify};
use dagsnap::{
    CachesArgs, Cli, Command, GcArgs, ListArgs, LogArgs, LogFormat, PinArgs, RecheckArgs,
    RemoveArgs, RollbackArgs, StatusArgs, SyncArgs, SyncPlan, UnpinArgs, VerifyArgs,
};
use dagsnap::{Exit, Remote, Root, StoreError, Style, Target};

/// Exit codes: 0 success or clean stop; 1 the sync failed (or nothing is live, for `status`);
/// 2 the command line, root or cache is unusable and retrying will not help.
const EXIT_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    limit_malloc_arenas();
    // Everything dagsnap creates gets the mode it asks for, whatever the umask it was started
    // with: snapshots readable by every reader, nothing under the root writable by others.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    let mut argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if invoked_as_git_sync(&argv) {
        argv.insert(1, "git-sync".into());
    }
    let mut cli = Cli::parse_from(argv);
    let mut notes = Vec::new();
    if let Command::GitSync(raw) = &cli.command {
        match as_git_sync(&raw.args) {
            Ok((sync_cli, said)) => (cli, notes) = (sync_cli, said),
            Err(code) => return code,
        }
    }
    // Operator commands print their errors for a person, even under `kubectl exec` without a
    // terminal; JSON only when asked for. Only the sync loop's logs go to a collector.
    let format = match (&cli.command, cli.log_format) {
        (Command::Sync(_), format) => format,
        (_, LogFormat::Auto) => LogFormat::Text,
        (_, format) => format,
    };
    let style = match dagsnap::init_logging(format, &cli.log_level) {
        Ok(style) => style,
        Err(message) => {
            eprintln!("dagsnap: {message}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    for note in notes {
        match note {
            gitsync::Note::Info(text) => tracing::info!("{text}"),
            gitsync::Note::Warn(text) => tracing::warn!("{text}"),
            gitsync::Note::Deprecated(text) => tracing::info!("deprecated: {text}"),
        }
    }
    let result = match cli.command {
        Command::Sync(args) => sync(*args, style),
        Command::Status(args) => show_status(args),
        Command::Gc(args) => collect_garbage(args),
        Command::Remove(args) => remove(args),
        Command::Caches(args) => caches(args),
        Command::List(args) => list_snapshots(args),
        Command::Log(args) => show_log(args),
        Command::Rollback(args) => roll_back(args),
        Command::Pin(args) => pin(args),
        Command::Unpin(args) => unpin(args),
        Command::Recheck(args) => recheck(args),
        Command::Verify(args) => verify_snapshot(*args),
        // Replaced by `sync` above.
        Command::GitSync(_) => Err((
            EXIT_USAGE,
            "internal error: git-sync arguments were not translated".into(),
        )),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err((code, message)) => {
            tracing::error!("{message}");
            ExitCode::from(code)
        }
    }
}

/// The mount of `root` (or of its nearest existing ancestor, before it is created).
fn volume_mount(root: &std::path::Path) -> Option<dagsnap::Mount> {
    root.ancestors()
        .find(|p| p.exists())
        .and_then(dagsnap::Mount::of)
}

/// Started as git-sync: under its name (a symlink `git-sync` to dagsnap, as in an image that
/// replaces git-sync's), or without arguments in an environment that configures git-sync (the
/// image's default command in a container spec written for git-sync, like the Airflow chart's,
/// which sets only environment variables).
fn invoked_as_git_sync(argv: &[std::ffi::OsString]) -> bool {
    let named = argv
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .is_some_and(|name| name == "git-sync");
    let configured = argv.len() == 1
        && std::env::vars_os().any(|(key, _)| {
            let key = key.to_string_lossy();
            key.starts_with("GITSYNC_") || key.starts_with("GIT_SYNC_")
        });
    named || configured
}

/// Read git-sync's command line and environment into a dagsnap `sync` command; what to say at
/// start. On a configuration error, or for `--help`/`--version`, the exit code.
fn as_git_sync(args: &[std::ffi::OsString]) -> Result<(Cli, Vec<gitsync::Note>), ExitCode> {
    let env = |key: &str| std::env::var(key).ok();
    let invocation = match gitsync::parse(args, &env) {
        Ok(gitsync::Parsed::Run(invocation)) => invocation,
        Ok(gitsync::Parsed::Print(text)) => {
            print!("{text}");
            return Err(ExitCode::SUCCESS);
        }
        Err(e) => {
            eprintln!("{e}");
            return Err(ExitCode::from(EXIT_USAGE));
        }
    };
    let mut cli = Cli::try_parse_from(invocation.argv()).map_err(|e| {
        // A value only dagsnap's own checks refuse (a webhook URL, say): its first line.
        let text = e.to_string();
        let line = text.lines().next().unwrap_or_default();
        eprintln!("{}", line.strip_prefix("error: ").unwrap_or(line));
        ExitCode::from(EXIT_USAGE)
    })?;
    if let Command::Sync(sync) = &mut cli.command {
        sync.access.password = invocation.password();
        sync.access.github_app_private_key = invocation.github_app_key();
        sync.hooks.exechook_direct = invocation.exechook_direct();
        sync.check.check_direct = invocation.check_direct();
    }
    Ok((cli, invocation.notes))
}

/// glibc gives every thread that allocates its own arena (up to 8 per core), and freed memory
/// stays in them. gix decompresses large objects on several threads during a fetch, so the
/// arenas hold several copies' worth of high-water mark; two arenas cut the peak RSS of a first
/// publish by about 12% (see docs/benchmarks.md) at no measurable cost in time.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: called first thing in main, before any other thread exists; mallopt only changes
    // a tuning parameter of the allocator.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

type Outcome = Result<u8, (u8, String)>;

fn usage<E: std::fmt::Display>(e: E) -> (u8, String) {
    (EXIT_USAGE, e.to_string())
}

fn sync(args: SyncArgs, style: Style) -> Outcome {
    let mount = volume_mount(&args.root.root);
    let plan = SyncPlan::new(args, mount.as_ref()).map_err(|e| (EXIT_USAGE, e))?;
    if plan.group_write {
        dagsnap::set_group_write(true);
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o002));
    }
    // Before any thread exists: these change the environment of the processes dagsnap starts.
    plan.export_git_config();
    if plan.uses_ssh() {
        // This may set LD_PRELOAD for the ssh processes.
        if let Some(dir) = dagsnap::provide_passwd_entry(&plan.cache_dir).map_err(usage)? {
            tracing::info!(files = %dir.display(), "this uid has no passwd entry; giving ssh one through nss_wrapper");
        }
    }
    let shown = |what: &dyn Fn(&dagsnap::Remote) -> String| -> String {
        match plan.sources.as_slice() {
            [one] if one.name.is_none() => what(&one.remote),
            several => several
                .iter()
                .map(|s| format!("{}={}", s.name.as_deref().unwrap_or(""), what(&s.remote)))
                .collect::<Vec<_>>()
                .join(" "),
        }
    };
    tracing::info!(
        repo = %shown(&|r| r.display_url()),
        r#ref = %shown(&|r| r.target.to_string()),
        depth = %shown(&|r| r.depth.to_string()),
        root = %plan.root.path().display(),
        link = %plan.root.link_path().display(),
        cache = %plan.cache_dir.display(),
        period = %humantime::format_duration(plan.schedule.period),
        one_time = plan.schedule.one_time,
        "dagsnap sync starting"
    );
    for warning in &plan.warnings {
        tracing::warn!("{warning}");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| (EXIT_FAILED, format!("cannot start the async runtime: {e}")))?;
    let surface = plan.surface().map_err(|e| (EXIT_USAGE, e))?;
    let redactor = plan.redactor();
    let exit = runtime.block_on(dagsnap::run(
        plan.opener(),
        plan.root.clone(),
        plan.schedule.clone(),
        surface,
        style,
    ));
    // A cycle abandoned after SIGTERM may still sit in a system call on a blocking thread:
    // dropping the runtime would wait for it. Whatever it leaves is removed on the next start.
    runtime.shutdown_timeout(Duration::from_millis(500));
    match exit {
        Ok(Exit::Clean) => Ok(0),
        Ok(Exit::Unusable { message }) => Err((EXIT_USAGE, redactor.redact(&message))),
        Ok(Exit::GaveUp {
            failures,
            last_error,
        }) => Err((
            EXIT_FAILED,
            format!("giving up after {failures} failed sync(s): {last_error}"),
        )),
        Err(e) => Err((EXIT_FAILED, format!("cannot install signal handlers: {e}"))),
    }
}

fn show_status(args: StatusArgs) -> Outcome {
    let root = args.root.locate().map_err(usage)?;
    let status = status::gather(&root).map_err(usage)?;
    if args.json {
        let json =
            serde_json::to_string_pretty(&status).map_err(|e| (EXIT_FAILED, e.to_string()))?;
        println!("{json}");
    } else {
        print!("{}", status::render_text(&status));
    }
    let fresh = args
        .max_age
        .is_none_or(|max| status::is_fresh(&status, max));
    if !fresh && !args.json {
        println!(
            "STALE:       the live snapshot was last confirmed {} ago, more than --max-age {}",
            status
                .confirmed_seconds_ago
                .map(|s| humantime::format_duration(Duration::from_secs(s)).to_string())
                .unwrap_or_else(|| "never".into()),
            args.max_age
                .map(|m| humantime::format_duration(m).to_string())
                .unwrap_or_default()
        );
    }
    Ok(if status.is_healthy() && fresh {
        0
    } else {
        EXIT_FAILED
    })
}

fn collect_garbage(args: GcArgs) -> Outcome {
    let root = args.root.locate().map_err(usage)?;
    root.require_writable().map_err(usage)?;
    // On a volume other machines share, the publishers' decisions may take their lock timeout
    // plus their sync timeout (5m by default) to reach the link if locks fail.
    let shared = volume_mount(root.path()).is_none_or(|m| m.is_shared());
    let pending = if shared {
        args.lock_timeout + Duration::from_secs(300)
    } else {
        Duration::ZERO
    };
    let report = dagsnap::gc::run(&root, &args.retention.policy(pending), args.lock_timeout)
        .map_err(|e| (EXIT_FAILED, e.to_string()))?;
    println!(
        "removed {} snapshot(s), kept {}, removed {} abandoned staging dir(s)",
        report.removed.len(),
        report.kept,
        report.staging_removed
    );
    for commit in &report.removed {
        println!("removed {commit}");
    }
    Ok(0)
}

fn remove(args: RemoveArgs) -> Outcome {
    use dagsnap::remove::{self, RemoveError};
    let root = args.root.locate().map_err(usage)?;
    let code = |e: &RemoveError| match e {
        RemoveError::Store(StoreError::Lock(_)) | RemoveError::Store(StoreError::Io(_)) => {
            EXIT_FAILED
        }
        _ => EXIT_USAGE,
    };
    if args.all {
        let removed =
            remove::everything(&root, args.lock_timeout).map_err(|e| (code(&e), e.to_string()))?;
        for path in removed {
            println!("removed {}", path.display());
        }
        println!(
            "{} itself is left in place (it may be a mount point)",
            root.path().display()
        );
    } else {
        let removed = remove::snapshots(&root, &args.commits, args.lock_timeout)
            .map_err(|e| (code(&e), e.to_string()))?;
        for commit in removed {
            println!("removed snapshot {commit}");
        }
    }
    Ok(0)
}

fn caches(args: CachesArgs) -> Outcome {
    use dagsnap::caches;
    let base = args.base.unwrap_or_else(dagsnap::default_cache_base);
    let failed = |e: std::io::Error| (EXIT_FAILED, format!("cannot read {}: {e}", base.display()));
    let shown = if args.prune {
        caches::prune(&base).map_err(failed)?
    } else {
        caches::list(&base).map_err(failed)?
    };
    if args.json {
        print_json(&shown)?;
    } else if args.prune {
        for cache in &shown {
            println!(
                "removed {} (its root {} is gone)",
                cache.dir.display(),
                cache
                    .root
                    .as_deref()
                    .map(|r| r.display().to_string())
                    .unwrap_or_default()
            );
        }
        println!("pruned {} cache(s) under {}", shown.len(), base.display());
    } else {
        print!("{}", caches::render(&shown));
    }
    Ok(0)
}

fn print_json<T: serde::Serialize>(value: &T) -> Result<(), (u8, String)> {
    let json = serde_json::to_string_pretty(value).map_err(|e| (EXIT_FAILED, e.to_string()))?;
    println!("{json}");
    Ok(())
}

fn list_snapshots(args: ListArgs) -> Outcome {
    let root = args.root.locate().map_err(usage)?;
    let snapshots = history::list(&root).map_err(usage)?;
    if args.json {
        print_json(&snapshots)?;
    } else {
        print!("{}", history::render_list(&snapshots));
    }
    Ok(0)
}

fn show_log(args: LogArgs) -> Outcome {
    let root = args.root.locate().map_err(usage)?;
    let entries = history::log(&root, args.limit).map_err(usage)?;
    // A snapshot of several sources: each one's commit, while its manifest is kept.
    let sources_of = |commit: &dagsnap::CommitId| {
        root.manifest(commit)
            .ok()
            .flatten()
            .map(|m| m.sources)
            .unwrap_or_default()
    };
    if args.json {
        let mut shown = Vec::with_capacity(entries.len());
        for entry in &entries {
            let mut value =
                serde_json::to_value(entry).map_err(|e| (EXIT_FAILED, e.to_string()))?;
            let sources = sources_of(&entry.commit);
            if let (false, Some(object)) = (sources.is_empty(), value.as_object_mut()) {
                let sources =
                    serde_json::to_value(sources).map_err(|e| (EXIT_FAILED, e.to_string()))?;
                object.insert("sources".into(), sources);
            }
            shown.push(value);
        }
        print_json(&shown)?;
    } else {
        print!("{}", history::render_log(&entries, &sources_of));
    }
    Ok(0)
}

fn describe_change(root: &Root, change: &history::Change, verb: &str) -> String {
    let subject = |commit: &dagsnap::CommitId| {
        root.manifest(commit)
            .ok()
            .flatten()
            .map(|m| format!(" ({})", dagsnap::escape(&m.subject)))
            .unwrap_or_default()
    };
    let moved = match &change.from {
        Some(from) if *from == change.to => {
            format!("{} stays live{}", change.to, subject(&change.to))
        }
        Some(from) => format!(
            "link moved from {from}{} to {}{}",
            subject(from),
            change.to,
            subject(&change.to)
        ),
        None => format!("link now points at {}{}", change.to, subject(&change.to)),
    };
    let skipped: String = change
        .skipped
        .iter()
        .map(|s| {
            format!(
                "skipped {}{}: {}\n",
                &s.commit[..12.min(s.commit.len())],
                subject(&s.commit),
                s.why
            )
        })
        .collect();
    format!(
        "{verb}: {moved}\n{skipped}pinned: sync loops keep fetching but will not move the link until `dagsnap unpin --root {}`\n",
        root.path().display()
    )
}

fn roll_back(args: RollbackArgs) -> Outcome {
    let root = args.root.locate().map_err(usage)?;
    let target = match args.commit {
        Some(commit) => history::RollbackTarget::Commit(commit),
        None => history::RollbackTarget::Steps(args.steps.unwrap_or(1)),
    };
    let change = history::rollback(&root, target, args.reason, args.force, args.lock_timeout)
        .map_err(history_error)?;
    print!("{}", describe_change(&root, &change, "rolled back"));
    Ok(0)
}

fn pin(args: PinArgs) -> Outcome {
    let root = args.root.locate().map_err(usage)?;
    let change = history::pin(
        &root,
        args.commit.as_deref(),
        args.reason,
        args.force,
        args.lock_timeout,
    )
    .map_err(history_error)?;
    print!("{}", describe_change(&root, &change, "pinned"));
    Ok(0)
}

fn unpin(args: UnpinArgs) -> Outcome {
    let root = args.root.locate().map_err(usage)?;
    match history::unpin(&root, args.reason, args.lock_timeout).map_err(history_error)? {
        Some(pin) => println!(
            "unpinned {}; running sync loops publish the remote's latest commit at their next poll",
            pin.commit
        ),
        None => println!("the root was not pinned; nothing to do"),
    }
    Ok(0)
}

fn recheck(args: RecheckArgs) -> Outcome {
    let root = args.root.locate().map_err(usage)?;
    let rechecked = history::recheck(
        &root,
        args.commit.as_deref(),
        args.reason,
        args.lock_timeout,
    )
    .map_err(history_error)?;
    for verdict in &rechecked.forgotten {
        println!(
            "forgot the verdict of {} (checked at {}): {}",
            verdict.commit,
            rfc3339::format(verdict.checked_at),
            if verdict.accepted {
                "accepted".to_string()
            } else {
                format!("rejected ({}: {})", verdict.why(), verdict.headline())
            }
        );
    }
    println!(
        "sync loops check {} again at their next poll (SIGHUP or POST /sync makes that now)",
        rechecked.commit
    );
    Ok(0)
}

/// Operator mistakes (unknown commit, read-only mount) are usage errors; a busy lock is not.
fn history_error(e: history::HistoryError) -> (u8, String) {
    let code = match &e {
        history::HistoryError::Store(StoreError::Lock(_))
        | history::HistoryError::Store(StoreError::Io(_)) => EXIT_FAILED,
        _ => EXIT_USAGE,
    };
    (code, e.to_string())
}

fn verify_snapshot(args: VerifyArgs) -> Outcome {
    let root = args.root.locate().map_err(usage)?;
    let check =
        || verify::verify(&root, args.commit.as_deref(), args.cache_dir.as_deref()).map_err(usage);
    let show = |report: &verify::Report| -> Result<(), (u8, String)> {
        if args.json {
            print_json(report)
        } else {
            print!("{}", verify::render(report));
            Ok(())
        }
    };
    let report = check()?;
    show(&report)?;
    if report.is_intact() || !args.repair {
        return Ok(if report.is_intact() { 0 } else { EXIT_FAILED });
    }
    let remote = match args
        .repo
        .clone()
        .or_else(|| root.records().source().ok().flatten().map(|s| s.repo))
    {
        Some(url) => Some(
            Remote::new(
                &url,
                Target::RemoteHead,
                1,
                args.access
                    .access(Duration::from_secs(300))
                    .map_err(|e| (EXIT_USAGE, e))?,
            )
            .map_err(usage)?,
        ),
        None => None,
    };
    let reason = format!(
        "verify --repair: {} missing, {} modified, {} extra",
        report.missing.len(),
        report.modified.len(),
        report.extra.len()
    );
    verify::repair(
        &root,
        &report.commit,
        verify::RepairFrom {
            cache: args.cache_dir.clone(),
            remote,
        },
        reason,
        args.lock_timeout,
    )
    .map_err(|e| (EXIT_FAILED, e.to_string()))?;
    if !args.json {
        println!(
            "rebuilt {}; the link now points at the rebuilt copy",
            report.commit
        );
    }
    let report =
        verify::verify(&root, Some(&report.commit), args.cache_dir.as_deref()).map_err(usage)?;
    show(&report)?;
    Ok(if report.is_intact() { 0 } else { EXIT_FAILED })
}
