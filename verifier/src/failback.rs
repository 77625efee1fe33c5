//! `failback`: after an outage during which modalities sent to the mirror,
//! bring what only the mirror received back to the primary, and prove it
//! arrived.
//!
//! 1. **Plan** ([`plan`]): C-FIND the mirror's studies dated `since` or
//!    later, and the same studies on the primary by UID ([`crate::census`]).
//!    A study the primary lacks or holds fewer (or other) instances of is
//!    listed at IMAGE level on both sides: the SOP instances on the mirror
//!    and not on the primary are what is missing. Studies with equal counts
//!    are complete and never sent again.
//! 2. **Send** ([`run`]), study by study: C-GET the missing instances from
//!    the mirror (per series, by SOP Instance UID) into a scratch directory
//!    (never the spool), C-STORE each to the primary on its own transfer
//!    syntax (the lossless uncompressed fallback of [`pacs_mirror_dicom::scu`] only if
//!    the primary accepts nothing else).
//! 3. **Verify**: C-FIND the study on the primary at IMAGE level (the
//!    instance must be listed), then C-GET the stored instances back from the
//!    primary and compare the data set's blake3 with what was sent:
//!    **verified** when equal; **changed** when the primary holds other bytes
//!    (it coerced or transcoded them); **missing** when it does not list it.
//!    An instance the primary accepts no context for in its own transfer
//!    syntax is re-encoded by us (the uncompressed fallback): the report
//!    says so, and "the bytes sent" are then the re-encoded ones (their
//!    blake3 is recorded).
//!
//! Scratch files are removed as each study finishes.
//!
//! # What is not seen
//! - Studies without a Study Date on the mirror never match `StudyDate >=
//!   since`: they are not considered (the report says so) unless asked for
//!   ([`FailbackSettings::include_undated`]: one more C-FIND lists every
//!   study on the mirror, and the undated ones join the plan).
//! - A mirror that answers more studies than we read
//!   ([`QrOptions::max_matches`]): the rest are not seen; the report says
//!   so and is never complete (narrow `since`).
//!
//! # Stopping early
//! After [`MAX_ASSOCIATION_FAILURES`] consecutive failures to associate
//! with the same peer, the remaining studies are not attempted: they are
//! reported as such ([`Outcome::NotAttempted`], [`FailbackReport::stopped`]).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::census::{self, Session, Tally};
use crate::qr::{
    self, GetOutcome, InstanceMatch, QrAssociation, QrError, QrOptions, RetrieveTarget,
    RetrievedInstance, Service, StorageContext,
};
use pacs_mirror_dicom::scu::{self, Outgoing, Peer, Reencoded, Scu};

/// Instances per C-GET (each UID goes into the identifier).
const GET_BATCH: usize = 500;
/// Objects per C-STORE association (within its 128 presentation contexts).
const STORE_CHUNK: usize = 64;
/// Associations tried for one chunk whose association broke.
const STORE_ATTEMPTS: u32 = 3;
/// Consecutive association failures to one peer after which the failback
/// stops (the studies left are not attempted).
pub const MAX_ASSOCIATION_FAILURES: u32 = 3;

/// Why a failback could not run (an instance that fails is a result).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FailbackError {
    /// The mirror could not be asked.
    #[error("could not ask the mirror {peer}: {error}")]
    Mirror {
        /// `AE@host:port`.
        peer: String,
        /// Why.
        error: QrError,
    },
    /// The primary could not be asked.
    #[error("could not ask the primary {peer}: {error}")]
    Primary {
        /// `AE@host:port`.
        peer: String,
        /// Why.
        error: QrError,
    },
    /// The scratch directory.
    #[error("scratch directory {path}: {error}")]
    Scratch {
        /// The directory.
        path: String,
        /// The error.
        error: std::io::Error,
    },
}

/// Where from, where to, which studies.
#[derive(Debug, Clone)]
pub struct FailbackSettings {
    /// The mirror (C-FIND, C-GET).
    pub mirror: Peer,
    /// The primary (C-FIND, C-STORE, C-GET to verify).
    pub primary: Peer,
    /// Studies dated on or after this day (YYYYMMDD).
    pub since: String,
    /// Also the mirror's studies with no Study Date (found by listing every
    /// study it holds).
    pub include_undated: bool,
}

/// One instance to bring back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedInstance {
    /// SOP Instance UID.
    pub sop_instance_uid: String,
    /// Series Instance UID (from the mirror).
    pub series_instance_uid: String,
    /// SOP Class UID (from the mirror; may be empty).
    pub sop_class_uid: String,
}

