//! Acceptance: `pacs-mirror backfill DIR` imports a folder of Part-10 files
//! through the same durable path as network ingest. 1000 synthetic CT files
//! plus odd ones (not DICOM, truncated, a garbage meta group, an identical
//! copy, a changed version of one SOP instance): every good file ends up in
//! the spool with its data set byte-identical, indexed, with an outbox row
//! for the configured target; the bad ones are listed with reasons; nothing
//! is left in spool/tmp. A `kill -9` mid-run followed by a second run ends
//! with every file imported exactly once. While an agent runs on the data
//! dir, backfill refuses at once. A 1 GiB file is streamed in bounded memory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::*;

const SOURCE_AE: &str = "BACKFILL";

/// A config with a DICOM target (never started: backfill only queues).
fn config(dir: &Path) -> (AgentConfig, PathBuf) {
    let mut cfg = AgentConfig::new(&dir.join("data"));
    cfg.ae_extra = "association_initiator = true\n".into();
    cfg.extra_toml = format!(
        "\n[[remote_device]]\nname = \"mirror-pacs\"\n\n[[remote_device.network_connection]]\nname = \"dicom\"\nhostname = \"127.0.0.1\"\nport = {}\n\n[[remote_device.network_ae]]\nae_title = \"MIRROR\"\nassociation_acceptor = true\nnetwork_connections = [\"dicom\"]\n\n[[target]]\ntype = \"dicom\"\nname = \"mirror\"\nremote_ae = \"MIRROR\"\n",
        free_port()
    );
    let path = dir.join("pacs-mirror.toml");
    std::fs::write(&path, cfg.to_toml()).expect("writing the config");
    (cfg, path)
}

/// The 1000-file corpus, hard-linked (or copied) under `dir`.
fn link_corpus(dir: &Path) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).expect("mkdir");
    corpus_1000()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let sub = dir.join(format!("series{}", i / 250));
            std::fs::create_dir_all(&sub).expect("mkdir");
            let to = sub.join(format!("IM{i:04}.dcm"));
            if std::fs::hard_link(f, &to).is_err() {
                std::fs::copy(f, &to).expect("copying a corpus file");
            }
            to
        })
        .collect()
}

fn backfill_cmd(config_path: &Path, src: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.arg("backfill")
        .arg(src)
        .arg("--config")
        .arg(config_path)
        .arg("--json")
        .args(extra)
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1");
    c
}

fn report_of(o: &Output) -> Value {
    serde_json::from_str(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "backfill --json printed no JSON report ({e}):\n{}\n{}",
            o.stdout,
            tail(&o.stderr, 30)
        )
    })
}

fn total(report: &Value, k: &str) -> u64 {
    report["totals"][k]
        .as_u64()
        .unwrap_or_else(|| panic!("report lacks totals.{k}: {report}"))
}

fn skipped(report: &Value) -> HashMap<String, String> {
    report["skipped"]
        .as_array()
        .expect("skipped list")
        .iter()
        .map(|s| {
            let p = Path::new(s["path"].as_str().expect("path"));
            (
                p.file_name()
                    .expect("file name")
                    .to_string_lossy()
                    .into_owned(),
                s["reason"].as_str().expect("reason").to_string(),
            )
        })
        .collect()
}

/// Index rows grouped by SOP Instance UID.
fn rows_by_sop(rows: &[Row]) -> HashMap<String, Vec<Row>> {
    let mut m: HashMap<String, Vec<Row>> = HashMap::new();
    for r in rows {
        m.entry(r.sop_instance_uid.clone())
            .or_default()
            .push(r.clone());
    }
    m
}

/// Every source file is indexed exactly once with its own data set, byte-
/// identical in the spool, with the backfill provenance.
fn check_imported(cfg: &AgentConfig, by_sop: &HashMap<String, Vec<Row>>, files: &[PathBuf]) {
    for f in files {
        let (meta, ds) = raw_info(f);
        let hash = blake3_hex(&ds);
        let rows = by_sop.get(&meta.sop_instance_uid).unwrap_or_else(|| {
            panic!("{} ({}) is not indexed", f.display(), meta.sop_instance_uid)
        });
        let matching: Vec<&Row> = rows.iter().filter(|r| r.blake3 == hash).collect();
        assert_eq!(
            matching.len(),
            1,
            "{}: {} index rows with its data set",
            f.display(),
            matching.len()
        );
        let row = matching[0];
        assert_eq!(row.calling_ae, SOURCE_AE, "{}", f.display());
        assert_eq!(row.source_ip, "", "{}", f.display());
        assert_eq!(row.transfer_syntax_uid, meta.transfer_syntax);
        check_spool_file(cfg, row, Some(&ds));
    }
}

