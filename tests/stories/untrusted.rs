//! Nothing anyone else can write decides what readers see: the cache is private, modes do not
//! depend on the umask, and text others chose (commit subjects, names) cannot take over the
//! operator's terminal.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::support::*;

fn sync_without_cache_dir(scratch: &Scratch, remote: &Remote, env: &[(&str, &Path)]) -> String {
    let mut cmd = dagsnap(scratch.tmp.path());
    cmd.args(["sync", "--one-time", "--repo", &remote.url(), "--root"])
        .arg(scratch.root())
        .env_remove("XDG_CACHE_HOME");
    for (key, value) in env {
        cmd.env(key, value);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    stderr(&out)
}

/// The one cache directory under `base` (`<base>/<key>`).
fn only_cache_under(base: &Path) -> std::path::PathBuf {
    let dirs: Vec<_> = fs::read_dir(base)
        .unwrap_or_else(|e| panic!("{}: {e}", base.display()))
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs[0].clone()
}

#[test]
fn the_default_cache_is_private_and_a_shared_one_is_refused() {
    let remote = Remote::new();
    remote.commit(&[("a.py", "a\n")], "one");

    // Without a usable home, the cache goes to a per-uid directory in $TMPDIR, made 0700.
    let scratch = Scratch::new();
    let tmpdir = scratch.path("tmp");
    fs::create_dir(&tmpdir).unwrap();
    sync_without_cache_dir(
        &scratch,
        &remote,
        &[("HOME", Path::new("/")), ("TMPDIR", &tmpdir)],
    );
    let base = tmpdir.join(format!("dagsnap-{}", nix::unistd::geteuid()));
    let cache = only_cache_under(&base);
    assert_eq!(fs::metadata(&cache).unwrap().mode() & 0o7777, 0o700);

    // A cache directory that others may write, or that another uid owns, is refused.
    for (mode, owner, needle) in [
        (0o777, None, "others may write it"),
        (0o700, Some(65534), "belongs to uid 65534"),
    ] {
        let scratch = Scratch::new();
        fs::create_dir(scratch.cache()).unwrap();
        fs::set_permissions(scratch.cache(), fs::Permissions::from_mode(mode)).unwrap();
        if let Some(uid) = owner {
            std::os::unix::fs::chown(scratch.cache(), Some(uid), Some(uid)).unwrap();
        }
        let out = sync_once(&scratch, &remote.url(), &[]);
        assert_one_clear_line(&out, 2, needle);
        assert!(!scratch.root().join("current").exists());
    }
}

#[test]
fn with_umask_000_nothing_under_the_root_or_the_cache_is_writable_by_others() {
    let remote = Remote::new();
    remote.commit(
        &[("dags/a.py", "a\n"), ("bin/run.sh", "#!/bin/sh\n")],
        "one",
    );
    let scratch = Scratch::new();
    let out = {
        let mut cmd = sync_once_command(&scratch, &scratch.cache(), &remote.url(), &[]);
        // SAFETY: umask is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                libc::umask(0);
                Ok(())
            });
        }
        cmd.output().unwrap()
    };
    assert!(out.status.success(), "{}", stderr(&out));
    assert_root_valid(&scratch.root());
    for top in [scratch.root(), scratch.cache()] {
        for entry in walkdir::WalkDir::new(&top).follow_links(false) {
            let entry = entry.unwrap();
            if entry.file_type().is_symlink() {
                continue;
            }
            let mode = entry.metadata().unwrap().mode() & 0o7777;
            assert_eq!(
                mode & 0o022,
                0,
                "{} is writable by others ({mode:o})",
                entry.path().display()
            );
        }
    }
    assert_eq!(
        fs::metadata(scratch.cache()).unwrap().mode() & 0o7777,
        0o700
    );
}

/// What a pusher could put in a subject to take over a terminal: a carriage return that
/// overwrites the line with a fake commit id, a screen clear, a window title, a bell.
const HOSTILE: &str = "fix typo\r0000000 all good\x1b[2J\x1b]0;owned\x07";

fn assert_inert(output: &[u8], what: &str) {
    let text = String::from_utf8_lossy(output);
    assert!(
        !text.chars().any(|c| c.is_control() && c != '\n'),
        "{what} printed a control character: {text:?}"
    );
}

#[test]
fn commit_subjects_cannot_take_over_the_operators_terminal() {
    let remote = Remote::new();
    let scratch = Scratch::new();
    publish_versions(&remote, &scratch, 1, "v");
    remote.git(&["commit", "-q", "--allow-empty", "-m", HOSTILE]);
    let out = sync_once(&scratch, &remote.url(), &[]);
    assert!(out.status.success(), "{}", stderr(&out));

    for args in [
        &["status"][..],
        &["list"],
        &["log"],
        &["rollback", "--reason", "\x1b[31mred\x1b[0m"],
        &["log"],
    ] {
        let out = dagsnap(scratch.tmp.path())
            .args(args)
            .arg("--root")
            .arg(scratch.root())
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        assert_inert(&out.stdout, &format!("{args:?}"));
        assert_inert(&out.stderr, &format!("{args:?} (stderr)"));
    }
    let list = dagsnap(scratch.tmp.path())
        .args(["list", "--root"])
        .arg(scratch.root())
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&list.stdout).contains("fix typo\\r0000000 all good\\u{1b}[2J"),
        "the subject is shown escaped"
    );

    // Text that reaches a log line (here, a hostile --ref echoed in its error) is escaped too.
    let out = sync_once(&scratch, &remote.url(), &["--ref", "main\x1b[2J"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_inert(&out.stderr, "an error line");
    let err = stderr(&out);
    assert!(
        err.contains("main\\u{1b}[2J") || err.contains("main\\x1b[2J"),
        "{err}"
    );
}
