//! The object-store path end to end inside one process: spool files and
//! index rows as recovery makes them, a folder bucket, the real workers and
//! publisher.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::bucket::{Bucket, BucketSettings, object_key};
use pacs_mirror_dicom::part10::{Receipt, file_header};
use pacs_mirror_store::index::ObjectId;
use pacs_mirror_store::index::{MemKv, hash_hex};
use pacs_mirror_store::spool::SpoolLimits;

const SC: &str = "1.2.840.10008.5.1.4.1.1.7";

/// `n` objects spread over `studies` studies, written into the spool and
/// indexed with a pending row for `backup` (as start-up recovery does after
/// a crash). Returns (address, SOP Instance UID, study, file bytes).
fn seed(
    spool: &Spool,
    index: &Index,
    n: usize,
    studies: usize,
) -> Vec<(ObjectId, String, String, Vec<u8>)> {
    let mut out = Vec::new();
    for i in 0..n {
        let sop = format!("1.2.826.0.1.3680043.2.1143.{i}");
        let study = format!("1.2.826.0.1.3680043.2.1144.{}", i % studies);
        let mut body = pacs_mirror_dicom::testing::dataset_in_study(SC, &sop, "PID", &study);
        // a private OB element of its own length, so sizes differ
        body.extend_from_slice(&[0x09, 0, 0x10, 0x10, b'O', b'B', 0, 0]);
        let pad = 2 * (i % 300) + 2;
        body.extend_from_slice(&(pad as u32).to_le_bytes());
        body.extend((0..pad).map(|k| (k * 7 + i) as u8));
        let receipt = Receipt {
            source_ip: "192.0.2.7".into(),
            received_at_ms: 1234,
        };
        let mut file = file_header(SC, &sop, "1.2.840.10008.1.2.1", "MODALITY", &receipt).unwrap();
        file.extend_from_slice(&body);
        let hash = ObjectId::of(&body);
        std::fs::write(spool.object_path(&hash), &file).unwrap();
        out.push((hash, sop, study, file));
    }
    let report =
        pacs_mirror_store::recovery::recover(spool, index, &["backup".into()], true).unwrap();
    assert_eq!(report.reindexed, n);
    out
}

struct Rig {
    _dir: tempfile::TempDir,
    bucket_dir: std::path::PathBuf,
    bucket: Arc<Bucket>,
    replication: Replication,
}

fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(&dir.path().join("spool"), SpoolLimits::default()).unwrap();
    let bucket_dir = dir.path().join("bucket");
    std::fs::create_dir_all(&bucket_dir).unwrap();
    let bucket = Bucket::open(&BucketSettings {
        url: format!("file://{}", bucket_dir.display()),
        options: vec![],
        timeout: Duration::from_secs(5),
    })
    .unwrap();
    Rig {
        _dir: dir,
        bucket_dir,
        bucket: Arc::new(bucket),
        replication: Replication {
            index: Index::new(Arc::new(MemKv::default())),
            spool: Arc::new(spool),
        },
    }
}

fn start(rig: &Rig) -> (CancellationToken, tokio_util::task::TaskTracker) {
    let (shutdown, tracker, _) = start_with_health(rig);
    (shutdown, tracker)
}

fn start_with_health(rig: &Rig) -> (CancellationToken, tokio_util::task::TaskTracker, Health) {
    let shutdown = CancellationToken::new();
    let tracker = tokio_util::task::TaskTracker::new();
    let health = spawn(
        &rig.replication,
        TargetSpec {
            name: "backup".into(),
            destination: Destination::Bucket(rig.bucket.clone()),
            workers: 2,
            concurrency: 6,
            backoff: Backoff {
                initial_ms: 20,
                max_ms: 100,
            },
            refused_attempts: 3,
            pacer: None,
            live_window_ms: 300_000,
            commitment: None,
        },
        &crate::worker::Workers::default(),
        &shutdown,
        &tracker,
    );
    (shutdown, tracker, health)
}

async fn stop(shutdown: CancellationToken, tracker: tokio_util::task::TaskTracker) {
    shutdown.cancel();
    tracker.close();
    tokio::time::timeout(Duration::from_secs(20), tracker.wait())
        .await
        .expect("workers and publisher stop");
}

