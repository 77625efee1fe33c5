//! Drills inside the running agent: the cron schedules of `[[drill]]`, the
//! admin routes (`/drills.json`, `POST /drills/run`,
//! which `pacs-mirror drill` uses while the agent runs), the drill gauges in
//! `/metrics`, and the alerts. Also the pieces the `drill` command shares.
//!
//! One drill runs at a time per agent (a lock), so a scheduled drill and an
//! operator's never compete for the target; alerts never block anything.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use pacs_mirror_agent::alert::Alerter;
use pacs_mirror_agent::app::{self, Extension, Running};
use pacs_mirror_agent::bucket::{Bucket, BucketSettings};
use pacs_mirror_agent::scp::inbox::DrillInbox;
use pacs_mirror_config::{Config, DrillConfig, Retrieve, Target};
use pacs_mirror_store::index::Index;
use pacs_mirror_store::spool::Spool;

use crate::drill::{self, DrillReport, DrillSettings, DrillTarget, MoveTarget, Verdict};

/// Whether the drill of `target` retrieves by C-MOVE (and so needs the
/// drill receiver served).
pub fn uses_c_move(config: &Config, target: &str) -> bool {
    config
        .drills
        .iter()
        .any(|d| d.target == target && d.retrieve == Retrieve::CMove)
        && config
            .targets
            .iter()
            .any(|t| t.name() == target && matches!(t, Target::Dicom { .. }))
}

