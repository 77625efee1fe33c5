//! The requestor side: associations to remote AEs, C-ECHO, and C-STORE of
//! spooled objects streamed from their files.
//!
//! Each object goes out on a presentation context of its own SOP class and
//! its own transfer syntax, byte for byte. The one exception is the lossless
//! uncompressed fallback: an object in Explicit VR Little Endian is also
//! proposed in Implicit VR Little Endian (and the reverse), on a context of
//! its own, and re-encoded into it (in memory, up to
//! [`MAX_TRANSCODE_BYTES`]) only when the peer accepts the fallback and not
//! the original. Nothing else is ever converted, and never lossily. A peer
//! that accepts neither gets [`ScuError::NoContext`], a permanent failure
//! for that object (the replication queue dead-letters it). At most [`MAX_CONTEXTS`] contexts
//! are proposed (dicom-ul numbers them 1, 3, … and wraps past 255).
//!
//! Errors are phrased for the person on call (refused connection, rejected
//! association and why, timeout) and classified by [`ScuError::is_transient`].
//!
//! [`Scu`] is also the association layer of the Query/Retrieve SCU
//! (the verifier's `qr`): [`AssociationRequest`] adds SCP role selection (C-GET)
//! and a receive limit, commands and data sets are sent fragmented to the
//! peer's PDU size, and [`Scu::receive_pdv`] reassembles command sets and
//! hands data fragments over one by one (never collected here).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dicom_ul::association::{Association, AsyncClientAssociation};
use dicom_ul::pdu::{
    AssociationRJSource, PDataValue, PDataValueType, PresentationContextNegotiated,
    PresentationContextResultReason,
};
use dicom_ul::{ClientAssociationOptions, Pdu};
use tokio::net::TcpStream;

use crate::dimse::{self, CStoreRq, CommandSet, Status};
use crate::reassembly::{Message, Reassembler};

/// Most presentation contexts proposed on one association.
pub const MAX_CONTEXTS: usize = 128;
/// Largest data PDV sent, whatever the peer accepts (bounds memory even when
/// the peer announces an unlimited PDU).
pub const MAX_SEND_CHUNK: usize = 1 << 20;
/// Largest object re-encoded for the uncompressed fallback (it is held in
/// memory while sent).
pub const MAX_TRANSCODE_BYTES: u64 = 256 << 20;
/// Explicit VR Little Endian.
pub const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";
/// Implicit VR Little Endian.
pub const IMPLICIT_VR_LE: &str = "1.2.840.10008.1.2";

/// The lossless uncompressed alternative of a transfer syntax, if any.
pub fn uncompressed_fallback(transfer_syntax: &str) -> Option<&'static str> {
    match transfer_syntax {
        EXPLICIT_VR_LE => Some(IMPLICIT_VR_LE),
        IMPLICIT_VR_LE => Some(EXPLICIT_VR_LE),
        _ => None,
    }
}

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Our AE title.
    pub calling_ae: String,
    /// Theirs.
    pub called_ae: String,
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Connection and per-message timeout.
    pub timeout: Duration,
}

impl Peer {
    fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// Why an operation with a peer failed, phrased for the operator.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScuError {
    /// TCP connection refused: nothing listens there.
    #[error(
        "connection refused by {addr}: nothing listens on that port (is the PACS running? right port?)"
    )]
    Refused { addr: String },
    /// No answer within the timeout.
    #[error(
        "no answer from {addr} within {secs} s (firewall dropping packets, wrong host, or the peer is hung)"
    )]
    Timeout { addr: String, secs: u64 },
    /// The peer rejected the association.
    #[error("association rejected by {addr}: {reason}")]
    Rejected { addr: String, reason: String },
    /// The peer accepted none of the proposed presentation contexts.
    #[error("{addr} accepted none of the proposed presentation contexts ({what})")]
    NoAcceptedContexts { addr: String, what: String },
    /// No accepted context for this object's SOP class and transfer syntax.
    #[error("{addr} does not accept SOP class {sop_class} in transfer syntax {transfer_syntax}")]
    NoContext {
        addr: String,
        sop_class: String,
        transfer_syntax: String,
    },
    /// The peer aborted or closed the association.
    #[error("{addr} ended the association: {message}")]
    Aborted { addr: String, message: String },
    /// The peer broke the protocol, or the network failed.
    #[error("{addr}: {message}")]
    Protocol { addr: String, message: String },
    /// The object's file could not be opened or read (nothing was sent; a
    /// local problem, not the peer's: permanent for this object).
    #[error("reading {path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// More presentation contexts than one association can carry.
    #[error("{0} presentation contexts requested; at most {MAX_CONTEXTS} per association")]
    TooManyContexts(usize),
    /// The object's data set does not hash to the address it was sent for
    /// ([`Outgoing::dataset_blake3`]): its last fragment was never sent.
    /// With `aborted`, part of it was, and the association was aborted so
    /// that the peer discards it; the association is gone.
    #[error(
        "{path}: the data set does not hash to its address (found {found}): not sent{}; run `pacs-mirror verify spool`",
        if *aborted { ", association aborted before its last fragment" } else { "" }
    )]
    Corrupt {
        path: PathBuf,
        found: String,
        aborted: bool,
    },
}

impl ScuError {
    /// Whether trying again later may succeed (the mirror is down, busy or
    /// unreachable) rather than never (it does not accept this object).
    pub fn is_transient(&self) -> bool {
        !matches!(
            self,
            ScuError::NoContext { .. }
                | ScuError::NoAcceptedContexts { .. }
                | ScuError::TooManyContexts(_)
                | ScuError::File { .. }
                | ScuError::Corrupt { .. }
        )
    }
}

/// A data set that does not hash to [`Outgoing::dataset_blake3`] (carried
/// inside an `io::Error` out of the reading code).
#[derive(Debug)]
struct NotItsAddress([u8; 32]);

impl std::fmt::Display for NotItsAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the data set hashes to {}, not to its address",
            blake3::Hash::from_bytes(self.0).to_hex()
        )
    }
}

impl std::error::Error for NotItsAddress {}

/// The hash found, when `e` is a [`NotItsAddress`].
fn not_its_address(e: &std::io::Error) -> Option<String> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<NotItsAddress>())
        .map(|n| blake3::Hash::from_bytes(n.0).to_hex().to_string())
}

/// A successful C-ECHO.
#[derive(Debug, Clone)]
pub struct EchoOk {
    /// Round trip of association + C-ECHO + release.
    pub elapsed: Duration,
    /// Max PDU the peer accepts.
    pub peer_max_pdu: u32,
}

/// A Part-10 file to send: its identity and where its data set starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The file; with [`Outgoing::memory`] set, only its name in messages.
    pub path: PathBuf,
    /// The whole Part-10 file, when it is held in memory rather than read
    /// from `path` (a restore's small downloads).
    pub memory: Option<InMemory>,
    /// SOP Class UID.
    pub sop_class_uid: String,
    /// SOP Instance UID.
    pub sop_instance_uid: String,
    /// The transfer syntax its data set is encoded in.
    pub transfer_syntax_uid: String,
    /// The blake3 its data set must hash to (a spool file's address). The
    /// data set is hashed as it is read, and its last fragment is sent only
    /// if it matches ([`ScuError::Corrupt`] otherwise), so a spool copy
    /// damaged since it was received never becomes a peer's copy.
    pub dataset_blake3: Option<[u8; 32]>,
}

