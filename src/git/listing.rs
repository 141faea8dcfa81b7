//! An idle poll over HTTP: the last `ls-refs` request asked again, on the calling thread.
//!
//! A conversation's `ls-refs` exchange is kept ([`Listing`], recorded by `git::http`). At the
//! next poll the same request goes to the server again, and if its answer is the same, byte for
//! byte, the remote's refs are where they were: whatever gix concluded from the last answer
//! holds. Nothing else is compared, so a wrong reading here can only make an answer look
//! different, which costs the poll its usual conversation and nothing more.
//!
//! [`Relister`] makes that request itself: HTTP/1.1 over a connection of its own (TLS with
//! rustls for `https://`), kept open between polls. gix's reqwest backend would carry it
//! through two threads (its worker and reqwest's runtime), and the trips between threads cost
//! more than the request. It is used only where it makes the same request reqwest would:
//! not through a proxy (an idle poll through one has its conversation; see
//! [`super::access::proxy_for`]), with the same trust roots and timeout.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;

/// An `ls-refs` request as it was sent, and the server's whole answer to it.
pub(super) struct Listing {
    pub(super) url: String,
    pub(super) headers: reqwest::header::HeaderMap,
    pub(super) body: Vec<u8>,
    pub(super) answer: Vec<u8>,
}

/// What the request needs besides the listing: dagsnap's `--http-timeout` and `--ca-file`.
pub(super) struct Settings<'a> {
    pub(super) timeout: Duration,
    pub(super) ca_file: Option<&'a Path>,
}

/// The largest `ls-refs` answer kept whole. One ref's line is under 100 bytes; a listing of all
/// of a large repository's refs (a short `--ref` is looked up once that way) is passed on as it
/// is read instead.
pub(super) const LISTING_LIMIT: usize = 256 * 1024;

/// What the server said when the listing was asked again.
pub(super) enum Asked {
    /// The same answer, byte for byte.
    Same,
    /// Another answer; when it is a complete success, its headers (as `name:value` lines) and
    /// body: the answer the conversation that follows would get, so it need not ask again.
    Differs(Option<Answer>),
}

/// A successful answer, whole.
pub(super) struct Answer {
    pub(super) headers: Vec<u8>,
    pub(super) body: Vec<u8>,
}

/// Why [`Relister::ask`] did not ask: the poll has its conversation instead.
#[derive(Debug)]
pub(super) struct NotHere(pub(super) String);

