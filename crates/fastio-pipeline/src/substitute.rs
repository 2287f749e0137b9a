//! `${...}` in commands and variables, and variables set from outside the definition
//! (`fastio run --set NAME=VALUE`).
//!
//! In an operator's `command`, `${NAME}` is replaced by the operator's variable `NAME`
//! (after any [`Override`]) and `${PIPELINE_DIR}` by the absolute folder of the definition
//! file. In a variable's value only `${PIPELINE_DIR}` is replaced: a variable is not
//! defined through another, so their order never matters. `$${` writes a literal `${`,
//! Clara's template placeholders `${{ name }}` are kept as written, and a `$` not followed
//! by `{` is kept as is (no shell runs the command, so `$HOME` stays `$HOME`). A name that is neither, or an unclosed `${`, is a problem of the definition.

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;

use crate::error::DefinitionError;
use crate::raw::{RawPipeline, Scalar};

/// The name that stands for the definition's folder.
pub const PIPELINE_DIR: &str = "PIPELINE_DIR";

/// A variable given from outside the definition: `NAME=VALUE` sets `NAME` in every operator
/// that declares it; `OPERATOR.NAME=VALUE` sets it in that operator only, declared or not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Override {
    /// The one operator it applies to, if given.
    pub operator: Option<String>,
    /// The variable's name.
    pub name: String,
    /// Its value (`${PIPELINE_DIR}` is replaced in it, as in the definition's values).
    pub value: String,
}

/// Why an override's text cannot be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not NAME=VALUE or OPERATOR.NAME=VALUE: {reason}")]
pub struct OverrideSyntaxError {
    /// The text given.
    pub text: String,
    /// What is wrong.
    pub reason: &'static str,
}

impl FromStr for Override {
    type Err = OverrideSyntaxError;

    /// `NAME=VALUE` or `OPERATOR.NAME=VALUE`; the value may be empty and may contain `=`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = |reason| OverrideSyntaxError {
            text: text.to_owned(),
            reason,
        };
        let (key, value) = text
            .split_once('=')
            .ok_or_else(|| error("there is no '='"))?;
        // Operator names cannot hold '.', so the first '.' ends the operator's name.
        let (operator, name) = match key.split_once('.') {
            Some((operator, name)) => (Some(operator.to_owned()), name),
            None => (None, key),
        };
        if name.is_empty() || operator.as_deref() == Some("") {
            return Err(error("a name is empty"));
        }
        if text.contains('\0') {
            return Err(error("it contains a NUL byte"));
        }
        Ok(Override {
            operator,
            name: name.to_owned(),
            value: value.to_owned(),
        })
    }
}

/// Applies `overrides` to the definition as written, before it is validated. A setting
/// that applies to no operator is an error (a misspelt name would otherwise be ignored).
pub(crate) fn apply(
    raw: &mut RawPipeline,
    overrides: &[Override],
    origin: &str,
) -> Result<(), DefinitionError> {
    let operators = raw.operators.as_deref_mut().unwrap_or_default();
    for o in overrides {
        let mut applied = false;
        for op in operators.iter_mut() {
            let name = op.name.as_deref().unwrap_or_default();
            let applies = match &o.operator {
                Some(target) => name.eq_ignore_ascii_case(target),
                None => op.variables.contains_key(&o.name),
            };
            if applies {
                op.variables.insert(o.name.clone(), Scalar(o.value.clone()));
                applied = true;
            }
        }
        if !applied {
            let reason = match &o.operator {
                Some(target) => format!("the definition has no operator {target:?}"),
                None => format!(
                    "no operator declares variable {:?} (OPERATOR.{}=VALUE adds it to one operator)",
                    o.name, o.name
                ),
            };
            return Err(DefinitionError::Override {
                origin: origin.to_owned(),
                setting: match &o.operator {
                    Some(op) => format!("{op}.{}={}", o.name, o.value),
                    None => format!("{}={}", o.name, o.value),
                },
                reason,
            });
        }
    }
    Ok(())
}

/// The absolute folder of the definition named `origin` (the current directory for a bare
/// file name or a label).
pub(crate) fn definition_dir(origin: &str) -> String {
    let path = std::path::absolute(Path::new(origin)).unwrap_or_else(|_| origin.into());
    path.parent()
        .unwrap_or(Path::new("/"))
        .to_string_lossy()
        .into_owned()
}

