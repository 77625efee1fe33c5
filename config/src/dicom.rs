//! Rules for DICOM values that appear in the configuration: AE titles
//! (PS3.5 §6.2, value representation AE) and UIDs (PS3.5 §9.1).

/// Longest AE title, in characters, once leading and trailing spaces are removed.
pub const AE_TITLE_MAX_CHARS: usize = 16;

/// Longest UID, in characters (PS3.5 §9.1).
pub const UID_MAX_CHARS: usize = 64;

/// What is wrong with an AE title ([`validate_ae_title`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AeTitleError {
    /// A control character.
    #[error(
        "{title:?} contains the control character {character:?}; an AE title has only printable ASCII characters"
    )]
    ControlCharacter {
        /// The title as given.
        title: String,
        /// The first control character.
        character: char,
    },
    /// A character outside printable ASCII.
    #[error(
        "{title:?} contains {character:?}, which is outside the DICOM default character repertoire (printable ASCII)"
    )]
    OutsideRepertoire {
        /// The title as given.
        title: String,
        /// The first such character.
        character: char,
    },
    /// A backslash (the value separator).
    #[error("{title:?} contains a backslash, which is not allowed in an AE title")]
    Backslash {
        /// The title as given.
        title: String,
    },
    /// The empty string.
    #[error("the AE title is empty; an AE title has 1 to 16 characters")]
    Empty,
    /// Spaces only.
    #[error("{title:?} is only spaces; an AE title has 1 to 16 characters other than spaces")]
    OnlySpaces {
        /// The title as given.
        title: String,
    },
    /// More than [`AE_TITLE_MAX_CHARS`] characters once trimmed.
    #[error("{title:?} is {chars} characters; an AE title has 1 to {AE_TITLE_MAX_CHARS}")]
    TooLong {
        /// The title without its leading and trailing spaces.
        title: String,
        /// Its length in characters.
        chars: usize,
    },
}

/// What is wrong with a UID ([`validate_uid`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UidError {
    /// The empty string.
    #[error("the UID is empty")]
    Empty,
    /// A character other than a digit or a dot.
    #[error("{uid:?} contains {character:?}; a UID has only digits and dots")]
    Character {
        /// The UID as given.
        uid: String,
        /// The first such character.
        character: char,
    },
    /// More than [`UID_MAX_CHARS`] characters.
    #[error("{uid:?} is {chars} characters; a UID has at most {UID_MAX_CHARS}")]
    TooLong {
        /// The UID as given.
        uid: String,
        /// Its length in characters.
        chars: usize,
    },
    /// A leading, trailing or doubled dot.
    #[error("{uid:?} has an empty component (a leading, trailing or doubled dot)")]
    EmptyComponent {
        /// The UID as given.
        uid: String,
    },
    /// A component of more than one digit that starts with `0`.
    #[error(
        "{uid:?} has the component {component:?} with a leading zero; write it without the zero"
    )]
    LeadingZero {
        /// The UID as given.
        uid: String,
        /// The component.
        component: String,
    },
}

/// Checks an AE title.
///
/// Leading and trailing spaces are not significant (PS3.5 §6.2); what remains
/// must be 1 to 16 characters from the DICOM Default Character Repertoire
/// (printable ASCII, `0x20`–`0x7E`) other than backslash. Control
/// characters and non-ASCII characters are rejected.
///
/// On failure the message names the value and what is wrong with it, e.g.
/// `"TOO_LONG_AE_TITLE_X" is 19 characters; an AE title has 1 to 16`.
pub fn validate_ae_title(s: &str) -> Result<(), AeTitleError> {
    if let Some(character) = s.chars().find(|c| c.is_control()) {
        return Err(AeTitleError::ControlCharacter {
            title: s.to_string(),
            character,
        });
    }
    if let Some(character) = s.chars().find(|c| !(' '..='~').contains(c)) {
        return Err(AeTitleError::OutsideRepertoire {
            title: s.to_string(),
            character,
        });
    }
    if s.contains('\\') {
        return Err(AeTitleError::Backslash {
            title: s.to_string(),
        });
    }
    let trimmed = s.trim_matches(' ');
    if trimmed.is_empty() {
        return Err(if s.is_empty() {
            AeTitleError::Empty
        } else {
            AeTitleError::OnlySpaces {
                title: s.to_string(),
            }
        });
    }
    let chars = trimmed.chars().count();
    if chars > AE_TITLE_MAX_CHARS {
        return Err(AeTitleError::TooLong {
            title: trimmed.to_string(),
            chars,
        });
    }
    Ok(())
}

