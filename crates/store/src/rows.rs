//! Rows read back into records, written once for both engines.
//!
//! An engine only says how one column of its rows reads as a value (see [`Fields`]): SQLite
//! keeps times as microseconds and JSON as text, PostgreSQL as `timestamptz` and `jsonb`, and
//! their integers come in other widths. What a record is made of, and the folds of several
//! statements' rows into one answer (a journal with its postings, stock with its movements),
//! are the same on both, so they live here.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use tally_domain::catalog::Sku;
use tally_domain::ids::{ApiKeyId, EventId, OrderId, TenantId};
use tally_domain::inventory::StockLevel;
use tally_domain::money::{Currency, Money};
use uuid::Uuid;

use crate::records::*;
use crate::{StoreError, corrupt};

/// One result row of an engine, read by column name. Every getter fails with a store error when
/// the column is missing or holds something else, never with a panic.
pub(crate) trait Fields {
    fn uuid(&self, column: &str) -> Result<Uuid, StoreError>;
    fn uuid_opt(&self, column: &str) -> Result<Option<Uuid>, StoreError>;
    fn text(&self, column: &str) -> Result<String, StoreError>;
    fn text_opt(&self, column: &str) -> Result<Option<String>, StoreError>;
    /// An integer column of any width.
    fn int(&self, column: &str) -> Result<i64, StoreError>;
    fn int_opt(&self, column: &str) -> Result<Option<i64>, StoreError>;
    fn boolean(&self, column: &str) -> Result<bool, StoreError>;
    fn bytes(&self, column: &str) -> Result<Vec<u8>, StoreError>;
    fn bytes_opt(&self, column: &str) -> Result<Option<Vec<u8>>, StoreError>;
    fn time(&self, column: &str) -> Result<DateTime<Utc>, StoreError>;
    /// A JSON column parsed into `T`; what does not parse is corrupt data.
    fn json<T: DeserializeOwned>(&self, column: &str) -> Result<T, StoreError>;
}

/// An integer column that must fit `T` (a partition, a status code).
fn narrow<T: TryFrom<i64>>(row: &impl Fields, column: &str) -> Result<T, StoreError>
where
    T::Error: std::fmt::Display,
{
    T::try_from(row.int(column)?).map_err(|e| corrupt(column, e))
}

/// A 32-byte digest column (a fingerprint, a hash).
fn digest(row: &impl Fields, column: &str) -> Result<[u8; 32], StoreError> {
    row.bytes(column)?
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("{column} is not 32 bytes")))
}

/// Every column of an order but its tenant, as [`order`] reads them; each engine adds its
/// `WHERE` with `concat!`.
macro_rules! select_order {
    () => {
        "SELECT id, channel, customer_id, customer_email, \
         currency, total_minor, status, lines, shipping_address, saga, created_at, updated_at \
         FROM orders"
    };
}
pub(crate) use select_order;

pub(crate) fn order(row: &impl Fields) -> Result<OrderRecord, StoreError> {
    Ok(OrderRecord {
        id: OrderId::from_uuid(row.uuid("id")?),
        channel: row.text("channel")?,
        customer_id: row.text("customer_id")?,
        customer_email: row.text_opt("customer_email")?,
        currency: row.text("currency")?,
        total_minor: row.int("total_minor")?,
        status: row.text("status")?,
        lines: row.json("lines")?,
        shipping_address: row.json("shipping_address")?,
        saga: row.json("saga")?,
        created_at: row.time("created_at")?,
        updated_at: row.time("updated_at")?,
    })
}

pub(crate) fn order_state(row: &impl Fields) -> Result<OrderState, StoreError> {
    let record = order(row)?;
    Ok(OrderState {
        saga: record.saga.clone(),
        record,
    })
}

/// Every column of an event, as [`log_event`] reads them; each engine adds its `WHERE` with
/// `concat!`.
macro_rules! select_log_event {
    () => {
        "SELECT position, id, tenant_id, type, source, \
         subject, partition_key, partition, time, data, correlation_id, causation_id, traceparent \
         FROM events"
    };
}
pub(crate) use select_log_event;

pub(crate) fn log_event(row: &impl Fields) -> Result<LogEvent, StoreError> {
    Ok(LogEvent {
        position: row.int("position")?,
        id: EventId::from_uuid(row.uuid("id")?),
        tenant_id: TenantId::from_uuid(row.uuid("tenant_id")?),
        event_type: row.text("type")?,
        source: row.text("source")?,
        subject: row.text("subject")?,
        partition_key: row.text("partition_key")?,
        partition: narrow(row, "partition")?,
        time: row.time("time")?,
        data: EventData::from(row.json::<Box<serde_json::value::RawValue>>("data")?),
        correlation_id: row.text_opt("correlation_id")?,
        causation_id: row.text_opt("causation_id")?,
        traceparent: row.text_opt("traceparent")?,
    })
}

