//! The sidecar's surface for Kubernetes and for people: probes, metrics, sync on demand, and
//! `status` telling the truth about freshness (hooks and signal files: `hooks.rs`). Every
//! request is a real HTTP request to the running binary.

use std::fs;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::servers::free_port;
use crate::support::*;

/// A loop serving HTTP on 127.0.0.1, and the base URL of its server.
pub(crate) fn sidecar(scratch: &Scratch, repo: &str, extra: &[&str]) -> (Daemon, String) {
    let port = free_port();
    let bind = format!("127.0.0.1:{port}");
    let mut args = vec!["--http-bind", bind.as_str()];
    args.extend_from_slice(extra);
    let daemon = spawn_loop(scratch, repo, &args);
    let base = format!("http://{bind}");
    wait_until(Duration::from_secs(30), "the HTTP server", || {
        get(&base, "/healthz").0 != 0
    });
    (daemon, base)
}

fn get(base: &str, path: &str) -> (u16, String) {
    http("GET", &format!("{base}{path}"), &[], b"")
}

fn get_json(base: &str, path: &str) -> (u16, serde_json::Value) {
    let (status, body) = get(base, path);
    let json = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("{path} answered {status} with no JSON ({e}): {body}"));
    (status, json)
}

pub(crate) fn metrics(base: &str) -> String {
    let (status, body) = get(base, "/metrics");
    assert_eq!(status, 200, "{body}");
    body
}

/// `accepted` of a `POST /sync` answer.
fn accepted(body: &str) -> Option<bool> {
    serde_json::from_str::<serde_json::Value>(body).ok()?["accepted"].as_bool()
}

/// All cycles the loop finished, from its metrics.
fn cycles(base: &str) -> f64 {
    let text = metrics(base);
    [
        "published",
        "unchanged",
        "held",
        "superseded",
        "skipped",
        "failed",
    ]
    .iter()
    .map(|result| {
        metric(
            &text,
            &format!("dagsnap_syncs_total{{result=\"{result}\"}}"),
        )
    })
    .sum()
}

/// `promtool check metrics` on the text, when promtool is installed.
fn promtool_accepts(text: &str) {
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        return skip(
            "promtool",
            "it is not installed (apt-get install prometheus)",
        );
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A wrapper that delays every symlink system call of dagsnap by `delay`: the last step of a
/// publish (the new link) hangs as it would on a stalled NFS server, while the HTTP server's
/// threads run on. None when strace cannot trace here.
fn delayed_symlinks(delay: Duration) -> Option<Vec<String>> {
    if !strace_works() {
        return None;
    }
    Some(vec![
        "strace".into(),
        "-f".into(),
        "-qq".into(),
        "-o".into(),
        "/dev/null".into(),
        "-e".into(),
        "trace=symlink,symlinkat".into(),
        "-e".into(),
        format!("inject=symlink,symlinkat:delay_enter={}", delay.as_micros()),
    ])
}

/// A loop started through `wrapper`, with its HTTP server; killed with the wrapper when dropped.
fn wrapped_sidecar(
    scratch: &Scratch,
    wrapper: &[String],
    repo: &str,
    extra: &[&str],
) -> (Group, std::path::PathBuf, String) {
    let port = free_port();
    let log = scratch.path("wrapped.log");
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let group = Group::spawn(
        dagsnap_via(&wrapper, scratch.tmp.path())
            .args(["sync", "--repo", repo, "--root"])
            .arg(scratch.root())
            .arg("--cache-dir")
            .arg(scratch.cache())
            .args(["--http-bind", &format!("127.0.0.1:{port}")])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap()),
    );
    let base = format!("http://127.0.0.1:{port}");
    wait_until(Duration::from_secs(60), "the HTTP server", || {
        get(&base, "/healthz").0 != 0
    });
    (group, log, base)
}

