//! Acceptance: an identical re-send is stored once; the same SOP Instance
//! UID with different contents keeps both versions and counts a conflict.

use std::process::Command;
use std::time::Duration;

use crate::harness::*;

#[test]
fn identical_resend_is_stored_once_and_a_changed_one_is_kept_beside_it() {
    let dir = tempdir();
    let src = synth(
        &dir.path().join("src"),
        &["--instances-per-series", "2", "--seed", "4"],
    );
    let file = &src[0];
    let sent = sent_info(file);

    // A second version: same SOP Instance UID, another Patient's Name.
    let changed = dir.path().join("changed.dcm");
    std::fs::copy(file, &changed).expect("copy");
    run_ok(
        Command::new(tool("dcmodify"))
            .args(["-nb", "-m", "(0010,0010)=CHANGED^NAME"])
            .arg(&changed),
        Duration::from_secs(60),
    );
    let sent2 = sent_info(&changed);
    assert_eq!(sent2.sop_instance_uid, sent.sop_instance_uid);
    assert_ne!(sent2.blake3, sent.blake3, "dcmodify changed nothing");

    let cfg = AgentConfig::new(&dir.path().join("data"));
    let agent = Agent::start(&cfg);
    // Twice over one association, then once more over another.
    store_all_ok(cfg.port, SENDER_AE, &[], &[file.clone(), file.clone()]);
    store_all_ok(cfg.port, SENDER_AE, &[], std::slice::from_ref(file));
    let config_path = agent.config_path.clone();
    agent.stop();

    let rows = index_dump(&config_path);
    check_dump_matches(&cfg, &rows, std::slice::from_ref(&sent), SENDER_AE);
    assert_eq!(
        spool_object_files(&cfg).len(),
        1,
        "one spool file for three identical sends"
    );
    let stats = index_stats(&config_path);
    assert_eq!(stat_u64(&stats, "instances"), 1, "{stats}");
    assert_eq!(stat_u64(&stats, "conflicts"), 0, "{stats}");

    // The changed version.
    let agent = Agent::start(&cfg);
    store_all_ok(cfg.port, SENDER_AE, &[], std::slice::from_ref(&changed));
    // ...and the original once more: still only two versions.
    store_all_ok(cfg.port, SENDER_AE, &[], std::slice::from_ref(file));
    agent.stop();

    let rows = index_dump(&config_path);
    assert_eq!(rows.len(), 2, "two versions of one SOP instance: {rows:#?}");
    for r in &rows {
        assert_eq!(r.sop_instance_uid, sent.sop_instance_uid);
    }
    let mut hashes: Vec<&str> = rows.iter().map(|r| r.blake3.as_str()).collect();
    hashes.sort();
    let mut want = vec![sent.blake3.as_str(), sent2.blake3.as_str()];
    want.sort();
    assert_eq!(hashes, want, "both versions indexed with their own hashes");
    for (s, path) in [(&sent, file), (&sent2, &changed)] {
        let row = rows
            .iter()
            .find(|r| r.blake3 == s.blake3)
            .expect("row for this version");
        let bytes = std::fs::read(path).expect("read");
        check_spool_file(&cfg, row, Some(dataset_bytes(&bytes)));
        assert_eq!(row.patient_id, s.patient_id);
    }
    assert_eq!(spool_object_files(&cfg).len(), 2, "both versions on disk");
    let stats = index_stats(&config_path);
    assert_eq!(stat_u64(&stats, "conflicts"), 1, "{stats}");
    assert_eq!(stat_u64(&stats, "objects"), 2, "{stats}");
    assert_no_tmp(&cfg, "after a clean stop");

    // The index is rebuildable from the spool alone: `reindex` gives back
    // the same rows (both versions, with calling AE, source address and
    // receive time from each file's meta), and `verify spool` passes.
    let before = row_keys(&rows, true);
    let out = run(
        Command::new(bin())
            .args(["reindex", "--config"])
            .arg(&config_path),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "reindex failed: {}", out.all());
    assert_eq!(
        row_keys(&index_dump(&config_path), true),
        before,
        "reindex from the spool changed the index"
    );
    assert_eq!(stat_u64(&index_stats(&config_path), "conflicts"), 1);
    let verify = || {
        run(
            Command::new(bin())
                .args(["verify", "spool", "--config"])
                .arg(&config_path),
            Duration::from_secs(60),
        )
    };
    let clean = verify();
    assert!(
        clean.status.success(),
        "verify spool on a clean spool: {}",
        clean.all()
    );
    // Flip one byte of one version: verify names exactly that object.
    let victim = &rows[0];
    let mut bytes = std::fs::read(&victim.path).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x5A;
    std::fs::write(&victim.path, bytes).expect("write");
    let damaged = verify();
    assert!(
        !damaged.status.success(),
        "verify spool missed a flipped byte"
    );
    let report: serde_json::Value =
        serde_json::from_str(&damaged.stdout).expect("verify prints a JSON report");
    let findings = report["findings"].as_array().expect("findings");
    assert_eq!(findings.len(), 1, "{report}");
    assert_eq!(findings[0]["kind"], "corrupt");
    assert_eq!(findings[0]["blake3"], victim.blake3.as_str());
}