/// A problem found while replacing: the text and why.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Unresolved {
    /// `command` or `variables`.
    pub field: &'static str,
    /// The argument or value as written.
    pub text: String,
    /// What is wrong.
    pub reason: String,
}

/// Replaces `${...}` in an operator's variables (only `${PIPELINE_DIR}`), then in its
/// command (variables and `${PIPELINE_DIR}`); returns every problem.
pub(crate) fn expand_operator(
    dir: &str,
    command: &mut [String],
    variables: &mut BTreeMap<String, String>,
) -> Vec<Unresolved> {
    let mut problems = Vec::new();
    for (key, value) in variables.iter_mut() {
        match expand(value, |name| (name == PIPELINE_DIR).then(|| dir.to_owned())) {
            Ok(text) => *value = text,
            Err(reason) => problems.push(Unresolved {
                field: "variables",
                text: format!("{key}={value}"),
                reason,
            }),
        }
    }
    for argument in command.iter_mut() {
        let lookup = |name: &str| {
            if name == PIPELINE_DIR {
                Some(dir.to_owned())
            } else {
                variables.get(name).cloned()
            }
        };
        match expand(argument, lookup) {
            Ok(text) => *argument = text,
            Err(reason) => problems.push(Unresolved {
                field: "command",
                text: argument.clone(),
                reason,
            }),
        }
    }
    problems
}

/// Replaces every `${NAME}` in `text` with `lookup(NAME)` where it knows the name, and leaves
/// other `${...}` as written; `$${` is a literal `${`.
fn expand(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix("${") {
            out.push_str("${");
            rest = tail;
        } else if after.starts_with("{{") {
            // Clara's `${{ name }}` template placeholder: not ours, kept as written.
            let end = after.find("}}").map_or(after.len(), |e| e + 2);
            out.push('$');
            out.push_str(&after[..end]);
            rest = &after[end..];
        } else if let Some(tail) = after.strip_prefix('{') {
            let end = tail
                .find('}')
                .ok_or_else(|| "\"${\" is not closed by \"}\"".to_owned())?;
            let name = &tail[..end];
            // A name fastio does not know is the program's: a shell expands `${HOME}` or
            // `${NVIDIA_CLARA_OUTPUTPATHS#*:}` itself, and Clara definitions rely on that.
            match lookup(name) {
                Some(value) => out.push_str(&value),
                None => {
                    out.push('$');
                    out.push_str(&after[..end + 2]);
                }
            }
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(name: &str) -> Option<String> {
        match name {
            "A" => Some("alpha".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn names_escapes_and_plain_dollars() {
        assert_eq!(expand("x${A}y", lookup).unwrap(), "xalphay");
        assert_eq!(expand("${A}${EMPTY}${A}", lookup).unwrap(), "alphaalpha");
        assert_eq!(expand("$${A}", lookup).unwrap(), "${A}");
        assert_eq!(expand("$HOME $ $$", lookup).unwrap(), "$HOME $ $$");
        assert_eq!(expand("no dollars", lookup).unwrap(), "no dollars");
        // Clara's template placeholders are left alone.
        assert_eq!(
            expand("${{ model }}/${A}", lookup).unwrap(),
            "${{ model }}/alpha"
        );
    }

    #[test]
    fn unknown_names_reach_the_program_as_written_and_unclosed_braces_are_problems() {
        assert_eq!(expand("${B}/${A}", lookup).unwrap(), "${B}/alpha");
        assert_eq!(
            expand("out=${OUT#*:} ${X:-none}", lookup).unwrap(),
            "out=${OUT#*:} ${X:-none}"
        );
        assert!(expand("${A", lookup).unwrap_err().contains("not closed"));
    }

    #[test]
    fn overrides_parse_with_and_without_an_operator() {
        let o: Override = "THRESHOLD=0.5".parse().unwrap();
        assert_eq!((o.operator, o.name.as_str()), (None, "THRESHOLD"));
        let o: Override = "seg.MODE=a=b".parse().unwrap();
        assert_eq!(
            (o.operator.as_deref(), o.name.as_str(), o.value.as_str()),
            (Some("seg"), "MODE", "a=b")
        );
        assert!("NOVALUE".parse::<Override>().is_err());
        assert!("=x".parse::<Override>().is_err());
        assert!(".A=x".parse::<Override>().is_err());
    }
}
