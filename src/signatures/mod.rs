//! Signed commits and tags: with `--verify-signatures`, only a commit whose signature (or whose
//! tag's signature) verifies against a trusted key goes live. Verified in-process; the signed
//! payload is the object without its signature, exactly as git computes it.
//!
//! - `ssh`: SSH signatures (`gpg.format=ssh`): an allowed-signers file, revoked keys.
//! - `openpgp`: OpenPGP signatures: a keyring of exported public keys.
//! - `keys`: the trusted keys, re-read when their files change, the last good set kept.

mod keys;
mod openpgp;
mod ssh;

pub(crate) use keys::{KeyFiles, TrustedKeys};

/// `--verify-signatures` and the keys it trusts.
#[derive(Debug, Clone)]
pub struct Policy {
    pub(crate) mode: Mode,
    pub(crate) keys: TrustedKeys,
}

impl Policy {
    /// Read the key files now; a problem is one line naming the file.
    pub(crate) fn load(mode: Mode, files: KeyFiles) -> Result<Policy, String> {
        Ok(Policy {
            mode,
            keys: TrustedKeys::load(&files)?,
        })
    }

    /// Read the key files again if they changed (see [`TrustedKeys::refresh`]).
    pub(crate) fn refresh(&mut self) {
        self.keys.refresh();
    }

    /// Names the mode and the key set in verdicts: a commit is verified once per both.
    pub(crate) fn fingerprint(&self) -> String {
        format!("signatures-{}-{}", self.mode.name(), self.keys.digest)
    }
}

use gix::bstr::ByteSlice;

/// What must be signed (`--verify-signatures`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The commit to publish.
    Commit,
    /// The annotated tag `--ref` names (the commit it points to is published).
    Tag,
    /// Both.
    TagAndCommit,
}

impl Mode {
    pub fn parse(text: &str) -> Result<Mode, String> {
        match text {
            "commit" => Ok(Mode::Commit),
            "tag" => Ok(Mode::Tag),
            "tag-and-commit" => Ok(Mode::TagAndCommit),
            other => Err(format!(
                "invalid --verify-signatures '{other}': give commit, tag or tag-and-commit"
            )),
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Mode::Commit => "commit",
            Mode::Tag => "tag",
            Mode::TagAndCommit => "tag-and-commit",
        }
    }

    pub(crate) fn commit(self) -> bool {
        matches!(self, Mode::Commit | Mode::TagAndCommit)
    }

    pub(crate) fn tag(self) -> bool {
        matches!(self, Mode::Tag | Mode::TagAndCommit)
    }
}

/// Why a signature was refused (the metric's `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    Unsigned,
    UnknownKey,
    BadSignature,
    Expired,
    Revoked,
    WrongPrincipal,
}

impl Reason {
    pub(crate) const ALL: [Reason; 6] = [
        Reason::Unsigned,
        Reason::UnknownKey,
        Reason::BadSignature,
        Reason::Expired,
        Reason::Revoked,
        Reason::WrongPrincipal,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Reason::Unsigned => "unsigned",
            Reason::UnknownKey => "unknown_key",
            Reason::BadSignature => "bad_signature",
            Reason::Expired => "expired",
            Reason::Revoked => "revoked",
            Reason::WrongPrincipal => "wrong_principal",
        }
    }
}

/// A signature refused: why, by which key (its fingerprint), in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub reason: Reason,
    pub key: Option<String>,
    pub detail: String,
}

impl Refusal {
    pub(crate) fn new(reason: Reason, key: Option<String>, detail: impl Into<String>) -> Refusal {
        Refusal {
            reason,
            key,
            detail: detail.into(),
        }
    }

    /// One line: "unknown key SHA256:...: no allowed-signers entry has this key".
    pub(crate) fn line(&self, what: &str) -> String {
        let reason = self.reason.label().replace('_', " ");
        match &self.key {
            Some(key) => format!("{what}: {reason}, key {key}: {}", self.detail),
            None => format!("{what}: {reason}: {}", self.detail),
        }
    }
}

/// Who signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Signer {
    pub fingerprint: String,
    pub principal: String,
}

/// The kind of signed object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Object {
    Commit,
    Tag,
}

/// Verify the signature of a commit or annotated tag, `raw` being its object data as git stores
/// it, against `keys`.
pub(crate) fn verify(object: Object, raw: &[u8], keys: &TrustedKeys) -> Result<Signer, Refusal> {
    let (signature, payload, signed_at) = match object {
        Object::Commit => {
            let found = gix::objs::CommitRefIter::signature(raw, gix::hash::Kind::Sha1)
                .ok()
                .flatten();
            let Some((signature, signed)) = found else {
                return Err(Refusal::new(
                    Reason::Unsigned,
                    None,
                    "the commit carries no signature",
                ));
            };
            let time = gix::objs::CommitRef::from_bytes(raw, gix::hash::Kind::Sha1)
                .ok()
                .and_then(|c| c.committer().ok().map(|s| s.seconds()))
                .unwrap_or(0);
            (
                signature.into_owned().to_vec(),
                signed.to_bstring().to_vec(),
                time,
            )
        }
        Object::Tag => {
            let Some((signature, signed)) = gix::objs::TagRefIter::signature(raw) else {
                return Err(Refusal::new(
                    Reason::Unsigned,
                    None,
                    "the tag carries no signature",
                ));
            };
            let time = gix::objs::TagRef::from_bytes(raw, gix::hash::Kind::Sha1)
                .ok()
                .and_then(|t| t.tagger().ok().flatten().map(|s| s.seconds()))
                .unwrap_or(0);
            (signature.data.to_vec(), signed.to_bstring().to_vec(), time)
        }
    };
    if signature
        .trim_start()
        .starts_with(b"-----BEGIN SSH SIGNATURE-----")
    {
        keys.ssh.verify(&payload, &signature, signed_at)
    } else if signature
        .trim_start()
        .starts_with(b"-----BEGIN PGP SIGNATURE-----")
    {
        keys.openpgp.verify(&payload, &signature, signed_at)
    } else {
        Err(Refusal::new(
            Reason::BadSignature,
            None,
            "a signature of a kind dagsnap does not verify (X.509?)",
        ))
    }
}
