//! The sandbox driven over real HTTP, as Tally's workers drive it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::{Value, json};
use tally_sandbox::signature::{self, SignatureError};
use tally_sandbox::webhooks::{self, WebhookEvent};
use tally_sandbox::{EffectKind, Sandbox, SandboxConfig};

const ANY_PORT: &str = "127.0.0.1:0";
/// How long a test waits for webhooks before it fails.
const WEBHOOK_WAIT: Duration = Duration::from_secs(10);
const WINDOW_SECONDS: i64 = 300;

struct Harness {
    sandbox: Sandbox,
    http: reqwest::Client,
}

async fn spawn_sandbox(config: SandboxConfig) -> Harness {
    let listen: SocketAddr = ANY_PORT.parse().expect("a socket address");
    let sandbox = tally_sandbox::start(config, listen)
        .await
        .expect("the sandbox starts");
    Harness {
        sandbox,
        http: reqwest::Client::new(),
    }
}

impl Harness {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.sandbox.address)
    }

    /// POSTs `body` with `key`, returning the status and the JSON body.
    async fn post(&self, path: &str, key: Option<&str>, body: &Value) -> (StatusCode, Value) {
        let mut request = self.http.post(self.url(path)).json(body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        let response = request.send().await.expect("the sandbox answers");
        let status = response.status();
        let body = response.json().await.expect("a JSON body");
        (status, body)
    }

    async fn authorize(&self, key: &str, order_id: &str, amount_minor: i64) -> (StatusCode, Value) {
        let body = json!({"order_id": order_id, "amount_minor": amount_minor, "currency": "EUR"});
        self.post("/payments/authorizations", Some(key), &body)
            .await
    }
}

fn text<'a>(body: &'a Value, field: &str) -> &'a str {
    body[field].as_str().expect("a text field")
}

/// Fifty concurrent requests carrying one key apply one effect, all get the same response, and
/// the effect counts fifty deliveries.
#[tokio::test]
async fn concurrent_duplicates_apply_once() {
    let harness = spawn_sandbox(SandboxConfig {
        latency: 0..5,
        ..SandboxConfig::default()
    })
    .await;
    let requests = (0..50).map(|_| harness.authorize("key-1", "order-1", 10_000));
    let responses = futures::future::join_all(requests).await;
    assert_eq!(responses[0].0, StatusCode::CREATED);
    assert!(responses.iter().all(|response| *response == responses[0]));
    let effects = harness.sandbox.effects();
    assert_eq!(effects.len(), 1);
    assert_eq!(effects[0].kind, EffectKind::Authorization);
    assert_eq!(effects[0].deliveries, 50);
    assert_eq!(effects[0].amount_minor, Some(10_000));
    assert_eq!(effects[0].response_status, 201);
    harness.sandbox.stop().await;
}

/// When the response is lost after the effect, the retry gets the stored success and the
/// effect is applied once.
#[tokio::test]
async fn lost_response_is_replayed_to_the_retry() {
    let harness = spawn_sandbox(SandboxConfig {
        error_after_effect_rate: 1.0,
        ..SandboxConfig::default()
    })
    .await;
    let (status, _) = harness.authorize("key-1", "order-1", 5_000).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let (status, body) = harness.authorize("key-1", "order-1", 5_000).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(text(&body, "status"), "authorized");
    let effects = harness.sandbox.effects();
    assert_eq!(effects.len(), 1);
    assert_eq!(effects[0].deliveries, 2);
    assert_eq!(effects[0].response_status, 201);
    harness.sandbox.stop().await;
}

/// A fault before the effect records nothing, however often the caller retries.
#[tokio::test]
async fn errors_before_the_effect_record_nothing() {
    let harness = spawn_sandbox(SandboxConfig {
        error_rate: 1.0,
        ..SandboxConfig::default()
    })
    .await;
    for _ in 0..5 {
        let (status, _) = harness.authorize("key-1", "order-1", 5_000).await;
        assert!(
            status == StatusCode::INTERNAL_SERVER_ERROR
                || status == StatusCode::SERVICE_UNAVAILABLE
        );
    }
    assert!(harness.sandbox.effects().is_empty());
    harness.sandbox.stop().await;
}

