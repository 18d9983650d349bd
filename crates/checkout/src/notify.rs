//! Customer notifications: one per significant order event, sent once. The notification's
//! idempotency key derives from the event, so a redelivered event never notifies twice.

use async_trait::async_trait;
use tally_dispatch::{Delivery, EffectError, Handler};
use tally_domain::event::EventType;
use tally_store::LogEvent;

use crate::partners::Partners;
use crate::saga::{order_of, partner_reference};

/// The consumer group that notifies customers.
pub const NOTIFICATIONS_GROUP: &str = "notifications";

#[derive(Debug)]
pub struct Notifications {
    partners: Partners,
}

impl Notifications {
    pub fn new(partners: Partners) -> Self {
        Self { partners }
    }
}

/// The template of the message for an event, for the events a customer hears about.
fn template(event_type: &str) -> Option<&'static str> {
    match EventType::parse(event_type)? {
        EventType::OrderPaymentCaptured => Some("order_confirmed"),
        EventType::OrderShipped => Some("order_shipped"),
        EventType::OrderDelivered => Some("order_delivered"),
        EventType::OrderCancelled => Some("order_cancelled"),
        EventType::OrderRefunded => Some("order_refunded"),
        EventType::ProductCreated
        | EventType::InventoryAdjusted
        | EventType::OrderPlaced
        | EventType::OrderStockReserved
        | EventType::OrderPaymentAuthorized
        | EventType::OrderFulfillmentRequested
        | EventType::OrderCompleted
        | EventType::OrderReturned
        | EventType::OrderCancellationRequested => None,
    }
}

#[async_trait]
impl Handler for Notifications {
    fn group(&self) -> &'static str {
        NOTIFICATIONS_GROUP
    }

    fn wants(&self, event_type: &str) -> bool {
        template(event_type).is_some()
    }

    async fn handle(&self, event: &LogEvent, delivery: &Delivery) -> Result<(), EffectError> {
        let order = order_of(event)?;
        let Some(template) = template(&event.event_type) else {
            return Ok(());
        };
        let record = delivery
            .store()
            .order(event.tenant_id, order)
            .await?
            .ok_or_else(|| EffectError::Permanent(format!("order {order} does not exist")))?;
        if let Some(to) = &record.customer_email {
            let key = delivery.idempotency_key("notify");
            self.partners
                .notify(&key, &partner_reference(event, order), template, to)
                .await?;
        }
        delivery.applied().await
    }
}
