//! What operators and partners do to orders after placement, on both engines: carrier webhooks
//! (signatures, bodies that do not fit, timing and duplicates), cancellation, return and refund,
//! the ledger and audit reads, and dead letters. Orders run through the real checkout saga
//! against the in-process partner sandbox; tests poll with a bound instead of sleeping.

use std::time::Duration;

use chrono::Utc;
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};
use reqwest::{RequestBuilder, Response};
use serde_json::{Value, json};
use tally_api::auth::Scope;
use tally_api::routes::webhooks::WEBHOOK_WINDOW_SECONDS;
use tally_domain::checkout::Reservation;
use tally_domain::clock::Clock;
use tally_domain::ids::{EventId, OrderId};
use tally_sandbox::signature::sign;
use tally_sandbox::webhooks::{DELIVERED, ID_HEADER, SHIPPED, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use tally_sandbox::{EffectKind, SandboxConfig};
use tally_store::DeadLetterRecord;
use tally_store::audit::{Actor, Cause, Change};
use tally_store::effect::{EffectOutcome, Once, OrderChange, PreparedEffect};
use tally_testkit::{Engine, TestApp, order_body, spawn_app, spawn_app_with};
use tokio::time::{Instant, sleep};
use uuid::Uuid;

tally_testkit::engine_tests!(
    badly_signed_webhooks_are_refused_and_change_nothing,
    signed_webhooks_that_do_not_fit_are_refused,
    a_webhook_before_the_shipment_step_is_not_ready,
    repeated_delivered_webhooks_apply_once,
    racing_shipped_webhooks_ship_an_order_once,
    cancelling_a_reserved_order_releases_its_stock,
    cancel_refuses_what_it_cannot_do,
    a_step_sees_whether_its_order_changed,
    a_planned_reservation_is_written_only_if_it_still_fits,
    effects_stored_at_once_each_come_to_what_they_would_alone,
    racing_copies_of_a_prepared_effect_apply_once,
    a_prepared_effect_whose_stock_row_refuses_stores_nothing,
    a_returned_order_is_restocked_and_refunded_once,
    ledger_and_audit_tell_a_completed_orders_story,
    dead_letters_are_listed_by_status,
    dead_letters_are_discarded_once,
    a_dead_letter_is_unsettled_until_retried,
);

const WEBHOOK: &str = "/v1/webhooks/carrier";
const REPLAYED_HEADER: &str = "idempotent-replayed";
const SHIPPED_EVENT: &str = "tally.order.shipped.v1";
const DELIVERED_EVENT: &str = "tally.order.delivered.v1";
const COMPLETED_EVENT: &str = "tally.order.completed.v1";
const CANCEL_REQUESTED_EVENT: &str = "tally.order.cancellation_requested.v1";
const CANCELLED_EVENT: &str = "tally.order.cancelled.v1";
const REFUNDED_EVENT: &str = "tally.order.refunded.v1";

/// A SKU with stock, its price and how many units the tests start with.
const TEE: &str = "TEE";
const TEE_PRICE_MINOR: i64 = 2_500;
const TEE_STOCK: i64 = 10;
/// A SKU in the catalog that never has stock: the saga cancels its orders as out of stock.
const GONE: &str = "GONE";

/// How long a test waits for the saga to reach a status. Generous because the test machine
/// may be busy building; a healthy saga takes well under a second.
const SAGA_WAIT: Duration = Duration::from_secs(60);
/// How often a waiting test looks again: far shorter than `PARTNER_LATENCY_MS`, so that a test
/// waiting for a status that lasts one partner call sees it.
const POLL: Duration = Duration::from_millis(25);
/// Latency the slow sandbox adds to every partner call: long enough for a test to act while
/// the saga waits on the partner, and under the saga's 2 s partner timeout, so nothing retries.
const PARTNER_LATENCY_MS: u64 = 1_000;
/// A delay after which the sandbox would send `shipment.shipped`: longer than any test, so the
/// order waits at `fulfillment_requested` for the webhooks the test sends itself.
const HELD_SHIPMENT: Duration = Duration::from_secs(3_600);

/// A fresh Idempotency-Key or delivery id.
fn fresh_key() -> String {
    Uuid::now_v7().to_string()
}

async fn send(request: RequestBuilder) -> Response {
    request.send().await.expect("the server answers")
}

fn header(response: &Response, name: &str) -> Option<String> {
    let value = response.headers().get(name)?.to_str();
    Some(value.expect("a header of visible ASCII").to_owned())
}

/// Asserts `response` is JSON of `status` and returns its body.
async fn json_of(response: Response, status: u16) -> Value {
    let actual = response.status();
    let url = response.url().clone();
    let text = response.text().await.expect("a response body");
    assert_eq!(actual, status, "{url}: unexpected status; body: {text}");
    serde_json::from_str(&text).expect("a JSON body")
}

async fn ok(request: RequestBuilder, status: u16) -> Value {
    json_of(send(request).await, status).await
}

/// Asserts `response` is an RFC 9457 problem of `status` and type `/problems/{slug}`.
async fn problem_of(response: Response, status: u16, slug: &str) -> Value {
    let actual = response.status();
    let url = response.url().clone();
    let content_type = header(&response, CONTENT_TYPE.as_str());
    let text = response.text().await.expect("a response body");
    assert_eq!(actual, status, "{url}: unexpected status; body: {text}");
    let problem_json = Some("application/problem+json");
    assert_eq!(content_type.as_deref(), problem_json, "{url}: {text}");
    let body: Value = serde_json::from_str(&text).expect("a problem document is JSON");
    assert_eq!(body["type"], format!("/problems/{slug}"), "{url}: {body}");
    assert_eq!(body["status"], status, "{url}: {body}");
    body
}

async fn problem(request: RequestBuilder, status: u16, slug: &str) -> Value {
    problem_of(send(request).await, status, slug).await
}

/// Sends `request` and asserts a 422 validation problem with an error at `pointer`.
async fn invalid(request: RequestBuilder, pointer: &str) {
    let body = problem(request, 422, "validation-failed").await;
    let errors = body["errors"]
        .as_array()
        .expect("a validation problem lists errors");
    let found = errors.iter().any(|e| e["pointer"] == pointer);
    assert!(found, "expected an error at {pointer}: {body}");
}

fn get_as(app: &TestApp, api_key: &str, path: &str) -> RequestBuilder {
    app.client.get(app.url(path)).bearer_auth(api_key)
}

/// A POST with no body and no Idempotency-Key.
fn bare_post(app: &TestApp, api_key: &str, path: &str) -> RequestBuilder {
    app.client.post(app.url(path)).bearer_auth(api_key)
}

/// `POST /v1/orders/{id}/{verb}` (cancel or return) with no body, as the API allows.
fn order_action(app: &TestApp, api_key: &str, id: &str, verb: &str, key: &str) -> RequestBuilder {
    let path = format!("/v1/orders/{id}/{verb}");
    bare_post(app, api_key, &path).header("Idempotency-Key", key)
}

/// The catalog and stock every test of orders starts from.
async fn stock_up(app: &TestApp) {
    app.create_product("Tee", &[(TEE, TEE_PRICE_MINOR)]).await;
    app.create_product("Gone", &[(GONE, 1_000)]).await;
    let response = app.adjust(&fresh_key(), TEE, "wh-east", TEE_STOCK).await;
    assert_eq!(response.status(), 200, "stocking {TEE}");
}

/// Places an order of `quantity` units of `sku` and returns its id.
async fn place(app: &TestApp, sku: &str, quantity: i64) -> String {
    let body = order_body("c-ops", &[(sku, quantity)]);
    let placed = ok(app.post("/v1/orders", &fresh_key(), &body), 201).await;
    placed["id"].as_str().expect("an order id").to_owned()
}

/// The order with its timeline.
async fn order_of(app: &TestApp, id: &str) -> Value {
    ok(app.get(&format!("/v1/orders/{id}")), 200).await
}

/// Polls the order until its status is one of `wanted`, and returns it.
async fn wait_for(app: &TestApp, id: &str, wanted: &[&str]) -> Value {
    let deadline = Instant::now() + SAGA_WAIT;
    loop {
        let order = order_of(app, id).await;
        if wanted.contains(&order["status"].as_str().expect("a status")) {
            return order;
        }
        let status = &order["status"];
        assert!(
            Instant::now() < deadline,
            "order {id} is {status}, never {wanted:?}"
        );
        sleep(POLL).await;
    }
}

/// Places an order of `quantity` tees and lets the saga and the sandbox's webhooks complete it.
async fn completed_order(app: &TestApp, quantity: i64) -> (String, Value) {
    let id = place(app, TEE, quantity).await;
    let order = wait_for(app, &id, &["completed", "cancelled"]).await;
    assert_eq!(order["status"], "completed", "{order}");
    (id, order)
}

/// How many events of `event_type` an order's timeline has.
fn events_of(order: &Value, event_type: &str) -> usize {
    let timeline = order["timeline"]
        .as_array()
        .expect("an order has a timeline");
    timeline.iter().filter(|e| e["type"] == event_type).count()
}

/// `(on_hand, reserved)` of `sku` over every location.
async fn stock_of(app: &TestApp, sku: &str) -> (i64, i64) {
    let stock = ok(app.get(&format!("/v1/inventory/{sku}")), 200).await;
    let count = |field: &str| stock[field].as_i64().expect("a count");
    (count("on_hand"), count("reserved"))
}

/// How partners know an order: `tenant/order`.
fn reference(app: &TestApp, id: &str) -> String {
    format!("{}/{id}", app.tenant)
}

/// The effects of `kind` the sandbox applied for an order.
fn effects_of(app: &TestApp, id: &str, kind: EffectKind) -> Vec<tally_sandbox::Effect> {
    let order = reference(app, id);
    let effects = app.partner_effects().into_iter();
    effects
        .filter(|e| e.order_id == order && e.kind == kind)
        .collect()
}

/// The secret the server verifies carrier webhooks with: `tally_testkit::api_config()` takes the
/// sandbox's default.
fn webhook_secret() -> String {
    SandboxConfig::default().webhook_secret
}

/// A carrier's shipment update about `order_reference`, as raw JSON bytes.
fn update_body(order_reference: &str, update_type: &str, delivery_id: &str) -> Vec<u8> {
    let update = json!({
        "delivery_id": delivery_id,
        "type": update_type,
        "shipment_id": "shp_ops",
        "order_id": order_reference,
        "tracking_number": "TRK-OPS",
        "occurred_at": Utc::now().to_rfc3339(),
    });
    serde_json::to_vec(&update).expect("an update serializes")
}

/// The timestamp and signature headers of a webhook; `None` is not sent.
type SignatureHeaders = (Option<String>, Option<String>);

/// A webhook POST of `body` with whichever signature headers are given.
fn webhook(
    app: &TestApp,
    delivery: &str,
    headers: &SignatureHeaders,
    body: &[u8],
) -> RequestBuilder {
    let mut request = app.client.post(app.url(WEBHOOK));
    request = request.header(CONTENT_TYPE, "application/json");
    request = request.header(ID_HEADER, delivery);
    let (timestamp, signature) = headers;
    if let Some(timestamp) = timestamp {
        request = request.header(TIMESTAMP_HEADER, timestamp);
    }
    if let Some(signature) = signature {
        request = request.header(SIGNATURE_HEADER, signature);
    }
    request.body(body.to_vec())
}

/// A webhook POST of `body` signed now with the server's secret, as the carrier sends it.
fn signed(app: &TestApp, delivery_id: &str, body: &[u8]) -> RequestBuilder {
    let now = Utc::now().timestamp();
    let signature = sign(&webhook_secret(), now, body);
    webhook(
        app,
        delivery_id,
        &(Some(now.to_string()), Some(signature)),
        body,
    )
}

/// Sends a correctly signed `update_type` about order `id` and returns the status.
async fn deliver(app: &TestApp, id: &str, update_type: &str, delivery_id: &str) -> u16 {
    let body = update_body(&reference(app, id), update_type, delivery_id);
    send(signed(app, delivery_id, &body))
        .await
        .status()
        .as_u16()
}

/// A sandbox whose carrier holds every shipment, so the test sends the carrier's webhooks.
fn held_shipments() -> SandboxConfig {
    SandboxConfig {
        ship_after: HELD_SHIPMENT,
        ..SandboxConfig::default()
    }
}

/// A sandbox whose every call takes `PARTNER_LATENCY_MS`, and whose carrier holds shipments.
fn slow_partners() -> SandboxConfig {
    SandboxConfig {
        latency: PARTNER_LATENCY_MS..PARTNER_LATENCY_MS + 1,
        ..held_shipments()
    }
}

/// Ways the headers of a webhook of `body` can be wrong, each with what is wrong.
fn bad_signatures(body: &[u8]) -> Vec<(&'static str, SignatureHeaders)> {
    let secret = webhook_secret();
    let now = Utc::now().timestamp();
    let stale = now - WEBHOOK_WINDOW_SECONDS - 60;
    let ahead = now + WEBHOOK_WINDOW_SECONDS + 60;
    let good = sign(&secret, now, body);
    let signed_at = |t: i64, secret: &str| (Some(t.to_string()), Some(sign(secret, t, body)));
    let at_now = |signature: String| (Some(now.to_string()), Some(signature));
    vec![
        ("no signature", (Some(now.to_string()), None)),
        ("no timestamp", (None, Some(good.clone()))),
        ("no scheme", at_now(good.replacen("v1=", "", 1))),
        ("a non-numeric timestamp", (Some("soon".into()), Some(good))),
        ("a non-hex tag", at_now(format!("v1={}", "zz".repeat(32)))),
        ("another secret", signed_at(now, "whsec_other")),
        ("another signed time", at_now(sign(&secret, now - 1, body))),
        ("a stale timestamp", signed_at(stale, &secret)),
        ("a timestamp ahead of the window", signed_at(ahead, &secret)),
    ]
}

/// A webhook whose signature is missing, malformed, made with another secret or over another
/// timestamp, or whose timestamp is outside the 300 s window, is refused with 401
/// `webhook-signature` and changes nothing; the same update under the same delivery id, signed
/// properly, then ships the order, so the refusals did not use the delivery id up.
async fn badly_signed_webhooks_are_refused_and_change_nothing(engine: Engine) {
    let app = spawn_app_with(engine, tally_testkit::api_config(), held_shipments()).await;
    stock_up(&app).await;
    let id = place(&app, TEE, 1).await;
    wait_for(&app, &id, &["fulfillment_requested"]).await;
    let delivery = fresh_key();
    let body = update_body(&reference(&app, &id), SHIPPED, &delivery);
    for (what, headers) in bad_signatures(&body) {
        let request = webhook(&app, &delivery, &headers, &body);
        let response = send(request).await;
        assert_eq!(response.status(), 401, "a webhook with {what}");
        problem_of(response, 401, "webhook-signature").await;
    }
    let order = order_of(&app, &id).await;
    assert_eq!(order["status"], "fulfillment_requested", "{order}");
    assert_eq!(events_of(&order, SHIPPED_EVENT), 0, "{order}");
    assert_eq!(stock_of(&app, TEE).await, (TEE_STOCK, 1), "still reserved");

    assert_eq!(send(signed(&app, &delivery, &body)).await.status(), 200);
    let order = order_of(&app, &id).await;
    assert_eq!(order["status"], "shipped", "{order}");
    assert_eq!(events_of(&order, SHIPPED_EVENT), 1, "{order}");
    assert_eq!(stock_of(&app, TEE).await, (TEE_STOCK - 1, 0), "shipped");
    app.stop().await;
}

/// Correctly signed webhooks that Tally cannot apply are refused without effect: malformed JSON
/// or a body that is not a shipment update (400), an unknown update type (422 at `/type`), an
/// order reference Tally never gave or an order that does not exist (422 at `/order_id`); and a
/// `shipment.shipped` for an order the saga cancelled as out of stock leaves it cancelled.
async fn signed_webhooks_that_do_not_fit_are_refused(engine: Engine) {
    let app = spawn_app(engine).await;
    stock_up(&app).await;
    let id = place(&app, GONE, 1).await;
    wait_for(&app, &id, &["cancelled"]).await;
    let own = reference(&app, &id);

    let delivery = fresh_key();
    let truncated = br#"{"type": "shipment.shipped", "order_id": "#;
    problem(signed(&app, &delivery, truncated), 400, "malformed-json").await;
    let partial = serde_json::to_vec(&json!({"type": SHIPPED, "order_id": own})).expect("JSON");
    problem(signed(&app, &delivery, &partial), 400, "malformed-json").await;
    let lost = update_body(&own, "shipment.lost", &delivery);
    invalid(signed(&app, &delivery, &lost), "/type").await;
    let references = [
        "not-a-reference".to_owned(),
        id.clone(),
        format!("{}/42", app.tenant),
        format!("{}/{id}/extra", app.tenant),
        format!("{}/{}", app.tenant, Uuid::now_v7()),
        format!("{}/{id}", Uuid::now_v7()),
    ];
    for order_reference in &references {
        let body = update_body(order_reference, SHIPPED, &delivery);
        invalid(signed(&app, &delivery, &body), "/order_id").await;
    }

    // Nothing is left to change on a cancelled order. The store acknowledges such an update
    // (`WebhookOutcome::AlreadyApplied`); a refusal would do as well, if nothing is applied.
    let answer = deliver(&app, &id, SHIPPED, &fresh_key()).await;
    assert!(
        matches!(answer, 200 | 409 | 422),
        "shipped for a cancelled order: {answer}"
    );
    let order = order_of(&app, &id).await;
    assert_eq!(order["status"], "cancelled", "{order}");
    assert_eq!(events_of(&order, SHIPPED_EVENT), 0, "{order}");
    app.stop().await;
}

/// A signed `shipment.shipped` that arrives while the saga has not yet asked the carrier (the
/// order is only reserved, its payment being authorized) is answered 409 `not-ready` with a
/// Retry-After, and leaves the delivery id unused: once the order awaits the carrier, the
/// carrier's retry of that same delivery ships it.
async fn a_webhook_before_the_shipment_step_is_not_ready(engine: Engine) {
    let app = spawn_app_with(engine, tally_testkit::api_config(), slow_partners()).await;
    stock_up(&app).await;
    let id = place(&app, TEE, 1).await;
    wait_for(&app, &id, &["reserved"]).await;
    let delivery = fresh_key();
    let body = update_body(&reference(&app, &id), SHIPPED, &delivery);
    let early = send(signed(&app, &delivery, &body)).await;
    let early_status = early.status().as_u16();
    let retry_after = header(&early, RETRY_AFTER.as_str());
    let early_text = early.text().await.expect("a body");
    let order = order_of(&app, &id).await;
    assert_eq!(events_of(&order, SHIPPED_EVENT), 0, "{order}");

    wait_for(&app, &id, &["fulfillment_requested"]).await;
    let retried = send(signed(&app, &delivery, &body)).await.status().as_u16();
    let order = order_of(&app, &id).await;
    assert!(
        early_status == 409
            && retry_after.is_some()
            && retried == 200
            && order["status"] == "shipped",
        "a shipped webhook for a reserved order was answered {early_status} ({early_text}); \
         its retry once the order awaited the carrier was answered {retried} and left the \
         order {}",
        order["status"]
    );
    assert_eq!(events_of(&order, SHIPPED_EVENT), 1, "{order}");
    app.stop().await;
}

/// The order's audit trail, oldest first, as `GET /v1/audit` lists it.
async fn audit_trail(app: &TestApp, id: &str) -> Vec<Value> {
    let trail = ok(
        app.get("/v1/audit")
            .query(&[("entity", format!("order:{id}"))]),
        200,
    )
    .await;
    trail.as_array().expect("a list of audit entries").clone()
}

/// The delivery id the carrier's `update_event` webhook carried, from the order's audit trail.
async fn carrier_delivery_id(app: &TestApp, id: &str, update_event: &str) -> String {
    let trail = audit_trail(app, id).await;
    let entry = trail.iter().find(|e| e["record"]["action"] == update_event);
    let entry = entry.unwrap_or_else(|| panic!("no {update_event} in {trail:?}"));
    let delivery = entry["record"]["cause"]["idempotency_key"].as_str();
    delivery
        .expect("a webhook's audit cause is its delivery id")
        .to_owned()
}

/// Once the sandbox's own webhooks completed an order, `shipment.delivered` sent again under
/// the delivery id the carrier used, and twice under a new id, is acknowledged with 200 every
/// time, and the order stays completed with exactly one delivered and one completed event.
async fn repeated_delivered_webhooks_apply_once(engine: Engine) {
    let app = spawn_app(engine).await;
    stock_up(&app).await;
    let (id, order) = completed_order(&app, 1).await;
    assert_eq!(events_of(&order, DELIVERED_EVENT), 1, "{order}");
    let used = carrier_delivery_id(&app, &id, DELIVERED_EVENT).await;
    let fresh = fresh_key();
    for delivery in [&used, &fresh, &fresh] {
        let answer = deliver(&app, &id, DELIVERED, delivery).await;
        assert_eq!(answer, 200, "delivered again under {delivery}");
    }
    let order = order_of(&app, &id).await;
    assert_eq!(order["status"], "completed", "{order}");
    assert_eq!(events_of(&order, DELIVERED_EVENT), 1, "{order}");
    assert_eq!(events_of(&order, COMPLETED_EVENT), 1, "{order}");
    app.stop().await;
}

/// Copies of the shipped webhook for an order awaiting the carrier, sent all at once (half
/// under one delivery id, half under ids of their own), are each acknowledged with 200; the
/// order is shipped once, with one shipped event and one audit record of it, and its three
/// reserved units leave stock once. Every copy is made from the order as it was before any of
/// them was stored, so all but the first find it changed, or their delivery applied.
async fn racing_shipped_webhooks_ship_an_order_once(engine: Engine) {
    let app = spawn_app_with(engine, tally_testkit::api_config(), held_shipments()).await;
    stock_up(&app).await;
    let id = place(&app, TEE, 3).await;
    wait_for(&app, &id, &["fulfillment_requested"]).await;
    assert_eq!(stock_of(&app, TEE).await, (TEE_STOCK, 3), "reserved");
    let shared = fresh_key();
    let deliveries: Vec<String> = (0..16)
        .map(|n| {
            if n % 2 == 0 {
                shared.clone()
            } else {
                fresh_key()
            }
        })
        .collect();
    let reference = reference(&app, &id);
    let answers = futures::future::join_all(deliveries.iter().map(|delivery| {
        let request = signed(&app, delivery, &update_body(&reference, SHIPPED, delivery));
        async move { send(request).await.status().as_u16() }
    }))
    .await;
    assert!(answers.iter().all(|&a| a == 200), "answers: {answers:?}");
    let order = order_of(&app, &id).await;
    assert_eq!(order["status"], "shipped", "{order}");
    assert_eq!(events_of(&order, SHIPPED_EVENT), 1, "{order}");
    assert_eq!(
        stock_of(&app, TEE).await,
        (TEE_STOCK - 3, 0),
        "shipped once"
    );
    let trail = audit_trail(&app, &id).await;
    let shipped = trail
        .iter()
        .filter(|e| e["record"]["action"] == SHIPPED_EVENT)
        .count();
    assert_eq!(shipped, 1, "{trail:?}");
    app.stop().await;
}

/// A reserved order cancelled while its payment is being authorized ends cancelled: the
/// request is accepted (202) and replayed for the same key, a second request is refused as
/// `not-cancellable`, any authorization is voided and nothing captured or shipped, the
/// reservation is released with stock on hand unchanged, and the timeline records both the
/// request and the cancellation.
async fn cancelling_a_reserved_order_releases_its_stock(engine: Engine) {
    let app = spawn_app_with(engine, tally_testkit::api_config(), slow_partners()).await;
    stock_up(&app).await;
    let id = place(&app, TEE, 3).await;
    wait_for(&app, &id, &["reserved"]).await;
    assert_eq!(stock_of(&app, TEE).await, (TEE_STOCK, 3), "reserved");

    let key = fresh_key();
    let accepted = send(order_action(&app, &app.key, &id, "cancel", &key)).await;
    assert_eq!(header(&accepted, REPLAYED_HEADER), None, "a first request");
    let accepted = json_of(accepted, 202).await;
    assert_eq!(accepted["id"], id.as_str(), "{accepted}");
    let replayed = send(order_action(&app, &app.key, &id, "cancel", &key)).await;
    assert_eq!(header(&replayed, REPLAYED_HEADER).as_deref(), Some("true"));
    assert_eq!(json_of(replayed, 202).await, accepted);
    let again = order_action(&app, &app.key, &id, "cancel", &fresh_key());
    problem(again, 409, "not-cancellable").await;

    let settled = ["cancelled", "fulfillment_requested", "completed"];
    let order = wait_for(&app, &id, &settled).await;
    assert_eq!(order["status"], "cancelled", "{order}");
    assert_eq!(events_of(&order, CANCEL_REQUESTED_EVENT), 1, "{order}");
    assert_eq!(events_of(&order, CANCELLED_EVENT), 1, "{order}");
    assert_eq!(stock_of(&app, TEE).await, (TEE_STOCK, 0), "released");
    let count = |kind| effects_of(&app, &id, kind).len();
    // The cancel may land before the saga asks for the authorization or while it does.
    let authorizations = count(EffectKind::Authorization);
    assert!(
        authorizations <= 1,
        "authorized at most once: {authorizations}"
    );
    assert_eq!(
        count(EffectKind::Void),
        authorizations,
        "any authorization is voided"
    );
    assert_eq!(count(EffectKind::Capture), 0, "nothing captured");
    assert_eq!(count(EffectKind::Shipment), 0, "nothing shipped");
    app.stop().await;
}

/// A completed order of one unit: its id as text and typed, and its row as the store reads it.
async fn stored_completed_order(app: &TestApp) -> (String, OrderId, tally_store::OrderRecord) {
    stock_up(app).await;
    let (id, _) = completed_order(app, 1).await;
    let order: OrderId = id.parse().expect("an order id");
    let read = app
        .store()
        .order(app.tenant, order)
        .await
        .expect("read the order")
        .expect("the order exists");
    (id, order, read)
}

/// What a saga step checks before storing rows it made from an earlier read of its order:
/// the order as read is "still" the order only with the same status and the same saga, and an
/// unknown order never is. The check takes the order's lock and writes nothing.
async fn a_step_sees_whether_its_order_changed(engine: Engine) {
    let app = spawn_app(engine).await;
    let (id, order, read) = stored_completed_order(&app).await;
    let mut tx = app.store().begin().await.expect("begin");
    assert!(
        tx.order_still(app.tenant, order, &read.status, &read.saga)
            .await
            .expect("check"),
        "unchanged"
    );
    assert!(
        !tx.order_still(app.tenant, order, "delivered", &read.saga)
            .await
            .expect("check"),
        "another status"
    );
    let mut moved = read.saga.clone();
    moved.cancel_requested = !moved.cancel_requested;
    assert!(
        !tx.order_still(app.tenant, order, &read.status, &moved)
            .await
            .expect("check"),
        "another saga"
    );
    assert!(
        !tx.order_still(app.tenant, OrderId::generate(), &read.status, &read.saga)
            .await
            .expect("check"),
        "an unknown order"
    );
    tx.rollback().await.expect("rollback");
    let after = order_of(&app, &id).await;
    assert_eq!(after["status"], "completed", "{after}");
    app.stop().await;
}

/// An effect on `order` for `event`, expecting the order in `expected` (status and saga), that
/// leaves it as it is and writes one audit record of action `effect_test`.
fn test_effect(
    app: &TestApp,
    order: OrderId,
    event: EventId,
    expected: (&str, &tally_domain::checkout::Saga),
) -> PreparedEffect {
    let now = Utc::now();
    let change = Change {
        entity_type: "order",
        entity_id: order.to_string(),
        action: "effect_test",
        before: None,
        after: None,
    };
    let cause = Cause {
        event_id: Some(event.as_uuid()),
        ..Cause::default()
    };
    PreparedEffect {
        once: Once::Inbox {
            group: "effect-test",
            event,
        },
        settles: None,
        change: OrderChange {
            tenant: app.tenant,
            order,
            expected_status: expected.0.to_owned(),
            expected_saga: expected.1.clone(),
            status: expected.0.to_owned(),
            saga: expected.1.clone(),
            at: now,
            journal: Vec::new(),
            audit: tally_store::audit::record(
                uuid::Uuid::now_v7(),
                app.tenant,
                now,
                Actor::System("effect-test".to_owned()),
                change,
                cause,
            ),
            events: Vec::new(),
            stock: Vec::new(),
        },
    }
}

/// How many audit records of `test_effect`'s effects the order `id` has.
async fn effect_test_audits(app: &TestApp, id: &str) -> usize {
    app.store()
        .audit_of(app.tenant, "order", id)
        .await
        .expect("audit")
        .iter()
        .filter(|row| row.body["action"] == "effect_test")
        .count()
}

/// Copies of one prepared effect stored at once, as duplicate deliveries racing each other
/// would: exactly one is written and the others find it applied, so its audit record exists
/// once. An effect that expects the order in another status stores nothing, not even its
/// inbox row.
async fn racing_copies_of_a_prepared_effect_apply_once(engine: Engine) {
    let app = spawn_app(engine).await;
    let (id, order, read) = stored_completed_order(&app).await;
    let event = EventId::generate();
    let copies = (0..24).map(|_| {
        let effect = test_effect(&app, order, event, (&read.status, &read.saga));
        let store = std::sync::Arc::clone(app.store());
        tokio::spawn(async move { store.write_effect(effect).await })
    });
    let mut outcomes = Vec::new();
    for copy in copies.collect::<Vec<_>>() {
        outcomes.push(copy.await.expect("task").expect("write"));
    }
    let written = outcomes
        .iter()
        .filter(|o| **o == EffectOutcome::Written)
        .count();
    assert_eq!(written, 1, "{outcomes:?}");
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, EffectOutcome::Written | EffectOutcome::AlreadyApplied)),
        "{outcomes:?}"
    );
    let stale = EventId::generate();
    let changed = app
        .store()
        .write_effect(test_effect(&app, order, stale, ("delivered", &read.saga)))
        .await
        .expect("write");
    assert_eq!(changed, EffectOutcome::OrderChanged);
    assert!(
        !app.store()
            .inbox_contains("effect-test", stale)
            .await
            .expect("inbox"),
        "a refused effect leaves no inbox row"
    );
    let audited = effect_test_audits(&app, &id).await;
    assert_eq!(audited, 1, "the effect's audit record, once");
    let after = order_of(&app, &id).await;
    assert_eq!(after["status"], "completed", "{after}");
    app.stop().await;
}

