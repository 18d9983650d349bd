//! The HTTP API's conformance suite, written once and run on both engines: the happy path from
//! catalog to order, RFC 9457 problems for bad input (and proof that a refused request wrote
//! nothing), tenant isolation, order listing and paging, routing errors, and the operational
//! endpoints.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use reqwest::header::{ALLOW, CONTENT_TYPE, LOCATION, WWW_AUTHENTICATE};
use reqwest::{Method, RequestBuilder, Response};
use serde_json::{Value, json};
use tally_api::BODY_BYTES_MAX;
use tally_api::auth::Scope;
use tally_domain::ids::{OrderId, TenantId};
use tally_testkit::{Engine, TestApp, order_body, spawn_app};
use uuid::Uuid;

tally_testkit::store_tests!(
    product_and_stock_happy_path,
    stock_reads_find_every_location_of_each_sku,
    order_happy_path,
    order_reads_agree_with_their_timeline,
    concurrent_reads_find_each_their_own_order,
    concurrent_sealers_keep_one_audit_chain,
    drafts_made_elsewhere_are_sealed_from_their_rows,
    products_refuse_bad_envelopes,
    adjustments_refuse_bad_envelopes,
    orders_refuse_bad_envelopes,
    products_refuse_invalid_bodies,
    adjustments_refuse_invalid_bodies,
    orders_refuse_invalid_bodies,
    refused_command_frees_its_key_at_once,
    tenant_cannot_read_another_tenants_data,
    tenant_has_its_own_catalog_and_keys,
    order_list_filters,
    order_list_pages_with_cursor,
    last_order_page_omits_next_cursor,
    order_list_refuses_bad_queries,
    unknown_resources_and_methods_are_problems,
    reads_need_a_key_with_the_scope,
    health_openapi_and_docs,
    metrics_show_request_latency_and_consumer_work,
);

const PRODUCTS: &str = "/v1/products";
const ADJUSTMENTS: &str = "/v1/inventory/adjustments";
const ORDERS: &str = "/v1/orders";
const REPLAYED_HEADER: &str = "idempotent-replayed";

/// A fresh Idempotency-Key: every request that means something new gets its own.
fn fresh_key() -> String {
    Uuid::now_v7().to_string()
}

fn post_as(app: &TestApp, api_key: &str, path: &str, key: &str, body: &Value) -> RequestBuilder {
    let request = app.client.post(app.url(path)).bearer_auth(api_key);
    request.header("Idempotency-Key", key).json(body)
}

/// A POST with this app's key and `key`, but `body` as is, under `content_type`.
fn post_raw(
    app: &TestApp,
    path: &str,
    key: &str,
    content_type: &str,
    body: String,
) -> RequestBuilder {
    let request = app.client.post(app.url(path)).bearer_auth(&app.key);
    let request = request.header("Idempotency-Key", key);
    request.header(CONTENT_TYPE, content_type).body(body)
}

fn get_as(app: &TestApp, api_key: &str, path: &str) -> RequestBuilder {
    app.client.get(app.url(path)).bearer_auth(api_key)
}

/// An adjustment; `delta` is a JSON value so that tests can send fractions.
fn adjustment(app: &TestApp, key: &str, sku: &str, location: &str, delta: Value) -> RequestBuilder {
    let body = json!({"sku": sku, "location": location, "delta": delta});
    app.post(ADJUSTMENTS, key, &body)
}

/// Adjusts stock under a fresh key and returns the 200 answer.
async fn adjusted(app: &TestApp, sku: &str, location: &str, delta: i64) -> Value {
    let request = adjustment(app, &fresh_key(), sku, location, json!(delta));
    ok(request, 200).await
}

async fn send(request: RequestBuilder) -> Response {
    request.send().await.expect("the server answers")
}

fn header(response: &Response, name: impl reqwest::header::AsHeaderName) -> Option<String> {
    let value = response.headers().get(name)?.to_str();
    Some(value.expect("a header of visible ASCII").to_owned())
}

/// Asserts `response` is JSON of `status` and returns its body.
async fn json_of(response: Response, status: u16) -> Value {
    let actual = response.status();
    let content_type = header(&response, CONTENT_TYPE);
    let text = response.text().await.expect("a response body");
    assert_eq!(actual, status, "unexpected status; body: {text}");
    assert_eq!(content_type.as_deref(), Some("application/json"), "{text}");
    serde_json::from_str(&text).expect("a JSON body")
}

/// Sends `request` and asserts a JSON answer of `status`.
async fn ok(request: RequestBuilder, status: u16) -> Value {
    json_of(send(request).await, status).await
}

/// Sends `request` and asserts a JSON answer of `status` that is not a replay: the request ran
/// now, so nothing sent earlier under its Idempotency-Key was stored.
async fn first_time(request: RequestBuilder, status: u16) -> Value {
    let response = send(request).await;
    assert_eq!(header(&response, REPLAYED_HEADER), None, "a replay");
    json_of(response, status).await
}

/// Asserts `response` is an RFC 9457 problem of `status` and type `/problems/{slug}`, with a
/// title and a detail, and returns it.
async fn problem_of(response: Response, status: u16, slug: &str) -> Value {
    let actual = response.status();
    let url = response.url().clone();
    let content_type = header(&response, CONTENT_TYPE);
    let text = response.text().await.expect("a response body");
    assert_eq!(actual, status, "{url}: unexpected status; body: {text}");
    let problem_json = Some("application/problem+json");
    assert_eq!(content_type.as_deref(), problem_json, "{url}: {text}");
    let body: Value = serde_json::from_str(&text).expect("a problem document is JSON");
    assert_eq!(body["type"], format!("/problems/{slug}"), "{url}: {body}");
    assert_eq!(body["status"], status, "{url}: {body}");
    for member in ["title", "detail"] {
        let value = body[member].as_str().unwrap_or_default();
        assert!(!value.is_empty(), "{url}: no '{member}': {body}");
    }
    body
}

/// Sends `request` and asserts the problem [`problem_of`] describes.
async fn problem(request: RequestBuilder, status: u16, slug: &str) -> Value {
    problem_of(send(request).await, status, slug).await
}

/// Sends `request` and asserts a 422 validation problem with an error at `pointer`; every
/// error is a JSON Pointer (RFC 6901) with a detail.
async fn invalid(request: RequestBuilder, pointer: &str) -> Value {
    let body = problem(request, 422, "validation-failed").await;
    let errors = body["errors"]
        .as_array()
        .expect("a validation problem lists errors");
    for error in errors {
        let at = error["pointer"].as_str().expect("an error has a pointer");
        assert!(at.is_empty() || at.starts_with('/'), "{error}");
        let detail = error["detail"].as_str().unwrap_or_default();
        assert!(!detail.is_empty(), "{error}");
    }
    let found = errors.iter().any(|e| e["pointer"] == pointer);
    assert!(found, "expected an error at {pointer}: {body}");
    body
}

