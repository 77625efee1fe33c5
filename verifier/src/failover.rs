//! `failover check`: is the mirror complete enough to switch to?
//!
//! The index says what the mirror should hold: every study received (or, with
//! `since`, every study dated that day or later; a study without a Study
//! Date by the day it was received), each as its distinct SOP instances
//! (several versions of one SOP instance count once). The mirror is counted
//! by C-FIND ([`crate::census`]). A study absent from the mirror, or with
//! fewer instances than the index holds, is a **gap**; for a short study
//! the missing SOP Instance UIDs are named by an IMAGE-level C-FIND. A
//! study with more instances on the mirror is not a gap (someone else
//! stored there too); it is listed.
//!
//! Each missing instance is given its state in the target's queue (still
//! queued, dead letter, delivered and since lost by the mirror, delivered
//! while the check ran, never queued) and whether its file is still in the
//! spool. The queue is read **before** the mirror is asked: an instance
//! delivered after the check started is in flight (the mirror may have
//! answered before it arrived), not a gap to repair. With `repair`, every
//! missing instance not queued or in flight whose file is in the spool is
//! queued again (its delivered or dead-letter row removed, one atomic batch
//! each); the running agent delivers it. One whose file retention removed
//! cannot be sent from here: the report says where it can be restored from.
//!
//! # A crash during repair
//! Each instance is queued again by its own atomic batch (its queue row
//! written, its delivered or dead-letter row removed, together), flushed at
//! the end. A crash mid-repair therefore leaves every instance either
//! queued again or as it was, never half-moved; the re-queues of the last
//! batches before the crash may be lost (not flushed). Running the check
//! with `repair` again is safe and idempotent: instances already queued are
//! left as they are ([`Index::requeue`] never writes a second row, and
//! repairs, `resync` and dead-letter retries are serialised), the others are
//! queued. Only one check runs at a time in an agent.
//!
//! A running agent runs the check (`POST /failover/check` on the admin
//! endpoint, [`routes`]), because only one process may open the index. The
//! index is read on the blocking thread pool, and each study is kept as its
//! SOP Instance UIDs with the newest version's hash only.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use pacs_mirror_config::{Config, Target};
use serde::{Deserialize, Serialize};

use crate::census::{self, Session, Tally};
use pacs_mirror_dicom::scu::Peer;
use pacs_mirror_store::index::{Index, IndexError, ObjectId, parse_hash};
use pacs_mirror_store::spool::Spool;

/// Why a check could not run at all (a mirror that cannot be asked is a
/// result: [`FailoverReport::error`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FailoverError {
    /// No such target, or not a DICOM target.
    #[error("{0}")]
    Target(String),
    /// `since` is not a date.
    #[error("{0}")]
    Since(String),
    /// The index failed.
    #[error("index: {0}")]
    Index(#[from] IndexError),
    /// The task reading the index failed (panicked or was cancelled).
    #[error("index reading task: {0}")]
    Task(String),
}

impl FailoverError {
    /// The HTTP status of the admin endpoint's answer: 400 for a bad
    /// request, 500 when the agent failed.
    pub fn status(&self) -> StatusCode {
        match self {
            FailoverError::Target(_) | FailoverError::Since(_) => StatusCode::BAD_REQUEST,
            FailoverError::Index(_) | FailoverError::Task(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// What to check.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckRequest {
    /// The DICOM target (the mirror).
    pub target: String,
    /// Only studies dated on or after this day (YYYYMMDD or YYYY-MM-DD).
    #[serde(default)]
    pub since: Option<String>,
    /// Queue the missing instances again.
    #[serde(default)]
    pub repair: bool,
}

/// Where a missing instance stands in the target's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueState {
    /// A row is pending: the agent will deliver it.
    Queued,
    /// The mirror refused it for good (`dead-letter list`).
    DeadLetter,
    /// The mirror confirmed it once and no longer holds it.
    Delivered,
    /// Delivered after the check started: the mirror may have answered
    /// before it arrived. Not queued again; check again.
    InFlight,
    /// Never queued for this target (e.g. the target was added later).
    NotQueued,
}

/// One instance the mirror lacks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissingInstance {
    /// SOP Instance UID.
    pub sop_instance_uid: String,
    /// The version that would be sent (the newest received), blake3 hex.
    pub blake3: String,
    /// Its state in the target's queue (before any repair).
    pub state: QueueState,
    /// Whether its file is in the spool (retention did not remove it).
    pub in_spool: bool,
    /// Queued again by this check's repair.
    pub requeued: bool,
}

/// A study the mirror lacks, wholly or partly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StudyGap {
    /// Study Instance UID.
    pub study_instance_uid: String,
    /// Patient ID (from the index).
    pub patient_id: String,
    /// Study Date (from the mirror, else a spooled copy; may be empty).
    pub study_date: String,
    /// Distinct SOP instances the index holds.
    pub expected: usize,
    /// Instances the mirror reported (0: study absent; None: it gave no count).
    pub found: Option<u32>,
    /// The study is absent from the mirror.
    pub absent: bool,
    /// The instances it lacks.
    pub missing: Vec<MissingInstance>,
}

