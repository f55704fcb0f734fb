//! A mock provider on 127.0.0.1 that answers per API key, records every request, and can
//! stream SSE, hold a stream at a gate, or cut it mid-way.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use tokio::sync::{Semaphore, oneshot};

/// What the mock answers.
#[derive(Clone, Debug)]
pub enum Reply {
    Plain {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// Sends nothing for this long, then answers 200.
    Slow(Duration),
    /// Promises a JSON body of 100 bytes, sends 10, and drops the connection.
    Truncated,
    Sse {
        events: Vec<String>,
        /// Waits here after the first event until the test opens it.
        gate: Option<Arc<Gate>>,
        /// Drops the connection after the events instead of ending the body.
        cut: bool,
    },
}

impl Reply {
    pub fn json(status: u16, body: &str) -> Self {
        Self::Plain {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_owned(),
        }
    }

    pub fn ok(body: &str) -> Self {
        Self::json(200, body)
    }

    pub fn status(status: u16) -> Self {
        let body = format!(
            r#"{{"type":"error","error":{{"type":"mock_error","message":"mock status {status}"}}}}"#
        );
        Self::json(status, &body)
    }

    pub fn rate_limited(retry_after_secs: u64) -> Self {
        Self::status(429).header("retry-after", &retry_after_secs.to_string())
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        if let Self::Plain { headers, .. } = &mut self {
            headers.push((name.to_owned(), value.to_owned()));
        }
        self
    }

    pub fn sse(events: &[&str]) -> Self {
        Self::Sse {
            events: events.iter().map(|event| (*event).to_owned()).collect(),
            gate: None,
            cut: false,
        }
    }

    pub fn gated(mut self, new_gate: &Arc<Gate>) -> Self {
        if let Self::Sse { gate, .. } = &mut self {
            *gate = Some(new_gate.clone());
        }
        self
    }

    pub fn cut(mut self) -> Self {
        if let Self::Sse { cut, .. } = &mut self {
            *cut = true;
        }
        self
    }
}

/// Holds a stream until the test has seen its first event.
#[derive(Debug)]
pub struct Gate(Semaphore);

impl Gate {
    pub fn new() -> Arc<Self> {
        Arc::new(Self(Semaphore::new(0)))
    }

    pub fn open(&self) {
        self.0.add_permits(1);
    }
}

/// One request as the mock saw it.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// The address the request came from: one per connection.
    pub peer: SocketAddr,
    pub key: Option<String>,
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

#[derive(Default)]
struct Shared {
    /// Per key, the replies still to give; the last one repeats.
    replies: Mutex<HashMap<String, VecDeque<Reply>>>,
    requests: Mutex<Vec<Recorded>>,
    streams: Mutex<StreamCounts>,
}

/// How SSE streams ended on the mock's side.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamCounts {
    /// Every event was handed over.
    pub finished: usize,
    /// The reader went away first.
    pub abandoned: usize,
}

pub struct MockUpstream {
    addr: SocketAddr,
    /// The PEM certificate it serves HTTPS with, when it does.
    certificate: Option<String>,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// How the mock is reached.
enum Transport {
    Plain,
    /// TLS for `localhost`, offering only HTTP/2, with at most this many requests at a time
    /// on a connection.
    Http2 {
        tls: tokio_rustls::TlsAcceptor,
        max_streams: u32,
    },
}

impl MockUpstream {
    pub fn start() -> Self {
        Self::start_with(Transport::Plain, None)
    }

    /// The mock over HTTPS as `localhost`, speaking HTTP/2 only and allowing `max_streams`
    /// requests at a time on a connection. Clients trust it through [`Self::certificate`].
    pub fn start_https(max_streams: u32) -> Self {
        use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
        let issued = rcgen::generate_simple_self_signed(["localhost".to_owned()]).unwrap();
        let key = PrivatePkcs8KeyDer::from(issued.signing_key.serialize_der());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![issued.cert.der().clone()], PrivateKeyDer::Pkcs8(key))
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let tls = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let transport = Transport::Http2 { tls, max_streams };
        Self::start_with(transport, Some(issued.cert.pem()))
    }

    fn start_with(transport: Transport, certificate: Option<String>) -> Self {
        let shared = Arc::new(Shared::default());
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (shutdown, shutdown_rx) = oneshot::channel::<()>();
        let state = shared.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                let app = axum::Router::new().fallback(handle).with_state(state);
                match transport {
                    Transport::Plain => {
                        let app = app.into_make_service_with_connect_info::<SocketAddr>();
                        axum::serve(listener, app)
                            .with_graceful_shutdown(async {
                                let _ = shutdown_rx.await;
                            })
                            .await
                            .unwrap();
                    }
                    Transport::Http2 { tls, max_streams } => tokio::select! {
                        () = serve_http2(listener, app, tls, max_streams) => {}
                        _ = shutdown_rx => {}
                    },
                }
            });
        });
        let addr = addr_rx.recv().unwrap();
        Self {
            addr,
            certificate,
            shared,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        match self.certificate {
            Some(_) => format!("https://localhost:{}", self.addr.port()),
            None => format!("http://{}", self.addr),
        }
    }

    /// The PEM certificate of an HTTPS mock.
    pub fn certificate(&self) -> &str {
        self.certificate.as_deref().expect("an HTTPS mock")
    }

    /// Answers requests made with `key` by `replies` in turn, repeating the last.
    pub fn on_key(&self, key: &str, replies: Vec<Reply>) -> &Self {
        self.shared
            .replies
            .lock()
            .unwrap()
            .insert(key.to_owned(), replies.into());
        self
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().unwrap().clone()
    }

    pub fn streams(&self) -> StreamCounts {
        *self.shared.streams.lock().unwrap()
    }

    /// How many connections the requests came over.
    pub fn connections_used(&self) -> usize {
        let peers: std::collections::HashSet<_> =
            self.requests().iter().map(|request| request.peer).collect();
        peers.len()
    }

    /// Which keys were used, in order.
    pub fn keys_used(&self) -> Vec<String> {
        self.requests()
            .into_iter()
            .map(|request| request.key.unwrap_or_default())
            .collect()
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        // The server waits for open connections; don't hold the test up for them.
        drop(self.thread.take());
    }
}

