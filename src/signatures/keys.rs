//! The trusted keys: `--allowed-signers`, `--revoked-keys` and `--gpg-keyring`, read at start
//! (a file that cannot be read or parsed there is refused, naming it) and again at each poll
//! when one of them changed, so a key added or revoked takes effect without a restart. A file
//! that turns unreadable or malformed later keeps the last good key set, with a warning.

use std::path::{Path, PathBuf};

use super::openpgp::PgpKeys;
use super::ssh::{self, SshKeys};

/// Where the trusted keys are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct KeyFiles {
    pub(crate) allowed_signers: Option<PathBuf>,
    pub(crate) revoked_keys: Option<PathBuf>,
    pub(crate) gpg_keyring: Option<PathBuf>,
}

/// The keys as last read, and what they were read from.
#[derive(Debug, Clone)]
pub(crate) struct TrustedKeys {
    pub(crate) ssh: SshKeys,
    pub(crate) openpgp: PgpKeys,
    files: KeyFiles,
    /// Each file's identity when read (size, modification time, inode), to notice changes.
    seen: Vec<Option<(u64, i128, u64)>>,
    /// A digest of every file's content: verdicts are kept per key set.
    pub(crate) digest: String,
}

impl TrustedKeys {
    /// Read every file; the first problem, naming its file, is the error.
    pub(crate) fn load(files: &KeyFiles) -> Result<TrustedKeys, String> {
        if files.allowed_signers.is_none() && files.gpg_keyring.is_none() {
            return Err("--verify-signatures needs trusted keys: --allowed-signers FILE (SSH) and/or --gpg-keyring FILE (OpenPGP)".into());
        }
        let read = |path: &Option<PathBuf>, flag: &str| -> Result<Option<Vec<u8>>, String> {
            match path {
                None => Ok(None),
                Some(path) => std::fs::read(path)
                    .map(Some)
                    .map_err(|e| format!("cannot read {flag} {}: {e}", path.display())),
            }
        };
        let signers = read(&files.allowed_signers, "--allowed-signers")?;
        let revoked = read(&files.revoked_keys, "--revoked-keys")?;
        let keyring = read(&files.gpg_keyring, "--gpg-keyring")?;
        let mut keys = SshKeys::default();
        if let (Some(bytes), Some(path)) = (&signers, &files.allowed_signers) {
            let text = std::str::from_utf8(bytes)
                .map_err(|_| format!("--allowed-signers {}: not text", path.display()))?;
            keys.signers = ssh::parse_allowed_signers(text)
                .map_err(|why| format!("--allowed-signers {}: {why}", path.display()))?;
        }
        if let (Some(bytes), Some(path)) = (&revoked, &files.revoked_keys) {
            keys.revoked = ssh::parse_revoked(bytes)
                .map_err(|why| format!("--revoked-keys {}: {why}", path.display()))?;
        }
        let openpgp = match (&keyring, &files.gpg_keyring) {
            (Some(bytes), Some(path)) => PgpKeys::parse(bytes)
                .map_err(|why| format!("--gpg-keyring {}: {why}", path.display()))?,
            _ => PgpKeys::default(),
        };
        let digest = {
            let mut context = ring::digest::Context::new(&ring::digest::SHA256);
            for part in [&signers, &revoked, &keyring] {
                let bytes = part.as_deref().unwrap_or_default();
                context.update(&(bytes.len() as u64).to_le_bytes());
                context.update(bytes);
            }
            context.finish().as_ref()[..8]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        };
        Ok(TrustedKeys {
            ssh: keys,
            openpgp,
            seen: identities(files),
            files: files.clone(),
            digest,
        })
    }

    /// Read the files again if one changed since; keep the last good keys (and say why) if
    /// they cannot be read now. Whether the keys changed.
    pub(crate) fn refresh(&mut self) -> bool {
        if identities(&self.files) == self.seen {
            return false;
        }
        match TrustedKeys::load(&self.files) {
            Ok(fresh) => {
                let changed = fresh.digest != self.digest;
                if changed {
                    tracing::info!(keys = %fresh.digest, "the trusted keys changed; new commits are verified against them");
                }
                *self = fresh;
                changed
            }
            Err(why) => {
                tracing::warn!(error = %why, "cannot read the trusted keys again; keeping the last good set");
                self.seen = identities(&self.files);
                false
            }
        }
    }
}

fn identities(files: &KeyFiles) -> Vec<Option<(u64, i128, u64)>> {
    [
        &files.allowed_signers,
        &files.revoked_keys,
        &files.gpg_keyring,
    ]
    .iter()
    .map(|path| path.as_deref().and_then(identity))
    .collect()
}

fn identity(path: &Path) -> Option<(u64, i128, u64)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some((
        meta.len(),
        i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        meta.ino(),
    ))
}
