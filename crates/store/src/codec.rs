//! Conversions between domain values and their stored forms that both engines share.

use std::collections::{BTreeMap, HashMap};

use tally_domain::money::{Currency, Money};

use crate::{StoreError, corrupt};

/// A variant's prices as stored: `{"USD": 1999}`.
pub(crate) fn prices_json(prices: &BTreeMap<Currency, Money>) -> serde_json::Value {
    prices
        .iter()
        .map(|(currency, money)| {
            (
                currency.code().to_owned(),
                serde_json::Value::from(money.minor),
            )
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// Parses stored prices back into domain money; a stored value that no longer parses is corrupt.
pub(crate) fn parse_prices(
    sku: &str,
    stored: HashMap<String, i64>,
) -> Result<HashMap<Currency, Money>, StoreError> {
    stored
        .into_iter()
        .map(|(code, minor)| {
            let currency = Currency::parse(&code).map_err(|e| corrupt(sku, e))?;
            let price = Money::parse(minor, currency).map_err(|e| corrupt(sku, e))?;
            Ok((currency, price))
        })
        .collect()
}
