//! Fixtures for the operator stories: real git repositories built with the git CLI, the real
//! dagsnap binary, and checks of what a reader of the root would see.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub(crate) const SNAPSHOTS: &str = ".dagsnap/snapshots";

pub(crate) use crate::repo::{git, Remote, TreeFile};

/// A scratch area for one story: a root, a cache, and a HOME that is not the developer's.
pub(crate) struct Scratch {
    pub tmp: tempfile::TempDir,
}

impl Scratch {
    pub(crate) fn new() -> Scratch {
        Scratch {
            tmp: tempfile::tempdir().unwrap(),
        }
    }
    pub(crate) fn root(&self) -> PathBuf {
        self.tmp.path().join("root")
    }
    pub(crate) fn cache(&self) -> PathBuf {
        self.tmp.path().join("cache")
    }
    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }
}

/// The dagsnap binary with a clean environment: no DAGSNAP_* from the developer's shell, text
/// logs, a private HOME, no stdin.
pub(crate) fn dagsnap(home: &Path) -> Command {
    dagsnap_via(&[], home)
}

/// [`dagsnap`] run through a wrapper such as `["unshare", "-n"]` or `["setpriv", ...]`.
pub(crate) fn dagsnap_via(wrapper: &[&str], home: &Path) -> Command {
    program_via(wrapper, Path::new(env!("CARGO_BIN_EXE_dagsnap")), home)
}

/// The dagsnap binary under the name `git-sync` (a symlink in `home`, as an image that replaces
/// git-sync's has it), with [`dagsnap`]'s clean environment and no GITSYNC_* or GIT_* settings
/// from the developer's shell.
pub(crate) fn git_sync_via(wrapper: &[&str], home: &Path) -> Command {
    let bin = home.join("bin");
    fs::create_dir_all(&bin).unwrap();
    let link = bin.join("git-sync");
    if fs::symlink_metadata(&link).is_err() {
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_dagsnap"), &link).unwrap();
    }
    let mut cmd = program_via(wrapper, &link, home);
    for (key, _) in std::env::vars_os() {
        let name = key.to_string_lossy().to_ascii_uppercase();
        if name.starts_with("GITSYNC_") || name.starts_with("GIT_SYNC_") || name.starts_with("GIT_")
        {
            cmd.env_remove(key);
        }
    }
    cmd.env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1");
    cmd
}

fn program_via(wrapper: &[&str], binary: &Path, home: &Path) -> Command {
    let mut cmd = match wrapper.split_first() {
        None => Command::new(binary),
        Some((program, args)) => {
            let mut cmd = Command::new(program);
            cmd.args(args).arg(binary);
            cmd
        }
    };
    for (key, _) in std::env::vars_os() {
        let name = key.to_string_lossy().to_ascii_uppercase();
        // Nothing from the developer's shell: no settings, no proxy between us and 127.0.0.1,
        // no Python bytecode settings (the check's defaults are dagsnap's to set).
        if name.starts_with("DAGSNAP_")
            || name.ends_with("_PROXY")
            || name.starts_with("PYTHONDONTWRITEBYTECODE")
            || name.starts_with("PYTHONPYCACHEPREFIX")
        {
            cmd.env_remove(key);
        }
    }
    cmd.env("HOME", home)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("DAGSNAP_LOG_FORMAT", "text")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    cmd
}

/// `dagsnap sync --one-time` of `repo` into the scratch root, with extra arguments.
pub(crate) fn sync_once(scratch: &Scratch, repo: &str, extra: &[&str]) -> Output {
    sync_once_with(scratch, &scratch.cache(), repo, extra)
}

pub(crate) fn sync_once_with(
    scratch: &Scratch,
    cache: &Path,
    repo: &str,
    extra: &[&str],
) -> Output {
    sync_once_command(scratch, cache, repo, extra)
        .output()
        .unwrap()
}

/// The command of [`sync_once_with`], for callers that add environment variables.
pub(crate) fn sync_once_command(
    scratch: &Scratch,
    cache: &Path,
    repo: &str,
    extra: &[&str],
) -> Command {
    let mut cmd = dagsnap(scratch.tmp.path());
    cmd.args(["sync", "--one-time", "--repo", repo])
        .arg("--root")
        .arg(scratch.root())
        .arg("--cache-dir")
        .arg(cache)
        .args(extra);
    cmd
}

