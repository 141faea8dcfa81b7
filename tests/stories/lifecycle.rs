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
    remote.commit(&[("a.py", "a\n")], "one");
    let scratch = Scratch::new();
    let mut daemon = spawn_loop(&scratch, &remote.url(), &["--period", "1h"]);
    wait_until(Duration::from_secs(30), "first publish", || {
        published(&scratch.root()).is_some()
    });
    daemon.signal(Signal::SIGINT);
    assert!(daemon.wait(Duration::from_secs(10)).success());
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
