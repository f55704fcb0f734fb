//! The live page: `GET /_aibridge/` answers one self-contained page (no data in it), and
//! `GET /_aibridge/events` streams the pool report to it, once a second, as server-sent
//! events. The events follow the rules of the other operator routes (tokens, Host/Origin).

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};

use super::AppState;
use super::admin::unauthorized;
use crate::report::PoolReport;

/// The page: HTML, CSS and JS in one file, built into the binary.
const PAGE: &str = include_str!("page.html");

/// How often a page hears of the pool: a 429 shows within this and a render.
const EVENT_INTERVAL: Duration = Duration::from_secs(1);

/// Pages that may follow the events at once; each holds a connection and a timer.
const MAX_WATCHERS: usize = 64;

pub async fn page() -> Response {
    let headers = [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::CACHE_CONTROL, "no-cache"),
        // Nothing but the page's own script and style, and requests to the bridge itself;
        // no framing, so no other site can put the reset buttons under a user's click.
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; \
             frame-ancestors 'none'",
        ),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
    ];
    (headers, PAGE).into_response()
}

/// The pages following the events now.
#[derive(Debug, Default)]
pub struct Watchers(AtomicUsize);

/// One page's place among the watchers, given back when its stream ends.
struct Watching(&'static AppState);

impl Watching {
    fn admit(app: &'static AppState) -> Option<Self> {
        let admitted = app
            .watchers
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |watching| {
                (watching < MAX_WATCHERS).then_some(watching + 1)
            })
            .is_ok();
        // Lazily: a refused page's place must not exist, or its drop would free another's.
        admitted.then(|| Self(app))
    }

    /// The pool as an event, after `wait` (or nothing, once the server is stopping).
    async fn next(self, wait: Duration) -> Option<(Result<Bytes, Infallible>, Self)> {
        let app = self.0;
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = app.stopping.cancelled() => return None,
        }
        let report = PoolReport::new(app.bridge.load().upstreams.values());
        let json = serde_json::to_string(&report).ok()?;
        let event = Bytes::from(format!("event: pool\ndata: {json}\n\n"));
        Some((Ok(event), self))
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        self.0.watchers.0.fetch_sub(1, Ordering::AcqRel);
    }
}

pub async fn events(State(app): State<&'static AppState>, headers: HeaderMap) -> Response {
    if let Some(denied) = unauthorized(app, &headers) {
        return denied;
    }
    let Some(watching) = Watching::admit(app) else {
        // In the OpenAI shape, as the other operator routes answer.
        let message = format!(
            "{MAX_WATCHERS} pages already follow the pool; close one, or poll /_aibridge/pool"
        );
        let body = serde_json::json!({
            "error": {"message": message, "type": "server_error", "code": "too_many_watchers"}
        });
        let retry = [(header::RETRY_AFTER, HeaderValue::from_static("5"))];
        return (StatusCode::SERVICE_UNAVAILABLE, retry, axum::Json(body)).into_response();
    };
    let mut first = true;
    let stream = futures_util::stream::unfold(watching, move |watching| {
        let wait = if std::mem::take(&mut first) {
            Duration::ZERO
        } else {
            EVENT_INTERVAL
        };
        watching.next(wait)
    });
    let headers = [
        (header::CONTENT_TYPE, "text/event-stream"),
        (header::CACHE_CONTROL, "no-store"),
    ];
    (headers, Body::from_stream(stream)).into_response()
}
