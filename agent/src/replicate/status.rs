//! The status of each replication target: its queue in the index (pending,
//! oldest, delivered, dead letters) merged with the live health its worker
//! keeps. Read by the admin endpoint, `pacs-mirror status` offline and the
//! lag monitor.

use std::collections::BTreeMap;

use pacs_mirror_store::index::{Index, IndexError};
use serde::{Deserialize, Serialize};

use super::{Health, TargetHealth};

/// Lag and health of one replication target.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetStatus {
    /// Objects not yet delivered (dead letters excluded).
    pub pending: u64,
    /// Of them, live: arrived within the target's live window (sent before
    /// the backlog).
    #[serde(default)]
    pub pending_live: u64,
    /// That window, in seconds (`live_window_secs`; the default when the
    /// agent is not running).
    #[serde(default = "default_live_window_secs")]
    pub live_window_secs: u64,
    /// Their bytes.
    pub pending_bytes: u64,
    /// Age of the oldest undelivered object, in seconds.
    pub oldest_pending_age_secs: Option<u64>,
    /// Objects delivered.
    pub delivered: u64,
    /// Objects refused for good (`pacs-mirror dead-letter list`).
    pub dead_letters: u64,
    /// The last delivery (Unix ms); running agent only.
    pub last_success_at_ms: Option<u64>,
    /// The last failure (Unix ms); running agent only.
    pub last_error_at_ms: Option<u64>,
    /// The last failure; running agent only.
    pub last_error: Option<String>,
    /// Whether the target is unreachable (being probed with C-ECHO).
    pub circuit_open: bool,
    /// The bandwidth cap in force now (`max_bandwidth`, or the schedule's
    /// window), bytes per second; None: unlimited (or not running).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bandwidth_bytes_per_sec: Option<u64>,
    /// DICOM targets: associations open, the adaptive limit, the maximum;
    /// running agent only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub associations: Option<super::adaptive::Snapshot>,
    /// Object stores: uploads in flight, the adaptive limit, the maximum;
    /// running agent only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uploads: Option<super::adaptive::Snapshot>,
    /// Targets with storage commitment: what the mirror stored and has not
    /// committed yet (not counted in `pending` nor in `delivered`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commitment: Option<CommitmentState>,
    /// How long the last delivered object waited between its arrival and
    /// its delivery (ms); running agent only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_ms: Option<u64>,
    /// Objects delivered per minute, over the last minute; running agent
    /// only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_per_min: Option<u64>,
    /// Bytes sent per second (delivered objects), over the last minute:
    /// the bandwidth the target uses now; running agent only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_per_sec: Option<u64>,
}

/// Storage commitment of one target.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitmentState {
    /// Objects stored by the mirror, awaiting its commitment.
    pub awaiting: u64,
    /// How long the oldest of them has waited, in seconds.
    pub oldest_awaiting_age_secs: Option<u64>,
    /// Requests sent without a report yet.
    pub open_requests: u64,
    /// The most times one of them was asked (the alert fires at
    /// [`super::commit::ALERT_AFTER_REQUESTS`]).
    pub most_requests: u32,
}

impl CommitmentState {
    fn from_summary(
        s: &pacs_mirror_store::index::commitment::CommitmentSummary,
        now_ms: u64,
    ) -> Self {
        CommitmentState {
            awaiting: s.awaiting,
            oldest_awaiting_age_secs: s
                .oldest_stored_at_ms
                .map(|t| now_ms.saturating_sub(t) / 1000),
            open_requests: s.transactions,
            most_requests: s.most_requests,
        }
    }
}

/// The commitment state of `name`, when it asks for commitment (or the
/// index holds some of it: a stopped agent).
fn commitment_state(
    index: &Index,
    name: &str,
    health: Option<&TargetHealth>,
    now_ms: u64,
) -> Result<Option<CommitmentState>, IndexError> {
    let s = index.commitment_summary(name)?;
    let asks = health.is_some_and(|h| h.commitment);
    Ok((asks || s.awaiting > 0 || s.transactions > 0)
        .then(|| CommitmentState::from_summary(&s, now_ms)))
}

/// Per-target figures from the index, merged with live health if any.
pub fn target_status(
    index: &Index,
    name: &str,
    health: Option<&TargetHealth>,
    now_ms: u64,
) -> Result<TargetStatus, IndexError> {
    let mut s = status_from(summary(index, name, health)?, health, now_ms)?;
    s.commitment = commitment_state(index, name, health, now_ms)?;
    Ok(s)
}

fn default_live_window_secs() -> u64 {
    pacs_mirror_store::index::outbox::LIVE_WINDOW_MS / 1000
}

/// The live window of a running target, or the default.
fn live_window_ms(health: Option<&TargetHealth>) -> u64 {
    health
        .map(|h| h.live_window_ms)
        .filter(|&w| w > 0)
        .unwrap_or(pacs_mirror_store::index::outbox::LIVE_WINDOW_MS)
}

fn summary(
    index: &Index,
    name: &str,
    health: Option<&TargetHealth>,
) -> Result<pacs_mirror_store::index::outbox::OutboxSummary, IndexError> {
    index.outbox_summary_within(name, live_window_ms(health))
}

fn status_from(
    s: pacs_mirror_store::index::outbox::OutboxSummary,
    health: Option<&TargetHealth>,
    now_ms: u64,
) -> Result<TargetStatus, IndexError> {
    let live_window_secs = live_window_ms(health) / 1000;
    let h = health.cloned().unwrap_or_default();
    Ok(TargetStatus {
        pending: s.pending,
        pending_live: s.pending_live,
        live_window_secs,
        pending_bytes: s.pending_bytes,
        oldest_pending_age_secs: s
            .oldest_enqueued_at_ms
            .map(|t| now_ms.saturating_sub(t) / 1000),
        delivered: s.delivered,
        dead_letters: s.dead_letters,
        // The live value, or (stopped, or nothing delivered since start)
        // the latest the index recorded.
        last_success_at_ms: h.last_success_at_ms.max(s.last_delivered_at_ms),
        last_error_at_ms: h.last_error_at_ms,
        last_error: h.last_error,
        circuit_open: h.circuit_open,
        lag_ms: h.last_lag_ms,
        associations: h.associations,
        uploads: h.uploads,
        commitment: None,
        max_bandwidth_bytes_per_sec: h.pacer.as_ref().and_then(|p| p.rate()),
        delivered_per_min: None,
        bytes_per_sec: None,
    })
}

/// [`target_status`] of every target, live health merged.
pub fn targets_status(
    index: &Index,
    targets: &[(String, Option<Health>)],
    now_ms: u64,
) -> Result<BTreeMap<String, TargetStatus>, IndexError> {
    let mut out = BTreeMap::new();
    for (name, health) in targets {
        let h = health
            .as_ref()
            .map(|h| h.lock().unwrap_or_else(|p| p.into_inner()).clone());
        let summary = summary(index, name, h.as_ref())?;
        let mut s = status_from(summary, h.as_ref(), now_ms)?;
        s.commitment = commitment_state(index, name, h.as_ref(), now_ms)?;
        out.insert(name.clone(), s);
    }
    Ok(out)
}
