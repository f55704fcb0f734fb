//! The HTTP client every subcommand sends with: hyper's pooled client over rustls.
//!
//! A general-purpose client wraps each request in layers a bridge does not want (redirects,
//! retries, a URL re-parsed per answer); on the proxy's hot path they cost more than the
//! bridge's own work. Requests here carry a body that is already in memory, so a failover can
//! replay it without copying.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// A request as aibridge sends it: the body is whole and cheap to clone.
pub type Request = http::Request<Full<Bytes>>;
/// An answer whose body has not been read yet.
pub type Response = http::Response<Incoming>;
/// Why a request got no answer (connect, TLS, or the connection broke).
pub type SendError = hyper_util::client::legacy::Error;

const USER_AGENT: &str = concat!("aibridge/", env!("CARGO_PKG_VERSION"));

/// How long a pooled upstream connection may sit unused.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
#[error("cannot set up TLS: {0}")]
pub struct TlsSetupError(#[from] rustls::Error);

/// A pooled HTTP/1.1 and HTTP/2 (by ALPN) client; clones share the pool.
#[derive(Debug, Clone)]
pub struct HttpClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl HttpClient {
    pub fn new() -> Result<Self, TlsSetupError> {
        let mut http = HttpConnector::new();
        // Small requests must not wait on Nagle's algorithm.
        http.set_nodelay(true);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        // The connector sees https URLs too, and hands them to rustls.
        http.enforce_http(false);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_config()?)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .build(https);
        Ok(Self { client })
    }

    /// Sends one request; no retries, no redirects. Adds `user-agent` and `accept` when the
    /// request has none.
    pub async fn send(&self, mut request: Request) -> Result<Response, SendError> {
        let headers = request.headers_mut();
        headers
            .entry(header::USER_AGENT)
            .or_insert(HeaderValue::from_static(USER_AGENT));
        headers
            .entry(header::ACCEPT)
            .or_insert(HeaderValue::from_static("*/*"));
        self.client.request(request).await
    }
}

/// rustls with the operating system's trust store, as browsers and curl use it.
fn tls_config() -> Result<rustls::ClientConfig, TlsSetupError> {
    use rustls_platform_verifier::BuilderVerifierExt;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_platform_verifier()?
        .with_no_client_auth();
    Ok(config)
}

/// Reads an answer's whole body.
pub async fn read_body(body: Incoming) -> Result<Bytes, hyper::Error> {
    Ok(body.collect().await?.to_bytes())
}

/// The next chunk of data of an answer's body; `None` at its end. Trailers are skipped.
pub async fn next_chunk(body: &mut Incoming) -> Option<Result<Bytes, hyper::Error>> {
    loop {
        match body.frame().await? {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    return Some(Ok(data));
                }
            }
            Err(error) => return Some(Err(error)),
        }
    }
}

/// The body's length when the answer declares it.
pub fn content_length(response: &Response) -> Option<u64> {
    hyper::body::Body::size_hint(response.body()).exact()
}
