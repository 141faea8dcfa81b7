//! Publishing: first publish, updates, idle polls, what a snapshot looks like.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use crate::support::*;

#[test]
fn first_publish_into_a_root_that_does_not_exist_yet() {
    let remote = Remote::new();
    let commit = remote.commit(&[("dags/hello.py", "print('hello')\n")], "add hello dag");
    let scratch = Scratch::new();

    let out = sync_once(&scratch, &remote.url(), &[]);
    assert!(out.status.success(), "{}", stderr(&out));

    assert_eq!(assert_root_valid(&scratch.root()), commit);
    assert_eq!(
        read_current(&scratch.root(), "dags/hello.py"),
        "print('hello')\n"
    );
    assert_eq!(
        fs::read_to_string(scratch.root().join(".airflowignore")).unwrap(),
        ".dagsnap\n"
    );
}

#[test]
fn first_publish_into_an_empty_existing_root_from_a_plain_path() {
    let remote = Remote::new();
    let commit = remote.commit(&[("a.py", "a\n")], "one");
    let scratch = Scratch::new();
    fs::create_dir(scratch.root()).unwrap();
    fs::create_dir(scratch.root().join("lost+found")).unwrap();

    let out = sync_once(&scratch, &remote.path(), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(assert_root_valid(&scratch.root()), commit);
}

#[test]
fn a_new_commit_is_published_by_the_running_loop() {
    let remote = Remote::new();
    let first = remote.commit(&[("a.py", "v1\n")], "v1");
    let scratch = Scratch::new();
    let mut daemon = spawn_loop(&scratch, &remote.url(), &["--period", "50ms"]);
    wait_until(Duration::from_secs(30), "first publish", || {
        published(&scratch.root()) == Some(first.clone())
    });

    let second = remote.commit(&[("a.py", "v2\n"), ("b.py", "new\n")], "v2");
    wait_until(Duration::from_secs(30), "second publish", || {
        published(&scratch.root()) == Some(second.clone())
    });
    assert_eq!(read_current(&scratch.root(), "a.py"), "v2\n");
    assert_eq!(read_current(&scratch.root(), "b.py"), "new\n");
    // The previous snapshot stays for readers that still hold it open.
    assert!(scratch.root().join(SNAPSHOTS).join(&first).is_dir());

    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(daemon.wait(Duration::from_secs(30)).success());
    assert_eq!(assert_root_valid(&scratch.root()), second);
    assert!(!daemon.logs().contains("ERROR"), "{}", daemon.logs());
}

#[test]
fn an_unchanged_poll_leaves_the_root_byte_identical() {
    let remote = Remote::new();
    remote.commit(&[("dags/a.py", "a\n"), ("dags/b.py", "b\n")], "initial");
    let scratch = Scratch::new();
    let out = sync_once(&scratch, &remote.url(), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Each publisher keeps its own record in .dagsnap/publishers.d/ (for `status`), with a
    // heartbeat written at every cycle; nothing else is written by an idle poll.
    let outside_records = |root: &std::path::Path| {
        let mut print = fingerprint(root);
        print.retain(|path, _| !path.starts_with(".dagsnap/publishers.d"));
        print
    };
    let before = outside_records(&scratch.root());

    // A restart and several polls of a loop, all with nothing new on the remote.
    let out = sync_once(&scratch, &remote.url(), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut daemon = spawn_loop(
        &scratch,
        &remote.url(),
        &["--period", "20ms", "--log-level", "debug"],
    );
    wait_until(Duration::from_secs(30), "a first idle poll", || {
        daemon.logs().matches("up to date").count() >= 1
    });
    let running = outside_records(&scratch.root());
    let record = scratch.root().join(format!(
        ".dagsnap/publishers.d/{}.{}.json",
        hostname(),
        daemon.child.id()
    ));
    let beat = |path: &std::path::Path| -> u64 {
        serde_json::from_slice::<serde_json::Value>(&std::fs::read(path).unwrap_or_default())
            .ok()
            .and_then(|v| v["beat"].as_u64())
            .unwrap_or(0)
    };
    let first_beat = beat(&record);
    wait_until(Duration::from_secs(30), "several idle polls", || {
        daemon.logs().matches("up to date").count() >= 6
    });
    assert_eq!(
        outside_records(&scratch.root()),
        running,
        "idle polls wrote nothing but the heartbeat"
    );
    assert!(
        beat(&record) >= first_beat + 4,
        "the heartbeat advances at every poll"
    );
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(daemon.wait(Duration::from_secs(30)).success());

    assert_eq!(outside_records(&scratch.root()), before);
}

#[test]
fn executable_bits_and_symlinks_are_kept_as_git_records_them() {
    let remote = Remote::new();
    remote.commit(
        &[("bin/run.sh", "#!/bin/sh\necho hi\n"), ("dags/a.py", "a\n")],
        "files",
    );
    fs::set_permissions(
        remote.dir.join("bin/run.sh"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::symlink("dags/a.py", remote.dir.join("alias.py")).unwrap();
    std::os::unix::fs::symlink("dags", remote.dir.join("dags-link")).unwrap();
    remote.commit_all("exec bit and symlinks");
    let scratch = Scratch::new();

    let out = sync_once(&scratch, &remote.url(), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_root_valid(&scratch.root());

    let current = scratch.root().join("current");
    let mode = |p: &str| fs::metadata(current.join(p)).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode("bin/run.sh"),
        0o555,
        "executable stays executable (and read-only)"
    );
    assert_eq!(mode("dags/a.py"), 0o444);
    assert_eq!(
        fs::read_link(current.join("alias.py")).unwrap(),
        std::path::Path::new("dags/a.py")
    );
    assert_eq!(
        fs::read_link(current.join("dags-link")).unwrap(),
        std::path::Path::new("dags")
    );
    assert_eq!(read_current(&scratch.root(), "alias.py"), "a\n");
}

#[test]
fn snapshots_are_read_only_so_readers_cannot_pollute_them() {
    let remote = Remote::new();
    remote.commit(&[("dags/a.py", "a\n")], "one");
    let scratch = Scratch::new();
    let out = sync_once(&scratch, &remote.url(), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let commit = assert_root_valid(&scratch.root());

    let snapshot = scratch.root().join(SNAPSHOTS).join(&commit);
    for entry in walkdir::WalkDir::new(&snapshot) {
        let entry = entry.unwrap();
        let mode = entry.metadata().unwrap().permissions().mode();
        assert_eq!(mode & 0o222, 0, "{} is writable", entry.path().display());
        assert_eq!(
            mode & 0o444,
            0o444,
            "{} is not readable by everyone",
            entry.path().display()
        );
    }
    assert!(!snapshot.join(".git").exists());
    // root bypasses permission bits, so check the mode rather than attempt a write as root.
    if !nix::unistd::geteuid().is_root() {
        assert!(fs::create_dir(snapshot.join("dags/__pycache__")).is_err());
    }
}

#[test]
fn shallow_cache_stays_shallow_across_many_updates() {
    let remote = Remote::new();
    let scratch = Scratch::new();
    let mut last = String::new();
    for i in 0..6 {
        last = remote.commit(
            &[("a.py", &format!("{i}\n")), (&format!("f{i}.py"), "x\n")],
            &format!("update {i}"),
        );
        let out = sync_once(&scratch, &remote.url(), &[]);
        assert!(out.status.success(), "update {i}: {}", stderr(&out));
        assert_eq!(published(&scratch.root()), Some(last.clone()));
    }
    let cache_repo = scratch.cache().join("repo.git");
    let shallow =
        fs::read_to_string(cache_repo.join("shallow")).expect("the cache is a shallow repository");
    assert!(
        shallow.contains(&last),
        "the newest commit is a shallow boundary: {shallow}"
    );
    let count = git(&cache_repo, &["rev-list", "--count", &last]);
    assert_eq!(count, "1", "depth 1 keeps one commit of history");
    assert_eq!(read_current(&scratch.root(), "a.py"), "5\n");
}

#[test]
fn full_history_with_depth_zero() {
    let remote = Remote::new();
    remote.commit(&[("a.py", "1\n")], "one");
    let second = remote.commit(&[("a.py", "2\n")], "two");
    let scratch = Scratch::new();
    let out = sync_once(&scratch, &remote.url(), &["--depth", "0"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(published(&scratch.root()), Some(second.clone()));
    let cache_repo = scratch.cache().join("repo.git");
    assert!(!cache_repo.join("shallow").exists());
    assert_eq!(git(&cache_repo, &["rev-list", "--count", &second]), "2");
}

#[test]
fn a_snapshot_deleted_by_hand_is_republished() {
    let remote = Remote::new();
    let commit = remote.commit(&[("a.py", "a\n")], "one");
    let scratch = Scratch::new();
    assert!(sync_once(&scratch, &remote.url(), &[]).status.success());
    let snapshot = scratch.root().join(SNAPSHOTS).join(&commit);
    dagsnap::remove_tree(&snapshot).unwrap();

    let out = sync_once(&scratch, &remote.url(), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(assert_root_valid(&scratch.root()), commit);
    assert!(stderr(&out).contains("republishing"), "{}", stderr(&out));
}

#[test]
fn an_existing_airflowignore_is_the_users_and_is_kept() {
    let remote = Remote::new();
    remote.commit(&[("a.py", "a\n")], "one");
    let scratch = Scratch::new();
    fs::create_dir(scratch.root()).unwrap();
    fs::write(scratch.root().join(".airflowignore"), "tests/\n.dagsnap\n").unwrap();
    assert!(sync_once(&scratch, &remote.url(), &[]).status.success());
    assert_eq!(
        fs::read_to_string(scratch.root().join(".airflowignore")).unwrap(),
        "tests/\n.dagsnap\n"
    );
}

#[test]
fn every_option_reads_from_the_environment() {
    let remote = Remote::new();
    let commit = remote.commit(&[("a.py", "a\n")], "one");
    remote.git(&["branch", "release"]);
    remote.commit(&[("a.py", "b\n")], "two");
    let scratch = Scratch::new();
    let out = dagsnap(scratch.tmp.path())
        .arg("sync")
        .env("DAGSNAP_REPO", remote.url())
        .env("DAGSNAP_ROOT", scratch.root())
        .env("DAGSNAP_CACHE_DIR", scratch.cache())
        .env("DAGSNAP_REF", "release")
        .env("DAGSNAP_ONE_TIME", "true")
        .env("DAGSNAP_PERIOD", "1m30s")
        .env("DAGSNAP_LINK", "dags")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let link = fs::read_link(scratch.root().join("dags")).unwrap();
    assert!(link.ends_with(&commit), "{link:?}");

    // A flag wins over the environment.
    let other_root = scratch.path("other-root");
    let out = dagsnap(scratch.tmp.path())
        .args(["sync", "--ref", "main", "--link", "dags"])
        .arg("--root")
        .arg(&other_root)
        .env("DAGSNAP_REPO", remote.url())
        .env("DAGSNAP_ROOT", scratch.root())
        .env("DAGSNAP_CACHE_DIR", scratch.path("other-cache"))
        .env("DAGSNAP_REF", "release")
        .env("DAGSNAP_ONE_TIME", "true")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        fs::read_link(other_root.join("dags"))
            .unwrap()
            .file_name()
            .unwrap()
            .to_string_lossy(),
        remote.head()
    );
}

#[test]
fn every_sync_option_has_its_environment_variable() {
    use clap::CommandFactory;
    let cli = dagsnap::Cli::command();
    let sync = cli.find_subcommand("sync").unwrap();
    let mut wrong = Vec::new();
    let mut checked = 0;
    for arg in sync.get_arguments().chain(cli.get_arguments()) {
        let Some(long) = arg.get_long() else {
            continue;
        };
        if long == "help" {
            continue;
        }
        checked += 1;
        let expected = format!("DAGSNAP_{}", long.to_ascii_uppercase().replace('-', "_"));
        if arg.get_env().and_then(|e| e.to_str()) != Some(expected.as_str()) {
            wrong.push(format!(
                "--{long}: {:?}, expected {expected}",
                arg.get_env()
            ));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    assert!(checked >= 28, "walked only {checked} options");
}

#[test]
fn a_link_in_a_subdirectory_points_back_into_the_store() {
    let remote = Remote::new();
    let commit = remote.commit(&[("a.py", "a\n")], "one");
    let scratch = Scratch::new();
    let out = sync_once(&scratch, &remote.url(), &["--link", "airflow/dags"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let link = scratch.root().join("airflow/dags");
    assert_eq!(
        fs::read_link(&link).unwrap(),
        std::path::Path::new("../.dagsnap/snapshots").join(&commit)
    );
    assert_eq!(fs::read_to_string(link.join("a.py")).unwrap(), "a\n");
}

#[test]
fn a_long_first_publish_reports_progress_in_the_logs() {
    let remote = Remote::new();
    remote.fast_commits("main", 1, 6000);
    let scratch = Scratch::new();
    let out = sync_once(
        &scratch,
        &remote.url(),
        &["--progress-interval", "10ms", "--log-format", "json"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let progress: Vec<String> = stderr(&out)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|event| event["message"] == "in progress")
        .map(|event| event["progress"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        !progress.is_empty(),
        "no progress lines in:\n{}",
        stderr(&out)
    );
    assert!(
        progress.iter().any(|p| p.contains("files")),
        "checkout progress counts files: {progress:?}"
    );
}

#[test]
fn an_update_shares_unchanged_files_with_the_previous_snapshot() {
    use std::os::unix::fs::MetadataExt;
    let remote = Remote::new();
    let first = remote.commit(
        &[
            ("dags/a.py", "a\n"),
            ("dags/b.py", "b\n"),
            ("run.sh", "#!/bin/sh\n"),
        ],
        "one",
    );
    fs::set_permissions(remote.dir.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    remote.commit_all("make run.sh executable");
    let scratch = Scratch::new();
    assert!(sync_once(&scratch, &remote.url(), &[]).status.success());
    let before = published(&scratch.root()).unwrap();
    let second = remote.commit(&[("dags/a.py", "a changed\n")], "two");
    assert!(sync_once(&scratch, &remote.url(), &[]).status.success());
    assert_eq!(assert_root_valid(&scratch.root()), second);

    let snap = |commit: &str, path: &str| scratch.root().join(SNAPSHOTS).join(commit).join(path);
    let inode = |p: std::path::PathBuf| fs::metadata(p).unwrap().ino();
    assert_eq!(
        inode(snap(&before, "dags/b.py")),
        inode(snap(&second, "dags/b.py")),
        "unchanged file shared"
    );
    assert_eq!(
        inode(snap(&before, "run.sh")),
        inode(snap(&second, "run.sh"))
    );
    assert_ne!(
        inode(snap(&before, "dags/a.py")),
        inode(snap(&second, "dags/a.py")),
        "changed file written anew"
    );
    assert_eq!(
        fs::read_to_string(snap(&before, "dags/a.py")).unwrap(),
        "a\n",
        "the old snapshot is untouched"
    );
    assert_eq!(read_current(&scratch.root(), "dags/a.py"), "a changed\n");
    assert_ne!(first, second);

    // --full-copy shares nothing.
    let third = remote.commit(&[("dags/a.py", "third\n")], "three");
    let out = sync_once(&scratch, &remote.url(), &["--full-copy"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(assert_root_valid(&scratch.root()), third);
    assert_ne!(
        inode(snap(&second, "dags/b.py")),
        inode(snap(&third, "dags/b.py"))
    );
}

#[test]
fn a_renamed_directory_is_shared_not_rewritten() {
    use std::os::unix::fs::MetadataExt;
    let remote = Remote::new();
    let first = remote.commit(
        &[("dags/team_a/a.py", "a\n"), ("dags/team_a/b.py", "b\n")],
        "one",
    );
    let scratch = Scratch::new();
    assert!(sync_once(&scratch, &remote.url(), &[]).status.success());
    remote.git(&["mv", "dags/team_a", "dags/team_alpha"]);
    let second = remote.commit_all("rename the directory");
    let out = sync_once(&scratch, &remote.url(), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("reused=2"), "{}", stderr(&out));
    let ino = |commit: &str, path: &str| {
        fs::metadata(scratch.root().join(SNAPSHOTS).join(commit).join(path))
            .unwrap()
            .ino()
    };
    assert_eq!(
        ino(&first, "dags/team_a/a.py"),
        ino(&second, "dags/team_alpha/a.py")
    );
    assert_eq!(read_current(&scratch.root(), "dags/team_alpha/b.py"), "b\n");
}

#[test]
fn min_publish_interval_spaces_link_moves_and_still_ends_on_the_newest_commit() {
    let remote = Remote::new();
    let mut last = remote.commit(&[("a.py", "0\n")], "start");
    let scratch = Scratch::new();
    let daemon = spawn_loop(
        &scratch,
        &remote.url(),
        &["--period", "50ms", "--min-publish-interval", "2s"],
    );
    daemon.wait_for_commit(&scratch.root(), &last, Duration::from_secs(30));
    for n in 1..=20 {
        last = remote.commit(&[("a.py", &format!("{n}\n"))], &format!("change {n}"));
        std::thread::sleep(Duration::from_millis(200));
    }
    daemon.wait_for_commit(&scratch.root(), &last, Duration::from_secs(30));
    let journal = std::fs::read_to_string(scratch.root().join(".dagsnap/journal.jsonl")).unwrap();
    let moves: Vec<std::time::SystemTime> = journal
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["moved_link"] != false)
        .filter_map(|e| humantime::parse_rfc3339_weak(e["published_at"].as_str()?).ok())
        .collect();
    assert!(
        moves.len() >= 2 && moves.len() <= 5,
        "20 commits in 4 s, moves at most every 2 s: {}",
        moves.len()
    );
    for pair in moves.windows(2) {
        let gap = pair[1].duration_since(pair[0]).unwrap();
        assert!(
            gap >= Duration::from_millis(1900),
            "two link moves {gap:?} apart"
        );
    }
    assert!(
        daemon.logs().contains("--min-publish-interval"),
        "{}",
        daemon.logs()
    );
}
