//! Restore drills against a real Orthanc mirror (C-GET) and a real S3
//! server: all MATCH after replication; a deleted instance is MISSING, an
//! overwritten blob is a MISMATCH, a stopped mirror is a failed drill; each
//! failure sends one webhook to a local HTTP receiver.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::harness::*;
use crate::s3::{S3Server, check_bucket, wait_target};

/// Every finding (non-MATCH instance) of a drill report, all studies.
fn findings_of(r: &Value) -> Vec<Value> {
    r["studies"]
        .as_array()
        .expect("studies")
        .iter()
        .flat_map(|s| s["findings"].as_array().cloned().unwrap_or_default())
        .collect()
}

fn drill(config: &std::path::Path, target: &str) -> (bool, Value) {
    let out = run(
        Command::new(bin())
            .args(["drill", "--json", "--target", target, "--config"])
            .arg(config),
        Duration::from_secs(300),
    );
    let v: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("drill JSON ({e}): {}", out.all()));
    (out.status.success(), v[0].clone())
}

fn count(report: &Value, verdict: &str) -> u64 {
    report["counts"][verdict].as_u64().unwrap_or(0)
}

#[test]
fn drills_match_then_find_missing_mismatch_and_an_unreachable_mirror() {
    let dir = tempdir();
    let s3 = S3Server::start(&dir.path().join("s3"));
    let hooks = Hooks::start();
    let agent_port = free_port();
    let orthanc = Orthanc::start_knowing(
        &dir.path().join("orthanc"),
        "MIRROR",
        vec![OrthancModality::local("agent", AGENT_AE, agent_port)],
    );
    let mut cfg = AgentConfig::new(&dir.path().join("data"));
    cfg.port = agent_port;
    cfg.ae_extra = "association_initiator = true\n".into();
    // Only drill alerts are under test here: the low-space threshold is
    // 1 byte, so a CI disk with less than the default 10 GiB free adds none.
    cfg.extra_toml = format!(
        "{}{}\
         \n[[drill]]\ntarget = \"mirror\"\nrandom_studies = 4\nnewest_study = false\ntimeout_secs = 10\n\
         \n[[drill]]\ntarget = \"backup\"\nrandom_studies = 4\nnewest_study = false\n\
         \n[alerts]\nwebhook_url = \"http://127.0.0.1:{}/hook\"\nattempts = 3\n\
         spool_headroom_min_bytes = 1\n\
         \n[admin]\nlisten = \"127.0.0.1:{}\"\n",
        mirror_target_toml(orthanc.dicom_port, ""),
        s3.target_toml("backup", "drills"),
        hooks.port,
        free_port()
    );
    let files = synth_small(&dir.path().join("in"), 4, 6, 128);
    assert_eq!(files.len(), 24);
    let agent = Agent::start(&cfg);
    store_all_ok(cfg.port, SENDER_AE, &[], &files);
    for t in ["mirror", "backup"] {
        wait_target(
            &agent.config_path,
            t,
            "delivered",
            Duration::from_secs(120),
            |s| s["pending"] == 0 && s["delivered"] == 24,
        );
    }
    let config = agent.config_path.clone();
    agent.stop();

    // 1. Both targets: every instance MATCH, with recovery times.
    for t in ["mirror", "backup"] {
        let (ok, r) = drill(&config, t);
        assert!(ok, "{r}");
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(count(&r, "MATCH"), 24, "{r}");
        assert_eq!(r["studies"].as_array().map(Vec::len), Some(4));
        for s in r["studies"].as_array().expect("studies") {
            assert_eq!(s["expected"], 6);
            assert!(s["first_instance_secs"].as_f64().is_some(), "{s}");
            assert!(s["study_secs"].as_f64().is_some_and(|t| t > 0.0), "{s}");
        }
    }
    assert!(hooks.take().is_empty(), "no webhook for passing drills");

    // 2a. One instance deleted from the mirror: MISSING, exactly it.
    let gone = raw_info(&files[7]).0.sop_instance_uid;
    orthanc.delete_uid(&gone);
    let (ok, r) = drill(&config, "mirror");
    assert!(!ok, "{r}");
    assert_eq!(count(&r, "MISSING"), 1, "{r}");
    assert_eq!(count(&r, "MATCH"), 23, "{r}");
    let findings = findings_of(&r);
    assert_eq!(findings.len(), 1, "{r}");
    assert_eq!(findings[0]["sop_instance_uid"], gone);
    assert_eq!(findings[0]["verdict"], "MISSING");

    // 2b. One blob overwritten with other bytes: MISMATCH, exactly it.
    let reader = s3.reader();
    let held = check_bucket(&reader, "drills");
    let victim = raw_info(&files[13]).0.sop_instance_uid;
    let other = raw_info(&files[14]).0.sop_instance_uid;
    let victim_hash = held.entries[&victim]["blake3"]
        .as_str()
        .expect("hash")
        .to_string();
    let other_hash = held.entries[&other]["blake3"]
        .as_str()
        .expect("hash")
        .to_string();
    reader.put(
        &format!("drills/objects/{}/{victim_hash}.dcm", &victim_hash[..2]),
        held.objects[&other_hash].clone(),
    );
    let (ok, r) = drill(&config, "backup");
    assert!(!ok, "{r}");
    assert_eq!(count(&r, "MISMATCH"), 1, "{r}");
    assert_eq!(count(&r, "MATCH"), 23, "{r}");
    let bad = findings_of(&r);
    assert_eq!(bad.len(), 1, "{r}");
    assert_eq!(bad[0]["sop_instance_uid"], victim);
    assert_eq!(bad[0]["verdict"], "MISMATCH");
    assert!(
        bad[0]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("SOP Instance UID differs")),
        "{r}"
    );

    // 2c. The mirror is down: a failed drill, with the reason.
    let mut orthanc = orthanc;
    orthanc.stop();
    let (ok, r) = drill(&config, "mirror");
    assert!(!ok, "{r}");
    assert_eq!(r["ok"], false);
    let failure = r["failure"].as_str().expect("failure reason");
    assert!(failure.contains("C-GET"), "{failure}");

    // One webhook per failed drill, with a clear text.
    let mut got = Vec::new();
    for _ in 0..100 {
        got.extend(hooks.take());
        if got.len() >= 3 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    got.extend(hooks.take());
    assert_eq!(got.len(), 3, "{got:?}");
    let texts: Vec<&str> = got
        .iter()
        .map(|v| v["text"].as_str().expect("text"))
        .collect();
    assert!(
        texts[0].contains("drill #")
            && texts[0].contains("mirror")
            && texts[0].contains("1 MISSING"),
        "{texts:?}"
    );
    assert!(
        texts[1].contains("backup") && texts[1].contains("1 MISMATCH"),
        "{texts:?}"
    );
    assert!(
        texts[2].contains("mirror") && texts[2].contains("FAILED"),
        "{texts:?}"
    );
    assert!(got.iter().all(|v| v["kind"] == "drill_failed"));

    // The history lists them, newest first.
    let out = run_ok(
        Command::new(bin())
            .args(["drills", "--json", "--config"])
            .arg(&config),
        Duration::from_secs(30),
    );
    let h: Value = serde_json::from_str(&out.stdout).expect("history JSON");
    let h = h.as_array().expect("list");
    assert_eq!(h.len(), 5);
    assert_eq!(h[0]["target"], "mirror");
    assert_eq!(h[0]["ok"], false);
}

