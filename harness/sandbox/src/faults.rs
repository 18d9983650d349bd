//! Injected faults, drawn from the seeded RNG.
//!
//! Per request, in this order: latency; an error before the effect (500 or 503, nothing
//! applied); then, only for a request that applied a new effect, an error after the effect (500,
//! effect kept) or a timeout (the response held back for `timeout_delay`). A replay is never
//! failed after the fact: it is how the caller recovers from the faults after the effect.

use std::ops::Range;
use std::sync::Mutex;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

use crate::exchange::{Problem, Stored};
use crate::{SandboxConfig, lock, pause};

/// The fault knobs and the RNG they draw from.
#[derive(Debug)]
pub(crate) struct Faults {
    error_rate: f64,
    error_after_effect_rate: f64,
    timeout_rate: f64,
    timeout_delay: Duration,
    latency_ms: Range<u64>,
    /// Locked only to draw, never across a sleep.
    rng: Mutex<StdRng>,
}

/// What happens to a new effect's response.
enum After {
    Respond,
    Error,
    Timeout,
}

impl Faults {
    pub fn new(config: &SandboxConfig) -> Self {
        Self {
            error_rate: config.error_rate,
            error_after_effect_rate: config.error_after_effect_rate,
            timeout_rate: config.timeout_rate,
            timeout_delay: config.timeout_delay,
            latency_ms: config.latency.clone(),
            rng: Mutex::new(StdRng::seed_from_u64(config.seed)),
        }
    }

    /// Adds latency, then maybe fails the request: `Some` is the response to send instead of
    /// doing anything.
    pub async fn before_effect(&self, shutdown: &CancellationToken) -> Option<Problem> {
        let (latency_ms, error) = {
            let mut rng = lock(&self.rng);
            let latency_ms = if self.latency_ms.is_empty() {
                0
            } else {
                rng.random_range(self.latency_ms.clone())
            };
            let error = rng.random_bool(self.error_rate).then(|| {
                if rng.random_bool(0.5) {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                }
            });
            (latency_ms, error)
        };
        if latency_ms > 0 {
            pause(Duration::from_millis(latency_ms), shutdown).await;
        }
        error.map(|status| {
            Problem::new(
                status,
                "injected fault: the request failed before it was applied",
            )
        })
    }

    /// The response to a request that applied a new effect: `stored`, or a fault in its place.
    pub async fn after_effect(&self, stored: Stored, shutdown: &CancellationToken) -> Response {
        let after = {
            let mut rng = lock(&self.rng);
            if rng.random_bool(self.error_after_effect_rate) {
                After::Error
            } else if rng.random_bool(self.timeout_rate) {
                After::Timeout
            } else {
                After::Respond
            }
        };
        match after {
            After::Respond => stored.respond(false),
            After::Error => Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "injected fault: the request was applied but its response was lost",
            )
            .into_response(),
            After::Timeout => {
                // Cut short at shutdown, so that stopping does not wait out every delay.
                pause(self.timeout_delay, shutdown).await;
                stored.respond(false)
            }
        }
    }
}
