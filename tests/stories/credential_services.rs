//! Credentials asked for at every conversation, as git-sync asks for them: an askpass service
//! (`--askpass-url`) and a GitHub App (a JWT of the app exchanged for an installation token).
//! The services are real HTTP servers on 127.0.0.1 that play their part: the GitHub API one
//! checks the JWT's signature with the app's public key before it hands out a token.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::git_sync::{assert_root_valid_at, spawn_git_sync};
use crate::servers::{free_port, Door, HttpServer};
use crate::support::*;

/// Plays an askpass service (`GET /askpass`: the lines in the file `answer`) and the GitHub
/// API (`POST /app/installations/<id>/access_tokens`: a token for a JWT that `app.pub`
/// verifies, valid `lifetime` seconds). Every request is logged to `requests`.
const SERVICE: &str = r#"
import base64, http.server, json, os, subprocess, sys, tempfile, time
port, state = int(sys.argv[1]), sys.argv[2]
def log(line):
    with open(os.path.join(state, "requests"), "a") as f:
        f.write(line + "\n")
def unb64(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
class Handler(http.server.BaseHTTPRequestHandler):
    def reply(self, status, body, kind="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        log("GET " + self.path)
        with open(os.path.join(state, "answer"), "rb") as f:
            self.reply(200, f.read(), "text/plain")
    def do_POST(self):
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or auth.count(".") != 2:
            log("POST refused: no JWT"); return self.reply(401, b'{"message":"no JWT"}')
        header, claims, signature = auth[len("Bearer "):].split(".")
        with tempfile.TemporaryDirectory() as d:
            open(os.path.join(d, "input"), "wb").write((header + "." + claims).encode())
            open(os.path.join(d, "sig"), "wb").write(unb64(signature))
            ok = subprocess.run(["openssl", "dgst", "-sha256", "-verify", os.path.join(state, "app.pub"),
                                 "-signature", os.path.join(d, "sig"), os.path.join(d, "input")],
                                capture_output=True).returncode == 0
        body = json.loads(unb64(claims))
        now = time.time()
        if not ok or not (body["iat"] <= now + 5 and body["exp"] > now):
            log("POST refused: bad JWT"); return self.reply(401, b'{"message":"bad JWT"}')
        log("POST %s iss=%s" % (self.path, body["iss"]))
        lifetime = int(open(os.path.join(state, "lifetime")).read())
        expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + lifetime))
        token = open(os.path.join(state, "token")).read().strip()
        self.reply(201, json.dumps({"token": token, "expires_at": expires}).encode())
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
"#;

/// The service, its state directory and base URL.
struct Service {
    _group: Group,
    state: tempfile::TempDir,
    base: String,
}

