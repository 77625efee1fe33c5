//! The operator's console: read-only web pages on the agent's admin
//! endpoint, rendered on the server (no script, no external asset: it
//! works offline on a hospital LAN, and the admin endpoint's content
//! security policy forbids anything else).
//!
//! - `/` ([`overview`]): agent health, ingest rate, each target's queue,
//!   circuit and bandwidth, the alerts firing (each linked to its runbook),
//!   the last drill of each target against its objective, failover
//!   readiness per target.
//! - `/drills` ([`drills`]): the drill history, a chart per target (time,
//!   recovery seconds, the objective, failed drills marked) and a table.
//! - `/dead-letters` and `/non-conformant` ([`lists`]): what a target
//!   refused for good, and what was kept although not conformant.
//! - `/runbooks/<name>` ([`runbooks`]): the on-call runbooks of
//!   `ops/runbooks/`, built into the binary.
//!
//! It lives in the verifier because it is the one crate that sees both the
//! agent's status and the drills; it only reads (the index, the status the
//! admin endpoint computes) and has no action: changes go through the CLI.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use pacs_mirror_agent::admin::Source;
use pacs_mirror_config::Config;
use pacs_mirror_store::index::Index;

pub mod chart;
pub mod drills;
pub mod lists;
pub mod overview;
pub mod runbooks;

/// What the console reads.
pub struct Console {
    /// The status `/status` answers.
    pub status: Arc<Source>,
    /// The index (drills, dead letters, findings).
    pub index: Index,
    /// The configuration (targets, drill objectives, the admin address).
    pub config: Config,
}

impl Console {
    fn frame(&self) -> Frame {
        Frame {
            device: self.config.device.name.clone(),
            admin: self.config.admin.as_ref().map(|a| a.listen),
            now_ms: pacs_mirror_agent::unix_ms(),
        }
    }
}

/// The pages' routes.
pub fn routes(console: Arc<Console>) -> Router {
    Router::new()
        .route("/", get(overview_page))
        .route("/drills", get(drills_page))
        .route("/dead-letters", get(dead_letters_page))
        .route("/non-conformant", get(non_conformant_page))
        .route("/runbooks", get(runbook_index))
        .route("/runbooks/{name}", get(runbook_page))
        .with_state(console)
}

/// Run a page's reads off the async threads; an index error is a 500 page
/// saying so.
async fn blocking(
    console: &Arc<Console>,
    page: fn(&Console, &Frame) -> Result<String, String>,
) -> Response {
    let c = console.clone();
    let frame = c.frame();
    match tokio::task::spawn_blocking(move || page(&c, &frame)).await {
        Ok(Ok(html)) => Html(html).into_response(),
        Ok(Err(e)) => error_page(&console.frame(), &e),
        Err(e) => error_page(&console.frame(), &e.to_string()),
    }
}

fn error_page(frame: &Frame, error: &str) -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Html(frame.page(
            "Error",
            "",
            None,
            &format!(
                "<h1>This page could not be read</h1><p class=\"bad\">{}</p><p>The agent's log has the details; <code>pacs-mirror status</code> reads the same figures.</p>",
                esc(error)
            ),
        )),
    )
        .into_response()
}

async fn overview_page(State(c): State<Arc<Console>>) -> Response {
    blocking(&c, overview::page).await
}

async fn drills_page(State(c): State<Arc<Console>>) -> Response {
    blocking(&c, drills::page).await
}

async fn dead_letters_page(State(c): State<Arc<Console>>) -> Response {
    blocking(&c, lists::dead_letters).await
}

async fn non_conformant_page(State(c): State<Arc<Console>>) -> Response {
    blocking(&c, lists::non_conformant).await
}

async fn runbook_index(State(c): State<Arc<Console>>) -> Response {
    Html(runbooks::index_page(&c.frame())).into_response()
}

async fn runbook_page(State(c): State<Arc<Console>>, Path(name): Path<String>) -> Response {
    match runbooks::page(&c.frame(), &name) {
        Some(html) => Html(html).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Html(c.frame().page(
                "No such runbook",
                "runbooks",
                None,
                &format!(
                    "<h1>No runbook {}</h1><p><a href=\"/runbooks\">Every runbook</a></p>",
                    esc(&name)
                ),
            )),
        )
            .into_response(),
    }
}

