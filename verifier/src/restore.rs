//! Bringing data back from an object-storage target, reading only the
//! bucket: `restore` (C-STORE every selected object into a PACS) and
//! `reindex --from` (rebuild the agent's index).
//!
//! Neither needs the agent's local index or spool: the agent machine may be
//! gone. What is in the bucket is found from the study manifests, plus a
//! listing of `objects/` for blobs no manifest names (an upload cut off
//! between its blob and its manifest entry). A selection of studies only
//! reads those studies' manifests and asks for their objects by key: it
//! costs those studies, not the bucket.
//!
//! A mistake never passes as success: a location that is not a
//! pacs-mirror bucket ([`RestoreError::NotABucket`]), a selection that
//! finds nothing or names a study the bucket does not hold
//! ([`RestoreError::Unmatched`]) and a bucket with nothing to reindex
//! ([`RestoreError::NothingToReindex`]) are errors, found before anything
//! is sent or indexed.
//!
//! Every object is downloaded and its data set hashed to its key **before**
//! it is sent; an object that does not match is reported and never sent.
//! An object of at most [`MAX_IN_MEMORY`] bytes whose manifest names it is
//! held in memory, within [`MEMORY_BUDGET_KIB`] for all associations
//! together (a download waits for room); anything else goes to a scratch
//! file, removed as soon as it is sent. An object in memory whose
//! association fails is written to its scratch file before it waits for a
//! new association, so waiting never holds the budget.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::Serialize;

use pacs_mirror_agent::bucket::manifest::{ManifestEntry, StudyManifest};
use pacs_mirror_agent::bucket::{Bucket, BucketError, Layout};
use pacs_mirror_dicom::dimse::Status;
use pacs_mirror_dicom::scu::{self, Outgoing, Peer, Scu};
use pacs_mirror_store::index::{Index, IndexError, ObjectId, hash_hex, parse_hash};

/// Objects sent per association (within the 128 presentation contexts an
/// association can carry).
const CHUNK: usize = 64;
/// Downloads in flight per association.
const DOWNLOADS: usize = 8;
/// Attempts of a chunk whose association failed for a network reason.
const CHUNK_ATTEMPTS: u32 = 3;
/// Objects at most this large are downloaded into memory, not to a scratch
/// file (so the [`DOWNLOADS`] of an association fit in the budget).
const MAX_IN_MEMORY: u64 = 8 << 20;
/// Memory for downloaded objects not sent yet, all associations together,
/// in KiB (128 MiB).
const MEMORY_BUDGET_KIB: u32 = 128 << 10;

/// Errors of restore and reindex.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RestoreError {
    /// Reading the bucket failed.
    #[error("bucket: {0}")]
    Bucket(#[from] BucketError),
    /// The index failed.
    #[error("index: {0}")]
    Index(#[from] IndexError),
    /// The scratch directory.
    #[error("scratch directory {path}: {source}")]
    Scratch {
        /// The directory.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// A filter argument is malformed.
    #[error("{0}")]
    Filter(String),
    /// The location is not a pacs-mirror bucket: missing, empty, or
    /// holding other things ([`BucketError::is_not_a_bucket`]).
    #[error("{0}")]
    NotABucket(BucketError),
    /// The selection matches nothing, or names a study the bucket does not
    /// hold as asked: nothing is restored.
    #[error("{0}")]
    Unmatched(Unmatched),
    /// `reindex --from` found no study manifest to index.
    #[error(
        "nothing to reindex: {url} holds no study manifest ({objects} object(s) that no manifest names)"
    )]
    NothingToReindex {
        /// The bucket's URL.
        url: String,
        /// Objects in the bucket (named by no manifest).
        objects: usize,
    },
}

impl RestoreError {
    /// Whether this is a mistake in what was asked (a location that is not
    /// a bucket, a selection that finds nothing) rather than a failure:
    /// the message says what and where on its own.
    pub fn is_mistake(&self) -> bool {
        matches!(
            self,
            RestoreError::NotABucket(_)
                | RestoreError::Unmatched(_)
                | RestoreError::NothingToReindex { .. }
                | RestoreError::Filter(_)
        )
    }
}

/// What of a selection found nothing in the bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unmatched {
    /// Each part of the selection that found nothing, in words (per
    /// requested study).
    pub reasons: Vec<String>,
    /// What the bucket holds ("1 study", "3 studies and 1 instance without
    /// a study"); `None` when everything was asked for.
    pub held: Option<String>,
    /// Whether the rest of the selection did select something (not
    /// restored either: the whole command is refused).
    pub selected_some: bool,
}

impl std::fmt::Display for Unmatched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let held = self
            .held
            .as_ref()
            .map(|h| format!(" (it holds {h})"))
            .unwrap_or_default();
        if self.selected_some {
            write!(
                f,
                "not in the bucket as asked: {}{held}; nothing restored: correct the selection or leave that out",
                self.reasons.join("; ")
            )
        } else {
            write!(f, "nothing selected: {}{held}", self.reasons.join("; "))
        }
    }
}

/// Whether `bucket` is a pacs-mirror bucket ([`Bucket::layout`]); a
/// location that is not one is [`RestoreError::NotABucket`].
pub async fn check_bucket(bucket: &Bucket) -> Result<Layout, RestoreError> {
    bucket.layout().await.map_err(|e| {
        if e.is_not_a_bucket() {
            RestoreError::NotABucket(e)
        } else {
            RestoreError::Bucket(e)
        }
    })
}

/// Which studies to restore; empty: all.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Study Instance UIDs.
    pub studies: Vec<String>,
    /// Patient ID.
    pub patient_id: Option<String>,
    /// Studies whose Study Date is on or after this date (YYYYMMDD);
    /// studies without a Study Date by the day they were received.
    pub since: Option<String>,
    /// Send every version held of a SOP instance (default: the newest).
    pub all_versions: bool,
}

impl Selection {
    fn is_everything(&self) -> bool {
        self.studies.is_empty() && self.patient_id.is_none() && self.since.is_none()
    }

