//! The validated pipeline: operators in dependency order with typed entries.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fastio_context::MemoryKind;
use fastio_meta::{DynamicShape, ElementType};

use crate::error::{DefinitionError, Direction, Format, Location, Problem, ProblemKind};

/// The job timeout when a definition gives none: 600 seconds, Clara's default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// The longest job time limit a definition (or `fastio run --timeout`) may give: 7 days.
/// Durations are bounded so that deadline arithmetic cannot overflow, and because a job
/// that may run longer is better served by no pipeline driver at all.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// A validated pipeline definition.
///
/// Architecture Invariant: a `Pipeline` only exists when every rule of
/// `docs/pipeline-format.md` holds, so the driver never re-checks names, types or links. Its operators are
/// in dependency order: every operator comes after all the operators it reads from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pipeline {
    pub(crate) origin: String,
    pub(crate) api_version: String,
    pub(crate) name: String,
    pub(crate) description: Option<String>,
    pub(crate) orchestrator: Option<String>,
    pub(crate) pull_secrets: Vec<String>,
    pub(crate) parameters: BTreeMap<String, String>,
    pub(crate) timeout: Duration,
    pub(crate) operators: Vec<Operator>,
    pub(crate) links: Vec<Link>,
    pub(crate) unused: Vec<Unused>,
}

/// One operator: locally a process started from its command; elsewhere, a container of
/// its [`Container`] image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operator {
    pub(crate) name: String,
    /// Position in the definition's `operators` list.
    pub(crate) index: usize,
    pub(crate) description: Option<String>,
    pub(crate) command: Option<Vec<String>>,
    pub(crate) container: Option<Container>,
    pub(crate) requests: Requests,
    pub(crate) models: Vec<String>,
    pub(crate) parameters: BTreeMap<String, String>,
    pub(crate) uses_driver: Option<bool>,
    pub(crate) variables: BTreeMap<String, String>,
    pub(crate) inputs: Vec<Entry>,
    pub(crate) outputs: Vec<Entry>,
}

/// Clara's `container` block: the image an orchestrator runs for the operator, kept so that
/// the operator can be rendered as a container elsewhere (a Kubernetes Pod). Local runs start
/// [`Operator::command`] as a process instead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    pub(crate) image: String,
    pub(crate) tag: String,
    pub(crate) command: Option<Vec<String>>,
}

impl Container {
    /// The image name, as written (`example/dicom-reader`).
    pub fn image(&self) -> &str {
        &self.image
    }

    /// The image tag; `latest` when the definition gives none (Clara's default).
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// `image:tag`, the reference a container runtime pulls.
    pub fn reference(&self) -> String {
        format!("{}:{}", self.image, self.tag)
    }

    /// `container.command`: the argv the container starts with (Clara passes it to the
    /// image's entry point as arguments when the image has one), if given.
    pub fn command(&self) -> Option<&[String]> {
        self.command.as_deref()
    }
}

/// Clara's `requests`: the hardware an operator needs to run. Local runs do not reserve it;
/// it is kept for rendering the operator elsewhere. `None` means not requested (Clara then
/// applies its defaults: no GPU, an administrator-set CPU and memory share).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Requests {
    /// Logical CPU cores.
    pub cpu: Option<u32>,
    /// GPUs the operator needs exclusive use of.
    pub gpu: Option<u32>,
    /// System memory in megabytes (Clara's unit).
    pub memory_mb: Option<u64>,
}

impl Requests {
    /// Whether nothing is requested.
    pub fn is_empty(&self) -> bool {
        *self == Requests::default()
    }
}

/// A field of Clara's format that is read and checked but that fastio does not act on
/// (`services`, `models`, template `parameters`): reported, never refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unused {
    /// Where it is.
    pub location: Location,
    /// The field.
    pub field: &'static str,
    /// Why it has no effect.
    pub reason: &'static str,
}

/// `pipeline.yaml: operator "seg": services is not used: ...`.
impl fmt::Display for Unused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} is not used: {}",
            self.location, self.field, self.reason
        )
    }
}

