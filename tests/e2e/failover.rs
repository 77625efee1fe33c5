//! `failover check` against a real Orthanc mirror: complete after
//! replication (exit 0); a study deleted from the mirror is named with its
//! counts (exit 1) and `--repair` brings it back through the running agent;
//! with the agent stopped the index is read directly and a partly missing
//! study names exactly the lost instance; a dead mirror is exit 2 with the
//! reason.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::*;
use crate::s3::wait_target;

/// `failover check --json`: (exit code, report).
fn check(config: &Path, extra: &[&str]) -> (i32, Value) {
    let out = run(
        Command::new(bin())
            .args([
                "failover", "check", "--json", "--target", "mirror", "--config",
            ])
            .arg(config)
            .args(extra),
        Duration::from_secs(120),
    );
    let v: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("failover check JSON ({e}): {}", out.all()));
    (out.status.code().unwrap_or(-1), v)
}

fn gaps(r: &Value) -> Vec<Value> {
    r["gaps"].as_array().cloned().unwrap_or_default()
}

fn missing_uids(gap: &Value) -> Vec<String> {
    let mut v: Vec<String> = gap["missing"]
        .as_array()
        .expect("missing")
        .iter()
        .map(|m| m["sop_instance_uid"].as_str().expect("uid").to_string())
        .collect();
    v.sort();
    v
}

