//! Waiting for quiescence, then checking every invariant.
//!
//! Once every order is terminal, events may still be on their way: notifications not yet
//! sent, duplicate webhooks in flight, a restarted worker catching up. The run is quiescent
//! when the relay's and every consumer group's lag gauge read zero on every process for
//! [`QUIET_SCRAPES`] scrapes in a row; then `tally check` runs. A check that finds violations
//! is run again after the next quiet spell, until it passes or the deadline passes; the last
//! check's result is the one reported.

use std::time::{Duration, Instant};

use anyhow::Context;
use tally_loadgen::metrics_scrape::{CONSUMER_LAG_GAUGE, RELAY_LAG_GAUGE, parse_text};
use tally_sandbox::Effect;
use tally_store::Store;

use crate::checks::CheckReport;

/// Scrapes in a row, one per [`SCRAPE_INTERVAL`], in which every lag gauge reads zero: a few,
/// since a gauge is refreshed once a second and a restarted worker reports only after joining.
pub const QUIET_SCRAPES: u32 = 3;
pub const SCRAPE_INTERVAL: Duration = Duration::from_secs(1);
/// How long one scrape of `/metrics` may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// How the wait ended.
#[derive(Debug)]
pub struct Quiescence {
    /// Whether the gauges read zero and a check then passed before the deadline.
    pub reached: bool,
    /// From the start of the wait to the passing check, or to the deadline.
    pub waited: Duration,
    /// The summed lag of the last scrape; `None` if a process did not answer it.
    pub lag_last: Option<f64>,
    /// Checks run; the last one's report is `check`.
    pub checks: u32,
    pub check: CheckReport,
}

/// The summed lag gauges of every process at `urls`, or `None` if one did not answer.
async fn lag(http: &reqwest::Client, urls: &[String]) -> Option<f64> {
    let mut total = 0.0;
    for url in urls {
        let text = http
            .get(format!("{url}/metrics"))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .ok()?
            .text()
            .await
            .ok()?;
        total += parse_text(&text)
            .iter()
            .filter(|sample| sample.name == RELAY_LAG_GAUGE || sample.name == CONSUMER_LAG_GAUGE)
            .map(|sample| sample.value)
            .sum::<f64>();
    }
    Some(total)
}

/// The partner sandbox's record of every effect.
pub async fn effects(http: &reqwest::Client, sandbox_url: &str) -> anyhow::Result<Vec<Effect>> {
    let url = format!("{sandbox_url}/sandbox/effects");
    http.get(&url)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .with_context(|| format!("cannot read the sandbox's effects at {url}"))?
        .json()
        .await
        .with_context(|| format!("{url} did not answer with effects"))
}

/// Every invariant of the store, with the sandbox's effects.
pub async fn check(
    http: &reqwest::Client,
    store: &dyn Store,
    sandbox_url: &str,
) -> anyhow::Result<CheckReport> {
    let effects = effects(http, sandbox_url).await?;
    crate::checks::all(store, Some(&effects)).await
}

/// Waits for quiescence of the processes at `urls` and a passing check, until `timeout`.
pub async fn wait(
    urls: &[String],
    store: &dyn Store,
    sandbox_url: &str,
    timeout: Duration,
) -> anyhow::Result<Quiescence> {
    let http = reqwest::Client::builder()
        .timeout(SCRAPE_TIMEOUT)
        .build()
        .context("build the HTTP client")?;
    let started = Instant::now();
    let deadline = started + timeout;
    let (mut quiet, mut checks, mut lag_last) = (0, 0, None);
    while Instant::now() < deadline {
        lag_last = lag(&http, urls).await;
        quiet = if lag_last == Some(0.0) { quiet + 1 } else { 0 };
        if quiet >= QUIET_SCRAPES {
            let report = check(&http, store, sandbox_url).await?;
            checks += 1;
            eprintln!(
                "chaos: quiet for {QUIET_SCRAPES} s; check {checks}: {} violations",
                report.violations.len()
            );
            if report.is_clean() {
                return Ok(Quiescence {
                    reached: true,
                    waited: started.elapsed(),
                    lag_last,
                    checks,
                    check: report,
                });
            }
            quiet = 0;
        }
        tokio::time::sleep(SCRAPE_INTERVAL).await;
    }
    // The deadline passed: report what the store looks like now, honestly.
    let check = check(&http, store, sandbox_url).await?;
    checks += 1;
    Ok(Quiescence {
        reached: false,
        waited: started.elapsed(),
        lag_last,
        checks,
        check,
    })
}