/// An agent backing up into a folder, with `drill` (a `[[drill]]` body)
/// and an admin endpoint on `admin`; `studies` synthetic studies of
/// `per_study` small instances stored and delivered.
pub(crate) fn folder_agent(
    dir: &std::path::Path,
    drill: &str,
    admin: u16,
    studies: usize,
    per_study: usize,
) -> Agent {
    let mut cfg = AgentConfig::new(&dir.join("data"));
    cfg.extra_toml = format!(
        "\n[[target]]\ntype = \"object_store\"\nname = \"backup\"\nurl = \"file://{}\"\n\
         \n[[drill]]\ntarget = \"backup\"\n{drill}\
         \n[admin]\nlisten = \"127.0.0.1:{admin}\"\n",
        dir.join("bucket").display()
    );
    let files = synth_small(&dir.join("in"), studies, per_study, 32);
    let agent = Agent::start(&cfg);
    store_all_ok(cfg.port, SENDER_AE, &[], &files);
    let n = files.len() as u64;
    wait_target(
        &agent.config_path,
        "backup",
        "delivered",
        Duration::from_secs(60),
        |s| s["pending"] == 0 && s["delivered"] == n,
    );
    agent
}

/// Acceptance 3: with the n/m rotation, every study is drilled at least
/// once over m drills.
#[test]
fn rotation_drills_every_study_over_a_cycle() {
    let dir = tempdir();
    let agent = folder_agent(
        dir.path(),
        "random_studies = 0\nrotation = 4\nnewest_study = false\n",
        free_port(),
        9,
        2,
    );
    let config = agent.config_path.clone();
    agent.stop();
    let mut drilled = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let (ok, r) = drill(&config, "backup");
        assert!(ok, "{r}");
        for s in r["studies"].as_array().expect("studies") {
            assert_eq!(s["counts"]["MATCH"], 2, "{s}");
            drilled.insert(s["study_instance_uid"].as_str().expect("uid").to_string());
        }
    }
    assert_eq!(
        drilled.len(),
        9,
        "every study drilled over 4 drills: {drilled:?}"
    );
}

