//! The object-storage sender: a worker uploads its batch (create-only, see
//! [`crate::bucket`]), each upload holding a permit of the target's
//! [`super::adaptive::Limiter`] (uploads in flight adapt to what the store
//! delivers: more over a long round trip, fewer when it times out or
//! answers 5xx), and hands what was stored to the target's publisher, which
//! adds it to the study manifests and only then marks the rows delivered
//! (see [`super`]).

use std::collections::{BTreeMap, HashSet};

use futures::StreamExt;
use tokio::sync::mpsc;

use super::adaptive::Trouble;
use super::{Unreachable, Unsendable, Worker};
use crate::bucket::manifest::ManifestEntry;
use crate::bucket::{Bucket, BucketError, object_key};
use pacs_mirror_store::index::outbox::Due;
use pacs_mirror_store::index::{InstanceRecord, ObjectId, hash_hex};

/// Study manifests written at once by the publisher.
const MANIFESTS_IN_FLIGHT: usize = 4;

/// An object ready to upload.
struct Item<'a> {
    due: &'a Due,
    record: InstanceRecord,
}

/// Objects whose blobs are in the bucket, waiting for their manifest
/// entries; their claims are held until the publisher has recorded them.
pub(super) struct Stored(Vec<(Due, ManifestEntry)>);

impl Worker {
    /// Upload `due` and hand what was stored to the publisher. Returns `Err`
    /// when the store is unreachable (every attempt in the batch failed for
    /// a store or network reason; all rescheduled), and the objects handed
    /// over (the publisher releases their claims).
    pub(super) async fn send_bucket(
        &self,
        bucket: &Bucket,
        due: &[Due],
    ) -> (Result<(), Unreachable>, HashSet<ObjectId>) {
        let mut items = Vec::with_capacity(due.len());
        for d in due {
            match self.instance_record(d) {
                Ok(item) => items.push(item),
                Err(reason) => self.refused(d, &reason.to_string()),
            }
        }
        if items.is_empty() {
            return (Ok(()), HashSet::new());
        }
        let jobs: Vec<(
            usize,
            pacs_mirror_store::index::ObjectId,
            std::path::PathBuf,
        )> = items
            .iter()
            .enumerate()
            .map(|(i, item)| (i, item.due.hash, self.r.spool.object_path(&item.due.hash)))
            .collect();
        let sizes: Vec<u64> = items
            .iter()
            .map(|i| i.due.record.file_bytes.unwrap_or(0))
            .collect();
        // The first store or network failure stops the batch: uploads not
        // started yet are left due as they are (not counted as attempts),
        // so an unreachable store costs one round of timeouts, not one per
        // object, and the circuit opens at once.
        let unreachable = std::sync::atomic::AtomicBool::new(false);
        let results: Vec<(usize, Option<Result<crate::bucket::Uploaded, BucketError>>)> =
            futures::stream::iter(jobs)
                .map(|(i, hash, path)| {
                    let unreachable = &unreachable;
                    let size = sizes[i];
                    async move {
                        if unreachable.load(std::sync::atomic::Ordering::Relaxed) {
                            return (i, None);
                        }
                        let permit = self.limiter.acquire().await;
                        if unreachable.load(std::sync::atomic::Ordering::Relaxed) {
                            return (i, None);
                        }
                        self.show_uploads();
                        // `max_bandwidth`: the whole object's bytes before
                        // its upload starts.
                        if let Some(p) = &self.target.pacer {
                            p.take(size as usize).await;
                        }
                        let r = bucket.upload(&path, &hash).await;
                        match &r {
                            Ok(_) => self.limiter.delivered(size),
                            Err(e) if e.is_transient() => {
                                self.limiter.trouble(Trouble::Overload);
                                unreachable.store(true, std::sync::atomic::Ordering::Relaxed);
                            }
                            Err(_) => {}
                        }
                        drop(permit);
                        self.show_uploads();
                        (i, Some(r))
                    }
                })
                // The limiter bounds what is in flight; this only bounds
                // the futures polled at once.
                .buffer_unordered(self.target.concurrency.max(1))
                .collect()
                .await;
        let mut stored = Vec::new();
        let mut transient = None;
        for (i, result) in results {
            let item = &items[i];
            let Some(result) = result else {
                continue;
            };
            match result {
                Ok(up) => {
                    let mut record = item.record.clone();
                    // The manifest describes the bytes the bucket holds: when
                    // another agent's copy was there first, its provenance.
                    if let crate::bucket::Uploaded::AlreadyThere {
                        provenance: Some(p),
                        ..
                    } = &up
                    {
                        record.calling_ae = p.calling_ae.clone();
                        record.source_ip = p.source_ip.clone();
                        record.received_at_ms = p.received_at_ms;
                        record.file_bytes = p.file_bytes;
                    }
                    let entry = ManifestEntry {
                        record,
                        key: object_key(&item.due.hash),
                        file_blake3: hash_hex(&up.file_blake3()),
                    };
                    stored.push((item.due.clone(), entry));
                }
                Err(e) if e.is_transient() => {
                    self.retry(item.due, &e.to_string());
                    transient = Some(e);
                }
                Err(e) => self.refused(item.due, &e.to_string()),
            }
        }
        let any_stored = !stored.is_empty();
        let hashes: HashSet<ObjectId> = stored.iter().map(|(d, _)| d.hash).collect();
        let handed_over = match &self.publish {
            Some(publish) if any_stored => match publish.send(Stored(stored)).await {
                Ok(()) => hashes,
                Err(mpsc::error::SendError(Stored(back))) => {
                    // The publisher is gone (shutting down): left due, sent
                    // again (found in the bucket, verified) after the restart.
                    tracing::debug!(target = %self.target.name, objects = back.len(), "publisher stopped: uploads left due");
                    HashSet::new()
                }
            },
            // Nothing stored, or no publisher: nothing held, all left due.
            _ => HashSet::new(),
        };
        match transient {
            Some(e) if !any_stored => (Err(e.into()), handed_over),
            _ => (Ok(()), handed_over),
        }
    }

