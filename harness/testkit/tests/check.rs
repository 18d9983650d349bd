//! `tally check` (`tally::checks::all`) on every engine: a store at rest after orders down every
//! saga path (completed, declined, failed capture, out of stock, cancelled, returned and
//! refunded) has no violation, and the timeline and partner-effect checks name the order they
//! catch when an order's status or the partner's records are tampered with.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use tally::checks::{self, CheckReport};
use tally_sandbox::{Effect, EffectKind, SandboxConfig};
use tally_testkit::saga::{
    post_until_answered, wait_until_consumers_caught_up, wait_until_settled,
};
use tally_testkit::{Engine, TestApp, order_body, spawn_app_with};
use uuid::Uuid;

tally_testkit::engine_tests!(
    a_store_at_rest_after_every_saga_path_has_no_violation,
    fabricated_partner_effects_are_named_with_their_order,
    a_tampered_order_status_is_named_by_the_timeline_check,
);

/// Orders of the busy test: five of each unhappy path, the rest run to completion.
const ORDERS: usize = 40;
const CONCURRENCY: usize = 8;
/// How long the tests wait for refunds and audit sealing, which follow within a second on a
/// healthy machine; generous because the machine may be busy building.
const WAIT: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(100);

/// Which saga path an order is meant to take, by what it buys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Completed,
    /// Price ending in 13 minor units: the sandbox declines the authorization (402).
    Declined,
    /// Price ending in 17 minor units: the capture fails (402) and the authorization is voided.
    CaptureFails,
    /// More orders than stock: some are cancelled as out of stock.
    Scarce,
    /// Cancelled by the client right after placement (or completed, if too late).
    Cancelled,
    /// Returned once completed, then refunded by the saga.
    Returned,
}

fn path_of(i: usize) -> Path {
    match i % 8 {
        0 => Path::Declined,
        1 => Path::CaptureFails,
        2 => Path::Scarce,
        3 => Path::Cancelled,
        4 => Path::Returned,
        _ => Path::Completed,
    }
}

fn line_of(path: Path, i: usize) -> (&'static str, i64) {
    match path {
        Path::Completed | Path::Cancelled | Path::Returned => ("TEE", 1 + (i % 3) as i64),
        Path::Declined => ("DECL", 1),
        Path::CaptureFails => ("CAPF", 1),
        Path::Scarce => ("RARE", 1),
    }
}

async fn stock_up(app: &TestApp) {
    app.create_product("Tee", &[("TEE", 2_500)]).await;
    app.create_product("Declined", &[("DECL", 1_013)]).await;
    app.create_product("CaptureFails", &[("CAPF", 1_017)]).await;
    app.create_product("Rare", &[("RARE", 800)]).await;
    for (sku, units) in [("TEE", 500), ("DECL", 50), ("CAPF", 50), ("RARE", 3)] {
        let response = app
            .adjust(&format!("stock-{sku}"), sku, "wh-east", units)
            .await;
        assert_eq!(response.status(), 200, "stocking {sku}");
    }
}

/// Places `count` orders down the paths of [`path_of`], cancelling the `Cancelled` ones at
/// once; returns their ids with their paths.
async fn place(app: &TestApp, count: usize) -> Vec<(String, Path)> {
    let client = app.client();
    let client = &client;
    futures::stream::iter(0..count)
        .map(|i| async move {
            let path = path_of(i);
            let (sku, quantity) = line_of(path, i);
            let body = order_body(&format!("c{i}"), &[(sku, quantity)]);
            let (status, placed) =
                post_until_answered(client, "/v1/orders", &format!("order-{i}"), &body).await;
            assert_eq!(status, 201, "order {i}: {placed}");
            let id = placed["id"].as_str().expect("an order id").to_owned();
            if path == Path::Cancelled {
                let cancel = format!("/v1/orders/{id}/cancel");
                let key = format!("cancel-{i}");
                let (status, _) = post_until_answered(client, &cancel, &key, &json!({})).await;
                assert!(status == 202 || status == 409, "cancel {i}: {status}");
            }
            (id, path)
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await
}

/// Waits until no order is returned (every return refunded), every consumer group has
/// applied every event and every audit record is sealed: the store is at rest.
async fn wait_until_at_rest(app: &TestApp) {
    let store = app.store();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let statuses = checks::order_statuses(store.as_ref())
            .await
            .expect("statuses");
        let unsealed = store.audit_chain(app.tenant).await.expect("chain").unsealed;
        if !statuses.contains_key("returned") && unsealed == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not at rest: {statuses:?}, {unsealed} unsealed"
        );
        tokio::time::sleep(POLL).await;
    }
    wait_until_consumers_caught_up(store).await;
}

