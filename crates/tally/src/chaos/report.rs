//! What a chaos run found: the figures, every violation, and the human summary (`Display`).

use std::collections::BTreeMap;
use std::fmt;

use tally_loadgen::Report;
use tally_loadgen::serde::Serialize;
use tally_loadgen::settle::TERMINAL_STATUSES;

use crate::chaos::ChaosDeployment;
use crate::chaos::kills::{Chaos, Exit, Kill};
use crate::chaos::quiesce::Quiescence;
use crate::checks::CheckReport;

/// A chaos run's report. Clean when `violations` is empty.
#[derive(Debug, Clone, Serialize)]
#[serde(crate = "tally_loadgen::serde")]
pub struct ChaosReport {
    pub deployment: ChaosDeployment,
    pub seed: u64,
    pub orders: u64,
    pub rate_per_s: f64,
    /// The run's store, kept for inspection.
    pub database_url: String,
    /// Where every process's log is (and the SQLite file).
    pub data_dir: String,
    pub sandbox_url: String,
    /// Prefix of the run's topics and consumer groups, on Kafka.
    pub kafka_namespace: Option<String>,
    pub faults: Faults,
    /// The load generator's report: intake, retries, idempotency mismatches, settlement.
    pub load: Report,
    pub kills: Vec<Kill>,
    /// Processes that exited without being killed, and were started again.
    pub exits: Vec<Exit>,
    pub quiescence: QuiescenceReport,
    /// What the last check looked at; `None` if it could not run (a violation says why).
    pub check: Option<CheckFigures>,
    /// Every broken invariant or failed expectation, each naming what is at fault.
    pub violations: Vec<String>,
    pub elapsed_s: f64,
}

/// The partner sandbox's fault knobs.
#[derive(Debug, Clone, Serialize)]
#[serde(crate = "tally_loadgen::serde")]
pub struct Faults {
    pub error_rate: f64,
    pub error_after_effect_rate: f64,
    pub timeout_rate: f64,
    pub webhook_duplicates: u32,
}

#[derive(Debug, Clone, Serialize)]
#[serde(crate = "tally_loadgen::serde")]
pub struct QuiescenceReport {
    pub reached: bool,
    /// From the last order settling to a passing check (or to the deadline).
    pub waited_s: f64,
    /// Summed lag gauges at the last scrape; `None` if a process did not answer it.
    pub lag_last: Option<f64>,
    pub checks: u32,
}

/// What the last `tally check` looked at.
#[derive(Debug, Clone, Serialize)]
#[serde(crate = "tally_loadgen::serde")]
pub struct CheckFigures {
    pub orders_by_status: BTreeMap<String, usize>,
    pub timeline_events: usize,
    pub journal_entries: usize,
    pub audit_records_verified: usize,
    pub stock_rows: usize,
    pub partner_effects: Option<usize>,
    pub violations: usize,
}

impl CheckFigures {
    pub fn of(check: &CheckReport) -> Self {
        Self {
            orders_by_status: check.orders_by_status.clone(),
            timeline_events: check.timeline_events,
            journal_entries: check.journal_entries,
            audit_records_verified: check.audit_records_verified,
            stock_rows: check.stock_rows,
            partner_effects: check.partner_effects,
            violations: check.violations.len(),
        }
    }
}

impl QuiescenceReport {
    pub fn of(quiescence: &Quiescence) -> Self {
        Self {
            reached: quiescence.reached,
            waited_s: quiescence.waited.as_secs_f64(),
            lag_last: quiescence.lag_last,
            checks: quiescence.checks,
        }
    }
}

