//! Real git repositories for the stories, built with the git CLI: [`Remote`], the repository
//! the tests push commits into, and [`git`] with no user or system configuration leaking in.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Run git in `dir` with no user or system configuration leaking in.
pub(crate) fn git(dir: &Path, args: &[&str]) -> String {
    let output = git_command(dir).args(args).output().expect("git runs");
    assert!(
        output.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

fn git_command(dir: &Path) -> Command {
    let mut cmd = Command::new("git");
    cmd.current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "Ada Operator")
        .env("GIT_AUTHOR_EMAIL", "ada@example.com")
        .env("GIT_COMMITTER_NAME", "Ada Operator")
        .env("GIT_COMMITTER_EMAIL", "ada@example.com");
    cmd
}

/// A repository the tests push commits into; dagsnap fetches from it over file://.
pub(crate) struct Remote {
    pub dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Remote {
    pub(crate) fn new() -> Remote {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("dags-repo");
        fs::create_dir(&dir).unwrap();
        git(&dir, &["init", "-q", "-b", "main"]);
        Remote { dir, _tmp: tmp }
    }

    pub(crate) fn url(&self) -> String {
        format!("file://{}", self.dir.display())
    }

    pub(crate) fn path(&self) -> String {
        self.dir.display().to_string()
    }

    /// Write files (path, content), stage everything, commit; returns the commit id.
    pub(crate) fn commit(&self, files: &[(&str, &str)], message: &str) -> String {
        for (path, content) in files {
            let full = self.dir.join(path);
            if let Some(parent) = full.parent() {
                fs::create_dir_all(parent).unwrap();
            }
            fs::write(&full, content).unwrap();
        }
        self.commit_all(message)
    }

    pub(crate) fn commit_all(&self, message: &str) -> String {
        git(&self.dir, &["add", "-A"]);
        git(&self.dir, &["commit", "-q", "--allow-empty", "-m", message]);
        self.head()
    }

    pub(crate) fn head(&self) -> String {
        git(&self.dir, &["rev-parse", "HEAD"])
    }

    pub(crate) fn git(&self, args: &[&str]) -> String {
        git(&self.dir, args)
    }

    /// Commit a tree made of exactly `files` on `main` with git's plumbing (`mktree -z`), which
    /// takes names the worktree or `git add` would refuse (`.GIT`, a 300-byte name, a path
    /// longer than PATH_MAX). The index and worktree are left alone, so use a remote for either
    /// this or [`Remote::commit`], not both.
    pub(crate) fn commit_tree(&self, files: &[TreeFile], message: &str) -> String {
        #[derive(Default)]
        struct Dir(BTreeMap<Vec<u8>, Node>);
        enum Node {
            Leaf(&'static str, String),
            Dir(Dir),
        }
        fn insert(dir: &mut Dir, path: &[u8], mode: &'static str, blob: String) {
            match path.iter().position(|b| *b == b'/') {
                None => {
                    dir.0.insert(path.to_vec(), Node::Leaf(mode, blob));
                }
                Some(slash) => {
                    let child = dir
                        .0
                        .entry(path[..slash].to_vec())
                        .or_insert_with(|| Node::Dir(Dir::default()));
                    if let Node::Dir(child) = child {
                        insert(child, &path[slash + 1..], mode, blob);
                    }
                }
            }
        }
        fn write(repo: &Path, dir: &Dir) -> String {
            let mut input = Vec::new();
            for (name, node) in &dir.0 {
                let (mode, kind, id) = match node {
                    Node::Leaf(mode, blob) => (*mode, "blob", blob.clone()),
                    Node::Dir(child) => ("040000", "tree", write(repo, child)),
                };
                input.extend_from_slice(format!("{mode} {kind} {id}\t").as_bytes());
                input.extend_from_slice(name);
                input.push(0);
            }
            pipe_git(repo, &["mktree", "-z"], &input)
        }
        let mut top = Dir::default();
        for file in files {
            let blob = pipe_git(&self.dir, &["hash-object", "-w", "--stdin"], &file.content);
            insert(&mut top, &file.path, file.mode, blob);
        }
        let tree = write(&self.dir, &top);
        let parent = git_command(&self.dir)
            .args(["rev-parse", "-q", "--verify", "refs/heads/main"])
            .output()
            .unwrap();
        let mut args = vec!["commit-tree", tree.as_str(), "-m", message];
        let parent = String::from_utf8_lossy(&parent.stdout).trim().to_string();
        if !parent.is_empty() {
            args.extend(["-p", parent.as_str()]);
        }
        let commit = git(&self.dir, &args);
        git(&self.dir, &["update-ref", "refs/heads/main", &commit]);
        commit
    }
}

/// One file of [`Remote::commit_tree`]: a path as bytes, its content, and git's mode.
pub(crate) struct TreeFile {
    pub path: Vec<u8>,
    pub content: Vec<u8>,
    pub mode: &'static str,
}

impl TreeFile {
    pub(crate) fn file(path: impl Into<Vec<u8>>, content: impl Into<Vec<u8>>) -> TreeFile {
        TreeFile {
            path: path.into(),
            content: content.into(),
            mode: "100644",
        }
    }
    pub(crate) fn executable(path: impl Into<Vec<u8>>, content: impl Into<Vec<u8>>) -> TreeFile {
        TreeFile {
            mode: "100755",
            ..TreeFile::file(path, content)
        }
    }
    pub(crate) fn symlink(path: impl Into<Vec<u8>>, target: impl Into<Vec<u8>>) -> TreeFile {
        TreeFile {
            mode: "120000",
            ..TreeFile::file(path, target)
        }
    }
}

/// Run git with `input` on stdin; its trimmed stdout.
fn pipe_git(dir: &Path, args: &[&str], input: &[u8]) -> String {
    let mut child = git_command(dir)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl Remote {
    /// Create `count` commits on `branch` in one `git fast-import` run, each holding
    /// `files_per_commit` files whose content names the commit's number. Returns the ids.
    pub(crate) fn fast_commits(
        &self,
        branch: &str,
        count: usize,
        files_per_commit: usize,
    ) -> Vec<String> {
        let mut stream = String::new();
        for i in 1..=count {
            stream.push_str(&format!(
                "commit refs/heads/{branch}\nmark :{i}\ncommitter Ada Operator <ada@example.com> {} +0000\ndata <<EOM\ncommit {i}\nEOM\n",
                1_700_000_000 + i
            ));
            if i > 1 {
                stream.push_str(&format!("from :{}\n", i - 1));
            }
            stream.push_str("deleteall\n");
            // Commits differ in their set of files too, so a reader that mixed two commits or
            // saw a partial tree would notice a missing or extra file.
            let n = files_per_commit + i % 7;
            let mut listing = String::new();
            for f in 0..n {
                let path = format!("dir{}/file{f}.py", f % 10);
                listing.push_str(&path);
                listing.push('\n');
                let content = format!("{i}\n");
                stream.push_str(&format!(
                    "M 100644 inline {path}\ndata {}\n{content}\n",
                    content.len()
                ));
            }
            stream.push_str(&format!(
                "M 100644 inline LISTING\ndata {}\n{listing}\n",
                listing.len()
            ));
        }
        stream.push_str("done\n");
        let mut child = git_command(&self.dir)
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
        assert!(child.wait().unwrap().success(), "fast-import failed");
        let log = self.git(&["rev-list", "--reverse", &format!("refs/heads/{branch}")]);
        let ids: Vec<String> = log.lines().map(str::to_string).collect();
        ids[ids.len() - count..].to_vec()
    }
}
