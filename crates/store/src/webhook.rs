//! Applying a verified carrier webhook: the shipment left (the reserved units leave stock) or
//! arrived. Deliveries are deduplicated by the carrier's delivery id in the same transaction
//! as the change, so the same webhook delivered three times changes the order once.

use chrono::{DateTime, Utc};
use serde_json::json;
use tally_domain::checkout::Saga;
use tally_domain::clock::Clock;
use tally_domain::event::EventDraft;
use tally_domain::ids::{OrderId, TenantId};
use tally_domain::order::OrderStatus;

use crate::audit::{Actor, Cause, Change};
use crate::effect::{EffectOutcome, Once, OrderChange, PreparedEffect};
use crate::log::{Causes, envelope};
use crate::{MovementKind, Store, StoreError};

pub use tally_domain::order::ShipmentUpdate;

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

/// The webhooks' source in the table of deliveries.
const CARRIER: &str = "carrier";

/// Applies one delivery of a carrier webhook in one transaction. The change is made from the
/// order as last committed, before the store's writer is taken (on SQLite, one of many changes
/// run in a single hold of it); if the order moved on meanwhile, it is made again on the order
/// locked first.
pub async fn apply_shipment_update(
    store: &dyn Store,
    tenant: TenantId,
    order: OrderId,
    update: ShipmentUpdate,
    delivery_id: &str,
    clock: &dyn Clock,
) -> Result<WebhookOutcome, StoreError> {
    let webhook = Webhook {
        tenant,
        order,
        update,
        delivery_id,
        now: clock.now(),
        clock,
    };
    let (from, ..) = update.transition();
    if let Some(record) = store.order(tenant, order).await?
        && record.status == from.as_str()
    {
        let effect = PreparedEffect {
            once: Once::Webhook {
                source: CARRIER,
                delivery: delivery_id.to_owned(),
            },
            settles: None,
            change: webhook.change(store.log_partitions(), from, &record.saga),
        };
        match store.write_effect(effect).await? {
            EffectOutcome::Written => return Ok(WebhookOutcome::Applied),
            EffectOutcome::AlreadyApplied => return Ok(WebhookOutcome::AlreadyApplied),
            // A webhook moves no reservation; either way it is applied on the order locked.
            EffectOutcome::OrderChanged | EffectOutcome::StockTaken => {}
        }
    }
    webhook.apply_locked(store).await
}

/// One delivery of a carrier webhook about one order.
#[derive(Debug, Clone, Copy)]
struct Webhook<'a> {
    tenant: TenantId,
    order: OrderId,
    update: ShipmentUpdate,
    delivery_id: &'a str,
    now: DateTime<Utc>,
    /// Mints the ids of the event and the audit record.
    clock: &'a dyn Clock,
}

impl Webhook<'_> {
    /// Applies the webhook on the order locked first, deciding from what it finds there.
    async fn apply_locked(self, store: &dyn Store) -> Result<WebhookOutcome, StoreError> {
        let mut tx = store.begin().await?;
        if !tx
            .insert_webhook_delivery(CARRIER, self.delivery_id, self.now)
            .await?
        {
            tx.rollback().await?;
            return Ok(WebhookOutcome::AlreadyApplied);
        }
        let Some(state) = tx.lock_order(self.tenant, self.order).await? else {
            tx.rollback().await?;
            return Ok(WebhookOutcome::UnknownOrder);
        };
        let status =
            OrderStatus::parse(&state.record.status).map_err(|e| StoreError::Corrupt(e.reason))?;
        let (from, ..) = self.update.transition();
        if status != from {
            return match status.lifecycle_rank() {
                // Not at the step the update follows yet: refuse without recording the
                // delivery, so the carrier's retry is applied once the saga gets there.
                Some(rank) if Some(rank) < from.lifecycle_rank() => {
                    tx.rollback().await?;
                    Ok(WebhookOutcome::NotReady)
                }
                // Past it (a repeat under another id) or cancelled: acknowledged, nothing
                // changes.
                _ => {
                    tx.commit().await?;
                    Ok(WebhookOutcome::AlreadyApplied)
                }
            };
        }
        self.change(store.log_partitions(), status, &state.saga)
            .write(tx.as_mut())
            .await?;
        tx.commit().await?;
        Ok(WebhookOutcome::Applied)
    }

    /// The webhook's change to an order at `status`, the status it follows, whose saga is
    /// `before`: the new status, the audit record, the event and, when the shipment left, the
    /// reserved units taken out of stock.
    fn change(self, partitions: u32, status: OrderStatus, before: &Saga) -> OrderChange {
        let Webhook {
            tenant,
            order,
            update,
            delivery_id,
            now,
            clock,
        } = self;
        let mut saga = before.clone();
        let (_, to, event_type) = update.transition();
        // The reserved units leave the warehouse.
        let stock = if update == ShipmentUpdate::Shipped {
            crate::stock::take_hold(&mut saga).map_or_else(Vec::new, |reservations| {
                crate::stock::movements(order, &reservations, MovementKind::Shipped, now)
            })
        } else {
            Vec::new()
        };
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
        let id = tally_domain::ids::EventId::from_uuid(clock.fresh_id());
        let event = envelope(id, draft, tenant, partitions, now, &causes);
        let change = Change {
            entity_type: "order",
            entity_id: order.to_string(),
            action: event.event_type,
            before: Some(json!({"status": status.as_str()})),
            after: Some(json!({"status": to.as_str(), "saga": saga})),
        };
        let cause = Cause {
            idempotency_key: Some(delivery_id.to_owned()),
            causation_id: causes.causation_id.clone(),
            ..Cause::default()
        };
        let audit = crate::audit::record(
            clock.fresh_id(),
            tenant,
            now,
            Actor::Partner(CARRIER.to_owned()),
            change,
            cause,
        );
        OrderChange {
            tenant,
            order,
            expected_status: status.as_str().to_owned(),
            expected_saga: before.clone(),
            status: to.as_str().to_owned(),
            saga,
            at: now,
            journal: Vec::new(),
            audit,
            events: vec![event],
            stock,
        }
    }
}
