//! Volumes whose locks do not travel between clients (NFS mounted `nolock`, sshfs, FUSE-based
//! CSI drivers), made here as several FUSE mounts of one directory (`bindfs`): a lock taken
//! through one mount is invisible through another, while renames and files are shared.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::servers::free_port;
use crate::support::*;

/// FUSE mounts of one directory, each its own client: unmounted when dropped.
pub(crate) struct Mounts {
    pub points: Vec<PathBuf>,
    /// The FUSE daemons: stopping one (SIGSTOP) stalls its mount, as a hung NFS server would.
    pub daemons: Vec<Group>,
}

impl Mounts {
    pub(crate) fn of(shared: &Path, scratch: &Scratch, count: usize) -> Option<Mounts> {
        if !nix::unistd::geteuid().is_root() || !Path::new("/dev/fuse").exists() {
            skip(
                "root and /dev/fuse, for FUSE mounts",
                "this machine has neither",
            );
            return None;
        }
        if Command::new("bindfs").arg("--version").output().is_err() {
            skip("bindfs", "it is not installed (apt-get install bindfs)");
            return None;
        }
        let mut points = Vec::new();
        let mut daemons = Vec::new();
        for i in 0..count {
            let point = scratch.path(&format!("mount-{i}"));
            fs::create_dir_all(&point).unwrap();
            daemons.push(Group::spawn(
                Command::new("bindfs")
                    .arg("-f")
                    .arg(shared)
                    .arg(&point)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null()),
            ));
            points.push(point);
        }
        for point in &points {
            wait_until(Duration::from_secs(20), "the FUSE mount", || {
                fs::read_to_string("/proc/self/mountinfo")
                    .unwrap_or_default()
                    .contains(&format!(" {} ", point.display()))
            });
        }
        Some(Mounts { points, daemons })
    }
}

