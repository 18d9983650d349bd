//! The flow every mutating request follows, whichever partner it is for.
//!
//! 1. `Mutation` takes the `Idempotency-Key` header (400 without it) and the JSON body (400 if
//!    it does not parse), and fingerprints the request.
//! 2. `exchange` adds latency and may fail the request before anything happens.
//! 3. Under the one lock: a used key replays its stored response (or 422 if the request
//!    differs); an unused key runs the partner's `apply`, which either applies an effect, stored
//!    with its response, or refuses without changing anything (unknown id, wrong state), in
//!    which case the key stays unused.
//! 4. After a new effect, a fault may replace or delay the response; the stored one stands. A
//!    test may instead hold the response until it releases it ([`crate::hold`]).

use std::sync::Arc;

use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use chrono::Utc;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::effects::{EffectKind, EffectStore, Fingerprint, Lookup, NewEffect};
use crate::payment::Payments;
use crate::{Shared, lock};

pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";
/// Set on a response replayed from a stored one, as Tally's own API does.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";
/// The longest idempotency key accepted, in bytes; the same limit as Tally's API, and as long
/// as any key a caller derives from ids.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 255;
/// The largest request body, in bytes. A shipment of the most lines a carrier accepts is well
/// under this; larger bodies are refused with 413 before parsing.
pub const BODY_BYTES_MAX: usize = 256 * 1024;
/// The longest text field (ids, SKUs, templates, addresses), in bytes.
pub const TEXT_BYTES_MAX: usize = 255;
/// Mixed into the seed for the id generator, so that ids do not depend on how many fault draws
/// came before them.
const IDS_STREAM: u64 = 0x1d5_5eed;

/// The sandbox's data: effects and the partners' own records, all behind one lock.
#[derive(Debug)]
pub(crate) struct State {
    pub effects: EffectStore,
    pub payments: Payments,
    pub ids: Ids,
}

impl State {
    pub fn new(seed: u64) -> Self {
        Self {
            effects: EffectStore::default(),
            payments: Payments::default(),
            ids: Ids {
                rng: StdRng::seed_from_u64(seed ^ IDS_STREAM),
            },
        }
    }
}

/// Partner ids, drawn from the seed so that a run replays with the same ids.
#[derive(Debug)]
pub(crate) struct Ids {
    rng: StdRng,
}

impl Ids {
    /// An id like `auth_0f3a…`: 64 random bits, so collisions need billions of ids.
    pub fn next(&mut self, prefix: &str) -> String {
        format!("{prefix}_{:016x}", self.rng.random::<u64>())
    }

    /// A 12-digit tracking number prefixed with `TRK`.
    pub fn tracking_number(&mut self) -> String {
        format!("TRK{:012}", self.rng.random_range(0..1_000_000_000_000_u64))
    }
}

/// A mutating request: its idempotency key, its parsed body and its fingerprint.
#[derive(Debug)]
pub(crate) struct Mutation<T> {
    pub key: String,
    pub body: T,
    pub fingerprint: Fingerprint,
}

impl<T> FromRequest<Arc<Shared>> for Mutation<T>
where
    T: DeserializeOwned + Serialize + Send,
{
    type Rejection = Problem;

    async fn from_request(request: Request, _: &Arc<Shared>) -> Result<Self, Problem> {
        let (parts, body) = request.into_parts();
        let key = idempotency_key(&parts.headers)?;
        let bytes = axum::body::to_bytes(body, BODY_BYTES_MAX)
            .await
            .map_err(|_| {
                Problem::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the body is over {BODY_BYTES_MAX} bytes"),
                )
            })?;
        // A route without a body (a void) may be sent with none at all.
        let text: &[u8] = if bytes.is_empty() { b"{}" } else { &bytes };
        let body: T = serde_json::from_slice(text).map_err(|error| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                format!("the body is not valid: {error}"),
            )
        })?;
        let fingerprint = fingerprint(parts.method.as_str(), parts.uri.path(), &body)?;
        Ok(Self {
            key,
            body,
            fingerprint,
        })
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<String, Problem> {
    let refuse = |detail: &str| Problem::new(StatusCode::BAD_REQUEST, detail);
    let value = headers
        .get(IDEMPOTENCY_KEY_HEADER)
        .ok_or_else(|| refuse("every mutating request needs an Idempotency-Key header"))?;
    let key = value
        .to_str()
        .map_err(|_| refuse("the Idempotency-Key header must be visible ASCII"))?;
    if key.is_empty() || key.len() > IDEMPOTENCY_KEY_BYTES_MAX {
        return Err(refuse(&format!(
            "the Idempotency-Key header must be 1 to {IDEMPOTENCY_KEY_BYTES_MAX} bytes"
        )));
    }
    Ok(key.to_owned())
}

