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

#[cfg(test)]
mod tests {
    use super::*;

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
