//! Carrier webhooks: after a shipment is created, `shipment.shipped` follows after
//! `ship_after`, then `shipment.delivered` after `deliver_after`.
//!
//! Each event is a signed JSON POST ([`crate::signature`]) sent `webhook_duplicates` times with
//! the same delivery id and body, as real carriers do when they are unsure a delivery arrived;
//! the receiver deduplicates by the `Tally-Webhook-Id` header. Each copy is retried with
//! doubling delays until the receiver answers 2xx, for up to [`RETRY_WINDOW`], as real
//! carriers do: a receiver that is down, or not ready for the update yet (it answers 409 until
//! it has recorded the shipment), still gets it. Each
//! attempt is signed afresh, so a late retry still falls inside the receiver's time window. The
//! events of one shipment are delivered in order: `shipment.delivered` waits for every copy of
//! `shipment.shipped`. Webhooks are not effects: the sandbox records what it was asked to do,
//! not what it told Tally.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::header;
use chrono::Utc;

use crate::{SandboxConfig, Shared, lock, pause, signature};

pub use tally_wire::carrier_webhook::{
    DELIVERED, ID_HEADER, SHIPPED, SIGNATURE_HEADER, TIMESTAMP_HEADER, WebhookEvent,
};
/// How long a copy of a webhook is retried before the carrier gives up on it. Carriers retry
/// for minutes to hours; a receiver can be down for a deploy, or a saga held up behind a
/// backlog or a crash can record the shipment long after the carrier created it (its updates
/// are answered 409 until then). Thirty seconds, the first setting here, lost updates in a
/// chaos run whose workers were killed every few seconds.
pub const RETRY_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Attempts per copy at most, whatever the window: a bound on the loop.
pub const ATTEMPTS_MAX: u32 = 1_000;
/// The delay before the first retry; it doubles on each retry up to [`RETRY_DELAY_MAX`].
pub const RETRY_DELAY_MIN: Duration = Duration::from_millis(100);
/// The longest delay between retries: short enough that a receiver that comes back gets the
/// update within this long.
pub const RETRY_DELAY_MAX: Duration = Duration::from_secs(2);
/// How long one attempt may take before it counts as failed: a receiver only verifies,
/// deduplicates and stores.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// Copies of each webhook at most: enough to test deduplication under any realistic storm.
pub const DUPLICATES_MAX: u32 = 100;

/// How webhooks are sent.
#[derive(Debug)]
pub(crate) struct Settings {
    /// Read when each event is sent, so that it can be set after the sandbox started.
    pub url: Mutex<Option<String>>,
    secret: String,
    duplicates: u32,
    ship_after: Duration,
    deliver_after: Duration,
    http: reqwest::Client,
}

impl Settings {
    pub fn new(config: &SandboxConfig) -> std::io::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(ATTEMPT_TIMEOUT)
            .build()
            .map_err(std::io::Error::other)?;
        Ok(Self {
            url: Mutex::new(config.webhook_url.clone()),
            secret: config.webhook_secret.clone(),
            duplicates: config.webhook_duplicates,
            ship_after: config.ship_after,
            deliver_after: config.deliver_after,
            http,
        })
    }
}

/// A created shipment's webhooks, with their delivery ids drawn in advance.
#[derive(Debug)]
pub(crate) struct ShipmentPlan {
    pub shipment_id: String,
    pub order_id: String,
    pub tracking_number: String,
    pub shipped_delivery_id: String,
    pub delivered_delivery_id: String,
}

impl ShipmentPlan {
    fn event(&self, event_type: &str, delivery_id: &str) -> WebhookEvent {
        WebhookEvent {
            delivery_id: delivery_id.to_owned(),
            event_type: event_type.to_owned(),
            shipment_id: self.shipment_id.clone(),
            order_id: self.order_id.clone(),
            tracking_number: self.tracking_number.clone(),
            occurred_at: Utc::now(),
        }
    }
}

/// Sends a shipment's webhooks in order; ends early at shutdown.
pub(crate) async fn run_shipment(shared: Arc<Shared>, plan: ShipmentPlan) {
    let settings = &shared.webhooks;
    if !pause(settings.ship_after, &shared.shutdown).await {
        return;
    }
    let shipped = plan.event(SHIPPED, &plan.shipped_delivery_id);
    if !send_event(&shared, &shipped).await {
        return;
    }
    if !pause(settings.deliver_after, &shared.shutdown).await {
        return;
    }
    let delivered = plan.event(DELIVERED, &plan.delivered_delivery_id);
    send_event(&shared, &delivered).await;
}

/// Sends every copy of `event`; false if shutdown cut it short.
async fn send_event(shared: &Shared, event: &WebhookEvent) -> bool {
    if lock(&shared.webhooks.url).is_none() {
        tracing::debug!(delivery_id = %event.delivery_id, "no webhook URL; the event is dropped");
        return true;
    }
    let body = match serde_json::to_vec(event) {
        Ok(body) => body,
        Err(error) => {
            tracing::error!(%error, "a webhook event could not be serialized");
            return true;
        }
    };
    for _ in 0..shared.webhooks.duplicates {
        if !send_copy(shared, &event.delivery_id, &body).await {
            return false;
        }
    }
    true
}

/// Sends one copy until the receiver answers 2xx or the retry window ends; false at shutdown.
/// Each attempt goes to the webhook URL as configured then, so that a receiver that moved (a
/// server restarted on another address) gets the retries of what was under way when it moved.
async fn send_copy(shared: &Shared, delivery_id: &str, body: &[u8]) -> bool {
    let settings = &shared.webhooks;
    let mut delay = RETRY_DELAY_MIN;
    let give_up_at = tokio::time::Instant::now() + RETRY_WINDOW;
    let mut url = String::new();
    for attempt in 1..=ATTEMPTS_MAX {
        let Some(current) = lock(&settings.url).clone() else {
            tracing::debug!(
                delivery_id,
                "the webhook URL was removed; the copy is dropped"
            );
            return true;
        };
        url = current;
        let timestamp = Utc::now().timestamp();
        let request = settings
            .http
            .post(&url)
            .header(header::CONTENT_TYPE, "application/json")
            .header(ID_HEADER, delivery_id)
            .header(TIMESTAMP_HEADER, timestamp.to_string())
            .header(
                SIGNATURE_HEADER,
                signature::sign(&settings.secret, timestamp, body),
            )
            .body(body.to_vec());
        let sent = tokio::select! {
            sent = request.send() => sent,
            () = shared.shutdown.cancelled() => return false,
        };
        match sent {
            Ok(response) if response.status().is_success() => return true,
            Ok(response) => {
                tracing::debug!(delivery_id, attempt, status = %response.status(), "webhook refused");
            }
            Err(error) => tracing::debug!(delivery_id, attempt, %error, "webhook not delivered"),
        }
        if tokio::time::Instant::now() + delay >= give_up_at {
            break;
        }
        if attempt < ATTEMPTS_MAX {
            if !pause(delay, &shared.shutdown).await {
                return false;
            }
            delay = (delay * 2).min(RETRY_DELAY_MAX);
        }
    }
    tracing::warn!(
        delivery_id,
        url,
        "gave up on a webhook after retrying it for {} s",
        RETRY_WINDOW.as_secs()
    );
    true
}
