//! `restore` and `reindex --from` never let a mistake pass as success: a
//! location that is not there, holds nothing or is not a pacs-mirror
//! bucket, and a selection that finds nothing, each exit 1 saying why (a
//! dry run too), touching nothing; a correct restore still exits 0, from a
//! bucket written by an older version (no descriptor) too.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;

use crate::harness::*;
use crate::s3::{BUCKET, S3Server, wait_target};

/// A folder bucket written by the agent (two studies), and a copy of it
/// without its descriptor, as a version from before descriptors wrote it.
struct Fixture {
    dir: PathBuf,
    bucket: PathBuf,
    legacy: PathBuf,
    /// (Study Instance UID, Patient ID) of each study in the bucket.
    studies: Vec<(String, String)>,
    instances: usize,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempdir().keep();
        let bucket = dir.join("bucket");
        let files = synth_small(&dir.join("corpus"), 2, 3, 32);
        let mut cfg = AgentConfig::new(&dir.join("data"));
        cfg.extra_toml = format!(
            "\n[[target]]\ntype = \"object_store\"\nname = \"backup\"\nurl = \"file://{}\"\n\
             \n[admin]\nlisten = \"127.0.0.1:{}\"\n",
            bucket.display(),
            free_port()
        );
        let agent = Agent::start(&cfg);
        store_all_ok(cfg.port, SENDER_AE, &[], &files);
        wait_target(
            &agent.config_path,
            "backup",
            "all uploaded",
            Duration::from_secs(120),
            |t| t["pending"] == 0 && t["delivered"] == files.len(),
        );
        agent.stop();
        assert!(
            bucket.join("pacs-mirror-bucket.json").is_file(),
            "the agent writes a descriptor"
        );
        let mut studies = Vec::new();
        for m in files_under(&bucket.join("studies")) {
            let v: Value =
                serde_json::from_slice(&std::fs::read(&m).expect("manifest")).expect("JSON");
            studies.push((
                v["study_instance_uid"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                v["patient_id"].as_str().unwrap_or_default().to_string(),
            ));
        }
        studies.sort();
        assert_eq!(studies.len(), 2, "{studies:?}");
        let legacy = dir.join("legacy");
        run_ok(
            Command::new("cp").arg("-a").arg(&bucket).arg(&legacy),
            Duration::from_secs(30),
        );
        std::fs::remove_file(legacy.join("pacs-mirror-bucket.json")).expect("rm descriptor");
        Fixture {
            dir,
            bucket,
            legacy,
            studies,
            instances: files.len(),
        }
    })
}

fn url(p: &Path) -> String {
    format!("file://{}", p.display())
}

/// `restore --from FROM --to <a port nobody listens on> ARGS…`, with and
/// without `--dry-run`: both exit 1 with `message` on stderr and no claim
/// of success.
fn refused(from: &str, args: &[&str], message: &str) {
    let to = format!("NOBODY@127.0.0.1:{}", free_port());
    for dry in [false, true] {
        let mut cmd = Command::new(bin());
        cmd.args([
            "restore",
            "--quiet",
            "--timeout-secs",
            "5",
            "--from",
            from,
            "--to",
            &to,
        ])
        .args(args);
        if dry {
            cmd.arg("--dry-run");
        }
        let out = run(&mut cmd, Duration::from_secs(60));
        assert_eq!(
            out.status.code(),
            Some(1),
            "restore {from} {args:?} (dry run: {dry}): {}",
            out.all()
        );
        assert!(
            out.stderr.contains(&format!("error: {message}\n")),
            "restore {from} {args:?} (dry run: {dry}): expected {message:?} in:\n{}",
            out.all()
        );
        assert!(!out.all().contains("complete"), "{}", out.all());
    }
}

#[test]
fn restore_from_a_folder_that_does_not_exist_fails_and_creates_nothing() {
    let dir = tempdir();
    let missing = dir.path().join("no-such-bucket");
    let from = url(&missing);
    refused(&from, &[], &format!("{from}: no such folder"));
    assert!(!missing.exists(), "restore created {}", missing.display());
}

