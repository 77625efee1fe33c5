//! `pacs-mirror`: the command line. Thin: parse arguments, load and validate
//! the configuration, call into the library crates. The only place that uses
//! `anyhow`.

mod bucket_cmd;
mod drill_cmd;
mod failover_cmd;
mod progress;
mod synth;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use pacs_mirror_agent::backfill::{self, BackfillReport, DEFAULT_READERS, DEFAULT_SOURCE_AE};
use pacs_mirror_agent::{admin, app};
use pacs_mirror_config::ldif::{DEFAULT_BASE_DN, LdifOptions};
use pacs_mirror_config::{Config, ConfigError, Finding, Severity, validate_ae_title};
use pacs_mirror_dicom::scu;
use pacs_mirror_store::{index::Index, spool::Spool};
use tokio_util::sync::CancellationToken;

/// Mirrored PACS replication and backup agent: a DICOM Storage SCP that
/// answers Success only once an object is durable, then replicates it.
#[derive(Parser, Debug)]
#[command(name = "pacs-mirror", version, about, long_about = None)]
struct Cli {
    /// Log format on standard error.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the agent (Storage SCP) in the foreground until SIGTERM or Ctrl-C.
    /// Without --config it runs on the embedded default: AE PACS_MIRROR on
    /// 127.0.0.1:11112, data under ./pacs-mirror-data.
    Run {
        /// Configuration file (TOML); see `pacs-mirror config example`.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Check or print configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// C-ECHO a DICOM peer and say what is wrong if it fails (association
    /// rejections and TLS handshake failures in plain words).
    Echo {
        /// The peer, as AE@HOST:PORT (e.g. MIRROR@10.0.0.7:104), or, with
        /// --config, the AE title of a configured remote AE (its connection,
        /// TLS and certificate identity as configured). AE@HOST:PORT of a
        /// configured remote AE whose connection is TLS is called over TLS.
        target: String,
        /// Configuration file: remote AEs, and the TLS certificate, key and
        /// trusted CAs.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Our (calling) AE title.
        #[arg(long, default_value = "PACS_MIRROR")]
        calling_ae: String,
        /// Seconds to wait for the connection and each answer.
        #[arg(long, default_value_t = 10)]
        timeout_secs: u64,
    },
    /// Rebuild the index from the spool (agent stopped), every file
    /// re-hashed; each object keeps the deliveries the old index recorded
    /// (nothing a target holds is sent again), and the new index replaces
    /// the old in one atomic step. With --from, add to the index what an
    /// object-storage target holds, from its manifests.
    Reindex {
        /// Configuration file; default: the embedded default.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Keep the replaced index beside the new one, as index.old-<time>.
        #[arg(long, conflicts_with = "from")]
        keep_old: bool,
        /// An object-storage target of the configuration to read instead of
        /// the spool (e.g. on a new machine after the old one was lost).
        #[arg(long, value_name = "TARGET")]
        from: Option<String>,
    },
    /// C-STORE objects from an object-storage target back into a PACS,
    /// reading only the bucket (no local index needed); each object's hash
    /// is verified before it is sent.
    Restore(bucket_cmd::RestoreArgs),
    /// Run a restore drill now: retrieve studies back from a target, compare
    /// every instance with the index, time the recovery; exit 1 on any
    /// failure. A running agent runs it (and alerts); otherwise this
    /// command does, alerting to [alerts] when configured.
    Drill(drill_cmd::DrillArgs),
    /// The drill history, newest first (from the running agent, or the
    /// index).
    Drills(drill_cmd::DrillsArgs),
    /// Before switching to the mirror: is it complete?
    #[command(subcommand)]
    Failover(FailoverCommand),
    /// After an outage during which modalities sent to the mirror: find the
    /// studies since DATE the primary lacks (C-FIND both), retrieve them
    /// from the mirror (C-GET), C-STORE them to the primary and verify every
    /// instance (C-FIND, and C-GET back compared by hash). Studies without
    /// a Study Date on the mirror are considered only with
    /// --include-undated. Exit status: 0 when
    /// every missing instance is verified on the primary (and the mirror's
    /// answer was not capped); 1 when not; 2 when it could not run or
    /// stopped after 3 consecutive association failures to one peer. With
    /// --dry-run: 0 when nothing is to be sent, 1 when something is (or the
    /// mirror's answer was capped), 2 on errors.
    Failback(failover_cmd::FailbackArgs),
    /// Replication lag, ingest counters and warnings: from the running
    /// agent's admin endpoint, or from the index when no agent runs.
    Status {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Read the index (agent stopped: the index is single-process).
    #[command(subcommand)]
    Index(IndexCommand),
    /// Queue every stored object again for a target, e.g. a new or emptied
    /// mirror (agent stopped).
    Resync {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The target's name.
        #[arg(long)]
        target: String,
    },
    /// Objects a target refused for good (agent stopped).
    #[command(subcommand)]
    DeadLetter(DeadLetterCommand),
    /// Objects kept although not conformant (no Study UID, odd UIDs, data
    /// sets that do not parse…), with what is wrong with each.
    #[command(subcommand)]
    Findings(FindingsCommand),
    /// Write synthetic CT studies (Part-10 files, no patient data) to test a
    /// link, a peer or a benchmark.
    Synth(synth::SynthArgs),
    /// Check stored copies (agent stopped).
    #[command(subcommand)]
    Verify(VerifyCommand),
    /// Import a folder of DICOM Part-10 files, recursively, through the same
    /// durable path as network ingest (agent stopped). Progress on standard
    /// error, the report on standard output. Exit status: 0 when every file
    /// was imported or already held; 2 when the run finished but files were
    /// skipped (0 with --allow-skips); 1 when it could not run or a local
    /// failure (spool full, disk or index error) stopped it early.
    Backfill {
        /// The folder to import.
        dir: PathBuf,
        /// Configuration file; default: the embedded default.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Exit 0 even when files were skipped (they are still listed).
        #[arg(long)]
        allow_skips: bool,
        /// Calling AE title recorded for the imported objects, in the index
        /// and as Source AE Title (0002,0016) of their spool files.
        #[arg(long, default_value = DEFAULT_SOURCE_AE)]
        source_ae: String,
        /// Files read in parallel.
        #[arg(long, default_value_t = DEFAULT_READERS as u16, value_parser = clap::value_parser!(u16).range(1..=64))]
        readers: u16,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Validate a configuration file; print every finding; exit 1 on errors.
    Check {
        /// The file.
        file: PathBuf,
    },
    /// Print a commented example configuration.
    Example,
    /// Print the embedded default configuration.
    Default,
    /// Print the configuration as LDIF (RFC 2849) in the DICOM Application
    /// Configuration LDAP schema (PS3.15 Annex H): the device, its network
    /// connections, network AEs and transfer capabilities, every remote
    /// device, and the Unique AE Titles Registry.
    Ldif {
        /// Configuration file; default: the embedded default.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The DN the "cn=DICOM Configuration" root goes under: your
        /// directory's suffix, e.g. "dc=hospital,dc=example".
        #[arg(long, default_value = DEFAULT_BASE_DN)]
        base_dn: String,
        /// Leave out the entries of the configuration root, the Devices root
        /// and the Unique AE Titles Registry root (they exist already).
        #[arg(long)]
        without_roots: bool,
    },
}

#[derive(Subcommand, Debug)]
enum FailoverCommand {
    /// Compare the index with the mirror by C-FIND (study level, then the
    /// instances of studies whose counts differ); list every gap and what is
    /// still queued. A running agent runs it (it holds the index). Exit
    /// status: 0 when the mirror is complete; 1 when it is not; 2 when the
    /// mirror could not be asked or the check could not run.
    Check(failover_cmd::CheckArgs),
}

#[derive(Subcommand, Debug)]
enum FindingsCommand {
    /// Every instance version kept with findings: a table, or one JSON line
    /// each with `--json` (SOP instance, study, sender, findings). From the
    /// running agent (admin endpoint), or from the index when stopped.
    List {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Only those with a finding of this class (e.g. missing_attribute,
        /// nonconformant_uid, structure).
        #[arg(long)]
        class: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum DeadLetterCommand {
    /// One JSON line per dead letter: object, SOP instance, attempts, reason.
    List {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long)]
        target: String,
    },
    /// Put every dead letter back in the queue (after fixing the cause).
    Retry {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long)]
        target: String,
    },
}

#[derive(Subcommand, Debug)]
enum VerifyCommand {
    /// Re-read and re-hash every object the index lists; exit 1 if any is
    /// missing, corrupt or of the wrong size (JSON report on stdout).
    Spool {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum IndexCommand {
    /// One JSON object per stored instance version, with its spool path.
    Dump {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Counts: instances, objects, bytes, conflicts, studies, series, outbox rows.
    Stats {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Rebuild the tallies that status, metrics and drills read (queue
    /// counts and bytes, spool bytes, findings, the study order) from the
    /// rows, by one scan. Needed only after an older pacs-mirror wrote to
    /// this index; the agent must be stopped.
    Retally {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", causes_once(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes joined by ": ", each said once: a cause whose
/// text the message before it already contains (an error that prints its
/// source in its own message) is left out.
fn causes_once(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if text.is_empty() || out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal: a log file or journald gets
    // plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run { config } => {
            if config.is_none() {
                tracing::info!(
                    "no --config given: running on the embedded default (`pacs-mirror config default` prints it)"
                );
            }
            let config = load(config.as_deref())?;
            let tls_problems = pacs_mirror_agent::tls::findings(&config);
            if !tls_problems.is_empty() {
                bail!(
                    "{}",
                    describe_config_error(&ConfigError::Invalid {
                        findings: tls_problems
                    })
                );
            }
            for f in config.plaintext_findings() {
                tracing::warn!("configuration: {f}");
            }
            let shutdown = CancellationToken::new();
            tokio::spawn(watch_signals(shutdown.clone()));
            // Registered before anything else runs: SIGHUP's default action
            // would end the process.
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
                Ok(hup) => {
                    tokio::spawn(watch_hangup(hup));
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot watch SIGHUP: TLS certificates are not reloaded")
                }
            }
            let drills = pacs_mirror_verifier::service::extension(config.clone());
            app::run_with(config, shutdown, Some(drills)).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Config(ConfigCommand::Check { file }) => Ok(config_check(&file)),
        Command::Config(ConfigCommand::Example) => {
            print!("{}", Config::EXAMPLE_TOML);
            Ok(ExitCode::SUCCESS)
        }
        Command::Config(ConfigCommand::Default) => {
            print!("{}", Config::DEFAULT_TOML);
            Ok(ExitCode::SUCCESS)
        }
        Command::Config(ConfigCommand::Ldif {
            config,
            base_dn,
            without_roots,
        }) => {
            let config = load(config.as_deref())?;
            let export = pacs_mirror_config::ldif::to_ldif(
                &config,
                &LdifOptions {
                    base_dn,
                    include_roots: !without_roots,
                },
            )?;
            for w in &export.warnings {
                eprintln!("warning: {w}");
            }
            print!("{}", export.text);
            Ok(ExitCode::SUCCESS)
        }
        Command::Backfill {
            dir,
            config,
            allow_skips,
            source_ae,
            readers,
            json,
        } => {
            let config = load(config.as_deref())?;
            let options = backfill::Options {
                source_dir: dir,
                source_ae,
                readers: usize::from(readers),
            };
            let report = tokio::task::spawn_blocking(move || {
                let progress = progress::BackfillProgress::new();
                let report = backfill::run(&config, &options, &progress);
                progress.finish();
                report
            })
            .await
            .context("the backfill thread failed")??;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_backfill_report(&report);
            }
            Ok(if report.stopped.is_some() {
                ExitCode::FAILURE
            } else if !report.skipped.is_empty() && !allow_skips {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Echo {
            target,
            config,
            calling_ae,
            timeout_secs,
        } => {
            let config = config.as_deref().map(|c| load(Some(c))).transpose()?;
            run_echo(config.as_ref(), &target, &calling_ae, timeout_secs).await
        }
        Command::Reindex {
            config,
            from,
            keep_old,
        } => {
            let config = load(config.as_deref())?;
            match from {
                Some(from) => bucket_cmd::reindex_from(&config, &from).await,
                None => reindex(&config, keep_old),
            }
        }
        Command::Drill(args) => {
            let config = load(args.config.as_deref())?;
            drill_cmd::drill(&config, args).await
        }
        Command::Drills(args) => {
            let config = load(args.config.as_deref())?;
            drill_cmd::drills(&config, args).await
        }
        Command::Failover(FailoverCommand::Check(args)) => Ok(failover_cmd::check(args).await),
        Command::Failback(args) => Ok(failover_cmd::failback(args).await),
        Command::Restore(args) => {
            let config = load(args.config.as_deref())?;
            bucket_cmd::restore(&config, args).await
        }
        Command::Index(IndexCommand::Dump { config }) => {
            let config = load(config.as_deref())?;
            index_dump(&config)
        }
        Command::Status { config, json } => {
            let config = load(config.as_deref())?;
            let status = status(&config).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print_status(&status);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Resync { config, target } => {
            let config = load(config.as_deref())?;
            check_target(&config, &target)?;
            let index = open_index(&config)?;
            let n = index.resync(&target, pacs_mirror_agent::unix_ms())?;
            index.flush()?;
            println!("{n} object(s) queued again for {target}");
            Ok(ExitCode::SUCCESS)
        }
        Command::DeadLetter(DeadLetterCommand::List { config, target }) => {
            let config = load(config.as_deref())?;
            check_target(&config, &target)?;
            let index = open_index(&config)?;
            for (hash, letter) in index.dead_letters(&target)? {
                let sop = index
                    .object(&hash)?
                    .map(|o| o.sop_instance_uid)
                    .unwrap_or_default();
                println!(
                    "{}",
                    serde_json::json!({
                        "blake3": pacs_mirror_store::index::hash_hex(&hash),
                        "sop_instance_uid": sop,
                        "attempts": letter.attempts,
                        "failed_at_ms": letter.failed_at_ms,
                        "reason": letter.reason,
                    })
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Findings(FindingsCommand::List {
            config,
            class,
            json,
        }) => {
            let config = load(config.as_deref())?;
            if let Some(c) = &class
                && !pacs_mirror_store::index::FindingClass::ALL
                    .iter()
                    .any(|k| k.name() == c)
            {
                let names: Vec<&str> = pacs_mirror_store::index::FindingClass::ALL
                    .iter()
                    .map(|k| k.name())
                    .collect();
                anyhow::bail!("no finding class {c:?} (classes: {})", names.join(", "));
            }
            let list: Vec<_> = flagged(&config)
                .await?
                .into_iter()
                .filter(|r| {
                    class
                        .as_deref()
                        .is_none_or(|c| r.findings.iter().any(|f| f.class.name() == c))
                })
                .collect();
            if json {
                for r in &list {
                    println!("{}", serde_json::to_string(r)?);
                }
            } else if list.is_empty() {
                println!("no object kept with findings");
            } else {
                for r in &list {
                    let or_dash = |s: &str| {
                        if s.is_empty() {
                            "-".to_string()
                        } else {
                            s.escape_debug().to_string()
                        }
                    };
                    println!(
                        "{}  study {}  from {}  blake3 {}",
                        r.sop_instance_uid.escape_debug(),
                        or_dash(&r.study_instance_uid),
                        or_dash(&r.calling_ae),
                        &r.blake3[..16.min(r.blake3.len())]
                    );
                    for f in &r.findings {
                        println!("    {}", f.to_string().escape_debug());
                    }
                }
                println!("{} instance version(s) kept with findings", list.len());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::DeadLetter(DeadLetterCommand::Retry { config, target }) => {
            let config = load(config.as_deref())?;
            check_target(&config, &target)?;
            let index = open_index(&config)?;
            let n = index.retry_dead_letters(&target, pacs_mirror_agent::unix_ms())?;
            index.flush()?;
            println!("{n} dead letter(s) queued again for {target}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Synth(args) => {
            synth::run(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify(VerifyCommand::Spool { config }) => {
            let config = load(config.as_deref())?;
            let index = open_index(&config)?;
            let dirs = app::DataDirs::new(&config.device.data_dir);
            let spool = Spool::open(&dirs.spool, app::spool_limits(&config))?;
            let report = pacs_mirror_verifier::scrub_spool(&index, &spool)?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            eprintln!(
                "checked {} objects ({} bytes): {} finding(s)",
                report.checked,
                report.bytes_read,
                report.findings.len()
            );
            Ok(if report.findings.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Index(IndexCommand::Stats { config }) => {
            let config = load(config.as_deref())?;
            let index = open_index(&config)?;
            println!("{}", serde_json::to_string_pretty(&index.stats()?)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Index(IndexCommand::Retally { config }) => {
            let config = load(config.as_deref())?;
            let index = open_index(&config)?;
            let started = std::time::Instant::now();
            index.retally()?;
            let spool = index.spool_tally()?;
            println!(
                "tallies rebuilt in {:.1} s: {} objects, {} bytes held, {} evicted",
                started.elapsed().as_secs_f64(),
                spool.objects,
                spool.bytes,
                spool.evicted
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The configuration from a file (validated; warnings logged), or the
/// embedded default.
fn load(path: Option<&Path>) -> anyhow::Result<Config> {
    let Some(path) = path else {
        return Ok(Config::embedded_default());
    };
    match Config::load_validated(path) {
        Ok((config, warnings)) => {
            for w in warnings {
                tracing::warn!("{w}");
            }
            Ok(config)
        }
        Err(e) => bail!("{}", describe_config_error(&e)),
    }
}

fn describe_config_error(e: &ConfigError) -> String {
    match e {
        ConfigError::Invalid { findings } => {
            let mut s = format!(
                "the configuration has {} problem(s):",
                count_errors(findings)
            );
            for f in findings {
                s.push_str(&format!("\n  {f}"));
            }
            s
        }
        other => other.to_string(),
    }
}

fn count_errors(findings: &[Finding]) -> usize {
    findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count()
}

fn config_check(file: &Path) -> ExitCode {
    let config = match Config::load(file) {
        Ok(c) => c,
        // Unknown keys and wrong types: every one, like validation findings.
        Err(ConfigError::Invalid { findings }) => {
            for f in &findings {
                println!("{f}");
            }
            let errors = count_errors(&findings);
            println!(
                "{}: {errors} error(s), {} warning(s)",
                file.display(),
                findings.len() - errors
            );
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("{}: {e}", file.display());
            return ExitCode::FAILURE;
        }
    };
    let mut findings = config.validate();
    // The TLS files: read, parsed, key against certificate (every problem).
    findings.extend(pacs_mirror_agent::tls::findings(&config));
    findings.extend(config.plaintext_findings());
    if count_errors(&findings) == 0 {
        // Object-store options are checked by building each client (no
        // network access; folder targets are left alone: opening creates
        // the folder).
        for (i, t) in config.targets.iter().enumerate() {
            if let pacs_mirror_config::Target::ObjectStore { url, .. } = t
                && !url.starts_with("file://")
                && let Err(e) = bucket_cmd::open_bucket(&config, t.name(), &[])
            {
                findings.push(Finding::error(format!("target[{i}]"), format!("{e:#}")));
            }
        }
    }
    for f in &findings {
        println!("{f}");
    }
    let errors = count_errors(&findings);
    let warnings = findings.len() - errors;
    if errors > 0 {
        println!(
            "{}: {errors} error(s), {warnings} warning(s)",
            file.display()
        );
        ExitCode::FAILURE
    } else {
        println!("{}: valid ({warnings} warning(s))", file.display());
        ExitCode::SUCCESS
    }
}

/// A peer given on the command line: `AE@HOST:PORT`, or the AE title of a
/// remote AE of `config` (its configured connection). Over TLS when the
/// configuration has that AE on a TLS connection (then `AE@HOST:PORT` only
/// overrides where to connect). The AE titles are checked.
pub(crate) fn parse_peer(
    config: Option<&Config>,
    target: &str,
    calling_ae: &str,
    timeout_secs: u64,
) -> anyhow::Result<scu::Peer> {
    if let Err(e) = validate_ae_title(calling_ae) {
        bail!("calling AE title {calling_ae:?}: {e}");
    }
    let configured = |ae: &str| {
        config.and_then(|c| {
            c.remote_ae(ae)?;
            Some(app::remote_peer(
                c,
                ae,
                Some(calling_ae),
                calling_ae,
                timeout_secs,
            ))
        })
    };
    let Some((ae, rest)) = target.split_once('@') else {
        return match configured(target) {
            Some(peer) => Ok(peer?),
            None if config.is_some() => bail!(
                "{target:?} is not the AE title of a configured remote AE; write the peer as AE@HOST:PORT, e.g. MIRROR@10.0.0.7:104"
            ),
            None => bail!(
                "the peer must be written AE@HOST:PORT, e.g. MIRROR@10.0.0.7:104 (or give --config and a remote AE title)"
            ),
        };
    };
    let (host, port) = rest
        .rsplit_once(':')
        .context("the peer must be written AE@HOST:PORT (port missing)")?;
    let port: u16 = port
        .parse()
        .with_context(|| format!("{port:?} is not a TCP port number"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Err(e) = validate_ae_title(ae) {
        bail!("called AE title {ae:?}: {e}");
    }
    let tls = match configured(ae) {
        Some(Ok(peer)) => peer.tls,
        Some(Err(app::PeerError::NoConnection(_))) | None => None,
        Some(Err(e)) => return Err(e.into()),
    };
    Ok(scu::Peer {
        calling_ae: calling_ae.to_string(),
        called_ae: ae.to_string(),
        host: host.to_string(),
        port,
        timeout: Duration::from_secs(timeout_secs),
        tls,
        pace: None,
    })
}

async fn run_echo(
    config: Option<&Config>,
    target: &str,
    calling_ae: &str,
    timeout_secs: u64,
) -> anyhow::Result<ExitCode> {
    let peer = parse_peer(config, target, calling_ae, timeout_secs)?;
    match scu::echo(&peer).await {
        Ok(ok) => {
            println!(
                "C-ECHO {target}: Success in {} ms (peer max PDU {} bytes)",
                ok.elapsed.as_millis(),
                ok.peer_max_pdu
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("C-ECHO {target}: FAILED: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn open_index(config: &Config) -> anyhow::Result<Index> {
    let dirs = app::DataDirs::new(&config.device.data_dir);
    if !dirs.index.exists() {
        bail!(
            "no index at {} (nothing received yet, or wrong --config)",
            dirs.index.display()
        );
    }
    app::open_index(config)
        .with_context(|| format!("opening the index at {}", dirs.index.display()))
}

fn index_dump(config: &Config) -> anyhow::Result<ExitCode> {
    let index = open_index(config)?;
    let dirs = app::DataDirs::new(&config.device.data_dir);
    let spool = Spool::open(&dirs.spool, app::spool_limits(config))?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut failure = None;
    index.for_each_instance(&mut |rec| {
        if failure.is_some() {
            return;
        }
        let path = pacs_mirror_store::index::parse_hash(&rec.blake3)
            .map(|h| spool.object_path(&h))
            .map(|p| std::path::absolute(&p).unwrap_or(p));
        let mut v = match serde_json::to_value(&rec) {
            Ok(v) => v,
            Err(e) => {
                failure = Some(anyhow::Error::from(e));
                return;
            }
        };
        if let (Some(obj), Ok(p)) = (v.as_object_mut(), path) {
            obj.insert("path".into(), p.display().to_string().into());
        }
        use std::io::Write;
        if let Err(e) = writeln!(out, "{v}") {
            failure = Some(e.into());
        }
    })?;
    match failure {
        Some(e) => Err(e),
        None => Ok(ExitCode::SUCCESS),
    }
}

fn reindex(config: &Config, keep_old: bool) -> anyhow::Result<ExitCode> {
    let outcome = app::reindex(config, keep_old).context("reindex (is the agent running?)")?;
    match &outcome.old_index {
        app::OldIndex::None => {}
        app::OldIndex::Replaced { kept_at: None } => {
            eprintln!(
                "old index replaced ({} deliveries carried over)",
                outcome.recovery.deliveries_kept
            )
        }
        app::OldIndex::Replaced { kept_at: Some(p) } => eprintln!(
            "old index replaced ({} deliveries carried over), kept at {}",
            outcome.recovery.deliveries_kept,
            p.display()
        ),
        app::OldIndex::Unreadable { error, kept_at } => eprintln!(
            "old index unreadable ({error}): every object is queued for every target; old index kept at {}",
            kept_at.display()
        ),
    }
    println!("{}", serde_json::to_string_pretty(&outcome.recovery)?);
    let index = open_index(config)?;
    let stats = index.stats()?;
    println!("{}", serde_json::to_string_pretty(&stats)?);
    Ok(if outcome.recovery.quarantined.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// SIGHUP: read the DICOM TLS files again. The next association uses the
/// new certificate; those in progress keep theirs. Bad files keep the old
/// material, with an error in the log.
async fn watch_hangup(mut hup: tokio::signal::unix::Signal) {
    while hup.recv().await.is_some() {
        let results = pacs_mirror_agent::tls::reload();
        if results.is_empty() {
            tracing::info!("SIGHUP: no DICOM TLS configured, nothing to reload");
        }
        for r in results {
            match r {
                Ok(cert) => tracing::info!(
                    certificate = cert.as_deref().unwrap_or("none"),
                    "SIGHUP: DICOM TLS files reloaded; new associations use them"
                ),
                Err(e) => tracing::error!(
                    error = %e,
                    "SIGHUP: DICOM TLS files NOT reloaded (the previous certificate stays in use)"
                ),
            }
        }
    }
}

async fn watch_signals(shutdown: CancellationToken) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            shutdown.cancel();
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt received"),
    }
    shutdown.cancel();
}

/// The status from the running agent, or computed from the index.
/// `GET <path>` from the running agent's admin endpoint: `None` when no
/// agent answers there (or none is configured).
async fn from_agent<T: serde::de::DeserializeOwned>(
    config: &Config,
    path: &str,
    timeout: Duration,
) -> anyhow::Result<Option<T>> {
    let Some(a) = &config.admin else {
        return Ok(None);
    };
    let url = format!("http://{}{path}", a.listen);
    let client = reqwest::Client::builder().timeout(timeout).build()?;
    match client.get(&url).send().await {
        Ok(r) => {
            let r = r.error_for_status().with_context(|| format!("GET {url}"))?;
            Ok(Some(r.json().await.with_context(|| format!("GET {url}"))?))
        }
        Err(e) if e.is_connect() => Ok(None),
        Err(e) => Err(e).with_context(|| format!("GET {url}")),
    }
}

/// The index, when no agent answered on the admin endpoint.
fn index_without_agent(config: &Config) -> anyhow::Result<pacs_mirror_store::index::Index> {
    open_index(config).context(
        "no agent answered on the admin endpoint, and the index cannot be read (an agent without [admin] may be running)",
    )
}

async fn status(config: &Config) -> anyhow::Result<admin::Status> {
    if let Some(s) = from_agent(config, "/status", Duration::from_secs(10)).await? {
        return Ok(s);
    }
    let index = index_without_agent(config)?;
    let now = pacs_mirror_agent::unix_ms();
    let mut targets = std::collections::BTreeMap::new();
    for t in &config.targets {
        targets.insert(
            t.name().to_string(),
            pacs_mirror_agent::replicate::status::target_status(&index, t.name(), None, now)?,
        );
    }
    Ok(admin::Status {
        version: env!("CARGO_PKG_VERSION").into(),
        running: false,
        started_at_ms: None,
        listeners: Vec::new(),
        warnings: config.warnings().iter().map(ToString::to_string).collect(),
        ingest: admin::IngestStatus::default(),
        spool_bytes: index.spool_bytes()?,
        targets,
        alerts: Vec::new(),
        findings: admin::FindingsStatus::from_index(&index)?,
        workers: Default::default(),
        tls: None,
        storage_unhealthy: None,
        index_unreadable: None,
    })
}

/// Every instance version kept with findings: from the running agent, or
/// from the index.
async fn flagged(config: &Config) -> anyhow::Result<Vec<pacs_mirror_store::index::InstanceRecord>> {
    if let Some(list) = from_agent(config, "/findings", Duration::from_secs(60)).await? {
        return Ok(list);
    }
    Ok(index_without_agent(config)?.flagged()?)
}

fn ago(ms: Option<u64>) -> String {
    ms.map_or_else(
        || "-".into(),
        |t| {
            format!(
                "{} s ago",
                pacs_mirror_agent::unix_ms().saturating_sub(t) / 1000
            )
        },
    )
}

/// A live window for `status`: "5 min", "90 s", "2 h".
fn live_window(secs: u64) -> String {
    match secs {
        s if s >= 3600 && s % 3600 == 0 => format!("{} h", s / 3600),
        s if s >= 60 && s % 60 == 0 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

fn print_status(s: &admin::Status) {
    if s.running {
        println!(
            "pacs-mirror {}: running, started {}",
            s.version,
            ago(s.started_at_ms)
        );
        for l in &s.listeners {
            println!("  listening: {l}");
        }
        let i = &s.ingest;
        println!(
            "  ingest since start: {} stored ({} not conformant, kept), {} identical re-sends, {} new versions, {} refused",
            i.stored, i.kept_with_findings, i.duplicates, i.conflicts, i.failed
        );
        if let Some(l) = &s.storage_unhealthy {
            println!(
                "  STORAGE UNHEALTHY since {}: {l}; check the disk, then restart the agent (ops/runbooks/disk-full.md)",
                pacs_mirror_agent::iso_utc(l.at_ms)
            );
        }
        if let Some(e) = &s.index_unreadable {
            println!(
                "  INDEX UNREADABLE: {e}; targets and findings are not shown; restart the agent (ops/runbooks/disk-full.md)"
            );
        }
    } else {
        println!(
            "pacs-mirror {}: not running (figures from the index)",
            s.version
        );
    }
    println!("  spool: {:.1} MB", s.spool_bytes as f64 / 1e6);
    let f = &s.findings;
    if f.by_class.is_empty() {
        println!("  non-conformant objects held: none");
    } else {
        let classes: Vec<String> = f.by_class.iter().map(|(c, n)| format!("{n} {c}")).collect();
        println!(
            "  non-conformant objects held (kept byte-exact; `pacs-mirror findings list`): {}",
            classes.join(", ")
        );
    }
    if f.without_study > 0 {
        println!(
            "  {} instance version(s) without a Study Instance UID: drills and failover checks cannot reach them by study",
            f.without_study
        );
    }
    for w in &s.warnings {
        println!("  {w}");
    }
    if let Some(t) = &s.tls {
        let days = t
            .not_after_ms
            .map(|n| (n - pacs_mirror_agent::unix_ms() as i64) / 86_400_000);
        println!(
            "  DICOM TLS certificate: {}{}",
            t.certificate
                .as_deref()
                .unwrap_or("none (this device presents no certificate)"),
            days.map(|d| format!("; expires in {d} day(s)"))
                .unwrap_or_default()
        );
        if !t.handshake_failures.is_empty() {
            let f: Vec<String> = t
                .handshake_failures
                .iter()
                .map(|(reason, n)| format!("{n} {reason}"))
                .collect();
            println!("  failed TLS handshakes since start: {}", f.join(", "));
        }
    }
    if s.running && !s.workers.is_empty() {
        let workers: Vec<String> = s
            .workers
            .iter()
            .map(|(name, w)| match w.next_in_secs {
                Some(n) => format!("{name} {} (next in {n} s)", w.state),
                None => format!("{name} {}", w.state),
            })
            .collect();
        println!("  workers: {}", workers.join(", "));
    }
    if s.running {
        if s.alerts.is_empty() {
            println!("  alerts: none firing");
        }
        for a in &s.alerts {
            println!(
                "  ALERT {} ({}), since {}: {}",
                a.kind,
                a.subject,
                ago(Some(a.since_ms)),
                a.text
            );
        }
    }
    if s.targets.is_empty() {
        println!("  no replication targets configured");
        return;
    }
    println!(
        "\n  {:<16} {:>8} {:>10} {:>10} {:>10} {:>6}  {:<8} {:>6} {:<14} last error",
        "target",
        "pending",
        "pending MB",
        "oldest",
        "delivered",
        "dead",
        "circuit",
        "slots",
        "last success"
    );
    for (name, t) in &s.targets {
        println!(
            "  {:<16} {:>8} {:>10.1} {:>10} {:>10} {:>6}  {:<8} {:>6} {:<14} {}",
            name,
            t.pending,
            t.pending_bytes as f64 / 1e6,
            t.oldest_pending_age_secs
                .map_or("-".into(), |a| format!("{a} s")),
            t.delivered,
            t.dead_letters,
            if t.circuit_open { "OPEN" } else { "closed" },
            // associations (DICOM) or uploads (object store): in use/limit
            t.associations
                .or(t.uploads)
                .map_or("-".into(), |a| format!("{}/{}", a.in_use, a.limit)),
            ago(t.last_success_at_ms),
            t.last_error.as_deref().unwrap_or("-"),
        );
    }
    for (name, t) in &s.targets {
        if let Some(c) = &t.commitment
            && (c.awaiting > 0 || c.open_requests > 0)
        {
            println!(
                "  {name}: {} stored by the mirror, awaiting its storage commitment (oldest {}; {} request(s) open, asked up to {} time(s)); counted delivered once committed",
                c.awaiting,
                c.oldest_awaiting_age_secs
                    .map_or("-".into(), |a| format!("{a} s")),
                c.open_requests,
                c.most_requests
            );
        }
        if t.pending > 0 {
            println!(
                "  {name}: pending {} live (arrived in the last {}, sent first), {} backlog",
                t.pending_live,
                live_window(t.live_window_secs),
                t.pending - t.pending_live.min(t.pending)
            );
        }
        if t.bytes_per_sec.is_none() && t.max_bandwidth_bytes_per_sec.is_none() {
            continue;
        }
        println!(
            "  {name}: sending {} over the last minute; cap now {}",
            t.bytes_per_sec.map_or("-".into(), |b| format!(
                "{:.2} MB/s ({:.1} Mbit/s)",
                b as f64 / 1e6,
                b as f64 * 8e-6
            )),
            t.max_bandwidth_bytes_per_sec
                .map_or("unlimited".into(), |b| format!(
                    "{:.2} MB/s ({:.1} Mbit/s)",
                    b as f64 / 1e6,
                    b as f64 * 8e-6
                )),
        );
    }
}

fn print_backfill_report(r: &BackfillReport) {
    let t = &r.totals;
    println!(
        "backfill of {} (source AE {}): {} of {} files, {:.1} MB, in {:.1} s ({:.0} files/s)",
        r.source_dir.display(),
        r.source_ae,
        t.files_done,
        r.files,
        t.bytes_done as f64 / 1e6,
        r.elapsed_ms as f64 / 1000.0,
        r.files_per_sec()
    );
    println!("  imported:   {}", t.imported);
    println!(
        "  duplicates: {} (already held: not stored again)",
        t.duplicates
    );
    println!(
        "  conflicts:  {} (another version of a SOP instance already held: both kept)",
        t.conflicts
    );
    for c in &r.conflicts {
        println!("    {}: {}", c.path.display(), c.sop_instance_uid);
    }
    println!("  skipped:    {}", r.skipped.len());
    for s in &r.skipped {
        println!("    {}: {}", s.path.display(), s.reason);
    }
    let rec = &r.recovery;
    if rec.temp_files_removed > 0 || rec.reindexed > 0 || !rec.quarantined.is_empty() {
        println!(
            "  start-up recovery: {} temp files removed, {} objects indexed again, {} quarantined",
            rec.temp_files_removed,
            rec.reindexed,
            rec.quarantined.len()
        );
    }
    if let Some(reason) = &r.stopped {
        println!(
            "  STOPPED EARLY: {reason}\n  What was imported stays imported; fix the cause and run the same backfill again."
        );
    }
}

fn check_target(config: &Config, name: &str) -> anyhow::Result<()> {
    if config.targets.iter().any(|t| t.name() == name) {
        return Ok(());
    }
    let names: Vec<&str> = config.targets.iter().map(|t| t.name()).collect();
    bail!("no target named {name:?} in the configuration (targets: {names:?})")
}
