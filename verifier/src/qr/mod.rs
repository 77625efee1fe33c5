//! The Query/Retrieve SCU: C-FIND, C-GET and C-MOVE against a remote PACS
//! (the mirror), for restore drills, failover checks and failback.
//!
//! # Layout
//! - [`identifier`]: typed queries and matches, retrieve targets, and the
//!   identifier codec (dicom-object, in the negotiated transfer syntax).
//! - [`find`]: the C-FIND loop (pending matches, bounded, cancel).
//! - [`get`]: the C-GET loop and its C-STORE sub-operations, each data set
//!   streamed to a file in a caller-given scratch directory and hashed.
//! - [`moves`]: the C-MOVE loop (counts only; the objects go to the
//!   destination AE on associations of its own).
//!
//! [`QrAssociation`] owns one association (built on [`pacs_mirror_dicom::scu::Scu`]:
//! TCP_NODELAY, connect and per-PDU timeouts from [`Peer::timeout`],
//! fragmenting senders, the PDV reassembler). Operations run one at a time
//! (no asynchronous operations window). After a network or protocol failure
//! the association is marked unusable and [`QrAssociation::release`] aborts
//! it; a failure *status* from the peer leaves it usable.
//!
//! # Presentation contexts
//! Q/R models are proposed with Explicit and Implicit VR LE in one context
//! (the peer picks). Storage contexts for C-GET are proposed **one transfer
//! syntax per context**: an acceptor picks a single transfer syntax per
//! context, and an SCP sends an instance unchanged only on a context in the
//! instance's own transfer syntax (Orthanc otherwise decompresses it, or
//! fails the sub-operation). At most [`MAX_STORAGE_CONTEXTS`] storage
//! contexts fit next to the C-GET context (ids 1, 3, … 255).

pub mod find;
pub mod get;
pub mod moves;
mod responses;
#[cfg(test)]
mod testpeer;

use std::path::{Path, PathBuf};
use std::time::Duration;

use dicom_object::InMemDicomObject;
use tokio_util::sync::CancellationToken;

use pacs_mirror_dicom::dimse::{self, Status};
use pacs_mirror_dicom::query as identifier;
use pacs_mirror_dicom::scu::{AssociationRequest, MAX_CONTEXTS, Peer, Scu, ScuError};

pub use find::FindOutcome;
pub use get::{GetOutcome, RefusedSubOperation, RetrievedInstance};
pub use identifier::{
    DateRange, FindQuery, InstanceMatch, InstanceQuery, Level, RetrieveTarget, SeriesMatch,
    SeriesQuery, StudyMatch, StudyQuery,
};
pub use moves::MoveOutcome;

/// Study Root Query/Retrieve Information Model - FIND.
pub const STUDY_ROOT_FIND: &str = "1.2.840.10008.5.1.4.1.2.2.1";
/// Study Root Query/Retrieve Information Model - MOVE.
pub const STUDY_ROOT_MOVE: &str = "1.2.840.10008.5.1.4.1.2.2.2";
/// Study Root Query/Retrieve Information Model - GET.
pub const STUDY_ROOT_GET: &str = "1.2.840.10008.5.1.4.1.2.2.3";
/// Patient Root Query/Retrieve Information Model - FIND.
pub const PATIENT_ROOT_FIND: &str = "1.2.840.10008.5.1.4.1.2.1.1";

/// The arc under which the Query/Retrieve information models are (PS3.4
/// Annex C); nothing under it is a storage class.
pub const QR_MODEL_ARC: &str = "1.2.840.10008.5.1.4.1.2.";

/// Storage contexts that fit on a C-GET association (one context is the
/// C-GET model's).
pub const MAX_STORAGE_CONTEXTS: usize = MAX_CONTEXTS - 1;

/// Largest PDU we receive on Q/R associations (memory per association is
/// about two of these: dicom-ul's read buffer and the PDV copies).
pub const RETRIEVE_MAX_PDU: u32 = 256 * 1024;

/// The information model of a C-FIND.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum InformationModel {
    /// Study Root (the default).
    #[default]
    StudyRoot,
    /// Patient Root (study-level queries then need the Patient ID).
    PatientRoot,
}

