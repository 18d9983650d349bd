//! Test support: a fresh database of either engine, a running Tally on port 0 in front of it,
//! and an HTTP client with a tenant's key. The conformance suite in `tests/` is written once
//! and instantiated per engine with [`engine_tests!`].
//!
//! PostgreSQL tests create a database per test on the server named by
//! `TALLY_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`); the test
//! script drops leftovers from earlier runs.
//!
//! # Layout
//!
//! - [`fresh_database`]: an empty, migrated store.
//! - [`spawn_app`] and [`TestApp`]: a served Tally and request helpers.
//! - [`OffsetClock`]: a clock tests can move forward.

pub mod saga;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, SubsecRound, Utc};
use serde_json::{Value, json};
use sqlx::Connection;
use tally_api::ApiConfig;
use tally_api::auth::Scope;
use tally_domain::clock::Clock;
use tally_domain::ids::TenantId;
use tally_sandbox::SandboxConfig;
pub use tally_store::Engine;
use tally_store::{ConnectOptions, Store};

/// Pool size of a test store: small, so that many tests can share one PostgreSQL server.
const TEST_CONNECTIONS_MAX: u32 = 8;

/// Instantiates `async fn name(engine: Engine)` tests once per engine, as `sqlite::name` and
/// `postgres::name`.
#[macro_export]
macro_rules! engine_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name($crate::Engine::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name($crate::Engine::Postgres).await
                }
            )*
        }
    };
}

/// A clock that runs with the system clock, plus an offset tests can advance.
#[derive(Debug, Default)]
pub struct OffsetClock {
    offset_micros: AtomicI64,
}

impl OffsetClock {
    pub fn advance(&self, by: chrono::Duration) {
        let micros = by.num_microseconds().unwrap_or(i64::MAX);
        self.offset_micros.fetch_add(micros, Ordering::SeqCst);
    }
}

impl Clock for OffsetClock {
    fn now(&self) -> DateTime<Utc> {
        let offset = chrono::Duration::microseconds(self.offset_micros.load(Ordering::SeqCst));
        (Utc::now() + offset).trunc_subsecs(6)
    }
}

/// A migrated, empty store and whatever keeps it alive.
#[derive(Debug)]
pub struct TestDb {
    pub url: String,
    pub store: Arc<dyn Store>,
    _dir: Option<tempfile::TempDir>,
}

