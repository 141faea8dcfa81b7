//! Real remotes with authentication: HTTPS with basic auth and a private CA, SSH with deploy
//! keys and host keys, stalled servers, and errors that say what to do. Every secret is
//! searched for in everything dagsnap wrote and in the process table.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::servers::{Door, HttpServer, SilentServer, SshServer};
use crate::support::*;

const USER: &str = "ci-bot";
const TOKEN: &str = "glpat-Sup3rS3cretT0ken";
const ROTATED: &str = "glpat-R0tatedS3cretT0ken";

fn write_secret(path: &Path, secret: &str) {
    fs::write(path, format!("{secret}\n")).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
}

/// Everything under `root` (records, journal) plus the given logs must not contain `secret`.
fn assert_secret_absent(secret: &str, logs: &[String], root: &Path) {
    for (i, log) in logs.iter().enumerate() {
        assert!(!log.contains(secret), "log {i} leaks the secret:\n{log}");
    }
    for entry in walkdir::WalkDir::new(root.join(".dagsnap"))
        .into_iter()
        .filter_map(Result::ok)
    {
        if entry.file_type().is_file() && !entry.path().starts_with(root.join(SNAPSHOTS)) {
            let text = String::from_utf8_lossy(&fs::read(entry.path()).unwrap()).into_owned();
            assert!(
                !text.contains(secret),
                "{} leaks the secret",
                entry.path().display()
            );
        }
    }
}

