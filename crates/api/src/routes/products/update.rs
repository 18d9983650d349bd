//! `PATCH /v1/products/{id}`: rename a product or reprice its variants, idempotent like every
//! mutating route, with a `tally.product.updated.v1` event when it changes anything.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use tally_commands::Command;
use tally_commands::update_product::UpdateProduct;
use tally_domain::catalog::{Product, ProductChange, Sku};
use tally_domain::ids::ProductId;
use tally_domain::money::{Currency, Money};
use tally_domain::text::Text;
use tally_store::StoredResponse;
use utoipa::ToSchema;

use super::ProductResponse;
use crate::AppState;
use crate::auth::AdminKey;
use crate::idempotency::{CommandRequest, execute, render_json};
use crate::problem::{ApiError, Problem};
use crate::validate::Fields;

/// What to change; at least one of the two. Variants not named keep their prices.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProductChangeBody {
    /// The new display name, 1 to 200 characters.
    pub name: Option<String>,
    /// Variants to reprice, by SKU: each named variant's prices are replaced whole.
    pub variants: Option<Vec<super::VariantBody>>,
}

impl ProductChangeBody {
    fn parse(&self) -> Result<ProductChange, ApiError> {
        let mut fields = Fields::default();
        let name = self
            .name
            .as_deref()
            .and_then(|name| fields.check("/name", Text::parse(name)));
        let mut prices: BTreeMap<Sku, BTreeMap<Currency, Money>> = BTreeMap::new();
        for (i, variant) in self.variants.iter().flatten().enumerate() {
            let sku = fields.check(format!("/variants/{i}/sku"), Sku::parse(&variant.sku));
            let variant_prices = variant.parse_prices(&mut fields, i);
            if let Some(sku) = sku
                && prices.insert(sku.clone(), variant_prices).is_some()
            {
                fields.push(
                    format!("/variants/{i}/sku"),
                    tally_domain::ParseError::new(format!("SKU '{sku}' appears more than once")),
                );
            }
        }
        let change = match ProductChange::parse(name, prices) {
            Ok(change) => Some(change),
            Err(error) => {
                fields.push("", error);
                None
            }
        };
        fields.finish(change)
    }
}

pub(crate) fn render(product: &Product) -> StoredResponse {
    render_json(StatusCode::OK, None, &super::product_response(product))
}

/// Rename a product or reprice some of its variants.
#[utoipa::path(
    patch, path = "/v1/products/{id}", tag = "catalog",
    request_body = ProductChangeBody,
    params(
        ("id" = uuid::Uuid, Path),
        ("Idempotency-Key" = String, Header, description = "Unique per request; retries reuse it"),
    ),
    responses(
        (status = 200, body = ProductResponse, description = "Changed, or already as asked (or replayed, with Idempotent-Replayed: true)"),
        (status = 400, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem), (status = 422, body = Problem),
    ),
    security(("api_key" = []))
)]
pub async fn update_product(
    State(state): State<AppState>,
    AdminKey(principal): AdminKey,
    Path(id): Path<String>,
    request: CommandRequest<ProductChangeBody>,
) -> Result<Response, ApiError> {
    let id: ProductId = id.parse().map_err(|_| ApiError::NotFound("product"))?;
    let change = request.body.parse()?;
    execute(
        &state,
        &principal,
        request,
        Command::UpdateProduct(UpdateProduct { id, change }),
        &crate::routes::render,
    )
    .await
}
