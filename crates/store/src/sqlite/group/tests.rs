//! Group commit's guarantees, each pinned by holding the writer, a flush or a reader at the
//! moment it matters.

use std::time::Duration;

use std::path::Path;

use super::super::sql;
use super::*;

/// A writer over a fresh file in WAL mode with a parent and a child table, foreign keys
/// enforced.
fn writer(dir: &tempfile::TempDir) -> Writer {
    let connection = Connection::open(dir.path().join("group.db")).expect("open");
    connection
        .execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; \
             CREATE TABLE parent (id INTEGER PRIMARY KEY); \
             CREATE TABLE child (id INTEGER PRIMARY KEY, parent INTEGER NOT NULL REFERENCES parent (id))",
        )
        .expect("schema");
    let durability = Durability::open(&connection).expect("open the log");
    Writer::new(connection, Arc::new(durability))
}

fn durability(writer: &Writer) -> Arc<Durability> {
    Arc::clone(
        &writer
            .group
            .try_lock()
            .expect("the writer is free")
            .durability,
    )
}

/// The parents a reader begun through [`Durability::readable`] sees.
async fn parents_read(path: &Path, durability: &Durability) -> Result<i64, StoreError> {
    let visible = durability.readable().await?;
    let reader = Connection::open(path).expect("open a reader");
    begin_snapshot(&reader)?;
    drop(visible);
    sql::query("SELECT count(*) FROM parent").fetch_scalar(&reader)
}

/// Waits until the group holding parent 1 ran its `COMMIT`, as a connection that does not
/// wait for flushes sees.
async fn wait_for_commit(path: &Path) {
    let unguarded = Connection::open(path).expect("open");
    for _ in 0..500 {
        let seen: i64 = sql::query("SELECT count(*) FROM parent")
            .fetch_scalar(&unguarded)
            .expect("read");
        if seen == 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("the group's COMMIT did not reach the log");
}

/// A group's `COMMIT` reaches the log before its flush, but neither its members nor any
/// reader that begins its snapshot meanwhile learns of it until the log is flushed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_sees_a_group_before_its_flush() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("group.db");
    let writer = writer(&dir);
    let durability = durability(&writer);
    let held = durability.flushes.write().await;
    let member = member_with_parent(&writer).await;
    let committed = tokio::spawn(member.commit());
    wait_for_commit(&path).await;
    let reading = tokio::spawn({
        let (path, durability) = (path.clone(), Arc::clone(&durability));
        async move { parents_read(&path, &durability).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!committed.is_finished(), "the member waits for the flush");
    assert!(!reading.is_finished(), "the reader waits for the flush");
    drop(held);
    committed.await.expect("task").expect("commit");
    let read = reading.await.expect("task").expect("read");
    assert_eq!(read, 1, "once flushed, the reader sees the group");
}

/// A member that begins the next group while the group before it is still being flushed
/// reads that group's writes on the writer; when it rolls back, its answer rests on them,
/// so the rollback returns only once they are flushed, and fails if they are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_waits_for_the_flush_of_what_it_read() {
    for flushed in [true, false] {
        let dir = tempfile::tempdir().expect("dir");
        let writer = writer(&dir);
        let durability = durability(&writer);
        let held = durability.flushes.write().await;
        let first = member_with_parent(&writer).await;
        let committed = tokio::spawn(first.commit());
        wait_for_commit(&dir.path().join("group.db")).await;
        let second = writer.begin().await.expect("begin the next group");
        assert_eq!(parents(&second), 1, "the group before it is committed");
        let rolled_back = tokio::spawn(second.rollback());
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !rolled_back.is_finished(),
            "the rollback waits for the flush of what it read"
        );
        if !flushed {
            durability
                .refuse
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        drop(held);
        let committed = committed.await.expect("task");
        let rolled_back = rolled_back.await.expect("task");
        if flushed {
            committed.expect("commit");
            rolled_back.expect("rollback");
        } else {
            assert_commit_failed(&committed, "the group's commit fails");
            assert_commit_failed(&rolled_back, "the member that read it fails too");
        }
    }
}

/// When the log cannot be flushed, the group's members fail and the store stops: no
/// reader and no member runs until it is opened again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_flush_stops_the_store() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("group.db");
    let writer = writer(&dir);
    let durability = durability(&writer);
    durability
        .refuse
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let member = member_with_parent(&writer).await;
    let committed = member.commit().await;
    assert!(
        matches!(committed, Err(StoreError::CommitFailed(_))),
        "{committed:?}"
    );
    let begun = writer.begin().await.map(|_| ());
    assert!(
        matches!(begun, Err(StoreError::CommitFailed(_))),
        "{begun:?}"
    );
    let read = parents_read(&path, &durability).await;
    assert!(matches!(read, Err(StoreError::CommitFailed(_))), "{read:?}");
}

