//! Real git servers on 127.0.0.1 for the transport stories: smart HTTP (`git http-backend`
//! behind nginx and fcgiwrap) and SSH (OpenSSH's sshd). `.ci/run` installs them with apt-get.

#![allow(dead_code)]

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn require(binary: &str, package: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"] {
        let path = Path::new(dir).join(binary);
        if path.exists() {
            return path;
        }
    }
    panic!("{binary} is not installed: apt-get install {package} (.ci/run does this)");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16, what: &str, log: &Path) {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{what} did not start listening on {port}:\n{}",
            fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Where the server's repositories live: bare clones of fixture repositories.
pub fn publish_bare(source: &Path, projects: &Path, name: &str) -> PathBuf {
    let bare = projects.join(name);
    if bare.exists() {
        fs::remove_dir_all(&bare).unwrap();
    }
    fs::create_dir_all(projects).unwrap();
    crate::support::git(
        projects,
        &["clone", "-q", "--bare", &source.display().to_string(), name],
    );
    bare
}

/// Smart HTTP: nginx in front of fcgiwrap running git-http-backend.
pub struct HttpServer {
    pub port: u16,
    pub projects: PathBuf,
    _nginx: Killed,
    _fcgiwrap: Killed,
    _dir: tempfile::TempDir,
}

impl HttpServer {
    pub fn start() -> HttpServer {
        let nginx = require("nginx", "nginx");
        let fcgiwrap = require("fcgiwrap", "fcgiwrap");
        let backend = Path::new("/usr/lib/git-core/git-http-backend");
        assert!(
            backend.exists(),
            "git-http-backend not found at {}",
            backend.display()
        );

        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let projects = d.join("projects");
        fs::create_dir_all(&projects).unwrap();
        for sub in ["body", "fastcgi", "proxy", "uwsgi", "scgi"] {
            fs::create_dir_all(d.join(sub)).unwrap();
        }
        let socket = d.join("fcgi.sock");
        let log = d.join("error.log");
        let fcgi = Command::new(fcgiwrap)
            .args(["-c", "4", "-s"])
            .arg(format!("unix:{}", socket.display()))
            .stdout(Stdio::null())
            .stderr(fs::File::create(d.join("fcgiwrap.log")).unwrap())
            .spawn()
            .unwrap();
        let fcgi = Killed(fcgi);
        let start = Instant::now();
        while !socket.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "fcgiwrap did not create its socket"
            );
            std::thread::sleep(Duration::from_millis(10));
        }

        let port = free_port();
        let user = if nix::unistd::geteuid().is_root() {
            "user root;"
        } else {
            ""
        };
        let conf = format!(
            r#"
{user}
worker_processes 1;
pid {d}/nginx.pid;
error_log {log} info;
events {{ worker_connections 64; }}
http {{
  access_log {d}/access.log;
  client_body_temp_path {d}/body;
  fastcgi_temp_path {d}/fastcgi;
  proxy_temp_path {d}/proxy;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  server {{
    listen 127.0.0.1:{port};
    location / {{
      include /etc/nginx/fastcgi_params;
      fastcgi_param SCRIPT_FILENAME {backend};
      fastcgi_param GIT_PROJECT_ROOT {projects};
      fastcgi_param GIT_HTTP_EXPORT_ALL "";
      fastcgi_param PATH_INFO $uri;
      fastcgi_param REMOTE_USER $remote_user;
      fastcgi_param GIT_PROTOCOL $http_git_protocol;
      fastcgi_pass unix:{socket};
    }}
  }}
}}
"#,
            d = d.display(),
            log = log.display(),
            backend = backend.display(),
            projects = projects.display(),
            socket = socket.display(),
        );
        let conf_path = d.join("nginx.conf");
        fs::write(&conf_path, conf).unwrap();
        let server = Command::new(nginx)
            .arg("-p")
            .arg(d)
            .arg("-c")
            .arg(&conf_path)
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(fs::File::create(d.join("nginx.stderr")).unwrap())
            .spawn()
            .unwrap();
        let server = Killed(server);
        wait_for_port(port, "nginx", &d.join("nginx.stderr"));
        HttpServer {
            port,
            projects,
            _nginx: server,
            _fcgiwrap: fcgi,
            _dir: dir,
        }
    }

    /// Serve `source` as `name`; returns its http URL.
    pub fn serve(&self, source: &Path, name: &str) -> String {
        publish_bare(source, &self.projects, name);
        format!("http://127.0.0.1:{}/{name}", self.port)
    }

    /// Bring the served copy up to date with `source`.
    pub fn update(&self, source: &Path, name: &str) {
        crate::support::git(
            &self.projects.join(name),
            &[
                "fetch",
                "-q",
                &source.display().to_string(),
                "+refs/heads/*:refs/heads/*",
            ],
        );
    }
}

/// OpenSSH's sshd on a high port, with a generated host key and one authorized client key.
pub struct SshServer {
    pub port: u16,
    pub user: String,
    pub client_key: PathBuf,
    pub known_hosts: PathBuf,
    pub projects: PathBuf,
    _sshd: Killed,
    _dir: tempfile::TempDir,
}

impl SshServer {
    pub fn start() -> SshServer {
        let sshd = require("sshd", "openssh-server");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let projects = d.join("projects");
        fs::create_dir_all(&projects).unwrap();
        let keygen = |path: &Path| {
            let ok = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(path)
                .status()
                .unwrap()
                .success();
            assert!(ok, "ssh-keygen failed");
        };
        let host_key = d.join("host_ed25519");
        let client_key = d.join("client_ed25519");
        keygen(&host_key);
        keygen(&client_key);
        fs::copy(d.join("client_ed25519.pub"), d.join("authorized_keys")).unwrap();
        // sshd insists on its privilege separation directory.
        let _ = fs::create_dir_all("/run/sshd");

        let port = free_port();
        let conf = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nPidFile {d}/sshd.pid\nAuthorizedKeysFile {d}/authorized_keys\n\
             StrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             PermitRootLogin prohibit-password\nLogLevel VERBOSE\n",
            hk = host_key.display(),
            d = d.display()
        );
        let conf_path = d.join("sshd_config");
        fs::write(&conf_path, conf).unwrap();
        let log = d.join("sshd.log");
        let child = Command::new(sshd)
            .args(["-D", "-e", "-f"])
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let child = Killed(child);
        wait_for_port(port, "sshd", &log);
        let host_pub = fs::read_to_string(d.join("host_ed25519.pub")).unwrap();
        let mut parts = host_pub.split_whitespace();
        let known = format!(
            "[127.0.0.1]:{port} {} {}\n",
            parts.next().unwrap(),
            parts.next().unwrap()
        );
        let known_hosts = d.join("known_hosts");
        fs::write(&known_hosts, known).unwrap();
        let user = nix::unistd::User::from_uid(nix::unistd::geteuid())
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_else(|| "root".into());
        SshServer {
            port,
            user,
            client_key,
            known_hosts,
            projects,
            _sshd: child,
            _dir: dir,
        }
    }

    /// Serve `source` as `name`; returns the repository's absolute path on the server.
    pub fn serve(&self, source: &Path, name: &str) -> PathBuf {
        publish_bare(source, &self.projects, name)
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self._dir.path().join("sshd.log")).unwrap_or_default()
    }
}
