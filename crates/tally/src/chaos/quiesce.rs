//! Waiting for quiescence, then checking every invariant.
//!
//! Once every order is terminal, events may still be on their way: notifications not yet
//! sent, duplicate webhooks in flight, a restarted worker catching up. The run is quiescent
//! when the relay's and every consumer group's lag gauge read zero on every process for
//! [`QUIET_SCRAPES`] scrapes in a row; then `tally check` runs. A check that finds violations
//! is run again after the next quiet spell, until it passes or the deadline passes; the last
//! check's result is the one reported.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tally_loadgen::metrics_scrape::{CONSUMER_LAG_GAUGE, RELAY_LAG_GAUGE, parse_text};
use tally_sandbox::Effect;
use tally_store::{ConnectOptions, Store};

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
    /// The last check's report, or why it could not run.
    pub check: Result<CheckReport, String>,
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

/// Connections of the checker's pool: it reads one query at a time, and the deployment's
/// processes hold the server's other connections.
const CHECK_CONNECTIONS: u32 = 2;

/// Runs `tally check` in this process, with the sandbox's effects, opening the store on first
/// use (and again after a failure), so that a store that is busy for a moment is not fatal.
struct Checker<'a> {
    http: reqwest::Client,
    database_url: &'a str,
    sandbox_url: &'a str,
    store: Option<Arc<dyn Store>>,
}

impl Checker<'_> {
    async fn check(&mut self) -> anyhow::Result<CheckReport> {
        let store = match &self.store {
            Some(store) => Arc::clone(store),
            None => {
                let options = ConnectOptions {
                    connections_max: CHECK_CONNECTIONS,
                };
                let store = tally_store::connect(self.database_url, &options)
                    .await
                    .with_context(|| format!("cannot open the store at {}", self.database_url))?;
                self.store = Some(Arc::clone(&store));
                store
            }
        };
        let effects = effects(&self.http, self.sandbox_url).await?;
        let report = crate::checks::all(store.as_ref(), Some(&effects)).await;
        if report.is_err() {
            self.store = None;
        }
        report
    }
}

/// Waits for quiescence of the processes at `urls` and a passing check of the store at
/// `database_url`, until `timeout`. A check that cannot run counts as not passing.
pub async fn wait(
    urls: &[String],
    database_url: &str,
    sandbox_url: &str,
    timeout: Duration,
) -> anyhow::Result<Quiescence> {
    let http = reqwest::Client::builder()
        .timeout(SCRAPE_TIMEOUT)
        .build()
        .context("build the HTTP client")?;
    let mut checker = Checker {
        http: http.clone(),
        database_url,
        sandbox_url,
        store: None,
    };
    let started = Instant::now();
    let deadline = started + timeout;
    let (mut quiet, mut checks, mut lag_last) = (0, 0, None);
    while Instant::now() < deadline {
        lag_last = lag(&http, urls).await;
        quiet = if lag_last == Some(0.0) { quiet + 1 } else { 0 };
        if quiet >= QUIET_SCRAPES {
            checks += 1;
            match checker.check().await {
                Ok(report) if report.is_clean() => {
                    eprintln!("chaos: quiet for {QUIET_SCRAPES} s; check {checks} passes");
                    return Ok(Quiescence {
                        reached: true,
                        waited: started.elapsed(),
                        lag_last,
                        checks,
                        check: Ok(report),
                    });
                }
                Ok(report) => eprintln!(
                    "chaos: quiet for {QUIET_SCRAPES} s; check {checks}: {} violations",
                    report.violations.len()
                ),
                Err(error) => eprintln!("chaos: check {checks} could not run: {error:#}"),
            }
            quiet = 0;
        }
        tokio::time::sleep(SCRAPE_INTERVAL).await;
    }
    // The deadline passed: report what the store looks like now, honestly.
    checks += 1;
    let check = checker.check().await.map_err(|error| format!("{error:#}"));
    Ok(Quiescence {
        reached: false,
        waited: started.elapsed(),
        lag_last,
        checks,
        check,
    })
}
