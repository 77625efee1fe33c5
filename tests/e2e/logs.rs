//! Acceptance: `--log-format json` gives one JSON object per log line, and
//! the events of a refused association and of a failed store carry the
//! peer's calling AE title and address as fields of the event itself.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::dimse;
use crate::harness::*;

fn field<'a>(line: &'a Value, k: &str) -> Option<&'a str> {
    line["fields"][k].as_str()
}

#[test]
fn json_logs_name_the_calling_ae_and_address_of_refusals_and_failed_stores() {
    let dir = tempdir();
    let src = synth(
        &dir.path().join("src"),
        &[
            "--instances-per-series",
            "1",
            "--rows",
            "64",
            "--columns",
            "64",
            "--seed",
            "13",
        ],
    );
    let (_meta, ds) = raw_info(&src[0]);
    let mut cfg = AgentConfig::new(&dir.path().join("data"));
    cfg.access = Access::Allow {
        ae: SENDER_AE.into(),
        sources: vec!["127.0.0.1/32".into()],
    };
    let agent = Agent::start_with_args(&cfg, &["--log-format", "json"]);

    // A refused association: an unknown calling AE.
    let o = run(
        Command::new(tool("echoscu")).args([
            "-aet",
            "INTRUDER",
            "-aec",
            AGENT_AE,
            "127.0.0.1",
            &cfg.port.to_string(),
        ]),
        Duration::from_secs(60),
    );
    assert!(
        o.all().contains("Association Rejected"),
        "INTRUDER was not rejected:\n{}",
        o.all()
    );

    // A failed store: the command names another SOP instance.
    let mut assoc = dimse::associate_ct(cfg.port, SENDER_AE, &|| agent.log_tail());
    let st = assoc
        .store(1, 1, dimse::CT_IMAGE_STORAGE, "1.2.3.4.5.6.7", &ds)
        .expect("C-STORE-RSP");
    assert_eq!(st, 0xC001, "status {st:04X}");
    assoc.release().expect("A-RELEASE");

    let log_path = agent.log_path.clone();
    agent.stop();
    let text = std::fs::read_to_string(&log_path).expect("reading the log");
    let lines: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("a log line is not JSON ({e}): {l}"))
        })
        .collect();
    assert!(lines.len() > 3, "{text}");
    assert!(
        lines
            .iter()
            .all(|l| l["level"].is_string() && l["timestamp"].is_string())
    );

    let refused = lines
        .iter()
        .find(|l| {
            field(l, "message") == Some("association refused")
                && field(l, "calling_ae") == Some("INTRUDER")
        })
        .unwrap_or_else(|| panic!("no JSON line for the refused association:\n{text}"));
    assert_eq!(refused["level"], "WARN");
    assert_eq!(field(refused, "called_ae"), Some(AGENT_AE));
    assert!(
        field(refused, "peer").is_some_and(|p| p.starts_with("127.0.0.1:")),
        "{refused}"
    );
    assert!(field(refused, "reason").is_some(), "{refused}");

    let failed = lines
        .iter()
        .find(|l| field(l, "message") == Some("C-STORE refused"))
        .unwrap_or_else(|| panic!("no JSON line for the failed store:\n{text}"));
    assert_eq!(field(failed, "calling_ae"), Some(SENDER_AE), "{failed}");
    assert!(
        field(failed, "peer").is_some_and(|p| p.starts_with("127.0.0.1:")),
        "{failed}"
    );
    assert_eq!(field(failed, "sop_instance_uid"), Some("1.2.3.4.5.6.7"));
    assert!(
        field(failed, "status").is_some() && field(failed, "reason").is_some(),
        "{failed}"
    );
}