#[test]
fn backfill_imports_a_folder_through_the_durable_path() {
    let dir = tempdir();
    let (cfg, config_path) = config(dir.path());
    let src = dir.path().join("src");
    let good = link_corpus(&src.join("corpus"));

    // The odd files.
    let odd = src.join("odd");
    std::fs::create_dir_all(&odd).expect("mkdir");
    std::fs::write(odd.join("notes.txt"), "exported from the old PACS\n").expect("write");
    let first = std::fs::read(&good[0]).expect("read");
    // Cut inside its file meta group: nothing identifies it, skipped. (A
    // file cut in its data set is kept with a finding: the unit tests.)
    std::fs::write(odd.join("truncated.dcm"), &first[..150]).expect("write");
    let mut garbage = first[..132].to_vec();
    garbage.extend_from_slice(&[0xAB; 64]);
    std::fs::write(odd.join("garbage-meta.dcm"), &garbage).expect("write");
    std::fs::copy(&good[1], odd.join("copy-of-1.dcm")).expect("copy");
    let mut changed = std::fs::read(&good[2]).expect("read");
    let n = changed.len();
    changed[n - 1] ^= 0x01; // one pixel differs: same SOP instance, other bytes
    let changed_path = odd.join("changed-2.dcm");
    std::fs::write(&changed_path, &changed).expect("write");
    let files_listed = good.len() + 5;

    let t = Instant::now();
    let o = run(
        &mut backfill_cmd(&config_path, &src, &[]),
        Duration::from_secs(600),
    );
    let secs = t.elapsed().as_secs_f64();
    let report = report_of(&o);
    eprintln!(
        "backfill of {files_listed} files: {secs:.2} s wall, {:.0} files/s (report: {} ms)",
        files_listed as f64 / secs,
        report["elapsed_ms"]
    );
    assert_eq!(
        o.status.code(),
        Some(2),
        "exit status with skipped files and no --allow-skips\n{}",
        tail(&o.stderr, 20)
    );
    assert_eq!(report["files"].as_u64(), Some(files_listed as u64));
    assert_eq!(report["stopped"], Value::Null);
    assert_eq!(total(&report, "files_done"), files_listed as u64);
    assert_eq!(total(&report, "imported"), 1000, "{report}");
    assert_eq!(total(&report, "duplicates"), 1, "{report}");
    assert_eq!(total(&report, "conflicts"), 1, "{report}");
    assert_eq!(total(&report, "skipped"), 3, "{report}");
    let reasons = skipped(&report);
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(
        reasons["notes.txt"].contains("not a DICOM Part-10 file"),
        "{reasons:?}"
    );
    assert!(!reasons["truncated.dcm"].is_empty(), "{reasons:?}");
    assert!(
        reasons["garbage-meta.dcm"].contains("meta group"),
        "{reasons:?}"
    );
    let conflicts = report["conflicts"].as_array().expect("conflicts");
    assert_eq!(conflicts.len(), 1);
    assert!(
        conflicts[0]["path"]
            .as_str()
            .is_some_and(|p| p.ends_with("changed-2.dcm")),
        "{conflicts:?}"
    );
    // Progress on standard error: files, bytes, rate, ETA.
    let progress: Vec<&str> = o
        .stderr
        .lines()
        .filter(|l| l.starts_with("backfill: ") && l.contains(" files/s") && l.contains("ETA"))
        .collect();
    assert!(
        !progress.is_empty(),
        "no progress lines on stderr:\n{}",
        tail(&o.stderr, 20)
    );
    assert!(
        progress
            .last()
            .is_some_and(|l| l.contains(&format!("{files_listed}/{files_listed} files"))),
        "the last progress line is not the end: {progress:?}"
    );
    assert!(progress[0].contains(" MB"), "{progress:?}");

    // The store: spool, index, outbox.
    assert_no_tmp(&cfg, "after backfill");
    let rows = index_dump(&config_path);
    assert_eq!(rows.len(), 1001, "1000 instances + 1 second version");
    let by_sop = rows_by_sop(&rows);
    assert_eq!(by_sop.len(), 1000);
    check_imported(&cfg, &by_sop, &good);
    check_imported(&cfg, &by_sop, std::slice::from_ref(&changed_path));
    assert_eq!(spool_object_files(&cfg).len(), 1001);
    let stats = index_stats(&config_path);
    assert_eq!(stat_u64(&stats, "instances"), 1001, "{stats}");
    assert_eq!(stat_u64(&stats, "objects"), 1001, "{stats}");
    assert_eq!(stat_u64(&stats, "conflicts"), 1, "{stats}");
    assert_eq!(
        stats["outbox"]["mirror"].as_u64(),
        Some(1001),
        "one outbox row per object for the target: {stats}"
    );
    let v = run(
        Command::new(bin())
            .args(["verify", "spool", "--config"])
            .arg(&config_path),
        Duration::from_secs(300),
    );
    assert!(v.status.success(), "verify spool: {}", v.all());

    // Again, with --allow-skips: nothing new, exit 0.
    let o = run(
        &mut backfill_cmd(&config_path, &src, &["--allow-skips"]),
        Duration::from_secs(600),
    );
    let again = report_of(&o);
    assert_eq!(o.status.code(), Some(0), "{}", tail(&o.stderr, 20));
    assert_eq!(total(&again, "imported"), 0, "{again}");
    assert_eq!(total(&again, "duplicates"), 1002, "{again}");
    assert_eq!(total(&again, "conflicts"), 0, "{again}");
    assert_eq!(total(&again, "skipped"), 3, "{again}");
    assert_eq!(index_dump(&config_path).len(), 1001);
    assert_eq!(spool_object_files(&cfg).len(), 1001);

    // The text report names every skipped file with its reason.
    let o = run(
        Command::new(bin())
            .arg("backfill")
            .arg(&odd)
            .arg("--config")
            .arg(&config_path),
        Duration::from_secs(120),
    );
    assert_eq!(o.status.code(), Some(2));
    for name in ["notes.txt", "truncated.dcm", "garbage-meta.dcm"] {
        assert!(
            o.stdout
                .lines()
                .any(|l| l.contains(name) && l.contains(&reasons[name])),
            "{name} not reported with its reason:\n{}",
            o.stdout
        );
    }
}

