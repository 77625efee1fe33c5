//! `/`: what the administrator on call looks at first. One verdict (all
//! clear, or how many alerts fire), the alerts each with its runbook,
//! every target's queue and link, the last drill of each target against its
//! objective, and whether each target could be failed over to (or
//! restored from) now. Refreshes itself every [`REFRESH_SECS`].

use std::collections::BTreeMap;
use std::fmt::Write as _;

use pacs_mirror_agent::admin::Status;
use pacs_mirror_agent::replicate::status::TargetStatus;
use pacs_mirror_config::Target;

use super::drills::{self, verdict};
use super::{Console, Frame, bandwidth, esc, runbooks, size, span, when};
use crate::drill::DrillReport;

/// Seconds between reloads of the page.
pub const REFRESH_SECS: u32 = 15;

/// The page.
pub fn page(c: &Console, f: &Frame) -> Result<String, String> {
    let status = c
        .status
        .status()
        .map_err(|e| format!("reading the status: {e}"))?;
    let mut last: BTreeMap<String, DrillReport> = BTreeMap::new();
    for r in drills::history(c, 1000)? {
        last.entry(r.target.clone()).or_insert(r);
    }
    Ok(f.page(
        "Overview",
        "overview",
        Some(REFRESH_SECS),
        &body(c, f, &status, &last),
    ))
}

