//! A repository's objects as the content of a snapshot, read so that a publisher's memory does
//! not grow with the repository.
//!
//! Two things would make it grow, and both are handled here:
//!
//! - **Pack pages.** gix reads packs through memory maps, and the pages read stay in the
//!   process (see [`super::pages`]): a first publish reads every blob, so it would end up holding
//!   the whole pack. Reads hand them back every few milliseconds.
//! - **Large blobs.** Reading a blob gives its whole content in one buffer, and its compressed
//!   copy is mapped besides: a 200 MB file cost 400 MB. A blob of [`STREAM_FROM`] bytes or more
//!   that its pack holds whole (git never stores a large file as a delta of nothing, and rarely
//!   as a delta at all) is inflated from the pack file straight into the snapshot's file, a
//!   piece at a time, and its hash is checked on the way. Other blobs (deltas, loose objects)
//!   are read whole, as before.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::PathBuf;

use gix::odb::pack;

use super::error_chain;
use crate::entries::CopyError;

/// Blobs at least this large are streamed from their pack when it holds them whole.
const STREAM_FROM: u64 = 8 << 20;
/// The piece a streamed blob is inflated into and written from.
const STREAM_CHUNK: usize = 256 << 10;

/// A repository's objects, as the content of a snapshot.
#[derive(Clone)]
pub(crate) struct RepoBlobs {
    repo: gix::Repository,
}

impl RepoBlobs {
    pub(crate) fn new(repo: gix::Repository) -> RepoBlobs {
        RepoBlobs {
            repo: super::pages::keep_mapped(repo),
        }
    }

    /// Whether this repository has object `id`.
    pub(crate) fn has(&self, id: &gix::oid) -> bool {
        self.repo.has_object(id)
    }

    /// Stream blob `id` into `out` if it is large and stored whole in a pack: `Ok(None)` when it
    /// is not (the caller reads it whole).
    fn stream(&self, id: &gix::oid, out: &mut dyn Write) -> Result<Option<u64>, CopyError> {
        let header = match self.repo.find_header(id) {
            Ok(header) => header,
            Err(e) => return Err(CopyError::Read(error_chain(&e))),
        };
        match header {
            gix::odb::find::Header::Packed(found)
                if found.num_deltas == 0 && found.object_size >= STREAM_FROM => {}
            _ => return Ok(None),
        }
        let Some((pack_path, offset)) = self.locate(id) else {
            return Ok(None);
        };
        let read = |e: io::Error| CopyError::Read(format!("{}: {e}", pack_path.display()));
        let mut file = File::open(&pack_path).map_err(read)?;
        file.seek(SeekFrom::Start(offset)).map_err(read)?;
        let mut reader = BufReader::with_capacity(STREAM_CHUNK, file);
        let entry =
            pack::data::Entry::from_read(&mut reader, offset, id.as_bytes().len()).map_err(read)?;
        if !matches!(entry.header, pack::data::entry::Header::Blob) {
            return Ok(None);
        }
        let size = entry.decompressed_size;
        let copied = inflate_checked(id, size, &mut reader, out)?;
        super::pages::release_if_due();
        Ok(Some(copied))
    }

    /// The pack file holding `id` and the offset of its entry, from the packs' indices.
    fn locate(&self, id: &gix::oid) -> Option<(PathBuf, u64)> {
        let dir = self.repo.objects.store_ref().path().join("pack");
        let kind = self.repo.object_hash();
        for item in std::fs::read_dir(&dir).ok()?.flatten() {
            let path = item.path();
            if path.extension().is_none_or(|e| e != "idx") {
                continue;
            }
            let Ok(index) = pack::index::File::at(&path, kind) else {
                continue;
            };
            if let Some(at) = index.lookup(id) {
                return Some((path.with_extension("pack"), index.pack_offset_at_index(at)));
            }
        }
        None
    }
}

/// Inflate the `size` bytes of blob `id` from `reader` into `out`, checking that their hash is
/// `id`: a damaged pack is an error, never a wrong file in a snapshot.
fn inflate_checked(
    id: &gix::oid,
    size: u64,
    reader: &mut impl BufRead,
    out: &mut dyn Write,
) -> Result<u64, CopyError> {
    let damaged =
        |why: String| CopyError::Read(format!("the cache's copy of blob {id} is damaged ({why})"));
    let mut hasher = gix::hash::hasher(id.kind());
    hasher.update(format!("blob {size}\0").as_bytes());
    let mut state = gix::zlib::Decompress::new();
    let mut chunk = vec![0; STREAM_CHUNK];
    let mut copied = 0u64;
    while copied < size {
        let want = (size - copied).min(STREAM_CHUNK as u64) as usize;
        let n = gix::zlib::stream::inflate::read(reader, &mut state, &mut chunk[..want])
            .map_err(|e| damaged(e.to_string()))?;
        if n == 0 {
            return Err(damaged(format!("it ends after {copied} of {size} bytes")));
        }
        hasher.update(&chunk[..n]);
        out.write_all(&chunk[..n]).map_err(CopyError::Write)?;
        copied += n as u64;
    }
    match hasher.try_finalize() {
        Ok(actual) if actual.as_ref() == id => Ok(copied),
        Ok(actual) => Err(damaged(format!("its content hashes to {actual}"))),
        Err(e) => Err(damaged(e.to_string())),
    }
}

