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

/// A validated change to a product: a new name, new prices for some of its variants (each
/// named variant's prices replaced whole), or both. Its SKUs and the set of variants stay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProductChange {
    pub name: Option<Text>,
    pub prices: BTreeMap<Sku, BTreeMap<Currency, Money>>,
}

/// Why a change does not apply to the product it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeRefused {
    /// The product has no variants with these SKUs.
    NotVariants(Vec<Sku>),
}

/// The data of `tally.product.updated.v1`: the product as it is now, and which of its parts
/// the change touched.
#[derive(Debug, Serialize)]
struct Updated<'a> {
    #[serde(flatten)]
    product: &'a Product,
    changed: Vec<&'static str>,
}

impl ProductChange {
    /// Checks what spans the change: it changes something, and each repriced variant keeps 1 to
    /// [`PRICES_COUNT_MAX`] prices.
    pub fn parse(
        name: Option<Text>,
        prices: BTreeMap<Sku, BTreeMap<Currency, Money>>,
    ) -> Result<Self, ParseError> {
        if name.is_none() && prices.is_empty() {
            return Err(ParseError::new(
                "a change needs a new name, new prices, or both",
            ));
        }
        if let Some((sku, _)) = prices
            .iter()
            .find(|(_, p)| p.is_empty() || p.len() > PRICES_COUNT_MAX)
        {
            return Err(ParseError::new(format!(
                "variant '{sku}' needs 1 to {PRICES_COUNT_MAX} prices"
            )));
        }
        Ok(Self { name, prices })
    }

    /// The product after the change, and its event; no event when the product already is as
    /// the change would make it (a change made twice changes nothing the second time).
    pub fn apply(
        self,
        mut product: Product,
    ) -> Result<(Product, Option<EventDraft>), ChangeRefused> {
        let unknown: Vec<Sku> = self
            .prices
            .keys()
            .filter(|sku| !product.variants.iter().any(|v| &v.sku == *sku))
            .cloned()
            .collect();
        if !unknown.is_empty() {
            return Err(ChangeRefused::NotVariants(unknown));
        }
        let mut changed = Vec::new();
        if let Some(name) = self.name
            && name != product.name
        {
            product.name = name;
            changed.push("name");
        }
        let mut repriced = false;
        for variant in &mut product.variants {
            if let Some(prices) = self.prices.get(&variant.sku)
                && *prices != variant.prices
            {
                variant.prices = prices.clone();
                repriced = true;
            }
        }
        if repriced {
            changed.push("prices");
        }
        if changed.is_empty() {
            return Ok((product, None));
        }
        let id = product.id.to_string();
        let event = EventDraft::new(
            EventType::ProductUpdated,
            id.clone(),
            id,
            &Updated {
                product: &product,
                changed,
            },
        );
        Ok((product, Some(event)))
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

    #[test]
    fn a_change_renames_and_reprices_and_a_second_time_changes_nothing() {
        let usd = Currency::parse("USD").expect("USD");
        let eur = Currency::parse("EUR").expect("EUR");
        let price = |minor, currency| Money::parse(minor, currency).expect("price");
        let sku = |s: &str| Sku::parse(s).expect("sku");
        let product = Product {
            id: ProductId::generate(),
            name: Text::parse("Tee").expect("name"),
            variants: vec![
                Variant {
                    sku: sku("A"),
                    prices: BTreeMap::from([(usd, price(100, usd))]),
                },
                Variant {
                    sku: sku("B"),
                    prices: BTreeMap::from([(usd, price(200, usd))]),
                },
            ],
            created_at: chrono::DateTime::UNIX_EPOCH,
        };
        let change = ProductChange::parse(
            Some(Text::parse("Shirt").expect("name")),
            BTreeMap::from([(sku("B"), BTreeMap::from([(eur, price(180, eur))]))]),
        )
        .expect("change");
        let (after, event) = change.clone().apply(product.clone()).expect("applies");
        assert_eq!(after.name.as_str(), "Shirt");
        assert_eq!(after.variants[0], product.variants[0], "A is left alone");
        assert_eq!(
            after.variants[1].prices,
            BTreeMap::from([(eur, price(180, eur))]),
            "B's prices are replaced whole"
        );
        let event = event.expect("an event");
        assert_eq!(event.event_type, EventType::ProductUpdated);
        let (again, none) = change.apply(after.clone()).expect("applies again");
        assert_eq!(again, after);
        assert!(
            none.is_none(),
            "the same change twice emits nothing the second time"
        );
    }

    #[test]
    fn a_change_must_change_something_and_name_the_products_own_variants() {
        assert!(ProductChange::parse(None, BTreeMap::new()).is_err());
        let sku = Sku::parse("Z").expect("sku");
        assert!(
            ProductChange::parse(None, BTreeMap::from([(sku.clone(), BTreeMap::new())])).is_err()
        );
        let usd = Currency::parse("USD").expect("USD");
        let change = ProductChange::parse(
            None,
            BTreeMap::from([(
                sku.clone(),
                BTreeMap::from([(usd, Money::parse(1, usd).expect("price"))]),
            )]),
        )
        .expect("change");
        let product = Product {
            id: ProductId::generate(),
            name: Text::parse("Tee").expect("name"),
            variants: vec![],
            created_at: chrono::DateTime::UNIX_EPOCH,
        };
        assert!(matches!(
            change.apply(product),
            Err(ChangeRefused::NotVariants(unknown)) if unknown == vec![sku]
        ));
    }
}