fn body(c: &Console, f: &Frame, s: &Status, last: &BTreeMap<String, DrillReport>) -> String {
    let mut h = String::new();
    // The verdict.
    let (word, class) = match s.alerts.len() {
        0 => ("All clear".to_string(), "ok"),
        n => (format!("{n} alert(s) firing"), "bad"),
    };
    let _ = write!(
        h,
        "<section id=\"health\"><h1>{} <span class=\"pill verdict {class}\">{word}</span></h1><p>pacs-mirror {} running since {}.",
        esc(&c.config.device.name),
        esc(&s.version),
        s.started_at_ms.map_or("-".into(), |t| when(t, f.now_ms))
    );
    for l in &s.listeners {
        let _ = write!(h, " Listening: <code>{}</code>.", esc(l));
    }
    h.push_str("</p>");
    for w in &s.warnings {
        let _ = write!(h, "<p class=\"warn config-warning\">{}</p>", esc(w));
    }
    h.push_str("</section>");

    // Alerts.
    h.push_str("<section id=\"alerts-section\"><h2>Alerts</h2>");
    if s.alerts.is_empty() {
        h.push_str("<p class=\"ok\" id=\"no-alerts\">None firing.</p>");
    } else {
        h.push_str("<ul class=\"alerts\" id=\"alerts\">");
        for a in &s.alerts {
            let runbook = runbooks::for_alert(&a.kind);
            let _ = write!(
                h,
                "<li class=\"alert\" data-kind=\"{k}\" data-subject=\"{sub}\"><strong>{k}</strong> ({sub}) since {since}<br>{text}<br>runbook: <a class=\"runbook\" href=\"/runbooks/{rb}\">{rbn}</a></li>",
                k = esc(&a.kind),
                sub = esc(&a.subject),
                since = when(a.since_ms, f.now_ms),
                text = esc(&a.text),
                rb = runbook.unwrap_or("README"),
                rbn = runbook.map_or("index of runbooks".into(), |r| format!("{r}.md")),
            );
        }
        h.push_str("</ul>");
    }
    h.push_str("</section>");

    // Ingest.
    let i = &s.ingest;
    let _ = write!(
        h,
        "<section id=\"ingest\"><h2>Ingest</h2><table><tr><th class=\"n\">rate (last minute)</th><th class=\"n\">stored</th><th class=\"n\">identical re-sends</th><th class=\"n\">new versions</th><th class=\"n\">refused</th><th class=\"n\">kept, not conformant</th><th class=\"n\">spool</th></tr><tr><td class=\"n rate\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n{}\">{}</td><td class=\"n\"><a href=\"/non-conformant\">{}</a></td><td class=\"n\">{}</td></tr></table><p class=\"muted\">Counts since start; non-conformant: instance versions held with findings, by class.</p></section>",
        match (i.objects_per_min, i.bytes_per_sec) {
            (Some(o), Some(b)) => format!("{o} objects/min, {}", bandwidth(b)),
            _ => "measuring…".into(),
        },
        i.stored,
        i.duplicates,
        i.conflicts,
        if i.failed > 0 { " bad" } else { "" },
        i.failed,
        if s.findings.by_class.is_empty() {
            "none".to_string()
        } else {
            s.findings
                .by_class
                .iter()
                .map(|(c, n)| format!("{n} {}", esc(c)))
                .collect::<Vec<_>>()
                .join(", ")
        },
        size(s.spool_bytes),
    );

    // Targets.
    h.push_str("<section id=\"targets-section\"><h2>Replication targets</h2>");
    if s.targets.is_empty() {
        h.push_str("<p>No replication target is configured: nothing leaves this host.</p>");
    } else {
        h.push_str("<table id=\"targets\"><tr><th>target</th><th>destination</th><th class=\"n\">pending</th><th class=\"n\">oldest pending</th><th class=\"n\">lag</th><th class=\"n\">delivered</th><th class=\"n\">dead letters</th><th>circuit</th><th class=\"n\">bandwidth now</th><th>last success</th><th>last error</th></tr>");
        for (name, t) in &s.targets {
            target_row(&mut h, c, f, name, t);
        }
        h.push_str("</table><p class=\"muted\">Lag: how long the last delivered object waited between arrival and delivery. Bandwidth: bytes delivered per second over the last minute.</p>");
    }
    h.push_str("</section>");

    // Drills.
    h.push_str("<section id=\"drills-section\"><h2>Last restore drill per target</h2>");
    let drilled: Vec<&str> = c
        .config
        .targets
        .iter()
        .map(Target::name)
        .filter(|n| last.contains_key(*n) || c.config.drills.iter().any(|d| d.target == *n))
        .collect();
    if drilled.is_empty() {
        h.push_str("<p>No drill is configured and none has run: nothing proves yet that a copy restores. Add a <code>[[drill]]</code> with a <code>schedule</code>.</p>");
    } else {
        h.push_str("<table id=\"drills\"><tr><th>target</th><th>last drill</th><th>verdict</th><th class=\"n\">recovery time</th><th class=\"n\">objective</th><th class=\"n\">studies</th><th>next step</th></tr>");
        for name in drilled {
            let objective = drills::objective(c, name);
            match last.get(name) {
                None => {
                    let _ = write!(
                        h,
                        "<tr class=\"drill\" data-target=\"{t}\"><td>{t}</td><td colspan=\"5\" class=\"warn verdict\">no drill has run yet</td><td><code>pacs-mirror drill --target {t}</code></td></tr>",
                        t = esc(name)
                    );
                }
                Some(r) => {
                    let (word, class) = verdict(r);
                    let next = if r.ok {
                        String::new()
                    } else {
                        let full = r.next_step();
                        esc(full
                            .split_once("; next: ")
                            .map_or(full.as_str(), |(_, n)| n))
                    };
                    let _ = write!(
                        h,
                        "<tr class=\"drill\" data-verdict=\"{class}\" data-target=\"{t}\"><td><a href=\"/drills#target-{t}\">{t}</a></td><td>{}</td><td class=\"verdict {class}\">{word}{}</td><td class=\"n recovery\">{}</td><td class=\"n objective\">{}</td><td class=\"n\">{}</td><td class=\"next\">{next}</td></tr>",
                        when(r.started_at_ms, f.now_ms),
                        r.failure
                            .as_deref()
                            .map(|x| format!(": {}", esc(x)))
                            .unwrap_or_default(),
                        super::seconds(r.recovery_secs),
                        objective
                            .or(r.rto_secs)
                            .map_or("none".into(), |o| format!("{o} s")),
                        r.studies.len(),
                        t = esc(name),
                    );
                }
            }
        }
        h.push_str("</table>");
    }
    h.push_str("</section>");

    // Failover readiness.
    h.push_str("<section id=\"readiness-section\"><h2>Failover readiness</h2><p class=\"muted\">Could this target stand in for the primary now (a mirror PACS), or a PACS be rebuilt from it (a bucket)? From what the agent knows: its queue, its link and its last drill. <code>pacs-mirror failover check --target NAME</code> also asks the mirror what it holds; the <a href=\"/runbooks/failover\">failover runbook</a> says what to do.</p>");
    if !s.targets.is_empty() {
        h.push_str("<table id=\"readiness\"><tr><th>target</th><th>verdict</th><th>why</th></tr>");
        for (name, t) in &s.targets {
            let (word, class, why) = readiness(t, last.get(name));
            let _ = write!(
                h,
                "<tr class=\"readiness\" data-verdict=\"{class}\" data-target=\"{n}\"><td>{n}</td><td class=\"verdict {class}\">{word}</td><td>{}</td></tr>",
                esc(&why.join("; ")),
                n = esc(name)
            );
        }
        h.push_str("</table>");
    }
    h.push_str("</section>");

    // TLS and workers.
    if let Some(t) = &s.tls {
        let _ = write!(
            h,
            "<section id=\"tls\"><h2>DICOM TLS</h2><p>Certificate: {}{}</p>",
            esc(t
                .certificate
                .as_deref()
                .unwrap_or("none (this device presents no certificate)")),
            t.not_after_ms
                .map(|n| {
                    let n = u64::try_from(n).unwrap_or(0);
                    let class = if n < f.now_ms + 30 * 86_400_000 {
                        "bad"
                    } else {
                        "ok"
                    };
                    format!(
                        "; <span class=\"{class}\">valid until {}</span>",
                        super::iso(n)
                    )
                })
                .unwrap_or_default()
        );
        if !t.handshake_failures.is_empty() {
            let v: Vec<String> = t
                .handshake_failures
                .iter()
                .map(|(r, n)| format!("{n} {}", esc(r)))
                .collect();
            let _ = write!(h, "<p>Failed handshakes since start: {}</p>", v.join(", "));
        }
        h.push_str("</section>");
    }
    if !s.workers.is_empty() {
        h.push_str("<section id=\"workers\"><h2>Background workers</h2><p>");
        let v: Vec<String> = s
            .workers
            .iter()
            .map(|(n, w)| {
                format!(
                    "<code>{}</code> {}{}",
                    esc(n),
                    esc(&w.state),
                    w.next_in_secs
                        .map(|x| format!(" (next in {})", span(x)))
                        .unwrap_or_default()
                )
            })
            .collect();
        h.push_str(&v.join(" · "));
        h.push_str("</p></section>");
    }
    h
}

