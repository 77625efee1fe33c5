//! Acceptance (on-call issue, 1): a silent source, a stuck queue, a spool
//! running out of room and one calling AE title used from two addresses
//! each send exactly one webhook to a local HTTP receiver, with a clear
//! text, and show in `/metrics` and `pacs-mirror status`. (A failed drill's
//! webhook is tested in `drill.rs`.)

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::access::raw_associate;
use crate::harness::*;

const MIB: u64 = 1 << 20;

fn metric(metrics: &str, line_start: &str) -> Option<u64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
}

#[test]
fn silence_stuck_queue_low_space_and_duplicate_ae_title_alert_once_each() {
    let dir = tempdir();
    let hooks = Hooks::start();
    let admin = free_port();
    let dead_mirror = free_port(); // nothing listens there
    let mut cfg = AgentConfig::new(&dir.path().join("data"));
    cfg.max_bytes = Some(40 * MIB);
    cfg.extra_toml = format!(
        "\n[[remote_device]]\nname = \"ct\"\n[[remote_device.network_ae]]\nae_title = \"CT1\"\nassociation_initiator = true\n\
         \n[[remote_device]]\nname = \"mirror\"\n[[remote_device.network_connection]]\nname = \"dicom\"\nhostname = \"127.0.0.1\"\nport = {dead_mirror}\n\
         [[remote_device.network_ae]]\nae_title = \"DEAD_MIRROR\"\nassociation_acceptor = true\nnetwork_connections = [\"dicom\"]\n\
         \n[[target]]\ntype = \"dicom\"\nname = \"mirror\"\nremote_ae = \"DEAD_MIRROR\"\nretry_initial_secs = 1\nretry_max_secs = 2\ntimeout_secs = 2\n\
         \n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\
         \n[alerts]\nwebhook_url = \"http://127.0.0.1:{}/hook\"\nattempts = 3\ncheck_interval_secs = 1\nqueue_stuck_after_secs = 10\nspool_headroom_min_bytes = {}\n\
         \n[[alerts.silence]]\ncalling_ae = \"CT1\"\nafter_secs = 8\n",
        hooks.port,
        10 * MIB,
    );
    // 70 CT images of about 513 KiB: 35 MiB of the 40 MiB quota, so less
    // than 10 MiB is left, yet every store succeeds (the alert comes before
    // A700). Made before the agent starts: silence counts from its start.
    let files = synth(
        &dir.path().join("in"),
        &["--studies", "2", "--instances-per-series", "35"],
    );
    let agent = Agent::start(&cfg);
    let get = |path: &str| admin_get(admin, path);
    let store_started_ms = unix_ms();
    store_all_ok(cfg.port, "CT1", &[], &files);
    let stored_ms = unix_ms();
    // The same title from another address.
    assert_eq!(
        raw_associate("127.0.0.2", cfg.port, "CT1", AGENT_AE),
        "ACCEPT"
    );

    let want = [
        "source_silent",
        "queue_stuck",
        "circuit_open",
        "spool_low_space",
        "duplicate_ae_title",
    ];
    let mut got: Vec<Value> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        got.extend(hooks.take());
        let kinds: Vec<&str> = got.iter().filter_map(|v| v["kind"].as_str()).collect();
        if want.iter().all(|k| kinds.contains(k)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "webhooks so far: {kinds:?}\n{}",
            agent.log_tail()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // A few more checks: nothing is repeated while it holds.
    std::thread::sleep(Duration::from_secs(4));
    got.extend(hooks.take());
    let mut by_kind: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for v in &got {
        by_kind
            .entry(v["kind"].as_str().unwrap_or("?").to_string())
            .or_default()
            .push(v.clone());
    }
    for k in want {
        assert_eq!(
            by_kind.get(k).map_or(0, Vec::len),
            1,
            "exactly one {k} webhook: {by_kind:#?}"
        );
    }
    assert_eq!(
        by_kind.keys().cloned().collect::<Vec<_>>(),
        {
            let mut w: Vec<String> = want.iter().map(|s| s.to_string()).collect();
            w.sort();
            w
        },
        "no other alert: {by_kind:#?}"
    );
    for v in &got {
        eprintln!("webhook: {}", v["text"]);
    }
    let text = |k: &str| by_kind[k][0]["text"].as_str().unwrap_or("").to_string();
    let subject = |k: &str| by_kind[k][0]["subject"].as_str().unwrap_or("").to_string();
    assert_eq!(subject("source_silent"), "CT1");
    // Silence is measured from the last store: more than 8 s after it, and
    // raised within a few checks of that.
    let silent_at = by_kind["source_silent"][0]["at_ms"].as_u64().unwrap_or(0);
    assert!(
        silent_at >= store_started_ms + 8_000 && silent_at <= stored_ms + 8_000 + 10_000,
        "silence alert at {silent_at}, stores {store_started_ms}..{stored_ms}"
    );
    assert!(
        text("source_silent").starts_with("[pacs-mirror e2e] no images from CT1 for "),
        "{}",
        text("source_silent")
    );
    assert_eq!(subject("duplicate_ae_title"), "CT1");
    let dup = text("duplicate_ae_title");
    assert!(
        dup.contains("127.0.0.1") && dup.contains("127.0.0.2") && dup.contains("CT1"),
        "{dup}"
    );
    assert_eq!(subject("queue_stuck"), "mirror");
    let stuck = text("queue_stuck");
    assert!(
        stuck.contains("target mirror: nothing delivered for") && stuck.contains(" objects ("),
        "{stuck}"
    );
    assert_eq!(subject("circuit_open"), "mirror");
    assert!(text("circuit_open").contains("unreachable"));
    assert_eq!(subject("spool_low_space"), "spool");
    assert!(
        text("spool_low_space").contains("before stores are refused with A700"),
        "{}",
        text("spool_low_space")
    );

    // The matching metrics.
    let m = get("/metrics");
    for k in want {
        let subject = by_kind[k][0]["subject"].as_str().unwrap_or("");
        assert_eq!(
            metric(
                &m,
                &format!("pacs_mirror_alert_firing{{kind=\"{k}\",subject=\"{subject}\"}}")
            ),
            Some(1),
            "{k}: {m}"
        );
    }
    assert_eq!(
        metric(&m, "pacs_mirror_source_addresses{calling_ae=\"CT1\"}"),
        Some(2),
        "{m}"
    );
    let silence = metric(&m, "pacs_mirror_source_silence_seconds{calling_ae=\"CT1\"}");
    assert!(silence.is_some_and(|s| s >= 8), "{m}");
    let headroom = metric(&m, "pacs_mirror_spool_headroom_bytes").expect("headroom gauge");
    let spool = metric(&m, "pacs_mirror_spool_bytes").expect("spool gauge");
    assert_eq!(headroom, 40 * MIB - spool, "headroom = quota - spool");
    assert!(headroom < 10 * MIB);
    assert!(
        metric(
            &m,
            "pacs_mirror_replication_oldest_pending_age_seconds{target=\"mirror\"}"
        )
        .is_some_and(|a| a > 3),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "pacs_mirror_alerts_raised_total{kind=\"source_silent\"}"
        ),
        Some(1)
    );

    // `pacs-mirror status` lists what fires.
    let status = run(
        Command::new(bin())
            .args(["status", "--config"])
            .arg(&agent.config_path),
        Duration::from_secs(30),
    );
    for k in want {
        assert!(
            status.stdout.contains(&format!("ALERT {k} ")),
            "{k}: {}",
            status.stdout
        );
    }

    // CT1 sends again: the silence clears (logged, no webhook), the rest
    // still holds and is not repeated.
    store_all_ok(cfg.port, "CT1", &[], &files[..1]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(
        &get("/metrics"),
        "pacs_mirror_alert_firing{kind=\"source_silent\",subject=\"CT1\"}",
    )
    .is_some()
    {
        assert!(Instant::now() < deadline, "silence never cleared");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    assert!(hooks.take().is_empty(), "no webhook on clearing");
    assert!(
        agent.log().contains("alert cleared"),
        "{}",
        agent.log_tail()
    );

    // A restart does not raise again what still holds: the firing set is
    // kept in the index (the stuck queue waits for its threshold again).
    agent.stop();
    let agent = Agent::start(&cfg);
    let get = |path: &str| admin_get(admin, path);
    std::thread::sleep(Duration::from_secs(6));
    let again: Vec<String> = hooks
        .take()
        .iter()
        .filter_map(|v| v["kind"].as_str().map(str::to_string))
        .collect();
    assert!(
        !again
            .iter()
            .any(|k| k == "spool_low_space" || k == "queue_stuck"),
        "raised again after a restart: {again:?}\n{}",
        agent.log_tail()
    );
    let m = get("/metrics");
    for (k, subject) in [("spool_low_space", "spool"), ("queue_stuck", "mirror")] {
        assert_eq!(
            metric(
                &m,
                &format!("pacs_mirror_alert_firing{{kind=\"{k}\",subject=\"{subject}\"}}")
            ),
            Some(1),
            "{k} still firing after the restart: {m}"
        );
    }
}
