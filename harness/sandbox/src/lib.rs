//! Partner sandboxes: a payment provider, a carrier and a notification provider served by one
//! real HTTP server, with fault knobs, recording every effect it received under the caller's
//! idempotency key.
//!
//! Tally's workers call the sandbox exactly as they would call real partners, so a test can
//! inject errors, lost responses, timeouts, latency and duplicate webhooks, and then prove from
//! [`Sandbox::effects`] (or `GET /sandbox/effects` from another process) that each order was
//! authorized, captured and notified exactly once.
//!
//! Every request goes through the same steps ([`exchange`]): its `Idempotency-Key` and body are
//! parsed; latency is added; an error may be injected before anything happens (nothing is
//! recorded); then, under one lock, the key is looked up and either its stored response is
//! replayed or the effect is applied and stored; finally the response may be replaced by a 500
//! or delayed past the caller's timeout, while the effect stays applied. All randomness comes
//! from [`SandboxConfig::seed`].
//!
//! # Documented test rules
//!
//! - An authorization whose `amount_minor % 100 == 13` is declined: 402
//!   `{"status":"declined","reason":"card_declined"}` ([`payment::DECLINE_REMAINDER`]).
//! - A capture of an authorization whose `amount_minor % 100 == 17` fails: 402
//!   `{"status":"failed","reason":"capture_failed"}` ([`payment::CAPTURE_FAILURE_REMAINDER`]).
//!
//! Both are recorded as effects, with `response_status` 402.
//!
//! # Layout
//!
//! - [`exchange`]: the shared request flow: the `Idempotency-Key` extractor, fingerprints,
//!   stored responses, problem documents, and the state behind the one lock.
//! - [`effects`]: [`Effect`], [`EffectKind`] and the store keyed by idempotency key.
//! - [`faults`]: latency, errors before and after the effect, timeouts, from the seeded RNG.
//! - [`hold`]: a response held after its effect until a test releases it.
//! - [`payment`]: authorizations, captures, voids and refunds.
//! - [`carrier`]: shipments, which schedule their webhooks.
//! - [`notification`]: push and e-mail notifications.
//! - [`webhooks`]: signed deliveries of carrier events, duplicated and retried.
//! - [`signature`]: signing and verifying webhooks (used by Tally's receiver too).

pub mod carrier;
pub mod effects;
pub mod exchange;
pub mod faults;
pub mod hold;
pub mod notification;
pub mod payment;
pub use tally_wire::signature;
pub mod webhooks;

use std::net::SocketAddr;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

pub use crate::effects::{Effect, EffectKind};
use crate::exchange::Problem;

/// The delay after which a timed-out response is finally sent. Longer than the partner timeouts
/// Tally's workers are expected to use, so that the caller gives up first.
pub const TIMEOUT_DELAY_DEFAULT: Duration = Duration::from_secs(5);
/// The delay from a shipment's creation to its `shipment.shipped` webhook, and from there to
/// `shipment.delivered`: short, so that tests see a whole shipment within a second.
pub const SHIP_AFTER_DEFAULT: Duration = Duration::from_millis(50);
pub const DELIVER_AFTER_DEFAULT: Duration = Duration::from_millis(50);
/// The secret webhooks are signed with unless configured; Tally's sandbox profile uses the same.
pub const WEBHOOK_SECRET_DEFAULT: &str = "whsec_tally_sandbox";
/// The largest injected latency, in milliseconds. A minute is already far past any partner
/// timeout; more is a typo that would make a test hang.
pub const LATENCY_MS_MAX: u64 = 60_000;

/// The sandbox's knobs. The default injects no faults.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Probability that a request fails with 500 or 503 before its effect is applied: nothing
    /// is recorded and a retry applies it.
    pub error_rate: f64,
    /// Probability that the effect is applied but the response is a 500. The caller cannot
    /// tell this from `error_rate`; a retry with the same key must get the stored response.
    pub error_after_effect_rate: f64,
    /// Probability that the effect is applied and the response held back for `timeout_delay`,
    /// so that the caller times out.
    pub timeout_rate: f64,
    pub timeout_delay: Duration,
    /// Extra latency per request in milliseconds, drawn uniformly; an empty range adds none.
    pub latency: Range<u64>,
    /// How many times each webhook is delivered, every copy with the same delivery id.
    pub webhook_duplicates: u32,
    /// Where carrier webhooks go (Tally's `POST /v1/webhooks/carrier`); `None` sends none.
    /// [`Sandbox::set_webhook_url`] changes it on a running sandbox.
    pub webhook_url: Option<String>,
    pub webhook_secret: String,
    /// The seed of every random choice: faults, latency and ids.
    pub seed: u64,
    pub ship_after: Duration,
    pub deliver_after: Duration,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            error_rate: 0.0,
            error_after_effect_rate: 0.0,
            timeout_rate: 0.0,
            timeout_delay: TIMEOUT_DELAY_DEFAULT,
            latency: 0..1,
            webhook_duplicates: 1,
            webhook_url: None,
            webhook_secret: WEBHOOK_SECRET_DEFAULT.to_owned(),
            seed: 0,
            ship_after: SHIP_AFTER_DEFAULT,
            deliver_after: DELIVER_AFTER_DEFAULT,
        }
    }
}

