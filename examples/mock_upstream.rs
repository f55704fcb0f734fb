//! A fast mock of the Anthropic and OpenAI APIs for benchmarks and demos, so load tests
//! measure the bridge and not the mock.
//!
//! ```sh
//! cargo run --release --example mock_upstream -- --listen 127.0.0.1:9100 --events 20 --gap-ms 10
//! ```
//!
//! - `POST /v1/messages`, `/v1/chat/completions`, `/v1/responses`: a JSON answer of
//!   `--body-bytes` bytes, or, when the request body has `"stream":true`, `--events` SSE
//!   events `--gap-ms` apart in the route's own shape. With `--stamp`, each event's text
//!   holds `@` and the microseconds since the epoch when it was sent (the `streams` example
//!   reads it); `--event-bytes` pads each event's text to about that size.
//! - `GET /v1/models` (and anything else): a small JSON list.
//! - With `--https FILE`, it serves HTTPS as `localhost`, offering HTTP/2 only as the
//!   providers' APIs do, and writes its self-signed certificate to FILE for a client's
//!   `SSL_CERT_FILE`.
//! - The key decides the status: a key containing `-429-` gets 429 with `retry-after-ms`
//!   `--retry-after-ms`; `-401-` gets 401; `-403-` gets 403; any other key 200.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt;
use clap::Parser;

/// A fast mock LLM provider for benchmarks.
#[derive(Debug, Clone, Parser)]
struct Args {
    /// Address to listen on
    #[arg(long, default_value = "127.0.0.1:9100")]
    listen: SocketAddr,
    /// SSE events per streamed answer
    #[arg(long, default_value_t = 20)]
    events: usize,
    /// Milliseconds between SSE events
    #[arg(long, default_value_t = 10)]
    gap_ms: u64,
    /// Size of a JSON answer in bytes
    #[arg(long, default_value_t = 1024)]
    body_bytes: usize,
    /// The retry-after-ms a 429 carries
    #[arg(long, default_value_t = 60_000)]
    retry_after_ms: u64,
    /// Put the time each event is sent in its text
    #[arg(long)]
    stamp: bool,
    /// Pad each event's text to about this many bytes
    #[arg(long, default_value_t = 0)]
    event_bytes: usize,
    /// Serve HTTPS as `localhost` with HTTP/2 only; the self-signed certificate is written
    /// to this PEM file
    #[arg(long, value_name = "FILE")]
    https: Option<PathBuf>,
}

struct Mock {
    args: Args,
    json_body: Bytes,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mock = Arc::new(Mock {
        json_body: json_body(args.body_bytes),
        args: args.clone(),
    });
    let app = Router::new().fallback(handle).with_state(mock);
    // The certificate is written before the port opens, so a client that waits for the
    // port finds it.
    let tls = args.https.as_deref().map(tls_acceptor).transpose()?;
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    if let Some(tls) = tls {
        eprintln!(
            "mock upstream listening on https://localhost:{}",
            listener.local_addr()?.port()
        );
        serve_http2(listener, app, tls).await;
        return Ok(());
    }
    eprintln!(
        "mock upstream listening on http://{}",
        listener.local_addr()?
    );
    let listener = listener.tap_io(|stream| {
        let _ = stream.set_nodelay(true);
    });
    axum::serve(listener, app).await?;
    Ok(())
}

/// TLS as `localhost`, offering only HTTP/2, with a new self-signed certificate written to
/// `certificate_file`.
fn tls_acceptor(certificate_file: &std::path::Path) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    let issued = rcgen::generate_simple_self_signed(["localhost".to_owned()])?;
    std::fs::write(certificate_file, issued.cert.pem())?;
    let key = PrivatePkcs8KeyDer::from(issued.signing_key.serialize_der());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![issued.cert.der().clone()], PrivateKeyDer::Pkcs8(key))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Serves `app` over TLS with hyper's HTTP/2 server on its defaults.
