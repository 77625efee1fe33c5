//! The drill inbox: where the C-STOREs of a C-MOVE restore drill land.
//!
//! A local AE with `drill_receiver = true` is the Move Destination of C-MOVE
//! drills. Its associations are accepted like any other (same access check,
//! same storage contexts), but its C-STOREs **never touch the spool, the
//! index, the committer or the queues**: each data set is streamed into a
//! scratch file of the drill that asked for it (no fsync: the file is only
//! hashed, compared and removed), hashed as it arrives (blake3 of the data
//! set bytes, the spool's definition, so hashes compare with the index), and
//! handed to that drill.
//!
//! # Who gets an object
//! A drill registers an [`Expecting`] before it sends its C-MOVE-RQ: the
//! study it asked for, our calling AE (the Move Originator), the AE titles
//! the mirror may call from, and the drill's scratch directory. A C-STORE-RQ
//! is matched at its command against the registered expectations: the
//! calling AE of the sub-association must be one of the mirror's. When the
//! data set is complete its Study Instance UID must be a study an expectation
//! is waiting for.
//!
//! The Move Originator AE Title (0000,1030) of a sub-operation should be the
//! C-MOVE requester's, ours (PS3.7 9.3.1.1 and C.4.2). When it is, the object
//! goes to a drill of that originator waiting for its study. Some mirrors
//! send their own AE title there (pynetdicom's qrscp) or nothing at all: such
//! an object is still taken when its calling AE and its Study Instance UID
//! match **exactly one** running drill (the one whose C-MOVE it must be
//! answering), and a WARN names the peer (calling AE, address) and the rule
//! it broke, once per drill and peer. With more than one such drill nothing
//! says which drill asked for it: it is refused.
//!
//! Anything else — no drill running, a drill that gave up, another study,
//! another calling AE — is answered 0xA700 (Refused) with an Error
//! Comment saying why ("no restore drill is running…"), and its file is
//! removed: nothing is kept from a C-STORE that no drill asked for. A7xx
//! rather than Cxxx because nothing is wrong with the object: a sender that
//! called this AE by mistake keeps it and may try again (0x0124, Not
//! authorized, would say it better, but DCMTK-based senders do not know it
//! for C-STORE and stop at it).
//!
//! Files are named `move-<random>-<counter>.dcm`, never from a UID. An
//! expectation dropped (the drill ended) removes the files handed to it that
//! it did not take.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::mpsc;

use super::receive::{Failure, Origin, Received, StoreSink, check_command_uids};
use pacs_mirror_dicom::dimse::{CStoreRq, Status};

/// The status of a C-STORE no drill is waiting for (0xA700, Refused).
pub const NOT_EXPECTED: Status = Status::OUT_OF_RESOURCES;

/// Counters of the drill receiver.
#[derive(Debug, Default)]
pub struct InboxCounters {
    /// C-STOREs handed to a drill.
    pub accepted: AtomicU64,
    /// C-STOREs refused (no drill waiting, another study, local failure).
    pub refused: AtomicU64,
    /// Of the accepted, those whose Move Originator AE Title was absent or
    /// not the C-MOVE requester's (taken as the one drill they matched).
    pub tolerated: AtomicU64,
}

/// What a drill waits for.
#[derive(Debug, Clone)]
pub struct Expectation {
    /// The study of the C-MOVE.
    pub study_instance_uid: String,
    /// Our calling AE title on the C-MOVE association (the Move Originator).
    pub originator_ae: String,
    /// AE titles the mirror calls the drill receiver from; empty: any
    /// (the receiver's own allow-list still applies).
    pub callers: Vec<String>,
    /// The drill's scratch directory (created if missing).
    pub dir: PathBuf,
}

/// One object handed to a drill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arrival {
    /// Affected SOP Instance UID of the C-STORE.
    pub sop_instance_uid: String,
    /// Affected SOP Class UID of the C-STORE.
    pub sop_class_uid: String,
    /// The transfer syntax of its presentation context.
    pub transfer_syntax_uid: String,
    /// Study Instance UID read from the data set (None: it did not parse).
    pub study_instance_uid: Option<String>,
    /// blake3 of the data set bytes as received.
    pub blake3: [u8; 32],
    /// Length of the data set.
    pub dataset_bytes: u64,
    /// The Part-10 file in the drill's scratch directory.
    pub path: PathBuf,
    /// When its last data byte arrived.
    pub arrived_at: Instant,
    /// The calling AE of the association it came on.
    pub calling_ae: String,
}

struct Registered {
    id: u64,
    expectation: Expectation,
    tx: mpsc::UnboundedSender<Arrival>,
    /// Peers (calling AE, IP) already warned about a wrong or absent Move
    /// Originator AE Title for this drill: one WARN each, not one per object.
    warned: Vec<(String, std::net::IpAddr)>,
}

