//! From the definition as written to a [`Pipeline`], collecting every broken rule.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use fastio_context::MemoryKind;
use fastio_meta::{DynamicShape, ElementType, MetaError, validate_name};

use crate::error::{
    DefinitionError, Direction, EntryLocation, Location, OperatorLocation, Problem, ProblemKind,
};
use crate::graph;
use crate::model::{
    Container, DEFAULT_TIMEOUT, Entry, EntryKind, EntryRef, Link, MAX_TIMEOUT, Operator, Pipeline,
    Requests, Unused,
};
use crate::raw::{RawEntry, RawOperator, RawPipeline, RawRequests, Scalar};

/// The first `api-version` of typed pipelines (array, string and primitive entries).
const TYPED_SINCE: (u32, u32, u32) = (0, 5, 0);

/// Collects problems, each with its location.
struct Checker<'a> {
    origin: &'a str,
    problems: Vec<Problem>,
    unused: Vec<Unused>,
}

impl Checker<'_> {
    fn location(
        &self,
        operator: Option<&OperatorLocation>,
        entry: Option<&EntryLocation>,
    ) -> Location {
        Location {
            origin: self.origin.to_owned(),
            operator: operator.cloned(),
            entry: entry.cloned(),
        }
    }

    /// Notes a field that is accepted but has no effect.
    fn unused(
        &mut self,
        operator: Option<&OperatorLocation>,
        field: &'static str,
        reason: &'static str,
    ) {
        let location = self.location(operator, None);
        self.unused.push(Unused {
            location,
            field,
            reason,
        });
    }

    fn report(
        &mut self,
        operator: Option<&OperatorLocation>,
        entry: Option<&EntryLocation>,
        kind: ProblemKind,
    ) {
        let location = self.location(operator, entry);
        self.problems.push(Problem { location, kind });
    }

    /// Checks a name against Clara's rule; reports and returns false when it breaks it.
    fn name(
        &mut self,
        name: &str,
        operator: Option<&OperatorLocation>,
        entry: Option<&EntryLocation>,
    ) -> bool {
        let Err(error) = validate_name(name) else {
            return true;
        };
        let reason = match error {
            MetaError::InvalidName { reason, .. } => reason,
            other => other.to_string(),
        };
        let kind = ProblemKind::InvalidName {
            name: name.to_owned(),
            reason,
        };
        self.report(operator, entry, kind);
        false
    }
}

/// An entry as far as it could be checked alone.
struct PartialEntry {
    location: EntryLocation,
    name: Option<String>,
    from: Option<String>,
    kind: Option<EntryKind>,
    memory: MemoryKind,
}

/// An operator as far as it could be checked alone.
struct PartialOperator {
    location: OperatorLocation,
    description: Option<String>,
    command: Option<Vec<String>>,
    container: Option<Container>,
    requests: Requests,
    models: Vec<String>,
    parameters: BTreeMap<String, String>,
    uses_driver: Option<bool>,
    variables: BTreeMap<String, String>,
    inputs: Vec<PartialEntry>,
    outputs: Vec<PartialEntry>,
}