fn target_row(h: &mut String, c: &Console, f: &Frame, name: &str, t: &TargetStatus) {
    let circuit = if t.circuit_open {
        "<td class=\"circuit bad\">OPEN (unreachable)</td>"
    } else {
        "<td class=\"circuit ok\">closed</td>"
    };
    let mut bandwidth_cell = t.bytes_per_sec.map_or("—".into(), |b| {
        format!(
            "{}{}",
            bandwidth(b),
            t.delivered_per_min
                .map(|o| format!(", {o} objects/min"))
                .unwrap_or_default()
        )
    });
    if let Some(c) = t.max_bandwidth_bytes_per_sec {
        let _ = write!(
            bandwidth_cell,
            "<br><span class=\"muted cap\">cap now {}</span>",
            bandwidth(c)
        );
    }
    if let Some(a) = t.associations {
        let _ = write!(
            bandwidth_cell,
            "<br><span class=\"muted associations\">{} of {} association(s) open (at most {})</span>",
            a.in_use, a.limit, a.max
        );
    }
    if let Some(a) = t.uploads {
        let _ = write!(
            bandwidth_cell,
            "<br><span class=\"muted uploads\">{} of {} upload(s) in flight (at most {})</span>",
            a.in_use, a.limit, a.max
        );
    }
    let _ = write!(
        h,
        "<tr class=\"target\" data-target=\"{n}\"><td>{n}</td><td>{}</td><td class=\"n pending\">{} <span class=\"muted\">({}; {} live)</span></td><td class=\"n oldest\">{}</td><td class=\"n lag\">{}</td><td class=\"n delivered\">{}{}</td><td class=\"n dead{}\">{}</td>{circuit}<td class=\"n bandwidth\">{}</td><td class=\"last-success\">{}</td><td class=\"last-error\">{}</td></tr>",
        destination(c, name),
        t.pending,
        size(t.pending_bytes),
        t.pending_live,
        t.oldest_pending_age_secs.map_or("—".into(), span),
        t.lag_ms.map_or("—".into(), |l| span(l / 1000)),
        t.delivered,
        t.commitment.as_ref().map_or(String::new(), |cm| format!(
            "<br><span class=\"muted awaiting-commitment\">{} stored, awaiting commitment{}</span>",
            cm.awaiting,
            cm.oldest_awaiting_age_secs
                .map_or(String::new(), |a| format!(" (oldest {})", span(a)))
        )),
        if t.dead_letters > 0 { " bad" } else { "" },
        if t.dead_letters > 0 {
            format!(
                "<a href=\"/dead-letters#target-{}\">{}</a>",
                esc(name),
                t.dead_letters
            )
        } else {
            "0".into()
        },
        bandwidth_cell,
        t.last_success_at_ms
            .map_or("never".into(), |m| when(m, f.now_ms)),
        match (&t.last_error, t.last_error_at_ms) {
            (Some(e), Some(at)) => format!("{}: {}", when(at, f.now_ms), esc(e)),
            (Some(e), None) => esc(e),
            _ => "—".into(),
        },
        n = esc(name),
    );
}

