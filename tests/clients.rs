//! Slow and idle clients: half-sent headers, stalled bodies, idle keep-alive connections,
//! and more connections than the bridge may hold.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::harness::{Gate, K1, MockUpstream, Reply, Server, Test};

fn bridge(mock: &MockUpstream, extra: &str) -> Test {
    Test::new().config(&format!(
        "{extra}\n[providers.anthropic]\nbase_url = \"{}\"\nkeys = [\"{K1}\"]\n",
        mock.url()
    ))
}

/// Whether the server closed `stream` within `within` (a read sees the end).
fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

const HEAD: &str = "POST /anthropic/v1/messages HTTP/1.1\r\nhost: 127.0.0.1\r\n";

/// Sends one whole request on `stream` and reads its answer's status line and headers.
fn exchange(stream: &mut TcpStream) -> String {
    write!(stream, "{HEAD}content-length: 2\r\n\r\n{{}}").unwrap();
    read_head(stream)
}

/// Reads an answer's status line and headers from `stream`, and the small body after them.
fn read_head(stream: &mut TcpStream) -> String {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    while !answer.windows(4).any(|window| window == b"\r\n\r\n") {
        let read = stream.read(&mut buffer).unwrap();
        assert!(read > 0, "closed before an answer");
        answer.extend_from_slice(&buffer[..read]);
    }
    // The mock's answer is small and whole: the rest of it came with the head or follows.
    std::thread::sleep(Duration::from_millis(50));
    stream.set_nonblocking(true).unwrap();
    let _ = stream.read(&mut buffer);
    stream.set_nonblocking(false).unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

#[test]
fn half_sent_headers_are_cut_off_after_client_timeout() {
    let mock = MockUpstream::start();
    let server = bridge(&mock, "client_timeout = \"1s\"").serve();
    let mut slow = TcpStream::connect(server.address()).unwrap();
    slow.write_all(HEAD.as_bytes()).unwrap();
    let started = Instant::now();
    assert!(closed_within(&mut slow, Duration::from_secs(4)));
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(900), "{took:?}");
    assert!(mock.requests().is_empty());
}

#[test]
fn an_idle_connection_lasts_client_idle_timeout_not_client_timeout() {
    let mock = MockUpstream::start();
    let server = bridge(
        &mock,
        "client_timeout = \"1s\"\nclient_idle_timeout = \"2500ms\"",
    )
    .serve();
    let mut stream = TcpStream::connect(server.address()).unwrap();
    assert!(exchange(&mut stream).starts_with("HTTP/1.1 200"));
    // Idle past client_timeout, but within client_idle_timeout: still served.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(exchange(&mut stream).starts_with("HTTP/1.1 200"));
    let started = Instant::now();
    assert!(closed_within(&mut stream, Duration::from_secs(6)));
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "closed too soon"
    );
    assert_eq!(mock.requests().len(), 2);
}

