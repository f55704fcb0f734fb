//! Holds many SSE streams open at once and measures how late each event arrives, for
//! `benches/run.sh streams`.
//!
//! ```sh
//! cargo run --release --example streams -- --url http://127.0.0.1:19200/slow/v1/messages --streams 1000
//! ```
//!
//! Every stream is its own HTTP/1.1 connection, opened `--ramp` a second. Events from
//! `mock_upstream --stamp` carry the time they were sent (`@` and microseconds since the
//! epoch); an event's delay is when it arrived less that. The same machine's clock is read
//! on both ends, so a run direct to the mock gives the delay the bridge adds to. Prints one
//! JSON object.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

#[derive(Debug, Clone, Parser)]
struct Args {
    /// Where to ask: http://HOST:PORT/PATH
    #[arg(long)]
    url: http::Uri,
    /// How many streams to hold open at once
    #[arg(long, default_value_t = 1000)]
    streams: usize,
    /// How many streams to open each second
    #[arg(long, default_value_t = 2000)]
    ramp: usize,
    /// The key sent as x-api-key
    #[arg(long, default_value = "sk-bench-good-0000000000000000000001")]
    key: String,
    /// Stop reading after this many seconds from the start (streams that do not end)
    #[arg(long)]
    seconds: Option<u64>,
}

/// What one stream saw.
#[derive(Default)]
struct Seen {
    events: u64,
    bytes: u64,
    /// Microseconds each stamped event took to arrive.
    delays: Vec<u32>,
    error: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let authority = args
        .url
        .authority()
        .ok_or_else(|| anyhow::anyhow!("--url needs a host and port"))?;
    let address: SocketAddr = authority.as_str().parse()?;
    let started = Instant::now();
    let deadline = args
        .seconds
        .map(|seconds| started + Duration::from_secs(seconds));
    let gap = Duration::from_secs_f64(1.0 / args.ramp.max(1) as f64);
    let mut streams = Vec::with_capacity(args.streams);
    for index in 0..args.streams {
        // Opened at an even pace, as clients of a real fleet arrive.
        tokio::time::sleep_until((started + gap * index as u32).into()).await;
        streams.push(tokio::spawn(one_stream(args.clone(), address, deadline)));
    }
    let opened = started.elapsed();
    let mut delays = Vec::new();
    let (mut events, mut bytes, mut failed, mut first_error) = (0, 0, 0, None);
    for stream in streams {
        let seen = stream.await?;
        events += seen.events;
        bytes += seen.bytes;
        delays.extend(seen.delays);
        if let Some(error) = seen.error {
            failed += 1;
            first_error.get_or_insert(error);
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    delays.sort_unstable();
    let percentile = |share: f64| {
        let at = ((delays.len() as f64 * share) as usize).min(delays.len().saturating_sub(1));
        delays
            .get(at)
            .map_or(0.0, |micros| f64::from(*micros) / 1000.0)
    };
    let report = serde_json::json!({
        "streams": args.streams,
        "failed": failed,
        "first_error": first_error,
        "events": events,
        "bytes": bytes,
        "seconds": seconds,
        "opened_in_seconds": opened.as_secs_f64(),
        "mb_per_second": bytes as f64 / 1e6 / seconds,
        "delay_ms": {
            "p50": percentile(0.50),
            "p99": percentile(0.99),
            "max": percentile(1.0),
        },
    });
    println!("{report}");
    Ok(())
}

async fn one_stream(args: Args, address: SocketAddr, deadline: Option<Instant>) -> Seen {
    let mut seen = Seen::default();
    let read = read_stream(&args, address, &mut seen);
    let result = match deadline {
        Some(deadline) => tokio::time::timeout_at(deadline.into(), read)
            .await
            .unwrap_or(Ok(())),
        None => read.await,
    };
    if let Err(error) = result {
        seen.error = Some(format!("{error:#}"));
    }
    seen
}

async fn read_stream(args: &Args, address: SocketAddr, seen: &mut Seen) -> anyhow::Result<()> {
    let tcp = tokio::net::TcpStream::connect(address).await?;
    tcp.set_nodelay(true)?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(connection);
    let body = r#"{"model":"claude-sonnet-4-5","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"Hi"}]}"#;
    let request = http::Request::post(args.url.path())
        .header(http::header::HOST, address.to_string())
        .header(http::header::CONTENT_TYPE, "application/json")
        .header("anthropic-version", "2023-06-01")
        .header("x-api-key", &args.key)
        .body(Full::new(Bytes::from_static(body.as_bytes())))?;
    let response = sender.send_request(request).await?;
    anyhow::ensure!(
        response.status() == http::StatusCode::OK,
        "status {}",
        response.status()
    );
    let mut body = response.into_body();
    // Only the part of an event not yet ended is kept.
    let mut pending: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        let now = micros_now();
        seen.bytes += data.len() as u64;
        pending.extend_from_slice(&data);
        while let Some(end) = memchr::memmem::find(&pending, b"\n\n") {
            let event = &pending[..end];
            seen.events += 1;
            if event.starts_with(b"event: error") {
                anyhow::bail!("the stream ended with an error event");
            }
            if let Some(sent) = stamp(event) {
                let delay = now.saturating_sub(sent);
                seen.delays.push(u32::try_from(delay).unwrap_or(u32::MAX));
            }
            pending.drain(..end + 2);
        }
    }
    Ok(())
}

fn micros_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_micros() as u64)
}

/// The microseconds after the event's first `@`.
fn stamp(event: &[u8]) -> Option<u64> {
    let at = memchr::memchr(b'@', event)?;
    let digits = &event[at + 1..];
    let end = digits
        .iter()
        .position(|byte| !byte.is_ascii_digit())
        .unwrap_or(digits.len());
    std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
}
