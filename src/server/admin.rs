//! Operator routes: health, the pool report, clearing marks, and Prometheus metrics.
//! They need an access token whenever tokens are configured.

use axum::Json;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, header};
use serde_json::json;

use super::AppState;
use super::metrics::ConnectionCounts;
use super::proxy::error_response;
use crate::health::{HealthChange, KeySelectError, KnownKey, SharedStatus, select_key};
use crate::keypool::KeyState;
use crate::provider::{ApiError, ProviderKind};
use crate::report::{ClearedKey, PoolReport, ResetRequest, ResetResponse};
use crate::token_proof;

/// `{"status":"ok"}`, with `"shared":"ok"` or `"degraded"` when key health is shared
/// through Redis: the server serves either way. A `pool` command's challenge is answered
/// with a proof per access token (see [`token_proof`]).
pub async fn health(State(app): State<&'static AppState>, headers: HeaderMap) -> Response {
    let status = match app.health.as_ref().map(|health| health.status()) {
        None | Some(SharedStatus::Local) => json!({"status": "ok"}),
        Some(shared) => json!({"status": "ok", "shared": shared}),
    };
    let mut response = Json(status).into_response();
    let challenge = headers
        .get(token_proof::CHALLENGE_HEADER)
        .filter(|value| token_proof::is_challenge(value.as_bytes()))
        .and_then(|value| value.to_str().ok());
    let bridge = app.bridge.load();
    let tokens = &bridge.settings.access_tokens;
    if let Some(challenge) = challenge.filter(|_| !tokens.is_empty()) {
        let proofs: Vec<String> = tokens
            .iter()
            .map(|token| token_proof::prove(token, challenge))
            .collect();
        if let Ok(value) = HeaderValue::try_from(proofs.join(", ")) {
            response
                .headers_mut()
                .insert(token_proof::PROOF_HEADER, value);
        }
    }
    response
}

/// Rejects callers without a valid access token (when tokens are configured).
pub(super) fn unauthorized(app: &AppState, headers: &HeaderMap) -> Option<Response> {
    let mut headers = headers.clone();
    let refused = app.bridge.load().authorize(&mut headers).err()?;
    Some(error_response(ProviderKind::OpenAi.api(), &refused))
}

pub async fn pool(State(app): State<&'static AppState>, headers: HeaderMap) -> Response {
    if let Some(denied) = unauthorized(app, &headers) {
        return denied;
    }
    let bridge = app.bridge.load();
    Json(PoolReport::new(bridge.upstreams.values())).into_response()
}

pub async fn metrics(State(app): State<&'static AppState>, headers: HeaderMap) -> Response {
    if let Some(denied) = unauthorized(app, &headers) {
        return denied;
    }
    let bridge = app.bridge.load();
    let text = app.metrics.render(
        bridge.upstreams.values(),
        ConnectionCounts {
            open: app.balancer.open_connections().collect(),
            refused: app.balancer.refused(),
            shed: app.shedding.shed(),
        },
        app.health
            .as_ref()
            .is_some_and(|health| health.status() == SharedStatus::Degraded),
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// `POST /_aibridge/pool/reset`, with the selection as query parameters or a JSON body.
pub async fn reset(
    State(app): State<&'static AppState>,
    headers: HeaderMap,
    Query(query): Query<ResetRequest>,
    body: Bytes,
) -> Response {
    if let Some(denied) = unauthorized(app, &headers) {
        return denied;
    }
    let api = ProviderKind::OpenAi.api();
    let selection = if body.iter().all(u8::is_ascii_whitespace) {
        query
    } else {
        match serde_json::from_slice::<ResetRequest>(&body) {
            Ok(selection) => selection,
            Err(error) => {
                return error_response(
                    api,
                    &ApiError::bad_request(format!("invalid reset request: {error}")),
                );
            }
        }
    };
    match clear_marks(app, &selection) {
        Ok(cleared) => Json(ResetResponse { cleared }).into_response(),
        Err(api_error) => error_response(api, &api_error),
    }
}

fn clear_marks(app: &AppState, selection: &ResetRequest) -> Result<Vec<ClearedKey>, ApiError> {
    let bridge = app.bridge.load();
    if let Some(name) = &selection.provider
        && !bridge.upstreams.contains_key(name)
    {
        return Err(ApiError::unknown_provider(name, &bridge.provider_names()));
    }
    let upstreams: Vec<_> = bridge
        .upstreams
        .values()
        .filter(|upstream| {
            selection
                .provider
                .as_ref()
                .is_none_or(|name| **name == *upstream.name)
        })
        .collect();
    // Resolve the whole selection first, so an ambiguous key clears nothing.
    let targets: Vec<_> = match &selection.key {
        None => upstreams
            .iter()
            .flat_map(|upstream| (0..upstream.pool.len()).map(move |index| (*upstream, index)))
            .collect(),
        Some(selector) => {
            let known: Vec<KnownKey> = upstreams
                .iter()
                .flat_map(|upstream| {
                    (0..upstream.pool.len()).map(|index| {
                        let key = upstream.pool.key(index);
                        KnownKey {
                            provider: upstream.name.to_string(),
                            fingerprint: key.fingerprint().to_owned(),
                            hint: key.hint().to_owned(),
                        }
                    })
                })
                .collect();
            let chosen = select_key(&known, None, selector).map_err(|error| match error {
                KeySelectError::NoMatch(_) => ApiError::not_found(error.to_string()),
                KeySelectError::Ambiguous { .. } => ApiError::bad_request(error.to_string()),
            })?;
            let upstream = upstreams
                .iter()
                .find(|upstream| *upstream.name == *chosen.provider)
                .expect("the key came from these upstreams");
            let index = upstream
                .pool
                .index_of(&chosen.fingerprint)
                .expect("the key came from this pool");
            vec![(*upstream, index)]
        }
    };
    let mut cleared = Vec::new();
    for (upstream, index) in targets {
        let before = upstream.pool.reset(index);
        if before == KeyState::Available {
            continue;
        }
        upstream.key_freed();
        let key = upstream.pool.key(index);
        tracing::info!(provider = %upstream.name, key = %key.key(), "key reset to available (was {})", before.name());
        if let Some(health) = &app.health {
            health.record(HealthChange::Cleared {
                provider: Some(upstream.name.to_string()),
                fingerprint: Some(key.fingerprint().to_owned()),
            });
        }
        cleared.push(ClearedKey {
            provider: upstream.name.to_string(),
            key: key.key().hint(),
            fingerprint: key.fingerprint().to_owned(),
            was: before.kind(),
        });
    }
    Ok(cleared)
}
