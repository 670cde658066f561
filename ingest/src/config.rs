//! The ingest bridge's settings: defaults that work locally, a TOML file, `EYE_…` overrides.

use std::path::{Path, PathBuf};

use eye_core::raw::DEFAULT_RAW_TOPIC;
use eye_core::settings::KafkaSettings;
use eye_core::validate::ValidationSettings;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// Address the public API (`/v1/events`) listens on.
    pub listen: String,
    /// Address of `/healthz`, `/readyz` and `/metrics`: apart from the API, so probes answer
    /// during a flood and metrics need not be public.
    pub operations_listen: String,
    pub kafka: KafkaSettings,
    pub producer: ProducerSettings,
    pub limits: Limits,
    /// The trusted applications and the SHA-256 of their API keys.
    pub applications: Vec<Application>,
    /// A TOML file of more `[[applications]]`, e.g. a mounted secret (`EYE_APPLICATIONS_FILE`).
    pub applications_file: Option<PathBuf>,
    /// More applications as `id:key_sha256` pairs, comma-separated, e.g. from a secret in the
    /// environment (`EYE_APPLICATION_KEYS`); without rate limits.
    pub application_keys: String,
    /// Origins allowed to call the API from a browser (CORS); empty allows none.
    pub cors_allowed_origins: Vec<String>,
    /// `Retry-After` sent with 503 replies.
    pub retry_after_seconds: u32,
    /// The event schemas (`avro/` inside), for `?verdicts=true`: the processor's `schemas_dir`
    /// (`EYE_SCHEMAS_DIR`).
    pub schemas_dir: PathBuf,
    /// The processor's `validation` settings, so that a verdict is the processor's.
    pub validation: ValidationSettings,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            operations_listen: "127.0.0.1:8082".into(),
            kafka: KafkaSettings::default(),
            producer: ProducerSettings::default(),
            limits: Limits::default(),
            applications: Vec::new(),
            applications_file: None,
            application_keys: String::new(),
            cors_allowed_origins: Vec::new(),
            retry_after_seconds: 1,
            schemas_dir: "schemas".into(),
            validation: ValidationSettings::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApplicationSourceError {
    #[error("no application is configured, so no request could be accepted. Hash a key with `eye-ingest --hash-key KEY`, then add it as [[applications]] (id, key_sha256) to the config file, to a TOML file named by applications_file (EYE_APPLICATIONS_FILE), or as id:key_sha256 to application_keys (EYE_APPLICATION_KEYS)")]
    None,
    #[error("applications_file {path}: {source}")]
    File {
        path: PathBuf,
        source: config::ConfigError,
    },
    #[error("application_keys: {pair:?} is not id:key_sha256")]
    KeyPair { pair: String },
}

/// The file `applications_file` names: applications only.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApplicationsFile {
    applications: Vec<Application>,
}

impl IngestConfig {
    /// Every trusted application, from the config, `applications_file` and `application_keys`;
    /// at least one, or the bridge has nothing to accept.
    pub fn all_applications(&self) -> Result<Vec<Application>, ApplicationSourceError> {
        let mut applications = self.applications.clone();
        if let Some(path) = &self.applications_file {
            applications.extend(read_applications_file(path)?);
        }
        for pair in self.application_keys.split(',').map(str::trim) {
            if pair.is_empty() {
                continue;
            }
            match pair.split_once(':') {
                Some((id, key_sha256)) if !id.trim().is_empty() => applications.push(Application {
                    id: id.trim().to_string(),
                    key_sha256: key_sha256.trim().to_string(),
                    rate_limit: None,
                }),
                _ => {
                    return Err(ApplicationSourceError::KeyPair {
                        pair: pair.to_string(),
                    })
                }
            }
        }
        if applications.is_empty() {
            return Err(ApplicationSourceError::None);
        }
        Ok(applications)
    }
}

/// Not `eye_core::settings::load`: that infers the format from the extension, and a mounted
/// secret has none.
fn read_applications_file(path: &Path) -> Result<Vec<Application>, ApplicationSourceError> {
    let failed = |source| ApplicationSourceError::File {
        path: path.to_path_buf(),
        source,
    };
    let file: ApplicationsFile = config::Config::builder()
        .add_source(config::File::new(
            &path.to_string_lossy(),
            config::FileFormat::Toml,
        ))
        .build()
        .and_then(config::Config::try_deserialize)
        .map_err(failed)?;
    Ok(file.applications)
}

/// How events are produced to the raw topic.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProducerSettings {
    pub topic: String,
    /// How long an event may wait for the broker's acknowledgement before the request fails with
    /// 503 (`message.timeout.ms`).
    pub message_timeout_ms: u64,
    /// How long the producer waits to fill a batch (`linger.ms`). Every request waits for its
    /// acknowledgement, so this is added to each reply: 1 ms gave 2.7x the single-event requests/s
    /// of 5 ms for 11% fewer batched events/s (docs/benchmarks.md).
    pub linger_ms: u64,
    /// Largest batch sent to one partition (`batch.size`).
    pub batch_size_bytes: u64,
    /// `compression.type`: none, gzip, snappy, lz4 or zstd.
    pub compression: String,
    /// Events waiting for acknowledgement at most; a request that would exceed it gets 503.
    pub queue_max_events: u64,
    /// Largest Kafka message (value, key and headers) the bridge produces: librdkafka's and
    /// Kafka's default `message.max.bytes`. A request holding a larger event gets 413 and nothing
    /// of it is produced.
    pub max_event_bytes: usize,
}

