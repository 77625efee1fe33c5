//! Issue 14, acceptance 2: one object per finding class, sent on the wire
//! by the test's raw DIMSE client to an agent that replicates to a real
//! Orthanc and backs up into a folder bucket. Each is stored byte-exact and
//! flagged; visible in `status`, `/metrics` and `findings list`; delivered
//! to Orthanc byte-exact or dead-lettered with Orthanc's reason; uploaded
//! to the bucket and restored from the bucket alone byte-exact into a
//! bit-preserving DCMTK storescp. The scenario runs once; one test per
//! class reads its part of the result.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;

use crate::dimse;
use crate::harness::*;

/// What the scenario saw of one class's object.
#[derive(Debug, Clone)]
struct Seen {
    sop_instance_uid: String,
    dataset: Vec<u8>,
    status: u16,
    /// `findings list --json`: the record's findings, "class: detail".
    listed: Vec<String>,
    /// In Orthanc byte-exact (Some(true)), differing (Some(false)), absent.
    in_orthanc: Option<bool>,
    /// The dead-letter reason for the mirror, if dead-lettered.
    dead_letter: Option<String>,
    /// Restored from the bucket into storescp byte-exact.
    restored: Option<bool>,
}

struct Scenario {
    seen: BTreeMap<&'static str, Seen>,
    status: Value,
    metrics: String,
}

fn explicit_el(group: u16, element: u16, vr: &[u8; 2], len: u32, value: &[u8]) -> Vec<u8> {
    let mut v = group.to_le_bytes().to_vec();
    v.extend(element.to_le_bytes());
    v.extend(vr);
    if matches!(vr, b"OB" | b"OW" | b"SQ" | b"UN" | b"UT") {
        v.extend([0, 0]);
        v.extend(len.to_le_bytes());
    } else {
        v.extend((len as u16).to_le_bytes());
    }
    v.extend(value);
    v
}

fn item(len: u32, value: &[u8]) -> Vec<u8> {
    let mut v = vec![0xFE, 0xFF, 0x00, 0xE0];
    v.extend(len.to_le_bytes());
    v.extend(value);
    v
}

/// Offset of a top-level explicit VR LE element with a 2-byte length.
fn find_el(ds: &[u8], group: u16, element: u16, vr: &[u8; 2]) -> (usize, usize) {
    let mut needle = group.to_le_bytes().to_vec();
    needle.extend(element.to_le_bytes());
    needle.extend(vr);
    let at = ds
        .windows(6)
        .position(|w| w == needle.as_slice())
        .unwrap_or_else(|| panic!("({group:04X},{element:04X}) not found"));
    (
        at + 8,
        u16::from_le_bytes([ds[at + 6], ds[at + 7]]) as usize,
    )
}

fn fill(ds: &[u8], group: u16, element: u16, pattern: &str) -> Vec<u8> {
    let (at, len) = find_el(ds, group, element, b"UI");
    let mut out = ds.to_vec();
    let f: Vec<u8> = pattern.bytes().cycle().take(len).collect();
    out[at..at + len].copy_from_slice(&f);
    out
}

