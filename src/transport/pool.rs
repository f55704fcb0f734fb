//! The upstream connections of one `serve` worker.
//!
//! hyper-util's pooled client is built to be shared between threads: per request it hashes a
//! pool key, builds a connect future that it then drops, and spawns a task to hand the
//! connection back. In a minimal proxy that costs 9,400 of 48,900 instructions per request.
//! A worker runs its own single-threaded runtime and never shares its connections, so its pool
//! is a short list per origin. Connecting, TLS and ALPN stay hyper-rustls's, and the HTTP/1
//! and HTTP/2 connections hyper's.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
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

use super::{Error, Origin, path_of};

type Body = Full<Bytes>;

/// Idle connections by origin; HTTP/2 connections stay listed while in use, to be shared.
#[derive(Debug)]
pub struct ConnectionPool {
    connector: HttpsConnector<HttpConnector>,
    idle_timeout: Duration,
    /// Never shrinks, so an origin's index stays valid.
    origins: Mutex<Vec<OriginEntry>>,
}

#[derive(Debug)]
struct OriginEntry {
    origin: Origin,
    /// What HTTP/1 requests name in `Host`.
    host: HeaderValue,
    /// Oldest first: the newest is reused first, so the oldest go idle long enough to expire.
    idle: Vec<Idle>,
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
        Self {
            connector,
            idle_timeout,
            origins: Mutex::new(Vec::new()),
        }
    }

    /// Sends a request, whose URI is its path and query, to `origin` on an idle connection,
    /// or on a new one. An HTTP/1 connection comes back to the pool when the answer's body
    /// has been read to its end.
    pub async fn send(
        self: &Arc<Self>,
        origin: &Origin,
        mut request: http::Request<Body>,
    ) -> Result<http::Response<PooledBody>, Error> {
        let (slot, idle) = self.take_idle(origin)?;
        let ready = match idle {
            Some(sender) => self.ready(slot, sender).await,
            None => None,
        };
        let sender = match ready {
            Some(sender) => sender,
            // Boxed: connecting is rare, and its future (TLS, HTTP/2 handshake) would make
            // every request's future several times larger.
            None => Box::pin(self.connect(slot)).await?,
        };
        match sender {
            Sender::Http1(mut sender) => {
                let host = self.lock()[slot].host.clone();
                request.headers_mut().entry(header::HOST).or_insert(host);
                let response = sender.send_request(request).await?;
                let home = Some(Home {
                    pool: self.clone(),
                    slot,
                    sender,
                });
                Ok(response.map(|body| PooledBody { body, home }))
            }
            Sender::Http2(mut sender) => {
                let url = self.url(slot, request.uri())?;
                *request.uri_mut() = url;
                let response = sender.send_request(request).await?;
                Ok(response.map(|body| PooledBody { body, home: None }))
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

    async fn connect(&self, slot: usize) -> Result<Sender, Error> {
        let root = self.url(slot, &Uri::from_static("/"))?;
        let io = self.connector.clone().oneshot(root).await?;
        if io.connected().is_negotiated_h2() {
            let (sender, connection) = http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(connection);
            self.put_back(slot, Sender::Http2(sender.clone()));
            Ok(Sender::Http2(sender))
        } else {
            let (sender, connection) = http1::handshake(io).await?;
            tokio::spawn(connection);
            Ok(Sender::Http1(sender))
        }
    }

    fn put_back(&self, slot: usize, sender: Sender) {
        let now = Instant::now();
        let idle = &mut self.lock()[slot].idle;
        idle.push(Idle { sender, since: now });
        let expired = idle
            .iter()
            .take_while(|idle| now.duration_since(idle.since) > self.idle_timeout)
            .count();
        idle.drain(..expired);
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
        })
    }
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
