//! Real git servers on 127.0.0.1 for the transport stories: smart HTTP (`git http-backend`
//! behind nginx and fcgiwrap) and SSH (OpenSSH's sshd). `.ci/run` installs them with apt-get.

#![allow(dead_code)]

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::support::Group;
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

pub(crate) fn free_port() -> u16 {
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

/// Where the server's repositories live: bare clones of fixture repositories.
pub(crate) fn publish_bare(source: &Path, projects: &Path, name: &str) -> PathBuf {
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
///
/// Repositories are served three ways: `/<name>` anonymously, `/private/<name>` behind HTTP
/// basic auth, and `/forbidden/<name>` always answering 403. With `tls`, nginx speaks HTTPS
/// with a certificate from a CA made for the test (`ca_file`).
pub(crate) struct HttpServer {
    pub port: u16,
    pub projects: PathBuf,
    pub tls: bool,
    pub ca_file: PathBuf,
    htpasswd: PathBuf,
    _nginx: Group,
    _fcgiwrap: Group,
    _dir: tempfile::TempDir,
}

/// Which door of the server a URL goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Door {
    Public,
    Private,
    Forbidden,
    /// Answers every request with a permanent redirect to the public door.
    Moved,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a server certificate for 127.0.0.1 signed by it.
fn make_certificates(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=dagsnap test CA",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ],
    );
}

/// A self-signed certificate for `san` with `CA:TRUE`, as the server's and as the CA file.
fn make_self_signed_ca(dir: &Path, san: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            &format!("subjectAltName={san}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
        ],
    );
    fs::copy(dir.join("server.pem"), dir.join("ca.pem")).unwrap();
}

impl HttpServer {
    pub(crate) fn start() -> HttpServer {
        Self::start_with(false, "git-user", "initial-password")
    }

    pub(crate) fn start_with(tls: bool, user: &str, password: &str) -> HttpServer {
        Self::start_tuned(tls, user, password, "")
    }

