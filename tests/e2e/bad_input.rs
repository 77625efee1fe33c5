//! Acceptance under the ingest policy (issue 14, a faithful copy, not a
//! validator): malformed data sets whose command identifies them are kept
//! byte-exact with their findings; an identity conflict is refused with a
//! failure status and nothing of it is indexed or left on disk; the
//! association goes on. Sent with the test's own raw DIMSE client (DCMTK
//! will not send these).

use rand::{RngCore, SeedableRng};

use crate::dimse;
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
fn malformed_stores_are_kept_flagged_conflicts_refused_and_the_association_goes_on() {
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
    let mut assoc = dimse::associate_ct(cfg.port, SENDER_AE, &|| agent.log_tail());
    assert_eq!(assoc.accepted_ts(1), Some(dimse::EXPLICIT_LE));

    let ct = dimse::CT_IMAGE_STORAGE;
    let mut store = |id: u16, what: &str, uid: &str, ds: &[u8]| -> u16 {
        let st = assoc
            .store(1, id, ct, uid, ds)
            .unwrap_or_else(|e| panic!("{what}: no C-STORE-RSP ({e}){}", agent.log_tail()));
        eprintln!("{what}: status {st:04X}");
        st
    };
    let kept = [
        (
            1,
            "garbage data set",
            "2.25.77777777777777777777",
            garbage.as_slice(),
        ),
        (
            2,
            "data set cut in the Study UID",
            m1.sop_instance_uid.as_str(),
            cut_header.as_slice(),
        ),
        (
            3,
            "data set cut in the pixel data",
            m2.sop_instance_uid.as_str(),
            cut_pixels.as_slice(),
        ),
        (
            5,
            "SOP Class UID mismatch",
            m3.sop_instance_uid.as_str(),
            ds_sc.as_slice(),
        ),
        (
            6,
            "valid store",
            m4.sop_instance_uid.as_str(),
            ds4.as_slice(),
        ),
    ];
    for (id, what, uid, ds) in kept {
        let st = store(id, what, uid, ds);
        assert_eq!(st, 0x0000, "{what}: status {st:04X}{}", agent.log_tail());
    }
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
    assoc.release().expect("A-RELEASE");
    assert_no_tmp(&cfg, "after the stores (agent running)");

    let config_path = agent.config_path.clone();
    agent.stop();
    let rows = index_dump(&config_path);
    let by_uid = rows_by_uid(&rows);
    assert_eq!(rows.len(), kept.len(), "{rows:#?}");
    for (_, what, uid, ds) in kept {
        let row = &by_uid[uid];
        assert_eq!(row.calling_ae, SENDER_AE);
        check_spool_file(&cfg, row, Some(ds));
        let want: &[&str] = match what {
            "garbage data set" => &["missing_attribute: no SOP Instance UID", "structure: "],
            "data set cut in the Study UID" => &[
                "missing_attribute: no Study Instance UID",
                "structure: truncated at byte",
            ],
            "data set cut in the pixel data" => &["structure: truncated at byte"],
            "SOP Class UID mismatch" => {
                &["sop_class_mismatch: SOP Class UID 1.2.840.10008.5.1.4.1.1.7 in the data set"]
            }
            _ => &[],
        };
        assert_eq!(
            row.findings.is_empty(),
            want.is_empty(),
            "{what}: {:?}",
            row.findings
        );
        for w in want {
            assert!(
                row.findings.iter().any(|f| f.starts_with(w)),
                "{what}: no finding {w:?} in {:?}",
                row.findings
            );
        }
    }
    assert_eq!(
        spool_object_files(&cfg).len(),
        kept.len(),
        "spool files: the kept stores only"
    );
    assert_no_tmp(&cfg, "after a clean stop");
}
