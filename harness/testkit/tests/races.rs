//! Races between a cancellation and a payment call in flight, pinned with the sandbox's held
//! responses, on every backend: whatever the provider did while Tally could not hear it, a
//! cancelled order leaves no authorization open at the provider, and the ledger books every
//! capture the provider made and its refund.
//!
//! Each test holds the provider's answer to one call after the provider applied it, asks to
//! cancel while the call is in flight, then lets the answer go as a 500: to Tally the call
//! failed, and its retry finds a cancellation requested. No test sleeps: each waits for the held
//! call to arrive, then for every consumer to have applied every event.

use serde_json::{Value, json};
use tally::checks;
use tally_sandbox::hold::Release;
use tally_sandbox::{Effect, EffectKind};
use tally_testkit::saga::{post_until_answered, wait_until_consumers_caught_up};
use tally_testkit::{Engine, TestApp, order_body, spawn_app};

tally_testkit::engine_tests!(
    a_cancellation_while_the_authorization_is_in_flight_voids_what_the_provider_authorized,
    a_cancellation_while_the_capture_is_in_flight_refunds_what_the_provider_captured,
);

/// A shop with one product and stock for it.
async fn shop(engine: Engine) -> TestApp {
    let app = spawn_app(engine).await;
    app.create_product("Tee", &[("TEE", 2_500)]).await;
    let response = app.adjust("stock-tee", "TEE", "wh-east", 10).await;
    assert_eq!(response.status(), 200, "stocking TEE");
    app
}

/// Places one order with `held` armed, cancels it once the held call applied its effect, then
/// loses that call's answer; returns the order once every consumer has caught up.
async fn cancel_while_held(app: &TestApp, held: EffectKind) -> Value {
    let mut hold = app.sandbox().hold_next(held);
    let client = app.client();
    let body = order_body("c1", &[("TEE", 2)]);
    let (status, placed) = post_until_answered(&client, "/v1/orders", "order-1", &body).await;
    assert_eq!(status, 201, "{placed}");
    let id = placed["id"].as_str().expect("an order id").to_owned();
    hold.applied().await;
    let cancel = format!("/v1/orders/{id}/cancel");
    let (status, body) = post_until_answered(&client, &cancel, "cancel-1", &json!({})).await;
    assert_eq!(status, 202, "the order is still cancellable: {body}");
    hold.release(Release::ServerError);
    wait_until_consumers_caught_up(app.store()).await;
    app.get(&format!("/v1/orders/{id}"))
        .send()
        .await
        .expect("GET the order")
        .json()
        .await
        .expect("an order")
}

fn applied(effects: &[Effect], kind: EffectKind) -> usize {
    effects
        .iter()
        .filter(|e| e.kind == kind && (200..300).contains(&e.response_status))
        .count()
}

/// The event types of an order's timeline, oldest first.
fn timeline(order: &Value) -> Vec<&str> {
    order["timeline"]
        .as_array()
        .expect("a timeline")
        .iter()
        .map(|entry| entry["type"].as_str().expect("an event type"))
        .collect()
}

/// `tally check` with the sandbox's effects finds nothing wrong with the order.
async fn assert_checks_clean(app: &TestApp) {
    let effects = app.partner_effects();
    let report = checks::all(app.store().as_ref(), Some(&effects))
        .await
        .expect("check");
    assert!(
        report.is_clean(),
        "{report}\n{}",
        report.violations.join("\n")
    );
}

/// The provider authorized the order but its answer was lost; meanwhile the client cancelled.
/// The cancellation asks the provider again under the authorization step's key, learns the
/// authorization, and voids it; the ledger books the authorization and its void.
async fn a_cancellation_while_the_authorization_is_in_flight_voids_what_the_provider_authorized(
    engine: Engine,
) {
    let app = shop(engine).await;
    let order = cancel_while_held(&app, EffectKind::Authorization).await;
    assert_eq!(order["status"], "cancelled", "{order}");
    let effects = app.partner_effects();
    assert_eq!(
        applied(&effects, EffectKind::Authorization),
        1,
        "{effects:?}"
    );
    assert_eq!(
        applied(&effects, EffectKind::Void),
        1,
        "the authorization the provider made is voided: {effects:?}"
    );
    let events = timeline(&order);
    let found = events
        .iter()
        .position(|t| *t == "tally.order.payment_authorized.v1");
    let cancelled = events.iter().position(|t| *t == "tally.order.cancelled.v1");
    assert!(
        found.is_some() && found < cancelled,
        "the timeline says what was found: {events:?}"
    );
    assert_checks_clean(&app).await;
    app.stop().await;
}

/// The provider captured the payment but its answer was lost; meanwhile the client cancelled.
/// The void is refused because the authorization is captured; the cancellation asks for the
/// capture again under the capture step's key and refunds it; the ledger books both.
async fn a_cancellation_while_the_capture_is_in_flight_refunds_what_the_provider_captured(
    engine: Engine,
) {
    let app = shop(engine).await;
    let order = cancel_while_held(&app, EffectKind::Capture).await;
    assert_eq!(order["status"], "cancelled", "{order}");
    let effects = app.partner_effects();
    assert_eq!(applied(&effects, EffectKind::Capture), 1, "{effects:?}");
    assert_eq!(applied(&effects, EffectKind::Refund), 1, "{effects:?}");
    assert_eq!(applied(&effects, EffectKind::Void), 0, "{effects:?}");
    let events = timeline(&order);
    assert!(
        events.contains(&"tally.order.payment_captured.v1"),
        "{events:?}"
    );
    assert_checks_clean(&app).await;
    app.stop().await;
}