impl InformationModel {
    /// The FIND SOP class of this model.
    pub fn find_sop_class(self) -> &'static str {
        match self {
            InformationModel::StudyRoot => STUDY_ROOT_FIND,
            InformationModel::PatientRoot => PATIENT_ROOT_FIND,
        }
    }
}

/// A storage SOP class in one transfer syntax: one presentation context
/// proposed for C-GET sub-operations.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StorageContext {
    /// Storage SOP Class UID.
    pub sop_class_uid: String,
    /// Transfer Syntax UID.
    pub transfer_syntax_uid: String,
}

/// Uncompressed transfer syntaxes: Explicit VR LE, Implicit VR LE.
pub const UNCOMPRESSED_TRANSFER_SYNTAXES: &[&str] =
    &[identifier::EXPLICIT_VR_LE, identifier::IMPLICIT_VR_LE];

/// The transfer syntaxes images are commonly stored in: uncompressed,
/// JPEG Baseline, JPEG Lossless SV1, JPEG-LS Lossless, JPEG 2000 (lossless
/// and lossy), RLE.
pub const IMAGE_TRANSFER_SYNTAXES: &[&str] = &[
    identifier::EXPLICIT_VR_LE,
    identifier::IMPLICIT_VR_LE,
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.5",
];

/// Common image storage classes, proposed in [`IMAGE_TRANSFER_SYNTAXES`]:
/// CT, Enhanced CT, MR, Enhanced MR, CR, DX and MG for presentation, US,
/// US multi-frame, Secondary Capture, XA, NM, PET.
pub const COMMON_IMAGE_STORAGE: &[&str] = &[
    "1.2.840.10008.5.1.4.1.1.2",
    "1.2.840.10008.5.1.4.1.1.2.1",
    "1.2.840.10008.5.1.4.1.1.4",
    "1.2.840.10008.5.1.4.1.1.4.1",
    "1.2.840.10008.5.1.4.1.1.1",
    "1.2.840.10008.5.1.4.1.1.1.1",
    "1.2.840.10008.5.1.4.1.1.1.2",
    "1.2.840.10008.5.1.4.1.1.6.1",
    "1.2.840.10008.5.1.4.1.1.3.1",
    "1.2.840.10008.5.1.4.1.1.7",
    "1.2.840.10008.5.1.4.1.1.12.1",
    "1.2.840.10008.5.1.4.1.1.20",
    "1.2.840.10008.5.1.4.1.1.128",
];

/// Common storage classes usually uncompressed, proposed in
/// [`UNCOMPRESSED_TRANSFER_SYNTAXES`]: RF, structured reports (basic,
/// enhanced, comprehensive), key object selection, grayscale presentation
/// state, encapsulated PDF, RT structure set, plan and dose.
pub const COMMON_UNCOMPRESSED_STORAGE: &[&str] = &[
    "1.2.840.10008.5.1.4.1.1.12.2",
    "1.2.840.10008.5.1.4.1.1.88.11",
    "1.2.840.10008.5.1.4.1.1.88.22",
    "1.2.840.10008.5.1.4.1.1.88.33",
    "1.2.840.10008.5.1.4.1.1.88.59",
    "1.2.840.10008.5.1.4.1.1.11.1",
    "1.2.840.10008.5.1.4.1.1.104.1",
    "1.2.840.10008.5.1.4.1.1.481.3",
    "1.2.840.10008.5.1.4.1.1.481.5",
    "1.2.840.10008.5.1.4.1.1.481.2",
];

/// One context per (class, transfer syntax), classes outermost.
pub fn storage_contexts(sop_classes: &[&str], transfer_syntaxes: &[&str]) -> Vec<StorageContext> {
    sop_classes
        .iter()
        .flat_map(|c| {
            transfer_syntaxes.iter().map(|ts| StorageContext {
                sop_class_uid: c.to_string(),
                transfer_syntax_uid: ts.to_string(),
            })
        })
        .collect()
}

