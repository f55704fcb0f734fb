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

use super::{Error, Origin, SendFailure, path_of};

type Body = Full<Bytes>;

/// How soon after a request went out on a reused connection a close with no answer still
/// means the server was closing that idle connection as we wrote: the request was never
/// read, and may be sent again. Later, the upstream may have started on it.
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

    /// Sends a request, whose URI is its path and query, to `origin` on an idle connection,
    /// or on a new one. An HTTP/1 connection comes back to the pool when the answer's body
    /// has been read to its end.
    pub async fn send(
        self: &Arc<Self>,
        origin: &Origin,
        mut request: http::Request<Body>,
    ) -> Result<http::Response<PooledBody>, SendFailure> {
        let (slot, idle) = self.take_idle(origin).map_err(SendFailure::fatal)?;
        let ready = match idle {
            Some(sender) => self.ready(slot, sender).await,
            None => None,
        };
        let (sender, reused) = match ready {
            Some(sender) => (sender, true),
            // Boxed: connecting is rare, and its future (TLS, HTTP/2 handshake) would make
            // every request's future several times larger.
            None => match Box::pin(self.connect_or_share(slot)).await {
                Ok((sender, shared)) => (sender, shared),
                // Nothing reached the upstream.
                Err(error) => return Err(SendFailure::replayable(error)),
            },
        };
        let sent = Instant::now();
        // `try_send_request` hands the request back when it never left.
        let failed = |mut error: hyper::client::conn::TrySendError<http::Request<Body>>| {
            let unsent = error.take_message().is_some();
            let error = error.into_error();
            let stale = reused
                && sent.elapsed() < STALE_CONNECTION_WINDOW
                && closed_before_an_answer(&error);
            SendFailure {
                error: error.into(),
                replayable: unsent || stale,
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

    /// The origin's slot, made on first use, and its newest live idle connection.
    fn take_idle(&self, origin: &Origin) -> Result<(usize, Option<Sender>), Error> {
        let mut origins = self.lock();
        let slot = match origins.iter().position(|entry| entry.origin.is(origin)) {
            Some(slot) => slot,
            None => {
                origins.push(OriginEntry::new(origin)?);
                origins.len() - 1
            }
        };
        Ok((slot, self.newest_idle(&mut origins[slot].idle)))
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
fn host_header(origin: &Origin) -> Result<HeaderValue, Error> {
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
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use hyper_util::rt::TokioIo;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

    use super::*;

    fn ring() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// An HTTPS server on 127.0.0.1 that offers only HTTP/2 and counts its connections;
    /// it answers with the version and URL it saw.
    async fn http2_server() -> (u16, CertificateDer<'static>, Arc<AtomicUsize>) {
        let issued = rcgen::generate_simple_self_signed(["localhost".to_owned()]).unwrap();
        let certificate = issued.cert.der().clone();
        let key = PrivatePkcs8KeyDer::from(issued.signing_key.serialize_der());
        let mut config = rustls::ServerConfig::builder_with_provider(ring())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![certificate.clone()], PrivateKeyDer::Pkcs8(key))
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let tls = acceptor.accept(tcp).await.unwrap();
                    let echo = hyper::service::service_fn(|request: http::Request<Incoming>| {
                        let seen = format!("{:?} {}", request.version(), request.uri());
                        async move {
                            Ok::<_, std::convert::Infallible>(http::Response::new(Body::from(seen)))
                        }
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), echo)
                        .await;
                });
            }
        });
        (port, certificate, connections)
    }

    fn pool_trusting(certificate: CertificateDer<'static>) -> Arc<ConnectionPool> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(certificate).unwrap();
        let tls = rustls::ClientConfig::builder_with_provider(ring())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = super::super::https_connector(tls);
        Arc::new(ConnectionPool::new(connector, Duration::from_secs(60)))
    }

    async fn answer(pool: &Arc<ConnectionPool>, url: &str) -> String {
        let url: Uri = url.parse().unwrap();
        let origin = Origin::of(&url).unwrap();
        let request = http::Request::get(url.path_and_query().unwrap().as_str())
            .body(Body::default())
            .unwrap();
        let response = pool.send(&origin, request).await.unwrap();
        let body = http_body_util::BodyExt::collect(response.into_body()).await;
        String::from_utf8(body.unwrap().to_bytes().to_vec()).unwrap()
    }

    /// A plain HTTP/1 server on 127.0.0.1 that answers with the URL and `Host` it saw.
    async fn http1_server() -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let echo = hyper::service::service_fn(|request: http::Request<Incoming>| {
                    let host = request.headers()[header::HOST].to_str().unwrap();
                    let seen = format!("{} host={host}", request.uri());
                    async move {
                        Ok::<_, std::convert::Infallible>(http::Response::new(Body::from(seen)))
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), echo),
                );
            }
        });
        port
    }

    #[tokio::test]
    async fn http1_requests_carry_the_path_and_a_host() {
        let port = http1_server().await;
        let pool = Arc::new(ConnectionPool::new(
            super::super::https_connector(super::super::tls_config().unwrap()),
            Duration::from_secs(60),
        ));
        let url = format!("http://127.0.0.1:{port}/v1/messages?beta=true");
        let expected = format!("/v1/messages?beta=true host=127.0.0.1:{port}");
        assert_eq!(answer(&pool, &url).await, expected);
        assert_eq!(
            answer(&pool, &url).await,
            expected,
            "on the pooled connection"
        );
    }

    #[tokio::test]
    async fn http2_chosen_by_alpn_is_shared_by_concurrent_requests() {
        let (port, certificate, connections) = http2_server().await;
        let pool = pool_trusting(certificate);
        let url = format!("https://localhost:{port}/v1/messages?beta=true");
        assert_eq!(answer(&pool, &url).await, format!("HTTP/2.0 {url}"));
        let concurrent = (0..4).map(|_| answer(&pool, &url));
        for seen in futures_util::future::join_all(concurrent).await {
            assert_eq!(seen, format!("HTTP/2.0 {url}"));
        }
        assert_eq!(connections.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn concurrent_first_requests_to_an_http2_origin_open_one_connection() {
        let (port, certificate, connections) = http2_server().await;
        let pool = pool_trusting(certificate);
        let url = format!("https://localhost:{port}/v1/messages");
        let concurrent = (0..6).map(|_| answer(&pool, &url));
        for seen in futures_util::future::join_all(concurrent).await {
            assert_eq!(seen, format!("HTTP/2.0 {url}"));
        }
        assert_eq!(connections.load(Ordering::SeqCst), 1);
    }

    /// An HTTP/1 server that keeps count of its open connections.
    async fn counting_http1_server() -> (u16, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = Arc::new(AtomicUsize::new(0));
        let counted = open.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let counted = counted.clone();
                tokio::spawn(async move {
                    let slow = hyper::service::service_fn(|_: http::Request<Incoming>| async {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok::<_, std::convert::Infallible>(http::Response::new(Body::from("ok")))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), slow)
                        .await;
                    counted.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        (port, open)
    }

    fn plain_pool(idle_timeout: Duration, max_idle: usize) -> Arc<ConnectionPool> {
        let connector = super::super::https_connector(super::super::tls_config().unwrap());
        Arc::new(ConnectionPool::with_max_idle(
            connector,
            idle_timeout,
            max_idle,
        ))
    }

    #[tokio::test]
    async fn idle_connections_are_capped_and_closed_without_more_traffic() {
        let (port, open) = counting_http1_server().await;
        let pool = plain_pool(Duration::from_millis(200), 2);
        let url = format!("http://127.0.0.1:{port}/");
        let concurrent = (0..5).map(|_| answer(&pool, &url));
        futures_util::future::join_all(concurrent).await;
        let origin = Origin::of(&url.parse().unwrap()).unwrap();
        assert_eq!(pool.idle_count(&origin), 2, "at most the cap stays idle");
        // No request follows: the idle connections still close once their time is up.
        let deadline = Instant::now() + Duration::from_secs(2);
        while open.load(Ordering::SeqCst) > 0 {
            assert!(
                Instant::now() < deadline,
                "idle connections were never closed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(pool.idle_count(&origin), 0);
    }

    /// An HTTP/1 server that answers the first request on a connection, then reads the next
    /// and closes the connection after `pause`, without an answer.
    async fn closing_server(pause: Duration) -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        async fn read_head(tcp: &mut tokio::net::TcpStream) -> bool {
            let mut seen = Vec::new();
            let mut byte = [0u8; 1];
            while !seen.ends_with(b"\r\n\r\n") {
                if tcp.read(&mut byte).await.unwrap_or(0) == 0 {
                    return false;
                }
                seen.push(byte[0]);
            }
            true
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                tokio::spawn(async move {
                    if read_head(&mut tcp).await {
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        tcp.write_all(answer).await.unwrap();
                    }
                    if read_head(&mut tcp).await {
                        tokio::time::sleep(pause).await;
                    }
                });
            }
        });
        port
    }

    async fn failure(pool: &Arc<ConnectionPool>, url: &str) -> SendFailure {
        let url: Uri = url.parse().unwrap();
        let origin = Origin::of(&url).unwrap();
        let request = http::Request::post("/v1/messages")
            .body(Body::from("{}"))
            .unwrap();
        pool.send(&origin, request).await.unwrap_err()
    }

    #[tokio::test]
    async fn only_a_request_that_cannot_have_been_read_may_be_sent_again() {
        let refused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead = refused.local_addr().unwrap().port();
        drop(refused);
        let pool = plain_pool(Duration::from_secs(60), 8);
        let failed = failure(&pool, &format!("http://127.0.0.1:{dead}/")).await;
        assert!(failed.replayable, "the connection was never made");

        // A reused connection that closes at once with no answer: the stale keep-alive race.
        let quick = closing_server(Duration::ZERO).await;
        let url = format!("http://127.0.0.1:{quick}/");
        assert_eq!(answer(&pool, &url).await, "ok");
        assert!(failure(&pool, &url).await.replayable);

        // Closed later: the upstream may have started on it.
        let slow = closing_server(Duration::from_millis(1200)).await;
        let url = format!("http://127.0.0.1:{slow}/");
        assert_eq!(answer(&pool, &url).await, "ok");
        assert!(!failure(&pool, &url).await.replayable);
    }

    #[tokio::test]
    async fn a_new_connection_that_closes_after_reading_is_not_sent_again() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut buffer = [0u8; 1024];
            let _ = tcp.read(&mut buffer).await;
        });
        let pool = plain_pool(Duration::from_secs(60), 8);
        let failed = failure(&pool, &format!("http://127.0.0.1:{port}/")).await;
        assert!(!failed.replayable, "{}", failed.error);
    }

    fn host_of(url: &str) -> String {
        let origin = Origin::of(&url.parse().unwrap()).unwrap();
        host_header(&origin).unwrap().to_str().unwrap().to_owned()
    }

    #[test]
    fn host_names_the_port_only_when_it_is_not_the_default() {
        assert_eq!(host_of("https://api.anthropic.com/v1"), "api.anthropic.com");
        assert_eq!(
            host_of("https://api.anthropic.com:443/v1"),
            "api.anthropic.com"
        );
        assert_eq!(host_of("http://127.0.0.1:8080/v1"), "127.0.0.1:8080");
        assert_eq!(host_of("http://[::1]:9000/"), "[::1]:9000");
    }

    #[test]
    fn only_absolute_urls_have_an_origin() {
        assert!(Origin::of(&"/v1/messages".parse().unwrap()).is_err());
        let origin = Origin::of(&"https://api.openai.com/v1".parse().unwrap()).unwrap();
        assert_eq!(origin.authority, "api.openai.com");
        let copy = origin.unshared().unwrap();
        assert!(copy.is(&origin));
        assert_ne!(
            copy.authority.as_str().as_ptr(),
            origin.authority.as_str().as_ptr()
        );
    }
}