/// Wait until nothing is pending for `backup`, then stop the workers and
/// the publisher.
async fn drained(
    index: &Index,
    shutdown: CancellationToken,
    tracker: tokio_util::task::TaskTracker,
) {
    wait_until("every row delivered", || {
        index.outbox_summary("backup").unwrap().pending == 0
    })
    .await;
    stop(shutdown, tracker).await;
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the bucket's manifests list: SOP Instance UID → (study, key, file blake3).
async fn listed(bucket: &Bucket) -> BTreeMap<String, (String, String, String)> {
    let mut out = BTreeMap::new();
    for m in bucket.manifests().await.unwrap() {
        for e in m.instances {
            assert_eq!(e.record.study_instance_uid, m.study_instance_uid);
            let before = out.insert(
                e.record.sop_instance_uid.clone(),
                (m.study_instance_uid.clone(), e.key, e.file_blake3),
            );
            assert!(
                before.is_none(),
                "{} listed twice",
                e.record.sop_instance_uid
            );
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_object_is_uploaded_once_listed_in_its_study_and_then_delivered() {
    let rig = rig();
    // more than two batches per worker, so batches wait for the publisher
    let objects = seed(&rig.replication.spool, &rig.replication.index, 300, 3);
    let (shutdown, tracker, health) = start_with_health(&rig);
    let index = rig.replication.index.clone();
    drained(&index, shutdown, tracker).await;
    // Uploads took permits of the target's limiter (concurrency 6: it
    // starts at 6, never above), all given back; `status` shows them.
    let uploads = health.lock().unwrap().uploads.expect("uploads shown");
    assert_eq!((uploads.in_use, uploads.max), (0, 6));
    assert!((1..=6).contains(&uploads.limit), "{uploads:?}");

    let summary = index.outbox_summary("backup").unwrap();
    assert_eq!((summary.delivered, summary.dead_letters), (300, 0));
    // The blobs: exactly the objects, each the file's bytes.
    let stored: BTreeSet<ObjectId> = rig
        .bucket
        .objects()
        .await
        .unwrap()
        .into_iter()
        .map(|(h, _)| h)
        .collect();
    assert_eq!(stored, objects.iter().map(|o| o.0).collect());
    let want: BTreeMap<String, (String, String, String)> = objects
        .iter()
        .map(|(hash, sop, study, file)| {
            (
                sop.clone(),
                (
                    study.clone(),
                    object_key(hash),
                    blake3::hash(file).to_hex().to_string(),
                ),
            )
        })
        .collect();
    for (hash, _, _, file) in &objects {
        let on_disk = std::fs::read(rig.bucket_dir.join(object_key(hash))).unwrap();
        assert!(
            on_disk == *file,
            "{} differs from its spool file",
            hash_hex(hash)
        );
    }
    // The manifests: each instance once, in its own study, with its key and hash.
    assert_eq!(listed(&rig.bucket).await, want);
    assert_eq!(rig.bucket.manifests().await.unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_delivered_before_its_manifest_entry_is_written() {
    let rig = rig();
    let objects = seed(&rig.replication.spool, &rig.replication.index, 80, 2);
    // A file where the manifests' folder should be: every manifest write
    // fails, every blob write succeeds.
    let blocker = rig.bucket_dir.join("studies");
    std::fs::write(&blocker, b"not a folder").unwrap();
    let (shutdown, tracker) = start(&rig);
    let index = rig.replication.index.clone();
    let objects_dir = rig.bucket_dir.join("objects");
    wait_until("every blob uploaded", || {
        objects
            .iter()
            .all(|(h, ..)| rig.bucket_dir.join(object_key(h)).is_file())
    })
    .await;
    // A few more rounds of the publisher failing.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let summary = index.outbox_summary("backup").unwrap();
    assert_eq!((summary.delivered, summary.pending), (0, 80), "{summary:?}");
    assert!(objects_dir.is_dir());

    // The manifests can be written again: everything is delivered, and the
    // blobs (already there) are verified, not written twice.
    std::fs::remove_file(&blocker).unwrap();
    drained(&index, shutdown, tracker).await;
    let summary = index.outbox_summary("backup").unwrap();
    assert_eq!((summary.delivered, summary.dead_letters), (80, 0));
    let listed = listed(&rig.bucket).await;
    assert_eq!(
        listed.keys().cloned().collect::<BTreeSet<_>>(),
        objects.iter().map(|o| o.1.clone()).collect()
    );
}
