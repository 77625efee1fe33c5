//! Acceptance: 1000 synthetic 512×512×16-bit CT instances sent with DCMTK
//! storescu, over one association and over four parallel ones, are all
//! answered Success and stored byte-exact.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::harness::*;

fn check_after_stop(cfg: &AgentConfig, config_path: &std::path::Path, files: &[PathBuf]) {
    let t = Instant::now();
    let sent: Vec<Sent> = files.iter().map(|f| sent_info(f)).collect();
    let rows = index_dump(config_path);
    check_dump_matches(cfg, &rows, &sent, SENDER_AE);
    assert_eq!(
        spool_object_files(cfg).len(),
        files.len(),
        "one spool file per instance"
    );
    assert_no_tmp(cfg, "after a clean stop");
    let stats = index_stats(config_path);
    assert_eq!(stat_u64(&stats, "instances"), files.len() as u64, "{stats}");
    assert_eq!(stat_u64(&stats, "objects"), files.len() as u64, "{stats}");
    assert_eq!(stat_u64(&stats, "conflicts"), 0, "{stats}");
    assert_eq!(stat_u64(&stats, "studies"), 1, "{stats}");
    assert_eq!(stat_u64(&stats, "series"), 1, "{stats}");
    let file_bytes: u64 = rows.iter().map(|r| r.file_bytes).sum();
    assert_eq!(stat_u64(&stats, "bytes"), file_bytes, "{stats}");
    eprintln!("verified {} instances in {:?}", files.len(), t.elapsed());
}

#[test]
fn ingest_1000_ct_over_one_association() {
    let files = corpus_1000();
    let dir = tempdir();
    let cfg = AgentConfig::new(&dir.path().join("data"));
    let agent = Agent::start(&cfg);
    let t = Instant::now();
    let r = store_all_ok(cfg.port, SENDER_AE, &[], files);
    let elapsed = t.elapsed();
    eprintln!(
        "1 association: {} files in {elapsed:?} ({:.1} files/s)",
        files.len(),
        files.len() as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(r.count("Success"), 1000);
    let config_path = agent.config_path.clone();
    agent.stop();
    check_after_stop(&cfg, &config_path, files);
}

#[test]
fn ingest_1000_ct_over_four_parallel_associations() {
    let files = corpus_1000();
    let dir = tempdir();
    let cfg = AgentConfig::new(&dir.path().join("data"));
    let agent = Agent::start(&cfg);
    let t = Instant::now();
    let runs: Vec<Running> = files
        .chunks(250)
        .map(|chunk| spawn(&mut storescu_cmd(cfg.port, SENDER_AE, AGENT_AE, &[], chunk)))
        .collect();
    let outs: Vec<StoreRun> = runs
        .into_iter()
        .map(|r| StoreRun::parse(r.wait(Duration::from_secs(600))))
        .collect();
    let elapsed = t.elapsed();
    eprintln!(
        "4 associations: {} files in {elapsed:?} ({:.1} files/s)",
        files.len(),
        files.len() as f64 / elapsed.as_secs_f64()
    );
    for (chunk, r) in files.chunks(250).zip(&outs) {
        assert!(r.output.status.success(), "{}", r.log());
        assert_eq!(
            r.successes(),
            chunk,
            "every file of this storescu must get Success, in order: {:?}\n{}",
            status_histogram(r),
            r.log()
        );
    }
    let config_path = agent.config_path.clone();
    agent.stop();
    check_after_stop(&cfg, &config_path, files);
}
