//! The upstream connections of one `serve` worker.
//!
//! hyper-util's pooled client is built to be shared between threads: per request it hashes a
//! pool key, builds a connect future that it then drops, and spawns a task to hand the
//! connection back. In a minimal proxy that costs 9,400 of 48,900 instructions per request.
//! A worker runs its own single-threaded runtime and never shares its connections, so its pool
//! is a short list per origin. Connecting, TLS and ALPN stay hyper-rustls's, and the HTTP/1
//! and HTTP/2 connections hyper's.
//!
//! A failed request says whether it may be sent again (see [`SendFailure`]): only when the
//! upstream cannot have started on it.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Uri, header};
use http_body::{Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::rt::TokioExecutor;
use tower::ServiceExt;

use super::{Error, Origin, Reuse, SendFailure, path_of};

type Body = Full<Bytes>;

/// How soon after a request went out on a reused connection a close with no answer still
/// means the server was closing that idle connection as we wrote. Only a request that bills
/// nothing (`GET`, `HEAD`, `OPTIONS`) is sent again then: a POST may have been read whole.
const STALE_CONNECTION_WINDOW: Duration = Duration::from_secs(1);

/// How many idle connections one origin keeps at most, the oldest closed first.
pub const MAX_IDLE_PER_ORIGIN: usize = 64;

/// Idle connections by origin; HTTP/2 connections stay listed while in use, to be shared.
#[derive(Debug)]
pub struct ConnectionPool {
    connector: HttpsConnector<HttpConnector>,
    idle_timeout: Duration,
    max_idle: usize,
    /// Never shrinks, so an origin's index stays valid.
    origins: Mutex<Vec<OriginEntry>>,
    /// Whether the task that closes expired idle connections runs.
    sweeping: AtomicBool,
}

#[derive(Debug)]
struct OriginEntry {
    origin: Origin,
    /// What HTTP/1 requests name in `Host`.
    host: HeaderValue,
    /// Oldest first: the newest is reused first, so the oldest go idle long enough to expire.
    idle: Vec<Idle>,
    /// Set while a connection to the origin is being made, so requests that find none idle
    /// can wait for it rather than each open their own (which HTTP/2 would share).
    connecting: Option<Arc<tokio::sync::Notify>>,
    /// Learned from the first connection: whether the origin chose HTTP/2.
    speaks_http2: Option<bool>,
}

#[derive(Debug)]
struct Idle {
    sender: Sender,
    since: Instant,
}

#[derive(Debug)]
enum Sender {
    Http1(http1::SendRequest<Body>),
    Http2(http2::SendRequest<Body>),
}

impl ConnectionPool {
    pub fn new(connector: HttpsConnector<HttpConnector>, idle_timeout: Duration) -> Self {
        Self::with_max_idle(connector, idle_timeout, MAX_IDLE_PER_ORIGIN)
    }

    pub fn with_max_idle(
        connector: HttpsConnector<HttpConnector>,
        idle_timeout: Duration,
        max_idle: usize,
    ) -> Self {
        Self {
            connector,
            idle_timeout,
            max_idle,
            origins: Mutex::new(Vec::new()),
            sweeping: AtomicBool::new(false),
        }
    }

    /// Sends a request, whose URI is its path and query, to `origin` on an idle connection
    /// (unless `reuse` asks for a fresh one), or on a new one. An HTTP/1 connection comes
    /// back to the pool when the answer's body has been read to its end.
    pub async fn send(
        self: &Arc<Self>,
        origin: &Origin,
        mut request: http::Request<Body>,
        reuse: Reuse,
    ) -> Result<http::Response<PooledBody>, SendFailure> {
        let (slot, idle) = self.take_idle(origin, reuse).map_err(SendFailure::fatal)?;
        let ready = match idle {
            Some(sender) => self.ready(slot, sender).await,
            None => None,
        };
        // Boxed: connecting is rare, and its future (TLS, HTTP/2 handshake) would make every
        // request's future several times larger.
        let connected = match (ready, reuse) {
            (Some(sender), _) => Ok((sender, true)),
            (None, Reuse::Pooled) => Box::pin(self.connect_or_share(slot)).await,
            (None, Reuse::Fresh) => Box::pin(self.connect(slot))
                .await
                .map(|sender| (sender, false)),
        };
        let (sender, reused) = match connected {
            Ok(connected) => connected,
            // Nothing reached the upstream.
            Err(error) => return Err(SendFailure::cannot_connect(error)),
        };
        let sent = Instant::now();
        let bills_nothing = matches!(
            *request.method(),
            http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
        );
        // `try_send_request` hands the request back when it never left.
        let failed = |mut error: hyper::client::conn::TrySendError<http::Request<Body>>| {
            let unsent = error.take_message().is_some();
            let error = error.into_error();
            let closed = closed_before_an_answer(&error);
            let stale =
                bills_nothing && reused && sent.elapsed() < STALE_CONNECTION_WINDOW && closed;
            let replayable = unsent || stale;
            let error: Error = if closed && !replayable {
                Box::new(MayHaveArrived(error))
            } else {
                error.into()
            };
            SendFailure {
                error,
                replayable,
                cannot_connect: false,
            }
        };
        match sender {
            Sender::Http1(mut sender) => {
                let host = self.lock()[slot].host.clone();
                request.headers_mut().entry(header::HOST).or_insert(host);
                let response = sender.try_send_request(request).await.map_err(failed)?;
                let home = Some(Home {
                    pool: self.clone(),
                    slot,
                    sender,
                });
                Ok(response.map(|body| PooledBody { body, home }))
            }
            Sender::Http2(mut sender) => {
                let url = self.url(slot, request.uri()).map_err(SendFailure::fatal)?;
                *request.uri_mut() = url;
                let response = sender.try_send_request(request).await.map_err(failed)?;
                Ok(response.map(|body| PooledBody { body, home: None }))
            }
        }
    }

    /// A new connection to the origin in `slot`; or, when one is already being made and the
    /// origin may speak HTTP/2, that one once it is up (`true`: shared, not new).
    async fn connect_or_share(self: &Arc<Self>, slot: usize) -> Result<(Sender, bool), Error> {
        loop {
            let in_progress = {
                let mut origins = self.lock();
                let entry = &mut origins[slot];
                match (&entry.connecting, entry.speaks_http2) {
                    // HTTP/1 connections are not shared: no use waiting for another's.
                    (_, Some(false)) => None,
                    (Some(notify), _) => Some(notify.clone()),
                    (None, _) => {
                        entry.connecting = Some(Arc::new(tokio::sync::Notify::new()));
                        None
                    }
                }
            };
            let Some(notify) = in_progress else {
                return self.connect(slot).await.map(|sender| (sender, false));
            };
            // Registered before the lock is taken again, so the wake-up cannot be missed.
            let woken = notify.notified();
            if self.lock()[slot].connecting.is_none() {
                continue;
            }
            let _ = tokio::time::timeout(super::CONNECT_TIMEOUT, woken).await;
            if let Some(sender) = self.take_idle_in(slot) {
                return Ok((sender, true));
            }
        }
    }

    /// `sender` once the previous exchange on it has wound down, or else the origin's next
    /// idle one; `None` when every one turned out closed.
    async fn ready(&self, slot: usize, mut sender: Sender) -> Option<Sender> {
        loop {
            if let Sender::Http1(http1) = &mut sender
                && http1.ready().await.is_err()
            {
                sender = self.take_idle_in(slot)?;
                continue;
            }
            return Some(sender);
        }
    }

    /// The origin's slot, made on first use, and its newest live idle connection (none when
    /// a fresh one is asked for).
    fn take_idle(&self, origin: &Origin, reuse: Reuse) -> Result<(usize, Option<Sender>), Error> {
        let mut origins = self.lock();
        let slot = match origins.iter().position(|entry| entry.origin.is(origin)) {
            Some(slot) => slot,
            None => {
                origins.push(OriginEntry::new(origin)?);
                origins.len() - 1
            }
        };
        let idle = match reuse {
            Reuse::Pooled => self.newest_idle(&mut origins[slot].idle),
            Reuse::Fresh => None,
        };
        Ok((slot, idle))
    }

    fn take_idle_in(&self, slot: usize) -> Option<Sender> {
        self.newest_idle(&mut self.lock()[slot].idle)
    }

    fn newest_idle(&self, idle: &mut Vec<Idle>) -> Option<Sender> {
        let now = Instant::now();
        while let Some(newest) = idle.last_mut() {
            if now.duration_since(newest.since) > self.idle_timeout {
                // Every older one has been idle longer still.
                idle.clear();
                return None;
            }
            match &newest.sender {
                Sender::Http1(sender) if !sender.is_closed() => {
                    return idle.pop().map(|idle| idle.sender);
                }
                Sender::Http2(sender) if !sender.is_closed() => {
                    // Shared, so it stays listed; in use, so it is not idle.
                    newest.since = now;
                    return Some(Sender::Http2(sender.clone()));
                }
                _ => drop(idle.pop()),
            }
        }
        None
    }

    /// The absolute URL of `path` on the origin in `slot`.
    fn url(&self, slot: usize, path: &Uri) -> Result<Uri, Error> {
        self.lock()[slot].origin.url(path_of(path))
    }

    /// Opens a connection; whatever happens, requests waiting on it are told it is done.
    async fn connect(self: &Arc<Self>, slot: usize) -> Result<Sender, Error> {
        struct Done<'a>(&'a ConnectionPool, usize, Option<bool>);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                let mut origins = self.0.lock();
                let entry = &mut origins[self.1];
                entry.speaks_http2 = self.2.or(entry.speaks_http2);
                if let Some(notify) = entry.connecting.take() {
                    notify.notify_waiters();
                }
            }
        }
        self.sweep_in_the_background();
        let mut done = Done(self, slot, None);
        let root = self.url(slot, &Uri::from_static("/"))?;
        let io = self.connector.clone().oneshot(root).await?;
        if io.connected().is_negotiated_h2() {
            let (sender, connection) = http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(connection);
            self.put_back(slot, Sender::Http2(sender.clone()));
            done.2 = Some(true);
            Ok(Sender::Http2(sender))
        } else {
            let (sender, connection) = http1::handshake(io).await?;
            tokio::spawn(connection);
            done.2 = Some(false);
            Ok(Sender::Http1(sender))
        }
    }

    fn put_back(&self, slot: usize, sender: Sender) {
        let now = Instant::now();
        let idle = &mut self.lock()[slot].idle;
        idle.push(Idle { sender, since: now });
        self.drop_expired(idle, now);
        let excess = idle.len().saturating_sub(self.max_idle);
        if excess > 0 {
            idle.drain(..excess);
        }
    }

    fn drop_expired(&self, idle: &mut Vec<Idle>, now: Instant) {
        let expired = idle
            .iter()
            .take_while(|idle| now.duration_since(idle.since) > self.idle_timeout)
            .count();
        if expired > 0 {
            idle.drain(..expired);
        }
    }

    /// Closes idle connections past their time even when their origin sees no more
    /// requests: a task per pool, started with its first connection, that ends with it.
    fn sweep_in_the_background(self: &Arc<Self>) {
        if self.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        let pool: Weak<Self> = Arc::downgrade(self);
        let every = (self.idle_timeout / 2).max(Duration::from_millis(10));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(pool) = pool.upgrade() else { return };
                let now = Instant::now();
                for entry in pool.lock().iter_mut() {
                    pool.drop_expired(&mut entry.idle, now);
                }
            }
        });
    }

    /// How many connections to `origin` sit idle (HTTP/2 ones count while listed).
    #[cfg(test)]
    pub fn idle_count(&self, origin: &Origin) -> usize {
        self.lock()
            .iter()
            .find(|entry| entry.origin.is(origin))
            .map_or(0, |entry| entry.idle.len())
    }

    /// The list stays consistent whatever a panicking holder was doing.
    fn lock(&self) -> MutexGuard<'_, Vec<OriginEntry>> {
        self.origins.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl OriginEntry {
    fn new(origin: &Origin) -> Result<Self, Error> {
        Ok(Self {
            // This worker's own copy, so requests on other workers never contend for it.
            origin: origin.unshared()?,
            host: host_header(origin)?,
            idle: Vec::new(),
            connecting: None,
            speaks_http2: None,
        })
    }
}

