//! The HTTP endpoints that a kubelet, Prometheus and a git server's push webhook talk to.
//!
//! | route | answers |
//! | --- | --- |
//! | `GET /healthz` | 200 while the loop is alive, 503 when it is wedged ([`Health::liveness`]) |
//! | `GET /readyz`, `GET /` | 200 when readers are served, 503 when not; JSON ([`Health::readiness`]) |
//! | `GET /metrics` | Prometheus text format |
//! | `POST /sync` | 202: a cycle runs now (coalesced); `?wait=1`: its outcome |
//! | `POST /versions/<commit>` | the commit's snapshot, built if the root lacks it, and leased (`?lease=<s>`); see [`super::versions`] |
//!
//! The server runs on the loop's runtime but can never stall or slow it: requests only read the
//! shared state (a mutex held for a few field reads) or raise the trigger. Whoever can reach the
//! port is input, and nothing they send can starve the kubelet's probes:
//!
//! - `POST /sync` and `POST /versions/...` are authenticated on their headers, before a byte of
//!   the body is read, when a
//!   secret is configured: a bearer token or GitLab's `X-Gitlab-Token`, compared in constant
//!   time; a missing or wrong one is answered 401 at once and the connection closed. Only a
//!   GitHub delivery needs its body to be authenticated (`X-Hub-Signature-256` signs it): that
//!   body is read within [`BODY_TIMEOUT`] and [`MAX_BODY`] bytes, then checked.
//! - Connections are bounded in number ([`MAX_CONNECTIONS`]) and in time (headers within
//!   [`HEADER_TIMEOUT`], the whole connection within [`CONNECTION_TIMEOUT`]). A connection that
//!   is not serving an answered request (waiting for headers, idle between requests, sending
//!   an unauthenticated body) can be evicted: when every slot is taken, a new connection
//!   evicts the one that has waited longest ([`Slots`]). Slow clients cannot hold slots
//!   against a probe, whose request arrives whole at once.
//!
//! A push to another branch is acknowledged and ignored.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::TcpListener;

use super::health::Health;

/// Connections open at once; a new one beyond evicts the one waiting longest ([`Slots`]).
const MAX_CONNECTIONS: usize = 32;
/// A request's headers must arrive within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A request body (only a GitHub delivery's is read before it is authenticated) must arrive
/// within this.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection (keep-alive included) lasts at most this.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest request body: push payloads are tens of kilobytes (GitHub lists 20 commits at most).
const MAX_BODY: usize = 1 << 20;

/// Parse `--http-bind`: `:8080` (every interface), `127.0.0.1:8080`, `[::]:8080`.
pub(crate) fn parse_bind(text: &str) -> Result<SocketAddr, String> {
    let text = text.trim();
    let full = match text.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}"),
        None => text.to_string(),
    };
    full.parse().map_err(|_| {
        format!("invalid --http-bind '{text}': give [address]:port, like :8080, 127.0.0.1:8080 or [::]:8080")
    })
}

/// Bind `--http-bind` (before the loop starts, so that a busy port is one clear error).
pub(crate) fn bind(text: &str) -> Result<std::net::TcpListener, String> {
    let addr = parse_bind(text)?;
    let listener = std::net::TcpListener::bind(addr).map_err(|e| {
        format!("cannot listen on --http-bind {text}: {e}; choose a free port or address")
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("cannot listen on --http-bind {text}: {e}"))?;
    Ok(listener)
}

/// Who may ask for a sync.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    /// `Authorization: Bearer <token>` with the token in this file.
    pub token_file: Option<PathBuf>,
    /// A push webhook's secret: GitHub signs the body with it, GitLab sends it.
    pub webhook_secret_file: Option<PathBuf>,
}

/// How a `POST /sync` was let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    /// No secret is configured.
    Anyone,
    Token,
    GitHub,
    GitLab,
}

