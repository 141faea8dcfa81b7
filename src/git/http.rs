//! The HTTP side of a conversation with the remote: one client per cache, lent to each
//! conversation's transport; the server's capability advertisement reused for a minute; and
//! fetch requests that ask for no progress messages.
//!
//! Each poll is a conversation, and over HTTP a conversation starts with
//! `GET info/refs?service=git-upload-pack`: protocol v2's capability advertisement, which says
//! what the server can do and nothing about its refs (those come from the `ls-refs` request
//! that follows). It is the same for every poll, so [`SharedHttp`] keeps the last complete one
//! and answers the next handshakes from it for [`ADVERTISEMENT_TTL`]: an idle poll is then one
//! request instead of two. Protocol v2 requests are self-contained (the server keeps no state
//! between them), so a reused advertisement is exactly what a fresh one would say unless the
//! server's capabilities change; it is asked again after a minute, after any failed
//! conversation, and whenever the request's headers (credentials included) differ. A protocol
//! v1 advertisement lists the refs, so it is never reused.
//!
//! git's `upload-pack` reports its progress ("Counting objects: 11% (1/9)\r", ...) to the client
//! unless the fetch request says `no-progress`; git's own CLI says it whenever its stderr is not
//! a terminal. gix never does, and nothing reads those messages here: for a one-file update they
//! weigh about 700 bytes, as much as the change itself. [`NoProgress`] adds the argument to each
//! fetch request on its way out.

use std::io::{self, BufRead, Read, Write};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use gix::protocol::transport::client::blocking_io::http as gix_http;
use gix::protocol::transport::Protocol;
use gix_http::Http;

/// How long a server's capability advertisement is reused (see the module's documentation).
const ADVERTISEMENT_TTL: Duration = Duration::from_secs(60);

type Backend = gix_http::reqwest::Remote;
type BackendReader = <Backend as Http>::ResponseBody;

/// gix's reqwest HTTP backend (an HTTP client with its TLS roots and connection pool, on a
/// worker thread), kept for the life of the cache and lent to each conversation's transport:
/// a backend per conversation would build a client, start its threads and connect anew at
/// every poll. With it, the last capability advertisement.
#[derive(Clone, Default)]
pub(super) struct SharedHttp {
    backend: Arc<Mutex<Backend>>,
    advertisement: Arc<Mutex<Option<Advertisement>>>,
}

/// A complete capability advertisement, as the server sent it.
struct Advertisement {
    /// The URL and request headers it answered.
    request: String,
    headers: Arc<[u8]>,
    body: Arc<[u8]>,
    received: Instant,
}

