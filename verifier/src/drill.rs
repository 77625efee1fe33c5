//! Restore drills: retrieve studies back from a target the way a recovery
//! would, compare every instance with the index, and time it.
//!
//! # What a drill does
//! 1. Picks studies from the index: `random_studies` at random (seeded),
//!    one rotating slice of `rotation` (drill number n takes the studies
//!    whose UID hash is n mod `rotation`: over `rotation` consecutive drills
//!    every study is drilled at least once), and the newest study.
//! 2. For each study, retrieves it from the target into a scratch directory
//!    (never the spool): a DICOM target by C-GET of the whole study, or by
//!    C-MOVE of the whole study to the local drill receiver AE (the
//!    `[[drill]] retrieve` setting; the objects arrive on the mirror's own
//!    associations, through the agent's drill inbox,
//!    [`pacs_mirror_agent::scp::inbox`]); an object store by GET of the study
//!    manifest and then every blob. Only the retrieval differs: the
//!    comparison and the timing below are the same for every method.
//! 3. Compares each retrieved instance with what the index says the target
//!    was given (objects delivered to it; objects still queued are counted,
//!    not judged):
//!    - **MATCH**: the data set bytes hash to the stored blake3;
//!    - **COERCED**: different bytes, but the SOP UIDs and Pixel Data are
//!      identical to the local copy (the attributes that differ are listed);
//!    - **MISMATCH**: different bytes otherwise;
//!    - **MISSING**: delivered, not retrieved;
//!    - **EXTRA**: retrieved, not in the index for this study.
//! 4. Times the recovery: time to the first instance, to the whole study,
//!    and MB/s, per study; the slowest study is compared with the recovery
//!    time objective.
//!
//! An unreachable target is a **failed** drill, never a skipped one. The
//! result is kept in the index's drill history.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::qr::{self, QrAssociation, QrOptions, RetrieveTarget, Service, StorageContext};
use futures::StreamExt;
use pacs_mirror_agent::bucket::Bucket;
use pacs_mirror_agent::scp::inbox::{DrillInbox, Expectation};
use pacs_mirror_dicom::scu::Peer;
use pacs_mirror_store::index::{
    Index, IndexError, InstanceRecord, ObjectId, hash_hex, parse_hash, tally,
};
use pacs_mirror_store::spool::Spool;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// Errors that stop a drill before it starts (a failing target is a result,
/// not an error).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DrillError {
    /// The index could not be read.
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
    /// A study was named that the index does not hold.
    #[error("the index holds no study {0}")]
    UnknownStudy(String),
}

/// How to reach a target.
#[derive(Clone)]
pub enum DrillTarget {
    /// A DICOM peer, retrieved with C-GET.
    Dicom(Peer),
    /// A DICOM peer, retrieved with C-MOVE to a local drill receiver.
    DicomMove(MoveTarget),
    /// An object store.
    Bucket(Arc<Bucket>),
}

/// A C-MOVE drill's peer and destination.
#[derive(Clone)]
pub struct MoveTarget {
    /// The mirror (our calling AE is the Move Originator).
    pub peer: Peer,
    /// The Move Destination: a local AE with `drill_receiver = true`.
    pub destination: String,
    /// The AE titles the mirror calls the destination from (its remote
    /// device's AEs); empty: any the receiver allows.
    pub callers: Vec<String>,
    /// The inbox the destination's C-STOREs go to (the agent's, or the one
    /// the `drill` command serves).
    pub inbox: Arc<DrillInbox>,
}

impl DrillTarget {
    /// How it is retrieved, as shown in reports: `c-get`, `c-move` or
    /// `object-store`.
    pub fn retrieve(&self) -> &'static str {
        match self {
            DrillTarget::Dicom(_) => "c-get",
            DrillTarget::DicomMove(_) => "c-move",
            DrillTarget::Bucket(_) => "object-store",
        }
    }
}

/// What to drill.
#[derive(Debug, Clone)]
pub struct DrillSettings {
    /// The target's name.
    pub target: String,
    /// Studies at random.
    pub random_studies: u32,
    /// Rotation slices (0: none).
    pub rotation: u32,
    /// The newest study too.
    pub newest_study: bool,
    /// Only these studies (on demand), instead of the choice above.
    pub studies: Vec<String>,
    /// Seed of the random choice; None: the clock.
    pub seed: Option<u64>,
    /// Recovery time objective, seconds.
    pub rto_secs: Option<u64>,
    /// Per request.
    pub timeout: Duration,
}

/// The verdict on one instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Verdict {
    /// Bytes identical.
    Match,
    /// Header attributes changed; SOP UIDs and pixel data identical.
    Coerced,
    /// Different data.
    Mismatch,
    /// Not retrieved.
    Missing,
    /// Retrieved, not expected.
    Extra,
}

/// One instance's finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceFinding {
    /// SOP Instance UID.
    pub sop_instance_uid: String,
    /// The verdict.
    pub verdict: Verdict,
    /// blake3 of the data set the index holds (empty for EXTRA).
    pub expected_blake3: String,
    /// blake3 of what came back (empty for MISSING).
    pub found_blake3: String,
    /// The attributes that differ (COERCED), or why (MISMATCH).
    pub detail: String,
}

