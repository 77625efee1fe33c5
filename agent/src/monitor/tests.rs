use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use chrono::Utc;

use super::*;

const H: u64 = 3_600_000;
const NOW: u64 = 1_795_000_000_000;

fn settings() -> Settings {
    Settings {
        check_interval: Duration::from_secs(30),
        queue_stuck_after_secs: 3600,
        spool_headroom_min_bytes: 10 << 30,
        duplicate_ae_window_secs: 86_400,
        silence: vec![SilenceSetting {
            calling_ae: "CT1".into(),
            after_secs: 3 * 3600,
            window: ActiveWindow {
                start_min: 0,
                end_min: 0,
                days: [true; 7],
            },
            described: "all day".into(),
        }],
        min_free_bytes: 256 << 20,
        max_bytes: None,
        known_addresses: BTreeMap::new(),
        certificate_warning_secs: 30 * 86_400,
    }
}

fn seen(last: Option<u64>, addresses: &[&str]) -> Seen {
    Seen {
        last_store_ms: last,
        unsaved: false,
        addresses: addresses
            .iter()
            .map(|a| (a.parse().unwrap(), NOW - 1000))
            .collect(),
    }
}

fn kinds(c: &[Condition]) -> Vec<(&str, &str)> {
    c.iter().map(|c| (c.kind, c.subject.as_str())).collect()
}

/// Inputs with nothing to say but `sources` and `targets`, started an
/// hour before NOW.
fn inputs<'a>(
    sources: &'a BTreeMap<String, Seen>,
    targets: &'a BTreeMap<String, TargetStatus>,
) -> Inputs<'a> {
    Inputs {
        now_ms: NOW,
        started_ms: NOW - H,
        sources,
        targets,
        room: None,
        certificate: None,
        unhealthy: None,
    }
}

fn eval(
    s: &Settings,
    sources: &BTreeMap<String, Seen>,
    targets: &BTreeMap<String, TargetStatus>,
    room: Option<SpoolRoom>,
) -> (Vec<Condition>, Gauges) {
    let i = Inputs {
        started_ms: NOW - 10 * H,
        room,
        ..inputs(sources, targets)
    };
    evaluate(s, &i, &Utc)
}

#[test]
fn quiet_agent_has_no_conditions() {
    let s = settings();
    let sources = BTreeMap::from([("CT1".to_string(), seen(Some(NOW - H), &["10.0.0.5"]))]);
    let targets = BTreeMap::from([("mirror".to_string(), TargetStatus::default())]);
    let room = SpoolRoom {
        free_bytes: 100 << 30,
        used_bytes: 1 << 30,
    };
    let (c, g) = eval(&s, &sources, &targets, Some(room));
    assert!(c.is_empty(), "{c:?}");
    assert_eq!(g.sources["CT1"].silence_s, Some(3600));
    assert_eq!(g.sources["CT1"].addresses, 1);
    assert_eq!(g.headroom_bytes, Some((100 << 30) - (256 << 20)));
}

#[test]
fn silence_counts_from_the_last_store_or_the_start() {
    let s = settings();
    let sources = BTreeMap::from([("CT1".to_string(), seen(Some(NOW - 4 * H), &[]))]);
    let (c, _) = eval(&s, &sources, &BTreeMap::new(), None);
    assert_eq!(kinds(&c), [("source_silent", "CT1")]);
    assert!(
        c[0].text.contains("no images from CT1 for 4 h 00 min"),
        "{}",
        c[0].text
    );
    assert!(c[0].text.contains("threshold 3 h 00 min"), "{}", c[0].text);
    // Last object 12 h ago, but the agent started (after downtime) 2 h
    // ago: the agent's downtime is not the source's silence.
    let long_ago = BTreeMap::from([("CT1".to_string(), seen(Some(NOW - 12 * H), &[]))]);
    let no_targets = BTreeMap::new();
    let i = Inputs {
        started_ms: NOW - 2 * H,
        ..inputs(&long_ago, &no_targets)
    };
    let (quiet, g) = evaluate(&s, &i, &Utc);
    assert!(quiet.is_empty(), "{quiet:?}");
    assert_eq!(g.sources["CT1"].silence_s, Some(7200));
    // Never seen since a start 10 h ago.
    let (c, _) = eval(&s, &BTreeMap::new(), &BTreeMap::new(), None);
    assert_eq!(kinds(&c), [("source_silent", "CT1")]);
    assert!(
        c[0].text.contains("nothing since the agent started"),
        "{}",
        c[0].text
    );
}

