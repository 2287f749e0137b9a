//! What can be wrong with a pipeline definition, and where.

use std::fmt;
use std::path::PathBuf;

/// The text format of a pipeline definition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// YAML (Clara's own format); also the default for unknown extensions.
    Yaml,
    /// JSON, chosen for files whose name ends in `.json`.
    Json,
}

impl Format {
    /// The format a file's extension selects: `.json` (any case) is JSON, anything else YAML.
    pub fn from_path(path: &std::path::Path) -> Self {
        match path.extension() {
            Some(ext) if ext.eq_ignore_ascii_case("json") => Format::Json,
            _ => Format::Yaml,
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Yaml => "YAML",
            Format::Json => "JSON",
        })
    }
}

/// Why a pipeline definition could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum DefinitionError {
    /// The file could not be read.
    #[error("{}: cannot read the pipeline definition: {cause}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the system said (in the message, so not the error's `source()`).
        cause: std::io::Error,
    },
    /// The text is not well-formed YAML or JSON, or does not have the definition's structure
    /// (an unknown field, a list where a string belongs). Only the first such error is known,
    /// because the parser stops there.
    #[error("{origin}: {message}")]
    Syntax {
        /// The file name or label the text came from.
        origin: String,
        /// YAML or JSON.
        format: Format,
        /// The parser's message, which ends with the line and column when it knows them.
        message: String,
        /// 1-based line of the error, when the parser knows it.
        line: Option<usize>,
        /// 1-based column of the error, when the parser knows it.
        column: Option<usize>,
    },
    /// The definition goes past a bound on what reading it may cost: its size
    /// ([`MAX_DEFINITION_BYTES`](crate::MAX_DEFINITION_BYTES)), the nesting of its
    /// collections ([`MAX_DEPTH`](crate::MAX_DEPTH)), or its size with YAML aliases
    /// expanded ([`MAX_NODES`](crate::MAX_NODES),
    /// [`MAX_SCALAR_BYTES`](crate::MAX_SCALAR_BYTES)). Nothing past the bound was read.
    #[error("{origin}{}: {what}", position(*line, *column))]
    Limit {
        /// The file name or label the text came from.
        origin: String,
        /// Which bound, and by how much.
        what: String,
        /// 1-based line where the bound was passed, when known.
        line: Option<usize>,
        /// 1-based column where the bound was passed, when known.
        column: Option<usize>,
    },
    /// The definition is well-formed but breaks one or more rules. Every problem found is
    /// listed, in definition order; the message has one line per problem.
    #[error("{}", DisplayProblems(problems))]
    Invalid {
        /// The file name or label the text came from.
        origin: String,
        /// Every problem found; never empty.
        problems: Vec<Problem>,
    },
    /// A variable set from outside the definition ([`crate::Override`]) applies to no
    /// operator.
    #[error("{origin}: cannot set {setting:?}: {reason}")]
    Override {
        /// The file name or label the text came from.
        origin: String,
        /// The setting, `NAME=VALUE` or `OPERATOR.NAME=VALUE`.
        setting: String,
        /// Why it applies to nothing.
        reason: String,
    },
}

impl DefinitionError {
    /// The validation problems, one per broken rule; empty for read and syntax errors.
    pub fn problems(&self) -> &[Problem] {
        match self {
            DefinitionError::Invalid { problems, .. } => problems,
            _ => &[],
        }
    }
}

/// `:LINE:COLUMN`, or nothing when unknown.
fn position(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(line), Some(column)) => format!(":{line}:{column}"),
        (Some(line), None) => format!(":{line}"),
        _ => String::new(),
    }
}

struct DisplayProblems<'a>(&'a [Problem]);

impl fmt::Display for DisplayProblems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

/// Whether an entry is one of an operator's inputs or one of its outputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// An item of the operator's `input` list.
    Input,
    /// An item of the operator's `output` list.
    Output,
}

impl Direction {
    /// `"input"` or `"output"`: the word used in messages, which is also the key of the
    /// operator's list in the definition.
    pub fn word(self) -> &'static str {
        match self {
            Direction::Input => "input",
            Direction::Output => "output",
        }
    }
}

/// Where in a definition a problem is: the file, and when it concerns one, the operator and
/// the entry. Unnamed things are shown by their 0-based position (`operators[2]`, `input[0]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// The file name or label the text came from.
    pub origin: String,
    /// The operator, when the problem concerns one.
    pub operator: Option<OperatorLocation>,
    /// The entry, when the problem concerns one.
    pub entry: Option<EntryLocation>,
}

