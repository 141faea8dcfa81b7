//! HTTP credentials that are asked for at every conversation, as git-sync asks for them: an
//! askpass service (`--askpass-url`, a URL answering `username=` and `password=` lines, such as
//! a cloud's metadata server) and a GitHub App (`--github-app-*`: a JWT signed with the app's
//! key is exchanged for an installation token, kept until a few minutes before it expires).
//!
//! Both run on the calling thread with a client of their own (dagsnap's TLS trust, `git::tls`),
//! bounded by the HTTP timeout; a failure is the conversation's, said with what to fix.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine;

use super::access::AccessError;

/// A token is renewed this long before it expires.
const RENEW_BEFORE: Duration = Duration::from_secs(300);
/// The user name git sends with a GitHub App's installation token.
const GITHUB_TOKEN_USER: &str = "x-access-token";
/// At most this much of an answer is read.
const MAX_ANSWER: u64 = 64 << 10;

/// A GitHub App, as git-sync's `--github-app-*` flags describe it.
#[derive(Debug, Clone)]
pub struct GitHubApp {
    /// The app's private key (PEM): a file read at every renewal, or the key itself.
    pub key: AppKey,
    /// The JWT's issuer: the app's client id, or its application id.
    pub issuer: String,
    pub installation_id: u64,
    /// The API's base URL (`https://api.github.com/`, or a GitHub Enterprise server's).
    pub base_url: String,
    /// The current installation token and when it expires.
    pub(crate) token: Arc<Mutex<Option<(String, SystemTime)>>>,
}

/// Where a GitHub App's private key is.
#[derive(Debug, Clone)]
pub enum AppKey {
    File(PathBuf),
    /// `$GITSYNC_GITHUB_APP_PRIVATE_KEY`: the key itself.
    Pem(String),
}

impl GitHubApp {
    pub fn new(key: AppKey, issuer: String, installation_id: u64, base_url: String) -> GitHubApp {
        GitHubApp {
            key,
            issuer,
            installation_id,
            base_url,
            token: Arc::new(Mutex::new(None)),
        }
    }

    /// `(user, token)` for git: the kept installation token, or a new one.
    pub(crate) fn credentials(
        &self,
        ca_files: &[PathBuf],
        timeout: Duration,
    ) -> Result<(String, String), AccessError> {
        let mut kept = self.token.lock().unwrap_or_else(|p| p.into_inner());
        let now = SystemTime::now();
        if let Some((token, expires)) = kept.as_ref() {
            if now + RENEW_BEFORE < *expires {
                return Ok((GITHUB_TOKEN_USER.into(), token.clone()));
            }
        }
        let (token, expires) = self.installation_token(ca_files, timeout)?;
        *kept = Some((token.clone(), expires));
        Ok((GITHUB_TOKEN_USER.into(), token))
    }

    /// `POST {base}/app/installations/{id}/access_tokens`, authenticated by a JWT of the app.
    fn installation_token(
        &self,
        ca_files: &[PathBuf],
        timeout: Duration,
    ) -> Result<(String, SystemTime), AccessError> {
        let failed = |cause: String| AccessError::GitHubApp { cause };
        let jwt = self.jwt().map_err(failed)?;
        let url = format!(
            "{}/app/installations/{}/access_tokens",
            self.base_url.trim_end_matches('/'),
            self.installation_id
        );
        let response = client(&url, ca_files, timeout)
            .map_err(failed)?
            .post(&url)
            .header("Authorization", format!("Bearer {jwt}"))
            .header("Accept", "application/vnd.github+json")
            .header("User-Agent", "dagsnap")
            .send()
            .map_err(|e| failed(format!("{url}: {e}")))?;
        let status = response.status();
        let body = read_bounded(response).map_err(|e| failed(format!("{url}: {e}")))?;
        if !status.is_success() {
            return Err(failed(format!(
                "{url} answered {status}: {}",
                crate::git::diagnose::one_line(&String::from_utf8_lossy(&body))
            )));
        }
        #[derive(serde::Deserialize)]
        struct Answer {
            token: String,
            expires_at: String,
        }
        let answer: Answer = serde_json::from_slice(&body)
            .map_err(|e| failed(format!("{url} answered something else than a token: {e}")))?;
        let expires = humantime::parse_rfc3339_weak(answer.expires_at.trim_end_matches('Z'))
            .map_err(|e| failed(format!("{url}: expires_at {:?}: {e}", answer.expires_at)))?;
        Ok((answer.token, expires))
    }

