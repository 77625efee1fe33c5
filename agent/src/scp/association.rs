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

use super::inbox::DrillInbox;
use super::receive::{Failure, Incoming, Origin, context_refusal};
use super::store::Ingest;
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
    let end = loop {
        let idle = matches!(inbound, Inbound::Idle) && !reassembly.in_command();
        let pdu = tokio::select! {
            biased;
            _ = shutdown.cancelled(), if idle => break End::Abort(
                AbortRQServiceProviderReason::ReasonNotSpecified,
                "agent shutting down".into(),
            ),
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
async fn on_pdv<S: Stream>(
    assoc: &mut AsyncServerAssociation<S>,
    ctx: &AssociationContext,
    origin: &Origin,
    called_ae: &str,
    inbound: &mut Inbound,
    reassembly: &mut Reassembler,
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
            Inbound::Discard { .. } | Inbound::Refused { .. } => {
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
) -> Result<Inbound, Violation> {
    let field = cmd.command_field()?;
    let has_data = cmd.has_data_set()?;
    match field {
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