impl Drop for Mounts {
    fn drop(&mut self) {
        for daemon in &self.daemons {
            let _ = nix::sys::signal::killpg(daemon.pid(), nix::sys::signal::Signal::SIGCONT);
        }
        for point in &self.points {
            let _ = Command::new("fusermount")
                .args(["-u", "-z"])
                .arg(point)
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A publisher on one mount, with its own cache; `wrapper` runs it (e.g. through strace).
fn publisher(scratch: &Scratch, wrapper: &[&str], root: &Path, url: &str, extra: &[&str]) -> Group {
    let id = rand::random::<u32>();
    let log = scratch.path(&format!("publisher-{id}.log"));
    Group::spawn(
        dagsnap_via(wrapper, scratch.tmp.path())
            .args([
                "sync", "--repo", url, "--ref", "main", "--period", "200ms", "--root",
            ])
            .arg(root)
            .arg("--cache-dir")
            .arg(scratch.path(&format!("cache-{id}")))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap()),
    )
}

fn log_of(scratch: &Scratch, group: &Group) -> String {
    let _ = group;
    // Every publisher's log is in the scratch directory; the story reads them all.
    fs::read_dir(scratch.tmp.path())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("publisher-"))
        .map(|e| fs::read_to_string(e.path()).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// What a poller saw through the link: when, and the commit it resolved to (`None`: dangling).
type Looks = Vec<(Instant, Option<String>)>;

#[test]
fn publishers_on_a_volume_whose_locks_do_not_travel_never_break_readers_and_say_so() {
    let scratch = Scratch::new();
    let shared = scratch.path("volume");
    fs::create_dir_all(&shared).unwrap();
    let Some(mounts) = Mounts::of(&shared, &scratch, 4) else {
        return;
    };
    let remote = Remote::new();
    let mut commits = vec![remote.commit(&[("dags/a.py", "0\n")], "start")];
    let url = remote.url();
    let roots: Vec<PathBuf> = mounts.points.iter().map(|p| p.join("root")).collect();
    let real_root = shared.join("root");

    // Three publishers, one per mount; the third stalls 300 ms in every rename (its link swap
    // among them), as a CPU-throttled pod does between deciding and swapping.
    let port = free_port();
    let bind = format!("127.0.0.1:{port}");
    let p1 = publisher(&scratch, &[], &roots[0], &url, &["--http-bind", &bind]);
    let p2 = publisher(&scratch, &[], &roots[1], &url, &[]);
    let strace = [
        "strace",
        "-f",
        "-qq",
        "-o",
        "/dev/null",
        "-e",
        "trace=rename,renameat,renameat2",
        "-e",
        "inject=rename,renameat,renameat2:delay_enter=300000",
    ];
    let p3 = publisher(&scratch, &strace, &roots[2], &url, &[]);
    wait_until(Duration::from_secs(60), "the first publish", || {
        published(&real_root).as_deref() == Some(commits[0].as_str())
    });

    // A fast poller of the link, and readers, on the volume itself.
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Arc<Mutex<Looks>> = Arc::new(Mutex::new(Vec::new()));
    let poller = {
        let (stop, seen, link) = (stop.clone(), seen.clone(), real_root.join("current"));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let shown = fs::read_link(&link)
                    .ok()
                    .filter(|_| link.join(".").is_dir())
                    .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()));
                seen.lock().unwrap().push((Instant::now(), shown));
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let contents = Arc::new(Mutex::new(vec!["0\n".to_string()]));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (stop, contents, failures, file) = (
                stop.clone(),
                contents.clone(),
                failures.clone(),
                real_root.join("current/dags/a.py"),
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match fs::read_to_string(&file) {
                        Ok(text) if contents.lock().unwrap().contains(&text) => {}
                        other => failures.lock().unwrap().push(format!("{other:?}")),
                    }
                }
            })
        })
        .collect();

    // The remote moves on while the publishers find out about their locks.
    for n in 1..=8 {
        contents.lock().unwrap().push(format!("{n}\n"));
        commits.push(remote.commit(&[("dags/a.py", &format!("{n}\n"))], &format!("change {n}")));
        std::thread::sleep(Duration::from_millis(400));
    }
    // Every publisher has found out (their records say so at once).
    wait_until(
        Duration::from_secs(60),
        "every publisher to report the locks",
        || {
            let out = dagsnap(scratch.tmp.path())
                .args(["status", "--json", "--root"])
                .arg(&real_root)
                .output()
                .unwrap();
            serde_json::from_slice::<serde_json::Value>(&out.stdout)
                .ok()
                .and_then(|s| s["publishers"].as_array().cloned())
                .is_some_and(|p| {
                    p.iter()
                        // Their locks are invisible here too: "running" cannot tell.
                        .filter(|p| p["stopped_at"].is_null() && p["lock_fault"].is_string())
                        .count()
                        == 3
                })
        },
    );
    assert!(log_of(&scratch, &p1).contains("locks on this volume do not reach another publisher"));

    // Status says so, from the records; the metrics too.
    let out = dagsnap(scratch.tmp.path())
        .args(["status", "--json", "--root"])
        .arg(&real_root)
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let faults = status["publishers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["lock_fault"].is_string())
        .count();
    assert!(faults >= 2, "status shows the lock faults: {status}");
    let (_, metrics) = http("GET", &format!("http://{bind}/metrics"), &[], b"");
    assert_eq!(metric(&metrics, "dagsnap_lock_fault"), 1.0, "{metrics}");

    // An operator's pin holds.
    let out = dagsnap(scratch.tmp.path())
        .args(["pin", "--reason", "incident", "--root"])
        .arg(&roots[3])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let pinned = published(&real_root).unwrap();
    let pinned_at = Instant::now();
    // Readers look at the link for a while after the pin (what they saw is checked below).
    wait_until(Duration::from_secs(30), "200 looks after the pin", || {
        let looks = seen.lock().unwrap();
        looks.iter().filter(|(at, _)| *at > pinned_at).count() >= 200
    });

    // A publisher of another configuration, through a fourth mount where no lock is visible,
    // builds its snapshot and takes nothing over: the operator's pin holds the root.
    remote.git(&["branch", "other"]);
    let out = dagsnap(scratch.tmp.path())
        .args([
            "sync",
            "--one-time",
            "--repo",
            &url,
            "--ref",
            "other",
            "--root",
        ])
        .arg(&roots[3])
        .arg("--cache-dir")
        .arg(scratch.path("cache-other"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("takes it over at its first publish")
            && !stderr(&out).contains("follows this configuration from now on"),
        "{}",
        stderr(&out)
    );
    let out = dagsnap(scratch.tmp.path())
        .args(["status", "--json", "--root"])
        .arg(&real_root)
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        status["ref"], "main",
        "the root still follows main: {status}"
    );

    stop.store(true, Ordering::Relaxed);
    poller.join().unwrap();
    for reader in readers {
        reader.join().unwrap();
    }
    drop((p1, p2, p3));

    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} reads failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    let seen = seen.lock().unwrap();
    let dangling = seen.iter().filter(|(_, shown)| shown.is_none()).count();
    assert_eq!(
        dangling,
        0,
        "the link dangled in {dangling} of {} looks",
        seen.len()
    );
    let order = |commit: &str| commits.iter().position(|c| c == commit);
    let mut highest = 0;
    for (at, shown) in seen.iter() {
        let position = order(shown.as_deref().unwrap()).expect("a commit of the remote");
        if *at > pinned_at {
            assert_eq!(shown.as_deref(), Some(pinned.as_str()), "the pin holds");
            continue;
        }
        assert!(position >= highest, "the link moved backward: {:?}", shown);
        highest = position;
    }
    let _ = fs::set_permissions(&shared, fs::Permissions::from_mode(0o755));
}

