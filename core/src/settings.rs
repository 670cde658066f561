//! Typed service configuration: defaults, then a TOML file, then `EYE_…` environment variables
//! (`__` separates nested keys: `EYE_KAFKA__BROKERS=host:9092`). The settings structs deny
//! unknown fields, so a mistyped key in a file or below a section (`EYE_KAFKA__BROKER`) is an
//! error naming it; `EYE_…` variables whose first part names no section belong to other programs
//! (`EYE_STATE_DIR` of `cargo dev`, `EYE_INGEST_CONFIG`) and are left alone.

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
    let defaults = T::default();
    let sections: Vec<String> = match serde_json::to_value(&defaults) {
        Ok(serde_json::Value::Object(fields)) => fields.keys().cloned().collect(),
        _ => Vec::new(),
    };
    let env: config::Map<String, String> = env
        .into_iter()
        .filter(|(key, _)| {
            key.strip_prefix("EYE_")
                .and_then(|key| key.split("__").next())
                .is_some_and(|first| sections.contains(&first.to_ascii_lowercase()))
        })
        .collect();
    // The defaults are not a source: the config crate would split a dotted map key of them
    // (`"retention.ms"`) into nested tables. Every settings struct is `#[serde(default)]`, so
    // what the file and the variables leave out is filled from `T::default()` as it is read.
    let mut builder = config::Config::builder();
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
#[serde(default, deny_unknown_fields)]
pub struct KafkaSettings {
    /// `bootstrap.servers`: comma-separated `host:port` list.
    pub brokers: String,
    /// Raw librdkafka properties applied last, for anything without a typed setting.
    pub librdkafka: BTreeMap<String, String>,
}

impl KafkaSettings {
    /// `brokers`, without overrides.
    pub fn for_brokers(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            librdkafka: BTreeMap::new(),
        }
    }
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
    #[serde(default, deny_unknown_fields)]
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
    fn a_mistyped_key_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("example.toml");
        std::fs::write(&file, "limit_byte = 5\n").unwrap();
        let error = load_with_env::<Example>(Some(&file), []).unwrap_err();
        assert!(error.to_string().contains("limit_byte"), "{error}");

        let env = [("EYE_KAFKA__BROKER".to_string(), "env:2".to_string())];
        let error = load_with_env::<Example>(None, env).unwrap_err();
        assert!(error.to_string().contains("broker"), "{error}");
    }

    #[test]
    fn other_programs_variables_are_left_alone() {
        let env = [
            ("EYE_STATE_DIR".to_string(), "/tmp/eye".to_string()),
            (
                "EYE_EXAMPLE_CONFIG".to_string(),
                "/etc/eye.toml".to_string(),
            ),
        ];
        let loaded: Example = load_with_env(None, env).unwrap();
        assert_eq!(loaded, Example::default());
    }

    /// librdkafka's property names have dots; each must stay one key, not a nested table.
    #[test]
    fn a_librdkafka_property_from_the_file_keeps_its_dotted_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("example.toml");
        std::fs::write(
            &file,
            "[kafka.librdkafka]\n\"security.protocol\" = \"ssl\"\n\"linger.ms\" = \"50\"\n",
        )
        .unwrap();
        let loaded: Example = load_with_env(Some(&file), []).unwrap();
        assert_eq!(
            loaded
                .kafka
                .librdkafka
                .get("security.protocol")
                .map(String::as_str),
            Some("ssl")
        );
        assert_eq!(
            loaded.kafka.librdkafka.get("linger.ms").map(String::as_str),
            Some("50")
        );
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct WithProperties {
        properties: BTreeMap<String, String>,
        count: u32,
    }

    impl Default for WithProperties {
        fn default() -> Self {
            Self {
                properties: [("retention.ms".to_string(), "-1".to_string())].into(),
                count: 4,
            }
        }
    }

    /// A default map with dotted keys (topic properties) was split into nested tables, and no
    /// service could load its defaults.
    #[test]
    fn a_default_with_dotted_keys_loads_as_it_is() {
        let loaded: WithProperties = load_with_env(None, []).unwrap();
        assert_eq!(loaded, WithProperties::default());
        let env = [("EYE_COUNT".to_string(), "7".to_string())];
        let loaded: WithProperties = load_with_env(None, env).unwrap();
        assert_eq!(loaded.count, 7);
        assert_eq!(loaded.properties, WithProperties::default().properties);
    }

    #[test]
    fn missing_file_is_an_error() {
        let missing = Path::new("/nonexistent/eye.toml");
        assert!(load_with_env::<Example>(Some(missing), []).is_err());
    }
}
