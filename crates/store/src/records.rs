//! Row types: what the store accepts and returns. They are plain data, separate from the domain
//! types (which carry invariants) and from the wire types (which carry the API's shape).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tally_domain::ids::{ApiKeyId, EventId, OrderId, ProductId, TenantId};

#[derive(Debug, Clone)]
pub struct NewTenant {
    pub id: TenantId,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct NewApiKey {
    pub id: ApiKeyId,
    pub tenant_id: TenantId,
    pub key_hash: [u8; 32],
    /// Comma-separated scope names, as the API layer defines them.
    pub scopes: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    pub id: ApiKeyId,
    pub tenant_id: TenantId,
    pub scopes: String,
    pub revoked: bool,
}

/// An HTTP response kept under an idempotency key, returned again byte for byte on replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    pub status: u16,
    pub location: Option<String>,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    pub fingerprint: [u8; 32],
    pub response: StoredResponse,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct NewIdempotencyRecord<'a> {
    pub key: &'a str,
    pub fingerprint: [u8; 32],
    pub response: &'a StoredResponse,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductRecord {
    pub id: ProductId,
    pub name: String,
    pub variants: Vec<VariantRecord>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VariantRecord {
    pub sku: String,
    /// Unit price in minor units per ISO 4217 code.
    pub prices: BTreeMap<String, i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StockRecord {
    pub location: String,
    pub on_hand: i64,
    pub reserved: i64,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineRecord {
    pub sku: String,
    pub quantity: u32,
    pub unit_price_minor: i64,
    pub line_total_minor: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressRecord {
    pub name: String,
    pub line1: String,
    pub line2: Option<String>,
    pub city: String,
    pub region: Option<String>,
    pub postal_code: String,
    pub country: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRecord {
    pub id: OrderId,
    pub channel: String,
    pub customer_id: String,
    pub customer_email: Option<String>,
    pub currency: String,
    pub total_minor: i64,
    pub status: String,
    pub lines: Vec<LineRecord>,
    pub shipping_address: AddressRecord,
    /// What the checkout saga has done for the order.
    pub saga: tally_domain::checkout::Saga,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Filters of the order listing; every field narrows the result.
#[derive(Debug, Clone, Default)]
pub struct OrderFilter {
    pub customer_id: Option<String>,
    pub status: Option<String>,
    pub channel: Option<String>,
    pub created_from: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
    /// Cursor: only orders older than this one (ids are time-ordered UUIDv7).
    pub before_id: Option<OrderId>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineEntry {
    pub event_id: EventId,
    pub event_type: String,
    pub time: DateTime<Utc>,
}

/// An event as written to the outbox: a CloudEvents 1.0 envelope plus its log partition.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub id: EventId,
    pub tenant_id: TenantId,
    pub event_type: &'static str,
    pub source: String,
    pub subject: String,
    pub partition_key: String,
    pub partition: u32,
    pub time: DateTime<Utc>,
    pub data: serde_json::Value,
    pub correlation_id: Option<String>,
    pub causation_id: Option<String>,
    pub traceparent: Option<String>,
}

/// An event's data as the JSON text the log holds (on PostgreSQL, `jsonb` as the server writes
/// it). Nothing that reads the log on the way to an effect looks inside it (consumers route on
/// the envelope, the relay forwards the text), so it is checked to be JSON but never parsed
/// into a tree unless someone asks for its fields.
#[derive(Debug, Clone)]
pub struct EventData(Box<serde_json::value::RawValue>);

impl EventData {
    /// Takes `text` as it is, once it is checked to be one JSON value.
    pub fn from_json(text: String) -> Result<Self, serde_json::Error> {
        serde_json::value::RawValue::from_string(text).map(Self)
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// The data parsed, for whoever needs its fields.
    pub fn value(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::from_str(self.get())
    }
}

impl From<Box<serde_json::value::RawValue>> for EventData {
    fn from(raw: Box<serde_json::value::RawValue>) -> Self {
        Self(raw)
    }
}

/// The same text; two spellings of one value differ (the log keeps what it was given).
impl PartialEq for EventData {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

/// An event read from the log, with its position.
#[derive(Debug, Clone, PartialEq)]
pub struct LogEvent {
    pub position: i64,
    pub id: EventId,
    pub tenant_id: TenantId,
    pub event_type: String,
    pub source: String,
    pub subject: String,
    pub partition_key: String,
    pub partition: u32,
    pub time: DateTime<Utc>,
    pub data: EventData,
    pub correlation_id: Option<String>,
    pub causation_id: Option<String>,
    pub traceparent: Option<String>,
}

/// An order locked for the rest of a transaction; `saga` is the copy a step changes before
/// writing it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderState {
    pub record: OrderRecord,
    pub saga: tally_domain::checkout::Saga,
}

/// One change of stock at one location, for reconciliation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StockMovement {
    pub sku: String,
    pub location: String,
    pub kind: MovementKind,
    pub quantity: i64,
    pub order_id: Option<OrderId>,
    pub at: DateTime<Utc>,
}

pub use tally_domain::inventory::MovementKind;

/// A stock row locked for update, by SKU and location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockedStock {
    pub sku: String,
    pub location: String,
    pub level: tally_domain::inventory::StockLevel,
}

/// Per SKU and location: the stored level and the sums of its movements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StockReconciliation {
    pub tenant_id: TenantId,
    pub sku: String,
    pub location: String,
    pub on_hand: i64,
    pub reserved: i64,
    /// Sum of movements per kind, by `MovementKind::as_str`.
    pub movements: BTreeMap<String, i64>,
}

/// One posting line of a journal entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostingRecord {
    pub account: String,
    pub currency: String,
    pub amount_minor: i64,
}

/// A journal entry to write; `body` is the ledger crate's full serialized entry.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJournalEntry {
    pub id: String,
    pub kind: String,
    pub pending_id: Option<String>,
    pub order_id: Option<OrderId>,
    pub postings: Vec<PostingRecord>,
    pub body: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

/// A stored journal entry.
#[derive(Debug, Clone, PartialEq)]
pub struct JournalEntryRecord {
    pub tenant_id: TenantId,
    pub id: String,
    pub kind: String,
    pub pending_id: Option<String>,
    pub order_id: Option<OrderId>,
    pub body: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

/// An audit record as inserted, before the relay seals it into its tenant's chain; `body` is
/// the audit crate's serialized draft.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAuditRecord {
    pub id: uuid::Uuid,
    pub tenant_id: TenantId,
    pub at: DateTime<Utc>,
    pub entity_type: String,
    pub entity_id: String,
    /// The draft as JSON text, serialized once where the record is made: a change's
    /// transaction only stores it.
    pub body: String,
}

/// A stored audit record; `sequence`, `prev_hash` and `hash` are `None` until sealed.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRow {
    pub id: uuid::Uuid,
    pub tenant_id: TenantId,
    pub sequence: Option<i64>,
    pub at: DateTime<Utc>,
    pub entity_type: String,
    pub entity_id: String,
    pub body: serde_json::Value,
    pub prev_hash: Option<Vec<u8>>,
    pub hash: Option<Vec<u8>>,
}

/// An event a consumer group gave up on, with every failed attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetterRecord {
    pub id: uuid::Uuid,
    pub tenant_id: TenantId,
    pub group: String,
    pub event_id: EventId,
    pub partition: u32,
    pub position: i64,
    pub event_type: String,
    pub subject: String,
    pub error: String,
    /// `[{"at": …, "error": …}]`, oldest first.
    pub attempts: serde_json::Value,
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A tenant's audit chain as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditChain {
    pub records: Vec<tally_audit::AuditRecord>,
    pub head: Option<tally_audit::ChainHead>,
    pub unsealed: i64,
}

/// A journal entry with its postings, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEntry {
    pub record: JournalEntryRecord,
    pub postings: Vec<PostingRecord>,
}

/// One posting of an account with its entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountPosting {
    pub entry_id: String,
    pub kind: String,
    /// The pending entry a post or void resolves.
    pub pending_id: Option<String>,
    pub currency: String,
    pub amount_minor: i64,
    pub created_at: DateTime<Utc>,
}
