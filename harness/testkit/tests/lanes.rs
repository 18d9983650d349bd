//! A consumer group's lanes on every engine: within a batch of one partition, different
//! partition keys are applied concurrently while each key's events are applied one at a time in log order, each
//! exactly once, and a group started again after its offsets moved applies nothing twice; the
//! same holds for effects that write nothing but their inbox row, which a batch records
//! together.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tally_dispatch::{Delivery, Dispatcher, EffectError, Handler};
use tally_domain::clock::SystemClock;
use tally_domain::ids::EventId;
use tally_store::LogEvent;
use tally_testkit::{Engine, spawn_app};
use tokio_util::sync::CancellationToken;

tally_testkit::store_tests!(
    keys_run_concurrently_and_each_key_in_order_once,
    effects_without_writes_are_recorded_once,
    a_batch_applies_a_repeated_event_once
);

/// More keys than the log has partitions, so some partition holds several.
const SKUS: usize = 16;
const ADJUSTMENTS_PER_SKU: usize = 15;
const GROUP: &str = "lanes-test";
/// How long the group may take to apply every event before the test fails.
const APPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// Records what it applies, in the order it applied it, and how many effects overlapped.
#[derive(Debug, Default)]
struct Recorder {
    /// Whether the effect writes nothing but its inbox row ([`Delivery::applied`]), like a
    /// notification, rather than committing a transaction of its own.
    without_writes: bool,
    applied: Mutex<Vec<LogEvent>>,
    /// Effects under way per log partition, and the most there ever were.
    in_flight: Mutex<BTreeMap<u32, (usize, usize)>>,
}

impl Recorder {
    fn enter(&self, partition: u32) {
        let mut in_flight = self.in_flight.lock().expect("recorder lock");
        let (now, most) = in_flight.entry(partition).or_default();
        *now += 1;
        *most = (*most).max(*now);
    }

    fn leave(&self, partition: u32) {
        let mut in_flight = self.in_flight.lock().expect("recorder lock");
        if let Some((now, _)) = in_flight.get_mut(&partition) {
            *now -= 1;
        }
    }

    /// The most effects that were ever under way at once within one partition.
    fn overlap_within_a_partition(&self) -> usize {
        let in_flight = self.in_flight.lock().expect("recorder lock");
        in_flight.values().map(|(_, most)| *most).max().unwrap_or(0)
    }
}

#[async_trait]
impl Handler for Recorder {
    fn group(&self) -> &'static str {
        GROUP
    }

    fn wants(&self, event_type: &str) -> bool {
        event_type == "tally.inventory.adjusted.v1"
    }

    async fn handle(&self, event: &LogEvent, delivery: &Delivery) -> Result<(), EffectError> {
        self.enter(event.partition);
        // A partner call's worth of waiting, so that lanes have the chance to overlap.
        tokio::time::sleep(Duration::from_millis(2)).await;
        let outcome = if self.without_writes {
            self.applied
                .lock()
                .expect("recorder lock")
                .push(event.clone());
            delivery.applied().await
        } else {
            self.apply_in_a_transaction(event, delivery).await
        };
        self.leave(event.partition);
        outcome
    }
}

impl Recorder {
    async fn apply_in_a_transaction(
        &self,
        event: &LogEvent,
        delivery: &Delivery,
    ) -> Result<(), EffectError> {
        match delivery.begin().await {
            Ok(Some(tx)) => {
                self.applied
                    .lock()
                    .expect("recorder lock")
                    .push(event.clone());
                delivery.finish(tx).await
            }
            Ok(None) => Ok(()),
            Err(error) => Err(error),
        }
    }
}

