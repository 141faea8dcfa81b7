//! [`CommitId`]: the name of a commit everywhere dagsnap keeps one — records, manifests, leases,
//! verdicts, snapshot directories — checked once, where it enters.
//!
//! Everything on the shared volume is input: a commit id read from a record names a directory
//! that dagsnap opens, renames or deletes, so a record that says `../x` must never get that far.
//! A `CommitId` is made only by [`CommitId::parse`] (and deserialization, which calls it) or from
//! a gix object id, so a function that takes one never checks again.

use std::fmt;
use std::ops::Deref;

use serde::{Deserialize, Deserializer, Serialize};

/// A full commit id: 40 (SHA-1) or 64 (SHA-256) lower-case hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct CommitId(String);

/// Why a text is not a full commit id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{}' is not a full commit id (40 or 64 lower-case hex digits)", crate::text::escape(.0))]
pub struct NotACommitId(pub String);

impl CommitId {
    /// `text` as a commit id, if it is one.
    pub fn parse(text: &str) -> Result<CommitId, NotACommitId> {
        let valid = (text.len() == 40 || text.len() == 64)
            && text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if valid {
            Ok(CommitId(text.to_string()))
        } else {
            Err(NotACommitId(text.to_string()))
        }
    }

    /// Whether `text` is a full commit id.
    pub fn is_valid(text: &str) -> bool {
        Self::parse(text).is_ok()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The object id gix knows it by.
    pub fn object_id(&self) -> gix::ObjectId {
        // A valid id is valid hex of a hash's length: this cannot fail.
        gix::ObjectId::from_hex(self.0.as_bytes())
            .unwrap_or_else(|_| gix::ObjectId::null(gix::hash::Kind::Sha1))
    }

    /// The first 12 digits, as people quote commits.
    pub fn short(&self) -> &str {
        &self.0[..12]
    }
}

impl From<gix::ObjectId> for CommitId {
    fn from(id: gix::ObjectId) -> CommitId {
        CommitId(id.to_hex().to_string())
    }
}

impl Deref for CommitId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for CommitId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl AsRef<std::ffi::OsStr> for CommitId {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_ref()
    }
}

impl AsRef<std::path::Path> for CommitId {
    fn as_ref(&self) -> &std::path::Path {
        self.0.as_ref()
    }
}

impl fmt::Display for CommitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for CommitId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for CommitId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<String> for CommitId {
    fn eq(&self, other: &String) -> bool {
        &self.0 == other
    }
}

impl PartialEq<&CommitId> for CommitId {
    fn eq(&self, other: &&CommitId) -> bool {
        self == *other
    }
}

impl PartialEq<CommitId> for &CommitId {
    fn eq(&self, other: &CommitId) -> bool {
        *self == other
    }
}

impl PartialEq<CommitId> for String {
    fn eq(&self, other: &CommitId) -> bool {
        *self == other.0
    }
}

impl PartialEq<CommitId> for str {
    fn eq(&self, other: &CommitId) -> bool {
        self == other.0
    }
}

impl<'de> Deserialize<'de> for CommitId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<CommitId, D::Error> {
        let text = String::deserialize(deserializer)?;
        CommitId::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_full_lower_case_id_is_a_commit_id() {
        let sha1 = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(CommitId::parse(sha1).unwrap().as_str(), sha1);
        assert!(CommitId::is_valid(&"a".repeat(64)));
        for bad in [
            "",
            "../../etc",
            &sha1[..39],
            &sha1.to_uppercase(),
            &format!("{sha1}0"),
            &format!("{}/", &sha1[..39]),
            "0123456789abcdef0123456789abcdef0123456g",
        ] {
            assert!(CommitId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_record_naming_no_commit_does_not_deserialize() {
        let ok: Result<CommitId, _> =
            serde_json::from_str("\"0123456789abcdef0123456789abcdef01234567\"");
        assert!(ok.is_ok());
        let bad: Result<CommitId, _> = serde_json::from_str("\"../outside\"");
        let error = bad.unwrap_err().to_string();
        assert!(error.contains("not a full commit id"), "{error}");
    }

    #[test]
    fn it_round_trips_through_gix() {
        let id = gix::ObjectId::from_hex(b"0123456789abcdef0123456789abcdef01234567").unwrap();
        let commit = CommitId::from(id);
        assert_eq!(commit.object_id(), id);
        assert_eq!(commit.short(), "0123456789ab");
    }
}