    fn wants(&self, m: &StudyManifest) -> bool {
        (self.studies.is_empty() || self.studies.contains(&m.study_instance_uid))
            && self.patient_matches(m)
            && self.date_matches(m)
    }

    fn patient_matches(&self, m: &StudyManifest) -> bool {
        self.patient_id
            .as_ref()
            .is_none_or(|p| m.patient_id.trim() == p.trim())
    }

    fn date_matches(&self, m: &StudyManifest) -> bool {
        self.since
            .as_ref()
            .is_none_or(|since| study_day(m).as_str() >= since.as_str())
    }

    /// Why nothing (or not every requested study) is selected from
    /// `manifests`, in words: per requested study, or per filter.
    fn why_unmatched(&self, manifests: &[StudyManifest]) -> Vec<String> {
        let mut reasons = Vec::new();
        if !self.studies.is_empty() {
            let mut asked = HashSet::new();
            for uid in &self.studies {
                if !asked.insert(uid) {
                    continue;
                }
                match manifests.iter().find(|m| &m.study_instance_uid == uid) {
                    None => reasons.push(format!("study {uid} is not in the bucket")),
                    Some(m) if !self.patient_matches(m) => reasons.push(format!(
                        "study {uid} is of patient {:?}, not {:?}",
                        m.patient_id.trim(),
                        self.patient_id.as_deref().unwrap_or_default().trim()
                    )),
                    Some(m) if !self.date_matches(m) => reasons.push(format!(
                        "study {uid} is dated {}, before {}",
                        dashed(&study_day(m)),
                        dashed(self.since.as_deref().unwrap_or_default())
                    )),
                    Some(_) => {}
                }
            }
            return reasons;
        }
        let of_patient: Vec<&StudyManifest> = manifests
            .iter()
            .filter(|m| self.patient_matches(m))
            .collect();
        if let Some(p) = &self.patient_id
            && of_patient.is_empty()
        {
            reasons.push(format!("patient {:?} has no study in the bucket", p.trim()));
        } else if let Some(since) = &self.since
            && !of_patient.iter().any(|m| self.date_matches(m))
        {
            let whose = self
                .patient_id
                .as_ref()
                .map(|p| format!(" of patient {:?}", p.trim()))
                .unwrap_or_default();
            let latest = of_patient
                .iter()
                .map(|m| study_day(m))
                .max()
                .map(|d| format!(": the latest is dated {}", dashed(&d)))
                .unwrap_or_default();
            reasons.push(format!(
                "no study{whose} is dated on or after {}{latest}",
                dashed(since)
            ));
        } else if self.is_everything() {
            reasons.push("the bucket holds no study and no object yet".into());
        } else {
            reasons.push("the selection matches no study".into());
        }
        reasons
    }
}

/// The day of a study for `--since` (YYYYMMDD): its Study Date, or the
/// day its first instance was received.
fn study_day(m: &StudyManifest) -> String {
    if m.study_date.len() == 8 {
        m.study_date.clone()
    } else {
        m.instances
            .iter()
            .map(|e| yyyymmdd_of_ms(e.record.received_at_ms))
            .min()
            .unwrap_or_default()
    }
}

/// YYYYMMDD → YYYY-MM-DD (anything else as it is).
fn dashed(d: &str) -> String {
    if d.len() == 8 && d.is_ascii() {
        format!("{}-{}-{}", &d[..4], &d[4..6], &d[6..])
    } else {
        d.to_string()
    }
}

/// What `manifests` hold, in words: "1 study", "3 studies and 1 instance
/// without a study", "no study".
fn holdings(manifests: &[StudyManifest]) -> String {
    let unfiled = manifests
        .iter()
        .filter(|m| m.study_instance_uid.is_empty())
        .count();
    let studies = manifests.len() - unfiled;
    let mut s = match studies {
        0 => "no study".to_string(),
        1 => "1 study".to_string(),
        n => format!("{n} studies"),
    };
    match unfiled {
        0 => {}
        1 => s.push_str(" and 1 instance without a study"),
        n => s.push_str(&format!(" and {n} instances without a study")),
    }
    s
}

/// `YYYY-MM-DD` or `YYYYMMDD` → `YYYYMMDD`.
pub fn parse_date(s: &str) -> Result<String, RestoreError> {
    let digits: String = s.chars().filter(|c| *c != '-').collect();
    let ok = digits.len() == 8
        && digits.chars().all(|c| c.is_ascii_digit())
        && (1..=12).contains(&digits[4..6].parse::<u32>().unwrap_or(0))
        && (1..=31).contains(&digits[6..8].parse::<u32>().unwrap_or(0));
    if ok {
        Ok(digits)
    } else {
        Err(RestoreError::Filter(format!(
            "{s:?} is not a date: write YYYY-MM-DD or YYYYMMDD"
        )))
    }
}

/// The UTC day (YYYYMMDD) of a Unix time in ms.
pub(crate) fn yyyymmdd_of_ms(ms: u64) -> String {
    let (y, m, d, ..) = pacs_mirror_agent::utc_datetime(ms);
    format!("{y:04}{m:02}{d:02}")
}

/// One object to send.
#[derive(Debug, Clone)]
pub struct Planned {
    /// Its address (the key).
    pub hash: ObjectId,
    /// From its manifest entry (`None`: a blob no manifest names; its
    /// identity is read from the file once downloaded).
    pub entry: Option<ManifestEntry>,
    /// Its size in the bucket.
    pub bytes: u64,
}

/// What will be restored.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// What made the location a bucket (`None` only for a plan built by
    /// hand).
    pub layout: Option<Layout>,
    /// The objects, study by study.
    pub objects: Vec<Planned>,
    /// Studies selected.
    pub studies: usize,
    /// Older versions of SOP instances not sent (`all_versions` off).
    pub older_versions_skipped: usize,
    /// Blobs named by no manifest (included when everything is restored);
    /// `None` when not looked for (a selection of studies reads only those
    /// studies, never listing the bucket).
    pub unlisted_blobs: Option<usize>,
    /// Manifest entries whose blob is missing from the bucket.
    pub missing_blobs: Vec<String>,
}

