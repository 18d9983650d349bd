//! `tally chaos`: a fixed number of orders through Tally deployed as real processes, with
//! faults on everywhere, then a wait for quiescence and every invariant checked.
//!
//! The faults: orders re-sent after their answer and sent by concurrent duplicates under one
//! key; orders whose payment is declined or whose capture fails; a partner sandbox that fails
//! requests before and after applying them, answers too late, and delivers each webhook
//! twice; and processes killed with SIGKILL at random moments and started again: the one
//! server of the SQLite and PostgreSQL deployments (a crash there is the common case), and the
//! API, the relay and the workers of the Kafka deployment. The channel (the load generator)
//! retries what a real channel would retry, with the same key and body. The run then proves
//! that nothing was lost or done twice: every order reached the status its price steered it
//! to, the store holds exactly the orders the channel was answered with, and `tally check`
//! (ledger, stock, timelines, audit chains, each partner effect exactly once) finds nothing.
//!
//! Same seed, same traffic: the order mix, the sandbox's fault draws and the kill moments
//! (relative to the run's start) all come from `--seed`. What timing decides (which request a
//! fault hits, what a kill interrupts) varies from run to run.
//!
//! # Layout
//!
//! - [`setup`]: the run's directory, a fresh store, the tenant, every process's arguments.
//! - [`fleet`]: the OS processes: start, readiness, SIGKILL, restart, kill all on drop.
//! - [`kills`]: the kill plan drawn from the seed (pure), and carrying it out.
//! - [`quiesce`]: waiting for zero lag, then `tally check` with the sandbox's effects.
//! - [`report`]: [`ChaosReport`], its violations and its summary.

pub mod fleet;
pub mod kills;
pub mod quiesce;
pub mod report;
pub mod setup;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use tally_loadgen::serde::Serialize;
use tally_loadgen::{BenchArgs, Rate};
use tokio::sync::watch;

use crate::chaos::fleet::{Fleet, Kind};
use crate::chaos::kills::Killing;
pub use crate::chaos::report::ChaosReport;
use crate::chaos::report::{CheckFigures, Faults, QuiescenceReport};

/// Share of orders whose price makes the sandbox decline the payment: they end cancelled.
pub const DECLINE_SHARE: f64 = 0.02;
/// Share of orders whose price makes the capture fail: they end cancelled after a void.
pub const CAPTURE_FAILURE_SHARE: f64 = 0.01;
/// Share of orders the channel asks to cancel as soon as they are created, racing the saga's
/// payment calls: each ends cancelled with nothing left authorized or captured, or runs on.
pub const CANCEL_SHARE: f64 = 0.03;
/// Order requests in flight at most: room for the backlog a killed API leaves behind.
pub const LOAD_CONCURRENCY: u32 = 256;
/// Retries of one request after transient failures: with the load generator's backoff
/// (doubling to 1 s) about two minutes, far past a restart.
pub const TRANSIENT_RETRIES: u32 = 120;
/// Settle polls in flight: enough to follow thousands of orders, light beside the saga.
pub const SETTLE_CONCURRENCY: u32 = 8;
/// How long a process may take to be ready at the start: migrations, topics, consumer groups.
pub const START_READY_TIMEOUT: Duration = Duration::from_secs(120);
/// The most orders one run places.
pub const ORDERS_MAX: u64 = 10_000_000;

/// Which deployment a chaos run starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(crate = "tally_loadgen::serde", rename_all = "lowercase")]
pub enum ChaosDeployment {
    /// One process with every role on a SQLite file and the embedded log.
    Sqlite,
    /// One process with every role on PostgreSQL and the embedded log.
    Postgres,
    /// An API, a relay and two workers as separate processes on PostgreSQL and Kafka.
    Kafka,
}

impl fmt::Display for ChaosDeployment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChaosDeployment::Sqlite => "sqlite",
            ChaosDeployment::Postgres => "postgres",
            ChaosDeployment::Kafka => "kafka",
        })
    }
}

/// Which processes may be killed: the SQLite and PostgreSQL deployments have one server,
/// which `server` names; the Kafka deployment has the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Victim {
    Server,
    Api,
    Relay,
    Worker,
}

