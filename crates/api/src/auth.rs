//! API keys and scopes. A key is 32 random bytes shown once as `tly_<base64url>`; only its
//! SHA-256 is stored. Keys are looked up by hash, so verification is a single indexed read, and
//! recently seen keys are cached for [`KEY_CACHE_TTL`] to keep that read off the hot path.

use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use base64::Engine as _;
use rand::RngCore;
use sha2::{Digest, Sha256};
use tally_domain::ids::{ApiKeyId, TenantId};

use crate::AppState;
use crate::problem::ApiError;

/// How long a verified key is trusted without asking the store again; also the longest a
/// revoked key keeps working in a running process.
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(30);
/// Keys cached at once per process.
pub const KEY_CACHE_COUNT_MAX: u64 = 10_000;
const KEY_PREFIX: &str = "tly_";

/// What an API key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Catalog and stock: products, inventory adjustments and stock levels.
    Admin,
    /// Channel use: placing and reading orders.
    Orders,
}

impl Scope {
    pub const ALL: [Scope; 2] = [Scope::Admin, Scope::Orders];

    pub const fn as_str(self) -> &'static str {
        match self {
            Scope::Admin => "admin",
            Scope::Orders => "orders",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == raw)
    }
}

/// The scopes of a key as stored: comma-separated names.
pub fn scopes_to_string(scopes: &[Scope]) -> String {
    scopes
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// A fresh API key and the hash to store for it.
pub fn generate_api_key() -> (String, [u8; 32]) {
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    let key = format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
    );
    let hash = hash_api_key(&key);
    (key, hash)
}

pub fn hash_api_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub tenant: TenantId,
    pub key_id: ApiKeyId,
    scopes: Vec<Scope>,
}

async fn authenticate(
    parts: &Parts,
    state: &AppState,
    scope: Scope,
) -> Result<Principal, ApiError> {
    let value = parts
        .headers
        .get(header::AUTHORIZATION)
        .ok_or(ApiError::MissingCredentials)?;
    let key = value
        .to_str()
        .ok()
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .ok_or(ApiError::MissingCredentials)?;
    if !key.starts_with(KEY_PREFIX) {
        return Err(ApiError::InvalidCredentials);
    }
    let hash = hash_api_key(key);
    let record = match state.inner.keys.get(&hash) {
        Some(record) => record,
        None => {
            let record = state
                .inner
                .store
                .find_api_key(&hash)
                .await?
                .ok_or(ApiError::InvalidCredentials)?;
            state.inner.keys.insert(hash, record.clone());
            record
        }
    };
    if record.revoked {
        return Err(ApiError::InvalidCredentials);
    }
    let principal = Principal {
        tenant: record.tenant_id,
        key_id: record.id,
        scopes: record.scopes.split(',').filter_map(Scope::parse).collect(),
    };
    if !principal.scopes.contains(&scope) {
        return Err(ApiError::MissingScope(scope.as_str()));
    }
    Ok(principal)
}

/// A caller holding the `admin` scope.
#[derive(Debug)]
pub struct AdminKey(pub Principal);

/// A caller holding the `orders` scope.
#[derive(Debug)]
pub struct OrdersKey(pub Principal);

impl FromRequestParts<AppState> for AdminKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        authenticate(parts, state, Scope::Admin).await.map(Self)
    }
}

impl FromRequestParts<AppState> for OrdersKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        authenticate(parts, state, Scope::Orders).await.map(Self)
    }
}