/// An operator, by position and name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperatorLocation {
    /// 0-based position in the definition's `operators` list.
    pub index: usize,
    /// Its name, if it has one.
    pub name: Option<String>,
}

/// An input or output entry, by direction, position and name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryLocation {
    /// Input or output.
    pub direction: Direction,
    /// 0-based position in the operator's `input` or `output` list.
    pub index: usize,
    /// Its name, if it has one.
    pub name: Option<String>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.origin)?;
        if let Some(op) = &self.operator {
            match &op.name {
                Some(name) => write!(f, ": operator {name:?}")?,
                None => write!(f, ": operators[{}]", op.index)?,
            }
        }
        if let Some(entry) = &self.entry {
            write!(f, ", {entry}")?;
        }
        Ok(())
    }
}

/// `input "volume"`, or `input[0]` when unnamed.
impl fmt::Display for EntryLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let word = self.direction.word();
        match &self.name {
            Some(name) => write!(f, "{word} {name:?}"),
            None => write!(f, "{word}[{}]", self.index),
        }
    }
}

/// One broken rule, with where it is broken.
///
/// Its message reads `pipeline.yaml: operator "segmenter", input "volume": from names operator
/// "reader", which has no output "volume"`: the location, then the field and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{location}: {kind}")]
pub struct Problem {
    /// Where.
    pub location: Location,
    /// What.
    pub kind: ProblemKind,
}

impl Problem {
    /// The definition field the problem is about (`"shape"`, `"from"`, `"name"`...).
    pub fn field(&self) -> &'static str {
        self.kind.field()
    }
}