#[test]
fn probes_and_metrics_describe_a_healthy_publisher() {
    let remote = Remote::new();
    let commit = remote.commit(&[("dags/a.py", "a\n"), ("dags/b.py", "bb\n")], "two dags");
    let scratch = Scratch::new();
    let (daemon, base) = sidecar(&scratch, &remote.url(), &["--period", "200ms"]);
    daemon.wait_for_commit(&scratch.root(), &commit, Duration::from_secs(30));
    wait_until(Duration::from_secs(10), "a few unchanged polls", || {
        metric(&metrics(&base), "dagsnap_syncs_total{result=\"unchanged\"}") >= 2.0
    });

    assert_eq!(get(&base, "/healthz"), (200, "ok\n".into()));
    for path in ["/readyz", "/"] {
        let (status, json) = get_json(&base, path);
        assert_eq!(status, 200, "{path}: {json}");
        assert_eq!(json["ready"], true);
        assert_eq!(json["live_commit"], commit.as_str());
        assert_eq!(json["consecutive_failures"], 0);
        assert!(json["last_success_age_seconds"].as_f64().unwrap() < 10.0);
        assert!(json.get("last_error").is_none(), "{json}");
    }

    let text = metrics(&base);
    promtool_accepts(&text);
    let expect = [
        ("dagsnap_syncs_total{result=\"published\"}", Some(1.0)),
        ("dagsnap_syncs_total{result=\"failed\"}", Some(0.0)),
        ("dagsnap_consecutive_failures", Some(0.0)),
        (
            &format!("dagsnap_live_commit_info{{commit=\"{commit}\"}}"),
            Some(1.0),
        ),
        ("dagsnap_last_build_files", Some(2.0)),
        ("dagsnap_last_build_bytes", Some(5.0)),
        ("dagsnap_retained_snapshots", Some(1.0)),
        ("dagsnap_pinned", Some(0.0)),
        // git-sync's meanings: the first sync counts as a success, unchanged polls as noops.
        ("git_sync_count_total{status=\"success\"}", Some(1.0)),
        ("git_sync_count_total{status=\"error\"}", Some(0.0)),
        ("git_sync_count_total{status=\"noop\"}", None),
        ("dagsnap_last_success_timestamp_seconds", None),
        (
            "git_sync_duration_seconds_count{status=\"success\"}",
            Some(1.0),
        ),
        ("dagsnap_cycle_phase_seconds_count{phase=\"fetch\"}", None),
        (
            "dagsnap_cycle_phase_seconds_count{phase=\"build\"}",
            Some(1.0),
        ),
        (
            "dagsnap_cycle_phase_seconds_count{phase=\"publish\"}",
            Some(1.0),
        ),
    ];
    for (series, value) in expect {
        assert!(
            text.lines().any(|l| l.starts_with(&format!("{series} "))),
            "{series} missing from:\n{text}"
        );
        if let Some(value) = value {
            assert_eq!(metric(&text, series), value, "{series} in:\n{text}");
        }
    }
    assert!(metric(&text, "git_sync_count_total{status=\"noop\"}") >= 2.0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((now - metric(&text, "dagsnap_last_success_timestamp_seconds")).abs() < 60.0);

    // What a probe or a curious operator might also send.
    assert_eq!(http("HEAD", &format!("{base}/healthz"), &[], b"").0, 200);
    assert_eq!(get(&base, "/nothing-here").0, 404);
    assert_eq!(get(&base, "/sync").0, 405);
    assert_eq!(http("DELETE", &format!("{base}/metrics"), &[], b"").0, 405);
}

#[test]
fn readiness_fails_past_ready_max_age_while_the_remote_is_down_and_liveness_holds() {
    let remote = Remote::new();
    let commit = remote.commit(&[("dags/a.py", "a\n")], "one dag");
    let scratch = Scratch::new();
    let (daemon, base) = sidecar(
        &scratch,
        &remote.url(),
        &[
            "--period",
            "300ms",
            "--backoff-max",
            "1s",
            "--ready-max-age",
            "3s",
        ],
    );
    daemon.wait_for_commit(&scratch.root(), &commit, Duration::from_secs(30));
    wait_until(Duration::from_secs(10), "ready", || {
        get(&base, "/readyz").0 == 200
    });

    let hidden = remote.dir.with_extension("down");
    fs::rename(&remote.dir, &hidden).unwrap();
    let start = Instant::now();
    wait_until(Duration::from_secs(30), "/readyz to fail", || {
        assert_eq!(
            get(&base, "/healthz").0,
            200,
            "an unreachable remote must never fail liveness"
        );
        get(&base, "/readyz").0 == 503
    });
    assert!(
        start.elapsed() >= Duration::from_secs(2),
        "readiness failed before --ready-max-age: {:?}",
        start.elapsed()
    );
    let (_, json) = get_json(&base, "/readyz");
    assert_eq!(json["ready"], false);
    assert_eq!(
        json["live_commit"],
        commit.as_str(),
        "readers are still served"
    );
    assert!(
        json["reason"].as_str().unwrap().contains("--ready-max-age"),
        "{json}"
    );
    assert!(
        json["consecutive_failures"].as_u64().unwrap() >= 1,
        "{json}"
    );
    assert!(
        json["last_error"].as_str().unwrap().contains("down")
            || json["last_error"].as_str().unwrap().contains("repository"),
        "{json}"
    );
    assert_eq!(get_json(&base, "/").0, 503, "/ answers like /readyz");
    let text = metrics(&base);
    assert!(metric(&text, "git_sync_count_total{status=\"error\"}") >= 1.0);
    assert!(metric(&text, "dagsnap_consecutive_failures") >= 1.0);
    // The link is untouched: readers never notice the outage.
    assert_eq!(published(&scratch.root()).as_deref(), Some(commit.as_str()));

    fs::rename(&hidden, &remote.dir).unwrap();
    wait_until(Duration::from_secs(30), "/readyz to recover", || {
        get(&base, "/readyz").0 == 200
    });
    assert_eq!(metric(&metrics(&base), "dagsnap_consecutive_failures"), 0.0);
}

#[test]
fn liveness_fails_when_a_cycle_is_wedged_in_a_system_call() {
    let Some(wrapper) = delayed_symlinks(Duration::from_secs(120)) else {
        return;
    };
    let remote = Remote::new();
    let first = remote.commit(&[("dags/a.py", "1\n")], "first");
    let scratch = Scratch::new();
    assert!(sync_once(&scratch, &remote.url(), &[]).status.success());

    let (_group, log, base) = wrapped_sidecar(
        &scratch,
        &wrapper,
        &remote.url(),
        &["--period", "500ms", "--sync-timeout", "2s"],
    );
    wait_until(Duration::from_secs(30), "ready", || {
        get(&base, "/readyz").0 == 200
    });
    assert_eq!(get(&base, "/healthz").0, 200);

    // The next publish hangs in its last step, like a stalled NFS server that never answers.
    remote.commit(&[("dags/a.py", "2\n")], "second");
    let start = Instant::now();
    wait_until(Duration::from_secs(40), "/healthz to fail", || {
        get(&base, "/healthz").0 == 503
    });
    let waited = start.elapsed();
    let (_, why) = get(&base, "/healthz");
    assert!(why.contains("wedged"), "{why}");
    // max(2 × period, --sync-timeout) + slack: 7 s after the cycle started, not before.
    assert!(
        waited >= Duration::from_secs(6),
        "liveness failed after {waited:?}, before its limit; log:\n{}",
        fs::read_to_string(&log).unwrap_or_default()
    );
    // Readers are still served the first commit, and readiness says so.
    assert_eq!(published(&scratch.root()).as_deref(), Some(first.as_str()));
    let (status, json) = get_json(&base, "/readyz");
    assert_eq!(
        (status, json["live_commit"].as_str()),
        (200, Some(first.as_str()))
    );
}

#[test]
fn a_flood_of_sync_requests_during_a_long_cycle_runs_exactly_one_more() {
    let Some(wrapper) = delayed_symlinks(Duration::from_secs(3)) else {
        return;
    };
    let remote = Remote::new();
    remote.commit(&[("dags/a.py", "1\n")], "first");
    let scratch = Scratch::new();
    assert!(sync_once(&scratch, &remote.url(), &[]).status.success());
    // Polls never come on their own: every cycle after the first is asked for.
    let (_group, log, base) = wrapped_sidecar(
        &scratch,
        &wrapper,
        &remote.url(),
        &["--period", "1h", "--log-level", "dagsnap=debug"],
    );
    wait_until(Duration::from_secs(30), "the first cycle", || {
        cycles(&base) == 1.0
    });

    let second = remote.commit(&[("dags/a.py", "2\n")], "second");
    let (status, body) = http("POST", &format!("{base}/sync"), &[], b"");
    assert_eq!(status, 202, "{body}");
    assert_eq!(accepted(&body), Some(true), "{body}");
    // 50 more while that cycle publishes (its link step takes 3 s), from 5 clients at once.
    let flood: Vec<_> = (0..5)
        .map(|_| {
            let url = format!("{base}/sync");
            std::thread::spawn(move || {
                (0..10)
                    .map(|_| http("POST", &url, &[], b"").0)
                    .collect::<Vec<u16>>()
            })
        })
        .collect();
    for client in flood {
        assert!(client.join().unwrap().iter().all(|s| *s == 202));
    }
    assert_eq!(cycles(&base), 1.0, "the flood ended before the cycle did");
    wait_until(Duration::from_secs(30), "the second commit", || {
        published(&scratch.root()).as_deref() == Some(second.as_str())
    });
    wait_until(Duration::from_secs(30), "one more cycle", || {
        cycles(&base) == 3.0
    });
    // The loop went back to waiting after its third cycle, with nothing left to run.
    wait_until(Duration::from_secs(30), "the loop to wait again", || {
        fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("waiting for the next poll")
            .count()
            >= 3
    });
    assert_eq!(cycles(&base), 3.0, "the flood must coalesce into one cycle");

    // ?wait=1 answers after the cycle it asked for, with what that cycle did.
    let third = remote.commit(&[("dags/a.py", "3\n")], "third");
    let (status, body) = http("POST", &format!("{base}/sync?wait=1"), &[], b"");
    assert_eq!(status, 200, "{body}");
    let done: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(done["outcome"], "published", "{done}");
    assert_eq!(done["commit"], third.as_str());
    assert_eq!(done["cycle"], 4);
    assert_eq!(published(&scratch.root()).as_deref(), Some(third.as_str()));
}

/// GitHub's `X-Hub-Signature-256` of `body` under `secret`, by openssl.
fn github_signature(secret: &str, body: &[u8]) -> String {
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-hmac", secret, "-hex"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("openssl (apt-get install openssl)");
    child.stdin.take().unwrap().write_all(body).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    format!("sha256={}", text.trim().rsplit(' ').next().unwrap())
}

/// What a `POST /sync` caller sends: (what it stands for, headers, body).
type Delivery<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a [u8]);

