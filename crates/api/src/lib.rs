//! Tally's HTTP API. A request is authenticated ([`auth`]), its body parsed into a domain
//! command ([`routes`]), and the command executed under its idempotency key
//! ([`idempotency`]) by the store's one command flow. Every error is an RFC 9457 problem
//! ([`problem`]). The OpenAPI 3.1 document is generated from the handlers ([`openapi`]).
//!
//! # Layout
//!
//! - [`auth`]: API keys, scopes, the `AdminKey` and `OrdersKey` extractors.
//! - [`idempotency`]: the `Idempotency-Key` header, fingerprints, stored responses, purging.
//! - [`problem`]: the API's errors and their problem documents.
//! - [`validate`]: collecting every invalid field of a body.
//! - [`routes`]: one module per resource.
//! - [`openapi`]: the generated document and Swagger UI.
//! - [`metrics`]: Prometheus metrics at `/metrics`.
//!
//! A new mutating route is a handler in its resource's module under [`routes`] (or a file of
//! its own beside it, as `routes/products/update.rs`) that parses the body into domain values
//! and hands a `tally_commands::Command` to [`idempotency`]'s `execute`, plus one `.route` line
//! below and one line in [`openapi`]. A new partner's webhook (an ingress) is a handler in
//! `routes/webhooks.rs` that checks the partner's signature with the partner's contract in
//! `tally-wire` and issues its change as that partner (an `Actor::Partner`).

pub mod auth;
pub mod idempotency;
pub mod metrics;
pub mod openapi;
pub mod problem;
pub mod routes;
pub mod validate;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::HeaderName;
use axum::routing::{get, post};
use tally_commands::Commands;
use tally_domain::clock::Clock;
use tally_store::{ApiKeyRecord, Store};
use tokio_util::sync::CancellationToken;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::problem::ApiError;

/// The largest request body accepted, in bytes. An order of 100 lines with long addresses is
/// well under 64 KiB; anything larger is refused before it is parsed.
pub const BODY_BYTES_MAX: usize = 64 * 1024;
/// How long idempotency keys are kept by default.
pub const IDEMPOTENCY_RETENTION_DEFAULT: Duration = Duration::from_secs(24 * 60 * 60);

#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub idempotency_retention: Duration,
    pub body_bytes_max: usize,
    /// The secret the carrier signs its webhooks with.
    pub carrier_webhook_secret: String,
}

impl ApiConfig {
    /// The defaults, with the carrier's webhook secret: there is no built-in one.
    pub fn new(carrier_webhook_secret: String) -> Self {
        Self {
            idempotency_retention: IDEMPOTENCY_RETENTION_DEFAULT,
            body_bytes_max: BODY_BYTES_MAX,
            carrier_webhook_secret,
        }
    }
}

/// What every handler shares. Built once at start: requests do no set-up of their own.
#[derive(Debug, Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    commands: Commands,
    keys: moka::sync::Cache<[u8; 32], ApiKeyRecord>,
    config: ApiConfig,
}

impl AppState {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, config: ApiConfig) -> Self {
        metrics::install();
        let commands = Commands::new(
            Arc::clone(&store),
            Arc::clone(&clock),
            config.idempotency_retention,
        );
        let keys = moka::sync::Cache::builder()
            .max_capacity(auth::KEY_CACHE_COUNT_MAX)
            .time_to_live(auth::KEY_CACHE_TTL)
            .build();
        Self {
            inner: Arc::new(Inner {
                store,
                clock,
                commands,
                keys,
                config,
            }),
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    pub fn commands(&self) -> &Commands {
        &self.inner.commands
    }
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    let request_id = HeaderName::from_static(idempotency::REQUEST_ID_HEADER);
    Router::new()
        .route("/v1/products", post(routes::products::create_product))
        .route(
            "/v1/products/{id}",
            get(routes::products::get_product).patch(routes::products::update::update_product),
        )
        .route("/v1/inventory/adjustments", post(routes::inventory::adjust))
        .route("/v1/inventory/{sku}", get(routes::inventory::get_inventory))
        .route(
            "/v1/orders",
            post(routes::orders::place_order).get(routes::orders::list_orders),
        )
        .route("/v1/orders/{id}", get(routes::orders::get_order))
        .route("/v1/orders/{id}/cancel", post(routes::orders::cancel_order))
        .route("/v1/orders/{id}/return", post(routes::orders::return_order))
        .route("/v1/webhooks/carrier", post(routes::webhooks::carrier))
        .route("/v1/ledger/accounts/{id}", get(routes::books::account))
        .route("/v1/audit", get(routes::books::audit))
        .route("/v1/dead-letters", get(routes::dead_letters::list))
        .route(
            "/v1/dead-letters/{id}/retry",
            post(routes::dead_letters::retry),
        )
        .route(
            "/v1/dead-letters/{id}/discard",
            post(routes::dead_letters::discard),
        )
        .route("/livez", get(routes::health::livez))
        .route("/readyz", get(routes::health::readyz))
        .route("/metrics", get(metrics::render))
        .merge(openapi::swagger_ui())
        .fallback(|| async { ApiError::NotFound("route") })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .route_layer(axum::middleware::from_fn(metrics::track))
        .with_state(state)
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(TraceLayer::new_for_http())
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
}

/// Health and metrics alone, for processes that run only the relay or workers: a load balancer
/// must not send them requests, but an orchestrator must be able to probe and scrape them.
pub fn operations_router(state: AppState) -> Router {
    Router::new()
        .route("/livez", get(routes::health::livez))
        .route("/readyz", get(routes::health::readyz))
        .route("/metrics", get(metrics::render))
        .fallback(|| async { ApiError::NotFound("route") })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(state)
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then finishes in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
