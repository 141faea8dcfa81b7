//! Versions on demand, without Airflow running: a reader asks a running publisher for a commit
//! the root does not hold (`POST /versions/<commit>`), directly and through the Airflow bundle's
//! Python (`DagsnapBundle` initialized with that version, as a worker's task does), and is told
//! why when it cannot have it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::servers::free_port;
use crate::support::*;

const TOKEN: &str = "a-token-for-versions";

/// A loop that keeps nothing it does not have to (`--keep 0 --grace 0s`), answering HTTP with a
/// bearer token; the commits `0`, `1` and `2` of `a.py` pushed one after the other, the last one
/// live. Returns the loop, its base URL, the token file and the commits.
fn forgetful_publisher(
    scratch: &Scratch,
    remote: &Remote,
) -> (Daemon, String, PathBuf, Vec<String>) {
    let token = scratch.path("token");
    fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let port = free_port();
    let first = remote.commit(&[("a.py", "0\n")], "v 0");
    let daemon = spawn_loop(
        scratch,
        &remote.url(),
        &[
            "--period",
            "200ms",
            "--keep",
            "0",
            "--grace",
            "0s",
            "--http-bind",
            &format!("127.0.0.1:{port}"),
            "--trigger-token-file",
            token.to_str().unwrap(),
        ],
    );
    let root = scratch.root();
    daemon.wait_for_commit(&root, &first, Duration::from_secs(60));
    let mut commits = vec![first];
    for i in 1..3 {
        let commit = remote.commit(&[("a.py", &format!("{i}\n"))], &format!("v {i}"));
        daemon.wait_for_commit(&root, &commit, Duration::from_secs(60));
        commits.push(commit);
    }
    wait_until(
        Duration::from_secs(30),
        "GC to collect the first commit",
        || !root.join(SNAPSHOTS).join(&commits[0]).exists(),
    );
    (daemon, format!("http://127.0.0.1:{port}"), token, commits)
}

fn ask(
    base: &str,
    commit: &str,
    query: &str,
    token: Option<&str>,
) -> (u16, serde_json::Value, String) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    let (status, body) = http(
        "POST",
        &format!("{base}/versions/{commit}{query}"),
        &headers,
        b"",
    );
    let json = serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
    (status, json, body)
}