/// The connection for asking listings again, kept between polls, and its TLS settings.
#[derive(Default)]
pub(super) struct Relister {
    connection: Option<Connection>,
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// An open connection, and where it goes (`scheme://host:port`).
struct Connection {
    origin: String,
    stream: BufReader<Stream>,
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

/// The longest response head read: a git server's is a few hundred bytes.
const HEAD_LIMIT: usize = 64 * 1024;
/// gix's HTTP backend gives a connection 20 s to be made.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

impl Relister {
    /// Send `listing`'s request again: whether the answer is a success with the same body, and
    /// if it is another success, that answer.
    ///
    /// 1. Parse the URL; a URL a proxy applies to is not asked here.
    /// 2. Reuse the open connection if it goes to the same origin, else connect (TLS for
    ///    `https://`, verified against the system's roots and the configured CA files).
    /// 3. Write the request whole: the recorded headers, `Host`, `Content-Length`, the body.
    /// 4. Read the response's head; anything but a 2xx status is an answer that differs.
    /// 5. Read its body (by `Content-Length`, chunked, or to the end) up to [`LISTING_LIMIT`],
    ///    and compare. The connection is kept only if the body was read to its end and the
    ///    server did not ask to close it.
    ///
    /// A reused connection that fails before any of the response is read was closed by the
    /// server while idle: the request is made once more on a new one. Any other failure (no
    /// connection, a TLS error, an answer cut short) is an answer that differs: the poll's
    /// conversation follows and, if the failure is real, says what it is as it always did.
    pub(super) fn ask(
        &mut self,
        listing: &Listing,
        settings: &Settings,
        ca_info: Option<&Path>,
    ) -> Result<Asked, NotHere> {
        if super::access::proxy_for(&listing.url).is_some() {
            return Err(NotHere("a proxy applies".into()));
        }
        let target = Target::parse(&listing.url)?;
        let tls = match target.https {
            true => Some(self.tls(settings, ca_info)?),
            false => None,
        };
        let request = target.request(listing);
        let reused = self
            .connection
            .as_ref()
            .is_some_and(|c| c.origin == target.origin);
        if !reused {
            self.connection = None;
        }
        for attempt in 0..2 {
            let mut connection = match self.connection.take() {
                Some(connection) => connection,
                None => match connect(&target, tls.as_ref(), settings.timeout) {
                    Ok(connection) => connection,
                    Err(error) => {
                        tracing::debug!(%error, url = %target.origin, "the refs could not be listed again");
                        return Ok(Asked::Differs(None));
                    }
                },
            };
            match exchange(&mut connection, &request, &listing.answer) {
                Ok(Exchanged { asked, keep }) => {
                    if keep {
                        self.connection = Some(connection);
                    }
                    return Ok(asked);
                }
                Err(Failure::BeforeAnswer(error)) if attempt == 0 && reused => {
                    tracing::trace!(%error, "the kept connection was closed; connecting again");
                }
                Err(Failure::BeforeAnswer(error) | Failure::InAnswer(error)) => {
                    tracing::debug!(%error, url = %target.origin, "the refs could not be listed again");
                    return Ok(Asked::Differs(None));
                }
            }
        }
        Ok(Asked::Differs(None))
    }

    /// The TLS settings of every `https://` connection: built once (again after
    /// `SharedHttp::start_over`), trusting `--ca-file` and `http.sslCAInfo` (`ca_info`) beside
    /// the system's roots.
    fn tls(
        &mut self,
        settings: &Settings,
        ca_info: Option<&Path>,
    ) -> Result<Arc<rustls::ClientConfig>, NotHere> {
        if let Some(config) = &self.tls {
            return Ok(Arc::clone(config));
        }
        let config = tls_config(settings.ca_file, ca_info)?;
        self.tls = Some(Arc::clone(&config));
        Ok(config)
    }
}

/// Connect to `target`, over TLS when `tls` is given.
fn connect(
    target: &Target,
    tls: Option<&Arc<rustls::ClientConfig>>,
    timeout: Duration,
) -> io::Result<Connection> {
    let tcp = connect_tcp(&target.host, target.port, timeout)?;
    let stream = match tls {
        Some(config) => {
            let name = ServerName::try_from(target.host.trim_matches(['[', ']']).to_owned())
                .map_err(io::Error::other)?;
            let session = rustls::ClientConnection::new(Arc::clone(config), name)
                .map_err(io::Error::other)?;
            Stream::Tls(Box::new(rustls::StreamOwned::new(session, tcp)))
        }
        None => Stream::Plain(tcp),
    };
    Ok(Connection {
        origin: target.origin.clone(),
        stream: BufReader::with_capacity(16 * 1024, stream),
    })
}

/// Where a listing's request goes.
struct Target {
    https: bool,
    /// As it goes in `Host` and in a TLS server name (an IPv6 address in brackets).
    host: String,
    port: u16,
    /// `Host`'s value: the host, and the port unless it is the scheme's.
    authority: String,
    origin: String,
    /// Path and query.
    path: String,
}

impl Target {
    fn parse(url: &str) -> Result<Target, NotHere> {
        let parsed = reqwest::Url::parse(url).map_err(|e| NotHere(e.to_string()))?;
        let https = match parsed.scheme() {
            "https" => true,
            "http" => false,
            other => return Err(NotHere(format!("not HTTP: {other}"))),
        };
        let host = parsed
            .host_str()
            .ok_or_else(|| NotHere("no host".into()))?
            .to_owned();
        let port = parsed
            .port_or_known_default()
            .ok_or_else(|| NotHere("no port".into()))?;
        let authority = match parsed.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.clone(),
        };
        let mut path = parsed.path().to_owned();
        if let Some(query) = parsed.query() {
            path.push('?');
            path.push_str(query);
        }
        Ok(Target {
            origin: format!("{}://{host}:{port}", parsed.scheme()),
            https,
            host,
            port,
            authority,
            path,
        })
    }

