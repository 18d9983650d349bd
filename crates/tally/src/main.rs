//! `tally`: the server and its operator commands.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tally::server::{Bus, Deployment, PartnerSetup, Role};
use tally_api::ApiConfig;
use tally_checkout::PartnerUrls;
use tally_domain::clock::{Clock, SystemClock};
use tally_domain::ids::TenantId;
use tally_kafka::KafkaConfig;
use tally_sandbox::SandboxConfig;
use tally_store::ConnectOptions;
use tokio_util::sync::CancellationToken;

/// The default store: a SQLite file in `./tally-data/`, created on first start.
const DATABASE_URL_DEFAULT: &str = "sqlite://./tally-data/tally.db";

/// Tally: an event-driven commerce backend. Orders, stock and payments, exactly once.
#[derive(Debug, Parser)]
#[command(name = "tally", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    database: DatabaseArgs,
    /// Which log lines to print to standard error, in `tracing` filter syntax (info, debug,
    /// tally_store=debug,warn…).
    #[arg(long, env = "TALLY_LOG", default_value = "info", global = true)]
    log: String,
    #[command(subcommand)]
    command: Commands,
}

#[derive(Debug, Args)]
struct DatabaseArgs {
    /// Where the store lives: sqlite://PATH (the embedded default) or postgres://USER@HOST/DB.
    #[arg(long, env = "TALLY_DATABASE_URL", default_value = DATABASE_URL_DEFAULT, global = true)]
    database_url: String,
    /// Database connections in the pool (for SQLite: reader connections; there is always one writer).
    #[arg(
        long,
        env = "TALLY_DB_CONNECTIONS",
        default_value_t = 16,
        global = true
    )]
    db_connections: u32,
}

#[derive(Debug, Subcommand)]
enum Commands {
    /// Run the server: HTTP API, relay and maintenance, in one process.
    Serve(ServeArgs),
    /// Apply database migrations and exit (serve also applies them at start).
    Migrate,
    /// Run the partner sandbox alone: payment provider, carrier and notification provider.
    Sandbox(SandboxArgs),
    /// Verify every invariant on a store at rest: ledger, stock, order timelines, audit chains
    /// and, given the sandbox, that each partner effect happened exactly once. Exits 1 and
    /// names every violation.
    Check {
        /// The partner sandbox whose effects to check (its /sandbox/effects), such as
        /// http://127.0.0.1:8090.
        #[arg(long, env = "TALLY_SANDBOX_URL")]
        sandbox_url: Option<String>,
    },
    /// Drive a running Tally through its HTTP API and measure intake and end-to-end latency.
    Bench(Box<tally_loadgen::BenchArgs>),
    /// Deploy Tally as real processes on a fresh store, run a seeded number of orders with
    /// duplicates, retries, partner faults, duplicate webhooks and processes killed and
    /// restarted, wait for quiescence and run every invariant check. Exits 1 on any violation.
    Chaos(Box<tally::chaos::ChaosArgs>),
    /// Manage tenants.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Manage API keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// The double-entry ledger.
    #[command(subcommand)]
    Ledger(LedgerCommand),
    /// The hash-chained audit trail.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Rewind a consumer group so it sees the log again from an offset or a time. Events the
    /// group applied before are skipped by its inbox; a new group reads everything.
    /// On Kafka, stop the group's workers first: Kafka accepts new offsets only for a group
    /// without live members.
    Replay {
        /// The consumer group: checkout, notifications, or a group of your own.
        #[arg(long)]
        group: String,
        /// A log position (the group resumes after it; embedded log only), an RFC 3339 time (the
        /// group resumes with the first event at or after it), or `beginning`.
        #[arg(long)]
        from: String,
        #[command(flatten)]
        bus: BusArgs,
    },
}

