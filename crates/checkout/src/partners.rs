//! Partner adapters: the payment provider, the carrier and the notification provider, behind
//! one HTTP client each. Every call carries the caller's idempotency key; answers are sorted
//! into the saga's [`Answer`]s (authorized or declined, voided or refused because captured…),
//! transient failures (timeouts, 5xx, 429, a 409 while the partner is busy with the same key)
//! and permanent ones (other 4xx).

use std::time::Duration;

use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use tally_dispatch::EffectError;
use tally_domain::checkout::decide::Answer;

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

/// The fields of every partner's answer that the saga reads; a problem document's `code`
/// names the state a refused request found.
#[derive(Debug, Deserialize)]
struct Reply {
    code: Option<String>,
    authorization_id: Option<String>,
    capture_id: Option<String>,
    refund_id: Option<String>,
    shipment_id: Option<String>,
    tracking_number: Option<String>,
    reason: Option<String>,
}

impl Reply {
    /// Whether a refusal names `code` as the state it found.
    fn is(&self, code: &str) -> bool {
        self.code.as_deref() == Some(code)
    }
}

/// The `code` of a 409 refusing a capture or void of a voided authorization: the provider's
/// wire contract, which the sandbox speaks too.
const VOIDED_CODE: &str = "authorization_voided";
/// The `code` of a 409 refusing a void of a captured authorization.
const CAPTURED_CODE: &str = "authorization_captured";

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
    ) -> Result<(StatusCode, Reply), EffectError> {
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
        let reply = response
            .json::<Reply>()
            .await
            .map_err(|e| EffectError::Transient(format!("{url}: unreadable answer: {e}")))?;
        // A conflict that names no state is the provider still busy with a request under the
        // same key: its answer comes to a retry.
        if status == StatusCode::CONFLICT && reply.code.is_none() {
            return Err(EffectError::Transient(format!(
                "{url}: busy with the same idempotency key"
            )));
        }
        Ok((status, reply))
    }

    /// Authorizes `amount_minor`. The same `key` asked again answers with what the provider
    /// did the first time (the authorization it made, or its decline), which is how a step
    /// whose answer was lost learns what to void.
    pub async fn authorize(
        &self,
        key: &str,
        reference: &str,
        amount_minor: i64,
        currency: &str,
    ) -> Result<Answer, EffectError> {
        let url = format!("{}/payments/authorizations", self.urls.payment);
        let body =
            json!({"order_id": reference, "amount_minor": amount_minor, "currency": currency});
        match self.post(url, key, body).await? {
            (
                StatusCode::CREATED | StatusCode::OK,
                Reply {
                    authorization_id: Some(id),
                    ..
                },
            ) => Ok(Answer::Authorized {
                authorization_id: id,
            }),
            (StatusCode::PAYMENT_REQUIRED, reply) => Ok(Answer::Declined {
                reason: reply.reason.unwrap_or_else(|| "declined".to_owned()),
            }),
            (status, _) => Err(EffectError::Permanent(format!(
                "authorization answered {status}"
            ))),
        }
    }

    /// Captures `amount_minor` of an authorization: captured, failed (402), or refused because
    /// the authorization was voided.
    pub async fn capture(
        &self,
        key: &str,
        authorization_id: &str,
        amount_minor: i64,
    ) -> Result<Answer, EffectError> {
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
                Reply {
                    capture_id: Some(id),
                    ..
                },
            ) => Ok(Answer::Captured { capture_id: id }),
            (StatusCode::PAYMENT_REQUIRED, _) => Ok(Answer::CaptureFailed),
            (StatusCode::CONFLICT, reply) if reply.is(VOIDED_CODE) => {
                Ok(Answer::AuthorizationVoided)
            }
            (status, _) => Err(EffectError::Permanent(format!("capture answered {status}"))),
        }
    }

    /// Voids an authorization: voided (now, or before under another key), or refused because
    /// the authorization was captured.
    pub async fn void(&self, key: &str, authorization_id: &str) -> Result<Answer, EffectError> {
        let url = format!(
            "{}/payments/authorizations/{authorization_id}/void",
            self.urls.payment
        );
        match self.post(url, key, json!({})).await? {
            (status, _) if status.is_success() => Ok(Answer::Voided),
            (StatusCode::CONFLICT, reply) if reply.is(VOIDED_CODE) => Ok(Answer::Voided),
            (StatusCode::CONFLICT, reply) if reply.is(CAPTURED_CODE) => {
                Ok(Answer::AuthorizationCaptured)
            }
            (status, _) => Err(EffectError::Permanent(format!("void answered {status}"))),
        }
    }

    pub async fn refund(
        &self,
        key: &str,
        capture_id: &str,
        amount_minor: i64,
    ) -> Result<Answer, EffectError> {
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
                Reply {
                    refund_id: Some(id),
                    ..
                },
            ) if status.is_success() => Ok(Answer::Refunded { refund_id: id }),
            (status, _) => Err(EffectError::Permanent(format!("refund answered {status}"))),
        }
    }

    pub async fn create_shipment(
        &self,
        key: &str,
        reference: &str,
        lines: Value,
    ) -> Result<Answer, EffectError> {
        let url = format!("{}/carrier/shipments", self.urls.carrier);
        match self
            .post(url, key, json!({"order_id": reference, "lines": lines}))
            .await?
        {
            (
                status,
                Reply {
                    shipment_id: Some(shipment_id),
                    tracking_number: Some(tracking_number),
                    ..
                },
            ) if status.is_success() => Ok(Answer::Shipment {
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