/// Each class's object, from one conformant synthetic CT each.
fn objects(dir: &std::path::Path) -> Vec<(&'static str, String, Vec<u8>)> {
    let src = synth(
        &dir.join("src"),
        &[
            "--instances-per-series",
            "6",
            "--rows",
            "32",
            "--columns",
            "32",
            "--seed",
            "14",
        ],
    );
    let base: Vec<(Meta, Vec<u8>)> = src.iter().map(|f| raw_info(f)).collect();
    let pixel_at = |ds: &[u8]| {
        ds.windows(4)
            .rposition(|w| w == [0xE0, 0x7F, 0x10, 0x00])
            .expect("Pixel Data")
    };
    let mut out = Vec::new();
    // No (empty) Study Instance UID: every byte of its value a space.
    let (m, d) = &base[0];
    out.push((
        "missing_attribute",
        m.sop_instance_uid.clone(),
        fill(d, 0x0020, 0x000D, " "),
    ));
    // A SOP Instance UID with letters, in command and data set.
    let (_, d) = &base[1];
    let odd = fill(d, 0x0008, 0x0018, "1.2.826.0.1.abc.");
    let (at, len) = find_el(&odd, 0x0008, 0x0018, b"UI");
    let uid = String::from_utf8_lossy(&odd[at..at + len])
        .trim_end_matches(['\0', ' '])
        .to_string();
    out.push(("nonconformant_uid", uid, odd));
    // Cut 1000 bytes short inside Pixel Data.
    let (m, d) = &base[2];
    out.push((
        "structure",
        m.sop_instance_uid.clone(),
        d[..d.len() - 1000].to_vec(),
    ));
    // A Secondary Capture SOP Class UID in the data set of a CT store.
    let (m, d) = &base[3];
    let (at, _) = find_el(d, 0x0008, 0x0016, b"UI");
    let mut sc = d.clone();
    let n = dimse::CT_IMAGE_STORAGE.len();
    assert_eq!(&sc[at..at + n], dimse::CT_IMAGE_STORAGE.as_bytes());
    sc[at..at + n].copy_from_slice(dimse::SECONDARY_CAPTURE.as_bytes());
    out.push(("sop_class_mismatch", m.sop_instance_uid.clone(), sc));
    // Encapsulated Pixel Data under Explicit VR Little Endian (as odil and
    // PixelMed were seen sending compressed pixels).
    let (m, d) = &base[4];
    let mut enc = d[..pixel_at(d)].to_vec();
    enc.extend(explicit_el(0x7FE0, 0x0010, b"OB", 0xFFFF_FFFF, &[]));
    enc.extend(item(0, &[]));
    enc.extend(item(6, &[0xFF, 0xD8, 0xFF, 0xD9, 0, 0]));
    enc.extend([0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
    out.push(("encapsulated_on_native", m.sop_instance_uid.clone(), enc));
    // An undefined-length item inside encapsulated Pixel Data (PixelMed).
    let (m, d) = &base[5];
    let mut undef = d[..pixel_at(d)].to_vec();
    undef.extend(explicit_el(0x7FE0, 0x0010, b"OB", 0xFFFF_FFFF, &[]));
    undef.extend(item(0, &[]));
    undef.extend(item(0xFFFF_FFFF, &[0xFF, 0xD8, 0xFF, 0xD9]));
    undef.extend([0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
    out.push((
        "undefined_length_fragment",
        m.sop_instance_uid.clone(),
        undef,
    ));
    out
}

fn scenario() -> &'static Scenario {
    static S: OnceLock<Scenario> = OnceLock::new();
    S.get_or_init(run_scenario)
}

fn run_scenario() -> Scenario {
    let dir = tempdir();
    let dir = dir.keep();
    let mut orthanc = Orthanc::start(&dir.join("orthanc"), "MIRROR", free_port(), free_port());
    let mut cfg = AgentConfig::new(&dir.join("data"));
    let admin = free_port();
    cfg.ae_extra = "association_initiator = true\n".into();
    cfg.extra_toml = format!(
        "\n[[remote_device]]\nname = \"mirror\"\n\
         [[remote_device.network_connection]]\nname = \"dicom\"\nhostname = \"127.0.0.1\"\nport = {}\n\
         [[remote_device.network_ae]]\nae_title = \"MIRROR\"\nassociation_acceptor = true\nnetwork_connections = [\"dicom\"]\n\
         \n[[target]]\ntype = \"dicom\"\nname = \"mirror\"\nremote_ae = \"MIRROR\"\n\
         retry_initial_secs = 1\nretry_max_secs = 2\ntimeout_secs = 5\nrefused_attempts = 1\n\
         \n[[target]]\ntype = \"object_store\"\nname = \"backup\"\nurl = \"file://{}\"\n\
         \n[admin]\nlisten = \"127.0.0.1:{admin}\"\n",
        orthanc.dicom_port,
        dir.join("bucket").display()
    );
    let agent = Agent::start(&cfg);
    let objects = objects(&dir);
    let mut a = dimse::associate_ct(cfg.port, SENDER_AE, &|| agent.log_tail());
    let mut seen = BTreeMap::new();
    for (k, (class, uid, ds)) in objects.iter().enumerate() {
        let status = a
            .store(1, k as u16 + 1, dimse::CT_IMAGE_STORAGE, uid, ds)
            .unwrap_or_else(|e| panic!("{class}: no C-STORE-RSP ({e}){}", agent.log_tail()));
        seen.insert(
            *class,
            Seen {
                sop_instance_uid: uid.clone(),
                dataset: ds.clone(),
                status,
                listed: Vec::new(),
                in_orthanc: None,
                dead_letter: None,
                restored: None,
            },
        );
    }
    a.release().expect("A-RELEASE");

    // Both targets settle: everything delivered or dead-lettered.
    let status_of = || -> Value {
        let out = run_ok(
            std::process::Command::new(bin())
                .args(["status", "--json", "--config"])
                .arg(&agent.config_path),
            Duration::from_secs(30),
        );
        serde_json::from_str(&out.stdout).expect("status JSON")
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let status = loop {
        let s = status_of();
        if s["targets"]["mirror"]["pending"] == 0 && s["targets"]["backup"]["pending"] == 0 {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "targets never settled: {s}"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    let metrics = admin_get(admin, "/metrics");
    let listed = run_ok(
        std::process::Command::new(bin())
            .args(["findings", "list", "--json", "--config"])
            .arg(&agent.config_path),
        Duration::from_secs(30),
    );
    for line in listed.stdout.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).expect("findings list JSON");
        let uid = v["sop_instance_uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let findings = finding_strings(&v);
        for s in seen.values_mut() {
            if s.sop_instance_uid == uid {
                s.listed = findings.clone();
            }
        }
    }
    for s in seen.values_mut() {
        let r = orthanc_instance(&orthanc, &s.sop_instance_uid);
        s.in_orthanc = r.map(|held| dataset_bytes(&held) == s.dataset.as_slice());
    }
    let config_path = agent.config_path.clone();
    agent.stop();
    orthanc.stop();
    let dead = run_ok(
        std::process::Command::new(bin())
            .args(["dead-letter", "list", "--target", "mirror", "--config"])
            .arg(&config_path),
        Duration::from_secs(30),
    );
    for line in dead.stdout.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).expect("dead letter JSON");
        for s in seen.values_mut() {
            if v["sop_instance_uid"] == s.sop_instance_uid.as_str() {
                s.dead_letter = v["reason"].as_str().map(str::to_string);
            }
        }
    }

    // Restore from the bucket alone into a bit-preserving storescp.
    let received = dir.join("restored");
    std::fs::create_dir_all(&received).expect("mkdir");
    let port = free_port();
    let mut storescp = std::process::Command::new(tool("storescp"))
        .args(["+B", "+xa", "-aet", "RESTORED", "-od"])
        .arg(&received)
        .arg(port.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("storescp");
    std::thread::sleep(Duration::from_millis(500));
    let out = run(
        std::process::Command::new(bin())
            .args(["restore", "--quiet", "--json", "--from", "backup", "--to"])
            .arg(format!("RESTORED@127.0.0.1:{port}"))
            .arg("--config")
            .arg(&config_path),
        Duration::from_secs(300),
    );
    let _ = storescp.kill();
    let _ = storescp.wait();
    eprintln!("restore: {}", out.all());
    let restored: Vec<PathBuf> = files_under(&received);
    for s in seen.values_mut() {
        s.restored = Some(restored.iter().any(|p| {
            let bytes = std::fs::read(p).expect("read");
            read_meta(&bytes).sop_instance_uid == s.sop_instance_uid
                && dataset_bytes(&bytes) == s.dataset.as_slice()
        }));
    }
    Scenario {
        seen,
        status,
        metrics,
    }
}

/// Orthanc's copy of an instance, if it holds it.
fn orthanc_instance(orthanc: &Orthanc, uid: &str) -> Option<Vec<u8>> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| orthanc.instance_file(uid))).ok()
}

fn check(class: &str) {
    let s = scenario();
    let seen = &s.seen[class];
    assert_eq!(seen.status, 0x0000, "{class}: stored with Success");
    assert!(
        seen.listed
            .iter()
            .any(|f| f.starts_with(&format!("{class}: "))),
        "{class}: findings list shows {:?}",
        seen.listed
    );
    let count = s.status["findings"]["by_class"][class]
        .as_u64()
        .unwrap_or(0);
    assert!(count >= 1, "{class}: status shows {}", s.status["findings"]);
    assert!(
        s.metrics.lines().any(|l| l
            .starts_with(&format!("pacs_mirror_findings{{class=\"{class}\"}} "))
            && !l.ends_with(" 0")),
        "{class}: /metrics:\n{}",
        s.metrics
    );
    eprintln!(
        "{class}: in Orthanc byte-exact {:?}, dead letter {:?}, findings {:?}",
        seen.in_orthanc, seen.dead_letter, seen.listed
    );
    match (seen.in_orthanc, &seen.dead_letter) {
        (Some(true), None) => {}
        (None, Some(reason)) => {
            assert!(!reason.is_empty(), "{class}: dead letter without a reason")
        }
        other => panic!("{class}: neither delivered byte-exact nor dead-lettered: {other:?}"),
    }
    assert_eq!(
        seen.restored,
        Some(true),
        "{class}: not restored byte-exact from the bucket"
    );
}

#[test]
fn no_study_uid_is_kept_flagged_replicated_and_restored() {
    check("missing_attribute");
    assert_eq!(scenario().status["findings"]["without_study"], 1);
}

#[test]
fn a_nonconformant_uid_is_kept_flagged_replicated_and_restored() {
    check("nonconformant_uid");
}

#[test]
fn a_truncated_data_set_is_kept_flagged_replicated_and_restored() {
    check("structure");
}

#[test]
fn a_sop_class_mismatch_is_kept_flagged_replicated_and_restored() {
    check("sop_class_mismatch");
}

#[test]
fn encapsulated_pixels_on_a_native_syntax_are_kept_flagged_replicated_and_restored() {
    check("encapsulated_on_native");
}

#[test]
fn an_undefined_length_fragment_is_kept_flagged_replicated_and_restored() {
    check("undefined_length_fragment");
}
