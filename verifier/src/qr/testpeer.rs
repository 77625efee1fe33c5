//! A scripted Q/R SCP for the unit tests (dicom-ul acceptor on loopback):
//! it reads one C-FIND/C-GET/C-MOVE request, plays its script (matches,
//! C-STORE sub-operations, counts, malformed responses, aborts), then waits
//! for the release, and reports what it saw.

use std::time::Duration;

use dicom_object::InMemDicomObject;
use dicom_ul::association::AsyncServerAssociation;
use dicom_ul::pdu::{PDataValue, PDataValueType, PresentationContextResultReason};
use dicom_ul::{Pdu, ServerAssociationOptions};
use tokio::net::{TcpListener, TcpStream};

use pacs_mirror_dicom::dimse::{
    self, CStoreRq, CommandField, CommandSet, QueryRetrieveRq, QueryRetrieveRsp, Status,
};
use pacs_mirror_dicom::query as identifier;
use pacs_mirror_dicom::scu::Peer;

/// One thing the peer does.
#[derive(Debug, Clone)]
pub enum Step {
    /// A pending response with this match.
    Match(InMemDicomObject),
    /// The same, the identifier sent in fragments of this many bytes.
    MatchSplit(InMemDicomObject, usize),
    /// A pending response whose identifier is these bytes.
    RawIdentifier(Vec<u8>),
    /// A command PDV with these bytes.
    RawCommand(Vec<u8>),
    /// A pending response to another message ID.
    WrongMessageId,
    /// Wait for the requestor's C-CANCEL-RQ.
    ExpectCancel,
    /// Final response.
    Final(Status),
    /// Final response with an Error Comment.
    FinalComment(Status, &'static str),
    /// A pending C-GET/C-MOVE response: remaining, completed, failed, warning.
    Pending(u16, u16, u16, u16),
    /// Final C-GET/C-MOVE response with counts and a Failed SOP Instance UID
    /// List (sent as an identifier when not empty).
    FinalCounts(Status, u16, u16, u16, Vec<String>),
    /// Final C-GET/C-MOVE response as Orthanc 1.10 sends a failure: the
    /// Failed SOP Instance UID List inside the command PDV, no data set.
    FinalInCommand(Status, u16, u16, Vec<String>),
    /// A C-STORE sub-operation: class, instance, transfer syntax, data set,
    /// fragment size. The response status is recorded.
    Store(String, String, String, Vec<u8>, usize),
    /// A C-STORE sub-operation on the context of another class: context
    /// class, claimed class, instance, transfer syntax, data set.
    StoreOn(String, String, String, String, Vec<u8>),
    /// A C-STORE-RQ and the first `n` data bytes, then A-ABORT.
    StoreThenAbort(String, String, String, Vec<u8>, usize),
    /// A-ABORT (the script ends).
    Abort,
    /// Do nothing for a while.
    Sleep(Duration),
}

/// A script: what the peer accepts and does.
#[derive(Debug, Clone)]
pub struct Script {
    /// Abstract syntaxes accepted (any transfer syntax it knows).
    pub accept: Vec<String>,
    /// The steps, after the request is read.
    pub steps: Vec<Step>,
    /// Largest PDU the peer receives (the client fragments to it).
    pub max_pdu: u32,
}

impl Script {
    /// Accepting Study Root FIND.
    pub fn find(steps: Vec<Step>) -> Self {
        Script {
            accept: vec![super::STUDY_ROOT_FIND.into()],
            steps,
            max_pdu: 16384,
        }
    }
    /// Accepting only Patient Root FIND, doing nothing.
    pub fn find_only_patient_root() -> Self {
        Script {
            accept: vec![super::PATIENT_ROOT_FIND.into()],
            steps: Vec::new(),
            max_pdu: 16384,
        }
    }
    /// Accepting Study Root GET and these storage classes.
    pub fn get(classes: &[&str], steps: Vec<Step>) -> Self {
        let mut accept = vec![super::STUDY_ROOT_GET.to_string()];
        accept.extend(classes.iter().map(|c| c.to_string()));
        Script {
            accept,
            steps,
            max_pdu: 16384,
        }
    }
    /// Accepting Study Root MOVE.
    pub fn moves(steps: Vec<Step>) -> Self {
        Script {
            accept: vec![super::STUDY_ROOT_MOVE.into()],
            steps,
            max_pdu: 16384,
        }
    }
}

/// What the peer saw.
#[derive(Debug, Default)]
pub struct Seen {
    pub requests: Vec<QueryRetrieveRq>,
    pub identifiers: Vec<InMemDicomObject>,
    pub cancelled: bool,
    pub released: bool,
    pub aborted: bool,
    /// (SOP instance UID, status) of each C-STORE-RSP.
    pub store_responses: Vec<(String, u16)>,
}

enum Msg {
    Command(u8, CommandSet),
    Data(u8, Vec<u8>),
    Release,
    Abort,
    Closed,
}

struct Conn {
    assoc: AsyncServerAssociation<TcpStream>,
    queued: std::collections::VecDeque<PDataValue>,
}

impl Conn {
    async fn next(&mut self) -> Msg {
        let mut command: Vec<u8> = Vec::new();
        let mut data: Vec<u8> = Vec::new();
        loop {
            while let Some(pdv) = self.queued.pop_front() {
                match pdv.value_type {
                    PDataValueType::Command => {
                        command.extend_from_slice(&pdv.data);
                        if pdv.is_last {
                            let cmd = CommandSet::decode(&command).expect("client command");
                            return Msg::Command(pdv.presentation_context_id, cmd);
                        }
                    }
                    PDataValueType::Data => {
                        data.extend_from_slice(&pdv.data);
                        if pdv.is_last {
                            return Msg::Data(pdv.presentation_context_id, data);
                        }
                    }
                }
            }
            match self.assoc.receive().await {
                Ok(Pdu::PData { data }) => self.queued.extend(data),
                Ok(Pdu::ReleaseRQ) => return Msg::Release,
                Ok(Pdu::AbortRQ { .. }) => return Msg::Abort,
                Ok(_) | Err(_) => return Msg::Closed,
            }
        }
    }

