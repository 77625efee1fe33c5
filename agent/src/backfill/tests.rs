//! Backfill against a real spool and sled index in a temp dir.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use pacs_mirror_config::Config;

use super::*;
use pacs_mirror_dicom::part10::read_header;
use pacs_mirror_dicom::testing::dataset;
use pacs_mirror_store::index::ObjectId;

const CT: &str = "1.2.840.10008.5.1.4.1.1.2";
const TS: &str = "1.2.840.10008.1.2.1";

fn config(data_dir: &Path) -> Config {
    let toml = format!(
        r#"
[device]
name = "t"
data_dir = {dir:?}
[[device.network_connection]]
name = "dicom"
hostname = "127.0.0.1"
port = 11112
[[device.network_ae]]
ae_title = "PACS_MIRROR"
network_connections = ["dicom"]
accept_any_calling_ae = true
[spool]
min_free_bytes = 0
[[target]]
type = "object_store"
name = "backup"
url = "file:///nowhere"
"#,
        dir = data_dir.display().to_string()
    );
    Config::from_toml_str(&toml, Path::new("test")).unwrap()
}

/// A Part-10 file as another system would write it: its own meta group
/// (source AE "OLD_PACS"), then the data set.
fn part10_file(sop: &str, patient: &str) -> (Vec<u8>, Vec<u8>) {
    let receipt = Receipt {
        source_ip: "10.9.9.9".into(),
        received_at_ms: 5,
    };
    let mut file = part10::file_header(CT, sop, TS, "OLD_PACS", &receipt).unwrap();
    let ds = dataset(CT, sop, patient);
    file.extend_from_slice(&ds);
    (file, ds)
}

#[derive(Default)]
struct Recorder {
    started: Mutex<Option<(u64, u64)>>,
    updates: Mutex<Vec<Totals>>,
}

impl Progress for Recorder {
    fn start(&self, files: u64, bytes: u64) {
        *self.started.lock().unwrap() = Some((files, bytes));
    }
    fn update(&self, totals: &Totals) {
        self.updates.lock().unwrap().push(totals.clone());
    }
}

fn options(dir: &Path) -> Options {
    Options {
        source_dir: dir.to_path_buf(),
        source_ae: DEFAULT_SOURCE_AE.into(),
        readers: 3,
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, bytes).unwrap();
    p
}

/// T15: a Part-10 file whose preamble carries an executable header (a
/// polyglot: ELF, or PE's "MZ", in the 128 bytes before DICM) is kept as
/// its data set only: the spool file starts with 128 zero bytes and DICM,
/// and is never made executable nor writable by others.
#[test]
fn a_preamble_is_never_carried_into_the_spool() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    let cfg = config(&d.path().join("data"));
    let mut sent = Vec::new();
    for (sop, magic) in [
        ("1.2.3.201", &b"\x7fELF\x02\x01\x01"[..]),
        ("1.2.3.202", b"MZ\x90\0"),
    ] {
        let (mut file, ds) = part10_file(sop, "P");
        file[..128].fill(0x41);
        file[..magic.len()].copy_from_slice(magic);
        write(&src, &format!("{sop}.dcm"), &file);
        sent.push(ds);
    }
    let report = run(&cfg, &options(&src), &Recorder::default()).unwrap();
    assert_eq!(report.totals.imported, 2, "{report:#?}");
    let dirs = app::DataDirs::new(&cfg.device.data_dir);
    let spool = Spool::open(&dirs.spool, app::spool_limits(&cfg)).unwrap();
    for ds in &sent {
        let path = spool.object_path(&ObjectId::of(ds));
        let stored = std::fs::read(&path).unwrap();
        assert!(stored[..128].iter().all(|&b| b == 0), "preamble kept");
        assert_eq!(&stored[128..132], b"DICM");
        assert!(stored.ends_with(ds));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o111, 0, "spool file mode {mode:o} is executable");
        assert_eq!(
            mode & 0o002,
            0,
            "spool file mode {mode:o} is world-writable"
        );
    }
}

