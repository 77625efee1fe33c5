//! Spool retention: removes the file of an object that every replication
//! target has had for `spool.retain_after_delivery_secs` (off by default).
//!
//! # Order (the only place that deletes spool files)
//! 1. mark the objects evicted in the index and **flush**;
//! 2. remove their files.
//!
//! A crash between 1 and 2 leaves files of evicted objects: start-up
//! recovery clears their mark (the file is there) and a later sweep removes
//! them again. The reverse order could leave the index claiming a file that
//! is gone. Objects are never evicted when no target is configured (the spool
//! is then the only copy), and their index rows stay.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::index::{Index, IndexError};
use crate::spool::Spool;

/// Objects removed per sweep at most.
const PER_SWEEP: usize = 10_000;

/// One sweep: returns how many files were removed.
pub fn sweep(
    index: &Index,
    spool: &Spool,
    targets: &[String],
    retain: Duration,
    now_ms: u64,
) -> Result<usize, IndexError> {
    let hashes = index.evictable(targets, now_ms, retain.as_millis() as u64, PER_SWEEP)?;
    if hashes.is_empty() {
        return Ok(0);
    }
    let mut sizes = Vec::with_capacity(hashes.len());
    for h in &hashes {
        sizes.push(index.object(h)?.map_or(0, |o| o.file_bytes));
        index.mark_evicted(h, now_ms)?;
    }
    index.flush()?;
    let mut removed = 0;
    for (h, size) in hashes.iter().zip(sizes) {
        let path = spool.object_path(h);
        match std::fs::remove_file(&path) {
            Ok(()) => {
                spool.forget(size);
                removed += 1;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "retention could not remove a file")
            }
        }
    }
    Ok(removed)
}

/// Sweep periodically until `shutdown`.
pub async fn run(
    index: Index,
    spool: Arc<Spool>,
    targets: Vec<String>,
    retain: Duration,
    shutdown: CancellationToken,
) {
    let every = (retain / 10).clamp(Duration::from_secs(1), Duration::from_secs(300));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
        }
        let (i, s, t) = (index.clone(), spool.clone(), targets.clone());
        let now = crate::unix_ms();
        match tokio::task::spawn_blocking(move || sweep(&i, &s, &t, retain, now)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(
                files = n,
                "retention removed spool files delivered to every target"
            ),
            Ok(Err(e)) => tracing::error!(error = %e, "retention sweep failed"),
            Err(e) => tracing::error!(error = %e, "retention sweep panicked"),
        }
    }
}
