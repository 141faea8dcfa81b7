//! SSH signatures (`gpg.format=ssh`): git's allowed-signers file (`gpg.ssh.allowedSignersFile`),
//! revoked keys (`gpg.ssh.revocationFile`), and verifying an `sshsig` over a commit or tag as
//! `ssh-keygen -Y verify -n git` does for git, at the object's own time (git passes the
//! committer's or tagger's date as `verify-time`, so `valid-after`/`valid-before` are judged
//! against when the object says it was made).

use ssh_key::{HashAlg, PublicKey, SshSig};

use super::{Reason, Refusal, Signer};

/// One line of an allowed-signers file.
#[derive(Debug, Clone)]
pub(crate) struct AllowedSigner {
    principals: Vec<String>,
    key: ssh_key::public::KeyData,
    namespaces: Option<Vec<String>>,
    valid_after: Option<i64>,
    valid_before: Option<i64>,
    cert_authority: bool,
}

/// The SSH keys trusted to sign, and the revoked ones.
#[derive(Debug, Clone, Default)]
pub(crate) struct SshKeys {
    pub(crate) signers: Vec<AllowedSigner>,
    pub(crate) revoked: Vec<ssh_key::public::KeyData>,
}

/// Parse an allowed-signers file (ssh-keygen(1), "ALLOWED SIGNERS"): `principals [options]
/// keytype base64 [comment]`, `#` comments and blank lines ignored.
pub(crate) fn parse_allowed_signers(text: &str) -> Result<Vec<AllowedSigner>, String> {
    let mut signers = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let signer = parse_line(line).map_err(|why| format!("line {}: {why}", n + 1))?;
        signers.push(signer);
    }
    Ok(signers)
}

fn parse_line(line: &str) -> Result<AllowedSigner, String> {
    let (principals, rest) = split_field(line).ok_or("no key after the principals")?;
    let principals: Vec<String> = principals
        .trim_matches('"')
        .split(',')
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect();
    if principals.is_empty() {
        return Err("no principals".into());
    }
    // Options come before the key type, which is a known algorithm name.
    let mut options = Options::default();
    let rest = rest.trim_start();
    let key_text = if looks_like_key(rest) {
        rest
    } else {
        let (given, after) = split_field(rest).ok_or("no key after the options")?;
        for option in split_options(given) {
            let (name, value) = match option.split_once('=') {
                Some((name, value)) => (
                    name.to_ascii_lowercase(),
                    Some(value.trim_matches('"').to_string()),
                ),
                None => (option.to_ascii_lowercase(), None),
            };
            match (name.as_str(), value) {
                ("cert-authority", None) => options.cert_authority = true,
                ("namespaces", Some(v)) => {
                    options.namespaces = Some(v.split(',').map(str::to_string).collect())
                }
                ("valid-after", Some(v)) => options.valid_after = Some(parse_time(&v)?),
                ("valid-before", Some(v)) => options.valid_before = Some(parse_time(&v)?),
                (other, _) => return Err(format!("unknown option '{other}'")),
            }
        }
        after.trim_start()
    };
    let key =
        PublicKey::from_openssh(key_text.trim()).map_err(|e| format!("not a public key ({e})"))?;
    Ok(AllowedSigner {
        principals,
        key: key.key_data().clone(),
        namespaces: options.namespaces,
        valid_after: options.valid_after,
        valid_before: options.valid_before,
        cert_authority: options.cert_authority,
    })
}

/// The options of an allowed-signers line.
#[derive(Default)]
struct Options {
    namespaces: Option<Vec<String>>,
    valid_after: Option<i64>,
    valid_before: Option<i64>,
    cert_authority: bool,
}

/// The first whitespace-separated field (quotes protect spaces), and the rest.
fn split_field(text: &str) -> Option<(&str, &str)> {
    let mut quoted = false;
    for (i, c) in text.char_indices() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => return Some((&text[..i], &text[i..])),
            _ => {}
        }
    }
    None
}

/// Options separated by commas outside quotes.
fn split_options(text: &str) -> Vec<String> {
    let (mut out, mut current, mut quoted) = (Vec::new(), String::new(), false);
    for c in text.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                current.push(c);
            }
            ',' if !quoted => out.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

fn looks_like_key(text: &str) -> bool {
    ["ssh-", "ecdsa-sha2-", "sk-"]
        .iter()
        .any(|p| text.starts_with(p))
}

/// `YYYYMMDD[Z]` or `YYYYMMDDHHMM[SS][Z]`, as unix seconds (UTC; see the docs).
fn parse_time(text: &str) -> Result<i64, String> {
    let bad = || format!("'{text}' is not a time (YYYYMMDD or YYYYMMDDHHMM[SS], optionally Z)");
    let digits = text.strip_suffix(['Z', 'z']).unwrap_or(text);
    if !digits.bytes().all(|b| b.is_ascii_digit()) || ![8, 12, 14].contains(&digits.len()) {
        return Err(bad());
    }
    let field =
        |range: std::ops::Range<usize>| digits.get(range).and_then(|s| s.parse::<i64>().ok());
    let (y, mo, d) = (
        field(0..4).ok_or_else(bad)?,
        field(4..6).ok_or_else(bad)?,
        field(6..8).ok_or_else(bad)?,
    );
    let (h, mi, s) = (
        field(8..10).unwrap_or(0),
        field(10..12).unwrap_or(0),
        field(12..14).unwrap_or(0),
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return Err(bad());
    }
    Ok(days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + s)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// Parse a revocation file: public keys, one per line (`#` comments). A key revocation list
/// (KRL, binary) is not read: say so.
pub(crate) fn parse_revoked(bytes: &[u8]) -> Result<Vec<ssh_key::public::KeyData>, String> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| "not text: a binary key revocation list (KRL) is not supported; list the revoked public keys, one per line".to_string())?;
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key = PublicKey::from_openssh(line)
            .map_err(|e| format!("line {}: not a public key ({e})", n + 1))?;
        keys.push(key.key_data().clone());
    }
    Ok(keys)
}

