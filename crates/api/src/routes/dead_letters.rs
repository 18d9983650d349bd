//! `GET /v1/dead-letters`, `POST /v1/dead-letters/{id}/retry` and `…/discard`: events a
//! consumer group gave up on, with their error and attempt history. Retry and discard are
//! transitions of the letter's status, so repeating one is harmless and needs no key.

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tally_store::DeadLetterRecord;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::AppState;
use crate::auth::AdminKey;
use crate::problem::{ApiError, Problem};

/// Letters listed at most per request.
pub const DEAD_LETTERS_LIMIT_MAX: u32 = 200;

#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetter {
    pub id: Uuid,
    pub group: String,
    pub event_id: Uuid,
    pub event_type: String,
    pub subject: String,
    pub partition: u32,
    pub position: i64,
    /// The last attempt's error.
    pub error: String,
    /// Every failed attempt: `[{"at", "error"}]`.
    #[schema(value_type = Vec<Object>)]
    pub attempts: serde_json::Value,
    /// open, retrying, retried or discarded.
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<DeadLetterRecord> for DeadLetter {
    fn from(r: DeadLetterRecord) -> Self {
        Self {
            id: r.id,
            group: r.group,
            event_id: r.event_id.as_uuid(),
            event_type: r.event_type,
            subject: r.subject,
            partition: r.partition,
            position: r.position,
            error: r.error,
            attempts: r.attempts,
            status: r.status,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeadLetterQuery {
    /// open, retrying, retried or discarded.
    pub status: Option<String>,
    /// 1 to 200, default 50.
    pub limit: Option<u32>,
}

const STATUSES: [&str; 4] = ["open", "retrying", "retried", "discarded"];

/// List dead letters, newest first.
#[utoipa::path(
    get, path = "/v1/dead-letters", tag = "operations", params(DeadLetterQuery),
    responses((status = 200, body = Vec<DeadLetter>), (status = 400, body = Problem)),
    security(("api_key" = []))
)]
pub async fn list(
    State(state): State<AppState>,
    AdminKey(principal): AdminKey,
    RawQuery(raw): RawQuery,
) -> Result<Json<Vec<DeadLetter>>, ApiError> {
    let query: DeadLetterQuery = serde_urlencoded::from_str(raw.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::InvalidQuery(e.to_string()))?;
    if let Some(status) = &query.status
        && !STATUSES.contains(&status.as_str())
    {
        return Err(ApiError::InvalidQuery(format!(
            "'status' must be one of {}",
            STATUSES.join(", ")
        )));
    }
    let limit = query.limit.unwrap_or(50);
    if !(1..=DEAD_LETTERS_LIMIT_MAX).contains(&limit) {
        return Err(ApiError::InvalidQuery(format!(
            "'limit' must be from 1 to {DEAD_LETTERS_LIMIT_MAX}"
        )));
    }
    let letters = state
        .inner
        .store
        .dead_letters(principal.tenant, query.status.as_deref(), limit)
        .await?;
    Ok(Json(letters.into_iter().map(DeadLetter::from).collect()))
}

/// Moves a letter from one of `from` to `to`, answering with the letter as it is now.
async fn transition(
    state: &AppState,
    principal: &crate::auth::Principal,
    id: &str,
    from: &[&str],
    to: &'static str,
) -> Result<(StatusCode, Json<DeadLetter>), ApiError> {
    let id: Uuid = id.parse().map_err(|_| ApiError::NotFound("dead letter"))?;
    let store = &state.inner.store;
    let letter = store
        .dead_letter(principal.tenant, id)
        .await?
        .ok_or(ApiError::NotFound("dead letter"))?;
    if letter.status != to {
        if !from.contains(&letter.status.as_str()) {
            return Err(ApiError::DeadLetterState {
                status: letter.status,
                wanted: to,
            });
        }
        let now = state.inner.clock.now();
        if !store
            .set_dead_letter_status(principal.tenant, id, &letter.status, to, now)
            .await?
        {
            return Err(ApiError::IdempotencyKeyInFlight);
        }
    }
    let letter = store
        .dead_letter(principal.tenant, id)
        .await?
        .ok_or(ApiError::NotFound("dead letter"))?;
    Ok((StatusCode::ACCEPTED, Json(letter.into())))
}

/// Ask the letter's consumer group to apply its event again.
#[utoipa::path(
    post, path = "/v1/dead-letters/{id}/retry", tag = "operations", params(("id" = Uuid, Path)),
    responses((status = 202, body = DeadLetter), (status = 404, body = Problem), (status = 409, body = Problem)),
    security(("api_key" = []))
)]
pub async fn retry(
    State(state): State<AppState>,
    AdminKey(principal): AdminKey,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<DeadLetter>), ApiError> {
    transition(&state, &principal, &id, &["open"], "retrying").await
}

/// Give up on the letter's event for good.
#[utoipa::path(
    post, path = "/v1/dead-letters/{id}/discard", tag = "operations", params(("id" = Uuid, Path)),
    responses((status = 202, body = DeadLetter), (status = 404, body = Problem), (status = 409, body = Problem)),
    security(("api_key" = []))
)]
pub async fn discard(
    State(state): State<AppState>,
    AdminKey(principal): AdminKey,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<DeadLetter>), ApiError> {
    transition(&state, &principal, &id, &["open"], tally_store::DISCARDED).await
}
