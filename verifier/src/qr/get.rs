//! The C-GET loop: send the request, then serve the C-STORE sub-operations
//! the peer sends back on the same association while reading its C-GET
//! responses (pending counts, then the final status).
//!
//! Each sub-operation's data set is streamed to a new file in the caller's
//! scratch directory, one data PDV at a time (at most one PDU in memory), as
//! a Part-10 file: our file meta header ([`pacs_mirror_dicom::part10::file_header`]) and
//! the data set bytes exactly as received. blake3 is computed over those data
//! set bytes while they are written — the spool's definition, so hashes
//! compare with the index. The file name comes from a per-call random
//! prefix and a counter, never from a UID. C-STORE-RSP Success is sent only
//! after the file is written and fsynced (written only, with
//! [`QrOptions::fsync`] off); a partial or refused file is removed. The
//! receiving is the agent's one mechanism for every C-STORE
//! ([`Incoming`], with [`GetSink`] as its destination).
//!
//! Per instance the outcome records when its first and last data bytes
//! arrived, counted from the moment the C-GET request was sent: time to first
//! instance and time to whole study for recovery-time measurements.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::responses::{Event, Operation, Responses};
use super::{
    QR_MODEL_ARC, QrError, QrOptions, RetrieveTarget, STUDY_ROOT_GET, SubOperations, ms,
    qr_context, send_request,
};
use pacs_mirror_agent::scp::receive::{
    Failure, Incoming, Origin, Received, StoreSink, check_command_uids, context_refusal,
};
use pacs_mirror_dicom::dimse::{self, CStoreRq, CommandField, QueryRetrieveRq, Status};
use pacs_mirror_dicom::scu::Scu;

/// One instance retrieved and written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrievedInstance {
    /// Affected SOP Instance UID of the sub-operation.
    pub sop_instance_uid: String,
    /// Affected SOP Class UID of the sub-operation.
    pub sop_class_uid: String,
    /// The transfer syntax of the context it came on (its data set's).
    pub transfer_syntax_uid: String,
    /// blake3 of the data set bytes as received (no file meta).
    pub blake3: [u8; 32],
    /// Length of the data set.
    pub dataset_bytes: u64,
    /// The Part-10 file in the scratch directory.
    pub path: PathBuf,
    /// Where the data set starts in that file.
    pub dataset_offset: u64,
    /// When its first data byte arrived, since the C-GET request was sent.
    pub first_byte_after: Duration,
    /// When its last data byte arrived, since the C-GET request was sent.
    pub last_byte_after: Duration,
}

impl RetrievedInstance {
    /// The blake3 in lowercase hex (as in the index dump).
    pub fn blake3_hex(&self) -> String {
        blake3::Hash::from_bytes(self.blake3).to_hex().to_string()
    }
}

/// A sub-operation we answered with a failure status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedSubOperation {
    pub sop_instance_uid: String,
    pub sop_class_uid: String,
    /// The status we answered.
    pub status: Status,
    /// Why.
    pub reason: String,
}

/// The result of a C-GET that reached its final response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetOutcome {
    /// The final status (Success, Warning 0xB000 when some sub-operations
    /// failed, Cancel, or a failure such as 0xA701/0xA702/0xA900/0xC000).
    pub status: Status,
    /// The peer's counts (final response, or the last pending one's where
    /// the final omits them).
    pub sub_operations: SubOperations,
    /// Instances written, in arrival order.
    pub instances: Vec<RetrievedInstance>,
    /// Sub-operations we refused (their files were removed).
    pub refused: Vec<RefusedSubOperation>,
    /// Failed SOP Instance UID List (0008,0058) of the final response.
    pub failed_sop_instance_uids: Vec<String>,
    /// Error Comment of the final response.
    pub error_comment: Option<String>,
    /// We sent C-CANCEL.
    pub cancelled: bool,
    /// From sending the request to the final response.
    pub elapsed: Duration,
}

impl GetOutcome {
    /// Final Success, no failed or warning sub-operation, nothing refused.
    pub fn is_complete(&self) -> bool {
        self.status == Status::Success
            && self.sub_operations.failed == 0
            && self.sub_operations.warning == 0
            && self.refused.is_empty()
    }
}

