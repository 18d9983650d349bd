//! The flags of `tally bench` and their checked form, [`Settings`].

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, bail, ensure};

use crate::mix::{Mix, Shares};
use crate::retry::TRANSIENT_RETRIES_MAX;
use crate::schedule::{Pacing, Schedule, Stop};

/// The run length when neither `--duration` nor `--orders` is given.
pub const DURATION_DEFAULT: Duration = Duration::from_secs(30);
/// The most requests in flight: past this the client, not the server, is what is measured.
pub const CONCURRENCY_MAX: u32 = 10_000;
/// The highest arrival rate, in orders per second; one order every microsecond is already past
/// what one client process can schedule on time.
pub const RATE_PER_S_MAX: f64 = 1_000_000.0;
/// The most orders one run may place: bounds the loop, the stock set up and the memory of the
/// settle phase.
pub const ORDERS_COUNT_MAX: u64 = 100_000_000;
/// The most concurrent settle polls: settling must not become a load of its own.
pub const SETTLE_CONCURRENCY_MAX: u32 = 256;
/// The largest catalog a run sets up (each SKU is one stock adjustment before the load).
pub const SKUS_MAX: usize = 10_000;

/// Drive a running Tally through its HTTP API: place orders at a fixed arrival rate or as fast
/// as a concurrency allows, with retries and duplicate sends, then wait for every order to
/// settle and report intake latency, end-to-end latency and event lag.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Base URL of the running Tally (plain HTTP).
    #[arg(long, env = "TALLY_BENCH_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// An API key with the scopes admin and orders, as printed by `tally tenant create NAME`.
    #[arg(long, env = "TALLY_API_KEY", hide_env_values = true)]
    pub api_key: String,
    /// Orders per second at a fixed arrival rate (open loop: latency counts from each order's
    /// scheduled time), or `max` to send as fast as `--concurrency` allows (closed loop).
    #[arg(long, env = "TALLY_BENCH_RATE", default_value = "max")]
    pub rate: Rate,
    /// Most order requests in flight at once, and the size of the connection pool.
    #[arg(long, env = "TALLY_BENCH_CONCURRENCY", default_value_t = 32)]
    pub concurrency: u32,
    /// How long to send after the warm-up, such as 30s or 2m [default: 30s unless --orders].
    #[arg(long, env = "TALLY_BENCH_DURATION", value_parser = humantime::parse_duration, conflicts_with = "orders")]
    pub duration: Option<Duration>,
    /// How many orders to send after the warm-up, instead of a duration.
    #[arg(long, env = "TALLY_BENCH_ORDERS")]
    pub orders: Option<u64>,
    /// Time spent sending before figures are taken; its orders are placed and settled but not
    /// counted.
    #[arg(long, env = "TALLY_BENCH_WARMUP", default_value = "0s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Share of orders (0 to 1) sent again with the same Idempotency-Key and body once answered;
    /// the replay must carry `Idempotent-Replayed: true` and the same order id.
    #[arg(long, env = "TALLY_BENCH_RETRY_SHARE", default_value_t = 0.0)]
    pub retry_share: f64,
    /// Share of orders (0 to 1) sent by 2 or 3 concurrent requests under one key: exactly one
    /// may create the order, the others must get its replay (after 409 Retry-After if need be).
    #[arg(long, env = "TALLY_BENCH_DUPLICATE_SHARE", default_value_t = 0.0)]
    pub duplicate_share: f64,
    /// Share of orders (0 to 1) whose total makes the sandbox decline the authorization, so
    /// that they end cancelled.
    #[arg(long, env = "TALLY_BENCH_DECLINE_SHARE", default_value_t = 0.0)]
    pub decline_share: f64,
    /// Share of orders (0 to 1) whose total makes the sandbox fail the capture, so that they
    /// end cancelled after a void.
    #[arg(long, env = "TALLY_BENCH_CAPTURE_FAILURE_SHARE", default_value_t = 0.0)]
    pub capture_failure_share: f64,
    /// Share of orders (0 to 1) the channel asks to cancel as soon as they are created, racing
    /// the checkout saga's first steps: each must end cancelled, or run on if the cancellation
    /// came too late (409).
    #[arg(long, env = "TALLY_BENCH_CANCEL_SHARE", default_value_t = 0.0)]
    pub cancel_share: f64,
    /// How often a request that failed the way a real channel retries (no connection, a reset,
    /// a timeout, a 5xx or a 429) is sent again with the same Idempotency-Key and body, after a
    /// backoff of 50 ms doubling to 1 s (or the server's Retry-After). 0 counts every such
    /// failure as an error; retries are counted by cause either way.
    #[arg(long, env = "TALLY_BENCH_TRANSIENT_RETRIES", default_value_t = 0)]
    pub transient_retries: u32,
    /// How many SKUs orders are spread over (each order has 1 to 3 lines of different ones).
    /// Few make every reservation wait for the same stock rows, as in a flash sale; a
    /// catalog's worth spreads them out.
    #[arg(long, env = "TALLY_BENCH_SKUS", default_value_t = crate::mix::SKUS_DEFAULT)]
    pub skus: usize,
    /// Seed of the order mix (lines, quantities, which orders are retried, duplicated or
    /// declined): the same seed gives the same mix.
    #[arg(long, env = "TALLY_BENCH_SEED", default_value_t = 1)]
    pub seed: u64,
    /// How long to wait, after the last order is answered, for every order to settle.
    #[arg(long, env = "TALLY_BENCH_SETTLE_TIMEOUT", default_value = "120s", value_parser = humantime::parse_duration)]
    pub settle_timeout: Duration,
    /// Share of orders (0 to 1) polled for settlement while the load runs, so that progress
    /// shows end-to-end figures live. The polls add load to the server being measured; the
    /// other orders are polled once the load ends.
    #[arg(long, env = "TALLY_BENCH_SETTLE_SAMPLE", default_value_t = 0.0)]
    pub settle_sample: f64,
    /// Most settle polls (GET /v1/orders/{id}) in flight at once.
    #[arg(long, env = "TALLY_BENCH_SETTLE_CONCURRENCY", default_value_t = 8)]
    pub settle_concurrency: u32,
    /// Also write the report as JSON to this file.
    #[arg(long, env = "TALLY_BENCH_JSON")]
    pub json: Option<PathBuf>,
    /// Print no progress lines on standard error.
    #[arg(long, env = "TALLY_BENCH_QUIET")]
    pub quiet: bool,
}

