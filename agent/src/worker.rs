//! Background workers: one runner for the agent's loops (each replication
//! worker, retention, the monitors), in the manner of garage's background
//! workers. A worker does one unit of work when asked and says what comes
//! next: more at once ([`Next::Busy`]), nothing until a time or a wake-up
//! ([`Next::Idle`]), or nothing ever ([`Next::Done`]). Between units the
//! runner sleeps until that time, a wake-up ([`Workers::spawn`]'s `wake`:
//! a queue row written, see `Index::watch_queue`) or shutdown — never a
//! fixed polling period. Each worker's state is kept for `/status`.
//!
//! Shutdown is checked between units only: a unit in progress (a batch
//! being sent, a sweep) finishes, as the agent's shutdown promises.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What a worker wants after a unit of work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// There is more to do now.
    Busy,
    /// Nothing to do until this time (`None`: until woken).
    Idle(Option<Instant>),
    /// Finished for good.
    Done,
}

impl Next {
    /// Idle for `d`.
    pub fn idle_for(d: Duration) -> Self {
        Next::Idle(Some(Instant::now() + d))
    }
}

/// A background worker.
pub trait Worker: Send + 'static {
    /// Its name in `/status` and the logs (unique per agent).
    fn name(&self) -> String;

    /// Do one unit of work.
    fn work(&mut self) -> impl Future<Output = Next> + Send;
}

/// A worker's state, as `/status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerStatus {
    /// "busy", "idle" or "done".
    pub state: String,
    /// Units of work done since start.
    pub units: u64,
    /// When it will look again by itself, in seconds from now (idle only;
    /// absent: only when woken).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_in_secs: Option<u64>,
}

#[derive(Debug, Clone)]
struct Entry {
    state: &'static str,
    units: u64,
    next: Option<Instant>,
}

/// The running workers, by name.
#[derive(Debug, Clone, Default)]
pub struct Workers(Arc<Mutex<BTreeMap<String, Entry>>>);

impl Workers {
    /// Run `worker` until it is done or `shutdown`; `wake` cuts an idle
    /// wait short (a permit given while it works is kept).
    pub fn spawn<W: Worker>(
        &self,
        mut worker: W,
        wake: Arc<Notify>,
        shutdown: &CancellationToken,
        tracker: &TaskTracker,
    ) {
        let name = worker.name();
        let registry = self.clone();
        registry.set(&name, "idle", None, false);
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            loop {
                if shutdown.is_cancelled() {
                    break;
                }
                registry.set(&name, "busy", None, false);
                let next = worker.work().await;
                match next {
                    Next::Busy => registry.set(&name, "busy", None, true),
                    Next::Done => break,
                    Next::Idle(until) => {
                        registry.set(&name, "idle", until, true);
                        let sleep = async {
                            match until {
                                Some(t) => tokio::time::sleep_until(t.into()).await,
                                None => std::future::pending().await,
                            }
                        };
                        tokio::select! {
                            biased;
                            _ = shutdown.cancelled() => break,
                            _ = wake.notified() => {}
                            _ = sleep => {}
                        }
                    }
                }
            }
            registry.set(&name, "done", None, false);
        });
    }

    fn set(&self, name: &str, state: &'static str, next: Option<Instant>, unit_done: bool) {
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let e = all.entry(name.to_string()).or_insert(Entry {
            state,
            units: 0,
            next: None,
        });
        e.state = state;
        e.next = next;
        if unit_done {
            e.units += 1;
        }
    }

    /// Every worker's state, by name.
    pub fn status(&self) -> BTreeMap<String, WorkerStatus> {
        let now = Instant::now();
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(name, e)| {
                (
                    name.clone(),
                    WorkerStatus {
                        state: e.state.to_string(),
                        units: e.units,
                        next_in_secs: e.next.map(|t| t.saturating_duration_since(now).as_secs()),
                    },
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Idle without a time until woken; counts its units.
    struct Counter {
        units: Arc<AtomicU32>,
        stop_after: u32,
    }

    impl Worker for Counter {
        fn name(&self) -> String {
            "counter".into()
        }

        async fn work(&mut self) -> Next {
            let n = self.units.fetch_add(1, Ordering::SeqCst) + 1;
            if n >= self.stop_after {
                Next::Done
            } else {
                Next::Idle(None)
            }
        }
    }

    /// An idle worker without a due time does nothing until woken (no
    /// polling), a wake given while it works is not lost, and it ends when
    /// done; its state is reported.
    #[tokio::test]
    async fn sleeps_until_woken_and_ends_when_done() {
        let workers = Workers::default();
        let units = Arc::new(AtomicU32::new(0));
        let wake = Arc::new(Notify::new());
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        workers.spawn(
            Counter {
                units: units.clone(),
                stop_after: 3,
            },
            wake.clone(),
            &shutdown,
            &tracker,
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(units.load(Ordering::SeqCst), 1, "one unit, then asleep");
        assert_eq!(workers.status()["counter"].state, "idle");
        assert_eq!(workers.status()["counter"].next_in_secs, None);
        wake.notify_one();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(units.load(Ordering::SeqCst), 2);
        // A permit given before it waits is kept.
        wake.notify_one();
        tracker.close();
        tokio::time::timeout(Duration::from_secs(5), tracker.wait())
            .await
            .expect("the worker ends when done");
        assert_eq!(units.load(Ordering::SeqCst), 3);
        assert_eq!(workers.status()["counter"].state, "done");
    }

    /// Idle until a time: woken by it; shutdown ends an idle worker at
    /// once.
    #[tokio::test]
    async fn wakes_at_its_due_time_and_stops_at_shutdown() {
        struct Timed(Arc<AtomicU32>);
        impl Worker for Timed {
            fn name(&self) -> String {
                "timed".into()
            }
            async fn work(&mut self) -> Next {
                self.0.fetch_add(1, Ordering::SeqCst);
                Next::idle_for(Duration::from_millis(50))
            }
        }
        let workers = Workers::default();
        let units = Arc::new(AtomicU32::new(0));
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        workers.spawn(
            Timed(units.clone()),
            Arc::new(Notify::new()),
            &shutdown,
            &tracker,
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
        let n = units.load(Ordering::SeqCst);
        assert!(
            (3..=10).contains(&n),
            "{n} units in 400 ms at one per 50 ms"
        );
        shutdown.cancel();
        tracker.close();
        tokio::time::timeout(Duration::from_secs(2), tracker.wait())
            .await
            .expect("shutdown ends an idle worker");
        assert_eq!(workers.status()["timed"].state, "done");
    }
}
