//! Take a delivered order's goods back (`POST /v1/orders/{id}/return`): restock them here; the
//! saga refunds the payment on the event.

use async_trait::async_trait;
use tally_domain::checkout::returnable;
use tally_domain::event::EventType;
use tally_domain::ids::OrderId;
use tally_domain::order::OrderStatus;
use tally_store::Tx;

use crate::{
    At, Audited, CommandError, Decide, Decision, Outcome, Refusal, order_event, status_of,
};

#[derive(Debug, Clone)]
pub struct ReturnOrder(pub OrderId);

#[async_trait]
impl Decide for ReturnOrder {
    async fn decide(self, tx: &mut dyn Tx, at: At<'_>) -> Result<Decision, CommandError> {
        let (tenant, now) = (at.tenant, at.now);
        let id = self.0;
        let state = tx
            .lock_order(tenant, id)
            .await?
            .ok_or(CommandError::Refused(Refusal::OrderNotFound))?;
        let status = status_of(&state)?;
        if !returnable(status) {
            return Err(CommandError::Refused(Refusal::NotReturnable {
                status: state.record.status,
            }));
        }
        tally_store::stock::restock(tx, tenant, id, &state.saga, now).await?;
        tx.update_order(tenant, id, OrderStatus::Returned.as_str(), &state.saga, now)
            .await?;
        let mut record = state.record;
        record.status = OrderStatus::Returned.as_str().to_owned();
        record.updated_at = now;
        Ok(Decision {
            audit: Audited {
                entity_type: "order",
                entity_id: id.to_string(),
                action: "changed",
            },
            outcome: Outcome::OrderChanged(Box::new(record)),
            events: vec![order_event(EventType::OrderReturned, id)],
        })
    }
}
