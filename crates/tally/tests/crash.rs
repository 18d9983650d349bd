//! A server process killed with SIGKILL in the middle of order intake loses nothing and
//! duplicates nothing: every order either committed whole (row, outbox event, idempotency
//! record) or not at all, and retrying every key after a restart yields exactly one order each.

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;
use tally_api::auth::Scope;
use tally_domain::clock::SystemClock;
use tally_testkit::{Engine, order_body};

tally_testkit::store_tests!(killed_mid_intake_then_retried_places_each_order_once);

const ORDERS: usize = 300;
const CONCURRENCY: usize = 16;
/// Orders answered before the process is killed: far enough in that it is busy.
const KILL_AFTER: usize = 100;

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").port()
}

/// A server process that is killed when the test ends, however it ends, so that a failed
/// assertion never leaves a server running.
struct Server(Child);

impl Server {
    fn kill(&mut self) -> std::io::Result<()> {
        self.0.kill()
    }

    fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.0.wait()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_server(url: &str, port: u16) -> Server {
    Server(
        Command::new(env!("CARGO_BIN_EXE_tally"))
            .args([
                "--database-url",
                url,
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .env("TALLY_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tally serve"),
    )
}

async fn wait_ready(client: &reqwest::Client, base: &str) {
    for _ in 0..100 {
        if let Ok(response) = client.get(format!("{base}/readyz")).send().await
            && response.status() == 200
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the server did not become ready");
}

/// Places order `i` under key `crash-{i}`, retrying 409s and connection errors, and returns
/// the order id and whether the response was a replay; `None` if the server went away.
async fn place(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    i: usize,
    retry: bool,
) -> Option<(String, bool)> {
    loop {
        let sent = client
            .post(format!("{base}/v1/orders"))
            .bearer_auth(key)
            .header("Idempotency-Key", format!("crash-{i}"))
            .json(&order_body(&format!("c{i}"), &[("TEE-M", 1)]))
            .send()
            .await;
        match sent {
            Ok(response) if response.status() == 201 => {
                let replayed = response.headers().contains_key("idempotent-replayed");
                let body: Value = response.json().await.ok()?;
                return Some((body["id"].as_str()?.to_owned(), replayed));
            }
            Ok(response) if response.status() == 409 => {}
            Ok(response) => panic!("order {i}: unexpected status {}", response.status()),
            Err(_) if !retry => return None,
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn killed_mid_intake_then_retried_places_each_order_once(engine: Engine) {
    let db = tally_testkit::fresh_database(engine).await;
    let issued = tally::admin::create_tenant(db.store.as_ref(), &SystemClock, "Crash", &Scope::ALL)
        .await
        .expect("tenant");
    let key = issued.secret;
    let client = reqwest::Client::new();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut server = start_server(&db.url, port);
    wait_ready(&client, &base).await;
    let created = client
        .post(format!("{base}/v1/products"))
        .bearer_auth(&key)
        .header("Idempotency-Key", "tee")
        .json(&serde_json::json!({"name": "Tee", "variants": [{"sku": "TEE-M", "prices": {"USD": 1999}}]}))
        .send()
        .await
        .expect("POST product");
    assert_eq!(created.status(), 201);

    // Load it, and kill it with SIGKILL while requests are in flight.
    let answered = Arc::new(AtomicUsize::new(0));
    let mut killed = false;
    let first_round: Vec<Option<(String, bool)>> = futures::stream::iter(0..ORDERS)
        .map(|i| {
            let (client, base, key, answered) = (&client, &base, &key, Arc::clone(&answered));
            async move {
                let placed = place(client, base, key, i, false).await;
                answered.fetch_add(1, Ordering::SeqCst);
                placed
            }
        })
        .buffered(CONCURRENCY)
        .inspect(|_| {
            if !killed && answered.load(Ordering::SeqCst) >= KILL_AFTER {
                server.kill().expect("SIGKILL the server");
                killed = true;
            }
        })
        .collect()
        .await;
    assert!(killed, "the server was killed mid-load");
    let _ = server.wait();
    let placed_before = first_round.iter().flatten().count();
    assert!(
        placed_before >= KILL_AFTER - CONCURRENCY,
        "the load was under way when killed"
    );
    assert!(placed_before < ORDERS, "the kill interrupted the load");

    // Restart and retry every key.
    let mut server = start_server(&db.url, port);
    wait_ready(&client, &base).await;
    let mut ids = HashSet::new();
    for i in 0..ORDERS {
        let (id, replayed) = place(&client, &base, &key, i, true).await.expect("placed");
        if let Some(Some((first_id, _))) = first_round.get(i) {
            assert_eq!(
                &id, first_id,
                "order {i} answered before the kill is replayed, not placed again"
            );
            assert!(replayed);
        }
        assert!(ids.insert(id), "order {i} has its own id");
    }
    assert_eq!(ids.len(), ORDERS);
    assert_outbox_matches_orders(&db, ORDERS).await;
    server.kill().expect("stop the server");
    let _ = server.wait();
}

/// Every order has exactly one `tally.order.placed.v1` event in the log.
async fn assert_outbox_matches_orders(db: &tally_testkit::TestDb, orders: usize) {
    for _ in 0..100 {
        db.store.sequence_outbox(10_000).await.expect("relay");
        if db.store.outbox_pending().await.expect("lag") == 0 {
            break;
        }
    }
    let events = db
        .store
        .read_log(None, 0, 10_000)
        .await
        .expect("read the log");
    let placed: Vec<_> = events
        .iter()
        .filter(|e| e.event_type == "tally.order.placed.v1")
        .collect();
    assert_eq!(placed.len(), orders, "one placed event per order");
    let subjects: HashSet<&str> = placed.iter().map(|e| e.subject.as_str()).collect();
    assert_eq!(subjects.len(), orders, "no order has two placed events");
}
