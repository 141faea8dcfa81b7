//! Step 7 of the cycle with `--verify-signatures`: the commit (or the annotated tag `--ref`
//! names, or both) must carry a good signature by a trusted key before anything is built. The
//! verdict is recorded in the root once per commit, mode and key set, like the check's, so a
//! refused commit is neither verified nor built again at every poll, and a change of keys
//! verifies it again.

use std::time::{Instant, SystemTime};

use super::sources::Part;
use super::steps::Seen;
use super::{PublishError, Publisher};
use crate::signatures::{self, Object, Policy, Refusal, Signer};
use crate::store::{Cause, SignatureVerdict, Verdict};

impl Publisher {
    /// The refusal of `seen`'s commit by `--verify-signatures`, if it is refused (verified now,
    /// or at an earlier poll by any publisher of the root).
    pub(super) fn unsigned(&mut self, seen: &Seen) -> Result<Option<Verdict>, PublishError> {
        // Taken out for the step (the keys are not copied), and put back whatever it returns.
        let Some(mut policy) = self.gate.signatures.take() else {
            return Ok(None);
        };
        policy.refresh();
        let verdict = self.signature_verdict(seen, &policy);
        self.gate.signatures = Some(policy);
        verdict
    }

    /// The verdict on `seen`'s commit under `policy`: recorded earlier, or reached now.
    fn signature_verdict(
        &mut self,
        seen: &Seen,
        policy: &Policy,
    ) -> Result<Option<Verdict>, PublishError> {
        let fingerprint = policy.fingerprint();
        if let Some(verdict) = self.root.records().verdict(&seen.commit, &fingerprint) {
            return Ok((!verdict.accepted).then_some(verdict));
        }
        let started = Instant::now();
        let found = self.verify_signatures(seen, policy);
        let elapsed_us = started.elapsed().as_micros() as u64;
        let (signature, output) = match &found {
            Ok(signer) => (
                SignatureVerdict {
                    reason: "verified".into(),
                    key: Some(signer.fingerprint.clone()),
                    signer: Some(signer.principal.clone()).filter(|p| !p.is_empty()),
                },
                format!("signed by {} ({})", signer.principal, signer.fingerprint),
            ),
            Err((what, refusal)) => (
                SignatureVerdict {
                    reason: refusal.reason.label().into(),
                    key: refusal.key.clone(),
                    signer: None,
                },
                refusal.line(what),
            ),
        };
        let verdict = Verdict {
            commit: seen.commit.clone(),
            fingerprint,
            accepted: found.is_ok(),
            exit_code: None,
            signal: None,
            timed_out: false,
            not_started: None,
            duration_ms: started.elapsed().as_millis() as u64,
            output,
            output_dropped: 0,
            checked_at: SystemTime::now(),
            host: crate::fsutil::hostname(),
            pid: std::process::id(),
            signature: Some(Box::new(signature)),
        };
        self.root.records().record_verdict(&verdict)?;
        match found {
            Ok(signer) => {
                tracing::info!(commit = %seen.commit, key = %signer.fingerprint, signer = %crate::text::escape(&signer.principal), mode = policy.mode.name(), elapsed_us, "the signature verified");
                Ok(None)
            }
            Err((_, refusal)) => {
                tracing::warn!(commit = %seen.commit, reason = refusal.reason.label(), key = refusal.key.as_deref().unwrap_or("none"), detail = %refusal.detail, elapsed_us, "the signature was refused; the commit is not published and the live snapshot stays");
                self.last_signature_refusal = Some(refusal.reason.label());
                self.journal(
                    &seen.commit,
                    Cause::Rejected,
                    &seen.observation.ref_name,
                    verdict.output.clone(),
                )?;
                Ok(Some(verdict))
            }
        }
    }

    /// Verify what the mode asks for, for each source: the tag, then the commit. The refusal
    /// says which object (and of which source, when there are several). A source that stands
    /// in with its commit of the live snapshot (`--allow-stale-source`) was verified when that
    /// snapshot was published.
    fn verify_signatures(&self, seen: &Seen, policy: &Policy) -> Result<Signer, (String, Refusal)> {
        let mut signer = None;
        for part in seen.parts.iter().filter(|p| p.stale.is_none()) {
            let followed = &self.sources[part.index];
            let named = |what: &str| match &followed.source.name {
                Some(name) => format!("source '{name}': {what}"),
                None => what.to_string(),
            };
            let one = self
                .verify_part(&followed.cache.repo(), part, policy)
                .map_err(|(what, refusal)| (named(what), refusal))?;
            signer = Some(one);
        }
        signer.ok_or((
            "commit".into(),
            Refusal::new(signatures::Reason::Unsigned, None, "nothing was verified"),
        ))
    }

    fn verify_part(
        &self,
        repo: &gix::Repository,
        part: &Part,
        policy: &Policy,
    ) -> Result<Signer, (&'static str, Refusal)> {
        let raw = |id: gix::ObjectId| -> Option<Vec<u8>> {
            repo.find_object(id).ok().map(|object| object.data.clone())
        };
        let mut signer = None;
        if policy.mode.tag() {
            let Some(data) = part.tag.and_then(raw) else {
                return Err((
                    "tag",
                    Refusal::new(
                        signatures::Reason::Unsigned,
                        None,
                        format!(
                            "{} is not an annotated tag, so nothing signs it; point --ref at a signed tag or use --verify-signatures commit",
                            part.ref_name
                        ),
                    ),
                ));
            };
            signer =
                Some(signatures::verify(Object::Tag, &data, &policy.keys).map_err(|r| ("tag", r))?);
        }
        if policy.mode.commit() {
            let Some(data) = raw(part.commit) else {
                return Err((
                    "commit",
                    Refusal::new(
                        signatures::Reason::Unsigned,
                        None,
                        "the commit is not in the cache",
                    ),
                ));
            };
            signer = Some(
                signatures::verify(Object::Commit, &data, &policy.keys)
                    .map_err(|r| ("commit", r))?,
            );
        }
        signer.ok_or((
            "commit",
            Refusal::new(signatures::Reason::Unsigned, None, "nothing was verified"),
        ))
    }

    /// For a version a reader asks for (`publish::versions`): with `--verify-signatures`, the
    /// commit must have verified in this root already, or carry a good signature by a trusted
    /// key now (in `tag` mode, which verifies tags, only a commit verified through its tag).
    /// Why not, when not.
    pub(super) fn version_unsigned(&mut self, commit: &crate::commit::CommitId) -> Option<String> {
        let several = self.several();
        let policy = self.gate.signatures.as_mut()?;
        policy.refresh();
        let policy = &*policy;
        if let Some(verdict) = self.root.records().verdict(commit, &policy.fingerprint()) {
            return (!verdict.accepted).then(|| verdict.why());
        }
        if !policy.mode.commit() {
            return Some("--verify-signatures tag: only a commit that went through a verified tag in this root is materialized".into());
        }
        if several {
            return Some("--verify-signatures: a snapshot of several sources is materialized for a reader only once this root verified it".into());
        }
        let data = self.sources[0]
            .cache
            .repo()
            .find_object(commit.object_id())
            .ok()?
            .data
            .clone();
        signatures::verify(Object::Commit, &data, &policy.keys)
            .err()
            .map(|refusal| format!("signature refused: {}", refusal.line("commit")))
    }

    /// Why the last cycle refused a signature, if it did (taken: counted once).
    pub fn take_signature_refusal(&mut self) -> Option<&'static str> {
        self.last_signature_refusal.take()
    }
}
