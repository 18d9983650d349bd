//! Mutating requests: the `Idempotency-Key` header, the JSON body, the request fingerprint, and
//! turning a command's stored response into an HTTP response (replays marked
//! `Idempotent-Replayed: true`).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use tally_commands::{Actor, Command, CommandContext, Executed, Render};
use tally_domain::clock::Clock;
use tally_domain::idempotency::{Fingerprint, IdempotencyKey};
use tally_store::{Store, StoredResponse};
use tokio_util::sync::CancellationToken;

use crate::AppState;
use crate::auth::Principal;
use crate::problem::{ApiError, FieldError};

pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";
pub const REPLAYED_HEADER: &str = "idempotent-replayed";
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// Expired keys deleted per purge statement; bounds how long one purge holds the writer.
pub const PURGE_BATCH_COUNT_MAX: u32 = 1_000;
/// How often expired keys are purged.
pub const PURGE_INTERVAL: Duration = Duration::from_secs(60);

/// The body of an action that takes no parameters: empty, or `{}`.
#[derive(Debug, serde::Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NoBody {}

/// A parsed mutating request: its key, its typed body and the body's fingerprint.
#[derive(Debug)]
pub struct CommandRequest<T> {
    pub key: IdempotencyKey,
    pub body: T,
    pub fingerprint: Fingerprint,
    pub request_id: String,
    pub traceparent: Option<String>,
}

impl<T> FromRequest<AppState> for CommandRequest<T>
where
    T: DeserializeOwned + Serialize + Send,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let (parts, body) = request.into_parts();
        let key = idempotency_key(&parts.headers)?;
        let limit_bytes = state.inner.config.body_bytes_max;
        let bytes = axum::body::to_bytes(body, limit_bytes)
            .await
            .map_err(|_| ApiError::PayloadTooLarge { limit_bytes })?;
        // An action without parameters (cancel, return) may be sent with no body at all.
        let value: serde_json::Value = if bytes.is_empty() {
            serde_json::Value::Object(serde_json::Map::new())
        } else if !is_json(&parts.headers) {
            return Err(ApiError::UnsupportedMediaType);
        } else {
            serde_json::from_slice(&bytes)
                .map_err(|e| ApiError::MalformedJson(format!("the body is not valid JSON: {e}")))?
        };
        let body: T = serde_path_to_error::deserialize(value).map_err(|e| {
            ApiError::Invalid(vec![FieldError {
                pointer: json_pointer(e.path()),
                detail: e.inner().to_string(),
            }])
        })?;
        let fingerprint = fingerprint(parts.method.as_str(), parts.uri.path(), &body);
        let header_text = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        Ok(Self {
            key,
            body,
            fingerprint,
            request_id: header_text(REQUEST_ID_HEADER).unwrap_or_default(),
            traceparent: header_text("traceparent"),
        })
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<IdempotencyKey, ApiError> {
    let raw = headers
        .get(IDEMPOTENCY_KEY_HEADER)
        .ok_or(ApiError::IdempotencyKeyMissing)?
        .to_str()
        .map_err(|_| ApiError::IdempotencyKeyInvalid("must be printable ASCII".into()))?;
    IdempotencyKey::parse(raw).map_err(|e| ApiError::IdempotencyKeyInvalid(e.reason))
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
}

/// A JSON Pointer (RFC 6901) to where deserialization failed.
fn json_pointer(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut pointer = String::new();
    for segment in path.iter() {
        pointer.push('/');
        match segment {
            Segment::Seq { index } => pointer.push_str(&index.to_string()),
            Segment::Map { key } => pointer.push_str(&key.replace('~', "~0").replace('/', "~1")),
            Segment::Enum { variant } => pointer.push_str(variant),
            Segment::Unknown => pointer.push('?'),
        }
    }
    pointer
}

/// SHA-256 over the method, the path and the typed body re-serialized: two requests that mean
/// the same (whitespace, key order, an explicit `null` for an absent optional) share a
/// fingerprint; requests that mean different things do not.
fn fingerprint(method: &str, path: &str, body: &impl Serialize) -> Fingerprint {
    let mut hasher = Sha256::new();
    hasher.update(method.as_bytes());
    hasher.update(b" ");
    hasher.update(path.as_bytes());
    hasher.update(b"\n");
    // A derived `Serialize` of plain wire structs cannot fail.
    hasher.update(serde_json::to_vec(body).unwrap_or_default());
    Fingerprint(hasher.finalize().into())
}

/// Runs `command` under the request's key and answers with the stored response.
///
/// The command runs on its own task: a client that disconnects mid-request does not cancel a
/// transaction half-way, so every started command either commits or rolls back by itself, and
/// the client's retry finds the stored response.
pub(crate) async fn execute<T>(
    state: &AppState,
    principal: &Principal,
    request: CommandRequest<T>,
    command: Command,
    render: &'static Render,
) -> Result<Response, ApiError> {
    let commands = state.clone();
    let principal = principal.clone();
    let task = tokio::spawn(async move {
        let ctx = CommandContext {
            tenant: principal.tenant,
            actor: Actor::ApiKey(principal.key_id),
            key: &request.key,
            fingerprint: request.fingerprint.clone(),
            request_id: &request.request_id,
            traceparent: request.traceparent.as_deref(),
            render,
        };
        commands.inner.commands.execute(&ctx, command).await
    });
    let executed = task
        .await
        .map_err(|e| ApiError::Internal(format!("the command task failed: {e}")))??;
    Ok(match executed {
        Executed::Fresh(stored) => stored_response(stored, false),
        Executed::Replayed(stored) => stored_response(stored, true),
    })
}

fn stored_response(stored: StoredResponse, replayed: bool) -> Response {
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    let mut response = (status, Body::from(stored.body)).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(location) = stored.location.and_then(|l| HeaderValue::from_str(&l).ok()) {
        headers.insert(header::LOCATION, location);
    }
    if replayed {
        headers.insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    }
    response
}

/// A response to store: `status` with `body` serialized as JSON.
pub(crate) fn render_json(
    status: StatusCode,
    location: Option<String>,
    body: &impl Serialize,
) -> StoredResponse {
    StoredResponse {
        status: status.as_u16(),
        location,
        // A derived `Serialize` of plain wire structs cannot fail.
        body: serde_json::to_vec(body).unwrap_or_default(),
    }
}

/// Deletes expired idempotency records every [`PURGE_INTERVAL`] until `shutdown`.
pub async fn purge_loop(store: Arc<dyn Store>, clock: Arc<dyn Clock>, shutdown: CancellationToken) {
    loop {
        loop {
            match store
                .purge_idempotency_records(clock.now(), PURGE_BATCH_COUNT_MAX)
                .await
            {
                Ok(purged) if purged == u64::from(PURGE_BATCH_COUNT_MAX) => continue,
                Ok(_) => break,
                Err(error) => {
                    tracing::warn!(%error, "purging expired idempotency keys failed; will retry");
                    break;
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(PURGE_INTERVAL) => {}
        }
    }
}