/// How a C-STORE-RQ's Move Originator AE Title relates to the running drills.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Originator {
    /// It names the originator of at least one candidate drill.
    Matches,
    /// The request has none (or an empty one).
    Absent,
    /// It names no running drill's originator (the mirror's own AE title…).
    Wrong(String),
}

/// The drills a C-STORE-RQ may be for, judged at its command.
struct Candidates {
    /// (id, study, scratch directory, Move Originator we sent), oldest first.
    list: Vec<(u64, String, PathBuf, String)>,
    originator: Originator,
}

/// The drill receiver's shared state: the expectations of running drills.
pub struct DrillInbox {
    expectations: Mutex<Vec<Registered>>,
    next_id: AtomicU64,
    next_file: AtomicU64,
    prefix: u32,
    /// Free bytes a drill never takes from the filesystem it writes to.
    reserve_bytes: u64,
    /// Counters.
    pub counters: InboxCounters,
}

impl std::fmt::Debug for DrillInbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DrillInbox")
            .field("expecting", &self.expecting())
            .finish()
    }
}

/// A drill's registration: receives its arrivals; dropping it unregisters
/// (later C-STOREs for it are refused) and removes the files of arrivals
/// not taken.
pub struct Expecting {
    inbox: Arc<DrillInbox>,
    id: u64,
    rx: mpsc::UnboundedReceiver<Arrival>,
}

impl Expecting {
    /// The next arrival; None only once unregistered.
    pub async fn recv(&mut self) -> Option<Arrival> {
        self.rx.recv().await
    }

    /// An arrival already there, if any.
    pub fn try_recv(&mut self) -> Option<Arrival> {
        self.rx.try_recv().ok()
    }
}

impl Drop for Expecting {
    fn drop(&mut self) {
        self.inbox.unregister(self.id);
        self.rx.close();
        while let Ok(a) = self.rx.try_recv() {
            let _ = std::fs::remove_file(&a.path);
        }
    }
}

impl DrillInbox {
    /// An inbox with no drill waiting and no free-space reserve.
    pub fn new() -> Arc<Self> {
        Self::with_reserve(0)
    }

    /// An inbox that refuses (A700) a store that would leave less than
    /// `reserve_bytes` free where the drill writes: the drill scratch sits
    /// on the spool's filesystem, and a drill must never be what makes
    /// ingest answer A700.
    pub fn with_reserve(reserve_bytes: u64) -> Arc<Self> {
        Arc::new(DrillInbox {
            expectations: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
            next_file: AtomicU64::new(0),
            prefix: rand::random(),
            reserve_bytes,
            counters: InboxCounters::default(),
        })
    }

    /// The reserve for an agent whose spool keeps `min_free_bytes`: twice
    /// that, and at least 1 GiB.
    pub fn reserve_for(min_free_bytes: u64) -> u64 {
        min_free_bytes.saturating_mul(2).max(1 << 30)
    }

    /// Register a drill's expectation (before its C-MOVE-RQ is sent).
    pub fn expect(self: &Arc<Self>, expectation: Expectation) -> Expecting {
        let (tx, rx) = mpsc::unbounded_channel();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().push(Registered {
            id,
            expectation,
            tx,
            warned: Vec::new(),
        });
        Expecting {
            inbox: self.clone(),
            id,
            rx,
        }
    }