/// Wait until `failover check` says complete (the agent delivers re-queued
/// objects on its own schedule).
fn wait_complete(config: &Path, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let (code, r) = check(config, &[]);
        if code == 0 {
            return r;
        }
        assert!(Instant::now() < deadline, "never complete again: {r}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn failover_check_finds_gaps_repairs_them_and_reports_a_dead_mirror() {
    let dir = tempdir();
    let agent_port = free_port();
    let mut orthanc = Orthanc::start_knowing(
        &dir.path().join("orthanc"),
        "MIRROR",
        vec![OrthancModality::local("agent", AGENT_AE, agent_port)],
    );
    let mut cfg = AgentConfig::new(&dir.path().join("data"));
    cfg.port = agent_port;
    cfg.ae_extra = "association_initiator = true\n".into();
    cfg.extra_toml = format!(
        "{}\n[admin]\nlisten = \"127.0.0.1:{}\"\n",
        mirror_target_toml(orthanc.dicom_port, ""),
        free_port()
    );
    let files = synth_small(&dir.path().join("in"), 3, 4, 64);
    assert_eq!(files.len(), 12);
    let sent: Vec<Sent> = files.iter().map(|f| sent_info(f)).collect();
    let agent = Agent::start(&cfg);
    let config = agent.config_path.clone();
    store_all_ok(cfg.port, SENDER_AE, &[], &files);
    wait_target(
        &config,
        "mirror",
        "delivered",
        Duration::from_secs(60),
        |s| s["pending"] == 0 && s["delivered"] == 12,
    );

    // 1. Complete (checked by the running agent: it holds the index).
    let (code, r) = check(&config, &[]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["complete"], true, "{r}");
    assert_eq!(r["studies_checked"], 3, "{r}");
    assert_eq!(r["instances_checked"], 12, "{r}");
    assert_eq!(r["queued"], 0, "{r}");
    assert!(gaps(&r).is_empty(), "{r}");
    let text = run(
        Command::new(bin())
            .args(["failover", "check", "--target", "mirror", "--config"])
            .arg(&config),
        Duration::from_secs(60),
    );
    assert!(text.status.success(), "{}", text.all());
    assert!(text.stdout.contains(": complete;"), "{}", text.stdout);
    // A window after every study: nothing to check, complete; before: all.
    let (code, r) = check(&config, &["--since", "2999-01-01"]);
    assert_eq!((code, r["studies_checked"].as_u64()), (0, Some(0)), "{r}");
    let (code, r) = check(&config, &["--since", "2000-01-01"]);
    assert_eq!((code, r["studies_checked"].as_u64()), (0, Some(3)), "{r}");

    // 2. One study deleted from the mirror: that study, 4 expected, 0 found.
    let gone = sent[4].study_instance_uid.clone();
    let gone_sops: Vec<String> = {
        let mut v: Vec<String> = sent
            .iter()
            .filter(|s| s.study_instance_uid == gone)
            .map(|s| s.sop_instance_uid.clone())
            .collect();
        v.sort();
        v
    };
    assert_eq!(gone_sops.len(), 4);
    orthanc.delete_uid(&gone);
    assert_eq!(orthanc.count_instances(), 8);
    let (code, r) = check(&config, &[]);
    assert_eq!(code, 1, "{r}");
    assert_eq!(r["complete"], false, "{r}");
    let g = gaps(&r);
    assert_eq!(g.len(), 1, "{r}");
    assert_eq!(g[0]["study_instance_uid"], gone.as_str(), "{r}");
    assert_eq!(g[0]["expected"], 4, "{r}");
    assert_eq!(g[0]["found"], 0, "{r}");
    assert_eq!(g[0]["absent"], true, "{r}");
    assert_eq!(missing_uids(&g[0]), gone_sops, "{r}");
    for m in g[0]["missing"].as_array().expect("missing") {
        assert_eq!(m["state"], "delivered", "{m}");
        assert_eq!(m["in_spool"], true, "{m}");
    }
    assert_eq!(g[0]["patient_id"], sent[4].patient_id.as_str(), "{r}");
    assert_eq!(g[0]["study_date"].as_str().map(str::len), Some(8), "{r}");
    let text = run(
        Command::new(bin())
            .args(["failover", "check", "--target", "mirror", "--config"])
            .arg(&config),
        Duration::from_secs(60),
    );
    assert_eq!(text.status.code(), Some(1), "{}", text.all());
    assert!(text.stdout.contains("INCOMPLETE"), "{}", text.stdout);
    assert!(
        text.stdout
            .contains(&format!("GAP study {gone} patient {}", sent[4].patient_id)),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout.contains("4 expected, absent from the mirror"),
        "{}",
        text.stdout
    );

    // 3. --repair queues exactly those 4; the running agent delivers them.
    // Two repairs at once: the agent runs them one after the other, and the
    // second queues nothing again (each is still queued, in flight, or on
    // the mirror by the time it looks).
    let mut both = std::thread::scope(|s| {
        let a = s.spawn(|| check(&config, &["--repair"]));
        let b = s.spawn(|| check(&config, &["--repair"]));
        vec![a.join().expect("repair"), b.join().expect("repair")]
    });
    both.sort_by_key(|(_, r)| std::cmp::Reverse(r["repair"]["requeued"].as_u64()));
    let (second_code, second) = both.pop().expect("two reports");
    let (code, r) = both.pop().expect("two reports");
    assert_eq!(code, 1, "still incomplete when the repair is queued: {r}");
    assert_eq!(r["repair"]["requeued"], 4, "{r}");
    assert_eq!(r["repair"]["already_queued"], 0, "{r}");
    assert_eq!(
        second["repair"]["requeued"], 0,
        "the second repair queued something again: {second}"
    );
    assert!(second_code == 0 || second_code == 1, "{second}");
    assert!(
        r["repair"]["not_in_spool"]
            .as_array()
            .is_some_and(Vec::is_empty),
        "{r}"
    );
    let r = wait_complete(&config, Duration::from_secs(60));
    assert_eq!(r["instances_checked"], 12, "{r}");
    assert_eq!(orthanc.count_instances(), 12);
    for s in sent.iter().filter(|s| s.study_instance_uid == gone) {
        let back = orthanc.instance_file(&s.sop_instance_uid);
        assert_eq!(
            blake3_hex(dataset_bytes(&back)),
            s.blake3,
            "{}",
            s.sop_instance_uid
        );
    }

    // 4. Agent stopped: the index is read directly. One instance lost:
    // the short study is listed at IMAGE level and exactly it is named.
    agent.stop();
    let lost = &sent[9];
    orthanc.delete_uid(&lost.sop_instance_uid);
    let (code, r) = check(&config, &[]);
    assert_eq!(code, 1, "{r}");
    let g = gaps(&r);
    assert_eq!(g.len(), 1, "{r}");
    assert_eq!(g[0]["study_instance_uid"], lost.study_instance_uid.as_str());
    assert_eq!(
        (g[0]["expected"].as_u64(), g[0]["found"].as_u64()),
        (Some(4), Some(3)),
        "{r}"
    );
    assert_eq!(g[0]["absent"], false);
    assert_eq!(
        missing_uids(&g[0]),
        vec![lost.sop_instance_uid.clone()],
        "{r}"
    );
    let (code, r) = check(&config, &["--repair"]);
    assert_eq!(code, 1, "{r}");
    assert_eq!(r["repair"]["requeued"], 1, "{r}");
    assert_eq!(r["queued"], 1, "queued for the next start: {r}");
    // Asked again before delivery: still missing, now "queued".
    let (code, r) = check(&config, &[]);
    assert_eq!(code, 1, "{r}");
    assert_eq!(gaps(&r)[0]["missing"][0]["state"], "queued", "{r}");
    let agent = Agent::start(&cfg);
    let r = wait_complete(&config, Duration::from_secs(60));
    assert_eq!(r["queued"], 0, "{r}");

    // 5. A dead mirror: exit 2, with the reason.
    orthanc.stop();
    let (code, r) = check(&config, &[]);
    assert_eq!(code, 2, "{r}");
    assert_eq!(r["complete"], false, "{r}");
    let why = r["error"].as_str().unwrap_or_default();
    assert!(why.contains("refused") || why.contains("connect"), "{r}");
    let text = run(
        Command::new(bin())
            .args(["failover", "check", "--target", "mirror", "--config"])
            .arg(&config),
        Duration::from_secs(60),
    );
    assert_eq!(text.status.code(), Some(2), "{}", text.all());
    assert!(
        text.stdout.contains("COULD NOT ASK THE MIRROR"),
        "{}",
        text.stdout
    );
    // A target that does not exist: could not run, exit 2.
    let out = run(
        Command::new(bin())
            .args(["failover", "check", "--target", "nope", "--config"])
            .arg(&config),
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(2), "{}", out.all());
    assert!(
        out.stderr.contains("no target named \"nope\""),
        "{}",
        out.all()
    );
    agent.stop();
}
