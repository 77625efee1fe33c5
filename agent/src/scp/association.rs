//! One accepted association: the DIMSE message loop.
//!
//! PDVs are reassembled by the DICOM layer's one reassembler
//! (`pacs_mirror_dicom::reassembly`: command fragments collected up to a
//! bound and decoded); data fragments are handed to the [`Incoming`] store
//! one by one, never collected. Each C-STORE goes to its sink
//! ([`super::receive`]): ingest, or the drill inbox for a drill receiver.
//! Any protocol violation (data without a command, a context that was not
//! accepted, a command in the middle of a data set, an undecodable command)
//! aborts the association; an in-flight store is then discarded. The
//! A-ABORT names the service provider with the PS3.8 §9.3.8 reason:
//! unrecognized PDU (1) for an unknown PDU type, unexpected PDU (2) for one
//! wrong in this state (a second A-ASSOCIATE-RQ…), invalid PDU parameter
//! value (6) for a malformed PDU (lengths that do not add up, a PDU larger
//! than we announced) or a PDV on a context that was not accepted, and
//! reason not specified (0) otherwise (DIMSE-level violations, idle timeout,
//! shutdown).
//!
//! Every store failure is logged with the fields `calling_ae` and `peer`
//! (address:port) on the event itself, not only on the enclosing span, so
//! that a JSON log line (`--log-format json`) names its sender.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dicom_ul::Pdu;
use dicom_ul::association::AsyncServerAssociation;
use dicom_ul::pdu::{AbortRQServiceProviderReason, AbortRQSource, PDataValue, PDataValueType};
use tokio_util::sync::CancellationToken;

use super::commitment::{CommitmentScp, Pending, SAME_ASSOCIATION_WAIT};
use super::inbox::DrillInbox;
use super::receive::{Failure, Incoming, Origin, context_refusal};
use super::store::Ingest;
use pacs_mirror_dicom::commitment::{self, Report, Request};
use pacs_mirror_dicom::dimse::{self, CStoreRq, CommandField, CommandSet, Status};
use pacs_mirror_dicom::presentation;
use pacs_mirror_dicom::reassembly::{Message, Reassembler, ReassemblyError};
use pacs_mirror_store::index::CommitOutcome;

/// The stream under an association: TCP, or TLS over TCP.
pub trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

/// What an association needs from the listener.
pub struct AssociationContext {
    /// The store path (None: this listener stores nothing, e.g. the `drill`
    /// command's drill receiver).
    pub ingest: Option<Arc<Ingest>>,
    /// Where the C-STOREs of drill receivers go.
    pub drill_inbox: Option<Arc<DrillInbox>>,
    /// The local AEs that are drill receivers.
    pub drill_aes: HashSet<String>,
    /// SOP classes each local AE accepts (None: every standard storage class).
    pub accepted_classes: std::collections::HashMap<String, Option<HashSet<String>>>,
    /// Idle timeout.
    pub idle_timeout: Duration,
    /// The storage commitment SCP (None: commitment requests are refused,
    /// e.g. on a listener that stores nothing).
    pub commitment: Option<Arc<CommitmentScp>>,
    /// Reports from the mirrors the agent asked (SCU role); None: an
    /// N-EVENT-REPORT is refused.
    pub reports: Option<Arc<dyn super::commitment::ReportSink>>,
}

