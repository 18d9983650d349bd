//! The catalog: products, their variants (one SKU each) and a price per currency. Order prices
//! always come from here, never from the client.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::ParseError;
use crate::event::{EventDraft, EventType};
use crate::ids::ProductId;
use crate::money::{Currency, Money};
use crate::text::Text;

/// Length limit of a SKU, in bytes; SKUs are keys of the log's partitions and of stock rows.
pub const SKU_BYTES_MAX: usize = 64;
/// How many variants one product may have; bounds the product's single transaction.
pub const VARIANTS_COUNT_MAX: usize = 100;
/// How many currencies one variant may be priced in.
pub const PRICES_COUNT_MAX: usize = 50;

/// A stock-keeping unit: 1 to [`SKU_BYTES_MAX`] ASCII letters, digits, `-`, `_` or `.`,
/// case-sensitive, unique per tenant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Sku(String);

impl Sku {
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        if raw.is_empty() || raw.len() > SKU_BYTES_MAX {
            return Err(ParseError::new(format!(
                "must be 1 to {SKU_BYTES_MAX} characters"
            )));
        }
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        if !raw.chars().all(allowed) {
            return Err(ParseError::new(
                "may contain only ASCII letters, digits, '-', '_' and '.'",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Sku {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One sellable variant of a product.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Variant {
    pub sku: Sku,
    /// Unit price per currency; a currency absent here cannot be ordered in.
    pub prices: BTreeMap<Currency, Money>,
}

/// A product as stored: created once, with its variants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Product {
    pub id: ProductId,
    pub name: Text,
    pub variants: Vec<Variant>,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// A validated request to create a product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewProduct {
    pub name: Text,
    pub variants: Vec<Variant>,
}

impl NewProduct {
    /// Checks the limits that span variants: at least one, at most [`VARIANTS_COUNT_MAX`], no SKU
    /// twice, every variant priced in at least one and at most [`PRICES_COUNT_MAX`] currencies.
    pub fn parse(name: Text, variants: Vec<Variant>) -> Result<Self, ParseError> {
        if variants.is_empty() || variants.len() > VARIANTS_COUNT_MAX {
            return Err(ParseError::new(format!(
                "a product needs 1 to {VARIANTS_COUNT_MAX} variants"
            )));
        }
        let mut seen = std::collections::BTreeSet::new();
        for variant in &variants {
            if !seen.insert(&variant.sku) {
                return Err(ParseError::new(format!(
                    "SKU '{}' appears more than once",
                    variant.sku
                )));
            }
            if variant.prices.is_empty() || variant.prices.len() > PRICES_COUNT_MAX {
                return Err(ParseError::new(format!(
                    "variant '{}' needs 1 to {PRICES_COUNT_MAX} prices",
                    variant.sku
                )));
            }
        }
        Ok(Self { name, variants })
    }

    /// Creating a product is always allowed once its SKUs are free; the store checks that.
    pub fn create(
        self,
        id: ProductId,
        now: chrono::DateTime<chrono::Utc>,
    ) -> (Product, EventDraft) {
        let product = Product {
            id,
            name: self.name,
            variants: self.variants,
            created_at: now,
        };
        let event = EventDraft::new(
            EventType::ProductCreated,
            id.to_string(),
            id.to_string(),
            &product,
        );
        (product, event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sku_accepts_codes_and_rejects_spaces() {
        assert!(Sku::parse("TSHIRT-RED-M").is_ok());
        assert!(Sku::parse("t shirt").is_err());
        assert!(Sku::parse("").is_err());
        assert!(Sku::parse(&"A".repeat(SKU_BYTES_MAX + 1)).is_err());
    }

    #[test]
    fn product_rejects_duplicate_skus_and_unpriced_variants() {
        let usd = Currency::parse("USD").expect("USD");
        let priced = |sku: &str| Variant {
            sku: Sku::parse(sku).expect("sku"),
            prices: BTreeMap::from([(usd, Money::parse(100, usd).expect("price"))]),
        };
        let name = Text::parse("Tee").expect("name");
        assert!(NewProduct::parse(name.clone(), vec![priced("A"), priced("B")]).is_ok());
        assert!(NewProduct::parse(name.clone(), vec![priced("A"), priced("A")]).is_err());
        assert!(NewProduct::parse(name.clone(), vec![]).is_err());
        let unpriced = Variant {
            sku: Sku::parse("C").expect("sku"),
            prices: BTreeMap::new(),
        };
        assert!(NewProduct::parse(name, vec![unpriced]).is_err());
    }
}
