//! The HTTP clients aibridge sends with, behind one request and response type.
//!
//! - reqwest, for the command line (`send`, `probe-keys`, `pool`): it honors `HTTPS_PROXY`,
//!   `NO_PROXY` and the like, and a one-off request does not feel its per-request layers.
//! - hyper's connections in a pool of each worker's own ([`pool`]), for `serve`'s forwarding:
//!   reqwest wraps each request in layers a bridge does not want (redirects, retries, the URL
//!   of every answer parsed again), and on the hot path they cost more than the bridge's own
//!   work. When a proxy is configured in the environment, `serve` uses reqwest too, so the
//!   proxy is honored.
//!
//! Requests carry a body that is already in memory, so a failover replays it without copying.

mod headers;
mod pool;

pub use headers::strip_hop_by_hop;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderValue, Uri, header};
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;

use pool::{ConnectionPool, PooledBody};

/// A request as aibridge sends it: the body is whole and cheap to clone.
pub type Request = http::Request<Bytes>;
/// An answer whose body has not been read yet.
pub type Response = http::Response<ResponseBody>;
/// Why a request got no answer (connect, TLS, or the connection broke), or a body broke.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// Which connection a request may go out on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reuse {
    /// An idle pooled one, or a new one.
    Pooled,
    /// A new one: for a request sent again, which must not meet another stale connection.
    Fresh,
}

/// A request that got no answer, and whether it may be sent again: only when the upstream
/// cannot have started on it (the connection was never made, or hyper handed the request back
/// unwritten). A request written whole is never sent twice, however soon the connection
/// closed: the upstream may have read it, and a long generation would be billed twice. Only
/// `GET`, `HEAD` and `OPTIONS`, which bill nothing, are also sent again when a reused
/// connection closed with no answer right after they went out.
#[derive(Debug)]
pub struct SendFailure {
    pub error: Error,
    pub replayable: bool,
    /// No connection could be made: nothing was sent.
    pub cannot_connect: bool,
}

impl SendFailure {
    pub fn cannot_connect(error: impl Into<Error>) -> Self {
        Self {
            error: error.into(),
            replayable: true,
            cannot_connect: true,
        }
    }

    /// A failure that sending again would not change, or that may have reached upstream.
    pub fn fatal(error: impl Into<Error>) -> Self {
        Self {
            error: error.into(),
            replayable: false,
            cannot_connect: false,
        }
    }
}

const USER_AGENT: &str = concat!("aibridge/", env!("CARGO_PKG_VERSION"));

/// How long a pooled upstream connection may sit unused, unless configured: well below the
/// 60 s of AWS load balancers and nginx's 60 to 75 s, so a connection is dropped here before
/// the far side closes it as a request goes out.
pub const DEFAULT_UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(20);

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Variables that route requests through a proxy, as curl and reqwest read them.
const PROXY_VARIABLES: [&str; 6] = [
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
];

#[derive(Debug, thiserror::Error)]
pub enum ClientSetupError {
    #[error("cannot set up TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("cannot set up the HTTP client: {0}")]
    Reqwest(#[from] reqwest::Error),
}

/// A pooled HTTP/1.1 and HTTP/2 (by ALPN) client; clones share the pool.
#[derive(Debug, Clone)]
pub struct HttpClient {
    inner: Inner,
}

#[derive(Debug, Clone)]
enum Inner {
    Direct(Arc<ConnectionPool>),
    Reqwest(reqwest::Client),
}

impl HttpClient {
    /// For the command line: reqwest, honoring the environment's proxy settings.
    pub fn general() -> Result<Self, ClientSetupError> {
        Ok(Self {
            inner: Inner::Reqwest(reqwest_builder().build()?),
        })
    }

    /// For reaching a server on this machine: reqwest, never through a proxy.
    pub fn local() -> Result<Self, ClientSetupError> {
        Ok(Self {
            inner: Inner::Reqwest(reqwest_builder().no_proxy().build()?),
        })
    }

    /// For `serve`'s forwarding: hyper's client directly, unless the environment names a
    /// proxy, which only reqwest honors. Connections unused for `idle_timeout` are closed.
    pub fn forwarding(idle_timeout: Duration) -> Result<Self, ClientSetupError> {
        let proxy_configured = PROXY_VARIABLES
            .iter()
            .any(|name| std::env::var_os(name).is_some_and(|value| !value.is_empty()));
        if proxy_configured {
            return Self::general();
        }
        Ok(Self {
            inner: Inner::Direct(Arc::new(ConnectionPool::new(
                https_connector(tls_config()?),
                idle_timeout,
            ))),
        })
    }

