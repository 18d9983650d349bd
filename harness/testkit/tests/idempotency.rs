//! The `Idempotency-Key` contract on every engine: replay, fingerprint mismatch, concurrency,
//! tenant scope and retention.

use futures::future::join_all;
use serde_json::{Value, json};
use tally_api::auth::Scope;
use tally_commands::{Actor, Command, CommandContext, CommandError, Commands, Executed, Outcome};
use tally_domain::catalog::Sku;
use tally_domain::clock::Clock;
use tally_domain::idempotency::{Fingerprint, IdempotencyKey};
use tally_domain::ids::ApiKeyId;
use tally_domain::money::Currency;
use tally_domain::order::{Address, CountryCode, Customer, LineRequest, NewOrder, Quantity};
use tally_domain::text::{Code, Text};
use tally_store::{NewEvent, StoredResponse};
use tally_testkit::{Engine, TestApp, order_body, spawn_app};

tally_testkit::store_tests!(
    same_key_and_request_replays_the_stored_response,
    same_meaning_in_other_json_form_replays,
    same_key_with_a_different_request_is_refused,
    fifty_concurrent_requests_with_one_key_place_one_order,
    processes_racing_under_one_key_place_one_order,
    keys_are_scoped_per_tenant,
    a_refused_request_leaves_the_key_unused,
    expired_keys_are_purged_and_can_be_used_again,
    a_seeded_clock_mints_the_same_ids_on_every_run,
);

async fn order_count(app: &TestApp) -> usize {
    let page: Value = app
        .get("/v1/orders?limit=100")
        .send()
        .await
        .expect("GET /v1/orders")
        .json()
        .await
        .expect("a page");
    page["data"].as_array().map_or(0, Vec::len)
}

async fn ready_catalog(app: &TestApp) {
    app.create_product("Tee", &[("TEE-M", 1999), ("TEE-L", 2199)])
        .await;
}

/// A retry with the same key and body gets the first response again, byte for byte, marked
/// `Idempotent-Replayed: true`, and places no second order.
async fn same_key_and_request_replays_the_stored_response(engine: Engine) {
    let app = spawn_app(engine).await;
    ready_catalog(&app).await;
    let body = order_body("c-1", &[("TEE-M", 2)]);
    let first = app
        .post("/v1/orders", "order-1", &body)
        .send()
        .await
        .expect("POST");
    assert_eq!(first.status(), 201);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first_location = first.headers().get("location").cloned();
    let first_body = first.bytes().await.expect("body");

    let second = app
        .post("/v1/orders", "order-1", &body)
        .send()
        .await
        .expect("POST");
    assert_eq!(second.status(), 201);
    assert_eq!(
        second
            .headers()
            .get("idempotent-replayed")
            .map(|v| v.as_bytes()),
        Some(&b"true"[..])
    );
    assert_eq!(second.headers().get("location").cloned(), first_location);
    assert_eq!(second.bytes().await.expect("body"), first_body);
    assert_eq!(order_count(&app).await, 1);
    app.stop().await;
}

/// Whitespace, key order and an explicit `null` for an absent optional field do not change
/// what a request means, so they do not change its fingerprint.
async fn same_meaning_in_other_json_form_replays(engine: Engine) {
    let app = spawn_app(engine).await;
    ready_catalog(&app).await;
    let body = order_body("c-1", &[("TEE-M", 1)]);
    let first = app
        .post("/v1/orders", "k", &body)
        .send()
        .await
        .expect("POST");
    assert_eq!(first.status(), 201);
    let mut reordered = serde_json::Map::new();
    let object = body.as_object().expect("an object");
    for key in object.keys().rev() {
        reordered.insert(key.clone(), object[key].clone());
    }
    reordered["shipping_address"]["line2"] = Value::Null;
    let text = serde_json::to_string_pretty(&Value::Object(reordered)).expect("json");
    let replay = app
        .client
        .post(app.url("/v1/orders"))
        .bearer_auth(&app.key)
        .header("Idempotency-Key", "k")
        .header("Content-Type", "application/json")
        .body(text)
        .send()
        .await
        .expect("POST");
    assert_eq!(replay.status(), 201);
    assert!(replay.headers().get("idempotent-replayed").is_some());
    assert_eq!(order_count(&app).await, 1);
    app.stop().await;
}

