//! Replication to DICOM targets: workers that drain each target's queue
//! (`crate::index::outbox`) by C-STORE.
//!
//! Each target gets `concurrency` workers. A worker claims up to
//! [`BATCH`] due objects (claims are in memory, so two workers of a target
//! never send the same object at once), opens one association proposing each
//! object's own SOP class and transfer syntax, sends them in turn, and moves
//! each row by the outcome:
//!
//! | outcome | row |
//! |---|---|
//! | Success or a warning (Bxxx) | delivered |
//! | A7xx (out of resources) | retried after the backoff, without limit |
//! | A9xx, Cxxx, 0122, any other failure status, no accepted context for its transfer syntax | retried, then dead-lettered after `refused_attempts` |
//! | refused connection, timeout, abort, rejected association | retried without limit; the circuit opens |
//!
//! While the circuit is open the worker does not send: it probes the target
//! with C-ECHO at the backoff's pace and resumes by itself when it answers.
//! Nothing is ever dropped; a dead letter stays listed until an operator
//! retries it.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::dimse::Status;
use crate::index::outbox::{Backoff, Due};
use crate::index::{Hash, Index, hash_hex};
use crate::scu::{self, Outgoing, Peer, Scu, ScuError};
use crate::spool::Spool;

/// Objects claimed by a worker at a time (one association). At most 64
/// objects means at most 64 distinct presentation contexts, within the 128
/// one association can carry (`scu::MAX_CONTEXTS`).
pub const BATCH: usize = 64;
/// How often an idle worker looks for newly due objects.
const IDLE_POLL: Duration = Duration::from_millis(200);

/// One DICOM target, resolved from the configuration.
#[derive(Debug, Clone)]
pub struct DicomTarget {
    /// The target's name (outbox key).
    pub name: String,
    /// Where and as whom.
    pub peer: Peer,
    /// Parallel associations.
    pub concurrency: usize,
    /// Retry delays.
    pub backoff: Backoff,
    /// Attempts before a refused object is dead-lettered.
    pub refused_attempts: u32,
}

/// What the workers of a target report, for `/status` and `/metrics`.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct TargetHealth {
    /// The last delivery (Unix ms).
    pub last_success_at_ms: Option<u64>,
    /// The last failure (Unix ms) and what it was.
    pub last_error_at_ms: Option<u64>,
    /// The last failure.
    pub last_error: Option<String>,
    /// Whether the target is unreachable (the workers probe with C-ECHO).
    pub circuit_open: bool,
}

/// Shared health of one target.
pub type Health = Arc<Mutex<TargetHealth>>;

/// What a worker needs.
#[derive(Clone)]
pub struct Replication {
    /// The index (queue).
    pub index: Index,
    /// The spool (object files).
    pub spool: Arc<Spool>,
}

/// Start the workers of `target`; they stop when `shutdown` is cancelled
/// (after finishing the object they are sending).
pub fn spawn(
    replication: &Replication,
    target: DicomTarget,
    shutdown: &CancellationToken,
    tracker: &tokio_util::task::TaskTracker,
) -> Health {
    let claimed: Arc<Mutex<HashSet<Hash>>> = Arc::default();
    let health: Health = Arc::default();
    for worker in 0..target.concurrency.max(1) {
        let w = Worker {
            r: replication.clone(),
            target: target.clone(),
            claimed: claimed.clone(),
            health: health.clone(),
            worker,
        };
        let shutdown = shutdown.clone();
        tracker.spawn(async move { w.run(shutdown).await });
    }
    health
}

struct Worker {
    r: Replication,
    target: DicomTarget,
    claimed: Arc<Mutex<HashSet<Hash>>>,
    health: Health,
    worker: usize,
}

enum Pass {
    /// Work was done (or nothing was due).
    Done { idle: bool },
    /// The target is unreachable: open the circuit.
    Unreachable(ScuError),
}