    /// How many drills are waiting.
    pub fn expecting(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Registered>> {
        // A panic while holding this lock cannot leave the list half-edited
        // (push, retain and reads only): go on with it.
        self.expectations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn unregister(&self, id: u64) {
        self.lock().retain(|r| r.id != id);
    }

    /// The expectations a C-STORE-RQ may be for, oldest first, with their
    /// studies and directories, and how its Move Originator AE Title relates
    /// to them; or why none.
    fn candidates(&self, calling_ae: &str, rq: &CStoreRq) -> Result<Candidates, Failure> {
        let not_expected = |comment: String| Failure {
            status: NOT_EXPECTED,
            comment,
        };
        let list = self.lock();
        if list.is_empty() {
            return Err(not_expected(
                "no restore drill is running: this AE (a drill receiver) accepts only the objects a C-MOVE drill asked for".into(),
            ));
        }
        let from_caller: Vec<&Registered> = list
            .iter()
            .filter(|r| {
                let e = &r.expectation;
                e.callers.is_empty() || e.callers.iter().any(|c| c.trim() == calling_ae)
            })
            .collect();
        if from_caller.is_empty() {
            return Err(not_expected(format!(
                "no running restore drill expects objects from {calling_ae}"
            )));
        }
        let entry = |r: &&Registered| {
            (
                r.id,
                r.expectation.study_instance_uid.clone(),
                r.expectation.dir.clone(),
                r.expectation.originator_ae.trim().to_string(),
            )
        };
        let originator = rq
            .move_originator_ae
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty());
        let Some(o) = originator else {
            return Ok(Candidates {
                list: from_caller.iter().map(entry).collect(),
                originator: Originator::Absent,
            });
        };
        let matching: Vec<_> = from_caller
            .iter()
            .filter(|r| r.expectation.originator_ae.trim() == o)
            .map(entry)
            .collect();
        if matching.is_empty() {
            Ok(Candidates {
                list: from_caller.iter().map(entry).collect(),
                originator: Originator::Wrong(o.to_string()),
            })
        } else {
            Ok(Candidates {
                list: matching,
                originator: Originator::Matches,
            })
        }
    }

    /// Record that `peer` was warned about drill `id`; false if it already
    /// was (or the drill is gone).
    fn first_warning(&self, id: u64, calling_ae: &str, peer: SocketAddr) -> bool {
        let mut list = self.lock();
        let Some(r) = list.iter_mut().find(|r| r.id == id) else {
            return false;
        };
        let key = (calling_ae.to_string(), peer.ip());
        if r.warned.contains(&key) {
            return false;
        }
        r.warned.push(key);
        true
    }

    /// Hand `arrival` to expectation `id`; false if it is gone.
    fn deliver(&self, id: u64, arrival: Arrival) -> bool {
        let list = self.lock();
        list.iter()
            .find(|r| r.id == id)
            .is_some_and(|r| r.tx.send(arrival).is_ok())
    }

    /// A new file in `dir` (never an existing one).
    fn create_file(&self, dir: &Path) -> std::io::Result<(std::fs::File, PathBuf)> {
        std::fs::create_dir_all(dir)?;
        pacs_mirror_store::spool::create_scratch_file(dir, "move", self.prefix, &mut || {
            self.next_file.fetch_add(1, Ordering::Relaxed)
        })
    }
}

/// What a C-STORE to the drill receiver carries from its command to its
/// last fragment: the expectations it may be for, and the directory its
/// file is in.
pub struct InboxTicket {
    candidates: Candidates,
    dir: PathBuf,
}

impl StoreSink for DrillInbox {
    type Ticket = InboxTicket;
    type Kept = ();

    fn open(
        &self,
        rq: &CStoreRq,
        origin: &Origin,
    ) -> Result<(InboxTicket, File, PathBuf), Failure> {
        let candidates = self.candidates(&origin.calling_ae, rq)?;
        check_command_uids(rq)?;
        let dir = candidates.list[0].2.clone();
        let (file, path) = self
            .create_file(&dir)
            .map_err(|e| Failure::local(format!("creating a file in {}: {e}", dir.display())))?;
        Ok((InboxTicket { candidates, dir }, file, path))
    }

    /// Scratch: no fsync, the file is only hashed, compared and removed.
    fn scratch(&self) -> bool {
        true
    }

    fn admit(&self, ticket: &mut InboxTicket, len: u64) -> Result<(), Failure> {
        let reserve = self.reserve_bytes;
        if reserve == 0 {
            return Ok(());
        }
        let free = pacs_mirror_store::spool::free_bytes(&ticket.dir).unwrap_or(0);
        if free < reserve.saturating_add(len) {
            return Err(Failure::local(format!(
                "drill scratch: {free} bytes free, {reserve} are kept for ingest"
            )));
        }
        Ok(())
    }

