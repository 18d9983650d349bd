//! Audit records: who changed what, from what to what, why and when. A record is written in
//! the transaction of the change it describes; the relay later seals it into its tenant's hash
//! chain (see the `tally-audit` crate), so writers never wait for one another on the chain.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};
use tally_domain::ids::{ApiKeyId, TenantId};

use crate::records::{LogEvent, NewAuditRecord};

/// Who made a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", content = "id", rename_all = "snake_case")]
pub enum Actor {
    /// A client, by the API key it used.
    ApiKey(ApiKeyId),
    /// A partner, by name, through a verified webhook.
    Partner(String),
    /// Tally itself, by the consumer group that acted.
    System(String),
}

/// Why a change happened.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Cause {
    pub request_id: Option<String>,
    pub idempotency_key: Option<String>,
    pub event_id: Option<String>,
    pub causation_id: Option<String>,
}

impl Cause {
    /// A change a consumer made because of `event`.
    pub fn event(event: &LogEvent) -> Self {
        Self {
            request_id: event.correlation_id.clone(),
            idempotency_key: None,
            event_id: Some(event.id.to_string()),
            causation_id: event.causation_id.clone(),
        }
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

/// An audit record ready to insert.
pub fn record(
    tenant: TenantId,
    at: DateTime<Utc>,
    actor: Actor,
    change: Change<'_>,
    cause: Cause,
) -> NewAuditRecord {
    let id = uuid::Uuid::now_v7();
    NewAuditRecord {
        id,
        tenant_id: tenant,
        at,
        entity_type: change.entity_type.to_owned(),
        entity_id: change.entity_id.clone(),
        body: json!({
            "actor": actor,
            "entity_type": change.entity_type,
            "entity_id": change.entity_id,
            "action": change.action,
            "before": change.before,
            "after": change.after,
            "cause": cause,
        }),
    }
}