/// A whole Part-10 file in memory (its `Debug` shows only its length).
#[derive(Clone, PartialEq, Eq)]
pub struct InMemory(pub bytes::Bytes);

impl std::fmt::Debug for InMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "InMemory({} bytes)", self.0.len())
    }
}

/// What to propose when associating.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AssociationRequest {
    /// One presentation context per (abstract syntax, transfer syntaxes)
    /// entry, numbered 1, 3, 5… in this order.
    pub contexts: Vec<(String, Vec<String>)>,
    /// SOP classes for which we propose the SCP role (SCU role off): the
    /// storage classes whose C-STORE sub-operations a C-GET brings back.
    pub scp_roles: Vec<String>,
    /// Largest PDU we receive (PDU length field); None keeps dicom-ul's
    /// default (32 KiB). Values below 1018 are raised to 1018 (dicom-ul
    /// accepts smaller ones and then fails every receive).
    pub max_pdu: Option<u32>,
}

/// One PDV as [`Scu::receive_pdv`] hands it over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// A complete command set (its fragments reassembled).
    Command {
        /// Presentation context it came on.
        pc_id: u8,
        /// The decoded command set.
        command: CommandSet,
        /// Elements outside group 0000 that followed the command set in its
        /// PDVs (Implicit VR LE), usually empty. DCMTK-based SCPs (Orthanc)
        /// merge a response's status detail there, e.g. the Failed SOP
        /// Instance UID List of a failed C-GET.
        trailer: Vec<u8>,
    },
    /// One data fragment, as received.
    Data {
        /// Presentation context it came on.
        pc_id: u8,
        /// The bytes.
        bytes: Vec<u8>,
        /// Last fragment of the data set.
        last: bool,
    },
}

/// An established association.
pub struct Scu {
    assoc: AsyncClientAssociation<TcpStream>,
    peer: Peer,
    next_message_id: u16,
    /// PDVs of the last PDU not handed over yet.
    queued: VecDeque<PDataValue>,
    /// Command fragments collected so far ([`crate::reassembly`]).
    reassembly: Reassembler,
    /// The object to read ahead once the current one is sent.
    next: Option<Outgoing>,
    /// Its first block, being read.
    read_ahead: Option<ReadAhead>,
    /// Block buffers for reuse (at most two).
    spare: Vec<Vec<u8>>,
}

/// An object being sent: where its bytes are and how much of its data set
/// is still to be read, framed for one presentation context.
struct Source {
    reader: Reader,
    remaining: u64,
    pc: u8,
    chunk: usize,
    /// The data set's hash so far, and what it must come to.
    check: Option<(blake3::Hasher, [u8; 32])>,
}

/// The bytes of an object being sent: an open file (read in the blocking
/// pool) or memory (read in place).
enum Reader {
    File(std::fs::File),
    Memory(std::io::Cursor<bytes::Bytes>),
}

impl std::io::Read for Reader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Reader::File(f) => f.read(buf),
            Reader::Memory(m) => m.read(buf),
        }
    }
}

impl std::io::Seek for Reader {
    fn seek(&mut self, pos: std::io::SeekFrom) -> std::io::Result<u64> {
        match self {
            Reader::File(f) => f.seek(pos),
            Reader::Memory(m) => m.seek(pos),
        }
    }
}

impl Reader {
    /// Open `object`'s bytes: its memory, else its file.
    fn open(object: &Outgoing) -> std::io::Result<(Self, u64)> {
        Ok(match &object.memory {
            Some(m) => (
                Reader::Memory(std::io::Cursor::new(m.0.clone())),
                m.0.len() as u64,
            ),
            None => {
                let file = std::fs::File::open(&object.path)?;
                let len = file.metadata()?.len();
                (Reader::File(file), len)
            }
        })
    }
}

/// What reading a block hands back: the source, the buffer, and how many
/// of its bytes are PDUs to send.
type ReadResult = std::io::Result<(Source, Vec<u8>, usize)>;

/// The first block of the next object, read in the blocking pool.
struct ReadAhead {
    path: PathBuf,
    pc: u8,
    chunk: usize,
    task: tokio::task::JoinHandle<ReadResult>,
}

/// P-DATA-TF PDU header (type, reserved, length) plus PDV header (length,
/// context, control): what precedes each fragment's bytes.
const PDU_PDV_HEADER: usize = 12;

/// Open an object's bytes, find its data set, and read the first block.
fn open_source(object: &Outgoing, pc: u8, chunk: usize, mut buf: Vec<u8>) -> ReadResult {
    use std::io::{Seek, SeekFrom};
    let (mut reader, len) = Reader::open(object)?;
    let offset = crate::part10::dataset_offset_in(&mut reader)?;
    reader.seek(SeekFrom::Start(offset))?;
    let mut source = Source {
        reader,
        remaining: len.saturating_sub(offset),
        pc,
        chunk,
        check: object
            .dataset_blake3
            .map(|want| (blake3::Hasher::new(), want)),
    };
    let used = read_block(&mut source, &mut buf)?;
    Ok((source, buf, used))
}

/// Read the next block of the data set (at most [`MAX_SEND_CHUNK`] bytes)
/// from `source` straight into `buf` as complete P-DATA-TF PDUs of one data
/// fragment each, at most `source.chunk` bytes, the data set's last one
/// flagged last. Returns how many bytes of `buf` to send. An empty data set
/// is one empty last fragment. With a hash to check, the block holding the
/// last fragment is returned only when the whole data set matched it.
fn read_block(source: &mut Source, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    use std::io::Read;
    let chunk = source.chunk.clamp(1, MAX_SEND_CHUNK);
    let mut budget = MAX_SEND_CHUNK;
    let mut used = 0;
    loop {
        let n = source.remaining.min((chunk.min(budget)) as u64) as usize;
        let end = used + PDU_PDV_HEADER + n;
        if buf.len() < end {
            // Grows once; a reused buffer is not cleared or zeroed again.
            buf.resize(end, 0);
        }
        source
            .reader
            .read_exact(&mut buf[used + PDU_PDV_HEADER..end])?;
        source.remaining -= n as u64;
        budget -= n;
        let last = source.remaining == 0;
        if let Some((hasher, want)) = &mut source.check {
            hasher.update(&buf[used + PDU_PDV_HEADER..end]);
            if last {
                let found = *hasher.finalize().as_bytes();
                if found != *want {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        NotItsAddress(found),
                    ));
                }
            }
        }
        let header = &mut buf[used..used + PDU_PDV_HEADER];
        header[0] = 0x04; // P-DATA-TF
        header[1] = 0;
        header[2..6].copy_from_slice(&(n as u32 + 6).to_be_bytes());
        header[6..10].copy_from_slice(&(n as u32 + 2).to_be_bytes());
        header[10] = source.pc;
        header[11] = if last { 0x02 } else { 0x00 }; // data; last fragment
        used = end;
        if last || budget == 0 {
            return Ok(used);
        }
    }
}

fn join_read(r: Result<ReadResult, tokio::task::JoinError>) -> ReadResult {
    r.map_err(|e| std::io::Error::other(format!("reading task failed: {e}")))?
}