/// Why the association is aborted by us: the peer broke the protocol, or a
/// response could not be sent.
#[derive(Debug, thiserror::Error)]
enum Violation {
    #[error("PDV on presentation context {0}, which was not accepted")]
    ContextNotAccepted(u8),
    #[error("command received in the middle of a data set")]
    CommandInDataSet,
    #[error(transparent)]
    Reassembly(#[from] ReassemblyError),
    #[error(transparent)]
    Command(#[from] dimse::DecodeError),
    #[error("C-STORE-RQ without a data set")]
    StoreWithoutDataSet,
    #[error("data PDV without a matching command")]
    DataWithoutCommand,
    #[error("sending a response failed: {0}")]
    Send(#[source] dicom_ul::association::Error),
}

enum End {
    /// The peer released (we answered) or closed.
    Done,
    /// We abort (protocol violation, timeout, shutdown): the A-ABORT reason
    /// and, for the log, why.
    Abort(AbortRQServiceProviderReason, String),
}

enum Inbound {
    /// No data set in progress (a command set may be, in the reassembler).
    Idle,
    /// Receiving a C-STORE's data set.
    Store(Box<Incoming<Ingest>>),
    /// Receiving a C-STORE's data set for a restore drill (never the spool).
    DrillStore(Box<Incoming<DrillInbox>>),
    /// Draining the data set of a C-STORE refused at its command, by no
    /// destination (a drill receiver with no drill running, a listener
    /// that stores nothing); answered with `failure` at its last fragment.
    Refused {
        rq: CStoreRq,
        pc_id: u8,
        failure: Failure,
    },
    /// Draining the data set of a request we refused (not a C-STORE).
    Discard { pc_id: u8 },
    /// Receiving a storage commitment request's data set (N-ACTION), at
    /// most [`commitment::MAX_DATA_SET_BYTES`]; answered at its last
    /// fragment (with `refusal` if it is not one we take).
    Commitment {
        rq: CommandSet,
        pc_id: u8,
        transfer_syntax: String,
        bytes: Vec<u8>,
        too_large: bool,
        refusal: Option<Status>,
        /// An N-EVENT-REPORT from a mirror (SCU role), not an N-ACTION.
        is_report: bool,
    },
}

/// Storage commitment reports owed on this association.
#[derive(Default)]
struct Reports {
    /// Answered, to report once the sender has not released for
    /// [`SAME_ASSOCIATION_WAIT`] (at that instant).
    waiting: Option<(Pending, u8, String, tokio::time::Instant)>,
    /// Sent here, its N-EVENT-REPORT-RSP not received yet: (message ID,
    /// the report).
    sent: Option<(u16, Pending)>,
    /// Our Message IDs on this association.
    next_id: u16,
}

impl Reports {
    /// What is still owed when the association ends: delivered on a new
    /// association.
    fn owed(self) -> Vec<Pending> {
        self.waiting
            .map(|(p, ..)| p)
            .into_iter()
            .chain(self.sent.map(|(_, p)| p))
            .collect()
    }
}

/// Serve one association until release, abort, idle timeout or shutdown.
/// The caller instruments it with a span naming the peer and calling AE.
pub async fn serve<S: Stream>(
    mut assoc: AsyncServerAssociation<S>,
    ctx: Arc<AssociationContext>,
    peer: SocketAddr,
    shutdown: CancellationToken,
) {
    let calling_ae = dicom_ul::association::Association::peer_ae_title(&assoc)
        .trim()
        .to_string();
    let called_ae = assoc.called_ae_title().trim().to_string();
    tracing::debug!(called_ae = %called_ae.escape_debug(), contexts = assoc.presentation_contexts().len(), "association accepted");
    if let Some(ingest) = &ctx.ingest {
        ingest
            .activity
            .association(&calling_ae, peer.ip(), crate::unix_ms());
    }
    let origin = Origin {
        calling_ae: calling_ae.clone(),
        peer,
    };
    let mut inbound = Inbound::Idle;
    let mut reassembly = Reassembler::new();
    let mut reports = Reports::default();
    let end = loop {
        let idle = matches!(inbound, Inbound::Idle) && !reassembly.in_command();
        let report_at = reports.waiting.as_ref().map(|w| w.3);
        let pdu = tokio::select! {
            biased;
            _ = shutdown.cancelled(), if idle => break End::Abort(
                AbortRQServiceProviderReason::ReasonNotSpecified,
                "agent shutting down".into(),
            ),
            _ = sleep_until_opt(report_at), if idle && report_at.is_some() => {
                if let Err(e) = report_here(&mut assoc, &mut reports).await {
                    break End::Abort(AbortRQServiceProviderReason::ReasonNotSpecified, e.to_string());
                }
                continue;
            }
            r = tokio::time::timeout(ctx.idle_timeout, assoc.receive()) => r,
        };
        let pdu = match pdu {
            Err(_) => {
                break End::Abort(
                    AbortRQServiceProviderReason::ReasonNotSpecified,
                    format!("no PDU for {} s (idle timeout)", ctx.idle_timeout.as_secs()),
                );
            }
            Ok(Err(dicom_ul::association::Error::ConnectionClosed { .. })) => {
                if !idle {
                    tracing::warn!("peer closed the connection in the middle of a message");
                }
                break End::Done;
            }
            Ok(Err(e)) => break End::Abort(receive_failure(&e), format!("receive failed: {e}")),
            Ok(Ok(pdu)) => pdu,
        };
        match pdu {
            Pdu::PData { data } => {
                let mut violation = None;
                for pdv in data {
                    let pc_id = pdv.presentation_context_id;
                    if !context_accepted(&assoc, pc_id) {
                        violation = Some((
                            AbortRQServiceProviderReason::InvalidPduParameter,
                            format!("PDV on presentation context {pc_id}, which was not accepted"),
                        ));
                        break;
                    }
                    if let Err(v) = on_pdv(
                        &mut assoc,
                        &ctx,
                        &origin,
                        &called_ae,
                        &mut inbound,
                        &mut reassembly,
                        &mut reports,
                        pdv,
                    )
                    .await
                    {
                        violation = Some((
                            AbortRQServiceProviderReason::ReasonNotSpecified,
                            v.to_string(),
                        ));
                        break;
                    }
                }
                if let Some((reason, v)) = violation {
                    break End::Abort(reason, v);
                }
            }
            Pdu::ReleaseRQ => {
                if !idle {
                    tracing::warn!("release requested in the middle of a message");
                }
                if let Err(e) = assoc.send(&Pdu::ReleaseRP).await {
                    tracing::debug!(error = %e, "sending A-RELEASE-RP failed");
                }
                break End::Done;
            }
            Pdu::AbortRQ { source } => {
                tracing::info!(?source, "peer aborted the association");
                break End::Done;
            }
            other => {
                let reason = if matches!(other, Pdu::Unknown { .. }) {
                    AbortRQServiceProviderReason::UnrecognizedPdu
                } else {
                    AbortRQServiceProviderReason::UnexpectedPdu
                };
                break End::Abort(
                    reason,
                    format!("unexpected PDU: {}", other.short_description()),
                );
            }
        }
    };
    match inbound {
        Inbound::Store(store) => {
            tracing::warn!(
                calling_ae = %origin.calling_ae.escape_debug(),
                peer = %origin.peer,
                sop_instance_uid = %store.rq.sop_instance_uid.escape_debug(),
                "association ended during a C-STORE; the partial object is discarded (never acknowledged)"
            );
            store.abandon();
        }
        Inbound::DrillStore(store) => {
            tracing::warn!(
                calling_ae = %origin.calling_ae.escape_debug(),
                peer = %origin.peer,
                sop_instance_uid = %store.rq.sop_instance_uid.escape_debug(),
                "association ended during a drill C-STORE; the partial object is discarded"
            );
            store.abandon();
        }
        _ => {}
    }
    // Storage commitment reports not delivered here go on a new
    // association to the requester.
    if let Some(scp) = &ctx.commitment {
        for p in reports.owed() {
            tracing::debug!(transaction_uid = %p.report.transaction_uid.escape_debug(), "storage commitment report goes on a new association");
            scp.deliver_later(p);
        }
    }
    match end {
        End::Done => tracing::debug!("association ended"),
        End::Abort(reason, why) => {
            tracing::warn!(reason = %why.escape_debug(), "aborting association");
            // dicom-ul's own abort() always says "reason not specified".
            let abort = Pdu::AbortRQ {
                source: AbortRQSource::ServiceProvider(reason),
            };
            let _ = assoc.send(&abort).await;
            let _ = tokio::io::AsyncWriteExt::shutdown(assoc.inner_stream()).await;
        }
    }
}

/// The A-ABORT reason for a PDU that could not be received: invalid PDU
/// parameter value for a malformed one, not specified for an I/O failure.
fn receive_failure(e: &dicom_ul::association::Error) -> AbortRQServiceProviderReason {
    match e {
        dicom_ul::association::Error::ReceivePdu { source, .. }
            if !matches!(source, dicom_ul::pdu::ReadError::ReadPdu { .. }) =>
        {
            AbortRQServiceProviderReason::InvalidPduParameter
        }
        _ => AbortRQServiceProviderReason::ReasonNotSpecified,
    }
}

/// Whether presentation context `pc_id` was accepted.
fn context_accepted<S: Stream>(assoc: &AsyncServerAssociation<S>, pc_id: u8) -> bool {
    presentation::accepted(assoc.presentation_contexts(), pc_id).is_some()
}

/// Handle one PDV. `Err` is a protocol violation (abort).
#[allow(clippy::too_many_arguments)]
async fn on_pdv<S: Stream>(
    assoc: &mut AsyncServerAssociation<S>,
    ctx: &AssociationContext,
    origin: &Origin,
    called_ae: &str,
    inbound: &mut Inbound,
    reassembly: &mut Reassembler,
    reports: &mut Reports,
    pdv: PDataValue,
) -> Result<(), Violation> {
    let pc_id = pdv.presentation_context_id;
    let (abstract_syntax, transfer_syntax) =
        presentation::accepted(assoc.presentation_contexts(), pc_id)
            .ok_or(Violation::ContextNotAccepted(pc_id))?;
    if pdv.value_type == PDataValueType::Command {
        match std::mem::replace(inbound, Inbound::Idle) {
            Inbound::Idle => {}
            Inbound::Store(store) => {
                store.abandon();
                return Err(Violation::CommandInDataSet);
            }
            Inbound::DrillStore(store) => {
                store.abandon();
                return Err(Violation::CommandInDataSet);
            }
            Inbound::Discard { .. } | Inbound::Refused { .. } | Inbound::Commitment { .. } => {
                return Err(Violation::CommandInDataSet);
            }
        }
    } else if reassembly.in_command() {
        return Err(Violation::DataWithoutCommand);
    }
    match reassembly.push(pdv)? {
        Message::Partial => Ok(()),
        Message::Command { command, .. } => {
            *inbound = on_command(
                assoc,
                ctx,
                origin,
                called_ae,
                pc_id,
                &abstract_syntax,
                &transfer_syntax,
                &command,
                reports,
            )
            .await?;
            Ok(())
        }
        Message::Data { pc_id, bytes, last } => match inbound {
            Inbound::Store(store) if store.pc_id == pc_id => {
                store.data(&bytes);
                if last && let Inbound::Store(store) = std::mem::replace(inbound, Inbound::Idle) {
                    let (rq, pc, result) = store.finish().await;
                    respond_store(assoc, origin, &rq, pc, result).await?;
                }
                Ok(())
            }
            Inbound::DrillStore(store) if store.pc_id == pc_id => {
                store.data(&bytes);
                if last
                    && let Inbound::DrillStore(store) = std::mem::replace(inbound, Inbound::Idle)
                {
                    let (rq, pc, result) = store.finish().await;
                    respond_drill_store(assoc, origin, called_ae, &rq, pc, result).await?;
                }
                Ok(())
            }
            Inbound::Discard { pc_id: id } if *id == pc_id => {
                if last {
                    *inbound = Inbound::Idle;
                }
                Ok(())
            }
            Inbound::Refused { pc_id: id, .. } if *id == pc_id => {
                if last
                    && let Inbound::Refused { rq, pc_id, failure } =
                        std::mem::replace(inbound, Inbound::Idle)
                {
                    respond_drill_store(assoc, origin, called_ae, &rq, pc_id, Err(failure)).await?;
                }
                Ok(())
            }
            Inbound::Commitment {
                pc_id: id,
                bytes: collected,
                too_large,
                ..
            } if *id == pc_id => {
                if collected.len() + bytes.len() > commitment::MAX_DATA_SET_BYTES {
                    *too_large = true;
                    *collected = Vec::new();
                } else if !*too_large {
                    collected.extend_from_slice(&bytes);
                }
                if last
                    && let Inbound::Commitment {
                        rq,
                        pc_id,
                        transfer_syntax,
                        bytes,
                        too_large,
                        refusal,
                        is_report,
                    } = std::mem::replace(inbound, Inbound::Idle)
                {
                    let asked = Asked {
                        rq,
                        pc_id,
                        transfer_syntax,
                        bytes,
                        too_large,
                        refusal,
                    };
                    if is_report {
                        take_report(assoc, ctx, origin, asked).await?;
                    } else {
                        answer_commitment(assoc, ctx, origin, called_ae, reports, asked).await?;
                    }
                }
                Ok(())
            }
            _ => Err(Violation::DataWithoutCommand),
        },
    }
}

#[allow(clippy::too_many_arguments)]
async fn on_command<S: Stream>(
    assoc: &mut AsyncServerAssociation<S>,
    ctx: &AssociationContext,
    origin: &Origin,
    called_ae: &str,
    pc_id: u8,
    abstract_syntax: &str,
    transfer_syntax: &str,
    cmd: &CommandSet,
    reports: &mut Reports,
) -> Result<Inbound, Violation> {
    let field = cmd.command_field()?;
    let has_data = cmd.has_data_set()?;
    match field {
        CommandField::NActionRq
            if ctx.commitment.is_some() && has_data && !ctx.drill_aes.contains(called_ae) =>
        {
            let refusal = if abstract_syntax != commitment::SOP_CLASS {
                Some(Status::SopClassNotSupported)
            } else {
                commitment::check_n_action(cmd)?
            };
            Ok(Inbound::Commitment {
                rq: cmd.clone(),
                pc_id,
                transfer_syntax: transfer_syntax.to_string(),
                bytes: Vec::new(),
                too_large: false,
                refusal,
                is_report: false,
            })
        }
        CommandField::NEventReportRq if ctx.reports.is_some() && has_data => {
            let refusal =
                (abstract_syntax != commitment::SOP_CLASS).then_some(Status::SopClassNotSupported);
            Ok(Inbound::Commitment {
                rq: cmd.clone(),
                pc_id,
                transfer_syntax: transfer_syntax.to_string(),
                bytes: Vec::new(),
                too_large: false,
                refusal,
                is_report: true,
            })
        }
        CommandField::NEventReportRsp => {
            let answered = cmd.u16(dimse::tag::MESSAGE_ID_BEING_RESPONDED_TO)?;
            match reports.sent.take() {
                Some((id, p)) if Some(id) == answered => {
                    let status = cmd.status()?;
                    if status.is_failure() {
                        tracing::warn!(calling_ae = %origin.calling_ae.escape_debug(), transaction_uid = %p.report.transaction_uid.escape_debug(), %status, "the requester refused the storage commitment report");
                    } else {
                        tracing::info!(calling_ae = %origin.calling_ae.escape_debug(), transaction_uid = %p.report.transaction_uid.escape_debug(), committed = p.report.committed.len(), failed = p.report.failed.len(), "storage commitment reported on the request's association");
                    }
                }
                other => {
                    tracing::warn!(
                        ?answered,
                        "N-EVENT-REPORT-RSP to no report of ours: ignored"
                    );
                    reports.sent = other;
                }
            }
            Ok(Inbound::Idle)
        }
        CommandField::CEchoRq => {
            let rsp = dimse::response_to(cmd, Status::Success)?;
            send_command(assoc, pc_id, &rsp).await?;
            tracing::debug!("C-ECHO answered");
            Ok(Inbound::Idle)
        }
        CommandField::CStoreRq => {
            let rq = CStoreRq::from_command(cmd)?;
            if !has_data {
                return Err(Violation::StoreWithoutDataSet);
            }
            let refusal = sop_class_refusal(ctx, called_ae, abstract_syntax, &rq);
            if ctx.drill_aes.contains(called_ae) {
                // A drill receiver: the drill inbox, never the spool.
                return Ok(match &ctx.drill_inbox {
                    Some(inbox) => Inbound::DrillStore(Box::new(Incoming::begin(
                        inbox.clone(),
                        rq,
                        pc_id,
                        transfer_syntax,
                        origin.clone(),
                        refusal,
                    ))),
                    None => Inbound::Refused {
                        rq,
                        pc_id,
                        failure: Failure::new(
                            super::inbox::NOT_EXPECTED,
                            "no restore drill is running",
                        ),
                    },
                });
            }
            let Some(ingest) = &ctx.ingest else {
                return Ok(Inbound::Refused {
                    rq,
                    pc_id,
                    failure: Failure::local(format!(
                        "{called_ae} does not store objects on this listener"
                    )),
                });
            };
            Ok(Inbound::Store(Box::new(Incoming::begin(
                ingest.clone(),
                rq,
                pc_id,
                transfer_syntax,
                origin.clone(),
                refusal,
            ))))
        }
        CommandField::CCancelRq => Ok(Inbound::Idle),
        other => {
            tracing::warn!(
                command = format!("0x{:04X}", other.code()),
                "refusing a service this agent does not offer"
            );
            let rsp = dimse::response_to(cmd, Status::UnrecognizedOperation)?;
            send_command(assoc, pc_id, &rsp).await?;
            Ok(if has_data {
                Inbound::Discard { pc_id }
            } else {
                Inbound::Idle
            })
        }
    }
}

fn sop_class_refusal(
    ctx: &AssociationContext,
    called_ae: &str,
    abstract_syntax: &str,
    rq: &CStoreRq,
) -> Option<Failure> {
    if let Some(f) = context_refusal(rq, abstract_syntax) {
        return Some(f);
    }
    let accepted = match ctx.accepted_classes.get(called_ae) {
        Some(Some(set)) => set.contains(&rq.sop_class_uid),
        Some(None) => {
            pacs_mirror_dicom::sop_classes::storage_sop_class_name(&rq.sop_class_uid).is_some()
        }
        None => false,
    };
    (!accepted).then(|| Failure {
        status: Status::SopClassNotSupported,
        comment: format!(
            "SOP class {} is not accepted by {called_ae}",
            rq.sop_class_uid
        ),
    })
}

async fn respond_store<S: Stream>(
    assoc: &mut AsyncServerAssociation<S>,
    origin: &Origin,
    rq: &CStoreRq,
    pc_id: u8,
    result: Result<CommitOutcome, Failure>,
) -> Result<(), Violation> {
    let rsp = match &result {
        Ok(outcome) => {
            match outcome {
                CommitOutcome::New => {
                    tracing::debug!(sop_instance_uid = %rq.sop_instance_uid.escape_debug(), "stored")
                }
                CommitOutcome::Duplicate => {
                    tracing::info!(sop_instance_uid = %rq.sop_instance_uid.escape_debug(), "identical re-send: already stored")
                }
                CommitOutcome::Conflict { other_versions } => tracing::warn!(
                    sop_instance_uid = %rq.sop_instance_uid.escape_debug(),
                    versions = other_versions.len() + 1,
                    "SOP instance received again with different contents: both versions kept"
                ),
            }
            dimse::c_store_rsp(rq, Status::Success, None)
        }
        Err(f) => {
            tracing::warn!(
                calling_ae = %origin.calling_ae.escape_debug(),
                peer = %origin.peer,
                sop_instance_uid = %rq.sop_instance_uid.escape_debug(),
                status = %f.status,
                reason = %f.comment.escape_debug(),
                "C-STORE refused"
            );
            dimse::c_store_rsp(rq, f.status, Some(&f.comment))
        }
    };
    send_command(assoc, pc_id, &rsp).await
}

async fn respond_drill_store<S: Stream>(
    assoc: &mut AsyncServerAssociation<S>,
    origin: &Origin,
    called_ae: &str,
    rq: &CStoreRq,
    pc_id: u8,
    result: Result<(), Failure>,
) -> Result<(), Violation> {
    let rsp = match &result {
        Ok(()) => {
            tracing::debug!(sop_instance_uid = %rq.sop_instance_uid.escape_debug(), "handed to the restore drill");
            dimse::c_store_rsp(rq, Status::Success, None)
        }
        Err(f) => {
            tracing::warn!(
                calling_ae = %origin.calling_ae.escape_debug(),
                peer = %origin.peer,
                called_ae = %called_ae.escape_debug(),
                sop_instance_uid = %rq.sop_instance_uid.escape_debug(),
                status = %f.status,
                reason = %f.comment.escape_debug(),
                "C-STORE to the drill receiver refused (nothing kept)"
            );
            dimse::c_store_rsp(rq, f.status, Some(&f.comment))
        }
    };
    send_command(assoc, pc_id, &rsp).await
}

/// A storage commitment request, received whole.
struct Asked {
    rq: CommandSet,
    pc_id: u8,
    transfer_syntax: String,
    bytes: Vec<u8>,
    too_large: bool,
    refusal: Option<Status>,
}

impl Asked {
    /// Its data set read with `decode`, or the status to answer and why
    /// (refused at its command, too large, unreadable; a missing attribute
    /// is 0120H, anything else 0110H).
    fn read<T>(
        &self,
        what: &str,
        decode: fn(&[u8], &str) -> Result<T, commitment::CommitmentError>,
    ) -> Result<T, (Status, String)> {
        if let Some(status) = self.refusal {
            return Err((status, format!("not a storage commitment {what}")));
        }
        if self.too_large {
            return Err((
                commitment::status::PROCESSING_FAILURE,
                format!(
                    "{what} data set over {} bytes",
                    commitment::MAX_DATA_SET_BYTES
                ),
            ));
        }
        decode(&self.bytes, &self.transfer_syntax).map_err(|e| {
            let status = if matches!(e, commitment::CommitmentError::Missing(_)) {
                commitment::status::MISSING_ATTRIBUTE
            } else {
                commitment::status::PROCESSING_FAILURE
            };
            (status, e.to_string())
        })
    }
}

/// Answer an N-ACTION: refused, unreadable, or taken (Success, and the
/// report is owed: here after [`SAME_ASSOCIATION_WAIT`] unless the sender
/// releases first).
async fn answer_commitment<S: Stream>(
    assoc: &mut AsyncServerAssociation<S>,
    ctx: &AssociationContext,
    origin: &Origin,
    called_ae: &str,
    reports: &mut Reports,
    a: Asked,
) -> Result<(), Violation> {
    let Some(scp) = &ctx.commitment else {
        return Ok(());
    };
    let request = match a.read("request", Request::decode) {
        Ok(r) => r,
        Err((status, why)) => {
            tracing::warn!(calling_ae = %origin.calling_ae.escape_debug(), peer = %origin.peer, %status, reason = %why.escape_debug(), "storage commitment request refused");
            let mut rsp = commitment::n_action_rsp(&a.rq, status)?;
            let comment: String = why.chars().filter(|c| *c != '\\').take(64).collect();
            rsp.set_text(dimse::tag::ERROR_COMMENT, &comment);
            return send_command(assoc, a.pc_id, &rsp).await;
        }
    };
    tracing::info!(calling_ae = %origin.calling_ae.escape_debug(), peer = %origin.peer, transaction_uid = %request.transaction_uid.escape_debug(), objects = request.references.len(), "storage commitment requested");
    let policy = scp.policy(&origin.calling_ae);
    let answer = scp
        .answer_async(request.clone(), policy.clone(), false)
        .await;
    send_command(
        assoc,
        a.pc_id,
        &commitment::n_action_rsp(&a.rq, Status::Success)?,
    )
    .await?;
    let report: Report = answer.report;
    if answer.waiting > 0 {
        // The sender wants the remote copy first: reported once it exists
        // (or at the deadline), on a new association.
        tracing::info!(calling_ae = %origin.calling_ae.escape_debug(), transaction_uid = %request.transaction_uid.escape_debug(), waiting = answer.waiting, targets = ?policy.after_delivery_to, "storage commitment: the report waits for the objects to reach the targets");
        scp.deliver_later(Pending {
            their_ae: origin.calling_ae.clone(),
            our_ae: called_ae.to_string(),
            report,
            waiting: Some((request, tokio::time::Instant::now() + policy.wait)),
        });
        return Ok(());
    }
    scp.final_report(&report);
    let pending = Pending {
        their_ae: origin.calling_ae.clone(),
        our_ae: called_ae.to_string(),
        report,
        waiting: None,
    };
    if let Some(earlier) = reports.waiting.take() {
        // A second request before the first was reported: the first goes
        // now on a new association.
        scp.deliver_later(earlier.0);
    }
    reports.waiting = Some((
        pending,
        a.pc_id,
        a.transfer_syntax,
        tokio::time::Instant::now() + SAME_ASSOCIATION_WAIT,
    ));
    Ok(())
}

/// A mirror's report on an association it opened: applied if it answers
/// a request of ours to that AE, then answered.
async fn take_report<S: Stream>(
    assoc: &mut AsyncServerAssociation<S>,
    ctx: &AssociationContext,
    origin: &Origin,
    a: Asked,
) -> Result<(), Violation> {
    let Some(sink) = &ctx.reports else {
        return Ok(());
    };
    let outcome = a
        .read("report", commitment::Report::decode)
        .and_then(|report| {
            sink.on_report(&origin.calling_ae, &report)
                .map_err(|why| (commitment::status::PROCESSING_FAILURE, why))
        });
    let status = match outcome {
        Ok(()) => Status::Success,
        Err((status, why)) => {
            tracing::warn!(calling_ae = %origin.calling_ae.escape_debug(), peer = %origin.peer, %status, reason = %why.escape_debug(), "storage commitment report refused");
            status
        }
    };
    let rsp = commitment::n_event_report_rsp(&a.rq, status)?;
    send_command(assoc, a.pc_id, &rsp).await
}

/// Sleep until `at` (never returns when None; the branch is disabled then).
async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The sender kept the association open: send the owed report on it.
async fn report_here<S: Stream>(
    assoc: &mut AsyncServerAssociation<S>,
    reports: &mut Reports,
) -> Result<(), Violation> {
    let Some((pending, pc_id, ts, _)) = reports.waiting.take() else {
        return Ok(());
    };
    let data = match pending.report.encode(&ts) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %e, "storage commitment report cannot be encoded");
            return Ok(());
        }
    };
    reports.next_id = reports.next_id.wrapping_add(1).max(1);
    let id = reports.next_id;
    send_command(
        assoc,
        pc_id,
        &commitment::n_event_report_rq(id, pending.report.event_type()),
    )
    .await?;
    send_data(assoc, pc_id, &data).await?;
    reports.sent = Some((id, pending));
    Ok(())
}