    /// A server with `directives` added to nginx's `http` block (keep-alive limits, say).
    pub(crate) fn start_tuned(
        tls: bool,
        user: &str,
        password: &str,
        directives: &str,
    ) -> HttpServer {
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
        let htpasswd = d.join("htpasswd");
        fs::write(&htpasswd, format!("{user}:{{PLAIN}}{password}\n")).unwrap();
        if tls {
            make_certificates(d);
        }
        let socket = d.join("fcgi.sock");
        let log = d.join("error.log");
        let fcgi = Group::spawn(
            Command::new(fcgiwrap)
                .args(["-c", "4", "-s"])
                .arg(format!("unix:{}", socket.display()))
                .stdout(Stdio::null())
                .stderr(fs::File::create(d.join("fcgiwrap.log")).unwrap()),
        );
        let start = Instant::now();
        while !socket.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "fcgiwrap did not create its socket"
            );
            std::thread::sleep(Duration::from_millis(10));
        }

        let port = free_port();
        let user_directive = if nix::unistd::geteuid().is_root() {
            "user root;"
        } else {
            ""
        };
        let listen = if tls {
            format!("listen 127.0.0.1:{port} ssl;\n    ssl_certificate {d}/server.pem;\n    ssl_certificate_key {d}/server.key;", d = d.display())
        } else {
            format!("listen 127.0.0.1:{port};")
        };
        let git = |path_info: &str| {
            format!(
                "include /etc/nginx/fastcgi_params;
      fastcgi_param SCRIPT_FILENAME {backend};
      fastcgi_param GIT_PROJECT_ROOT {projects};
      fastcgi_param GIT_HTTP_EXPORT_ALL \"\";
      fastcgi_param PATH_INFO {path_info};
      fastcgi_param REMOTE_USER $remote_user;
      fastcgi_param GIT_PROTOCOL $http_git_protocol;
      fastcgi_pass unix:{socket};",
                backend = backend.display(),
                projects = projects.display(),
                socket = socket.display(),
            )
        };
        let conf = format!(
            r#"
{user_directive}
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
  {directives}
  server {{
    {listen}
    location ~ ^/forbidden/ {{ return 403; }}
    location ~ ^/moved/(.*)$ {{ return 301 /$1$is_args$args; }}
    location ~ ^/private(/.*)$ {{
      auth_basic "git";
      auth_basic_user_file {htpasswd};
      {private}
    }}
    location / {{
      {public}
    }}
  }}
}}
"#,
            d = d.display(),
            log = log.display(),
            htpasswd = htpasswd.display(),
            private = git("$1"),
            public = git("$uri"),
        );
        let conf_path = d.join("nginx.conf");
        fs::write(&conf_path, conf).unwrap();
        let server = Group::spawn(
            Command::new(nginx)
                .arg("-p")
                .arg(d)
                .arg("-c")
                .arg(&conf_path)
                .args(["-g", "daemon off;"])
                .stdout(Stdio::null())
                .stderr(fs::File::create(d.join("nginx.stderr")).unwrap()),
        );
        wait_for_port(port, "nginx", &d.join("nginx.stderr"));
        HttpServer {
            port,
            ca_file: d.join("ca.pem"),
            projects,
            tls,
            htpasswd,
            _nginx: server,
            _fcgiwrap: fcgi,
            _dir: dir,
        }
    }

    /// Serve `source` as `name`; returns its anonymous URL.
    pub(crate) fn serve(&self, source: &Path, name: &str) -> String {
        publish_bare(source, &self.projects, name);
        self.url(Door::Public, name)
    }

    pub(crate) fn url(&self, door: Door, name: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        let prefix = match door {
            Door::Public => "",
            Door::Private => "private/",
            Door::Forbidden => "forbidden/",
            Door::Moved => "moved/",
        };
        format!("{scheme}://127.0.0.1:{}/{prefix}{name}", self.port)
    }

    /// Every request nginx answered so far, one line each ("combined" format).
    pub(crate) fn access_log(&self) -> String {
        fs::read_to_string(self._dir.path().join("access.log")).unwrap_or_default()
    }

    /// Give the server a certificate signed by a new CA, written over `ca_file`, and wait until
    /// nginx presents it (it reloads on SIGHUP) and its old worker, which holds the connections
    /// made before, has exited.
    pub(crate) fn rotate_certificate(&self) {
        self.present_new_certificate(&make_certificates);
    }

    /// Present a self-signed certificate that is its own CA (`CA:TRUE`) for the names `san`
    /// (`IP:127.0.0.1,DNS:localhost`), as small internal git servers do; `ca_file` then holds
    /// that very certificate.
    pub(crate) fn present_self_signed_ca(&self, san: &str) {
        self.present_new_certificate(&|dir: &Path| make_self_signed_ca(dir, san));
    }

    /// Replace the server's certificate, key and CA file with what `make` writes into a
    /// directory, and wait until nginx presents them.
    fn present_new_certificate(&self, make: &dyn Fn(&Path)) {
        assert!(self.tls, "an http server has no certificate");
        let d = self._dir.path();
        let new = d.join("rotated");
        fs::create_dir_all(&new).unwrap();
        make(&new);
        for file in ["server.pem", "server.key", "ca.pem"] {
            fs::rename(new.join(file), d.join(file)).unwrap();
        }
        nix::sys::signal::kill(self._nginx.pid(), nix::sys::signal::Signal::SIGHUP).unwrap();
        let url = format!("https://127.0.0.1:{}/", self.port);
        let start = Instant::now();
        loop {
            // Answering, whatever its certificate says (it may name another host on purpose).
            let out = Command::new("curl")
                .args(["-s", "-o", "/dev/null", "--insecure"])
                .arg(&url)
                .status()
                .unwrap();
            // The master and one worker (worker_processes 1): the old worker is gone.
            let processes = Command::new("pgrep")
                .args(["-g", &self._nginx.pid().to_string()])
                .output()
                .unwrap();
            let count = String::from_utf8_lossy(&processes.stdout).lines().count();
            if out.success() && count == 2 {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "nginx did not present the new certificate with its old worker gone"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Change the basic-auth password (nginx reads the file on every request).
    pub(crate) fn set_password(&self, user: &str, password: &str) {
        let tmp = self.htpasswd.with_extension("new");
        fs::write(&tmp, format!("{user}:{{PLAIN}}{password}\n")).unwrap();
        fs::rename(&tmp, &self.htpasswd).unwrap();
    }

    /// Bring the served copy up to date with `source`.
    pub(crate) fn update(&self, source: &Path, name: &str) {
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

/// A TCP server that accepts connections and then says nothing, ever.
pub(crate) struct SilentServer {
    pub port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl SilentServer {
    pub(crate) fn start() -> SilentServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok((conn, _)) = listener.accept() {
                    held.push(conn);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        SilentServer { port, stop }
    }
}

impl Drop for SilentServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// OpenSSH's sshd on a high port, with a generated host key and one authorized client key.
pub(crate) struct SshServer {
    pub port: u16,
    pub user: String,
    pub client_key: PathBuf,
    pub known_hosts: PathBuf,
    pub projects: PathBuf,
    _sshd: Group,
    _dir: tempfile::TempDir,
}

/// The account deploy keys log in as, with `git-shell` as its shell (as on a real git host).
const GIT_SHELL_USER: &str = "dagsnap-git";

impl SshServer {
    pub(crate) fn start() -> SshServer {
        Self::start_as(None)
    }

    /// An sshd whose account for the tests is a `git-shell` user (created if missing; needs
    /// root). Without root, the current user is used.
    pub(crate) fn start_git_shell() -> SshServer {
        if !nix::unistd::geteuid().is_root() {
            return Self::start_as(None);
        }
        if nix::unistd::User::from_name(GIT_SHELL_USER)
            .ok()
            .flatten()
            .is_none()
        {
            let shell = ["/usr/bin/git-shell", "/usr/local/bin/git-shell"]
                .into_iter()
                .find(|p| Path::new(p).exists())
                .expect("git-shell is installed with git");
            let status = Command::new("useradd")
                .args([
                    "--system",
                    "--no-create-home",
                    "--shell",
                    shell,
                    GIT_SHELL_USER,
                ])
                .status()
                .unwrap();
            // Another test may have created it at the same moment.
            assert!(
                status.success()
                    || nix::unistd::User::from_name(GIT_SHELL_USER)
                        .ok()
                        .flatten()
                        .is_some()
            );
        }
        // useradd leaves the account locked ("!"), and sshd refuses locked accounts even for
        // keys; "*" means "no password login" without the lock.
        let _ = Command::new("usermod")
            .args(["-p", "*", GIT_SHELL_USER])
            .status();
        Self::start_as(Some(GIT_SHELL_USER))
    }

    fn start_as(user: Option<&str>) -> SshServer {
        let sshd = require("sshd", "openssh-server");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // The git-shell account must be able to reach the repositories.
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
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
        let child = Group::spawn(
            Command::new(sshd)
                .args(["-D", "-e", "-f"])
                .arg(&conf_path)
                .stdout(Stdio::null())
                .stderr(fs::File::create(&log).unwrap()),
        );
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
        let user = user.map(str::to_string).unwrap_or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::geteuid())
                .ok()
                .flatten()
                .map(|u| u.name)
                .unwrap_or_else(|| "root".into())
        });
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
    pub(crate) fn serve(&self, source: &Path, name: &str) -> PathBuf {
        let bare = publish_bare(source, &self.projects, name);
        if self.user == GIT_SHELL_USER {
            // git refuses to serve a repository owned by someone else ("dubious ownership").
            let ok = Command::new("chown")
                .arg("-R")
                .arg(GIT_SHELL_USER)
                .arg(&bare)
                .status()
                .unwrap()
                .success();
            assert!(ok, "chown of the served repository failed");
        }
        bare
    }

    /// The `ssh://user@127.0.0.1:port/path` URL of a served repository.
    pub(crate) fn url_of(&self, path: &Path) -> String {
        format!(
            "ssh://{}@127.0.0.1:{}{}",
            self.user,
            self.port,
            path.display()
        )
    }

    pub(crate) fn log(&self) -> String {
        fs::read_to_string(self._dir.path().join("sshd.log")).unwrap_or_default()
    }
}

/// One request a [`WebhookReceiver`] got.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    pub method: String,
    pub path: String,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A receiver for webhooks: answers every request with `status` and remembers it.
pub(crate) struct WebhookReceiver {
    pub port: u16,
    pub received: std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl WebhookReceiver {
    pub(crate) fn start(status: u16) -> WebhookReceiver {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (log, flag) = (received.clone(), stop.clone());
        std::thread::spawn(move || {
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok((conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                conn.set_nonblocking(false).unwrap();
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let mut parts = line.split_whitespace();
                let (method, path) = (
                    parts.next().unwrap_or_default().to_string(),
                    parts.next().unwrap_or_default().to_string(),
                );
                let mut headers = Vec::new();
                loop {
                    let mut header = String::new();
                    if reader.read_line(&mut header).is_err() || header.trim().is_empty() {
                        break;
                    }
                    if let Some((name, value)) = header.trim_end().split_once(':') {
                        headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
                    }
                }
                let length = headers
                    .iter()
                    .find(|(n, _)| n == "content-length")
                    .and_then(|(_, v)| v.parse().ok())
                    .unwrap_or(0);
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                log.lock().unwrap().push(Received {
                    method,
                    path,
                    headers,
                    body,
                });
                let mut conn = conn;
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
            }
        });
        WebhookReceiver {
            port,
            received,
            stop,
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    pub(crate) fn requests(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