/// Where C-GET sub-operations go: new files in the caller's scratch
/// directory, named `get-<prefix>-<n>.dcm` (never from a UID), fsynced at
/// the end unless [`QrOptions::fsync`] is off. One mechanism with the
/// agent's ingest and drill receiver: [`Incoming`].
struct GetSink {
    dir: PathBuf,
    prefix: u32,
    next: AtomicU64,
    fsync: bool,
    /// When the C-GET request was sent: instance times count from it.
    start: Instant,
}

impl StoreSink for GetSink {
    type Ticket = ();
    type Kept = RetrievedInstance;

    fn open(&self, rq: &CStoreRq, _origin: &Origin) -> Result<((), File, PathBuf), Failure> {
        check_command_uids(rq)?;
        let (file, path) = pacs_mirror_store::spool::create_scratch_file(
            &self.dir,
            "get",
            self.prefix,
            &mut || self.next.fetch_add(1, Ordering::Relaxed),
        )
        .map_err(|e| Failure::local(format!("creating a file in {}: {e}", self.dir.display())))?;
        Ok(((), file, path))
    }

    fn scratch(&self) -> bool {
        !self.fsync
    }

    /// Finish the file: on the blocking pool when it fsyncs; inline
    /// otherwise, as nothing is left to wait for (a hop to the pool costs
    /// two thread wake-ups per instance, on the peer's critical path).
    async fn keep(&self, object: Received<()>) -> Result<RetrievedInstance, Failure> {
        let Received {
            writer,
            rq,
            transfer_syntax,
            first_byte_at,
            last_byte_at,
            ..
        } = object;
        let written = if self.fsync {
            tokio::task::spawn_blocking(move || writer.finish())
                .await
                .map_err(|e| Failure::local(format!("writer task: {e}")))?
        } else {
            writer.finish()
        }
        .map_err(|e| Failure::local(e.to_string()))?;
        let instance = RetrievedInstance {
            sop_instance_uid: rq.sop_instance_uid,
            sop_class_uid: rq.sop_class_uid,
            transfer_syntax_uid: transfer_syntax,
            blake3: written.hash.0,
            dataset_bytes: written.dataset_bytes,
            path: written.temp.path().to_path_buf(),
            dataset_offset: written.header_bytes,
            first_byte_after: first_byte_at.saturating_duration_since(self.start),
            last_byte_after: last_byte_at.saturating_duration_since(self.start),
        };
        written.temp.keep();
        Ok(instance)
    }
}