#[test]
fn a_streaming_answer_that_pauses_is_never_idle_or_slow() {
    let mock = MockUpstream::start();
    let gate = Gate::new();
    let events = [
        "event: message_start\ndata: {\"type\":\"message_start\"}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    ];
    mock.on_key(K1, vec![Reply::sse(&events).gated(&gate)]);
    let server = bridge(
        &mock,
        "client_timeout = \"500ms\"\nclient_idle_timeout = \"800ms\"",
    )
    .serve();
    let mut stream = TcpStream::connect(server.address()).unwrap();
    write!(stream, "{HEAD}content-length: 2\r\n\r\n{{}}").unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("message_start") {
        let read = stream.read(&mut buffer).unwrap();
        assert!(read > 0, "closed before the first event");
        seen.extend_from_slice(&buffer[..read]);
    }
    // The upstream pauses for more than both limits; the client sends a byte meanwhile, as
    // an HTTP/2 client's flow-control frames would.
    std::thread::sleep(Duration::from_millis(1200));
    stream.write_all(b"\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(800));
    gate.open();
    let mut rest = String::new();
    stream.read_to_string(&mut rest).ok();
    let whole = String::from_utf8_lossy(&seen).into_owned() + &rest;
    assert!(
        whole.contains("message_stop"),
        "the stream was cut:\n{whole}"
    );
    assert!(!whole.contains("event: error"), "{whole}");
    assert_eq!(mock.streams().finished, 1);
}

#[test]
fn a_stalled_request_body_is_answered_408_and_not_forwarded() {
    let mock = MockUpstream::start();
    let server = bridge(&mock, "client_timeout = \"1s\"").serve();
    let mut stream = TcpStream::connect(server.address()).unwrap();
    write!(stream, "{HEAD}content-length: 100\r\n\r\n{{\"model\":").unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("client_timeout"), "{answer}");
    assert!(mock.requests().is_empty());
}

/// The value of the metric line that starts with `prefix`, or "" when there is none.
fn metric(server: &Server, prefix: &str) -> String {
    server
        .metrics()
        .lines()
        .find(|line| line.starts_with(prefix))
        .unwrap_or_default()
        .to_owned()
}

/// Opens the three connections a `max_connections = 3` server holds.
fn fill_three_slots(server: &Server) -> Vec<TcpStream> {
    server.wait_for_log("serving at most 3 client connections at once");
    (0..3)
        .map(|_| TcpStream::connect(server.address()).unwrap())
        .collect()
}

#[test]
fn silent_connections_make_room_for_a_real_client_at_max_connections() {
    let mock = MockUpstream::start();
    let server = bridge(&mock, "max_connections = 3").serve();
    let mut held = fill_three_slots(&server);
    // Let the bridge count them before the next arrives.
    std::thread::sleep(Duration::from_millis(200));
    let answer = server.post_message();
    assert!(answer.status().is_success(), "{}", answer.status());
    assert_eq!(mock.requests().len(), 1, "the upstream got the request");
    // Which of the three counts as oldest depends on which worker took it first.
    let closed = held
        .iter_mut()
        .map(|stream| closed_within(stream, Duration::from_millis(500)))
        .filter(|closed| *closed)
        .count();
    assert!(closed >= 1, "no silent connection was closed");
    let shed = metric(&server, "aibridge_shed_connections_total{reason=\"full\"}");
    assert!(!shed.ends_with(" 0") && !shed.is_empty(), "{shed:?}");
    assert_eq!(
        metric(&server, "aibridge_refused_connections_total"),
        "aibridge_refused_connections_total 0"
    );
}

#[test]
fn connections_that_sent_a_request_are_kept_and_a_newcomer_is_refused() {
    let mock = MockUpstream::start();
    let server = bridge(&mock, "max_connections = 3").serve();
    let mut held = fill_three_slots(&server);
    for stream in &mut held {
        assert!(exchange(stream).starts_with("HTTP/1.1 200"));
    }
    let mut fourth = TcpStream::connect(server.address()).unwrap();
    assert!(
        closed_within(&mut fourth, Duration::from_secs(2)),
        "the fourth was served"
    );
    for stream in &mut held {
        assert!(
            exchange(stream).starts_with("HTTP/1.1 200"),
            "a client that sent a request was closed to make room"
        );
    }
    drop(held);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        metric(&server, "aibridge_refused_connections_total"),
        "aibridge_refused_connections_total 1"
    );
    assert!(
        server.post_message().status().is_success(),
        "served again once below the cap"
    );
}

/// Raises this test process's own open-file limit, to hold thousands of connections.
fn raise_own_open_file_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed in.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    limit.rlim_max
}

#[test]
fn two_thousand_slowloris_connections_do_not_lock_out_a_real_client() {
    let hard = raise_own_open_file_limit();
    assert!(
        hard > 5_000,
        "this test needs a hard open-file limit above 5,000 ({hard})"
    );
    let mock = MockUpstream::start();
    let test = bridge(&mock, "");
    let server = test.serve_with_open_file_limit(1024, &["--listen", "127.0.0.1:0"]);
    server.wait_for_log("serving at most");
    assert!(
        !server.stderr().contains("open-file limit 1024)"),
        "the soft limit was not raised:\n{}",
        server.stderr()
    );
    let slowloris: Vec<_> = (0..2_000)
        .map(|_| {
            let mut stream = TcpStream::connect(server.address()).unwrap();
            stream.write_all(HEAD.as_bytes()).unwrap();
            stream
        })
        .collect();
    let response = server.post_message();
    assert_eq!(response.status(), 200);
    assert_eq!(mock.requests().len(), 1);
    drop(slowloris);
}

