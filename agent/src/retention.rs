//! The retention worker: runs the store's retention sweep
//! (`pacs_mirror_store::retention::sweep`, whose header states the order of
//! marking and removing and the crash behaviour) every tenth of the
//! retention period, between 1 s and 5 min, on a blocking thread.

use std::sync::Arc;
use std::time::Duration;

use pacs_mirror_store::index::Index;
use pacs_mirror_store::index::outbox::EvictScan;
use pacs_mirror_store::retention::{new_scan, sweep};
use pacs_mirror_store::spool::Spool;

use crate::worker::{Next, Worker};

/// Removes spool files every target has held for `retain`.
pub struct Retention {
    index: Index,
    spool: Arc<Spool>,
    targets: Vec<String>,
    retain: Duration,
    every: Duration,
    scan: EvictScan,
    /// The first unit waits a period (the agent has just started).
    started: bool,
}

impl Retention {
    /// The worker for these targets (none: nothing is ever removed, do not
    /// start it).
    pub fn new(index: Index, spool: Arc<Spool>, targets: Vec<String>, retain: Duration) -> Self {
        Retention {
            index,
            spool,
            targets,
            retain,
            every: (retain / 10).clamp(Duration::from_secs(1), Duration::from_secs(300)),
            scan: new_scan(),
            started: false,
        }
    }
}

impl Worker for Retention {
    fn name(&self) -> String {
        "retention".into()
    }

    async fn work(&mut self) -> Next {
        if !std::mem::replace(&mut self.started, true) {
            return Next::idle_for(self.every);
        }
        let (i, s, t, retain) = (
            self.index.clone(),
            self.spool.clone(),
            self.targets.clone(),
            self.retain,
        );
        let now = crate::unix_ms();
        let mut scan = self.scan.clone();
        let swept = tokio::task::spawn_blocking(move || {
            let r = sweep(&i, &s, &t, retain, now, &mut scan);
            (r, scan)
        })
        .await;
        match swept {
            Ok((r, scan)) => {
                self.scan = scan;
                match r {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(
                        files = n,
                        "retention removed spool files delivered to every target"
                    ),
                    Err(e) => tracing::error!(error = %e, "retention sweep failed"),
                }
            }
            Err(e) => tracing::error!(error = %e, "retention sweep panicked"),
        }
        Next::idle_for(self.every)
    }
}
