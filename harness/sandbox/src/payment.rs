//! The payment provider: authorizations, captures, voids and refunds.
//!
//! An authorization holds an amount; it is captured once (up to its amount) or voided, never
//! both. A capture can be refunded in parts up to the captured amount. Two amounts trigger
//! documented failures, so that tests can drive the unhappy paths without a fault knob:
//! [`DECLINE_REMAINDER`] and [`CAPTURE_FAILURE_REMAINDER`]. Requests refused for an unknown id
//! or a wrong state (404, 409, 422) change nothing and record no effect; a 409 names the
//! authorization's state in its `code` ([`CAPTURED_CODE`], [`VOIDED_CODE`]).
//!
//! As a real provider does, a request repeated under its idempotency key is answered with the
//! response stored the first time (with `Idempotent-Replayed: true`), whatever happened to the
//! authorization since: an authorization asked for again after it was voided answers with the
//! same `authorization_id`, so a caller that lost the first answer learns what to void.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::Shared;
use crate::effects::{EffectKind, NewEffect};
use crate::exchange::{self, Mutation, Outcome, Problem, Stored, check_text};

/// An authorization whose `amount_minor % 100` is this is declined with 402
/// `{"status":"declined","reason":"card_declined"}`: a test's declined card.
pub const DECLINE_REMAINDER: i64 = 13;
/// A capture of an authorization whose `amount_minor % 100` is this fails with 402
/// `{"status":"failed","reason":"capture_failed"}`; the authorization stays open.
pub const CAPTURE_FAILURE_REMAINDER: i64 = 17;

/// The `code` of a 409 refusing a capture or void of a captured authorization.
pub const CAPTURED_CODE: &str = "authorization_captured";
/// The `code` of a 409 refusing a capture or void of a voided authorization.
pub const VOIDED_CODE: &str = "authorization_voided";

/// The provider's records of authorizations and captures.
#[derive(Debug, Default)]
pub(crate) struct Payments {
    authorizations: HashMap<String, Authorization>,
    captures: HashMap<String, Capture>,
}

