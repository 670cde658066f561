//! The HTTP API: `POST /v1/events` (its reference at `/docs`), health, readiness and metrics.

use std::sync::Arc;

use std::time::Duration;

use axum::body::Body;
use axum::error_handling::HandleErrorLayer;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{BoxError, Extension, Json, Router};
use bytes::Bytes;
use eye_core::raw::{now_micros, Stamp};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use metrics::counter;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use tower::ServiceBuilder;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::trace::TraceLayer;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::Applications;
use crate::body::{gunzip, split_events, BodyFormat};
use crate::config::{IngestConfig, Limits};
use crate::error::{error_response, ApiError, ErrorBody, Reason};
use crate::openapi::{docs_router, EventBody};
use crate::producer::{EventProducer, OutgoingEvent};
use crate::rate_limit::RateLimits;
use crate::verdicts::{Verdict, Verdicts};

pub struct AppState {
    pub applications: Applications,
    pub rate_limits: RateLimits,
    pub producer: Arc<EventProducer>,
    pub verdicts: Verdicts,
    pub limits: Limits,
    pub retry_after_seconds: u32,
    pub metrics: PrometheusHandle,
}

/// The public API. `/v1/events` bounds its work before anything else: past
/// `max_concurrent_requests` a request gets 503 at once (load shedding, not a queue); the API key
/// is checked from the headers before the body is read; the body must arrive within
/// `body_read_timeout_ms`.
pub fn api_router(state: Arc<AppState>, config: &IngestConfig) -> Router {
    let retry_after_seconds = state.retry_after_seconds;
    let mut events = Router::new()
        .route("/v1/events", post(post_events))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .route_layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(move |_: BoxError| async move {
                    counter!("eye_ingest_rejects_total", "reason" => Reason::Overloaded.as_str())
                        .increment(1);
                    error_response(ApiError::Overloaded, retry_after_seconds)
                }))
                .load_shed()
                .concurrency_limit(config.limits.max_concurrent_requests),
        );
    if !config.cors_allowed_origins.is_empty() {
        let origins = config
            .cors_allowed_origins
            .iter()
            .filter_map(|origin| HeaderValue::from_str(origin).ok());
        events = events.layer(
            CorsLayer::new()
                .allow_origin(AllowOrigin::list(origins))
                .allow_methods([Method::POST])
                .allow_headers([
                    header::AUTHORIZATION,
                    header::CONTENT_TYPE,
                    header::CONTENT_ENCODING,
                ])
                .max_age(std::time::Duration::from_secs(3600)),
        );
    }
    events
        .with_state(state)
        .route("/v1/eye.js", get(browser_snippet))
        .merge(docs_router())
        .layer(TraceLayer::new_for_http())
}

/// Health, readiness and metrics, served apart from the API (`operations_listen`) so probes
/// answer during a flood and metrics are not public.
pub fn operations_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(state)
}

/// The application a request is from, found before its body is read.
#[derive(Clone)]
pub(crate) struct Authenticated(String);

async fn authenticate(
    State(state): State<Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let query_key = Query::<KeyQuery>::try_from_uri(request.uri())
        .ok()
        .and_then(|query| query.0.api_key);
    match state
        .applications
        .authenticate(request.headers(), query_key.as_deref())
    {
        Some(application) => {
            let application = Authenticated(application.to_string());
            request.extensions_mut().insert(application);
            next.run(request).await
        }
        None => {
            counter!("eye_ingest_rejects_total", "reason" => Reason::Unauthorized.as_str())
                .increment(1);
            counter!("eye_ingest_requests_total", "route" => "/v1/events", "status" => "401")
                .increment(1);
            error_response(ApiError::Unauthorized, state.retry_after_seconds)
        }
    }
}

/// The 202 reply: the id of every event, in request order.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Accepted {
    pub event_ids: Vec<Uuid>,
    /// With `?verdicts=true`: what the processor will record for each event, in request order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdicts: Option<Vec<Verdict>>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct EventsQuery {
    /// `true`: the reply also says, for each event, whether the processor will write it to
    /// `events` or record it in `event_errors`, and why (the same validation, the same schemas).
    /// The events go to the raw topic either way.
    #[serde(default)]
    verdicts: bool,
}

#[derive(Deserialize)]
struct KeyQuery {
    api_key: Option<String>,
}

