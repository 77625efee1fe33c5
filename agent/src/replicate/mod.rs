//! Replication: workers that drain each target's queue
//! (`pacs_mirror_store::index::outbox`). One mechanism, two kinds of target: a DICOM
//! peer (C-STORE, [`dicom`]) and an object store ([`bucket`]).
//!
//! A worker claims due objects (claims are in memory, so two workers of a
//! target never send the same object at once), hands them to its target's
//! sender, and moves each row by the outcome. Confirmed deliveries are
//! collected during the claim and recorded in one index batch at its end,
//! before the claims are released (a crash before the next index flush
//! loses only the record: the object is sent again).
//!
//! A DICOM target's workers (`concurrency` of them) take turns by the
//! permits of an [`adaptive::Limiter`], which adapts how many associations
//! are open to what the link and the mirror deliver. A worker with a permit
//! keeps its association open and claims [`dicom::CLAIM`] objects at a time
//! while work is due, flushing the index at least every [`FLUSH_EVERY`]. An
//! object-store worker claims up to [`BATCH`] objects per pass and uploads
//! them as the target's [`adaptive::Limiter`] allows: one permit per upload
//! in flight, so the uploads of both workers together grow while the
//! store's throughput grows with them (latency: a distant region) and halve
//! on timeouts and server errors.
//!
//! Workers run under the agent's worker runner ([`crate::worker`]). An idle
//! worker is woken by every index batch that writes into its queue
//! (`Index::watch_queue`: a new object finalized, a retry rescheduled, a
//! requeue) and by claims another worker gives back; otherwise it sleeps
//! until the queue's next row is due.
//!
//! An object-store target splits that work in two: its workers only upload
//! and hand what they stored to the target's one *publisher*, then claim
//! their next batch; the publisher writes the study manifests (the
//! batches waiting for it merged into one rewrite per study), then records
//! the deliveries and releases those claims. So uploads never wait for a
//! manifest, and an object is still delivered only once its blob and its
//! manifest entry are both written.
//!
//! | outcome | row |
//! |---|---|
//! | DICOM Success or a warning (Bxxx); object stored (or found, verified) with its manifest entry | delivered (a target with `storage_commitment`: stored, delivered once the mirror reports it committed, [`commit`]) |
//! | A7xx (out of resources) | retried after the backoff, without limit; for an object kept with findings (not conformant), counted as a refusal |
//! | A9xx, Cxxx, 0122, any other failure status, no accepted context for its transfer syntax; the bucket holds other bytes under the key | retried, then dead-lettered after `refused_attempts` |
//! | refused connection, timeout, abort, rejected association; store or network error | retried without limit (but counted as a refusal of an object kept with findings that was being sent); the circuit opens when the whole batch failed so |
//!
//! While the circuit is open the worker does not send: it probes the target
//! (C-ECHO; a HEAD on the bucket) at the backoff's pace and resumes by itself
//! when it answers. Nothing is ever dropped; a dead letter stays listed until
//! an operator retries it.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::worker::Next;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use pacs_mirror_dicom::scu::{self, Peer};
use pacs_mirror_store::index::outbox::{Backoff, Delivery, Due};
use pacs_mirror_store::index::{Index, ObjectId, hash_hex};
use pacs_mirror_store::spool::Spool;

pub mod adaptive;
mod bucket;
pub mod commit;
mod dicom;
pub mod status;
#[cfg(test)]
mod tests;

/// Objects claimed by a worker at a time (one association). At most 64
/// objects means at most 64 distinct presentation contexts, within the 128
/// one association can carry (`scu::MAX_CONTEXTS`).
pub const BATCH: usize = 64;
/// The longest an idle worker sleeps without looking at its queue. It is
/// woken by every row this process writes into the queue, and otherwise
/// sleeps until the next row is due; this only bounds what a row written
/// some other way could wait.
const LOOK_AT_LEAST_EVERY: Duration = Duration::from_secs(30);
/// How often a DICOM worker sending claim after claim flushes the index
/// (deliveries recorded but not flushed are sent again after a crash).
pub const FLUSH_EVERY: Duration = Duration::from_millis(250);

