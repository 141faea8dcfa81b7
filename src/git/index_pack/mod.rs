//! A pack from the server into the cache without holding any object whole: dagsnap's own
//! `git index-pack`. gix's indexer keeps each entry's compressed bytes and each base object's
//! content in memory while it hashes them, so a 1 GiB file cost a publisher 1 GiB; here a whole
//! object is inflated a piece at a time and hashed on the way, whatever its size, and only the
//! bases of deltas (which git makes of files under its `core.bigFileThreshold`, 512 MiB) are
//! ever read whole.
//!
//! [`receive`]:
//! 1. Copy the pack into a temporary file in `objects/pack`, parsing it on the way: each
//!    entry's header, the CRC-32 of its bytes, its content inflated and, for a whole object,
//!    hashed. The pack's own SHA-1 is computed as it comes.
//! 2. Check the pack's trailer against that SHA-1.
//! 3. Resolve the deltas from the file: each base read once, its deltas applied, their ids
//!    hashed, depth first.
//! 4. Complete a thin pack: the cache's objects that its deltas name are appended to it (git's
//!    `index-pack --fix-thin`), and its header and trailer are written anew.
//! 5. Write the index (version 2), make pack and index durable, and name them: the pack first,
//!    the index last (a pack without an index is ignored by readers, an index without its pack
//!    is an error).
//!
//! `resolve.rs` holds step 3, `write.rs` steps 4 and 5.

mod resolve;
mod write;

use resolve::resolve;
use write::{complete_thin, write_index};