/// Effects that write nothing but their inbox row leave it to their batch, which records the
/// rows together: every event is applied once, in order per key, and is in the inbox after;
/// a restart, even from offsets rewound to the start, applies none of them again.
async fn effects_without_writes_are_recorded_once(engine: Engine) {
    let app = Arc::new(spawn_app(engine).await);
    let expected = adjust_many_skus(&app).await;
    let recorder = Arc::new(Recorder {
        without_writes: true,
        ..Recorder::default()
    });
    let ids = apply_each_once_in_order(&app, &recorder, expected).await;
    for id in &ids {
        assert!(
            app.store().inbox_contains(GROUP, *id).await.expect("inbox"),
            "event {id} is in the group's inbox"
        );
    }
    rewind_offsets(&app).await;
    assert_applies_nothing(
        &app,
        "nothing is applied twice after the batch recorded its effects",
    )
    .await;
}

/// A batch that carries one event twice, as Kafka can after a re-publish or a rebalance,
/// applies it once, even when its effect leaves its inbox row to the end of the batch.
async fn a_batch_applies_a_repeated_event_once(engine: Engine) {
    let app = spawn_app(engine).await;
    app.create_product("Repeated", &[("REPEATED-1", 10)]).await;
    let response = app.adjust("repeated-1", "REPEATED-1", "east", 1).await;
    assert_eq!(response.status(), 200, "adjustment");
    // On PostgreSQL the relay gives the event its place in the log a moment after the commit.
    let deadline = tokio::time::Instant::now() + APPLY_TIMEOUT;
    let event = loop {
        let logged = app
            .store()
            .read_log(None, 0, u32::MAX)
            .await
            .expect("read the log")
            .into_iter()
            .find(|event| event.event_type == "tally.inventory.adjusted.v1");
        if let Some(event) = logged {
            break event;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the adjustment's event reached the log in time"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let recorder = Arc::new(Recorder {
        without_writes: true,
        ..Recorder::default()
    });
    let dispatcher = Dispatcher::new(
        Arc::clone(app.store()),
        Arc::new(SystemClock),
        Arc::clone(&recorder) as Arc<dyn Handler>,
        app.logged(),
    );
    dispatcher
        .apply_all(
            vec![event.clone(), event.clone()],
            &CancellationToken::new(),
        )
        .await
        .expect("apply the batch");
    assert_eq!(
        recorder.applied.lock().expect("recorder lock").len(),
        1,
        "the repeated event is applied once"
    );
    assert!(
        app.store()
            .inbox_contains(GROUP, event.id)
            .await
            .expect("inbox"),
        "the event is in the group's inbox"
    );
}

/// Runs the group until it applied `expected` events, and checks that it applied each once,
/// each key's in log order; the ids of the events applied.
async fn apply_each_once_in_order(
    app: &tally_testkit::TestApp,
    recorder: &Arc<Recorder>,
    expected: usize,
) -> HashSet<EventId> {
    run_until(app, Arc::clone(recorder), expected).await;
    let applied = recorder.applied.lock().expect("recorder lock").clone();
    assert_eq!(applied.len(), expected, "every adjustment applied");
    let ids: HashSet<EventId> = applied.iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), expected, "no event applied twice");
    assert_each_key_in_order(&applied);
    ids
}

/// Stock adjustments of many SKUs (the partition key is the SKU), each SKU's one after
/// another; how many events they logged.
async fn adjust_many_skus(app: &Arc<tally_testkit::TestApp>) -> usize {
    let skus: Vec<String> = (0..SKUS).map(|i| format!("LANE-{i}")).collect();
    let variants: Vec<(&str, i64)> = skus.iter().map(|s| (s.as_str(), 10)).collect();
    app.create_product("Lanes", &variants).await;
    let writers = skus.iter().cloned().map(|sku| {
        let app = Arc::clone(app);
        tokio::spawn(async move {
            for i in 0..ADJUSTMENTS_PER_SKU {
                let response = app.adjust(&format!("{sku}-{i}"), &sku, "east", 1).await;
                assert_eq!(response.status(), 200, "adjustment {sku}/{i}");
            }
        })
    });
    for writer in futures::future::join_all(writers).await {
        writer.expect("writer task");
    }
    SKUS * ADJUSTMENTS_PER_SKU
}

