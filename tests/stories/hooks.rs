//! What a publish announces: the exec hook run in each new snapshot, the webhook, the touch
//! file and the error file; none of them holds up publishing.

use std::fs;
use std::path::Path;
use std::time::Duration;

use crate::servers::WebhookReceiver;
use crate::sidecar::{metrics, sidecar};
use crate::support::*;

/// Stop a loop as Kubernetes does (SIGTERM), which also stops a hook that is running.
fn stop(mut daemon: Daemon) {
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(
        daemon.wait(Duration::from_secs(30)).success(),
        "{}",
        daemon.logs()
    );
}

/// A shell script for an exec hook, in the scratch directory.
fn hook_script(scratch: &Scratch, name: &str, body: &str) -> String {
    let path = scratch.path(name);
    fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path.to_str().unwrap().to_string()
}

fn lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn the_exec_hook_runs_in_each_new_snapshot_with_its_commit() {
    let remote = Remote::new();
    let first = remote.commit(&[("dags/a.py", "1\n")], "first");
    let scratch = Scratch::new();
    let record = scratch.path("hook.log");
    let hook = hook_script(
        &scratch,
        "hook.sh",
        &format!(
            "echo \"$DAGSNAP_COMMIT|$DAGSNAP_PREVIOUS|$GITSYNC_HASH|$DAGSNAP_REF|$DAGSNAP_SNAPSHOT|$(pwd -P)|$(cat dags/a.py)\" >> {}",
            record.display()
        ),
    );
    let (daemon, base) = sidecar(
        &scratch,
        &remote.url(),
        &["--period", "200ms", "--exechook-command", &hook],
    );
    daemon.wait_for_commit(&scratch.root(), &first, Duration::from_secs(30));
    wait_until(Duration::from_secs(20), "the first hook run", || {
        lines(&record).len() == 1
    });
    let second = remote.commit(&[("dags/a.py", "2\n")], "second");
    daemon.wait_for_commit(&scratch.root(), &second, Duration::from_secs(30));
    wait_until(Duration::from_secs(20), "the second hook run", || {
        lines(&record).len() == 2
    });

    let runs = lines(&record);
    for (line, (commit, previous, content)) in runs
        .iter()
        .zip([(&first, "", "1"), (&second, first.as_str(), "2")])
    {
        let fields: Vec<&str> = line.split('|').collect();
        let snapshot = fs::canonicalize(scratch.root().join(SNAPSHOTS).join(commit)).unwrap();
        assert_eq!(fields[0], commit.as_str(), "{line}");
        assert_eq!(fields[1], previous, "{line}");
        assert_eq!(fields[2], commit.as_str(), "GITSYNC_HASH: {line}");
        assert_eq!(fields[3], "refs/heads/main", "{line}");
        assert_eq!(fs::canonicalize(fields[4]).unwrap(), snapshot, "{line}");
        assert_eq!(
            Path::new(fields[5]),
            snapshot,
            "the hook's working directory: {line}"
        );
        assert_eq!(fields[6], content, "{line}");
    }
    let text = metrics(&base);
    assert_eq!(
        metric(
            &text,
            "dagsnap_hook_runs_total{hook=\"exec\",result=\"success\"}"
        ),
        2.0
    );
    assert!(
        daemon.logs().contains("hook succeeded"),
        "{}",
        daemon.logs()
    );
    stop(daemon);
}

