//! Stock moves of the order lifecycle, composed from [`Tx`] primitives: holding, releasing,
//! shipping and restocking an order's reservations. Each writes the level and the movement
//! that explains it, so stock always reconciles.

use chrono::{DateTime, Utc};
use tally_domain::checkout::{Reservation, Saga};
use tally_domain::ids::{OrderId, TenantId};
use tally_domain::inventory::StockLevel;

use crate::records::{LockedStock, MovementKind, StockMovement};
use crate::{StoreError, Tx};

/// How a move changes one stock row for a reserved quantity.
fn apply(kind: MovementKind, level: StockLevel, quantity: i64) -> StockLevel {
    match kind {
        MovementKind::Reserved => StockLevel {
            reserved: level.reserved + quantity,
            ..level
        },
        MovementKind::Released => StockLevel {
            reserved: level.reserved - quantity,
            ..level
        },
        MovementKind::Shipped => StockLevel {
            on_hand: level.on_hand - quantity,
            reserved: level.reserved - quantity,
        },
        MovementKind::Returned | MovementKind::Received => StockLevel {
            on_hand: level.on_hand + quantity,
            ..level
        },
        MovementKind::Removed => StockLevel {
            on_hand: level.on_hand - quantity,
            ..level
        },
    }
}

/// Applies `kind` to every reservation, on rows locked in (SKU, location) order.
pub async fn move_reservations(
    tx: &mut dyn Tx,
    tenant: TenantId,
    order: OrderId,
    reservations: &[Reservation],
    kind: MovementKind,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let skus: Vec<String> = reservations.iter().map(|r| r.sku.clone()).collect();
    let locked: Vec<LockedStock> = tx.lock_stock(tenant, &skus).await?;
    for reservation in reservations {
        let level = locked
            .iter()
            .find(|l| l.sku == reservation.sku && l.location == reservation.location)
            .map(|l| l.level)
            .ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "stock row {}@{} is missing",
                    reservation.sku, reservation.location
                ))
            })?;
        let quantity = i64::from(reservation.quantity);
        let movement = StockMovement {
            sku: reservation.sku.clone(),
            location: reservation.location.clone(),
            kind,
            quantity,
            order_id: Some(order),
            at: now,
        };
        tx.move_stock(tenant, apply(kind, level, quantity), &movement)
            .await?;
    }
    Ok(())
}

/// Ends the order's hold on its reservations, if it still has one: `Released` gives the units
/// back to available stock (a cancellation's compensation), `Shipped` takes them out of stock
/// (they left the warehouse).
async fn end_hold(
    tx: &mut dyn Tx,
    tenant: TenantId,
    order: OrderId,
    saga: &mut Saga,
    kind: MovementKind,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    if saga.reservations_held {
        move_reservations(tx, tenant, order, &saga.reservations, kind, now).await?;
        saga.reservations_held = false;
    }
    Ok(())
}

/// Gives back the order's reservations if it holds them.
pub async fn release(
    tx: &mut dyn Tx,
    tenant: TenantId,
    order: OrderId,
    saga: &mut Saga,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    end_hold(tx, tenant, order, saga, MovementKind::Released, now).await
}

/// The reserved units leave the warehouse.
pub async fn ship(
    tx: &mut dyn Tx,
    tenant: TenantId,
    order: OrderId,
    saga: &mut Saga,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    end_hold(tx, tenant, order, saga, MovementKind::Shipped, now).await
}

/// Returned units go back on hand where they were shipped from.
pub async fn restock(
    tx: &mut dyn Tx,
    tenant: TenantId,
    order: OrderId,
    saga: &Saga,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    move_reservations(
        tx,
        tenant,
        order,
        &saga.reservations,
        MovementKind::Returned,
        now,
    )
    .await
}
