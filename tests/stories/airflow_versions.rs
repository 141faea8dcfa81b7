//! Every version a DAG run needs, on every node, with real Airflow 3 (API server, DAG
//! processor, scheduler with the local executor): a run whose commit retention collected, a
//! worker root that never held the run's commit, leases that end with their task, and labels
//! that match the code under churn.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::airflow::*;
use crate::servers::free_port;
use crate::support::*;

const TOKEN: &str = "a-token-for-workers";

/// A loop on `scratch`'s root answering HTTP with a bearer token (in the returned file), with
/// `extra` options.
fn publisher(scratch: &Scratch, remote: &Remote, extra: &[&str]) -> (Daemon, PathBuf) {
    let token = scratch.path("token");
    fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let bind = format!("127.0.0.1:{}", free_port());
    let mut args = vec![
        "--period",
        "200ms",
        "--http-bind",
        &bind,
        "--trigger-token-file",
        token.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    (spawn_loop(scratch, &remote.url(), &args), token)
}

/// The leases of `commit` that tasks hold (not a publisher's): (file name, expires_at).
fn task_leases(root: &Path, commit: &str) -> Vec<(String, u64)> {
    let Ok(entries) = fs::read_dir(root.join(".dagsnap/leases")) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with(commit) || name.contains(".dagsnap-") || name.starts_with('.') {
                return None;
            }
            let lease: serde_json::Value =
                serde_json::from_slice(&fs::read(entry.path()).ok()?).ok()?;
            Some((name, lease["expires_at"].as_u64()?))
        })
        .collect()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `dagsnap gc` keeping nothing but what the link shows and what leases hold.