use std::fs::File;
use std::io::{self, BufRead, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use gix::odb::pack::data::{self, entry::Header};
use gix::ObjectId;

/// How the names of the pack and index being written start, until they are named for good.
pub(crate) const TEMPORARY: &str = "tmp-dagsnap-";

/// The piece an object is inflated into and hashed from.
const CHUNK: usize = 256 << 10;

#[derive(Debug, thiserror::Error)]
pub(crate) enum IndexError {
    #[error("the pack is damaged: {0}")]
    Damaged(String),
    #[error("the pack ended before it was complete")]
    Read(#[source] io::Error),
    #[error("cannot write the pack into {}: {source}", dir.display())]
    Write {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("a delta of the pack names object {0}, which neither the pack nor the cache has")]
    MissingBase(ObjectId),
    #[error("interrupted")]
    Interrupted,
}

/// What one entry of the pack is.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Whole(gix::object::Kind),
    /// A delta against the entry at this offset.
    Ofs(u64),
    /// A delta against the object with this id.
    Ref(ObjectId),
}

#[derive(Debug)]
struct Entry {
    offset: u64,
    /// Where its compressed data starts, and where it ends (the next entry starts).
    data_offset: u64,
    end: u64,
    /// Its inflated size (a delta's: its instructions').
    size: u64,
    crc32: u32,
    kind: Kind,
    /// The object's kind and id, once known.
    object: Option<(gix::object::Kind, ObjectId)>,
}

/// The pack just written: where it is, and how many objects it holds.
pub(crate) struct Received {
    pub(crate) pack: PathBuf,
    pub(crate) objects: usize,
}

/// Receive the pack `input` into `pack_dir` of `repo`'s objects ([`self`] numbers the steps).
pub(crate) fn receive(
    input: &mut dyn BufRead,
    repo: &gix::Repository,
    interrupt: &AtomicBool,
) -> Result<Received, IndexError> {
    let dir = repo.objects.store_ref().path().join("pack");
    let write_error = |source: io::Error| IndexError::Write {
        dir: dir.clone(),
        source,
    };
    let temporary = tempfile::Builder::new()
        .prefix(TEMPORARY)
        .suffix(".pack")
        .tempfile_in(&dir)
        .map_err(write_error)?;
    let kind = repo.object_hash();
    // (1)
    let (mut entries, digest, file) = {
        let file = temporary.as_file().try_clone().map_err(write_error)?;
        let mut tee = Tee::new(input, BufWriter::with_capacity(CHUNK, file), kind);
        let entries = parse(&mut tee, kind, interrupt)?;
        let digest = tee
            .hasher
            .try_finalize()
            .map_err(|e| damaged(e.to_string()))?;
        // (2)
        let mut trailer = vec![0; kind.len_in_bytes()];
        tee.inner
            .read_exact(&mut trailer)
            .map_err(IndexError::Read)?;
        if trailer != digest.as_bytes() {
            return Err(damaged(format!(
                "its checksum says {}, its content hashes to {digest}",
                gix::hash::ObjectId::from_bytes_or_panic(&trailer)
            )));
        }
        if let Some(e) = tee.error.take() {
            return Err(write_error(e));
        }
        let file = tee
            .out
            .into_inner()
            .map_err(|e| write_error(e.into_error()))?;
        (entries, digest, file)
    };
    // (3)
    let external = resolve(&file, &mut entries, repo, kind, interrupt)?;
    // (4)
    let digest = if external.is_empty() {
        let end = file.metadata().map_err(write_error)?.len();
        file.write_all_at(digest.as_bytes(), end)
            .map_err(write_error)?;
        digest
    } else {
        complete_thin(&file, &mut entries, &external, repo, kind).map_err(write_error)?
    };
    // (5)
    let pack = dir.join(format!("pack-{digest}.pack"));
    let index = dir.join(format!("pack-{digest}.idx"));
    file.sync_all().map_err(write_error)?;
    temporary.persist(&pack).map_err(|e| write_error(e.error))?;
    write_index(&index, &entries, &digest, kind).map_err(write_error)?;
    Ok(Received {
        pack,
        objects: entries.len(),
    })
}

fn damaged(why: String) -> IndexError {
    IndexError::Damaged(why)
}

/// Step 1: every entry of the pack `tee` reads, its bytes copied to the file as they pass.
fn parse(
    tee: &mut Tee<'_>,
    kind: gix::hash::Kind,
    interrupt: &AtomicBool,
) -> Result<Vec<Entry>, IndexError> {
    let mut header = [0u8; 12];
    tee.read_exact(&mut header).map_err(IndexError::Read)?;
    let version = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    if &header[..4] != b"PACK" || !(2..=3).contains(&version) {
        return Err(damaged(
            "it does not start as a pack of version 2 or 3".into(),
        ));
    }
    let count = u32::from_be_bytes([header[8], header[9], header[10], header[11]]) as usize;
    let mut entries = Vec::with_capacity(count.min(1 << 20));
    let mut chunk = vec![0u8; CHUNK];
    for _ in 0..count {
        if interrupt.load(Ordering::Relaxed) {
            return Err(IndexError::Interrupted);
        }
        tee.crc = crc32fast::Hasher::new();
        let offset = tee.pos;
        let entry =
            data::Entry::from_read(tee, offset, kind.len_in_bytes()).map_err(IndexError::Read)?;
        let entry_kind = match entry.header {
            Header::Commit => Kind::Whole(gix::object::Kind::Commit),
            Header::Tree => Kind::Whole(gix::object::Kind::Tree),
            Header::Blob => Kind::Whole(gix::object::Kind::Blob),
            Header::Tag => Kind::Whole(gix::object::Kind::Tag),
            Header::OfsDelta { base_distance } => match offset.checked_sub(base_distance) {
                Some(base) if base_distance > 0 => Kind::Ofs(base),
                _ => {
                    return Err(damaged(format!(
                        "the delta at {offset} names a base before the pack"
                    )))
                }
            },
            Header::RefDelta { base_id } => Kind::Ref(base_id),
        };
        let data_offset = tee.pos;
        let object = match entry_kind {
            Kind::Whole(object_kind) => {
                let mut hasher = gix::hash::hasher(kind);
                hasher.update(&gix::objs::encode::loose_header(
                    object_kind,
                    entry.decompressed_size,
                ));
                inflate(
                    tee,
                    entry.decompressed_size,
                    &mut chunk,
                    interrupt,
                    &mut |piece| hasher.update(piece),
                )?;
                let id = hasher.try_finalize().map_err(|e| damaged(e.to_string()))?;
                Some((object_kind, id))
            }
            _ => {
                inflate(
                    tee,
                    entry.decompressed_size,
                    &mut chunk,
                    interrupt,
                    &mut |_| {},
                )?;
                None
            }
        };
        entries.push(Entry {
            offset,
            data_offset,
            end: tee.pos,
            size: entry.decompressed_size,
            crc32: tee.crc.clone().finalize(),
            kind: entry_kind,
            object,
        });
    }
    Ok(entries)
}

/// Inflate one zlib stream of `size` bytes from `input`, handing it to `sink` a piece at a
/// time, and read the stream to its end (its checksum), so that the next entry starts where
/// `input` then is.
fn inflate(
    input: &mut dyn BufRead,
    size: u64,
    chunk: &mut [u8],
    interrupt: &AtomicBool,
    sink: &mut dyn FnMut(&[u8]),
) -> Result<(), IndexError> {
    use gix::zlib::{Decompress, FlushDecompress, Status};
    let mut state = Decompress::new();
    let mut total = 0u64;
    loop {
        // A large object takes a while: a stop does not wait for its end.
        if interrupt.load(Ordering::Relaxed) {
            return Err(IndexError::Interrupted);
        }
        let buffer = input.fill_buf().map_err(IndexError::Read)?;
        let eof = buffer.is_empty();
        let (in_before, out_before) = (state.total_in(), state.total_out());
        let flush = if eof {
            FlushDecompress::Finish
        } else {
            FlushDecompress::None
        };
        let status = state
            .decompress(buffer, chunk, flush)
            .map_err(|e| damaged(format!("an entry does not inflate: {e}")))?;
        let consumed = (state.total_in() - in_before) as usize;
        let written = (state.total_out() - out_before) as usize;
        total += written as u64;
        if total > size {
            return Err(damaged(format!(
                "an entry inflates to more than its {size} bytes"
            )));
        }
        sink(&chunk[..written]);
        input.consume(consumed);
        match status {
            Status::StreamEnd => break,
            _ if eof => {
                return Err(IndexError::Read(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "early eof",
                )))
            }
            _ if consumed == 0 && written == 0 => {
                return Err(damaged("an entry's stream makes no progress".into()))
            }
            _ => {}
        }
    }
    if total != size {
        return Err(damaged(format!(
            "an entry inflates to {total} bytes, not {size}"
        )));
    }
    Ok(())
}