/// A response held back past the caller's timeout still applies its effect once, and the
/// retry gets the stored response at once.
#[tokio::test]
async fn timed_out_response_keeps_its_effect() {
    let harness = spawn_sandbox(SandboxConfig {
        timeout_rate: 1.0,
        timeout_delay: Duration::from_secs(30),
        ..SandboxConfig::default()
    })
    .await;
    let body = json!({"order_id": "order-1", "template": "order_confirmed", "to": "a@example.com"});
    let timed_out = harness
        .http
        .post(harness.url("/notifications"))
        .header("Idempotency-Key", "key-1")
        .timeout(Duration::from_millis(200))
        .json(&body)
        .send()
        .await;
    assert!(timed_out.expect_err("the caller times out").is_timeout());
    let (status, body) = harness.post("/notifications", Some("key-1"), &body).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert!(text(&body, "notification_id").starts_with("ntf_"));
    let effects = harness.sandbox.effects();
    assert_eq!(effects.len(), 1);
    assert_eq!(effects[0].kind, EffectKind::Notification);
    assert_eq!(effects[0].deliveries, 2);
    harness.sandbox.stop().await;
}

/// The documented amounts decline an authorization (…13) and fail a capture (…17), and both
/// are recorded as effects with status 402.
#[tokio::test]
async fn documented_decline_and_capture_failure() {
    let harness = spawn_sandbox(SandboxConfig::default()).await;
    let (status, body) = harness.authorize("auth-declined", "order-1", 1_013).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(
        body,
        json!({"status": "declined", "reason": "card_declined"})
    );

    let (status, body) = harness.authorize("auth-ok", "order-2", 1_017).await;
    assert_eq!(status, StatusCode::CREATED);
    let capture_path = format!(
        "/payments/authorizations/{}/capture",
        text(&body, "authorization_id")
    );
    let (status, body) = harness
        .post(
            &capture_path,
            Some("capture-1"),
            &json!({"amount_minor": 1_017}),
        )
        .await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(text(&body, "status"), "failed");

    let effects = harness.sandbox.effects();
    let kinds: Vec<_> = effects
        .iter()
        .map(|e| (e.kind, e.response_status))
        .collect();
    assert_eq!(
        kinds,
        [
            (EffectKind::Authorization, 402),
            (EffectKind::Authorization, 201),
            (EffectKind::Capture, 402),
        ]
    );
    harness.sandbox.stop().await;
}