/// An input or output of an operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub(crate) name: String,
    pub(crate) from: Option<String>,
    pub(crate) kind: EntryKind,
    pub(crate) memory: MemoryKind,
}

/// What an entry carries and where it lives: on disk (`stream`) or in shared memory (the
/// others, Clara's "FastIO entries").
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// Files in a directory (Clara's disk volumes).
    Stream {
        /// Free-form description of the content (`dicom`, `text`), if declared.
        element_type: Option<String>,
        /// The fully qualified path the operator reads or writes.
        path: PathBuf,
    },
    /// A typed N-dimensional array in shared memory.
    Array {
        /// Its element type.
        element_type: ElementType,
        /// Its declared shape; `-1` or `0` dimensions are fixed at run time.
        shape: DynamicShape,
    },
    /// Bytes of text in shared memory: an array of `uint8` with shape `[-1]`.
    String,
    /// One value in shared memory: an array of the type with shape `[1]`.
    Primitive(ElementType),
}

impl EntryKind {
    /// The `type` word of the definition: `stream`, `array`, `string`, or the primitive's short
    /// name (`u64`).
    pub fn type_name(&self) -> &'static str {
        match self {
            EntryKind::Stream { .. } => "stream",
            EntryKind::Array { .. } => "array",
            EntryKind::String => "string",
            EntryKind::Primitive(t) => t.short_name(),
        }
    }

    /// Whether the entry lives in shared memory (a FastIO entry), that is, is not a stream.
    pub fn is_shared_memory(&self) -> bool {
        !matches!(self, EntryKind::Stream { .. })
    }

    /// The element type of the shared-memory allocation: the array's, `uint8` for a string,
    /// the primitive's type; `None` for a stream.
    pub fn element_type(&self) -> Option<ElementType> {
        match self {
            EntryKind::Stream { .. } => None,
            EntryKind::Array { element_type, .. } => Some(*element_type),
            EntryKind::String => Some(ElementType::U8),
            EntryKind::Primitive(t) => Some(*t),
        }
    }

    /// The declared shape of the shared-memory allocation: the array's, `[-1]` for a string,
    /// `[1]` for a primitive; `None` for a stream.
    pub fn declared_shape(&self) -> Option<DynamicShape> {
        let fixed =
            |dims: Vec<i64>| DynamicShape::new(dims).expect("a one-dimension shape is valid");
        match self {
            EntryKind::Stream { .. } => None,
            EntryKind::Array { shape, .. } => Some(shape.clone()),
            EntryKind::String => Some(fixed(vec![-1])),
            EntryKind::Primitive(_) => Some(fixed(vec![1])),
        }
    }

    /// Whether the driver allocates the entry before the operator runs: a shared-memory entry
    /// whose every declared dimension is positive and that is not a string (Clara's rule).
    pub fn is_preallocatable(&self) -> bool {
        match self {
            EntryKind::Array { shape, .. } => !shape.is_dynamic(),
            EntryKind::Primitive(_) => true,
            EntryKind::Stream { .. } | EntryKind::String => false,
        }
    }

    /// Whether the entry is a dynamic FastIO entry, whose shape is fixed at run time: a string,
    /// or an array with a `-1` or `0` dimension.
    pub fn is_dynamic(&self) -> bool {
        match self {
            EntryKind::Array { shape, .. } => shape.is_dynamic(),
            EntryKind::String => true,
            EntryKind::Stream { .. } | EntryKind::Primitive(_) => false,
        }
    }
}

/// `int16[256,512,512]`, `string`, `u64`, `stream(dicom)` or `stream`.
impl fmt::Display for EntryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EntryKind::Stream {
                element_type: Some(t),
                ..
            } => write!(f, "stream({t})"),
            EntryKind::Stream { .. } => f.write_str("stream"),
            EntryKind::Array {
                element_type,
                shape,
            } => {
                write!(f, "{element_type}[")?;
                for (i, d) in shape.declared().iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{d}")?;
                }
                f.write_str("]")
            }
            EntryKind::String => f.write_str("string"),
            EntryKind::Primitive(t) => f.write_str(t.short_name()),
        }
    }
}