/// The pack as it comes: what is consumed of `inner` is written to `out`, hashed into the
/// pack's checksum and into the current entry's CRC-32, and counted.
struct Tee<'a> {
    inner: &'a mut dyn BufRead,
    out: BufWriter<File>,
    hasher: gix::hash::Hasher,
    crc: crc32fast::Hasher,
    pos: u64,
    /// The first write that failed (`consume` cannot return it).
    error: Option<io::Error>,
}

impl<'a> Tee<'a> {
    fn new(inner: &'a mut dyn BufRead, out: BufWriter<File>, kind: gix::hash::Kind) -> Tee<'a> {
        Tee {
            inner,
            out,
            hasher: gix::hash::hasher(kind),
            crc: crc32fast::Hasher::new(),
            pos: 0,
            error: None,
        }
    }
}

impl Read for Tee<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for Tee<'_> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, amount: usize) {
        let Tee {
            inner,
            out,
            hasher,
            crc,
            pos,
            error,
        } = self;
        if let Ok(buffer) = inner.fill_buf() {
            let seen = &buffer[..amount.min(buffer.len())];
            hasher.update(seen);
            crc.update(seen);
            if error.is_none() {
                if let Err(e) = out.write_all(seen) {
                    *error = Some(e);
                }
            }
        }
        *pos += amount as u64;
        inner.consume(amount);
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::process::{Command, Stdio};
    use std::sync::atomic::AtomicBool;

    use super::receive;

