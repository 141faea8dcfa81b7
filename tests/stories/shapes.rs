//! Every repository shape DAG teams use: submodules (nested, relative URLs, over HTTPS with
//! credentials, unreachable), one subdirectory of a monorepo, and sparse patterns. What dagsnap
//! publishes is compared with what git itself checks out for the same commit.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::servers::{Door, HttpServer};
use crate::support::*;

/// A repository beside `remote`'s (so that `../name` in `.gitmodules` reaches it).
fn sibling(remote: &Remote, name: &str) -> PathBuf {
    let dir = remote.dir.parent().unwrap().join(name);
    fs::create_dir_all(&dir).unwrap();
    git(&dir, &["init", "-q", "-b", "main"]);
    dir
}

fn commit_files(dir: &Path, files: &[(&str, &str)], message: &str) -> String {
    for (path, content) in files {
        let full = dir.join(path);
        fs::create_dir_all(full.parent().unwrap()).unwrap();
        fs::write(full, content).unwrap();
    }
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", message]);
    git(dir, &["rev-parse", "HEAD"])
}

/// git with file:// submodules allowed (git refuses them by default since 2.38.1).
fn git_allowing_files(dir: &Path, args: &[&str]) -> String {
    let mut all = vec!["-c", "protocol.file.allow=always"];
    all.extend_from_slice(args);
    git(dir, &all)
}

/// `git submodule add URL PATH` in `dir`, then point `.gitmodules` at `url_in_gitmodules` (a
/// relative URL, say), and commit.
fn add_submodule(dir: &Path, url: &str, path: &str, url_in_gitmodules: &str) -> String {
    git_allowing_files(dir, &["submodule", "add", "-q", url, path]);
    git(
        dir,
        &[
            "config",
            "-f",
            ".gitmodules",
            &format!("submodule.{path}.url"),
            url_in_gitmodules,
        ],
    );
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", &format!("add {path}")]);
    git(dir, &["rev-parse", "HEAD"])
}

/// Move the submodule at `path` of `dir` to its remote's newest commit, and commit.
fn bump_submodule(dir: &Path, path: &str) -> String {
    git_allowing_files(&dir.join(path), &["pull", "-q", "origin", "main"]);
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", &format!("bump {path}")]);
    git(dir, &["rev-parse", "HEAD"])
}

/// Every file, symlink and directory under `dir`, git's own `.git` files and directories left
/// out: what a reader of a checkout sees.
fn checkout(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut found = BTreeMap::new();
    for entry in walkdir::WalkDir::new(dir)
        .min_depth(1)
        .into_iter()
        .filter_entry(|e| e.file_name() != ".git")
    {
        let entry = entry.unwrap();
        let relative = entry.path().strip_prefix(dir).unwrap().to_path_buf();
        let what = if entry.path_is_symlink() {
            format!("-> {}", fs::read_link(entry.path()).unwrap().display())
        } else if entry.file_type().is_dir() {
            "dir".to_string()
        } else {
            String::from_utf8_lossy(&fs::read(entry.path()).unwrap()).into_owned()
        };
        found.insert(relative, what);
    }
    found
}

/// What `git clone --recurse-submodules` of `url` shows.
fn git_clone_recursive(url: &str, into: &Path) -> BTreeMap<PathBuf, String> {
    git_allowing_files(
        into.parent().unwrap(),
        &[
            "clone",
            "-q",
            "--recurse-submodules",
            url,
            &into.display().to_string(),
        ],
    );
    checkout(into)
}

fn published_checkout(scratch: &Scratch) -> BTreeMap<PathBuf, String> {
    checkout(&scratch.root().join("current"))
}

fn sync_ok(scratch: &Scratch, url: &str, extra: &[&str]) -> String {
    let out = sync_once(scratch, url, extra);
    assert!(out.status.success(), "{}", stderr(&out));
    stderr(&out)
}

