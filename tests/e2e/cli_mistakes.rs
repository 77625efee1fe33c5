//! A CLI that never lets a mistake pass as success (issue 18, CLI part):
//! a start that fails on a port in use leaves no data folder behind and
//! says its cause once, in a plain log (no colour codes when stderr is not
//! a terminal); the embedded-default notice is for `run` only; `drills`
//! prints times in ISO 8601.

use std::process::Command;
use std::time::Duration;

use crate::harness::*;

#[test]
fn a_start_on_a_port_in_use_creates_nothing_and_says_why_once_in_plain_text() {
    let dir = tempdir();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port to take");
    let port = taken.local_addr().expect("its address").port();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[device]\nname = \"t\"\ndata_dir = \"./relative-data\"\n\
             \n[[device.network_connection]]\nname = \"dicom\"\nhostname = \"127.0.0.1\"\nport = {port}\n\
             \n[[device.network_ae]]\nae_title = \"PACS_MIRROR\"\nnetwork_connections = [\"dicom\"]\naccept_any_calling_ae = true\n"
        ),
    )
    .expect("config");
    let out = run(
        Command::new(bin())
            .current_dir(dir.path())
            .env_remove("NO_COLOR")
            .args(["run", "--config"])
            .arg(&config),
        Duration::from_secs(30),
    );
    assert!(!out.status.success(), "{}", out.all());
    assert!(
        !dir.path().join("relative-data").exists(),
        "a failed start created its data folder: {}",
        out.all()
    );
    let want = format!("cannot listen on 127.0.0.1:{port}");
    assert_eq!(out.stderr.matches(&want).count(), 1, "{}", out.stderr);
    assert_eq!(
        out.stderr.matches("Address already in use").count(),
        1,
        "the cause twice: {}",
        out.stderr
    );
    assert!(
        !out.stderr.contains('\u{1b}'),
        "colour codes in a log: {:?}",
        out.stderr
    );
    drop(taken);
}

#[test]
fn only_run_announces_the_embedded_default() {
    let dir = tempdir();
    let out = run(
        Command::new(bin())
            .current_dir(dir.path())
            .args(["index", "stats"])
            .env("RUST_LOG", "info"),
        Duration::from_secs(30),
    );
    // It ran on the default (and said what is missing), without the notice
    // and without creating the default's data folder.
    assert_eq!(out.status.code(), Some(1), "{}", out.all());
    assert!(
        out.stderr.contains("no index at ./pacs-mirror-data/index"),
        "{}",
        out.all()
    );
    assert!(!out.stderr.contains("embedded default"), "{}", out.all());
    assert!(!dir.path().join("pacs-mirror-data").exists());
}
