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
//!
//! Each sweep reads at most [`ROWS_PER_SWEEP`] object rows of the index,
//! taking up where the previous sweep stopped (from the start after a
//! restart), so its cost does not grow with the archive; on a very large
//! archive an object may be removed some sweeps after it became removable,
//! never before.
//!
//! The agent runs [`sweep`] periodically (its retention worker); this
//! module does not schedule anything.

use std::time::Duration;

use crate::index::outbox::EvictScan;
use crate::index::{Index, IndexError};
use crate::spool::Spool;

/// Objects removed per sweep at most.
const PER_SWEEP: usize = 10_000;
/// Object rows read per sweep at most: a sweep takes up where the previous
/// one stopped, so an archive of millions is gone round in several sweeps
/// at a bounded cost each (10 million: 100 sweeps, at most every 5 minutes).
const ROWS_PER_SWEEP: usize = 100_000;

/// Where the next sweep takes up its scan of the index.
pub fn new_scan() -> EvictScan {
    EvictScan {
        after: None,
        max_rows: ROWS_PER_SWEEP,
    }
}

/// One sweep: returns how many files were removed.
pub fn sweep(
    index: &Index,
    spool: &Spool,
    targets: &[String],
    retain: Duration,
    now_ms: u64,
    scan: &mut EvictScan,
) -> Result<usize, IndexError> {
    let hashes = index.evictable(targets, now_ms, retain.as_millis() as u64, PER_SWEEP, scan)?;
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
