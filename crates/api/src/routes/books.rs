//! `GET /v1/ledger/accounts/{id}` and `GET /v1/audit?entity=TYPE:ID`: where every cent went
//! and who changed what, read-only.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::AppState;
use crate::auth::AdminKey;
use crate::problem::{ApiError, Problem};

#[derive(Debug, Serialize, ToSchema)]
pub struct AccountBalance {
    /// Sum of posted entries, debit positive, in minor units.
    pub posted_minor: i64,
    /// Sum of pending entries not yet posted or voided.
    pub pending_minor: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AccountPostingView {
    pub entry_id: String,
    /// posted, pending, post_pending or void_pending.
    pub kind: String,
    pub currency: String,
    pub amount_minor: i64,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AccountView {
    pub account: String,
    /// Per ISO 4217 currency.
    pub balances: BTreeMap<String, AccountBalance>,
    pub postings: Vec<AccountPostingView>,
}

/// An account's balances and postings. Accounts: `psp:clearing`, `revenue:sales`,
/// `revenue:refunds`, `order:{order id}:receivable`.
#[utoipa::path(
    get, path = "/v1/ledger/accounts/{id}", tag = "ledger",
    params(("id" = String, Path, description = "An account code such as psp:clearing")),
    responses((status = 200, body = AccountView), (status = 404, body = Problem)),
    security(("api_key" = []))
)]
pub async fn account(
    State(state): State<AppState>,
    AdminKey(principal): AdminKey,
    Path(id): Path<String>,
) -> Result<Json<AccountView>, ApiError> {
    let postings = state
        .inner
        .store
        .account_postings(principal.tenant, &id)
        .await?;
    if postings.is_empty() {
        return Err(ApiError::NotFound("account"));
    }
    // Two-phase entries: a pending entry counts as pending until a post or void resolves it;
    // a post counts as posted; a void moves nothing.
    let resolved: std::collections::HashSet<&str> = postings
        .iter()
        .filter_map(|p| p.pending_id.as_deref())
        .collect();
    let mut balances: BTreeMap<String, AccountBalance> = BTreeMap::new();
    for posting in &postings {
        let balance = balances
            .entry(posting.currency.clone())
            .or_insert(AccountBalance {
                posted_minor: 0,
                pending_minor: 0,
            });
        match posting.kind.as_str() {
            "pending" if !resolved.contains(posting.entry_id.as_str()) => {
                balance.pending_minor += posting.amount_minor
            }
            "posted" | "post_pending" => balance.posted_minor += posting.amount_minor,
            _ => {}
        }
    }
    Ok(Json(AccountView {
        account: id,
        balances,
        postings: postings
            .into_iter()
            .map(|p| AccountPostingView {
                entry_id: p.entry_id,
                kind: p.kind,
                currency: p.currency,
                amount_minor: p.amount_minor,
                created_at: p.created_at,
            })
            .collect(),
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// `TYPE:ID`, such as `order:0192…` or `product:0192…`.
    pub entity: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEntry {
    pub id: Uuid,
    /// Place in the tenant's hash chain; absent until the relay seals it (milliseconds).
    pub sequence: Option<i64>,
    pub at: DateTime<Utc>,
    /// Who, what (before and after), why: the audit draft as recorded.
    #[schema(value_type = Object)]
    pub record: serde_json::Value,
    /// Hex SHA-256 of the record in its chain.
    pub hash: Option<String>,
}

/// The history of one entity: every change, who made it, before and after, and why.
#[utoipa::path(
    get, path = "/v1/audit", tag = "ledger", params(AuditQuery),
    responses((status = 200, body = Vec<AuditEntry>), (status = 400, body = Problem)),
    security(("api_key" = []))
)]
pub async fn audit(
    State(state): State<AppState>,
    AdminKey(principal): AdminKey,
    RawQuery(raw): RawQuery,
) -> Result<Json<Vec<AuditEntry>>, ApiError> {
    let query: AuditQuery = serde_urlencoded::from_str(raw.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::InvalidQuery(e.to_string()))?;
    let (entity_type, entity_id) = query.entity.split_once(':').ok_or_else(|| {
        ApiError::InvalidQuery("'entity' must be TYPE:ID, such as order:0192…".into())
    })?;
    let rows = state
        .inner
        .store
        .audit_of(principal.tenant, entity_type, entity_id)
        .await?;
    Ok(Json(
        rows.into_iter()
            .map(|r| AuditEntry {
                id: r.id,
                sequence: r.sequence,
                at: r.at,
                record: r.body,
                hash: r.hash.map(hex::encode),
            })
            .collect(),
    ))
}