/// C-ECHO `peer`: associate with Verification, echo, release.
pub async fn echo(peer: &Peer) -> Result<EchoOk, ScuError> {
    let start = Instant::now();
    let contexts = [(
        dimse::VERIFICATION_SOP_CLASS.to_string(),
        vec![
            "1.2.840.10008.1.2.1".to_string(),
            "1.2.840.10008.1.2".to_string(),
        ],
    )];
    let mut scu = Scu::connect(peer, &contexts).await?;
    let peer_max_pdu = scu.assoc.peer_max_pdu_length();
    let pc = scu
        .assoc
        .presentation_contexts()
        .first()
        .map(|pc| pc.id)
        .ok_or_else(|| ScuError::NoAcceptedContexts {
            addr: peer.addr(),
            what: "Verification".into(),
        })?;
    let id = scu.message_id();
    scu.send_command(pc, &dimse::c_echo_rq(id)).await?;
    let rsp = scu.read_response(id).await?;
    let status = rsp.status().map_err(|e| scu.protocol(e.to_string()))?;
    scu.release().await;
    if status != Status::Success {
        return Err(ScuError::Protocol {
            addr: peer.addr(),
            message: format!("C-ECHO answered with {status}"),
        });
    }
    Ok(EchoOk {
        elapsed: start.elapsed(),
        peer_max_pdu,
    })
}

impl Scu {
    /// Associate, proposing one presentation context per (abstract syntax,
    /// transfer syntaxes) entry.
    pub async fn connect(
        peer: &Peer,
        contexts: &[(String, Vec<String>)],
    ) -> Result<Self, ScuError> {
        let request = AssociationRequest {
            contexts: contexts.to_vec(),
            ..AssociationRequest::default()
        };
        Self::associate(peer, &request).await
    }

    /// Associate with everything [`AssociationRequest`] can say: contexts,
    /// SCP role selection, receive limit. Sets TCP_NODELAY.
    pub async fn associate(peer: &Peer, request: &AssociationRequest) -> Result<Self, ScuError> {
        let contexts = &request.contexts;
        if contexts.len() > MAX_CONTEXTS {
            return Err(ScuError::TooManyContexts(contexts.len()));
        }
        let mut options = ClientAssociationOptions::new()
            .calling_ae_title(peer.calling_ae.clone())
            .called_ae_title(peer.called_ae.clone())
            .connection_timeout(peer.timeout)
            .read_timeout(peer.timeout)
            .write_timeout(peer.timeout);
        if let Some(max) = request.max_pdu {
            options = options.max_pdu_length(max.max(dicom_ul::pdu::MINIMUM_PDU_SIZE));
        }
        for (abstract_syntax, tss) in contexts {
            options = options.with_presentation_context(abstract_syntax.clone(), tss.to_vec());
        }
        for sop_class in &request.scp_roles {
            options = options.with_role_selection(sop_class.clone(), false, true);
        }
        let addr = peer.addr();
        let fut = options.establish_async(addr.as_str());
        let mut assoc = match tokio::time::timeout(peer.timeout * 2, fut).await {
            Err(_) => {
                return Err(ScuError::Timeout {
                    addr,
                    secs: peer.timeout.as_secs(),
                });
            }
            Ok(r) => r.map_err(|e| match classify(&addr, e, peer.timeout) {
                ScuError::NoAcceptedContexts { addr, .. } => ScuError::NoAcceptedContexts {
                    addr,
                    what: describe(contexts),
                },
                other => other,
            })?,
        };
        // Without it every small message waits ~40 ms for delayed ACKs.
        let _ = assoc.inner_stream().set_nodelay(true);
        Ok(Scu {
            assoc,
            peer: peer.clone(),
            next_message_id: 1,
            queued: VecDeque::new(),
            reassembly: Reassembler::with_trailer(),
            next: None,
            read_ahead: None,
            spare: Vec::new(),
        })
    }

    /// The peer this association is with.
    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// The accepted presentation contexts.
    pub fn presentation_contexts(&self) -> &[PresentationContextNegotiated] {
        self.assoc.presentation_contexts()
    }

    /// The first accepted context for this abstract syntax, in whatever
    /// transfer syntax the peer chose: (id, transfer syntax).
    pub fn accepted_context(&self, abstract_syntax: &str) -> Option<(u8, String)> {
        self.assoc
            .presentation_contexts()
            .iter()
            .find(|pc| {
                pc.reason == PresentationContextResultReason::Acceptance
                    && pc.abstract_syntax.trim_end_matches('\0') == abstract_syntax
            })
            .map(|pc| (pc.id, pc.transfer_syntax.trim_end_matches('\0').to_string()))
    }

    /// The accepted context with this id: (abstract syntax, transfer syntax).
    pub fn context_by_id(&self, pc_id: u8) -> Option<(String, String)> {
        self.assoc
            .presentation_contexts()
            .iter()
            .find(|pc| pc.id == pc_id && pc.reason == PresentationContextResultReason::Acceptance)
            .map(|pc| {
                (
                    pc.abstract_syntax.trim_end_matches('\0').to_string(),
                    pc.transfer_syntax.trim_end_matches('\0').to_string(),
                )
            })
    }

    /// Whether the peer accepted our SCP role for this SOP class (role
    /// selection answered). Some SCPs (Orthanc) push C-GET sub-operations
    /// without answering role selection at all.
    pub fn scp_role_accepted(&self, sop_class: &str) -> bool {
        self.assoc.requestor_roles_for(sop_class).scp
    }

    /// The peer's IP address, if the socket still knows it.
    pub fn peer_ip(&mut self) -> Option<std::net::IpAddr> {
        self.assoc.inner_stream().peer_addr().ok().map(|a| a.ip())
    }

    /// The accepted context for this abstract syntax in exactly this
    /// transfer syntax.
    pub fn context_for(&self, abstract_syntax: &str, transfer_syntax: &str) -> Option<u8> {
        self.assoc
            .presentation_contexts()
            .iter()
            .find(|pc| {
                pc.abstract_syntax.trim_end_matches('\0') == abstract_syntax
                    && pc.transfer_syntax.trim_end_matches('\0') == transfer_syntax
            })
            .map(|pc| pc.id)
    }

    /// C-STORE one object, streaming its data set from the file. Returns
    /// the peer's status (Success and warnings mean stored; see
    /// [`Status::is_stored`]).
    pub async fn store(&mut self, object: &Outgoing) -> Result<Status, ScuError> {
        Ok(self.store_reporting(object).await?.0)
    }

