//! A server process: the HTTP API, the relay, the consumer groups (checkout saga and
//! notifications), idempotency-key purging and, unless partners are configured, the partner
//! sandbox; started together and stopped together by one cancellation token.

use std::net::SocketAddr;
use std::sync::Arc;

use tally_api::{ApiConfig, AppState};
use tally_checkout::{Checkout, Notifications, PartnerUrls, Partners};
use tally_dispatch::{Dispatcher, Handler};
use tally_domain::clock::Clock;
use tally_sandbox::{Sandbox, SandboxConfig};
use tally_store::Store;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

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

/// Binds `listen` and starts serving on `store`.
pub async fn start(
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    config: ApiConfig,
    listen: SocketAddr,
    partners: PartnerSetup,
) -> anyhow::Result<Running> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let address = listener.local_addr()?;
    let (urls, sandbox) = match partners {
        PartnerSetup::External(urls) => (urls, None),
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
    tasks.spawn(tally_relay::run(
        Arc::clone(&store),
        state.commands().appended(),
        Arc::clone(&logged),
        shutdown.clone(),
    ));
    tasks.spawn(tally_api::idempotency::purge_loop(
        Arc::clone(&store),
        Arc::clone(&clock),
        shutdown.clone(),
    ));
    let handlers: [Arc<dyn Handler>; 2] = [
        Arc::new(Checkout::new(partners.clone())),
        Arc::new(Notifications::new(partners)),
    ];
    for handler in handlers {
        let dispatcher = Dispatcher::new(
            Arc::clone(&store),
            Arc::clone(&clock),
            handler,
            Arc::clone(&logged),
        );
        tasks.spawn(dispatcher.run(shutdown.clone()));
    }
    let router = tally_api::router(state.clone());
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
