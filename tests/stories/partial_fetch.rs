//! A monorepo's DAG folder: with `--subdir` or `--sparse-checkout-file`, the cache receives the
//! commit and its trees without blobs, then only the blobs the selection reads, from a server
//! that filters (git's `uploadpack.allowFilter`, as GitHub and GitLab serve). Bytes are counted
//! at the server (nginx's log of every response body).

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::process::{Command, Stdio};

use rand::Rng;

use crate::servers::HttpServer;
use crate::support::*;

/// Files outside the DAG folder, in this many directories of 100.
const OUTSIDE_DIRS: usize = 30;
const DAGS: usize = 100;

/// Random text that does not compress much (hex of random bytes: about 2:1).
fn noise(rng: &mut impl Rng, bytes: usize) -> String {
    let mut out = String::with_capacity(bytes);
    while out.len() < bytes {
        let _ = write!(out, "{:016x}", rng.gen::<u64>());
        if out.len() % 80 < 16 {
            out.push('\n');
        }
    }
    out
}

/// A repository of 3,000 files of 2 KiB outside `dags/` and 100 DAG files in it.
fn monorepo(remote: &Remote, rng: &mut impl Rng) -> String {
    for d in 0..OUTSIDE_DIRS {
        let dir = remote.dir.join(format!("services/s{d:02}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..100 {
            fs::write(dir.join(format!("f{f:03}.txt")), noise(rng, 2048)).unwrap();
        }
    }
    let dags = remote.dir.join("dags");
    fs::create_dir_all(&dags).unwrap();
    for i in 0..DAGS {
        fs::write(dags.join(format!("dag_{i:03}.py")), noise(rng, 1024)).unwrap();
    }
    remote.commit_all("monorepo")
}

/// The bytes of response bodies nginx logged after the first `skip` lines of its log.
fn bytes_sent(server: &HttpServer, skip: usize) -> u64 {
    server
        .access_log()
        .lines()
        .skip(skip)
        .map(|line| {
            // combined: ... "GET /x HTTP/1.1" 200 1234 "-" "agent"
            let after_request = line.splitn(3, '"').nth(2).unwrap_or_default();
            after_request
                .split_whitespace()
                .nth(1)
                .and_then(|b| b.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum()
}

/// The size of a pack of exactly the commit, all its trees and the blobs under `subdir/`:
/// what a filtered fetch cannot do with less.
fn selection_pack_size(remote: &Remote, commit: &str, subdir: &str) -> u64 {
    let listing = remote.git(&["ls-tree", "-r", "-t", commit]);
    let mut objects = format!("{commit}\n");
    for line in listing.lines() {
        let (meta, path) = line.split_once('\t').unwrap();
        let fields: Vec<&str> = meta.split_whitespace().collect();
        if fields[1] == "tree" || path.starts_with(&format!("{subdir}/")) {
            objects.push_str(fields[2]);
            objects.push('\n');
        }
    }
    let tree = remote.git(&["rev-parse", &format!("{commit}^{{tree}}")]);
    objects.push_str(&tree);
    objects.push('\n');
    let mut pack = Command::new("git")
        .current_dir(&remote.dir)
        .args(["pack-objects", "--stdout", "-q"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    pack.stdin
        .take()
        .unwrap()
        .write_all(objects.as_bytes())
        .unwrap();
    let out = pack.wait_with_output().unwrap();
    assert!(out.status.success());
    out.stdout.len() as u64
}

/// The published snapshot holds exactly what `git archive` of `subdir` of `commit` does.
fn assert_snapshot_is_archive_of(scratch: &Scratch, remote: &Remote, commit: &str, subdir: &str) {
    assert_root_valid(&scratch.root());
    let archive = scratch.path(&format!("archive-{commit}"));
    git_archive(remote, commit, &archive);
    assert_eq!(
        tree_of(&scratch.root().join("current")),
        tree_of(&archive.join(subdir)),
        "the snapshot differs from git archive of {subdir}/"
    );
}

/// A DAG beside a larger file outside dags/; the commit.
fn dags_beside_a_service(remote: &Remote) -> String {
    remote.commit(
        &[
            ("dags/a.py", "a\n"),
            ("services/api/big.txt", &"x".repeat(10_000)),
        ],
        "one",
    )
}

/// Whether the cache in `scratch` holds the object `spec` (`<commit>:<path>`) names.
fn cached(scratch: &Scratch, remote: &Remote, spec: &str) -> bool {
    let id = remote.git(&["rev-parse", spec]);
    Command::new("git")
        .arg("--git-dir")
        .arg(scratch.cache().join("repo.git"))
        .args(["cat-file", "-e", &id])
        .status()
        .unwrap()
        .success()
}

fn serve_filtering(server: &HttpServer, remote: &Remote, allow: bool) -> String {
    let url = server.serve(&remote.dir, "mono.git");
    let value = if allow { "true" } else { "false" };
    git(
        &server.projects.join("mono.git"),
        &["config", "uploadpack.allowFilter", value],
    );
    url
}

#[test]
fn a_monorepos_dag_folder_is_fetched_without_the_rest_of_the_repository() {
    let mut rng = seeded_rng("partial fetch");
    let remote = Remote::new();
    let first = monorepo(&remote, &mut rng);
    let server = HttpServer::start();
    let url = serve_filtering(&server, &remote, true);
    let scratch = Scratch::new();
    let whole = remote.git(&["count-objects", "-v"]);
    let floor = selection_pack_size(&remote, &first, "dags");

    // The first publish: the commit, its trees and dags/'s blobs.
    let before = server.access_log().lines().count();
    let out = sync_once(&scratch, &url, &["--subdir", "dags"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let received = bytes_sent(&server, before);
    assert!(
        received <= 2 * floor + (256 << 10),
        "the first publish received {received} bytes; a pack of just the selection is {floor} ({whole})"
    );
    assert_eq!(published(&scratch.root()).as_deref(), Some(first.as_str()));
    assert!(
        !stderr(&out).contains("fetching whole commits"),
        "{}",
        stderr(&out)
    );
    assert_snapshot_is_archive_of(&scratch, &remote, &first, "dags");

    // 200 files change outside dags/: new trees, no blob.
    for d in 0..20 {
        for f in 0..10 {
            let path = remote.dir.join(format!("services/s{d:02}/f{f:03}.txt"));
            fs::write(path, noise(&mut rng, 2048)).unwrap();
        }
    }
    let outside = remote.commit_all("200 files outside dags/");
    server.update(&remote.dir, "mono.git");
    let before = server.access_log().lines().count();
    let out = sync_once(&scratch, &url, &["--subdir", "dags"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let received = bytes_sent(&server, before);
    assert!(
        received <= 64 << 10,
        "an update outside dags/ received {received} bytes"
    );
    // dags/ is unchanged: the live snapshot already holds it.
    assert_snapshot_is_archive_of(&scratch, &remote, &outside, "dags");

    // One DAG changes: its blob and the trees above it.
    let one = remote.commit(&[("dags/dag_007.py", "changed\n")], "one dag");
    server.update(&remote.dir, "mono.git");
    let before = server.access_log().lines().count();
    let out = sync_once(&scratch, &url, &["--subdir", "dags"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let received = bytes_sent(&server, before);
    assert!(
        received <= 64 << 10,
        "a one-DAG update received {received} bytes"
    );
    assert_eq!(published(&scratch.root()).as_deref(), Some(one.as_str()));
    assert_snapshot_is_archive_of(&scratch, &remote, &one, "dags");
    assert_eq!(read_current(&scratch.root(), "dag_007.py"), "changed\n");
}

#[test]
fn sparse_patterns_fetch_only_the_files_they_select() {
    let mut rng = seeded_rng("partial fetch sparse");
    let remote = Remote::new();
    let commit = monorepo(&remote, &mut rng);
    let server = HttpServer::start();
    let url = serve_filtering(&server, &remote, true);
    let scratch = Scratch::new();
    let patterns = scratch.path("sparse");
    fs::write(&patterns, "/dags/\n").unwrap();
    let floor = selection_pack_size(&remote, &commit, "dags");

    let before = server.access_log().lines().count();
    let out = sync_once(
        &scratch,
        &url,
        &["--sparse-checkout-file", &patterns.display().to_string()],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let received = bytes_sent(&server, before);
    assert!(
        received <= 2 * floor + (256 << 10),
        "received {received} bytes; a pack of just the selection is {floor}"
    );
    // The snapshot is the whole tree narrowed: dags/ and nothing else.
    let archive = scratch.path("archive");
    git_archive(&remote, &commit, &archive);
    let published = tree_of(&scratch.root().join("current"));
    let expected: std::collections::BTreeMap<_, _> = tree_of(&archive)
        .into_iter()
        .filter(|(path, _)| path.starts_with(b"dags"))
        .collect();
    assert_eq!(published, expected);
}

#[test]
fn a_server_that_does_not_filter_gets_whole_commits_and_one_info_line() {
    let remote = Remote::new();
    let commit = dags_beside_a_service(&remote);
    let server = HttpServer::start();
    let url = serve_filtering(&server, &remote, false);
    let scratch = Scratch::new();
    let out = sync_once(&scratch, &url, &["--subdir", "dags"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let said = stderr(&out)
        .lines()
        .filter(|l| l.contains("the server does not filter") && l.contains("INFO"))
        .count();
    assert_eq!(said, 1, "{}", stderr(&out));
    assert_snapshot_is_archive_of(&scratch, &remote, &commit, "dags");
}

#[test]
fn a_server_that_will_not_give_objects_by_id_gets_asked_for_the_whole_commit() {
    // git over ssh when sshd does not pass GIT_PROTOCOL on (no AcceptEnv, the default): the
    // server speaks protocol v0 on a connection that stays open, filters, and refuses blobs by
    // id ("not our ref") unless uploadpack.allowReachableSHA1InWant is set.
    let remote = Remote::new();
    let commit = dags_beside_a_service(&remote);
    let server = crate::servers::SshServer::start();
    let path = server.serve(&remote.dir, "mono.git");
    git(&path, &["config", "uploadpack.allowFilter", "true"]);
    let scratch = Scratch::new();
    let key = server.client_key.display().to_string();
    let known = server.known_hosts.display().to_string();
    let out = sync_once(
        &scratch,
        &server.url_of(&path),
        &[
            "--subdir",
            "dags",
            "--ssh-key-file",
            &key,
            "--ssh-known-hosts-file",
            &known,
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("does not give objects by id"),
        "{}",
        stderr(&out)
    );
    assert_snapshot_is_archive_of(&scratch, &remote, &commit, "dags");
}

#[test]
fn a_cache_missing_the_selections_blobs_fetches_them_by_id() {
    // The same cache, first for dags/, then for plugins/: the commit is there, the blobs of
    // the new selection are not, and the next run asks for exactly those.
    let remote = Remote::new();
    let commit = remote.commit(&[("dags/a.py", "a\n"), ("plugins/p.py", "p\n")], "one");
    let server = HttpServer::start();
    let url = serve_filtering(&server, &remote, true);
    let scratch = Scratch::new();
    let out = sync_once(&scratch, &url, &["--subdir", "dags"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let root = scratch.path("plugins-root");
    let out = dagsnap(scratch.tmp.path())
        .args(["sync", "--one-time", "--repo", &url, "--subdir", "plugins"])
        .arg("--root")
        .arg(&root)
        .arg("--cache-dir")
        .arg(scratch.cache())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(published(&root).as_deref(), Some(commit.as_str()));
    assert_eq!(
        fs::read_to_string(root.join("current/p.py")).unwrap(),
        "p\n"
    );
}

#[test]
fn a_nested_folder_is_reached_tree_by_tree_and_nothing_outside_it_is_cached() {
    let remote = Remote::new();
    let commit = remote.commit(
        &[
            ("platform/airflow/dags/a.py", "a\n"),
            ("platform/airflow/dags/sub/b.py", "b\n"),
            ("platform/airflow/setup.py", "outside\n"),
            ("services/api/main.go", "outside too\n"),
        ],
        "one",
    );
    remote.git(&["config", "uploadpack.allowFilter", "true"]);
    let scratch = Scratch::new();
    let out = sync_once(
        &scratch,
        &remote.url(),
        &["--subdir", "platform/airflow/dags"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_snapshot_is_archive_of(&scratch, &remote, &commit, "platform/airflow/dags");
    let has = |path: &str| cached(&scratch, &remote, &format!("{commit}:{path}"));
    assert!(has("platform/airflow/dags/sub/b.py"));
    assert!(
        !has("platform/airflow/setup.py"),
        "a blob outside the folder was fetched"
    );
    assert!(
        !has("services/api/main.go"),
        "a blob outside the folder was fetched"
    );
    assert!(
        !has("services"),
        "a tree outside the path to the folder was fetched"
    );
}

#[test]
fn a_server_that_refuses_the_tree_filter_is_asked_without_blobs_instead() {
    // git with tree filters banned (uploadpackfilter.tree.allow=false), as some hosts serve
    // blob:none only: the commit comes with its trees, then the folder's blobs by id.
    let remote = Remote::new();
    let commit = dags_beside_a_service(&remote);
    for (key, value) in [
        ("uploadpack.allowFilter", "true"),
        ("uploadpackfilter.tree.allow", "false"),
    ] {
        remote.git(&["config", key, value]);
    }
    let scratch = Scratch::new();
    let out = sync_once(&scratch, &remote.url(), &["--subdir", "dags"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        !stderr(&out).contains("fetching whole commits"),
        "{}",
        stderr(&out)
    );
    assert_snapshot_is_archive_of(&scratch, &remote, &commit, "dags");
    let has = |path: &str| cached(&scratch, &remote, &format!("{commit}:{path}"));
    assert!(has("services/api"), "blob:none brings every tree");
    assert!(
        !has("services/api/big.txt"),
        "and no blob outside the folder"
    );
}
