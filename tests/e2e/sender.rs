//! Issue 17: the DICOM sender spreads a backlog over several associations
//! (one study over more than one), keeps each open claim after claim, and
//! backs off when the mirror says it is busy: a pynetdicom mirror that
//! admits at most 2 associations rejects the rest as "local limit exceeded"
//! (transient); nothing is dead-lettered, everything arrives byte-exact, and
//! the agent's limit settles at what the mirror admits.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::*;

struct Peer(std::process::Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn status(admin: u16) -> Value {
    serde_json::from_str(&admin_get(admin, "/status")).unwrap_or(Value::Null)
}

#[test]
fn a_backlog_spreads_over_associations_and_a_busy_mirror_is_respected() {
    let dir = tempdir();
    let port = free_port();
    let admin = free_port();
    let mut cfg = AgentConfig::new(&dir.path().join("data"));
    cfg.ae_extra = "association_initiator = true\n".into();
    cfg.extra_toml = format!(
        "{}\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n",
        mirror_target_toml(port, "")
    );
    let agent = Agent::start(&cfg);
    // The backlog first, while the mirror is down.
    let files = synth_small(&dir.path().join("in"), 2, 48, 32);
    store_all_ok(cfg.port, SENDER_AE, &[], &files);
    let deadline = Instant::now() + Duration::from_secs(30);
    while status(admin)["targets"]["mirror"]["circuit_open"] != true {
        assert!(Instant::now() < deadline, "the circuit never opened");
        std::thread::sleep(Duration::from_millis(100));
    }

    let received = dir.path().join("received");
    let log = dir.path().join("scp.log");
    let python = pynetdicom_python();
    let _peer = Peer(
        Command::new(&python)
            .arg(peer_script("count_scp.py"))
            .args([&port.to_string(), "MIRROR", "2"])
            .arg(&received)
            .arg(&log)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting the pynetdicom mirror"),
    );
    let n = files.len() as u64;
    let deadline = Instant::now() + Duration::from_secs(120);
    let s = loop {
        let s = status(admin);
        let t = &s["targets"]["mirror"];
        if t["delivered"] == n && t["pending"] == 0 {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "not all delivered: {s:#}\n{}",
            agent.log_tail()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let t = &s["targets"]["mirror"];
    assert_eq!(t["dead_letters"], 0, "{s:#}");
    let limit = t["associations"]["limit"]
        .as_u64()
        .expect("associations in status");
    assert!(
        limit <= 2,
        "the limit stays within what the mirror admits: {t}"
    );
    assert_eq!(t["associations"]["max"], 16, "{t}");

    // What the mirror saw.
    let events: Vec<Value> = std::fs::read_to_string(&log)
        .expect("the mirror's log")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let stores: Vec<&Value> = events.iter().filter(|e| e["event"] == "store").collect();
    let rejected = events.iter().filter(|e| e["event"] == "rejected").count();
    let most_open = events
        .iter()
        .filter_map(|e| e["open"].as_u64())
        .max()
        .unwrap_or(0);
    assert_eq!(most_open, 2, "two associations at once: {events:?}");
    assert!(
        rejected >= 1,
        "the agent started with more associations than the mirror admits, so it was told so"
    );
    // Every object once (the busy rejections never made one fail), byte-exact.
    let mut by_sop: HashMap<String, &Value> = HashMap::new();
    for e in &stores {
        by_sop.insert(e["sop"].as_str().expect("sop").to_string(), *e);
    }
    assert_eq!(by_sop.len(), files.len(), "{} stores", stores.len());
    for f in &files {
        let (meta, dataset) = raw_info(f);
        let e = by_sop
            .get(&meta.sop_instance_uid)
            .unwrap_or_else(|| panic!("{} never arrived", meta.sop_instance_uid));
        let got = std::fs::read(received.join(e["file"].as_str().expect("file"))).expect("read");
        assert!(got == dataset, "{}: differs", meta.sop_instance_uid);
    }
    // One study over more than one association, and associations that
    // carried more than one claim's worth (kept open between claims).
    let mut per_study: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    let mut per_assoc: HashMap<u64, usize> = HashMap::new();
    for e in &stores {
        let a = e["assoc"].as_u64().expect("assoc");
        per_study
            .entry(e["study"].as_str().expect("study").to_string())
            .or_default()
            .insert(a);
        *per_assoc.entry(a).or_default() += 1;
    }
    assert!(
        per_study.values().any(|a| a.len() >= 2),
        "no study went over two associations: {per_study:?}"
    );
    assert!(
        per_assoc.values().any(|&k| k > 16),
        "no association carried more than one claim (16): {per_assoc:?}"
    );
    let log = agent.log();
    assert!(!log.contains("dead-letter list"), "{log}");
    agent.stop();
}