/// One study the primary lacks, wholly or partly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedStudy {
    /// Study Instance UID.
    pub study_instance_uid: String,
    /// Patient ID (from the mirror).
    pub patient_id: String,
    /// Patient's Name (from the mirror).
    pub patient_name: String,
    /// Study Date (from the mirror).
    pub study_date: String,
    /// Instances on the mirror.
    pub on_mirror: usize,
    /// Instances the primary reported (0: absent; None: no count given).
    pub on_primary: Option<u32>,
    /// The instances to send.
    pub missing: Vec<PlannedInstance>,
}

/// What a failback will do.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// `AE@host:port`.
    pub mirror: String,
    /// `AE@host:port`.
    pub primary: String,
    /// YYYYMMDD.
    pub since: String,
    /// Studies on the mirror in the window.
    pub studies_on_mirror: usize,
    /// Of those, complete on the primary already.
    pub studies_complete: usize,
    /// The mirror listed more studies than we read (the rest is not seen).
    pub truncated: bool,
    /// Undated studies on the mirror, when they were looked for (`None`:
    /// not considered).
    pub undated_on_mirror: Option<usize>,
    /// Studies with something to send.
    pub studies: Vec<PlannedStudy>,
}

impl Plan {
    /// Instances to send.
    pub fn instances(&self) -> usize {
        self.studies.iter().map(|s| s.missing.len()).sum()
    }
}

/// C-FIND both sides and decide what to send.
pub async fn plan(settings: &FailbackSettings) -> Result<Plan, FailbackError> {
    let (m, p) = (
        census::describe(&settings.mirror),
        census::describe(&settings.primary),
    );
    let mirror_err = |error| FailbackError::Mirror {
        peer: m.clone(),
        error,
    };
    let primary_err = |error| FailbackError::Primary {
        peer: p.clone(),
        error,
    };
    let mut mirror = Session::open(&settings.mirror).await.map_err(mirror_err)?;
    let mut primary = match Session::open(&settings.primary).await {
        Ok(s) => s,
        Err(e) => {
            mirror.close().await;
            return Err(primary_err(e));
        }
    };
    let result = plan_with(&mut mirror, &mut primary, settings).await;
    mirror.close().await;
    primary.close().await;
    let mut plan = result.map_err(|(on_mirror, e)| {
        if on_mirror {
            mirror_err(e)
        } else {
            primary_err(e)
        }
    })?;
    plan.mirror = m;
    plan.primary = p;
    plan.since = settings.since.clone();
    Ok(plan)
}

/// The errors say which side failed (true: the mirror).
async fn plan_with(
    mirror: &mut Session,
    primary: &mut Session,
    settings: &FailbackSettings,
) -> Result<Plan, (bool, QrError)> {
    let mut on_mirror = mirror
        .studies(Some(&settings.since))
        .await
        .map_err(|e| (true, e))?;
    let mut undated_on_mirror = None;
    if settings.include_undated {
        let every = mirror.studies(None).await.map_err(|e| (true, e))?;
        let undated: Vec<_> = every
            .studies
            .into_iter()
            .filter(|(_, m)| m.study_date.trim().is_empty())
            .collect();
        undated_on_mirror = Some(undated.len());
        on_mirror.truncated |= every.truncated;
        on_mirror.studies.extend(undated);
    }
    let uids: Vec<String> = on_mirror.studies.keys().cloned().collect();
    let on_primary = primary.lookup(&uids).await.map_err(|e| (false, e))?;
    let mut plan = Plan {
        studies_on_mirror: on_mirror.studies.len(),
        truncated: on_mirror.truncated,
        undated_on_mirror,
        ..Plan::default()
    };
    for (uid, m) in &on_mirror.studies {
        let p = on_primary.get(uid);
        let tally = match m.number_of_study_related_instances {
            Some(n) => census::tally(n as usize, p),
            None => Tally::Uncounted,
        };
        if tally == Tally::Equal {
            plan.studies_complete += 1;
            continue;
        }
        let listed = mirror.instances(uid).await.map_err(|e| (true, e))?;
        let held = match p {
            None => BTreeMap::new(),
            Some(_) => primary.instances(uid).await.map_err(|e| (false, e))?,
        };
        let missing_uids = census::missing(listed.keys().map(String::as_str), &held);
        if missing_uids.is_empty() {
            plan.studies_complete += 1;
            continue;
        }
        plan.studies.push(PlannedStudy {
            study_instance_uid: uid.clone(),
            patient_id: m.patient_id.clone(),
            patient_name: m.patient_name.clone(),
            study_date: m.study_date.clone(),
            on_mirror: listed.len(),
            on_primary: match p {
                None => Some(0),
                Some(p) => p.number_of_study_related_instances,
            },
            missing: missing_uids
                .iter()
                .filter_map(|s| listed.get(s))
                .map(planned)
                .collect(),
        });
    }
    Ok(plan)
}