    /// Finish the file and hand it to its drill.
    async fn keep(&self, object: Received<InboxTicket>) -> Result<(), Failure> {
        let Received {
            ticket: InboxTicket { candidates, .. },
            writer,
            observed,
            rq,
            transfer_syntax,
            origin,
            last_byte_at: arrived_at,
            ..
        } = object;
        // Scratch writer: no fsync, nothing to wait for.
        let written = writer.finish().map_err(|e| Failure::local(e.to_string()))?;
        // What the walk read ("" when a copy has no readable Study UID: no
        // study).
        let study = Some(pacs_mirror_dicom::identity::attribute(
            &observed,
            pacs_mirror_dicom::identity::STUDY,
        ))
        .filter(|s| !s.is_empty());
        let Candidates {
            list: candidates,
            originator,
        } = candidates;
        let chosen = if originator == Originator::Matches {
            // The expectation for its study; an unparseable data set goes to
            // the first one (the drill judges it: its bytes do not match).
            match &study {
                Some(s) => candidates.iter().find(|(_, cs, _, _)| cs == s),
                None => candidates.first(),
            }
        } else {
            // No Move Originator names the drill: its calling AE and study
            // must match exactly one.
            let same: Vec<_> = match &study {
                Some(s) => candidates.iter().filter(|(_, cs, _, _)| cs == s).collect(),
                None => Vec::new(),
            };
            if same.len() > 1 {
                return Err(Failure::new(
                    NOT_EXPECTED,
                    format!(
                        "{} running restore drills asked for study {} and the Move Originator AE Title ({}) does not say which",
                        same.len(),
                        study.as_deref().unwrap_or("?"),
                        match &originator {
                            Originator::Wrong(o) => o.as_str(),
                            _ => "absent",
                        }
                    ),
                ));
            }
            same.first().copied()
        };
        let Some((id, _, dir, expected_originator)) = chosen else {
            let asked: Vec<&str> = candidates.iter().map(|(_, s, _, _)| s.as_str()).collect();
            return Err(Failure::new(
                NOT_EXPECTED,
                format!(
                    "study {} is not one a running restore drill asked for ({})",
                    study.as_deref().unwrap_or("?"),
                    asked.join(", ")
                ),
            ));
        };
        let mut path = written.temp.path().to_path_buf();
        if let Some(name) = path.file_name()
            && dir.as_path() != path.parent().unwrap_or(dir)
        {
            let to = dir.join(name);
            if std::fs::create_dir_all(dir).is_ok() && std::fs::rename(&path, &to).is_ok() {
                path = to;
            }
        }
        let study_uid = study.clone().unwrap_or_default();
        let arrival = Arrival {
            sop_instance_uid: rq.sop_instance_uid.clone(),
            sop_class_uid: rq.sop_class_uid.clone(),
            transfer_syntax_uid: transfer_syntax,
            study_instance_uid: study,
            blake3: written.hash.0,
            dataset_bytes: written.dataset_bytes,
            path: path.clone(),
            arrived_at,
            calling_ae: origin.calling_ae.clone(),
        };
        if self.deliver(*id, arrival) {
            written.temp.keep();
            if originator != Originator::Matches {
                self.counters.tolerated.fetch_add(1, Ordering::Relaxed);
                self.warn_tolerated(&origin, *id, &originator, expected_originator, study_uid);
            }
            Ok(())
        } else {
            let _ = std::fs::remove_file(&path);
            Err(Failure::new(
                NOT_EXPECTED,
                "the restore drill that asked for this study is over",
            ))
        }
    }

