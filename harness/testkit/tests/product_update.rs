//! `PATCH /v1/products/{id}` on both engines: a rename and a repricing take effect (new orders
//! pay the new price) with one `tally.product.updated.v1` event; the same change again changes
//! nothing; a retry under the key is replayed, racing retries apply once; bad input is a
//! problem that changes nothing and leaves the key unspent.

use reqwest::header::CONTENT_TYPE;
use reqwest::{RequestBuilder, Response};
use serde_json::{Value, json};
use tally_api::auth::Scope;
use tally_testkit::{Engine, TestApp, order_body, spawn_app};
use uuid::Uuid;

tally_testkit::store_tests!(
    a_change_renames_reprices_and_is_published_once,
    racing_retries_under_one_key_change_once,
    bad_changes_are_problems_that_change_nothing,
);

fn fresh_key() -> String {
    Uuid::now_v7().to_string()
}

fn patch(app: &TestApp, path: &str, key: &str, body: &Value) -> RequestBuilder {
    let request = app.client.patch(app.url(path)).bearer_auth(&app.key);
    request.header("Idempotency-Key", key).json(body)
}

async fn answer(request: RequestBuilder) -> (u16, Option<String>, Value) {
    let response: Response = request.send().await.expect("the server answers");
    let status = response.status().as_u16();
    let replayed = response
        .headers()
        .get("idempotent-replayed")
        .map(|v| v.to_str().expect("ASCII").to_owned());
    let body = response.json().await.unwrap_or(Value::Null);
    (status, replayed, body)
}

/// Asserts an RFC 9457 problem of `status` and `slug`.
async fn problem(request: RequestBuilder, status: u16, slug: &str) -> Value {
    let response = request.send().await.expect("the server answers");
    assert_eq!(response.status(), status);
    let content_type = response.headers().get(CONTENT_TYPE).cloned();
    assert_eq!(
        content_type.as_ref().map(|v| v.to_str().expect("ASCII")),
        Some("application/problem+json")
    );
    let body: Value = response.json().await.expect("a problem");
    assert_eq!(body["type"], format!("/problems/{slug}"), "{body}");
    body
}

/// The event types whose subject is `subject`, oldest first.
async fn events_about(app: &TestApp, subject: &str) -> Vec<String> {
    let timeline = app
        .store()
        .timeline(app.tenant, subject)
        .await
        .expect("the timeline");
    timeline.into_iter().map(|e| e.event_type).collect()
}

async fn a_change_renames_reprices_and_is_published_once(engine: Engine) {
    let app = spawn_app(engine).await;
    let product = app
        .create_product("Mug", &[("MUG-1", 1200), ("MUG-2", 1500)])
        .await;
    let id = product["id"].as_str().expect("an id").to_owned();
    let path = format!("/v1/products/{id}");
    let change = json!({
        "name": "Stoneware mug",
        "variants": [{"sku": "MUG-2", "prices": {"USD": 1700, "EUR": 1600}}]
    });
    let key = fresh_key();
    let (status, replayed, changed) = answer(patch(&app, &path, &key, &change)).await;
    assert_eq!((status, replayed), (200, None), "{changed}");
    assert_eq!(changed["name"], "Stoneware mug");
    assert_eq!(changed["created_at"], product["created_at"]);
    assert_eq!(
        changed["variants"],
        json!([
            {"sku": "MUG-1", "prices": {"USD": 1200}},
            {"sku": "MUG-2", "prices": {"EUR": 1600, "USD": 1700}}
        ])
    );
    let read: Value = app
        .get(&path)
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("a product");
    assert_eq!(read, changed, "the change is stored");

    // A retry under the key is the stored answer; the same change under a new key is a change
    // of nothing: neither publishes again.
    let (status, replayed, again) = answer(patch(&app, &path, &key, &change)).await;
    assert_eq!((status, replayed.as_deref()), (200, Some("true")));
    assert_eq!(again, changed);
    let (status, replayed, same) = answer(patch(&app, &path, &fresh_key(), &change)).await;
    assert_eq!((status, replayed), (200, None));
    assert_eq!(same, changed);
    assert_eq!(
        events_about(&app, &id).await,
        ["tally.product.created.v1", "tally.product.updated.v1"]
    );

    // New orders pay the new price.
    let order = app
        .post(
            "/v1/orders",
            &fresh_key(),
            &order_body("c-1", &[("MUG-2", 2)]),
        )
        .send()
        .await
        .expect("POST /v1/orders");
    assert_eq!(order.status(), 201);
    let order: Value = order.json().await.expect("an order");
    assert_eq!(order["total_minor"], 3400, "{order}");
    app.stop().await;
}