/// One study's result.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StudyResult {
    /// Study Instance UID.
    pub study_instance_uid: String,
    /// Why it was picked (random, rotation n/m, newest, requested).
    pub picked: Vec<String>,
    /// Instances delivered to the target (expected back).
    pub expected: usize,
    /// Instances still queued for the target (not judged).
    pub not_yet_delivered: usize,
    /// Instances retrieved.
    pub retrieved: usize,
    /// Seconds from the request to the first complete instance.
    pub first_instance_secs: Option<f64>,
    /// Seconds for the whole study.
    pub study_secs: f64,
    /// Bytes retrieved.
    pub bytes: u64,
    /// Every finding that is not a MATCH, and one MATCH count.
    pub findings: Vec<InstanceFinding>,
    /// Counts by verdict.
    pub counts: BTreeMap<Verdict, usize>,
    /// Why the study could not be retrieved at all.
    pub error: Option<String>,
}

/// A drill's result, as kept in the history.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DrillReport {
    /// The target.
    pub target: String,
    /// "dicom" or "object_store".
    pub kind: String,
    /// How it was retrieved: "c-get", "c-move" or "object-store" (empty in
    /// reports of versions that only had C-GET).
    #[serde(default)]
    pub retrieve: String,
    /// Drill number of this target (for the rotation).
    pub number: u64,
    /// Start (Unix ms).
    pub started_at_ms: u64,
    /// Seconds in all.
    pub seconds: f64,
    /// Per study.
    pub studies: Vec<StudyResult>,
    /// Counts by verdict over all studies.
    pub counts: BTreeMap<Verdict, usize>,
    /// The slowest study's time, seconds: the measured recovery time.
    pub recovery_secs: f64,
    /// Bytes per second over the whole drill.
    pub mb_per_s: f64,
    /// The objective, if set.
    pub rto_secs: Option<u64>,
    /// Whether the recovery time exceeded the objective.
    pub rto_exceeded: bool,
    /// Passed: every study retrieved, no MISMATCH or MISSING, objective met.
    pub ok: bool,
    /// Why it failed, in one line.
    pub failure: Option<String>,
    /// Instance versions held with no (usable) Study Instance UID: a drill
    /// retrieves by study and cannot reach them (reported, never skipped
    /// silently; `pacs-mirror findings list` names them).
    #[serde(default)]
    pub without_study: u64,
}

impl DrillReport {
    /// What the on-call person does next after a drill that did not pass.
    pub fn next_step(&self) -> String {
        let r = self;
        let c = |v| r.counts.get(&v).copied().unwrap_or(0);
        let t = &r.target;
        let mut steps = Vec::new();
        if c(Verdict::Missing) > 0 {
            steps.push(if r.kind == "dicom" {
                format!(
                    "`pacs-mirror failover check --target {t} --repair` queues what the mirror lacks again"
                )
            } else {
                format!(
                    "`pacs-mirror resync --target {t}` (agent stopped) sends every object to the bucket again"
                )
            });
        }
        if c(Verdict::Mismatch) + c(Verdict::Coerced) > 0 {
            steps.push(format!(
                "`pacs-mirror drills --target {t} --json` names the instances whose copy differs"
            ));
        }
        if r.failure.is_some() && steps.is_empty() {
            steps.push(format!(
                "check that the target answers (`pacs-mirror status`, `pacs-mirror echo` of its AE), then `pacs-mirror drill --target {t}` again"
            ));
        }
        if r.rto_exceeded {
            steps.push(
                "a restore would take longer than its objective: check the link and the target's load"
                    .into(),
            );
        }
        format!(
            "{}; next: {}; runbook ops/runbooks/drill-failed.md",
            r.summary(),
            steps.join("; ")
        )
    }

    /// One line for a person on call.
    pub fn summary(&self) -> String {
        let c = |v| self.counts.get(&v).copied().unwrap_or(0);
        let verdict = if self.ok { "passed" } else { "FAILED" };
        let how = if self.retrieve.is_empty() {
            String::new()
        } else {
            format!(" ({})", self.retrieve)
        };
        let mut s = format!(
            "drill #{} of {}{how} {verdict}: {} study(ies), {} MATCH, {} COERCED, {} MISMATCH, {} MISSING, {} EXTRA; recovery {:.1} s",
            self.number,
            self.target,
            self.studies.len(),
            c(Verdict::Match),
            c(Verdict::Coerced),
            c(Verdict::Mismatch),
            c(Verdict::Missing),
            c(Verdict::Extra),
            self.recovery_secs
        );
        if let Some(rto) = self.rto_secs {
            s.push_str(&format!(
                " (objective {rto} s{})",
                if self.rto_exceeded { ", EXCEEDED" } else { "" }
            ));
        }
        if let Some(f) = &self.failure {
            s.push_str(&format!(": {f}"));
        }
        if self.without_study > 0 {
            s.push_str(&format!(
                "; {} instance version(s) without a Study Instance UID cannot be drilled by study (`pacs-mirror findings list`)",
                self.without_study
            ));
        }
        s
    }
}