#[test]
fn kill_9_during_backfill_then_a_rerun_imports_every_file_once() {
    let dir = tempdir();
    let (cfg, config_path) = config(dir.path());
    let src = dir.path().join("src");
    let files = link_corpus(&src);
    let objects = cfg.spool_dir().join("objects");

    let log = std::fs::File::create(dir.path().join("first-run.log")).expect("log");
    let mut child = backfill_cmd(&config_path, &src, &[])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("spawning backfill");
    let deadline = Instant::now() + Duration::from_secs(120);
    let at_kill = loop {
        let n = files_under(&objects).len();
        if n >= 150 {
            break n;
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!("backfill ended ({st}) before it could be killed, with {n} objects");
        }
        assert!(Instant::now() < deadline, "backfill made no progress");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "backfill finished before the kill"
    );
    child.kill().expect("kill -9");
    let _ = child.wait();
    let after_kill = files_under(&objects).len();
    let tmp_left = spool_tmp_files(&cfg).len();
    eprintln!("killed with {at_kill}..{after_kill} objects in the spool, {tmp_left} temp files");
    assert!(
        after_kill < files.len(),
        "the kill came too late to test anything ({after_kill} objects)"
    );
    // What the first run indexed durably (rows of commits in flight
    // included: the rerun's recovery undoes those whose file is torn).
    // Files it placed without rows are not looked for at start-up: the
    // rerun replaces each when it imports that file again.
    let indexed_at_kill = index_dump(&config_path).len();

    let o = run(
        &mut backfill_cmd(&config_path, &src, &[]),
        Duration::from_secs(600),
    );
    let report = report_of(&o);
    assert_eq!(o.status.code(), Some(0), "{}", tail(&o.stderr, 20));
    assert_eq!(report["stopped"], Value::Null);
    assert_eq!(total(&report, "skipped"), 0, "{report}");
    assert_eq!(total(&report, "conflicts"), 0, "{report}");
    assert_eq!(
        total(&report, "imported") + total(&report, "duplicates"),
        1000,
        "{report}"
    );
    let undone = report["recovery"]["pending_undone"].as_u64().unwrap_or(0);
    assert!(
        at_kill > 0
            && total(&report, "duplicates") >= (indexed_at_kill as u64).saturating_sub(undone),
        "objects the first run indexed were not recognised ({indexed_at_kill} indexed, {undone} undone): {report}"
    );
    assert_eq!(
        report["recovery"]["temp_files_removed"].as_u64(),
        Some(tmp_left as u64),
        "{report}"
    );
    assert_eq!(
        report["recovery"]["quarantined"].as_array().map(Vec::len),
        Some(0),
        "nothing the first run left may be corrupt: {report}"
    );

    assert_no_tmp(&cfg, "after the second run");
    let rows = index_dump(&config_path);
    assert_eq!(rows.len(), 1000, "every file exactly once");
    let by_sop = rows_by_sop(&rows);
    assert_eq!(by_sop.len(), 1000);
    check_imported(&cfg, &by_sop, &files);
    assert_eq!(spool_object_files(&cfg).len(), 1000);
    let stats = index_stats(&config_path);
    assert_eq!(stats["outbox"]["mirror"].as_u64(), Some(1000), "{stats}");
    let v = run(
        Command::new(bin())
            .args(["verify", "spool", "--config"])
            .arg(&config_path),
        Duration::from_secs(300),
    );
    assert!(v.status.success(), "verify spool: {}", v.all());
}