fn planned(m: &InstanceMatch) -> PlannedInstance {
    PlannedInstance {
        sop_instance_uid: m.sop_instance_uid.clone(),
        series_instance_uid: m.series_instance_uid.clone(),
        sop_class_uid: m.sop_class_uid.clone(),
    }
}

/// What became of one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// On the primary, with the bytes sent.
    Verified,
    /// Stored, and the primary holds other bytes (blake3 of its copy).
    Changed(String),
    /// Stored (or refused), and the primary does not list it.
    Missing(String),
    /// Not retrieved from the mirror.
    RetrieveFailed(String),
    /// The primary refused it, or the association failed.
    StoreFailed(String),
    /// Listed by the primary, but it could not be read back.
    VerifyFailed(String),
    /// Not attempted: the failback stopped before this study.
    NotAttempted(String),
}

/// One instance's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceResult {
    /// Study Instance UID.
    pub study_instance_uid: String,
    /// SOP Instance UID.
    pub sop_instance_uid: String,
    /// blake3 of the data set retrieved from the mirror (empty if not).
    pub blake3: String,
    /// blake3 of the data set actually sent to the primary: `blake3`, or
    /// that of our re-encoding (empty if not sent).
    #[serde(default)]
    pub sent_blake3: String,
    /// The transfer syntax we re-encoded it into for the primary (it
    /// accepts no context for the original one); None: sent as retrieved.
    #[serde(default)]
    pub reencoded_to: Option<String>,
    /// Data set bytes.
    pub bytes: u64,
    /// What happened.
    pub outcome: Outcome,
}

/// The final report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FailbackReport {
    /// The mirror, `AE@host:port`.
    pub mirror: String,
    /// `AE@host:port`.
    pub primary: String,
    /// YYYYMMDD.
    pub since: String,
    /// Studies on the mirror in the window.
    pub studies_on_mirror: usize,
    /// Of those, complete on the primary before this run.
    pub studies_complete: usize,
    /// The mirror capped its answer at `studies_on_mirror` studies: the
    /// rest were never looked at (never complete; narrow `since`).
    #[serde(default)]
    pub truncated: bool,
    /// Undated studies on the mirror, when they were looked for (`None`:
    /// not considered).
    #[serde(default)]
    pub undated_on_mirror: Option<usize>,
    /// Why the failback stopped before the last study (the studies left
    /// are [`Outcome::NotAttempted`]).
    #[serde(default)]
    pub stopped: Option<String>,
    /// Verified instances that we re-encoded for the primary.
    #[serde(default)]
    pub reencoded: usize,
    /// Studies with instances to send.
    pub studies: usize,
    /// Instances to send.
    pub instances: usize,
    /// Retrieved from the mirror.
    pub retrieved: usize,
    /// Stored by the primary (Success or a warning).
    pub stored: usize,
    /// On the primary with the bytes sent.
    pub verified: usize,
    /// Stored, but the primary holds other bytes.
    pub changed: usize,
    /// Data set bytes sent.
    pub bytes: u64,
    /// Seconds retrieving, sending and verifying (planning not included).
    pub seconds: f64,
    /// Only planned, nothing sent.
    pub dry_run: bool,
    /// Every instance not verified, with why.
    pub not_verified: Vec<InstanceResult>,
}

impl FailbackReport {
    /// The report of a plan before anything is sent.
    pub fn of_plan(plan: &Plan) -> Self {
        FailbackReport {
            mirror: plan.mirror.clone(),
            primary: plan.primary.clone(),
            since: plan.since.clone(),
            studies_on_mirror: plan.studies_on_mirror,
            studies_complete: plan.studies_complete,
            truncated: plan.truncated,
            undated_on_mirror: plan.undated_on_mirror,
            studies: plan.studies.len(),
            instances: plan.instances(),
            ..FailbackReport::default()
        }
    }

    /// Every study of the window was looked at, and every missing instance
    /// is now on the primary with the bytes sent.
    pub fn complete(&self) -> bool {
        !self.truncated
            && self.stopped.is_none()
            && self.verified == self.instances
            && self.not_verified.is_empty()
    }

    fn add(&mut self, r: InstanceResult) {
        match r.outcome {
            Outcome::Verified => {
                self.verified += 1;
                if r.reencoded_to.is_some() {
                    self.reencoded += 1;
                }
            }
            Outcome::Changed(_) => {
                self.changed += 1;
                self.not_verified.push(r);
            }
            _ => self.not_verified.push(r),
        }
    }
}

