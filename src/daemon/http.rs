//! The HTTP endpoints that a kubelet, Prometheus and a git server's push webhook talk to.
//!
//! | route | answers |
//! | --- | --- |
//! | `GET /healthz` | 200 while the loop is alive, 503 when it is wedged ([`Health::liveness`]) |
//! | `GET /readyz`, `GET /` | 200 when readers are served, 503 when not; JSON ([`Health::readiness`]) |
//! | `GET /metrics` | Prometheus text format |
//! | `POST /sync` | 202: a cycle runs now (coalesced); `?wait=1`: its outcome |
//!
//! The server runs on the loop's runtime but can never stall or slow it: requests only read the
//! shared state (a mutex held for a few field reads) or raise the trigger; connections are
//! bounded in number and in time; request bodies are bounded (413). `POST /sync` is
//! authenticated when a secret is configured: a bearer token, or a push webhook's own
//! signature (GitHub's `X-Hub-Signature-256`, GitLab's `X-Gitlab-Token`), compared in constant
//! time. A push to another branch is acknowledged and ignored.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::TcpListener;

use super::health::Health;

/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 32;
/// A request's headers must arrive within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection (keep-alive included) lasts at most this.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest request body: push payloads are tens of kilobytes (GitHub lists 20 commits at most).
const MAX_BODY: usize = 1 << 20;

/// Parse `--http-bind`: `:8080` (every interface), `127.0.0.1:8080`, `[::]:8080`.
pub fn parse_bind(text: &str) -> Result<SocketAddr, String> {
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
pub fn bind(text: &str) -> Result<std::net::TcpListener, String> {
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
#[derive(Debug, PartialEq, Eq)]
enum Caller {
    /// No secret is configured.
    Anyone,
    Token,
    GitHub,
    GitLab,
}

impl Auth {
    fn required(&self) -> bool {
        self.token_file.is_some() || self.webhook_secret_file.is_some()
    }

    /// Who the request is, or why it is refused. Secrets are read at each request, so a
    /// rotated one takes effect at once.
    fn authenticate(&self, headers: &HeaderMap, body: &[u8]) -> Result<Caller, &'static str> {
        if !self.required() {
            return Ok(Caller::Anyone);
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
                    return Ok(Caller::Token);
                }
            }
        }
        if let Some(key) = secret(&self.webhook_secret_file) {
            if let Some(signature) = header("x-hub-signature-256") {
                let valid = signature
                    .strip_prefix(b"sha256=")
                    .and_then(decode_hex)
                    .is_some_and(|tag| {
                        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key);
                        ring::hmac::verify(&key, body, &tag).is_ok()
                    });
                if valid {
                    return Ok(Caller::GitHub);
                }
            }
            if let Some(token) = header("x-gitlab-token") {
                if equal(token, &key) {
                    return Ok(Caller::GitLab);
                }
            }
        }
        Err("authentication required: a bearer token (--trigger-token-file) or a webhook signature (--webhook-secret-file) that matches")
    }
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

/// Serve until the runtime shuts down.
pub async fn serve(listener: std::net::TcpListener, health: Arc<Health>, auth: Arc<Auth>) {
    let listener = match TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!(error = %e, "cannot serve HTTP; the endpoints are off");
            return;
        }
    };
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        // Wait for a free slot before accepting: excess connections queue in the backlog.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::debug!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (health, auth) = (Arc::clone(&health), Arc::clone(&auth));
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let (health, auth) = (Arc::clone(&health), Arc::clone(&auth));
                async move { Ok::<_, Infallible>(handle(request, &health, &auth).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection).await;
            drop(slot);
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

async fn handle(request: Request<Incoming>, health: &Health, auth: &Auth) -> Reply {
    let path = request.uri().path().to_string();
    match (request.method().clone(), path.as_str()) {
        (Method::GET | Method::HEAD, "/healthz") => match health.liveness() {
            Ok(()) => text(StatusCode::OK, "ok".into()),
            Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, why),
        },
        (Method::GET | Method::HEAD, "/readyz" | "/") => {
            let readiness = health.readiness();
            let status = if readiness.ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            json(status, &readiness)
        }
        (Method::GET | Method::HEAD, "/metrics") => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            health.metrics.encode(),
        ),
        (Method::POST, "/sync") => sync(request, health, auth).await,
        (_, "/healthz" | "/readyz" | "/" | "/metrics" | "/sync") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed".into())
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /healthz, /readyz, /metrics or POST /sync".into(),
        ),
    }
}

#[derive(Serialize)]
struct Accepted {
    accepted: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    ignored: Option<String>,
}

async fn sync(request: Request<Incoming>, health: &Health, auth: &Auth) -> Reply {
    let wait = request
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|p| matches!(p, "wait=1" | "wait=true")));
    let (parts, body) = request.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body over {MAX_BODY} bytes"),
            )
        }
        Err(_) => return text(StatusCode::BAD_REQUEST, "unreadable request body".into()),
    };
    let caller = match auth.authenticate(&parts.headers, &body) {
        Ok(caller) => caller,
        Err(why) => return text(StatusCode::UNAUTHORIZED, why.into()),
    };
    if let Some(ignored) = ignored_event(&caller, &parts.headers, &body, health.followed_ref()) {
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
        let signed = headers(&[("x-hub-signature-256", &format!("sha256={tag}"))]);
        assert_eq!(auth.authenticate(&signed, body), Ok(Caller::GitHub));
        assert!(auth.authenticate(&signed, b"{}").is_err(), "another body");
        let gitlab = headers(&[("x-gitlab-token", "s3cret")]);
        assert_eq!(auth.authenticate(&gitlab, body), Ok(Caller::GitLab));
        assert!(auth
            .authenticate(&headers(&[("x-gitlab-token", "s3cres")]), body)
            .is_err());
        assert!(auth.authenticate(&HeaderMap::new(), body).is_err());
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
