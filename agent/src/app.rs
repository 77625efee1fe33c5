//! Wiring: from the validated configuration to a running agent, and shutdown.
//!
//! Start-up order matters: open the spool and index, run recovery (temp files
//! removed, un-indexed objects indexed), then bind the listeners. Nothing is
//! accepted before recovery is complete.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pacs_mirror_config::{Config, Role, Target, is_loopback_host};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bucket::{BucketError, BucketSettings};
use crate::replicate::{Destination, TargetSpec};
use crate::scp::access::AePolicy;
use crate::scp::inbox::DrillInbox;
use crate::scp::store::{Ingest, IngestCounters};
use crate::scp::{AeSettings, ListenerSettings, ListenerTls, Scp, ScpError, Services};
use pacs_mirror_dicom::scu::Peer;
use pacs_mirror_store::commit::Committer;
use pacs_mirror_store::index::{Index, IndexError, SledOptions};
use pacs_mirror_store::recovery::{self, RecoveryError, RecoveryReport};
use pacs_mirror_store::spool::{Spool, SpoolError, SpoolLimits};

/// How long shutdown waits for in-flight stores before giving up.
pub const EXIT_DEADLINE: Duration = Duration::from_secs(30);
/// How often the running agent records its clock in the index.
const CLOCK_MARK_EVERY: Duration = Duration::from_secs(5);
/// A wall clock this far from the agent's is reported (a jump, not drift).
const CLOCK_DRIFT_WARN_MS: u64 = 60_000;

/// Seconds allowed for each step of a storage commitment report sent on a
/// new association.
const COMMITMENT_REPORT_TIMEOUT_SECS: u64 = 30;

