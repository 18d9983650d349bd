//! Setting a chaos run up: its directory, a fresh store, a tenant, and the arguments of every
//! process of the deployment.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use crate::chaos::fleet::{Kind, Spec};
use crate::chaos::{ChaosArgs, ChaosDeployment};

/// How long a one-shot command (`tenant create`, `createdb`) may take: it migrates a fresh
/// store at most.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// Partitions of each Kafka topic: more than the two workers, so that a kill moves some.
pub const KAFKA_PARTITIONS: u32 = 8;

/// Eight random hex digits, so that runs with one seed never share a database or topics.
pub fn random_tag() -> String {
    let simple = uuid::Uuid::now_v7().simple().to_string();
    // The last digits of a UUIDv7 are random; the first are the time.
    simple[simple.len() - 8..].to_owned()
}

/// `given`, or a new directory under the system's temporary directory; created either way.
pub fn data_dir(given: Option<&Path>, seed: u64, tag: &str) -> anyhow::Result<PathBuf> {
    let dir = match given {
        Some(dir) => dir.to_owned(),
        None => std::env::temp_dir().join(format!("tally-chaos-{seed}-{tag}")),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    Ok(dir)
}

/// A fresh, empty store for the run, and its URL: a new SQLite file in `dir`, or a new
/// database `tally_chaos_{seed}_{tag}` on the PostgreSQL server of `--postgres-url`.
pub async fn create_store(args: &ChaosArgs, dir: &Path, tag: &str) -> anyhow::Result<String> {
    match args.deployment {
        ChaosDeployment::Sqlite => {
            let file = dir.join("tally.db");
            anyhow::ensure!(
                !file.exists(),
                "{} holds a store already: give a fresh --data-dir",
                file.display()
            );
            Ok(format!("sqlite://{}", file.display()))
        }
        ChaosDeployment::Postgres | ChaosDeployment::Kafka => {
            let name = format!("tally_chaos_{}_{tag}", args.seed);
            let mut url = reqwest::Url::parse(&args.postgres_url)
                .with_context(|| format!("--postgres-url {} is not a URL", args.postgres_url))?;
            url.set_path(&format!("/{name}"));
            // `createdb` rather than SQL here: it is the client PostgreSQL ships for this,
            // and SQL belongs to the store crate.
            let mut command = tokio::process::Command::new("createdb");
            command.arg(format!("--maintenance-db={}", args.postgres_url));
            command.arg(&name);
            run_command(command, "createdb (PostgreSQL's client tools)").await?;
            Ok(url.to_string())
        }
    }
}

/// Runs `tally tenant create chaos` on the store (which migrates it) and returns the API key.
pub async fn create_tenant(exe: &Path, database_url: &str) -> anyhow::Result<String> {
    let mut command = tokio::process::Command::new(exe);
    command
        .args(["--database-url", database_url, "tenant", "create", "chaos"])
        .env("TALLY_LOG", "warn");
    let stdout = run_command(command, "tally tenant create").await?;
    let key = stdout.trim().to_owned();
    anyhow::ensure!(!key.is_empty(), "tally tenant create printed no key");
    Ok(key)
}

/// Runs `command` to its end and returns its standard output; fails with its standard error.
async fn run_command(mut command: tokio::process::Command, what: &str) -> anyhow::Result<String> {
    command.kill_on_drop(true);
    let output = tokio::time::timeout(COMMAND_TIMEOUT, command.output())
        .await
        .with_context(|| format!("{what} did not finish within {COMMAND_TIMEOUT:?}"))?
        .with_context(|| format!("cannot run {what}"))?;
    anyhow::ensure!(
        output.status.success(),
        "{what} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A port nobody listens on now. Another process may take it before ours binds it; on one
/// test machine that is rare enough.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("find a free port")?;
    Ok(listener.local_addr()?.port())
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|item| (*item).to_owned()).collect()
}

/// The secret the sandbox signs carrier webhooks with and the API verifies them with, handed
/// to both in the environment, as a deployment would.
const WEBHOOK_SECRET: (&str, &str) = ("TALLY_CARRIER_WEBHOOK_SECRET", "whsec_tally_chaos_run");

/// The partner sandbox, with the run's faults, sending carrier webhooks to `api_url`.
pub fn sandbox(args: &ChaosArgs, port: u16, api_url: &str) -> Spec {
    let mut command = strings(&["sandbox", "--listen", &format!("127.0.0.1:{port}")]);
    command.extend(strings(&[
        "--webhook-url",
        &format!("{api_url}/v1/webhooks/carrier"),
        "--error-rate",
        &args.error_rate.to_string(),
        "--error-after-effect-rate",
        &args.error_after_effect_rate.to_string(),
        "--timeout-rate",
        &args.timeout_rate.to_string(),
        "--webhook-duplicates",
        &args.webhook_duplicates.to_string(),
        "--seed",
        &args.seed.to_string(),
    ]));
    Spec {
        name: "sandbox".to_owned(),
        kind: Kind::Sandbox,
        args: command,
        env: vec![
            ("TALLY_LOG".to_owned(), args.process_log.clone()),
            (WEBHOOK_SECRET.0.to_owned(), WEBHOOK_SECRET.1.to_owned()),
        ],
        base_url: format!("http://127.0.0.1:{port}"),
        ready_path: "/sandbox/effects",
    }
}

/// Where the Tally processes of a deployment find their store, bus and partners.
#[derive(Debug)]
pub struct Wiring<'a> {
    pub database_url: &'a str,
    pub sandbox_url: &'a str,
    pub api_port: u16,
    /// The Kafka brokers and topic namespace, for the kafka deployment.
    pub kafka: Option<(&'a str, &'a str)>,
}

