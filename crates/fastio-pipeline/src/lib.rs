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
//! Top level:
//!
//! | field | required | meaning |
//! |---|---|---|
//! | `api-version` | yes | format version, `major.minor[.patch]`; typed entries need `0.5.0` or later |
//! | `name` | yes | the pipeline's name |
//! | `operators` | yes, at least one | the operators |
//! | `timeout` | no | seconds a job may run, 1 to 604800 (7 days, [`MAX_TIMEOUT`]); default 600 ([`DEFAULT_TIMEOUT`], Clara's default) |
//! | `orchestrator` | no | `Clara` (accepted, ignored) or `Argo` (refused when any entry is typed); any case |
//! | `pull-secrets` | no | Clara's registry credentials: accepted and ignored |
//!
//! Operator:
//!
//! | field | required | meaning |
//! |---|---|---|
//! | `name` | yes | the operator's name |
//! | `command` | yes | argv that starts the process: a non-empty list of strings, the program first |
//! | `description` | no | free text |
//! | `variables` | no | environment variables: a map whose values may be strings, numbers or booleans (`CLARA_TRACE: 2` sets `"2"`) |
//! | `input`, `output` | no | lists of entries |
//! | `container`, `requests` | no | Clara's container image and resource requests: accepted and ignored; `command` is still required |
//!
//! Entry (an item of `input` or `output`):
//!
//! | field | meaning |
//! |---|---|
//! | `name` | the entry's name |
//! | `from` | inputs only: the upstream operator whose output of the same name this input reads |
//! | `type` | `stream` (the default when absent), `array`, `string`, or a primitive: `uint8`..`uint64`, `int8`..`int64`, `float16`, `float32`, `float64`, or `u8`..`f64` |
//! | `element-type` | arrays: the element type; streams: a free-form description such as `dicom` |
//! | `shape` | arrays: the dimensions, `-1` or `0` for one fixed at run time |
//! | `path` | streams: the fully qualified directory the operator reads or writes |
//!
//! Any other field, at any level, is an error naming it.
//!
//! # The rules
//!
//! Reading is bounded before anything is parsed: a definition is at most 16 MiB
//! ([`MAX_DEFINITION_BYTES`]); YAML collections nest at most 64 deep ([`MAX_DEPTH`]; JSON's
//! parser stops at 128); with its aliases expanded, a YAML definition holds at most
//! [`MAX_NODES`] nodes and [`MAX_SCALAR_BYTES`] bytes of values. Going past a bound is
//! [`DefinitionError::Limit`], with the line and column where it happened. Linking and
//! cycle detection are linear in the size of the definition (Tarjan's strongly connected
//! components), so 10,000 operators validate in well under a second.
//!
//! Parsing stops at the first error of syntax or structure (an unknown field, a string where
//! a list belongs) and reports the parser's line and column: [`DefinitionError::Syntax`].
//! Validation then checks every rule below and reports every problem it finds, in definition
//! order: [`DefinitionError::Invalid`], whose [`problems`](DefinitionError::problems) each name
//! the file, the operator, the entry and the field ([`Problem`]).
//!
//! * **Names.** The pipeline, every operator and every named entry have names of 1 to 255
//!   characters of `A-Z a-z 0-9 - _` ([`fastio_meta::validate_name`]). Names compare without
//!   regard to case, everywhere: two operators may not be `Reader` and `reader`; two inputs (or
//!   two outputs) of one operator may not share a name; `from` and the name an input reads
//!   match in any case.
//! * **Outputs are named.** Inputs with `from` are named too (they read the upstream output of
//!   that name). A payload input may be unnamed; at most one per operator, and its name is
//!   then `""` (Clara reports unnamed entries with an empty name).
//! * **`stream`** needs `path`, which must be fully qualified (start with `/`), and takes no
//!   `shape`; its `element-type` is free-form and optional (Clara 0.4.0 definitions carry only
//!   paths). Two streams of one operator may not share a path.
//! * **`array`** needs `element-type`, a primitive type (any spelling
//!   [`fastio_meta::ElementType::parse`] accepts, including numpy strings such as `<f4`), and
//!   `shape` (1 to 64 dimensions, each positive, `-1` or `0`), and takes no `path`.
//! * **`string` and primitives** take none of `element-type`, `shape` and `path`. A string is
//!   an array of `uint8` of shape `[-1]`, a primitive an array of its type of shape `[1]`.
//!   The primitive spellings of `type` are exactly Clara's, in lower case.
//! * **Typed entries** (array, string, primitive) need `api-version` 0.5.0 or later, and not
//!   `orchestrator: Argo`.
//! * **`from`** appears on inputs only. It names another operator of the pipeline (not the
//!   input's own), which has an output of the input's name, with the same `type`, the same
//!   `element-type` and the same `shape` as declared (`[-1]` and `[0]` differ). A stream's
//!   `element-type` must match too, including being absent on both sides; its `path` is each
//!   side's own.
//! * **An input without `from`** is the job's payload. Only a `stream` can be: shared memory
//!   entries have no producer outside the pipeline, so an array, string or primitive input
//!   without `from` is an error.
//! * **No cycles.** The operators and their `from` links form a directed acyclic graph; each
//!   cycle is reported once, as the operators along it (`"a" -> "b" -> "a"`).
//! * **`command`** is a non-empty list whose program is not empty; no argument contains a NUL
//!   byte. **`variables`** names are not empty and contain no `=`; nothing contains a NUL
//!   byte.
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
mod limits;
mod model;
pub mod plan;
mod raw;
mod validate;

pub use error::{
    DefinitionError, Direction, EntryLocation, Format, Location, OperatorLocation, Problem,
    ProblemKind,
};
pub use limits::{MAX_DEFINITION_BYTES, MAX_DEPTH, MAX_NODES, MAX_SCALAR_BYTES};
pub use model::{
    DEFAULT_TIMEOUT, Entry, EntryKind, EntryRef, Link, MAX_TIMEOUT, Operator, Pipeline,
};