/// Reusing a key for another body, or for another endpoint, is a 422 problem and changes nothing.
async fn same_key_with_a_different_request_is_refused(engine: Engine) {
    let app = spawn_app(engine).await;
    ready_catalog(&app).await;
    let placed = app
        .post("/v1/orders", "k", &order_body("c-1", &[("TEE-M", 1)]))
        .send()
        .await
        .expect("POST");
    assert_eq!(placed.status(), 201);
    let other_body = app
        .post("/v1/orders", "k", &order_body("c-1", &[("TEE-M", 2)]))
        .send()
        .await
        .expect("POST");
    assert_eq!(other_body.status(), 422);
    assert_eq!(
        other_body.headers()["content-type"],
        "application/problem+json"
    );
    let problem: Value = other_body.json().await.expect("problem");
    assert_eq!(problem["type"], "/problems/idempotency-key-reused");
    let other_endpoint = app
        .post(
            "/v1/inventory/adjustments",
            "k",
            &json!({"sku": "TEE-M", "location": "w", "delta": 1}),
        )
        .send()
        .await
        .expect("POST");
    assert_eq!(other_endpoint.status(), 422);
    assert_eq!(order_count(&app).await, 1);
    let stock: Value = app
        .get("/v1/inventory/TEE-M")
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("stock");
    assert_eq!(stock["on_hand"], 0, "the refused adjustment wrote nothing");
    app.stop().await;
}

/// Fifty simultaneous requests with one key place exactly one order: every response is either
/// the one stored response or a 409 with `Retry-After`.
async fn fifty_concurrent_requests_with_one_key_place_one_order(engine: Engine) {
    let app = spawn_app(engine).await;
    ready_catalog(&app).await;
    let body = order_body("c-1", &[("TEE-M", 1), ("TEE-L", 3)]);
    let requests = (0..50).map(|_| async {
        let response = app
            .post("/v1/orders", "one-key", &body)
            .send()
            .await
            .expect("POST");
        let status = response.status().as_u16();
        let retry_after = response.headers().get("retry-after").cloned();
        let bytes = response.bytes().await.expect("body");
        (status, retry_after, bytes)
    });
    let responses = join_all(requests).await;
    let created: Vec<_> = responses.iter().filter(|(s, _, _)| *s == 201).collect();
    assert!(!created.is_empty(), "at least one request placed the order");
    for (status, retry_after, bytes) in &responses {
        match status {
            201 => assert_eq!(
                bytes, &created[0].2,
                "every 201 carries the same stored body"
            ),
            409 => assert!(retry_after.is_some(), "a 409 says when to retry"),
            other => panic!(
                "unexpected status {other}: {}",
                String::from_utf8_lossy(bytes)
            ),
        }
    }
    assert_eq!(order_count(&app).await, 1, "exactly one order exists");
    app.stop().await;
}

/// A new order request as the API makes it from `order_body("c-1", [(sku, 1)])`.
fn new_order(sku: &str) -> NewOrder {
    let text = |raw: &str| Text::parse(raw).expect("text");
    NewOrder::parse(
        Code::parse("web").expect("a channel"),
        Customer {
            id: Code::parse("c-1").expect("a customer id"),
            email: None,
        },
        vec![LineRequest {
            sku: Sku::parse(sku).expect("a SKU"),
            quantity: Quantity::parse(1).expect("a quantity"),
        }],
        Currency::parse("USD").expect("a currency"),
        Address {
            name: text("Ada Lovelace"),
            line1: text("12 St James's Square"),
            line2: None,
            city: text("London"),
            region: None,
            postal_code: text("SW1Y 4JH"),
            country: CountryCode::parse("GB").expect("a country"),
        },
    )
    .expect("an order request")
}