impl ChaosReport {
    pub fn is_clean(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Every violation of a run: processes that did not come back, what the channel saw (failed
/// requests, idempotency mismatches, unsettled or mis-settled orders), orders lost or doubled
/// between the channel and the store, quiescence not reached, and every check violation.
pub fn violations(load: &Report, chaos: &Chaos, quiescence: &Quiescence) -> Vec<String> {
    let mut found = chaos.failures.clone();
    for (cause, count) in &load.errors.by_status {
        found.push(format!(
            "load: {count} order requests failed with {cause}, retries included"
        ));
    }
    for (kind, count) in &load.errors.mismatches {
        found.push(format!("load: {count} idempotency mismatches {kind}"));
    }
    found.extend(
        load.errors
            .mismatch_examples
            .iter()
            .map(|example| format!("load: {example}")),
    );
    if load.settle.unsettled > 0 {
        found.push(format!(
            "load: {} orders not terminal when the settle timeout passed, such as {:?}",
            load.settle.unsettled, load.settle.unsettled_examples
        ));
    }
    for (outcome, count) in &load.settle.unexpected_outcomes {
        found.push(format!(
            "load: {count} orders ended otherwise than their price steered ({outcome})"
        ));
    }
    match &quiescence.check {
        Ok(check) => found.extend(store_violations(load, check)),
        Err(error) => found.push(format!("the check could not run: {error}")),
    }
    if !quiescence.reached {
        let lag = quiescence
            .lag_last
            .map_or_else(|| "unknown".to_owned(), |lag| lag.to_string());
        found.push(format!(
            "not quiescent with a passing check within {:.0} s (summed lag at the end: {lag})",
            quiescence.waited.as_secs_f64()
        ));
    }
    if let Ok(check) = &quiescence.check {
        found.extend(check.violations.iter().map(|v| format!("check: {v}")));
    }
    found
}

/// Orders lost or doubled between the channel and the store, and orders left unfinished.
fn store_violations(load: &Report, check: &CheckReport) -> Vec<String> {
    let mut found = Vec::new();
    let stored = check.orders() as u64;
    if stored != load.intake.accepted {
        found.push(format!(
            "the store holds {stored} orders, but the channel was answered with {} distinct \
             orders: an order was lost or placed twice",
            load.intake.accepted
        ));
    }
    for (status, count) in &check.orders_by_status {
        if !TERMINAL_STATUSES.contains(&status.as_str()) {
            found.push(format!("{count} orders are still {status} in the store"));
        }
    }
    found
}

fn counts<V: fmt::Display>(map: &BTreeMap<String, V>) -> String {
    let parts: Vec<String> = map.iter().map(|(k, v)| format!("{k} {v}")).collect();
    if parts.is_empty() {
        "none".to_owned()
    } else {
        parts.join(", ")
    }
}

/// A share as a percentage with at most two decimals: 0.05 is `5%`, 0.125 is `12.5%`.
fn percent(share: f64) -> String {
    let fixed = format!("{:.2}", share * 100.0);
    format!("{}%", fixed.trim_end_matches('0').trim_end_matches('.'))
}

impl fmt::Display for ChaosReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "tally chaos: {}, seed {}, {} orders at {}/s, {:.0} s in all",
            self.deployment, self.seed, self.orders, self.rate_per_s, self.elapsed_s
        )?;
        writeln!(f, "  store    {} (kept)", self.database_url)?;
        writeln!(f, "  logs     {}", self.data_dir)?;
        if let Some(namespace) = &self.kafka_namespace {
            writeln!(f, "  kafka    topics and groups under {namespace}")?;
        }
        let (faults, run) = (&self.faults, &self.load.run);
        writeln!(
            f,
            "faults   partner errors {}, errors after the effect {}, timeouts {}, webhooks x{}; \
             orders re-sent {}, duplicated {}, declined {}, failing capture {}, cancelled {}",
            percent(faults.error_rate),
            percent(faults.error_after_effect_rate),
            percent(faults.timeout_rate),
            faults.webhook_duplicates,
            percent(run.retry_share),
            percent(run.duplicate_share),
            percent(run.decline_share),
            percent(run.capture_failure_share),
            percent(run.cancel_share),
        )?;
        let intake = &self.load.intake;
        writeln!(
            f,
            "intake   {} accepted of {} sent in {} requests; p99 {:.1} ms, max {:.0} ms",
            intake.accepted,
            intake.orders_sent,
            intake.requests_sent,
            intake.latency_ms.p99,
            intake.latency_ms.max
        )?;
        writeln!(
            f,
            "  retried  {} requests of {} orders after transient failures ({})",
            intake.transient_retries,
            intake.orders_retried,
            counts(&intake.transient_retries_by_cause)
        )?;
        let settle = &self.load.settle;
        writeln!(
            f,
            "settle   {} of {} terminal ({}), {} unsettled; end to end p99 {:.0} ms",
            settle.settled,
            settle.tracked,
            counts(&settle.by_status),
            settle.unsettled,
            settle.e2e_ms.p99
        )?;
        writeln!(f, "kills    {}", self.kills.len())?;
        for kill in &self.kills {
            let ready = kill.ready_after_s.map_or_else(
                || "never ready".to_owned(),
                |s| format!("ready {s:.1}s later"),
            );
            writeln!(
                f,
                "  {:>7.1}s  {} down {:.1}s, {ready}",
                kill.at_s, kill.victim, kill.down_s
            )?;
        }
        for exit in &self.exits {
            writeln!(
                f,
                "  {:>7.1}s  {} exited by itself ({}), started again; see {}",
                exit.at_s, exit.process, exit.status, exit.log
            )?;
        }
        let quiescence = &self.quiescence;
        let reached = if quiescence.reached {
            "reached"
        } else {
            "NOT reached"
        };
        writeln!(
            f,
            "quiesce  {reached} {:.1} s after the last order settled ({} checks)",
            quiescence.waited_s, quiescence.checks
        )?;
        match &self.check {
            Some(check) => writeln!(
                f,
                "check    orders {}, timeline events {}, journal entries {}, audit records {}, \
                 stock rows {}, partner effects {}",
                counts(&check.orders_by_status),
                check.timeline_events,
                check.journal_entries,
                check.audit_records_verified,
                check.stock_rows,
                check
                    .partner_effects
                    .map_or_else(|| "not checked".to_owned(), |n| n.to_string()),
            )?,
            None => writeln!(f, "check    could not run")?,
        }
        write!(f, "violations {}", self.violations.len())?;
        for violation in &self.violations {
            write!(f, "\n  {violation}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser;
    use tally_loadgen::metrics_scrape::LagTracker;
    use tally_loadgen::record::Recorder;
    use tally_loadgen::report::Inputs;
    use tally_loadgen::settle::SettleRun;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        bench: tally_loadgen::BenchArgs,
    }

    /// A load report of `accepted` orders and nothing wrong.
    fn load(accepted: u64) -> Report {
        let args = Cli::try_parse_from(["bench", "--api-key", "k", "--orders", "5"])
            .expect("flags")
            .bench;
        let settings = args.settings().expect("settings");
        let mut tallies = Recorder::new().expect("recorder").into_tallies();
        tallies.accepted_total = accepted;
        Report::build(&Inputs {
            settings: &settings,
            run_tag: "t",
            tallies: &tallies,
            settle: &SettleRun::default(),
            lag: &LagTracker::default(),
        })
        .expect("report")
    }

    fn quiescence(reached: bool, statuses: &[(&str, usize)], violations: &[&str]) -> Quiescence {
        Quiescence {
            reached,
            waited: Duration::from_secs(3),
            lag_last: Some(0.0),
            checks: 1,
            check: Ok(CheckReport {
                violations: violations.iter().map(|v| (*v).to_owned()).collect(),
                orders_by_status: statuses
                    .iter()
                    .map(|(s, n)| ((*s).to_owned(), *n))
                    .collect(),
                ..CheckReport::default()
            }),
        }
    }

    #[test]
    fn a_clean_run_has_no_violations() {
        let settled = quiescence(true, &[("completed", 4), ("cancelled", 1)], &[]);
        assert!(violations(&load(5), &Chaos::default(), &settled).is_empty());
    }

    #[test]
    fn lost_or_doubled_orders_stuck_orders_and_check_findings_are_violations() {
        let chaos = Chaos {
            failures: vec!["worker-1 did not come back".to_owned()],
            ..Chaos::default()
        };
        let stuck = quiescence(false, &[("completed", 5), ("shipped", 1)], &["ledger off"]);
        let found = violations(&load(5), &chaos, &stuck);
        assert_eq!(found.len(), 5, "{found:#?}");
        assert_eq!(found[0], "worker-1 did not come back");
        assert!(found[1].contains("the store holds 6 orders"), "{found:#?}");
        assert!(
            found[2].contains("1 orders are still shipped"),
            "{found:#?}"
        );
        assert!(found[3].starts_with("not quiescent"), "{found:#?}");
        assert_eq!(found[4], "check: ledger off");
    }

    #[test]
    fn percentages_drop_float_noise_and_trailing_zeros() {
        assert_eq!(percent(0.05), "5%");
        assert_eq!(percent(0.07), "7%");
        assert_eq!(percent(0.125), "12.5%");
        assert_eq!(percent(0.0), "0%");
        assert_eq!(percent(1.0), "100%");
    }
}