pub(super) async fn run(
    scu: &mut Scu,
    target: &RetrieveTarget,
    scratch_dir: &Path,
    options: &QrOptions,
) -> Result<GetOutcome, QrError> {
    let (pc, ts) = qr_context(scu, STUDY_ROOT_GET, "C-GET")?;
    // Accepted contexts other than Q/R models (an association may carry
    // FIND and MOVE too) are the storage contexts.
    let storage: Vec<String> = scu
        .presentation_contexts()
        .iter()
        .map(|p| p.abstract_syntax.trim_end_matches('\0').to_string())
        .filter(|a| !a.starts_with(QR_MODEL_ARC))
        .collect();
    if storage.is_empty() {
        return Err(QrError::NotNegotiated {
            addr: super::addr_of(scu),
            service: "C-GET",
            what: "none of the proposed storage contexts".into(),
        });
    }
    if !storage.iter().any(|c| scu.scp_role_accepted(c)) {
        tracing::debug!(
            "the peer answered no SCP role selection; relying on it sending C-GET sub-operations anyway (Orthanc does)"
        );
    }
    let identifier = target.identifier().map_err(QrError::InvalidQuery)?;
    std::fs::create_dir_all(scratch_dir).map_err(|source| QrError::Scratch {
        path: scratch_dir.to_path_buf(),
        source,
    })?;
    // The files record the AE retrieved from, and its address.
    let origin = Origin {
        calling_ae: scu.peer().called_ae.clone(),
        peer: SocketAddr::new(
            scu.peer_ip()
                .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
            scu.peer().port,
        ),
    };
    let id = scu.message_id();
    let rq = QueryRetrieveRq {
        field: CommandField::CGetRq,
        message_id: id,
        sop_class_uid: STUDY_ROOT_GET.to_string(),
        priority: options.priority,
        move_destination: None,
    };
    send_request(scu, pc, &ts, &rq, &identifier).await?;
    let start = Instant::now();
    let sink = Arc::new(GetSink {
        dir: scratch_dir.to_path_buf(),
        prefix: rand::random(),
        next: AtomicU64::new(0),
        fsync: options.fsync,
        start,
    });
    let mut outcome = GetOutcome {
        status: Status::Success,
        sub_operations: SubOperations::default(),
        instances: Vec::new(),
        refused: Vec::new(),
        failed_sop_instance_uids: Vec::new(),
        error_comment: None,
        cancelled: false,
        elapsed: Duration::ZERO,
    };
    let mut sub: Option<Incoming<GetSink>> = None;
    let mut responses = Responses::new(Operation::Get, (pc, id), &ts, options);
    loop {
        let event = responses.next(scu, false).await?;
        if let (Some(s), Event::Pending { .. } | Event::Final { .. } | Event::SubCommand { .. }) =
            (&sub, &event)
        {
            return Err(scu
                .protocol(format!(
                    "command received in the middle of the data set of {}",
                    s.rq.sop_instance_uid
                ))
                .into());
        }
        match event {
            Event::Pending { rsp, .. } => outcome.sub_operations.update(&rsp),
            Event::Final { rsp, failed } => {
                outcome.sub_operations.update(&rsp);
                outcome.status = rsp.status;
                outcome.error_comment = rsp.error_comment;
                outcome.failed_sop_instance_uids = failed;
                outcome.cancelled = responses.cancelled;
                return Ok(finish(outcome, start));
            }
            Event::SubCommand { pc_id, command } => {
                sub = Some(begin(scu, pc_id, &command, &sink, &origin)?);
            }
            Event::SubData { pc_id, bytes, last } => {
                let Some(s) = sub.as_mut() else {
                    return Err(scu
                        .protocol("data fragment without a C-STORE-RQ".into())
                        .into());
                };
                if s.pc_id != pc_id {
                    return Err(scu
                        .protocol(format!(
                            "data fragment on presentation context {pc_id}, C-STORE-RQ on {}",
                            s.pc_id
                        ))
                        .into());
                }
                s.data(&bytes);
                if last && let Some(s) = sub.take() {
                    end(scu, s, &mut outcome).await?;
                }
            }
        }
    }
}

/// A C-STORE-RQ arrived on a storage context: open its file (or decide to
/// refuse it).
fn begin(
    scu: &Scu,
    pc_id: u8,
    command: &dimse::CommandSet,
    sink: &Arc<GetSink>,
    origin: &Origin,
) -> Result<Incoming<GetSink>, QrError> {
    let field = command
        .command_field()
        .map_err(|e| scu.protocol(e.to_string()))?;
    if field != CommandField::CStoreRq {
        return Err(scu
            .protocol(format!(
                "command 0x{:04X} on storage context {pc_id} (expected a C-STORE-RQ)",
                field.code()
            ))
            .into());
    }
    let rq = CStoreRq::from_command(command)
        .map_err(|e| scu.protocol(format!("malformed C-STORE-RQ: {e}")))?;
    if !command
        .has_data_set()
        .map_err(|e| scu.protocol(e.to_string()))?
    {
        return Err(scu.protocol("C-STORE-RQ without a data set".into()).into());
    }
    let Some((abstract_syntax, transfer_syntax)) = scu.context_by_id(pc_id) else {
        return Err(scu
            .protocol(format!(
                "C-STORE-RQ on presentation context {pc_id}, which was not accepted"
            ))
            .into());
    };
    let refusal = context_refusal(&rq, &abstract_syntax);
    Ok(Incoming::begin(
        sink.clone(),
        rq,
        pc_id,
        &transfer_syntax,
        origin.clone(),
        refusal,
    ))
}

