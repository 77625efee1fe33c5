//! The Query/Retrieve SCU (`pacs_mirror_verifier::qr`) against a real Orthanc:
//! C-FIND at each level with exact counts and UIDs, C-GET of studies, series
//! and instances with every data set byte-exact (uncompressed, JPEG 2000,
//! RLE, implicit VR), C-MOVE into a DCMTK storescp, and the failures an
//! operator meets (unknown caller, unknown move destination, unknown study).
//!
//! Instances are put into Orthanc with its REST API (`POST /instances`),
//! which keeps each file as sent.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use pacs_mirror_dicom::dimse::Status;
use pacs_mirror_dicom::scu::Peer;
use pacs_mirror_verifier::qr::{
    self, DateRange, InformationModel, InstanceQuery, QrAssociation, QrError, QrOptions,
    RetrieveTarget, SeriesQuery, Service, StudyQuery,
};

use crate::harness::*;

const MIRROR_AE: &str = "MIRROR";
const RETRIEVER_AE: &str = "RETRIEVER";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// What was put into Orthanc.
struct Put {
    sent: Sent,
    /// The data set bytes of the file uploaded.
    dataset: Vec<u8>,
    study_date: String,
}

struct Fixture {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    orthanc: Orthanc,
    /// Everything uploaded.
    put: Vec<Put>,
    /// Study UIDs: the two uncompressed synthetic studies, then the
    /// mixed-transfer-syntax one.
    studies: Vec<String>,
}

impl Fixture {
    /// Orthanc "MIRROR" knowing RETRIEVER (and `modalities`), holding:
    /// 2 studies × 2 series × 3 instances (Explicit VR LE, 64×64), and one
    /// study of 3 instances in JPEG 2000 lossless, RLE and Implicit VR LE.
    fn new(modalities: &[OrthancModality]) -> Fixture {
        let dir = tempdir();
        let base = dir.path().to_path_buf();
        let mut all = vec![OrthancModality::local(
            "retriever",
            RETRIEVER_AE,
            free_port(),
        )];
        all.extend_from_slice(modalities);
        let orthanc = Orthanc::start_knowing(&base.join("orthanc"), MIRROR_AE, all);
        let plain = synth(
            &base.join("plain"),
            &[
                "--studies",
                "2",
                "--series-per-study",
                "2",
                "--instances-per-series",
                "3",
                "--rows",
                "64",
                "--columns",
                "64",
                "--seed",
                "11",
            ],
        );
        assert_eq!(plain.len(), 12);
        let src = synth(
            &base.join("mixed-src"),
            &[
                "--instances-per-series",
                "3",
                "--seed",
                "12",
                "--patient-id",
                "MIXED",
            ],
        );
        let v = base.join("mixed");
        std::fs::create_dir_all(&v).expect("mkdir");
        crate::transfer_syntaxes::make_j2k(
            &src[0],
            &v.join("j2k.dcm"),
            "1.2.840.10008.1.2.4.90",
            false,
        );
        run_ok(
            Command::new(tool("dcmcrle"))
                .arg(&src[1])
                .arg(v.join("rle.dcm")),
            Duration::from_secs(60),
        );
        run_ok(
            Command::new(tool("dcmconv"))
                .arg("+ti")
                .arg(&src[2])
                .arg(v.join("implicit.dcm")),
            Duration::from_secs(60),
        );
        let mixed = vec![v.join("j2k.dcm"), v.join("rle.dcm"), v.join("implicit.dcm")];
        let mut put = Vec::new();
        for f in plain.iter().chain(&mixed) {
            orthanc.upload(f);
            let (_, dataset) = raw_info(f);
            put.push(Put {
                sent: sent_info(f),
                dataset,
                study_date: study_date(f),
            });
        }
        assert_eq!(orthanc.count_instances(), 15);
        let mut studies: Vec<String> = Vec::new();
        for p in &put {
            if !studies.contains(&p.sent.study_instance_uid) {
                studies.push(p.sent.study_instance_uid.clone());
            }
        }
        assert_eq!(studies.len(), 3);
        Fixture {
            dir: base,
            _dir: dir,
            orthanc,
            put,
            studies,
        }
    }