/// Pick the studies of drill number `number` (1-based). Costs what it
/// picks, never a listing of the archive: a requested study is looked up, a
/// random one is the first study at or after a random point of the index's
/// hashed study order ([`tally::study_key`]; the next one when it was picked
/// already), a rotation slice is one range of that order, the newest is one
/// row kept at ingest.
pub fn pick_studies(
    index: &Index,
    settings: &DrillSettings,
    number: u64,
) -> Result<Vec<(String, Vec<String>)>, DrillError> {
    let mut picked: BTreeMap<String, Vec<String>> = BTreeMap::new();
    if !settings.studies.is_empty() {
        for s in &settings.studies {
            if !index.has_study(s)? {
                return Err(DrillError::UnknownStudy(s.clone()));
            }
            picked
                .entry(s.clone())
                .or_default()
                .push("requested".into());
        }
        return Ok(picked.into_iter().collect());
    }
    let seed = settings
        .seed
        .map_or_else(pacs_mirror_agent::unix_ms, |s| s.wrapping_add(number));
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for _ in 0..settings.random_studies {
        let from: u64 = rng.random();
        // As many as were picked, plus one: one of them is new, if the
        // archive holds that many.
        let candidates = index.studies_from(from, picked.len() + 1)?;
        let mut found = None;
        for (_, uid) in candidates {
            if !picked.contains_key(&uid) && index.has_study(&uid)? {
                found = Some(uid);
                break;
            }
        }
        match found {
            Some(uid) => picked.entry(uid).or_default().push("random".into()),
            None => break,
        }
    }
    if settings.rotation > 0 {
        let m = u64::from(settings.rotation);
        let slice = (number.saturating_sub(1)) % m;
        let (start, end) = rotation_range(slice, m);
        let mut err = None;
        index.studies_in(start, end, &mut |uid| match index.has_study(&uid) {
            Ok(true) => {
                picked
                    .entry(uid)
                    .or_default()
                    .push(format!("rotation {}/{m}", slice + 1));
                true
            }
            Ok(false) => true,
            Err(e) => {
                err = Some(e);
                false
            }
        })?;
        if let Some(e) = err {
            return Err(e.into());
        }
    }
    if settings.newest_study
        && let Some((_, uid)) = index.newest_study()?
        && index.has_study(&uid)?
    {
        picked.entry(uid).or_default().push("newest".into());
    }
    Ok(picked.into_iter().collect())
}

/// Which rotation slice (of `m`) a study is in: slice `i` holds the studies
/// whose [`tally::study_key`] is in the `i`-th of `m` equal ranges of `u64`.
pub fn rotation_slice(study_instance_uid: &str, m: u64) -> u64 {
    ((u128::from(tally::study_key(study_instance_uid)) * u128::from(m.max(1))) >> 64) as u64
}

/// The [`tally::study_key`] range of rotation slice `slice` of `m`: from
/// its first key to the next slice's (`None`: to the end).
fn rotation_range(slice: u64, m: u64) -> (u64, Option<u64>) {
    let m = u128::from(m.max(1));
    let first = |i: u128| u64::try_from((i << 64).div_ceil(m)).ok();
    (
        first(u128::from(slice)).unwrap_or(u64::MAX),
        first(u128::from(slice) + 1),
    )
}

/// What came back of one instance.
struct Retrieved {
    sop_instance_uid: String,
    blake3: ObjectId,
    path: PathBuf,
    bytes: u64,
    done_after: Duration,
}

/// Run one drill and keep its result in the history.
pub async fn run_drill(
    index: &Index,
    spool: &Spool,
    target: &DrillTarget,
    settings: &DrillSettings,
    scratch: &Path,
) -> Result<DrillReport, DrillError> {
    let number = index.next_count(&format!("drill/{}", settings.target))?;
    let started_at_ms = pacs_mirror_agent::unix_ms();
    let start = Instant::now();
    let picked = pick_studies(index, settings, number)?;
    let without_study = index.without_study()?;
    let mut report = DrillReport {
        without_study,
        target: settings.target.clone(),
        kind: match target {
            DrillTarget::Dicom(_) | DrillTarget::DicomMove(_) => "dicom".into(),
            DrillTarget::Bucket(_) => "object_store".into(),
        },
        retrieve: target.retrieve().into(),
        number,
        started_at_ms,
        rto_secs: settings.rto_secs,
        ..DrillReport::default()
    };
    for (study, why) in picked {
        let dir = scratch.join(format!("drill-{number}-{}", report.studies.len()));
        std::fs::create_dir_all(&dir).map_err(|source| DrillError::Scratch {
            path: dir.display().to_string(),
            source,
        })?;
        let result = drill_study(index, spool, target, settings, &study, why, &dir).await;
        let _ = std::fs::remove_dir_all(&dir);
        report.studies.push(result?);
    }
    let mut bytes = 0;
    for s in &report.studies {
        bytes += s.bytes;
        report.recovery_secs = report.recovery_secs.max(s.study_secs);
        for (v, n) in &s.counts {
            *report.counts.entry(*v).or_default() += n;
        }
    }
    report.seconds = start.elapsed().as_secs_f64();
    report.mb_per_s = bytes as f64 / 1e6 / report.seconds.max(1e-9);
    report.rto_exceeded = settings
        .rto_secs
        .is_some_and(|rto| report.recovery_secs > rto as f64);
    let bad = |v| report.counts.get(&v).copied().unwrap_or(0);
    report.failure = if report.studies.is_empty() {
        Some("the index holds no study to drill".into())
    } else if let Some(e) = report.studies.iter().find_map(|s| s.error.clone()) {
        Some(e)
    } else if bad(Verdict::Mismatch) + bad(Verdict::Missing) > 0 {
        Some(format!(
            "{} instance(s) MISMATCH, {} MISSING",
            bad(Verdict::Mismatch),
            bad(Verdict::Missing)
        ))
    } else if report.rto_exceeded {
        Some(format!(
            "recovery took {:.1} s, over the objective of {} s",
            report.recovery_secs,
            settings.rto_secs.unwrap_or(0)
        ))
    } else {
        None
    };
    report.ok = report.failure.is_none();
    index.put_drill(&settings.target, started_at_ms, &report)?;
    index.flush()?;
    Ok(report)
}

