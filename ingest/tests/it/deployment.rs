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
    // The source of truth keeps every message, as the processor would create it.
    let configs: Vec<&str> = command
        .windows(2)
        .filter(|pair| pair[0] == "--config")
        .map(|pair| pair[1])
        .collect();
    assert_eq!(configs, ["retention.ms=-1", "retention.bytes=-1"]);
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

fn service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    let service = &compose["services"][name];
    assert!(service.is_mapping(), "service {name}");
    service
}

/// The README's development key is public; no deployment may accept it.
#[test]
fn no_deployment_accepts_the_public_development_key() {
    let dev_key_hash = eye_ingest::auth::key_sha256("eye-local-dev-key");
    let local: IngestConfig =
        eye_core::settings::load_with_env(Some(&repo_file("config/ingest.toml")), []).unwrap();
    assert!(
        local
            .applications
            .iter()
            .any(|app| app.key_sha256 == dev_key_hash),
        "the local run's config is where the development application lives"
    );
    let dockerfile = std::fs::read_to_string(repo_file("docker/Dockerfile")).unwrap();
    assert!(
        !dockerfile.contains("COPY config/ingest.toml"),
        "the ingest image bakes the local run's config"
    );
    for file in ["docker-compose.yml", "docker/Dockerfile"] {
        let text = std::fs::read_to_string(repo_file(file)).unwrap();
        assert!(
            !text.contains(&dev_key_hash),
            "{file} holds the development key's hash"
        );
    }
    let compose = compose();
    let environment = environment(&compose, "ingest");
    assert!(
        !environment
            .iter()
            .any(|(name, _)| name == "EYE_APPLICATION_KEYS"
                || name.starts_with("EYE_APPLICATIONS__")),
        "compose sets applications inline"
    );
    let file = environment
        .iter()
        .find(|(name, _)| name == "EYE_APPLICATIONS_FILE")
        .map(|(_, value)| value.clone())
        .expect("compose reads the applications from a file");
    let secret = file
        .strip_prefix("/run/secrets/")
        .expect("a mounted secret");
    assert!(service(&compose, "ingest")["secrets"]
        .as_sequence()
        .unwrap()
        .iter()
        .any(|name| name.as_str() == Some(secret)));
    let source = compose["secrets"][secret]["file"].as_str().unwrap();
    assert!(
        source.contains("./secrets/"),
        "the secret's default file ({source}) is under the git-ignored secrets/"
    );
    let gitignore = std::fs::read_to_string(repo_file(".gitignore")).unwrap();
    assert!(gitignore.lines().any(|line| line == "/secrets"));
}

#[tokio::test]
async fn a_bridge_without_an_application_refuses_to_start() {
    let config = IngestConfig {
        listen: "127.0.0.1:0".into(),
        operations_listen: "127.0.0.1:0".into(),
        ..IngestConfig::default()
    };
    let listeners = eye_ingest::Listeners::bind(&config).await.unwrap();
    let refused = eye_ingest::serve(config, listeners, std::future::pending()).await;
    assert!(
        matches!(
            refused,
            Err(eye_ingest::StartError::ApplicationSource(
                eye_ingest::config::ApplicationSourceError::None
            ))
        ),
        "{refused:?}"
    );
}

#[test]
fn clickhouse_is_on_the_compose_network_only_and_needs_a_password() {
    let compose = compose();
    let clickhouse = service(&compose, "clickhouse");
    assert!(clickhouse["ports"].is_null(), "ClickHouse publishes a port");
    let clickhouse_environment = environment(&compose, "clickhouse");
    assert!(!clickhouse_environment
        .iter()
        .any(|(name, _)| name == "CLICKHOUSE_SKIP_USER_SETUP"));
    let setting = |environment: &[(String, String)], name: &str| {
        environment
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
            .unwrap_or_else(|| panic!("{name} is set"))
    };
    let password = setting(&clickhouse_environment, "CLICKHOUSE_PASSWORD");
    assert!(
        password.starts_with("${CLICKHOUSE_PASSWORD:?"),
        "the password is required from the environment, not written down: {password}"
    );
    let processor = environment(&compose, "processor");
    assert_eq!(
        setting(&processor, "EYE_CLICKHOUSE__USER"),
        setting(&clickhouse_environment, "CLICKHOUSE_USER")
    );
    assert_eq!(setting(&processor, "EYE_CLICKHOUSE__PASSWORD"), password);
}

#[test]
fn every_long_running_service_restarts_and_only_the_api_is_published() {
    let compose = compose();
    for name in ["kafka", "clickhouse", "ingest", "processor"] {
        assert_eq!(
            service(&compose, name)["restart"].as_str(),
            Some("unless-stopped"),
            "{name}'s restart policy"
        );
    }
    assert_eq!(
        service(&compose, "kafka-topics")["restart"].as_str(),
        Some("no")
    );
    let published: Vec<(&str, &str)> = compose["services"]
        .as_mapping()
        .unwrap()
        .iter()
        .flat_map(|(name, service)| {
            service["ports"]
                .as_sequence()
                .into_iter()
                .flatten()
                .map(move |port| (name.as_str().unwrap(), port.as_str().unwrap()))
        })
        .collect();
    assert_eq!(published, [("ingest", "8080:8080")]);
    let ingest = environment(&compose, "ingest");
    let port = |name: &str| {
        ingest
            .iter()
            .find(|(key, _)| key == name)
            .and_then(|(_, address)| address.rsplit(':').next().map(str::to_string))
    };
    assert_eq!(port("EYE_LISTEN").as_deref(), Some("8080"));
    assert_ne!(port("EYE_OPERATIONS_LISTEN"), port("EYE_LISTEN"));
}

#[test]
fn the_build_context_leaves_out_build_output_state_history_and_secrets() {
    let ignored = std::fs::read_to_string(repo_file(".dockerignore")).unwrap();
    for path in ["target/", ".eye/", ".git/", "secrets/"] {
        assert!(
            ignored.lines().any(|line| line == path),
            "{path} in .dockerignore"
        );
    }
}
