//! A server process: the HTTP API, the relay, the consumer groups (checkout saga and
//! notifications), idempotency-key purging and, unless partners are configured, the partner
//! sandbox; started together and stopped together by one cancellation token.
//!
//! A process runs every [`Role`] by default. A deployment that outgrows one process runs each
//! role in as many processes as it needs against one PostgreSQL (and, with [`Bus::Kafka`], one
//! Kafka cluster): API processes are stateless, relay processes share the log's partitions
//! through leases, worker processes share each consumer group's Kafka partitions.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;

use tally_api::{ApiConfig, AppState};
use tally_checkout::{Checkout, Notifications, PartnerUrls, Partners};
use tally_dispatch::{Dispatcher, Handler};
use tally_domain::clock::Clock;
use tally_sandbox::{Sandbox, SandboxConfig};
use tally_store::Store;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// What a process does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The HTTP API and idempotency-key purging.
    Api,
    /// Sealing audit records, positioning outbox rows and, on Kafka, publishing them.
    Relay,
    /// The consumer groups: the checkout saga and notifications.
    Worker,
    /// Everything, in one process.
    All,
}

impl Role {
    /// Whether the process serves the HTTP API (and so verifies partners' webhooks).
    pub fn api(self) -> bool {
        matches!(self, Role::Api | Role::All)
    }

    fn relay(self) -> bool {
        matches!(self, Role::Relay | Role::All)
    }

    fn worker(self) -> bool {
        matches!(self, Role::Worker | Role::All)
    }
}

/// Which log carries events from the relay to the consumer groups.
#[derive(Debug, Clone)]
pub enum Bus {
    /// The store's own log.
    Embedded,
    /// Apache Kafka (or a Kafka-compatible broker).
    Kafka(tally_kafka::KafkaConfig),
}

/// How this process takes part in a deployment.
#[derive(Debug, Clone)]
pub struct Deployment {
    pub role: Role,
    pub bus: Bus,
}

impl Default for Deployment {
    fn default() -> Self {
        Self {
            role: Role::All,
            bus: Bus::Embedded,
        }
    }
}

/// Which partners the workers call.
#[derive(Debug, Clone)]
pub enum PartnerSetup {
    /// Start the sandbox in this process, with these fault knobs; its webhooks come back here.
    Sandbox(SandboxConfig),
    /// Call partners at these URLs.
    External(PartnerUrls),
}

/// A started server.
#[derive(Debug)]
pub struct Running {
    pub address: SocketAddr,
    pub state: AppState,
    /// The in-process sandbox, when partners are not configured.
    pub sandbox: Option<Sandbox>,
    /// Notified whenever events enter the log.
    pub logged: Arc<Notify>,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
}

