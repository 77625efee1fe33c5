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

/// Local time of day `offset_secs` from now, `HH:MM:SS` (as the agent
/// reads its schedule).
fn local_time(offset_secs: i64) -> String {
    let out = Command::new("date")
        .arg("-d")
        .arg(format!("{offset_secs:+} seconds"))
        .arg("+%H:%M:%S")
        .output()
        .expect("date");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Bytes of the files under `dir`.
fn bytes_under(dir: &std::path::Path) -> u64 {
    files_under(dir)
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum()
}

/// Acceptance 2 of issue 17: with `max_bandwidth` and a schedule window
/// that ends 30 s after the backlog starts to drain, DCMTK's storescp
/// receives at the window's cap (±5 % over 25 s), then at the cap outside
/// it from the boundary on.
#[test]
fn max_bandwidth_holds_the_rate_and_changes_at_the_schedule_boundary() {
    let dir = tempdir();
    let port = free_port();
    let admin = free_port();
    let files = synth(
        &dir.path().join("in"),
        &[
            "--studies",
            "1",
            "--instances-per-series",
            "220",
            "--rows",
            "512",
            "--columns",
            "512",
        ],
    );
    let total: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).expect("size").len())
        .sum();
    assert!(total > 110_000_000, "{total} bytes of input");
    let mut cfg = AgentConfig::new(&dir.path().join("data"));
    cfg.ae_extra = "association_initiator = true\n".into();
    // The window is set to start a minute ago and to end 40 s from now:
    // about 30 s after the mirror appears (ingest first, below).
    let (from, to) = (local_time(-60), local_time(40));
    cfg.extra_toml = format!(
        "{}max_bandwidth = \"4 MB/s\"\n\
         [[target.bandwidth_schedule]]\nfrom = \"{from}\"\nto = \"{to}\"\nmax_bandwidth = \"2 MB/s\"\n\
         \n[admin]\nlisten = \"127.0.0.1:{admin}\"\n",
        mirror_target_toml(port, "")
    );
    let started = Instant::now();
    let agent = Agent::start(&cfg);
    store_all_ok(cfg.port, SENDER_AE, &[], &files);
    let s = status(admin);
    assert_eq!(
        s["targets"]["mirror"]["max_bandwidth_bytes_per_sec"], 2_000_000,
        "the window's cap is in force: {s:#}"
    );
    let ingest = started.elapsed();
    assert!(ingest < Duration::from_secs(30), "ingest took {ingest:?}");
    let boundary = started + Duration::from_secs(40);

    let received = dir.path().join("received");
    std::fs::create_dir_all(&received).expect("mkdir");
    let mut storescp = StoreScp::start(port, "MIRROR", &received, &["--fork", "+B"]);
    // Received bytes over time, until everything arrived.
    let mut samples: Vec<(f64, u64)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(150);
    loop {
        let b = bytes_under(&received);
        samples.push((started.elapsed().as_secs_f64(), b));
        if b >= total {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not all received: {b} of {total}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    storescp.stop();
    agent.stop();

    let at = |t: f64| {
        samples
            .iter()
            .rfind(|(s, _)| *s <= t)
            .map_or(0, |(_, b)| *b) as f64
    };
    let first = samples
        .iter()
        .find(|(_, b)| *b > 0)
        .map(|(t, _)| *t)
        .expect("something arrived");
    let b = boundary.duration_since(started).as_secs_f64();
    assert!(
        b - first > 27.0,
        "the window had {:.1} s left when sending began",
        b - first
    );
    // The rate received between t1 and t2, within ±5 % of `cap`.
    let rate = |what: &str, t1: f64, t2: f64, cap: f64| {
        let r = (at(t2) - at(t1)) / (t2 - t1);
        eprintln!("{what}: {:.4} MB/s over {:.1} s", r / 1e6, t2 - t1);
        assert!(
            (cap * 0.95..=cap * 1.05).contains(&r),
            "{what}: {:.3} MB/s over {:.1} s, cap {} MB/s",
            r / 1e6,
            t2 - t1,
            cap / 1e6
        );
    };
    // Inside the window, after a second of settling.
    rate("inside the window", first + 1.0, b - 1.0, 2e6);
    // After the boundary: the cap outside it.
    let end = samples.last().map_or(0.0, |(t, _)| *t);
    let (t3, t4) = (b + 1.0, (b + 11.0).min(end - 0.5));
    assert!(t4 - t3 > 5.0, "the backlog ran out too early: {end:.1} s");
    rate("after the boundary", t3, t4, 4e6);
}

/// Acceptance 3 of issue 17: while a backlog of 1200 objects drains (slowly:
/// the link is capped at 1 MB/s), objects that arrive now reach the mirror
/// within seconds, not behind the backlog: every one of 20 arrivals, one
/// every half second, is at DCMTK's storescp within 5 s of its Success.
#[test]
fn new_arrivals_go_before_the_backlog() {
    let dir = tempdir();
    let port = free_port();
    let admin = free_port();
    let mut cfg = AgentConfig::new(&dir.path().join("data"));
    cfg.ae_extra = "association_initiator = true\n".into();
    cfg.extra_toml = format!(
        "{}max_bandwidth = \"1 MB/s\"\nlive_window_secs = 5\n\
         \n[admin]\nlisten = \"127.0.0.1:{admin}\"\n",
        mirror_target_toml(port, "")
    );
    let agent = Agent::start(&cfg);
    let backlog = synth_small(&dir.path().join("backlog"), 12, 100, 96);
    store_all_ok(cfg.port, SENDER_AE, &[], &backlog);
    // Older than the live window: backlog now.
    std::thread::sleep(Duration::from_secs(6));

    let received = dir.path().join("received");
    std::fs::create_dir_all(&received).expect("mkdir");
    let mut storescp = StoreScp::start(port, "MIRROR", &received, &["--fork"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while status(admin)["targets"]["mirror"]["delivered"]
        .as_u64()
        .unwrap_or(0)
        == 0
    {
        assert!(
            Instant::now() < deadline,
            "the backlog never started to drain"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // When each file first appears at the mirror, watched every 20 ms
    // while the arrivals are sent.
    let seen: std::sync::Arc<std::sync::Mutex<HashMap<String, Instant>>> = Default::default();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (seen, stop, received) = (seen.clone(), stop.clone(), received.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let now = Instant::now();
                if let Ok(dir) = std::fs::read_dir(&received) {
                    let mut seen = seen.lock().expect("seen");
                    for e in dir.filter_map(Result::ok) {
                        seen.entry(e.file_name().to_string_lossy().into_owned())
                            .or_insert(now);
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let fresh = synth_small_with(&dir.path().join("fresh"), 1, 20, 96, &["--seed", "17"]);
    let mut sent = Vec::new();
    for f in &fresh {
        store_all_ok(cfg.port, SENDER_AE, &[], std::slice::from_ref(f));
        sent.push((
            read_meta(&std::fs::read(f).expect("read")).sop_instance_uid,
            Instant::now(),
        ));
        std::thread::sleep(Duration::from_millis(500));
    }
    let pending_then = status(admin)["targets"]["mirror"]["pending"]
        .as_u64()
        .unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut lags = Vec::new();
    for (uid, at) in &sent {
        let arrived = loop {
            let hit = seen
                .lock()
                .expect("seen")
                .iter()
                .find(|(name, _)| {
                    // storescp's name: `<modality>.<SOP Instance UID>`
                    // (exactly: "1.2.3.1" must not match "1.2.3.10")
                    name.strip_suffix(uid.as_str())
                        .is_some_and(|head| head.ends_with('.'))
                })
                .map(|(_, t)| *t);
            if let Some(t) = hit {
                break t;
            }
            assert!(Instant::now() < deadline, "{uid} never reached the mirror");
            std::thread::sleep(Duration::from_millis(50));
        };
        lags.push(arrived.saturating_duration_since(*at).as_secs_f64());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    watcher.join().expect("watcher");
    storescp.stop();
    let log: Vec<String> = agent
        .log()
        .lines()
        .filter(|l| {
            l.contains("WARN")
                || l.contains("ERROR")
                || (std::env::var_os("SENDER_DEBUG").is_some()
                    && (l.contains("fewer") || l.contains("association done")))
        })
        .map(str::to_string)
        .collect();
    agent.stop();
    eprintln!("agent warnings: {log:#?}");
    assert!(
        pending_then >= 100,
        "the backlog was still draining when the last arrival came ({pending_then} pending)"
    );
    let worst = lags.iter().copied().fold(0.0, f64::max);
    eprintln!("arrival lags (s, each within 20 ms): {lags:.2?}");
    assert!(worst < 5.0, "an arrival waited {worst:.1} s: {lags:.2?}");
}
