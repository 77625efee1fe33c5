//! Storage commitment, SCU role: a DICOM target with `storage_commitment`
//! counts an object delivered only once the mirror reports it committed
//! (PS3.4 J.3, Push Model).
//!
//! The target's senders move each object the mirror answered with Success
//! to *stored* (`pacs_mirror_store::index::commitment`). The target's
//! commitment worker ([`run`]) then:
//! - asks for what is stored and not asked for yet, in requests of at most
//!   [`REQUEST_MAX`] objects: the transaction is written to the index
//!   first (so it survives a restart), then the N-ACTION goes out on an
//!   association of its own; the worker listens on it for
//!   [`SAME_ASSOCIATION_WAIT`] for a report there, then releases (most
//!   mirrors, Orthanc among them, report on a new association to our AE:
//!   the listener hands those to [`Commitments::on_report`]);
//! - asks again, under a new Transaction UID, for a transaction without a
//!   report after the target's `commitment_timeout_secs`; once a request
//!   has gone unanswered [`ALERT_AFTER_REQUESTS`] times the monitor's
//!   `commitment_overdue` alert fires (the rows stay stored, never
//!   delivered).
//!
//! A report is applied only for an open transaction of a target whose
//! remote AE is the report's calling AE (or on the worker's own
//! association): committed → delivered, failed → pending again (sent
//! again, then dead-lettered after `refused_attempts`), unmentioned → asked
//! again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use pacs_mirror_dicom::commitment::{self, Report, Request, SopRef};
use pacs_mirror_dicom::dimse::{CommandField, Status};
use pacs_mirror_dicom::scu::{AssociationRequest, Inbound, Peer, Scu, ScuError};
use pacs_mirror_store::index::commitment::Applied;
use pacs_mirror_store::index::{Index, IndexError, ObjectId};
use tokio_util::sync::CancellationToken;

/// Objects asked for in one request at most.
pub const REQUEST_MAX: usize = 1000;
/// How long the worker listens on its request's association for a report.
pub const SAME_ASSOCIATION_WAIT: Duration = Duration::from_secs(2);
/// Requests of one transaction without a report before the alert fires.
pub const ALERT_AFTER_REQUESTS: u32 = 3;
/// How often the worker looks for work when nothing wakes it.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// One target with storage commitment.
#[derive(Debug, Clone)]
pub struct CommitTarget {
    /// The target's name.
    pub name: String,
    /// The mirror.
    pub peer: Peer,
    /// How long a request waits for its report.
    pub timeout: Duration,
    /// Attempts before an object the mirror will not commit is
    /// dead-lettered.
    pub refused_attempts: u32,
}

/// Why a report is refused.
#[derive(Debug, thiserror::Error)]
pub enum ReportRefused {
    /// No open transaction has this UID.
    #[error("no open storage commitment transaction {0}")]
    UnknownTransaction(String),
    /// The transaction belongs to a target whose mirror is another AE.
    #[error("transaction {uid} was not asked of {calling_ae}")]
    WrongAe {
        /// The transaction.
        uid: String,
        /// Who reported.
        calling_ae: String,
    },
    /// The index failed.
    #[error(transparent)]
    Index(#[from] IndexError),
}

/// The commitment state of every target with storage commitment, shared
/// by their workers and the listeners.
pub struct Commitments {
    index: Index,
    targets: HashMap<String, CommitTarget>,
}

impl Commitments {
    /// For these targets.
    pub fn new(index: Index, targets: Vec<CommitTarget>) -> Arc<Self> {
        Arc::new(Commitments {
            index,
            targets: targets.into_iter().map(|t| (t.name.clone(), t)).collect(),
        })
    }

