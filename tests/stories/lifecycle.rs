//! Starting, stopping, crashing and restarting publishers.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::support::*;

#[test]
fn sigterm_mid_loop_exits_zero_and_leaves_a_valid_root() {
    let remote = Remote::new();
    let commits = remote.fast_commits("main", 30, 300);
    remote.git(&["update-ref", "refs/heads/main", &commits[0]]);
    // Stop at different moments: during the first publish, between polls, during updates.
    for (round, delay_ms) in [40u64, 150, 400, 700, 1100].into_iter().enumerate() {
        let scratch = Scratch::new();
        let mut daemon = spawn_loop(&scratch, &remote.url(), &["--period", "10ms"]);
        let start = Instant::now();
        let mut next = 1;
        while start.elapsed() < Duration::from_millis(delay_ms) {
            if next < commits.len() {
                remote.git(&["update-ref", "refs/heads/main", &commits[next]]);
                next += 1;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        daemon.signal(Signal::SIGTERM);
        let status = daemon.wait(Duration::from_secs(30));
        assert!(
            status.success(),
            "round {round}: exit {status:?}\n{}",
            daemon.logs()
        );
        if published(&scratch.root()).is_some() {
            assert_root_valid(&scratch.root());
        } else {
            // Stopped before the first publish: nothing is linked and nothing is half-done.
            assert!(
                staging_dirs(&scratch.root()).is_empty(),
                "round {round}: staging left behind"
            );
        }
        remote.git(&["update-ref", "refs/heads/main", &commits[0]]);
    }
}

#[test]
fn sigint_stops_the_loop_like_sigterm() {
    let remote = Remote::new();
    let commit = remote.commit(&[("a.py", "a\n")], "one");
    let scratch = Scratch::new();
    let mut daemon = spawn_loop(&scratch, &remote.url(), &["--period", "1h"]);
    daemon.wait_for_commit(&scratch.root(), &commit, Duration::from_secs(30));
    daemon.signal(Signal::SIGINT);
    assert!(daemon.wait(Duration::from_secs(10)).success());
    assert!(
        daemon.logs().contains("stop requested"),
        "{}",
        daemon.logs()
    );
    assert!(!daemon.logs().contains("ERROR"), "{}", daemon.logs());
    assert_eq!(assert_root_valid(&scratch.root()), commit);
}

#[test]
fn a_stop_signal_during_a_publish_finishes_or_abandons_it_cleanly() {
    let remote = Remote::new();
    // Big enough that writing a snapshot takes a while, so a signal can land in the middle.
    let commits = remote.fast_commits("main", 2, 3000);
    remote.git(&["update-ref", "refs/heads/main", &commits[0]]);
    let mut caught = [false, false];
    for attempt in 0..10 {
        let signal = [Signal::SIGTERM, Signal::SIGINT][attempt % 2];
        let scratch = Scratch::new();
        let root = scratch.root();
        assert!(sync_once(&scratch, &remote.url(), &[]).status.success());
        remote.git(&["update-ref", "refs/heads/main", &commits[1]]);
        let mut daemon = spawn_loop(&scratch, &remote.url(), &["--period", "1h"]);
        let start = Instant::now();
        while staging_dirs(&root).is_empty()
            && published(&root).as_deref() != Some(commits[1].as_str())
            && start.elapsed() < Duration::from_secs(30)
        {
            std::thread::yield_now();
        }
        let mid_publish = !staging_dirs(&root).is_empty();
        daemon.signal(signal);
        let status = daemon.wait(Duration::from_secs(30));
        assert!(
            status.success(),
            "attempt {attempt}, {signal}: {status:?}\n{}",
            daemon.logs()
        );
        if mid_publish {
            caught[attempt % 2] = true;
            assert!(
                daemon
                    .logs()
                    .contains("stop requested; finishing or abandoning the cycle in flight"),
                "{}",
                daemon.logs()
            );
        }
        // Either the new snapshot made it whole, or the old one still serves; nothing half-done.
        let live = assert_root_valid(&root);
        assert!(live == commits[0] || live == commits[1], "{live}");
        assert!(staging_dirs(&root).is_empty(), "staging left behind");
        remote.git(&["update-ref", "refs/heads/main", &commits[0]]);
        if caught == [true, true] {
            break;
        }
    }
    assert_eq!(
        caught,
        [true, true],
        "a signal never landed mid-publish in 10 attempts"
    );
}

#[test]
fn sighup_triggers_an_immediate_sync() {
    let remote = Remote::new();
    remote.commit(&[("a.py", "a\n")], "one");
    let scratch = Scratch::new();
    let daemon = spawn_loop(&scratch, &remote.url(), &["--period", "1h"]);
    wait_until(Duration::from_secs(30), "first publish", || {
        published(&scratch.root()).is_some()
    });
    let second = remote.commit(&[("a.py", "b\n")], "two");
    daemon.signal(Signal::SIGHUP);
    wait_until(Duration::from_secs(30), "publish after SIGHUP", || {
        published(&scratch.root()) == Some(second.clone())
    });
}

#[test]
fn restart_after_kill_9_during_a_publish_cleans_up_and_converges() {
    let remote = Remote::new();
    let commits = remote.fast_commits("main", 1, 4000);
    let scratch = Scratch::new();
    let root = scratch.root();
    let mut caught_mid_publish = false;
    for attempt in 0..10 {
        let mut daemon = spawn_loop(&scratch, &remote.url(), &["--period", "1h"]);
        // Kill while the snapshot is being written, if we can catch it.
        let start = Instant::now();
        while staging_dirs(&root).is_empty()
            && published(&root).is_none()
            && start.elapsed() < Duration::from_secs(30)
        {
            std::thread::yield_now();
        }
        daemon.signal(Signal::SIGKILL);
        daemon.wait(Duration::from_secs(10));
        if !staging_dirs(&root).is_empty() {
            caught_mid_publish = true;
            assert!(
                published(&root).is_none(),
                "attempt {attempt}: the link moved before the snapshot was installed"
            );
            break;
        }
        // Too late: it had already published. Start over.
        drop(daemon);
        std::fs::remove_dir_all(scratch.tmp.path().join("root")).ok();
        let _ = std::process::Command::new("chmod")
            .args(["-R", "u+w"])
            .arg(&root)
            .status();
        std::fs::remove_dir_all(&root).ok();
    }
    assert!(caught_mid_publish, "never caught a publish in flight");

    let out = sync_once(&scratch, &remote.url(), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(assert_root_valid(&root), commits[0]);
}

#[test]
fn the_loop_gives_up_only_when_a_failure_budget_is_set() {
    let scratch = Scratch::new();
    let missing = scratch.path("no-such-repo").display().to_string();
    let mut daemon = spawn_loop(
        &scratch,
        &missing,
        &["--period", "10ms", "--max-failures", "3"],
    );
    let status = daemon.wait(Duration::from_secs(60));
    assert_eq!(status.code(), Some(1), "{}", daemon.logs());
    assert!(
        daemon.logs().contains("giving up after 4 failed"),
        "{}",
        daemon.logs()
    );

    // Without a budget it keeps retrying with backoff.
    let mut daemon = spawn_loop(
        &scratch,
        &missing,
        &["--period", "10ms", "--backoff-max", "50ms"],
    );
    wait_until(Duration::from_secs(30), "several retries", || {
        daemon.logs().matches("sync failed").count() >= 5
    });
    assert!(daemon.child.try_wait().unwrap().is_none(), "still running");
    daemon.signal(Signal::SIGTERM);
    assert!(daemon.wait(Duration::from_secs(10)).success());
}

#[test]
fn the_loop_recovers_by_itself_when_the_remote_comes_back() {
    let remote = Remote::new();
    let first = remote.commit(&[("a.py", "a\n")], "one");
    let scratch = Scratch::new();
    let daemon = spawn_loop(
        &scratch,
        &remote.url(),
        &["--period", "20ms", "--backoff-max", "100ms"],
    );
    wait_until(Duration::from_secs(30), "first publish", || {
        published(&scratch.root()) == Some(first.clone())
    });

    let hidden = remote.dir.with_extension("away");
    std::fs::rename(&remote.dir, &hidden).unwrap();
    wait_until(
        Duration::from_secs(30),
        "failures while the remote is away",
        || daemon.logs().matches("sync failed").count() >= 3,
    );
    assert_eq!(
        assert_root_valid(&scratch.root()),
        first,
        "the current snapshot keeps serving"
    );
    std::fs::rename(&hidden, &remote.dir).unwrap();
    let second = remote.commit(&[("a.py", "b\n")], "two");
    wait_until(
        Duration::from_secs(30),
        "publish after the remote returned",
        || published(&scratch.root()) == Some(second.clone()),
    );
}

#[test]
fn sync_timeout_cuts_off_a_remote_that_stops_answering() {
    // The "server" accepts the connection and then says nothing, forever.
    let stalled = "sleep 3600 #";
    let scratch = Scratch::new();
    let started = Instant::now();
    let out = sync_once_command(
        &scratch,
        &scratch.cache(),
        "ssh://git@127.0.0.1/dags.git",
        &["--sync-timeout", "1s"],
    )
    .env("GIT_SSH_COMMAND", stalled)
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("took longer than --sync-timeout 1s"),
        "{}",
        stderr(&out)
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );

    // A loop survives it and keeps trying.
    let remote = Remote::new();
    let first = remote.commit(&[("a.py", "a\n")], "one");
    assert!(sync_once(&scratch, &remote.url(), &[]).status.success());
    let log = scratch.path("stalled.log");
    let mut child = Group::spawn(
        dagsnap(scratch.tmp.path())
            .args([
                "sync",
                "--repo",
                "ssh://git@127.0.0.1/dags.git",
                "--period",
                "10ms",
                "--sync-timeout",
                "300ms",
                "--backoff-max",
                "50ms",
            ])
            .arg("--root")
            .arg(scratch.path("other-root"))
            .arg("--cache-dir")
            .arg(scratch.path("other-cache"))
            .env("GIT_SSH_COMMAND", stalled)
            .stderr(std::fs::File::create(&log).unwrap()),
    );
    wait_until(Duration::from_secs(60), "three timed-out cycles", || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("took longer than --sync-timeout")
            .count()
            >= 3
    });
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "the loop is still running"
    );
    nix::sys::signal::kill(child.pid(), Signal::SIGTERM).unwrap();
    assert!(child.0.wait().unwrap().success());
    assert_eq!(
        published(&scratch.root()),
        Some(first),
        "the other root was never touched"
    );
}

