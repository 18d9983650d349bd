//! The embedded log on every engine: gap-free under racing writers, ordered per partition key,
//! and resumable from a consumer group's committed offsets.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tally_domain::clock::{Clock, SystemClock};
use tally_domain::ids::{EventId, TenantId};
use tally_store::{LogEvent, NewEvent, Store};
use tally_testkit::{Engine, TestApp, spawn_app};

tally_testkit::store_tests!(
    racing_writers_never_make_a_reader_skip_or_reorder,
    a_consumer_group_resumes_after_its_committed_offset,
);

const WRITERS: usize = 16;
const ADJUSTMENTS_PER_WRITER: usize = 25;
const SKUS: [&str; 4] = ["A", "B", "C", "D"];
const LOCATIONS: [&str; 3] = ["east", "west", "north"];
/// How long the reader may take to see every event before the test fails.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Many writers adjust stock concurrently while a consumer reads the log: the consumer sees
/// every event exactly once, and per partition key (SKU) in commit order, which shows as an
/// unbroken chain of `on_hand_before` → `on_hand_after` per SKU and location.
async fn racing_writers_never_make_a_reader_skip_or_reorder(engine: Engine) {
    let app = Arc::new(spawn_app(engine).await);
    let skus: Vec<(&str, i64)> = SKUS.iter().map(|s| (*s, 100)).collect();
    app.create_product("Racing", &skus).await;
    let expected = 1 + WRITERS * ADJUSTMENTS_PER_WRITER;

    let store = Arc::clone(app.store());
    let logged = app.logged();
    let reader = tokio::spawn(async move {
        let mut subscription = Cursor::open(store, "race-reader").await;
        let mut seen: Vec<LogEvent> = Vec::new();
        let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
        while seen.len() < expected && tokio::time::Instant::now() < deadline {
            let batch = subscription.poll().await;
            if batch.is_empty() {
                // Woken when events enter the log; the timeout only bounds a wake-up missed
                // between the read and the wait.
                let _ = tokio::time::timeout(Duration::from_millis(200), logged.notified()).await;
            }
            seen.extend(batch);
        }
        seen
    });

    let writers = (0..WRITERS).map(|w| {
        let app = Arc::clone(&app);
        tokio::spawn(async move {
            for i in 0..ADJUSTMENTS_PER_WRITER {
                let sku = SKUS[(w + i) % SKUS.len()];
                let location = LOCATIONS[(w * 7 + i) % LOCATIONS.len()];
                let delta = 1 + i64::try_from((w + i) % 3).expect("small");
                let response = app.adjust(&format!("w{w}-{i}"), sku, location, delta).await;
                assert_eq!(response.status(), 200, "adjustment {w}/{i}");
            }
        })
    });
    for writer in futures::future::join_all(writers).await {
        writer.expect("writer task");
    }
    let seen = reader.await.expect("reader task");
    assert_eq!(
        seen.len(),
        expected,
        "the reader saw every event, and no more"
    );
    let ids: HashSet<EventId> = seen.iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), expected, "no event was delivered twice");
    assert_chains_unbroken(&seen);
}

/// Per SKU and location, each adjustment starts where the previous one in log order ended.
fn assert_chains_unbroken(seen: &[LogEvent]) {
    let mut on_hand: BTreeMap<(String, String), i64> = BTreeMap::new();
    let mut last_position: BTreeMap<u32, i64> = BTreeMap::new();
    for event in seen {
        let previous = last_position.insert(event.partition, event.position);
        assert!(
            previous.is_none_or(|p| p < event.position),
            "positions rise within a partition"
        );
        if event.event_type != "tally.inventory.adjusted.v1" {
            continue;
        }
        let data = event.data.value().expect("event data is JSON");
        let key = (
            data["sku"].as_str().expect("sku").to_owned(),
            data["location"].as_str().expect("location").to_owned(),
        );
        assert_eq!(
            event.partition_key, key.0,
            "inventory events are keyed by SKU"
        );
        let before = data["on_hand_before"].as_i64().expect("before");
        let after = data["on_hand_after"].as_i64().expect("after");
        let current = on_hand.entry(key.clone()).or_insert(0);
        assert_eq!(
            *current, before,
            "{key:?}: an event was skipped or reordered"
        );
        *current = after;
    }
}

