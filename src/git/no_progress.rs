//! `no-progress` added to each protocol v2 fetch request on its way out.
//!
//! git's `upload-pack` reports its progress ("Counting objects: 11% (1/9)\r", ...) to the client
//! unless the fetch request says `no-progress`; git's own CLI says it whenever its stderr is not
//! a terminal. gix never does, and nothing reads those messages here: for a one-file update they
//! weigh about 700 bytes, as much as the change itself.

use std::io::{self, Write};

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
    pub(super) fn new(inner: W) -> NoProgress<W> {
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
pub(super) mod tests {
    use super::*;

    fn pkt(line: &str) -> Vec<u8> {
        let mut out = format!("{:04x}", line.len() + 4).into_bytes();
        out.extend_from_slice(line.as_bytes());
        out
    }

    pub(in crate::git) fn request(lines: &[&str]) -> Vec<u8> {
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