fn assert_detail_mentions(problem: &Value, text: &str) {
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(detail.contains(text), "no {text} in {problem}");
}

/// `on_hand`, `reserved` and `available` of a stock level.
fn counts(stock: &Value) -> (i64, i64, i64) {
    let n = |field: &str| stock[field].as_i64().expect("a count");
    (n("on_hand"), n("reserved"), n("available"))
}

/// The stock of `sku` as the first tenant sees it.
async fn inventory(app: &TestApp, sku: &str) -> Value {
    ok(app.get(&format!("/v1/inventory/{sku}")), 200).await
}

/// The ids of the orders a listing returns, in its order.
async fn listed_ids(app: &TestApp, query: &[(&str, &str)]) -> Vec<String> {
    let page = ok(app.get(ORDERS).query(query), 200).await;
    let data = page["data"].as_array().expect("a page has data");
    data.iter().map(id_of).collect()
}

/// Places a one-line order of `MUG-1` and returns it.
async fn place(app: &TestApp, customer: &str, channel: &str) -> Value {
    let mut body = order_body(customer, &[("MUG-1", 1)]);
    body["channel"] = json!(channel);
    ok(app.post(ORDERS, &fresh_key(), &body), 201).await
}

fn id_of(value: &Value) -> String {
    value["id"].as_str().expect("an id").to_owned()
}

/// A product is created with 201 and a Location that serves it, and stock adjustments add up
/// per location and in total.
async fn product_and_stock_happy_path(engine: Engine) {
    let app = spawn_app(engine).await;
    let variants = json!([
        {"sku": "CUP-S", "prices": {"USD": 1999, "EUR": 1899}},
        {"sku": "CUP-L", "prices": {"USD": 2499}}
    ]);
    let body = json!({"name": "Espresso cup", "variants": variants});
    let response = send(app.post(PRODUCTS, &fresh_key(), &body)).await;
    let location = header(&response, LOCATION).expect("a created product has a Location");
    let product = json_of(response, 201).await;
    assert_eq!(location, format!("/v1/products/{}", id_of(&product)));
    assert_eq!(product["name"], "Espresso cup");
    assert_eq!(product["variants"], variants);
    assert!(product["created_at"].is_string(), "{product}");
    assert_eq!(ok(app.get(&location), 200).await, product);

    let added = adjusted(&app, "CUP-S", "wh-east", 10).await;
    let expected = json!({"sku": "CUP-S", "location": "wh-east", "on_hand": 10, "reserved": 0,
        "available": 10});
    assert_eq!(added, expected);
    let taken = adjusted(&app, "CUP-S", "wh-east", -3).await;
    assert_eq!(counts(&taken), (7, 0, 7));
    adjusted(&app, "CUP-S", "wh-west", 4).await;

    let stock = inventory(&app, "CUP-S").await;
    assert_eq!(stock["sku"], "CUP-S");
    let totals = (&stock["on_hand"], &stock["reserved"], &stock["available"]);
    assert_eq!(totals, (&json!(11), &json!(0), &json!(11)));
    let locations = stock["locations"].as_array().expect("stock per location");
    let per_location: Vec<(&str, i64, i64, i64)> = locations
        .iter()
        .map(|l| {
            assert!(l["updated_at"].is_string(), "{l}");
            let n = |field: &str| l[field].as_i64().expect("a count");
            let location = l["location"].as_str().expect("a location");
            (location, n("on_hand"), n("reserved"), n("available"))
        })
        .collect();
    assert_eq!(per_location, [("wh-east", 7, 0, 7), ("wh-west", 4, 0, 4)]);

    let untouched = inventory(&app, "CUP-L").await;
    assert_eq!(untouched["on_hand"], 0);
    assert_eq!(untouched["locations"], json!([]));
    app.stop().await;
}

/// The stock the saga plans a reservation on: every location of each SKU asked (a line that
/// fits only the second location must find it), each SKU once however often it is asked, none
/// of another tenant's rows, nothing for a SKU without stock, in (SKU, location) order.
async fn stock_reads_find_every_location_of_each_sku(engine: Engine) {
    let app = spawn_app(engine).await;
    app.create_product("Mugs", &[("MUG-1", 1200), ("MUG-2", 1300), ("MUG-3", 1400)])
        .await;
    adjusted(&app, "MUG-1", "wh-b", 5).await;
    adjusted(&app, "MUG-1", "wh-a", 1).await;
    adjusted(&app, "MUG-2", "wh-a", 2).await;
    let (other, _) = other_tenant_with_mugs(&app, 1500, "wh-c", 9).await;

    let asked = ["MUG-2", "MUG-1", "MUG-3", "MUG-1", "NOPE-1"].map(str::to_owned);
    let rows = app
        .store()
        .read_stock(app.tenant, &asked)
        .await
        .expect("read");
    let levels: Vec<_> = rows
        .iter()
        .map(|row| (row.sku.as_str(), row.location.as_str(), row.level.on_hand))
        .collect();
    assert_eq!(
        levels,
        [
            ("MUG-1", "wh-a", 1),
            ("MUG-1", "wh-b", 5),
            ("MUG-2", "wh-a", 2)
        ]
    );
    let rows = app.store().read_stock(other, &asked).await.expect("read");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        (rows[0].location.as_str(), rows[0].level.on_hand),
        ("wh-c", 9)
    );
    app.stop().await;
}

/// Another tenant, with its own product of SKU "MUG-1" at `price` and `units` of it at
/// `location`; its id and key.
async fn other_tenant_with_mugs(
    app: &TestApp,
    price: i64,
    location: &str,
    units: i64,
) -> (TenantId, String) {
    let (other, key) = app.other_tenant(&Scope::ALL).await;
    let product = json!({"name": "Mug", "variants": [{"sku": "MUG-1", "prices": {"USD": price}}]});
    first_time(post_as(app, &key, PRODUCTS, &fresh_key(), &product), 201).await;
    let stock = json!({"sku": "MUG-1", "location": location, "delta": units});
    ok(post_as(app, &key, ADJUSTMENTS, &fresh_key(), &stock), 200).await;
    (other, key)
}