/// Checks every rule and builds the pipeline, or lists every problem found.
pub(crate) fn validate(raw: RawPipeline, origin: &str) -> Result<Pipeline, DefinitionError> {
    let mut c = Checker {
        origin,
        problems: Vec::new(),
        unused: Vec::new(),
    };

    let api_version = match &raw.api_version {
        None => {
            c.report(
                None,
                None,
                ProblemKind::Missing {
                    field: "api-version",
                    reason: "it says which version of the definition format the file uses, e.g. 0.5.0",
                },
            );
            None
        }
        Some(text) => {
            let parsed = parse_version(&text.0);
            if parsed.is_none() {
                c.report(
                    None,
                    None,
                    ProblemKind::BadApiVersion {
                        text: text.0.clone(),
                    },
                );
            }
            parsed
        }
    };
    let api_text = raw.api_version.map(|s| s.0).unwrap_or_default();

    match &raw.name {
        None => c.report(
            None,
            None,
            ProblemKind::Missing {
                field: "name",
                reason: "every pipeline has a name",
            },
        ),
        Some(name) => {
            c.name(name, None, None);
        }
    }
    let name = raw.name.unwrap_or_default();

    let mut argo = false;
    if let Some(text) = &raw.orchestrator {
        if text.eq_ignore_ascii_case("argo") {
            argo = true;
        } else if !text.eq_ignore_ascii_case("clara") {
            c.report(
                None,
                None,
                ProblemKind::UnknownOrchestrator { text: text.clone() },
            );
        }
    }

    let mut pull_secrets = Vec::new();
    for secret in raw.pull_secrets.unwrap_or_default() {
        match secret_problem(&secret) {
            Some(reason) => c.report(
                None,
                None,
                ProblemKind::BadItem {
                    field: "pull-secrets",
                    text: secret,
                    reason: reason.to_owned(),
                },
            ),
            None => pull_secrets.push(secret),
        }
    }
    let parameters = check_parameters(&mut c, None, raw.parameters);

    let timeout = match raw.timeout {
        Some(0) => {
            c.report(None, None, ProblemKind::ZeroTimeout);
            DEFAULT_TIMEOUT
        }
        Some(seconds) if Duration::from_secs(seconds) > MAX_TIMEOUT => {
            c.report(None, None, ProblemKind::TimeoutTooLong { seconds });
            DEFAULT_TIMEOUT
        }
        Some(seconds) => Duration::from_secs(seconds),
        None => DEFAULT_TIMEOUT,
    };

    let raw_operators = raw.operators.unwrap_or_default();
    if raw_operators.is_empty() {
        c.report(None, None, ProblemKind::NoOperators);
    }

    // The declared version when it predates typed entries.
    let too_old_for_typed = api_version
        .is_some_and(|v| v < TYPED_SINCE)
        .then_some(api_text.as_str());
    let mut seen_operators: HashMap<String, String> = HashMap::new();
    let mut operators: Vec<PartialOperator> = raw_operators
        .into_iter()
        .enumerate()
        .map(|(index, raw_op)| {
            check_operator(
                &mut c,
                index,
                raw_op,
                &mut seen_operators,
                too_old_for_typed,
            )
        })
        .collect();

    let dir = crate::substitute::definition_dir(origin);
    for op in &mut operators {
        let mut problems = crate::substitute::expand_operator(
            &dir,
            op.command.as_deref_mut().unwrap_or_default(),
            &mut op.variables,
        );
        // The in-image command reads the same variables (Clara passes them to the
        // container); only its own problems are new.
        if let Some(argv) = op.container.as_mut().and_then(|c| c.command.as_deref_mut()) {
            problems.extend(
                crate::substitute::expand_operator(&dir, argv, &mut op.variables.clone())
                    .into_iter()
                    .filter(|p| p.field == "command"),
            );
        }
        for problem in problems {
            let kind = ProblemKind::BadSubstitution {
                field: problem.field,
                text: problem.text,
                reason: problem.reason,
            };
            c.report(Some(&op.location.clone()), None, kind);
        }
    }

    if argo {
        // Reported once, naming the first typed entry, rather than once per entry.
        let first_typed = operators.iter().find_map(|op| {
            let operator = op.location.name.as_ref()?;
            op.inputs.iter().chain(&op.outputs).find_map(|e| {
                let kind = e.kind.as_ref().filter(|k| k.is_shared_memory())?;
                Some(ProblemKind::ArgoWithTypedEntries {
                    operator: operator.clone(),
                    direction: e.location.direction,
                    entry: e.name.clone()?,
                    type_name: kind.type_name().to_owned(),
                })
            })
        });
        if let Some(kind) = first_typed {
            c.report(None, None, kind);
        }
    }

    let links = check_links(&mut c, &operators);

    let edges: Vec<(usize, usize)> = links
        .iter()
        .map(|l| (l.output.operator, l.input.operator))
        .collect();
    let order = match graph::topological_order(operators.len(), &edges) {
        Ok(order) => order,
        Err(cycles) => {
            for cycle in cycles {
                let names = cycle
                    .iter()
                    .map(|&i| operators[i].location.name.clone().unwrap_or_default())
                    .collect();
                let location = operators[cycle[0]].location.clone();
                c.report(
                    Some(&location),
                    None,
                    ProblemKind::Cycle { operators: names },
                );
            }
            Vec::new()
        }
    };

    if !c.problems.is_empty() {
        return Err(DefinitionError::Invalid {
            origin: origin.to_owned(),
            problems: c.problems,
        });
    }
    let header = Header {
        api_version: api_text,
        name,
        description: raw.description,
        orchestrator: raw.orchestrator,
        pull_secrets,
        parameters,
        timeout,
    };
    Ok(assemble(origin, header, operators, links, &order, c.unused))
}

