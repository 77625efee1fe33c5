//! `pacs-mirror drill` and `pacs-mirror drills`: restore drills on demand and
//! their history.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use pacs_mirror_agent::alert::Alerter;
use pacs_mirror_agent::app;
use pacs_mirror_agent::scp::inbox::DrillInbox;
use pacs_mirror_config::Config;
use pacs_mirror_store::{index::Index, spool::Spool};
use pacs_mirror_verifier::drill::{self, DrillReport};
use pacs_mirror_verifier::service::{alert_on, alerter, drill_target, settings_for, uses_c_move};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Arguments of `drill`.
#[derive(clap::Args, Debug)]
pub struct DrillArgs {
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Only this target (default: every target with a [[drill]] table).
    #[arg(long)]
    pub target: Option<String>,
    /// Drill this study (repeatable) instead of the configured choice.
    #[arg(long = "study", value_name = "UID")]
    pub studies: Vec<String>,
    /// Print the reports as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `drills`.
#[derive(clap::Args, Debug)]
pub struct DrillsArgs {
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Only this target.
    #[arg(long)]
    pub target: Option<String>,
    /// How many, newest first.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// Print JSON (the whole reports, with every finding).
    #[arg(long)]
    pub json: bool,
}

fn open_index(config: &Config) -> anyhow::Result<Index> {
    let dirs = app::DataDirs::new(&config.device.data_dir);
    app::open_index(config).with_context(|| {
        format!(
            "opening the index at {}: drills read it, so the agent must be stopped (is it running?)",
            dirs.index.display()
        )
    })
}

/// `pacs-mirror drill`.
pub async fn drill(config: &Config, args: DrillArgs) -> anyhow::Result<ExitCode> {
    let targets: Vec<String> = match &args.target {
        Some(t) => vec![t.clone()],
        None => config.drills.iter().map(|d| d.target.clone()).collect(),
    };
    if targets.is_empty() {
        bail!("no [[drill]] in the configuration: name a target with --target");
    }
    if let Some(url) = running_agent(config).await {
        return drill_via_agent(&url, &targets, &args).await;
    }
    let index = open_index(config)?;
    let dirs = app::DataDirs::new(&config.device.data_dir);
    let spool = Spool::open(&dirs.spool, app::spool_limits(config))?;
    let scratch = tempfile::Builder::new()
        .prefix("pacs-mirror-drill-")
        .tempdir()
        .context("creating a scratch directory")?;
    let alerts = alerter(config);
    // A C-MOVE drill: serve the drill receiver AE for the drill's duration
    // (the agent, stopped, is not there to), with the agent's own listener
    // code and no ingest path: nothing received can reach the spool.
    let receiver = DrillReceiver::start_if_needed(config, &targets).await?;
    let mut all_ok = true;
    let mut reports = Vec::new();
    for name in targets {
        let settings = settings_for(config, &name, &args.studies);
        let inbox = receiver.as_ref().map(|r| &r.inbox);
        let target = drill_target(config, &name, settings.timeout, inbox)?;
        let report = drill::run_drill(&index, &spool, &target, &settings, scratch.path()).await?;
        alert_on(&alerts, &report);
        all_ok &= report.ok;
        if !args.json {
            print_report(&report);
        }
        reports.push(report);
    }
    if let Some(r) = receiver {
        r.stop().await;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    }
    // Give the webhook its chance before exiting.
    wait_alerts(&alerts).await;
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The drill receiver AEs, served by this process during its drills.
struct DrillReceiver {
    inbox: Arc<DrillInbox>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl DrillReceiver {
    /// Bind the drill receivers' listeners if a drill of `targets` is a
    /// C-MOVE.
    async fn start_if_needed(
        config: &Config,
        targets: &[String],
    ) -> anyhow::Result<Option<DrillReceiver>> {
        if !targets.iter().any(|t| uses_c_move(config, t)) {
            return Ok(None);
        }
        let inbox = DrillInbox::with_reserve(DrillInbox::reserve_for(config.spool.min_free_bytes));
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let bound = app::serve_drill_receivers(config, inbox.clone(), shutdown.clone(), &tracker)
            .await
            .context("serving the drill receiver AE for a C-MOVE drill (is the agent running without an [admin] endpoint?)")?;
        if bound.is_empty() {
            bail!(
                "a C-MOVE drill needs a drill receiver AE (drill_receiver = true) with an installed network connection"
            );
        }
        Ok(Some(DrillReceiver {
            inbox,
            shutdown,
            tracker,
        }))
    }

    /// Close the listeners; associations still open are aborted.
    async fn stop(self) {
        self.shutdown.cancel();
        self.tracker.close();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.tracker.wait()).await;
    }
}

/// The admin URL of a running agent, if one answers.
pub(crate) async fn running_agent(config: &Config) -> Option<String> {
    let a = config.admin.as_ref()?;
    let url = format!("http://{}", a.listen);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .ok()?;
    client.get(format!("{url}/status")).send().await.ok()?;
    Some(url)
}

/// The agent runs (it holds the index): it runs the drills.
async fn drill_via_agent(
    url: &str,
    targets: &[String],
    args: &DrillArgs,
) -> anyhow::Result<ExitCode> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3600))
        .build()?;
    let mut reports = Vec::new();
    let mut all_ok = true;
    for t in targets {
        let r = client
            .post(format!("{url}/drills/run"))
            .json(&serde_json::json!({ "target": t, "study": args.studies }))
            .send()
            .await
            .with_context(|| format!("POST {url}/drills/run"))?;
        if !r.status().is_success() {
            bail!(
                "the running agent refused the drill of {t}: {}",
                r.text().await.unwrap_or_default()
            );
        }
        let report: DrillReport = r.json().await.context("the drill report")?;
        all_ok &= report.ok;
        if !args.json {
            print_report(&report);
        }
        reports.push(report);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    }
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn wait_alerts(alerts: &Alerter) {
    use std::sync::atomic::Ordering::Relaxed;
    let c = &alerts.counters;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while c.sent.load(Relaxed) + c.failed.load(Relaxed) < c.raised.load(Relaxed)
        && alerts.has_webhook()
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn print_report(r: &DrillReport) {
    println!("{}", r.summary());
    if !r.retrieve.is_empty() {
        println!("  retrieved by {}", r.retrieve);
    }
    for s in &r.studies {
        println!(
            "  study {} ({}): {}/{} retrieved, first instance {}, whole study {:.2} s, {:.1} MB{}{}",
            s.study_instance_uid,
            s.picked.join(", "),
            s.retrieved,
            s.expected,
            s.first_instance_secs
                .map_or("-".into(), |t| format!("{t:.2} s")),
            s.study_secs,
            s.bytes as f64 / 1e6,
            if s.not_yet_delivered > 0 {
                format!(", {} not yet delivered", s.not_yet_delivered)
            } else {
                String::new()
            },
            s.error
                .as_deref()
                .map(|e| format!("; ERROR {e}"))
                .unwrap_or_default()
        );
        for f in &s.findings {
            println!("    {:?} {} {}", f.verdict, f.sop_instance_uid, f.detail);
        }
    }
}

/// `pacs-mirror drills`.
pub async fn drills(config: &Config, args: DrillsArgs) -> anyhow::Result<ExitCode> {
    let list: Vec<(u64, DrillReport)> = match running_agent(config).await {
        Some(url) => {
            let all: Vec<DrillReport> = reqwest::get(format!("{url}/drills.json?limit=100000"))
                .await?
                .error_for_status()?
                .json()
                .await?;
            all.into_iter()
                .filter(|r| args.target.as_ref().is_none_or(|t| &r.target == t))
                .take(args.limit)
                .map(|r| (r.started_at_ms, r))
                .collect()
        }
        None => open_index(config)?.drills(args.target.as_deref(), args.limit)?,
    };
    if args.json {
        let v: Vec<&DrillReport> = list.iter().map(|(_, r)| r).collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<24} {:<16} {:>5} {:>7} {:>7} {:>9} {:>9} {:>10}  result",
        "started (UTC)", "target", "#", "studies", "MATCH", "problems", "recovery", "MB/s"
    );
    for (at, r) in &list {
        let c = |v| r.counts.get(&v).copied().unwrap_or(0);
        let problems =
            c(drill::Verdict::Mismatch) + c(drill::Verdict::Missing) + c(drill::Verdict::Coerced);
        println!(
            "{:<24} {:<16} {:>5} {:>7} {:>7} {:>9} {:>8.1}s {:>10.1}  {}",
            pacs_mirror_agent::iso_utc(*at),
            r.target,
            r.number,
            r.studies.len(),
            c(drill::Verdict::Match),
            problems,
            r.recovery_secs,
            r.mb_per_s,
            r.failure
                .as_deref()
                .map_or("passed".to_string(), |f| format!("FAILED: {f}"))
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #[test]
    fn drill_times_are_iso_8601_utc() {
        assert_eq!(
            pacs_mirror_agent::iso_utc(1_796_636_167_908),
            "2026-12-07T09:36:07Z"
        );
        assert_eq!(pacs_mirror_agent::iso_utc(0), "1970-01-01T00:00:00Z");
    }
}
