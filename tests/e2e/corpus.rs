//! Acceptance (issue 14, faithful ingest): public corpora of odd and
//! real-world objects, each file sent on its own association by pynetdicom
//! proposing the file's own SOP class and transfer syntax, to DCMTK
//! `storescp +xa +B` (accept every transfer syntax, write the data set bit
//! for bit) and to pacs-mirror in the same test. pacs-mirror must accept
//! every object storescp accepts (Success, or a warning status 0xB000-0xBFFF,
//! which also means stored), and keep exactly the data set bytes storescp
//! kept.
//!
//! The corpora, all from PyPI (installed by scripts/test into the pynetdicom
//! venv, pinned):
//! - pydicom 3.0.2's bundled test files (`pydicom/data/test_files`, every
//!   file: big endian, deflated, truncated, no meta group, RT objects whose
//!   meta group names another instance, DICOMDIRs, private sequences…);
//! - deid-data 0.0.20 (de-identified real-world objects: retired
//!   Ultrasound Multi-frame Image Storage 1.2.840.10008.5.1.4.1.1.3.1 cines
//!   of 13 and 104 MB inside zip archives, JPEG secondary captures, a CT of
//!   a cat) and nibabel 5.4.2's `nicom` test files (Siemens mosaics with CSA
//!   headers, a Philips enhanced MR, a file whose data set has no SOP
//!   Class UID, gzipped scanner files).
//!
//! `tests/peers/send_each.py` sends each file's data set bytes exactly as in
//! the file (never re-encoded by pydicom), on an association of its own with
//! the calling AE `<prefix><n>`: both storescp (meta (0002,0016)) and
//! pacs-mirror (the index's calling AE) record it, so every stored object
//! names its file. Files no sender can send (no SOP Class UID anywhere, not
//! DICOM) are listed, not counted: storescp cannot accept them either.
//!
//! The ingest policy is being rewritten (issue 14): until then these tests
//! fail on the objects the current policy refuses (no Study UID, over-long
//! or hex-letter UIDs, trailing bytes after a deflate stream, truncated data
//! sets, retired SOP classes); each failure prints one line per file that
//! storescp kept and pacs-mirror did not (or kept other bytes).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::*;

/// DCMTK `storescp +xa +B +uf` writing into `dir`; killed on drop.
struct StoreScp {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl StoreScp {
    fn start(dir: &Path, log: &Path) -> StoreScp {
        std::fs::create_dir_all(dir).expect("creating the storescp folder");
        let port = free_port();
        let child = Command::new(tool("storescp"))
            // accept every transfer syntax, keep the data set bit for bit,
            // never overwrite one file with another (SOP Instance UIDs repeat)
            .args(["+xa", "+B", "+uf", "-aet", "STORESCP", "-od"])
            .arg(dir)
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).expect("creating the storescp log"))
            .spawn()
            .expect("starting storescp");
        let mut scp = StoreScp {
            child,
            port,
            log: log.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(st)) = scp.child.try_wait() {
                panic!("storescp exited at start ({st}){}", log_tail(&scp.log));
            }
            let out = run(
                Command::new(tool("echoscu")).args([
                    "-to",
                    "5",
                    "-aec",
                    "STORESCP",
                    "127.0.0.1",
                    &port.to_string(),
                ]),
                Duration::from_secs(15),
            );
            if out.status.success() {
                return scp;
            }
            assert!(
                Instant::now() < deadline,
                "storescp did not answer C-ECHO on port {port} within 20 s{}",
                log_tail(&scp.log)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for StoreScp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What `send_each.py` said about one file.
#[derive(Debug, Clone)]
struct Sent {
    path: String,
    status: Option<u16>,
    reason: String,
    calling_ae: String,
    sop_instance_uid: Option<String>,
}

/// The folder of an installed corpus (`send_each.py where NAME`).
fn corpus_dir(python: &Path, name: &str) -> PathBuf {
    let out = run_ok(
        Command::new(python)
            .arg(peer_script("send_each.py"))
            .args(["where", name]),
        Duration::from_secs(60),
    );
    let dir = PathBuf::from(out.stdout.trim());
    assert!(
        dir.is_dir(),
        "corpus {name} is not at {}: run scripts/test, which installs it",
        dir.display()
    );
    dir
}

/// Send every file under `dirs` to 127.0.0.1:`port`, one association each,
/// with calling AE `<prefix><n>`.
fn send_each(python: &Path, port: u16, called: &str, prefix: &str, dirs: &[PathBuf]) -> Vec<Sent> {
    let out = run(
        Command::new(python)
            .arg(peer_script("send_each.py"))
            .args([
                "send",
                "--port",
                &port.to_string(),
                "--called-ae",
                called,
                "--calling-ae-prefix",
                prefix,
            ])
            .args(dirs),
        Duration::from_secs(600),
    );
    assert!(
        out.status.success(),
        "send_each.py to port {port} failed ({}):\n{}",
        out.status,
        tail(&out.stderr, 30)
    );
    out.stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let v: Value = serde_json::from_str(line).unwrap_or_else(|e| {
                panic!("send_each.py printed a line that is not JSON ({e}): {line}")
            });
            let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
            Sent {
                path: s("path").unwrap_or_else(|| panic!("no path in {line}")),
                status: v.get("status").and_then(Value::as_u64).map(|n| {
                    u16::try_from(n).unwrap_or_else(|_| panic!("status {n} is not a u16: {line}"))
                }),
                reason: s("reason").unwrap_or_default(),
                calling_ae: s("calling_ae").unwrap_or_else(|| panic!("no calling_ae in {line}")),
                sop_instance_uid: s("sop_instance_uid"),
            }
        })
        .collect()
}

