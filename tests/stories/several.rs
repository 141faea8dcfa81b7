//! Several repositories, one snapshot: DAGs, plugins and a shared library that always go live
//! together (`--source NAME=URL`).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::servers::{free_port, Door, HttpServer, SshServer};
use crate::support::*;

const NAMES: [&str; 3] = ["dags", "lib", "plugins"];

/// Three repositories, each with a marker file saying which generation it is at.
pub(crate) struct Three {
    pub(crate) remotes: BTreeMap<&'static str, Remote>,
    /// Per source, the commit of each generation.
    pub(crate) generations: BTreeMap<&'static str, Vec<String>>,
}

impl Three {
    pub(crate) fn new() -> Three {
        let mut three = Three {
            remotes: NAMES.iter().map(|n| (*n, Remote::new())).collect(),
            generations: BTreeMap::new(),
        };
        for name in NAMES {
            three.advance(name, 0);
        }
        three
    }

    /// Commit `files` into `name` as its next generation.
    pub(crate) fn commit_files(
        &mut self,
        name: &'static str,
        files: &[(String, String)],
        generation: usize,
    ) -> String {
        let files: Vec<(&str, &str)> = files
            .iter()
            .map(|(p, c)| (p.as_str(), c.as_str()))
            .collect();
        let commit = self.remotes[name].commit(&files, &format!("{name} {generation}"));
        self.generations
            .entry(name)
            .or_default()
            .push(commit.clone());
        commit
    }

    fn advance(&mut self, name: &'static str, generation: usize) -> String {
        let commit = self.remotes[name].commit(
            &[
                ("marker.txt", &format!("{generation}\n")),
                (
                    &format!("{name}_module.py"),
                    &format!("GENERATION = {generation}\n"),
                ),
            ],
            &format!("{name} {generation}"),
        );
        self.generations
            .entry(name)
            .or_default()
            .push(commit.clone());
        commit
    }

    /// `--source NAME=URL` for each.
    pub(crate) fn args(&self) -> Vec<String> {
        self.remotes
            .iter()
            .flat_map(|(name, remote)| ["--source".to_string(), format!("{name}={}", remote.url())])
            .collect()
    }

    /// The generation of `name` that `commit` is.
    fn generation(&self, name: &str, commit: &str) -> usize {
        self.generations[name]
            .iter()
            .position(|c| c == commit)
            .unwrap_or_else(|| panic!("{commit} is no commit of {name}"))
    }
}

/// `dagsnap sync` with `args` (no `--repo`) into the scratch root.
fn sources_command(scratch: &Scratch, cache: &Path, args: &[String]) -> Command {
    let mut cmd = dagsnap(scratch.tmp.path());
    cmd.arg("sync")
        .arg("--root")
        .arg(scratch.root())
        .arg("--cache-dir")
        .arg(cache)
        .args(args);
    cmd
}

fn sync_sources_once(scratch: &Scratch, args: &[String]) -> Output {
    sources_command(scratch, &scratch.cache(), args)
        .arg("--one-time")
        .output()
        .unwrap()
}

pub(crate) fn spawn_sources(scratch: &Scratch, cache: &Path, args: &[String]) -> Daemon {
    let log = scratch.path(&format!(
        "daemon-{}.log",
        cache.file_name().unwrap().to_string_lossy()
    ));
    Daemon::start(&mut sources_command(scratch, cache, args), log)
}