impl Service {
    fn start() -> Service {
        let state = tempfile::tempdir().unwrap();
        let script = state.path().join("service.py");
        fs::write(&script, SERVICE).unwrap();
        fs::write(state.path().join("lifetime"), "3600").unwrap();
        let port = free_port();
        let group = Group::spawn(
            Command::new("python3")
                .arg(&script)
                .arg(port.to_string())
                .arg(state.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        let base = format!("http://127.0.0.1:{port}/");
        wait_until(Duration::from_secs(20), "the service", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Service {
            _group: group,
            state,
            base,
        }
    }

    fn set(&self, name: &str, value: &str) {
        let path = self.state.path().join(name);
        fs::write(path.with_extension("new"), value).unwrap();
        fs::rename(path.with_extension("new"), path).unwrap();
    }

    fn requests(&self) -> Vec<String> {
        fs::read_to_string(self.state.path().join("requests"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// An RSA key pair for a GitHub App, as GitHub hands it out (PKCS#1 PEM); the public half
    /// stays with the service.
    fn app_key(&self, into: &Path) -> String {
        let key = into.join("app.pem");
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl").args(args).output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        openssl(&[
            "genrsa",
            "-traditional",
            "-out",
            key.to_str().unwrap(),
            "2048",
        ]);
        let public = self.state.path().join("app.pub");
        openssl(&[
            "rsa",
            "-in",
            key.to_str().unwrap(),
            "-pubout",
            "-out",
            public.to_str().unwrap(),
        ]);
        key.display().to_string()
    }
}

/// The commit the `dags` link of `root` shows.
fn shown(root: &Path) -> Option<String> {
    fs::read_link(root.join("dags"))
        .ok()
        .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
}

#[test]
fn a_github_app_s_installation_token_is_fetched_kept_and_renewed() {
    let remote = Remote::new();
    let first = remote.commit(&[("dags/a.py", "1\n")], "one");
    let server = HttpServer::start_with(true, "x-access-token", "ghs_installation1");
    server.serve(&remote.dir, "dags.git");
    let api = Service::start();
    api.set("token", "ghs_installation1");
    // Tokens that expire 302 s after they are issued: dagsnap renews them 5 minutes early, so
    // each is kept about 2 s, across several polls.
    api.set("lifetime", "302");
    let scratch = Scratch::new();
    let key = api.app_key(scratch.tmp.path());
    let root = scratch.root().display().to_string();
    let url = server.url(Door::Private, "dags.git");
    let ca = format!("--git-config=http.sslCAInfo:{}", server.ca_file.display());
    let daemon = spawn_git_sync(
        &scratch,
        &[&ca, "--period=200ms", "--max-failures=-1"],
        &[
            ("GITSYNC_REPO", &url),
            ("GITSYNC_ROOT", &root),
            ("GITSYNC_LINK", "dags"),
            ("GITSYNC_GITHUB_APP_PRIVATE_KEY_FILE", &key),
            ("GITSYNC_GITHUB_APP_APPLICATION_ID", "1234"),
            ("GITSYNC_GITHUB_APP_INSTALLATION_ID", "42"),
            ("GITSYNC_GITHUB_BASE_URL", &api.base),
        ],
    );
    wait_until(Duration::from_secs(30), "the first publish", || {
        shown(&scratch.root()).as_deref() == Some(first.as_str())
    });
    assert_eq!(assert_root_valid_at(&scratch.root(), "dags"), first);
    let tokens = || {
        api.requests()
            .iter()
            .filter(|r| r.starts_with("POST /app/installations/42/access_tokens iss=1234"))
            .count()
    };
    assert!(
        api.requests().iter().all(|r| !r.contains("refused")),
        "every JWT verified: {:?}",
        api.requests()
    );
    // Renewed before it expires, and kept in between: fewer tokens than polls.
    wait_until(Duration::from_secs(30), "a renewal", || tokens() >= 2);
    let polls = server
        .access_log()
        .lines()
        .filter(|l| l.contains("dags.git"))
        .count();
    assert!(
        tokens() * 2 < polls,
        "{} tokens for {polls} requests",
        tokens()
    );

    // The installation's token changes: the next renewal brings it, without a restart.
    api.set("token", "ghs_installation2");
    server.set_password("x-access-token", "ghs_installation2");
    let second = remote.commit(&[("dags/a.py", "2\n")], "two");
    server.update(&remote.dir, "dags.git");
    wait_until(
        Duration::from_secs(30),
        "the next commit with the new token",
        || shown(&scratch.root()).as_deref() == Some(second.as_str()),
    );
    assert!(
        !daemon.logs().contains("ghs_installation"),
        "tokens are never logged"
    );
}

#[test]
fn an_askpass_service_is_asked_before_every_fetch_and_a_rotated_password_is_followed() {
    let remote = Remote::new();
    let first = remote.commit(&[("dags/a.py", "1\n")], "one");
    let server = HttpServer::start_with(true, "ci-bot", "first-password");
    server.serve(&remote.dir, "dags.git");
    let askpass = Service::start();
    askpass.set("answer", "username=ci-bot\npassword=first-password\n");
    let scratch = Scratch::new();
    let root = scratch.root().display().to_string();
    let url = server.url(Door::Private, "dags.git");
    let ca = format!("--git-config=http.sslCAInfo:{}", server.ca_file.display());
    let service = format!("{}askpass", askpass.base);
    let daemon = spawn_git_sync(
        &scratch,
        &[
            &ca,
            "--period=200ms",
            "--max-failures=-1",
            &format!("--askpass-url={service}"),
        ],
        &[
            ("GITSYNC_REPO", &url),
            ("GITSYNC_ROOT", &root),
            ("GITSYNC_LINK", "dags"),
        ],
    );
    wait_until(Duration::from_secs(30), "the first publish", || {
        shown(&scratch.root()).as_deref() == Some(first.as_str())
    });
    assert!(!askpass.requests().is_empty());

    // The password is rotated at the server and the service: followed without a restart.
    server.set_password("ci-bot", "second-password");
    askpass.set("answer", "username=ci-bot\npassword=second-password\n");
    let second = remote.commit(&[("dags/a.py", "2\n")], "two");
    server.update(&remote.dir, "dags.git");
    wait_until(
        Duration::from_secs(30),
        "the rotated password followed",
        || shown(&scratch.root()).as_deref() == Some(second.as_str()),
    );
    assert!(!daemon.logs().contains("second-password"), "never logged");
}

#[test]
fn two_sources_of_the_password_are_refused_at_start() {
    let remote = Remote::new();
    remote.commit(&[("dags/a.py", "1\n")], "one");
    let scratch = Scratch::new();
    let out = sync_once(
        &scratch,
        &remote.url(),
        &[
            "--askpass-url",
            "http://127.0.0.1:1/",
            "--password-file",
            "/dev/null",
        ],
    );
    assert_one_clear_line(
        &out,
        2,
        "--password-file and --askpass-url each give the HTTPS password: keep one",
    );
    let out = sync_once(
        &scratch,
        &remote.url(),
        &["--github-app-installation-id", "42"],
    );
    assert_one_clear_line(
        &out,
        2,
        "GitHub App authentication needs the app's private key",
    );
}

/// Records the headers of every request and refuses them all (it is not a git server).
const RECORDER: &str = r#"
import http.server, sys
port, log = int(sys.argv[1]), sys.argv[2]
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        with open(log, "a") as f:
            f.write("%s %s Cookie: %s\n" % (self.command, self.path, self.headers.get("Cookie", "")))
        self.send_response(403); self.send_header("Content-Length", "0"); self.end_headers()
    do_POST = do_GET
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
"#;

#[test]
fn the_cookie_file_s_cookies_for_the_repository_go_with_its_requests() {
    let scratch = Scratch::new();
    let script = scratch.path("recorder.py");
    fs::write(&script, RECORDER).unwrap();
    let log = scratch.path("requests");
    let port = free_port();
    let _server = Group::spawn(
        Command::new("python3")
            .arg(&script)
            .arg(port.to_string())
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_until(Duration::from_secs(20), "the recorder", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let cookies = scratch.path("cookie_file");
    fs::write(
        &cookies,
        "# Netscape HTTP Cookie File\n\
         127.0.0.1\tFALSE\t/\tFALSE\t0\to\tgit-bot=s3cret\n\
         other.example\tFALSE\t/\tFALSE\t0\tforeign\tno\n",
    )
    .unwrap();
    let url = format!("http://127.0.0.1:{port}/dags.git");
    let out = sync_once(
        &scratch,
        &url,
        &["--cookie-file", cookies.to_str().unwrap()],
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "the recorder refuses: {}",
        stderr(&out)
    );
    let seen = fs::read_to_string(&log).unwrap_or_default();
    assert!(
        seen.lines()
            .next()
            .is_some_and(|l| l.ends_with("Cookie: o=git-bot=s3cret")),
        "the first request carried the repository's cookie, and only it:\n{seen}"
    );
    assert!(!stderr(&out).contains("s3cret"), "{}", stderr(&out));
}