/// The listener's seam for mirrors' commitment reports, implemented by
/// the replication's commitment state (wired here, so that neither module
/// depends on the other for it).
impl crate::scp::commitment::ReportSink for crate::replicate::commit::Commitments {
    fn on_report(
        &self,
        calling_ae: &str,
        report: &pacs_mirror_dicom::commitment::Report,
    ) -> Result<(), String> {
        crate::replicate::commit::Commitments::on_report(self, Some(calling_ae), report)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// Errors starting or running the agent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppError {
    /// Spool could not be opened.
    #[error("spool: {0}")]
    Spool(#[from] SpoolError),
    /// Index could not be opened.
    #[error("index: {0}")]
    Index(#[from] IndexError),
    /// Recovery failed.
    #[error("start-up recovery: {0}")]
    Recovery(#[from] RecoveryError),
    /// A listener could not be bound.
    #[error(transparent)]
    Scp(#[from] ScpError),
    /// A hostname did not resolve.
    #[error("cannot resolve {host}:{port}: {message}")]
    Resolve {
        host: String,
        port: u16,
        message: String,
    },
    /// An object-storage target could not be set up.
    #[error("target: {0}")]
    Bucket(#[from] BucketError),
    /// The DICOM TLS files are unusable.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsLoadError),
    /// A task panicked.
    #[error("internal: {0}")]
    Internal(String),
}

/// Where the agent keeps its data.
#[derive(Debug, Clone)]
pub struct DataDirs {
    /// Spool root.
    pub spool: PathBuf,
    /// sled index directory.
    pub index: PathBuf,
}

impl DataDirs {
    /// The layout under `data_dir`.
    pub fn new(data_dir: &Path) -> Self {
        DataDirs {
            spool: data_dir.join("spool"),
            index: data_dir.join("index"),
        }
    }
}

/// Spool limits from the configuration.
pub fn spool_limits(config: &Config) -> SpoolLimits {
    SpoolLimits {
        max_bytes: config.spool.max_bytes,
        min_free_bytes: config.spool.min_free_bytes,
        max_object_bytes: config.spool.max_object_bytes,
    }
}

/// How the index is opened (`[index]`).
pub fn index_options(config: &Config) -> SledOptions {
    SledOptions {
        cache_bytes: config.index.cache_bytes,
        ..SledOptions::default()
    }
}

/// Open the index of `config`'s data directory (`[index]` applied).
pub fn open_index(config: &Config) -> Result<Index, IndexError> {
    Index::open_with(
        &DataDirs::new(&config.device.data_dir).index,
        &index_options(config),
    )
}

/// Names of the configured targets (each gets outbox rows).
pub fn target_names(config: &Config) -> Vec<String> {
    config
        .targets
        .iter()
        .map(|t| t.name().to_string())
        .collect()
}

/// Open spool and index and run recovery (also used by `reindex`).
pub fn open_store(
    config: &Config,
    verify_all: bool,
) -> Result<(Arc<Spool>, Index, RecoveryReport), AppError> {
    let dirs = DataDirs::new(&config.device.data_dir);
    let spool = Arc::new(Spool::open(&dirs.spool, spool_limits(config))?);
    let index = Index::open_with(&dirs.index, &index_options(config))?;
    // Due times are on the agent's clock: never before what the index last
    // recorded, even if the wall clock was set back while it was stopped.
    let mark = index.clock_high_water()?.unwrap_or(0);
    let now = pacs_mirror_store::clock::rebase(mark);
    let behind = mark.saturating_sub(pacs_mirror_store::clock::wall_ms());
    if behind > CLOCK_DRIFT_WARN_MS {
        tracing::warn!(
            behind_secs = behind / 1000,
            "the wall clock is behind the time this agent last recorded: it keeps its own clock from {now} (Unix ms); due times and retries are not postponed"
        );
    }
    let report = recovery::recover(&spool, &index, &target_names(config), verify_all)?;
    spool.set_used_bytes(index.spool_bytes()?);
    Ok((spool, index, report))
}

/// What became of the index `reindex` replaced.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum OldIndex {
    /// There was none.
    None,
    /// Read: its deliveries were carried over; then removed, or kept there.
    Replaced {
        /// Where it was kept (`--keep-old`), if it was.
        kept_at: Option<PathBuf>,
    },
    /// It could not be opened: every object is queued for every target
    /// (targets take a re-send as a duplicate); kept there for inspection.
    Unreadable {
        /// Why.
        error: String,
        /// Where it is.
        kept_at: PathBuf,
    },
}

/// What `reindex` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReindexOutcome {
    /// Recovery of every spool file into the new index.
    pub recovery: RecoveryReport,
    /// The index replaced.
    pub old_index: OldIndex,
}

/// `pacs-mirror reindex` (agent stopped): rebuild the index from the spool
/// into `index.new-<ms>` beside it, every file re-hashed; carry over each
/// object's deliveries from the old index when it can be read (so targets
/// are not sent again what they hold); then put the new index in place in
/// one atomic step ([`pacs_mirror_store::durable_dir::replace`]) and remove
/// the old one, or keep it as `index.old-<ms>` with `keep_old`. Until that
/// step the old index is the live one: an interrupted reindex changes
/// nothing (its `index.new-*` is removed by the next one).
pub fn reindex(config: &Config, keep_old: bool) -> Result<ReindexOutcome, AppError> {
    let dirs = DataDirs::new(&config.device.data_dir);
    let now = crate::unix_ms();
    let parent = dirs
        .index
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let io = |what: &str, p: &Path, e: std::io::Error| {
        AppError::Internal(format!("reindex: {what} {}: {e}", p.display()))
    };
    if let Ok(entries) = std::fs::read_dir(&parent) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with("index.new-") {
                tracing::warn!(path = %e.path().display(), "removing what an interrupted reindex left");
                std::fs::remove_dir_all(e.path()).map_err(|err| io("removing", &e.path(), err))?;
            }
        }
    }
    // Opening the old index also takes its lock: no agent runs meanwhile.
    let (old, unreadable) = if dirs.index.exists() {
        match Index::open_with(&dirs.index, &index_options(config)) {
            Ok(i) => (Some(i), None),
            Err(IndexError::Kv(e @ pacs_mirror_store::index::KvError::Locked { .. })) => {
                return Err(AppError::Index(IndexError::Kv(e)));
            }
            Err(e) => {
                tracing::warn!(error = %e, "the old index cannot be read: every object is queued for every target");
                (None, Some(e.to_string()))
            }
        }
    } else {
        (None, None)
    };
    let building = dirs.index.with_file_name(format!("index.new-{now}"));
    let spool = Spool::open(&dirs.spool, spool_limits(config))?;
    let index = Index::open_with(&building, &index_options(config))?;
    let report = recovery::reindex(&spool, &index, &target_names(config), old.as_ref())?;
    drop(index);
    let had_old = old.is_some() || unreadable.is_some();
    drop(old);
    let replaced = pacs_mirror_store::durable_dir::replace(&building, &dirs.index)
        .map_err(|e| io("putting in place", &building, e))?;
    let old_index = match (replaced, unreadable) {
        (None, _) => OldIndex::None,
        (Some(aside), error) => {
            let kept = dirs.index.with_file_name(format!("index.old-{now}"));
            if keep_old || error.is_some() {
                std::fs::rename(&aside, &kept).map_err(|e| io("keeping", &aside, e))?;
                pacs_mirror_store::durable_dir::sync(&parent)
                    .map_err(|e| io("syncing", &parent, e))?;
            } else {
                std::fs::remove_dir_all(&aside).map_err(|e| io("removing", &aside, e))?;
            }
            match error {
                Some(error) => OldIndex::Unreadable {
                    error,
                    kept_at: kept,
                },
                None => OldIndex::Replaced {
                    kept_at: keep_old.then_some(kept),
                },
            }
        }
    };
    debug_assert!(had_old || old_index == OldIndex::None);
    Ok(ReindexOutcome {
        recovery: report,
        old_index,
    })
}

/// The targets, resolved: DICOM targets' remote AE to a host and port,
/// object stores opened (no network access yet).
pub fn targets(config: &Config) -> Result<Vec<TargetSpec>, AppError> {
    let default_calling = default_calling_ae(config);
    let mut out = Vec::new();
    for t in &config.targets {
        let d = t.delivery();
        let pacer = pacer(t);
        let (destination, workers) = match t {
            Target::Dicom {
                remote_ae,
                calling_ae,
                ..
            } => {
                let peer = match remote_peer(
                    config,
                    remote_ae,
                    calling_ae.as_deref(),
                    &default_calling,
                    d.timeout_secs,
                ) {
                    Ok(p) => p,
                    // `validate` reports a dangling or unusable remote AE.
                    Err(PeerError::NoConnection(_)) => continue,
                    Err(PeerError::Tls(e)) => return Err(AppError::Tls(e)),
                };
                let peer = Peer {
                    pace: pacer.clone(),
                    ..peer
                };
                (Destination::Dicom(peer), d.concurrency as usize)
            }
            Target::ObjectStore { url, options, .. } => {
                let bucket = crate::bucket::Bucket::open(&BucketSettings {
                    url: url.clone(),
                    options: options
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                    timeout: Duration::from_secs(d.timeout_secs),
                })?;
                // Two workers, so one batch's manifest writes overlap the
                // next batch's uploads; at most `concurrency` uploads in
                // flight in all (the limiter's maximum).
                let workers = (d.concurrency as usize).clamp(1, 2);
                (Destination::Bucket(Arc::new(bucket)), workers)
            }
        };
        out.push(TargetSpec {
            name: t.name().to_string(),
            destination,
            workers,
            concurrency: d.concurrency as usize,
            backoff: pacs_mirror_store::index::outbox::Backoff {
                initial_ms: d.retry_initial_secs.saturating_mul(1000),
                max_ms: d.retry_max_secs.saturating_mul(1000),
            },
            refused_attempts: d.refused_attempts,
            live_window_ms: t.live_window_secs().saturating_mul(1000),
            commitment: t.commitment_timeout_secs().map(Duration::from_secs),
            pacer,
        });
    }
    Ok(out)
}

/// The pacer of a target with a `max_bandwidth` or a schedule (None:
/// unlimited at every hour): its rate read from the local time of day.
fn pacer(t: &Target) -> Option<Arc<pacs_mirror_dicom::scu::pace::Pacer>> {
    let (cap, schedule) = t.bandwidth();
    if cap.bytes_per_sec().is_none() && schedule.is_empty() {
        return None;
    }
    let (cap, schedule) = (cap.clone(), schedule.to_vec());
    Some(pacs_mirror_dicom::scu::pace::Pacer::new(Arc::new(
        move || {
            let (weekday, second) = local_weekday_second();
            pacs_mirror_config::bandwidth::cap_at(&cap, &schedule, weekday, second)
        },
    )))
}

/// The local weekday (0 = Monday) and second of the day.
pub fn local_weekday_second() -> (u32, u32) {
    use chrono::{Datelike, Timelike};
    let now = chrono::Local::now();
    (
        now.weekday().num_days_from_monday(),
        now.num_seconds_from_midnight(),
    )
}

/// Our calling AE toward peers when a target names none: the first local
/// initiator AE, else the first acceptor that is not a drill receiver.
pub fn default_calling_ae(config: &Config) -> String {
    config
        .device
        .network_aes
        .iter()
        .find(|ae| ae.association_initiator)
        .or_else(|| config.acceptor_aes().find(|ae| !ae.drill_receiver))
        .or_else(|| config.acceptor_aes().next())
        .map(|ae| ae.ae_title.trim().to_string())
        .unwrap_or_else(|| "PACS_MIRROR".into())
}

/// Why a remote AE cannot be connected to.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    /// No such remote AE, or it has no installed connection.
    #[error("remote AE {0} is not configured with an installed network connection")]
    NoConnection(String),
    /// Its connection is TLS and the device's TLS files are unusable.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsLoadError),
}

/// A remote AE of the configuration as a peer to connect to: over TLS when
/// its connection has `tls_cipher_suites`, holding it to its certificate
/// identity.
pub fn remote_peer(
    config: &Config,
    remote_ae: &str,
    calling_ae: Option<&str>,
    default_calling: &str,
    timeout_secs: u64,
) -> Result<Peer, PeerError> {
    let no_connection = || PeerError::NoConnection(remote_ae.trim().to_string());
    let (device, ae) = config.remote_ae(remote_ae).ok_or_else(no_connection)?;
    let conn = Config::remote_connection(device, ae).ok_or_else(no_connection)?;
    let tls = if conn.is_tls() {
        let tls = crate::tls::device_tls(config)?.ok_or_else(no_connection)?;
        Some(pacs_mirror_dicom::scu::ClientTls {
            tls,
            suites: crate::tls::suites(conn),
            identity: crate::tls::identity(ae),
        })
    } else {
        None
    };
    Ok(Peer {
        calling_ae: calling_ae
            .map(|a| a.trim().to_string())
            .unwrap_or_else(|| default_calling.to_string()),
        called_ae: ae.ae_title.trim().to_string(),
        host: conn.hostname.clone(),
        port: conn.port,
        timeout: Duration::from_secs(timeout_secs),
        tls,
        pace: None,
    })
}

/// The listener settings from the configuration: one per local connection
/// used by an acceptor AE.
pub async fn listener_settings(config: &Config) -> Result<Vec<ListenerSettings>, AppError> {
    let mut out: Vec<(String, ListenerSettings)> = Vec::new();
    for ae in config.acceptor_aes() {
        let allowed: Vec<&pacs_mirror_config::RemoteAe> = ae
            .allowed_calling_aes
            .iter()
            .filter_map(|title| config.remote_ae(title).map(|(_, r)| r))
            .collect();
        let policy = AePolicy {
            ae_title: ae.ae_title.trim().to_string(),
            accept_any_calling_ae: ae.accept_any_calling_ae,
            allowed: allowed
                .iter()
                .map(|r| (r.ae_title.trim().to_string(), r.source_addresses.clone()))
                .collect(),
            identities: allowed
                .iter()
                .map(|r| (r.ae_title.trim().to_string(), crate::tls::identity(r)))
                .filter(|(_, id)| id.is_set())
                .collect(),
        };
        let scp_caps: Vec<_> = ae
            .transfer_capabilities
            .iter()
            .filter(|tc| tc.role == Role::Scp)
            .collect();
        let (sop_classes, transfer_syntaxes) = if scp_caps.is_empty() {
            (None, None)
        } else {
            let classes: HashSet<String> = scp_caps.iter().map(|tc| tc.sop_class.clone()).collect();
            let any_ts = scp_caps.iter().any(|tc| tc.transfer_syntaxes.is_empty());
            let tss = (!any_ts).then(|| {
                scp_caps
                    .iter()
                    .flat_map(|tc| tc.transfer_syntaxes.iter().cloned())
                    .collect()
            });
            (Some(classes), tss)
        };
        let settings = AeSettings {
            policy,
            sop_classes,
            transfer_syntaxes,
            drill_receiver: ae.drill_receiver,
        };
        for conn_name in &ae.network_connections {
            let Some(conn) = config.connection(conn_name).filter(|c| c.installed) else {
                continue;
            };
            if ae.accept_any_calling_ae && !is_loopback_host(&conn.hostname) {
                tracing::warn!(
                    ae_title = %ae.ae_title,
                    listener = %format!("{}:{}", conn.hostname, conn.port),
                    "accept_any_calling_ae = true on a listener reachable from the network: any system that can reach this port can store here"
                );
            }
            if let Some((_, l)) = out.iter_mut().find(|(n, _)| n == conn_name) {
                l.aes.push(settings.clone());
                continue;
            }
            let bind = resolve(&conn.hostname, conn.port).await?;
            let tls = if conn.is_tls() {
                let tls = crate::tls::device_tls(config)?.ok_or_else(|| {
                    AppError::Internal("TLS connection without TLS material".into())
                })?;
                Some(ListenerTls {
                    tls,
                    suites: crate::tls::suites(conn),
                    require_client_certificate: conn.require_client_certificate,
                })
            } else {
                None
            };
            out.push((
                conn_name.clone(),
                ListenerSettings {
                    bind,
                    aes: vec![settings.clone()],
                    max_associations: ae.max_associations as usize,
                    max_associations_per_address: ae
                        .max_associations_per_address
                        .map(|n| n as usize),
                    max_pdu_bytes: ae.max_pdu_bytes,
                    artim_timeout: Duration::from_secs(ae.artim_timeout_secs),
                    idle_timeout: Duration::from_secs(ae.idle_timeout_secs),
                    tls,
                },
            ));
        }
    }
    Ok(out.into_iter().map(|(_, l)| l).collect())
}

async fn resolve(host: &str, port: u16) -> Result<SocketAddr, AppError> {
    let err = |message: String| AppError::Resolve {
        host: host.to_string(),
        port,
        message,
    };
    tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| err(e.to_string()))?
        .next()
        .ok_or_else(|| err("no address".into()))
}