    fn finished(&self, _origin: &Origin, result: Result<&(), &Failure>) {
        let c = match result {
            Ok(()) => &self.counters.accepted,
            Err(_) => &self.counters.refused,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

impl DrillInbox {
    /// The WARN for a sub-operation taken although its Move Originator AE
    /// Title was absent or wrong: once per drill and peer.
    fn warn_tolerated(
        &self,
        origin: &Origin,
        id: u64,
        originator: &Originator,
        expected: &str,
        study: String,
    ) {
        let (calling_ae, peer) = (&origin.calling_ae, origin.peer);
        let got = match originator {
            Originator::Wrong(o) => format!("Move Originator AE Title {o:?}"),
            _ => "no Move Originator AE Title".to_string(),
        };
        if self.first_warning(id, calling_ae, peer) {
            tracing::warn!(
                calling_ae = %calling_ae,
                peer = %peer,
                move_originator = %match originator {
                    Originator::Wrong(o) => o.as_str(),
                    _ => "",
                },
                expected_move_originator = %expected,
                study_instance_uid = %study,
                "C-MOVE sub-operations from {} at {peer} carry {got}: PS3.7 (9.3.1.1, C.4.2) says the Move Originator AE Title of a C-STORE sub-operation is the C-MOVE requester's ({expected}); accepted as the only running restore drill of study {study} from that AE (further objects of this drill from this peer are accepted without repeating this warning)",
                calling_ae
            );
        } else {
            tracing::debug!(
                calling_ae = %calling_ae,
                peer = %peer,
                "C-MOVE sub-operation with {got} accepted for the only running drill of study {study}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scp::receive::Incoming;
    use pacs_mirror_dicom::{dimse, part10};

    const CT: &str = "1.2.840.10008.5.1.4.1.1.2";
    const EXPLICIT: &str = "1.2.840.10008.1.2.1";

    fn rq(uid: &str, originator: Option<&str>) -> CStoreRq {
        CStoreRq {
            message_id: 1,
            sop_class_uid: CT.into(),
            sop_instance_uid: uid.into(),
            priority: 0,
            move_originator_ae: originator.map(str::to_string),
            move_originator_message_id: originator.map(|_| 7),
        }
    }

    fn peer() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 4242))
    }

    /// A data set of study `study` (explicit VR LE), as the mirror sends it.
    fn body(study: &str, uid: &str) -> Vec<u8> {
        use dicom_core::{DataElement, PrimitiveValue, VR};
        use dicom_dictionary_std::tags;
        let mut o = dicom_object::InMemDicomObject::new_empty();
        for (tag, vr, v) in [
            (tags::SOP_CLASS_UID, VR::UI, CT),
            (tags::SOP_INSTANCE_UID, VR::UI, uid),
            (tags::PATIENT_ID, VR::LO, "P1"),
            (tags::STUDY_INSTANCE_UID, VR::UI, study),
            (tags::SERIES_INSTANCE_UID, VR::UI, "1.2.3.9"),
        ] {
            o.put(DataElement::new(tag, vr, PrimitiveValue::from(v)));
        }
        let mut out = Vec::new();
        o.write_dataset_with_ts(
            &mut out,
            &dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN.erased(),
        )
        .unwrap();
        out
    }

    async fn store(
        inbox: &Arc<DrillInbox>,
        calling: &str,
        rq: CStoreRq,
        data: Vec<u8>,
    ) -> Result<(), Failure> {
        let origin = Origin {
            calling_ae: calling.into(),
            peer: peer(),
        };
        let mut s = Incoming::begin(inbox.clone(), rq, 1, EXPLICIT, origin, None);
        let (a, b) = data.split_at(data.len() / 2);
        s.data(a);
        s.data(b);
        s.finish().await.2
    }

    fn files(dir: &Path) -> usize {
        std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
    }

    #[tokio::test]
    async fn nothing_is_accepted_without_a_drill_waiting() {
        let inbox = DrillInbox::new();
        let e = store(
            &inbox,
            "MIRROR",
            rq("1.2.3.1", None),
            body("1.2.3", "1.2.3.1"),
        )
        .await
        .unwrap_err();
        assert_eq!(e.status, NOT_EXPECTED);
        assert_eq!(e.status.code(), 0xA700);
        assert!(e.comment.contains("no restore drill is running"), "{e:?}");
        assert_eq!(inbox.counters.refused.load(Ordering::Relaxed), 1);
    }

    /// Expect study 1.2.3 from MIRROR, moved for AGENT, into `dir`.
    fn expect_study(inbox: &Arc<DrillInbox>, dir: &Path) -> Expecting {
        inbox.expect(Expectation {
            study_instance_uid: "1.2.3".into(),
            originator_ae: "AGENT".into(),
            callers: vec!["MIRROR".into()],
            dir: dir.to_path_buf(),
        })
    }

    #[tokio::test]
    async fn a_drill_never_takes_the_space_ingest_needs() {
        let d = tempfile::tempdir().unwrap();
        let free = pacs_mirror_store::spool::free_bytes(d.path()).unwrap();
        // Keep more than there is: the expected study is refused, no file.
        let inbox = DrillInbox::with_reserve(free.saturating_add(1 << 30));
        let dir = d.path().join("drill-1");
        let mut expecting = expect_study(&inbox, &dir);
        let e = store(
            &inbox,
            "MIRROR",
            rq("1.2.3.1", Some("AGENT")),
            body("1.2.3", "1.2.3.1"),
        )
        .await
        .unwrap_err();
        assert_eq!(e.status.code(), 0xA700);
        assert!(e.comment.contains("kept for ingest"), "{e:?}");
        assert!(expecting.try_recv().is_none());
        assert_eq!(files(&dir), 0);
        assert_eq!(DrillInbox::reserve_for(256 << 20), 1 << 30);
        assert_eq!(DrillInbox::reserve_for(4 << 30), 8 << 30);
    }

    /// A copy whose SOP Instance UID breaks PS3.5 9.1 (hexadecimal letters,
    /// as some real archives hold) but can be an index key is handed to its
    /// drill like any other: the primary holds it, so the drill must be able
    /// to compare it. An unusable one (control character) is refused C002.
    #[tokio::test]
    async fn a_nonconformant_but_usable_uid_reaches_its_drill() {
        let d = tempfile::tempdir().unwrap();
        let inbox = DrillInbox::new();
        let dir = d.path().join("drill-1");
        let mut expecting = expect_study(&inbox, &dir);
        let data = body("1.2.3", "1.2.3.abc");
        store(
            &inbox,
            "MIRROR",
            rq("1.2.3.abc", Some("AGENT")),
            data.clone(),
        )
        .await
        .unwrap();
        let a = expecting.try_recv().expect("an arrival");
        assert_eq!(a.sop_instance_uid, "1.2.3.abc");
        assert_eq!(a.blake3, *blake3::hash(&data).as_bytes());
        let e = store(
            &inbox,
            "MIRROR",
            rq("1.2.3\n4", Some("AGENT")),
            body("1.2.3", "1.2.3.4"),
        )
        .await
        .unwrap_err();
        assert_eq!(e.status, Status::INVALID_UID, "{e:?}");
        assert!(expecting.try_recv().is_none());
    }

    #[tokio::test]
    async fn the_expected_study_is_handed_over_hashed_and_nothing_else() {
        let d = tempfile::tempdir().unwrap();
        let inbox = DrillInbox::new();
        let dir = d.path().join("drill-1");
        let mut expecting = expect_study(&inbox, &dir);
        // The study asked for, from the mirror, moved for us: handed over.
        let data = body("1.2.3", "1.2.3.1");
        store(&inbox, "MIRROR", rq("1.2.3.1", Some("AGENT")), data.clone())
            .await
            .unwrap();
        let a = expecting.try_recv().expect("an arrival");
        assert_eq!(a.sop_instance_uid, "1.2.3.1");
        assert_eq!(a.study_instance_uid.as_deref(), Some("1.2.3"));
        assert_eq!(a.blake3, *blake3::hash(&data).as_bytes());
        assert_eq!(a.dataset_bytes, data.len() as u64);
        assert_eq!(a.path.parent(), Some(dir.as_path()));
        let name = a.path.file_name().unwrap().to_string_lossy().to_string();
        assert!(
            name.starts_with("move-") && !name.contains("1.2.3"),
            "{name}"
        );
        let file = std::fs::read(&a.path).unwrap();
        assert!(file.ends_with(&data), "the data set bytes, as received");
        assert_eq!(
            part10::read_header(&a.path).unwrap().sop_instance_uid,
            "1.2.3.1"
        );
        // Another study, another caller: refused, no file.
        for (calling, rq, data) in [
            ("MIRROR", rq("1.2.4.1", None), body("1.2.4", "1.2.4.1")),
            ("OTHER", rq("1.2.3.2", None), body("1.2.3", "1.2.3.2")),
            (
                "OTHER",
                rq("1.2.3.3", Some("AGENT")),
                body("1.2.3", "1.2.3.3"),
            ),
        ] {
            let e = store(&inbox, calling, rq, data).await.unwrap_err();
            assert_eq!(e.status, NOT_EXPECTED, "{e:?}");
        }
        assert_eq!(files(&dir), 1);
        assert!(expecting.try_recv().is_none());
        // The drill is over: later objects are refused, untaken files removed.
        store(
            &inbox,
            "MIRROR",
            rq("1.2.3.4", None),
            body("1.2.3", "1.2.3.4"),
        )
        .await
        .unwrap();
        assert_eq!(files(&dir), 2);
        drop(expecting);
        assert_eq!(files(&dir), 1, "the untaken arrival's file is removed");
        assert_eq!(inbox.expecting(), 0);
        let e = store(
            &inbox,
            "MIRROR",
            rq("1.2.3.5", None),
            body("1.2.3", "1.2.3.5"),
        )
        .await
        .unwrap_err();
        assert!(e.comment.contains("no restore drill"), "{e:?}");
        assert_eq!(files(&dir), 1);
    }

    /// Everything logged while `f` runs (current-thread runtime), as text.
    async fn logged<T>(f: impl std::future::Future<Output = T>) -> (T, String) {
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let guard = tracing::subscriber::set_default(subscriber);
        let out = f.await;
        drop(guard);
        let text = String::from_utf8_lossy(&buf.0.lock().unwrap()).into_owned();
        (out, text)
    }

    fn warnings(log: &str) -> Vec<&str> {
        log.lines().filter(|l| l.contains(" WARN ")).collect()
    }

    /// Acceptance 3 (issue 14): a mirror that puts its own AE title (or
    /// nothing) as Move Originator AE Title is still a drill's mirror: an
    /// object whose calling AE and study match exactly one running drill is
    /// handed to it, with one WARN per drill and peer naming the peer and
    /// the rule; strays from another AE, of a study no drill asked for, or
    /// matching two drills are refused, as before.
    #[tokio::test]
    async fn a_wrong_or_absent_move_originator_is_tolerated_for_exactly_one_drill() {
        let d = tempfile::tempdir().unwrap();
        let inbox = DrillInbox::new();
        let dir = d.path().join("drill-1");
        let mut expecting = expect_study(&inbox, &dir);
        let ((), log) = logged(async {
            // The mirror's own AE title as Move Originator: accepted.
            for uid in ["1.2.3.1", "1.2.3.2"] {
                store(
                    &inbox,
                    "MIRROR",
                    rq(uid, Some("MIRROR")),
                    body("1.2.3", uid),
                )
                .await
                .unwrap();
            }
            // No Move Originator at all: accepted.
            store(
                &inbox,
                "MIRROR",
                rq("1.2.3.3", None),
                body("1.2.3", "1.2.3.3"),
            )
            .await
            .unwrap();
        })
        .await;
        let got: Vec<String> = std::iter::from_fn(|| expecting.try_recv())
            .map(|a| a.sop_instance_uid)
            .collect();
        assert_eq!(got, ["1.2.3.1", "1.2.3.2", "1.2.3.3"]);
        assert_eq!(inbox.counters.tolerated.load(Ordering::Relaxed), 3);
        // One WARN for the peer, naming it, what it sent and the rule.
        let w = warnings(&log);
        assert_eq!(w.len(), 1, "{log}");
        for part in [
            "calling_ae=MIRROR",
            "peer=127.0.0.1:4242",
            "move_originator=MIRROR",
            "expected_move_originator=AGENT",
            "PS3.7",
            "C-MOVE requester",
            "study 1.2.3",
        ] {
            assert!(w[0].contains(part), "{part:?} not in {}", w[0]);
        }

        // Strays are refused as before: another AE (whatever its Move
        // Originator), a study no drill asked for, an unreadable data set.
        let ((), log) = logged(async {
            for (calling, rq, data) in [
                (
                    "OTHER",
                    rq("1.2.3.4", Some("MIRROR")),
                    body("1.2.3", "1.2.3.4"),
                ),
                ("OTHER", rq("1.2.3.5", None), body("1.2.3", "1.2.3.5")),
                (
                    "OTHER",
                    rq("1.2.3.6", Some("AGENT")),
                    body("1.2.3", "1.2.3.6"),
                ),
                (
                    "MIRROR",
                    rq("1.2.4.1", Some("MIRROR")),
                    body("1.2.4", "1.2.4.1"),
                ),
                ("MIRROR", rq("1.2.4.2", None), body("1.2.4", "1.2.4.2")),
                (
                    "MIRROR",
                    rq("1.2.3.7", Some("MIRROR")),
                    b"not a data set".to_vec(),
                ),
            ] {
                let e = store(&inbox, calling, rq, data).await.unwrap_err();
                assert_eq!(e.status, NOT_EXPECTED, "{e:?}");
            }
        })
        .await;
        assert!(warnings(&log).is_empty(), "{log}");
        assert!(expecting.try_recv().is_none());
        assert_eq!(files(&dir), 3, "nothing kept of the strays");

        // Two drills waiting for the same study from the same mirror: only
        // the right Move Originator says which; without it, refused.
        let dir2 = d.path().join("drill-2");
        let mut other = inbox.expect(Expectation {
            study_instance_uid: "1.2.3".into(),
            originator_ae: "AGENT2".into(),
            callers: vec!["MIRROR".into()],
            dir: dir2.clone(),
        });
        for rq in [rq("1.2.3.8", Some("MIRROR")), rq("1.2.3.9", None)] {
            let e = store(&inbox, "MIRROR", rq, body("1.2.3", "1.2.3.8"))
                .await
                .unwrap_err();
            assert_eq!(e.status, NOT_EXPECTED, "{e:?}");
            assert!(e.comment.contains("does not say which"), "{e:?}");
        }
        store(
            &inbox,
            "MIRROR",
            rq("1.2.3.10", Some("AGENT2")),
            body("1.2.3", "1.2.3.10"),
        )
        .await
        .unwrap();
        assert_eq!(
            other.try_recv().map(|a| a.sop_instance_uid).as_deref(),
            Some("1.2.3.10")
        );
        assert!(expecting.try_recv().is_none());
        drop(expecting);
        // The first drill over: the second is the only one again.
        let ((), log) = logged(async {
            store(
                &inbox,
                "MIRROR",
                rq("1.2.3.11", Some("MIRROR")),
                body("1.2.3", "1.2.3.11"),
            )
            .await
            .unwrap();
        })
        .await;
        assert_eq!(
            other.try_recv().map(|a| a.sop_instance_uid).as_deref(),
            Some("1.2.3.11")
        );
        assert_eq!(warnings(&log).len(), 1, "{log}");
        assert!(
            warnings(&log)[0].contains("expected_move_originator=AGENT2"),
            "{log}"
        );
        assert_eq!(inbox.counters.tolerated.load(Ordering::Relaxed), 4);
    }

    /// A raw mirror on the network: one association from `calling` to the
    /// drill receiver at `addr`, one C-STORE-RQ per `(rq, data set)`
    /// (the Move Originator as given), the statuses and comments answered.
    async fn raw_mirror(
        addr: SocketAddr,
        calling: &str,
        stores: Vec<(CStoreRq, Vec<u8>)>,
    ) -> Vec<(u16, String)> {
        use dicom_ul::pdu::{PDataValue, PDataValueType};
        use dicom_ul::{ClientAssociationOptions, Pdu};
        let mut assoc = ClientAssociationOptions::new()
            .calling_ae_title(calling)
            .called_ae_title("PM_DRILL")
            .with_presentation_context(CT, vec![EXPLICIT])
            .establish_async(addr.to_string().as_str())
            .await
            .unwrap();
        let pc = assoc.presentation_contexts()[0].id;
        let mut out = Vec::new();
        for (rq, data) in stores {
            for (value_type, bytes) in [
                (PDataValueType::Command, rq.to_command().encode()),
                (PDataValueType::Data, data),
            ] {
                assoc
                    .send(&Pdu::PData {
                        data: vec![PDataValue {
                            presentation_context_id: pc,
                            value_type,
                            is_last: true,
                            data: bytes,
                        }],
                    })
                    .await
                    .unwrap();
            }
            let mut command = Vec::new();
            loop {
                match assoc.receive().await.unwrap() {
                    Pdu::PData { data } => {
                        let last = data.iter().any(|v| v.is_last);
                        for v in data {
                            command.extend_from_slice(&v.data);
                        }
                        if last {
                            break;
                        }
                    }
                    other => panic!("raw mirror: {other:?} instead of a C-STORE-RSP"),
                }
            }
            let rsp = dimse::CommandSet::decode(&command).unwrap();
            out.push((
                rsp.status().unwrap().code(),
                rsp.string(dimse::tag::ERROR_COMMENT).unwrap_or_default(),
            ));
        }
        let _ = assoc.release().await;
        out
    }

    /// The same, over the network: the agent's drill receiver listener
    /// (`app::serve_drill_receivers`), a raw mirror sending sub-operations
    /// with a wrong and with no Move Originator (taken, WARN with the peer
    /// and the rule), and strays (refused).
    #[tokio::test]
    async fn a_raw_mirror_with_a_wrong_move_originator_is_served_over_the_network() {
        let d = tempfile::tempdir().unwrap();
        let toml = format!(
            "[device]\nname = \"t\"\ndata_dir = {:?}\n\
             [[device.network_connection]]\nname = \"dicom\"\nhostname = \"127.0.0.1\"\nport = 0\n\
             [[device.network_ae]]\nae_title = \"PM_DRILL\"\nnetwork_connections = [\"dicom\"]\n\
             drill_receiver = true\naccept_any_calling_ae = true\n",
            d.path().join("data").display().to_string()
        );
        let config =
            pacs_mirror_config::Config::from_toml_str(&toml, Path::new("test.toml")).unwrap();
        let inbox = DrillInbox::new();
        let shutdown = tokio_util::sync::CancellationToken::new();
        let tracker = tokio_util::task::TaskTracker::new();
        let dir = d.path().join("drill-1");
        let mut expecting = expect_study(&inbox, &dir);
        let ((), log) = logged(async {
            let bound = crate::app::serve_drill_receivers(
                &config,
                inbox.clone(),
                shutdown.clone(),
                &tracker,
            )
            .await
            .unwrap();
            let addr = bound[0].0;
            let answers = raw_mirror(
                addr,
                "MIRROR",
                vec![
                    (rq("1.2.3.1", Some("MIRROR")), body("1.2.3", "1.2.3.1")),
                    (rq("1.2.3.2", None), body("1.2.3", "1.2.3.2")),
                    (rq("1.2.4.1", Some("MIRROR")), body("1.2.4", "1.2.4.1")),
                ],
            )
            .await;
            assert_eq!(answers[0].0, 0x0000, "{answers:?}");
            assert_eq!(answers[1].0, 0x0000, "{answers:?}");
            assert_eq!(answers[2].0, 0xA700, "{answers:?}");
            assert!(answers[2].1.contains("1.2.4"), "{answers:?}");
            let stray = raw_mirror(
                addr,
                "OTHER",
                vec![(rq("1.2.3.3", Some("MIRROR")), body("1.2.3", "1.2.3.3"))],
            )
            .await;
            assert_eq!(stray[0].0, 0xA700, "{stray:?}");
            assert!(stray[0].1.contains("OTHER"), "{stray:?}");
            shutdown.cancel();
            tracker.close();
            tracker.wait().await;
        })
        .await;
        let got: Vec<String> = std::iter::from_fn(|| expecting.try_recv())
            .map(|a| a.sop_instance_uid)
            .collect();
        assert_eq!(got, ["1.2.3.1", "1.2.3.2"]);
        let w: Vec<&str> = warnings(&log)
            .into_iter()
            .filter(|l| l.contains("Move Originator"))
            .collect();
        assert_eq!(w.len(), 1, "{log}");
        for part in [
            "calling_ae=MIRROR",
            "peer=127.0.0.1:",
            "move_originator=MIRROR",
            "PS3.7",
        ] {
            assert!(w[0].contains(part), "{part:?} not in {}", w[0]);
        }
        assert_eq!(files(&dir), 2);
    }

    #[tokio::test]
    async fn an_abandoned_store_leaves_no_file() {
        let d = tempfile::tempdir().unwrap();
        let inbox = DrillInbox::new();
        let _expecting = inbox.expect(Expectation {
            study_instance_uid: "1.2.3".into(),
            originator_ae: "AGENT".into(),
            callers: vec![],
            dir: d.path().to_path_buf(),
        });
        let origin = Origin {
            calling_ae: "M".into(),
            peer: peer(),
        };
        let mut s = Incoming::begin(inbox, rq("1.2.3.1", None), 1, EXPLICIT, origin, None);
        s.data(&body("1.2.3", "1.2.3.1")[..10]);
        assert_eq!(files(d.path()), 1);
        s.abandon();
        assert_eq!(files(d.path()), 0);
    }
}
