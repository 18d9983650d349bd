//! The human summary of a [`Report`]: the `Display` of the report and its parts.

use std::collections::BTreeMap;
use std::fmt;

use crate::report::{GaugeSummary, LatencySummary, Report};

/// Milliseconds with about three significant digits.
fn ms(value: f64) -> String {
    match value {
        v if v < 10.0 => format!("{v:.2} ms"),
        v if v < 100.0 => format!("{v:.1} ms"),
        v => format!("{v:.0} ms"),
    }
}

fn counts(map: &BTreeMap<String, u64>) -> String {
    let parts: Vec<String> = map.iter().map(|(k, v)| format!("{k} {v}")).collect();
    parts.join(", ")
}

fn percent(share: f64) -> String {
    format!("{:.0}%", share * 100.0)
}

impl fmt::Display for LatencySummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.count == 0 {
            return f.write_str("none");
        }
        write!(
            f,
            "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  ({} samples)",
            ms(self.p50),
            ms(self.p90),
            ms(self.p99),
            ms(self.p999),
            ms(self.max),
            self.count
        )
    }
}

impl fmt::Display for GaugeSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.max, self.last) {
            (Some(max), Some(last)) => write!(f, "max {max}, final {last}"),
            _ => f.write_str("not available"),
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let run = &self.run;
        let pacing = match run.rate_per_s {
            Some(rate) => format!("open loop at {rate}/s"),
            None => "closed loop".to_owned(),
        };
        writeln!(
            f,
            "tally bench {}: {pacing}, concurrency {}, seed {}, {} SKUs, against {}",
            run.run_tag, run.concurrency, run.seed, run.skus, run.url
        )?;
        writeln!(
            f,
            "  measured {:.1} s after {:.1} s warm-up; retry {}, duplicate {}, decline {}, capture failure {}, cancel {}",
            run.measured_s,
            run.warmup_s,
            percent(run.retry_share),
            percent(run.duplicate_share),
            percent(run.decline_share),
            percent(run.capture_failure_share),
            percent(run.cancel_share),
        )?;
        let intake = &self.intake;
        writeln!(
            f,
            "intake   {} accepted ({} counted) of {} sent in {} requests: {:.1} orders/s",
            intake.accepted,
            intake.accepted_measured,
            intake.orders_sent,
            intake.requests_sent,
            intake.orders_per_s
        )?;
        writeln!(f, "  latency  {}", intake.latency_ms)?;
        writeln!(
            f,
            "  replays  {}\n           {} re-sent, {} duplicated, {} copies waited on 409",
            intake.replay_latency_ms,
            intake.retry_orders,
            intake.duplicate_orders,
            intake.duplicate_conflicts
        )?;
        if run.cancel_share > 0.0 {
            writeln!(
                f,
                "  cancels  {} accepted, {} too late",
                intake.cancels_accepted, intake.cancels_too_late
            )?;
        }
        if run.transient_retries_max > 0 || intake.transient_retries > 0 {
            writeln!(
                f,
                "  retried  {} requests of {} orders after transient failures ({}), same key and body",
                intake.transient_retries,
                intake.orders_retried,
                counts(&intake.transient_retries_by_cause),
            )?;
        }
        if intake.clock_skew_suspect > 0 {
            writeln!(
                f,
                "  warning  {} orders were created outside their request's time on this clock: end-to-end figures carry the clock skew",
                intake.clock_skew_suspect
            )?;
        }
        let errors = &self.errors;
        writeln!(f, "errors   {}", errors.total)?;
        if !errors.by_status.is_empty() {
            writeln!(f, "  by status   {}", counts(&errors.by_status))?;
        }
        if !errors.mismatches.is_empty() {
            writeln!(f, "  mismatches  {}", counts(&errors.mismatches))?;
        }
        for example in &errors.mismatch_examples {
            writeln!(f, "    {example}")?;
        }
        let settle = &self.settle;
        writeln!(
            f,
            "settle   {} of {} terminal ({}), {} unsettled, {} polls",
            settle.settled,
            settle.tracked,
            counts(&settle.by_status),
            settle.unsettled,
            settle.polls
        )?;
        writeln!(
            f,
            "  e2e      {}\n  e2e rate {:.1} orders/s sustained",
            settle.e2e_ms, settle.e2e_orders_per_s
        )?;
        if !settle.unexpected_outcomes.is_empty() {
            writeln!(f, "  unexpected  {}", counts(&settle.unexpected_outcomes))?;
        }
        let lag = &self.lag;
        writeln!(f, "lag      relay: {}", lag.relay)?;
        if lag.consumers_available {
            for (group, gauge) in &lag.consumers {
                writeln!(f, "         consumer {group}: {gauge}")?;
            }
        } else {
            writeln!(f, "         consumers: not available")?;
        }
        write!(
            f,
            "         ({} scrapes, {} failed)",
            lag.scrapes_ok, lag.scrapes_failed
        )
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser;

    use crate::args::BenchArgs;
    use crate::metrics_scrape::{LagTracker, parse_text};
    use crate::record::{Mismatch, Recorder, record_latency};
    use crate::report::{Inputs, Report};
    use crate::settle::SettleRun;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    #[test]
    fn the_summary_names_every_figure_and_missing_gauges() {
        let args = Cli::try_parse_from(["bench", "--api-key", "k", "--rate", "50"])
            .expect("flags")
            .bench;
        let settings = args.settings().expect("settings");
        let mut tallies = Recorder::new().expect("recorder").into_tallies();
        for millis in [3, 4, 5, 40] {
            record_latency(&mut tallies.intake, Duration::from_millis(millis));
        }
        tallies.accepted_measured = 4;
        tallies.last_measured_answer = Some(Duration::from_secs(2));
        tallies.error("503".to_owned());
        tallies.mismatch(Mismatch::DifferentOrder, "k-1 gave a and b".to_owned());
        let mut lag = LagTracker::default();
        lag.observe(&parse_text("tally_relay_lag_events 12\n"));
        let report = Report::build(&Inputs {
            settings: &settings,
            run_tag: "t",
            tallies: &tallies,
            settle: &SettleRun::default(),
            lag: &lag,
        })
        .expect("report");
        let text = report.to_string();
        assert!(text.contains("open loop at 50/s"), "{text}");
        assert!(text.contains("2.0 orders/s"), "{text}");
        assert!(text.contains("p50 4.00 ms"), "{text}");
        assert!(text.contains("max 40.0 ms  (4 samples)"), "{text}");
        assert!(text.contains("errors   2"), "{text}");
        assert!(text.contains("503 1"), "{text}");
        assert!(
            text.contains("different_order_id: k-1 gave a and b"),
            "{text}"
        );
        assert!(text.contains("replays  none"), "{text}");
        assert!(text.contains("relay: max 12, final 12"), "{text}");
        assert!(text.contains("consumers: not available"), "{text}");
    }
}