/// Why a pull secret's name is unusable: Kubernetes secret names are DNS subdomains
/// (lower-case letters, digits, `-` and `.`, at most 253 characters).
fn secret_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("the name is empty")
    } else if name.len() > 253 {
        Some("a secret name has at most 253 characters")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        Some("a secret name has only lower-case letters, digits, '-' and '.'")
    } else {
        None
    }
}

/// Checks Clara's template `parameters` (names follow the naming rule; values are text) and
/// notes that fastio does not substitute them.
fn check_parameters(
    c: &mut Checker<'_>,
    operator: Option<&OperatorLocation>,
    raw: Option<BTreeMap<String, Scalar>>,
) -> BTreeMap<String, String> {
    let raw = raw.unwrap_or_default();
    if !raw.is_empty() {
        c.unused(
            operator,
            "parameters",
            "fastio does not substitute Clara's ${{ name }} template placeholders; the definition runs as written",
        );
    }
    let mut parameters = BTreeMap::new();
    for (key, value) in raw {
        match validate_name(&key) {
            Ok(()) => {
                parameters.insert(key, value.0);
            }
            Err(e) => c.report(
                operator,
                None,
                ProblemKind::BadItem {
                    field: "parameters",
                    text: key,
                    reason: e.to_string(),
                },
            ),
        }
    }
    parameters
}

/// Checks Clara's `requests`: whole numbers, at least 0 (cpu, gpu) or 1 (memory, megabytes).
fn check_requests(
    c: &mut Checker<'_>,
    at: Option<&OperatorLocation>,
    raw: Option<RawRequests>,
) -> Requests {
    let Some(raw) = raw else {
        return Requests::default();
    };
    let number = |c: &mut Checker<'_>, field: &'static str, value: Option<Scalar>, min: u64| {
        let text = value?.0;
        match text.trim().parse::<u64>() {
            Ok(n) if n >= min => Some(n),
            _ => {
                let reason = if min == 0 {
                    "give a whole number (0 or more)"
                } else {
                    "give a whole number of megabytes (1 or more)"
                };
                c.report(
                    at,
                    None,
                    ProblemKind::BadRequests {
                        field,
                        text,
                        reason,
                    },
                );
                None
            }
        }
    };
    let small = |n: u64| u32::try_from(n).ok();
    let cpu = number(c, "cpu", raw.cpu, 0);
    let gpu = number(c, "gpu", raw.gpu, 0);
    let memory_mb = number(c, "memory", raw.memory, 1);
    let too_many = |c: &mut Checker<'_>, field, n: Option<u64>| match n {
        Some(v) if small(v).is_none() => {
            c.report(
                at,
                None,
                ProblemKind::BadRequests {
                    field,
                    text: v.to_string(),
                    reason: "more than any machine has",
                },
            );
            None
        }
        other => other.and_then(small),
    };
    Requests {
        cpu: too_many(c, "cpu", cpu),
        gpu: too_many(c, "gpu", gpu),
        memory_mb,
    }
}

/// Checks one command list (`command` or `container.command`).
fn check_command(c: &mut Checker<'_>, at: Option<&OperatorLocation>, command: &[String]) {
    match command.first() {
        None => c.report(
            at,
            None,
            ProblemKind::EmptyCommand {
                reason: "the list is empty",
            },
        ),
        Some(program) if program.is_empty() => c.report(
            at,
            None,
            ProblemKind::EmptyCommand {
                reason: "the program is an empty string",
            },
        ),
        Some(_) => {}
    }
    if command.iter().any(|a| a.contains('\0')) {
        c.report(
            at,
            None,
            ProblemKind::EmptyCommand {
                reason: "an argument contains a NUL byte",
            },
        );
    }
}

/// The pipeline-level fields, checked.
struct Header {
    api_version: String,
    name: String,
    description: Option<String>,
    orchestrator: Option<String>,
    pull_secrets: Vec<String>,
    parameters: BTreeMap<String, String>,
    timeout: Duration,
}

