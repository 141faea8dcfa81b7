//! Fetching over the network transports, from real servers on 127.0.0.1.

use std::process::Command;
use std::time::Duration;

use crate::servers::{Door, HttpServer, SshServer};
use crate::support::*;

#[test]
fn publishes_from_a_smart_http_server_and_follows_it() {
    let remote = Remote::new();
    let first = remote.commit(&[("dags/a.py", "one\n")], "one");
    let server = HttpServer::start();
    let url = server.serve(&remote.dir, "dags.git");
    let scratch = Scratch::new();

    let out = sync_once(&scratch, &url, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(assert_root_valid(&scratch.root()), first);

    let second = remote.commit(&[("dags/a.py", "two\n")], "two");
    server.update(&remote.dir, "dags.git");
    let out = sync_once(&scratch, &url, &["--ref", "main"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(assert_root_valid(&scratch.root()), second);
    assert_eq!(read_current(&scratch.root(), "dags/a.py"), "two\n");
}

#[test]
fn an_idle_poll_is_one_request_for_one_ref_and_negotiates_nothing() {
    let remote = Remote::new();
    remote.commit(&[("dags/a.py", "one\n")], "one");
    let server = HttpServer::start();
    let url = server.serve(&remote.dir, "dags.git");
    let scratch = Scratch::new();
    assert!(sync_once(&scratch, &url, &[]).status.success());
    let requests_before = server.access_log().lines().count();
    // Everything in the cache but its lock file, which names the process that holds it.
    let cache_before: Vec<_> = fingerprint(&scratch.cache())
        .into_iter()
        .filter(|(path, _)| !path.ends_with("lock"))
        .collect();

    let mut daemon = spawn_loop(
        &scratch,
        &url,
        &["--period", "50ms", "--log-level", "debug"],
    );
    wait_until(Duration::from_secs(30), "ten idle polls", || {
        daemon.logs().matches("up to date").count() >= 10
    });
    daemon.stop();
    let polls = daemon.logs().matches("up to date").count();
    let log = server.access_log();
    let requests: Vec<&str> = log.lines().skip(requests_before).collect();
    let gets = requests.iter().filter(|r| r.contains("\"GET ")).count();
    let posts = requests.iter().filter(|r| r.contains("\"POST ")).count();
    // Protocol v2: one ls-refs command (POST) per poll; the capability advertisement (GET) is
    // asked by the first poll and reused for a minute. A fetch would add a second POST; a poll
    // cut short by SIGTERM may have made its request without logging "up to date".
    assert!(polls >= 10);
    assert!(
        gets == 1 && (polls..=polls + 1).contains(&posts),
        "{polls} polls made {gets} GET and {posts} POST requests:\n{}",
        requests.join("\n")
    );
    assert!(
        requests.iter().all(|r| r.contains("/dags.git/")),
        "{}",
        requests.join("\n")
    );
    let cache_after: Vec<_> = fingerprint(&scratch.cache())
        .into_iter()
        .filter(|(path, _)| !path.ends_with("lock"))
        .collect();
    assert_eq!(
        cache_before, cache_after,
        "idle polls wrote nothing to the cache"
    );
}

/// What the idle polls of a loop did: polls, and how many were settled by asking the last
/// listing again on dagsnap's own connection, and how many of those could not be asked.
fn idle_poll_counts(daemon: &Daemon) -> (usize, usize, usize) {
    let logs = daemon.logs();
    (
        logs.matches("up to date").count(),
        logs.matches("the remote answered the last listing as before")
            .count(),
        logs.matches("the refs could not be listed again").count(),
    )
}

#[test]
fn idle_polls_over_https_ask_again_on_a_kept_connection_that_the_server_may_close() {
    const USER: &str = "ci-bot";
    const TOKEN: &str = "glpat-Idl3P0llT0ken";
    let remote = Remote::new();
    remote.commit(&[("dags/a.py", "one\n")], "one");
    // nginx closes a connection after its third request, or after 150 ms without one.
    let server = HttpServer::start_tuned(
        true,
        USER,
        TOKEN,
        "keepalive_requests 3; keepalive_timeout 150ms;",
    );
    server.serve(&remote.dir, "dags.git");
    let url = server.url(Door::Private, "dags.git");
    let scratch = Scratch::new();
    let password = scratch.path("token");
    std::fs::write(&password, TOKEN).unwrap();
    let (ca, pw) = (
        server.ca_file.display().to_string(),
        password.display().to_string(),
    );
    let access = ["--username", USER, "--password-file", &pw];

    // Polls 50 ms apart: the server closes every third request's connection itself. Then
    // 300 ms apart: it has closed the kept connection by the next poll. The CA is trusted
    // through --ca-file, then through git's http.sslCAInfo (GIT_SSL_CAINFO).
    for period in ["50ms", "300ms"] {
        let (trust, env): (&[&str], &[(&str, &str)]) = match period {
            "50ms" => (&["--ca-file", &ca], &[]),
            _ => (&[], &[("GIT_SSL_CAINFO", &ca)]),
        };
        let mut daemon = spawn_loop_in_env(
            &scratch,
            &scratch.cache(),
            &url,
            &[
                &access[..],
                trust,
                &["--period", period, "--log-level", "debug"],
            ]
            .concat(),
            env,
        );
        wait_until(Duration::from_secs(60), "eight idle polls", || {
            idle_poll_counts(&daemon).0 >= 8
        });
        if period == "300ms" {
            let second = remote.commit(&[("dags/a.py", "two\n")], "two");
            server.update(&remote.dir, "dags.git");
            daemon.wait_for_commit(&scratch.root(), &second, Duration::from_secs(30));
        }
        daemon.stop();
        let (polls, asked_again, not_asked) = idle_poll_counts(&daemon);
        // The first poll of a process has the conversation that makes the listing.
        assert!(
            asked_again + 1 >= polls && not_asked == 0,
            "every {period} idle poll but the first asks the listing again: {polls} polls, \
             {asked_again} asked again, {not_asked} could not be asked\n{}",
            daemon.logs()
        );
        assert!(!daemon.logs().contains("sync failed"), "{}", daemon.logs());
    }
    assert_eq!(read_current(&scratch.root(), "dags/a.py"), "two\n");
}

#[test]
fn a_push_found_by_asking_the_listing_again_costs_one_listing_and_one_fetch() {
    let remote = Remote::new();
    remote.commit(&[("dags/a.py", "one\n")], "one");
    let server = HttpServer::start();
    let url = server.serve(&remote.dir, "dags.git");
    let scratch = Scratch::new();
    // Polls only when asked, so that each one's requests can be told apart.
    let port = crate::servers::free_port();
    let bind = format!("127.0.0.1:{port}");
    let mut daemon = spawn_loop(
        &scratch,
        &url,
        &[
            "--period",
            "1h",
            "--http-bind",
            &bind,
            "--log-level",
            "debug",
        ],
    );
    wait_until(Duration::from_secs(30), "the first publish", || {
        published(&scratch.root()).is_some()
    });
    let poll = |expected: &str| {
        let before = server.access_log().lines().count();
        let (status, body) = http("POST", &format!("http://{bind}/sync?wait=1"), &[], b"");
        assert_eq!(status, 200, "{body}");
        let outcome: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(outcome["outcome"], expected, "{outcome}");
        let log = server.access_log();
        log.lines()
            .skip(before)
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let is_post = |r: &String| r.contains("\"POST /dags.git/git-upload-pack");

    let idle = poll("unchanged");
    assert!(idle.len() == 1 && is_post(&idle[0]), "{idle:#?}");
    // The listing asked again differs: its answer is the conversation's, which asks only for
    // the pack (the capability advertisement is less than a minute old).
    let second = remote.commit(&[("dags/a.py", "two\n")], "two");
    server.update(&remote.dir, "dags.git");
    let update = poll("published");
    assert!(
        update.len() == 2 && update.iter().all(is_post),
        "{update:#?}"
    );
    assert_eq!(published(&scratch.root()).as_deref(), Some(second.as_str()));
    // And the next idle poll asks the new listing.
    let idle = poll("unchanged");
    assert!(idle.len() == 1 && is_post(&idle[0]), "{idle:#?}");
    assert!(
        daemon
            .logs()
            .matches("the remote answered the last listing as before")
            .count()
            >= 2,
        "{}",
        daemon.logs()
    );
    daemon.stop();
}

#[test]
fn a_moved_repository_is_followed_through_its_redirect() {
    let remote = Remote::new();
    let first = remote.commit(&[("dags/a.py", "one\n")], "one");
    let server = HttpServer::start();
    server.serve(&remote.dir, "dags.git");
    let url = server.url(Door::Moved, "dags.git");
    let scratch = Scratch::new();
    let mut daemon = spawn_loop(
        &scratch,
        &url,
        &["--period", "50ms", "--log-level", "debug"],
    );
    daemon.wait_for_commit(&scratch.root(), &first, Duration::from_secs(30));
    wait_until(Duration::from_secs(30), "five idle polls", || {
        idle_poll_counts(&daemon).0 >= 5
    });
    let second = remote.commit(&[("dags/a.py", "two\n")], "two");
    server.update(&remote.dir, "dags.git");
    daemon.wait_for_commit(&scratch.root(), &second, Duration::from_secs(30));
    daemon.stop();
    assert!(!daemon.logs().contains("sync failed"), "{}", daemon.logs());
    // The handshake follows the redirect (as git does, for the first request only); every
    // later request goes where it led, through gix's client, which knows it was redirected.
    let log = server.access_log();
    let posts: Vec<&str> = log.lines().filter(|l| l.contains("\"POST ")).collect();
    assert!(
        !posts.is_empty() && posts.iter().all(|l| !l.contains("/moved/")),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("\"GET /moved/dags.git/info/refs")),
        "{log}"
    );
}

#[test]
fn after_a_failed_poll_the_server_s_capabilities_are_asked_again() {
    let remote = Remote::new();
    remote.commit(&[("dags/a.py", "one\n")], "one");
    let server = HttpServer::start();
    let url = server.serve(&remote.dir, "dags.git");
    let scratch = Scratch::new();
    let mut daemon = spawn_loop(
        &scratch,
        &url,
        &["--period", "50ms", "--log-level", "debug"],
    );
    let polls = |daemon: &Daemon| daemon.logs().matches("up to date").count();
    wait_until(Duration::from_secs(30), "five idle polls", || {
        polls(&daemon) >= 5
    });
    let advertisements = |log: &str| -> Vec<String> {
        log.lines()
            .filter(|l| l.contains("\"GET ") && l.contains("/info/refs"))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(
        advertisements(&server.access_log()).len(),
        1,
        "one advertisement serves the polls of a minute"
    );

    // The repository disappears from the server for a moment: a poll fails.
    let served = server.projects.join("dags.git");
    let away = server.projects.join("dags.git.away");
    std::fs::rename(&served, &away).unwrap();
    wait_until(Duration::from_secs(30), "a failed poll", || {
        daemon.logs().contains("sync failed")
    });
    std::fs::rename(&away, &served).unwrap();
    let before = polls(&daemon);
    wait_until(Duration::from_secs(60), "idle polls again", || {
        polls(&daemon) >= before + 3
    });
    daemon.stop();

    // Well within the minute an advertisement is reused for: the failure made the next poll ask.
    let asked = advertisements(&server.access_log());
    assert!(asked.len() >= 2, "{}", asked.join("\n"));
    assert!(
        asked.last().is_some_and(|l| l.contains("\" 200 ")),
        "{}",
        asked.join("\n")
    );
}

/// An ssh-agent holding the client key, in the foreground of its own process group, stopped
/// when dropped.
struct Agent {
    socket: String,
    _agent: Group,
    _dir: tempfile::TempDir,
}

impl Agent {
    fn start(key: &std::path::Path) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let agent = Group::spawn(
            Command::new("ssh-agent")
                .arg("-D")
                .arg("-a")
                .arg(&socket)
                .stdout(std::process::Stdio::null()),
        );
        wait_until(Duration::from_secs(10), "the agent's socket", || {
            socket.exists()
        });
        let socket = socket.display().to_string();
        let added = Command::new("ssh-add")
            .arg(key)
            .env("SSH_AUTH_SOCK", &socket)
            .output()
            .unwrap();
        assert!(
            added.status.success(),
            "ssh-add: {}",
            String::from_utf8_lossy(&added.stderr)
        );
        Agent {
            socket,
            _agent: agent,
            _dir: dir,
        }
    }
}

#[test]
fn publishes_over_ssh_with_an_agent_key_in_both_url_forms() {
    let remote = Remote::new();
    let commit = remote.commit(&[("dags/a.py", "over ssh\n")], "one");
    let server = SshServer::start();
    let path = server.serve(&remote.dir, "dags.git");
    let agent = Agent::start(&server.client_key);
    let ssh = format!(
        "ssh -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile={}",
        server.known_hosts.display()
    );

    let forms = [
        (server.url_of(&path), ssh.clone()),
        // scp-like syntax has no port; the ssh command supplies it.
        (
            format!("{}@127.0.0.1:{}", server.user, path.display()),
            format!("{ssh} -o Port={}", server.port),
        ),
    ];
    for (url, ssh_command) in forms {
        let scratch = Scratch::new();
        let out = sync_once_command(&scratch, &scratch.cache(), &url, &[])
            .env("SSH_AUTH_SOCK", &agent.socket)
            .env("GIT_SSH_COMMAND", &ssh_command)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{url}: {}\nsshd: {}",
            stderr(&out),
            server.log()
        );
        assert_eq!(assert_root_valid(&scratch.root()), commit, "{url}");
    }
}
