//! The definition as written: serde structures that mirror the YAML/JSON text.
//!
//! Nearly every field is optional here so that a missing one is reported by validation, with
//! the operator and entry it belongs to, together with every other problem, instead of by the
//! parser, which stops at the first. Unknown fields are refused by the parser (with the
//! line and column); every field of Clara's format is known, whether fastio uses it or not.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, IgnoredAny, Visitor};
use serde::{Deserialize, Deserializer};

use crate::error::{DefinitionError, Format};
use crate::limits::{self, Exceeded};

/// A whole definition.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(crate) struct RawPipeline {
    pub api_version: Option<Scalar>,
    pub name: Option<String>,
    pub description: Option<String>,
    pub orchestrator: Option<String>,
    /// Clara's image registry credentials: names of Kubernetes secrets.
    pub pull_secrets: Option<Vec<String>>,
    /// Clara's template parameters (`${{ name }}` placeholders and their defaults).
    pub parameters: Option<BTreeMap<String, Scalar>>,
    /// Seconds the whole job may run.
    pub timeout: Option<u64>,
    pub operators: Option<Vec<RawOperator>>,
}

/// One operator.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(crate) struct RawOperator {
    pub name: Option<String>,
    pub description: Option<String>,
    pub command: Option<Vec<String>>,
    pub container: Option<RawContainer>,
    pub requests: Option<RawRequests>,
    /// Clara's inference models (0.6.0+): items with a `name`.
    pub models: Option<Vec<RawModel>>,
    pub parameters: Option<BTreeMap<String, Scalar>>,
    /// Clara's services, deprecated since 0.7.1; their content is not read.
    pub services: Option<IgnoredAny>,
    /// Whether the program uses the pipeline driver (a fastio extension).
    pub uses_driver: Option<bool>,
    #[serde(default)]
    pub variables: BTreeMap<String, Scalar>,
    #[serde(default)]
    pub input: Vec<RawEntry>,
    #[serde(default)]
    pub output: Vec<RawEntry>,
}

/// Clara's `container` block.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(crate) struct RawContainer {
    pub image: Option<String>,
    /// Read as text even when it looks like a number (`18.04`, `1.10`).
    pub tag: Option<String>,
    pub command: Option<Vec<String>>,
}

/// Clara's `requests` block: hardware an operator needs.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(crate) struct RawRequests {
    pub cpu: Option<Scalar>,
    pub gpu: Option<Scalar>,
    pub memory: Option<Scalar>,
}

/// An item of Clara's `models` list. Fields other than `name` are Clara's business and not
/// read.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) struct RawModel {
    pub name: Option<String>,
}

/// One item of an operator's `input` or `output` list.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(crate) struct RawEntry {
    pub name: Option<String>,
    pub from: Option<String>,
    pub path: Option<String>,
    #[serde(rename = "type")]
    pub type_name: Option<String>,
    pub element_type: Option<String>,
    pub shape: Option<Vec<i64>>,
    /// fastio extension: where an array output lives (`cuda:N`; host memory without it).
    pub device: Option<String>,
}

/// A scalar written as a string, number or boolean, kept as text: `CLARA_TRACE: 2` and
/// `api-version: 0.5` read the same as their quoted forms.
#[derive(Debug)]
pub(crate) struct Scalar(pub String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;
        impl Visitor<'_> for ScalarVisitor {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_owned()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
        }
        deserializer.deserialize_any(ScalarVisitor)
    }
}

/// Parses the text in `format`; `origin` labels error messages.
pub(crate) fn parse(
    text: &str,
    origin: &str,
    format: Format,
) -> Result<RawPipeline, DefinitionError> {
    let syntax =
        |message: String, line: Option<usize>, column: Option<usize>| DefinitionError::Syntax {
            origin: origin.to_owned(),
            format,
            message,
            line,
            column,
        };
    let limit = |e: Exceeded| DefinitionError::Limit {
        origin: origin.to_owned(),
        what: e.what,
        line: e.line,
        column: e.column,
    };
    limits::check_size(text.len()).map_err(limit)?;
    match format {
        Format::Yaml => {
            limits::check_brackets(text).map_err(limit)?;
            let vetted = limits::check_yaml(text).map_err(limit)?;
            let parsed: RawPipeline = serde_yaml_ng::from_str(text).map_err(|e| {
                let location = e.location();
                syntax(
                    e.to_string(),
                    location.as_ref().map(|l| l.line()),
                    location.as_ref().map(|l| l.column()),
                )
            })?;
            if !vetted {
                // The two parsers disagree on this text; refuse what could not be bounded.
                return Err(syntax(
                    "the YAML could not be read in full (an unusual construct?)".to_owned(),
                    None,
                    None,
                ));
            }
            Ok(parsed)
        }
        Format::Json => serde_json::from_str(text).map_err(|e| {
            // serde_json reports line 0 for errors that have no position.
            let known = e.line() > 0;
            syntax(
                e.to_string(),
                known.then_some(e.line()),
                known.then_some(e.column()),
            )
        }),
    }
}