/// A study with more instances on the mirror than the index holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StudyCount {
    /// Study Instance UID.
    pub study_instance_uid: String,
    /// Distinct SOP instances the index holds.
    pub expected: usize,
    /// Instances on the mirror.
    pub found: u32,
}

/// An instance a repair could not queue: its file is no longer spooled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotInSpool {
    /// Study Instance UID.
    pub study_instance_uid: String,
    /// SOP Instance UID.
    pub sop_instance_uid: String,
    /// blake3 hex.
    pub blake3: String,
    /// Where to get it from instead.
    pub hint: String,
}

/// What `repair` did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Repair {
    /// Instances queued again.
    pub requeued: usize,
    /// Instances already queued (left as they were).
    pub already_queued: usize,
    /// Instances delivered while the check ran (left as they were).
    #[serde(default)]
    pub in_flight: usize,
    /// Instances that cannot be sent from the spool.
    pub not_in_spool: Vec<NotInSpool>,
}

/// The result of a check.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FailoverReport {
    /// The target.
    pub target: String,
    /// The mirror, `AE@host:port`.
    pub mirror: String,
    /// Only studies dated on or after this day (YYYYMMDD).
    pub since: Option<String>,
    /// When the check started (Unix ms).
    pub checked_at_ms: u64,
    /// Seconds it took.
    pub seconds: f64,
    /// Studies the index holds (in the window).
    pub studies_checked: usize,
    /// Their distinct SOP instances.
    pub instances_checked: usize,
    /// No gap, and the mirror answered.
    pub complete: bool,
    /// Why the mirror could not be asked (the check then says nothing).
    pub error: Option<String>,
    /// Studies the mirror lacks, wholly or partly.
    pub gaps: Vec<StudyGap>,
    /// Studies with more instances on the mirror (not gaps).
    pub more_on_mirror: Vec<StudyCount>,
    /// Studies on the mirror (in the window) the index does not hold.
    pub studies_only_on_mirror: usize,
    /// The mirror's study list was longer than we read (the studies we
    /// expected were still each asked for by UID).
    pub census_truncated: bool,
    /// Objects still queued for the target (after any repair).
    pub queued: u64,
    /// Objects the target refused for good (after any repair).
    pub dead_letters: u64,
    /// What the repair did, when asked.
    pub repair: Option<Repair>,
    /// Instance versions held with no (usable) Study Instance UID: a
    /// study-level C-FIND cannot ask the mirror for them, so they are not
    /// in the check; the queue figures above still cover their delivery,
    /// and `pacs-mirror findings list` names them.
    #[serde(default)]
    pub without_study: u64,
}

/// How a report says what a study-level check could not reach.
pub fn without_study_note(n: u64) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(
            "; {n} instance version(s) without a Study Instance UID cannot be checked by study (delivery tracked by the queue; `pacs-mirror findings list`)"
        )
    }
}

impl FailoverReport {
    /// Missing instances over all gaps.
    pub fn missing_instances(&self) -> usize {
        self.gaps.iter().map(|g| g.missing.len()).sum()
    }