#[derive(Debug, Subcommand)]
enum LedgerCommand {
    /// Verify that every entry balances, every currency sums to zero, every authorization is
    /// posted or voided at most once, and every settled order's receivable is zero. Exits 1 and
    /// names every violation otherwise.
    Check,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Verify every tenant's audit chain: an edited, deleted, reordered or inserted record is
    /// named, and the command exits 1.
    Verify,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "TALLY_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// How long idempotency keys and their stored responses are kept, such as 24h or 7d.
    #[arg(long, env = "TALLY_IDEMPOTENCY_RETENTION", default_value = "24h", value_parser = humantime::parse_duration)]
    idempotency_retention: Duration,
    /// What this process runs: api (HTTP API), relay (outbox to log or Kafka), worker
    /// (consumer groups) or all. Run each in as many processes as needed against one database.
    #[arg(long, env = "TALLY_ROLE", value_enum, default_value = "all")]
    role: RoleArg,
    #[command(flatten)]
    bus: BusArgs,
    #[command(flatten)]
    partners: PartnerArgs,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum RoleArg {
    Api,
    Relay,
    Worker,
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum BusKind {
    /// The store's own log: nothing else to run.
    Embedded,
    /// Apache Kafka or a Kafka-compatible broker; needs PostgreSQL as the store.
    Kafka,
}

#[derive(Debug, Args)]
struct BusArgs {
    /// Which log carries events to the consumer groups.
    #[arg(long, env = "TALLY_BUS", value_enum, default_value = "embedded")]
    bus: BusKind,
    /// Kafka brokers, host:port[,host:port…] (with --bus kafka).
    #[arg(long, env = "TALLY_KAFKA_BROKERS")]
    kafka_brokers: Option<String>,
    /// Prefix of Tally's topics ({namespace}.order, …) and consumer group ids on Kafka.
    #[arg(long, env = "TALLY_KAFKA_NAMESPACE", default_value = "tally")]
    kafka_namespace: String,
    /// Partitions of each topic Tally creates at start (existing topics are left alone).
    #[arg(long, env = "TALLY_KAFKA_PARTITIONS", default_value_t = tally_kafka::TOPIC_PARTITIONS_DEFAULT)]
    kafka_partitions: i32,
    /// Replicas of each topic Tally creates at start.
    #[arg(long, env = "TALLY_KAFKA_REPLICATION", default_value_t = 1)]
    kafka_replication: i32,
    /// Records per producer batch. Keep 1 on tansu 0.6, which skips records when a consumer
    /// resumes inside a batch; raise it (such as 1000) on Apache Kafka for throughput.
    #[arg(long, env = "TALLY_KAFKA_BATCH_RECORDS", default_value_t = tally_kafka::BATCH_RECORDS_DEFAULT)]
    kafka_batch_records: u32,
}

impl BusArgs {
    fn bus(&self, database_url: &str) -> anyhow::Result<Bus> {
        match self.bus {
            BusKind::Embedded => Ok(Bus::Embedded),
            BusKind::Kafka => {
                let brokers = self.kafka_brokers.clone().ok_or_else(|| {
                    anyhow::anyhow!("--bus kafka needs --kafka-brokers (or TALLY_KAFKA_BROKERS)")
                })?;
                anyhow::ensure!(
                    database_url.starts_with("postgres"),
                    "--bus kafka needs PostgreSQL as the store (--database-url postgres://…): \
                     the embedded SQLite store serves one process, and Kafka is for many"
                );
                anyhow::ensure!(
                    (1..=1024).contains(&self.kafka_partitions),
                    "--kafka-partitions must be from 1 to 1024"
                );
                anyhow::ensure!(
                    self.kafka_replication >= 1,
                    "--kafka-replication must be 1 or more"
                );
                anyhow::ensure!(
                    (1..=1_000_000).contains(&self.kafka_batch_records),
                    "--kafka-batch-records must be from 1 to 1000000"
                );
                Ok(Bus::Kafka(KafkaConfig {
                    brokers,
                    namespace: self.kafka_namespace.clone(),
                    partitions: self.kafka_partitions,
                    replication: self.kafka_replication,
                    batch_records_max: self.kafka_batch_records,
                }))
            }
        }
    }
}

#[derive(Debug, Args)]
struct PartnerArgs {
    /// Base URL of the payment provider. Without all three partner URLs, serve starts the
    /// partner sandbox in-process and uses it.
    #[arg(long, env = "TALLY_PAYMENT_URL")]
    payment_url: Option<String>,
    /// Base URL of the carrier.
    #[arg(long, env = "TALLY_CARRIER_URL")]
    carrier_url: Option<String>,
    /// Base URL of the notification provider.
    #[arg(long, env = "TALLY_NOTIFICATION_URL")]
    notification_url: Option<String>,
    /// The secret the carrier signs webhooks with (HMAC-SHA256). Required with partner URLs;
    /// with the in-process sandbox, one is generated at start and handed to it.
    #[arg(long, env = "TALLY_CARRIER_WEBHOOK_SECRET", hide_env_values = true)]
    carrier_webhook_secret: Option<String>,
}

#[derive(Debug, Args)]
struct SandboxArgs {
    /// Address the sandbox listens on.
    #[arg(long, env = "TALLY_SANDBOX_LISTEN", default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    /// Where to send carrier webhooks (Tally's /v1/webhooks/carrier).
    #[arg(long, env = "TALLY_SANDBOX_WEBHOOK_URL")]
    webhook_url: Option<String>,
    /// The secret carrier webhooks are signed with: the same flag and variable as the server
    /// that verifies them.
    #[arg(long, env = "TALLY_CARRIER_WEBHOOK_SECRET", hide_env_values = true)]
    carrier_webhook_secret: String,
    /// Share of requests that fail with 5xx before their effect (0 to 1).
    #[arg(long, env = "TALLY_SANDBOX_ERROR_RATE", default_value_t = 0.0)]
    error_rate: f64,
    /// Share of requests whose effect applies but whose answer is a 5xx (0 to 1).
    #[arg(
        long,
        env = "TALLY_SANDBOX_ERROR_AFTER_EFFECT_RATE",
        default_value_t = 0.0
    )]
    error_after_effect_rate: f64,
    /// Share of requests whose effect applies but whose answer comes too late (0 to 1).
    #[arg(long, env = "TALLY_SANDBOX_TIMEOUT_RATE", default_value_t = 0.0)]
    timeout_rate: f64,
    /// How many times each webhook is delivered.
    #[arg(long, env = "TALLY_SANDBOX_WEBHOOK_DUPLICATES", default_value_t = 1)]
    webhook_duplicates: u32,
    /// Seed of every random choice, so a run can be repeated.
    #[arg(long, env = "TALLY_SANDBOX_SEED", default_value_t = 1)]
    seed: u64,
}

