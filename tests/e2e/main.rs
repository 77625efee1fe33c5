//! End-to-end tests: the real `pacs-mirror` binary driven by real DCMTK
//! tools (storescu, echoscu, dcmconv, dcmcjpeg, dcmcjpls, dcmcrle,
//! dcmodify), OpenJPEG's opj_compress, and headless Chromium through
//! chromedriver (browser.rs) for the web console. A missing tool fails the test
//! with a message naming `scripts/test`, which installs them.
//!
//! Run with `cargo test --release --test e2e` (debug builds work but are
//! slow with 1000-instance sends).

mod browser;
mod dimse;
mod harness;
mod tls_certs;

mod access;
mod alerts;
mod backfill;
mod bad_input;
mod cli_mistakes;
mod clock;
mod commitment;
mod console;
mod content;
mod corpus;
mod crash;
mod disk_faults;
mod drill;
mod drill_qrscp;
mod duplicates;
mod durability;
mod failback;
mod failover;
mod findings;
mod ingest;
pub(crate) mod large;
mod limits;
mod logs;
mod mirror;
mod ops;
mod powercut;
pub(crate) mod protocol;
mod quickstart;
pub(crate) mod resources;
mod restore_mistakes;
mod retrieve;
pub(crate) mod s3;
mod sender;
mod tls;
mod tls_peers;
pub(crate) mod transfer_syntaxes;