impl Entry {
    /// Where the entry's memory lives: host memory, or a CUDA device for an array output
    /// that says `device: cuda:N` (an input is where its producer's output is).
    pub fn memory(&self) -> MemoryKind {
        self.memory
    }

    /// The entry's name. Names compare case-insensitively; this is the spelling of the
    /// definition. An unnamed input (only a payload stream input may be unnamed, and at most one
    /// per operator) has the empty name, as in Clara, whose C API reports it as `""`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// For an input, the upstream operator it reads, spelled as that operator's own `name`;
    /// `None` for a payload input and for every output.
    pub fn from(&self) -> Option<&str> {
        self.from.as_deref()
    }

    /// What the entry carries.
    pub fn kind(&self) -> &EntryKind {
        &self.kind
    }
}

impl Operator {
    /// Its name, as written in the definition.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its description, if any.
    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }

    /// The argv that starts the operator locally: the program, then its arguments; never an
    /// empty list. It is the operator's `command` or, without one, its `container.command`.
    /// `None` only for an operator with a container image and no command, which can be
    /// rendered as a container but not run as a local process
    /// ([`Pipeline::check_runs_locally`] says so).
    pub fn command(&self) -> Option<&[String]> {
        self.command.as_deref()
    }

    /// Clara's container block, if given.
    pub fn container(&self) -> Option<&Container> {
        self.container.as_ref()
    }

    /// Clara's hardware requests (empty when none are given).
    pub fn requests(&self) -> &Requests {
        &self.requests
    }

    /// Names of the inference models the operator lists (Clara 0.6.0+; not loaded by fastio).
    pub fn models(&self) -> &[String] {
        &self.models
    }

    /// The operator's template parameters and their defaults (not substituted by fastio).
    pub fn parameters(&self) -> &BTreeMap<String, String> {
        &self.parameters
    }

    /// `uses-driver` as declared: `Some(true)` for a program that uses the pipeline driver,
    /// `Some(false)` for a plain program, `None` when the definition does not say (the
    /// driver then decides; see its documentation).
    pub fn uses_driver(&self) -> Option<bool> {
        self.uses_driver
    }

    /// Whether any input or output lives in shared memory (a FastIO entry). Such an operator
    /// uses the pipeline driver: nothing else reaches those entries.
    pub fn has_shared_memory(&self) -> bool {
        self.inputs
            .iter()
            .chain(&self.outputs)
            .any(|e| e.kind.is_shared_memory())
    }

    /// Environment variables to set for the process, by name.
    pub fn variables(&self) -> &BTreeMap<String, String> {
        &self.variables
    }

    /// Inputs, in definition order.
    pub fn inputs(&self) -> &[Entry] {
        &self.inputs
    }

    /// Outputs, in definition order.
    pub fn outputs(&self) -> &[Entry] {
        &self.outputs
    }

    /// The input of that name (compared case-insensitively).
    pub fn input(&self, name: &str) -> Option<&Entry> {
        self.inputs
            .iter()
            .find(|e| e.name.eq_ignore_ascii_case(name))
    }

    /// The output of that name (compared case-insensitively).
    pub fn output(&self, name: &str) -> Option<&Entry> {
        self.outputs
            .iter()
            .find(|e| e.name.eq_ignore_ascii_case(name))
    }

    /// The entries of one direction.
    pub fn entries(&self, direction: Direction) -> &[Entry] {
        match direction {
            Direction::Input => &self.inputs,
            Direction::Output => &self.outputs,
        }
    }
}

/// An entry of the pipeline: operator and entry positions, as in [`Pipeline::operators`] and
/// [`Operator::inputs`] / [`Operator::outputs`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntryRef {
    /// Position of the operator in [`Pipeline::operators`] (dependency order).
    pub operator: usize,
    /// Position of the entry in the operator's inputs or outputs.
    pub entry: usize,
}

/// An output read by a downstream input: one `from` of the definition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Link {
    /// The upstream operator's output.
    pub output: EntryRef,
    /// The downstream operator's input.
    pub input: EntryRef,
}