/// The default storage contexts for C-GET: [`COMMON_IMAGE_STORAGE`] ×
/// [`IMAGE_TRANSFER_SYNTAXES`] and [`COMMON_UNCOMPRESSED_STORAGE`] ×
/// [`UNCOMPRESSED_TRANSFER_SYNTAXES`] (124 contexts). To retrieve other
/// classes or syntaxes, pass a list of your own (at most
/// [`MAX_STORAGE_CONTEXTS`]), e.g. from a C-FIND at IMAGE level.
pub fn default_storage_contexts() -> Vec<StorageContext> {
    let mut v = storage_contexts(COMMON_IMAGE_STORAGE, IMAGE_TRANSFER_SYNTAXES);
    v.extend(storage_contexts(
        COMMON_UNCOMPRESSED_STORAGE,
        UNCOMPRESSED_TRANSFER_SYNTAXES,
    ));
    v
}

/// Storage contexts for a C-GET of known objects: `first` (in order,
/// duplicates dropped), then [`default_storage_contexts`] while there is
/// room; at most [`MAX_STORAGE_CONTEXTS`].
pub fn storage_contexts_with(
    first: impl IntoIterator<Item = StorageContext>,
) -> Vec<StorageContext> {
    let mut contexts: Vec<StorageContext> = Vec::new();
    for c in first.into_iter().chain(default_storage_contexts()) {
        if contexts.len() >= MAX_STORAGE_CONTEXTS {
            break;
        }
        if !contexts.contains(&c) {
            contexts.push(c);
        }
    }
    contexts
}

/// A service to negotiate on a [`QrAssociation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Service {
    /// C-FIND in this model.
    Find(InformationModel),
    /// Study Root C-GET, accepting sub-operations on these storage contexts
    /// (SCP role proposed for each class).
    Get(Vec<StorageContext>),
    /// Study Root C-MOVE.
    Move,
}

/// Per-operation options.
#[derive(Debug, Clone)]
pub struct QrOptions {
    /// Priority (0000,0700), see [`dimse::priority`].
    pub priority: u16,
    /// C-FIND: matches kept at most. One more match sends C-CANCEL; later
    /// matches are read and dropped ([`FindOutcome::truncated`]).
    pub max_matches: usize,
    /// Cancelling it sends C-CANCEL; the operation then ends with the peer's
    /// final response (usually Cancel, 0xFE00), which is still awaited.
    pub cancel: Option<CancellationToken>,
    /// C-GET: fsync each retrieved file before answering its C-STORE
    /// sub-operation with Success (default). Off for files that are only
    /// checked and removed (a restore drill: the hash is computed as the
    /// bytes arrive), so that they need never reach the disk.
    pub fsync: bool,
}

impl Default for QrOptions {
    fn default() -> Self {
        QrOptions {
            priority: dimse::priority::MEDIUM,
            max_matches: 100_000,
            cancel: None,
            fsync: true,
        }
    }
}

/// Sub-operation counts of C-GET and C-MOVE.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SubOperations {
    /// Remaining (pending responses only).
    pub remaining: Option<u16>,
    pub completed: u16,
    pub failed: u16,
    pub warning: u16,
}

impl SubOperations {
    /// Take the counts of a response; a count the response lacks keeps its
    /// earlier value (a final response may omit them).
    fn update(&mut self, rsp: &dimse::QueryRetrieveRsp) {
        self.remaining = rsp.remaining;
        self.completed = rsp.completed.unwrap_or(self.completed);
        self.failed = rsp.failed.unwrap_or(self.failed);
        self.warning = rsp.warning.unwrap_or(self.warning);
    }
}