#[test]
fn a_failing_hook_is_retried_until_it_succeeds() {
    let remote = Remote::new();
    let commit = remote.commit(&[("dags/a.py", "1\n")], "first");
    let scratch = Scratch::new();
    let count = scratch.path("count");
    let hook = hook_script(
        &scratch,
        "flaky.sh",
        &format!(
            "n=$(($(cat {count} 2>/dev/null || echo 0) + 1)); echo $n > {count}\n\
             [ $n -ge 3 ] || {{ echo \"attempt $n: database not ready\" >&2; exit 7; }}",
            count = count.display()
        ),
    );
    let (daemon, base) = sidecar(
        &scratch,
        &remote.url(),
        &[
            "--period",
            "200ms",
            "--exechook-command",
            &hook,
            "--exechook-backoff",
            "300ms",
        ],
    );
    daemon.wait_for_commit(&scratch.root(), &commit, Duration::from_secs(30));
    wait_until(Duration::from_secs(20), "the hook to succeed", || {
        metric(
            &metrics(&base),
            "dagsnap_hook_runs_total{hook=\"exec\",result=\"success\"}",
        ) == 1.0
    });
    let text = metrics(&base);
    assert_eq!(
        metric(
            &text,
            "dagsnap_hook_runs_total{hook=\"exec\",result=\"failure\"}"
        ),
        2.0
    );
    assert_eq!(fs::read_to_string(&count).unwrap().trim(), "3");
    let logs = daemon.logs();
    assert!(
        logs.contains("attempt 2: database not ready") && logs.contains("exit status: 7"),
        "the hook's output and status are logged:\n{logs}"
    );
    // The next run is the next publish's: nothing ran in between.
    let next = remote.commit(&[("dags/a.py", "2\n")], "second");
    daemon.wait_for_commit(&scratch.root(), &next, Duration::from_secs(30));
    wait_until(
        Duration::from_secs(20),
        "the hook to run for the next commit",
        || {
            metric(
                &metrics(&base),
                "dagsnap_hook_runs_total{hook=\"exec\",result=\"success\"}",
            ) == 2.0
        },
    );
    assert_eq!(
        fs::read_to_string(&count).unwrap().trim(),
        "4",
        "no run after success until the next publish"
    );
    stop(daemon);
}

#[test]
fn a_hanging_hook_is_killed_with_its_children_and_publishing_goes_on() {
    let remote = Remote::new();
    let first = remote.commit(&[("dags/a.py", "1\n")], "first");
    let scratch = Scratch::new();
    let pids = scratch.path("pids");
    let hook = hook_script(
        &scratch,
        "hang.sh",
        &format!("sleep 300 & echo $! >> {}\nwait", pids.display()),
    );
    let (daemon, base) = sidecar(
        &scratch,
        &remote.url(),
        &[
            "--period",
            "200ms",
            "--exechook-command",
            &hook,
            "--exechook-timeout",
            "2s",
            "--exechook-backoff",
            "1h",
        ],
    );
    daemon.wait_for_commit(&scratch.root(), &first, Duration::from_secs(30));
    wait_until(Duration::from_secs(10), "the hook to start", || {
        !lines(&pids).is_empty()
    });
    // The hook hangs; the loop publishes on regardless.
    let second = remote.commit(&[("dags/a.py", "2\n")], "second");
    daemon.wait_for_commit(&scratch.root(), &second, Duration::from_secs(5));

    wait_until(Duration::from_secs(20), "the hook's timeout", || {
        metric(
            &metrics(&base),
            "dagsnap_hook_runs_total{hook=\"exec\",result=\"timeout\"}",
        ) >= 1.0
    });
    let child: i32 = lines(&pids)[0].parse().unwrap();
    wait_until(
        Duration::from_secs(5),
        "the hook's child to be gone",
        || !process_alive(child),
    );
    assert!(
        daemon.logs().contains("killed after --exechook-timeout 2s"),
        "{}",
        daemon.logs()
    );
    // The newest publish replaced the one that timed out: the next run (after the backoff,
    // or at once when a newer commit arrives) is for the second commit.
    let third = remote.commit(&[("dags/a.py", "3\n")], "third");
    daemon.wait_for_commit(&scratch.root(), &third, Duration::from_secs(10));
    wait_until(
        Duration::from_secs(10),
        "a run for the newest commit",
        || lines(&pids).len() >= 2,
    );
    // That run hangs too; stopping the loop stops it, and what it started.
    stop(daemon);
    let child: i32 = lines(&pids)[1].parse().unwrap();
    wait_until(
        Duration::from_secs(5),
        "the running hook to be stopped with the loop",
        || !process_alive(child),
    );
}