impl SharedHttp {
    fn backend(&self) -> MutexGuard<'_, Backend> {
        lock(&self.backend)
    }

    /// A transport of its own for one conversation with `url`, over this client.
    pub(super) fn connect(
        &self,
        url: gix::url::Url,
        version: Protocol,
    ) -> gix_http::Transport<SharedHttp> {
        gix_http::connect_http(self.clone(), url, version, false)
    }

    /// Ask the server for its capabilities at the next handshake: a conversation failed, and
    /// a changed server is one reason it may have.
    pub(super) fn forget_advertisement(&self) {
        *lock(&self.advertisement) = None;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Http for SharedHttp {
    type Headers = Reader;
    type ResponseBody = Reader;
    type PostBody = NoProgress<<Backend as Http>::PostBody>;

    fn get(
        &mut self,
        url: &str,
        base_url: &str,
        headers: impl IntoIterator<Item = impl AsRef<str>>,
    ) -> gix::error::Result<gix_http::GetResponse<Self::Headers, Self::ResponseBody>> {
        let headers: Vec<String> = headers.into_iter().map(|h| h.as_ref().to_owned()).collect();
        if !url.ends_with("/info/refs?service=git-upload-pack") {
            let response = self.backend().get(url, base_url, &headers)?;
            return Ok(gix_http::GetResponse {
                headers: Reader::Live(response.headers),
                body: Reader::Live(response.body),
            });
        }
        let request = format!("{url}\n{}", headers.join("\n"));
        if let Some(cached) = lock(&self.advertisement)
            .as_ref()
            .filter(|a| a.request == request && a.received.elapsed() < ADVERTISEMENT_TTL)
        {
            return Ok(gix_http::GetResponse {
                headers: Reader::Replayed(io::Cursor::new(Arc::clone(&cached.headers))),
                body: Reader::Replayed(io::Cursor::new(Arc::clone(&cached.body))),
            });
        }
        let response = self.backend().get(url, base_url, &headers)?;
        let recording = Arc::new(Mutex::new(Recording {
            request,
            headers: Vec::new(),
            headers_complete: false,
            into: Arc::clone(&self.advertisement),
        }));
        Ok(gix_http::GetResponse {
            headers: Reader::Recorded {
                inner: response.headers,
                record: Record::Headers(Arc::clone(&recording)),
            },
            body: Reader::Recorded {
                inner: response.body,
                record: Record::Body(recording, Vec::new()),
            },
        })
    }

    fn post(
        &mut self,
        url: &str,
        base_url: &str,
        headers: impl IntoIterator<Item = impl AsRef<str>>,
        body: gix_http::PostBodyDataKind,
    ) -> gix::error::Result<gix_http::PostResponse<Self::Headers, Self::ResponseBody, Self::PostBody>>
    {
        let response = self.backend().post(url, base_url, headers, body)?;
        Ok(gix_http::PostResponse {
            post_body: NoProgress::new(response.post_body),
            headers: Reader::Live(response.headers),
            body: Reader::Live(response.body),
        })
    }

    fn configure(&mut self, config: &dyn std::any::Any) -> gix::error::Result {
        self.backend().configure(config)
    }

    fn redirected_base_url(&self) -> Option<String> {
        self.backend().redirected_base_url()
    }
}

/// A response's headers or body: from the server, recorded as it is read (an advertisement),
/// or replayed from a recorded advertisement.
pub(super) enum Reader {
    Live(BackendReader),
    Recorded {
        inner: BackendReader,
        record: Record,
    },
    Replayed(io::Cursor<Arc<[u8]>>),
}

/// Where a recorded reader's bytes go.
pub(super) enum Record {
    Headers(Arc<Mutex<Recording>>),
    /// The body's bytes, kept here until it is dropped.
    Body(Arc<Mutex<Recording>>, Vec<u8>),
}

/// An advertisement being received.
pub(super) struct Recording {
    request: String,
    headers: Vec<u8>,
    headers_complete: bool,
    into: Arc<Mutex<Option<Advertisement>>>,
}

impl Record {
    fn keep(&mut self, bytes: &[u8]) {
        match self {
            Record::Headers(recording) => lock(recording).headers.extend_from_slice(bytes),
            Record::Body(_, body) => body.extend_from_slice(bytes),
        }
    }

    fn at_end(&mut self) {
        if let Record::Headers(recording) = self {
            lock(recording).headers_complete = true;
        }
    }
}

impl Read for Reader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for Reader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        match self {
            Reader::Live(inner) => inner.fill_buf(),
            Reader::Replayed(cursor) => cursor.fill_buf(),
            Reader::Recorded { inner, record } => {
                let available = inner.fill_buf()?;
                if available.is_empty() {
                    record.at_end();
                }
                Ok(available)
            }
        }
    }

    fn consume(&mut self, amount: usize) {
        match self {
            Reader::Live(inner) => inner.consume(amount),
            Reader::Replayed(cursor) => cursor.consume(amount),
            Reader::Recorded { inner, record } => {
                // What is consumed is the start of the buffer the last `fill_buf` returned, which
                // asking again returns without reading.
                if let Ok(available) = inner.fill_buf() {
                    record.keep(&available[..amount.min(available.len())]);
                }
                inner.consume(amount);
            }
        }
    }
}

impl Drop for Record {
    /// The handshake has read what it needed of the body: keep the advertisement if it is a
    /// complete protocol v2 one.
    fn drop(&mut self) {
        let Record::Body(recording, body) = self else {
            return;
        };
        let recording = lock(recording);
        if recording.headers_complete && is_complete_v2_advertisement(body) {
            *lock(&recording.into) = Some(Advertisement {
                request: recording.request.clone(),
                headers: recording.headers.as_slice().into(),
                body: std::mem::take(body).into(),
                received: Instant::now(),
            });
        }
    }
}