/// Twenty-four processes (each with its own `Commands` and in-flight set, so none answers 409
/// on another's behalf) place the same request under one key at once: the store's own key
/// check in the command transaction leaves one order, and every other process answers with the
/// stored response or 409.
async fn processes_racing_under_one_key_place_one_order(engine: Engine) {
    let app = spawn_app(engine).await;
    ready_catalog(&app).await;
    let key = IdempotencyKey::parse("one-key").expect("a key");
    let render = |outcome: &Outcome, _: &[NewEvent]| {
        let Outcome::OrderPlaced(order) = outcome else {
            panic!("an order is placed: {outcome:?}")
        };
        StoredResponse {
            status: 201,
            location: None,
            body: order.id.to_string().into_bytes(),
        }
    };
    let racers = (0..24).map(|_| {
        let commands = Commands::new(
            std::sync::Arc::clone(app.store()),
            app.clock.clone(),
            std::time::Duration::from_secs(86_400),
        );
        let (key, tenant) = (key.clone(), app.tenant);
        tokio::spawn(async move {
            let ctx = CommandContext {
                tenant,
                actor: Actor::ApiKey(ApiKeyId::generate()),
                key: &key,
                fingerprint: Fingerprint([7; 32]),
                request_id: "racing",
                traceparent: None,
                render: &render,
            };
            commands
                .execute(
                    &ctx,
                    Command::PlaceOrder(tally_commands::place_order::PlaceOrder(new_order(
                        "TEE-M",
                    ))),
                )
                .await
        })
    });
    let mut fresh = Vec::new();
    let mut replayed = Vec::new();
    for racer in join_all(racers).await {
        match racer.expect("a racer") {
            Ok(Executed::Fresh(response)) => fresh.push(response),
            Ok(Executed::Replayed(response)) => replayed.push(response),
            Err(CommandError::InFlight) => {}
            Err(other) => panic!("unexpected failure: {other}"),
        }
    }
    assert_eq!(fresh.len(), 1, "exactly one process placed the order");
    assert!(
        replayed.iter().all(|response| *response == fresh[0]),
        "every replay is the stored response"
    );
    assert_eq!(order_count(&app).await, 1, "exactly one order exists");
    app.stop().await;
}

/// Two tenants may use the same key without seeing each other's responses.
async fn keys_are_scoped_per_tenant(engine: Engine) {
    let app = spawn_app(engine).await;
    ready_catalog(&app).await;
    let (_, other_key) = app.other_tenant(&Scope::ALL).await;
    let body = json!({"name": "Tee", "variants": [{"sku": "TEE-M", "prices": {"USD": 1999}}]});
    let other = app
        .client
        .post(app.url("/v1/products"))
        .bearer_auth(&other_key)
        .header("Idempotency-Key", "product-Tee")
        .json(&body)
        .send()
        .await
        .expect("POST");
    assert_eq!(other.status(), 201, "the other tenant's catalog is its own");
    assert!(other.headers().get("idempotent-replayed").is_none());
    app.stop().await;
}

/// A request refused by a business rule stores nothing under its key: the corrected request
/// with the same key then succeeds.
async fn a_refused_request_leaves_the_key_unused(engine: Engine) {
    let app = spawn_app(engine).await;
    ready_catalog(&app).await;
    let refused = app
        .post("/v1/orders", "k", &order_body("c-1", &[("NOPE", 1)]))
        .send()
        .await
        .expect("POST");
    assert_eq!(refused.status(), 422);
    let placed = app
        .post("/v1/orders", "k", &order_body("c-1", &[("TEE-M", 1)]))
        .send()
        .await
        .expect("POST");
    assert_eq!(placed.status(), 201);
    assert!(placed.headers().get("idempotent-replayed").is_none());
    app.stop().await;
}