#[test]
fn sync_requests_must_prove_who_sent_them() {
    let remote = Remote::new();
    remote.commit(&[("dags/a.py", "1\n")], "first");
    let scratch = Scratch::new();
    let token = scratch.path("token");
    let secret = scratch.path("webhook-secret");
    fs::write(&token, "s3cret-token\n").unwrap();
    fs::write(&secret, "hook-key\n").unwrap();
    let (_daemon, base) = sidecar(
        &scratch,
        &remote.url(),
        &[
            "--period",
            "1h",
            "--trigger-token-file",
            token.to_str().unwrap(),
            "--webhook-secret-file",
            secret.to_str().unwrap(),
        ],
    );
    wait_until(Duration::from_secs(30), "the first cycle", || {
        cycles(&base) == 1.0
    });
    let url = format!("{base}/sync?wait=1");
    let cycle_of = |headers: &[(&str, &str)], body: &[u8]| -> u64 {
        let (status, answer) = http("POST", &url, headers, body);
        assert_eq!(status, 200, "{headers:?}: {answer}");
        serde_json::from_str::<serde_json::Value>(&answer).unwrap()["cycle"]
            .as_u64()
            .unwrap()
    };

    let push = br#"{"ref":"refs/heads/main","after":"0000"}"#;
    let other = br#"{"ref":"refs/heads/feature","after":"0000"}"#;
    let signed = github_signature("hook-key", push);
    let signed_other = github_signature("hook-key", other);
    let forged = github_signature("another-key", push);

    let first = cycle_of(&[("Authorization", "Bearer s3cret-token")], b"");
    assert_eq!(first, 2);

    // Every one of these is refused and runs nothing.
    let refused: [Delivery; 8] = [
        ("no credentials", vec![], b""),
        (
            "a wrong token",
            vec![("Authorization", "Bearer s3cret-tokeN")],
            b"",
        ),
        (
            "a token prefix",
            vec![("Authorization", "Bearer s3cret")],
            b"",
        ),
        (
            "the token without Bearer",
            vec![("Authorization", "s3cret-token")],
            b"",
        ),
        (
            "a GitHub push without a signature",
            vec![("X-GitHub-Event", "push")],
            push,
        ),
        (
            "a GitHub push signed with another key",
            vec![("X-GitHub-Event", "push"), ("X-Hub-Signature-256", &forged)],
            push,
        ),
        (
            "a GitHub signature of another body",
            vec![("X-GitHub-Event", "push"), ("X-Hub-Signature-256", &signed)],
            other,
        ),
        (
            "a wrong GitLab token",
            vec![
                ("X-Gitlab-Event", "Push Hook"),
                ("X-Gitlab-Token", "hook-kez"),
            ],
            push,
        ),
    ];
    for (what, headers, body) in &refused {
        let (status, answer) = http("POST", &url, headers, body);
        assert_eq!(status, 401, "{what}: {answer}");
        assert!(
            answer.contains("authentication required"),
            "{what}: {answer}"
        );
    }
    let (status, _) = http(
        "POST",
        &url,
        &[("Authorization", "Bearer s3cret-token")],
        &vec![b'x'; 2 << 20],
    );
    assert_eq!(status, 413, "a body over 1 MiB");

    // Signed deliveries that are not a push to the followed branch are acknowledged, not run.
    for (what, headers, body) in [
        (
            "a push to another branch",
            vec![
                ("X-GitHub-Event", "push"),
                ("X-Hub-Signature-256", signed_other.as_str()),
            ],
            &other[..],
        ),
        (
            "GitHub's ping",
            vec![
                ("X-GitHub-Event", "ping"),
                (
                    "X-Hub-Signature-256",
                    github_signature("hook-key", b"{}").leak(),
                ),
            ],
            b"{}",
        ),
        (
            "a GitLab push to another branch",
            vec![
                ("X-Gitlab-Event", "Push Hook"),
                ("X-Gitlab-Token", "hook-key"),
            ],
            other,
        ),
    ] {
        let (status, answer) = http("POST", &url, &headers, body);
        assert_eq!(status, 202, "{what}: {answer}");
        assert_eq!(accepted(&answer), Some(false), "{what}: {answer}");
        assert!(answer.contains("ignored"), "{what}: {answer}");
    }

    // Nothing above ran a cycle: the next accepted request runs the very next one.
    let github = cycle_of(
        &[("X-GitHub-Event", "push"), ("X-Hub-Signature-256", &signed)],
        push,
    );
    assert_eq!(
        github,
        first + 1,
        "a refused or ignored request ran a cycle"
    );
    let gitlab = cycle_of(
        &[
            ("X-Gitlab-Event", "Push Hook"),
            ("X-Gitlab-Token", "hook-key"),
        ],
        push,
    );
    assert_eq!(gitlab, github + 1);

    // A rotated secret takes effect at once, without a restart.
    fs::write(&token, "rotated\n").unwrap();
    assert_eq!(
        http(
            "POST",
            &url,
            &[("Authorization", "Bearer s3cret-token")],
            b""
        )
        .0,
        401
    );
    assert_eq!(
        cycle_of(&[("Authorization", "Bearer rotated")], b""),
        gitlab + 1
    );
}

