//! What the index takes on disk and in memory per instance.
//!
//! Commits N synthetic instances (realistic UIDs, studies of a few hundred
//! instances in a few series) through [`Index::commit_instance`] with two
//! targets (a DICOM mirror and a bucket), flushing every 500 like the group
//! committer, then delivers every one to both targets
//! ([`Index::mark_delivered_many`], 256 at a time, a flush after each), and
//! reports after each phase and after a reopen:
//!
//! - the bytes of the index directory (`du`: allocated blocks; and the
//!   files' apparent lengths) and sled's own `size_on_disk`, per instance;
//! - the logical bytes of the rows per table (key + value lengths, by the
//!   key's first two bytes), per instance;
//! - the process's resident set (VmRSS, and its peak VmHWM).
//!
//! ```text
//! cargo run --release -p pacs-mirror-store --example index_size -- 100000 [DIR] [cache MiB]
//! ```
//! DIR defaults to a fresh temporary directory (removed at the end). With
//! N = 0, DIR (made by an earlier run) is only opened and read through
//! once, as by a restart and its first `status`: the resident set of a
//! fresh process.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use pacs_mirror_store::index::outbox::Delivery;
use pacs_mirror_store::index::{
    Index, InstanceRecord, Kv, ObjectId, SledKv, SledOptions, hash_hex,
};
use rand::{Rng, SeedableRng};

const TARGETS: [&str; 2] = ["mirror", "bucket"];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: u64 = args.get(1).map_or(100_000, |s| s.parse().expect("N"));
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = args
        .get(2)
        .map_or_else(|| tmp.path().join("index"), std::path::PathBuf::from);
    let mut options = SledOptions::default();
    if let Some(mib) = args.get(3) {
        options.cache_bytes = mib.parse::<u64>().expect("cache MiB") << 20;
    }
    // The storage parameters of a new index, to compare them.
    if let Ok(v) = std::env::var("INDEX_COMPRESSION") {
        options.compression = v == "1";
    }
    if let Ok(v) = std::env::var("INDEX_COMPRESSION_LEVEL") {
        options.compression_level = v.parse().expect("INDEX_COMPRESSION_LEVEL");
    }
    if let Ok(v) = std::env::var("INDEX_SEGMENT_SIZE") {
        options.segment_size = v.parse().expect("INDEX_SEGMENT_SIZE");
    }
    println!(
        "{n} instances, 2 targets, index in {}, {options:?}",
        dir.display()
    );
    let started = std::time::Instant::now();
    if n == 0 {
        // An index made by an earlier run: what a restart costs.
        let kv = Arc::new(SledKv::open_with(&dir, &options).expect("open"));
        let index = Index::new(kv.clone());
        println!(
            "opened after {:.1} s; {}",
            started.elapsed().as_secs_f64(),
            rss()
        );
        let stats = index.stats().expect("stats");
        println!(
            "stats over {} objects after {:.1} s; {}",
            stats.objects,
            started.elapsed().as_secs_f64(),
            rss()
        );
        return;
    }
    let kv = Arc::new(SledKv::open_with(&dir, &options).expect("open"));
    let index = Index::new(kv.clone());
    let targets: Vec<String> = TARGETS.iter().map(|t| t.to_string()).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(19);
    let mut uids = Uids::default();
    let now = 1_765_000_000_000u64;
    for i in 0..n {
        let rec = uids.next(&mut rng, i, now);
        let hash = ObjectId::of(&i.to_le_bytes());
        let rec = InstanceRecord {
            blake3: hash_hex(&hash),
            ..rec
        };
        index
            .commit_instance(&rec, &hash, &targets, now + i)
            .expect("commit");
        if i % 500 == 499 {
            index.flush().expect("flush");
        }
    }
    index.flush().expect("flush");
    report("committed (2 queue rows each)", n, &dir, &kv, started);

    for target in TARGETS {
        loop {
            let due = index.due(target, u64::MAX, 256).expect("due");
            if due.is_empty() {
                break;
            }
            let deliveries: Vec<Delivery> = due
                .into_iter()
                .map(|d| Delivery {
                    stored_blake3: (target == "bucket")
                        .then(|| hash_hex(ObjectId::of(&d.hash[..]).bytes())),
                    delivered_at_ms: now + n + 1000,
                    due: d,
                })
                .collect();
            index
                .mark_delivered_many(target, &deliveries)
                .expect("deliver");
            index.flush().expect("flush");
        }
    }
    report("delivered to both", n, &dir, &kv, started);
    drop(index);
    drop(kv);
    let kv = Arc::new(SledKv::open_with(&dir, &options).expect("reopen"));
    report("reopened", n, &dir, &kv, started);
    if std::env::var("INDEX_REWRITE").is_ok() {
        // Every row copied in key order into a fresh index (what an
        // export and import would leave): the floor of what sled needs.
        let copy_dir = dir.with_extension("rewritten");
        let copy = Arc::new(SledKv::open_with(&copy_dir, &options).expect("open copy"));
        let mut batch = Vec::new();
        kv.for_each_prefix(b"", &mut |k, v| {
            batch.push(pacs_mirror_store::index::Op::Put(k.to_vec(), v.to_vec()));
            if batch.len() == 1000 {
                copy.apply(std::mem::take(&mut batch)).expect("apply");
            }
            true
        })
        .expect("scan");
        copy.apply(batch).expect("apply");
        copy.flush().expect("flush");
        report("rewritten in key order", n, &copy_dir, &copy, started);
    }
    // What a restart reads: every object row (the stats of `status`).
    let index = Index::new(kv.clone());
    let t = std::time::Instant::now();
    let stats = index.stats().expect("stats");
    println!(
        "  stats over {} objects took {:.1} s; {}",
        stats.objects,
        t.elapsed().as_secs_f64(),
        rss()
    );
}