/// `dagsnap sync` without --cache-dir, as a newcomer runs it: the cache goes under `home`.
fn sync_with_default_cache(
    home: &std::path::Path,
    root: &std::path::Path,
    repo: &str,
    extra: &[&str],
) -> std::process::Output {
    dagsnap(home)
        .args(["sync", "--one-time", "--repo", repo, "--root"])
        .arg(root)
        .args(extra)
        .env_remove("XDG_CACHE_HOME")
        .output()
        .unwrap()
}

#[test]
fn a_failed_first_start_leaves_nothing_behind() {
    let scratch = Scratch::new();
    let caches = scratch.tmp.path().join(".cache/dagsnap");
    // A root that did not exist, and one that did (empty): both as they were after a failure.
    let new_root = scratch.path("new-root");
    let given_root = scratch.path("given-root");
    std::fs::create_dir(&given_root).unwrap();
    for root in [&new_root, &given_root] {
        let out = sync_with_default_cache(scratch.tmp.path(), root, "/nonexistent/dags.git", &[]);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("nothing was published"),
            "{}",
            stderr(&out)
        );
    }
    assert!(!new_root.exists(), "the root it created is gone");
    assert_eq!(
        std::fs::read_dir(&given_root).unwrap().count(),
        0,
        "the given root is empty again"
    );
    assert_eq!(
        std::fs::read_dir(&caches).unwrap().count(),
        0,
        "no cache left"
    );

    // A root something was published to is never taken back.
    let remote = Remote::new();
    remote.commit(&[("a.py", "a\n")], "one");
    assert!(
        sync_with_default_cache(scratch.tmp.path(), &new_root, &remote.url(), &[])
            .status
            .success()
    );
    let out = sync_with_default_cache(
        scratch.tmp.path(),
        &new_root,
        &remote.url(),
        &["--ref", "nope"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert_root_valid(&new_root);
}

#[test]
fn caches_of_roots_that_no_longer_exist_are_pruned() {
    let remote = Remote::new();
    remote.commit(&[("a.py", "a\n")], "one");
    let scratch = Scratch::new();
    let (gone, kept) = (scratch.path("gone"), scratch.path("kept"));
    for root in [&gone, &kept] {
        assert!(
            sync_with_default_cache(scratch.tmp.path(), root, &remote.url(), &[])
                .status
                .success()
        );
    }
    let remove = dagsnap(scratch.tmp.path())
        .args(["remove", "--all", "--root"])
        .arg(&gone)
        .output()
        .unwrap();
    assert!(remove.status.success(), "{}", stderr(&remove));
    let caches = |args: &[&str]| {
        let out = dagsnap(scratch.tmp.path())
            .arg("caches")
            .args(args)
            .env_remove("XDG_CACHE_HOME")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    let listed = caches(&[]);
    assert_eq!(listed.matches("root gone").count(), 1, "{listed}");
    assert_eq!(listed.matches("idle").count(), 1, "{listed}");
    let pruned = caches(&["--prune"]);
    assert!(pruned.contains("pruned 1 cache(s)"), "{pruned}");
    let listed = caches(&[]);
    assert!(
        !listed.contains("root gone") && listed.contains(&kept.display().to_string()),
        "{listed}"
    );
}

#[test]
fn a_second_publisher_with_the_same_configuration_stands_by_and_takes_over() {
    let remote = Remote::new();
    let first = remote.commit(&[("a.py", "1\n")], "one");
    let scratch = Scratch::new();
    let loop_with_default_cache = || {
        let log = scratch.path(&format!(
            "loop-{}.log",
            std::process::id() as u64 + rand::random::<u16>() as u64
        ));
        let child = Group::spawn(
            dagsnap(scratch.tmp.path())
                .args([
                    "sync",
                    "--period",
                    "100ms",
                    "--log-level",
                    "dagsnap=debug",
                    "--repo",
                    &remote.url(),
                    "--root",
                ])
                .arg(scratch.root())
                .env_remove("XDG_CACHE_HOME")
                .stderr(std::fs::File::create(&log).unwrap()),
        );
        (child, log)
    };
    let (a, _) = loop_with_default_cache();
    wait_until(
        Duration::from_secs(30),
        "the first publisher publishes",
        || published(&scratch.root()).as_deref() == Some(first.as_str()),
    );
    let (mut b, b_log) = loop_with_default_cache();
    let logs = || std::fs::read_to_string(&b_log).unwrap_or_default();
    wait_until(Duration::from_secs(30), "the second stands by", || {
        logs().contains("standing by")
    });
    // It looked again (the cache still held) and stayed.
    wait_until(Duration::from_secs(30), "the second to look again", || {
        logs().contains("the cache is still in use; waiting to take over")
    });
    assert!(
        b.0.try_wait().unwrap().is_none(),
        "it did not exit: {}",
        logs()
    );
    assert_eq!(
        logs().matches("standing by").count(),
        1,
        "said once: {}",
        logs()
    );

    drop(a);
    let second = remote.commit(&[("a.py", "2\n")], "two");
    wait_until(
        Duration::from_secs(30),
        "the second takes over and publishes",
        || published(&scratch.root()).as_deref() == Some(second.as_str()),
    );
    assert!(logs().contains("taking over"), "{}", logs());
    nix::sys::signal::kill(b.pid(), Signal::SIGTERM).unwrap();
    assert!(b.0.wait().unwrap().success());
}

#[test]
fn a_publisher_standing_by_stops_cleanly_on_sigterm() {
    let remote = Remote::new();
    remote.commit(&[("a.py", "1\n")], "one");
    let scratch = Scratch::new();
    let first = spawn_loop(&scratch, &remote.url(), &["--period", "1h"]);
    first.wait_for_commit(&scratch.root(), &remote.head(), Duration::from_secs(30));
    let mut second = spawn_loop(&scratch, &remote.url(), &["--period", "1h"]);
    wait_until(Duration::from_secs(30), "the second stands by", || {
        second.logs().contains("standing by")
    });
    second.signal(Signal::SIGTERM);
    assert!(
        second.wait(Duration::from_secs(30)).success(),
        "{}",
        second.logs()
    );
}

#[test]
fn after_failures_the_loop_backs_off_exponentially_with_jitter_up_to_the_cap() {
    let scratch = Scratch::new();
    let missing = scratch.path("missing.git").display().to_string();
    let daemon = spawn_loop(
        &scratch,
        &missing,
        &[
            "--period",
            "100ms",
            "--backoff-max",
            "800ms",
            "--log-format",
            "json",
        ],
    );
    wait_until(Duration::from_secs(60), "eight failures", || {
        daemon.logs().matches("sync failed").count() >= 8
    });
    let log = daemon.logs();
    drop(daemon);
    // (when, consecutive failures, announced wait) from the loop's own log lines.
    let failures: Vec<(std::time::SystemTime, u64, Duration)> = log
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|event| {
            event["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("sync failed"))
        })
        .map(|event| {
            (
                humantime::parse_rfc3339_weak(event["timestamp"].as_str().unwrap()).unwrap(),
                event["consecutive_failures"].as_u64().unwrap(),
                humantime::parse_duration(event["retry_in"].as_str().unwrap()).unwrap(),
            )
        })
        .collect();
    assert!(failures.len() >= 8, "{failures:?}");
    let ms = Duration::from_millis;
    for (i, (_, n, wait)) in failures.iter().enumerate() {
        assert_eq!(*n, i as u64 + 1);
        // Doubling from the period, capped, half fixed and half random.
        let full = (ms(100) * 2u32.pow(i as u32)).min(ms(800));
        assert!(
            *wait + ms(1) >= full / 2 && *wait <= full + ms(1),
            "failure {n}: waits {wait:?}, expected {:?}..={full:?}",
            full / 2
        );
    }
    // The loop waits what it says before trying again (machines are only ever slower).
    for pair in failures.windows(2) {
        let gap = pair[1].0.duration_since(pair[0].0).unwrap();
        assert!(
            gap + ms(5) >= pair[0].2,
            "retried after {gap:?}, announced {:?}",
            pair[0].2
        );
    }
    let capped: std::collections::BTreeSet<Duration> =
        failures[4..].iter().map(|(_, _, wait)| *wait).collect();
    assert!(capped.len() > 1, "jitter: {capped:?}");
}