/// Send what `plan` lists, verifying every instance; `progress` is called
/// once per instance. Scratch files go under `scratch` (created; each
/// study's files removed when it is done).
pub async fn run(
    plan: &Plan,
    settings: &FailbackSettings,
    scratch: &Path,
    progress: &(dyn Fn(&InstanceResult) + Send + Sync),
) -> Result<FailbackReport, FailbackError> {
    let start = Instant::now();
    std::fs::create_dir_all(scratch).map_err(|error| FailbackError::Scratch {
        path: scratch.display().to_string(),
        error,
    })?;
    let mut report = FailbackReport::of_plan(plan);
    let mut failures = AssociationFailures::default();
    for (n, study) in plan.studies.iter().enumerate() {
        if let Some(why) = failures.stop_reason(settings) {
            let why = format!("not attempted: the failback stopped ({why})");
            for s in &plan.studies[n..] {
                for i in &s.missing {
                    let r = result_of(s, i, None, Outcome::NotAttempted(why.clone()));
                    progress(&r);
                    report.add(r);
                }
            }
            report.stopped = Some(why);
            break;
        }
        let dir = scratch.join(format!("study-{n}"));
        let results = match std::fs::create_dir_all(&dir) {
            Ok(()) => failback_study(study, settings, &dir, &mut report, &mut failures).await,
            Err(e) => study
                .missing
                .iter()
                .map(|i| result_of(study, i, None, Outcome::RetrieveFailed(e.to_string())))
                .collect(),
        };
        let _ = std::fs::remove_dir_all(&dir);
        for r in results {
            progress(&r);
            report.add(r);
        }
    }
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// Consecutive failures to associate, per peer.
#[derive(Debug, Default)]
struct AssociationFailures {
    mirror: u32,
    primary: u32,
}

impl AssociationFailures {
    /// Note an association attempt (None: none was made).
    fn note(&mut self, to_mirror: bool, associated: Option<bool>) {
        let n = if to_mirror {
            &mut self.mirror
        } else {
            &mut self.primary
        };
        match associated {
            Some(true) => *n = 0,
            Some(false) => *n += 1,
            None => {}
        }
    }

    /// Why to stop, if a peer failed [`MAX_ASSOCIATION_FAILURES`] times in
    /// a row.
    fn stop_reason(&self, settings: &FailbackSettings) -> Option<String> {
        let (peer, n) = if self.mirror >= MAX_ASSOCIATION_FAILURES {
            (&settings.mirror, self.mirror)
        } else if self.primary >= MAX_ASSOCIATION_FAILURES {
            (&settings.primary, self.primary)
        } else {
            return None;
        };
        Some(format!(
            "{n} consecutive association failures to {}",
            census::describe(peer)
        ))
    }
}

fn result_of(
    study: &PlannedStudy,
    i: &PlannedInstance,
    got: Option<&RetrievedInstance>,
    outcome: Outcome,
) -> InstanceResult {
    InstanceResult {
        study_instance_uid: study.study_instance_uid.clone(),
        sop_instance_uid: i.sop_instance_uid.clone(),
        blake3: got.map(RetrievedInstance::blake3_hex).unwrap_or_default(),
        sent_blake3: String::new(),
        reencoded_to: None,
        bytes: got.map_or(0, |g| g.dataset_bytes),
        outcome,
    }
}

/// [`result_of`] for an instance that was sent (as retrieved, or re-encoded).
fn sent_result(
    study: &PlannedStudy,
    i: &PlannedInstance,
    g: &RetrievedInstance,
    reencoded: Option<&Reencoded>,
    outcome: Outcome,
) -> InstanceResult {
    let mut r = result_of(study, i, Some(g), outcome);
    r.sent_blake3 = match reencoded {
        Some(e) => blake3::Hash::from_bytes(e.blake3).to_hex().to_string(),
        None => r.blake3.clone(),
    };
    r.reencoded_to = reencoded.map(|e| e.transfer_syntax_uid.clone());
    r
}

/// Retrieve, store and verify one study's missing instances.
async fn failback_study(
    study: &PlannedStudy,
    settings: &FailbackSettings,
    dir: &Path,
    report: &mut FailbackReport,
    failures: &mut AssociationFailures,
) -> Vec<InstanceResult> {
    let uid = &study.study_instance_uid;
    // 1. From the mirror.
    let contexts = qr::storage_contexts_with(study.missing.iter().flat_map(|i| {
        let tss: &[&str] = if qr::COMMON_UNCOMPRESSED_STORAGE.contains(&i.sop_class_uid.as_str()) {
            qr::UNCOMPRESSED_TRANSFER_SYNTAXES
        } else {
            qr::IMAGE_TRANSFER_SYNTAXES
        };
        tss.iter().map(|ts| StorageContext {
            sop_class_uid: i.sop_class_uid.clone(),
            transfer_syntax_uid: ts.to_string(),
        })
    }));
    let wanted: Vec<&PlannedInstance> = study.missing.iter().collect();
    let (got, why_not, associated) = get_instances(
        &settings.mirror,
        contexts,
        uid,
        &wanted,
        &dir.join("mirror"),
    )
    .await;
    failures.note(true, associated);
    let mut results = Vec::new();
    let mut to_send: Vec<(&PlannedInstance, RetrievedInstance)> = Vec::new();
    for i in &study.missing {
        match got.get(&i.sop_instance_uid) {
            Some(g) => to_send.push((i, g.clone())),
            None => results.push(result_of(
                study,
                i,
                None,
                Outcome::RetrieveFailed(why_not(&i.sop_instance_uid)),
            )),
        }
    }
    report.retrieved += to_send.len();
    // 2. To the primary.
    let (stored, associated) = store_all(&settings.primary, &to_send).await;
    failures.note(false, associated);
    let mut sent: Vec<(&PlannedInstance, &RetrievedInstance, Option<Reencoded>)> = Vec::new();
    for ((i, g), outcome) in to_send.iter().zip(stored) {
        match outcome {
            Ok(reencoded) => {
                report.stored += 1;
                report.bytes += g.dataset_bytes;
                sent.push((i, g, reencoded));
            }
            Err(e) => results.push(result_of(
                study,
                i,
                Some(g),
                Outcome::StoreFailed(e.to_string()),
            )),
        }
        let _ = std::fs::remove_file(&g.path);
    }
    if sent.is_empty() {
        return results;
    }
    // 3. Listed by the primary, then read back and compared.
    let listed = match Session::open(&settings.primary).await {
        Ok(mut s) => {
            failures.note(false, Some(true));
            let r = s.instances(uid).await;
            s.close().await;
            r.map_err(|e| e.to_string())
        }
        Err(e) => {
            failures.note(false, Some(false));
            Err(e.to_string())
        }
    };
    let listed = match listed {
        Ok(l) => l,
        Err(e) => {
            for (i, g, re) in sent {
                let why = format!("stored, but the primary could not be asked: {e}");
                results.push(sent_result(
                    study,
                    i,
                    g,
                    re.as_ref(),
                    Outcome::VerifyFailed(why),
                ));
            }
            return results;
        }
    };
    let (present, absent): (Vec<_>, Vec<_>) = sent
        .into_iter()
        .partition(|(i, _, _)| listed.contains_key(&i.sop_instance_uid));
    for (i, g, re) in absent {
        let why = "stored (the primary answered Success) but the primary does not list it".into();
        results.push(sent_result(study, i, g, re.as_ref(), Outcome::Missing(why)));
    }
    // Offer both the original transfer syntax and the one we sent in.
    let contexts = qr::storage_contexts_with(present.iter().flat_map(|(_, g, re)| {
        std::iter::once(g.transfer_syntax_uid.clone())
            .chain(re.iter().map(|e| e.transfer_syntax_uid.clone()))
            .map(|ts| StorageContext {
                sop_class_uid: g.sop_class_uid.clone(),
                transfer_syntax_uid: ts,
            })
    }));
    let wanted: Vec<&PlannedInstance> = present.iter().map(|(i, _, _)| *i).collect();
    let (back, why_not, associated) = get_instances(
        &settings.primary,
        contexts,
        uid,
        &wanted,
        &dir.join("primary"),
    )
    .await;
    failures.note(false, associated);
    for (i, g, re) in present {
        let outcome = match back.get(&i.sop_instance_uid) {
            Some(b) => verdict(g, re.as_ref(), b),
            None => Outcome::VerifyFailed(format!(
                "listed by the primary, not read back: {}",
                why_not(&i.sop_instance_uid)
            )),
        };
        results.push(sent_result(study, i, g, re.as_ref(), outcome));
    }
    results
}

/// Verified when the copy read back from the primary has the bytes
/// retrieved from the mirror or, when we re-encoded them, the bytes sent.
fn verdict(
    got: &RetrievedInstance,
    reencoded: Option<&Reencoded>,
    back: &RetrievedInstance,
) -> Outcome {
    if back.blake3 == got.blake3 || reencoded.is_some_and(|e| e.blake3 == back.blake3) {
        Outcome::Verified
    } else {
        Outcome::Changed(back.blake3_hex())
    }
}

/// C-GET these instances of `study` from `peer` into `dir` (per series, by
/// SOP Instance UID, on one association). Returns what arrived, by SOP
/// Instance UID, why a given one did not, and whether the association was
/// made (None: none was needed).
async fn get_instances(
    peer: &Peer,
    contexts: Vec<StorageContext>,
    study: &str,
    wanted: &[&PlannedInstance],
    dir: &Path,
) -> (
    HashMap<String, RetrievedInstance>,
    impl Fn(&str) -> String + use<>,
    Option<bool>,
) {
    let mut got: HashMap<String, RetrievedInstance> = HashMap::new();
    let mut why: HashMap<String, String> = HashMap::new();
    let mut general: Option<String> = None;
    let mut by_series: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for i in wanted {
        if i.series_instance_uid.is_empty() {
            why.insert(
                i.sop_instance_uid.clone(),
                "the peer did not give its Series Instance UID".into(),
            );
        } else {
            by_series
                .entry(i.series_instance_uid.as_str())
                .or_default()
                .push(i.sop_instance_uid.clone());
        }
    }
    // The copies are hashed as they arrive and removed after use: no fsync.
    let options = QrOptions {
        fsync: false,
        ..QrOptions::default()
    };
    let mut associated = None;
    if !by_series.is_empty() {
        match QrAssociation::connect(peer, &[Service::Get(contexts)]).await {
            Err(e) => {
                associated = Some(false);
                general = Some(format!("C-GET association: {e}"));
            }
            Ok(mut a) => {
                associated = Some(true);
                'series: for (series, sops) in &by_series {
                    for batch in sops.chunks(GET_BATCH) {
                        let target = RetrieveTarget::Instances {
                            study_instance_uid: study.to_string(),
                            series_instance_uid: series.to_string(),
                            sop_instance_uids: batch.to_vec(),
                        };
                        match a.get(&target, dir, &options).await {
                            Ok(outcome) => note_get(outcome, batch, &mut got, &mut why),
                            Err(e) => {
                                general = Some(format!("C-GET: {e}"));
                                break 'series;
                            }
                        }
                    }
                }
                a.release().await;
            }
        }
    }
    let explain = move |sop: &str| {
        why.get(sop)
            .cloned()
            .or_else(|| general.clone())
            .unwrap_or_else(|| "not sent by the peer".into())
    };
    (got, explain, associated)
}