/// A prepared effect that moves more of the order's hold than its stock row has (shipping a
/// unit of a completed order, whose hold was shipped already) fails naming the row, and
/// stores nothing: no inbox row, no audit record, no event, no change to stock.
async fn a_prepared_effect_whose_stock_row_refuses_stores_nothing(engine: Engine) {
    let app = spawn_app(engine).await;
    let (id, order, read) = stored_completed_order(&app).await;
    let stock_before = app
        .store()
        .stock_levels(app.tenant, TEE)
        .await
        .expect("stock")
        .expect("the SKU exists");
    let event = EventId::generate();
    let mut effect = test_effect(&app, order, event, (&read.status, &read.saga));
    effect.change.stock = tally_store::stock::movements(
        order,
        &[Reservation {
            sku: TEE.to_owned(),
            location: "wh-east".to_owned(),
            quantity: 1,
        }],
        tally_store::MovementKind::Shipped,
        Utc::now(),
    );
    let error = app
        .store()
        .write_effect(effect)
        .await
        .expect_err("the row has nothing reserved to ship");
    let message = error.to_string();
    assert!(
        matches!(error, tally_store::StoreError::Corrupt(_)) && message.contains("TEE@wh-east"),
        "{message}"
    );
    assert!(
        !app.store()
            .inbox_contains("effect-test", event)
            .await
            .expect("inbox"),
        "a failed effect leaves no inbox row"
    );
    let audited = effect_test_audits(&app, &id).await;
    assert_eq!(audited, 0, "a failed effect leaves no audit record");
    let stock_after = app
        .store()
        .stock_levels(app.tenant, TEE)
        .await
        .expect("stock")
        .expect("the SKU exists");
    assert_eq!(stock_after, stock_before);
    app.stop().await;
}