async fn drill_study(
    index: &Index,
    spool: &Spool,
    target: &DrillTarget,
    settings: &DrillSettings,
    study: &str,
    picked: Vec<String>,
    dir: &Path,
) -> Result<StudyResult, DrillError> {
    let mut result = StudyResult {
        study_instance_uid: study.into(),
        picked,
        ..StudyResult::default()
    };
    // What the target was given, by SOP instance (several versions: any).
    let mut expected: HashMap<String, Vec<InstanceRecord>> = HashMap::new();
    for r in index.study_instances(study)? {
        let hash = parse_hash(&r.blake3)?;
        if index.delivery(&settings.target, &hash)?.is_some() {
            expected
                .entry(r.sop_instance_uid.clone())
                .or_default()
                .push(r);
        } else {
            result.not_yet_delivered += 1;
        }
    }
    result.expected = expected.len();
    let start = Instant::now();
    let retrieved = match target {
        DrillTarget::Dicom(peer) => retrieve_dicom(peer, study, &expected, settings, dir).await,
        DrillTarget::DicomMove(m) => retrieve_move(m, study, settings, dir).await,
        DrillTarget::Bucket(bucket) => retrieve_bucket(bucket, study, dir).await,
    };
    result.study_secs = start.elapsed().as_secs_f64();
    let retrieved = match retrieved {
        Ok(r) => r,
        Err(e) => {
            result.error = Some(format!("study {study}: {e}"));
            return Ok(result);
        }
    };
    result.retrieved = retrieved.len();
    result.bytes = retrieved.iter().map(|r| r.bytes).sum();
    result.first_instance_secs = retrieved
        .iter()
        .map(|r| r.done_after.as_secs_f64())
        .min_by(f64::total_cmp);
    let mut seen = HashSet::new();
    for got in &retrieved {
        seen.insert(got.sop_instance_uid.clone());
        let finding = match expected.get(&got.sop_instance_uid) {
            None => InstanceFinding {
                sop_instance_uid: got.sop_instance_uid.clone(),
                verdict: Verdict::Extra,
                expected_blake3: String::new(),
                found_blake3: hash_hex(&got.blake3),
                detail: "not in the index for this study".into(),
            },
            Some(versions) => judge(spool, versions, got),
        };
        push(&mut result, finding);
    }
    let mut missing: Vec<&String> = expected.keys().filter(|k| !seen.contains(*k)).collect();
    missing.sort();
    for uid in missing {
        let expected_blake3 = expected[uid]
            .last()
            .map(|r| r.blake3.clone())
            .unwrap_or_default();
        push(
            &mut result,
            InstanceFinding {
                sop_instance_uid: uid.clone(),
                verdict: Verdict::Missing,
                expected_blake3,
                found_blake3: String::new(),
                detail: "delivered to the target, not retrieved".into(),
            },
        );
    }
    Ok(result)
}

fn push(result: &mut StudyResult, f: InstanceFinding) {
    *result.counts.entry(f.verdict).or_default() += 1;
    if f.verdict != Verdict::Match {
        result.findings.push(f);
    }
}

/// MATCH, COERCED or MISMATCH of one retrieved instance.
fn judge(spool: &Spool, versions: &[InstanceRecord], got: &Retrieved) -> InstanceFinding {
    let found = hash_hex(&got.blake3);
    let mut f = InstanceFinding {
        sop_instance_uid: got.sop_instance_uid.clone(),
        verdict: Verdict::Match,
        expected_blake3: versions
            .last()
            .map(|r| r.blake3.clone())
            .unwrap_or_default(),
        found_blake3: found.clone(),
        detail: String::new(),
    };
    if let Some(v) = versions.iter().find(|v| v.blake3 == found) {
        f.expected_blake3 = v.blake3.clone();
        return f;
    }
    // Compare attributes with the newest local copy still in the spool.
    for v in versions.iter().rev() {
        let Ok(hash) = parse_hash(&v.blake3) else {
            continue;
        };
        let local = spool.object_path(&hash);
        if !local.exists() {
            continue;
        }
        f.expected_blake3 = v.blake3.clone();
        match compare_attributes(&local, &got.path) {
            Ok(c) => {
                f.verdict = c.0;
                f.detail = c.1;
            }
            Err(e) => {
                f.verdict = Verdict::Mismatch;
                f.detail = format!("different bytes; the retrieved copy does not parse: {e}");
            }
        }
        return f;
    }
    f.verdict = Verdict::Mismatch;
    f.detail = "different bytes (no local copy left to compare attributes)".into();
    f
}

