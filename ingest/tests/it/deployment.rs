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
fn every_long_running_service_restarts_and_only_the_api_and_local_grafana_are_published() {
    let compose = compose();
    for name in [
        "kafka",
        "clickhouse",
        "ingest",
        "processor",
        "prometheus",
        "grafana",
    ] {
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
    assert_eq!(
        published,
        [("ingest", "8080:8080"), ("grafana", "127.0.0.1:3000:3000")]
    );
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

fn yaml_file(path: &str) -> Value {
    serde_yaml::from_str(&std::fs::read_to_string(repo_file(path)).unwrap())
        .unwrap_or_else(|error| panic!("{path}: {error}"))
}

/// The port of a service's `EYE_…` listen address in compose.
fn listen_port(compose: &Value, service: &str, variable: &str) -> String {
    environment(compose, service)
        .into_iter()
        .find(|(name, _)| name == variable)
        .and_then(|(_, address)| address.rsplit(':').next().map(str::to_string))
        .unwrap_or_else(|| panic!("{service} sets {variable}"))
}

/// The mount of `source` (a path in the repository) in a service: where the container sees it.
fn mount_target(service: &Value, source: &str) -> String {
    service["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|volume| volume.as_str())
        .find_map(|volume| {
            let mut parts = volume.split(':');
            (parts.next() == Some(source)).then(|| parts.next().unwrap().to_string())
        })
        .unwrap_or_else(|| panic!("{source} is mounted"))
}

#[test]
fn the_monitoring_profile_scrapes_both_services_and_provisions_the_dashboard() {
    let compose = compose();
    for name in ["prometheus", "grafana"] {
        let profiles = service(&compose, name)["profiles"].as_sequence().unwrap();
        assert_eq!(profiles.len(), 1);
        assert_eq!(profiles[0].as_str(), Some("monitoring"), "{name}'s profile");
    }
    // Prometheus scrapes each service's metrics port on the compose network.
    let prometheus = service(&compose, "prometheus");
    assert_eq!(
        mount_target(prometheus, "./docker/prometheus/prometheus.yml"),
        "/etc/prometheus/prometheus.yml"
    );
    let scrape = yaml_file("docker/prometheus/prometheus.yml");
    let targets: Vec<&str> = scrape["scrape_configs"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|job| job["static_configs"].as_sequence().unwrap())
        .flat_map(|config| config["targets"].as_sequence().unwrap())
        .map(|target| target.as_str().unwrap())
        .collect();
    assert_eq!(
        targets,
        [
            format!(
                "ingest:{}",
                listen_port(&compose, "ingest", "EYE_OPERATIONS_LISTEN")
            ),
            format!(
                "processor:{}",
                listen_port(&compose, "processor", "EYE_LISTEN")
            ),
        ]
    );
    // Grafana: provisioning and dashboards mounted where the provisioning files say.
    let grafana = service(&compose, "grafana");
    let provisioning = mount_target(grafana, "./docker/grafana/provisioning");
    assert_eq!(provisioning, "/etc/grafana/provisioning");
    let dashboards_dir = mount_target(grafana, "./docker/grafana/dashboards");
    let providers = yaml_file("docker/grafana/provisioning/dashboards/the-eye.yml");
    assert_eq!(
        providers["providers"][0]["options"]["path"].as_str(),
        Some(dashboards_dir.as_str())
    );
    // Every data source a panel names is provisioned, and points at a compose service.
    let sources = yaml_file("docker/grafana/provisioning/datasources/the-eye.yml");
    let sources = sources["datasources"].as_sequence().unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo_file("docker/grafana/dashboards/the-eye.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 10, "{} panels", panels.len());
    for panel in panels.iter().filter(|panel| panel["type"] != "row") {
        let uid = panel["datasource"]["uid"].as_str().unwrap();
        let source = sources
            .iter()
            .find(|source| source["uid"].as_str() == Some(uid))
            .unwrap_or_else(|| panic!("panel {} names data source {uid}", panel["title"]));
        assert_eq!(
            source["type"].as_str(),
            panel["datasource"]["type"].as_str(),
            "{uid}"
        );
    }
    for source in sources {
        let host = source["url"]
            .as_str()
            .and_then(|url| url.split("//").nth(1))
            .and_then(|rest| rest.split(':').next())
            .or_else(|| source["jsonData"]["host"].as_str())
            .unwrap();
        assert!(
            service(&compose, host).is_mapping(),
            "data source host {host}"
        );
    }
    // The ClickHouse source signs in as the processor's user, with the password from outside.
    let clickhouse_source = sources
        .iter()
        .find(|source| source["type"] == "grafana-clickhouse-datasource")
        .unwrap();
    let clickhouse = environment(&compose, "clickhouse");
    let clickhouse_user = clickhouse
        .iter()
        .find(|(name, _)| name == "CLICKHOUSE_USER")
        .map(|(_, user)| user.as_str());
    assert_eq!(
        clickhouse_source["jsonData"]["username"].as_str(),
        clickhouse_user
    );
    assert_eq!(
        clickhouse_source["secureJsonData"]["password"].as_str(),
        Some("$CLICKHOUSE_PASSWORD")
    );
    let grafana_environment = environment(&compose, "grafana");
    let variable = |name: &str| {
        grafana_environment
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
            .unwrap_or_else(|| panic!("grafana sets {name}"))
    };
    assert!(variable("CLICKHOUSE_PASSWORD").starts_with("${CLICKHOUSE_PASSWORD:?"));
    // No default admin password: Grafana refuses to start without one.
    assert_eq!(
        variable("GF_SECURITY_ADMIN_PASSWORD"),
        "${GRAFANA_ADMIN_PASSWORD:-}"
    );
    let entrypoint = grafana["entrypoint"].as_sequence().unwrap();
    assert!(entrypoint
        .last()
        .and_then(|script| script.as_str())
        .is_some_and(|script| script.starts_with("test -n \"$$GF_SECURITY_ADMIN_PASSWORD\" ||")));
    assert_eq!(variable("GF_AUTH_ANONYMOUS_ENABLED"), "false");
}

/// Start order is gated on health: a service starts once what it needs answers (or, for the
/// topic set-up, has finished), and every service something waits on says how it is healthy.
#[test]
fn every_service_waits_for_what_it_needs_to_be_healthy() {
    let compose = compose();
    let services = compose["services"].as_mapping().unwrap();
    let mut waits = 0;
    for (name, service) in services {
        let name = name.as_str().unwrap();
        let Some(needs) = service["depends_on"].as_mapping() else {
            continue;
        };
        for (needed, how) in needs {
            let needed = needed.as_str().unwrap();
            let condition = how["condition"].as_str();
            waits += 1;
            match condition {
                Some("service_healthy") => assert!(
                    compose["services"][needed]["healthcheck"].is_mapping(),
                    "{name} waits for {needed} to be healthy, which has no health check"
                ),
                Some("service_completed_successfully") => assert_eq!(
                    compose["services"][needed]["restart"].as_str(),
                    Some("no"),
                    "{needed} runs once"
                ),
                other => panic!("{name} starts after {needed} on {other:?}, not its health"),
            }
        }
    }
    assert!(waits >= 8, "{waits} dependencies");
}
