//! Acceptance: malformed stores are refused with a failure status, nothing
//! of them is indexed or left on disk, and the association goes on.
//! Sent with the test's own raw DIMSE client (DCMTK will not send these).

use rand::{RngCore, SeedableRng};

use crate::dimse::{self, Outcome};
use crate::harness::*;

fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len())
        .position(|w| w == needle)
        .unwrap_or_else(|| panic!("{needle:02x?} not found"))
}

fn is_failure_c(status: u16) -> bool {
    (0xC000..=0xCFFF).contains(&status)
}

#[test]
fn malformed_stores_fail_and_the_association_goes_on() {
    let dir = tempdir();
    let src = synth(
        &dir.path().join("src"),
        &[
            "--instances-per-series",
            "4",
            "--rows",
            "64",
            "--columns",
            "64",
            "--seed",
            "5",
        ],
    );
    let infos: Vec<(Meta, Vec<u8>)> = src.iter().map(|f| raw_info(f)).collect();

    // A: garbage where the data set should be.
    let mut garbage = vec![0u8; 4096];
    rand::rngs::StdRng::seed_from_u64(5).fill_bytes(&mut garbage);
    // B1: cut inside the Study Instance UID value.
    let (m1, ds1) = &infos[0];
    let study_at = find(ds1, &[0x20, 0x00, 0x0D, 0x00, b'U', b'I']);
    let cut_header = ds1[..study_at + 8 + 5].to_vec();
    // B2: cut inside the pixel data (the element claims more than follows).
    let (m2, ds2) = &infos[1];
    let cut_pixels = ds2[..ds2.len() - 1000].to_vec();
    // C: the command's SOP Instance UID is not the data set's.
    let (m3, ds3) = &infos[2];
    // D: the data set's SOP Class UID is not the command's (CT -> SC, same length).
    let mut ds_sc = ds3.clone();
    let class_at = find(&ds_sc, &[0x08, 0x00, 0x16, 0x00, b'U', b'I']);
    let v = &mut ds_sc[class_at + 8..class_at + 8 + 25];
    assert_eq!(v, dimse::CT_IMAGE_STORAGE.as_bytes());
    v.copy_from_slice(dimse::SECONDARY_CAPTURE.as_bytes());
    // E: a valid store.
    let (m4, ds4) = &infos[3];

    let cfg = AgentConfig::new(&dir.path().join("data"));
    let agent = Agent::start(&cfg);
    let outcome = dimse::associate(
        cfg.port,
        SENDER_AE,
        AGENT_AE,
        &[(1, dimse::CT_IMAGE_STORAGE, &[dimse::EXPLICIT_LE])],
    )
    .expect("associating");
    let Outcome::Accepted(mut assoc) = outcome else {
        panic!("association not accepted{}", agent.log_tail());
    };
    assert_eq!(assoc.accepted_ts(1), Some(dimse::EXPLICIT_LE));

    let ct = dimse::CT_IMAGE_STORAGE;
    let mut store = |id: u16, what: &str, uid: &str, ds: &[u8]| -> u16 {
        let st = assoc
            .store(1, id, ct, uid, ds)
            .unwrap_or_else(|e| panic!("{what}: no C-STORE-RSP ({e}){}", agent.log_tail()));
        eprintln!("{what}: status {st:04X}");
        st
    };
    let st = store(1, "garbage data set", "2.25.77777777777777777777", &garbage);
    assert!(
        is_failure_c(st),
        "garbage data set: status {st:04X}, want Cxxx"
    );
    let st = store(
        2,
        "data set cut in the header",
        &m1.sop_instance_uid,
        &cut_header,
    );
    assert!(
        is_failure_c(st),
        "data set cut in the header: status {st:04X}, want Cxxx"
    );
    let st = store(
        3,
        "data set cut in the pixel data",
        &m2.sop_instance_uid,
        &cut_pixels,
    );
    assert!(
        is_failure_c(st),
        "data set cut in the pixel data: status {st:04X}, want Cxxx"
    );
    let st = store(
        4,
        "SOP Instance UID mismatch",
        "2.25.88888888888888888888",
        ds3,
    );
    assert!(
        is_failure_c(st),
        "SOP Instance UID mismatch: status {st:04X}, want Cxxx"
    );
    let st = store(5, "SOP Class UID mismatch", &m3.sop_instance_uid, &ds_sc);
    assert!(
        is_failure_c(st) || st == 0xA900,
        "SOP Class UID mismatch: status {st:04X}, want Cxxx or A900"
    );
    let st = store(6, "valid store", &m4.sop_instance_uid, ds4);
    assert_eq!(
        st,
        0x0000,
        "the valid store after the bad ones{}",
        agent.log_tail()
    );
    assoc.release().expect("A-RELEASE");
    assert_no_tmp(&cfg, "after refused stores (agent running)");

    let config_path = agent.config_path.clone();
    agent.stop();
    let rows = index_dump(&config_path);
    assert_eq!(rows.len(), 1, "only the valid store is indexed: {rows:#?}");
    assert_eq!(rows[0].sop_instance_uid, m4.sop_instance_uid);
    assert_eq!(rows[0].blake3, blake3_hex(ds4));
    assert_eq!(rows[0].calling_ae, SENDER_AE);
    check_spool_file(&cfg, &rows[0], Some(ds4));
    assert_eq!(
        spool_object_files(&cfg).len(),
        1,
        "spool files of refused stores"
    );
    assert_no_tmp(&cfg, "after a clean stop");
}
