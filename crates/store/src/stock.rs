//! Stock moves of the order lifecycle, composed from [`Tx`] primitives: holding, releasing,
//! shipping and restocking an order's reservations. Each writes the level and the movement
//! that explains it, so stock always reconciles.

use chrono::{DateTime, Utc};
use tally_domain::checkout::{Reservation, Saga};
use tally_domain::ids::{OrderId, TenantId};
use tally_domain::inventory::StockLevel;

use crate::records::{MovementKind, StockMovement};
use crate::{StoreError, Tx};

/// How a move of `quantity` units changes a stock row's on-hand and reserved counts.
pub(crate) fn delta(kind: MovementKind, quantity: i64) -> StockLevel {
    let (on_hand, reserved) = match kind {
        MovementKind::Reserved => (0, quantity),
        MovementKind::Released => (0, -quantity),
        MovementKind::Shipped => (-quantity, -quantity),
        MovementKind::Returned | MovementKind::Received => (quantity, 0),
        MovementKind::Removed => (-quantity, 0),
    };
    StockLevel { on_hand, reserved }
}

/// Applies `kind` to every reservation, row by row in (SKU, location) order so that
/// concurrent moves cannot deadlock, each in one statement.
pub async fn move_reservations(
    tx: &mut dyn Tx,
    tenant: TenantId,
    order: OrderId,
    reservations: &[Reservation],
    kind: MovementKind,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    match shift(tx, tenant, order, reservations, kind, now).await? {
        None => Ok(()),
        Some(reservation) => Err(StoreError::Corrupt(format!(
            "stock row {}@{} is missing or has too few units to {}",
            reservation.sku,
            reservation.location,
            kind.as_str()
        ))),
    }
}

/// Reserves every reservation if each still fits its row, and returns whether it did. On
/// `false`, other orders took the units since the plan was made, and the caller must roll back
/// (the reservations before the one that did not fit were written). Called last in its
/// transaction, so that a busy SKU's row stays locked for its own update and the commit only.
pub async fn reserve_if_available(
    tx: &mut dyn Tx,
    tenant: TenantId,
    order: OrderId,
    reservations: &[Reservation],
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let refused = shift(tx, tenant, order, reservations, MovementKind::Reserved, now).await?;
    Ok(refused.is_none())
}

/// Applies `kind` to the reservations in (SKU, location) order; stops at the first whose row
/// refused it and returns it.
async fn shift<'a>(
    tx: &mut dyn Tx,
    tenant: TenantId,
    order: OrderId,
    reservations: &'a [Reservation],
    kind: MovementKind,
    now: DateTime<Utc>,
) -> Result<Option<&'a Reservation>, StoreError> {
    let mut ordered: Vec<&Reservation> = reservations.iter().collect();
    ordered.sort_by(|a, b| (&a.sku, &a.location).cmp(&(&b.sku, &b.location)));
    for reservation in ordered {
        let quantity = i64::from(reservation.quantity);
        let movement = StockMovement {
            sku: reservation.sku.clone(),
            location: reservation.location.clone(),
            kind,
            quantity,
            order_id: Some(order),
            at: now,
        };
        if !tx
            .shift_stock(tenant, delta(kind, quantity), &movement)
            .await?
        {
            return Ok(Some(reservation));
        }
    }
    Ok(None)
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
    if let Some(reservations) = take_hold(saga) {
        move_reservations(tx, tenant, order, &reservations, kind, now).await?;
    }
    Ok(())
}

/// Ends the order's hold in its saga and returns the reservations whose stock must move, or
/// `None` when it held none: for a caller that writes the stock rows last in its transaction.
pub fn take_hold(saga: &mut Saga) -> Option<Vec<Reservation>> {
    if !saga.reservations_held {
        return None;
    }
    saga.reservations_held = false;
    Some(saga.reservations.clone())
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