    /// Sends one request to the absolute URL it names; no retries, no redirects.
    pub async fn send(&self, mut request: Request) -> Result<Response, Error> {
        let origin = Origin::of(request.uri())?;
        *request.uri_mut() = Uri::from(path_of(request.uri()));
        self.send_to(&origin, request, Reuse::Pooled)
            .await
            .map_err(|failure| failure.error)
    }

    /// Sends one request, whose URI is its path and query, to `origin`; no retries, no
    /// redirects. The headers go as they are: a forwarded request keeps its caller's.
    pub async fn send_to(
        &self,
        origin: &Origin,
        mut request: Request,
        reuse: Reuse,
    ) -> Result<Response, SendFailure> {
        match &self.inner {
            Inner::Direct(pool) => {
                let response = pool.send(origin, request.map(Full::new), reuse).await?;
                Ok(response.map(ResponseBody::Direct))
            }
            Inner::Reqwest(client) => {
                *request.uri_mut() = origin
                    .url(path_of(request.uri()))
                    .map_err(SendFailure::fatal)?;
                let request = reqwest::Request::try_from(request).map_err(SendFailure::fatal)?;
                // reqwest itself sends again a request that never left a reused connection.
                let response = client.execute(request).await.map_err(|error| SendFailure {
                    replayable: error.is_connect(),
                    cannot_connect: error.is_connect(),
                    error: error.into(),
                })?;
                Ok(http::Response::from(response).map(ResponseBody::Reqwest))
            }
        }
    }
}

/// Names aibridge as the user agent of a request it makes itself (probes, `send`, admin
/// calls), unless the request names one.
pub fn identify_as_aibridge(headers: &mut HeaderMap) {
    headers
        .entry(header::USER_AGENT)
        .or_insert(HeaderValue::from_static(USER_AGENT));
    headers
        .entry(header::ACCEPT)
        .or_insert(HeaderValue::from_static("*/*"));
}

/// A URI's path and query; `/` when it has none.
fn path_of(uri: &Uri) -> PathAndQuery {
    uri.path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"))
}

/// Where requests go, as connections are pooled: a scheme and an authority.
#[derive(Debug, Clone)]
pub struct Origin {
    scheme: Scheme,
    authority: Authority,
}

impl Origin {
    /// The origin of an absolute URL.
    pub fn of(uri: &Uri) -> Result<Self, Error> {
        match (uri.scheme(), uri.authority()) {
            (Some(scheme), Some(authority)) => Ok(Self {
                scheme: scheme.clone(),
                authority: authority.clone(),
            }),
            _ => Err(format!("not an absolute URL: {uri}").into()),
        }
    }

    /// The `Host` header requests to this origin carry: the port only when it is not the
    /// scheme's default.
    pub fn host_header(&self) -> Result<HeaderValue, Error> {
        pool::host_header(self)
    }

    /// `scheme://authority`, as a URL starts.
    pub fn prefix(&self) -> String {
        format!("{}://{}", self.scheme, self.authority)
    }

    /// `path` on this origin.
    pub fn url(&self, path: PathAndQuery) -> Result<Uri, Error> {
        Ok(Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path)
            .build()?)
    }

    /// Byte for byte: `Authority`'s own comparison ignores case one byte at a time, and the
    /// URLs of one upstream are spelled the same every time.
    fn is(&self, other: &Origin) -> bool {
        self.authority.as_str() == other.authority.as_str() && self.scheme == other.scheme
    }

    /// A copy that shares no memory with this one, so threads that each keep one never
    /// touch the same reference count.
    fn unshared(&self) -> Result<Self, Error> {
        let authority = Bytes::copy_from_slice(self.authority.as_str().as_bytes());
        Ok(Self {
            scheme: self.scheme.clone(),
            authority: Authority::from_maybe_shared(authority)?,
        })
    }
}

fn reqwest_builder() -> reqwest::ClientBuilder {
    // Several crypto back ends may be linked in; name ours. Repeated calls are no-ops.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .retry(reqwest::retry::never())
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .redirect(reqwest::redirect::Policy::none())
        .pool_idle_timeout(DEFAULT_UPSTREAM_IDLE_TIMEOUT)
}

fn https_connector(tls: rustls::ClientConfig) -> hyper_rustls::HttpsConnector<HttpConnector> {
    let mut http = HttpConnector::new();
    // Small requests must not wait on Nagle's algorithm.
    http.set_nodelay(true);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    // The connector sees https URLs too, and hands them to rustls.
    http.enforce_http(false);
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http)
}

