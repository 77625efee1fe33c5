//! Errors returned while loading a configuration, and the validation
//! [`Finding`]s that [`Config::validate`](crate::Config::validate) reports.

use std::fmt;
use std::path::PathBuf;

/// How serious a validation [`Finding`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// The configuration must not be used: loading with
    /// [`Config::load_validated`](crate::Config::load_validated) fails.
    Error,
    /// The configuration works but is probably not what was meant, or is
    /// risky; the agent logs it at start-up.
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// One problem found by [`Config::validate`](crate::Config::validate).
///
/// Displayed as `severity: path: message`, for example
/// `error: device.network_ae[0].ae_title: "TOO_LONG_AE_TITLE_X" is 19 characters; an AE title has 1 to 16`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Whether this finding makes the configuration unusable.
    pub severity: Severity,
    /// Where in the TOML document the problem is, spelled with the TOML keys
    /// and zero-based array indices, e.g. `device.network_ae[0].ae_title`.
    pub path: String,
    /// What is wrong and, where possible, how to fix it.
    pub message: String,
}

impl Finding {
    /// A finding of severity [`Severity::Error`].
    pub fn error(path: impl Into<String>, message: impl Into<String>) -> Self {
        Finding {
            severity: Severity::Error,
            path: path.into(),
            message: message.into(),
        }
    }

    /// A finding of severity [`Severity::Warning`].
    pub fn warning(path: impl Into<String>, message: impl Into<String>) -> Self {
        Finding {
            severity: Severity::Warning,
            path: path.into(),
            message: message.into(),
        }
    }

    /// `true` if this finding is a [`Severity::Error`].
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.severity, self.path, self.message)
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("cannot read configuration file {}: {source}", path.display())]
    Read {
        /// The file that was being read.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML (a syntax error), or, rarely, does not
    /// match the configuration schema in a way the one-pass check of every
    /// key and type did not catch.
    #[error("cannot parse configuration file {}: {message}", path.display())]
    Parse {
        /// The file (or other origin) the text came from.
        path: PathBuf,
        /// The TOML parser's message, including line and column.
        message: String,
    },
    /// The file is TOML but has unknown keys or wrong-typed values (every
    /// one of them, each with its path, line and column), or it parsed but
    /// validation found at least one [`Severity::Error`]. Holds every
    /// finding, errors and warnings.
    #[error("{}", display_findings(findings))]
    Invalid {
        /// Every finding, errors and warnings, in document order.
        findings: Vec<Finding>,
    },
}

fn display_findings(findings: &[Finding]) -> String {
    let errors = findings.iter().filter(|f| f.is_error()).count();
    let warnings = findings.len() - errors;
    let mut out = format!(
        "invalid configuration: {errors} error{}, {warnings} warning{}",
        plural(errors),
        plural(warnings)
    );
    for finding in findings {
        out.push('\n');
        out.push_str(&finding.to_string());
    }
    out
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn finding_display() {
        let f = Finding::error(
            "device.network_ae[0].ae_title",
            "\"TOO_LONG_AE_TITLE_X\" is 19 characters; an AE title has 1 to 16",
        );
        assert_eq!(
            f.to_string(),
            "error: device.network_ae[0].ae_title: \"TOO_LONG_AE_TITLE_X\" is 19 characters; an AE title has 1 to 16"
        );
        assert_eq!(
            Finding::warning("a", "b").to_string(),
            "warning: a: b".to_string()
        );
    }

    #[test]
    fn invalid_display_has_one_line_per_finding() {
        let e = ConfigError::Invalid {
            findings: vec![Finding::error("a", "x"), Finding::warning("b", "y")],
        };
        let text = e.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "invalid configuration: 1 error, 1 warning",
                "error: a: x",
                "warning: b: y"
            ]
        );
    }
}