    fn peer(&self, calling_ae: &str) -> Peer {
        Peer {
            calling_ae: calling_ae.into(),
            called_ae: MIRROR_AE.into(),
            host: "127.0.0.1".into(),
            port: self.orthanc.dicom_port,
            timeout: Duration::from_secs(30),
            tls: None,
            pace: None,
        }
    }

    fn of_study(&self, study: &str) -> Vec<&Put> {
        self.put
            .iter()
            .filter(|p| p.sent.study_instance_uid == study)
            .collect()
    }

    fn by_uid(&self, sop_instance_uid: &str) -> &Put {
        self.put
            .iter()
            .find(|p| p.sent.sop_instance_uid == sop_instance_uid)
            .unwrap_or_else(|| panic!("{sop_instance_uid} was never put into Orthanc"))
    }
}

/// Fail the test with the error and the tail of Orthanc's log.
fn fail(f: &Fixture, e: QrError) -> ! {
    panic!("{e}{}", f.orthanc.log_tail())
}

fn study_date(path: &Path) -> String {
    let obj = dicom_object::OpenFileOptions::new()
        .read_until(dicom_dictionary_std::tags::PIXEL_DATA)
        .open_file(path)
        .expect("parsing a sent file");
    obj.element(dicom_dictionary_std::tags::STUDY_DATE)
        .expect("StudyDate")
        .to_str()
        .expect("StudyDate text")
        .trim()
        .to_string()
}

/// The instances of a C-GET match the ones put in, byte for byte; the files
/// hold our meta header then those bytes; timings are ordered.
fn check_retrieved(f: &Fixture, out: &qr::GetOutcome, scratch: &Path, want: &[&Put]) {
    let got: BTreeSet<&str> = out
        .instances
        .iter()
        .map(|i| i.sop_instance_uid.as_str())
        .collect();
    let expected: BTreeSet<&str> = want
        .iter()
        .map(|p| p.sent.sop_instance_uid.as_str())
        .collect();
    assert_eq!(got, expected, "instances retrieved");
    assert_eq!(out.instances.len(), want.len(), "each instance once");
    let mut previous_last = Duration::ZERO;
    for inst in &out.instances {
        let p = f.by_uid(&inst.sop_instance_uid);
        assert_eq!(
            inst.blake3_hex(),
            blake3_hex(&p.dataset),
            "blake3 of {} ({})",
            inst.sop_instance_uid,
            p.sent.transfer_syntax
        );
        assert_eq!(inst.dataset_bytes, p.dataset.len() as u64);
        assert_eq!(
            inst.transfer_syntax_uid, p.sent.transfer_syntax,
            "{} came back in another transfer syntax",
            inst.sop_instance_uid
        );
        assert_eq!(inst.sop_class_uid, p.sent.sop_class_uid);
        assert!(inst.path.starts_with(scratch), "{}", inst.path.display());
        let name = inst
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        assert!(
            name.as_deref()
                .is_some_and(|n| !n.contains(&p.sent.sop_instance_uid)),
            "file named after a UID: {name:?}"
        );
        let bytes = std::fs::read(&inst.path).expect("reading a retrieved file");
        assert_eq!(dataset_offset(&bytes) as u64, inst.dataset_offset);
        assert!(
            dataset_bytes(&bytes) == &p.dataset[..],
            "file of {}",
            inst.sop_instance_uid
        );
        let meta = read_meta(&bytes);
        assert_eq!(meta.sop_instance_uid, inst.sop_instance_uid);
        assert_eq!(meta.transfer_syntax, inst.transfer_syntax_uid);
        assert_eq!(meta.source_ae.as_deref(), Some(MIRROR_AE));
        assert!(inst.first_byte_after <= inst.last_byte_after);
        assert!(
            inst.first_byte_after >= previous_last,
            "instances arrive one after the other"
        );
        previous_last = inst.last_byte_after;
    }
    assert!(previous_last <= out.elapsed);
}