fn status_json(scratch: &Scratch, extra: &[&str]) -> (Option<i32>, serde_json::Value) {
    let out = dagsnap(scratch.tmp.path())
        .args(["status", "--json", "--root"])
        .arg(scratch.root())
        .args(extra)
        .output()
        .unwrap();
    let json = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("status --json: {e}: {}", stderr(&out)));
    (out.status.code(), json)
}

#[test]
fn status_lists_every_publisher_and_fails_when_the_dags_are_stale() {
    let remote = Remote::new();
    let commit = remote.commit(&[("dags/a.py", "1\n")], "first");
    let scratch = Scratch::new();
    let mut daemon = spawn_loop(&scratch, &remote.url(), &["--period", "200ms"]);
    daemon.wait_for_commit(&scratch.root(), &commit, Duration::from_secs(30));
    let pid = daemon.child.id();
    // The record says so once the cycle that moved the link has ended.
    wait_until(
        Duration::from_secs(10),
        "the publisher record of the success",
        || status_json(&scratch, &[]).1["publishers"][0]["last_success_at"].is_string(),
    );

    let (code, json) = status_json(&scratch, &["--max-age", "5m"]);
    assert_eq!(code, Some(0), "{json}");
    let publishers = json["publishers"].as_array().unwrap();
    assert_eq!(publishers.len(), 1, "{json}");
    let me = &publishers[0];
    assert_eq!(me["pid"], pid);
    assert_eq!(me["running"], true);
    assert_eq!(me["consecutive_failures"], 0);
    assert_eq!(me["ref"], "HEAD");
    for field in ["host", "started_at", "last_cycle_at", "last_success_at"] {
        assert!(me[field].is_string(), "{field}: {me}");
    }

    // A failing publisher says so at once, with its error.
    let hidden = remote.dir.with_extension("down");
    fs::rename(&remote.dir, &hidden).unwrap();
    wait_until(Duration::from_secs(20), "the failure in status", || {
        status_json(&scratch, &[]).1["publishers"][0]["consecutive_failures"]
            .as_u64()
            .is_some_and(|n| n >= 1)
    });
    let (_, json) = status_json(&scratch, &[]);
    assert!(json["publishers"][0]["last_error"].is_string(), "{json}");
    let text = dagsnap(scratch.tmp.path())
        .args(["status", "--root"])
        .arg(scratch.root())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(text.contains(&format!("pid {pid} (running)")), "{text}");
    assert!(text.contains("in a row"), "{text}");
    fs::rename(&hidden, &remote.dir).unwrap();

    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(daemon.wait(Duration::from_secs(30)).success());
    std::thread::sleep(Duration::from_millis(2100));
    let (code, json) = status_json(&scratch, &["--max-age", "1s"]);
    assert_eq!(code, Some(1), "nothing confirmed the DAGs for 2 s: {json}");
    assert_eq!(json["publishers"][0]["running"], false, "{json}");
    let out = dagsnap(scratch.tmp.path())
        .args(["status", "--max-age", "1s", "--root"])
        .arg(scratch.root())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("STALE"), "{text}");
    assert!(text.contains(&format!("pid {pid} (stopped)")), "{text}");
}

