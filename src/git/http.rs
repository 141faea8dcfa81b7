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
//! Fetch requests ask the server not to report its progress ([`NoProgress`], `git::no_progress`).
//!
//! gix's HTTP backend makes each request on a worker thread of its own and hands every piece
//! over through a channel that waits for the other side: each pkt-line of a request body, and
//! each header name, colon and value of the response, is a trip between two threads. For an
//! idle poll that is some fifty context switches, which cost more than everything else the
//! poll does. So [`SharedHttp`] makes a `POST` (ls-refs, fetch) itself, on the calling thread,
//! with a client built once from the same settings gix's would be built from (trust roots,
//! timeout, proxies from the environment, `http.extraHeader`): the body is collected, sent in
//! one piece when gix starts reading the answer, and a successful answer is read straight from
//! the client. Anything else — a redirect, an error status (401 included), a connection that
//! fails — and the request is made again through gix's backend, unchanged, so that redirects,
//! credentials and every error are handled and worded exactly as gix does; requests to
//! `upload-pack` only read, so asking twice is harmless. Once gix has followed a redirect, its
//! backend makes every request.
//!
//! An idle poll then needs no conversation at all. The `ls-refs` request of a conversation is
//! kept with the server's answer ([`Listing`]); the next poll makes that request again
//! ([`SharedHttp::answers_as_before`]), and an answer that is the same, byte for byte, lists
//! the same refs at the same commits: whatever gix would conclude from it, it concluded last
//! time. Any other answer, or none, and the poll has the conversation as usual; a successful
//! answer that differs is that conversation's `ls-refs` answer (the same request, asked a
//! moment ago), so a poll that finds a change lists the refs once. The request itself goes out
//! on a connection of its own ([`Relister`], `git::listing`).

use std::io::{self, BufRead, Read, Write};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use gix::protocol::transport::client::blocking_io::http as gix_http;
use gix::protocol::transport::Protocol;
use gix_http::Http;

use super::listing::{Answer, Asked, Listing, Relister, Settings, LISTING_LIMIT};
use super::no_progress::NoProgress;

/// How long a server's capability advertisement is reused (see the module's documentation).
const ADVERTISEMENT_TTL: Duration = Duration::from_secs(60);

type Backend = gix_http::reqwest::Remote;
type BackendReader = <Backend as Http>::ResponseBody;

/// gix's reqwest HTTP backend (an HTTP client with its TLS roots and connection pool, on a
/// worker thread), kept for the life of the cache and lent to each conversation's transport:
/// a backend per conversation would build a client, start its threads and connect anew at
/// every poll. With it, the client that makes `POST`s on the calling thread, and the last
/// capability advertisement.
#[derive(Clone, Default)]
pub(super) struct SharedHttp {
    backend: Arc<Mutex<Backend>>,
    direct: Arc<Mutex<Direct>>,
    advertisement: Arc<Mutex<Option<Advertisement>>>,
    /// The last `ls-refs` exchange made on this thread and answered in full.
    listing: Arc<Mutex<Option<Listing>>>,
    /// The connection that asks it again.
    relister: Arc<Mutex<Relister>>,
    /// An answer to the kept listing that differed: the conversation that follows is answered
    /// from it instead of asking the same question twice in one poll.
    fresh: Arc<Mutex<Option<Fresh>>>,
}

/// A listing's request with the answer it was just given.
struct Fresh {
    listing: Listing,
    headers: Vec<u8>,
}

/// A protocol v2 request's first pkt-line, when it is an `ls-refs`.
const LS_REFS_COMMAND: &[u8] = b"0014command=ls-refs\n";

/// The client for requests made on the calling thread (see the module's documentation).
#[derive(Default)]
struct Direct {
    /// The transport options of the current conversation, as gix's backend receives them.
    options: Option<gix_http::Options>,
    /// Built once, at the first request that can use it.
    client: Option<reqwest::blocking::Client>,
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

