//! The DICOM layer of pacs-mirror: what any DICOM application needs and
//! dicom-rs does not give in the form we need it, and nothing else.
//!
//! - [`dimse`]: typed DIMSE command sets, statuses and their codec;
//! - [`scu`]: the association layer for every SCU role (storage, echo,
//!   Query/Retrieve), streamed C-STORE with its hash check;
//! - [`part10`]: Part-10 file meta group and headers, read and written by
//!   hand (bytes are kept as they arrived);
//! - [`structure`]: the streaming structure walker of a data set;
//! - [`identity`]: which attributes identify an object, read by the walker;
//! - [`query`]: Query/Retrieve identifiers: typed queries and matches, their
//!   codec;
//! - [`sop_classes`]: the Storage SOP class table;
//! - [`commitment`]: Storage Commitment Push Model messages and data sets.
//!
//! This crate knows nothing of the spool, the index, targets or the
//! configuration: the store (`pacs-mirror-store`), the agent and the
//! verifier are built on it, never the other way round.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod commitment;
pub mod dimse;
pub mod identity;
pub mod part10;
pub mod presentation;
pub mod query;
pub mod reassembly;
pub mod scu;
pub mod sop_classes;
pub mod structure;
#[doc(hidden)]
pub mod testing;
pub mod tls;
