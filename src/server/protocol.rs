//! Which HTTP a client connection speaks, told from its first bytes without reading them.
//!
//! hyper's automatic builder finds out by reading the first 24 bytes (HTTP/2's preface is 24
//! bytes long) and handing them back to the HTTP/1 parser ahead of the socket. The parser
//! then holds 24 unparsed bytes when it reserves room for the rest of the head, so its 8 KiB
//! read buffer is reallocated to 16 KiB, for the whole life of the connection: 8 KiB more for
//! each of 10,000 open streams, and a copy, one more read and one more allocation per
//! connection. Peeking at the bytes instead leaves them in the socket for the parser's first
//! read.

use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto::Builder;
use tokio::net::TcpStream;

/// What every HTTP/2 connection starts with (RFC 9113, section 3.4).
const HTTP2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How a connection starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    Http1,
    Http2,
    /// The bytes so far begin HTTP/2's preface but do not complete it: hyper reads on.
    Undecided,
}

/// Tells how `stream` starts once its first bytes arrive; `None` if it closes first (or
/// fails).
pub async fn start_of(stream: &TcpStream) -> Option<Start> {
    let mut first = [0; HTTP2_PREFACE.len()];
    let peeked = stream.peek(&mut first).await.ok()?;
    (peeked > 0).then(|| start_from(&first[..peeked]))
}

fn start_from(first: &[u8]) -> Start {
    if !HTTP2_PREFACE.starts_with(first) {
        Start::Http1
    } else if first.len() == HTTP2_PREFACE.len() {
        Start::Http2
    } else {
        Start::Undecided
    }
}

/// hyper's connection builders, one for each way a connection may start, made once per
/// worker.
pub struct Builders {
    http1: Builder<TokioExecutor>,
    http2: Builder<TokioExecutor>,
    either: Builder<TokioExecutor>,
}

impl Builders {
    /// Builders that accept heads (HTTP/1) and header lists (HTTP/2) of up to
    /// `max_request_head` bytes: as large as real clients send, and no larger (3,000 slow
    /// heads of 400 KB would otherwise hold 1.2 GB).
    pub fn new(max_request_head: usize) -> Self {
        let limited = |mut builder: Builder<TokioExecutor>| {
            builder.http1().max_buf_size(max_request_head);
            builder
                .http2()
                .max_header_list_size(max_request_head as u32);
            builder
        };
        Self {
            http1: limited(Builder::new(TokioExecutor::new()).http1_only()),
            http2: limited(Builder::new(TokioExecutor::new()).http2_only()),
            either: limited(Builder::new(TokioExecutor::new())),
        }
    }

    pub fn for_start(&self, start: Start) -> &Builder<TokioExecutor> {
        match start {
            Start::Http1 => &self.http1,
            Start::Http2 => &self.http2,
            Start::Undecided => &self.either,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_http1_from_the_first_byte_that_leaves_the_preface() {
        assert_eq!(start_from(b"POST /v1/messages HTTP/1.1\r\n"), Start::Http1);
        assert_eq!(start_from(b"G"), Start::Http1);
        assert_eq!(start_from(b"PRI * HTTP/1.1\r\n"), Start::Http1);
        assert_eq!(start_from(b"\0"), Start::Http1);
    }

    #[test]
    fn needs_the_whole_preface_for_http2() {
        assert_eq!(start_from(HTTP2_PREFACE), Start::Http2);
        assert_eq!(start_from(b"P"), Start::Undecided);
        assert_eq!(start_from(&HTTP2_PREFACE[..23]), Start::Undecided);
    }
}