/// Where a target's copies go.
#[derive(Debug, Clone)]
pub enum Destination {
    /// A DICOM peer: where and as whom.
    Dicom(Peer),
    /// An object store.
    Bucket(Arc<crate::bucket::Bucket>),
}

impl Destination {
    /// For logs: `AE@host:port` or the URL.
    pub fn describe(&self) -> String {
        match self {
            Destination::Dicom(p) => format!("{}@{}:{}", p.called_ae, p.host, p.port),
            Destination::Bucket(b) => b.url().to_string(),
        }
    }
}

/// One target, resolved from the configuration.
#[derive(Debug, Clone)]
pub struct TargetSpec {
    /// The target's name (outbox key).
    pub name: String,
    /// Where copies go.
    pub destination: Destination,
    /// Workers (DICOM: associations in parallel).
    pub workers: usize,
    /// The target's `concurrency`: the most associations (DICOM, one per
    /// worker) or uploads in flight (object store) the limiter allows.
    pub concurrency: usize,
    /// Retry delays.
    pub backoff: Backoff,
    /// Attempts before a refused object is dead-lettered.
    pub refused_attempts: u32,
    /// Arrivals this recent are sent before the backlog (ms).
    pub live_window_ms: u64,
    /// The target's `max_bandwidth` (DICOM: also in the peer, which paces
    /// each write; object stores: each upload).
    pub pacer: Option<Arc<scu::pace::Pacer>>,
    /// DICOM targets with `storage_commitment`: how long a request waits
    /// for its report. An object the mirror stored is then *stored*, not
    /// delivered, until the mirror commits it ([`commit`]).
    pub commitment: Option<Duration>,
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
    /// Objects delivered since start (for the delivery rate).
    pub delivered_objects: u64,
    /// Their bytes (for the bandwidth used).
    pub delivered_bytes: u64,
    /// How long the last delivered object waited from its arrival (ms).
    pub last_lag_ms: Option<u64>,
    /// Targets with storage commitment: objects the mirror stored since
    /// start (delivered once committed).
    pub stored_objects: u64,
    /// Whether the target asks for storage commitment.
    pub commitment: bool,
    /// DICOM targets: associations open, the adaptive limit and the
    /// configured maximum.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub associations: Option<adaptive::Snapshot>,
    /// Object stores: uploads in flight, the adaptive limit and the
    /// configured maximum.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uploads: Option<adaptive::Snapshot>,
    /// The target's live window (ms): arrivals this recent are sent first
    /// and counted as live pending.
    pub live_window_ms: u64,
    /// The target's bandwidth cap (its rate now: `status`).
    #[serde(skip)]
    pub pacer: Option<Arc<scu::pace::Pacer>>,
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

/// Start the workers of `target` (in `workers`, woken by every row written
/// into its queue); they stop when `shutdown` is cancelled (after finishing
/// the batch they are sending).
pub fn spawn(
    replication: &Replication,
    target: TargetSpec,
    workers_of: &crate::worker::Workers,
    shutdown: &CancellationToken,
    tracker: &tokio_util::task::TaskTracker,
) -> Health {
    let claimed: Arc<Mutex<HashSet<ObjectId>>> = Arc::default();
    let health: Health = Arc::new(Mutex::new(TargetHealth {
        pacer: target.pacer.clone(),
        live_window_ms: target.live_window_ms,
        commitment: target.commitment.is_some(),
        ..TargetHealth::default()
    }));
    let workers = target.workers.max(1);
    let limiter = match &target.destination {
        Destination::Dicom(_) => adaptive::Limiter::new(workers),
        Destination::Bucket(_) => {
            adaptive::Limiter::starting_at(adaptive::START_UPLOADS, target.concurrency)
        }
    };
    // Each worker is woken by rows written into the queue, and by claims
    // another worker (or the publisher) gives up.
    let wakes: Arc<Vec<Arc<tokio::sync::Notify>>> = Arc::new(
        (0..workers)
            .map(|_| replication.index.watch_queue(&target.name))
            .collect(),
    );
    let worker = |worker, publish| Worker {
        r: replication.clone(),
        target: target.clone(),
        claimed: claimed.clone(),
        health: health.clone(),
        worker,
        confirmed: Mutex::default(),
        stored: Mutex::default(),
        publish,
        circuit: None,
        wakes: wakes.clone(),
        limiter: limiter.clone(),
        shutdown: shutdown.clone(),
    };
    let publish = match &target.destination {
        Destination::Bucket(bucket) => {
            // Room for one finished batch per worker: a worker waits only
            // when the publisher is that far behind.
            let (tx, rx) = mpsc::channel(workers);
            let publisher = worker(workers, None);
            let bucket = bucket.clone();
            // Ends when every worker has stopped (the channel closes), after
            // publishing what they handed over.
            tracker.spawn(async move { publisher.publish(&bucket, rx).await });
            Some(tx)
        }
        Destination::Dicom(_) => None,
    };
    for n in 0..workers {
        let w = worker(n, publish.clone());
        workers_of.spawn(w, wakes[n].clone(), shutdown, tracker);
    }
    health
}

struct Worker {
    r: Replication,
    target: TargetSpec,
    claimed: Arc<Mutex<HashSet<ObjectId>>>,
    health: Health,
    worker: usize,
    /// Deliveries confirmed in the current batch, not recorded yet.
    confirmed: Mutex<Vec<Delivery>>,
    /// Targets with storage commitment: objects stored in the current
    /// batch, not recorded yet.
    stored: Mutex<Vec<pacs_mirror_store::index::commitment::Stored>>,
    /// Object stores: where finished uploads go (the publisher).
    publish: Option<mpsc::Sender<bucket::Stored>>,
    /// The target is unreachable: probes made so far, and when the next is
    /// due.
    circuit: Option<(u32, Instant)>,
    /// The wake-ups of every worker of the target (released claims).
    wakes: Arc<Vec<Arc<tokio::sync::Notify>>>,
    /// The permits: for associations (DICOM), for uploads (object store).
    limiter: Arc<adaptive::Limiter>,
    /// Ends a run of claims on an open association.
    shutdown: CancellationToken,
}

enum Pass {
    /// Work was done (or nothing was due).
    Done { idle: bool },
    /// The target is unreachable: open the circuit.
    Unreachable(Unreachable),
}

/// Why a target is unreachable (the batch was rescheduled, the circuit
/// opens).
#[derive(Debug, thiserror::Error)]
pub enum Unreachable {
    /// The mirror PACS: refused connection, timeout, abort, rejection.
    #[error(transparent)]
    Dicom(#[from] scu::ScuError),
    /// The bucket: network or server.
    #[error(transparent)]
    Bucket(#[from] crate::bucket::BucketError),
}

/// Why an object cannot be sent at all: refused (dead-lettered) until an
/// operator acts.
#[derive(Debug, thiserror::Error)]
pub enum Unsendable {
    /// The index could not be read.
    #[error(transparent)]
    Index(#[from] pacs_mirror_store::index::IndexError),
    /// The queue names an object the index does not hold.
    #[error("object {0} is not in the index")]
    NotIndexed(String),
    /// The object has no instance record.
    #[error("object {0} has no instance record in the index")]
    NoInstanceRecord(String),
    /// Retention removed its spool file.
    #[error("removed from the spool by retention at {0} (Unix ms); re-send it from the primary")]
    Evicted(u64),
    /// Its spool file's header cannot be read.
    #[error(transparent)]
    Unreadable(#[from] pacs_mirror_dicom::part10::Part10Error),
}

impl crate::worker::Worker for Worker {
    fn name(&self) -> String {
        format!("replicate {}#{}", self.target.name, self.worker)
    }

    /// One batch, or one probe while the circuit is open.
    async fn work(&mut self) -> Next {
        // Another worker of the target found it answering: resume too.
        if self.circuit.is_some() && !self.health().circuit_open {
            self.circuit = None;
        }
        if let Some((n, at)) = self.circuit {
            // Circuit open: probe at the backoff's pace, do not hammer the
            // target with stores.
            if Instant::now() < at {
                return Next::Idle(Some(at));
            }
            match self.probe().await {
                Ok(()) => {
                    tracing::info!(target = %self.target.name, "target answers again: resuming");
                    self.health().circuit_open = false;
                    self.circuit = None;
                    // After an outage the backlog is measured afresh, and
                    // every worker resumes now, not at its own next probe.
                    self.limiter.restart();
                    for w in self.wakes.iter() {
                        w.notify_one();
                    }
                }
                Err(e) => {
                    tracing::debug!(target = %self.target.name, error = %e, "target still unreachable");
                    let n = n.saturating_add(1);
                    let at = Instant::now() + self.probe_wait(n);
                    self.circuit = Some((n, at));
                    return Next::Idle(Some(at));
                }
            }
        }
        match self.pass().await {
            Pass::Done { idle: true } => Next::Idle(Some(self.idle_until())),
            Pass::Done { idle: false } => Next::Busy,
            Pass::Unreachable(e) => {
                if self.worker == 0 {
                    tracing::warn!(target = %self.target.name, error = %e, "target unreachable: probing it until it answers");
                }
                self.note_error(&e.to_string());
                self.health().circuit_open = true;
                let at = Instant::now() + self.probe_wait(0);
                self.circuit = Some((0, at));
                Next::Idle(Some(at))
            }
        }
    }
}

impl Worker {
    /// The wait before probe `n` of an unreachable target.
    fn probe_wait(&self, n: u32) -> Duration {
        Duration::from_millis(self.target.backoff.ceiling_ms(n).max(500))
    }

    /// Nothing was due: sleep until the next row is (a retry's backoff), or
    /// a wake-up (a row written into the queue). Rows due already are
    /// claimed by another worker, whose batch moves them.
    fn idle_until(&self) -> Instant {
        let now_ms = crate::unix_ms();
        let wait = match self.r.index.next_due_at(&self.target.name) {
            Ok(Some(at)) if at > now_ms => {
                Duration::from_millis(at - now_ms).min(LOOK_AT_LEAST_EVERY)
            }
            // None due later: the rows due now (if any) are claimed by
            // another worker or the publisher, which wakes us as it gives
            // them back.
            _ => LOOK_AT_LEAST_EVERY,
        };
        Instant::now() + wait
    }

    /// DICOM: with a permit, claim after claim on one association while
    /// work is due.
    async fn pass_dicom(&self, peer: &Peer) -> Pass {
        let name = &self.target.name;
        match self.has_unclaimed_due(crate::unix_ms()) {
            Ok(true) => {}
            Ok(false) => return Pass::Done { idle: true },
            Err(e) => {
                tracing::error!(target = %name, error = %e, "reading the queue failed");
                return Pass::Done { idle: true };
            }
        }
        let permit = self.limiter.acquire().await;
        self.health().associations = Some(self.limiter.snapshot());
        let mut session = None;
        let mut result = Ok(());
        let mut sent = 0usize;
        let mut flushed = Instant::now();
        loop {
            if self.shutdown.is_cancelled() {
                break;
            }
            let due = match self.claim_bytes(crate::unix_ms(), dicom::CLAIM, self.claim_budget()) {
                Ok(d) => d,
                Err(e) => {
                    tracing::error!(target = %name, error = %e, "reading the queue failed");
                    break;
                }
            };
            if due.is_empty() {
                break;
            }
            sent += due.len();
            result = self.send_dicom(peer, &mut session, &due).await;
            self.record_deliveries();
            if result.is_err() || flushed.elapsed() >= FLUSH_EVERY {
                self.flush_index();
                flushed = Instant::now();
            }
            self.release(due.iter());
            if result.is_err() || permit.over_limit() {
                break;
            }
        }
        self.flush_index();
        if let Some(s) = session {
            s.release().await;
        }
        drop(permit);
        self.health().associations = Some(self.limiter.snapshot());
        tracing::debug!(target = %name, worker = self.worker, objects = sent, "association done");
        match result {
            Ok(()) => Pass::Done { idle: sent == 0 },
            Err(e) => Pass::Unreachable(e),
        }
    }

    fn flush_index(&self) {
        if let Err(e) = self.r.index.flush() {
            tracing::error!(error = %e, "index flush after delivery failed (rows are re-sent if lost)");
        }
    }

    /// Whether a row is due that no worker has claimed.
    fn has_unclaimed_due(&self, now: u64) -> Result<bool, pacs_mirror_store::index::IndexError> {
        let claimed = self.claimed.lock().unwrap_or_else(|p| p.into_inner());
        Ok(!self
            .r
            .index
            .due_skipping(&self.target.name, now, 1, &|h| claimed.contains(h))?
            .is_empty())
    }

    /// Claim due objects and send them: one association of a DICOM target
    /// (claim after claim), one batch of uploads of an object store.
    async fn pass(&self) -> Pass {
        let bucket = match &self.target.destination {
            Destination::Dicom(peer) => return self.pass_dicom(peer).await,
            Destination::Bucket(bucket) => bucket,
        };
        let name = &self.target.name;
        let now = crate::unix_ms();
        let due = match self.claim(now, BATCH) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(target = %name, error = %e, "reading the queue failed");
                return Pass::Done { idle: true };
            }
        };
        if due.is_empty() {
            return Pass::Done { idle: true };
        }
        let started = std::time::Instant::now();
        let (result, handed_over) = self.send_bucket(bucket, &due).await;
        let sent = started.elapsed();
        self.record_deliveries();
        self.flush_index();
        // The publisher releases what it was handed.
        self.release(due.iter().filter(|d| !handed_over.contains(&d.hash)));
        tracing::debug!(
            target = %name,
            worker = self.worker,
            objects = due.len(),
            send_ms = sent.as_millis() as u64,
            record_ms = (started.elapsed() - sent).as_millis() as u64,
            "batch done"
        );
        match result {
            Ok(()) => Pass::Done { idle: false },
            Err(e) => Pass::Unreachable(e),
        }
    }

    /// Is the target answering? (C-ECHO; a HEAD on the bucket.)
    async fn probe(&self) -> Result<(), Unreachable> {
        match &self.target.destination {
            Destination::Dicom(peer) => Ok(scu::echo(peer).await.map(|_| ())?),
            Destination::Bucket(bucket) => Ok(bucket.probe().await?),
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

    /// The bytes one DICOM claim may hold: what an eighth of a second of the
    /// target's bandwidth cap carries (at least one object), so that under a
    /// cap the claims in flight finish soon and a new arrival is taken
    /// within a second or two; without a cap, [`dicom::CLAIM_BYTES`].
    fn claim_budget(&self) -> u64 {
        self.target
            .pacer
            .as_ref()
            .and_then(|p| p.rate())
            .map_or(dicom::CLAIM_BYTES, |rate| {
                (rate / 8).min(dicom::CLAIM_BYTES)
            })
    }

    fn claim(
        &self,
        now: u64,
        limit: usize,
    ) -> Result<Vec<Due>, pacs_mirror_store::index::IndexError> {
        self.claim_bytes(now, limit, u64::MAX)
    }

    /// Claim up to `limit` due objects, live ones first, stopping once
    /// their bytes reach `budget` (always at least one).
    fn claim_bytes(
        &self,
        now: u64,
        limit: usize,
        budget: u64,
    ) -> Result<Vec<Due>, pacs_mirror_store::index::IndexError> {
        let mut claimed = self.claimed.lock().unwrap_or_else(|p| p.into_inner());
        let candidates = self.r.index.due_live_first(
            &self.target.name,
            now,
            self.target.live_window_ms,
            limit,
            &|h| claimed.contains(h),
        )?;
        let mut out = Vec::new();
        let mut bytes = 0u64;
        for d in candidates {
            if !out.is_empty() && bytes >= budget {
                break;
            }
            if !claimed.insert(d.hash) {
                continue;
            }
            bytes += d.record.file_bytes.unwrap_or(0);
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

    /// Give up the claims of `due`, and wake the target's workers: a row
    /// left in the queue (not delivered) is theirs to take again, and one
    /// that sleeps because every due row was claimed must look.
    fn release<'a>(&self, due: impl IntoIterator<Item = &'a Due>) {
        let mut claimed = self.claimed.lock().unwrap_or_else(|p| p.into_inner());
        let mut any = false;
        for d in due {
            any |= claimed.remove(&d.hash);
        }
        drop(claimed);
        if any {
            for w in self.wakes.iter() {
                w.notify_one();
            }
        }
    }

    /// The target confirmed `d`: collected, recorded with the rest of the
    /// batch by [`Worker::record_deliveries`].
    fn delivered(&self, d: &Due, sop_instance_uid: &str, stored_blake3: Option<String>) {
        let now = crate::unix_ms();
        self.confirmed_list().push(Delivery {
            due: d.clone(),
            delivered_at_ms: now,
            stored_blake3,
        });
        {
            let mut h = self.health();
            h.last_success_at_ms = Some(now);
            h.delivered_objects += 1;
            h.delivered_bytes += d.record.file_bytes.unwrap_or(0);
            h.last_lag_ms = Some(now.saturating_sub(d.record.enqueued_at_ms));
        }
        // An object store's uploads are measured as they finish (the
        // publisher's manifests come later, in bursts).
        if matches!(self.target.destination, Destination::Dicom(_)) {
            self.limiter.delivered(d.record.file_bytes.unwrap_or(0));
        }
        tracing::debug!(
            target = %self.target.name,
            %sop_instance_uid,
            lag_ms = now.saturating_sub(d.record.enqueued_at_ms),
            "delivered"
        );
    }

    fn confirmed_list(&self) -> std::sync::MutexGuard<'_, Vec<Delivery>> {
        self.confirmed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The mirror answered `d`'s C-STORE with Success: delivered, or for a
    /// target with storage commitment, stored until it is committed.
    fn accepted(&self, d: &Due, o: &scu::Outgoing) {
        if self.target.commitment.is_none() {
            return self.delivered(d, &o.sop_instance_uid, None);
        }
        let now = crate::unix_ms();
        self.stored.lock().unwrap_or_else(|p| p.into_inner()).push(
            pacs_mirror_store::index::commitment::Stored {
                delivery: Delivery {
                    due: d.clone(),
                    delivered_at_ms: now,
                    stored_blake3: None,
                },
                sop_class_uid: o.sop_class_uid.clone(),
                sop_instance_uid: o.sop_instance_uid.clone(),
            },
        );
        {
            let mut h = self.health();
            h.stored_objects += 1;
            h.delivered_bytes += d.record.file_bytes.unwrap_or(0);
        }
        self.limiter.delivered(d.record.file_bytes.unwrap_or(0));
    }

    /// Record the deliveries confirmed since the last call: pending →
    /// delivered (or stored, awaiting commitment), one atomic index batch
    /// for all of them.
    fn record_deliveries(&self) {
        let stored = std::mem::take(&mut *self.stored.lock().unwrap_or_else(|p| p.into_inner()));
        if !stored.is_empty()
            && let Err(e) = self.r.index.mark_stored_many(&self.target.name, &stored)
        {
            tracing::error!(error = %e, objects = stored.len(), "recording stored objects failed (they will be sent again)");
        }
        let confirmed = std::mem::take(&mut *self.confirmed_list());
        if confirmed.is_empty() {
            return;
        }
        if let Err(e) = self
            .r
            .index
            .mark_delivered_many(&self.target.name, &confirmed)
        {
            tracing::error!(error = %e, objects = confirmed.len(), "recording deliveries failed (they will be sent again)");
        }
    }

    /// The object's index record, or why it cannot be sent (refused: it
    /// never will be until an operator acts).
    fn object_record(&self, d: &Due) -> Result<pacs_mirror_store::index::ObjectRecord, Unsendable> {
        let record = self
            .r
            .index
            .object(&d.hash)?
            .ok_or_else(|| Unsendable::NotIndexed(hash_hex(&d.hash)))?;
        if let Some(at) = record.evicted_at_ms {
            return Err(Unsendable::Evicted(at));
        }
        Ok(record)
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