pub(crate) fn timeline_entry(row: &impl Fields) -> Result<TimelineEntry, StoreError> {
    Ok(TimelineEntry {
        event_id: EventId::from_uuid(row.uuid("id")?),
        event_type: row.text("type")?,
        time: row.time("time")?,
    })
}

/// Every column of a dead letter, as [`dead_letter`] reads them; each engine adds its `WHERE` with
/// `concat!`.
macro_rules! select_dead_letter {
    () => {
        "SELECT id, tenant_id, group_name, event_id, \
         partition, position, event_type, subject, error, attempts, status, created_at, updated_at \
         FROM dead_letters"
    };
}
pub(crate) use select_dead_letter;

pub(crate) fn dead_letter(row: &impl Fields) -> Result<DeadLetterRecord, StoreError> {
    Ok(DeadLetterRecord {
        id: row.uuid("id")?,
        tenant_id: TenantId::from_uuid(row.uuid("tenant_id")?),
        group: row.text("group_name")?,
        event_id: EventId::from_uuid(row.uuid("event_id")?),
        partition: narrow(row, "partition")?,
        position: row.int("position")?,
        event_type: row.text("event_type")?,
        subject: row.text("subject")?,
        error: row.text("error")?,
        attempts: row.json("attempts")?,
        status: row.text("status")?,
        created_at: row.time("created_at")?,
        updated_at: row.time("updated_at")?,
    })
}

pub(crate) fn api_key(row: &impl Fields) -> Result<ApiKeyRecord, StoreError> {
    Ok(ApiKeyRecord {
        id: ApiKeyId::from_uuid(row.uuid("id")?),
        tenant_id: TenantId::from_uuid(row.uuid("tenant_id")?),
        scopes: row.text("scopes")?,
        revoked: row.boolean("revoked")?,
    })
}

/// The columns of an idempotency record, as [`idempotency_record`] reads them; each engine adds
/// its `WHERE` with `concat!`.
macro_rules! select_idempotency_record {
    () => {
        "SELECT fingerprint, status_code, location, \
         response_body, expires_at FROM idempotency_records"
    };
}
pub(crate) use select_idempotency_record;

pub(crate) fn idempotency_record(row: &impl Fields) -> Result<IdempotencyRecord, StoreError> {
    Ok(IdempotencyRecord {
        fingerprint: digest(row, "fingerprint")?,
        response: StoredResponse {
            status: narrow(row, "status_code")?,
            location: row.text_opt("location")?,
            body: row.bytes("response_body")?,
        },
        expires_at: row.time("expires_at")?,
    })
}

/// A product from its row and its variants' rows.
pub(crate) fn product(
    id: tally_domain::ids::ProductId,
    row: &impl Fields,
    variants: &[impl Fields],
) -> Result<ProductRecord, StoreError> {
    Ok(ProductRecord {
        id,
        name: row.text("name")?,
        variants: variants
            .iter()
            .map(|row| {
                Ok(VariantRecord {
                    sku: row.text("sku")?,
                    prices: row.json("prices")?,
                })
            })
            .collect::<Result<_, StoreError>>()?,
        created_at: row.time("created_at")?,
    })
}

/// A variant's SKU and its prices as domain money: what placing an order prices lines with.
pub(crate) fn catalog_price(
    row: &impl Fields,
) -> Result<(Sku, HashMap<Currency, Money>), StoreError> {
    let sku = row.text("sku")?;
    let prices = crate::codec::parse_prices(&sku, row.json("prices")?)?;
    Ok((Sku::parse(&sku).map_err(|e| corrupt("sku", e))?, prices))
}

pub(crate) fn stock_record(row: &impl Fields) -> Result<StockRecord, StoreError> {
    Ok(StockRecord {
        location: row.text("location")?,
        on_hand: row.int("on_hand")?,
        reserved: row.int("reserved")?,
        updated_at: row.time("updated_at")?,
    })
}

pub(crate) fn stock_level(row: &impl Fields) -> Result<StockLevel, StoreError> {
    Ok(StockLevel {
        on_hand: row.int("on_hand")?,
        reserved: row.int("reserved")?,
    })
}

pub(crate) fn locked_stock(row: &impl Fields) -> Result<LockedStock, StoreError> {
    Ok(LockedStock {
        sku: row.text("sku")?,
        location: row.text("location")?,
        level: stock_level(row)?,
    })
}

/// Every stock row (`levels`: tenant, SKU, location, on hand, reserved) with the sums of its
/// movements (`sums`: the same key, a kind and its total).
pub(crate) fn stock_reconciliation(
    levels: &[impl Fields],
    sums: &[impl Fields],
) -> Result<Vec<StockReconciliation>, StoreError> {
    let mut movements: HashMap<(Uuid, String, String), BTreeMap<String, i64>> = HashMap::new();
    for row in sums {
        movements
            .entry(stock_key(row)?)
            .or_default()
            .insert(row.text("kind")?, row.int("total")?);
    }
    levels
        .iter()
        .map(|row| {
            let (tenant, sku, location) = stock_key(row)?;
            Ok(StockReconciliation {
                movements: movements
                    .remove(&(tenant, sku.clone(), location.clone()))
                    .unwrap_or_default(),
                tenant_id: TenantId::from_uuid(tenant),
                sku,
                location,
                on_hand: row.int("on_hand")?,
                reserved: row.int("reserved")?,
            })
        })
        .collect()
}