/// Whether `pid` is a live process (not a zombie).
fn process_alive(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(')')
            .next()
            .is_some_and(|s| !s.trim_start().starts_with('Z'))
    })
}

#[test]
fn hooks_run_for_the_newest_commit_when_publishing_outpaces_them() {
    let remote = Remote::new();
    let first = remote.commit(&[("dags/a.py", "0\n")], "start");
    let scratch = Scratch::new();
    let record = scratch.path("hook.log");
    let hook = hook_script(
        &scratch,
        "slow.sh",
        &format!("sleep 2; echo $DAGSNAP_COMMIT >> {}", record.display()),
    );
    let (daemon, _base) = sidecar(
        &scratch,
        &remote.url(),
        &["--period", "100ms", "--exechook-command", &hook],
    );
    daemon.wait_for_commit(&scratch.root(), &first, Duration::from_secs(30));
    let mut commits = vec![first];
    for n in 1..=5 {
        let commit = remote.commit(&[("dags/a.py", &format!("{n}\n"))], &format!("change {n}"));
        daemon.wait_for_commit(&scratch.root(), &commit, Duration::from_secs(30));
        commits.push(commit);
    }
    let newest = commits.last().unwrap().clone();
    // The worker finished the newest commit's run: whatever it skipped, it skipped for good.
    daemon.wait_for_lines(&["hook succeeded", &newest], 1, Duration::from_secs(30));
    let runs = lines(&record);
    assert!(
        runs.len() < commits.len(),
        "6 publishes, {} runs: {runs:?}",
        runs.len()
    );
    assert_eq!(runs.last(), Some(&newest), "{runs:?}");
    let order: Vec<usize> = runs
        .iter()
        .map(|run| commits.iter().position(|c| c == run).unwrap())
        .collect();
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "runs out of order: {order:?}"
    );
    stop(daemon);
}

#[test]
fn the_webhook_announces_each_publish_and_a_dead_receiver_holds_up_nothing() {
    let receiver = WebhookReceiver::start(200);
    let remote = Remote::new();
    let first = remote.commit(&[("dags/a.py", "1\n")], "first");
    let scratch = Scratch::new();
    let (daemon, base) = sidecar(
        &scratch,
        &remote.url(),
        &["--period", "200ms", "--webhook-url", &receiver.url()],
    );
    daemon.wait_for_commit(&scratch.root(), &first, Duration::from_secs(30));
    let second = remote.commit(&[("dags/a.py", "2\n")], "second");
    daemon.wait_for_commit(&scratch.root(), &second, Duration::from_secs(30));
    wait_until(Duration::from_secs(10), "two deliveries", || {
        receiver.requests().len() == 2
    });
    let delivery = &receiver.requests()[1];
    assert_eq!(
        (delivery.method.as_str(), delivery.path.as_str()),
        ("POST", "/hook")
    );
    assert_eq!(delivery.header("gitsync-hash"), Some(second.as_str()));
    assert_eq!(delivery.header("content-type"), Some("application/json"));
    let body: serde_json::Value = serde_json::from_slice(&delivery.body).unwrap();
    assert_eq!(body["commit"], second.as_str());
    assert_eq!(body["previous"], first.as_str());
    assert_eq!(body["ref"], "refs/heads/main");
    assert!(body["snapshot"].as_str().unwrap().ends_with(&second));
    assert!(humantime::parse_rfc3339_weak(body["time"].as_str().unwrap()).is_ok());
    assert_eq!(
        metric(
            &metrics(&base),
            "dagsnap_hook_runs_total{hook=\"web\",result=\"success\"}"
        ),
        2.0
    );
    drop(daemon);

    // A receiver that accepts connections and never answers (a hung service behind a load
    // balancer), and then one that answers 500: the loop publishes on, and counts each.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!("http://{}/hook", silent.local_addr().unwrap());
    let (daemon, base) = sidecar(
        &scratch,
        &remote.url(),
        &[
            "--period",
            "200ms",
            "--webhook-url",
            &silent_url,
            "--webhook-timeout",
            "1s",
            "--webhook-backoff",
            "200ms",
        ],
    );
    let third = remote.commit(&[("dags/a.py", "3\n")], "third");
    daemon.wait_for_commit(&scratch.root(), &third, Duration::from_secs(30));
    let fourth = remote.commit(&[("dags/a.py", "4\n")], "fourth");
    daemon.wait_for_commit(&scratch.root(), &fourth, Duration::from_secs(5));
    wait_until(Duration::from_secs(20), "a timed-out delivery", || {
        metric(
            &metrics(&base),
            "dagsnap_hook_runs_total{hook=\"web\",result=\"timeout\"}",
        ) >= 1.0
    });
    drop(daemon);

    let failing = WebhookReceiver::start(500);
    let (daemon, base) = sidecar(
        &scratch,
        &remote.url(),
        &[
            "--period",
            "200ms",
            "--webhook-url",
            &failing.url(),
            "--webhook-backoff",
            "200ms",
        ],
    );
    let fifth = remote.commit(&[("dags/a.py", "5\n")], "fifth");
    daemon.wait_for_commit(&scratch.root(), &fifth, Duration::from_secs(30));
    wait_until(Duration::from_secs(20), "retried deliveries", || {
        failing.requests().len() >= 3
    });
    assert!(
        metric(
            &metrics(&base),
            "dagsnap_hook_runs_total{hook=\"web\",result=\"failure\"}"
        ) >= 3.0
    );
    assert!(
        daemon.logs().contains("answered 500, expected 200"),
        "{}",
        daemon.logs()
    );
}

