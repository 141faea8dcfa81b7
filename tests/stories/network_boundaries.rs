//! The network and commits are untrusted input: whoever reaches the HTTP port cannot starve the
//! probes, and a commit cannot send the superproject's credentials to another server or make
//! dagsnap fetch from its own host's disk.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use crate::servers::{free_port, Door, HttpServer};
use crate::support::*;

/// Open `count` connections that each send `head` at once and then one byte of `trickle`
/// every `pause`, for as long as the returned guard lives.
struct Trickle {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Trickle {
    fn start(port: u16, count: usize, head: &'static str, trickle: &'static [u8]) -> Trickle {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let threads = (0..count)
            .map(|_| {
                let stop = std::sync::Arc::clone(&stop);
                std::thread::spawn(move || {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
                            std::thread::sleep(Duration::from_millis(50));
                            continue;
                        };
                        let _ = stream.write_all(head.as_bytes());
                        for byte in trickle.iter().cycle() {
                            if stop.load(std::sync::atomic::Ordering::Relaxed)
                                || stream.write_all(&[*byte]).is_err()
                            {
                                break;
                            }
                            std::thread::sleep(Duration::from_millis(300));
                        }
                    }
                })
            })
            .collect();
        Trickle { stop, threads }
    }
}

impl Drop for Trickle {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// `GET path` with a one-second deadline, as a kubelet probes: the status, or 0.
fn probe(port: u16, path: &str) -> u16 {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(1))
        .no_proxy()
        .build()
        .unwrap();
    client
        .get(format!("http://127.0.0.1:{port}{path}"))
        .send()
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[test]
fn slow_unauthenticated_clients_cannot_starve_the_probes() {
    let remote = Remote::new();
    let commit = remote.commit(&[("a.py", "a\n")], "one");
    let scratch = Scratch::new();
    let token = scratch.path("token");
    fs::write(&token, "s3cret-token\n").unwrap();
    let port = free_port();
    let bind = format!("127.0.0.1:{port}");
    let daemon = spawn_loop(
        &scratch,
        &remote.url(),
        &[
            "--http-bind",
            &bind,
            "--trigger-token-file",
            token.to_str().unwrap(),
        ],
    );
    daemon.wait_for_commit(&scratch.root(), &commit, Duration::from_secs(30));
    wait_until(Duration::from_secs(10), "the HTTP server", || {
        probe(port, "/healthz") == 200
    });

    // Bodies that never end, headers that never end: each kind from 40 connections.
    for (what, head, trickle) in [
        (
            "slow request bodies",
            "POST /sync HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n",
            &b"x"[..],
        ),
        (
            "slow request headers",
            "GET /healthz HTTP/1.1\r\n",
            &b"X-Slow: yes\r\n"[..],
        ),
        (
            "slow webhook bodies with a bad signature",
            "POST /sync HTTP/1.1\r\nHost: x\r\nX-Hub-Signature-256: sha256=00\r\nContent-Length: 1000000\r\n\r\n",
            &b"x"[..],
        ),
    ] {
        let flood = Trickle::start(port, 40, head, trickle);
        std::thread::sleep(Duration::from_secs(2));
        let answered = (0..12)
            .filter(|_| {
                let ok = probe(port, "/healthz") == 200 && probe(port, "/readyz") == 200;
                std::thread::sleep(Duration::from_millis(200));
                ok
            })
            .count();
        drop(flood);
        assert_eq!(answered, 12, "probes answered under {what}");
    }
    // An unauthenticated POST is refused at once, before its body arrives.
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .write_all(b"POST /sync HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n")
        .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut answer = [0u8; 12];
    stream.read_exact(&mut answer).unwrap();
    assert_eq!(
        &answer,
        b"HTTP/1.1 401",
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert!(daemon.logs().is_empty() || !daemon.logs().contains("panicked"));
}

#[test]
fn a_submodule_on_the_publisher_s_disk_is_refused_for_a_superproject_fetched_over_http() {
    // A repository on the publisher's host that readers must never see.
    let secret = Remote::new();
    secret.commit(&[("password.txt", "hunter2\n")], "secret");
    let superproject = Remote::new();
    superproject.commit(&[("dags/a.py", "a\n")], "dags");
    let gitmodules = format!(
        "[submodule \"lib\"]\n\tpath = lib\n\turl = {}\n",
        secret.path()
    );
    let secret_head = secret.head();
    superproject.git(&[
        "update-index",
        "--add",
        "--cacheinfo",
        &format!("160000,{secret_head},lib"),
    ]);
    fs::write(superproject.dir.join(".gitmodules"), &gitmodules).unwrap();
    superproject.git(&["add", ".gitmodules"]);
    superproject.git(&["commit", "-q", "-m", "a submodule on the publisher's disk"]);
    let server = HttpServer::start();
    server.serve(&superproject.dir, "dags.git");
    let url = server.url(Door::Public, "dags.git");

    let scratch = Scratch::new();
    let out = sync_once(&scratch, &url, &["--submodules", "recursive"]);
    let line = assert_one_clear_line(&out, 1, "transport 'file' not allowed");
    assert!(line.contains("protocol.file.allow"), "{line}");
    assert!(!scratch.root().join("current").exists());
    for entry in walkdir::WalkDir::new(scratch.root()).into_iter().flatten() {
        assert_ne!(
            entry.file_name(),
            "password.txt",
            "the secret was published"
        );
    }

    // The operator may allow it, as with git.
    let out = sync_once(
        &scratch,
        &url,
        &[
            "--submodules",
            "recursive",
            "--git-config",
            "protocol.file.allow:always",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        read_current(&scratch.root(), "lib/password.txt"),
        "hunter2\n"
    );
}

#[test]
fn a_commit_naming_one_submodule_at_thousands_of_paths_is_refused() {
    let lib = Remote::new();
    lib.commit(&[("one.py", "1\n"), ("two.py", "2\n")], "lib");
    let superproject = Remote::new();
    let live = superproject.commit(&[("dags/a.py", "a\n")], "dags");
    let scratch = Scratch::new();
    let out = sync_once(
        &scratch,
        &superproject.url(),
        &["--submodules", "recursive"],
    );
    assert!(out.status.success(), "{}", stderr(&out));

    // Ten objects: one tree of 300 gitlinks to the same commit, .gitmodules naming each.
    let head = lib.head();
    let mut gitmodules = String::new();
    for n in 0..300 {
        superproject.git(&[
            "update-index",
            "--add",
            "--cacheinfo",
            &format!("160000,{head},copies/{n}"),
        ]);
        gitmodules.push_str(&format!(
            "[submodule \"c{n}\"]\n\tpath = copies/{n}\n\turl = {}\n",
            lib.path()
        ));
    }
    fs::write(superproject.dir.join(".gitmodules"), gitmodules).unwrap();
    superproject.git(&["add", ".gitmodules"]);
    superproject.git(&["commit", "-q", "-m", "fan-out"]);
    let out = sync_once(
        &scratch,
        &superproject.url(),
        &["--submodules", "recursive"],
    );
    assert_one_clear_line(&out, 1, "more than 256 submodules");
    assert_eq!(published(&scratch.root()), Some(live));
}

const USER: &str = "ada";
const TOKEN: &str = "glpat-BoundarySecretT0ken";

#[test]
fn the_superproject_s_credentials_are_not_sent_to_a_submodule_on_another_server() {
    // The same user and token would be accepted by both servers: only where the credentials
    // go decides whether the submodule's server sees them.
    let lib = Remote::new();
    lib.commit(&[("lib.py", "lib\n")], "lib");
    let other = HttpServer::start_with(false, USER, TOKEN);
    other.serve(&lib.dir, "lib.git");
    let superproject = Remote::new();
    superproject.commit(&[("dags/a.py", "a\n")], "dags");
    superproject.git(&[
        "update-index",
        "--add",
        "--cacheinfo",
        &format!("160000,{},lib", lib.head()),
    ]);
    fs::write(
        superproject.dir.join(".gitmodules"),
        format!(
            "[submodule \"lib\"]\n\tpath = lib\n\turl = {}\n",
            other.url(Door::Private, "lib.git")
        ),
    )
    .unwrap();
    superproject.git(&["add", ".gitmodules"]);
    superproject.git(&["commit", "-q", "-m", "a private submodule elsewhere"]);
    let server = HttpServer::start_with(true, USER, TOKEN);
    server.serve(&superproject.dir, "dags.git");
    let scratch = Scratch::new();
    let password = scratch.path("token");
    fs::write(&password, format!("{TOKEN}\n")).unwrap();
    fs::set_permissions(&password, fs::Permissions::from_mode(0o600)).unwrap();
    let out = sync_once(
        &scratch,
        &server.url(Door::Private, "dags.git"),
        &[
            "--username",
            USER,
            "--password-file",
            password.to_str().unwrap(),
            "--ca-file",
            server.ca_file.to_str().unwrap(),
            "--submodules",
            "recursive",
            "--allow-insecure-http-credentials",
        ],
    );
    // The superproject was fetched with the credentials; the other server never saw them.
    assert!(
        server.access_log().contains(&format!(" {USER} ")),
        "{}",
        server.access_log()
    );
    let elsewhere = other.access_log();
    assert!(!elsewhere.is_empty(), "the submodule was asked for");
    assert!(
        !elsewhere.contains(&format!(" {USER} ")),
        "the submodule's server saw the superproject's credentials:\n{elsewhere}"
    );
    assert_one_clear_line(&out, 1, "submodule 'lib'");
}

#[test]
fn a_token_rotated_in_the_password_file_wins_over_a_stale_one_left_in_the_url() {
    let remote = Remote::new();
    let commit = remote.commit(&[("a.py", "a\n")], "one");
    let server = HttpServer::start_with(true, USER, TOKEN);
    server.serve(&remote.dir, "dags.git");
    let stale = "glpat-St4leTokenLeftInTheUrl";
    let url = server
        .url(Door::Private, "dags.git")
        .replace("https://", &format!("https://{USER}:{stale}@"));
    let scratch = Scratch::new();
    let password = scratch.path("token");
    fs::write(&password, format!("{TOKEN}\n")).unwrap();
    fs::set_permissions(&password, fs::Permissions::from_mode(0o600)).unwrap();
    let out = sync_once(
        &scratch,
        &url,
        &[
            "--password-file",
            password.to_str().unwrap(),
            "--ca-file",
            server.ca_file.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(assert_root_valid(&scratch.root()), commit);
    for secret in [stale, TOKEN] {
        assert!(!stderr(&out).contains(secret), "{}", stderr(&out));
    }
}

#[test]
fn credentials_of_a_proxy_are_kept_out_of_logs_the_error_file_and_the_publisher_record() {
    let remote = Remote::new();
    remote.commit(&[("a.py", "a\n")], "one");
    let server = HttpServer::start();
    server.serve(&remote.dir, "dags.git");
    let dead = free_port();
    let proxy_secret = "pr0xy-Secret-Passw0rd";
    let proxy = format!("http://proxyuser:{proxy_secret}@127.0.0.1:{dead}");
    let scratch = Scratch::new();
    let error_file = scratch.path("error.json");
    let daemon = spawn_loop_in_env(
        &scratch,
        &scratch.cache(),
        &server.url(Door::Public, "dags.git"),
        &[
            "--period",
            "50ms",
            "--backoff-max",
            "100ms",
            "--error-file",
            error_file.to_str().unwrap(),
        ],
        &[
            ("http_proxy", &proxy),
            ("HTTP_PROXY", &proxy),
            ("NO_PROXY", ""),
        ],
    );
    wait_until(Duration::from_secs(30), "three failures", || {
        daemon.logs().matches("proxy").count() >= 3 && error_file.exists()
    });
    let status = on_root(&scratch, &["status", "--json"]);
    let status = stdout(&status);
    let logs = daemon.logs();
    assert!(logs.contains("127.0.0.1"), "the proxy is named: {logs}");
    for (what, text) in [
        ("the log", logs),
        ("the error file", fs::read_to_string(&error_file).unwrap()),
        ("status (the publisher record)", status),
    ] {
        assert!(!text.contains(proxy_secret), "{what} leaks it:\n{text}");
    }
    for entry in walkdir::WalkDir::new(scratch.root().join(".dagsnap"))
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
    {
        let text = String::from_utf8_lossy(&fs::read(entry.path()).unwrap()).into_owned();
        assert!(!text.contains(proxy_secret), "{}", entry.path().display());
    }
}