#[test]
fn submodules_are_published_as_git_clone_recurse_submodules_shows_them() {
    let remote = Remote::new();
    let nested = sibling(&remote, "nested");
    commit_files(&nested, &[("n.txt", "deep down\n")], "nested");
    let lib = sibling(&remote, "lib");
    commit_files(
        &lib,
        &[("common.py", "def f(): pass\n"), ("keep.py", "KEEP = 1\n")],
        "lib",
    );
    add_submodule(&lib, "../nested", "deep", "../nested");
    commit_files(&remote.dir, &[("dags/a.py", "x = 1\n")], "dags");
    let first = add_submodule(&remote.dir, "../lib", "dags/libs/common", "../lib");
    let scratch = Scratch::new();
    let url = remote.url();
    sync_ok(&scratch, &url, &[]);
    assert_eq!(published(&scratch.root()).as_deref(), Some(first.as_str()));
    let clones = tempfile::tempdir().unwrap();
    let expected = git_clone_recursive(&url, &clones.path().join("one"));
    assert!(expected.contains_key(Path::new("dags/libs/common/deep/n.txt")));
    assert_eq!(published_checkout(&scratch), expected);

    // Operators see which submodule commits are live, and verify checks their content too.
    let lib_commit = git(&remote.dir.join("dags/libs/common"), &["rev-parse", "HEAD"]);
    let status = stdout(&on_root(&scratch, &["status"]));
    assert!(
        status.contains(&format!("submodule:   dags/libs/common at {lib_commit}")),
        "{status}"
    );
    assert!(
        status.contains("submodule:   dags/libs/common/deep at"),
        "{status}"
    );
    let list = stdout(&on_root(&scratch, &["list"]));
    assert!(
        list.contains(&format!(
            "submodule dags/libs/common at {}",
            &lib_commit[..12]
        )),
        "{list}"
    );
    for args in [
        &["verify"][..],
        &[
            "verify",
            "--cache-dir",
            &scratch.cache().display().to_string(),
        ][..],
    ] {
        let out = on_root(&scratch, args);
        assert!(out.status.success(), "{args:?}: {}", stdout(&out));
        assert!(stdout(&out).contains("intact"), "{}", stdout(&out));
    }

    // The submodule moves on: only what changed is written; its unchanged files are shared.
    commit_files(&lib, &[("common.py", "def f(): return 2\n")], "lib 2");
    let second = bump_submodule(&remote.dir, "dags/libs/common");
    let before = scratch.root().join(SNAPSHOTS).join(&first);
    sync_ok(&scratch, &url, &[]);
    assert_eq!(published(&scratch.root()).as_deref(), Some(second.as_str()));
    assert_eq!(
        published_checkout(&scratch),
        git_clone_recursive(&url, &clones.path().join("two"))
    );
    let after = scratch.root().join(SNAPSHOTS).join(&second);
    for shared in [
        "dags/libs/common/keep.py",
        "dags/libs/common/deep/n.txt",
        "dags/a.py",
    ] {
        assert_eq!(
            fs::metadata(before.join(shared)).unwrap().ino(),
            fs::metadata(after.join(shared)).unwrap().ino(),
            "{shared} is shared with the previous snapshot"
        );
    }

    // Moved, then removed.
    fs::create_dir_all(remote.dir.join("vendor")).unwrap();
    git(&remote.dir, &["mv", "dags/libs/common", "vendor/common"]);
    git(&remote.dir, &["commit", "-q", "-m", "move"]);
    sync_ok(&scratch, &url, &[]);
    assert_eq!(
        published_checkout(&scratch),
        git_clone_recursive(&url, &clones.path().join("three"))
    );
    assert!(scratch
        .root()
        .join("current/vendor/common/common.py")
        .exists());
    git(&remote.dir, &["rm", "-q", "vendor/common"]);
    git(&remote.dir, &["commit", "-q", "-m", "remove"]);
    sync_ok(&scratch, &url, &[]);
    assert_eq!(
        published_checkout(&scratch),
        git_clone_recursive(&url, &clones.path().join("four"))
    );
    assert!(!scratch.root().join("current/vendor").exists());
}

#[test]
fn shallow_stops_at_the_first_level_and_off_leaves_empty_directories_and_says_so() {
    let remote = Remote::new();
    let nested = sibling(&remote, "nested");
    commit_files(&nested, &[("n.txt", "deep\n")], "nested");
    let lib = sibling(&remote, "lib");
    commit_files(&lib, &[("common.py", "x\n")], "lib");
    add_submodule(&lib, "../nested", "deep", "../nested");
    add_submodule(&remote.dir, "../lib", "libs/common", "../lib");

    let shallow = Scratch::new();
    sync_ok(&shallow, &remote.url(), &["--submodules", "shallow"]);
    let files = published_checkout(&shallow);
    assert_eq!(
        files
            .get(Path::new("libs/common/common.py"))
            .map(String::as_str),
        Some("x\n")
    );
    assert_eq!(
        files.get(Path::new("libs/common/deep")).map(String::as_str),
        Some("dir")
    );
    assert!(!files.contains_key(Path::new("libs/common/deep/n.txt")));

    let off = Scratch::new();
    let log = sync_ok(&off, &remote.url(), &["--submodules", "off"]);
    let files = published_checkout(&off);
    assert_eq!(
        files.get(Path::new("libs/common")).map(String::as_str),
        Some("dir")
    );
    assert!(!files.contains_key(Path::new("libs/common/common.py")));
    assert_eq!(
        log.matches("publishes each as an empty directory").count(),
        1,
        "{log}"
    );
    // The same commit, now with submodules: the snapshot is built again, not reused as it was.
    sync_ok(&off, &remote.url(), &[]);
    assert!(off.root().join("current/libs/common/deep/n.txt").exists());
}

