//! Bringing data back from an object-storage target, reading only the
//! bucket: `restore` (C-STORE every selected object into a PACS) and
//! `reindex --from` (rebuild the agent's index).
//!
//! Neither needs the agent's local index or spool: the agent machine may be
//! gone. What is in the bucket is found from the study manifests, plus a
//! listing of `objects/` for blobs no manifest names (an upload cut off
//! between its blob and its manifest entry).
//!
//! Every object is downloaded to a scratch file and its data set hashed to
//! its key **before** it is sent; an object that does not match is reported
//! and never sent. Scratch files are removed as soon as they are sent.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::Serialize;

use crate::bucket::manifest::{ManifestEntry, StudyManifest};
use crate::bucket::{Bucket, BucketError};
use crate::dimse::Status;
use crate::index::{Hash, Index, IndexError, hash_hex, parse_hash};
use crate::scu::{self, Outgoing, Peer, Scu};

/// Objects sent per association (within the 128 presentation contexts an
/// association can carry).
const CHUNK: usize = 64;
/// Downloads in flight per association.
const DOWNLOADS: usize = 8;
/// Attempts of a chunk whose association failed for a network reason.
const CHUNK_ATTEMPTS: u32 = 3;

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
        if !self.studies.is_empty() && !self.studies.contains(&m.study_instance_uid) {
            return false;
        }
        if let Some(p) = &self.patient_id
            && m.patient_id.trim() != p.trim()
        {
            return false;
        }
        if let Some(since) = &self.since {
            let date = if m.study_date.len() == 8 {
                m.study_date.clone()
            } else {
                m.instances
                    .iter()
                    .map(|e| yyyymmdd_of_ms(e.record.received_at_ms))
                    .min()
                    .unwrap_or_default()
            };
            if date.as_str() < since.as_str() {
                return false;
            }
        }
        true
    }
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
    let (y, m, d, ..) = crate::utc_datetime(ms);
    format!("{y:04}{m:02}{d:02}")
}

/// One object to send.
#[derive(Debug, Clone)]
pub struct Planned {
    /// Its address (the key).
    pub hash: Hash,
    /// From its manifest entry (`None`: a blob no manifest names; its
    /// identity is read from the file once downloaded).
    pub entry: Option<ManifestEntry>,
    /// Its size in the bucket.
    pub bytes: u64,
}

/// What will be restored.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// The objects, study by study.
    pub objects: Vec<Planned>,
    /// Studies selected.
    pub studies: usize,
    /// Older versions of SOP instances not sent (`all_versions` off).
    pub older_versions_skipped: usize,
    /// Blobs named by no manifest (included when everything is restored).
    pub unlisted_blobs: usize,
    /// Manifest entries whose blob is missing from the bucket.
    pub missing_blobs: Vec<String>,
}

impl Plan {
    /// Total bytes to download.
    pub fn bytes(&self) -> u64 {
        self.objects.iter().map(|o| o.bytes).sum()
    }
}

/// Read the bucket and decide what to send.
pub async fn plan(bucket: &Bucket, selection: &Selection) -> Result<Plan, RestoreError> {
    let manifests = bucket.manifests().await?;
    let blobs: HashMap<Hash, u64> = bucket.objects().await?.into_iter().collect();
    let mut listed: HashSet<Hash> = HashSet::new();
    let mut plan = Plan::default();
    for m in &manifests {
        for e in &m.instances {
            if let Ok(h) = parse_hash(&e.record.blake3) {
                listed.insert(h);
            }
        }
        if !selection.wants(m) {
            continue;
        }
        plan.studies += 1;
        // Newest version of each SOP instance unless all are wanted.
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
    let mut unlisted: Vec<(&Hash, &u64)> =
        blobs.iter().filter(|(h, _)| !listed.contains(*h)).collect();
    unlisted.sort();
    plan.unlisted_blobs = unlisted.len();
    if selection.is_everything() {
        for (h, bytes) in unlisted {
            plan.objects.push(Planned {
                hash: *h,
                entry: None,
                bytes: *bytes,
            });
        }
    }
    Ok(plan)
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
    /// Blobs named by no manifest (restored when everything is).
    pub unlisted_blobs: usize,
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
            async move {
                let dir = settings.scratch.join(format!("chunk-{n}"));
                let out = send_chunk(bucket, chunk, &settings.peer, &dir, progress.as_ref()).await;
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
                    let (bucket, hash, file) =
                        (&bucket, chunk[i].hash, dir.join(format!("{i}.dcm")));
                    async move { (i, bucket.download(&hash, &file).await) }
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
        let (o, bytes) = match verified(p, file_of(i), result) {
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
            ready.push((i, o, bytes));
            continue;
        };
        let outcome = match s.store(&o).await {
            Ok(st) => stored_outcome(st),
            Err(e) if e.is_transient() && attempt < CHUNK_ATTEMPTS => {
                broken = true;
                ready.push((i, o, bytes));
                continue;
            }
            Err(e) => Outcome::SendFailed(e.to_string()),
        };
        let _ = tokio::fs::remove_file(&o.path).await;
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
        sop_class_uid: e.record.sop_class_uid.clone(),
        sop_instance_uid: e.record.sop_instance_uid.clone(),
        transfer_syntax_uid: e.record.transfer_syntax_uid.clone(),
    }
}

/// A downloaded object ready to send, with its size, or why not: its data
/// set must hash to its key, and a blob no manifest names must be readable
/// as Part 10.
fn verified(
    p: &Planned,
    file: PathBuf,
    result: Result<crate::part10::StreamHashes, BucketError>,
) -> Result<(Outgoing, u64), Outcome> {
    match result {
        Ok(h) if h.dataset != p.hash => Err(Outcome::Corrupt(format!(
            "the data set hashes to {}, not to its key",
            hash_hex(&h.dataset)
        ))),
        Ok(h) => {
            let outgoing = match &p.entry {
                Some(e) => Ok(outgoing_of(e, file)),
                None => scu::outgoing(&file).map_err(|e| Outcome::Corrupt(e.to_string())),
            };
            outgoing.map(|o| (o, h.file_bytes))
        }
        Err(e) => Err(Outcome::DownloadFailed(e.to_string())),
    }
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
/// file to send them).
pub async fn reindex_from(
    bucket: &Bucket,
    index: &Index,
    spool: &crate::spool::Spool,
    target: &str,
) -> Result<ReindexReport, RestoreError> {
    let manifests = bucket.manifests().await?;
    let blobs: HashSet<Hash> = bucket
        .objects()
        .await?
        .into_iter()
        .map(|(h, _)| h)
        .collect();
    let mut report = ReindexReport {
        studies: manifests.len(),
        ..ReindexReport::default()
    };
    let mut listed = HashSet::new();
    let now = crate::unix_ms();
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
        use crate::bucket::manifest::tests::entry;
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