    /// One line for a person on call.
    pub fn summary(&self) -> String {
        let window = self
            .since
            .as_deref()
            .map(|s| format!(" (studies since {s})"))
            .unwrap_or_default();
        if let Some(e) = &self.error {
            return format!(
                "failover check of {} ({}){window}: COULD NOT ASK THE MIRROR: {e}",
                self.target, self.mirror
            );
        }
        let verdict = if self.complete {
            "complete".to_string()
        } else {
            format!(
                "INCOMPLETE: {} study(ies) with gaps, {} instance(s) missing",
                self.gaps.len(),
                self.missing_instances()
            )
        };
        format!(
            "failover check of {} ({}){window}: {verdict}; {} study(ies), {} instance(s) checked; {} object(s) still queued, {} dead letter(s){}",
            self.target,
            self.mirror,
            self.studies_checked,
            self.instances_checked,
            self.queued,
            self.dead_letters,
            without_study_note(self.without_study)
        )
    }
}

/// The mirror of a DICOM target, and the object-storage targets (where an
/// object no longer spooled may be restored from).
pub fn mirror_of(config: &Config, target: &str) -> Result<(Peer, Vec<String>), FailoverError> {
    let buckets = config
        .targets
        .iter()
        .filter(|t| matches!(t, Target::ObjectStore { .. }))
        .map(|t| t.name().to_string())
        .collect();
    let Some(t) = config.targets.iter().find(|t| t.name() == target) else {
        let names: Vec<&str> = config.targets.iter().map(Target::name).collect();
        return Err(FailoverError::Target(format!(
            "no target named {target:?} in the configuration (targets: {names:?})"
        )));
    };
    let Target::Dicom {
        remote_ae,
        calling_ae,
        timeout_secs,
        ..
    } = t
    else {
        return Err(FailoverError::Target(format!(
            "target {target:?} is an object store: failover needs a DICOM mirror"
        )));
    };
    let peer = pacs_mirror_agent::app::remote_peer(
        config,
        remote_ae,
        calling_ae.as_deref(),
        &pacs_mirror_agent::app::default_calling_ae(config),
        *timeout_secs,
    )
    .map_err(|e| FailoverError::Target(format!("target {target:?}: {e}")))?;
    Ok((peer, buckets))
}

/// The newest version of one SOP instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Newest {
    hash: ObjectId,
    received_at_ms: u64,
}

/// One study as the index holds it (only what the check needs).
struct IndexedStudy {
    patient_id: String,
    /// The newest version of each SOP instance, by SOP Instance UID.
    newest: BTreeMap<String, Newest>,
    /// Study Date of a spooled copy ("" when none is readable or it has none).
    study_date: String,
    /// The day the first instance was received (YYYYMMDD).
    received_day: String,
}

/// The studies of the index, each reduced to its distinct SOP instances.
/// With `since`, only those dated that day or later (by the day received
/// when no spooled copy gives a Study Date); the date is read from one
/// spooled copy per study.
fn indexed_studies(
    index: &Index,
    spool: &Spool,
    since: Option<&str>,
) -> Result<BTreeMap<String, IndexedStudy>, FailoverError> {
    let mut out = BTreeMap::new();
    for s in index.studies()? {
        let mut newest: BTreeMap<String, Newest> = BTreeMap::new();
        let mut first_ms = u64::MAX;
        let mut patient_id = None;
        let mut study_date = String::new();
        // One study's records at a time; only the UID and hash are kept.
        for r in index.study_instances(&s.study_instance_uid)? {
            first_ms = first_ms.min(r.received_at_ms);
            if patient_id.is_none() {
                patient_id = Some(r.patient_id.clone());
            }
            if study_date.is_empty() {
                study_date = r.study_date;
            }
            match newest.get(&r.sop_instance_uid) {
                Some(held) if held.received_at_ms >= r.received_at_ms => {}
                _ => {
                    newest.insert(
                        r.sop_instance_uid,
                        Newest {
                            hash: parse_hash(&r.blake3)?,
                            received_at_ms: r.received_at_ms,
                        },
                    );
                }
            }
        }
        let Some(patient_id) = patient_id else {
            continue;
        };
        let study = IndexedStudy {
            patient_id,
            // Indexed with each record; records written before it was kept
            // have none, and then it is read from a spooled copy.
            study_date: if since.is_some() && study_date.is_empty() {
                spooled_study_date(spool, newest.values())
            } else {
                study_date
            },
            received_day: crate::restore::yyyymmdd_of_ms(first_ms),
            newest,
        };
        if let Some(since) = since {
            let day = if study.study_date.len() == 8 {
                &study.study_date
            } else {
                &study.received_day
            };
            if day.as_str() < since {
                continue;
            }
        }
        out.insert(s.study_instance_uid, study);
    }
    Ok(out)
}