#[test]
fn a_submodule_that_cannot_be_fetched_fails_the_publish_naming_it_and_what_is_live_stays() {
    let remote = Remote::new();
    let good = commit_files(&remote.dir, &[("dags/a.py", "x = 1\n")], "good");
    let scratch = Scratch::new();
    sync_ok(&scratch, &remote.url(), &[]);

    let lib = sibling(&remote, "lib");
    commit_files(&lib, &[("common.py", "x\n")], "lib");
    let broken = add_submodule(&remote.dir, "../lib", "libs/common", "../lib");
    fs::rename(&lib, remote.dir.parent().unwrap().join("lib-moved")).unwrap();
    let out = sync_once(&scratch, &remote.url(), &[]);
    let lib_url = remote.dir.parent().unwrap().join("lib");
    assert_one_clear_line(
        &out,
        1,
        &format!(
            "cannot fetch submodule 'libs/common' (commit {}) from file://{}",
            git(&remote.dir.join("libs/common"), &["rev-parse", "HEAD"]),
            lib_url.display()
        ),
    );
    assert_eq!(published(&scratch.root()).as_deref(), Some(good.as_str()));
    assert!(!scratch.root().join(SNAPSHOTS).join(&broken).exists());

    // A gitlink that .gitmodules does not describe: git itself cannot clone it either.
    let lonely = git(&remote.dir, &["rev-parse", "HEAD"]);
    git(
        &remote.dir,
        &[
            "update-index",
            "--add",
            "--cacheinfo",
            &format!("160000,{lonely},libs/lonely"),
        ],
    );
    git(
        &remote.dir,
        &["commit", "-q", "-m", "a gitlink without .gitmodules"],
    );
    fs::rename(remote.dir.parent().unwrap().join("lib-moved"), &lib).unwrap();
    let out = sync_once(&scratch, &remote.url(), &[]);
    assert_one_clear_line(
        &out,
        1,
        "submodule 'libs/lonely' has no URL in .gitmodules; add it there",
    );
    assert_eq!(published(&scratch.root()).as_deref(), Some(good.as_str()));
}

#[test]
fn a_private_submodule_over_https_uses_the_same_credentials_and_idle_polls_ask_only_the_superproject(
) {
    const USER: &str = "ci-bot";
    const TOKEN: &str = "glpat-SubmoduleT0ken";
    let remote = Remote::new();
    let lib = sibling(&remote, "lib");
    commit_files(&lib, &[("common.py", "SHARED = True\n")], "lib");
    commit_files(&remote.dir, &[("dags/a.py", "x = 1\n")], "dags");
    // The repository's .gitmodules names the library relative to itself, as teams do so that
    // the same file works over HTTPS and SSH.
    let first = add_submodule(&remote.dir, "../lib", "dags/common", "../lib.git");
    let server = HttpServer::start_with(true, USER, TOKEN);
    server.serve(&remote.dir, "dags.git");
    server.serve(&lib, "lib.git");
    let url = server.url(Door::Private, "dags.git");
    let scratch = Scratch::new();
    let password = scratch.path("token");
    fs::write(&password, TOKEN).unwrap();
    let ca = server.ca_file.display().to_string();
    let pw = password.display().to_string();
    let daemon = spawn_loop(
        &scratch,
        &url,
        &[
            "--username",
            USER,
            "--password-file",
            &pw,
            "--ca-file",
            &ca,
            "--period",
            "100ms",
        ],
    );
    daemon.wait_for_commit(&scratch.root(), &first, Duration::from_secs(60));
    assert_eq!(
        fs::read_to_string(scratch.root().join("current/dags/common/common.py")).unwrap(),
        "SHARED = True\n"
    );
    let requests = |name: &str| {
        server
            .access_log()
            .lines()
            .filter(|l| l.contains(&format!("/private/{name}/")))
            .count()
    };
    let (lib_before, dags_before) = (requests("lib.git"), requests("dags.git"));
    assert!(lib_before > 0);
    // Three idle polls of the superproject (each asks its server), then the submodule's count.
    wait_until(Duration::from_secs(30), "three idle polls", || {
        requests("dags.git") >= dags_before + 3
    });
    assert_eq!(
        requests("lib.git"),
        lib_before,
        "idle polls do not ask the submodule's server"
    );
    assert!(!daemon.logs().contains(TOKEN));
    let status = stdout(&on_root(&scratch, &["status"]));
    assert!(
        status.contains("submodule:   dags/common at")
            && status.contains(&server.url(Door::Private, "lib.git")),
        "{status}"
    );
}

