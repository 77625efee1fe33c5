//! The verifier: proving that the copies are intact and restore.
//!
//! Restore drills against the mirror PACS and object storage come with the
//! replication targets. What is here today is the local spool scrub: every
//! object the index lists is read back from the spool and re-hashed, so a
//! flipped bit, a truncated or a missing file is found before anyone needs it
//! (like `restic check --read-data`). Findings are graded data, each with what
//! to do about it.

pub mod scrub;

pub use scrub::{Finding, FindingKind, ScrubReport, scrub_spool};