/// The last fragment arrived: keep the file (fsynced unless off), answer,
/// record.
async fn end(scu: &mut Scu, s: Incoming<GetSink>, outcome: &mut GetOutcome) -> Result<(), QrError> {
    let (rq, pc_id, result) = s.finish().await;
    let rsp = match &result {
        Ok(_) => dimse::c_store_rsp(&rq, Status::Success, None),
        Err(f) => dimse::c_store_rsp(&rq, f.status, Some(&f.comment)),
    };
    match result {
        Ok(instance) => {
            tracing::debug!(
                sop_instance_uid = %instance.sop_instance_uid.escape_debug(),
                bytes = instance.dataset_bytes,
                last_byte_ms = ms(instance.last_byte_after),
                "C-GET sub-operation stored"
            );
            outcome.instances.push(instance);
        }
        Err(Failure { status, comment }) => {
            tracing::warn!(
                sop_instance_uid = %rq.sop_instance_uid.escape_debug(),
                %status,
                reason = %comment.escape_debug(),
                "C-GET sub-operation refused"
            );
            outcome.refused.push(RefusedSubOperation {
                sop_instance_uid: rq.sop_instance_uid.clone(),
                sop_class_uid: rq.sop_class_uid.clone(),
                status,
                reason: comment,
            });
        }
    }
    scu.send_command(pc_id, &rsp).await?;
    Ok(())
}

fn finish(mut outcome: GetOutcome, start: Instant) -> GetOutcome {
    outcome.elapsed = start.elapsed();
    tracing::debug!(
        status = %outcome.status,
        instances = outcome.instances.len(),
        refused = outcome.refused.len(),
        completed = outcome.sub_operations.completed,
        failed = outcome.sub_operations.failed,
        elapsed_ms = ms(outcome.elapsed),
        "C-GET done"
    );
    outcome
}

#[cfg(test)]
mod tests {
    use super::super::testpeer::{self, Script, Step};
    use super::super::*;

    const CT: &str = "1.2.840.10008.5.1.4.1.1.2";
    const SC: &str = "1.2.840.10008.5.1.4.1.1.7";
    const EXPLICIT: &str = "1.2.840.10008.1.2.1";
    const RLE: &str = "1.2.840.10008.1.2.5";

    fn body(uid: &str, pad: usize) -> Vec<u8> {
        let mut b = pacs_mirror_dicom::testing::dataset(CT, uid, "P1");
        // an (0009,0010) OB private-ish trailer to make it larger
        b.extend_from_slice(&[0x09, 0, 0x00, 0x10, b'O', b'B', 0, 0]);
        b.extend_from_slice(&(pad as u32).to_le_bytes());
        b.extend((0..pad).map(|i| (i % 251) as u8));
        b
    }