#[test]
fn a_subdirectory_is_published_alone_and_the_link_moves_only_when_it_changes() {
    let remote = Remote::new();
    let first = remote.commit(
        &[
            ("dags/a.py", "a = 1\n"),
            ("dags/team/b.py", "b = 1\n"),
            ("src/service.rs", "fn main() {}\n"),
            ("README.md", "monorepo\n"),
        ],
        "monorepo",
    );
    let scratch = Scratch::new();
    let daemon = spawn_loop(
        &scratch,
        &remote.url(),
        &[
            "--subdir",
            "dags",
            "--period",
            "100ms",
            "--log-level",
            "dagsnap=debug",
        ],
    );
    daemon.wait_for_commit(&scratch.root(), &first, Duration::from_secs(30));
    let files: Vec<PathBuf> = published_checkout(&scratch).into_keys().collect();
    assert_eq!(
        files,
        ["a.py", "team", "team/b.py"].map(PathBuf::from).to_vec()
    );

    // A commit outside dags/: nothing new is published, and the journal says so once.
    let outside = remote.commit(&[("README.md", "monorepo, edited\n")], "outside");
    wait_until(
        Duration::from_secs(30),
        "the unchanged commit noticed",
        || daemon.logs().contains("changes nothing in --subdir dags"),
    );
    // Two more polls found it again and left the link alone.
    daemon.wait_for_lines(
        &["up to date: the commit changes nothing published", &outside],
        2,
        Duration::from_secs(30),
    );
    assert_eq!(published(&scratch.root()).as_deref(), Some(first.as_str()));
    let log = stdout(&on_root(&scratch, &["log"]));
    let unchanged: Vec<&str> = log.lines().filter(|l| l.contains("unchanged")).collect();
    assert_eq!(unchanged.len(), 1, "{log}");
    assert!(
        unchanged[0].contains(&outside[..12])
            && unchanged[0].contains(&format!("dags/ is the same as in {first}")),
        "{log}"
    );
    assert!(!scratch.root().join(SNAPSHOTS).join(&outside).exists());

    // A commit inside dags/ goes live.
    let inside = remote.commit(&[("dags/a.py", "a = 2\n")], "inside");
    daemon.wait_for_commit(&scratch.root(), &inside, Duration::from_secs(30));
    assert_eq!(
        fs::read_to_string(scratch.root().join("current/a.py")).unwrap(),
        "a = 2\n"
    );
    let status = stdout(&on_root(&scratch, &["status"]));
    assert!(status.contains("publishes:   subdir=dags"), "{status}");
    let verify = on_root(
        &scratch,
        &[
            "verify",
            "--cache-dir",
            &scratch.cache().display().to_string(),
        ],
    );
    assert!(verify.status.success(), "{}", stdout(&verify));

    // dags/ deleted by mistake: the publish fails, saying so, and the DAGs stay.
    git(&remote.dir, &["rm", "-q", "-r", "dags"]);
    git(&remote.dir, &["commit", "-q", "-m", "oops"]);
    wait_until(
        Duration::from_secs(30),
        "the missing subdir reported",
        || {
            daemon
                .logs()
                .contains("--subdir dags: the commit has no directory there")
        },
    );
    assert_eq!(published(&scratch.root()).as_deref(), Some(inside.as_str()));

    // A --subdir that leaves the repository, or names a file, is refused with what to do.
    let out = sync_once(&Scratch::new(), &remote.url(), &["--subdir", "dags/../.."]);
    assert_one_clear_line(&out, 2, "give a path inside the repository");
    let out = sync_once(&Scratch::new(), &remote.url(), &["--subdir", "README.md"]);
    assert_one_clear_line(
        &out,
        1,
        "--subdir README.md: the commit has a file there, not a directory; point --subdir at",
    );
}

