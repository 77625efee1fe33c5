//! Failing disks (issue 20, catalogue T27): the agent's data directory is
//! the power-cut filesystem ([`pacs_mirror_powercut`]), which fails one
//! flush on command: EIO on a spool file's fdatasync, on a spool
//! directory's fsync, on the index's flush, or ENOSPC on the index's
//! writes. After such a failure Linux may have dropped the data the flush
//! covered (the simulator does: it never becomes durable), so the agent
//! must not retry the flush and trust it. Each test checks: the store the
//! failure hit is refused (A700); the store is latched: every later store
//! is refused with A700 although the disk works again; `status`,
//! `/status` and the `storage_unhealthy` alert (webhook) say what failed
//! and what to do; then the power is cut, and what the disk holds has
//! every acknowledged instance, byte-exact, and not the refused one; and
//! after a restart (start-up recovery re-verifies) the agent is healthy and
//! stores again.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pacs_mirror_powercut::{Fault, FaultOn, FsError, Mounted};
use rand::SeedableRng;
use serde_json::Value;

use crate::harness::*;

/// An agent whose data directory is on the power-cut filesystem, with its
/// admin endpoint and alerts to a webhook receiver; 12 small files to send.
struct Rig {
    /// Removed (with the mount point under it) when the rig goes.
    _dir: tempfile::TempDir,
    mnt: PathBuf,
    conf: PathBuf,
    fs: Mounted,
    hooks: Hooks,
    cfg: AgentConfig,
    agent: Agent,
    config_path: PathBuf,
    files: Vec<PathBuf>,
}

