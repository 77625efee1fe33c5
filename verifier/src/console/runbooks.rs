//! The on-call runbooks (`ops/runbooks/*.md`), built into the binary and
//! served as HTML, so that an alert on the console links to what to do even
//! when the wiki and the repository are out of reach. Raw HTML in them is
//! shown as text; a runbook named in the text (`stuck-queue.md`) becomes a
//! link to it.

use pulldown_cmark::{Event, Options, Parser, html};

use super::{Frame, esc};

/// Every runbook: (name, Markdown).
pub const RUNBOOKS: &[(&str, &str)] = &[
    ("README", include_str!("../../../ops/runbooks/README.md")),
    (
        "disk-full",
        include_str!("../../../ops/runbooks/disk-full.md"),
    ),
    (
        "drill-failed",
        include_str!("../../../ops/runbooks/drill-failed.md"),
    ),
    (
        "duplicate-ae-title",
        include_str!("../../../ops/runbooks/duplicate-ae-title.md"),
    ),
    (
        "failback",
        include_str!("../../../ops/runbooks/failback.md"),
    ),
    (
        "failover",
        include_str!("../../../ops/runbooks/failover.md"),
    ),
    (
        "link-diagnosis",
        include_str!("../../../ops/runbooks/link-diagnosis.md"),
    ),
    (
        "restore-from-bucket",
        include_str!("../../../ops/runbooks/restore-from-bucket.md"),
    ),
    (
        "stuck-queue",
        include_str!("../../../ops/runbooks/stuck-queue.md"),
    ),
    (
        "tls-certificate-renewal",
        include_str!("../../../ops/runbooks/tls-certificate-renewal.md"),
    ),
];

/// The runbook of an alert kind (as in `ops/runbooks/README.md`); None:
/// the index of runbooks.
pub fn for_alert(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "source_silent" => "link-diagnosis",
        "circuit_open" | "queue_stuck" | "dead_letters" | "commitment_overdue" => "stuck-queue",
        "storage_unhealthy" => "disk-full",
        "spool_low_space" => "disk-full",
        "duplicate_ae_title" => "duplicate-ae-title",
        "drill_failed" | "drill_over_objective" => "drill-failed",
        "certificate_expiring" => "tls-certificate-renewal",
        _ => return None,
    })
}

/// The title of a runbook: its first heading.
fn title(markdown: &str) -> &str {
    markdown
        .lines()
        .find_map(|l| l.strip_prefix("# "))
        .unwrap_or("runbook")
        .trim()
}

/// The list of runbooks.
pub fn index_page(f: &Frame) -> String {
    let mut h = String::from(
        "<h1>Runbooks</h1><p>For the administrator on call: find the alert or the symptom in <a href=\"/runbooks/README\">the index</a>, then follow that runbook's steps in order.</p><section><ul>",
    );
    for (name, md) in RUNBOOKS {
        h.push_str(&format!(
            "<li><a href=\"/runbooks/{n}\">{t}</a> <span class=\"muted\">({n}.md)</span></li>",
            n = esc(name),
            t = esc(title(md))
        ));
    }
    h.push_str("</ul></section>");
    f.page("Runbooks", "runbooks", None, &h)
}

/// A runbook as a page (None: no runbook of that name).
pub fn page(f: &Frame, name: &str) -> Option<String> {
    let name = name.strip_suffix(".md").unwrap_or(name);
    let (_, md) = RUNBOOKS.iter().find(|(n, _)| *n == name)?;
    Some(f.page(
        title(md),
        "runbooks",
        None,
        &format!(
            "<article class=\"runbook\" id=\"runbook-{}\">{}</article>",
            esc(name),
            render(md)
        ),
    ))
}

/// Markdown to HTML: tables on, raw HTML shown as text, runbook names
/// linked.
pub fn render(markdown: &str) -> String {
    let events = Parser::new_ext(markdown, Options::ENABLE_TABLES).flat_map(|e| match e {
        Event::Html(s) | Event::InlineHtml(s) => vec![Event::Text(s)],
        Event::Text(s) => link_names(&s),
        Event::Code(s) => {
            let linked = link_names(&s);
            if linked.len() == 1 {
                vec![Event::Code(s)]
            } else {
                linked
                    .into_iter()
                    .map(|e| match e {
                        Event::Text(t) => Event::Code(t),
                        other => other,
                    })
                    .collect()
            }
        }
        other => vec![other],
    });
    let mut out = String::new();
    html::push_html(&mut out, events);
    out
}

/// `text` with every `<runbook>.md` in it turned into a link.
fn link_names(text: &str) -> Vec<Event<'static>> {
    let mut out = Vec::new();
    let mut rest = text;
    'scan: while !rest.is_empty() {
        if let Some(at) = rest.find(".md") {
            let start = rest[..at]
                .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                .map_or(0, |i| i + 1);
            let name = &rest[start..at];
            if RUNBOOKS.iter().any(|(n, _)| *n == name && *n != "README") {
                out.push(Event::Text(rest[..start].to_string().into()));
                out.push(Event::InlineHtml(
                    format!("<a href=\"/runbooks/{name}\">{name}.md</a>").into(),
                ));
                rest = &rest[at + 3..];
                continue 'scan;
            }
            out.push(Event::Text(rest[..at + 3].to_string().into()));
            rest = &rest[at + 3..];
        } else {
            out.push(Event::Text(rest.to_string().into()));
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The mapping agrees with the runbook index of `ops/runbooks/README.md`
    /// for every alert kind it lists.
    #[test]
    fn alert_kinds_map_to_the_runbooks_the_index_names() {
        let (_, readme) = RUNBOOKS[0];
        let mut seen = 0;
        for line in readme.lines() {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            if cells.len() == 5
                && cells[1].chars().all(|c| c.is_ascii_lowercase() || c == '_')
                && !cells[1].is_empty()
            {
                let file = cells[3].trim_end_matches(".md");
                assert_eq!(for_alert(cells[1]), Some(file), "{line}");
                seen += 1;
            }
        }
        assert!(seen >= 9, "{seen}");
    }

    #[test]
    fn renders_markdown_links_names_and_escapes_html() {
        let h = render(
            "# T\n\nSee stuck-queue.md, then `disk-full.md` and notes.md.\n\n<script>x</script>\n",
        );
        assert!(h.contains("<h1>T</h1>"), "{h}");
        assert!(
            h.contains("<a href=\"/runbooks/stuck-queue\">stuck-queue.md</a>"),
            "{h}"
        );
        assert!(
            h.contains("<a href=\"/runbooks/disk-full\">disk-full.md</a>"),
            "{h}"
        );
        assert!(h.contains("notes.md"), "{h}");
        assert!(!h.contains("<script>"), "{h}");
        assert!(h.contains("&lt;script&gt;"), "{h}");
    }

    #[test]
    fn every_runbook_renders_with_a_title() {
        let f = Frame {
            device: "d".into(),
            admin: None,
            now_ms: 0,
        };
        for (name, _) in RUNBOOKS {
            let p = page(&f, name).unwrap();
            assert!(p.contains("<h1>"), "{name}");
        }
        assert!(page(&f, "stuck-queue.md").is_some());
        assert!(page(&f, "../Cargo.toml").is_none());
    }
}