/// What the manifest of snapshot `name` lists: source name to commit.
pub(crate) fn manifest_sources(root: &Path, snapshot: &str) -> BTreeMap<String, String> {
    let text = fs::read_to_string(root.join(format!(".dagsnap/manifests/{snapshot}.json")))
        .unwrap_or_else(|e| panic!("manifest of {snapshot}: {e}"));
    let manifest: serde_json::Value = serde_json::from_str(&text).unwrap();
    manifest["sources"]
        .as_array()
        .expect("a manifest of several sources lists them")
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["commit"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// One reader pass: resolve the link once, read every source's marker from that snapshot.
fn read_set(root: &Path) -> Result<(String, BTreeMap<String, usize>), String> {
    let target = fs::read_link(root.join("current")).map_err(|e| format!("the link: {e}"))?;
    let snapshot: PathBuf = root.join(&target);
    let name = target.file_name().unwrap().to_string_lossy().into_owned();
    let mut seen = BTreeMap::new();
    for source in NAMES {
        let marker = fs::read_to_string(snapshot.join(source).join("marker.txt"))
            .map_err(|e| format!("{source}/marker.txt in {name}: {e}"))?;
        let generation = marker
            .trim()
            .parse()
            .map_err(|_| format!("{source}/marker.txt in {name} reads {marker:?}"))?;
        seen.insert(source.to_string(), generation);
    }
    Ok((name, seen))
}

#[test]
fn three_repositories_committed_in_lockstep_reach_readers_only_as_sets_a_snapshot_lists() {
    let mut three = Three::new();
    let scratch = Scratch::new();
    let root = scratch.root();
    // Every snapshot is kept, so that each one a reader saw can be looked up at the end.
    let mut args = three.args();
    args.extend(["--period", "50ms", "--keep", "1000"].map(String::from));
    let mut daemon = spawn_sources(&scratch, &scratch.cache(), &args);
    wait_until(
        Duration::from_secs(60),
        "the first set is published",
        || published(&root).is_some(),
    );

    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (root, stop, seen, failures) =
                (root.clone(), stop.clone(), seen.clone(), failures.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match read_set(&root) {
                        Ok(set) => seen.lock().unwrap().push(set),
                        Err(e) => failures.lock().unwrap().push(e),
                    }
                }
            })
        })
        .collect();

    // Generation k is committed into dags, lib and plugins one after the other, so a poll
    // can find any mix of k-1 and k: what readers see must still be one snapshot's set.
    let last = 40;
    for generation in 1..=last {
        for name in NAMES {
            three.advance(name, generation);
            std::thread::sleep(Duration::from_millis(15));
        }
    }
    let tips: BTreeMap<String, String> = NAMES
        .iter()
        .map(|n| (n.to_string(), three.generations[n][last].clone()))
        .collect();
    wait_until(Duration::from_secs(120), "every source at its tip", || {
        published(&root).is_some_and(|s| manifest_sources(&root, &s) == tips)
    });
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        reader.join().unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "reader failures: {:?}",
        &failures[..failures.len().min(5)]
    );

    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.len() > 100,
        "readers made progress: {} passes",
        seen.len()
    );
    let mut sets = BTreeMap::new();
    for (snapshot, markers) in &seen {
        let listed = sets
            .entry(snapshot.clone())
            .or_insert_with(|| manifest_sources(&root, snapshot));
        let listed: BTreeMap<String, usize> = listed
            .iter()
            .map(|(name, commit)| (name.clone(), three.generation(name, commit)))
            .collect();
        assert_eq!(
            &listed, markers,
            "a reader of {snapshot} saw a set its manifest does not list"
        );
    }
    assert!(sets.len() > 3, "the link moved: {} sets seen", sets.len());

    // Never backward, source by source.
    let mut previous: Option<BTreeMap<String, usize>> = None;
    for snapshot in journal_commits(&root) {
        let now: BTreeMap<String, usize> = manifest_sources(&root, &snapshot)
            .iter()
            .map(|(name, commit)| (name.clone(), three.generation(name, commit)))
            .collect();
        if let Some(before) = &previous {
            for name in NAMES {
                assert!(
                    before[name] <= now[name],
                    "{name} went backward: {before:?} then {now:?}"
                );
            }
        }
        previous = Some(now);
    }
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(
        daemon.wait(Duration::from_secs(30)).success(),
        "{}",
        daemon.logs()
    );
    let status = on_root(&scratch, &["status"]);
    let text = stdout(&status);
    for name in NAMES {
        let short = &three.generations[name][last][..12];
        assert!(
            text.contains(&format!("source {name} at {short}")),
            "status shows {name}'s commit:\n{text}"
        );
    }
}