#[test]
fn imports_checks_and_reports() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    let cfg = config(&d.path().join("data"));
    let mut good = Vec::new();
    for i in 0..12 {
        let sop = format!("1.2.3.{}", 100 + i);
        let (file, ds) = part10_file(&sop, "P");
        good.push((
            write(&src, &format!("s{}/f{i:02}.dcm", i % 3), &file),
            sop,
            ds,
        ));
    }
    let (dup_file, _) = part10_file("1.2.3.100", "P");
    write(&src, "zz/copy-of-f00", &dup_file);
    let (changed, changed_ds) = part10_file("1.2.3.101", "OTHER");
    let changed_path = write(&src, "zz/f01-v2.dcm", &changed);
    write(&src, "notes.txt", b"not DICOM at all");
    let (cut, _) = part10_file("1.2.3.999", "P");
    write(&src, "zz/cut.dcm", &cut[..cut.len() - 3]);
    let (mismatch, _) = part10_file("1.2.3.998", "P");
    let mut mismatch = mismatch;
    // meta group says ...997, data set says ...998
    let at = mismatch.windows(9).position(|w| w == b"1.2.3.998").unwrap();
    mismatch[at..at + 9].copy_from_slice(b"1.2.3.997");
    write(&src, "zz/mismatch.dcm", &mismatch);

    let rec = Recorder::default();
    // One reader: files reach the committer in walk order, so which version
    // of 1.2.3.101 comes first is fixed.
    let one_reader = Options {
        readers: 1,
        ..options(&src)
    };
    let report = run(&cfg, &one_reader, &rec).unwrap();
    assert_eq!(report.stopped, None);
    assert_eq!(report.files, 17);
    assert_eq!(*rec.started.lock().unwrap(), Some((17, report.bytes)));
    assert_eq!(rec.updates.lock().unwrap().len(), 17);
    let t = &report.totals;
    assert_eq!(
        (
            t.files_done,
            t.imported,
            t.duplicates,
            t.conflicts,
            t.skipped
        ),
        (17, 13, 1, 1, 2),
        "{report:#?}"
    );
    assert_eq!(t.bytes_done, report.bytes);
    assert_eq!(
        report.conflicts,
        vec![Conflict {
            path: changed_path,
            sop_instance_uid: "1.2.3.101".into()
        }]
    );
    let reasons: Vec<(String, String)> = report
        .skipped
        .iter()
        .map(|s| {
            (
                s.path.file_name().unwrap().to_string_lossy().into_owned(),
                s.reason.clone(),
            )
        })
        .collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    let reason = |name: &str| {
        reasons
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, r)| r.clone())
            .unwrap_or_else(|| panic!("{name} not skipped: {reasons:?}"))
    };
    assert!(reason("notes.txt").contains("not a DICOM Part-10 file"));
    assert!(reason("mismatch.dcm").contains("disagree"));

    // Every good file is in the spool, byte-identical, with the backfill
    // provenance; the index and outbox know it.
    let dirs = app::DataDirs::new(&cfg.device.data_dir);
    let index = Index::open(&dirs.index).unwrap();
    let spool = Spool::open(&dirs.spool, app::spool_limits(&cfg)).unwrap();
    for (_, sop, ds) in &good {
        let versions = index.versions(sop).unwrap();
        let hash = ObjectId::of(ds);
        let v = versions
            .iter()
            .find(|v| v.blake3 == hash_hex(&hash))
            .unwrap_or_else(|| panic!("{sop} not indexed"));
        assert_eq!(v.calling_ae, DEFAULT_SOURCE_AE);
        assert_eq!(v.source_ip, "");
        assert_eq!(v.transfer_syntax_uid, TS);
        let path = spool.object_path(&hash);
        let stored = std::fs::read(&path).unwrap();
        assert!(stored.ends_with(ds));
        assert_eq!(stored.len() as u64, v.file_bytes);
        let h = read_header(&path).unwrap();
        assert_eq!(h.source_ae, DEFAULT_SOURCE_AE);
        assert_eq!(&stored[h.dataset_offset as usize..], ds.as_slice());
    }
    assert_eq!(index.versions("1.2.3.101").unwrap().len(), 2);
    assert!(
        index
            .versions("1.2.3.101")
            .unwrap()
            .iter()
            .any(|v| v.blake3 == blake3::hash(&changed_ds).to_hex().as_str())
    );
    let stats = index.stats().unwrap();
    // A file cut short is kept as it is (the primary holds it so), with
    // what is wrong with it (the ingest policy, pacs_mirror_store::identify).
    let cut_versions = index.versions("1.2.3.999").unwrap();
    assert_eq!(cut_versions.len(), 1);
    let cut_stored = std::fs::read(
        spool.object_path(&pacs_mirror_store::index::parse_hash(&cut_versions[0].blake3).unwrap()),
    )
    .unwrap();
    assert!(cut_stored.ends_with(&cut[cut.len() - 23..cut.len() - 3]));
    // The cut falls in the Series UID, the last element: it is missing.
    let findings: Vec<String> = cut_versions[0]
        .findings
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(findings.len(), 2, "{findings:?}");
    assert_eq!(
        findings[0],
        "missing_attribute: no Series Instance UID (0020,000E)"
    );
    assert!(
        findings[1].starts_with("structure: truncated at byte"),
        "{findings:?}"
    );
    assert_eq!(
        (stats.instances, stats.objects, stats.conflicts),
        (14, 14, 1)
    );
    assert_eq!(stats.outbox.get("backup"), Some(&14));
    assert_eq!(std::fs::read_dir(spool.tmp_dir()).unwrap().count(), 0);
    drop(index);

    // A second run: everything held is a duplicate, nothing is written again.
    let again = run(&cfg, &options(&src), &Recorder::default()).unwrap();
    let t = &again.totals;
    assert_eq!(
        (t.imported, t.duplicates, t.conflicts, t.skipped),
        (0, 15, 0, 2),
        "{again:#?}"
    );
}

