//! The upstream connections of one `serve` worker.
//!
//! hyper-util's pooled client is built to be shared between threads: per request it hashes a
//! pool key, builds a connect future that it then drops, and spawns a task to hand the
//! connection back. In a minimal proxy that costs 9,400 of 48,900 instructions per request.
//! A worker runs its own single-threaded runtime and never shares its connections, so its pool
//! is a short list per origin. Connecting, TLS and ALPN stay hyper-rustls's, and the HTTP/1
//! and HTTP/2 connections hyper's.
//!
//! An HTTP/2 connection is shared by at most [`STREAMS_PER_CONNECTION`] requests at a time;
//! past that another is opened. hyper would instead queue the request until one of the
//! connection's streams ends, and a model's answer can stream for minutes.
//!
//! A failed request says whether it may be sent again (see [`SendFailure`]): only when the
//! upstream cannot have started on it.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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
use hyper_util::client::legacy::connect::{Connection as _, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tower::ServiceExt;

use super::{Error, Origin, Reuse, SendFailure, path_of};

type Body = Full<Bytes>;

/// How soon after a request went out on a reused connection a close with no answer still
/// means the server was closing that idle connection as we wrote. Only a request that bills
/// nothing (`GET`, `HEAD`, `OPTIONS`) is sent again then: a POST may have been read whole.
const STALE_CONNECTION_WINDOW: Duration = Duration::from_secs(1);

/// How many idle connections one origin keeps at most, the oldest closed first.
pub const MAX_IDLE_PER_ORIGIN: usize = 64;

/// How many requests share one HTTP/2 connection at most. RFC 9113 (6.5.2) recommends
/// that a server allow no fewer than 100 concurrent streams, and hyper does not tell what
/// the server allows, so 100 is what any such server takes without queueing. (Go's HTTP/2
/// client, by default, also opens another connection when one is full.)
pub const STREAMS_PER_CONNECTION: usize = 100;

/// How much of one HTTP/2 answer may arrive before its caller reads it: hyper's default.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;

/// How much of all a connection's answers may arrive unread: every stream's full window.
/// With hyper's default (5 MiB), three callers that stopped reading large answers would stall
/// every other request on the connection.
const CONNECTION_WINDOW: u32 = STREAMS_PER_CONNECTION as u32 * STREAM_WINDOW;

/// When an HTTP/2 connection that carries requests has been silent this long, it is pinged,
/// and closed unless the ping is answered as soon again. One that died without a word (a
/// NAT that forgot it, a network that changed) would otherwise hold each of its requests
/// until `response_timeout` or `stream_idle_timeout`, and keep being handed new ones. A
/// live server answers a ping however long its model takes.
const PING_AFTER_SILENCE: Duration = Duration::from_secs(20);

/// Idle connections by origin; HTTP/2 connections stay listed while in use, to be shared.
#[derive(Debug)]
pub struct ConnectionPool {
    connector: HttpsConnector<HttpConnector>,
    idle_timeout: Duration,
    max_idle: usize,
    streams_per_connection: usize,
    ping_after_silence: Duration,
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
    /// HTTP/2 connections are marked as they are taken, so among them the order is loose.
    idle: Vec<Idle>,
    /// Set while a connection to the origin is being made, so requests that find none idle
    /// can wait for it rather than each open their own (which HTTP/2 would share).
    connecting: Option<Arc<tokio::sync::Notify>>,
    /// Learned from the first connection: whether the origin chose HTTP/2.
    speaks_http2: Option<bool>,
}

#[derive(Debug)]
struct Idle {
    connection: Connection,
    /// When it was listed or, for HTTP/2, last taken.
    since: Instant,
}

/// A connection as the pool lists it.
#[derive(Debug)]
enum Connection {
    Http1(http1::SendRequest<Body>),
    Http2(Multiplexed),
}

/// A connection taken for one request.
#[derive(Debug)]
enum Sender {
    Http1(http1::SendRequest<Body>),
    Http2(http2::SendRequest<Body>, Stream),
}

/// An HTTP/2 connection and how many requests it carries.
#[derive(Debug, Clone)]
struct Multiplexed {
    sender: http2::SendRequest<Body>,
    streams: Arc<AtomicUsize>,
}

/// One request's place on an HTTP/2 connection, given back when it is dropped: when the
/// answer has been read to its end, or abandoned, or when it never came.
#[derive(Debug)]
struct Stream(Arc<AtomicUsize>);

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
            streams_per_connection: STREAMS_PER_CONNECTION,
            ping_after_silence: PING_AFTER_SILENCE,
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
                Ok(response.map(|body| PooledBody {
                    body,
                    home,
                    stream: None,
                }))
            }
            Sender::Http2(mut sender, stream) => {
                let url = self.url(slot, request.uri()).map_err(SendFailure::fatal)?;
                *request.uri_mut() = url;
                let response = sender.try_send_request(request).await.map_err(failed)?;
                Ok(response.map(|body| PooledBody {
                    body,
                    home: None,
                    stream: Some(stream),
                }))
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

    /// The newest live connection that can take a request; closed and expired ones met on
    /// the way are dropped.
    fn newest_idle(&self, idle: &mut Vec<Idle>) -> Option<Sender> {
        let now = Instant::now();
        for index in (0..idle.len()).rev() {
            let entry = &mut idle[index];
            if entry.expired(now, self.idle_timeout) || entry.connection.is_closed() {
                drop(idle.remove(index));
                continue;
            }
            match &entry.connection {
                // One request at a time, so it leaves the list while in use.
                Connection::Http1(_) => {
                    let Connection::Http1(sender) = idle.remove(index).connection else {
                        unreachable!("matched as HTTP/1 above")
                    };
                    return Some(Sender::Http1(sender));
                }
                // Shared, so it stays listed; a full one may have room later.
                Connection::Http2(shared) => {
                    if let Some(stream) = shared.open_stream(self.streams_per_connection) {
                        let sender = shared.sender.clone();
                        entry.since = now;
                        return Some(Sender::Http2(sender, stream));
                    }
                }
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
            let (sender, connection) = http2::Builder::new(TokioExecutor::new())
                .initial_stream_window_size(STREAM_WINDOW)
                .initial_connection_window_size(CONNECTION_WINDOW)
                .timer(TokioTimer::new())
                .keep_alive_interval(self.ping_after_silence)
                .keep_alive_timeout(self.ping_after_silence)
                .handshake(io)
                .await?;
            tokio::spawn(connection);
            let (shared, stream) = Multiplexed::with_first_stream(sender.clone());
            self.put_back(slot, Connection::Http2(shared));
            done.2 = Some(true);
            Ok(Sender::Http2(sender, stream))
        } else {
            let (sender, connection) = http1::handshake(io).await?;
            tokio::spawn(connection);
            done.2 = Some(false);
            Ok(Sender::Http1(sender))
        }
    }

    fn put_back(&self, slot: usize, connection: Connection) {
        let now = Instant::now();
        let idle = &mut self.lock()[slot].idle;
        idle.push(Idle {
            connection,
            since: now,
        });
        // Only the oldest are looked at, as this runs once a request; the sweep sees the rest.
        let expired = idle
            .iter()
            .take_while(|idle| idle.expired(now, self.idle_timeout))
            .count();
        let excess = (idle.len() - expired).saturating_sub(self.max_idle);
        if expired + excess > 0 {
            idle.drain(..expired + excess);
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
                    entry
                        .idle
                        .retain(|idle| !idle.expired(now, pool.idle_timeout));
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

impl Idle {
    /// Unused for longer than `timeout`; an HTTP/2 connection still carrying a request is in
    /// use however long ago it was last taken.
    fn expired(&self, now: Instant, timeout: Duration) -> bool {
        let busy = match &self.connection {
            Connection::Http1(_) => false,
            Connection::Http2(shared) => shared.carries_a_request(),
        };
        !busy && now.duration_since(self.since) > timeout
    }
}

impl Connection {
    fn is_closed(&self) -> bool {
        match self {
            Connection::Http1(sender) => sender.is_closed(),
            Connection::Http2(shared) => shared.sender.is_closed(),
        }
    }
}

impl Multiplexed {
    /// A new connection, and the place of the request it was opened for.
    fn with_first_stream(sender: http2::SendRequest<Body>) -> (Self, Stream) {
        let streams = Arc::new(AtomicUsize::new(1));
        let stream = Stream(streams.clone());
        (Self { sender, streams }, stream)
    }

    /// A place for one more request, unless `most` are already under way.
    // Relaxed: the count guards no other memory, and a worker's pool stays on its thread.
    fn open_stream(&self, most: usize) -> Option<Stream> {
        self.streams
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |open| {
                (open < most).then_some(open + 1)
            })
            .ok()
            .map(|_| Stream(self.streams.clone()))
    }

    fn carries_a_request(&self) -> bool {
        self.streams.load(Ordering::Relaxed) > 0
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
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
    /// Its HTTP/2 stream's place, freed at the end of the answer.
    stream: Option<Stream>,
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
                    home.pool
                        .put_back(home.slot, Connection::Http1(home.sender));
                }
                this.stream = None;
            }
            Poll::Ready(Some(Err(_))) => {
                this.home = None;
                this.stream = None;
            }
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
