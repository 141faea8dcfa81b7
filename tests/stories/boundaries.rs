//! The shared volume and the network are untrusted input. Whoever can write the volume (a
//! worker that mounts it writable to take leases), reach the HTTP port, or push a commit cannot
//! make dagsnap reach past its right: nothing outside the root is deleted or written, nothing
//! hangs a publisher or starves a probe, the link never moves backward, and a commit cannot make
//! dagsnap publish files of its own host.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use crate::servers::{free_port, Door, HttpServer};
use crate::support::*;

/// The store directories whose contents GC deletes by its own rules.
const STORE_DIRS: [&str; 5] = [
    "trash",
    "publishers.d",
    "verdicts",
    "publications",
    "leases",
];

/// A directory outside the root holding files each GC rule would delete (old, foreign, named
/// like records), as anyone who can write the volume could point a store directory at.
fn victim(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    let two_hours_ago = SystemTime::now() - Duration::from_secs(7200);
    for name in ["precious.json", "notes.txt", "a.checking", ".tmp-x"] {
        let path = dir.join(name);
        fs::write(&path, b"precious\n").unwrap();
        fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(two_hours_ago)
            .unwrap();
    }
}

fn assert_untouched(dir: &Path) {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [".tmp-x", "a.checking", "notes.txt", "precious.json"],
        "{} was changed",
        dir.display()
    );
    for name in &names {
        assert_eq!(fs::read(dir.join(name)).unwrap(), b"precious\n");
    }
}

