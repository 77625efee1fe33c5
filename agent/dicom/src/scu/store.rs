//! Streamed C-STORE of Part-10 files: the data set is read from its file
//! (or memory) block by block, the next object read ahead, sent fragmented
//! to the peer's PDU size, and hashed as it goes: its last fragment leaves
//! only if it matches its spool address.

use std::path::{Path, PathBuf};

use super::error::{NotItsAddress, not_its_address};
use super::transcode::{MAX_TRANSCODE_BYTES, Reencoded, reencode, uncompressed_fallback};
use super::{MAX_CONTEXTS, MAX_SEND_CHUNK, Scu, ScuError};
use crate::dimse::{CStoreRq, Status};
use dicom_ul::pdu::PDataValueType;

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

/// An object being sent: where its bytes are and how much of its data set
/// is still to be read, framed for one presentation context.
pub(super) struct Source {
    reader: Reader,
    pub(super) remaining: u64,
    pc: u8,
    chunk: usize,
    /// The data set's hash so far, and what it must come to.
    check: Option<(blake3::Hasher, [u8; 32])>,
}

/// The bytes of an object being sent: an open file (read in the blocking
/// pool) or memory (read in place).
pub(super) enum Reader {
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
    pub(super) fn open(object: &Outgoing) -> std::io::Result<(Self, u64)> {
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
pub(super) struct ReadAhead {
    path: PathBuf,
    pc: u8,
    chunk: usize,
    task: tokio::task::JoinHandle<ReadResult>,
}

/// P-DATA-TF PDU header (type, reserved, length) plus PDV header (length,
/// context, control): what precedes each fragment's bytes.
const PDU_PDV_HEADER: usize = 12;

/// Open an object's bytes, find its data set, and read the first block.
pub(super) fn open_source(object: &Outgoing, pc: u8, chunk: usize, mut buf: Vec<u8>) -> ReadResult {
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
pub(super) fn read_block(source: &mut Source, buf: &mut Vec<u8>) -> std::io::Result<usize> {
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

impl Scu {
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
    /// is empty between its sends), within the peer timeout, at the pace of
    /// the peer's [`super::pace::Pacer`] if it has one (the wait is not
    /// counted against the timeout).
    async fn write_pdus(&mut self, pdus: &[u8]) -> Result<(), ScuError> {
        use tokio::io::AsyncWriteExt;
        if let Some(p) = &self.peer.pace {
            p.take(pdus.len()).await;
        }
        let addr = self.peer.addr();
        let timeout = self.peer.timeout;
        let stream = self.assoc.stream();
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