#[test]
fn the_touch_file_marks_each_publish_and_the_error_file_holds_the_last_failure() {
    let remote = Remote::new();
    let first = remote.commit(&[("dags/a.py", "1\n")], "first");
    let scratch = Scratch::new();
    let touch = scratch.path("signals/synced");
    let error = scratch.path("signals/error.json");
    let daemon = spawn_loop(
        &scratch,
        &remote.url(),
        &[
            "--period",
            "200ms",
            "--backoff-max",
            "500ms",
            "--log-level",
            "dagsnap=debug",
            "--touch-file",
            touch.to_str().unwrap(),
            "--error-file",
            error.to_str().unwrap(),
        ],
    );
    daemon.wait_for_commit(&scratch.root(), &first, Duration::from_secs(30));
    wait_until(Duration::from_secs(10), "the touch file", || touch.exists());
    let touched = fs::metadata(&touch).unwrap().modified().unwrap();
    assert!(!error.exists());
    daemon.wait_for_lines(&["up to date", &first], 3, Duration::from_secs(30));
    assert_eq!(
        fs::metadata(&touch).unwrap().modified().unwrap(),
        touched,
        "unchanged polls do not touch it"
    );

    let hidden = remote.dir.with_extension("down");
    fs::rename(&remote.dir, &hidden).unwrap();
    wait_until(Duration::from_secs(20), "the error file", || error.exists());
    wait_until(Duration::from_secs(20), "two failures in a row", || {
        fs::read(&error)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .is_some_and(|j| j["consecutive_failures"].as_u64() >= Some(2))
    });
    let record: serde_json::Value = serde_json::from_slice(&fs::read(&error).unwrap()).unwrap();
    assert!(!record["error"].as_str().unwrap().is_empty(), "{record}");
    assert!(humantime::parse_rfc3339_weak(record["time"].as_str().unwrap()).is_ok());

    fs::rename(&hidden, &remote.dir).unwrap();
    wait_until(Duration::from_secs(20), "the error file to go", || {
        !error.exists()
    });
    let second = remote.commit(&[("dags/a.py", "2\n")], "second");
    daemon.wait_for_commit(&scratch.root(), &second, Duration::from_secs(30));
    wait_until(Duration::from_secs(10), "the touch file to move", || {
        fs::metadata(&touch).unwrap().modified().unwrap() > touched
    });
}