/// Serves `app` over TLS with hyper's HTTP/2 server, telling it each request's peer as
/// `axum::serve` would.
async fn serve_http2(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    tls: tokio_rustls::TlsAcceptor,
    max_streams: u32,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tower::ServiceExt;
    while let Ok((tcp, peer)) = listener.accept().await {
        let (app, tls) = (app.clone(), tls.clone());
        tokio::spawn(async move {
            let Ok(tls) = tls.accept(tcp).await else {
                return;
            };
            let service = hyper::service::service_fn(
                move |mut request: axum::http::Request<hyper::body::Incoming>| {
                    request.extensions_mut().insert(ConnectInfo(peer));
                    app.clone().oneshot(request.map(Body::new))
                },
            );
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .max_concurrent_streams(max_streams)
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}

fn key_of(headers: &HeaderMap) -> Option<String> {
    if let Some(key) = headers.get("x-api-key") {
        return key.to_str().ok().map(str::to_owned);
    }
    let auth = headers.get("authorization")?.to_str().ok()?;
    Some(auth.strip_prefix("Bearer ").unwrap_or(auth).to_owned())
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let key = key_of(&parts.headers);
    shared.requests.lock().unwrap().push(Recorded {
        peer,
        key: key.clone(),
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map(ToString::to_string)
            .unwrap_or_default(),
        headers: parts.headers,
        body,
    });
    let reply = {
        let mut replies = shared.replies.lock().unwrap();
        match replies.get_mut(key.as_deref().unwrap_or_default()) {
            Some(queue) if queue.len() > 1 => queue.pop_front().unwrap(),
            Some(queue) => queue.front().cloned().unwrap(),
            None => Reply::ok(r#"{"id":"msg_default","type":"message"}"#),
        }
    };
    respond(reply, shared).await
}

async fn respond(reply: Reply, shared: Arc<Shared>) -> Response {
    match reply {
        Reply::Slow(delay) => {
            tokio::time::sleep(delay).await;
            Response::new(Body::from("{}"))
        }
        Reply::Truncated => {
            let chunks = futures_util::stream::unfold(0, |step| async move {
                match step {
                    0 => Some((Ok(Bytes::from_static(b"{\"id\":\"ms")), 1)),
                    1 => {
                        // Let the headers and the first bytes go out before the cut.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Some((Err(std::io::Error::other("mock cut the body")), 2))
                    }
                    _ => None,
                }
            });
            Response::builder()
                .header("content-type", "application/json")
                .header("content-length", "100")
                .body(Body::from_stream(chunks))
                .unwrap()
        }
        Reply::Plain {
            status,
            headers,
            body,
        } => {
            let mut response = Response::builder().status(StatusCode::from_u16(status).unwrap());
            for (name, value) in headers {
                response = response.header(name, value);
            }
            response.body(Body::from(body)).unwrap()
        }
        Reply::Sse { events, gate, cut } => {
            let stream = async_stream(events, gate, cut, shared);
            Response::builder()
                .header("content-type", "text/event-stream")
                .header("cache-control", "no-cache")
                .body(Body::from_stream(stream))
                .unwrap()
        }
    }
}

/// Counts a stream as abandoned when hyper drops it before its end.
struct StreamEnd {
    shared: Arc<Shared>,
    finished: bool,
}

impl StreamEnd {
    fn finish(&mut self) {
        self.finished = true;
    }
}

impl Drop for StreamEnd {
    fn drop(&mut self) {
        let mut counts = self.shared.streams.lock().unwrap();
        if self.finished {
            counts.finished += 1;
        } else {
            counts.abandoned += 1;
        }
    }
}

fn async_stream(
    events: Vec<String>,
    gate: Option<Arc<Gate>>,
    cut: bool,
    shared: Arc<Shared>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    // Room for one chunk only, so the sender notices promptly when the reader is gone.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        for (index, event) in events.into_iter().enumerate() {
            if tx.send(Ok(Bytes::from(event))).await.is_err() {
                return;
            }
            if index == 0
                && let Some(gate) = &gate
            {
                // A bridge that buffers never shows the first event, so the test never opens
                // the gate; time out rather than hang, and say so in the stream.
                if tokio::time::timeout(Duration::from_secs(10), gate.0.acquire())
                    .await
                    .is_err()
                {
                    let _ = tx.send(Ok(Bytes::from("event: gate_timeout\n\n"))).await;
                }
            }
        }
        if cut {
            // Let the client read what was sent: a reset can discard unread data.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let _ = tx
                .send(Err(std::io::Error::other("mock cut the stream")))
                .await;
        }
    });
    let end = StreamEnd {
        shared,
        finished: false,
    };
    futures_util::stream::unfold((rx, end), |(mut rx, mut end)| async move {
        match rx.recv().await {
            Some(item) => Some((item, (rx, end))),
            None => {
                end.finish();
                None
            }
        }
    })
}
