//! Receiving one C-STORE's data set, whatever it is for: one mechanism for
//! the ingest path (the spool, [`super::store`]), the drill receiver (a
//! drill's inbox, [`super::inbox`]) and the C-GET sub-operations the
//! verifier receives (scratch files).
//!
//! Each destination implements [`StoreSink`]; [`Incoming`] drives it: the
//! sink's checks before a byte is written, a Part-10 header naming the
//! object, its sender and its arrival, then each data fragment written
//! (page cache), hashed and walked as it arrives ([`identity::walker`]: the
//! structure and the identifying attributes, in one pass), and the
//! hand-over at the last fragment. A refused object's remaining fragments
//! are drained and dropped and its file removed (dropping the writer does
//! it); the association goes on.
//!
//! Page-cache writes of one PDU (≤ 16 MiB by configuration, 128 KiB from
//! DCMTK) and their hashing are done inline on the runtime: they take tens
//! of microseconds, and each writeback is started at once (see
//! `ObjectWriter::write_chunk`) so dirty pages do not pile up. Handing every
//! chunk to a blocking thread measured ~20 context switches per object on a
//! 2-core machine. What can wait on the disk (fsync, rename, a full-file
//! parse) is the sink's, on a blocking thread.

use std::fs::File;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use pacs_mirror_dicom::dimse::{CStoreRq, Status};
use pacs_mirror_dicom::identity;
use pacs_mirror_dicom::part10::{self, Receipt};
use pacs_mirror_dicom::structure::{Observed, Walker};
use pacs_mirror_store::identify;
use pacs_mirror_store::spool::{ObjectWriter, SpoolError};

/// A refusal: the status and a comment for the Error Comment element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The status to answer.
    pub status: Status,
    /// Why (also logged).
    pub comment: String,
}

impl Failure {
    /// A refusal with `status`.
    pub fn new(status: Status, comment: impl Into<String>) -> Self {
        Failure {
            status,
            comment: comment.into(),
        }
    }

    /// A local failure (I/O, no room): A700.
    pub fn local(comment: impl Into<String>) -> Self {
        Self::new(Status::OUT_OF_RESOURCES, comment)
    }
}

impl From<SpoolError> for Failure {
    fn from(e: SpoolError) -> Self {
        match e {
            SpoolError::ObjectTooLarge { .. } => {
                Failure::new(Status::OBJECT_TOO_LARGE, e.to_string())
            }
            e => Failure::local(e.to_string()),
        }
    }
}

/// Who sent an object: the (calling AE title, address) pair that every log
/// event about it carries as the fields `calling_ae` and `peer`, and that
/// its Part-10 header records.
#[derive(Debug, Clone)]
pub struct Origin {
    /// Calling AE title (for C-GET sub-operations: the AE retrieved from).
    pub calling_ae: String,
    /// Peer address and port.
    pub peer: SocketAddr,
}

/// Check a C-STORE command's Affected SOP Instance and Class UIDs: C002
/// when one cannot be an index key (empty, control characters, over 1 KiB).
/// Every destination keeps what the primary may hold: a UID that breaks
/// PS3.5 9.1 but is usable as a key is kept (ingest records it as a
/// finding; a drill or a retrieval compares the copy like any other), and
/// file names never come from UIDs.
pub fn check_command_uids(rq: &CStoreRq) -> Result<(), Failure> {
    match identify::unusable_key([
        ("Affected SOP Instance UID", rq.sop_instance_uid.as_str()),
        ("Affected SOP Class UID", rq.sop_class_uid.as_str()),
    ]) {
        Some((what, e)) => Err(Failure::new(
            Status::INVALID_UID,
            format!("{what} cannot identify the object: {e}"),
        )),
        None => Ok(()),
    }
}

/// 0122 when the request's SOP class is not its presentation context's
/// abstract syntax (checked by every receiver before a byte is written).
pub fn context_refusal(rq: &CStoreRq, abstract_syntax: &str) -> Option<Failure> {
    (rq.sop_class_uid != abstract_syntax).then(|| {
        Failure::new(
            Status::SopClassNotSupported,
            format!(
                "SOP class {} differs from the presentation context's {abstract_syntax}",
                rq.sop_class_uid
            ),
        )
    })
}

/// Where received data sets go. See the module documentation.
pub trait StoreSink: Send + Sync + 'static {
    /// What the sink carries from [`StoreSink::open`] to its hand-over
    /// (ingest: the spool reservation; the inbox: which drills the object
    /// may be for). Dropped when the object is refused or abandoned.
    type Ticket: Send;
    /// What a kept object gives back.
    type Kept: Send;

    /// The checks made before a byte is written, and a new file for the
    /// object. `Err` refuses it: its data set is drained and dropped.
    fn open(
        &self,
        rq: &CStoreRq,
        origin: &Origin,
    ) -> Result<(Self::Ticket, File, PathBuf), Failure>;

    /// Whether the file is scratch: not flushed when finished (what is kept
    /// only to be compared, then removed).
    fn scratch(&self) -> bool;

    /// Room for `len` more bytes (ingest: the spool quota; the inbox: free
    /// space kept for ingest). `Err` refuses the rest of the object.
    fn admit(&self, _ticket: &mut Self::Ticket, _len: u64) -> Result<(), Failure> {
        Ok(())
    }

    /// The last fragment arrived: keep the object.
    fn keep(
        &self,
        object: Received<Self::Ticket>,
    ) -> impl Future<Output = Result<Self::Kept, Failure>> + Send;

    /// Every object ends here, kept or refused (counters, activity).
    fn finished(&self, _origin: &Origin, _result: Result<&Self::Kept, &Failure>) {}
}

