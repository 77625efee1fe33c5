//! The group committer: makes received objects durable in the index, many at a
//! time, so that concurrent associations share one directory fsync per
//! directory and one index flush.
//!
//! # Invariants
//! - A job's reply is `Ok` only after, in this order: the spool directory
//!   holding its file was fsynced, its index rows were applied in one atomic
//!   batch, and the index was flushed (fsync) after that batch.
//! - Jobs are indexed one after another by a single thread, so duplicate and
//!   conflict detection sees every earlier job, even within one batch.
//! - If the directory fsync fails the job is not indexed; if the flush fails
//!   every job of the batch is answered with an error (the rows may become
//!   durable later, which is harmless: the files are durable and nothing was
//!   acknowledged).
//!
//! # Crash behaviour
//! A crash before the flush returns loses the batch's rows, none of which was
//! acknowledged; their files are re-indexed by start-up recovery.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::mpsc;

use tokio::sync::oneshot;

use crate::index::{CommitOutcome, Hash, Index, InstanceRecord};
use crate::spool::sync_dir;

/// Largest number of jobs committed by one flush.
const MAX_BATCH: usize = 1024;

/// A commit failure (answered with A700).
#[derive(Debug, thiserror::Error)]
#[error("index commit failed: {0}")]
pub struct CommitError(pub String);

struct Job {
    record: InstanceRecord,
    hash: Hash,
    dir: Option<PathBuf>,
    reply: oneshot::Sender<Result<CommitOutcome, CommitError>>,
}

/// Handle to the committer thread. Cloning shares the thread; it stops when
/// every handle is dropped.
#[derive(Clone)]
pub struct Committer {
    tx: mpsc::Sender<Job>,
}

impl Committer {
    /// Start the committer thread over `index`; new objects get an outbox row
    /// for each of `targets`.
    pub fn start(index: Index, targets: Vec<String>) -> Self {
        let (tx, rx) = mpsc::channel::<Job>();
        let spawned = std::thread::Builder::new()
            .name("pacs-mirror-commit".into())
            .spawn(move || run(index, targets, rx));
        if let Err(e) = spawned {
            // Without the thread every commit fails with "committer stopped":
            // stores are refused, never falsely acknowledged.
            tracing::error!(error = %e, "cannot start the index committer thread");
        }
        Committer { tx }
    }

    /// Commit one object: fsync `dir` (when the file was newly linked there),
    /// index `record`, flush. Returns once durable.
    pub async fn commit(
        &self,
        record: InstanceRecord,
        hash: Hash,
        dir: Option<PathBuf>,
    ) -> Result<CommitOutcome, CommitError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job {
                record,
                hash,
                dir,
                reply,
            })
            .map_err(|_| CommitError("committer stopped".into()))?;
        rx.await
            .map_err(|_| CommitError("committer stopped".into()))?
    }
}

fn now_ms() -> u64 {
    crate::unix_ms()
}

fn run(index: Index, targets: Vec<String>, rx: mpsc::Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let dirs: BTreeSet<PathBuf> = batch.iter().filter_map(|j| j.dir.clone()).collect();
        let mut failed_dirs = BTreeSet::new();
        for d in dirs {
            if let Err(e) = sync_dir(&d) {
                tracing::error!(error = %e, "spool directory fsync failed");
                failed_dirs.insert(d);
            }
        }
        let now = now_ms();
        let mut results: Vec<Result<CommitOutcome, CommitError>> = batch
            .iter()
            .map(|j| {
                if j.dir.as_ref().is_some_and(|d| failed_dirs.contains(d)) {
                    return Err(CommitError("spool directory fsync failed".into()));
                }
                index
                    .commit_instance(&j.record, &j.hash, &targets, now)
                    .map_err(|e| CommitError(e.to_string()))
            })
            .collect();
        if results.iter().any(Result::is_ok)
            && let Err(e) = index.flush()
        {
            tracing::error!(error = %e, "index flush failed");
            for r in &mut results {
                if r.is_ok() {
                    *r = Err(CommitError(format!("index flush: {e}")));
                }
            }
        }
        tracing::trace!(jobs = batch.len(), "group commit");
        for (job, result) in batch.into_iter().zip(results) {
            let _ = job.reply.send(result);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::{MemKv, hash_hex};
    use std::sync::Arc;

    fn rec(uid: &str, hash: &Hash) -> InstanceRecord {
        InstanceRecord {
            sop_instance_uid: uid.into(),
            sop_class_uid: "1.2".into(),
            transfer_syntax_uid: "1.2.840.10008.1.2".into(),
            blake3: hash_hex(hash),
            dataset_bytes: 1,
            file_bytes: 2,
            patient_id: String::new(),
            study_instance_uid: "1.3".into(),
            series_instance_uid: "1.4".into(),
            calling_ae: "A".into(),
            source_ip: "127.0.0.1".into(),
            received_at_ms: 0,
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn concurrent_jobs_see_each_other() {
        let index = Index::new(Arc::new(MemKv::default()));
        let c = Committer::start(index.clone(), vec!["t".into()]);
        let h = [9u8; 32];
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                c.commit(rec("1.2.3", &h), h, None).await
            }));
        }
        let mut new = 0;
        for t in tasks {
            match t.await.unwrap().unwrap() {
                CommitOutcome::New => new += 1,
                CommitOutcome::Duplicate => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(new, 1, "exactly one of 20 identical stores is new");
        assert_eq!(index.stats().unwrap().outbox.get("t"), Some(&1));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn failed_dir_fsync_is_not_indexed() {
        let index = Index::new(Arc::new(MemKv::default()));
        let c = Committer::start(index.clone(), vec![]);
        let h = [1u8; 32];
        let r = c
            .commit(rec("1.2.5", &h), h, Some(PathBuf::from("/nonexistent/dir")))
            .await;
        assert!(r.is_err());
        assert!(index.versions("1.2.5").unwrap().is_empty());
    }
}
