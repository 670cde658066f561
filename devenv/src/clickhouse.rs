//! A ClickHouse server (Debian's `clickhouse-server`) as a plain process with its config, data
//! and logs under one state directory, listening on 127.0.0.1 only.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::process::{wait_until, Launch};

/// Where a local ClickHouse server keeps its files and which ports it listens on.
#[derive(Debug, Clone)]
pub struct ClickHouseServer {
    pub state_dir: PathBuf,
    pub http_port: u16,
    pub tcp_port: u16,
}

impl ClickHouseServer {
    /// The HTTP endpoint clients (and the `clickhouse` crate) connect to.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// Writes the server's config into the state directory and returns how to start it.
    pub fn prepare(&self, server_binary: &Path) -> Result<Launch> {
        let dir = &self.state_dir;
        for sub in ["data", "tmp", "user_files", "format_schemas", "log"] {
            fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("creating {}", dir.join(sub).display()))?;
        }
        let dir = fs::canonicalize(dir)?;
        let config = format!(
            r#"<?xml version="1.0"?>
<yandex>
    <logger>
        <level>warning</level>
        <log>{dir}/log/clickhouse-server.log</log>
        <errorlog>{dir}/log/clickhouse-server.err.log</errorlog>
        <size>100M</size>
        <count>2</count>
    </logger>
    <listen_host>127.0.0.1</listen_host>
    <http_port>{http}</http_port>
    <tcp_port>{tcp}</tcp_port>
    <path>{dir}/data/</path>
    <tmp_path>{dir}/tmp/</tmp_path>
    <user_files_path>{dir}/user_files/</user_files_path>
    <format_schema_path>{dir}/format_schemas/</format_schema_path>
    <users_config>{dir}/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mark_cache_size>268435456</mark_cache_size>
    <uncompressed_cache_size>268435456</uncompressed_cache_size>
    <max_concurrent_queries>100</max_concurrent_queries>
</yandex>
"#,
            dir = dir.display(),
            http = self.http_port,
            tcp = self.tcp_port,
        );
        // Local, loopback-only server: the default user has no password.
        let users = r#"<?xml version="1.0"?>
<yandex>
    <profiles>
        <default>
            <max_memory_usage>4000000000</max_memory_usage>
            <log_queries>1</log_queries>
        </default>
    </profiles>
    <users>
        <default>
            <password></password>
            <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
    </users>
    <quotas>
        <default>
            <interval><duration>3600</duration><queries>0</queries><errors>0</errors><result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval>
        </default>
    </quotas>
</yandex>
"#;
        fs::write(dir.join("config.xml"), config)?;
        fs::write(dir.join("users.xml"), users)?;
        Ok(Launch {
            program: server_binary.to_path_buf(),
            args: vec![format!("--config-file={}/config.xml", dir.display()).into()],
            envs: Vec::new(),
            log_file: dir.join("log/stdout.log"),
        })
    }

    /// Waits until `SELECT 1` answers over HTTP.
    pub fn wait_ready(&self, timeout: Duration) -> Result<()> {
        wait_until("ClickHouse", timeout, || {
            let answer = self.query("SELECT 1")?;
            if answer.trim() != "1" {
                bail!("unexpected answer to SELECT 1: {answer:?}");
            }
            Ok(())
        })
    }

    /// Runs one statement over the HTTP interface and returns the response body.
    pub fn query(&self, sql: &str) -> Result<String> {
        http_query(self.http_port, sql)
    }
}

/// A minimal HTTP/1.0 POST so readiness checks need no HTTP client.
pub fn http_query(port: u16, sql: &str) -> Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "POST / HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n{sql}",
        sql.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("malformed HTTP response")?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        bail!(
            "ClickHouse answered {}: {}",
            head.lines().next().unwrap_or(""),
            body.trim()
        );
    }
    Ok(body.to_string())
}