#[test]
fn a_link_moved_off_the_pin_or_the_newest_publication_is_put_back() {
    let remote = Remote::new();
    let scratch = Scratch::new();
    let versions = publish_versions(&remote, &scratch, 3, "v");
    let link = scratch.root().join("current");
    let daemon = spawn_loop(
        &scratch,
        &remote.url(),
        &["--period", "100ms", "--log-level", "dagsnap=debug"],
    );
    wait_until(Duration::from_secs(30), "the loop", || {
        daemon.logs().contains("dagsnap sync starting")
    });
    // A late swap from a publisher that decided before the newest publication.
    let older = Path::new(SNAPSHOTS).join(&versions[0]);
    let temp = scratch.root().join("late-link");
    std::os::unix::fs::symlink(&older, &temp).unwrap();
    fs::rename(&temp, &link).unwrap();
    daemon.wait_for_commit(&scratch.root(), &versions[2], Duration::from_secs(10));
    // The log line follows the swap.
    wait_until(Duration::from_secs(10), "the correction's log line", || {
        daemon.logs().contains("put it back")
    });
    assert_eq!(journal_commits(&scratch.root()).last(), Some(&versions[2]));

    // An operator pins the middle one; something moves the link off it; it comes back.
    let out = dagsnap(scratch.tmp.path())
        .args(["pin", &versions[1], "--root"])
        .arg(scratch.root())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    std::os::unix::fs::symlink(Path::new(SNAPSHOTS).join(&versions[2]), &temp).unwrap();
    fs::rename(&temp, &link).unwrap();
    daemon.wait_for_commit(&scratch.root(), &versions[1], Duration::from_secs(10));
    // The loop's next cycles found the pin and left the link on it.
    let held = ["pinned; link left alone"];
    daemon.wait_for_lines(&held, daemon.log_lines(&held) + 2, Duration::from_secs(10));
    assert_eq!(
        published(&scratch.root()).as_deref(),
        Some(versions[1].as_str()),
        "the pin holds"
    );
}