    /// After a failed conversation, start the next one from nothing: ask the server for its
    /// capabilities again (a changed server is one reason a conversation fails), and build the
    /// clients anew at their next request, reading the CA files again (a certificate signed by
    /// a rotated CA is trusted once the files say so, without a restart). The system's trust
    /// store is read once per process, whatever happens.
    pub(super) fn start_over(&self) {
        *lock(&self.advertisement) = None;
        // gix's worker thread ends when its backend is dropped.
        *self.backend() = Backend::default();
        lock(&self.direct).client = None;
        *lock(&self.relister) = Relister::default();
    }

    /// Forget the `ls-refs` exchange kept so far: a conversation whose listing may be asked
    /// again starts.
    pub(super) fn forget_listing(&self) {
        *lock(&self.listing) = None;
    }

    /// The `ls-refs` exchange of the conversation that just ended, if it was made on this
    /// thread and answered in full. A fresh answer the conversation did not use is dropped:
    /// it answered this poll's question, and must never answer a later one's.
    pub(super) fn take_listing(&self) -> Option<Listing> {
        *lock(&self.fresh) = None;
        lock(&self.listing).take()
    }

    /// Make `listing`'s request again ([`Relister`]): whether the server answers it exactly as
    /// it did. False when the answer differs in any way, is not a success, or cannot be asked
    /// here (a proxy applies, the TLS settings cannot be read): the poll then has its
    /// conversation, which reports any failure. A successful answer that differs is kept for
    /// that conversation ([`Fresh`]).
    pub(super) fn answers_as_before(&self, listing: &Listing, settings: &Settings) -> bool {
        if self.backend().redirected_base_url().is_some() {
            return false;
        }
        // `http.sslCAInfo` of the conversation that made the listing.
        let ca_info = lock(&self.direct)
            .options
            .as_ref()
            .and_then(|o| o.ssl_ca_info.clone());
        let asked = lock(&self.relister).ask(listing, settings, ca_info.as_deref());
        match asked {
            Ok(Asked::Same) => true,
            Ok(Asked::Differs(None)) => false,
            Ok(Asked::Differs(Some(Answer { headers, body }))) => {
                *lock(&self.fresh) = Some(Fresh {
                    listing: Listing {
                        url: listing.url.clone(),
                        headers: listing.headers.clone(),
                        body: listing.body.clone(),
                        answer: body,
                    },
                    headers,
                });
                false
            }
            Err(why) => {
                tracing::debug!(why = %why.0, "the last listing is not asked again here; the poll has its conversation");
                false
            }
        }
    }

    /// The client for a request made on this thread, with the extra headers git configuration
    /// asks for; `None` when gix's backend must make it: it has followed a redirect (it
    /// rewrites later URLs), or the options are not dagsnap's (a request hook this client would
    /// not run), or the client cannot be built (gix's backend then says why).
    fn direct_client(&self) -> Option<(reqwest::blocking::Client, gix_http::Options)> {
        if self.backend().redirected_base_url().is_some() {
            return None;
        }
        let mut direct = lock(&self.direct);
        let options = direct.options.clone()?;
        if direct.client.is_none() {
            direct.client = build_direct_client(&options);
        }
        Some((direct.client.clone()?, options))
    }
}

