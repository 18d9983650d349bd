//! Audit records: who changed what, from what to what, why and when. A record is written in
//! the transaction of the change it describes, as a draft; the relay then seals drafts into
//! their tenant's hash chain in insertion order ([`seal`]), so writers never wait for one
//! another on the chain head and the chain still covers every committed change. A draft's
//! canonical bytes are made with the draft, in a process that seals, and kept in memory until
//! the sealer takes them, so the sealer hashes without parsing the stored draft back; drafts it
//! was not handed (another process made them, or they aged out) it reads from their rows.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{LazyLock, Mutex};

use chrono::{DateTime, Utc};
use hashlink::LruCache;
use serde_json::Value;
pub use tally_audit::{Actor, Cause};
use tally_audit::{AuditDraft, AuditRecord, ChainHead, DraftBytes, Hash};
use tally_domain::ids::TenantId;
use uuid::Uuid;

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
    id: uuid::Uuid,
    tenant: TenantId,
    at: DateTime<Utc>,
    actor: Actor,
    change: Change<'_>,
    cause: Cause,
) -> NewAuditRecord {
    let draft = AuditDraft {
        tenant_id: tenant.as_uuid(),
        id,
        at,
        actor,
        entity_type: change.entity_type.to_owned(),
        entity_id: change.entity_id,
        action: change.action.to_owned(),
        before: change.before,
        after: change.after,
        cause,
    };
    remember(&draft);
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

/// Drafts whose canonical bytes are kept at most. The sealer takes a draft's bytes a few
/// hundred milliseconds after the draft is made, so this covers seconds of the busiest load; a
/// draft that fell out, or that another process made, is parsed from its row instead.
const DRAFT_BYTES_KEPT_MAX: usize = 32_768;

/// The canonical bytes of the drafts this process made, by record id, until the sealer takes
/// them. A memo of a pure function of the stored draft ([`DraftBytes::of`] on the parsed body):
/// what it holds is what parsing the row would give, so it changes no outcome, only spares the
/// sealer parsing every record the store writes back into a JSON tree (about a tenth of the
/// embedded store's CPU per order). Drafts of changes that never committed age out.
static DRAFT_BYTES: LazyLock<Mutex<LruCache<Uuid, DraftBytes>>> =
    LazyLock::new(|| Mutex::new(LruCache::new(DRAFT_BYTES_KEPT_MAX)));

/// Whether this process seals: set by its sealer's first pass. A process that never seals (an
/// API or worker process beside a relay, in a deployment of several) would make and keep bytes
/// that no one takes, on every change's path.
static SEALS_HERE: AtomicBool = AtomicBool::new(false);

fn remember(draft: &AuditDraft) {
    if !SEALS_HERE.load(Ordering::Relaxed) {
        return;
    }
    let bytes = DraftBytes::of(draft);
    if let Ok(mut kept) = DRAFT_BYTES.lock() {
        kept.insert(draft.id, bytes);
    }
}

/// A stored draft to seal: its row (`seq`), tenant and record id.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DraftRow {
    pub(crate) seq: i64,
    pub(crate) tenant: TenantId,
    pub(crate) id: Uuid,
}

/// A draft row waiting to be sealed, in insertion order.
#[derive(Debug, Clone)]
pub(crate) struct Unsealed {
    pub(crate) seq: i64,
    pub(crate) tenant: TenantId,
    bytes: DraftBytes,
}

/// The bytes this process kept of each row's draft when it made it (taking them), `None` for
/// the rows whose stored draft must be read.
pub(crate) fn kept_bytes(rows: &[DraftRow]) -> Vec<Option<DraftBytes>> {
    SEALS_HERE.store(true, Ordering::Relaxed);
    match DRAFT_BYTES.lock() {
        Ok(mut memo) => rows.iter().map(|row| memo.remove(&row.id)).collect(),
        Err(_) => vec![None; rows.len()],
    }
}

/// The rows (`seq`) of `rows` whose draft was not kept, to read.
pub(crate) fn unkept(rows: &[DraftRow], kept: &[Option<DraftBytes>]) -> Vec<i64> {
    rows.iter()
        .zip(kept)
        .filter(|(_, kept)| kept.is_none())
        .map(|(row, _)| row.seq)
        .collect()
}

/// The drafts of `rows`, in their order, ready to seal: the bytes `kept` where there are some,
/// else those of the draft `read` from the row.
pub(crate) fn unsealed(
    rows: Vec<DraftRow>,
    kept: Vec<Option<DraftBytes>>,
    mut read: HashMap<i64, AuditDraft>,
) -> Result<Vec<Unsealed>, StoreError> {
    rows.into_iter()
        .zip(kept)
        .map(|(row, kept)| {
            let bytes = match kept {
                Some(bytes) => bytes,
                None => DraftBytes::of(&read.remove(&row.seq).ok_or_else(|| {
                    StoreError::Corrupt(format!("audit draft {} was not read", row.seq))
                })?),
            };
            Ok(Unsealed {
                seq: row.seq,
                tenant: row.tenant,
                bytes,
            })
        })
        .collect()
}

/// A draft's place in its tenant's chain, and the hash that seals it there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Seal {
    pub(crate) sequence: i64,
    pub(crate) prev_hash: Hash,
    pub(crate) hash: Hash,
}

/// Seals by row (`seq`), and every touched tenant's new chain head.
pub(crate) type Sealing = (Vec<(i64, Seal)>, HashMap<TenantId, ChainHead>);

/// Seals `rows` (in insertion order) after each tenant's head.
pub(crate) fn seal(
    rows: Vec<Unsealed>,
    mut heads: HashMap<TenantId, ChainHead>,
) -> Result<Sealing, StoreError> {
    let mut sealed = Vec::with_capacity(rows.len());
    for mut row in rows {
        let head = heads.entry(row.tenant).or_insert(ChainHead::GENESIS);
        let prev_hash = head.hash;
        *head = tally_audit::seal_bytes_after(head, &mut row.bytes);
        sealed.push((
            row.seq,
            Seal {
                sequence: head.sequence,
                prev_hash,
                hash: head.hash,
            },
        ));
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
