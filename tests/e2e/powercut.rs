//! Power cuts (issue 20, catalogue T26): the agent's data directory is a
//! FUSE filesystem that remembers what was synced ([`pacs_mirror_powercut`]);
//! at random moments of ingest (storescu) and replication (to a folder
//! bucket outside it), the power is cut: from that instant every operation
//! fails, the agent is killed, and the filesystem is remounted holding only
//! what a real cut could leave (unsynced writes lost, torn or zero-filled,
//! unsynced directory entries lost). Then, before the agent's recovery:
//! every acknowledged instance is in the index with its hash and its spool
//! file is byte-exact; every object the index calls delivered is in the
//! bucket, byte-exact. After the agent's recovery (a start and a clean
//! stop): every acknowledged object is still there, queued or delivered,
//! and none was quarantined. At the end everything is sent, replicated and
//! checked once more.
//!
//! `E2E_POWERCUT_CUTS` sets the number of cuts (24 by default; the closing
//! note reports a 1 000-cut run), `E2E_POWERCUT_SEED` the schedule.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pacs_mirror_powercut::{CutReport, Mounted};
use pacs_mirror_store::index::{Index, parse_hash};
use rand::{Rng, SeedableRng};

use crate::harness::*;
use crate::s3::wait_target;

const TARGET: &str = "backup";

/// storescu sending `files` on one association, without Nagle's delay
/// (DCMTK honours TCP_NODELAY): small objects go as fast as the agent takes
/// them.
fn sender(port: u16, files: &[PathBuf]) -> std::process::Command {
    let mut cmd = storescu_cmd(port, SENDER_AE, AGENT_AE, &[], files);
    cmd.env("TCP_NODELAY", "1");
    cmd
}

/// The bucket's copy of an object (objects/<hh>/<blake3>.dcm), when it is
/// there and whole.
fn bucket_holds(bucket: &Path, blake3: &str) -> bool {
    let p = bucket
        .join("objects")
        .join(&blake3[..2])
        .join(format!("{blake3}.dcm"));
    p.exists() && blake3_hex(&raw_info(&p).1) == blake3
}

/// What the index says of each object: (delivered, pending) hashes.
fn queue_state(index_dir: &Path) -> (HashSet<String>, HashSet<String>) {
    let index = Index::open(index_dir).expect("open the index (agent stopped)");
    let pending: HashSet<String> = index
        .pending(TARGET)
        .expect("pending rows")
        .iter()
        .map(|h| pacs_mirror_store::index::hash_hex(h.bytes()))
        .collect();
    let mut delivered = HashSet::new();
    let mut hashes = Vec::new();
    index
        .for_each_instance(&mut |r| hashes.push(r.blake3.clone()))
        .expect("instances");
    for h in hashes {
        let id = parse_hash(&h).expect("index hash");
        if index.is_delivered(TARGET, &id).expect("delivered row") {
            delivered.insert(h);
        }
    }
    (delivered, pending)
}

/// Every object the index calls delivered is in the bucket, byte-exact.
fn check_delivered(delivered: &HashSet<String>, bucket: &Path, when: &str) {
    for h in delivered {
        assert!(
            bucket_holds(bucket, h),
            "{when}: the index says {h} was delivered but the bucket does not hold it"
        );
    }
}

/// What the cuts of a run did, summed over its epochs.
#[derive(Default)]
struct Tally {
    cuts: usize,
    at_an_operation: usize,
    mid_association: usize,
    with_delivered: usize,
    max_delivered: usize,
    acked: usize,
    quarantined: usize,
    lost: CutReport,
}

