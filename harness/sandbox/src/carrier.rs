//! The carrier: shipments, each followed by its `shipment.shipped` and `shipment.delivered`
//! webhooks ([`crate::webhooks`]).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::Shared;
use crate::effects::{EffectKind, NewEffect};
use crate::exchange::{self, Mutation, Outcome, Problem, Stored, check_text};
use crate::webhooks::{self, ShipmentPlan};

/// Lines per shipment at most. Far above any parcel Tally sends (orders hold at most 100
/// lines); it only bounds the work one request can ask for.
pub const LINES_COUNT_MAX: usize = 1_000;

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ShipmentRequest {
    order_id: String,
    lines: Vec<ShipmentLine>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ShipmentLine {
    sku: String,
    quantity: u32,
}

/// `POST /carrier/shipments`
pub(crate) async fn create_shipment(
    State(shared): State<Arc<Shared>>,
    request: Mutation<ShipmentRequest>,
) -> Response {
    if let Err(problem) = check(&request.body) {
        return problem.into_response();
    }
    exchange::exchange(shared, request, apply_shipment, |shared, plan| {
        shared
            .tasks
            .spawn(webhooks::run_shipment(Arc::clone(shared), plan));
    })
    .await
}

fn check(body: &ShipmentRequest) -> Result<(), Problem> {
    check_text("order_id", &body.order_id)?;
    if body.lines.is_empty() || body.lines.len() > LINES_COUNT_MAX {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            format!("`lines` must hold 1 to {LINES_COUNT_MAX} lines"),
        ));
    }
    for line in &body.lines {
        check_text("sku", &line.sku)?;
        if line.quantity == 0 {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "every line's `quantity` must be positive",
            ));
        }
    }
    Ok(())
}

fn apply_shipment(state: &mut exchange::State, body: ShipmentRequest) -> Outcome<ShipmentPlan> {
    let shipment_id = state.ids.next("shp");
    let tracking_number = state.ids.tracking_number();
    let response = json!({"shipment_id": shipment_id, "tracking_number": tracking_number});
    // The delivery ids are drawn now, under the lock, so that they come from the seed in a
    // fixed order rather than whenever the webhook task runs.
    let plan = ShipmentPlan {
        shipped_delivery_id: state.ids.next("whd"),
        delivered_delivery_id: state.ids.next("whd"),
        shipment_id,
        order_id: body.order_id.clone(),
        tracking_number,
    };
    Outcome::Applied {
        effect: NewEffect {
            kind: EffectKind::Shipment,
            order_id: body.order_id,
            amount_minor: None,
            currency: None,
        },
        response: Stored::new(StatusCode::CREATED, response),
        then: plan,
    }
}
