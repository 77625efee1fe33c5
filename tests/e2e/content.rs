//! Object content (test catalogue T10, T13, T14): hostile UIDs, a value
//! whose declared length is a lie, sequences nested thousands deep (with
//! and without lengths), delimiters out of place, an object over the size
//! limit. Each is refused with its status, costs no memory beyond its own
//! bytes, never becomes a path or a forged log line, leaves nothing in the
//! spool or the index, and the association and the agent go on.

// Explicit VR LE element (4-byte length for OB, OW, SQ, UN, UT).
use pacs_mirror_agent::fuzzing::element::by_vr as el;
use std::path::Path;
use std::time::Duration;

use crate::dimse::{self, Association};
use crate::harness::*;
use crate::protocol::objects_of;

fn open_as(port: u16, calling: &str) -> Association {
    dimse::associate_ct(port, calling, &String::new)
}

/// Where an explicit VR LE UI element's value is: (offset, length).
fn ui_value(ds: &[u8], group: u16, element: u16) -> (usize, usize) {
    let mut needle = group.to_le_bytes().to_vec();
    needle.extend(element.to_le_bytes());
    needle.extend(b"UI");
    let at = ds
        .windows(6)
        .position(|w| w == needle.as_slice())
        .unwrap_or_else(|| panic!("({group:04X},{element:04X}) UI not found"));
    let len = u16::from_le_bytes([ds[at + 6], ds[at + 7]]) as usize;
    (at + 8, len)
}

/// `ds` with the value of a UI element overwritten by `pattern` repeated
/// (same length: the data set stays well-formed).
fn with_ui(ds: &[u8], group: u16, element: u16, pattern: &str) -> Vec<u8> {
    let (at, len) = ui_value(ds, group, element);
    let mut out = ds.to_vec();
    let fill: Vec<u8> = pattern.bytes().cycle().take(len).collect();
    out[at..at + len].copy_from_slice(&fill);
    out
}

/// Every file under `dir` that is neither a spool object named by the
/// blake3 of its data set, nor the index, nor the agent's own config and
/// log files, nor the test's source files.
fn unexpected_files(dir: &Path, cfg: &AgentConfig) -> Vec<std::path::PathBuf> {
    let objects = cfg.spool_dir().join("objects");
    let index = cfg.data_dir.join("index");
    files_under(dir)
        .into_iter()
        .filter(|p| {
            if p.starts_with(&index) || p.starts_with(dir.join("src")) || p.parent() == Some(dir) {
                return false;
            }
            if p.starts_with(&objects) {
                let bytes = std::fs::read(p).expect("read");
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                return name != format!("{}.dcm", blake3_hex(dataset_bytes(&bytes)));
            }
            true
        })
        .collect()
}