/// Moves every partition's offset of the group back to the start, as a crash can leave them
/// anywhere behind what was applied.
async fn rewind_offsets(app: &tally_testkit::TestApp) {
    let store = app.store();
    for partition in 0..store.log_partitions() {
        store
            .commit_consumer_offset(GROUP, partition, 0, chrono::Utc::now())
            .await
            .expect("rewind");
    }
}

/// Many SKUs' stock adjustments (the partition key is the SKU) are applied by a recording
/// group: every event once, each SKU's in log order (its on-hand chain unbroken), several at
/// once; then a second run of the group over the same store applies nothing.
async fn keys_run_concurrently_and_each_key_in_order_once(engine: Engine) {
    let app = Arc::new(spawn_app(engine).await);
    let expected = adjust_many_skus(&app).await;

    let recorder = Arc::new(Recorder::default());
    apply_each_once_in_order(&app, &recorder, expected).await;
    let overlapped = recorder.overlap_within_a_partition();
    assert!(
        overlapped > 1,
        "keys of one partition ran concurrently: {overlapped} at most"
    );

    // The group again, as after a restart: its offsets and inbox say everything is done.
    assert_applies_nothing(&app, "nothing is applied twice after a restart").await;

    // Offsets are stored only now and then, so a crash can leave them anywhere behind what
    // was applied: rewound to the start, the group reads everything again and applies none of
    // it, because the inbox has it.
    rewind_offsets(&app).await;
    let store = app.store();
    assert_applies_nothing(
        &app,
        "nothing is applied twice when the offsets were behind",
    )
    .await;
    for partition in 0..store.log_partitions() {
        let head = store
            .read_log(Some(partition), 0, u32::MAX)
            .await
            .expect("read")
            .last()
            .map_or(0, |event| event.position);
        assert_eq!(
            store
                .consumer_offset(GROUP, partition)
                .await
                .expect("offset"),
            head,
            "partition {partition}: the offset caught up once the partition ran dry"
        );
    }
}

/// Runs the group once more over the same store and checks that it applied nothing.
async fn assert_applies_nothing(app: &tally_testkit::TestApp, why: &str) {
    let recorder = Arc::new(Recorder::default());
    // `run_until` stops the group only after its partition loops had time to read everything.
    run_until(app, Arc::clone(&recorder), 0).await;
    assert!(
        recorder.applied.lock().expect("recorder lock").is_empty(),
        "{why}"
    );
}

/// Runs the group until it applied `count` events (and a little longer for `0`).
async fn run_until(app: &tally_testkit::TestApp, recorder: Arc<Recorder>, count: usize) {
    let dispatcher = Dispatcher::new(
        Arc::clone(app.store()),
        Arc::new(SystemClock),
        Arc::clone(&recorder) as Arc<dyn Handler>,
        app.logged(),
    );
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(dispatcher.run(shutdown.clone()));
    let deadline = tokio::time::Instant::now() + APPLY_TIMEOUT;
    while recorder.applied.lock().expect("recorder lock").len() < count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the group did not apply {count} events in time"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The partition loops move the group's offsets past their last batch: wait until the
    // group has nothing left to read, then stop it.
    let group = Handler::group(recorder.as_ref());
    while app.store().log_backlog(group).await.expect("the backlog") > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the group's offsets did not reach the end of the log in time"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    running.await.expect("dispatcher task");
}

/// Per SKU, each adjustment starts where the one applied before it ended.
fn assert_each_key_in_order(applied: &[LogEvent]) {
    let mut on_hand: BTreeMap<String, i64> = BTreeMap::new();
    for event in applied {
        let data = event.data.value().expect("event data is JSON");
        let sku = data["sku"].as_str().expect("sku").to_owned();
        assert_eq!(
            event.partition_key, sku,
            "inventory events are keyed by SKU"
        );
        let before = data["on_hand_before"].as_i64().expect("before");
        let after = data["on_hand_after"].as_i64().expect("after");
        let current = on_hand.entry(sku.clone()).or_insert(0);
        assert_eq!(*current, before, "{sku}: applied out of order");
        *current = after;
    }
}