    /// The request, whole.
    fn request(&self, listing: &Listing) -> Vec<u8> {
        let mut out = Vec::with_capacity(512 + listing.body.len());
        out.extend_from_slice(format!("POST {} HTTP/1.1\r\n", self.path).as_bytes());
        out.extend_from_slice(format!("Host: {}\r\n", self.authority).as_bytes());
        for (name, value) in &listing.headers {
            // Framing is this request's own.
            if matches!(
                name.as_str(),
                "host" | "content-length" | "transfer-encoding" | "connection"
            ) {
                continue;
            }
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", listing.body.len()).as_bytes());
        out.extend_from_slice(&listing.body);
        out
    }
}

fn connect_tcp(host: &str, port: u16, timeout: Duration) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the host has no address");
    for address in (host.trim_matches(['[', ']']), port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&address, CONNECT_TIMEOUT.min(timeout)) {
            Ok(stream) => {
                stream.set_read_timeout(Some(timeout))?;
                stream.set_write_timeout(Some(timeout))?;
                stream.set_nodelay(true)?;
                return Ok(stream);
            }
            Err(error) => last = error,
        }
    }
    Err(last)
}

/// The system's roots and the configured CA files, as the HTTP client trusts them
/// (`git::tls`).
fn tls_config(
    ca_file: Option<&Path>,
    ca_info: Option<&Path>,
) -> Result<Arc<rustls::ClientConfig>, NotHere> {
    let files: Vec<PathBuf> = ca_file
        .into_iter()
        .chain(ca_info)
        .map(Path::to_path_buf)
        .collect();
    super::tls::client_config(&files)
        .map(Arc::new)
        .map_err(|e| NotHere(e.to_string()))
}

/// How an exchange ended.
struct Exchanged {
    asked: Asked,
    /// The connection can carry the next request.
    keep: bool,
}

enum Failure {
    /// Nothing of the response was read: a kept connection the server had closed.
    BeforeAnswer(io::Error),
    InAnswer(io::Error),
}

fn exchange(
    connection: &mut Connection,
    request: &[u8],
    expected: &[u8],
) -> Result<Exchanged, Failure> {
    let stream = connection.stream.get_mut();
    stream
        .write_all(request)
        .and_then(|()| stream.flush())
        .map_err(Failure::BeforeAnswer)?;
    let head = read_head(&mut connection.stream)?;
    if !(200..300).contains(&head.status) {
        return Ok(Exchanged {
            asked: Asked::Differs(None),
            keep: false,
        });
    }
    let limit = LISTING_LIMIT + 1;
    let (body, complete) = match head.framing {
        Framing::Length(length) => {
            let mut body = Vec::with_capacity(length.min(limit));
            (&mut connection.stream)
                .take(length.min(limit) as u64)
                .read_to_end(&mut body)
                .map_err(Failure::InAnswer)?;
            if body.len() < length.min(limit) {
                return Err(Failure::InAnswer(io::ErrorKind::UnexpectedEof.into()));
            }
            let complete = body.len() == length;
            (body, complete)
        }
        Framing::Chunked => {
            read_chunked(&mut connection.stream, limit).map_err(Failure::InAnswer)?
        }
        Framing::ToEnd => {
            let mut body = Vec::new();
            (&mut connection.stream)
                .take(limit as u64)
                .read_to_end(&mut body)
                .map_err(Failure::InAnswer)?;
            // Shorter than the limit: the server closed the connection at the body's end.
            let complete = body.len() < limit;
            (body, complete)
        }
    };
    let asked = match complete {
        true if body == expected => Asked::Same,
        true => Asked::Differs(Some(Answer {
            headers: head.lines,
            body,
        })),
        false => Asked::Differs(None),
    };
    Ok(Exchanged {
        asked,
        keep: complete && !head.close,
    })
}