/// Checks a UID (PS3.5 §9.1): 1 to 64 characters, only digits and dots,
/// no empty component (so no leading, trailing or doubled dot), and no
/// leading zero in a component of more than one digit.
pub fn validate_uid(s: &str) -> Result<(), UidError> {
    if s.is_empty() {
        return Err(UidError::Empty);
    }
    if let Some(character) = s.chars().find(|c| !(c.is_ascii_digit() || *c == '.')) {
        return Err(UidError::Character {
            uid: s.to_string(),
            character,
        });
    }
    // Only ASCII from here on, so bytes are characters.
    if s.len() > UID_MAX_CHARS {
        return Err(UidError::TooLong {
            uid: s.to_string(),
            chars: s.len(),
        });
    }
    for component in s.split('.') {
        if component.is_empty() {
            return Err(UidError::EmptyComponent { uid: s.to_string() });
        }
        if component.len() > 1 && component.starts_with('0') {
            return Err(UidError::LeadingZero {
                uid: s.to_string(),
                component: component.to_string(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn ae_title_accepts_valid() {
        for ok in [
            "A",
            "PACS_MIRROR",
            "SIXTEEN_CHARS_XX",
            " PADDED ",
            "  SIXTEEN_CHARS_XX  ",
            "MIXED case-1.2 @",
            "~!#$%^&*()",
        ] {
            assert_eq!(validate_ae_title(ok), Ok(()), "{ok:?}");
        }
    }

    #[test]
    fn ae_title_rejects_17_chars() {
        let e = validate_ae_title("SEVENTEEN_CHARS_X")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "\"SEVENTEEN_CHARS_X\" is 17 characters; an AE title has 1 to 16"
        );
        let e = validate_ae_title("TOO_LONG_AE_TITLE_X")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "\"TOO_LONG_AE_TITLE_X\" is 19 characters; an AE title has 1 to 16"
        );
    }

    #[test]
    fn ae_title_rejects_backslash() {
        let e = validate_ae_title("AE\\TITLE").unwrap_err().to_string();
        assert!(e.contains("backslash"), "{e}");
    }

    #[test]
    fn ae_title_rejects_empty_and_spaces() {
        assert!(
            validate_ae_title("")
                .unwrap_err()
                .to_string()
                .contains("empty")
        );
        assert!(
            validate_ae_title("    ")
                .unwrap_err()
                .to_string()
                .contains("only spaces")
        );
    }

    #[test]
    fn ae_title_rejects_control_and_non_ascii() {
        assert!(
            validate_ae_title("AE\tX")
                .unwrap_err()
                .to_string()
                .contains("control")
        );
        assert!(
            validate_ae_title("AE\u{7f}")
                .unwrap_err()
                .to_string()
                .contains("control")
        );
        assert!(
            validate_ae_title("AE\n")
                .unwrap_err()
                .to_string()
                .contains("control")
        );
        assert!(
            validate_ae_title("ÄRZTE")
                .unwrap_err()
                .to_string()
                .contains("repertoire")
        );
    }

    #[test]
    fn uid_accepts_valid() {
        for ok in [
            "1",
            "0",
            "1.2.840.10008.1.1",
            "1.2.840.10008.5.1.4.1.1.2",
            "1.2.840.10008.1.2.1",
            "1.0.2",
            "2.25.329800735698586629295641978511506172918",
        ] {
            assert_eq!(validate_uid(ok), Ok(()), "{ok:?}");
        }
        let max = format!("1.{}", "2".repeat(62));
        assert_eq!(max.len(), 64);
        assert_eq!(validate_uid(&max), Ok(()));
    }

    #[test]
    fn uid_rejects_leading_zero() {
        let e = validate_uid("1.02.3").unwrap_err().to_string();
        assert!(e.contains("\"02\"") && e.contains("leading zero"), "{e}");
        assert!(validate_uid("00").is_err());
    }

    #[test]
    fn uid_rejects_65_chars() {
        let long = format!("1.{}", "2".repeat(63));
        assert_eq!(long.len(), 65);
        let e = validate_uid(&long).unwrap_err().to_string();
        assert!(e.contains("65 characters"), "{e}");
    }

    #[test]
    fn uid_rejects_empty_components() {
        for bad in ["1.2.", ".1.2", "1..2", "."] {
            let e = validate_uid(bad).unwrap_err().to_string();
            assert!(e.contains("empty component"), "{bad:?}: {e}");
        }
        assert!(validate_uid("").unwrap_err().to_string().contains("empty"));
    }

    #[test]
    fn uid_rejects_other_characters() {
        for bad in ["1.2.a", "1.2 ", " 1.2", "1,2", "1.2.3\0"] {
            let e = validate_uid(bad).unwrap_err().to_string();
            assert!(e.contains("only digits and dots"), "{bad:?}: {e}");
        }
    }
}