#[test]
fn duplicate_ae_title_names_every_address() {
    let s = settings();
    let sources = BTreeMap::from([(
        "CT1".to_string(),
        seen(Some(NOW - H), &["127.0.0.1", "127.0.0.2"]),
    )]);
    let (c, g) = eval(&s, &sources, &BTreeMap::new(), None);
    assert_eq!(kinds(&c), [("duplicate_ae_title", "CT1")]);
    assert!(c[0].text.contains("127.0.0.1"), "{}", c[0].text);
    assert!(c[0].text.contains("127.0.0.2"), "{}", c[0].text);
    assert_eq!(g.sources["CT1"].addresses, 2);
    // Configured with exactly these two addresses: one multi-homed device.
    let mut s = settings();
    s.known_addresses.insert(
        "CT1".into(),
        ["127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap()].into(),
    );
    assert!(eval(&s, &sources, &BTreeMap::new(), None).0.is_empty());
    // A third address is not one of them.
    let sources = BTreeMap::from([(
        "CT1".to_string(),
        seen(Some(NOW - H), &["127.0.0.1", "127.0.0.3"]),
    )]);
    let (c, _) = eval(&s, &sources, &BTreeMap::new(), None);
    assert_eq!(kinds(&c), [("duplicate_ae_title", "CT1")]);
}

#[test]
fn target_conditions() {
    let s = settings();
    let targets = BTreeMap::from([
        (
            "mirror".to_string(),
            TargetStatus {
                pending: 12,
                pending_bytes: 6 << 20,
                oldest_pending_age_secs: Some(3601),
                circuit_open: true,
                last_error: Some("connection refused".into()),
                ..Default::default()
            },
        ),
        (
            "bucket".to_string(),
            TargetStatus {
                oldest_pending_age_secs: Some(3600),
                dead_letters: 2,
                ..Default::default()
            },
        ),
        (
            // A big backlog that moves: old, but delivered a minute ago.
            "moving".to_string(),
            TargetStatus {
                pending: 50_000,
                oldest_pending_age_secs: Some(7200),
                last_success_at_ms: Some(NOW - 60_000),
                ..Default::default()
            },
        ),
    ]);
    let sources = BTreeMap::from([("CT1".to_string(), seen(Some(NOW), &[]))]);
    let (c, _) = eval(&s, &sources, &targets, None);
    assert_eq!(
        kinds(&c),
        [
            ("dead_letters", "bucket"),
            ("queue_stuck", "mirror"),
            ("circuit_open", "mirror")
        ]
    );
    let stuck = &c[1].text;
    assert!(
        stuck.contains("nothing delivered for 10 h 00 min")
            && stuck.contains("1 h 00 min old")
            && stuck.contains("12 objects (6.0 MiB)"),
        "{stuck}"
    );
    assert!(stuck.contains("connection refused"), "{stuck}");
    assert!(
        c[0].text.contains("dead-letter list --target bucket"),
        "{}",
        c[0].text
    );
}

#[test]
fn headroom_is_the_smaller_of_disk_and_quota() {
    let mut s = settings();
    s.spool_headroom_min_bytes = 10 << 20;
    s.max_bytes = Some(40 << 20);
    let room = SpoolRoom {
        free_bytes: 50 << 30,
        used_bytes: 32 << 20,
    };
    assert_eq!(room.headroom(&s), 8 << 20);
    let sources = BTreeMap::from([("CT1".to_string(), seen(Some(NOW), &[]))]);
    let (c, g) = eval(&s, &sources, &BTreeMap::new(), Some(room));
    assert_eq!(kinds(&c), [("spool_low_space", "spool")]);
    assert!(c[0].text.contains("8.0 MiB left"), "{}", c[0].text);
    assert_eq!(g.headroom_bytes, Some(8 << 20));
    // Disk nearly full, no quota: the reserve is not room.
    s.max_bytes = None;
    let room = SpoolRoom {
        free_bytes: 200 << 20,
        used_bytes: 0,
    };
    assert_eq!(room.headroom(&s), 0);
}

fn none(_: &str, _: &str) -> bool {
    false
}

#[test]
fn each_condition_is_raised_once_until_it_clears() {
    let m = Monitor::new(settings(), Arc::default(), NOW);
    let alerter = Alerter::log_only("dev");
    let cond = || Condition {
        kind: "queue_stuck",
        subject: "mirror".into(),
        text: "stuck".into(),
    };
    let raised = || alerter.counters.raised.load(Ordering::Relaxed);
    let g = Gauges::default;
    assert!(m.apply(NOW, vec![cond()], g(), &alerter, &none));
    assert!(!m.apply(NOW + 30_000, vec![cond()], g(), &alerter, &none));
    assert_eq!(raised(), 1);
    assert_eq!(m.firing()[0].since_ms, NOW);
    // Flapping: absent for fewer than CLEAR_AFTER_CHECKS checks, then back:
    // still the same alert.
    for k in 1..CLEAR_AFTER_CHECKS {
        m.apply(NOW + 40_000 + u64::from(k), vec![], g(), &alerter, &none);
        assert_eq!(m.firing().len(), 1);
    }
    m.apply(NOW + 200_000, vec![cond()], g(), &alerter, &none);
    assert_eq!(raised(), 1);
    // Absent long enough: cleared; back again: a new alert.
    for k in 0..CLEAR_AFTER_CHECKS {
        m.apply(NOW + 300_000 + u64::from(k), vec![], g(), &alerter, &none);
    }
    assert!(m.firing().is_empty());
    m.apply(NOW + 400_000, vec![cond()], g(), &alerter, &none);
    assert_eq!(raised(), 2);
    let text = m.metrics();
    assert!(
        text.contains("pacs_mirror_alert_firing{kind=\"queue_stuck\",subject=\"mirror\"} 1\n"),
        "{text}"
    );
    assert!(text.contains("pacs_mirror_alerts_raised_total{kind=\"queue_stuck\"} 2\n"));
}

#[test]
fn unknown_inputs_keep_their_alerts_and_restarts_do_not_raise_again() {
    let m = Monitor::new(settings(), Arc::default(), NOW);
    let alerter = Alerter::log_only("dev");
    m.restore_firing(vec![("queue_stuck".into(), "mirror".into(), NOW - H)]);
    let stuck = Condition {
        kind: "queue_stuck",
        subject: "mirror".into(),
        text: "stuck".into(),
    };
    // Still holds after the restart: not raised again, same start.
    assert!(!m.apply(NOW, vec![stuck], Gauges::default(), &alerter, &none));
    assert_eq!(alerter.counters.raised.load(Ordering::Relaxed), 0);
    assert_eq!(m.firing()[0].since_ms, NOW - H);
    // The index cannot be read for many checks: the alert keeps its state.
    let unknown = |kind: &str, subject: &str| kind == "queue_stuck" && subject == "mirror";
    for k in 0..10 {
        m.apply(NOW + k, vec![], Gauges::default(), &alerter, &unknown);
    }
    assert_eq!(m.firing().len(), 1);
    assert_eq!(alerter.counters.raised.load(Ordering::Relaxed), 0);
}

#[test]
fn a_stuck_queue_restored_after_a_restart_waits_for_its_threshold() {
    // Stuck is measured from the start: right after a restart it cannot
    // hold yet; the restored alert is kept, not cleared and raised again.
    let m = Monitor::new(settings(), Arc::default(), NOW);
    let alerter = Alerter::log_only("dev");
    m.restore_firing(vec![
        ("queue_stuck".into(), "mirror".into(), NOW - 5 * H),
        ("spool_low_space".into(), "spool".into(), NOW - 5 * H),
    ]);
    for k in 0..10 {
        m.apply(NOW + 30_000 * k, vec![], Gauges::default(), &alerter, &none);
    }
    // Low space is judged at once: cleared; the queue is kept.
    let kinds: Vec<String> = m.firing().into_iter().map(|f| f.kind).collect();
    assert_eq!(kinds, ["queue_stuck"]);
    // Still stuck after the threshold: the same alert, never raised again.
    let stuck = Condition {
        kind: "queue_stuck",
        subject: "mirror".into(),
        text: "stuck".into(),
    };
    m.apply(
        NOW + H + 60_000,
        vec![stuck],
        Gauges::default(),
        &alerter,
        &none,
    );
    assert_eq!(alerter.counters.raised.load(Ordering::Relaxed), 0);
    assert_eq!(m.firing()[0].since_ms, NOW - 5 * H);
    // Had it not come back after its threshold, it would clear.
    let m = Monitor::new(settings(), Arc::default(), NOW);
    m.restore_firing(vec![("queue_stuck".into(), "mirror".into(), NOW - 5 * H)]);
    for k in 0..3 {
        m.apply(
            NOW + H + 120_000 + k,
            vec![],
            Gauges::default(),
            &alerter,
            &none,
        );
    }
    assert!(m.firing().is_empty());
}

#[test]
fn metrics_escape_label_values() {
    let m = Monitor::new(settings(), Arc::default(), NOW);
    let mut g = Gauges::default();
    g.sources.insert(
        "A\"B".into(),
        SourceGauges {
            last_store_s: Some(7),
            silence_s: None,
            addresses: 1,
        },
    );
    m.apply(NOW, vec![], g, &Alerter::log_only("dev"), &none);
    let text = m.metrics();
    assert!(
        text.contains("pacs_mirror_source_last_store_timestamp_seconds{calling_ae=\"A\\\"B\"} 7\n"),
        "{text}"
    );
}

#[test]
fn human_texts() {
    assert_eq!(duration_text(42), "42 s");
    assert_eq!(duration_text(3 * 3600 + 5 * 60), "3 h 05 min");
    assert_eq!(duration_text(2 * 86_400 + 3600), "2 d 01 h");
    assert_eq!(bytes_text(512), "512 B");
    assert_eq!(bytes_text(3 << 30), "3.0 GiB");
}

#[test]
fn an_expiring_certificate_raises_its_alert_and_an_expired_one_says_so() {
    let s = settings();
    let sources = BTreeMap::new();
    let targets = BTreeMap::new();
    let at = |not_after_s: i64| {
        let i = Inputs {
            certificate: Some(("subject \"CN=agent\"".into(), not_after_s)),
            ..inputs(&sources, &targets)
        };
        evaluate(&s, &i, &Utc)
    };
    let now_s = (NOW / 1000) as i64;
    let (fine, g) = at(now_s + 31 * 86_400);
    assert!(fine.is_empty(), "{fine:?}");
    assert_eq!(g.certificate_expiry_s, Some(31 * 86_400));
    let (soon, _) = at(now_s + 29 * 86_400);
    assert_eq!(kinds(&soon), [("certificate_expiring", "tls")]);
    assert!(soon[0].text.contains("expires in"), "{}", soon[0].text);
    assert!(soon[0].text.contains("CN=agent"), "{}", soon[0].text);
    let (gone, g) = at(now_s - 60);
    assert_eq!(kinds(&gone), [("certificate_expiring", "tls")]);
    assert!(gone[0].text.contains("EXPIRED"), "{}", gone[0].text);
    assert_eq!(g.certificate_expiry_s, Some(-60));
}

#[test]
fn a_latched_store_raises_storage_unhealthy_with_what_to_do() {
    let s = settings();
    let sources = BTreeMap::new();
    let targets = BTreeMap::new();
    let i = Inputs {
        unhealthy: Some(pacs_mirror_store::commit::Latched {
            what: "spool file fdatasync".into(),
            error: "objects/ab/x.dcm: Input/output error (os error 5)".into(),
            at_ms: NOW - 60_000,
        }),
        ..inputs(&sources, &targets)
    };
    let (c, _) = evaluate(&s, &i, &Utc);
    assert_eq!(kinds(&c), [("storage_unhealthy", "spool")]);
    assert!(c[0].text.contains("A700"), "{}", c[0].text);
    assert!(c[0].text.contains("restart"), "{}", c[0].text);
    assert!(c[0].text.contains("os error 5"), "{}", c[0].text);
}
