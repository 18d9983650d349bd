//! A server process: the HTTP API, the relay and idempotency-key purging, started together and
//! stopped together by one cancellation token (shutdown by broadcast).

use std::net::SocketAddr;
use std::sync::Arc;

use tally_api::{ApiConfig, AppState};
use tally_domain::clock::Clock;
use tally_store::Store;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// A started server.
#[derive(Debug)]
pub struct Running {
    pub address: SocketAddr,
    pub state: AppState,
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
) -> anyhow::Result<Running> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let address = listener.local_addr()?;
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
        clock,
        shutdown.clone(),
    ));
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
    }

    /// Waits until the server stops (its token was cancelled elsewhere or a task ended).
    pub async fn wait(mut self) {
        if self.tasks.join_next().await.is_some() {
            self.shutdown.cancel();
        }
        while self.tasks.join_next().await.is_some() {}
    }
}
