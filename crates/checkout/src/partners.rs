//! Partner adapters: the payment provider, the carrier and the notification provider, behind
//! one HTTP client each. Every call carries the caller's idempotency key; answers are sorted
//! into outcomes (authorized or declined), transient failures (timeouts, 5xx, 409 while the
//! partner is busy with the same key) and permanent ones (other 4xx).

use std::time::Duration;

use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use tally_dispatch::EffectError;

/// How long one partner call may take. Shorter than the partner's slowest honest answer would
/// be wrong; the key makes the retry after a timeout safe, so a short limit only costs a retry.
pub const PARTNER_TIMEOUT: Duration = Duration::from_secs(2);

/// Where each partner is.
#[derive(Debug, Clone)]
pub struct PartnerUrls {
    pub payment: String,
    pub carrier: String,
    pub notifications: String,
}

impl PartnerUrls {
    /// All three partners served by one sandbox at `base`.
    pub fn sandbox(base: &str) -> Self {
        Self {
            payment: base.to_owned(),
            carrier: base.to_owned(),
            notifications: base.to_owned(),
        }
    }
}

/// The HTTP clients of all partners.
#[derive(Debug, Clone)]
pub struct Partners {
    http: reqwest::Client,
    urls: PartnerUrls,
}

/// The payment provider's answer to an authorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authorization {
    Authorized { authorization_id: String },
    Declined { reason: String },
}

/// The payment provider's answer to a capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capture {
    Captured { capture_id: String },
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shipment {
    pub shipment_id: String,
    pub tracking_number: String,
}

#[derive(Debug, Deserialize)]
struct Answer {
    authorization_id: Option<String>,
    capture_id: Option<String>,
    refund_id: Option<String>,
    shipment_id: Option<String>,
    tracking_number: Option<String>,
    reason: Option<String>,
}

impl Partners {
    pub fn new(urls: PartnerUrls) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(PARTNER_TIMEOUT)
            .build()?;
        Ok(Self { http, urls })
    }

    /// POSTs `body` under `key` and returns the status and the parsed answer.
    async fn post(
        &self,
        url: String,
        key: &str,
        body: Value,
    ) -> Result<(StatusCode, Answer), EffectError> {
        let response = self
            .http
            .post(&url)
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
            .await
            .map_err(|e| EffectError::Transient(format!("{url}: {e}")))?;
        let status = response.status();
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            return Err(EffectError::Transient(format!("{url}: {status}")));
        }
        let answer = response
            .json::<Answer>()
            .await
            .map_err(|e| EffectError::Transient(format!("{url}: unreadable answer: {e}")))?;
        Ok((status, answer))
    }

    pub async fn authorize(
        &self,
        key: &str,
        reference: &str,
        amount_minor: i64,
        currency: &str,
    ) -> Result<Authorization, EffectError> {
        let url = format!("{}/payments/authorizations", self.urls.payment);
        let body =
            json!({"order_id": reference, "amount_minor": amount_minor, "currency": currency});
        match self.post(url, key, body).await? {
            (
                StatusCode::CREATED | StatusCode::OK,
                Answer {
                    authorization_id: Some(id),
                    ..
                },
            ) => Ok(Authorization::Authorized {
                authorization_id: id,
            }),
            (StatusCode::PAYMENT_REQUIRED, answer) => Ok(Authorization::Declined {
                reason: answer.reason.unwrap_or_else(|| "declined".to_owned()),
            }),
            (status, _) => Err(EffectError::Permanent(format!(
                "authorization answered {status}"
            ))),
        }
    }

    pub async fn capture(
        &self,
        key: &str,
        authorization_id: &str,
        amount_minor: i64,
    ) -> Result<Capture, EffectError> {
        let url = format!(
            "{}/payments/authorizations/{authorization_id}/capture",
            self.urls.payment
        );
        match self
            .post(url, key, json!({"amount_minor": amount_minor}))
            .await?
        {
            (
                StatusCode::OK | StatusCode::CREATED,
                Answer {
                    capture_id: Some(id),
                    ..
                },
            ) => Ok(Capture::Captured { capture_id: id }),
            (StatusCode::PAYMENT_REQUIRED, _) => Ok(Capture::Failed),
            (status, _) => Err(EffectError::Permanent(format!("capture answered {status}"))),
        }
    }

    pub async fn void(&self, key: &str, authorization_id: &str) -> Result<(), EffectError> {
        let url = format!(
            "{}/payments/authorizations/{authorization_id}/void",
            self.urls.payment
        );
        match self.post(url, key, json!({})).await? {
            (status, _) if status.is_success() => Ok(()),
            (status, _) => Err(EffectError::Permanent(format!("void answered {status}"))),
        }
    }

    pub async fn refund(
        &self,
        key: &str,
        capture_id: &str,
        amount_minor: i64,
    ) -> Result<String, EffectError> {
        let url = format!(
            "{}/payments/captures/{capture_id}/refunds",
            self.urls.payment
        );
        match self
            .post(url, key, json!({"amount_minor": amount_minor}))
            .await?
        {
            (
                status,
                Answer {
                    refund_id: Some(id),
                    ..
                },
            ) if status.is_success() => Ok(id),
            (status, _) => Err(EffectError::Permanent(format!("refund answered {status}"))),
        }
    }

    pub async fn create_shipment(
        &self,
        key: &str,
        reference: &str,
        lines: Value,
    ) -> Result<Shipment, EffectError> {
        let url = format!("{}/carrier/shipments", self.urls.carrier);
        match self
            .post(url, key, json!({"order_id": reference, "lines": lines}))
            .await?
        {
            (
                status,
                Answer {
                    shipment_id: Some(shipment_id),
                    tracking_number: Some(tracking_number),
                    ..
                },
            ) if status.is_success() => Ok(Shipment {
                shipment_id,
                tracking_number,
            }),
            (status, _) => Err(EffectError::Permanent(format!(
                "shipment answered {status}"
            ))),
        }
    }

    pub async fn notify(
        &self,
        key: &str,
        reference: &str,
        template: &str,
        to: &str,
    ) -> Result<(), EffectError> {
        let url = format!("{}/notifications", self.urls.notifications);
        match self
            .post(
                url,
                key,
                json!({"order_id": reference, "template": template, "to": to}),
            )
            .await?
        {
            (status, _) if status.is_success() => Ok(()),
            (status, _) => Err(EffectError::Permanent(format!(
                "notification answered {status}"
            ))),
        }
    }
}