/// What the headers of a `POST /sync` decide.
#[derive(Debug, PartialEq, Eq)]
enum Gate {
    /// Authenticated (or no secret is configured).
    Let(Caller),
    /// A GitHub delivery: authenticated once its body matches this signature with this key.
    Signed { key: Vec<u8>, tag: Vec<u8> },
    /// Refused, without reading the body.
    Refuse(&'static str),
}

const REFUSED: &str = "authentication required: a bearer token (--trigger-token-file) or a webhook signature (--webhook-secret-file) that matches";

impl Auth {
    fn required(&self) -> bool {
        self.token_file.is_some() || self.webhook_secret_file.is_some()
    }

    /// What the headers alone say of a request. Secrets are read at each request, so a
    /// rotated one takes effect at once.
    fn authenticate(&self, headers: &HeaderMap) -> Gate {
        if !self.required() {
            return Gate::Let(Caller::Anyone);
        }
        let secret = |path: &Option<PathBuf>| -> Option<Vec<u8>> {
            let text = std::fs::read(path.as_ref()?).ok()?;
            let trimmed = text.trim_ascii_end().to_vec();
            (!trimmed.is_empty()).then_some(trimmed)
        };
        let header = |name: &str| headers.get(name).map(HeaderValue::as_bytes);
        if let (Some(token), Some(given)) = (secret(&self.token_file), header("authorization")) {
            if let Some(given) = given.strip_prefix(b"Bearer ") {
                if equal(given, &token) {
                    return Gate::Let(Caller::Token);
                }
            }
        }
        if let Some(key) = secret(&self.webhook_secret_file) {
            if let Some(token) = header("x-gitlab-token") {
                if equal(token, &key) {
                    return Gate::Let(Caller::GitLab);
                }
            }
            let tag = header("x-hub-signature-256")
                .and_then(|signature| signature.strip_prefix(b"sha256="))
                .and_then(decode_hex);
            if let Some(tag) = tag {
                return Gate::Signed { key, tag };
            }
        }
        Gate::Refuse(REFUSED)
    }
}

/// Whether `body` is what GitHub signed with `key` into `tag`.
fn signed(key: &[u8], tag: &[u8], body: &[u8]) -> bool {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    ring::hmac::verify(&key, body, tag).is_ok()
}

/// Constant-time comparison, so that a caller cannot guess a secret byte by byte from timing.
fn equal(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

fn decode_hex(text: &[u8]) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    text.chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok())
        .collect()
}

/// The open connections, and which of them may be evicted.
///
/// A connection is *evictable* while it does not serve an answered request: waiting for its
/// headers, idle between requests, or sending a body that is not authenticated yet. When every
/// slot is taken, a new connection evicts the evictable one that has been so longest (a slow
/// client, never a probe being answered); with none evictable, the new one is closed.
#[derive(Default)]
struct Slots {
    open: Mutex<Vec<Arc<Slot>>>,
}

struct Slot {
    /// Since when it is evictable, in milliseconds since the server started (+1); 0 while it
    /// serves a request that must not be cut.
    evictable_since: AtomicU64,
    evicted: tokio::sync::Notify,
}

impl Slot {
    fn protect(&self) {
        self.evictable_since.store(0, Ordering::SeqCst);
    }

    fn release(&self, started: Instant) {
        let now = started.elapsed().as_millis() as u64 + 1;
        self.evictable_since.store(now, Ordering::SeqCst);
    }
}

impl Slots {
    /// A slot for a new connection, evicting the longest-waiting evictable one if all are
    /// taken; `None` if all are taken by requests being served.
    fn take(&self, started: Instant) -> Option<Arc<Slot>> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.len() >= MAX_CONNECTIONS {
            let oldest = open
                .iter()
                .enumerate()
                .filter(|(_, s)| s.evictable_since.load(Ordering::SeqCst) != 0)
                .min_by_key(|(_, s)| s.evictable_since.load(Ordering::SeqCst))
                .map(|(n, _)| n)?;
            let evicted = open.swap_remove(oldest);
            evicted.evicted.notify_one();
        }
        let slot = Arc::new(Slot {
            evictable_since: AtomicU64::new(0),
            evicted: tokio::sync::Notify::new(),
        });
        slot.release(started);
        open.push(Arc::clone(&slot));
        Some(slot)
    }

    fn give_back(&self, slot: &Arc<Slot>) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|s| !Arc::ptr_eq(s, slot));
    }
}

