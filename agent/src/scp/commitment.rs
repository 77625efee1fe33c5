//! Storage commitment, SCP role (PS3.4 J.3, Push Model): a sender asks
//! whether the agent has taken responsibility for objects it sent, and the
//! agent answers from its index.
//!
//! # What "committed" means here
//! An object is reported committed when the index holds a version of that
//! SOP instance with the requested SOP class (any version: a re-sent object
//! with other bytes counts too) whose spool file retention has not removed.
//! The index row is written only after the spool file, its name and the row
//! itself are durable (the store's commit protocol), so a committed report
//! never names an object a crash could lose. Everything else is reported
//! failed: no version held is 0112H (no such object instance), a version
//! held under another SOP class 0119H (class/instance conflict), an index
//! that cannot be read 0110H (processing failure).
//!
//! # Where the report goes
//! The N-ACTION is answered at once; the report follows on the same
//! association if the sender keeps it open for [`SAME_ASSOCIATION_WAIT`]
//! after the N-ACTION-RSP (a sender that waits for it there), else on a new
//! association the agent opens to the sender's AE, which must then be a
//! configured remote AE (`[[remote_device]]`), proposing the SCP role of the
//! Storage Commitment SOP class. A new association is tried
//! [`REPORT_ATTEMPTS`] times ([`REPORT_RETRY`] apart, doubled each time);
//! the sender can always ask again with the same Transaction UID.
//!
//! # A sender that wants the remote copy first
//! A sender's `commit_after_delivery_to` (its remote AE) names targets: an
//! object is then reported committed only once it is also delivered to
//! each of them (for a target with storage commitment: committed by its
//! mirror), so a modality deletes its copy only when the remote copy
//! exists. Such a report waits (looked at every second, in memory) until
//! nothing it names is still on its way, at most `commit_wait_secs`; what
//! is still not delivered then is reported failed (0110H), and always on a
//! new association.
//!
//! # Crash behaviour
//! Nothing is written: a report not delivered before a crash is lost, and
//! the sender's request times out (its own timeout); asking again gives the
//! same answer, since it is computed from the durable index.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use pacs_mirror_dicom::commitment::{self, Report, Request, SopRef, reason};
use pacs_mirror_dicom::dimse::Status;
use pacs_mirror_dicom::scu::{AssociationRequest, Peer, Scu, ScuError};
use pacs_mirror_store::index::{Index, parse_hash};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::store::IngestCounters;

/// How long the agent waits, after answering an N-ACTION, for the sender
/// to release before it reports on the same association.
pub const SAME_ASSOCIATION_WAIT: Duration = Duration::from_millis(500);
/// New associations tried to deliver one report.
pub const REPORT_ATTEMPTS: u32 = 4;
/// The wait before the second attempt (doubled for each later one).
pub const REPORT_RETRY: Duration = Duration::from_secs(5);
/// How often a report that waits for deliveries looks again.
const WAITING_LOOK_EVERY: Duration = Duration::from_secs(1);

/// Where the reports of the mirrors the agent asked for commitment go (the
/// SCU role, `crate::replicate::commit`): a mirror that reports on a new
/// association reaches the listener, which hands the report over.
pub trait ReportSink: Send + Sync {
    /// Apply a report from `calling_ae`; Err says why it is refused.
    fn on_report(&self, calling_ae: &str, report: &Report) -> Result<(), String>;
}

/// How to reach a sender's AE for a report: (their AE title, our AE title)
/// → the peer, if it is a configured remote AE.
pub type Resolver = Box<dyn Fn(&str, &str) -> Option<Peer> + Send + Sync>;

/// What a sender's commitment waits for beyond the spool: delivery to
/// these targets (`commit_after_delivery_to`), for at most this long.
#[derive(Debug, Clone, Default)]
pub struct SenderPolicy {
    /// Targets the objects must be delivered to (committed, for a target
    /// with storage commitment).
    pub after_delivery_to: Vec<String>,
    /// How long a report waits for them.
    pub wait: Duration,
}

/// The storage commitment SCP shared by the listeners.
pub struct CommitmentScp {
    index: Index,
    counters: Arc<super::Ingest>,
    resolve: Resolver,
    policies: std::collections::HashMap<String, SenderPolicy>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

/// One report to deliver: to whom, from which of our AEs.
#[derive(Debug, Clone)]
pub struct Pending {
    /// The requester's AE title.
    pub their_ae: String,
    /// The AE title the request was addressed to.
    pub our_ae: String,
    /// The report.
    pub report: Report,
    /// When the sender's policy makes the report wait for deliveries: the
    /// request (evaluated again until every object is delivered) and the
    /// deadline.
    pub waiting: Option<(Request, tokio::time::Instant)>,
}

/// What a request's objects are, now.
pub struct Answer {
    /// The report as it stands (objects still waiting for a delivery are
    /// in neither list).
    pub report: Report,
    /// Objects held here but not delivered yet to the targets the sender's
    /// policy names.
    pub waiting: usize,
}

/// How one referenced object stands.
enum Standing {
    Committed,
    Waiting,
    Failed(u16),
}

impl CommitmentScp {
    /// The SCP; reports on new associations run on `tracker` until
    /// `shutdown`.
    pub fn new(
        index: Index,
        ingest: Arc<super::Ingest>,
        resolve: Resolver,
        policies: std::collections::HashMap<String, SenderPolicy>,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        CommitmentScp {
            index,
            counters: ingest,
            resolve,
            policies,
            tracker,
            shutdown,
        }
    }