#[test]
fn backfill_refuses_while_the_agent_runs_on_the_data_dir() {
    let dir = tempdir();
    let (cfg, _) = config(dir.path());
    let src = dir.path().join("src");
    let files = synth(&src, &["--instances-per-series", "3", "--seed", "12"]);
    let agent = Agent::start(&cfg);
    let t = Instant::now();
    let o = run(
        &mut backfill_cmd(&agent.config_path, &src, &[]),
        Duration::from_secs(60),
    );
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "backfill waited for the lock"
    );
    assert_eq!(o.status.code(), Some(1), "{}", o.all());
    assert!(
        o.stderr.contains("the agent is running on this data dir"),
        "{}",
        o.all()
    );
    let config_path = agent.config_path.clone();
    agent.stop();
    let o = run(
        &mut backfill_cmd(&config_path, &src, &[]),
        Duration::from_secs(120),
    );
    assert_eq!(o.status.code(), Some(0), "{}", o.all());
    assert_eq!(total(&report_of(&o), "imported"), files.len() as u64);
}

#[test]
fn a_1_gib_file_is_backfilled_in_bounded_memory() {
    let dir = tempdir();
    let (_cfg, config_path) = config(dir.path());
    let seed = synth(
        &dir.path().join("seed"),
        &["--instances-per-series", "1", "--seed", "9"],
    );
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).expect("mkdir");
    let big = src.join("big.dcm");
    let (hash, len) = crate::large::write_large(&seed[0], &big);

    let mut child = backfill_cmd(&config_path, &src, &[])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning backfill");
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak_kib = 0u64;
    let deadline = Instant::now() + Duration::from_secs(600);
    let status = loop {
        if let Some(hwm) = std::fs::read_to_string(&status_path).ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        }) {
            peak_kib = peak_kib.max(hwm);
        }
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "backfill of 1 GiB took over 10 minutes"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().expect("stdout"), &mut out)
        .expect("reading the report");
    assert!(status.success(), "backfill failed: {out}");
    let report: Value = serde_json::from_str(&out).expect("JSON report");
    assert_eq!(total(&report, "imported"), 1, "{report}");
    eprintln!(
        "backfill of a 1 GiB file: peak RSS {peak_kib} KiB, {} ms",
        report["elapsed_ms"]
    );
    assert!(
        peak_kib < 100 * 1024,
        "backfill peak RSS {peak_kib} KiB for a 1 GiB file"
    );
    let rows = index_dump(&config_path);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].blake3, hash);
    assert_eq!(rows[0].dataset_bytes, len);
    let (stored_hash, stored_len) = crate::large::dataset_hash_streamed(&rows[0].path);
    assert_eq!((stored_hash, stored_len), (hash, len));
}
