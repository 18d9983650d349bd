//! `POST /v1/webhooks/carrier`: shipment updates from the carrier, verified by an HMAC over
//! the raw body with a timestamp window, and applied once per delivery id.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use tally_domain::ids::{OrderId, TenantId};
use tally_store::webhook::{ShipmentUpdate, WebhookOutcome, apply_shipment_update};
use tally_wire::carrier_webhook::{
    DELIVERED, ID_HEADER, SHIPPED, SIGNATURE_HEADER, TIMESTAMP_HEADER, WebhookEvent,
};
use tally_wire::signature;

use crate::AppState;
use crate::problem::{ApiError, Problem};

/// How far a webhook's signed timestamp may be from our clock, either way. Five minutes
/// tolerates clock skew and retries while making a captured request useless soon after.
pub const WEBHOOK_WINDOW_SECONDS: i64 = 300;

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// Apply a carrier's shipment update.
#[utoipa::path(
    post, path = "/v1/webhooks/carrier", tag = "webhooks",
    request_body(content = Object, content_type = "application/json", description = "{delivery_id, type: shipment.shipped|shipment.delivered, shipment_id, order_id, tracking_number, occurred_at}"),
    params(
        ("Tally-Webhook-Id" = String, Header, description = "Delivery id; repeats are applied once"),
        ("Tally-Webhook-Timestamp" = i64, Header, description = "Unix seconds, signed"),
        ("Tally-Webhook-Signature" = String, Header, description = "v1=hex(HMAC-SHA256(secret, timestamp + '.' + body))"),
    ),
    responses(
        (status = 200, description = "Applied, or already applied"),
        (status = 400, body = Problem), (status = 401, body = Problem, description = "Bad or missing signature"),
        (status = 409, body = Problem, description = "The order is not ready for this update; deliver again later"),
        (status = 422, body = Problem),
    )
)]
pub async fn carrier(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let now = state.inner.clock.now();
    signature::verify(
        &state.inner.config.carrier_webhook_secret,
        header(&headers, TIMESTAMP_HEADER),
        header(&headers, SIGNATURE_HEADER),
        &body,
        now.timestamp(),
        WEBHOOK_WINDOW_SECONDS,
    )
    .map_err(|e| ApiError::WebhookRejected(e.to_string()))?;
    let webhook: WebhookEvent = serde_json::from_slice(&body).map_err(|e| {
        ApiError::MalformedJson(format!("the webhook is not a shipment update: {e}"))
    })?;
    let update = match webhook.event_type.as_str() {
        SHIPPED => ShipmentUpdate::Shipped,
        DELIVERED => ShipmentUpdate::Delivered,
        other => {
            return Err(ApiError::invalid(
                "/type",
                format!("unknown shipment update '{other}'"),
            ));
        }
    };
    let (tenant, order) = webhook
        .order_id
        .split_once('/')
        .and_then(|(t, o)| Some((t.parse::<TenantId>().ok()?, o.parse::<OrderId>().ok()?)))
        .ok_or_else(|| ApiError::invalid("/order_id", "not an order reference Tally gave"))?;
    let delivery_id = match header(&headers, ID_HEADER) {
        "" => webhook.delivery_id.as_str(),
        id => id,
    };
    let outcome = apply_shipment_update(
        state.inner.store.as_ref(),
        tenant,
        order,
        update,
        delivery_id,
        state.inner.clock.as_ref(),
    )
    .await?;
    match outcome {
        WebhookOutcome::Applied | WebhookOutcome::AlreadyApplied => Ok(StatusCode::OK),
        WebhookOutcome::NotReady => Err(ApiError::NotReady),
        WebhookOutcome::UnknownOrder => Err(ApiError::invalid("/order_id", "no such order")),
    }
}
