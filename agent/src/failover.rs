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
//! queued, dead letter, delivered and since lost by the mirror, never
//! queued) and whether its file is still in the spool. With `repair`, every
//! missing instance not already queued whose file is in the spool is queued
//! again (its delivered or dead-letter row removed, one atomic batch each);
//! the running agent delivers it. One whose file retention removed cannot
//! be sent from here: the report says where it can be restored from.
//!
//! A running agent runs the check (`POST /failover/check` on the admin
//! endpoint, [`routes`]), because only one process may open the index.

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
use crate::index::{Hash, Index, IndexError, InstanceRecord, parse_hash};
use crate::scu::Peer;
use crate::spool::Spool;

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
            "failover check of {} ({}){window}: {verdict}; {} study(ies), {} instance(s) checked; {} object(s) still queued, {} dead letter(s)",
            self.target,
            self.mirror,
            self.studies_checked,
            self.instances_checked,
            self.queued,
            self.dead_letters
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
    let peer = crate::app::remote_peer(
        config,
        remote_ae,
        calling_ae.as_deref(),
        &crate::app::default_calling_ae(config),
        *timeout_secs,
    )
    .ok_or_else(|| {
        FailoverError::Target(format!(
            "target {target:?}: its remote AE {remote_ae} has no usable connection"
        ))
    })?;
    Ok((peer, buckets))
}

/// One study as the index holds it.
struct IndexedStudy {
    patient_id: String,
    /// The newest version of each SOP instance.
    newest: BTreeMap<String, InstanceRecord>,
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
        let mut newest: BTreeMap<String, InstanceRecord> = BTreeMap::new();
        let mut first_ms = u64::MAX;
        for r in index.study_instances(&s.study_instance_uid)? {
            first_ms = first_ms.min(r.received_at_ms);
            match newest.get(&r.sop_instance_uid) {
                Some(held) if held.received_at_ms >= r.received_at_ms => {}
                _ => {
                    newest.insert(r.sop_instance_uid.clone(), r);
                }
            }
        }
        let Some(patient_id) = newest.values().next().map(|r| r.patient_id.clone()) else {
            continue;
        };
        let study = IndexedStudy {
            patient_id,
            study_date: if since.is_some() {
                spooled_study_date(spool, newest.values())
            } else {
                String::new()
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
fn spooled_study_date<'a>(
    spool: &Spool,
    records: impl Iterator<Item = &'a InstanceRecord>,
) -> String {
    for r in records {
        let Ok(hash) = parse_hash(&r.blake3) else {
            continue;
        };
        let path = spool.object_path(&hash);
        if !path.exists() {
            continue;
        }
        if let Ok(h) = crate::part10::read_header(&path) {
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

/// Run a check (and the repair, if asked) against the open index.
pub async fn check(
    index: &Index,
    spool: &Spool,
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
        checked_at_ms: crate::unix_ms(),
        ..FailoverReport::default()
    };
    let studies = indexed_studies(index, spool, since.as_deref())?;
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
            finish(index, target, &mut report, start)?;
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
    let pending = index.pending(target)?;
    let dead: HashSet<Hash> = index
        .dead_letters(target)?
        .into_iter()
        .map(|(h, _)| h)
        .collect();
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
            let hash = parse_hash(&r.blake3)?;
            let state = if pending.contains(&hash) {
                QueueState::Queued
            } else if dead.contains(&hash) {
                QueueState::DeadLetter
            } else if index.delivery(target, &hash)?.is_some() {
                QueueState::Delivered
            } else {
                QueueState::NotQueued
            };
            let in_spool = index
                .object(&hash)?
                .is_some_and(|o| o.evicted_at_ms.is_none())
                && spool.object_path(&hash).exists();
            gap.missing.push(MissingInstance {
                sop_instance_uid: sop,
                blake3: r.blake3.clone(),
                state,
                in_spool,
                requeued: false,
            });
        }
        report.gaps.push(gap);
    }
    if request.repair {
        report.repair = Some(repair(
            index,
            target,
            &buckets,
            &report.mirror,
            &mut report.gaps,
        )?);
    }
    report.complete = report.gaps.is_empty();
    finish(index, target, &mut report, start)?;
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
            if m.state == QueueState::Queued {
                r.already_queued += 1;
                continue;
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
    r.requeued = index.requeue(target, &hashes, crate::unix_ms())?;
    index.flush()?;
    tracing::info!(
        target = %target,
        requeued = r.requeued,
        not_in_spool = r.not_in_spool.len(),
        "failover repair: missing instances queued again"
    );
    Ok(r)
}

fn finish(
    index: &Index,
    target: &str,
    report: &mut FailoverReport,
    start: Instant,
) -> Result<(), FailoverError> {
    let s = index.outbox_summary(target)?;
    report.queued = s.pending;
    report.dead_letters = s.dead_letters;
    report.seconds = start.elapsed().as_secs_f64();
    Ok(())
}

/// The check inside a running agent.
pub struct FailoverService {
    /// The index.
    pub index: Index,
    /// The spool.
    pub spool: Arc<Spool>,
    /// The configuration.
    pub config: Config,
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
    match check(&s.index, &s.spool, &s.config, &request).await {
        Ok(r) => axum::Json(r).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::hash_hex;
    use crate::qr::{InstanceMatch, StudyMatch};

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

    /// Several versions of one SOP instance count once.
    #[test]
    fn versions_count_once() {
        use crate::index::MemKv;
        let idx = Index::new(Arc::new(MemKv::default()));
        let rec = |sop: &str, hash: &Hash, at: u64| InstanceRecord {
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
        };
        let t = ["m".to_string()];
        idx.commit_instance(&rec("1.7.1.1", &[1; 32], 10), &[1; 32], &t, 10)
            .unwrap();
        idx.commit_instance(&rec("1.7.1.1", &[2; 32], 20), &[2; 32], &t, 20)
            .unwrap();
        idx.commit_instance(&rec("1.7.1.2", &[3; 32], 15), &[3; 32], &t, 15)
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), crate::spool::SpoolLimits::default()).unwrap();
        let studies = indexed_studies(&idx, &spool, None).unwrap();
        let s = &studies["1.7"];
        assert_eq!(s.newest.len(), 2, "two SOP instances, three versions");
        assert_eq!(s.newest["1.7.1.1"].blake3, hash_hex(&[2; 32]), "the newest");
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
