//! What the PostgreSQL store does in batches shares one shape: callers queue requests, and a task
//! hands everything queued to one call whenever one of a few calls is free. The more requests
//! are under way, the more each call carries; with one request at a time, each call carries one
//! and waits for nothing.
//!
//! A request is queued before its call is made, so the call's statement starts after the
//! request did: a caller reads at least what had committed when it asked (its own writes
//! included), as a statement of its own would.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc};

/// Starts the task that takes batches from the queue on the current runtime, and returns the
/// queue. At most `calls_max` calls of `handle` run at once, each with at most `count_max`
/// requests; at most `queue_max` requests wait (a caller that finds the queue full waits too).
/// The task ends when the last sender is dropped.
pub(super) fn start<T, F, Fut>(
    queue_max: usize,
    count_max: usize,
    calls_max: usize,
    handle: F,
) -> mpsc::Sender<T>
where
    T: Send + 'static,
    F: Fn(Vec<T>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (sender, mut receiver) = mpsc::channel(queue_max);
    tokio::spawn(async move {
        let calls = Arc::new(Semaphore::new(calls_max));
        loop {
            // A free call first: requests that arrive while every call is busy join the next
            // batch.
            let Ok(call) = Arc::clone(&calls).acquire_owned().await else {
                return;
            };
            let mut batch = Vec::with_capacity(count_max);
            if receiver.recv_many(&mut batch, count_max).await == 0 {
                return;
            }
            let handled = handle(batch);
            tokio::spawn(async move {
                handled.await;
                drop(call);
            });
        }
    });
    sender
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use tokio::sync::oneshot;

    use super::*;

    /// Requests made while every call is busy are carried by the next calls together, never
    /// more than `calls_max` calls at once, and every request is answered.
    #[tokio::test]
    async fn requests_under_way_share_calls() {
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let calls = Arc::new(AtomicUsize::new(0));
        let (running_c, most_c, calls_c) = (running.clone(), most.clone(), calls.clone());
        let queue = start(
            1024,
            16,
            2,
            move |batch: Vec<(u32, oneshot::Sender<u32>)>| {
                let (running, most, calls) = (running_c.clone(), most_c.clone(), calls_c.clone());
                async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    for (n, answer) in batch {
                        let _ = answer.send(n * 2);
                    }
                    running.fetch_sub(1, Ordering::SeqCst);
                }
            },
        );
        let mut answers = Vec::new();
        for n in 0..100u32 {
            let (answer, answered) = oneshot::channel();
            queue.send((n, answer)).await.expect("the queue is open");
            answers.push((n, answered));
        }
        for (n, answered) in answers {
            assert_eq!(answered.await.expect("answered"), n * 2);
        }
        assert!(
            most.load(Ordering::SeqCst) <= 2,
            "at most two calls at once"
        );
        let made = calls.load(Ordering::SeqCst);
        assert!(
            (7..=50).contains(&made),
            "100 requests of at most 16 a call in {made} calls"
        );
    }
}