/// Cancellation refuses what it cannot do, each with its problem: a completed order (409
/// `not-cancellable`, and it stays completed), an unknown or malformed order id (404), no
/// Idempotency-Key (400), a body with unknown fields (422) and a key without the orders scope
/// (403).
async fn cancel_refuses_what_it_cannot_do(engine: Engine) {
    let app = spawn_app(engine).await;
    stock_up(&app).await;
    let (id, _) = completed_order(&app, 1).await;
    let completed = order_action(&app, &app.key, &id, "cancel", &fresh_key());
    problem(completed, 409, "not-cancellable").await;
    for unknown in [Uuid::now_v7().to_string(), "not-an-order".to_owned()] {
        let request = order_action(&app, &app.key, &unknown, "cancel", &fresh_key());
        problem(request, 404, "not-found").await;
    }
    let no_key = bare_post(&app, &app.key, &format!("/v1/orders/{id}/cancel"));
    problem(no_key, 400, "idempotency-key-missing").await;
    let extra = order_action(&app, &app.key, &id, "cancel", &fresh_key());
    let extra = extra.json(&json!({"reason": "changed my mind"}));
    problem(extra, 422, "validation-failed").await;
    let admin_only = app.key_with(&[Scope::Admin]).await;
    let forbidden = order_action(&app, &admin_only, &id, "cancel", &fresh_key());
    problem(forbidden, 403, "forbidden").await;

    let order = order_of(&app, &id).await;
    assert_eq!(order["status"], "completed", "{order}");
    assert_eq!(events_of(&order, CANCEL_REQUESTED_EVENT), 0, "{order}");
    app.stop().await;
}