/// `major.minor` or `major.minor.patch`, each a number.
fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let parts = text
        .trim()
        .split('.')
        .map(|p| p.parse::<u32>().ok())
        .collect::<Option<Vec<_>>>()?;
    match parts[..] {
        [major, minor] => Some((major, minor, 0)),
        [major, minor, patch] => Some((major, minor, patch)),
        _ => None,
    }
}

/// Checks what can be checked of one operator alone. `too_old_for_typed` is the pipeline's
/// version when it predates typed entries.
fn check_operator(
    c: &mut Checker<'_>,
    index: usize,
    raw: RawOperator,
    seen: &mut HashMap<String, String>,
    too_old_for_typed: Option<&str>,
) -> PartialOperator {
    let location = OperatorLocation {
        index,
        name: raw.name.clone(),
    };
    let at = Some(&location);
    match &raw.name {
        // Without a name, the location shows the operator's position.
        None => c.report(
            at,
            None,
            ProblemKind::Missing {
                field: "name",
                reason: "every operator has a name",
            },
        ),
        Some(name) => {
            if c.name(name, at, None) {
                match seen.get(&name.to_ascii_lowercase()) {
                    Some(first) => c.report(
                        at,
                        None,
                        ProblemKind::DuplicateOperator {
                            name: name.clone(),
                            first: first.clone(),
                        },
                    ),
                    None => {
                        seen.insert(name.to_ascii_lowercase(), name.clone());
                    }
                }
            }
        }
    }

    // Locally the process is `command`; without it, `container.command`. The container block
    // is kept whole for rendering the operator as a container elsewhere.
    let container = raw.container.and_then(|container| {
        if let Some(command) = &container.command {
            check_command(c, at, command);
        }
        let Some(image) = container.image else {
            c.report(
                at,
                None,
                ProblemKind::Missing {
                    field: "container.image",
                    reason: "a container block names the image an orchestrator runs",
                },
            );
            return None;
        };
        if image.trim().is_empty() {
            c.report(
                at,
                None,
                ProblemKind::Missing {
                    field: "container.image",
                    reason: "the image name is empty",
                },
            );
            return None;
        }
        Some(Container {
            image,
            tag: container
                .tag
                .filter(|t| !t.is_empty())
                .unwrap_or_else(|| "latest".to_owned()),
            command: container.command,
        })
    });
    if let Some(command) = &raw.command {
        check_command(c, at, command);
    }
    let command = raw
        .command
        .or_else(|| container.as_ref().and_then(|k| k.command.clone()));
    if command.is_none() && container.is_none() {
        c.report(
            at,
            None,
            ProblemKind::Missing {
                field: "command",
                reason: "give the program and arguments that start the operator, as a list of strings (or a container block with an image and a command)",
            },
        );
    }

    let requests = check_requests(c, at, raw.requests);
    let mut models = Vec::new();
    if let Some(list) = raw.models {
        c.unused(
            at,
            "models",
            "fastio loads no inference models (Clara hands them to a Triton Inference Server); the operator must load its own",
        );
        for (i, model) in list.into_iter().enumerate() {
            match model.name {
                Some(name) if validate_name(&name).is_ok() => models.push(name),
                Some(name) => {
                    let reason = validate_name(&name)
                        .err()
                        .map(|e| e.to_string())
                        .unwrap_or_default();
                    c.report(
                        at,
                        None,
                        ProblemKind::BadItem {
                            field: "models",
                            text: name,
                            reason,
                        },
                    );
                }
                None => c.report(
                    at,
                    None,
                    ProblemKind::BadItem {
                        field: "models",
                        text: format!("models[{i}]"),
                        reason: "a model needs a name".to_owned(),
                    },
                ),
            }
        }
    }
    let parameters = check_parameters(c, at, raw.parameters);
    if raw.services.is_some() {
        c.unused(
            at,
            "services",
            "Clara deprecated pipeline services in 0.7.1, and fastio starts none",
        );
    }

    let mut variables = BTreeMap::new();
    for (key, value) in raw.variables {
        let reason = if key.is_empty() {
            Some("the name is empty")
        } else if key.contains('=') {
            Some("the name contains '='")
        } else if key.contains('\0') || value.0.contains('\0') {
            Some("it contains a NUL byte")
        } else {
            None
        };
        match reason {
            Some(reason) => c.report(at, None, ProblemKind::BadVariable { key, reason }),
            None => {
                variables.insert(key, value.0);
            }
        }
    }

    let own_name = raw.name.as_deref();
    // Stream paths of this operator, inputs and outputs together, with the entry that has it.
    let mut paths: HashMap<PathBuf, EntryLocation> = HashMap::new();
    let mut entries = |c: &mut Checker<'_>, direction: Direction, list: Vec<RawEntry>| {
        let mut names: HashMap<String, String> = HashMap::new();
        let mut unnamed = 0;
        list.into_iter()
            .enumerate()
            .map(|(index, raw)| {
                let entry = check_entry(
                    c,
                    &location,
                    direction,
                    index,
                    raw,
                    &mut names,
                    &mut unnamed,
                    too_old_for_typed,
                    own_name,
                );
                if let Some(EntryKind::Stream { path, .. }) = &entry.kind {
                    match paths.get(path) {
                        Some(first) => c.report(
                            Some(&location),
                            Some(&entry.location),
                            ProblemKind::DuplicatePath {
                                path: path.display().to_string(),
                                first: first.clone(),
                            },
                        ),
                        None => {
                            paths.insert(path.clone(), entry.location.clone());
                        }
                    }
                }
                entry
            })
            .collect::<Vec<_>>()
    };
    let inputs = entries(c, Direction::Input, raw.input);
    let outputs = entries(c, Direction::Output, raw.output);

    if raw.uses_driver == Some(false) {
        // Reported once, naming the first shared-memory entry.
        let shared = inputs.iter().chain(&outputs).find_map(|e| {
            let kind = e.kind.as_ref().filter(|k| k.is_shared_memory())?;
            Some(ProblemKind::PlainWithSharedMemory {
                direction: e.location.direction,
                entry: e.name.clone().unwrap_or_default(),
                type_name: kind.type_name().to_owned(),
            })
        });
        if let Some(kind) = shared {
            c.report(Some(&location), None, kind);
        }
    }

    PartialOperator {
        description: raw.description,
        location,
        command,
        container,
        requests,
        models,
        parameters,
        uses_driver: raw.uses_driver,
        variables,
        inputs,
        outputs,
    }
}