/// A client like the one gix's reqwest backend builds from `options` (its connect timeout and
/// header case, then dagsnap's settings: trust roots and timeout), except that it follows no
/// redirect: a redirect is gix's to follow.
fn build_direct_client(options: &gix_http::Options) -> Option<reqwest::blocking::Client> {
    let settings = options.backend.as_ref()?;
    let mut settings = settings.lock().ok()?;
    let settings = settings.downcast_mut::<gix_http::reqwest::Options>()?;
    if settings.configure_request.is_some() {
        return None;
    }
    let mut builder = reqwest::blocking::Client::builder()
        .connect_timeout(Duration::from_secs(20))
        .http1_title_case_headers();
    if let Some(configure) = settings.configure_client.as_mut() {
        builder = configure(builder)
            .inspect_err(|error| tracing::debug!(%error, "HTTP requests go through gix's client"))
            .ok()?;
    }
    builder
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .inspect_err(|error| tracing::debug!(%error, "HTTP requests go through gix's client"))
        .ok()
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Http for SharedHttp {
    type Headers = Reader;
    type ResponseBody = Reader;
    type PostBody = NoProgress<PostBody>;

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
        let headers: Vec<String> = headers.into_iter().map(|h| h.as_ref().to_owned()).collect();
        if let Some((client, options)) = self.direct_client() {
            let exchange = Arc::new(Mutex::new(Exchange::new(Pending {
                listing: Arc::clone(&self.listing),
                fresh: Arc::clone(&self.fresh),
                extra_headers: options.extra_headers,
                client,
                url: url.to_owned(),
                base_url: base_url.to_owned(),
                headers,
                kind: body,
                body: Vec::new(),
                backend: Arc::clone(&self.backend),
            })));
            return Ok(gix_http::PostResponse {
                post_body: NoProgress::new(PostBody::Collected(Arc::clone(&exchange))),
                headers: Reader::Unsent(Arc::clone(&exchange), Part::Headers),
                body: Reader::Unsent(exchange, Part::Body),
            });
        }
        let response = self.backend().post(url, base_url, &headers, body)?;
        Ok(gix_http::PostResponse {
            post_body: NoProgress::new(PostBody::Relayed(response.post_body)),
            headers: Reader::Live(response.headers),
            body: Reader::Live(response.body),
        })
    }

    fn configure(&mut self, config: &dyn std::any::Any) -> gix::error::Result {
        if let Some(options) = config.downcast_ref::<gix_http::Options>() {
            lock(&self.direct).options = Some(options.clone());
        }
        self.backend().configure(config)
    }

    fn redirected_base_url(&self) -> Option<String> {
        self.backend().redirected_base_url()
    }
}

/// A response's headers or body: from the server through gix's backend, recorded as it is read
/// (an advertisement), replayed from a recorded advertisement, or from a request made on this
/// thread (before it is sent, once it is answered, or how it failed).
pub(super) enum Reader {
    Live(BackendReader),
    Recorded {
        inner: BackendReader,
        record: Record,
    },
    Replayed(io::Cursor<Arc<[u8]>>),
    Unsent(Arc<Mutex<Exchange>>, Part),
    Held(io::Cursor<Vec<u8>>),
    Body(io::BufReader<Box<dyn Read + Send>>),
    Failed(Option<io::Error>),
}

/// Which part of an answer a reader reads.
#[derive(Debug, Clone, Copy)]
pub(super) enum Part {
    Headers,
    Body,
}

/// A `POST` made on the calling thread: the request while its body is being written, then
/// the parts of its answer that neither reader has taken yet.
pub(super) struct Exchange {
    pending: Option<Pending>,
    headers: Option<Reader>,
    body: Option<Reader>,
}

impl Exchange {
    fn new(pending: Pending) -> Exchange {
        Exchange {
            pending: Some(pending),
            headers: None,
            body: None,
        }
    }
}

/// A request whose body is being written.
pub(super) struct Pending {
    /// Where an `ls-refs` exchange is kept once answered.
    listing: Arc<Mutex<Option<Listing>>>,
    /// The answer to this very request, if the listing was just asked again.
    fresh: Arc<Mutex<Option<Fresh>>>,
    client: reqwest::blocking::Client,
    url: String,
    base_url: String,
    headers: Vec<String>,
    extra_headers: Vec<String>,
    kind: gix_http::PostBodyDataKind,
    body: Vec<u8>,
    /// Where the request goes if this thread's attempt is not answered with success.
    backend: Arc<Mutex<Backend>>,
}

