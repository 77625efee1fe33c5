//! Replication to a real Orthanc mirror (and a strict DCMTK storescp):
//! byte-exact delivery, outage and recovery, kill -9 mid-replication, dead
//! letters, retention.

use std::time::Duration;

use crate::harness::*;

fn mirror_config(cfg: &mut AgentConfig, orthanc: &Orthanc) {
    cfg.ae_extra = "association_initiator = true\n".into();
    cfg.extra_toml = format!(
        "\n[[remote_device]]\nname = \"mirror\"\n\
         [[remote_device.network_connection]]\nname = \"dicom\"\nhostname = \"127.0.0.1\"\nport = {}\n\
         [[remote_device.network_ae]]\nae_title = \"{}\"\nassociation_acceptor = true\nnetwork_connections = [\"dicom\"]\n\
         \n[[target]]\ntype = \"dicom\"\nname = \"mirror\"\nremote_ae = \"{}\"\n\
         retry_initial_secs = 1\nretry_max_secs = 2\ntimeout_secs = 5\n\
         \n[admin]\nlisten = \"127.0.0.1:{}\"\n",
        orthanc.dicom_port,
        orthanc.ae_title,
        orthanc.ae_title,
        free_port()
    );
}

/// A fresh Orthanc "MIRROR" under `dir`, and an agent configuration that
/// replicates to it.
fn orthanc_and_agent(dir: &std::path::Path) -> (Orthanc, AgentConfig) {
    let orthanc = Orthanc::start(&dir.join("orthanc"), "MIRROR", free_port(), free_port());
    let mut cfg = AgentConfig::new(&dir.join("data"));
    mirror_config(&mut cfg, &orthanc);
    (orthanc, cfg)
}

/// Orthanc holds every one of `files`, with the data set bytes sent.
fn assert_orthanc_holds(orthanc: &Orthanc, files: &[std::path::PathBuf]) {
    for f in files {
        let (meta, dataset) = raw_info(f);
        let held = orthanc.instance_file(&meta.sop_instance_uid);
        assert_eq!(
            dataset_bytes(&held),
            &dataset[..],
            "Orthanc's copy of {} differs from what was sent",
            meta.sop_instance_uid
        );
    }
}

/// `pacs-mirror status --json` of the running agent: the mirror target.
fn mirror_status(config_path: &std::path::Path) -> serde_json::Value {
    status_json(config_path)["targets"]["mirror"].clone()
}

/// `pacs-mirror status --json` of the running agent, whole.
fn status_json(config_path: &std::path::Path) -> serde_json::Value {
    let out = run(
        std::process::Command::new(bin())
            .args(["status", "--json", "--config"])
            .arg(config_path),
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "status failed: {}", out.all());
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("status JSON");
    assert_eq!(
        v["running"], true,
        "status did not come from the running agent: {v}"
    );
    v
}