/// Serve until the runtime shuts down.
pub(crate) async fn serve(listener: std::net::TcpListener, health: Arc<Health>, auth: Arc<Auth>) {
    let listener = match TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!(error = %e, "cannot serve HTTP; the endpoints are off");
            return;
        }
    };
    let slots = Arc::new(Slots::default());
    let started = Instant::now();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::debug!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(slot) = slots.take(started) else {
            tracing::debug!("every connection serves a request; closing a new one");
            continue;
        };
        let (health, auth, slots) = (Arc::clone(&health), Arc::clone(&auth), Arc::clone(&slots));
        tokio::spawn(async move {
            let service = hyper::service::service_fn({
                let slot = Arc::clone(&slot);
                move |request| {
                    let (health, auth, slot) =
                        (Arc::clone(&health), Arc::clone(&auth), Arc::clone(&slot));
                    async move {
                        let reply = handle(request, &health, &auth, &slot).await;
                        slot.release(started);
                        Ok::<_, Infallible>(reply)
                    }
                }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection) => {}
                _ = slot.evicted.notified() => tracing::debug!("evicted a slow connection"),
            }
            slots.give_back(&slot);
        });
    }
}

type Reply = Response<Full<Bytes>>;

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Reply {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn json(status: StatusCode, value: &impl Serialize) -> Reply {
    let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
    body.push(b'\n');
    reply(status, "application/json", body)
}

fn text(status: StatusCode, body: String) -> Reply {
    reply(status, "text/plain; charset=utf-8", body + "\n")
}

async fn handle(request: Request<Incoming>, health: &Health, auth: &Auth, slot: &Slot) -> Reply {
    let path = request.uri().path().to_string();
    match (request.method().clone(), path.as_str()) {
        (Method::GET | Method::HEAD, "/healthz") => {
            slot.protect();
            match health.liveness() {
                Ok(()) => text(StatusCode::OK, "ok".into()),
                Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, why),
            }
        }
        (Method::GET | Method::HEAD, "/readyz" | "/") => {
            slot.protect();
            let readiness = health.readiness();
            let status = if readiness.ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            json(status, &readiness)
        }
        (Method::GET | Method::HEAD, "/metrics") => {
            slot.protect();
            health.metrics.set_ready(health.readiness().ready);
            reply(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                health.metrics.encode(),
            )
        }
        (Method::POST, "/sync") => sync(request, health, auth, slot).await,
        (Method::POST, p) if p.starts_with("/versions/") => {
            version(request, health, auth, slot).await
        }
        (_, "/healthz" | "/readyz" | "/" | "/metrics" | "/sync") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed".into())
        }
        (_, p) if p.starts_with("/versions/") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed".into())
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /healthz, /readyz, /metrics, POST /sync or POST /versions/<commit>"
                .into(),
        ),
    }
}

/// An answer after which the connection is closed: its request's body was not read.
fn closing(mut reply: Reply) -> Reply {
    reply
        .headers_mut()
        .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
    reply
}

fn too_large() -> Reply {
    closing(text(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body over {MAX_BODY} bytes"),
    ))
}

/// Read a request's body within [`BODY_TIMEOUT`] and [`MAX_BODY`] bytes, or the answer.
async fn read_body(body: Incoming) -> Result<Bytes, Reply> {
    match tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, MAX_BODY).collect()).await {
        Err(_) => Err(closing(text(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within {}",
                humantime::format_duration(BODY_TIMEOUT)
            ),
        ))),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(too_large())
        }
        Ok(Err(_)) => Err(closing(text(
            StatusCode::BAD_REQUEST,
            "unreadable request body".into(),
        ))),
    }
}

#[derive(Serialize)]
struct Accepted {
    accepted: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    ignored: Option<String>,
}