/// Binds `listen` and starts the roles of `deployment` on `store`.
pub async fn start(
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    config: ApiConfig,
    listen: SocketAddr,
    partners: PartnerSetup,
    deployment: &Deployment,
) -> anyhow::Result<Running> {
    let role = deployment.role;
    if let Bus::Kafka(kafka) = &deployment.bus {
        tally_kafka::topics::ensure(kafka)
            .await
            .with_context(|| format!("cannot set up topics on Kafka at {}", kafka.brokers))?;
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let address = listener.local_addr()?;
    let (urls, sandbox) = match partners {
        PartnerSetup::External(urls) => (urls, None),
        PartnerSetup::Sandbox(_) if role == Role::Worker => anyhow::bail!(
            "a worker process calls partners at URLs: give --payment-url, --carrier-url and \
             --notification-url (`tally sandbox` runs the partner sandbox alone)"
        ),
        PartnerSetup::Sandbox(_) if !role.worker() => (PartnerUrls::sandbox("http://unused"), None),
        PartnerSetup::Sandbox(mut sandbox_config) => {
            sandbox_config.webhook_url = Some(format!("http://{address}/v1/webhooks/carrier"));
            sandbox_config.webhook_secret = config.carrier_webhook_secret.clone();
            let sandbox =
                tally_sandbox::start(sandbox_config, SocketAddr::from(([127, 0, 0, 1], 0))).await?;
            (
                PartnerUrls::sandbox(&format!("http://{}", sandbox.address)),
                Some(sandbox),
            )
        }
    };
    let partners = Partners::new(urls)?;
    let state = AppState::new(Arc::clone(&store), Arc::clone(&clock), config);
    let shutdown = CancellationToken::new();
    let logged = Arc::new(Notify::new());
    let mut tasks = JoinSet::new();
    if role.relay() {
        start_relay(
            &mut tasks,
            &state,
            &clock,
            &deployment.bus,
            &logged,
            &shutdown,
        )?;
    }
    if role.api() {
        tasks.spawn(tally_api::idempotency::purge_loop(
            Arc::clone(&store),
            Arc::clone(&clock),
            shutdown.clone(),
        ));
    }
    if role.worker() {
        start_workers(
            &mut tasks,
            &store,
            &clock,
            partners,
            &deployment.bus,
            &logged,
            &shutdown,
        );
    }
    let router = if role.api() {
        tally_api::router(state.clone())
    } else {
        tally_api::operations_router(state.clone())
    };
    let serve_shutdown = shutdown.clone();
    tasks.spawn(async move {
        if let Err(error) = tally_api::serve(listener, router, serve_shutdown).await {
            tracing::error!(%error, "the HTTP server stopped");
        }
    });
    Ok(Running {
        address,
        state,
        sandbox,
        logged,
        shutdown,
        tasks,
    })
}

/// The relay, and on Kafka its publisher.
fn start_relay(
    tasks: &mut JoinSet<()>,
    state: &AppState,
    clock: &Arc<dyn Clock>,
    bus: &Bus,
    logged: &Arc<Notify>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let store = state.store();
    tasks.spawn(tally_relay::run(
        Arc::clone(store),
        state.commands().appended(),
        Arc::clone(logged),
        shutdown.clone(),
        matches!(bus, Bus::Embedded),
    ));
    if let Bus::Kafka(kafka) = bus {
        let publisher =
            tally_kafka::Publisher::new(Arc::clone(store), Arc::clone(clock), kafka.clone())
                .context("cannot create the Kafka producer")?;
        tasks.spawn(publisher.run(Arc::clone(logged), shutdown.clone()));
    }
    Ok(())
}

/// The consumer groups, on the embedded log or on Kafka.
fn start_workers(
    tasks: &mut JoinSet<()>,
    store: &Arc<dyn Store>,
    clock: &Arc<dyn Clock>,
    partners: Partners,
    bus: &Bus,
    logged: &Arc<Notify>,
    shutdown: &CancellationToken,
) {
    let handlers: [Arc<dyn Handler>; 2] = [
        Arc::new(Checkout::new(partners.clone())),
        Arc::new(Notifications::new(partners)),
    ];
    for handler in handlers {
        let dispatcher = Dispatcher::new(
            Arc::clone(store),
            Arc::clone(clock),
            handler,
            Arc::clone(logged),
        );
        match bus {
            Bus::Embedded => {
                tasks.spawn(dispatcher.run(shutdown.clone()));
            }
            Bus::Kafka(kafka) => {
                let group = dispatcher.group();
                let consumer =
                    tally_kafka::ConsumerGroup::new(Arc::clone(store), dispatcher, kafka.clone());
                let (shutdown, stopped) = (shutdown.clone(), shutdown.clone());
                tasks.spawn(async move {
                    if let Err(error) = consumer.run(shutdown).await {
                        tracing::error!(group, %error, "the Kafka consumer group stopped");
                        // A worker without its consumer is useless: stop the process, so that
                        // its supervisor restarts it.
                        stopped.cancel();
                    }
                });
            }
        }
    }
}

impl Running {
    /// A token whose cancellation stops the server.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops accepting requests, finishes those in flight, and waits for every task.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
        if let Some(sandbox) = self.sandbox.take() {
            sandbox.stop().await;
        }
    }

    /// Waits until the server stops (its token was cancelled elsewhere or a task ended).
    pub async fn wait(mut self) {
        if self.tasks.join_next().await.is_some() {
            self.shutdown.cancel();
        }
        while self.tasks.join_next().await.is_some() {}
    }
}