/// A completed order that comes back is returned (202, its goods on hand again at once) and
/// then refunded by the saga: the payment provider refunded it exactly once, for its total, and
/// the ledger's `revenue:refunds` holds the total; returning it again, or returning an order
/// that never shipped, is refused with 409 `not-returnable`.
async fn a_returned_order_is_restocked_and_refunded_once(engine: Engine) {
    let app = spawn_app(engine).await;
    stock_up(&app).await;
    let (id, order) = completed_order(&app, 2).await;
    let total = order["total_minor"].as_i64().expect("a total");
    assert_eq!(total, 2 * TEE_PRICE_MINOR);
    assert_eq!(stock_of(&app, TEE).await, (TEE_STOCK - 2, 0), "shipped");

    let returned = ok(
        order_action(&app, &app.key, &id, "return", &fresh_key()),
        202,
    )
    .await;
    assert_eq!(returned["status"], "returned", "{returned}");
    assert_eq!(stock_of(&app, TEE).await, (TEE_STOCK, 0), "restocked");
    let refunded = wait_for(&app, &id, &["refunded"]).await;
    assert_eq!(events_of(&refunded, REFUNDED_EVENT), 1, "{refunded}");
    let refunds = effects_of(&app, &id, EffectKind::Refund);
    assert_eq!(refunds.len(), 1, "{refunds:?}");
    assert_eq!(refunds[0].amount_minor, Some(total), "{refunds:?}");
    let account = ok(app.get("/v1/ledger/accounts/revenue:refunds"), 200).await;
    assert_eq!(
        account["balances"]["USD"]["posted_minor"], total,
        "{account}"
    );
    assert_eq!(account["balances"]["USD"]["pending_minor"], 0, "{account}");

    let twice = order_action(&app, &app.key, &id, "return", &fresh_key());
    problem(twice, 409, "not-returnable").await;
    let never_shipped = place(&app, GONE, 1).await;
    wait_for(&app, &never_shipped, &["cancelled"]).await;
    let early = order_action(&app, &app.key, &never_shipped, "return", &fresh_key());
    problem(early, 409, "not-returnable").await;
    assert_eq!(
        stock_of(&app, TEE).await,
        (TEE_STOCK, 0),
        "nothing restocked twice"
    );
    app.stop().await;
}