/// Why a target cannot be drilled as configured.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// No such target.
    #[error("no target named {name:?} (targets: {known:?})")]
    Unknown {
        /// The name asked for.
        name: String,
        /// The configured targets.
        known: Vec<String>,
    },
    /// Its remote AE has no connection to use.
    #[error("target {0:?}: its remote AE has no usable connection")]
    NoConnection(String),
    /// A C-MOVE drill without a destination.
    #[error("the drill of {0:?} is retrieve = \"c-move\" without a move_destination")]
    NoMoveDestination(String),
    /// A C-MOVE drill to an AE this process does not serve.
    #[error(
        "the drill of {name:?} is a C-MOVE to {destination}, which is not served here: it needs drill_receiver = true and an installed network connection"
    )]
    DestinationNotServed {
        /// The target.
        name: String,
        /// The move destination AE.
        destination: String,
    },
    /// The bucket cannot be opened.
    #[error(transparent)]
    Bucket(#[from] pacs_mirror_agent::bucket::BucketError),
    /// The target is reached over TLS and the TLS files are unusable.
    #[error(transparent)]
    Tls(#[from] pacs_mirror_agent::tls::TlsLoadError),
}

/// Why a drill could not run (a drill that ran and failed is a report).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The target cannot be drilled as configured.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// The drill could not start or read the index.
    #[error(transparent)]
    Drill(#[from] drill::DrillError),
}

/// How `target` is reached by a drill. A C-MOVE drill needs the inbox of
/// the drill receiver (the agent's, or one the caller serves).
pub fn drill_target(
    config: &Config,
    name: &str,
    timeout: Duration,
    inbox: Option<&Arc<DrillInbox>>,
) -> Result<DrillTarget, TargetError> {
    let Some(t) = config.targets.iter().find(|t| t.name() == name) else {
        return Err(TargetError::Unknown {
            name: name.to_string(),
            known: config
                .targets
                .iter()
                .map(|t| t.name().to_string())
                .collect(),
        });
    };
    Ok(match t {
        Target::Dicom {
            remote_ae,
            calling_ae,
            ..
        } => {
            let peer = app::remote_peer(
                config,
                remote_ae,
                calling_ae.as_deref(),
                &app::default_calling_ae(config),
                timeout.as_secs(),
            )
            .map_err(|e| match e {
                app::PeerError::Tls(e) => TargetError::Tls(e),
                _ => TargetError::NoConnection(name.to_string()),
            })?;
            let drill = config.drills.iter().find(|d| d.target == name);
            match drill.filter(|d| d.retrieve == Retrieve::CMove) {
                None => DrillTarget::Dicom(peer),
                Some(d) => {
                    let destination = d
                        .move_destination
                        .as_deref()
                        .map(|s| s.trim().to_string())
                        .ok_or_else(|| TargetError::NoMoveDestination(name.to_string()))?;
                    let inbox =
                        inbox
                            .cloned()
                            .ok_or_else(|| TargetError::DestinationNotServed {
                                name: name.to_string(),
                                destination: destination.clone(),
                            })?;
                    let callers = config
                        .remote_ae(remote_ae)
                        .map(|(device, _)| {
                            device
                                .network_aes
                                .iter()
                                .map(|a| a.ae_title.trim().to_string())
                                .collect()
                        })
                        .unwrap_or_default();
                    DrillTarget::DicomMove(MoveTarget {
                        peer,
                        destination,
                        callers,
                        inbox,
                    })
                }
            }
        }
        Target::ObjectStore { url, options, .. } => {
            DrillTarget::Bucket(Arc::new(Bucket::open(&BucketSettings {
                url: url.clone(),
                options: options
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                timeout,
            })?))
        }
    })
}

/// The drill settings of a target: its `[[drill]]` table, or defaults.
pub fn settings_for(config: &Config, target: &str, studies: &[String]) -> DrillSettings {
    let d = config
        .drills
        .iter()
        .find(|d| d.target == target)
        .cloned()
        .unwrap_or(DrillConfig {
            target: target.into(),
            schedule: None,
            random_studies: 2,
            rotation: None,
            newest_study: true,
            recovery_time_objective_secs: None,
            seed: None,
            timeout_secs: 60,
            retrieve: Retrieve::CGet,
            move_destination: None,
        });
    DrillSettings {
        target: target.into(),
        random_studies: d.random_studies,
        rotation: d.rotation.unwrap_or(0),
        newest_study: d.newest_study,
        studies: studies.to_vec(),
        seed: d.seed,
        rto_secs: d.recovery_time_objective_secs,
        timeout: Duration::from_secs(d.timeout_secs),
    }
}

/// The alerter of `[alerts]` (call inside a runtime).
pub fn alerter(config: &Config) -> Alerter {
    Alerter::from_config(config)
}

/// Alert on a failed drill or one over its objective.
pub fn alert_on(alerter: &Alerter, r: &DrillReport) {
    if r.rto_exceeded {
        alerter.raise("drill_over_objective", &r.target, r.summary());
    } else if !r.ok {
        alerter.raise("drill_failed", &r.target, r.summary());
    }
}

/// Hold the target's drill condition in the monitor as its last drill says
/// (a passing drill clears it).
fn hold(monitor: &pacs_mirror_agent::monitor::Monitor, r: &DrillReport) {
    let failed = (!r.ok && !r.rto_exceeded).then(|| r.next_step());
    let slow = r.rto_exceeded.then(|| r.next_step());
    monitor.set_external("drill_failed", &r.target, failed);
    monitor.set_external("drill_over_objective", &r.target, slow);
}

/// Drills of a running agent.
pub struct DrillService {
    monitor: Arc<pacs_mirror_agent::monitor::Monitor>,
    index: Index,
    spool: Arc<Spool>,
    config: Config,
    alerts: Alerter,
    scratch: PathBuf,
    drill_inbox: Option<Arc<DrillInbox>>,
    one_at_a_time: tokio::sync::Mutex<()>,
}

impl DrillService {
    /// Run one drill of `target` now.
    pub async fn run(&self, target: &str, studies: &[String]) -> Result<DrillReport, RunError> {
        let _one = self.one_at_a_time.lock().await;
        let settings = settings_for(&self.config, target, studies);
        let t = drill_target(
            &self.config,
            target,
            settings.timeout,
            self.drill_inbox.as_ref(),
        )?;
        let _ = std::fs::remove_dir_all(&self.scratch);
        let report = drill::run_drill(&self.index, &self.spool, &t, &settings, &self.scratch).await;
        let _ = std::fs::remove_dir_all(&self.scratch);
        let report = report?;
        alert_on(&self.alerts, &report);
        hold(&self.monitor, &report);
        tracing::info!(target = %target, ok = report.ok, "{}", report.summary());
        Ok(report)
    }

    fn history(&self, limit: usize) -> Vec<DrillReport> {
        match self.index.drills::<DrillReport>(None, limit) {
            Ok(v) => v.into_iter().map(|(_, r)| r).collect(),
            Err(e) => {
                tracing::error!(error = %e, "reading the drill history");
                Vec::new()
            }
        }
    }

    /// The drill gauges for `/metrics`.
    pub fn metrics(&self) -> String {
        let mut out = String::new();
        let mut latest: std::collections::BTreeMap<String, DrillReport> = Default::default();
        let mut last_ok: std::collections::BTreeMap<String, u64> = Default::default();
        for r in self.history(1000) {
            if r.ok {
                last_ok
                    .entry(r.target.clone())
                    .or_insert(r.started_at_ms / 1000);
            }
            latest.entry(r.target.clone()).or_insert(r);
        }
        let mut gauge = |name: &str, help: &str, samples: Vec<(String, String)>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for (labels, v) in samples {
                let _ = writeln!(out, "{name}{labels} {v}");
            }
        };
        gauge(
            "pacs_mirror_drill_last_success_timestamp_seconds",
            "Start of the last drill of the target that passed.",
            last_ok
                .iter()
                .map(|(t, v)| (format!("{{target=\"{t}\"}}"), v.to_string()))
                .collect(),
        );
        gauge(
            "pacs_mirror_drill_last_ok",
            "1 if the target's last drill passed.",
            latest
                .iter()
                .map(|(t, r)| (format!("{{target=\"{t}\"}}"), u8::from(r.ok).to_string()))
                .collect(),
        );
        gauge(
            "pacs_mirror_drill_last_recovery_seconds",
            "Recovery time measured by the target's last drill (slowest study).",
            latest
                .iter()
                .map(|(t, r)| {
                    (
                        format!("{{target=\"{t}\"}}"),
                        format!("{:.3}", r.recovery_secs),
                    )
                })
                .collect(),
        );
        let mut findings = Vec::new();
        for (t, r) in &latest {
            for v in [
                Verdict::Match,
                Verdict::Coerced,
                Verdict::Mismatch,
                Verdict::Missing,
                Verdict::Extra,
            ] {
                let n = r.counts.get(&v).copied().unwrap_or(0);
                let name = serde_json::to_value(v)
                    .ok()
                    .and_then(|x| x.as_str().map(str::to_string))
                    .unwrap_or_default();
                findings.push((
                    format!("{{target=\"{t}\",verdict=\"{name}\"}}"),
                    n.to_string(),
                ));
            }
        }
        gauge(
            "pacs_mirror_drill_last_findings",
            "Instances by verdict in the target's last drill.",
            findings,
        );
        out
    }

    /// Start the `[[drill]]` schedules; they stop at shutdown.
    pub async fn start_schedules(self: &Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        let scheduled: Vec<(String, String)> = self
            .config
            .drills
            .iter()
            .filter_map(|d| d.schedule.clone().map(|s| (d.target.clone(), s)))
            .collect();
        if scheduled.is_empty() {
            return;
        }
        let mut sched = match tokio_cron_scheduler::JobScheduler::new().await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot start the drill scheduler: no scheduled drills");
                return;
            }
        };
        for (target, cron) in scheduled {
            let me = self.clone();
            let t = target.clone();
            let job = tokio_cron_scheduler::Job::new_async(cron.as_str(), move |_, _| {
                let me = me.clone();
                let t = t.clone();
                Box::pin(async move {
                    if let Err(e) = me.run(&t, &[]).await {
                        let text = format!("drill of {t} could not run: {e}");
                        me.alerts.raise("drill_failed", &t, text.clone());
                        me.monitor.set_external(
                            "drill_failed",
                            &t,
                            Some(format!("{text}; next: fix the [[drill]] or the target's configuration (`pacs-mirror config check`); runbook ops/runbooks/drill-failed.md")),
                        );
                    }
                })
            });
            match job {
                Ok(j) => match sched.add(j).await {
                    Ok(_) => tracing::info!(target = %target, schedule = %cron, "drill scheduled"),
                    Err(e) => tracing::error!(target = %target, error = %e, "scheduling the drill"),
                },
                Err(e) => {
                    tracing::error!(target = %target, schedule = %cron, error = %e, "bad drill schedule")
                }
            }
        }
        if let Err(e) = sched.start().await {
            tracing::error!(error = %e, "cannot start the drill scheduler");
            return;
        }
        shutdown.cancelled().await;
        let _ = sched.shutdown().await;
    }

    /// `/drills.json`, `POST /drills/run` (the `/drills` page is the
    /// console's).
    pub fn routes(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/drills.json", get(json))
            .route("/drills/run", post(run_now))
            .with_state(self.clone())
    }
}