#[test]
fn store_directories_replaced_by_symlinks_are_never_followed_out_of_the_root() {
    let remote = Remote::new();
    let scratch = Scratch::new();
    publish_versions(&remote, &scratch, 1, "v");
    let store = scratch.root().join(".dagsnap");
    let outside = scratch.path("outside");
    for name in STORE_DIRS {
        victim(&outside.join(name));
        let there = store.join(name);
        if there.exists() {
            fs::remove_dir_all(&there).unwrap();
        }
        std::os::unix::fs::symlink(outside.join(name), &there).unwrap();
    }

    // Two publishes, each collecting garbage with nothing kept beyond what is live.
    let mut logs = String::new();
    for n in 2..=3 {
        let commit = remote.commit(&[("v.py", &format!("v{n}\n"))], &format!("v{n}"));
        let out = sync_once(&scratch, &remote.url(), &["--grace", "0s", "--keep", "0"]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(assert_root_valid(&scratch.root()), commit);
        logs.push_str(&stderr(&out));
    }
    for name in STORE_DIRS {
        assert_untouched(&outside.join(name));
        let there = fs::symlink_metadata(store.join(name));
        assert!(
            there.as_ref().is_ok_and(|m| m.is_dir()) || there.is_err(),
            "{name} is still a symlink"
        );
    }
    assert!(logs.contains("not a real directory"), "{logs}");
    // What was set aside goes with the trash, and the symlinks' targets stay.
    let out = sync_once(&scratch, &remote.url(), &["--grace", "0s", "--keep", "0"]);
    assert!(out.status.success(), "{}", stderr(&out));
    for name in STORE_DIRS {
        assert_untouched(&outside.join(name));
    }
}

/// `sync --one-time` that must finish within `limit`.
fn sync_once_within(scratch: &Scratch, repo: &str, extra: &[&str], limit: Duration) -> String {
    let mut child = sync_once_command(scratch, &scratch.cache(), repo, extra)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            assert!(status.success(), "{err}");
            return err;
        }
        if started.elapsed() > limit {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = child.wait();
            panic!("dagsnap hung for {limit:?} on what was planted in the store");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

use std::os::unix::process::CommandExt;

#[test]
fn fifos_symlinks_and_oversized_records_planted_in_the_store_hang_nothing() {
    let remote = Remote::new();
    let scratch = Scratch::new();
    publish_versions(&remote, &scratch, 1, "v");
    let store = scratch.root().join(".dagsnap");
    let fifo = |path: PathBuf| {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).unwrap();
    };
    fifo(store.join("leases/planted.json"));
    fifo(store.join(format!("verdicts/{}.0000000000000000.json", "a".repeat(40))));
    fifo(store.join("publishers.d/planted.1.json"));
    // Named to be the newest publication, so that it is read first.
    fifo(store.join("publications/99999999999999999999-0-fifo.json"));
    std::os::unix::fs::symlink(
        "/dev/zero",
        store.join("publications/99999999999999999998-0-zero.json"),
    )
    .unwrap();
    fs::write(
        store.join("publications/99999999999999999997-0-big.json"),
        vec![b' '; 3 << 20],
    )
    .unwrap();
    fifo(store.join("pin.json"));
    fs::remove_file(store.join("journal.jsonl")).unwrap();
    fifo(store.join("journal.jsonl"));

    let commit = remote.commit(&[("v.py", "two\n")], "two");
    let logs = sync_once_within(&scratch, &remote.url(), &[], Duration::from_secs(60));
    assert!(logs.contains("FIFO"), "{logs}");
    // The damaged pin holds the live snapshot; unpin releases it, and the next sync publishes.
    let out = on_root(&scratch, &["unpin"]);
    assert!(out.status.success(), "{}", stderr(&out));
    sync_once_within(&scratch, &remote.url(), &[], Duration::from_secs(60));
    assert_eq!(assert_root_valid(&scratch.root()), commit);
    // Collected: the unusable publication records and leases are gone, never read.
    let names: Vec<String> = fs::read_dir(store.join("publications"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names.iter().any(|n| n.starts_with("9999")),
        "planted publication records stay: {names:?}"
    );
    assert!(!store.join("leases/planted.json").exists());
    let out = on_root(&scratch, &["status"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Wait for `child` to end, at most `limit`; its status.
fn ends_within(
    child: &mut std::process::Child,
    limit: Duration,
    log: &Path,
) -> std::process::ExitStatus {
    let asked = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            asked.elapsed() < limit,
            "still running {:?} after SIGTERM; log:\n{}",
            asked.elapsed(),
            fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn sigterm_ends_the_process_within_its_bound_while_the_volume_stalls() {
    let remote = Remote::new();
    let first = remote.commit(&[("a.py", "a\n")], "one");
    let scratch = Scratch::new();
    let volume = scratch.path("volume");
    fs::create_dir_all(&volume).unwrap();
    let Some(mounts) = crate::broken_locks::Mounts::of(&volume, &scratch, 1) else {
        return;
    };
    let root = mounts.points[0].join("root");
    let stall = |signal| {
        nix::sys::signal::killpg(mounts.daemons[0].pid(), signal).unwrap();
    };
    let log = scratch.path("loop.log");
    let mut daemon = Daemon {
        child: dagsnap(scratch.tmp.path())
            .args(["sync", "--repo", &remote.url(), "--period", "1h", "--root"])
            .arg(&root)
            .arg("--cache-dir")
            .arg(scratch.cache())
            .stderr(fs::File::create(&log).unwrap())
            .process_group(0)
            .spawn()
            .unwrap(),
        log: log.clone(),
    };
    daemon.wait_for_commit(&volume.join("root"), &first, Duration::from_secs(30));
    wait_until(Duration::from_secs(30), "the first cycle to end", || {
        beat(&volume.join("root"), daemon.child.id()) >= 1
    });
    // The volume stops answering (its server hangs) while the loop waits; then a cycle starts
    // (SIGHUP) and its system calls on the volume hang. (Stopped between requests, the server
    // leaves them queued, where a fatal signal can still end them: a request it had already
    // taken would hold even SIGKILL until answered, in the kernel's FUSE client.)
    std::thread::sleep(Duration::from_millis(500));
    stall(nix::sys::signal::Signal::SIGSTOP);
    daemon.signal(nix::sys::signal::Signal::SIGHUP);
    std::thread::sleep(Duration::from_secs(2));
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    let status = ends_within(&mut daemon.child, Duration::from_secs(30), &log);
    assert_eq!(
        status.code(),
        Some(0),
        "{}",
        fs::read_to_string(&log).unwrap()
    );

    // A one-time run (an init container) started on the stalled volume ends too.
    let log = scratch.path("once.log");
    let mut once = dagsnap(scratch.tmp.path())
        .args(["sync", "--one-time", "--repo", &remote.url(), "--root"])
        .arg(&root)
        .arg("--cache-dir")
        .arg(scratch.path("cache-2"))
        .stderr(fs::File::create(&log).unwrap())
        .process_group(0)
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(once.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    ends_within(&mut once, Duration::from_secs(30), &log);
    stall(nix::sys::signal::Signal::SIGCONT);

    // Once the volume answers again, the next start cleans up and carries on.
    let out = dagsnap(scratch.tmp.path())
        .args(["sync", "--one-time", "--repo", &remote.url(), "--root"])
        .arg(&root)
        .arg("--cache-dir")
        .arg(scratch.cache())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(assert_root_valid(&volume.join("root")), first);
}

/// This host's publisher record in `root` (the loop's), as JSON.
fn own_record(root: &Path, pid: u32) -> Option<serde_json::Value> {
    let path = root.join(format!(".dagsnap/publishers.d/{}.{pid}.json", hostname()));
    serde_json::from_slice(&fs::read(path).ok()?).ok()
}

fn beat(root: &Path, pid: u32) -> u64 {
    own_record(root, pid)
        .and_then(|r| r["beat"].as_u64())
        .unwrap_or(0)
}

#[test]
fn a_publication_from_the_future_moves_the_link_neither_back_nor_forth() {
    let remote = Remote::new();
    let old = remote.commit(&[("a.py", "old\n")], "old");
    let scratch = Scratch::new();
    let daemon = spawn_loop(&scratch, &remote.url(), &["--period", "100ms"]);
    daemon.wait_for_commit(&scratch.root(), &old, Duration::from_secs(30));
    // A record from a clock ten years ahead (or forged) names the old commit as newest.
    let ahead = SystemTime::now() + Duration::from_secs(10 * 365 * 24 * 3600);
    let nanos = ahead
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let stamp = humantime::format_rfc3339(ahead).to_string();
    let record = serde_json::json!({
        "commit": old, "cause": "sync", "observed_at": stamp, "published_at": stamp,
        "host": "fast-clock", "pid": 1, "repo": remote.url(), "ref": "refs/heads/main",
        "moved_link": true,
    });
    fs::write(
        scratch.root().join(format!(
            ".dagsnap/publications/{nanos:020}-{nanos:020}-x.json"
        )),
        serde_json::to_vec(&record).unwrap(),
    )
    .unwrap();
    let tip = remote.commit(&[("a.py", "tip\n")], "tip");
    daemon.wait_for_commit(&scratch.root(), &tip, Duration::from_secs(30));
    // Twenty more cycles, the link looked at all the while: it stays on the tip.
    let pid = daemon.child.id();
    let until = beat(&scratch.root(), pid) + 20;
    while beat(&scratch.root(), pid) < until {
        assert_eq!(
            published(&scratch.root()).as_deref(),
            Some(tip.as_str()),
            "the link moved back; log:\n{}",
            daemon.logs()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let journal = journal_commits(&scratch.root());
    assert_eq!(journal.last(), Some(&tip), "{journal:?}");
    assert!(daemon.logs().contains("in the future"), "{}", daemon.logs());
}

#[test]
fn dagsnap_s_own_link_named_like_git_sync_s_files_is_never_cleaned_up() {
    let remote = Remote::new();
    let first = remote.commit(&[("a.py", "one\n")], "one");
    let scratch = Scratch::new();
    // git-sync's default link is the last part of --repo: `.git` for a path ending in .git.
    let repo = format!("{}/.git", remote.path());
    let log = scratch.path("git-sync.log");
    let mut daemon = Daemon {
        child: dagsnap(scratch.tmp.path())
            .env("DAGSNAP_GRACE", "1s")
            .env("DAGSNAP_CACHE_DIR", scratch.cache())
            .args(["git-sync", "--repo", &repo, "--root"])
            .arg(scratch.root())
            .args(["--period", "100ms"])
            .stderr(fs::File::create(&log).unwrap())
            .process_group(0)
            .spawn()
            .unwrap(),
        log,
    };
    let link = scratch.root().join(".git");
    wait_until(Duration::from_secs(30), "the first publish", || {
        fs::read_link(&link).is_ok_and(|t| t.ends_with(&first))
    });
    let second = remote.commit(&[("a.py", "two\n")], "two");
    wait_until(Duration::from_secs(30), "the second publish", || {
        fs::read_link(&link).is_ok_and(|t| t.ends_with(&second))
    });
    // Well past the grace, at every look the link is there.
    let pid = daemon.child.id();
    let until = beat(&scratch.root(), pid) + 40;
    while beat(&scratch.root(), pid) < until {
        assert!(
            fs::symlink_metadata(&link).is_ok(),
            "the link went; log:\n{}",
            daemon.logs()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    daemon.stop();
    assert!(fs::read_link(&link).is_ok_and(|t| t.ends_with(&second)));
}

#[test]
fn a_forged_heartbeat_does_not_stop_publishing() {
    let remote = Remote::new();
    let first = remote.commit(&[("a.py", "one\n")], "one");
    let scratch = Scratch::new();
    let daemon = spawn_loop(&scratch, &remote.url(), &["--period", "100ms"]);
    daemon.wait_for_commit(&scratch.root(), &first, Duration::from_secs(30));
    // Records no running publisher holds a lock on, whose beat advances: one naming this host
    // (and a live process that is not a publisher: this test), one naming another host, one
    // naming the running publisher itself.
    let records = scratch.root().join(".dagsnap/publishers.d");
    let me = std::process::id();
    let forged = [
        (hostname(), me, "forged-here.json".to_string()),
        ("node-b".to_string(), 4242, "forged-there.json".to_string()),
        (
            hostname(),
            daemon.child.id(),
            "forged-self.json".to_string(),
        ),
    ];
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let forger = std::thread::spawn({
        let stop = std::sync::Arc::clone(&stop);
        let records = records.clone();
        move || {
            let mut beat = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                beat += 1;
                let now = humantime::format_rfc3339(SystemTime::now()).to_string();
                for (host, pid, name) in &forged {
                    let record = serde_json::json!({
                        "host": host, "pid": pid, "version": "0.1.0", "repo": "x",
                        "ref": "main", "started_at": now, "last_cycle_at": now,
                        "consecutive_failures": 0, "beat": beat, "period_ms": 100,
                    });
                    let temp = records.join(format!(".{name}.tmp"));
                    fs::write(&temp, serde_json::to_vec(&record).unwrap()).unwrap();
                    fs::rename(&temp, records.join(name)).unwrap();
                }
                std::thread::sleep(Duration::from_millis(40));
            }
        }
    });
    std::thread::sleep(Duration::from_secs(2));
    for n in 2..=4 {
        let commit = remote.commit(&[("a.py", &format!("{n}\n"))], &format!("v{n}"));
        daemon.wait_for_commit(&scratch.root(), &commit, Duration::from_secs(20));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    forger.join().unwrap();
    let logs = daemon.logs();
    assert!(
        !logs.contains("locks on this volume do not reach"),
        "{logs}"
    );
}

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

#[test]
fn a_file_edited_in_place_with_its_size_and_mode_restored_is_neither_shared_nor_left_live() {
    let remote = Remote::new();
    let scratch = Scratch::new();
    let first = remote.commit(&[("a.py", "hello\n"), ("b.py", "one\n")], "one");
    let out = sync_once(&scratch, &remote.url(), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Edited in place by someone who can write the volume, size and read-only mode restored.
    let edit = |path: &Path| {
        let mode = fs::metadata(path).unwrap().mode();
        fs::set_permissions(path, fs::Permissions::from_mode(0o644)).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        fs::write(path, "HACKED").unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o7777)).unwrap();
    };
    let live = scratch.root().join(SNAPSHOTS).join(&first);
    edit(&live.join("a.py"));
    let second = remote.commit(&[("b.py", "two\n")], "two");
    let out = sync_once(&scratch, &remote.url(), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(assert_root_valid(&scratch.root()), second);
    assert_eq!(read_current(&scratch.root(), "a.py"), "hello\n");
    assert!(
        stderr(&out).contains("modification time"),
        "{}",
        stderr(&out)
    );

    // The loop's periodic check finds the same edit in the live snapshot and repairs it.
    let daemon = spawn_loop(
        &scratch,
        &remote.url(),
        &["--period", "100ms", "--verify-period", "200ms"],
    );
    daemon.wait_for_commit(&scratch.root(), &second, Duration::from_secs(30));
    edit(&scratch.root().join("current/a.py"));
    wait_until(Duration::from_secs(30), "the repair", || {
        read_current(&scratch.root(), "a.py") == "hello\n"
    });
}

#[test]
fn a_damaged_pack_in_the_cache_is_said_plainly_and_repaired_without_its_misleading_words() {
    let remote = Remote::new();
    let scratch = Scratch::new();
    publish_versions(&remote, &scratch, 1, "v");
    // Every object of the cache's packs damaged (header and trailer kept).
    let packs = scratch.cache().join("repo.git/objects/pack");
    for entry in fs::read_dir(&packs).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|x| x == "pack") {
            let mut bytes = fs::read(&path).unwrap();
            let end = bytes.len() - 20;
            for b in &mut bytes[12..end] {
                *b ^= 0x5a;
            }
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
            fs::write(&path, bytes).unwrap();
        }
    }
    // Every file is written from the cache (none shared), so the damage is read.
    let commit = remote.commit(&[("v.py", "two\n")], "two");
    let out = sync_once(&scratch, &remote.url(), &["--full-copy"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(assert_root_valid(&scratch.root()), commit);
    let err = stderr(&out);
    let line = err
        .lines()
        .find(|l| l.contains("re-creating it"))
        .unwrap_or_else(|| panic!("the damage was not noticed:\n{err}"));
    assert!(line.contains("may be damaged"), "{line}");
    // Said plainly: what the damaged objects read as (a tag, not a commit; a ref) would mislead.
    assert!(!line.contains("error="), "{line}");
}

#[test]
fn a_tree_the_server_cannot_pack_is_blamed_on_the_server_not_the_cache() {
    // 4,000 directories deep: git's own upload-pack fails while packing it.
    let remote = Remote::new();
    let live = remote.commit(&[("a.py", "a\n")], "one");
    let scratch = Scratch::new();
    let out = sync_once(&scratch, &remote.url(), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut files = vec![TreeFile::file("a.py", "a\n")];
    let deep: Vec<u8> = std::iter::repeat_n(&b"d/"[..], 4000)
        .flatten()
        .copied()
        .collect();
    files.push(TreeFile::file([&deep[..], b"f.txt"].concat(), "deep\n"));
    // The fixture writes trees recursively: a thread with room for 4,000 levels.
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .stack_size(256 << 20)
            .spawn_scoped(scope, || remote.commit_tree(&files, "deep"))
            .unwrap()
            .join()
            .unwrap()
    });
    let out = sync_once(&scratch, &remote.url(), &[]);
    let line = assert_one_clear_line(&out, 1, "the pack ended before it was complete");
    assert!(line.contains("the server stopped sending it"), "{line}");
    assert!(!stderr(&out).contains("damaged"), "{}", stderr(&out));
    assert_eq!(published(&scratch.root()), Some(live));
}