/// Run a fixed number of orders through Tally deployed as real processes with faults on
/// (duplicate and retried requests, partner errors and timeouts, duplicate webhooks, and
/// processes killed and restarted), wait for quiescence, and check every invariant.
/// Exits 1 on any violation. The same seed gives the same traffic, faults and kill moments.
#[derive(Debug, Clone, clap::Args)]
pub struct ChaosArgs {
    /// Orders to place.
    #[arg(long, default_value_t = 10_000)]
    pub orders: u64,
    /// Seed of the order mix, the partner faults and the kill moments.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// What to start: sqlite (one process, SQLite, embedded log), postgres (one process,
    /// PostgreSQL, embedded log) or kafka (API, relay and two workers on PostgreSQL and Kafka).
    #[arg(long, value_enum, default_value = "sqlite")]
    pub deployment: ChaosDeployment,
    /// Where the SQLite file and every process's log go, kept after the run [default: a new
    /// directory under the system's temporary directory].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The PostgreSQL server on which the run creates its own database
    /// (tally_chaos_SEED_RANDOM), kept after the run; needs `createdb` on the PATH.
    #[arg(
        long,
        env = "TALLY_CHAOS_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub postgres_url: String,
    /// Kafka brokers, host:port[,host:port…]; required with --deployment kafka.
    #[arg(long, env = "TALLY_KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// Orders per second, at a fixed arrival rate.
    #[arg(long, default_value_t = 300.0)]
    pub rate: f64,
    /// Share of partner requests failed with a 5xx before they apply (0 to 1).
    #[arg(long, default_value_t = 0.05)]
    pub error_rate: f64,
    /// Share of partner requests applied but answered with a 500 (0 to 1).
    #[arg(long, default_value_t = 0.03)]
    pub error_after_effect_rate: f64,
    /// Share of partner requests applied but answered after the caller gave up (0 to 1).
    #[arg(long, default_value_t = 0.01)]
    pub timeout_rate: f64,
    /// How many times the carrier delivers each webhook.
    #[arg(long, default_value_t = 2)]
    pub webhook_duplicates: u32,
    /// Share of orders re-sent with the same key once answered (0 to 1): each must be a replay.
    #[arg(long, default_value_t = 0.10)]
    pub resend_share: f64,
    /// Share of orders sent by 2 or 3 concurrent requests under one key (0 to 1): one creates
    /// the order, the others wait or replay it.
    #[arg(long, default_value_t = 0.05)]
    pub duplicate_share: f64,
    /// Mean time from a killed process's return to the next kill. 0s kills nothing.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub kill_every: Duration,
    /// Shortest time a killed process stays down before it is started again.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub down_min: Duration,
    /// Longest time a killed process stays down before it is started again.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub down_max: Duration,
    /// Which processes may be killed: server (the one process of the SQLite and PostgreSQL
    /// deployments), api, relay, worker (those of the Kafka deployment).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "server,api,relay,worker"
    )]
    pub victims: Vec<Victim>,
    /// How long to wait, after the last order is placed, for every order to be terminal.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub settle_timeout: Duration,
    /// How long to wait, once every order is terminal, for zero lag and a passing check.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub quiesce_timeout: Duration,
    /// Log filter of the Tally processes, whose logs go to files in the data directory.
    #[arg(long, default_value = "info")]
    pub process_log: String,
    /// Database connections of each Tally process's pool [default: the processes' own
    /// default, 16]. Lower it on a PostgreSQL server shared with other work.
    #[arg(long)]
    pub process_db_connections: Option<u32>,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Print no progress lines of the load on standard error.
    #[arg(long)]
    pub quiet: bool,
}