/// The extension that adds drills to a running agent.
pub fn extension(config: Config) -> app::ExtensionFactory {
    Box::new(move |running: &Running| {
        let service = Arc::new(DrillService {
            monitor: running.monitor.clone(),
            index: running.index.clone(),
            spool: running.spool.clone(),
            scratch: config.device.data_dir.join("drill-scratch"),
            drill_inbox: running.drill_inbox.clone(),
            alerts: alerter(&config),
            config,
            one_at_a_time: tokio::sync::Mutex::new(()),
        });
        // What the last drill of each target said holds until the next.
        let mut seen = std::collections::BTreeSet::new();
        for r in service.history(1000) {
            if seen.insert(r.target.clone()) {
                hold(&service.monitor, &r);
            }
        }
        let s = service.clone();
        let shutdown = running.shutdown.clone();
        running
            .tracker
            .spawn(async move { s.start_schedules(shutdown).await });
        let m = service.clone();
        // `/failover/check`: is the mirror complete, from the running
        // agent's own index.
        let failover = crate::failover::routes(Arc::new(crate::failover::FailoverService::new(
            running.index.clone(),
            running.spool.clone(),
            service.config.clone(),
        )));
        // The operator's console: `/`, `/drills`, `/dead-letters`, ….
        let console = crate::console::routes(Arc::new(crate::console::Console {
            status: running.status.clone(),
            index: running.index.clone(),
            config: service.config.clone(),
        }));
        Extension {
            routes: Some(service.routes().merge(failover).merge(console)),
            metrics: Some(Arc::new(move || m.metrics())),
        }
    })
}

#[derive(serde::Deserialize)]
struct RunParams {
    target: String,
    #[serde(default)]
    study: Vec<String>,
}

async fn run_now(
    State(s): State<Arc<DrillService>>,
    axum::Json(p): axum::Json<RunParams>,
) -> Response {
    match s.run(&p.target, &p.study).await {
        Ok(r) => axum::Json(r).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

#[derive(serde::Deserialize)]
struct ListParams {
    #[serde(default = "default_limit")]
    limit: usize,
}

fn default_limit() -> usize {
    50
}

async fn json(State(s): State<Arc<DrillService>>, Query(q): Query<ListParams>) -> Response {
    axum::Json(s.history(q.limit)).into_response()
}
