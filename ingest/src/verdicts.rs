//! Per-event verdicts (`POST /v1/events?verdicts=true`): for each event of a request, what the
//! processor will record. The same code decides (`eye_core::validate`, on the same schemas), from
//! the same bytes and the headers the bridge stamps on the message, so the verdict is the
//! processor's as long as both run the same schemas and `validation` settings. The events still go
//! to the raw topic as always; a verdict is advice for whoever instruments an application.

use std::borrow::Cow;
use std::path::Path;

use eye_core::raw::Stamp;
use eye_core::schemas::{SchemaError, SchemaRegistry};
use eye_core::validate::{Envelope, Transport, ValidationSettings, Validator};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// An event's verdict, in request order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// The processor will write the event to `events`.
    Valid,
    /// The processor will record the event in `event_errors` with this type, field and reason.
    Invalid {
        /// `event_errors.error_type`, e.g. `invalid_data`.
        #[schema(example = "invalid_data")]
        error_type: String,
        /// `event_errors.field_path`: the offending field, empty when the whole event is at fault.
        #[schema(example = "data.path")]
        field_path: String,
        /// `event_errors.reason`.
        reason: String,
    },
}

/// The processor's validator, loaded by the bridge from the same schemas.
pub struct Verdicts {
    validator: Validator,
}

impl Verdicts {
    /// The event schemas of `schemas_dir` (`avro/`), judged with `settings`.
    pub fn load(schemas_dir: &Path, settings: &ValidationSettings) -> Result<Self, SchemaError> {
        let registry = SchemaRegistry::load(&schemas_dir.join("avro"))?;
        Ok(Self {
            validator: Validator::new(
                registry,
                chrono::Duration::seconds(settings.future_tolerance_seconds),
            ),
        })
    }

    /// The verdict on `event`, the message value the bridge produces with `stamp`'s headers.
    pub fn judge(&self, event: &[u8], stamp: &Stamp) -> Verdict {
        let headers = stamp.header_values();
        let transport = Transport {
            headers: headers
                .iter()
                .map(|(name, value)| (Cow::Borrowed(*name), Some(value.as_bytes())))
                .collect(),
            ..Transport::default()
        };
        // The headers name the application, so no default is used.
        let envelope = Envelope::of(&transport, "");
        match self.validator.validate(event, &envelope) {
            Ok(_) => Verdict::Valid,
            Err(failed) => Verdict::Invalid {
                error_type: failed.failure.error_type.as_str().to_string(),
                field_path: failed.failure.field_path,
                reason: failed.failure.reason,
            },
        }
    }
}