/// T10 under the ingest policy (issue 14: a faithful copy, not a
/// validator). A UID is an index key, never a path: UIDs that look like
/// paths, carry backslashes or letters, or are 65 characters long are
/// kept, byte-exact, with a `nonconformant_uid` finding, and nothing is
/// ever built from them (no file but hash-named spool objects). Only a
/// command UID that cannot be a key is refused with C002 before a byte is
/// written: one with a NUL or a newline inside (a forged log line), or
/// over 1 KiB. A Study UID with a newline cannot be a key either: the
/// object is kept and indexed without a study. A command naming another
/// SOP instance than its data set is an identity conflict (C001). No log
/// line can be forged through a UID or a calling AE title; each refusal is
/// counted in `pacs_mirror_ingest_failed_total` (T11), each kept
/// non-conformant object in `pacs_mirror_ingest_kept_with_findings_total`;
/// a leading zero in a component is kept with its finding.
#[test]
fn odd_uids_are_kept_as_keys_and_never_reach_a_path_or_a_log_line() {
    let dir = tempdir();
    let objects = objects_of(&dir.path().join("src"), 4, 64, "31");
    let mut cfg = AgentConfig::new(&dir.path().join("data"));
    let admin = free_port();
    cfg.extra_toml = format!("\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n");
    let agent = Agent::start(&cfg);
    let ct = dimse::CT_IMAGE_STORAGE;
    let forged = "ERROR pacs_mirror_agent: forged";

    // In the command, unusable as a key: refused before a byte is written.
    let (_, ds0) = &objects[0];
    let refused_uids = [
        "1.2.3\0/x".to_string(),
        format!("1.2.3\n{forged} via a SOP Instance UID"),
        format!("1.{}", "2".repeat(1100)),
    ];
    let mut a = open_as(cfg.port, SENDER_AE);
    for (k, uid) in refused_uids.iter().enumerate() {
        let st = a
            .store(1, k as u16 + 1, ct, uid, ds0)
            .unwrap_or_else(|e| panic!("{uid:?}: no C-STORE-RSP ({e}){}", agent.log_tail()));
        assert_eq!(
            st, 0xC002,
            "command SOP Instance UID {uid:?}: status {st:04X}"
        );
    }
    // Another SOP instance in the command than in the data set: C001.
    let st = a.store(1, 9, ct, "1.2.3.4.5", ds0).expect("C-STORE-RSP");
    assert_eq!(st, 0xC001, "identity conflict: status {st:04X}");

    // Odd but usable UIDs, in command and data set alike (same length as
    // the data set's value, so it stays well formed): kept.
    let (_, len) = ui_value(ds0, 0x0008, 0x0018);
    let kept_uids: Vec<String> = [
        "../../../../pacs-mirror-escape-cmd/",
        "/etc/passwd/",
        "1.2.3\\..\\..\\x",
        "1.2.3.abc.",
    ]
    .iter()
    .map(|p| p.bytes().cycle().take(len).map(char::from).collect())
    .collect();
    let mut kept: Vec<(String, Vec<u8>)> = Vec::new();
    for (k, uid) in kept_uids.iter().enumerate() {
        let ds = with_ui(ds0, 0x0008, 0x0018, uid);
        let st = a
            .store(1, 10 + k as u16, ct, uid, &ds)
            .expect("C-STORE-RSP");
        assert_eq!(st, 0x0000, "{uid:?}: status {st:04X}{}", agent.log_tail());
        kept.push((uid.clone(), ds));
    }
    // In the data set: Study or Series Instance UIDs that are paths (kept
    // as keys), one with a newline (kept, not indexed by it).
    let (m1, ds1) = &objects[1];
    let (m2, ds2) = &objects[2];
    let study_with_newline = with_ui(
        ds2,
        0x0020,
        0x000D,
        &format!("1\n{forged} via a Study UID\n"),
    );
    let study_path = with_ui(ds1, 0x0020, 0x000D, "../../pacs-mirror-escape-study/");
    for (what, uid, ds) in [
        (
            "Study Instance UID that is a path",
            &m1.sop_instance_uid,
            &study_path,
        ),
        (
            "Study Instance UID with a newline",
            &m2.sop_instance_uid,
            &study_with_newline,
        ),
    ] {
        let st = a.store(1, 20, ct, uid, ds).expect("C-STORE-RSP");
        assert_eq!(st, 0x0000, "{what}: status {st:04X}");
    }
    a.release().expect("A-RELEASE");

    // A calling AE title with a newline (this listener accepts any caller),
    // whose store is then refused: the refusal is logged with its name.
    let mut a = open_as(cfg.port, "X\nERROR forged");
    let st = a.store(1, 1, ct, "1.2.\nabc", ds0).expect("C-STORE-RSP");
    assert_eq!(st, 0xC002);
    a.release().expect("A-RELEASE");

    // A leading zero in a component: kept, with its finding.
    let src = dicom_files(&dir.path().join("src"));
    let zero = dir.path().join("leading-zero.dcm");
    std::fs::copy(&src[3], &zero).expect("copy");
    let zero_uid = "1.2.826.0.1.3680043.9.7433.031.7";
    run_ok(
        std::process::Command::new(tool("dcmodify"))
            .args(["-nb", "-m", &format!("(0008,0018)={zero_uid}")])
            .arg(&zero),
        Duration::from_secs(60),
    );
    let (mz, dz) = raw_info(&zero);
    assert_eq!(mz.sop_instance_uid, zero_uid);
    let mut a = open_as(cfg.port, SENDER_AE);
    assert_eq!(a.store(1, 1, ct, zero_uid, &dz).expect("C-STORE"), 0x0000);
    a.release().expect("A-RELEASE");

    // T11: each refusal is counted (3 + 1 + 1), and the 7 kept objects,
    // all with findings.
    let metrics = admin_get(admin, "/metrics");
    for line in [
        "pacs_mirror_ingest_failed_total 5",
        "pacs_mirror_ingest_stored_total 7",
        "pacs_mirror_ingest_kept_with_findings_total 7",
        "pacs_mirror_findings{class=\"nonconformant_uid\"} 7",
        "pacs_mirror_instances_without_study 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "/metrics lacks {line:?}:\n{metrics}"
        );
    }
    let config_path = agent.config_path.clone();
    let log_path = agent.log_path.clone();
    agent.stop();
    let log = std::fs::read_to_string(&log_path).expect("log");
    let forged_lines: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("ERROR") || l.starts_with(forged))
        .collect();
    assert!(
        forged_lines.is_empty(),
        "log lines forged through a UID or an AE title: {forged_lines:#?}"
    );
    assert!(
        log.contains("C-STORE refused")
            && log.contains("leading zero")
            && log.contains("kept byte-exact"),
        "the refusals and the findings are logged:\n{log}"
    );

    let rows = index_dump(&config_path);
    let by_uid = rows_by_uid(&rows);
    assert_eq!(rows.len(), 7, "{rows:#?}");
    for (uid, ds) in &kept {
        check_spool_file(&cfg, &by_uid[uid.as_str()], Some(ds));
        let findings = &by_uid[uid.as_str()].findings;
        assert!(
            findings
                .iter()
                .any(|f| f.starts_with("nonconformant_uid: SOP Instance UID")),
            "{uid:?}: {findings:?}"
        );
    }
    check_spool_file(&cfg, &by_uid[zero_uid], Some(&dz));
    check_spool_file(&cfg, &by_uid[&m1.sop_instance_uid], Some(&study_path));
    check_spool_file(
        &cfg,
        &by_uid[&m2.sop_instance_uid],
        Some(&study_with_newline),
    );
    assert_eq!(by_uid[&m2.sop_instance_uid].study_instance_uid, "");
    assert!(
        by_uid[&m2.sop_instance_uid]
            .findings
            .iter()
            .any(|f| f.contains("not indexed by it")),
        "{:?}",
        by_uid[&m2.sop_instance_uid]
    );
    assert_eq!(
        by_uid[&m1.sop_instance_uid].study_instance_uid,
        "../../pacs-mirror-escape-study/"
            .bytes()
            .cycle()
            .take(ui_value(ds1, 0x0020, 0x000D).1)
            .map(char::from)
            .collect::<String>()
    );
    assert_no_tmp(&cfg, "after a clean stop");
    let odd = unexpected_files(dir.path(), &cfg);
    assert!(
        odd.is_empty(),
        "files that are not hash-named spool objects: {odd:#?}"
    );
    for p in [dir.path(), dir.path().parent().expect("parent")] {
        for e in std::fs::read_dir(p).expect("read_dir").flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            assert!(
                !name.contains("pacs-mirror-escape"),
                "{} was created from a UID",
                e.path().display()
            );
        }
    }
}