#[test]
fn c_find_at_each_level_matches_what_orthanc_holds() {
    let f = Fixture::new(&[]);
    let peer = f.peer(RETRIEVER_AE);
    runtime().block_on(async {
        let opts = QrOptions::default();
        let study_root = InformationModel::StudyRoot;
        let mut a = QrAssociation::connect(
            &peer,
            &[
                Service::Find(InformationModel::StudyRoot),
                Service::Find(InformationModel::PatientRoot),
            ],
        )
        .await
        .unwrap_or_else(|e| fail(&f, e));

        // STUDY level, everything: UIDs, patients, series and instance counts.
        let out = a
            .find(study_root, &StudyQuery::default(), &opts)
            .await
            .unwrap_or_else(|e| fail(&f, e));
        assert_eq!(out.status, Status::Success);
        assert!(!out.truncated && !out.cancelled);
        let got: BTreeMap<String, (String, Option<u32>, Option<u32>, String)> = out
            .matches
            .iter()
            .map(|m| {
                (
                    m.study_instance_uid.clone(),
                    (
                        m.patient_id.clone(),
                        m.number_of_study_related_series,
                        m.number_of_study_related_instances,
                        m.study_date.clone(),
                    ),
                )
            })
            .collect();
        let mut want = BTreeMap::new();
        for study in &f.studies {
            let items = f.of_study(study);
            let series: BTreeSet<&str> = items
                .iter()
                .map(|p| p.sent.series_instance_uid.as_str())
                .collect();
            want.insert(
                study.clone(),
                (
                    items[0].sent.patient_id.clone(),
                    Some(series.len() as u32),
                    Some(items.len() as u32),
                    items[0].study_date.clone(),
                ),
            );
        }
        assert_eq!(out.matches.len(), 3, "one match per study");
        assert_eq!(got, want);

        // Matching on Patient ID, on a UID list, on a date range.
        let q = StudyQuery {
            patient_id: Some("MIXED0001".into()),
            ..StudyQuery::default()
        };
        let out = a
            .find(study_root, &q, &opts)
            .await
            .unwrap_or_else(|e| fail(&f, e));
        let uids: Vec<&str> = out
            .matches
            .iter()
            .map(|m| m.study_instance_uid.as_str())
            .collect();
        assert_eq!(uids, [f.studies[2].as_str()]);
        assert_eq!(out.matches[0].number_of_study_related_instances, Some(3));
        assert_eq!(out.matches[0].modalities_in_study, ["CT"]);

        let q = StudyQuery {
            study_instance_uids: vec![f.studies[0].clone(), f.studies[2].clone()],
            ..StudyQuery::default()
        };
        let out = a
            .find(study_root, &q, &opts)
            .await
            .unwrap_or_else(|e| fail(&f, e));
        let uids: BTreeSet<&str> = out
            .matches
            .iter()
            .map(|m| m.study_instance_uid.as_str())
            .collect();
        assert_eq!(
            uids,
            BTreeSet::from([f.studies[0].as_str(), f.studies[2].as_str()])
        );

        let date = f.put[0].study_date.clone();
        let on_date: BTreeSet<&str> = f
            .put
            .iter()
            .filter(|p| p.study_date == date)
            .map(|p| p.sent.study_instance_uid.as_str())
            .collect();
        let q = StudyQuery {
            study_date: Some(DateRange::on(&date).expect("a valid date")),
            ..StudyQuery::default()
        };
        let out = a
            .find(study_root, &q, &opts)
            .await
            .unwrap_or_else(|e| fail(&f, e));
        let uids: BTreeSet<&str> = out
            .matches
            .iter()
            .map(|m| m.study_instance_uid.as_str())
            .collect();
        assert_eq!(uids, on_date, "studies on {date}");
        let q = StudyQuery {
            study_date: Some(DateRange::between("19900101", "19991231").expect("a valid date")),
            ..StudyQuery::default()
        };
        let out = a
            .find(study_root, &q, &opts)
            .await
            .unwrap_or_else(|e| fail(&f, e));
        assert!(out.matches.is_empty(), "no study in the 1990s");

        // SERIES and IMAGE levels, for every study and series.
        for study in &f.studies {
            let items = f.of_study(study);
            let q = SeriesQuery {
                study_instance_uid: Some(study.clone()),
                ..SeriesQuery::default()
            };
            let out = a
                .find(study_root, &q, &opts)
                .await
                .unwrap_or_else(|e| fail(&f, e));
            let mut want: BTreeMap<String, u32> = BTreeMap::new();
            for p in &items {
                *want.entry(p.sent.series_instance_uid.clone()).or_insert(0) += 1;
            }
            let got: BTreeMap<String, u32> = out
                .matches
                .iter()
                .map(|m| {
                    assert_eq!(&m.study_instance_uid, study);
                    assert_eq!(m.modality, "CT");
                    (
                        m.series_instance_uid.clone(),
                        m.number_of_series_related_instances
                            .expect("Number of Series Related Instances"),
                    )
                })
                .collect();
            assert_eq!(out.matches.len(), want.len());
            assert_eq!(got, want, "series of {study}");

            for series in want.keys() {
                let q = InstanceQuery {
                    study_instance_uid: Some(study.clone()),
                    series_instance_uid: Some(series.clone()),
                    ..InstanceQuery::default()
                };
                let out = a
                    .find(study_root, &q, &opts)
                    .await
                    .unwrap_or_else(|e| fail(&f, e));
                let got: BTreeSet<(String, String)> = out
                    .matches
                    .iter()
                    .map(|m| (m.sop_instance_uid.clone(), m.sop_class_uid.clone()))
                    .collect();
                let want: BTreeSet<(String, String)> = items
                    .iter()
                    .filter(|p| &p.sent.series_instance_uid == series)
                    .map(|p| {
                        (
                            p.sent.sop_instance_uid.clone(),
                            p.sent.sop_class_uid.clone(),
                        )
                    })
                    .collect();
                assert_eq!(out.matches.len(), want.len());
                assert_eq!(got, want, "instances of {series}");
            }
        }

        // IMAGE level by a list of SOP Instance UIDs.
        let two: Vec<String> = f.of_study(&f.studies[2])[..2]
            .iter()
            .map(|p| p.sent.sop_instance_uid.clone())
            .collect();
        let q = InstanceQuery {
            study_instance_uid: Some(f.studies[2].clone()),
            series_instance_uid: Some(
                f.of_study(&f.studies[2])[0]
                    .sent
                    .series_instance_uid
                    .clone(),
            ),
            sop_instance_uids: two.clone(),
            ..InstanceQuery::default()
        };
        let out = a
            .find(study_root, &q, &opts)
            .await
            .unwrap_or_else(|e| fail(&f, e));
        let got: BTreeSet<String> = out
            .matches
            .iter()
            .map(|m| m.sop_instance_uid.clone())
            .collect();
        assert_eq!(got, two.into_iter().collect::<BTreeSet<_>>());

        // Patient Root, STUDY level under one patient.
        let q = StudyQuery {
            patient_id: Some(f.put[0].sent.patient_id.clone()),
            ..StudyQuery::default()
        };
        let out = a
            .find(InformationModel::PatientRoot, &q, &opts)
            .await
            .unwrap_or_else(|e| fail(&f, e));
        assert_eq!(out.matches.len(), 1);
        assert_eq!(
            out.matches[0].study_instance_uid,
            f.put[0].sent.study_instance_uid
        );

        // A match limit: C-CANCEL, one match kept, the association still usable.
        let limited = QrOptions {
            max_matches: 1,
            ..QrOptions::default()
        };
        let out = a
            .find(study_root, &StudyQuery::default(), &limited)
            .await
            .unwrap_or_else(|e| fail(&f, e));
        assert_eq!(out.matches.len(), 1);
        assert!(out.truncated && out.cancelled);
        let out = a
            .find(study_root, &StudyQuery::default(), &opts)
            .await
            .unwrap_or_else(|e| fail(&f, e));
        assert_eq!(
            out.matches.len(),
            3,
            "the association goes on after a cancel"
        );
        a.release().await;
    });
}

