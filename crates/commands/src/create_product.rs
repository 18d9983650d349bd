//! Create a product with its variants and prices (`POST /v1/products`).

use async_trait::async_trait;
use tally_domain::catalog::{NewProduct, Sku};
use tally_domain::ids::ProductId;
use tally_store::Tx;

use crate::{At, Audited, CommandError, Decide, Decision, Outcome, Refusal};

#[derive(Debug, Clone)]
pub struct CreateProduct(pub NewProduct);

#[async_trait]
impl Decide for CreateProduct {
    async fn decide(self, tx: &mut dyn Tx, at: At<'_>) -> Result<Decision, CommandError> {
        let (tenant, now) = (at.tenant, at.now);
        let skus: Vec<Sku> = self.0.variants.iter().map(|v| v.sku.clone()).collect();
        let taken = tx.existing_skus(tenant, &skus).await?;
        if !taken.is_empty() {
            return Err(CommandError::Refused(Refusal::SkusTaken(taken)));
        }
        let (product, event) = self
            .0
            .create(ProductId::from_uuid(at.clock.fresh_id()), now);
        match tx.insert_product(tenant, &product).await {
            Err(e) if e.is_unique_violation() => {
                // Another transaction took one of the SKUs between the check and the insert.
                return Err(CommandError::Refused(Refusal::SkusTaken(skus)));
            }
            other => other?,
        }
        Ok(Decision {
            audit: Audited {
                entity_type: "product",
                entity_id: product.id.to_string(),
                action: "created",
            },
            outcome: Outcome::ProductCreated(product),
            events: vec![event],
        })
    }
}