/// Synthetic UIDs shaped like real ones: a root, random digits per study,
/// a few series per study, a few hundred instances per series.
#[derive(Default)]
struct Uids {
    study: String,
    series: String,
    patient: String,
    left_in_series: u32,
    left_in_study: u32,
}

impl Uids {
    fn next(&mut self, rng: &mut impl Rng, i: u64, now: u64) -> InstanceRecord {
        if self.left_in_study == 0 {
            self.study = format!(
                "1.2.840.113619.2.55.3.{}.{}.{}",
                rng.random_range(100_000_000u64..999_999_999),
                rng.random_range(100..999),
                rng.random_range(1_000_000_000u64..9_999_999_999)
            );
            self.patient = format!("PID{:08}", rng.random_range(0..99_999_999u32));
            self.left_in_study = rng.random_range(50..1000);
            self.left_in_series = 0;
        }
        if self.left_in_series == 0 {
            self.series = format!("{}.{}", self.study, rng.random_range(1..20u32));
            self.left_in_series = rng.random_range(20..400).min(self.left_in_study);
        }
        self.left_in_study -= 1;
        self.left_in_series = self.left_in_series.saturating_sub(1);
        let dataset_bytes = rng.random_range(100_000..600_000);
        InstanceRecord {
            sop_instance_uid: format!("{}.{}.{}", self.series, rng.random_range(1..9u32), i),
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
            transfer_syntax_uid: "1.2.840.10008.1.2.4.90".into(),
            blake3: String::new(),
            dataset_bytes,
            file_bytes: dataset_bytes + 332,
            patient_id: self.patient.clone(),
            study_instance_uid: self.study.clone(),
            series_instance_uid: self.series.clone(),
            calling_ae: "CT_SCANNER_01".into(),
            source_ip: "10.20.30.40".into(),
            received_at_ms: now + i,
            study_date: "20261207".into(),
            modality: "CT".into(),
            findings: Vec::new(),
        }
    }
}

fn report(phase: &str, n: u64, dir: &Path, kv: &SledKv, started: std::time::Instant) {
    let (allocated, apparent) = du(dir);
    let sled = kv.size_on_disk().expect("size_on_disk");
    let mut tables: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
    kv.for_each_prefix(b"", &mut |k, v| {
        let t = String::from_utf8_lossy(&k[..k.len().min(2)]).into_owned();
        let e = tables.entry(t).or_default();
        e.0 += 1;
        e.1 += k.len() as u64;
        e.2 += v.len() as u64;
        true
    })
    .expect("scan");
    let per = |b: u64| b as f64 / n as f64;
    println!(
        "{phase} after {:.0} s: du {:.0} B/instance (apparent {:.0}), sled size_on_disk {:.0} B/instance; {}",
        started.elapsed().as_secs_f64(),
        per(allocated),
        per(apparent),
        per(sled),
        rss()
    );
    let mut total = 0;
    for (t, (rows, kb, vb)) in &tables {
        total += kb + vb;
        println!(
            "  {t:<3} {rows:>9} rows  key {:>6.1} B/instance  value {:>6.1} B/instance  ({:.0} B/row)",
            per(*kb),
            per(*vb),
            (kb + vb) as f64 / *rows as f64
        );
    }
    println!("  rows: {:.0} B/instance", per(total));
}

/// Allocated and apparent bytes of every file under `dir`.
fn du(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut out = (0, 0);
    for entry in std::fs::read_dir(dir).expect("read_dir") {
        let entry = entry.expect("entry");
        let meta = entry.metadata().expect("metadata");
        if meta.is_dir() {
            let (a, b) = du(&entry.path());
            out.0 += a;
            out.1 += b;
        } else {
            out.0 += meta.blocks() * 512;
            out.1 += meta.len();
        }
    }
    out
}

/// VmRSS and VmHWM of this process.
fn rss() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .map(|l| l[name.len()..].trim().to_string())
            .unwrap_or_default()
    };
    format!("RSS {} (peak {})", field("VmRSS:"), field("VmHWM:"))
}