#[test]
fn c_get_returns_every_instance_byte_exact() {
    let f = Fixture::new(&[]);
    let peer = f.peer(RETRIEVER_AE);
    let scratch = f.dir.join("scratch");
    runtime().block_on(async {
        let opts = QrOptions::default();
        let mut a = QrAssociation::connect(&peer, &[Service::Get(qr::default_storage_contexts())])
            .await
            .unwrap_or_else(|e| fail(&f, e));

        // Whole studies: the uncompressed ones and the mixed one (JPEG 2000,
        // RLE, implicit VR), each instance in its own transfer syntax.
        let mut reported = 0;
        for study in &f.studies {
            let out = a
                .get(&RetrieveTarget::study(study), &scratch, &opts)
                .await
                .unwrap_or_else(|e| fail(&f, e));
            let want = f.of_study(study);
            assert!(
                out.is_complete(),
                "C-GET of {study}: {out:?}{}",
                f.orthanc.log_tail()
            );
            assert_eq!(out.sub_operations.completed as usize, want.len());
            assert_eq!(out.sub_operations.failed, 0);
            assert!(out.failed_sop_instance_uids.is_empty());
            check_retrieved(&f, &out, &scratch, &want);
            reported += out.instances.len();
        }

        // One series, then one instance.
        let p = &f.of_study(&f.studies[1])[0];
        let series = &p.sent.series_instance_uid;
        let out = a
            .get(
                &RetrieveTarget::series(&p.sent.study_instance_uid, series),
                &scratch,
                &opts,
            )
            .await
            .unwrap_or_else(|e| fail(&f, e));
        assert!(out.is_complete(), "{out:?}");
        let want: Vec<&Put> = f
            .put
            .iter()
            .filter(|q| &q.sent.series_instance_uid == series)
            .collect();
        assert_eq!(want.len(), 3);
        check_retrieved(&f, &out, &scratch, &want);
        reported += out.instances.len();

        let j2k = f.of_study(&f.studies[2])[0];
        assert_eq!(j2k.sent.transfer_syntax, "1.2.840.10008.1.2.4.90");
        let out = a
            .get(
                &RetrieveTarget::instance(
                    &j2k.sent.study_instance_uid,
                    &j2k.sent.series_instance_uid,
                    &j2k.sent.sop_instance_uid,
                ),
                &scratch,
                &opts,
            )
            .await
            .unwrap_or_else(|e| fail(&f, e));
        assert!(out.is_complete(), "{out:?}");
        check_retrieved(&f, &out, &scratch, &[j2k]);
        reported += out.instances.len();

        // A study Orthanc does not hold: no instance, and not a success.
        let out = a
            .get(&RetrieveTarget::study("1.2.3.4.5.6.7"), &scratch, &opts)
            .await
            .unwrap_or_else(|e| fail(&f, e));
        assert!(out.instances.is_empty());
        assert!(!out.is_complete(), "unknown study: {out:?}");
        a.release().await;

        // Nothing else in the scratch directory: one file per instance.
        assert_eq!(files_under(&scratch).len(), reported);
    });
}

