//! `/drills`: every target's drill history, newest first: a chart of the
//! recovery times against the objective, and a table with each drill's
//! verdicts and what it found.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::chart::{self, Point};
use super::{Console, Frame, esc, when};
use crate::drill::{DrillReport, Verdict};

/// How many drills the page reads.
const HISTORY: usize = 500;

/// The drill history, newest first.
pub fn history(c: &Console, limit: usize) -> Result<Vec<DrillReport>, String> {
    c.index
        .drills::<DrillReport>(None, limit)
        .map(|v| v.into_iter().map(|(_, r)| r).collect())
        .map_err(|e| format!("reading the drill history: {e}"))
}

/// The objective of `target`'s drills, as configured now.
pub fn objective(c: &Console, target: &str) -> Option<u64> {
    c.config
        .drills
        .iter()
        .find(|d| d.target == target)
        .and_then(|d| d.recovery_time_objective_secs)
}

/// The page.
pub fn page(c: &Console, f: &Frame) -> Result<String, String> {
    let history = history(c, HISTORY)?;
    Ok(f.page("Drills", "drills", None, &body(c, f, &history)))
}

/// "passed", "FAILED" or "over objective", with its class.
pub fn verdict(r: &DrillReport) -> (&'static str, &'static str) {
    if r.ok {
        ("passed", "ok")
    } else if r.rto_exceeded {
        ("OVER OBJECTIVE", "warn")
    } else {
        ("FAILED", "bad")
    }
}

fn body(c: &Console, f: &Frame, history: &[DrillReport]) -> String {
    let mut by_target: BTreeMap<&str, Vec<&DrillReport>> = BTreeMap::new();
    for r in history {
        by_target.entry(r.target.as_str()).or_default().push(r);
    }
    let mut h = String::from("<h1>Restore drills</h1>");
    if history.is_empty() {
        h.push_str("<section><p id=\"no-drills\">No drill has run yet. Give a target a <code>[[drill]]</code> with a <code>schedule</code>, or run <code>pacs-mirror drill --target NAME</code>.</p></section>");
    }
    for (target, drills) in &by_target {
        let objective = objective(c, target).or_else(|| drills.iter().find_map(|r| r.rto_secs));
        let _ = write!(
            h,
            "<section class=\"drill-target\" id=\"target-{t}\" data-target=\"{t}\"><h2>{t}</h2><p>{n} drill(s); recovery time objective: {o}.</p>",
            t = esc(target),
            n = drills.len(),
            o = objective.map_or(
                "none set (<code>recovery_time_objective_secs</code>)".into(),
                |o| format!("{o} s")
            )
        );
        let points: Vec<Point> = drills
            .iter()
            .map(|r| Point {
                number: r.number,
                at_ms: r.started_at_ms,
                secs: r.recovery_secs,
                ok: r.ok,
                over_objective: r.rto_exceeded,
            })
            .collect();
        h.push_str(&chart::svg(target, &points, objective));
        h.push_str("<table class=\"drills\"><tr><th class=\"n\">#</th><th>started</th><th>retrieve</th><th>result</th><th class=\"n\">studies</th><th class=\"n\">match</th><th class=\"n\">coerced</th><th class=\"n\">mismatch</th><th class=\"n\">missing</th><th class=\"n\">extra</th><th class=\"n\">recovery</th><th class=\"n\">MB/s</th></tr>");
        for r in drills {
            let n = |v| r.counts.get(&v).copied().unwrap_or(0);
            let (word, class) = verdict(r);
            let _ = write!(
                h,
                "<tr class=\"drill\" data-verdict=\"{class}\" data-number=\"{}\"><td class=\"n\">{}</td><td>{}</td><td>{}</td><td class=\"verdict {class}\">{word}{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}{}</td><td class=\"n\">{:.1}</td></tr>",
                r.number,
                r.number,
                when(r.started_at_ms, f.now_ms),
                esc(&r.retrieve),
                r.failure
                    .as_deref()
                    .map(|x| format!(": {}", esc(x)))
                    .unwrap_or_default(),
                r.studies.len(),
                n(Verdict::Match),
                n(Verdict::Coerced),
                n(Verdict::Mismatch),
                n(Verdict::Missing),
                n(Verdict::Extra),
                super::seconds(r.recovery_secs),
                r.rto_secs.map_or(String::new(), |o| format!(" / {o} s")),
                r.mb_per_s
            );
        }
        h.push_str("</table>");
        let findings: Vec<_> = drills
            .iter()
            .flat_map(|r| r.studies.iter().map(move |s| (r, s)))
            .flat_map(|(r, s)| s.findings.iter().map(move |x| (r, s, x)))
            .take(200)
            .collect();
        if !findings.is_empty() {
            h.push_str("<h3>What the drills found</h3><table class=\"drill-findings\"><tr><th>drill</th><th>study</th><th>SOP instance</th><th>verdict</th><th>detail</th></tr>");
            for (r, s, x) in findings {
                let _ = write!(
                    h,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"bad\">{:?}</td><td>{}</td></tr>",
                    r.number,
                    esc(&s.study_instance_uid),
                    esc(&x.sop_instance_uid),
                    x.verdict,
                    esc(&x.detail)
                );
            }
            h.push_str("</table>");
        }
        h.push_str("</section>");
    }
    h
}
