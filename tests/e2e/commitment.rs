//! Storage commitment, SCP role (issue 21): senders ask the agent whether it
//! has taken responsibility for their objects, and get committed for
//! exactly what it holds durably and failed for the rest.
//!
//! - Orthanc (DCMTK-based) as the requester, through its REST call
//!   `/modalities/{id}/storage-commitment`: it releases right after the
//!   N-ACTION, so the report comes on a new association the agent opens to
//!   Orthanc as a configured remote AE.
//! - pynetdicom as the requester that keeps its association open: the
//!   report comes on that association.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::*;

const CT: &str = "1.2.840.10008.5.1.4.1.1.2";
const MR: &str = "1.2.840.10008.5.1.4.1.1.4";
const NEVER_SENT: &str = "1.2.826.0.1.3680043.2.1143.999999.1";

/// (SOP class, SOP instance) of each file.
fn refs(files: &[std::path::PathBuf]) -> Vec<(String, String)> {
    files
        .iter()
        .map(|f| {
            let m = read_meta(&std::fs::read(f).expect("reading a sent file"));
            (m.sop_class_uid, m.sop_instance_uid)
        })
        .collect()
}

/// `status --json` of the running agent: its storage commitment counters.
fn commitment_status(config_path: &Path) -> Value {
    let out = run(
        Command::new(bin())
            .args(["status", "--json", "--config"])
            .arg(config_path),
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "status failed: {}", out.all());
    let v: Value = serde_json::from_str(&out.stdout).expect("status JSON");
    assert_eq!(v["running"], true, "{v}");
    v["ingest"]["commitment"].clone()
}

