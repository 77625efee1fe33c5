//! Issue 18, acceptance 1: the web console, driven in headless Chromium
//! against a running agent with a dead mirror, a dead letter, a failed drill
//! and a non-conformant object. The DOM shows each where an administrator
//! looks for it; a screenshot of each page is written into
//! `target/console-screenshots/` for review. Also: the admin endpoint
//! refuses a foreign `Host` (DNS rebinding) and forbids scripts; `status`
//! of the stopped agent still tells when each target last got an object.

use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::browser::{Browser, screenshot_dir};
use crate::harness::*;

fn status(admin: u16) -> Value {
    serde_json::from_str(&admin_get(admin, "/status")).unwrap_or(Value::Null)
}

/// Poll `/status` until `ok` holds (60 s).
fn wait_for(admin: u16, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = status(admin);
        if ok(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "never {what}: {s:#}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn firing(s: &Value, kind: &str, subject: &str) -> bool {
    s["alerts"].as_array().is_some_and(|a| {
        a.iter()
            .any(|x| x["kind"] == kind && x["subject"] == subject)
    })
}

/// `drill --json` through the running agent: (exit ok, report).
fn drill(config: &std::path::Path) -> (bool, Value) {
    let out = run(
        Command::new(bin())
            .args(["drill", "--json", "--target", "backup", "--config"])
            .arg(config),
        Duration::from_secs(120),
    );
    let v: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("drill JSON ({e}): {}", out.all()));
    (out.status.success(), v[0].clone())
}

/// A raw GET with the given Host header: (status code, whole answer).
fn raw_get(port: u16, path: &str, host: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect admin");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    let code = answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, answer)
}