fn item_header(tag: u16, len: u32) -> Vec<u8> {
    let mut v = vec![0xFE, 0xFF];
    v.extend(tag.to_le_bytes());
    v.extend(len.to_le_bytes());
    v
}

fn ui(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    if v.len() % 2 == 1 {
        v.push(0);
    }
    v
}

/// A hand-made CT data set: the four UIDs, then `rest`.
fn hand_made(sop_instance_uid: &str, rest: &[u8]) -> Vec<u8> {
    let mut d = Vec::new();
    for (e, v) in [
        ((0x0008, 0x0016), dimse::CT_IMAGE_STORAGE),
        ((0x0008, 0x0018), sop_instance_uid),
        ((0x0020, 0x000D), "1.2.826.0.1.3680043.9.7433.3.1"),
        ((0x0020, 0x000E), "1.2.826.0.1.3680043.9.7433.3.1.1"),
    ] {
        let v = ui(v);
        d.extend(el(e.0, e.1, b"UI", v.len() as u32, &v));
    }
    d.extend_from_slice(rest);
    d
}

/// `depth` levels of Content Sequence + item around one element, with
/// defined lengths (about 20 bytes a level).
fn nested_defined(depth: usize) -> Vec<u8> {
    let mut inner = el(0x0008, 0x0100, b"SH", 2, b"AB");
    for _ in 0..depth {
        let mut item = item_header(0xE000, inner.len() as u32);
        item.extend(&inner);
        inner = el(0x0040, 0xA730, b"SQ", item.len() as u32, &item);
    }
    inner
}

/// `depth` levels of Content Sequence + item of undefined length.
fn nested_undefined(depth: usize) -> Vec<u8> {
    let mut d = Vec::new();
    for _ in 0..depth {
        d.extend(el(0x0040, 0xA730, b"SQ", 0xFFFF_FFFF, &[]));
        d.extend(item_header(0xE000, 0xFFFF_FFFF));
    }
    d.extend(el(0x0008, 0x0100, b"SH", 2, b"AB"));
    for _ in 0..depth {
        d.extend(item_header(0xE00D, 0));
        d.extend(item_header(0xE0DD, 0));
    }
    d
}