/// What rule a definition breaks. Each message starts with the field it is about.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProblemKind {
    /// A required field is absent.
    #[error("{field} is required: {reason}")]
    Missing {
        /// The field.
        field: &'static str,
        /// Why it is needed here.
        reason: &'static str,
    },
    /// A field is present where it must not be.
    #[error("{field} must not be given: {reason}")]
    Forbidden {
        /// The field.
        field: &'static str,
        /// Why it is not allowed here.
        reason: &'static str,
    },
    /// A name breaks the naming rule (1 to 255 characters of `A-Z a-z 0-9 - _`).
    #[error("name {name:?} is invalid: {reason}")]
    InvalidName {
        /// The name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Two operators have the same name, ignoring case.
    #[error("name {name:?} is already the name of operator {first:?} (names are case-insensitive)")]
    DuplicateOperator {
        /// This operator's name.
        name: String,
        /// The earlier operator's name, as written there.
        first: String,
    },
    /// Two inputs, or two outputs, of one operator have the same name, ignoring case.
    #[error("name {name:?} is already the name of {direction} {first:?} of this operator (names are case-insensitive)", direction = direction.word())]
    DuplicateEntry {
        /// Input or output.
        direction: Direction,
        /// This entry's name.
        name: String,
        /// The earlier entry's name, as written there.
        first: String,
    },
    /// More than one input, or more than one output, of an operator has no name (Clara
    /// allows one unnamed entry per input set and per output set).
    #[error("name is required: only one {direction} of an operator may be unnamed", direction = direction.word())]
    SecondUnnamed {
        /// Input or output.
        direction: Direction,
    },
    /// A shared-memory entry without a name: operators open FastIO entries by name.
    #[error(
        "name is required for type {type_name}: operators open shared-memory entries by name; only a stream may be unnamed"
    )]
    UnnamedSharedMemory {
        /// The entry's type.
        type_name: String,
    },
    /// The definition has no operators.
    #[error("operators is required: a pipeline needs at least one operator")]
    NoOperators,
    /// `api-version` is not a version number.
    #[error("api-version {text:?} is not a version such as 0.5.0")]
    BadApiVersion {
        /// The text given.
        text: String,
    },
    /// A typed entry in a pipeline whose `api-version` predates typed pipelines.
    #[error(
        "type {type_name} needs api-version 0.5.0 or later (typed pipelines), but the pipeline declares {version}"
    )]
    TypedNeedsNewerVersion {
        /// The entry's type.
        type_name: String,
        /// The declared version.
        version: String,
    },
    /// `orchestrator` names no orchestrator we know.
    #[error("orchestrator {text:?} is unknown; use Clara (or leave it out)")]
    UnknownOrchestrator {
        /// The text given.
        text: String,
    },
    /// `orchestrator: Argo` with typed (shared-memory) entries, which only Clara supports.
    #[error(
        "orchestrator Argo cannot run typed pipelines (operator {operator:?} has {direction} {entry:?} of type {type_name}); shared-memory entries need orchestrator Clara", direction = direction.word()
    )]
    ArgoWithTypedEntries {
        /// The first operator with a typed entry.
        operator: String,
        /// Whether that entry is an input or an output.
        direction: Direction,
        /// The entry's name.
        entry: String,
        /// Its type.
        type_name: String,
    },
    /// `timeout` is zero.
    #[error("timeout must be at least 1 second")]
    ZeroTimeout,
    /// `timeout` is beyond [`MAX_TIMEOUT`](crate::MAX_TIMEOUT).
    #[error("timeout of {seconds} seconds is beyond the limit of {} seconds (7 days)", crate::MAX_TIMEOUT.as_secs())]
    TimeoutTooLong {
        /// The timeout as written.
        seconds: u64,
    },
    /// `command` is an empty list, or its program is an empty string.
    #[error("command must start with a program: {reason}")]
    EmptyCommand {
        /// What is wrong.
        reason: &'static str,
    },
    /// A `${...}` in a command or a variable's value cannot be replaced.
    #[error("{field} {text:?}: {reason}")]
    BadSubstitution {
        /// `command` or `variables`.
        field: &'static str,
        /// The argument, or `NAME=value`, as written.
        text: String,
        /// What is wrong.
        reason: String,
    },
    /// An operator with a container image and no command, in a run that starts processes.
    #[error(
        "command is required to run locally: the operator names container image {image} but neither command nor container.command, and fastio starts operators as local processes, not containers"
    )]
    NoLocalCommand {
        /// The image reference, `image:tag`.
        image: String,
    },
    /// `uses-driver: false` on an operator with shared-memory entries.
    #[error(
        "uses-driver must not be false here: {direction} {entry:?} is of type {type_name}, which lives in shared memory, and only the pipeline driver reaches it", direction = direction.word()
    )]
    PlainWithSharedMemory {
        /// Whether the entry is an input or an output.
        direction: Direction,
        /// The entry's name.
        entry: String,
        /// Its type.
        type_name: String,
    },
    /// A value of `requests` is not a whole number.
    #[error("requests.{field} {text:?} is invalid: {reason}")]
    BadRequests {
        /// `cpu`, `gpu` or `memory`.
        field: &'static str,
        /// The text given.
        text: String,
        /// What is expected.
        reason: &'static str,
    },
    /// An item of `pull-secrets`, `models` or `parameters` is not usable.
    #[error("{field} entry {text:?} is invalid: {reason}")]
    BadItem {
        /// `pull-secrets`, `models` or `parameters`.
        field: &'static str,
        /// The item as written.
        text: String,
        /// What is wrong.
        reason: String,
    },
    /// An environment variable in `variables` cannot be set.
    #[error("variables entry {key:?} is invalid: {reason}")]
    BadVariable {
        /// The variable's name.
        key: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// `type` names no entry type.
    #[error(
        "type {text:?} is unknown; use stream, array, string, or a primitive (uint8..uint64, int8..int64, float16, float32, float64, or u8..f64)"
    )]
    UnknownType {
        /// The text given.
        text: String,
    },
    /// `element-type` of an array names no element type.
    #[error("element-type {text:?} is not a primitive type: {reason}")]
    BadElementType {
        /// The text given.
        text: String,
        /// What the parser said.
        reason: String,
    },
    /// `device` names no memory kind.
    #[error("device {text:?} is not a place memory can live: {reason}")]
    BadDevice {
        /// The text given.
        text: String,
        /// What the parser said.
        reason: String,
    },
    /// `shape` breaks the declared-shape rules.
    #[error("shape {shape:?} is invalid: {reason}")]
    BadShape {
        /// The shape given.
        shape: Vec<i64>,
        /// What is wrong.
        reason: String,
    },
    /// A stream's `path` is not fully qualified.
    #[error("path {path:?} must be fully qualified (start with /)")]
    RelativePath {
        /// The path given.
        path: String,
    },
    /// Two stream entries of one operator share a `path`.
    #[error("path {path:?} is already the path of {first} of this operator")]
    DuplicatePath {
        /// The path.
        path: String,
        /// The entry that has it first.
        first: EntryLocation,
    },
    /// An input's `from` names its own operator.
    #[error("from names the operator itself; an operator cannot read its own output")]
    SelfReference,
    /// An input's `from` names no operator of the pipeline.
    #[error("from names operator {from:?}, which is not in the pipeline")]
    UnknownOperator {
        /// The name given.
        from: String,
    },
    /// An input's `from` names an operator without an output of the input's name.
    #[error("from names operator {from:?}, which has no output {name:?}")]
    NoSuchOutput {
        /// The upstream operator's name.
        from: String,
        /// The input's name.
        name: String,
    },
    /// An unnamed input's `from` names an operator without an unnamed output.
    #[error(
        "from names operator {from:?}, which has no unnamed output (an unnamed input reads the unnamed output of its from)"
    )]
    NoUnnamedOutput {
        /// The upstream operator's name.
        from: String,
    },
    /// An input's declaration differs from the upstream output it reads.
    #[error(
        "{field} differs from output {output:?} of operator {from:?}: the input declares {input}, the output {upstream}"
    )]
    Mismatch {
        /// The first field that differs: `type`, `element-type` or `shape`.
        field: &'static str,
        /// The upstream operator.
        from: String,
        /// The upstream output's name.
        output: String,
        /// The input's declaration, e.g. `float32[1,-1,512,512]`.
        input: String,
        /// The output's declaration.
        upstream: String,
    },
    /// A shared-memory input without `from`: nothing would produce it.
    #[error(
        "from is required for type {type_name}: only stream inputs can come from the job's payload, and nothing else produces a {type_name} input"
    )]
    NoProducer {
        /// The input's type.
        type_name: String,
    },
    /// Operators that depend on each other in a cycle.
    #[error("from makes a dependency cycle: {}", cycle_text(operators))]
    Cycle {
        /// The operators of the cycle, in dependency order, the first repeated at the end.
        operators: Vec<String>,
    },
}

