//! Customer notifications: one per significant order event, sent once. The notification's
//! idempotency key derives from the event, so a redelivered event never notifies twice.

use async_trait::async_trait;
use tally_dispatch::{Delivery, EffectError, Handler};
use tally_domain::event::EventType;
use tally_domain::ids::{OrderId, TenantId};
use tally_store::LogEvent;

use crate::partners::Partners;
use crate::saga::{order_of, partner_reference};

/// The consumer group that notifies customers.
pub const NOTIFICATIONS_GROUP: &str = "notifications";

/// Orders whose e-mail address is kept at most. A settled order is notified three times
/// (confirmed, shipped, delivered) within about a second of its first notification, so a few
/// seconds' worth of orders at full load is what spares the later two reads; an order that fell
/// out is read again.
const EMAILS_CACHED_MAX: u64 = 16_384;

#[derive(Debug)]
pub struct Notifications {
    partners: Partners,
    /// Each recent order's e-mail address (`None`: it has none). An order's address never
    /// changes once placed, so what was read once stays right; the order itself is read only to
    /// learn it.
    emails: moka::sync::Cache<(TenantId, OrderId), Option<String>>,
}

impl Notifications {
    pub fn new(partners: Partners) -> Self {
        Self {
            partners,
            emails: moka::sync::Cache::new(EMAILS_CACHED_MAX),
        }
    }

    /// The e-mail address of `order`, read from the store the first time it is asked for.
    async fn email(
        &self,
        event: &LogEvent,
        order: OrderId,
        delivery: &Delivery,
    ) -> Result<Option<String>, EffectError> {
        let key = (event.tenant_id, order);
        if let Some(email) = self.emails.get(&key) {
            return Ok(email);
        }
        let record = delivery
            .store()
            .order(event.tenant_id, order)
            .await?
            .ok_or_else(|| EffectError::Permanent(format!("order {order} does not exist")))?;
        self.emails.insert(key, record.customer_email.clone());
        Ok(record.customer_email)
    }
}

/// The template of the message for an event, for the events a customer hears about.
fn template(event_type: &str) -> Option<&'static str> {
    EventType::parse(event_type)?.customer_template()
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
        if let Some(to) = self.email(event, order, delivery).await? {
            let key = delivery.idempotency_key("notify");
            self.partners
                .notify(&key, &partner_reference(event, order), template, &to)
                .await?;
        }
        delivery.applied().await
    }
}
