//! Stock per SKU and location. Available stock (`on_hand - reserved`) never goes below zero:
//! [`StockLevel::adjust`] refuses it here, and a database constraint refuses it again in the store.

use serde::Serialize;

use crate::ParseError;
use crate::catalog::Sku;
use crate::event::{EventDraft, EventType};
use crate::text::{Code, Text};

/// The largest magnitude of one adjustment; larger deltas are almost certainly typos and would
/// bring stock counts near the range where sums could overflow.
pub const ADJUSTMENT_DELTA_MAX: i64 = 1_000_000_000;

/// Stock of one SKU at one location.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct StockLevel {
    pub on_hand: i64,
    pub reserved: i64,
}

impl StockLevel {
    pub const fn available(&self) -> i64 {
        self.on_hand - self.reserved
    }

    /// The level after adding `delta` to stock on hand, or the available count that prevents it.
    pub fn adjust(self, delta: AdjustmentDelta) -> Result<StockLevel, InsufficientStock> {
        let after = StockLevel {
            on_hand: self.on_hand + delta.0,
            reserved: self.reserved,
        };
        if after.available() < 0 {
            return Err(InsufficientStock {
                available: self.available(),
            });
        }
        debug_assert!(after.on_hand >= 0 && after.reserved >= 0);
        Ok(after)
    }
}

/// An adjustment would take available stock below zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("only {available} available")]
pub struct InsufficientStock {
    pub available: i64,
}

/// A non-zero change of stock on hand, at most [`ADJUSTMENT_DELTA_MAX`] either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct AdjustmentDelta(i64);

impl AdjustmentDelta {
    pub fn parse(raw: i64) -> Result<Self, ParseError> {
        if raw == 0 || raw.abs() > ADJUSTMENT_DELTA_MAX {
            return Err(ParseError::new(format!(
                "must be a non-zero integer between -{ADJUSTMENT_DELTA_MAX} and {ADJUSTMENT_DELTA_MAX}"
            )));
        }
        Ok(Self(raw))
    }

    pub const fn get(self) -> i64 {
        self.0
    }
}

/// A validated stock adjustment request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adjustment {
    pub sku: Sku,
    pub location: Code,
    pub delta: AdjustmentDelta,
    pub reason: Option<Text>,
}

/// The payload of `tally.inventory.adjusted.v1`.
#[derive(Debug, Serialize)]
struct InventoryAdjusted<'a> {
    sku: &'a Sku,
    location: &'a Code,
    delta: i64,
    on_hand_before: i64,
    on_hand_after: i64,
    reserved: i64,
    reason: Option<&'a Text>,
}

impl Adjustment {
    /// Decides the adjustment against the current level and describes it as an event.
    pub fn apply(&self, before: StockLevel) -> Result<(StockLevel, EventDraft), InsufficientStock> {
        let after = before.adjust(self.delta)?;
        let payload = InventoryAdjusted {
            sku: &self.sku,
            location: &self.location,
            delta: self.delta.get(),
            on_hand_before: before.on_hand,
            on_hand_after: after.on_hand,
            reserved: after.reserved,
            reason: self.reason.as_ref(),
        };
        let event = EventDraft::new(
            EventType::InventoryAdjusted,
            self.sku.to_string(),
            self.sku.to_string(),
            &payload,
        );
        Ok((after, event))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever sequence of adjustments is attempted, accepted ones never leave available stock
        /// below zero and refused ones leave the level unchanged.
        #[test]
        fn available_never_goes_below_zero(deltas in proptest::collection::vec(-50i64..50, 0..60), reserved in 0i64..20) {
            let mut level = StockLevel { on_hand: reserved, reserved };
            for raw in deltas {
                let Ok(delta) = AdjustmentDelta::parse(raw) else { continue };
                match level.adjust(delta) {
                    Ok(after) => {
                        prop_assert_eq!(after.on_hand, level.on_hand + raw);
                        level = after;
                    }
                    Err(refused) => prop_assert_eq!(refused.available, level.available()),
                }
                prop_assert!(level.available() >= 0);
            }
        }
    }

    #[test]
    fn zero_and_huge_deltas_are_refused() {
        assert!(AdjustmentDelta::parse(0).is_err());
        assert!(AdjustmentDelta::parse(ADJUSTMENT_DELTA_MAX + 1).is_err());
        assert!(AdjustmentDelta::parse(-ADJUSTMENT_DELTA_MAX).is_ok());
    }
}

/// Why a stock row's counts change: each change is a movement of one of these kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MovementKind {
    Received,
    Removed,
    Reserved,
    Released,
    Shipped,
    Returned,
}

impl MovementKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            MovementKind::Received => "received",
            MovementKind::Removed => "removed",
            MovementKind::Reserved => "reserved",
            MovementKind::Released => "released",
            MovementKind::Shipped => "shipped",
            MovementKind::Returned => "returned",
        }
    }
}

impl MovementKind {
    /// How a move of `quantity` units of this kind changes a row's on-hand and reserved counts:
    /// a reservation holds units, a release gives them back, a shipment takes held units out
    /// of stock, a return or a receipt adds units, a removal takes them away.
    pub const fn delta(self, quantity: i64) -> StockLevel {
        let (on_hand, reserved) = match self {
            MovementKind::Reserved => (0, quantity),
            MovementKind::Released => (0, -quantity),
            MovementKind::Shipped => (-quantity, -quantity),
            MovementKind::Returned | MovementKind::Received => (quantity, 0),
            MovementKind::Removed => (-quantity, 0),
        };
        StockLevel { on_hand, reserved }
    }
}
