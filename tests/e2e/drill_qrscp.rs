//! Acceptance 3 (issue 14): a C-MOVE drill against a mirror that sends a
//! wrong Move Originator AE Title passes, and strays are still refused.
//!
//! The mirror is pynetdicom's `qrscp` app (PyPI, `python -m pynetdicom
//! qrscp`, configured by an ini file): a real, independent Q/R SCP over
//! SQLite that puts its **own** AE title (MIRROR) as Move Originator AE
//! Title in its C-STORE sub-operations, where PS3.7 says it should be the
//! C-MOVE requester's (PACS_MIRROR). The drill receiver takes them because
//! their calling AE (MIRROR) and study match exactly one running drill, and
//! logs a WARN naming the peer and the rule. Before that tolerance every
//! sub-operation was refused (A700) and the drill failed with every instance
//! MISSING.
//!
//! Why the bit-for-bit comparison holds although qrscp re-encodes: qrscp
//! decodes each object it receives with pydicom and writes it again
//! (`save_as(write_like_original=False)`: group lengths dropped, odd values
//! padded, undefined lengths as pydicom keeps them), then for a C-MOVE reads
//! the file and pynetdicom encodes the data set once more. The objects here
//! are the agent's own synthetic CTs: Explicit VR Little Endian, no group
//! length elements, every value of even length, no sequences — a data set
//! pydicom writes back byte for byte. The test checks that precondition
//! first (the data set of every file in qrscp's storage equals the one we
//! sent and hold), so a failed drill below means the drill or the inbox, not
//! pydicom's re-encoding.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::*;
use crate::s3::wait_target;

/// The drill receiver AE.
const DRILL_AE: &str = "PM_DRILL";
/// qrscp's AE title (and so the Move Originator it sends).
const QRSCP_AE: &str = "MIRROR";

/// pynetdicom's qrscp on 127.0.0.1; killed on drop.
struct QrScp {
    child: Child,
    port: u16,
    instances: PathBuf,
    log: PathBuf,
}

impl QrScp {
    /// Start it with storage under `dir`, knowing the move destination
    /// `destination` at 127.0.0.1:`destination_port`.
    fn start(python: &Path, dir: &Path, destination: &str, destination_port: u16) -> QrScp {
        std::fs::create_dir_all(dir).expect("creating the qrscp folder");
        let port = free_port();
        let instances = dir.join("instances");
        std::fs::create_dir_all(&instances).expect("creating the qrscp instances folder");
        let ini = dir.join("qrscp.ini");
        std::fs::write(
            &ini,
            format!(
                "[DEFAULT]\n\
                 ae_title: {QRSCP_AE}\n\
                 port: {port}\n\
                 max_pdu: 16382\n\
                 acse_timeout: 30\n\
                 dimse_timeout: 30\n\
                 network_timeout: 30\n\
                 bind_address: 127.0.0.1\n\
                 instance_location: {}\n\
                 database_location: {}\n\
                 log_identifier: False\n\
                 \n[{destination}]\n\
                 address: 127.0.0.1\n\
                 port: {destination_port}\n",
                instances.display(),
                dir.join("instances.sqlite").display()
            ),
        )
        .expect("writing qrscp.ini");
        let log = dir.join("qrscp.log");
        let child = Command::new(python)
            .args(["-m", "pynetdicom", "qrscp", "-v", "-c"])
            .arg(&ini)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).expect("creating the qrscp log"))
            .stderr(
                std::fs::OpenOptions::new()
                    .append(true)
                    .open(&log)
                    .expect("opening the qrscp log"),
            )
            .spawn()
            .expect("starting python -m pynetdicom qrscp");
        let mut qr = QrScp {
            child,
            port,
            instances,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(st)) = qr.child.try_wait() {
                panic!("qrscp exited at start ({st}){}", log_tail(&qr.log));
            }
            let out = run(
                Command::new(tool("echoscu")).args([
                    "-to",
                    "5",
                    "-aec",
                    QRSCP_AE,
                    "127.0.0.1",
                    &port.to_string(),
                ]),
                Duration::from_secs(15),
            );
            if out.status.success() {
                return qr;
            }
            assert!(
                Instant::now() < deadline,
                "qrscp did not answer C-ECHO on port {port} within 30 s{}",
                log_tail(&qr.log)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The files qrscp holds (one per SOP Instance UID).
    fn files(&self) -> Vec<PathBuf> {
        files_under(&self.instances)
    }
}

impl Drop for QrScp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn count(report: &Value, verdict: &str) -> u64 {
    report["counts"][verdict].as_u64().unwrap_or(0)
}