async fn sync(request: Request<Incoming>, health: &Health, auth: &Auth, slot: &Slot) -> Reply {
    let wait = request
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|p| matches!(p, "wait=1" | "wait=true")));
    let (parts, body) = request.into_parts();
    // An unauthenticated body announced larger than any delivery is refused without reading
    // it.
    let announced = parts
        .headers
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    // Authenticated on the headers, before the body is read: an unauthenticated client
    // cannot make the server wait for its body.
    let caller = match auth.authenticate(&parts.headers) {
        Gate::Refuse(why) => return closing(text(StatusCode::UNAUTHORIZED, why.into())),
        // Without a secret, anyone may ask, but nobody may hold a slot against a probe while
        // waiting for a cycle: such a request stays evictable.
        Gate::Let(Caller::Anyone) => Caller::Anyone,
        Gate::Let(caller) => {
            slot.protect();
            caller
        }
        Gate::Signed { .. } if announced.is_some_and(|length| length > MAX_BODY as u64) => {
            return too_large();
        }
        Gate::Signed { key, tag } => {
            // Still evictable while its body arrives: nothing is known of its sender yet.
            let body = match read_body(body).await {
                Ok(body) => body,
                Err(reply) => return reply,
            };
            if !signed(&key, &tag, &body) {
                return closing(text(StatusCode::UNAUTHORIZED, REFUSED.into()));
            }
            slot.protect();
            return answer(Caller::GitHub, &parts.headers, &body, wait, health).await;
        }
    };
    // Let in: its body is read as before (bounded in size and time), though only a GitLab
    // delivery's is looked at (which ref was pushed).
    let body = match read_body(body).await {
        Ok(body) => body,
        Err(reply) => return reply,
    };
    answer(caller, &parts.headers, &body, wait, health).await
}

/// The answer to an authenticated `POST /sync`.
async fn answer(
    caller: Caller,
    headers: &HeaderMap,
    body: &[u8],
    wait: bool,
    health: &Health,
) -> Reply {
    if let Some(ignored) = ignored_event(&caller, headers, body, health.followed_ref()) {
        return json(
            StatusCode::ACCEPTED,
            &Accepted {
                accepted: false,
                ignored: Some(ignored),
            },
        );
    }
    let after = health.cycles_started();
    health.trigger.notify_one();
    if !wait {
        return json(
            StatusCode::ACCEPTED,
            &Accepted {
                accepted: true,
                ignored: None,
            },
        );
    }
    match health
        .wait_for_cycle_after(after, health.wait_limit())
        .await
    {
        Some(done) => json(StatusCode::OK, &done),
        None => text(
            StatusCode::GATEWAY_TIMEOUT,
            "the requested cycle did not finish in time; it still runs".into(),
        ),
    }
}

/// A query parameter's value.
fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}

