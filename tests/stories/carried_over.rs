//! A git-sync user's existing configuration, carried over unchanged: what git-sync runs with,
//! dagsnap runs with too, saying once at start where it differs on purpose.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use crate::git_sync::{
    assert_root_valid_at, git_sync_model, git_sync_model_once, link_target, spawn_git_sync,
};
use crate::servers::{Door, HttpServer};
use crate::support::*;

const USER: &str = "deploy";
const TOKEN: &str = "plain-http-t0ken";

/// `git-sync --one-time` into the scratch root's `dags` link, with `args` and `env`.
fn git_sync_once(scratch: &Scratch, repo: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let root = scratch.root().display().to_string();
    git_sync_via(&[], scratch.tmp.path())
        .env("DAGSNAP_CACHE_DIR", scratch.cache())
        .envs([
            ("GITSYNC_REPO", repo),
            ("GITSYNC_ROOT", root.as_str()),
            ("GITSYNC_LINK", "dags"),
        ])
        .envs(env.iter().copied())
        .arg("--one-time")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn an_http_remote_with_credentials_syncs_as_git_sync_does_with_a_warning() {
    let remote = Remote::new();
    let commit = remote.commit(&[("dags/a.py", "1\n")], "one");
    let server = HttpServer::start_with(false, USER, TOKEN);
    server.serve(&remote.dir, "dags.git");
    let scratch = Scratch::new();
    let url = server.url(Door::Private, "dags.git");
    assert!(url.starts_with("http://"), "{url}");
    let out = git_sync_once(
        &scratch,
        &url,
        &[],
        &[("GITSYNC_USERNAME", USER), ("GITSYNC_PASSWORD", TOKEN)],
    );
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert_eq!(assert_root_valid_at(&scratch.root(), "dags"), commit);
    assert!(
        log.contains("credentials for --repo go over plain http://, as git-sync sends them"),
        "{log}"
    );
    assert!(!log.contains(TOKEN), "the token is never printed:\n{log}");
}

#[test]
fn a_root_that_holds_other_files_is_published_beside_them_and_they_are_kept() {
    let remote = Remote::new();
    let commit = remote.commit(&[("dags/a.py", "1\n")], "one");
    let scratch = Scratch::new();
    let root = scratch.root();
    // A fresh volume's lost+found, a note someone left, another tool's directory.
    for dir in ["lost+found", "other-tool"] {
        fs::create_dir_all(root.join(dir)).unwrap();
    }
    fs::write(root.join("README.txt"), "ask the platform team\n").unwrap();
    fs::write(root.join("other-tool/state"), "42\n").unwrap();

    let out = sync_once(&scratch, &remote.url(), &[]);
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert_eq!(assert_root_valid(&root), commit);
    let warned: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("the root holds entries dagsnap did not create"))
        .collect();
    assert_eq!(warned.len(), 1, "said once:\n{log}");
    assert!(
        warned[0].contains("README.txt, other-tool") && !warned[0].contains("lost+found"),
        "names them (a filesystem's lost+found is expected):\n{log}"
    );
    assert_eq!(
        fs::read_to_string(root.join("README.txt")).unwrap(),
        "ask the platform team\n"
    );
    assert_eq!(
        fs::read_to_string(root.join("other-tool/state")).unwrap(),
        "42\n"
    );
    // And again, as git-sync, and when removing everything dagsnap made.
    let out = git_sync_once(&scratch, &remote.url(), &[], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = on_root(&scratch, &["remove", "--all"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(root.join("README.txt").exists() && root.join("other-tool/state").exists());
}

#[test]
fn git_sync_s_end_to_end_flags_are_taken_git_config_add_and_filter_included() {
    let remote = Remote::new();
    let commit = remote.commit(&[("dags/a.py", "1\n")], "one");
    let scratch = Scratch::new();
    let out = git_sync_once(
        &scratch,
        &remote.url(),
        &[
            "--git-config-add=http.lowSpeedLimit:1000",
            "--git-config-add",
            "http.lowSpeedTime:30",
            "--filter=blob:none",
        ],
        &[],
    );
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert_eq!(assert_root_valid_at(&scratch.root(), "dags"), commit);
    assert!(
        log.contains("git configuration http.lowSpeedLimit, http.lowSpeedTime applies"),
        "{log}"
    );
    assert!(log.contains("--filter blob:none"), "{log}");
}

#[test]
fn a_local_repository_owned_by_another_user_is_read_when_safe_directory_says_so() {
    if !nix::unistd::geteuid().is_root() {
        skip(
            "root, to give the repository to another uid",
            "this is not root",
        );
        return;
    }
    let remote = Remote::new();
    let commit = remote.commit(&[("dags/a.py", "1\n")], "one");
    let chowned = std::process::Command::new("chown")
        .args(["-R", "4242:4242"])
        .arg(&remote.dir)
        .status()
        .unwrap();
    assert!(chowned.success());
    let scratch = Scratch::new();
    // git refuses to serve a repository of another user...
    let out = git_sync_once(
        &scratch,
        &remote.url(),
        &["--git-config=core.quotePath:false"],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("dubious ownership"),
        "{}",
        stderr(&out)
    );
    assert!(
        !scratch.cache().exists(),
        "a failed first start takes back its cache, git configuration file included"
    );
    // ...unless git configuration says it is safe, as git-sync's users say it.
    let out = git_sync_once(
        &scratch,
        &remote.url(),
        &["--git-config=safe.directory:*"],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(assert_root_valid_at(&scratch.root(), "dags"), commit);
    let out = git_sync_once(
        &scratch,
        &remote.url(),
        &[],
        &[("GITSYNC_GIT_CONFIG", "safe.directory:*")],
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn an_exec_hook_writes_in_a_directory_of_its_own_named_in_its_environment() {
    let remote = Remote::new();
    let commit = remote.commit(&[("dags/a.py", "1\n")], "one");
    let scratch = Scratch::new();
    let hook = scratch.path("archive.sh");
    fs::write(
        &hook,
        "#!/bin/sh\nset -e\necho \"$GITSYNC_HASH\" > \"$DAGSNAP_HOOK_DIR/exechook\"\ncat dags/a.py >> \"$DAGSNAP_HOOK_DIR/exechook\"\n",
    )
    .unwrap();
    fs::set_permissions(&hook, fs::Permissions::from_mode(0o755)).unwrap();
    let out = git_sync_once(
        &scratch,
        &remote.url(),
        &[&format!("--exechook-command={}", hook.display())],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let written = fs::read_to_string(scratch.cache().join("exechook/exechook")).unwrap();
    assert_eq!(written, format!("{commit}\n1\n"));
    // Its directory is private to the publisher, and never on the shared volume.
    let mode = fs::metadata(scratch.cache().join("exechook"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
    assert!(!scratch.root().join(".dagsnap").join("exechook").exists());
}

#[test]
fn a_one_time_run_on_a_root_git_sync_just_wrote_publishes_the_tip() {
    let remote = Remote::new();
    remote.commit(&[("dags/a.py", "1\n")], "one");
    let scratch = Scratch::new();
    let root = scratch.root();
    git_sync_model_once(&remote, &root, "dags");
    let tip = remote.commit(&[("dags/a.py", "2\n")], "two");
    // git-sync wrote the root a moment ago: the link is git-sync's for another 2 s.
    let out = git_sync_once(
        &scratch,
        &remote.url(),
        &[],
        &[("DAGSNAP_ADOPT_AFTER", "2s")],
    );
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("git-sync still writes this root"),
        "it waited:\n{log}"
    );
    assert_eq!(
        assert_root_valid_at(&root, "dags"),
        tip,
        "exit 0 means the tip is live"
    );
}

#[test]
fn a_one_time_run_fails_when_git_sync_keeps_writing_past_its_timeout() {
    let remote = Remote::new();
    remote.commit(&[("dags/a.py", "1\n")], "one");
    let scratch = Scratch::new();
    let root = scratch.root();
    let mut model = git_sync_model(&remote, &root, "dags", "1", false);
    let _git_sync = Group::spawn(model.stdout(Stdio::null()).stderr(Stdio::null()));
    wait_until(Duration::from_secs(30), "git-sync's first sync", || {
        link_target(&root.join("dags")).starts_with(".worktrees/")
    });
    let tip = remote.commit(&[("dags/a.py", "2\n")], "two");
    let out = git_sync_once(
        &scratch,
        &remote.url(),
        &["--sync-timeout=3s"],
        &[("DAGSNAP_ADOPT_AFTER", "30s")],
    );
    let log = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(
        log.contains(&format!(
            "git-sync kept writing this root, so {tip} did not go live"
        )),
        "{log}"
    );
    assert!(link_target(&root.join("dags")).starts_with(".worktrees/"));
}

#[test]
fn git_sync_s_files_go_once_the_link_has_been_dagsnap_s_for_the_grace_while_commits_arrive() {
    let remote = Remote::new();
    remote.commit(&[("dags/a.py", "0\n")], "zero");
    let scratch = Scratch::new();
    let root = scratch.root();
    git_sync_model_once(&remote, &root, "dags");
    let root_s = root.display().to_string();
    let url = remote.url();
    let daemon = spawn_git_sync(
        &scratch,
        &[],
        &[
            ("GITSYNC_REPO", &url),
            ("GITSYNC_ROOT", &root_s),
            ("GITSYNC_LINK", "dags"),
            ("GITSYNC_PERIOD", "100ms"),
            ("DAGSNAP_ADOPT_AFTER", "0s"),
            ("DAGSNAP_GRACE", "2s"),
        ],
    );
    wait_until(Duration::from_secs(30), "dagsnap to take the link", || {
        link_target(&root.join("dags")).starts_with(SNAPSHOTS)
    });
    // A busy repository: a commit every 300 ms, each one moving the link.
    let mut n = 1;
    let gone = || !root.join(".git").exists() && !root.join(".worktrees").exists();
    let started = std::time::Instant::now();
    while !gone() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "git-sync's files were kept while commits kept arriving:\n{}",
            daemon.logs()
        );
        remote.commit(&[("dags/a.py", &format!("{n}\n"))], &format!("change {n}"));
        n += 1;
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(
        daemon.logs().contains("removed git-sync's files"),
        "{}",
        daemon.logs()
    );
    assert!(n > 3, "commits were still arriving when they went");
}

#[test]
fn dagsnap_s_own_settings_are_the_ones_said_at_start_and_win() {
    let remote = Remote::new();
    remote.commit(&[("dags/a.py", "1\n")], "one");
    let scratch = Scratch::new();
    let out = git_sync_once(
        &scratch,
        &remote.url(),
        &[],
        &[
            ("DAGSNAP_GRACE", "1h"),
            ("DAGSNAP_ADOPT_AFTER", "5s"),
            ("GITSYNC_STALE_WORKTREE_TIMEOUT", "20m"),
        ],
    );
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    for said in [
        "git-sync has left it alone for 5s (DAGSNAP_ADOPT_AFTER)",
        "DAGSNAP_GRACE 1h wins over --stale-worktree-timeout 20m",
        "previous snapshots stay for 1h after they stop being live",
    ] {
        assert!(log.contains(said), "{said:?} in:\n{log}");
    }
}

#[test]
fn an_operator_without_write_permission_is_told_to_run_as_the_publishers_user() {
    if !nix::unistd::geteuid().is_root() {
        skip(
            "root, to run the command as another uid",
            "this is not root",
        );
        return;
    }
    let remote = Remote::new();
    let scratch = Scratch::new();
    publish_versions(&remote, &scratch, 2, "v");
    fs::set_permissions(scratch.tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let out = dagsnap_via(
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ],
        Path::new("/"),
    )
    .args(["rollback", "--root"])
    .arg(scratch.root())
    .output()
    .unwrap();
    assert_one_clear_line(&out, 2, "is not writable by uid 65534");
    assert!(
        stderr(&out).contains("run this command as the publishers' user"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn the_chart_s_environment_starts_with_one_line_per_difference_and_no_warning() {
    let remote = Remote::new();
    let commit = remote.commit(&[("dags/a.py", "1\n")], "one");
    let scratch = Scratch::new();
    let root = scratch.root().display().to_string();
    // The chart's git-sync environment (v3 and v4 names side by side), pointed at this root.
    let env: Vec<(String, String)> = crate::chart::chart_env(&remote.url(), true)
        .into_iter()
        .map(|(k, v)| match k.as_str() {
            "GIT_SYNC_ROOT" | "GITSYNC_ROOT" => (k, root.clone()),
            _ => (k, v),
        })
        .collect();
    let out = git_sync_via(&[], scratch.tmp.path())
        .env("DAGSNAP_CACHE_DIR", scratch.cache())
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap();
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert_eq!(assert_root_valid_at(&scratch.root(), "repo"), commit);
    let start: Vec<&str> = log
        .lines()
        .take_while(|l| !l.contains("dagsnap sync starting"))
        .collect();
    assert!(
        start.iter().all(|l| l.contains(" INFO ")),
        "no warning for a configuration that works:\n{log}"
    );
    let deprecated: Vec<&&str> = start.iter().filter(|l| l.contains("deprecated")).collect();
    assert_eq!(deprecated.len(), 1, "{log}");
    for name in [
        "$GIT_SYNC_REPO",
        "$GIT_SYNC_ROOT",
        "--branch (for --ref)",
        "--dest (for --link)",
    ] {
        assert!(deprecated[0].contains(name), "{name} in:\n{log}");
    }
    assert!(start.len() <= 6, "one line per difference:\n{log}");
}

#[test]
fn a_move_back_to_a_known_commit_counts_as_a_fetch_as_git_sync_counts_it() {
    let remote = Remote::new();
    let first = remote.commit(&[("dags/a.py", "1\n")], "one");
    let scratch = Scratch::new();
    let (daemon, base) = crate::sidecar::sidecar(&scratch, &remote.url(), &["--period", "100ms"]);
    daemon.wait_for_commit(&scratch.root(), &first, Duration::from_secs(30));
    let second = remote.commit(&[("dags/a.py", "2\n")], "two");
    daemon.wait_for_commit(&scratch.root(), &second, Duration::from_secs(30));
    // Someone force-pushes the branch back: the cache holds that commit already.
    remote.git(&["reset", "--hard", &first]);
    daemon.wait_for_commit(&scratch.root(), &first, Duration::from_secs(30));
    wait_until(Duration::from_secs(10), "three fetches counted", || {
        metric(&crate::sidecar::metrics(&base), "git_fetch_count_total") >= 3.0
    });
    // Unchanged polls since add nothing.
    let unchanged = |text: &str| metric(text, "dagsnap_syncs_total{result=\"unchanged\"}");
    let before = unchanged(&crate::sidecar::metrics(&base));
    wait_until(Duration::from_secs(10), "three unchanged polls", || {
        unchanged(&crate::sidecar::metrics(&base)) >= before + 3.0
    });
    assert_eq!(
        metric(&crate::sidecar::metrics(&base), "git_fetch_count_total"),
        3.0
    );
}

#[test]
fn a_server_whose_certificate_is_its_own_ca_is_trusted_when_configured_as_the_ca() {
    let remote = Remote::new();
    let commit = remote.commit(&[("dags/a.py", "1\n")], "one");
    let server = HttpServer::start_with(true, USER, TOKEN);
    server.serve(&remote.dir, "dags.git");
    server.present_self_signed_ca("IP:127.0.0.1,DNS:localhost");
    let scratch = Scratch::new();
    let ca = format!("--git-config=http.sslCAInfo:{}", server.ca_file.display());
    let url = server.url(Door::Private, "dags.git");
    let env = [("GITSYNC_USERNAME", USER), ("GITSYNC_PASSWORD", TOKEN)];
    let out = git_sync_once(&scratch, &url, &[&ca, "-v=2"], &env);
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert_eq!(assert_root_valid_at(&scratch.root(), "dags"), commit);
    assert!(
        log.contains("the server presented a configured CA's own certificate"),
        "webpki alone refuses it; git accepts it:\n{log}"
    );

    // The trust is for the names that certificate holds.
    server.present_self_signed_ca("DNS:git.elsewhere.example");
    let scratch = Scratch::new();
    let out = git_sync_once(&scratch, &url, &[&ca], &env);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not valid for") || stderr(&out).contains("NotValidForName"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn an_absolute_link_outside_the_root_is_published_as_git_sync_publishes_it() {
    let remote = Remote::new();
    let first = remote.commit(&[("dags/a.py", "1\n")], "one");
    let scratch = Scratch::new();
    let volume = scratch.path("volume");
    let (root, link) = (volume.join("root"), volume.join("other/dir/link"));
    let root_s = root.display().to_string();
    let link_s = link.display().to_string();
    let env = [
        ("GITSYNC_ROOT", root_s.as_str()),
        ("GITSYNC_LINK", link_s.as_str()),
    ];
    let run = || {
        git_sync_via(&[], scratch.tmp.path())
            .env("DAGSNAP_CACHE_DIR", scratch.cache())
            .env("GITSYNC_REPO", remote.url())
            .envs(env)
            .arg("--one-time")
            .output()
            .unwrap()
    };
    let out = run();
    assert!(out.status.success(), "{}", stderr(&out));
    // A relative target, so it resolves wherever the volume is mounted.
    assert_eq!(
        fs::read_link(&link).unwrap(),
        Path::new("../../root/.dagsnap/snapshots").join(&first)
    );
    assert_eq!(fs::read_to_string(link.join("dags/a.py")).unwrap(), "1\n");
    assert!(!root.join("link").exists() && !root.join("other").exists());

    let second = remote.commit(&[("dags/a.py", "2\n")], "two");
    let out = run();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(fs::read_to_string(link.join("dags/a.py")).unwrap(), "2\n");
    // Operator commands find the link from the root's record.
    let out = dagsnap(scratch.tmp.path())
        .args(["status", "--json", "--root"])
        .arg(&root)
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["commit"], second.as_str(), "{status}");
    assert_eq!(status["link"], link_s.as_str(), "{status}");

    // The directories on the way must be real ones: a symlink there is refused, never followed.
    let elsewhere = scratch.path("elsewhere");
    fs::create_dir_all(&elsewhere).unwrap();
    fs::rename(volume.join("other"), scratch.path("other.moved")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, volume.join("other")).unwrap();
    remote.commit(&[("dags/a.py", "3\n")], "three");
    let out = run();
    assert_ne!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        fs::read_dir(&elsewhere).unwrap().next().is_none(),
        "nothing was written through the symlink"
    );
}