impl Pipeline {
    /// Reads, parses and validates a definition file: JSON if its name ends in `.json`, YAML
    /// otherwise. Messages name the file as given.
    pub fn from_path(path: impl AsRef<Path>) -> Result<Self, DefinitionError> {
        Self::from_path_with(path, &[])
    }

    /// Parses and validates a YAML definition; `origin` names it in messages.
    pub fn from_yaml_str(text: &str, origin: &str) -> Result<Self, DefinitionError> {
        Self::from_str_in(text, origin, Format::Yaml)
    }

    /// Parses and validates a JSON definition; `origin` names it in messages.
    pub fn from_json_str(text: &str, origin: &str) -> Result<Self, DefinitionError> {
        Self::from_str_in(text, origin, Format::Json)
    }

    /// Parses and validates a definition in the given format; `origin` names it in messages.
    pub fn from_str_in(text: &str, origin: &str, format: Format) -> Result<Self, DefinitionError> {
        Self::from_str_with(text, origin, format, &[])
    }

    /// [`Pipeline::from_path`] with variables set from outside the definition
    /// (`fastio run --set`), applied before `${...}` is replaced.
    pub fn from_path_with(
        path: impl AsRef<Path>,
        overrides: &[crate::Override],
    ) -> Result<Self, DefinitionError> {
        let path = path.as_ref();
        let read_error = |cause| DefinitionError::Read {
            path: path.to_owned(),
            cause,
        };
        // One byte past the limit is enough to refuse it, whatever the file's size.
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut std::io::Read::take(
                std::fs::File::open(path).map_err(read_error)?,
                crate::MAX_DEFINITION_BYTES as u64 + 1,
            ),
            &mut text,
        )
        .map_err(read_error)?;
        Self::from_str_with(
            &text,
            &path.display().to_string(),
            Format::from_path(path),
            overrides,
        )
    }

    /// [`Pipeline::from_str_in`] with variables set from outside the definition.
    pub fn from_str_with(
        text: &str,
        origin: &str,
        format: Format,
        overrides: &[crate::Override],
    ) -> Result<Self, DefinitionError> {
        let mut raw = crate::raw::parse(text, origin, format)?;
        crate::substitute::apply(&mut raw, overrides, origin)?;
        crate::validate::validate(raw, origin)
    }

    /// The file name or label the definition came from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The declared `api-version`, as written.
    pub fn api_version(&self) -> &str {
        &self.api_version
    }

    /// The pipeline's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pipeline's description, if any.
    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }

    /// `orchestrator` as written (`Clara`), if given.
    pub fn orchestrator(&self) -> Option<&str> {
        self.orchestrator.as_deref()
    }

    /// Clara's `pull-secrets`: names of the secrets that let an orchestrator pull the
    /// operators' images (Kubernetes `imagePullSecrets`). Local runs pull nothing.
    pub fn pull_secrets(&self) -> &[String] {
        &self.pull_secrets
    }

    /// The pipeline's template parameters and their defaults (not substituted by fastio).
    pub fn parameters(&self) -> &BTreeMap<String, String> {
        &self.parameters
    }

    /// The fields of the definition that fastio accepts but does not act on, in definition
    /// order; `fastio validate` and `fastio run` print them as notes.
    pub fn unused(&self) -> &[Unused] {
        &self.unused
    }

    /// Checks that every operator can start as a local process: one with a container image
    /// but neither `command` nor `container.command` cannot (fastio runs no containers).
    /// Lists every such operator.
    pub fn check_runs_locally(&self) -> Result<(), DefinitionError> {
        let problems: Vec<Problem> = self
            .operators
            .iter()
            .filter(|op| op.command.is_none())
            .map(|op| Problem {
                location: Location {
                    origin: self.origin.clone(),
                    operator: Some(crate::error::OperatorLocation {
                        index: op.index,
                        name: Some(op.name.clone()),
                    }),
                    entry: None,
                },
                kind: ProblemKind::NoLocalCommand {
                    image: op
                        .container
                        .as_ref()
                        .map(Container::reference)
                        .unwrap_or_default(),
                },
            })
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(DefinitionError::Invalid {
                origin: self.origin.clone(),
                problems,
            })
        }
    }

    /// How long a job may run: the definition's `timeout`, or [`DEFAULT_TIMEOUT`].
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The operators in dependency order: each after every operator it reads from, and
    /// otherwise in definition order.
    pub fn operators(&self) -> &[Operator] {
        &self.operators
    }

    /// The position of the operator of that name (compared case-insensitively) in
    /// [`Pipeline::operators`].
    pub fn position(&self, name: &str) -> Option<usize> {
        self.operators
            .iter()
            .position(|o| o.name.eq_ignore_ascii_case(name))
    }

    /// The operator of that name (compared case-insensitively).
    pub fn operator(&self, name: &str) -> Option<&Operator> {
        self.position(name).map(|i| &self.operators[i])
    }

    /// Every output-to-input link, ordered by the reading operator (dependency order), then by
    /// its input's position.
    pub fn links(&self) -> &[Link] {
        &self.links
    }

    /// The operator and entry an [`EntryRef`] designates.
    ///
    /// # Panics
    /// If the reference does not come from this pipeline.
    pub fn resolve(&self, at: EntryRef, direction: Direction) -> (&Operator, &Entry) {
        let op = &self.operators[at.operator];
        (op, &op.entries(direction)[at.entry])
    }

    /// The operators the named one reads from, without repeats, in dependency order; empty for
    /// an unknown name.
    pub fn upstream(&self, name: &str) -> Vec<&Operator> {
        let Some(me) = self.position(name) else {
            return Vec::new();
        };
        self.related(|l| (l.input.operator == me).then_some(l.output.operator))
    }

    /// The operators that read from the named one, without repeats, in dependency order; empty
    /// for an unknown name.
    pub fn downstream(&self, name: &str) -> Vec<&Operator> {
        let Some(me) = self.position(name) else {
            return Vec::new();
        };
        self.related(|l| (l.output.operator == me).then_some(l.input.operator))
    }

    fn related(&self, pick: impl Fn(&Link) -> Option<usize>) -> Vec<&Operator> {
        let mut positions: Vec<usize> = self.links.iter().filter_map(pick).collect();
        positions.sort_unstable();
        positions.dedup();
        positions.into_iter().map(|i| &self.operators[i]).collect()
    }

    /// The inputs that read an operator's output, as (operator, input) pairs in dependency
    /// order; empty when nothing reads it or the names are unknown.
    pub fn readers(&self, operator: &str, output: &str) -> Vec<(&Operator, &Entry)> {
        let Some(op) = self.position(operator) else {
            return Vec::new();
        };
        let Some(out) = self.operators[op]
            .outputs
            .iter()
            .position(|e| e.name.eq_ignore_ascii_case(output))
        else {
            return Vec::new();
        };
        let wanted = EntryRef {
            operator: op,
            entry: out,
        };
        self.links
            .iter()
            .filter(|l| l.output == wanted)
            .map(|l| self.resolve(l.input, Direction::Input))
            .collect()
    }

    /// The output an operator's input reads, as (operator, output); `None` for a payload input
    /// or unknown names.
    pub fn source(&self, operator: &str, input: &str) -> Option<(&Operator, &Entry)> {
        let op = self.position(operator)?;
        let inp = self.operators[op]
            .inputs
            .iter()
            .position(|e| e.name.eq_ignore_ascii_case(input))?;
        let at = EntryRef {
            operator: op,
            entry: inp,
        };
        self.links
            .iter()
            .find(|l| l.input == at)
            .map(|l| self.resolve(l.output, Direction::Output))
    }

    /// The job's payload inputs (inputs without `from`, all streams), as (operator, input)
    /// pairs in dependency order.
    pub fn payload_inputs(&self) -> Vec<(&Operator, &Entry)> {
        self.operators
            .iter()
            .flat_map(|op| {
                op.inputs
                    .iter()
                    .filter(|e| e.from.is_none())
                    .map(move |e| (op, e))
            })
            .collect()
    }
}