/// The Study Date of the first readable spooled copy among `records`.
fn spooled_study_date<'a>(spool: &Spool, records: impl Iterator<Item = &'a Newest>) -> String {
    for r in records {
        let path = spool.object_path(&r.hash);
        if !path.exists() {
            continue;
        }
        if let Ok(h) = pacs_mirror_dicom::part10::read_header(&path) {
            return h.study_date;
        }
    }
    String::new()
}

/// The pure part of the check: which studies have gaps, from the index's
/// studies, the mirror's census and the mirror's instance listings of the
/// studies that needed one.
#[derive(Debug, Default, PartialEq, Eq)]
struct Comparison {
    /// (study, tally, missing SOP Instance UIDs).
    gaps: Vec<(String, Tally, Vec<String>)>,
    more: Vec<StudyCount>,
}

fn compare(
    expected: &BTreeMap<String, BTreeSet<String>>,
    census: &census::Census,
    listings: &HashMap<String, BTreeMap<String, crate::qr::InstanceMatch>>,
) -> Comparison {
    let mut c = Comparison::default();
    for (study, sops) in expected {
        let t = census::tally(sops.len(), census.studies.get(study));
        let missing = match t {
            Tally::Equal => Vec::new(),
            Tally::Absent => sops.iter().cloned().collect(),
            _ => match listings.get(study) {
                Some(listing) => census::missing(sops.iter().map(String::as_str), listing),
                // Not listed: every instance is in doubt.
                None => sops.iter().cloned().collect(),
            },
        };
        if let Tally::More { found } = t
            && missing.is_empty()
        {
            c.more.push(StudyCount {
                study_instance_uid: study.clone(),
                expected: sops.len(),
                found,
            });
        }
        if !missing.is_empty() {
            c.gaps.push((study.clone(), t, missing));
        }
    }
    c
}

/// The target's queue as it stood before the mirror was asked.
struct QueueSnapshot {
    /// When it was taken (Unix ms): later deliveries are in flight.
    taken_at_ms: u64,
    pending: HashSet<ObjectId>,
    dead: HashSet<ObjectId>,
}

impl QueueSnapshot {
    fn take(index: &Index, target: &str) -> Result<QueueSnapshot, FailoverError> {
        // Taken first: a row delivered after this instant is in flight.
        let taken_at_ms = pacs_mirror_agent::unix_ms();
        Ok(QueueSnapshot {
            taken_at_ms,
            pending: index.pending(target)?,
            dead: index
                .dead_letters(target)?
                .into_iter()
                .map(|(h, _)| h)
                .collect(),
        })
    }

    /// The state of an object the mirror lacks; `delivered_at_ms`: its
    /// delivery to the target, read after the mirror answered.
    fn state(&self, hash: &ObjectId, delivered_at_ms: Option<u64>) -> QueueState {
        if self.pending.contains(hash) {
            QueueState::Queued
        } else if delivered_at_ms.is_some_and(|at| at >= self.taken_at_ms) {
            QueueState::InFlight
        } else if self.dead.contains(hash) {
            QueueState::DeadLetter
        } else if delivered_at_ms.is_some() {
            QueueState::Delivered
        } else {
            QueueState::NotQueued
        }
    }
}

/// Run `f` on the blocking thread pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, FailoverError> + Send + 'static,
) -> Result<T, FailoverError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| FailoverError::Task(e.to_string()))?
}