/// An order is priced from the catalog (the client sends no price), answered 201 with a
/// Location, readable there as "placed" with one `tally.order.placed.v1` in its timeline, and
/// replayed, not placed again, when retried under the same key.
async fn order_happy_path(engine: Engine) {
    let app = spawn_app(engine).await;
    app.create_product("Cups", &[("CUP-S", 1999), ("CUP-L", 2499)])
        .await;
    let key = fresh_key();
    let body = order_body("cust-1", &[("CUP-S", 3), ("CUP-L", 1)]);
    let response = send(app.post(ORDERS, &key, &body)).await;
    let location = header(&response, LOCATION).expect("a placed order has a Location");
    let order = json_of(response, 201).await;
    let id = id_of(&order);
    assert_eq!(location, format!("/v1/orders/{id}"));
    assert_eq!(order["status"], "placed");
    assert_eq!(order["channel"], "web");
    assert_eq!(order["currency"], "USD");
    let customer = json!({"id": "cust-1", "email": "ada@example.com"});
    assert_eq!(order["customer"], customer);
    let lines = json!([
        {"sku": "CUP-S", "quantity": 3, "unit_price_minor": 1999, "line_total_minor": 5997},
        {"sku": "CUP-L", "quantity": 1, "unit_price_minor": 2499, "line_total_minor": 2499}
    ]);
    assert_eq!(order["lines"], lines);
    assert_eq!(order["total_minor"], 1999 * 3 + 2499);
    assert_eq!(order["shipping_address"]["country"], "GB");
    assert_eq!(order["shipping_address"]["postal_code"], "SW1Y 4JH");

    let fetched = ok(app.get(&location), 200).await;
    assert_eq!(fetched["id"], order["id"]);
    assert_eq!(fetched["lines"], lines);
    assert_eq!(fetched["total_minor"], order["total_minor"]);
    assert_eq!(fetched["created_at"], order["created_at"]);
    // The saga runs beside the API, and with no stock it may have cancelled the order already.
    let status = fetched["status"].as_str().expect("a status");
    assert!(matches!(status, "placed" | "cancelled"), "{fetched}");
    let timeline = fetched["timeline"]
        .as_array()
        .expect("an order has a timeline");
    assert_eq!(timeline[0]["type"], "tally.order.placed.v1", "{fetched}");
    assert!(timeline[0]["event_id"].is_string(), "{fetched}");
    let types: Vec<&str> = timeline.iter().filter_map(|e| e["type"].as_str()).collect();
    assert!(
        types[1..].iter().all(|t| *t == "tally.order.cancelled.v1"),
        "nothing but the cancellation for lack of stock follows: {fetched}"
    );

    let retried = send(app.post(ORDERS, &key, &body)).await;
    assert_eq!(header(&retried, REPLAYED_HEADER).as_deref(), Some("true"));
    assert_eq!(id_of(&json_of(retried, 201).await), id);
    assert_eq!(listed_ids(&app, &[]).await, [id]);
    app.stop().await;
}

/// Orders read while the saga moves them on, many times a step: every answer's status is the
/// one its timeline's last event leads to, never a status ahead of or behind its timeline.
async fn order_reads_agree_with_their_timeline(engine: Engine) {
    const ORDERS_COUNT: usize = 8;
    let app = Arc::new(spawn_app(engine).await);
    app.create_product("Mugs", &[("MUG-1", 1200)]).await;
    let stocked = app.adjust(&fresh_key(), "MUG-1", "east", 100).await;
    assert_eq!(stocked.status(), 200);
    let readers = (0..ORDERS_COUNT).map(|i| {
        let app = Arc::clone(&app);
        tokio::spawn(async move {
            let body = order_body(&format!("cust-{i}"), &[("MUG-1", 1)]);
            let placed = json_of(send(app.post(ORDERS, &fresh_key(), &body)).await, 201).await;
            let location = format!("{ORDERS}/{}", id_of(&placed));
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
            let mut reads = 0;
            loop {
                let order = ok(app.get(&location), 200).await;
                reads += 1;
                let status = order["status"].as_str().expect("a status").to_owned();
                let last = order["timeline"]
                    .as_array()
                    .and_then(|t| t.last())
                    .and_then(|e| e["type"].as_str())
                    .expect("a timeline")
                    .to_owned();
                assert_eq!(status_after(&last), status, "read {reads}: {order}");
                if status == "completed" {
                    return reads;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the order did not complete: {order}"
                );
            }
        })
    });
    for reader in futures::future::join_all(readers).await {
        let reads = reader.expect("reader task");
        assert!(reads > 1, "the order was read while it moved");
    }
}

/// Many reads of orders at once, each answered with its own order: by id through the store, as
/// the saga and notifications read, and through `GET` with its timeline; among them reads of
/// another tenant's orders and of ids no order has, which find nothing. (PostgreSQL answers
/// reads under way together with one statement: each must still get its own row.)
async fn concurrent_reads_find_each_their_own_order(engine: Engine) {
    const READS: usize = 400;
    let app = Arc::new(spawn_app(engine).await);
    app.create_product("Mug", &[("MUG-1", 1200)]).await;
    adjusted(&app, "MUG-1", "wh-1", 100).await;
    let (other, other_key) = other_tenant_with_mugs(&app, 900, "wh-1", 100).await;
    let mut orders = Vec::new();
    for i in 0..12 {
        let (tenant, key) = if i % 3 == 2 {
            (other, other_key.as_str())
        } else {
            (app.tenant, app.key.as_str())
        };
        let customer = format!("reader-{i}");
        let body = order_body(&customer, &[("MUG-1", 1)]);
        let placed = ok(post_as(&app, key, ORDERS, &fresh_key(), &body), 201).await;
        let id: Uuid = id_of(&placed).parse().expect("a UUID");
        orders.push((tenant, key.to_owned(), OrderId::from_uuid(id), customer));
    }
    let orders = Arc::new(orders);
    let reads = (0..READS).map(|n| {
        let (app, orders) = (Arc::clone(&app), Arc::clone(&orders));
        tokio::spawn(async move {
            let (tenant, key, id, customer) = &orders[n % orders.len()];
            let stranger = if *tenant == app.tenant {
                other
            } else {
                app.tenant
            };
            match n % 4 {
                0 => {
                    let found = app.store().order(*tenant, *id).await.expect("a read");
                    let found = found.expect("the order is found");
                    assert_eq!((found.id, &found.customer_id), (*id, customer));
                }
                1 => {
                    let found = app.store().order(stranger, *id).await.expect("a read");
                    assert!(found.is_none(), "another tenant's order: {found:?}");
                    let unknown = OrderId::from_uuid(Uuid::now_v7());
                    let found = app.store().order(*tenant, unknown).await.expect("a read");
                    assert!(found.is_none(), "an order no one placed: {found:?}");
                }
                2 => {
                    let read = ok(get_as(&app, key, &format!("{ORDERS}/{id}")), 200).await;
                    assert_eq!(read["id"], id.to_string(), "{read}");
                    assert_eq!(read["customer"]["id"], customer.as_str(), "{read}");
                    let first = &read["timeline"][0]["type"];
                    assert_eq!(first, "tally.order.placed.v1", "{read}");
                }
                _ => {
                    let stranger_key = if *tenant == app.tenant {
                        other_key_of(&orders, other)
                    } else {
                        app.key.clone()
                    };
                    let path = format!("{ORDERS}/{id}");
                    problem(get_as(&app, &stranger_key, &path), 404, "not-found").await;
                }
            }
        })
    });
    for read in futures::future::join_all(reads).await {
        read.expect("read task");
    }
}