/// Checks the audit trail of a completed order: placed by an API key, advanced by the checkout
/// consumer and the carrier, every record about that order.
async fn assert_completed_order_audit(app: &TestApp, id: &str) {
    let query = [("entity", format!("order:{id}"))];
    let trail = ok(app.get("/v1/audit").query(&query), 200).await;
    let entries = trail.as_array().expect("a list of audit entries");
    assert!(entries.len() >= 6, "placed and every saga step: {trail}");
    let records: Vec<&Value> = entries.iter().map(|e| &e["record"]).collect();
    for record in &records {
        assert_eq!(record["entity_type"], "order", "{record}");
        assert_eq!(record["entity_id"], id, "{record}");
    }
    assert_eq!(
        records[0]["actor"]["kind"], "api_key",
        "placed by the client: {trail}"
    );
    assert_eq!(records[0]["action"], "placed", "{trail}");
    let by = |kind: &str, actor: &str| {
        let actors = records.iter().map(|r| &r["actor"]);
        actors
            .filter(|a| a["kind"] == kind && a["id"] == actor)
            .count()
    };
    assert!(by("system", "checkout") >= 4, "saga steps: {trail}");
    assert_eq!(
        by("partner", "carrier"),
        2,
        "shipped and delivered: {trail}"
    );
}