#[test]
fn restore_from_an_empty_folder_fails() {
    let dir = tempdir();
    let from = url(dir.path());
    refused(
        &from,
        &[],
        &format!("{from}: holds nothing (no pacs-mirror bucket there: check the URL)"),
    );
}

#[test]
fn restore_from_a_folder_that_is_not_a_bucket_fails_saying_what_it_holds() {
    let dir = tempdir();
    std::fs::create_dir(dir.path().join("photos")).expect("mkdir");
    std::fs::write(dir.path().join("notes.txt"), "x").expect("write");
    let from = url(dir.path());
    refused(
        &from,
        &[],
        &format!(
            "{from}: not a pacs-mirror bucket (no descriptor pacs-mirror-bucket.json, no study manifests, no objects/): it holds notes.txt, photos/"
        ),
    );
}

#[test]
fn restore_of_a_study_not_in_the_bucket_fails_naming_it() {
    let f = fixture();
    let from = url(&f.bucket);
    refused(
        &from,
        &["--study", "1.2.3.4"],
        "nothing selected: study 1.2.3.4 is not in the bucket (it holds 2 studies)",
    );
    // One found, two not: refused as a whole, each missing one named.
    let found = &f.studies[0].0;
    refused(
        &from,
        &["--study", "1.2.3.4", "--study", found, "--study", "5.6.7"],
        "not in the bucket as asked: study 1.2.3.4 is not in the bucket; study 5.6.7 is not in the bucket (it holds 2 studies); nothing restored: correct the selection or leave that out",
    );
    // The same from a bucket without a descriptor.
    refused(
        &url(&f.legacy),
        &["--study", "1.2.3.4"],
        "nothing selected: study 1.2.3.4 is not in the bucket (it holds 2 studies)",
    );
}

#[test]
fn restore_of_a_patient_or_a_date_with_nothing_in_the_bucket_fails() {
    let f = fixture();
    let from = url(&f.bucket);
    refused(
        &from,
        &["--patient", "NO-SUCH-PATIENT"],
        "nothing selected: patient \"NO-SUCH-PATIENT\" has no study in the bucket (it holds 2 studies)",
    );
    // After everything: the message says how late the latest study is.
    for dry in [&[][..], &["--dry-run"][..]] {
        let out = run(
            Command::new(bin())
                .args([
                    "restore",
                    "--quiet",
                    "--from",
                    &from,
                    "--to",
                    "X@127.0.0.1:1",
                ])
                .args(["--since", "2999-01-01"])
                .args(dry),
            Duration::from_secs(60),
        );
        assert_eq!(out.status.code(), Some(1), "{}", out.all());
        let line = out
            .stderr
            .lines()
            .find(|l| l.starts_with("error: "))
            .unwrap_or_default();
        assert!(
            line.starts_with(
                "error: nothing selected: no study is dated on or after 2999-01-01: the latest is dated "
            ) && line.ends_with(" (it holds 2 studies)"),
            "{}",
            out.all()
        );
        assert!(!out.all().contains("complete"), "{}", out.all());
    }
}

/// A restore that selects something still succeeds: everything, from the
/// agent's bucket and from one without a descriptor (a note says so);
/// one study, one patient, as a dry run.
#[test]
fn a_correct_restore_still_exits_0_with_or_without_a_descriptor() {
    let f = fixture();
    for (bucket, name) in [(&f.bucket, "current"), (&f.legacy, "legacy")] {
        let received = f.dir.join(format!("restored-{name}"));
        std::fs::create_dir_all(&received).expect("mkdir");
        let port = free_port();
        let mut storescp = StoreScp::start(port, "RESTORED", &received, &["+B"]);
        let out = run(
            Command::new(bin()).args([
                "restore",
                "--quiet",
                "--from",
                &url(bucket),
                "--to",
                &format!("RESTORED@127.0.0.1:{port}"),
            ]),
            Duration::from_secs(120),
        );
        storescp.stop();
        assert_eq!(out.status.code(), Some(0), "{name}: {}", out.all());
        assert!(
            out.stdout
                .contains("complete: every selected object was verified and stored"),
            "{name}: {}",
            out.all()
        );
        assert_eq!(files_under(&received).len(), f.instances, "{name}");
        assert_eq!(
            out.stderr.contains("has no descriptor"),
            name == "legacy",
            "{name}: {}",
            out.stderr
        );
    }
    let (study, patient) = &f.studies[1];
    let dry_run = |args: &[&str]| {
        run_ok(
            Command::new(bin())
                .args(["restore", "--dry-run", "--from", &url(&f.bucket)])
                .args(["--to", "X@127.0.0.1:1"])
                .args(args),
            Duration::from_secs(60),
        )
    };
    let out = dry_run(&["--study", study]);
    assert!(out.stderr.contains(" in 1 study(ies)"), "{}", out.all());
    dry_run(&["--patient", patient]);
    dry_run(&["--since", "2000-01-01"]);
}