fn leases_of(root: &Path, commit: &str) -> Vec<String> {
    fs::read_dir(root.join(".dagsnap/leases"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(commit))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_version_retention_removed_is_built_on_request_and_leased_while_the_link_stays() {
    let remote = Remote::new();
    let scratch = Scratch::new();
    let (daemon, base, _, commits) = forgetful_publisher(&scratch, &remote);
    let root = scratch.root();

    let (status, answer, body) = ask(&base, &commits[0], "?lease=120", Some(TOKEN));
    assert_eq!(status, 200, "{body}");
    assert_eq!(answer["status"], "ready");
    assert_eq!(answer["built"], true);
    let snapshot = root.join(SNAPSHOTS).join(&commits[0]);
    assert_eq!(fs::read_to_string(snapshot.join("a.py")).unwrap(), "0\n");
    assert_eq!(
        published(&root).as_deref(),
        Some(commits[2].as_str()),
        "the link stays"
    );
    let leases = leases_of(&root, &commits[0]);
    assert!(
        leases.iter().any(|l| l.contains(".dagsnap-")),
        "the publisher leased it: {leases:?}"
    );
    let leased_until = answer["leased_until"].as_u64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        (now + 100..=now + 130).contains(&leased_until),
        "{leased_until} vs {now}"
    );

    // Asked again: it is there; nothing is built.
    let (status, answer, body) = ask(&base, &commits[0], "", Some(TOKEN));
    assert_eq!(
        (status, answer["built"].clone()),
        (200, serde_json::json!(false)),
        "{body}"
    );
    let (_, metrics) = http("GET", &format!("{base}/metrics"), &[], b"");
    for result in ["built", "present"] {
        let series = format!("dagsnap_versions_total{{result=\"{result}\"}}");
        assert_eq!(metric(&metrics, &series), 1.0, "{series} in:\n{metrics}");
    }

    // A new commit goes live and GC runs: the leased version stays, and the snapshot verifies.
    let next = remote.commit(&[("a.py", "3\n")], "v 3");
    daemon.wait_for_commit(&root, &next, Duration::from_secs(60));
    wait_until(
        Duration::from_secs(30),
        "GC to collect the replaced commit",
        || !root.join(SNAPSHOTS).join(&commits[2]).exists(),
    );
    assert!(snapshot.is_dir(), "a leased version outlives GC");
    let out = on_root(&scratch, &["verify", &commits[0]]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(
        daemon.log_lines(&["materialized a version a reader asked for", &commits[0]]) >= 1,
        "{}",
        daemon.logs()
    );
    assert_root_valid(&root);
}

#[test]
fn asking_for_a_version_needs_the_publisher_s_token_and_a_commit_id() {
    let remote = Remote::new();
    let scratch = Scratch::new();
    let (_daemon, base, _, commits) = forgetful_publisher(&scratch, &remote);
    for token in [None, Some("wrong")] {
        let (status, _, body) = ask(&base, &commits[0], "", token);
        assert_eq!(status, 401, "{body}");
        assert!(body.contains("--trigger-token-file"), "{body}");
    }
    let (status, _, body) = ask(&base, "main", "", Some(TOKEN));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("not a full commit id"), "{body}");
    let (status, _, body) = ask(&base, &commits[0], "?lease=soon", Some(TOKEN));
    assert_eq!(status, 400, "{body}");
    assert!(
        !scratch.root().join(SNAPSHOTS).join(&commits[0]).exists(),
        "nothing was built for a refused request"
    );
}

#[test]
fn a_commit_the_remote_does_not_have_is_a_404_that_says_so_and_nothing_is_built() {
    let remote = Remote::new();
    let scratch = Scratch::new();
    let (_daemon, base, _, _) = forgetful_publisher(&scratch, &remote);
    let missing = "ab".repeat(20);
    let (status, answer, body) = ask(&base, &missing, "", Some(TOKEN));
    assert_eq!(status, 404, "{body}");
    assert_eq!(answer["status"], "not_in_remote");
    let reason = answer["reason"].as_str().unwrap();
    assert!(
        reason.contains(&missing) && reason.contains("no commit by that id"),
        "{reason}"
    );
    assert!(!scratch.root().join(SNAPSHOTS).join(&missing).exists());
}

#[test]
fn a_caller_that_stops_waiting_finds_the_version_ready_when_it_asks_again() {
    let remote = Remote::new();
    let scratch = Scratch::new();
    let (_daemon, base, _, commits) = forgetful_publisher(&scratch, &remote);
    let (status, _, body) = ask(&base, &commits[1], "?wait=0", Some(TOKEN));
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("ask again"), "{body}");
    wait_until(Duration::from_secs(60), "the version to be built", || {
        scratch.root().join(SNAPSHOTS).join(&commits[1]).is_dir()
    });
    let (status, answer, body) = ask(&base, &commits[1], "", Some(TOKEN));
    assert_eq!(
        (status, answer["built"].clone()),
        (200, serde_json::json!(false)),
        "{body}"
    );
}

/// The Airflow bundle's Python, as a worker's task initializes it with `version`: what it read,
/// or the SnapshotGone it raised. None when Airflow 3's environment is not installed.
fn task_bundle(root: &Path, version: &str, kwargs: &str) -> Option<serde_json::Value> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools/airflow3");
    if !venv.join("bin/python").exists() {
        skip(
            &format!("Airflow 3 in {}", venv.display()),
            "it is not installed (scripts/test installs it from PyPI)",
        );
        return None;
    }
    let script = r#"