/// T13, T14 under the ingest policy: a 1 KiB data set declaring a 4 GiB
/// value (0xFFFFFFF0) is kept byte-exact with a `structure` finding,
/// without the agent's peak RSS growing by more than 64 MiB (nothing is
/// allocated by a declared length); sequences nested 1,100 deep (undefined
/// lengths) and 5,000 deep (defined lengths, 100 KB), and delimiters where
/// they cannot be, are kept with their finding and the agent lives on; an
/// object over `max_object_bytes` gets A701 and leaves no temp file. The
/// association goes on after each.
#[test]
fn lying_lengths_and_deep_nesting_are_kept_flagged_and_oversized_objects_refused() {
    let dir = tempdir();
    let mut valid = objects_of(&dir.path().join("src"), 2, 64, "32");
    let big = objects_of(&dir.path().join("big"), 1, 512, "33").remove(0);
    let mut cfg = AgentConfig::new(&dir.path().join("data"));
    cfg.spool_extra = "max_object_bytes = 200000\n".into();
    let agent = Agent::start(&cfg);
    let ct = dimse::CT_IMAGE_STORAGE;
    let mut a = open_as(cfg.port, SENDER_AE);
    // Warm up with a valid store before the baseline.
    let (m0, d0) = &valid[0];
    assert_eq!(
        a.store(1, 1, ct, &m0.sop_instance_uid, d0)
            .expect("C-STORE"),
        0x0000
    );
    let hwm_before = agent.vm_hwm_kib();

    let mut lying = el(0x0040, 0xA160, b"UT", 0xFFFF_FFF0, &[]);
    lying.extend(vec![b'x'; 1024]);
    let mut sq_without_item = el(0x0040, 0xA730, b"SQ", 0xFFFF_FFFF, &[]);
    sq_without_item.extend(el(0x0008, 0x0100, b"SH", 2, b"AB"));
    sq_without_item.extend(item_header(0xE0DD, 0));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("a UT declaring 0xFFFFFFF0 bytes, 1 KiB sent", lying),
        (
            "5000 levels of defined-length sequences",
            nested_defined(5000),
        ),
        (
            "1100 levels of undefined-length sequences",
            nested_undefined(1100),
        ),
        ("an item delimiter at the top level", item_header(0xE00D, 0)),
        ("an element directly inside a sequence", sq_without_item),
    ];
    let mut flagged = Vec::new();
    for (k, (what, rest)) in cases.iter().enumerate() {
        let uid = format!("1.2.826.0.1.3680043.9.7433.3.2.{k}");
        let ds = hand_made(&uid, rest);
        let st = a
            .store(1, 10 + k as u16, ct, &uid, &ds)
            .unwrap_or_else(|e| panic!("{what}: no C-STORE-RSP ({e}){}", agent.log_tail()));
        eprintln!("{what} ({} bytes): {st:04X}", ds.len());
        assert_eq!(st, 0x0000, "{what}: status {st:04X}{}", agent.log_tail());
        assert_no_tmp(&cfg, what);
        flagged.push((uid, ds, *what));
    }
    let grown = agent.vm_hwm_kib().saturating_sub(hwm_before);
    eprintln!("peak RSS grew by {grown} KiB");
    assert!(
        grown < 64 * 1024,
        "peak RSS grew by {grown} KiB: a declared length was allocated"
    );

    // Over max_object_bytes (200000): A701, nothing kept.
    let (bm, bd) = &big;
    assert!(bd.len() > 200_000);
    let st = a
        .store(1, 30, ct, &bm.sop_instance_uid, bd)
        .expect("C-STORE-RSP");
    assert_eq!(
        st,
        0xA701,
        "object of {} bytes over a 200000-byte limit",
        bd.len()
    );
    assert_no_tmp(&cfg, "after A701");

    let (m1, d1) = &valid[1];
    assert_eq!(
        a.store(1, 31, ct, &m1.sop_instance_uid, d1)
            .expect("C-STORE"),
        0x0000
    );
    a.release().expect("A-RELEASE");
    let config_path = agent.config_path.clone();
    agent.stop();
    let rows = index_dump(&config_path);
    let by_uid = rows_by_uid(&rows);
    assert_eq!(rows.len(), 2 + flagged.len(), "{rows:#?}");
    for (m, d) in valid.drain(..) {
        check_spool_file(&cfg, &by_uid[&m.sop_instance_uid], Some(&d));
        assert!(by_uid[&m.sop_instance_uid].findings.is_empty());
    }
    for (uid, ds, what) in &flagged {
        check_spool_file(&cfg, &by_uid[uid.as_str()], Some(ds));
        let findings = &by_uid[uid.as_str()].findings;
        assert!(
            findings.iter().any(|f| f.starts_with("structure: ")),
            "{what}: {findings:?}"
        );
        assert_eq!(
            by_uid[uid.as_str()].study_instance_uid,
            "1.2.826.0.1.3680043.9.7433.3.1"
        );
    }
    assert_eq!(spool_object_files(&cfg).len(), 2 + flagged.len());
    assert_no_tmp(&cfg, "after a clean stop");
}