/// Whether `body` is a protocol v2 capability advertisement that ends where it should: an
/// optional service announcement, `version 2`, capabilities, and the flush that ends them.
fn is_complete_v2_advertisement(body: &[u8]) -> bool {
    let mut rest = body;
    let mut lines = Vec::new();
    while rest.len() >= 4 {
        let Some(length) = std::str::from_utf8(&rest[..4])
            .ok()
            .and_then(|hex| usize::from_str_radix(hex, 16).ok())
        else {
            return false;
        };
        if length == 0 {
            lines.push(&b""[..]);
            rest = &rest[4..];
            continue;
        }
        if length < 4 || length > rest.len() {
            return false;
        }
        lines.push(&rest[4..length]);
        rest = &rest[length..];
    }
    if !rest.is_empty() {
        return false;
    }
    // The service announcement and its flush, when the server sends them.
    if lines.first().is_some_and(|l| l.starts_with(b"# service=")) {
        if lines.get(1) != Some(&&b""[..]) {
            return false;
        }
        lines.drain(..2);
    }
    lines.first() == Some(&&b"version 2\n"[..])
        && lines.last() == Some(&&b""[..])
        && lines.iter().filter(|l| l.is_empty()).count() == 1
}

/// The argument added to each protocol v2 fetch request, as a pkt-line.
const NO_PROGRESS: &[u8] = b"0010no-progress\n";
/// A v2 request's first pkt-line names its command; this one is a fetch.
const FETCH_COMMAND: &[u8] = b"command=fetch";

/// A request body that passes through what gix writes and, in a protocol v2 `fetch` request,
/// adds `no-progress` to the arguments, right after the delimiter that starts them.
///
/// gix writes pkt-lines in pieces of any size, so the body is followed as it goes by: a
/// 4-digit hex length, then that many bytes less four. Anything it cannot follow (another
/// protocol version's request, which starts differently) is passed through untouched.
pub(super) struct NoProgress<W> {
    inner: W,
    state: State,
    /// The length being read: up to 4 hex digits.
    length: Vec<u8>,
    /// The first pkt-line's payload, until it is known whether this is a fetch.
    first: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a length; `is_fetch` is unknown while the first line is read.
    Length { is_fetch: Option<bool> },
    /// Inside a payload with this many bytes left.
    Payload { left: usize, is_fetch: Option<bool> },
    /// Added, or nothing to add: the rest passes through.
    Done,
}

impl<W: Write> NoProgress<W> {
    fn new(inner: W) -> NoProgress<W> {
        NoProgress {
            inner,
            state: State::Length { is_fetch: None },
            length: Vec::with_capacity(4),
            first: Vec::new(),
        }
    }

    /// Follow one byte; whether `no-progress` goes right after it.
    fn follow(&mut self, byte: u8) -> bool {
        match self.state {
            State::Done => false,
            State::Length { is_fetch } => {
                self.length.push(byte);
                if self.length.len() < 4 {
                    return false;
                }
                let length = std::str::from_utf8(&self.length)
                    .ok()
                    .and_then(|hex| usize::from_str_radix(hex, 16).ok());
                self.length.clear();
                match (length, is_fetch) {
                    // The delimiter before a fetch's arguments.
                    (Some(1), Some(true)) => {
                        self.state = State::Done;
                        true
                    }
                    (Some(n), _) if n > 4 => {
                        self.state = State::Payload {
                            left: n - 4,
                            is_fetch,
                        };
                        false
                    }
                    // A flush before the arguments, an empty line, or not a pkt-line at all.
                    _ => {
                        self.state = State::Done;
                        false
                    }
                }
            }
            State::Payload { left, is_fetch } => {
                if is_fetch.is_none() {
                    self.first.push(byte);
                }
                let is_fetch = match (left, is_fetch) {
                    (1, None) => {
                        let line = self.first.strip_suffix(b"\n").unwrap_or(&self.first);
                        Some(line == FETCH_COMMAND)
                    }
                    (_, known) => known,
                };
                self.state = match (left, is_fetch) {
                    (1, Some(false)) => State::Done,
                    (1, is_fetch) => State::Length { is_fetch },
                    (left, is_fetch) => State::Payload {
                        left: left - 1,
                        is_fetch,
                    },
                };
                false
            }
        }
    }
}

