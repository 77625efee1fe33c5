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
    running_status(config_path)["ingest"]["commitment"].clone()
}

/// Orthanc's report of `transaction`, once it is no longer pending.
fn orthanc_report(o: &Orthanc, transaction: &str, limit: Duration, agent: &Agent) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let r: Value =
            serde_json::from_slice(&o.get(&format!("/storage-commitment/{transaction}")))
                .expect("report JSON");
        if r["Status"] != "Pending" {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "no storage commitment report reached Orthanc: {r}\n{}",
            agent.log_tail()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Ask Orthanc (REST) to request storage commitment of `asked` from the
/// agent (its modality "agent"); the transaction UID.
fn orthanc_asks(o: &Orthanc, asked: &[(String, String)], timeout_secs: u64) -> String {
    let body = serde_json::json!({
        "DicomInstances": asked.iter().map(|(c, i)| serde_json::json!([c, i])).collect::<Vec<_>>(),
        "Timeout": timeout_secs,
    });
    let (code, answer) = o.post("/modalities/agent/storage-commitment", &body.to_string());
    let answer: Value = serde_json::from_slice(&answer).expect("Orthanc's answer");
    assert_eq!(code, 200, "{answer}");
    answer["ID"].as_str().expect("transaction UID").to_string()
}

/// (SOP class, SOP instance) of a report's Success list.
fn succeeded(report: &Value) -> BTreeSet<(String, String)> {
    listed(report, "Success")
        .into_iter()
        .map(|(c, i, _)| (c, i))
        .collect()
}

/// (SOP class, SOP instance, Failure Reason; 0 when absent) of a report's
/// list `key`.
fn listed(report: &Value, key: &str) -> BTreeSet<(String, String, u64)> {
    report[key]
        .as_array()
        .unwrap_or_else(|| panic!("no {key} list: {report}"))
        .iter()
        .map(|f| {
            (
                f["SOPClassUID"].as_str().unwrap_or_default().to_string(),
                f["SOPInstanceUID"].as_str().unwrap_or_default().to_string(),
                f["FailureReason"].as_u64().unwrap_or(0),
            )
        })
        .collect()
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
    let transaction = orthanc_asks(&orthanc, &asked, 60);
    // Orthanc shows the report once the agent has delivered it.
    let report = orthanc_report(&orthanc, &transaction, Duration::from_secs(60), &agent);
    assert_eq!(report["Status"], "Failure", "failures exist: {report}");
    assert_eq!(report["RemoteAET"], AGENT_AE, "{report}");
    assert_eq!(
        succeeded(&report),
        stored.iter().cloned().collect::<BTreeSet<_>>(),
        "committed: exactly what the agent holds"
    );
    assert_eq!(
        listed(&report, "Failures"),
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

// ---------------------------------------------------------------------------
// SCU role: the agent asks its mirror (Orthanc) for commitment
// ---------------------------------------------------------------------------

/// The agent's `/status` (admin endpoint).
fn admin_status(admin: u16) -> Value {
    serde_json::from_str(&admin_get(admin, "/status")).unwrap_or(Value::Null)
}

fn wait_status(admin: u16, what: &str, limit: Duration, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let s = admin_status(admin);
        if ok(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: never seen; last status: {s}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Orthanc `ORTHANC_M` on fixed ports with storage under `dir`, knowing the
/// agent (or not: then it cannot report).
fn mirror_orthanc(dir: &Path, dicom: u16, http: u16, agent_port: Option<u16>) -> Orthanc {
    Orthanc::start_with(
        dir,
        "ORTHANC_M",
        dicom,
        http,
        &OrthancOptions {
            modalities: agent_port
                .map(|p| vec![OrthancModality::local("agent", AGENT_AE, p)])
                .unwrap_or_default(),
            ..OrthancOptions::default()
        },
    )
}

/// Delete the instance with this SOP Instance UID from Orthanc (REST).
fn orthanc_delete(o: &Orthanc, sop_instance_uid: &str) {
    let (code, body) = o.post("/tools/lookup", sop_instance_uid);
    assert_eq!(code, 200);
    let found: Value = serde_json::from_slice(&body).expect("lookup JSON");
    let id = found[0]["ID"].as_str().expect("instance found").to_string();
    let out = Command::new("curl")
        .args(["-sf", "--max-time", "10", "-X", "DELETE"])
        .arg(format!("http://127.0.0.1:{}/instances/{id}", o.http_port))
        .output()
        .expect("curl");
    assert!(out.status.success(), "DELETE /instances/{id} failed");
}

fn orthanc_instances(o: &Orthanc) -> usize {
    serde_json::from_slice::<Vec<Value>>(&o.get("/instances"))
        .expect("instances JSON")
        .len()
}

#[test]
fn delivered_means_orthanc_committed_it_through_refusal_kill_9_and_failures() {
    let dir = tempdir();
    let files = synth_small(&dir.path().join("in"), 1, 6, 64);
    let sent = refs(&files);
    let n = files.len() as u64;
    let (dicom, http, admin) = (free_port(), free_port(), free_port());
    let mut cfg = AgentConfig::new(&dir.path().join("data"));
    cfg.extra_toml = format!(
        "\n[[remote_device]]\nname = \"mirror\"\n[[remote_device.network_connection]]\nname = \"dicom\"\nhostname = \"127.0.0.1\"\nport = {dicom}\n\
         [[remote_device.network_ae]]\nae_title = \"ORTHANC_M\"\nassociation_acceptor = true\nassociation_initiator = true\nnetwork_connections = [\"dicom\"]\n\
         \n[[target]]\ntype = \"dicom\"\nname = \"mirror\"\nremote_ae = \"ORTHANC_M\"\nstorage_commitment = true\ncommitment_timeout_secs = 2\nrefused_attempts = 5\nretry_initial_secs = 1\nretry_max_secs = 2\n\
         \n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\
         \n[alerts]\ncheck_interval_secs = 1\n"
    );
    let orthanc_dir = dir.path().join("orthanc");

    // 1. Orthanc does not know the agent: it stores, but no report ever
    //    comes. Nothing is delivered; after three requests the alert fires.
    let orthanc = mirror_orthanc(&orthanc_dir, dicom, http, None);
    let agent = Agent::start(&cfg);
    store_all_ok(cfg.port, SENDER_AE, &[], &files);
    let s = wait_status(
        admin,
        "commitment_overdue alert",
        Duration::from_secs(90),
        |s| {
            s["alerts"].as_array().is_some_and(|a| {
                a.iter()
                    .any(|x| x["kind"] == "commitment_overdue" && x["subject"] == "mirror")
            })
        },
    );
    let t = &s["targets"]["mirror"];
    assert_eq!(
        orthanc_instances(&orthanc),
        files.len(),
        "Orthanc stored them"
    );
    assert_eq!(t["delivered"], 0, "stored is not delivered: {t}");
    assert_eq!(t["pending"], 0, "{t}");
    assert_eq!(t["commitment"]["awaiting"], n, "{t}");
    assert!(
        t["commitment"]["most_requests"].as_u64().unwrap_or(0) >= 3,
        "{t}"
    );

    // 2. Orthanc loses two instances; the agent is killed while its
    //    request is open; Orthanc now knows the agent.
    orthanc_delete(&orthanc, &sent[0].1);
    orthanc_delete(&orthanc, &sent[1].1);
    assert_eq!(orthanc_instances(&orthanc), files.len() - 2);
    agent.crash();
    drop(orthanc);
    let orthanc = mirror_orthanc(&orthanc_dir, dicom, http, Some(cfg.port));
    let agent = Agent::start(&cfg);

    // 3. The open request is asked again after the restart; Orthanc
    //    reports the two it lacks failed; the agent sends them again and
    //    asks again; everything ends committed and delivered.
    let s = wait_status(
        admin,
        "every object committed",
        Duration::from_secs(120),
        |s| {
            let t = &s["targets"]["mirror"];
            t["delivered"] == n && t["commitment"]["awaiting"] == 0 && t["pending"] == 0
        },
    );
    let t = &s["targets"]["mirror"];
    assert_eq!(t["dead_letters"], 0, "{t}");
    assert_eq!(t["commitment"]["open_requests"], 0, "{t}");
    assert_eq!(
        orthanc_instances(&orthanc),
        files.len(),
        "the two Orthanc lost were sent again"
    );
    // Orthanc reported on associations of its own: four committed and the
    // two it lacked failed, then those two committed once sent again.
    let log = agent.log();
    assert!(
        log.contains("committed=4 resent=2 dead=0"),
        "{}",
        agent.log_tail()
    );
    assert!(
        log.contains("committed=2 resent=0 dead=0"),
        "{}",
        agent.log_tail()
    );
    // the alert resolved once nothing is overdue
    wait_status(admin, "alert resolved", Duration::from_secs(30), |s| {
        s["alerts"]
            .as_array()
            .is_some_and(|a| !a.iter().any(|x| x["kind"] == "commitment_overdue"))
    });
    agent.stop();
}

#[test]
fn a_sender_that_wants_the_remote_copy_first_hears_committed_only_once_the_mirror_has_it() {
    let dir = tempdir();
    let files = synth_small(&dir.path().join("in"), 1, 4, 64);
    let stored = refs(&files);
    let (orthanc_port, mirror_port) = (free_port(), free_port());
    let mut cfg = AgentConfig::new(&dir.path().join("data"));
    // Orthanc (the sender) wants its objects on the mirror before it hears
    // "committed"; the mirror (DCMTK storescp) is down at first.
    cfg.extra_toml = format!(
        "\n[[remote_device]]\nname = \"orthanc\"\n[[remote_device.network_connection]]\nname = \"dicom\"\nhostname = \"127.0.0.1\"\nport = {orthanc_port}\n\
         [[remote_device.network_ae]]\nae_title = \"ORTHANC_SC\"\nassociation_acceptor = true\nassociation_initiator = true\nnetwork_connections = [\"dicom\"]\ncommit_after_delivery_to = [\"mirror\"]\ncommit_wait_secs = 120\n\
         \n[[remote_device]]\nname = \"mirror\"\n[[remote_device.network_connection]]\nname = \"dicom\"\nhostname = \"127.0.0.1\"\nport = {mirror_port}\n\
         [[remote_device.network_ae]]\nae_title = \"MIRROR\"\nassociation_acceptor = true\nnetwork_connections = [\"dicom\"]\n\
         \n[[target]]\ntype = \"dicom\"\nname = \"mirror\"\nremote_ae = \"MIRROR\"\nretry_initial_secs = 1\nretry_max_secs = 1\ntimeout_secs = 5\n\
         \n[admin]\nlisten = \"127.0.0.1:{}\"\n",
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
    let mut asked = stored.clone();
    asked.push((CT.to_string(), NEVER_SENT.to_string()));
    let transaction = orthanc_asks(&orthanc, &asked, 120);

    // The mirror is down: no report while the objects are only here.
    std::thread::sleep(Duration::from_secs(3));
    let r: Value =
        serde_json::from_slice(&orthanc.get(&format!("/storage-commitment/{transaction}")))
            .expect("report JSON");
    assert_eq!(
        r["Status"], "Pending",
        "reported before the mirror has them: {r}"
    );

    // The mirror comes up; the agent delivers; then Orthanc hears.
    let mirror_dir = dir.path().join("mirror");
    let _mirror = StoreScp::start(mirror_port, "MIRROR", &mirror_dir, &[]);
    let report = orthanc_report(&orthanc, &transaction, Duration::from_secs(60), &agent);
    assert_eq!(
        files_under(&mirror_dir).len(),
        files.len(),
        "every committed object is on the mirror"
    );
    assert_eq!(report["Status"], "Failure", "{report}");
    assert_eq!(
        succeeded(&report),
        stored.iter().cloned().collect::<BTreeSet<_>>(),
        "{report}"
    );
    assert_eq!(
        listed(&report, "Failures"),
        BTreeSet::from([(CT.to_string(), NEVER_SENT.to_string(), 0x0112)]),
        "{report}"
    );
    agent.stop();
}