    /// [`Scu::store`], also saying whether the data set was re-encoded for
    /// the uncompressed fallback (the peer accepts no context for its own
    /// transfer syntax), with the blake3 of the bytes actually sent.
    pub async fn store_reporting(
        &mut self,
        object: &Outgoing,
    ) -> Result<(Status, Option<Reencoded>), ScuError> {
        // The hint is for this store only: a failure drops it.
        let next = self.next.take();
        let no_context = || ScuError::NoContext {
            addr: self.peer.addr(),
            sop_class: object.sop_class_uid.clone(),
            transfer_syntax: object.transfer_syntax_uid.clone(),
        };
        let Some(pc) = self.context_for(&object.sop_class_uid, &object.transfer_syntax_uid) else {
            let fallback = uncompressed_fallback(&object.transfer_syntax_uid)
                .and_then(|ts| Some((ts, self.context_for(&object.sop_class_uid, ts)?)));
            let Some((ts, pc)) = fallback else {
                return Err(no_context());
            };
            return self
                .store_transcoded(object, ts, pc, next)
                .await
                .map(|(st, r)| (st, Some(r)));
        };
        let chunk = self.max_pdv_payload();
        // The first block: read ahead while the previous object was being
        // answered, or now (one blocking-pool hop: open, meta, first block).
        let first = match self.read_ahead.take() {
            Some(r) if r.path == object.path && r.pc == pc && r.chunk == chunk => {
                join_read(r.task.await)
            }
            _ => {
                let buf = self.spare.pop().unwrap_or_default();
                if object.memory.is_some() {
                    open_source(object, pc, chunk, buf)
                } else {
                    let object = object.clone();
                    join_read(
                        tokio::task::spawn_blocking(move || open_source(&object, pc, chunk, buf))
                            .await,
                    )
                }
            }
        };
        // Nothing is sent yet: a file that cannot be opened or read is this
        // object's problem, not the peer's.
        let (mut source, mut buf, mut used) =
            first.map_err(|source| match not_its_address(&source) {
                Some(found) => ScuError::Corrupt {
                    path: object.path.clone(),
                    found,
                    aborted: false,
                },
                None => ScuError::File {
                    path: object.path.clone(),
                    source,
                },
            })?;
        let id = self.send_store_rq(object, pc).await?;
        loop {
            self.write_pdus(&buf[..used]).await?;
            if source.remaining == 0 {
                break;
            }
            // The command is out: a read failure now leaves the association
            // mid-message, so it is not reusable (a transient failure).
            let r = if matches!(source.reader, Reader::Memory(_)) {
                read_block(&mut source, &mut buf)
            } else {
                let task = tokio::task::spawn_blocking(move || {
                    let r = read_block(&mut source, &mut buf);
                    (source, buf, r)
                })
                .await;
                let (s, b, r) =
                    task.map_err(|e| self.protocol(format!("reading task failed: {e}")))?;
                (source, buf) = (s, b);
                r
            };
            used = match r {
                Ok(used) => used,
                Err(e) => match not_its_address(&e) {
                    // Part of it is out: abort, so the peer keeps nothing.
                    Some(found) => {
                        self.abort_in_place().await;
                        return Err(ScuError::Corrupt {
                            path: object.path.clone(),
                            found,
                            aborted: true,
                        });
                    }
                    None => {
                        return Err(self.protocol(format!(
                            "reading {} in the middle of sending it: {e}",
                            object.path.display()
                        )));
                    }
                },
            };
        }
        if self.spare.len() < 2 {
            self.spare.push(buf);
        }
        self.start_read_ahead(next);
        let rsp = self.read_response(id).await?;
        let status = rsp.status().map_err(|e| self.protocol(e.to_string()))?;
        Ok((status, None))
    }

    /// Say which object will be stored after the next [`Scu::store`] (or
    /// [`Scu::store_reporting`]): once that one's data set is sent, this
    /// one's file is opened and its first block read while the peer
    /// processes the first (one block, at most [`MAX_SEND_CHUNK`] bytes, is
    /// held ahead). Storing another object instead just drops it, and so
    /// does a store that fails before its data set is sent.
    pub fn read_ahead(&mut self, next: &Outgoing) {
        self.next = Some(next.clone());
    }

    /// Start reading the object named by [`Scu::read_ahead`], if it goes
    /// out as it is (not re-encoded) and is not in memory already.
    fn start_read_ahead(&mut self, next: Option<Outgoing>) {
        self.read_ahead = None;
        let Some(next) = next.filter(|n| n.memory.is_none()) else {
            return;
        };
        let Some(pc) = self.context_for(&next.sop_class_uid, &next.transfer_syntax_uid) else {
            return;
        };
        let chunk = self.max_pdv_payload();
        let buf = self.spare.pop().unwrap_or_default();
        self.read_ahead = Some(ReadAhead {
            path: next.path.clone(),
            pc,
            chunk,
            task: tokio::task::spawn_blocking(move || open_source(&next, pc, chunk, buf)),
        });
    }

    /// Write whole PDUs straight to the socket (dicom-ul's own send buffer
    /// is empty between its sends), within the peer timeout.
    async fn write_pdus(&mut self, pdus: &[u8]) -> Result<(), ScuError> {
        use tokio::io::AsyncWriteExt;
        let addr = self.peer.addr();
        let timeout = self.peer.timeout;
        let stream = self.assoc.inner_stream();
        match tokio::time::timeout(timeout, stream.write_all(pdus)).await {
            Err(_) => Err(ScuError::Timeout {
                addr,
                secs: timeout.as_secs(),
            }),
            Ok(Err(e)) => Err(ScuError::Protocol {
                addr,
                message: format!("sending data: {e}"),
            }),
            Ok(Ok(())) => Ok(()),
        }
    }

    /// Send the C-STORE-RQ command of `object` on `pc`; its Message ID.
    async fn send_store_rq(&mut self, object: &Outgoing, pc: u8) -> Result<u16, ScuError> {
        let id = self.message_id();
        let rq = CStoreRq {
            message_id: id,
            sop_class_uid: object.sop_class_uid.clone(),
            sop_instance_uid: object.sop_instance_uid.clone(),
            priority: 0,
            move_originator_ae: None,
            move_originator_message_id: None,
        };
        self.send_command(pc, &rq.to_command()).await?;
        Ok(id)
    }

    /// The uncompressed fallback: re-encode the data set into `ts` (lossless:
    /// Explicit ↔ Implicit VR Little Endian) and send it on `pc`.
    async fn store_transcoded(
        &mut self,
        object: &Outgoing,
        ts: &str,
        pc: u8,
        next: Option<Outgoing>,
    ) -> Result<(Status, Reencoded), ScuError> {
        let file_err = |source| ScuError::File {
            path: object.path.clone(),
            source,
        };
        let len = match &object.memory {
            Some(m) => m.0.len() as u64,
            None => tokio::fs::metadata(&object.path)
                .await
                .map_err(file_err)?
                .len(),
        };
        if len > MAX_TRANSCODE_BYTES {
            return Err(ScuError::NoContext {
                addr: self.peer.addr(),
                sop_class: object.sop_class_uid.clone(),
                transfer_syntax: format!(
                    "{} (the peer accepts only {ts}, and the object is too large to re-encode: {len} bytes)",
                    object.transfer_syntax_uid
                ),
            });
        }
        let source = object.clone();
        let target = ts.to_string();
        let encoded = tokio::task::spawn_blocking(move || reencode(&source, &target))
            .await
            .map_err(|e| file_err(std::io::Error::other(e.to_string())))?
            .map_err(|e| match not_its_address(&e) {
                Some(found) => ScuError::Corrupt {
                    path: object.path.clone(),
                    found,
                    aborted: false,
                },
                None => file_err(e),
            })?;
        tracing::debug!(
            sop_instance_uid = %object.sop_instance_uid,
            from = %object.transfer_syntax_uid,
            to = %ts,
            "the peer accepts only the uncompressed fallback: re-encoded"
        );
        let reencoded = Reencoded {
            transfer_syntax_uid: ts.to_string(),
            blake3: *blake3::hash(&encoded).as_bytes(),
        };
        let id = self.send_store_rq(object, pc).await?;
        let chunk = self.max_pdv_payload();
        let pieces: Vec<&[u8]> = if encoded.is_empty() {
            vec![&[][..]]
        } else {
            encoded.chunks(chunk).collect()
        };
        let count = pieces.len();
        for (i, piece) in pieces.into_iter().enumerate() {
            self.send_pdv(pc, PDataValueType::Data, i + 1 == count, piece.to_vec())
                .await?;
        }
        self.start_read_ahead(next);
        let rsp = self.read_response(id).await?;
        let status = rsp.status().map_err(|e| self.protocol(e.to_string()))?;
        Ok((status, reencoded))
    }