impl SandboxConfig {
    /// Refuses knobs that would panic or hang later, so that a typo fails at start.
    fn check(&self) -> Result<(), String> {
        let rates = [
            ("error_rate", self.error_rate),
            ("error_after_effect_rate", self.error_after_effect_rate),
            ("timeout_rate", self.timeout_rate),
        ];
        for (name, rate) in rates {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("{name} must be within 0 and 1, not {rate}"));
            }
        }
        if self.latency.start > self.latency.end || self.latency.end > LATENCY_MS_MAX + 1 {
            return Err(format!(
                "latency must be an ascending range of at most {LATENCY_MS_MAX} ms, not {:?}",
                self.latency
            ));
        }
        if self.webhook_duplicates > webhooks::DUPLICATES_MAX {
            return Err(format!(
                "webhook_duplicates must be at most {}, not {}",
                webhooks::DUPLICATES_MAX,
                self.webhook_duplicates
            ));
        }
        Ok(())
    }
}

/// A running sandbox. Dropping it stops the server too, but only [`Sandbox::stop`] waits.
#[derive(Debug)]
pub struct Sandbox {
    pub address: SocketAddr,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
    _stop_on_drop: DropGuard,
}

/// What the handlers and webhook tasks share.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The effect store, the partners' records and the id generator, behind the one lock that
    /// makes check-and-apply atomic. Never held across an await.
    pub state: Mutex<exchange::State>,
    pub faults: faults::Faults,
    /// Responses tests asked to hold ([`Sandbox::hold_next`]).
    pub holds: hold::Holds,
    pub webhooks: webhooks::Settings,
    /// Webhook deliveries in flight, so that `stop` can wait for them.
    pub tasks: TaskTracker,
    /// Cancelled by `stop`: the server, delayed responses and webhook deliveries end.
    pub shutdown: CancellationToken,
}

/// Binds `listen` (port 0 picks a free port) and serves the sandbox.
pub async fn start(config: SandboxConfig, listen: SocketAddr) -> std::io::Result<Sandbox> {
    config
        .check()
        .map_err(|reason| std::io::Error::new(std::io::ErrorKind::InvalidInput, reason))?;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let address = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let shared = Arc::new(Shared {
        state: Mutex::new(exchange::State::new(config.seed)),
        faults: faults::Faults::new(&config),
        holds: hold::Holds::default(),
        webhooks: webhooks::Settings::new(&config)?,
        tasks: TaskTracker::new(),
        shutdown: shutdown.clone(),
    });
    let app = router(Arc::clone(&shared));
    let stopped = shutdown.clone();
    let server = tokio::spawn(async move {
        let serving = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stopped.cancelled().await });
        if let Err(error) = serving.await {
            tracing::error!(%error, "the sandbox's HTTP server stopped");
        }
    });
    Ok(Sandbox {
        address,
        shared,
        server,
        _stop_on_drop: shutdown.drop_guard(),
    })
}

impl Sandbox {
    /// Every effect applied so far, in the order they were applied.
    pub fn effects(&self) -> Vec<Effect> {
        lock(&self.shared.state).effects.list()
    }

    /// Holds the response of the next request that applies a new effect of `kind` until the
    /// returned [`hold::Held`] releases it, so a test can act while the call is in flight.
    pub fn hold_next(&self, kind: EffectKind) -> hold::Held {
        self.shared.holds.arm(kind)
    }

    /// Sends later webhooks to `url`: a sandbox can start before the Tally it calls back.
    pub fn set_webhook_url(&self, url: String) {
        *lock(&self.shared.webhooks.url) = Some(url);
    }

    /// Stops accepting requests, cuts short delayed responses and webhook retries, and waits for
    /// the server and every webhook task.
    pub async fn stop(self) {
        self.shared.shutdown.cancel();
        if let Err(error) = self.server.await {
            tracing::error!(%error, "the sandbox's HTTP server task failed");
        }
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/payments/authorizations", post(payment::authorize))
        .route(
            "/payments/authorizations/{id}/capture",
            post(payment::capture),
        )
        .route("/payments/authorizations/{id}/void", post(payment::void))
        .route("/payments/captures/{id}/refunds", post(payment::refund))
        .route("/carrier/shipments", post(carrier::create_shipment))
        .route("/notifications", post(notification::send))
        .route("/sandbox/effects", get(list_effects))
        .fallback(|| async { Problem::new(StatusCode::NOT_FOUND, "there is no such route") })
        .with_state(shared)
}

async fn list_effects(State(shared): State<Arc<Shared>>) -> Response {
    let effects = lock(&shared.state).effects.list();
    Json(effects).into_response()
}

/// Locks `mutex`, going on after a panic elsewhere: every critical section leaves its data
/// consistent before anything in it can panic, so the data is still sound.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Sleeps for `duration` unless `shutdown` comes first; true if the whole time passed.
pub(crate) async fn pause(duration: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(duration) => true,
        () = shutdown.cancelled() => false,
    }
}
