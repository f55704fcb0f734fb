//! Requests the bridge answers itself: refused at the door, or abandoned by their client
//! while walked or held. Each is counted and logged like every other answer.

use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::response::{IntoResponse, Response};
use http::{HeaderMap, Method};

use super::{ATTEMPTS_HEADER, count_value, error_response, split_provider};
use crate::failover::OutboundRequest;
use crate::provider::{ApiError, ApiRoute, ProviderKind, ProviderSpec};
use crate::server::journal::{Outcome, RequestRecord};
use crate::server::relay::{Completion, Framing};
use crate::server::{AppState, Worker};

/// Refuses a request at the door (see [`super::guard`]), in the shape of the provider its
/// path names; counted and logged like every answer.
pub fn refuse(worker: Worker, method: &Method, uri: &http::Uri, api_error: &ApiError) -> Response {
    let bridge = worker.app.bridge.load();
    let (name, rest) = split_provider(uri.path());
    let (provider, api, route) = match bridge.upstreams.get(name) {
        Some(upstream) => {
            let api = upstream.kind.api();
            (name, api, api.route(method, rest))
        }
        None => (
            UNKNOWN_PROVIDER,
            ProviderKind::OpenAi.api(),
            ApiRoute::Other,
        ),
    };
    Refused::new(worker, provider, method, uri.path()).answer(api, route, api_error, Instant::now())
}

/// The provider label of requests for a provider that does not exist: one label, so made-up
/// names cannot grow the metrics.
pub(super) const UNKNOWN_PROVIDER: &str = "unknown";

/// Only logs and dumps name requests; the shared counter is left alone otherwise.
pub(super) fn request_id(app: &AppState) -> u64 {
    if app.journal.logging() || app.journal.dumping() {
        app.next_request_id.fetch_add(1, Ordering::Relaxed)
    } else {
        0
    }
}

/// A request the bridge answers itself, before any attempt: counted and logged like every
/// other answer.
pub(super) struct Refused {
    worker: Worker,
    provider: String,
    record: Option<Box<RequestRecord>>,
}

impl Refused {
    pub(super) fn new(worker: Worker, provider: &str, method: &Method, path: &str) -> Self {
        let app = worker.app;
        let record = app.journal.logs_refusal().then(|| {
            RequestRecord::unanswered(
                request_id(app),
                provider.into(),
                method,
                path,
                ApiRoute::Other,
            )
        });
        Self {
            worker,
            provider: provider.to_owned(),
            record,
        }
    }

    pub(super) fn answer(
        self,
        api: &ProviderSpec,
        route: ApiRoute,
        api_error: &ApiError,
        started: Instant,
    ) -> Response {
        let record = self.record.map(|mut record| {
            record.route = route.as_str();
            record
        });
        let mut completion = Completion::new(
            self.worker,
            self.provider.as_str().into(),
            route,
            0,
            started,
            record,
        );
        completion.failed(api_error.status(), &api_error.message());
        error_response(api, api_error)
    }

    /// `GET`/`HEAD` of a provider's root, which clients such as Claude Code send at start to
    /// see that the base URL answers: the bridge says so itself, with no key spent.
    pub(super) fn reachable(self, started: Instant) -> Response {
        let body = serde_json::json!({"status": "ok", "provider": self.provider});
        let mut completion = Completion::new(
            self.worker,
            self.provider.as_str().into(),
            ApiRoute::Other,
            0,
            started,
            self.record,
        );
        completion = completion.with_response(200, &HeaderMap::new(), &Framing::Opaque);
        completion.finish(Outcome::Completed);
        let mut response = axum::Json(body).into_response();
        response
            .headers_mut()
            .insert(ATTEMPTS_HEADER, count_value(0));
        response
    }
}

/// Logs and counts a request whose client leaves while it is walked or held: the walk's
/// future is dropped with the connection, and this with it.
pub(super) struct Abandoned<'a> {
    pub(super) worker: Worker,
    pub(super) provider: &'a str,
    pub(super) route: ApiRoute,
    pub(super) started: Instant,
    /// Cleared once the walk has an answer.
    pub(super) request: Option<&'a OutboundRequest>,
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        let Some(request) = self.request else { return };
        let app = self.worker.app;
        let record = app.journal.logging().then(|| {
            RequestRecord::unanswered(
                request_id(app),
                self.provider.into(),
                &request.method,
                &request.path_and_query,
                self.route,
            )
        });
        Completion::new(
            self.worker,
            self.provider.into(),
            self.route,
            0,
            self.started,
            record,
        )
        .abandoned();
    }
}
