//! Turning transport failures into what an operator should do about them.
//!
//! gix, reqwest, rustls and ssh each describe a failure in their own words. This module
//! recognizes the common ones (bad credentials, missing access, untrusted certificates, unknown
//! or changed SSH host keys, DNS, refused connections, timeouts) and names the likely fix. The
//! original text is kept as details, so nothing is hidden.

/// What went wrong and what to do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Diagnosis {
    pub reason: &'static str,
    pub fix: &'static str,
}

/// Patterns, most specific first: a changed host key also reads "Host key verification failed".
const KNOWN: &[(&[&str], Diagnosis)] = &[
    (
        &["dubious ownership"],
        Diagnosis {
            reason: "git refuses to serve this repository because another user owns it (\"dubious ownership\")",
            fix: "run dagsnap as the repository's owner, or mark it safe for the user dagsnap runs as: `git config --global --add safe.directory PATH` in that user's HOME (or in GIT_CONFIG_GLOBAL) (in a container: a mounted file with `[safe] directory = PATH`, named by GIT_CONFIG_GLOBAL)",
        },
    ),
    (
        &["REMOTE HOST IDENTIFICATION HAS CHANGED"],
        Diagnosis {
            reason: "the server's SSH host key does not match the known hosts file",
            fix: "this is either an attack or a re-keyed server: confirm the new key's fingerprint with the server's owner, then update the file given to --ssh-known-hosts-file",
        },
    ),
    (
        &["Host key verification failed", "host key is known", "No matching host key"],
        Diagnosis {
            reason: "the server's SSH host key is not in the known hosts file",
            fix: "add it after checking its fingerprint (`ssh-keyscan -p PORT HOST >> known_hosts`) and pass that file with --ssh-known-hosts-file",
        },
    ),
    (
        &["Permission denied (publickey", "Permission denied (password"],
        Diagnosis {
            reason: "the SSH server rejected the key",
            fix: "check that --ssh-key-file is the private half of a deploy key with read access to this repository",
        },
    ),
    (
        &["No user exists for uid"],
        Diagnosis {
            reason: "OpenSSH refuses to run for a uid without an /etc/passwd entry",
            fix: "install libnss-wrapper (dagsnap then supplies an entry itself) or add the uid to /etc/passwd",
        },
    ),
    (
        &["HTTP status 401", "401 Unauthorized", "Unauthenticated"],
        Diagnosis {
            reason: "authentication failed (HTTP 401)",
            fix: "check --username and the password or token (--password-file or DAGSNAP_PASSWORD); tokens expire and can be revoked",
        },
    ),
    (
        &["HTTP status 403", "403 Forbidden"],
        Diagnosis {
            reason: "access denied (HTTP 403)",
            fix: "the server knows these credentials but they may not read this repository: check the token's scopes or the account's access",
        },
    ),
    (
        &["NotValidForName", "not valid for name", "certificate is not valid for"],
        Diagnosis {
            reason: "the server's TLS certificate was issued for another name",
            fix: "use the host name the certificate was issued for",
        },
    ),
    (
        &["UnknownIssuer", "invalid peer certificate", "certificate verify failed", "self signed certificate", "self-signed"],
        Diagnosis {
            reason: "the server's TLS certificate is not trusted",
            fix: "if the server uses its own CA, pass the CA certificate with --ca-file",
        },
    ),
    (
        &["Could not resolve hostname", "failed to lookup address", "dns error", "Name or service not known", "Temporary failure in name resolution"],
        Diagnosis {
            reason: "the host name does not resolve",
            fix: "check the host name in the URL and the pod's DNS",
        },
    ),
    (
        &["Connection refused"],
        Diagnosis {
            reason: "the connection was refused",
            fix: "check the host and port, and that the git server is running",
        },
    ),
    (
        &["Network is unreachable", "No route to host"],
        Diagnosis {
            reason: "the server is unreachable",
            fix: "check the pod's network and egress rules",
        },
    ),
    (
        &["timed out", "Timeout", "operation timed out"],
        Diagnosis {
            reason: "the server did not answer in time",
            fix: "check firewalls and network policies between this pod and the server; the loop retries",
        },
    ),
];

/// How a request through an HTTP proxy failed, when it failed on the way to the proxy or in it:
/// the start of a sentence that names the proxy next.
pub(crate) fn explain_proxy_failure(text: &str) -> Option<&'static str> {
    const FAILURES: &[(&[&str], &str)] = &[
        (
            &["tunnel", "Proxy"],
            "the proxy refused or failed to reach the git host:",
        ),
        (&["Connection refused"], "cannot connect to"),
        (
            &[
                "dns error",
                "failed to lookup address",
                "Name or service not known",
            ],
            "cannot resolve the host name of",
        ),
        (
            &[
                "Network is unreachable",
                "No route to host",
                "timed out",
                "Timeout",
            ],
            "cannot reach",
        ),
    ];
    FAILURES
        .iter()
        .find(|(needles, _)| needles.iter().any(|n| text.contains(n)))
        .map(|(_, what)| *what)
}

/// Recognize `text` (an error chain, possibly with ssh's own log appended).
pub(crate) fn explain(text: &str) -> Option<Diagnosis> {
    KNOWN
        .iter()
        .find(|(needles, _)| needles.iter().any(|n| text.contains(n)))
        .map(|(_, diagnosis)| *diagnosis)
}

/// `text` on one line: ssh logs and some errors span several.
pub(crate) fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.chars().all(|c| c == '@'))
        .collect::<Vec<_>>()
        .join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_host_key_is_not_taken_for_an_unknown_one() {
        let log = "@@@@@@@\n@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @\n@@@@@@@\nHost key verification failed.";
        assert!(explain(log).unwrap().reason.contains("does not match"));
        assert!(explain("Host key verification failed.")
            .unwrap()
            .reason
            .contains("not in the known hosts"));
        assert_eq!(
            one_line(log),
            "@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @ | Host key verification failed."
        );
    }

    #[test]
    fn http_statuses_are_told_apart() {
        assert!(explain("Received HTTP status 401: Unauthenticated")
            .unwrap()
            .reason
            .contains("401"));
        assert!(explain("HTTP status client error (403 Forbidden)")
            .unwrap()
            .reason
            .contains("403"));
        assert_eq!(explain("something else entirely"), None);
    }
}