    /// A JWT for the GitHub API: RS256 over `{iat, exp, iss}`, valid 9 minutes from a minute
    /// ago (clock skew).
    fn jwt(&self) -> Result<String, String> {
        let pem = match &self.key {
            AppKey::Pem(pem) => pem.clone(),
            AppKey::File(path) => std::fs::read_to_string(path).map_err(|e| {
                format!("cannot read the app's private key {}: {e}", path.display())
            })?,
        };
        let key = rsa_key(&pem)?;
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_err(|e| e.to_string())?
            .as_secs();
        let encode = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let header = encode(br#"{"alg":"RS256","typ":"JWT"}"#);
        let claims = serde_json::json!({"iat": now - 60, "exp": now + 540, "iss": self.issuer});
        let signed = format!("{header}.{}", encode(claims.to_string().as_bytes()));
        let mut signature = vec![0; key.public().modulus_len()];
        key.sign(
            &ring::signature::RSA_PKCS1_SHA256,
            &ring::rand::SystemRandom::new(),
            signed.as_bytes(),
            &mut signature,
        )
        .map_err(|_| "cannot sign the app's JWT with its key".to_string())?;
        Ok(format!("{signed}.{}", encode(&signature)))
    }
}

/// An RSA private key from PEM: PKCS#1 (`BEGIN RSA PRIVATE KEY`, what GitHub hands out) or
/// PKCS#8 (`BEGIN PRIVATE KEY`).
fn rsa_key(pem: &str) -> Result<ring::rsa::KeyPair, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::PrivateKeyDer;
    let not_rsa = |e: ring::error::KeyRejected| {
        format!("the app's private key is not a usable RSA key ({e})")
    };
    match PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| format!("the app's private key is not a PEM private key ({e})"))?
    {
        PrivateKeyDer::Pkcs1(der) => {
            ring::rsa::KeyPair::from_der(der.secret_pkcs1_der()).map_err(not_rsa)
        }
        PrivateKeyDer::Pkcs8(der) => {
            ring::rsa::KeyPair::from_pkcs8(der.secret_pkcs8_der()).map_err(not_rsa)
        }
        _ => Err("the app's private key is not an RSA key".into()),
    }
}

/// `(user, password)` from an askpass service: `GET url` answering `username=...` and
/// `password=...` lines (anything else is ignored), as git-sync reads it before every sync.
/// Without a `username=` line, `default_user` is sent.
pub(crate) fn askpass(
    url: &str,
    default_user: Option<&str>,
    ca_files: &[PathBuf],
    timeout: Duration,
) -> Result<(String, String), AccessError> {
    let failed = |cause: String| AccessError::Askpass {
        url: url.to_string(),
        cause,
    };
    let response = client(url, ca_files, timeout)
        .map_err(failed)?
        .get(url)
        .header("User-Agent", "dagsnap")
        .send()
        .map_err(|e| failed(e.to_string()))?;
    let status = response.status();
    if !status.is_success() {
        return Err(failed(format!("it answered {status}")));
    }
    let body = read_bounded(response).map_err(failed)?;
    let text = String::from_utf8_lossy(&body);
    let value = |key: &str| {
        text.lines()
            .find_map(|line| line.trim_end_matches('\r').strip_prefix(key))
            .map(str::to_string)
    };
    let password =
        value("password=").ok_or_else(|| failed("its answer has no password= line".into()))?;
    let user = value("username=")
        .or_else(|| default_user.map(str::to_string))
        .unwrap_or_default();
    Ok((user, password))
}

/// A client for one request to `url`: dagsnap's TLS trust, no proxy surprises beyond the
/// environment's, and `timeout` for the whole request.
fn client(
    url: &str,
    ca_files: &[PathBuf],
    timeout: Duration,
) -> Result<reqwest::blocking::Client, String> {
    let builder = reqwest::blocking::Client::builder().timeout(timeout);
    let builder = if url.to_ascii_lowercase().starts_with("https://") {
        let config = super::tls::client_config(ca_files).map_err(|e| e.to_string())?;
        builder.tls_backend_preconfigured(config)
    } else {
        builder.tls_certs_only(Vec::new())
    };
    builder.build().map_err(|e| e.to_string())
}