/// rustls with the operating system's trust store, as reqwest uses it.
fn tls_config() -> Result<rustls::ClientConfig, ClientSetupError> {
    use rustls_platform_verifier::BuilderVerifierExt;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_platform_verifier()?
        .with_no_client_auth();
    Ok(config)
}

/// An answer's body, from whichever client sent the request.
#[derive(Debug)]
pub enum ResponseBody {
    Direct(PooledBody),
    Reqwest(reqwest::Body),
    /// A body the walker already read to classify the answer, passed on as it was.
    Whole(Full<Bytes>),
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        match self.get_mut() {
            Self::Direct(body) => Pin::new(body).poll_frame(cx).map_err(Error::from),
            Self::Reqwest(body) => Pin::new(body).poll_frame(cx).map_err(Error::from),
            Self::Whole(body) => Pin::new(body).poll_frame(cx).map_err(Error::from),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Direct(body) => body.is_end_stream(),
            Self::Reqwest(body) => body.is_end_stream(),
            Self::Whole(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Direct(body) => body.size_hint(),
            Self::Reqwest(body) => body.size_hint(),
            Self::Whole(body) => body.size_hint(),
        }
    }
}

/// Reads an answer's whole body.
pub async fn read_body(body: ResponseBody) -> Result<Bytes, Error> {
    collect(body).await
}

/// Reads a body whole (http-body-util's collection); trailers are dropped.
pub async fn collect<B: http_body::Body<Data = Bytes>>(body: B) -> Result<Bytes, B::Error> {
    Ok(BodyExt::collect(body).await?.to_bytes())
}

/// Why a body could not be read whole within its time.
#[derive(Debug)]
pub enum CollectError<E> {
    Body(E),
    /// No data came for this long.
    Stalled(Duration),
}

/// [`collect`], giving up when no frame arrives for `stall`.
pub async fn collect_within<B: http_body::Body<Data = Bytes> + Unpin>(
    body: B,
    stall: Duration,
) -> Result<Bytes, CollectError<B::Error>> {
    let body = StallGuard {
        body,
        stall,
        timer: None,
    };
    Ok(BodyExt::collect(body).await?.to_bytes())
}

/// A body that fails once no frame has come for `stall`. The timer is set only while the
/// body has nothing ready, so a body that came with its headers sets none.
struct StallGuard<B> {
    body: B,
    stall: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<B: http_body::Body<Data = Bytes> + Unpin> http_body::Body for StallGuard<B> {
    type Data = Bytes;
    type Error = CollectError<B::Error>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            this.timer = None;
            return Poll::Ready(frame.map(|frame| frame.map_err(CollectError::Body)));
        }
        let stall = this.stall;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(CollectError::Stalled(stall)))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The next chunk of data of an answer's body; `None` at its end. Trailers are skipped.
pub async fn next_chunk(body: &mut ResponseBody) -> Option<Result<Bytes, Error>> {
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
    response.body().size_hint().exact()
}

/// The error and its causes on one line: an HTTP client's own message alone rarely says why.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use http_body_util::StreamBody;

    use super::*;

    fn body_of(frames: Vec<Frame<Bytes>>) -> impl http_body::Body<Data = Bytes, Error = Error> {
        StreamBody::new(futures_util::stream::iter(frames.into_iter().map(Ok)))
    }

    #[tokio::test]
    async fn a_body_in_one_chunk_is_that_chunk() {
        let chunk = Bytes::from_static(b"{\"model\":\"m\"}");
        let body = collect(Full::new(chunk.clone())).await.unwrap();
        assert_eq!(body, chunk);
        assert_eq!(body.as_ptr(), chunk.as_ptr(), "not copied");
    }

    #[tokio::test]
    async fn chunks_are_joined_in_order_and_trailers_skipped() {
        let frames = vec![
            Frame::data(Bytes::from_static(b"one ")),
            Frame::data(Bytes::new()),
            Frame::data(Bytes::from_static(b"two ")),
            Frame::data(Bytes::from_static(b"three")),
            Frame::trailers(http::HeaderMap::new()),
        ];
        assert_eq!(collect(body_of(frames)).await.unwrap(), "one two three");
        assert_eq!(collect(body_of(Vec::new())).await.unwrap(), "");
    }

    #[test]
    fn error_chain_joins_causes_once() {
        let inner =
            std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let outer = std::io::Error::other(inner);
        assert_eq!(error_chain(&outer), "connection refused");
    }
}