/// Why two copies cannot be compared attribute by attribute.
#[derive(Debug, thiserror::Error)]
enum Unparsable {
    /// The structure walk refused it (cut short, nested too deep…).
    #[error(transparent)]
    Structure(#[from] pacs_mirror_dicom::part10::Part10Error),
    /// dicom-object could not read it.
    #[error(transparent)]
    Object(#[from] dicom_object::ReadError),
}

/// Why a study could not be retrieved from a target at all (a drill error,
/// not a verdict per instance).
#[derive(Debug, thiserror::Error)]
enum RetrieveError {
    /// The C-GET, C-MOVE or its association failed.
    #[error("{service}: {source}")]
    Qr {
        /// "C-GET" or "C-MOVE".
        service: &'static str,
        /// What failed.
        #[source]
        source: qr::QrError,
    },
    /// The peer answered a failure and nothing arrived.
    #[error("{service} answered {status}{comment}{hint}")]
    Refused {
        /// "C-GET" or "C-MOVE".
        service: &'static str,
        /// The final status.
        status: pacs_mirror_dicom::dimse::Status,
        /// " (its Error Comment)", or empty.
        comment: String,
        /// What the operator may check, or empty.
        hint: String,
    },
    /// The study manifest could not be read.
    #[error("reading the manifest: {0}")]
    Manifest(#[source] pacs_mirror_agent::bucket::BucketError),
    /// A manifest entry's hash is not a blake3 hash.
    #[error("manifest entry {sop}: bad hash {hash:?}")]
    BadHash {
        /// The entry's SOP Instance UID.
        sop: String,
        /// What it says.
        hash: String,
    },
    /// An object GET failed (other than not found).
    #[error("GET {key}: {source}")]
    Get {
        /// The object key.
        key: String,
        /// What failed.
        #[source]
        source: pacs_mirror_agent::bucket::BucketError,
    },
}

/// " (comment)" for a final response's Error Comment, or empty.
fn comment_of(comment: Option<&str>) -> String {
    comment.map(|c| format!(" ({c})")).unwrap_or_default()
}

/// COERCED (with the differing tags) when SOP UIDs and Pixel Data are
/// identical, else MISMATCH with the reason.
fn compare_attributes(local: &Path, retrieved: &Path) -> Result<(Verdict, String), Unparsable> {
    use dicom_dictionary_std::tags;
    // The retrieved copy comes from the target: walked before dicom-object
    // parses it (which allocates declared lengths and recurses into nested
    // sequences: a hostile or broken copy must not take the agent down).
    for p in [local, retrieved] {
        pacs_mirror_dicom::part10::check_whole_data_set(p)?;
    }
    let a = dicom_object::open_file(local)?;
    let b = dicom_object::open_file(retrieved)?;
    let tsa = a
        .meta()
        .transfer_syntax()
        .trim_end_matches('\0')
        .to_string();
    let tsb = b
        .meta()
        .transfer_syntax()
        .trim_end_matches('\0')
        .to_string();
    for (tag, name) in [
        (tags::SOP_INSTANCE_UID, "SOP Instance UID"),
        (tags::SOP_CLASS_UID, "SOP Class UID"),
        (tags::STUDY_INSTANCE_UID, "Study Instance UID"),
        (tags::SERIES_INSTANCE_UID, "Series Instance UID"),
    ] {
        let va = a.element(tag).ok().and_then(|e| {
            e.to_str()
                .ok()
                .map(|s| s.trim_end_matches('\0').trim().to_string())
        });
        let vb = b.element(tag).ok().and_then(|e| {
            e.to_str()
                .ok()
                .map(|s| s.trim_end_matches('\0').trim().to_string())
        });
        if va != vb {
            return Ok((
                Verdict::Mismatch,
                format!("{name} differs: {va:?} vs {vb:?}"),
            ));
        }
    }
    let pa = a.element(tags::PIXEL_DATA).ok().map(|e| e.value().clone());
    let pb = b.element(tags::PIXEL_DATA).ok().map(|e| e.value().clone());
    if pa != pb {
        let why = if tsa == tsb {
            "Pixel Data differs".to_string()
        } else {
            format!("Pixel Data differs (transfer syntax {tsa} became {tsb})")
        };
        return Ok((Verdict::Mismatch, why));
    }
    let mut differing = Vec::new();
    let tags_a: HashSet<_> = a.iter().map(|e| e.header().tag).collect();
    let tags_b: HashSet<_> = b.iter().map(|e| e.header().tag).collect();
    let mut all: Vec<_> = tags_a.union(&tags_b).copied().collect();
    all.sort();
    for tag in all {
        let ea = a.element(tag).ok().map(|e| e.value().clone());
        let eb = b.element(tag).ok().map(|e| e.value().clone());
        if ea != eb {
            differing.push(format!("({:04X},{:04X})", tag.group(), tag.element()));
        }
    }
    if tsa != tsb {
        differing.push(format!("transfer syntax {tsa} -> {tsb}"));
    }
    Ok((
        Verdict::Coerced,
        format!("attributes changed: {}", differing.join(" ")),
    ))
}

async fn retrieve_dicom(
    peer: &Peer,
    study: &str,
    expected: &HashMap<String, Vec<InstanceRecord>>,
    settings: &DrillSettings,
    dir: &Path,
) -> Result<Vec<Retrieved>, RetrieveError> {
    // One context per (class, syntax) held, then common ones while room.
    let contexts = qr::storage_contexts_with(expected.values().flatten().map(|r| StorageContext {
        sop_class_uid: r.sop_class_uid.clone(),
        transfer_syntax_uid: r.transfer_syntax_uid.clone(),
    }));
    let mut peer = peer.clone();
    peer.timeout = settings.timeout;
    // The copies are hashed as they arrive and removed after the
    // comparison: no fsync (what is timed is the target's recovery, not
    // this disk's flushes).
    let options = QrOptions {
        fsync: false,
        ..QrOptions::default()
    };
    let outcome = qr::get(
        &peer,
        &RetrieveTarget::study(study),
        &contexts,
        dir,
        &options,
    )
    .await
    .map_err(|source| RetrieveError::Qr {
        service: "C-GET",
        source,
    })?;
    if outcome.status.is_failure() && outcome.instances.is_empty() {
        return Err(RetrieveError::Refused {
            service: "C-GET",
            status: outcome.status,
            comment: comment_of(outcome.error_comment.as_deref()),
            hint: String::new(),
        });
    }
    Ok(outcome
        .instances
        .into_iter()
        .map(|i| Retrieved {
            sop_instance_uid: i.sop_instance_uid,
            blake3: pacs_mirror_store::index::ObjectId(i.blake3),
            path: i.path,
            bytes: i.dataset_bytes,
            done_after: i.last_byte_after,
        })
        .collect())
}

/// C-MOVE the study to the drill receiver, then collect what the inbox
/// hands over: until the final C-MOVE response has come AND as many objects
/// as it counts completed (and warning) sub-operations have arrived — the
/// mirror's C-STORE associations may end just before or just after its final
/// response — or the drill's timeout has passed since the final response.
async fn retrieve_move(
    m: &MoveTarget,
    study: &str,
    settings: &DrillSettings,
    dir: &Path,
) -> Result<Vec<Retrieved>, RetrieveError> {
    let mut peer = m.peer.clone();
    peer.timeout = settings.timeout;
    // Registered before the request: the first C-STORE may come at once.
    let mut expecting = m.inbox.expect(Expectation {
        study_instance_uid: study.to_string(),
        originator_ae: peer.calling_ae.clone(),
        callers: m.callers.clone(),
        dir: dir.to_path_buf(),
    });
    let qr_error = |source| RetrieveError::Qr {
        service: "C-MOVE",
        source,
    };
    let mut association = QrAssociation::connect(&peer, &[Service::Move])
        .await
        .map_err(qr_error)?;
    let start = Instant::now();
    let outcome = association
        .move_to(
            &RetrieveTarget::study(study),
            &m.destination,
            &QrOptions::default(),
        )
        .await;
    association.release().await;
    let outcome = outcome.map_err(qr_error)?;
    let sub = outcome.sub_operations;
    let want = usize::from(sub.completed) + usize::from(sub.warning);
    let mut arrivals = Vec::new();
    let deadline = tokio::time::Instant::now() + settings.timeout;
    loop {
        while let Some(a) = expecting.try_recv() {
            arrivals.push(a);
        }
        if arrivals.len() >= want {
            break;
        }
        match tokio::time::timeout_at(deadline, expecting.recv()).await {
            Ok(Some(a)) => arrivals.push(a),
            Ok(None) | Err(_) => break,
        }
    }
    if arrivals.len() < want {
        tracing::warn!(
            study,
            arrived = arrivals.len(),
            completed = want,
            "fewer objects arrived at the drill receiver than the mirror reports stored"
        );
    }
    // Unregister: anything later is refused (and removed).
    drop(expecting);
    if outcome.status.is_failure() && arrivals.is_empty() {
        let hint = if outcome.status == pacs_mirror_dicom::dimse::Status::MOVE_DESTINATION_UNKNOWN {
            format!(
                "; the mirror does not know the move destination {}: register it there (AE title, this host, its port)",
                m.destination
            )
        } else if sub.failed > 0 {
            format!(
                "; {} sub-operation(s) failed: can the mirror reach {} (host and port it has for it), and may it call it (allowed_calling_aes)?",
                sub.failed, m.destination
            )
        } else {
            String::new()
        };
        return Err(RetrieveError::Refused {
            service: "C-MOVE",
            status: outcome.status,
            comment: comment_of(outcome.error_comment.as_deref()),
            hint,
        });
    }
    Ok(arrivals
        .into_iter()
        .map(|a| Retrieved {
            sop_instance_uid: a.sop_instance_uid,
            blake3: pacs_mirror_store::index::ObjectId(a.blake3),
            path: a.path,
            bytes: a.dataset_bytes,
            done_after: a.arrived_at.saturating_duration_since(start),
        })
        .collect())
}

async fn retrieve_bucket(
    bucket: &Bucket,
    study: &str,
    dir: &Path,
) -> Result<Vec<Retrieved>, RetrieveError> {
    let start = Instant::now();
    let manifest = bucket
        .study_manifest(study)
        .await
        .map_err(RetrieveError::Manifest)?;
    let Some(manifest) = manifest else {
        return Ok(Vec::new());
    };
    let jobs: Vec<(usize, String, String)> = manifest
        .instances
        .iter()
        .enumerate()
        .map(|(i, e)| {
            (
                i,
                e.record.sop_instance_uid.clone(),
                e.record.blake3.clone(),
            )
        })
        .collect();
    let results: Vec<Result<Option<Retrieved>, RetrieveError>> = futures::stream::iter(jobs)
        .map(|(i, sop, hex)| async move {
            let Ok(hash) = parse_hash(&hex) else {
                return Err(RetrieveError::BadHash { sop, hash: hex });
            };
            let path = dir.join(format!("{i}.dcm"));
            match bucket.download(&hash, &path).await {
                Ok(h) => Ok(Some(Retrieved {
                    sop_instance_uid: sop,
                    blake3: pacs_mirror_store::index::ObjectId(h.dataset),
                    path,
                    bytes: h.file_bytes,
                    done_after: start.elapsed(),
                })),
                // A blob gone from the bucket: MISSING.
                Err(e) if e.is_not_found() => Ok(None),
                Err(source) => Err(RetrieveError::Get {
                    key: pacs_mirror_agent::bucket::object_key(&hash),
                    source,
                }),
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let mut out = Vec::new();
    for r in results {
        if let Some(got) = r? {
            out.push(got);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pacs_mirror_store::index::MemKv;

    fn index_with_studies(n: usize) -> Index {
        let idx = Index::new(Arc::new(MemKv::default()));
        for i in 0..n {
            let hash = pacs_mirror_store::index::ObjectId::of(format!("{i}").as_bytes());
            let rec = InstanceRecord {
                sop_instance_uid: format!("1.2.3.{i}.1"),
                sop_class_uid: "1.2".into(),
                transfer_syntax_uid: "1.2.840.10008.1.2.1".into(),
                blake3: hash_hex(&hash),
                dataset_bytes: 1,
                file_bytes: 2,
                patient_id: "P".into(),
                study_instance_uid: format!("1.2.3.{i}"),
                series_instance_uid: format!("1.2.3.{i}.9"),
                calling_ae: "A".into(),
                source_ip: "127.0.0.1".into(),
                received_at_ms: i as u64,
                study_date: String::new(),
                modality: String::new(),
                findings: Vec::new(),
            };
            idx.commit_instance(&rec, &hash, &[], 1).unwrap();
        }
        idx
    }

    fn settings(random: u32, rotation: u32, newest: bool) -> DrillSettings {
        DrillSettings {
            target: "t".into(),
            random_studies: random,
            rotation,
            newest_study: newest,
            studies: vec![],
            seed: Some(42),
            rto_secs: None,
            timeout: Duration::from_secs(5),
        }
    }

    /// A Part-10 file (Explicit VR LE unless `implicit`) of one CT instance,
    /// with `patient` as Patient's Name and `pixel` as every pixel byte.
    fn instance(
        dir: &Path,
        name: &str,
        sop: &str,
        patient: &str,
        pixel: u8,
        implicit: bool,
    ) -> PathBuf {
        use dicom_core::{DataElement, PrimitiveValue, VR};
        use dicom_dictionary_std::tags;
        let ct = "1.2.840.10008.5.1.4.1.1.2";
        let mut obj = dicom_object::InMemDicomObject::new_empty();
        for (tag, vr, v) in [
            (tags::SOP_CLASS_UID, VR::UI, ct),
            (tags::SOP_INSTANCE_UID, VR::UI, sop),
            (tags::PATIENT_NAME, VR::PN, patient),
            (tags::STUDY_INSTANCE_UID, VR::UI, "1.2.3"),
            (tags::SERIES_INSTANCE_UID, VR::UI, "1.2.3.1"),
        ] {
            obj.put(DataElement::new(tag, vr, PrimitiveValue::from(v)));
        }
        obj.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::U8(vec![pixel; 64].into()),
        ));
        let ts = if implicit {
            "1.2.840.10008.1.2"
        } else {
            "1.2.840.10008.1.2.1"
        };
        let file = obj
            .with_meta(
                dicom_object::FileMetaTableBuilder::new()
                    .transfer_syntax(ts)
                    .media_storage_sop_class_uid(ct)
                    .media_storage_sop_instance_uid(sop),
            )
            .unwrap();
        let path = dir.join(name);
        file.write_to_file(&path).unwrap();
        path
    }

    /// T40 (c): a copy whose header attributes differ (Patient's Name, or
    /// the transfer syntax) but whose SOP UIDs and pixel data are the same
    /// is COERCED, naming what changed; other pixels or another SOP Instance
    /// UID are a MISMATCH saying why; a copy that cannot be walked (nested
    /// 5000 deep: dicom-object would overflow the stack) is an error, not a
    /// crash.
    #[test]
    fn coerced_copies_are_told_from_mismatches() {
        let d = tempfile::tempdir().unwrap();
        let local = instance(d.path(), "local.dcm", "1.2.3.1.1", "DOE^JANE", 7, false);
        let renamed = instance(d.path(), "renamed.dcm", "1.2.3.1.1", "DOE^J", 7, false);
        let (verdict, detail) = compare_attributes(&local, &renamed).unwrap();
        assert_eq!(verdict, Verdict::Coerced, "{detail}");
        assert_eq!(detail, "attributes changed: (0010,0010)");

        let implicit = instance(d.path(), "implicit.dcm", "1.2.3.1.1", "DOE^JANE", 7, true);
        let (verdict, detail) = compare_attributes(&local, &implicit).unwrap();
        assert_eq!(verdict, Verdict::Coerced, "{detail}");
        assert_eq!(
            detail,
            "attributes changed: transfer syntax 1.2.840.10008.1.2.1 -> 1.2.840.10008.1.2"
        );

        let pixels = instance(d.path(), "pixels.dcm", "1.2.3.1.1", "DOE^JANE", 8, false);
        let (verdict, detail) = compare_attributes(&local, &pixels).unwrap();
        assert_eq!(verdict, Verdict::Mismatch, "{detail}");
        assert_eq!(detail, "Pixel Data differs");

        let other = instance(d.path(), "other.dcm", "1.2.3.1.2", "DOE^JANE", 7, false);
        let (verdict, detail) = compare_attributes(&local, &other).unwrap();
        assert_eq!(verdict, Verdict::Mismatch, "{detail}");
        assert!(detail.starts_with("SOP Instance UID differs"), "{detail}");

        // 5000 levels of defined-length sequences after the UIDs.
        let mut deep = std::fs::read(&local).unwrap();
        let offset = pacs_mirror_dicom::part10::dataset_offset(&local).unwrap() as usize;
        let mut inner = vec![0x08, 0x00, 0x00, 0x01, b'S', b'H', 2, 0, b'A', b'B'];
        for _ in 0..5000 {
            let mut item = vec![0xFE, 0xFF, 0x00, 0xE0];
            item.extend((inner.len() as u32).to_le_bytes());
            item.extend(&inner);
            inner = vec![0x40, 0x00, 0x30, 0xA7, b'S', b'Q', 0, 0];
            inner.extend((item.len() as u32).to_le_bytes());
            inner.extend(item);
        }
        // Before Pixel Data: (0040,A730) sorts after (0020,000E).
        let pixel_at = offset
            + deep[offset..]
                .windows(4)
                .position(|w| w == [0xE0, 0x7F, 0x10, 0x00])
                .unwrap();
        deep.splice(pixel_at..pixel_at, inner);
        let deep_path = d.path().join("deep.dcm");
        std::fs::write(&deep_path, deep).unwrap();
        let err = compare_attributes(&local, &deep_path)
            .unwrap_err()
            .to_string();
        assert!(err.contains("nested deeper"), "{err}");
    }

    /// Over `rotation` consecutive drills every study is drilled.
    #[test]
    fn rotation_covers_every_study() {
        let idx = index_with_studies(37);
        let s = settings(0, 5, false);
        let mut seen = HashSet::new();
        for n in 1..=5 {
            for (uid, why) in pick_studies(&idx, &s, n).unwrap() {
                assert!(why[0].starts_with("rotation"));
                seen.insert(uid);
            }
        }
        assert_eq!(seen.len(), 37);
    }

    #[test]
    fn random_is_seeded_and_newest_is_newest() {
        let idx = index_with_studies(20);
        let s = settings(3, 0, true);
        let a = pick_studies(&idx, &s, 1).unwrap();
        assert_eq!(
            a,
            pick_studies(&idx, &s, 1).unwrap(),
            "same seed, same pick"
        );
        let randoms = a
            .iter()
            .filter(|(_, w)| w.contains(&"random".to_string()))
            .count();
        assert_eq!(randoms, 3);
        let newest: Vec<_> = a
            .iter()
            .filter(|(_, w)| w.contains(&"newest".to_string()))
            .collect();
        assert_eq!(newest.len(), 1);
        assert_eq!(newest[0].0, "1.2.3.19");
        let requested = DrillSettings {
            studies: vec!["nope".into()],
            ..s
        };
        assert!(matches!(
            pick_studies(&idx, &requested, 1),
            Err(DrillError::UnknownStudy(_))
        ));
    }
}
