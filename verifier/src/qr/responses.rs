//! The response loop every Q/R operation shares: after the request, read
//! PDVs (sending C-CANCEL once when the caller's token fires) until the
//! final response, and turn them into [`Event`]s. One implementation for
//! C-FIND, C-GET and C-MOVE:
//!
//! - a command on the request's context must be a response of the
//!   operation's kind to our message (else a protocol error); it is counted
//!   and, when pending, its Number of … Sub-operations are the caller's;
//! - a pending response with an identifier: a C-FIND match, collected and
//!   decoded when the caller has room for it ([`Responses::next`]'s `room`)
//!   or drained when not; for C-GET and C-MOVE a protocol error;
//! - the final response: its Failed SOP Instance UID List is read from the
//!   elements a DCMTK-based SCP merges into its command PDVs, or from its
//!   identifier (collected; a C-FIND's is drained, PS3.4 defines none);
//! - on a C-GET, commands and data on the other (storage) contexts are the
//!   C-STORE sub-operations: handed to the caller as they come.

use dicom_object::InMemDicomObject;
use pacs_mirror_dicom::dimse::{self, CommandField, CommandSet, QueryRetrieveRsp};
use pacs_mirror_dicom::scu::{Inbound, Scu, ScuError};
use tokio_util::sync::CancellationToken;

use super::{QrError, QrOptions, addr_of, identifier};

/// The operation a loop serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Operation {
    Find,
    Get,
    Move,
}

impl Operation {
    fn name(self) -> &'static str {
        match self {
            Operation::Find => "C-FIND",
            Operation::Get => "C-GET",
            Operation::Move => "C-MOVE",
        }
    }

    fn response(self) -> CommandField {
        match self {
            Operation::Find => CommandField::CFindRsp,
            Operation::Get => CommandField::CGetRsp,
            Operation::Move => CommandField::CMoveRsp,
        }
    }
}

/// What the loop hands over, one per [`Responses::next`].
pub(super) enum Event {
    /// A pending response; for C-FIND with its match, decoded when there
    /// was room for it (`None`: it had none, or it was drained).
    Pending {
        rsp: QueryRetrieveRsp,
        identifier: Option<InMemDicomObject>,
    },
    /// The final response and its Failed SOP Instance UID List (empty when
    /// none was sent or it could not be read, logged).
    Final {
        rsp: QueryRetrieveRsp,
        failed: Vec<String>,
    },
    /// C-GET: a command on a storage context (a C-STORE-RQ).
    SubCommand { pc_id: u8, command: CommandSet },
    /// C-GET: a data fragment on a storage context.
    SubData {
        pc_id: u8,
        bytes: Vec<u8>,
        last: bool,
    },
}

/// An identifier being received.
enum Awaiting {
    Nothing,
    /// A C-FIND match, kept (`Some`) or drained (`None`).
    Pending(QueryRetrieveRsp, Option<IdentifierBuf>),
    /// The final response's identifier, collected (`Some`) or drained (a
    /// C-FIND's), with the list its command PDVs carried.
    Final(QueryRetrieveRsp, Option<IdentifierBuf>, Vec<String>),
}

/// The loop's state; see the module documentation.
pub(super) struct Responses<'a> {
    operation: Operation,
    pc: u8,
    id: u16,
    ts: String,
    options: &'a QrOptions,
    /// Responses received so far (an A-ABORT before the first is
    /// explained as a refusal of the service).
    pub count: u32,
    /// Whether C-CANCEL was sent.
    pub cancelled: bool,
    awaiting: Awaiting,
}

impl<'a> Responses<'a> {
    /// The loop for `operation`, our request `id` on context `pc` (its
    /// transfer syntax `ts`).
    pub fn new(
        operation: Operation,
        (pc, id): (u8, u16),
        ts: &str,
        options: &'a QrOptions,
    ) -> Self {
        Responses {
            operation,
            pc,
            id,
            ts: ts.to_string(),
            options,
            count: 0,
            cancelled: false,
            awaiting: Awaiting::Nothing,
        }
    }

    /// Send C-CANCEL now (once): the peer still owes a final response.
    pub async fn cancel(&mut self, scu: &mut Scu) -> Result<(), QrError> {
        if !self.cancelled {
            scu.send_command(self.pc, &dimse::c_cancel_rq(self.id))
                .await?;
            self.cancelled = true;
        }
        Ok(())
    }

