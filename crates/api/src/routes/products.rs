//! `POST /v1/products` and `GET /v1/products/{id}`: the catalog; `PATCH` in [`update`].

pub mod update;

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tally_commands::Command;
use tally_domain::catalog::{NewProduct, Product, Sku, Variant};
use tally_domain::ids::ProductId;
use tally_domain::money::{Currency, Money};
use tally_domain::text::Text;
use tally_store::{ProductRecord, StoredResponse};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AppState;
use crate::auth::AdminKey;
use crate::idempotency::{CommandRequest, execute, render_json};
use crate::problem::{ApiError, Problem};
use crate::validate::Fields;

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProductBody {
    /// Display name, 1 to 200 characters.
    pub name: String,
    /// 1 to 100 variants, each with its own SKU.
    pub variants: Vec<VariantBody>,
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VariantBody {
    /// Unique per tenant: letters, digits, '-', '_' and '.', at most 64.
    pub sku: String,
    /// Unit price in minor units (cents for USD) per ISO 4217 currency code.
    #[schema(value_type = BTreeMap<String, i64>, example = json!({"USD": 1999, "EUR": 1899}))]
    pub prices: BTreeMap<String, serde_json::Number>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProductResponse {
    pub id: Uuid,
    pub name: String,
    pub variants: Vec<VariantResponse>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VariantResponse {
    pub sku: String,
    pub prices: BTreeMap<String, i64>,
}

impl VariantBody {
    /// The variant's prices, each error recorded at its JSON Pointer under `/variants/{i}`.
    pub(crate) fn parse_prices(&self, fields: &mut Fields, i: usize) -> BTreeMap<Currency, Money> {
        let mut prices = BTreeMap::new();
        for (code, amount) in &self.prices {
            let pointer = format!("/variants/{i}/prices/{code}");
            let currency = fields.check(pointer.clone(), Currency::parse(code));
            let minor = fields.integer(pointer.clone(), amount, "minor units");
            if let (Some(currency), Some(minor)) = (currency, minor)
                && let Some(price) = fields.check(pointer, Money::parse(minor, currency))
            {
                prices.insert(currency, price);
            }
        }
        prices
    }
}

impl ProductBody {
    fn parse(&self) -> Result<NewProduct, ApiError> {
        let mut fields = Fields::default();
        let name = fields.check("/name", Text::parse(&self.name));
        let mut variants = Vec::with_capacity(self.variants.len());
        for (i, variant) in self.variants.iter().enumerate() {
            let sku = fields.check(format!("/variants/{i}/sku"), Sku::parse(&variant.sku));
            let prices = variant.parse_prices(&mut fields, i);
            if let Some(sku) = sku {
                variants.push(Variant { sku, prices });
            }
        }
        let product = name.and_then(|name| match NewProduct::parse(name, variants) {
            Ok(product) => Some(product),
            Err(error) => {
                fields.push("/variants", error);
                None
            }
        });
        fields.finish(product)
    }
}

pub(crate) fn product_response(product: &Product) -> ProductResponse {
    ProductResponse {
        id: product.id.as_uuid(),
        name: product.name.as_str().to_owned(),
        variants: product
            .variants
            .iter()
            .map(|v| VariantResponse {
                sku: v.sku.as_str().to_owned(),
                prices: v
                    .prices
                    .iter()
                    .map(|(c, m)| (c.code().to_owned(), m.minor))
                    .collect(),
            })
            .collect(),
        created_at: product.created_at,
    }
}

pub(crate) fn render_created(product: &Product) -> StoredResponse {
    render_json(
        StatusCode::CREATED,
        Some(format!("/v1/products/{}", product.id)),
        &product_response(product),
    )
}

/// Create a product with its variants and prices.
#[utoipa::path(
    post, path = "/v1/products", tag = "catalog",
    request_body = ProductBody,
    params(("Idempotency-Key" = String, Header, description = "Unique per request; retries reuse it")),
    responses(
        (status = 201, body = ProductResponse, description = "Created (or replayed, with Idempotent-Replayed: true)"),
        (status = 400, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem),
    ),
    security(("api_key" = []))
)]
pub async fn create_product(
    State(state): State<AppState>,
    AdminKey(principal): AdminKey,
    request: CommandRequest<ProductBody>,
) -> Result<Response, ApiError> {
    let product = request.body.parse()?;
    execute(
        &state,
        &principal,
        request,
        Command::CreateProduct(tally_commands::create_product::CreateProduct(product)),
        &super::render,
    )
    .await
}

/// Get a product.
#[utoipa::path(
    get, path = "/v1/products/{id}", tag = "catalog",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = ProductResponse), (status = 404, body = Problem)),
    security(("api_key" = []))
)]
pub async fn get_product(
    State(state): State<AppState>,
    AdminKey(principal): AdminKey,
    Path(id): Path<String>,
) -> Result<Json<ProductResponse>, ApiError> {
    let id: ProductId = id.parse().map_err(|_| ApiError::NotFound("product"))?;
    let record: ProductRecord = state
        .inner
        .store
        .product(principal.tenant, id)
        .await?
        .ok_or(ApiError::NotFound("product"))?;
    Ok(Json(ProductResponse {
        id: record.id.as_uuid(),
        name: record.name,
        variants: record
            .variants
            .into_iter()
            .map(|v| VariantResponse {
                sku: v.sku,
                prices: v.prices,
            })
            .collect(),
        created_at: record.created_at,
    }))
}
