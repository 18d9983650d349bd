//! Receive or remove stock of a SKU at a location (`POST /v1/inventory/adjustments`).

use async_trait::async_trait;
use tally_domain::inventory::Adjustment;
use tally_store::{MovementKind, StockMovement, Tx};

use crate::{At, Audited, CommandError, Decide, Decision, Outcome, Refusal};

#[derive(Debug, Clone)]
pub struct AdjustStock(pub Adjustment);

#[async_trait]
impl Decide for AdjustStock {
    async fn decide(self, tx: &mut dyn Tx, at: At<'_>) -> Result<Decision, CommandError> {
        let (tenant, now) = (at.tenant, at.now);
        let adjustment = self.0;
        let before = tx
            .lock_stock_level(tenant, &adjustment.sku, &adjustment.location, now)
            .await?
            .ok_or_else(|| CommandError::Refused(Refusal::UnknownSku(adjustment.sku.clone())))?;
        let (after, event) = adjustment.apply(before).map_err(|refused| {
            CommandError::Refused(Refusal::InsufficientStock {
                available: refused.available,
            })
        })?;
        let delta = adjustment.delta.get();
        let movement = StockMovement {
            sku: adjustment.sku.as_str().to_owned(),
            location: adjustment.location.as_str().to_owned(),
            kind: if delta > 0 {
                MovementKind::Received
            } else {
                MovementKind::Removed
            },
            quantity: delta.abs(),
            order_id: None,
            at: now,
        };
        // The row is locked and the change was checked against it: the store's own guard can
        // only agree.
        let change = movement.kind.delta(movement.quantity);
        if !tx.shift_stock(tenant, change, &movement).await? {
            return Err(CommandError::corrupt(format!(
                "stock row {}@{} refused a checked adjustment",
                adjustment.sku, adjustment.location
            )));
        }
        Ok(Decision {
            audit: Audited {
                entity_type: "stock",
                entity_id: format!("{}@{}", adjustment.sku, adjustment.location),
                action: "adjusted",
            },
            outcome: Outcome::StockAdjusted {
                sku: adjustment.sku,
                location: adjustment.location,
                level: after,
            },
            events: vec![event],
        })
    }
}