#[test]
fn a_silent_new_connection_is_closed_after_the_first_byte_timeout() {
    let mock = MockUpstream::start();
    let server = bridge(&mock, "client_first_byte_timeout = \"400ms\"").serve();
    let mut silent = TcpStream::connect(server.address()).unwrap();
    let mut prompt = TcpStream::connect(server.address()).unwrap();
    assert!(exchange(&mut prompt).starts_with("HTTP/1.1 200"));
    let started = Instant::now();
    assert!(closed_within(&mut silent, Duration::from_secs(3)));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // A connection that has spoken is idle now, not silent: it lasts client_idle_timeout.
    assert!(!closed_within(&mut prompt, Duration::from_millis(800)));
    assert!(exchange(&mut prompt).starts_with("HTTP/1.1 200"));
}

#[test]
fn one_address_holds_at_most_max_connections_per_ip() {
    let mock = MockUpstream::start();
    let server = bridge(
        &mock,
        "max_connections_per_ip = 2\ncap_loopback_clients = true",
    )
    .serve();
    let mut first = TcpStream::connect(server.address()).unwrap();
    let mut second = TcpStream::connect(server.address()).unwrap();
    assert!(exchange(&mut first).starts_with("HTTP/1.1 200"));
    let mut third = TcpStream::connect(server.address()).unwrap();
    assert!(
        closed_within(&mut third, Duration::from_secs(2)),
        "a third was kept"
    );
    assert!(exchange(&mut second).starts_with("HTTP/1.1 200"));
    drop(first);
    std::thread::sleep(Duration::from_millis(200));
    let mut again = TcpStream::connect(server.address()).unwrap();
    assert!(exchange(&mut again).starts_with("HTTP/1.1 200"));
    drop((second, again));
    std::thread::sleep(Duration::from_millis(200));
    let refused = metric(&server, "aibridge_refused_connections_total");
    assert!(refused.ends_with(" 1"), "{refused}");

    // Loopback clients are not capped unless asked.
    let open = bridge(&mock, "max_connections_per_ip = 1").serve();
    let mut held: Vec<_> = (0..3)
        .map(|_| TcpStream::connect(open.address()).unwrap())
        .collect();
    for stream in &mut held {
        assert!(exchange(stream).starts_with("HTTP/1.1 200"));
    }
}

#[test]
fn a_request_head_larger_than_64_kib_is_refused() {
    let mock = MockUpstream::start();
    let server = bridge(&mock, "").serve();
    for (size, expected) in [(30_000, "HTTP/1.1 200"), (70_000, "HTTP/1.1 431")] {
        let mut stream = TcpStream::connect(server.address()).unwrap();
        write!(
            stream,
            "{HEAD}x-filler: {}\r\ncontent-length: 2\r\n\r\n{{}}",
            "f".repeat(size)
        )
        .unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut answer = [0u8; 64];
        let read = stream.read(&mut answer).unwrap();
        let answer = String::from_utf8_lossy(&answer[..read]);
        assert!(answer.starts_with(expected), "{size}: {answer}");
    }
    assert_eq!(mock.requests().len(), 1);
}

#[test]
fn an_http2_client_with_prior_knowledge_is_served() {
    let mock = MockUpstream::start();
    let server = bridge(&mock, "").serve();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::blocking::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let response = client
        .post(server.url("/anthropic/v1/messages"))
        .body(r#"{"model":"m"}"#)
        .send()
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    let received = mock.requests();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].body, r#"{"model":"m"}"#);
    assert_eq!(received[0].key.as_deref(), Some(K1));
}

#[test]
fn a_head_whose_first_byte_could_begin_http2_is_read_as_http1() {
    let mock = MockUpstream::start();
    let server = bridge(&mock, "").serve();
    let mut stream = TcpStream::connect(server.address()).unwrap();
    // "P" alone could begin HTTP/2's preface: the bridge must read on to tell.
    stream.write_all(b"P").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let rest = HEAD.strip_prefix('P').unwrap();
    write!(stream, "{rest}content-length: 2\r\n\r\n{{}}").unwrap();
    let answer = read_head(&mut stream);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(mock.requests()[0].path, "/v1/messages");
}

#[test]
fn shutdown_does_not_wait_for_a_connection_that_never_spoke() {
    let mock = MockUpstream::start();
    let mut server = bridge(&mock, "client_first_byte_timeout = \"60s\"").serve();
    let mut silent = TcpStream::connect(server.address()).unwrap();
    let mut prompt = TcpStream::connect(server.address()).unwrap();
    assert!(exchange(&mut prompt).starts_with("HTTP/1.1 200"));
    let asked = Instant::now();
    server.signal("TERM");
    assert_eq!(server.wait(), 0);
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "{:?}",
        asked.elapsed()
    );
    assert!(closed_within(&mut silent, Duration::from_secs(1)));
}
