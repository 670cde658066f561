//! Finding the service binaries, and installing them when they are missing: ClickHouse from
//! Debian's packages, tansu from crates.io, and for the tests chdb from PyPI.

use std::env;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The tansu release and features The Eye is tested with (the default features have no storage).
pub const TANSU_VERSION: &str = "0.6.0";
const TANSU_FEATURES: &str = "libsql,dynostore";

/// `name` on PATH, or in cargo's install directory (which a fresh shell may not have on PATH).
fn find_binary(name: &str) -> Option<PathBuf> {
    let cargo_bin = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .map(|home| home.join("bin"));
    env::var_os("PATH")
        .map(|path| env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(cargo_bin)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// The installed `tansu`, if it is the expected version.
pub fn tansu() -> Option<PathBuf> {
    let path = env::var_os("EYE_TANSU_BIN")
        .map(PathBuf::from)
        .or_else(|| find_binary("tansu"))?;
    let output = Command::new(&path).arg("--version").output().ok()?;
    String::from_utf8_lossy(&output.stdout)
        .contains(TANSU_VERSION)
        .then_some(path)
}

pub fn clickhouse_server() -> Option<PathBuf> {
    find_binary("clickhouse-server")
}

/// Installs tansu with cargo unless the expected version is already there.
pub fn ensure_tansu() -> Result<PathBuf> {
    if let Some(path) = tansu() {
        return Ok(path);
    }
    eprintln!("installing tansu {TANSU_VERSION} with cargo (the first build takes ~20 minutes)");
    run(
        Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into())).args([
            "install",
            "--locked",
            "tansu",
            "--version",
            TANSU_VERSION,
            "--features",
            TANSU_FEATURES,
        ]),
    )?;
    tansu().context("tansu was installed but is not found on PATH or in ~/.cargo/bin")
}

/// Installs Debian's clickhouse-server and clickhouse-client unless they are there.
pub fn ensure_clickhouse() -> Result<PathBuf> {
    if let (Some(server), Some(_)) = (clickhouse_server(), find_binary("clickhouse-client")) {
        return Ok(server);
    }
    eprintln!("installing clickhouse-server and clickhouse-client with apt-get");
    run(Command::new("apt-get").arg("update"))?;
    run(Command::new("apt-get")
        .args([
            "install",
            "-y",
            "--no-install-recommends",
            "clickhouse-server",
            "clickhouse-client",
        ])
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    clickhouse_server().context("clickhouse-server was installed but is not on PATH")
}

/// The `chdb` Python package: a current ClickHouse release as a library, so the tests also check
/// the DDL against what the compose file runs, not only against Debian's 18.16.
pub fn ensure_chdb() -> Result<()> {
    let importable = Command::new("python3")
        .args(["-c", "import chdb"])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if importable {
        return Ok(());
    }
    eprintln!("installing the chdb Python package with pip");
    run(Command::new("python3").args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "chdb",
    ]))
}

fn run(command: &mut Command) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("running {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed: {status}");
    }
    Ok(())
}
