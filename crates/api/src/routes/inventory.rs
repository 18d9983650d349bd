//! `POST /v1/inventory/adjustments` and `GET /v1/inventory/{sku}`: stock per SKU and location.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tally_commands::Command;
use tally_domain::catalog::Sku;
use tally_domain::inventory::{Adjustment, AdjustmentDelta, StockLevel};
use tally_domain::text::{Code, Text};
use tally_store::StoredResponse;
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::AdminKey;
use crate::idempotency::{CommandRequest, execute, render_json};
use crate::problem::{ApiError, Problem};
use crate::validate::Fields;

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdjustmentBody {
    pub sku: String,
    /// Location code, such as a warehouse or store: letters, digits, '-', '_', '.', ':'.
    pub location: String,
    /// Signed change of stock on hand: positive for received goods, negative for shrinkage.
    #[schema(value_type = i64, example = 25)]
    pub delta: serde_json::Number,
    /// Why stock changed, kept on the event.
    pub reason: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StockAtLocation {
    pub location: String,
    pub on_hand: i64,
    pub reserved: i64,
    pub available: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AdjustmentResponse {
    pub sku: String,
    #[serde(flatten)]
    pub stock: StockAtLocation,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InventoryResponse {
    pub sku: String,
    /// Totals over all locations.
    pub on_hand: i64,
    pub reserved: i64,
    pub available: i64,
    pub locations: Vec<LocationStock>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LocationStock {
    #[serde(flatten)]
    pub stock: StockAtLocation,
    pub updated_at: DateTime<Utc>,
}

impl AdjustmentBody {
    fn parse(&self) -> Result<Adjustment, ApiError> {
        let mut fields = Fields::default();
        let sku = fields.check("/sku", Sku::parse(&self.sku));
        let location = fields.check("/location", Code::parse(&self.location));
        let delta = fields
            .integer("/delta", &self.delta, "units")
            .and_then(|raw| fields.check("/delta", AdjustmentDelta::parse(raw)));
        let reason = fields.check_optional("/reason", self.reason.as_deref(), Text::parse);
        let adjustment = match (sku, location, delta, reason) {
            (Some(sku), Some(location), Some(delta), Some(reason)) => Some(Adjustment {
                sku,
                location,
                delta,
                reason,
            }),
            _ => None,
        };
        fields.finish(adjustment)
    }
}

pub(crate) fn render_adjusted(sku: &Sku, location: &Code, level: &StockLevel) -> StoredResponse {
    let body = AdjustmentResponse {
        sku: sku.as_str().to_owned(),
        stock: StockAtLocation {
            location: location.as_str().to_owned(),
            on_hand: level.on_hand,
            reserved: level.reserved,
            available: level.available(),
        },
    };
    render_json(StatusCode::OK, None, &body)
}

/// Adjust stock on hand of a SKU at a location by a signed delta. Available stock can never go
/// below zero: such an adjustment is refused with 409.
#[utoipa::path(
    post, path = "/v1/inventory/adjustments", tag = "inventory",
    request_body = AdjustmentBody,
    params(("Idempotency-Key" = String, Header, description = "Unique per request; retries reuse it")),
    responses(
        (status = 200, body = AdjustmentResponse, description = "Stock after the adjustment"),
        (status = 400, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem),
    ),
    security(("api_key" = []))
)]
pub async fn adjust(
    State(state): State<AppState>,
    AdminKey(principal): AdminKey,
    request: CommandRequest<AdjustmentBody>,
) -> Result<Response, ApiError> {
    let adjustment = request.body.parse()?;
    execute(
        &state,
        &principal,
        request,
        Command::AdjustStock(tally_commands::adjust_stock::AdjustStock(adjustment)),
        &super::render,
    )
    .await
}

/// Stock of a SKU: on hand, reserved and available per location and in total.
#[utoipa::path(
    get, path = "/v1/inventory/{sku}", tag = "inventory",
    params(("sku" = String, Path)),
    responses((status = 200, body = InventoryResponse), (status = 404, body = Problem)),
    security(("api_key" = []))
)]
pub async fn get_inventory(
    State(state): State<AppState>,
    AdminKey(principal): AdminKey,
    Path(sku): Path<String>,
) -> Result<Json<InventoryResponse>, ApiError> {
    let records = state
        .inner
        .store
        .stock_levels(principal.tenant, &sku)
        .await?
        .ok_or(ApiError::NotFound("SKU"))?;
    let locations: Vec<LocationStock> = records
        .into_iter()
        .map(|r| LocationStock {
            stock: StockAtLocation {
                location: r.location,
                on_hand: r.on_hand,
                reserved: r.reserved,
                available: r.on_hand - r.reserved,
            },
            updated_at: r.updated_at,
        })
        .collect();
    let on_hand = locations.iter().map(|l| l.stock.on_hand).sum();
    let reserved = locations.iter().map(|l| l.stock.reserved).sum();
    Ok(Json(InventoryResponse {
        sku,
        on_hand,
        reserved,
        available: on_hand - reserved,
        locations,
    }))
}
