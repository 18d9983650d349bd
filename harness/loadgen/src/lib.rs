//! The load generator behind `tally bench`. It drives a running Tally through its real HTTP
//! API, exactly as a sales channel would, and reports what a channel would feel:
//!
//! 1. **Set-up**: a product with a few variants and ample stock, under keys unique to the run.
//! 2. **Load**: orders at a fixed arrival rate (open loop, latency measured from each order's
//!    due time so a slow server cannot hide its stalls) or as fast as a concurrency allows
//!    (closed loop); some re-sent after their answer and some sent by concurrent duplicates,
//!    every answer checked against the idempotency contract. With `--transient-retries`, a
//!    request that got no answer, a 5xx or a 429 is sent again with the same key and body, as
//!    a real channel would, and every such retry is counted.
//! 3. **Settle**: every accepted order followed to a terminal status with bounded, paced
//!    polling; end-to-end latency read from each order's timeline.
//! 4. **Lag**: the relay's and consumers' lag gauges scraped from `/metrics` throughout.
//!
//! [`run`] prints a progress line per second on standard error and writes `--json`; the
//! caller prints the returned [`Report`] (its `Display` is the human summary) on standard
//! output. End-to-end figures compare this machine's clock with the server's event times, so
//! the two must agree (same host, or synchronized); the report flags orders whose creation time
//! contradicts the client's clock.
//!
//! # Layout
//!
//! - [`args`]: the flags ([`BenchArgs`]) and their checked form.
//! - [`schedule`]: when each order is due, which count, when sending stops. Pure.
//! - [`mix`]: each order's lines, intake and payment outcome, drawn from the seed. Pure.
//! - [`client`]: the HTTP API: set-up, placing orders, reading orders and metrics.
//! - [`send`]: one order sent as planned, its answers checked and recorded.
//! - [`retry`]: which failures a channel sends again under the same key, and the waits. Pure.
//! - [`record`]: the shared tallies and histograms of the load phase.
//! - [`load`]: the sending loop and the progress line.
//! - [`settle`]: following orders to a terminal status.
//! - [`metrics_scrape`]: the Prometheus text parser and lag gauges.
//! - [`report`]: the figures, built once and serialized as JSON.
//! - [`summary`]: the figures as the human summary (`Display`).
//!
//! `tally bench` runs it from the command line; `tests/bench.rs` runs one against an in-process
//! Tally, and `tests/retries.rs` one through a proxy that loses answers the server already
//! applied.

pub mod args;
pub mod client;
pub mod load;
pub mod metrics_scrape;
pub mod mix;
pub mod record;
pub mod report;
pub mod retry;
pub mod schedule;
pub mod send;
pub mod settle;
pub mod summary;

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use tokio::sync::{mpsc, watch};

pub use crate::args::{BenchArgs, Rate};
use crate::client::Api;
use crate::mix::DUPLICATE_COPIES_MAX;
use crate::report::Inputs;
pub use crate::report::Report;
use crate::send::{Run, RunClock};
/// The serialization crates the [`Report`] is built with, for callers that embed it in a report
/// of their own (`tally chaos`) and must derive `Serialize` and write JSON with the same
/// versions.
#[doc(hidden)]
pub use {serde, serde_json};

/// Connections kept beyond those the order slots and settle polls need: the metrics scraper
/// and the sampler.
const CONNECTIONS_SPARE: usize = 4;

/// Runs a benchmark against the Tally at `args.url` and returns its report; writes it to
/// `args.json` too when given.
pub async fn run(args: &BenchArgs) -> anyhow::Result<Report> {
    let settings = args.settings()?;
    // Each slot may hold a duplicated order's copies at once.
    let connections = settings.concurrency as usize * DUPLICATE_COPIES_MAX as usize
        + settings.settle_concurrency as usize
        + CONNECTIONS_SPARE;
    let api = Api::new(&settings.base_url, &settings.api_key, connections)?
        .with_transient_retries(settings.transient_retries);
    let run_tag = uuid::Uuid::now_v7().simple().to_string();
    let catalog = api.prepare(&run_tag, settings.skus).await?;

    let (run_over, run_over_rx) = watch::channel(false);
    let scraper = tokio::spawn(metrics_scrape::scrape_until(api.clone(), run_over_rx));
    let (load_over, load_over_rx) = watch::channel(false);
    let recorder = Arc::new(record::Recorder::new()?);
    let (sample_tx, sampler) = if settings.shares.settle_sample > 0.0 {
        let (tx, rx) = mpsc::unbounded_channel();
        let sampler = tokio::spawn(settle::sample_during_load(
            api.clone(),
            Arc::clone(&recorder),
            rx,
            load_over_rx.clone(),
        ));
        (Some(tx), Some(sampler))
    } else {
        (None, None)
    };
    let run = Arc::new(Run {
        api: api.clone(),
        catalog,
        mix: settings.mix(),
        schedule: settings.schedule.clone(),
        recorder: Arc::clone(&recorder),
        run_tag: run_tag.clone(),
        clock: RunClock::now(),
        sampler: sample_tx,
        transient_retries: settings.transient_retries,
    });
    let progress =
        (!args.quiet).then(|| tokio::spawn(load::progress(Arc::clone(&run), load_over_rx)));

    let loaded = load::drive(Arc::clone(&run), settings.concurrency).await;
    load_over.send_replace(true);
    if let Some(progress) = progress {
        progress.await.context("the progress task")?;
    }
    let mut settle = match sampler {
        Some(sampler) => sampler.await.context("the settle sampler")?,
        None => settle::SettleRun::default(),
    };
    loaded?;

    let placed = std::mem::take(&mut recorder.lock().placed);
    let pending = std::mem::take(&mut settle.pending);
    let deadline = Instant::now() + args.settle_timeout;
    let concurrency = settings.settle_concurrency as usize;
    let followed = settle::settle_all(
        &api,
        placed.into_iter().chain(pending).collect(),
        deadline,
        concurrency,
        !args.quiet,
    )
    .await;
    settle.absorb(followed);

    run_over.send_replace(true);
    let lag = scraper.await.context("the metrics scraper")?;
    let report = Report::build(&Inputs {
        settings: &settings,
        run_tag: &run_tag,
        tallies: &recorder.lock(),
        settle: &settle,
        lag: &lag,
    })?;
    if let Some(path) = &args.json {
        let json = serde_json::to_vec_pretty(&report)?;
        tokio::fs::write(path, json)
            .await
            .with_context(|| format!("write the report to {}", path.display()))?;
    }
    Ok(report)
}