/// A request written whole on a connection that then closed with no answer.
#[derive(Debug, thiserror::Error)]
#[error(
    "the connection closed after the request was sent, so it may have reached the provider; \
     not sent again ({0})"
)]
struct MayHaveArrived(hyper::Error);

/// Whether a request failed because its connection closed or was reset before any answer
/// came (rather than, say, a malformed answer).
fn closed_before_an_answer(error: &hyper::Error) -> bool {
    if error.is_incomplete_message() || error.is_closed() || error.is_canceled() {
        return true;
    }
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            );
        }
        source = cause.source();
    }
    false
}

/// The host, with the port only when it is not the scheme's default.
pub(super) fn host_header(origin: &Origin) -> Result<HeaderValue, Error> {
    let host = origin.authority.host();
    let default_port = match origin.scheme.as_str() {
        "https" => Some(443),
        "http" => Some(80),
        _ => None,
    };
    let value = match origin.authority.port_u16() {
        Some(port) if Some(port) != default_port => {
            HeaderValue::try_from(format!("{host}:{port}"))?
        }
        _ => HeaderValue::try_from(host)?,
    };
    Ok(value)
}

/// Where an HTTP/1 connection goes back to.
#[derive(Debug)]
struct Home {
    pool: Arc<ConnectionPool>,
    slot: usize,
    sender: http1::SendRequest<Body>,
}

/// An answer's body that hands its connection back to the pool at its end. Dropped before
/// then, the connection closes with it, as the rest of its answer is still on the wire.
#[derive(Debug)]
pub struct PooledBody {
    body: Incoming,
    home: Option<Home>,
}

impl http_body::Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        match &frame {
            Poll::Ready(None) => {
                if let Some(home) = this.home.take() {
                    home.pool.put_back(home.slot, Sender::Http1(home.sender));
                }
            }
            Poll::Ready(Some(Err(_))) => this.home = None,
            _ => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests;