#[test]
fn bad_sidecar_settings_fail_at_start_with_one_line_and_leave_the_dags_alone() {
    let remote = Remote::new();
    let commit = remote.commit(&[("dags/a.py", "1\n")], "first");
    let scratch = Scratch::new();
    assert!(sync_once(&scratch, &remote.url(), &[]).status.success());
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let empty = scratch.path("empty-secret");
    fs::write(&empty, "\n").unwrap();
    let missing = scratch.path("no-such-secret");
    let cases: [(&[&str], &str); 9] = [
        (&["--http-bind", &taken], "already in use"),
        (&["--http-bind", "localhost:http"], "--http-bind"),
        (&["--http-bind", ":99999"], "--http-bind"),
        (&["--trigger-token-file", "/etc/hostname"], "--http-bind"),
        (
            &[
                "--http-bind",
                "127.0.0.1:0",
                "--trigger-token-file",
                missing.to_str().unwrap(),
            ],
            "cannot read --trigger-token-file",
        ),
        (
            &[
                "--http-bind",
                "127.0.0.1:0",
                "--webhook-secret-file",
                empty.to_str().unwrap(),
            ],
            "is empty",
        ),
        (&["--webhook-url", "hooks.example.com/x"], "--webhook-url"),
        (
            &[
                "--webhook-url",
                "http://127.0.0.1/x",
                "--webhook-method",
                "post",
            ],
            "upper-case",
        ),
        (
            &[
                "--webhook-url",
                "http://127.0.0.1/x",
                "--webhook-success-status",
                "42",
            ],
            "100-599",
        ),
    ];
    for (args, needle) in cases {
        let out = sync_once(&scratch, &remote.url(), args);
        let line = assert_one_clear_line(&out, 2, needle);
        assert!(!line.contains("panicked"), "{args:?}: {line}");
        assert_eq!(published(&scratch.root()).as_deref(), Some(commit.as_str()));
    }
}
