//! Store transactions under real concurrency, on every engine: each commit that returned is
//! there, each rollback, each transaction dropped half-way and each cancelled one left nothing,
//! however they interleave. On SQLite this is what group commit (many commands' transactions
//! in one SQLite transaction) must preserve.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tally_domain::clock::{Clock, SystemClock};
use tally_domain::ids::EventId;
use tally_testkit::{Engine, fresh_database};

tally_testkit::store_tests!(
    concurrent_transactions_keep_exactly_the_committed_ones,
    a_commit_is_visible_to_readers_when_it_returns,
);

const TRANSACTIONS: usize = 400;
const GROUP: &str = "tx-test";

/// How one transaction of the test ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Commit,
    Rollback,
    /// Dropped without commit or rollback, as an early `?` return does.
    Drop,
    /// Its future is dropped while the transaction is open, as cancelling its task does.
    Abort,
    /// Committed through a statement outside any command transaction.
    Offset,
}

fn end_of(i: usize) -> End {
    match i % 5 {
        0 => End::Rollback,
        1 => End::Drop,
        2 => End::Abort,
        3 => End::Offset,
        _ => End::Commit,
    }
}

/// Hundreds of tasks at once write an inbox row each and end their transactions in every way
/// there is; afterwards exactly the committed rows exist (asked one by one and all at once),
/// and statements outside transactions (consumer offsets) went through beside them.
async fn concurrent_transactions_keep_exactly_the_committed_ones(engine: Engine) {
    let db = fresh_database(engine).await;
    let store = Arc::clone(&db.store);
    let ids: Vec<EventId> = (0..TRANSACTIONS).map(|_| EventId::generate()).collect();
    let mut tasks = Vec::new();
    for (i, id) in ids.iter().copied().enumerate() {
        let store = Arc::clone(&store);
        let task = tokio::spawn(async move {
            let now = SystemClock.now();
            if end_of(i) == End::Offset {
                let partition = u32::try_from(i % 4).expect("small");
                let position = i64::try_from(i).expect("small");
                store
                    .commit_consumer_offset(GROUP, partition, position, now)
                    .await
                    .expect("offset");
                return;
            }
            if end_of(i) == End::Abort {
                // Dropping the future at the timeout is what cancelling its task does: the
                // transaction is open (or still queued for the writer) when it goes.
                let _ = tokio::time::timeout(Duration::from_millis(5), async {
                    let mut tx = store.begin().await.expect("begin");
                    tx.insert_inbox(GROUP, id, now).await.expect("insert");
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    tx.commit().await.expect("never reached");
                })
                .await;
                return;
            }
            let mut tx = store.begin().await.expect("begin");
            assert!(tx.insert_inbox(GROUP, id, now).await.expect("insert"));
            match end_of(i) {
                End::Commit => tx.commit().await.expect("commit"),
                End::Rollback => tx.rollback().await.expect("rollback"),
                End::Drop => drop(tx),
                End::Abort | End::Offset => unreachable!("handled above"),
            }
        });
        tasks.push(task);
    }
    for task in tasks {
        task.await.expect("task");
    }
    for (i, id) in ids.iter().enumerate() {
        let expected = end_of(i) == End::Commit;
        assert_eq!(
            store.inbox_contains(GROUP, *id).await.expect("read"),
            expected,
            "transaction {i} ended by {:?}",
            end_of(i)
        );
    }
    // The same in one look for the whole list, as a consumer asks for a batch of events:
    // repeats and events never applied among them; under another group none is held.
    let mut asked = ids.clone();
    asked.extend(ids.iter().take(7).copied());
    asked.extend((0..5).map(|_| EventId::generate()));
    let committed: HashSet<EventId> = (ids.iter().enumerate())
        .filter(|(i, _)| end_of(*i) == End::Commit)
        .map(|(_, id)| *id)
        .collect();
    let held = store.inbox_holds(GROUP, &asked).await.expect("read");
    assert_eq!(held, committed);
    let elsewhere = store.inbox_holds("another-group", &asked).await;
    assert!(elsewhere.expect("read").is_empty());
    for partition in 0..4_u32 {
        assert!(
            store
                .consumer_offset(GROUP, partition)
                .await
                .expect("offset")
                > 0
        );
    }
    // The writer is free again: one more transaction commits at once.
    let mut tx = tokio::time::timeout(Duration::from_secs(5), store.begin())
        .await
        .expect("the writer is not stuck")
        .expect("begin");
    let last = EventId::generate();
    tx.insert_inbox(GROUP, last, SystemClock.now())
        .await
        .expect("insert");
    tx.commit().await.expect("commit");
    assert!(store.inbox_contains(GROUP, last).await.expect("read"));
}

/// While other transactions keep the writer busy, every commit is visible through the store's
/// readers the moment it returns: a command never answers before its data is stored.
async fn a_commit_is_visible_to_readers_when_it_returns(engine: Engine) {
    let db = fresh_database(engine).await;
    let store = Arc::clone(&db.store);
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                for _ in 0..10 {
                    let id = EventId::generate();
                    let mut tx = store.begin().await.expect("begin");
                    tx.insert_inbox(GROUP, id, SystemClock.now())
                        .await
                        .expect("insert");
                    tx.commit().await.expect("commit");
                    assert!(
                        store.inbox_contains(GROUP, id).await.expect("read"),
                        "a returned commit is visible"
                    );
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
}
