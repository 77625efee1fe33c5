//! `pacs-mirror failover check` and `pacs-mirror failback`: the on-call
//! workflow around an outage of the primary PACS.
//!
//! Exit status of both: 0 when the mirror is complete / every missing
//! instance is verified on the primary; 1 when not; 2 when the check or the
//! failback could not run (a peer that cannot be asked, a bad argument,
//! the index unreadable). `failback` also exits 2 when it stopped early
//! (3 consecutive association failures to one peer: the studies left are
//! reported as not attempted). `failback --dry-run`: 0 when there is
//! nothing to send (and the mirror's answer was whole), 1 when the plan has
//! something to send or the mirror capped its answer, 2 on errors.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use pacs_mirror_agent::app;
use pacs_mirror_store::spool::Spool;
use pacs_mirror_verifier::failback::{self, FailbackReport, FailbackSettings, Outcome, Plan};
use pacs_mirror_verifier::failover::{self, CheckRequest, FailoverReport, QueueState};
use pacs_mirror_verifier::restore;

/// Exit status when the command could not run.
const COULD_NOT_RUN: u8 = 2;
/// Missing instances listed per study in the text report.
const LIST_PER_STUDY: usize = 20;

/// Arguments of `failover check`.
#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// The DICOM target (the mirror) to check.
    #[arg(long)]
    pub target: String,
    /// Only studies dated (Study Date) on or after DATE (YYYY-MM-DD);
    /// studies without a date by the day they were received.
    #[arg(long, value_name = "DATE")]
    pub since: Option<String>,
    /// Queue every missing instance again (those still in the spool).
    #[arg(long)]
    pub repair: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `failback`.