fn note_get(
    outcome: GetOutcome,
    batch: &[String],
    got: &mut HashMap<String, RetrievedInstance>,
    why: &mut HashMap<String, String>,
) {
    for r in &outcome.refused {
        why.insert(
            r.sop_instance_uid.clone(),
            format!("refused by us: {}", r.reason),
        );
    }
    for f in &outcome.failed_sop_instance_uids {
        why.entry(f.clone())
            .or_insert_with(|| format!("the peer's sub-operation failed ({})", outcome.status));
    }
    let status = format!(
        "not sent by the peer (C-GET answered {}{})",
        outcome.status,
        outcome
            .error_comment
            .as_deref()
            .map(|c| format!(": {c}"))
            .unwrap_or_default()
    );
    for sop in batch {
        why.entry(sop.clone()).or_insert_with(|| status.clone());
    }
    for i in outcome.instances {
        if batch.contains(&i.sop_instance_uid) {
            why.remove(&i.sop_instance_uid);
            got.insert(i.sop_instance_uid.clone(), i);
        } else {
            // Not asked for: not ours to send.
            let _ = std::fs::remove_file(&i.path);
        }
    }
}

/// Why an object was not stored into the primary.
#[derive(Debug, Clone, thiserror::Error)]
enum NotStored {
    /// The primary answered a failure status.
    #[error("the primary answered {0}")]
    Refused(pacs_mirror_dicom::dimse::Status),
    /// The association or the transfer failed.
    #[error(transparent)]
    Failed(Arc<scu::ScuError>),
    /// The association broke before its turn, and every attempt is spent.
    #[error("not sent")]
    NotSent,
    /// The primary refuses associations: the rest of the objects were not
    /// tried.
    #[error("not sent: no association to the primary")]
    NoAssociation,
}

