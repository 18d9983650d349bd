//! Applying a verified carrier webhook: the shipment left (the reserved units leave stock) or
//! arrived. Deliveries are deduplicated by the carrier's delivery id in the same transaction
//! as the change, so the same webhook delivered three times changes the order once.

use chrono::{DateTime, Utc};
use serde_json::json;
use tally_domain::event::{EventDraft, EventType};
use tally_domain::ids::{OrderId, TenantId};
use tally_domain::order::OrderStatus;

use crate::audit::{Actor, Cause, Change};
use crate::log::{Causes, envelope};
use crate::{MovementKind, Store, StoreError};

/// What the carrier reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShipmentUpdate {
    Shipped,
    Delivered,
}

/// What became of a webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookOutcome {
    /// The order changed.
    Applied,
    /// Already applied, or nothing left to change: acknowledged without effect.
    AlreadyApplied,
    /// The order is not at the step the webhook follows yet (the saga has not recorded the
    /// shipment request): the carrier should deliver it again later.
    NotReady,
    UnknownOrder,
}

/// Where a status stands on the forward path of an order; `None` for a cancelled order, which
/// leaves the path.
const fn lifecycle_rank(status: OrderStatus) -> Option<u8> {
    match status {
        OrderStatus::Placed => Some(0),
        OrderStatus::Reserved => Some(1),
        OrderStatus::Authorized => Some(2),
        OrderStatus::Captured => Some(3),
        OrderStatus::FulfillmentRequested => Some(4),
        OrderStatus::Shipped => Some(5),
        OrderStatus::Delivered => Some(6),
        OrderStatus::Completed => Some(7),
        OrderStatus::Returned => Some(8),
        OrderStatus::Refunded => Some(9),
        OrderStatus::Cancelled => None,
    }
}

/// Which status a webhook moves an order from and to.
const fn transition(update: ShipmentUpdate) -> (OrderStatus, OrderStatus, EventType) {
    match update {
        ShipmentUpdate::Shipped => (
            OrderStatus::FulfillmentRequested,
            OrderStatus::Shipped,
            EventType::OrderShipped,
        ),
        ShipmentUpdate::Delivered => (
            OrderStatus::Shipped,
            OrderStatus::Delivered,
            EventType::OrderDelivered,
        ),
    }
}

/// Applies one delivery of a carrier webhook in one transaction.
pub async fn apply_shipment_update(
    store: &dyn Store,
    tenant: TenantId,
    order: OrderId,
    update: ShipmentUpdate,
    delivery_id: &str,
    now: DateTime<Utc>,
) -> Result<WebhookOutcome, StoreError> {
    let mut tx = store.begin().await?;
    if !tx
        .insert_webhook_delivery("carrier", delivery_id, now)
        .await?
    {
        tx.rollback().await?;
        return Ok(WebhookOutcome::AlreadyApplied);
    }
    let Some(mut state) = tx.lock_order(tenant, order).await? else {
        tx.rollback().await?;
        return Ok(WebhookOutcome::UnknownOrder);
    };
    let status =
        OrderStatus::parse(&state.record.status).map_err(|e| StoreError::Corrupt(e.reason))?;
    let (from, to, event_type) = transition(update);
    if status != from {
        return match lifecycle_rank(status) {
            // Not at the step the update follows yet: refuse without recording the delivery, so
            // the carrier's retry is applied once the saga gets there.
            Some(rank) if Some(rank) < lifecycle_rank(from) => {
                tx.rollback().await?;
                Ok(WebhookOutcome::NotReady)
            }
            // Past it (a repeat under another id) or cancelled: acknowledged, nothing changes.
            _ => {
                tx.commit().await?;
                Ok(WebhookOutcome::AlreadyApplied)
            }
        };
    }
    // The reserved units leave the warehouse. Their stock rows are written last, so that a
    // busy SKU's row stays locked for its own update and the commit only.
    let shipped = if update == ShipmentUpdate::Shipped {
        crate::stock::take_hold(&mut state.saga)
    } else {
        None
    };
    tx.update_order(tenant, order, to.as_str(), &state.saga, now)
        .await?;
    let key = order.to_string();
    let draft = EventDraft::new(
        event_type,
        key.clone(),
        key,
        &json!({"order_id": order, "delivery_id": delivery_id}),
    );
    let causes = Causes {
        correlation_id: None,
        causation_id: Some(format!("webhook:{delivery_id}")),
        traceparent: None,
    };
    let event = envelope(draft, tenant, store.log_partitions(), now, &causes);
    let change = Change {
        entity_type: "order",
        entity_id: order.to_string(),
        action: event.event_type,
        before: Some(json!({"status": status.as_str()})),
        after: Some(json!({"status": to.as_str(), "saga": state.saga})),
    };
    let cause = Cause {
        idempotency_key: Some(delivery_id.to_owned()),
        causation_id: causes.causation_id.clone(),
        ..Cause::default()
    };
    let audit = crate::audit::record(
        tenant,
        now,
        Actor::Partner("carrier".to_owned()),
        change,
        cause,
    );
    tx.insert_audit(&audit).await?;
    tx.append_events(std::slice::from_ref(&event)).await?;
    if let Some(reservations) = shipped {
        crate::stock::move_reservations(
            tx.as_mut(),
            tenant,
            order,
            &reservations,
            MovementKind::Shipped,
            now,
        )
        .await?;
    }
    tx.commit().await?;
    Ok(WebhookOutcome::Applied)
}