impl Rig {
    fn start() -> Rig {
        let dir = tempdir();
        let mnt = dir.path().join("mnt");
        let conf = dir.path().join("conf");
        for d in [&mnt, &conf] {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        let fs = Mounted::mount_new(&mnt)
            .expect("mount the power-cut filesystem (needs /dev/fuse and root)");
        let hooks = Hooks::start();
        let admin = free_port();
        let mut cfg = AgentConfig::new(&mnt.join("data"));
        cfg.extra_toml = format!(
            "\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\
             \n[alerts]\nwebhook_url = \"http://127.0.0.1:{}/hook\"\nattempts = 3\ncheck_interval_secs = 1\n",
            hooks.port
        );
        let files = synth_small(&dir.path().join("in"), 1, 12, 32);
        let agent = Agent::start_with_config_dir(&cfg, &conf);
        let config_path = agent.config_path.clone();
        Rig {
            _dir: dir,
            mnt,
            conf,
            fs,
            hooks,
            cfg,
            agent,
            config_path,
            files,
        }
    }
}

/// Inject one fault and send `file`: the store it hits is answered A700.
fn refused_once(fs: &Mounted, port: u16, file: &Path, on: FaultOn, under: &str, error: FsError) {
    let id = fs.inject(Fault {
        on,
        under: under.into(),
        error,
        times: Some(1),
    });
    let hit = storescu(port, SENDER_AE, &[], &[file.to_path_buf()]);
    assert_eq!(hit.responses.len(), 1, "{}", hit.log());
    assert_eq!(
        hit.responses[0].1,
        A700,
        "the store {on:?} {error:?} hit\n{}",
        hit.log()
    );
    assert_eq!(fs.fired(id), 1, "the fault fired once");
}

/// The unhealthy-store scenario for one injected fault; `what` is the
/// latch's name of the failed flush, `error` a word of its error text.
fn a_failed_flush_latches_the_store(
    on: FaultOn,
    under: &str,
    fs_error: FsError,
    what: &[&str],
    error: &str,
) {
    let rig = Rig::start();
    let (mnt, conf, hooks) = (&rig.mnt, &rig.conf, &rig.hooks);
    let (cfg, config_path, files) = (&rig.cfg, &rig.config_path, &rig.files);
    let (fs, agent) = (rig.fs, rig.agent);

    // Four acknowledged before the disk fails.
    store_all_ok(cfg.port, SENDER_AE, &[], &files[..4]);
    refused_once(&fs, cfg.port, &files[4], on, under, fs_error);

    // The disk works again, the store stays latched: refused at once, the
    // association kept, nothing written.
    fs.clear_faults();
    let syncs = fs.counters().file_syncs;
    let later = storescu(cfg.port, SENDER_AE, &["--no-halt"], &files[5..8]);
    assert_eq!(
        later
            .responses
            .iter()
            .map(|(_, s)| s.as_str())
            .collect::<Vec<_>>(),
        vec![A700; 3],
        "every later store refused\n{}",
        later.log()
    );
    assert_eq!(
        fs.counters().file_syncs,
        syncs,
        "a latched store flushes nothing"
    );

    // What the operator sees: status, /status, the alert.
    let s = running_status(config_path);
    let latched = &s["storage_unhealthy"];
    let latched_what = latched["what"].as_str().unwrap_or("");
    assert!(what.contains(&latched_what), "latched for {what:?}: {s}");
    assert!(
        latched["error"].as_str().unwrap_or("").contains(error),
        "the error as the system gave it: {latched}"
    );
    let text = run(
        std::process::Command::new(bin())
            .args(["status", "--config"])
            .arg(config_path),
        Duration::from_secs(30),
    );
    assert!(
        text.stdout.contains("STORAGE UNHEALTHY") && text.stdout.contains(latched_what),
        "status says it: {}",
        text.stdout
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut alert: Option<Value> = None;
    while alert.is_none() && Instant::now() < deadline {
        alert = hooks
            .take()
            .into_iter()
            .find(|v| v["kind"] == "storage_unhealthy");
        std::thread::sleep(Duration::from_millis(200));
    }
    let alert = alert.expect("the storage_unhealthy alert reached the webhook");
    let alert_text = alert.to_string();
    let s = running_status(config_path);
    assert!(
        s["alerts"]
            .as_array()
            .is_some_and(|a| a.iter().any(|f| f["kind"] == "storage_unhealthy")),
        "/status lists the alert firing: {s}"
    );
    assert!(
        alert_text.contains(latched_what)
            && alert_text.contains("restart")
            && alert_text.contains("disk-full.md"),
        "the alert says what failed and what to do: {alert_text}"
    );

    // Power cut: the disk holds every acknowledged instance, byte-exact
    // (before any recovery of the agent's).
    let mut rng = rand::rngs::StdRng::seed_from_u64(20);
    let (survivor, _) = fs.power_cut(&mut rng);
    agent.crash();
    fs.unmount();
    let fs = Mounted::mount(survivor, mnt).expect("remount what the cut left");
    let rows = index_dump(config_path);
    let want: Vec<Expect> = files.iter().map(|f| Expect::of(f)).collect();
    let acked: Vec<&Expect> = want[..4].iter().collect();
    check_acked(cfg, &rows, &acked, "after the cut");

    // A restart re-verifies: nothing half-written is indexed (the refused
    // instance is gone, or kept only with its whole file), the acknowledged
    // ones are all there, the store is healthy again and stores work.
    let agent = Agent::start_with_config_dir(cfg, conf);
    let s = running_status(config_path);
    assert!(
        s["storage_unhealthy"].is_null(),
        "healthy after the restart: {s}"
    );
    agent.stop();
    let rows = index_dump(config_path);
    check_acked(cfg, &rows, &acked, "after recovery");
    for e in &want[4..8] {
        if let Some(r) = rows.iter().find(|r| r.sop_instance_uid == e.uid) {
            check_spool_file(cfg, r, Some(&e.dataset));
        }
    }
    let agent = Agent::start_with_config_dir(cfg, conf);
    store_all_ok(cfg.port, SENDER_AE, &[], &files[4..]);
    agent.stop();
    let rows = index_dump(config_path);
    check_acked(
        cfg,
        &rows,
        &want.iter().collect::<Vec<_>>(),
        "after the restart",
    );
    fs.unmount();
}

#[test]
fn eio_on_a_spool_file_fdatasync_latches_the_store() {
    a_failed_flush_latches_the_store(
        FaultOn::FileSync,
        "data/spool/objects",
        FsError::Io,
        &["spool file fdatasync"],
        "Input/output error",
    );
}

#[test]
fn eio_on_a_spool_directory_fsync_latches_the_store() {
    a_failed_flush_latches_the_store(
        FaultOn::DirSync,
        "data/spool/objects",
        FsError::Io,
        &["spool directory fsync"],
        "Input/output error",
    );
}

#[test]
fn eio_on_the_index_flush_latches_the_store() {
    a_failed_flush_latches_the_store(
        FaultOn::FileSync,
        "data/index",
        FsError::Io,
        &["index flush", "index write"],
        "Input/output error",
    );
}

#[test]
fn enospc_in_the_index_latches_the_store() {
    a_failed_flush_latches_the_store(
        FaultOn::Write,
        "data/index",
        FsError::NoSpace,
        &["index flush", "index write"],
        "No space left on device",
    );
}

/// ENOSPC from a spool file's fdatasync (delayed allocation on a full disk)
/// fails that store (A700) but does not latch: the data is still in the
/// page cache, freeing space is the fix, and the very next store, the
/// refused one re-sent included, succeeds.
#[test]
fn enospc_at_a_spool_file_fdatasync_fails_that_store_without_latching() {
    let rig = Rig::start();
    let (cfg, files) = (&rig.cfg, &rig.files);
    store_all_ok(cfg.port, SENDER_AE, &[], &files[..4]);
    refused_once(
        &rig.fs,
        cfg.port,
        &files[4],
        FaultOn::FileSync,
        "data/spool/objects",
        FsError::NoSpace,
    );
    store_all_ok(cfg.port, SENDER_AE, &[], &files[4..]);
    let s = running_status(&rig.config_path);
    assert!(s["storage_unhealthy"].is_null(), "not latched: {s}");
    assert_eq!(s["ingest"]["failed"], 1, "{s}");
    assert_eq!(s["ingest"]["stored"], 12, "{s}");
    rig.agent.stop();
    let rows = index_dump(&rig.config_path);
    let want: Vec<Expect> = files.iter().map(|f| Expect::of(f)).collect();
    check_acked(
        cfg,
        &rows,
        &want.iter().collect::<Vec<_>>(),
        "after the stop",
    );
}