#[test]
fn power_cuts_during_ingest_and_replication_lose_nothing_acknowledged() {
    let cuts: usize = std::env::var("E2E_POWERCUT_CUTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(24);
    let seed: u64 = std::env::var("E2E_POWERCUT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_261_207);
    eprintln!("power-cut schedule seed {seed}, {cuts} cuts (E2E_POWERCUT_SEED, E2E_POWERCUT_CUTS)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let dir = tempdir();
    let files = synth_small(&dir.path().join("in"), 40, 60, 64);
    let expect = expectations(&files);
    // Epochs of at most EPOCH cuts, each on a new filesystem, agent and
    // bucket, so that every cut interrupts the ingest of new objects and
    // a round costs the same in the thousandth cut as in the first.
    const EPOCH: usize = 24;
    let mut tally = Tally::default();
    let started = Instant::now();
    let mut epoch = 0;
    while tally.cuts < cuts {
        let n = EPOCH.min(cuts - tally.cuts);
        let root = dir.path().join(format!("epoch-{epoch}"));
        run_epoch(&root, n, &files, &expect, &mut rng, &mut tally);
        epoch += 1;
    }
    let lost = &tally.lost;
    eprintln!(
        "{} cuts in {epoch} epochs, {:?} ({} at a chosen filesystem operation, the rest at a moment): {} interrupted an association, {} left delivered objects (at most {}); in all the cuts lost {} of {} unsynced directory operations, damaged {} of {} unsynced writes and lost {} files; {} instances acknowledged before a cut, 0 lost; 0 false deliveries; {} torn unacknowledged copies quarantined",
        tally.cuts,
        started.elapsed(),
        tally.at_an_operation,
        tally.mid_association,
        tally.with_delivered,
        tally.max_delivered,
        lost.dir_ops_lost,
        lost.dir_ops_lost + lost.dir_ops_kept,
        lost.writes_damaged,
        lost.writes_damaged + lost.writes_kept,
        lost.files_lost,
        tally.acked,
        tally.quarantined,
    );
    assert!(
        tally.mid_association >= tally.cuts / 2,
        "most cuts should land mid-association (the schedule is too slow or too fast)"
    );
    assert!(
        lost.dir_ops_lost > 0 && lost.writes_damaged > 0 && lost.files_lost > 0,
        "the cuts never lost anything: the simulator is not exercising the agent"
    );
    assert!(tally.with_delivered > 0, "no cut happened after a delivery");
    assert!(
        tally.at_an_operation > 0,
        "no cut landed at a chosen operation"
    );
}

/// `cuts` power cuts on a new filesystem under `root`, then everything
/// sent, replicated and checked.
fn run_epoch(
    root: &Path,
    cuts: usize,
    files: &[PathBuf],
    expect: &HashMap<PathBuf, Expect>,
    rng: &mut impl Rng,
    tally: &mut Tally,
) {
    let mnt = root.join("mnt");
    let conf = root.join("conf");
    let bucket = root.join("bucket");
    for d in [&mnt, &conf] {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    let mut fs = Some(
        Mounted::mount_new(&mnt)
            .expect("mount the power-cut filesystem (needs /dev/fuse and root)"),
    );
    let mut cfg = AgentConfig::new(&mnt.join("data"));
    let admin = free_port();
    cfg.extra_toml = format!(
        "\n[[target]]\ntype = \"object_store\"\nname = \"{TARGET}\"\nurl = \"file://{}\"\n\
         \n[admin]\nlisten = \"127.0.0.1:{admin}\"\n",
        bucket.display()
    );
    let index_dir = cfg.data_dir.join("index");
    let mut agent = Agent::start_with_config_dir(&cfg, &conf);
    let config_path = agent.config_path.clone();

    let mut acked: Vec<PathBuf> = Vec::new();
    let mut acked_set: HashSet<PathBuf> = HashSet::new();
    let mut quarantined: HashSet<PathBuf> = HashSet::new();
    // Changing filesystem operations per second while sending (measured
    // on the timed cuts).
    let mut ops_per_sec = 1000.0_f64;
    for cut in 0..cuts {
        let mut order: Vec<PathBuf> = files
            .iter()
            .filter(|f| !acked_set.contains(*f))
            .cloned()
            .collect();
        order.extend(acked.iter().cloned());
        order.extend_from_within(..);
        // Two associations at once (the committer batches them), every
        // file on one of them.
        let senders: Vec<Running> = [0, 1]
            .iter()
            .map(|half| {
                let mine: Vec<PathBuf> = order.iter().skip(*half).step_by(2).cloned().collect();
                spawn(&mut sender(cfg.port, &mine))
            })
            .collect();
        let mounted = fs.as_ref().expect("mounted");
        let t = Instant::now();
        let base = mounted.ops();
        if cut % 2 == 0 {
            // At a moment: sleep, then cut.
            std::thread::sleep(Duration::from_millis(rng.random_range(20..1000)));
        } else {
            // At an operation: before the k-th change from now (writes,
            // syncs, creations, renames, removals alike), so cuts land
            // between a write and its sync as often as such pairs occur.
            let k = rng.random_range(1..=ops_per_sec.max(100.0) as u64);
            mounted.arm_cut(base + k);
            let deadline = Instant::now() + Duration::from_secs(10);
            while !mounted.is_frozen() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            if mounted.is_frozen() {
                tally.at_an_operation += 1;
            }
        }
        assert!(
            agent.running(),
            "the agent died by itself{}",
            agent.log_tail()
        );
        let (survivor, report) = mounted.power_cut(rng);
        if cut % 2 == 0 {
            ops_per_sec = (mounted.ops() - base) as f64 / t.elapsed().as_secs_f64();
        }
        agent.crash();
        let runs: Vec<StoreRun> = senders
            .into_iter()
            .map(|s| StoreRun::parse(s.wait(Duration::from_secs(60))))
            .collect();
        let responses: usize = runs.iter().map(|r| r.responses.len()).sum();
        if responses < order.len() {
            tally.mid_association += 1;
        }
        let mut new = 0;
        for f in runs.iter().flat_map(|r| r.successes()) {
            if acked_set.insert(f.clone()) {
                acked.push(f);
                new += 1;
            }
        }
        tally.cuts += 1;
        let t = &mut tally.lost;
        t.dir_ops_lost += report.dir_ops_lost;
        t.dir_ops_kept += report.dir_ops_kept;
        t.writes_damaged += report.writes_damaged;
        t.writes_kept += report.writes_kept;
        t.files_lost += report.files_lost;
        fs.take().expect("mounted").unmount();
        fs = Some(Mounted::mount(survivor, &mnt).expect("remount what the cut left"));

        // What the disk holds, before any recovery of the agent's.
        let when = format!("after cut {cut}");
        let want: Vec<&Expect> = acked.iter().map(|f| &expect[f]).collect();
        let rows = index_dump(&config_path);
        check_acked(&cfg, &rows, &want, &when);
        let (delivered, _) = queue_state(&index_dir);
        check_delivered(&delivered, &bucket, &when);
        if !delivered.is_empty() {
            tally.with_delivered += 1;
        }
        tally.max_delivered = tally.max_delivered.max(delivered.len());
        eprintln!(
            "cut {cut}: {responses} responses ({new} new), {} acknowledged, {} delivered; cut lost {} of {} directory operations, damaged {} of {} writes, {} files",
            acked.len(),
            delivered.len(),
            report.dir_ops_lost,
            report.dir_ops_lost + report.dir_ops_kept,
            report.writes_damaged,
            report.writes_damaged + report.writes_kept,
            report.files_lost
        );

        // The agent's recovery, then a clean stop, then the same and more.
        let recovered = Agent::start_with_config_dir(&cfg, &conf);
        let recovery_log = recovered.log_path.clone();
        recovered.stop();
        let when = format!("after recovery from cut {cut}");
        let rows = index_dump(&config_path);
        check_acked(&cfg, &rows, &want, &when);
        let (delivered, pending) = queue_state(&index_dir);
        check_delivered(&delivered, &bucket, &when);
        for e in &want {
            assert!(
                delivered.contains(&e.blake3) || pending.contains(&e.blake3),
                "{when}: acknowledged {} ({}) is neither queued nor delivered",
                e.uid,
                e.blake3
            );
        }
        let acked_hashes: HashSet<&str> = want.iter().map(|e| e.blake3.as_str()).collect();
        // Files quarantined since the last check (an earlier recovery may
        // have quarantined a torn copy of an object that was not yet
        // acknowledged and was acknowledged later, on a re-send).
        for q in files_under(&cfg.spool_dir().join("quarantine")) {
            if !quarantined.insert(q.clone()) {
                continue;
            }
            let name = q
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let hash = name
                .split_once('-')
                .map(|(_, rest)| rest.trim_end_matches(".dcm"))
                .unwrap_or("");
            assert!(
                !acked_hashes.contains(hash),
                "{when}: recovery quarantined acknowledged object {}{}",
                q.display(),
                log_tail(&recovery_log)
            );
        }
        agent = Agent::start_with_config_dir(&cfg, &conf);
    }
    // Finish: everything not yet acknowledged, replicated, then checked.
    let rest: Vec<PathBuf> = files
        .iter()
        .filter(|f| !acked_set.contains(*f))
        .cloned()
        .collect();
    tally.acked += acked.len();
    tally.quarantined += quarantined.len();
    if !rest.is_empty() {
        let r = StoreRun::parse(run(&mut sender(cfg.port, &rest), Duration::from_secs(300)));
        assert_eq!(r.successes(), rest, "the rest, each Success\n{}", r.log());
    }
    let n = files.len();
    wait_target(
        &config_path,
        TARGET,
        "everything replicated after the cuts",
        Duration::from_secs(120),
        |t| t["pending"] == 0 && t["delivered"] == n,
    );
    agent.stop();
    let rows = index_dump(&config_path);
    let all: Vec<&Expect> = files.iter().map(|f| &expect[f]).collect();
    check_acked(&cfg, &rows, &all, "after the final clean stop");
    assert_eq!(rows.len(), n, "exactly one row per instance");
    let (delivered, pending) = queue_state(&index_dir);
    assert_eq!(delivered.len(), n, "every object delivered");
    assert!(pending.is_empty(), "nothing left queued: {pending:?}");
    check_delivered(&delivered, &bucket, "after the final clean stop");
    fs.take().expect("mounted").unmount();
}
