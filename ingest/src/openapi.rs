//! The bridge's OpenAPI 3.1 document, generated from the handlers' annotations and the reply
//! types, and the interactive reference that serves it: `/openapi.json` and `/docs` (Swagger UI,
//! its assets compiled into the binary, so it needs no CDN). `docs/openapi.json` is a copy of the
//! document, kept equal to it by a test.

use axum::Router;
use utoipa::openapi::example::ExampleBuilder;
use utoipa::openapi::schema::{ArrayBuilder, OneOfBuilder, Schema};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Ref, RefOr};
use utoipa::{Modify, OpenApi, PartialSchema, ToSchema};
use utoipa_swagger_ui::{Config, SwaggerUi};
use uuid::Uuid;

use crate::config::Limits;
use crate::error::{ErrorBody, Reason};
use crate::routes::Accepted;
use crate::verdicts::Verdict;

/// The path of the interactive reference.
pub const DOCS_PATH: &str = "/docs";
/// The path of the document.
pub const DOCUMENT_PATH: &str = "/openapi.json";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "The Eye ingest bridge",
        description = "Trusted applications POST user-interaction events; each is on the raw Kafka \
            topic, byte for byte, before the 202 reply. The processor then validates every event \
            against the Avro schema of its (category, name) and writes it to ClickHouse's `events`, \
            or to `event_errors` with a typed reason. Health, readiness and metrics are served on \
            the separate operations listener (`operations_listen`), not here. This document is \
            served at `/openapi.json`, and browsable, with requests sent from the page, at `/docs`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(crate::routes::post_events, crate::routes::browser_snippet),
    components(schemas(Event, EventBody, Accepted, Verdict, ErrorBody, Reason)),
    modifiers(&AuthSchemes, &ReferenceEvents),
    tags(
        (name = "events", description = "Sending events"),
        (name = "browser", description = "For web pages")
    )
)]
struct BridgeApi;

/// The document, as served at [`DOCUMENT_PATH`].
pub fn document() -> utoipa::openapi::OpenApi {
    let mut document = BridgeApi::openapi();
    document.info.version = env!("CARGO_PKG_VERSION").to_string();
    document
}

/// `/openapi.json` and the Swagger UI at `/docs`, which sends its requests to this same bridge.
pub fn docs_router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let config = Config::from(DOCUMENT_PATH)
        .try_it_out_enabled(true)
        .persist_authorization(true)
        .display_request_duration(true)
        // The public validator is on the internet; many deployments cannot reach it.
        .validator_url("none");
    SwaggerUi::new(DOCS_PATH)
        .url(DOCUMENT_PATH, document())
        .config(config)
        .into()
}

/// An event as an application sends it. The bridge reads only `event_id` and `session_id`; the
/// processor checks the rest against the type's schema (`schemas/avro/events/`), and an event that
/// fails is still accepted and recorded in `event_errors` with its reason.
#[derive(ToSchema)]
#[allow(dead_code)] // Describes the body; the bridge passes events on as the bytes it received.
struct Event {
    /// The client's id for the event, kept so a retry is the same event; without it the bridge
    /// assigns a UUIDv7. Anything but a UUID is refused with 400.
    event_id: Option<Uuid>,
    /// The session, a UUID; it keys the Kafka message, so a session's events stay in order.
    session_id: Uuid,
    /// With `name`, the event's type, e.g. `page interaction`.
    #[schema(example = "page interaction")]
    category: String,
    #[schema(example = "pageview")]
    name: String,
    /// When the event happened: `YYYY-MM-DD HH:MM:SS[.ffffff]` in UTC, or RFC 3339 with `T` or a
    /// space, `Z` or an offset; kept to the microsecond, 1970 to 2106.
    #[schema(example = "2021-01-01 09:15:27.243860")]
    timestamp: String,
    /// The type's payload, a JSON object the type's Avro record describes (closed: a key it does not
    /// name is a failure). `host` and `path`, where the type has them, become columns.
    #[schema(value_type = Object)]
    data: serde_json::Value,
}

/// A JSON body: one event, or an array of 1 to `limits.max_batch_events` (1000 by default).
pub(crate) struct EventBody;

impl utoipa::PartialSchema for EventBody {
    fn schema() -> RefOr<Schema> {
        let event = || RefOr::Ref(Ref::from_schema_name(Event::name()));
        OneOfBuilder::new()
            .item(event())
            .item(
                ArrayBuilder::new()
                    .items(event())
                    .min_items(Some(1))
                    .max_items(Some(Limits::default().max_batch_events)),
            )
            .into()
    }
}

impl ToSchema for EventBody {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((Event::name().into(), Event::schema()));
    }
}

/// The two ways to present an API key: a bearer token, or `?api_key=` for `navigator.sendBeacon`,
/// which cannot set headers.
struct AuthSchemes;

impl Modify for AuthSchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("`Authorization: Bearer <API key>`"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "api_key",
                "The API key as a query parameter, for `navigator.sendBeacon`",
            ))),
        );
    }
}

/// The reference events of `examples/events/`, as the JSON body's examples (the reference page
/// sends them with a click).
struct ReferenceEvents;

const REFERENCE_EVENTS: [(&str, &str, &str); 3] = [
    (
        "pageview",
        "A pageview",
        include_str!("../../examples/events/pageview.json"),
    ),
    (
        "cta_click",
        "A call-to-action click",
        include_str!("../../examples/events/cta_click.json"),
    ),
    (
        "form_submit",
        "A form submit",
        include_str!("../../examples/events/form_submit.json"),
    ),
];

impl Modify for ReferenceEvents {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let Some(body) = openapi
            .paths
            .paths
            .get_mut("/v1/events")
            .and_then(|path| path.post.as_mut())
            .and_then(|operation| operation.request_body.as_mut())
        else {
            return;
        };
        let RefOr::T(body) = body else {
            return;
        };
        let Some(RefOr::T(json)) = body.content.get_mut("application/json") else {
            return;
        };
        for (key, summary, text) in REFERENCE_EVENTS {
            let value: serde_json::Value =
                serde_json::from_str(text).expect("the reference events are JSON");
            let example = ExampleBuilder::new()
                .summary(summary)
                .value(Some(value))
                .build();
            json.examples.insert(key.to_string(), RefOr::T(example));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reference_event_is_an_example_of_the_json_body() {
        let document = serde_json::to_value(document()).unwrap();
        let examples = &document["paths"]["/v1/events"]["post"]["requestBody"]["content"]
            ["application/json"]["examples"];
        for (key, _, _) in REFERENCE_EVENTS {
            assert!(examples[key]["value"]["session_id"].is_string(), "{key}");
        }
    }
}