/// An authorization cannot be voided once captured (409), a capture cannot be refunded beyond
/// its amount (422), and neither refusal records an effect.
#[tokio::test]
async fn payment_state_rules() {
    let harness = spawn_sandbox(SandboxConfig::default()).await;
    let (_, body) = harness.authorize("auth-1", "order-1", 10_000).await;
    let authorization = text(&body, "authorization_id").to_owned();

    let (status, _) = harness
        .post(
            "/payments/authorizations/auth_unknown/capture",
            Some("c-0"),
            &json!({"amount_minor": 1}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let capture_path = format!("/payments/authorizations/{authorization}/capture");
    let (status, body) = harness
        .post(&capture_path, Some("c-1"), &json!({"amount_minor": 10_000}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(text(&body, "status"), "captured");
    let capture = text(&body, "capture_id").to_owned();

    let void_path = format!("/payments/authorizations/{authorization}/void");
    let (status, body) = harness.post(&void_path, Some("v-1"), &json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(text(&body, "code"), "authorization_captured", "{body}");

    let refund_path = format!("/payments/captures/{capture}/refunds");
    let (status, _) = harness
        .post(&refund_path, Some("r-1"), &json!({"amount_minor": 6_000}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = harness
        .post(&refund_path, Some("r-2"), &json!({"amount_minor": 4_001}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    let kinds: Vec<_> = harness.sandbox.effects().iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            EffectKind::Authorization,
            EffectKind::Capture,
            EffectKind::Refund
        ]
    );
    harness.sandbox.stop().await;
}

/// A voided authorization cannot be captured (409).
#[tokio::test]
async fn capture_after_void_conflicts() {
    let harness = spawn_sandbox(SandboxConfig::default()).await;
    let (_, body) = harness.authorize("auth-1", "order-1", 2_500).await;
    let authorization = text(&body, "authorization_id").to_owned();
    let void_path = format!("/payments/authorizations/{authorization}/void");
    let response = harness
        .http
        .post(harness.url(&void_path))
        .header("Idempotency-Key", "v-1")
        .send()
        .await
        .expect("the sandbox answers");
    assert_eq!(response.status(), StatusCode::OK);
    let capture_path = format!("/payments/authorizations/{authorization}/capture");
    let (status, body) = harness
        .post(&capture_path, Some("c-1"), &json!({"amount_minor": 2_500}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(text(&body, "code"), "authorization_voided", "{body}");
    let (status, body) = harness.post(&void_path, Some("v-2"), &json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(text(&body, "code"), "authorization_voided", "{body}");
    harness.sandbox.stop().await;
}

/// An authorization asked for again under its key, after its first answer was lost and after
/// it was voided, answers with the authorization the provider made, as replayed, so a caller
/// that never heard of it learns what it must void; nothing new is authorized.
#[tokio::test]
async fn an_authorization_asked_again_answers_with_the_one_made() {
    let harness = Arc::new(spawn_sandbox(SandboxConfig::default()).await);
    let mut held = harness.sandbox.hold_next(EffectKind::Authorization);
    let first = {
        let harness = Arc::clone(&harness);
        tokio::spawn(async move { harness.authorize("auth-1", "order-1", 2_500).await })
    };
    held.applied().await;
    held.release(tally_sandbox::hold::Release::ServerError);
    let (status, _) = first.await.expect("the request task");
    assert_eq!(
        status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "the answer is lost"
    );
    let response = harness
        .http
        .post(harness.url("/payments/authorizations"))
        .header("Idempotency-Key", "auth-1")
        .json(&json!({"order_id": "order-1", "amount_minor": 2_500, "currency": "EUR"}))
        .send()
        .await
        .expect("the sandbox answers");
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(response.headers()["idempotent-replayed"], "true");
    let body: Value = response.json().await.expect("a JSON body");
    let authorization = text(&body, "authorization_id").to_owned();

    let void_path = format!("/payments/authorizations/{authorization}/void");
    let (status, _) = harness.post(&void_path, Some("v-1"), &json!({})).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a replay is never failed after the fact"
    );
    let (status, body) = harness.authorize("auth-1", "order-1", 2_500).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(text(&body, "authorization_id"), authorization);
    let kinds: Vec<_> = harness.sandbox.effects().iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [EffectKind::Authorization, EffectKind::Void]);
}

/// A held response waits, with its effect applied, until the test releases it: as a lost
/// answer (500) here, which a retry under the key then replays; other kinds are not held.
#[tokio::test]
async fn a_held_response_waits_for_its_release() {
    let harness = Arc::new(spawn_sandbox(SandboxConfig::default()).await);
    let mut held = harness
        .sandbox
        .hold_next(tally_sandbox::EffectKind::Capture);
    let in_flight = {
        let harness = Arc::clone(&harness);
        tokio::spawn(async move { harness.authorize("auth-1", "order-1", 2_500).await })
    };
    let (status, body) = in_flight.await.expect("the request task");
    assert_eq!(status, StatusCode::CREATED, "an authorization is not held");
    let capture_path = format!(
        "/payments/authorizations/{}/capture",
        text(&body, "authorization_id")
    );
    let in_flight = {
        let harness = Arc::clone(&harness);
        let path = capture_path.clone();
        tokio::spawn(async move {
            harness
                .post(&path, Some("c-1"), &json!({"amount_minor": 2_500}))
                .await
        })
    };
    held.applied().await;
    let kinds: Vec<_> = harness.sandbox.effects().iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [EffectKind::Authorization, EffectKind::Capture]);
    assert!(!in_flight.is_finished(), "the capture's answer is held");
    held.release(tally_sandbox::hold::Release::ServerError);
    let (status, _) = in_flight.await.expect("the request task");
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let (status, body) = harness
        .post(&capture_path, Some("c-1"), &json!({"amount_minor": 2_500}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(text(&body, "status"), "captured");
    assert_eq!(harness.sandbox.effects().len(), 2);
}

/// A mutating request without an Idempotency-Key is refused with 400 and records nothing; a
/// key reused for a different request is refused with 422.
#[tokio::test]
async fn idempotency_key_is_required_and_bound_to_its_request() {
    let harness = spawn_sandbox(SandboxConfig::default()).await;
    let body = json!({"order_id": "order-1", "amount_minor": 100, "currency": "EUR"});
    let (status, problem) = harness.post("/payments/authorizations", None, &body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(problem["status"], 400);
    let (status, _) = harness
        .post(
            "/notifications",
            None,
            &json!({"order_id": "o", "template": "t", "to": "x"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(harness.sandbox.effects().is_empty());

    harness.authorize("key-1", "order-1", 100).await;
    let (status, _) = harness.authorize("key-1", "order-1", 200).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = harness
        .post(
            "/notifications",
            Some("key-1"),
            &json!({"order_id": "order-1", "template": "t", "to": "x"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(harness.sandbox.effects().len(), 1);
    harness.sandbox.stop().await;
}

/// `GET /sandbox/effects` lists the same effects as `Sandbox::effects`, in snake_case.
#[tokio::test]
async fn effects_are_listed_over_http() {
    let harness = spawn_sandbox(SandboxConfig::default()).await;
    harness.authorize("key-1", "order-1", 700).await;
    let listed: Vec<tally_sandbox::Effect> = harness
        .http
        .get(harness.url("/sandbox/effects"))
        .send()
        .await
        .expect("the sandbox answers")
        .json()
        .await
        .expect("a list of effects");
    assert_eq!(listed, harness.sandbox.effects());
    let raw: Value = harness
        .http
        .get(harness.url("/sandbox/effects"))
        .send()
        .await
        .expect("the sandbox answers")
        .json()
        .await
        .expect("JSON");
    assert_eq!(raw[0]["kind"], "authorization");
    harness.sandbox.stop().await;
}

/// A webhook as the test's receiver got it.
#[derive(Debug, Clone)]
struct Received {
    headers: HeaderMap,
    body: Bytes,
}

type Inbox = Arc<Mutex<Vec<Received>>>;

async fn receive(State(inbox): State<Inbox>, headers: HeaderMap, body: Bytes) -> StatusCode {
    inbox
        .lock()
        .expect("the inbox lock")
        .push(Received { headers, body });
    StatusCode::NO_CONTENT
}

/// Serves a webhook receiver that answers 204 and keeps what it got.
async fn spawn_receiver() -> (String, Inbox, tokio::task::JoinHandle<()>) {
    let inbox = Inbox::default();
    let app = axum::Router::new()
        .route("/v1/webhooks/carrier", post(receive))
        .with_state(Arc::clone(&inbox));
    let listener = tokio::net::TcpListener::bind(ANY_PORT)
        .await
        .expect("the receiver binds");
    let address = listener.local_addr().expect("the receiver's address");
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .await
            .expect("the receiver serves");
    });
    (
        format!("http://{address}/v1/webhooks/carrier"),
        inbox,
        server,
    )
}

/// Waits until `inbox` holds `count` webhooks, failing with `what` after [`WEBHOOK_WAIT`].
async fn wait_for_webhooks(inbox: &Inbox, count: usize, what: &str) {
    let deadline = tokio::time::Instant::now() + WEBHOOK_WAIT;
    while inbox.lock().expect("the inbox lock").len() < count {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn header<'a>(received: &'a Received, name: &str) -> &'a str {
    received.headers[name].to_str().expect("a text header")
}

/// A shipment sends signed `shipment.shipped` then `shipment.delivered` webhooks, each three
/// times with one delivery id; verify accepts them and refuses a tampered body or an old
/// timestamp.
#[tokio::test]
async fn shipment_webhooks_are_signed_duplicated_and_ordered() {
    let (receiver_url, inbox, receiver) = spawn_receiver().await;
    let secret = "whsec_test";
    let harness = spawn_sandbox(SandboxConfig {
        webhook_duplicates: 3,
        webhook_secret: secret.to_owned(),
        ..SandboxConfig::default()
    })
    .await;
    harness.sandbox.set_webhook_url(receiver_url);
    let body = json!({"order_id": "order-1", "lines": [{"sku": "SKU-1", "quantity": 2}]});
    let (status, shipment) = harness
        .post("/carrier/shipments", Some("ship-1"), &body)
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(text(&shipment, "tracking_number").starts_with("TRK"));

    wait_for_webhooks(&inbox, 6, "six webhooks arrive").await;
    let received = inbox.lock().expect("the inbox lock").clone();
    assert_eq!(received.len(), 6);
    let now = chrono::Utc::now().timestamp();
    let mut events = Vec::new();
    for copy in &received {
        let timestamp = header(copy, webhooks::TIMESTAMP_HEADER);
        let signature_value = header(copy, webhooks::SIGNATURE_HEADER);
        let verified = signature::verify(
            secret,
            timestamp,
            signature_value,
            &copy.body,
            now,
            WINDOW_SECONDS,
        );
        assert_eq!(verified, Ok(()));
        let event: WebhookEvent = serde_json::from_slice(&copy.body).expect("a webhook event");
        assert_eq!(header(copy, webhooks::ID_HEADER), event.delivery_id);
        assert_eq!(header(copy, "content-type"), "application/json");
        events.push(event);
    }
    for (index, expected_type) in [webhooks::SHIPPED, webhooks::DELIVERED]
        .into_iter()
        .enumerate()
    {
        let copies = &events[index * 3..index * 3 + 3];
        assert!(
            copies.iter().all(|event| event == &copies[0]),
            "copies are identical"
        );
        assert_eq!(copies[0].event_type, expected_type);
        assert_eq!(copies[0].shipment_id, text(&shipment, "shipment_id"));
        assert_eq!(copies[0].order_id, "order-1");
    }
    assert_ne!(events[0].delivery_id, events[3].delivery_id);

    let copy = &received[0];
    let timestamp = header(copy, webhooks::TIMESTAMP_HEADER);
    let signature_value = header(copy, webhooks::SIGNATURE_HEADER);
    let tampered = String::from_utf8_lossy(&copy.body).replace("order-1", "order-2");
    assert_eq!(
        signature::verify(
            secret,
            timestamp,
            signature_value,
            tampered.as_bytes(),
            now,
            WINDOW_SECONDS
        ),
        Err(SignatureError::Mismatch)
    );
    let later = now + WINDOW_SECONDS + 60;
    assert!(matches!(
        signature::verify(
            secret,
            timestamp,
            signature_value,
            &copy.body,
            later,
            WINDOW_SECONDS
        ),
        Err(SignatureError::Expired { .. })
    ));
    let effects = harness.sandbox.effects();
    assert_eq!(effects.len(), 1, "webhooks are not effects");
    assert_eq!(effects[0].kind, EffectKind::Shipment);
    harness.sandbox.stop().await;
    receiver.abort();
}

/// A receiver that refuses a webhook at first gets it again, with the same delivery id, once
/// it answers 2xx.
#[tokio::test]
async fn refused_webhooks_are_retried() {
    let refusals = Arc::new(Mutex::new(2_u32));
    let inbox = Inbox::default();
    let app = axum::Router::new().route(
        "/hook",
        post({
            let refusals = Arc::clone(&refusals);
            let inbox = Arc::clone(&inbox);
            move |headers: HeaderMap, body: Bytes| async move {
                let mut left = refusals.lock().expect("the refusals lock");
                if *left > 0 {
                    *left -= 1;
                    return StatusCode::SERVICE_UNAVAILABLE;
                }
                inbox
                    .lock()
                    .expect("the inbox lock")
                    .push(Received { headers, body });
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(ANY_PORT)
        .await
        .expect("the receiver binds");
    let address = listener.local_addr().expect("the receiver's address");
    let receiver = tokio::spawn(async move {
        axum::serve(listener, app)
            .await
            .expect("the receiver serves");
    });
    let harness = spawn_sandbox(SandboxConfig {
        webhook_url: Some(format!("http://{address}/hook")),
        ..SandboxConfig::default()
    })
    .await;
    let body = json!({"order_id": "order-1", "lines": [{"sku": "SKU-1", "quantity": 1}]});
    harness
        .post("/carrier/shipments", Some("ship-1"), &body)
        .await;
    wait_for_webhooks(&inbox, 2, "both webhooks arrive").await;
    let received = inbox.lock().expect("the inbox lock").clone();
    let types: Vec<String> = received
        .iter()
        .map(|copy| {
            serde_json::from_slice::<WebhookEvent>(&copy.body)
                .expect("an event")
                .event_type
        })
        .collect();
    assert_eq!(types, [webhooks::SHIPPED, webhooks::DELIVERED]);
    harness.sandbox.stop().await;
    receiver.abort();
}

/// A webhook whose receiver went away (a server stopped, to come back on another address) is
/// retried at the URL set since: the moved receiver gets both updates, none is left retrying
/// the old address.
#[tokio::test]
async fn webhooks_under_way_follow_a_moved_receiver() {
    // An address nothing listens on: bound, then closed.
    let gone = tokio::net::TcpListener::bind(ANY_PORT)
        .await
        .expect("binds");
    let gone_address = gone.local_addr().expect("an address");
    drop(gone);
    let harness = spawn_sandbox(SandboxConfig {
        webhook_url: Some(format!("http://{gone_address}/v1/webhooks/carrier")),
        ..SandboxConfig::default()
    })
    .await;
    let body = json!({"order_id": "order-1", "lines": [{"sku": "SKU-1", "quantity": 1}]});
    let (status, _) = harness
        .post("/carrier/shipments", Some("ship-1"), &body)
        .await;
    assert_eq!(status, StatusCode::CREATED);
    // Let the first attempts fail against the old address before the receiver moves.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (receiver_url, inbox, receiver) = spawn_receiver().await;
    harness.sandbox.set_webhook_url(receiver_url);
    wait_for_webhooks(&inbox, 2, "both webhooks reach the moved receiver").await;
    harness.sandbox.stop().await;
    receiver.abort();
}

/// Two sandboxes with the same seed hand out the same ids.
#[tokio::test]
async fn ids_replay_from_the_seed() {
    let mut ids = Vec::new();
    for _ in 0..2 {
        let harness = spawn_sandbox(SandboxConfig {
            seed: 42,
            ..SandboxConfig::default()
        })
        .await;
        let (_, body) = harness.authorize("key-1", "order-1", 100).await;
        ids.push(text(&body, "authorization_id").to_owned());
        harness.sandbox.stop().await;
    }
    assert_eq!(ids[0], ids[1]);
}

/// Knobs that would panic or hang later are refused at start.
#[tokio::test]
async fn invalid_knobs_are_refused() {
    let listen: SocketAddr = ANY_PORT.parse().expect("a socket address");
    let config = SandboxConfig {
        error_rate: 1.5,
        ..SandboxConfig::default()
    };
    let error = tally_sandbox::start(config, listen)
        .await
        .expect_err("refused");
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput);
}
