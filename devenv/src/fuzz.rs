//! The fuzz targets of `fuzz/` (cargo-fuzz on the nightly toolchain), each run for a bounded time
//! from its checked-in corpus. New inputs the fuzzer finds go to a scratch directory, so the
//! checked-in corpus changes only when someone adds to it; a crash is kept for a regression test.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};

use crate::install;

/// Every target of `fuzz/Cargo.toml`.
pub const TARGETS: [&str; 5] = [
    "split_events",
    "event_time",
    "json_to_avro",
    "avro_single_object",
    "validate",
];

/// What a run found: targets that ran clean, and those that crashed.
#[derive(Debug, Default)]
pub struct FuzzOutcome {
    pub passed: u64,
    pub failed: u64,
}

/// The targets' build under way (nightly, with sanitizer flags, in `target/fuzz`), so it can
/// share the cores with the tests' build; [`FuzzBuild::finish`] waits for it.
pub struct FuzzBuild(std::process::Child);

/// Installs cargo-fuzz if missing and starts building the targets, output to `log`.
pub fn start_build(root: &Path, log: &Path) -> Result<FuzzBuild> {
    install::ensure_cargo_fuzz()?;
    let file = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    eprintln!(
        "building the fuzz targets with cargo +nightly fuzz in the background (log {})",
        log.display()
    );
    let child = install::nightly("cargo")
        .current_dir(root)
        .args(["fuzz", "build", "--target-dir"])
        .arg(root.join("target/fuzz"))
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()
        .context("running cargo fuzz build")?;
    Ok(FuzzBuild(child))
}

impl FuzzBuild {
    pub fn finish(mut self) -> Result<()> {
        let status = self.0.wait()?;
        anyhow::ensure!(status.success(), "cargo fuzz build failed: {status}");
        Ok(())
    }
}

/// Runs each of `targets` (built by [`start_build`]) for `seconds`; scratch corpora and crash
/// artifacts go under `state/fuzz/`.
pub fn run(root: &Path, state: &Path, targets: &[String], seconds: u64) -> Result<FuzzOutcome> {
    let target_dir = root.join("target/fuzz");
    let mut outcome = FuzzOutcome::default();
    for target in targets {
        let scratch = state.join("fuzz/corpus").join(target);
        let artifacts = state.join("fuzz/artifacts").join(target);
        fs::create_dir_all(&scratch)?;
        fs::create_dir_all(&artifacts)?;
        println!("fuzz {target}: {seconds} s from fuzz/corpus/{target}");
        let status = install::nightly("cargo")
            .current_dir(root)
            .args(["fuzz", "run", "--target-dir"])
            .arg(&target_dir)
            .arg(target)
            // The first directory receives what the fuzzer finds; the second only seeds it.
            .arg(&scratch)
            .arg(root.join("fuzz/corpus").join(target))
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .arg("-print_final_stats=1")
            .status()
            .with_context(|| format!("running fuzz target {target}"))?;
        if status.success() {
            outcome.passed += 1;
        } else {
            outcome.failed += 1;
            println!(
                "fuzz {target}: FAILED ({status}); the input is in {} — make it a regression test",
                artifacts.display()
            );
        }
    }
    println!("fuzz: {} passed, {} failed", outcome.passed, outcome.failed);
    Ok(outcome)
}
