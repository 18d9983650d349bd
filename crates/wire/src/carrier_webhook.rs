//! The carrier's shipment webhooks: a signed JSON POST (see [`crate::signature`]) per shipment
//! update, deduplicated by the receiver on its delivery id.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The delivery's id: the same for every copy of one delivery.
pub const ID_HEADER: &str = "Tally-Webhook-Id";
pub const TIMESTAMP_HEADER: &str = "Tally-Webhook-Timestamp";
pub const SIGNATURE_HEADER: &str = "Tally-Webhook-Signature";
pub const SHIPPED: &str = "shipment.shipped";
pub const DELIVERED: &str = "shipment.delivered";

/// A carrier webhook's body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookEvent {
    pub delivery_id: String,
    /// [`SHIPPED`] or [`DELIVERED`].
    #[serde(rename = "type")]
    pub event_type: String,
    pub shipment_id: String,
    pub order_id: String,
    pub tracking_number: String,
    pub occurred_at: DateTime<Utc>,
}