    /// Release the association (best effort: a failed release loses nothing).
    pub async fn release(self) {
        let _ = self.assoc.release().await;
    }

    /// Abort the association (A-ABORT, then close): after a protocol error,
    /// or to give up in the middle of an operation.
    pub async fn abort(self) {
        let _ = self.assoc.abort().await;
    }

    /// Send an A-ABORT (service user, no reason) and shut the connection
    /// down, without giving up `self`: the peer discards the message in
    /// progress, and every later operation on this association fails.
    async fn abort_in_place(&mut self) {
        use tokio::io::AsyncWriteExt;
        const A_ABORT: [u8; 10] = [0x07, 0, 0, 0, 0, 4, 0, 0, 0, 0];
        let stream = self.assoc.inner_stream();
        let _ = tokio::time::timeout(self.peer.timeout, async {
            let _ = stream.write_all(&A_ABORT).await;
            let _ = stream.shutdown().await;
        })
        .await;
    }

    /// A fresh Message ID (1, 2, … wrapping, never 0).
    pub fn message_id(&mut self) -> u16 {
        let id = self.next_message_id;
        self.next_message_id = self.next_message_id.wrapping_add(1).max(1);
        id
    }

    /// A [`ScuError::Protocol`] naming this peer.
    pub fn protocol(&self, message: String) -> ScuError {
        ScuError::Protocol {
            addr: self.peer.addr(),
            message,
        }
    }

    /// The largest PDV payload to send: the peer's PDU limit less the PDV
    /// header, at most [`MAX_SEND_CHUNK`].
    fn max_pdv_payload(&self) -> usize {
        (self.assoc.peer_max_pdu_length() as usize)
            .saturating_sub(dicom_ul::pdu::PDV_HEADER_SIZE as usize)
            .clamp(1012, MAX_SEND_CHUNK)
    }

    async fn send_pdv(
        &mut self,
        pc: u8,
        value_type: PDataValueType,
        is_last: bool,
        data: Vec<u8>,
    ) -> Result<(), ScuError> {
        let pdu = Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: pc,
                value_type,
                is_last,
                data,
            }],
        };
        self.assoc
            .send(&pdu)
            .await
            .map_err(|e| classify(&self.peer.addr(), e, self.peer.timeout))
    }

    /// Send `bytes` as PDVs of `value_type`, each within the peer's PDU
    /// limit, the last one flagged.
    async fn send_fragmented(
        &mut self,
        pc: u8,
        value_type: PDataValueType,
        bytes: &[u8],
    ) -> Result<(), ScuError> {
        let chunk = self.max_pdv_payload();
        if bytes.is_empty() {
            return self.send_pdv(pc, value_type, true, Vec::new()).await;
        }
        let count = bytes.len().div_ceil(chunk);
        for (i, piece) in bytes.chunks(chunk).enumerate() {
            self.send_pdv(pc, value_type.clone(), i + 1 == count, piece.to_vec())
                .await?;
        }
        Ok(())
    }

    /// Send a command set (fragmented if the peer's PDUs are small).
    pub async fn send_command(&mut self, pc: u8, cmd: &CommandSet) -> Result<(), ScuError> {
        self.send_fragmented(pc, PDataValueType::Command, &cmd.encode())
            .await
    }

    /// Send a whole data set held in memory (an identifier).
    pub async fn send_data(&mut self, pc: u8, bytes: &[u8]) -> Result<(), ScuError> {
        self.send_fragmented(pc, PDataValueType::Data, bytes).await
    }

    /// The next command set or data fragment from the peer. Command
    /// fragments are collected (at most [`dimse::MAX_COMMAND_SET_BYTES`])
    /// and decoded; data fragments are handed over as they come. A-ABORT is
    /// [`ScuError::Aborted`]; any other PDU, or a command split across two
    /// contexts, is a protocol error. Cancel-safe: a PDU is either wholly
    /// received and queued, or still in dicom-ul's read buffer.
    pub async fn receive_pdv(&mut self) -> Result<Inbound, ScuError> {
        loop {
            while let Some(pdv) = self.queued.pop_front() {
                match self.reassembly.push(pdv) {
                    Ok(Message::Partial) => {}
                    Ok(Message::Data { pc_id, bytes, last }) => {
                        return Ok(Inbound::Data { pc_id, bytes, last });
                    }
                    Ok(Message::Command {
                        pc_id,
                        command,
                        trailer,
                    }) => {
                        return Ok(Inbound::Command {
                            pc_id,
                            command,
                            trailer,
                        });
                    }
                    Err(e) => return Err(self.protocol(e.to_string())),
                }
            }
            let pdu = self
                .assoc
                .receive()
                .await
                .map_err(|e| classify(&self.peer.addr(), e, self.peer.timeout))?;
            match pdu {
                Pdu::PData { data } => self.queued.extend(data),
                Pdu::AbortRQ { source } => {
                    return Err(ScuError::Aborted {
                        addr: self.peer.addr(),
                        message: format!("A-ABORT ({source:?})"),
                    });
                }
                other => {
                    return Err(self.protocol(format!("unexpected {}", other.short_description())));
                }
            }
        }
    }

    /// Read until a complete command set arrives that answers `id` (data
    /// fragments and responses to other messages are skipped).
    async fn read_response(&mut self, id: u16) -> Result<CommandSet, ScuError> {
        loop {
            let Inbound::Command { command, .. } = self.receive_pdv().await? else {
                continue;
            };
            let answered = command
                .u16(dimse::tag::MESSAGE_ID_BEING_RESPONDED_TO)
                .map_err(|e| self.protocol(e.to_string()))?;
            if answered == Some(id) {
                return Ok(command);
            }
            tracing::debug!(
                ?answered,
                expected = id,
                "ignoring a response to another message"
            );
        }
    }
}

fn explain_rejection(source: &AssociationRJSource) -> String {
    use dicom_ul::pdu::AssociationRJServiceUserReason as U;
    match source {
        AssociationRJSource::ServiceUser(U::CalledAETitleNotRecognized) => {
            "called AE title not recognized: check the AE title configured on the peer (case and spelling)".into()
        }
        AssociationRJSource::ServiceUser(U::CallingAETitleNotRecognized) => {
            "calling AE title not recognized: the peer does not know our AE title (or not from this IP address); add it to the peer's allowed senders".into()
        }
        other => format!("{other:?}"),
    }
}

fn classify(addr: &str, e: dicom_ul::association::Error, timeout: Duration) -> ScuError {
    use dicom_ul::association::Error as E;
    let addr = addr.to_string();
    match e {
        E::Rejected { association_rj, .. } => ScuError::Rejected {
            addr,
            reason: explain_rejection(&association_rj.source),
        },
        E::NoAcceptedPresentationContexts { .. } => ScuError::NoAcceptedContexts {
            addr,
            what: "none accepted".into(),
        },
        E::Timeout { .. } => ScuError::Timeout {
            addr,
            secs: timeout.as_secs(),
        },
        E::Aborted { .. } | E::ConnectionClosed { .. } => ScuError::Aborted {
            addr,
            message: e.to_string(),
        },
        e => {
            let text = full_chain(&e);
            if text.contains("onnection refused") {
                ScuError::Refused { addr }
            } else if text.contains("timed out") || text.contains("Timeout") {
                ScuError::Timeout {
                    addr,
                    secs: timeout.as_secs(),
                }
            } else {
                ScuError::Protocol {
                    addr,
                    message: text,
                }
            }
        }
    }
}