/// After one completed order the books read back as the saga posted them: PSP clearing holds
/// the captured total with nothing pending, the order's receivable is settled at zero, and an
/// unknown account is 404; the order's audit trail tells who did each step; and both reads
/// refuse bad queries (400) and keys without the admin scope (403).
async fn ledger_and_audit_tell_a_completed_orders_story(engine: Engine) {
    let app = spawn_app(engine).await;
    stock_up(&app).await;
    let (id, order) = completed_order(&app, 1).await;
    let total = order["total_minor"].as_i64().expect("a total");
    let clearing = ok(app.get("/v1/ledger/accounts/psp:clearing"), 200).await;
    let settled = json!({"posted_minor": total, "pending_minor": 0});
    assert_eq!(clearing["balances"], json!({"USD": settled}), "{clearing}");
    let receivable_path = format!("/v1/ledger/accounts/order:{id}:receivable");
    let receivable = ok(app.get(&receivable_path), 200).await;
    let zero = json!({"posted_minor": 0, "pending_minor": 0});
    assert_eq!(receivable["balances"], json!({"USD": zero}), "{receivable}");
    problem(
        app.get("/v1/ledger/accounts/no:such:account"),
        404,
        "not-found",
    )
    .await;
    let unknown_order = format!("/v1/ledger/accounts/order:{}:receivable", Uuid::now_v7());
    problem(app.get(&unknown_order), 404, "not-found").await;

    assert_completed_order_audit(&app, &id).await;
    for query in [
        "",
        "?entity=order",
        "?entity=",
        "?entity=order:x&colour=red",
    ] {
        problem(app.get(&format!("/v1/audit{query}")), 400, "invalid-query").await;
    }
    let orders_only = app.key_with(&[Scope::Orders]).await;
    let audit_path = format!("/v1/audit?entity=order:{id}");
    for path in ["/v1/ledger/accounts/psp:clearing", audit_path.as_str()] {
        problem(get_as(&app, &orders_only, path), 403, "forbidden").await;
    }
    app.stop().await;
}

/// Inserts an open dead letter of the app's tenant through the store, as a consumer group that
/// gave up on an event would, and returns its id.
async fn insert_dead_letter(app: &TestApp) -> Uuid {
    let now = app.clock.now();
    let error = "order does not exist";
    let letter = DeadLetterRecord {
        id: Uuid::now_v7(),
        tenant_id: app.tenant,
        group: tally_checkout::CHECKOUT_GROUP.to_owned(),
        event_id: EventId::generate(),
        partition: 0,
        position: 1,
        event_type: "tally.order.placed.v1".to_owned(),
        subject: OrderId::generate().to_string(),
        error: error.to_owned(),
        attempts: json!([{"at": now.to_rfc3339(), "error": error}]),
        status: "open".to_owned(),
        created_at: now,
        updated_at: now,
    };
    let mut tx = app.store().begin().await.expect("begin a transaction");
    tx.upsert_dead_letter(&letter)
        .await
        .expect("insert a dead letter");
    tx.commit().await.expect("commit the dead letter");
    letter.id
}

/// A parked event's letter reads as unsettled (its effect not applied) while open and while
/// being retried, and no longer once retried; another event, or the same event of another
/// group, has none.
async fn a_dead_letter_is_unsettled_until_retried(engine: Engine) {
    let app = spawn_app(engine).await;
    let id = insert_dead_letter(&app).await;
    let store = app.store();
    let letter = store
        .dead_letter(app.tenant, id)
        .await
        .expect("read a dead letter")
        .expect("the dead letter exists");
    let group = tally_checkout::CHECKOUT_GROUP;
    let unsettled = |group: &'static str, event: EventId| async move {
        store
            .dead_letter_unsettled(group, event)
            .await
            .expect("look up the letter")
    };
    assert!(unsettled(group, letter.event_id).await, "an open letter");
    assert!(!unsettled(group, EventId::generate()).await, "no letter");
    assert!(!unsettled("notifications", letter.event_id).await);
    let now = app.clock.now();
    let moved = store.set_dead_letter_status(app.tenant, id, "open", "retrying", now);
    assert!(moved.await.expect("ask for a retry"));
    assert!(
        unsettled(group, letter.event_id).await,
        "a letter being retried"
    );
    let moved = store.set_dead_letter_status(app.tenant, id, "retrying", "retried", now);
    assert!(moved.await.expect("settle the letter"));
    assert!(!unsettled(group, letter.event_id).await, "a retried letter");
    app.stop().await;
}