    /// The next event. `room`: whether a C-FIND match arriving now is kept
    /// (else drained). After [`Event::Final`] there is nothing more.
    pub async fn next(&mut self, scu: &mut Scu, room: bool) -> Result<Event, QrError> {
        let name = self.operation.name();
        loop {
            let inbound = next_inbound(
                scu,
                (self.pc, self.id),
                self.options,
                &mut self.cancelled,
                name,
                self.count,
            )
            .await?;
            match inbound {
                Inbound::Command {
                    pc_id,
                    command,
                    trailer,
                } => {
                    if !matches!(self.awaiting, Awaiting::Nothing) {
                        return Err(scu
                            .protocol(format!(
                                "{name} command received before the previous identifier was complete"
                            ))
                            .into());
                    }
                    if pc_id != self.pc && self.operation == Operation::Get {
                        // The peer serves the request: counted like a
                        // response.
                        self.count += 1;
                        return Ok(Event::SubCommand { pc_id, command });
                    }
                    let rsp = expect_response(
                        scu,
                        pc_id,
                        &command,
                        self.pc,
                        self.id,
                        self.operation.response(),
                    )?;
                    self.count += 1;
                    if rsp.status.is_pending() {
                        if !rsp.has_data_set {
                            return Ok(Event::Pending {
                                rsp,
                                identifier: None,
                            });
                        }
                        if self.operation != Operation::Find {
                            return Err(scu
                                .protocol(format!("pending {name} response with a data set"))
                                .into());
                        }
                        let buf = room.then(|| IdentifierBuf::new(self.pc));
                        self.awaiting = Awaiting::Pending(rsp, buf);
                        continue;
                    }
                    if rsp.has_data_set {
                        let buf = (self.operation != Operation::Find)
                            .then(|| IdentifierBuf::new(self.pc));
                        self.awaiting = Awaiting::Final(rsp, buf, failed_uids_in_trailer(&trailer));
                        continue;
                    }
                    return Ok(Event::Final {
                        rsp,
                        failed: failed_uids_in_trailer(&trailer),
                    });
                }
                Inbound::Data { pc_id, bytes, last } => {
                    match &mut self.awaiting {
                        Awaiting::Nothing if self.operation == Operation::Get => {
                            return Ok(Event::SubData { pc_id, bytes, last });
                        }
                        Awaiting::Nothing => {
                            return Err(scu
                                .protocol(format!("data fragment without a {name} response"))
                                .into());
                        }
                        Awaiting::Pending(_, Some(buf)) | Awaiting::Final(_, Some(buf), _) => {
                            buf.push(scu, pc_id, &bytes)?;
                        }
                        Awaiting::Pending(_, None) | Awaiting::Final(_, None, _) => {
                            if pc_id != self.pc {
                                return Err(scu
                                    .protocol(format!(
                                        "identifier fragment on presentation context {pc_id}, command on {}",
                                        self.pc
                                    ))
                                    .into());
                            }
                        }
                    }
                    if !last {
                        continue;
                    }
                    match std::mem::replace(&mut self.awaiting, Awaiting::Nothing) {
                        Awaiting::Pending(rsp, buf) => {
                            let identifier = match buf {
                                Some(buf) => Some(buf.decode(scu, &self.ts, "C-FIND match")?),
                                None => None,
                            };
                            return Ok(Event::Pending { rsp, identifier });
                        }
                        Awaiting::Final(rsp, buf, in_command) => {
                            let failed = match buf {
                                // A C-FIND's: not defined, drained.
                                None => in_command,
                                Some(buf) => match buf
                                    .decode(scu, &self.ts, "Failed SOP Instance UID List")
                                    .and_then(|o| {
                                        identifier::failed_sop_instance_uids(&o).map_err(|source| {
                                            QrError::Malformed {
                                                addr: addr_of(scu),
                                                what: "Failed SOP Instance UID List",
                                                source,
                                            }
                                        })
                                    }) {
                                    Ok(uids) => uids,
                                    Err(e) => {
                                        tracing::warn!(error = %e, "final {name} identifier ignored");
                                        in_command
                                    }
                                },
                            };
                            return Ok(Event::Final { rsp, failed });
                        }
                        Awaiting::Nothing => {}
                    }
                }
            }
        }
    }
}

/// The next PDV of an operation (message `id` on context `pc`). When the
/// caller's token fires, C-CANCEL is sent once and receiving goes on: the
/// peer still owes a final response.
async fn next_inbound(
    scu: &mut Scu,
    (pc, id): (u8, u16),
    options: &QrOptions,
    cancelled: &mut bool,
    operation: &str,
    responses: u32,
) -> Result<Inbound, QrError> {
    loop {
        let cancel = if *cancelled {
            None
        } else {
            options.cancel.as_ref()
        };
        match receive_or_cancel(scu, cancel).await {
            Some(r) => return r.map_err(|e| explain_abort(scu, e, operation, responses)),
            None => {
                tracing::debug!(message_id = id, "{operation} cancelled by the caller");
                scu.send_command(pc, &dimse::c_cancel_rq(id)).await?;
                *cancelled = true;
            }
        }
    }
}