/// Send events
///
/// Puts every event of the body on the raw Kafka topic, byte for byte, and replies once the broker
/// has acknowledged them all. The body is one JSON event or an array of them
/// (`application/json`; `text/plain` is read the same, for `navigator.sendBeacon`), or one event
/// per line (`application/x-ndjson`), optionally `Content-Encoding: gzip`. Limits (defaults):
/// `limits.max_body_bytes` 1 MiB as sent, `limits.max_decompressed_bytes` 10 MiB after gunzip,
/// `limits.max_batch_events` 1000 events, `producer.max_event_bytes` 1,000,000 per event; a
/// refused request produces nothing. An event that is not valid for its type is accepted too: the
/// processor records it in `event_errors` with its reason. A 503 can come after some events
/// reached the broker: resend the same events with the same `event_id`s.
#[utoipa::path(
    post,
    path = "/v1/events",
    tag = "events",
    operation_id = "send_events",
    request_body(
        description = "One event, an array of events, or NDJSON",
        content(
            (EventBody = "application/json"),
            (String = "application/x-ndjson", example = json!("{\"session_id\":\"e2085be5-9137-4e4e-80b5-f1ffddc25423\",\"category\":\"page interaction\",\"name\":\"pageview\",\"data\":{\"host\":\"www.consumeraffairs.com\",\"path\":\"/\"},\"timestamp\":\"2021-01-01 09:15:27.243860\"}\n")),
            (String = "text/plain"),
        ),
    ),
    responses(
        (status = 202, description = "Every event is on the raw topic; their ids, in request order", body = Accepted),
        (status = 400, description = "`malformed_body` (not JSON, not an object or array of objects, an NDJSON line broken, an `event_id` not a UUID; the message names the position), `body_unreadable`, or `bad_query` (`verdicts` not `true` or `false`)", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no API key or an unknown one, judged before the body is read", body = ErrorBody),
        (status = 408, description = "`body_timeout`: the body did not arrive within `limits.body_read_timeout_ms` (10 s) of the headers", body = ErrorBody),
        (status = 413, description = "`body_too_large`, `decompressed_too_large`, `too_many_events` or `event_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_content_type` or `unsupported_encoding`", body = ErrorBody),
        (status = 429, description = "`rate_limited`: the application is over its rate limit", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds until the events fit the application's bucket"))),
        (status = 503, description = "`overloaded`, `broker_unavailable`, `queue_full` or `producer_failed`: retry the same events after `Retry-After`", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    ),
    params(EventsQuery),
    security(("bearer" = []), ("api_key" = [])),
)]
pub(crate) async fn post_events(
    State(state): State<Arc<AppState>>,
    Extension(Authenticated(application)): Extension<Authenticated>,
    query: Result<Query<EventsQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let reply = match query {
        Ok(Query(query)) => accept_events(&state, &application, &query, &headers, body).await,
        Err(rejection) => Err(ApiError::BadQuery(rejection.body_text())),
    };
    let response = match reply {
        Ok(accepted) => (StatusCode::ACCEPTED, Json(accepted)).into_response(),
        Err(error) => {
            counter!("eye_ingest_rejects_total", "reason" => error.reason().as_str()).increment(1);
            error_response(error, state.retry_after_seconds)
        }
    };
    counter!("eye_ingest_requests_total", "route" => "/v1/events", "status" => response.status().as_str().to_owned())
        .increment(1);
    response
}

/// The browser snippet, `ingest/assets/eye.js`.
const BROWSER_SNIPPET: &str = include_str!("../assets/eye.js");

/// The browser snippet
///
/// A script for web pages: a session per tab and site, a UUID `event_id` per event made in the
/// browser (so resending is idempotent), an automatic pageview, `eye.track(category, name, data)`,
/// batches sent in order, kept in `sessionStorage` until acknowledged, `navigator.sendBeacon` when
/// the page is left. Load it with `<script src=".../v1/eye.js" data-api-key="KEY"></script>`; the
/// page's origin must be in `cors_allowed_origins`.
#[utoipa::path(
    get,
    path = "/v1/eye.js",
    tag = "browser",
    operation_id = "browser_snippet",
    responses(
        (status = 200, description = "The script", body = String, content_type = "text/javascript"),
    ),
)]
pub(crate) async fn browser_snippet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        BROWSER_SNIPPET,
    )
        .into_response()
}