/// The key of `tenant` among the placed orders.
fn other_key_of(orders: &[(TenantId, String, OrderId, String)], tenant: TenantId) -> String {
    let (_, key, _, _) = orders.iter().find(|o| o.0 == tenant).expect("an order");
    key.clone()
}

/// Audit records sealed by several sealers at once (the app's own loop among them) form one
/// unbroken chain: each record sealed once, no sequence twice, every hash linking.
async fn concurrent_sealers_keep_one_audit_chain(engine: Engine) {
    const ADJUSTMENTS: usize = 120;
    let app = Arc::new(spawn_app(engine).await);
    app.create_product("Spoons", &[("SPOON-1", 300)]).await;
    let writers = (0..4).map(|w| {
        let app = Arc::clone(&app);
        tokio::spawn(async move {
            for i in 0..ADJUSTMENTS / 4 {
                let done = app
                    .adjust(&format!("seal-{w}-{i}"), "SPOON-1", "east", 1)
                    .await;
                assert_eq!(done.status(), 200);
            }
        })
    });
    let sealers = (0..4).map(|_| {
        let store = Arc::clone(app.store());
        tokio::spawn(async move {
            for _ in 0..200 {
                store.seal_audit(7).await.expect("seal");
                tokio::task::yield_now().await;
            }
        })
    });
    for task in futures::future::join_all(writers.chain(sealers)).await {
        task.expect("task");
    }
    while app.store().seal_audit(500).await.expect("seal") > 0 {}
    let (violations, verified) = tally::checks::audit(app.store().as_ref())
        .await
        .expect("audit verify");
    assert!(violations.is_empty(), "{violations:?}");
    assert!(
        verified > ADJUSTMENTS,
        "every adjustment's record is in the chain: {verified}"
    );
}

/// Audit drafts this process did not make (another process's, in a deployment of several)
/// are sealed from their stored rows, in one chain with those it made and sealed from the
/// bytes it kept: the chain verifies, and holds every draft once.
async fn drafts_made_elsewhere_are_sealed_from_their_rows(engine: Engine) {
    const DRAFTS: usize = 6;
    let app = spawn_app(engine).await;
    app.create_product("Forks", &[("FORK-1", 300)]).await;
    let store = app.store();
    let mut elsewhere = Vec::new();
    for i in 0..DRAFTS {
        let draft = tally_audit::AuditDraft {
            tenant_id: app.tenant.as_uuid(),
            id: Uuid::now_v7(),
            // In microseconds, as every clock of Tally's gives the time.
            at: chrono::SubsecRound::trunc_subsecs(chrono::Utc::now(), 6),
            actor: tally_audit::Actor::System("elsewhere".to_owned()),
            entity_type: "stock".to_owned(),
            entity_id: format!("FORK-1@bin-{i}"),
            action: "counted".to_owned(),
            before: Some(json!({"on_hand": i, "note": "é \" \\ 🍴"})),
            after: Some(json!({"on_hand": i + 1, "bins": [i, {"z": null, "a": true}]})),
            cause: tally_audit::Cause::default(),
        };
        // Made as another process makes it: stored, never handed to this process's sealer.
        let record = tally_store::NewAuditRecord {
            id: draft.id,
            tenant_id: app.tenant,
            at: draft.at,
            entity_type: draft.entity_type.clone(),
            entity_id: draft.entity_id.clone(),
            body: serde_json::to_string(&draft).expect("a draft serializes"),
        };
        let mut tx = store.begin().await.expect("begin");
        tx.insert_audit(&record).await.expect("insert the draft");
        tx.commit().await.expect("commit");
        elsewhere.push(draft.id);
        let adjusted = app.adjust(&fresh_key(), "FORK-1", "east", 1).await;
        assert_eq!(adjusted.status(), 200);
    }
    while store.seal_audit(500).await.expect("seal") > 0 {}
    let (violations, verified) = tally::checks::audit(store.as_ref())
        .await
        .expect("audit verify");
    assert!(violations.is_empty(), "{violations:?}");
    let chain = store.audit_chain(app.tenant).await.expect("chain");
    assert_eq!(chain.unsealed, 0);
    assert_eq!(verified, chain.records.len());
    for id in &elsewhere {
        let held = chain.records.iter().filter(|r| r.id == *id).count();
        assert_eq!(held, 1, "draft {id} is in the chain once");
    }
    assert!(
        chain.records.len() > 2 * DRAFTS,
        "this process's drafts are in the same chain: {}",
        chain.records.len()
    );
    app.stop().await;
}

/// The status an order has right after an event of this type on the happy path.
fn status_after(event_type: &str) -> &'static str {
    match event_type {
        "tally.order.placed.v1" => "placed",
        "tally.order.stock_reserved.v1" => "reserved",
        "tally.order.payment_authorized.v1" => "authorized",
        "tally.order.payment_captured.v1" => "captured",
        "tally.order.fulfillment_requested.v1" => "fulfillment_requested",
        "tally.order.shipped.v1" => "shipped",
        "tally.order.delivered.v1" => "delivered",
        "tally.order.completed.v1" => "completed",
        other => panic!("an event off the happy path: {other}"),
    }
}

/// One POST endpoint with a valid body, the scope its keys need but `wrong_scope` lacks, and
/// its success status.
struct Endpoint {
    path: &'static str,
    body: Value,
    wrong_scope: Scope,
    success: u16,
}

impl Endpoint {
    fn new(path: &'static str, body: Value, wrong_scope: Scope, success: u16) -> Self {
        Self {
            path,
            body,
            wrong_scope,
            success,
        }
    }
}

/// Sends bad bodies and media types to `endpoint` under `key`: malformed JSON, an unknown
/// field, a text body, a body over the limit.
async fn refuses_bad_bodies(app: &TestApp, endpoint: &Endpoint, key: &str) {
    let raw =
        |content_type: &str, body: String| post_raw(app, endpoint.path, key, content_type, body);
    let truncated = raw("application/json", "{\"name\": ".into());
    problem(truncated, 400, "malformed-json").await;
    let mut unknown = endpoint.body.clone();
    unknown["surprise"] = json!(true);
    invalid(app.post(endpoint.path, key, &unknown), "/surprise").await;
    let text = raw("text/plain", endpoint.body.to_string());
    problem(text, 415, "unsupported-media-type").await;
    let mut oversized = endpoint.body.clone();
    oversized["padding"] = json!("x".repeat(BODY_BYTES_MAX + 1));
    let request = app.post(endpoint.path, key, &oversized);
    problem(request, 413, "payload-too-large").await;
}