async fn receive_or_cancel(
    scu: &mut Scu,
    cancel: Option<&CancellationToken>,
) -> Option<Result<Inbound, ScuError>> {
    match cancel {
        Some(token) => tokio::select! {
            biased;
            _ = token.cancelled() => None,
            r = scu.receive_pdv() => Some(r),
        },
        None => Some(scu.receive_pdv().await),
    }
}

/// An A-ABORT before the first response to a Q/R request is most often the
/// peer refusing the service to our calling AE (Orthanc does this for an AE
/// not in its `DicomModalities`): say so.
fn explain_abort(scu: &Scu, e: ScuError, operation: &str, responses: u32) -> QrError {
    match e {
        ScuError::Aborted { addr, message } if responses == 0 => {
            QrError::Association(ScuError::Aborted {
                addr,
                message: format!(
                    "{message} in reply to the {operation} request: does the PACS allow {operation} from calling AE {}? (Orthanc: add it to DicomModalities)",
                    scu.peer().calling_ae
                ),
            })
        }
        e => QrError::Association(e),
    }
}

/// A Q/R response to our request `id` on `pc`, typed; anything else is a
/// protocol error.
fn expect_response(
    scu: &Scu,
    pc_id: u8,
    command: &dimse::CommandSet,
    pc: u8,
    id: u16,
    field: dimse::CommandField,
) -> Result<QueryRetrieveRsp, QrError> {
    let name = |f: dimse::CommandField| format!("0x{:04X}", f.code());
    let got = command
        .command_field()
        .map_err(|e| scu.protocol(format!("response: {e}")))?;
    if got != field {
        return Err(scu
            .protocol(format!(
                "expected command {} on context {pc}, got {} on context {pc_id}",
                name(field),
                name(got)
            ))
            .into());
    }
    if pc_id != pc {
        return Err(scu
            .protocol(format!(
                "response on presentation context {pc_id}, request on {pc}"
            ))
            .into());
    }
    let rsp = QueryRetrieveRsp::from_command(command)
        .map_err(|e| scu.protocol(format!("malformed {} response: {e}", name(field))))?;
    if rsp.message_id_being_responded_to != id {
        return Err(scu
            .protocol(format!(
                "response to message {} while message {id} is outstanding",
                rsp.message_id_being_responded_to
            ))
            .into());
    }
    Ok(rsp)
}

/// The Failed SOP Instance UID List a DCMTK-based SCP (Orthanc) merged into
/// the command PDVs of a final C-GET/C-MOVE response (see
/// [`Inbound::Command::trailer`]); empty when there is none or it cannot be
/// read (logged).
fn failed_uids_in_trailer(trailer: &[u8]) -> Vec<String> {
    if trailer.is_empty() {
        return Vec::new();
    }
    match identifier::decode(trailer, identifier::IMPLICIT_VR_LE)
        .and_then(|o| identifier::failed_sop_instance_uids(&o))
    {
        Ok(uids) => uids,
        Err(e) => {
            tracing::warn!(error = %e, "elements after the response command set ignored");
            Vec::new()
        }
    }
}

/// One identifier's data fragments, collected up to
/// [`identifier::MAX_IDENTIFIER_BYTES`].
struct IdentifierBuf {
    pc_id: u8,
    bytes: Vec<u8>,
}

impl IdentifierBuf {
    fn new(pc_id: u8) -> Self {
        IdentifierBuf {
            pc_id,
            bytes: Vec::new(),
        }
    }

    fn push(&mut self, scu: &Scu, pc_id: u8, bytes: &[u8]) -> Result<(), QrError> {
        if pc_id != self.pc_id {
            return Err(scu
                .protocol(format!(
                    "identifier fragment on presentation context {pc_id}, command on {}",
                    self.pc_id
                ))
                .into());
        }
        if self.bytes.len() + bytes.len() > identifier::MAX_IDENTIFIER_BYTES {
            return Err(QrError::Unacceptable {
                addr: addr_of(scu),
                what: "identifier",
                reason: format!("larger than {} bytes", identifier::MAX_IDENTIFIER_BYTES),
            });
        }
        self.bytes.extend_from_slice(bytes);
        Ok(())
    }

    fn decode(
        self,
        scu: &Scu,
        transfer_syntax: &str,
        what: &'static str,
    ) -> Result<InMemDicomObject, QrError> {
        identifier::decode(&self.bytes, transfer_syntax).map_err(|source| QrError::Malformed {
            addr: addr_of(scu),
            what,
            source,
        })
    }
}