/// What every page shows around its content.
pub struct Frame {
    /// The device name.
    pub device: String,
    /// Where the admin endpoint listens.
    pub admin: Option<SocketAddr>,
    /// When the page is made (Unix ms).
    pub now_ms: u64,
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0;color:#1d1d1f;background:#f6f7f9}\
header{background:#12324a;color:#fff;padding:.6em 1.5em;display:flex;gap:2em;align-items:baseline;flex-wrap:wrap}\
header a{color:#cfe3f5;text-decoration:none;margin-right:1.2em}header a.here{color:#fff;font-weight:600;border-bottom:2px solid #fff}\
header .device{font-weight:700;font-size:1.1em}main{padding:1em 1.5em;max-width:1400px}\
section{background:#fff;border:1px solid #dde1e6;border-radius:6px;padding:.6em 1em;margin:0 0 1em}\
h1{font-size:1.4em;margin:.3em 0}h2{font-size:1.1em;margin:.3em 0 .5em}\
table{border-collapse:collapse;width:100%;font-size:.92em}td,th{border-bottom:1px solid #e6e8eb;padding:.3em .5em;text-align:left;vertical-align:top}\
th{background:#f0f2f5;font-weight:600}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}\
.ok{color:#176b2c}.bad{color:#b00020;font-weight:600}.warn{color:#9a5b00;font-weight:600}.muted{color:#667}\
.pill{display:inline-block;padding:.15em .7em;border-radius:1em;font-weight:700}.pill.ok{background:#dff3e4}.pill.bad{background:#fde2e4}.pill.warn{background:#fff1d6}\
ul.alerts{list-style:none;padding:0;margin:0}ul.alerts li{border-left:4px solid #b00020;background:#fff5f6;margin:.3em 0;padding:.4em .7em}\
code{background:#f0f2f5;padding:0 .25em;border-radius:3px}footer{color:#667;font-size:.85em;padding:0 1.5em 2em}\
.runbook{max-width:60em;line-height:1.45}.runbook pre{background:#f0f2f5;padding:.6em;overflow:auto}\
svg.chart{background:#fff;max-width:100%;height:auto}";

const NAV: &[(&str, &str, &str)] = &[
    ("overview", "/", "Overview"),
    ("drills", "/drills", "Drills"),
    ("dead-letters", "/dead-letters", "Dead letters"),
    ("non-conformant", "/non-conformant", "Non-conformant"),
    ("runbooks", "/runbooks", "Runbooks"),
];

impl Frame {
    /// A whole page: `here` names the navigation entry to mark,
    /// `refresh_secs` reloads the page (the overview).
    pub fn page(&self, title: &str, here: &str, refresh_secs: Option<u32>, body: &str) -> String {
        let mut h = String::with_capacity(body.len() + 4096);
        let _ = write!(
            h,
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
        );
        if let Some(s) = refresh_secs {
            let _ = write!(h, "<meta http-equiv=\"refresh\" content=\"{s}\">");
        }
        let _ = write!(
            h,
            "<title>{} — pacs-mirror {}</title><style>{STYLE}</style></head><body><header><span class=\"device\">pacs-mirror · {}</span><nav>",
            esc(title),
            esc(&self.device),
            esc(&self.device)
        );
        for (id, href, label) in NAV {
            let _ = write!(
                h,
                "<a href=\"{href}\"{}>{label}</a>",
                if *id == here {
                    " class=\"here\" aria-current=\"page\""
                } else {
                    ""
                }
            );
        }
        h.push_str("</nav></header><main>");
        h.push_str(body);
        let _ = write!(
            h,
            "</main><footer>pacs-mirror {} · page made {} · read-only console{}{} · the same figures: <code>pacs-mirror status</code>, <a href=\"/status\">/status</a>, <a href=\"/metrics\">/metrics</a></footer></body></html>",
            env!("CARGO_PKG_VERSION"),
            iso(self.now_ms),
            self.admin
                .map(|a| format!(
                    " · admin endpoint on {a}, loopback only (from another host: an SSH tunnel, e.g. <code>ssh -L {p}:{a} host</code>)",
                    p = a.port()
                ))
                .unwrap_or_default(),
            refresh_secs
                .map(|s| format!(" · refreshes every {s} s"))
                .unwrap_or_default(),
        );
        h
    }
}

/// HTML-escaped text.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() && c != '\n' && c != '\t' => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// ISO 8601, UTC, to the second.
pub use pacs_mirror_agent::iso_utc as iso;

/// A span of seconds in words: "42 s", "7 min", "3.5 h", "2.0 d".
pub fn span(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s} s"),
        s if s < 7_200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{:.1} h", s as f64 / 3600.0),
        s => format!("{:.1} d", s as f64 / 86_400.0),
    }
}

/// A time as ISO 8601 (UTC) and how long ago, in a `<time>` element.
pub fn when(ms: u64, now_ms: u64) -> String {
    format!(
        "<time datetime=\"{i}\" title=\"{i}\">{i}</time> <span class=\"muted\">({} ago)</span>",
        span(now_ms.saturating_sub(ms) / 1000),
        i = iso(ms)
    )
}

/// Seconds measured: "0.12 s", "4.5 s", "73 s".
pub fn seconds(s: f64) -> String {
    if s < 1.0 {
        format!("{s:.2} s")
    } else if s < 10.0 {
        format!("{s:.1} s")
    } else {
        format!("{s:.0} s")
    }
}

/// Bytes in MB or GB.
pub fn size(bytes: u64) -> String {
    if bytes >= 10_000_000_000 {
        format!("{:.1} GB", bytes as f64 / 1e9)
    } else {
        format!("{:.1} MB", bytes as f64 / 1e6)
    }
}

/// A rate of bytes per second as MB/s or Mbit/s.
pub fn bandwidth(bytes_per_sec: u64) -> String {
    format!(
        "{:.2} MB/s ({:.1} Mbit/s)",
        bytes_per_sec as f64 / 1e6,
        bytes_per_sec as f64 * 8.0 / 1e6
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_quotes_and_controls() {
        assert_eq!(
            esc("<a href=\"x\">'&'</a>\u{1b}[31m"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;\\u{1b}[31m"
        );
    }

    #[test]
    fn times_and_spans() {
        assert_eq!(iso(1_795_392_000_000), "2026-11-23T00:00:00Z");
        assert_eq!(span(59), "59 s");
        assert_eq!(span(600), "10 min");
        assert_eq!(span(3 * 3600 + 1800), "3.5 h");
        assert_eq!(span(3 * 86_400), "3.0 d");
        assert!(when(1_795_392_000_000, 1_795_392_060_000).contains("(60 s ago)"));
    }
}