/// Where a target sends: `AE@host:port` or the bucket's URL (without any
/// credentials in it).
fn destination(c: &Console, name: &str) -> String {
    match c.config.targets.iter().find(|t| t.name() == name) {
        Some(Target::Dicom { remote_ae, .. }) => {
            let at = c.config.remote_ae(remote_ae).and_then(|(device, ae)| {
                device
                    .network_connections
                    .iter()
                    .find(|n| {
                        ae.network_connections.is_empty()
                            || ae.network_connections.contains(&n.name)
                    })
                    .map(|n| format!("{}:{}", n.hostname, n.port))
            });
            format!(
                "DICOM <code>{}</code>{}",
                esc(remote_ae),
                at.map(|a| format!(" at {}", esc(&a))).unwrap_or_default()
            )
        }
        Some(Target::ObjectStore { url, .. }) => {
            let shown = match (url.find("://"), url.find('@')) {
                (Some(s), Some(a)) if a > s => format!("{}***{}", &url[..s + 3], &url[a..]),
                _ => url.clone(),
            };
            format!("bucket <code>{}</code>", esc(&shown))
        }
        None => "—".into(),
    }
}

/// Whether a target could stand in now: (verdict, class, reasons).
pub fn readiness(
    t: &TargetStatus,
    last: Option<&DrillReport>,
) -> (&'static str, &'static str, Vec<String>) {
    let mut blocking = Vec::new();
    let mut caveats = Vec::new();
    if t.circuit_open {
        blocking.push(format!(
            "unreachable now{}",
            t.last_error
                .as_deref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        ));
    }
    if t.dead_letters > 0 {
        blocking.push(format!(
            "{} object(s) refused for good are not on it",
            t.dead_letters
        ));
    }
    if t.pending > 0 {
        caveats.push(format!(
            "{} object(s) not delivered yet{}",
            t.pending,
            t.oldest_pending_age_secs
                .map(|a| format!(", the oldest queued {} ago", span(a)))
                .unwrap_or_default()
        ));
    }
    match last {
        None => caveats.push("no drill has proven a restore yet".into()),
        Some(r) if !r.ok && !r.rto_exceeded => blocking.push(format!(
            "its last drill failed: {}",
            r.failure.as_deref().unwrap_or("see /drills")
        )),
        Some(r) if r.rto_exceeded => caveats.push(format!(
            "its last drill took {:.0} s, over the objective",
            r.recovery_secs
        )),
        Some(_) => {}
    }
    if !blocking.is_empty() {
        blocking.extend(caveats);
        ("NOT READY", "bad", blocking)
    } else if last.is_none() {
        ("UNPROVEN", "warn", caveats)
    } else if !caveats.is_empty() {
        ("READY, BEHIND", "warn", caveats)
    } else {
        (
            "READY",
            "ok",
            vec!["everything queued is delivered; the last drill passed".into()],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_verdicts() {
        let ok = DrillReport {
            ok: true,
            ..DrillReport::default()
        };
        let failed = DrillReport {
            ok: false,
            failure: Some("2 MISSING".into()),
            ..DrillReport::default()
        };
        let t = TargetStatus::default();
        assert_eq!(readiness(&t, Some(&ok)).0, "READY");
        assert_eq!(readiness(&t, None).0, "UNPROVEN");
        let behind = TargetStatus {
            pending: 3,
            oldest_pending_age_secs: Some(600),
            ..TargetStatus::default()
        };
        let (v, _, why) = readiness(&behind, Some(&ok));
        assert_eq!(v, "READY, BEHIND");
        assert!(why[0].contains("3 object(s) not delivered yet, the oldest queued 10 min ago"));
        let (v, _, why) = readiness(&t, Some(&failed));
        assert_eq!(v, "NOT READY");
        assert!(why[0].contains("2 MISSING"), "{why:?}");
        let down = TargetStatus {
            circuit_open: true,
            dead_letters: 1,
            last_error: Some("connection refused".into()),
            ..TargetStatus::default()
        };
        let (v, _, why) = readiness(&down, Some(&ok));
        assert_eq!(v, "NOT READY");
        assert_eq!(why.len(), 2, "{why:?}");
        assert!(why[0].contains("connection refused"));
    }
}