impl ChaosArgs {
    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (1..=ORDERS_MAX).contains(&self.orders),
            "--orders must be from 1 to {ORDERS_MAX}"
        );
        anyhow::ensure!(
            self.rate.is_finite()
                && self.rate > 0.0
                && self.rate <= tally_loadgen::args::RATE_PER_S_MAX,
            "--rate must be above 0 and at most {}",
            tally_loadgen::args::RATE_PER_S_MAX
        );
        anyhow::ensure!(
            self.deployment != ChaosDeployment::Kafka || self.kafka_brokers.is_some(),
            "--deployment kafka needs --kafka-brokers (or TALLY_KAFKA_BROKERS)"
        );
        anyhow::ensure!(
            self.down_min <= self.down_max,
            "--down-min must not be above --down-max"
        );
        let rates = [
            ("error-rate", self.error_rate),
            ("error-after-effect-rate", self.error_after_effect_rate),
            ("timeout-rate", self.timeout_rate),
            ("resend-share", self.resend_share),
            ("duplicate-share", self.duplicate_share),
        ];
        for (name, rate) in rates {
            anyhow::ensure!((0.0..=1.0).contains(&rate), "--{name} must be from 0 to 1");
        }
        Ok(())
    }

    /// The load generator's flags: the chaos seed and mix, retrying transient failures.
    fn bench(&self, url: &str, api_key: &str) -> BenchArgs {
        BenchArgs {
            url: url.to_owned(),
            api_key: api_key.to_owned(),
            rate: Rate::PerSecond(self.rate),
            concurrency: LOAD_CONCURRENCY,
            duration: None,
            orders: Some(self.orders),
            warmup: Duration::ZERO,
            retry_share: self.resend_share,
            duplicate_share: self.duplicate_share,
            decline_share: DECLINE_SHARE,
            capture_failure_share: CAPTURE_FAILURE_SHARE,
            cancel_share: CANCEL_SHARE,
            transient_retries: TRANSIENT_RETRIES,
            seed: self.seed,
            // Few SKUs, so that concurrent reservations contend for the same stock rows.
            skus: tally_loadgen::mix::SKUS_DEFAULT,
            settle_timeout: self.settle_timeout,
            settle_sample: 0.0,
            settle_concurrency: SETTLE_CONCURRENCY,
            json: None,
            quiet: self.quiet,
        }
    }
}

/// Runs a chaos run with the `tally` binary at `tally_exe` and returns its report; writes it
/// to `args.json` too when given. Every process it started is gone when it returns, also when
/// it fails or is interrupted by SIGINT or SIGTERM (which it then reports as an error).
pub async fn run(args: &ChaosArgs, tally_exe: &Path) -> anyhow::Result<ChaosReport> {
    args.validate()?;
    // Returning drops the run, and with it the fleet, which kills every process.
    tokio::select! {
        report = run_to_end(args, tally_exe) => report,
        signal = interrupted() => Err(anyhow::anyhow!(
            "interrupted by {signal}; every process of the run is stopped"
        )),
    }
}

/// Waits for SIGINT or SIGTERM and names it; never returns if neither can be listened for.
async fn interrupted() -> &'static str {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = terminate => "SIGTERM",
        interrupt = tokio::signal::ctrl_c() => match interrupt {
            Ok(()) => "SIGINT",
            Err(_) => std::future::pending().await,
        },
    }
}

async fn run_to_end(args: &ChaosArgs, tally_exe: &Path) -> anyhow::Result<ChaosReport> {
    let started = Instant::now();
    let mut deployed = deploy(args, tally_exe).await?;
    eprintln!(
        "chaos: every process is ready; placing {} orders",
        args.orders
    );
    let killing = killing(args, &deployed.fleet);
    let (load_over, load_over_rx) = watch::channel(false);
    let bench = args.bench(&deployed.api_url, &deployed.api_key);
    let load = async {
        let report = tally_loadgen::run(&bench).await;
        load_over.send_replace(true);
        report
    };
    let chaos = kills::run(
        &mut deployed.fleet,
        killing.as_ref(),
        Instant::now(),
        load_over_rx,
    );
    let (load, chaos) = tokio::join!(load, chaos);
    let (load, mut chaos) = (load?, chaos?);
    kills::supervise(&mut deployed.fleet, started, &mut chaos).await?;

    eprintln!("chaos: every order is answered and followed; waiting for quiescence");
    let tally_urls = deployed.fleet.tally_urls();
    let quiescence = quiesce::wait(
        &tally_urls,
        &deployed.database_url,
        &deployed.sandbox_url,
        args.quiesce_timeout,
    )
    .await?;
    kills::supervise(&mut deployed.fleet, started, &mut chaos).await?;
    deployed.fleet.stop().await;

    let report = ChaosReport {
        deployment: args.deployment,
        seed: args.seed,
        orders: args.orders,
        rate_per_s: args.rate,
        database_url: deployed.database_url,
        data_dir: deployed.dir.display().to_string(),
        sandbox_url: deployed.sandbox_url,
        kafka_namespace: deployed.kafka_namespace,
        faults: Faults {
            error_rate: args.error_rate,
            error_after_effect_rate: args.error_after_effect_rate,
            timeout_rate: args.timeout_rate,
            webhook_duplicates: args.webhook_duplicates,
        },
        violations: report::violations(&load, &chaos, &quiescence),
        load,
        kills: chaos.kills,
        exits: chaos.exits,
        quiescence: QuiescenceReport::of(&quiescence),
        check: quiescence.check.as_ref().ok().map(CheckFigures::of),
        elapsed_s: started.elapsed().as_secs_f64(),
    };
    if let Some(path) = &args.json {
        let json = tally_loadgen::serde_json::to_vec_pretty(&report)?;
        tokio::fs::write(path, json)
            .await
            .with_context(|| format!("write the report to {}", path.display()))?;
    }
    Ok(report)
}