fn parents(member: &Member) -> i64 {
    sql::query("SELECT count(*) FROM parent")
        .fetch_scalar(member.connection().expect("connection"))
        .expect("read")
}

fn count(member: &Member) -> i64 {
    sql::query("SELECT count(*) FROM child")
        .fetch_scalar(member.connection().expect("connection"))
        .expect("read")
}

/// A member that inserted parent 1.
async fn member_with_parent(writer: &Writer) -> Member {
    let member = writer.begin().await.expect("begin");
    sql::query("INSERT INTO parent (id) VALUES (1)")
        .execute(member.connection().expect("connection"))
        .expect("insert");
    member
}

/// A member whose write breaks a foreign key checked only at commit: its group's COMMIT
/// fails.
async fn member_whose_group_fails(writer: &Writer) -> Member {
    let member = writer.begin().await.expect("begin");
    member
        .connection()
        .expect("connection")
        .execute_batch(
            "PRAGMA defer_foreign_keys = ON; INSERT INTO child (id, parent) VALUES (1, 99)",
        )
        .expect("insert");
    member
}

/// Lets `second` (spawned, about to queue for the writer) join `first`'s group, commits
/// `first`, and checks that the group's commit fails both: `first`'s commit and `second`'s
/// rollback.
async fn assert_both_fail(first: Member, second: tokio::task::JoinHandle<Result<(), StoreError>>) {
    tokio::time::sleep(Duration::from_millis(100)).await;
    let committed = first.commit().await;
    assert_commit_failed(&committed, "the group's commit fails");
    let rolled_back = second.await.expect("task");
    assert_commit_failed(&rolled_back, "the member that read it fails too");
}

fn assert_commit_failed(outcome: &Result<(), StoreError>, what: &str) {
    assert!(
        matches!(outcome, Err(StoreError::CommitFailed(_))),
        "{what}: {outcome:?}"
    );
}

/// A member that rolls back after reading the uncommitted write of a member before it in
/// its group fails when the group's commit fails, as that member's commit does: an answer
/// derived from writes that never became durable must not reach a client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_group_fails_the_members_that_read_it() {
    let dir = tempfile::tempdir().expect("dir");
    let writer = writer(&dir);
    let first = member_whose_group_fails(&writer).await;
    let second = tokio::spawn({
        let writer = writer.clone();
        async move {
            let second = writer.begin().await.expect("begin");
            assert_eq!(
                count(&second),
                1,
                "the member before it in the group is visible"
            );
            second.rollback().await
        }
    });
    assert_both_fail(first, second).await;
    // Nothing of the group is stored, and the writer works again.
    let third = writer.begin().await.expect("begin");
    assert_eq!(count(&third), 0);
    third.commit().await.expect("commit");
}

/// When SQLite itself ends the group's transaction (here `INSERT OR ROLLBACK`; a full disk or
/// an I/O error does the same), the member that hit it can run nothing more outside the
/// group, its rollback fails with the group, the member before it fails too, and nothing is
/// stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_sqlite_ended_fails_its_whole_group() {
    let dir = tempfile::tempdir().expect("dir");
    let writer = writer(&dir);
    let first = member_with_parent(&writer).await;
    let second = tokio::spawn({
        let writer = writer.clone();
        async move {
            let second = writer.begin().await.expect("begin");
            let conflict = sql::query("INSERT OR ROLLBACK INTO parent (id) VALUES (1)")
                .execute(second.connection().expect("connection"));
            assert!(conflict.is_err(), "the duplicate key is refused");
            let after = second.connection().map(|_| ());
            assert!(
                matches!(after, Err(StoreError::CommitFailed(_))),
                "no statement runs outside the group: {after:?}"
            );
            second.rollback().await
        }
    });
    assert_both_fail(first, second).await;
    let third = writer.begin().await.expect("begin");
    let parents = parents(&third);
    assert_eq!(parents, 0, "nothing of the group is stored");
    third.commit().await.expect("commit");
}