#[derive(Debug, Subcommand)]
enum TenantCommand {
    /// Create a tenant and print its first API key, alone on standard output. The key is shown
    /// only this once: only its hash is stored.
    Create {
        /// The tenant's display name.
        name: String,
        /// Comma-separated scopes of the key: admin (catalog, stock), orders (channel use).
        #[arg(long, default_value = "admin,orders")]
        scopes: String,
    },
}

#[derive(Debug, Subcommand)]
enum KeyCommand {
    /// Create another API key for a tenant and print it, alone on standard output.
    Create {
        /// The tenant's id, as printed by `tally tenant create`.
        #[arg(long)]
        tenant: String,
        /// Comma-separated scopes: admin (catalog, stock), orders (channel use).
        #[arg(long, default_value = "orders")]
        scopes: String,
    },
}

/// mimalloc rather than the system allocator: a busy server spent about a tenth of its CPU in
/// glibc's malloc and free (perf, `tally bench` against SQLite).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(&cli.log);
    if let Commands::Sandbox(args) = &cli.command {
        return sandbox(args).await;
    }
    if let Commands::Chaos(args) = &cli.command {
        let exe = std::env::current_exe().context("cannot find the tally binary")?;
        let report = tally::chaos::run(args, &exe).await?;
        println!("{report}");
        if !report.is_clean() {
            std::process::exit(1);
        }
        return Ok(());
    }
    if let Commands::Bench(args) = &cli.command {
        let report = tally_loadgen::run(args).await?;
        println!("{report}");
        if !report.is_clean() {
            std::process::exit(1);
        }
        return Ok(());
    }
    let options = ConnectOptions {
        connections_max: cli.database.db_connections,
    };
    let url = &cli.database.database_url;
    let store = tally_store::connect(url, &options)
        .await
        .with_context(|| format!("cannot open the store at {url}"))?;
    let clock = SystemClock;
    match cli.command {
        Commands::Serve(args) => serve(store, url, args).await,
        Commands::Sandbox(_) | Commands::Bench(_) | Commands::Chaos(_) => Ok(()),
        Commands::Check { sandbox_url } => check(store.as_ref(), sandbox_url.as_deref()).await,
        Commands::Migrate => {
            eprintln!("migrations applied to {url}");
            Ok(())
        }
        Commands::Tenant(TenantCommand::Create { name, scopes }) => {
            let scopes = tally::admin::parse_scopes(&scopes)?;
            let issued =
                tally::admin::create_tenant(store.as_ref(), &clock, &name, &scopes).await?;
            println!("{}", issued.secret);
            eprintln!(
                "created tenant {} ({name}) and API key {}; the key above is shown only once",
                issued.tenant, issued.key_id
            );
            Ok(())
        }
        Commands::Replay { group, from, bus } => match bus.bus(url)? {
            Bus::Embedded => replay(store.as_ref(), &group, &from).await,
            Bus::Kafka(kafka) => replay_kafka(kafka, group, &from).await,
        },
        Commands::Ledger(LedgerCommand::Check) => {
            let violations = tally::checks::ledger(store.as_ref()).await?;
            report_violations("ledger", &violations)
        }
        Commands::Audit(AuditCommand::Verify) => {
            let (violations, verified) = tally::checks::audit(store.as_ref()).await?;
            eprintln!("{verified} audit records verified");
            report_violations("audit trail", &violations)
        }
        Commands::Key(KeyCommand::Create { tenant, scopes }) => {
            let tenant: TenantId = tenant
                .parse()
                .map_err(|_| anyhow::anyhow!("--tenant must be a tenant id (a UUID)"))?;
            let scopes = tally::admin::parse_scopes(&scopes)?;
            let issued = tally::admin::create_key(store.as_ref(), &clock, tenant, &scopes).await?;
            println!("{}", issued.secret);
            eprintln!(
                "created API key {} for tenant {tenant}; the key above is shown only once",
                issued.key_id
            );
            Ok(())
        }
    }
}