async fn racing_retries_under_one_key_change_once(engine: Engine) {
    let app = spawn_app(engine).await;
    let product = app.create_product("Tee", &[("TEE-1", 1000)]).await;
    let id = product["id"].as_str().expect("an id").to_owned();
    let path = format!("/v1/products/{id}");
    let key = fresh_key();
    let change = json!({"name": "Linen tee"});
    let answers =
        futures::future::join_all((0..8).map(|_| answer(patch(&app, &path, &key, &change)))).await;
    let fresh = answers
        .iter()
        .filter(|(status, replayed, _)| *status == 200 && replayed.is_none())
        .count();
    assert_eq!(fresh, 1, "one request ran the change: {answers:?}");
    for (status, _, body) in &answers {
        match status {
            200 => assert_eq!(body["name"], "Linen tee"),
            409 => assert_eq!(body["type"], "/problems/idempotency-key-in-flight"),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(
        events_about(&app, &id).await,
        ["tally.product.created.v1", "tally.product.updated.v1"]
    );
    app.stop().await;
}

async fn bad_changes_are_problems_that_change_nothing(engine: Engine) {
    let app = spawn_app(engine).await;
    let product = app.create_product("Cup", &[("CUP-1", 900)]).await;
    app.create_product("Bowl", &[("BOWL-1", 1100)]).await;
    let id = product["id"].as_str().expect("an id").to_owned();
    let path = format!("/v1/products/{id}");
    let key = fresh_key();
    let price = |sku: &str, prices: Value| json!({"variants": [{"sku": sku, "prices": prices}]});
    let invalid = [
        (json!({}), ""),
        (json!({"name": ""}), "/name"),
        (json!({"name": "Cup", "surprise": 1}), "/surprise"),
        (price("CUP-1", json!({})), ""),
        (
            price("CUP-1", json!({"ZZZ": 100})),
            "/variants/0/prices/ZZZ",
        ),
        (price("CUP-1", json!({"USD": -5})), "/variants/0/prices/USD"),
        (
            price("CUP-1", json!({"USD": 9.5})),
            "/variants/0/prices/USD",
        ),
        (price("CUP 1", json!({"USD": 100})), "/variants/0/sku"),
    ];
    for (body, pointer) in invalid {
        let problem = problem(patch(&app, &path, &key, &body), 422, "validation-failed").await;
        let errors = problem["errors"].as_array().expect("errors");
        assert!(
            errors.iter().any(|e| e["pointer"] == pointer),
            "{body}: expected an error at '{pointer}': {problem}"
        );
    }
    // Another product's SKU, or none the catalog has, is not a variant of this one.
    for sku in ["BOWL-1", "NOPE-1"] {
        let body = price(sku, json!({"USD": 100}));
        let refused = problem(
            patch(&app, &path, &fresh_key(), &body),
            422,
            "not-a-variant",
        )
        .await;
        assert!(refused["detail"].as_str().unwrap_or_default().contains(sku));
    }
    let rename = json!({"name": "Teacup"});
    let unknown = format!("/v1/products/{}", Uuid::now_v7());
    problem(
        patch(&app, &unknown, &fresh_key(), &rename),
        404,
        "not-found",
    )
    .await;
    problem(
        patch(&app, "/v1/products/not-an-id", &fresh_key(), &rename),
        404,
        "not-found",
    )
    .await;
    let keyless = app
        .client
        .patch(app.url(&path))
        .bearer_auth(&app.key)
        .json(&rename);
    problem(keyless, 400, "idempotency-key-missing").await;
    let orders_only = app.key_with(&[Scope::Orders]).await;
    let narrow = app
        .client
        .patch(app.url(&path))
        .bearer_auth(&orders_only)
        .header("Idempotency-Key", &key)
        .json(&rename);
    problem(narrow, 403, "forbidden").await;

    let read: Value = app
        .get(&path)
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("a product");
    assert_eq!(read, product, "nothing changed");
    assert_eq!(events_about(&app, &id).await, ["tally.product.created.v1"]);
    // None of the refused requests spent the key.
    let (status, replayed, renamed) = answer(patch(&app, &path, &key, &rename)).await;
    assert_eq!((status, replayed), (200, None));
    assert_eq!(renamed["name"], "Teacup");
    app.stop().await;
}
