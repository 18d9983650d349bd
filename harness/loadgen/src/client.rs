//! Tally's HTTP API as the load generator sees it: one pooled client, the run's set-up (a
//! product and its stock), order placement classified into [`Answer`]s, order reads and the
//! metrics text.

use std::time::Duration;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use serde::Deserialize;
use serde_json::json;
use tally_domain::catalog::VARIANTS_COUNT_MAX;
use uuid::Uuid;

use crate::mix::Catalog;

/// Longest wait for one answer. Far past any sane intake latency; a request that takes longer
/// is counted as a timeout rather than holding its slot forever.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Units of stock put on every SKU: enough for an hour at 10,000 orders a second of up to
/// three units a line, and below the API's largest single adjustment.
pub const STOCK_UNITS_PER_SKU: i64 = 100_000_000;
/// Where the run's stock is held.
pub const STOCK_LOCATION: &str = "bench";

/// One pooled client of one tenant against one server.
#[derive(Debug, Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    key: String,
    /// How often a set-up request that failed transiently is sent again (see [`crate::retry`]).
    transient_retries: u32,
}

/// The answer to one `POST /v1/orders`, as far as the load generator cares.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// 200 or 201 with an order: created now, or replayed from the idempotency record.
    Order(PlacedOrder),
    /// 409: the same key is still being processed; try again after `retry_after`, which is
    /// `None` when the server did not say (itself a mismatch).
    InFlight { retry_after: Option<Duration> },
    /// Any other status, or a 2xx whose body is not an order; `retry_after` is the server's
    /// `Retry-After`, if it gave one (503 and 429 may).
    Refused {
        status: u16,
        retry_after: Option<Duration>,
    },
    /// No HTTP answer at all: `connect` when no connection was made (nothing was sent),
    /// `timeout` when the answer took longer than [`REQUEST_TIMEOUT`].
    Transport { timeout: bool, connect: bool },
}

/// The answer to one `POST /v1/orders/{id}/cancel`.
#[derive(Debug, Clone, PartialEq)]
pub enum CancelAnswer {
    /// 202: the saga cancels the order at its next step.
    Accepted,
    /// 409 `not-cancellable`: the order was handed to the carrier, or has ended.
    TooLate,
    /// Any other answer, sorted as an order's would be.
    Other(Answer),
}

#[derive(Debug, Clone, PartialEq)]
pub struct PlacedOrder {
    pub id: Uuid,
    pub created_at: DateTime<Utc>,
    pub replayed: bool,
}

#[derive(Debug, Deserialize)]
struct OrderIdentity {
    id: Uuid,
    created_at: DateTime<Utc>,
}