/// Start `dagsnap sync` as a loop in the background (stderr captured to a file).
pub(crate) fn spawn_loop(scratch: &Scratch, repo: &str, extra: &[&str]) -> Daemon {
    spawn_loop_with(scratch, &scratch.cache(), repo, extra)
}

pub(crate) fn spawn_loop_with(
    scratch: &Scratch,
    cache: &Path,
    repo: &str,
    extra: &[&str],
) -> Daemon {
    spawn_loop_in_env(scratch, cache, repo, extra, &[])
}

/// [`spawn_loop_with`], with `env` added to the loop's environment.
pub(crate) fn spawn_loop_in_env(
    scratch: &Scratch,
    cache: &Path,
    repo: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Daemon {
    let log = scratch.path(&format!("daemon-{}.log", rand_suffix()));
    Daemon::start(
        dagsnap(scratch.tmp.path())
            .envs(env.iter().copied())
            .args(["sync", "--repo", repo])
            .arg("--root")
            .arg(scratch.root())
            .arg("--cache-dir")
            .arg(cache)
            .args(extra),
        log,
    )
}

/// A child process in a process group of its own, killed with everything it started when the
/// guard is dropped, so that a failed assertion never leaves a server or a loop running.
pub(crate) struct Group(pub Child);

impl Group {
    pub(crate) fn spawn(cmd: &mut Command) -> Group {
        Group(
            cmd.process_group(0)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}")),
        )
    }

    pub(crate) fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.0.id() as i32)
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        kill_group(&mut self.0);
    }
}

