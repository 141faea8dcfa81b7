//! Real Airflow reading a dagsnap root while commits arrive: Airflow 3's DAG processor with
//! `DagsnapBundle` (integrations/airflow), beside the plain DAG folder (LocalDagBundle) for
//! comparison, and Airflow 2's DagBag through the link. Airflow comes from PyPI, in virtual
//! environments under target/tools/ that scripts/test provisions.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

pub(crate) const DAGS: usize = 40;
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/airflow");

/// A virtual environment with Airflow, provisioned by scripts/test.
pub(crate) struct Airflow {
    venv: PathBuf,
}

impl Airflow {
    pub(crate) fn find(major: u32) -> Option<Airflow> {
        let venv =
            Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("target/tools/airflow{major}"));
        if venv.join("bin/airflow").exists() {
            return Some(Airflow { venv });
        }
        skip(
            &format!("Airflow {major} in {}", venv.display()),
            "it is not installed (scripts/test installs it from PyPI)",
        );
        None
    }

    pub(crate) fn python(&self) -> PathBuf {
        self.venv.join("bin/python")
    }

    /// `airflow ...` with a private AIRFLOW_HOME and a sqlite database in it.
    pub(crate) fn command(&self, home: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(self.venv.join("bin/airflow"));
        cmd.args(args)
            .env("AIRFLOW_HOME", home)
            .env("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
            .env(
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
                format!("sqlite:///{}/airflow.db", home.display()),
            )
            // Airflow keeps bundle versions and their use under a directory of the machine's
            // (/tmp/airflow) unless told otherwise: what an earlier run left there (tracking
            // files hours old) would be cleaned up, with errors, during this one's passes.
            .env(
                "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_STORAGE_PATH",
                home.join("dag_bundles"),
            )
            // Python must not write bytecode into the snapshots (it runs as root here).
            .env("PYTHONPYCACHEPREFIX", home.join("pycache"))
            .stdin(Stdio::null());
        cmd
    }

    /// `airflow dag-processor` over the one bundle `bundle` (a dag_bundle_config_list entry),
    /// refreshing and parsing every second.
    pub(crate) fn dag_processor(&self, home: &Path, bundle: &str) -> Command {
        let mut cmd = self.command(home, &["dag-processor"]);
        cmd.env(
            "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST",
            format!("[{bundle}]"),
        )
        .env("AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL", "1")
        .env("AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL", "1")
        .env("AIRFLOW__DAG_PROCESSOR__BUNDLE_REFRESH_CHECK_INTERVAL", "1");
        cmd
    }

    pub(crate) fn migrate(&self, home: &Path) {
        fs::create_dir_all(home).unwrap();
        let out = self.command(home, &["db", "migrate"]).output().unwrap();
        assert!(out.status.success(), "airflow db migrate: {}", stderr(&out));
    }

    /// What the database says (tests/fixtures/airflow/state.py).
    pub(crate) fn state(&self, home: &Path) -> serde_json::Value {
        let out = Command::new(self.python())
            .arg(Path::new(FIXTURES).join("state.py"))
            .arg(home.join("airflow.db"))
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    }
}

/// A DAG file of commit `n`: DAG `dag_{k}`, recording `n` in its params.
fn dag_file(k: usize, n: usize) -> String {
    format!(
        "from datetime import datetime\n\
         try:\n    from airflow.sdk import DAG\nexcept ImportError:\n    from airflow import DAG\n\
         try:\n    from airflow.providers.standard.operators.empty import EmptyOperator\nexcept ImportError:\n    from airflow.operators.empty import EmptyOperator\n\
         VERSION = {n}\n\
         with DAG(dag_id='dag_{k}', start_date=datetime(2024, 1, 1), schedule=None, catchup=False, params={{'version': VERSION}}):\n    EmptyOperator(task_id='noop')\n"
    )
}