fn full_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// "SOP class in transfer syntax(es)" for each proposed context (at most 4).
fn describe(contexts: &[(String, Vec<String>)]) -> String {
    let mut parts: Vec<String> = contexts
        .iter()
        .take(4)
        .map(|(a, ts)| format!("{a} in {}", ts.join(" or ")))
        .collect();
    if contexts.len() > 4 {
        parts.push(format!("and {} more", contexts.len() - 4));
    }
    format!("proposed: {}", parts.join("; "))
}

/// The presentation contexts for sending these objects: one per distinct
/// (SOP class, transfer syntax), in first-seen order, each uncompressed
/// one followed by its lossless fallback (see [`uncompressed_fallback`]);
/// at most [`MAX_CONTEXTS`] (fallbacks are left out first).
pub fn contexts_for(objects: &[Outgoing]) -> Vec<(String, Vec<String>)> {
    let mut originals: Vec<(String, Vec<String>)> = Vec::new();
    for o in objects {
        let wanted = (o.sop_class_uid.clone(), vec![o.transfer_syntax_uid.clone()]);
        if !originals.contains(&wanted) {
            originals.push(wanted);
        }
    }
    let mut out = Vec::with_capacity(originals.len() * 2);
    let mut room = MAX_CONTEXTS.saturating_sub(originals.len());
    for (class, tss) in originals {
        let fallback = tss.first().and_then(|t| uncompressed_fallback(t));
        out.push((class.clone(), tss));
        if let Some(f) = fallback
            && room > 0
        {
            let alt = (class, vec![f.to_string()]);
            if !out.contains(&alt) {
                out.push(alt);
                room -= 1;
            }
        }
    }
    out
}

/// A data set re-encoded for the uncompressed fallback before it was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reencoded {
    /// The transfer syntax it was sent in.
    pub transfer_syntax_uid: String,
    /// blake3 of the data set bytes sent.
    pub blake3: [u8; 32],
}

/// Re-encode a Part-10 object's data set into another uncompressed
/// transfer syntax.
fn reencode(object: &Outgoing, ts: &str) -> std::io::Result<Vec<u8>> {
    use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
    use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
    let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
    let read;
    let bytes: &[u8] = match &object.memory {
        Some(m) => &m.0,
        None => {
            read = std::fs::read(&object.path)?;
            &read
        }
    };
    if let Some(want) = object.dataset_blake3 {
        let offset = crate::part10::dataset_offset_in(&mut std::io::Cursor::new(bytes))?;
        let dataset = usize::try_from(offset)
            .ok()
            .and_then(|o| bytes.get(o..))
            .unwrap_or_default();
        let found = *blake3::hash(dataset).as_bytes();
        if found != want {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                NotItsAddress(found),
            ));
        }
    }
    // from_reader starts at "DICM": skip the preamble.
    let obj = bytes
        .get(128..)
        .ok_or_else(|| invalid("shorter than a Part-10 preamble".into()))
        .and_then(|b| dicom_object::from_reader(b).map_err(|e| invalid(e.to_string())))?;
    let target = TransferSyntaxRegistry
        .get(ts)
        .ok_or_else(|| invalid(format!("unknown transfer syntax {ts}")))?;
    let mut out = Vec::new();
    obj.write_dataset_with_ts(&mut out, target)
        .map_err(|e| invalid(e.to_string()))?;
    Ok(out)
}

