//! The checkout saga end to end on every engine, with partners that fail: every order reaches
//! a terminal status, every partner effect happens once, and the ledger, the audit trail and
//! stock all check out.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use tally_sandbox::{EffectKind, SandboxConfig};
use tally_testkit::saga::{
    assert_checks_pass, post_until_answered, wait_until_consumers_caught_up, wait_until_settled,
};
use tally_testkit::{Engine, TestApp, order_body, spawn_app_with};

tally_testkit::engine_tests!(
    hundreds_of_orders_with_failing_partners_settle_exactly_once,
    a_worker_dropped_mid_saga_is_replaced_without_duplicate_effects,
);

const ORDERS: usize = 200;
const CONCURRENCY: usize = 16;

/// What the test expects of an order, by what it buys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Runs to completion.
    Normal,
    /// The card is declined (sandbox rule: amount % 100 == 13).
    Declined,
    /// The capture fails (amount % 100 == 17): the authorization is voided.
    CaptureFails,
    /// More than the stock: some are cancelled as out of stock.
    Scarce,
    /// Cancelled by the client right after placement.
    Cancelled,
}

fn kind_of(i: usize) -> Kind {
    match i % 20 {
        0 => Kind::Declined,
        1 => Kind::CaptureFails,
        2 | 3 => Kind::Scarce,
        4 => Kind::Cancelled,
        _ => Kind::Normal,
    }
}

fn line(kind: Kind, i: usize) -> (&'static str, i64) {
    match kind {
        Kind::Normal | Kind::Cancelled => ("TEE", 1 + (i % 3) as i64),
        Kind::Declined => ("DECL", 1),
        Kind::CaptureFails => ("CAPF", 1),
        Kind::Scarce => ("RARE", 1),
    }
}

async fn stock_up(app: &TestApp) {
    app.create_product("Tee", &[("TEE", 1999)]).await;
    app.create_product("Declined", &[("DECL", 1013)]).await;
    app.create_product("CaptureFails", &[("CAPF", 1017)]).await;
    app.create_product("Rare", &[("RARE", 500)]).await;
    for (sku, units) in [("TEE", 2_000), ("DECL", 100), ("CAPF", 100), ("RARE", 7)] {
        let response = app
            .adjust(&format!("stock-{sku}"), sku, "wh-east", units)
            .await;
        assert_eq!(response.status(), 200);
    }
}

