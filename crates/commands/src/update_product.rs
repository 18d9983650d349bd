//! Rename a product or reprice its variants (`PATCH /v1/products/{id}`): the change the
//! multi-store sync fans out to child stores. A change that leaves the product as it was
//! writes nothing and emits no event.

use std::collections::BTreeMap;

use async_trait::async_trait;
use tally_domain::catalog::{ChangeRefused, Product, ProductChange, Sku, Variant};
use tally_domain::ids::ProductId;
use tally_domain::money::{Currency, Money};
use tally_domain::text::Text;
use tally_store::{ProductRecord, Tx};

use crate::{At, Audited, CommandError, Decide, Decision, Outcome, Refusal};

#[derive(Debug, Clone)]
pub struct UpdateProduct {
    pub id: ProductId,
    pub change: ProductChange,
}

#[async_trait]
impl Decide for UpdateProduct {
    async fn decide(self, tx: &mut dyn Tx, at: At<'_>) -> Result<Decision, CommandError> {
        let tenant = at.tenant;
        let record = tx
            .lock_product(tenant, self.id)
            .await?
            .ok_or(CommandError::Refused(Refusal::ProductNotFound))?;
        let (product, event) = self.change.apply(product_of(record)?).map_err(
            |ChangeRefused::NotVariants(skus)| CommandError::Refused(Refusal::NotVariantsOf(skus)),
        )?;
        if event.is_some() {
            tx.update_product(tenant, &product).await?;
        }
        Ok(Decision {
            audit: Audited {
                entity_type: "product",
                entity_id: product.id.to_string(),
                action: "updated",
            },
            outcome: Outcome::ProductUpdated(product),
            events: event.into_iter().collect(),
        })
    }
}

/// A stored product as the catalog's domain values; what does not parse is corrupt data.
fn product_of(record: ProductRecord) -> Result<Product, CommandError> {
    let corrupt = |what: &str, error: tally_domain::ParseError| {
        CommandError::corrupt(format!("product {}: {what}: {}", record.id, error.reason))
    };
    let name = Text::parse(&record.name).map_err(|e| corrupt("name", e))?;
    let mut variants = Vec::with_capacity(record.variants.len());
    for variant in &record.variants {
        let sku = Sku::parse(&variant.sku).map_err(|e| corrupt("sku", e))?;
        let mut prices = BTreeMap::new();
        for (code, minor) in &variant.prices {
            let currency = Currency::parse(code).map_err(|e| corrupt("currency", e))?;
            let money = Money::parse(*minor, currency).map_err(|e| corrupt("price", e))?;
            prices.insert(currency, money);
        }
        variants.push(Variant { sku, prices });
    }
    Ok(Product {
        id: record.id,
        name,
        variants,
        created_at: record.created_at,
    })
}