/// The Tally processes of the deployment, the one serving the API first: one process with
/// every role, or on Kafka an API, a relay and two workers.
pub fn tally(args: &ChaosArgs, wiring: &Wiring<'_>) -> anyhow::Result<Vec<Spec>> {
    let mut env = vec![
        ("TALLY_LOG".to_owned(), args.process_log.clone()),
        (WEBHOOK_SECRET.0.to_owned(), WEBHOOK_SECRET.1.to_owned()),
    ];
    if let Some(connections) = args.process_db_connections {
        env.push(("TALLY_DB_CONNECTIONS".to_owned(), connections.to_string()));
    }
    let processes = match wiring.kafka {
        None => {
            env.push(("TALLY_BUS".to_owned(), "embedded".to_owned()));
            vec![("tally", Kind::All, "all", wiring.api_port)]
        }
        Some((brokers, namespace)) => {
            env.extend([
                ("TALLY_BUS".to_owned(), "kafka".to_owned()),
                ("TALLY_KAFKA_BROKERS".to_owned(), brokers.to_owned()),
                ("TALLY_KAFKA_NAMESPACE".to_owned(), namespace.to_owned()),
                (
                    "TALLY_KAFKA_PARTITIONS".to_owned(),
                    KAFKA_PARTITIONS.to_string(),
                ),
            ]);
            vec![
                ("api", Kind::Api, "api", wiring.api_port),
                ("relay", Kind::Relay, "relay", free_port()?),
                ("worker-1", Kind::Worker, "worker", free_port()?),
                ("worker-2", Kind::Worker, "worker", free_port()?),
            ]
        }
    };
    let specs = processes.into_iter().map(|(name, kind, role, port)| {
        let mut command = strings(&["--database-url", wiring.database_url, "serve"]);
        command.extend(strings(&["--role", role, "--listen"]));
        command.push(format!("127.0.0.1:{port}"));
        for partner in ["--payment-url", "--carrier-url", "--notification-url"] {
            command.extend(strings(&[partner, wiring.sandbox_url]));
        }
        Spec {
            name: name.to_owned(),
            kind,
            args: command,
            env: env.clone(),
            base_url: format!("http://127.0.0.1:{port}"),
            ready_path: "/readyz",
        }
    });
    Ok(specs.collect())
}