/// Checks one entry alone: its name, its fields for its type, and its `from` where that needs
/// no other operator.
#[allow(clippy::too_many_arguments)]
fn check_entry(
    c: &mut Checker<'_>,
    operator: &OperatorLocation,
    direction: Direction,
    index: usize,
    raw: RawEntry,
    names: &mut HashMap<String, String>,
    unnamed: &mut usize,
    too_old_for_typed: Option<&str>,
    own_operator: Option<&str>,
) -> PartialEntry {
    let location = EntryLocation {
        direction,
        index,
        name: raw.name.clone(),
    };
    let op = Some(operator);
    let at = Some(&location);

    match (&raw.name, direction) {
        (Some(name), _) => {
            if c.name(name, op, at) {
                match names.get(&name.to_ascii_lowercase()) {
                    Some(first) => c.report(
                        op,
                        at,
                        ProblemKind::DuplicateEntry {
                            direction,
                            name: name.clone(),
                            first: first.clone(),
                        },
                    ),
                    None => {
                        names.insert(name.to_ascii_lowercase(), name.clone());
                    }
                }
            }
        }
        // Clara: at most one unnamed entry per input set and per output set. An unnamed
        // input with `from` reads the upstream operator's unnamed output; one without is
        // the payload.
        (None, direction) => {
            *unnamed += 1;
            if *unnamed > 1 {
                c.report(op, at, ProblemKind::SecondUnnamed { direction });
            }
        }
    }

    let kind = check_kind(c, op, at, &raw);

    if let (None, Some(kind)) = (&raw.name, &kind)
        && kind.is_shared_memory()
    {
        c.report(
            op,
            at,
            ProblemKind::UnnamedSharedMemory {
                type_name: kind.type_name().to_owned(),
            },
        );
    }

    if let (Some(kind), Some(version)) = (&kind, too_old_for_typed)
        && kind.is_shared_memory()
    {
        c.report(
            op,
            at,
            ProblemKind::TypedNeedsNewerVersion {
                type_name: kind.type_name().to_owned(),
                version: version.to_owned(),
            },
        );
    }

    match (direction, &raw.from) {
        (Direction::Output, Some(_)) => c.report(
            op,
            at,
            ProblemKind::Forbidden {
                field: "from",
                reason: "only inputs read from an upstream operator",
            },
        ),
        (Direction::Input, Some(from))
            if own_operator.is_some_and(|own| own.eq_ignore_ascii_case(from)) =>
        {
            c.report(op, at, ProblemKind::SelfReference)
        }
        (Direction::Input, None) => {
            if let Some(kind) = &kind
                && kind.is_shared_memory()
            {
                c.report(
                    op,
                    at,
                    ProblemKind::NoProducer {
                        type_name: kind.type_name().to_owned(),
                    },
                );
            }
        }
        _ => {}
    }

    let memory = check_device(c, op, at, direction, kind.as_ref(), raw.device.as_deref());

    PartialEntry {
        location,
        name: raw.name,
        // An output's `from` was reported above; keep only inputs' for linking.
        from: raw.from.filter(|_| direction == Direction::Input),
        kind,
        memory,
    }
}