/// A deployment up and ready, with what the load and the checks need to reach it.
#[derive(Debug)]
struct Deployed {
    fleet: Fleet,
    dir: PathBuf,
    database_url: String,
    sandbox_url: String,
    api_url: String,
    api_key: String,
    kafka_namespace: Option<String>,
}

/// Creates the store, starts the sandbox, creates the tenant, and starts and waits for every
/// Tally process of the deployment.
async fn deploy(args: &ChaosArgs, tally_exe: &Path) -> anyhow::Result<Deployed> {
    let tag = setup::random_tag();
    let dir = setup::data_dir(args.data_dir.as_deref(), args.seed, &tag)?;
    let database_url = setup::create_store(args, &dir, &tag).await?;
    eprintln!(
        "chaos: {} deployment, store {database_url}, logs in {}",
        args.deployment,
        dir.display()
    );
    let mut fleet = Fleet::new(tally_exe, &dir)?;
    let api_port = setup::free_port()?;
    let api_url = format!("http://127.0.0.1:{api_port}");
    let sandbox = fleet.start(setup::sandbox(args, setup::free_port()?, &api_url))?;
    let sandbox_url = fleet.spec(sandbox).base_url.clone();
    fleet.wait_ready(sandbox, START_READY_TIMEOUT).await?;
    let api_key = setup::create_tenant(tally_exe, &database_url).await?;
    let kafka_namespace =
        (args.deployment == ChaosDeployment::Kafka).then(|| format!("chaos{}{tag}", args.seed));
    let wiring = setup::Wiring {
        database_url: &database_url,
        sandbox_url: &sandbox_url,
        api_port,
        kafka: args
            .kafka_brokers
            .as_deref()
            .zip(kafka_namespace.as_deref()),
    };
    start_tally(&mut fleet, setup::tally(args, &wiring)?).await?;
    Ok(Deployed {
        fleet,
        dir,
        database_url,
        sandbox_url,
        api_url,
        api_key,
        kafka_namespace,
    })
}

/// Starts the Tally processes, the API first (it creates the Kafka topics), and waits until
/// each is ready.
async fn start_tally(fleet: &mut Fleet, specs: Vec<fleet::Spec>) -> anyhow::Result<()> {
    let mut specs = specs.into_iter();
    if let Some(first) = specs.next() {
        let index = fleet.start(first)?;
        fleet.wait_ready(index, START_READY_TIMEOUT).await?;
    }
    let mut others = Vec::new();
    for spec in specs {
        others.push(fleet.start(spec)?);
    }
    for index in others {
        fleet.wait_ready(index, START_READY_TIMEOUT).await?;
    }
    Ok(())
}

/// The kill plan's candidates: of the processes `--victims` names, those the deployment has.
fn killing(args: &ChaosArgs, fleet: &Fleet) -> Option<Killing> {
    let mut victims = Vec::new();
    for victim in &args.victims {
        let kind = match victim {
            Victim::Server => Kind::All,
            Victim::Api => Kind::Api,
            Victim::Relay => Kind::Relay,
            Victim::Worker => Kind::Worker,
        };
        victims.extend(fleet.of_kind(kind));
    }
    victims.sort_unstable();
    victims.dedup();
    if victims.is_empty() {
        return None;
    }
    Some(Killing {
        victims,
        every: args.kill_every,
        down_min: args.down_min,
        down_max: args.down_max,
        seed: args.seed,
    })
}