/// What the rest of the product adds to a running agent (the verifier's
/// scheduled drills): routes on the admin endpoint and lines in `/metrics`.
#[derive(Default)]
pub struct Extension {
    /// Routes merged into the admin endpoint.
    pub routes: Option<axum::Router>,
    /// Prometheus text appended to `/metrics`.
    pub metrics: Option<crate::admin::MetricsFn>,
}

/// The listeners of the drill receiver AEs alone (`drill_receiver = true`),
/// bound and served until `shutdown`, their C-STOREs going to `inbox`: what
/// `pacs-mirror drill` runs for a C-MOVE drill while the agent is stopped
/// (the agent serves them on its own listeners). No ingest path: nothing
/// they receive can reach the spool. Returns each bound address with its
/// AE titles.
pub async fn serve_drill_receivers(
    config: &Config,
    inbox: Arc<DrillInbox>,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> Result<Vec<(SocketAddr, Vec<String>)>, AppError> {
    let mut out = Vec::new();
    for mut settings in listener_settings(config).await? {
        settings.aes.retain(|a| a.drill_receiver);
        if settings.aes.is_empty() {
            continue;
        }
        let titles: Vec<String> = settings
            .aes
            .iter()
            .map(|a| a.policy.ae_title.clone())
            .collect();
        let scp = Scp::bind(
            settings,
            Services {
                ingest: None,
                drill_inbox: Some(inbox.clone()),
                commitment: None,
                reports: None,
            },
        )
        .await?;
        let addr = scp
            .local_addr()
            .map_err(|e| AppError::Internal(e.to_string()))?;
        tracing::info!(%addr, ae_titles = ?titles, "drill receiver listening");
        out.push((addr, titles));
        tracker.spawn(scp.run(shutdown.clone(), tracker.clone()));
    }
    Ok(out)
}

/// What an extension gets: the open store, and the agent's lifetime.
pub struct Running {
    /// The index.
    pub index: Index,
    /// The spool.
    pub spool: Arc<Spool>,
    /// The inbox of the drill receiver AEs the agent serves (None: none is
    /// configured).
    pub drill_inbox: Option<Arc<DrillInbox>>,
    /// Cancelled at shutdown.
    pub shutdown: CancellationToken,
    /// Tasks shutdown waits for.
    pub tracker: TaskTracker,
    /// The monitors: what holds shows in `/status` and `/metrics`.
    pub monitor: Arc<crate::monitor::Monitor>,
    /// What `/status` answers, computed on demand.
    pub status: Arc<crate::admin::Source>,
}

/// Builds an [`Extension`] once the store is open.
pub type ExtensionFactory = Box<dyn FnOnce(&Running) -> Extension + Send>;

/// Run the agent until `shutdown` is cancelled; then let in-flight stores
/// finish (up to [`EXIT_DEADLINE`]).
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), AppError> {
    run_with(config, shutdown, None).await
}