#[test]
fn the_console_shows_a_dead_mirror_a_dead_letter_and_a_failed_drill() {
    let dir = tempdir();
    let mirror_port = free_port();
    let admin = free_port();
    let bucket = dir.path().join("bucket");
    let mut cfg = AgentConfig::new(&dir.path().join("data"));
    cfg.ae_extra = "association_initiator = true\n".into();
    cfg.extra_toml = format!(
        "{}refused_attempts = 2\n\
         \n[[target]]\ntype = \"object_store\"\nname = \"backup\"\nurl = \"file://{}\"\n\
         \n[[drill]]\ntarget = \"backup\"\nrandom_studies = 10\nrecovery_time_objective_secs = 5\n\
         \n[alerts]\ncheck_interval_secs = 1\n\
         \n[admin]\nlisten = \"127.0.0.1:{admin}\"\n",
        mirror_target_toml(mirror_port, ""),
        bucket.display()
    );
    // DCMTK storescp as the mirror: no JPEG 2000 accepted (`+B`
    // bit-preserving).
    let storescp = StoreScp::start(mirror_port, "MIRROR", &dir.path().join("received"), &["+B"]);
    let agent = Agent::start(&cfg);

    // Two studies of three, a JPEG 2000 object the mirror has no context
    // for (dead-lettered after two refusals), and one with letters in its
    // Study Instance UID (kept, flagged non-conformant).
    let files = synth_small(&dir.path().join("in"), 2, 3, 32);
    store_all_ok(cfg.port, SENDER_AE, &[], &files);
    let j2k = dir.path().join("j2k.dcm");
    crate::transfer_syntaxes::make_j2k(&corpus_1000()[5], &j2k, "1.2.840.10008.1.2.4.90", false);
    let j2k_uid = read_meta(&std::fs::read(&j2k).expect("read")).sop_instance_uid;
    let prof = crate::transfer_syntaxes::profile(dir.path(), "j2k", "1.2.840.10008.1.2.4.90");
    let prof_s = prof.display().to_string();
    store_all_ok(
        cfg.port,
        SENDER_AE,
        &["-xf", &prof_s, "ONE"],
        std::slice::from_ref(&j2k),
    );
    let odd = dir.path().join("odd.dcm");
    std::fs::copy(&corpus_1000()[6], &odd).expect("copy");
    run_ok(
        Command::new(tool("dcmodify"))
            .args(["-nb", "-m", "(0020,000D)=1.2.826.0.1.abc.7"])
            .arg(&odd),
        Duration::from_secs(30),
    );
    let odd_uid = read_meta(&std::fs::read(&odd).expect("read")).sop_instance_uid;
    store_all_ok(cfg.port, SENDER_AE, &[], std::slice::from_ref(&odd));

    let s = wait_for(admin, "delivered with one dead letter", |s| {
        let m = &s["targets"]["mirror"];
        let b = &s["targets"]["backup"];
        m["pending"] == 0 && m["delivered"] == 7 && m["dead_letters"] == 1 && b["pending"] == 0
    });
    assert_eq!(s["targets"]["backup"]["delivered"], 8, "{s:#}");
    assert!(s["targets"]["mirror"]["lag_ms"].is_u64(), "{s:#}");

    // Drills that pass, then one that finds an object missing from the
    // bucket (its file deleted).
    for _ in 0..3 {
        let (ok, r) = drill(&agent.config_path);
        assert!(ok, "{r}");
        std::thread::sleep(Duration::from_millis(700));
    }
    let gone = blake3_hex(dataset_bytes(&std::fs::read(&files[0]).expect("read")));
    let mut deleted = 0;
    walk(&bucket, &mut |p| {
        if p.to_string_lossy().contains(&gone) {
            std::fs::remove_file(p).expect("deleting from the bucket");
            deleted += 1;
        }
    });
    assert_eq!(deleted, 1, "object {gone} not found once in the bucket");
    let (ok, r) = drill(&agent.config_path);
    assert!(!ok, "a drill with an object gone passed: {r}");
    assert_eq!(r["counts"]["MISSING"], 1, "{r}");

    // The mirror dies; what arrives now waits, and the circuit opens.
    drop(storescp);
    let late = synth_small_with(&dir.path().join("late"), 1, 1, 32, &["--seed", "18"]);
    store_all_ok(cfg.port, SENDER_AE, &[], &late);
    let s = wait_for(admin, "the three alerts", |s| {
        firing(s, "circuit_open", "mirror")
            && firing(s, "dead_letters", "mirror")
            && firing(s, "drill_failed", "backup")
    });
    assert_eq!(s["targets"]["mirror"]["circuit_open"], true, "{s:#}");

    let shots = screenshot_dir();
    let url = |p: &str| format!("http://127.0.0.1:{admin}{p}");
    let browser = Browser::start();
    browser.window_size(1400, 2400);

    // The overview.
    browser.goto(&url("/"));
    assert!(
        browser.title().starts_with("Overview"),
        "{}",
        browser.title()
    );
    let verdict = browser.find("#health .verdict").text();
    assert!(verdict.contains("alert(s) firing"), "{verdict}");
    for (kind, subject, runbook) in [
        ("circuit_open", "mirror", "/runbooks/stuck-queue"),
        ("dead_letters", "mirror", "/runbooks/stuck-queue"),
        ("drill_failed", "backup", "/runbooks/drill-failed"),
    ] {
        let li = browser.find(&format!(
            "li.alert[data-kind=\"{kind}\"][data-subject=\"{subject}\"]"
        ));
        let links = li.find_all("a.runbook");
        assert_eq!(links.len(), 1, "{kind}: {}", li.text());
        assert_eq!(links[0].attr("href").as_deref(), Some(runbook), "{kind}");
    }
    let drill_alert = browser.find("li.alert[data-kind=\"drill_failed\"]").text();
    assert!(
        drill_alert.contains("MISSING") && drill_alert.contains("next:"),
        "{drill_alert}"
    );
    let mirror = |cell: &str| {
        browser
            .find(&format!("tr.target[data-target=\"mirror\"] td.{cell}"))
            .text()
    };
    assert!(mirror("circuit").contains("OPEN"), "{}", mirror("circuit"));
    assert_eq!(mirror("dead"), "1");
    assert_eq!(mirror("delivered"), "7");
    assert!(mirror("pending").starts_with("1 "), "{}", mirror("pending"));
    assert!(
        mirror("last-success").contains("ago"),
        "{}",
        mirror("last-success")
    );
    assert!(
        !mirror("last-error").contains('—'),
        "{}",
        mirror("last-error")
    );
    let backup_drill = browser
        .find("#drills tr.drill[data-target=\"backup\"] td.verdict")
        .text();
    assert!(
        backup_drill.contains("FAILED") && backup_drill.contains("MISSING"),
        "{backup_drill}"
    );
    assert_eq!(
        browser
            .find("#drills tr.drill[data-target=\"backup\"] td.objective")
            .text(),
        "5 s"
    );
    for target in ["mirror", "backup"] {
        let v = browser
            .find(&format!(
                "#readiness tr[data-target=\"{target}\"] td.verdict"
            ))
            .text();
        assert_eq!(v, "NOT READY", "{target}");
    }
    let why = browser.find("#readiness tr[data-target=\"mirror\"]").text();
    assert!(
        why.contains("unreachable") && why.contains("refused for good"),
        "{why}"
    );
    assert!(
        browser.source().contains("loopback only"),
        "the footer says where the console listens"
    );
    browser.screenshot(&shots.join("overview.png"));

    // Its alert's runbook, one click away.
    browser
        .find("li.alert[data-kind=\"circuit_open\"] a.runbook")
        .click();
    assert_eq!(browser.current_url(), url("/runbooks/stuck-queue"));
    let h1 = browser.find("article.runbook h1").text();
    assert!(h1.contains("stuck"), "{h1}");
    browser.screenshot(&shots.join("runbook.png"));

    // The drill history: a chart with axes, the objective and the failed
    // drill marked.
    browser.find("header nav a[href=\"/drills\"]").click();
    assert_eq!(browser.current_url(), url("/drills"));
    let chart = "svg.chart[data-target=\"backup\"]";
    browser.find(chart);
    let x_ticks: Vec<String> = browser
        .find_all(&format!("{chart} g.x-axis text.tick"))
        .iter()
        .map(|e| e.text())
        .collect();
    assert!(
        x_ticks
            .iter()
            .filter(|t| t.ends_with('Z'))
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            >= 2,
        "time labels on the time axis: {x_ticks:?}"
    );
    let y_ticks = browser.find_all(&format!("{chart} g.y-axis text.tick"));
    assert!(y_ticks.len() >= 3, "{} seconds ticks", y_ticks.len());
    let objective = browser.find(&format!("{chart} line.objective"));
    assert_eq!(objective.attr("data-seconds").as_deref(), Some("5"));
    assert_eq!(browser.find_all(&format!("{chart} .point.failed")).len(), 1);
    assert_eq!(browser.find_all(&format!("{chart} .point.passed")).len(), 3);
    let rows: Vec<String> = browser
        .find_all("section[data-target=\"backup\"] tr.drill td.verdict")
        .iter()
        .map(|e| e.text())
        .collect();
    assert_eq!(rows.len(), 4, "{rows:?}");
    assert!(
        rows[0].starts_with("FAILED") && rows[1..].iter().all(|r| r == "passed"),
        "newest first: {rows:?}"
    );
    browser.screenshot(&shots.join("drills.png"));

    // The dead letter, with the mirror's reason.
    browser.find("header nav a[href=\"/dead-letters\"]").click();
    let letters = browser.find_all("tr.dead-letter[data-target=\"mirror\"]");
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].find_all("td.sop")[0].text(), j2k_uid);
    let reason = letters[0].find_all("td.reason")[0].text();
    assert!(reason.contains("1.2.840.10008.1.2.4.90"), "{reason}");
    assert!(
        browser
            .find_all("tr.dead-letter[data-target=\"backup\"]")
            .is_empty()
    );
    browser.screenshot(&shots.join("dead-letters.png"));

    // The object kept although not conformant.
    browser
        .find("header nav a[href=\"/non-conformant\"]")
        .click();
    let kept = browser.find_all("#findings tr.finding");
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].find_all("td.sop")[0].text(), odd_uid);
    assert!(
        kept[0].text().contains("nonconformant_uid"),
        "{}",
        kept[0].text()
    );
    browser.screenshot(&shots.join("non-conformant.png"));
    drop(browser);

    // Read-only, and not reachable under a foreign name.
    let (code, answer) = raw_get(admin, "/", "evil.example:80");
    assert_eq!(code, 421, "{answer}");
    let (code, answer) = raw_get(admin, "/", &format!("127.0.0.1:{admin}"));
    assert_eq!(code, 200, "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("content-security-policy: default-src 'none'"),
        "{answer}"
    );
    for path in ["/", "/drills", "/dead-letters"] {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST"])
            .arg(url(path))
            .output()
            .expect("curl");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "405", "POST {path}");
    }

    // Stopped, `status` reads the last delivery from the index.
    let config_path = agent.config_path.clone();
    agent.stop();
    let out = run_ok(
        Command::new(bin())
            .args(["status", "--config"])
            .arg(&config_path),
        Duration::from_secs(30),
    );
    let row = out
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("mirror "))
        .unwrap_or_else(|| panic!("no mirror row: {}", out.stdout));
    assert!(
        row.contains(" s ago"),
        "last success of a stopped agent: {row}"
    );
}