/// How fast orders arrive: a fixed rate, or as fast as the concurrency allows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rate {
    Max,
    PerSecond(f64),
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, String> {
        if raw.eq_ignore_ascii_case("max") {
            return Ok(Rate::Max);
        }
        let rate: f64 = raw
            .parse()
            .map_err(|_| format!("'{raw}' is neither a number of orders per second nor 'max'"))?;
        if !(rate.is_finite() && rate > 0.0 && rate <= RATE_PER_S_MAX) {
            return Err(format!(
                "the rate must be above 0 and at most {RATE_PER_S_MAX}"
            ));
        }
        Ok(Rate::PerSecond(rate))
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rate::Max => f.write_str("max"),
            Rate::PerSecond(rate) => write!(f, "{rate}"),
        }
    }
}

/// The flags once checked: everything a run needs, with no combination left to reject.
#[derive(Debug, Clone)]
pub struct Settings {
    pub base_url: String,
    pub api_key: String,
    pub schedule: Schedule,
    pub concurrency: u32,
    pub shares: Shares,
    pub seed: u64,
    pub skus: usize,
    pub settle_timeout: Duration,
    pub settle_concurrency: u32,
    pub transient_retries: u32,
}

impl Settings {
    /// The run's order mix: its shares and seed, over its catalog's SKUs.
    pub fn mix(&self) -> Mix {
        Mix::new(self.shares, self.seed).over_skus(self.skus)
    }
}

fn share(name: &str, value: f64) -> anyhow::Result<f64> {
    ensure!(
        (0.0..=1.0).contains(&value),
        "--{name} must be from 0 to 1, not {value}"
    );
    Ok(value)
}

