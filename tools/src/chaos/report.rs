//! The fault matrix's table and its checks, as printed at the end of a run.

use std::collections::HashMap;

use tokio::time::Instant;

use super::clients::Ledger;
use super::verdict::{self, Phase, Verdict};

/// Prints the table and the checks; returns how many checks failed.
pub fn print(
    phases: &[Phase],
    verdict: &Verdict,
    ledger: &Ledger,
    drained: bool,
    run_started: Instant,
) -> u64 {
    let seconds = |value: Option<f64>| value.map_or("never".to_string(), |s| format!("{s:.1}"));
    let yes_no = |seen: bool| if seen { "yes" } else { "no" };
    println!();
    println!(
        "| phase | events acknowledged | requests refused | lost | duplicated | misfiled | slowest reply s | s to first 202 after recovery | s until backlog committed | ingest /readyz false | processor /readyz false |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|");
    for (phase, counts) in phases.iter().zip(&verdict.phases) {
        println!(
            "| {} | {} | {} | {} | {} | {} | {:.2} | {} | {} | {} | {} |",
            phase.name,
            counts.acknowledged,
            counts.refused,
            counts.lost,
            counts.duplicated,
            counts.misfiled,
            counts.slowest_reply.as_secs_f64(),
            seconds(phase.first_accept_seconds),
            seconds(phase.backlog_seconds),
            yes_no(phase.ingest_unready_seen),
            yes_no(phase.processor_unready_seen),
        );
    }
    let total =
        |pick: fn(&verdict::PhaseCounts) -> u64| verdict.phases.iter().map(pick).sum::<u64>();
    println!(
        "| **all** ({:.0} s) | {} | {} | {} | {} | {} | | | | | |",
        run_started.elapsed().as_secs_f64(),
        total(|counts| counts.acknowledged),
        total(|counts| counts.refused),
        total(|counts| counts.lost),
        total(|counts| counts.duplicated),
        total(|counts| counts.misfiled),
    );
    let mut refusals: HashMap<&str, u64> = HashMap::new();
    for refusal in &ledger.refusals {
        *refusals.entry(refusal.what.as_str()).or_default() += 1;
    }
    println!("\nrefusals by kind: {refusals:?}");
    let mut checks: Vec<(String, bool)> = phases
        .iter()
        .enumerate()
        .map(|(index, phase)| {
            (
                format!(
                    "{}: nothing lost, duplicated or misfiled; recovered",
                    phase.name
                ),
                verdict.phase_passed(index, phase),
            )
        })
        .collect();
    checks.push((
        "the processor committed the whole topic after the load".into(),
        drained,
    ));
    checks.push((
        format!(
            "every event delivered: {} rejected with a 4xx, {} given up",
            verdict.rejected, verdict.abandoned
        ),
        verdict.rejected == 0 && verdict.abandoned == 0,
    ));
    checks.push((
        format!(
            "nothing in the tables that the load did not send ({} found)",
            verdict.unexpected
        ),
        verdict.unexpected == 0,
    ));
    checks.push((
        format!(
            "sessions equal what was generated ({} differ)",
            verdict.session_mismatches
        ),
        verdict.session_mismatches == 0,
    ));
    checks.push((
        format!(
            "error counts equal what was generated (differing: {:?})",
            verdict.error_count_mismatches
        ),
        verdict.error_count_mismatches.is_empty(),
    ));
    println!();
    let failed = checks.iter().filter(|(_, passed)| !passed).count() as u64;
    for (check, passed) in &checks {
        println!("chaos {} … {check}", if *passed { "ok" } else { "FAILED" });
    }
    println!(
        "chaos: {} passed, {failed} failed",
        checks.len() as u64 - failed
    );
    failed
}
