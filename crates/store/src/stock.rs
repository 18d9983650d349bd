//! Stock moves of the order lifecycle, composed from [`Tx`] primitives: holding, releasing,
//! shipping and restocking an order's reservations. Each writes the level and the movement
//! that explains it, so stock always reconciles.

use chrono::{DateTime, Utc};
use tally_domain::checkout::{Reservation, Saga};
use tally_domain::ids::{OrderId, TenantId};

use crate::records::{MovementKind, StockMovement};
use crate::{StoreError, Tx};

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
    move_all(tx, tenant, &movements(order, reservations, kind, now)).await
}

/// Applies `movements` (from [`movements`]) in their order; a row that refuses one is an error,
/// since the order's own hold is what they move.
pub(crate) async fn move_all(
    tx: &mut dyn Tx,
    tenant: TenantId,
    movements: &[StockMovement],
) -> Result<(), StoreError> {
    match shift(tx, tenant, movements).await? {
        None => Ok(()),
        Some(movement) => Err(refused(movement)),
    }
}

/// What a move of the order's own hold that its row refused is: the store is inconsistent.
pub(crate) fn refused(movement: &StockMovement) -> StoreError {
    StoreError::Corrupt(format!(
        "stock row {}@{} is missing or has too few units to {}",
        movement.sku,
        movement.location,
        movement.kind.as_str()
    ))
}

/// The movements that apply `kind` to the reservations, in (SKU, location) order, the order in
/// which every transaction changes stock rows, so that concurrent moves cannot deadlock.
pub fn movements(
    order: OrderId,
    reservations: &[Reservation],
    kind: MovementKind,
    now: DateTime<Utc>,
) -> Vec<StockMovement> {
    let mut ordered: Vec<&Reservation> = reservations.iter().collect();
    ordered.sort_by(|a, b| (&a.sku, &a.location).cmp(&(&b.sku, &b.location)));
    ordered
        .into_iter()
        .map(|reservation| StockMovement {
            sku: reservation.sku.clone(),
            location: reservation.location.clone(),
            kind,
            quantity: i64::from(reservation.quantity),
            order_id: Some(order),
            at: now,
        })
        .collect()
}

/// Applies `movements` in their order; stops at the first whose row refused it and returns it.
pub(crate) async fn shift<'a>(
    tx: &mut dyn Tx,
    tenant: TenantId,
    movements: &'a [StockMovement],
) -> Result<Option<&'a StockMovement>, StoreError> {
    for movement in movements {
        if !tx
            .shift_stock(tenant, movement.kind.delta(movement.quantity), movement)
            .await?
        {
            return Ok(Some(movement));
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