impl BenchArgs {
    /// Checks every flag and every combination of flags.
    pub fn settings(&self) -> anyhow::Result<Settings> {
        let base_url = self.url.trim_end_matches('/').to_owned();
        let parsed = reqwest::Url::parse(&base_url)
            .with_context(|| format!("--url {} is not a URL", self.url))?;
        ensure!(
            parsed.scheme() == "http",
            "--url must be plain http://: this client is built without TLS"
        );
        ensure!(!self.api_key.trim().is_empty(), "--api-key is empty");
        ensure!(
            (1..=CONCURRENCY_MAX).contains(&self.concurrency),
            "--concurrency must be from 1 to {CONCURRENCY_MAX}"
        );
        ensure!(
            (1..=SETTLE_CONCURRENCY_MAX).contains(&self.settle_concurrency),
            "--settle-concurrency must be from 1 to {SETTLE_CONCURRENCY_MAX}"
        );
        ensure!(
            (1..=SKUS_MAX).contains(&self.skus),
            "--skus must be from 1 to {SKUS_MAX}"
        );
        ensure!(
            self.transient_retries <= TRANSIENT_RETRIES_MAX,
            "--transient-retries must be at most {TRANSIENT_RETRIES_MAX}"
        );
        let shares = Shares {
            retry: share("retry-share", self.retry_share)?,
            duplicate: share("duplicate-share", self.duplicate_share)?,
            decline: share("decline-share", self.decline_share)?,
            capture_failure: share("capture-failure-share", self.capture_failure_share)?,
            cancel: share("cancel-share", self.cancel_share)?,
            settle_sample: share("settle-sample", self.settle_sample)?,
        };
        ensure!(
            shares.retry + shares.duplicate <= 1.0,
            "--retry-share and --duplicate-share add up to more than 1"
        );
        ensure!(
            shares.decline + shares.capture_failure <= 1.0,
            "--decline-share and --capture-failure-share add up to more than 1"
        );
        let stop = match (self.duration, self.orders) {
            (Some(_), Some(_)) => bail!("give --duration or --orders, not both"),
            (Some(duration), None) => {
                ensure!(!duration.is_zero(), "--duration must be above zero");
                Stop::Duration(duration)
            }
            (None, Some(orders)) => {
                ensure!(
                    (1..=ORDERS_COUNT_MAX).contains(&orders),
                    "--orders must be from 1 to {ORDERS_COUNT_MAX}"
                );
                Stop::Orders(orders)
            }
            (None, None) => Stop::Duration(DURATION_DEFAULT),
        };
        let pacing = match self.rate {
            Rate::Max => Pacing::Closed,
            Rate::PerSecond(rate_per_s) => Pacing::Open { rate_per_s },
        };
        Ok(Settings {
            base_url,
            api_key: self.api_key.clone(),
            schedule: Schedule::new(pacing, self.warmup, stop),
            concurrency: self.concurrency,
            shares,
            seed: self.seed,
            skus: self.skus,
            settle_timeout: self.settle_timeout,
            settle_concurrency: self.settle_concurrency,
            transient_retries: self.transient_retries,
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn parse(flags: &[&str]) -> BenchArgs {
        let argv = ["bench", "--api-key", "k"].iter().chain(flags);
        Cli::try_parse_from(argv).expect("valid flags").bench
    }

    #[test]
    fn rate_is_a_positive_number_or_max() {
        assert_eq!("max".parse::<Rate>(), Ok(Rate::Max));
        assert_eq!("250".parse::<Rate>(), Ok(Rate::PerSecond(250.0)));
        assert_eq!("0.5".parse::<Rate>(), Ok(Rate::PerSecond(0.5)));
        for bad in ["0", "-3", "NaN", "inf", "fast"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn flags_become_settings() {
        let settings = parse(&[
            "--rate",
            "100",
            "--orders",
            "300",
            "--warmup",
            "2s",
            "--retry-share",
            "0.1",
        ])
        .settings()
        .expect("settings");
        assert_eq!(settings.schedule.pacing, Pacing::Open { rate_per_s: 100.0 });
        assert_eq!(settings.schedule.stop, Stop::Orders(300));
        assert_eq!(settings.schedule.warmup, Duration::from_secs(2));
        assert_eq!(settings.shares.retry, 0.1);
        let closed = parse(&[]).settings().expect("settings");
        assert_eq!(closed.schedule.pacing, Pacing::Closed);
        assert_eq!(closed.schedule.stop, Stop::Duration(DURATION_DEFAULT));
    }

    #[test]
    fn impossible_combinations_are_refused() {
        for flags in [
            &["--retry-share", "0.7", "--duplicate-share", "0.5"][..],
            &["--decline-share", "1.5"],
            &["--concurrency", "0"],
            &["--orders", "0"],
            &["--url", "https://example.com"],
            &["--transient-retries", "1001"],
            &["--skus", "0"],
            &["--skus", "10001"],
        ] {
            assert!(
                parse(flags).settings().is_err(),
                "{flags:?} must be refused"
            );
        }
        let both = [
            "bench",
            "--api-key",
            "k",
            "--orders",
            "5",
            "--duration",
            "5s",
        ];
        assert!(Cli::try_parse_from(both).is_err());
    }
}
