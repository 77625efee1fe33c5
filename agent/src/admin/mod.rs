//! The admin HTTP endpoint of a running agent (loopback only, no
//! authentication): `/status` (JSON), `/metrics` (Prometheus text) and
//! `/findings` (JSON: every instance version kept with findings), and the
//! routes extensions add (the verifier's drills and the console).
//!
//! Loopback only is enforced by the configuration. Against a web page that
//! points a browser on this host at it, every answer carries headers that
//! forbid scripts, framing and sniffing, and a request whose `Host` is a
//! name other than `localhost` is refused (421): a DNS-rebinding page
//! reaches the port under its own name. IP literals, `localhost` and no
//! `Host` at all (HTTP/1.0) pass, so Prometheus, curl, an SSH tunnel and a
//! reverse proxy that forwards to `127.0.0.1:<port>` work as before.
//!
//! The same [`Status`] is computed offline from the index by
//! `pacs-mirror status` when no agent is running.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::replicate::Health;
use crate::replicate::status::{TargetStatus, targets_status};
use crate::scp::store::Ingest;
use pacs_mirror_store::index::{Index, IndexError};

pub mod rates;

/// Ingest counters since start.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestStatus {
    /// New objects stored.
    pub stored: u64,
    /// Identical re-sends.
    pub duplicates: u64,
    /// New versions of held SOP instances.
    pub conflicts: u64,
    /// Stores answered with a failure status.
    pub failed: u64,
    /// New objects kept with findings (not conformant).
    #[serde(default)]
    pub kept_with_findings: u64,
    /// Bytes of every store answered Success.
    #[serde(default)]
    pub received_bytes: u64,
    /// Stores answered Success per minute, over the last minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objects_per_min: Option<u64>,
    /// Bytes received per second, over the last minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_per_sec: Option<u64>,
    /// Storage commitment asked of the agent (SCP role) since start.
    #[serde(default)]
    pub commitment: CommitmentStatus,
}

/// Storage commitment requests the agent answered (SCP role) since start.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitmentStatus {
    /// Requests (N-ACTION) answered.
    pub requests: u64,
    /// Objects reported committed.
    pub committed: u64,
    /// Objects reported failed.
    pub failed: u64,
    /// Reports delivered on a new association.
    pub reports_sent: u64,
    /// Reports that could not be delivered.
    pub reports_undelivered: u64,
}

/// Non-conformant objects held: what the index records of them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FindingsStatus {
    /// Instance versions held with at least one finding of each class
    /// (by class name: `pacs-mirror findings list` names them).
    pub by_class: BTreeMap<String, u64>,
    /// Instance versions held with no (usable) Study Instance UID: study
    /// level checks (drills, failover check) cannot reach them.
    pub without_study: u64,
}

impl FindingsStatus {
    /// From the index (costs what is flagged, not the archive).
    pub fn from_index(index: &Index) -> Result<Self, IndexError> {
        Ok(FindingsStatus {
            by_class: index
                .finding_counts()?
                .into_iter()
                .map(|(c, n)| (c.name().to_string(), n))
                .collect(),
            without_study: index.without_study()?,
        })
    }
}

/// What `/status` answers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// pacs-mirror version.
    pub version: String,
    /// Whether this comes from a running agent (false: read from the index).
    pub running: bool,
    /// Start time (Unix ms), running agent only.
    pub started_at_ms: Option<u64>,
    /// Listening addresses and AE titles.
    pub listeners: Vec<String>,
    /// Configuration warnings an operator should see (e.g. a listener
    /// reachable from the network that accepts any calling AE).
    pub warnings: Vec<String>,
    /// Ingest counters since start (running agent only).
    pub ingest: IngestStatus,
    /// Bytes in the spool.
    pub spool_bytes: u64,
    /// Per replication target.
    pub targets: BTreeMap<String, TargetStatus>,
    /// Alert conditions that hold now (running agent only).
    #[serde(default)]
    pub alerts: Vec<crate::monitor::Firing>,
    /// Objects kept although not conformant.
    #[serde(default)]
    pub findings: FindingsStatus,
    /// The background workers, by name (running agent only).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub workers: BTreeMap<String, crate::worker::WorkerStatus>,
    /// DICOM TLS: this device's certificate and the failed handshakes
    /// (running agent with TLS only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::tls::TlsStatus>,
    /// A failed flush latched the store: every store is refused until a
    /// restart re-verifies (running agent only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_unhealthy: Option<pacs_mirror_store::commit::Latched>,
    /// The index could not be read for this answer (the figures that come
    /// from it, targets and findings, are missing); the rest still answers,
    /// so an operator sees a failed index instead of an HTTP error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_unreadable: Option<String>,
}