#[test]
fn c_move_drill_against_pynetdicom_qrscp_passes_despite_its_move_originator() {
    let python = pynetdicom_python();
    let dir = tempdir();
    let agent_port = free_port();
    let qr = QrScp::start(&python, &dir.path().join("qrscp"), DRILL_AE, agent_port);
    let admin = free_port();
    let mut cfg = AgentConfig::new(&dir.path().join("data"));
    cfg.port = agent_port;
    cfg.ae_extra = "association_initiator = true\n".into();
    cfg.extra_toml = format!(
        "\n[[device.network_ae]]\nae_title = \"{DRILL_AE}\"\nnetwork_connections = [\"dicom\"]\n\
         drill_receiver = true\nallowed_calling_aes = [\"{QRSCP_AE}\"]\n\
         {}\
         \n[[drill]]\ntarget = \"mirror\"\nrandom_studies = 2\nnewest_study = false\ntimeout_secs = 10\n\
         retrieve = \"c-move\"\nmove_destination = \"{DRILL_AE}\"\n\
         \n[admin]\nlisten = \"127.0.0.1:{admin}\"\n",
        mirror_target_toml(
            qr.port,
            "association_initiator = true\nsource_addresses = [\"127.0.0.1\"]\n"
        ),
    );
    let files = synth_small(&dir.path().join("in"), 2, 3, 32);
    assert_eq!(files.len(), 6);
    let agent = Agent::start(&cfg);
    store_all_ok(cfg.port, SENDER_AE, &[], &files);
    wait_target(
        &agent.config_path,
        "mirror",
        "delivered",
        Duration::from_secs(60),
        |s| s["pending"] == 0 && s["delivered"] == 6,
    );

    // Precondition: qrscp holds every object with our data set bytes (it
    // stores before it answers, and the agent counts an object delivered
    // only on its Success).
    let held = qr.files();
    assert_eq!(held.len(), 6, "qrscp holds {held:?}{}", log_tail(&qr.log));
    for f in &files {
        let (meta, ours) = raw_info(f);
        let theirs = std::fs::read(qr.instances.join(&meta.sop_instance_uid))
            .unwrap_or_else(|e| panic!("qrscp does not hold {}: {e}", meta.sop_instance_uid));
        assert!(
            dataset_bytes(&theirs) == ours.as_slice(),
            "qrscp re-encoded {} into other bytes: this object cannot test a bit-for-bit drill",
            meta.sop_instance_uid
        );
    }

    // The drill: every instance comes back by C-MOVE, moved "for MIRROR".
    let out = run(
        Command::new(bin())
            .args(["drill", "--json", "--target", "mirror", "--config"])
            .arg(&agent.config_path),
        Duration::from_secs(120),
    );
    let reports: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("drill JSON ({e}): {}", out.all()));
    let r = &reports[0];
    assert!(
        out.status.success(),
        "the drill failed: {r}\n{}{}",
        agent.log_tail(),
        log_tail(&qr.log)
    );
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["retrieve"], "c-move", "{r}");
    assert_eq!(count(r, "MATCH"), 6, "{r}");
    assert_eq!(r["studies"].as_array().map(Vec::len), Some(2), "{r}");
    let log = agent.log();
    let warned: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("Move Originator AE Title"))
        .collect();
    // One per drilled study (each has its own registration) and peer.
    assert!(
        (1..=2).contains(&warned.len()),
        "want one WARN per drilled study about qrscp's Move Originator:\n{}",
        agent.log_tail()
    );
    for part in [
        &format!("calling_ae={QRSCP_AE}"),
        "peer=127.0.0.1:",
        &format!("move_originator={QRSCP_AE}"),
        "expected_move_originator=PACS_MIRROR",
        "PS3.7",
    ] {
        assert!(
            warned.iter().all(|l| l.contains(part)),
            "{part:?} missing from {warned:#?}"
        );
    }

    // No drill running: a C-STORE from the mirror's AE to the drill
    // receiver is still refused, and nothing of it is kept.
    let spool_before = spool_object_files(&cfg);
    let strays = synth_small_with(&dir.path().join("stray"), 1, 1, 32, &["--seed", "77"]);
    let refused = StoreRun::parse(run(
        &mut storescu_cmd(cfg.port, QRSCP_AE, DRILL_AE, &["-nh"], &strays),
        Duration::from_secs(60),
    ));
    assert_eq!(refused.responses.len(), 1, "{}", refused.log());
    assert_eq!(refused.count(A700), 1, "{}", refused.log());
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
    agent.stop();
}