    fn git(dir: &Path, args: &[&str]) -> Vec<u8> {
        let out = Command::new("git")
            .current_dir(dir)
            .args(args)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// A repository of five commits of 100 similar files: packs full of deltas.
    fn history(dir: &Path) {
        git(dir, &["init", "-q", "-b", "main"]);
        for round in 0..5 {
            for i in 0..100 {
                let lines: String = (0..60)
                    .map(|l| {
                        format!(
                            "line {l} of file {i}{}\n",
                            if l == round * 7 { " changed" } else { "" }
                        )
                    })
                    .collect();
                std::fs::write(dir.join(format!("f{i}.txt")), lines).unwrap();
            }
            git(dir, &["add", "-A"]);
            git(
                dir,
                &[
                    "-c",
                    "user.name=t",
                    "-c",
                    "user.email=t@t",
                    "commit",
                    "-q",
                    "-m",
                    &format!("c{round}"),
                ],
            );
        }
    }

    fn pack_of(dir: &Path, revs: &str, thin: bool) -> Vec<u8> {
        let mut args = vec![
            "pack-objects",
            "--stdout",
            "-q",
            "--revs",
            "--delta-base-offset",
        ];
        if thin {
            args.push("--thin");
        }
        let mut child = Command::new("git")
            .current_dir(dir)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(revs.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        out.stdout
    }

    #[test]
    fn the_index_of_a_pack_is_the_one_git_index_pack_writes() {
        let tmp = tempfile::tempdir().unwrap();
        let source = tmp.path().join("source");
        std::fs::create_dir(&source).unwrap();
        history(&source);
        let pack = pack_of(&source, "main\n", false);
        let cache = tmp.path().join("cache.git");
        gix::init_bare(&cache).unwrap();
        let repo = gix::open(&cache).unwrap();
        let received = receive(&mut &pack[..], &repo, &AtomicBool::new(false)).unwrap();
        assert!(received.objects > 500);
        // git's own index of the very same pack, byte for byte.
        let copy = tmp.path().join("copy.pack");
        std::fs::write(&copy, &pack).unwrap();
        git(tmp.path(), &["index-pack", "copy.pack"]);
        assert_eq!(
            std::fs::read(received.pack.with_extension("idx")).unwrap(),
            std::fs::read(tmp.path().join("copy.idx")).unwrap()
        );
        assert_eq!(std::fs::read(&received.pack).unwrap(), pack);
    }

    #[test]
    fn a_thin_pack_is_completed_from_the_cache() {
        let tmp = tempfile::tempdir().unwrap();
        let source = tmp.path().join("source");
        std::fs::create_dir(&source).unwrap();
        history(&source);
        let cache = tmp.path().join("cache.git");
        gix::init_bare(&cache).unwrap();
        let repo = gix::open(&cache).unwrap();
        let first = pack_of(&source, "main~1\n", false);
        receive(&mut &first[..], &repo, &AtomicBool::new(false)).unwrap();
        let thin = pack_of(&source, "main\n^main~1\n", true);
        let repo = gix::open(&cache).unwrap();
        let received = receive(&mut &thin[..], &repo, &AtomicBool::new(false)).unwrap();
        let sent = u32::from_be_bytes([thin[8], thin[9], thin[10], thin[11]]) as usize;
        assert!(
            received.objects > sent,
            "no base was appended: {sent} objects sent"
        );
        let head = String::from_utf8(git(&source, &["rev-parse", "main"])).unwrap();
        git(&cache, &["update-ref", "refs/heads/main", head.trim()]);
        git(&cache, &["fsck", "--full", "--strict"]);
        for idx in std::fs::read_dir(cache.join("objects/pack")).unwrap() {
            let path = idx.unwrap().path();
            if path.extension().is_some_and(|x| x == "idx") {
                git(tmp.path(), &["verify-pack", &path.display().to_string()]);
            }
        }
    }

    #[test]
    fn a_damaged_pack_is_refused_and_leaves_nothing_behind() {
        let tmp = tempfile::tempdir().unwrap();
        let source = tmp.path().join("source");
        std::fs::create_dir(&source).unwrap();
        history(&source);
        let mut pack = pack_of(&source, "main\n", false);
        let middle = pack.len() / 2;
        pack[middle] ^= 0x40;
        let cache = tmp.path().join("cache.git");
        gix::init_bare(&cache).unwrap();
        let repo = gix::open(&cache).unwrap();
        assert!(receive(&mut &pack[..], &repo, &AtomicBool::new(false)).is_err());
        let cut = &pack[..pack.len() - 100];
        assert!(receive(&mut &cut[..], &repo, &AtomicBool::new(false)).is_err());
        let left = std::fs::read_dir(cache.join("objects/pack"))
            .unwrap()
            .count();
        assert_eq!(left, 0, "a temporary file was left behind");
    }
}