fn kill_group(child: &mut Child) {
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// Skip a story whose environment is missing (`what` it needs and `why` it is missing), or,
/// under the test command (`DAGSNAP_TEST_STRICT=1`, set by `scripts/test`), fail it: in CI a
/// skipped story would count as passed.
pub(crate) fn skip(what: &str, why: &str) {
    if std::env::var_os("DAGSNAP_TEST_STRICT").is_some_and(|v| v != "0") {
        panic!("this story needs {what}, but {why}; scripts/test provides it");
    }
    eprintln!("SKIPPED: this story needs {what}, but {why}");
}

/// Whether strace can trace here (it is installed and ptrace is allowed); skips the story, or
/// fails it under the test command, when it cannot.
pub(crate) fn strace_works() -> bool {
    let works = Command::new("strace")
        .args(["-f", "-qq", "-o", "/dev/null", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !works {
        skip(
            "strace that can trace",
            "strace is missing or ptrace is not allowed",
        );
    }
    works
}

fn rand_suffix() -> u64 {
    use std::time::SystemTime;
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        % 1_000_000_007
}

/// A running publisher, killed when dropped.
pub(crate) struct Daemon {
    pub child: Child,
    pub log: PathBuf,
}

impl Daemon {
    /// Start `cmd` in a process group of its own, its stderr in `log`, its stdout discarded.
    pub(crate) fn start(cmd: &mut Command, log: PathBuf) -> Daemon {
        let child = cmd
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .process_group(0)
            .spawn()
            .unwrap();
        Daemon { child, log }
    }

    pub(crate) fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }

    pub(crate) fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(self.pid(), signal).unwrap();
    }

    /// Wait for exit; panics after `timeout`.
    pub(crate) fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < timeout,
                "dagsnap did not exit within {timeout:?}; log:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, as Kubernetes stops a container: the loop must exit 0 within 30 s (panics with
    /// its log otherwise).
    pub(crate) fn stop(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let status = self.wait(Duration::from_secs(30));
        assert!(
            status.success(),
            "dagsnap exited {status}; log:\n{}",
            self.logs()
        );
    }

    /// Wait until the link points at `commit`; panics with the publisher's log after `timeout`.
    pub(crate) fn wait_for_commit(&self, root: &Path, commit: &str, timeout: Duration) {
        let start = Instant::now();
        while published(root).as_deref() != Some(commit) {
            assert!(
                start.elapsed() < timeout,
                "{commit} not published within {timeout:?} (link: {:?}); log:\n{}",
                published(root),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    pub(crate) fn logs(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many lines of the log contain every one of `parts`.
    pub(crate) fn log_lines(&self, parts: &[&str]) -> usize {
        self.logs()
            .lines()
            .filter(|line| parts.iter().all(|part| line.contains(part)))
            .count()
    }

    /// Wait until at least `times` lines of the log contain every one of `parts`: the event
    /// that proves the loop took a decision (a debug line per cycle, say), before asserting
    /// what the decision left alone. Panics with the log after `timeout`.
    pub(crate) fn wait_for_lines(&self, parts: &[&str], times: usize, timeout: Duration) {
        let start = Instant::now();
        while self.log_lines(parts) < times {
            assert!(
                start.elapsed() < timeout,
                "{times} log line(s) with {parts:?} not within {timeout:?}; log:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        kill_group(&mut self.child);
    }
}

/// `dagsnap <args> --root <the scratch root>`, run to its end: an operator's command.
pub(crate) fn on_root(scratch: &Scratch, args: &[&str]) -> Output {
    dagsnap(scratch.tmp.path())
        .args(args)
        .arg("--root")
        .arg(scratch.root())
        .output()
        .unwrap()
}

pub(crate) fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub(crate) fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The run failed with `code` and said so in exactly one error line containing `needle`
/// (nothing else, e.g. from ssh, on stderr as an error); returns that line.
pub(crate) fn assert_one_clear_line(out: &Output, code: i32, needle: &str) -> String {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "{err}");
    let error_lines: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("ERROR") || l.starts_with("error:"))
        .collect();
    assert_eq!(
        error_lines.len(),
        1,
        "exactly one error line expected:\n{err}"
    );
    assert!(
        error_lines[0].contains(needle),
        "expected {needle:?} in:\n{err}"
    );
    error_lines[0].to_string()
}

/// Commit and publish `count` versions of `a.py` with subjects `<subject> 0`, `<subject> 1`, …;
/// returns the commits, oldest first.
pub(crate) fn publish_versions(
    remote: &Remote,
    scratch: &Scratch,
    count: usize,
    subject: &str,
) -> Vec<String> {
    (0..count)
        .map(|i| {
            let commit = remote.commit(&[("a.py", &format!("{i}\n"))], &format!("{subject} {i}"));
            let out = sync_once(scratch, &remote.url(), &[]);
            assert!(out.status.success(), "{}", stderr(&out));
            commit
        })
        .collect()
}

/// Wait until `condition` holds, polling; panics with `what` after `timeout`.
pub(crate) fn wait_until(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The commit the link points at, if any.
pub(crate) fn published(root: &Path) -> Option<String> {
    fs::read_link(root.join("current"))
        .ok()
        .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
}

/// Check everything a reader and an operator rely on, and return the published commit:
/// the link points at a complete, read-only snapshot of one commit, with a manifest, no git
/// state, and no leftovers of a publish in progress.
pub(crate) fn assert_root_valid(root: &Path) -> String {
    let target = fs::read_link(root.join("current")).expect("the link exists");
    let commit = target.file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(
        target,
        Path::new(SNAPSHOTS).join(&commit),
        "link target is relative, into the store"
    );
    assert_eq!(
        commit.len(),
        40,
        "basename of the link target is the full commit id"
    );
    let snapshot = root.join(SNAPSHOTS).join(&commit);
    assert!(snapshot.is_dir(), "snapshot {commit} exists");
    let manifest: serde_json::Value = serde_json::from_slice(
        &fs::read(
            root.join(".dagsnap/manifests")
                .join(format!("{commit}.json")),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["commit"], commit.as_str());
    let mut files = 0;
    for entry in walkdir::WalkDir::new(&snapshot).follow_links(false) {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy();
        assert!(
            name != ".git" && name != "index",
            "git state inside the snapshot: {}",
            entry.path().display()
        );
        if entry.file_type().is_symlink() {
            files += 1;
            continue;
        }
        let mode = entry.metadata().unwrap().permissions().mode();
        assert_eq!(
            mode & 0o222,
            0,
            "{} is writable ({mode:o})",
            entry.path().display()
        );
        if entry.file_type().is_file() {
            files += 1;
        }
    }
    assert_eq!(
        manifest["files"].as_u64(),
        Some(files),
        "manifest counts every file"
    );
    assert_eq!(
        staging_dirs(root),
        Vec::<String>::new(),
        "no staging leftovers"
    );
    let leftovers: Vec<_> = fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".dagsnap-link-"))
        .collect();
    assert!(leftovers.is_empty(), "temporary links left: {leftovers:?}");
    commit
}

pub(crate) fn staging_dirs(root: &Path) -> Vec<String> {
    match fs::read_dir(root.join(SNAPSHOTS)) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".staging-"))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// What readers see: where the link points, and every byte and mode behind it.
pub(crate) fn reader_view(root: &Path) -> (PathBuf, BTreeMap<PathBuf, String>) {
    let target = fs::read_link(root.join("current")).expect("a published link");
    let snapshot = root.join(&target);
    (target, fingerprint(&snapshot))
}

/// Everything under `root` that a write would change: kind, mode, size, mtime, content.
pub(crate) fn fingerprint(root: &Path) -> BTreeMap<PathBuf, String> {
    use std::os::unix::fs::MetadataExt;
    let mut map = BTreeMap::new();
    for entry in walkdir::WalkDir::new(root).follow_links(false) {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        let content = if entry.file_type().is_file() {
            format!("{:x}", md5ish(&fs::read(entry.path()).unwrap()))
        } else if entry.file_type().is_symlink() {
            fs::read_link(entry.path()).unwrap().display().to_string()
        } else {
            String::new()
        };
        map.insert(
            entry.path().strip_prefix(root).unwrap().to_path_buf(),
            format!(
                "{:o} {} {}.{} {} {content}",
                meta.mode(),
                meta.len(),
                meta.mtime(),
                meta.mtime_nsec(),
                meta.ino()
            ),
        );
    }
    map
}

fn md5ish(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100000001b3)
    })
}

/// Read a file of the published snapshot through the link.
pub(crate) fn read_current(root: &Path, path: &str) -> String {
    fs::read_to_string(root.join("current").join(path)).unwrap()
}

/// Every entry under `dir`: relative path -> (kind, content or target, executable).
pub(crate) fn tree_of(dir: &Path) -> BTreeMap<Vec<u8>, (char, Vec<u8>, bool)> {
    let mut out = BTreeMap::new();
    for entry in walkdir::WalkDir::new(dir).min_depth(1).follow_links(false) {
        let entry = entry.unwrap();
        let relative = entry
            .path()
            .strip_prefix(dir)
            .unwrap()
            .as_os_str()
            .as_bytes()
            .to_vec();
        let meta = entry.path().symlink_metadata().unwrap();
        let value = if meta.file_type().is_symlink() {
            let target = fs::read_link(entry.path()).unwrap();
            ('l', target.as_os_str().as_bytes().to_vec(), false)
        } else if meta.is_dir() {
            ('d', Vec::new(), false)
        } else {
            let exec = meta.permissions().mode() & 0o111 != 0;
            ('f', fs::read(entry.path()).unwrap(), exec)
        };
        out.insert(relative, value);
    }
    out
}

/// What `git archive` of `commit` writes, extracted with tar.
pub(crate) fn git_archive(remote: &Remote, commit: &str, into: &Path) {
    fs::create_dir_all(into).unwrap();
    let mut archive = Command::new("git")
        .current_dir(&remote.dir)
        .args(["archive", "--format=tar", commit])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let status = Command::new("tar")
        .arg("-xf")
        .arg("-")
        .arg("-C")
        .arg(into)
        .stdin(archive.stdout.take().unwrap())
        .status()
        .unwrap();
    assert!(status.success() && archive.wait().unwrap().success());
}

/// The commits of the journal's link moves, oldest first.
pub(crate) fn journal_commits(root: &Path) -> Vec<String> {
    fs::read_to_string(root.join(".dagsnap/journal.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["moved_link"].as_bool().unwrap_or(true))
        .filter_map(|e| e["commit"].as_str().map(str::to_string))
        .collect()
}

/// A random number generator for a story, seeded from `DAGSNAP_TEST_SEED` or at random, its
/// seed printed so that a failure can be replayed.
pub(crate) fn seeded_rng(story: &str) -> rand::rngs::StdRng {
    use rand::SeedableRng;
    let seed = std::env::var("DAGSNAP_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("{story}: seed {seed} (replay with DAGSNAP_TEST_SEED={seed})");
    rand::rngs::StdRng::seed_from_u64(seed)
}

/// An HTTP request to the publisher's endpoints: (status, body).
pub(crate) fn http(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .no_proxy()
        .build()
        .unwrap();
    let mut request = client.request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    match request.body(body.to_vec()).send() {
        Ok(response) => {
            let status = response.status().as_u16();
            (status, response.text().unwrap_or_default())
        }
        Err(e) => (0, e.to_string()),
    }
}

/// The value of a metric series in Prometheus text (`name{labels}` exactly), or 0.
pub(crate) fn metric(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| {
            line.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// This machine's host name, as dagsnap records it.
pub(crate) fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "unknown".into())
}