impl Worker {
    async fn run(self, shutdown: CancellationToken) {
        let name = &self.target.name;
        let mut open_since_attempts: Option<u32> = None;
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            if let Some(n) = open_since_attempts {
                // Circuit open: probe, do not hammer the target with stores.
                let wait = Duration::from_millis(self.target.backoff.ceiling_ms(n).max(500));
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(wait) => {}
                }
                match scu::echo(&self.target.peer).await {
                    Ok(_) => {
                        tracing::info!(target = %name, "target answers C-ECHO again: resuming");
                        self.health().circuit_open = false;
                        open_since_attempts = None;
                    }
                    Err(e) => {
                        tracing::debug!(target = %name, error = %e, "target still unreachable");
                        open_since_attempts = Some(n.saturating_add(1));
                        continue;
                    }
                }
            }
            match self.pass().await {
                Pass::Done { idle: true } => {
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(IDLE_POLL) => {}
                    }
                }
                Pass::Done { idle: false } => {}
                Pass::Unreachable(e) => {
                    if self.worker == 0 {
                        tracing::warn!(target = %name, error = %e, "target unreachable: probing with C-ECHO until it answers");
                    }
                    self.note_error(&e.to_string());
                    self.health().circuit_open = true;
                    open_since_attempts = Some(0);
                }
            }
        }
    }

    /// Claim due objects and send them on one association.
    async fn pass(&self) -> Pass {
        let name = &self.target.name;
        let now = crate::unix_ms();
        let due = match self.claim(now) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(target = %name, error = %e, "reading the queue failed");
                return Pass::Done { idle: true };
            }
        };
        if due.is_empty() {
            return Pass::Done { idle: true };
        }
        let result = self.send(&due).await;
        if let Err(e) = self.r.index.flush() {
            tracing::error!(error = %e, "index flush after delivery failed (rows are re-sent if lost)");
        }
        self.release(&due);
        match result {
            Ok(()) => Pass::Done { idle: false },
            Err(e) => Pass::Unreachable(e),
        }
    }

    fn health(&self) -> std::sync::MutexGuard<'_, TargetHealth> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn note_error(&self, error: &str) {
        let mut h = self.health();
        h.last_error_at_ms = Some(crate::unix_ms());
        h.last_error = Some(error.to_string());
    }

    fn claim(&self, now: u64) -> Result<Vec<Due>, crate::index::IndexError> {
        let candidates = self.r.index.due(&self.target.name, now, BATCH * 4)?;
        let mut claimed = self.claimed.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for d in candidates {
            if out.len() >= BATCH {
                break;
            }
            if !claimed.insert(d.hash) {
                continue;
            }
            // Read before the claim: another worker may have moved the row
            // meanwhile. Now that we hold the claim nobody else can.
            if self.r.index.still_pending(&self.target.name, &d)? {
                out.push(d);
            } else {
                claimed.remove(&d.hash);
            }
        }
        Ok(out)
    }

    fn release(&self, due: &[Due]) {
        let mut claimed = self.claimed.lock().unwrap_or_else(|p| p.into_inner());
        for d in due {
            claimed.remove(&d.hash);
        }
    }

    /// Send `due`; `Err` when the target became unreachable (the rest of the
    /// batch has been rescheduled).
    async fn send(&self, due: &[Due]) -> Result<(), ScuError> {
        let mut objects = Vec::with_capacity(due.len());
        for d in due {
            match self.outgoing(d) {
                Ok(o) => objects.push((d, o)),
                Err(reason) => self.refused(d, &reason),
            }
        }
        if objects.is_empty() {
            return Ok(());
        }
        let outgoing: Vec<Outgoing> = objects.iter().map(|(_, o)| o.clone()).collect();
        let contexts = scu::contexts_for(&outgoing);
        let mut scu = match Scu::connect(&self.target.peer, &contexts).await {
            Ok(s) => s,
            Err(e) if e.is_transient() => {
                for (d, _) in &objects {
                    self.retry(d, &e.to_string());
                }
                return Err(e);
            }
            Err(e) => {
                for (d, _) in &objects {
                    self.refused(d, &e.to_string());
                }
                return Ok(());
            }
        };
        for (i, (d, o)) in objects.iter().enumerate() {
            match scu.store(o).await {
                Ok(status) if status.is_stored() => self.delivered(d, o),
                Ok(status @ Status::OutOfResources(_)) => self.retry(d, &status.to_string()),
                Ok(status) => self.refused(d, &status.to_string()),
                Err(e) if e.is_transient() => {
                    for (rest, _) in &objects[i..] {
                        self.retry(rest, &e.to_string());
                    }
                    return Err(e);
                }
                Err(e) => self.refused(d, &e.to_string()),
            }
        }
        scu.release().await;
        Ok(())
    }

    fn outgoing(&self, d: &Due) -> Result<Outgoing, String> {
        let record = self
            .r
            .index
            .object(&d.hash)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("object {} is not in the index", hash_hex(&d.hash)))?;
        if let Some(at) = record.evicted_at_ms {
            return Err(format!(
                "removed from the spool by retention at {at} (Unix ms); re-send it from the primary"
            ));
        }
        let path = self.r.spool.object_path(&d.hash);
        if record.sop_class_uid.is_empty() || record.transfer_syntax_uid.is_empty() {
            // Older index records: read the identity from the file.
            return scu::outgoing(&path).map_err(|e| e.to_string());
        }
        Ok(Outgoing {
            path,
            sop_class_uid: record.sop_class_uid,
            sop_instance_uid: record.sop_instance_uid,
            transfer_syntax_uid: record.transfer_syntax_uid,
        })
    }

    fn delivered(&self, d: &Due, o: &Outgoing) {
        let now = crate::unix_ms();
        if let Err(e) = self.r.index.mark_delivered(&self.target.name, d, now) {
            tracing::error!(error = %e, "recording a delivery failed (it will be sent again)");
        }
        self.health().last_success_at_ms = Some(now);
        tracing::debug!(
            target = %self.target.name,
            sop_instance_uid = %o.sop_instance_uid,
            lag_ms = now.saturating_sub(d.record.enqueued_at_ms),
            "delivered"
        );
    }

    fn retry(&self, d: &Due, error: &str) {
        self.note_error(error);
        let delay = self
            .target
            .backoff
            .delay_ms(d.record.attempts, &mut rand::rng());
        let at = crate::unix_ms() + delay;
        if let Err(e) = self.r.index.reschedule(&self.target.name, d, error, at) {
            tracing::error!(error = %e, "rescheduling failed (the row stays due)");
        }
    }

    fn refused(&self, d: &Due, reason: &str) {
        self.note_error(reason);
        if d.record.attempts + 1 >= self.target.refused_attempts {
            tracing::error!(
                target = %self.target.name,
                object = %hash_hex(&d.hash),
                %reason,
                attempts = d.record.attempts + 1,
                "the target refuses this object: moved to the dead-letter list (`pacs-mirror dead-letter list`)"
            );
            if let Err(e) = self
                .r
                .index
                .dead_letter(&self.target.name, d, reason, crate::unix_ms())
            {
                tracing::error!(error = %e, "dead-lettering failed (the row stays due)");
            }
        } else {
            tracing::warn!(target = %self.target.name, object = %hash_hex(&d.hash), %reason, "the target refused an object; will retry");
            self.retry(d, reason);
        }
    }
}
