use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::*;

fn ring() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// An HTTPS server on 127.0.0.1 that offers only HTTP/2 and counts its connections;
/// it answers with the version and URL it saw.
async fn http2_server() -> (u16, CertificateDer<'static>, Arc<AtomicUsize>) {
    http2_server_with(u32::MAX, Answer::Ends).await
}

/// What the test server's answers do after their first line.
#[derive(Debug, Clone, Copy)]
enum Answer {
    Ends,
    /// Stays open, like a long stream.
    StaysOpen,
    /// Goes on with 3 MiB, more than a stream's window.
    Large,
}

/// [`http2_server`], allowing `max_streams` requests at a time on a connection.
async fn http2_server_with(
    max_streams: u32,
    answer: Answer,
) -> (u16, CertificateDer<'static>, Arc<AtomicUsize>) {
    use futures_util::StreamExt;
    use http_body_util::StreamBody;
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
                let echo = hyper::service::service_fn(move |request: http::Request<Incoming>| {
                    let seen = format!("{:?} {}", request.version(), request.uri());
                    let frame = |bytes| Ok::<_, std::convert::Infallible>(Frame::data(bytes));
                    let first = futures_util::stream::iter([frame(Bytes::from(seen))]);
                    let rest = match answer {
                        Answer::Ends => futures_util::stream::empty().boxed(),
                        Answer::StaysOpen => futures_util::stream::pending().boxed(),
                        Answer::Large => {
                            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
                            let chunks = (0..48).map(move |_| frame(chunk.clone()));
                            futures_util::stream::iter(chunks).boxed()
                        }
                    };
                    let body = StreamBody::new(first.chain(rest));
                    async move { Ok::<_, std::convert::Infallible>(http::Response::new(body)) }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .max_concurrent_streams(max_streams)
                    .serve_connection(TokioIo::new(tls), echo)
                    .await;
            });
        }
    });
    (port, certificate, connections)
}

/// A TCP relay on 127.0.0.1 to `port` whose open connections can be made to go silent both
/// ways, as when a network drops a connection without a word.
async fn relay_to(port: u16) -> (u16, Arc<Mutex<Vec<Arc<AtomicBool>>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    async fn pass(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        silent: Arc<AtomicBool>,
    ) {
        let mut buffer = vec![0u8; 64 * 1024];
        while let Ok(read) = from.read(&mut buffer).await {
            if read == 0 {
                return;
            }
            if !silent.load(Ordering::SeqCst) && to.write_all(&buffer[..read]).await.is_err() {
                return;
            }
        }
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_port = listener.local_addr().unwrap().port();
    let connections = Arc::new(Mutex::new(Vec::new()));
    let listed = connections.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            let silent = Arc::new(AtomicBool::new(false));
            listed.lock().unwrap().push(silent.clone());
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            tokio::spawn(pass(client_read, server_write, silent.clone()));
            tokio::spawn(pass(server_read, client_write, silent));
        }
    });
    (relay_port, connections)
}

fn pool_trusting(certificate: CertificateDer<'static>) -> Arc<ConnectionPool> {
    Arc::new(unshared_pool_trusting(certificate))
}

/// [`pool_trusting`], for a test to set its limits before it is shared.
fn unshared_pool_trusting(certificate: CertificateDer<'static>) -> ConnectionPool {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certificate).unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = super::super::https_connector(tls);
    ConnectionPool::new(connector, Duration::from_secs(60))
}

