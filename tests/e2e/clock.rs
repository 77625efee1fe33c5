//! The wall clock jumping by hours (issue 20, test catalogue T36): retries
//! keep their backoff. libfaketime moves only the agent's wall clock (its
//! monotonic clock is left alone), from a file the test rewrites while the
//! agent runs.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::*;

fn libfaketime() -> PathBuf {
    let p = PathBuf::from("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1");
    assert!(
        p.is_file(),
        "{} not found: run scripts/test, which installs faketime",
        p.display()
    );
    p
}

fn wait(what: &str, limit: Duration, agent: &Agent, ok: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(
            Instant::now() < deadline,
            "{what}: not within {limit:?}{}",
            agent.log_tail()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn retries_keep_their_backoff_when_the_wall_clock_is_set_back_two_hours() {
    let dir = tempdir();
    let files = synth_small(&dir.path().join("in"), 1, 5, 64);
    let (mirror_port, admin) = (free_port(), free_port());
    let offset = dir.path().join("faketime");
    std::fs::write(&offset, "+0\n").expect("faketime file");
    let mut cfg = AgentConfig::new(&dir.path().join("data"));
    cfg.extra_toml = format!(
        "\n[[remote_device]]\nname = \"mirror\"\n[[remote_device.network_connection]]\nname = \"dicom\"\nhostname = \"127.0.0.1\"\nport = {mirror_port}\n\
         [[remote_device.network_ae]]\nae_title = \"MIRROR\"\nassociation_acceptor = true\nnetwork_connections = [\"dicom\"]\n\
         \n[[target]]\ntype = \"dicom\"\nname = \"mirror\"\nremote_ae = \"MIRROR\"\nretry_initial_secs = 2\nretry_max_secs = 4\ntimeout_secs = 2\n\
         \n[admin]\nlisten = \"127.0.0.1:{admin}\"\n"
    );
    let lib = libfaketime();
    let agent = Agent::start_with_env(
        &cfg,
        &[
            ("LD_PRELOAD", lib.to_str().expect("path")),
            ("FAKETIME_TIMESTAMP_FILE", offset.to_str().expect("path")),
            ("FAKETIME_NO_CACHE", "1"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
    );
    let status =
        || -> Value { serde_json::from_str(&admin_get(admin, "/status")).unwrap_or(Value::Null) };
    // The mirror is down: the objects wait, rescheduled at their backoff.
    store_all_ok(cfg.port, SENDER_AE, &[], &files);
    wait(
        "the mirror found down",
        Duration::from_secs(30),
        &agent,
        || status()["targets"]["mirror"]["circuit_open"] == true,
    );
    // The wall clock is set back two hours.
    std::fs::write(&offset, "-7200\n").expect("faketime file");
    wait(
        "the agent noticed the jump (libfaketime in effect)",
        Duration::from_secs(20),
        &agent,
        || agent.log().contains("the wall clock jumped"),
    );
    // The mirror comes back: the objects go within their backoff, not two
    // hours later.
    let out = dir.path().join("mirror");
    let _mirror = StoreScp::start(mirror_port, "MIRROR", &out, &[]);
    wait(
        "every object delivered",
        Duration::from_secs(30),
        &agent,
        || {
            let t = &status()["targets"]["mirror"];
            t["delivered"] == files.len() as u64 && t["pending"] == 0
        },
    );
    assert_eq!(files_under(&out).len(), files.len());
    agent.stop();
}