async fn replay_kafka(kafka: KafkaConfig, group: String, from: &str) -> anyhow::Result<()> {
    use tally_kafka::replay::Rewind;
    let to = if from == "beginning" {
        Rewind::Beginning
    } else {
        let time = chrono::DateTime::parse_from_rfc3339(from).map_err(|_| {
            anyhow::anyhow!(
                "--from must be `beginning` or an RFC 3339 time such as 2026-01-31T00:00:00Z \
                 (log positions are the embedded log's)"
            )
        })?;
        Rewind::Time(time.with_timezone(&chrono::Utc))
    };
    let resumes =
        tokio::task::spawn_blocking(move || tally_kafka::replay::rewind(&kafka, &group, to))
            .await?
            .context("cannot rewind the group (are its workers stopped?)")?;
    for (topic, partition, offset) in resumes {
        match offset {
            Some(offset) => eprintln!("{topic} partition {partition}: resumes at offset {offset}"),
            None => eprintln!(
                "{topic} partition {partition}: nothing at or after that time; resumes at the end"
            ),
        }
    }
    Ok(())
}

async fn replay(store: &dyn tally_store::Store, group: &str, from: &str) -> anyhow::Result<()> {
    let from = if from == "beginning" { "0" } else { from };
    let target = if let Ok(position) = from.parse::<i64>() {
        anyhow::ensure!(
            position >= 0,
            "--from must be a position of 0 or more, or an RFC 3339 time"
        );
        Err(position)
    } else {
        let time = chrono::DateTime::parse_from_rfc3339(from).map_err(|_| {
            anyhow::anyhow!(
                "--from must be a log position or an RFC 3339 time such as 2026-01-31T00:00:00Z"
            )
        })?;
        Ok(time.with_timezone(&chrono::Utc))
    };
    let now = SystemClock.now();
    for partition in 0..store.log_partitions() {
        let position = match target {
            Err(position) => position,
            Ok(time) => store.position_before(partition, time).await?,
        };
        store
            .commit_consumer_offset(group, partition, position, now)
            .await?;
        eprintln!("group {group}, partition {partition}: resumes after position {position}");
    }
    Ok(())
}

