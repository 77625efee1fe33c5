//! Issue 3 (in progress): replication to a real Orthanc mirror.

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

/// `pacs-mirror status --json` of the running agent: the mirror target.
fn mirror_status(config_path: &std::path::Path) -> serde_json::Value {
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
    v["targets"]["mirror"].clone()
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
    let mut orthanc = Orthanc::start(
        &dir.path().join("orthanc"),
        "MIRROR",
        free_port(),
        free_port(),
    );
    let mut cfg = AgentConfig::new(&dir.path().join("data"));
    mirror_config(&mut cfg, &orthanc);
    let agent = Agent::start(&cfg);

    let files = &corpus_1000()[..200];
    store_all_ok(cfg.port, SENDER_AE, &[], files);
    orthanc.wait_for_instances(200, Duration::from_secs(120));
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

    let t = wait_status(&agent.config_path, "all delivered", |t| t["pending"] == 0);
    assert_eq!(t["delivered"], 200, "{t}");

    // The mirror goes down: ingest does not care, the lag figures grow and
    // the circuit opens.
    orthanc.stop();
    let more = &corpus_1000()[200..250];
    store_all_ok(cfg.port, SENDER_AE, &[], more);
    let t = wait_status(&agent.config_path, "lag during the outage", |t| {
        t["pending"] == 50 && t["circuit_open"] == true
    });
    assert!(
        t["pending_bytes"].as_u64().unwrap_or(0) > 50 * 500_000,
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
    orthanc.wait_for_instances(250, Duration::from_secs(120));
    for f in more {
        let (meta, dataset) = raw_info(f);
        assert_eq!(
            dataset_bytes(&orthanc.instance_file(&meta.sop_instance_uid)),
            &dataset[..]
        );
    }
    let t = wait_status(&agent.config_path, "lag back to 0", |t| {
        t["pending"] == 0 && t["circuit_open"] == false
    });
    assert_eq!(t["delivered"], 250, "{t}");
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