struct Head {
    status: u16,
    /// The headers as `name:value` lines (what gix reads from its backend).
    lines: Vec<u8>,
    framing: Framing,
    /// The server closes the connection after this response.
    close: bool,
}

enum Framing {
    Length(usize),
    Chunked,
    ToEnd,
}

fn read_head(stream: &mut impl BufRead) -> Result<Head, Failure> {
    let mut raw = Vec::new();
    loop {
        let before = raw.len();
        let read = stream.read_until(b'\n', &mut raw).map_err(if before == 0 {
            Failure::BeforeAnswer
        } else {
            Failure::InAnswer
        })?;
        if read == 0 {
            let error = io::Error::from(io::ErrorKind::UnexpectedEof);
            return Err(if before == 0 {
                Failure::BeforeAnswer(error)
            } else {
                Failure::InAnswer(error)
            });
        }
        if raw.ends_with(b"\r\n\r\n") || raw.ends_with(b"\n\n") {
            break;
        }
        if raw.len() > HEAD_LIMIT {
            return Err(Failure::InAnswer(io::Error::other(
                "response head too long",
            )));
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(&raw) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => {
            return Err(Failure::InAnswer(io::Error::other(
                "response head cut short",
            )))
        }
        Err(error) => return Err(Failure::InAnswer(io::Error::other(error))),
    }
    let status = response.code.unwrap_or(0);
    let mut close = response.version != Some(1);
    let mut length = None;
    let mut chunked = false;
    let mut lines = Vec::new();
    for header in response.headers.iter() {
        lines.extend_from_slice(header.name.to_ascii_lowercase().as_bytes());
        lines.push(b':');
        lines.extend_from_slice(header.value);
        lines.push(b'\n');
        let value = String::from_utf8_lossy(header.value).to_ascii_lowercase();
        if header.name.eq_ignore_ascii_case("content-length") {
            length = value.trim().parse::<usize>().ok();
            if length.is_none() {
                return Err(Failure::InAnswer(io::Error::other("bad Content-Length")));
            }
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.split(',').any(|coding| coding.trim() == "chunked");
        } else if header.name.eq_ignore_ascii_case("connection") {
            close |= value.split(',').any(|option| option.trim() == "close");
        }
    }
    let framing = match (chunked, length) {
        (true, _) => Framing::Chunked,
        (false, Some(length)) => Framing::Length(length),
        (false, None) => {
            close = true;
            Framing::ToEnd
        }
    };
    Ok(Head {
        status,
        lines,
        framing,
        close,
    })
}

/// A chunked body, up to `limit` bytes; whether it was read to its end (trailers included).
fn read_chunked(stream: &mut impl BufRead, limit: usize) -> io::Result<(Vec<u8>, bool)> {
    let mut body = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        stream.read_until(b'\n', &mut line)?;
        let text = std::str::from_utf8(&line).map_err(io::Error::other)?;
        let size = text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size, 16)
            .map_err(|_| io::Error::other(format!("bad chunk size {size:?}")))?;
        if size == 0 {
            break;
        }
        if body.len() + size > limit {
            return Ok((body, false));
        }
        let start = body.len();
        body.resize(start + size, 0);
        stream.read_exact(&mut body[start..])?;
        line.clear();
        stream.read_until(b'\n', &mut line)?;
        if line != b"\r\n" && line != b"\n" {
            return Err(io::Error::other("chunk not followed by its line end"));
        }
    }
    // Trailers, up to the empty line that ends the body.
    loop {
        line.clear();
        if stream.read_until(b'\n', &mut line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if line == b"\r\n" || line == b"\n" {
            return Ok((body, true));
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(tcp) => tcp.read(buf),
            Stream::Tls(tls) => tls.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(tcp) => tcp.write(buf),
            Stream::Tls(tls) => tls.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(tcp) => tcp.flush(),
            Stream::Tls(tls) => tls.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> Result<Head, Failure> {
        read_head(&mut io::Cursor::new(raw.as_bytes()))
    }

    #[test]
    fn a_response_head_says_how_its_body_ends_and_whether_the_connection_stays() {
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nbody")
            .ok()
            .unwrap();
        assert!(matches!(h.framing, Framing::Length(12)) && !h.close && h.status == 200);
        let h = head(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\nConnection: keep-alive\r\n\r\n",
        )
        .ok()
        .unwrap();
        assert!(matches!(h.framing, Framing::Chunked) && !h.close);
        // Neither: the body ends with the connection.
        let h = head("HTTP/1.1 200 OK\r\nContent-Type: x\r\n\r\n")
            .ok()
            .unwrap();
        assert!(matches!(h.framing, Framing::ToEnd) && h.close);
        let h = head("HTTP/1.1 401 Unauthorized\r\nConnection: Close\r\nContent-Length: 0\r\n\r\n")
            .ok()
            .unwrap();
        assert!(h.status == 401 && h.close);
        let h = head("HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\n")
            .ok()
            .unwrap();
        assert!(h.close, "HTTP/1.0 closes unless it says otherwise");
    }

    #[test]
    fn a_response_head_that_cannot_be_read_is_a_failure_and_says_when() {
        // Nothing at all: a kept connection the server had closed (worth one more try).
        assert!(matches!(head(""), Err(Failure::BeforeAnswer(_))));
        assert!(matches!(
            head("HTTP/1.1 200 OK\r\nContent-"),
            Err(Failure::InAnswer(_))
        ));
        assert!(matches!(
            head("HTTP/1.1 200 OK\r\nContent-Length: twelve\r\n\r\n"),
            Err(Failure::InAnswer(_))
        ));
        assert!(matches!(
            head("SSH-2.0-OpenSSH\r\n\r\n"),
            Err(Failure::InAnswer(_))
        ));
    }

    #[test]
    fn a_chunked_body_is_read_to_its_end_or_up_to_the_limit() {
        let body = "4;ext=1\r\n0014\r\n5\r\nls-re\r\n0\r\nTrailer: x\r\n\r\n";
        let (read, complete) = read_chunked(&mut io::Cursor::new(body.as_bytes()), 100).unwrap();
        assert_eq!((read.as_slice(), complete), (&b"0014ls-re"[..], true));
        // More than the limit: not read on (the answer differs already).
        let (_, complete) = read_chunked(&mut io::Cursor::new(body.as_bytes()), 6).unwrap();
        assert!(!complete);
        for bad in [
            "zz\r\nabc\r\n0\r\n\r\n",
            "3\r\nabcdef\r\n0\r\n\r\n",
            "3\r\nabc\r\n0\r\n",
        ] {
            assert!(
                read_chunked(&mut io::Cursor::new(bad.as_bytes()), 100).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_request_goes_to_the_url_s_host_with_its_own_framing() {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("git-protocol", "version=2".parse().unwrap());
        headers.insert("content-length", "999".parse().unwrap());
        let listing = Listing {
            url: "https://git.example:8443/team/dags.git/git-upload-pack?x=1".into(),
            headers,
            body: b"0014command=ls-refs\n0000".to_vec(),
            answer: Vec::new(),
        };
        let target = Target::parse(&listing.url).ok().unwrap();
        assert!(target.https);
        assert_eq!(target.origin, "https://git.example:8443");
        let request = String::from_utf8(target.request(&listing)).unwrap();
        assert_eq!(
            request,
            "POST /team/dags.git/git-upload-pack?x=1 HTTP/1.1\r\nHost: git.example:8443\r\n\
             git-protocol: version=2\r\nContent-Length: 24\r\n\r\n0014command=ls-refs\n0000"
        );
        // The scheme's own port is not named; IPv6 hosts keep their brackets in Host.
        let target = Target::parse("https://[::1]/dags.git").ok().unwrap();
        assert_eq!((target.authority.as_str(), target.port), ("[::1]", 443));
        assert!(Target::parse("ssh://git@host/dags.git").is_err());
    }
}