fn stock_key(row: &impl Fields) -> Result<(Uuid, String, String), StoreError> {
    Ok((
        row.uuid("tenant_id")?,
        row.text("sku")?,
        row.text("location")?,
    ))
}

/// A tenant's journal from its entries' rows (in insertion order) and all their postings' rows
/// (by entry and line).
pub(crate) fn journal(
    tenant: TenantId,
    entries: &[impl Fields],
    postings: &[impl Fields],
) -> Result<Vec<StoredEntry>, StoreError> {
    let mut by_entry: HashMap<String, Vec<PostingRecord>> = HashMap::new();
    for row in postings {
        by_entry
            .entry(row.text("entry_id")?)
            .or_default()
            .push(PostingRecord {
                account: row.text("account")?,
                currency: row.text("currency")?,
                amount_minor: row.int("amount_minor")?,
            });
    }
    entries
        .iter()
        .map(|row| {
            let id = row.text("id")?;
            Ok(StoredEntry {
                postings: by_entry.remove(&id).unwrap_or_default(),
                record: JournalEntryRecord {
                    tenant_id: tenant,
                    kind: row.text("kind")?,
                    pending_id: row.text_opt("pending_id")?,
                    order_id: row.uuid_opt("order_id")?.map(OrderId::from_uuid),
                    body: row.json("body")?,
                    created_at: row.time("created_at")?,
                    id,
                },
            })
        })
        .collect()
}

pub(crate) fn account_posting(row: &impl Fields) -> Result<AccountPosting, StoreError> {
    Ok(AccountPosting {
        entry_id: row.text("entry_id")?,
        kind: row.text("kind")?,
        pending_id: row.text_opt("pending_id")?,
        currency: row.text("currency")?,
        amount_minor: row.int("amount_minor")?,
        created_at: row.time("created_at")?,
    })
}

pub(crate) fn settled_order(row: &impl Fields) -> Result<(OrderId, String), StoreError> {
    Ok((OrderId::from_uuid(row.uuid("id")?), row.text("currency")?))
}

pub(crate) fn status_count(row: &impl Fields) -> Result<(String, i64), StoreError> {
    Ok((row.text("status")?, row.int("n")?))
}

/// The columns of an audit record as [`audit_row`] reads them; each engine adds its `WHERE` with
/// `concat!`.
macro_rules! select_audit_row {
    () => {
        "SELECT id, tenant_id, sequence, at, body, \
         entity_type, entity_id, prev_hash, hash FROM audit_records"
    };
}
pub(crate) use select_audit_row;

pub(crate) fn audit_row(row: &impl Fields) -> Result<AuditRow, StoreError> {
    Ok(AuditRow {
        id: row.uuid("id")?,
        tenant_id: TenantId::from_uuid(row.uuid("tenant_id")?),
        sequence: row.int_opt("sequence")?,
        at: row.time("at")?,
        entity_type: row.text("entity_type")?,
        entity_id: row.text("entity_id")?,
        body: row.json("body")?,
        prev_hash: row.bytes_opt("prev_hash")?,
        hash: row.bytes_opt("hash")?,
    })
}

/// A sealed record from its row (sequence, body, prev_hash, hash).
pub(crate) fn sealed_audit_record(
    row: &impl Fields,
) -> Result<tally_audit::AuditRecord, StoreError> {
    let sequence = row.int("sequence")?;
    let draft = row
        .json("body")
        .map_err(|e| StoreError::Corrupt(format!("audit draft {sequence}: {e}")))?;
    crate::audit::sealed_record(
        draft,
        sequence,
        &row.bytes("prev_hash")?,
        &row.bytes("hash")?,
    )
}

/// A tenant's chain head from its row (sequence, hash).
pub(crate) fn audit_head(row: &impl Fields) -> Result<tally_audit::ChainHead, StoreError> {
    Ok(tally_audit::ChainHead {
        sequence: row.int("sequence")?,
        hash: digest(row, "hash")
            .map_err(|_| StoreError::Corrupt("audit head hash is not 32 bytes".into()))?,
    })
}

/// A draft waiting to be sealed, from its row (seq, tenant_id, id).
pub(crate) fn draft_row(row: &impl Fields) -> Result<crate::audit::DraftRow, StoreError> {
    Ok(crate::audit::DraftRow {
        seq: row.int("seq")?,
        tenant: TenantId::from_uuid(row.uuid("tenant_id")?),
        id: row.uuid("id")?,
    })
}