/// The whole body, within the size limit and the read time-out.
async fn read_body(body: Body, limits: &Limits) -> Result<Bytes, ApiError> {
    let limited = Limited::new(body, limits.max_body_bytes);
    let timeout = Duration::from_millis(limits.body_read_timeout_ms);
    match tokio::time::timeout(timeout, limited.collect()).await {
        Err(_) => Err(ApiError::BodyTimeout(limits.body_read_timeout_ms)),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(error)) if error.is::<LengthLimitError>() => {
            Err(ApiError::BodyTooLarge(limits.max_body_bytes))
        }
        Ok(Err(error)) => Err(ApiError::BodyUnreadable(error.to_string())),
    }
}

async fn accept_events(
    state: &AppState,
    application: &str,
    query: &EventsQuery,
    headers: &HeaderMap,
    body: Body,
) -> Result<Accepted, ApiError> {
    let body = read_body(body, &state.limits).await?;
    counter!("eye_ingest_request_bytes_total").increment(body.len() as u64);
    let format = body_format(headers)?;
    let decoded;
    let body: &[u8] = match header_text(headers, header::CONTENT_ENCODING).as_deref() {
        None | Some("identity") => &body,
        Some("gzip") => {
            decoded = gunzip(&body, state.limits.max_decompressed_bytes)?;
            &decoded
        }
        Some(other) => return Err(ApiError::UnsupportedEncoding(other.to_string())),
    };
    let incoming = split_events(body, format, &state.limits)?;
    state.rate_limits.admit(application, incoming.len())?;

    let received_at = now_micros();
    let stamps: Vec<Stamp> = incoming
        .iter()
        .map(|event| Stamp {
            event_id: event.event_id.unwrap_or_else(Uuid::now_v7),
            received_at,
            application: application.to_string(),
        })
        .collect();
    let event_id_keys: Vec<String> = stamps
        .iter()
        .map(|stamp| stamp.event_id.to_string())
        .collect();
    let outgoing: Vec<OutgoingEvent> = incoming
        .iter()
        .zip(&stamps)
        .zip(&event_id_keys)
        .map(|((event, stamp), event_id_key)| OutgoingEvent {
            // A session stays in one partition, hence in order; events without one spread by id.
            key: event
                .session_id
                .as_deref()
                .unwrap_or(event_id_key)
                .as_bytes(),
            payload: event.json,
            stamp,
        })
        .collect();
    state.producer.check_sizes(&outgoing)?;
    let verdicts = query.verdicts.then(|| {
        incoming
            .iter()
            .zip(&stamps)
            .map(|(event, stamp)| state.verdicts.judge(event.json, stamp))
            .collect()
    });
    state.producer.produce_all(&outgoing).await?;
    Ok(Accepted {
        event_ids: stamps.into_iter().map(|stamp| stamp.event_id).collect(),
        verdicts,
    })
}

fn header_text(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
    headers.get(name).map(|value| {
        String::from_utf8_lossy(value.as_bytes())
            .trim()
            .to_ascii_lowercase()
    })
}

fn body_format(headers: &HeaderMap) -> Result<BodyFormat, ApiError> {
    let content_type = header_text(headers, header::CONTENT_TYPE);
    let essence = content_type
        .as_deref()
        .map(|value| value.split(';').next().unwrap_or("").trim());
    match essence {
        None | Some("application/json" | "text/plain") => Ok(BodyFormat::Json),
        Some("application/x-ndjson" | "application/ndjson") => Ok(BodyFormat::Ndjson),
        Some(_) => Err(ApiError::UnsupportedContentType(
            content_type.unwrap_or_default(),
        )),
    }
}

/// Alive unless the producer failed for good (then only a restart helps).
async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    match state.producer.fatal_error() {
        None => (StatusCode::OK, "ok").into_response(),
        Some(error) => (StatusCode::SERVICE_UNAVAILABLE, error).into_response(),
    }
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.producer.broker_reachable() && state.producer.fatal_error().is_none() {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "kafka broker unreachable").into_response()
    }
}

async fn render_metrics(State(state): State<Arc<AppState>>) -> String {
    state.metrics.run_upkeep();
    state.metrics.render()
}