/// Read an [`Outgoing`] from a spool file's meta group (the command it
/// arrived with: the data set itself need not parse).
pub fn outgoing(path: &Path) -> Result<Outgoing, crate::part10::Part10Error> {
    let m = crate::part10::read_file_meta(path)?;
    Ok(Outgoing {
        path: path.to_path_buf(),
        memory: None,
        sop_class_uid: m.sop_class_uid,
        sop_instance_uid: m.sop_instance_uid,
        transfer_syntax_uid: m.transfer_syntax_uid,
        dataset_blake3: None,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::part10::{Receipt, file_header};
    use crate::testing::dataset;
    use crate::testing::peers::{free_port, received_datasets, start_storescp};

    const SC: &str = "1.2.840.10008.5.1.4.1.1.7";
    const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
    const RLE: &str = "1.2.840.10008.1.2.5";

    /// The same object held in memory, under a name that is no file.
    fn in_memory(o: &Outgoing) -> Outgoing {
        Outgoing {
            path: o.path.with_extension("in-memory"),
            memory: Some(InMemory(std::fs::read(&o.path).unwrap().into())),
            ..o.clone()
        }
    }

    fn write_object(dir: &Path, uid: &str, ts: &str) -> (Outgoing, Vec<u8>) {
        let body = dataset(SC, uid, "P1");
        let receipt = Receipt {
            source_ip: "127.0.0.1".into(),
            received_at_ms: 1,
        };
        let mut bytes = file_header(SC, uid, ts, "SENDER", &receipt).unwrap();
        bytes.extend_from_slice(&body);
        let path = dir.join(format!("{uid}.dcm"));
        std::fs::write(&path, bytes).unwrap();
        (
            Outgoing {
                path,
                memory: None,
                sop_class_uid: SC.into(),
                sop_instance_uid: uid.into(),
                transfer_syntax_uid: ts.into(),
                dataset_blake3: None,
            },
            body,
        )
    }

    /// A spool file damaged after it was received is never stored at a peer:
    /// found before anything is sent (the association stays usable), or
    /// before the last fragment of a large data set (the association is
    /// aborted, so the peer discards what it got); the same on the
    /// re-encoding fallback.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_spool_file_that_no_longer_matches_its_address_is_never_stored() {
        let dir = tempfile::tempdir().unwrap();
        let checked = |(o, body): (Outgoing, Vec<u8>)| {
            let hash = *blake3::hash(&body).as_bytes();
            (
                Outgoing {
                    dataset_blake3: Some(hash),
                    ..o
                },
                body,
            )
        };
        let damage = |o: &Outgoing, at_end: u64| {
            let mut bytes = std::fs::read(&o.path).unwrap();
            let i = bytes.len() - 1 - at_end as usize;
            bytes[i] ^= 0x5A;
            std::fs::write(&o.path, bytes).unwrap();
        };
        // small: one block
        let (small, _) = checked(write_object(dir.path(), "1.2.3.301", EXPLICIT_LE));
        damage(&small, 0);
        // large: 3 MiB of pixel-like data, damaged in its first MiB
        let uid = "1.2.3.302";
        let mut body = dataset(SC, uid, "P1");
        let pad = 3u32 << 20;
        body.extend_from_slice(&[0x09, 0, 0x10, 0x10, b'O', b'B', 0, 0]);
        body.extend_from_slice(&pad.to_le_bytes());
        body.extend((0..pad).map(|i| (i % 253) as u8));
        let receipt = Receipt {
            source_ip: "127.0.0.1".into(),
            received_at_ms: 1,
        };
        let mut file = file_header(SC, uid, EXPLICIT_LE, "SENDER", &receipt).unwrap();
        file.extend_from_slice(&body);
        let path = dir.path().join(format!("{uid}.dcm"));
        std::fs::write(&path, &file).unwrap();
        let (large, _) = checked((
            Outgoing {
                path,
                memory: None,
                sop_class_uid: SC.into(),
                sop_instance_uid: uid.into(),
                transfer_syntax_uid: EXPLICIT_LE.into(),
                dataset_blake3: None,
            },
            body,
        ));
        damage(&large, u64::from(pad) - 1000);
        let (good, good_body) = checked(write_object(dir.path(), "1.2.3.303", EXPLICIT_LE));

        let out = dir.path().join("received");
        let (_guard, peer) = start_storescp(&["+B"], &out).await;
        let contexts = contexts_for(&[small.clone(), good.clone()]);
        let mut scu = Scu::connect(&peer, &contexts).await.unwrap();
        match scu.store(&small).await {
            Err(ScuError::Corrupt { aborted: false, .. }) => {}
            other => panic!("a damaged small object: {other:?}"),
        }
        // nothing was sent: the association goes on
        assert_eq!(scu.store(&good).await.unwrap(), Status::Success);
        let e = scu.store(&large).await.unwrap_err();
        assert!(
            matches!(e, ScuError::Corrupt { aborted: true, .. }),
            "a damaged large object: {e:?}"
        );
        assert!(!e.is_transient());
        assert!(e.to_string().contains("verify spool"), "{e}");
        // the association is gone
        assert!(scu.store(&good).await.is_err());
        // storescp needs a moment to notice the abort
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(received_datasets(&out), vec![good_body.clone()]);

        // The fallback: re-encoded only from a data set that matches.
        let out = dir.path().join("received-implicit");
        let (_guard, peer) = start_storescp(&["+B", "+xi"], &out).await;
        let mut scu = Scu::connect(&peer, &contexts_for(std::slice::from_ref(&small)))
            .await
            .unwrap();
        match scu.store_reporting(&small).await {
            Err(ScuError::Corrupt { aborted: false, .. }) => {}
            other => panic!("a damaged object on the fallback: {other:?}"),
        }
        let (status, reencoded) = scu.store_reporting(&good).await.unwrap();
        assert_eq!(status, Status::Success);
        assert!(reencoded.is_some());
        scu.release().await;
        assert_eq!(received_datasets(&out).len(), 1);
    }

    /// A peer that accepts Implicit VR Little Endian only (storescp +xi):
    /// an Explicit VR object goes over the fallback context, re-encoded
    /// losslessly (every element equal); the context list stays bounded.
    #[tokio::test(flavor = "multi_thread")]
    async fn explicit_le_falls_back_to_implicit_losslessly() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("received");
        let (_guard, peer) = start_storescp(&["+B", "+xi"], &out).await;
        let (a, _) = write_object(dir.path(), "1.2.3.201", EXPLICIT_LE);
        let (r, _) = write_object(dir.path(), "1.2.3.202", RLE);
        let contexts = contexts_for(&[a.clone(), r.clone()]);
        assert_eq!(
            contexts,
            vec![
                (SC.to_string(), vec![EXPLICIT_LE.to_string()]),
                (SC.to_string(), vec![IMPLICIT_VR_LE.to_string()]),
                (SC.to_string(), vec![RLE.to_string()]),
            ]
        );
        let mut scu = Scu::connect(&peer, &contexts).await.unwrap();
        let (status, reencoded) = scu.store_reporting(&a).await.unwrap();
        assert_eq!(status, Status::Success);
        let reencoded = reencoded.expect("sent re-encoded");
        assert_eq!(reencoded.transfer_syntax_uid, IMPLICIT_VR_LE);
        // The same object from memory is re-encoded to the same bytes (the
        // peer stores it under the same SOP Instance UID: still one file).
        let (status, again) = scu.store_reporting(&in_memory(&a)).await.unwrap();
        assert_eq!(status, Status::Success);
        assert_eq!(again, Some(reencoded.clone()));
        // No lossless fallback for a compressed object.
        assert!(matches!(
            scu.store(&r).await,
            Err(ScuError::NoContext { .. })
        ));
        scu.release().await;
        let got: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(got.len(), 1);
        // The hash reported is that of the data set the peer received.
        let bytes = std::fs::read(&got[0]).unwrap();
        let offset = crate::part10::dataset_offset(&got[0]).unwrap() as usize;
        assert_eq!(reencoded.blake3, *blake3::hash(&bytes[offset..]).as_bytes());
        let received = dicom_object::open_file(&got[0]).unwrap();
        assert_eq!(
            received.meta().transfer_syntax().trim_end_matches('\0'),
            IMPLICIT_VR_LE
        );
        let original = dicom_object::open_file(&a.path).unwrap();
        let n = original.iter().count();
        assert!(n > 3);
        assert_eq!(received.iter().count(), n);
        for e in original.iter() {
            let tag = e.header().tag;
            assert_eq!(
                received.element(tag).unwrap().value(),
                e.value(),
                "element {tag} changed in the re-encoding"
            );
        }
        // At most MAX_CONTEXTS: fallbacks give way to originals.
        let many: Vec<Outgoing> = (0..100)
            .map(|i| Outgoing {
                sop_class_uid: format!("1.2.3.{i}"),
                ..a.clone()
            })
            .collect();
        let c = contexts_for(&many);
        assert_eq!(c.len(), MAX_CONTEXTS);
        assert!(
            many.iter()
                .all(|o| c.contains(&(o.sop_class_uid.clone(), vec![EXPLICIT_LE.to_string()])))
        );
    }

    /// Split `bytes` into PDUs with dicom-ul's own reader: (context, last,
    /// data) of each single-PDV P-DATA-TF.
    fn parse_pdus(mut bytes: &[u8], max_pdu: u32) -> Vec<(u8, bool, Vec<u8>)> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let len = u32::from_be_bytes(bytes[2..6].try_into().unwrap()) as usize;
            let pdu = dicom_ul::pdu::read_pdu(&bytes[..6 + len], max_pdu, true)
                .unwrap()
                .expect("a whole PDU");
            let Pdu::PData { data } = pdu else {
                panic!("not P-DATA-TF: {pdu:?}")
            };
            assert_eq!(data.len(), 1, "one PDV per PDU");
            let pdv = data.into_iter().next().unwrap();
            assert_eq!(pdv.value_type, PDataValueType::Data);
            out.push((pdv.presentation_context_id, pdv.is_last, pdv.data));
            bytes = &bytes[6 + len..];
        }
        out
    }

    /// Blocks are complete P-DATA-TF PDUs within the peer's limit, at most
    /// MAX_SEND_CHUNK data bytes each, only the data set's very last
    /// fragment flagged last, and together exactly the data set; a reused
    /// buffer does not leak bytes of the previous object. The same from a
    /// file and from memory.
    #[test]
    fn blocks_are_framed_pdus_of_the_data_set() {
        let dir = tempfile::tempdir().unwrap();
        let (o, body) = write_object(dir.path(), "1.2.3.301", EXPLICIT_LE);
        // A big data set: the file's own, padded with a large private-ish
        // tail of known bytes (the framing does not parse it).
        let big: Vec<u8> = (0..(MAX_SEND_CHUNK * 2 + 12_345))
            .map(|i| (i % 251) as u8)
            .collect();
        let mut bytes = std::fs::read(&o.path).unwrap();
        bytes.extend_from_slice(&big);
        let big_path = dir.path().join("big.dcm");
        std::fs::write(&big_path, &bytes).unwrap();
        let mut want_big = body.clone();
        want_big.extend_from_slice(&big);

        let at = |path: &Path| Outgoing {
            path: path.to_path_buf(),
            ..o.clone()
        };
        let big_o = at(&big_path);
        let cases = [
            (o.clone(), body.clone(), 16_378usize),
            (big_o.clone(), want_big.clone(), 16_378),
            (big_o.clone(), want_big.clone(), 1_000_000),
            (big_o.clone(), want_big.clone(), MAX_SEND_CHUNK),
        ];
        let from_memory = cases
            .clone()
            .map(|(object, want, chunk)| (in_memory(&object), want, chunk));
        for (object, want, chunk) in cases.into_iter().chain(from_memory) {
            let path = object.path.clone();
            assert_eq!(
                matches!(Reader::open(&object).unwrap().0, Reader::Memory(_)),
                object.memory.is_some()
            );
            let max_pdu = chunk as u32 + 6;
            let (mut source, mut buf, mut used) =
                open_source(&object, 7, chunk, vec![0xEE; 64]).unwrap();
            let mut got = Vec::new();
            let mut blocks = 0;
            loop {
                blocks += 1;
                let pdus = parse_pdus(&buf[..used], max_pdu);
                let data: usize = pdus.iter().map(|p| p.2.len()).sum();
                assert!(data <= MAX_SEND_CHUNK, "block of {data} bytes");
                for (i, (pc, last, d)) in pdus.iter().enumerate() {
                    assert_eq!(*pc, 7);
                    assert!(d.len() <= chunk);
                    let final_one = source.remaining == 0 && i + 1 == pdus.len();
                    assert_eq!(*last, final_one, "{}: last flag of PDU {i}", path.display());
                    got.extend_from_slice(d);
                }
                if source.remaining == 0 {
                    break;
                }
                used = read_block(&mut source, &mut buf).unwrap();
            }
            assert_eq!(got.len(), want.len());
            assert!(got == want, "{}: data differs", path.display());
            assert_eq!(blocks, want.len().div_ceil(MAX_SEND_CHUNK).max(1));
        }

        // An empty data set: one empty fragment, flagged last.
        let meta_only = dir.path().join("meta-only.dcm");
        let offset = crate::part10::dataset_offset(&o.path).unwrap() as usize;
        std::fs::write(&meta_only, &std::fs::read(&o.path).unwrap()[..offset]).unwrap();
        let (source, buf, used) = open_source(&at(&meta_only), 3, 16_378, Vec::new()).unwrap();
        assert_eq!(source.remaining, 0);
        assert_eq!(
            parse_pdus(&buf[..used], 16_384),
            vec![(3, true, Vec::new())]
        );

        // Not a Part-10 file, or gone: an error before anything is sent.
        let junk = dir.path().join("junk.dcm");
        std::fs::write(&junk, vec![0u8; 300]).unwrap();
        assert!(open_source(&at(&junk), 1, 16_378, Vec::new()).is_err());
        assert!(open_source(&in_memory(&at(&junk)), 1, 16_378, Vec::new()).is_err());
        assert!(open_source(&at(&dir.path().join("gone.dcm")), 1, 16_378, Vec::new()).is_err());
    }

    /// Reading ahead: each object's bytes arrive intact whether its first
    /// block was read ahead, announced but not stored next (the stale read
    /// is dropped), or not announced at all; objects held in memory (2 and
    /// 4, whose files are gone) mixed in, announced or not.
    #[tokio::test(flavor = "multi_thread")]
    async fn read_ahead_keeps_every_object_byte_exact() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("received");
        let (_guard, peer) = start_storescp(&["+B"], &out).await;
        let objects: Vec<(Outgoing, Vec<u8>)> = (0..5)
            .map(|i| write_object(dir.path(), &format!("1.2.3.40{i}"), EXPLICIT_LE))
            .collect();
        let outgoing: Vec<Outgoing> = objects
            .iter()
            .enumerate()
            .map(|(i, (o, _))| {
                if i % 2 == 0 && i > 0 {
                    in_memory(o)
                } else {
                    o.clone()
                }
            })
            .collect();
        for o in outgoing.iter().filter(|o| o.memory.is_some()) {
            std::fs::remove_file(o.path.with_extension("dcm")).unwrap();
        }
        let mut scu = Scu::connect(&peer, &contexts_for(&outgoing)).await.unwrap();
        // 0 announces 1 (used), 1 announces 3 (stale: 2 comes next),
        // 2 announces nothing, 3 announces 4 (used), 4 last.
        let plan: [(usize, Option<usize>); 5] = [
            (0, Some(1)),
            (1, Some(3)),
            (2, None),
            (3, Some(4)),
            (4, None),
        ];
        for (i, next) in plan {
            if let Some(n) = next {
                scu.read_ahead(&outgoing[n]);
            }
            assert_eq!(scu.store(&outgoing[i]).await.unwrap(), Status::Success);
        }
        assert!(scu.spare.len() <= 2, "at most two spare buffers");
        scu.release().await;
        let received = received_datasets(&out);
        let mut sent: Vec<Vec<u8>> = objects.into_iter().map(|(_, b)| b).collect();
        sent.sort();
        assert_eq!(received, sent);
    }

    /// Against a real DCMTK storescp in bit-preserving mode (+B), which
    /// accepts uncompressed transfer syntaxes only.
    #[tokio::test(flavor = "multi_thread")]
    async fn stores_byte_exact_into_dcmtk_and_reports_refused_contexts() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("received");
        let (_guard, peer) = start_storescp(&["+B"], &out).await;

        let (a, body_a) = write_object(dir.path(), "1.2.3.101", EXPLICIT_LE);
        let (b, body_b) = write_object(dir.path(), "1.2.3.102", EXPLICIT_LE);
        let (c, _) = write_object(dir.path(), "1.2.3.103", RLE);
        let objects = [a.clone(), c.clone(), b.clone()];
        // explicit LE, its implicit fallback, RLE
        assert_eq!(contexts_for(&objects).len(), 3);
        let mut scu = Scu::connect(&peer, &contexts_for(&objects)).await.unwrap();
        assert_eq!(scu.store(&a).await.unwrap(), Status::Success);
        let refused = scu.store(&c).await.unwrap_err();
        assert!(matches!(refused, ScuError::NoContext { .. }), "{refused}");
        assert!(!refused.is_transient());
        // a spool file that cannot be read is this object's problem, not the
        // peer's: permanent, and nothing was sent
        let missing = Outgoing {
            path: dir.path().join("gone.dcm"),
            ..a.clone()
        };
        let e = scu.store(&missing).await.unwrap_err();
        assert!(
            matches!(e, ScuError::File { .. }) && !e.is_transient(),
            "{e}"
        );
        // the association is still usable after a refused context
        assert_eq!(scu.store(&b).await.unwrap(), Status::Success);
        scu.release().await;

        // What storescp wrote holds exactly our data set bytes.
        let received = received_datasets(&out);
        let mut sent = vec![body_a, body_b];
        sent.sort();
        assert_eq!(received, sent);

        // A closed port is a transient, clearly worded failure.
        let closed = Peer {
            port: free_port(),
            ..peer
        };
        let e = echo(&closed).await.unwrap_err();
        assert!(matches!(e, ScuError::Refused { .. }), "{e}");
        assert!(e.is_transient());
    }
}