/// `GET /v1/orders/{id}`: its status and timeline.
#[derive(Debug, Clone, Deserialize)]
pub struct OrderView {
    pub id: Uuid,
    pub status: String,
    pub updated_at: DateTime<Utc>,
    #[serde(default)]
    pub timeline: Vec<TimelineEntry>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TimelineEntry {
    #[serde(rename = "type")]
    pub event_type: String,
    pub time: DateTime<Utc>,
}

/// The server's `Retry-After`, in whole seconds, if it gave one.
fn retry_after_of(response: &reqwest::Response) -> Option<Duration> {
    response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

impl Api {
    /// A client whose pool keeps up to `connections` idle connections to the server, so that
    /// steady load never opens new ones.
    pub fn new(base: &str, key: &str, connections: usize) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(connections)
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .build()
            .context("build the HTTP client")?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            key: key.to_owned(),
            transient_retries: 0,
        })
    }

    /// The same client, sending set-up requests that failed transiently again up to `retries`
    /// times. Orders are retried by [`crate::send`], which counts every retry.
    pub fn with_transient_retries(mut self, retries: u32) -> Self {
        self.transient_retries = retries;
        self
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn post_json(
        &self,
        path: &str,
        idempotency_key: &str,
        body: Vec<u8>,
    ) -> reqwest::Result<reqwest::Response> {
        self.http
            .post(self.url(path))
            .bearer_auth(&self.key)
            .header("Idempotency-Key", idempotency_key)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(body)
            .send()
            .await
    }

    /// Sends one order under `idempotency_key`. `body` is serialized once by the caller, so
    /// that every copy and retry sends the same bytes.
    pub async fn place_order(&self, idempotency_key: &str, body: Vec<u8>) -> Answer {
        let response = match self.post_json("/v1/orders", idempotency_key, body).await {
            Ok(response) => response,
            Err(error) => {
                return Answer::Transport {
                    timeout: error.is_timeout(),
                    connect: error.is_connect(),
                };
            }
        };
        let status = response.status();
        let replayed = response
            .headers()
            .get("idempotent-replayed")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));
        let retry_after = retry_after_of(&response);
        if status == StatusCode::CONFLICT {
            return Answer::InFlight { retry_after };
        }
        if status != StatusCode::CREATED && status != StatusCode::OK {
            return Answer::Refused {
                status: status.as_u16(),
                retry_after,
            };
        }
        match response.json::<OrderIdentity>().await {
            Ok(order) => Answer::Order(PlacedOrder {
                id: order.id,
                created_at: order.created_at,
                replayed,
            }),
            Err(error) if error.is_timeout() => Answer::Transport {
                timeout: true,
                connect: false,
            },
            Err(_) => Answer::Refused {
                status: status.as_u16(),
                retry_after: None,
            },
        }
    }

    /// Asks to cancel order `id` under `idempotency_key`.
    pub async fn cancel_order(&self, idempotency_key: &str, id: Uuid) -> CancelAnswer {
        let path = format!("/v1/orders/{id}/cancel");
        let response = match self.post_json(&path, idempotency_key, b"{}".to_vec()).await {
            Ok(response) => response,
            Err(error) => {
                return CancelAnswer::Other(Answer::Transport {
                    timeout: error.is_timeout(),
                    connect: error.is_connect(),
                });
            }
        };
        let status = response.status();
        let retry_after = retry_after_of(&response);
        if status == StatusCode::ACCEPTED {
            return CancelAnswer::Accepted;
        }
        if status == StatusCode::CONFLICT {
            // A problem of type `not-cancellable` is the order's answer; any other 409 is the
            // key still held by an earlier request.
            let body = response.text().await.unwrap_or_default();
            if body.contains("not-cancellable") {
                return CancelAnswer::TooLate;
            }
            return CancelAnswer::Other(Answer::InFlight { retry_after });
        }
        CancelAnswer::Other(Answer::Refused {
            status: status.as_u16(),
            retry_after,
        })
    }

    pub async fn order(&self, id: Uuid) -> anyhow::Result<OrderView> {
        let response = self
            .http
            .get(self.url(&format!("/v1/orders/{id}")))
            .bearer_auth(&self.key)
            .send()
            .await?
            .error_for_status()?;
        Ok(response.json().await?)
    }

    /// The Prometheus text at `/metrics`.
    pub async fn metrics_text(&self) -> anyhow::Result<String> {
        let response = self
            .http
            .get(self.url("/metrics"))
            .send()
            .await?
            .error_for_status()?;
        Ok(response.text().await?)
    }

    /// Checks that the server answers, then creates the run's products (`skus` ordinary
    /// variants and the two that steer the sandbox) and puts stock on every SKU, so that orders
    /// complete instead of running out.
    pub async fn prepare(&self, run_tag: &str, skus: usize) -> anyhow::Result<Catalog> {
        let live = self
            .http
            .get(self.url("/livez"))
            .send()
            .await
            .with_context(|| format!("no Tally answers at {}", self.base))?;
        if !live.status().is_success() {
            bail!("{}/livez answered {}", self.base, live.status());
        }
        let catalog = Catalog::new(run_tag, skus);
        let variants: Vec<serde_json::Value> = catalog
            .priced()
            .into_iter()
            .map(|(sku, price)| json!({"sku": sku, "prices": {"USD": price}}))
            .collect();
        for (n, variants) in variants.chunks(VARIANTS_COUNT_MAX).enumerate() {
            let product =
                json!({"name": format!("tally bench {run_tag} {n}"), "variants": variants});
            self.set_up(
                "/v1/products",
                &format!("bench-{run_tag}-product-{n}"),
                &product,
            )
            .await?;
        }
        for (sku, _) in catalog.priced() {
            let adjustment = json!({
                "sku": sku,
                "location": STOCK_LOCATION,
                "delta": STOCK_UNITS_PER_SKU,
                "reason": "tally bench",
            });
            let key = format!("bench-{run_tag}-stock-{sku}");
            self.set_up("/v1/inventory/adjustments", &key, &adjustment)
                .await?;
        }
        Ok(catalog)
    }

    /// Posts one set-up request, sending it again under the same key while it fails
    /// transiently and retries are left.
    async fn set_up(&self, path: &str, key: &str, body: &serde_json::Value) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec(body)?;
        let mut retries = 0;
        // Each turn returns or uses up a retry, so `transient_retries` bounds the loop.
        loop {
            let sent = self.post_json(path, key, bytes.clone()).await;
            let transient = match &sent {
                Ok(response) => {
                    let status = response.status();
                    status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS
                }
                Err(_) => true,
            };
            if transient && retries < self.transient_retries {
                retries += 1;
                tokio::time::sleep(crate::retry::wait_before(retries, None)).await;
                continue;
            }
            let response = sent.with_context(|| format!("POST {path}"))?;
            let status = response.status();
            if status.is_success() {
                return Ok(());
            }
            let detail = response.text().await.unwrap_or_default();
            let hint = match status {
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    " (the key needs the scopes admin and orders, as `tally tenant create` prints)"
                }
                _ => "",
            };
            bail!("POST {path} answered {status}{hint}: {detail}")
        }
    }
}
