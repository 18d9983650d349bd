//! Place an order at the catalog's prices (`POST /v1/orders`); the checkout saga takes it on.

use async_trait::async_trait;
use tally_domain::ids::OrderId;
use tally_domain::order::NewOrder;
use tally_store::Tx;

use crate::{At, Audited, CommandError, Decide, Decision, Outcome, Refusal};

#[derive(Debug, Clone)]
pub struct PlaceOrder(pub NewOrder);

#[async_trait]
impl Decide for PlaceOrder {
    async fn decide(self, tx: &mut dyn Tx, at: At<'_>) -> Result<Decision, CommandError> {
        let (tenant, now) = (at.tenant, at.now);
        let prices = tx.catalog_prices(tenant, &self.0.skus()).await?;
        let (order, event) = self
            .0
            .place(OrderId::from_uuid(at.clock.fresh_id()), now, &prices)
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
