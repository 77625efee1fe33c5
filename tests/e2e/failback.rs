//! `failback` between two real Orthanc servers: studies stored only into the
//! mirror during a simulated outage (storescu straight into it), and one
//! study stored partly into the primary, are brought to the primary; every
//! instance is verified there byte for byte; a study both hold is not sent;
//! a study dated before the window is left alone; a second run finds
//! nothing to do.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::harness::*;

const CALLING: &str = "FAILBACK";

fn orthanc(dir: &std::path::Path, ae: &str) -> Orthanc {
    // We never accept associations: C-GET comes back on ours (port 1).
    Orthanc::start_knowing(
        &dir.join(ae.to_ascii_lowercase()),
        ae,
        vec![OrthancModality::local("failback", CALLING, 1)],
    )
}

fn store(o: &Orthanc, files: &[PathBuf]) {
    let r = StoreRun::parse(run(
        &mut storescu_cmd(o.dicom_port, "MODALITY", &o.ae_title, &[], files),
        Duration::from_secs(120),
    ));
    assert_eq!(r.successes().len(), files.len(), "{}", r.log());
}

/// `failback --from MIRROR@… --to PRIMARY@… --calling-ae …`.
fn failback_cmd(mirror_port: u16, primary_port: u16) -> Command {
    let mut c = Command::new(bin());
    c.arg("failback")
        .arg("--from")
        .arg(format!("MIRROR@127.0.0.1:{mirror_port}"))
        .arg("--to")
        .arg(format!("PRIMARY@127.0.0.1:{primary_port}"))
        .args(["--calling-ae", CALLING]);
    c
}

/// `failback --json …`: (exit code, report).
fn failback(mirror: &Orthanc, primary: &Orthanc, extra: &[&str]) -> (i32, Value) {
    let out = run(
        failback_cmd(mirror.dicom_port, primary.dicom_port)
            .args(["--since", "2000-01-01", "--json", "--quiet"])
            .args(extra),
        Duration::from_secs(300),
    );
    let v: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("failback JSON ({e}): {}", out.all()));
    (out.status.code().unwrap_or(-1), v)
}