/// The body of `response`, at most [`MAX_ANSWER`] bytes.
fn read_bounded(response: reqwest::blocking::Response) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut body = Vec::new();
    response
        .take(MAX_ANSWER)
        .read_to_end(&mut body)
        .map_err(|e| e.to_string())?;
    Ok(body)
}

/// Whether `path` names a readable private key (checked at start, so a typo fails at once).
pub(crate) fn check_key_file(path: &Path) -> Result<(), AccessError> {
    let pem = std::fs::read_to_string(path).map_err(|e| AccessError::GitHubApp {
        cause: format!("cannot read the app's private key {}: {e}", path.display()),
    })?;
    rsa_key(&pem)
        .map(drop)
        .map_err(|cause| AccessError::GitHubApp { cause })
}

/// The `Cookie:` header for `url` from a Netscape cookie file (git's `http.cookieFile`, what
/// git-sync's `--cookie-file` names): the cookies whose domain, path and `secure` flag match
/// and that have not expired. Read at every conversation, so a refreshed file is followed.
pub(crate) fn cookie_header(file: &Path, url: &str) -> Result<Option<String>, AccessError> {
    let text = std::fs::read_to_string(file).map_err(|e| AccessError::CookieFile {
        path: file.to_path_buf(),
        cause: e.to_string(),
    })?;
    let Ok(parsed) = reqwest::Url::parse(url) else {
        return Ok(None);
    };
    let host = parsed.host_str().unwrap_or_default().to_ascii_lowercase();
    let https = parsed.scheme() == "https";
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let cookies: Vec<String> = text
        .lines()
        .filter_map(|line| {
            let line = line.strip_prefix("#HttpOnly_").unwrap_or(line);
            if line.starts_with('#') || line.trim().is_empty() {
                return None;
            }
            let fields: Vec<&str> = line.split('\t').collect();
            let [domain, subdomains, path, secure, expiry, name, value] = fields[..] else {
                return None;
            };
            let domain = domain.trim_start_matches('.').to_ascii_lowercase();
            let domain_ok = host == domain
                || (subdomains.eq_ignore_ascii_case("TRUE")
                    && host.ends_with(&format!(".{domain}")));
            let path_ok = parsed.path().starts_with(path);
            let secure_ok = !secure.eq_ignore_ascii_case("TRUE") || https;
            let live = expiry.parse::<u64>().map_or(true, |at| at == 0 || at > now);
            (domain_ok && path_ok && secure_ok && live).then(|| format!("{name}={value}"))
        })
        .collect();
    Ok((!cookies.is_empty()).then(|| format!("Cookie: {}", cookies.join("; "))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookies_of_a_url_are_those_that_match_and_live() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cookies");
        std::fs::write(
            &file,
            "# Netscape HTTP Cookie File\n\
             .googlesource.com\tTRUE\t/\tTRUE\t0\to\tgit-ci.example=abc\n\
             #HttpOnly_git.example\tFALSE\t/repos\tFALSE\t4102444800\tsession\tx1\n\
             git.example\tFALSE\t/other\tFALSE\t0\tnope\t1\n\
             git.example\tFALSE\t/\tFALSE\t1\texpired\t1\n\
             elsewhere.example\tFALSE\t/\tFALSE\t0\tforeign\t1\n",
        )
        .unwrap();
        assert_eq!(
            cookie_header(&file, "http://git.example/repos/dags.git").unwrap(),
            Some("Cookie: session=x1".into())
        );
        assert_eq!(
            cookie_header(&file, "https://chromium.googlesource.com/a.git").unwrap(),
            Some("Cookie: o=git-ci.example=abc".into())
        );
        assert_eq!(
            cookie_header(&file, "http://chromium.googlesource.com/a.git").unwrap(),
            None,
            "a secure cookie never goes over http"
        );
        assert!(cookie_header(&dir.path().join("missing"), "http://h/").is_err());
    }
}