/// Run a check (and the repair, if asked) against the open index.
pub async fn check(
    index: &Index,
    spool: &Arc<Spool>,
    config: &Config,
    request: &CheckRequest,
) -> Result<FailoverReport, FailoverError> {
    let start = Instant::now();
    let since = request
        .since
        .as_deref()
        .map(crate::restore::parse_date)
        .transpose()
        .map_err(|e| FailoverError::Since(e.to_string()))?;
    let (peer, buckets) = mirror_of(config, &request.target)?;
    let target = request.target.as_str();
    let mut report = FailoverReport {
        target: target.to_string(),
        mirror: census::describe(&peer),
        since: since.clone(),
        checked_at_ms: pacs_mirror_agent::unix_ms(),
        ..FailoverReport::default()
    };
    // The index, then the queue, both before the mirror is asked.
    let studies = {
        let (index, spool, since, target) = (
            index.clone(),
            spool.clone(),
            since.clone(),
            target.to_string(),
        );
        blocking(move || {
            let studies = indexed_studies(&index, &spool, since.as_deref())?;
            let queue = QueueSnapshot::take(&index, &target)?;
            Ok((studies, queue, index.without_study()?))
        })
        .await?
    };
    let (studies, queue, without_study) = (studies.0, studies.1, studies.2);
    report.without_study = without_study;
    report.studies_checked = studies.len();
    report.instances_checked = studies.values().map(|s| s.newest.len()).sum();
    let expected: BTreeMap<String, BTreeSet<String>> = studies
        .iter()
        .map(|(uid, s)| (uid.clone(), s.newest.keys().cloned().collect()))
        .collect();
    let asked = ask_mirror(&peer, since.as_deref(), &expected).await;
    let (census, listings) = match asked {
        Ok(v) => v,
        Err(e) => {
            report.error = Some(e);
            finish(index, target, &mut report, start).await?;
            return Ok(report);
        }
    };
    report.census_truncated = census.truncated;
    report.studies_only_on_mirror = census
        .studies
        .keys()
        .filter(|s| !studies.contains_key(*s))
        .count();
    let comparison = compare(&expected, &census, &listings);
    report.more_on_mirror = comparison.more;
    for (uid, tally, sops) in comparison.gaps {
        let Some(study) = studies.get(&uid) else {
            continue;
        };
        let mut gap = StudyGap {
            study_instance_uid: uid.clone(),
            patient_id: study.patient_id.clone(),
            study_date: census
                .studies
                .get(&uid)
                .map(|m| m.study_date.clone())
                .filter(|d| !d.is_empty())
                .unwrap_or_else(|| {
                    if study.study_date.is_empty() {
                        spooled_study_date(spool, study.newest.values())
                    } else {
                        study.study_date.clone()
                    }
                }),
            expected: study.newest.len(),
            found: tally.found(study.newest.len()),
            absent: tally == Tally::Absent,
            missing: Vec::new(),
        };
        for sop in sops {
            let Some(r) = study.newest.get(&sop) else {
                continue;
            };
            let hash = r.hash;
            let delivered_at = index.delivery(target, &hash)?.map(|d| d.delivered_at_ms);
            let state = queue.state(&hash, delivered_at);
            let in_spool = index
                .object(&hash)?
                .is_some_and(|o| o.evicted_at_ms.is_none())
                && spool.object_path(&hash).exists();
            gap.missing.push(MissingInstance {
                sop_instance_uid: sop,
                blake3: pacs_mirror_store::index::hash_hex(&hash),
                state,
                in_spool,
                requeued: false,
            });
        }
        report.gaps.push(gap);
    }
    if request.repair {
        // The queue moves wait for any resync or dead-letter retry running.
        let (index, target, mirror, mut gaps) = (
            index.clone(),
            target.to_string(),
            report.mirror.clone(),
            std::mem::take(&mut report.gaps),
        );
        let (done, gaps) = blocking(move || {
            let done = repair(&index, &target, &buckets, &mirror, &mut gaps)?;
            Ok((done, gaps))
        })
        .await?;
        report.gaps = gaps;
        report.repair = Some(done);
    }
    report.complete = report.gaps.is_empty();
    finish(index, target, &mut report, start).await?;
    Ok(report)
}

/// The mirror's census, and the instance listings of the studies whose
/// counts differ from the index's.
async fn ask_mirror(
    peer: &Peer,
    since: Option<&str>,
    expected: &BTreeMap<String, BTreeSet<String>>,
) -> Result<
    (
        census::Census,
        HashMap<String, BTreeMap<String, crate::qr::InstanceMatch>>,
    ),
    String,
> {
    let mut session = Session::open(peer).await.map_err(|e| e.to_string())?;
    let result = async {
        let uids: Vec<String> = expected.keys().cloned().collect();
        let census = session.census_of(since, &uids).await?;
        let mut listings = HashMap::new();
        for (study, sops) in expected {
            if census::tally(sops.len(), census.studies.get(study)).needs_listing() {
                listings.insert(study.clone(), session.instances(study).await?);
            }
        }
        Ok::<_, crate::qr::QrError>((census, listings))
    }
    .await
    .map_err(|e| e.to_string());
    session.close().await;
    result
}