fn collect_all(scratch: &Scratch) {
    let out = on_root(scratch, &["gc", "--keep", "0", "--grace", "0s"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Trigger the probe DAG once it is parsed; the run's recorded version.
fn trigger_probe(airflow: &Airflow, home: &Path, deployment: &Deployment) -> String {
    wait_until(Duration::from_secs(120), "the DAG to be parsed", || {
        airflow.state(home)["dags"]
            .as_array()
            .is_some_and(|d| !d.is_empty())
    });
    deployment.run(airflow, &["dags", "unpause", "probe"]);
    deployment.run(airflow, &["dags", "trigger", "probe"]);
    let run = airflow.state(home)["runs"][0].clone();
    run[2].as_str().unwrap_or_default().to_string()
}

#[test]
fn a_dag_run_whose_commit_was_collected_runs_both_tasks_on_it_and_its_leases_lapse_after() {
    let Some(airflow) = Airflow::find(3) else {
        return;
    };
    let scratch = Scratch::new();
    let result = scratch.path("result.txt");
    let remote = Remote::new();
    let first = commit_probe(&remote, &result);
    let root = scratch.root();
    let (daemon, token) = publisher(&scratch, &remote, &["--keep", "0", "--grace", "0s"]);
    daemon.wait_for_commit(&root, &first, Duration::from_secs(60));

    let home = scratch.path("airflow");
    let lease_seconds = 15;
    let bundle = bundle_config(
        &root,
        &serde_json::json!({"token_file": token, "lease_seconds": lease_seconds}),
    );
    let mut deployment = Deployment::start(&airflow, &home, &bundle);
    deployment.scheduler(&airflow, &bundle);
    let recorded = trigger_probe(&airflow, &home, &deployment);
    assert_eq!(
        recorded, first,
        "the run recorded the commit it started with"
    );
    wait_until(Duration::from_secs(120), "the first task to run", || {
        airflow.state(&home)["tasks"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t[0] == "wait" && t[1] == "running"))
    });

    // The running task's lease is short and renewed while it runs.
    wait_until(Duration::from_secs(30), "the task's lease", || {
        !task_leases(&root, &first).is_empty()
    });
    let taken = task_leases(&root, &first)[0].clone();
    assert!(
        taken.1 <= now() + lease_seconds + 1,
        "a short lease: {taken:?}"
    );
    wait_until(Duration::from_secs(30), "the lease to be renewed", || {
        task_leases(&root, &first)
            .iter()
            .any(|(name, until)| *name == taken.0 && *until > taken.1)
    });

    // A new commit goes live, and retention outruns the run: the first commit's snapshot is
    // collected (its leases expired by hand, as a shorter --grace or a longer run would).
    let second = remote.commit(&[("dags/marker.txt", "second\n")], "second");
    daemon.wait_for_commit(&root, &second, Duration::from_secs(30));
    let snapshot = root.join(SNAPSHOTS).join(&first);
    wait_until(
        Duration::from_secs(60),
        "the first snapshot to be collected",
        || {
            for (name, _) in task_leases(&root, &first) {
                let path = root.join(".dagsnap/leases").join(name);
                let _ = fs::write(&path, format!(r#"{{"commit":"{first}","expires_at":1}}"#));
            }
            collect_all(&scratch);
            !snapshot.exists()
        },
    );

    // The second task finds its version gone, asks the publisher, and reads that commit.
    wait_until(Duration::from_secs(180), "the second task", || {
        result.exists()
    });
    let read = fs::read_to_string(&result).unwrap();
    assert!(
        read.starts_with("first "),
        "the task read the first commit's files: {read}"
    );
    assert!(
        read.contains(snapshot.to_str().unwrap()),
        "from its snapshot: {read}"
    );
    wait_until(Duration::from_secs(60), "the run to succeed", || {
        airflow.state(&home)["runs"][0][1] == "success"
    });
    assert!(
        daemon.log_lines(&["materialized a version a reader asked for", &first]) >= 1,
        "{}",
        daemon.logs()
    );
    assert_eq!(
        published(&root).as_deref(),
        Some(second.as_str()),
        "the link stayed"
    );

    // Once the tasks ended, their leases lapse within lease_seconds, and GC may collect.
    let ended = now();
    wait_until(
        Duration::from_secs(lease_seconds * 4),
        "the tasks' leases to lapse",
        || {
            task_leases(&root, &first)
                .iter()
                .all(|(_, until)| *until < now())
        },
    );
    let lapsed_after = now() - ended;
    eprintln!("the tasks' leases lapsed {lapsed_after} s after the run ended (lease_seconds {lease_seconds})");
    wait_until(
        Duration::from_secs(60),
        "GC to collect the lapsed version",
        || {
            collect_all(&scratch);
            !snapshot.exists()
        },
    );
}

#[test]
fn a_worker_root_that_never_held_the_run_s_commit_gets_it_from_its_own_publisher() {
    let Some(airflow) = Airflow::find(3) else {
        return;
    };
    // The scheduler's node: a root and its publisher. The worker's node: a root of its own
    // (an emptyDir), with its own publisher, started after the run's commit was replaced.
    let scheduler_node = Scratch::new();
    let worker_node = Scratch::new();
    let result = scheduler_node.path("result.txt");
    let remote = Remote::new();
    let first = commit_probe(&remote, &result);
    let (scheduler_publisher, _) = publisher(&scheduler_node, &remote, &[]);
    scheduler_publisher.wait_for_commit(&scheduler_node.root(), &first, Duration::from_secs(60));
    let home = scheduler_node.path("airflow");
    let processor_bundle = bundle_config(&scheduler_node.root(), &serde_json::json!({}));
    let mut deployment = Deployment::start(&airflow, &home, &processor_bundle);
    let recorded = trigger_probe(&airflow, &home, &deployment);
    assert_eq!(recorded, first, "the run recorded the first commit");

    let second = remote.commit(&[("dags/marker.txt", "second\n")], "second");
    scheduler_publisher.wait_for_commit(&scheduler_node.root(), &second, Duration::from_secs(30));
    let (worker_publisher, worker_token) = publisher(&worker_node, &remote, &[]);
    let worker_root = worker_node.root();
    worker_publisher.wait_for_commit(&worker_root, &second, Duration::from_secs(60));
    assert!(
        !worker_root.join(SNAPSHOTS).join(&first).exists(),
        "the worker's root never held the first commit"
    );

    // The scheduler runs the tasks with the worker's configuration: its own root.
    let task_bundle = bundle_config(
        &worker_root,
        &serde_json::json!({"token_file": worker_token}),
    );
    deployment.scheduler(&airflow, &task_bundle);
    wait_until(Duration::from_secs(180), "the second task", || {
        result.exists()
    });
    let read = fs::read_to_string(&result).unwrap();
    assert!(
        read.starts_with("first "),
        "the task read the first commit's files: {read}"
    );
    let expected = worker_root.join(SNAPSHOTS).join(&first);
    assert!(
        read.contains(expected.to_str().unwrap()),
        "from the worker's root: {read}"
    );
    wait_until(Duration::from_secs(60), "the run to succeed", || {
        airflow.state(&home)["runs"][0][1] == "success"
    });
    assert_eq!(
        published(&worker_root).as_deref(),
        Some(second.as_str()),
        "the worker's link stayed on the tip"
    );
    assert!(
        worker_publisher.log_lines(&["materialized a version a reader asked for", &first]) >= 1,
        "{}",
        worker_publisher.logs()
    );
}

#[test]
fn under_churn_each_parse_is_labelled_with_the_commit_it_read_and_airflow_s_window_closes() {
    let Some(airflow) = Airflow::find(3) else {
        return;
    };
    let churn = Churn::start();
    let bundle = bundle_entry(&churn.root, &serde_json::json!({}));
    // Airflow's own window closed: a serialized DAG is written at every parse that changed it,
    // with the DAG's recorded version.
    let run = processor_run(
        &airflow,
        &churn.scratch,
        "closed",
        &bundle,
        &churn.remote,
        &churn.commits,
        &churn.tip,
        &[("AIRFLOW__CORE__MIN_SERIALIZED_DAG_UPDATE_INTERVAL", "0")],
    );
    let (label_median, label_max, mislabelled) = gap_summary(&run.label_gaps);
    let (recorded_median, recorded_max, behind) = gap_summary(&run.recorded_gaps);
    eprintln!(
        "DagsnapBundle, min_serialized_dag_update_interval 0: labels: {} serialized DAGs, median gap {label_median}, largest {label_max}, {mislabelled} not on their commit; recorded version against the code: {} samples, median {recorded_median}, largest {recorded_max}, {behind} apart",
        run.label_gaps.len(),
        run.recorded_gaps.len()
    );
    assert!(
        run.label_gaps.len() >= 40,
        "serialized DAGs seen: {:?}",
        run.label_gaps
    );
    assert_eq!(label_median, 0, "labels: {:?}", run.label_gaps);
    assert_eq!(recorded_median, 0, "recorded: {:?}", run.recorded_gaps);
    // Only a parse in flight across a refresh can be labelled with the next refresh's commit.
    assert!(
        mislabelled * 5 <= run.label_gaps.len(),
        "labels: {:?}",
        run.label_gaps
    );
}

#[test]
fn a_bundle_with_a_subdir_reads_the_dag_folder_of_the_snapshot_its_version_names() {
    let Some(airflow) = Airflow::find(3) else {
        return;
    };
    // A whole repository published: DAGs in dags/, a plugin beside them.
    let remote = Remote::new();
    let first = remote.commit(
        &[("dags/a.py", "first\n"), ("plugins/p.py", "plugin one\n")],
        "one",
    );
    let scratch = Scratch::new();
    assert!(sync_once(&scratch, &remote.url(), &[]).status.success());
    let second = remote.commit(
        &[("dags/a.py", "second\n"), ("plugins/p.py", "plugin two\n")],
        "two",
    );
    assert!(sync_once(&scratch, &remote.url(), &[]).status.success());
    let root = scratch.root();
    let script = r#"
import json, os, sys
from dagsnap_airflow import DagsnapBundle, SnapshotGone
root, first = sys.argv[1], sys.argv[2]
out = {}
latest = DagsnapBundle(name="dags", root=root, subdir="dags")
latest.initialize()
out["latest_file"] = open(latest.path / "a.py").read()
out["latest_plugin"] = open(latest.path.parent / "plugins" / "p.py").read()
out["latest_version"] = getattr(latest.get_current_version(), "version", latest.get_current_version())
task = DagsnapBundle(name="dags", root=root, version=first, subdir="dags/", lease_seconds=3600)
task.initialize()
out["task_path"] = str(task.path)
out["task_file"] = open(task.path / "a.py").read()
try:
    DagsnapBundle(name="dags", root=root, subdir="../etc")
except ValueError as e:
    out["outside"] = str(e)
try:
    DagsnapBundle(name="dags", root=root, subdir="dagz").initialize()
except SnapshotGone as e:
    out["missing"] = str(e)
print(json.dumps(out))
"#;
    let out = std::process::Command::new(airflow.python())
        .args(["-c", script])
        .arg(&root)
        .arg(&first)
        .env("AIRFLOW_HOME", scratch.path("airflow"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // The version names the whole snapshot; the path is its DAG folder.
    assert_eq!(seen["latest_version"], second.as_str());
    assert_eq!(seen["latest_file"], "second\n");
    assert_eq!(
        seen["latest_plugin"], "plugin two\n",
        "the plugins beside the DAGs are the same snapshot's"
    );
    assert_eq!(
        seen["task_path"].as_str().unwrap(),
        root.join(SNAPSHOTS)
            .join(&first)
            .join("dags")
            .to_str()
            .unwrap()
    );
    assert_eq!(
        seen["task_file"], "first\n",
        "a task reads its run's commit"
    );
    assert!(
        seen["outside"]
            .as_str()
            .unwrap()
            .contains("inside the snapshot"),
        "{}",
        seen["outside"]
    );
    let missing = seen["missing"].as_str().unwrap();
    assert!(
        missing.contains("dagz") && missing.contains("subdir="),
        "{missing}"
    );
}
