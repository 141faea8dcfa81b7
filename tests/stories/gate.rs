//! The gate before the link moves (`--check-command`): a commit the check rejects never reaches
//! readers, the last good snapshot stays live, the next good commit goes live at once, and
//! everyone can see which commit was rejected and why. The checks are real shell scripts run by
//! the real binary; what they saw is written to files the stories read.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::servers::free_port;
use crate::support::*;

/// A check script in the scratch area; its commands run with `sh`. `$RUNS` is a file the script
/// appends each checked commit to, `$SEEN` a directory for what it observed.
struct Check {
    script: PathBuf,
    runs: PathBuf,
    seen: PathBuf,
}

impl Check {
    fn new(scratch: &Scratch, body: &str) -> Check {
        let check = Check {
            script: scratch.path("check.sh"),
            runs: scratch.path("runs"),
            seen: scratch.path("seen"),
        };
        fs::create_dir_all(&check.seen).unwrap();
        check.rewrite(body);
        check
    }

    /// Replace what the script does; the command line (and so the check's fingerprint) stays.
    fn rewrite(&self, body: &str) {
        let text = format!(
            "#!/bin/sh\nRUNS='{}'\nSEEN='{}'\necho \"$DAGSNAP_COMMIT\" >> \"$RUNS\"\n{body}\n",
            self.runs.display(),
            self.seen.display()
        );
        fs::write(&self.script, text).unwrap();
        fs::set_permissions(&self.script, fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// The value of `--check-command`.
    fn command(&self) -> String {
        format!("sh {}", self.script.display())
    }

    /// How many times the check ran on `commit`.
    fn runs_of(&self, commit: &str) -> usize {
        fs::read_to_string(&self.runs)
            .unwrap_or_default()
            .lines()
            .filter(|l| *l == commit)
            .count()
    }
}

/// `dagsnap status --json`.
fn status_json(scratch: &Scratch) -> serde_json::Value {
    let out = on_root(scratch, &["status", "--json"]);
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("status --json ({e}): {}{}", stdout(&out), stderr(&out)))
}

/// The verdicts recorded in the root, parsed.
fn verdicts(root: &Path) -> Vec<serde_json::Value> {
    let Ok(entries) = fs::read_dir(root.join(".dagsnap/verdicts")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .map(|e| serde_json::from_slice(&fs::read(e.path()).unwrap()).unwrap())
        .collect()
}

fn is_running(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

/// A directory named `__pycache__` anywhere under `dir`.
fn pycache_under(dir: &Path) -> Option<PathBuf> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .find(|e| e.file_name() == "__pycache__")
        .map(|e| e.into_path())
}

const COMPILES: &str = r#"env | grep -E '^(DAGSNAP_|GITSYNC_HASH=|PYTHON)' | sort > "$SEEN/$DAGSNAP_COMMIT.env"
pwd > "$SEEN/$DAGSNAP_COMMIT.cwd"
python3 -c 'import sys; sys.path.insert(0, "dags"); import a' || { echo "dags/a.py does not import"; exit 3; }
echo "dags/a.py imports""#;

#[test]
fn a_commit_that_does_not_import_is_rejected_once_and_the_fix_goes_live_at_once() {
    let remote = Remote::new();
    let good = remote.commit(&[("dags/a.py", "x = 1\n")], "good");
    let scratch = Scratch::new();
    let check = Check::new(&scratch, COMPILES);
    let error_file = scratch.path("error.json");
    let port = free_port();
    let bind = format!("127.0.0.1:{port}");
    let base = format!("http://{bind}");
    let args = [
        "--period",
        "200ms",
        "--log-level",
        "dagsnap=debug",
        "--http-bind",
        &bind,
        "--error-file",
        &error_file.display().to_string(),
        "--check-command",
        &check.command(),
    ]
    .map(str::to_string);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut daemon = spawn_loop(&scratch, &remote.url(), &args);
    daemon.wait_for_commit(&scratch.root(), &good, Duration::from_secs(30));
    assert_eq!(check.runs_of(&good), 1);

    let bad = remote.commit(&[("dags/a.py", "x = (\n")], "a syntax error");
    wait_until(Duration::from_secs(30), "the rejection in the log", || {
        daemon.logs().contains("the check rejected this commit")
    });
    assert_eq!(published(&scratch.root()).as_deref(), Some(good.as_str()));

    // What the check saw: the snapshot as its working directory, the commits and the ref, and
    // Python told not to write bytecode; it could not write into the snapshot.
    let snapshot = scratch.root().join(".dagsnap/snapshots").join(&bad);
    let env = fs::read_to_string(check.seen.join(format!("{bad}.env"))).unwrap();
    for expected in [
        format!("DAGSNAP_COMMIT={bad}"),
        format!("DAGSNAP_PREVIOUS={good}"),
        "DAGSNAP_REF=refs/heads/main".to_string(),
        format!("DAGSNAP_SNAPSHOT={}", snapshot.display()),
        format!("GITSYNC_HASH={bad}"),
        "PYTHONDONTWRITEBYTECODE=1".to_string(),
    ] {
        assert!(env.lines().any(|l| l == expected), "{expected} in:\n{env}");
    }
    let cwd = fs::read_to_string(check.seen.join(format!("{bad}.cwd"))).unwrap();
    assert_eq!(Path::new(cwd.trim()), snapshot);

    // Everyone can see it: the error file, status, list, the journal, the metrics. The error file
    // is written after the cycle has logged its outcome.
    wait_until(Duration::from_secs(30), "the error file", || {
        error_file.exists()
    });
    let error: serde_json::Value = serde_json::from_slice(&fs::read(&error_file).unwrap()).unwrap();
    let message = error["error"].as_str().unwrap();
    assert!(
        message.contains(&format!(
            "commit {bad} was rejected by --check-command (exit status 3)"
        )) && message.ends_with("dags/a.py does not import"),
        "{message}"
    );
    let status = stdout(&on_root(&scratch, &["status"]));
    assert!(status.contains(&format!("commit:      {good}")), "{status}");
    assert!(status.contains("check:       accepted in"), "{status}");
    assert!(
        status.contains(&format!("REJECTED:    {bad} by the check at"))
            && status.contains("(exit status 3)")
            && status.contains("| SyntaxError: '(' was never closed"),
        "{status}"
    );
    let json = status_json(&scratch);
    assert_eq!(json["rejected"]["commit"], bad.as_str());
    assert_eq!(json["rejected"]["why"], "exit status 3");
    assert_eq!(json["check"]["accepted"], true);
    let list = stdout(&on_root(&scratch, &["list"]));
    let row = list.lines().find(|l| l.contains(&bad[..12])).unwrap();
    assert!(row.starts_with("  R "), "{list}");
    assert!(list.contains("R = rejected by the check"), "{list}");
    let log = stdout(&on_root(&scratch, &["log"]));
    assert!(
        log.lines().any(|l| l.contains("rejected")
            && l.contains(&bad[..12])
            && l.ends_with("exit status 3: dags/a.py does not import")),
        "{log}"
    );
    let text = http("GET", &format!("{base}/metrics"), &[], b"").1;
    assert_eq!(
        metric(&text, "dagsnap_check_total{result=\"rejected\"}"),
        1.0
    );
    assert_eq!(
        metric(&text, "dagsnap_check_total{result=\"accepted\"}"),
        1.0
    );
    assert_eq!(
        metric(&text, "dagsnap_check_total{result=\"timeout\"}"),
        0.0
    );
    assert!(metric(&text, "dagsnap_syncs_total{result=\"rejected\"}") >= 1.0);

    // Later polls see the same commit and do not check it again, and neither does a restart.
    let not_again = ["rejected by the check earlier; not checked again"];
    daemon.wait_for_lines(&not_again, 2, Duration::from_secs(30));
    assert_eq!(check.runs_of(&bad), 1);
    daemon.signal(Signal::SIGTERM);
    assert!(daemon.wait(Duration::from_secs(30)).success());
    let daemon = spawn_loop(&scratch, &remote.url(), &args);
    wait_until(
        Duration::from_secs(30),
        "the rejection after the restart",
        || daemon.logs().contains("the check rejected this commit"),
    );
    daemon.wait_for_lines(&not_again, 2, Duration::from_secs(30));
    assert_eq!(check.runs_of(&bad), 1, "{}", daemon.logs());
    assert_eq!(published(&scratch.root()).as_deref(), Some(good.as_str()));
    assert_eq!(
        daemon
            .logs()
            .matches("the check rejected this commit")
            .count(),
        1,
        "said once, not once per poll:\n{}",
        daemon.logs()
    );

    // The fix goes live at the next poll, and the error file goes away.
    let fixed = remote.commit(&[("dags/a.py", "x = 2\n")], "the fix");
    daemon.wait_for_commit(&scratch.root(), &fixed, Duration::from_secs(30));
    assert_eq!(check.runs_of(&fixed), 1);
    wait_until(Duration::from_secs(10), "the error file removed", || {
        !error_file.exists()
    });
    let json = status_json(&scratch);
    assert!(json.get("rejected").is_none(), "{json}");
    assert_eq!(json["check"]["accepted"], true);
    if let Some(dir) = pycache_under(&scratch.root()) {
        panic!("the check wrote bytecode into the store: {}", dir.display());
    }
    let verify = on_root(&scratch, &["verify"]);
    assert!(verify.status.success(), "{}", stderr(&verify));
}

#[test]
fn a_check_that_hangs_or_is_killed_rejects_the_commit_and_leaves_nothing_running() {
    let remote = Remote::new();
    let commit = remote.commit(&[("dags/a.py", "x = 1\n")], "hangs its check");
    let scratch = Scratch::new();
    let check = Check::new(
        &scratch,
        "sleep 300 &\necho $! > \"$SEEN/grandchild\"\necho 'loading...'\nsleep 300",
    );
    let out = sync_once(
        &scratch,
        &remote.url(),
        &["--check-command", &check.command(), "--check-timeout", "1s"],
    );
    assert_one_clear_line(
        &out,
        1,
        &format!(
            "commit {commit} was rejected by --check-command (timed out after 1s) and no earlier snapshot is live"
        ),
    );
    assert!(fs::symlink_metadata(scratch.root().join("current")).is_err());
    let grandchild: i32 = fs::read_to_string(check.seen.join("grandchild"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    wait_until(
        Duration::from_secs(10),
        "the check's own child killed",
        || !is_running(grandchild),
    );
    let json = status_json(&scratch);
    assert_eq!(json["rejected"]["why"], "timed out after 1s", "{json}");
    assert_eq!(json["rejected"]["output"][0], "loading...", "{json}");

    // The verdict outlives the run: an init container that restarts does not wait again.
    let again = sync_once(
        &scratch,
        &remote.url(),
        &["--check-command", &check.command(), "--check-timeout", "1s"],
    );
    assert_one_clear_line(&again, 1, "timed out after 1s");
    assert_eq!(check.runs_of(&commit), 1);

    // A check killed by a signal (the OOM killer's SIGKILL) is a rejection that says so.
    let killed = scratch.path("killed.sh");
    fs::write(
        &killed,
        format!(
            "echo \"$DAGSNAP_COMMIT\" >> '{}'\necho 'about to be killed'\nkill -KILL $$\n",
            check.runs.display()
        ),
    )
    .unwrap();
    // Run by the shell, the shell outlives it and reports 128 + 9; run with `exec`, dagsnap sees
    // the signal itself.
    let command = format!("sh {}", killed.display());
    let out = sync_once(&scratch, &remote.url(), &["--check-command", &command]);
    assert_one_clear_line(
        &out,
        1,
        "rejected by --check-command (exit status 137, as a shell reports a process killed by SIGKILL) and no earlier snapshot is live",
    );
    let command = format!("exec sh {}", killed.display());
    let out = sync_once(&scratch, &remote.url(), &["--check-command", &command]);
    assert_one_clear_line(
        &out,
        1,
        "rejected by --check-command (killed by signal 9 (SIGKILL)) and no earlier snapshot is live: about to be killed",
    );
    assert_eq!(
        check.runs_of(&commit),
        3,
        "each new check command checks again"
    );
    let log = stdout(&on_root(&scratch, &["log"]));
    assert_eq!(log.matches("rejected").count(), 3, "{log}");
}

#[test]
fn a_check_interrupted_by_sigterm_is_abandoned_not_held_against_the_commit() {
    let remote = Remote::new();
    let commit = remote.commit(&[("dags/a.py", "x = 1\n")], "slow to check");
    let scratch = Scratch::new();
    let check = Check::new(
        &scratch,
        "echo $$ > \"$SEEN/check\"\nsleep 300 &\necho $! > \"$SEEN/grandchild\"\nwait",
    );
    let args = ["--period", "200ms", "--check-command", &check.command()].map(str::to_string);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut daemon = spawn_loop(&scratch, &remote.url(), &args);
    // Written by the shell in two steps (create, then the pid): wait for the pid itself.
    wait_until(Duration::from_secs(30), "the check running", || {
        fs::read_to_string(check.seen.join("grandchild"))
            .is_ok_and(|pid| pid.trim().parse::<i32>().is_ok())
    });
    let pids: Vec<i32> = ["check", "grandchild"]
        .iter()
        .map(|f| {
            fs::read_to_string(check.seen.join(f))
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        })
        .collect();
    daemon.signal(Signal::SIGTERM);
    let status = daemon.wait(Duration::from_secs(30));
    assert!(status.success(), "{status:?}\n{}", daemon.logs());
    for pid in pids {
        wait_until(
            Duration::from_secs(10),
            "the check's processes gone",
            || !is_running(pid),
        );
    }
    assert!(verdicts(&scratch.root()).is_empty(), "no verdict recorded");
    assert!(
        daemon
            .logs()
            .contains("the check was stopped with the cycle"),
        "{}",
        daemon.logs()
    );
    assert!(published(&scratch.root()).is_none());

    // Started again, the same check (now quick) runs again and the commit goes live.
    check.rewrite("echo fine");
    let daemon = spawn_loop(&scratch, &remote.url(), &args);
    daemon.wait_for_commit(&scratch.root(), &commit, Duration::from_secs(30));
    assert_eq!(check.runs_of(&commit), 2);
    let log = stdout(&on_root(&scratch, &["log"]));
    assert!(!log.contains("rejected"), "{log}");
}

#[test]
fn two_publishers_on_one_root_check_each_commit_once() {
    let remote = Remote::new();
    let scratch = Scratch::new();
    // Slow enough that the second publisher finds the first one checking.
    let check = Check::new(
        &scratch,
        "sleep 1\ngrep -q broken dags/a.py && { echo 'dags/a.py is broken'; exit 1; }\necho ok",
    );
    let first = remote.commit(&[("dags/a.py", "x = 1\n")], "first");
    let args = [
        "--period",
        "100ms",
        "--log-level",
        "dagsnap=debug",
        "--check-command",
        &check.command(),
    ]
    .map(str::to_string);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let a = spawn_loop_with(&scratch, &scratch.path("cache-a"), &remote.url(), &args);
    let b = spawn_loop_with(&scratch, &scratch.path("cache-b"), &remote.url(), &args);
    a.wait_for_commit(&scratch.root(), &first, Duration::from_secs(30));
    let broken = remote.commit(&[("dags/a.py", "broken\n")], "broken");
    wait_until(
        Duration::from_secs(30),
        "both publishers see the rejection",
        || {
            a.logs().contains("the check rejected this commit")
                && b.logs().contains("the check rejected this commit")
        },
    );
    let second = remote.commit(&[("dags/a.py", "x = 2\n")], "second");
    a.wait_for_commit(&scratch.root(), &second, Duration::from_secs(30));
    // Both have polled again since and found nothing left to check.
    for publisher in [&a, &b] {
        publisher.wait_for_lines(&["up to date", &second], 2, Duration::from_secs(30));
    }
    for commit in [&first, &broken, &second] {
        assert_eq!(
            check.runs_of(commit),
            1,
            "{commit} checked once for both publishers\nA:\n{}\nB:\n{}",
            a.logs(),
            b.logs()
        );
    }
    let waited = format!("{}{}", a.logs(), b.logs());
    assert!(
        waited.contains("another publisher of this root is checking this commit"),
        "{waited}"
    );
    let log = stdout(&on_root(&scratch, &["log"]));
    assert_eq!(log.matches("rejected").count(), 1, "{log}");
    assert_eq!(published(&scratch.root()).as_deref(), Some(second.as_str()));
}

#[test]
fn a_huge_output_full_of_control_characters_is_bounded_and_escaped() {
    let remote = Remote::new();
    let commit = remote.commit(&[("dags/a.py", "x = 1\n")], "noisy");
    let scratch = Scratch::new();
    let check = Check::new(
        &scratch,
        r#"echo 'summary: 3 problems'
printf 'a terminal trick: \033[2J\033[31mred\r overwritten\n'
head -c 5000 /dev/zero | tr '\0' y; echo
head -c 1000000 /dev/zero | tr '\0' x | fold -w 100; echo
printf 'last \033[0m words\n'
exit 1"#,
    );
    let out = sync_once(
        &scratch,
        &remote.url(),
        &["--check-command", &check.command()],
    );
    let err = stderr(&out);
    assert_one_clear_line(
        &out,
        1,
        "(exit status 1) and no earlier snapshot is live: last \\u{1b}[0m words",
    );
    assert!(!err.contains('\x1b') && !err.contains('\r'), "{err:?}");
    assert!(err.len() < 64 * 1024, "{} bytes of log", err.len());

    let [verdict] = &verdicts(&scratch.root())[..] else {
        panic!("one verdict expected")
    };
    let output = verdict["output"].as_str().unwrap();
    assert!(
        output.len() <= 64 * 1024 + 100,
        "{} bytes kept",
        output.len()
    );
    assert!(
        verdict["output_dropped"].as_u64().unwrap() > 900_000,
        "{verdict}"
    );
    assert!(output.starts_with("summary: 3 problems\n"), "{output:.200}");
    assert!(output.ends_with("last \x1b[0m words\n"), "kept as printed");
    assert!(output.contains("bytes of output dropped"));
    assert_eq!(check.runs_of(&commit), 1);

    let status = stdout(&on_root(&scratch, &["status"]));
    assert!(
        !status.contains('\x1b') && !status.contains('\r'),
        "{status:?}"
    );
    assert!(
        status.contains("| a terminal trick: \\u{1b}[2J\\u{1b}[31mred\\r overwritten"),
        "{status}"
    );
    let longest = status.lines().map(|l| l.chars().count()).max().unwrap();
    assert!(longest < 400, "a line of {longest} characters:\n{status}");
    assert!(status.lines().count() < 40, "{status}");
    let log = stdout(&on_root(&scratch, &["log"]));
    assert!(!log.contains('\x1b'), "{log:?}");
    assert!(
        log.contains("exit status 1: last \\u{1b}[0m words"),
        "{log}"
    );
}

#[test]
fn recheck_forgets_a_verdict_and_rollback_or_pin_to_a_rejected_commit_needs_force() {
    let remote = Remote::new();
    let scratch = Scratch::new();
    let flag = scratch.path("broken");
    let check = Check::new(
        &scratch,
        &format!(
            "test -e '{}' && {{ echo 'the warehouse is down'; exit 1; }}\necho ok",
            flag.display()
        ),
    );
    let sync = |scratch: &Scratch| {
        let out = sync_once(
            scratch,
            &remote.url(),
            &["--check-command", &check.command()],
        );
        assert!(out.status.success(), "{}", stderr(&out));
    };
    let good = remote.commit(&[("dags/a.py", "x = 1\n")], "good");
    sync(&scratch);
    fs::write(&flag, "").unwrap();
    let rejected = remote.commit(&[("dags/a.py", "x = 2\n")], "checked while it was down");
    sync(&scratch);
    assert_eq!(published(&scratch.root()).as_deref(), Some(good.as_str()));

    for command in ["rollback", "pin"] {
        let out = on_root(&scratch, &[command, &rejected[..10]]);
        assert_one_clear_line(
            &out,
            2,
            &format!("commit {rejected} was rejected by the check at"),
        );
        assert!(stderr(&out).contains("add --force"), "{}", stderr(&out));
        assert_eq!(published(&scratch.root()).as_deref(), Some(good.as_str()));
    }
    let out = on_root(
        &scratch,
        &["rollback", &rejected, "--force", "--reason", "we know"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        published(&scratch.root()).as_deref(),
        Some(rejected.as_str())
    );
    let json = status_json(&scratch);
    assert_eq!(json["check"]["accepted"], false, "{json}");
    let status = stdout(&on_root(&scratch, &["status"]));
    assert!(
        status.contains("check:       REJECTED (exit status 1) at")
            && status.contains("published by force"),
        "{status}"
    );
    let list = stdout(&on_root(&scratch, &["list"]));
    assert!(
        list.lines()
            .any(|l| l.starts_with("*PR") && l.contains(&rejected[..12])),
        "{list}"
    );
    let out = on_root(&scratch, &["rollback", &good]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = on_root(&scratch, &["unpin"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // The warehouse is back: recheck, and the next sync checks the commit again.
    fs::remove_file(&flag).unwrap();
    let out = on_root(&scratch, &["recheck", "--reason", "warehouse is back"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("forgot the verdict of {rejected}")),
        "{}",
        stdout(&out)
    );
    let out = on_root(&scratch, &["recheck"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    sync(&scratch);
    assert_eq!(
        published(&scratch.root()).as_deref(),
        Some(rejected.as_str())
    );
    assert_eq!(check.runs_of(&rejected), 2);
    let log = stdout(&on_root(&scratch, &["log"]));
    assert!(
        log.lines()
            .any(|l| l.contains("recheck") && l.contains("warehouse is back")),
        "{log}"
    );
    let out = on_root(&scratch, &["recheck", "0000000"]);
    assert_one_clear_line(&out, 2, "0000000");
}

#[test]
fn git_sync_s_pre_publish_hook_is_the_gate_in_the_git_sync_personality() {
    let remote = Remote::new();
    let good = remote.commit(&[("dags/a.py", "x = 1\n")], "good");
    let scratch = Scratch::new();
    let check = Check::new(
        &scratch,
        "echo \"$GITSYNC_HASH\" > \"$SEEN/hash\"\ngrep -q broken dags/a.py && { echo 'refusing a broken DAG'; exit 1; }\nexit 0",
    );
    let root = scratch.root().display().to_string();
    let url = remote.url();
    let hook = check.script.display().to_string();
    let log = scratch.path("git-sync.log");
    let daemon = Daemon::start(
        git_sync_via(&[], scratch.tmp.path())
            .env("DAGSNAP_CACHE_DIR", scratch.cache())
            .envs([
                ("GITSYNC_REPO", url.as_str()),
                ("GITSYNC_ROOT", root.as_str()),
                ("GITSYNC_LINK", "dags"),
                ("GITSYNC_PERIOD", "200ms"),
                // git-sync runs the hook itself, not through a shell.
                ("GITSYNC_PRE_PUBLISH_EXECHOOK_COMMAND", hook.as_str()),
            ]),
        log,
    );
    let link = scratch.root().join("dags");
    let shown = || {
        fs::read_link(&link)
            .ok()
            .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
    };
    wait_until(Duration::from_secs(30), "the first publish", || {
        shown().as_deref() == Some(good.as_str())
    });
    let broken = remote.commit(&[("dags/a.py", "broken\n")], "broken");
    wait_until(Duration::from_secs(30), "the rejection", || {
        daemon.logs().contains("the check rejected this commit")
    });
    assert_eq!(shown().as_deref(), Some(good.as_str()));
    let fixed = remote.commit(&[("dags/a.py", "x = 2\n")], "fixed");
    wait_until(Duration::from_secs(30), "the fix live", || {
        shown().as_deref() == Some(fixed.as_str())
    });
    assert_eq!(check.runs_of(&broken), 1, "{}", daemon.logs());
    assert_eq!(
        fs::read_to_string(check.seen.join("hash")).unwrap().trim(),
        fixed
    );
}

#[test]
fn a_check_timeout_that_the_cycle_would_cut_short_is_refused_at_start() {
    let remote = Remote::new();
    remote.commit(&[("dags/a.py", "x = 1\n")], "one");
    let scratch = Scratch::new();
    let out = sync_once(
        &scratch,
        &remote.url(),
        &[
            "--check-command",
            "true",
            "--check-timeout",
            "10m",
            "--sync-timeout",
            "5m",
        ],
    );
    assert_one_clear_line(
        &out,
        2,
        "--check-timeout 10m is not shorter than --sync-timeout 5m: every cycle would end before its check; raise --sync-timeout",
    );
    assert!(published(&scratch.root()).is_none());
}