#[test]
fn a_failing_source_keeps_the_last_good_snapshot_live_and_is_named() {
    let mut three = Three::new();
    let scratch = Scratch::new();
    let root = scratch.root();
    let port = free_port();
    let mut args = three.args();
    let bind = format!("127.0.0.1:{port}");
    args.extend(["--period", "100ms", "--http-bind", &bind].map(String::from));
    let mut daemon = spawn_sources(&scratch, &scratch.cache(), &args);
    wait_until(Duration::from_secs(60), "the first set", || {
        published(&root).is_some()
    });
    let good = published(&root).unwrap();

    // The plugins repository goes away (a deleted project, a revoked token); DAGs move on.
    let plugins = three.remotes["plugins"].dir.clone();
    let moved = plugins.with_extension("gone");
    fs::rename(&plugins, &moved).unwrap();
    three.advance("dags", 1);
    daemon.wait_for_lines(&["source 'plugins'"], 2, Duration::from_secs(60));
    assert_eq!(
        published(&root).as_deref(),
        Some(good.as_str()),
        "the last good set stays live"
    );
    let metrics = http("GET", &format!("http://{bind}/metrics"), &[], b"").1;
    assert!(
        metric(
            &metrics,
            r#"dagsnap_source_consecutive_failures{source="plugins"}"#
        ) >= 1.0,
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            r#"dagsnap_source_consecutive_failures{source="dags"}"#
        ),
        0.0,
        "the others are still observed"
    );
    let status = stdout(&on_root(&scratch, &["status"]));
    assert!(
        status.contains("source 'plugins'"),
        "status names the source:\n{status}"
    );

    // Back: the link moves once, to every source at its tip.
    fs::rename(&moved, &plugins).unwrap();
    let want: BTreeMap<String, String> = NAMES
        .iter()
        .map(|n| (n.to_string(), three.remotes[n].head()))
        .collect();
    wait_until(Duration::from_secs(60), "the new set", || {
        published(&root).is_some_and(|s| manifest_sources(&root, &s) == want)
    });
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(
        daemon.wait(Duration::from_secs(30)).success(),
        "{}",
        daemon.logs()
    );
}

#[test]
fn an_operator_may_let_the_others_go_live_with_a_failing_sources_last_commit() {
    let mut three = Three::new();
    let scratch = Scratch::new();
    let root = scratch.root();
    let mut args = three.args();
    args.extend(["--allow-stale-source", "plugins"].map(String::from));
    assert!(sync_sources_once(&scratch, &args).status.success());
    let plugins_commit = three.remotes["plugins"].head();
    // This node's cache lost the plugins commit too: its files come from the live snapshot.
    fs::remove_dir_all(scratch.cache().join("sources/plugins")).unwrap();
    let plugins = three.remotes["plugins"].dir.clone();
    fs::rename(&plugins, plugins.with_extension("gone")).unwrap();
    let dags = three.advance("dags", 1);

    let out = sync_sources_once(&scratch, &args);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--allow-stale-source"),
        "{}",
        stderr(&out)
    );
    let live = published(&root).unwrap();
    let listed = manifest_sources(&root, &live);
    assert_eq!(listed["dags"], dags);
    assert_eq!(listed["plugins"], plugins_commit);
    let manifest =
        fs::read_to_string(root.join(format!(".dagsnap/manifests/{live}.json"))).unwrap();
    assert!(
        manifest.contains("\"stale\": true") || manifest.contains("\"stale\":true"),
        "{manifest}"
    );
    assert_eq!(read_current(&root, "plugins/marker.txt"), "0\n");
    assert_eq!(read_current(&root, "dags/marker.txt"), "1\n");
    let list = stdout(&on_root(&scratch, &["list"]));
    assert!(list.contains("stale"), "{list}");

    // Without the flag the same failure publishes nothing.
    three.advance("dags", 2);
    let strict: Vec<String> = three.args();
    let out = sync_sources_once(&scratch, &strict);
    assert_one_clear_line(&out, 1, "source 'plugins'");
    assert_eq!(published(&root), Some(live));
}