impl Plan {
    /// Total bytes to download.
    pub fn bytes(&self) -> u64 {
        self.objects.iter().map(|o| o.bytes).sum()
    }
}

/// Read the bucket and decide what to send. A location that is not a
/// pacs-mirror bucket is [`RestoreError::NotABucket`]; a selection that
/// selects nothing, or names a study the bucket does not hold as asked, is
/// [`RestoreError::Unmatched`] (nothing is sent then, not even the studies
/// found).
pub async fn plan(bucket: &Bucket, selection: &Selection) -> Result<Plan, RestoreError> {
    let layout = check_bucket(bucket).await?;
    if let Some(plan) = plan_studies(bucket, selection, layout.clone()).await? {
        return Ok(plan);
    }
    let manifests = bucket.manifests().await?;
    let blobs: HashMap<ObjectId, u64> = bucket.objects().await?.into_iter().collect();
    let mut listed: HashSet<ObjectId> = HashSet::new();
    let mut plan = Plan {
        layout: Some(layout),
        ..Plan::default()
    };
    for m in &manifests {
        for e in &m.instances {
            if let Ok(h) = parse_hash(&e.record.blake3) {
                listed.insert(h);
            }
        }
        if selection.wants(m) {
            add_study(&mut plan, m, selection, &blobs);
        }
    }
    let mut unlisted: Vec<(&ObjectId, &u64)> =
        blobs.iter().filter(|(h, _)| !listed.contains(*h)).collect();
    unlisted.sort();
    plan.unlisted_blobs = Some(unlisted.len());
    if selection.is_everything() {
        for (h, bytes) in unlisted {
            plan.objects.push(Planned {
                hash: *h,
                entry: None,
                bytes: *bytes,
            });
        }
    }
    let nothing = plan.studies == 0 && plan.objects.is_empty();
    let mut reasons = if nothing || !selection.studies.is_empty() {
        selection.why_unmatched(&manifests)
    } else {
        Vec::new()
    };
    if nothing && reasons.is_empty() {
        reasons.push("the selection matches no study".into());
    }
    if !reasons.is_empty() {
        return Err(RestoreError::Unmatched(Unmatched {
            reasons,
            held: (!selection.is_everything()).then(|| holdings(&manifests)),
            selected_some: !nothing,
        }));
    }
    Ok(plan)
}

/// Add what `selection` keeps of study `m` to `plan`: the newest version of
/// each SOP instance unless all are wanted; entries whose blob `blobs`
/// does not hold are listed missing.
fn add_study(
    plan: &mut Plan,
    m: &StudyManifest,
    selection: &Selection,
    blobs: &HashMap<ObjectId, u64>,
) {
    plan.studies += 1;
    let mut newest: HashMap<&str, &ManifestEntry> = HashMap::new();
    for e in &m.instances {
        let slot = newest
            .entry(e.record.sop_instance_uid.as_str())
            .or_insert(e);
        if e.record.received_at_ms > slot.record.received_at_ms {
            *slot = e;
        }
    }
    for e in &m.instances {
        let keep = selection.all_versions
            || newest
                .get(e.record.sop_instance_uid.as_str())
                .is_some_and(|n| n.record.blake3 == e.record.blake3);
        if !keep {
            plan.older_versions_skipped += 1;
            continue;
        }
        let Ok(hash) = parse_hash(&e.record.blake3) else {
            plan.missing_blobs.push(e.key.clone());
            continue;
        };
        match blobs.get(&hash) {
            Some(bytes) => plan.objects.push(Planned {
                hash,
                entry: Some(e.clone()),
                bytes: *bytes,
            }),
            None => plan.missing_blobs.push(e.key.clone()),
        }
    }
}

/// A selection of studies only, each of which has a manifest: read those
/// manifests and ask for their objects by key, never listing the bucket,
/// so restoring one study costs that study. `None` for any other
/// selection, or when a study has no manifest (the full plan says why).
/// Blobs named by no manifest are not looked for (`unlisted_blobs` None).
async fn plan_studies(
    bucket: &Bucket,
    selection: &Selection,
    layout: Layout,
) -> Result<Option<Plan>, RestoreError> {
    if selection.studies.is_empty() || selection.patient_id.is_some() || selection.since.is_some() {
        return Ok(None);
    }
    let mut manifests = Vec::with_capacity(selection.studies.len());
    for uid in &selection.studies {
        match bucket.study_manifest(uid).await? {
            Some(m) if m.study_instance_uid == *uid => manifests.push(m),
            _ => return Ok(None),
        }
    }
    let hashes: HashSet<ObjectId> = manifests
        .iter()
        .flat_map(|m| &m.instances)
        .filter_map(|e| parse_hash(&e.record.blake3).ok())
        .collect();
    let mut blobs = HashMap::new();
    let mut sizes = futures::stream::iter(hashes)
        .map(|h| async move { (h, bucket.object_size(&h).await) })
        .buffer_unordered(16);
    while let Some((h, size)) = sizes.next().await {
        if let Some(bytes) = size? {
            blobs.insert(h, bytes);
        }
    }
    let mut plan = Plan {
        layout: Some(layout),
        ..Plan::default()
    };
    for m in &manifests {
        add_study(&mut plan, m, selection, &blobs);
    }
    Ok(Some(plan))
}

/// What happened to one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Outcome {
    /// Stored by the PACS (Success or a warning).
    Stored,
    /// The bucket's bytes do not hash to the key: not sent.
    Corrupt(String),
    /// Could not be downloaded.
    DownloadFailed(String),
    /// The PACS refused it, or the association failed.
    SendFailed(String),
}

/// One object's result, for the progress bar and the report.
#[derive(Debug, Clone, Serialize)]
pub struct Done {
    /// Object address (hex).
    pub blake3: String,
    /// SOP Instance UID (empty when unknown).
    pub sop_instance_uid: String,
    /// Bytes downloaded.
    pub bytes: u64,
    /// What happened.
    pub outcome: Outcome,
}

