//! Restore drills (`[[drill]]`).
//!
//! A drill of a DICOM target retrieves with C-GET (the objects come back on
//! the drill's own association) or, with `retrieve = "c-move"`, with C-MOVE
//! to a local drill receiver AE (`drill_receiver = true`, named by
//! `move_destination`), which the agent serves for the drill. Either way the
//! objects go to a scratch directory, never into the spool.

use serde::{Deserialize, Serialize};

/// `[[drill]]`: a scheduled restore drill of one target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrillConfig {
    /// The target to drill (a `[[target]]` name).
    pub target: String,
    /// When to run, as a cron expression with seconds:
    /// `"sec min hour day-of-month month day-of-week"`, e.g.
    /// `"0 30 2 * * *"` (02:30 every day). Absent: only on demand
    /// (`pacs-mirror drill`).
    #[serde(default)]
    pub schedule: Option<String>,
    /// Studies picked at random each drill. Default: 2.
    #[serde(default = "default_random_studies")]
    pub random_studies: u32,
    /// Also drill one slice of every study, `rotation` slices in all, a
    /// different slice each drill: over `rotation` drills every study is
    /// drilled at least once. Absent or 0: no rotation.
    #[serde(default)]
    pub rotation: Option<u32>,
    /// Also drill the newest study received. Default: true.
    #[serde(default = "default_true")]
    pub newest_study: bool,
    /// Recovery time objective: a drill whose slowest study took longer is
    /// flagged and alerted. Absent: none.
    #[serde(default)]
    pub recovery_time_objective_secs: Option<u64>,
    /// Seed of the random choice (reproducible drills). Absent: the clock.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Seconds allowed for each request to the target (and, for C-MOVE,
    /// for the last instances to arrive after the final response).
    /// Default: 60.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// How a DICOM target is retrieved: `"c-get"` (the default; the
    /// objects come back on the drill's own association) or `"c-move"`
    /// (the target sends them on associations of its own to
    /// `move_destination`). Object-store targets ignore it.
    #[serde(default)]
    pub retrieve: Retrieve,
    /// With `retrieve = "c-move"`: the Move Destination, the AE title of a
    /// local `[[device.network_ae]]` with `drill_receiver = true` that the
    /// mirror PACS knows (AE title, host, port) and may call.
    #[serde(default)]
    pub move_destination: Option<String>,
}

/// How a drill retrieves from a DICOM target (`[[drill]] retrieve`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Retrieve {
    /// C-GET: storage sub-operations on the drill's own association.
    #[default]
    #[serde(rename = "c-get")]
    CGet,
    /// C-MOVE to the drill receiver AE named by `move_destination`.
    #[serde(rename = "c-move")]
    CMove,
}

impl Retrieve {
    /// As written in the configuration and in drill reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Retrieve::CGet => "c-get",
            Retrieve::CMove => "c-move",
        }
    }
}

fn default_random_studies() -> u32 {
    2
}
fn default_true() -> bool {
    true
}
fn default_timeout_secs() -> u64 {
    60
}

/// What is wrong with the shape of a cron expression ([`check_cron`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CronError {
    /// Not 6 or 7 fields.
    #[error(
        "{expr:?} has {fields} fields; write 6: \"sec min hour day-of-month month day-of-week\", e.g. \"0 30 2 * * *\""
    )]
    FieldCount { expr: String, fields: usize },
    /// A field with characters cron does not use.
    #[error("{expr:?}: field {field:?} is not cron syntax")]
    Field { expr: String, field: String },
}

/// Checks the shape of a cron expression with seconds (6 or 7 fields of
/// the characters cron uses). The scheduler parses it fully at start-up.
pub(crate) fn check_cron(expr: &str) -> Result<(), CronError> {
    let fields: Vec<&str> = expr.split_whitespace().collect();
    if !(6..=7).contains(&fields.len()) {
        return Err(CronError::FieldCount {
            expr: expr.to_string(),
            fields: fields.len(),
        });
    }
    let ok = |c: char| c.is_ascii_alphanumeric() || "*/,-?#LW".contains(c);
    if let Some(f) = fields.iter().find(|f| !f.chars().all(ok)) {
        return Err(CronError::Field {
            expr: expr.to_string(),
            field: f.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cron_shape() {
        assert!(check_cron("0 30 2 * * *").is_ok());
        assert!(check_cron("*/10 * * * * Mon-Fri").is_ok());
        assert!(check_cron("30 2 * * *").is_err());
        assert!(check_cron("0 30 2 * * * * *").is_err());
        assert!(check_cron("0 30 2 * * $").is_err());
    }
}