/// Where an entry lives (fastio extension `device: cuda:N`): only an array output may say
/// (an input is where its producer's output is). A fully known shape is allocated on the
/// device before any operator runs; a dynamic one when its producer allocates it.
fn check_device(
    c: &mut Checker<'_>,
    op: Option<&OperatorLocation>,
    at: Option<&EntryLocation>,
    direction: Direction,
    kind: Option<&EntryKind>,
    device: Option<&str>,
) -> MemoryKind {
    let Some(text) = device else {
        return MemoryKind::Host;
    };
    let memory = match text.parse::<MemoryKind>() {
        Ok(memory) => memory,
        Err(e) => {
            c.report(
                op,
                at,
                ProblemKind::BadDevice {
                    text: text.to_owned(),
                    reason: e.to_string(),
                },
            );
            return MemoryKind::Host;
        }
    };
    let forbidden = match (direction, kind) {
        (Direction::Input, _) => {
            Some("an input lives where its producer's output does: say `device` on that output")
        }
        (Direction::Output, Some(EntryKind::Array { .. })) | (Direction::Output, None) => None,
        (Direction::Output, Some(_)) => Some("only an array may live on a device"),
    };
    match forbidden {
        Some(reason) => {
            c.report(
                op,
                at,
                ProblemKind::Forbidden {
                    field: "device",
                    reason,
                },
            );
            MemoryKind::Host
        }
        None => memory,
    }
}

/// The primitive spellings accepted as a `type`: Clara's long and short names, exactly.
fn primitive_type(text: &str) -> Option<ElementType> {
    ElementType::ALL
        .into_iter()
        .find(|t| t.name() == text || t.short_name() == text)
}