/// Inside the running agent: a `[[drill]]` schedule fires on its own, the
/// history shows it on `/drills` (HTML with the recovery chart) and in the
/// drill gauges of `/metrics`, and `pacs-mirror drill` is run by the agent
/// (which holds the index).
#[test]
fn scheduled_drills_report_and_metrics_in_the_running_agent() {
    let dir = tempdir();
    let admin = free_port();
    let agent = folder_agent(
        dir.path(),
        "schedule = \"*/2 * * * * *\"\nrandom_studies = 1\nrecovery_time_objective_secs = 600\n",
        admin,
        2,
        3,
    );
    let get = |path: &str| admin_get(admin, path);
    // The schedule fires every 2 s: wait for two passing drills.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let history = loop {
        let h: Value = serde_json::from_str(&get("/drills.json")).unwrap_or(Value::Null);
        let passed = h
            .as_array()
            .map_or(0, |a| a.iter().filter(|r| r["ok"] == true).count());
        if passed >= 2 {
            break h;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no scheduled drills: {h}{}",
            agent.log_tail()
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(history[0]["target"], "backup");
    let page = get("/drills");
    assert!(
        page.contains("<svg") && page.contains("<polyline"),
        "no chart: {page}"
    );
    assert!(page.contains("objective 600 s"), "{page}");
    let metrics = get("/metrics");
    assert!(
        metrics.contains("pacs_mirror_drill_last_ok{target=\"backup\"} 1"),
        "{metrics}"
    );
    // The schedule keeps running: the gauge shows the latest drill's count.
    let matched: u64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("pacs_mirror_drill_last_findings{target=\"backup\",verdict=\"MATCH\"} ")
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no MATCH gauge: {metrics}"));
    assert!(matched >= 3, "{metrics}");
    assert!(
        metrics
            .contains("pacs_mirror_drill_last_findings{target=\"backup\",verdict=\"MISSING\"} 0")
    );
    assert!(
        metrics.contains("pacs_mirror_drill_last_success_timestamp_seconds{target=\"backup\"}")
    );
    // On demand while the agent runs: the agent runs it.
    let (ok, r) = drill(&agent.config_path, "backup");
    assert!(ok, "{r}");
    assert_eq!(r["ok"], true);
    assert!(count(&r, "MATCH") >= 3, "{r}");

    // The bucket gone: the drills fail, and `status` says so with the
    // next step, as an alert that holds until a drill passes again.
    let bucket = dir.path().join("bucket");
    let aside = dir.path().join("bucket.aside");
    std::fs::rename(&bucket, &aside).expect("moving the bucket away");
    let drill_alert = |want: bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let out = run(
                Command::new(bin())
                    .args(["status", "--config"])
                    .arg(&agent.config_path),
                Duration::from_secs(30),
            );
            let line = out
                .stdout
                .lines()
                .find(|l| l.contains("ALERT drill_failed (backup)"))
                .map(str::to_string);
            if line.is_some() == want {
                return line;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "drill_failed alert {}: {}",
                if want { "never shown" } else { "never cleared" },
                out.all()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    };
    let line = drill_alert(true).expect("an alert line");
    assert!(line.contains("FAILED"), "{line}");
    assert!(line.contains("next:"), "{line}");
    assert!(line.contains("ops/runbooks/drill-failed.md"), "{line}");
    let metrics = get("/metrics");
    assert!(
        metrics.contains("pacs_mirror_alert_firing{kind=\"drill_failed\",subject=\"backup\"} 1"),
        "{metrics}"
    );
    std::fs::rename(&aside, &bucket).expect("putting the bucket back");
    drill_alert(false);
    agent.stop();
}

/// The drill receiver AE of the C-MOVE drill test.
const DRILL_AE: &str = "PM_DRILL";

/// Issue 5, C-MOVE: an agent with an ingest AE and a drill receiver AE on
/// the same port; an Orthanc mirror that knows the agent's calling AE (to
/// accept its C-MOVE) and the drill receiver (as the move destination).
/// Delegated to the running agent: every instance MATCH by C-MOVE, times
/// measured; a stray C-STORE to the drill receiver is refused and changes
/// nothing in the spool or the index; one instance deleted from the mirror
/// is exactly MISSING; with the agent stopped, `pacs-mirror drill` serves
/// the drill receiver itself and everything MATCHes again.
#[test]
fn c_move_drills_match_refuse_strays_and_run_without_the_agent() {
    let dir = tempdir();
    let agent_port = free_port();
    let orthanc = Orthanc::start_knowing(
        &dir.path().join("orthanc"),
        "MIRROR",
        vec![
            OrthancModality::local("agent", AGENT_AE, agent_port),
            OrthancModality::local("drill", DRILL_AE, agent_port),
        ],
    );
    let admin = free_port();
    let mut cfg = AgentConfig::new(&dir.path().join("data"));
    cfg.port = agent_port;
    cfg.ae_extra = "association_initiator = true\n".into();
    cfg.extra_toml = format!(
        "\n[[device.network_ae]]\nae_title = \"{DRILL_AE}\"\nnetwork_connections = [\"dicom\"]\n\
         drill_receiver = true\nallowed_calling_aes = [\"MIRROR\"]\n\
         {}\
         \n[[drill]]\ntarget = \"mirror\"\nrandom_studies = 4\nnewest_study = false\ntimeout_secs = 10\n\
         retrieve = \"c-move\"\nmove_destination = \"{DRILL_AE}\"\n\
         \n[admin]\nlisten = \"127.0.0.1:{admin}\"\n",
        mirror_target_toml(
            orthanc.dicom_port,
            "association_initiator = true\nsource_addresses = [\"127.0.0.1\"]\n"
        ),
    );
    let files = synth_small(&dir.path().join("in"), 4, 6, 128);
    assert_eq!(files.len(), 24);
    let agent = Agent::start(&cfg);
    // The configuration is valid, with no finding about the drill (the
    // harness's min_free_bytes = 0 is warned about).
    let check = run(
        Command::new(bin())
            .args(["config", "check"])
            .arg(&agent.config_path),
        Duration::from_secs(30),
    );
    assert!(
        check.status.success() && !check.all().contains("drill"),
        "{}",
        check.all()
    );
    store_all_ok(cfg.port, SENDER_AE, &[], &files);
    wait_target(
        &agent.config_path,
        "mirror",
        "delivered",
        Duration::from_secs(120),
        |s| s["pending"] == 0 && s["delivered"] == 24,
    );
    orthanc.wait_for_instances(24, Duration::from_secs(30));
    let config = agent.config_path.clone();
    let spool_before = spool_object_files(&cfg);
    assert_eq!(spool_before.len(), 24);
    let scratch = cfg.data_dir.join("drill-scratch");

    // 1. Delegated to the running agent: every instance MATCH, by C-MOVE.
    let (ok, r) = drill(&config, "mirror");
    assert!(ok, "{r}\n{}", agent.log_tail());
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["retrieve"], "c-move", "{r}");
    assert_eq!(r["kind"], "dicom", "{r}");
    assert_eq!(count(&r, "MATCH"), 24, "{r}");
    assert_eq!(r["studies"].as_array().map(Vec::len), Some(4));
    assert!(r["mb_per_s"].as_f64().is_some_and(|v| v > 0.0), "{r}");
    for s in r["studies"].as_array().expect("studies") {
        assert_eq!(s["expected"], 6, "{s}");
        assert_eq!(s["retrieved"], 6, "{s}");
        let first = s["first_instance_secs"].as_f64().expect("first instance");
        let whole = s["study_secs"].as_f64().expect("whole study");
        assert!(first > 0.0 && first <= whole, "{s}");
        assert!(
            s["bytes"].as_u64().is_some_and(|b| b > 6 * 128 * 128 * 2),
            "{s}"
        );
    }
    assert!(
        files_under(&scratch).is_empty(),
        "scratch copies left: {:?}",
        files_under(&scratch)
    );
    assert_eq!(
        spool_object_files(&cfg),
        spool_before,
        "the drill touched the spool"
    );

    // 2. A C-STORE straight to the drill receiver while no drill runs is
    //    refused, and nothing of it is kept.
    let strays = synth_small_with(&dir.path().join("stray"), 1, 2, 32, &["--seed", "77"]);
    let stray_uids: Vec<String> = strays
        .iter()
        .map(|f| raw_info(f).0.sop_instance_uid)
        .collect();
    let sent: Vec<String> = files
        .iter()
        .map(|f| raw_info(f).0.sop_instance_uid)
        .collect();
    assert!(stray_uids.iter().all(|u| !sent.contains(u)), "other UIDs");
    let refused = StoreRun::parse(run(
        &mut storescu_cmd(cfg.port, "MIRROR", DRILL_AE, &["-nh"], &strays),
        Duration::from_secs(60),
    ));
    assert_eq!(refused.responses.len(), 2, "{}", refused.log());
    assert_eq!(refused.successes().len(), 0, "{}", refused.log());
    assert_eq!(refused.count(A700), 2, "{}", refused.log());
    assert!(
        agent.log().contains("no restore drill is running"),
        "{}",
        agent.log_tail()
    );
    assert_eq!(
        spool_object_files(&cfg),
        spool_before,
        "a stray reached the spool"
    );
    assert!(
        files_under(&scratch).is_empty(),
        "{:?}",
        files_under(&scratch)
    );
    let status: Value = serde_json::from_str(
        &run_ok(
            Command::new(bin())
                .args(["status", "--json", "--config"])
                .arg(&config),
            Duration::from_secs(30),
        )
        .stdout,
    )
    .expect("status JSON");
    let ingest = &status["ingest"];
    assert_eq!(ingest["stored"], 24, "{status}");
    assert_eq!(ingest["failed"], 0, "{status}");

    // 3. One instance deleted from the mirror: exactly it is MISSING.
    let gone = raw_info(&files[7]).0.sop_instance_uid;
    orthanc.delete_uid(&gone);
    let (ok, r) = drill(&config, "mirror");
    assert!(!ok, "{r}");
    assert_eq!(r["retrieve"], "c-move", "{r}");
    assert_eq!(count(&r, "MISSING"), 1, "{r}");
    assert_eq!(count(&r, "MATCH"), 23, "{r}");
    let findings = findings_of(&r);
    assert_eq!(findings.len(), 1, "{r}");
    assert_eq!(findings[0]["sop_instance_uid"], gone);
    assert_eq!(findings[0]["verdict"], "MISSING");
    agent.stop();

    // The index holds the 24 instances and none of the strays.
    let rows = index_dump(&config);
    assert_eq!(rows.len(), 24);
    assert!(
        rows.iter()
            .all(|row| !stray_uids.contains(&row.sop_instance_uid)),
        "a stray was indexed"
    );
    assert_eq!(spool_object_files(&cfg), spool_before);

    // 4. The agent stopped: `drill` serves the drill receiver itself. The
    //    deleted instance uploaded again, everything MATCHes.
    orthanc.upload(&files[7]);
    let (ok, r) = drill(&config, "mirror");
    assert!(ok, "{r}");
    assert_eq!(r["retrieve"], "c-move", "{r}");
    assert_eq!(count(&r, "MATCH"), 24, "{r}");
    for s in r["studies"].as_array().expect("studies") {
        assert!(s["first_instance_secs"].as_f64().is_some(), "{s}");
    }
    assert_eq!(spool_object_files(&cfg), spool_before);
    assert_eq!(index_dump(&config).len(), 24);
    // The history has the three C-MOVE drills.
    let out = run_ok(
        Command::new(bin())
            .args(["drills", "--json", "--config"])
            .arg(&config),
        Duration::from_secs(30),
    );
    let h: Value = serde_json::from_str(&out.stdout).expect("history JSON");
    let h = h.as_array().expect("list");
    assert_eq!(h.len(), 3);
    assert!(h.iter().all(|d| d["retrieve"] == "c-move"), "{h:?}");
}
