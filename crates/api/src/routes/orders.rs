//! `POST /v1/orders`, `GET /v1/orders/{id}` and `GET /v1/orders`: order intake, the hot path.

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tally_commands::Command;
use tally_domain::catalog::Sku;
use tally_domain::ids::OrderId;
use tally_domain::money::Currency;
use tally_domain::order::{
    Address, CountryCode, Customer, Email, LineRequest, NewOrder, Order, OrderStatus, Quantity,
};
use tally_domain::text::{Code, Text};
use tally_store::{NewEvent, OrderFilter, OrderRecord, StoredResponse};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::AppState;
use crate::auth::OrdersKey;
use crate::idempotency::{CommandRequest, NoBody, execute, render_json};
use crate::problem::{ApiError, Problem};
use crate::validate::Fields;

/// Orders per page when the client does not say.
pub const PAGE_LIMIT_DEFAULT: u32 = 20;
/// The largest page a client may ask for; bounds one listing query.
pub const PAGE_LIMIT_MAX: u32 = 100;

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderBody {
    /// The sales channel: 'web', 'mobile', 'pos-12', 'shopify'…
    pub channel: String,
    pub customer: CustomerBody,
    /// 1 to 100 lines, one per SKU. Prices come from the catalog, never from the client.
    pub lines: Vec<LineBody>,
    /// ISO 4217 code; every SKU must have a price in it.
    pub currency: String,
    pub shipping_address: AddressBody,
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomerBody {
    /// The channel's reference for the customer.
    pub id: String,
    pub email: Option<String>,
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LineBody {
    pub sku: String,
    /// A whole number from 1 to 10000.
    #[schema(value_type = i64, example = 2)]
    pub quantity: serde_json::Number,
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddressBody {
    pub name: String,
    pub line1: String,
    pub line2: Option<String>,
    pub city: String,
    pub region: Option<String>,
    pub postal_code: String,
    /// ISO 3166-1 alpha-2, such as 'US'.
    pub country: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OrderResponse {
    pub id: Uuid,
    pub status: String,
    pub channel: String,
    pub customer: CustomerBody,
    pub lines: Vec<LineResponse>,
    pub currency: String,
    /// Sum of line totals, in minor units of `currency`.
    pub total_minor: i64,
    pub shipping_address: AddressBody,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Every event of the order, oldest first. Absent in listings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeline: Option<Vec<TimelineEntry>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LineResponse {
    pub sku: String,
    pub quantity: u32,
    /// The catalog's unit price when the order was placed.
    pub unit_price_minor: i64,
    pub line_total_minor: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TimelineEntry {
    pub event_id: Uuid,
    /// CloudEvents type, such as 'tally.order.placed.v1'.
    #[serde(rename = "type")]
    pub event_type: String,
    pub time: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OrderPage {
    pub data: Vec<OrderResponse>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct OrderQuery {
    /// Only this customer's orders.
    pub customer: Option<String>,
    /// Only orders in this status.
    pub status: Option<String>,
    pub channel: Option<String>,
    /// RFC 3339; orders created at or after.
    pub created_from: Option<String>,
    /// RFC 3339; orders created before.
    pub created_before: Option<String>,
    /// From a previous page's `next_cursor`.
    pub cursor: Option<String>,
    /// 1 to 100, default 20.
    pub limit: Option<u32>,
}

fn text(fields: &mut Fields, pointer: &str, raw: &str) -> Option<Text> {
    fields.check(pointer, Text::parse(raw))
}

impl AddressBody {
    fn parse(&self, fields: &mut Fields) -> Option<Address> {
        let name = text(fields, "/shipping_address/name", &self.name);
        let line1 = text(fields, "/shipping_address/line1", &self.line1);
        let line2 = fields.check_optional(
            "/shipping_address/line2",
            self.line2.as_deref(),
            Text::parse,
        );
        let city = text(fields, "/shipping_address/city", &self.city);
        let region = fields.check_optional(
            "/shipping_address/region",
            self.region.as_deref(),
            Text::parse,
        );
        let postal_code = text(fields, "/shipping_address/postal_code", &self.postal_code);
        let country = fields.check(
            "/shipping_address/country",
            CountryCode::parse(&self.country),
        );
        Some(Address {
            name: name?,
            line1: line1?,
            line2: line2?,
            city: city?,
            region: region?,
            postal_code: postal_code?,
            country: country?,
        })
    }
}

impl OrderBody {
    fn parse(&self) -> Result<NewOrder, ApiError> {
        let mut fields = Fields::default();
        let channel = fields.check("/channel", Code::parse(&self.channel));
        let customer_id = fields.check("/customer/id", Code::parse(&self.customer.id));
        let email = fields.check_optional(
            "/customer/email",
            self.customer.email.as_deref(),
            Email::parse,
        );
        let currency = fields.check("/currency", Currency::parse(&self.currency));
        let address = self.shipping_address.parse(&mut fields);
        let mut lines = Vec::with_capacity(self.lines.len());
        for (i, line) in self.lines.iter().enumerate() {
            let sku = fields.check(format!("/lines/{i}/sku"), Sku::parse(&line.sku));
            let pointer = format!("/lines/{i}/quantity");
            let quantity = match line.quantity.as_i64() {
                Some(raw) => fields.check(pointer, Quantity::parse(raw)),
                None => fields.check(pointer, Quantity::parse(0)),
            };
            if let (Some(sku), Some(quantity)) = (sku, quantity) {
                lines.push(LineRequest { sku, quantity });
            }
        }
        let order = match (channel, customer_id, email, currency, address) {
            (Some(channel), Some(id), Some(email), Some(currency), Some(address)) => {
                let customer = Customer { id, email };
                match NewOrder::parse(channel, customer, lines, currency, address) {
                    Ok(order) => Some(order),
                    Err(error) => {
                        fields.push("/lines", error);
                        None
                    }
                }
            }
            _ => None,
        };
        fields.finish(order)
    }
}

fn address_body(address: &Address) -> AddressBody {
    AddressBody {
        name: address.name.as_str().to_owned(),
        line1: address.line1.as_str().to_owned(),
        line2: address.line2.as_ref().map(|t| t.as_str().to_owned()),
        city: address.city.as_str().to_owned(),
        region: address.region.as_ref().map(|t| t.as_str().to_owned()),
        postal_code: address.postal_code.as_str().to_owned(),
        country: address.country.as_str().to_owned(),
    }
}

pub(crate) fn render_placed(order: &Order, events: &[NewEvent]) -> StoredResponse {
    let body = OrderResponse {
        id: order.id.as_uuid(),
        status: order.status.as_str().to_owned(),
        channel: order.channel.as_str().to_owned(),
        customer: CustomerBody {
            id: order.customer.id.as_str().to_owned(),
            email: order.customer.email.as_ref().map(|e| e.as_str().to_owned()),
        },
        lines: order
            .lines
            .iter()
            .map(|l| LineResponse {
                sku: l.sku.as_str().to_owned(),
                quantity: l.quantity.get(),
                unit_price_minor: l.unit_price_minor,
                line_total_minor: l.line_total_minor,
            })
            .collect(),
        currency: order.currency.code().to_owned(),
        total_minor: order.total_minor,
        shipping_address: address_body(&order.shipping_address),
        created_at: order.created_at,
        updated_at: order.created_at,
        timeline: Some(
            events
                .iter()
                .map(|e| TimelineEntry {
                    event_id: e.id.as_uuid(),
                    event_type: e.event_type.to_owned(),
                    time: e.time,
                })
                .collect(),
        ),
    };
    render_json(
        StatusCode::CREATED,
        Some(format!("/v1/orders/{}", order.id)),
        &body,
    )
}

pub(crate) fn render_changed(record: &OrderRecord) -> StoredResponse {
    let body = order_response(record.clone(), None);
    render_json(
        StatusCode::ACCEPTED,
        Some(format!("/v1/orders/{}", record.id)),
        &body,
    )
}

fn order_response(record: OrderRecord, timeline: Option<Vec<TimelineEntry>>) -> OrderResponse {
    let address = record.shipping_address;
    OrderResponse {
        id: record.id.as_uuid(),
        status: record.status,
        channel: record.channel,
        customer: CustomerBody {
            id: record.customer_id,
            email: record.customer_email,
        },
        lines: record
            .lines
            .into_iter()
            .map(|l| LineResponse {
                sku: l.sku,
                quantity: l.quantity,
                unit_price_minor: l.unit_price_minor,
                line_total_minor: l.line_total_minor,
            })
            .collect(),
        currency: record.currency,
        total_minor: record.total_minor,
        shipping_address: AddressBody {
            name: address.name,
            line1: address.line1,
            line2: address.line2,
            city: address.city,
            region: address.region,
            postal_code: address.postal_code,
            country: address.country,
        },
        created_at: record.created_at,
        updated_at: record.updated_at,
        timeline,
    }
}

/// Place an order. Prices come from the catalog; the response is stored under the
/// Idempotency-Key and replayed for retries.
#[utoipa::path(
    post, path = "/v1/orders", tag = "orders",
    request_body = OrderBody,
    params(("Idempotency-Key" = String, Header, description = "Unique per order; retries reuse it")),
    responses(
        (status = 201, body = OrderResponse, description = "Placed (or replayed, with Idempotent-Replayed: true)"),
        (status = 400, body = Problem), (status = 409, body = Problem, description = "Same key in flight; see Retry-After"),
        (status = 422, body = Problem),
    ),
    security(("api_key" = []))
)]
pub async fn place_order(
    State(state): State<AppState>,
    OrdersKey(principal): OrdersKey,
    request: CommandRequest<OrderBody>,
) -> Result<Response, ApiError> {
    let order = request.body.parse()?;
    execute(
        &state,
        &principal,
        request,
        Command::PlaceOrder(tally_commands::place_order::PlaceOrder(order)),
        &super::render,
    )
    .await
}

/// Ask to cancel an order. The checkout saga cancels it at its next step, voiding the
/// authorization or refunding the capture and releasing the stock; the timeline shows it.
/// Orders already handed to the carrier cannot be cancelled (409): return them instead.
#[utoipa::path(
    post, path = "/v1/orders/{id}/cancel", tag = "orders",
    params(("id" = Uuid, Path), ("Idempotency-Key" = String, Header, description = "Unique per request; retries reuse it")),
    responses(
        (status = 202, body = OrderResponse, description = "Cancellation requested"),
        (status = 404, body = Problem), (status = 409, body = Problem),
    ),
    security(("api_key" = []))
)]
pub async fn cancel_order(
    State(state): State<AppState>,
    OrdersKey(principal): OrdersKey,
    Path(id): Path<String>,
    request: CommandRequest<NoBody>,
) -> Result<Response, ApiError> {
    let id: OrderId = id.parse().map_err(|_| ApiError::NotFound("order"))?;
    execute(
        &state,
        &principal,
        request,
        Command::CancelOrder(tally_commands::cancel_order::CancelOrder(id)),
        &super::render,
    )
    .await
}

/// Record that a delivered order came back: its goods return to stock and the checkout saga
/// refunds the payment.
#[utoipa::path(
    post, path = "/v1/orders/{id}/return", tag = "orders",
    params(("id" = Uuid, Path), ("Idempotency-Key" = String, Header, description = "Unique per request; retries reuse it")),
    responses(
        (status = 202, body = OrderResponse, description = "Returned; the refund follows"),
        (status = 404, body = Problem), (status = 409, body = Problem),
    ),
    security(("api_key" = []))
)]
pub async fn return_order(
    State(state): State<AppState>,
    OrdersKey(principal): OrdersKey,
    Path(id): Path<String>,
    request: CommandRequest<NoBody>,
) -> Result<Response, ApiError> {
    let id: OrderId = id.parse().map_err(|_| ApiError::NotFound("order"))?;
    execute(
        &state,
        &principal,
        request,
        Command::ReturnOrder(tally_commands::return_order::ReturnOrder(id)),
        &super::render,
    )
    .await
}

/// Get an order with its timeline.
#[utoipa::path(
    get, path = "/v1/orders/{id}", tag = "orders",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = OrderResponse), (status = 404, body = Problem)),
    security(("api_key" = []))
)]
pub async fn get_order(
    State(state): State<AppState>,
    OrdersKey(principal): OrdersKey,
    Path(id): Path<String>,
) -> Result<Json<OrderResponse>, ApiError> {
    let id: OrderId = id.parse().map_err(|_| ApiError::NotFound("order"))?;
    let (record, timeline) = state
        .inner
        .store
        .order_and_timeline(principal.tenant, id)
        .await?
        .ok_or(ApiError::NotFound("order"))?;
    let timeline = timeline
        .into_iter()
        .map(|e| TimelineEntry {
            event_id: e.event_id.as_uuid(),
            event_type: e.event_type,
            time: e.time,
        })
        .collect();
    Ok(Json(order_response(record, Some(timeline))))
}