/// Extra Prometheus text for `/metrics`.
pub type MetricsFn = Arc<dyn Fn() -> String + Send + Sync>;

/// What the endpoint reads.
pub struct Source {
    /// The index.
    pub index: Index,
    /// Ingest (counters, spool).
    pub ingest: Arc<Ingest>,
    /// Start time (Unix ms).
    pub started_at_ms: u64,
    /// Listening addresses and AE titles.
    pub listeners: Vec<String>,
    /// Configuration warnings.
    pub warnings: Vec<String>,
    /// Every target by name, with the live health of DICOM targets.
    pub targets: Vec<(String, Option<Health>)>,
    /// The monitors (alerts firing, their metrics).
    pub monitor: Option<Arc<crate::monitor::Monitor>>,
    /// The background workers.
    pub workers: crate::worker::Workers,
    /// This device's DICOM TLS material, if any.
    pub tls: Option<Arc<pacs_mirror_dicom::tls::Tls>>,
    /// Ingest and per-target rates.
    pub rates: Rates,
}

/// The meters behind the rates in [`Status`].
#[derive(Debug, Default)]
pub struct Rates {
    ingest: rates::Pair,
    targets: BTreeMap<String, rates::Pair>,
}

impl Source {
    /// Sample the counters behind the rates (cheap: no index read).
    pub fn sample(&self, now_ms: u64) {
        let c = &self.ingest.counters;
        self.rates.ingest.sample(
            now_ms,
            c.stored.load(Ordering::Relaxed)
                + c.duplicates.load(Ordering::Relaxed)
                + c.conflicts.load(Ordering::Relaxed),
            c.received_bytes.load(Ordering::Relaxed),
        );
        for (name, health) in &self.targets {
            let Some(h) = health else { continue };
            let (objects, bytes) = {
                let h = h.lock().unwrap_or_else(|p| p.into_inner());
                (h.delivered_objects, h.delivered_bytes)
            };
            if let Some(m) = self.rates.targets.get(name) {
                m.sample(now_ms, objects, bytes);
            }
        }
    }

    /// The current status.
    pub fn status(&self) -> Result<Status, IndexError> {
        let now = crate::unix_ms();
        self.sample(now);
        let c = &self.ingest.counters;
        let mut index_unreadable = None;
        let mut targets = targets_status(&self.index, &self.targets, now).unwrap_or_else(|e| {
            index_unreadable = Some(e.to_string());
            BTreeMap::new()
        });
        for (name, t) in targets.iter_mut() {
            if let Some(m) = self.rates.targets.get(name) {
                (t.delivered_per_min, t.bytes_per_sec) = m.rates();
            }
        }
        let (objects_per_min, bytes_per_sec) = self.rates.ingest.rates();
        Ok(Status {
            version: env!("CARGO_PKG_VERSION").into(),
            running: true,
            started_at_ms: Some(self.started_at_ms),
            listeners: self.listeners.clone(),
            warnings: self.warnings.clone(),
            ingest: IngestStatus {
                stored: c.stored.load(Ordering::Relaxed),
                duplicates: c.duplicates.load(Ordering::Relaxed),
                conflicts: c.conflicts.load(Ordering::Relaxed),
                failed: c.failed.load(Ordering::Relaxed),
                kept_with_findings: c.kept_with_findings.load(Ordering::Relaxed),
                received_bytes: c.received_bytes.load(Ordering::Relaxed),
                objects_per_min,
                bytes_per_sec,
                commitment: CommitmentStatus {
                    requests: c.commitment_requests.load(Ordering::Relaxed),
                    committed: c.commitment_committed.load(Ordering::Relaxed),
                    failed: c.commitment_failed.load(Ordering::Relaxed),
                    reports_sent: c.commitment_reports_sent.load(Ordering::Relaxed),
                    reports_undelivered: c.commitment_reports_undelivered.load(Ordering::Relaxed),
                },
            },
            findings: FindingsStatus::from_index(&self.index).unwrap_or_else(|e| {
                index_unreadable.get_or_insert(e.to_string());
                FindingsStatus::default()
            }),
            spool_bytes: self.ingest.spool.used_bytes(),
            storage_unhealthy: self.ingest.committer.unhealthy(),
            targets,
            alerts: self
                .monitor
                .as_ref()
                .map(|m| m.firing())
                .unwrap_or_default(),
            workers: self.workers.status(),
            tls: self
                .tls
                .as_ref()
                .map(|t| crate::tls::TlsStatus::of(t, crate::tls::handshake_failures())),
            index_unreadable,
        })
    }
}

