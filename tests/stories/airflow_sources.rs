//! Airflow 3 over a root that publishes several repositories as one snapshot: DAGs in one
//! repository import a helper library kept in another.

use std::fs;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::airflow::{bundle_entry, Airflow};
use crate::several::{spawn_sources, Three};
use crate::support::*;

const DAGS: usize = 5;

/// The helper library at generation `k`: one function per generation so far. DAGs of
/// generation `k` import `f{k}`, which an older library does not have.
fn helper(k: usize) -> String {
    let mut text = format!("GENERATION = {k}\n");
    for g in 0..=k {
        text.push_str(&format!("def f{g}():\n    return {g}\n"));
    }
    text
}

fn dag(i: usize, k: usize) -> String {
    format!(
        "from datetime import datetime\n\
         from airflow.sdk import DAG\n\
         from airflow.providers.standard.operators.empty import EmptyOperator\n\
         from helper import f{k}\n\
         with DAG(dag_id='dag_{i}', start_date=datetime(2024, 1, 1), schedule=None, catchup=False, params={{'version': f{k}()}}):\n    EmptyOperator(task_id='noop')\n"
    )
}

/// Generation `k` as a team pushes it: the library first, then the plugins, then the DAGs that
/// use the library's new function.
fn push_generation(three: &mut Three, k: usize) {
    three.commit_files("lib", &[("helper.py".into(), helper(k))], k);
    three.commit_files("plugins", &[("marker.txt".into(), format!("{k}\n"))], k);
    let dags: Vec<(String, String)> = (0..DAGS)
        .map(|i| (format!("dag_{i}.py"), dag(i, k)))
        .collect();
    three.commit_files("dags", &dags, k);
}

#[test]
fn airflow_3_parses_dags_importing_a_library_from_another_repository_while_all_three_move() {
    let Some(airflow) = Airflow::find(3) else {
        return;
    };
    let mut three = Three::new();
    push_generation(&mut three, 1);
    let scratch = Scratch::new();
    let root = scratch.root();
    let mut args = three.args();
    args.extend(["--period", "100ms"].map(String::from));
    let mut daemon = spawn_sources(&scratch, &scratch.cache(), &args);
    wait_until(Duration::from_secs(60), "the first set", || {
        published(&root).is_some()
    });

    let home = scratch.path("airflow");
    airflow.migrate(&home);
    let bundle = bundle_entry(&root, &serde_json::json!({"subdir": "dags"}));
    let log = home.join("processor.log");
    // The library is importable through the link, as a pod's PYTHONPATH names it.
    let processor = Group::spawn(
        airflow
            .dag_processor(&home, &bundle)
            .env("PYTHONPATH", root.join("current/lib"))
            .stdout(fs::File::create(&log).unwrap())
            .stderr(Stdio::null()),
    );
    wait_until(
        Duration::from_secs(120),
        "the processor's first pass",
        || airflow.state(&home)["active"].as_u64() == Some(DAGS as u64),
    );

    let mut import_errors: Vec<String> = Vec::new();
    let mut note = |state: &serde_json::Value| {
        for error in state["import_errors"].as_array().into_iter().flatten() {
            let error = error.as_str().unwrap_or_default().to_string();
            if !import_errors.contains(&error) {
                import_errors.push(error);
            }
        }
    };
    let last = 16;
    for k in 2..=last {
        push_generation(&mut three, k);
        let until = Instant::now() + Duration::from_millis(700);
        while Instant::now() < until {
            note(&airflow.state(&home));
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // The processor ends on the set of every tip, every DAG parsed with f{last}.
    let tips: std::collections::BTreeMap<String, String> = ["dags", "lib", "plugins"]
        .iter()
        .map(|n| (n.to_string(), three.remotes[n].head()))
        .collect();
    wait_until(Duration::from_secs(60), "the link on every tip", || {
        published(&root).is_some_and(|s| crate::several::manifest_sources(&root, &s) == tips)
    });
    let tip = published(&root).unwrap();
    wait_until(Duration::from_secs(120), "the processor on the tip", || {
        let state = airflow.state(&home);
        note(&state);
        state["bundle_version"].as_str() == Some(tip.as_str())
            && state["active"].as_u64() == Some(DAGS as u64)
    });
    drop(processor);
    assert!(
        import_errors.is_empty(),
        "import errors while three repositories moved: {import_errors:?}"
    );
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(
        daemon.wait(Duration::from_secs(30)).success(),
        "{}",
        daemon.logs()
    );
}