impl crate::entries::Blobs for RepoBlobs {
    fn read(&self, id: &gix::oid, buf: &mut Vec<u8>) -> Result<(), String> {
        use gix::objs::FindExt;
        let len = self
            .repo
            .objects
            .find_blob(id, buf)
            .map_err(|e| error_chain(&e))?
            .data
            .len();
        // The blob's data is the start of `buf`; drop what a larger earlier object left.
        buf.truncate(len);
        super::pages::release_if_due();
        Ok(())
    }

    fn copy(
        &self,
        id: &gix::oid,
        out: &mut dyn Write,
        buf: &mut Vec<u8>,
    ) -> Result<u64, CopyError> {
        if let Some(copied) = self.stream(id, out)? {
            return Ok(copied);
        }
        self.read(id, buf).map_err(CopyError::Read)?;
        out.write_all(buf).map_err(CopyError::Write)?;
        Ok(buf.len() as u64)
    }

    fn fork(&self) -> Box<dyn crate::entries::Blobs + Send> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entries::Blobs;
    use std::path::Path;
    use std::process::Command;

    fn git(dir: &Path, args: &[&str]) -> String {
        let out = Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.com")
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    /// Bytes zlib cannot shrink, so the blob's compressed copy is as large as it is.
    fn noise(len: usize) -> Vec<u8> {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    }

    #[test]
    fn a_large_blob_is_streamed_from_its_pack_and_a_damaged_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let content = noise(STREAM_FROM as usize + 123_457);
        std::fs::write(dir.path().join("model.bin"), &content).unwrap();
        git(dir.path(), &["init", "-q"]);
        git(dir.path(), &["add", "model.bin"]);
        git(dir.path(), &["commit", "-qm", "large"]);
        git(dir.path(), &["repack", "-adq"]);
        let id =
            gix::ObjectId::from_hex(git(dir.path(), &["rev-parse", "HEAD:model.bin"]).as_bytes())
                .unwrap();
        let blobs = RepoBlobs::new(gix::open(dir.path()).unwrap());
        assert!(blobs.locate(&id).is_some(), "the blob is in a pack");
        let mut out = Vec::new();
        let streamed = blobs.stream(&id, &mut out).unwrap();
        assert_eq!(
            streamed,
            Some(content.len() as u64),
            "streamed, not read whole"
        );
        assert!(out == content);

        // Damage the compressed data in the middle of the blob's entry.
        let (pack, offset) = blobs.locate(&id).unwrap();
        let mut bytes = std::fs::read(&pack).unwrap();
        let at = offset as usize + content.len() / 2;
        bytes[at] ^= 0x55;
        let mut perms = std::fs::metadata(&pack).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perms.set_readonly(false);
        std::fs::set_permissions(&pack, perms).unwrap();
        std::fs::write(&pack, &bytes).unwrap();
        let blobs = RepoBlobs::new(gix::open(dir.path()).unwrap());
        match blobs.copy(&id, &mut Vec::new(), &mut Vec::new()) {
            Err(CopyError::Read(why)) => assert!(why.contains("damaged"), "{why}"),
            other => panic!("a damaged blob was copied: {:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn small_blobs_and_deltas_are_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("dag.py"), b"print('hi')\n").unwrap();
        git(dir.path(), &["init", "-q"]);
        git(dir.path(), &["add", "dag.py"]);
        git(dir.path(), &["commit", "-qm", "small"]);
        let id = gix::ObjectId::from_hex(git(dir.path(), &["rev-parse", "HEAD:dag.py"]).as_bytes())
            .unwrap();
        let blobs = RepoBlobs::new(gix::open(dir.path()).unwrap());
        assert_eq!(blobs.stream(&id, &mut Vec::new()).unwrap(), None);
        let mut out = Vec::new();
        assert_eq!(blobs.copy(&id, &mut out, &mut Vec::new()).unwrap(), 12);
        assert_eq!(out, b"print('hi')\n");
    }
}