impl Pending {
    /// Send the request; the answer's headers and body.
    fn send(self) -> (Reader, Reader) {
        let headers = self.request_headers();
        let fresh = lock(&self.fresh).take_if(|fresh| {
            fresh.listing.url == self.url
                && fresh.listing.body == self.body
                && fresh.listing.headers == headers
        });
        if let Some(Fresh { listing, headers }) = fresh {
            let answer = listing.answer.clone();
            *lock(&self.listing) = Some(listing);
            return (
                Reader::Held(io::Cursor::new(headers)),
                Reader::Held(io::Cursor::new(answer)),
            );
        }
        match self.attempt(&headers) {
            Ok(response) => {
                let mut lines = Vec::new();
                for (name, value) in response.headers() {
                    lines.extend_from_slice(name.as_str().as_bytes());
                    lines.push(b':');
                    lines.extend_from_slice(value.as_bytes());
                    lines.push(b'\n');
                }
                let body = if self.body.starts_with(LS_REFS_COMMAND) {
                    self.keep_listing(headers, response)
                } else {
                    Reader::Body(io::BufReader::with_capacity(64 * 1024, Box::new(response)))
                };
                (Reader::Held(io::Cursor::new(lines)), body)
            }
            Err(why) => {
                tracing::debug!(url = %self.url, %why, "the request is made again through gix's HTTP client");
                self.relay()
            }
        }
    }

    /// The request on this thread: a successful answer, or why it is not one.
    fn attempt(
        &self,
        headers: &reqwest::header::HeaderMap,
    ) -> Result<reqwest::blocking::Response, String> {
        let response = self
            .client
            .post(&self.url)
            .headers(headers.clone())
            .body(self.body.clone())
            .send()
            .map_err(|e| super::error_chain(&e))?;
        if !response.status().is_success() {
            return Err(format!("HTTP status {}", response.status()));
        }
        Ok(response)
    }

    /// The request's headers: gix's, then git configuration's extra ones.
    fn request_headers(&self) -> reqwest::header::HeaderMap {
        let mut headers = reqwest::header::HeaderMap::new();
        for line in self.headers.iter().chain(&self.extra_headers) {
            insert_header(&mut headers, line);
        }
        headers
    }

    /// Read an `ls-refs` answer whole and keep the exchange; an answer too large to keep is
    /// passed on as it is read, and one that cannot be read fails as it would have.
    fn keep_listing(
        &self,
        headers: reqwest::header::HeaderMap,
        response: reqwest::blocking::Response,
    ) -> Reader {
        let mut answer = Vec::new();
        let mut response = response.take(LISTING_LIMIT as u64 + 1);
        if let Err(error) = response.read_to_end(&mut answer) {
            return Reader::Failed(Some(error));
        }
        if answer.len() > LISTING_LIMIT {
            let rest = io::Cursor::new(answer).chain(response.into_inner());
            return Reader::Body(io::BufReader::with_capacity(64 * 1024, Box::new(rest)));
        }
        *lock(&self.listing) = Some(Listing {
            url: self.url.clone(),
            headers,
            body: self.body.clone(),
            answer: answer.clone(),
        });
        Reader::Held(io::Cursor::new(answer))
    }

    /// The same request through gix's backend, its body written in one piece (each write is a
    /// trip to gix's thread).
    fn relay(self) -> (Reader, Reader) {
        let response =
            match lock(&self.backend).post(&self.url, &self.base_url, &self.headers, self.kind) {
                Ok(response) => response,
                Err(error) => {
                    let failed = || Reader::Failed(Some(io::Error::other(error.to_string())));
                    return (failed(), failed());
                }
            };
        let mut post_body = response.post_body;
        let written = post_body.write_all(&self.body);
        drop(post_body);
        match written {
            Ok(()) => (Reader::Live(response.headers), Reader::Live(response.body)),
            Err(error) => (Reader::Failed(Some(error)), Reader::Live(response.body)),
        }
    }
}

