//! Tally deployed as separate OS processes on PostgreSQL and Kafka — one API, two relays, two
//! workers, and the partner sandbox with faults on — places hundreds of orders while processes
//! are killed with SIGKILL: every order completes, no partner effect happens twice, and `tally
//! ledger check` and every other invariant pass.
//!
//! - One worker is killed and started again after the group has rebalanced onto the other, and
//!   later the relay holding the log's leases is killed too.
//! - One worker is killed and started again at once, before the group coordinator has noticed
//!   that the killed member is gone, so that the new generation gives the dead member
//!   partitions: the live workers must notice that nobody reads them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use tally_api::auth::Scope;
use tally_domain::clock::SystemClock;
use tally_testkit::saga::{
    Client, post_until_answered, wait_until_consumers_caught_up, wait_until_settled,
};
use tally_testkit::{Engine, order_body};

const ORDERS: usize = 300;
const CONCURRENCY: usize = 16;
/// Orders answered before the worker is killed: far enough in that the saga is busy.
const KILL_AFTER: usize = 100;
/// Orders answered before the first relay, which took every lease, is killed.
const KILL_RELAY_AFTER: usize = 200;
/// How long the killed worker stays down: longer than the consumer group's session timeout,
/// so that the group rebalances onto the other worker first.
const DOWN_FOR: Duration = Duration::from_secs(8);
/// Orders answered before a worker is killed and at once started again.
const RESTART_AFTER: usize = 100;

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").port()
}

/// A child process killed when the test ends, however it ends; its output goes to a log file
/// named in every failure message.
struct Process {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Process {
    fn start(name: &str, dir: &Path, args: &[String], env: &[(&str, String)]) -> Self {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("a log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_tally"));
        command
            .args(args)
            // TALLY_TEST_PROCESS_LOG sets the processes' log filter, to look closer at a failure.
            .env(
                "TALLY_LOG",
                std::env::var("TALLY_TEST_PROCESS_LOG").unwrap_or_else(|_| "info".to_owned()),
            )
            .stdout(Stdio::null())
            .stderr(file.try_clone().expect("a log file"));
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command.spawn().expect("start tally");
        Self {
            name: name.to_owned(),
            child,
            log,
        }
    }

    /// SIGKILL: no shutdown, no final offset commit, no lease release.
    fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }

    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{} exited with {status}; see {}",
                self.name,
                self.log.display()
            );
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn wait_ready(client: &reqwest::Client, base: &str, process: &mut Process) {
    for _ in 0..300 {
        if let Ok(response) = client.get(format!("{base}/readyz")).send().await
            && response.status() == 200
        {
            return;
        }
        process.assert_running();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{} did not become ready; see {}",
        process.name,
        process.log.display()
    );
}

/// Held by each test for its whole run: one deployment is five processes with a pool of
/// PostgreSQL connections each, and two at once would exceed the server's connection limit
/// (and the machine's cores) before they proved anything.
static ONE_DEPLOYMENT_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The processes of one deployment, with a tenant that sells one product in stock.
struct Deployment {
    db: tally_testkit::TestDb,
    dir: PathBuf,
    env: Vec<(&'static str, String)>,
    sandbox: String,
    client: Client,
    partner: Process,
    api: Process,
    relay: Process,
    standby: Process,
    workers: [Process; 2],
}

fn serve(role: &str, port: u16) -> Vec<String> {
    [
        "serve",
        "--role",
        role,
        "--listen",
        &format!("127.0.0.1:{port}"),
    ]
    .map(str::to_owned)
    .to_vec()
}

impl Deployment {
    async fn start() -> Self {
        let db = tally_testkit::fresh_database(Engine::Postgres).await;
        let kafka = tally_testkit::fresh_kafka();
        let dir = tempfile::tempdir().expect("a directory for logs").keep();
        let (api_port, sandbox_port) = (free_port(), free_port());
        let base = format!("http://127.0.0.1:{api_port}");
        let sandbox = format!("http://127.0.0.1:{sandbox_port}");
        let env = vec![
            ("TALLY_DATABASE_URL", db.url.clone()),
            ("TALLY_BUS", "kafka".to_owned()),
            ("TALLY_KAFKA_BROKERS", kafka.brokers.clone()),
            ("TALLY_KAFKA_NAMESPACE", kafka.namespace.clone()),
            ("TALLY_KAFKA_PARTITIONS", "4".to_owned()),
            ("TALLY_PAYMENT_URL", sandbox.clone()),
            ("TALLY_CARRIER_URL", sandbox.clone()),
            ("TALLY_NOTIFICATION_URL", sandbox.clone()),
            (
                "TALLY_CARRIER_WEBHOOK_SECRET",
                "whsec_processes_test".to_owned(),
            ),
        ];
        let http = reqwest::Client::new();
        let partner = Process::start(
            "sandbox",
            &dir,
            &[
                "sandbox".to_owned(),
                "--listen".to_owned(),
                format!("127.0.0.1:{sandbox_port}"),
                "--webhook-url".to_owned(),
                format!("{base}/v1/webhooks/carrier"),
                "--error-rate".to_owned(),
                "0.05".to_owned(),
                "--error-after-effect-rate".to_owned(),
                "0.05".to_owned(),
                "--webhook-duplicates".to_owned(),
                "2".to_owned(),
                "--seed".to_owned(),
                "7".to_owned(),
            ],
            &env[env.len() - 1..],
        );
        let mut api = Process::start("api", &dir, &serve("api", api_port), &env);
        wait_ready(&http, &base, &mut api).await;
        let relay_port = free_port();
        let mut relay = Process::start("relay-1", &dir, &serve("relay", relay_port), &env);
        wait_ready(&http, &format!("http://127.0.0.1:{relay_port}"), &mut relay).await;
        // Started second, it finds every lease taken and stands by.
        let standby_port = free_port();
        let mut standby = Process::start("relay-2", &dir, &serve("relay", standby_port), &env);
        let worker_ports = [free_port(), free_port()];
        let mut workers = [
            Process::start("worker-1", &dir, &serve("worker", worker_ports[0]), &env),
            Process::start("worker-2", &dir, &serve("worker", worker_ports[1]), &env),
        ];
        for (process, port) in workers.iter_mut().zip(worker_ports) {
            wait_ready(&http, &format!("http://127.0.0.1:{port}"), process).await;
        }
        wait_ready(
            &http,
            &format!("http://127.0.0.1:{standby_port}"),
            &mut standby,
        )
        .await;

        let issued =
            tally::admin::create_tenant(db.store.as_ref(), &SystemClock, "Kafka", &Scope::ALL)
                .await
                .expect("a tenant");
        let client = Client {
            http,
            base,
            key: issued.secret,
        };
        let product = json!({"name": "Tee", "variants": [{"sku": "TEE", "prices": {"USD": 2500}}]});
        assert_eq!(
            post_until_answered(&client, "/v1/products", "tee", &product)
                .await
                .0,
            201
        );
        let stock = json!({"sku": "TEE", "location": "wh", "delta": 10_000});
        assert_eq!(
            post_until_answered(&client, "/v1/inventory/adjustments", "stock", &stock)
                .await
                .0,
            200
        );
        Self {
            db,
            dir,
            env,
            sandbox,
            client,
            partner,
            api,
            relay,
            standby,
            workers,
        }
    }