/// A consumer that commits its offset and is replaced by a new one (a restart) continues right
/// after the last committed event: nothing is skipped, nothing committed is read again.
async fn a_consumer_group_resumes_after_its_committed_offset(engine: Engine) {
    let app = spawn_app(engine).await;
    app.create_product("Tee", &[("TEE-M", 1000)]).await;
    // Stock adjustments: events no consumer of the server reacts to, so the log holds only
    // what this test wrote.
    for i in 0..5 {
        let response = app.adjust(&format!("a{i}"), "TEE-M", "wh", 1).await;
        assert_eq!(response.status(), 200);
    }
    let first = drain(&app, "billing", 6).await;
    assert_eq!(first.len(), 6, "one product event and five adjustments");

    for i in 5..8 {
        let response = app.adjust(&format!("a{i}"), "TEE-M", "wh", 1).await;
        assert_eq!(response.status(), 200);
    }
    let second = drain(&app, "billing", 3).await;
    assert_eq!(
        second.len(),
        3,
        "only the events after the committed offsets"
    );
    let first_ids: HashSet<EventId> = first.iter().map(|e| e.id).collect();
    assert!(second.iter().all(|e| !first_ids.contains(&e.id)));
    let fresh = drain(&app, "another-group", 9).await;
    assert_eq!(
        fresh.len(),
        9,
        "another group reads the whole log independently"
    );
    app.stop().await;
}

/// A consumer group member's cursor over every partition of the log, as the dispatcher keeps
/// one: it starts after the group's committed offsets and commits where it read to.
struct Cursor {
    store: Arc<dyn Store>,
    group: &'static str,
    cursors: Vec<(u32, i64)>,
}

impl Cursor {
    async fn open(store: Arc<dyn Store>, group: &'static str) -> Self {
        let mut cursors = Vec::new();
        for partition in 0..store.log_partitions() {
            let offset = store
                .consumer_offset(group, partition)
                .await
                .expect("offset");
            cursors.push((partition, offset));
        }
        Self {
            store,
            group,
            cursors,
        }
    }

    /// The next events of every partition, each partition's in position order.
    async fn poll(&mut self) -> Vec<LogEvent> {
        let mut batch = Vec::new();
        for (partition, cursor) in &mut self.cursors {
            let events = self
                .store
                .read_log(Some(*partition), *cursor, 500)
                .await
                .expect("read the log");
            if let Some(last) = events.last() {
                assert!(last.position > *cursor, "the log went backwards");
                *cursor = last.position;
            }
            batch.extend(events);
        }
        batch
    }

    async fn commit(&self) {
        for (partition, position) in &self.cursors {
            self.store
                .commit_consumer_offset(self.group, *partition, *position, SystemClock.now())
                .await
                .expect("commit");
        }
    }
}

/// Opens `group`, reads until `count` events arrived (woken as events enter the log), reads
/// once more (a duplicate would show there), commits, and closes.
async fn drain(app: &TestApp, group: &'static str, count: usize) -> Vec<LogEvent> {
    let mut cursor = Cursor::open(Arc::clone(app.store()), group).await;
    let logged = app.logged();
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
    while events.len() < count && tokio::time::Instant::now() < deadline {
        let batch = cursor.poll().await;
        if batch.is_empty() {
            let _ = tokio::time::timeout(Duration::from_millis(200), logged.notified()).await;
        }
        events.extend(batch);
    }
    events.extend(cursor.poll().await);
    cursor.commit().await;
    events
}

/// On PostgreSQL, where commands commit concurrently, an event inserted first but committed
/// last is not skipped by a reader that already read past a later-inserted event: it enters
/// the log at a later position.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_late_commit_enters_the_log_after_what_was_read() {
    let db = tally_testkit::fresh_database(Engine::Postgres).await;
    let store = Arc::clone(&db.store);
    let tenant = TenantId::generate();
    let event = |key: &str| NewEvent {
        id: EventId::generate(),
        tenant_id: tenant,
        event_type: "tally.test.v1",
        source: "/tests".into(),
        subject: key.into(),
        partition_key: key.into(),
        partition: 0,
        time: SystemClock.now(),
        data: json!({}),
        correlation_id: None,
        causation_id: None,
        traceparent: None,
    };
    let mut early = store.begin().await.expect("begin");
    let early_event = event("early");
    early
        .append_events(std::slice::from_ref(&early_event))
        .await
        .expect("append");

    let mut late = store.begin().await.expect("begin");
    let late_event = event("late");
    late.append_events(std::slice::from_ref(&late_event))
        .await
        .expect("append");
    late.commit().await.expect("commit");

    assert_eq!(store.sequence_outbox(100).await.expect("relay"), 1);
    let read = store.read_log(None, 0, 100).await.expect("read");
    assert_eq!(
        read.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![late_event.id]
    );

    early.commit().await.expect("commit");
    assert_eq!(store.sequence_outbox(100).await.expect("relay"), 1);
    let after = read[0].position;
    let next = store.read_log(None, after, 100).await.expect("read");
    assert_eq!(
        next.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![early_event.id]
    );
    assert!(next[0].position > after);
}