    /// The publisher: add what the workers stored to the study manifests,
    /// then record those deliveries and release their claims. Batches that
    /// wait meanwhile are merged, so a study's manifest is rewritten once
    /// for all of them. Ends when every worker has dropped its sender.
    pub(super) async fn publish(self, bucket: &Bucket, mut rx: mpsc::Receiver<Stored>) {
        while let Some(Stored(first)) = rx.recv().await {
            let mut objects = first;
            while let Ok(Stored(more)) = rx.try_recv() {
                objects.extend(more);
            }
            let started = std::time::Instant::now();
            let mut by_study: BTreeMap<String, Vec<(Due, ManifestEntry)>> = BTreeMap::new();
            for (due, entry) in objects {
                by_study
                    .entry(entry.record.study_instance_uid.clone())
                    .or_default()
                    .push((due, entry));
            }
            let studies = by_study.len();
            let written: Vec<_> = futures::stream::iter(by_study)
                .map(|(study, entries)| async move {
                    let list: Vec<ManifestEntry> = entries.iter().map(|(_, e)| e.clone()).collect();
                    (bucket.add_to_manifest(&study, &list).await, entries)
                })
                .buffer_unordered(MANIFESTS_IN_FLIGHT)
                .collect()
                .await;
            let mut done = Vec::new();
            for (result, entries) in written {
                match result {
                    Ok(()) => {
                        for (due, e) in &entries {
                            self.delivered(
                                due,
                                &e.record.sop_instance_uid,
                                Some(e.file_blake3.clone()),
                            );
                        }
                    }
                    Err(e) => {
                        let reason = format!("stored, but its study manifest was not updated: {e}");
                        for (due, _) in &entries {
                            if e.is_transient() {
                                self.retry(due, &reason);
                            } else {
                                self.refused(due, &reason);
                            }
                        }
                    }
                }
                done.extend(entries.into_iter().map(|(d, _)| d));
            }
            self.record_deliveries();
            if let Err(e) = self.r.index.flush() {
                tracing::error!(error = %e, "index flush after delivery failed (rows are re-sent if lost)");
            }
            self.release(&done);
            tracing::debug!(
                target = %self.target.name,
                objects = done.len(),
                studies,
                ms = started.elapsed().as_millis() as u64,
                "published"
            );
        }
    }

    /// Uploads in flight and the limit, for `status`.
    fn show_uploads(&self) {
        self.health().uploads = Some(self.limiter.snapshot());
    }

    /// What the manifest lists of an object: its index record (with the
    /// study date read from its file when the record predates it).
    fn instance_record<'a>(&self, d: &'a Due) -> Result<Item<'a>, Unsendable> {
        let object = self.object_record(d)?;
        let hex = hash_hex(&d.hash);
        let mut record = self
            .r
            .index
            .versions(&object.sop_instance_uid)?
            .into_iter()
            .find(|r| r.blake3 == hex)
            .ok_or(Unsendable::NoInstanceRecord(hex))?;
        // Indexed with the record; records written before it was kept
        // have none, and then it is read from the spool file.
        if record.study_date.is_empty() {
            let path = self.r.spool.object_path(&d.hash);
            record.study_date = pacs_mirror_dicom::part10::read_header(&path)
                .map(|h| h.study_date)
                .unwrap_or_default();
        }
        Ok(Item { due: d, record })
    }
}