/// [`run`], with an extension.
pub async fn run_with(
    config: Config,
    shutdown: CancellationToken,
    extension: Option<ExtensionFactory>,
) -> Result<(), AppError> {
    // Every socket first: a port in use must fail the start before anything
    // is created on disk (the default's data folder, say).
    let mut sockets = Vec::new();
    for settings in listener_settings(&config).await? {
        let listener = crate::scp::listen(settings.bind).await?;
        sockets.push((settings, listener));
    }
    let admin_listener = match &config.admin {
        Some(a) => Some(
            crate::admin::bind(a.listen)
                .await
                .map_err(|source| ScpError::Bind {
                    addr: a.listen,
                    source,
                })?,
        ),
        None => None,
    };
    let cfg = config.clone();
    let (spool, index, report) = tokio::task::spawn_blocking(move || open_store(&cfg, false))
        .await
        .map_err(|e| AppError::Internal(e.to_string()))??;
    tracing::info!(
        data_dir = %config.device.data_dir.display(),
        temp_files_removed = report.temp_files_removed,
        objects = report.objects_seen,
        reindexed = report.reindexed,
        pending_kept = report.pending_kept,
        pending_undone = report.pending_undone,
        quarantined = report.quarantined.len(),
        spool_bytes = spool.used_bytes(),
        "start-up recovery done"
    );
    for (path, reason) in &report.quarantined {
        tracing::error!(path = %path.display(), %reason, "spool file quarantined: needs an operator");
    }
    let committer = Committer::start(spool.clone(), index.clone(), target_names(&config));
    let ingest = Arc::new(Ingest {
        spool,
        committer,
        counters: IngestCounters::default(),
        activity: Arc::default(),
    });
    let started_at_ms = crate::unix_ms();
    let tracker = TaskTracker::new();
    let commitment = {
        let cfg = config.clone();
        // A report on a new association goes to the requester's AE as a
        // configured remote AE, from the AE the request was addressed to.
        let resolve: crate::scp::commitment::Resolver = Box::new(move |their, ours| {
            remote_peer(
                &cfg,
                their,
                Some(ours),
                ours,
                COMMITMENT_REPORT_TIMEOUT_SECS,
            )
            .ok()
        });
        // Senders whose commitment waits for the remote copy.
        let policies = config
            .remote_devices
            .iter()
            .flat_map(|d| &d.network_aes)
            .filter(|ae| !ae.commit_after_delivery_to.is_empty())
            .map(|ae| {
                (
                    ae.ae_title.trim().to_string(),
                    crate::scp::commitment::SenderPolicy {
                        after_delivery_to: ae
                            .commit_after_delivery_to
                            .iter()
                            .map(|t| t.trim().to_string())
                            .collect(),
                        wait: Duration::from_secs(ae.commit_wait_secs),
                    },
                )
            })
            .collect();
        Arc::new(crate::scp::commitment::CommitmentScp::new(
            index.clone(),
            ingest.clone(),
            resolve,
            policies,
            tracker.clone(),
            shutdown.clone(),
        ))
    };
    {
        // The clock's high-water mark, and a word when the wall clock jumps.
        let index = index.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let mut reported = 0i64;
            loop {
                if let Err(e) = index.put_clock_high_water(crate::unix_ms()) {
                    tracing::debug!(error = %e, "recording the clock failed (retried)");
                }
                let drift = pacs_mirror_store::clock::drift_ms();
                if drift.unsigned_abs() > CLOCK_DRIFT_WARN_MS
                    && (drift - reported).unsigned_abs() > CLOCK_DRIFT_WARN_MS
                {
                    reported = drift;
                    tracing::warn!(
                        drift_secs = drift / 1000,
                        "the wall clock jumped: retries, timers and the times this agent shows keep its own clock (monotonic since start) until it restarts"
                    );
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(CLOCK_MARK_EVERY) => {}
                }
            }
        });
    }
    let specs = targets(&config)?;
    // Targets with storage commitment: their mirrors' reports may come on
    // associations the mirrors open to the listeners.
    let commitments = crate::replicate::commit::Commitments::new(
        index.clone(),
        specs
            .iter()
            .filter_map(|t| match (&t.destination, t.commitment) {
                (Destination::Dicom(peer), Some(timeout)) => {
                    Some(crate::replicate::commit::CommitTarget {
                        name: t.name.clone(),
                        peer: peer.clone(),
                        timeout,
                        refused_attempts: t.refused_attempts,
                    })
                }
                _ => None,
            })
            .collect(),
    );
    let mut listening = Vec::new();
    let drill_inbox = config
        .acceptor_aes()
        .any(|ae| ae.drill_receiver)
        .then(|| DrillInbox::with_reserve(DrillInbox::reserve_for(config.spool.min_free_bytes)));
    for (settings, listener) in sockets {
        let titles: Vec<_> = settings
            .aes
            .iter()
            .map(|a| a.policy.ae_title.clone())
            .collect();
        let services = Services {
            ingest: Some(ingest.clone()),
            drill_inbox: drill_inbox.clone(),
            commitment: Some(commitment.clone()),
            reports: (!commitments.is_empty())
                .then(|| commitments.clone() as Arc<dyn crate::scp::commitment::ReportSink>),
        };
        let scp = Scp::on(listener, settings, services);
        let addr = scp
            .local_addr()
            .map_err(|e| AppError::Internal(e.to_string()))?;
        tracing::info!(%addr, ae_titles = ?titles, "listening");
        listening.push(format!("{} on {addr}", titles.join(", ")));
        tracker.spawn(scp.run(shutdown.clone(), tracker.clone()));
    }
    let replication = crate::replicate::Replication {
        index: index.clone(),
        spool: ingest.spool.clone(),
    };
    let workers = crate::worker::Workers::default();
    let mut health = std::collections::HashMap::new();
    for target in specs {
        if target.commitment.is_none() {
            // Storage commitment turned off: what the mirror stored is
            // delivered, as for any target without it.
            match index.settle_stored(&target.name, crate::unix_ms()) {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(target = %target.name, objects = n, "storage commitment is off: objects the mirror stored now count as delivered")
                }
                Err(e) => {
                    tracing::error!(target = %target.name, error = %e, "settling stored objects failed")
                }
            }
        }
        if target.commitment.is_some() {
            tracker.spawn(crate::replicate::commit::run(
                commitments.clone(),
                target.name.clone(),
                shutdown.clone(),
            ));
        }
        tracing::info!(
            target = %target.name,
            destination = %target.destination.describe(),
            workers = target.workers,
            "replicating"
        );
        if let Destination::Bucket(bucket) = &target.destination {
            let bucket = bucket.clone();
            let device = config.device.name.clone();
            let name = target.name.clone();
            tracker.spawn(async move {
                if let Err(e) = bucket.ensure_descriptor(&device).await {
                    tracing::warn!(target = %name, error = %e, "could not write the bucket descriptor yet (retried at the next start)");
                }
            });
        }
        let name = target.name.clone();
        health.insert(
            name,
            crate::replicate::spawn(&replication, target, &workers, &shutdown, &tracker),
        );
    }
    if let Some(secs) = config.spool.retain_after_delivery_secs {
        let targets = target_names(&config);
        if targets.is_empty() {
            tracing::info!("spool retention configured but no targets: every object is kept");
        } else {
            workers.spawn(
                crate::retention::Retention::new(
                    index.clone(),
                    ingest.spool.clone(),
                    targets,
                    Duration::from_secs(secs),
                ),
                Arc::new(tokio::sync::Notify::new()),
                &shutdown,
                &tracker,
            );
        }
    }
    let target_health: Vec<_> = config
        .targets
        .iter()
        .map(|t| (t.name().to_string(), health.get(t.name()).cloned()))
        .collect();
    let monitor = Arc::new(
        crate::monitor::Monitor::new(
            crate::monitor::Settings::from_config(&config),
            ingest.activity.clone(),
            started_at_ms,
        )
        .with_tls(crate::tls::device_tls(&config)?)
        .with_storage(ingest.committer.health()),
    );
    workers.spawn(
        crate::monitor::Checker::new(
            monitor.clone(),
            index.clone(),
            ingest.spool.clone(),
            target_health.clone(),
            crate::alert::Alerter::from_config(&config),
        ),
        Arc::new(tokio::sync::Notify::new()),
        &shutdown,
        &tracker,
    );
    // What `/status` reads; the extensions (the console) read it too.
    let source = Arc::new(crate::admin::Source {
        index: index.clone(),
        ingest: ingest.clone(),
        started_at_ms,
        listeners: listening,
        warnings: config.warnings().iter().map(ToString::to_string).collect(),
        targets: target_health,
        monitor: Some(monitor.clone()),
        workers: workers.clone(),
        tls: crate::tls::device_tls(&config)?,
        rates: crate::admin::Rates::for_targets(config.targets.iter().map(|t| t.name())),
    });
    let extension = extension
        .map(|f| {
            f(&Running {
                index: index.clone(),
                spool: ingest.spool.clone(),
                drill_inbox: drill_inbox.clone(),
                shutdown: shutdown.clone(),
                tracker: tracker.clone(),
                monitor: monitor.clone(),
                status: source.clone(),
            })
        })
        .unwrap_or_default();
    if let Some(listener) = admin_listener {
        let addr = listener
            .local_addr()
            .map_err(|e| AppError::Internal(e.to_string()))?;
        tracing::info!(
            %addr,
            "admin endpoint (loopback only, read-only console): http://{addr}/ — /status, /metrics, /drills, /failover/check"
        );
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            if let Err(e) = crate::admin::serve(
                listener,
                source,
                extension.metrics,
                shutdown,
                extension.routes,
            )
            .await
            {
                tracing::error!(error = %e, "admin endpoint failed");
            }
        });
    }
    tracing::info!(device = %config.device.name, "pacs-mirror ready");
    shutdown.cancelled().await;
    tracing::info!("shutting down: no new associations; finishing in-flight stores");
    tracker.close();
    if tokio::time::timeout(EXIT_DEADLINE, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            "in-flight associations did not finish within {:?}; exiting (unacknowledged stores are not lost: the sender keeps them)",
            EXIT_DEADLINE
        );
    }
    let c = &ingest.counters;
    tracing::info!(
        stored = c.stored.load(std::sync::atomic::Ordering::Relaxed),
        duplicates = c.duplicates.load(std::sync::atomic::Ordering::Relaxed),
        conflicts = c.conflicts.load(std::sync::atomic::Ordering::Relaxed),
        failed = c.failed.load(std::sync::atomic::Ordering::Relaxed),
        "stopped"
    );
    index.flush()?;
    Ok(())
}