/// Checks an entry's type and the fields its type requires or forbids.
fn check_kind(
    c: &mut Checker<'_>,
    op: Option<&OperatorLocation>,
    at: Option<&EntryLocation>,
    raw: &RawEntry,
) -> Option<EntryKind> {
    let type_name = raw.type_name.as_deref().unwrap_or("stream");
    let forbid = |c: &mut Checker<'_>, present: bool, field: &'static str, reason: &'static str| {
        if present {
            c.report(op, at, ProblemKind::Forbidden { field, reason });
        }
    };
    match type_name {
        "stream" => {
            forbid(
                c,
                raw.shape.is_some(),
                "shape",
                "a stream is files on disk, which have no shape",
            );
            let path = match &raw.path {
                None => {
                    c.report(
                        op,
                        at,
                        ProblemKind::Missing {
                            field: "path",
                            reason: "a stream is files on disk, at a fully qualified path",
                        },
                    );
                    None
                }
                Some(path) if !path.starts_with('/') => {
                    c.report(op, at, ProblemKind::RelativePath { path: path.clone() });
                    None
                }
                Some(path) => Some(PathBuf::from(path)),
            };
            let kind = EntryKind::Stream {
                element_type: raw.element_type.clone(),
                path: path?,
            };
            raw.shape.is_none().then_some(kind)
        }
        "array" => {
            forbid(
                c,
                raw.path.is_some(),
                "path",
                "an array lives in shared memory, not on disk",
            );
            let element_type = match &raw.element_type {
                None => {
                    c.report(
                        op,
                        at,
                        ProblemKind::Missing {
                            field: "element-type",
                            reason: "an array needs the type of its elements (uint8..float64)",
                        },
                    );
                    None
                }
                Some(text) => match ElementType::parse(text) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        c.report(
                            op,
                            at,
                            ProblemKind::BadElementType {
                                text: text.clone(),
                                reason: e.to_string(),
                            },
                        );
                        None
                    }
                },
            };
            let shape = match &raw.shape {
                None => {
                    c.report(
                        op,
                        at,
                        ProblemKind::Missing {
                            field: "shape",
                            reason: "an array needs its dimensions (-1 or 0 for one fixed at run time)",
                        },
                    );
                    None
                }
                Some(dims) => match DynamicShape::new(dims.clone()) {
                    Ok(shape) => Some(shape),
                    Err(e) => {
                        c.report(
                            op,
                            at,
                            ProblemKind::BadShape {
                                shape: dims.clone(),
                                reason: e.to_string(),
                            },
                        );
                        None
                    }
                },
            };
            let kind = EntryKind::Array {
                element_type: element_type?,
                shape: shape?,
            };
            raw.path.is_none().then_some(kind)
        }
        other => {
            let kind = match other {
                "string" => EntryKind::String,
                _ => match primitive_type(other) {
                    Some(t) => EntryKind::Primitive(t),
                    None => {
                        c.report(
                            op,
                            at,
                            ProblemKind::UnknownType {
                                text: other.to_owned(),
                            },
                        );
                        return None;
                    }
                },
            };
            let (element_reason, shape_reason) = match kind {
                EntryKind::String => (
                    "a string is always uint8",
                    "a string's shape is always [-1], fixed at run time",
                ),
                _ => (
                    "a primitive's type is its element type",
                    "a primitive is always one value, shape [1]",
                ),
            };
            let extra = [
                (raw.element_type.is_some(), "element-type", element_reason),
                (raw.shape.is_some(), "shape", shape_reason),
                (
                    raw.path.is_some(),
                    "path",
                    "it lives in shared memory, not on disk",
                ),
            ];
            let mut clean = true;
            for (present, field, reason) in extra {
                forbid(c, present, field, reason);
                clean &= !present;
            }
            clean.then_some(kind)
        }
    }
}

/// Resolves every input's `from` to an upstream output of the same declaration. Returns the
/// links that resolved, in definition positions.
fn check_links(c: &mut Checker<'_>, operators: &[PartialOperator]) -> Vec<Link> {
    // Lookups by lower-case name, the first of a name winning (duplicates were reported):
    // one pass each, so that linking is linear in the size of the definition.
    let mut by_name: HashMap<String, usize> = HashMap::new();
    // Unnamed outputs are under `None`, which an unnamed input reads.
    let mut outputs_by_name: HashMap<(usize, Option<String>), usize> = HashMap::new();
    for (index, op) in operators.iter().enumerate() {
        if let Some(name) = &op.location.name {
            by_name.entry(name.to_ascii_lowercase()).or_insert(index);
        }
        for (output_index, output) in op.outputs.iter().enumerate() {
            let key = output.name.as_deref().map(str::to_ascii_lowercase);
            outputs_by_name.entry((index, key)).or_insert(output_index);
        }
    }
    let mut links = Vec::new();
    for (consumer, op) in operators.iter().enumerate() {
        for (input_index, input) in op.inputs.iter().enumerate() {
            let Some(from) = &input.from else {
                continue;
            };
            // An unnamed input reads the upstream operator's unnamed output.
            let name = input.name.as_deref();
            let is_self = op
                .location
                .name
                .as_deref()
                .is_some_and(|own| own.eq_ignore_ascii_case(from));
            if is_self {
                continue; // Reported with the entry.
            }
            let report = |c: &mut Checker<'_>, kind| {
                c.report(Some(&op.location), Some(&input.location), kind)
            };
            let Some(&producer) = by_name.get(&from.to_ascii_lowercase()) else {
                report(c, ProblemKind::UnknownOperator { from: from.clone() });
                continue;
            };
            let upstream = &operators[producer];
            let Some(&output_index) =
                outputs_by_name.get(&(producer, name.map(str::to_ascii_lowercase)))
            else {
                let kind = match name {
                    Some(name) => ProblemKind::NoSuchOutput {
                        from: from.clone(),
                        name: name.to_owned(),
                    },
                    None => ProblemKind::NoUnnamedOutput { from: from.clone() },
                };
                report(c, kind);
                continue;
            };
            let output = &upstream.outputs[output_index];
            // Entries that are themselves invalid were reported already; comparing them would
            // only repeat that.
            let (Some(input_kind), Some(output_kind)) = (&input.kind, &output.kind) else {
                continue;
            };
            if let Some(field) = first_difference(input_kind, output_kind) {
                report(
                    c,
                    ProblemKind::Mismatch {
                        field,
                        from: upstream.location.name.clone().unwrap_or_default(),
                        output: output.name.clone().unwrap_or_default(),
                        input: input_kind.to_string(),
                        upstream: output_kind.to_string(),
                    },
                );
                continue;
            }
            links.push(Link {
                output: EntryRef {
                    operator: producer,
                    entry: output_index,
                },
                input: EntryRef {
                    operator: consumer,
                    entry: input_index,
                },
            });
        }
    }
    links
}

