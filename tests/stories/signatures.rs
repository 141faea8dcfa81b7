//! Only signed code runs (`--verify-signatures`): a corpus of commits and tags signed with the
//! real tools (ssh-keygen through `git commit -S` with `gpg.format=ssh`, and gpg), each judged
//! by `git verify-commit` / `git verify-tag` and by dagsnap, which must agree on every case;
//! and a loop with mixed commits arriving, where only verified commits are ever live and a key
//! added to the allowed signers takes effect without a restart.

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::support::*;

/// Keys and trust files for one story, in a directory of their own.
struct Keys {
    dir: tempfile::TempDir,
    gnupg: PathBuf,
}

/// A committer date inside every key's validity (UTC), and one after `dan`'s `valid-before`.
const COMMIT_DATE: &str = "2024-06-01T12:00:00Z";
const LATE_DATE: &str = "2025-06-01T12:00:00Z";

impl Keys {
    fn new() -> Option<Keys> {
        if Command::new("gpg").arg("--version").output().is_err() {
            skip("gpg", "it is not installed (scripts/test installs gnupg)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let gnupg = dir.path().join("gnupg");
        fs::create_dir(&gnupg).unwrap();
        fs::set_permissions(&gnupg, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        Some(Keys { dir, gnupg })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// An SSH key `name` of `kind` (`ed25519`, `ecdsa`, `rsa`); its public key line.
    fn ssh_key(&self, name: &str, kind: &str) -> String {
        let path = self.path(name);
        let mut cmd = Command::new("ssh-keygen");
        cmd.args(["-q", "-t", kind, "-N", "", "-C", name, "-f"])
            .arg(&path);
        if kind == "rsa" {
            cmd.args(["-b", "2048"]);
        }
        assert!(cmd.output().unwrap().status.success());
        fs::read_to_string(path.with_extension("pub"))
            .unwrap()
            .trim()
            .to_string()
    }

    fn gpg(&self, args: &[&str]) -> std::process::Output {
        let out = Command::new("gpg")
            .env("GNUPGHOME", &self.gnupg)
            .args([
                "--batch",
                "--yes",
                "--pinentry-mode",
                "loopback",
                "--passphrase",
                "",
            ])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "gpg {args:?}: {}", stderr(&out));
        out
    }

    /// A gpg key for `email` of `algo`, made at `when` (gpg's faked time) lasting `expire`;
    /// its fingerprint.
    fn gpg_key(&self, email: &str, algo: &str, expire: &str, when: Option<&str>) -> String {
        let mut args = vec![];
        if let Some(when) = when {
            args.extend(["--faked-system-time", when]);
        }
        args.extend(["--quick-gen-key", email, algo, "sign", expire]);
        self.gpg(&args);
        let listed =
            String::from_utf8(self.gpg(&["--with-colons", "--list-keys", email]).stdout).unwrap();
        let fingerprint = listed
            .lines()
            .find_map(|l| {
                l.strip_prefix("fpr:")
                    .map(|r| r.trim_matches(':').to_string())
            })
            .unwrap();
        // Trusted, as a keyring's keys are for dagsnap.
        let mut trust = Command::new("gpg")
            .env("GNUPGHOME", &self.gnupg)
            .args(["--batch", "--import-ownertrust"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        trust
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{fingerprint}:6:\n").as_bytes())
            .unwrap();
        assert!(trust.wait().unwrap().success());
        fingerprint
    }

    /// Revoke a gpg key with the revocation certificate gpg made with it.
    fn revoke_gpg(&self, fingerprint: &str) {
        let cert = self
            .gnupg
            .join("openpgp-revocs.d")
            .join(format!("{fingerprint}.rev"));
        let text = fs::read_to_string(&cert)
            .unwrap()
            .replace(":-----BEGIN", "-----BEGIN");
        let fixed = self.path("revoke.asc");
        fs::write(&fixed, text).unwrap();
        self.gpg(&["--import", fixed.to_str().unwrap()]);
    }

    /// A gpg program that signs at `when` (for a key that has expired since).
    fn gpg_at(&self, when: &str) -> PathBuf {
        let script = self.path("gpg-at");
        fs::write(
            &script,
            format!("#!/bin/sh\nexec gpg --faked-system-time {when} \"$@\"\n"),
        )
        .unwrap();
        fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        script
    }

    /// Export `fingerprints` into a keyring file (armored).
    fn keyring(&self, fingerprints: &[&str]) -> PathBuf {
        let file = self.path("keyring.asc");
        let mut args = vec!["--armor", "--export"];
        args.extend(fingerprints);
        let out = self.gpg(&args);
        fs::write(&file, out.stdout).unwrap();
        file
    }
}

/// A repository whose commits are signed as each case says.
struct Signed<'a> {
    keys: &'a Keys,
    remote: Remote,
}

impl Signed<'_> {
    fn git(&self, config: &[(&str, &str)], args: &[&str], date: &str) -> String {
        let mut cmd = Command::new("git");
        cmd.current_dir(&self.remote.dir)
            .env("GNUPGHOME", &self.keys.gnupg)
            .env("GIT_COMMITTER_DATE", date)
            .env("GIT_AUTHOR_DATE", date);
        for (key, value) in config {
            cmd.arg("-c").arg(format!("{key}={value}"));
        }
        let out = cmd.args(args).output().unwrap();
        assert!(out.status.success(), "git {args:?}: {}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A commit of `a.py` = `content`, signed per `config` (empty: unsigned).
    fn commit(&self, content: &str, config: &[(&str, &str)], date: &str) -> String {
        fs::write(self.remote.dir.join("a.py"), content).unwrap();
        self.git(&[], &["add", "-A"], date);
        let sign = if config.is_empty() {
            "--no-gpg-sign"
        } else {
            "-S"
        };
        self.git(config, &["commit", "-q", sign, "-m", content], date);
        self.git(&[], &["rev-parse", "HEAD"], date)
    }

    /// What `git verify-commit` (or `verify-tag`) says, with the same trust as dagsnap's.
    fn git_verifies(&self, what: &str, object: &str, trust: &Trust) -> bool {
        let mut cmd = Command::new("git");
        cmd.current_dir(&self.remote.dir)
            .env("GNUPGHOME", &self.keys.gnupg);
        cmd.args(["-c", "gpg.minTrustLevel=fully"]);
        cmd.arg("-c").arg(format!(
            "gpg.ssh.allowedSignersFile={}",
            trust.allowed.display()
        ));
        if let Some(revoked) = &trust.revoked {
            cmd.arg("-c")
                .arg(format!("gpg.ssh.revocationFile={}", revoked.display()));
        }
        cmd.args([what, object]).output().unwrap().status.success()
    }
}

/// A case of the corpus: its name, how its commit is signed (git configuration), its
/// committer date, and whether it should verify.
type Case<'a> = (&'a str, Vec<(String, String)>, &'a str, bool);

/// dagsnap's trust for a case.
struct Trust {
    allowed: PathBuf,
    revoked: Option<PathBuf>,
    keyring: PathBuf,
}

/// Whether `dagsnap sync --one-time` publishes `reference` of `remote` under `mode`.
fn dagsnap_publishes(
    remote: &Remote,
    reference: &str,
    mode: &str,
    trust: &Trust,
) -> (bool, String) {
    let scratch = Scratch::new();
    let mut args = vec![
        "--ref".to_string(),
        reference.to_string(),
        "--verify-signatures".into(),
        mode.into(),
        "--allowed-signers".into(),
        trust.allowed.display().to_string(),
        "--gpg-keyring".into(),
        trust.keyring.display().to_string(),
    ];
    if let Some(revoked) = &trust.revoked {
        args.extend(["--revoked-keys".into(), revoked.display().to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = sync_once(&scratch, &remote.url(), &args);
    let live = published(&scratch.root()).is_some();
    assert_eq!(
        out.status.success(),
        live,
        "exit status and the link agree: {}",
        stderr(&out)
    );
    (live, stderr(&out))
}

#[test]
fn dagsnap_s_verdict_equals_git_s_on_every_case_of_the_corpus() {
    let Some(keys) = Keys::new() else {
        return;
    };
    // SSH keys: three algorithms trusted, a stranger, one valid only before the late date,
    // one revoked, one allowed only for another namespace.
    let ada = keys.ssh_key("ada", "ed25519");
    let bob = keys.ssh_key("bob", "ecdsa");
    let cid = keys.ssh_key("cid", "rsa");
    let _eve = keys.ssh_key("eve", "ed25519");
    let dan = keys.ssh_key("dan", "ed25519");
    let fay = keys.ssh_key("fay", "ed25519");
    let gus = keys.ssh_key("gus", "ed25519");
    let allowed = keys.path("allowed_signers");
    fs::write(
        &allowed,
        format!(
            "ada@example.com {ada}\nbob@example.com namespaces=\"git\" {bob}\ncid@example.com {cid}\n\
             dan@example.com valid-before=\"20250101Z\" {dan}\nfay@example.com {fay}\n\
             gus@example.com namespaces=\"file\" {gus}\n"
        ),
    )
    .unwrap();
    let revoked = keys.path("revoked");
    fs::write(&revoked, format!("{fay}\n")).unwrap();
    // OpenPGP keys: an Ed25519 and an RSA key, one that expired, one revoked, a stranger.
    let pgp_ed = keys.gpg_key("pat@example.com", "ed25519", "never", None);
    let pgp_rsa = keys.gpg_key("quin@example.com", "rsa2048", "never", None);
    let pgp_old = keys.gpg_key("old@example.com", "ed25519", "1y", Some("20200101T000000"));
    let pgp_rev = keys.gpg_key("rev@example.com", "ed25519", "never", None);
    // A key that signs with a subkey (gpg picks the newest signing subkey).
    let pgp_sub = keys.gpg_key("sub@example.com", "ed25519", "never", None);
    keys.gpg(&["--quick-add-key", &pgp_sub, "ed25519", "sign", "never"]);
    let trust = Trust {
        allowed: allowed.clone(),
        revoked: Some(revoked),
        keyring: keys.keyring(&[&pgp_ed, &pgp_rsa, &pgp_old, &pgp_rev, &pgp_sub]),
    };
    let stranger = keys.gpg_key("stranger@example.com", "ed25519", "never", None);

    let remote = Remote::new();
    let repo = Signed {
        keys: &keys,
        remote,
    };
    let ssh = |key: &str| -> Vec<(String, String)> {
        vec![
            ("gpg.format".into(), "ssh".into()),
            (
                "user.signingkey".into(),
                keys.path(key).display().to_string(),
            ),
        ]
    };
    let pgp = |fingerprint: &str| -> Vec<(String, String)> {
        vec![
            ("gpg.format".into(), "openpgp".into()),
            ("user.signingkey".into(), fingerprint.to_string()),
        ]
    };
    let gpg_at_2020 = keys.gpg_at("20200601T000000");
    let mut cases: Vec<Case> = vec![
        ("ssh ed25519", ssh("ada"), COMMIT_DATE, true),
        ("ssh ecdsa", ssh("bob"), COMMIT_DATE, true),
        ("ssh rsa", ssh("cid"), COMMIT_DATE, true),
        ("unsigned", vec![], COMMIT_DATE, false),
        ("ssh stranger", ssh("eve"), COMMIT_DATE, false),
        ("ssh outside valid-before", ssh("dan"), LATE_DATE, false),
        ("ssh inside valid-before", ssh("dan"), COMMIT_DATE, true),
        ("ssh revoked", ssh("fay"), COMMIT_DATE, false),
        ("ssh other namespace", ssh("gus"), COMMIT_DATE, false),
        ("openpgp ed25519", pgp(&pgp_ed), COMMIT_DATE, true),
        ("openpgp rsa", pgp(&pgp_rsa), COMMIT_DATE, true),
        ("openpgp signing subkey", pgp(&pgp_sub), COMMIT_DATE, true),
        ("openpgp stranger", pgp(&stranger), COMMIT_DATE, false),
        ("openpgp revoked", pgp(&pgp_rev), COMMIT_DATE, false),
    ];
    let mut expired = pgp(&pgp_old);
    expired.push(("gpg.program".into(), gpg_at_2020.display().to_string()));
    cases.push(("openpgp expired", expired, "2020-06-01T12:00:00Z", false));

    let mut made = Vec::new();
    for (n, (name, config, date, _)) in cases.iter().enumerate() {
        let config: Vec<(&str, &str)> = config
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let commit = repo.commit(&format!("{n} {name}\n"), &config, date);
        repo.git(&[], &["branch", "-f", &format!("case-{n}"), &commit], date);
        made.push(commit);
    }
    keys.revoke_gpg(&pgp_rev);
    // The stranger's key is nobody's: git's keyring does not hold it either.
    keys.gpg(&["--delete-secret-and-public-key", &stranger]);
    // The revocation reaches dagsnap's keyring as an operator re-exports it.
    let trust = Trust {
        keyring: keys.keyring(&[&pgp_ed, &pgp_rsa, &pgp_old, &pgp_rev, &pgp_sub]),
        ..trust
    };

    // A signature copied onto an edited commit.
    let signed = repo.git(&[], &["cat-file", "commit", &made[0]], COMMIT_DATE);
    let edited = signed.replacen("0 ssh ed25519", "0 ssh ed25519, edited", 1) + "\n";
    let forged_file = keys.path("forged");
    fs::write(&forged_file, edited).unwrap();
    let forged = repo.git(
        &[],
        &[
            "hash-object",
            "-t",
            "commit",
            "-w",
            forged_file.to_str().unwrap(),
        ],
        COMMIT_DATE,
    );
    repo.git(&[], &["branch", "-f", "case-forged", &forged], COMMIT_DATE);

    let mut disagreements = Vec::new();
    let mut judged: Vec<(String, String)> = cases
        .iter()
        .enumerate()
        .map(|(n, (name, _, _, expected))| {
            (format!("case-{n}"), format!("{name} (expected {expected})"))
        })
        .collect();
    judged.push((
        "case-forged".into(),
        "a signature copied onto an edited commit (expected false)".into(),
    ));
    for (branch, name) in &judged {
        let commit = repo.git(&[], &["rev-parse", branch], COMMIT_DATE);
        let git = repo.git_verifies("verify-commit", &commit, &trust);
        let (ours, log) = dagsnap_publishes(&repo.remote, branch, "commit", &trust);
        eprintln!("{name}: git {git}, dagsnap {ours}");
        if git != ours || !name.ends_with(&format!("(expected {ours})")) {
            disagreements.push(format!("{name}: git {git}, dagsnap {ours}\n{log}"));
        }
    }

    // A signed annotated tag over an unsigned commit: the tag verifies, the commit does not.
    let unsigned = repo.git(&[], &["rev-parse", "case-3"], COMMIT_DATE);
    let ada_key = keys.path("ada").display().to_string();
    let ssh_tag: Vec<(&str, &str)> = vec![("gpg.format", "ssh"), ("user.signingkey", &ada_key)];
    repo.git(
        &ssh_tag,
        &["tag", "-s", "-m", "release", "v1", &unsigned],
        COMMIT_DATE,
    );
    repo.git(
        &[],
        &["tag", "-a", "-m", "unsigned release", "v0", &unsigned],
        COMMIT_DATE,
    );
    for (tag, mode, expected) in [
        ("v1", "tag", true),
        ("v1", "tag-and-commit", false),
        ("v1", "commit", false),
        ("v0", "tag", false),
        // A branch in tag mode: nothing signs it.
        ("case-0", "tag", false),
    ] {
        let git_tag = repo.git_verifies("verify-tag", tag, &trust);
        let git_commit = repo.git_verifies("verify-commit", &unsigned, &trust);
        let git = match mode {
            "tag" => git_tag,
            "commit" => git_commit,
            _ => git_tag && git_commit,
        };
        let (ours, log) = dagsnap_publishes(&repo.remote, tag, mode, &trust);
        eprintln!("tag {tag}, mode {mode}: git {git}, dagsnap {ours}");
        if git != ours || ours != expected {
            disagreements.push(format!(
                "tag {tag} mode {mode}: git {git}, dagsnap {ours}, expected {expected}\n{log}"
            ));
        }
    }
    assert!(
        disagreements.is_empty(),
        "{}",
        disagreements.join("\n---\n")
    );
}

#[test]
fn unreadable_or_malformed_key_files_are_refused_at_start_naming_them() {
    let Some(keys) = Keys::new() else {
        return;
    };
    let remote = Remote::new();
    remote.commit(&[("a.py", "a\n")], "one");
    let garbage = keys.path("garbage");
    fs::write(&garbage, "ada@example.com ssh-ed25519 AAAA-not-a-key\n").unwrap();
    let missing = keys.path("missing");
    let cases: Vec<(Vec<String>, String)> = vec![
        (
            vec!["--allowed-signers".into(), garbage.display().to_string()],
            format!("--allowed-signers {}: line 1", garbage.display()),
        ),
        (
            vec!["--gpg-keyring".into(), garbage.display().to_string()],
            format!("--gpg-keyring {}", garbage.display()),
        ),
        (
            vec!["--allowed-signers".into(), missing.display().to_string()],
            format!("cannot read --allowed-signers {}", missing.display()),
        ),
        (vec![], "needs trusted keys".into()),
    ];
    for (extra, needle) in cases {
        let scratch = Scratch::new();
        let mut args = vec!["--verify-signatures".to_string(), "commit".into()];
        args.extend(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = sync_once(&scratch, &remote.url(), &args);
        assert_one_clear_line(&out, 2, &needle);
        assert!(published(&scratch.root()).is_none());
    }
    let scratch = Scratch::new();
    let out = sync_once(
        &scratch,
        &remote.url(),
        &["--allowed-signers", garbage.to_str().unwrap()],
    );
    assert_one_clear_line(&out, 2, "need --verify-signatures");
}

#[test]
fn only_verified_commits_go_live_and_a_key_added_to_the_allowed_signers_needs_no_restart() {
    let Some(keys) = Keys::new() else {
        return;
    };
    let ada = keys.ssh_key("ada", "ed25519");
    let bob = keys.ssh_key("bob", "ed25519");
    let allowed = keys.path("allowed_signers");
    fs::write(&allowed, format!("ada@example.com {ada}\n")).unwrap();
    let repo = Signed {
        keys: &keys,
        remote: Remote::new(),
    };
    let by = |key: &str| -> Vec<(String, String)> {
        vec![
            ("gpg.format".into(), "ssh".into()),
            (
                "user.signingkey".into(),
                keys.path(key).display().to_string(),
            ),
        ]
    };
    let commit = |content: &str, key: Option<&str>| {
        let config = key.map(by).unwrap_or_default();
        let config: Vec<(&str, &str)> = config
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        repo.commit(content, &config, COMMIT_DATE)
    };
    // Before enforcement: an unsigned commit is live.
    let scratch = Scratch::new();
    let root = scratch.root();
    let before = commit("0\n", None);
    let out = sync_once(&scratch, &repo.remote.url(), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let first = commit("1\n", Some("ada"));
    let port = crate::servers::free_port();
    let daemon = spawn_loop(
        &scratch,
        &repo.remote.url(),
        &[
            "--period",
            "100ms",
            "--keep",
            "10",
            "--verify-signatures",
            "commit",
            "--allowed-signers",
            allowed.to_str().unwrap(),
            "--http-bind",
            &format!("127.0.0.1:{port}"),
        ],
    );
    daemon.wait_for_commit(&root, &first, Duration::from_secs(60));

    // Mixed commits arrive; readers only ever see verified ones.
    // (The commit from before enforcement was live then.)
    let mut verified = vec![before.clone(), first.clone()];
    for (n, key) in [None, Some("bob"), Some("ada"), None].iter().enumerate() {
        let made = commit(&format!("{}\n", n + 2), *key);
        if *key == Some("ada") {
            verified.push(made.clone());
            daemon.wait_for_commit(&root, &made, Duration::from_secs(60));
        } else {
            daemon.wait_for_lines(
                &["signature was refused", &made],
                1,
                Duration::from_secs(60),
            );
        }
    }
    for live in journal_commits(&root) {
        assert!(
            verified.contains(&live),
            "{live} went live without a verified signature"
        );
    }
    let (_, metrics) = http("GET", &format!("http://127.0.0.1:{port}/metrics"), &[], b"");
    assert_eq!(
        metric(
            &metrics,
            "dagsnap_signature_refusals_total{reason=\"unsigned\"}"
        ),
        2.0,
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "dagsnap_signature_refusals_total{reason=\"unknown_key\"}"
        ),
        1.0
    );
    let status = on_root(&scratch, &["status"]);
    let status_text = stdout(&status);
    assert!(status_text.contains("signature refused"), "{status_text}");

    // Rolling back to the snapshot from before enforcement needs --force, and says why.
    let rollback = on_root(&scratch, &["rollback", &before]);
    assert!(
        !rollback.status.success(),
        "rolling back to an unverified commit needs --force"
    );
    assert!(
        stderr(&rollback).contains("never verified by --verify-signatures"),
        "{}",
        stderr(&rollback)
    );

    // Bob's key is added: his next commit goes live without a restart.
    fs::write(
        &allowed,
        format!("ada@example.com {ada}\nbob@example.com {bob}\n"),
    )
    .unwrap();
    let bobs_next = commit("9\n", Some("bob"));
    daemon.wait_for_commit(&root, &bobs_next, Duration::from_secs(60));
    assert!(
        daemon.log_lines(&["the trusted keys changed"]) >= 1,
        "{}",
        daemon.logs()
    );
    assert_root_valid(&root);
}