/// A job inserting parent `id`, then keeping it, undoing it or failing.
fn insert_parent(id: i64, end: Result<bool, ()>) -> Job {
    Box::new(move |connection| {
        sql::query("INSERT INTO parent (id) VALUES (?)")
            .bind(id)
            .execute(connection)?;
        end.map_err(|()| StoreError::Corrupt("the job fails".into()))
    })
}

/// Hundreds of queued jobs, and members beside them, all at once: each job's call answers
/// what the job answered, and exactly the rows of the jobs that kept theirs and of the
/// members that committed are stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_jobs_keep_exactly_what_they_keep() {
    let dir = tempfile::tempdir().expect("dir");
    let writer = writer(&dir);
    let mut tasks = tokio::task::JoinSet::new();
    for id in 0..400_i64 {
        let writer = writer.clone();
        tasks.spawn(async move {
            let (answer, kept) = match id % 4 {
                0 => {
                    let member = writer.begin().await.expect("begin");
                    sql::query("INSERT INTO parent (id) VALUES (?)")
                        .bind(id)
                        .execute(member.connection().expect("connection"))
                        .expect("insert");
                    member.commit().await.expect("commit");
                    (Ok(true), true)
                }
                1 => (writer.run(insert_parent(id, Ok(true))).await, true),
                2 => (writer.run(insert_parent(id, Ok(false))).await, false),
                _ => (writer.run(insert_parent(id, Err(()))).await, false),
            };
            match id % 4 {
                3 => assert!(matches!(answer, Err(StoreError::Corrupt(_))), "{answer:?}"),
                _ => assert_eq!(answer.expect("run"), kept, "job {id}"),
            }
            (id, kept)
        });
    }
    let mut expected: Vec<i64> = tasks
        .join_all()
        .await
        .into_iter()
        .filter_map(|(id, kept)| kept.then_some(id))
        .collect();
    expected.sort_unstable();
    let member = writer.begin().await.expect("begin");
    let stored: Vec<i64> = sql::query("SELECT id FROM parent ORDER BY id")
        .fetch_all_scalar(member.connection().expect("connection"))
        .expect("read");
    assert_eq!(stored, expected);
    member.commit().await.expect("commit");
}

/// Queued jobs in a group whose commit fails fail too: the one that kept its writes, and
/// the one that undid them after reading what the member before it wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_jobs_fail_with_their_group() {
    let dir = tempfile::tempdir().expect("dir");
    let writer = writer(&dir);
    let first = member_whose_group_fails(&writer).await;
    let kept = tokio::spawn({
        let writer = writer.clone();
        async move { writer.run(insert_parent(1, Ok(true))).await }
    });
    let undone = tokio::spawn({
        let writer = writer.clone();
        async move {
            writer
                .run(Box::new(|connection| {
                    let children: i64 =
                        sql::query("SELECT count(*) FROM child").fetch_scalar(connection)?;
                    assert_eq!(children, 1, "the member before it is visible");
                    Ok(false)
                }))
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let committed = first.commit().await;
    assert!(
        matches!(committed, Err(StoreError::CommitFailed(_))),
        "{committed:?}"
    );
    for job in [kept, undone] {
        let answer = job.await.expect("task");
        assert!(
            matches!(answer, Err(StoreError::CommitFailed(_))),
            "{answer:?}"
        );
    }
    let third = writer.begin().await.expect("begin");
    let parents = parents(&third);
    assert_eq!(parents, 0, "nothing of the group is stored");
    third.commit().await.expect("commit");
}

/// A member that rolls back alone (no member before it in the group) returns at once and
/// leaves the writer free.
#[tokio::test]
async fn a_lone_rollback_ends_the_sqlite_transaction() {
    let dir = tempfile::tempdir().expect("dir");
    let writer = writer(&dir);
    let member = member_with_parent(&writer).await;
    member.rollback().await.expect("rollback");
    assert!(writer.group.lock().await.open.is_none());
    let done = writer
        .execute(sql::query("INSERT INTO parent (id) VALUES (1)"))
        .await
        .expect("insert again");
    assert_eq!(done, 1);
}

/// A member dropped half-way leaves nothing behind and frees the writer, with no runtime
/// task to finish the job.
#[tokio::test]
async fn a_dropped_member_is_undone_at_once() {
    let dir = tempfile::tempdir().expect("dir");
    let writer = writer(&dir);
    let member = member_with_parent(&writer).await;
    drop(member);
    assert!(writer.group.lock().await.open.is_none());
    let member = writer.begin().await.expect("begin");
    let parents = parents(&member);
    assert_eq!(parents, 0);
    member.commit().await.expect("commit");
}