impl Default for ProducerSettings {
    fn default() -> Self {
        Self {
            topic: DEFAULT_RAW_TOPIC.into(),
            message_timeout_ms: 5_000,
            linger_ms: 1,
            batch_size_bytes: 1_000_000,
            compression: "lz4".into(),
            queue_max_events: 40_000,
            max_event_bytes: 1_000_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest request body as sent (compressed when gzip).
    pub max_body_bytes: usize,
    /// Largest body after gzip decompression.
    pub max_decompressed_bytes: usize,
    /// Most events in one request.
    pub max_batch_events: usize,
    /// Requests served at once; one more gets 503 `overloaded` at once instead of waiting.
    pub max_concurrent_requests: usize,
    /// A request whose body has not fully arrived this long after its headers gets 408.
    pub body_read_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            max_decompressed_bytes: 10 * 1024 * 1024,
            max_batch_events: 1000,
            max_concurrent_requests: 1024,
            body_read_timeout_ms: 10_000,
        }
    }
}

/// A trusted application: its id, stamped on its events, and the hex SHA-256 of its API key.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Application {
    pub id: String,
    pub key_sha256: String,
    /// Events per second the application may send, as a token bucket; unlimited when absent.
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
}

/// A token bucket: `events_per_second` refill, `burst_events` capacity (at least
/// `limits.max_batch_events`, so every allowed batch can pass). Over it: 429 with `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub events_per_second: u32,
    pub burst_events: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(env: &[(&str, &str)]) -> IngestConfig {
        eye_core::settings::load_with_env(
            None,
            env.iter()
                .map(|(name, value)| (name.to_string(), value.to_string())),
        )
        .unwrap()
    }

    const HASH: &str = "9288cbe05f91da2c61516bc23f31c49da7d055974bcabfa87cca769c076846bf";

    #[test]
    fn no_application_is_refused_with_how_to_add_one() {
        let error = load(&[]).all_applications().unwrap_err();
        assert!(matches!(error, ApplicationSourceError::None));
        let message = error.to_string();
        for hint in [
            "eye-ingest --hash-key",
            "[[applications]]",
            "EYE_APPLICATIONS_FILE",
            "EYE_APPLICATION_KEYS",
        ] {
            assert!(message.contains(hint), "{message} names {hint}");
        }
    }

    #[test]
    fn applications_from_a_secret_file_and_the_environment_join_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("applications.toml");
        std::fs::write(
            &file,
            format!(
                "[[applications]]\nid = \"shop\"\nkey_sha256 = \"{HASH}\"\n\
                 rate_limit = {{ events_per_second = 10, burst_events = 2000 }}\n"
            ),
        )
        .unwrap();
        let config = load(&[
            ("EYE_APPLICATIONS_FILE", file.to_str().unwrap()),
            (
                "EYE_APPLICATION_KEYS",
                &format!(" blog:{HASH} , wiki:{HASH},"),
            ),
        ]);
        let applications = config.all_applications().unwrap();
        let ids: Vec<&str> = applications.iter().map(|app| app.id.as_str()).collect();
        assert_eq!(ids, ["shop", "blog", "wiki"]);
        assert_eq!(
            applications[0].rate_limit,
            Some(RateLimit {
                events_per_second: 10,
                burst_events: 2000
            })
        );
        assert!(applications.iter().all(|app| app.key_sha256 == HASH));
    }

    /// A mounted secret has no extension (compose: /run/secrets/eye-applications); it is read
    /// as TOML all the same.
    #[test]
    fn an_applications_file_without_an_extension_is_read_as_toml() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("eye-applications");
        std::fs::write(
            &file,
            format!("[[applications]]\nid = \"shop\"\nkey_sha256 = \"{HASH}\"\n"),
        )
        .unwrap();
        let config = load(&[("EYE_APPLICATIONS_FILE", file.to_str().unwrap())]);
        let applications = config.all_applications().unwrap();
        assert_eq!(applications.len(), 1);
        assert_eq!(applications[0].id, "shop");
    }

    #[test]
    fn a_malformed_key_pair_or_applications_file_is_refused_by_name() {
        let error = load(&[("EYE_APPLICATION_KEYS", HASH)])
            .all_applications()
            .unwrap_err();
        assert!(
            matches!(error, ApplicationSourceError::KeyPair { .. }),
            "{error}"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("applications.toml");
        std::fs::write(&file, "[[applications]]\nid = \"shop\"\nkey = \"plain\"\n").unwrap();
        let error = load(&[("EYE_APPLICATIONS_FILE", file.to_str().unwrap())])
            .all_applications()
            .unwrap_err();
        assert!(
            matches!(&error, ApplicationSourceError::File { path, .. } if *path == file),
            "{error}"
        );
        let missing = dir.path().join("missing.toml");
        let error = load(&[("EYE_APPLICATIONS_FILE", missing.to_str().unwrap())])
            .all_applications()
            .unwrap_err();
        assert!(error.to_string().contains("missing.toml"), "{error}");
    }
}