/// Sends `endpoint`'s valid body with bad credentials or idempotency headers: no
/// Idempotency-Key, an invalid one, no Authorization, a key never issued, a key of the wrong
/// scope.
async fn refuses_bad_headers(app: &TestApp, endpoint: &Endpoint, key: &str) {
    let (path, body) = (endpoint.path, &endpoint.body);
    let keyless = app.client.post(app.url(path)).bearer_auth(&app.key);
    let keyless = keyless.json(body);
    problem(keyless, 400, "idempotency-key-missing").await;
    let spaced = app.post(path, "two words", body);
    problem(spaced, 400, "idempotency-key-invalid").await;
    let anonymous = app.client.post(app.url(path));
    let anonymous = anonymous.header("Idempotency-Key", key);
    let never_issued = post_as(app, "tly_never-issued", path, key, body);
    for request in [anonymous.json(body), never_issued] {
        let response = send(request).await;
        let challenge = header(&response, WWW_AUTHENTICATE);
        assert_eq!(challenge.as_deref(), Some("Bearer"), "{path}");
        problem_of(response, 401, "unauthenticated").await;
    }
    let narrow = app.key_with(&[endpoint.wrong_scope]).await;
    problem(post_as(app, &narrow, path, key, body), 403, "forbidden").await;
}

/// Sends every kind of bad envelope to `endpoint` under one Idempotency-Key, then shows that
/// none of them stored anything under it: the valid request (with a charset parameter on its
/// media type) runs afresh under the same key.
async fn refuses_bad_envelopes(app: &TestApp, endpoint: &Endpoint) {
    let key = fresh_key();
    refuses_bad_bodies(app, endpoint, &key).await;
    refuses_bad_headers(app, endpoint, &key).await;
    let json = "application/json; charset=utf-8";
    let request = post_raw(app, endpoint.path, &key, json, endpoint.body.to_string());
    first_time(request, endpoint.success).await;
}

/// POST /v1/products answers malformed JSON, an unknown field, a wrong media type, an oversized
/// body, a missing or invalid Idempotency-Key, a missing or bad key and a key without 'admin'
/// with problems, and none of them creates the product.
async fn products_refuse_bad_envelopes(engine: Engine) {
    let app = spawn_app(engine).await;
    let body = json!({"name": "Tee", "variants": [{"sku": "TEE-1", "prices": {"USD": 1500}}]});
    let endpoint = Endpoint::new(PRODUCTS, body, Scope::Orders, 201);
    refuses_bad_envelopes(&app, &endpoint).await;
    app.stop().await;
}

/// POST /v1/inventory/adjustments answers every bad envelope with a problem, and none of them
/// moves stock.
async fn adjustments_refuse_bad_envelopes(engine: Engine) {
    let app = spawn_app(engine).await;
    app.create_product("Mug", &[("MUG-1", 1200)]).await;
    let body = json!({"sku": "MUG-1", "location": "wh-1", "delta": 4});
    let endpoint = Endpoint::new(ADJUSTMENTS, body, Scope::Orders, 200);
    refuses_bad_envelopes(&app, &endpoint).await;
    let stock = inventory(&app, "MUG-1").await;
    assert_eq!(stock["on_hand"], 4, "only the valid one applied");
    app.stop().await;
}

/// POST /v1/orders answers every bad envelope (and a key without 'orders') with a problem, and
/// none of them places an order.
async fn orders_refuse_bad_envelopes(engine: Engine) {
    let app = spawn_app(engine).await;
    app.create_product("Mug", &[("MUG-1", 1200)]).await;
    let body = order_body("c-1", &[("MUG-1", 2)]);
    let endpoint = Endpoint::new(ORDERS, body, Scope::Admin, 201);
    refuses_bad_envelopes(&app, &endpoint).await;
    let placed = listed_ids(&app, &[]).await;
    assert_eq!(placed.len(), 1, "only the valid order was placed");
    app.stop().await;
}

/// Product bodies with a SKU twice, a negative, fractional or unknown-currency price or a bad
/// SKU are 422 with pointers, a SKU the catalog has is 409 sku-taken, and none of them writes a
/// variant or spends the Idempotency-Key.
async fn products_refuse_invalid_bodies(engine: Engine) {
    let app = spawn_app(engine).await;
    app.create_product("Mug", &[("MUG-1", 1200)]).await;
    let key = fresh_key();
    let product = |variants: Value| json!({"name": "Tee", "variants": variants});
    let variant = |sku: &str, prices: Value| json!({"sku": sku, "prices": prices});
    let usd = |sku: &str, price: Value| variant(sku, json!({"USD": price}));
    let cases = [
        (json!([usd("TEE-1", json!(1)), usd("TEE-1", json!(2))]), ""),
        (json!([usd("TEE-1", json!(-1))]), "/0/prices/USD"),
        (json!([usd("TEE-1", json!(19.99))]), "/0/prices/USD"),
        (
            json!([variant("TEE-1", json!({"ZZZ": 100}))]),
            "/0/prices/ZZZ",
        ),
        (json!([usd("TEE 1", json!(100))]), "/0/sku"),
    ];
    for (variants, pointer) in cases {
        let request = app.post(PRODUCTS, &key, &product(variants));
        invalid(request, &format!("/variants{pointer}")).await;
    }
    // Refusals by the store get keys of their own: see `refused_command_frees_its_key_at_once`.
    let clash = json!([usd("TEE-1", json!(1)), usd("MUG-1", json!(1))]);
    let request = app.post(PRODUCTS, &fresh_key(), &product(clash));
    let taken = problem(request, 409, "sku-taken").await;
    assert_detail_mentions(&taken, "MUG-1");

    problem(app.get("/v1/inventory/TEE-1"), 404, "not-found").await;
    let valid = product(json!([usd("TEE-1", json!(1500))]));
    let created = first_time(app.post(PRODUCTS, &key, &valid), 201).await;
    assert_eq!(created["variants"][0]["prices"]["USD"], 1500);
    app.stop().await;
}