/// Prometheus text exposition of a status.
pub fn metrics(status: &Status) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, help: &str, kind: &str, samples: Vec<(String, u64)>| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (labels, v) in samples {
            out.push_str(&format!("{name}{labels} {v}\n"));
        }
    };
    let i = &status.ingest;
    for (name, help, v) in [
        (
            "pacs_mirror_ingest_stored_total",
            "New objects stored since start.",
            i.stored,
        ),
        (
            "pacs_mirror_ingest_duplicates_total",
            "Identical re-sends since start.",
            i.duplicates,
        ),
        (
            "pacs_mirror_ingest_conflicts_total",
            "New versions of held SOP instances since start.",
            i.conflicts,
        ),
        (
            "pacs_mirror_ingest_failed_total",
            "Stores answered with a failure status since start.",
            i.failed,
        ),
        (
            "pacs_mirror_ingest_kept_with_findings_total",
            "New objects kept although not conformant, since start.",
            i.kept_with_findings,
        ),
        (
            "pacs_mirror_commitment_requests_total",
            "Storage commitment requests answered (SCP role) since start.",
            i.commitment.requests,
        ),
        (
            "pacs_mirror_commitment_committed_total",
            "Objects reported committed to senders since start.",
            i.commitment.committed,
        ),
        (
            "pacs_mirror_commitment_failed_total",
            "Objects reported failed (not held) to senders since start.",
            i.commitment.failed,
        ),
        (
            "pacs_mirror_commitment_reports_undelivered_total",
            "Storage commitment reports that could not be delivered since start.",
            i.commitment.reports_undelivered,
        ),
    ] {
        metric(name, help, "counter", vec![(String::new(), v)]);
    }
    metric(
        "pacs_mirror_findings",
        "Instance versions held with findings of the class (kept, not conformant; pacs-mirror findings list).",
        "gauge",
        pacs_mirror_store::index::FindingClass::ALL
            .iter()
            .map(|c| {
                let n = status.findings.by_class.get(c.name()).copied().unwrap_or(0);
                (format!("{{class=\"{}\"}}", c.name()), n)
            })
            .collect(),
    );
    metric(
        "pacs_mirror_instances_without_study",
        "Instance versions held with no usable Study Instance UID (not reachable by study-level drills or failover checks).",
        "gauge",
        vec![(String::new(), status.findings.without_study)],
    );
    metric(
        "pacs_mirror_spool_bytes",
        "Bytes held in the spool.",
        "gauge",
        vec![(String::new(), status.spool_bytes)],
    );
    let per_target = |f: &dyn Fn(&TargetStatus) -> Option<u64>| -> Vec<(String, u64)> {
        status
            .targets
            .iter()
            .filter_map(|(n, t)| f(t).map(|v| (format!("{{target=\"{n}\"}}"), v)))
            .collect()
    };
    metric(
        "pacs_mirror_replication_pending",
        "Objects not yet delivered to the target.",
        "gauge",
        per_target(&|t| Some(t.pending)),
    );
    metric(
        "pacs_mirror_replication_pending_live",
        "Of the pending objects, those arrived in the last 5 minutes (sent before the backlog).",
        "gauge",
        per_target(&|t| Some(t.pending_live)),
    );
    metric(
        "pacs_mirror_replication_pending_bytes",
        "Bytes not yet delivered to the target.",
        "gauge",
        per_target(&|t| Some(t.pending_bytes)),
    );
    metric(
        "pacs_mirror_replication_oldest_pending_age_seconds",
        "Age of the oldest object not yet delivered (0 when none).",
        "gauge",
        per_target(&|t| Some(t.oldest_pending_age_secs.unwrap_or(0))),
    );
    metric(
        "pacs_mirror_replication_delivered",
        "Objects delivered to the target.",
        "gauge",
        per_target(&|t| Some(t.delivered)),
    );
    metric(
        "pacs_mirror_replication_dead_letters",
        "Objects the target refused for good.",
        "gauge",
        per_target(&|t| Some(t.dead_letters)),
    );
    metric(
        "pacs_mirror_replication_circuit_open",
        "1 while the target is unreachable.",
        "gauge",
        per_target(&|t| Some(u64::from(t.circuit_open))),
    );
    metric(
        "pacs_mirror_replication_bytes_per_second",
        "Bytes delivered per second over the last minute (the bandwidth the target uses).",
        "gauge",
        per_target(&|t| t.bytes_per_sec),
    );
    metric(
        "pacs_mirror_replication_max_bandwidth_bytes_per_second",
        "The bandwidth cap in force now (max_bandwidth or its schedule); absent: unlimited.",
        "gauge",
        per_target(&|t| t.max_bandwidth_bytes_per_sec),
    );
    metric(
        "pacs_mirror_replication_associations",
        "DICOM targets: associations open now.",
        "gauge",
        per_target(&|t| t.associations.map(|a| a.in_use as u64)),
    );
    metric(
        "pacs_mirror_replication_association_limit",
        "DICOM targets: associations the sender allows itself now (adapted between 1 and concurrency).",
        "gauge",
        per_target(&|t| t.associations.map(|a| a.limit as u64)),
    );
    metric(
        "pacs_mirror_replication_awaiting_commitment",
        "Targets with storage commitment: objects the mirror stored and has not committed yet.",
        "gauge",
        per_target(&|t| t.commitment.as_ref().map(|c| c.awaiting)),
    );
    metric(
        "pacs_mirror_replication_oldest_awaiting_commitment_age_seconds",
        "Targets with storage commitment: how long the oldest object awaiting commitment has waited.",
        "gauge",
        per_target(&|t| {
            t.commitment
                .as_ref()
                .and_then(|c| c.oldest_awaiting_age_secs)
        }),
    );
    metric(
        "pacs_mirror_replication_uploads_in_flight",
        "Object-store targets: uploads in flight now.",
        "gauge",
        per_target(&|t| t.uploads.map(|a| a.in_use as u64)),
    );
    metric(
        "pacs_mirror_replication_upload_limit",
        "Object-store targets: uploads in flight the sender allows itself now (adapted between 1 and concurrency).",
        "gauge",
        per_target(&|t| t.uploads.map(|a| a.limit as u64)),
    );
    metric(
        "pacs_mirror_replication_last_success_timestamp_seconds",
        "Time of the last delivery.",
        "gauge",
        per_target(&|t| t.last_success_at_ms.map(|ms| ms / 1000)),
    );
    metric(
        "pacs_mirror_config_warnings",
        "Configuration warnings (see /status).",
        "gauge",
        vec![(String::new(), status.warnings.len() as u64)],
    );
    out
}

