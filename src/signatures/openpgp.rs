//! OpenPGP signatures: a keyring of exported public keys (`gpg --export`, binary or armored),
//! checked as `gpg --verify` checks them for git: the issuer must be a key of the keyring (its
//! primary key, or a subkey bound to it with the signing capability and its back-signature),
//! the signature must match the payload, and neither the key nor the signing subkey may be
//! revoked or expired now.

use std::time::{SystemTime, UNIX_EPOCH};

use pgp::composed::{Deserializable, DetachedSignature, SignedPublicKey};
use pgp::packet::{Signature, SignatureType};
use pgp::types::KeyDetails;

use super::{Reason, Refusal, Signer};

/// The keyring.
#[derive(Debug, Clone, Default)]
pub(crate) struct PgpKeys {
    keys: Vec<SignedPublicKey>,
}

impl PgpKeys {
    /// Read exported public keys, armored or binary; a key whose self-signatures do not verify
    /// is an error naming it.
    pub(crate) fn parse(bytes: &[u8]) -> Result<PgpKeys, String> {
        let armored = bytes.trim_ascii_start().starts_with(b"-----BEGIN");
        let parsed: Vec<pgp::errors::Result<SignedPublicKey>> = if armored {
            let (keys, _) = SignedPublicKey::from_armor_many(bytes)
                .map_err(|e| format!("not an armored OpenPGP keyring ({e})"))?;
            keys.collect()
        } else {
            SignedPublicKey::from_bytes_many(bytes)
                .map_err(|e| format!("not an OpenPGP keyring ({e})"))?
                .collect()
        };
        let mut keys = Vec::new();
        for key in parsed {
            let key = key.map_err(|e| format!("a key cannot be read ({e})"))?;
            key.verify_bindings().map_err(|e| {
                format!(
                    "key {}: its self-signatures do not verify ({e})",
                    hex(&key.fingerprint())
                )
            })?;
            keys.push(key);
        }
        if keys.is_empty() {
            return Err("no public keys in it (export them with `gpg --export KEYID`)".into());
        }
        Ok(PgpKeys { keys })
    }

