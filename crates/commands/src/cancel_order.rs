//! Ask for an order's cancellation (`POST /v1/orders/{id}/cancel`): the saga, which owns every
//! partner call of the order, cancels it at its next step and undoes what it did.

use async_trait::async_trait;
use tally_domain::checkout::cancellable;
use tally_domain::event::EventType;
use tally_domain::ids::OrderId;
use tally_store::Tx;

use crate::{
    At, Audited, CommandError, Decide, Decision, Outcome, Refusal, order_event, status_of,
};

#[derive(Debug, Clone)]
pub struct CancelOrder(pub OrderId);

#[async_trait]
impl Decide for CancelOrder {
    async fn decide(self, tx: &mut dyn Tx, at: At<'_>) -> Result<Decision, CommandError> {
        let (tenant, now) = (at.tenant, at.now);
        let id = self.0;
        let mut state = tx
            .lock_order(tenant, id)
            .await?
            .ok_or(CommandError::Refused(Refusal::OrderNotFound))?;
        let status = status_of(&state)?;
        if !cancellable(status) || state.saga.cancel_requested {
            return Err(CommandError::Refused(Refusal::NotCancellable {
                status: state.record.status,
            }));
        }
        state.saga.cancel_requested = true;
        tx.update_order(tenant, id, status.as_str(), &state.saga, now)
            .await?;
        state.record.saga = state.saga;
        state.record.updated_at = now;
        Ok(Decision {
            audit: Audited {
                entity_type: "order",
                entity_id: id.to_string(),
                action: "changed",
            },
            outcome: Outcome::OrderChanged(Box::new(state.record)),
            events: vec![order_event(EventType::OrderCancellationRequested, id)],
        })
    }
}
