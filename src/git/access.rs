//! How to reach a remote: HTTP credentials, TLS trust, SSH keys and host keys, timeouts.
//!
//! Secrets are never put where they could leak: a password is read from a file (again before
//! every fetch, so a rotated token works without a restart) or from `DAGSNAP_PASSWORD`, handed
//! to gix through a credentials callback, and registered with the [`Redactor`] so that no log
//! line or error can print it. Credentials found in a URL are moved out of it the same way. No
//! secret is ever passed on a command line: the `ssh` command carries only paths.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::CertificateDer;

use crate::git::redact::Redactor;

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("cannot read the password file {}: {cause}; mount the secret there or fix --password-file", path.display())]
    PasswordFile { path: PathBuf, cause: String },
    #[error("the password file {} is empty; it should hold the password or token", path.display())]
    EmptyPassword { path: PathBuf },
    #[error("refusing to send credentials over plain http to {url}; use https, or pass --allow-insecure-http-credentials if this network is trusted")]
    InsecureHttp { url: String },
    #[error("ssh key file {} is not readable ({cause}); mount the deploy key there or fix --ssh-key-file", path.display())]
    KeyFile { path: PathBuf, cause: String },
    #[error("ssh known hosts file {} is not readable ({cause}); create it with `ssh-keyscan -p PORT HOST > FILE` (and check the fingerprint) or fix --ssh-known-hosts-file", path.display())]
    KnownHostsFile { path: PathBuf, cause: String },
    #[error("CA file {} is not usable ({cause}); it must hold PEM certificates", path.display())]
    CaFile { path: PathBuf, cause: String },
    #[error("cannot set up TLS: {cause}")]
    Tls { cause: String },
    #[error("cannot get credentials from the askpass service {url}: {cause}; check that it runs and answers username= and password= lines")]
    Askpass { url: String, cause: String },
    #[error("GitHub App authentication failed: {cause}; check the app's key, its client or application id, and the installation id")]
    GitHubApp { cause: String },
    #[error("cannot read the cookie file {}: {cause}; mount it there or fix --cookie-file", path.display())]
    CookieFile { path: PathBuf, cause: String },
    #[error("--username is set but no password: give --password-file or DAGSNAP_PASSWORD")]
    NoPassword,
    #[error("uid {uid} has no /etc/passwd entry and OpenSSH refuses to run without one; install libnss-wrapper (dagsnap then supplies an entry itself) or add uid {uid} to /etc/passwd")]
    NoPasswdEntry { uid: u32 },
    #[error("cannot prepare a passwd entry for ssh in {}: {cause}", dir.display())]
    PasswdEntry { dir: PathBuf, cause: String },
}

/// Where distributions install nss_wrapper.
const NSS_WRAPPER: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/libnss_wrapper.so",
    "/usr/lib/aarch64-linux-gnu/libnss_wrapper.so",
    "/usr/lib64/libnss_wrapper.so",
    "/usr/lib/libnss_wrapper.so",
];

/// The name of the global git configuration file of the git processes dagsnap starts, in its
/// private cache directory ([`export_git_config`], [`write_git_config`]).
pub(crate) const GIT_CONFIG_FILE: &str = "gitconfig";

/// The global git configuration git would read without dagsnap's, which dagsnap's includes.
static PREVIOUS_GLOBAL: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();

/// Give the git processes dagsnap starts (the `git upload-pack` serving a `file://` remote, a
/// check, a hook) `config`, as git-sync's `git config --global` gives them: `safe.directory` is
/// what lets a local repository owned by another user be read. `GIT_CONFIG_GLOBAL` names a file
/// of dagsnap's own, `gitconfig` in the private cache directory `dir`, which the cache writes
/// when it opens ([`write_git_config`]): it includes the file git would read otherwise and
/// adds `config`. (Command-line configuration would not do: git, and gix after it, drop it from
/// the environment of a local `upload-pack`.)
///
/// Must be called before any other thread starts (it changes the environment).
pub(crate) fn export_git_config(config: &[(String, String)], dir: &Path) {
    if config.is_empty() {
        return;
    }
    let previous = std::env::var_os("GIT_CONFIG_GLOBAL")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".gitconfig")));
    let _ = PREVIOUS_GLOBAL.set(previous);
    std::env::set_var("GIT_CONFIG_GLOBAL", dir.join(GIT_CONFIG_FILE));
}