impl SshKeys {
    /// Verify `armored` (an `-----BEGIN SSH SIGNATURE-----` block) over `payload`, made at
    /// `signed_at` (unix seconds) by the object's own account.
    pub(crate) fn verify(
        &self,
        payload: &[u8],
        armored: &[u8],
        signed_at: i64,
    ) -> Result<Signer, Refusal> {
        let text = std::str::from_utf8(armored).map_err(|_| {
            Refusal::new(Reason::BadSignature, None, "the SSH signature is not text")
        })?;
        let signature = SshSig::from_pem(text.trim()).map_err(|e| {
            Refusal::new(
                Reason::BadSignature,
                None,
                format!("the SSH signature cannot be read ({e})"),
            )
        })?;
        let key = signature.public_key().clone();
        let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
        let refuse =
            |reason, detail: String| Refusal::new(reason, Some(fingerprint.clone()), detail);
        if signature.namespace() != "git" {
            return Err(refuse(
                Reason::BadSignature,
                format!("signed for namespace '{}', not git", signature.namespace()),
            ));
        }
        if self.revoked.contains(&key) {
            return Err(refuse(
                Reason::Revoked,
                "the key is in the revoked keys".into(),
            ));
        }
        PublicKey::from(key.clone())
            .verify("git", payload, &signature)
            .map_err(|_| {
                refuse(
                    Reason::BadSignature,
                    "the signature does not match the signed content (edited after signing?)"
                        .into(),
                )
            })?;
        let entries: Vec<&AllowedSigner> = self
            .signers
            .iter()
            .filter(|s| !s.cert_authority && s.key == key)
            .collect();
        if entries.is_empty() {
            return Err(refuse(
                Reason::UnknownKey,
                "no allowed-signers entry has this key".into(),
            ));
        }
        let for_git: Vec<&&AllowedSigner> = entries
            .iter()
            .filter(|s| {
                s.namespaces
                    .as_ref()
                    .is_none_or(|ns| ns.iter().any(|n| namespace_matches(n, "git")))
            })
            .collect();
        if for_git.is_empty() {
            return Err(refuse(
                Reason::WrongPrincipal,
                "the key's allowed-signers entries do not cover namespace git".into(),
            ));
        }
        let valid = for_git.iter().find(|s| {
            s.valid_after.is_none_or(|after| signed_at >= after)
                && s.valid_before.is_none_or(|before| signed_at <= before)
        });
        match valid {
            Some(signer) => Ok(Signer {
                fingerprint,
                principal: signer.principals.join(","),
            }),
            None => Err(refuse(
                Reason::Expired,
                "signed outside the key's valid-after/valid-before".into(),
            )),
        }
    }
}

/// ssh-keygen matches namespaces as patterns (`*` and `?`).
fn namespace_matches(pattern: &str, name: &str) -> bool {
    fn matches(p: &[u8], n: &[u8]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some(b'*'), _) => matches(&p[1..], n) || (!n.is_empty() && matches(p, &n[1..])),
            (Some(b'?'), Some(_)) => matches(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => matches(&p[1..], &n[1..]),
            _ => false,
        }
    }
    matches(pattern.as_bytes(), name.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";

    #[test]
    fn allowed_signers_lines_read_as_ssh_keygen_reads_them() {
        let text = format!(
            "# team\n\nada@example.com {KEY} ada\n\"bob@x,*@example.com\" namespaces=\"git,file\",valid-after=\"20240101\",valid-before=\"202501011200Z\" {KEY}\nca@example.com cert-authority {KEY}\n"
        );
        let signers = parse_allowed_signers(&text).unwrap();
        assert_eq!(signers.len(), 3);
        assert_eq!(signers[1].principals, ["bob@x", "*@example.com"]);
        assert_eq!(
            signers[1].namespaces.as_deref(),
            Some(&["git".to_string(), "file".to_string()][..])
        );
        assert_eq!(signers[1].valid_after, Some(1_704_067_200));
        assert_eq!(signers[1].valid_before, Some(1_735_732_800));
        assert!(signers[2].cert_authority);
        let bad =
            parse_allowed_signers(&format!("ada@example.com frobnicate {KEY}\n")).unwrap_err();
        assert!(
            bad.starts_with("line 1: unknown option 'frobnicate'"),
            "{bad}"
        );
        assert!(parse_allowed_signers("ada@example.com ssh-ed25519 AAAA\n").is_err());
        assert!(parse_time("20241301").is_err());
    }

    #[test]
    fn namespaces_match_as_patterns() {
        assert!(namespace_matches("git", "git"));
        assert!(namespace_matches("g*", "git"));
        assert!(namespace_matches("g?t", "git"));
        assert!(!namespace_matches("file", "git"));
    }
}