/// Adjustments with a zero or fractional delta or a bad location are 422, an unknown SKU is
/// 422 unknown-sku, taking available stock below zero is 409 insufficient-stock, and none of
/// them changes stock or spends the key; taking stock to exactly zero is allowed.
async fn adjustments_refuse_invalid_bodies(engine: Engine) {
    let app = spawn_app(engine).await;
    app.create_product("Mug", &[("MUG-1", 1200)]).await;
    adjusted(&app, "MUG-1", "wh-1", 5).await;
    let key = fresh_key();
    invalid(adjustment(&app, &key, "MUG-1", "wh-1", json!(0)), "/delta").await;
    invalid(
        adjustment(&app, &key, "MUG-1", "wh-1", json!(1.5)),
        "/delta",
    )
    .await;
    invalid(
        adjustment(&app, &key, "MUG-1", "wh 1", json!(1)),
        "/location",
    )
    .await;
    // Refusals by the store get keys of their own: see `refused_command_frees_its_key_at_once`.
    let unknown = adjustment(&app, &fresh_key(), "NOPE-1", "wh-1", json!(3));
    problem(unknown, 422, "unknown-sku").await;
    let short = adjustment(&app, &fresh_key(), "MUG-1", "wh-1", json!(-6));
    let short = problem(short, 409, "insufficient-stock").await;
    assert_detail_mentions(&short, "5 available");
    let elsewhere = adjustment(&app, &fresh_key(), "MUG-1", "wh-2", json!(-1));
    problem(elsewhere, 409, "insufficient-stock").await;

    let stock = inventory(&app, "MUG-1").await;
    assert_eq!(counts(&stock), (5, 0, 5));
    let locations = stock["locations"].as_array().map(Vec::len);
    assert_eq!(locations, Some(1), "a refusal added a location: {stock}");
    problem(app.get("/v1/inventory/NOPE-1"), 404, "not-found").await;

    let emptied = first_time(adjustment(&app, &key, "MUG-1", "wh-1", json!(-5)), 200).await;
    assert_eq!(counts(&emptied), (0, 0, 0));
    app.stop().await;
}

/// Order bodies with a bad quantity (fractional, zero, negative, above 10000), a price on a
/// line, a bad currency, country or e-mail, no lines or a SKU twice are 422 with pointers; an
/// unknown SKU is unknown-sku and an unpriced currency no-price; none of them places an order
/// or spends the key, and quantity 10000 is accepted.
async fn orders_refuse_invalid_bodies(engine: Engine) {
    let app = spawn_app(engine).await;
    app.create_product("Mug", &[("MUG-1", 1200), ("MUG-2", 900)])
        .await;
    let key = fresh_key();
    let twice = json!([{"sku": "MUG-1", "quantity": 1}, {"sku": "MUG-1", "quantity": 2}]);
    let cases = [
        ("/lines/0/quantity", json!(1.5)),
        ("/lines/0/quantity", json!(0)),
        ("/lines/0/quantity", json!(-1)),
        ("/lines/0/quantity", json!(10_001)),
        ("/lines/0/unit_price_minor", json!(1)),
        ("/currency", json!("ZZZ")),
        ("/currency", json!("usd")),
        ("/shipping_address/country", json!("gb")),
        ("/shipping_address/country", json!("GBR")),
        ("/customer/email", json!("ada.example.com")),
        ("/lines", json!([])),
        ("/lines", twice),
    ];
    for (pointer, value) in cases {
        let mut body = order_body("c-1", &[("MUG-1", 1)]);
        let (parent, field) = pointer.rsplit_once('/').expect("a pointer");
        let parent = body.pointer_mut(parent).expect("a field of a valid body");
        parent[field] = value;
        invalid(app.post(ORDERS, &key, &body), pointer).await;
    }
    // Refusals by the store get keys of their own: see `refused_command_frees_its_key_at_once`.
    let unknown = order_body("c-1", &[("MUG-1", 1), ("NOPE-1", 1)]);
    let refused = problem(app.post(ORDERS, &fresh_key(), &unknown), 422, "unknown-sku").await;
    assert_detail_mentions(&refused, "NOPE-1");
    let mut euros = order_body("c-1", &[("MUG-1", 1)]);
    euros["currency"] = json!("EUR");
    problem(app.post(ORDERS, &fresh_key(), &euros), 422, "no-price").await;
    let placed = listed_ids(&app, &[]).await;
    assert!(placed.is_empty(), "refused orders were written: {placed:?}");

    let most = order_body("c-1", &[("MUG-1", 10_000)]);
    let order = first_time(app.post(ORDERS, &key, &most), 201).await;
    assert_eq!(order["total_minor"], 1200 * 10_000);
    assert_eq!(listed_ids(&app, &[]).await, [id_of(&order)]);
    app.stop().await;
}

/// How many refusal-then-retry rounds `refused_command_frees_its_key_at_once` runs: the race it
/// looks for is lost in a few rounds of a thousand on a busy host, so one run of this many
/// usually, not always, shows it.
const RETRY_ROUNDS_COUNT: i64 = 500;