/// Why a Query/Retrieve operation failed, phrased for the operator.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QrError {
    /// Connecting, associating, the network, or the peer broke the protocol.
    #[error(transparent)]
    Association(#[from] ScuError),
    /// The service was not proposed, or the peer refused its context.
    #[error(
        "{addr} did not accept {service} ({what}) on this association (check the PACS allows this service for our AE title)"
    )]
    NotNegotiated {
        addr: String,
        service: &'static str,
        what: String,
    },
    /// The query or target is invalid (nothing was sent).
    #[error("invalid query: {0}")]
    InvalidQuery(#[source] identifier::QueryError),
    /// The C-MOVE destination is not an AE title (nothing was sent).
    #[error(
        "invalid query: move destination {destination:?} is not an AE title (1 to 16 characters, no backslash)"
    )]
    InvalidDestination { destination: String },
    /// The peer sent an identifier we cannot use.
    #[error("{addr} sent a malformed {what}: {source}")]
    Malformed {
        addr: String,
        what: &'static str,
        #[source]
        source: identifier::QueryError,
    },
    /// The peer's answer cannot be used although each identifier in it
    /// could be: one larger than [`identifier::MAX_IDENTIFIER_BYTES`], or a
    /// C-FIND answer cut short where the whole of it is needed.
    #[error("{addr} sent a malformed {what}: {reason}")]
    Unacceptable {
        addr: String,
        what: &'static str,
        reason: String,
    },
    /// The peer's final status is a failure.
    #[error("{addr} answered {operation} with {status}{}", comment_suffix(.comment))]
    Failed {
        addr: String,
        operation: &'static str,
        status: Status,
        comment: Option<String>,
    },
    /// The scratch directory could not be created.
    #[error("scratch directory {path}: {source}")]
    Scratch {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An earlier operation failed mid-way; the association was given up.
    #[error("association to {addr} unusable after an earlier failure: {reason}")]
    Unusable { addr: String, reason: String },
}

fn comment_suffix(comment: &Option<String>) -> String {
    comment
        .as_deref()
        .filter(|c| !c.is_empty())
        .map(|c| format!(": {c}"))
        .unwrap_or_default()
}

impl QrError {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            QrError::Association(e) => e.is_transient(),
            QrError::Failed { status, .. } => matches!(status, Status::OutOfResources(_)),
            QrError::Unusable { .. } => true,
            QrError::NotNegotiated { .. }
            | QrError::InvalidQuery(_)
            | QrError::InvalidDestination { .. }
            | QrError::Malformed { .. }
            | QrError::Unacceptable { .. }
            | QrError::Scratch { .. } => false,
        }
    }

    /// Whether the association is left in an unknown state.
    fn breaks_association(&self) -> bool {
        !matches!(
            self,
            QrError::NotNegotiated { .. }
                | QrError::InvalidQuery(_)
                | QrError::InvalidDestination { .. }
                | QrError::Failed { .. }
                | QrError::Scratch { .. }
                | QrError::Unusable { .. }
        )
    }
}

/// One Query/Retrieve association.
pub struct QrAssociation {
    scu: Scu,
    broken: Option<String>,
}

impl QrAssociation {
    /// Associate, proposing the contexts of `services`. Fails with
    /// [`ScuError::TooManyContexts`] past [`MAX_CONTEXTS`]. Whether each
    /// service was accepted is checked when it is used.
    pub async fn connect(peer: &Peer, services: &[Service]) -> Result<Self, QrError> {
        let uncompressed: Vec<String> = UNCOMPRESSED_TRANSFER_SYNTAXES
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut request = AssociationRequest {
            max_pdu: Some(RETRIEVE_MAX_PDU),
            ..AssociationRequest::default()
        };
        for service in services {
            match service {
                Service::Find(model) => request
                    .contexts
                    .push((model.find_sop_class().to_string(), uncompressed.clone())),
                Service::Move => request
                    .contexts
                    .push((STUDY_ROOT_MOVE.to_string(), uncompressed.clone())),
                Service::Get(storage) => {
                    request
                        .contexts
                        .push((STUDY_ROOT_GET.to_string(), uncompressed.clone()));
                    for sc in storage {
                        request.contexts.push((
                            sc.sop_class_uid.clone(),
                            vec![sc.transfer_syntax_uid.clone()],
                        ));
                        if !request.scp_roles.contains(&sc.sop_class_uid) {
                            request.scp_roles.push(sc.sop_class_uid.clone());
                        }
                    }
                }
            }
        }
        let scu = Scu::associate(peer, &request).await?;
        Ok(QrAssociation { scu, broken: None })
    }

    /// The underlying association (accepted contexts, roles).
    pub fn scu(&self) -> &Scu {
        &self.scu
    }

