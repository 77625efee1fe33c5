//! Acceptance (on-call issue, 5) and the rest of `ops/`: the Prometheus
//! rules pass `promtool check rules` and their unit tests, the systemd unit
//! passes `systemd-analyze verify`, and the rules and the Grafana dashboard
//! name only metrics a running agent exports. (The TOML files under
//! `ops/config/` are validated by the config crate's `ops_examples_validate`.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::drill::folder_agent;
use crate::harness::*;

fn ops() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("ops")
}

/// A tool scripts/test installs; missing: the test fails and says so.
fn system_tool(name: &str, package: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin", "/bin"] {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("{name} not found: run scripts/test, which installs {package}");
}

#[test]
fn prometheus_rules_check_and_pass_their_unit_tests() {
    let promtool = system_tool("promtool", "prometheus");
    let dir = ops().join("prometheus");
    let check = run(
        Command::new(&promtool).current_dir(&dir).args([
            "check",
            "rules",
            "pacs-mirror-alerts.yml",
        ]),
        Duration::from_secs(60),
    );
    assert!(check.status.success(), "{}", check.all());
    assert!(
        check.all().contains("SUCCESS: 15 rules found"),
        "{}",
        check.all()
    );
    let test = run(
        Command::new(&promtool).current_dir(&dir).args([
            "test",
            "rules",
            "pacs-mirror-alerts.test.yml",
        ]),
        Duration::from_secs(60),
    );
    assert!(test.status.success(), "{}", test.all());
}

#[test]
fn systemd_unit_verifies_and_is_hardened() {
    let analyze = system_tool("systemd-analyze", "systemd");
    let dir = tempdir();
    // verify insists that ExecStart exists: point it at the binary under test.
    let unit = std::fs::read_to_string(ops().join("systemd/pacs-mirror.service"))
        .expect("reading the unit")
        .replace("/usr/local/bin/pacs-mirror", bin());
    let path = dir.path().join("pacs-mirror.service");
    std::fs::write(&path, unit).expect("writing the unit copy");
    let verify = run(
        Command::new(&analyze).arg("verify").arg(&path),
        Duration::from_secs(60),
    );
    assert!(verify.status.success(), "{}", verify.all());
    assert!(
        verify.all().trim().is_empty(),
        "verify warned: {}",
        verify.all()
    );
    let security = run(
        Command::new(&analyze)
            .args(["security", "--offline=yes", "--no-pager"])
            .arg(&path),
        Duration::from_secs(60),
    );
    let all = security.all();
    let exposure: f64 = all
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for pacs-mirror.service:")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no exposure level in: {all}"));
    assert!(
        exposure <= 2.0,
        "exposure {exposure} (want ≤ 2.0 'OK'): {all}"
    );
}

/// Metric names in PromQL or dashboard text: every `pacs_mirror_…` token.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("pacs_mirror_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

#[test]
fn rules_and_dashboard_use_only_exported_metrics() {
    let rules = std::fs::read_to_string(ops().join("prometheus/pacs-mirror-alerts.yml"))
        .expect("reading the rules");
    let dashboard_text = std::fs::read_to_string(ops().join("grafana/pacs-mirror-dashboard.json"))
        .expect("reading the dashboard");
    let dashboard: Value = serde_json::from_str(&dashboard_text).expect("dashboard JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut exprs = String::new();
    for p in panels {
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "duplicate id: {p}"
        );
        let g = &p["gridPos"];
        assert!(
            g["x"].as_u64().unwrap_or(99) + g["w"].as_u64().unwrap_or(99) <= 24,
            "panel wider than the grid: {p}"
        );
        for t in p["targets"].as_array().into_iter().flatten() {
            exprs.push_str(t["expr"].as_str().expect("expr"));
            exprs.push('\n');
        }
    }
    let used: BTreeSet<String> = metric_names(&rules)
        .into_iter()
        .chain(metric_names(&exprs))
        .collect();
    assert!(used.len() >= 20, "{used:?}");

    // A running agent with a backup target and one scheduled drill behind
    // it exports every family (drill gauges appear after the first drill).
    let dir = tempdir();
    let admin = free_port();
    let _agent = folder_agent(
        dir.path(),
        "schedule = \"*/1 * * * * *\"\nrandom_studies = 1\n",
        admin,
        1,
        2,
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let metrics = loop {
        let m = admin_get(admin, "/metrics");
        if m.contains("pacs_mirror_drill_last_ok{")
            && m.contains("pacs_mirror_monitor_last_check_timestamp_seconds ")
        {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "no drill or monitor metrics: {m}"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    let exported: BTreeSet<String> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    let missing: Vec<&String> = used.difference(&exported).collect();
    assert!(missing.is_empty(), "not exported: {missing:?}\n{metrics}");
}