fn cycle_text(operators: &[String]) -> String {
    operators
        .iter()
        .map(|o| format!("{o:?}"))
        .collect::<Vec<_>>()
        .join(" -> ")
}

impl ProblemKind {
    /// The definition field the problem is about.
    pub fn field(&self) -> &'static str {
        match self {
            ProblemKind::Missing { field, .. }
            | ProblemKind::Forbidden { field, .. }
            | ProblemKind::Mismatch { field, .. } => field,
            ProblemKind::InvalidName { .. }
            | ProblemKind::DuplicateOperator { .. }
            | ProblemKind::DuplicateEntry { .. }
            | ProblemKind::SecondUnnamed { .. }
            | ProblemKind::UnnamedSharedMemory { .. } => "name",
            ProblemKind::NoOperators => "operators",
            ProblemKind::BadApiVersion { .. } => "api-version",
            ProblemKind::TypedNeedsNewerVersion { .. } | ProblemKind::UnknownType { .. } => "type",
            ProblemKind::BadDevice { .. } => "device",
            ProblemKind::UnknownOrchestrator { .. } | ProblemKind::ArgoWithTypedEntries { .. } => {
                "orchestrator"
            }
            ProblemKind::ZeroTimeout | ProblemKind::TimeoutTooLong { .. } => "timeout",
            ProblemKind::EmptyCommand { .. } | ProblemKind::NoLocalCommand { .. } => "command",
            ProblemKind::PlainWithSharedMemory { .. } => "uses-driver",
            ProblemKind::BadRequests { .. } => "requests",
            ProblemKind::BadItem { field, .. } => field,
            ProblemKind::BadVariable { .. } => "variables",
            ProblemKind::BadSubstitution { field, .. } => field,
            ProblemKind::BadElementType { .. } => "element-type",
            ProblemKind::BadShape { .. } => "shape",
            ProblemKind::RelativePath { .. } | ProblemKind::DuplicatePath { .. } => "path",
            ProblemKind::SelfReference
            | ProblemKind::UnknownOperator { .. }
            | ProblemKind::NoSuchOutput { .. }
            | ProblemKind::NoUnnamedOutput { .. }
            | ProblemKind::NoProducer { .. }
            | ProblemKind::Cycle { .. } => "from",
        }
    }
}
