//! Names of publications, operators and entries.

use crate::MetaError;

/// Longest name accepted, in bytes (Clara's limit).
pub const MAX_NAME_LEN: usize = 255;

/// Checks a name against Clara's rule: 1 to 255 characters, each one of `A-Z a-z 0-9 - _`.
///
/// The rule is deliberately Clara's and no wider: names become environment-variable
/// fragments and file names in pipelines, and a name that is valid here is valid in
/// every binding. The error shows the offending name and character.
pub fn validate_name(name: &str) -> Result<(), MetaError> {
    let bad = |reason: String| MetaError::InvalidName {
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(bad("it is empty".into()));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(bad(format!(
            "it is {} bytes long; the limit is {MAX_NAME_LEN}",
            name.len()
        )));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(bad(format!(
            "{c:?} is not allowed; use only A-Z a-z 0-9 - _"
        )));
    }
    Ok(())
}

/// Checks a publication's name: Clara's rule ([`validate_name`]) widened by `.`, `/` and
/// `:`, so that names like `ct.series1`, `patient/1/mask` or `run:3` work.
///
/// Publication names live only in a context's registry (never in an environment
/// variable or a pipeline definition), so the wider set costs nothing elsewhere; it stays
/// narrow enough to be a safe relative path: `/` separates non-empty parts, none of
/// which is `.` or `..`, and the name neither starts nor ends with `/`. Operator and
/// entry names keep Clara's rule.
pub fn validate_publication_name(name: &str) -> Result<(), MetaError> {
    let bad = |reason: String| MetaError::InvalidName {
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(bad("it is empty".into()));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(bad(format!(
            "it is {} bytes long; the limit is {MAX_NAME_LEN}",
            name.len()
        )));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | ':')))
    {
        return Err(bad(format!(
            "{c:?} is not allowed; use only A-Z a-z 0-9 - _ . / :"
        )));
    }
    if let Some(part) = name.split('/').find(|p| matches!(*p, "" | "." | "..")) {
        return Err(bad(if part.is_empty() {
            "a '/' must separate two non-empty parts (no leading, trailing or double '/')".into()
        } else {
            format!("{part:?} is not allowed between '/'s")
        }));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publication_names_also_take_dots_slashes_and_colons() {
        for good in [
            "a",
            "ct.series1",
            "patient/1",
            "patient/1/mask.v2",
            "run:3",
            "..a",
            "a..b",
            "x.",
            &"x".repeat(255),
        ] {
            validate_publication_name(good).unwrap();
        }
        for bad in [
            "",
            "a b",
            "/a",
            "a/",
            "a//b",
            "./a",
            "a/../b",
            "..",
            ".",
            "ä",
            "a\\b",
            "a\0b",
            &"x".repeat(256),
        ] {
            let err = validate_publication_name(bad).unwrap_err().to_string();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
        // Operator and entry names keep Clara's rule.
        for narrow in ["ct.series1", "patient/1", "run:3"] {
            assert!(validate_name(narrow).is_err());
        }
    }

    #[test]
    fn clara_names_are_accepted() {
        for good in ["a", "volume", "CT-volume_2", &"x".repeat(255)] {
            validate_name(good).unwrap();
        }
    }

    #[test]
    fn bad_names_are_rejected_showing_the_name() {
        for bad in ["", "a b", "a.b", "ä", "a/b", "a\0b", &"x".repeat(256)] {
            let err = validate_name(bad).unwrap_err().to_string();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
    }
}
