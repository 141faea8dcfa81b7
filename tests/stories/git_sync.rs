//! dagsnap in git-sync's place: started as `git-sync` with git-sync's flags and environment,
//! the Airflow Helm chart's exact environment and mounts, and a root that git-sync published
//! taken over while readers read, also with a git-sync still running beside it.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::servers::WebhookReceiver;
use crate::support::*;

/// git-sync's publishing, step for step (see the script's header).
const GIT_SYNC_MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/git-sync-v4.sh");

/// dagsnap started as `git-sync` with `env` (and only that) as its configuration.
pub(crate) fn git_sync(scratch: &Scratch, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = git_sync_via(&[], scratch.tmp.path());
    cmd.args(args)
        .env("DAGSNAP_CACHE_DIR", scratch.cache())
        .envs(env.iter().copied());
    cmd
}

pub(crate) fn run_git_sync(scratch: &Scratch, args: &[&str], env: &[(&str, &str)]) -> Output {
    git_sync(scratch, args, env).output().unwrap()
}

/// A loop started as git-sync, its stderr in a file; stopped with its process group.
pub(crate) fn spawn_git_sync(scratch: &Scratch, args: &[&str], env: &[(&str, &str)]) -> Daemon {
    let log = scratch.path(&format!("git-sync-{}.log", rand::random::<u32>()));
    Daemon::start(&mut git_sync(scratch, args, env), log)
}

pub(crate) fn link_target(link: &Path) -> String {
    fs::read_link(link)
        .map(|t| t.display().to_string())
        .unwrap_or_default()
}

/// The commit a link shows, whoever published it (dagsnap's snapshot or git-sync's worktree).
pub(crate) fn shown_commit(link: &Path) -> Option<String> {
    fs::read_link(link)
        .ok()
        .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
}

/// A link name, the environment that picks a ref, and the commit it must show.
type RefCase<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str);