/// Add one `name: value` line to `headers`, as gix's backend does: a line it cannot parse
/// (git configuration may hold anything) is left out, and a name given twice is sent twice.
fn insert_header(headers: &mut reqwest::header::HeaderMap, line: &str) {
    let Some((name, value)) = line.split_once(':') else {
        return;
    };
    let name = reqwest::header::HeaderName::from_bytes(name.as_bytes());
    let value = reqwest::header::HeaderValue::try_from(value.trim());
    if let (Ok(name), Ok(value)) = (name, value) {
        headers.append(name, value);
    }
}

/// Send the exchange's request if it was not sent yet, and take `part` of its answer.
fn take_part(exchange: &Mutex<Exchange>, part: Part) -> Reader {
    let mut exchange = lock(exchange);
    if let Some(pending) = exchange.pending.take() {
        let (headers, body) = pending.send();
        exchange.headers = Some(headers);
        exchange.body = Some(body);
    }
    let taken = match part {
        Part::Headers => exchange.headers.take(),
        Part::Body => exchange.body.take(),
    };
    taken.unwrap_or_else(|| {
        let part = match part {
            Part::Headers => "headers",
            Part::Body => "body",
        };
        Reader::Failed(Some(io::Error::other(format!(
            "the response's {part} was read twice"
        ))))
    })
}

/// A request body: collected for a request made on this thread, or handed to gix's backend.
pub(super) enum PostBody {
    Collected(Arc<Mutex<Exchange>>),
    Relayed(<Backend as Http>::PostBody),
}

impl Write for PostBody {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            PostBody::Relayed(inner) => inner.write(buf),
            PostBody::Collected(exchange) => match &mut lock(exchange).pending {
                Some(pending) => {
                    pending.body.extend_from_slice(buf);
                    Ok(buf.len())
                }
                None => Err(io::Error::other(
                    "the request was sent before its body was complete",
                )),
            },
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            PostBody::Relayed(inner) => inner.flush(),
            PostBody::Collected(_) => Ok(()),
        }
    }
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
        if let Reader::Unsent(exchange, part) = self {
            *self = take_part(exchange, *part);
        }
        match self {
            Reader::Live(inner) => inner.fill_buf(),
            Reader::Replayed(cursor) => cursor.fill_buf(),
            Reader::Held(cursor) => cursor.fill_buf(),
            Reader::Body(response) => response.fill_buf(),
            Reader::Failed(error) => Err(error
                .take()
                .unwrap_or_else(|| io::Error::other("the request failed"))),
            Reader::Unsent(..) => Ok(&[]),
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
            Reader::Held(cursor) => cursor.consume(amount),
            Reader::Body(response) => response.consume(amount),
            Reader::Unsent(..) | Reader::Failed(_) => {}
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::git::no_progress::tests::request;

    #[test]
    fn an_answer_the_conversation_did_not_use_never_answers_a_later_poll() {
        let http = SharedHttp::default();
        let listing = |answer: &[u8]| Listing {
            url: "http://127.0.0.1:1/dags.git/git-upload-pack".into(),
            headers: reqwest::header::HeaderMap::new(),
            body: b"0014command=ls-refs\n0000".to_vec(),
            answer: answer.to_vec(),
        };
        *lock(&http.fresh) = Some(Fresh {
            listing: listing(b"0032new..."),
            headers: b"content-type:application/x-git-upload-pack-result\n".to_vec(),
        });
        *lock(&http.listing) = Some(listing(b"0032old..."));
        // The conversation ends (it failed before it listed the refs, say).
        let kept = http.take_listing();
        assert_eq!(kept.map(|l| l.answer), Some(b"0032old...".to_vec()));
        assert!(lock(&http.fresh).is_none());
        assert!(http.take_listing().is_none());
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
}
