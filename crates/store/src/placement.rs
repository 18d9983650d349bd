//! A new order whose rows were all made before the store's writer was taken: the hot command,
//! written as a fixed list of statements so that the embedded engine runs it as one queued job
//! of its single writer (see `sqlite::group`), like a consumer's [`crate::effect`].
//!
//! Placing an order reads only the catalog, whose prices never change once a SKU exists, so
//! the decision made from a plain read before the transaction is the one the transaction would
//! make. What the transaction still decides is the idempotency key: whether it was used before.

use chrono::{DateTime, Utc};
use tally_domain::ids::TenantId;
use tally_domain::order::Order;

use crate::records::{
    IdempotencyRecord, NewAuditRecord, NewEvent, NewIdempotencyRecord, StoredResponse,
};
use crate::{StoreError, Tx};

/// A placed order with everything its command writes: its event, audit record, and the
/// response stored under the client's idempotency key.
#[derive(Debug, Clone)]
pub struct PreparedPlacement {
    pub tenant: TenantId,
    pub key: String,
    pub fingerprint: [u8; 32],
    pub order: Order,
    pub events: Vec<NewEvent>,
    pub audit: NewAuditRecord,
    pub response: StoredResponse,
    pub at: DateTime<Utc>,
    /// When the idempotency record may be purged.
    pub expires_at: DateTime<Utc>,
}

impl PreparedPlacement {
    pub(crate) fn idempotency_record(&self) -> NewIdempotencyRecord<'_> {
        NewIdempotencyRecord {
            key: &self.key,
            fingerprint: self.fingerprint,
            response: &self.response,
            created_at: self.at,
            expires_at: self.expires_at,
        }
    }
}

/// What became of a prepared placement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placed {
    /// Stored and committed.
    Written,
    /// The key was used before and its record has not expired: nothing was stored, and the
    /// request is answered from the record.
    KeyUsed(IdempotencyRecord),
    /// Another transaction works under the key right now: nothing was stored.
    KeyBusy,
}

/// Stores `placement` in a command transaction of its own, through [`Tx`]: how engines without
/// a faster way do it.
pub(crate) async fn write_in(
    mut tx: Box<dyn Tx>,
    placement: &PreparedPlacement,
) -> Result<Placed, StoreError> {
    let tenant = placement.tenant;
    if !tx.lock_idempotency_key(tenant, &placement.key).await? {
        tx.rollback().await?;
        return Ok(Placed::KeyBusy);
    }
    if let Some(record) = tx.find_idempotency_record(tenant, &placement.key).await? {
        if record.expires_at > placement.at {
            tx.rollback().await?;
            return Ok(Placed::KeyUsed(record));
        }
        tx.delete_idempotency_record(tenant, &placement.key).await?;
    }
    tx.insert_order(tenant, &placement.order).await?;
    tx.append_events(&placement.events).await?;
    tx.insert_audit(&placement.audit).await?;
    tx.insert_idempotency_record(tenant, &placement.idempotency_record())
        .await?;
    tx.commit().await?;
    Ok(Placed::Written)
}