/// Write the global git configuration file [`export_git_config`] named, into the cache
/// directory `dir`, for `config`.
pub(crate) fn write_git_config(
    config: &[(String, String)],
    dir: &Path,
) -> Result<(), crate::fsutil::IoError> {
    if config.is_empty() {
        return Ok(());
    }
    let mut text = String::from(
        "# Written by dagsnap from --git-config: the git configuration of the git processes it starts.\n",
    );
    if let Some(Some(previous)) = PREVIOUS_GLOBAL.get() {
        text.push_str(&format!(
            "[include]\n\tpath = {}\n",
            git_config_value(&previous.to_string_lossy())
        ));
    }
    for (key, value) in config {
        let (section, name) = match (key.split_once('.'), key.rsplit_once('.')) {
            (Some((section, _)), Some((rest, name))) if rest.len() > section.len() => (
                format!("{section} {}", git_config_value(&rest[section.len() + 1..])),
                name,
            ),
            (Some((section, name)), _) => (section.to_string(), name),
            _ => continue,
        };
        text.push_str(&format!(
            "[{section}]\n\t{name} = {}\n",
            git_config_value(value)
        ));
    }
    crate::fsutil::write_atomically(&dir.join(GIT_CONFIG_FILE), text.as_bytes())
}

/// A value (or subsection name) quoted as git's configuration files read it.
fn git_config_value(value: &str) -> String {
    let mut out = String::from('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// OpenSSH exits with "No user exists for uid" when the process's uid has no passwd entry,
/// which is common in containers run as an arbitrary uid. In that case, give the ssh processes
/// dagsnap starts an entry through nss_wrapper: a private passwd and group file, and
/// `LD_PRELOAD`, set in this process's environment so every child inherits them.
///
/// The files go to `$TMPDIR/dagsnap-nss-<uid>`, or, when the temporary directory cannot be
/// written (a read-only root filesystem without a `/tmp` volume), to `nss` inside `fallback`
/// (the private cache directory, which must be writable anyway).
///
/// Must be called before any other thread starts (it changes the environment). Returns the
/// directory of the generated files, or `None` when the uid has an entry anyway.
pub fn provide_passwd_entry(fallback: &Path) -> Result<Option<PathBuf>, AccessError> {
    let uid = nix::unistd::geteuid();
    if matches!(nix::unistd::User::from_uid(uid), Ok(Some(_))) {
        return Ok(None);
    }
    let Some(library) = NSS_WRAPPER.iter().map(Path::new).find(|p| p.exists()) else {
        return Err(AccessError::NoPasswdEntry { uid: uid.as_raw() });
    };
    let gid = nix::unistd::getegid().as_raw();
    let write_in = |dir: &Path| -> std::io::Result<()> {
        let home = std::env::var("HOME")
            .ok()
            .filter(|h| !h.is_empty() && h != "/")
            .unwrap_or_else(|| dir.display().to_string());
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        std::fs::write(
            dir.join("passwd"),
            format!("dagsnap:x:{}:{gid}:dagsnap:{home}:/bin/sh\n", uid.as_raw()),
        )?;
        std::fs::write(dir.join("group"), format!("dagsnap:x:{gid}:\n"))
    };
    let preferred = std::env::temp_dir().join(format!("dagsnap-nss-{}", uid.as_raw()));
    let dir = match write_in(&preferred) {
        Ok(()) => preferred,
        Err(first) => {
            let second = fallback.join("nss");
            write_in(&second).map_err(|e| AccessError::PasswdEntry {
                dir: second.clone(),
                cause: format!("{e} (and in {}: {first})", preferred.display()),
            })?;
            second
        }
    };
    let (passwd, group) = (dir.join("passwd"), dir.join("group"));
    let preload = match std::env::var("LD_PRELOAD") {
        Ok(existing) if !existing.is_empty() => format!("{existing}:{}", library.display()),
        _ => library.display().to_string(),
    };
    std::env::set_var("LD_PRELOAD", preload);
    std::env::set_var("NSS_WRAPPER_PASSWD", &passwd);
    std::env::set_var("NSS_WRAPPER_GROUP", &group);
    Ok(Some(dir))
}

/// Where the HTTP password (or token) comes from.
#[derive(Debug, Clone)]
pub enum Password {
    /// Read from this file before every fetch.
    File(PathBuf),
    /// Given once, from the environment or moved out of the URL.
    Fixed(String),
    /// Asked of an askpass service before every fetch (`--askpass-url`): user and password.
    Askpass(String),
    /// A GitHub App's installation token, renewed before it expires.
    GitHubApp(super::credentials::GitHubApp),
}

/// SSH settings, turned into the `ssh` command gix runs.
#[derive(Debug, Clone, Default)]
pub struct Ssh {
    pub key_files: Vec<PathBuf>,
    pub known_hosts_file: Option<PathBuf>,
    /// False only when the operator explicitly disabled host key checking.
    pub check_host_keys: bool,
    pub port: Option<u16>,
    pub connect_timeout: Duration,
}

/// Everything needed to authenticate to and trust a remote.
#[derive(Debug, Clone)]
pub struct Access {
    pub username: Option<String>,
    pub password: Option<Password>,
    pub allow_insecure_http: bool,
    pub ca_file: Option<PathBuf>,
    pub ssh: Ssh,
    /// Bound for one HTTP request, so a silent server cannot block a fetch forever.
    pub http_timeout: Duration,
    /// `--git-config`: git configuration for every fetch (`git -c`), key and value.
    pub git_config: Vec<(String, String)>,
    /// `--cookie-file`: cookies (Netscape format) sent with every HTTP request to the remote.
    pub cookie_file: Option<PathBuf>,
}

impl Default for Access {
    fn default() -> Self {
        Access {
            username: None,
            password: None,
            allow_insecure_http: false,
            ca_file: None,
            ssh: Ssh {
                check_host_keys: true,
                connect_timeout: Duration::from_secs(30),
                ..Ssh::default()
            },
            http_timeout: Duration::from_secs(300),
            git_config: Vec::new(),
            cookie_file: None,
        }
    }
}

/// The parts of a URL that carry credentials, and the URL without them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SplitUrl {
    pub url: String,
    pub username: Option<String>,
    pub password: Option<String>,
}

/// Take `user:password@` out of an http(s) URL; other URLs are returned as they are (an ssh
/// user name is not a secret, and ssh never takes a password from dagsnap).
pub(crate) fn split_credentials(url: &str) -> SplitUrl {
    let unchanged = SplitUrl {
        url: url.to_string(),
        username: None,
        password: None,
    };
    let Some((scheme, rest)) = url.split_once("://") else {
        return unchanged;
    };
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return unchanged;
    }
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return unchanged;
    };
    let userinfo = &rest[..at];
    let (user, password) = match userinfo.split_once(':') {
        Some((u, p)) => (u, Some(p)),
        None => (userinfo, None),
    };
    SplitUrl {
        url: format!("{scheme}://{}", &rest[at + 1..]),
        username: Some(percent_decode(user)).filter(|u| !u.is_empty()),
        password: password.map(percent_decode).filter(|p| !p.is_empty()),
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Access {
    /// Check at start-up what can be checked, so that a typo fails once with exit 2 instead of
    /// at every poll: files exist and are readable, credentials do not go out in clear text.
    pub fn validate(&self, url: &str, redactor: &Redactor) -> Result<(), AccessError> {
        let plain_http = url
            .get(..7)
            .is_some_and(|s| s.eq_ignore_ascii_case("http://"));
        if plain_http
            && (self.username.is_some() || self.password.is_some())
            && !self.allow_insecure_http
        {
            return Err(AccessError::InsecureHttp {
                url: redactor.redact(url),
            });
        }
        if self.username.is_some() && self.password.is_none() {
            return Err(AccessError::NoPassword);
        }
        // A password file is read now, so a typo fails at start; services are asked at the
        // first fetch.
        if matches!(self.password, Some(Password::File(_) | Password::Fixed(_))) {
            self.credentials(redactor)?;
        }
        for key in &self.ssh.key_files {
            std::fs::File::open(key).map_err(|e| AccessError::KeyFile {
                path: key.clone(),
                cause: e.to_string(),
            })?;
        }
        if let Some(known) = &self.ssh.known_hosts_file {
            std::fs::File::open(known).map_err(|e| AccessError::KnownHostsFile {
                path: known.clone(),
                cause: e.to_string(),
            })?;
        }
        if let Some(ca) = &self.ca_file {
            super::tls::read_ca_file(ca)?;
        }
        if let Some(Password::GitHubApp(app)) = &self.password {
            if let super::credentials::AppKey::File(path) = &app.key {
                super::credentials::check_key_file(path)?;
            }
        }
        Ok(())
    }

    /// The current user and password: a password file is read anew each time, an askpass
    /// service asked, a GitHub App's token renewed when it is due; whatever comes back is added
    /// to the redactor before it can appear anywhere.
    pub fn credentials(
        &self,
        redactor: &Redactor,
    ) -> Result<Option<(String, String)>, AccessError> {
        let user = || self.username.clone().unwrap_or_default();
        let ca_files: Vec<PathBuf> = self.ca_file.iter().cloned().collect();
        let (user, password) = match &self.password {
            None => return Ok(None),
            Some(Password::Fixed(p)) => (user(), p.clone()),
            Some(Password::Askpass(url)) => super::credentials::askpass(
                url,
                self.username.as_deref(),
                &ca_files,
                self.http_timeout,
            )?,
            Some(Password::GitHubApp(app)) => app.credentials(&ca_files, self.http_timeout)?,
            Some(Password::File(path)) => (user(), {
                let text =
                    std::fs::read_to_string(path).map_err(|e| AccessError::PasswordFile {
                        path: path.clone(),
                        cause: e.to_string(),
                    })?;
                let trimmed = text.trim_end_matches(['\n', '\r']).to_string();
                if trimmed.is_empty() {
                    return Err(AccessError::EmptyPassword { path: path.clone() });
                }
                trimmed
            }),
        };
        redactor.add_secret(&password);
        Ok(Some((user, password)))
    }

    /// True if dagsnap supplies HTTP credentials itself (otherwise git's credential helpers, if
    /// configured, are asked as usual).
    pub fn has_http_credentials(&self) -> bool {
        self.password.is_some()
    }

    /// The `ssh` command gix runs (through `sh -c`, as git runs `core.sshCommand`). Only paths
    /// and options go into it, never a secret.
    ///
    /// `log` receives ssh's own messages (`-E`) instead of the terminal, so that a refused host
    /// key or key can be explained in dagsnap's error instead of garbling its log stream.
    pub fn ssh_command(&self, log: Option<&Path>) -> String {
        let ssh = &self.ssh;
        let mut parts = vec![
            "ssh".to_string(),
            // Never wait for a prompt: a sidecar has nobody to answer it.
            "-o BatchMode=yes".into(),
            format!("-o ConnectTimeout={}", ssh.connect_timeout.as_secs().max(1)),
            // A server that stops answering is noticed within a minute even between reads.
            "-o ServerAliveInterval=15".into(),
            "-o ServerAliveCountMax=4".into(),
        ];
        if ssh.check_host_keys {
            parts.push("-o StrictHostKeyChecking=yes".into());
            if let Some(known) = &ssh.known_hosts_file {
                parts.push(format!("-o UserKnownHostsFile={}", shell_quote(known)));
            }
        } else {
            parts.push("-o StrictHostKeyChecking=no".into());
            parts.push("-o UserKnownHostsFile=/dev/null".into());
            parts.push("-o LogLevel=ERROR".into());
        }
        if !ssh.key_files.is_empty() {
            parts.push("-o IdentitiesOnly=yes".into());
            for key in &ssh.key_files {
                parts.push(format!("-i {}", shell_quote(key)));
            }
        }
        if let Some(port) = ssh.port {
            parts.push(format!("-o Port={port}"));
        }
        if let Some(log) = log {
            // `-E` takes ssh's own messages; the redirection takes what the server prints on
            // stderr ("fatal: repository not found"). The command runs under `sh -c`, where a
            // redirection may stand before the arguments gix appends.
            parts.push(format!("-E {} 2>>{}", shell_quote(log), shell_quote(log)));
        }
        parts.join(" ")
    }

    /// Add dagsnap's HTTP settings to gix's (which come from git configuration): a bound on
    /// every request, and the certificates to trust: none for `http://` (nothing to verify),
    /// else the system's (read once per process, [`system_roots`]) and the extra CA files.
    pub fn http_options(
        &self,
        from_config: Option<Box<dyn std::any::Any>>,
        https: bool,
        cookie: Option<String>,
    ) -> Box<dyn std::any::Any> {
        use gix::protocol::transport::client::blocking_io::http;
        let mut options = from_config
            .and_then(|o| o.downcast::<http::Options>().ok())
            .map(|o| *o)
            .unwrap_or_default();
        // `--cookie-file`'s cookies for this URL, read for this conversation.
        options.extra_headers.extend(cookie);
        let mut extra_ca: Vec<PathBuf> = self.ca_file.iter().cloned().collect();
        // `http.sslCAInfo` / GIT_SSL_CAINFO, which the reqwest backend does not apply by itself
        // (left in the options for the listing's own connection, see `git::listing`).
        extra_ca.extend(options.ssl_ca_info.clone());
        let timeout = self.http_timeout;
        let configure: Box<http::reqwest::ConfigureClientFn> = Box::new(move |builder| {
            let builder = builder.timeout(timeout);
            if !https {
                // Nothing to verify: no trust store read at all.
                return Ok(builder.tls_certs_only(Vec::new()));
            }
            // dagsnap's trust (`git::tls`), not the platform verifier, which would read the
            // whole store again for every client.
            let config = super::tls::client_config(&extra_ca).map_err(gix::Error::from_error)?;
            Ok(builder.tls_backend_preconfigured(config))
        });
        let backend = http::reqwest::Options {
            configure_client: Some(configure),
            configure_request: None,
        };
        options.backend = Some(Arc::new(Mutex::new(backend)));
        Box::new(options)
    }
}

/// The proxy that the HTTP client takes from the environment for `url`, as reqwest does:
/// `HTTPS_PROXY` for https and `HTTP_PROXY` for http URLs, else `ALL_PROXY` (upper or lower case),
/// unless `NO_PROXY` names the host (`*`, the host, or a domain it is in). Returns the variable
/// and the proxy, its credentials masked.
pub(crate) fn proxy_for(url: &str) -> Option<(String, String)> {
    let (scheme, rest) = url.split_once("://")?;
    let host = rest
        .split(['/', '?'])
        .next()?
        .rsplit('@')
        .next()?
        .trim_start_matches('[');
    let host = host
        .rsplit_once(':')
        .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
        .map_or(host, |(host, _)| host)
        .trim_end_matches(']')
        .to_ascii_lowercase();
    let variable = |name: &str| {
        [name.to_string(), name.to_ascii_lowercase()]
            .into_iter()
            .find_map(|v| {
                std::env::var(&v)
                    .ok()
                    .filter(|x| !x.trim().is_empty())
                    .map(|x| (v, x))
            })
    };
    if let Some((_, exempt)) = variable("NO_PROXY") {
        let exempt = exempt
            .split(',')
            .map(|e| e.trim().trim_start_matches('.').to_ascii_lowercase());
        for entry in exempt.filter(|e| !e.is_empty()) {
            if entry == "*" || host == entry || host.ends_with(&format!(".{entry}")) {
                return None;
            }
        }
    }
    let own = match scheme.to_ascii_lowercase().as_str() {
        "https" => "HTTPS_PROXY",
        "http" => "HTTP_PROXY",
        _ => return None,
    };
    let (name, proxy) = variable(own).or_else(|| variable("ALL_PROXY"))?;
    Some((name, Redactor::for_url(&proxy).redact(&proxy)))
}

/// The system's trust store (`SSL_CERT_FILE`/`SSL_CERT_DIR`, else the distribution's), read
/// once per process. Reading it costs about 5 ms (every file of /etc/ssl/certs), and gix builds
/// an HTTP client for every poll; certificates it cannot read are skipped, as the platform
/// verifier skips them.
pub(super) fn system_root_certificates() -> &'static [CertificateDer<'static>] {
    static ROOTS: std::sync::OnceLock<Vec<CertificateDer<'static>>> = std::sync::OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for error in &found.errors {
            tracing::debug!(%error, "skipping an unreadable certificate of the system's store");
        }
        tracing::debug!(
            certificates = found.certs.len(),
            "read the system's trust store"
        );
        found.certs
    })
}

