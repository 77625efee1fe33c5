//! The object-storage sender: a batch is uploaded with bounded concurrency
//! (create-only, see [`crate::bucket`]), then each study's manifest is
//! updated once for the batch, and only then are the rows marked delivered.

use std::collections::BTreeMap;

use futures::StreamExt;

use super::Worker;
use crate::bucket::manifest::ManifestEntry;
use crate::bucket::{Bucket, BucketError, object_key};
use crate::index::outbox::Due;
use crate::index::{InstanceRecord, hash_hex};

/// An object ready to upload.
struct Item<'a> {
    due: &'a Due,
    record: InstanceRecord,
    study_date: String,
}

impl Worker {
    /// Upload `due`; `Err` when the store is unreachable (every attempt in
    /// the batch failed for a store or network reason; all rescheduled).
    pub(super) async fn send_bucket(&self, bucket: &Bucket, due: &[Due]) -> Result<(), String> {
        let mut items = Vec::with_capacity(due.len());
        for d in due {
            match self.instance_record(d) {
                Ok(item) => items.push(item),
                Err(reason) => self.refused(d, &reason),
            }
        }
        if items.is_empty() {
            return Ok(());
        }
        let jobs: Vec<(usize, crate::index::Hash, std::path::PathBuf)> = items
            .iter()
            .enumerate()
            .map(|(i, item)| (i, item.due.hash, self.r.spool.object_path(&item.due.hash)))
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
                    async move {
                        if unreachable.load(std::sync::atomic::Ordering::Relaxed) {
                            return (i, None);
                        }
                        let r = bucket.upload(&path, &hash).await;
                        if matches!(&r, Err(e) if e.is_transient()) {
                            unreachable.store(true, std::sync::atomic::Ordering::Relaxed);
                        }
                        (i, Some(r))
                    }
                })
                .buffer_unordered(self.target.uploads_per_worker.max(1))
                .collect()
                .await;
        let mut stored: BTreeMap<String, Vec<(usize, ManifestEntry)>> = BTreeMap::new();
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
                        study_date: item.study_date.clone(),
                    };
                    stored
                        .entry(item.record.study_instance_uid.clone())
                        .or_default()
                        .push((i, entry));
                }
                Err(e) if e.is_transient() => {
                    self.retry(item.due, &e.to_string());
                    transient = Some(e.to_string());
                }
                Err(e) => self.refused(item.due, &e.to_string()),
            }
        }
        let mut any_delivered = false;
        for (study, entries) in stored {
            let list: Vec<ManifestEntry> = entries.iter().map(|(_, e)| e.clone()).collect();
            match bucket.add_to_manifest(&study, &list).await {
                Ok(()) => {
                    for (i, e) in entries {
                        any_delivered = true;
                        self.delivered(
                            items[i].due,
                            &e.record.sop_instance_uid,
                            Some(e.file_blake3),
                        );
                    }
                }
                Err(e) => {
                    let reason = format!("stored, but its study manifest was not updated: {e}");
                    for (i, _) in entries {
                        if e.is_transient() {
                            self.retry(items[i].due, &reason);
                        } else {
                            self.refused(items[i].due, &reason);
                        }
                    }
                    if e.is_transient() {
                        transient = Some(e.to_string());
                    }
                }
            }
        }
        match transient {
            Some(e) if !any_delivered => Err(e),
            _ => Ok(()),
        }
    }

    /// What the manifest lists of an object: its index record, and the
    /// study date read from its file.
    fn instance_record<'a>(&self, d: &'a Due) -> Result<Item<'a>, String> {
        let object = self.object_record(d)?;
        let hex = hash_hex(&d.hash);
        let record = self
            .r
            .index
            .versions(&object.sop_instance_uid)
            .map_err(|e| e.to_string())?
            .into_iter()
            .find(|r| r.blake3 == hex)
            .ok_or_else(|| format!("object {hex} has no instance record in the index"))?;
        let path = self.r.spool.object_path(&d.hash);
        let study_date = crate::part10::read_header(&path)
            .map(|h| h.study_date)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Item {
            due: d,
            record,
            study_date,
        })
    }
}