/// `count` commits of a 40-DAG repository on branch `work`, made with fast-import: every DAG
/// file changes in every commit, and one DAG file moves into or out of `dags/moved/` in each.
pub(crate) fn dag_commits(remote: &Remote, count: usize) -> Vec<String> {
    let mut stream = String::new();
    for n in 1..=count {
        stream.push_str(&format!(
            "commit refs/heads/work\nmark :{n}\ncommitter Ada Operator <ada@example.com> {} +0000\ndata <<EOM\ncommit {n}\nEOM\n",
            1_700_000_000 + n
        ));
        if n > 1 {
            stream.push_str(&format!("from :{}\n", n - 1));
        }
        stream.push_str("deleteall\n");
        for k in 0..DAGS {
            // DAG k lives in dags/moved/ during the commits whose number, divided by 40,
            // is odd for it: one DAG file moves at every commit.
            let moved = (n + k) / DAGS % 2 == 1;
            let path = if moved {
                format!("dags/moved/dag_{k}.py")
            } else {
                format!("dags/dag_{k}.py")
            };
            let body = dag_file(k, n);
            stream.push_str(&format!(
                "M 100644 inline {path}\ndata {}\n{body}\n",
                body.len()
            ));
        }
    }
    stream.push_str("done\n");
    let mut child = Command::new("git")
        .current_dir(&remote.dir)
        .args(["fast-import", "--quiet", "--done"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stream.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "fast-import");
    let log = remote.git(&["rev-list", "--reverse", "refs/heads/work"]);
    let ids: Vec<String> = log.lines().map(str::to_string).collect();
    ids[ids.len() - count..].to_vec()
}

/// Move the remote's main through `commits` every `every` while `condition` samples; returns
/// the last commit published to the remote.
fn advance(
    remote: &Remote,
    commits: &[String],
    every: Duration,
    mut sample: impl FnMut(),
) -> String {
    let mut last = commits[0].clone();
    for commit in &commits[1..] {
        remote.git(&["update-ref", "refs/heads/main", commit]);
        last = commit.clone();
        let until = Instant::now() + every;
        while Instant::now() < until {
            sample();
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    last
}

/// The churn the processor stories run under: 100 commits of the 40-DAG repository, `main` on
/// the first, published by a loop polling every 100 ms; the processor runs move `main` on.
pub(crate) struct Churn {
    pub(crate) remote: Remote,
    pub(crate) commits: Vec<String>,
    pub(crate) scratch: Scratch,
    pub(crate) root: PathBuf,
    pub(crate) daemon: Daemon,
    pub(crate) tip: String,
}

impl Churn {
    pub(crate) fn start() -> Churn {
        let remote = Remote::new();
        let commits = dag_commits(&remote, 100);
        remote.git(&["update-ref", "refs/heads/main", &commits[0]]);
        let scratch = Scratch::new();
        let root = scratch.root();
        let daemon = spawn_loop(
            &scratch,
            &remote.url(),
            &["--ref", "main", "--period", "100ms"],
        );
        daemon.wait_for_commit(&root, &commits[0], Duration::from_secs(60));
        let tip = commits.last().unwrap().clone();
        Churn {
            remote,
            commits,
            scratch,
            root,
            daemon,
            tip,
        }
    }
}

/// What one DAG-processor run under load showed.
#[derive(Debug, Default)]
pub(crate) struct Run {
    import_errors: Vec<String>,
    missing_files: usize,
    lowest_active: Option<u64>,
    versions: Vec<String>,
    end_version: Option<String>,
    end_active: u64,
    /// For each serialized DAG seen (once per DAG, label and code): how many commits its label
    /// (the bundle version it was written with) lies ahead of the commit its code is from.
    pub(crate) label_gaps: Vec<i64>,
    /// At each sample, for each DAG: how many commits the version a DAG run created then would
    /// record (the DAG's) lies ahead of the code of its latest serialized DAG (the tasks it
    /// would run).
    pub(crate) recorded_gaps: Vec<i64>,
}

/// The median and the largest of `gaps`, and how many are not zero.
pub(crate) fn gap_summary(gaps: &[i64]) -> (i64, i64, usize) {
    let mut sorted = gaps.to_vec();
    sorted.sort_unstable();
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or(0);
    let largest = sorted.iter().map(|g| g.abs()).max().unwrap_or(0);
    (median, largest, sorted.iter().filter(|g| **g != 0).count())
}

/// Airflow 3's DAG processor on the dagsnap root `root` through `bundle` (a
/// dag_bundle_config_list entry), with `env` added, while the remote moves through `commits`
/// every 300 ms.
#[allow(clippy::too_many_arguments)]
pub(crate) fn processor_run(
    airflow: &Airflow,
    scratch: &Scratch,
    name: &str,
    bundle: &str,
    remote: &Remote,
    commits: &[String],
    tip: &str,
    env: &[(&str, &str)],
) -> Run {
    let home = scratch.path(name);
    airflow.migrate(&home);
    let log = home.join("processor.log");
    let number: std::collections::HashMap<&str, i64> = commits
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i as i64 + 1))
        .collect();
    let mut labelled_seen = std::collections::HashSet::new();
    let processor = Group::spawn(
        airflow
            .dag_processor(&home, bundle)
            .envs(env.iter().copied())
            .stdout(fs::File::create(&log).unwrap())
            .stderr(Stdio::null()),
    );
    let mut run = Run::default();
    wait_until(
        Duration::from_secs(120),
        "the processor's first pass",
        || airflow.state(&home)["active"].as_u64() == Some(DAGS as u64),
    );
    let mut last_sample = Instant::now();
    let mut observe = |run: &mut Run| {
        let state = airflow.state(&home);
        for row in state["labels"].as_array().into_iter().flatten() {
            let commit = |v: &serde_json::Value| v.as_str().and_then(|c| number.get(c)).copied();
            let (Some(recorded), Some(labelled), Some(code)) =
                (commit(&row[1]), commit(&row[2]), row[3].as_i64())
            else {
                continue;
            };
            run.recorded_gaps.push(recorded - code);
            if labelled_seen.insert((row[0].to_string(), labelled, code)) {
                run.label_gaps.push(labelled - code);
            }
        }
        if let Some(active) = state["active"].as_u64() {
            run.lowest_active = Some(run.lowest_active.map_or(active, |l| l.min(active)));
        }
        for error in state["import_errors"].as_array().into_iter().flatten() {
            let error = error.as_str().unwrap_or_default().to_string();
            if !run.import_errors.contains(&error) {
                run.import_errors.push(error);
            }
        }
    };
    advance(remote, commits, Duration::from_millis(300), || {
        if last_sample.elapsed() > Duration::from_millis(500) {
            observe(&mut run);
            last_sample = Instant::now();
        }
    });
    // The processor ends on the tip, with every DAG active.
    let settled = Instant::now();
    while settled.elapsed() < Duration::from_secs(120) {
        observe(&mut run);
        let state = airflow.state(&home);
        run.end_version = state["bundle_version"].as_str().map(str::to_string);
        run.end_active = state["active"].as_u64().unwrap_or(0);
        let on_tip = run.end_version.as_deref() == Some(tip) || run.end_version.is_none();
        if on_tip
            && run.end_active == DAGS as u64
            && state["import_errors"]
                .as_array()
                .is_some_and(|e| e.is_empty())
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let state = airflow.state(&home);
    run.versions = state["dag_versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    drop(processor);
    let mut logs = fs::read_to_string(&log).unwrap_or_default();
    for entry in walkdir::WalkDir::new(home.join("logs"))
        .into_iter()
        .filter_map(Result::ok)
    {
        if entry.file_type().is_file() {
            logs.push_str(&fs::read_to_string(entry.path()).unwrap_or_default());
        }
    }
    run.missing_files = logs.matches("FileNotFoundError").count()
        + logs.matches("Skipping processing of missing file").count();
    run
}

#[test]
fn airflow_3_parses_every_pass_from_one_snapshot_while_commits_arrive() {
    let Some(airflow) = Airflow::find(3) else {
        return;
    };
    let Churn {
        remote,
        commits,
        scratch,
        root,
        daemon,
        tip,
    } = Churn::start();

    let bundle = bundle_entry(&root, &serde_json::json!({}));
    let ours = processor_run(
        &airflow,
        &scratch,
        "bundle",
        &bundle,
        &remote,
        &commits,
        &tip,
        &[],
    );
    eprintln!(
        "DagsnapBundle: import errors {:?}, {} missing-file messages, ends on {:?} with {} active; labels (median, largest, off): {:?}",
        ours.import_errors,
        ours.missing_files,
        ours.end_version,
        ours.end_active,
        gap_summary(&ours.label_gaps)
    );
    assert!(
        ours.import_errors.is_empty(),
        "import errors: {:?}",
        ours.import_errors
    );
    assert_eq!(ours.missing_files, 0, "missing-file messages");
    assert_eq!(
        ours.end_version.as_deref(),
        Some(tip.as_str()),
        "the processor ends on the tip"
    );
    assert_eq!(ours.end_active, DAGS as u64, "every DAG active at the end");
    let live = journal_commits(&root);
    for version in &ours.versions {
        assert!(
            live.contains(version),
            "bundle version {version} was never live"
        );
    }
    assert!(
        ours.versions.len() > 1,
        "DAG versions were recorded for several commits: {:?}",
        ours.versions
    );

    // The same load through the plain DAG folder, for the record (docs/benchmarks.md).
    remote.git(&["update-ref", "refs/heads/main", &commits[0]]);
    daemon.wait_for_commit(&root, &commits[0], Duration::from_secs(60));
    let folder = format!(
        r#"{{"name": "dags-folder", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle", "kwargs": {{"path": "{}"}}}}"#,
        root.join("current").display()
    );
    let plain = processor_run(
        &airflow,
        &scratch,
        "folder",
        &folder,
        &remote,
        &commits,
        &tip,
        &[],
    );
    eprintln!(
        "LocalDagBundle through the link: {} distinct import errors, {} missing-file messages, lowest active {:?}",
        plain.import_errors.len(),
        plain.missing_files,
        plain.lowest_active
    );
    eprintln!(
        "DagsnapBundle: {} import errors, {} missing-file messages, lowest active {:?}, {} bundle versions",
        ours.import_errors.len(),
        ours.missing_files,
        ours.lowest_active,
        ours.versions.len()
    );
}

#[test]
fn airflow_2_reads_through_the_link_without_empty_folders_or_half_written_files() {
    let Some(airflow) = Airflow::find(2) else {
        return;
    };
    let remote = Remote::new();
    let commits = dag_commits(&remote, 60);
    remote.git(&["update-ref", "refs/heads/main", &commits[0]]);
    let measure = |extra: &[&str]| -> serde_json::Value {
        let scratch = Scratch::new();
        let daemon = spawn_loop(
            &scratch,
            &remote.url(),
            &[&["--ref", "main", "--period", "100ms"][..], extra].concat(),
        );
        remote.git(&["update-ref", "refs/heads/main", &commits[0]]);
        daemon.wait_for_commit(&scratch.root(), &commits[0], Duration::from_secs(60));
        let home = scratch.path("airflow2");
        fs::create_dir_all(&home).unwrap();
        let passes = Command::new(airflow.python())
            .arg(Path::new(FIXTURES).join("dagbag_passes.py"))
            .arg(scratch.root().join("current"))
            .args(["15", &DAGS.to_string()])
            .env("AIRFLOW_HOME", &home)
            .env("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
            .env("AIRFLOW__CORE__UNIT_TEST_MODE", "True")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        advance(&remote, &commits[..50], Duration::from_millis(300), || {});
        let out = passes.wait_with_output().unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "dagbag_passes.py: {e}: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    };
    let plain = measure(&[]);
    let interval = measure(&["--min-publish-interval", "5s"]);
    eprintln!("Airflow 2 DagBag through the link: {plain}");
    eprintln!("... with --min-publish-interval 5s: {interval}");
    for result in [&plain, &interval] {
        assert_eq!(result["empty"], 0, "an empty folder was seen: {result}");
        assert_eq!(
            result["errors"]["syntax"], 0,
            "a half-written file was seen: {result}"
        );
        assert!(result["passes"].as_u64().unwrap() > 3, "{result}");
    }
}

#[test]
fn python_readers_running_as_root_leave_bytecode_that_verify_reports() {
    let Some(airflow) = Airflow::find(3) else {
        return;
    };
    let remote = Remote::new();
    remote.commit(&[("dags/dag_0.py", &dag_file(0, 1))], "one");
    let scratch = Scratch::new();
    assert!(sync_once(&scratch, &remote.url(), &[]).status.success());
    // Python as root ignores the read-only mode and writes __pycache__ into the snapshot.
    let import = |env: &[(&str, &str)]| {
        Command::new(airflow.python())
            .args([
                "-c",
                "import sys; sys.path.insert(0, sys.argv[1]); import dag_0",
            ])
            .arg(scratch.root().join("current/dags"))
            // Python's default, whatever the developer's shell says.
            .env_remove("PYTHONDONTWRITEBYTECODE")
            .envs(env.iter().copied())
            .env("AIRFLOW_HOME", scratch.path("airflow"))
            .output()
            .unwrap()
    };
    let prefix = scratch.path("pycache");
    let out = import(&[("PYTHONPYCACHEPREFIX", prefix.to_str().unwrap())]);
    assert!(out.status.success(), "{}", stderr(&out));
    let verify = || {
        dagsnap(scratch.tmp.path())
            .args(["verify", "--root"])
            .arg(scratch.root())
            .output()
            .unwrap()
    };
    assert!(
        verify().status.success(),
        "with PYTHONPYCACHEPREFIX nothing lands in the snapshot"
    );
    if nix::unistd::geteuid().is_root() {
        let out = import(&[]);
        assert!(out.status.success(), "{}", stderr(&out));
        let out = verify();
        assert_eq!(
            out.status.code(),
            Some(1),
            "verify reports the bytecode: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("__pycache__"),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

#[test]
fn a_task_s_bundle_version_reads_that_commit_and_leases_it_against_gc() {
    let Some(airflow) = Airflow::find(3) else {
        return;
    };
    let remote = Remote::new();
    let scratch = Scratch::new();
    let versions = publish_versions(&remote, &scratch, 3, "v");
    let root = scratch.root();
    // What a worker does for a task of a DAG run scheduled on the first commit: the bundle
    // initialized with that version, after the link moved on twice.
    let script = r#"
import json, os, sys
from dagsnap_airflow import DagsnapBundle, SnapshotGone
root, version = sys.argv[1], sys.argv[2]
out = {}
latest = DagsnapBundle(name="dags", root=root)
latest.initialize()
out["latest_path"] = os.path.realpath(latest.path)
out["latest_version"] = getattr(latest.get_current_version(), "version", latest.get_current_version())
task = DagsnapBundle(name="dags", root=root, version=version, lease_seconds=3600)
task.initialize()
out["task_path"] = str(task.path)
out["task_file"] = open(task.path / "a.py").read()
try:
    DagsnapBundle(name="dags", root=root, version="0" * 40).initialize()
except SnapshotGone as e:
    out["gone"] = str(e)
print(json.dumps(out))
"#;
    let out = Command::new(airflow.python())
        .args(["-c", script])
        .arg(&root)
        .arg(&versions[0])
        .env("AIRFLOW_HOME", scratch.path("airflow"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let snapshots = fs::canonicalize(root.join(SNAPSHOTS)).unwrap();
    assert_eq!(seen["latest_version"], versions[2].as_str());
    // The processor's path is its private view, which shows the live snapshot.
    assert_eq!(
        Path::new(seen["latest_path"].as_str().unwrap()),
        snapshots.join(&versions[2])
    );
    assert_eq!(
        seen["task_path"].as_str().unwrap(),
        root.join(SNAPSHOTS).join(&versions[0]).to_str().unwrap()
    );
    assert_eq!(
        seen["task_file"], "0\n",
        "the task reads its own commit's files"
    );
    let gone = seen["gone"].as_str().unwrap();
    assert!(
        gone.contains("--keep") && gone.contains("--grace"),
        "{gone}"
    );

    // The lease keeps the task's snapshot through a GC that would otherwise collect it.
    let gc = |scratch: &Scratch| {
        dagsnap(scratch.tmp.path())
            .args(["gc", "--keep", "0", "--grace", "0s", "--root"])
            .arg(scratch.root())
            .output()
            .unwrap()
    };
    let out = gc(&scratch);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        root.join(SNAPSHOTS).join(&versions[0]).is_dir(),
        "the leased snapshot stays"
    );
    assert!(
        !root.join(SNAPSHOTS).join(&versions[1]).exists(),
        "the unleased one goes"
    );
    // An expired lease (and a damaged one) is removed, and the snapshot with it.
    let leases = root.join(".dagsnap/leases");
    for entry in fs::read_dir(&leases).unwrap() {
        let path = entry.unwrap().path();
        let mut lease: serde_json::Value =
            serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        lease["expires_at"] = serde_json::json!(1);
        fs::write(&path, serde_json::to_vec(&lease).unwrap()).unwrap();
    }
    fs::write(leases.join("garbage.json"), "{not json").unwrap();
    let out = gc(&scratch);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!root.join(SNAPSHOTS).join(&versions[0]).exists());
    assert_eq!(
        fs::read_dir(&leases).unwrap().count(),
        0,
        "expired and damaged leases removed"
    );
}

/// The first commit of a probe repository: the probe DAG, writing into `result`, and a marker
/// file saying "first".
pub(crate) fn commit_probe(remote: &Remote, result: &Path) -> String {
    remote.commit(
        &[
            ("dags/probe.py", &probe_dag(result)),
            ("dags/marker.txt", "first\n"),
        ],
        "first",
    )
}

/// A DAG whose first task waits and whose second records which commit's files it read: it
/// writes the result whole and then names it, since the stories read the file as soon as its
/// name exists.
fn probe_dag(result: &Path) -> String {
    format!(
        "import time\nfrom datetime import datetime\nfrom pathlib import Path\nfrom airflow.sdk import DAG, task\n\n\
         with DAG(dag_id='probe', start_date=datetime(2024, 1, 1), schedule=None, catchup=False):\n\
         \x20   @task\n    def wait():\n        time.sleep(8)\n\n\
         \x20   @task\n    def read():\n        marker = (Path(__file__).parent / 'marker.txt').read_text().strip()\n        \
         partial = Path({result:?} + '.partial')\n        \
         partial.write_text(marker + ' ' + __file__)\n        \
         partial.replace({result:?})\n\n\
         \x20   wait() >> read()\n",
        result = result.display().to_string()
    )
}

#[test]
fn a_dag_run_runs_its_tasks_on_the_commit_it_started_with_after_the_link_moved_on() {
    let Some(airflow) = Airflow::find(3) else {
        return;
    };
    let scratch = Scratch::new();
    let result = scratch.path("result.txt");
    let remote = Remote::new();
    let first = commit_probe(&remote, &result);
    let root = scratch.root();
    let daemon = spawn_loop(&scratch, &remote.url(), &["--period", "200ms"]);
    daemon.wait_for_commit(&root, &first, Duration::from_secs(60));

    // The scheduler, the DAG processor and the API server of one Airflow 3 deployment, with the
    // local executor: a real DAG run, whose tasks initialize the bundle at its version.
    let home = scratch.path("airflow");
    let bundle = bundle_config(&root, &serde_json::json!({}));
    let mut deployment = Deployment::start(&airflow, &home, &bundle);
    deployment.scheduler(&airflow, &bundle);
    wait_until(Duration::from_secs(120), "the DAG to be parsed", || {
        airflow.state(&home)["dags"]
            .as_array()
            .is_some_and(|d| !d.is_empty())
    });
    deployment.run(&airflow, &["dags", "unpause", "probe"]);
    deployment.run(&airflow, &["dags", "trigger", "probe"]);
    wait_until(Duration::from_secs(120), "the first task to run", || {
        airflow.state(&home)["tasks"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t[0] == "wait" && t[1] == "running"))
    });
    let run = airflow.state(&home)["runs"][0].clone();
    assert_eq!(
        run[2],
        first.as_str(),
        "the run recorded the commit it started with: {run}"
    );

    // While it runs, a new commit goes live.
    let second = remote.commit(&[("dags/marker.txt", "second\n")], "second");
    daemon.wait_for_commit(&root, &second, Duration::from_secs(30));
    wait_until(Duration::from_secs(120), "the second task", || {
        result.exists()
    });
    let read = fs::read_to_string(&result).unwrap();
    let expected_dir = root.join(SNAPSHOTS).join(&first);
    assert!(
        read.starts_with("first "),
        "the task read the first commit's files: {read}"
    );
    assert!(
        read.contains(expected_dir.to_str().unwrap()),
        "from the first commit's snapshot: {read}"
    );
    wait_until(Duration::from_secs(60), "the run to succeed", || {
        airflow.state(&home)["runs"][0][1] == "success"
    });
}

/// A `dag_bundle_config_list` entry: a DagsnapBundle on `root`, with more `kwargs`.
pub(crate) fn bundle_entry(root: &Path, kwargs: &serde_json::Value) -> String {
    let mut kwargs = kwargs.clone();
    kwargs["root"] = serde_json::json!(root);
    serde_json::json!({"name": "dags", "classpath": "dagsnap_airflow.DagsnapBundle", "kwargs": kwargs})
        .to_string()
}

/// A `dag_bundle_config_list` of that one entry.
pub(crate) fn bundle_config(root: &Path, kwargs: &serde_json::Value) -> String {
    format!("[{}]", bundle_entry(root, kwargs))
}

/// One Airflow 3 deployment with the local executor: the API server and the DAG processor
/// (with `processor_bundles`), then ([`Deployment::scheduler`]) the scheduler, whose task
/// processes use their own bundle configuration (on Kubernetes, the workers'). Each component
/// is stopped with its process group when dropped.
pub(crate) struct Deployment {
    home: PathBuf,
    port: String,
    processes: Vec<Group>,
}

impl Deployment {
    pub(crate) fn start(airflow: &Airflow, home: &Path, processor_bundles: &str) -> Deployment {
        airflow.migrate(home);
        let mut deployment = Deployment {
            home: home.to_path_buf(),
            port: crate::servers::free_port().to_string(),
            processes: Vec::new(),
        };
        let port = deployment.port.clone();
        deployment.component(
            airflow,
            &["api-server", "--host", "127.0.0.1", "--port", &port],
            processor_bundles,
        );
        deployment.component(airflow, &["dag-processor"], processor_bundles);
        deployment
    }

    /// Start the scheduler; the tasks it runs read `task_bundles`.
    pub(crate) fn scheduler(&mut self, airflow: &Airflow, task_bundles: &str) {
        self.component(airflow, &["scheduler"], task_bundles);
    }

    fn component(&mut self, airflow: &Airflow, args: &[&str], bundles: &str) {
        let log = self.home.join(format!("{}.log", args[0]));
        let group = Group::spawn(
            airflow
                .command(&self.home, args)
                .env("AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST", bundles)
                .env("AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL", "1")
                .env("AIRFLOW__CORE__EXECUTOR", "LocalExecutor")
                .env(
                    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
                    format!("http://127.0.0.1:{}/execution/", self.port),
                )
                .env(
                    "AIRFLOW__API_AUTH__JWT_SECRET",
                    "a-secret-for-this-story-only-0123456789",
                )
                .env("AIRFLOW__API__PORT", &self.port)
                .env("AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC", "1")
                .stdout(fs::File::create(log).unwrap())
                .stderr(Stdio::null()),
        );
        self.processes.push(group);
    }

    /// `airflow <args>`, run to its end, successfully.
    pub(crate) fn run(&self, airflow: &Airflow, args: &[&str]) {
        let out = airflow.command(&self.home, args).output().unwrap();
        assert!(out.status.success(), "airflow {args:?}: {}", stderr(&out));
    }
}

const CHECK_DAGS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/airflow/check_dags.py");

/// The good DAG files of the check stories: `count` DAGs under dags/.
fn dag_files(count: usize, version: usize) -> Vec<(String, String)> {
    (0..count)
        .map(|k| (format!("dags/dag_{k}.py"), dag_file(k, version)))
        .collect()
}

/// Commit exactly `files` under dags/ (what was there before is removed).
fn commit_files(remote: &Remote, files: &[(String, String)], message: &str) -> String {
    let _ = fs::remove_dir_all(remote.dir.join("dags"));
    let files: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_str()))
        .collect();
    remote.commit(&files, message)
}

/// The Airflow check as the sidecar runs it: Airflow's Python, contrib/airflow/check_dags.py,
/// a loop that rejects a DAG file with an import error and a commit that lost DAGs, and
/// publishes the good commits around them.
fn the_airflow_check_gates_the_link(airflow: &Airflow) {
    let remote = Remote::new();
    let good = commit_files(&remote, &dag_files(5, 1), "five DAGs");
    let scratch = Scratch::new();
    let check = format!("{} {CHECK_DAGS} --min-dags 5", airflow.python().display());
    let log = scratch.path("loop.log");
    let daemon = Daemon::start(
        dagsnap(scratch.tmp.path())
            .args(["sync", "--period", "200ms", "--repo", &remote.url()])
            .arg("--root")
            .arg(scratch.root())
            .arg("--cache-dir")
            .arg(scratch.cache())
            .args(["--check-command", &check])
            .env("AIRFLOW_HOME", scratch.path("airflow"))
            .env("AIRFLOW__CORE__LOAD_EXAMPLES", "False"),
        log,
    );
    daemon.wait_for_commit(&scratch.root(), &good, Duration::from_secs(180));
    let rejections = || {
        daemon
            .logs()
            .matches("the check rejected this commit")
            .count()
    };

    let mut files = dag_files(5, 2);
    files.push((
        "dags/broken.py".into(),
        "from airflow import DAG\nimport no_such_module_for_dagsnap\n".into(),
    ));
    let broken = commit_files(&remote, &files, "a DAG that does not import");
    wait_until(
        Duration::from_secs(180),
        "the import error rejected",
        || rejections() == 1,
    );
    assert_eq!(published(&scratch.root()).as_deref(), Some(good.as_str()));
    let status = dagsnap(scratch.tmp.path())
        .args(["status", "--root"])
        .arg(scratch.root())
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.contains(&format!("REJECTED:    {broken}"))
            && status
                .contains("| check_dags: 1 file(s) with import errors; 5 DAG(s) from 5 file(s)")
            && status.contains("ModuleNotFoundError: No module named 'no_such_module_for_dagsnap'"),
        "{status}"
    );
    let journal = dagsnap(scratch.tmp.path())
        .args(["log", "--root"])
        .arg(scratch.root())
        .output()
        .unwrap();
    let journal = String::from_utf8_lossy(&journal.stdout);
    assert!(
        journal.contains("exit status 1: check_dags: rejected: dags/broken.py: ModuleNotFoundError: No module named 'no_such_module_for_dagsnap'"),
        "{journal}"
    );

    // Two DAGs deleted by mistake: fewer than --min-dags.
    commit_files(&remote, &dag_files(3, 3), "lost two DAGs");
    wait_until(
        Duration::from_secs(180),
        "the smaller commit rejected",
        || rejections() == 2,
    );
    assert!(
        daemon.logs().contains("fewer than --min-dags 5"),
        "{}",
        daemon.logs()
    );
    assert_eq!(published(&scratch.root()).as_deref(), Some(good.as_str()));

    // The fix: five good DAGs again, and it goes live.
    let fixed = commit_files(&remote, &dag_files(5, 4), "all five, fixed");
    daemon.wait_for_commit(&scratch.root(), &fixed, Duration::from_secs(180));
    let verify = dagsnap(scratch.tmp.path())
        .args(["verify", "--root"])
        .arg(scratch.root())
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "the check left nothing in the snapshot: {}",
        String::from_utf8_lossy(&verify.stdout)
    );
}

#[test]
fn airflow_3_s_check_keeps_a_dag_that_does_not_import_away_from_the_scheduler() {
    if let Some(airflow) = Airflow::find(3) {
        the_airflow_check_gates_the_link(&airflow);
    }
}

#[test]
fn airflow_2_s_check_keeps_a_dag_that_does_not_import_away_from_the_scheduler() {
    if let Some(airflow) = Airflow::find(2) {
        the_airflow_check_gates_the_link(&airflow);
    }
}

/// The chart's route: an image whose git-sync is dagsnap, with Airflow's Python first on PATH,
/// and GITSYNC_PRE_PUBLISH_EXECHOOK_COMMAND naming the script (run directly, as git-sync runs
/// its hook).
#[test]
fn the_airflow_check_as_git_sync_s_pre_publish_hook_refuses_a_broken_first_commit() {
    let Some(airflow) = Airflow::find(3) else {
        return;
    };
    let remote = Remote::new();
    let mut files = dag_files(2, 1);
    files.push((
        "dags/broken.py".into(),
        "from airflow import DAG\nraise RuntimeError('the warehouse connection is not configured')\n"
            .into(),
    ));
    let broken = commit_files(&remote, &files, "broken from the start");
    let scratch = Scratch::new();
    let path = format!(
        "{}:{}",
        airflow.venv.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let root = scratch.root().display().to_string();
    let run = |scratch: &Scratch| {
        git_sync_via(&[], scratch.tmp.path())
            .env("DAGSNAP_CACHE_DIR", scratch.cache())
            .env("PATH", &path)
            .env("AIRFLOW_HOME", scratch.path("airflow"))
            .envs([
                ("GITSYNC_REPO", remote.url().as_str()),
                ("GITSYNC_ROOT", root.as_str()),
                ("GITSYNC_LINK", "dags"),
                ("GITSYNC_ONE_TIME", "true"),
                ("GITSYNC_PRE_PUBLISH_EXECHOOK_COMMAND", CHECK_DAGS),
            ])
            .output()
            .unwrap()
    };
    let out = run(&scratch);
    assert_one_clear_line(
        &out,
        1,
        &format!("commit {broken} was rejected by --check-command (exit status 1) and no earlier snapshot is live: check_dags: rejected: dags/broken.py: RuntimeError: the warehouse connection is not configured"),
    );
    assert!(fs::symlink_metadata(scratch.root().join("dags")).is_err());

    let fixed = commit_files(&remote, &dag_files(2, 2), "without the broken DAG");
    let out = run(&scratch);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        fs::read_link(scratch.root().join("dags"))
            .unwrap()
            .file_name()
            .unwrap()
            .to_string_lossy(),
        fixed
    );
}
