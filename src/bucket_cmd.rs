//! `pacs-mirror restore` and `pacs-mirror reindex --from`: the commands
//! that read only a bucket.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use pacs_mirror_agent::app;
use pacs_mirror_agent::bucket::{Bucket, BucketSettings, DESCRIPTOR_KEY, Layout};
use pacs_mirror_config::{Config, Target};
use pacs_mirror_store::spool::Spool;
use pacs_mirror_verifier::restore::{self, Done, Outcome, Selection, SendSettings};

/// Arguments of `restore`.
#[derive(clap::Args, Debug)]
pub struct RestoreArgs {
    /// Configuration file (for the target's URL and options); default: the
    /// embedded default.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// The object-storage target: its name in the configuration, or a URL
    /// (s3://bucket/prefix, file:///dir…).
    #[arg(long)]
    pub from: String,
    /// Client option for a --from URL, KEY=VALUE (e.g. endpoint=http://…,
    /// allow_http=true); repeatable.
    #[arg(long = "store-option", value_name = "KEY=VALUE")]
    pub store_options: Vec<String>,
    /// The PACS to store into, AE@HOST:PORT.
    #[arg(long)]
    pub to: String,
    /// Our calling AE title (default: the configuration's local AE).
    #[arg(long)]
    pub calling_ae: Option<String>,
    /// Only this study (Study Instance UID); repeatable.
    #[arg(long = "study", value_name = "UID")]
    pub studies: Vec<String>,
    /// Only this patient (Patient ID).
    #[arg(long)]
    pub patient: Option<String>,
    /// Only studies dated (Study Date) on or after DATE (YYYY-MM-DD);
    /// studies without a date by the day they were received.
    #[arg(long, value_name = "DATE")]
    pub since: Option<String>,
    /// Send every version held of a SOP instance, oldest first (default:
    /// the newest only).
    #[arg(long)]
    pub all_versions: bool,
    /// Associations in parallel.
    #[arg(long, default_value_t = 2)]
    pub associations: usize,
    /// Seconds to wait for the PACS to connect and to answer.
    #[arg(long, default_value_t = 60)]
    pub timeout_secs: u64,
    /// Where downloads over 8 MiB wait to be sent, and smaller ones when
    /// the PACS is not reachable (default: a new temporary directory).
    /// Smaller ones wait in memory, at most 128 MiB in all.
    #[arg(long)]
    pub scratch: Option<PathBuf>,
    /// Print only what would be restored.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the final report as JSON.
    #[arg(long)]
    pub json: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// The bucket named by `from`: a target of `config`, or a URL.
pub fn open_bucket(config: &Config, from: &str, options: &[String]) -> anyhow::Result<Bucket> {
    let settings = if from.contains("://") {
        let mut opts = Vec::new();
        for o in options {
            let (k, v) = o
                .split_once('=')
                .with_context(|| format!("--store-option {o:?}: write KEY=VALUE"))?;
            opts.push((k.trim().to_string(), v.trim().to_string()));
        }
        BucketSettings {
            url: from.to_string(),
            options: opts,
            timeout: Duration::from_secs(60),
        }
    } else {
        if !options.is_empty() {
            bail!("--store-option goes with a --from URL; a configured target has its own options");
        }
        let target = config.targets.iter().find(|t| t.name() == from);
        match target {
            Some(Target::ObjectStore {
                url,
                options,
                timeout_secs,
                ..
            }) => BucketSettings {
                url: url.clone(),
                options: options
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                timeout: Duration::from_secs(*timeout_secs),
            },
            Some(Target::Dicom { .. }) => {
                bail!("target {from:?} is a DICOM target; --from needs an object-storage target")
            }
            None => {
                let names: Vec<&str> = config
                    .targets
                    .iter()
                    .filter(|t| matches!(t, Target::ObjectStore { .. }))
                    .map(Target::name)
                    .collect();
                bail!(
                    "no object-storage target named {from:?} (configured: {names:?}); a URL works too"
                )
            }
        }
    };
    // Reading never creates a folder: a typo is an error, not a new
    // empty bucket.
    Ok(Bucket::open_existing(&settings)?)
}

/// A restore or reindex error: a mistake in what was asked says what and
/// where on its own; a failure gets the bucket it was reading.
fn bucket_error(e: restore::RestoreError, bucket: &Bucket) -> anyhow::Error {
    if e.is_mistake() {
        e.into()
    } else {
        anyhow::Error::new(e).context(format!("reading the bucket {}", bucket.url()))
    }
}

/// `pacs-mirror restore`.
pub async fn restore(config: &Config, args: RestoreArgs) -> anyhow::Result<ExitCode> {
    let bucket = Arc::new(open_bucket(config, &args.from, &args.store_options)?);
    let calling = args
        .calling_ae
        .clone()
        .unwrap_or_else(|| app::default_calling_ae(config));
    let peer = crate::parse_peer(Some(config), &args.to, &calling, args.timeout_secs)?;
    let selection = Selection {
        studies: args.studies.clone(),
        patient_id: args.patient.clone(),
        since: args.since.as_deref().map(restore::parse_date).transpose()?,
        all_versions: args.all_versions,
    };
    eprintln!("reading {} …", bucket.url());
    let plan = restore::plan(&bucket, &selection)
        .await
        .map_err(|e| bucket_error(e, &bucket))?;
    if plan.layout == Some(Layout::Undescribed) {
        eprintln!(
            "note: {} has no descriptor ({DESCRIPTOR_KEY}; written by a version from before descriptors): its manifests and objects say what it holds",
            bucket.url()
        );
    }
    eprintln!(
        "{} object(s), {} in {} study(ies); {} older version(s) not sent; {}; {} manifest entr(ies) without a blob",
        plan.objects.len(),
        crate::progress::human_bytes(plan.bytes()),
        plan.studies,
        plan.older_versions_skipped,
        plan.unlisted_blobs.map_or_else(
            || "blobs listed in no manifest not looked for (studies chosen)".to_string(),
            |n| format!("{n} blob(s) listed in no manifest")
        ),
        plan.missing_blobs.len()
    );
    if args.dry_run {
        return Ok(ExitCode::SUCCESS);
    }
    let scratch_holder;
    let scratch = match &args.scratch {
        Some(p) => p.clone(),
        None => {
            scratch_holder = tempfile::Builder::new()
                .prefix("pacs-mirror-restore-")
                .tempdir()
                .context("creating a scratch directory")?;
            scratch_holder.path().to_path_buf()
        }
    };
    let bar = crate::progress::transfer_bar(plan.bytes(), plan.objects.len(), args.quiet);
    let b = bar.clone();
    let total = plan.objects.len();
    let finished = std::sync::atomic::AtomicUsize::new(0);
    let progress: Arc<dyn Fn(&Done) + Send + Sync> = Arc::new(move |d: &Done| {
        let n = finished.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        b.inc(d.bytes);
        b.set_message(format!("{n}/{total} objects"));
        if !matches!(d.outcome, Outcome::Stored) {
            b.suspend(|| eprintln!("{} {}: {:?}", d.blake3, d.sop_instance_uid, d.outcome));
        }
    });
    let settings = SendSettings {
        peer,
        associations: args.associations,
        scratch,
    };
    let report = restore::restore(bucket, plan, &settings, progress).await?;
    bar.finish_and_clear();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "restore to {}: {} of {} object(s) stored ({}) in {:.1} s: {:.1} objects/s, {}/s",
            args.to,
            report.stored,
            report.planned,
            crate::progress::human_bytes(report.bytes),
            report.seconds,
            report.stored as f64 / report.seconds.max(1e-9),
            crate::progress::human_bytes((report.bytes as f64 / report.seconds.max(1e-9)) as u64)
        );
        for d in report.corrupt.iter().chain(&report.failed) {
            println!(
                "  NOT RESTORED {} {}: {:?}",
                d.blake3, d.sop_instance_uid, d.outcome
            );
        }
        for k in &report.missing_blobs {
            println!("  MISSING from the bucket: {k}");
        }
        println!(
            "{}",
            if report.complete() {
                "complete: every selected object was verified and stored"
            } else {
                "INCOMPLETE: see above"
            }
        );
    }
    Ok(if report.complete() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `pacs-mirror reindex --from TARGET`.
pub async fn reindex_from(config: &Config, from: &str) -> anyhow::Result<ExitCode> {
    let Some(Target::ObjectStore { .. }) = config.targets.iter().find(|t| t.name() == from) else {
        bail!(
            "--from names an object-storage target of the configuration (its rows are recorded as delivered to it)"
        );
    };
    let bucket = open_bucket(config, from, &[])?;
    // Before the index is opened (or made): a mistake touches nothing.
    restore::check_bucket(&bucket)
        .await
        .map_err(|e| bucket_error(e, &bucket))?;
    let dirs = app::DataDirs::new(&config.device.data_dir);
    let spool = Spool::open(&dirs.spool, app::spool_limits(config))?;
    let index = app::open_index(config).with_context(|| {
        format!(
            "opening the index at {} (is the agent running?)",
            dirs.index.display()
        )
    })?;
    let report = restore::reindex_from(&bucket, &index, &spool, from)
        .await
        .map_err(|e| bucket_error(e, &bucket))?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(ExitCode::SUCCESS)
}