#[test]
fn a_running_agent_is_reported_not_waited_for() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    write(&src, "a.dcm", &part10_file("1.2.3.4", "P").0);
    let cfg = config(&d.path().join("data"));
    let dirs = app::DataDirs::new(&cfg.device.data_dir);
    let held = Index::open(&dirs.index).unwrap();
    let (file, tmp) = {
        let spool = Spool::open(&dirs.spool, app::spool_limits(&cfg)).unwrap();
        spool.begin().unwrap()
    };
    drop(file);
    let e = run(&cfg, &options(&src), &Recorder::default()).unwrap_err();
    assert!(matches!(e, BackfillError::AgentRunning { .. }), "{e}");
    assert!(e.to_string().contains("the agent is running"), "{e}");
    assert!(
        tmp.exists(),
        "recovery must not run while the agent holds the index"
    );
    drop(held);
    let ok = run(&cfg, &options(&src), &Recorder::default()).unwrap();
    assert_eq!(ok.totals.imported, 1);
    assert_eq!(ok.recovery.temp_files_removed, 1);
}

#[test]
fn bad_arguments_are_errors() {
    let d = tempfile::tempdir().unwrap();
    let cfg = config(&d.path().join("data"));
    let mut o = options(&d.path().join("missing"));
    assert!(matches!(
        run(&cfg, &o, &Recorder::default()),
        Err(BackfillError::NotADirectory { .. })
    ));
    o.source_dir = d.path().to_path_buf();
    o.source_ae = "WAY_TOO_LONG_AE_TITLE".into();
    assert!(matches!(
        run(&cfg, &o, &Recorder::default()),
        Err(BackfillError::SourceAe(_))
    ));
}

#[test]
fn objects_over_the_size_limit_are_skipped() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    let (file, _) = part10_file("1.2.3.4", "P");
    write(&src, "a.dcm", &file);
    let mut cfg = config(&d.path().join("data"));
    cfg.spool.max_object_bytes = Some(16);
    let r = run(&cfg, &options(&src), &Recorder::default()).unwrap();
    assert_eq!(r.stopped, None);
    assert_eq!(r.totals.skipped, 1);
    assert!(r.skipped[0].reason.contains("larger than"), "{r:#?}");
}

#[test]
fn a_full_quota_stops_the_run() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    for i in 0..5 {
        let (file, _) = part10_file(&format!("1.2.3.{i}"), "P");
        write(&src, &format!("{i}.dcm"), &file);
    }
    let mut cfg = config(&d.path().join("data"));
    cfg.spool.max_bytes = Some(1);
    let r = run(&cfg, &options(&src), &Recorder::default()).unwrap();
    let reason = r.stopped.clone().unwrap_or_default();
    assert!(reason.contains("quota"), "{r:#?}");
    assert_eq!(r.totals.imported, 0);
    assert!(r.skipped.is_empty(), "{r:#?}");
}