#[test]
fn rolling_back_restores_every_source_and_pins_the_set() {
    let mut three = Three::new();
    let scratch = Scratch::new();
    let root = scratch.root();
    let args = three.args();
    assert!(sync_sources_once(&scratch, &args).status.success());
    let first = published(&root).unwrap();
    for name in NAMES {
        three.advance(name, 1);
    }
    let out = sync_sources_once(&scratch, &args);
    assert!(out.status.success(), "{}", stderr(&out));
    let second = published(&root).unwrap();
    assert_ne!(first, second);
    for name in NAMES {
        assert_eq!(read_current(&root, &format!("{name}/marker.txt")), "1\n");
    }

    let out = on_root(
        &scratch,
        &["rollback", "--reason", "plugins 1 breaks the scheduler"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(published(&root).as_deref(), Some(first.as_str()));
    for name in NAMES {
        assert_eq!(
            read_current(&root, &format!("{name}/marker.txt")),
            "0\n",
            "{name}"
        );
    }
    // The pin holds against the loop, which still sees the new set.
    assert!(sync_sources_once(&scratch, &args).status.success());
    assert_eq!(published(&root).as_deref(), Some(first.as_str()));
    let log = stdout(&on_root(&scratch, &["log"]));
    assert!(
        log.contains(&format!(
            "source plugins at {}",
            &three.generations["plugins"][0][..12]
        )),
        "{log}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&stdout(&on_root(&scratch, &["log", "--json"]))).unwrap();
    assert_eq!(
        json[0]["sources"][2]["name"], "plugins",
        "log --json lists the sources: {json}"
    );
    assert!(on_root(&scratch, &["unpin"]).status.success());
    assert!(sync_sources_once(&scratch, &args).status.success());
    assert_eq!(published(&root).as_deref(), Some(second.as_str()));
}

#[test]
fn the_sources_come_from_a_file_and_each_lands_in_its_folder() {
    let three = Three::new();
    let scratch = Scratch::new();
    let root = scratch.root();
    let file = scratch.path("sources.yaml");
    let mut yaml = String::from("sources:\n");
    for (name, remote) in &three.remotes {
        yaml.push_str(&format!("  - name: {name}\n    url: {}\n", remote.url()));
    }
    yaml.push_str("    ref: main\n");
    fs::write(&file, yaml).unwrap();
    let out = sync_sources_once(
        &scratch,
        &["--sources-file".to_string(), file.display().to_string()],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_root_valid(&root);
    let entries: Vec<String> = fs::read_dir(root.join("current"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(entries, NAMES);
    assert_eq!(read_current(&root, "lib/lib_module.py"), "GENERATION = 0\n");
}

#[test]
fn mistakes_in_the_sources_are_one_clear_line_before_anything_is_written() {
    let three = Three::new();
    let scratch = Scratch::new();
    let secret = scratch.path("token");
    fs::write(&secret, "t0ken-value\n").unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            [
                three.args(),
                vec!["--repo".into(), three.remotes["dags"].url()],
            ]
            .concat(),
            "--repo",
        ),
        (
            [
                three.args(),
                vec!["--source-ref".into(), "plugin=main".into()],
            ]
            .concat(),
            "'plugin'",
        ),
        (
            [
                three.args(),
                vec!["--password-file".into(), secret.display().to_string()],
            ]
            .concat(),
            "--source-password-file",
        ),
        (
            [three.args(), vec!["--subdir".into(), "dags".into()]].concat(),
            "--source-subdir",
        ),
        (
            vec![
                "--source".into(),
                format!(".dagsnap={}", three.remotes["dags"].url()),
            ],
            "source name",
        ),
        (
            [
                three.args(),
                vec![
                    "--source".into(),
                    format!("dags={}", three.remotes["lib"].url()),
                ],
            ]
            .concat(),
            "twice",
        ),
    ];
    for (args, needle) in cases {
        let out = sync_sources_once(&scratch, &args);
        assert!(!out.status.success(), "{args:?} was accepted");
        let said = stderr(&out);
        assert!(said.contains(needle), "{args:?}: {said}");
        assert!(!scratch.root().exists(), "{args:?} wrote the root");
    }
}

#[test]
fn each_source_s_credentials_reach_only_its_own_server() {
    let a = HttpServer::start_with(false, "dags-user", "dags-secret-1");
    let b = HttpServer::start_with(false, "plugins-user", "plugins-secret-2");
    let (dags, plugins) = (Remote::new(), Remote::new());
    dags.commit(&[("dag.py", "x = 1\n")], "dags");
    plugins.commit(&[("plugin.py", "y = 1\n")], "plugins");
    a.serve(&dags.dir, "dags.git");
    b.serve(&plugins.dir, "plugins.git");
    let scratch = Scratch::new();
    let (file_a, file_b) = (scratch.path("a"), scratch.path("b"));
    fs::write(&file_a, "dags-secret-1\n").unwrap();
    fs::write(&file_b, "plugins-secret-2\n").unwrap();
    let args: Vec<String> = [
        "--source",
        &format!("dags={}", a.url(Door::Private, "dags.git")),
        "--source",
        &format!("plugins={}", b.url(Door::Private, "plugins.git")),
        "--source-username",
        "dags=dags-user",
        "--source-password-file",
        &format!("dags={}", file_a.display()),
        "--source-username",
        "plugins=plugins-user",
        "--source-password-file",
        &format!("plugins={}", file_b.display()),
        "--allow-insecure-http-credentials",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = sync_sources_once(&scratch, &args);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        read_current(&scratch.root(), "plugins/plugin.py"),
        "y = 1\n"
    );
    let (log_a, log_b) = (a.access_log(), b.access_log());
    assert!(
        log_a.contains("dags-user") && log_b.contains("plugins-user"),
        "{log_a}\n{log_b}"
    );
    assert!(
        !log_a.contains("plugins-user"),
        "dags' server saw the plugins user:\n{log_a}"
    );
    assert!(
        !log_b.contains("dags-user"),
        "plugins' server saw the dags user:\n{log_b}"
    );
    let said = stderr(&out);
    assert!(!said.contains("secret-"), "a password was printed: {said}");
}

#[test]
fn the_check_sees_the_whole_set_and_keeps_dags_ahead_of_their_library_out() {
    let mut three = Three::new();
    let scratch = Scratch::new();
    let root = scratch.root();
    // The operator's check runs in the set's snapshot: here, DAGs must not be ahead of the
    // library they import.
    let mut args = three.args();
    args.extend(
        [
            "--check-command",
            r#"test "$(cat lib/marker.txt)" -ge "$(cat dags/marker.txt)""#,
        ]
        .map(String::from),
    );
    assert!(sync_sources_once(&scratch, &args).status.success());
    let first = published(&root).unwrap();
    three.advance("dags", 1);
    // Rejected: the last good set stays live (an init container still exits 0 over it).
    let out = sync_sources_once(&scratch, &args);
    assert!(
        stderr(&out).contains("the check rejected"),
        "{}",
        stderr(&out)
    );
    assert_eq!(published(&root), Some(first));
    three.advance("lib", 1);
    let out = sync_sources_once(&scratch, &args);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(read_current(&root, "dags/marker.txt"), "1\n");
    assert_eq!(read_current(&root, "lib/marker.txt"), "1\n");
}

#[test]
fn a_root_that_published_one_repository_moves_to_a_set_of_sources_in_one_step() {
    let three = Three::new();
    let scratch = Scratch::new();
    let root = scratch.root();
    let out = sync_once(&scratch, &three.remotes["dags"].url(), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(read_current(&root, "marker.txt"), "0\n");
    // The new configuration takes the root over: the link moves once, to the whole set.
    let out = sources_command(&scratch, &scratch.path("cache-sources"), &three.args())
        .arg("--one-time")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_root_valid(&root);
    for name in NAMES {
        assert_eq!(read_current(&root, &format!("{name}/marker.txt")), "0\n");
    }
    let status = stdout(&on_root(&scratch, &["status"]));
    assert!(status.contains("follows:     dags="), "{status}");
}

/// `ssh-keygen -lf`: the key's SHA-256 fingerprint, as sshd logs it.
fn fingerprint_of(key: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(key.with_extension("pub"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string()
}

#[test]
fn each_source_s_ssh_key_is_offered_only_to_its_own_server() {
    let (one, two) = (SshServer::start(), SshServer::start());
    let (dags, lib) = (Remote::new(), Remote::new());
    dags.commit(&[("dag.py", "x = 1\n")], "dags");
    lib.commit(&[("helper.py", "y = 1\n")], "lib");
    let (dags_path, lib_path) = (
        one.serve(&dags.dir, "dags.git"),
        two.serve(&lib.dir, "lib.git"),
    );
    let scratch = Scratch::new();
    let known = scratch.path("known_hosts");
    let hosts = [&one, &two]
        .iter()
        .map(|s| fs::read_to_string(&s.known_hosts).unwrap())
        .collect::<String>();
    fs::write(&known, hosts).unwrap();
    let args: Vec<String> = [
        "--source".to_string(),
        format!("dags={}", one.url_of(&dags_path)),
        "--source".into(),
        format!("lib={}", two.url_of(&lib_path)),
        "--source-ssh-key-file".into(),
        format!("dags={}", one.client_key.display()),
        "--source-ssh-key-file".into(),
        format!("lib={}", two.client_key.display()),
        "--ssh-known-hosts-file".into(),
        known.display().to_string(),
    ]
    .to_vec();
    let out = sync_sources_once(&scratch, &args);
    assert!(
        out.status.success(),
        "{}\n{}\n{}",
        stderr(&out),
        one.log(),
        two.log()
    );
    assert_eq!(read_current(&scratch.root(), "lib/helper.py"), "y = 1\n");
    let (key_one, key_two) = (
        fingerprint_of(&one.client_key),
        fingerprint_of(&two.client_key),
    );
    let (log_one, log_two) = (one.log(), two.log());
    assert!(
        log_one.contains(&key_one) && log_two.contains(&key_two),
        "{log_one}\n{log_two}"
    );
    assert!(
        !log_one.contains(&key_two),
        "dags' server was offered lib's key:\n{log_one}"
    );
    assert!(
        !log_two.contains(&key_one),
        "lib's server was offered dags' key:\n{log_two}"
    );
}

#[test]
fn the_loop_repairs_a_damaged_set_of_sources_in_place_of_the_same_name() {
    let three = Three::new();
    let scratch = Scratch::new();
    let root = scratch.root();
    let mut args = three.args();
    args.extend(["--period", "50ms", "--verify-period", "200ms"].map(String::from));
    let daemon = spawn_sources(&scratch, &scratch.cache(), &args);
    wait_until(Duration::from_secs(60), "the first set", || {
        published(&root).is_some()
    });
    let set = published(&root).unwrap();
    // Someone edits a library file in place in the live snapshot (as root can).
    let file = root.join("current/lib/marker.txt");
    fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    fs::write(&file, "edited in place\n").unwrap();
    wait_until(Duration::from_secs(60), "the loop repairs the set", || {
        daemon.logs().contains("repaired the live snapshot")
    });
    assert_eq!(published(&root), Some(set.clone()), "the same set, rebuilt");
    assert_eq!(read_current(&root, "lib/marker.txt"), "0\n");
    assert_eq!(on_root(&scratch, &["verify"]).status.code(), Some(0));
    assert!(!daemon.logs().contains("ERROR"), "{}", daemon.logs());
}