#[derive(Debug)]
struct Authorization {
    order_id: String,
    amount_minor: i64,
    currency: String,
    status: AuthorizationStatus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AuthorizationStatus {
    Authorized,
    Captured,
    Voided,
}

#[derive(Debug)]
struct Capture {
    order_id: String,
    amount_minor: i64,
    currency: String,
    refunded_minor: i64,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct AuthorizationRequest {
    order_id: String,
    amount_minor: i64,
    currency: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct AmountRequest {
    amount_minor: i64,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct VoidRequest {}

/// `POST /payments/authorizations`
pub(crate) async fn authorize(
    State(shared): State<Arc<Shared>>,
    request: Mutation<AuthorizationRequest>,
) -> Response {
    let body = &request.body;
    let checked = check_text("order_id", &body.order_id)
        .and_then(|()| check_amount(body.amount_minor))
        .and_then(|()| check_currency(&body.currency));
    if let Err(problem) = checked {
        return problem.into_response();
    }
    exchange::exchange(shared, request, apply_authorize, |_, ()| {}).await
}

fn apply_authorize(state: &mut exchange::State, body: AuthorizationRequest) -> Outcome<()> {
    let effect = NewEffect {
        kind: EffectKind::Authorization,
        order_id: body.order_id.clone(),
        amount_minor: Some(body.amount_minor),
        currency: Some(body.currency.clone()),
    };
    if body.amount_minor.rem_euclid(100) == DECLINE_REMAINDER {
        let response = json!({"status": "declined", "reason": "card_declined"});
        return Outcome::applied(effect, Stored::new(StatusCode::PAYMENT_REQUIRED, response));
    }
    let authorization_id = state.ids.next("auth");
    let authorization = Authorization {
        order_id: body.order_id,
        amount_minor: body.amount_minor,
        currency: body.currency,
        status: AuthorizationStatus::Authorized,
    };
    let previous = state
        .payments
        .authorizations
        .insert(authorization_id.clone(), authorization);
    assert!(previous.is_none(), "an authorization id was drawn twice");
    let response = json!({"authorization_id": authorization_id, "status": "authorized"});
    Outcome::applied(effect, Stored::new(StatusCode::CREATED, response))
}

/// `POST /payments/authorizations/{id}/capture`
pub(crate) async fn capture(
    State(shared): State<Arc<Shared>>,
    Path(authorization_id): Path<String>,
    request: Mutation<AmountRequest>,
) -> Response {
    if let Err(problem) = check_amount(request.body.amount_minor) {
        return problem.into_response();
    }
    let apply = move |state: &mut exchange::State, body: AmountRequest| {
        apply_capture(state, &authorization_id, body.amount_minor)
    };
    exchange::exchange(shared, request, apply, |_, ()| {}).await
}

fn apply_capture(
    state: &mut exchange::State,
    authorization_id: &str,
    amount_minor: i64,
) -> Outcome<()> {
    let Some(authorization) = state.payments.authorizations.get_mut(authorization_id) else {
        return unknown("authorization", authorization_id);
    };
    match authorization.status {
        AuthorizationStatus::Authorized => {}
        AuthorizationStatus::Captured => {
            return refused_as(CAPTURED_CODE, "the authorization is already captured");
        }
        AuthorizationStatus::Voided => {
            return refused_as(VOIDED_CODE, "the authorization was voided");
        }
    }
    if amount_minor > authorization.amount_minor {
        return Outcome::refused(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "the capture of {amount_minor} is over the authorized {}",
                authorization.amount_minor
            ),
        );
    }
    let effect = NewEffect {
        kind: EffectKind::Capture,
        order_id: authorization.order_id.clone(),
        amount_minor: Some(amount_minor),
        currency: Some(authorization.currency.clone()),
    };
    if authorization.amount_minor.rem_euclid(100) == CAPTURE_FAILURE_REMAINDER {
        let response = json!({"status": "failed", "reason": "capture_failed"});
        return Outcome::applied(effect, Stored::new(StatusCode::PAYMENT_REQUIRED, response));
    }
    authorization.status = AuthorizationStatus::Captured;
    let capture = Capture {
        order_id: authorization.order_id.clone(),
        amount_minor,
        currency: authorization.currency.clone(),
        refunded_minor: 0,
    };
    let capture_id = state.ids.next("cap");
    let previous = state.payments.captures.insert(capture_id.clone(), capture);
    assert!(previous.is_none(), "a capture id was drawn twice");
    let response = json!({"capture_id": capture_id, "status": "captured"});
    Outcome::applied(effect, Stored::new(StatusCode::OK, response))
}

/// `POST /payments/authorizations/{id}/void`
pub(crate) async fn void(
    State(shared): State<Arc<Shared>>,
    Path(authorization_id): Path<String>,
    request: Mutation<VoidRequest>,
) -> Response {
    let apply =
        move |state: &mut exchange::State, _: VoidRequest| apply_void(state, &authorization_id);
    exchange::exchange(shared, request, apply, |_, ()| {}).await
}

fn apply_void(state: &mut exchange::State, authorization_id: &str) -> Outcome<()> {
    let Some(authorization) = state.payments.authorizations.get_mut(authorization_id) else {
        return unknown("authorization", authorization_id);
    };
    match authorization.status {
        AuthorizationStatus::Authorized => {}
        AuthorizationStatus::Captured => {
            return refused_as(
                CAPTURED_CODE,
                "the authorization is captured; refund the capture instead",
            );
        }
        AuthorizationStatus::Voided => {
            return refused_as(VOIDED_CODE, "the authorization is already voided");
        }
    }
    authorization.status = AuthorizationStatus::Voided;
    let effect = NewEffect {
        kind: EffectKind::Void,
        order_id: authorization.order_id.clone(),
        amount_minor: None,
        currency: None,
    };
    let response = json!({"authorization_id": authorization_id, "status": "voided"});
    Outcome::applied(effect, Stored::new(StatusCode::OK, response))
}

/// `POST /payments/captures/{id}/refunds`
pub(crate) async fn refund(
    State(shared): State<Arc<Shared>>,
    Path(capture_id): Path<String>,
    request: Mutation<AmountRequest>,
) -> Response {
    if let Err(problem) = check_amount(request.body.amount_minor) {
        return problem.into_response();
    }
    let apply = move |state: &mut exchange::State, body: AmountRequest| {
        apply_refund(state, &capture_id, body.amount_minor)
    };
    exchange::exchange(shared, request, apply, |_, ()| {}).await
}

fn apply_refund(state: &mut exchange::State, capture_id: &str, amount_minor: i64) -> Outcome<()> {
    let Some(capture) = state.payments.captures.get_mut(capture_id) else {
        return unknown("capture", capture_id);
    };
    // A sum that overflows is certainly over the captured amount.
    let total_minor = capture.refunded_minor.checked_add(amount_minor);
    let Some(refunded_minor) = total_minor.filter(|total| *total <= capture.amount_minor) else {
        return Outcome::refused(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "a refund of {amount_minor} after {} refunded is over the captured {}",
                capture.refunded_minor, capture.amount_minor
            ),
        );
    };
    capture.refunded_minor = refunded_minor;
    assert!(capture.refunded_minor <= capture.amount_minor);
    let effect = NewEffect {
        kind: EffectKind::Refund,
        order_id: capture.order_id.clone(),
        amount_minor: Some(amount_minor),
        currency: Some(capture.currency.clone()),
    };
    let refund_id = state.ids.next("re");
    let response = json!({"refund_id": refund_id, "status": "refunded"});
    Outcome::applied(effect, Stored::new(StatusCode::CREATED, response))
}

/// A 409 for an authorization in a state the request does not fit, with the state's `code`.
fn refused_as(code: &'static str, detail: &str) -> Outcome<()> {
    Outcome::Refused(Problem::new(StatusCode::CONFLICT, detail).with_code(code))
}

fn unknown(what: &str, id: &str) -> Outcome<()> {
    Outcome::refused(StatusCode::NOT_FOUND, format!("there is no {what} {id:?}"))
}

fn check_amount(amount_minor: i64) -> Result<(), Problem> {
    if amount_minor <= 0 {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            format!("`amount_minor` must be positive, not {amount_minor}"),
        ));
    }
    Ok(())
}

fn check_currency(currency: &str) -> Result<(), Problem> {
    let is_code = currency.len() == 3 && currency.bytes().all(|b| b.is_ascii_uppercase());
    if !is_code {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            format!("`currency` must be an ISO 4217 code like EUR, not {currency:?}"),
        ));
    }
    Ok(())
}