/// `POST /versions/<commit>[?lease=<seconds>][&wait=<seconds>]`: the snapshot of a commit
/// the root may not hold, built by the next cycle without moving the link and leased
/// (`super::versions`). Authenticated as `POST /sync` is, by a bearer token (a webhook
/// signature is for pushes). 200 with where it is; 404 when the remote does not have the
/// commit; 409 when the root's check rejected it; 502 when building it failed; 503 when too
/// many versions are asked for at once; 504 when it is not ready within the wait (ask again:
/// the request is not lost).
async fn version(request: Request<Incoming>, health: &Health, auth: &Auth, slot: &Slot) -> Reply {
    use super::versions::{Answer, DEFAULT_LEASE};
    let caller = match auth.authenticate(request.headers()) {
        Gate::Let(caller) => caller,
        Gate::Refuse(why) => return closing(text(StatusCode::UNAUTHORIZED, why.into())),
        Gate::Signed { .. } => {
            return closing(text(
                StatusCode::UNAUTHORIZED,
                "a webhook signature is for pushes; ask for a version with the bearer token of --trigger-token-file".into(),
            ))
        }
    };
    let asked = request.uri().path().trim_start_matches("/versions/");
    let commit = match crate::commit::CommitId::parse(asked) {
        Ok(commit) => commit,
        Err(e) => return text(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let query = request.uri().query();
    let seconds = |name: &str| -> Result<Option<Duration>, String> {
        match query_param(query, name) {
            None => Ok(None),
            Some(value) => value
                .parse::<u64>()
                .map(|s| Some(Duration::from_secs(s)))
                .map_err(|_| {
                    format!(
                        "{name}={} is not a number of seconds",
                        crate::text::escape(value)
                    )
                }),
        }
    };
    let (lease, wait) = match (seconds("lease"), seconds("wait")) {
        (Ok(lease), Ok(wait)) => (lease.unwrap_or(DEFAULT_LEASE), wait),
        (Err(why), _) | (_, Err(why)) => return text(StatusCode::BAD_REQUEST, why),
    };
    let wait = wait.map_or(health.wait_limit(), |w| w.min(health.wait_limit()));
    let Some(_place) = health.versions.wait_place() else {
        return come_back(format!(
            "{} callers wait for versions already; ask again shortly",
            super::versions::MAX_WAITING
        ));
    };
    // An authenticated caller keeps its connection while it waits; without a secret, anyone
    // may ask, but nobody may hold a slot against a probe.
    if caller != Caller::Anyone {
        slot.protect();
    }
    let answer = match health.versions.ask(commit, lease) {
        Ok(answer) => answer,
        Err(_) => {
            return come_back(format!(
                "{} versions are being materialized already; ask again shortly",
                super::versions::MAX_PENDING
            ))
        }
    };
    health.trigger.notify_one();
    match tokio::time::timeout(wait, answer).await {
        Ok(Ok(answer)) => {
            let status = match &answer {
                Answer::Ready { .. } => StatusCode::OK,
                Answer::NotInRemote { .. } => StatusCode::NOT_FOUND,
                Answer::Rejected { .. } => StatusCode::CONFLICT,
                Answer::Failed { .. } => StatusCode::BAD_GATEWAY,
            };
            json(status, &answer)
        }
        Ok(Err(_)) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the loop stopped before serving the request".into(),
        ),
        Err(_) => text(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "the version was not ready within {}; it is still being materialized, ask again",
                humantime::format_duration(wait)
            ),
        ),
    }
}

/// 503 with a Retry-After: the caller should ask again in a few seconds.
fn come_back(why: String) -> Reply {
    let mut busy = text(StatusCode::SERVICE_UNAVAILABLE, why);
    busy.headers_mut()
        .insert(hyper::header::RETRY_AFTER, HeaderValue::from_static("2"));
    busy
}

/// Where a server bound to `addr` can be reached, for the publisher's record: loopback first,
/// then every address of this host's interfaces when bound to all of them.
pub(crate) fn urls(addr: SocketAddr) -> Vec<String> {
    let url = |ip: std::net::IpAddr| SocketAddr::new(ip, addr.port()).to_string();
    if !addr.ip().is_unspecified() {
        return vec![format!("http://{}", url(addr.ip()))];
    }
    let v6 = addr.is_ipv6();
    let loopback: std::net::IpAddr = if v6 {
        std::net::Ipv6Addr::LOCALHOST.into()
    } else {
        std::net::Ipv4Addr::LOCALHOST.into()
    };
    let mut found = vec![loopback];
    if let Ok(interfaces) = nix::ifaddrs::getifaddrs() {
        for interface in interfaces {
            let Some(address) = interface.address else {
                continue;
            };
            let ip: Option<std::net::IpAddr> = if let Some(v4) = address.as_sockaddr_in() {
                Some(v4.ip().into())
            } else if v6 {
                address
                    .as_sockaddr_in6()
                    .map(|a| a.ip().into())
                    .filter(|ip: &std::net::IpAddr| match ip {
                        // Link-local addresses need a scope a URL cannot carry.
                        std::net::IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) != 0xfe80,
                        std::net::IpAddr::V4(_) => true,
                    })
            } else {
                None
            };
            if let Some(ip) = ip.filter(|ip| !ip.is_loopback() && !found.contains(ip)) {
                found.push(ip);
            }
        }
    }
    found
        .into_iter()
        .map(|ip| format!("http://{}", url(ip)))
        .collect()
}