/// After the retention window a key is forgotten: the purge deletes it, and even before the
/// purge an expired key no longer replays.
async fn expired_keys_are_purged_and_can_be_used_again(engine: Engine) {
    let app = spawn_app(engine).await;
    ready_catalog(&app).await;
    let body = order_body("c-1", &[("TEE-M", 1)]);
    for key in ["purged", "expired"] {
        let placed = app
            .post("/v1/orders", key, &body)
            .send()
            .await
            .expect("POST");
        assert_eq!(placed.status(), 201);
    }
    app.clock.advance(chrono::Duration::hours(25));
    let again = app
        .post("/v1/orders", "expired", &body)
        .send()
        .await
        .expect("POST");
    assert_eq!(again.status(), 201);
    assert!(
        again.headers().get("idempotent-replayed").is_none(),
        "an expired key no longer replays"
    );
    let purged = app
        .store()
        .purge_idempotency_records(app.clock.now(), 1_000)
        .await
        .expect("purge");
    assert_eq!(
        purged, 2,
        "the 'purged' order key and the product key had expired"
    );
    let again = app
        .post("/v1/orders", "purged", &body)
        .send()
        .await
        .expect("POST");
    assert_eq!(again.status(), 201);
    assert!(
        again.headers().get("idempotent-replayed").is_none(),
        "a purged key is new again"
    );
    assert_eq!(order_count(&app).await, 4);
    app.stop().await;
}

/// A clock that stands still, for runs that must repeat exactly.
#[derive(Debug)]
struct Stopped(chrono::DateTime<chrono::Utc>);

impl Clock for Stopped {
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.0
    }
}

/// Commands mint their ids from the injected clock: two runs on fresh stores with one seed
/// create the same product, place the same order and append the same events, id for id.
async fn a_seeded_clock_mints_the_same_ids_on_every_run(engine: Engine) {
    let render = |outcome: &Outcome, events: &[NewEvent]| {
        let id = match outcome {
            Outcome::ProductCreated(product) => product.id.to_string(),
            Outcome::OrderPlaced(order) => order.id.to_string(),
            other => panic!("unexpected outcome {other:?}"),
        };
        let events: Vec<String> = events.iter().map(|e| e.id.to_string()).collect();
        StoredResponse {
            status: 201,
            location: None,
            body: format!("{id} {}", events.join(",")).into_bytes(),
        }
    };
    let at = chrono::DateTime::from_timestamp(1_800_000_000, 0).expect("a time");
    let mut runs = Vec::new();
    for _ in 0..2 {
        let db = tally_testkit::fresh_database(engine).await;
        let clock = std::sync::Arc::new(tally_domain::clock::Seeded::new(Stopped(at), 42));
        let tenant = tally_domain::ids::TenantId::from_uuid(clock.fresh_id());
        db.store
            .create_tenant(&tally_store::NewTenant {
                id: tenant,
                name: "Seeded".into(),
                created_at: at,
            })
            .await
            .expect("a tenant");
        let commands = Commands::new(
            std::sync::Arc::clone(&db.store),
            clock.clone(),
            std::time::Duration::from_secs(86_400),
        );
        let usd = Currency::parse("USD").expect("USD");
        let product = tally_domain::catalog::NewProduct::parse(
            Text::parse("Tee").expect("a name"),
            vec![tally_domain::catalog::Variant {
                sku: Sku::parse("TEE-M").expect("a SKU"),
                prices: std::collections::BTreeMap::from([(
                    usd,
                    tally_domain::money::Money::parse(1999, usd).expect("a price"),
                )]),
            }],
        )
        .expect("a product");
        let commands_run = [
            Command::CreateProduct(tally_commands::create_product::CreateProduct(product)),
            Command::PlaceOrder(tally_commands::place_order::PlaceOrder(new_order("TEE-M"))),
        ];
        let mut answers = Vec::new();
        for (i, command) in commands_run.into_iter().enumerate() {
            let key = IdempotencyKey::parse(&format!("seeded-{i}")).expect("a key");
            let ctx = CommandContext {
                tenant,
                actor: Actor::ApiKey(ApiKeyId::from_uuid(clock.fresh_id())),
                key: &key,
                fingerprint: Fingerprint([1; 32]),
                request_id: "seeded",
                traceparent: None,
                render: &render,
            };
            match commands.execute(&ctx, command).await.expect("executed") {
                Executed::Fresh(response) => answers.push(response.body),
                Executed::Replayed(_) => panic!("a fresh store replays nothing"),
            }
        }
        runs.push((tenant, answers));
    }
    assert_eq!(runs[0], runs[1], "one seed, the same ids");
}