#[test]
fn failback_brings_mirror_only_studies_to_the_primary_verified() {
    let dir = tempdir();
    let mirror = orthanc(dir.path(), "MIRROR");
    let primary = orthanc(dir.path(), "PRIMARY");
    let files = synth_small(&dir.path().join("in"), 4, 5, 64);
    assert_eq!(files.len(), 20);
    // An old study (dated 1999), before the window.
    let old = synth_small_with(&dir.path().join("old"), 1, 2, 32, &["--patient-id", "OLD"]);
    let dcmodify = tool("dcmodify");
    run_ok(
        Command::new(&dcmodify)
            .args(["-nb", "-m", "(0008,0020)=19990101"])
            .args(&old),
        Duration::from_secs(60),
    );
    // A study sent with an empty Study Date (Type 2: present, no value).
    let undated = synth_small_with(
        &dir.path().join("undated"),
        1,
        2,
        32,
        &["--patient-id", "NODATE", "--seed", "99"],
    );
    run_ok(
        Command::new(&dcmodify)
            .args(["-nb", "-m", "(0008,0020)="])
            .args(&undated),
        Duration::from_secs(60),
    );
    let sent: Vec<Sent> = files.iter().map(|f| sent_info(f)).collect();
    let study = |k: usize| &sent[5 * k].study_instance_uid;
    // Study 0: on both before the outage. Study 1: 2 of its 5 reached the
    // primary. Studies 2 and 3 and the old one: only on the mirror.
    store(&primary, &files[0..7]);
    store(&mirror, &files);
    store(&mirror, &old);
    store(&mirror, &undated);
    assert_eq!(primary.count_instances(), 7);
    assert_eq!(mirror.count_instances(), 24);

    // Dry run: the plan names studies 1, 2, 3 and the 13 missing instances
    // (exit 1: something to send).
    let (code, plan) = failback(&mirror, &primary, &["--dry-run"]);
    assert_eq!(code, 1, "{plan}");
    assert_eq!(plan["truncated"], false, "{plan}");
    assert_eq!(plan["undated_on_mirror"], Value::Null, "{plan}");
    assert_eq!(plan["studies_on_mirror"], 4, "{plan}");
    assert_eq!(plan["studies_complete"], 1, "{plan}");
    let planned: Vec<(String, usize, Option<u64>)> = plan["studies"]
        .as_array()
        .expect("studies")
        .iter()
        .map(|s| {
            (
                s["study_instance_uid"].as_str().expect("uid").to_string(),
                s["missing"].as_array().map_or(0, Vec::len),
                s["on_primary"].as_u64(),
            )
        })
        .collect();
    let mut want = vec![
        (study(1).clone(), 3, Some(2)),
        (study(2).clone(), 5, Some(0)),
        (study(3).clone(), 5, Some(0)),
    ];
    want.sort();
    let mut got = planned.clone();
    got.sort();
    assert_eq!(got, want, "{plan}");
    assert_eq!(primary.count_instances(), 7, "a dry run sends nothing");

    // The failback: every missing instance verified.
    let (code, r) = failback(&mirror, &primary, &[]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["studies_on_mirror"], 4, "{r}");
    assert_eq!(r["studies_complete"], 1, "{r}");
    assert_eq!(r["studies"], 3, "{r}");
    assert_eq!(r["instances"], 13, "{r}");
    assert_eq!(r["retrieved"], 13, "{r}");
    assert_eq!(r["stored"], 13, "{r}");
    assert_eq!(r["verified"], 13, "{r}");
    assert_eq!(r["changed"], 0, "{r}");
    assert_eq!(r["truncated"], false, "{r}");
    assert_eq!(r["stopped"], Value::Null, "{r}");
    assert!(
        r["not_verified"].as_array().is_some_and(Vec::is_empty),
        "{r}"
    );
    let bytes: u64 = sent[7..].iter().map(|s| s.dataset_len).sum();
    assert_eq!(r["bytes"].as_u64(), Some(bytes), "{r}");
    // On the primary, byte for byte what was stored into the mirror.
    assert_eq!(primary.count_instances(), 20);
    for s in &sent {
        let on_primary = primary.instance_file(&s.sop_instance_uid);
        let on_mirror = mirror.instance_file(&s.sop_instance_uid);
        assert_eq!(
            blake3_hex(dataset_bytes(&on_primary)),
            blake3_hex(dataset_bytes(&on_mirror))
        );
        assert_eq!(
            blake3_hex(dataset_bytes(&on_primary)),
            s.blake3,
            "{}",
            s.sop_instance_uid
        );
    }
    // The old study stayed where it was.
    let (old_meta, _) = raw_info(&old[0]);
    let lookup = Command::new("curl")
        .args(["-sf", "-d", &old_meta.sop_instance_uid])
        .arg(format!(
            "http://127.0.0.1:{}/tools/lookup",
            primary.http_port
        ))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&lookup.stdout).trim(), "[]");

    // Again: nothing to do.
    let (code, r) = failback(&mirror, &primary, &[]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(
        (r["studies_complete"].as_u64(), r["instances"].as_u64()),
        (Some(4), Some(0)),
        "{r}"
    );
    assert_eq!(primary.count_instances(), 20);

    // With --include-undated: the undated study too, verified.
    let (code, r) = failback(&mirror, &primary, &["--include-undated"]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["undated_on_mirror"], 1, "{r}");
    assert_eq!(r["studies_on_mirror"], 5, "{r}");
    assert_eq!(
        (
            r["studies"].as_u64(),
            r["instances"].as_u64(),
            r["verified"].as_u64()
        ),
        (Some(1), Some(2), Some(2)),
        "{r}"
    );
    assert_eq!(primary.count_instances(), 22);
    for f in &undated {
        let s = sent_info(f);
        assert_eq!(
            blake3_hex(dataset_bytes(&primary.instance_file(&s.sop_instance_uid))),
            s.blake3,
            "{}",
            s.sop_instance_uid
        );
    }
    // A dry run with nothing to send exits 0, and its text says what the
    // window cannot show.
    let dry = run(
        failback_cmd(mirror.dicom_port, primary.dicom_port).args([
            "--since",
            "2000-01-01",
            "--dry-run",
        ]),
        Duration::from_secs(300),
    );
    assert_eq!(dry.status.code(), Some(0), "{}", dry.all());
    assert!(
        dry.stdout
            .contains("studies without a Study Date on the mirror are not considered"),
        "{}",
        dry.all()
    );
    assert!(!dry.stdout.contains("CAPPED"), "{}", dry.all());

    // The text report; an unreachable primary cannot run (exit 2).
    let out = run(
        failback_cmd(mirror.dicom_port, free_port()).args([
            "--since",
            "20000101",
            "--timeout-secs",
            "5",
        ]),
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(2), "{}", out.all());
    assert!(
        out.stderr.contains("could not ask the primary"),
        "{}",
        out.all()
    );
}