/// The ids of the letters a listing returns.
async fn listed_letters(app: &TestApp, api_key: &str, query: &str) -> Vec<String> {
    let listed = ok(
        get_as(app, api_key, &format!("/v1/dead-letters{query}")),
        200,
    )
    .await;
    let letters = listed.as_array().expect("a list of dead letters");
    let ids = letters
        .iter()
        .map(|l| l["id"].as_str().expect("an id").to_owned());
    ids.collect()
}

/// The status of a dead letter as the store holds it, read without the API.
async fn stored_status(app: &TestApp, id: Uuid) -> String {
    let letter = app
        .store()
        .dead_letter(app.tenant, id)
        .await
        .expect("read a dead letter");
    letter.expect("the dead letter exists").status
}

/// A dead letter is listed, also under its status filter and again after it is discarded;
/// another tenant does not see it, a key without the admin scope is refused (403), and bad
/// filters are refused (400).
async fn dead_letters_are_listed_by_status(engine: Engine) {
    let app = spawn_app(engine).await;
    let id = insert_dead_letter(&app).await;
    for query in [
        "?status=bogus",
        "?limit=0",
        "?limit=201",
        "?limit=many",
        "?colour=red",
    ] {
        problem(
            app.get(&format!("/v1/dead-letters{query}")),
            400,
            "invalid-query",
        )
        .await;
    }
    let orders_only = app.key_with(&[Scope::Orders]).await;
    problem(
        get_as(&app, &orders_only, "/v1/dead-letters"),
        403,
        "forbidden",
    )
    .await;
    let key = app.key.clone();
    assert_eq!(listed_letters(&app, &key, "").await, [id.to_string()]);
    assert_eq!(
        listed_letters(&app, &key, "?status=open&limit=1").await,
        [id.to_string()]
    );
    assert!(
        listed_letters(&app, &key, "?status=discarded")
            .await
            .is_empty()
    );
    let (_, other) = app.other_tenant(&Scope::ALL).await;
    assert!(listed_letters(&app, &other, "").await.is_empty());

    let letter = app
        .store()
        .dead_letter(app.tenant, id)
        .await
        .expect("read")
        .expect("the letter");
    let settled = || app.store().inbox_contains(&letter.group, letter.event_id);
    assert!(
        !settled().await.expect("inbox"),
        "an open letter's event is not applied"
    );
    let discard = format!("/v1/dead-letters/{id}/discard");
    ok(bare_post(&app, &key, &discard), 202).await;
    assert_eq!(
        listed_letters(&app, &key, "?status=discarded").await,
        [id.to_string()]
    );
    assert!(
        settled().await.expect("inbox"),
        "a discarded event is settled for its group, so reading the log again skips it"
    );
    assert!(listed_letters(&app, &key, "?status=open").await.is_empty());
    app.stop().await;
}

/// A dead letter cannot be changed by another tenant (404) or a key without the admin scope
/// (403); it is discarded with 202, discarded again with 202 as a no-op, and then cannot be
/// retried (409 `dead-letter-state`); unknown or malformed ids are 404.
async fn dead_letters_are_discarded_once(engine: Engine) {
    let app = spawn_app(engine).await;
    let id = insert_dead_letter(&app).await;
    let discard = format!("/v1/dead-letters/{id}/discard");
    let retry = format!("/v1/dead-letters/{id}/retry");
    let (_, other) = app.other_tenant(&Scope::ALL).await;
    let orders_only = app.key_with(&[Scope::Orders]).await;
    for path in [&discard, &retry] {
        problem(bare_post(&app, &other, path), 404, "not-found").await;
        problem(bare_post(&app, &orders_only, path), 403, "forbidden").await;
    }
    assert_eq!(
        stored_status(&app, id).await,
        "open",
        "nobody else changed it"
    );

    let key = app.key.clone();
    for attempt in 1..=2 {
        let letter = ok(bare_post(&app, &key, &discard), 202).await;
        assert_eq!(letter["status"], "discarded", "discard {attempt}: {letter}");
        assert_eq!(letter["id"], id.to_string(), "{letter}");
    }
    problem(bare_post(&app, &key, &retry), 409, "dead-letter-state").await;
    assert_eq!(stored_status(&app, id).await, "discarded");
    // The group is done with the discarded event: its inbox holds it, so reading the log again
    // (after a crash) skips it instead of applying it after all.
    let letter = app
        .store()
        .dead_letter(app.tenant, id)
        .await
        .expect("read the letter")
        .expect("the letter");
    assert!(
        app.store()
            .inbox_contains(&letter.group, letter.event_id)
            .await
            .expect("read the inbox"),
        "a discarded event is settled in its group's inbox"
    );
    for unknown in [Uuid::now_v7().to_string(), "not-a-letter".to_owned()] {
        for verb in ["discard", "retry"] {
            let path = format!("/v1/dead-letters/{unknown}/{verb}");
            problem(bare_post(&app, &key, &path), 404, "not-found").await;
        }
    }
    app.stop().await;
}

/// A reservation planned on stock as read is checked on its row as the effect that holds it
/// is stored: while the unit is there it is reserved, with its movement; once another order
/// took it, the effect stores nothing (no inbox row, no audit record, no movement) and the
/// step is told to decide again.
async fn a_planned_reservation_is_written_only_if_it_still_fits(engine: Engine) {
    let app = spawn_app(engine).await;
    let (id, order, read) = stored_completed_order(&app).await;
    app.create_product("Cap", &[("CAP", 1_500)]).await;
    assert_eq!(app.adjust("cap-stock", "CAP", "wh", 1).await.status(), 200);
    let reserving = |event| {
        let mut effect = test_effect(&app, order, event, (&read.status, &read.saga));
        effect.change.stock = tally_store::stock::movements(
            order,
            &[Reservation {
                sku: "CAP".to_owned(),
                location: "wh".to_owned(),
                quantity: 1,
            }],
            tally_store::MovementKind::Reserved,
            Utc::now(),
        );
        effect
    };
    let store = app.store();
    let (first, second) = (EventId::generate(), EventId::generate());
    let written = store.write_effect(reserving(first)).await.expect("write");
    assert_eq!(written, EffectOutcome::Written, "the one unit");
    let taken = store.write_effect(reserving(second)).await.expect("write");
    assert_eq!(
        taken,
        EffectOutcome::StockTaken,
        "no unit is left for a second reservation"
    );
    for (event, applied) in [(first, true), (second, false)] {
        let found = store.inbox_contains("effect-test", event).await;
        assert_eq!(found.expect("inbox"), applied, "{event}");
    }
    let audited = effect_test_audits(&app, &id).await;
    assert_eq!(audited, 1, "the written effect's audit record only");
    let rows = app
        .store()
        .read_stock(app.tenant, &["CAP".to_owned()])
        .await
        .expect("stock");
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].level.on_hand, rows[0].level.reserved),
        (1, 1),
        "one unit on hand, reserved once"
    );
    app.stop().await;
}

