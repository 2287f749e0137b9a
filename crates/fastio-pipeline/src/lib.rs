//! Pipeline definitions for fastio: parsing, validation and the operator graph.
//!
//! A pipeline definition says which operators a job runs, how each is started, and what
//! each reads and writes. The format is Clara's pipeline-definition format (CPDL), in YAML or
//! JSON: Clara's own definitions load unchanged. Locally an operator is a process started from
//! its `command` (or its `container.command`); the container image is kept, for running the
//! operator as a container elsewhere.
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
//! The user's reference of the format, with examples and fastio's extensions (`${...}`
//! substitution, variables set from outside, how operators are started, running one
//! operator alone), is `docs/pipeline-format.md` in the repository. This page summarises
//! the fields and rules for users of the crate. Variables set from outside the definition
//! ([`Override`], `fastio run --set`) are applied by [`Pipeline::from_path_with`] before
//! `${...}` is replaced ([`PIPELINE_DIR`]).
//!
//! Top level:
//!
//! | field | required | meaning |
//! |---|---|---|
//! | `api-version` | yes | format version, `major.minor[.patch]`; typed entries need `0.5.0` or later |
//! | `name` | yes | the pipeline's name |
//! | `operators` | yes, at least one | the operators |
//! | `description` | no | free text |
//! | `timeout` | no | seconds a job may run, 1 to 604800 (7 days, [`MAX_TIMEOUT`]); default 600 ([`DEFAULT_TIMEOUT`], Clara's default) |
//! | `orchestrator` | no | `Clara` (accepted) or `Argo` (refused when any entry is typed); any case |
//! | `pull-secrets` | no | names of the secrets an orchestrator pulls images with (Kubernetes secret names); kept, not used locally |
//! | `parameters` | no | Clara's template parameters: accepted, reported as not used |
//!
//! Operator:
//!
//! | field | required | meaning |
//! |---|---|---|
//! | `name` | yes | the operator's name |
//! | `command` | one of the two | argv that starts the process locally: a non-empty list of strings, the program first |
//! | `container` | one of the two | Clara's container: `image` (required in the block), `tag` (default `latest`), `command` (argv); see below |
//! | `description` | no | free text |
//! | `variables` | no | environment variables: a map whose values may be strings, numbers or booleans (`CLARA_TRACE: 2` sets `"2"`) |
//! | `input`, `output` | no | lists of entries |
//! | `requests` | no | Clara's hardware requests: `cpu` (cores), `gpu` (devices), `memory` (megabytes), whole numbers; kept, not reserved locally |
//! | `uses-driver` | no | `true` or `false`: whether the program uses the pipeline driver (see "Plain programs") |
//! | `models` | no | Clara's inference models (items with a `name`): accepted, reported as not used |
//! | `parameters` | no | Clara's template parameters: accepted, reported as not used |
//! | `services` | no | Clara's services (deprecated by Clara in 0.7.1): accepted, reported as not used |
//!
//! Entry (an item of `input` or `output`):
//!
//! | field | meaning |
//! |---|---|
//! | `name` | the entry's name; one stream per input list and one per output list may go without |
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
//! * **Unnamed entries** (Clara's rule): at most one input and at most one output of an
//!   operator may be unnamed, and only a `stream`: operators open shared-memory entries by
//!   name. An unnamed input with `from` reads the upstream operator's unnamed output; one
//!   without `from` is the payload. An unnamed entry's name is `""` (Clara reports unnamed
//!   entries with an empty name). Clara's documents make output names mandatory from
//!   0.5.0; definitions in use have unnamed disk outputs at every version, so fastio accepts
//!   them at every version.
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
//! * **`command`** (and `container.command`) is a non-empty list whose program is not empty;
//!   no argument contains a NUL byte. An operator has `command`, or a `container` block, or
//!   both. **`variables`** names are not empty and contain no `=`; nothing contains a NUL
//!   byte.
//! * **`container`** has an `image`. **`requests`** values are whole numbers (`memory` at
//!   least 1). **`pull-secrets`** are Kubernetes secret names (lower-case letters, digits,
//!   `-`, `.`; at most 253). **`models`** have names and **`parameters`** keys follow the
//!   naming rule above.
//! * **`${...}`** in `command` names a variable of the operator or `PIPELINE_DIR`; in a
//!   variable's value only `PIPELINE_DIR`. `$${` is a literal `${`; Clara's `${{ name }}`
//!   template placeholders are left as written.
//! * **`uses-driver: false`** is refused on an operator with a shared-memory entry: only the
//!   driver reaches those.
//!
//! # Clara's fields
//!
//! Every field of Clara's operator and pipeline documents is understood; none is refused as
//! unknown. What each does here:
//!
//! * `container`: locally, the process is `command` if given, else `container.command`
//!   (Clara passes `container.command` to the image's entry point; here it is the whole
//!   argv). With both, `command` runs locally and `container.command` stays with the image,
//!   so one definition can name an in-image path and a local one. The image, tag and
//!   container command are kept in the model ([`Operator::container`]) for rendering the
//!   operator as a container. An operator with an image and neither command validates (the
//!   definition is fine for an orchestrator), but a local run refuses to start, naming every
//!   such operator ([`Pipeline::check_runs_locally`]).
//! * `requests`, `pull-secrets`, `orchestrator`, `description`: parsed, checked and kept
//!   ([`Operator::requests`], [`Pipeline::pull_secrets`]); a local run reserves no GPU or
//!   memory and pulls nothing.
//! * `models`, `parameters`, `services`: parsed and checked, then listed by
//!   [`Pipeline::unused`], which `fastio validate` and `fastio run` print as notes: fastio
//!   loads no models (Clara hands them to a Triton Inference Server), does not substitute
//!   Clara's `${{ name }}` template placeholders, and starts no services.
//!
//! ```
//! let pipeline = fastio_pipeline::Pipeline::from_yaml_str(
//!     r#"
//! api-version: 0.5.0
//! orchestrator: Clara
//! name: ct
//! pull-secrets: [ngc-clara]
//! operators:
//! - name: dicom-reader
//!   container:
//!     image: example/dicom-reader
//!     tag: 0.1.0
//!     command: [/app/read.sh]
//!   requests: {gpu: 1, memory: 8192}
//!   input:
//!   - {path: /input, type: stream, element-type: dicom}
//!   output:
//!   - {path: /output, type: stream, element-type: dicom}
//! "#,
//!     "ct.yaml",
//! )?;
//! let reader = &pipeline.operators()[0];
//! assert_eq!(reader.command().unwrap(), ["/app/read.sh"]);
//! assert_eq!(reader.container().unwrap().reference(), "example/dicom-reader:0.1.0");
//! assert_eq!(reader.requests().gpu, Some(1));
//! assert_eq!(reader.outputs()[0].name(), ""); // Clara's one unnamed output
//! assert_eq!(pipeline.pull_secrets(), ["ngc-clara"]);
//! # Ok::<(), fastio_pipeline::DefinitionError>(())
//! ```
//!
//! # Plain programs
//!
//! An operator need not use the pipeline driver. A plain program (a DICOM converter, a shell
//! script) only reads its input folders and writes its output folders, which it finds in
//! Clara's `NVIDIA_CLARA_INPUTPATHS` / `NVIDIA_CLARA_OUTPUTPATHS` (`name:path` pairs; the name
//! is empty for an unnamed entry). The driver runs it with Clara's disk semantics: it starts
//! only once every upstream operator has finished execute, it succeeds by exiting 0, its
//! outputs go downstream, and it never starts when the job has already failed. Operators that
//! use the driver start at job start, so that their prepare overlaps upstream work.
//!
//! One difference from a container remains: Clara mounts each volume at the entry's
//! declared `path` inside the container, so a containerised program may write to `/output`
//! as written. A local process gets its folders from the two variables instead (the declared
//! path is not created on the host): `sh -c 'cp -r /in /out'` becomes
//! `sh -c 'in=$(echo "$NVIDIA_CLARA_INPUTPATHS" | cut -d: -f2-); ...'`, or `command` (which
//! wins locally) says so while `container.command` keeps the in-image form.
//!
//! Which is which: `uses-driver: true|false` when given; otherwise an operator with a
//! shared-memory entry uses the driver; otherwise the driver looks at the program for the
//! driver (its markers in a compiled program, an `import` of `clara` or `fastio` in a Python
//! script); anything else is plain. Definitions that worked before need no change: their
//! operators all use the driver, and either have shared-memory entries or programs that show
//! it. The `fastio-driver` crate documents the look at the program; `fastio validate` prints
//! each operator's kind and why.
//!
//! # The model
//!
//! A [`Pipeline`] has its [`Operator`]s in dependency order: every operator after those it
//! reads from, and otherwise in definition order. Each keeps Clara's fields: its
//! [`Container`], [`Requests`], models and parameters, and the pipeline its pull secrets, for
//! rendering the job on an orchestrator. Each operator has typed [`Entry`]s whose
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
mod substitute;
mod validate;

pub use error::{
    DefinitionError, Direction, EntryLocation, Format, Location, OperatorLocation, Problem,
    ProblemKind,
};
pub use limits::{MAX_DEFINITION_BYTES, MAX_DEPTH, MAX_NODES, MAX_SCALAR_BYTES};
pub use model::{
    Container, DEFAULT_TIMEOUT, Entry, EntryKind, EntryRef, Link, MAX_TIMEOUT, Operator, Pipeline,
    Requests, Unused,
};
pub use substitute::{Override, OverrideSyntaxError, PIPELINE_DIR};