/// Queue again what is missing and can be sent; say where the rest is.
fn repair(
    index: &Index,
    target: &str,
    buckets: &[String],
    mirror: &str,
    gaps: &mut [StudyGap],
) -> Result<Repair, FailoverError> {
    let mut r = Repair::default();
    let mut hashes = Vec::new();
    for gap in gaps.iter_mut() {
        for m in &mut gap.missing {
            match m.state {
                QueueState::Queued => {
                    r.already_queued += 1;
                    continue;
                }
                QueueState::InFlight => {
                    r.in_flight += 1;
                    continue;
                }
                QueueState::DeadLetter | QueueState::Delivered | QueueState::NotQueued => {}
            }
            let hash = parse_hash(&m.blake3)?;
            if !m.in_spool {
                let held_by: Vec<&str> = buckets
                    .iter()
                    .filter(|b| matches!(index.delivery(b, &hash), Ok(Some(_))))
                    .map(String::as_str)
                    .collect();
                let hint = match held_by.first() {
                    Some(b) => format!(
                        "not in the local spool; restore it from bucket target {b:?} (pacs-mirror restore --from {b} --study {} --to {mirror}) or from the primary",
                        gap.study_instance_uid
                    ),
                    None => "not in the local spool and in no bucket target; restore it from the primary".into(),
                };
                r.not_in_spool.push(NotInSpool {
                    study_instance_uid: gap.study_instance_uid.clone(),
                    sop_instance_uid: m.sop_instance_uid.clone(),
                    blake3: m.blake3.clone(),
                    hint,
                });
                continue;
            }
            hashes.push(hash);
            m.requeued = true;
        }
    }
    r.requeued = index.requeue(target, &hashes, pacs_mirror_agent::unix_ms())?;
    index.flush()?;
    tracing::info!(
        target = %target,
        requeued = r.requeued,
        not_in_spool = r.not_in_spool.len(),
        "failover repair: missing instances queued again"
    );
    Ok(r)
}

async fn finish(
    index: &Index,
    target: &str,
    report: &mut FailoverReport,
    start: Instant,
) -> Result<(), FailoverError> {
    let (index, target) = (index.clone(), target.to_string());
    let s = blocking(move || Ok(index.outbox_summary(&target)?)).await?;
    report.queued = s.pending;
    report.dead_letters = s.dead_letters;
    report.seconds = start.elapsed().as_secs_f64();
    Ok(())
}

/// The check inside a running agent.
pub struct FailoverService {
    index: Index,
    spool: Arc<Spool>,
    config: Config,
    /// One check (and its repair) at a time: a second waits.
    one_at_a_time: tokio::sync::Mutex<()>,
}

impl FailoverService {
    /// The service over the agent's index, spool and configuration.
    pub fn new(index: Index, spool: Arc<Spool>, config: Config) -> Self {
        FailoverService {
            index,
            spool,
            config,
            one_at_a_time: tokio::sync::Mutex::new(()),
        }
    }

    /// Run one check, after any other running one.
    pub async fn check(&self, request: &CheckRequest) -> Result<FailoverReport, FailoverError> {
        let _one = self.one_at_a_time.lock().await;
        check(&self.index, &self.spool, &self.config, request).await
    }
}

/// `POST /failover/check` (JSON [`CheckRequest`] → [`FailoverReport`]).
pub fn routes(service: Arc<FailoverService>) -> Router {
    Router::new()
        .route("/failover/check", post(check_handler))
        .with_state(service)
}

