//! Partition leases on every engine: exclusive while held, free again when released, progress
//! committed through them, and members counted so that relays can share the partitions.

use tally_domain::clock::{Clock, SystemClock};
use tally_testkit::Engine;

tally_testkit::store_tests!(
    a_lease_is_exclusive_until_released,
    members_are_counted_while_they_hold_their_membership,
);

/// Only one holder per group and partition at a time; another group or partition is
/// independent; a released lease can be taken again; progress commits through the lease.
async fn a_lease_is_exclusive_until_released(engine: Engine) {
    let db = tally_testkit::fresh_database(engine).await;
    let store = &db.store;
    let mut first = store
        .try_lease("relay.test", 3)
        .await
        .expect("store")
        .expect("a free lease is taken");
    assert!(
        store
            .try_lease("relay.test", 3)
            .await
            .expect("store")
            .is_none(),
        "a held lease is refused"
    );
    let other_partition = store.try_lease("relay.test", 4).await.expect("store");
    let other_group = store.try_lease("other", 3).await.expect("store");
    assert!(other_partition.is_some() && other_group.is_some());

    first.confirm().await.expect("a held lease confirms");
    first
        .commit_offset(42, SystemClock.now())
        .await
        .expect("commit through the lease");
    assert_eq!(
        store
            .consumer_offset("relay.test", 3)
            .await
            .expect("offset"),
        42
    );
    first.release().await.expect("release");
    let again = store.try_lease("relay.test", 3).await.expect("store");
    assert!(again.is_some(), "a released lease is free");
}

/// Each membership counts while held, in its own database only; dropping one (its process
/// died) stops it counting.
async fn members_are_counted_while_they_hold_their_membership(engine: Engine) {
    let db = tally_testkit::fresh_database(engine).await;
    let store = &db.store;
    let neighbour = tally_testkit::fresh_database(engine).await;
    let _next_door = neighbour.store.join("relays").await.expect("join");
    assert_eq!(store.members("relays").await.expect("count"), 0);
    let one = store.join("relays").await.expect("join");
    let two = store.join("relays").await.expect("join");
    let elsewhere = store.join("workers").await.expect("join");
    assert_eq!(store.members("relays").await.expect("count"), 2);
    one.release().await.expect("release");
    drop(two);
    // A dropped PostgreSQL connection ends its session; the server notices within moments.
    let mut count = u32::MAX;
    for _ in 0..50 {
        count = store.members("relays").await.expect("count");
        if count == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(count, 0, "released and dropped members no longer count");
    assert_eq!(store.members("workers").await.expect("count"), 1);
    drop(elsewhere);
}
