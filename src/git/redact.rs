//! Keeping credentials out of everything dagsnap prints.
//!
//! A repository URL may carry a token (`https://x-access-token:TOKEN@github.com/...`, or the
//! token alone as user name). Every place that shows a URL or an error that may quote one goes
//! through [`Redactor`], so a secret never reaches logs, status output or error messages.

/// Scrubs the secrets of one repository URL from any text.
///
/// Clones share what they know: a password read later (a rotated token) is hidden by every
/// copy, including the one the sync loop renders errors with.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    /// Secret substrings, longest first so that a secret containing another is replaced whole.
    secrets: std::sync::Arc<std::sync::RwLock<Vec<String>>>,
    /// The redactors of other repositories whose secrets this one hides as well (a publisher
    /// of several sources renders every error with all of them).
    others: Vec<Redactor>,
}

const MASK: &str = "<redacted>";

impl Redactor {
    /// Learn the secrets in `url`: for http(s) the whole user-info (a token is often the user
    /// name), for other schemes the password part only (`git@host` names a user, not a secret).
    pub fn for_url(url: &str) -> Self {
        let redactor = Redactor::default();
        if let Some((scheme, rest)) = url.split_once("://") {
            let authority_end = rest.find('/').unwrap_or(rest.len());
            let authority = &rest[..authority_end];
            if let Some(at) = authority.rfind('@') {
                let userinfo = &authority[..at];
                let is_http =
                    scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https");
                if is_http {
                    redactor.add_secret(userinfo);
                    if let Some((user, password)) = userinfo.split_once(':') {
                        redactor.add_secret(user);
                        redactor.add_secret(password);
                    }
                } else if let Some((_, password)) = userinfo.split_once(':') {
                    redactor.add_secret(password);
                }
            }
        }
        redactor
    }

    /// Also hide `secret` (a password read from a file or the environment).
    pub fn add_secret(&self, secret: &str) {
        // Very short values would mask unrelated text (a user "git" inside "github") and are not
        // credentials worth the name; they are never printed by dagsnap itself either.
        if secret.len() < 4 {
            return;
        }
        let mut secrets = self
            .secrets
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !secrets.iter().any(|s| s == secret) {
            secrets.push(secret.to_string());
            secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        }
    }

    /// One that hides what each of `all` hides, including secrets they learn later.
    pub fn joined(all: &[Redactor]) -> Self {
        Redactor {
            secrets: Default::default(),
            others: all.to_vec(),
        }
    }

    /// `text` with every known secret, and any user-info of any http(s) URL in it, masked.
    pub fn redact(&self, text: &str) -> String {
        mask_http_userinfo(&self.mask_secrets(text.to_string()))
    }

    fn mask_secrets(&self, text: String) -> String {
        let mut out = text;
        let secrets = self
            .secrets
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for secret in secrets.iter() {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), MASK);
            }
            // Errors from URL libraries often quote the percent-encoded form.
            let encoded = percent_encode(secret);
            if encoded != *secret && out.contains(encoded.as_str()) {
                out = out.replace(encoded.as_str(), MASK);
            }
        }
        drop(secrets);
        self.others
            .iter()
            .fold(out, |out, other| other.mask_secrets(out))
    }
}

/// Replace the user-info of every `http(s)://user:pass@host` in `text` with the mask, even for
/// URLs this redactor was not told about (a redirect target, a submodule URL).
fn mask_http_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("://") {
        let (head, tail) = rest.split_at(pos + 3);
        out.push_str(head);
        let is_http = head.to_ascii_lowercase().ends_with("http://")
            || head.to_ascii_lowercase().ends_with("https://");
        let authority_end = tail
            .find(|c: char| c == '/' || c.is_whitespace() || c == '"' || c == '\'')
            .unwrap_or(tail.len());
        match tail[..authority_end].rfind('@') {
            Some(at) if is_http && !tail[..at].starts_with(MASK) => {
                out.push_str(MASK);
                rest = &tail[at..];
            }
            _ => rest = tail,
        }
    }
    out.push_str(rest);
    out
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_in_https_url_never_printed() {
        let url = "https://x-access-token:ghp_s3cr3tT0ken@github.com/org/dags.git";
        let r = Redactor::for_url(url);
        let shown = r.redact(&format!(
            "fetch from {url} failed; token ghp_s3cr3tT0ken rejected"
        ));
        assert!(!shown.contains("ghp_s3cr3tT0ken"), "{shown}");
        assert!(shown.contains("github.com/org/dags.git"), "{shown}");
    }

    #[test]
    fn token_as_user_name_is_masked() {
        let url = "https://ghp_tokenonly1234@github.com/org/dags.git";
        let shown = Redactor::for_url(url).redact(url);
        assert_eq!(shown, "https://<redacted>@github.com/org/dags.git");
    }

    #[test]
    fn ssh_user_kept_password_masked() {
        let r = Redactor::for_url("ssh://git:hunter22@example.com:2222/dags.git");
        assert_eq!(
            r.redact("ssh://git:hunter22@example.com:2222/dags.git"),
            "ssh://git:<redacted>@example.com:2222/dags.git"
        );
        assert_eq!(
            Redactor::for_url("git@example.com:dags.git").redact("git@example.com:dags.git"),
            "git@example.com:dags.git"
        );
    }

    #[test]
    fn unknown_http_credentials_in_text_are_masked() {
        let shown = Redactor::default().redact("redirected to https://u:p4ss@mirror/x and failed");
        assert_eq!(
            shown,
            "redirected to https://<redacted>@mirror/x and failed"
        );
    }

    #[test]
    fn percent_encoded_secret_is_masked() {
        let r = Redactor::default();
        r.add_secret("p@ss/word");
        assert_eq!(r.redact("user:p%40ss%2Fword"), "user:<redacted>");
    }
}