    /// C-FIND with a typed query.
    pub async fn find<Q: FindQuery>(
        &mut self,
        model: InformationModel,
        query: &Q,
        options: &QrOptions,
    ) -> Result<FindOutcome<Q::Match>, QrError> {
        let identifier = query.identifier().map_err(QrError::InvalidQuery)?;
        let raw = self.find_raw(model, &identifier, options).await?;
        let addr = self.addr();
        let matches = raw
            .matches
            .iter()
            .map(Q::parse)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| QrError::Malformed {
                addr,
                what: "C-FIND match",
                source,
            })?;
        Ok(raw.with_matches(matches))
    }

    /// C-FIND with an identifier of your own (any level and keys).
    pub async fn find_raw(
        &mut self,
        model: InformationModel,
        identifier: &InMemDicomObject,
        options: &QrOptions,
    ) -> Result<FindOutcome<InMemDicomObject>, QrError> {
        self.usable()?;
        let r = find::run(&mut self.scu, model, identifier, options).await;
        self.note(r)
    }

    /// C-GET `target`, writing each instance to a new file in `scratch_dir`
    /// (created if missing). Returns whenever the peer's final response
    /// arrived, whatever its status: check [`GetOutcome::is_complete`].
    pub async fn get(
        &mut self,
        target: &RetrieveTarget,
        scratch_dir: &Path,
        options: &QrOptions,
    ) -> Result<GetOutcome, QrError> {
        self.usable()?;
        let r = get::run(&mut self.scu, target, scratch_dir, options).await;
        self.note(r)
    }

    /// C-MOVE `target` to the AE `destination` (which the peer must know).
    /// Returns whenever the peer's final response arrived, whatever its
    /// status: check [`MoveOutcome::is_complete`].
    pub async fn move_to(
        &mut self,
        target: &RetrieveTarget,
        destination: &str,
        options: &QrOptions,
    ) -> Result<MoveOutcome, QrError> {
        self.usable()?;
        let r = moves::run(&mut self.scu, target, destination, options).await;
        self.note(r)
    }

    /// Release (or, after a failure mid-operation, abort) the association.
    pub async fn release(self) {
        if self.broken.is_some() {
            self.scu.abort().await;
        } else {
            self.scu.release().await;
        }
    }

    fn addr(&self) -> String {
        let p = self.scu.peer();
        format!("{}:{}", p.host, p.port)
    }

    fn usable(&self) -> Result<(), QrError> {
        match &self.broken {
            Some(reason) => Err(QrError::Unusable {
                addr: self.addr(),
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    fn note<T>(&mut self, r: Result<T, QrError>) -> Result<T, QrError> {
        if let Err(e) = &r
            && e.breaks_association()
        {
            self.broken = Some(e.to_string());
        }
        r
    }
}

/// Associate, C-FIND, release.
pub async fn find<Q: FindQuery>(
    peer: &Peer,
    model: InformationModel,
    query: &Q,
    options: &QrOptions,
) -> Result<FindOutcome<Q::Match>, QrError> {
    let mut a = QrAssociation::connect(peer, &[Service::Find(model)]).await?;
    let r = a.find(model, query, options).await;
    a.release().await;
    r
}

/// Associate with `storage` contexts, C-GET into `scratch_dir`, release.
pub async fn get(
    peer: &Peer,
    target: &RetrieveTarget,
    storage: &[StorageContext],
    scratch_dir: &Path,
    options: &QrOptions,
) -> Result<GetOutcome, QrError> {
    let mut a = QrAssociation::connect(peer, &[Service::Get(storage.to_vec())]).await?;
    let r = a.get(target, scratch_dir, options).await;
    a.release().await;
    r
}

/// Associate, C-MOVE to `destination`, release.
pub async fn move_to(
    peer: &Peer,
    target: &RetrieveTarget,
    destination: &str,
    options: &QrOptions,
) -> Result<MoveOutcome, QrError> {
    let mut a = QrAssociation::connect(peer, &[Service::Move]).await?;
    let r = a.move_to(target, destination, options).await;
    a.release().await;
    r
}

// ---------------------------------------------------------------------------
// Shared by the three loops
// ---------------------------------------------------------------------------

/// The accepted context of a Q/R model, or [`QrError::NotNegotiated`].
fn qr_context(scu: &Scu, sop_class: &str, service: &'static str) -> Result<(u8, String), QrError> {
    scu.accepted_context(sop_class)
        .ok_or_else(|| QrError::NotNegotiated {
            addr: addr_of(scu),
            service,
            what: sop_class.to_string(),
        })
}

fn addr_of(scu: &Scu) -> String {
    let p = scu.peer();
    format!("{}:{}", p.host, p.port)
}

/// Send a Q/R request: command, then identifier, on `pc`.
async fn send_request(
    scu: &mut Scu,
    pc: u8,
    transfer_syntax: &str,
    rq: &dimse::QueryRetrieveRq,
    identifier: &InMemDicomObject,
) -> Result<(), QrError> {
    let bytes = identifier::encode(identifier, transfer_syntax).map_err(QrError::InvalidQuery)?;
    scu.send_command(pc, &rq.to_command()).await?;
    scu.send_data(pc, &bytes).await?;
    Ok(())
}

/// Elapsed time in whole milliseconds (for logs).
fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_storage_contexts_fit_and_are_storage_classes() {
        let v = default_storage_contexts();
        assert!(v.len() <= MAX_STORAGE_CONTEXTS, "{} contexts", v.len());
        assert_eq!(v.len(), 13 * 8 + 10 * 2);
        for sc in &v {
            assert!(
                pacs_mirror_dicom::sop_classes::storage_sop_class_name(&sc.sop_class_uid).is_some(),
                "{} is not a storage class",
                sc.sop_class_uid
            );
        }
        let distinct: std::collections::HashSet<_> = v.iter().collect();
        assert_eq!(distinct.len(), v.len(), "no duplicate context");
    }

    #[test]
    fn known_contexts_come_first_then_defaults_while_room() {
        let rare = StorageContext {
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.66".into(),
            transfer_syntax_uid: identifier::EXPLICIT_VR_LE.into(),
        };
        let common = default_storage_contexts()[0].clone();
        let v = storage_contexts_with([rare.clone(), common.clone(), rare.clone()]);
        assert_eq!(v[0], rare);
        assert_eq!(v[1], common);
        assert_eq!(v.iter().filter(|c| **c == common).count(), 1);
        assert_eq!(v.len(), default_storage_contexts().len() + 1);
        let many = (0..200).map(|i| StorageContext {
            sop_class_uid: format!("1.2.3.{i}"),
            transfer_syntax_uid: identifier::EXPLICIT_VR_LE.into(),
        });
        assert_eq!(storage_contexts_with(many).len(), MAX_STORAGE_CONTEXTS);
    }

    #[test]
    fn error_classes() {
        let failed = |code| QrError::Failed {
            addr: "h:1".into(),
            operation: "C-FIND",
            status: Status::from_code(code),
            comment: Some("why".into()),
        };
        assert!(failed(0xA700).is_transient());
        assert!(!failed(0xC000).is_transient());
        assert_eq!(
            failed(0xA801).to_string(),
            "h:1 answered C-FIND with Failure (0xA801): why"
        );
        assert!(!failed(0xA700).breaks_association());
        let malformed = QrError::Malformed {
            addr: "h:1".into(),
            what: "identifier",
            source: identifier::QueryError::TooLarge { len: 1 << 21 },
        };
        assert!(!malformed.is_transient());
        assert!(malformed.breaks_association());
        assert_eq!(
            malformed.to_string(),
            "h:1 sent a malformed identifier: identifier of 2097152 bytes (at most 1048576)"
        );
        let unacceptable = QrError::Unacceptable {
            addr: "h:1".into(),
            what: "identifier",
            reason: "x".into(),
        };
        assert!(!unacceptable.is_transient());
        assert!(unacceptable.breaks_association());
        let invalid = QrError::InvalidQuery(identifier::QueryError::BadDate { date: "x".into() });
        assert!(!invalid.breaks_association());
        assert_eq!(
            invalid.to_string(),
            "invalid query: date \"x\" is not YYYYMMDD"
        );
        let destination = QrError::InvalidDestination {
            destination: "A\\B".into(),
        };
        assert!(!destination.is_transient());
        assert!(!destination.breaks_association());
    }
}
