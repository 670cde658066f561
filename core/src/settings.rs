//! Typed service configuration: defaults, then a TOML file, then `EYE_…` environment variables
//! (`__` separates nested keys: `EYE_KAFKA__BROKERS=host:9092`).

use std::collections::BTreeMap;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
#[error("loading configuration: {0}")]
pub struct SettingsError(#[from] config::ConfigError);

/// Loads `T`, starting from `T::default()`, then `file` if given, then `EYE_…` variables.
pub fn load<T>(file: Option<&Path>) -> Result<T, SettingsError>
where
    T: Default + Serialize + DeserializeOwned,
{
    load_with_env(file, std::env::vars())
}

/// [`load`] with an explicit environment, so tests need not touch the process's.
pub fn load_with_env<T>(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<T, SettingsError>
where
    T: Default + Serialize + DeserializeOwned,
{
    let env: config::Map<String, String> = env.into_iter().collect();
    let mut builder =
        config::Config::builder().add_source(config::Config::try_from(&T::default())?);
    if let Some(file) = file {
        builder = builder.add_source(config::File::from(file).required(true));
    }
    let settings = builder
        .add_source(
            config::Environment::with_prefix("EYE")
                .prefix_separator("_")
                .separator("__")
                .source(Some(env)),
        )
        .build()?;
    Ok(settings.try_deserialize()?)
}

/// How a service reaches Kafka.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct KafkaSettings {
    /// `bootstrap.servers`: comma-separated `host:port` list.
    pub brokers: String,
    /// Raw librdkafka properties applied last, for anything without a typed setting.
    pub librdkafka: BTreeMap<String, String>,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            librdkafka: BTreeMap::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    #[serde(default)]
    struct Example {
        listen: String,
        kafka: KafkaSettings,
        limit_bytes: u64,
    }

    #[test]
    fn env_overrides_file_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("example.toml");
        std::fs::write(
            &file,
            "listen = \"0.0.0.0:1\"\nlimit_bytes = 5\n[kafka]\nbrokers = \"file:1\"\n",
        )
        .unwrap();
        let env = [("EYE_KAFKA__BROKERS".to_string(), "env:2".to_string())];
        let loaded: Example = load_with_env(Some(&file), env).unwrap();
        assert_eq!(loaded.listen, "0.0.0.0:1");
        assert_eq!(loaded.limit_bytes, 5);
        assert_eq!(loaded.kafka.brokers, "env:2");
    }

    #[test]
    fn defaults_apply_without_file_or_env() {
        let loaded: Example = load_with_env(None, []).unwrap();
        assert_eq!(loaded.kafka.brokers, "127.0.0.1:9092");
    }

    #[test]
    fn missing_file_is_an_error() {
        let missing = Path::new("/nonexistent/eye.toml");
        assert!(load_with_env::<Example>(Some(missing), []).is_err());
    }
}
