//! A publish is durable before readers can see it: the snapshot's data reaches stable storage
//! before the snapshot gets its name, and the link's new target survives a power cut.

use std::fs;
use std::process::Command;

use crate::support::*;

/// The system calls of one `sync --one-time` that matter for durability, in order, as strace
/// prints them with file descriptors resolved to paths (`-y`).
fn durability_calls(scratch: &Scratch, repo: &str) -> Vec<String> {
    let trace = scratch.path("strace.out");
    let cmd = sync_once_command(scratch, &scratch.cache(), repo, &[]);
    let mut traced = Command::new("strace");
    traced
        .args(["-f", "-qq", "-y", "-o"])
        .arg(&trace)
        .args(["-e", "trace=syncfs,fsync,rename,renameat,renameat2"])
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .envs(cmd.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .current_dir(scratch.tmp.path());
    for (key, value) in cmd.get_envs() {
        if value.is_none() {
            traced.env_remove(key);
        }
    }
    let out = traced.output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    joined_calls(&fs::read_to_string(&trace).unwrap())
        .into_iter()
        // Failed calls (`= -1 ...`) stay out.
        .filter(|call| call.ends_with("= 0"))
        .collect()
}

/// strace's lines as whole calls, without the pid: a call another thread interrupted is
/// printed in two parts (`<pid> renameat(... <unfinished ...>`, later `<pid> <... renameat
/// resumed>) = 0`); they are joined where the call began.
fn joined_calls(trace: &str) -> Vec<String> {
    let mut calls: Vec<String> = Vec::new();
    let mut open: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for line in trace.lines() {
        // strace pads the pid to five columns: a short pid is followed by several spaces.
        let Some((pid, call)) = line.split_once(' ') else {
            continue;
        };
        let call = call.trim_start();
        if let Some(begun) = call.strip_suffix(" <unfinished ...>") {
            open.insert(pid.to_string(), calls.len());
            calls.push(begun.to_string());
        } else if call.starts_with("<... ") {
            let rest = call.split_once("resumed>").map_or("", |(_, rest)| rest);
            if let Some(at) = open.remove(pid) {
                calls[at].push_str(rest);
            }
        } else {
            calls.push(call.to_string());
        }
    }
    calls
}

fn position(calls: &[String], what: &str, matches: impl Fn(&str) -> bool) -> usize {
    calls
        .iter()
        .position(|call| matches(call))
        .unwrap_or_else(|| panic!("no {what} among the publish's calls:\n{}", calls.join("\n")))
}

#[test]
fn a_snapshot_is_on_stable_storage_before_it_is_named_and_the_link_survives_a_power_cut() {
    if !strace_works() {
        return;
    }
    let remote = Remote::new();
    let commit = remote.commit(&[("dags/a.py", "a = 1\n"), ("b.py", "b\n")], "one");
    let scratch = Scratch::new();
    let calls = durability_calls(&scratch, &remote.url());
    let snapshots = scratch.root().join(SNAPSHOTS);
    let snapshots = snapshots.to_string_lossy();

    // The staging directory becomes `snapshots/<commit>` by a rename in `snapshots/`.
    let installed = position(
        &calls,
        "rename of the staging directory to the commit",
        |c| {
            c.starts_with("rename")
                && c.contains(".staging-")
                && c.contains(&format!("\"{commit}\""))
        },
    );
    // Every file written is flushed before that: one syncfs.
    let flushed = position(&calls, "syncfs", |c| c.starts_with("syncfs("));
    assert!(
        flushed < installed,
        "the snapshot was named before its data was flushed:\n{}",
        calls.join("\n")
    );
    // The rename itself is made durable (fsync of snapshots/) before the link may point at it.
    let link_moved = position(&calls, "rename of the new link over `current`", |c| {
        c.starts_with("rename") && c.contains(".dagsnap-link-") && c.contains("\"current\"")
    });
    let snapshots_synced = calls[installed..link_moved]
        .iter()
        .any(|c| c.starts_with("fsync(") && c.contains(&format!("<{snapshots}>")));
    assert!(
        snapshots_synced,
        "snapshots/ was not fsynced between the install and the link's move:\n{}",
        calls[installed..=link_moved].join("\n")
    );
    // The link's directory is fsynced after the link moved: the new target survives a power cut.
    let root = scratch.root();
    let root_synced = calls[link_moved..]
        .iter()
        .any(|c| c.starts_with("fsync(") && c.contains(&format!("<{}>", root.display())));
    assert!(
        root_synced,
        "the link's directory was not fsynced after the link moved:\n{}",
        calls[link_moved..].join("\n")
    );
    assert_eq!(assert_root_valid(&root), commit);
}