async fn serve_http2(
    listener: tokio::net::TcpListener,
    app: Router,
    tls: tokio_rustls::TlsAcceptor,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            // Out of descriptors, most likely: let some close.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (app, tls) = (app.clone(), tls.clone());
        tokio::spawn(async move {
            let Ok(tls) = tls.accept(tcp).await else {
                return;
            };
            let service = hyper_util::service::TowerToHyperService::new(app);
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}

/// A message-shaped JSON answer padded to `size` bytes.
fn json_body(size: usize) -> Bytes {
    let head = r#"{"id":"msg_bench","type":"message","role":"assistant","model":"mock","content":[{"type":"text","text":""#;
    let tail = r#""}],"usage":{"input_tokens":10,"output_tokens":20}}"#;
    let padding = size.saturating_sub(head.len() + tail.len());
    Bytes::from(format!("{head}{}{tail}", "x".repeat(padding)))
}

fn key_of(headers: &HeaderMap) -> &str {
    let value = headers
        .get("x-api-key")
        .or_else(|| headers.get(header::AUTHORIZATION))
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    value.strip_prefix("Bearer ").unwrap_or(value)
}

async fn handle(State(mock): State<Arc<Mock>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let key = key_of(&parts.headers);
    for (marker, status) in [("-429-", 429), ("-401-", 401), ("-403-", 403)] {
        if key.contains(marker) {
            let mut response = (
                StatusCode::from_u16(status).expect("valid status"),
                [(header::CONTENT_TYPE, "application/json")],
                r#"{"type":"error","error":{"type":"mock_error","message":"mock"}}"#,
            )
                .into_response();
            if status == 429 {
                response
                    .headers_mut()
                    .insert("retry-after-ms", mock.args.retry_after_ms.into());
            }
            return response;
        }
    }
    let body = axum::body::to_bytes(body, 64 * 1024 * 1024)
        .await
        .unwrap_or_default();
    let path = parts.uri.path();
    if parts.method != "POST" {
        return (
            [(header::CONTENT_TYPE, "application/json")],
            r#"{"data":[{"id":"mock"}]}"#,
        )
            .into_response();
    }
    if body.windows(13).any(|window| window == b"\"stream\":true") {
        return stream(&mock.args, path);
    }
    (
        [(header::CONTENT_TYPE, "application/json")],
        mock.json_body.clone(),
    )
        .into_response()
}

/// `events` SSE events `gap_ms` apart, shaped for the route.
fn stream(args: &Args, path: &str) -> Response {
    let (events, gap) = (args.events, Duration::from_millis(args.gap_ms));
    let (stamp, padding) = (args.stamp, "x".repeat(args.event_bytes));
    let route = path.to_owned();
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::spawn(async move {
        for index in 0..events {
            if index > 0 {
                tokio::time::sleep(gap).await;
            }
            let mut text = index.to_string();
            if stamp {
                let sent = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                text.push_str(&format!(" @{}", sent.as_micros()));
            }
            text.push(' ');
            text.push_str(&padding);
            if sender
                .send(Ok(Bytes::from(event(&route, &text))))
                .await
                .is_err()
            {
                return;
            }
        }
        if route.ends_with("/chat/completions") {
            let _ = sender
                .send(Ok(Bytes::from_static(b"data: [DONE]\n\n")))
                .await;
        }
    });
    let body = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|item| (item, receiver))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(body))
        .expect("valid response")
}

fn event(route: &str, text: &str) -> String {
    if route.ends_with("/chat/completions") {
        format!(
            "data: {{\"id\":\"chatcmpl-bench\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{text}\"}}}}]}}\n\n"
        )
    } else if route.ends_with("/responses") {
        format!(
            "event: response.output_text.delta\ndata: {{\"type\":\"response.output_text.delta\",\"delta\":\"{text}\"}}\n\n"
        )
    } else {
        format!(
            "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"{text}\"}}}}\n\n"
        )
    }
}
