//! The checkout saga's state and its pure decisions. The saga is orchestrated: one consumer
//! reads an order's events in order and, for each, takes the next step (reserve stock,
//! authorize, capture, request fulfillment, complete) or the compensation of the steps before
//! it. This module decides; the checkout consumer performs partner calls and writes.
//!
//! # Layout
//!
//! - This file: the saga's persisted state ([`Saga`]), stock reservation choices, and which
//!   statuses may be cancelled or returned.
//! - [`decide`]: every step and compensation as a function of the order, the event and the
//!   partners' answers.

pub mod decide;
pub mod lifecycle;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::inventory::StockLevel;
use crate::order::OrderStatus;

/// Stock held for one order line at one location.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub sku: String,
    pub location: String,
    pub quantity: u32,
}

/// What the saga has done so far for an order, persisted beside it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saga {
    #[serde(default)]
    pub reservations: Vec<Reservation>,
    /// Whether `reservations` is currently held (false once shipped or released).
    #[serde(default)]
    pub reservations_held: bool,
    pub authorization_id: Option<String>,
    /// The ledger's pending entry for the authorization.
    pub authorization_entry: Option<String>,
    pub capture_id: Option<String>,
    pub shipment_id: Option<String>,
    pub tracking_number: Option<String>,
    pub refund_id: Option<String>,
    pub cancel_reason: Option<String>,
    /// A client asked to cancel: steps that have not called their partner yet stop, and the
    /// saga cancels next.
    #[serde(default)]
    pub cancel_requested: bool,
}

/// No location can cover a line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("SKU {sku} is out of stock")]
pub struct OutOfStock {
    pub sku: String,
}

/// Chooses, for every `(sku, quantity)` line, the first location (in code order) whose
/// available stock covers the whole line. A line is never split across locations: one parcel
/// per line keeps fulfillment simple; an order whose line fits nowhere is out of stock.
pub fn choose_reservations(
    lines: &[(String, u32)],
    stock: &BTreeMap<String, BTreeMap<String, StockLevel>>,
) -> Result<Vec<Reservation>, OutOfStock> {
    lines
        .iter()
        .map(|(sku, quantity)| {
            let location = stock
                .get(sku)
                .and_then(|locations| {
                    locations
                        .iter()
                        .find(|(_, level)| level.available() >= i64::from(*quantity))
                })
                .map(|(location, _)| location.clone())
                .ok_or_else(|| OutOfStock { sku: sku.clone() })?;
            Ok(Reservation {
                sku: sku.clone(),
                location,
                quantity: *quantity,
            })
        })
        .collect()
}

/// Whether a customer or operator may still cancel an order in `status`: until it is handed
/// to the carrier. After that it runs to delivery and is returned instead.
pub const fn cancellable(status: OrderStatus) -> bool {
    matches!(
        status,
        OrderStatus::Placed
            | OrderStatus::Reserved
            | OrderStatus::Authorized
            | OrderStatus::Captured
    )
}

/// Whether an order in `status` can be returned for a refund.
pub const fn returnable(status: OrderStatus) -> bool {
    matches!(status, OrderStatus::Delivered | OrderStatus::Completed)
}

/// Whether `status` is final: the saga takes no further step.
pub const fn terminal(status: OrderStatus) -> bool {
    matches!(
        status,
        OrderStatus::Completed | OrderStatus::Cancelled | OrderStatus::Refunded
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn level(on_hand: i64, reserved: i64) -> StockLevel {
        StockLevel { on_hand, reserved }
    }

    #[test]
    fn a_line_goes_to_the_first_location_that_covers_it() {
        let stock = BTreeMap::from([(
            "A".to_owned(),
            BTreeMap::from([
                ("east".to_owned(), level(5, 4)),
                ("west".to_owned(), level(3, 0)),
            ]),
        )]);
        let chosen = choose_reservations(&[("A".into(), 2)], &stock).expect("in stock");
        assert_eq!(chosen[0].location, "west");
        assert_eq!(
            choose_reservations(&[("A".into(), 4)], &stock),
            Err(OutOfStock { sku: "A".into() })
        );
        assert!(choose_reservations(&[("B".into(), 1)], &stock).is_err());
    }
}