/// Why a webhook delivery runs nothing: not a push, or a push to a ref this loop does not
/// follow (`followed`, learned from its last successful cycle).
fn ignored_event(
    caller: &Caller,
    headers: &HeaderMap,
    body: &[u8],
    followed: Option<String>,
) -> Option<String> {
    let event = match caller {
        Caller::GitHub => headers.get("x-github-event"),
        Caller::GitLab => headers.get("x-gitlab-event"),
        Caller::Anyone | Caller::Token => return None,
    }
    .and_then(|v| v.to_str().ok())
    .unwrap_or_default();
    if !matches!(event, "push" | "Push Hook" | "Tag Push Hook") {
        return Some(format!("event '{event}' is not a push"));
    }
    let pushed = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["ref"].as_str().map(str::to_string))?;
    match followed {
        Some(followed) if followed != pushed => {
            Some(format!("push to {pushed}; this loop follows {followed}"))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn bind_addresses_read_like_git_sync_s() {
        assert_eq!(parse_bind(":8080").unwrap().to_string(), "0.0.0.0:8080");
        assert_eq!(
            parse_bind("127.0.0.1:9").unwrap().to_string(),
            "127.0.0.1:9"
        );
        assert_eq!(parse_bind("[::]:8080").unwrap().to_string(), "[::]:8080");
        assert!(parse_bind("localhost").is_err());
    }

    #[test]
    fn github_and_gitlab_deliveries_authenticate_by_their_own_means() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "s3cret\n").unwrap();
        let auth = Auth {
            token_file: None,
            webhook_secret_file: Some(secret),
        };
        let body = br#"{"ref":"refs/heads/main"}"#;
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"s3cret");
        let tag: String = ring::hmac::sign(&key, body)
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let github = headers(&[("x-hub-signature-256", &format!("sha256={tag}"))]);
        let Gate::Signed { key, tag } = auth.authenticate(&github) else {
            panic!("a signature asks for the body")
        };
        assert!(signed(&key, &tag, body));
        assert!(!signed(&key, &tag, b"{}"), "another body");
        let gitlab = headers(&[("x-gitlab-token", "s3cret")]);
        assert_eq!(auth.authenticate(&gitlab), Gate::Let(Caller::GitLab));
        assert_eq!(
            auth.authenticate(&headers(&[("x-gitlab-token", "s3cres")])),
            Gate::Refuse(REFUSED)
        );
        assert_eq!(auth.authenticate(&HeaderMap::new()), Gate::Refuse(REFUSED));
        let garbled = headers(&[("x-hub-signature-256", "sha256=zz")]);
        assert_eq!(auth.authenticate(&garbled), Gate::Refuse(REFUSED));
    }

    #[test]
    fn a_server_bound_to_every_interface_is_announced_loopback_first() {
        let urls = urls("0.0.0.0:8080".parse().unwrap());
        assert_eq!(urls[0], "http://127.0.0.1:8080");
        assert!(urls.iter().all(|u| u.ends_with(":8080")));
        assert_eq!(
            super::urls("10.1.2.3:9".parse().unwrap()),
            ["http://10.1.2.3:9"]
        );
        assert_eq!(query_param(Some("a=1&lease=60"), "lease"), Some("60"));
        assert_eq!(query_param(Some("leases=60"), "lease"), None);
    }

    #[test]
    fn a_push_to_another_branch_is_ignored() {
        let event = headers(&[("x-github-event", "push")]);
        let body = br#"{"ref":"refs/heads/feature"}"#;
        let followed = Some("refs/heads/main".to_string());
        assert!(ignored_event(&Caller::GitHub, &event, body, followed.clone()).is_some());
        let body = br#"{"ref":"refs/heads/main"}"#;
        assert_eq!(
            ignored_event(&Caller::GitHub, &event, body, followed.clone()),
            None
        );
        let ping = headers(&[("x-github-event", "ping")]);
        assert!(ignored_event(&Caller::GitHub, &ping, body, followed.clone()).is_some());
        assert_eq!(ignored_event(&Caller::Token, &ping, body, followed), None);
    }
}