async fn answer(pool: &Arc<ConnectionPool>, url: &str) -> String {
    let url: Uri = url.parse().unwrap();
    let origin = Origin::of(&url).unwrap();
    let request = http::Request::get(url.path_and_query().unwrap().as_str())
        .body(Body::default())
        .unwrap();
    let response = pool.send(&origin, request, Reuse::Pooled).await.unwrap();
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
                async move { Ok::<_, std::convert::Infallible>(http::Response::new(Body::from(seen))) }
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

/// The answer to a GET of `url`, once its head and first bytes are in; its body may stay
/// open. Fails when that takes a second, as a request queued behind a full connection would.
async fn first_bytes(pool: &Arc<ConnectionPool>, url: &str) -> (String, PooledBody) {
    let url: Uri = url.parse().unwrap();
    let origin = Origin::of(&url).unwrap();
    let request = http::Request::get(url.path_and_query().unwrap().as_str())
        .body(Body::default())
        .unwrap();
    let answered = async {
        let mut body = pool
            .send(&origin, request, Reuse::Pooled)
            .await
            .unwrap()
            .into_body();
        let frame = http_body_util::BodyExt::frame(&mut body)
            .await
            .unwrap()
            .unwrap();
        let seen = String::from_utf8(frame.into_data().unwrap().to_vec()).unwrap();
        (seen, body)
    };
    tokio::time::timeout(Duration::from_secs(1), answered)
        .await
        .expect("answered at once, not queued behind open streams")
}

#[tokio::test]
async fn a_full_http2_connection_is_not_queued_on_but_another_is_opened() {
    let (port, certificate, connections) = http2_server_with(2, Answer::StaysOpen).await;
    let mut pool = unshared_pool_trusting(certificate);
    pool.streams_per_connection = 2;
    let pool = Arc::new(pool);
    let url = format!("https://localhost:{port}/v1/messages");
    let mut open = Vec::new();
    for _ in 0..3 {
        let (seen, body) = first_bytes(&pool, &url).await;
        assert_eq!(seen, format!("HTTP/2.0 {url}"));
        open.push(body);
    }
    assert_eq!(connections.load(Ordering::SeqCst), 2);
    // Ended answers give their places back: four fit on the two connections.
    drop(open);
    let mut open = Vec::new();
    for _ in 0..4 {
        open.push(first_bytes(&pool, &url).await.1);
    }
    assert_eq!(connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn callers_that_stop_reading_large_answers_do_not_stall_the_others_on_a_connection() {
    let (port, certificate, connections) = http2_server_with(100, Answer::Large).await;
    let pool = pool_trusting(certificate);
    let url = format!("https://localhost:{port}/v1/files/file-1/content");
    // Three answers left unread fill their streams' windows: 6 MiB, more than hyper's
    // default window for a whole connection (5 MiB).
    let mut unread = Vec::new();
    for _ in 0..3 {
        unread.push(first_bytes(&pool, &url).await.1);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (seen, _) = first_bytes(&pool, &url).await;
    assert_eq!(seen, format!("HTTP/2.0 {url}"));
    assert_eq!(
        connections.load(Ordering::SeqCst),
        1,
        "on the shared connection"
    );
}

#[tokio::test]
async fn an_http2_connection_that_goes_silent_is_found_dead_by_a_ping() {
    let (port, certificate, connections) = http2_server_with(100, Answer::StaysOpen).await;
    let (relay_port, relayed) = relay_to(port).await;
    let mut pool = unshared_pool_trusting(certificate);
    pool.ping_after_silence = Duration::from_millis(100);
    let pool = Arc::new(pool);
    let url = format!("https://localhost:{relay_port}/v1/messages");
    let (_, mut streaming) = first_bytes(&pool, &url).await;
    for silent in relayed.lock().unwrap().iter() {
        silent.store(true, Ordering::SeqCst);
    }
    let next = tokio::time::timeout(
        Duration::from_secs(2),
        http_body_util::BodyExt::frame(&mut streaming),
    );
    let ended = next.await.expect("the dead connection was noticed");
    assert!(matches!(ended, Some(Err(_))), "the stream ends in an error");
    // A new request goes on a new connection, not the dead one.
    let (seen, _) = first_bytes(&pool, &url).await;
    assert_eq!(seen, format!("HTTP/2.0 {url}"));
    assert_eq!(connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_http2_connection_carrying_a_request_is_not_closed_as_idle() {
    let (port, certificate, connections) = http2_server_with(100, Answer::StaysOpen).await;
    let idle_timeout = Duration::from_millis(40);
    let mut pool = unshared_pool_trusting(certificate);
    pool.idle_timeout = idle_timeout;
    let pool = Arc::new(pool);
    let url = format!("https://localhost:{port}/v1/messages");
    let _streaming = first_bytes(&pool, &url).await;
    // The sweep runs every 20 ms: it has seen the connection past its idle time.
    tokio::time::sleep(idle_timeout * 3).await;
    let origin = Origin::of(&url.parse().unwrap()).unwrap();
    assert_eq!(pool.idle_count(&origin), 1, "still listed");
    let _second = first_bytes(&pool, &url).await;
    assert_eq!(
        connections.load(Ordering::SeqCst),
        1,
        "shared, not a new one"
    );
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
    failure_of(pool, url, http::Method::POST, Reuse::Pooled).await
}

async fn failure_of(
    pool: &Arc<ConnectionPool>,
    url: &str,
    method: http::Method,
    reuse: Reuse,
) -> SendFailure {
    let url: Uri = url.parse().unwrap();
    let origin = Origin::of(&url).unwrap();
    let request = http::Request::builder()
        .method(method)
        .uri("/v1/messages")
        .body(Body::from("{}"))
        .unwrap();
    pool.send(&origin, request, reuse).await.unwrap_err()
}

#[tokio::test]
async fn only_a_request_that_cannot_have_been_read_may_be_sent_again() {
    let refused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = refused.local_addr().unwrap().port();
    drop(refused);
    let pool = plain_pool(Duration::from_secs(60), 8);
    let failed = failure(&pool, &format!("http://127.0.0.1:{dead}/")).await;
    assert!(failed.replayable, "the connection was never made");
    assert!(failed.cannot_connect);

    // A reused connection that closes at once with no answer, after the request was written
    // whole: a POST may have been read, so it is not sent again; a GET bills nothing, so it is.
    let quick = closing_server(Duration::ZERO).await;
    let url = format!("http://127.0.0.1:{quick}/");
    assert_eq!(answer(&pool, &url).await, "ok");
    assert!(
        !failure(&pool, &url).await.replayable,
        "a POST written whole"
    );
    assert_eq!(answer(&pool, &url).await, "ok");
    let get = failure_of(&pool, &url, http::Method::GET, Reuse::Pooled).await;
    assert!(get.replayable, "{}", get.error);
    assert!(!get.cannot_connect, "it was connected: {}", get.error);

    // Closed later: the upstream may have started on it.
    let slow = closing_server(Duration::from_millis(1200)).await;
    let url = format!("http://127.0.0.1:{slow}/");
    assert_eq!(answer(&pool, &url).await, "ok");
    assert!(!failure(&pool, &url).await.replayable);
}

#[tokio::test]
async fn a_fresh_send_never_takes_an_idle_connection() {
    let quick = closing_server(Duration::ZERO).await;
    let url = format!("http://127.0.0.1:{quick}/");
    let pool = plain_pool(Duration::from_secs(60), 8);
    assert_eq!(answer(&pool, &url).await, "ok");
    let origin = Origin::of(&url.parse().unwrap()).unwrap();
    assert_eq!(pool.idle_count(&origin), 1);
    // The idle connection would take this request and close on it; a fresh one answers.
    let request = http::Request::get("/").body(Body::from("")).unwrap();
    let response = pool.send(&origin, request, Reuse::Fresh).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(pool.idle_count(&origin), 1, "the idle one was left alone");
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