/// Threads that keep every CPU busy until dropped, as other work keeps a production host busy.
struct BusyHost {
    busy: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl BusyHost {
    fn start() -> Self {
        let busy = Arc::new(AtomicBool::new(true));
        let cpus = std::thread::available_parallelism().map_or(2, usize::from);
        let threads = (0..cpus)
            .map(|_| {
                let busy = Arc::clone(&busy);
                std::thread::spawn(move || {
                    while busy.load(Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        Self { busy, threads }
    }
}

impl Drop for BusyHost {
    fn drop(&mut self) {
        self.busy.store(false, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            thread.join().expect("a busy thread ends");
        }
    }
}

/// A request the store refuses (an adjustment of an unknown SKU) leaves its Idempotency-Key
/// free at once: its corrected retry under the same key, sent as soon as the refusal arrived,
/// is applied rather than told the key is still in flight, even on a busy host.
async fn refused_command_frees_its_key_at_once(engine: Engine) {
    let app = spawn_app(engine).await;
    app.create_product("Mug", &[("MUG-1", 1200)]).await;
    let host = BusyHost::start();
    let mut in_flight_count = 0;
    for round in 0..RETRY_ROUNDS_COUNT {
        let key = fresh_key();
        let refused = adjustment(&app, &key, "NOPE-1", "wh-1", json!(1));
        problem(refused, 422, "unknown-sku").await;
        let location = format!("wh-{round}");
        let retried = send(adjustment(&app, &key, "MUG-1", &location, json!(1))).await;
        if retried.status() == 409 {
            problem_of(retried, 409, "idempotency-key-in-flight").await;
            in_flight_count += 1;
        } else {
            json_of(retried, 200).await;
        }
    }
    drop(host);
    let on_hand = &inventory(&app, "MUG-1").await["on_hand"];
    assert_eq!(on_hand, &json!(RETRY_ROUNDS_COUNT - in_flight_count));
    assert_eq!(
        in_flight_count, 0,
        "{in_flight_count} of {RETRY_ROUNDS_COUNT} retries right after a refusal got 409 in flight"
    );
    app.stop().await;
}

/// A second tenant gets 404 for the first tenant's order, product and stock, and does not see
/// its orders in a listing.
async fn tenant_cannot_read_another_tenants_data(engine: Engine) {
    let app = spawn_app(engine).await;
    let product = app.create_product("Mug", &[("MUG-1", 1200)]).await;
    adjusted(&app, "MUG-1", "wh-1", 5).await;
    let order = place(&app, "c-1", "web").await;
    let (_, other) = app.other_tenant(&Scope::ALL).await;

    let order_path = format!("/v1/orders/{}", id_of(&order));
    let product_path = format!("/v1/products/{}", id_of(&product));
    for path in [
        order_path.as_str(),
        product_path.as_str(),
        "/v1/inventory/MUG-1",
    ] {
        problem(get_as(&app, &other, path), 404, "not-found").await;
    }
    let page = ok(get_as(&app, &other, ORDERS), 200).await;
    assert_eq!(page["data"], json!([]), "{page}");

    ok(app.get(&order_path), 200).await;
    ok(app.get(&product_path), 200).await;
    assert_eq!(inventory(&app, "MUG-1").await["on_hand"], 5);
    assert_eq!(listed_ids(&app, &[]).await, [id_of(&order)]);
    app.stop().await;
}

/// A second tenant creates its own product with the first tenant's SKU, even under the same
/// Idempotency-Key, and its orders are priced from its own catalog; the first tenant's data is
/// unchanged.
async fn tenant_has_its_own_catalog_and_keys(engine: Engine) {
    let app = spawn_app(engine).await;
    // `create_product` uses the Idempotency-Key "product-Mug" for this.
    let first = app.create_product("Mug", &[("MUG-1", 1200)]).await;
    adjusted(&app, "MUG-1", "wh-1", 5).await;
    let (_, other) = app.other_tenant(&Scope::ALL).await;

    let body = json!({"name": "Mug", "variants": [{"sku": "MUG-1", "prices": {"USD": 1500}}]});
    let second = first_time(post_as(&app, &other, PRODUCTS, "product-Mug", &body), 201).await;
    assert_ne!(second["id"], first["id"]);
    assert_eq!(second["variants"][0]["prices"]["USD"], 1500);
    let stock = ok(get_as(&app, &other, "/v1/inventory/MUG-1"), 200).await;
    assert_eq!(stock["on_hand"], 0, "{stock}");
    let order = order_body("c-9", &[("MUG-1", 2)]);
    let placed = ok(post_as(&app, &other, ORDERS, &fresh_key(), &order), 201).await;
    assert_eq!(placed["total_minor"], 1500 * 2);

    assert_eq!(inventory(&app, "MUG-1").await["on_hand"], 5);
    let leaked = listed_ids(&app, &[]).await;
    assert!(leaked.is_empty(), "another tenant's orders: {leaked:?}");
    let mine = ok(app.get(&format!("/v1/products/{}", id_of(&first))), 200).await;
    assert_eq!(mine["variants"][0]["prices"]["USD"], 1200);
    app.stop().await;
}

/// GET /v1/orders filters by customer, status, channel, and creation time (created_from
/// inclusive, created_before exclusive, RFC 3339), alone and combined, newest first.
async fn order_list_filters(engine: Engine) {
    let app = spawn_app(engine).await;
    app.create_product("Mug", &[("MUG-1", 1200)]).await;
    let early_web = id_of(&place(&app, "ada", "web").await);
    let early_pos = id_of(&place(&app, "bob", "pos-12").await);
    app.clock.advance(chrono::Duration::hours(1));
    let late = place(&app, "ada", "web").await;
    let late_web = id_of(&late);
    let late_pos = id_of(&place(&app, "bob", "pos-12").await);
    let boundary = late["created_at"].as_str().expect("a creation time");
    let (early_web, early_pos) = (early_web.as_str(), early_pos.as_str());
    let (late_web, late_pos) = (late_web.as_str(), late_pos.as_str());

    let all = [late_pos, late_web, early_pos, early_web];
    assert_eq!(listed_ids(&app, &[]).await, all);
    // MUG-1 has no stock, so the checkout saga cancels every order as out of stock.
    for _ in 0..200 {
        if listed_ids(&app, &[("status", "cancelled")]).await.len() == all.len() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(listed_ids(&app, &[("status", "cancelled")]).await, all);
    assert!(listed_ids(&app, &[("status", "placed")]).await.is_empty());
    assert!(listed_ids(&app, &[("status", "shipped")]).await.is_empty());
    let ada = listed_ids(&app, &[("customer", "ada")]).await;
    assert_eq!(ada, [late_web, early_web]);
    assert!(listed_ids(&app, &[("customer", "nobody")]).await.is_empty());
    let pos = listed_ids(&app, &[("channel", "pos-12")]).await;
    assert_eq!(pos, [late_pos, early_pos]);
    let late_ones = listed_ids(&app, &[("created_from", boundary)]).await;
    assert_eq!(late_ones, [late_pos, late_web]);
    let early_ones = listed_ids(&app, &[("created_before", boundary)]).await;
    assert_eq!(early_ones, [early_pos, early_web]);
    let combined = [
        ("customer", "bob"),
        ("channel", "pos-12"),
        ("created_from", boundary),
    ];
    assert_eq!(listed_ids(&app, &combined).await, [late_pos]);
    let empty_window = [("created_from", boundary), ("created_before", boundary)];
    assert!(listed_ids(&app, &empty_window).await.is_empty());
    app.stop().await;
}

/// Paging GET /v1/orders with limit=3 returns every order exactly once, newest first, and the
/// last page carries no cursor; a page that holds exactly the rest has no cursor either.
async fn order_list_pages_with_cursor(engine: Engine) {
    let app = spawn_app(engine).await;
    app.create_product("Mug", &[("MUG-1", 1200)]).await;
    let mut created = Vec::new();
    for n in 0..7 {
        created.push(id_of(&place(&app, &format!("c-{n}"), "web").await));
    }
    let (mut seen, mut sizes) = (Vec::new(), Vec::new());
    let mut cursor: Option<String> = None;
    // 7 orders in pages of 3 need 3 pages; more means the cursor does not advance.
    for _ in 0..5 {
        let mut query = vec![("limit", "3")];
        query.extend(cursor.as_deref().map(|c| ("cursor", c)));
        let page = ok(app.get(ORDERS).query(&query), 200).await;
        let data = page["data"].as_array().expect("a page has data");
        sizes.push(data.len());
        seen.extend(data.iter().map(id_of));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(sizes, [3, 3, 1]);
    created.reverse();
    assert_eq!(seen, created, "every order once, newest first");

    let whole = ok(app.get(ORDERS).query(&[("limit", "7")]), 200).await;
    assert_eq!(whole["data"].as_array().map(Vec::len), Some(7));
    assert!(whole["next_cursor"].as_str().is_none(), "{whole}");
    app.stop().await;
}

/// The last page of GET /v1/orders omits `next_cursor`, as the field's documentation ("absent
/// on the last page") promises, rather than sending it as null.
async fn last_order_page_omits_next_cursor(engine: Engine) {
    let app = spawn_app(engine).await;
    let page = ok(app.get(ORDERS), 200).await;
    assert_eq!(page["data"], json!([]));
    let members = page.as_object().expect("a page is an object");
    assert!(!members.contains_key("next_cursor"), "present: {page}");
    app.stop().await;
}

/// GET /v1/orders answers a limit outside 1..=100 or not a number, an unknown status, a time
/// that is not RFC 3339, an unknown parameter and a cursor it did not issue with 400 problems.
async fn order_list_refuses_bad_queries(engine: Engine) {
    let app = spawn_app(engine).await;
    let queries = [
        "limit=0",
        "limit=1000",
        "limit=101",
        "limit=-1",
        "limit=ten",
        "status=bogus",
        "created_from=yesterday",
        "created_before=2026-13-01T00:00:00Z",
        "colour=red",
        "cursor=not-a-cursor",
        "cursor=AAAA",
    ];
    for query in queries {
        problem(
            app.get(&format!("/v1/orders?{query}")),
            400,
            "invalid-query",
        )
        .await;
    }
    ok(app.get("/v1/orders?limit=100"), 200).await;
    app.stop().await;
}

/// A non-UUID or unknown order or product id, an unknown SKU and an unknown route are 404
/// problems; a known route with the wrong method is a 405 problem naming the allowed methods.
async fn unknown_resources_and_methods_are_problems(engine: Engine) {
    let app = spawn_app(engine).await;
    let unknown = Uuid::now_v7();
    let missing = [
        "/v1/orders/not-a-uuid".to_owned(),
        format!("/v1/orders/{unknown}"),
        "/v1/products/not-a-uuid".to_owned(),
        format!("/v1/products/{unknown}"),
        "/v1/inventory/NOPE-1".to_owned(),
        "/v1/nowhere".to_owned(),
        "/v2/orders".to_owned(),
    ];
    for path in &missing {
        problem(app.get(path), 404, "not-found").await;
    }
    let order_path = format!("/v1/orders/{unknown}");
    let wrong = [
        (Method::DELETE, ORDERS, "GET,HEAD,POST"),
        (Method::GET, PRODUCTS, "POST"),
        (Method::PUT, ADJUSTMENTS, "POST"),
        (Method::POST, order_path.as_str(), "GET,HEAD"),
        (Method::POST, "/livez", "GET,HEAD"),
    ];
    for (method, path, allowed) in wrong {
        let request = app
            .client
            .request(method, app.url(path))
            .bearer_auth(&app.key);
        let response = send(request).await;
        // RFC 9110 §15.5.6: a 405 names the methods the route does support.
        let allow = header(&response, ALLOW).unwrap_or_default();
        let mut methods: Vec<&str> = allow.split(',').map(str::trim).collect();
        methods.sort_unstable();
        assert_eq!(methods.join(","), allowed, "{path}");
        problem_of(response, 405, "method-not-allowed").await;
    }
    app.stop().await;
}

/// Reads need a key too: no key is 401 with WWW-Authenticate, and a key without the resource's
/// scope is 403.
async fn reads_need_a_key_with_the_scope(engine: Engine) {
    let app = spawn_app(engine).await;
    let product = app.create_product("Mug", &[("MUG-1", 1200)]).await;
    let product_path = format!("/v1/products/{}", id_of(&product));
    let paths = [ORDERS, product_path.as_str(), "/v1/inventory/MUG-1"];
    for path in paths {
        let response = send(app.client.get(app.url(path))).await;
        let challenge = header(&response, WWW_AUTHENTICATE);
        assert_eq!(challenge.as_deref(), Some("Bearer"), "{path}");
        problem_of(response, 401, "unauthenticated").await;
    }
    let admin_only = app.key_with(&[Scope::Admin]).await;
    let orders_only = app.key_with(&[Scope::Orders]).await;
    let refused = [
        (&admin_only, paths[0]),
        (&orders_only, paths[1]),
        (&orders_only, paths[2]),
    ];
    for (key, path) in refused {
        problem(get_as(&app, key, path), 403, "forbidden").await;
    }
    ok(get_as(&app, &orders_only, ORDERS), 200).await;
    ok(get_as(&app, &admin_only, &product_path), 200).await;
    app.stop().await;
}

/// /livez and /readyz answer 200 without a key, /openapi.json is an OpenAPI 3.1 document
/// listing the API's paths, and /docs/ serves Swagger UI.
async fn health_openapi_and_docs(engine: Engine) {
    let app = spawn_app(engine).await;
    for path in ["/livez", "/readyz"] {
        let response = send(app.client.get(app.url(path))).await;
        assert_eq!(response.status(), 200, "{path}");
    }
    let document = ok(app.client.get(app.url("/openapi.json")), 200).await;
    let version = document["openapi"].as_str().expect("an OpenAPI version");
    assert!(version.starts_with("3.1"), "OpenAPI {version}");
    let paths = document["paths"]
        .as_object()
        .expect("the document lists paths");
    for path in [
        ORDERS,
        PRODUCTS,
        ADJUSTMENTS,
        "/v1/orders/{id}",
        "/v1/inventory/{sku}",
    ] {
        assert!(paths.contains_key(path), "{path} is missing");
    }
    let docs = send(app.client.get(app.url("/docs/"))).await;
    assert_eq!(docs.status(), 200);
    let content_type = header(&docs, CONTENT_TYPE).unwrap_or_default();
    assert!(content_type.starts_with("text/html"), "{content_type}");
    let html = docs.text().await.expect("the Swagger UI page");
    assert!(html.to_lowercase().contains("swagger"), "{html}");
    app.stop().await;
}

/// `/metrics` serves Prometheus text with request latency per route and status, and the
/// consumers' and relay's counters once an order has run through the saga.
async fn metrics_show_request_latency_and_consumer_work(engine: Engine) {
    let app = spawn_app(engine).await;
    app.create_product("Tee", &[("TEE-9", 1999)]).await;
    let placed = app
        .post(
            "/v1/orders",
            "metrics-order",
            &order_body("c-1", &[("TEE-9", 1)]),
        )
        .send()
        .await
        .expect("POST");
    assert_eq!(placed.status(), 201);
    let mut text = String::new();
    for _ in 0..100 {
        let response = app
            .client
            .get(app.url("/metrics"))
            .send()
            .await
            .expect("GET /metrics");
        assert_eq!(response.status(), 200);
        text = response.text().await.expect("text");
        if text.contains("tally_events_applied_total") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        text.contains("http_request_duration_seconds_bucket"),
        "{text}"
    );
    assert!(text.contains(r#"route="/v1/orders""#), "{text}");
    assert!(text.contains("tally_events_applied_total"), "{text}");
    app.stop().await;
}