/// A Tally with `count` orders placed and settled, at rest; returns the orders by id.
async fn settled_shop(
    engine: Engine,
    sandbox: SandboxConfig,
    count: usize,
) -> (TestApp, Vec<(String, Path)>, HashMap<String, Value>) {
    let app = spawn_app_with(engine, tally_testkit::api_config(), sandbox).await;
    stock_up(&app).await;
    let placed = place(&app, count).await;
    let orders = wait_until_settled(&app.client(), count).await;
    wait_until_at_rest(&app).await;
    (app, placed, orders)
}

/// The violations, one per line, for an assertion's message.
fn listed(report: &CheckReport) -> String {
    format!("{report}\n{}", report.violations.join("\n"))
}

/// With partners that fail some calls and webhooks delivered twice, forty orders down every saga
/// path (including declined cards, failed captures, out-of-stock and cancelled orders, and
/// returns refunded) leave a store on which `checks::all` with the sandbox's effects finds no
/// violation, having checked every order, event, entry and effect.
async fn a_store_at_rest_after_every_saga_path_has_no_violation(engine: Engine) {
    let sandbox = SandboxConfig {
        error_rate: 0.05,
        error_after_effect_rate: 0.05,
        webhook_duplicates: 2,
        seed: 3,
        ..SandboxConfig::default()
    };
    let (app, placed, orders) = settled_shop(engine, sandbox, ORDERS).await;
    let client = app.client();
    let mut returned = 0;
    for (id, path) in &placed {
        if *path == Path::Returned && orders[id]["status"] == "completed" {
            let action = format!("/v1/orders/{id}/return");
            let (status, body) =
                post_until_answered(&client, &action, &format!("return-{id}"), &json!({})).await;
            assert_eq!(status, 202, "return {id}: {body}");
            returned += 1;
        }
    }
    assert!(returned > 0, "some order was returned");
    wait_until_at_rest(&app).await;

    let effects = app.partner_effects();
    let report = checks::all(app.store().as_ref(), Some(&effects))
        .await
        .expect("check");
    assert!(report.is_clean(), "{}", listed(&report));
    assert_eq!(report.orders(), ORDERS, "{report}");
    assert_eq!(report.partner_effects, Some(effects.len()));
    for status in ["completed", "cancelled", "refunded"] {
        assert!(report.orders_by_status.contains_key(status), "{report}");
    }
    assert_eq!(report.orders_by_status["refunded"], returned, "{report}");
    assert!(report.timeline_events >= ORDERS * 3, "{report}");
    assert!(
        report.journal_entries > 0 && report.audit_records_verified > 0,
        "{report}"
    );
    let declined = effects.iter().filter(|e| e.response_status == 402).count();
    assert!(
        declined >= 5,
        "declines and failed captures are recorded as attempts"
    );
    app.stop().await;
}

