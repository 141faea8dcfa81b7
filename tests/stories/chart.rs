//! The Airflow Helm chart's git-sync containers, exactly as the chart renders them (environment,
//! mounts, users), run unchanged with dagsnap's image in git-sync's place.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::git_sync::{link_target, shown_commit};
use crate::servers::{Door, HttpServer, SshServer};
use crate::support::*;

/// The environment the Airflow Helm chart renders for its git-sync containers
/// (`chart/templates/_helpers.yaml`, `git_sync_container`): both v3 and v4 names, as the chart
/// sets them, for `dags.gitSync` values repo, branch/ref `main`, rev `HEAD`, depth 1,
/// maxFailures 0, period 1s; `is_init` adds the init container's one-time settings.
pub(crate) fn chart_env(repo: &str, is_init: bool) -> Vec<(String, String)> {
    let mut env = vec![
        ("GIT_SYNC_REV", "HEAD"),
        ("GITSYNC_REF", "main"),
        ("GIT_SYNC_BRANCH", "main"),
        ("GIT_SYNC_REPO", repo),
        ("GITSYNC_REPO", repo),
        ("GIT_SYNC_DEPTH", "1"),
        ("GITSYNC_DEPTH", "1"),
        ("GIT_SYNC_ROOT", "/git"),
        ("GITSYNC_ROOT", "/git"),
        ("GIT_SYNC_DEST", "repo"),
        ("GITSYNC_LINK", "repo"),
        ("GIT_SYNC_ADD_USER", "true"),
        ("GITSYNC_ADD_USER", "true"),
        ("GITSYNC_PERIOD", "1s"),
        ("GIT_SYNC_MAX_SYNC_FAILURES", "0"),
        ("GITSYNC_MAX_FAILURES", "0"),
    ];
    if is_init {
        env.extend([("GIT_SYNC_ONE_TIME", "true"), ("GITSYNC_ONE_TIME", "true")]);
    }
    env.into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The chart's credentialsSecret case: user and password from the secret, in all four names.
fn chart_https_env(user: &str, password: &str) -> Vec<(String, String)> {
    [
        ("GIT_SYNC_USERNAME", user),
        ("GITSYNC_USERNAME", user),
        ("GIT_SYNC_PASSWORD", password),
        ("GITSYNC_PASSWORD", password),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The chart's sshKeySecret + knownHosts case.
fn chart_ssh_env() -> Vec<(String, String)> {
    [
        ("GIT_SSH_KEY_FILE", "/etc/git-secret/ssh"),
        ("GITSYNC_SSH_KEY_FILE", "/etc/git-secret/ssh"),
        ("GIT_SYNC_SSH", "true"),
        ("GITSYNC_SSH", "true"),
        ("GIT_KNOWN_HOSTS", "true"),
        ("GITSYNC_SSH_KNOWN_HOSTS", "true"),
        ("GIT_SSH_KNOWN_HOSTS_FILE", "/etc/git-secret/known_hosts"),
        (
            "GITSYNC_SSH_KNOWN_HOSTS_FILE",
            "/etc/git-secret/known_hosts",
        ),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// A pod of the chart, as far as git-sync's container sees it: the dags volume at /git
/// (group-writable, `fsGroup: 0`), the secret files under /etc/git-secret (root-owned, mode
/// 0440 as the chart's `defaultMode: 288`), uid 65533 without a passwd entry and with the pod's
/// group 0, HOME=/ and a private /tmp, in a mount namespace of its own.
struct ChartPod {
    scratch: Scratch,
    git: PathBuf,
    secrets: PathBuf,
    tmp: PathBuf,
}

impl ChartPod {
    const UID: u32 = 65533;

    fn new() -> Option<ChartPod> {
        if !nix::unistd::geteuid().is_root() {
            skip(
                "root, for a mount namespace and uid 65533",
                "this is not root",
            );
            return None;
        }
        // The chart's mount points. (Created empty on this machine if missing; the pod's
        // volumes are bound onto them inside the namespace only.)
        for point in ["/git", "/etc/git-secret"] {
            fs::create_dir_all(point).unwrap();
        }
        let scratch = Scratch::new();
        fs::set_permissions(scratch.tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let (git, secrets, tmp) = (
            scratch.path("dags-volume"),
            scratch.path("git-secret"),
            scratch.path("pod-tmp"),
        );
        for dir in [&git, &secrets, &tmp] {
            fs::create_dir_all(dir).unwrap();
        }
        fs::set_permissions(&git, fs::Permissions::from_mode(0o2775)).unwrap();
        nix::unistd::chown(&tmp, Some(nix::unistd::Uid::from_raw(Self::UID)), None).unwrap();
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o700)).unwrap();
        Some(ChartPod {
            scratch,
            git,
            secrets,
            tmp,
        })
    }

    /// Put a secret file where the chart mounts it.
    fn secret(&self, name: &str, content: &[u8]) {
        let path = self.secrets.join(name);
        fs::write(&path, content).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o440)).unwrap();
    }

    /// The container's command: the image's `git-sync`, with exactly `env`.
    fn container(&self, env: &[(String, String)]) -> Command {
        const ENTER: &str = r#"mount --bind "$1" /git && mount --bind "$2" /etc/git-secret && exec setpriv --reuid=65533 --regid=65533 --groups=0 "$3""#;
        let mut cmd = git_sync_via(
            &[
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                ENTER,
                "sh",
                self.git.to_str().unwrap(),
                self.secrets.to_str().unwrap(),
            ],
            self.scratch.tmp.path(),
        );
        cmd.env("HOME", "/")
            .env("TMPDIR", &self.tmp)
            .env("DAGSNAP_LOG_FORMAT", "json")
            .envs(env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    fn link(&self) -> PathBuf {
        self.git.join("repo")
    }
}

#[test]
fn the_airflow_chart_s_https_git_sync_containers_run_unchanged() {
    let Some(pod) = ChartPod::new() else { return };
    let remote = Remote::new();
    let first = remote.commit(&[("dags/a.py", "1\n")], "one");
    let server = HttpServer::start_with(true, "airflow", "s3cret-token");
    server.serve(&remote.dir, "dags.git");
    let url = server.url(Door::Private, "dags.git");
    // A private CA reaches git through dags.gitSync.env, as git would read it.
    pod.secret("ca.pem", &fs::read(&server.ca_file).unwrap());
    let extra = vec![(
        "GIT_SSL_CAINFO".to_string(),
        "/etc/git-secret/ca.pem".to_string(),
    )];
    let credentials = chart_https_env("airflow", "s3cret-token");

    // The init container: one sync, then exit 0, so the first DAG parse has files.
    let init = [chart_env(&url, true), credentials.clone(), extra.clone()].concat();
    let out = pod.container(&init).output().unwrap();
    assert!(
        out.status.success(),
        "{}\nnginx: {}",
        stderr(&out),
        server.access_log()
    );
    assert_eq!(
        fs::read_to_string(pod.link().join("dags/a.py")).unwrap(),
        "1\n"
    );
    assert!(
        link_target(&pod.link()).starts_with(".dagsnap/snapshots/"),
        "relative, inside the volume"
    );
    assert_eq!(shown_commit(&pod.link()).as_deref(), Some(first.as_str()));
    assert!(!stderr(&out).contains("s3cret-token"));
    let owner = fs::metadata(pod.git.join(".dagsnap")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        owner.uid(),
        ChartPod::UID,
        "written as the container's user"
    );

    // The sidecar: the same environment without one-time, following the branch.
    let sidecar = [chart_env(&url, false), credentials, extra].concat();
    let log = pod.scratch.path("sidecar.log");
    let _sidecar = Group::spawn(
        pod.container(&sidecar)
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap()),
    );
    let second = remote.commit(&[("dags/a.py", "2\n")], "two");
    server.update(&remote.dir, "dags.git");
    wait_until(
        Duration::from_secs(60),
        "the sidecar to publish the push",
        || shown_commit(&pod.link()).as_deref() == Some(second.as_str()),
    );
    assert_eq!(
        fs::read_to_string(pod.link().join("dags/a.py")).unwrap(),
        "2\n"
    );
    let logs = fs::read_to_string(&log).unwrap();
    assert!(!logs.contains("s3cret-token"), "{logs}");
    assert!(
        logs.lines()
            .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()),
        "JSON logs in a container:\n{logs}"
    );
}

#[test]
fn the_airflow_chart_s_ssh_git_sync_container_runs_unchanged() {
    let Some(pod) = ChartPod::new() else { return };
    let remote = Remote::new();
    let commit = remote.commit(&[("dags/a.py", "over ssh\n")], "one");
    let server = SshServer::start_git_shell();
    let path = server.serve(&remote.dir, "dags.git");
    pod.secret("ssh", &fs::read(&server.client_key).unwrap());
    pod.secret("known_hosts", &fs::read(&server.known_hosts).unwrap());
    let env = [chart_env(&server.url_of(&path), true), chart_ssh_env()].concat();
    let out = pod
        .container(&env)
        .env_remove("SSH_AUTH_SOCK")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\nsshd: {}",
        stderr(&out),
        server.log()
    );
    assert_eq!(shown_commit(&pod.link()).as_deref(), Some(commit.as_str()));
    assert_eq!(
        fs::read_to_string(pod.link().join("dags/a.py")).unwrap(),
        "over ssh\n"
    );
    let err = stderr(&out);
    assert!(err.contains("no passwd entry; giving ssh one"), "{err}");
    assert!(err.contains("--add-user is not needed"), "{err}");
}