/// The final report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Studies selected.
    pub studies: usize,
    /// Objects planned.
    pub planned: usize,
    /// Objects stored by the PACS.
    pub stored: usize,
    /// Bytes of the stored objects.
    pub bytes: u64,
    /// Seconds from start to end.
    pub seconds: f64,
    /// Objects whose bucket bytes failed verification (never sent).
    pub corrupt: Vec<Done>,
    /// Objects not restored for another reason.
    pub failed: Vec<Done>,
    /// Manifest entries whose blob is missing from the bucket.
    pub missing_blobs: Vec<String>,
    /// Older versions not sent.
    pub older_versions_skipped: usize,
    /// Blobs named by no manifest (restored when everything is); `None`:
    /// not looked for ([`Plan::unlisted_blobs`]).
    pub unlisted_blobs: Option<usize>,
}

impl Report {
    /// Whether everything planned was stored and nothing is missing.
    pub fn complete(&self) -> bool {
        self.stored == self.planned && self.corrupt.is_empty() && self.missing_blobs.is_empty()
    }
}

/// How to send.
#[derive(Debug, Clone)]
pub struct SendSettings {
    /// The PACS.
    pub peer: Peer,
    /// Associations in parallel.
    pub associations: usize,
    /// Where downloads wait to be sent (created; emptied).
    pub scratch: PathBuf,
}

