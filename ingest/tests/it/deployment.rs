//! docker-compose.yml and the Dockerfile stay consistent with what the bridge reads.

use std::path::PathBuf;

use eye_core::raw::DEFAULT_RAW_TOPIC;
use eye_ingest::config::IngestConfig;
use serde_yaml::Value;

fn repo_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

fn compose() -> Value {
    let text = std::fs::read_to_string(repo_file("docker-compose.yml")).unwrap();
    serde_yaml::from_str(&text).expect("docker-compose.yml is valid YAML")
}

fn environment(compose: &Value, service: &str) -> Vec<(String, String)> {
    compose["services"][service]["environment"]
        .as_mapping()
        .unwrap_or_else(|| panic!("{service} has an environment map"))
        .iter()
        .map(|(key, value)| {
            (
                key.as_str().unwrap().to_string(),
                value.as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn every_ingest_variable_in_compose_names_a_config_key_and_takes_effect() {
    let compose = compose();
    let config_file = repo_file("config/ingest.toml");
    for (name, value) in environment(&compose, "ingest") {
        let path: Vec<String> = name
            .strip_prefix("EYE_")
            .unwrap_or_else(|| panic!("{name} is not an EYE_ variable"))
            .to_lowercase()
            .split("__")
            .map(str::to_string)
            .collect();
        let loaded: IngestConfig =
            eye_core::settings::load_with_env(Some(&config_file), [(name.clone(), value.clone())])
                .unwrap();
        let loaded = serde_json::to_value(&loaded).unwrap();
        let setting = path.iter().fold(&loaded, |node, key| &node[key.as_str()]);
        assert_eq!(
            setting.as_str(),
            Some(value.as_str()),
            "{name} sets the config key {}",
            path.join(".")
        );
    }
}

#[test]
fn compose_creates_the_topic_ingest_produces_to() {
    let compose = compose();
    let command: Vec<&str> = compose["services"]["kafka-topics"]["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|part| part.as_str().unwrap())
        .collect();
    let topic = command[command.iter().position(|part| *part == "--topic").unwrap() + 1];
    assert_eq!(topic, DEFAULT_RAW_TOPIC);
    for service in ["kafka", "clickhouse", "ingest", "processor"] {
        assert!(
            compose["services"][service].is_mapping(),
            "service {service}"
        );
    }
}

#[test]
fn dockerfile_targets_and_copied_files_exist() {
    let dockerfile = std::fs::read_to_string(repo_file("docker/Dockerfile")).unwrap();
    let compose = compose();
    for service in ["ingest", "processor"] {
        let build = &compose["services"][service]["build"];
        assert_eq!(build["dockerfile"].as_str(), Some("docker/Dockerfile"));
        let target = build["target"].as_str().unwrap();
        assert!(
            dockerfile.contains(&format!(" AS {target}\n")),
            "target {target} in the Dockerfile"
        );
    }
    for line in dockerfile
        .lines()
        .filter(|line| line.starts_with("COPY config/"))
    {
        let source = line.split_whitespace().nth(1).unwrap();
        assert!(repo_file(source).is_file(), "{source} exists");
    }
}