/// What git's own sparse checkout of `url` leaves with `patterns` (cone mode on or off).
fn git_sparse_checkout(url: &str, into: &Path, patterns: &str, cone: bool) -> Vec<PathBuf> {
    let parent = into.parent().unwrap();
    git(
        parent,
        &[
            "clone",
            "-q",
            "--no-checkout",
            url,
            &into.display().to_string(),
        ],
    );
    git(into, &["config", "core.sparseCheckout", "true"]);
    git(
        into,
        &[
            "config",
            "core.sparseCheckoutCone",
            if cone { "true" } else { "false" },
        ],
    );
    fs::write(into.join(".git/info/sparse-checkout"), patterns).unwrap();
    git(into, &["checkout", "-q", "main"]);
    files_of(into)
}

/// The regular files under `dir` (git's own left out).
fn files_of(dir: &Path) -> Vec<PathBuf> {
    checkout(dir)
        .into_iter()
        .filter(|(_, what)| what != "dir")
        .map(|(path, _)| path)
        .collect()
}

#[test]
fn sparse_patterns_publish_what_git_s_sparse_checkout_leaves() {
    let remote = Remote::new();
    remote.commit(
        &[
            ("README.md", "r\n"),
            ("setup.py", "s\n"),
            ("dags/a.py", "a\n"),
            ("dags/team/b.py", "b\n"),
            ("dags/team/c.sql", "c\n"),
            ("dags/q/x.sql", "x\n"),
            ("docs/conf.py", "d\n"),
            ("docs/index.md", "i\n"),
            ("src/main.rs", "m\n"),
            ("tests/test_a.py", "t\n"),
            ("x/dags/y.py", "y\n"),
        ],
        "a monorepo",
    );
    let cases = [
        ("cone: dags", "/*\n!/*/\n/dags/\n", true),
        (
            "cone: dags/team",
            "/*\n!/*/\n/dags/\n!/dags/*/\n/dags/team/\n",
            true,
        ),
        (
            "patterns",
            "# Python and SQL, no tests\n*.py\n!tests/*\n/dags/**/*.sql\n!docs/\n",
            false,
        ),
        ("a bare name", "dags\n", false),
    ];
    let clones = tempfile::tempdir().unwrap();
    for (n, (name, patterns, cone)) in cases.iter().enumerate() {
        let expected = git_sparse_checkout(
            &remote.url(),
            &clones.path().join(n.to_string()),
            patterns,
            *cone,
        );
        let scratch = Scratch::new();
        let file = scratch.path("sparse-checkout");
        fs::write(&file, patterns).unwrap();
        sync_ok(
            &scratch,
            &remote.url(),
            &["--sparse-checkout-file", &file.display().to_string()],
        );
        assert_eq!(
            files_of(&scratch.root().join("current")),
            expected,
            "{name}: dagsnap and git sparse-checkout differ"
        );
        let verify = on_root(
            &scratch,
            &[
                "verify",
                "--cache-dir",
                &scratch.cache().display().to_string(),
            ],
        );
        assert!(verify.status.success(), "{name}: {}", stdout(&verify));
    }

    // As git-sync, with the chart's variable.
    let scratch = Scratch::new();
    let file = scratch.path("sparse-checkout");
    fs::write(&file, cases[0].1).unwrap();
    let root = scratch.root().display().to_string();
    let out = git_sync_via(&[], scratch.tmp.path())
        .env("DAGSNAP_CACHE_DIR", scratch.cache())
        .envs([
            ("GITSYNC_REPO", remote.url().as_str()),
            ("GITSYNC_ROOT", root.as_str()),
            ("GITSYNC_LINK", "repo"),
            ("GITSYNC_ONE_TIME", "true"),
            ("GITSYNC_SPARSE_CHECKOUT_FILE", &file.display().to_string()),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        files_of(&scratch.root().join("repo")),
        git_sparse_checkout(
            &remote.url(),
            &clones.path().join("git-sync"),
            cases[0].1,
            true
        )
    );

    // Patterns that select nothing fail the publish; a missing file stops dagsnap at start.
    let scratch = Scratch::new();
    let file = scratch.path("sparse-checkout");
    fs::write(&file, "/nothing-here/\n").unwrap();
    let out = sync_once(
        &scratch,
        &remote.url(),
        &["--sparse-checkout-file", &file.display().to_string()],
    );
    assert_one_clear_line(&out, 1, "select nothing in this commit");
    let out = sync_once(
        &scratch,
        &remote.url(),
        &["--sparse-checkout-file", "/no/such/file"],
    );
    assert_one_clear_line(&out, 2, "cannot read --sparse-checkout-file /no/such/file");
    fs::write(&file, "# only a comment\n\n").unwrap();
    let out = sync_once(
        &scratch,
        &remote.url(),
        &["--sparse-checkout-file", &file.display().to_string()],
    );
    assert_one_clear_line(&out, 2, "holds no patterns; git would check out nothing");
}