    fn storage() -> Vec<StorageContext> {
        storage_contexts(&[CT, SC], &[EXPLICIT, RLE])
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn sub_operations_are_streamed_hashed_and_answered() {
        let a = body("1.2.3.1", 100_000);
        let b = body("1.2.3.2", 10);
        let script = Script::get(
            &[CT, SC],
            vec![
                Step::Store(
                    CT.into(),
                    "1.2.3.1".into(),
                    EXPLICIT.into(),
                    a.clone(),
                    4000,
                ),
                Step::Pending(1, 1, 0, 0),
                Step::Store(CT.into(), "1.2.3.2".into(), RLE.into(), b.clone(), 1 << 20),
                // CT claimed on the SC context: refused 0122
                Step::StoreOn(
                    SC.into(),
                    CT.into(),
                    "1.2.3.3".into(),
                    EXPLICIT.into(),
                    a.clone(),
                ),
                Step::FinalCounts(Status::Warning(0xB000), 2, 1, 0, vec!["1.2.3.3".into()]),
            ],
        );
        let (peer, handle) = testpeer::start(script).await;
        let dir = tempfile::tempdir().unwrap();
        let scratch = dir.path().join("scratch");
        let out = get(
            &peer,
            &RetrieveTarget::study("1.2.3"),
            &storage(),
            &scratch,
            &QrOptions::default(),
        )
        .await
        .unwrap();
        assert_eq!(out.status, Status::Warning(0xB000));
        assert!(!out.is_complete());
        assert_eq!(out.sub_operations.completed, 2);
        assert_eq!(out.sub_operations.failed, 1);
        assert_eq!(out.failed_sop_instance_uids, ["1.2.3.3"]);
        assert_eq!(out.instances.len(), 2);
        for (inst, want, ts) in [
            (&out.instances[0], &a, EXPLICIT),
            (&out.instances[1], &b, RLE),
        ] {
            assert_eq!(inst.blake3, *blake3::hash(want).as_bytes());
            assert_eq!(inst.blake3_hex(), blake3::hash(want).to_hex().to_string());
            assert_eq!(inst.dataset_bytes, want.len() as u64);
            assert_eq!(inst.transfer_syntax_uid, ts);
            assert!(inst.path.starts_with(&scratch));
            let name = inst
                .path
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            assert!(
                name.starts_with("get-") && !name.contains("1.2.3"),
                "{name}"
            );
            let file = std::fs::read(&inst.path).unwrap();
            assert_eq!(&file[inst.dataset_offset as usize..], &want[..]);
            let h = pacs_mirror_dicom::part10::read_header(&inst.path).unwrap();
            assert_eq!(h.sop_instance_uid, inst.sop_instance_uid);
            assert_eq!(h.transfer_syntax_uid, ts);
            assert_eq!(h.dataset_offset, inst.dataset_offset);
            assert_eq!(h.source_ae, "QRSCP");
            assert!(inst.first_byte_after <= inst.last_byte_after);
        }
        assert!(out.instances[0].last_byte_after <= out.instances[1].first_byte_after);
        assert_eq!(out.refused.len(), 1);
        assert_eq!(out.refused[0].status, Status::SopClassNotSupported);
        // only the two stored files remain
        assert_eq!(std::fs::read_dir(&scratch).unwrap().count(), 2);
        let seen = handle.await.unwrap();
        assert_eq!(
            seen.store_responses,
            [
                ("1.2.3.1".to_string(), 0x0000),
                ("1.2.3.2".to_string(), 0x0000),
                ("1.2.3.3".to_string(), 0x0122)
            ]
        );
        assert_eq!(
            seen.identifiers[0]
                .get(dicom_dictionary_std::tags::STUDY_INSTANCE_UID)
                .unwrap()
                .to_str()
                .unwrap(),
            "1.2.3"
        );
        assert!(seen.released);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn without_fsync_files_and_hashes_are_the_same() {
        let a = body("1.2.3.1", 100_000);
        let script = Script::get(
            &[CT],
            vec![
                Step::Store(
                    CT.into(),
                    "1.2.3.1".into(),
                    EXPLICIT.into(),
                    a.clone(),
                    4000,
                ),
                Step::FinalCounts(Status::Success, 1, 0, 0, vec![]),
            ],
        );
        let (peer, handle) = testpeer::start(script).await;
        let dir = tempfile::tempdir().unwrap();
        let options = QrOptions {
            fsync: false,
            ..QrOptions::default()
        };
        let out = get(
            &peer,
            &RetrieveTarget::study("1.2.3"),
            &storage(),
            dir.path(),
            &options,
        )
        .await
        .unwrap();
        assert!(out.is_complete());
        assert_eq!(out.instances.len(), 1);
        let inst = &out.instances[0];
        assert_eq!(inst.blake3, *blake3::hash(&a).as_bytes());
        assert_eq!(inst.dataset_bytes, a.len() as u64);
        let file = std::fs::read(&inst.path).unwrap();
        assert_eq!(&file[inst.dataset_offset as usize..], &a[..]);
        assert_eq!(
            handle.await.unwrap().store_responses,
            [("1.2.3.1".to_string(), 0x0000)]
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn abort_mid_instance_leaves_no_file() {
        let a = body("1.2.3.1", 50_000);
        let script = Script::get(
            &[CT],
            vec![Step::StoreThenAbort(
                CT.into(),
                "1.2.3.1".into(),
                EXPLICIT.into(),
                a,
                20_000,
            )],
        );
        let (peer, handle) = testpeer::start(script).await;
        let dir = tempfile::tempdir().unwrap();
        let e = get(
            &peer,
            &RetrieveTarget::study("1.2.3"),
            &storage(),
            dir.path(),
            &QrOptions::default(),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(
                e,
                QrError::Association(pacs_mirror_dicom::scu::ScuError::Aborted { .. })
            ),
            "{e}"
        );
        assert!(e.is_transient());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "the partial file is removed"
        );
        handle.await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn cancel_and_failure_statuses() {
        let token = tokio_util::sync::CancellationToken::new();
        token.cancel();
        let script = Script::get(
            &[CT],
            vec![
                Step::ExpectCancel,
                Step::FinalCounts(Status::Cancel, 0, 0, 0, vec![]),
            ],
        );
        let (peer, handle) = testpeer::start(script).await;
        let dir = tempfile::tempdir().unwrap();
        let options = QrOptions {
            cancel: Some(token),
            ..QrOptions::default()
        };
        let out = get(
            &peer,
            &RetrieveTarget::series("1.2.3", "1.2.3.4"),
            &storage(),
            dir.path(),
            &options,
        )
        .await
        .unwrap();
        assert!(out.cancelled);
        assert_eq!(out.status, Status::Cancel);
        assert!(handle.await.unwrap().cancelled);

        // a failure final status is returned, not an error
        let script = Script::get(
            &[CT],
            vec![Step::FinalComment(Status::from_code(0xA900), "no")],
        );
        let (peer, handle) = testpeer::start(script).await;
        let out = get(
            &peer,
            &RetrieveTarget::instance("1.2.3", "1.2.3.4", "1.2.3.4.5"),
            &storage(),
            dir.path(),
            &QrOptions::default(),
        )
        .await
        .unwrap();
        assert_eq!(out.status.code(), 0xA900);
        assert_eq!(out.error_comment.as_deref(), Some("no"));
        assert!(!out.is_complete());
        handle.await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn failed_list_inside_the_command_set_is_read() {
        let a = body("1.2.3.1", 10);
        let script = Script::get(
            &[CT],
            vec![
                Step::Store(CT.into(), "1.2.3.1".into(), EXPLICIT.into(), a, 1 << 20),
                Step::FinalInCommand(
                    Status::from_code(0xC000),
                    1,
                    2,
                    vec!["1.2.3.2".into(), "1.2.3.3".into()],
                ),
            ],
        );
        let (peer, handle) = testpeer::start(script).await;
        let dir = tempfile::tempdir().unwrap();
        let out = get(
            &peer,
            &RetrieveTarget::study("1.2.3"),
            &storage(),
            dir.path(),
            &QrOptions::default(),
        )
        .await
        .unwrap();
        assert_eq!(out.status.code(), 0xC000);
        assert_eq!(out.instances.len(), 1);
        assert_eq!(out.sub_operations.failed, 2);
        assert_eq!(out.failed_sop_instance_uids, ["1.2.3.2", "1.2.3.3"]);
        assert!(
            handle.await.unwrap().released,
            "the association stays usable"
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn no_storage_context_is_not_negotiated() {
        let (peer, handle) = testpeer::start(Script::get(&[], vec![])).await;
        let dir = tempfile::tempdir().unwrap();
        let e = get(
            &peer,
            &RetrieveTarget::study("1.2.3"),
            &storage(),
            dir.path(),
            &QrOptions::default(),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, QrError::NotNegotiated { .. }), "{e}");
        assert!(handle.await.unwrap().released);
        // too many contexts: refused before connecting
        let many = storage_contexts(COMMON_IMAGE_STORAGE, IMAGE_TRANSFER_SYNTAXES)
            .into_iter()
            .chain(storage_contexts(
                COMMON_UNCOMPRESSED_STORAGE,
                IMAGE_TRANSFER_SYNTAXES,
            ))
            .collect::<Vec<_>>();
        let e = QrAssociation::connect(&peer, &[Service::Get(many)])
            .await
            .err()
            .unwrap();
        assert!(
            matches!(
                e,
                QrError::Association(pacs_mirror_dicom::scu::ScuError::TooManyContexts(_))
            ),
            "{e}"
        );
    }
}