fn wait_status(
    config_path: &std::path::Path,
    what: &str,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let t = mirror_status(config_path);
        if ok(&t) {
            return t;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: status never showed it: {t}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every instance stored into the agent arrives in Orthanc with the same
/// data set bytes; with Orthanc down, stores still succeed and everything is
/// delivered once it is back.
#[test]
fn replicates_byte_exact_to_orthanc_and_survives_its_outage() {
    let dir = tempdir();
    let (mut orthanc, cfg) = orthanc_and_agent(dir.path());
    let agent = Agent::start(&cfg);

    let files = &corpus_1000()[..500];
    store_all_ok(cfg.port, SENDER_AE, &[], files);
    orthanc.wait_for_instances(500, Duration::from_secs(180));
    assert_orthanc_holds(&orthanc, files);

    let t = wait_status(&agent.config_path, "all delivered", |t| t["pending"] == 0);
    assert_eq!(t["delivered"], 500, "{t}");

    // The mirror goes down: ingest does not care, the lag figures grow and
    // the circuit opens.
    orthanc.stop();
    let more = &corpus_1000()[500..];
    store_all_ok(cfg.port, SENDER_AE, &[], more);
    let t = wait_status(&agent.config_path, "lag during the outage", |t| {
        t["pending"] == 500 && t["circuit_open"] == true
    });
    assert!(
        t["pending_bytes"].as_u64().unwrap_or(0) > 500 * 500_000,
        "{t}"
    );
    assert!(
        t["last_error"].as_str().is_some_and(|e| !e.is_empty()),
        "{t}"
    );
    // Back (same storage): the 50 arrive without anyone doing anything.
    let orthanc = Orthanc::start(
        &orthanc.dir.clone(),
        "MIRROR",
        orthanc.dicom_port,
        orthanc.http_port,
    );
    orthanc.wait_for_instances(1000, Duration::from_secs(120));
    assert_orthanc_holds(&orthanc, more);
    let t = wait_status(&agent.config_path, "lag back to 0", |t| {
        t["pending"] == 0 && t["circuit_open"] == false
    });
    assert_eq!(t["delivered"], 1000, "{t}");
    let log = agent.log();
    assert!(
        log.contains("target unreachable"),
        "no circuit-breaker log line{}",
        agent.log_tail()
    );
    assert!(
        log.contains("resuming"),
        "no resume log line{}",
        agent.log_tail()
    );
    let config_path = agent.config_path.clone();
    agent.stop();
    let stats = index_stats(&config_path);
    assert!(
        stats["outbox"].get("mirror").is_none(),
        "rows still pending after delivery: {stats}"
    );
}

/// A mirror that has no presentation context for an object's transfer syntax
/// (DCMTK storescp without +xa, offered JPEG 2000) gets it dead-lettered with
/// the reason after the bounded attempts; the other objects keep flowing; the
/// operator can list and retry dead letters.
#[test]
fn an_object_the_mirror_refuses_goes_to_the_dead_letter_list() {
    let dir = tempdir();
    let received = dir.path().join("received");
    std::fs::create_dir_all(&received).expect("mkdir");
    let port = free_port();
    let mut storescp = storescp(port, "MIRROR", &received, &["+B"]);
    let mut cfg = AgentConfig::new(&dir.path().join("data"));
    storescp_target(&mut cfg, port);
    let agent = Agent::start(&cfg);

    let plain = &corpus_1000()[..5];
    let j2k = dir.path().join("j2k.dcm");
    crate::transfer_syntaxes::make_j2k(&corpus_1000()[5], &j2k, "1.2.840.10008.1.2.4.90", false);
    let j2k_uid = read_meta(&std::fs::read(&j2k).expect("read")).sop_instance_uid;
    let prof = crate::transfer_syntaxes::profile(dir.path(), "j2k", "1.2.840.10008.1.2.4.90");
    let prof_s = prof.display().to_string();
    store_all_ok(
        cfg.port,
        SENDER_AE,
        &["-xf", &prof_s, "ONE"],
        std::slice::from_ref(&j2k),
    );
    store_all_ok(cfg.port, SENDER_AE, &[], plain);

    let t = wait_status(&agent.config_path, "five delivered, one dead letter", |t| {
        t["pending"] == 0 && t["delivered"] == 5 && t["dead_letters"] == 1
    });
    assert!(
        t["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("1.2.840.10008.1.2.4.90")),
        "{t}"
    );
    let files = std::fs::read_dir(&received).expect("read_dir").count();
    assert_eq!(
        files, 5,
        "storescp received {files} files, want the 5 uncompressed ones"
    );
    let config_path = agent.config_path.clone();
    agent.stop();

    let lines = dead_letters(&config_path);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["sop_instance_uid"], j2k_uid.as_str());
    assert_eq!(lines[0]["attempts"], 2);
    assert!(
        lines[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("1.2.840.10008.1.2.4.90"))
    );

    let out = run(
        std::process::Command::new(bin())
            .args(["dead-letter", "retry", "--target", "mirror", "--config"])
            .arg(&config_path),
        Duration::from_secs(30),
    );
    assert!(
        out.stdout.contains("1 dead letter(s) queued again"),
        "{}",
        out.all()
    );
    let stats = index_stats(&config_path);
    assert_eq!(stats["outbox"]["mirror"], 1, "{stats}");
    storescp.stop();
}

/// A spool file damaged after its Success (bit rot, a bad disk, a stray
/// write) is never sent to the mirror and never counted as delivered: it is
/// refused with the reason, then dead-lettered; everything else arrives
/// byte-exact.
#[test]
fn a_spool_file_damaged_before_replication_never_reaches_the_mirror() {
    let dir = tempdir();
    let received = dir.path().join("received");
    std::fs::create_dir_all(&received).expect("mkdir");
    let port = free_port();
    let mut cfg = AgentConfig::new(&dir.path().join("data"));
    storescp_target(&mut cfg, port);
    let agent = Agent::start(&cfg);
    // The mirror is down: everything waits in the spool.
    let files = &corpus_1000()[..6];
    store_all_ok(cfg.port, SENDER_AE, &[], files);
    wait_status(&agent.config_path, "six queued", |t| t["pending"] == 6);
    // One byte of one stored object flips.
    let (meta, dataset) = raw_info(&files[2]);
    let hex = blake3_hex(&dataset);
    let spool_file = cfg
        .spool_dir()
        .join("objects")
        .join(&hex[..2])
        .join(format!("{hex}.dcm"));
    let mut bytes = std::fs::read(&spool_file).expect("the spool file of the object");
    let n = bytes.len();
    bytes[n - 3] ^= 0x01;
    std::fs::write(&spool_file, &bytes).expect("damaging it");

    let _storescp = storescp(port, "MIRROR", &received, &["+B"]);
    let t = wait_status(&agent.config_path, "five delivered, one dead letter", |t| {
        t["pending"] == 0 && t["dead_letters"] == 1
    });
    assert_eq!(t["delivered"], 5, "{t}");
    // The mirror holds exactly the five others, each byte-exact.
    let mut got: Vec<String> = std::fs::read_dir(&received)
        .expect("read_dir")
        .map(|e| {
            blake3_hex(dataset_bytes(
                &std::fs::read(e.expect("entry").path()).expect("read"),
            ))
        })
        .collect();
    got.sort();
    let mut want: Vec<String> = files
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 2)
        .map(|(_, f)| blake3_hex(&raw_info(f).1))
        .collect();
    want.sort();
    assert_eq!(got, want);
    let config_path = agent.config_path.clone();
    agent.stop();
    let lines = dead_letters(&config_path);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["sop_instance_uid"], meta.sop_instance_uid.as_str());
    let reason = lines[0]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("does not hash to its address") && reason.contains("verify spool"),
        "{reason}"
    );
}