#[derive(clap::Args, Debug)]
pub struct FailbackArgs {
    /// Configuration file (to name the mirror by its target name).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// The mirror: a DICOM target of the configuration, or AE@HOST:PORT.
    #[arg(long)]
    pub from: String,
    /// The primary PACS, AE@HOST:PORT.
    #[arg(long)]
    pub to: String,
    /// Studies dated (Study Date) on or after DATE (YYYY-MM-DD): the start
    /// of the outage. Studies without a Study Date on the mirror are not
    /// considered unless --include-undated is given.
    #[arg(long, value_name = "DATE")]
    pub since: String,
    /// Also bring back the mirror's studies that have no Study Date (one
    /// more C-FIND lists every study the mirror holds, which can take a
    /// while on a large mirror).
    #[arg(long)]
    pub include_undated: bool,
    /// Our calling AE title (default: the target's, or the configuration's
    /// local AE). Both PACS must allow it C-FIND and C-GET.
    #[arg(long)]
    pub calling_ae: Option<String>,
    /// Seconds to wait for a connection and each answer.
    #[arg(long, default_value_t = 60)]
    pub timeout_secs: u64,
    /// Where retrieved copies wait to be sent (default: a new temporary
    /// directory); emptied as each study is done.
    #[arg(long)]
    pub scratch: Option<PathBuf>,
    /// Only list what would be sent. Exit status: 0 when nothing is
    /// missing on the primary, 1 when the plan has something to send (or
    /// the mirror capped its answer), 2 on errors.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the final report (with --dry-run: the plan) as JSON.
    #[arg(long)]
    pub json: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

fn could_not_run(e: &anyhow::Error) -> ExitCode {
    eprintln!("error: {e:#}");
    ExitCode::from(COULD_NOT_RUN)
}

/// `pacs-mirror failover check`.
pub async fn check(args: CheckArgs) -> ExitCode {
    match check_report(&args).await {
        Ok(report) => {
            if args.json {
                match serde_json::to_string_pretty(&report) {
                    Ok(s) => println!("{s}"),
                    Err(e) => return could_not_run(&e.into()),
                }
            } else {
                print_check(&report);
            }
            if report.error.is_some() {
                ExitCode::from(COULD_NOT_RUN)
            } else if report.complete {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => could_not_run(&e),
    }
}

async fn check_report(args: &CheckArgs) -> anyhow::Result<FailoverReport> {
    let config = crate::load(args.config.as_deref())?;
    failover::mirror_of(&config, &args.target)?;
    let request = CheckRequest {
        target: args.target.clone(),
        since: args.since.clone(),
        repair: args.repair,
    };
    if let Some(url) = crate::drill_cmd::running_agent(&config).await {
        // The agent holds the index: it runs the check.
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(3600))
            .build()?;
        let r = client
            .post(format!("{url}/failover/check"))
            .json(&request)
            .send()
            .await
            .with_context(|| format!("POST {url}/failover/check"))?;
        if !r.status().is_success() {
            bail!(
                "the running agent refused the check: {}",
                r.text().await.unwrap_or_default()
            );
        }
        return r.json().await.context("the running agent's report");
    }
    let dirs = app::DataDirs::new(&config.device.data_dir);
    if !dirs.index.exists() {
        bail!(
            "no index at {} (nothing received yet, or wrong --config)",
            dirs.index.display()
        );
    }
    let index = app::open_index(&config).with_context(|| {
        format!(
            "opening the index at {}: no agent answered on [admin], so the check reads the index itself (an agent without [admin] may be running)",
            dirs.index.display()
        )
    })?;
    let spool = Spool::open(&dirs.spool, app::spool_limits(&config))?;
    Ok(failover::check(&index, &std::sync::Arc::new(spool), &config, &request).await?)
}

fn print_check(r: &FailoverReport) {
    println!("{}", r.summary());
    for g in &r.gaps {
        let found = match (g.absent, g.found) {
            (true, _) => "absent from the mirror".to_string(),
            (false, Some(n)) => format!("{n} found"),
            (false, None) => "the mirror gave no count".to_string(),
        };
        let mut states = std::collections::BTreeMap::new();
        for m in &g.missing {
            *states.entry(state_name(m.state)).or_insert(0usize) += 1;
        }
        let states: Vec<String> = states.iter().map(|(s, n)| format!("{n} {s}")).collect();
        println!(
            "  GAP study {} patient {} date {}: {} expected, {found}; {} missing ({})",
            g.study_instance_uid,
            or_dash(&g.patient_id),
            or_dash(&g.study_date),
            g.expected,
            g.missing.len(),
            states.join(", ")
        );
        for m in g.missing.iter().take(LIST_PER_STUDY) {
            println!(
                "    {} {}{}{}",
                m.sop_instance_uid,
                state_name(m.state),
                if m.in_spool { "" } else { ", NOT in the spool" },
                if m.requeued { ", queued again" } else { "" }
            );
        }
        if g.missing.len() > LIST_PER_STUDY {
            println!(
                "    … and {} more (--json lists them all)",
                g.missing.len() - LIST_PER_STUDY
            );
        }
    }
    for m in &r.more_on_mirror {
        println!(
            "  more on the mirror (not a gap): study {}: {} expected, {} found",
            m.study_instance_uid, m.expected, m.found
        );
    }
    if r.studies_only_on_mirror > 0 {
        println!(
            "  {} study(ies) on the mirror that the agent never received (not gaps)",
            r.studies_only_on_mirror
        );
    }
    if r.census_truncated {
        println!(
            "  the mirror listed more studies than were read; every expected study was still asked for by UID"
        );
    }
    if let Some(rep) = &r.repair {
        println!(
            "repair: {} instance(s) queued again, {} already queued, {} not in the local spool",
            rep.requeued,
            rep.already_queued,
            rep.not_in_spool.len()
        );
        for n in &rep.not_in_spool {
            println!(
                "  {} (study {}): {}",
                n.sop_instance_uid, n.study_instance_uid, n.hint
            );
        }
        if rep.in_flight > 0 {
            println!(
                "  {} instance(s) delivered while the check ran (in flight): not queued again; run the check again",
                rep.in_flight
            );
        }
        if rep.requeued + rep.already_queued + rep.in_flight > 0 {
            println!(
                "  the agent delivers queued instances while it runs; run the check again once `pacs-mirror status` shows the queue drained"
            );
        }
    } else if !r.gaps.is_empty() && r.error.is_none() {
        println!("  `--repair` queues the missing instances again");
    }
}

fn state_name(s: QueueState) -> &'static str {
    match s {
        QueueState::Queued => "still queued",
        QueueState::DeadLetter => "dead letter",
        QueueState::Delivered => "delivered, since lost by the mirror",
        QueueState::InFlight => "delivered while the check ran (in flight)",
        QueueState::NotQueued => "never queued for this target",
    }
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

/// `pacs-mirror failback`.
pub async fn failback(args: FailbackArgs) -> ExitCode {
    match run_failback(&args).await {
        Ok(code) => code,
        Err(e) => could_not_run(&e),
    }
}

/// The mirror and primary peers of the arguments.
fn peers(args: &FailbackArgs) -> anyhow::Result<FailbackSettings> {
    let since = restore::parse_date(&args.since)?;
    let config = match &args.config {
        Some(_) => Some(crate::load(args.config.as_deref())?),
        None => None,
    };
    let default_calling = config
        .as_ref()
        .map_or_else(|| "PACS_MIRROR".to_string(), app::default_calling_ae);
    let mirror = if args.from.contains('@') {
        let calling = args.calling_ae.as_deref().unwrap_or(&default_calling);
        crate::parse_peer(config.as_ref(), &args.from, calling, args.timeout_secs)?
    } else {
        let Some(config) = &config else {
            bail!(
                "--from {:?} names a target: give --config, or write the mirror as AE@HOST:PORT",
                args.from
            );
        };
        let (mut peer, _) = failover::mirror_of(config, &args.from)?;
        if let Some(c) = &args.calling_ae {
            peer.calling_ae = c.clone();
        }
        peer.timeout = Duration::from_secs(args.timeout_secs);
        peer
    };
    let primary = crate::parse_peer(
        config.as_ref(),
        &args.to,
        &mirror.calling_ae,
        args.timeout_secs,
    )?;
    Ok(FailbackSettings {
        mirror,
        primary,
        since,
        include_undated: args.include_undated,
    })
}

async fn run_failback(args: &FailbackArgs) -> anyhow::Result<ExitCode> {
    let settings = peers(args)?;
    eprintln!(
        "comparing studies since {} on the mirror {}@{}:{} with the primary {} …",
        settings.since,
        settings.mirror.called_ae,
        settings.mirror.host,
        settings.mirror.port,
        args.to
    );
    let plan = failback::plan(&settings).await?;
    eprintln!(
        "{} study(ies) on the mirror since {}; {} complete on the primary; {} to bring back ({} instance(s))",
        plan.studies_on_mirror,
        plan.since,
        plan.studies_complete,
        plan.studies.len(),
        plan.instances()
    );
    if args.dry_run {
        if args.json {
            println!("{}", serde_json::to_string_pretty(&plan)?);
        } else {
            print_plan(&plan);
        }
        return Ok(dry_run_status(&plan));
    }
    let holder;
    let scratch = match &args.scratch {
        Some(p) => p.join(format!("pacs-mirror-failback-{}", std::process::id())),
        None => {
            holder = tempfile::Builder::new()
                .prefix("pacs-mirror-failback-")
                .tempdir()
                .context("creating a scratch directory")?;
            holder.path().to_path_buf()
        }
    };
    let bar = crate::progress::count_bar(plan.instances(), args.quiet);
    let b = bar.clone();
    let progress = move |r: &failback::InstanceResult| {
        b.inc(1);
        if r.outcome != Outcome::Verified {
            b.suspend(|| {
                eprintln!(
                    "{} {}: {:?}",
                    r.study_instance_uid, r.sop_instance_uid, r.outcome
                )
            });
        }
    };
    let report = failback::run(&plan, &settings, &scratch, &progress).await;
    bar.finish_and_clear();
    if args.scratch.is_some() {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    let report = report?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_failback(&report);
    }
    Ok(failback_status(&report))
}

/// `failback --dry-run`: 0 nothing to send, 1 something to send (or the
/// mirror's answer was capped: not everything was seen).
fn dry_run_status(plan: &Plan) -> ExitCode {
    if plan.studies.is_empty() && !plan.truncated {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `failback`: 0 complete, 2 stopped early, 1 otherwise.
fn failback_status(report: &FailbackReport) -> ExitCode {
    if report.stopped.is_some() {
        ExitCode::from(COULD_NOT_RUN)
    } else if report.complete() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// What the window of `--since` cannot show.
fn print_blind_spots(truncated: bool, studies_read: usize, undated: Option<usize>, mirror: &str) {
    if truncated {
        println!(
            "  THE MIRROR CAPPED ITS ANSWER at {studies_read} studies: the studies past the cap were never looked at; narrow --since (or run it again per period)"
        );
    }
    match undated {
        Some(n) => println!("  studies without a Study Date on the mirror: {n}, included"),
        None => println!(
            "  studies without a Study Date on the mirror are not considered: run again with --include-undated (lists every study on the mirror {mirror})"
        ),
    }
}

fn print_plan(plan: &Plan) {
    for s in &plan.studies {
        println!(
            "  study {} patient {} ({}) date {}: {} on the mirror, {} on the primary; {} to send",
            s.study_instance_uid,
            or_dash(&s.patient_id),
            or_dash(&s.patient_name),
            or_dash(&s.study_date),
            s.on_mirror,
            s.on_primary
                .map_or_else(|| "?".to_string(), |n| n.to_string()),
            s.missing.len()
        );
    }
    print_blind_spots(
        plan.truncated,
        plan.studies_on_mirror,
        plan.undated_on_mirror,
        &plan.mirror,
    );
}

fn print_failback(r: &FailbackReport) {
    if r.instances == 0 {
        println!(
            "failback from {} to {} (studies since {}): nothing to bring back; {} study(ies) on the mirror in the window, all complete on the primary",
            r.mirror, r.primary, r.since, r.studies_on_mirror
        );
        print_blind_spots(
            r.truncated,
            r.studies_on_mirror,
            r.undated_on_mirror,
            &r.mirror,
        );
        if r.truncated {
            println!("INCOMPLETE: the mirror's answer was capped (see above)");
        }
        return;
    }
    println!(
        "failback from {} to {} (studies since {}): {} of {} instance(s) verified on the primary, in {} study(ies); {} retrieved, {} stored ({}), {} changed by the primary, {} not verified; {:.1} s",
        r.mirror,
        r.primary,
        r.since,
        r.verified,
        r.instances,
        r.studies,
        r.retrieved,
        r.stored,
        crate::progress::human_bytes(r.bytes),
        r.changed,
        r.not_verified.len(),
        r.seconds
    );
    println!(
        "  {} study(ies) on the mirror in the window, {} already complete on the primary",
        r.studies_on_mirror, r.studies_complete
    );
    if r.reencoded > 0 {
        println!(
            "  {} verified instance(s) were re-encoded by pacs-mirror for the primary (it accepts no context for the original transfer syntax; lossless, uncompressed): the primary holds the bytes sent, not the mirror's",
            r.reencoded
        );
    }
    print_blind_spots(
        r.truncated,
        r.studies_on_mirror,
        r.undated_on_mirror,
        &r.mirror,
    );
    if let Some(why) = &r.stopped {
        println!("  STOPPED EARLY: {why}; the studies left were not attempted");
    }
    for n in &r.not_verified {
        let what = match &n.outcome {
            Outcome::Verified => "verified".to_string(),
            Outcome::Changed(h) => match &n.reencoded_to {
                Some(ts) => format!(
                    "STORED, re-encoded by pacs-mirror for the primary into {ts} (it accepts no context for the original transfer syntax); the primary holds yet other bytes (retrieved {}, sent {}, holds {h})",
                    n.blake3, n.sent_blake3
                ),
                None => format!(
                    "STORED, BYTES CHANGED by the primary (sent {}, holds {h})",
                    n.sent_blake3
                ),
            },
            Outcome::NotAttempted(w) => format!("NOT ATTEMPTED: {w}"),
            Outcome::Missing(w) => format!("MISSING: {w}"),
            Outcome::RetrieveFailed(w) => format!("NOT RETRIEVED from the mirror: {w}"),
            Outcome::StoreFailed(w) => format!("NOT STORED: {w}"),
            Outcome::VerifyFailed(w) => format!("NOT VERIFIED: {w}"),
        };
        println!(
            "  {} (study {}): {what}",
            n.sop_instance_uid, n.study_instance_uid
        );
    }
    println!(
        "{}",
        if r.complete() {
            "complete: every missing instance is on the primary, byte for byte"
        } else {
            "INCOMPLETE: see above; running failback again sends only what is still missing"
        }
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use pacs_mirror_verifier::failback::PlannedStudy;

    #[test]
    fn dry_run_exits_1_when_something_is_to_be_sent() {
        assert_eq!(dry_run_status(&Plan::default()), ExitCode::SUCCESS);
        let capped = Plan {
            truncated: true,
            ..Plan::default()
        };
        assert_eq!(dry_run_status(&capped), ExitCode::FAILURE);
        let something = Plan {
            studies: vec![PlannedStudy {
                study_instance_uid: "1.2".into(),
                patient_id: String::new(),
                patient_name: String::new(),
                study_date: String::new(),
                on_mirror: 1,
                on_primary: Some(0),
                missing: Vec::new(),
            }],
            ..Plan::default()
        };
        assert_eq!(dry_run_status(&something), ExitCode::FAILURE);
    }

    #[test]
    fn failback_exit_status() {
        let done = FailbackReport::default();
        assert_eq!(failback_status(&done), ExitCode::SUCCESS);
        let capped = FailbackReport {
            truncated: true,
            ..FailbackReport::default()
        };
        assert_eq!(failback_status(&capped), ExitCode::FAILURE);
        let stopped = FailbackReport {
            stopped: Some("3 consecutive association failures".into()),
            ..FailbackReport::default()
        };
        assert_eq!(failback_status(&stopped), ExitCode::from(COULD_NOT_RUN));
    }
}