/// Success, or a warning (0xB000-0xBFFF): the object was stored.
fn stored(status: Option<u16>) -> bool {
    matches!(status, Some(0x0000 | 0xB000..=0xBFFF))
}

fn status_text(s: &Sent) -> String {
    match s.status {
        Some(st) => format!("{st:04X} {}", s.reason),
        None => format!("---- {}", s.reason),
    }
}

/// Where two byte strings first differ.
fn first_difference(a: &[u8], b: &[u8]) -> String {
    let at = a
        .iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()));
    format!(
        "data set bytes differ from offset {at} (storescp {} bytes, pacs-mirror {} bytes)",
        a.len(),
        b.len()
    )
}

/// Send the corpora in `dirs` to storescp and to pacs-mirror and compare.
fn run_corpus(label: &str, prefix: &str, dirs: &[PathBuf]) {
    let python = pynetdicom_python();
    let t0 = Instant::now();
    let tmp = tempdir();
    let scp_dir = tmp.path().join("storescp");
    let scp = StoreScp::start(&scp_dir, &tmp.path().join("storescp.log"));
    let cfg = AgentConfig::new(&tmp.path().join("data"));
    let agent = Agent::start(&cfg);

    // Both at once: two senders, one file at a time each.
    let (to_scp, to_agent) = std::thread::scope(|s| {
        let a = s.spawn(|| send_each(&python, scp.port, "STORESCP", prefix, dirs));
        let b = s.spawn(|| send_each(&python, cfg.port, AGENT_AE, prefix, dirs));
        (
            a.join().expect("the storescp sender panicked"),
            b.join().expect("the pacs-mirror sender panicked"),
        )
    });
    assert_eq!(
        to_scp.iter().map(|s| &s.path).collect::<Vec<_>>(),
        to_agent.iter().map(|s| &s.path).collect::<Vec<_>>(),
        "the two runs sent different files"
    );
    let agent_log = agent.log_path.clone();
    let config_path = agent.config_path.clone();
    agent.stop();
    drop(scp);

    // storescp's files by calling AE (its meta group's (0002,0016)).
    let mut scp_files: HashMap<String, Vec<PathBuf>> = HashMap::new();
    for f in files_under(&scp_dir) {
        let bytes = std::fs::read(&f).expect("reading a storescp file");
        let ae = read_meta(&bytes)
            .source_ae
            .unwrap_or_else(|| panic!("storescp file {} has no (0002,0016)", f.display()));
        scp_files.entry(ae).or_default().push(f);
    }
    let rows = index_dump(&config_path);
    let mut by_ae: HashMap<&str, Vec<&Row>> = HashMap::new();
    for r in &rows {
        by_ae.entry(r.calling_ae.as_str()).or_default().push(r);
    }

    // The agent's own words about a refusal (the Error Comment is cut to
    // 64 characters): its WARN/ERROR lines naming the calling AE.
    let agent_log_text = std::fs::read_to_string(&agent_log).unwrap_or_default();
    let agent_says = |ae: &str| -> String {
        let needle = format!("calling_ae={ae}");
        agent_log_text
            .lines()
            .filter(|l| l.contains(&needle) && (l.contains("WARN") || l.contains("ERROR")))
            .map(|l| format!("\n        agent log: {}", l.trim()))
            .collect()
    };
    let mut table = Vec::new();
    let mut failures = 0;
    let mut compared = 0;
    let mut unsendable = Vec::new();
    for (s, a) in to_scp.iter().zip(&to_agent) {
        let name = dirs
            .iter()
            .find_map(|d| Path::new(&s.path).strip_prefix(d).ok())
            .map_or_else(|| s.path.clone(), |p| p.display().to_string());
        if s.sop_instance_uid.is_none() {
            unsendable.push(format!("{name}: {}", s.reason));
            continue;
        }
        let verdict = if !stored(s.status) {
            "storescp did not store it (not compared)".to_string()
        } else if !stored(a.status) {
            failures += 1;
            format!("FAIL: refused by pacs-mirror{}", agent_says(&a.calling_ae))
        } else {
            compared += 1;
            let want = match scp_files.get(&s.calling_ae).map(Vec::as_slice) {
                Some([one]) => std::fs::read(one).expect("reading the storescp file"),
                other => panic!(
                    "storescp answered {:04X} for {name} but holds {} files from {}",
                    s.status.unwrap_or(0),
                    other.map_or(0, <[PathBuf]>::len),
                    s.calling_ae
                ),
            };
            let want = dataset_bytes(&want);
            // A data set pacs-mirror already held (an identical re-send) is
            // stored once, under the calling AE that sent it first.
            let uid = s.sop_instance_uid.as_deref().unwrap_or_default();
            let hash = blake3_hex(want);
            let row = by_ae
                .get(a.calling_ae.as_str())
                .and_then(|v| v.first().copied())
                .or_else(|| {
                    rows.iter()
                        .find(|r| r.sop_instance_uid == uid && r.blake3 == hash)
                });
            match row {
                None => {
                    failures += 1;
                    "FAIL: answered Success but not in the index".to_string()
                }
                Some(r) => {
                    let got = std::fs::read(&r.path)
                        .unwrap_or_else(|e| panic!("reading spool file {}: {e}", r.path.display()));
                    let got = dataset_bytes(&got);
                    if got == want {
                        "same data set bytes".to_string()
                    } else {
                        failures += 1;
                        format!("FAIL: {}", first_difference(want, got))
                    }
                }
            }
        };
        table.push(format!(
            "{name:<55} | storescp {:<40} | pacs-mirror {:<60} | {verdict}",
            status_text(s),
            status_text(a)
        ));
    }
    eprintln!(
        "corpus {label}: {} files, {} sent, {compared} compared, {failures} failures, {:.1} s",
        to_scp.len(),
        to_scp.len() - unsendable.len(),
        t0.elapsed().as_secs_f64()
    );
    assert!(
        failures == 0,
        "corpus {label}: pacs-mirror did not keep {failures} object(s) storescp +xa +B kept, byte for byte:\n{}\n\nnot sendable (no SOP Class UID, not DICOM):\n{}{}",
        table.join("\n"),
        unsendable.join("\n"),
        log_tail(&agent_log)
    );
    assert!(
        compared > 0,
        "corpus {label}: storescp stored nothing: {}",
        table.join("\n")
    );
}

#[test]
fn pydicom_test_files_are_kept_as_storescp_keeps_them() {
    let python = pynetdicom_python();
    run_corpus("pydicom", "PYD", &[corpus_dir(&python, "pydicom")]);
}

#[test]
fn deid_data_and_nibabel_files_are_kept_as_storescp_keeps_them() {
    let python = pynetdicom_python();
    run_corpus(
        "deid-data+nibabel",
        "RW",
        &[
            corpus_dir(&python, "deid-data"),
            corpus_dir(&python, "nibabel"),
        ],
    );
}