    /// The policy of a sender (by calling AE title).
    pub fn policy(&self, calling_ae: &str) -> SenderPolicy {
        self.policies
            .get(calling_ae.trim())
            .cloned()
            .unwrap_or_default()
    }

    fn counters(&self) -> &IngestCounters {
        &self.counters.counters
    }

    /// How `request` stands now, from the index, for a sender with
    /// `policy` (blocking reads: call it off the async threads,
    /// [`CommitmentScp::answer_async`]). `last`: the deadline passed, so
    /// what still waits is reported failed.
    pub fn answer(&self, request: &Request, policy: &SenderPolicy, last: bool) -> Answer {
        let mut committed = Vec::new();
        let mut failed = Vec::new();
        let mut waiting = 0;
        for r in &request.references {
            match self.standing(r, policy) {
                Ok(Standing::Committed) => committed.push(r.clone()),
                Ok(Standing::Waiting) if last => {
                    failed.push((r.clone(), reason::PROCESSING_FAILURE));
                }
                Ok(Standing::Waiting) => waiting += 1,
                Ok(Standing::Failed(why)) => failed.push((r.clone(), why)),
                Err(e) => {
                    tracing::error!(sop_instance_uid = %r.instance_uid.escape_debug(), error = %e, "storage commitment: the index cannot be read");
                    failed.push((r.clone(), reason::PROCESSING_FAILURE));
                }
            }
        }
        Answer {
            report: Report {
                transaction_uid: request.transaction_uid.clone(),
                committed,
                failed,
            },
            waiting,
        }
    }

    /// The report is final as it stands: counted.
    pub fn final_report(&self, report: &Report) {
        let c = self.counters();
        c.commitment_requests.fetch_add(1, Ordering::Relaxed);
        c.commitment_committed
            .fetch_add(report.committed.len() as u64, Ordering::Relaxed);
        c.commitment_failed
            .fetch_add(report.failed.len() as u64, Ordering::Relaxed);
    }

    /// [`CommitmentScp::answer`] on the blocking pool.
    pub async fn answer_async(
        self: &Arc<Self>,
        request: Request,
        policy: SenderPolicy,
        last: bool,
    ) -> Answer {
        let me = self.clone();
        let uid = request.transaction_uid.clone();
        let refs = request.references.clone();
        match tokio::task::spawn_blocking(move || me.answer(&request, &policy, last)).await {
            Ok(answer) => answer,
            Err(e) => {
                tracing::error!(error = %e, "storage commitment: answering failed");
                Answer {
                    report: Report {
                        transaction_uid: uid,
                        committed: Vec::new(),
                        failed: refs
                            .into_iter()
                            .map(|r| (r, reason::PROCESSING_FAILURE))
                            .collect(),
                    },
                    waiting: 0,
                }
            }
        }
    }

    /// How `r` stands: committed (held with its class, and delivered where
    /// the policy says), waiting (held, not delivered there yet), or failed
    /// with its reason.
    fn standing(
        &self,
        r: &SopRef,
        policy: &SenderPolicy,
    ) -> Result<Standing, pacs_mirror_store::index::IndexError> {
        let versions = self.index.versions(&r.instance_uid)?;
        let mut other_class = false;
        let mut held_here = false;
        for v in &versions {
            let Ok(hash) = parse_hash(&v.blake3) else {
                continue;
            };
            let held = self
                .index
                .object(&hash)?
                .is_some_and(|o| o.evicted_at_ms.is_none());
            if !held {
                continue;
            }
            if v.sop_class_uid != r.class_uid {
                other_class = true;
                continue;
            }
            held_here = true;
            let mut everywhere = true;
            for t in &policy.after_delivery_to {
                if !self.index.is_delivered(t, &hash)? {
                    everywhere = false;
                    break;
                }
            }
            if everywhere {
                return Ok(Standing::Committed);
            }
        }
        Ok(if held_here {
            Standing::Waiting
        } else if other_class {
            Standing::Failed(reason::CLASS_INSTANCE_CONFLICT)
        } else {
            Standing::Failed(reason::NO_SUCH_OBJECT_INSTANCE)
        })
    }