fn parse_time(name: &str, raw: Option<&str>) -> Result<Option<DateTime<Utc>>, ApiError> {
    raw.map(|raw| {
        DateTime::parse_from_rfc3339(raw)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| {
                ApiError::InvalidQuery(format!(
                    "'{name}' must be an RFC 3339 time such as 2026-01-31T00:00:00Z"
                ))
            })
    })
    .transpose()
}

fn encode_cursor(id: OrderId) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id.as_uuid().as_bytes())
}

fn decode_cursor(raw: &str) -> Result<OrderId, ApiError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(raw)
        .ok()
        .and_then(|bytes| Uuid::from_slice(&bytes).ok())
        .map(OrderId::from_uuid)
        .ok_or_else(|| ApiError::InvalidQuery("'cursor' is not a cursor this API returned".into()))
}

impl OrderQuery {
    fn parse(raw: Option<&str>) -> Result<(OrderFilter, u32), ApiError> {
        let query: OrderQuery = serde_urlencoded::from_str(raw.unwrap_or(""))
            .map_err(|e| ApiError::InvalidQuery(e.to_string()))?;
        let limit = query.limit.unwrap_or(PAGE_LIMIT_DEFAULT);
        if !(1..=PAGE_LIMIT_MAX).contains(&limit) {
            return Err(ApiError::InvalidQuery(format!(
                "'limit' must be from 1 to {PAGE_LIMIT_MAX}"
            )));
        }
        let status = query
            .status
            .as_deref()
            .map(|s| OrderStatus::parse(s).map(|s| s.as_str().to_owned()))
            .transpose()
            .map_err(|e| ApiError::InvalidQuery(format!("'status': {e}")))?;
        let filter = OrderFilter {
            customer_id: query.customer,
            status,
            channel: query.channel,
            created_from: parse_time("created_from", query.created_from.as_deref())?,
            created_before: parse_time("created_before", query.created_before.as_deref())?,
            before_id: query.cursor.as_deref().map(decode_cursor).transpose()?,
        };
        Ok((filter, limit))
    }
}

/// List orders, newest first, with filters and cursor pagination.
#[utoipa::path(
    get, path = "/v1/orders", tag = "orders",
    params(OrderQuery),
    responses((status = 200, body = OrderPage), (status = 400, body = Problem)),
    security(("api_key" = []))
)]
pub async fn list_orders(
    State(state): State<AppState>,
    OrdersKey(principal): OrdersKey,
    RawQuery(raw): RawQuery,
) -> Result<Json<OrderPage>, ApiError> {
    let (filter, limit) = OrderQuery::parse(raw.as_deref())?;
    // One more than asked tells whether another page exists.
    let mut records = state
        .inner
        .store
        .orders(principal.tenant, &filter, limit + 1)
        .await?;
    let more = records.len() > limit as usize;
    records.truncate(limit as usize);
    let next_cursor = more
        .then(|| records.last().map(|r| encode_cursor(r.id)))
        .flatten();
    Ok(Json(OrderPage {
        data: records
            .into_iter()
            .map(|r| order_response(r, None))
            .collect(),
        next_cursor,
    }))
}
