//! Helpers for tests that run orders through the checkout saga: placing with retries, waiting
//! for every order to settle and every consumer to catch up, and the invariant checks.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tally_domain::ids::TenantId;
use tally_store::Store;

/// How long the saga may take to settle every order before a test fails.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(240);

/// An HTTP client of one tenant against one server.
#[derive(Debug, Clone)]
pub struct Client {
    pub http: reqwest::Client,
    pub base: String,
    pub key: String,
}

impl Client {
    pub fn post(&self, path: &str, idempotency_key: &str, body: &Value) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .header("Idempotency-Key", idempotency_key)
            .json(body)
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
    }
}

/// POSTs until the answer is not a transient one; returns the final status and body.
pub async fn post_until_answered(
    app: &Client,
    path: &str,
    key: &str,
    body: &Value,
) -> (u16, Value) {
    for _ in 0..50 {
        let Ok(response) = app.post(path, key, body).send().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let status = response.status().as_u16();
        if status != 409 && status < 500 || path.ends_with("/cancel") && status == 409 {
            return (status, response.json().await.unwrap_or(Value::Null));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{path} under {key} never got an answer");
}

/// Waits until `count` orders exist and all are completed or cancelled; returns them by id.
pub async fn wait_until_settled(app: &Client, count: usize) -> HashMap<String, Value> {
    let deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
    loop {
        let mut orders = HashMap::new();
        let mut cursor: Option<String> = None;
        loop {
            let query = cursor
                .as_ref()
                .map_or(String::new(), |c| format!("&cursor={c}"));
            let page: Value = app
                .get(&format!("/v1/orders?limit=100{query}"))
                .send()
                .await
                .expect("GET")
                .json()
                .await
                .expect("page");
            for order in page["data"].as_array().expect("data") {
                orders.insert(order["id"].as_str().expect("id").to_owned(), order.clone());
            }
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => break,
            }
        }
        let unsettled = orders
            .values()
            .filter(|o| !matches!(o["status"].as_str(), Some("completed" | "cancelled")))
            .count();
        if unsettled == 0 && orders.len() == count {
            return orders;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{unsettled} orders still unsettled"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits until every consumer group has applied every event in the log that it acts on, so
/// that effects that follow the last status change (the delivery notification) have happened.
/// Reads the groups' inboxes rather than their offsets, so it holds on every bus.
pub async fn wait_until_consumers_caught_up(store: &Arc<dyn Store>) {
    let partners =
        tally_checkout::Partners::new(tally_checkout::PartnerUrls::sandbox("http://127.0.0.1:9"))
            .expect("partners");
    let groups: [Arc<dyn tally_dispatch::Handler>; 2] = [
        Arc::new(tally_checkout::Checkout::new(partners.clone())),
        Arc::new(tally_checkout::Notifications::new(partners)),
    ];
    let deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
    // Events applied, or parked as dead letters, by group.
    let mut applied: HashSet<(String, tally_domain::ids::EventId)> = HashSet::new();
    'poll: loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "consumers did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        if store.outbox_pending().await.expect("lag") > 0 {
            continue;
        }
        for tenant in store.tenants().await.expect("tenants") {
            for letter in store
                .dead_letters(tenant, None, 10_000)
                .await
                .expect("dead letters")
            {
                applied.insert((letter.group, letter.event_id));
            }
        }
        let mut after = 0;
        loop {
            let events = store.read_log(None, after, 1_000).await.expect("read");
            let Some(last) = events.last() else {
                break;
            };
            after = last.position;
            for event in &events {
                for group in &groups {
                    let key = (group.group().to_owned(), event.id);
                    if !group.wants(&event.event_type) || applied.contains(&key) {
                        continue;
                    }
                    if !store
                        .inbox_contains(group.group(), event.id)
                        .await
                        .expect("inbox")
                    {
                        continue 'poll;
                    }
                    applied.insert(key);
                }
            }
        }
        return;
    }
}

/// `tally ledger check`, `tally audit verify` and the stock reconciliation find nothing.
pub async fn assert_checks_pass(store: &dyn Store, tenant: TenantId, orders: usize) {
    for _ in 0..100 {
        if store.audit_chain(tenant).await.expect("chain").unsealed == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        tally::checks::ledger(store).await.expect("ledger check"),
        Vec::<String>::new()
    );
    let (violations, verified) = tally::checks::audit(store).await.expect("audit verify");
    assert_eq!(violations, Vec::<String>::new());
    assert!(verified > orders * 4, "every step is audited: {verified}");
    assert_eq!(
        tally::checks::stock(store).await.expect("stock check"),
        Vec::<String>::new()
    );
}