    /// Verify the armored `signature` over `payload`.
    pub(crate) fn verify(
        &self,
        payload: &[u8],
        armored: &[u8],
        _signed_at: i64,
    ) -> Result<Signer, Refusal> {
        let (signature, _) = DetachedSignature::from_armor_single(armored).map_err(|e| {
            Refusal::new(
                Reason::BadSignature,
                None,
                format!("the OpenPGP signature cannot be read ({e})"),
            )
        })?;
        let issuer = issuer(&signature.signature);
        let refuse = |reason, key: Option<String>, detail: &str| {
            Refusal::new(reason, key.or(issuer.clone()), detail)
        };
        let Some((key, component)) = self.find(&signature.signature) else {
            return Err(refuse(
                Reason::UnknownKey,
                None,
                "no key of the keyring made it",
            ));
        };
        let signed_by = hex(&component.fingerprint());
        let fingerprint = Some(signed_by.clone());
        let user = key
            .details
            .users
            .first()
            .map(|u| String::from_utf8_lossy(u.id.id()).into_owned())
            .unwrap_or_default();
        let checked = match &component.subkey {
            None => signature.verify(&key.primary_key, payload),
            Some(subkey) => signature.verify(&subkey.key, payload),
        };
        if checked.is_err() {
            return Err(refuse(
                Reason::BadSignature,
                fingerprint,
                "the signature does not match the signed content (edited after signing?)",
            ));
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        if !key.details.revocation_signatures.is_empty() {
            return Err(refuse(Reason::Revoked, fingerprint, "the key is revoked"));
        }
        let primary_created = i64::from(key.primary_key.created_at().as_secs());
        if expired(primary_created, self_signatures(key), now) {
            return Err(refuse(Reason::Expired, fingerprint, "the key has expired"));
        }
        if let Some(subkey) = &component.subkey {
            if subkey
                .signatures
                .iter()
                .any(|s| s.typ() == Some(SignatureType::SubkeyRevocation))
            {
                return Err(refuse(
                    Reason::Revoked,
                    fingerprint,
                    "the signing subkey is revoked",
                ));
            }
            let bindings: Vec<&Signature> = subkey
                .signatures
                .iter()
                .filter(|s| s.typ() == Some(SignatureType::SubkeyBinding))
                .collect();
            if !bindings.iter().any(|s| s.key_flags().sign()) {
                return Err(refuse(
                    Reason::WrongPrincipal,
                    fingerprint,
                    "the subkey may not sign (no signing capability)",
                ));
            }
            let created = i64::from(subkey.key.created_at().as_secs());
            if expired(created, bindings, now) {
                return Err(refuse(
                    Reason::Expired,
                    fingerprint,
                    "the signing subkey has expired",
                ));
            }
        }
        Ok(Signer {
            fingerprint: signed_by,
            principal: user,
        })
    }

    /// The key and component (primary or subkey) that issued `signature`.
    fn find(&self, signature: &Signature) -> Option<(&SignedPublicKey, Component<'_>)> {
        let fingerprints: Vec<Vec<u8>> = signature
            .issuer_fingerprint()
            .iter()
            .map(|f| f.as_ref().to_vec())
            .collect();
        let ids: Vec<Vec<u8>> = signature
            .issuer_key_id()
            .iter()
            .map(|k| k.as_ref().to_vec())
            .collect();
        let matches = |fp: &pgp::types::Fingerprint, id: &pgp::types::KeyId| {
            fingerprints.iter().any(|f| f.as_slice() == fp.as_ref())
                || ids.iter().any(|i| i.as_slice() == id.as_ref())
        };
        for key in &self.keys {
            if matches(&key.fingerprint(), &key.legacy_key_id()) {
                return Some((
                    key,
                    Component {
                        primary: key,
                        subkey: None,
                    },
                ));
            }
            for subkey in &key.public_subkeys {
                if matches(&subkey.key.fingerprint(), &subkey.key.legacy_key_id()) {
                    return Some((
                        key,
                        Component {
                            primary: key,
                            subkey: Some(subkey),
                        },
                    ));
                }
            }
        }
        None
    }
}

struct Component<'a> {
    primary: &'a SignedPublicKey,
    subkey: Option<&'a pgp::composed::SignedPublicSubKey>,
}

impl Component<'_> {
    fn fingerprint(&self) -> pgp::types::Fingerprint {
        match self.subkey {
            Some(subkey) => subkey.key.fingerprint(),
            None => self.primary.fingerprint(),
        }
    }
}

/// The primary key's self-signatures (direct and on its user ids).
fn self_signatures(key: &SignedPublicKey) -> Vec<&Signature> {
    key.details
        .direct_signatures
        .iter()
        .chain(key.details.users.iter().flat_map(|u| u.signatures.iter()))
        .collect()
}

/// Whether the newest of `signatures` gives the key (created at `created`) an expiry before `now`.
fn expired(created: i64, signatures: Vec<&Signature>, now: i64) -> bool {
    let newest = signatures
        .into_iter()
        .filter(|s| s.created().is_some())
        .max_by_key(|s| s.created().map(|t| t.as_secs()));
    let Some(lifetime) = newest.and_then(|s| s.key_expiration_time()) else {
        return false;
    };
    lifetime.as_secs() != 0 && created + i64::from(lifetime.as_secs()) <= now
}

fn issuer(signature: &Signature) -> Option<String> {
    signature
        .issuer_fingerprint()
        .first()
        .map(|f| hex(f))
        .or_else(|| {
            signature
                .issuer_key_id()
                .first()
                .map(|k| k.as_ref().iter().map(|b| format!("{b:02X}")).collect())
        })
}

fn hex(fingerprint: &pgp::types::Fingerprint) -> String {
    format!("{fingerprint:X}")
}