async fn place_all(app: &TestApp) -> Vec<(String, Kind)> {
    let client = app.client();
    let app = &client;
    futures::stream::iter(0..ORDERS)
        .map(|i| async move {
            let kind = kind_of(i);
            let (sku, quantity) = line(kind, i);
            let (status, body) = post_until_answered(
                app,
                "/v1/orders",
                &format!("order-{i}"),
                &order_body(&format!("c{i}"), &[(sku, quantity)]),
            )
            .await;
            assert_eq!(status, 201, "order {i}: {body}");
            let id = body["id"].as_str().expect("an id").to_owned();
            if kind == Kind::Cancelled {
                let (status, _) = post_until_answered(
                    app,
                    &format!("/v1/orders/{id}/cancel"),
                    &format!("cancel-{i}"),
                    &json!({}),
                )
                .await;
                assert!(status == 202 || status == 409, "cancel {i}: {status}");
            }
            (id, kind)
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await
}

/// With the sandbox failing a fifth of all calls (before the effect, after it, or by answering
/// too late) and delivering every webhook three times, 200 orders on each engine all reach a
/// terminal status, the payment provider authorized, captured or voided each at most once,
/// every notification went out once, and the ledger, audit chain and stock all check out.
async fn hundreds_of_orders_with_failing_partners_settle_exactly_once(engine: Engine) {
    let sandbox = SandboxConfig {
        error_rate: 0.10,
        error_after_effect_rate: 0.05,
        timeout_rate: 0.05,
        timeout_delay: Duration::from_secs(3),
        webhook_duplicates: 3,
        seed: 7,
        ..SandboxConfig::default()
    };
    let app = spawn_app_with(engine, tally_testkit::api_config(), sandbox).await;
    stock_up(&app).await;
    let placed = place_all(&app).await;
    let orders = wait_until_settled(&app.client(), ORDERS).await;
    wait_until_consumers_caught_up(app.store()).await;

    let reference = |id: &str| format!("{}/{id}", app.tenant);
    let mut effects: HashMap<String, BTreeMap<&'static str, Vec<u16>>> = HashMap::new();
    for effect in app.partner_effects() {
        let kind = match effect.kind {
            EffectKind::Authorization => "authorization",
            EffectKind::Capture => "capture",
            EffectKind::Void => "void",
            EffectKind::Refund => "refund",
            EffectKind::Shipment => "shipment",
            EffectKind::Notification => "notification",
        };
        effects
            .entry(effect.order_id.clone())
            .or_default()
            .entry(kind)
            .or_default()
            .push(effect.response_status);
    }
    let mut by_status: BTreeMap<String, usize> = BTreeMap::new();
    for (id, kind) in &placed {
        let order = &orders[id];
        let status = order["status"].as_str().expect("status");
        *by_status.entry(status.to_owned()).or_default() += 1;
        let seen = effects.remove(&reference(id)).unwrap_or_default();
        let count = |k: &str| seen.get(k).map_or(0, Vec::len);
        assert!(
            count("authorization") <= 1
                && count("capture") <= 1
                && count("void") <= 1
                && count("shipment") <= 1
                && count("refund") <= 1,
            "order {id} ({kind:?}): {seen:?}"
        );
        match (kind, status) {
            (Kind::Normal, "completed") | (Kind::Scarce, "completed") => {
                assert_eq!(
                    (
                        count("authorization"),
                        count("capture"),
                        count("void"),
                        count("shipment")
                    ),
                    (1, 1, 0, 1),
                    "order {id}: {seen:?}"
                );
                assert_eq!(
                    count("notification"),
                    3,
                    "confirmed, shipped, delivered: {seen:?}"
                );
            }
            (Kind::Declined, "cancelled") => assert_eq!(
                (count("authorization"), count("capture")),
                (1, 0),
                "order {id}: {seen:?}"
            ),
            (Kind::CaptureFails, "cancelled") => assert_eq!(
                (count("authorization"), count("capture"), count("void")),
                (1, 1, 1),
                "order {id}: {seen:?}"
            ),
            (Kind::Scarce, "cancelled") => assert_eq!(
                count("authorization"),
                0,
                "out of stock before payment: {seen:?}"
            ),
            (Kind::Cancelled, "cancelled") => assert!(
                count("capture") == 0 || count("refund") == 1,
                "a captured cancellation is refunded: {seen:?}"
            ),
            (Kind::Cancelled, "completed") => {}
            other => panic!("order {id}: unexpected outcome {other:?}: {seen:?}"),
        }
        if status == "cancelled" {
            assert!(
                count("notification") >= 1,
                "the customer hears of the cancellation: {seen:?}"
            );
        }
    }
    assert!(
        effects.is_empty(),
        "effects for orders never placed: {effects:?}"
    );
    assert!(
        by_status.get("completed").copied().unwrap_or(0) > ORDERS / 2,
        "{by_status:?}"
    );
    assert_checks_pass(app.store().as_ref(), app.tenant, ORDERS).await;
    assert_tampering_is_named(&app.db, engine).await;
    app.stop().await;
}

/// Edits one sealed audit record and deletes another behind Tally's back: `tally audit
/// verify` names both.
async fn assert_tampering_is_named(db: &tally_testkit::TestDb, engine: Engine) {
    let edit = "UPDATE audit_records SET body = jsonb_set(body, '{action}', '\"tampered\"') WHERE sequence = 5";
    let delete = "DELETE FROM audit_records WHERE sequence = 9";
    match engine {
        Engine::Postgres | Engine::PostgresKafka => {
            let pool = sqlx::PgPool::connect(&db.url).await.expect("connect");
            sqlx::query(edit).execute(&pool).await.expect("edit");
            sqlx::query(delete).execute(&pool).await.expect("delete");
        }
        Engine::Sqlite => {
            let pool = sqlx::SqlitePool::connect(&db.url).await.expect("connect");
            let edit = "UPDATE audit_records SET body = json_set(body, '$.action', 'tampered') WHERE sequence = 5";
            sqlx::query(edit).execute(&pool).await.expect("edit");
            sqlx::query(delete).execute(&pool).await.expect("delete");
        }
    }
    let (violations, _) = tally::checks::audit(db.store.as_ref())
        .await
        .expect("audit verify");
    let named = |sequence: &str| violations.iter().any(|v| v.contains(sequence));
    assert!(named("5"), "the edited record is named: {violations:?}");
    assert!(
        named("9"),
        "the deleted record's place is named: {violations:?}"
    );
}

/// Orders placed per worker-crash run.
const CRASH_ORDERS: usize = 120;

/// A server whose tasks are dropped mid-saga, without any clean shutdown (partner calls made,
/// transactions not committed), is replaced by a new one on the same store: every order is
/// finished, no partner effect happens twice, and the books still balance.
async fn a_worker_dropped_mid_saga_is_replaced_without_duplicate_effects(engine: Engine) {
    let db = tally_testkit::fresh_database(engine).await;
    let sandbox_config = SandboxConfig {
        error_rate: 0.05,
        timeout_rate: 0.05,
        timeout_delay: Duration::from_secs(3),
        webhook_duplicates: 2,
        seed: 11,
        ..SandboxConfig::default()
    };
    let sandbox = tally_sandbox::start(sandbox_config, "127.0.0.1:0".parse().expect("address"))
        .await
        .expect("start the sandbox");
    let urls = tally_checkout::PartnerUrls::sandbox(&format!("http://{}", sandbox.address));
    let start = || async {
        let clock = std::sync::Arc::new(tally_domain::clock::SystemClock);
        let partners = tally::server::PartnerSetup::External(urls.clone());
        let listen = "127.0.0.1:0".parse().expect("address");
        let running = tally::server::start(
            db.store.clone(),
            clock,
            tally_testkit::api_config(),
            listen,
            partners,
            &db.deployment,
        )
        .await
        .expect("start a server");
        sandbox.set_webhook_url(format!("http://{}/v1/webhooks/carrier", running.address));
        running
    };
    let first = start().await;
    let issued = tally::admin::create_tenant(
        db.store.as_ref(),
        &tally_domain::clock::SystemClock,
        "Crash",
        &tally_api::auth::Scope::ALL,
    )
    .await
    .expect("tenant");
    let mut client = tally_testkit::saga::Client {
        http: reqwest::Client::new(),
        base: format!("http://{}", first.address),
        key: issued.secret,
    };
    let body = json!({"name": "Tee", "variants": [{"sku": "TEE", "prices": {"USD": 1999}}]});
    assert_eq!(
        post_until_answered(&client, "/v1/products", "tee", &body)
            .await
            .0,
        201
    );
    let stock = json!({"sku": "TEE", "location": "wh-east", "delta": 1000});
    assert_eq!(
        post_until_answered(&client, "/v1/inventory/adjustments", "stock", &stock)
            .await
            .0,
        200
    );
    for i in 0..CRASH_ORDERS {
        let order = order_body(&format!("c{i}"), &[("TEE", 1)]);
        assert_eq!(
            post_until_answered(&client, "/v1/orders", &format!("o{i}"), &order)
                .await
                .0,
            201
        );
    }
    // Once the saga is under way (its first reservation is in the log), drop every task of the
    // server where it stands.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !db
        .store
        .read_log(None, 0, u32::MAX)
        .await
        .expect("read the log")
        .iter()
        .any(|event| event.event_type == "tally.order.stock_reserved.v1")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the saga did not start"
        );
        let _ = tokio::time::timeout(Duration::from_millis(100), first.logged.notified()).await;
    }
    drop(first);
    let second = start().await;
    client.base = format!("http://{}", second.address);
    let orders = wait_until_settled(&client, CRASH_ORDERS).await;
    wait_until_consumers_caught_up(&db.store).await;
    assert!(
        orders.values().all(|o| o["status"] == "completed"),
        "every order completed"
    );
    let mut seen: HashMap<(String, EffectKind), u32> = HashMap::new();
    for effect in sandbox.effects() {
        *seen
            .entry((effect.order_id.clone(), effect.kind))
            .or_default() += 1;
    }
    for ((order, kind), count) in &seen {
        let expected = if *kind == EffectKind::Notification {
            3
        } else {
            1
        };
        assert_eq!(*count, expected, "{kind:?} of {order}");
    }
    assert_eq!(
        seen.len(),
        CRASH_ORDERS * 4,
        "authorization, capture, shipment, notifications per order"
    );
    assert_checks_pass(db.store.as_ref(), issued.tenant, CRASH_ORDERS).await;
    second.stop().await;
    sandbox.stop().await;
}