/// `reindex --from` a configured target whose folder is missing, empty,
/// not a bucket, or a bucket with no manifest yet: exit 1, saying why,
/// and no report.
#[test]
fn reindex_from_a_location_that_is_not_a_bucket_fails() {
    let dir = tempdir();
    let other = dir.path().join("other");
    std::fs::create_dir_all(other.join("photos")).expect("mkdir");
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    let fresh = dir.path().join("fresh");
    std::fs::create_dir(&fresh).expect("mkdir");
    std::fs::write(
        fresh.join("pacs-mirror-bucket.json"),
        r#"{"format":"pacs-mirror/bucket/1","layout":[],"created_by":"e2e","created_at_ms":1}"#,
    )
    .expect("descriptor");
    let missing = dir.path().join("no-such-bucket");
    for (folder, message) in [
        (&missing, format!("{}: no such folder", url(&missing))),
        (
            &empty,
            format!(
                "{}: holds nothing (no pacs-mirror bucket there: check the URL)",
                url(&empty)
            ),
        ),
        (
            &other,
            format!(
                "{}: not a pacs-mirror bucket (no descriptor pacs-mirror-bucket.json, no study manifests, no objects/): it holds photos/",
                url(&other)
            ),
        ),
        (
            &fresh,
            format!(
                "nothing to reindex: {} holds no study manifest (0 object(s) that no manifest names)",
                url(&fresh)
            ),
        ),
    ] {
        let data = dir.path().join("data");
        let mut cfg = AgentConfig::new(&data);
        cfg.extra_toml = format!(
            "\n[[target]]\ntype = \"object_store\"\nname = \"backup\"\nurl = \"{}\"\n",
            url(folder)
        );
        let config = dir.path().join("agent.toml");
        std::fs::write(&config, cfg.to_toml()).expect("config");
        let out = run(
            Command::new(bin())
                .args(["reindex", "--from", "backup", "--config"])
                .arg(&config),
            Duration::from_secs(60),
        );
        assert_eq!(out.status.code(), Some(1), "{}", out.all());
        assert!(
            out.stderr.contains(&format!("error: {message}\n")),
            "expected {message:?} in:\n{}",
            out.all()
        );
        assert!(out.stdout.trim().is_empty(), "no report: {}", out.stdout);
        assert!(!missing.exists(), "reindex created {}", missing.display());
    }
}

/// On S3, a prefix with nothing under it (a typo) is refused too.
#[test]
fn restore_from_an_s3_prefix_that_holds_nothing_fails() {
    let dir = tempdir();
    let s3 = S3Server::start(&dir.path().join("s3"));
    let from = format!("s3://{BUCKET}/no-such-prefix");
    let opts = [
        format!("endpoint={}", s3.endpoint()),
        "allow_http=true".into(),
        "region=us-east-1".into(),
        "access_key_id=test".into(),
        "secret_access_key=test".into(),
        "virtual_hosted_style_request=false".into(),
    ];
    let args: Vec<&str> = opts
        .iter()
        .flat_map(|o| ["--store-option", o.as_str()])
        .collect();
    refused(
        &from,
        &args,
        &format!("{from}: holds nothing (no pacs-mirror bucket there: check the URL)"),
    );
}