import json, sys, time
from dagsnap_airflow import DagsnapBundle, SnapshotGone
root, version, kwargs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
started = time.monotonic()
try:
    bundle = DagsnapBundle(name="dags", root=root, version=version, **kwargs)
    bundle.initialize()
    out = {"path": str(bundle.path), "a": (bundle.path / "a.py").read_text()}
except SnapshotGone as e:
    out = {"gone": str(e)}
out["seconds"] = time.monotonic() - started
print(json.dumps(out))
"#;
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(venv.join("bin/python"))
        .args(["-c", script])
        .arg(root)
        .arg(version)
        .arg(kwargs)
        .env("AIRFLOW_HOME", home.path())
        .env_remove("DAGSNAP_TRIGGER_TOKEN_FILE")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

#[test]
fn a_task_s_bundle_gets_a_collected_version_from_the_publisher_and_leases_it() {
    let remote = Remote::new();
    let scratch = Scratch::new();
    let (_daemon, _, token, commits) = forgetful_publisher(&scratch, &remote);
    let root = scratch.root();
    let kwargs = serde_json::json!({"token_file": token, "lease_seconds": 90}).to_string();
    let Some(seen) = task_bundle(&root, &commits[0], &kwargs) else {
        return;
    };
    assert_eq!(seen["a"], "0\n", "{seen}");
    assert_eq!(
        seen["path"].as_str().unwrap(),
        root.join(SNAPSHOTS).join(&commits[0]).to_str().unwrap()
    );
    let leases = leases_of(&root, &commits[0]);
    assert!(
        leases.iter().any(|l| !l.contains(".dagsnap-")),
        "the task leased it too: {leases:?}"
    );
    assert_eq!(published(&root).as_deref(), Some(commits[2].as_str()));
}

#[test]
fn a_task_s_bundle_that_cannot_get_its_version_says_why() {
    let remote = Remote::new();
    let scratch = Scratch::new();
    let (mut daemon, _, token, commits) = forgetful_publisher(&scratch, &remote);
    let root = scratch.root();
    let with_token = serde_json::json!({"token_file": token}).to_string();

    // Not in the remote.
    let Some(seen) = task_bundle(&root, &"cd".repeat(20), &with_token) else {
        return;
    };
    let gone = seen["gone"].as_str().unwrap_or_default();
    assert!(gone.contains("is not in the repository"), "{seen}");
    // Without the publisher's token.
    let seen = task_bundle(&root, &commits[0], "{}").unwrap();
    let gone = seen["gone"].as_str().unwrap_or_default();
    assert!(
        gone.contains("token_file") && gone.contains("401"),
        "{seen}"
    );
    // A publisher that does not answer (stopped): bounded by materialize_timeout.
    daemon.signal(Signal::SIGSTOP);
    let short = serde_json::json!({"token_file": token, "materialize_timeout": 2}).to_string();
    let seen = task_bundle(&root, &commits[0], &short).unwrap();
    daemon.signal(Signal::SIGCONT);
    let gone = seen["gone"].as_str().unwrap_or_default();
    assert!(gone.contains("within 2 s"), "{seen}");
    assert!(seen["seconds"].as_f64().unwrap() < 20.0, "{seen}");
    // No publisher runs any more (killed: its record stays, with where it answered).
    daemon.signal(Signal::SIGKILL);
    let _ = daemon.wait(Duration::from_secs(30));
    let seen = task_bundle(&root, &commits[0], &with_token).unwrap();
    let gone = seen["gone"].as_str().unwrap_or_default();
    assert!(
        gone.contains("not reachable") && gone.contains("--keep") && gone.contains("--grace"),
        "{seen}"
    );
    // A root whose publishers never announced where they answer.
    let plain = Scratch::new();
    let lost = publish_versions(&remote, &plain, 1, "plain");
    let seen = task_bundle(&plain.root(), &commits[0], "{}").unwrap();
    let gone = seen["gone"].as_str().unwrap_or_default();
    assert!(gone.contains("--http-bind"), "{seen} ({lost:?})");
}
