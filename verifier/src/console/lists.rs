//! `/dead-letters` (objects a target refused for good) and
//! `/non-conformant` (objects kept byte-exact although not conformant).
//! Each shows at most [`ROWS`] rows and says how many more there are and
//! which command lists them all.

use std::fmt::Write as _;

use pacs_mirror_store::index::hash_hex;

use super::{Console, Frame, esc, when};

/// Rows shown per table.
pub const ROWS: usize = 1000;

/// The dead letters page.
pub fn dead_letters(c: &Console, f: &Frame) -> Result<String, String> {
    let mut h = String::from(
        "<h1>Dead letters</h1><p>Objects a target refused for good (after <code>refused_attempts</code> refusals, or a status that no retry can change). They stay in the spool and are <em>not</em> on the target. Fix the cause (the reason column names the target's answer), then stop the agent and run <code>pacs-mirror dead-letter retry --target NAME</code>, or see the <a href=\"/runbooks/stuck-queue\">stuck-queue runbook</a>.</p>",
    );
    let mut total = 0;
    for target in &c.config.targets {
        let name = target.name();
        let letters = c
            .index
            .dead_letters(name)
            .map_err(|e| format!("reading the dead letters of {name}: {e}"))?;
        total += letters.len();
        let _ = write!(
            h,
            "<section class=\"target-dead\" id=\"target-{t}\" data-target=\"{t}\"><h2>{t}: {n} dead letter(s)</h2>",
            t = esc(name),
            n = letters.len()
        );
        if letters.is_empty() {
            h.push_str("<p class=\"ok\">None.</p></section>");
            continue;
        }
        h.push_str("<table class=\"dead-letters\"><tr><th>SOP instance</th><th>study</th><th>from</th><th>queued</th><th>given up</th><th class=\"n\">attempts</th><th>reason</th><th>object (blake3)</th></tr>");
        for (hash, letter) in letters.iter().take(ROWS) {
            let hex = hash_hex(hash);
            let object = c
                .index
                .object(hash)
                .map_err(|e| format!("reading object {hex}: {e}"))?;
            let sop = object
                .as_ref()
                .map(|o| o.sop_instance_uid.clone())
                .unwrap_or_default();
            let instance = if sop.is_empty() {
                None
            } else {
                c.index
                    .versions(&sop)
                    .map_err(|e| format!("reading instance {sop}: {e}"))?
                    .into_iter()
                    .find(|v| v.blake3 == hex)
            };
            let _ = write!(
                h,
                "<tr class=\"dead-letter\" data-target=\"{}\"><td class=\"sop\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"reason bad\">{}</td><td><code>{}</code></td></tr>",
                esc(name),
                esc(&sop),
                esc(instance
                    .as_ref()
                    .map_or("", |i| i.study_instance_uid.as_str())),
                esc(instance.as_ref().map_or("", |i| i.calling_ae.as_str())),
                when(letter.enqueued_at_ms, f.now_ms),
                when(letter.failed_at_ms, f.now_ms),
                letter.attempts,
                esc(&letter.reason),
                &hex[..16],
            );
        }
        h.push_str("</table>");
        if letters.len() > ROWS {
            let _ = write!(
                h,
                "<p>… and {} more: <code>pacs-mirror dead-letter list --target {}</code> lists them all.</p>",
                letters.len() - ROWS,
                esc(name)
            );
        }
        h.push_str("</section>");
    }
    if c.config.targets.is_empty() {
        h.push_str("<section><p>No replication target is configured.</p></section>");
    }
    let title = format!("Dead letters ({total})");
    Ok(f.page(&title, "dead-letters", None, &h))
}

/// The non-conformant objects page.
pub fn non_conformant(c: &Console, f: &Frame) -> Result<String, String> {
    let list = c
        .index
        .flagged()
        .map_err(|e| format!("reading the objects kept with findings: {e}"))?;
    let mut by_class: std::collections::BTreeMap<&str, usize> = Default::default();
    for r in &list {
        for x in &r.findings {
            *by_class.entry(x.class.name()).or_default() += 1;
        }
    }
    let mut h = format!(
        "<h1>Non-conformant objects</h1><p>Objects kept byte-exact as received although they do not conform to the standard (a faithful copy, not a validator): they are stored, replicated and drilled like any other. What is wrong with each is listed so that the sender can be fixed. <code>pacs-mirror findings list</code> gives the same list.</p><section><h2 id=\"findings-total\">{} instance version(s) kept with findings</h2>",
        list.len()
    );
    if !by_class.is_empty() {
        h.push_str("<table class=\"finding-classes\"><tr><th>class</th><th class=\"n\">instances</th></tr>");
        for (class, n) in &by_class {
            let _ = write!(
                h,
                "<tr><td><code>{}</code></td><td class=\"n\">{n}</td></tr>",
                esc(class)
            );
        }
        h.push_str("</table>");
    }
    h.push_str("</section>");
    if !list.is_empty() {
        h.push_str("<section><table id=\"findings\"><tr><th>SOP instance</th><th>study</th><th>from</th><th>received</th><th>findings</th><th>object (blake3)</th></tr>");
        for r in list.iter().take(ROWS) {
            let findings: Vec<String> = r
                .findings
                .iter()
                .map(|x| {
                    format!(
                        "<li><code>{}</code>: {}</li>",
                        esc(x.class.name()),
                        esc(&x.detail)
                    )
                })
                .collect();
            let dash = |s: &str| {
                if s.is_empty() {
                    "—".to_string()
                } else {
                    esc(s)
                }
            };
            let _ = write!(
                h,
                "<tr class=\"finding\"><td class=\"sop\">{}</td><td>{}</td><td>{} <span class=\"muted\">{}</span></td><td>{}</td><td><ul>{}</ul></td><td><code>{}</code></td></tr>",
                dash(&r.sop_instance_uid),
                dash(&r.study_instance_uid),
                dash(&r.calling_ae),
                esc(&r.source_ip),
                when(r.received_at_ms, f.now_ms),
                findings.join(""),
                esc(&r.blake3[..16.min(r.blake3.len())]),
            );
        }
        h.push_str("</table>");
        if list.len() > ROWS {
            let _ = write!(
                h,
                "<p>… and {} more: <code>pacs-mirror findings list</code>.</p>",
                list.len() - ROWS
            );
        }
        h.push_str("</section>");
    }
    Ok(f.page("Non-conformant objects", "non-conformant", None, &h))
}
