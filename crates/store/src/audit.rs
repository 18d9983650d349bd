//! Audit records: who changed what, from what to what, why and when. A record is written in
//! the transaction of the change it describes, as a draft; the relay then seals drafts into
//! their tenant's hash chain in insertion order ([`seal`]), so writers never wait for one
//! another on the chain head and the chain still covers every committed change.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::Value;
pub use tally_audit::{Actor, Cause};
use tally_audit::{AuditDraft, AuditRecord, ChainHead};
use tally_domain::ids::TenantId;

use crate::StoreError;
use crate::records::{LogEvent, NewAuditRecord};

/// Why a consumer changed something: the event it applied.
pub fn cause_of(event: &LogEvent) -> Cause {
    Cause {
        request_id: event.correlation_id.clone(),
        idempotency_key: None,
        event_id: Some(event.id.as_uuid()),
        causation_id: event.causation_id.clone(),
    }
}

/// What changed: the entity and the action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change<'a> {
    pub entity_type: &'a str,
    pub entity_id: String,
    pub action: &'a str,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

/// An audit draft ready to insert.
pub fn record(
    tenant: TenantId,
    at: DateTime<Utc>,
    actor: Actor,
    change: Change<'_>,
    cause: Cause,
) -> NewAuditRecord {
    let draft = AuditDraft {
        tenant_id: tenant.as_uuid(),
        id: uuid::Uuid::now_v7(),
        at,
        actor,
        entity_type: change.entity_type.to_owned(),
        entity_id: change.entity_id,
        action: change.action.to_owned(),
        before: change.before,
        after: change.after,
        cause,
    };
    NewAuditRecord {
        id: draft.id,
        tenant_id: tenant,
        at,
        entity_type: draft.entity_type.clone(),
        entity_id: draft.entity_id.clone(),
        // Serializing a draft of plain data cannot fail.
        body: serde_json::to_string(&draft).unwrap_or_else(|_| "null".to_owned()),
    }
}

/// A draft row waiting to be sealed, in insertion order.
#[derive(Debug, Clone)]
pub(crate) struct Unsealed {
    pub(crate) seq: i64,
    pub(crate) tenant: TenantId,
    pub(crate) draft: AuditDraft,
}

/// A draft as the embedded engine stores it, as text; parsed straight into the draft, with no
/// JSON tree in between (sealing parses every record the store writes).
pub(crate) fn draft_from_text(text: &str, row: i64) -> Result<AuditDraft, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("audit draft {row}: {e}")))
}

/// Sealed records by row (`seq`), and every touched tenant's new chain head.
pub(crate) type Sealing = (Vec<(i64, AuditRecord)>, HashMap<TenantId, ChainHead>);

/// Seals `rows` (in insertion order) after each tenant's head.
pub(crate) fn seal(
    rows: Vec<Unsealed>,
    mut heads: HashMap<TenantId, ChainHead>,
) -> Result<Sealing, StoreError> {
    let mut sealed = Vec::with_capacity(rows.len());
    for row in rows {
        let head = heads.entry(row.tenant).or_insert(ChainHead::GENESIS);
        let record = tally_audit::seal_after(head, row.draft);
        *head = record.head();
        sealed.push((row.seq, record));
    }
    Ok((sealed, heads))
}

/// Rebuilds a sealed record from its stored draft and chain fields.
pub(crate) fn sealed_record(
    draft: AuditDraft,
    sequence: i64,
    prev_hash: &[u8],
    hash: &[u8],
) -> Result<AuditRecord, StoreError> {
    let digest = |bytes: &[u8]| -> Result<[u8; 32], StoreError> {
        bytes.try_into().map_err(|_| {
            StoreError::Corrupt(format!("audit record {sequence}: a hash is not 32 bytes"))
        })
    };
    Ok(AuditRecord {
        tenant_id: draft.tenant_id,
        sequence,
        id: draft.id,
        at: draft.at,
        actor: draft.actor,
        entity_type: draft.entity_type,
        entity_id: draft.entity_id,
        action: draft.action,
        before: draft.before,
        after: draft.after,
        cause: draft.cause,
        prev_hash: digest(prev_hash)?,
        hash: digest(hash)?,
    })
}
