//! Tenants and API keys, created by the operator commands. A key's secret is returned once and
//! only its hash is stored.

use tally_api::auth::{Scope, generate_api_key, scopes_to_string};
use tally_domain::clock::Clock;
use tally_domain::ids::{ApiKeyId, TenantId};
use tally_store::{NewApiKey, NewTenant, Store};

/// Length limit of a tenant's name.
pub const TENANT_NAME_CHARS_MAX: usize = 200;

/// A key just created: its secret is shown once.
#[derive(Debug)]
pub struct IssuedKey {
    pub tenant: TenantId,
    pub key_id: ApiKeyId,
    pub secret: String,
}

/// Parses `admin,orders` into scopes, naming the first unknown one.
pub fn parse_scopes(raw: &str) -> anyhow::Result<Vec<Scope>> {
    let scopes = raw
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            Scope::parse(s).ok_or_else(|| {
                let known: Vec<_> = Scope::ALL.iter().map(|s| s.as_str()).collect();
                anyhow::anyhow!("unknown scope '{s}'; known scopes: {}", known.join(", "))
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    anyhow::ensure!(!scopes.is_empty(), "give at least one scope");
    Ok(scopes)
}

/// Creates a tenant and its first key.
pub async fn create_tenant(
    store: &dyn Store,
    clock: &dyn Clock,
    name: &str,
    scopes: &[Scope],
) -> anyhow::Result<IssuedKey> {
    let name = name.trim();
    anyhow::ensure!(
        !name.is_empty() && name.chars().count() <= TENANT_NAME_CHARS_MAX,
        "the tenant name must be 1 to {TENANT_NAME_CHARS_MAX} characters"
    );
    let tenant = TenantId::from_uuid(clock.fresh_id());
    store
        .create_tenant(&NewTenant {
            id: tenant,
            name: name.to_owned(),
            created_at: clock.now(),
        })
        .await?;
    create_key(store, clock, tenant, scopes).await
}

/// Creates another key for an existing tenant.
pub async fn create_key(
    store: &dyn Store,
    clock: &dyn Clock,
    tenant: TenantId,
    scopes: &[Scope],
) -> anyhow::Result<IssuedKey> {
    let (secret, key_hash) = generate_api_key();
    let key_id = ApiKeyId::from_uuid(clock.fresh_id());
    store
        .create_api_key(&NewApiKey {
            id: key_id,
            tenant_id: tenant,
            key_hash,
            scopes: scopes_to_string(scopes),
            created_at: clock.now(),
        })
        .await
        .map_err(|e| {
            if e.is_foreign_key_violation() {
                anyhow::anyhow!("no tenant {tenant}")
            } else {
                e.into()
            }
        })?;
    Ok(IssuedKey {
        tenant,
        key_id,
        secret,
    })
}
