//! RFC 9457 problem details. Every error the API returns is produced by the one exhaustive
//! `match` in [`ApiError::parts`], so a new kind of error forces a decision about its status,
//! type and wording.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tally_commands::{CommandError, Refusal};
use tally_domain::order::PlacementRefused;
use tally_store::StoreError;
use utoipa::ToSchema;

/// How long a client should wait before retrying a request whose key is in flight, in seconds.
const IN_FLIGHT_RETRY_AFTER_SECONDS: u32 = 1;
/// How long a client should wait before retrying while the store is unavailable, in seconds.
const UNAVAILABLE_RETRY_AFTER_SECONDS: u32 = 5;

/// One invalid field: where it is (a JSON Pointer into the request body) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldError {
    pub pointer: String,
    pub detail: String,
}

/// An RFC 9457 problem document.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// A URI reference naming the kind of problem; stable, safe to switch on.
    #[serde(rename = "type")]
    pub problem_type: String,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing credentials")]
    MissingCredentials,
    #[error("invalid credentials")]
    InvalidCredentials,
    #[error("missing scope {0}")]
    MissingScope(&'static str),
    #[error("missing idempotency key")]
    IdempotencyKeyMissing,
    #[error("invalid idempotency key: {0}")]
    IdempotencyKeyInvalid(String),
    #[error("idempotency key in flight")]
    IdempotencyKeyInFlight,
    #[error("idempotency key reused")]
    IdempotencyKeyReused,
    #[error("unsupported media type")]
    UnsupportedMediaType,
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    #[error("body too large")]
    PayloadTooLarge { limit_bytes: usize },
    #[error("invalid request")]
    Invalid(Vec<FieldError>),
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    #[error("not found")]
    NotFound(&'static str),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("webhook rejected: {0}")]
    WebhookRejected(String),
    #[error("not ready")]
    NotReady,
    #[error("dead letter is {status}")]
    DeadLetterState {
        status: String,
        wanted: &'static str,
    },
    #[error("refused: {0:?}")]
    Refused(Refusal),
    #[error("store unavailable: {0}")]
    Unavailable(StoreError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn invalid(pointer: impl Into<String>, detail: impl Into<String>) -> Self {
        ApiError::Invalid(vec![FieldError {
            pointer: pointer.into(),
            detail: detail.into(),
        }])
    }

    /// Status, type slug, title and detail of every error.
    fn parts(&self) -> (StatusCode, &'static str, &'static str, String) {
        use StatusCode as S;
        match self {
            ApiError::MissingCredentials => (S::UNAUTHORIZED, "unauthenticated", "Authentication required", "send 'Authorization: Bearer <api key>'".into()),
            ApiError::InvalidCredentials => (S::UNAUTHORIZED, "unauthenticated", "Authentication required", "the API key is not valid".into()),
            ApiError::MissingScope(scope) => (S::FORBIDDEN, "forbidden", "Not allowed", format!("this API key lacks the '{scope}' scope")),
            ApiError::IdempotencyKeyMissing => (S::BAD_REQUEST, "idempotency-key-missing", "Idempotency-Key required", "this request changes state and needs an 'Idempotency-Key' header".into()),
            ApiError::IdempotencyKeyInvalid(reason) => (S::BAD_REQUEST, "idempotency-key-invalid", "Invalid Idempotency-Key", format!("the Idempotency-Key header {reason}")),
            ApiError::IdempotencyKeyInFlight => (S::CONFLICT, "idempotency-key-in-flight", "Request in progress", "a request with this Idempotency-Key is still being processed; retry after it completes".into()),
            ApiError::IdempotencyKeyReused => (S::UNPROCESSABLE_ENTITY, "idempotency-key-reused", "Idempotency-Key reused", "this Idempotency-Key was used for a different request; use a new key for a new request".into()),
            ApiError::UnsupportedMediaType => (S::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type", "Unsupported media type", "send the body as 'Content-Type: application/json'".into()),
            ApiError::MalformedJson(detail) => (S::BAD_REQUEST, "malformed-json", "Malformed JSON", detail.clone()),
            ApiError::PayloadTooLarge { limit_bytes } => (S::PAYLOAD_TOO_LARGE, "payload-too-large", "Request body too large", format!("the body must be at most {limit_bytes} bytes")),
            ApiError::Invalid(errors) => (S::UNPROCESSABLE_ENTITY, "validation-failed", "Invalid request", format!("{} field(s) are invalid; see 'errors'", errors.len())),
            ApiError::InvalidQuery(detail) => (S::BAD_REQUEST, "invalid-query", "Invalid query", detail.clone()),
            ApiError::NotFound(what) => (S::NOT_FOUND, "not-found", "Not found", format!("no such {what}")),
            ApiError::MethodNotAllowed => (S::METHOD_NOT_ALLOWED, "method-not-allowed", "Method not allowed", "this route does not support the request's method".into()),
            ApiError::WebhookRejected(reason) => (S::UNAUTHORIZED, "webhook-signature", "Webhook rejected", format!("the webhook's signature does not verify: {reason}")),
            ApiError::NotReady => (S::CONFLICT, "not-ready", "Not ready", "the order is not at the step this update follows yet; deliver it again later".into()),
            ApiError::DeadLetterState { status, wanted } => (S::CONFLICT, "dead-letter-state", "Dead letter cannot change", format!("the letter is {status} and cannot become {wanted}")),
            ApiError::Refused(refusal) => refusal_parts(refusal),
            ApiError::Unavailable(_) => (S::SERVICE_UNAVAILABLE, "unavailable", "Service unavailable", "the store is not reachable; retry later".into()),
            ApiError::Internal(_) => (S::INTERNAL_SERVER_ERROR, "internal", "Internal error", "the request failed on the server; it has been logged".into()),
        }
    }
}

fn skus_list(skus: &[tally_domain::catalog::Sku]) -> String {
    skus.iter()
        .map(|s| format!("'{s}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn refusal_parts(refusal: &Refusal) -> (StatusCode, &'static str, &'static str, String) {
    use StatusCode as S;
    match refusal {
        Refusal::SkusTaken(skus) => (
            S::CONFLICT,
            "sku-taken",
            "SKU already exists",
            format!("the catalog already has SKU(s) {}", skus_list(skus)),
        ),
        Refusal::UnknownSku(sku) => (
            S::UNPROCESSABLE_ENTITY,
            "unknown-sku",
            "Unknown SKU",
            format!("the catalog has no SKU '{sku}'"),
        ),
        Refusal::InsufficientStock { available } => (
            S::CONFLICT,
            "insufficient-stock",
            "Insufficient stock",
            format!("the adjustment would take available stock below zero; {available} available"),
        ),
        Refusal::Placement(PlacementRefused::UnknownSkus(skus)) => (
            S::UNPROCESSABLE_ENTITY,
            "unknown-sku",
            "Unknown SKU",
            format!("the catalog has no SKU(s) {}", skus_list(skus)),
        ),
        Refusal::Placement(PlacementRefused::NoPrice { currency, skus }) => (
            S::UNPROCESSABLE_ENTITY,
            "no-price",
            "No price in currency",
            format!("SKU(s) {} have no price in {currency}", skus_list(skus)),
        ),
        Refusal::OrderNotFound => (
            S::NOT_FOUND,
            "not-found",
            "Not found",
            "no such order".into(),
        ),
        Refusal::ProductNotFound => (
            S::NOT_FOUND,
            "not-found",
            "Not found",
            "no such product".into(),
        ),
        Refusal::NotVariantsOf(skus) => (
            S::UNPROCESSABLE_ENTITY,
            "not-a-variant",
            "Not a variant of the product",
            format!("the product has no variant(s) {}", skus_list(skus)),
        ),
        Refusal::NotCancellable { status } => (
            S::CONFLICT,
            "not-cancellable",
            "Order cannot be cancelled",
            format!(
                "the order is {status}; orders can be cancelled until they are handed to the carrier"
            ),
        ),
        Refusal::NotReturnable { status } => (
            S::CONFLICT,
            "not-returnable",
            "Order cannot be returned",
            format!("the order is {status}; only delivered or completed orders can be returned"),
        ),
        Refusal::Placement(PlacementRefused::TotalTooLarge) => (
            S::UNPROCESSABLE_ENTITY,
            "total-too-large",
            "Order total too large",
            "the order total exceeds the largest allowed amount".into(),
        ),
    }
}

impl From<CommandError> for ApiError {
    fn from(error: CommandError) -> Self {
        match error {
            CommandError::InFlight => ApiError::IdempotencyKeyInFlight,
            CommandError::KeyReused => ApiError::IdempotencyKeyReused,
            CommandError::Refused(refusal) => ApiError::Refused(refusal),
            CommandError::Store(error) => error.into(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match &error {
            StoreError::Database(_) | StoreError::Sqlite(_) if error.is_unavailable() => {
                ApiError::Unavailable(error)
            }
            StoreError::CommitFailed(_) => ApiError::Unavailable(error),
            StoreError::Database(_)
            | StoreError::Sqlite(_)
            | StoreError::Migrate(_)
            | StoreError::Corrupt(_)
            | StoreError::UnsupportedUrl(_)
            | StoreError::Thread(_)
            | StoreError::DataDirectory { .. } => ApiError::Internal(error.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, slug, title, detail) = self.parts();
        let retry_after = self.retry_after_seconds();
        match &self {
            // Logged here, where it is handled, and nowhere else; the client sees no internals.
            ApiError::Internal(message) => tracing::error!(error = %message, "request failed"),
            ApiError::Unavailable(error) => tracing::warn!(%error, "store unavailable"),
            _ => {}
        }
        let errors = match self {
            ApiError::Invalid(errors) => errors,
            _ => Vec::new(),
        };
        let problem = Problem {
            problem_type: format!("/problems/{slug}"),
            title,
            status: status.as_u16(),
            detail,
            errors,
        };
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(seconds) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl ApiError {
    /// How long a client should wait before sending the request again, for the errors that a
    /// later attempt may get past. Exhaustive, so that a new kind of error decides it.
    fn retry_after_seconds(&self) -> Option<u32> {
        match self {
            ApiError::IdempotencyKeyInFlight | ApiError::NotReady => {
                Some(IN_FLIGHT_RETRY_AFTER_SECONDS)
            }
            ApiError::Unavailable(_) => Some(UNAVAILABLE_RETRY_AFTER_SECONDS),
            ApiError::MissingCredentials
            | ApiError::InvalidCredentials
            | ApiError::MissingScope(_)
            | ApiError::IdempotencyKeyMissing
            | ApiError::IdempotencyKeyInvalid(_)
            | ApiError::IdempotencyKeyReused
            | ApiError::UnsupportedMediaType
            | ApiError::MalformedJson(_)
            | ApiError::PayloadTooLarge { .. }
            | ApiError::Invalid(_)
            | ApiError::InvalidQuery(_)
            | ApiError::NotFound(_)
            | ApiError::MethodNotAllowed
            | ApiError::WebhookRejected(_)
            | ApiError::DeadLetterState { .. }
            | ApiError::Refused(_)
            | ApiError::Internal(_) => None,
        }
    }
}
