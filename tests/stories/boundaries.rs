//! The shared volume and the network are untrusted input. Whoever can write the volume (a
//! worker that mounts it writable to take leases), reach the HTTP port, or push a commit cannot
//! make dagsnap reach past its right: nothing outside the root is deleted or written, nothing
//! hangs a publisher or starves a probe, the link never moves backward, and a commit cannot make
//! dagsnap publish files of its own host.

use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

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

/// Let a stopped FUSE server go on when dropped.
struct Resume(nix::unistd::Pid);

impl Drop for Resume {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(self.0, nix::sys::signal::Signal::SIGCONT);
    }
}

/// Whether every thread of the FUSE server `pid` waits for a request (none holds one).
fn server_idle(pid: nix::unistd::Pid) -> bool {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.filter_map(Result::ok).all(|task| {
        fs::read_to_string(task.path().join("wchan")).is_ok_and(|w| w == "fuse_dev_do_read")
    })
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
            .args(["--log-level", "dagsnap=debug"])
            .stderr(fs::File::create(&log).unwrap())
            .process_group(0)
            .spawn()
            .unwrap(),
        log: log.clone(),
    };
    // Declared after the loop, so dropped before it: whatever fails below, the volume answers
    // again before the loop is killed and waited for (a process with a request the stopped
    // server took cannot die until it is answered).
    let _resume = Resume(mounts.daemons[0].pid());
    daemon.wait_for_commit(&volume.join("root"), &first, Duration::from_secs(30));
    wait_until(Duration::from_secs(30), "the first cycle to end", || {
        beat(&volume.join("root"), daemon.child.id()) >= 1
    });
    // The volume stops answering (its server hangs) while the loop waits; then a cycle starts
    // (SIGHUP) and its system calls on the volume hang. (Stopped between requests, the server
    // leaves them queued, where a fatal signal can still end them: a request it had already
    // taken would hold even SIGKILL until answered, in the kernel's FUSE client.) So: the loop
    // waits for its next poll, and every thread of the server waits for a request.
    daemon.wait_for_lines(&["waiting for the next poll"], 1, Duration::from_secs(30));
    wait_until(
        Duration::from_secs(30),
        "the volume's server to be idle",
        || server_idle(mounts.daemons[0].pid()),
    );
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
