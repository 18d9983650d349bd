//! Place an order at the catalog's prices (`POST /v1/orders`); the checkout saga takes it on.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tally_domain::ids::{OrderId, TenantId};
use tally_domain::order::NewOrder;
use tally_store::Tx;

use crate::{Audited, CommandError, Decide, Decision, Outcome, Refusal};

#[derive(Debug, Clone)]
pub struct PlaceOrder(pub NewOrder);

#[async_trait]
impl Decide for PlaceOrder {
    async fn decide(
        self,
        tx: &mut dyn Tx,
        tenant: TenantId,
        now: DateTime<Utc>,
    ) -> Result<Decision, CommandError> {
        let prices = tx.catalog_prices(tenant, &self.0.skus()).await?;
        let (order, event) = self
            .0
            .place(OrderId::generate(), now, &prices)
            .map_err(|refused| CommandError::Refused(Refusal::Placement(refused)))?;
        tx.insert_order(tenant, &order).await?;
        Ok(Decision {
            audit: Audited {
                entity_type: "order",
                entity_id: order.id.to_string(),
                action: "placed",
            },
            outcome: Outcome::OrderPlaced(Box::new(order)),
            events: vec![event],
        })
    }
}