impl<W: Write> Write for NoProgress<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.state == State::Done {
            return self.inner.write(buf);
        }
        for (at, byte) in buf.iter().enumerate() {
            if self.follow(*byte) {
                self.inner.write_all(&buf[..=at])?;
                self.inner.write_all(NO_PROGRESS)?;
                self.inner.write_all(&buf[at + 1..])?;
                return Ok(buf.len());
            }
        }
        self.inner.write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(line: &str) -> Vec<u8> {
        let mut out = format!("{:04x}", line.len() + 4).into_bytes();
        out.extend_from_slice(line.as_bytes());
        out
    }

    fn request(lines: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        for line in lines {
            match *line {
                "DELIM" => out.extend_from_slice(b"0001"),
                "FLUSH" => out.extend_from_slice(b"0000"),
                line => out.extend_from_slice(&pkt(line)),
            }
        }
        out
    }

    /// What `NoProgress` sends for `body` written in pieces of `piece` bytes.
    fn sent(body: &[u8], piece: usize) -> Vec<u8> {
        let mut writer = NoProgress::new(Vec::new());
        for chunk in body.chunks(piece) {
            writer.write_all(chunk).unwrap();
        }
        writer.inner
    }

    #[test]
    fn a_fetch_request_asks_for_no_progress_however_it_is_written() {
        let body = request(&[
            "command=fetch\n",
            "agent=git/dagsnap\n",
            "object-format=sha1\n",
            "DELIM",
            "thin-pack\n",
            "want 1111111111111111111111111111111111111111\n",
            "done\n",
            "FLUSH",
        ]);
        let expected = request(&[
            "command=fetch\n",
            "agent=git/dagsnap\n",
            "object-format=sha1\n",
            "DELIM",
            "no-progress\n",
            "thin-pack\n",
            "want 1111111111111111111111111111111111111111\n",
            "done\n",
            "FLUSH",
        ]);
        for piece in [1, 2, 3, 4, 5, 7, 16, body.len()] {
            assert_eq!(
                sent(&body, piece),
                expected,
                "written {piece} bytes at a time"
            );
        }
    }

    #[test]
    fn only_a_whole_v2_advertisement_is_kept() {
        let v2 = request(&[
            "version 2\n",
            "agent=git/2.47.3\n",
            "ls-refs=unborn\n",
            "FLUSH",
        ]);
        assert!(is_complete_v2_advertisement(&v2));
        let mut announced = request(&["# service=git-upload-pack\n", "FLUSH"]);
        announced.extend_from_slice(&v2);
        assert!(is_complete_v2_advertisement(&announced));
        // Cut short, without its flush, or with trailing bytes: not kept.
        assert!(!is_complete_v2_advertisement(&v2[..v2.len() - 4]));
        assert!(!is_complete_v2_advertisement(&v2[..10]));
        assert!(!is_complete_v2_advertisement(
            &[v2.as_slice(), b"00"].concat()
        ));
        // Protocol v1 lists the refs: never kept.
        let v1 = request(&[
            "# service=git-upload-pack\n",
            "FLUSH",
            "1111111111111111111111111111111111111111 HEAD\0multi_ack\n",
            "FLUSH",
        ]);
        assert!(!is_complete_v2_advertisement(&v1));
        assert!(!is_complete_v2_advertisement(b""));
        assert!(!is_complete_v2_advertisement(b"<html>401</html>"));
    }

    #[test]
    fn other_requests_pass_untouched() {
        let ls_refs = request(&[
            "command=ls-refs\n",
            "agent=git/dagsnap\n",
            "DELIM",
            "peel\n",
            "ref-prefix refs/heads/main\n",
            "FLUSH",
        ]);
        // Protocol v1's request starts with its wants, and has no delimiter.
        let v1 = request(&[
            "want 1111111111111111111111111111111111111111 thin-pack ofs-delta\n",
            "FLUSH",
            "done\n",
        ]);
        for body in [ls_refs, v1, b"not a pkt-line".to_vec(), Vec::new()] {
            for piece in [1, 3, 64] {
                assert_eq!(sent(&body, piece.max(1)), body);
            }
        }
    }
}