    /// Whether any target asks for commitment.
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// Apply a report from `calling_ae` (None: on our own request's
    /// association, whose peer is known).
    pub fn on_report(
        &self,
        calling_ae: Option<&str>,
        report: &Report,
    ) -> Result<Applied, ReportRefused> {
        let uid = &report.transaction_uid;
        let t = self
            .index
            .transaction(uid)?
            .ok_or_else(|| ReportRefused::UnknownTransaction(uid.clone()))?;
        let target = self
            .targets
            .get(&t.target)
            .ok_or_else(|| ReportRefused::UnknownTransaction(uid.clone()))?;
        if let Some(ae) = calling_ae
            && ae.trim() != target.peer.called_ae.trim()
        {
            return Err(ReportRefused::WrongAe {
                uid: uid.clone(),
                calling_ae: ae.to_string(),
            });
        }
        let committed: Vec<String> = report
            .committed
            .iter()
            .map(|r| r.instance_uid.clone())
            .collect();
        let failed: Vec<(String, u16)> = report
            .failed
            .iter()
            .map(|(r, why)| (r.instance_uid.clone(), *why))
            .collect();
        let applied = self
            .index
            .apply_report(
                &t.target,
                uid,
                &committed,
                &failed,
                crate::unix_ms(),
                target.refused_attempts,
            )?
            .ok_or_else(|| ReportRefused::UnknownTransaction(uid.clone()))?;
        self.index.flush()?;
        tracing::info!(
            target = %t.target,
            transaction_uid = %uid,
            committed = applied.committed,
            resent = applied.resent,
            dead = applied.dead,
            unmentioned = applied.unmentioned,
            "storage commitment report applied"
        );
        Ok(applied)
    }
}

/// The commitment worker of `target`: ask, re-ask, until `shutdown`.
pub async fn run(commitments: Arc<Commitments>, target: String, shutdown: CancellationToken) {
    let Some(t) = commitments.targets.get(&target).cloned() else {
        return;
    };
    loop {
        if let Err(e) = pass(&commitments, &t).await {
            tracing::warn!(target = %t.name, error = %e, "storage commitment: the request did not go out (asked again later)");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(LOOK_EVERY) => {}
        }
    }
}

/// Why a request did not go out.
#[derive(Debug, thiserror::Error)]
enum PassError {
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Scu(#[from] ScuError),
    #[error("the mirror accepted no Storage Commitment Push Model context")]
    NoContext,
    #[error(transparent)]
    Codec(#[from] commitment::CommitmentError),
    #[error("the mirror answered the request with {0}")]
    Refused(Status),
}

/// One look: re-ask what timed out, ask for what is new.
async fn pass(c: &Commitments, t: &CommitTarget) -> Result<(), PassError> {
    let now = crate::unix_ms();
    let timeout_ms = t.timeout.as_millis() as u64;
    for (uid, tx) in c.index.open_transactions(&t.name)? {
        if tx.requested_at_ms.saturating_add(timeout_ms) > now {
            continue;
        }
        let new = new_transaction_uid();
        if !c.index.reissue_transaction(&uid, &new, now)? {
            continue;
        }
        tracing::warn!(target = %t.name, old = %uid, new = %new, requests = tx.requests + 1, "storage commitment: no report within {} s; asking again", t.timeout.as_secs());
        let refs = tx
            .objects
            .iter()
            .map(|o| SopRef {
                class_uid: o.sop_class_uid.clone(),
                instance_uid: o.sop_instance_uid.clone(),
            })
            .collect();
        request(c, t, &new, refs).await?;
    }
    loop {
        let waiting = c.index.awaiting_request(&t.name, REQUEST_MAX)?;
        if waiting.is_empty() {
            return Ok(());
        }
        let uid = new_transaction_uid();
        let hashes: Vec<ObjectId> = waiting.iter().map(|(h, _)| *h).collect();
        // Written (and flushed) before it is asked: a report can only name
        // a transaction the index knows.
        let listed = c.index.open_transaction(&t.name, &uid, &hashes, now)?;
        c.index.flush()?;
        if listed.is_empty() {
            return Ok(());
        }
        let refs = listed
            .iter()
            .map(|o| SopRef {
                class_uid: o.sop_class_uid.clone(),
                instance_uid: o.sop_instance_uid.clone(),
            })
            .collect();
        tracing::info!(target = %t.name, transaction_uid = %uid, objects = listed.len(), "storage commitment requested");
        request(c, t, &uid, refs).await?;
        if waiting.len() < REQUEST_MAX {
            return Ok(());
        }
    }
}

/// A Transaction UID of our own: `2.25.` and a random 122-bit number as an
/// integer (a version-4 UUID's worth of randomness, PS3.5 B.2).
fn new_transaction_uid() -> String {
    let n: u128 = rand::random::<u128>() >> 6;
    format!("2.25.{n}")
}

/// Send one N-ACTION and listen for a report on the same association.
async fn request(
    c: &Commitments,
    t: &CommitTarget,
    uid: &str,
    references: Vec<SopRef>,
) -> Result<(), PassError> {
    let rq = AssociationRequest {
        contexts: vec![commitment::presentation_context()],
        ..AssociationRequest::default()
    };
    let mut assoc = Scu::associate(&t.peer, &rq).await?;
    let result = request_on(c, &mut assoc, uid, references).await;
    match &result {
        Err(PassError::Scu(_)) => assoc.abort().await,
        _ => assoc.release().await,
    }
    result
}

async fn request_on(
    c: &Commitments,
    assoc: &mut Scu,
    uid: &str,
    references: Vec<SopRef>,
) -> Result<(), PassError> {
    let (pc, ts) = assoc
        .accepted_context(commitment::SOP_CLASS)
        .ok_or(PassError::NoContext)?;
    let data = Request {
        transaction_uid: uid.to_string(),
        references,
    }
    .encode(&ts)?;
    let id = assoc.message_id();
    assoc.send_command(pc, &commitment::n_action_rq(id)).await?;
    assoc.send_data(pc, &data).await?;
    let rsp = assoc.read_response(id).await?;
    let status = rsp
        .status()
        .map_err(|e| PassError::Scu(assoc.protocol(e.to_string())))?;
    if status.is_failure() {
        return Err(PassError::Refused(status));
    }
    // A report on this association, if the mirror sends it here.
    let _ = tokio::time::timeout(SAME_ASSOCIATION_WAIT, report_here(c, assoc, pc, &ts)).await;
    Ok(())
}

/// Take one N-EVENT-REPORT on our association and answer it.
async fn report_here(c: &Commitments, assoc: &mut Scu, pc: u8, ts: &str) -> Result<(), PassError> {
    let cmd = loop {
        if let Inbound::Command { command, .. } = assoc.receive_pdv().await?
            && command.command_field().ok() == Some(CommandField::NEventReportRq)
        {
            break command;
        }
    };
    let mut data = Vec::new();
    if cmd.has_data_set().unwrap_or(false) {
        loop {
            match assoc.receive_pdv().await? {
                Inbound::Data { bytes, last, .. } => {
                    if data.len() + bytes.len() > commitment::MAX_DATA_SET_BYTES {
                        return Err(PassError::Codec(commitment::CommitmentError::TooLarge(
                            data.len() + bytes.len(),
                        )));
                    }
                    data.extend_from_slice(&bytes);
                    if last {
                        break;
                    }
                }
                Inbound::Command { .. } => {
                    return Err(PassError::Scu(
                        assoc.protocol("a command in the middle of a report".into()),
                    ));
                }
            }
        }
    }
    let status = match Report::decode(&data, ts) {
        Ok(report) => match c.on_report(None, &report) {
            Ok(_) => Status::Success,
            Err(e) => {
                tracing::warn!(error = %e, "storage commitment report refused");
                commitment::status::PROCESSING_FAILURE
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "storage commitment report unreadable");
            commitment::status::PROCESSING_FAILURE
        }
    };
    let rsp = commitment::n_event_report_rsp(&cmd, status)
        .map_err(|e| PassError::Scu(assoc.protocol(e.to_string())))?;
    assoc.send_command(pc, &rsp).await?;
    Ok(())
}