/// The sandbox's effects with one order captured twice, one order's shipment missing, one
/// capture for the wrong amount, one key applied twice and an effect for an order that does not
/// exist: `checks::all` names each of those orders (or the key), and no other.
async fn fabricated_partner_effects_are_named_with_their_order(engine: Engine) {
    let (app, placed, orders) = settled_shop(engine, SandboxConfig::default(), 16).await;
    let effects = app.partner_effects();
    let clean = checks::all(app.store().as_ref(), Some(&effects))
        .await
        .expect("check");
    assert!(clean.is_clean(), "{}", listed(&clean));

    let completed: Vec<&String> = placed
        .iter()
        .map(|(id, _)| id)
        .filter(|id| orders[*id]["status"] == "completed")
        .collect();
    let [twice, unshipped, short, ..] = completed[..] else {
        panic!("three completed orders: {orders:?}");
    };
    let reference = |id: &str| format!("{}/{id}", app.tenant);
    let find = |id: &str, kind: EffectKind| -> Effect {
        let found = effects
            .iter()
            .find(|e| e.order_id == reference(id) && e.kind == kind);
        found.cloned().expect("the effect")
    };
    let mut fabricated: Vec<Effect> = effects
        .iter()
        .filter(|e| !(e.order_id == reference(unshipped) && e.kind == EffectKind::Shipment))
        .filter(|e| !(e.order_id == reference(short) && e.kind == EffectKind::Capture))
        .cloned()
        .collect();
    let mut again = find(twice, EffectKind::Capture);
    again.idempotency_key = format!("{}-again", again.idempotency_key);
    fabricated.push(again);
    let mut underpaid = find(short, EffectKind::Capture);
    underpaid.amount_minor = underpaid.amount_minor.map(|amount| amount - 1);
    fabricated.push(underpaid);
    let replayed = find(twice, EffectKind::Notification);
    fabricated.push(replayed.clone());
    let stranger = format!("{}/{}", app.tenant, Uuid::now_v7());
    let mut foreign = find(twice, EffectKind::Shipment);
    foreign.order_id = stranger.clone();
    foreign.idempotency_key = format!("{}-foreign", foreign.idempotency_key);
    fabricated.push(foreign);

    let report = checks::all(app.store().as_ref(), Some(&fabricated))
        .await
        .expect("check");
    let violations = &report.violations;
    let naming = |needle: &str, what: &str| -> Vec<&String> {
        violations
            .iter()
            .filter(|v| v.contains(needle) && v.contains(what))
            .collect()
    };
    let all = listed(&report);
    assert!(!naming(twice, "2 capture effects").is_empty(), "{all}");
    assert!(!naming(unshipped, "0 shipment effects").is_empty(), "{all}");
    assert!(!naming(short, "not the order's").is_empty(), "{all}");
    assert!(!naming(short, "the ledger booked").is_empty(), "{all}");
    assert!(
        !naming(&replayed.idempotency_key, "2 partner effects").is_empty(),
        "{all}"
    );
    assert!(
        !naming(&stranger, "no order in the store").is_empty(),
        "{all}"
    );
    let known: [&str; 5] = [
        twice,
        unshipped,
        short,
        &replayed.idempotency_key,
        &stranger,
    ];
    for violation in violations {
        assert!(
            known.iter().any(|k| violation.contains(k)),
            "collateral: {violation}\n{all}"
        );
    }
    app.stop().await;
}

/// Sets an order's stored status behind Tally's back, as a buggy writer or an operator's
/// hand-edit would.
async fn tamper_status(app: &TestApp, engine: Engine, id: &str, status: &str) {
    let id: Uuid = id.parse().expect("an order id");
    let url = &app.db.url;
    let updated = match engine.store() {
        tally_store::Engine::Postgres => {
            let pool = sqlx::PgPool::connect(url).await.expect("connect");
            let sql = "UPDATE orders SET status = $1 WHERE id = $2";
            let done = sqlx::query(sql).bind(status).bind(id).execute(&pool).await;
            done.expect("update").rows_affected()
        }
        tally_store::Engine::Sqlite => {
            let pool = sqlx::SqlitePool::connect(url).await.expect("connect");
            let sql = "UPDATE orders SET status = ?1 WHERE id = ?2";
            let done = sqlx::query(sql).bind(status).bind(id).execute(&pool).await;
            done.expect("update").rows_affected()
        }
    };
    assert_eq!(updated, 1, "order {id} tampered");
}

/// A completed order set back to 'shipped' and another set to a status that does not exist,
/// directly in the database: `checks::all` names both orders, and only them, from their
/// timelines.
async fn a_tampered_order_status_is_named_by_the_timeline_check(engine: Engine) {
    let (app, placed, orders) = settled_shop(engine, SandboxConfig::default(), 8).await;
    let clean = checks::all(app.store().as_ref(), None)
        .await
        .expect("check");
    assert!(clean.is_clean(), "{}", listed(&clean));
    assert_eq!(clean.partner_effects, None);

    let completed: Vec<&String> = placed
        .iter()
        .map(|(id, _)| id)
        .filter(|id| orders[*id]["status"] == "completed")
        .collect();
    let [rewound, garbled, ..] = completed[..] else {
        panic!("two completed orders: {orders:?}");
    };
    tamper_status(&app, engine, rewound, "shipped").await;
    tamper_status(&app, engine, garbled, "misplaced").await;

    let report = checks::all(app.store().as_ref(), None)
        .await
        .expect("check");
    let all = listed(&report);
    let expected = [
        format!("order {rewound}: status is 'shipped' but its timeline leaves it 'completed'"),
        format!("order {garbled}: status 'misplaced' is not an order status"),
    ];
    for expected in &expected {
        assert!(
            report
                .violations
                .iter()
                .any(|v| v.ends_with(expected.as_str())),
            "{expected}\n{all}"
        );
    }
    assert_eq!(report.violations.len(), 2, "{all}");
    assert_eq!(
        report.orders_by_status.get("misplaced"),
        Some(&1),
        "{report}"
    );
    app.stop().await;
}