async fn check(store: &dyn tally_store::Store, sandbox_url: Option<&str>) -> anyhow::Result<()> {
    let effects = match sandbox_url {
        Some(url) => {
            let url = format!("{}/sandbox/effects", url.trim_end_matches('/'));
            let effects: Vec<tally_sandbox::Effect> = reqwest::get(&url)
                .await
                .and_then(reqwest::Response::error_for_status)
                .with_context(|| format!("cannot read the sandbox's effects at {url}"))?
                .json()
                .await
                .with_context(|| format!("{url} did not answer with effects"))?;
            Some(effects)
        }
        None => None,
    };
    let report = tally::checks::all(store, effects.as_deref()).await?;
    eprintln!("{report}");
    report_violations("check", &report.violations)
}

/// Prints every violation and fails when there is one.
fn report_violations(what: &str, violations: &[String]) -> anyhow::Result<()> {
    for violation in violations {
        println!("{violation}");
    }
    if violations.is_empty() {
        eprintln!("{what}: no violations");
        Ok(())
    } else {
        eprintln!("{what}: {} violation(s)", violations.len());
        std::process::exit(1);
    }
}

async fn serve(
    store: Arc<dyn tally_store::Store>,
    database_url: &str,
    args: ServeArgs,
) -> anyhow::Result<()> {
    let deployment = Deployment {
        role: match args.role {
            RoleArg::Api => Role::Api,
            RoleArg::Relay => Role::Relay,
            RoleArg::Worker => Role::Worker,
            RoleArg::All => Role::All,
        },
        bus: args.bus.bus(database_url)?,
    };
    let external = args.partners.payment_url.is_some()
        && args.partners.carrier_url.is_some()
        && args.partners.notification_url.is_some();
    let secret = match args.partners.carrier_webhook_secret.clone() {
        Some(secret) if secret.is_empty() => {
            anyhow::bail!("--carrier-webhook-secret (TALLY_CARRIER_WEBHOOK_SECRET) is empty")
        }
        Some(secret) => secret,
        None if external && deployment.role.api() => anyhow::bail!(
            "the API verifies the carrier's webhooks: give --carrier-webhook-secret \
             (TALLY_CARRIER_WEBHOOK_SECRET), the secret the carrier signs them with"
        ),
        // The in-process sandbox signs with it, or no webhook reaches this process.
        None => generated_secret(),
    };
    let mut config = ApiConfig::new(secret);
    config.idempotency_retention = args.idempotency_retention;
    let partners = match (
        args.partners.payment_url,
        args.partners.carrier_url,
        args.partners.notification_url,
    ) {
        (Some(payment), Some(carrier), Some(notifications)) => {
            PartnerSetup::External(PartnerUrls {
                payment,
                carrier,
                notifications,
            })
        }
        _ => {
            tracing::info!("no partner URLs configured: using the in-process partner sandbox");
            PartnerSetup::Sandbox(SandboxConfig::default())
        }
    };
    let running = tally::server::start(
        store,
        Arc::new(SystemClock),
        config,
        args.listen,
        partners,
        &deployment,
    )
    .await?;
    tracing::info!(address = %running.address, "tally is serving");
    let shutdown = running.shutdown_token();
    tokio::spawn(cancel_on_signal(shutdown));
    running.wait().await;
    tracing::info!("tally stopped");
    Ok(())
}

/// A webhook secret for this run only: 32 random bytes, as carriers issue them.
fn generated_secret() -> String {
    format!("whsec_{}", hex::encode(rand::random::<[u8; 32]>()))
}

async fn sandbox(args: &SandboxArgs) -> anyhow::Result<()> {
    let config = SandboxConfig {
        error_rate: args.error_rate,
        error_after_effect_rate: args.error_after_effect_rate,
        timeout_rate: args.timeout_rate,
        webhook_duplicates: args.webhook_duplicates,
        webhook_url: args.webhook_url.clone(),
        webhook_secret: args.carrier_webhook_secret.clone(),
        seed: args.seed,
        ..SandboxConfig::default()
    };
    let sandbox = tally_sandbox::start(config, args.listen)
        .await
        .with_context(|| format!("cannot start the sandbox on {}", args.listen))?;
    tracing::info!(address = %sandbox.address, "partner sandbox is serving; effects at /sandbox/effects");
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    shutdown.cancelled().await;
    sandbox.stop().await;
    Ok(())
}

/// Cancels `shutdown` on SIGTERM or Ctrl-C, so in-flight requests finish before exit.
async fn cancel_on_signal(shutdown: CancellationToken) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = terminate => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
    shutdown.cancel();
}

fn init_tracing(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