/// Send `plan` to the PACS; `progress` is called once per object.
pub async fn restore(
    bucket: Arc<Bucket>,
    plan: Plan,
    settings: &SendSettings,
    progress: Arc<dyn Fn(&Done) + Send + Sync>,
) -> Result<Report, RestoreError> {
    let start = Instant::now();
    std::fs::create_dir_all(&settings.scratch).map_err(|source| RestoreError::Scratch {
        path: settings.scratch.display().to_string(),
        source,
    })?;
    let mut report = Report {
        studies: plan.studies,
        planned: plan.objects.len(),
        missing_blobs: plan.missing_blobs.clone(),
        older_versions_skipped: plan.older_versions_skipped,
        unlisted_blobs: plan.unlisted_blobs,
        ..Report::default()
    };
    let memory = Arc::new(tokio::sync::Semaphore::new(MEMORY_BUDGET_KIB as usize));
    let chunks: Vec<Vec<Planned>> = plan
        .objects
        .chunks(CHUNK)
        .map(<[Planned]>::to_vec)
        .collect();
    let results: Vec<Vec<Done>> = futures::stream::iter(chunks.into_iter().enumerate())
        .map(|(n, chunk)| {
            let bucket = bucket.clone();
            let progress = progress.clone();
            let settings = settings.clone();
            let memory = memory.clone();
            async move {
                let dir = settings.scratch.join(format!("chunk-{n}"));
                let out = send_chunk(
                    bucket,
                    chunk,
                    &settings.peer,
                    &dir,
                    memory,
                    progress.as_ref(),
                )
                .await;
                let _ = tokio::fs::remove_dir_all(&dir).await;
                out
            }
        })
        .buffer_unordered(settings.associations.max(1))
        .collect()
        .await;
    for done in results.into_iter().flatten() {
        match &done.outcome {
            Outcome::Stored => {
                report.stored += 1;
                report.bytes += done.bytes;
            }
            Outcome::Corrupt(_) => report.corrupt.push(done),
            Outcome::DownloadFailed(_) | Outcome::SendFailed(_) => report.failed.push(done),
        }
    }
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// Download a chunk (every object verified) and send it on one association.
///
/// When the manifests name every object of the chunk, its SOP classes and
/// transfer syntaxes are known before any download: the association is
/// opened at once and each object is sent as soon as it is downloaded and
/// verified, while the next ones are still downloading (a task of their
/// own, [`DOWNLOADS`] at a time). Otherwise (blobs no manifest names: their
/// identity is in the file only) the chunk is downloaded first. What a
/// broken association leaves unsent is sent again on a new one, up to
/// [`CHUNK_ATTEMPTS`] associations.
async fn send_chunk(
    bucket: Arc<Bucket>,
    chunk: Vec<Planned>,
    peer: &Peer,
    dir: &Path,
    memory: Arc<tokio::sync::Semaphore>,
    progress: &(dyn Fn(&Done) + Send + Sync),
) -> Vec<Done> {
    let mut done = Vec::new();
    let finish = |d: Done, done: &mut Vec<Done>| {
        progress(&d);
        done.push(d);
    };
    if let Err(e) = tokio::fs::create_dir_all(dir).await {
        for p in chunk {
            let d = Done {
                blake3: hash_hex(&p.hash),
                sop_instance_uid: sop_of(&p),
                bytes: 0,
                outcome: Outcome::DownloadFailed(format!("{}: {e}", dir.display())),
            };
            finish(d, &mut done);
        }
        return done;
    }
    let chunk = Arc::new(chunk);
    let file_of = |i: usize| dir.join(format!("{i}.dcm"));
    // Downloads, handed over as they complete (the channel holds the whole
    // chunk, so they never wait for the sender).
    let (tx, mut rx) = tokio::sync::mpsc::channel(chunk.len().max(1));
    let downloader = {
        let (chunk, dir) = (chunk.clone(), dir.to_path_buf());
        tokio::spawn(async move {
            let mut results = futures::stream::iter(0..chunk.len())
                .map(|i| {
                    let (bucket, p, file, memory) =
                        (&bucket, &chunk[i], dir.join(format!("{i}.dcm")), &memory);
                    async move { (i, fetch(bucket, p, &file, memory).await) }
                })
                .buffer_unordered(DOWNLOADS);
            while let Some(r) = results.next().await {
                if tx.send(r).await.is_err() {
                    break;
                }
            }
        })
    };
    // The association of the pipelined first attempt.
    let known: Option<Vec<Outgoing>> = chunk
        .iter()
        .enumerate()
        .map(|(i, p)| p.entry.as_ref().map(|e| outgoing_of(e, file_of(i))))
        .collect();
    let mut scu = match &known {
        Some(objects) => Scu::connect(peer, &scu::contexts_for(objects)).await.ok(),
        None => None,
    };
    let mut attempt = u32::from(scu.is_some());
    let mut broken = false;
    let mut ready: Vec<(usize, Outgoing, u64)> = Vec::new();
    while let Some((i, result)) = rx.recv().await {
        let p = &chunk[i];
        let (o, bytes, permit) = match verified(p, file_of(i), result) {
            Ok(v) => v,
            Err(outcome) => {
                let d = Done {
                    blake3: hash_hex(&p.hash),
                    sop_instance_uid: sop_of(p),
                    bytes: 0,
                    outcome,
                };
                finish(d, &mut done);
                continue;
            }
        };
        let Some(s) = scu.as_mut().filter(|_| !broken) else {
            match spill(o, permit, &p.hash).await {
                Ok(o) => ready.push((i, o, bytes)),
                Err(d) => finish(d, &mut done),
            }
            continue;
        };
        let outcome = match s.store(&o).await {
            Ok(st) => stored_outcome(st),
            Err(e) if e.is_transient() && attempt < CHUNK_ATTEMPTS => {
                broken = true;
                match spill(o, permit, &p.hash).await {
                    Ok(o) => ready.push((i, o, bytes)),
                    Err(d) => finish(d, &mut done),
                }
                continue;
            }
            Err(e) => Outcome::SendFailed(e.to_string()),
        };
        drop(permit);
        if o.memory.is_none() {
            let _ = tokio::fs::remove_file(&o.path).await;
        }
        let d = Done {
            blake3: hash_hex(&p.hash),
            sop_instance_uid: o.sop_instance_uid.clone(),
            bytes,
            outcome,
        };
        finish(d, &mut done);
    }
    let _ = downloader.await;
    if let Some(s) = scu.take().filter(|_| !broken) {
        s.release().await;
    }
    // Whatever is left (downloaded first, or after a broken association):
    // send it on a new association.
    while !ready.is_empty() {
        attempt += 1;
        let objects: Vec<Outgoing> = ready.iter().map(|(_, o, _)| o.clone()).collect();
        let contexts = scu::contexts_for(&objects);
        let mut scu = match Scu::connect(peer, &contexts).await {
            Ok(s) => s,
            Err(e) if e.is_transient() && attempt < CHUNK_ATTEMPTS => {
                tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
                continue;
            }
            Err(e) => {
                for (i, o, bytes) in ready.drain(..) {
                    let d = Done {
                        blake3: hash_hex(&chunk[i].hash),
                        sop_instance_uid: o.sop_instance_uid.clone(),
                        bytes,
                        outcome: Outcome::SendFailed(e.to_string()),
                    };
                    finish(d, &mut done);
                }
                break;
            }
        };
        let mut rest = Vec::new();
        let mut broken = None;
        for (i, o, bytes) in ready.drain(..) {
            if broken.is_some() {
                rest.push((i, o, bytes));
                continue;
            }
            let outcome = match scu.store(&o).await {
                Ok(st) => stored_outcome(st),
                Err(e) if e.is_transient() && attempt < CHUNK_ATTEMPTS => {
                    broken = Some(e);
                    rest.push((i, o, bytes));
                    continue;
                }
                Err(e) => Outcome::SendFailed(e.to_string()),
            };
            let _ = tokio::fs::remove_file(&o.path).await;
            let d = Done {
                blake3: hash_hex(&chunk[i].hash),
                sop_instance_uid: o.sop_instance_uid.clone(),
                bytes,
                outcome,
            };
            finish(d, &mut done);
        }
        if broken.is_none() {
            scu.release().await;
        }
        ready = rest;
    }
    done
}

/// What to send of a manifest entry whose object is downloaded to `path`.
fn outgoing_of(e: &ManifestEntry, path: PathBuf) -> Outgoing {
    Outgoing {
        path,
        memory: None,
        sop_class_uid: e.record.sop_class_uid.clone(),
        sop_instance_uid: e.record.sop_instance_uid.clone(),
        transfer_syntax_uid: e.record.transfer_syntax_uid.clone(),
        // Checked as it was downloaded, moments before.
        dataset_blake3: None,
    }
}

/// A downloaded object: its hashes, and its bytes when they are in memory
/// (with their share of the memory budget, given back once it is sent);
/// otherwise they are in its scratch file.
struct Fetched {
    hashes: pacs_mirror_dicom::part10::StreamHashes,
    memory: Option<(bytes::Bytes, tokio::sync::OwnedSemaphorePermit)>,
}

/// Download `p`: into memory when its manifest names it and it is small
/// enough (waiting for room in `memory`), else into `file`.
async fn fetch(
    bucket: &Bucket,
    p: &Planned,
    file: &Path,
    memory: &Arc<tokio::sync::Semaphore>,
) -> Result<Fetched, BucketError> {
    if p.entry.is_some() && p.bytes <= MAX_IN_MEMORY {
        let kib = u32::try_from(p.bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .max(1);
        // A closed semaphore (never closed here) would mean: use the file.
        if let Ok(permit) = memory.clone().acquire_many_owned(kib).await {
            let (bytes, hashes) = bucket.fetch(&p.hash, p.bytes).await?;
            return Ok(Fetched {
                hashes,
                memory: Some((bytes, permit)),
            });
        }
    }
    let hashes = bucket.download(&p.hash, file).await?;
    Ok(Fetched {
        hashes,
        memory: None,
    })
}

/// A downloaded object ready to send, with its size and its share of the
/// memory budget, or why not: its data set must hash to its key, and a
/// blob no manifest names must be readable as Part 10.
fn verified(
    p: &Planned,
    file: PathBuf,
    result: Result<Fetched, BucketError>,
) -> Result<(Outgoing, u64, Option<tokio::sync::OwnedSemaphorePermit>), Outcome> {
    let f = result.map_err(|e| Outcome::DownloadFailed(e.to_string()))?;
    if f.hashes.dataset != p.hash.0 {
        return Err(Outcome::Corrupt(format!(
            "the data set hashes to {}, not to its key",
            hash_hex(&f.hashes.dataset)
        )));
    }
    let mut o = match &p.entry {
        Some(e) => outgoing_of(e, file),
        None => scu::outgoing(&file).map_err(|e| Outcome::Corrupt(e.to_string()))?,
    };
    let permit = f.memory.map(|(bytes, permit)| {
        o.memory = Some(scu::InMemory(bytes));
        permit
    });
    Ok((o, f.hashes.file_bytes, permit))
}

/// Move an object held in memory to its scratch file and give its memory
/// back, before it waits for another association (waiting must not hold
/// the budget the downloads need). Why not, as its outcome.
async fn spill(
    mut o: Outgoing,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    hash: &ObjectId,
) -> Result<Outgoing, Done> {
    if let Some(m) = o.memory.take() {
        if let Err(e) = tokio::fs::write(&o.path, &m.0).await {
            return Err(Done {
                blake3: hash_hex(hash),
                sop_instance_uid: o.sop_instance_uid.clone(),
                bytes: 0,
                outcome: Outcome::DownloadFailed(format!("{}: {e}", o.path.display())),
            });
        }
    }
    drop(permit);
    Ok(o)
}

/// The outcome of a C-STORE answered with `status`.
fn stored_outcome(status: Status) -> Outcome {
    if status.is_stored() {
        Outcome::Stored
    } else {
        Outcome::SendFailed(status.to_string())
    }
}

fn sop_of(p: &Planned) -> String {
    p.entry
        .as_ref()
        .map(|e| e.record.sop_instance_uid.clone())
        .unwrap_or_default()
}

/// What `reindex --from` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReindexReport {
    /// Studies read.
    pub studies: usize,
    /// Instance versions indexed.
    pub instances: usize,
    /// Of them, objects whose file is not in the local spool (held by the
    /// target only).
    pub not_in_spool: usize,
    /// Versions already in the index.
    pub already_indexed: usize,
    /// Blobs no manifest names (not indexed: their identity is only in the
    /// file; `restore` still finds them).
    pub unlisted_blobs: usize,
}

/// Rebuild index rows from the bucket's manifests: every instance becomes an
/// instance record, as it was when received, its object delivered to
/// `target`; objects whose file is not in `spool` are marked as not in the
/// spool. No outbox rows are written for other targets (the agent has no
/// file to send them). A location that is not a pacs-mirror bucket
/// ([`RestoreError::NotABucket`]), or a bucket with no manifest
/// ([`RestoreError::NothingToReindex`]), indexes nothing and is an error.
pub async fn reindex_from(
    bucket: &Bucket,
    index: &Index,
    spool: &pacs_mirror_store::spool::Spool,
    target: &str,
) -> Result<ReindexReport, RestoreError> {
    check_bucket(bucket).await?;
    let manifests = bucket.manifests().await?;
    let blobs: HashSet<ObjectId> = bucket
        .objects()
        .await?
        .into_iter()
        .map(|(h, _)| h)
        .collect();
    if manifests.is_empty() {
        return Err(RestoreError::NothingToReindex {
            url: bucket.url().to_string(),
            objects: blobs.len(),
        });
    }
    let mut report = ReindexReport {
        studies: manifests.len(),
        ..ReindexReport::default()
    };
    let mut listed = HashSet::new();
    let now = pacs_mirror_agent::unix_ms();
    for m in &manifests {
        for e in &m.instances {
            let hash = parse_hash(&e.record.blake3)?;
            listed.insert(hash);
            let in_spool = spool.object_path(&hash).exists();
            match index.import_delivered(&e.record, &hash, in_spool, target, &e.file_blake3, now)? {
                true => {
                    report.instances += 1;
                    if !in_spool {
                        report.not_in_spool += 1;
                    }
                }
                false => report.already_indexed += 1,
            }
        }
    }
    report.unlisted_blobs = blobs.difference(&listed).count();
    index.flush()?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pacs_mirror_agent::bucket::BucketSettings;
    use pacs_mirror_agent::bucket::manifest::ManifestEntry;
    use pacs_mirror_dicom::part10::{Receipt, file_header};
    use pacs_mirror_dicom::testing::peers::{
        free_port, received_datasets, start_storescp, start_storescp_on, storescp_peer,
    };
    use pacs_mirror_store::index::InstanceRecord;
    use pacs_mirror_store::index::ObjectId;

    const SC: &str = "1.2.840.10008.5.1.4.1.1.7";
    const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
    const STUDY: &str = "1.2.826.0.1.3680043.2.1143.7";

    /// A folder bucket holding one study: `small` objects of a few hundred
    /// bytes and, with `big`, one larger than [`MAX_IN_MEMORY`] (a 9 MiB
    /// Pixel Data element). Returns the bucket and each object's data set.
    async fn bucket_with(dir: &Path, small: usize, big: bool) -> (Arc<Bucket>, Vec<Vec<u8>>) {
        let bucket = Bucket::open(&BucketSettings {
            url: format!("file://{}", dir.join("bucket").display()),
            options: vec![],
            timeout: Duration::from_secs(5),
        })
        .unwrap();
        let files = dir.join("files");
        std::fs::create_dir_all(&files).unwrap();
        let receipt = Receipt {
            source_ip: "127.0.0.1".into(),
            received_at_ms: 1,
        };
        let (mut bodies, mut entries) = (Vec::new(), Vec::new());
        for i in 0..small + usize::from(big) {
            let uid = format!("1.2.826.0.1.3680043.2.1143.7.{}", i + 1);
            let mut body = pacs_mirror_dicom::testing::dataset(SC, &uid, "PID");
            if i == small {
                let pixels = (MAX_IN_MEMORY + (1 << 20)) as u32;
                body.extend_from_slice(&[0xE0, 0x7F, 0x10, 0x00, b'O', b'B', 0, 0]);
                body.extend_from_slice(&pixels.to_le_bytes());
                body.extend((0..pixels).map(|n| (n % 253) as u8));
            }
            let mut file = file_header(SC, &uid, EXPLICIT_LE, "CT", &receipt).unwrap();
            file.extend_from_slice(&body);
            let path = files.join(format!("{i}.dcm"));
            std::fs::write(&path, &file).unwrap();
            let hash = ObjectId::of(&body);
            let up = bucket.upload(&path, &hash).await.unwrap();
            entries.push(ManifestEntry {
                record: InstanceRecord {
                    sop_instance_uid: uid,
                    sop_class_uid: SC.into(),
                    transfer_syntax_uid: EXPLICIT_LE.into(),
                    blake3: hash_hex(&hash),
                    dataset_bytes: body.len() as u64,
                    file_bytes: file.len() as u64,
                    patient_id: "PID".into(),
                    study_instance_uid: STUDY.into(),
                    series_instance_uid: format!("{STUDY}.1"),
                    calling_ae: "CT".into(),
                    source_ip: "127.0.0.1".into(),
                    received_at_ms: 1,
                    study_date: "20261123".into(),
                    modality: String::new(),
                    findings: Vec::new(),
                },
                key: pacs_mirror_agent::bucket::object_key(&hash),
                file_blake3: hash_hex(&up.file_blake3()),
            });
            bodies.push(body);
        }
        bucket.add_to_manifest(STUDY, &entries).await.unwrap();
        (Arc::new(bucket), bodies)
    }

    fn settings(peer: Peer, scratch: PathBuf) -> SendSettings {
        SendSettings {
            peer,
            associations: 2,
            scratch,
        }
    }

    fn sorted(mut v: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
        v.sort();
        v
    }

    /// A selection of studies reads their manifests and asks for their
    /// blobs by key: it never lists the bucket (a blob no manifest names is
    /// not counted), and a blob gone from the bucket is reported missing.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_study_selection_reads_that_study_only() {
        let dir = tempfile::tempdir().unwrap();
        let (bucket, bodies) = bucket_with(dir.path(), 3, false).await;
        let blob = |b: &[u8]| {
            let h = hash_hex(&ObjectId::of(b));
            dir.path()
                .join("bucket")
                .join(pacs_mirror_agent::bucket::object_key(
                    &parse_hash(&h).unwrap(),
                ))
        };
        // A blob no manifest names.
        let stray = pacs_mirror_dicom::testing::dataset(SC, "1.2.3.4.5", "OTHER");
        let stray_key = blob(&stray);
        std::fs::create_dir_all(stray_key.parent().unwrap()).unwrap();
        std::fs::write(&stray_key, &stray).unwrap();
        let only = |uid: &str| Selection {
            studies: vec![uid.into()],
            ..Selection::default()
        };
        let everything = plan(&bucket, &Selection::default()).await.unwrap();
        assert_eq!(
            everything.unlisted_blobs,
            Some(1),
            "the full plan lists the bucket"
        );
        let one = plan(&bucket, &only(STUDY)).await.unwrap();
        assert_eq!(
            (one.studies, one.objects.len(), one.unlisted_blobs),
            (1, 3, None)
        );
        std::fs::remove_file(blob(&bodies[1])).unwrap();
        let one = plan(&bucket, &only(STUDY)).await.unwrap();
        assert_eq!(one.objects.len(), 2);
        assert_eq!(
            one.missing_blobs,
            vec![pacs_mirror_agent::bucket::object_key(&ObjectId::of(
                &bodies[1]
            ))]
        );
        // A study the bucket does not hold: the full plan explains.
        let e = plan(&bucket, &only("1.2.3")).await.unwrap_err();
        assert!(e.to_string().contains("1.2.3"), "{e}");
    }

    /// Small objects go through memory, one larger than [`MAX_IN_MEMORY`]
    /// through a scratch file; all arrive byte-exact. A blob whose bytes no
    /// longer hash to its key is reported corrupt and never sent. No
    /// scratch file is left.
    #[tokio::test(flavor = "multi_thread")]
    async fn restores_from_memory_and_files_byte_exact_and_never_sends_a_corrupt_blob() {
        let dir = tempfile::tempdir().unwrap();
        let (bucket, mut bodies) = bucket_with(dir.path(), 6, true).await;
        assert!(bodies[6].len() as u64 > MAX_IN_MEMORY);
        // Replace object 2's blob with another valid object's bytes.
        let victim = ObjectId::of(&bodies[2]);
        let blob = dir
            .path()
            .join("bucket")
            .join(pacs_mirror_agent::bucket::object_key(&victim));
        let other = std::fs::read(dir.path().join("files/3.dcm")).unwrap();
        std::fs::write(&blob, other).unwrap();
        bodies.remove(2);

        let out = dir.path().join("received");
        let (_scp, peer) = start_storescp(&["+B"], &out).await;
        let plan = plan(&bucket, &Selection::default()).await.unwrap();
        assert_eq!(plan.objects.len(), 7);
        let scratch = dir.path().join("scratch");
        let report = restore(
            bucket,
            plan,
            &settings(peer, scratch.clone()),
            Arc::new(|_| {}),
        )
        .await
        .unwrap();
        assert_eq!(report.stored, 6, "{report:?}");
        assert_eq!(report.corrupt.len(), 1, "{report:?}");
        assert_eq!(report.corrupt[0].blake3, hash_hex(&victim));
        assert!(report.failed.is_empty(), "{report:?}");
        assert_eq!(received_datasets(&out), sorted(bodies));
        let left: Vec<_> = walk(&scratch);
        assert!(left.is_empty(), "scratch files left: {left:?}");
    }

    /// With the PACS not up yet, the objects downloaded into memory are
    /// moved to scratch files (giving the memory back) and sent once a
    /// later association opens: all arrive byte-exact.
    #[tokio::test(flavor = "multi_thread")]
    async fn objects_in_memory_wait_in_scratch_files_for_a_late_pacs() {
        let dir = tempfile::tempdir().unwrap();
        let (bucket, bodies) = bucket_with(dir.path(), 5, false).await;
        let port = free_port();
        let peer = storescp_peer(port);
        let plan = plan(&bucket, &Selection::default()).await.unwrap();
        let scratch = dir.path().join("scratch");
        let running = tokio::spawn({
            let settings = settings(peer, scratch.clone());
            async move { restore(bucket, plan, &settings, Arc::new(|_| {})).await }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let out = dir.path().join("received");
        let (_scp, _) = start_storescp_on(&["+B"], &out, port).await;
        let report = running.await.unwrap().unwrap();
        assert_eq!(report.stored, 5, "{report:?}");
        assert_eq!(received_datasets(&out), sorted(bodies));
        assert!(walk(&scratch).is_empty());
    }

    /// Every file under `dir` (none if it is gone).
    fn walk(dir: &Path) -> Vec<PathBuf> {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        rd.flat_map(|e| {
            let p = e.unwrap().path();
            if p.is_dir() { walk(&p) } else { vec![p] }
        })
        .collect()
    }

    async fn refusal(bucket: &Bucket, selection: Selection) -> String {
        let e = plan(bucket, &selection).await.unwrap_err();
        assert!(
            matches!(e, RestoreError::Unmatched(_)) && e.is_mistake(),
            "{e:?}"
        );
        e.to_string()
    }

    /// A selection that finds nothing, or names a study the bucket does
    /// not hold as asked, is refused, saying what was asked and not found;
    /// what is there is still planned.
    #[tokio::test]
    async fn a_selection_that_finds_nothing_says_what_was_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let (bucket, _) = bucket_with(dir.path(), 2, false).await;
        fn studies(s: &[&str]) -> Selection {
            Selection {
                studies: s.iter().map(|s| s.to_string()).collect(),
                ..Selection::default()
            }
        }
        assert_eq!(
            refusal(&bucket, studies(&["1.2.3.4"])).await,
            "nothing selected: study 1.2.3.4 is not in the bucket (it holds 1 study)"
        );
        assert_eq!(
            refusal(&bucket, studies(&["1.2.3.4", STUDY, "5.6", "1.2.3.4"])).await,
            "not in the bucket as asked: study 1.2.3.4 is not in the bucket; study 5.6 is not in the bucket (it holds 1 study); nothing restored: correct the selection or leave that out"
        );
        let patient = |p: &str| Selection {
            patient_id: Some(p.into()),
            ..Selection::default()
        };
        assert_eq!(
            refusal(&bucket, patient("NOPE")).await,
            "nothing selected: patient \"NOPE\" has no study in the bucket (it holds 1 study)"
        );
        let since = |d: &str| Selection {
            since: Some(d.into()),
            ..Selection::default()
        };
        assert_eq!(
            refusal(&bucket, since("20270101")).await,
            "nothing selected: no study is dated on or after 2027-01-01: the latest is dated 2026-11-23 (it holds 1 study)"
        );
        assert_eq!(
            refusal(
                &bucket,
                Selection {
                    since: Some("20270101".into()),
                    ..patient("PID")
                }
            )
            .await,
            "nothing selected: no study of patient \"PID\" is dated on or after 2027-01-01: the latest is dated 2026-11-23 (it holds 1 study)"
        );
        assert_eq!(
            refusal(
                &bucket,
                Selection {
                    patient_id: Some("NOPE".into()),
                    ..studies(&[STUDY])
                }
            )
            .await,
            format!(
                "nothing selected: study {STUDY} is of patient \"PID\", not \"NOPE\" (it holds 1 study)"
            )
        );
        assert_eq!(
            refusal(
                &bucket,
                Selection {
                    since: Some("20270101".into()),
                    ..studies(&[STUDY])
                }
            )
            .await,
            format!(
                "nothing selected: study {STUDY} is dated 2026-11-23, before 2027-01-01 (it holds 1 study)"
            )
        );
        for ok in [
            studies(&[STUDY]),
            patient(" PID "),
            since("20261123"),
            Selection::default(),
        ] {
            let p = plan(&bucket, &ok).await.unwrap();
            assert_eq!((p.studies, p.objects.len()), (1, 2), "{ok:?}");
            assert_eq!(p.layout, Some(Layout::Undescribed));
        }

        // A new bucket, its descriptor only: nothing to restore.
        let new = Bucket::open(&BucketSettings {
            url: format!("file://{}", dir.path().join("new").display()),
            options: vec![],
            timeout: Duration::from_secs(5),
        })
        .unwrap();
        new.ensure_descriptor("site").await.unwrap();
        assert_eq!(
            refusal(&new, Selection::default()).await,
            "nothing selected: the bucket holds no study and no object yet"
        );
        // Not a bucket at all.
        let empty = Bucket::open(&BucketSettings {
            url: format!("file://{}", dir.path().join("empty").display()),
            options: vec![],
            timeout: Duration::from_secs(5),
        })
        .unwrap();
        let e = plan(&empty, &Selection::default()).await.unwrap_err();
        assert!(
            matches!(e, RestoreError::NotABucket(_)) && e.is_mistake(),
            "{e:?}"
        );
        assert!(
            e.to_string()
                .ends_with(": holds nothing (no pacs-mirror bucket there: check the URL)"),
            "{e}"
        );
    }

    #[test]
    fn dates() {
        assert_eq!(parse_date("2026-11-23").unwrap(), "20261123");
        assert_eq!(parse_date("20261123").unwrap(), "20261123");
        for bad in ["2026-13-01", "2026-1-1", "yesterday", "202611230", ""] {
            assert!(parse_date(bad).is_err(), "{bad}");
        }
        assert_eq!(yyyymmdd_of_ms(0), "19700101");
        assert_eq!(yyyymmdd_of_ms(1_795_392_000_000), "20261123");
        assert_eq!(yyyymmdd_of_ms(951_782_400_000), "20000229");
    }

    #[test]
    fn selection() {
        use pacs_mirror_agent::bucket::manifest::entry;
        let mut m = StudyManifest::new("1.2.3");
        m.merge(&[entry("1.2.3.1", "1.1", "aa")]);
        assert!(Selection::default().wants(&m));
        let by_study = Selection {
            studies: vec!["9.9".into()],
            ..Selection::default()
        };
        assert!(!by_study.wants(&m));
        let by_patient = Selection {
            patient_id: Some("PID".into()),
            ..Selection::default()
        };
        assert!(by_patient.wants(&m));
        let since = |d: &str| Selection {
            since: Some(d.into()),
            ..Selection::default()
        };
        assert!(since("20260101").wants(&m));
        assert!(!since("20260102").wants(&m));
        m.study_date.clear();
        // No Study Date: the day received (1970-01-01 in the fixture).
        assert!(since("19700101").wants(&m));
        assert!(!since("19700102").wants(&m));
    }
}