pub fn postgres_admin_url() -> String {
    std::env::var("TALLY_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// An empty store of `engine`, migrated.
pub async fn fresh_database(engine: Engine) -> TestDb {
    let (url, dir) = match engine {
        Engine::Sqlite => {
            let dir = tempfile::tempdir().expect("a temporary directory");
            let url = format!("sqlite://{}/tally.db", dir.path().display());
            (url, Some(dir))
        }
        Engine::Postgres => {
            let admin = postgres_admin_url();
            let name = format!("tally_test_{}", uuid::Uuid::new_v4().simple());
            let mut connection = sqlx::PgConnection::connect(&admin)
                .await
                .unwrap_or_else(|e| panic!("PostgreSQL at {admin} must be running for tests: {e}"));
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&mut connection)
                .await
                .expect("create a test database");
            let base = admin
                .rsplit_once('/')
                .map_or(admin.as_str(), |(base, _)| base);
            (format!("{base}/{name}"), None)
        }
    };
    let options = ConnectOptions {
        connections_max: TEST_CONNECTIONS_MAX,
    };
    let store = tally_store::connect(&url, &options)
        .await
        .expect("connect and migrate the test store");
    TestDb {
        url,
        store,
        _dir: dir,
    }
}

/// A Tally served on port 0 over a fresh store, with one tenant holding every scope.
#[derive(Debug)]
pub struct TestApp {
    pub address: SocketAddr,
    pub client: reqwest::Client,
    pub db: TestDb,
    pub clock: Arc<OffsetClock>,
    pub tenant: TenantId,
    /// An API key of `tenant` with every scope.
    pub key: String,
    running: tally::server::Running,
}

pub async fn spawn_app(engine: Engine) -> TestApp {
    spawn_app_with(engine, ApiConfig::default(), SandboxConfig::default()).await
}

/// A Tally whose in-process partner sandbox runs with `sandbox`'s fault knobs.
pub async fn spawn_app_with(engine: Engine, config: ApiConfig, sandbox: SandboxConfig) -> TestApp {
    let db = fresh_database(engine).await;
    let clock = Arc::new(OffsetClock::default());
    let listen: SocketAddr = "127.0.0.1:0".parse().expect("an address");
    let partners = tally::server::PartnerSetup::Sandbox(sandbox);
    let running = tally::server::start(
        Arc::clone(&db.store),
        clock.clone(),
        config,
        listen,
        partners,
    )
    .await
    .expect("start the server");
    let issued = tally::admin::create_tenant(
        db.store.as_ref(),
        clock.as_ref(),
        "Test tenant",
        &Scope::ALL,
    )
    .await
    .expect("create a tenant");
    TestApp {
        address: running.address,
        client: reqwest::Client::new(),
        db,
        clock,
        tenant: issued.tenant,
        key: issued.secret,
        running,
    }
}

impl TestApp {
    /// A client of this app's tenant.
    pub fn client(&self) -> saga::Client {
        saga::Client {
            http: self.client.clone(),
            base: format!("http://{}", self.address),
            key: self.key.clone(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.db.store
    }

    /// Notified whenever events enter the log.
    pub fn logged(&self) -> Arc<tokio::sync::Notify> {
        Arc::clone(&self.running.logged)
    }

    /// A POST with JSON `body`, this app's key and an `Idempotency-Key`.
    pub fn post(&self, path: &str, idempotency_key: &str, body: &Value) -> reqwest::RequestBuilder {
        self.client
            .post(self.url(path))
            .bearer_auth(&self.key)
            .header("Idempotency-Key", idempotency_key)
            .json(body)
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.get(self.url(path)).bearer_auth(&self.key)
    }

    /// Another tenant of the same deployment, with its own key of `scopes`.
    pub async fn other_tenant(&self, scopes: &[Scope]) -> (TenantId, String) {
        let issued = tally::admin::create_tenant(
            self.store().as_ref(),
            self.clock.as_ref(),
            "Other",
            scopes,
        )
        .await
        .expect("create a tenant");
        (issued.tenant, issued.secret)
    }

    /// A key of this app's tenant with only `scopes`.
    pub async fn key_with(&self, scopes: &[Scope]) -> String {
        tally::admin::create_key(
            self.store().as_ref(),
            self.clock.as_ref(),
            self.tenant,
            scopes,
        )
        .await
        .expect("create a key")
        .secret
    }

    /// Creates a product with one variant per `(sku, usd_minor)` and returns its JSON.
    pub async fn create_product(&self, name: &str, variants: &[(&str, i64)]) -> Value {
        let variants: Vec<Value> = variants
            .iter()
            .map(|(sku, price)| json!({"sku": sku, "prices": {"USD": price}}))
            .collect();
        let response = self
            .post(
                "/v1/products",
                &format!("product-{name}"),
                &json!({"name": name, "variants": variants}),
            )
            .send()
            .await
            .expect("POST /v1/products");
        assert_eq!(response.status(), 201, "creating product {name}");
        response.json().await.expect("a product")
    }

    /// Adjusts stock and returns the response's status.
    pub async fn adjust(
        &self,
        key: &str,
        sku: &str,
        location: &str,
        delta: i64,
    ) -> reqwest::Response {
        self.post(
            "/v1/inventory/adjustments",
            key,
            &json!({"sku": sku, "location": location, "delta": delta}),
        )
        .send()
        .await
        .expect("POST /v1/inventory/adjustments")
    }

    /// Every effect the partner sandbox received.
    pub fn partner_effects(&self) -> Vec<tally_sandbox::Effect> {
        self.running
            .sandbox
            .as_ref()
            .map(|s| s.effects())
            .unwrap_or_default()
    }

    pub async fn stop(self) {
        self.running.stop().await;
    }
}

/// A valid order body for `lines` of `(sku, quantity)`.
pub fn order_body(customer: &str, lines: &[(&str, i64)]) -> Value {
    let lines: Vec<Value> = lines
        .iter()
        .map(|(sku, quantity)| json!({"sku": sku, "quantity": quantity}))
        .collect();
    json!({
        "channel": "web",
        "customer": {"id": customer, "email": "ada@example.com"},
        "lines": lines,
        "currency": "USD",
        "shipping_address": {
            "name": "Ada Lovelace",
            "line1": "12 St James's Square",
            "city": "London",
            "postal_code": "SW1Y 4JH",
            "country": "GB"
        }
    })
}