async fn check_handler(
    State(s): State<Arc<FailoverService>>,
    axum::Json(request): axum::Json<CheckRequest>,
) -> Response {
    match s.check(&request).await {
        Ok(r) => axum::Json(r).into_response(),
        Err(e) => (e.status(), e.to_string()).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qr::{InstanceMatch, StudyMatch};
    use pacs_mirror_store::index::ObjectId;
    use pacs_mirror_store::index::{InstanceRecord, hash_hex};

    fn sops(uids: &[&str]) -> BTreeSet<String> {
        uids.iter().map(|s| s.to_string()).collect()
    }

    fn on_mirror(n: &[(&str, Option<u32>)]) -> census::Census {
        census::Census {
            studies: n
                .iter()
                .map(|(uid, count)| {
                    (
                        uid.to_string(),
                        StudyMatch {
                            study_instance_uid: uid.to_string(),
                            number_of_study_related_instances: *count,
                            ..StudyMatch::default()
                        },
                    )
                })
                .collect(),
            truncated: false,
        }
    }

    fn listing(uids: &[&str]) -> BTreeMap<String, InstanceMatch> {
        uids.iter()
            .map(|u| {
                (
                    u.to_string(),
                    InstanceMatch {
                        sop_instance_uid: u.to_string(),
                        ..InstanceMatch::default()
                    },
                )
            })
            .collect()
    }

    #[test]
    fn absent_short_equal_and_more() {
        let expected: BTreeMap<String, BTreeSet<String>> = [
            ("1.1".to_string(), sops(&["1.1.1", "1.1.2"])),
            ("1.2".to_string(), sops(&["1.2.1", "1.2.2", "1.2.3"])),
            ("1.3".to_string(), sops(&["1.3.1"])),
            ("1.4".to_string(), sops(&["1.4.1"])),
        ]
        .into_iter()
        .collect();
        let census = on_mirror(&[
            ("1.2", Some(2)),
            ("1.3", Some(1)),
            ("1.4", Some(3)),
            ("9.9", Some(7)),
        ]);
        let listings: HashMap<_, _> = [
            ("1.2".to_string(), listing(&["1.2.1", "1.2.3"])),
            ("1.4".to_string(), listing(&["1.4.1", "1.4.8", "1.4.9"])),
        ]
        .into_iter()
        .collect();
        let c = compare(&expected, &census, &listings);
        assert_eq!(
            c.gaps,
            vec![
                (
                    "1.1".to_string(),
                    Tally::Absent,
                    vec!["1.1.1".to_string(), "1.1.2".to_string()]
                ),
                (
                    "1.2".to_string(),
                    Tally::Short { found: 2 },
                    vec!["1.2.2".to_string()]
                ),
            ]
        );
        assert_eq!(
            c.more,
            vec![StudyCount {
                study_instance_uid: "1.4".into(),
                expected: 1,
                found: 3
            }]
        );
    }

    /// More on the mirror but one of ours lacking: still a gap.
    #[test]
    fn more_instances_can_hide_a_missing_one() {
        let expected: BTreeMap<String, BTreeSet<String>> =
            [("1.4".to_string(), sops(&["1.4.1", "1.4.2"]))]
                .into_iter()
                .collect();
        let census = on_mirror(&[("1.4", Some(3))]);
        let listings: HashMap<_, _> = [("1.4".to_string(), listing(&["1.4.1", "1.4.8", "1.4.9"]))]
            .into_iter()
            .collect();
        let c = compare(&expected, &census, &listings);
        assert_eq!(c.gaps.len(), 1);
        assert_eq!(c.gaps[0].2, vec!["1.4.2".to_string()]);
        assert!(c.more.is_empty());
    }

    /// A mirror that gives no count: complete when the listing has all.
    #[test]
    fn uncounted_studies_are_judged_by_their_listing() {
        let expected: BTreeMap<String, BTreeSet<String>> = [("1.5".to_string(), sops(&["1.5.1"]))]
            .into_iter()
            .collect();
        let census = on_mirror(&[("1.5", None)]);
        let full: HashMap<_, _> = [("1.5".to_string(), listing(&["1.5.1"]))]
            .into_iter()
            .collect();
        assert_eq!(compare(&expected, &census, &full), Comparison::default());
        assert_eq!(compare(&expected, &census, &HashMap::new()).gaps.len(), 1);
    }

    /// The queue is read before the mirror is asked: a delivery after that
    /// instant is in flight, not a loss to repair.
    #[test]
    fn deliveries_after_the_snapshot_are_in_flight() {
        let q = QueueSnapshot {
            taken_at_ms: 1_000,
            pending: [ObjectId([1; 32])].into_iter().collect(),
            dead: [ObjectId([2; 32]), ObjectId([5; 32])].into_iter().collect(),
        };
        assert_eq!(q.state(&ObjectId([1; 32]), None), QueueState::Queued);
        // Pending at the snapshot, delivered since: still queued, not a gap.
        assert_eq!(q.state(&ObjectId([1; 32]), Some(1_500)), QueueState::Queued);
        assert_eq!(q.state(&ObjectId([2; 32]), None), QueueState::DeadLetter);
        assert_eq!(
            q.state(&ObjectId([3; 32]), Some(999)),
            QueueState::Delivered
        );
        assert_eq!(
            q.state(&ObjectId([3; 32]), Some(1_000)),
            QueueState::InFlight
        );
        // A dead letter retried and delivered while the check ran.
        assert_eq!(
            q.state(&ObjectId([5; 32]), Some(1_200)),
            QueueState::InFlight
        );
        assert_eq!(q.state(&ObjectId([4; 32]), None), QueueState::NotQueued);
        // The repair leaves in-flight instances alone.
        let idx = Index::new(Arc::new(pacs_mirror_store::index::MemKv::default()));
        let mut gaps = vec![StudyGap {
            study_instance_uid: "1.1".into(),
            patient_id: String::new(),
            study_date: String::new(),
            expected: 1,
            found: Some(0),
            absent: true,
            missing: vec![MissingInstance {
                sop_instance_uid: "1.1.1".into(),
                blake3: hash_hex(&ObjectId([3; 32])),
                state: QueueState::InFlight,
                in_spool: true,
                requeued: false,
            }],
        }];
        let r = repair(&idx, "m", &[], "M@h:1", &mut gaps).unwrap();
        assert_eq!((r.requeued, r.in_flight), (0, 1));
        assert!(!gaps[0].missing[0].requeued);
        assert!(idx.pending("m").unwrap().is_empty());
    }

    /// A bad request is 400; the agent failing is 500.
    #[test]
    fn errors_map_to_http_statuses() {
        assert_eq!(
            FailoverError::Target("no target".into()).status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            FailoverError::Since("bad date".into()).status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            FailoverError::Index(IndexError::BadHash("x".into())).status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(
            FailoverError::Task("panicked".into()).status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    /// Several versions of one SOP instance count once.
    #[test]
    fn versions_count_once() {
        use pacs_mirror_store::index::MemKv;
        let idx = Index::new(Arc::new(MemKv::default()));
        let rec = |sop: &str, hash: &ObjectId, at: u64| InstanceRecord {
            sop_instance_uid: sop.into(),
            sop_class_uid: "1.2".into(),
            transfer_syntax_uid: "1.2.840.10008.1.2.1".into(),
            blake3: hash_hex(hash),
            dataset_bytes: 1,
            file_bytes: 2,
            patient_id: "P".into(),
            study_instance_uid: "1.7".into(),
            series_instance_uid: "1.7.1".into(),
            calling_ae: "A".into(),
            source_ip: "127.0.0.1".into(),
            received_at_ms: at,
            study_date: String::new(),
            modality: String::new(),
            findings: Vec::new(),
        };
        let t = ["m".to_string()];
        idx.commit_instance(
            &rec("1.7.1.1", &ObjectId([1; 32]), 10),
            &ObjectId([1; 32]),
            &t,
            10,
        )
        .unwrap();
        idx.commit_instance(
            &rec("1.7.1.1", &ObjectId([2; 32]), 20),
            &ObjectId([2; 32]),
            &t,
            20,
        )
        .unwrap();
        idx.commit_instance(
            &rec("1.7.1.2", &ObjectId([3; 32]), 15),
            &ObjectId([3; 32]),
            &t,
            15,
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let spool =
            Spool::open(dir.path(), pacs_mirror_store::spool::SpoolLimits::default()).unwrap();
        let studies = indexed_studies(&idx, &spool, None).unwrap();
        let s = &studies["1.7"];
        assert_eq!(s.newest.len(), 2, "two SOP instances, three versions");
        assert_eq!(s.newest["1.7.1.1"].hash, ObjectId([2; 32]), "the newest");
        assert_eq!(s.patient_id, "P");
        assert_eq!(s.received_day, "19700101");
        // A mirror holding the two instances is complete.
        let expected = [("1.7".to_string(), s.newest.keys().cloned().collect())]
            .into_iter()
            .collect();
        let c = compare(&expected, &on_mirror(&[("1.7", Some(2))]), &HashMap::new());
        assert_eq!(c, Comparison::default());
        // Received in 1970 and no date in the spool: outside a 2024 window.
        assert!(
            indexed_studies(&idx, &spool, Some("20240101"))
                .unwrap()
                .is_empty()
        );
    }
}