/// A data set as PDVs within the peer's PDU limit, the last one flagged.
async fn send_data<S: Stream>(
    assoc: &mut AsyncServerAssociation<S>,
    pc_id: u8,
    bytes: &[u8],
) -> Result<(), Violation> {
    let chunk = (assoc.requestor_max_pdu_length() as usize)
        .saturating_sub(dicom_ul::pdu::PDV_HEADER_SIZE as usize)
        .clamp(1012, pacs_mirror_dicom::scu::MAX_SEND_CHUNK);
    let count = bytes.len().div_ceil(chunk).max(1);
    for i in 0..count {
        let piece = bytes
            .get(i * chunk..((i + 1) * chunk).min(bytes.len()))
            .unwrap_or(&[]);
        let pdu = Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: pc_id,
                value_type: PDataValueType::Data,
                is_last: i + 1 == count,
                data: piece.to_vec(),
            }],
        };
        assoc.send(&pdu).await.map_err(Violation::Send)?;
    }
    Ok(())
}

async fn send_command<S: Stream>(
    assoc: &mut AsyncServerAssociation<S>,
    pc_id: u8,
    cmd: &CommandSet,
) -> Result<(), Violation> {
    let pdu = Pdu::PData {
        data: vec![PDataValue {
            presentation_context_id: pc_id,
            value_type: PDataValueType::Command,
            is_last: true,
            data: cmd.encode(),
        }],
    };
    assoc.send(&pdu).await.map_err(Violation::Send)
}