/// The first field in which an input's declaration differs from the output it reads: `type`,
/// then `element-type`, then `shape` (compared as declared, so `-1` and `0` differ). A stream's
/// path is its own on each side and is not compared.
fn first_difference(input: &EntryKind, output: &EntryKind) -> Option<&'static str> {
    match (input, output) {
        (
            EntryKind::Stream {
                element_type: a, ..
            },
            EntryKind::Stream {
                element_type: b, ..
            },
        ) => (a != b).then_some("element-type"),
        (
            EntryKind::Array {
                element_type: a,
                shape: sa,
            },
            EntryKind::Array {
                element_type: b,
                shape: sb,
            },
        ) => {
            if a != b {
                Some("element-type")
            } else if sa.declared() != sb.declared() {
                Some("shape")
            } else {
                None
            }
        }
        (EntryKind::String, EntryKind::String) => None,
        (EntryKind::Primitive(a), EntryKind::Primitive(b)) if a == b => None,
        _ => Some("type"),
    }
}

/// Builds the pipeline from checked parts, operators in `order`.
fn assemble(
    origin: &str,
    header: Header,
    operators: Vec<PartialOperator>,
    links: Vec<Link>,
    order: &[usize],
    unused: Vec<Unused>,
) -> Pipeline {
    // new_position[definition index] = position in dependency order.
    let mut new_position = vec![0; order.len()];
    for (position, &index) in order.iter().enumerate() {
        new_position[index] = position;
    }
    let finish = |entries: Vec<PartialEntry>| {
        entries
            .into_iter()
            .map(|e| Entry {
                name: e.name.unwrap_or_default(),
                from: None,
                kind: e.kind.expect("validated"),
                memory: e.memory,
            })
            .collect::<Vec<_>>()
    };
    let mut slots: Vec<Option<Operator>> = operators
        .into_iter()
        .map(|op| {
            Some(Operator {
                name: op.location.name.expect("validated"),
                index: op.location.index,
                description: op.description,
                command: op.command,
                container: op.container,
                requests: op.requests,
                models: op.models,
                parameters: op.parameters,
                uses_driver: op.uses_driver,
                variables: op.variables,
                inputs: finish(op.inputs),
                outputs: finish(op.outputs),
            })
        })
        .collect();
    let mut links: Vec<Link> = links
        .into_iter()
        .map(|l| Link {
            output: EntryRef {
                operator: new_position[l.output.operator],
                entry: l.output.entry,
            },
            input: EntryRef {
                operator: new_position[l.input.operator],
                entry: l.input.entry,
            },
        })
        .collect();
    links.sort_by_key(|l| (l.input, l.output));
    // Spell each `from` as the upstream operator's own name.
    for link in &links {
        let producer = slots[order[link.output.operator]]
            .as_ref()
            .expect("present")
            .name
            .clone();
        let memory = slots[order[link.output.operator]]
            .as_ref()
            .expect("present")
            .outputs[link.output.entry]
            .memory;
        let consumer = slots[order[link.input.operator]].as_mut().expect("present");
        consumer.inputs[link.input.entry].from = Some(producer);
        // An input is where its producer's output is.
        consumer.inputs[link.input.entry].memory = memory;
    }
    let operators = order
        .iter()
        .map(|&i| slots[i].take().expect("each index once"))
        .collect();
    Pipeline {
        origin: origin.to_owned(),
        api_version: header.api_version,
        name: header.name,
        description: header.description,
        orchestrator: header.orchestrator,
        pull_secrets: header.pull_secrets,
        parameters: header.parameters,
        timeout: header.timeout,
        operators,
        links,
        unused,
    }
}