async fn current(source: &Arc<Source>) -> Result<Status, Response> {
    let s = source.clone();
    match tokio::task::spawn_blocking(move || s.status()).await {
        Ok(Ok(status)) => Ok(status),
        Ok(Err(e)) => Err((StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()),
        Err(e) => Err((StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()),
    }
}

async fn status_handler(State(source): State<Arc<Source>>) -> Response {
    match current(&source).await {
        Ok(s) => axum::Json(s).into_response(),
        Err(r) => r,
    }
}

async fn findings_handler(State(source): State<Arc<Source>>) -> Response {
    let s = source.clone();
    match tokio::task::spawn_blocking(move || s.index.flagged()).await {
        Ok(Ok(list)) => axum::Json(list).into_response(),
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn metrics_handler(
    State((source, extra)): State<(Arc<Source>, Option<MetricsFn>)>,
) -> Response {
    match current(&source).await {
        Ok(s) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            metrics(&s)
                + &source
                    .monitor
                    .as_ref()
                    .map(|m| m.metrics())
                    .unwrap_or_default()
                + &extra.as_ref().map(|f| f()).unwrap_or_default(),
        )
            .into_response(),
        Err(r) => r,
    }
}

impl Rates {
    /// Meters for these targets.
    pub fn for_targets<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        Rates {
            ingest: rates::Pair::default(),
            targets: names
                .into_iter()
                .map(|n| (n.to_string(), rates::Pair::default()))
                .collect(),
        }
    }
}

/// How often the rates are sampled between requests.
const SAMPLE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Serve until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    source: Arc<Source>,
    extra_metrics: Option<MetricsFn>,
    shutdown: CancellationToken,
    routes: Option<Router>,
) -> std::io::Result<()> {
    let sampler = {
        let source = source.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => source.sample(crate::unix_ms()),
                }
            }
        })
    };
    let mut app = Router::new()
        .route("/status", get(status_handler))
        .route("/findings", get(findings_handler))
        .with_state(source.clone())
        .merge(
            Router::new()
                .route("/metrics", get(metrics_handler))
                .with_state((source, extra_metrics)),
        );
    if let Some(r) = routes {
        app = app.merge(r);
    }
    let app = app.layer(axum::middleware::from_fn(guard));
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    sampler.abort();
    served
}