#[test]
fn orthanc_asks_for_commitment_and_gets_the_report_on_a_new_association() {
    let dir = tempdir();
    let files = synth_small(&dir.path().join("in"), 1, 4, 64);
    let stored = refs(&files);
    assert!(stored.iter().all(|(c, _)| c == CT), "synth writes CT");

    let orthanc_port = free_port();
    let mut cfg = AgentConfig::new(&dir.path().join("data"));
    // Orthanc as a remote AE: where reports go when it has released.
    cfg.extra_toml = format!(
        "\n[[remote_device]]\nname = \"orthanc\"\n\n[[remote_device.network_connection]]\nname = \"dicom\"\nhostname = \"127.0.0.1\"\nport = {orthanc_port}\n\n[[remote_device.network_ae]]\nae_title = \"ORTHANC_SC\"\nassociation_acceptor = true\nassociation_initiator = true\nnetwork_connections = [\"dicom\"]\n\n[admin]\nlisten = \"127.0.0.1:{}\"\n",
        free_port()
    );
    let agent = Agent::start(&cfg);
    store_all_ok(cfg.port, SENDER_AE, &[], &files);

    let orthanc = Orthanc::start_with(
        &dir.path().join("orthanc"),
        "ORTHANC_SC",
        orthanc_port,
        free_port(),
        &OrthancOptions {
            modalities: vec![OrthancModality::local("agent", AGENT_AE, cfg.port)],
            ..OrthancOptions::default()
        },
    );
    // What the agent holds, one it never received, and one it holds under
    // another SOP class than the one asked.
    let mut asked: Vec<(String, String)> = stored.clone();
    asked.push((CT.to_string(), NEVER_SENT.to_string()));
    let conflict = (MR.to_string(), stored[0].1.clone());
    asked.push(conflict.clone());
    let body = serde_json::json!({
        "DicomInstances": asked.iter().map(|(c, i)| serde_json::json!([c, i])).collect::<Vec<_>>(),
        "Timeout": 60,
    });
    let (code, answer) = orthanc.post("/modalities/agent/storage-commitment", &body.to_string());
    let answer: Value = serde_json::from_slice(&answer).expect("Orthanc's answer");
    assert_eq!(code, 200, "{answer}");
    let transaction = answer["ID"].as_str().expect("transaction UID").to_string();

    // Orthanc shows the report once the agent has delivered it.
    let deadline = Instant::now() + Duration::from_secs(60);
    let report = loop {
        let r: Value =
            serde_json::from_slice(&orthanc.get(&format!("/storage-commitment/{transaction}")))
                .expect("report JSON");
        if r["Status"] != "Pending" {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "no storage commitment report reached Orthanc: {r}\n{}",
            agent.log_tail()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(report["Status"], "Failure", "failures exist: {report}");
    assert_eq!(report["RemoteAET"], AGENT_AE, "{report}");
    let committed: BTreeSet<(String, String)> = report["Success"]
        .as_array()
        .expect("Success list")
        .iter()
        .map(|s| {
            (
                s["SOPClassUID"].as_str().unwrap_or_default().to_string(),
                s["SOPInstanceUID"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(
        committed,
        stored.iter().cloned().collect::<BTreeSet<_>>(),
        "committed: exactly what the agent holds"
    );
    let failed: BTreeSet<(String, String, u64)> = report["Failures"]
        .as_array()
        .expect("Failures list")
        .iter()
        .map(|f| {
            (
                f["SOPClassUID"].as_str().unwrap_or_default().to_string(),
                f["SOPInstanceUID"].as_str().unwrap_or_default().to_string(),
                f["FailureReason"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        failed,
        BTreeSet::from([
            (CT.to_string(), NEVER_SENT.to_string(), 0x0112),
            (conflict.0.clone(), conflict.1.clone(), 0x0119),
        ]),
        "failed: the UID never sent (0112H) and the class conflict (0119H)"
    );
    let c = commitment_status(&agent.config_path);
    assert_eq!(c["requests"], 1, "{c}");
    assert_eq!(c["committed"], stored.len() as u64, "{c}");
    assert_eq!(c["failed"], 2, "{c}");
    assert_eq!(c["reports_sent"], 1, "on a new association: {c}");
    assert_eq!(c["reports_undelivered"], 0, "{c}");
    agent.stop();
}

/// Run `commit_scu.py` against the agent: the report it got on its own
/// association.
fn ask_on_one_association(
    port: u16,
    calling: &str,
    uid: &str,
    asked: &[(String, String)],
) -> Value {
    let mut cmd = Command::new(pynetdicom_python());
    cmd.arg(peer_script("commit_scu.py")).args([
        "127.0.0.1",
        &port.to_string(),
        AGENT_AE,
        calling,
        uid,
        "10",
    ]);
    for (c, i) in asked {
        cmd.arg(format!("{c}:{i}"));
    }
    let out = run_ok(&mut cmd, Duration::from_secs(60));
    serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}", out.all()))
}

#[test]
fn a_requester_that_waits_gets_the_report_on_its_own_association() {
    let dir = tempdir();
    let files = synth_small(&dir.path().join("in"), 1, 3, 64);
    let stored = refs(&files);
    // No remote AE configured: the report can only go on the association.
    let mut cfg = AgentConfig::new(&dir.path().join("data"));
    cfg.extra_toml = format!("\n[admin]\nlisten = \"127.0.0.1:{}\"\n", free_port());
    let agent = Agent::start(&cfg);
    store_all_ok(cfg.port, SENDER_AE, &[], &files);

    let mut asked = stored.clone();
    asked.push((CT.to_string(), NEVER_SENT.to_string()));
    let r = ask_on_one_association(cfg.port, "PYNETDICOM", "2.25.4242", &asked);
    assert_eq!(r["action_status"], 0, "N-ACTION answered Success: {r}");
    assert_eq!(r["event_type"], 2, "failures exist: {r}");
    assert_eq!(r["transaction_uid"], "2.25.4242", "{r}");
    let committed: BTreeSet<(String, String)> = r["committed"]
        .as_array()
        .expect("committed")
        .iter()
        .map(|p| {
            (
                p[0].as_str().unwrap_or_default().into(),
                p[1].as_str().unwrap_or_default().into(),
            )
        })
        .collect();
    assert_eq!(
        committed,
        stored.iter().cloned().collect::<BTreeSet<_>>(),
        "{r}"
    );
    assert_eq!(
        r["failed"],
        serde_json::json!([[CT, NEVER_SENT, 0x0112]]),
        "{r}"
    );

    // Everything held: event type 1, no failed sequence.
    let r = ask_on_one_association(cfg.port, "PYNETDICOM", "2.25.4243", &stored);
    assert_eq!(
        (r["action_status"].clone(), r["event_type"].clone()),
        (0.into(), 1.into()),
        "{r}"
    );
    assert_eq!(r["failed"], serde_json::json!([]), "{r}");

    let c = commitment_status(&agent.config_path);
    assert_eq!(c["requests"], 2, "{c}");
    assert_eq!(
        c["reports_sent"], 0,
        "both on the request's association: {c}"
    );
    assert_eq!(c["reports_undelivered"], 0, "{c}");
    agent.stop();
}
