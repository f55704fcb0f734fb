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
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Uri, header};
use http_body::{Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::rt::TokioExecutor;
use tower::ServiceExt;

use super::Error;

type Body = Full<Bytes>;

/// Idle connections by origin; HTTP/2 connections stay listed while in use, to be shared.
#[derive(Debug)]
pub struct ConnectionPool {
    connector: HttpsConnector<HttpConnector>,
    idle_timeout: Duration,
    origins: Mutex<Vec<Origin>>,
}

#[derive(Debug, Clone)]
struct OriginKey {
    scheme: Scheme,
    authority: Authority,
}

#[derive(Debug)]
struct Origin {
    key: OriginKey,
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

    /// Sends a request with an absolute URL on an idle connection to its origin, or on a
    /// new one. An HTTP/1 connection comes back to the pool when the answer's body has been
    /// read to its end.
    pub async fn send(
        self: &Arc<Self>,
        mut request: http::Request<Body>,
    ) -> Result<http::Response<PooledBody>, Error> {
        let key = OriginKey::of(request.uri())?;
        let sender = match self.checkout(&key).await {
            Some(sender) => sender,
            None => self.connect(&key, request.uri()).await?,
        };
        match sender {
            Sender::Http1(mut sender) => {
                to_origin_form(&mut request, self.host_of(&key)?);
                let response = sender.send_request(request).await?;
                let home = Some(Home {
                    pool: self.clone(),
                    key,
                    sender,
                });
                Ok(response.map(|body| PooledBody { body, home }))
            }
            Sender::Http2(mut sender) => {
                let response = sender.send_request(request).await?;
                Ok(response.map(|body| PooledBody { body, home: None }))
            }
        }
    }

    /// A live idle connection, if the origin has one.
    async fn checkout(&self, key: &OriginKey) -> Option<Sender> {
        loop {
            match self.take_idle(key)? {
                // Ready once the previous exchange has wound down; an error means closed.
                Sender::Http1(mut sender) => {
                    if sender.ready().await.is_ok() {
                        return Some(Sender::Http1(sender));
                    }
                }
                http2 => return Some(http2),
            }
        }
    }

    fn take_idle(&self, key: &OriginKey) -> Option<Sender> {
        let mut origins = self.lock();
        let idle = &mut origins.iter_mut().find(|origin| origin.key.is(key))?.idle;
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

    async fn connect(&self, key: &OriginKey, uri: &Uri) -> Result<Sender, Error> {
        let io = self.connector.clone().oneshot(uri.clone()).await?;
        if io.connected().is_negotiated_h2() {
            let (sender, connection) = http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(connection);
            self.put_back(key, Sender::Http2(sender.clone()));
            Ok(Sender::Http2(sender))
        } else {
            let (sender, connection) = http1::handshake(io).await?;
            tokio::spawn(connection);
            Ok(Sender::Http1(sender))
        }
    }

    fn host_of(&self, key: &OriginKey) -> Result<HeaderValue, Error> {
        Ok(origin_in(&mut self.lock(), key)?.host.clone())
    }

    fn put_back(&self, key: &OriginKey, sender: Sender) {
        let now = Instant::now();
        let mut origins = self.lock();
        let Ok(origin) = origin_in(&mut origins, key) else {
            return;
        };
        let idle = &mut origin.idle;
        idle.push(Idle { sender, since: now });
        let expired = idle
            .iter()
            .take_while(|idle| now.duration_since(idle.since) > self.idle_timeout)
            .count();
        idle.drain(..expired);
    }

    /// The list stays consistent whatever a panicking holder was doing.
    fn lock(&self) -> MutexGuard<'_, Vec<Origin>> {
        self.origins.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl OriginKey {
    /// Byte for byte: `Authority`'s own comparison ignores case one byte at a time, and the
    /// URLs of one upstream are spelled the same every time.
    fn is(&self, other: &OriginKey) -> bool {
        self.authority.as_str() == other.authority.as_str() && self.scheme == other.scheme
    }

    fn of(uri: &Uri) -> Result<Self, Error> {
        match (uri.scheme(), uri.authority()) {
            (Some(scheme), Some(authority)) => Ok(Self {
                scheme: scheme.clone(),
                authority: authority.clone(),
            }),
            _ => Err(format!("not an absolute URL: {uri}").into()),
        }
    }
}

/// The origin's entry, made on first use.
fn origin_in<'a>(origins: &'a mut Vec<Origin>, key: &OriginKey) -> Result<&'a mut Origin, Error> {
    let index = match origins.iter().position(|origin| origin.key.is(key)) {
        Some(index) => index,
        None => {
            origins.push(Origin {
                host: host_header(key)?,
                key: key.clone(),
                idle: Vec::new(),
            });
            origins.len() - 1
        }
    };
    Ok(&mut origins[index])
}

/// An HTTP/1 request names its host in `Host` and carries only the path.
fn to_origin_form(request: &mut http::Request<Body>, host: HeaderValue) {
    request.headers_mut().entry(header::HOST).or_insert(host);
    let path = request
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    *request.uri_mut() = Uri::from(path);
}

/// The host, with the port only when it is not the scheme's default.
fn host_header(key: &OriginKey) -> Result<HeaderValue, Error> {
    let host = key.authority.host();
    let default_port = match key.scheme.as_str() {
        "https" => Some(443),
        "http" => Some(80),
        _ => None,
    };
    let value = match key.authority.port_u16() {
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
    key: OriginKey,
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
                    home.pool.put_back(&home.key, Sender::Http1(home.sender));
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
        let request = http::Request::get(url).body(Body::default()).unwrap();
        let response = pool.send(request).await.unwrap();
        let body = http_body_util::BodyExt::collect(response.into_body()).await;
        String::from_utf8(body.unwrap().to_bytes().to_vec()).unwrap()
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
        let key = OriginKey::of(&url.parse().unwrap()).unwrap();
        host_header(&key).unwrap().to_str().unwrap().to_owned()
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
    fn http1_requests_carry_the_path_and_a_host() {
        let mut request = http::Request::new(Body::default());
        *request.uri_mut() = "http://127.0.0.1:9/v1/messages?beta=true".parse().unwrap();
        to_origin_form(&mut request, HeaderValue::from_static("127.0.0.1:9"));
        assert_eq!(request.uri(), "/v1/messages?beta=true");
        assert_eq!(request.headers()[header::HOST], "127.0.0.1:9");
    }

    #[test]
    fn only_absolute_urls_have_an_origin() {
        assert!(OriginKey::of(&"/v1/messages".parse().unwrap()).is_err());
        let key = OriginKey::of(&"https://api.openai.com/v1".parse().unwrap()).unwrap();
        assert_eq!(key.authority, "api.openai.com");
    }
}
