//! Test support: a fresh database of either engine, a running Tally on port 0 in front of it,
//! and an HTTP client with a tenant's key. The conformance suite in `tests/` is written once
//! and instantiated per engine with [`engine_tests!`].
//!
//! PostgreSQL tests create a database per test on the server named by
//! `TALLY_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`); the test
//! script drops leftovers from earlier runs. Kafka tests use the broker named by
//! `TALLY_TEST_KAFKA_BROKERS`, which the test script starts, each under a namespace of its own.
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
use tally::server::{Bus, Deployment};
use tally_api::ApiConfig;
use tally_api::auth::Scope;
use tally_domain::clock::Clock;
use tally_domain::ids::TenantId;
use tally_sandbox::SandboxConfig;
use tally_store::{ConnectOptions, Store};

/// Pool size of a test store: small, so that many tests can share one PostgreSQL server.
const TEST_CONNECTIONS_MAX: u32 = 8;
/// Partitions of each test topic: more than one, so that ordering across partitions is tested.
const TEST_TOPIC_PARTITIONS: i32 = 4;

/// A backend a conformance test runs on: a store engine and the bus in front of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// The embedded default: SQLite with its own log.
    Sqlite,
    /// PostgreSQL with the embedded log.
    Postgres,
    /// PostgreSQL with Kafka (tansu in tests) as the log.
    PostgresKafka,
}

impl Engine {
    /// The store engine underneath.
    pub fn store(self) -> tally_store::Engine {
        match self {
            Engine::Sqlite => tally_store::Engine::Sqlite,
            Engine::Postgres | Engine::PostgresKafka => tally_store::Engine::Postgres,
        }
    }
}

/// Instantiates `async fn name(engine: Engine)` tests once per backend, as `sqlite::name`,
/// `postgres::name` and `postgres_kafka::name`: for everything events flow through.
#[macro_export]
macro_rules! engine_tests {
    ($($name:ident),* $(,)?) => {
        $crate::store_tests!($($name),*);
        mod postgres_kafka {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name($crate::Engine::PostgresKafka).await
                }
            )*
        }
    };
}

/// Instantiates tests once per store engine, as `sqlite::name` and `postgres::name`: for
/// behaviour of the store alone (intake, idempotency, the embedded log), where the bus plays
/// no part.
#[macro_export]
macro_rules! store_tests {
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

/// The Kafka brokers tests use; the test script starts one and sets `TALLY_TEST_KAFKA_BROKERS`.
pub fn kafka_brokers() -> String {
    std::env::var("TALLY_TEST_KAFKA_BROKERS").unwrap_or_else(|_| {
        panic!(
            "TALLY_TEST_KAFKA_BROKERS is not set: run ./scripts/test, which starts a broker, or \
             point it at one (scripts/kafka start prints a port)"
        )
    })
}

/// A Kafka set-up of its own: topics and consumer groups under a fresh namespace.
pub fn fresh_kafka() -> tally_kafka::KafkaConfig {
    tally_kafka::KafkaConfig {
        namespace: format!("t{}", uuid::Uuid::new_v4().simple()),
        partitions: TEST_TOPIC_PARTITIONS,
        ..tally_kafka::KafkaConfig::new(kafka_brokers())
    }
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
    /// How servers over this store are deployed: for Kafka, a namespace of this test's own.
    pub deployment: Deployment,
    _dir: Option<tempfile::TempDir>,
}

pub fn postgres_admin_url() -> String {
    std::env::var("TALLY_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// Prints the server's logs in tests when `TALLY_TEST_LOG` holds a filter (`info`,
/// `tally_kafka=debug`…); silent otherwise.
fn init_test_logs() {
    if let Ok(filter) = std::env::var("TALLY_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}

/// An empty store of `engine`, migrated.
pub async fn fresh_database(engine: Engine) -> TestDb {
    init_test_logs();
    let (url, dir) = match engine.store() {
        tally_store::Engine::Sqlite => {
            let dir = tempfile::tempdir().expect("a temporary directory");
            let url = format!("sqlite://{}/tally.db", dir.path().display());
            (url, Some(dir))
        }
        tally_store::Engine::Postgres => {
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
    let deployment = Deployment {
        bus: match engine {
            Engine::Sqlite | Engine::Postgres => Bus::Embedded,
            Engine::PostgresKafka => Bus::Kafka(fresh_kafka()),
        },
        ..Deployment::default()
    };
    TestDb {
        url,
        store,
        deployment,
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

/// The API's configuration in tests: the defaults, with the sandbox's webhook secret.
pub fn api_config() -> ApiConfig {
    ApiConfig::new(SandboxConfig::default().webhook_secret)
}

pub async fn spawn_app(engine: Engine) -> TestApp {
    spawn_app_with(engine, api_config(), SandboxConfig::default()).await
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
        &db.deployment,
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

    /// The in-process partner sandbox, for its knobs (a held response, say).
    pub fn sandbox(&self) -> &tally_sandbox::Sandbox {
        self.running
            .sandbox
            .as_ref()
            .expect("a test app runs its partner sandbox in-process")
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
