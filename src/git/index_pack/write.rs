//! Steps 4 and 5 of [`super::receive`]: a thin pack completed, and the index written.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use gix::ObjectId;

use super::{Entry, Kind, CHUNK};

/// Reads a file from an offset on, without moving any shared position.
struct OffsetReader<'a> {
    file: &'a File,
    at: u64,
}

impl Read for OffsetReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

/// Append the cache's objects `external` to the pack as whole entries, count them in
/// its header, and write its trailer anew. Returns the new checksum.
pub(super) fn complete_thin(
    file: &File,
    entries: &mut Vec<Entry>,
    external: &[ObjectId],
    repo: &gix::Repository,
    kind: gix::hash::Kind,
) -> io::Result<ObjectId> {
    let mut end = file.metadata()?.len();
    for id in external {
        let object = repo
            .find_object(*id)
            .map_err(|e| io::Error::other(format!("object {id} of the cache: {e}")))?;
        let type_bits: u8 = match object.kind {
            gix::object::Kind::Commit => 1,
            gix::object::Kind::Tree => 2,
            gix::object::Kind::Blob => 3,
            gix::object::Kind::Tag => 4,
        };
        let mut bytes = entry_header(type_bits, object.data.len() as u64);
        let header_len = bytes.len() as u64;
        let mut deflate =
            gix::zlib::stream::deflate::Write::new(Vec::new(), gix::zlib::Compression::default());
        deflate.write_all(&object.data)?;
        deflate.flush()?;
        bytes.extend_from_slice(&deflate.into_inner());
        file.write_all_at(&bytes, end)?;
        entries.push(Entry {
            offset: end,
            data_offset: end + header_len,
            end: end + bytes.len() as u64,
            size: object.data.len() as u64,
            crc32: crc32fast::hash(&bytes),
            kind: Kind::Whole(object.kind),
            object: Some((object.kind, *id)),
        });
        end += bytes.len() as u64;
    }
    let count = u32::try_from(entries.len()).map_err(io::Error::other)?;
    file.write_all_at(&count.to_be_bytes(), 8)?;
    let mut hasher = gix::hash::hasher(kind);
    let mut reader = BufReader::with_capacity(CHUNK, OffsetReader { file, at: 0 });
    loop {
        let buffer = reader.fill_buf()?;
        if buffer.is_empty() {
            break;
        }
        let n = buffer.len();
        hasher.update(buffer);
        reader.consume(n);
    }
    let digest = hasher
        .try_finalize()
        .map_err(|e| io::Error::other(e.to_string()))?;
    file.write_all_at(digest.as_bytes(), end)?;
    Ok(digest)
}

/// A pack entry's header: its type and size, 4 bits then 7 a byte.
fn entry_header(type_bits: u8, mut size: u64) -> Vec<u8> {
    let mut first = (type_bits << 4) | (size & 0x0f) as u8;
    size >>= 4;
    let mut out = Vec::new();
    while size > 0 {
        out.push(first | 0x80);
        first = (size & 0x7f) as u8;
        size >>= 7;
    }
    out.push(first);
    out
}

/// The index of `entries` (version 2), written to a temporary file and renamed.
pub(super) fn write_index(
    path: &Path,
    entries: &[Entry],
    pack_digest: &ObjectId,
    kind: gix::hash::Kind,
) -> io::Result<()> {
    let mut sorted: Vec<(ObjectId, u32, u64)> = entries
        .iter()
        .filter_map(|e| e.object.map(|(_, id)| (id, e.crc32, e.offset)))
        .collect();
    sorted.sort_unstable_by_key(|entry| entry.0);
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut temporary = tempfile::Builder::new()
        .prefix(super::TEMPORARY)
        .suffix(".idx")
        .tempfile_in(dir)?;
    {
        let mut out = HashingWriter {
            inner: BufWriter::new(temporary.as_file_mut()),
            hasher: gix::hash::hasher(kind),
        };
        out.write_all(&[0xff, b't', b'O', b'c'])?;
        out.write_all(&2u32.to_be_bytes())?;
        let mut fanout = [0u32; 256];
        for (id, _, _) in &sorted {
            fanout[id.as_bytes()[0] as usize] += 1;
        }
        let mut running = 0u32;
        for count in fanout {
            running += count;
            out.write_all(&running.to_be_bytes())?;
        }
        for (id, _, _) in &sorted {
            out.write_all(id.as_bytes())?;
        }
        for (_, crc, _) in &sorted {
            out.write_all(&crc.to_be_bytes())?;
        }
        let mut large = Vec::new();
        for (_, _, offset) in &sorted {
            if *offset < 0x8000_0000 {
                out.write_all(&(*offset as u32).to_be_bytes())?;
            } else {
                out.write_all(&(0x8000_0000 | large.len() as u32).to_be_bytes())?;
                large.push(*offset);
            }
        }
        for offset in large {
            out.write_all(&offset.to_be_bytes())?;
        }
        out.write_all(pack_digest.as_bytes())?;
        let digest = out
            .hasher
            .try_finalize()
            .map_err(|e| io::Error::other(e.to_string()))?;
        out.inner.write_all(digest.as_bytes())?;
        out.inner.flush()?;
    }
    temporary.as_file().sync_all()?;
    temporary.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Writes through, hashing what it writes.
struct HashingWriter<W> {
    inner: W,
    hasher: gix::hash::Hasher,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