/// The harness's DICOM target `mirror` (AE `MIRROR` on 127.0.0.1:`port`)
/// with an object refused twice dead-lettered, and an admin endpoint.
fn storescp_target(cfg: &mut AgentConfig, port: u16) {
    cfg.ae_extra = "association_initiator = true\n".into();
    cfg.extra_toml = format!(
        "{}refused_attempts = 2\n\n[admin]\nlisten = \"127.0.0.1:{}\"\n",
        mirror_target_toml(port, ""),
        free_port()
    );
}

/// Every one of `files` is in the storescp folder `got`, its data set
/// byte-exact.
fn assert_mirror_holds(got: &std::path::Path, files: &[std::path::PathBuf]) {
    let mut received = std::collections::HashMap::new();
    for f in files_under(got) {
        let (m, ds) = raw_info(&f);
        received.insert(m.sop_instance_uid, ds);
    }
    for f in files {
        let (m, ds) = raw_info(f);
        let held = received
            .get(&m.sop_instance_uid)
            .unwrap_or_else(|| panic!("{} never reached the mirror", m.sop_instance_uid));
        assert!(
            held == &ds,
            "{}: the mirror's copy differs",
            m.sop_instance_uid
        );
    }
}

/// `pacs-mirror dead-letter list --target mirror` of a stopped agent.
fn dead_letters(config_path: &std::path::Path) -> Vec<serde_json::Value> {
    let out = run(
        std::process::Command::new(bin())
            .args(["dead-letter", "list", "--target", "mirror", "--config"])
            .arg(config_path),
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "{}", out.all());
    out.stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

/// kill -9 of the agent during replication, 5 times at random moments:
/// afterwards every instance is in Orthanc exactly once, with the bytes sent,
/// and the queue is empty.
#[test]
fn kill_9_during_replication_delivers_everything_once() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(
        std::env::var("E2E_CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(31_415),
    );
    let dir = tempdir();
    let orthanc_dir = dir.path().join("orthanc");
    let (dicom_port, http_port) = (free_port(), free_port());
    let mut cfg = AgentConfig::new(&dir.path().join("data"));
    // The mirror is down while everything is ingested: all of it is queued.
    {
        let mut down = Orthanc::start(&orthanc_dir, "MIRROR", dicom_port, http_port);
        mirror_config(&mut cfg, &down);
        down.stop();
    }
    let files = &corpus_1000()[..600];
    let agent = Agent::start(&cfg);
    store_all_ok(cfg.port, SENDER_AE, &[], files);
    agent.crash();
    let orthanc = Orthanc::start(&orthanc_dir, "MIRROR", dicom_port, http_port);
    let mut mid_replication = 0;
    for i in 0..5 {
        let agent = Agent::start(&cfg);
        let wait = Duration::from_millis(rng.random_range(100..700));
        std::thread::sleep(wait);
        agent.crash();
        let held = orthanc.count_instances();
        eprintln!("kill {i} after {wait:?}: Orthanc holds {held}");
        if held > 0 && held < 600 {
            mid_replication += 1;
        }
    }
    assert!(
        mid_replication >= 2,
        "only {mid_replication} kills landed during replication: the test proves nothing"
    );
    let agent = Agent::start(&cfg);
    orthanc.wait_for_instances(600, Duration::from_secs(180));
    let t = wait_status(&agent.config_path, "queue empty", |t| t["pending"] == 0);
    assert_eq!(t["dead_letters"], 0, "{t}");
    assert_eq!(
        orthanc.count_instances(),
        600,
        "Orthanc holds each SOP instance once"
    );
    assert_orthanc_holds(&orthanc, files);
    agent.stop();
}

/// With `retain_after_delivery_secs`, a file leaves the spool only once the
/// mirror has it; its index rows stay; an identical re-send brings it back.
#[test]
fn retention_removes_only_what_the_mirror_holds() {
    let dir = tempdir();
    let (orthanc, mut cfg) = orthanc_and_agent(dir.path());
    cfg.spool_extra = "retain_after_delivery_secs = 0\n".into();
    let agent = Agent::start(&cfg);
    let files = &corpus_1000()[..20];
    store_all_ok(cfg.port, SENDER_AE, &[], files);
    orthanc.wait_for_instances(20, Duration::from_secs(60));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !spool_object_files(&cfg).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "{} spool files left after delivery{}",
            spool_object_files(&cfg).len(),
            agent.log_tail()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Everything removed is in the mirror, byte for byte.
    assert_orthanc_holds(&orthanc, files);
    // An identical re-send is stored again (and is a duplicate for the index).
    store_all_ok(cfg.port, SENDER_AE, &[], &files[..1]);
    let config_path = agent.config_path.clone();
    agent.stop();
    let stats = index_stats(&config_path);
    assert_eq!(stat_u64(&stats, "instances"), 20, "{stats}");
    let back = spool_object_files(&cfg);
    // retention may already have removed it again (retain 0): 0 or 1 file
    assert!(back.len() <= 1, "{back:?}");
    assert_eq!(
        stat_u64(&stats, "evicted"),
        20 - back.len() as u64,
        "{stats}"
    );
    let out = run(
        std::process::Command::new(bin())
            .args(["verify", "spool", "--config"])
            .arg(&config_path),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "verify spool after retention: {}",
        out.all()
    );
}

/// DCMTK storescp as `ae` on `port`, writing into `out`, with `extra`
/// options (+B: bit-preserving; its fault switches).
fn storescp(port: u16, ae: &str, out: &std::path::Path, extra: &[&str]) -> StoreScp {
    StoreScp::start(port, ae, out, extra)
}

/// T32: a mirror that receives the whole object and then aborts instead of
/// answering (storescp --abort-after), that aborts in the middle of
/// receiving it (--abort-during), or that stalls in the middle of it
/// for longer than the target's timeout (storescp --sleep-during 12, timeout
/// 3 s), never gets an object recorded as delivered: everything stays
/// pending and is retried, the reason is shown, and once a sound storescp
/// listens on the same port every object arrives, byte-exact.
#[test]
fn a_mirror_that_aborts_or_stalls_mid_store_gets_nothing_marked_delivered() {
    let dir = tempdir();
    let port = free_port();
    let mut cfg = AgentConfig::new(&dir.path().join("data"));
    cfg.ae_extra = "association_initiator = true\n".into();
    cfg.extra_toml = format!(
        "{}\n[admin]\nlisten = \"127.0.0.1:{}\"\n",
        mirror_target_toml(port, "").replace("timeout_secs = 5", "timeout_secs = 3"),
        free_port()
    );
    let files = synth_small(&dir.path().join("src"), 1, 3, 64);

    // Each faulty mirror in turn: its failure is reported (after `since`),
    // a few more rounds of retries go by, and nothing is delivered.
    let faulty_round = |agent: &Agent, fault: &[&str], since: u64, reason: &str| {
        let flag = fault[0];
        let args: Vec<&str> = std::iter::once("+B").chain(fault.iter().copied()).collect();
        let mut faulty = storescp(
            port,
            "MIRROR",
            &dir.path().join(format!("got{flag}")),
            &args,
        );
        let t = wait_status(
            &agent.config_path,
            &format!("{flag}: failures reported"),
            |t| {
                t["last_error_at_ms"].as_u64().is_some_and(|at| at > since)
                    && t["last_error"].as_str().is_some_and(|e| e.contains(reason))
            },
        );
        std::thread::sleep(Duration::from_secs(3));
        let t2 = mirror_status(&agent.config_path);
        assert_eq!(
            t2["delivered"], 0,
            "{flag}: a store counted as delivered: {t2}"
        );
        assert_eq!(t2["pending"], 3, "{flag}: {t2}");
        eprintln!("{flag}: {t}");
        faulty.stop();
    };
    let agent = Agent::start(&cfg);
    store_all_ok(cfg.port, SENDER_AE, &[], &files);
    // The whole object received, then aborted instead of answered.
    faulty_round(&agent, &["--abort-after"], 0, "ended the association");
    // Aborted in the middle of receiving the data set: a half-sent object.
    faulty_round(
        &agent,
        &["--abort-during"],
        unix_ms(),
        "ended the association",
    );
    // Stalled mid-object for longer than the target's timeout.
    faulty_round(&agent, &["--sleep-during", "12"], unix_ms(), "within 3 s");

    let got = dir.path().join("got");
    let mut sound = storescp(port, "MIRROR", &got, &["+B"]);
    let t = wait_status(&agent.config_path, "delivered to a sound mirror", |t| {
        t["pending"] == 0 && t["delivered"] == 3
    });
    eprintln!("sound: {t}");
    agent.stop();
    sound.stop();
    assert_mirror_holds(&got, &files);
}

/// T33 (A7xx): a mirror out of disk space — DCMTK storescp writing into a
/// full tmpfs answers 0xA700 (Refused: Out of Resources) — gets its objects
/// again and again, never dead-lettered (`refused_attempts = 2`): they stay
/// pending with the status as the reason, and once space is freed every one
/// arrives byte-exact. (Permanent refusals go to the dead-letter list:
/// `an_object_the_mirror_refuses_goes_to_the_dead_letter_list`.)
#[test]
fn a_mirror_out_of_resources_is_retried_never_dead_lettered() {
    let dir = tempdir();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).expect("mkdir");
    let _tmpfs = crate::resources::Tmpfs::mount(&mnt, "256k");
    let got = mnt.join("got");
    let port = free_port();
    // Not bit-preserving: with +B, storescp hangs instead of answering when
    // it cannot write.
    let mut scp = storescp(port, "MIRROR", &got, &[]);
    // Fill the filesystem: the write stops at ENOSPC, keeping what fit.
    let filler = mnt.join("filler");
    let _ = std::fs::write(&filler, vec![0x5Au8; 512 << 10]);
    let mut cfg = AgentConfig::new(&dir.path().join("data"));
    storescp_target(&mut cfg, port);
    let files = synth_small(&dir.path().join("src"), 1, 3, 64);
    let agent = Agent::start(&cfg);
    store_all_ok(cfg.port, SENDER_AE, &[], &files);
    let t = wait_status(&agent.config_path, "A700 reported", |t| {
        t["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("0xA700"))
    });
    eprintln!("{t}");
    // More rounds than refused_attempts: still pending, no dead letter.
    std::thread::sleep(Duration::from_secs(6));
    let t = mirror_status(&agent.config_path);
    assert_eq!(t["dead_letters"], 0, "an A700 was dead-lettered: {t}");
    assert_eq!(t["delivered"], 0, "{t}");
    assert_eq!(t["pending"], 3, "{t}");

    std::fs::remove_file(&filler).expect("freeing space");
    let t = wait_status(&agent.config_path, "delivered once space is free", |t| {
        t["pending"] == 0 && t["delivered"] == 3
    });
    assert_eq!(t["dead_letters"], 0, "{t}");
    agent.stop();
    scp.stop();
    assert_mirror_holds(&got, &files);
}

/// The replication workers are woken, not polling: an idle agent shows its
/// workers asleep in `/status` (the replication workers with nothing due
/// for ~30 s), yet an object stored then reaches the mirror well within a
/// second — only the wake-up of its commit can have started that send.
#[test]
fn an_idle_worker_is_woken_by_a_new_object_not_by_polling() {
    let dir = tempdir();
    let port = free_port();
    let got = dir.path().join("got");
    let _mirror = storescp(port, "MIRROR", &got, &["+B"]);
    let mut cfg = AgentConfig::new(dir.path());
    storescp_target(&mut cfg, port);
    let agent = Agent::start(&cfg);
    let files = &corpus_1000()[..1];
    // Idle: every worker of the target asleep with nothing due.
    let workers = |v: &serde_json::Value| v["workers"].clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let idle = loop {
        let v = status_json(&agent.config_path);
        let w = workers(&v);
        let asleep = w["replicate mirror#0"]["state"] == "idle"
            && w["replicate mirror#0"]["next_in_secs"]
                .as_u64()
                .is_some_and(|n| n >= 20);
        if asleep {
            break w;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the replication worker never went to sleep: {w}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(idle["monitors"]["state"].is_string(), "{idle}");
    assert!(
        idle["replicate mirror#0"]["units"].as_u64().unwrap_or(0) >= 1,
        "{idle}"
    );
    let stored_at = std::time::Instant::now();
    store_all_ok(cfg.port, SENDER_AE, &[], files);
    let t = wait_status(&agent.config_path, "delivered", |t| t["delivered"] == 1);
    let took = stored_at.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "delivered {took:?} after the store, although the worker slept for ~30 s: {t}"
    );
    assert_mirror_holds(&got, files);
    agent.stop();
}