/// Proposing CT in Explicit VR LE only: Orthanc converts the RLE and
/// Implicit VR instances (another hash, which a restore drill must flag) and
/// cannot convert the JPEG 2000 one (Debian's Orthanc has no JPEG 2000
/// decoder): that sub-operation fails and is listed, with the Failed SOP
/// Instance UID List Orthanc puts inside the command set.
#[test]
fn c_get_with_only_uncompressed_contexts_reports_what_orthanc_did() {
    let f = Fixture::new(&[]);
    let peer = f.peer(RETRIEVER_AE);
    let scratch = f.dir.join("scratch");
    runtime().block_on(async {
        let storage =
            qr::storage_contexts(&["1.2.840.10008.5.1.4.1.1.2"], &["1.2.840.10008.1.2.1"]);
        let out = qr::get(
            &peer,
            &RetrieveTarget::study(&f.studies[2]),
            &storage,
            &scratch,
            &QrOptions::default(),
        )
        .await
        .unwrap_or_else(|e| fail(&f, e));
        assert!(!out.is_complete(), "{out:?}");
        assert!(
            out.status.is_failure() || out.status == Status::Warning(0xB000),
            "{out:?}"
        );
        let j2k = f.of_study(&f.studies[2])[0];
        assert_eq!(j2k.sent.transfer_syntax, "1.2.840.10008.1.2.4.90");
        assert_eq!(
            out.failed_sop_instance_uids,
            std::slice::from_ref(&j2k.sent.sop_instance_uid)
        );
        assert_eq!(out.sub_operations.failed, 1);
        assert_eq!(out.sub_operations.completed, 2);
        assert_eq!(out.instances.len(), 2);
        for inst in &out.instances {
            let p = f.by_uid(&inst.sop_instance_uid);
            assert_ne!(p.sent.transfer_syntax, "1.2.840.10008.1.2.1");
            assert_eq!(inst.transfer_syntax_uid, "1.2.840.10008.1.2.1");
            assert_ne!(
                inst.blake3_hex(),
                blake3_hex(&p.dataset),
                "{} was converted from {}, yet hashes equal",
                inst.sop_instance_uid,
                p.sent.transfer_syntax
            );
        }
    });
}