/// Whether a request may be answered, by its `Host` header (see the
/// module header).
pub fn host_allowed(host: Option<&str>) -> bool {
    let Some(host) = host else { return true };
    let name = if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        return rest
            .split(']')
            .next()
            .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok());
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    name.parse::<std::net::IpAddr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || name.to_ascii_lowercase().ends_with(".localhost")
}

async fn guard(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .map(|h| h.to_str().unwrap_or("\u{fffd}").to_string());
    if !host_allowed(host.as_deref()) {
        return (
            StatusCode::MISDIRECTED_REQUEST,
            "this admin endpoint answers requests addressed to an IP address or localhost only (Host header refused)\n",
        )
            .into_response();
    }
    let mut response = next.run(req).await;
    let h = response.headers_mut();
    let set = |h: &mut axum::http::HeaderMap, k: header::HeaderName, v: &'static str| {
        h.insert(k, axum::http::HeaderValue::from_static(v));
    };
    set(
        h,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    );
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::X_FRAME_OPTIONS, "DENY");
    set(h, header::REFERRER_POLICY, "no-referrer");
    if !h.contains_key(header::CACHE_CONTROL) {
        set(h, header::CACHE_CONTROL, "no-store");
    }
    response
}

/// Bind the admin address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ip_literals_and_localhost_as_host() {
        for ok in [
            None,
            Some("127.0.0.1:8080"),
            Some("127.0.0.1"),
            Some("[::1]:8080"),
            Some("localhost:8080"),
            Some("LOCALHOST"),
            Some("console.localhost:1"),
            Some("10.1.2.3:80"),
        ] {
            assert!(host_allowed(ok), "{ok:?}");
        }
        for bad in [
            Some("evil.example:8080"),
            Some("evil.example"),
            Some("localhost.evil.example"),
            Some("[evil]:80"),
            Some("\u{fffd}"),
        ] {
            assert!(!host_allowed(bad), "{bad:?}");
        }
    }

    #[test]
    fn metrics_text_has_one_sample_per_target() {
        let mut s = Status::default();
        s.targets.insert(
            "mirror".into(),
            TargetStatus {
                pending: 3,
                circuit_open: true,
                last_success_at_ms: Some(5_000),
                ..Default::default()
            },
        );
        s.warnings.push("x".into());
        let m = metrics(&s);
        assert!(
            m.contains("pacs_mirror_replication_pending{target=\"mirror\"} 3\n"),
            "{m}"
        );
        assert!(m.contains("pacs_mirror_replication_circuit_open{target=\"mirror\"} 1\n"));
        assert!(m.contains(
            "pacs_mirror_replication_last_success_timestamp_seconds{target=\"mirror\"} 5\n"
        ));
        assert!(m.contains("pacs_mirror_config_warnings 1\n"));
        assert!(m.contains("# TYPE pacs_mirror_ingest_stored_total counter\n"));
    }
}