/// The command lines of every process on the machine.
fn process_table() -> String {
    String::from_utf8_lossy(
        &Command::new("ps")
            .args(["-eo", "args"])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned()
}

#[test]
fn https_with_basic_auth_and_a_private_ca_follows_a_rotated_token() {
    let remote = Remote::new();
    let first = remote.commit(&[("dags/a.py", "one\n")], "one");
    let server = HttpServer::start_with(true, USER, TOKEN);
    server.serve(&remote.dir, "dags.git");
    let url = server.url(Door::Private, "dags.git");
    let scratch = Scratch::new();
    let password = scratch.path("token");
    write_secret(&password, TOKEN);
    let ca = server.ca_file.display().to_string();
    let pw = password.display().to_string();
    let flags = ["--username", USER, "--password-file", &pw, "--ca-file", &ca];

    let mut daemon = spawn_loop(
        &scratch,
        &url,
        &[&flags[..], &["--period", "50ms", "--backoff-max", "200ms"]].concat(),
    );
    daemon.wait_for_commit(&scratch.root(), &first, Duration::from_secs(30));
    let table_while_running = process_table();

    // The token is rotated: the server takes only the new one, the secret file is updated.
    server.set_password(USER, ROTATED);
    write_secret(&password, ROTATED);
    let second = remote.commit(&[("dags/a.py", "two\n")], "two");
    server.update(&remote.dir, "dags.git");
    daemon.wait_for_commit(&scratch.root(), &second, Duration::from_secs(30));
    daemon.stop();

    for secret in [TOKEN, ROTATED] {
        assert_secret_absent(secret, &[daemon.logs()], &scratch.root());
        assert!(
            !table_while_running.contains(secret),
            "the process table shows the secret"
        );
    }
}

#[test]
fn a_certificate_from_a_rotated_ca_is_trusted_once_the_ca_file_says_so() {
    let remote = Remote::new();
    let first = remote.commit(&[("dags/a.py", "one\n")], "one");
    let server = HttpServer::start_with(true, USER, TOKEN);
    let url = server.serve(&remote.dir, "dags.git");
    let scratch = Scratch::new();
    // The operator's CA bundle, mounted from a secret: replaced whole when it changes.
    let bundle = scratch.path("ca.pem");
    let install_bundle = || {
        let next = scratch.path("ca.pem.new");
        std::fs::copy(&server.ca_file, &next).unwrap();
        std::fs::rename(&next, &bundle).unwrap();
    };
    install_bundle();
    let ca = bundle.display().to_string();
    let mut daemon = spawn_loop(
        &scratch,
        &url,
        &[
            "--ca-file",
            &ca,
            "--period",
            "50ms",
            "--backoff-max",
            "200ms",
        ],
    );
    daemon.wait_for_commit(&scratch.root(), &first, Duration::from_secs(30));

    // The server's certificate now comes from a new CA the bundle does not hold yet.
    server.rotate_certificate();
    let second = remote.commit(&[("dags/a.py", "two\n")], "two");
    server.update(&remote.dir, "dags.git");
    wait_until(Duration::from_secs(30), "a poll refused by TLS", || {
        daemon.logs().contains("sync failed")
    });
    assert_eq!(
        published(&scratch.root()).as_deref(),
        Some(first.as_str()),
        "{}",
        daemon.logs()
    );
    // The bundle catches up: the loop follows without a restart.
    install_bundle();
    daemon.wait_for_commit(&scratch.root(), &second, Duration::from_secs(30));
    daemon.stop();
}

#[test]
fn anonymous_read_over_https_needs_no_credentials() {
    let remote = Remote::new();
    let commit = remote.commit(&[("a.py", "a\n")], "one");
    let server = HttpServer::start_with(true, USER, TOKEN);
    let url = server.serve(&remote.dir, "dags.git");
    let scratch = Scratch::new();
    let out = sync_once(
        &scratch,
        &url,
        &["--ca-file", &server.ca_file.display().to_string()],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(assert_root_valid(&scratch.root()), commit);
}

#[test]
fn credentials_in_the_url_are_moved_out_of_it_and_never_printed() {
    let remote = Remote::new();
    let commit = remote.commit(&[("a.py", "a\n")], "one");
    let server = HttpServer::start_with(true, USER, TOKEN);
    server.serve(&remote.dir, "dags.git");
    let url = server
        .url(Door::Private, "dags.git")
        .replace("https://", &format!("https://{USER}:{TOKEN}@"));
    let scratch = Scratch::new();
    let out = sync_once(
        &scratch,
        &url,
        &["--ca-file", &server.ca_file.display().to_string()],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(assert_root_valid(&scratch.root()), commit);
    let status = dagsnap(scratch.tmp.path())
        .args(["status", "--json", "--root"])
        .arg(scratch.root())
        .output()
        .unwrap();
    let status_text = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(status_text.contains("/private/dags.git"), "{status_text}");
    assert_secret_absent(TOKEN, &[stderr(&out), status_text], &scratch.root());

    // A wrong token in the URL fails with the authentication message, still without printing it.
    let wrong = url.replace(TOKEN, "glpat-Wr0ngT0kenValue");
    let out = sync_once_with(
        &Scratch::new(),
        &scratch.path("c2"),
        &wrong,
        &["--ca-file", &server.ca_file.display().to_string()],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("authentication failed (HTTP 401)"),
        "{}",
        stderr(&out)
    );
    assert!(
        !stderr(&out).contains("glpat-Wr0ngT0kenValue"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn credentials_over_plain_http_need_an_explicit_opt_in() {
    let remote = Remote::new();
    let commit = remote.commit(&[("a.py", "a\n")], "one");
    let server = HttpServer::start_with(false, USER, TOKEN);
    server.serve(&remote.dir, "dags.git");
    let url = server.url(Door::Private, "dags.git");
    let scratch = Scratch::new();
    let password = scratch.path("token");
    write_secret(&password, TOKEN);
    let pw = password.display().to_string();

    let out = sync_once(
        &scratch,
        &url,
        &["--username", USER, "--password-file", &pw],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("refusing to send credentials over plain http"),
        "{}",
        stderr(&out)
    );
    assert!(!scratch.root().exists(), "nothing was done");

    let out = sync_once(
        &scratch,
        &url,
        &[
            "--username",
            USER,
            "--password-file",
            &pw,
            "--allow-insecure-http-credentials",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(published(&scratch.root()), Some(commit));
}

#[test]
fn the_password_can_come_from_the_environment() {
    let remote = Remote::new();
    let commit = remote.commit(&[("a.py", "a\n")], "one");
    let server = HttpServer::start_with(true, USER, TOKEN);
    server.serve(&remote.dir, "dags.git");
    let scratch = Scratch::new();
    let out = sync_once_command(
        &scratch,
        &scratch.cache(),
        &server.url(Door::Private, "dags.git"),
        &["--ca-file", &server.ca_file.display().to_string()],
    )
    .env("DAGSNAP_USERNAME", USER)
    .env("DAGSNAP_PASSWORD", TOKEN)
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(published(&scratch.root()), Some(commit));
    assert_secret_absent(TOKEN, &[stderr(&out)], &scratch.root());
}

#[test]
fn each_http_failure_says_what_to_fix() {
    let remote = Remote::new();
    remote.commit(&[("a.py", "a\n")], "one");
    let server = HttpServer::start_with(true, USER, TOKEN);
    server.serve(&remote.dir, "dags.git");
    let scratch = Scratch::new();
    let wrong = scratch.path("wrong");
    write_secret(&wrong, "not-the-token");
    let (ca, wrong) = (
        server.ca_file.display().to_string(),
        wrong.display().to_string(),
    );
    let cases: Vec<(&str, String, Vec<&str>, &str)> = vec![
        ("wrong password", server.url(Door::Private, "dags.git"), vec!["--username", USER, "--password-file", &wrong, "--ca-file", &ca], "authentication failed (HTTP 401)"),
        ("forbidden", server.url(Door::Forbidden, "dags.git"), vec!["--ca-file", &ca], "access denied (HTTP 403)"),
        ("untrusted CA", server.url(Door::Public, "dags.git"), vec![], "TLS certificate is not trusted; if the server uses its own CA, pass the CA certificate with --ca-file"),
        ("refused", "https://127.0.0.1:1/dags.git".to_string(), vec![], "the connection was refused"),
        ("missing password file", server.url(Door::Private, "dags.git"), vec!["--username", USER, "--password-file", "/nonexistent/token", "--ca-file", &ca], "cannot read the password file /nonexistent/token"),
    ];
    let mut seen = Vec::new();
    for (name, url, extra, expected) in cases {
        let out = sync_once_with(&Scratch::new(), &scratch.path(name), &url, &extra);
        // A secret missing at start-up is a configuration error (2); the rest fail the sync (1).
        let code = if name == "missing password file" {
            2
        } else {
            1
        };
        let line = assert_one_clear_line(&out, code, expected);
        assert!(
            line.contains("127.0.0.1") || name == "missing password file",
            "{name}: names the repo: {line}"
        );
        seen.push(line);
    }
    seen.dedup();
    assert_eq!(seen.len(), 5, "each failure has its own message");
}

#[test]
fn a_host_name_that_does_not_resolve_says_so() {
    // Resolve inside a network namespace with only loopback, so no DNS query leaves the machine.
    let probe = Command::new("unshare").args(["-n", "true"]).status();
    if !probe.map(|s| s.success()).unwrap_or(false) {
        skip("a network namespace", "unshare -n failed");
        return;
    }
    let scratch = Scratch::new();
    let out = dagsnap_via(&["unshare", "-n"], scratch.tmp.path())
        .args([
            "sync",
            "--one-time",
            "--repo",
            "https://git.dagsnap-test.invalid/dags.git",
            "--root",
        ])
        .arg(scratch.root())
        .arg("--cache-dir")
        .arg(scratch.cache())
        .env("HOME", scratch.tmp.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the host name does not resolve"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_proxy_that_is_down_is_named_instead_of_the_git_host() {
    // In a network namespace with only loopback (down), so nothing leaves the machine.
    let probe = Command::new("unshare").args(["-n", "true"]).status();
    if !probe.map(|s| s.success()).unwrap_or(false) {
        skip("a network namespace", "unshare -n failed");
        return;
    }
    let scratch = Scratch::new();
    let out = dagsnap_via(&["unshare", "-n"], scratch.tmp.path())
        .args([
            "sync",
            "--one-time",
            "--repo",
            "https://git.dagsnap-test.invalid/dags.git",
            "--root",
        ])
        .arg(scratch.root())
        .arg("--cache-dir")
        .arg(scratch.cache())
        .env("HTTPS_PROXY", "http://proxy-user:pr0xy-pass@127.0.0.1:9")
        .output()
        .unwrap();
    let line = assert_one_clear_line(
        &out,
        1,
        "the proxy http://<redacted>@127.0.0.1:9 (from HTTPS_PROXY)",
    );
    assert!(line.contains("NO_PROXY"), "{line}");
    assert!(!line.contains("pr0xy-pass"), "{line}");
    assert!(
        !line.contains("does not resolve"),
        "the git host is not blamed: {line}"
    );
}

#[test]
fn a_silent_https_server_is_cut_off_by_the_sync_timeout_and_the_loop_survives() {
    let silent = SilentServer::start();
    let url = format!("https://127.0.0.1:{}/dags.git", silent.port);
    let scratch = Scratch::new();
    let started = Instant::now();
    let out = sync_once(&scratch, &url, &["--sync-timeout", "2s"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("took longer than --sync-timeout 2s"),
        "{}",
        stderr(&out)
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );

    let mut daemon = spawn_loop(
        &scratch,
        &url,
        &[
            "--sync-timeout",
            "1s",
            "--period",
            "10ms",
            "--backoff-max",
            "50ms",
        ],
    );
    wait_until(Duration::from_secs(60), "three timed-out cycles", || {
        daemon
            .logs()
            .matches("took longer than --sync-timeout")
            .count()
            >= 3
    });
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "the loop is still running"
    );
    daemon.stop();
}

/// A deploy key owned by `uid` (ssh refuses keys others can read).
fn private_copy(key: &Path, dir: &Path, uid: u32) -> PathBuf {
    let copy = dir.join("deploy_key");
    fs::copy(key, &copy).unwrap();
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o600)).unwrap();
    nix::unistd::chown(&copy, Some(nix::unistd::Uid::from_raw(uid)), None).unwrap();
    copy
}

#[test]
fn ssh_deploy_key_to_a_git_shell_account_in_both_url_forms() {
    let remote = Remote::new();
    let commit = remote.commit(&[("dags/a.py", "over ssh\n")], "one");
    let server = SshServer::start_git_shell();
    let path = server.serve(&remote.dir, "dags.git");
    let key = server.client_key.display().to_string();
    let known = server.known_hosts.display().to_string();
    let port = server.port.to_string();
    let forms: Vec<(String, Vec<&str>)> = vec![
        (server.url_of(&path), vec![]),
        (
            format!("{}@127.0.0.1:{}", server.user, path.display()),
            vec!["--ssh-port", &port],
        ),
    ];
    for (url, extra) in forms {
        let scratch = Scratch::new();
        let flags = [
            &["--ssh-key-file", &key, "--ssh-known-hosts-file", &known][..],
            &extra[..],
        ]
        .concat();
        let out = sync_once(&scratch, &url, &flags);
        assert!(
            out.status.success(),
            "{url}: {}\nsshd: {}",
            stderr(&out),
            server.log()
        );
        assert_eq!(assert_root_valid(&scratch.root()), commit, "{url}");
        assert!(
            !stderr(&out).contains("WARNING"),
            "ssh kept quiet: {}",
            stderr(&out)
        );
    }
}

#[test]
fn each_ssh_failure_says_what_to_fix() {
    let remote = Remote::new();
    remote.commit(&[("a.py", "a\n")], "one");
    let server = SshServer::start_git_shell();
    let path = server.serve(&remote.dir, "dags.git");
    let url = server.url_of(&path);
    let scratch = Scratch::new();
    let empty_known = scratch.path("empty_known_hosts");
    fs::write(&empty_known, "").unwrap();
    let other_key = scratch.path("other_key");
    assert!(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&other_key)
        .status()
        .unwrap()
        .success());
    // A known_hosts entry with another key for this server: what a re-keyed or spoofed server looks like.
    let other_pub = fs::read_to_string(other_key.with_extension("pub")).unwrap();
    let fields: Vec<&str> = other_pub.split_whitespace().collect();
    let wrong_known = scratch.path("wrong_known_hosts");
    fs::write(
        &wrong_known,
        format!("[127.0.0.1]:{} {} {}\n", server.port, fields[0], fields[1]),
    )
    .unwrap();
    let (key, known) = (
        server.client_key.display().to_string(),
        server.known_hosts.display().to_string(),
    );
    let (empty_known, wrong_known, other_key) = (
        empty_known.display().to_string(),
        wrong_known.display().to_string(),
        other_key.display().to_string(),
    );

    let cases: Vec<(&str, Vec<&str>, i32, &str)> = vec![
        (
            "unknown host key",
            vec![
                "--ssh-key-file",
                &key,
                "--ssh-known-hosts-file",
                &empty_known,
            ],
            1,
            "the server's SSH host key is not in the known hosts file",
        ),
        (
            "changed host key",
            vec![
                "--ssh-key-file",
                &key,
                "--ssh-known-hosts-file",
                &wrong_known,
            ],
            1,
            "does not match the known hosts file",
        ),
        (
            "wrong key",
            vec![
                "--ssh-key-file",
                &other_key,
                "--ssh-known-hosts-file",
                &known,
            ],
            1,
            "the SSH server rejected the key",
        ),
        (
            "missing key file",
            vec![
                "--ssh-key-file",
                "/nonexistent/deploy_key",
                "--ssh-known-hosts-file",
                &known,
            ],
            2,
            "ssh key file /nonexistent/deploy_key is not readable",
        ),
        (
            "missing known hosts",
            vec![
                "--ssh-key-file",
                &key,
                "--ssh-known-hosts-file",
                "/nonexistent/known_hosts",
            ],
            2,
            "known hosts file /nonexistent/known_hosts is not readable",
        ),
    ];
    for (name, extra, code, expected) in cases {
        let out = sync_once_with(&Scratch::new(), &scratch.path(name), &url, &extra);
        eprintln!("case: {name}");
        assert_one_clear_line(&out, code, expected);
    }
}

#[test]
fn host_key_checking_can_be_turned_off_but_says_so_loudly() {
    let remote = Remote::new();
    let commit = remote.commit(&[("a.py", "a\n")], "one");
    let server = SshServer::start_git_shell();
    let path = server.serve(&remote.dir, "dags.git");
    let url = server.url_of(&path);
    let scratch = Scratch::new();
    let out = sync_once(
        &scratch,
        &url,
        &[
            "--ssh-key-file",
            &server.client_key.display().to_string(),
            "--ssh-known-hosts=false",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("SSH HOST KEY CHECKING IS OFF"),
        "{}",
        stderr(&out)
    );
    assert_eq!(published(&scratch.root()), Some(commit));
}

#[test]
fn ssh_works_for_a_uid_without_a_passwd_entry() {
    if !nix::unistd::geteuid().is_root() {
        skip(
            "root, to switch to a uid without a passwd entry",
            "this is not root",
        );
        return;
    }
    let uid = 65533;
    assert!(
        nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .unwrap()
            .is_none(),
        "uid {uid} must have no passwd entry"
    );
    let remote = Remote::new();
    let commit = remote.commit(&[("a.py", "a\n")], "one");
    let server = SshServer::start_git_shell();
    let path = server.serve(&remote.dir, "dags.git");
    let url = server.url_of(&path);
    let scratch = Scratch::new();
    let home = scratch.path("home");
    for dir in [&home, &scratch.root(), &scratch.cache()] {
        fs::create_dir_all(dir).unwrap();
        nix::unistd::chown(
            dir.as_path(),
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(uid)),
        )
        .unwrap();
    }
    fs::set_permissions(scratch.tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let key = private_copy(&server.client_key, &home, uid);
    let known = home.join("known_hosts");
    fs::copy(&server.known_hosts, &known).unwrap();
    fs::set_permissions(&known, fs::Permissions::from_mode(0o644)).unwrap();

    let out = dagsnap_via(
        &[
            "setpriv",
            "--reuid=65533",
            "--regid=65533",
            "--clear-groups",
        ],
        scratch.tmp.path(),
    )
    .args(["sync", "--one-time", "--repo", &url, "--root"])
    .arg(scratch.root())
    .arg("--cache-dir")
    .arg(scratch.cache())
    .arg("--ssh-key-file")
    .arg(&key)
    .arg("--ssh-known-hosts-file")
    .arg(&known)
    .env("HOME", "/")
    .env_remove("SSH_AUTH_SOCK")
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}\nsshd: {}",
        stderr(&out),
        server.log()
    );
    assert!(
        stderr(&out).contains("no passwd entry; giving ssh one"),
        "{}",
        stderr(&out)
    );
    assert_eq!(published(&scratch.root()), Some(commit));
}

#[test]
fn a_silent_ssh_server_is_cut_off_by_the_sync_timeout() {
    let silent = SilentServer::start();
    let url = format!("ssh://git@127.0.0.1:{}/dags.git", silent.port);
    let scratch = Scratch::new();
    let started = Instant::now();
    let out = sync_once(
        &scratch,
        &url,
        &["--sync-timeout", "2s", "--ssh-known-hosts=false"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("took longer than --sync-timeout 2s"),
        "{}",
        stderr(&out)
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn secrets_stay_out_of_trace_and_json_logs_repeated_failures_and_the_cache() {
    let remote = Remote::new();
    remote.commit(&[("a.py", "a\n")], "one");
    let server = HttpServer::start_with(true, USER, TOKEN);
    server.serve(&remote.dir, "dags.git");
    let ca = server.ca_file.display().to_string();
    let scratch = Scratch::new();
    let password = scratch.path("token");
    write_secret(&password, TOKEN);
    let with_password = [
        "--username",
        USER,
        "--password-file",
        password.to_str().unwrap(),
        "--ca-file",
        ca.as_str(),
    ];

    let mut logs = Vec::new();
    // Every level of dagsnap's own logs, and the libraries' at trace, in both formats.
    for (format, level) in [
        ("json", "trace"),
        ("text", "trace"),
        (
            "json",
            "dagsnap=trace,gix=trace,gix_transport=trace,reqwest=trace,hyper=trace",
        ),
    ] {
        let url = server.url(Door::Private, "dags.git");
        let mut args = vec!["--log-format", format, "--log-level", level];
        args.extend(with_password);
        let out = sync_once(&scratch, &url, &args);
        assert!(out.status.success(), "{}", stderr(&out));
        logs.push(stderr(&out));
    }
    // Credentials in the URL, and a loop that fails again and again with a wrong one.
    let wrong = "glpat-Wr0ngButSecretT0ken";
    let url = server
        .url(Door::Private, "dags.git")
        .replace("https://", &format!("https://{USER}:{wrong}@"));
    let daemon = spawn_loop_with(
        &scratch,
        &scratch.path("cache-2"),
        &url,
        &[
            "--ca-file",
            &ca,
            "--period",
            "20ms",
            "--backoff-max",
            "40ms",
            "--log-format",
            "json",
            "--log-level",
            "trace",
        ],
    );
    wait_until(Duration::from_secs(30), "five failures", || {
        daemon.logs().matches("authentication failed").count() >= 5
    });
    logs.push(daemon.logs());
    drop(daemon);

    for secret in [TOKEN, wrong] {
        assert_secret_absent(secret, &logs, &scratch.root());
        for cache in [scratch.cache(), scratch.path("cache-2")] {
            for entry in walkdir::WalkDir::new(&cache)
                .into_iter()
                .filter_map(Result::ok)
            {
                if entry.file_type().is_file() {
                    let bytes = fs::read(entry.path()).unwrap();
                    assert!(
                        !String::from_utf8_lossy(&bytes).contains(secret),
                        "{} holds the secret",
                        entry.path().display()
                    );
                }
            }
        }
    }
}