/// DCMTK storescp in bit-preserving mode accepting every transfer syntax;
/// killed (by its own PID) on drop.
struct Storescp {
    child: Child,
    out: PathBuf,
}

impl Storescp {
    fn start(dir: &Path, ae: &str, port: u16) -> Storescp {
        let out = dir.join("storescp-out");
        std::fs::create_dir_all(&out).expect("mkdir");
        let child = Command::new(tool("storescp"))
            .args(["+B", "+xa", "-aet", ae, "-od"])
            .arg(&out)
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting storescp");
        Storescp { child, out }
    }

    /// Data set bytes of every file received, by SOP Instance UID.
    fn received(&self) -> BTreeMap<String, Vec<u8>> {
        files_under(&self.out)
            .iter()
            .map(|p| {
                let (meta, ds) = raw_info(p);
                (meta.sop_instance_uid, ds)
            })
            .collect()
    }
}

impl Drop for Storescp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn c_move_to_storescp_delivers_byte_exact() {
    let dir = tempdir();
    let port = free_port();
    let storescp = Storescp::start(dir.path(), "STORESCP", port);
    let f = Fixture::new(&[OrthancModality::local("storescp", "STORESCP", port)]);
    let peer = f.peer(RETRIEVER_AE);
    runtime().block_on(async {
        let probe = Peer {
            calling_ae: "PROBE".into(),
            called_ae: "STORESCP".into(),
            host: "127.0.0.1".into(),
            port,
            timeout: Duration::from_secs(5),
            tls: None,
            pace: None,
        };
        let mut ready = false;
        for _ in 0..100 {
            if pacs_mirror_dicom::scu::echo(&probe).await.is_ok() {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(ready, "storescp did not answer C-ECHO");

        let opts = QrOptions::default();
        let mut a = QrAssociation::connect(&peer, &[Service::Move])
            .await
            .unwrap_or_else(|e| fail(&f, e));
        let mut moved = 0;
        for study in [&f.studies[0], &f.studies[2]] {
            let out = a
                .move_to(&RetrieveTarget::study(study), "STORESCP", &opts)
                .await
                .unwrap_or_else(|e| fail(&f, e));
            let want = f.of_study(study);
            assert!(
                out.is_complete(),
                "C-MOVE of {study}: {out:?}{}",
                f.orthanc.log_tail()
            );
            assert_eq!(out.sub_operations.completed as usize, want.len());
            moved += want.len();
        }
        // Move destination unknown to Orthanc: a failure status, clearly.
        let out = a
            .move_to(&RetrieveTarget::study(&f.studies[1]), "NOBODY", &opts)
            .await
            .unwrap_or_else(|e| fail(&f, e));
        assert!(out.status.is_failure(), "{out:?}");
        assert_eq!(out.sub_operations.completed, 0);
        a.release().await;

        let received = storescp.received();
        assert_eq!(received.len(), moved, "files storescp wrote");
        for study in [&f.studies[0], &f.studies[2]] {
            for p in f.of_study(study) {
                let got = received
                    .get(&p.sent.sop_instance_uid)
                    .unwrap_or_else(|| panic!("{} did not arrive", p.sent.sop_instance_uid));
                assert!(
                    got == &p.dataset,
                    "data set of {} ({}) changed on the way",
                    p.sent.sop_instance_uid,
                    p.sent.transfer_syntax
                );
            }
        }
    });
}

/// Orthanc accepts the association of an AE it does not know, then aborts
/// it on the C-FIND: the error says what to check.
#[test]
fn unknown_caller_is_refused_with_a_clear_error() {
    let f = Fixture::new(&[]);
    let stranger = f.peer("STRANGER");
    runtime().block_on(async {
        let e = qr::find(
            &stranger,
            InformationModel::StudyRoot,
            &StudyQuery::default(),
            &QrOptions::default(),
        )
        .await
        .expect_err("Orthanc must refuse an unknown AE");
        assert!(
            matches!(
                e,
                QrError::Association(pacs_mirror_dicom::scu::ScuError::Aborted { .. })
            ),
            "{e}"
        );
        let text = e.to_string();
        for needle in ["C-FIND", "STRANGER", "DicomModalities"] {
            assert!(text.contains(needle), "{needle:?} not in: {text}");
        }
    });
}

/// A 100-instance CT study (512×512×16 bit, ~0.5 MB each) comes back whole,
/// byte-exact, with time to first instance and to the whole study.
#[test]
fn c_get_of_a_100_instance_study_reports_recovery_times() {
    let dir = tempdir();
    let orthanc = Orthanc::start_knowing(
        &dir.path().join("orthanc"),
        MIRROR_AE,
        vec![OrthancModality::local(
            "retriever",
            RETRIEVER_AE,
            free_port(),
        )],
    );
    let files = synth(
        &dir.path().join("big"),
        &["--instances-per-series", "100", "--seed", "13"],
    );
    let mut want: BTreeMap<String, String> = BTreeMap::new();
    for f in &files {
        orthanc.upload(f);
        let (meta, ds) = raw_info(f);
        want.insert(meta.sop_instance_uid, blake3_hex(&ds));
    }
    let study = sent_info(&files[0]).study_instance_uid;
    let peer = Peer {
        calling_ae: RETRIEVER_AE.into(),
        called_ae: MIRROR_AE.into(),
        host: "127.0.0.1".into(),
        port: orthanc.dicom_port,
        timeout: Duration::from_secs(30),
        tls: None,
        pace: None,
    };
    let scratch = dir.path().join("scratch");
    let out = runtime()
        .block_on(qr::get(
            &peer,
            &RetrieveTarget::study(&study),
            &qr::default_storage_contexts(),
            &scratch,
            &QrOptions::default(),
        ))
        .unwrap_or_else(|e| panic!("{e}{}", orthanc.log_tail()));
    assert!(out.is_complete(), "{out:?}");
    assert_eq!(out.sub_operations.completed, 100);
    let got: BTreeMap<String, String> = out
        .instances
        .iter()
        .map(|i| (i.sop_instance_uid.clone(), i.blake3_hex()))
        .collect();
    assert_eq!(got, want, "every instance back, byte-exact");
    let first = out.instances.first().map(|i| i.last_byte_after);
    let last = out.instances.last().map(|i| i.last_byte_after);
    let bytes: u64 = out.instances.iter().map(|i| i.dataset_bytes).sum();
    eprintln!(
        "C-GET of 100 instances ({} MB): first instance complete after {first:?}, last after {last:?}, final response after {:?}",
        bytes / 1_000_000,
        out.elapsed
    );
    assert!(
        out.elapsed < Duration::from_secs(30),
        "C-GET of {bytes} bytes took {:?}",
        out.elapsed
    );
    assert_eq!(files_under(&scratch).len(), 100);
}