/// Single-quote `path` for `sh -c`.
fn shell_quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_move_out_of_https_urls() {
        let split =
            split_credentials("https://x-access-token:ghp%2Fsecret@github.com/org/dags.git");
        assert_eq!(split.url, "https://github.com/org/dags.git");
        assert_eq!(split.username.as_deref(), Some("x-access-token"));
        assert_eq!(split.password.as_deref(), Some("ghp/secret"));

        let token_only = split_credentials("https://ghp_token@github.com/org/dags.git");
        assert_eq!(token_only.username.as_deref(), Some("ghp_token"));
        assert_eq!(token_only.password, None);

        let ssh = split_credentials("ssh://git@example.com/dags.git");
        assert_eq!(ssh.url, "ssh://git@example.com/dags.git");
        assert_eq!(ssh.username, None);
    }

    #[test]
    fn ssh_command_quotes_paths_and_checks_host_keys() {
        let access = Access {
            ssh: Ssh {
                key_files: vec![PathBuf::from("/etc/git secret/key")],
                known_hosts_file: Some(PathBuf::from("/etc/git-secret/known_hosts")),
                check_host_keys: true,
                port: Some(2222),
                connect_timeout: Duration::from_secs(10),
            },
            ..Access::default()
        };
        let cmd = access.ssh_command(None);
        assert!(cmd.contains("-i '/etc/git secret/key'"), "{cmd}");
        assert!(cmd.contains("StrictHostKeyChecking=yes"), "{cmd}");
        assert!(
            cmd.contains("UserKnownHostsFile='/etc/git-secret/known_hosts'"),
            "{cmd}"
        );
        assert!(
            cmd.contains("-o Port=2222") && cmd.contains("BatchMode=yes"),
            "{cmd}"
        );
    }

    #[test]
    fn the_proxy_of_a_url_is_found_as_the_http_client_finds_it() {
        // One test owns these variables: tests run in threads of one process.
        for var in [
            "HTTPS_PROXY",
            "https_proxy",
            "HTTP_PROXY",
            "http_proxy",
            "ALL_PROXY",
            "all_proxy",
            "NO_PROXY",
            "no_proxy",
        ] {
            std::env::remove_var(var);
        }
        assert_eq!(proxy_for("https://git.example.com/a.git"), None);
        std::env::set_var("https_proxy", "http://user:s3cret@proxy.corp:3128");
        assert_eq!(
            proxy_for("https://git.example.com/a.git"),
            Some((
                "https_proxy".into(),
                "http://<redacted>@proxy.corp:3128".into()
            ))
        );
        assert_eq!(proxy_for("http://git.example.com/a.git"), None);
        std::env::set_var("NO_PROXY", "localhost,.example.com");
        assert_eq!(proxy_for("https://git.example.com:8443/a.git"), None);
        assert!(proxy_for("https://git.other.org/a.git").is_some());
        for var in ["https_proxy", "NO_PROXY"] {
            std::env::remove_var(var);
        }
    }

    #[test]
    fn rotated_password_file_is_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "first-token\n").unwrap();
        let access = Access {
            username: Some("bot".into()),
            password: Some(Password::File(file.clone())),
            ..Access::default()
        };
        let redactor = Redactor::default();
        assert_eq!(
            access.credentials(&redactor).unwrap(),
            Some(("bot".to_string(), "first-token".to_string()))
        );
        std::fs::write(&file, "second-token").unwrap();
        assert_eq!(
            access.credentials(&redactor).unwrap(),
            Some(("bot".to_string(), "second-token".to_string()))
        );
        assert_eq!(
            redactor.redact("first-token second-token"),
            "<redacted> <redacted>"
        );
    }
}
