//! Pipeline definitions for fastio: parsing, validation and the operator graph.
//!
//! A pipeline definition says which operators a job runs, how each is started, and what
//! each reads and writes. The format is Clara's pipeline-definition format (CPDL), in YAML or
//! JSON, with one change: an operator is a process started from its `command`, not a container.
//! [`Pipeline::from_path`] reads a file (`.json` is JSON, anything else YAML);
//! [`Pipeline::from_yaml_str`] and [`Pipeline::from_json_str`] take the text and a label for
//! messages. They return a validated [`Pipeline`], or a [`DefinitionError`] that lists every
//! problem found.
//!
//! ```
//! let pipeline = fastio_pipeline::Pipeline::from_yaml_str(
//!     r#"
//! api-version: 0.5.0
//! name: tiny
//! operators:
//! - name: make
//!   command: [make-volume]
//!   output:
//!   - name: volume
//!     type: array
//!     element-type: int16
//!     shape: [4, -1]
//! - name: use
//!   command: [use-volume, --fast]
//!   input:
//!   - name: volume
//!     from: make
//!     type: array
//!     element-type: int16
//!     shape: [4, -1]
//! "#,
//!     "tiny.yaml",
//! )?;
//! assert_eq!(pipeline.operators()[1].name(), "use");
//! assert_eq!(pipeline.upstream("use")[0].name(), "make");
//! # Ok::<(), fastio_pipeline::DefinitionError>(())
//! ```
//!
//! # The format
//!
//! The format, every rule and fastio's extensions (`${...}` substitution, variables set
//! from outside, how operators are started) are documented for users in
//! `docs/pipeline-format.md` in the repository; this crate implements exactly that page.
//! Parsing stops at the first error of syntax or structure ([`DefinitionError::Syntax`],
//! with the parser's line and column); validation reports every broken rule
//! ([`DefinitionError::Invalid`], whose [`problems`](DefinitionError::problems) each name
//! the file, the operator, the entry and the field: [`Problem`]). Variables set from
//! outside the definition ([`Override`], `fastio run --set`) are applied by
//! [`Pipeline::from_path_with`] before `${...}` is replaced ([`PIPELINE_DIR`]).
//!
//! # The model
//!
//! A [`Pipeline`] has its [`Operator`]s in dependency order: every operator after those it
//! reads from, and otherwise in definition order. Each operator has typed [`Entry`]s whose
//! [`EntryKind`] gives the shared-memory element type and declared shape
//! ([`EntryKind::element_type`], [`EntryKind::declared_shape`]) and whether the driver
//! pre-allocates it ([`EntryKind::is_preallocatable`]). [`Pipeline::links`] lists every
//! output-to-input link; [`Pipeline::upstream`], [`Pipeline::downstream`],
//! [`Pipeline::readers`] and [`Pipeline::source`] answer the usual questions, and
//! [`Pipeline::to_dot`] draws the graph.
//!
//! Architecture Invariant: this crate reads and checks definitions; it starts no process and
//! touches no shared memory. The driver builds on [`Pipeline`] in its own modules.

#![forbid(unsafe_code)]

mod error;
mod graph;
mod model;
pub mod plan;
mod raw;
mod substitute;
mod validate;

pub use error::{
    DefinitionError, Direction, EntryLocation, Format, Location, OperatorLocation, Problem,
    ProblemKind,
};
pub use model::{DEFAULT_TIMEOUT, Entry, EntryKind, EntryRef, Link, Operator, Pipeline};
pub use substitute::{Override, OverrideSyntaxError, PIPELINE_DIR};
