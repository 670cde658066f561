//! Finding the service binaries, and installing them when they are missing: ClickHouse from
//! Debian's packages, the Kafka-protocol broker nisshi from crates.io, and for the tests chdb and
//! schemathesis from PyPI, cargo-fuzz from crates.io, Chromium from Debian's packages and
//! playwright-core from npm.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The nisshi release The Eye is tested with (tansu's successor; docs/broker.md says why). Its
/// default features are the storage engines we use: sqlite (libsql), memory (dynostore) and
/// PostgreSQL.
pub const BROKER_VERSION: &str = "0.8.1";
/// nisshi 0.8.1 needs rustc 1.96 or later; the project itself builds on stable 1.95.
const BROKER_TOOLCHAIN: &str = "nightly";

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

/// The installed `nisshi`, if it is the expected version (`EYE_BROKER_BIN` names another).
pub fn broker() -> Option<PathBuf> {
    let path = env::var_os("EYE_BROKER_BIN")
        .map(PathBuf::from)
        .or_else(|| find_binary("nisshi"))?;
    let output = Command::new(&path).arg("--version").output().ok()?;
    String::from_utf8_lossy(&output.stdout)
        .contains(BROKER_VERSION)
        .then_some(path)
}

pub fn clickhouse_server() -> Option<PathBuf> {
    find_binary("clickhouse-server")
}

/// Installs nisshi with cargo on the nightly toolchain unless the expected version is there.
pub fn ensure_broker() -> Result<PathBuf> {
    start_broker_install(None)?.finish()
}

/// A broker install under way, so other builds can share the two cores with its long serial
/// tail; [`BrokerInstall::finish`] waits for it.
pub struct BrokerInstall(Option<std::process::Child>);

/// Starts installing nisshi unless the expected version is there; its output goes to `log` when
/// given, else to the terminal.
pub fn start_broker_install(log: Option<&Path>) -> Result<BrokerInstall> {
    if broker().is_some() {
        return Ok(BrokerInstall(None));
    }
    let mut command = Command::new("rustup");
    command
        .args([
            "run",
            BROKER_TOOLCHAIN,
            "cargo",
            "install",
            "--locked",
            "nisshi",
        ])
        .args(["--version", BROKER_VERSION])
        // `cargo dev` runs under stable cargo, which passes its toolchain on to children.
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO")
        .env_remove("RUSTC");
    match log {
        Some(log) => {
            let file = std::fs::File::create(log)
                .with_context(|| format!("creating {}", log.display()))?;
            command.stdout(file.try_clone()?).stderr(file);
            eprintln!(
                "installing nisshi {BROKER_VERSION} with cargo +{BROKER_TOOLCHAIN} in the background (~17 minutes the first time; log {})",
                log.display()
            );
        }
        None => eprintln!(
            "installing nisshi {BROKER_VERSION} with cargo +{BROKER_TOOLCHAIN} (~17 minutes the first time)"
        ),
    }
    let child = command
        .spawn()
        .with_context(|| format!("running {command:?}"))?;
    Ok(BrokerInstall(Some(child)))
}

impl BrokerInstall {
    /// Waits for the install, then finds the broker.
    pub fn finish(self) -> Result<PathBuf> {
        if let Some(mut child) = self.0 {
            let status = child.wait()?;
            if !status.success() {
                bail!("installing nisshi {BROKER_VERSION} failed: {status}");
            }
        }
        broker().context("nisshi was installed but is not found on PATH or in ~/.cargo/bin")
    }
}

/// The cargo-fuzz release the fuzz targets are run with (it needs the nightly toolchain).
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// A command on the nightly toolchain, free of the stable toolchain `cargo dev` passes down.
pub fn nightly(program: &str) -> Command {
    let mut command = Command::new("rustup");
    command
        .args(["run", BROKER_TOOLCHAIN, program])
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO")
        .env_remove("RUSTC");
    command
}

/// Installs cargo-fuzz unless it is there (about a minute).
pub fn ensure_cargo_fuzz() -> Result<()> {
    if find_binary("cargo-fuzz").is_some() {
        return Ok(());
    }
    eprintln!("installing cargo-fuzz {CARGO_FUZZ_VERSION} with cargo +{BROKER_TOOLCHAIN}");
    run(nightly("cargo").args([
        "install",
        "--locked",
        "cargo-fuzz",
        "--version",
        CARGO_FUZZ_VERSION,
    ]))
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
    pip_install("chdb")
}

/// The schemathesis release the API tests run (`python3 -m schemathesis.cli`).
pub const SCHEMATHESIS_VERSION: &str = "4.32.5";

/// Installs schemathesis with pip unless that release is importable.
pub fn ensure_schemathesis() -> Result<()> {
    let installed = Command::new("python3")
        .args(["-m", "schemathesis.cli", "--version"])
        .stderr(std::process::Stdio::null())
        .output()
        .is_ok_and(|output| String::from_utf8_lossy(&output.stdout).contains(SCHEMATHESIS_VERSION));
    if installed {
        return Ok(());
    }
    pip_install(&format!("schemathesis=={SCHEMATHESIS_VERSION}"))
}

fn pip_install(requirement: &str) -> Result<()> {
    eprintln!("installing {requirement} with pip");
    run(Command::new("python3").args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        requirement,
    ]))
}

/// Debian's Chromium, which the browser tests drive.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// Installs Debian's chromium unless it is there.
pub fn ensure_chromium() -> Result<()> {
    if Path::new(CHROMIUM).is_file() {
        return Ok(());
    }
    eprintln!("installing chromium with apt-get");
    run(Command::new("apt-get").arg("update"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends", "chromium"])
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// Installs the browser tests' npm packages (playwright-core, as `browser/package-lock.json`
/// pins it; it drives Debian's Chromium, it downloads no browser) unless they are there.
pub fn ensure_browser_driver(workspace: &Path) -> Result<()> {
    let dir = workspace.join("browser");
    if dir
        .join("node_modules/playwright-core/package.json")
        .is_file()
    {
        return Ok(());
    }
    eprintln!("installing playwright-core with npm ci");
    run(Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir))
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
