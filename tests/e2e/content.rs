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

use crate::dimse::{self, Association, Outcome};
use crate::harness::*;
use crate::protocol::objects_of;

fn open_as(port: u16, calling: &str) -> Association {
    match dimse::associate(
        port,
        calling,
        AGENT_AE,
        &[(1, dimse::CT_IMAGE_STORAGE, &[dimse::EXPLICIT_LE])],
    )
    .expect("associating")
    {
        Outcome::Accepted(a) => a,
        _ => panic!("association not accepted"),
    }
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

/// T10: UIDs that are paths, carry NUL, backslashes, letters or a newline
/// (a forged log line), are 65 characters long or empty, in the command or
/// in the data set (Study and Series Instance UIDs), are refused with C002
/// and nothing of them is stored; no file is created but spool objects
/// named by their blake3; no log line can be forged through a UID or a
/// calling AE title; every refusal is counted in
/// `pacs_mirror_ingest_failed_total` (T11's metric); a UID with a leading
/// zero in a component (not conformant, but sent by legacy modalities) is
/// stored, with a warning.
#[test]
fn hostile_uids_are_refused_and_never_reach_a_path_or_a_log_line() {
    let dir = tempdir();
    let objects = objects_of(&dir.path().join("src"), 4, 64, "31");
    let mut cfg = AgentConfig::new(&dir.path().join("data"));
    let admin = free_port();
    cfg.extra_toml = format!("\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n");
    let agent = Agent::start(&cfg);
    let ct = dimse::CT_IMAGE_STORAGE;
    let forged = "ERROR pacs_mirror_agent: forged";

    // In the command: refused before a byte is written.
    let (_, ds0) = &objects[0];
    let long_uid = format!("1.{}", "2".repeat(63));
    let command_uids = [
        "../../../../pacs-mirror-escape-cmd".to_string(),
        "/etc/passwd".to_string(),
        "1.2.3\0/x".to_string(),
        "1.2.3\\..\\..\\x".to_string(),
        "1.2.3.abc".to_string(),
        long_uid,
        format!("1.2.3\n{forged} via a SOP Instance UID"),
    ];
    let mut a = open_as(cfg.port, SENDER_AE);
    for (k, uid) in command_uids.iter().enumerate() {
        let st = a
            .store(1, k as u16 + 1, ct, uid, ds0)
            .unwrap_or_else(|e| panic!("{uid:?}: no C-STORE-RSP ({e}){}", agent.log_tail()));
        assert_eq!(
            st, 0xC002,
            "command SOP Instance UID {uid:?}: status {st:04X}"
        );
    }
    // In the data set: the command's UID is fine, the Study or Series
    // Instance UID is a path.
    let (m1, ds1) = &objects[1];
    for (what, ds) in [
        (
            "Study Instance UID",
            with_ui(ds1, 0x0020, 0x000D, "../../pacs-mirror-escape-study/"),
        ),
        (
            "Series Instance UID",
            with_ui(ds1, 0x0020, 0x000E, "..\\..\\pacs-mirror-escape-series\\"),
        ),
        (
            "Study Instance UID with a newline",
            with_ui(
                ds1,
                0x0020,
                0x000D,
                &format!("1\n{forged} via a Study UID\n"),
            ),
        ),
    ] {
        let st = a
            .store(1, 20, ct, &m1.sop_instance_uid, &ds)
            .expect("C-STORE-RSP");
        assert_eq!(st, 0xC002, "{what}: status {st:04X}");
    }
    a.release().expect("A-RELEASE");

    // A calling AE title with a newline (this listener accepts any caller),
    // whose store is then refused: the refusal is logged with its name.
    let mut a = open_as(cfg.port, "X\nERROR forged");
    let st = a.store(1, 1, ct, "1.2.abc", ds0).expect("C-STORE-RSP");
    assert_eq!(st, 0xC002);
    a.release().expect("A-RELEASE");

    // A leading zero in a component: stored, with a warning.
    let src = dicom_files(&dir.path().join("src"));
    let zero = dir.path().join("leading-zero.dcm");
    std::fs::copy(&src[2], &zero).expect("copy");
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
    let (m3, ds3) = &objects[3];
    assert_eq!(
        a.store(1, 2, ct, &m3.sop_instance_uid, ds3)
            .expect("C-STORE"),
        0x0000
    );
    a.release().expect("A-RELEASE");

    // T11: each refusal is counted (7 + 3 + 1), and the 2 stores.
    let metrics = admin_get(admin, "/metrics");
    for line in [
        "pacs_mirror_ingest_failed_total 11",
        "pacs_mirror_ingest_stored_total 2",
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
        log.contains("C-STORE refused") && log.contains("leading zero"),
        "the refusals and the leading-zero warning are logged:\n{log}"
    );

    let rows = index_dump(&config_path);
    let by_uid = rows_by_uid(&rows);
    assert_eq!(rows.len(), 2, "{rows:#?}");
    check_spool_file(&cfg, &by_uid[zero_uid], Some(&dz));
    check_spool_file(&cfg, &by_uid[&m3.sop_instance_uid], Some(ds3));
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

/// T13, T14: a 1 KiB data set declaring a 4 GiB value (0xFFFFFFF0) is
/// refused with C000 without the agent's peak RSS growing by more than
/// 64 MiB; sequences nested 1,100 deep (undefined lengths) and 5,000 deep
/// (defined lengths, 100 KB) are refused with C000 and the agent lives on;
/// delimiters where they cannot be are refused with C000; an object over
/// `max_object_bytes` gets A701 and leaves no temp file. The association
/// goes on after each, and only the valid objects are indexed.
#[test]
fn lying_lengths_deep_nesting_and_oversized_objects_are_refused() {
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
    for (k, (what, rest)) in cases.iter().enumerate() {
        let uid = format!("1.2.826.0.1.3680043.9.7433.3.2.{k}");
        let ds = hand_made(&uid, rest);
        let st = a
            .store(1, 10 + k as u16, ct, &uid, &ds)
            .unwrap_or_else(|e| panic!("{what}: no C-STORE-RSP ({e}){}", agent.log_tail()));
        eprintln!("{what} ({} bytes): {st:04X}", ds.len());
        assert_eq!(st, 0xC000, "{what}: status {st:04X}{}", agent.log_tail());
        assert_no_tmp(&cfg, what);
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
    assert_eq!(rows.len(), 2, "{rows:#?}");
    for (m, d) in valid.drain(..) {
        check_spool_file(&cfg, &by_uid[&m.sop_instance_uid], Some(&d));
    }
    assert_eq!(spool_object_files(&cfg).len(), 2);
    assert_no_tmp(&cfg, "after a clean stop");
}