/// C-STORE each object, in chunks of [`STORE_CHUNK`] per association; an
/// association that breaks is opened again for what is left (up to
/// [`STORE_ATTEMPTS`]). One result per object, in order (Ok: stored, with
/// our re-encoding if the data set was re-encoded), and whether the last
/// association attempt succeeded (None: none was made).
async fn store_all(
    peer: &Peer,
    objects: &[(&PlannedInstance, RetrievedInstance)],
) -> (Vec<Result<Option<Reencoded>, NotStored>>, Option<bool>) {
    let mut out = Vec::with_capacity(objects.len());
    let mut associated = None;
    for chunk in objects.chunks(STORE_CHUNK) {
        let outgoing: Vec<Outgoing> = chunk
            .iter()
            .map(|(_, g)| Outgoing {
                path: g.path.clone(),
                memory: None,
                sop_class_uid: g.sop_class_uid.clone(),
                sop_instance_uid: g.sop_instance_uid.clone(),
                transfer_syntax_uid: g.transfer_syntax_uid.clone(),
                dataset_blake3: None,
            })
            .collect();
        let mut results: Vec<Option<Result<Option<Reencoded>, NotStored>>> =
            vec![None; outgoing.len()];
        let mut attempt = 0;
        while results.iter().any(Option::is_none) {
            attempt += 1;
            let left: Vec<usize> = (0..outgoing.len())
                .filter(|k| results[*k].is_none())
                .collect();
            let objects: Vec<Outgoing> = left.iter().map(|k| outgoing[*k].clone()).collect();
            let mut scu = match Scu::connect(peer, &scu::contexts_for(&objects)).await {
                Ok(s) => {
                    associated = Some(true);
                    s
                }
                Err(e) if e.is_transient() && attempt < STORE_ATTEMPTS => {
                    tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
                    continue;
                }
                Err(e) => {
                    associated = Some(false);
                    let e = Arc::new(e);
                    for k in left {
                        results[k] = Some(Err(NotStored::Failed(e.clone())));
                    }
                    break;
                }
            };
            let mut broken = false;
            for k in left {
                match scu.store_reporting(&outgoing[k]).await {
                    Ok((st, re)) if st.is_stored() => results[k] = Some(Ok(re)),
                    Ok((st, _)) => results[k] = Some(Err(NotStored::Refused(st))),
                    Err(e) if e.is_transient() && attempt < STORE_ATTEMPTS => {
                        broken = true;
                        break;
                    }
                    Err(e) => results[k] = Some(Err(NotStored::Failed(Arc::new(e)))),
                }
            }
            if broken {
                scu.abort().await;
            } else {
                scu.release().await;
            }
        }
        out.extend(
            results
                .into_iter()
                .map(|r| r.unwrap_or(Err(NotStored::NotSent))),
        );
        // A peer that refuses associations: the next chunks would too.
        if associated == Some(false) {
            let left = objects.len() - out.len();
            out.extend((0..left).map(|_| Err(NotStored::NoAssociation)));
            break;
        }
    }
    (out, associated)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(outcome: Outcome) -> InstanceResult {
        InstanceResult {
            study_instance_uid: "1.2".into(),
            sop_instance_uid: "1.2.3".into(),
            blake3: String::new(),
            sent_blake3: String::new(),
            reencoded_to: None,
            bytes: 0,
            outcome,
        }
    }

    fn study(uid: &str, sops: &[&str]) -> PlannedStudy {
        PlannedStudy {
            study_instance_uid: uid.into(),
            patient_id: String::new(),
            patient_name: String::new(),
            study_date: String::new(),
            on_mirror: sops.len(),
            on_primary: Some(0),
            missing: sops
                .iter()
                .map(|s| PlannedInstance {
                    sop_instance_uid: s.to_string(),
                    series_instance_uid: format!("{uid}.1"),
                    sop_class_uid: "1.2.840.10008.5.1.4.1.1.7".into(),
                })
                .collect(),
        }
    }

    /// A mirror capped answer or a failback that stopped is never complete.
    #[test]
    fn a_capped_census_or_a_stop_is_never_complete() {
        let capped = Plan {
            studies_on_mirror: 100,
            truncated: true,
            ..Plan::default()
        };
        let r = FailbackReport::of_plan(&capped);
        assert!(r.truncated);
        assert_eq!(r.instances, 0);
        assert!(!r.complete(), "studies past the cap were never looked at");
        let mut stopped = FailbackReport::of_plan(&Plan::default());
        stopped.stopped = Some("3 consecutive association failures".into());
        assert!(!stopped.complete());
    }

    fn retrieved(hash: u8) -> RetrievedInstance {
        RetrievedInstance {
            sop_instance_uid: "1.2.3".into(),
            sop_class_uid: "1.2".into(),
            transfer_syntax_uid: "1.2.840.10008.1.2.1".into(),
            blake3: [hash; 32],
            dataset_bytes: 1,
            path: "x".into(),
            dataset_offset: 0,
            first_byte_after: Duration::ZERO,
            last_byte_after: Duration::ZERO,
        }
    }

    /// Our own re-encoding is not a change by the primary.
    #[test]
    fn our_reencoding_is_verified_by_the_bytes_sent() {
        let got = retrieved(1);
        let re = Reencoded {
            transfer_syntax_uid: "1.2.840.10008.1.2".into(),
            blake3: [2; 32],
        };
        assert_eq!(verdict(&got, None, &retrieved(1)), Outcome::Verified);
        assert_eq!(verdict(&got, Some(&re), &retrieved(2)), Outcome::Verified);
        assert_eq!(verdict(&got, Some(&re), &retrieved(1)), Outcome::Verified);
        assert!(matches!(
            verdict(&got, None, &retrieved(2)),
            Outcome::Changed(_)
        ));
        assert!(matches!(
            verdict(&got, Some(&re), &retrieved(3)),
            Outcome::Changed(_)
        ));
        let i = &study("1.2", &["1.2.3"]).missing[0];
        let r = sent_result(
            &study("1.2", &["1.2.3"]),
            i,
            &got,
            Some(&re),
            Outcome::Verified,
        );
        assert_eq!(r.blake3, hex(1));
        assert_eq!(r.sent_blake3, hex(2), "the hash of what was sent");
        assert_eq!(r.reencoded_to.as_deref(), Some("1.2.840.10008.1.2"));
        let mut report = FailbackReport {
            instances: 1,
            ..FailbackReport::default()
        };
        report.add(r);
        assert_eq!((report.verified, report.reencoded), (1, 1));
        assert!(report.complete());
    }

    fn hex(b: u8) -> String {
        blake3::Hash::from_bytes([b; 32]).to_hex().to_string()
    }

    /// A mirror that refuses every association: three studies are tried,
    /// the rest reported as not attempted.
    #[tokio::test]
    async fn three_association_failures_stop_the_failback() {
        // A port nobody listens on: connections are refused at once.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let peer = |ae: &str| Peer {
            calling_ae: "US".into(),
            called_ae: ae.into(),
            host: "127.0.0.1".into(),
            port,
            timeout: Duration::from_secs(5),
            tls: None,
            pace: None,
        };
        let settings = FailbackSettings {
            mirror: peer("MIRROR"),
            primary: peer("PRIMARY"),
            since: "20240101".into(),
            include_undated: false,
        };
        let plan = Plan {
            studies: (1..=5)
                .map(|n| {
                    study(
                        &format!("1.{n}"),
                        &[&format!("1.{n}.1"), &format!("1.{n}.2")],
                    )
                })
                .collect(),
            ..Plan::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let seen = std::sync::Mutex::new(0usize);
        let progress = |_: &InstanceResult| *seen.lock().unwrap() += 1;
        let report = run(&plan, &settings, dir.path(), &progress).await.unwrap();
        assert_eq!(*seen.lock().unwrap(), 10, "one progress call per instance");
        assert!(!report.complete());
        let why = report.stopped.as_deref().expect("stopped");
        assert!(
            why.contains("3 consecutive association failures to MIRROR@"),
            "{why}"
        );
        let not_attempted: Vec<&str> = report
            .not_verified
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::NotAttempted(_)))
            .map(|r| r.study_instance_uid.as_str())
            .collect();
        assert_eq!(not_attempted, ["1.4", "1.4", "1.5", "1.5"]);
        let retrieve_failed = report
            .not_verified
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::RetrieveFailed(_)))
            .count();
        assert_eq!(retrieve_failed, 6, "studies 1.1 to 1.3 were tried");
    }

    #[test]
    fn only_verified_instances_make_a_complete_report() {
        let plan = Plan {
            studies: vec![PlannedStudy {
                study_instance_uid: "1.2".into(),
                patient_id: String::new(),
                patient_name: String::new(),
                study_date: String::new(),
                on_mirror: 2,
                on_primary: Some(0),
                missing: vec![
                    planned(&InstanceMatch {
                        sop_instance_uid: "1.2.3".into(),
                        ..InstanceMatch::default()
                    }),
                    planned(&InstanceMatch {
                        sop_instance_uid: "1.2.4".into(),
                        ..InstanceMatch::default()
                    }),
                ],
            }],
            ..Plan::default()
        };
        let mut r = FailbackReport::of_plan(&plan);
        assert_eq!((r.studies, r.instances), (1, 2));
        r.add(result(Outcome::Verified));
        assert!(!r.complete());
        let mut changed = r.clone();
        changed.add(result(Outcome::Changed("ab".into())));
        assert!(!changed.complete());
        assert_eq!((changed.changed, changed.not_verified.len()), (1, 1));
        r.add(result(Outcome::Verified));
        assert!(r.complete());
        assert!(
            FailbackReport::of_plan(&Plan::default()).complete(),
            "nothing to do"
        );
    }

    #[test]
    fn get_outcomes_say_why_an_instance_did_not_come() {
        let outcome = GetOutcome {
            status: pacs_mirror_dicom::dimse::Status::Warning(0xB000),
            sub_operations: Default::default(),
            instances: Vec::new(),
            refused: vec![qr::RefusedSubOperation {
                sop_instance_uid: "1.1".into(),
                sop_class_uid: "1.2".into(),
                status: pacs_mirror_dicom::dimse::Status::from_code(0xA900),
                reason: "no context".into(),
            }],
            failed_sop_instance_uids: vec!["1.2".into()],
            error_comment: None,
            cancelled: false,
            elapsed: Duration::ZERO,
        };
        let (mut got, mut why) = (HashMap::new(), HashMap::new());
        let batch = ["1.1".to_string(), "1.2".to_string(), "1.3".to_string()];
        note_get(outcome, &batch, &mut got, &mut why);
        assert!(got.is_empty());
        assert!(why["1.1"].contains("no context"), "{why:?}");
        assert!(why["1.2"].contains("sub-operation failed"), "{why:?}");
        assert!(why["1.3"].contains("not sent by the peer"), "{why:?}");
    }
}
