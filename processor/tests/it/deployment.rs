//! docker-compose.yml sets only processor settings that exist.

use std::path::PathBuf;

use eye_processor::config::ProcessorConfig;

fn repo_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

#[test]
fn every_processor_variable_in_compose_names_a_config_key_and_takes_effect() {
    let text = std::fs::read_to_string(repo_file("docker-compose.yml")).unwrap();
    let compose: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let environment = compose["services"]["processor"]["environment"]
        .as_mapping()
        .unwrap();
    assert!(!environment.is_empty());
    let config_file = repo_file("config/processor.toml");
    for (name, value) in environment {
        let (name, value) = (name.as_str().unwrap(), value.as_str().unwrap());
        let path: Vec<String> = name
            .strip_prefix("EYE_")
            .unwrap_or_else(|| panic!("{name} is not an EYE_ variable"))
            .to_lowercase()
            .split("__")
            .map(str::to_string)
            .collect();
        let loaded: ProcessorConfig = eye_core::settings::load_with_env(
            Some(&config_file),
            [(name.to_string(), value.to_string())],
        )
        .unwrap();
        let loaded = serde_json::to_value(&loaded).unwrap();
        let setting = path.iter().fold(&loaded, |node, key| &node[key.as_str()]);
        assert_eq!(
            setting.as_str(),
            Some(value),
            "{name} sets the config key {}",
            path.join(".")
        );
    }
}