#[test]
fn started_as_git_sync_it_publishes_what_git_sync_would_with_git_sync_s_defaults() {
    let remote = Remote::new();
    let main = remote.commit(&[("dags/a.py", "main\n")], "on main");
    remote.git(&["checkout", "-q", "-b", "release"]);
    let release = remote.commit(&[("dags/a.py", "release\n")], "on release");
    remote.git(&["tag", "-a", "v1", "-m", "version one"]);
    remote.git(&["checkout", "-q", "main"]);
    let scratch = Scratch::new();
    let root = scratch.root();
    let url = remote.url();

    // The link defaults to the last part of --repo, as git-sync's does.
    let out = run_git_sync(
        &scratch,
        &[
            "--repo",
            &url,
            "--root",
            root.to_str().unwrap(),
            "--one-time",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let leaf = url
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(
        shown_commit(&root.join(&leaf)).as_deref(),
        Some(main.as_str())
    );
    assert!(
        stderr(&out).contains("running as git-sync"),
        "{}",
        stderr(&out)
    );

    // Refs the git-sync ways: v4's --ref (a branch, an annotated tag), v3's --branch and --rev.
    let cases: [RefCase; 4] = [
        ("by-ref", vec![("GITSYNC_REF", "release")], &release),
        ("by-tag", vec![("GITSYNC_REF", "v1")], &release),
        (
            "by-branch",
            vec![("GIT_SYNC_BRANCH", "release"), ("GIT_SYNC_REV", "HEAD")],
            &release,
        ),
        ("by-rev", vec![("GIT_SYNC_REV", &main)], &main),
    ];
    for (link, env, expected) in cases {
        // A root publishes one configuration: each case gets its own.
        let scratch = Scratch::new();
        let root = scratch.root();
        let mut env = env;
        env.extend([
            ("GITSYNC_REPO", url.as_str()),
            ("GITSYNC_ROOT", root.to_str().unwrap()),
            ("GITSYNC_LINK", link),
            ("GITSYNC_ONE_TIME", "1"),
        ]);
        let out = run_git_sync(&scratch, &[], &env);
        assert!(out.status.success(), "{link}: {}", stderr(&out));
        assert_eq!(
            shown_commit(&root.join(link)).as_deref(),
            Some(expected),
            "{link}"
        );
    }
}

/// [`assert_root_valid`] for a link that is not `current`.
pub(crate) fn assert_root_valid_at(root: &Path, link: &str) -> String {
    let target = fs::read_link(root.join(link)).expect("the link exists");
    assert!(target.starts_with(SNAPSHOTS), "{}", target.display());
    assert!(root.join(link).join(".").is_dir(), "the link resolves");
    target.file_name().unwrap().to_string_lossy().into_owned()
}

#[test]
fn git_sync_s_names_resolve_with_git_sync_s_precedence() {
    let remote = Remote::new();
    let commit = remote.commit(&[("a.py", "1\n")], "one");
    let scratch = Scratch::new();
    let root = scratch.root().display().to_string();
    let url = remote.url();
    // An older name beats the current one (with a warning), and a flag beats both.
    let out = run_git_sync(
        &scratch,
        &["--link=from-flag"],
        &[
            ("GITSYNC_REPO", "/nonexistent"),
            ("GIT_SYNC_REPO", &url),
            ("GITSYNC_ROOT", &root),
            ("GITSYNC_LINK", "from-env"),
            ("GITSYNC_ONE_TIME", "true"),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        shown_commit(&scratch.root().join("from-flag")).as_deref(),
        Some(commit.as_str())
    );
    assert!(!scratch.root().join("from-env").exists());
    let err = stderr(&out);
    // Deprecated names are said once, in one line, at info.
    let said: Vec<&str> = err.lines().filter(|l| l.contains("deprecated")).collect();
    assert_eq!(said.len(), 1, "{err}");
    assert!(
        said[0].contains(" INFO ") && said[0].contains("$GIT_SYNC_REPO (wins over $GITSYNC_REPO)"),
        "{err}"
    );
    // v3's --dest beats v4's --link.
    let scratch = Scratch::new();
    let root = scratch.root().display().to_string();
    let out = run_git_sync(
        &scratch,
        &["--link=v4"],
        &[
            ("GITSYNC_REPO", &url),
            ("GITSYNC_ROOT", &root),
            ("GIT_SYNC_DEST", "v3"),
            ("GIT_SYNC_ONE_TIME", "yes"),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(scratch.root().join("v3").exists() && !scratch.root().join("v4").exists());
}

/// Arguments, environment, and what the one error line must say.
type BadCase<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

#[test]
fn bad_git_sync_settings_fail_at_start_with_one_line_and_the_dags_stay() {
    let remote = Remote::new();
    let commit = remote.commit(&[("a.py", "1\n")], "one");
    let scratch = Scratch::new();
    let root = scratch.root().display().to_string();
    let url = remote.url();
    let base = [
        ("GITSYNC_REPO", url.as_str()),
        ("GITSYNC_ROOT", root.as_str()),
        ("GITSYNC_LINK", "dags"),
    ];
    let out = run_git_sync(&scratch, &["--one-time"], &base);
    assert!(out.status.success(), "{}", stderr(&out));
    let cases: [BadCase; 9] = [
        (
            &["--period=5ms"],
            &[],
            "invalid flag: --period must be at least 10ms",
        ),
        (&["--frobnicate"], &[], "unknown flag: --frobnicate"),
        (
            &["--one-time=perhaps"],
            &[],
            "invalid argument \"perhaps\" for \"--one-time\" flag",
        ),
        (
            &[],
            &[("GITSYNC_DEPTH", "deep")],
            "invalid int env GITSYNC_DEPTH=\"deep\"",
        ),
        (
            &[],
            &[("GIT_SYNC_WAIT", "soon")],
            "invalid float env GIT_SYNC_WAIT=\"soon\"",
        ),
        (
            &["--username=bot"],
            &[],
            "$GITSYNC_PASSWORD or --password-file must be specified",
        ),
        (
            &["--http-metrics"],
            &[],
            "--http-bind must be specified when --http-metrics is set",
        ),
        (
            &["--change-permissions=0775"],
            &[],
            "--change-permissions is no longer supported",
        ),
        (&["--webhook-url=not a url"], &[], "--webhook-url"),
    ];
    for (args, env, needle) in cases {
        let mut env = env.to_vec();
        env.extend(base);
        let out = run_git_sync(&scratch, args, &env);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{args:?}: one line expected:\n{err}");
        assert!(lines[0].contains(needle), "{args:?}: {err}");
        assert_eq!(
            shown_commit(&scratch.root().join("dags")).as_deref(),
            Some(commit.as_str())
        );
    }
}

#[test]
fn git_sync_s_hooks_touch_and_error_files_and_http_endpoints_work_as_configured() {
    let remote = Remote::new();
    let first = remote.commit(&[("a.py", "1\n")], "one");
    let scratch = Scratch::new();
    let root = scratch.root().display().to_string();
    let url = remote.url();
    let record = scratch.path("hook.log");
    // git-sync runs the exec hook as a program (no shell, no arguments).
    let hook = scratch.path("hook");
    fs::write(
        &hook,
        format!(
            "#!/bin/sh\necho \"$GITSYNC_HASH $(pwd -P) $(cat a.py)\" >> {}\n",
            record.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&hook, fs::Permissions::from_mode(0o755)).unwrap();
    let receiver = WebhookReceiver::start(200);
    let port = crate::servers::free_port();
    let bind = format!("127.0.0.1:{port}");
    let daemon = spawn_git_sync(
        &scratch,
        &[],
        &[
            ("GITSYNC_REPO", &url),
            ("GITSYNC_ROOT", &root),
            ("GITSYNC_LINK", "dags"),
            ("GITSYNC_PERIOD", "200ms"),
            ("GITSYNC_MAX_FAILURES", "-1"),
            ("GITSYNC_EXECHOOK_COMMAND", hook.to_str().unwrap()),
            ("GITSYNC_WEBHOOK_URL", &receiver.url()),
            ("GITSYNC_TOUCH_FILE", "touched"),
            ("GITSYNC_ERROR_FILE", "error.json"),
            ("GITSYNC_HTTP_BIND", &bind),
            ("GITSYNC_HTTP_METRICS", "true"),
        ],
    );
    wait_until(Duration::from_secs(30), "the hook", || {
        fs::read_to_string(&record).is_ok_and(|r| r.lines().count() == 1)
    });
    let line = fs::read_to_string(&record).unwrap();
    let snapshot = fs::canonicalize(scratch.root().join(SNAPSHOTS).join(&first)).unwrap();
    assert_eq!(line.trim(), format!("{first} {} 1", snapshot.display()));
    wait_until(Duration::from_secs(10), "the webhook", || {
        !receiver.requests().is_empty()
    });
    assert_eq!(
        receiver.requests()[0].header("gitsync-hash"),
        Some(first.as_str())
    );
    // Relative to --root, as git-sync has them.
    assert!(scratch.root().join("touched").exists());
    let base = format!("http://{bind}");
    assert_eq!(http("GET", &format!("{base}/"), &[], b"").0, 200);
    let (status, metrics) = http("GET", &format!("{base}/metrics"), &[], b"");
    assert_eq!(status, 200);
    assert!(
        metric(&metrics, "git_sync_count_total{status=\"success\"}") >= 1.0,
        "{metrics}"
    );

    fs::rename(&remote.dir, remote.dir.with_extension("gone")).unwrap();
    wait_until(Duration::from_secs(30), "the error file", || {
        scratch.root().join("error.json").exists()
    });
    fs::rename(remote.dir.with_extension("gone"), &remote.dir).unwrap();
    wait_until(Duration::from_secs(30), "the error file to go", || {
        !scratch.root().join("error.json").exists()
    });
    assert!(
        daemon
            .logs()
            .contains("/metrics is served whenever --http-bind is set")
            || daemon.logs().contains("running as git-sync"),
        "{}",
        daemon.logs()
    );
}

/// Readers that keep opening a file through `link` and check its content is one `expected`
/// (a missing file, a dangling link or any other content is an error).
struct Readers {
    stop: Arc<AtomicBool>,
    reads: Arc<AtomicUsize>,
    errors: Arc<Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Readers {
    fn start(file: PathBuf, expected: Arc<Mutex<Vec<String>>>, count: usize) -> Readers {
        let stop = Arc::new(AtomicBool::new(false));
        let reads = Arc::new(AtomicUsize::new(0));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..count)
            .map(|_| {
                let (stop, reads, errors, file, expected) = (
                    stop.clone(),
                    reads.clone(),
                    errors.clone(),
                    file.clone(),
                    expected.clone(),
                );
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        match fs::read_to_string(&file) {
                            Ok(text) if expected.lock().unwrap().contains(&text) => {}
                            Ok(text) => errors
                                .lock()
                                .unwrap()
                                .push(format!("unexpected content {text:?}")),
                            Err(e) => errors
                                .lock()
                                .unwrap()
                                .push(format!("{}: {e}", file.display())),
                        }
                        reads.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        Readers {
            stop,
            reads,
            errors,
            threads,
        }
    }

    /// Stop; (reads, errors).
    fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            thread.join().unwrap();
        }
        (
            self.reads.load(Ordering::Relaxed),
            self.errors.lock().unwrap().clone(),
        )
    }
}

pub(crate) fn git_sync_model(
    remote: &Remote,
    root: &Path,
    link: &str,
    period: &str,
    once: bool,
) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg(GIT_SYNC_MODEL)
        .args([remote.url().as_str(), root.to_str().unwrap(), link, period])
        .args(once.then_some("once"))
        .stdin(Stdio::null());
    cmd
}

/// One sync of git-sync's model into `root` (its link named `link`), which must succeed.
pub(crate) fn git_sync_model_once(remote: &Remote, root: &Path, link: &str) {
    let out = git_sync_model(remote, root, link, "1", true)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_root_git_sync_published_is_taken_over_while_readers_read() {
    let remote = Remote::new();
    let first = remote.commit(&[("dags/a.py", "1\n")], "one");
    let scratch = Scratch::new();
    let root = scratch.root();
    git_sync_model_once(&remote, &root, "repo");
    assert!(link_target(&root.join("repo")).starts_with(".worktrees/"));
    let git_sync_wrote = Instant::now();

    let expected = Arc::new(Mutex::new(vec!["1\n".to_string()]));
    let readers = Readers::start(root.join("repo/dags/a.py"), expected.clone(), 3);
    let daemon = spawn_git_sync(
        &scratch,
        &[],
        &[
            ("GITSYNC_REPO", &remote.url()),
            ("GITSYNC_ROOT", root.to_str().unwrap()),
            ("GITSYNC_LINK", "repo"),
            ("GITSYNC_PERIOD", "100ms"),
            ("GITSYNC_MAX_FAILURES", "-1"),
            ("DAGSNAP_ADOPT_AFTER", "3s"),
            ("DAGSNAP_GRACE", "4s"),
        ],
    );
    // While it waits for git-sync to stay quiet, status says who serves the readers.
    wait_until(Duration::from_secs(20), "the snapshot to be built", || {
        root.join(SNAPSHOTS).join(&first).is_dir()
    });
    let status = dagsnap(scratch.tmp.path())
        .args(["status", "--json", "--root"])
        .arg(&root)
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap_or_default();
    if git_sync_wrote.elapsed() < Duration::from_millis(2500) {
        assert_eq!(
            json["git_sync"]["commit"],
            first.as_str(),
            "{json} {}",
            stderr(&status)
        );
        assert_eq!(status.status.code(), Some(0));
    }

    wait_until(Duration::from_secs(30), "the take-over", || {
        link_target(&root.join("repo")).starts_with(SNAPSHOTS)
    });
    assert!(
        git_sync_wrote.elapsed() >= Duration::from_millis(2900),
        "took over {:?} after git-sync wrote, before --adopt-after",
        git_sync_wrote.elapsed()
    );
    // git-sync's worktree stays for the readers that may hold it.
    assert!(root.join(".worktrees").join(&first).is_dir());

    let second = remote.commit(&[("dags/a.py", "2\n")], "two");
    expected.lock().unwrap().push("2\n".into());
    wait_until(Duration::from_secs(30), "the next commit", || {
        shown_commit(&root.join("repo")).as_deref() == Some(second.as_str())
    });
    wait_until(
        Duration::from_secs(30),
        "git-sync's files to go after --grace",
        || !root.join(".git").exists() && !root.join(".worktrees").exists(),
    );
    let (reads, errors) = readers.finish();
    assert!(
        errors.is_empty(),
        "{} of {reads} reads failed: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    assert!(reads > 100, "{reads}");
    // The log line follows the removal.
    wait_until(Duration::from_secs(10), "the removal's log line", || {
        daemon.logs().contains("removed git-sync's files")
    });
    let logs = daemon.logs();
    for needle in [
        "git-sync still writes this root",
        "took the link over from git-sync",
    ] {
        assert!(logs.contains(needle), "{needle}: {logs}");
    }
    // The root is dagsnap's now: a restart adopts it like any other.
    drop(daemon);
    let out = run_git_sync(
        &scratch,
        &["--one-time"],
        &[
            ("GITSYNC_REPO", &remote.url()),
            ("GITSYNC_ROOT", root.to_str().unwrap()),
            ("GITSYNC_LINK", "repo"),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn dagsnap_s_own_sync_refuses_a_git_sync_root_unless_told_to_adopt_it() {
    let remote = Remote::new();
    let commit = remote.commit(&[("dags/a.py", "1\n")], "one");
    let scratch = Scratch::new();
    let root = scratch.root();
    assert!(git_sync_model(&remote, &root, "current", "1", true)
        .status()
        .unwrap()
        .success());
    let out = sync_once(&scratch, &remote.url(), &[]);
    assert_one_clear_line(&out, 2, "holds entries dagsnap did not create");
    let out = sync_once(
        &scratch,
        &remote.url(),
        &["--adopt-git-sync", "--adopt-after", "0s"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(assert_root_valid(&root), commit);
}

#[test]
fn a_rolling_update_with_git_sync_and_dagsnap_on_one_root_never_breaks_a_reader() {
    let remote = Remote::new();
    let mut commits = vec![remote.commit(&[("dags/a.py", "0\n")], "start")];
    let scratch = Scratch::new();
    let root = scratch.root();
    // The old pod: git-sync, polling every second.
    let model_log = scratch.path("git-sync-model.log");
    let git_sync_pod = Group::spawn(
        git_sync_model(&remote, &root, "repo", "1", false)
            .stdout(fs::File::create(&model_log).unwrap())
            .stderr(Stdio::null()),
    );
    wait_until(Duration::from_secs(30), "git-sync's first publish", || {
        shown_commit(&root.join("repo")).as_deref() == Some(commits[0].as_str())
    });
    let expected = Arc::new(Mutex::new(vec!["0\n".to_string()]));
    let readers = Readers::start(root.join("repo/dags/a.py"), expected.clone(), 3);

    // The new pod: dagsnap as git-sync, on the same root, for 30 s together.
    let daemon = spawn_git_sync(
        &scratch,
        &[],
        &[
            ("GITSYNC_REPO", &remote.url()),
            ("GITSYNC_ROOT", root.to_str().unwrap()),
            ("GITSYNC_LINK", "repo"),
            ("GITSYNC_PERIOD", "300ms"),
            ("GITSYNC_MAX_FAILURES", "-1"),
            ("DAGSNAP_ADOPT_AFTER", "2s"),
        ],
    );
    let start = Instant::now();
    let mut owners = std::collections::BTreeSet::new();
    let mut n = 1;
    while start.elapsed() < Duration::from_secs(30) {
        expected.lock().unwrap().push(format!("{n}\n"));
        commits.push(remote.commit(&[("dags/a.py", &format!("{n}\n"))], &format!("change {n}")));
        n += 1;
        // A push every 4 s: git-sync publishes it within its 1 s period, goes quiet, dagsnap
        // takes the link 2 s later, git-sync takes it back at its next poll (a worktree it does
        // not recognize), and so on: the two share the root without either breaking it.
        for _ in 0..40 {
            std::thread::sleep(Duration::from_millis(100));
            owners.insert(link_target(&root.join("repo")).starts_with(SNAPSHOTS));
            assert!(
                root.join("repo").join(".").is_dir(),
                "the link always resolves"
            );
        }
    }
    // The old pod goes away; dagsnap takes over and follows the remote alone.
    drop(git_sync_pod);
    let last = commits.last().unwrap().clone();
    wait_until(
        Duration::from_secs(30),
        "dagsnap alone to publish the last commit",
        || link_target(&root.join("repo")) == format!("{SNAPSHOTS}/{last}"),
    );
    let (reads, errors) = readers.finish();
    assert!(
        errors.is_empty(),
        "{} of {reads} reads failed: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    assert!(reads > 1000, "{reads}");
    let git_sync_publishes = fs::read_to_string(&model_log)
        .unwrap_or_default()
        .lines()
        .count();
    assert_eq!(
        owners.len(),
        2,
        "both held the link during the overlap (dagsnap's? {owners:?})"
    );
    assert!(
        git_sync_publishes > commits.len(),
        "git-sync took the link back from dagsnap (it published {git_sync_publishes} times for {} commits)",
        commits.len()
    );
    assert!(
        daemon.logs().contains("took the link over from git-sync"),
        "{}",
        daemon.logs()
    );
}

#[test]
fn without_arguments_in_git_sync_s_environment_dagsnap_runs_as_git_sync() {
    let remote = Remote::new();
    let commit = remote.commit(&[("a.py", "1\n")], "one");
    let scratch = Scratch::new();
    // What a container spec written for git-sync runs: the image's entrypoint, no arguments.
    let out = dagsnap(scratch.tmp.path())
        .env("GIT_SYNC_REPO", remote.url())
        .env("GIT_SYNC_ROOT", scratch.root())
        .env("GIT_SYNC_DEST", "repo")
        .env("GIT_SYNC_ONE_TIME", "true")
        .env("DAGSNAP_CACHE_DIR", scratch.cache())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        shown_commit(&scratch.root().join("repo")).as_deref(),
        Some(commit.as_str())
    );
    // Without git-sync's environment, no arguments is a usage error that shows the commands.
    let out = dagsnap(scratch.tmp.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("git-sync"), "{}", stderr(&out));
}