/// A complete object, handed to [`StoreSink::keep`].
pub struct Received<T> {
    /// What [`StoreSink::open`] gave.
    pub ticket: T,
    /// The file: header and data set written, not yet finished.
    pub writer: ObjectWriter,
    /// The walk of the data set: its structure and identifying attributes.
    pub observed: Observed,
    /// The request.
    pub rq: CStoreRq,
    /// The negotiated transfer syntax of the data set.
    pub transfer_syntax: String,
    /// Who sent it.
    pub origin: Origin,
    /// When the command arrived (Unix ms, as recorded in the header).
    pub received_at_ms: u64,
    /// When the command arrived.
    pub started: Instant,
    /// When the first data fragment arrived.
    pub first_byte_at: Instant,
    /// When the last one did.
    pub last_byte_at: Instant,
}

enum State<T> {
    Writing(Box<Writing<T>>),
    Refusing(Failure),
}

struct Writing<T> {
    ticket: T,
    writer: ObjectWriter,
    walker: Walker,
}

/// A C-STORE being received into `S`.
pub struct Incoming<S: StoreSink> {
    sink: Arc<S>,
    /// The request.
    pub rq: CStoreRq,
    /// Its presentation context.
    pub pc_id: u8,
    transfer_syntax: String,
    origin: Origin,
    received_at_ms: u64,
    started: Instant,
    first_byte_at: Option<Instant>,
    state: State<S::Ticket>,
}

impl<S: StoreSink> Incoming<S> {
    /// Start receiving. `refusal` is set by the caller when the request is
    /// refused before the sink is asked (SOP class not accepted…).
    pub fn begin(
        sink: Arc<S>,
        rq: CStoreRq,
        pc_id: u8,
        transfer_syntax: &str,
        origin: Origin,
        refusal: Option<Failure>,
    ) -> Self {
        let received_at_ms = crate::unix_ms();
        let state = match refusal.map_or_else(
            || open(&*sink, &rq, transfer_syntax, &origin, received_at_ms),
            Err,
        ) {
            Ok(w) => State::Writing(Box::new(w)),
            Err(f) => State::Refusing(f),
        };
        Incoming {
            sink,
            rq,
            pc_id,
            transfer_syntax: transfer_syntax.to_string(),
            origin,
            received_at_ms,
            started: Instant::now(),
            first_byte_at: None,
            state,
        }
    }

    /// Take one data fragment (page-cache write, hash and walk, inline;
    /// nothing here waits on the disk).
    pub fn data(&mut self, chunk: &[u8]) {
        self.first_byte_at.get_or_insert_with(Instant::now);
        let State::Writing(w) = &mut self.state else {
            return;
        };
        // A flaw is recorded by the walker (a finding, for ingest); the
        // bytes are kept all the same.
        let _ = w.walker.feed(chunk);
        let written = self
            .sink
            .admit(&mut w.ticket, chunk.len() as u64)
            .and_then(|()| w.writer.write_chunk(chunk).map_err(Failure::from));
        if let Err(f) = written {
            // Dropping the writer removes the file, the ticket releases
            // what it holds.
            self.state = State::Refusing(f);
        }
    }

    /// The last fragment arrived: hand the object to the sink; the result
    /// decides the status to answer.
    pub async fn finish(mut self) -> (CStoreRq, u8, Result<S::Kept, Failure>) {
        let state = std::mem::replace(&mut self.state, State::Refusing(Failure::local("finished")));
        let result = match state {
            State::Refusing(f) => Err(f),
            State::Writing(w) => {
                let Writing {
                    ticket,
                    writer,
                    walker,
                } = *w;
                let last_byte_at = Instant::now();
                let received = Received {
                    ticket,
                    writer,
                    observed: walker.finish_observing(),
                    rq: self.rq.clone(),
                    transfer_syntax: self.transfer_syntax.clone(),
                    origin: self.origin.clone(),
                    received_at_ms: self.received_at_ms,
                    started: self.started,
                    first_byte_at: self.first_byte_at.unwrap_or(last_byte_at),
                    last_byte_at,
                };
                self.sink.keep(received).await
            }
        };
        self.sink.finished(&self.origin, result.as_ref());
        (self.rq.clone(), self.pc_id, result)
    }

    /// The association ended mid-object: drop everything (file removed,
    /// ticket released).
    pub fn abandon(mut self) {
        self.state = State::Refusing(Failure::local("abandoned"));
    }
}

/// The sink's checks and file, the Part-10 header, the writer and walker.
fn open<S: StoreSink>(
    sink: &S,
    rq: &CStoreRq,
    transfer_syntax: &str,
    origin: &Origin,
    received_at_ms: u64,
) -> Result<Writing<S::Ticket>, Failure> {
    let header = part10::file_header(
        &rq.sop_class_uid,
        &rq.sop_instance_uid,
        transfer_syntax,
        &origin.calling_ae,
        &Receipt {
            source_ip: origin.peer.ip().to_string(),
            received_at_ms,
        },
    );
    let (ticket, file, path) = sink.open(rq, origin)?;
    let header = match header {
        Ok(h) => h,
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            return Err(Failure::new(Status::INVALID_UID, e.to_string()));
        }
    };
    let writer = ObjectWriter::new(file, path, &header)?;
    Ok(Writing {
        ticket,
        writer: if sink.scratch() {
            writer.scratch()
        } else {
            writer
        },
        walker: identity::walker(transfer_syntax),
    })
}