    async fn send(&mut self, pc: u8, value_type: PDataValueType, bytes: &[u8], chunk: usize) {
        let pieces: Vec<&[u8]> = if bytes.is_empty() {
            vec![&[][..]]
        } else {
            bytes.chunks(chunk.max(1)).collect()
        };
        let n = pieces.len();
        for (i, p) in pieces.into_iter().enumerate() {
            self.assoc
                .send(&Pdu::PData {
                    data: vec![PDataValue {
                        presentation_context_id: pc,
                        value_type: value_type.clone(),
                        is_last: i + 1 == n,
                        data: p.to_vec(),
                    }],
                })
                .await
                .expect("test peer send");
        }
    }

    fn context(&self, class: &str, ts: &str) -> u8 {
        self.assoc
            .presentation_contexts()
            .iter()
            .find(|pc| {
                pc.reason == PresentationContextResultReason::Acceptance
                    && pc.abstract_syntax.trim_end_matches('\0') == class
                    && pc.transfer_syntax.trim_end_matches('\0') == ts
            })
            .unwrap_or_else(|| panic!("test peer: no context for {class} in {ts}"))
            .id
    }
}

/// Listen on loopback, serve one association with `script`; the peer
/// (5 s timeout) and the task that returns what was seen.
pub async fn start(script: Script) -> (Peer, tokio::task::JoinHandle<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = tokio::spawn(async move {
        let (sock, _) = listener.accept().await.unwrap();
        sock.set_nodelay(true).unwrap();
        let mut options = ServerAssociationOptions::new()
            .accept_any()
            .ae_title("QRSCP")
            .max_pdu_length(script.max_pdu);
        for a in &script.accept {
            options = options.with_abstract_syntax(a.clone());
        }
        let assoc = options.establish_async(sock).await.unwrap();
        serve(
            Conn {
                assoc,
                queued: Default::default(),
            },
            script.steps,
        )
        .await
    });
    let peer = Peer {
        calling_ae: "QRSCU".into(),
        called_ae: "QRSCP".into(),
        host: "127.0.0.1".into(),
        port,
        timeout: Duration::from_secs(5),
        tls: None,
        pace: None,
    };
    (peer, handle)
}

async fn serve(mut c: Conn, steps: Vec<Step>) -> Seen {
    let mut seen = Seen::default();
    if steps.is_empty() {
        return wait_end(c, seen).await;
    }
    let Msg::Command(pc, cmd) = c.next().await else {
        panic!("test peer: no request");
    };
    let rq = QueryRetrieveRq::from_command(&cmd).expect("a Q/R request");
    let Msg::Data(ipc, ident) = c.next().await else {
        panic!("test peer: no identifier");
    };
    assert_eq!(ipc, pc, "identifier on the request's context");
    let ts = c
        .assoc
        .presentation_contexts()
        .iter()
        .find(|p| p.id == pc)
        .map(|p| p.transfer_syntax.trim_end_matches('\0').to_string())
        .unwrap();
    seen.identifiers
        .push(identifier::decode(&ident, &ts).expect("our identifier decodes"));
    let rsp_field = CommandField::from_code(rq.field.response_code());
    let id = rq.message_id;
    seen.requests.push(rq.clone());
    let rsp = |status: Status, has_data_set: bool| QueryRetrieveRsp {
        field: rsp_field,
        message_id_being_responded_to: id,
        sop_class_uid: Some(rq.sop_class_uid.clone()),
        status,
        has_data_set,
        remaining: None,
        completed: None,
        failed: None,
        warning: None,
        error_comment: None,
    };
    let mut next_store_id = 100u16;
    for step in steps {
        match step {
            Step::Match(m) => {
                let bytes = identifier::encode(&m, &ts).unwrap();
                c.send(
                    pc,
                    PDataValueType::Command,
                    &rsp(Status::Pending(0xFF00), true).to_command().encode(),
                    usize::MAX,
                )
                .await;
                c.send(pc, PDataValueType::Data, &bytes, usize::MAX).await;
            }
            Step::MatchSplit(m, n) => {
                let bytes = identifier::encode(&m, &ts).unwrap();
                c.send(
                    pc,
                    PDataValueType::Command,
                    &rsp(Status::Pending(0xFF00), true).to_command().encode(),
                    7,
                )
                .await;
                c.send(pc, PDataValueType::Data, &bytes, n).await;
            }
            Step::RawIdentifier(bytes) => {
                c.send(
                    pc,
                    PDataValueType::Command,
                    &rsp(Status::Pending(0xFF00), true).to_command().encode(),
                    usize::MAX,
                )
                .await;
                c.send(pc, PDataValueType::Data, &bytes, usize::MAX).await;
            }
            Step::RawCommand(bytes) => {
                c.send(pc, PDataValueType::Command, &bytes, usize::MAX)
                    .await;
            }
            Step::WrongMessageId => {
                let mut r = rsp(Status::Pending(0xFF00), false);
                r.message_id_being_responded_to = id.wrapping_add(1);
                c.send(
                    pc,
                    PDataValueType::Command,
                    &r.to_command().encode(),
                    usize::MAX,
                )
                .await;
            }
            Step::ExpectCancel => loop {
                match c.next().await {
                    Msg::Command(_, cmd)
                        if cmd.command_field().ok() == Some(CommandField::CCancelRq) =>
                    {
                        assert_eq!(
                            cmd.u16(dimse::tag::MESSAGE_ID_BEING_RESPONDED_TO).unwrap(),
                            Some(id)
                        );
                        seen.cancelled = true;
                        break;
                    }
                    Msg::Command(..) | Msg::Data(..) => continue,
                    _ => panic!("test peer: association ended before C-CANCEL"),
                }
            },
            Step::Final(status) => {
                c.send(
                    pc,
                    PDataValueType::Command,
                    &rsp(status, false).to_command().encode(),
                    usize::MAX,
                )
                .await;
            }
            Step::FinalComment(status, comment) => {
                let mut r = rsp(status, false);
                r.error_comment = Some(comment.into());
                c.send(
                    pc,
                    PDataValueType::Command,
                    &r.to_command().encode(),
                    usize::MAX,
                )
                .await;
            }
            Step::Pending(remaining, completed, failed, warning) => {
                let mut r = rsp(Status::Pending(0xFF00), false);
                r.remaining = Some(remaining);
                r.completed = Some(completed);
                r.failed = Some(failed);
                r.warning = Some(warning);
                c.send(
                    pc,
                    PDataValueType::Command,
                    &r.to_command().encode(),
                    usize::MAX,
                )
                .await;
            }
            Step::FinalCounts(status, completed, failed, warning, uids) => {
                let mut r = rsp(status, !uids.is_empty());
                r.completed = Some(completed);
                r.failed = Some(failed);
                r.warning = Some(warning);
                c.send(
                    pc,
                    PDataValueType::Command,
                    &r.to_command().encode(),
                    usize::MAX,
                )
                .await;
                if !uids.is_empty() {
                    let mut o = InMemDicomObject::new_empty();
                    o.put(dicom_core::DataElement::new(
                        dicom_dictionary_std::tags::FAILED_SOP_INSTANCE_UID_LIST,
                        dicom_core::VR::UI,
                        dicom_core::PrimitiveValue::from(uids.join("\\")),
                    ));
                    let bytes = identifier::encode(&o, &ts).unwrap();
                    c.send(pc, PDataValueType::Data, &bytes, usize::MAX).await;
                }
            }
            Step::FinalInCommand(status, completed, failed, uids) => {
                let mut r = rsp(status, false);
                r.completed = Some(completed);
                r.failed = Some(failed);
                r.warning = Some(0);
                let mut bytes = r.to_command().encode();
                let mut o = InMemDicomObject::new_empty();
                o.put(dicom_core::DataElement::new(
                    dicom_dictionary_std::tags::FAILED_SOP_INSTANCE_UID_LIST,
                    dicom_core::VR::UI,
                    dicom_core::PrimitiveValue::from(uids.join("\\")),
                ));
                bytes.extend(identifier::encode(&o, identifier::IMPLICIT_VR_LE).unwrap());
                c.send(pc, PDataValueType::Command, &bytes, usize::MAX)
                    .await;
            }
            Step::Store(class, inst, sts, data, chunk) => {
                let spc = c.context(&class, &sts);
                let status = store(&mut c, spc, &class, &inst, &data, chunk, next_store_id).await;
                next_store_id += 1;
                seen.store_responses.push((inst, status));
            }
            Step::StoreOn(ctx_class, class, inst, sts, data) => {
                let spc = c.context(&ctx_class, &sts);
                let status = store(&mut c, spc, &class, &inst, &data, 1 << 20, next_store_id).await;
                next_store_id += 1;
                seen.store_responses.push((inst, status));
            }
            Step::StoreThenAbort(class, inst, sts, data, n) => {
                let spc = c.context(&class, &sts);
                let srq = CStoreRq {
                    message_id: next_store_id,
                    sop_class_uid: class,
                    sop_instance_uid: inst,
                    priority: 0,
                    move_originator_ae: None,
                    move_originator_message_id: None,
                };
                c.send(
                    spc,
                    PDataValueType::Command,
                    &srq.to_command().encode(),
                    usize::MAX,
                )
                .await;
                c.assoc
                    .send(&Pdu::PData {
                        data: vec![PDataValue {
                            presentation_context_id: spc,
                            value_type: PDataValueType::Data,
                            is_last: false,
                            data: data[..n].to_vec(),
                        }],
                    })
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
                let _ = c.assoc.abort().await;
                seen.aborted = true;
                return seen;
            }
            Step::Abort => {
                let _ = c.assoc.abort().await;
                seen.aborted = true;
                return seen;
            }
            Step::Sleep(d) => tokio::time::sleep(d).await,
        }
    }
    wait_end(c, seen).await
}

/// One C-STORE sub-operation; the status answered.
async fn store(
    c: &mut Conn,
    spc: u8,
    class: &str,
    inst: &str,
    data: &[u8],
    chunk: usize,
    message_id: u16,
) -> u16 {
    let srq = CStoreRq {
        message_id,
        sop_class_uid: class.into(),
        sop_instance_uid: inst.into(),
        priority: 0,
        move_originator_ae: None,
        move_originator_message_id: None,
    };
    c.send(
        spc,
        PDataValueType::Command,
        &srq.to_command().encode(),
        usize::MAX,
    )
    .await;
    c.send(spc, PDataValueType::Data, data, chunk).await;
    match c.next().await {
        Msg::Command(p, cmd) => {
            assert_eq!(p, spc, "C-STORE-RSP on the sub-operation's context");
            assert_eq!(cmd.command_field().unwrap(), CommandField::CStoreRsp);
            assert_eq!(
                cmd.u16(dimse::tag::MESSAGE_ID_BEING_RESPONDED_TO).unwrap(),
                Some(message_id)
            );
            cmd.status().unwrap().code()
        }
        _ => panic!("test peer: no C-STORE-RSP"),
    }
}

async fn wait_end(mut c: Conn, mut seen: Seen) -> Seen {
    loop {
        match c.next().await {
            Msg::Release => {
                let _ = c.assoc.send(&Pdu::ReleaseRP).await;
                seen.released = true;
                return seen;
            }
            Msg::Abort => {
                seen.aborted = true;
                return seen;
            }
            Msg::Closed => return seen,
            Msg::Command(_, cmd) if cmd.command_field().ok() == Some(CommandField::CCancelRq) => {
                seen.cancelled = true;
            }
            Msg::Command(..) | Msg::Data(..) => {}
        }
    }
}
