//! Progress on standard error. `backfill`: an indicatif bar on a terminal;
//! a plain line every few seconds otherwise (a log file, a pipe, a test), so
//! that a long run shows it is alive either way. `restore` and `failback`:
//! an indicatif bar of bytes ([`transfer_bar`]), hidden with `--quiet`.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use pacs_mirror_agent::backfill::{Progress, Totals};

/// Seconds between plain progress lines when standard error is not a terminal.
const LINE_EVERY: Duration = Duration::from_secs(2);

/// The progress display of one backfill.
pub struct BackfillProgress {
    state: Mutex<State>,
}

struct State {
    started: Instant,
    files: u64,
    bytes: u64,
    bar: Option<ProgressBar>,
    last_line: Option<Instant>,
}

impl BackfillProgress {
    /// A bar when standard error is a terminal, lines otherwise.
    pub fn new() -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{spinner} {elapsed_precise} [{wide_bar}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar
        });
        BackfillProgress {
            state: Mutex::new(State {
                started: Instant::now(),
                files: 0,
                bytes: 0,
                bar,
                last_line: None,
            }),
        }
    }

    /// Remove the bar (before the final report is printed).
    pub fn finish(&self) {
        if let Ok(s) = self.state.lock()
            && let Some(bar) = &s.bar
        {
            bar.finish_and_clear();
        }
    }
}

impl Default for BackfillProgress {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress for BackfillProgress {
    fn start(&self, files: u64, bytes: u64) {
        let Ok(mut s) = self.state.lock() else {
            return;
        };
        s.started = Instant::now();
        s.files = files;
        s.bytes = bytes;
        match &s.bar {
            Some(bar) => {
                bar.set_length(bytes);
                bar.reset_eta();
            }
            None => eprintln!(
                "backfill: {files} files, {:.1} MB to read",
                bytes as f64 / 1e6
            ),
        }
    }

    fn update(&self, t: &Totals) {
        let Ok(mut s) = self.state.lock() else {
            return;
        };
        let elapsed = s.started.elapsed().as_secs_f64().max(1e-3);
        let files_per_sec = t.files_done as f64 / elapsed;
        if let Some(bar) = &s.bar {
            bar.set_position(t.bytes_done);
            bar.set_message(format!(
                "{}/{} files, {files_per_sec:.0} files/s, {} skipped",
                t.files_done, s.files, t.skipped
            ));
            return;
        }
        let done = t.files_done >= s.files;
        let due = s.last_line.is_none_or(|l| l.elapsed() >= LINE_EVERY);
        if !(due || done) {
            return;
        }
        s.last_line = Some(Instant::now());
        let bytes_per_sec = t.bytes_done as f64 / elapsed;
        let eta = if bytes_per_sec > 0.0 {
            format!(
                "{:.0} s",
                s.bytes.saturating_sub(t.bytes_done) as f64 / bytes_per_sec
            )
        } else {
            "-".into()
        };
        eprintln!(
            "backfill: {}/{} files, {:.1}/{:.1} MB, {files_per_sec:.1} files/s, {:.1} MB/s, ETA {eta}; {} imported, {} duplicates, {} conflicts, {} skipped",
            t.files_done,
            s.files,
            t.bytes_done as f64 / 1e6,
            s.bytes as f64 / 1e6,
            bytes_per_sec / 1e6,
            t.imported,
            t.duplicates,
            t.conflicts,
            t.skipped,
        );
    }
}

/// A bar of `bytes` for a transfer of `objects` objects (the message says
/// how many are done); hidden when `quiet`.
pub fn transfer_bar(bytes: u64, objects: usize, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(bytes);
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(format!("0/{objects} objects"));
    bar
}

/// A bar counting `total` items (e.g. instances whose size is not known
/// beforehand); hidden when `quiet`.
pub fn count_bar(total: usize, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} instances ETA {eta} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar
}

/// Bytes for people (KiB, MiB…).
pub fn human_bytes(b: u64) -> String {
    indicatif::HumanBytes(b).to_string()
}