    /// Deliver `pending` on a new association, in the background.
    pub fn deliver_later(self: &Arc<Self>, pending: Pending) {
        let me = self.clone();
        self.tracker.spawn(async move { me.deliver(pending).await });
    }

    async fn deliver(&self, mut p: Pending) {
        if let Some((request, deadline)) = p.waiting.take() {
            // The sender's policy: wait until every object it holds here is
            // delivered where the policy says, or the deadline.
            let policy = self.policy(&p.their_ae);
            loop {
                let last = tokio::time::Instant::now() >= deadline;
                let answer = self.answer(&request, &policy, last);
                if answer.waiting == 0 {
                    p.report = answer.report;
                    break;
                }
                tokio::select! {
                    _ = self.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(WAITING_LOOK_EVERY) => {}
                }
            }
            self.final_report(&p.report);
        }
        let uid = p.report.transaction_uid.clone();
        let Some(peer) = (self.resolve)(&p.their_ae, &p.our_ae) else {
            self.counters()
                .commitment_reports_undelivered
                .fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                calling_ae = %p.their_ae.escape_debug(),
                transaction_uid = %uid.escape_debug(),
                "storage commitment: the requester released the association before the report, and {} is not a configured remote AE: the report cannot be sent (add it as a [[remote_device]] network_ae with association_acceptor = true)",
                p.their_ae.escape_debug()
            );
            return;
        };
        let mut wait = REPORT_RETRY;
        for attempt in 1..=REPORT_ATTEMPTS {
            match send_report(&peer, &p.report).await {
                Ok(()) => {
                    self.counters()
                        .commitment_reports_sent
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::info!(
                        called_ae = %peer.called_ae.escape_debug(),
                        transaction_uid = %uid.escape_debug(),
                        committed = p.report.committed.len(),
                        failed = p.report.failed.len(),
                        "storage commitment reported on a new association"
                    );
                    return;
                }
                Err(e) if attempt < REPORT_ATTEMPTS => {
                    tracing::warn!(called_ae = %peer.called_ae.escape_debug(), transaction_uid = %uid.escape_debug(), attempt, error = %e, "storage commitment report not delivered; retrying in {} s", wait.as_secs());
                    tokio::select! {
                        _ = self.shutdown.cancelled() => break,
                        _ = tokio::time::sleep(wait) => {}
                    }
                    wait *= 2;
                }
                Err(e) => {
                    tracing::error!(called_ae = %peer.called_ae.escape_debug(), transaction_uid = %uid.escape_debug(), error = %e, "storage commitment report not delivered after {REPORT_ATTEMPTS} attempts: the requester must ask again");
                }
            }
        }
        self.counters()
            .commitment_reports_undelivered
            .fetch_add(1, Ordering::Relaxed);
    }
}

/// Why a report could not be delivered.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Association or transfer.
    #[error(transparent)]
    Scu(#[from] ScuError),
    /// The requester accepted no Storage Commitment context with our SCP
    /// role.
    #[error("the requester accepted no Storage Commitment Push Model context")]
    NoContext,
    /// The report cannot be encoded.
    #[error(transparent)]
    Encode(#[from] commitment::CommitmentError),
    /// The requester answered the N-EVENT-REPORT with a failure.
    #[error("the requester answered the report with status {0}")]
    Refused(Status),
}

/// One report on a new association: associate (SCP role proposed), send,
/// read the N-EVENT-REPORT-RSP, release.
pub async fn send_report(peer: &Peer, report: &Report) -> Result<(), ReportError> {
    let request = AssociationRequest {
        contexts: vec![commitment::presentation_context()],
        scp_roles: vec![commitment::SOP_CLASS.to_string()],
        max_pdu: None,
    };
    let mut scu = Scu::associate(peer, &request).await?;
    let result = report_on(&mut scu, report).await;
    match &result {
        Err(ReportError::Scu(_)) => scu.abort().await,
        _ => scu.release().await,
    }
    result
}

async fn report_on(scu: &mut Scu, report: &Report) -> Result<(), ReportError> {
    let (pc, ts) = scu
        .accepted_context(commitment::SOP_CLASS)
        .ok_or(ReportError::NoContext)?;
    let data = report.encode(&ts)?;
    let id = scu.message_id();
    scu.send_command(pc, &commitment::n_event_report_rq(id, report.event_type()))
        .await?;
    scu.send_data(pc, &data).await?;
    let rsp = scu.read_response(id).await?;
    let status = rsp
        .status()
        .map_err(|e| ReportError::Scu(scu.protocol(e.to_string())))?;
    if status.is_failure() {
        return Err(ReportError::Refused(status));
    }
    Ok(())
}