/// Hashes the typed body rather than the raw bytes, so that the same request serialized with
/// its fields in another order or other spacing is still the same request.
fn fingerprint<T: Serialize>(method: &str, path: &str, body: &T) -> Result<Fingerprint, Problem> {
    let canonical = serde_json::to_vec(body).map_err(|error| {
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the body could not be fingerprinted: {error}"),
        )
    })?;
    let mut hasher = Sha256::new();
    hasher.update(method.as_bytes());
    hasher.update(b"\n");
    hasher.update(path.as_bytes());
    hasher.update(b"\n");
    hasher.update(&canonical);
    Ok(hasher.finalize().into())
}

/// A response as stored under its key and replayed to every retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub status: StatusCode,
    pub body: serde_json::Value,
}

impl Stored {
    pub fn new(status: StatusCode, body: serde_json::Value) -> Self {
        Self { status, body }
    }

    pub(crate) fn respond(self, replayed: bool) -> Response {
        let mut response = (self.status, Json(self.body)).into_response();
        if replayed {
            response
                .headers_mut()
                .insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
        }
        response
    }
}

/// An RFC 9457 problem document: every refusal and injected fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub status: StatusCode,
    pub detail: String,
    /// A machine-readable reason for a refusal a caller acts on (the `code` member), as
    /// payment providers name an object's unexpected state: a void refused because the
    /// authorization was captured tells the caller a capture exists.
    pub code: Option<&'static str>,
}

impl Problem {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            status,
            detail: detail.into(),
            code: None,
        }
    }

    #[must_use]
    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({
            "type": "about:blank",
            "title": self.status.canonical_reason().unwrap_or("Error"),
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        if let Some(code) = self.code {
            body["code"] = serde_json::json!(code);
        }
        let content_type = HeaderValue::from_static("application/problem+json");
        (
            self.status,
            [(header::CONTENT_TYPE, content_type)],
            Json(body),
        )
            .into_response()
    }
}

/// What a partner's `apply` decided for an unused key.
#[derive(Debug)]
pub(crate) enum Outcome<T> {
    /// The partner did something: `effect` is recorded and `response` stored under the key.
    /// `then` is work to start once the lock is released (a shipment's webhooks).
    Applied {
        effect: NewEffect,
        response: Stored,
        then: T,
    },
    /// The partner refused and changed nothing; the key stays unused.
    Refused(Problem),
}

impl Outcome<()> {
    pub fn applied(effect: NewEffect, response: Stored) -> Self {
        Self::Applied {
            effect,
            response,
            then: (),
        }
    }
}

impl<T> Outcome<T> {
    pub fn refused(status: StatusCode, detail: impl Into<String>) -> Self {
        Self::Refused(Problem::new(status, detail))
    }
}

enum Decided<T> {
    Applied(Stored, T, EffectKind),
    Replayed(Stored),
    Refused(Problem),
}

/// Runs one mutating request through faults and the effect store; see the module doc.
pub(crate) async fn exchange<B, T>(
    shared: Arc<Shared>,
    request: Mutation<B>,
    apply: impl FnOnce(&mut State, B) -> Outcome<T>,
    then: impl FnOnce(&Arc<Shared>, T),
) -> Response {
    if let Some(fault) = shared.faults.before_effect(&shared.shutdown).await {
        return fault.into_response();
    }
    let Mutation {
        key,
        body,
        fingerprint,
    } = request;
    let decided = {
        let mut state = lock(&shared.state);
        decide(&mut state, &key, fingerprint, body, apply)
    };
    match decided {
        Decided::Replayed(stored) => stored.respond(true),
        Decided::Refused(problem) => problem.into_response(),
        Decided::Applied(stored, work, kind) => {
            then(&shared, work);
            if let Some(hold) = shared.holds.take(kind) {
                return hold.serve(stored, &shared.shutdown).await;
            }
            shared.faults.after_effect(stored, &shared.shutdown).await
        }
    }
}

/// Check-and-apply, run under the lock so that one key applies once however many requests
/// carry it at the same time.
fn decide<B, T>(
    state: &mut State,
    key: &str,
    fingerprint: Fingerprint,
    body: B,
    apply: impl FnOnce(&mut State, B) -> Outcome<T>,
) -> Decided<T> {
    match state.effects.lookup(key, &fingerprint) {
        Lookup::Replay(stored) => Decided::Replayed(stored),
        Lookup::Conflict => Decided::Refused(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "this Idempotency-Key was already used for a different request",
        )),
        Lookup::Full => Decided::Refused(Problem::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "the sandbox holds as many effects as it can; restart it",
        )),
        Lookup::New => match apply(state, body) {
            Outcome::Applied {
                effect,
                response,
                then,
            } => {
                let at = Utc::now();
                let kind = effect.kind;
                state
                    .effects
                    .insert(key, fingerprint, effect, response.clone(), at);
                Decided::Applied(response, then, kind)
            }
            Outcome::Refused(problem) => Decided::Refused(problem),
        },
    }
}

/// Refuses a text field that is empty or longer than [`TEXT_BYTES_MAX`].
pub(crate) fn check_text(field: &str, value: &str) -> Result<(), Problem> {
    if value.trim().is_empty() || value.len() > TEXT_BYTES_MAX {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            format!("`{field}` must be 1 to {TEXT_BYTES_MAX} bytes"),
        ));
    }
    Ok(())
}