/// Many prepared effects handed to the store at once (which PostgreSQL stores in batches, and
/// SQLite in one group commit) each come to what they would alone: fresh ones are written,
/// copies of one event are written once, stale ones (three of them copies of one event) find
/// the order changed, reservations share the last units (one effect reserving two of them in
/// two moves of one row) and the rest find them taken, a move the row refuses fails alone.
/// Then an unbalanced journal entry fails alone among fresh effects, which are written. Nothing
/// of the effects that were not written is stored. Fails if a stale copy takes the row of an
/// earlier copy, taken back, for applied, or if a batch that fails as a whole answers all its
/// effects with its error.
async fn effects_stored_at_once_each_come_to_what_they_would_alone(engine: Engine) {
    let app = spawn_app(engine).await;
    let (id, order, read) = stored_completed_order(&app).await;
    app.create_product("Cap", &[("CAP", 1_500)]).await;
    assert_eq!(app.adjust("cap-stock", "CAP", "wh", 3).await.status(), 200);
    let expected = (read.status.as_str(), &read.saga);
    let moving = |units: usize, kind| {
        let mut effect = test_effect(&app, order, EventId::generate(), expected);
        let (sku, location) = match kind {
            tally_store::MovementKind::Reserved => ("CAP", "wh"),
            _ => (TEE, "wh-east"),
        };
        let reservation = Reservation {
            sku: sku.to_owned(),
            location: location.to_owned(),
            quantity: 1,
        };
        effect.change.stock =
            tally_store::stock::movements(order, &vec![reservation; units], kind, Utc::now());
        effect
    };
    let reserved = tally_store::MovementKind::Reserved;
    let mut unbalanced = test_effect(&app, order, EventId::generate(), expected);
    unbalanced.change.journal = vec![tally_store::NewJournalEntry {
        id: format!("effect-test:{}", Uuid::now_v7()),
        kind: "effect_test".to_owned(),
        pending_id: None,
        order_id: Some(order),
        postings: [("a", 100), ("b", -99)]
            .map(|(account, amount_minor)| tally_store::PostingRecord {
                account: account.to_owned(),
                currency: "USD".to_owned(),
                amount_minor,
            })
            .to_vec(),
        body: json!({}),
        created_at: Utc::now(),
    }];
    let copied = EventId::generate();
    let mut effects: Vec<(&str, usize, PreparedEffect)> = Vec::new();
    for _ in 0..20 {
        let fresh = test_effect(&app, order, EventId::generate(), expected);
        effects.push(("fresh", 0, fresh));
    }
    for _ in 0..5 {
        effects.push(("copy", 0, test_effect(&app, order, copied, expected)));
    }
    for _ in 0..3 {
        let stale = test_effect(&app, order, EventId::generate(), ("delivered", &read.saga));
        effects.push(("stale", 0, stale));
    }
    // Copies of one stale effect: none finds another's row and takes it for applied.
    let stale_copied = EventId::generate();
    for _ in 0..3 {
        let stale = test_effect(&app, order, stale_copied, ("delivered", &read.saga));
        effects.push(("stale", 0, stale));
    }
    effects.push(("reserve", 2, moving(2, reserved)));
    for _ in 0..4 {
        effects.push(("reserve", 1, moving(1, reserved)));
    }
    for _ in 0..2 {
        let shipping = moving(1, tally_store::MovementKind::Shipped);
        effects.push(("refused", 0, shipping));
    }
    // A second round in which the unbalanced entry makes a batch fail as a whole: the effects
    // that shared it are stored one by one.
    let mut failing = vec![("unbalanced", 0, unbalanced)];
    for _ in 0..10 {
        let fresh = test_effect(&app, order, EventId::generate(), expected);
        failing.push(("fresh", 0, fresh));
    }
    let mut outcomes = store_at_once(&app, effects).await;
    outcomes.extend(store_at_once(&app, failing).await);
    let (mut audited_expected, mut units_reserved, mut copies_written) = (0, 0, 0);
    for (kind, units, once, outcome) in outcomes {
        let Once::Inbox { event, .. } = once else {
            panic!("a test effect is made once by its inbox row")
        };
        let written = matches!(outcome, Ok(EffectOutcome::Written));
        match kind {
            "fresh" => assert!(written, "{outcome:?}"),
            "copy" => {
                assert!(
                    matches!(
                        outcome,
                        Ok(EffectOutcome::Written | EffectOutcome::AlreadyApplied)
                    ),
                    "{outcome:?}"
                );
                copies_written += usize::from(written);
            }
            "stale" => assert!(
                matches!(outcome, Ok(EffectOutcome::OrderChanged)),
                "{outcome:?}"
            ),
            "reserve" => {
                assert!(
                    written || matches!(outcome, Ok(EffectOutcome::StockTaken)),
                    "{outcome:?}"
                );
                units_reserved += if written { units } else { 0 };
            }
            _ => assert!(outcome.is_err(), "{kind}: {outcome:?}"),
        }
        audited_expected += usize::from(written);
        if kind != "copy" {
            let found = app.store().inbox_contains("effect-test", event).await;
            assert_eq!(found.expect("inbox"), written, "{kind}: {outcome:?}");
        }
    }
    assert_eq!(copies_written, 1, "copies of one event are written once");
    assert_eq!(units_reserved, 3, "the reservations share the three units");
    assert_eq!(effect_test_audits(&app, &id).await, audited_expected);
    let rows = app
        .store()
        .read_stock(app.tenant, &["CAP".to_owned(), TEE.to_owned()])
        .await
        .expect("stock");
    let levels: Vec<_> = rows
        .iter()
        .map(|row| (row.sku.as_str(), row.level.on_hand, row.level.reserved))
        .collect();
    let tee_on_hand = TEE_STOCK - 1;
    assert_eq!(levels, [("CAP", 3, 3), (TEE, tee_on_hand, 0)]);
    let journal = app.store().journal(app.tenant).await.expect("journal");
    assert!(
        journal
            .iter()
            .all(|entry| entry.record.kind != "effect_test"),
        "the unbalanced entry is not stored"
    );
    app.stop().await;
}

/// Hands every effect to the store at once and returns, for each, its kind and units as given,
/// the row that makes it once, and what became of it.
async fn store_at_once<'k>(
    app: &TestApp,
    effects: Vec<(&'k str, usize, PreparedEffect)>,
) -> Vec<(
    &'k str,
    usize,
    Once,
    Result<EffectOutcome, tally_store::StoreError>,
)> {
    let tasks: Vec<_> = effects
        .into_iter()
        .map(|(kind, units, effect)| {
            let store = std::sync::Arc::clone(app.store());
            let once = effect.once.clone();
            let task = tokio::spawn(async move { store.write_effect(effect).await });
            (kind, units, once, task)
        })
        .collect();
    let mut outcomes = Vec::new();
    for (kind, units, once, task) in tasks {
        outcomes.push((kind, units, once, task.await.expect("task")));
    }
    outcomes
}