    fn start_worker(&self, name: &str) -> Process {
        Process::start(name, &self.dir, &serve("worker", free_port()), &self.env)
    }

    /// Places [`ORDERS`] orders from many connections at once, calling `answered` with the
    /// count after each answer.
    async fn place_orders(&mut self, mut answered: impl FnMut(&mut Self, usize)) {
        let client = self.client.clone();
        let placed = futures::stream::iter(0..ORDERS)
            .map(|i| {
                let client = client.clone();
                async move {
                    let body = order_body(&format!("c{i}"), &[("TEE", 1)]);
                    post_until_answered(&client, "/v1/orders", &format!("o{i}"), &body).await
                }
            })
            .buffer_unordered(CONCURRENCY);
        futures::pin_mut!(placed);
        let mut count = 0;
        while let Some((status, body)) = placed.next().await {
            assert_eq!(status, 201, "placing an order: {body}");
            count += 1;
            answered(self, count);
        }
    }

    /// Every order completes, every process still runs, and every invariant holds.
    async fn assert_all_completed_and_consistent(mut self) {
        let orders = wait_until_settled(&self.client, ORDERS).await;
        wait_until_consumers_caught_up(&self.db.store).await;
        for process in [&mut self.api, &mut self.standby, &mut self.partner]
            .into_iter()
            .chain(self.workers.iter_mut())
        {
            process.assert_running();
        }
        let not_completed: Vec<&Value> = orders
            .values()
            .filter(|o| o["status"] != "completed")
            .collect();
        assert!(
            not_completed.is_empty(),
            "every order completes: {not_completed:?}; logs in {}",
            self.dir.display()
        );

        let effects: Vec<tally_sandbox::Effect> = self
            .client
            .http
            .get(format!("{}/sandbox/effects", self.sandbox))
            .send()
            .await
            .expect("GET /sandbox/effects")
            .json()
            .await
            .expect("effects");
        let report = tally::checks::all(self.db.store.as_ref(), Some(&effects))
            .await
            .expect("check");
        assert!(
            report.violations.is_empty(),
            "no violations: {:?}; logs in {}",
            report.violations,
            self.dir.display()
        );
        assert_eq!(report.partner_effects, Some(effects.len()));

        let ledger = Command::new(env!("CARGO_BIN_EXE_tally"))
            .args(["--database-url", &self.db.url, "ledger", "check"])
            .output()
            .expect("tally ledger check");
        assert!(
            ledger.status.success(),
            "tally ledger check passes: {}",
            String::from_utf8_lossy(&ledger.stdout)
        );
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn separate_processes_on_kafka_survive_killed_workers_and_relays() {
    let _alone = ONE_DEPLOYMENT_AT_A_TIME.lock().await;
    let mut deployment = Deployment::start().await;
    // The first worker dies a third of the way in and comes back after the group has
    // rebalanced onto the second.
    deployment
        .place_orders(|deployment, answered| {
            if answered == KILL_AFTER {
                deployment.workers[0].kill();
            }
            if answered == KILL_RELAY_AFTER {
                deployment.relay.kill();
            }
        })
        .await;
    tokio::time::sleep(DOWN_FOR).await;
    deployment.workers[0] = deployment.start_worker("worker-1-again");
    deployment.assert_all_completed_and_consistent().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_back_before_its_session_expires_leaves_no_partition_unread() {
    let _alone = ONE_DEPLOYMENT_AT_A_TIME.lock().await;
    let mut deployment = Deployment::start().await;
    deployment
        .place_orders(|deployment, answered| {
            if answered == RESTART_AFTER {
                deployment.workers[0].kill();
                deployment.workers[0] = deployment.start_worker("worker-1-again");
            }
        })
        .await;
    deployment.assert_all_completed_and_consistent().await;
}
