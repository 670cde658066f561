//! `cargo dev test`: the workspace's tests, the short fault matrix and the fuzz targets, with
//! one summary line over all three.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};

use anyhow::{Context, Result};

use eye_devenv::{fuzz, install};

use crate::workspace::{cargo, cargo_program, workspace_root};

pub fn test(
    state: &Path,
    cargo_test_args: &[String],
    chaos: bool,
    fuzz_seconds: Option<u64>,
) -> Result<ExitCode> {
    // A missing broker builds beside the tests (see `run`).
    fs::create_dir_all(state)?;
    let broker = install::start_broker_install(Some(&state.join("nisshi-install.log")))?;
    install::ensure_clickhouse()?;
    install::ensure_chdb()?;
    install::ensure_schemathesis()?;
    install::ensure_chromium()?;
    install::ensure_browser_driver(&workspace_root())?;
    // The arguments for cargo, not those after `--` for the test binaries.
    let build_args: Vec<&String> = cargo_test_args
        .iter()
        .take_while(|arg| arg.as_str() != "--")
        .collect();
    let mut build = vec!["test", "--workspace", "--no-run"];
    build.extend(build_args.iter().map(|arg| arg.as_str()));
    cargo(&build)?;
    // Built while the tests run, not beside the test build: three builds at once on a fresh
    // machine once ran its disk and memory out (the linker died of SIGBUS).
    let fuzz_build = fuzz_seconds
        .map(|_| fuzz::start_build(&workspace_root(), &state.join("fuzz-build.log")))
        .transpose()?;
    broker.finish()?;
    let mut tests = Command::new(cargo_program());
    tests
        .current_dir(workspace_root())
        .args(["test", "--workspace", "--no-fail-fast"])
        // One test at a time within each binary: the tests of a binary share one ClickHouse and
        // one broker on two cores, and their timeouts assume neither is shared with another test.
        .env("RUST_TEST_THREADS", "1")
        .args(cargo_test_args);
    // Pass the output through, adding up every test binary's `test result:` line, so the run
    // ends with one total (the last binary cargo runs may hold no test at all).
    let (mut passed, mut failed) = (0u64, 0u64);
    let mut success = run_counting(&mut tests, "test result: ", &mut passed, &mut failed)?;
    if chaos {
        // On the debug binaries `cargo test` built.
        let mut matrix = chaos_command(false)?;
        matrix.arg("--short");
        success &= run_counting(&mut matrix, "chaos: ", &mut passed, &mut failed)?;
    }
    if let (Some(seconds), Some(build)) = (fuzz_seconds, fuzz_build) {
        let targets = fuzz::TARGETS.map(String::from);
        match build.finish() {
            Ok(()) => {
                let outcome = fuzz::run(&workspace_root(), state, &targets, seconds)?;
                passed += outcome.passed;
                failed += outcome.failed;
                success &= outcome.failed == 0;
            }
            // Counted, so the summary line says the fuzz targets did not run.
            Err(error) => {
                println!("fuzz: 0 passed, {} failed ({error:#})", targets.len());
                failed += targets.len() as u64;
                success = false;
            }
        }
    }
    println!("summary: {passed} passed, {failed} failed");
    Ok(if success {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Builds `eye`, `eye-ingest` and `eye-processor` (release or debug) and returns `eye chaos` on
/// them.
pub fn chaos_command(release: bool) -> Result<Command> {
    let mut build = vec![
        "build",
        "--bin",
        "eye",
        "--bin",
        "eye-ingest",
        "--bin",
        "eye-processor",
    ];
    if release {
        build.push("--release");
    }
    cargo(&build)?;
    let bin = workspace_root()
        .join("target")
        .join(if release { "release" } else { "debug" });
    let mut command = Command::new(bin.join("eye"));
    command
        .current_dir(workspace_root())
        .arg("chaos")
        .arg("--ingest-bin")
        .arg(bin.join("eye-ingest"))
        .arg("--processor-bin")
        .arg(bin.join("eye-processor"));
    Ok(command)
}

/// Runs `command`, passing its output through and adding up the counts of its lines that start
/// with `prefix` (`… N passed; M failed …`); true if it succeeded.
fn run_counting(
    command: &mut Command,
    prefix: &str,
    passed: &mut u64,
    failed: &mut u64,
) -> Result<bool> {
    let mut child = command
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {command:?}"))?;
    for line in BufReader::new(child.stdout.take().context("child output")?).lines() {
        let line = line?;
        println!("{line}");
        if let Some(result) = line.strip_prefix(prefix) {
            *passed += count_before(result, " passed");
            *failed += count_before(result, " failed");
        }
    }
    Ok(child.wait()?.success())
}

/// The number just before `label` in a line like `ok. 12 passed; 0 failed; …`.
fn count_before(text: &str, label: &str) -> u64 {
    text.split_once(label)
        .and_then(|(before, _)| before.rsplit(' ').next())
        .and_then(|number| number.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::count_before;

    #[test]
    fn counts_come_from_cargo_test_result_lines() {
        let result =
            "ok. 12 passed; 3 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.05s";
        assert_eq!(count_before(result, " passed"), 12);
        assert_eq!(count_before(result, " failed"), 3);
        assert_eq!(count_before("FAILED. 0 passed; 1 failed;", " passed"), 0);
    }
}
